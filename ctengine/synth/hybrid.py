"""COVID-like series made from a real chest CT: lesions with exact truth inserted into real lungs.

``insert_lesions`` paints ground-glass and consolidation lesions, drawn from
the phantom's lesion model (sizes, HU, texture amplitude, boundary
irregularity), into the lungs of a real HU volume: bilateral, centred within
a few mm of the pleura (so many touch it), posterior and lower lobes more
often, clipped to the lungs. A lesion's HU is its mean plus a smooth texture
plus the base scan's own high-pass residual, so it carries the base scan's
noise. ``read_base`` reads a base scan and ``to_slice_shape`` resamples it
in-plane; :mod:`ctengine.synth.hybrid_cohort` writes COVID-CTset-layout
cohorts from one or more base scans with the exact lesion masks.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..constants import SLICE_SHAPE

__all__ = ["HybridLesions", "insert_lesions", "read_base", "to_slice_shape"]

#: HU below which a base voxel is outside the field of view (stored as raw 0)
OUTSIDE_HU = -2000.0


@dataclass(frozen=True)
class HybridLesions:
    """A lesioned volume: HU (float32, z, y, x), lesion truth (bool) and each lesion's mean HU and kind."""

    hu: np.ndarray
    lesion: np.ndarray
    values_hu: tuple[float, ...]
    kinds: tuple[str, ...]


def insert_lesions(hu: np.ndarray, lung: np.ndarray, spacing: tuple[float, float, float], *, seed: int,
                   burden: float = 0.35, max_lesions: int = 12) -> HybridLesions:
    """Paint lesions into the lungs of a real HU volume.

    Parameters
    ----------
    hu : (z, y, x) array
        The base scan in HU, store orientation (superior slice first).
    lung : (z, y, x) array
        Lung labels of the base scan (1 right, 2 left; any value > 0 is lung).
    spacing : (float, float, float)
        Voxel size (z, y, x) in mm.
    seed : int
        Seeds every lesion: the same arguments give the same volume.
    burden : float
        Fraction of the lung slices a lesion should reach (0..1).
    max_lesions : int
        Most lesions painted.

    Returns
    -------
    HybridLesions
        Voxels outside the lungs keep their HU exactly; lesion truth is inside the lungs only.
    """
    rng = np.random.default_rng(seed)
    lungs = np.asarray(lung) > 0
    if not lungs.any():
        raise ValueError("the base scan has no lung voxels: no place for lesions")
    sz, sy, sx = (float(s) for s in spacing)
    depth = ndimage.distance_transform_edt(lungs, sampling=(sz, sy, sx))  # mm to the pleura
    residual = hu - ndimage.gaussian_filter(hu.astype(np.float32), (0, 1.5, 1.5))  # the base scan's noise
    out = hu.astype(np.float32, copy=True)
    truth = np.zeros(lungs.shape, bool)
    z_lungs = np.flatnonzero(lungs.any(axis=(1, 2)))
    covered = np.zeros(lungs.shape[0], bool)
    values, kinds = [], []
    centres = {side: _centre_candidates(np.asarray(lung) == side, depth, z_lungs, lungs) for side in (1, 2)}
    for k in range(max_lesions):
        if k >= 2 and covered[z_lungs].mean() >= burden:
            break
        side = k % 2 + 1 if k < 2 else int(rng.integers(1, 3))  # bilateral first
        (zz, yy, xx), p = centres[side]
        i = rng.choice(len(zz), p=p)
        centre = np.array([zz[i], yy[i], xx[i]], dtype=np.float64)
        consolidation = rng.random() < 0.3
        value = rng.uniform(-150.0, -20.0) if consolidation else rng.uniform(-620.0, -420.0)
        vtex = rng.uniform(15.0, 40.0) if consolidation else rng.uniform(30.0, 70.0)
        radii_mm = np.array([rng.uniform(10.0, 32.0), rng.uniform(12.0, 34.0), rng.uniform(15.0, 48.0)])
        weightmap, box = _ellipsoid_weight(centre, radii_mm / (sz, sy, sx), lungs.shape, rng,
                                           irregularity=rng.uniform(0.25, 0.5))
        inside = lungs[box]
        w = weightmap * inside
        if not (w > 0.5).any():
            continue
        texture = ndimage.gaussian_filter(rng.normal(size=w.shape), (0.5, 3.0, 3.0))
        texture *= vtex / max(float(texture.std()), 1e-6)
        lesion_hu = value + texture + residual[box]
        out[box] = (1.0 - w) * out[box] + w * lesion_hu
        truth[box] |= w >= 0.5
        covered[box[0]] |= (w >= 0.5).any(axis=(1, 2))
        values.append(float(value))
        kinds.append("consolidation" if consolidation else "ground glass")
    return HybridLesions(out, truth, tuple(values), tuple(kinds))


