"""Numba CPU whole-series stages of the lung mask: ``_lung_volume_reference`` on run-length masks.

A (z, y, x) mask is stored as runs per row, rows numbered ``z * h + y``.
Components are unions of runs (6-connectivity: runs overlapping in the row
above in the same slice, or in the same row of the slice above); per-slice
steps (seed, tracking, walls) work on one slice's runs. The results equal
the reference voxel for voxel.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ._lung_runs import label_runs_3d, select_runs
from ._words import mask_words


@njit(cache=True)
def _runs(mask, words, s, e, ptr):
    """Runs of a (z, h, w) uint8 mask (nonzero = in); return the number of runs.

    With ``words`` (the mask as 8-pixel words, see :func:`mask_words`), a
    word of zeros outside a run is skipped whole.
    """
    z, h, w = mask.shape
    n = 0
    nw = w // 8 if words.size else 0
    for k in range(z):
        for y in range(h):
            r = k * h + y
            ptr[r] = n
            x = 0
            while x < w:
                if nw and x % 8 == 0 and words[r * nw + x // 8] == 0:
                    x += 8
                elif mask[k, y, x]:
                    s[n] = x
                    while x < w and mask[k, y, x]:
                        x += 1
                    e[n] = x
                    n += 1
                else:
                    x += 1
    ptr[z * h] = n
    return n


def runs_of(mask):
    """(s, e, ptr) of a (z, h, w) boolean or uint8 mask."""
    m = np.ascontiguousarray(mask).view(np.uint8)
    z, h, w = m.shape
    cap = int(z * h * ((w + 1) // 2))
    s = np.empty(cap, np.int32)
    e = np.empty(cap, np.int32)
    ptr = np.empty(z * h + 1, np.int64)
    n = _runs(m, mask_words(m), s, e, ptr)
    return s[:n], e[:n], ptr


@njit(cache=True)
def _low_runs(img, t_low, t_air, s, e, ptr, nair):
    """Runs of raw < t_low of a (z, h, w) series and their pure-air pixel counts; return the run count.

    Each row is classified first (0, 1 low, 2 pure air; a loop the compiler
    vectorises), then scanned eight pixels at a time: a word with no change
    (all out, or all low inside a run) is skipped, its pure-air pixels
    counted in one multiplication.
    """
    z, h, w = img.shape
    n = 0
    nw = (w + 8) // 8
    cls = np.zeros(8 * nw, np.uint8)  # cls[w] stays 0: closes the last run
    words = cls.view(np.uint64)
    ones = np.uint64(0x0101010101010101)
    highs = np.uint64(0x8080808080808080)
    tl = np.int32(t_low)
    ta = np.int32(t_air)
    for k in range(z):
        for y in range(h):
            ptr[k * h + y] = n
            row = img[k, y]
            for x in range(w):
                v = np.int32(row[x])
                cls[x] = np.uint8(v < tl) * (np.uint8(1) + np.uint8(v < ta))  # air counts inside low only
            inside = False
            a = np.int64(0)
            for q in range(nw):
                word = words[q]
                if not inside and word == 0:
                    continue
                if inside and ((word - ones) & ~word & highs) == 0:  # no zero byte: the run goes on
                    a += np.int64((((word >> np.uint64(1)) & ones) * ones) >> np.uint64(56))  # bytes of 2
                    continue
                for x in range(8 * q, min(8 * q + 8, w + 1)):
                    c = cls[x]
                    if (c != 0) != inside:
                        if c != 0:
                            s[n] = x
                            a = 0
                        else:
                            e[n] = x
                            nair[n] = a
                            n += 1
                        inside = c != 0
                    a += c >> 1
    ptr[z * h] = n
    return n


@njit(cache=True)
def _border_airlike(s, e, ptr, r0, rows, h, w, run_air, comp, nc):
    """Per component of the runs of rows r0..r0+rows-1: (touches a slice border and mostly air, touches
    a slice border, pixel count, pure-air count)."""
    area = np.zeros(nc, np.int64)
    nair = np.zeros(nc, np.int64)
    edge = np.zeros(nc, np.uint8)
    for r in range(r0, r0 + rows):
        y = r % h
        for i in range(ptr[r], ptr[r + 1]):
            c = comp[i - ptr[r0]]
            area[c] += e[i] - s[i]
            if y == 0 or y == h - 1 or s[i] == 0 or e[i] == w:
                edge[c] = 1
            nair[c] += run_air[i]
    out = np.zeros(nc, np.uint8)
    for c in range(nc):
        out[c] = edge[c] and 2 * nair[c] > area[c]
    return out, edge, area, nair


@njit(cache=True)
def _outside_components(shape, s, e, ptr, run_air, comp, nc):
    """Per 3-D component: 1 when it is outside (reference stage 1)."""
    z, h, w = shape
    candidate = _border_airlike(s, e, ptr, 0, z * h, h, w, run_air, comp, nc)[0]
    held = np.zeros(nc, np.int64)
    scap = h * ((w + 1) // 2) + 1
    ls, le, lptr = np.empty(scap, np.int32), np.empty(scap, np.int32), np.empty(h + 1, np.int64)
    comp2 = np.empty(scap, np.int64)
    for k in range(z):
        base = ptr[k * h]
        for y in range(h + 1):
            lptr[y] = ptr[k * h + y] - base
        for i in range(ptr[k * h], ptr[k * h + h]):
            ls[i - base] = s[i]
            le[i - base] = e[i]
        n2 = label_runs_3d(ls, le, lptr, 1, h, comp2)
        _, edge2, area2, nair2 = _border_airlike(s, e, ptr, k * h, h, h, w, run_air, comp2, n2)
        for i in range(ptr[k * h], ptr[k * h + h]):
            c2 = comp2[i - base]
            if not edge2[c2] and 2 * nair2[c2] <= area2[c2]:
                held[comp[i]] += e[i] - s[i]
    left = np.int64(0)
    for c in range(nc):
        if not candidate[c]:
            left += held[c]
    out = np.zeros(nc, np.uint8)
    for c in range(nc):
        out[c] = candidate[c] and held[c] < left
    return out


@njit(cache=True)
def _lumen_runs(img2, t_air, fs, fe, fptr, ls, le, lptr):
    """Runs of the free pixels whose in-slice 3 x 3 mean raw value is below t_air (stage 2).

    Per free run, the sums of each column over the (up to) three rows are
    formed once; each pixel's window is then three column sums.
    """
    h, w = img2.shape
    col = np.zeros(w + 2, np.int64)  # col[x + 1]: column x summed over the window's rows; 0 past the edges
    n = 0
    for y in range(h):
        lptr[y] = n
        y0 = max(y - 1, 0)
        y1 = min(y + 2, h)
        rows = np.int64(y1 - y0)
        for i in range(fptr[y], fptr[y + 1]):
            a = max(fs[i] - 1, 0)
            b = min(fe[i] + 1, w)
            for x in range(a, b):
                total = np.int64(0)
                for yy in range(y0, y1):
                    total += img2[yy, x]
                col[x + 1] = total
            col[a] = 0  # the window stops at the slice's edges (a == 0 or b == w) and needs no more
            col[b + 1] = 0
            inside = False
            for x in range(fs[i], fe[i]):
                x0 = max(x - 1, 0)
                x1 = min(x + 2, w)
                total = col[x] + col[x + 1] + col[x + 2]
                c = total < rows * (x1 - x0) * t_air
                if c and not inside:
                    ls[n] = x
                elif inside and not c:
                    le[n] = x
                    n += 1
                inside = c
            if inside:
                le[n] = fe[i]
                n += 1
    lptr[h] = n
    return n


@njit(cache=True)
def _touching(s, e, ptr, comp, nc, h, bs, be, bptr, max_px, keep):
    """keep[c] = component c of runs (s, e, ptr) overlaps a run of (bs, be, bptr) and has <= max_px pixels."""
    area = np.zeros(nc, np.int64)
    touch = np.zeros(nc, np.uint8)
    for y in range(h):
        j = bptr[y]
        for i in range(ptr[y], ptr[y + 1]):
            area[comp[i]] += e[i] - s[i]
            while j < bptr[y + 1] and be[j] <= s[i]:
                j += 1
            if j < bptr[y + 1] and bs[j] < e[i]:
                touch[comp[i]] = 1
    for c in range(nc):
        keep[c] = touch[c] and area[c] <= max_px
    return keep


@njit(cache=True)
def _seed_runs(ls, le, lptr, comp, nc, h, nb, sb, seed_px, max_px, mid_px, keep):
    """keep = the trachea's seed component (largest eligible, first on ties); False if there is none."""
    area = np.zeros(nc, np.int64)
    sumx = np.zeros(nc, np.int64)
    for i in range(lptr[h]):
        area[comp[i]] += le[i] - ls[i]
        sumx[comp[i]] += (np.int64(ls[i]) + le[i] - 1) * (le[i] - ls[i]) // 2
    best = -1
    best_area = np.int64(0)
    for c in range(nc):
        a = area[c]
        if seed_px <= a <= max_px and abs(sumx[c] * nb - sb * a) <= np.int64(mid_px) * a * nb:
            if a > best_area:
                best = c
                best_area = a
    for c in range(nc):
        keep[c] = c == best
    return best >= 0


