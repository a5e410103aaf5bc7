"""Numba CPU kernel of the per-slice HU statistics (njit(parallel=True), cached).

Raw values are integers, so one pass per slice builds the masked histogram of
raw values (65,536 bins for 16-bit data); every statistic then derives from
the occupied bins [lo, hi]: moments in float64 from count * value sums,
exact percentiles from the cumulative histogram with numpy's linear
interpolation, the entropy bins, the 64-bin HU histogram and the density
fractions. ``percentiles`` and ``entropy_uniformity`` are plain serial code
shared with the numba.cuda kernel (compiled there from ``.py_func``).
"""
from __future__ import annotations

import math

import numpy as np
from numba import get_num_threads, njit, prange

from ..constants import (ENTROPY_BIN_WIDTH_HU, ENTROPY_EPS, HU_AERATED_BELOW, HU_CONSOLIDATION_BELOW,
                         HU_EMPHYSEMA_BELOW, HU_GROUND_GLASS_BELOW)
from ._words import mask_words

# column indices of the float statistics (order of _stats_reference.FLOAT_COLUMNS)
C_MEAN, C_STD, C_MIN, C_MAX, C_P0 = 0, 1, 2, 3, 4
C_IQR, C_MAD, C_SKEW, C_KURT, C_ENT, C_UNI = 9, 10, 11, 12, 13, 14
C_FRAC0, C_OPACITY = 15, 19
N_FLOAT = 20
_BW = ENTROPY_BIN_WIDTH_HU
_EPS = ENTROPY_EPS
_E, _A, _G, _C = HU_EMPHYSEMA_BELOW, HU_AERATED_BELOW, HU_GROUND_GLASS_BELOW, HU_CONSOLIDATION_BELOW


@njit(cache=True)
def hu_of(b, offset, slope, intercept):
    """HU of histogram bin b (raw = b - offset), computed as the reference does."""
    return float(b - offset) * slope + intercept


@njit(cache=True)
def percentiles(h, lo, hi, n, qs, offset, slope, intercept, out, col):
    """numpy.percentile(method="linear") of the values histogrammed in h, into out[col:col+len(qs)].

    qs are ascending fractions (q / 100). Order statistics come from the
    cumulative histogram; the interpolation is numpy's ``_lerp``, bit for bit.
    """
    b = lo
    cum = h[lo]  # number of values <= bin b
    for j in range(qs.shape[0]):
        virtual = float(n - 1) * qs[j]
        if virtual >= n - 1:
            out[col + j] = hu_of(hi, offset, slope, intercept)
            continue
        below = math.floor(virtual)
        rank = int(below)
        gamma = virtual - below
        while cum <= rank:
            b += 1
            cum += h[b]
        b2 = b
        cum2 = cum
        while cum2 <= rank + 1:
            b2 += 1
            cum2 += h[b2]
        a = hu_of(b, offset, slope, intercept)
        c = hu_of(b2, offset, slope, intercept)
        diff = c - a
        res = a + diff * gamma
        if gamma >= 0.5:
            res = c - diff * (1.0 - gamma)
        out[col + j] = res


@njit(cache=True)
def entropy_uniformity(h, lo, hi, n, offset, slope, intercept):
    """pyradiomics entropy -sum p log2(p + eps) and uniformity sum p^2 over HU bins floor(HU / 25)."""
    ent = 0.0
    uni = 0.0
    cur = math.floor(hu_of(lo, offset, slope, intercept) / _BW)
    cnt = 0
    for b in range(lo, hi + 1):
        c = h[b]
        if c == 0:
            continue
        e = math.floor(hu_of(b, offset, slope, intercept) / _BW)
        if e != cur:
            p = cnt / n
            ent -= p * math.log2(p + _EPS)
            uni += p * p
            cur = e
            cnt = 0
        cnt += c
    p = cnt / n
    ent -= p * math.log2(p + _EPS)
    uni += p * p
    return ent, uni


@njit(cache=True)
def hist_bin(v, edges):
    """Bin of HU value v in the equal-width edges, as numpy.histogram finds it; -1 outside."""
    nb = edges.shape[0] - 1
    first = edges[0]
    last = edges[nb]
    if v < first or v > last:
        return -1
    idx = int((v - first) / (last - first) * nb)
    if idx == nb:
        idx -= 1
    if v < edges[idx]:
        idx -= 1
    elif idx != nb - 1 and v >= edges[idx + 1]:
        idx += 1
    return idx


@njit(cache=True)
def density_class(v):
    """0 emphysema, 1 aerated, 2 ground glass, 3 consolidation (half-open HU intervals), -1 above."""
    if v < _E:
        return 0
    if v < _A:
        return 1
    if v < _G:
        return 2
    if v < _C:
        return 3
    return -1


