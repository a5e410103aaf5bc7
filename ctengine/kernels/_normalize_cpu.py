"""Numba CPU kernels of the normalisations (njit(parallel=True), cached).

One kernel covers every mode: out = float32(clip(((x * slope + intercept) - lo) / div[k]))
with the identity values (slope 1, intercept 0, lo 0) making each mode's
operations exactly those of the numpy reference, so results are bit-identical.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def slice_max(x):
    """Per-slice maximum of a (z, y, x) integer stack, as float64 (z,)."""
    z, ny, nx = x.shape
    rows = np.empty((z, ny), dtype=x.dtype)
    for r in prange(z * ny):
        k = r // ny
        i = r - k * ny
        m = x[k, i, 0]
        for j in range(1, nx):
            v = x[k, i, j]
            if v > m:
                m = v
        rows[k, i] = m
    out = np.empty(z, dtype=np.float64)
    for k in range(z):
        m = rows[k, 0]
        for i in range(1, ny):
            if rows[k, i] > m:
                m = rows[k, i]
        out[k] = np.float64(m)
    return out


@njit(parallel=True, cache=True)
def affine_f32(x, slope, intercept, lo, div, clip, out):
    """out[k] = float32(((x[k] * slope + intercept) - lo) / div[k]), clipped to [0, 1] if clip.

    A slice with div[k] == 0 gives zeros (the all-zero slice of mode "max").
    """
    z, ny, nx = x.shape
    for r in prange(z * ny):
        k = r // ny
        i = r - k * ny
        d = div[k]
        if d == 0.0:
            for j in range(nx):
                out[k, i, j] = np.float32(0.0)
        elif clip:
            for j in range(nx):
                v = ((np.float64(x[k, i, j]) * slope + intercept) - lo) / d
                if v < 0.0:
                    v = 0.0
                elif v > 1.0:
                    v = 1.0
                out[k, i, j] = np.float32(v)
        else:
            for j in range(nx):
                out[k, i, j] = np.float32(((np.float64(x[k, i, j]) * slope + intercept) - lo) / d)