@njit(cache=True)
def _wall(img_out2, fs, fe, fptr, as_, ae, aptr, h, w, wall_px, ring, nxt, free2):
    """Zero (in img_out2) the airway and its wall_px-pixel geodesic ring inside the free runs."""
    y0, y1, x0, x1 = h, -1, w, -1
    for y in range(h):
        if aptr[y + 1] > aptr[y]:
            y0, y1 = min(y0, y), max(y1, y)
            x0, x1 = min(x0, as_[aptr[y]]), max(x1, ae[aptr[y + 1] - 1] - 1)
    y0, y1 = max(y0 - wall_px, 0), min(y1 + wall_px + 1, h)   # the ring grows wall_px at most
    x0, x1 = max(x0 - wall_px, 0), min(x1 + wall_px + 1, w)
    for y in range(y0, y1):
        for x in range(x0, x1):
            ring[y, x] = 0
            free2[y, x] = 0
        for i in range(aptr[y], aptr[y + 1]):
            for x in range(as_[i], ae[i]):
                ring[y, x] = 1
        for i in range(fptr[y], fptr[y + 1]):
            for x in range(max(fs[i], x0), min(fe[i], x1)):
                free2[y, x] = 1
    for _ in range(wall_px):
        for y in range(y0, y1):
            for x in range(x0, x1):
                v = ring[y, x]
                if not v and free2[y, x]:
                    v = ((y > y0 and ring[y - 1, x]) or (y + 1 < y1 and ring[y + 1, x])
                         or (x > x0 and ring[y, x - 1]) or (x + 1 < x1 and ring[y, x + 1]))
                nxt[y, x] = v
        for y in range(y0, y1):
            for x in range(x0, x1):
                ring[y, x] = nxt[y, x]
    for y in range(y0, y1):
        for x in range(x0, x1):
            if ring[y, x]:
                img_out2[y, x] = 0


