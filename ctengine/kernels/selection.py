"""CT selection: which slices of a series show the inside of the lungs.

:func:`select_slices` is the COVID-CTset authors' rule, reproduced exactly;
:func:`select_slices_by_lung_area` is a spacing-aware variant working on lung
masks. Both take numpy, cupy or dask arrays and return the same kind.
"""
from __future__ import annotations

import math
from typing import Any, Literal, NamedTuple

import numpy as np

from ..constants import SELECTION_COLS, SELECTION_DARK_RAW, SELECTION_DIVISOR, SELECTION_ROWS
from . import _selection_reference as _ref
from ._backend import array_kind, as_stack, chunk_kind

__all__ = ["select_slices", "select_slices_by_lung_area", "Selection", "LungAreaSelection"]

_R0, _R1 = SELECTION_ROWS.start, SELECTION_ROWS.stop
_C0, _C1 = SELECTION_COLS.start, SELECTION_COLS.stop


class Selection(NamedTuple):
    """Result of :func:`select_slices`: keep (bool, (z,)) and dark-pixel counts (int64, (z,))."""

    keep: Any
    counts: Any


class LungAreaSelection(NamedTuple):
    """Result of :func:`select_slices_by_lung_area`: keep (bool), area_mm2 (float64), counts (int64), each (z,)."""

    keep: Any
    area_mm2: Any
    counts: Any


def select_slices(stack: Any, *, method: Literal["auto", "reference"] = "auto") -> Selection:
    """The authors' CT selection of one series.

    In each slice count the dark pixels, raw < 300, inside rows 240..339 and
    columns 120..369 (25,000 pixels); threshold = (max count - min count) /
    1.5 over the series; keep the slices whose count is strictly greater.

    Parameters
    ----------
    stack : numpy, cupy or dask integer array, (z, y, x) or one slice (y, x)
        Raw values of one series (a single slice is a series of one, whose
        threshold is 0). y >= 340 and x >= 370.
    method : {"auto", "reference"}
        "auto": Numba CPU / numba.cuda kernels; "reference": plain numpy.

    Returns
    -------
    Selection
        ``keep`` bool (z,) and ``counts`` int64 (z,), arrays of the input's
        kind (dask stays lazy). Every backend gives identical results.

    Raises
    ------
    TypeError
        Non-integer dtype.
    ValueError
        Not 2-D/3-D, no slices, or slices too small for the region.

    See Also
    --------
    select_slices_by_lung_area : spacing-aware variant on lung masks.

    Examples
    --------
    >>> import numpy as np
    >>> s = np.full((3, 512, 512), 1024, dtype=np.uint16)
    >>> s[1, 240:340, 120:370] = 100
    >>> sel = select_slices(s)
    >>> sel.keep.tolist(), sel.counts.tolist()
    ([False, True, False], [0, 25000, 0])
    """
    kind = array_kind(stack)
    if np.dtype(stack.dtype).kind not in "ui":
        raise TypeError(f"stack must hold raw integer values, got dtype {stack.dtype}")
    stack, _ = as_stack(stack, name="stack")
    z, ny, nx = stack.shape
    if ny < _R1 or nx < _C1:
        raise ValueError(f"slices of shape {(ny, nx)} are too small for the selection region "
                         f"rows {_R0}..{_R1 - 1}, cols {_C0}..{_C1 - 1}")
    if z == 0:
        raise ValueError("stack has no slices")
    _check_method(method, stack)
    if kind == "dask":
        region = stack[:, SELECTION_ROWS, SELECTION_COLS].rechunk({1: -1, 2: -1})
        counts = region.map_blocks(_region_counts, method=method, drop_axis=[1, 2],
                                   dtype=np.int64, meta=_empty(region, np.int64))
    elif kind == "cupy":
        import cupy as cp
        counts = _cuda_dark_counts(stack, cp)
    elif method == "reference":
        counts = _ref.dark_counts(stack)
    else:
        from . import _selection_cpu as cpu
        counts = cpu.dark_counts(stack, _R0, _R1, _C0, _C1, SELECTION_DARK_RAW)
    return Selection(_ref.keep_from_counts(counts), counts)


