"""Argument checks shared by every public kernel: numbers, spacing, rescale, units and method.

Each check raises ``TypeError`` or ``ValueError`` quoting the bad value, so
every kernel refuses the same mistake with the same words.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, NamedTuple

import numpy as np

from ..constants import DEFAULT_INTERCEPT, DEFAULT_SLOPE, LUNG_DEFAULT_SPACING_MM, RAW_DTYPE, SLICE_SHAPE
from ._backend import array_kind, as_stack, chunk_kind

#: what a kernel's input holds: stored raw values, or Hounsfield units
UNITS = ("raw", "hu")
_RAW_MAX = int(np.iinfo(RAW_DTYPE).max)


class SpacingUnknownWarning(UserWarning):
    """A kernel was given no pixel spacing and used the nominal one (see :func:`nominal_spacing`)."""


class KernelInput(NamedTuple):
    """A validated kernel input: a raw (z, y, x) stack, its kind, and how to give the result back."""

    stack: Any
    kind: str
    was_2d: bool
    slope: float
    intercept: float


def finite(name: str, value: Any) -> float:
    """value as a finite float; TypeError if not a number, ValueError if NaN or infinite."""
    if isinstance(value, (bool, np.bool_)) or np.ndim(value) != 0 or np.asarray(value).dtype.kind not in "iuf":
        raise TypeError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return v


def positive(name: str, value: Any) -> float:
    """value as a finite float > 0."""
    v = finite(name, value)
    if v <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return v


def nonnegative(name: str, value: Any) -> float:
    """value as a finite float >= 0."""
    v = finite(name, value)
    if v < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return v


def spacing_pair(spacing: Any) -> tuple[float, float] | None:
    """Pixel spacing (sy, sx) in mm from one number or a pair; ``None`` stays None (unknown).

    Examples
    --------
    >>> spacing_pair(0.7), spacing_pair((0.5, 0.8)), spacing_pair(None)
    ((0.7, 0.7), (0.5, 0.8), None)
    """
    if spacing is None:
        return None
    if np.ndim(spacing) == 0:
        v = positive("spacing", spacing)
        return v, v
    try:
        sy, sx = spacing
    except (TypeError, ValueError):
        raise TypeError(f"spacing must be one number or a pair (sy, sx) in mm, got {spacing!r}") from None
    return positive("spacing", sy), positive("spacing", sx)


def nominal_spacing(shape_yx: tuple[int, int]) -> tuple[float, float]:
    """Spacing (mm) taken when none is known: 0.7 mm at 512 pixels, scaled by 512 / max(shape)."""
    s = LUNG_DEFAULT_SPACING_MM * SLICE_SHAPE[1] / max(max(shape_yx), 1)
    return (s, s)


def spacing_or_nominal(spacing: Any, shape_yx: tuple[int, int]) -> tuple[float, float]:
    """The validated spacing, or the nominal one with a :class:`SpacingUnknownWarning` saying so."""
    pair = spacing_pair(spacing)
    if pair is not None:
        return pair
    pair = nominal_spacing(shape_yx)
    warnings.warn(f"pixel spacing unknown: sizes in mm use the nominal {pair[0]:g} mm for "
                  f"{shape_yx[0]} x {shape_yx[1]} slices; pass spacing= to measure in true mm",
                  SpacingUnknownWarning, stacklevel=3)
    return pair


def rescale(slope: Any, intercept: Any) -> tuple[float, float]:
    """(slope, intercept) of HU = raw * slope + intercept, checked: slope > 0, both finite."""
    return positive("slope", slope), finite("intercept", intercept)


def raw_threshold(hu: float, slope: float, intercept: float, dtype: Any = RAW_DTYPE) -> int:
    """Smallest integer t with raw < t  <=>  raw * slope + intercept < hu, clipped to dtype's range + 1.

    Examples
    --------
    >>> raw_threshold(-724.0, 1.0, -1024.0), raw_threshold(-724.0, 1.0, 31744.0, "int16")
    (300, -32468)
    """
    info = np.iinfo(dtype)
    q = (hu - intercept) / slope
    if q <= info.min:
        return int(info.min)
    return int(info.max) + 1 if q > info.max else math.ceil(q)


#: how a kernel runs: fastest for the array ("auto"), the numpy specification, or numba.cuda
METHODS = ("auto", "reference", "cuda")


def check_method(method: Any, x: Any) -> None:
    """method is one of :data:`METHODS`; "reference" needs numpy arrays (or numpy-backed dask)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "reference" and chunk_kind(x) != "numpy":
        raise TypeError("method='reference' needs numpy arrays or numpy-backed dask arrays")


