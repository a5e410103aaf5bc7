"""Run-length building blocks of the Numba lung mask (njit, cached).

A binary mask of one slice (h, w) is a set of runs: run i covers columns
``s[i] <= x < e[i]`` of its row, rows are stored in order with row pointers
``ptr`` (the runs of row y are ``ptr[y]:ptr[y + 1]``), runs of a row are
sorted, disjoint and not adjacent (maximal). Every connectivity is
4-connectivity in a slice: two runs in neighbouring rows touch when their
column ranges overlap; a series (z, h, w) numbers its rows ``z * h + y``
and adds the same row of the slice above (6-connectivity).
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, inline="always")
def find(parent, i):
    """Root of i with path halving (the root is the smallest index of its set)."""
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


@njit(cache=True, inline="always")
def _union_rows(parent, s, e, a0, a1, b0, b1):
    """Union every pair of overlapping runs of two rows (runs a0..a1 and b0..b1)."""
    i = a0
    j = b0
    while i < a1 and j < b1:
        if s[i] < e[j] and s[j] < e[i]:
            a = find(parent, i)
            b = find(parent, j)
            if a < b:
                parent[b] = a
            elif b < a:
                parent[a] = b
        if e[i] < e[j]:
            i += 1
        elif e[j] < e[i]:
            j += 1
        else:
            i += 1
            j += 1


@njit(cache=True)
def label_runs_3d(s, e, ptr, z, h, comp):
    """6-connected components of runs: comp[i] in 0..n-1 numbered by first run; return n."""
    n = ptr[z * h]
    parent = np.empty(n, np.int64)
    for i in range(n):
        parent[i] = i
    for k in range(z):
        for y in range(h):
            r = k * h + y
            if y > 0:
                _union_rows(parent, s, e, ptr[r - 1], ptr[r], ptr[r], ptr[r + 1])
            if k > 0:
                _union_rows(parent, s, e, ptr[r - h], ptr[r - h + 1], ptr[r], ptr[r + 1])
    nc = 0
    for i in range(n):
        root = find(parent, i)
        if root == i:
            comp[i] = nc
            nc += 1
        else:
            comp[i] = comp[root]
    return nc


@njit(cache=True)
def label_runs(s, e, ptr, h, comp):
    """4-connected components of one slice's runs: comp[i] in 0..n-1 numbered by first run; return n."""
    return label_runs_3d(s, e, ptr, 1, h, comp)


@njit(cache=True)
def bounds(s, e, ptr, h):
    """(y0, y1, x0, x1) of the runs (rows y0..y1 inclusive, columns x0..x1 - 1); y0 = -1 if none."""
    y0 = -1
    y1 = -1
    x0 = 0
    x1 = 0
    for y in range(h):
        a = ptr[y]
        b = ptr[y + 1]
        if b > a:
            if y0 < 0:
                y0 = y
                x0 = s[a]
                x1 = e[b - 1]
            y1 = y
            x0 = min(x0, s[a])
            x1 = max(x1, e[b - 1])
    return y0, y1, x0, x1


@njit(cache=True)
def soft_count(img, s, e, t_soft):
    """Number of pixels of img[s:e] (one row) with raw >= t_soft."""
    n = 0
    for x in range(s, e):
        if img[x] >= t_soft:
            n += 1
    return n


