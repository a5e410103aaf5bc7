"""Reference of the whole-series stages of the lung mask: the specification of ``_lung_volume_cpu``.

A series (z, y, x) is a contiguous stack of slices, superior first. Two
stages run around the per-slice method of ``_lung_reference``; all
connectivity is 6-connectivity in 3-D (4 in-plane plus the voxel above and
below) and 4-connectivity in 2-D, as in the per-slice method.

**Before** (``declare_air``): voxels that cannot be lung are set to raw 0
(pure air) so that the per-slice method drops them and carves them out:

1. ``low = I < t_low``, ``air = I < t_air``. A 3-D component of ``low`` is
   a *candidate outside* when it touches the first or last row or column of
   any slice and more than half of its voxels are pure air: the air around
   the body and everything air-like connected to it anywhere in the series
   (table padding, air between the pad and the back, the field-of-view
   border). *Enclosed* voxels are those of the 2-D components of ``low``
   (slice by slice) that touch no slice border and are not mostly pure air:
   what the per-slice method would take for lung. A candidate is *outside*
   when it holds fewer enclosed voxels than all candidates leave outside
   themselves: a padding pocket is small beside the lungs, but lungs joined
   to the outside air through an open airway (an open mouth, a tube) are
   not, and such a candidate is left to the per-slice method.
2. The airways, followed down from the top of the trachea. ``lumen``: the
   pixels of ``low & ~outside`` whose 3 x 3 in-plane neighbourhood (the
   part inside the slice) has a mean raw value below ``t_air`` (noise in an
   airway's lumen averages out; lung parenchyma stays above it). The *seed
   slice* is the first slice (from the top) holding a 2-D component of
   ``lumen`` with ``seed_px <= area <= airway_max_px`` pixels whose centroid
   column lies within ``midline_px`` of the slice's body midline (the mean
   column of the pixels not outside); the seed is the largest such
   component (ties: the first in raster order). In each following slice
   the airway is the union of the components of ``lumen`` that overlap the
   airway of the slice above and have at most ``airway_max_px`` pixels.
   Tracking ends at the first slice with no airway pixel (the bronchi have
   narrowed inside the lungs).
3. The airway's wall: in each slice, the components of ``low & ~outside``
   that hold airway pixels and have at most ``airway_max_px`` pixels join
   the airway (the partial-volume rim of a trachea standing alone; where the
   airway touches a lung, the per-slice method's pure-air carving applies).
4. Outside and airway voxels become raw 0.

**After** (``keep_lungs``): the 3-D components of the mask (either lung)
are kept when they hold at least ``keep_per_mille`` / 1000 of the largest
component's voxels: gas pockets below the diaphragm (stomach, bowel) and
other small islands are not lung.

The stages do not change the per-slice method. A single slice (2-D input,
a stack of one slice, or ``per_slice=True``) gets the per-slice method
alone: its outside rule is the 2-D one and the trachea is dropped only when
its median is pure air.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ._lung_params import VolumeParams


def _modules(x: Any) -> tuple[Any, Any]:
    """(array module, ndimage module) of x: numpy + scipy.ndimage or cupy + cupyx.scipy.ndimage."""
    if isinstance(x, np.ndarray):
        from scipy import ndimage
        return np, ndimage
    import cupy
    from cupyx.scipy import ndimage
    return cupy, ndimage


def _border_airlike(lab: Any, n: int, air: Any) -> Any:
    """Per label (index 0 = background, False): touches a slice border and is mostly pure air."""
    xp, _ = _modules(lab)
    area = xp.bincount(lab.ravel(), minlength=n + 1)
    nair = xp.bincount(lab[air], minlength=n + 1)
    edge = xp.zeros(n + 1, dtype=bool)
    edge[xp.concatenate([lab[:, 0].ravel(), lab[:, -1].ravel(), lab[:, :, 0].ravel(),
                         lab[:, :, -1].ravel()])] = True
    out = edge & (2 * nair > area)
    out[0] = False
    return out, edge, area, nair


def outside_air(low: Any, air: Any) -> Any:
    """Outside voxels of a series (stage 1)."""
    xp, ndi = _modules(low)
    lab, n = ndi.label(low, structure=ndi.generate_binary_structure(3, 1))
    candidate = _border_airlike(lab, n, air)[0]
    in_plane = xp.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndi.generate_binary_structure(2, 1)
    lab2, n2 = ndi.label(low, structure=in_plane)
    _, edge2, area2, nair2 = _border_airlike(lab2, n2, air)
    lung_like = ~edge2 & (2 * nair2 <= area2)
    lung_like[0] = False
    enclosed = lung_like[lab2]
    held = xp.bincount(lab[enclosed], minlength=n + 1)
    left = int(held[~candidate].sum())
    out = candidate & (held < left)
    return out[lab]


def _seed(lumen: Any, outside: Any, p: VolumeParams) -> Any | None:
    """The trachea's seed component of one slice (boolean mask), or None."""
    xp, ndi = _modules(lumen)
    lab, n = ndi.label(lumen, structure=ndi.generate_binary_structure(2, 1))
    if n == 0:
        return None
    body = ~outside
    nb = int(body.sum())
    if nb == 0:
        return None
    cols = xp.broadcast_to(xp.arange(lumen.shape[1], dtype=xp.int64), lumen.shape)
    sb = int(cols[body].sum())
    area = xp.bincount(lab.ravel(), minlength=n + 1)
    sum_x = xp.bincount(lab.ravel(), weights=cols.ravel().astype(xp.float64), minlength=n + 1)
    area_h = (area.get() if xp is not np else area).tolist()
    sum_h = (sum_x.get() if xp is not np else sum_x).astype(np.int64).tolist()
    best, best_area = 0, 0
    for k in range(1, n + 1):
        a = area_h[k]
        near = abs(sum_h[k] * nb - sb * a) <= p.midline_px * a * nb   # |centroid - midline| <= midline_px
        if p.seed_px <= a <= p.airway_max_px and near:
            if a > best_area:
                best, best_area = k, a
    return lab == best if best else None


