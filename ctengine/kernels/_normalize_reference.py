"""Plain numpy normalisations: the specification the fast kernels are tested against.

Every mode computes in float64 and casts once to float32 at the end. The
inputs are raw integer slices (y, x) or stacks (z, y, x); validation is the
public layer's job.
"""
from __future__ import annotations

import numpy as np


def _per_slice(x: np.ndarray, func) -> np.ndarray:
    if x.ndim == 2:
        return func(x)
    out = np.empty(x.shape, dtype=np.float32)
    for k in range(x.shape[0]):
        out[k] = func(x[k])
    return out


def _max_one(s: np.ndarray) -> np.ndarray:
    m = s.max()
    if m == 0:
        return np.zeros(s.shape, dtype=np.float32)
    return (s / m).astype(np.float32)


def normalize_max(x: np.ndarray) -> np.ndarray:
    """float32(x / max(x)) per slice, as the dataset's viewer does; a slice whose maximum is 0 gives zeros."""
    return _per_slice(x, _max_one)


def normalize_fixed(x: np.ndarray, constant: float) -> np.ndarray:
    """float32(x / constant), the division done in float64."""
    return (x / np.float64(constant)).astype(np.float32)


def normalize_hu(x: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """float32(raw * slope + intercept) in HU."""
    return (x.astype(np.float64) * slope + intercept).astype(np.float32)


def normalize_window(x: np.ndarray, slope: float, intercept: float,
                     center: float, width: float) -> np.ndarray:
    """HU window [center - width/2, center + width/2] mapped linearly onto [0, 1], clipped."""
    hu = x.astype(np.float64) * slope + intercept
    lo = center - width / 2.0
    return np.clip((hu - lo) / width, 0.0, 1.0).astype(np.float32)


def normalize_zscore(x: np.ndarray, mean: float, std: float) -> np.ndarray:
    """float32((x - mean) / std), mean and std in the units of x (raw)."""
    return ((x.astype(np.float64) - mean) / std).astype(np.float32)
