"""Reference lung mask (plain numpy/scipy.ndimage): the specification of ``_lung_cpu`` and ``_lung_gpu``.

Every slice (H, W) of raw values ``I`` is processed on its own with the
integer parameters ``p`` of :class:`~._lung_params.LungParams`. All
connectivity is 4-connectivity (the cross; scipy's default), for foreground
and background alike.

1. ``low = I < t_low`` (air-like), ``air = I < t_air`` (pure air).
2. Components of ``low``: a component is *air-like* when more than half of
   its pixels are pure air (its median is below ``air_hu``). ``outside`` is
   the union of air-like components touching the image edge (the region
   outside the field of view, air around the body). ``kept_low`` is the
   union of the components that are not air-like (trachea, bowel gas, air
   between table layers and the outside are air-like and go away).
3. ``airblob``: union of components of ``air`` with at least ``airway_px``
   pixels (airway lumens, gas pockets, bullae), dilated by the cross (one
   pixel: the noisy or partial-volume rim of an airway goes with it).
4. ``cand = kept_low & ~airblob``; its components with at least ``lung_px``
   pixels form ``kept``.
5. Body midline: ``nb`` = number of pixels not in ``outside``, ``sb`` = sum
   of their column indices (midline ``m = sb / nb``). No ``kept`` pixel:
   the slice's mask is all 0.
6. ``prof[c]`` = number of ``kept`` pixels in column c. Among the columns
   with ``|c nb - sb| <= split_px nb`` the cut column ``c*`` minimises
   ``(prof[c], |c nb - sb|, c)`` lexicographically. ``deep`` holds when
   ``2 prof[c*] <= min(max prof[c < c*], max prof[c > c*])`` (an empty
   maximum is 0).
7. Each component of ``kept`` with ``aL`` pixels in columns ``<= c*`` and
   ``aR`` in columns ``> c*`` is *split* when ``deep`` and ``aL >= lung_px``
   and ``aR >= lung_px``: its pixels in columns ``<= c*`` go to lung 1 (the
   patient's right, image left), the others to lung 2. Any other component
   goes whole to lung 1 when ``2 sum(col) < (2 c* + 1) area`` (centroid left
   of ``c* + 1/2``), else to lung 2.
8. For each lung k with pixels ``L_k`` (4-connected everywhere; a *tissue*
   region is a component of at least ``hole_px`` pixels more than half of
   which are ``>= t_soft``):

   - ``F_k`` = ``L_k`` plus its holes (background components not touching
     the image edge) that are not tissue regions (a liver or spleen dome
     rising into the lung stays out, vessels and lesions come in);
   - ``A_k`` = pixels of the closing of ``F_k`` by the (2 ry + 1) x (2 rx + 1)
     rectangle in the unbounded plane (zero outside the image) that are
     outside ``fill_holes(F_k)`` and not medial of ``F_k`` on their row
     (lung 1: column <= the row's last ``F_k`` column, lung 2: column >= the
     row's first; every column of a row without ``F_k`` pixels); then its
     tissue regions are removed. This brings pleural lesions and nodules
     back without heart, hilum, spine or liver;
   - ``G_k`` = ``F_k | A_k`` plus its non-tissue holes;
   - ``M_k = G_k & ~(airblob & ~F_k)`` (air pockets that were not enclosed by
     the lung, such as a main bronchus at the hilum, stay out).
9. Output 1 on ``M_1 & ~M_2``, 2 on ``M_2 & ~M_1``, 0 elsewhere.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from ._lung_params import LungParams

_CROSS = ndimage.generate_binary_structure(2, 1)


def _label(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """4-connected labels and per-label pixel counts (index 0 = background)."""
    lab, n = ndimage.label(mask, structure=_CROSS)
    return lab, np.bincount(lab.ravel(), minlength=n + 1)


def _edge_labels(lab: np.ndarray, n: int) -> np.ndarray:
    """Boolean per label: the component touches the image edge."""
    edge = np.zeros(n + 1, dtype=bool)
    edge[np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])] = True
    edge[0] = False
    return edge


def closing_plane(mask: np.ndarray, ry: int, rx: int) -> np.ndarray:
    """Binary closing by a (2 ry + 1) x (2 rx + 1) rectangle of a mask that is zero outside the image."""
    if ry == 0 and rx == 0:
        return mask.copy()
    pad = np.pad(mask.astype(np.uint8), ((ry, ry), (rx, rx)))
    size = (2 * ry + 1, 2 * rx + 1)
    dil = ndimage.maximum_filter(pad, size=size, mode="constant", cval=0)
    ero = ndimage.minimum_filter(dil, size=size, mode="constant", cval=0)
    return ero[ry:ry + mask.shape[0], rx:rx + mask.shape[1]].astype(bool)


def drop_tissue(region: np.ndarray, img: np.ndarray, hole_px: int, t_soft: int) -> np.ndarray:
    """region minus its components of at least hole_px pixels with more than half raw >= t_soft."""
    lab, area = _label(region)
    soft = np.bincount(lab[region & (img >= t_soft)], minlength=area.shape[0])
    stay = (area < hole_px) | (2 * soft <= area)
    stay[0] = False
    return stay[lab]


def fill_holes_rule(mask: np.ndarray, img: np.ndarray, hole_px: int, t_soft: int) -> np.ndarray:
    """mask plus its holes, except holes that are large soft tissue (see drop_tissue)."""
    holes = ndimage.binary_fill_holes(mask, structure=_CROSS) & ~mask
    return mask | drop_tissue(holes, img, hole_px, t_soft)


def lateral_side(mask: np.ndarray, lung: int) -> np.ndarray:
    """Pixels not medial of the lung on their row: lung 1 columns <= the row's last mask column,
    lung 2 columns >= the row's first; every pixel of a row without mask pixels."""
    h, w = mask.shape
    cols = np.arange(w)
    has = mask.any(axis=1)
    if lung == 1:
        last = np.where(has, w - 1 - np.argmax(mask[:, ::-1], axis=1), w - 1)
        return cols[None, :] <= last[:, None]
    first = np.where(has, np.argmax(mask, axis=1), 0)
    return cols[None, :] >= first[:, None]


