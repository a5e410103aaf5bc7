"""Array-kind dispatch shared by every kernel: numpy, cupy or dask in, the same kind out."""
from __future__ import annotations

import sys
from typing import Any, Callable

import numpy as np


def is_cupy(x: Any) -> bool:
    """True for a cupy.ndarray (cupy is imported only if the caller already did)."""
    cp = sys.modules.get("cupy")
    return cp is not None and isinstance(x, cp.ndarray)


def is_dask(x: Any) -> bool:
    """True for a dask.array.Array."""
    da = sys.modules.get("dask.array")
    return da is not None and isinstance(x, da.Array)


def array_kind(x: Any) -> str:
    """'numpy', 'cupy' or 'dask'; raise TypeError for anything else."""
    if isinstance(x, np.ndarray):
        return "numpy"
    if is_cupy(x):
        return "cupy"
    if is_dask(x):
        return "dask"
    raise TypeError(f"expected a numpy, cupy or dask array, got {type(x).__name__}")


def chunk_kind(x: Any) -> str:
    """Kind of the blocks of a dask array ('numpy' or 'cupy'), or of x itself."""
    if is_dask(x):
        return "cupy" if is_cupy(x._meta) else "numpy"
    return array_kind(x)


def as_stack(x: Any, *, name: str = "x") -> tuple[Any, bool]:
    """View a (y, x) slice as a (1, y, x) stack; return (stack, was_2d).

    Raises ValueError for anything that is neither 2-D nor 3-D.
    """
    if x.ndim == 2:
        return x[None], True
    if x.ndim == 3:
        return x, False
    raise ValueError(f"{name} must be a slice (y, x) or a stack (z, y, x), got shape {tuple(x.shape)}")


def map_slices_dask(func: Callable[..., Any], x: Any, *args: Any, dtype: Any, **kwargs: Any) -> Any:
    """Apply a per-stack function to a dask (z, y, x) array, one task per z-chunk.

    The y and x axes are merged into single chunks first (every kernel needs
    whole slices); the result keeps x's z-chunks and its block kind.
    """
    x = x.rechunk({1: -1, 2: -1})
    meta = x._meta
    return x.map_blocks(func, *args, dtype=dtype, meta=meta.astype(dtype, copy=False)[:0, :0, :0]
                        if hasattr(meta, "astype") else None, **kwargs)
