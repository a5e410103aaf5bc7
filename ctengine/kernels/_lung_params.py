"""Lung-mask options in physical units (HU, mm, mm^2) resolved to the integers every kernel uses.

All implementations (reference, Numba CPU, numba.cuda) receive the same
:class:`LungParams` (per-slice method) and :class:`VolumeParams` (whole-series
stages), so thresholds and sizes are converted exactly once.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

from ..constants import (DEFAULT_INTERCEPT, DEFAULT_SLOPE, LUNG_AIR_HU, LUNG_AIRWAY_MAX_AREA_MM2,
                         LUNG_AIRWAY_MIN_AREA_MM2, LUNG_AIRWAY_WALL_MM, LUNG_CLOSING_MM, LUNG_LOW_HU,
                         LUNG_MIN_AREA_MM2, LUNG_MIN_VOLUME_FRACTION, LUNG_SPLIT_WINDOW_MM,
                         LUNG_TISSUE_HOLE_MM2, LUNG_TISSUE_HU, LUNG_TRACHEA_MIDLINE_MM)
from ._validate import finite, nominal_spacing, nonnegative, raw_threshold, rescale, spacing_pair


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


def _area_px(name: str, mm2: Any, pixel_mm2: float, cap: int) -> int:
    """An area option (mm2) in whole pixels, at least 1; areas beyond the slice act alike: cap."""
    return int(max(1, math.ceil(min(nonnegative(name, mm2) / pixel_mm2, cap))))


def _pixel_spacing(shape_yx: tuple[int, int], spacing: Any) -> tuple[float, float]:
    """Validated (sy, sx) in mm; None gives the nominal spacing (the public kernel warns)."""
    return spacing_pair(spacing) or nominal_spacing(shape_yx)


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
    fraction = nonnegative("min_volume_fraction", min_volume_fraction)
    if fraction > 1:
        raise ValueError(f"min_volume_fraction must be in [0, 1], got {min_volume_fraction!r}")
    return VolumeParams(
        seed_px=_area_px("airway_min_area_mm2", airway_min_area_mm2, sy * sx, cap),
        airway_max_px=int(math.floor(min(nonnegative("airway_max_area_mm2", airway_max_area_mm2)
                                         / (sy * sx), cap))),
        midline_px=int(math.floor(min(nonnegative("trachea_midline_mm", trachea_midline_mm) / sx, w))),
        wall_px=int(round(min(nonnegative("airway_wall_mm", airway_wall_mm) / min(sy, sx), max(h, w)))),
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
    slope, intercept = rescale(slope, intercept)
    low_hu, air_hu = finite("low_hu", low_hu), finite("air_hu", air_hu)
    if air_hu > low_hu:
        raise ValueError(f"air_hu must be <= low_hu, got air_hu={air_hu!r}, low_hu={low_hu!r}")
    h, w = (max(int(n), 1) for n in shape_yx)
    pixel_mm2 = sy * sx

    def length(name: str, mm: Any, step: float, cap: int, low: int) -> int:  # same for lengths
        return int(max(low, round(min(nonnegative(name, mm) / step, cap))))

    closing = nonnegative("closing_mm", closing_mm)
    return LungParams(
        t_low=raw_threshold(low_hu, slope, intercept),
        t_air=raw_threshold(air_hu, slope, intercept),
        airway_px=_area_px("airway_min_area_mm2", airway_min_area_mm2, pixel_mm2, h * w + 1),
        lung_px=_area_px("min_area_mm2", min_area_mm2, pixel_mm2, h * w + 1),
        split_px=int(max(1, math.floor(min(nonnegative("split_window_mm", split_window_mm) / sx, w)))),
        ry=length("closing_mm", closing, sy, h, 0),
        rx=length("closing_mm", closing, sx, w, 0),
        hole_px=_area_px("tissue_hole_mm2", tissue_hole_mm2, pixel_mm2, h * w + 1),
        t_soft=raw_threshold(finite("tissue_hu", tissue_hu), slope, intercept),
    )
