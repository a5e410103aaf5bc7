"""Numba kernel of the label pyramid: 2 x 2 block modes of a (z, y, x) stack (one thread, cached).

Only the feature pass, whose workers run Numba kernels anyway, halves
labels; ingest halves images with numpy and never imports this module.
Results equal :mod:`ctengine.store._pyramid_reference` exactly.
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, inline="always")
def _mode4(a, b, c, d):
    """The most frequent of four values; a tie goes to the larger."""
    if a == b and b == c and c == d:
        return a
    best, best_count = a, 0
    for v in (a, b, c, d):
        count = (a == v) + (b == v) + (c == v) + (d == v)
        if count > best_count or (count == best_count and v > best):
            best, best_count = v, count
    return best


def halve_mode(level: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The most frequent value of each 2 x 2 block of a label stack (a tie goes to the larger), into ``out``
    (a new array by default)."""
    if out is None:
        out = np.empty((level.shape[0], level.shape[1] // 2, level.shape[2] // 2), level.dtype)
    return _halve_mode(level, out)


@njit(cache=True)
def _halve_mode(level, out):
    """out[k, i, j] = the most frequent value of the 2 x 2 block at (2i, 2j); a tie goes to the larger."""
    z, h, w = out.shape
    for k in range(z):
        for i in range(h):
            for j in range(w):
                out[k, i, j] = _mode4(level[k, 2 * i, 2 * j], level[k, 2 * i, 2 * j + 1],
                                      level[k, 2 * i + 1, 2 * j], level[k, 2 * i + 1, 2 * j + 1])
    return out
