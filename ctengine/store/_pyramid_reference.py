"""Plain numpy reference of the pyramid kernels (:mod:`ctengine.store._pyramid_cpu` is tested against it)."""
from __future__ import annotations

import numpy as np


def _blocks(level: np.ndarray) -> list[np.ndarray]:
    """The four pixels of every 2 x 2 block of a (z, y, x) stack (a trailing odd row or column left out)."""
    h, w = level.shape[1] // 2 * 2, level.shape[2] // 2 * 2
    return [level[:, i:h:2, j:w:2] for i in (0, 1) for j in (0, 1)]


def halve_mean(level: np.ndarray) -> np.ndarray:
    """2 x 2 block means of an unsigned integer stack, rounded half up, in its dtype."""
    total = sum(block.astype(np.uint64) for block in _blocks(level))
    return ((total + 2) // 4).astype(level.dtype)


def halve_mode(level: np.ndarray) -> np.ndarray:
    """2 x 2 block modes of a label stack; a tie goes to the larger label value."""
    blocks = _blocks(level)
    best, best_count = np.zeros_like(blocks[0]), np.zeros(blocks[0].shape, np.int64)
    for candidate in blocks:
        count = sum((block == candidate).astype(np.int64) for block in blocks)
        better = (count > best_count) | ((count == best_count) & (candidate > best))
        best, best_count = np.where(better, candidate, best), np.where(better, count, best_count)
    return best
