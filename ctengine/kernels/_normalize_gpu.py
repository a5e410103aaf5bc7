"""numba.cuda kernel of the normalisations, launched on CuPy (device) arrays.

The same single affine kernel as the CPU path. On a real GPU, NVVM may
contract ``x * slope + intercept`` into one fused multiply-add: results stay
bit-identical whenever ``x * slope`` is exact (slope 1, the COVID-CTset
case) and may differ by one float32 ulp otherwise. Modes "max", "fixed" and
"zscore" are pure subtraction/division and always bit-identical.
"""
from __future__ import annotations

import math
from typing import Any

from numba import cuda

_THREADS = 256
_MAX_BLOCKS = 8192
_MIN_GRID = 128  # numba warns (NumbaPerformanceWarning) below 128 blocks; extra blocks idle


@cuda.jit
def _affine_kernel(x, slope, intercept, lo, div, clip, out):
    z, ny, nx = x.shape
    per = ny * nx
    total = z * per
    for idx in range(cuda.grid(1), total, cuda.gridsize(1)):
        k = idx // per
        rem = idx - k * per
        i = rem // nx
        j = rem - i * nx
        d = div[k]
        if d == 0.0:
            out[k, i, j] = 0.0
        else:
            v = ((float(x[k, i, j]) * slope + intercept) - lo) / d
            if clip:
                v = min(max(v, 0.0), 1.0)
            out[k, i, j] = v


def slice_max(stack: Any, xp: Any) -> Any:
    """Per-slice maximum of a (z, y, x) device stack as float64 (z,), computed on the device."""
    z = stack.shape[0]
    return stack.reshape(z, -1).max(axis=1).astype(xp.float64)


def affine_f32(stack: Any, slope: float, intercept: float, lo: float, div: Any,
               clip: bool, xp: Any) -> Any:
    """float32(clip(((stack * slope + intercept) - lo) / div[k])) on the device; div[k] == 0 gives zeros."""
    out = xp.empty(stack.shape, dtype=xp.float32)
    total = out.size
    if total == 0:
        return out
    blocks = max(_MIN_GRID, min(_MAX_BLOCKS, math.ceil(total / _THREADS)))
    _affine_kernel[blocks, _THREADS](stack, float(slope), float(intercept), float(lo), div,
                                     bool(clip), out)
    return out
