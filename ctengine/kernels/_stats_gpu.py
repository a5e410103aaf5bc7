"""numba.cuda kernels of the per-slice HU statistics, launched on CuPy (device) arrays.

Two kernels, no host round trip:

1. ``_hist_kernel``, grid (blocks, z): masked raw-value histogram per slice
   in global memory (int32 atomics) plus the occupied range [lo, hi].
2. ``_derive_kernel``, one block per slice: block-parallel sums for the
   count, mean, central moments, density classes and the 64-bin HU
   histogram (shared-memory tree reductions), then thread 0 walks the
   cumulative histogram for the percentiles and the entropy bins, with the
   same serial code as the CPU kernel.

Sums run in a different order than on the CPU, and NVVM fuses
multiply-adds (the percentile interpolation a + (b - a) * g becomes one
FMA), so moments and percentiles agree with the reference to about 1e-12
relative rather than bit for bit. Counts are exact; with slope 1 (HU =
raw - 1024) min, max, the density fractions and the 64-bin histogram are
exact too, while other slopes may move a value lying exactly on a bin or
class boundary by one ulp.
"""
from __future__ import annotations

import math
from typing import Any

from numba import cuda, float64, int32, int64

from ..constants import HU_HIST_BINS
from . import _stats_cpu as _cpu

_HIST_THREADS = 256
_PIXELS_PER_THREAD = 16
_MAX_BLOCKS_PER_SLICE = 64
_THREADS = 128  # threads of the derive kernel (power of two: tree reductions)
_BATCH = 256  # slices per launch: bounds the raw histograms to 64 MiB for 16-bit data
_MIN_GRID = 128  # numba warns (NumbaPerformanceWarning) below 128 blocks; extra blocks idle
_NB = HU_HIST_BINS
_N_FLOAT = _cpu.N_FLOAT
_C_MEAN, _C_MIN, _C_MAX, _C_P0 = _cpu.C_MEAN, _cpu.C_MIN, _cpu.C_MAX, _cpu.C_P0
_C_ENT, _C_UNI = _cpu.C_ENT, _cpu.C_UNI

_hu_of = cuda.jit(device=True)(_cpu.hu_of.py_func)
_hist_bin = cuda.jit(device=True)(_cpu.hist_bin.py_func)
_density_class = cuda.jit(device=True)(_cpu.density_class.py_func)
_percentiles = cuda.jit(device=True)(_cpu.percentiles.py_func)
_entropy_uniformity = cuda.jit(device=True)(_cpu.entropy_uniformity.py_func)
_finish = cuda.jit(device=True)(_cpu.finish.py_func)


@cuda.jit
def _hist_kernel(x, mask, offset, hist, vmin, vmax):
    k = cuda.blockIdx.y
    nx = x.shape[2]
    total = x.shape[1] * nx
    lo = hist.shape[1]
    hi = -1
    start = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    for idx in range(start, total, cuda.gridDim.x * cuda.blockDim.x):
        i = idx // nx
        j = idx - i * nx
        if mask[k, i, j]:
            b = int32(x[k, i, j]) + offset
            cuda.atomic.add(hist, (k, b), 1)
            lo = min(lo, b)
            hi = max(hi, b)
    if hi >= lo:
        cuda.atomic.min(vmin, k, lo)
        cuda.atomic.max(vmax, k, hi)


