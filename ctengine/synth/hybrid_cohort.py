"""A hybrid cohort: COVID-CTset-layout patients made from real chest CTs, lesions inserted in half of them.

``write_hybrid_cohort`` turns each base scan (NIfTI, NRRD or a DICOM folder)
into ``patients_per_base`` patients. Each patient is the base anatomy in its
own small pose (in-plane rotation, scale and shift, a few slices cut at
either end) with ctengine's lung mask of that volume; the first half of a
base's patients get lesions (:func:`ctengine.synth.hybrid.insert_lesions`)
at a severity taken in turn, over the whole cohort, from ``severities``.
Patients are numbered across bases (those of the first base first). The
cohort is laid out, labelled and split into folds as ``write_cohort`` does
for phantoms::

    COVID-CTset/<group>/<patientN>/<SR_k>/IMnnnnn.tif   raw = HU + 1024, 0 outside the field of view
    Patient_details.csv, Patients_metadata.csv
    CSV/all.csv, CSV/{train,validation,test}{1..5}.csv   labelled: a COVID patient's slices showing a lesion,
                                                         a normal patient's slices with open lungs
    truth.zarr/<patient>/<series>/{lung,lesion}          the exact lesion truth, the lung mask
    .ctengine-synth.json                                 what was written

Unlike the real dataset (and ``write_cohort``), a normal patient's slices are labelled in every series, not
in SR_2 only: with COVID labels in every series, SR_2-only normal labels let a classifier tell the classes
apart by slice thickness, and with half the patients COVID the folds' image balance would put every normal
patient in training and none in test.

The three series average 2, 1 and 3 base slices (``SERIES``): 5, 2.5 and
7.5 mm on LIDC-IDRI-0001, 20, 10 and 30 mm on 3D Slicer's CTChest.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd
from scipy import ndimage

from ..constants import GROUPS_COVID, GROUPS_NORMAL, SLICE_SHAPE
from ..volumes import hu_to_raw
from ._io import write_group_json, write_mask_array, write_tiff
from .cohort import CohortPlan, PatientPlan, SeriesPlan
from .hybrid import OUTSIDE_HU, insert_lesions, read_base, to_slice_shape
from .write import MARKER, TREE, _labels, _prepare, _write_tables

__all__ = ["POSE", "SERIES", "SEVERITIES", "load_base", "thick_slices", "write_hybrid_cohort"]

#: the three series of a hybrid patient: (name, base slices averaged per slice, kernel); thickness = n x base spacing
SERIES = (("SR_2", 2, "B70s"), ("SR_3", 1, "B35s"), ("SR_4", 3, "B70s"))
#: lesion severities: name -> burden, the share of the lung slices the lesions reach (0..1)
SEVERITIES = {"faint": 0.1, "medium": 0.3, "heavy": 0.6}
#: largest change of a patient's pose: in-plane rotation (degrees), scale (share), shift (share of the slice
#: side), slices cut at each end (share of the scan)
POSE = {"rotation_deg": 5.0, "scale": 0.06, "shift": 0.03, "cut": 0.08}
#: per-series metadata every hybrid series shares (as in the real Patients_metadata.csv)
_FIXED_META = {"BitsStored": 12, "RescaleIntercept": -1024, "RescaleSlope": 1, "WindowCenter": "[-600, 50]",
               "WindowCenterWidthExplanation": "['WINDOW1', 'WINDOW2']", "WindowWidth": "[1200, 350]"}


def load_base(path: str | os.PathLike, *, shape: tuple[int, int] = SLICE_SHAPE,
              max_slices: int | None = None) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A base scan in HU (float32, store orientation), resampled in-plane to ``shape`` and thinned along z.

    Parameters
    ----------
    path : str or path
        NIfTI or NRRD file, or a DICOM folder of one series.
    shape : (int, int)
        (y, x) of a slice in pixels.
    max_slices : int, optional
        Keep every k-th slice, k = ceil(slices / max_slices), when the scan has more (for small tests).

    Returns
    -------
    (numpy.ndarray, (float, float, float))
        The volume (z, y, x) in HU and its spacing (z, y, x) in mm.
    """
    hu, spacing = read_base(path)
    step = math.ceil(len(hu) / max_slices) if max_slices else 1
    hu, spacing = hu[::step], (spacing[0] * step, spacing[1], spacing[2])
    return to_slice_shape(hu, spacing, shape)


