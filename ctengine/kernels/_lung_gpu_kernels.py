"""numba.cuda kernels of the lung mask (orchestrated by ``_lung_gpu``).

Pixel kernels use grid-stride loops over the flat index
``i = (z * h + y) * w + x`` of a (z, h, w) stack. Connected components use a
union-find on int32 labels (label = pixel index, -1 = background): ``merge``
joins every pixel with its left and upper neighbour by atomic-min union
(Playne and Hawick 2018), ``flatten`` points every pixel at its root (the
smallest index of its component) and adds the component's statistics at the
root with atomics. Every statistic is an integer count, so results do not
depend on thread order. Kernels are cached on disk (``cache=True``).
"""
from __future__ import annotations

from numba import cuda

# bits of the per-pixel state array
OUTSIDE, AIRBLOB, KEPT_LOW = 1, 2, 4


@cuda.jit(device=True)
def _find(lab, i):
    while lab[i] != i:
        i = lab[i]
    return i


@cuda.jit(device=True)
def _union(lab, a, b):
    done = False
    while not done:
        a = _find(lab, a)
        b = _find(lab, b)
        if a < b:
            old = cuda.atomic.min(lab, b, a)
            done = old == b
            b = old
        elif b < a:
            old = cuda.atomic.min(lab, a, b)
            done = old == a
            a = old
        else:
            done = True


@cuda.jit(device=True)
def _tissue(area, soft, r, hole_px):
    return area[r] >= hole_px and 2 * soft[r] > area[r]