@njit(cache=True)
def _declare_air(img, t_low, t_air, seed_px, max_px, mid_px, wall_px, out):
    """Reference stages 1-4 on a (z, h, w) series; out (a copy of img) gets 0 on dropped voxels."""
    z, h, w = img.shape
    cap = z * h * ((w + 1) // 2)
    s = np.empty(cap, np.int32)
    e = np.empty(cap, np.int32)
    ptr = np.empty(z * h + 1, np.int64)
    run_air = np.empty(cap, np.int32)
    n = _low_runs(img, t_low, t_air, s, e, ptr, run_air)
    comp = np.empty(n, np.int64)
    nc = label_runs_3d(s, e, ptr, z, h, comp)
    outc = _outside_components(img.shape, s, e, ptr, run_air, comp, nc)
    inside = 1 - outc
    for r in range(z * h):
        k = r // h
        y = r - k * h
        for i in range(ptr[r], ptr[r + 1]):
            if outc[comp[i]]:
                for x in range(s[i], e[i]):
                    out[k, y, x] = 0
    scap = h * ((w + 1) // 2) + 1
    fs, fe, fptr = np.empty(scap, np.int32), np.empty(scap, np.int32), np.empty(h + 1, np.int64)
    ls, le, lptr = np.empty(scap, np.int32), np.empty(scap, np.int32), np.empty(h + 1, np.int64)
    as_, ae, aptr = np.empty(scap, np.int32), np.empty(scap, np.int32), np.zeros(h + 1, np.int64)
    ws, we, wptr = np.empty(scap, np.int32), np.empty(scap, np.int32), np.empty(h + 1, np.int64)
    lcomp, fcomp = np.empty(scap, np.int64), np.empty(scap, np.int64)
    keep = np.empty(scap, np.uint8)
    ring, nxt, free2 = np.empty((h, w), np.uint8), np.empty((h, w), np.uint8), np.empty((h, w), np.uint8)
    total_cols = np.int64(h) * ((np.int64(w) - 1) * w // 2)
    seeded = False
    for k in range(z):
        select_runs(s, e, ptr[k * h:k * h + h + 1], comp, inside, h, fs, fe, fptr)
        _lumen_runs(img[k], t_air, fs, fe, fptr, ls, le, lptr)
        nl = label_runs_3d(ls, le, lptr, 1, h, lcomp)
        if not seeded:
            nb = np.int64(h) * w
            sb = total_cols
            for i in range(ptr[k * h], ptr[k * h + h]):
                if outc[comp[i]]:
                    nb -= e[i] - s[i]
                    sb -= (np.int64(s[i]) + e[i] - 1) * (e[i] - s[i]) // 2
            if nb == 0 or not _seed_runs(ls, le, lptr, lcomp, nl, h, nb, sb, seed_px, max_px, mid_px, keep):
                continue
            seeded = True
        else:
            _touching(ls, le, lptr, lcomp, nl, h, as_, ae, aptr, max_px, keep)
        if select_runs(ls, le, lptr, lcomp, keep, h, as_, ae, aptr) == 0:
            return
        _wall(out[k], fs, fe, fptr, as_, ae, aptr, h, w, wall_px, ring, nxt, free2)
        nf = label_runs_3d(fs, fe, fptr, 1, h, fcomp)
        _touching(fs, fe, fptr, fcomp, nf, h, as_, ae, aptr, max_px, keep)
        select_runs(fs, fe, fptr, fcomp, keep, h, ws, we, wptr)
        for y in range(h):
            for i in range(wptr[y], wptr[y + 1]):
                for x in range(ws[i], we[i]):
                    out[k, y, x] = 0


def declare_air(img, t_low, t_air, p):
    """Copy of a raw (z, h, w) series with outside air and airways set to 0 (reference stages 1-4)."""
    out = np.array(img, dtype=img.dtype, order="C", copy=True)
    if out.size:
        _declare_air(np.ascontiguousarray(img), np.int64(t_low), np.int64(t_air), np.int64(p.seed_px),
                     np.int64(p.airway_max_px), np.int64(p.midline_px), np.int64(p.wall_px), out)
    return out


@njit(cache=True)
def _drop_small(mask, s, e, ptr, comp, nc, per_mille):
    z, h, w = mask.shape
    area = np.zeros(nc, np.int64)
    for i in range(ptr[z * h]):
        area[comp[i]] += e[i] - s[i]
    big = np.int64(0)
    for c in range(nc):
        big = max(big, area[c])
    for r in range(z * h):
        k = r // h
        y = r - k * h
        for i in range(ptr[r], ptr[r + 1]):
            if 1000 * area[comp[i]] < per_mille * big:
                for x in range(s[i], e[i]):
                    mask[k, y, x] = 0


def keep_lungs(mask, p):
    """The (z, h, w) uint8 mask without 3-D components under keep_per_mille / 1000 of the largest."""
    s, e, ptr = runs_of(mask)
    comp = np.empty(s.shape[0], np.int64)
    z, h, _ = mask.shape
    nc = label_runs_3d(s, e, ptr, z, h, comp)
    if nc:
        _drop_small(mask, s, e, ptr, comp, nc, np.int64(p.keep_per_mille))
    return mask
