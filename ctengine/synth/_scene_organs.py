"""Organs painted into a phantom slice below and inside the thorax: abdomen, gas under the lung domes,
lung vessels, lesions and the ECG cables on the skin (called from ``_scene.slice_prims``)."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from ._anatomy import Anatomy, smoothstep
from ._reference import MAX
from ._tissues import FLUID, GAS, HU_AIR, HU_BLOOD, HU_LIVER, INNER, LUNGS, ORGAN

if TYPE_CHECKING:
    from ._scene import Builder


def abdomen(bd: Builder, an: Anatomy, t: float, zc: float, yc: float, ac: float, bc: float) -> None:
    """Diaphragm domes (liver right, spleen and stomach left) rising into the lung bases, bowel gas."""
    clip = INNER | (1 << ORGAN)
    gr = smoothstep(an.t_dome[0], an.t_bottom, t) ** 0.6
    if gr > 0.0:
        cx, cy, ax, ay = an.lung_ellipse(0.5 * (an.t_apex + an.t_bottom), 0)
        bd.ellipse(cx * 0.8, yc - 0.15 * bc, gr * 0.85 * ac, gr * 1.1 * bc, HU_LIVER, clip=clip, label=ORGAN,
                   vtex=8.0, stex=0.02)
    gl = smoothstep(an.t_dome[1], an.t_bottom + 0.03, t) ** 0.6
    if gl > 0.0:
        cx = an.lung_ellipse(0.5, 1)[0]
        bd.ellipse(cx * 0.85, yc + 0.05 * bc, gl * 0.7 * ac, gl * 1.05 * bc, 35.0, clip=clip, label=ORGAN,
                   vtex=8.0)
        bd.ellipse(0.55 * ac, yc + 0.45 * bc, gl * 0.22 * ac, gl * 0.35 * bc, 48.0, clip=clip, label=ORGAN,
                   rot=0.5)
        if gl > 0.35:
            dome_gas(bd, an, zc, cx * 0.85, yc + 0.05 * bc, gl * 0.7 * ac, gl * 1.05 * bc)
    for x, y, g0, g1, ga, gb in an.gas:
        if g0 <= zc <= g1:
            f = math.sin(math.pi * (zc - g0) / (g1 - g0)) ** 0.5
            bd.ellipse(x, y, ga * f, gb * f, HU_AIR + 20.0, clip=clip | (1 << GAS), label=GAS, stex=0.35,
                       oy=x * 3.0, ox=y * 5.0)


def dome_gas(bd: Builder, an: Anatomy, zc: float, ox: float, oy: float, oa: float, ob: float) -> None:
    """Stomach gas bubble (with a flat air-fluid level: the patient lies supine) and bowel gas pockets
    under the left dome, inside its organ ellipse (ox, oy, oa, ob) with a rim of at least a fifth of
    it, so that tissue (diaphragm, stomach wall) always lies between the gas and the lung base."""
    s0, s1, sa, sb, sx = an.stomach
    if s0 < zc < s1:
        f = math.sin(math.pi * (zc - s0) / (s1 - s0)) ** 0.5
        ga, gb = min(f * sa, 0.5 * oa), min(f * sb, 0.42 * ob)
        if min(ga, gb) > 3.0:
            x, y = ox + 0.12 * sx * oa, oy - 0.3 * ob
            bd.ellipse(x, y, ga, gb, HU_AIR, clip=1 << ORGAN, label=GAS)
            level = y + 0.3 * gb   # gastric fluid below the level
            bd.capsule(x - ga, level + gb, x + ga, level + gb, gb, 12.0, clip=1 << GAS, label=FLUID)
    for u, v, g0, g1, k in an.dome_gas:
        if g0 < zc < g1:
            f = math.sin(math.pi * (zc - g0) / (g1 - g0)) ** 0.5
            ga, gb = min(f * k * oa, 14.0), min(f * k * ob, 12.0)
            if min(ga, gb) > 2.0:
                bd.ellipse(ox + u * oa, oy + v * ob, ga, gb, HU_AIR + 20.0, clip=1 << ORGAN, label=GAS,
                           stex=0.2, oy=u * 40.0, ox=v * 40.0)


def _lung_map(lungs, side: np.ndarray, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lung-normalised (u, v) -> mm at this slice; also the lung half width (for scaling radii)."""
    cx = np.where(side == 0, lungs[0][0], lungs[1][0])
    cy = np.where(side == 0, lungs[0][1], lungs[1][1])
    ax = np.where(side == 0, lungs[0][2], lungs[1][2])
    ay = np.where(side == 0, lungs[0][3], lungs[1][3])
    return cx + u * ax, cy + v * ay, ax


