"""Patient anatomy of the phantom: sizes, landmarks along z, vessel trees and lesions.

Units are mm. x runs to the image right (the patient's left), y to the image
bottom (posterior), z from the top of the scan (superior) down; the origin of
x and y is the centre of the field of view. Landmarks along the scan are
fractions ``t`` of the scan length. Everything here depends only on the
anatomy seed, so the three series of a patient show the same body.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: scan length drawn for a patient when none is given (mm)
SCAN_LENGTH_MM = (240.0, 300.0)


def smoothstep(a: float, b: float, t: float) -> float:
    """0 below a, 1 above b, a smooth cubic ramp between."""
    x = min(max((t - a) / (b - a), 0.0), 1.0)
    return x * x * (3.0 - 2.0 * x)


@dataclass
class Lesions:
    """COVID lesions as ellipsoids attached to a lung (arrays of length n).

    ``side`` 0 right lung, 1 left; ``u, v`` centre in lung-normalised
    coordinates (1 = the lung ellipse); ``z`` centre (mm); ``rx, ry, rz``
    semi-axes (mm); ``rot`` in-plane rotation (rad); ``value`` mean HU;
    ``vtex`` texture amplitude (HU); ``stex`` boundary irregularity; ``oy, ox``
    texture offsets (px at 512).
    """
    side: np.ndarray
    u: np.ndarray
    v: np.ndarray
    z: np.ndarray
    rx: np.ndarray
    ry: np.ndarray
    rz: np.ndarray
    rot: np.ndarray
    value: np.ndarray
    vtex: np.ndarray
    stex: np.ndarray
    oy: np.ndarray
    ox: np.ndarray

    @staticmethod
    def empty() -> "Lesions":
        e = np.zeros(0)
        return Lesions(e.astype(np.int64), e, e, e, e, e, e, e, e, e, e, e.astype(np.int64), e.astype(np.int64))


@dataclass
class Anatomy:
    """One patient's body (see module docstring for axes and units)."""
    length: float            # scan length (mm)
    A: float                 # body half width at the chest (mm)
    B: float                 # body half height (mm)
    fat: float               # subcutaneous fat (mm)
    muscle: float            # chest wall muscle (mm)
    y_table: float           # lowest point of the back, where it presses into the table pad (mm)
    t_apex: float            # lungs open below this
    t_rise: float            # lung apex to full size
    t_carina: float
    t_arch: float
    t_heart: tuple[float, float]
    t_dome: tuple[float, float]   # right, left dome tops
    t_bottom: float          # lungs closed below this
    rib_z0: float
    rib_step: float
    rib_drop: float
    vert_period: float
    vert_phase: float
    r_vb: float
    vessels: np.ndarray      # (n, 8): side, u0, v0, z0, u1, v1, z1, radius(mm)
    lesions: Lesions
    gas: np.ndarray          # (n, 6): x, y, z0, z1, a, b (mm)
    cables: np.ndarray       # (n, 3): angle (rad), z0, z1 (mm)
    tex_base: tuple[int, int]
    # table pad and table (mm): pad thickness, curvature radius of the pad top and table (concentric),
    # how deep the patient sinks into the pad at the midline, pad and table half widths, foam HU
    pad_thick: float = 45.0
    table_radius: float = 550.0
    pad_sink: float = 8.0
    pad_half_width: float = 160.0
    table_half_width: float = 175.0
    pad_hu: float = -850.0
    pad_pockets: np.ndarray = field(default_factory=lambda: np.zeros((0, 6)))  # x, depth, z0, z1, a, b
    back_gap: np.ndarray = field(default_factory=lambda: np.zeros(5))  # x, half width, half height, z0, z1
    stomach: np.ndarray = field(default_factory=lambda: np.zeros(5))   # z0, z1, a, b (mm), x offset (-1..1)
    dome_gas: np.ndarray = field(default_factory=lambda: np.zeros((0, 5)))  # u, v, z0, z1, k (left dome, lateral)
    junction: np.ndarray = field(default_factory=lambda: np.zeros(4))  # z0, z1 (z1 <= z0: none), x, half height

    # --- sizes along z -------------------------------------------------
    def body(self, t: float) -> tuple[float, float, float]:
        """Body ellipse (centre y, half width, half height) at fraction t."""
        a = self.A * (1.02 - 0.07 * t + 0.04 * smoothstep(0.75, 1.0, t))
        b = self.B * (0.86 + 0.14 * smoothstep(0.0, 0.35, t) + 0.05 * smoothstep(0.7, 1.0, t))
        return self.y_table - 0.5 - b, a, b

    def cavity(self, t: float) -> tuple[float, float, float]:
        """Thoracic / abdominal cavity ellipse (centre y, half width, half height)."""
        yc, a, b = self.body(t)
        ac = a - self.fat - self.muscle - 9.0
        bc = b - 0.8 * self.fat - self.muscle - 8.0
        return yc - 0.04 * bc, ac, bc

    def lung_open(self, t: float) -> float:
        """Lung size factor: 0 closed (neck, abdomen), 1 fully open."""
        if t <= self.t_apex or t >= self.t_bottom:
            return 0.0
        s = min((t - self.t_apex) / self.t_rise, 1.0) ** 0.5
        g = smoothstep(self.t_dome[0], self.t_bottom, t)
        return s * (1.0 - 0.35 * g)

    def lung_ellipse(self, t: float, side: int) -> tuple[float, float, float, float]:
        """Lung ellipse (cx, cy, ax, ay) in mm at fraction t; side 0 right, 1 left (full size)."""
        yc, ac, bc = self.cavity(t)
        s = self.lung_open(t)
        sign = -1.0 if side == 0 else 1.0
        cx = sign * (0.52 if side == 0 else 0.54) * ac
        ax = (0.56 if side == 0 else 0.52) * ac
        cy = yc + 0.04 * bc + 0.25 * (1.0 - s) * bc
        return cx, cy, ax * max(s, 1e-3), 1.05 * bc * max(s, 1e-3)

    def spine_y(self, t: float) -> tuple[float, float]:
        """Vertebral body centre y and radius (mm)."""
        yc, ac, bc = self.cavity(t)
        r = self.r_vb * (0.8 + 0.2 * min(t * 2.0, 1.0))
        return yc + bc - 1.5 * r - 6.0, r