def thick_slices(volume: np.ndarray, n: int, *, reduce: str = "mean") -> np.ndarray:
    """Slabs of ``n`` consecutive slices: their mean (HU) or a more-than-half vote (masks).

    Parameters
    ----------
    volume : (z, y, x) array
        HU (``reduce="mean"``) or a mask (``reduce="vote"``); trailing slices short of a slab are dropped.
    n : int
        Slices per slab.
    reduce : {"mean", "vote"}

    Returns
    -------
    numpy.ndarray
        (z // n, y, x): float64 means in the volume's units, or bool votes.

    Examples
    --------
    >>> v = np.array([-1000.0, -800.0, 40.0, 60.0, 0.0]).reshape(5, 1, 1)
    >>> thick_slices(v, 2).ravel().tolist()
    [-900.0, 50.0]
    >>> thick_slices(v > 0, 2, reduce="vote").ravel().tolist()
    [False, True]
    """
    slabs = len(volume) // n
    blocks = volume[: slabs * n].reshape(slabs, n, *volume.shape[1:])
    if reduce == "mean":
        return blocks.mean(axis=1, dtype=np.float64)
    return blocks.mean(axis=1) > 0.5 if n > 1 else blocks[:, 0].astype(bool)


def _thick_labels(labels: np.ndarray, n: int) -> np.ndarray:
    """Lung labels (1 right, 2 left) of slabs of ``n`` slices: a label where over half the slab has it."""
    right, left = (thick_slices(labels == k, n, reduce="vote") for k in (1, 2))
    return np.where(right, 1, np.where(left, 2, 0)).astype(np.uint8)


def _posed(hu: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """The base volume in a random pose (``POSE``): cut at both ends, rotated, scaled and shifted in-plane."""
    angle = rng.uniform(-1.0, 1.0) * POSE["rotation_deg"]
    scale = 1.0 + rng.uniform(-1.0, 1.0) * POSE["scale"]
    shift = rng.uniform(-1.0, 1.0, 2) * POSE["shift"] * np.array(hu.shape[1:])
    top, bottom = (int(c) for c in rng.integers(0, int(POSE["cut"] * len(hu)) + 1, size=2))
    hu = hu[top: len(hu) - bottom]
    c, s = np.cos(np.deg2rad(angle)) / scale, np.sin(np.deg2rad(angle)) / scale
    matrix = np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])   # output -> input coordinates
    centre = (np.array(hu.shape, float) - 1.0) / 2.0
    offset = centre - matrix @ centre - np.array([0.0, *shift])
    posed = ndimage.affine_transform(hu, matrix, offset=offset, order=1, mode="nearest", output=np.float32)
    return posed, {"rotation_deg": angle, "scale": scale, "shift_px": [float(v) for v in shift],
                   "cut_slices": [top, bottom]}


def _check(bases: list[Path], patients_per_base: int, severities: Mapping[str, float],
           max_base_slices: int | None) -> None:
    if not bases:
        raise ValueError("give at least one base scan")
    if int(patients_per_base) != patients_per_base or patients_per_base < 1:
        raise ValueError(f"patients_per_base must be an int >= 1, got {patients_per_base!r}")
    if not severities or not all(0.0 < float(b) <= 1.0 for b in severities.values()):
        raise ValueError(f"severities must map names to burdens in (0, 1], got {dict(severities)!r}")
    if max_base_slices is not None and max_base_slices < 8:
        raise ValueError(f"max_base_slices must be >= 8, got {max_base_slices!r}")


