"""Reference (plain numpy) painter of the phantom: the specification of ``_cpu``.

A slice is drawn with the painter's algorithm: primitives (ellipses, capsules,
annulus bands) are painted in order onto a float32 HU canvas (arithmetic in
float64, rounded once per store), a uint8 tissue label canvas and a uint8
lesion flag canvas. Each primitive is one row of a
float64 table (columns below). Edges are anti-aliased over ``EDGE`` pixels;
a pixel takes the primitive's label where its coverage is at least one half.

Per pixel and primitive, with coverage ``alpha`` in [0, 1]::

    val = VALUE + VTEX * tex[1, y + OY, x + OX] + GRADY * (y - CY)
    new = val (op SET) | max(old, val) (op MAX) | old + val (op ADD)
    hu  = new if alpha * AMAX >= 1 else old + (new - old) * alpha * AMAX

painted only where the current label is allowed by the bit mask CLIP (0: any).
"""
from __future__ import annotations

import math

import numpy as np

# primitive kinds
ELLIPSE, CAPSULE, BAND = 0, 1, 2
# blending operations
SET, MAX, ADD = 0, 1, 2
#: label value meaning "keep the label under the primitive"
KEEP = 255

# columns of the primitive table
(KIND, CX, CY, P0, P1, P2, P3, VALUE, OP, CLIP, LABEL, LESION, STEX, VTEX, GRADY, AMAX, EDGE, OY, OX,
 HCX, HCY, HA, HB) = range(23)
NCOL = 23
# ellipse: P0, P1 semi-axes (px), P2, P3 cos and sin of the rotation; optional hole: an axis-aligned
#          ellipse (centre HCX, HCY, semi-axes HA, HB; HA = 0: none) where the primitive paints nothing
# capsule: (CX, CY) -> (P0, P1) segment end points (px), P2 radius (px)
# band:    circle centre (CX, CY), P0 inner radius, P1 outer radius, P2 half width in x (px);
#          only the part below the centre (larger y) is drawn


def bbox(p: np.ndarray, h: int, w: int) -> tuple[int, int, int, int]:
    """Pixel box (y0, y1, x0, x1), end exclusive, of an h x w image that holds every pixel primitive
    ``p`` can touch. Plain Python on scalars: the Numba renderer compiles this same function."""
    kind = int(p[KIND])
    pad = p[EDGE] + 1.0
    if kind == ELLIPSE:
        r = max(p[P0], p[P1]) * math.sqrt(1.0 + abs(p[STEX])) + pad
        ya, yb, xa, xb = p[CY] - r, p[CY] + r, p[CX] - r, p[CX] + r
    elif kind == CAPSULE:
        r = p[P2] + pad
        ya, yb = min(p[CY], p[P1]) - r, max(p[CY], p[P1]) + r
        xa, xb = min(p[CX], p[P0]) - r, max(p[CX], p[P0]) + r
    else:
        hw = p[P2]
        ya = p[CY] + math.sqrt(max(p[P0] * p[P0] - hw * hw, 0.0)) - pad
        yb = p[CY] + p[P1] + pad
        xa, xb = p[CX] - hw - pad, p[CX] + hw + pad
    y0 = min(max(int(math.floor(ya)), 0), h)
    y1 = min(max(int(math.ceil(yb)) + 1, 0), h)
    x0 = min(max(int(math.floor(xa)), 0), w)
    x1 = min(max(int(math.ceil(xb)) + 1, 0), w)
    return y0, y1, x0, x1


def _coverage(p: np.ndarray, yy: np.ndarray, xx: np.ndarray, stex: np.ndarray | None) -> np.ndarray:
    """Coverage alpha in [0, 1] of primitive ``p`` at pixel centres (yy, xx)."""
    kind = int(p[KIND])
    edge = p[EDGE]
    if kind == ELLIPSE:
        dx = xx - p[CX]
        dy = yy - p[CY]
        u = (dx * p[P2] + dy * p[P3]) * (1.0 / p[P0])
        v = (dy * p[P2] - dx * p[P3]) * (1.0 / p[P1])
        q = u * u + v * v
        thr = 1.0 + p[STEX] * stex if stex is not None else 1.0
        d = (thr - q) * (0.5 * min(p[P0], p[P1]))
    elif kind == CAPSULE:
        ex = p[P0] - p[CX]
        ey = p[P1] - p[CY]
        len2 = ex * ex + ey * ey
        dx = xx - p[CX]
        dy = yy - p[CY]
        if len2 > 0.0:
            t = np.minimum(np.maximum((dx * ex + dy * ey) * (1.0 / len2), 0.0), 1.0)
        else:
            t = np.zeros_like(dx)
        rx = dx - t * ex
        ry = dy - t * ey
        d = p[P2] - np.sqrt(rx * rx + ry * ry)
    else:
        dx = xx - p[CX]
        dy = yy - p[CY]
        r = np.sqrt(dx * dx + dy * dy)
        d = np.minimum(np.minimum(r - p[P0], p[P1] - r), p[P2] - np.abs(dx))
        d = np.where(dy > 0.0, d, -1.0)
    return np.minimum(np.maximum(d / edge + 0.5, 0.0), 1.0)