def _follow(lumen: Any, above: Any, p: VolumeParams) -> Any:
    """One slice's airway (stage 2): lumen components overlapping the airway above, small enough."""
    xp, ndi = _modules(lumen)
    lab, n = ndi.label(lumen, structure=ndi.generate_binary_structure(2, 1))
    area = xp.bincount(lab.ravel(), minlength=n + 1)
    touch = xp.zeros(n + 1, dtype=bool)
    touch[lab[above]] = True
    keep = touch & (area <= p.airway_max_px)
    keep[0] = False
    return keep[lab]


def lumen_like(stack: Any, t_air: int) -> Any:
    """Pixels whose 3 x 3 in-plane neighbourhood (inside the slice) has a mean raw value below t_air."""
    xp, _ = _modules(stack)
    z, h, w = stack.shape
    pad = xp.zeros((z, h + 2, w + 2), dtype=xp.int64)
    ones = xp.zeros((z, h + 2, w + 2), dtype=xp.int64)
    pad[:, 1:-1, 1:-1] = stack
    ones[:, 1:-1, 1:-1] = 1
    total = xp.zeros((z, h, w), dtype=xp.int64)
    count = xp.zeros((z, h, w), dtype=xp.int64)
    for dy in range(3):
        for dx in range(3):
            total += pad[:, dy:dy + h, dx:dx + w]
            count += ones[:, dy:dy + h, dx:dx + w]
    return total < count * t_air


def airways(lumen: Any, outside: Any, p: VolumeParams) -> Any:
    """Airway voxels (stage 2) of a series: the trachea's seed and what follows it downward."""
    xp, _ = _modules(lumen)
    out = xp.zeros(lumen.shape, dtype=bool)
    z0 = None
    for z in range(lumen.shape[0]):
        seed = _seed(lumen[z], outside[z], p)
        if seed is not None:
            out[z], z0 = seed, z
            break
    if z0 is None:
        return out
    for z in range(z0 + 1, lumen.shape[0]):
        out[z] = _follow(lumen[z], out[z - 1], p)
        if not bool(out[z].any()):
            break
    return out


def airway_walls(free: Any, lumen: Any, p: VolumeParams) -> Any:
    """The airway lumen plus, slice by slice, the components of ``free`` holding it that have at most
    ``airway_max_px`` pixels (the partial-volume wall of a trachea standing alone)."""
    xp, ndi = _modules(free)
    out = lumen.copy()
    cross = ndi.generate_binary_structure(2, 1)
    for z in range(free.shape[0]):
        if bool(lumen[z].any()):
            ring = lumen[z]
            for _ in range(p.wall_px):
                ring = ndi.binary_dilation(ring, structure=cross) & free[z]
            out[z] |= ring | _follow(free[z], lumen[z], p)
    return out


def declare_air(stack: Any, t_low: int, t_air: int, p: VolumeParams) -> Any:
    """Copy of a raw series with its outside air and airways set to raw 0 (stages 1-3)."""
    low = stack < t_low
    outside = outside_air(low, stack < t_air)
    free = low & ~outside
    lumen = airways(free & lumen_like(stack, t_air), outside, p)
    out = stack.copy()
    out[outside | airway_walls(free, lumen, p)] = 0
    return out


def keep_lungs(mask: Any, p: VolumeParams) -> Any:
    """The mask without 3-D components smaller than keep_per_mille / 1000 of the largest (in place)."""
    xp, ndi = _modules(mask)
    lab, n = ndi.label(mask > 0, structure=ndi.generate_binary_structure(3, 1))
    if n == 0:
        return mask
    area = xp.bincount(lab.ravel(), minlength=n + 1)
    area[0] = 0
    small = 1000 * area < p.keep_per_mille * area.max()
    small[0] = False
    mask[small[lab]] = 0
    return mask
