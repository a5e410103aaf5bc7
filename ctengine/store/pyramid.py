"""The multiscale pyramid of a series: levels 1..n halving y and x until a slice is at most 64 pixels.

Level k of an image holds the 2 x 2 block means of level k - 1 (rounded
half up, in the stored dtype, so raw values stay raw); level k of a label
holds the blocks' modes (a tie goes to the larger label), so labels keep
their values and their geometry matches the image's. A trailing odd row or
column is left out. Block means are numpy (about 0.08 ms per 512 x 512
slice for all levels), so ingest workers import no Numba (about 60 MB a
worker); block modes are a Numba kernel (:mod:`ctengine.store._pyramid_cpu`),
loaded only when labels are halved. Level 0 is the stored series itself: only it is
checksummed, read by the kernels and verified against the sources; the
levels are checked against it by ``ctengine verify``.
"""
from __future__ import annotations

import numpy as np

from . import names
from .buffers import ThreadBuffers

__all__ = ["LEVEL_NAMES", "METHOD", "MIN_SIDE", "halve_mean", "level_count", "level_shapes", "levels"]

#: a level is made while the previous one's larger side exceeds this (pixels)
MIN_SIDE = 64
#: how the levels are made, as the OME-Zarr multiscales ``type`` says it (and what a lung label's plan names)
METHOD = f"2x2 block mean down to {MIN_SIDE} pixels (labels: 2x2 block mode)"
#: the array names levels 1..n can have (a slice side of up to 2**31 pixels): what xarray is told to
#: leave out to open a store as a DataTree (``xr.open_datatree(store, drop_variables=LEVEL_NAMES)``)
LEVEL_NAMES = tuple(names.level_name(k) for k in range(1, 32))
#: slices :func:`halve_mean` sums at a time (its scratch: a few MB whatever the series' length)
BLOCK_SLICES = 8

_scratch = ThreadBuffers()


def level_count(shape_yx: tuple[int, int]) -> int:
    """Number of levels above 0 for slices of ``shape_yx`` (pixels).

    Examples
    --------
    >>> level_count((512, 512)), level_count((64, 64)), level_count((96, 96)), level_count((128, 1))
    (3, 0, 1, 0)
    """
    h, w = (int(n) for n in shape_yx)
    count = 0
    while max(h, w) > MIN_SIDE and min(h, w) >= 2:
        h, w, count = h // 2, w // 2, count + 1
    return count


def level_shapes(shape: tuple[int, int, int]) -> list[tuple[int, int, int]]:
    """Shapes (z, y, x) of levels 1..n of a stack of ``shape``.

    Examples
    --------
    >>> level_shapes((3, 512, 333))
    [(3, 256, 166), (3, 128, 83), (3, 64, 41)]
    """
    z, h, w = (int(n) for n in shape)
    out = []
    for _ in range(level_count((h, w))):
        h, w = h // 2, w // 2
        out.append((z, h, w))
    return out


def halve_mean(level: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """(sum of each 2 x 2 block + 2) // 4 of an unsigned (z, y, x) stack, in its dtype (odd last row / column
    left out), into ``out`` (a new array by default).

    The sums stay in the stack's dtype when its largest value leaves room
    for four (raw CT: up to 16,383 in uint16), else they are widened. Slices
    are halved :data:`BLOCK_SLICES` at a time through a scratch buffer kept
    per thread, so no memory the size of the series is allocated.

    Examples
    --------
    >>> halve_mean(np.array([[[1, 2], [3, 4]]], np.uint16))
    array([[[3]]], dtype=uint16)
    >>> halve_mean(np.array([[[65535, 65535], [65535, 65534]]], np.uint16))
    array([[[65535]]], dtype=uint16)
    """
    z, h, w = level.shape[0], level.shape[1] // 2 * 2, level.shape[2] // 2 * 2
    if out is None:
        out = np.empty((z, h // 2, w // 2), level.dtype)
    room = level.size and int(level.max()) <= (int(np.iinfo(level.dtype).max) - 2) // 4
    narrow = bool(room)  # the sums fit the stack's dtype
    wide = level.dtype if narrow else np.dtype(np.uint32 if level.dtype.itemsize <= 2 else np.uint64)
    for start in range(0, z, BLOCK_SLICES):
        part = level[start:start + BLOCK_SLICES]
        n = len(part)
        rows = _scratch.get("rows", n * (h // 2) * w, wide).reshape(n, h // 2, w)
        np.add(part[:, 0:h:2, :w], part[:, 1:h:2, :w], out=rows, dtype=wide)
        total = out[start:start + n] if narrow else \
            _scratch.get("total", n * (h // 2) * (w // 2), wide).reshape(n, h // 2, w // 2)
        np.add(rows[:, :, 0::2], rows[:, :, 1::2], out=total)
        total += 2
        total >>= 2
        if not narrow:
            out[start:start + n] = total  # each mean is at most the largest value: it fits the dtype
    return out


def levels(stack: np.ndarray, *, labels: bool = False, buffers: ThreadBuffers | None = None) -> list[np.ndarray]:
    """Levels 1..n of a (z, y, x) stack: block means of an image, block modes of a label.

    Parameters
    ----------
    stack : numpy.ndarray
        Unsigned integer (z, y, x) stack: raw values or label values.
    labels : bool
        Halve by block mode (labels) instead of block mean (images).
    buffers : ThreadBuffers, optional
        Write level k into the thread's buffer ``level{k}`` instead of new
        memory: the levels are then valid until this thread's next call.

    Returns
    -------
    list of numpy.ndarray
        One stack per level, in ``stack``'s dtype; empty when the slices are
        at most :data:`MIN_SIDE` pixels already.

    Examples
    --------
    >>> image = np.arange(16, dtype=np.uint16).reshape(1, 4, 4).repeat(32, 1).repeat(32, 2)
    >>> [level.shape for level in levels(image)]
    [(1, 64, 64)]
    >>> label = np.tile(np.array([[[0, 1], [2, 2]]], np.uint8), (1, 64, 64))  # every 2 x 2 block: 0 1 / 2 2
    >>> np.unique(levels(label, labels=True)[0])
    array([2], dtype=uint8)
    """
    if stack.ndim != 3 or stack.dtype.kind != "u":
        raise ValueError(f"levels need an unsigned integer (z, y, x) stack, got {stack.dtype} {stack.shape}")
    if labels:
        from ._pyramid_cpu import halve_mode as halve
    else:
        halve = halve_mean
    out, level = [], stack
    for k, shape in enumerate(level_shapes(stack.shape), start=1):
        into = None if buffers is None else buffers.get(f"level{k}", int(np.prod(shape)), stack.dtype).reshape(shape)
        level = halve(level, into)
        out.append(level)
    return out