def block_backend(block: Any, method: str) -> tuple[str, Any]:
    """(backend, array module) of one numpy or cupy block: ("cuda", cupy or numpy), ("reference", numpy)
    or ("cpu", numpy). numba.cuda runs for cupy blocks, and for numpy blocks with ``method="cuda"``
    (host arrays copied to the device per launch; numpy arrays in the CUDA simulator)."""
    if array_kind(block) == "cupy":
        import cupy
        return "cuda", cupy
    return ("cpu" if method == "auto" else method), np


def kernel_input(x: Any, *, units: str | None, slope: Any = DEFAULT_SLOPE,
                 intercept: Any = DEFAULT_INTERCEPT, method: Any = "auto", name: str = "x",
                 raw_dtypes: str = "ui") -> KernelInput:
    """Validate a kernel's image argument and give it as raw values, (z, y, x).

    ``units=None`` takes unsigned integers as raw and refuses anything else;
    ``units="raw"`` accepts integers of the kinds in ``raw_dtypes``;
    ``units="hu"`` converts Hounsfield units (integers or floats) to raw =
    clip(rint(HU) + 1024, 0, 65535) as uint16, with the default rescale (1,
    -1024): HU below -1024 (outside the field of view) become raw 0, as in
    COVID-CTset, and float HU are rounded to whole HU. NaN HU are refused.
    """
    kind = array_kind(x)
    dt = np.dtype(x.dtype)
    if units is None:
        if dt.kind != "u":
            raise TypeError(f"{name} has dtype {dt}: say what it holds with units='hu' (Hounsfield "
                            f"units) or units='raw' (stored values, HU = raw * slope + intercept)")
        units = "raw"
    if units not in UNITS:
        raise ValueError(f"units must be 'raw' or 'hu', got {units!r}")
    if units == "raw":
        if dt.kind not in raw_dtypes:
            raise TypeError(f"{name} with units='raw' must hold stored integer values, got dtype {dt}"
                            + ("; for Hounsfield units pass units='hu'" if dt.kind in "if" else ""))
        slope, intercept = rescale(slope, intercept)
    else:
        if dt.kind not in "iuf":
            raise TypeError(f"{name} with units='hu' must hold numbers, got dtype {dt}")
        if (slope, intercept) != (DEFAULT_SLOPE, DEFAULT_INTERCEPT):
            raise ValueError("slope and intercept convert raw values to HU: with units='hu' leave them out")
        x = _hu_to_raw(x, kind)
        slope, intercept = DEFAULT_SLOPE, DEFAULT_INTERCEPT
    check_method(method, x)
    stack, was_2d = as_stack(x, name=name)
    return KernelInput(stack, kind, was_2d, slope, intercept)


def _hu_to_raw(x: Any, kind: str) -> Any:
    """raw = clip(rint(HU) + 1024, 0, 65535) as uint16, for numpy, cupy or dask HU arrays."""
    if kind == "dask":
        return x.map_blocks(_hu_block_to_raw, dtype=RAW_DTYPE, meta=x._meta.astype(RAW_DTYPE))
    return _hu_block_to_raw(x)


def _hu_block_to_raw(hu: Any) -> Any:
    xp = np if isinstance(hu, np.ndarray) else __import__("cupy")
    if hu.dtype.kind == "f":
        if bool(xp.isnan(hu).any()):
            raise ValueError("HU input holds NaN: mark pixels outside the field of view with -1024 "
                             "or lower instead")
        hu = xp.rint(hu)
    out = xp.clip(hu.astype(xp.float64) - DEFAULT_INTERCEPT, 0, _RAW_MAX)
    return out.astype(RAW_DTYPE)