@cuda.jit(cache=True)
def merge1(la, h, w):
    """Union every labelled pixel with its labelled left and upper neighbours."""
    n = la.shape[0]
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        if la[i] >= 0:
            x = i % w
            y = (i // w) % h
            if x > 0 and la[i - 1] >= 0:
                _union(la, i, i - 1)
            if y > 0 and la[i - w] >= 0:
                _union(la, i, i - w)


@cuda.jit(cache=True)
def merge2(la, lb, h, w):
    """Union every labelled pixel with its labelled left and upper neighbours, in la and lb."""
    n = la.shape[0]
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        x = i % w
        y = (i // w) % h
        if la[i] >= 0:
            if x > 0 and la[i - 1] >= 0:
                _union(la, i, i - 1)
            if y > 0 and la[i - w] >= 0:
                _union(la, i, i - w)
        if lb[i] >= 0:
            if x > 0 and lb[i - 1] >= 0:
                _union(lb, i, i - 1)
            if y > 0 and lb[i - w] >= 0:
                _union(lb, i, i - w)


@cuda.jit(cache=True)
def flatten2(la, lb, img, t_soft, area_a, soft_a, edge_a, area_b, soft_b, edge_b):
    """Point la and lb at their roots; per root: pixel count, count of raw >= t_soft, edge contact."""
    z, h, w = img.shape
    n = la.shape[0]
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        x = i % w
        y = (i // w) % h
        k = i // (w * h)
        soft = img[k, y, x] >= t_soft
        edge = x == 0 or y == 0 or x == w - 1 or y == h - 1
        if la[i] >= 0:
            r = _find(la, i)
            la[i] = r
            cuda.atomic.add(area_a, r, 1)
            if soft:
                cuda.atomic.add(soft_a, r, 1)
            if edge:
                edge_a[r] = 1
        if lb[i] >= 0:
            r = _find(lb, i)
            lb[i] = r
            cuda.atomic.add(area_b, r, 1)
            if soft:
                cuda.atomic.add(soft_b, r, 1)
            if edge:
                edge_b[r] = 1


@cuda.jit(cache=True)
def classify(img, t_low, t_air, lab_low, lab_air, s0, s1, s2, s3, s4, s5):
    """Labels of low (raw < t_low) and pure-air (raw < t_air) pixels; zero six statistics arrays."""
    z, h, w = img.shape
    n = lab_low.shape[0]
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        x = i % w
        y = (i // w) % h
        k = i // (w * h)
        v = img[k, y, x]
        lab_low[i] = i if v < t_low else -1
        lab_air[i] = i if v < t_air else -1
        s0[i] = 0
        s1[i] = 0
        s2[i] = 0
        s3[i] = 0
        s4[i] = 0
        s5[i] = 0


@cuda.jit(cache=True)
def outside_blobs(lab_low, lab_air, area_low, notair_low, edge_low, area_air, airway_px, state):
    """state bits: outside, air blob (undilated), kept low (not air-like).

    notair_low counts the pixels of a low component with raw >= t_air.
    """
    n = lab_low.shape[0]
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        r = lab_low[i]
        a = lab_air[i]
        st = 0
        if r >= 0:
            if area_low[r] > 2 * notair_low[r]:
                if edge_low[r] != 0:
                    st |= OUTSIDE
            else:
                st |= KEPT_LOW
        if a >= 0 and area_air[a] >= airway_px:
            st |= AIRBLOB
        state[i] = st


@cuda.jit(cache=True)
def candidates(state, h, w, carve, lab_c, area_c, sum_c, left_c):
    """carve = air blobs dilated by the cross; candidate labels (kept low, not carved); zero statistics."""
    n = state.shape[0]
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        x = i % w
        y = (i // w) % h
        c = (state[i] & AIRBLOB) != 0
        if x > 0 and (state[i - 1] & AIRBLOB) != 0:
            c = True
        if x < w - 1 and (state[i + 1] & AIRBLOB) != 0:
            c = True
        if y > 0 and (state[i - w] & AIRBLOB) != 0:
            c = True
        if y < h - 1 and (state[i + w] & AIRBLOB) != 0:
            c = True
        carve[i] = 1 if c else 0
        lab_c[i] = i if (state[i] & KEPT_LOW) != 0 and not c else -1
        area_c[i] = 0
        sum_c[i] = 0
        left_c[i] = 0


@cuda.jit(cache=True)
def flatten_cand(lab_c, w, area_c, sum_c):
    """Point candidate labels at their roots; per root: pixel count and sum of columns."""
    n = lab_c.shape[0]
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        if lab_c[i] >= 0:
            r = _find(lab_c, i)
            lab_c[i] = r
            cuda.atomic.add(area_c, r, 1)
            cuda.atomic.add(sum_c, r, i % w)


@cuda.jit(cache=True)
def columns(state, lab_c, area_c, lung_px, h, w, prof, nb, sb):
    """One thread per (slice, column): kept-pixel profile; body count and column sum per slice."""
    nz = prof.shape[0]
    for t in range(cuda.grid(1), nz * w, cuda.gridsize(1)):
        k = t // w
        x = t % w
        body = 0
        kept = 0
        base = k * h * w + x
        for y in range(h):
            i = base + y * w
            if state[i] & OUTSIDE == 0:
                body += 1
            r = lab_c[i]
            if r >= 0 and area_c[r] >= lung_px:
                kept += 1
        prof[k, x] = kept
        cuda.atomic.add(nb, k, body)
        cuda.atomic.add(sb, k, body * x)


@cuda.jit(cache=True)
def cut_columns(prof, nb, sb, split_px, cut, deep):
    """One thread per slice: cut column c* and the deep flag; cut = -1 without kept pixels."""
    nz, w = prof.shape
    for k in range(cuda.grid(1), nz, cuda.gridsize(1)):
        total = 0
        for x in range(w):
            total += prof[k, x]
        cut[k] = -1
        deep[k] = 0
        if total == 0:
            continue
        n = nb[k]
        s = sb[k]
        lim = split_px * n
        best = -1
        bp = 0
        bd = 0
        for c in range(w):
            d = abs(c * n - s)
            if d <= lim:
                if best < 0 or prof[k, c] < bp or (prof[k, c] == bp and d < bd):
                    best = c
                    bp = prof[k, c]
                    bd = d
        left = 0
        for c in range(best):
            left = max(left, prof[k, c])
        right = 0
        for c in range(best + 1, w):
            right = max(right, prof[k, c])
        cut[k] = best
        deep[k] = 1 if 2 * bp <= min(left, right) else 0


@cuda.jit(cache=True)
def left_counts(lab_c, area_c, lung_px, cut, h, w, left_c):
    """Per kept component: pixels in columns <= the slice's cut column."""
    n = lab_c.shape[0]
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        r = lab_c[i]
        if r >= 0 and area_c[r] >= lung_px and i % w <= cut[i // (h * w)]:
            cuda.atomic.add(left_c, r, 1)


@cuda.jit(cache=True)
def assign(lab_c, area_c, sum_c, left_c, lung_px, cut, deep, h, w, lung, bg1, bg2,
           s0, s1, s2, s3, s4, s5):
    """Lung label (0/1/2) per pixel; background labels of lung 1 and 2; zero six statistics arrays."""
    n = lab_c.shape[0]
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        r = lab_c[i]
        x = i % w
        c = cut[i // (h * w)]
        v = 0
        if r >= 0 and area_c[r] >= lung_px:
            a = area_c[r]
            aleft = left_c[r]
            if deep[i // (h * w)] != 0 and aleft >= lung_px and a - aleft >= lung_px:
                v = 1 if x <= c else 2
            elif 2 * sum_c[r] < (2 * c + 1) * a:
                v = 1
            else:
                v = 2
        lung[i] = v
        bg1[i] = -1 if v == 1 else i
        bg2[i] = -1 if v == 2 else i
        s0[i] = 0
        s1[i] = 0
        s2[i] = 0
        s3[i] = 0
        s4[i] = 0
        s5[i] = 0


@cuda.jit(cache=True)
def fill(lung, bg1, bg2, area1, soft1, edge1, area2, soft2, edge2, hole_px, fb):
    """fb bits: 1 F1, 2 F2 (holes filled except tissue holes), 4 H1, 8 H2 (every hole filled)."""
    n = lung.shape[0]
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        v = lung[i]
        b = 0
        if v == 1:
            b |= 1 | 4
        else:
            r = bg1[i]
            if edge1[r] == 0:
                b |= 4
                if not _tissue(area1, soft1, r, hole_px):
                    b |= 1
        if v == 2:
            b |= 2 | 8
        else:
            r = bg2[i]
            if edge2[r] == 0:
                b |= 8
                if not _tissue(area2, soft2, r, hole_px):
                    b |= 2
        fb[i] = b


@cuda.jit(cache=True)
def additions(fb, closed, lim1, lim2, h, w, ry, rx, ad1, ad2, s0, s1, s2, s3, s4, s5):
    """Labels of the closing's additions of each lung (outside H_k, lateral side); zero statistics."""
    n = fb.shape[0]
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        x = i % w
        y = (i // w) % h
        k = i // (w * h)
        row = i // w
        c = closed[k, y + ry, x + rx]
        b = fb[i]
        ad1[i] = i if (c & 1) != 0 and (b & 4) == 0 and x <= lim1[row] else -1
        ad2[i] = i if (c & 2) != 0 and (b & 8) == 0 and x >= lim2[row] else -1
        s0[i] = 0
        s1[i] = 0
        s2[i] = 0
        s3[i] = 0
        s4[i] = 0
        s5[i] = 0


@cuda.jit(cache=True)
def grow(fb, ad1, ad2, area1, soft1, area2, soft2, hole_px, bg1, bg2, s0, s1, s2, s3, s4, s5):
    """fb bits 16, 32: G0_k = F_k or a non-tissue addition; background labels of G0; zero statistics."""
    n = fb.shape[0]
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        b = fb[i]
        g1 = (b & 1) != 0
        r = ad1[i]
        if r >= 0 and not _tissue(area1, soft1, r, hole_px):
            g1 = True
        g2 = (b & 2) != 0
        r = ad2[i]
        if r >= 0 and not _tissue(area2, soft2, r, hole_px):
            g2 = True
        if g1:
            b |= 16
        if g2:
            b |= 32
        fb[i] = b
        bg1[i] = -1 if g1 else i
        bg2[i] = -1 if g2 else i
        s0[i] = 0
        s1[i] = 0
        s2[i] = 0
        s3[i] = 0
        s4[i] = 0
        s5[i] = 0


@cuda.jit(cache=True)
def final(fb, carve, bg1, bg2, area1, soft1, edge1, area2, soft2, edge2, hole_px, h, w, out):
    """Output 0/1/2: G_k = G0_k plus non-tissue holes, minus carved pixels outside F_k; overlaps 0."""
    n = fb.shape[0]
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        b = fb[i]
        blob = carve[i] != 0
        m1 = (b & 16) != 0
        if not m1:
            r = bg1[i]
            m1 = edge1[r] == 0 and not _tissue(area1, soft1, r, hole_px)
        if blob and (b & 1) == 0:
            m1 = False
        m2 = (b & 32) != 0
        if not m2:
            r = bg2[i]
            m2 = edge2[r] == 0 and not _tissue(area2, soft2, r, hole_px)
        if blob and (b & 2) == 0:
            m2 = False
        v = 0
        if m1 and not m2:
            v = 1
        elif m2 and not m1:
            v = 2
        out[i // (h * w), (i // w) % h, i % w] = v
