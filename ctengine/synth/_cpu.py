"""Numba kernels of the phantom painter; ``_reference`` is their specification.

The arithmetic is written in the same order as the reference, so both give
bit-identical canvases. Ellipses only visit the x-span of each row where the
quadratic form can reach the edge (a conservative bound), which halves the
work for the large body and organ ellipses.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from ._reference import (AMAX, CAPSULE, CLIP, CX, CY, EDGE, ELLIPSE, GRADY, HA, HB, HCX, HCY, KEEP, KIND, LABEL,
                         LESION, MAX, OP, OX, OY, P0, P1, P2, P3, SET, STEX, VALUE, VTEX, bbox)


_bbox = njit(cache=True, nogil=True)(bbox)


@njit(cache=True, nogil=True)
def _ellipse_span(qa, qb, qc, cx, lo, hi):
    """Integer x-range, widened by a pixel on each side, where qa dx^2 + qb dx + qc < 0."""
    disc = qb * qb - 4.0 * qa * qc
    if disc < 0.0:
        return lo, lo
    sq = math.sqrt(disc)
    xa = max(lo, int(math.floor(cx + (-qb - sq) / (2.0 * qa))) - 1)
    xb = min(hi, int(math.ceil(cx + (-qb + sq) / (2.0 * qa))) + 2)
    return xa, xb


@njit(cache=True, nogil=True)
def paint(hu, lab, les, prims, tex):
    """Paint ``prims`` in place (see ``_reference.paint``).

    One loop nest for every kind (no per-pixel calls: passing arrays to a helper
    per pixel costs reference counting); ellipse rows only visit their x-span and
    skip the coverage test in their interior, where the reference's alpha is 1.
    """
    h, w = hu.shape
    for i in range(prims.shape[0]):
        y0, y1, x0, x1 = _bbox(prims[i], h, w)
        if y0 >= y1 or x0 >= x1:
            continue
        kind = int(prims[i, KIND])
        cx, cy = prims[i, CX], prims[i, CY]
        p0, p1, p2, p3 = prims[i, P0], prims[i, P1], prims[i, P2], prims[i, P3]
        edge = prims[i, EDGE]
        clip = int(prims[i, CLIP])
        label = int(prims[i, LABEL])
        lesion = prims[i, LESION] != 0.0
        op = int(prims[i, OP])
        oy, ox = int(prims[i, OY]), int(prims[i, OX])
        stex, vtex, grady, amax = prims[i, STEX], prims[i, VTEX], prims[i, GRADY], prims[i, AMAX]
        value = prims[i, VALUE]
        # ellipse constants: q(dx) = qa dx^2 + qb dx + qc
        ia, ib = 1.0 / p0, 1.0 / p1
        m = 0.5 * min(p0, p1)
        qa = (p2 * ia) ** 2 + (p3 * ib) ** 2
        qout = 1.0 + abs(stex) + 0.5 * edge / m + 1e-6
        # alpha is exactly 1 where q <= 1 - |stex| - 0.5 edge / m; keep a safety margin
        qin = 1.0 - abs(stex) - 0.5 * edge / m - 2.0 / m
        # capsule constants
        ex, ey = p0 - cx, p1 - cy
        len2 = ex * ex + ey * ey
        il2 = 1.0 / len2 if len2 > 0.0 else 0.0
        reach = p2 + 0.5 * edge + 1.0
        # hole (ellipses only): skipped outright well inside, tested per pixel near its rim
        hole = kind == ELLIPSE and prims[i, HA] > 0.0
        hcx, hcy, hha = prims[i, HCX], prims[i, HCY], prims[i, HA]
        iha = 1.0 / hha if hole else 0.0
        ihb = 1.0 / prims[i, HB] if hole else 0.0
        for y in range(y0, y1):
            dy = y - cy
            xa, xb, xi, xj = x0, x1, x0, x0
            if kind == ELLIPSE:
                qb = 2.0 * dy * (p2 * p3 * ia * ia - p3 * p2 * ib * ib)
                qc0 = (dy * p3 * ia) ** 2 + (dy * p2 * ib) ** 2
                xa, xb = _ellipse_span(qa, qb, qc0 - qout, cx, x0, x1)
                xi, xj = xa, xa
                if qin > 0.0:
                    xi, xj = _ellipse_span(qa, qb, qc0 - qin, cx, xa, xb)
                    xi, xj = xi + 2, xj - 2
                    if xj <= xi:
                        xi, xj = xa, xa
            elif kind == CAPSULE:
                # segment parameters within `reach` rows of y, and the x-range they cover
                if abs(ey) < 1e-12:
                    if abs(dy) > reach:
                        continue
                    ta, tb = 0.0, 1.0
                else:
                    t1, t2 = (dy - reach) / ey, (dy + reach) / ey
                    ta, tb = max(min(t1, t2), 0.0), min(max(t1, t2), 1.0)
                    if ta > tb:
                        continue
                xs0, xs1 = cx + ta * ex, cx + tb * ex
                xa = max(x0, int(math.floor(min(xs0, xs1) - reach)) - 1)
                xb = min(x1, int(math.ceil(max(xs0, xs1) + reach)) + 2)
            hs0, hs1, he0, he1 = xa, xa, xa, xa
            dyh = y - hcy
            if hole:
                f = 1.0 - (dyh * ihb) ** 2
                if f > 0.0:
                    half = hha * math.sqrt(f)
                    hs0 = int(math.ceil(hcx - half + 1.5))
                    hs1 = max(int(math.floor(hcx + half - 1.5)) + 1, hs0)
                    he0 = int(math.floor(hcx - half - 1.5))
                    he1 = int(math.ceil(hcx + half + 1.5)) + 1
            fast = xj > xi and op == SET and amax >= 1.0
            if fast:
                # full-coverage runs left and right of the hole's reach: hu = value (+ texture, + gradient)
                # where clip allows; written inline (a helper call per row costs reference counting)
                gdy = grady * dy
                for run in range(2):
                    ra, rb = (xi, min(xj, he0)) if run == 0 else (max(xi, he1), xj)
                    if clip == 0 and vtex == 0.0:
                        v0 = value + gdy if gdy != 0.0 else value
                        for x in range(ra, rb):
                            hu[y, x] = v0
                    else:
                        for x in range(ra, rb):
                            if clip != 0 and ((clip >> int(lab[y, x])) & 1) != 1:
                                continue
                            val = value
                            if vtex != 0.0:
                                val = val + vtex * np.float64(tex[1, y + oy, x + ox])
                            if gdy != 0.0:
                                val = val + gdy
                            hu[y, x] = val
                            if label != KEEP:
                                lab[y, x] = label
                            if lesion:
                                les[y, x] = 1
                    if clip == 0 and vtex == 0.0:
                        for x in range(ra, rb):
                            if label != KEEP:
                                lab[y, x] = label
                            if lesion:
                                les[y, x] = 1
            x = xa - 1
            while x + 1 < xb:
                x += 1
                if hs0 <= x < hs1:
                    x = hs1 - 1
                    continue
                if fast and xi <= x < xj and not (he0 <= x < he1):   # done by _interior_set: jump over
                    x = (min(xj, he0) if x < he0 else xj) - 1
                    continue
                dx = x - cx
                if hole and ((x - hcx) * iha) ** 2 + (dyh * ihb) ** 2 < 1.0:
                    continue
                alpha = 1.0
                if not (xi <= x < xj):
                    if kind == ELLIPSE:
                        u = (dx * p2 + dy * p3) * ia
                        v = (dy * p2 - dx * p3) * ib
                        q = u * u + v * v
                        thr = 1.0
                        if stex != 0.0:
                            thr = 1.0 + stex * np.float64(tex[0, y + oy, x + ox])
                        d = (thr - q) * m
                    elif kind == CAPSULE:
                        t = 0.0
                        if len2 > 0.0:
                            t = min(max((dx * ex + dy * ey) * il2, 0.0), 1.0)
                        rx = dx - t * ex
                        ry = dy - t * ey
                        d = p2 - math.sqrt(rx * rx + ry * ry)
                    else:
                        r = math.sqrt(dx * dx + dy * dy)
                        d = min(min(r - p0, p1 - r), p2 - abs(dx))
                        if not dy > 0.0:
                            d = -1.0
                    alpha = min(max(d / edge + 0.5, 0.0), 1.0)
                    if not alpha > 0.0:
                        continue
                if clip != 0 and ((clip >> int(lab[y, x])) & 1) != 1:
                    continue
                val = value
                if vtex != 0.0:
                    val = val + vtex * np.float64(tex[1, y + oy, x + ox])
                if grady != 0.0:
                    val = val + grady * dy
                old = hu[y, x]
                if op == SET:
                    new = val
                elif op == MAX:
                    new = max(old, val)
                else:
                    new = old + val
                a = alpha * amax
                hu[y, x] = new if a >= 1.0 else old + (new - old) * a
                if alpha >= 0.5:
                    if label != KEEP:
                        lab[y, x] = label
                    if lesion:
                        les[y, x] = 1


@njit(cache=True, nogil=True)
def finish(hu, lab, les, fov, noise, sigma, oy, ox, shift, lung_r, lung_l, raw_max, raw, lung, bg_hu, bg_lab):
    """Outputs of one slice and canvas reset, in one pass (see ``_reference.finish``)."""
    h, w = hu.shape
    for y in range(h):
        for x in range(w):
            if fov[y, x]:
                v = math.floor(hu[y, x] + sigma * np.float64(noise[y + oy, x + ox]) + shift)
                v = min(max(v, 0.0), float(raw_max))
                raw[y, x] = int(v)
            else:
                raw[y, x] = 0
            lv = lab[y, x]
            m = 1 if lv == lung_r else (2 if lv == lung_l else 0)
            lung[y, x] = m
            if m == 0:
                les[y, x] = 0
            hu[y, x] = bg_hu[y, x]
            lab[y, x] = bg_lab[y, x]
