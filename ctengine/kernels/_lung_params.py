"""Lung-mask options in physical units (HU, mm, mm^2) resolved to the integers every kernel uses.

All implementations (reference, Numba CPU, numba.cuda) receive the same
:class:`LungParams` (per-slice method) and :class:`VolumeParams` (whole-series
stages), so thresholds and sizes are converted exactly once.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from ..constants import (DEFAULT_INTERCEPT, DEFAULT_SLOPE, LUNG_AIR_HU, LUNG_AIRWAY_MAX_AREA_MM2,
                         LUNG_AIRWAY_MIN_AREA_MM2, LUNG_AIRWAY_WALL_MM, LUNG_CLOSING_MM,
                         LUNG_DEFAULT_SPACING_MM, LUNG_LOW_HU, LUNG_MIN_AREA_MM2,
                         LUNG_MIN_VOLUME_FRACTION, LUNG_SPLIT_WINDOW_MM, LUNG_TISSUE_HOLE_MM2,
                         LUNG_TISSUE_HU, LUNG_TRACHEA_MIDLINE_MM, SLICE_SHAPE)

_RAW_LIMIT = 65536  # one past the largest uint16


class LungParams(NamedTuple):
    """Integer parameters of the lung mask (pixels and raw units).

    Attributes
    ----------
    t_low, t_air : int
        A pixel is low (air-like) when raw < t_low, pure air when raw < t_air.
    airway_px : int
        Smallest pure-air component (pixels) carved out of lung candidates.
    lung_px : int
        Smallest lung component (pixels); also the smallest part on each side
        of a split.
    split_px : int
        Half width (pixels, >= 1) of the column window around the body midline.
    ry, rx : int
        Half sizes (pixels) of the closing rectangle (2 ry + 1) x (2 rx + 1).
    hole_px, t_soft : int
        A hole or added region of at least hole_px pixels with more than half
        of its pixels raw >= t_soft is soft tissue.
    """

    t_low: int
    t_air: int
    airway_px: int
    lung_px: int
    split_px: int
    ry: int
    rx: int
    hole_px: int
    t_soft: int


class VolumeParams(NamedTuple):
    """Integer parameters of the whole-series stages (pixels, per mille).

    Attributes
    ----------
    seed_px, airway_max_px : int
        Smallest seed and largest tracked airway cross-section (pixels).
    midline_px : int
        Largest distance (pixels) of the seed's centroid from the body midline.
    wall_px : int
        Thickness (pixels) of the airway wall declared air around the lumen.
    keep_per_mille : int
        Smallest kept 3-D component, per mille of the largest one.
    """

    seed_px: int
    airway_max_px: int
    midline_px: int
    wall_px: int
    keep_per_mille: int


def _finite(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return v


def _nonneg(name: str, value: Any) -> float:
    v = _finite(name, value)
    if v < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return v


def raw_threshold(hu: float, slope: float, intercept: float) -> int:
    """Smallest integer t with raw < t  <=>  raw * slope + intercept < hu, clipped to [0, 65536]."""
    q = (hu - intercept) / slope
    if q <= 0:
        return 0
    return _RAW_LIMIT if q >= _RAW_LIMIT else math.ceil(q)


def default_spacing(shape_yx: tuple[int, int]) -> tuple[float, float]:
    """Spacing (mm) assumed without metadata: 0.7 mm at 512 pixels, scaled by 512 / max(shape)."""
    s = LUNG_DEFAULT_SPACING_MM * SLICE_SHAPE[1] / max(max(shape_yx), 1)
    return (s, s)


def _area_px(name: str, mm2: Any, pixel_mm2: float, cap: int) -> int:
    """An area option (mm2) in whole pixels, at least 1; areas beyond the slice act alike: cap."""
    return int(max(1, math.ceil(min(_nonneg(name, mm2) / pixel_mm2, cap))))


def _pixel_spacing(shape_yx: tuple[int, int], spacing: Any) -> tuple[float, float]:
    """Validated (sy, sx) in mm; None gives :func:`default_spacing`."""
    if spacing is None:
        return default_spacing(shape_yx)
    if isinstance(spacing, (int, float, np.integer, np.floating)) and not isinstance(spacing, bool):
        sy = sx = _finite("spacing", spacing)
        if sy <= 0:
            raise ValueError(f"spacing must be > 0 mm, got {spacing!r}")
        return sy, sx
    try:
        sy, sx = spacing
    except (TypeError, ValueError):
        raise TypeError(f"spacing must be a pair (sy, sx) in mm, got {spacing!r}") from None
    sy, sx = _finite("spacing", sy), _finite("spacing", sx)
    if sy <= 0 or sx <= 0:
        raise ValueError(f"spacing must be > 0 mm, got {spacing!r}")
    return sy, sx


def resolve_volume(shape_yx: tuple[int, int], *, spacing: Any = None,
                   airway_min_area_mm2: Any = LUNG_AIRWAY_MIN_AREA_MM2,
                   airway_max_area_mm2: Any = LUNG_AIRWAY_MAX_AREA_MM2,
                   airway_wall_mm: Any = LUNG_AIRWAY_WALL_MM,
                   trachea_midline_mm: Any = LUNG_TRACHEA_MIDLINE_MM,
                   min_volume_fraction: Any = LUNG_MIN_VOLUME_FRACTION) -> VolumeParams:
    """Validate the whole-series options and convert them to :class:`VolumeParams`."""
    sy, sx = _pixel_spacing(shape_yx, spacing)
    h, w = (max(int(n), 1) for n in shape_yx)
    cap = h * w + 1
    fraction = _nonneg("min_volume_fraction", min_volume_fraction)
    if fraction > 1:
        raise ValueError(f"min_volume_fraction must be in [0, 1], got {min_volume_fraction!r}")
    return VolumeParams(
        seed_px=_area_px("airway_min_area_mm2", airway_min_area_mm2, sy * sx, cap),
        airway_max_px=int(math.floor(min(_nonneg("airway_max_area_mm2", airway_max_area_mm2) / (sy * sx), cap))),
        midline_px=int(math.floor(min(_nonneg("trachea_midline_mm", trachea_midline_mm) / sx, w))),
        wall_px=int(round(min(_nonneg("airway_wall_mm", airway_wall_mm) / min(sy, sx), max(h, w)))),
        keep_per_mille=int(round(1000 * fraction)),
    )


def resolve(shape_yx: tuple[int, int], *, spacing: Any = None, slope: Any = DEFAULT_SLOPE,
            intercept: Any = DEFAULT_INTERCEPT, low_hu: Any = LUNG_LOW_HU,
            air_hu: Any = LUNG_AIR_HU, min_area_mm2: Any = LUNG_MIN_AREA_MM2,
            airway_min_area_mm2: Any = LUNG_AIRWAY_MIN_AREA_MM2,
            closing_mm: Any = LUNG_CLOSING_MM,
            split_window_mm: Any = LUNG_SPLIT_WINDOW_MM,
            tissue_hole_mm2: Any = LUNG_TISSUE_HOLE_MM2,
            tissue_hu: Any = LUNG_TISSUE_HU) -> LungParams:
    """Validate physical options and convert them to :class:`LungParams` for slices of ``shape_yx``."""
    sy, sx = _pixel_spacing(shape_yx, spacing)
    slope = _finite("slope", slope)
    if slope <= 0:
        raise ValueError(f"slope must be > 0, got {slope!r}")
    intercept = _finite("intercept", intercept)
    low_hu, air_hu = _finite("low_hu", low_hu), _finite("air_hu", air_hu)
    if air_hu > low_hu:
        raise ValueError(f"air_hu must be <= low_hu, got air_hu={air_hu!r}, low_hu={low_hu!r}")
    h, w = (max(int(n), 1) for n in shape_yx)
    pixel_mm2 = sy * sx

    def length(name: str, mm: Any, step: float, cap: int, low: int) -> int:  # same for lengths
        return int(max(low, round(min(_nonneg(name, mm) / step, cap))))

    closing = _nonneg("closing_mm", closing_mm)
    return LungParams(
        t_low=raw_threshold(low_hu, slope, intercept),
        t_air=raw_threshold(air_hu, slope, intercept),
        airway_px=_area_px("airway_min_area_mm2", airway_min_area_mm2, pixel_mm2, h * w + 1),
        lung_px=_area_px("min_area_mm2", min_area_mm2, pixel_mm2, h * w + 1),
        split_px=int(max(1, math.floor(min(_nonneg("split_window_mm", split_window_mm) / sx, w)))),
        ry=length("closing_mm", closing, sy, h, 0),
        rx=length("closing_mm", closing, sx, w, 0),
        hole_px=_area_px("tissue_hole_mm2", tissue_hole_mm2, pixel_mm2, h * w + 1),
        t_soft=raw_threshold(_finite("tissue_hu", tissue_hu), slope, intercept),
    )