@njit(cache=True)
def fill_holes_runs(s, e, ptr, h, img, hole_px, t_soft, os_, oe, optr):
    """Runs of the mask with its holes (4-connected background) filled, except tissue holes.

    Background pixels of the mask's bounding box that connect to the box's
    margin are outside; the other background components are holes. A hole
    of at least hole_px pixels with more than half of its pixels raw >=
    t_soft stays open. Holes lie between two runs of a row, so filling
    merges runs across hole gaps. Returns the run count.
    """
    y0, y1, x0, x1 = bounds(s, e, ptr, h)
    if y0 < 0:
        optr[:] = 0
        return 0
    nrow = y1 - y0 + 1
    cap = ptr[y1 + 1] - ptr[y0] + nrow
    gs = np.empty(cap, np.int32)
    ge = np.empty(cap, np.int32)
    gptr = np.empty(nrow + 1, np.int32)
    ng = 0
    for y in range(y0, y1 + 1):
        gptr[y - y0] = ng
        prev = x0 - 1
        for i in range(ptr[y], ptr[y + 1]):
            gs[ng] = prev
            ge[ng] = s[i]
            ng += 1
            prev = e[i]
        gs[ng] = prev
        ge[ng] = x1 + 1
        ng += 1
    gptr[nrow] = ng
    comp = np.empty(ng, np.int32)
    nc = label_runs(gs, ge, gptr, nrow, comp)
    edge = np.zeros(nc, np.bool_)
    area = np.zeros(nc, np.int64)
    for r in range(nrow):
        a = gptr[r]
        b = gptr[r + 1]
        edge[comp[a]] = True  # leading gap reaches the left margin
        edge[comp[b - 1]] = True  # trailing gap reaches the right margin
        for g in range(a, b):
            area[comp[g]] += ge[g] - gs[g]
            if r == 0 or r == nrow - 1:
                edge[comp[g]] = True
    soft = np.zeros(nc, np.int64)
    for r in range(nrow):
        for g in range(gptr[r] + 1, gptr[r + 1] - 1):
            c = comp[g]
            if not edge[c] and area[c] >= hole_px:
                soft[c] += soft_count(img[y0 + r], gs[g], ge[g], t_soft)
    for c in range(nc):
        if not edge[c] and area[c] >= hole_px and 2 * soft[c] > area[c]:
            edge[c] = True  # a tissue hole: stays open like the outside
    n = 0
    for y in range(h):
        optr[y] = n
        a = ptr[y]
        b = ptr[y + 1]
        if b == a:
            continue
        g = gptr[y - y0] + 1  # gap after run a
        cur_s = s[a]
        for i in range(a, b - 1):
            if edge[comp[g]]:
                os_[n] = cur_s
                oe[n] = e[i]
                n += 1
                cur_s = s[i + 1]
            g += 1
        os_[n] = cur_s
        oe[n] = e[b - 1]
        n += 1
    optr[h] = n
    return n


@njit(cache=True)
def close_runs(s, e, ptr, h, w, ry, rx, os_, oe, optr):
    """Runs of the closing by a (2 ry + 1) x (2 rx + 1) rectangle in the unbounded plane, cut to the image.

    closing = erode_x(close_y(dilate_x(mask))): dilation along rows on runs,
    the 1-D closing of every column (fill gaps of at most 2 ry pixels
    between set pixels) on a raster of the bounding box widened by rx, and
    erosion along rows back on runs. Returns the run count.
    """
    y0, y1, x0, x1 = bounds(s, e, ptr, h)
    if y0 < 0:
        optr[:] = 0
        return 0
    bh = y1 - y0 + 1
    bw = x1 - x0 + 2 * rx
    buf = np.zeros((bh, bw), np.uint8)
    for y in range(y0, y1 + 1):
        for i in range(ptr[y], ptr[y + 1]):
            buf[y - y0, s[i] - x0:e[i] - x0 + 2 * rx] = 1
    if ry > 0:
        last = np.full(bw, -1, np.int32)
        gapmax = 2 * ry
        for r in range(bh):
            for c in range(bw):
                if buf[r, c]:
                    l = last[c]
                    if l >= 0 and r - l > 1 and r - l - 1 <= gapmax:
                        for rr in range(l + 1, r):
                            buf[rr, c] = 1
                    last[c] = r
    off = x0 - rx
    n = 0
    for y in range(h):
        optr[y] = n
        if y < y0 or y > y1:
            continue
        r = y - y0
        c = 0
        while c < bw:
            if buf[r, c]:
                a = c
                while c < bw and buf[r, c]:
                    c += 1
                lo = max(a + rx + off, 0)
                hi = min(c - rx + off, w)
                if hi > lo:
                    os_[n] = lo
                    oe[n] = hi
                    n += 1
            else:
                c += 1
    optr[h] = n
    return n