def paint(hu: np.ndarray, lab: np.ndarray, les: np.ndarray, prims: np.ndarray, tex: np.ndarray) -> None:
    """Paint the primitive table ``prims`` (n, NCOL) in place onto hu (HU), lab and les.

    ``tex`` (2, th, tw) float32 in [-1, 1]: channel 0 perturbs shapes, channel 1 values;
    a primitive reads it at offset (OY, OX), which must keep the slice inside the bank.
    """
    for p in prims:
        y0, y1, x0, x1 = bbox(p, *hu.shape)
        if y0 >= y1 or x0 >= x1:
            continue
        yy = np.arange(y0, y1, dtype=np.float64)[:, None]
        xx = np.arange(x0, x1, dtype=np.float64)[None, :]
        oy, ox = int(p[OY]), int(p[OX])
        stex = None
        if p[STEX] != 0.0:
            stex = tex[0, y0 + oy:y1 + oy, x0 + ox:x1 + ox].astype(np.float64)
        alpha = _coverage(p, yy, xx, stex)
        clip = int(p[CLIP])
        labv = lab[y0:y1, x0:x1]
        ok = alpha > 0.0
        if int(p[KIND]) == ELLIPSE and p[HA] > 0.0:
            ok &= ((xx - p[HCX]) * (1.0 / p[HA])) ** 2 + ((yy - p[HCY]) * (1.0 / p[HB])) ** 2 >= 1.0
        if clip != 0:
            ok &= ((clip >> labv.astype(np.int64)) & 1) == 1
        val = p[VALUE] + 0.0 * yy + 0.0 * xx
        if p[VTEX] != 0.0:
            val = val + p[VTEX] * tex[1, y0 + oy:y1 + oy, x0 + ox:x1 + ox].astype(np.float64)
        if p[GRADY] != 0.0:
            val = val + p[GRADY] * (yy - p[CY])
        old = hu[y0:y1, x0:x1]
        op = int(p[OP])
        if op == SET:
            new = val
        elif op == MAX:
            new = np.maximum(old, val)
        else:
            new = old + val
        a = alpha * p[AMAX]
        hu[y0:y1, x0:x1] = np.where(ok, np.where(a >= 1.0, new, old + (new - old) * a), old)
        full = ok & (alpha >= 0.5)
        if int(p[LABEL]) != KEEP:
            labv[full] = int(p[LABEL])
        if p[LESION] != 0.0:
            les[y0:y1, x0:x1][full] = 1


def finish(hu: np.ndarray, lab: np.ndarray, les: np.ndarray, fov: np.ndarray, noise: np.ndarray, sigma: float,
           oy: int, ox: int, shift: float, lung_r: int, lung_l: int, raw_max: int,
           raw: np.ndarray, lung: np.ndarray, bg_hu: np.ndarray, bg_lab: np.ndarray) -> None:
    """Turn a painted slice into its outputs and reset the canvases for the next slice.

    raw = clip(floor(hu + sigma * noise[oy:, ox:] + shift), 0, raw_max) inside ``fov``, 0 outside
    (shift = 1024.5: HU + 1024 rounded); lung = 1 where lab == lung_r, 2 where lab == lung_l;
    les is cleared outside the lungs; then hu and lab are reset to bg_hu and bg_lab.
    """
    h, w = hu.shape
    v = np.floor(hu + sigma * noise[oy:oy + h, ox:ox + w].astype(np.float64) + shift)
    v = np.minimum(np.maximum(v, 0.0), float(raw_max))
    raw[...] = np.where(fov, v, 0.0).astype(raw.dtype)
    lung[...] = np.where(lab == lung_r, 1, np.where(lab == lung_l, 2, 0)).astype(lung.dtype)
    les[lung == 0] = 0
    hu[...] = bg_hu
    lab[...] = bg_lab