@cuda.jit
def _derive_kernel(hist, vmin, vmax, offset, slope, intercept, qs, edges, counts, stats, hists):
    k = cuda.blockIdx.x
    t = cuda.threadIdx.x
    if k >= vmin.shape[0]:  # padding block of a small grid
        return
    lo = vmin[k]
    hi = vmax[k]
    if hi < lo:  # empty mask: the whole block leaves together
        if t == 0:
            counts[k] = 0
            for c in range(stats.shape[1]):
                stats[k, c] = math.nan
        return
    h = hist[k]
    si = cuda.shared.array((6, _THREADS), int64)  # n, s1, classes 0..3
    sf = cuda.shared.array((4, _THREADS), float64)  # m2, m3, m4, mad
    sh = cuda.shared.array(_NB, int32)
    for b in range(t, _NB, _THREADS):
        sh[b] = 0
    n_t = int64(0)
    s1_t = int64(0)
    for b in range(lo + t, hi + 1, _THREADS):
        c = int64(h[b])
        n_t += c
        s1_t += c * (b - offset)
    si[0, t] = n_t
    si[1, t] = s1_t
    cuda.syncthreads()
    s = _THREADS // 2
    while s > 0:
        if t < s:
            si[0, t] += si[0, t + s]
            si[1, t] += si[1, t + s]
        cuda.syncthreads()
        s //= 2
    n = si[0, 0]
    mean = (si[1, 0] / n) * slope + intercept
    m2 = 0.0
    m3 = 0.0
    m4 = 0.0
    mad = 0.0
    for r in range(2, 6):
        si[r, t] = 0
    for b in range(lo + t, hi + 1, _THREADS):
        c = h[b]
        if c == 0:
            continue
        v = _hu_of(b, offset, slope, intercept)
        d = v - mean
        d2 = d * d
        m2 += c * d2
        m3 += c * d2 * d
        m4 += c * d2 * d2
        mad += c * abs(d)
        cls = _density_class(v)
        if cls >= 0:
            si[2 + cls, t] += c
        idx = _hist_bin(v, edges)
        if idx >= 0:
            cuda.atomic.add(sh, idx, c)
    sf[0, t] = m2
    sf[1, t] = m3
    sf[2, t] = m4
    sf[3, t] = mad
    cuda.syncthreads()
    s = _THREADS // 2
    while s > 0:
        if t < s:
            for r in range(2, 6):
                si[r, t] += si[r, t + s]
            for r in range(4):
                sf[r, t] += sf[r, t + s]
        cuda.syncthreads()
        s //= 2
    for b in range(t, _NB, _THREADS):
        hists[k, b] = sh[b]
    if t == 0:
        row = stats[k]
        counts[k] = n
        row[_C_MEAN] = mean
        row[_C_MIN] = _hu_of(lo, offset, slope, intercept)
        row[_C_MAX] = _hu_of(hi, offset, slope, intercept)
        _percentiles(h, lo, hi, n, qs, offset, slope, intercept, row, _C_P0)
        ent, uni = _entropy_uniformity(h, lo, hi, n, offset, slope, intercept)
        row[_C_ENT] = ent
        row[_C_UNI] = uni
        classes = cuda.local.array(4, int64)
        for r in range(4):
            classes[r] = si[2 + r, 0]
        _finish(row, n, lo, hi, sf[0, 0], sf[1, 0], sf[2, 0], sf[3, 0], classes)


def hu_stats(x: Any, mask: Any, offset: int, nbins: int, slope: float, intercept: float,
             qs: Any, edges: Any, xp: Any) -> tuple[Any, Any, Any]:
    """Device (z, y, x) raw stack and mask in; counts int64 (z,), stats float64 (z, F), hists int64 (z, 64) out.

    qs and edges are float64 device arrays (percentile fractions, histogram edges).
    """
    z, ny, nx = x.shape
    counts = xp.zeros(z, dtype=xp.int64)
    stats = xp.empty((z, _N_FLOAT), dtype=xp.float64)
    hists = xp.zeros((z, _NB), dtype=xp.int64)
    per_slice = min(_MAX_BLOCKS_PER_SLICE, math.ceil(ny * nx / (_HIST_THREADS * _PIXELS_PER_THREAD)))
    for s in range(0, z, _BATCH):
        e = min(z, s + _BATCH)
        bx = max(1, per_slice, math.ceil(_MIN_GRID / (e - s)))
        hist = xp.zeros((e - s, nbins), dtype=xp.int32)
        vmin = xp.full(e - s, nbins, dtype=xp.int32)
        vmax = xp.full(e - s, -1, dtype=xp.int32)
        _hist_kernel[(bx, e - s), _HIST_THREADS](x[s:e], mask[s:e], offset, hist, vmin, vmax)
        _derive_kernel[max(e - s, _MIN_GRID), _THREADS](hist, vmin, vmax, offset, float(slope), float(intercept),
                                        qs, edges, counts[s:e], stats[s:e], hists[s:e])
    return counts, stats, hists