@njit(cache=True)
def diff_runs(c_s, c_e, c_ptr, f_s, f_e, f_ptr, h, lung, os_, oe, optr):
    """Runs of C minus F, cut to the lateral side of F for lung 0 or 1 (lung -1: no cut).

    Lateral side of row y: lung 0 (right lung) columns below the end of F's
    last run of the row, lung 1 columns from the start of its first run;
    the whole row when F has no run there. Returns the run count.
    """
    n = 0
    for y in range(h):
        optr[y] = n
        fa = f_ptr[y]
        fb = f_ptr[y + 1]
        lo = -(1 << 30)
        hi = 1 << 30
        if fb > fa and lung >= 0:
            if lung == 0:
                hi = f_e[fb - 1]
            else:
                lo = f_s[fa]
        j = fa
        for i in range(c_ptr[y], c_ptr[y + 1]):
            cur = max(c_s[i], lo)
            end = min(c_e[i], hi)
            while cur < end:
                while j < fb and f_e[j] <= cur:
                    j += 1
                if j < fb and f_s[j] <= cur:
                    cur = f_e[j]
                    continue
                stop = end
                if j < fb and f_s[j] < end:
                    stop = f_s[j]
                os_[n] = cur
                oe[n] = stop
                n += 1
                cur = stop
    optr[h] = n
    return n


@njit(cache=True)
def drop_tissue_runs(s, e, ptr, h, img, hole_px, t_soft, os_, oe, optr):
    """Runs of the mask minus its components of at least hole_px pixels with more than half raw >= t_soft."""
    n = ptr[h]
    comp = np.empty(n, np.int32)
    nc = label_runs(s, e, ptr, h, comp)
    area = np.zeros(nc, np.int64)
    soft = np.zeros(nc, np.int64)
    for y in range(h):
        for i in range(ptr[y], ptr[y + 1]):
            area[comp[i]] += e[i] - s[i]
            soft[comp[i]] += soft_count(img[y], s[i], e[i], t_soft)
    keep = np.empty(nc, np.uint8)
    for c in range(nc):
        keep[c] = area[c] < hole_px or 2 * soft[c] <= area[c]
    return select_runs(s, e, ptr, comp, keep, h, os_, oe, optr)


@njit(cache=True)
def select_runs(s, e, ptr, comp, keep, h, os_, oe, optr):
    """Runs (h rows from ptr) of the components with keep[c] != 0; their count."""
    n = 0
    for y in range(h):
        optr[y] = n
        for i in range(ptr[y], ptr[y + 1]):
            if keep[comp[i]]:
                os_[n] = s[i]
                oe[n] = e[i]
                n += 1
    optr[h] = n
    return n


@njit(cache=True)
def union_runs(a_s, a_e, a_ptr, b_s, b_e, b_ptr, h, os_, oe, optr):
    """Runs of A or B (adjacent or overlapping runs merged). Returns the run count."""
    n = 0
    for y in range(h):
        optr[y] = n
        i = a_ptr[y]
        ia = a_ptr[y + 1]
        j = b_ptr[y]
        jb = b_ptr[y + 1]
        while i < ia or j < jb:
            if j >= jb or (i < ia and a_s[i] <= b_s[j]):
                rs = a_s[i]
                re = a_e[i]
                i += 1
            else:
                rs = b_s[j]
                re = b_e[j]
                j += 1
            if n > optr[y] and rs <= oe[n - 1]:
                oe[n - 1] = max(oe[n - 1], re)
            else:
                os_[n] = rs
                oe[n] = re
                n += 1
    optr[h] = n
    return n
