"""Right and left lung masks of raw CT slices by a classical HU method.

Raw uint16 slices (y, x) or stacks (z, y, x) go in (numpy, cupy or dask), a
uint8 mask of the same shape and kind comes out: 0 background, 1 right lung
(the patient's right = image left, smaller column index), 2 left lung. Each
slice is segmented on its own:

- air-like components (HU < ``low_hu``) whose median is pure air (HU <
  ``air_hu``) are not lung: the outside of the field of view and the air
  around the body, air between table layers, the trachea, bowel gas;
- pure-air blobs are carved out of the remaining candidates (a main
  bronchus touching a lung), small components dropped;
- right and left are told apart by a cut column near the body midline
  (lungs touching at the anterior junction are split there);
- each lung's holes are filled (vessels, lesions) except large soft-tissue
  holes (a liver or spleen dome), and a closing (``closing_mm``) on the lung's
  lateral side brings pleural ground glass and consolidation back, without
  soft-tissue regions.

The exact specification is in ``_lung_reference``; the Numba CPU kernel
(``_lung_cpu``, run-length based, slices in parallel) and the numba.cuda
kernels (``_lung_gpu``) give identical masks. Size options are in mm or mm2
and converted with the pixel spacing.
"""
from __future__ import annotations

from typing import Any, Literal

import numpy as np

from ..constants import (DEFAULT_INTERCEPT, DEFAULT_SLOPE, LUNG_AIR_HU, LUNG_AIRWAY_MIN_AREA_MM2,
                         LUNG_CLOSING_MM, LUNG_LOW_HU, LUNG_MIN_AREA_MM2, LUNG_SPLIT_WINDOW_MM,
                         LUNG_TISSUE_HOLE_MM2, LUNG_TISSUE_HU, RAW_DTYPE)
from ._backend import array_kind, as_stack, chunk_kind, map_slices_dask
from ._lung_params import LungParams, resolve

__all__ = ["lung_mask"]


