"""Synthetic chest CT series that look like COVID-CTset slices (raw uint16 = HU + 1024).

A series is painted slice by slice from a patient ``Anatomy`` (see
``_anatomy``/``_scene``): field of view, a wide curved table under a thick
foam pad (-880..-820 HU, textured, with air pockets, and air between the pad
and the back over part of the width), body wall, ribs, spine, mediastinum,
heart, trachea (up through the neck slices) and bronchi, two lungs with
vessels that open and close along z (in half the patients touching at the
anterior junction over a few slices), diaphragm domes with a stomach gas
bubble and bowel gas under the left one, more bowel gas below, cables, and
for COVID patients ground-glass and consolidation lesions. Kernel- and
thickness-dependent noise comes from a pre-generated bank read at random
offsets. The lung and lesion truth is returned with the pixels.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from ..constants import HU_OFFSET, RAW_DTYPE, SLICE_SHAPE
from . import _cpu, _reference
from ._anatomy import Anatomy, make_anatomy
from ._scene import Geometry, background_prims, slice_prims
from ._tissues import AIR, LUNG_L, LUNG_R

__all__ = ["KERNEL_NOISE_HU", "Phantom", "noise_sigma", "render_series", "warm_up"]

#: noise standard deviation (HU) of each reconstruction kernel at 5 mm thickness
KERNEL_NOISE_HU = {"B30s": 13.0, "B31s": 14.0, "B35s": 17.0, "B70s": 42.0, "B90s": 80.0}
#: kernels whose noise is fine-grained (sharp, lung kernels); the others are smooth
SHARP_KERNELS = ("B70s", "B90s")
#: largest raw value written (BitsStored 12)
RAW_MAX = 4095


class Phantom(NamedTuple):
    """One rendered series.

    raw: uint16 (z, y, x), HU + 1024, exactly 0 outside the circular field of view.
    lung: uint8 (z, y, x), 0 background, 1 right lung (image left), 2 left lung; lesions included.
    lesion: uint8 (z, y, x), 1 where a COVID lesion (ground glass or consolidation) is.
    """
    raw: np.ndarray
    lung: np.ndarray
    lesion: np.ndarray


def noise_sigma(kernel: str, thickness_mm: float) -> float:
    """Noise standard deviation (HU) of a kernel at a slice thickness (mm): sigma ~ 1 / sqrt(thickness)."""
    if kernel not in KERNEL_NOISE_HU:
        raise ValueError(f"kernel must be one of {sorted(KERNEL_NOISE_HU)}, got {kernel!r}")
    return KERNEL_NOISE_HU[kernel] * float(np.sqrt(5.0 / thickness_mm))


@functools.lru_cache(maxsize=4)
def _texture_bank(h: int, w: int) -> np.ndarray:
    """(2, 2h, 2w) float32 in [-1, 1]: channel 0 coarse (shapes), channel 1 fine (parenchyma).

    The coarse channel is smoothed at 1/8 resolution and interpolated up (same look, 20x cheaper).
    """
    rng = np.random.default_rng(20200407)
    k = min(h, w) / 512.0
    out = np.empty((2, 2 * h, 2 * w), np.float32)
    lo = rng.standard_normal((-(-2 * h // 8), -(-2 * w // 8)))
    coarse = ndimage.zoom(ndimage.gaussian_filter(lo, max(9.0 * k / 8.0, 0.5), mode="wrap"), 8, order=1,
                          mode="grid-wrap", grid_mode=True)[:2 * h, :2 * w]
    fine = ndimage.gaussian_filter(rng.standard_normal((2 * h, 2 * w)), max(1.6 * k, 0.6), mode="wrap", truncate=3.0)
    for c, f in enumerate((coarse, fine)):
        out[c] = np.clip(f / (2.5 * f.std()), -1.0, 1.0)
    return out


@functools.lru_cache(maxsize=4)
def _noise_bank(h: int, w: int, sharp: bool) -> np.ndarray:
    """(2h, 2w) float32 unit-variance noise: white for sharp kernels, smoothed for soft ones."""
    rng = np.random.default_rng(20200328 + int(sharp))
    n = rng.standard_normal((2 * h, 2 * w))
    if not sharp:
        n = ndimage.gaussian_filter(n, 0.9 * min(h, w) / 512.0 if min(h, w) >= 256 else 0.6, mode="wrap")
    return (n / n.std()).astype(np.float32)


def _fov(h: int, w: int) -> np.ndarray:
    yy, xx = np.ogrid[:h, :w]
    r = min(h, w) / 2.0
    return (yy - (h - 1) / 2.0) ** 2 + (xx - (w - 1) / 2.0) ** 2 <= r * r


def _check(n_slices: int, spacing_mm: float, thickness_mm: float, kernel: str, shape: tuple[int, int]) -> None:
    if not isinstance(n_slices, (int, np.integer)) or n_slices < 1:
        raise ValueError(f"n_slices must be a positive int, got {n_slices!r}")
    if not 0.2 <= spacing_mm <= 2.0:
        raise ValueError(f"spacing_mm must be in [0.2, 2.0], got {spacing_mm!r}")
    if not 0.5 <= thickness_mm <= 10.0:
        raise ValueError(f"thickness_mm must be in [0.5, 10], got {thickness_mm!r}")
    if kernel not in KERNEL_NOISE_HU:
        raise ValueError(f"kernel must be one of {sorted(KERNEL_NOISE_HU)}, got {kernel!r}")
    if len(shape) != 2 or min(shape) < 32 or max(shape) > 4096:
        raise ValueError(f"shape must be (y, x) with sides in 32..4096, got {shape!r}")


def render_series(*, n_slices: int, covid: bool, seed: int, spacing_mm: float = 0.7, thickness_mm: float = 5.0,
                  kernel: str = "B30s", shape: tuple[int, int] = SLICE_SHAPE, anatomy_seed: int | None = None,
                  scan_length_mm: float | None = None, body_width_mm: float | None = None,
                  lesion_burden: float | None = None, noise_scale: float = 1.0,
                  backend: str = "cpu", out: Phantom | None = None) -> Phantom:
    """Render one series of a synthetic patient.

    Parameters
    ----------
    n_slices : slices of the series, IM00001 (superior) first; spaced evenly over the scan.
    covid : draw COVID lesions.
    seed : seeds the noise (and the anatomy unless ``anatomy_seed`` is given).
    spacing_mm : pixel spacing (mm) of a 512-pixel-wide slice; other shapes keep the anatomy in view
        (mm per pixel = spacing_mm * 512 / min(shape)).
    thickness_mm : slice thickness (mm): partial volume of vessels and ribs, noise ~ 1 / sqrt(thickness).
    kernel : reconstruction kernel (``KERNEL_NOISE_HU``): noise level and grain.
    shape : (y, x) pixels of a slice.
    anatomy_seed : seeds the body; the three series of a patient share it.
    scan_length_mm : length (mm) of the scan; drawn from the anatomy seed when None.
    body_width_mm : body width (mm); 78 to 92 % of the 512-pixel field of view when None.
    lesion_burden : fraction (0..1) of the lung z-extent that lesions cover (COVID only); drawn when None.
    noise_scale : multiplies the noise (0 gives the noise-free phantom).
    backend : "cpu" (numba) or "reference" (numpy; slow, the specification).
    out : arrays to render into (raw uint16, lung and lesion uint8, each C-contiguous (n_slices, y, x));
        saves allocating and first-touching fresh memory for every series.

    Returns
    -------
    Phantom
        raw uint16 (z, y, x) = HU + 1024 clipped to 0..4095, exactly 0 outside the field of view;
        lung uint8 (1 right, 2 left, lesions included); lesion uint8.

    Examples
    --------
    >>> ph = render_series(n_slices=8, covid=True, seed=1, shape=(64, 64))
    >>> ph.raw.shape, ph.raw.dtype.name, int(ph.raw[:, 0, 0].max())
    ((8, 64, 64), 'uint16', 0)
    """
    shape = tuple(int(s) for s in shape)
    _check(n_slices, spacing_mm, thickness_mm, kernel, shape)
    if backend not in ("cpu", "reference"):
        raise ValueError(f"backend must be 'cpu' or 'reference', got {backend!r}")
    if noise_scale < 0:
        raise ValueError(f"noise_scale must be >= 0, got {noise_scale!r}")
    if int(seed) < 0 or (anatomy_seed is not None and int(anatomy_seed) < 0):
        raise ValueError(f"seeds must be >= 0, got seed={seed!r}, anatomy_seed={anatomy_seed!r}")
    h, w = shape
    aseed = seed if anatomy_seed is None else anatomy_seed
    fov_mm = 512.0 * spacing_mm
    if body_width_mm is None:
        body_width_mm = fov_mm * float(np.random.default_rng([aseed, 7]).uniform(0.78, 0.92))
    an = dataclasses.replace(_anatomy(aseed, covid, float(body_width_mm), scan_length_mm, lesion_burden, fov_mm))
    _close_ends(an, n_slices)
    geom = Geometry(h, w, spacing_mm * 512.0 / min(h, w))
    if out is None:
        out = Phantom(np.empty((n_slices, h, w), RAW_DTYPE), np.empty((n_slices, h, w), np.uint8),
                      np.empty((n_slices, h, w), np.uint8))
    else:
        for a, dt in zip(out, (RAW_DTYPE, np.uint8, np.uint8)):
            if a.shape != (n_slices, h, w) or a.dtype != dt or not a.flags.c_contiguous:
                raise ValueError(f"out arrays must be C-contiguous {(n_slices, h, w)} of {dt}, got {a.dtype} {a.shape}")
    return _render(an, geom, n_slices, thickness_mm, noise_sigma(kernel, thickness_mm) * noise_scale,
                   kernel in SHARP_KERNELS, np.random.default_rng([seed, 1]), backend, out)


@functools.lru_cache(maxsize=4)
def _anatomy(seed: int, covid: bool, body_width_mm: float, scan_length_mm: float | None,
             lesion_burden: float | None, fov_mm: float) -> Anatomy:
    """Patient anatomy, kept for the next series of the same patient (treat as read-only)."""
    return make_anatomy(seed, covid=covid, body_width_mm=body_width_mm, scan_length_mm=scan_length_mm,
                        lesion_burden=lesion_burden, fov_mm=fov_mm)


def warm_up(shape: tuple[int, int] = SLICE_SHAPE) -> None:
    """Compile the kernels and build the texture and noise banks of ``shape`` in this process
    (worker processes forked afterwards inherit them)."""
    h, w = (int(s) for s in shape)
    _texture_bank(h, w)
    _noise_bank(h, w, True)
    _noise_bank(h, w, False)
    render_series(n_slices=2, covid=True, seed=0, shape=(64, 64))


def _close_ends(an: Anatomy, n: int) -> None:
    """Keep the first and last slice of a short series free of lung (neck and liver ends)."""
    an.t_apex = max(an.t_apex, 1.0 / n)
    an.t_bottom = min(an.t_bottom, 1.0 - 1.0 / n)
    an.t_dome = (min(an.t_dome[0], an.t_bottom - 0.1), min(an.t_dome[1], an.t_bottom - 0.08))


def _render(an: Anatomy, geom: Geometry, n: int, thickness: float, sigma: float, sharp: bool,
            rng: np.random.Generator, backend: str, out: Phantom) -> Phantom:
    h, w = geom.h, geom.w
    impl = _cpu if backend == "cpu" else _reference
    tex = _texture_bank(h, w)
    noise = _noise_bank(h, w, sharp)
    fov = _fov(h, w)
    bg_hu = np.full((h, w), -1000.0, np.float32)
    bg_lab = np.full((h, w), AIR, np.uint8)
    impl.paint(bg_hu, bg_lab, np.zeros((h, w), np.uint8), background_prims(an, geom), tex)
    raw, lung, lesion = out
    lesion[...] = 0
    hu = bg_hu.copy()
    lab = bg_lab.copy()
    offs = rng.integers(0, [h, w], size=(n, 2))
    step = an.length / n
    for k in range(n):
        zc = (k + 0.5) * step
        prims = slice_prims(an, geom, zc - thickness / 2.0, zc + thickness / 2.0)
        impl.paint(hu, lab, lesion[k], prims, tex)
        impl.finish(hu, lab, lesion[k], fov, noise, float(sigma), int(offs[k, 0]), int(offs[k, 1]),
                    HU_OFFSET + 0.5, LUNG_R, LUNG_L, RAW_MAX, raw[k], lung[k], bg_hu, bg_lab)
    return Phantom(raw, lung, lesion)

