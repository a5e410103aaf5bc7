"""CT selection: which slices of a series show the inside of the lungs.

:func:`select_slices` is the COVID-CTset authors' rule, reproduced exactly;
:func:`select_slices_by_lung_area` is a spacing-aware variant working on lung
masks. Both take numpy, cupy or dask arrays and return the same kind.
"""
from __future__ import annotations

import math
from typing import Any, Literal, NamedTuple

import numpy as np

from ..constants import (DEFAULT_INTERCEPT, DEFAULT_SLOPE, SELECTION_COLS, SELECTION_DARK_RAW,
                         SELECTION_DIVISOR, SELECTION_ROWS, SLICE_SHAPE)
from . import _selection_reference as _ref
from ._backend import array_kind, as_stack
from ._validate import block_backend, check_method, kernel_input, nonnegative, raw_threshold, spacing_pair

__all__ = ["select_slices", "select_slices_by_lung_area", "selection_region", "Selection", "LungAreaSelection"]

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


def select_slices(stack: Any, *, units: Literal["raw", "hu"] | None = None,
                  slope: float = DEFAULT_SLOPE, intercept: float = DEFAULT_INTERCEPT,
                  method: Literal["auto", "reference", "cuda"] = "auto") -> Selection:
    """The authors' CT selection of one series.

    In each slice count the dark pixels, raw < 300 (HU < -724), inside rows
    240..339 and columns 120..369 (25,000 pixels); threshold = (max count -
    min count) / 1.5 over the series; keep the slices whose count is
    strictly greater. Slices of another size than 512 x 512 use the same
    region scaled to their size (:func:`selection_region`); the dark
    threshold follows the rescale, so it stays -724 HU for any slope and
    intercept.

    Parameters
    ----------
    stack : numpy, cupy or dask array, (z, y, x) or one slice (y, x)
        Raw integer values of one series (a single slice is a series of
        one, whose threshold is 0), or Hounsfield units with ``units="hu"``.
    units : {"raw", "hu"}, optional
        What stack holds. Default: raw for unsigned integers; signed or
        float input must say ``units="hu"`` or ``units="raw"``.
    slope, intercept : float
        HU = raw * slope + intercept (default 1, -1024: the authors' raw < 300).
    method : {"auto", "reference", "cuda"}
        "auto": Numba CPU for numpy, numba.cuda for cupy; "reference": plain
        numpy; "cuda": numba.cuda kernels on numpy arrays too.

    Returns
    -------
    Selection
        ``keep`` bool (z,) and ``counts`` int64 (z,), arrays of the input's
        kind (dask stays lazy). Every backend gives identical results.

    Raises
    ------
    TypeError
        Float or signed input without ``units``.
    ValueError
        Not 2-D/3-D, no slices, or slices too small for a region (under 6 x 3).

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
    >>> select_slices(s.astype(np.int16) - 1024, units="hu").counts.tolist()
    [0, 25000, 0]
    """
    inp = kernel_input(stack, units=units, slope=slope, intercept=intercept, method=method, name="stack")
    stack = inp.stack
    z, ny, nx = stack.shape
    if z == 0:
        raise ValueError("stack has no slices")
    rows, cols = selection_region((ny, nx))
    dark = raw_threshold(SELECTION_DARK_RAW + DEFAULT_INTERCEPT, inp.slope, inp.intercept, stack.dtype)
    if inp.kind == "dask":
        region = stack[:, rows, cols].rechunk({1: -1, 2: -1})
        counts = region.map_blocks(_region_counts, method=method, dark=dark, drop_axis=[1, 2],
                                   dtype=np.int64, meta=_empty(region, np.int64))
    else:
        counts = _dark_counts(stack, rows, cols, dark, method)
    return Selection(_ref.keep_from_counts(counts), counts)


