"""Numba CPU lung mask: the reference algorithm (``_lung_reference``) on run-length masks.

One pass over the pixels of a slice extracts the runs of ``low`` and
``air``; every later step (components, midline, split, hole filling,
closing) works on runs, and one more pass writes the output. Slices run in
parallel (``prange``); the kernels are cached on disk.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._lung_runs import (close_runs, diff_runs, drop_tissue_runs, fill_holes_runs, label_runs,
                         union_runs)


@njit(cache=True)
def _extract(img, t_low, t_air, ls, le, lptr, as_, ae, aptr):
    """Runs of raw < t_low and raw < t_air (air runs lie inside low runs since t_air <= t_low).

    Each row is classified first (0, 1 low, 2 pure air; a loop the compiler
    vectorises), then scanned for class changes eight pixels at a time.
    """
    h, w = img.shape
    nl = 0
    na = 0
    nw = (w + 8) // 8
    cls = np.zeros(8 * nw, np.uint8)  # cls[w] stays 0: closes the last run
    words = cls.view(np.uint64)
    tl = np.int32(t_low)
    ta = np.int32(t_air)
    rep = np.uint64(0x0101010101010101)
    for y in range(h):
        lptr[y] = nl
        aptr[y] = na
        row = img[y]
        for x in range(w):
            v = np.int32(row[x])
            cls[x] = np.uint8(v < tl) + np.uint8(v < ta)
        prev = np.uint8(0)
        for k in range(nw):
            if words[k] == np.uint64(prev) * rep:
                continue
            for x in range(8 * k, min(8 * k + 8, w + 1)):
                c = cls[x]
                if c != prev:
                    if prev == 0:
                        ls[nl] = x
                    elif c == 0:
                        le[nl] = x
                        nl += 1
                    if c == 2:
                        as_[na] = x
                    elif prev == 2:
                        ae[na] = x
                        na += 1
                    prev = c
    lptr[h] = nl
    aptr[h] = na


@njit(cache=True, inline="always")
def _colsum(a, b):
    """Sum of the column indices a..b-1."""
    return (np.int64(a) + b - 1) * (b - a) // 2


@njit(cache=True)
def _cut_column(prof, nb, sb, split_px):
    """Cut column c* and the deep flag (reference step 6)."""
    w = prof.shape[0]
    best = -1
    bp = np.int64(0)
    bd = np.int64(0)
    lim = np.int64(split_px) * nb
    for c in range(w):
        d = abs(np.int64(c) * nb - sb)
        if d <= lim:
            if best < 0 or prof[c] < bp or (prof[c] == bp and d < bd):
                best = c
                bp = prof[c]
                bd = d
    left = np.int64(0)
    for c in range(best):
        left = max(left, prof[c])
    right = np.int64(0)
    for c in range(best + 1, w):
        right = max(right, prof[c])
    return best, 2 * prof[best] <= min(left, right)


@njit(cache=True)
def _low_components(h, w, ls, le, lptr, as_, ae, aptr):
    """Component of every low run; per component: air-like flag and edge contact."""
    lcomp = np.empty(lptr[h], np.int32)
    n = label_runs(ls, le, lptr, h, lcomp)
    area = np.zeros(n, np.int64)
    air = np.zeros(n, np.int64)
    edge = np.zeros(n, np.bool_)
    for y in range(h):
        j = aptr[y]
        for i in range(lptr[y], lptr[y + 1]):
            c = lcomp[i]
            area[c] += le[i] - ls[i]
            if y == 0 or y == h - 1 or ls[i] == 0 or le[i] == w:
                edge[c] = True
            while j < aptr[y + 1] and as_[j] < le[i]:
                air[c] += ae[j] - as_[j]
                j += 1
    return lcomp, 2 * air > area, edge


@njit(cache=True)
def _carve(h, w, as_, ae, aptr, airway_px, os_, oe, optr):
    """Runs of the air blobs (components of at least airway_px pixels) dilated by the cross."""
    acomp = np.empty(aptr[h], np.int32)
    n = label_runs(as_, ae, aptr, h, acomp)
    area = np.zeros(n, np.int64)
    for i in range(aptr[h]):
        area[acomp[i]] += ae[i] - as_[i]
    cap = os_.shape[0]
    bs = np.empty(cap, np.int32)  # blob runs
    be = np.empty(cap, np.int32)
    ws = np.empty(cap, np.int32)  # blob runs widened by one column
    we = np.empty(cap, np.int32)
    bptr = np.empty(h + 1, np.int32)
    n = 0
    for y in range(h):
        bptr[y] = n
        for j in range(aptr[y], aptr[y + 1]):
            if area[acomp[j]] >= airway_px:
                bs[n] = as_[j]
                be[n] = ae[j]
                ws[n] = max(as_[j] - 1, 0)
                we[n] = min(ae[j] + 1, w)
                n += 1
    bptr[h] = n
    down = np.empty(h + 1, np.int32)  # row y holds the blob runs of row y - 1
    up = np.empty(h + 1, np.int32)  # row y holds the blob runs of row y + 1
    down[0] = bptr[0]
    down[1:] = bptr[:h]
    up[:h] = bptr[1:]
    up[h] = bptr[h]
    ts = np.empty(cap, np.int32)
    te = np.empty(cap, np.int32)
    tptr = np.empty(h + 1, np.int32)
    union_runs(ws, we, bptr, bs, be, down, h, ts, te, tptr)
    union_runs(ts, te, tptr, bs, be, up, h, os_, oe, optr)


@njit(cache=True)
def _sides(h, w, cs, ce, cptr, lung_px, split_px, nb, sb):
    """Components of the candidates and their side: 0 dropped, 1 or 2 whole, 3 split at the cut.

    Returns (component of every run, side of every component, cut column); cut -1: no lung.
    """
    nc = cptr[h]
    ccomp = np.empty(nc, np.int32)
    n = label_runs(cs, ce, cptr, h, ccomp)
    area = np.zeros(n, np.int64)
    sumx = np.zeros(n, np.int64)
    for i in range(nc):
        area[ccomp[i]] += ce[i] - cs[i]
        sumx[ccomp[i]] += _colsum(cs[i], ce[i])
    side = np.zeros(n, np.int8)
    diff = np.zeros(w + 1, np.int64)  # column profile of kept pixels
    for i in range(nc):
        if area[ccomp[i]] >= lung_px:
            diff[cs[i]] += 1
            diff[ce[i]] -= 1
    prof = np.cumsum(diff[:w])
    if prof.size == 0 or prof.max() == 0:
        return ccomp, side, -1
    cut, deep = _cut_column(prof, nb, sb, split_px)
    aleft = np.zeros(n, np.int64)
    for i in range(nc):
        aleft[ccomp[i]] += max(0, min(ce[i], cut + 1) - cs[i])
    for k in range(n):
        if area[k] >= lung_px:
            if deep and aleft[k] >= lung_px and area[k] - aleft[k] >= lung_px:
                side[k] = 3
            elif 2 * sumx[k] < (2 * np.int64(cut) + 1) * area[k]:
                side[k] = 1
            else:
                side[k] = 2
    return ccomp, side, cut


@njit(cache=True)
def _lung_runs(h, cs, ce, cptr, ccomp, side, cut, lung, os_, oe, optr):
    """Runs of lung ``lung`` (0 right, 1 left): whole components of its side, split ones cut at cut."""
    n = 0
    for y in range(h):
        optr[y] = n
        for i in range(cptr[y], cptr[y + 1]):
            sd = side[ccomp[i]]
            a = cs[i]
            b = ce[i]
            if sd == 3:
                if lung == 0:
                    b = min(b, cut + 1)
                else:
                    a = max(a, cut + 1)
            elif sd != lung + 1:
                continue
            if b > a:
                os_[n] = a
                oe[n] = b
                n += 1
    optr[h] = n


@njit(cache=True)
def _grow(img, h, w, ls, le, lptr, lung, ry, rx, hole_px, t_soft, fs, fe, fptr, gs, ge, gptr):
    """F = fill(L); additions = lateral part of close(F) outside fill_all(F), minus tissue
    components; G = fill(F | additions). Writes F and G runs."""
    cap = ls.shape[0]
    cs = np.empty(cap, np.int32)
    ce = np.empty(cap, np.int32)
    cptr = np.empty(h + 1, np.int32)
    ts = np.empty(cap, np.int32)
    te = np.empty(cap, np.int32)
    tptr = np.empty(h + 1, np.int32)
    fill_holes_runs(ls, le, lptr, h, img, hole_px, t_soft, fs, fe, fptr)
    close_runs(fs, fe, fptr, h, w, ry, rx, cs, ce, cptr)
    fill_holes_runs(fs, fe, fptr, h, img, np.int64(h) * w + 1, t_soft, gs, ge, gptr)  # all holes
    diff_runs(cs, ce, cptr, gs, ge, gptr, h, lung, ts, te, tptr)
    drop_tissue_runs(ts, te, tptr, h, img, hole_px, t_soft, cs, ce, cptr)
    union_runs(fs, fe, fptr, cs, ce, cptr, h, ts, te, tptr)
    fill_holes_runs(ts, te, tptr, h, img, hole_px, t_soft, gs, ge, gptr)


@njit(cache=True)
def _finish(out, h, vs, ve, vptr, fs, fe, fptr, gs, ge, gptr):
    """Paint G_k as bit k + 1, clear carved pixels outside F_k, zero pixels claimed by both."""
    for lung in range(2):
        bit = lung + 1
        for y in range(h):
            for i in range(gptr[lung, y], gptr[lung, y + 1]):
                for x in range(gs[lung, i], ge[lung, i]):
                    out[y, x] |= bit
    for y in range(h):
        for lung in range(2):
            keep = 2 - lung  # the other lung's bit
            j = vptr[y]
            jend = vptr[y + 1]
            p = fptr[lung, y]
            pend = fptr[lung, y + 1]
            for i in range(gptr[lung, y], gptr[lung, y + 1]):
                while j < jend and ve[j] <= gs[lung, i]:
                    j += 1
                while j < jend and vs[j] < ge[lung, i]:
                    for x in range(max(vs[j], gs[lung, i]), min(ve[j], ge[lung, i])):
                        while p < pend and fe[lung, p] <= x:
                            p += 1
                        if not (p < pend and fs[lung, p] <= x):
                            out[y, x] &= keep
                    if ve[j] > ge[lung, i]:
                        break
                    j += 1
        i = gptr[0, y]
        j = gptr[1, y]
        while i < gptr[0, y + 1] and j < gptr[1, y + 1]:
            for x in range(max(gs[0, i], gs[1, j]), min(ge[0, i], ge[1, j])):
                if out[y, x] == 3:
                    out[y, x] = 0
            if ge[0, i] < ge[1, j]:
                i += 1
            else:
                j += 1


@njit(cache=True)
def lung_mask_slice(img, out, t_low, t_air, airway_px, lung_px, split_px, ry, rx, hole_px, t_soft):
    """Write the lung mask (0/1/2) of one raw slice (h, w) into out (h, w) uint8."""
    h, w = img.shape
    out[:, :] = 0
    cap = h * ((w + 1) // 2) + 1  # most runs a binary row can hold, times h
    ls = np.empty(cap, np.int32)
    le = np.empty(cap, np.int32)
    lptr = np.empty(h + 1, np.int32)
    as_ = np.empty(cap, np.int32)
    ae = np.empty(cap, np.int32)
    aptr = np.empty(h + 1, np.int32)
    _extract(img, t_low, t_air, ls, le, lptr, as_, ae, aptr)
    lcomp, airlike, edge = _low_components(h, w, ls, le, lptr, as_, ae, aptr)
    vs = np.empty(cap, np.int32)
    ve = np.empty(cap, np.int32)
    vptr = np.empty(h + 1, np.int32)
    _carve(h, w, as_, ae, aptr, airway_px, vs, ve, vptr)
    # kept low runs (not air-like); body moments = everything minus the outside runs
    ks = np.empty(cap, np.int32)
    ke = np.empty(cap, np.int32)
    kptr = np.empty(h + 1, np.int32)
    nb = np.int64(h) * w
    sb = np.int64(h) * _colsum(0, w)
    n = 0
    for y in range(h):
        kptr[y] = n
        for i in range(lptr[y], lptr[y + 1]):
            c = lcomp[i]
            if airlike[c]:
                if edge[c]:
                    nb -= le[i] - ls[i]
                    sb -= _colsum(ls[i], le[i])
            else:
                ks[n] = ls[i]
                ke[n] = le[i]
                n += 1
    kptr[h] = n
    cs = as_  # the air runs are no longer needed: reuse their buffers for the candidates
    ce = ae
    cptr = aptr
    diff_runs(ks, ke, kptr, vs, ve, vptr, h, -1, cs, ce, cptr)
    ccomp, side, cut = _sides(h, w, cs, ce, cptr, lung_px, split_px, nb, sb)
    if cut < 0:
        return
    fs = np.empty((2, cap), np.int32)
    fe = np.empty((2, cap), np.int32)
    fptr = np.empty((2, h + 1), np.int32)
    gs = np.empty((2, cap), np.int32)
    ge = np.empty((2, cap), np.int32)
    gptr = np.empty((2, h + 1), np.int32)
    for lung in range(2):
        _lung_runs(h, cs, ce, cptr, ccomp, side, cut, lung, ks, ke, kptr)
        _grow(img, h, w, ks, ke, kptr, lung, ry, rx, hole_px, t_soft, fs[lung], fe[lung], fptr[lung],
              gs[lung], ge[lung], gptr[lung])
    _finish(out, h, vs, ve, vptr, fs, fe, fptr, gs, ge, gptr)


@njit(parallel=True, cache=True)
def lung_mask_stack(stack, out, t_low, t_air, airway_px, lung_px, split_px, ry, rx, hole_px, t_soft):
    """Lung masks of a raw (z, y, x) stack into out (z, y, x) uint8, slices in parallel."""
    for k in prange(stack.shape[0]):
        lung_mask_slice(stack[k], out[k], t_low, t_air, airway_px, lung_px, split_px, ry, rx, hole_px,
                        t_soft)
