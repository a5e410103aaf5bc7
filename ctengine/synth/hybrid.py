"""COVID-like series made from a real chest CT: lesions with exact truth inserted into real lungs.

``insert_lesions`` paints ground-glass and consolidation lesions, drawn from
the phantom's lesion model (sizes, HU, texture amplitude, boundary
irregularity), into the lungs of a real HU volume: bilateral, centred within
a few mm of the pleura (so many touch it), posterior and lower lobes more
often, clipped to the lungs. A lesion's HU is its mean plus a smooth texture
plus the base scan's own high-pass residual, so it carries the base scan's
noise. ``write_hybrid`` writes COVID-CTset-layout patients from one base
volume (512 x 512, raw = HU + 1024, 0 outside the field of view, three
series of different thickness by averaging 1, 2 or 3 base slices along z)
with the exact lesion masks, and the lung masks of the base scan, in
``truth.zarr``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from ..constants import SLICE_SHAPE
from ..volumes import hu_to_raw
from ._io import write_group_json, write_mask_array, write_tiff

__all__ = ["HybridLesions", "insert_lesions", "read_base", "write_hybrid"]

#: HU below which a base voxel is outside the field of view (stored as raw 0)
OUTSIDE_HU = -2000.0
#: the three series of a hybrid patient: (name, base slices averaged per slice, kernel); thickness = n x base spacing
SERIES = (("SR_2", 2, "B70s"), ("SR_3", 1, "B35s"), ("SR_4", 3, "B70s"))


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


def thick_slices(volume: np.ndarray, n: int, *, reduce: str = "mean") -> np.ndarray:
    """Slabs of ``n`` consecutive slices: their mean (HU) or a more-than-half vote (masks)."""
    slabs = len(volume) // n
    blocks = volume[: slabs * n].reshape(slabs, n, *volume.shape[1:])
    if reduce == "mean":
        return blocks.mean(axis=1, dtype=np.float64)
    return blocks.mean(axis=1) > 0.5 if n > 1 else blocks[:, 0].astype(bool)


def _thick_labels(labels: np.ndarray, n: int) -> np.ndarray:
    """Lung labels (1 right, 2 left) of slabs of ``n`` slices: a label where over half the slab has it."""
    right, left = (thick_slices(labels == k, n, reduce="vote") for k in (1, 2))
    return np.where(right, 1, np.where(left, 2, 0)).astype(np.uint8)


def write_hybrid(base: str | os.PathLike, out: str | os.PathLike, *, patients: int = 2, seed: int = 0,
                 covid_fraction: float = 0.5, burden: float = 0.35,
                 shape: tuple[int, int] = SLICE_SHAPE) -> pd.DataFrame:
    """Write COVID-CTset-layout patients made from one real base scan; return one row per patient.

    Every patient gets the base anatomy; ``covid_fraction`` of them (at least one when > 0) get lesions
    (seeded per patient, so severities differ). Layout as ``write_cohort``: ``COVID-CTset/<group>/
    <patientN>/<SR_k>/IMnnnnn.tif``, ``Patient_details.csv``, ``Patients_metadata.csv`` and
    ``truth.zarr/<patient>/<series>/{lung,lesion}``.
    """
    from ..kernels import lung_mask

    hu, spacing = read_base(base)
    hu, spacing = to_slice_shape(hu, spacing, shape)
    outside = hu <= OUTSIDE_HU
    raw = hu_to_raw(hu, outside_hu=OUTSIDE_HU)
    lung = lung_mask(raw, spacing=spacing[1:])
    out = Path(out)
    n_covid = int(np.ceil(covid_fraction * patients)) if covid_fraction > 0 else 0
    rows, details, meta = [], [], []
    write_group_json(out / "truth.zarr", {"ctengine": {"synthetic_truth": True, "seed": seed, "base": str(base)}})
    for p in range(patients):
        pid, covid = f"patient{p + 1}", p < n_covid
        if covid:
            painted = insert_lesions(hu, lung, spacing, seed=seed * 1000 + p, burden=burden * (0.5 + p / patients))
            vol, lesion = painted.hu, painted.lesion
        else:
            vol, lesion = hu, np.zeros(hu.shape, bool)
        group = "covid1" if covid else "normal1"
        write_group_json(out / "truth.zarr" / pid, {"covid": covid, "groups": [group], "base": str(base)})
        for series, n, kernel in SERIES:
            thickness = n * spacing[0]
            slab_hu = thick_slices(np.where(outside, -3024.0, vol), n)
            slab_raw = hu_to_raw(slab_hu, outside_hu=OUTSIDE_HU)
            folder = out / "COVID-CTset" / group / pid / series
            folder.mkdir(parents=True, exist_ok=True)
            for z, image in enumerate(slab_raw, 1):
                write_tiff(folder / f"IM{z:05d}.tif", image)
            truth = out / "truth.zarr" / pid / series
            write_group_json(truth, {"thickness_mm": thickness, "spacing_mm": list(spacing[1:])})
            write_mask_array(truth / "lung", _thick_labels(lung, n), attributes={
                "values": {"0": "background", "1": "right lung", "2": "left lung"},
                "source": "ctengine lung_mask of the base scan (no hand-drawn truth)"})
            write_mask_array(truth / "lesion", thick_slices(lesion, n, reduce="vote")
                             .astype(np.uint8), attributes={"values": {"0": "none", "1": "inserted lesion"}})
        details.append({"Patient ID": pid, "SEX": "", "AGE": "", "Date": "",
                        "COVID-19 Infection": "Positive" if covid else "Negative",
                        **{f"{s} Folder thickness(mm)": n * spacing[0] for s, n, _ in SERIES}})
        meta.append({"Patient ID": pid, **{f"{s} {k}": v for s, n, kernel in SERIES for k, v in (
            ("PixelSpacing", f"[{spacing[1]:.6f}, {spacing[2]:.6f}]"), ("SliceThickness", n * spacing[0]),
            ("ConvolutionKernel", kernel), ("RescaleIntercept", -1024), ("RescaleSlope", 1),
            ("Rows", shape[0]), ("Columns", shape[1]))}})
        rows.append({"patient": pid, "covid": covid, "lesion_voxels": int(lesion.sum()),
                     "lung_voxels": int((lung > 0).sum())})
    pd.DataFrame(details).to_csv(out / "Patient_details.csv", index=False)
    pd.DataFrame(meta).to_csv(out / "Patients_metadata.csv", index=False)
    return pd.DataFrame(rows)