def cut_column(prof: np.ndarray, nb: int, sb: int, split_px: int) -> tuple[int, bool]:
    """Cut column c* and the ``deep`` flag (step 6) from the kept-pixel column profile."""
    cols = np.arange(prof.shape[0], dtype=np.int64)
    dist = np.abs(cols * nb - sb)
    win = np.nonzero(dist <= split_px * nb)[0]
    order = np.lexsort((win, dist[win], prof[win]))
    c = int(win[order[0]])
    left = int(prof[:c].max()) if c > 0 else 0
    right = int(prof[c + 1:].max()) if c + 1 < prof.shape[0] else 0
    return c, 2 * int(prof[c]) <= min(left, right)


def lung_mask_slice(img: np.ndarray, p: LungParams) -> np.ndarray:
    """Lung mask (uint8 0/1/2) of one raw slice (H, W) following the module's specification."""
    h, w = img.shape
    out = np.zeros((h, w), dtype=np.uint8)
    low = img < p.t_low
    air = img < p.t_air
    lab, area = _label(low)
    nair = np.bincount(lab[air], minlength=area.shape[0])
    airlike = 2 * nair > area
    outside = (airlike & _edge_labels(lab, area.shape[0] - 1))[lab]
    outside[lab == 0] = False
    kept_low = ~airlike
    kept_low[0] = False
    alab, aarea = _label(air)
    blob = aarea >= p.airway_px
    blob[0] = False
    airblob = ndimage.binary_dilation(blob[alab], structure=_CROSS)
    clab, carea = _label(kept_low[lab] & ~airblob)
    ckeep = carea >= p.lung_px
    ckeep[0] = False
    kept = ckeep[clab]
    if not kept.any():
        return out
    cols = np.broadcast_to(np.arange(w, dtype=np.int64), (h, w))
    body = ~outside
    nb, sb = int(body.sum()), int(cols[body].sum())
    prof = kept.sum(axis=0).astype(np.int64)
    c, deep = cut_column(prof, nb, sb, p.split_px)
    left_of_cut = cols <= c
    a_left = np.bincount(clab[kept & left_of_cut], minlength=carea.shape[0])
    sum_x = np.bincount(clab.ravel(), weights=cols.ravel().astype(np.float64),
                        minlength=carea.shape[0]).astype(np.int64)
    split = ckeep & deep & (a_left >= p.lung_px) & (carea - a_left >= p.lung_px)
    whole_right = ckeep & ~split & (2 * sum_x < (2 * c + 1) * carea)
    lung1 = kept & ((split[clab] & left_of_cut) | whole_right[clab])
    lung2 = kept & ~lung1
    final = []
    for k, lung in ((1, lung1), (2, lung2)):
        filled = fill_holes_rule(lung, img, p.hole_px, p.t_soft)
        added = (closing_plane(filled, p.ry, p.rx) & lateral_side(filled, k)
                 & ~ndimage.binary_fill_holes(filled, structure=_CROSS))
        grown = filled | drop_tissue(added, img, p.hole_px, p.t_soft)
        grown = fill_holes_rule(grown, img, p.hole_px, p.t_soft)
        final.append(grown & ~(airblob & ~filled))
    out[final[0] & ~final[1]] = 1
    out[final[1] & ~final[0]] = 2
    return out


def lung_mask_reference(stack: np.ndarray, p: LungParams) -> np.ndarray:
    """Lung masks (z, y, x) uint8 of a raw (z, y, x) stack, slice by slice."""
    out = np.zeros(stack.shape, dtype=np.uint8)
    for k in range(stack.shape[0]):
        out[k] = lung_mask_slice(stack[k], p)
    return out