def make_anatomy(seed: int, *, covid: bool, body_width_mm: float, scan_length_mm: float | None = None,
                 lesion_burden: float | None = None, fov_mm: float | None = None) -> Anatomy:
    """Draw one patient's anatomy from ``seed`` (sizes in mm; see ``Anatomy``)."""
    rng = np.random.default_rng(seed)
    length = float(scan_length_mm) if scan_length_mm is not None else float(rng.uniform(*SCAN_LENGTH_MM))
    A = body_width_mm / 2.0
    B = A * rng.uniform(0.60, 0.70)
    fov_r = fov_mm / 2.0 if fov_mm is not None else A / 0.85
    y_table = B + rng.uniform(-0.08, 0.04) * fov_r
    t_apex = rng.uniform(0.05, 0.10)
    t_bottom = rng.uniform(0.86, 0.93)
    t_dome_r = t_bottom - rng.uniform(0.14, 0.20)
    t_dome_l = t_dome_r + rng.uniform(0.01, 0.04)
    t_carina = t_apex + rng.uniform(0.20, 0.26)
    t_arch = t_carina - rng.uniform(0.04, 0.07)
    t_heart = (t_carina + rng.uniform(0.06, 0.10), t_dome_l + rng.uniform(0.03, 0.07))
    an = Anatomy(
        length=length, A=A, B=B, fat=rng.uniform(4.0, 22.0), muscle=rng.uniform(7.0, 13.0),
        y_table=y_table, t_apex=t_apex, t_rise=rng.uniform(0.12, 0.18), t_carina=t_carina, t_arch=t_arch,
        t_heart=t_heart, t_dome=(t_dome_r, t_dome_l), t_bottom=t_bottom,
        rib_z0=(t_apex * length) - rng.uniform(8.0, 16.0), rib_step=rng.uniform(19.0, 23.0),
        rib_drop=rng.uniform(70.0, 95.0), vert_period=rng.uniform(24.0, 28.0),
        vert_phase=rng.uniform(0.0, 28.0), r_vb=rng.uniform(15.0, 19.0),
        vessels=np.zeros((0, 8)), lesions=Lesions.empty(), gas=np.zeros((0, 6)), cables=np.zeros((0, 3)),
        tex_base=(int(rng.integers(0, 512)), int(rng.integers(0, 512))),
    )
    an.vessels = _vessel_tree(rng, an)
    an.gas = _gas(rng, an)
    ncab = int(rng.integers(1, 4)) if rng.random() < 0.4 else 0
    z0 = rng.uniform(0.0, 0.5, ncab) * length
    an.cables = np.stack([rng.uniform(1.7, 2.9, ncab) * rng.choice([-1.0, 1.0], ncab),
                          z0, z0 + rng.uniform(0.3, 0.8, ncab) * length], axis=1)
    _table_and_gas(np.random.default_rng([seed, 11]), an)
    if covid:
        burden = lesion_burden if lesion_burden is not None else float(rng.uniform(0.12, 0.45))
        an.lesions = _lesions(rng, an, burden)
    return an