def selection_region(shape_yx: tuple[int, int]) -> tuple[slice, slice]:
    """The authors' region (rows 240..339, columns 120..369 of 512 x 512) scaled to a slice size.

    Each edge e of the 512-pixel region becomes round(e * n / 512) (halves
    up) for a slice of n rows or columns, so 512 x 512 is the exact rule.

    Examples
    --------
    >>> selection_region((512, 512))
    (slice(240, 340, None), slice(120, 370, None))
    >>> selection_region((384, 384))
    (slice(180, 255, None), slice(90, 278, None))
    """
    (ny, nx), (ry, rx) = shape_yx, SLICE_SHAPE
    rows = slice(*((e * ny + ry // 2) // ry for e in (SELECTION_ROWS.start, SELECTION_ROWS.stop)))
    cols = slice(*((e * nx + rx // 2) // rx for e in (SELECTION_COLS.start, SELECTION_COLS.stop)))
    if rows.stop <= rows.start or cols.stop <= cols.start:
        raise ValueError(f"slices of shape {(ny, nx)} are too small for the selection region "
                         f"(rows {_R0}..{_R1 - 1}, cols {_C0}..{_C1 - 1} of 512 x 512 scaled to size)")
    return rows, cols


def select_slices_by_lung_area(masks: Any, *, spacing: float | tuple[float, float] | None,
                               fraction: float = 1.0 / SELECTION_DIVISOR,
                               min_area_mm2: float = 0.0,
                               method: Literal["auto", "reference", "cuda"] = "auto") -> LungAreaSelection:
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
    spacing : float or (float, float) or None
        Pixel spacing (y, x) in mm (one number for square pixels). None
        means unknown: the same slices are kept (the rule is relative),
        area_mm2 is NaN, and ``min_area_mm2`` must be 0.
    fraction : float
        Keep area > fraction * max area; in [0, 1), default 1/1.5.
    min_area_mm2 : float
        Absolute floor in mm2 (default 0: no floor).
    method : {"auto", "reference", "cuda"}
        As in :func:`select_slices`.

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
    >>> r = select_slices_by_lung_area(m, spacing=0.5)
    >>> r.keep.tolist(), r.area_mm2.tolist()
    ([False, True, True], [1.0, 9.0, 6.25])
    """
    kind = array_kind(masks)
    if np.dtype(masks.dtype) not in (np.dtype(np.uint8), np.dtype(np.bool_)):
        raise TypeError(f"masks must be uint8 or bool, got dtype {masks.dtype}")
    pair = spacing_pair(spacing)
    fraction = nonnegative("fraction", fraction)
    if fraction >= 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction!r}")
    min_area = nonnegative("min_area_mm2", min_area_mm2)
    if pair is None and min_area > 0:
        raise ValueError("spacing is unknown: min_area_mm2 cannot be measured; pass spacing= in mm "
                         "or min_area_mm2=0")
    masks, _ = as_stack(masks, name="masks")
    check_method(method, masks)
    if kind == "dask":
        masks = masks.rechunk({1: -1, 2: -1})
        counts = masks.map_blocks(_mask_counts, method=method, drop_axis=[1, 2],
                                  dtype=np.int64, meta=_empty(masks, np.int64))
    else:
        counts = _mask_counts(masks, method=method)
    if pair is None:  # the rule is relative: the same slices at any spacing
        area = counts * math.nan
        keep = counts > fraction * counts.max()
    else:
        area = counts * pair[0] * pair[1]
        keep = (area > fraction * area.max()) & (area >= min_area)
    return LungAreaSelection(keep, area, counts)


def _empty(x: Any, dtype: Any) -> Any:
    """A 1-D empty array of x's block kind."""
    return x._meta.astype(dtype).reshape(-1)[:0]


def _dark_counts(stack: Any, rows: slice, cols: slice, dark: int, method: str) -> Any:
    """Per slice, the number of raw < dark pixels in the region, of one numpy or cupy block."""
    backend, xp = block_backend(stack, method)
    if backend == "reference":
        return _ref.dark_counts(stack, rows, cols, dark)
    if backend == "cuda":
        from . import _selection_gpu as fast
        return fast.dark_counts(stack, rows.start, rows.stop, cols.start, cols.stop, dark, xp)
    from . import _selection_cpu as cpu
    return cpu.dark_counts(stack, rows.start, rows.stop, cols.start, cols.stop, dark)


def _region_counts(region: Any, *, method: str, dark: int) -> Any:
    """Dark counts of an already cut (z, rows, cols) block."""
    return _dark_counts(region, slice(0, region.shape[1]), slice(0, region.shape[2]), dark, method)


def _mask_counts(masks: Any, *, method: str) -> Any:
    """Nonzero pixels per slice of a (z, y, x) numpy or cupy mask block."""
    backend, xp = block_backend(masks, method)
    if backend == "reference":
        return _ref.mask_counts(masks)
    if backend == "cuda":
        from . import _selection_gpu as fast
        return fast.nonzero_counts(masks, xp)
    from . import _selection_cpu as cpu
    return cpu.nonzero_counts(masks)
