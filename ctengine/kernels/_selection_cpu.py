"""Numba CPU kernels of the CT selection (njit(parallel=True), cached).

Inner loops index with unsigned offsets (no negative-index wraparound code)
and compare in the stack's own dtype, so LLVM vectorises them; each slice is
one parallel task.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def _dark_counts(stack, r0, r1, c0, c1, dark):
    z = stack.shape[0]
    out = np.zeros(z, dtype=np.int64)
    d = stack.dtype.type(dark)
    width = np.uint64(c1 - c0)
    first = np.uint64(c0)
    for k in prange(z):
        n = 0
        for i in range(r0, r1):
            row = np.int32(0)
            for j in range(width):
                row += np.int32(stack[k, i, first + np.uint64(j)] < d)
            n += row
        out[k] = n
    return out


def dark_counts(stack: np.ndarray, r0: int, r1: int, c0: int, c1: int, dark: int) -> np.ndarray:
    """Per slice, the number of pixels < dark in rows r0..r1-1, cols c0..c1-1, as int64 (z,)."""
    info = np.iinfo(stack.dtype)
    if dark > info.max:  # every value of the dtype is dark (e.g. uint8 and 300)
        return np.full(stack.shape[0], (r1 - r0) * (c1 - c0), dtype=np.int64)
    if dark <= info.min:
        return np.zeros(stack.shape[0], dtype=np.int64)
    return _dark_counts(stack, r0, r1, c0, c1, dark)


@njit(parallel=True, cache=True)
def nonzero_counts(masks):
    """Per slice, the number of nonzero pixels, as int64 (z,)."""
    z, ny, nx = masks.shape
    out = np.zeros(z, dtype=np.int64)
    width = np.uint64(nx)
    for k in prange(z):
        n = 0
        for i in range(ny):
            row = np.int32(0)
            for j in range(width):
                row += np.int32(masks[k, i, j] != 0)
            n += row
        out[k] = n
    return out