def _vessel_tree(rng: np.random.Generator, an: Anatomy) -> np.ndarray:
    """Pulmonary vessel trees per lung: segments in lung-normalised (u, v) and z (mm).

    Three generations grow from the hilum: segmental trunks (radius 3-4 mm),
    branches toward random points of the lung (about 1 mm) and short twigs
    (0.3-0.6 mm), each a slightly bent polyline, so a slice shows large
    vessels near the hilum, small dots and branches in the periphery.
    """
    tm = 0.5 * (an.t_apex + an.t_bottom)
    z_lo = (an.t_apex + 0.02) * an.length
    z_hi = (an.t_bottom - 0.03) * an.length
    z_h = (an.t_carina + 0.06) * an.length
    out: list[np.ndarray] = []
    for side in (0, 1):
        _, _, ax, ay = an.lung_ellipse(tm, side)
        med = 1.0 if side == 0 else -1.0          # medial direction in u
        hil = np.array([med * 0.6 * ax, -0.05 * ay, z_h])

        def target(n: int, lo: float, hi: float) -> np.ndarray:
            rho = np.sqrt(rng.uniform(lo, hi, n))
            ang = rng.uniform(0.0, 2.0 * np.pi, n)
            return np.stack([rho * np.cos(ang) * ax, rho * np.sin(ang) * ay, rng.uniform(z_lo, z_hi, n)], axis=1)

        def path(p0: np.ndarray, p1: np.ndarray, r0: float, r1: float, parts: int) -> list[np.ndarray]:
            pts = [p0 + (p1 - p0) * f for f in np.linspace(0.0, 1.0, parts + 1)]
            bend = 0.12 * np.linalg.norm(p1 - p0)
            for i in range(1, parts):
                pts[i] = pts[i] + rng.normal(0.0, bend, 3)
            radii = np.linspace(r0, r1, parts + 1)
            return [np.concatenate([pts[i], pts[i + 1], [0.5 * (radii[i] + radii[i + 1])]]) for i in range(parts)]

        segs: list[np.ndarray] = []
        for t1 in target(7, 0.15, 0.35):
            trunk = path(hil, t1, rng.uniform(2.8, 4.0), 1.8, 3)
            segs += trunk
            stems = [s[3:6] for s in trunk] + [s[:3] for s in trunk]
            for _ in range(16):
                p0 = stems[int(rng.integers(len(stems)))]
                t2 = target(1, 0.45, 0.9)[0]
                t2 = p0 + (t2 - p0) * rng.uniform(0.4, 0.9)
                branch = path(p0, t2, rng.uniform(0.9, 1.5), 0.6, 2)
                segs += branch
                for b in branch:
                    for _ in range(1):
                        q0 = b[3:6]
                        out_dir = (q0 - hil) / (np.linalg.norm(q0 - hil) + 1e-6)
                        d = out_dir + rng.normal(0.0, 0.7, 3)
                        q1 = q0 + d / np.linalg.norm(d) * rng.uniform(5.0, 15.0)
                        segs += path(q0, q1, rng.uniform(0.4, 0.65), 0.3, 1)
        arr = np.array(segs)
        arr[:, [0, 1, 3, 4]] /= np.array([ax, ay, ax, ay])
        out.append(np.column_stack([np.full(len(arr), side), arr]))
    return np.concatenate(out)