def vessels(bd: Builder, an: Anatomy, z0: float, z1: float, t: float, lungs) -> None:
    v = an.vessels
    za, zb = v[:, 3], v[:, 6]
    lo, hi = np.minimum(za, zb), np.maximum(za, zb)
    hit = (hi >= z0) & (lo <= z1)
    if not hit.any():
        return
    v, za, zb = v[hit], za[hit], zb[hit]
    dz = zb - za
    flat = np.abs(dz) < 1e-6
    dzs = np.where(flat, 1.0, dz)
    ta = np.where(flat, 0.0, np.clip((z0 - za) / dzs, 0.0, 1.0))
    tb = np.where(flat, 1.0, np.clip((z1 - za) / dzs, 0.0, 1.0))
    t0, t1 = np.minimum(ta, tb), np.maximum(ta, tb)
    side = v[:, 0].astype(np.int64)
    u0 = v[:, 1] + t0 * (v[:, 4] - v[:, 1])
    v0 = v[:, 2] + t0 * (v[:, 5] - v[:, 2])
    u1 = v[:, 1] + t1 * (v[:, 4] - v[:, 1])
    v1 = v[:, 2] + t1 * (v[:, 5] - v[:, 2])
    x0, y0, _ = _lung_map(lungs, side, u0, v0)
    x1, y1, _ = _lung_map(lungs, side, u1, v1)
    r = v[:, 7] * (0.55 + 0.45 * an.lung_open(t))
    amax = np.minimum(1.0, 0.45 + 1.4 * r / max(z1 - z0, 0.5))
    bd.capsules(np.stack([x0, y0, x1, y1], axis=1), r, HU_BLOOD, op=MAX, clip=LUNGS, amax=amax)


def lesions(bd: Builder, an: Anatomy, z0: float, z1: float, lungs) -> None:
    les = an.lesions
    if les.z.size == 0:
        return
    dz = np.maximum(np.maximum(les.z - z1, z0 - les.z), 0.0)
    k = np.sqrt(np.clip(1.0 - (dz / les.rz) ** 2, 0.0, 1.0))
    x, y, ax = _lung_map(lungs, les.side, les.u, les.v)
    scale = np.clip(ax / max(lungs[0][2], lungs[1][2], 1e-3), 0.6, 1.0)
    for i in np.flatnonzero(k > 0.3):
        f = k[i] * scale[i]
        bd.ellipse(x[i], y[i], les.rx[i] * f, les.ry[i] * f, les.value[i], rot=les.rot[i], clip=LUNGS,
                   lesion=1, stex=les.stex[i], vtex=les.vtex[i], oy=les.oy[i], ox=les.ox[i])


def cables(bd: Builder, an: Anatomy, zc: float, yb: float, a: float, b: float) -> None:
    for ang, c0, c1 in an.cables:
        if c0 <= zc <= c1:
            phi = ang + 0.002 * (zc - c0)
            x, y = (a + 3.0) * math.sin(phi), yb + (b + 3.0) * math.cos(phi)
            bd.ellipse(x, y, 2.3, 2.3, 90.0)
            bd.ellipse(x, y, 0.7, 0.7, 2600.0)
