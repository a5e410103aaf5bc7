"""The multiscale pyramid of a series: levels 1..n halving y and x until a slice is at most 64 pixels.

Level k of an image is the 2 x 2 block mean of level k - 1 (rounded half
up, in the stored dtype); level k of a label is its nearest neighbour (every
second row and column), so labels keep their values. A trailing odd row or
column is left out, as a viewer's overview needs no more. Level 0 is the
stored series itself; only it is checksummed, read by the kernels and
verified against the sources.
"""
from __future__ import annotations

import numpy as np

__all__ = ["MIN_SIDE", "level_count", "levels"]

#: a level is made while the previous one's larger side exceeds this (pixels)
MIN_SIDE = 64


def level_count(shape_yx: tuple[int, int]) -> int:
    """Number of levels above 0 for slices of ``shape_yx``.

    Examples
    --------
    >>> level_count((512, 512)), level_count((64, 64)), level_count((96, 96))
    (3, 0, 1)
    """
    h, w = (int(n) for n in shape_yx)
    count = 0
    while max(h, w) > MIN_SIDE and min(h, w) >= 2:
        h, w, count = h // 2, w // 2, count + 1
    return count


def levels(stack: np.ndarray, *, labels: bool = False) -> list[np.ndarray]:
    """Levels 1..n of a (z, y, x) stack: block means of an image, nearest neighbours of a label.

    Examples
    --------
    >>> s = np.arange(16, dtype=np.uint16).reshape(1, 4, 4)
    >>> levels(np.repeat(np.repeat(s, 32, 1), 32, 2))[0].shape
    (1, 64, 64)
    """
    out, level = [], stack
    for _ in range(level_count(stack.shape[1:])):
        h, w = level.shape[1] // 2 * 2, level.shape[2] // 2 * 2
        level = level[:, :h, :w]
        if labels:
            level = np.ascontiguousarray(level[:, ::2, ::2])
        else:
            total = (level[:, 0::2, 0::2].astype(np.uint32) + level[:, 1::2, 0::2] + level[:, 0::2, 1::2]
                     + level[:, 1::2, 1::2] + 2)
            level = (total // 4).astype(stack.dtype)
        out.append(level)
    return out