def _table_and_gas(rng: np.random.Generator, an: Anatomy) -> None:
    """Table pad, air under the back, stomach bubble, dome bowel gas and the anterior junction.

    Drawn from their own generator, so the rest of the anatomy of a seed is unchanged.
    """
    L = an.length
    an.pad_thick = float(rng.uniform(30.0, 60.0))
    an.table_radius = float(rng.uniform(450.0, 650.0))
    an.pad_sink = float(rng.uniform(7.0, 12.0))
    an.pad_half_width = float(rng.uniform(0.95, 1.1) * an.A)
    an.table_half_width = float(rng.uniform(1.15, 1.3) * an.A)
    an.pad_hu = float(rng.uniform(-880.0, -820.0))
    n = int(rng.integers(3, 9))
    T = an.pad_thick
    z0 = rng.uniform(-0.2, 0.9, n) * L
    # below the part of the pad the patient presses in (and the air gap under the back), 3 mm of foam around
    depth = an.pad_sink + rng.uniform(0.45, 0.7, n) * (T - an.pad_sink)
    an.pad_pockets = np.stack([rng.uniform(-0.8, 0.8, n) * an.A, depth, z0, z0 + rng.uniform(20.0, 120.0, n),
                               rng.uniform(4.0, 12.0, n),
                               np.minimum(rng.uniform(2.0, 0.2 * T, n),
                                          np.minimum(depth - an.pad_sink - 10.0, T - depth - 3.0))], axis=1)
    g0 = rng.uniform(0.0, 0.2) * L
    an.back_gap = np.array([rng.uniform(-25.0, 25.0), rng.uniform(20.0, 45.0), rng.uniform(3.0, 7.0),
                            g0, g0 + rng.uniform(0.3, 0.6) * L])
    s0 = (an.t_dome[1] + rng.uniform(0.03, 0.05)) * L
    an.stomach = np.array([s0, s0 + rng.uniform(35.0, 70.0), rng.uniform(25.0, 45.0), rng.uniform(18.0, 32.0),
                           rng.uniform(-1.0, 1.0)])
    m = int(rng.integers(1, 4))
    d0 = (an.t_dome[1] + rng.uniform(0.04, 0.09, m)) * L
    an.dome_gas = np.stack([rng.uniform(0.15, 0.35, m), rng.uniform(0.0, 0.3, m), d0, d0 + rng.uniform(10.0, 30.0, m),
                            rng.uniform(0.12, 0.22, m)], axis=1)
    if rng.random() < 0.5:   # lungs meeting behind the sternum over a few slices
        j0 = (an.t_arch + rng.uniform(0.0, 0.03)) * L
        an.junction = np.array([j0, j0 + rng.uniform(15.0, 35.0), rng.uniform(-4.0, 4.0), rng.uniform(9.0, 14.0)])


