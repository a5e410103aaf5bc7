"""Plain numpy per-slice HU statistics: the specification the fast kernels are tested against.

For each slice, over the pixels where mask > 0, with HU = raw * slope +
intercept in float64. The column order of the float statistics is
``FLOAT_COLUMNS``.
"""
from __future__ import annotations

import numpy as np

from ..constants import (ENTROPY_BIN_WIDTH_HU, ENTROPY_EPS, HU_AERATED_BELOW, HU_CONSOLIDATION_BELOW,
                         HU_EMPHYSEMA_BELOW, HU_GROUND_GLASS_BELOW, HU_HIST_BINS, HU_HIST_RANGE,
                         STATS_PERCENTILES)

FLOAT_COLUMNS = ("mean", "std", "min", "max",
                 *(f"p{q}" for q in STATS_PERCENTILES),
                 "iqr", "mad", "skewness", "kurtosis", "entropy", "uniformity",
                 "frac_emphysema", "frac_aerated", "frac_ground_glass", "frac_consolidation",
                 "opacity_pct")


def slice_stats(raw: np.ndarray, mask: np.ndarray, slope: float,
                intercept: float) -> tuple[int, np.ndarray, np.ndarray]:
    """(count, float statistics in FLOAT_COLUMNS order, 64-bin HU histogram) of one slice."""
    hu = raw[mask > 0].astype(np.float64) * slope + intercept
    n = hu.size
    row = np.full(len(FLOAT_COLUMNS), np.nan)
    if n == 0:
        return 0, row, np.zeros(HU_HIST_BINS, dtype=np.int64)
    mean = hu.mean()
    flat = hu.min() == hu.max()
    d = hu - mean
    m2, m3, m4 = np.mean(d ** 2), np.mean(d ** 3), np.mean(d ** 4)
    pct = np.percentile(hu, list(STATS_PERCENTILES))
    bins = np.floor(hu / ENTROPY_BIN_WIDTH_HU)
    p = np.unique(bins, return_counts=True)[1] / n
    classes = [np.count_nonzero(hu < HU_EMPHYSEMA_BELOW),
               np.count_nonzero((hu >= HU_EMPHYSEMA_BELOW) & (hu < HU_AERATED_BELOW)),
               np.count_nonzero((hu >= HU_AERATED_BELOW) & (hu < HU_GROUND_GLASS_BELOW)),
               np.count_nonzero((hu >= HU_GROUND_GLASS_BELOW) & (hu < HU_CONSOLIDATION_BELOW))]
    row[:] = [mean,
              0.0 if flat else hu.std(),
              hu.min(), hu.max(),
              *pct,
              pct[3] - pct[1],
              0.0 if flat else np.mean(np.abs(d)),
              0.0 if flat else m3 / m2 ** 1.5,
              0.0 if flat else m4 / m2 ** 2,
              -np.sum(p * np.log2(p + ENTROPY_EPS)),
              np.sum(p ** 2),
              *(c / n for c in classes),
              100.0 * (classes[2] + classes[3]) / n]
    hist = np.histogram(hu, bins=HU_HIST_BINS, range=HU_HIST_RANGE)[0].astype(np.int64)
    return n, row, hist


def hu_stats(stack: np.ndarray, masks: np.ndarray, slope: float,
             intercept: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per slice of (z, y, x): counts int64 (z,), float64 statistics (z, F), histograms int64 (z, 64)."""
    z = stack.shape[0]
    counts = np.zeros(z, dtype=np.int64)
    stats = np.empty((z, len(FLOAT_COLUMNS)), dtype=np.float64)
    hists = np.zeros((z, HU_HIST_BINS), dtype=np.int64)
    for k in range(z):
        counts[k], stats[k], hists[k] = slice_stats(stack[k], masks[k], slope, intercept)
    return counts, stats, hists