@njit(cache=True)
def finish(row, n, lo, hi, m2, m3, m4, mad, classes):
    """Write the moment-based statistics and fractions into row (sums m2, m3, m4, mad not yet / n)."""
    if lo == hi:  # flat region: pyradiomics returns 0 for skewness and kurtosis
        row[C_STD] = 0.0
        row[C_MAD] = 0.0
        row[C_SKEW] = 0.0
        row[C_KURT] = 0.0
    else:
        m2 /= n
        row[C_STD] = math.sqrt(m2)
        row[C_MAD] = mad / n
        row[C_SKEW] = (m3 / n) / m2 ** 1.5
        row[C_KURT] = (m4 / n) / m2 ** 2
    for c in range(4):
        row[C_FRAC0 + c] = classes[c] / n
    row[C_OPACITY] = 100.0 * (classes[2] + classes[3]) / n
    row[C_IQR] = row[C_P0 + 3] - row[C_P0 + 1]


@njit(cache=True)
def derive(h, lo, hi, offset, slope, intercept, qs, edges, row, hrow):
    """All statistics of one slice from its raw histogram h; returns the voxel count."""
    if hi < lo:
        for c in range(row.shape[0]):
            row[c] = np.nan
        return 0
    n = 0
    s1 = 0
    for b in range(lo, hi + 1):
        c = np.int64(h[b])
        n += c
        s1 += c * (b - offset)
    mean = (s1 / n) * slope + intercept
    m2 = 0.0
    m3 = 0.0
    m4 = 0.0
    mad = 0.0
    classes = np.zeros(4, dtype=np.int64)
    for b in range(lo, hi + 1):
        c = h[b]
        if c == 0:
            continue
        v = hu_of(b, offset, slope, intercept)
        d = v - mean
        d2 = d * d
        m2 += c * d2
        m3 += c * d2 * d
        m4 += c * d2 * d2
        mad += c * abs(d)
        cls = density_class(v)
        if cls >= 0:
            classes[cls] += c
        idx = hist_bin(v, edges)
        if idx >= 0:
            hrow[idx] += c
    row[C_MEAN] = mean
    row[C_MIN] = hu_of(lo, offset, slope, intercept)
    row[C_MAX] = hu_of(hi, offset, slope, intercept)
    percentiles(h, lo, hi, n, qs, offset, slope, intercept, row, C_P0)
    row[C_ENT], row[C_UNI] = entropy_uniformity(h, lo, hi, n, offset, slope, intercept)
    finish(row, n, lo, hi, m2, m3, m4, mad, classes)
    return n


@njit(cache=True, inline="always")
def _count_run(x, mask, h, k, i, j0, j1, offset, lo, hi):
    """Add the masked pixels of row i, columns j0..j1-1 of slice k to histogram h; return (lo, hi)."""
    for j in range(j0, j1):
        if mask[k, i, j]:
            b = np.int64(x[k, i, j]) + offset
            h[b] += 1
            lo = min(lo, b)
            hi = max(hi, b)
    return lo, hi


@njit(parallel=True, cache=True)
def _hu_stats(x, mask, words, offset, nbins, slope, intercept, qs, edges, nchunks, counts, stats, hists):
    z, ny, nx = x.shape
    buffers = np.zeros((nchunks, nbins), dtype=np.int32)
    nw = nx // 8 if words.size else 0  # the mask's rows as 8-pixel words, when it is given as such
    for c in prange(nchunks):
        h = buffers[c]
        for k in range(c * z // nchunks, (c + 1) * z // nchunks):
            lo = nbins
            hi = -1
            for i in range(ny):
                if nw:
                    row = (k * ny + i) * nw
                    for q in range(nw):
                        if words[row + q] != 0:  # a word of eight pixels outside the mask is skipped
                            lo, hi = _count_run(x, mask, h, k, i, 8 * q, 8 * q + 8, offset, lo, hi)
                else:
                    lo, hi = _count_run(x, mask, h, k, i, 0, nx, offset, lo, hi)
            counts[k] = derive(h, lo, hi, offset, slope, intercept, qs, edges, stats[k], hists[k])
            for b in range(lo, hi + 1):
                h[b] = 0


def hu_stats(x, mask, offset, nbins, slope, intercept, qs, edges, counts, stats, hists) -> None:
    """Per slice of x (z, y, x), over mask != 0: counts (z,), stats (z, F), hists (z, 64), filled in place.

    The slices are split into one contiguous run per thread, each reusing one
    raw histogram cleared over [lo, hi] after every slice: allocating 256 KiB
    per slice inside the parallel loop costs an mmap each time and stops the
    threads from scaling.
    """
    nchunks = max(1, min(x.shape[0], get_num_threads()))
    _hu_stats(x, mask, mask_words(mask), offset, nbins, slope, intercept, qs, edges, nchunks, counts, stats, hists)