def write_hybrid_cohort(bases: Iterable[str | os.PathLike] | str | os.PathLike, out: str | os.PathLike, *,
                        patients_per_base: int = 4, seed: int = 0, severities: Mapping[str, float] = SEVERITIES,
                        shape: tuple[int, int] = SLICE_SHAPE, max_base_slices: int | None = None) -> pd.DataFrame:
    """Write a COVID-CTset-layout cohort made from real base scans (see the module docstring).

    Parameters
    ----------
    bases : path or paths
        Real chest CTs in HU: NIfTI or NRRD files, DICOM folders (one series each).
    out : str or path
        Folder to write (created; a previous ``ctengine synth`` output in it is replaced).
    patients_per_base : int
        Patients made from each base; the first ceil(half) of them get lesions.
    seed : int
        Seeds poses, lesions, labels and folds: the same arguments give the same files.
    severities : mapping of str to float
        Severity name -> lesion burden (share of the lung slices reached, in (0, 1]); COVID patients take
        them in turn, in patient order.
    shape : (int, int)
        (y, x) of a slice in pixels (512 x 512 as the dataset; smaller for tests).
    max_base_slices : int, optional
        Thin a base to at most this many slices (every k-th), for small tests.

    Returns
    -------
    pandas.DataFrame
        One row per patient: ``patient``, ``base`` (file or folder name), ``covid``, ``severity``
        ("" for normal), ``burden``, ``lesions``, ``lesion_voxels``, ``lung_voxels`` (base-slice voxels),
        ``slices`` (base slices kept) and ``labelled`` (rows of ``CSV/all.csv``).

    Raises
    ------
    ValueError
        No base, ``patients_per_base`` < 1, a burden outside (0, 1], ``max_base_slices`` < 8, or a base
        without lungs.
    FileExistsError
        When ``out`` holds dataset files this generator did not write.
    """
    from ..kernels import lung_mask

    bases = [Path(bases)] if isinstance(bases, (str, os.PathLike)) else [Path(b) for b in bases]
    _check(bases, patients_per_base, severities, max_base_slices)
    out = Path(out)
    _prepare(out)
    arguments = {"bases": [str(b) for b in bases], "patients_per_base": patients_per_base, "seed": seed,
                 "severities": dict(severities), "shape": list(shape), "max_base_slices": max_base_slices}
    (out / MARKER).write_text(json.dumps({"arguments": arguments, "complete": False}, indent=2))
    names, plans, stats, rows = list(severities), [], {}, []
    write_group_json(out / "truth.zarr", {"ctengine": {"synthetic_truth": True, "seed": seed, **arguments}})
    for b, base in enumerate(bases):
        hu, spacing = load_base(base, shape=shape, max_slices=max_base_slices)
        for j in range(patients_per_base):
            rng = np.random.default_rng([seed, b, j])
            pid, covid = f"patient{len(plans) + 1}", j < math.ceil(patients_per_base / 2)
            vol, pose = _posed(hu, rng)
            lung = lung_mask(hu_to_raw(vol, outside_hu=OUTSIDE_HU), spacing=spacing[1:])
            severity = names[sum(r["covid"] for r in rows) % len(names)] if covid else ""
            kinds: tuple[str, ...] = ()
            if covid:
                painted = insert_lesions(vol, lung, spacing, seed=int(rng.integers(2**31)),
                                         burden=float(severities[severity]))
                vol, lesion, kinds = painted.hu, painted.lesion, painted.kinds
            else:
                lesion = np.zeros(vol.shape, bool)
            group = GROUPS_COVID[0] if covid else GROUPS_NORMAL[0]
            write_group_json(out / "truth.zarr" / pid, {"covid": covid, "groups": [group], "base": str(base),
                                                         "severity": severity, "lesions": list(kinds), "pose": pose})
            plan = _write_patient(out, pid, group, covid, vol, lung, lesion, spacing,
                                  seed=int(rng.integers(2**31)), base_index=b, stats=stats)
            plans.append(plan)
            rows.append({"patient": pid, "base": base.name, "covid": covid, "severity": severity,
                         "burden": float(severities[severity]) if covid else 0.0, "lesions": len(kinds),
                         "lesion_voxels": int(lesion.sum()), "lung_voxels": int((lung > 0).sum()),
                         "slices": len(vol)})
    cohort = CohortPlan(plans, seed, tuple(shape))
    labels = _labels(cohort, stats, normal_series=tuple(name for name, _, _ in SERIES))
    _write_tables(out, cohort, labels)
    table = pd.DataFrame(rows)
    table["labelled"] = table["patient"].map(labels.groupby("patient").size()).fillna(0).astype(int)
    (out / MARKER).write_text(json.dumps({"arguments": arguments, "complete": True,
                                          "patients": table.to_dict("records")}, indent=2))
    return table


