"""numba.cuda kernels of the lung mask's closing (orchestrated by ``_lung_gpu``).

The closing of each lung's filled mask runs in a frame padded by (ry, rx):
a separable dilation (columns, then rows) and erosion (rows, then columns)
over the flat index of the padded (z, h + 2 ry, w + 2 rx) stack, grid-stride;
``lateral_limits`` gives, per row, the columns beyond which the closing may
add pixels (the lung's lateral side only).
"""
from __future__ import annotations

from numba import cuda


@cuda.jit(cache=True)
def lateral_limits(fb, h, w, lim1, lim2):
    """One thread per row: lung 1 may grow up to column lim1, lung 2 from column lim2."""
    nrow = lim1.shape[0]
    for t in range(cuda.grid(1), nrow, cuda.gridsize(1)):
        base = t * w
        last = w - 1
        first = 0
        for x in range(w):
            if fb[base + x] & 1:
                last = x
        for x in range(w - 1, -1, -1):
            if fb[base + x] & 2:
                first = x
        lim1[t] = last
        lim2[t] = first


@cuda.jit(cache=True)
def dilate_x(fb, h, w, ry, rx, out):
    """out (z, h + 2 ry, w + 2 rx): bits 1|2 of fb ORed over columns x - rx .. x + rx."""
    nz, hp, wp = out.shape
    for t in range(cuda.grid(1), nz * hp * wp, cuda.gridsize(1)):
        xp = t % wp
        yp = (t // wp) % hp
        k = t // (wp * hp)
        y = yp - ry
        v = 0
        if 0 <= y < h:
            base = (k * h + y) * w
            for x in range(max(xp - 2 * rx, 0), min(xp + 1, w)):
                v |= fb[base + x] & 3
        out[k, yp, xp] = v


@cuda.jit(cache=True)
def dilate_y(a, ry, out):
    """out = a ORed over rows yp - ry .. yp + ry of the padded frame."""
    nz, hp, wp = out.shape
    for t in range(cuda.grid(1), nz * hp * wp, cuda.gridsize(1)):
        xp = t % wp
        yp = (t // wp) % hp
        k = t // (wp * hp)
        v = 0
        for yy in range(max(yp - ry, 0), min(yp + ry + 1, hp)):
            v |= a[k, yy, xp]
        out[k, yp, xp] = v


@cuda.jit(cache=True)
def erode_y(a, ry, out):
    """out = a ANDed over rows yp - ry .. yp + ry; rows beyond the padded frame count as 0."""
    nz, hp, wp = out.shape
    for t in range(cuda.grid(1), nz * hp * wp, cuda.gridsize(1)):
        xp = t % wp
        yp = (t // wp) % hp
        k = t // (wp * hp)
        v = 3
        if yp - ry < 0 or yp + ry >= hp:
            v = 0
        else:
            for yy in range(yp - ry, yp + ry + 1):
                v &= a[k, yy, xp]
        out[k, yp, xp] = v


@cuda.jit(cache=True)
def erode_x(a, rx, out):
    """out = a ANDed over columns xp - rx .. xp + rx; columns beyond the padded frame count as 0."""
    nz, hp, wp = out.shape
    for t in range(cuda.grid(1), nz * hp * wp, cuda.gridsize(1)):
        xp = t % wp
        yp = (t // wp) % hp
        k = t // (wp * hp)
        v = 3
        if xp - rx < 0 or xp + rx >= wp:
            v = 0
        else:
            for xx in range(xp - rx, xp + rx + 1):
                v &= a[k, yp, xx]
        out[k, yp, xp] = v