def select_slices_by_lung_area(masks: Any, *, spacing_mm: float | tuple[float, float],
                               fraction: float = 1.0 / SELECTION_DIVISOR,
                               min_area_mm2: float = 0.0,
                               method: Literal["auto", "reference"] = "auto") -> LungAreaSelection:
    """Keep the slices whose lung area is large, measured in mm2 from lung masks.

    area = (number of mask > 0 pixels) * spacing_y * spacing_x; keep a slice
    when area > fraction * (largest area in the series) and area >=
    min_area_mm2.

    Where and why this disagrees with :func:`select_slices`:

    - The authors' region is fixed in pixels (rows 240..339, cols 120..369).
      At 0.58 mm spacing it spans 58 x 145 mm, at 0.84 mm 84 x 210 mm, so it
      covers different anatomy per series (heart and mediastinum in a small
      field of view, both lungs in a large one). Area in mm2 of the whole
      lung mask does not depend on where the lungs sit in the image.
    - Dense consolidation or ground glass (raw >= 300, i.e. above -724 HU)
      is not "dark", so the authors' count falls on exactly the slices a
      COVID study needs most; a lung mask that includes opacities keeps them.
    - One-lung slices (a lung collapsed, resected or out of the region)
      halve the dark count inside the central region; the area rule only
      compares total lung area with the series' maximum.
    - The authors' threshold (max - min) / 1.5 depends on the series' darkest
      and brightest slice; here the default fraction 1 / 1.5 of the maximum
      keeps a comparable proportion without the minimum.

    Parameters
    ----------
    masks : numpy, cupy or dask array, uint8 or bool, (z, y, x) or (y, x)
        Lung masks (0 background, 1 right lung, 2 left lung; any value > 0 is lung).
    spacing_mm : float or (float, float)
        Pixel spacing (y, x) in mm (one number for square pixels).
    fraction : float
        Keep area > fraction * max area; in [0, 1), default 1/1.5.
    min_area_mm2 : float
        Absolute floor in mm2 (default 0: no floor).
    method : {"auto", "reference"}

    Returns
    -------
    LungAreaSelection
        keep bool (z,), area_mm2 float64 (z,), counts int64 (z,), of the
        input's kind. A series with no lung pixels keeps nothing.

    Raises
    ------
    TypeError
        masks not uint8/bool.
    ValueError
        Bad spacing, fraction or floor; not 2-D/3-D.

    Examples
    --------
    >>> import numpy as np
    >>> m = np.zeros((3, 8, 8), dtype=np.uint8)
    >>> m[0, :2, :2] = 1; m[1, :6, :6] = 2; m[2, :5, :5] = 1
    >>> r = select_slices_by_lung_area(m, spacing_mm=0.5)
    >>> r.keep.tolist(), r.area_mm2.tolist()
    ([False, True, True], [1.0, 9.0, 6.25])
    """
    kind = array_kind(masks)
    if np.dtype(masks.dtype) not in (np.dtype(np.uint8), np.dtype(np.bool_)):
        raise TypeError(f"masks must be uint8 or bool, got dtype {masks.dtype}")
    sy, sx = spacing_pair(spacing_mm)
    fraction = float(fraction)
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction!r}")
    min_area = float(min_area_mm2)
    if not math.isfinite(min_area) or min_area < 0:
        raise ValueError(f"min_area_mm2 must be a finite number >= 0, got {min_area_mm2!r}")
    masks, _ = as_stack(masks, name="masks")
    _check_method(method, masks)
    if kind == "dask":
        masks = masks.rechunk({1: -1, 2: -1})
        counts = masks.map_blocks(_mask_counts, method=method, drop_axis=[1, 2],
                                  dtype=np.int64, meta=_empty(masks, np.int64))
    else:
        counts = _mask_counts(masks, method=method)
    area = counts * sy * sx
    keep = (area > fraction * area.max()) & (area >= min_area)
    return LungAreaSelection(keep, area, counts)


def spacing_pair(spacing_mm: Any) -> tuple[float, float]:
    """(spacing_y, spacing_x) in mm from one number or a pair; ValueError if not finite and > 0."""
    pair = (spacing_mm, spacing_mm) if np.ndim(spacing_mm) == 0 else tuple(spacing_mm)
    if len(pair) != 2:
        raise ValueError(f"spacing_mm must be one number or a (y, x) pair, got {spacing_mm!r}")
    out = tuple(float(v) for v in pair)
    if not all(math.isfinite(v) and v > 0 for v in out):
        raise ValueError(f"spacing_mm must be finite and > 0, got {spacing_mm!r}")
    return out


def _check_method(method: str, x: Any) -> None:
    if method not in ("auto", "reference"):
        raise ValueError(f"method must be 'auto' or 'reference', got {method!r}")
    if method == "reference" and chunk_kind(x) != "numpy":
        raise TypeError("method='reference' needs numpy arrays or numpy-backed dask arrays")


def _empty(x: Any, dtype: Any) -> Any:
    """A 1-D empty array of x's block kind."""
    return x._meta.astype(dtype).reshape(-1)[:0]


def _cuda_dark_counts(stack: Any, xp: Any) -> Any:
    """Dark counts of full slices on device arrays of module xp (cupy; numpy under the CUDA simulator)."""
    from . import _selection_gpu as gpu
    return gpu.dark_counts(stack, _R0, _R1, _C0, _C1, SELECTION_DARK_RAW, xp)


def _region_counts(region: Any, *, method: str) -> Any:
    """Dark counts of an already cut (z, 100, 250) numpy or cupy block."""
    if array_kind(region) == "cupy":
        import cupy as cp
        from . import _selection_gpu as gpu
        return gpu.dark_counts(region, 0, region.shape[1], 0, region.shape[2], SELECTION_DARK_RAW, cp)
    if method == "reference":
        return _ref.count_dark(region)
    from . import _selection_cpu as cpu
    return cpu.dark_counts(region, 0, region.shape[1], 0, region.shape[2], SELECTION_DARK_RAW)


def _mask_counts(masks: Any, *, method: str) -> Any:
    """Nonzero pixels per slice of a (z, y, x) numpy or cupy mask block."""
    if array_kind(masks) == "cupy":
        import cupy as cp
        from . import _selection_gpu as gpu
        return gpu.nonzero_counts(masks, cp)
    if method == "reference":
        return _ref.mask_counts(masks)
    from . import _selection_cpu as cpu
    return cpu.nonzero_counts(masks)