def _gas(rng: np.random.Generator, an: Anatomy) -> np.ndarray:
    """Bowel gas pockets in the upper abdomen (lowest slices)."""
    n = int(rng.integers(1, 5))
    z0 = (an.t_bottom - 0.03 + rng.uniform(0.0, 0.08, n)) * an.length
    _, ac, bc = an.cavity(1.0)
    return np.stack([rng.uniform(-0.3, 0.7, n) * ac, rng.uniform(-0.75, 0.0, n) * bc, z0,
                     z0 + rng.uniform(10.0, 40.0, n), rng.uniform(5.0, 16.0, n), rng.uniform(4.0, 10.0, n)], axis=1)


def _lesions(rng: np.random.Generator, an: Anatomy, burden: float) -> Lesions:
    """Bilateral, mostly peripheral and posterior lesions that reach about ``burden`` of the lung z-extent."""
    z_lo = (an.t_apex + 0.06) * an.length
    z_hi = (an.t_bottom - 0.05) * an.length
    extent = z_hi - z_lo
    covered = np.zeros(256, bool)
    grid = np.linspace(an.t_apex * an.length, an.t_bottom * an.length, covered.size)
    rows: list[tuple] = []
    size = float(np.clip(burden / 0.25, 0.3, 1.0))   # light disease: smaller lesions
    first = 2 if burden >= 0.08 else 1               # bilateral unless the disease is very light
    n_main = 0
    while (covered.mean() < burden or n_main < first) and len(rows) < 60:
        side = n_main % 2 if n_main < 2 else int(rng.integers(0, 2))
        n_main += 1
        lat = -1.0 if side == 0 else 1.0
        if n_main == 1:   # the first lesion sits where there is always lung: mid-lung, posterolateral
            z = z_lo + extent * rng.uniform(0.4, 0.6)
            rz = max(rng.uniform(10.0, 32.0) * size, 12.0)
            ang, rho = rng.uniform(0.5, 1.2), rng.uniform(0.6, 0.85)
        else:             # lower lobes are hit more often; 0 rad = posterior
            z = z_lo + extent * rng.beta(1.6, 1.1)
            rz = rng.uniform(10.0, 32.0) * size
            ang, rho = rng.normal(0.0, 1.1), rng.uniform(0.5, 0.95)
        u = lat * abs(np.sin(ang)) * rho
        v = np.cos(ang) * rho
        rx, ry = rng.uniform(15.0, 48.0) * size ** 0.5, rng.uniform(12.0, 34.0) * size ** 0.5
        rot = np.arctan2(v, u) + np.pi / 2
        consolidation = rng.random() < 0.3
        if consolidation:
            value, vtex = rng.uniform(-150.0, -20.0), rng.uniform(15.0, 40.0)
        else:
            value, vtex = rng.uniform(-620.0, -420.0), rng.uniform(30.0, 70.0)
        oy, ox = rng.integers(0, 512, 2)
        rows.append((side, u, v, z, rx, ry, rz, rot, value, vtex, rng.uniform(0.25, 0.5), oy, ox))
        for _ in range(int(rng.integers(0, 4))):   # satellite patches make the opacity patchy
            du, dv = rng.normal(0.0, 0.12, 2)
            f = rng.uniform(0.3, 0.6)
            rows.append((side, u + du, v + dv, z + rng.normal(0.0, 0.5 * rz), rx * f, ry * f, rz * f,
                         rng.uniform(0.0, np.pi), value + rng.normal(0.0, 30.0), vtex, 0.4, oy + 97, ox + 31))
        if not consolidation and rng.random() < 0.25:   # consolidating core inside ground glass
            rows.append((side, u, v, z, rx * 0.45, ry * 0.45, rz * 0.5, rot, rng.uniform(-120.0, 0.0),
                         20.0, 0.3, oy, ox))
        for r in rows[-6:]:   # a slice shows a lesion where its cross-section is drawn (k > 0.3)
            covered |= np.abs(grid - r[3]) < 0.95 * r[6]
    arr = np.array(rows, dtype=np.float64)
    i = arr[:, [0, 11, 12]].astype(np.int64)
    return Lesions(i[:, 0], *[arr[:, k] for k in range(1, 11)], i[:, 1], i[:, 2])
