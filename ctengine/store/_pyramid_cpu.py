"""The pyramid's halvings of a (z, y, x) stack: block means in numpy, block modes in Numba (one thread, cached).

Block means are four strided numpy additions (0.2 ms per 512 x 512 slice
for all levels), so ingest, which runs no other Numba kernel, compiles
nothing: a JIT compile in a worker costs about 60 MB. Block modes, for the
labels the feature pass writes (its workers run Numba kernels anyway), are
a Numba loop. A series is one Dask task, so both run on one thread.
Results equal :mod:`ctengine.store._pyramid_reference` exactly.
"""
from __future__ import annotations

import numpy as np
from numba import njit


def halve_mean(level: np.ndarray) -> np.ndarray:
    """(sum of each 2 x 2 block + 2) // 4 of an unsigned stack, in its dtype (odd last row / column left out)."""
    h, w = level.shape[1] // 2 * 2, level.shape[2] // 2 * 2
    wide = np.uint32 if level.dtype.itemsize <= 2 else np.uint64  # room for four values
    rows = level[:, 0:h:2, :w].astype(wide)
    rows += level[:, 1:h:2, :w]
    total = rows[:, :, 0::2] + rows[:, :, 1::2]
    total += 2
    total >>= 2
    return total.astype(level.dtype)


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


def halve_mode(level: np.ndarray) -> np.ndarray:
    """The most frequent value of each 2 x 2 block of a label stack (a tie goes to the larger)."""
    return _halve_mode(level, np.empty((level.shape[0], level.shape[1] // 2, level.shape[2] // 2), level.dtype))


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
