"""Primitive tables of one phantom slice (painter's order) from an ``Anatomy``.

Positions and sizes come in mm (see ``_anatomy``) and leave here in pixels.
Labels are tissue classes used while painting; the lung truth is read from
LUNG_R / LUNG_L at the end.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._anatomy import Anatomy, smoothstep
from ._reference import BAND, CAPSULE, ELLIPSE, KEEP, NCOL, SET

from . import _scene_organs as organs
from ._tissues import (AIR, AIRWAY, BODY, BONE, CAVITY, HU_AIR, HU_BLOOD, HU_CARTILAGE, HU_CORTEX, HU_FAT,
                       HU_LUNG, HU_MARROW, HU_MUSCLE, INNER, LUNG_L, LUNG_R, MEDIAST, PAD, TABLE)


@dataclass(frozen=True)
class Geometry:
    """Pixel grid of a series: shape, mm per pixel (anatomy scaled to the shape), centre (px)."""
    h: int
    w: int
    mmpp: float
    edge: float = 0.7

    @property
    def cy(self) -> float:
        return (self.h - 1) / 2.0

    @property
    def cx(self) -> float:
        return (self.w - 1) / 2.0


class Builder:
    """Collects primitive rows; lengths in mm, converted to pixels."""

    def __init__(self, g: Geometry, tex_shift: tuple[int, int]):
        self.g = g
        self.rows: list[list[float]] = []      # scalar rows not yet stacked
        self.blocks: list[np.ndarray] = []     # stacked rows, in painting order
        self.shift = tex_shift

    def _flush(self) -> None:
        if self.rows:
            self.blocks.append(np.array(self.rows, dtype=np.float64))
            self.rows = []

    def _off(self, oy: float, ox: float) -> tuple[int, int]:
        return int(oy + self.shift[0]) % self.g.h, int(ox + self.shift[1]) % self.g.w

    def ellipse(self, x, y, a, b, value, *, rot=0.0, op=SET, clip=0, label=KEEP, lesion=0, stex=0.0, vtex=0.0,
                grady=0.0, amax=1.0, oy=0, ox=0, hole=None) -> None:
        """An ellipse; ``hole`` (x, y, a, b) in mm is an axis-aligned ellipse left unpainted (the
        caller paints it fully afterwards, so the work there would be lost anyway)."""
        g = self.g
        if a <= 0.0 or b <= 0.0:
            return
        oy, ox = self._off(oy, ox)
        hx, hy, ha, hb = hole if hole is not None and min(hole[2], hole[3]) > 4.0 * g.mmpp else (0.0, 0.0, 0.0, 0.0)
        self.rows.append([ELLIPSE, g.cx + x / g.mmpp, g.cy + y / g.mmpp, max(a / g.mmpp, 0.3), max(b / g.mmpp, 0.3),
                          math.cos(rot), math.sin(rot), value, op, clip, label, lesion, stex, vtex,
                          grady * g.mmpp, amax, g.edge, oy, ox,
                          g.cx + hx / g.mmpp, g.cy + hy / g.mmpp, ha / g.mmpp, hb / g.mmpp])

    def capsule(self, x0, y0, x1, y1, r, value, *, op=SET, clip=0, label=KEEP, amax=1.0, vtex=0.0, grady=0.0,
                oy=0.0, ox=0.0) -> None:
        g = self.g
        oy, ox = self._off(oy, ox) if vtex != 0.0 else (0, 0)
        self.rows.append([CAPSULE, g.cx + x0 / g.mmpp, g.cy + y0 / g.mmpp, g.cx + x1 / g.mmpp, g.cy + y1 / g.mmpp,
                          max(r / g.mmpp, 0.3), 0.0, value, op, clip, label, 0, 0.0, vtex, grady * g.mmpp, amax,
                          g.edge, oy, ox, 0.0, 0.0, 0.0, 0.0])

    def capsules(self, seg: np.ndarray, r: np.ndarray, value: float, *, op=SET, clip=0, label=KEEP,
                 amax: np.ndarray | float = 1.0) -> None:
        """Many capsules: seg (n, 4) x0, y0, x1, y1 in mm, r (n,) mm."""
        n = len(seg)
        if n == 0:
            return
        g = self.g
        rows = np.zeros((n, NCOL))
        rows[:, 0] = CAPSULE
        rows[:, [1, 3]] = g.cx + seg[:, [0, 2]] / g.mmpp
        rows[:, [2, 4]] = g.cy + seg[:, [1, 3]] / g.mmpp
        rows[:, 5] = np.maximum(r / g.mmpp, 0.3)
        rows[:, 7] = value
        rows[:, 8] = op
        rows[:, 9] = clip
        rows[:, 10] = label
        rows[:, 15] = amax
        rows[:, 16] = g.edge
        self._flush()
        self.blocks.append(rows)

    def band(self, cy, r0, r1, hw, value, *, label=KEEP, vtex=0.0) -> None:
        g = self.g
        self.rows.append([BAND, g.cx, g.cy + cy / g.mmpp, r0 / g.mmpp, r1 / g.mmpp, hw / g.mmpp, 0.0, value,
                          SET, 0, label, 0, 0.0, vtex, 0.0, 1.0, g.edge, 0, 0, 0.0, 0.0, 0.0, 0.0])

    def table(self) -> np.ndarray:
        self._flush()
        return np.concatenate(self.blocks) if self.blocks else np.zeros((0, NCOL))


def pad_centre(an: Anatomy) -> float:
    """y (mm) of the centre of the circles of the pad top and the table (concentric, below the patient)."""
    return an.y_table - 0.5 - an.pad_sink - an.table_radius


def pad_top(an: Anatomy, x: float) -> float:
    """y (mm) of the top of the (uncompressed) pad at x: above the body's lowest point by ``pad_sink``
    at the midline, rising to the sides; the body is painted over the part it presses in."""
    return pad_centre(an) + math.sqrt(max(an.table_radius ** 2 - x * x, 0.0))


def background_prims(an: Anatomy, g: Geometry) -> np.ndarray:
    """The patient table, static along z: a thick foam pad (``pad_hu`` with texture) on a wide curved
    table of two carbon shells with a light core between them."""
    bd = Builder(g, (0, 0))
    rt, T = an.table_radius, an.pad_thick
    c = pad_centre(an)
    bd.band(c, rt, rt + T, an.pad_half_width, an.pad_hu, label=PAD, vtex=40.0)
    for r0, r1, v in ((0.0, 2.5, 320.0), (2.5, 16.0, -960.0), (16.0, 19.0, 380.0)):
        bd.band(c, rt + T + r0, rt + T + r1, an.table_half_width, v, label=TABLE)
    return bd.table()


def _pad(bd: Builder, an: Anatomy, zc: float, a: float, b: float) -> None:
    """Air pockets in the foam and the air gap between pad and back (under the body: painted first)."""
    for x, depth, p0, p1, pa, pb in an.pad_pockets:
        if p0 <= zc <= p1 and pb > 1.0:
            f = math.sin(math.pi * (zc - p0) / (p1 - p0)) ** 0.5
            bd.ellipse(x, pad_top(an, x) + depth, pa * f, pb * f, HU_AIR, clip=1 << PAD, label=AIR)
    xg, gw, gh, g0, g1 = an.back_gap
    if g0 <= zc <= g1:
        # the pad touches the back where it is pressed in: |x| < xc (body bottom ~ parabola of radius a^2 / b)
        k = b / (a * a) - 1.0 / an.table_radius
        xc = math.sqrt(2.0 * an.pad_sink / k) if k > 0.0 else a
        w = min(gw, 0.7 * (xc - abs(xg)))
        if w > 5.0:
            bd.ellipse(xg, an.y_table - 0.5, w, gh, HU_AIR, clip=1 << PAD, label=AIR)


def slice_prims(an: Anatomy, g: Geometry, z0: float, z1: float) -> np.ndarray:
    """Primitive table of the slab [z0, z1] (mm) of the anatomy ``an`` on grid ``g``."""
    zc = 0.5 * (z0 + z1)
    t = zc / an.length
    shift = (an.tex_base[0] + int(zc * 1.7), an.tex_base[1] + int(zc * 0.9))
    bd = Builder(g, shift)
    yb, a, b = an.body(t)
    yc, ac, bc = an.cavity(t)
    yv, rv = an.spine_y(t)
    abdomen = smoothstep(an.t_dome[0], an.t_bottom, t)
    _pad(bd, an, zc, a, b)
    # body wall: skin, fat, muscle, each leaving out (hole) what the next layer paints over fully
    m2 = 2.5 * g.mmpp
    wall = (1 << AIR) | (1 << BODY) | (1 << PAD)   # the body presses into the pad: paint over it
    fat_e = (0.0, yb, a - 2.0, b - 2.0)
    mus_e = (0.0, yb + 0.1 * an.fat, a - an.fat, b - 0.8 * an.fat)
    cav_e = (0.0, yc, ac, bc)

    def shrunk(e):
        return e[0], e[1], e[2] - m2, e[3] - m2
    bd.ellipse(0.0, yb, a, b, 15.0, label=BODY, stex=0.01, hole=shrunk(fat_e))
    bd.ellipse(*fat_e, HU_FAT, label=BODY, vtex=12.0, clip=wall, hole=shrunk(mus_e))
    bd.ellipse(*mus_e, HU_MUSCLE, label=BODY, clip=wall, vtex=8.0, hole=shrunk(cav_e))
    for sx in (-1.0, 1.0):   # paraspinal muscles
        bd.ellipse(sx * 28.0, yv + rv + 22.0, 22.0, 22.0, HU_MUSCLE + 4, clip=1 << BODY)
    bd.ellipse(*cav_e, 30.0 - 110.0 * abdomen, clip=wall, label=CAVITY, vtex=10.0)
    _shoulder_bones(bd, an, t, yb, a, b)
    _ribs(bd, an, z0, z1, yc, ac, bc)
    s = an.lung_open(t)
    lungs = []
    if s > 0.0:
        for side, lab in ((0, LUNG_R), (1, LUNG_L)):
            cx, cy, ax, ay = an.lung_ellipse(t, side)
            lungs.append((cx, cy, ax, ay))
            bd.ellipse(cx, cy, ax, ay, HU_LUNG, clip=1 << CAVITY, label=lab, vtex=22.0, grady=45.0 / ay,
                       stex=0.03, oy=37 * side, ox=91 * side)
    _mediastinum(bd, an, t, yc, ac, bc, yv, rv, zc, lungs)
    _spine(bd, an, zc, t, yv, rv)
    organs.abdomen(bd, an, t, zc, yc, ac, bc)
    if lungs:
        organs.lesions(bd, an, z0, z1, lungs)
        organs.vessels(bd, an, z0, z1, t, lungs)
    organs.cables(bd, an, zc, yb, a, b)
    return bd.table()


def _shoulder_bones(bd: Builder, an: Anatomy, t: float, yb: float, a: float, b: float) -> None:
    if t < an.t_apex + 0.06:
        for sx in (-1.0, 1.0):
            bd.capsule(sx * 18.0, yb - 0.76 * b, sx * 0.42 * a, yb - 0.66 * b, 5.5, HU_CORTEX, label=BONE)
            bd.capsule(sx * 18.0, yb - 0.76 * b, sx * 0.42 * a, yb - 0.66 * b, 3.0, HU_MARROW, clip=1 << BONE)
    if t < an.t_apex + 0.32:
        f = 1.0 - smoothstep(an.t_apex + 0.2, an.t_apex + 0.32, t)
        for sx in (-1.0, 1.0):
            x0, y0 = sx * 0.5 * a, yb + 0.8 * b
            x1, y1 = sx * (0.5 + 0.32 * f) * a, yb + (0.8 - 0.5 * f) * b
            bd.capsule(x0, y0, x1, y1, 3.5, HU_CORTEX - 250.0, label=BONE)


def _ribs(bd: Builder, an: Anatomy, z0: float, z1: float, yc: float, ac: float, bc: float) -> None:
    """Rib cross-sections: each rib descends from the spine (theta 0) to the sternum (theta 2.9)."""
    th_end = 2.9
    zc = 0.5 * (z0 + z1)
    zi = an.rib_z0 + an.rib_step * np.arange(12)
    x = (zc - zi) / an.rib_drop
    ok = (x > 0.0) & (x < 1.0)
    if not ok.any():
        return
    theta = th_end / math.pi * np.arccos(1.0 - 2.0 * x[ok])
    dz = 0.5 * an.rib_drop * np.sin(theta * math.pi / th_end) * math.pi / th_end + 1e-3
    ra, rb = ac + 6.0, bc + 5.0
    ds = np.hypot(ra * np.cos(theta), rb * np.sin(theta))
    half = np.minimum(0.5 * (z1 - z0 + 9.0) / dz, 45.0 / ds)
    segs, cart = [], []
    for sx in (-1.0, 1.0):
        pts = [(theta + k * half) for k in (-1.0, 0.0, 1.0)]
        px = [sx * ra * np.sin(p) for p in pts]
        py = [yc + rb * np.cos(p) for p in pts]
        for k in (0, 1):
            seg = np.stack([px[k], py[k], px[k + 1], py[k + 1]], axis=1)
            segs.append(seg[theta < 2.45])
            cart.append(seg[theta >= 2.45])
    segs_a, cart_a = np.concatenate(segs), np.concatenate(cart)
    bd.capsules(segs_a, np.full(len(segs_a), 3.6), HU_CORTEX, label=BONE)
    bd.capsules(segs_a, np.full(len(segs_a), 1.9), HU_MARROW, clip=1 << BONE)
    bd.capsules(cart_a, np.full(len(cart_a), 3.6), HU_CARTILAGE, label=BODY)


def _mediastinum(bd: Builder, an: Anatomy, t: float, yc: float, ac: float, bc: float, yv: float, rv: float,
                 zc: float, lungs) -> None:
    if t > an.t_bottom + 0.02:
        return
    h0, h1 = an.t_heart
    y_tr = yv - rv - 21.0
    # upper mediastinum, narrowing into the neck
    if t < h0 + 0.04:
        w = 0.2 * ac * (0.8 + 0.2 * smoothstep(an.t_apex, an.t_carina, t))
        bd.ellipse(0.0, yc - 0.12 * bc, w, 0.92 * bc, HU_FAT, clip=INNER, label=MEDIAST, vtex=25.0)
        if lungs:
            _junction(bd, an, zc, yc, bc, lungs)
    # posterior mediastinum around the aorta and oesophagus
    bd.ellipse(6.0, yv - rv - 6.0, 27.0, 19.0, HU_FAT, clip=INNER, label=MEDIAST, vtex=25.0)
    if h0 - 0.02 < t < h1:
        hs = math.sin(math.pi * min(max((t - h0 + 0.02) / (h1 - h0 + 0.02), 0.0), 1.0)) ** 0.45
        hx, hy = 0.16 * ac, yc - 0.2 * bc
        bd.ellipse(hx, hy, hs * 0.38 * ac + 4.0, hs * 0.44 * bc + 4.0, HU_FAT, rot=-0.55, clip=INNER,
                   label=MEDIAST, vtex=20.0)
        bd.ellipse(hx, hy, hs * 0.38 * ac, hs * 0.44 * bc, HU_BLOOD - 2.0, rot=-0.55, clip=INNER, label=MEDIAST,
                   vtex=6.0)
    if t < an.t_arch:   # supra-aortic vessels
        for x, y, r in ((-14.0, -0.42, 7.0), (5.0, -0.45, 6.0), (17.0, -0.32, 6.5), (-26.0, -0.5, 8.0),
                        (26.0, -0.55, 7.0)):
            bd.ellipse(x * (0.7 + 0.3 * t / an.t_arch), yc + y * bc, r, r, HU_BLOOD, clip=INNER, label=MEDIAST)
    elif t < an.t_arch + 0.025:
        bd.capsule(8.0, yc - 0.38 * bc, 0.55 * rv + 12.0, yv - 0.5 * rv - 8.0, 13.0, HU_BLOOD, clip=INNER,
                   label=MEDIAST)
    if t >= an.t_arch:
        bd.ellipse(0.55 * rv + 12.0, yv - 0.3 * rv - 6.0, 12.0, 12.0, HU_BLOOD, clip=INNER, label=MEDIAST)
    if an.t_arch + 0.02 <= t < h0 + 0.08:
        bd.ellipse(10.0, yc - 0.36 * bc, 15.0, 15.0, HU_BLOOD, clip=INNER, label=MEDIAST)
        bd.ellipse(-24.0, yc - 0.33 * bc, 10.0, 10.0, HU_BLOOD, clip=INNER, label=MEDIAST)
    if abs(t - (an.t_carina + 0.04)) < 0.025:   # pulmonary trunk and arteries to the hila
        bd.capsule(12.0, yc - 0.28 * bc, -0.36 * ac, yc - 0.02 * bc, 10.0, HU_BLOOD, clip=INNER, label=MEDIAST)
        bd.capsule(12.0, yc - 0.28 * bc, 0.34 * ac, yc - 0.08 * bc, 10.5, HU_BLOOD, clip=INNER, label=MEDIAST)
    # oesophagus
    if t < an.t_dome[1] + 0.02:
        ex = 4.0 + 8.0 * smoothstep(an.t_carina, h1, t)
        bd.ellipse(ex, yv - rv - 6.0, 7.5, 6.0, HU_MUSCLE - 8.0, clip=INNER, label=MEDIAST)
        bd.ellipse(ex, yv - rv - 6.0, 1.8, 1.5, HU_AIR, label=AIRWAY)
    # trachea and main bronchi
    if t < an.t_carina:
        bd.ellipse(0.0, y_tr, 11.5, 10.5, HU_MUSCLE, label=MEDIAST)
        bd.ellipse(0.0, y_tr, 9.0, 8.0, HU_AIR, label=AIRWAY)
    elif t < an.t_carina + 0.12:
        f = (t - an.t_carina) / 0.12
        for sx in (-1.0, 1.0):
            x = sx * (7.0 + 0.26 * ac * f ** 0.7)
            r = 7.0 - 2.5 * f
            bd.ellipse(x, y_tr + 8.0 * f, r + 1.8, r + 1.5, HU_MUSCLE, label=MEDIAST, clip=INNER | (1 << AIRWAY))
            bd.ellipse(x, y_tr + 8.0 * f, r, r - 0.5, HU_AIR, label=AIRWAY)


def _junction(bd: Builder, an: Anatomy, zc: float, yc: float, bc: float, lungs) -> None:
    """Anterior junction: in front of the mediastinal fat the lungs reach the midline and meet behind
    the sternum, with no tissue between them, along the line x = xj from the front of the cavity back
    over ``depth``; behind it they part around the fat (the junction's triangle). Each lung is continued
    medially by a vertical capsule wide enough to reach it: the right one ends at xj, the left one,
    painted next, reaches 4 mm past it and fills in beside it. Painted before the mediastinal vessels."""
    j0, j1, xj, jh = an.junction
    if not j0 < zc < j1:
        return
    depth = 2.0 * jh * math.sin(math.pi * (zc - j0) / (j1 - j0)) ** 0.5
    front = yc - bc
    yf = front + 0.03 * bc
    edges = []
    for side in (0, 1):
        cx, cy, ax, ay = lungs[side]
        if depth < 4.0 or abs(yf - cy) > 0.99 * ay:
            return
        edges.append(cx + (1.0 if side == 0 else -1.0) * ax * math.sqrt(1.0 - ((yf - cy) / ay) ** 2))
    if not edges[0] + 4.0 < xj < edges[1] - 4.0:
        return
    for side, lab, lo, hi in ((0, LUNG_R, edges[0] - 3.0, xj), (1, LUNG_L, xj - 4.0, edges[1] + 3.0)):
        r = 0.5 * (hi - lo)
        cy, ay = lungs[side][1], lungs[side][3]
        x, grady = lo + r, 45.0 / ay   # the lung's own texture and gradient, continued
        bd.capsule(x, front - r, x, front + depth, r, HU_LUNG + grady * (front - r - cy), clip=(1 << MEDIAST) | (1 << CAVITY),
                   label=lab, vtex=22.0, grady=grady, oy=37 * side, ox=91 * side)


def _spine(bd: Builder, an: Anatomy, zc: float, t: float, yv: float, rv: float) -> None:
    disc = ((zc + an.vert_phase) % an.vert_period) < 5.5
    if disc:
        bd.ellipse(0.0, yv, rv, rv * 0.9, 85.0, label=BONE)
    else:
        bd.ellipse(0.0, yv, rv, rv * 0.9, HU_CORTEX - 150.0, label=BONE)
        bd.ellipse(0.0, yv, rv - 2.5, rv * 0.9 - 2.5, HU_MARROW - 20.0, clip=1 << BONE, vtex=45.0)
    yc = yv + 0.9 * rv + 8.0
    bd.capsule(-10.0, yc - 3.0, -5.0, yc + 10.0, 3.5, HU_CORTEX - 250.0, label=BONE)
    bd.capsule(10.0, yc - 3.0, 5.0, yc + 10.0, 3.5, HU_CORTEX - 250.0, label=BONE)
    bd.capsule(0.0, yc + 10.0, 0.0, yc + 24.0, 3.8, HU_CORTEX - 300.0, label=BONE)
    if t < an.t_bottom:
        for sx in (-1.0, 1.0):
            bd.capsule(sx * 9.0, yv + 0.7 * rv, sx * 30.0, yv + 0.7 * rv + 9.0, 4.5, HU_CORTEX - 300.0, label=BONE)
    bd.ellipse(0.0, yc, 7.5, 7.0, 32.0, label=BODY)
    if an.t_apex - 0.02 < t < an.t_heart[1]:   # sternum
        _, ac, bc = an.cavity(t)
        yc_c = an.cavity(t)[0]
        bd.ellipse(0.0, yc_c - bc - 3.0, 16.0, 6.5, HU_CORTEX - 300.0, label=BONE)
        bd.ellipse(0.0, yc_c - bc - 3.0, 13.5, 4.2, HU_MARROW, clip=1 << BONE, vtex=30.0)