def lung_mask(x: Any, *, spacing: float | tuple[float, float] | None = None,
              slope: float = DEFAULT_SLOPE, intercept: float = DEFAULT_INTERCEPT,
              low_hu: float = LUNG_LOW_HU, air_hu: float = LUNG_AIR_HU,
              min_area_mm2: float = LUNG_MIN_AREA_MM2,
              airway_min_area_mm2: float = LUNG_AIRWAY_MIN_AREA_MM2,
              closing_mm: float = LUNG_CLOSING_MM, split_window_mm: float = LUNG_SPLIT_WINDOW_MM,
              tissue_hu: float = LUNG_TISSUE_HU, tissue_hole_mm2: float = LUNG_TISSUE_HOLE_MM2,
              method: Literal["auto", "reference"] = "auto") -> Any:
    """Lung mask (0 background, 1 right lung, 2 left lung) of raw CT slices.

    Parameters
    ----------
    x : numpy, cupy or dask array of uint16, (y, x) or (z, y, x)
        Raw stored values, HU = raw * slope + intercept.
    spacing : float or (float, float), optional
        Pixel spacing (sy, sx), or one value for both, in mm. Default: 0.7 mm
        for a 512-pixel slice, scaled by 512 / max(y, x) for other sizes (a
        128 x 128 slice is taken as 2.8 mm per pixel).
    slope, intercept : float
        Rescale of raw to HU (default 1, -1024); slope must be > 0.
    low_hu : float
        Pixels below this HU (default -400) are air-like lung candidates.
    air_hu : float
        Pure-air HU (default -950): a component whose median is below it is
        not lung (outside, trachea, bowel gas, table).
    min_area_mm2 : float
        Smallest lung component kept, mm2 (default 100).
    airway_min_area_mm2 : float
        Smallest pure-air blob carved out of the lungs, mm2 (default 30).
    closing_mm : float
        Half size in mm of the closing rectangle that brings pleural lesions
        back (default 15).
    split_window_mm : float
        Half width in mm of the band around the body midline in which right
        and left are cut apart (default 40).
    tissue_hu, tissue_hole_mm2 : float
        A hole of at least ``tissue_hole_mm2`` mm2, or any region the closing
        would add, whose median is >= ``tissue_hu`` HU (default 20) is soft
        tissue and stays out of the mask (default 400 mm2).
    method : {"auto", "reference"}
        "auto": Numba CPU kernel for numpy blocks, numba.cuda for cupy
        blocks; "reference": the scipy specification (numpy blocks only).

    Returns
    -------
    uint8 array of x's shape and kind.

    Raises
    ------
    TypeError
        x is not a numpy, cupy or dask array of uint16, or an option is not a number.
    ValueError
        x is neither 2-D nor 3-D, an option is out of range (spacing <= 0,
        slope <= 0, a negative size, air_hu > low_hu), unknown method.

    Notes
    -----
    Known limits of the per-slice method: a lung whose median is below
    ``air_hu`` (severe emphysema) is dropped like air; consolidation that
    fills a lung's corner against the chest wall, with no aerated lung
    beyond it along the wall, is not brought back (the closing only fills
    bites with lung on both sides); soft-tissue-dense consolidation
    (median >= ``tissue_hu``) is treated like the liver or heart; mottled
    bowel content below the diaphragm can pass for lung.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.zeros((64, 64), np.uint16)    # outside the field of view: -1024 HU
    >>> x[8:56, 4:60] = 1064                 # body, +40 HU
    >>> x[16:48, 10:28] = 174                # right lung (image left), -850 HU
    >>> x[16:48, 36:54] = 174                # left lung
    >>> m = lung_mask(x, spacing=(5.0, 5.0))
    >>> [int((m == k).sum()) for k in (0, 1, 2)]
    [2944, 576, 576]
    >>> int(m[30, 20]), int(m[30, 45])
    (1, 2)
    """
    kind = array_kind(x)
    if x.dtype != RAW_DTYPE:
        raise TypeError(f"x must hold raw uint16 values, got dtype {x.dtype}")
    if method not in ("auto", "reference"):
        raise ValueError(f"method must be 'auto' or 'reference', got {method!r}")
    stack, was_2d = as_stack(x)
    params = resolve(tuple(stack.shape[1:]), spacing=spacing, slope=slope, intercept=intercept,
                     low_hu=low_hu, air_hu=air_hu, min_area_mm2=min_area_mm2,
                     airway_min_area_mm2=airway_min_area_mm2, closing_mm=closing_mm,
                     split_window_mm=split_window_mm, tissue_hu=tissue_hu,
                     tissue_hole_mm2=tissue_hole_mm2)
    if kind == "dask":
        if method == "reference" and chunk_kind(x) != "numpy":
            raise TypeError("method='reference' needs numpy blocks, got cupy blocks")
        out = map_slices_dask(_run_block, stack, params=params, method=method, dtype=np.uint8)
    else:
        out = _run_block(stack, params=params, method=method)
    return out[0] if was_2d else out


def _run_block(stack: Any, *, params: LungParams, method: str) -> Any:
    """Lung masks of one (z, y, x) numpy or cupy block."""
    if array_kind(stack) == "cupy":
        if method == "reference":
            raise TypeError("method='reference' needs a numpy array, got a cupy array")
        return _run_cupy(stack, params)
    if method == "reference":
        from ._lung_reference import lung_mask_reference
        return lung_mask_reference(stack, params)
    from ._lung_cpu import lung_mask_stack
    out = np.empty(stack.shape, dtype=np.uint8)
    if out.size:
        lung_mask_stack(np.ascontiguousarray(stack), out, *(int(v) for v in params))
    return out


def _run_cupy(stack: Any, params: LungParams) -> Any:
    """numba.cuda kernels on a cupy stack, a few million pixels per call, on cupy's current stream."""
    import cupy as cp
    from numba import cuda

    from ._lung_gpu import MAX_PIXELS, lung_mask_cuda
    stack = cp.ascontiguousarray(stack)
    out = cp.empty(stack.shape, dtype=cp.uint8)
    if out.size == 0:
        return out
    ptr = cp.cuda.get_current_stream().ptr
    stream = cuda.external_stream(ptr) if ptr else 0
    step = max(1, MAX_PIXELS // (stack.shape[1] * stack.shape[2]))
    for a in range(0, stack.shape[0], step):
        lung_mask_cuda(stack[a:a + step], params, out[a:a + step], stream=stream)
    return out