def _write_patient(out: Path, pid: str, group: str, covid: bool, vol: np.ndarray, lung: np.ndarray,
                   lesion: np.ndarray, spacing: tuple[float, float, float], *, seed: int, base_index: int,
                   stats: dict) -> PatientPlan:
    """Write one patient's three series and their truth; its plan (details, metadata) and, into ``stats``,
    the lung and lesion pixels per slice of each series."""
    outside = vol <= OUTSIDE_HU
    shape = vol.shape[1:]
    thickness = {s: round(n * spacing[0], 3) for s, n, _ in SERIES}   # mm
    plan = PatientPlan(pid, covid, details={
        "Patient ID": pid, "SEX": "", "AGE": "", "Date": "", "COVID-19 Infection": "Positive" if covid else "Negative",
        **{f"{s} Folder thickness(mm)": thickness[s] for s, _, _ in SERIES}}, metadata={"Patient ID": pid})
    for k, (series, n, kernel) in enumerate(SERIES):
        slab_raw = hu_to_raw(thick_slices(np.where(outside, -3024.0, vol), n), outside_hu=OUTSIDE_HU)
        folder = out / TREE / group / pid / series
        folder.mkdir(parents=True, exist_ok=True)
        for z, image in enumerate(slab_raw, 1):
            write_tiff(folder / f"IM{z:05d}.tif", image)
        lung_slab = _thick_labels(lung, n)
        lesion_slab = thick_slices(lesion, n, reduce="vote") & (lung_slab > 0)
        truth = out / "truth.zarr" / pid / series
        write_group_json(truth, {"thickness_mm": thickness[series], "spacing_mm": list(spacing[1:]), "kernel": kernel})
        write_mask_array(truth / "lung", lung_slab, attributes={
            "values": {"0": "background", "1": "right lung", "2": "left lung"},
            "source": "ctengine lung_mask of the patient's volume (no hand-drawn truth)"})
        write_mask_array(truth / "lesion", lesion_slab.astype(np.uint8),
                         attributes={"values": {"0": "none", "1": "inserted lesion"}})
        stats[(pid, series)] = {"lung_px": (lung_slab > 0).sum(axis=(1, 2)),
                                "lesion_px": lesion_slab.sum(axis=(1, 2), dtype=np.int64)}
        plan.metadata.update({f"{series} {key}": value for key, value in (
            ("PixelSpacing", f"[{spacing[1]:.6f}, {spacing[2]:.6f}]"), ("SliceThickness", thickness[series]),
            ("ConvolutionKernel", kernel), ("Rows", shape[0]), ("Columns", shape[1]), *_FIXED_META.items())})
        plan.series.append(SeriesPlan(
            patient=pid, series=series, groups=(group,), n_slices=len(slab_raw), thickness_mm=thickness[series],
            kernel=kernel, spacing_mm=spacing[1], covid=covid, seed=seed + k, anatomy_seed=base_index,
            scan_length_mm=len(vol) * spacing[0], body_width_mm=shape[1] * spacing[2]))
    return plan
