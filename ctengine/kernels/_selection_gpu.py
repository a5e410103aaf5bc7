"""numba.cuda kernels of the CT selection, launched on CuPy (device) arrays.

Grid (blocks, z): each thread counts its share of one slice's region, then
adds it to the slice's total with one atomic; counts are exact.
"""
from __future__ import annotations

import math
from typing import Any

from numba import cuda

_THREADS = 256
_PIXELS_PER_THREAD = 16
_MAX_BLOCKS_PER_SLICE = 64
_MAX_GRID_Y = 65535  # slices per launch (CUDA grid y limit)
_MIN_GRID = 128  # numba warns (NumbaPerformanceWarning) below 128 blocks; extra blocks idle


@cuda.jit
def _dark_kernel(stack, r0, r1, c0, c1, dark, out):
    k = cuda.blockIdx.y
    width = c1 - c0
    total = (r1 - r0) * width
    n = 0
    start = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    for idx in range(start, total, cuda.gridDim.x * cuda.blockDim.x):
        i = idx // width
        if stack[k, r0 + i, c0 + idx - i * width] < dark:
            n += 1
    if n:
        cuda.atomic.add(out, k, n)


@cuda.jit
def _nonzero_kernel(masks, out):
    k = cuda.blockIdx.y
    nx = masks.shape[2]
    total = masks.shape[1] * nx
    n = 0
    start = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    for idx in range(start, total, cuda.gridDim.x * cuda.blockDim.x):
        i = idx // nx
        if masks[k, i, idx - i * nx] != 0:
            n += 1
    if n:
        cuda.atomic.add(out, k, n)


def _blocks(pixels: int, z: int) -> int:
    """Blocks per slice: enough for the pixels, and at least _MIN_GRID in the whole grid."""
    per_slice = min(_MAX_BLOCKS_PER_SLICE, math.ceil(pixels / (_THREADS * _PIXELS_PER_THREAD)))
    return max(1, per_slice, math.ceil(_MIN_GRID / max(1, z)))


def dark_counts(stack: Any, r0: int, r1: int, c0: int, c1: int, dark: int, xp: Any) -> Any:
    """Per slice, the number of pixels < dark in the region, as an int64 (z,) device array."""
    out = xp.zeros(stack.shape[0], dtype=xp.int64)
    for s in range(0, stack.shape[0], _MAX_GRID_Y):
        part = stack[s:s + _MAX_GRID_Y]
        bx = _blocks((r1 - r0) * (c1 - c0), part.shape[0])
        _dark_kernel[(bx, part.shape[0]), _THREADS](part, r0, r1, c0, c1, dark, out[s:s + _MAX_GRID_Y])
    return out


def nonzero_counts(masks: Any, xp: Any) -> Any:
    """Per slice, the number of nonzero pixels, as an int64 (z,) device array."""
    out = xp.zeros(masks.shape[0], dtype=xp.int64)
    for s in range(0, masks.shape[0], _MAX_GRID_Y):
        part = masks[s:s + _MAX_GRID_Y]
        bx = _blocks(masks.shape[1] * masks.shape[2], part.shape[0])
        _nonzero_kernel[(bx, part.shape[0]), _THREADS](part, out[s:s + _MAX_GRID_Y])
    return out