def _centre_candidates(side: np.ndarray, depth: np.ndarray, z_lungs: np.ndarray,
                       lungs: np.ndarray) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """Voxels of one lung 2 to 15 mm from the pleura (any lung voxel if none) and their probabilities as
    lesion centres: posterior and lower voxels more likely."""
    candidates = side & (depth > 2.0) & (depth < 15.0)
    zz, yy, xx = np.nonzero(candidates if candidates.any() else lungs)
    weight = 1.0 + 2.0 * (yy / lungs.shape[1]) + (zz - z_lungs[0]) / max(np.ptp(z_lungs), 1)
    return (zz, yy, xx), weight / weight.sum()


def _ellipsoid_weight(centre: np.ndarray, radii_px: np.ndarray, shape: tuple[int, ...],
                      rng: np.random.Generator, *, irregularity: float) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Weights 1 inside an irregular ellipsoid, 0 outside, a one-tenth soft rim; and its bounding box."""
    lo = np.maximum(np.floor(centre - 1.3 * radii_px).astype(int), 0)
    hi = np.minimum(np.ceil(centre + 1.3 * radii_px).astype(int) + 1, shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    grid = np.meshgrid(*(np.arange(a, b) for a, b in zip(lo, hi)), indexing="ij")
    r = np.sqrt(sum(((g - c) / rad) ** 2 for g, c, rad in zip(grid, centre, radii_px)))
    bumps = ndimage.gaussian_filter(rng.normal(size=r.shape), (1.0, 4.0, 4.0))
    r = r * (1.0 + irregularity * 0.4 * bumps / max(float(bumps.std()), 1e-6))
    return np.clip((1.0 - r) / 0.1, 0.0, 1.0), box


def read_base(path: str | os.PathLike) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A base scan in HU (float32, store orientation) and its (z, y, x) spacing in mm: NIfTI, NRRD or a DICOM
    folder (one series)."""
    from .. import volumes

    path = Path(path)
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        vol = volumes.read_nifti(path)
    elif name.endswith((".nrrd", ".nhdr")):
        vol = volumes.read_nrrd(path)
    elif path.is_dir():
        return _read_dicom_folder(path)
    else:
        raise ValueError(f"{path}: a base scan is a NIfTI or NRRD file or a DICOM folder")
    return vol.data.astype(np.float32), vol.spacing


def _read_dicom_folder(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    import pydicom

    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in (".dcm", ""))
    slices = [pydicom.dcmread(p) for p in files]
    slices = [d for d in slices if getattr(d, "Modality", "") == "CT" and hasattr(d, "ImagePositionPatient")]
    if len(slices) < 2:
        raise ValueError(f"{path}: no CT series of two or more slices")
    slices.sort(key=lambda d: -float(d.ImagePositionPatient[2]))  # superior first
    hu = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in slices])
    dz = abs(float(slices[0].ImagePositionPatient[2]) - float(slices[1].ImagePositionPatient[2]))
    sy, sx = (float(v) for v in slices[0].PixelSpacing)
    return hu.astype(np.float32), (dz, sy, sx)


def to_slice_shape(hu: np.ndarray, spacing: tuple[float, float, float],
                   shape: tuple[int, int] = SLICE_SHAPE) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Resample in-plane (linear) to ``shape``; the new (z, y, x) spacing in mm."""
    fy, fx = shape[0] / hu.shape[1], shape[1] / hu.shape[2]
    out = ndimage.zoom(hu, (1.0, fy, fx), order=1, grid_mode=True, mode="nearest")
    return out.astype(np.float32), (spacing[0], spacing[1] / fy, spacing[2] / fx)
