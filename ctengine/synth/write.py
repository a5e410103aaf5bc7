"""Write a synthetic cohort in the exact COVID-CTset layout.

Under ``out``::

    COVID-CTset/<group>/<patientN>/<SR_k>/IMnnnnn.tif   16-bit TIFF slices (IM00001 superior)
    Patient_details.csv, Patients_metadata.csv           as in the real dataset
    CSV/all.csv, CSV/{train,validation,test}{1..5}.csv   labelled slices (filename,class)
    truth.zarr/<patient>/<series>/{lung,lesion}          Zarr v3 uint8 (z, y, x), one slice per chunk
    Training&Validation/<group>_<patient>_<SR_k>_IMnnnnn.tif   (flat=True) copies of labelled slices
    .ctengine-synth.json                                 what was written (marks the folder as ours)

Series are rendered and written by a process pool (forked after the kernels
are compiled and the noise banks built), one task per patient: its three
series share one anatomy.
Labels follow the real data: a COVID patient's labelled slices are those
showing a lesion (in every series); a normal patient's labelled slices are
SR_2 slices with open lungs (the real count per patient in like-mode).
"""
from __future__ import annotations

import concurrent.futures as cf
import json
import multiprocessing
import os
import shutil
import sys
import threading
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..constants import MASK_LEFT_LUNG, MASK_RIGHT_LUNG, RAW_DTYPE, SLICE_SHAPE
from ..folds import make_folds, write_fold_csvs
from ._io import write_group_json, write_mask_array, write_tiff
from .cohort import DETAIL_COLUMNS, CohortPlan, PatientPlan, SeriesPlan, plan_cohort
from .phantom import Phantom, render_series, warm_up

__all__ = ["SynthSummary", "flat_name", "write_cohort"]

TREE = "COVID-CTset"
FLAT = "Training&Validation"
MARKER = ".ctengine-synth.json"
_OUTPUTS = (TREE, FLAT, "CSV", "truth.zarr", "Patient_details.csv", "Patients_metadata.csv", MARKER)


@dataclass
class SynthSummary:
    """What ``write_cohort`` wrote: unique slice counts per class, labelled rows, time (s).

    ``timings`` sums over series tasks: wall seconds of render / tiff / truth, and ``cpu``,
    the CPU seconds of the tasks (the cost per slice independent of other load on the machine);
    ``tables`` (wall) and ``parent_cpu`` cover the calling process (plan, labels, CSVs, folds).
    """
    patients: int
    series: int
    slices: int
    covid_slices: int
    normal_slices: int
    seconds: float
    out: Path
    files: int = 0
    labelled_covid: int = 0
    labelled_normal: int = 0
    timings: dict = field(default_factory=dict)


def flat_name(group: str, patient: str, series: str, instance: int) -> str:
    """``<group>_<patient>_<SR_k>_IMnnnnn.tif``, the flat name of a slice."""
    return f"{group}_{patient}_{series}_IM{instance:05d}.tif"


def _patient_job(out: str, plans: list[SeriesPlan], shape: tuple[int, int]) -> list[dict]:
    """The series of one patient, in one task (they share the anatomy, built once per process)."""
    return [_series_job(out, s, shape) for s in plans]


_BUFFERS: dict[tuple[int, int], Phantom] = {}


def _buffers(n: int, shape: tuple[int, int]) -> Phantom:
    """Reusable output arrays of this process for n slices (fresh memory costs page faults per series)."""
    have = _BUFFERS.get(shape)
    if have is None or have.raw.shape[0] < n:
        m = max(n, 128)
        have = _BUFFERS[shape] = Phantom(np.empty((m, *shape), RAW_DTYPE), np.empty((m, *shape), np.uint8),
                                         np.empty((m, *shape), np.uint8))
    return Phantom(*(a[:n] for a in have))


def _series_job(out: str, plan: SeriesPlan, shape: tuple[int, int]) -> dict:
    """Render one series, write its TIFFs under every group and its truth; return per-slice stats."""
    c0, t0 = time.process_time(), time.perf_counter()
    ph = render_series(n_slices=plan.n_slices, covid=plan.covid, seed=plan.seed, spacing_mm=plan.spacing_mm,
                       thickness_mm=plan.thickness_mm, kernel=plan.kernel, shape=shape,
                       anatomy_seed=plan.anatomy_seed, scan_length_mm=plan.scan_length_mm,
                       body_width_mm=plan.body_width_mm, lesion_burden=plan.lesion_burden,
                       out=_buffers(plan.n_slices, tuple(shape)))
    t1 = time.perf_counter()
    for g in plan.groups:
        d = Path(out, TREE, g, plan.patient, plan.series)
        d.mkdir(parents=True, exist_ok=True)
        for k in range(plan.n_slices):
            write_tiff(d / f"IM{k + 1:05d}.tif", ph.raw[k])
    t2 = time.perf_counter()
    truth = Path(out, "truth.zarr", plan.patient, plan.series)
    write_mask_array(truth / "lung", ph.lung, attributes={
        "values": {"0": "background", str(MASK_RIGHT_LUNG): "right lung (image left)",
                   str(MASK_LEFT_LUNG): "left lung (image right)"}})
    write_mask_array(truth / "lesion", ph.lesion, attributes={"values": {"0": "none", "1": "COVID lesion"}})
    t3 = time.perf_counter()
    return {"patient": plan.patient, "series": plan.series, "slices": plan.n_slices, "cpu": time.process_time() - c0,
            "lung_px": (ph.lung != 0).sum(axis=(1, 2)), "lesion_px": ph.lesion.sum(axis=(1, 2), dtype=np.int64),
            "render": t1 - t0, "tiff": t2 - t1, "truth": t3 - t2}


def _prepare(out: Path) -> None:
    """Refuse to overwrite a folder not written by this generator; clear our previous outputs."""
    present = [n for n in _OUTPUTS if (out / n).exists()]
    if present and not (out / MARKER).is_file():
        raise FileExistsError(f"{out} already holds {present} not written by ctengine synth; choose an empty folder")
    for n in present:
        p = out / n
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _pool(workers: int):
    """Process pool: forked workers inherit the compiled kernels and noise banks; where forking a
    threaded process is unsafe (Python >= 3.12 warns) or impossible, a fork server is used."""
    if sys.platform.startswith("linux") and (sys.version_info < (3, 12) or threading.active_count() == 1):
        method = "fork"
    else:
        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    return cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method))


def write_cohort(out: str | os.PathLike, *, patients: int | None = None, slices_per_series: int | None = None,
                 like: str | None = None, fraction: float = 1.0, seed: int = 0, flat: bool = False,
                 workers: int | None = None, progress: bool = True, shape: tuple[int, int] = SLICE_SHAPE,
                 covid_ratio: float | None = None) -> SynthSummary:
    """Render and write a synthetic cohort in the COVID-CTset layout (see module docstring).

    Parameters
    ----------
    out : folder to write (created; our previous outputs in it are replaced).
    patients : number of patients (about a quarter COVID); exclusive with ``like``.
    slices_per_series : slices in every series (default: from the scan length and thickness).
    like : "covid-ctset" (or a folder with the real CSVs): the real patients, groups, thickness and
        metadata, with exactly the real slice counts per class.
    fraction : share of the real patients in like-mode (1.0: all 377; counts scale with it).
    seed : seeds everything; the same arguments give bit-identical files.
    flat : also write Training&Validation/ with every labelled slice under its flat name.
    workers : processes (default os.cpu_count(); 1 renders in this process).
    progress : show a progress bar (slices).
    shape : (y, x) of a slice; small shapes keep the anatomy (for tests).
    covid_ratio : share of COVID patients in ``patients`` mode (default the real 95 / 377).

    Returns
    -------
    SynthSummary

    Raises
    ------
    ValueError on inconsistent options; FileExistsError when ``out`` holds dataset files
    that this generator did not write.
    """
    started, cpu0 = time.perf_counter(), time.process_time()
    plan = plan_cohort(patients=patients, slices_per_series=slices_per_series, like=like, fraction=fraction,
                       seed=seed, shape=shape, covid_ratio=covid_ratio)
    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers!r}")
    out = Path(out)
    _prepare(out)
    arguments = {"patients": patients, "slices_per_series": slices_per_series, "like": like, "fraction": fraction,
                 "seed": seed, "shape": list(plan.shape)}
    (out / MARKER).write_text(json.dumps({"arguments": arguments, "complete": False}, indent=2))
    # one task per patient (its three series share the anatomy), largest first
    jobs = sorted((p.series for p in plan.patients), key=lambda ss: -sum(s.n_slices for s in ss))
    stats: dict[tuple[str, str], dict] = {}
    bar = tqdm(total=plan.slices(), unit="slice", desc="synth", disable=not progress)
    warm_up(plan.shape)   # compile and build the noise banks once, before forking
    if workers == 1:
        results = (_patient_job(str(out), ss, plan.shape) for ss in jobs)
        for rs in results:
            for r in rs:
                stats[(r["patient"], r["series"])] = r
                bar.update(r["slices"])
    else:
        with _pool(min(workers, len(jobs))) as pool:
            futures = [pool.submit(_patient_job, str(out), ss, plan.shape) for ss in jobs]
            for fut in cf.as_completed(futures):
                for r in fut.result():
                    stats[(r["patient"], r["series"])] = r
                    bar.update(r["slices"])
    bar.close()
    t_written = time.perf_counter()
    labels = _labels(plan, stats)
    _write_tables(out, plan, labels)
    _write_truth_groups(out, plan)
    if flat:
        _write_flat(out, labels)
    summary = SynthSummary(
        patients=len(plan.patients), series=len(plan.series), slices=plan.slices(),
        covid_slices=plan.slices(True), normal_slices=plan.slices(False), seconds=0.0, out=out,
        files=sum(s.n_slices * len(s.groups) for s in plan.series),
        labelled_covid=int((labels["class"] == "covid").sum()),
        labelled_normal=int((labels["class"] == "normal").sum()),
        timings={k: float(sum(r[k] for r in stats.values())) for k in ("render", "tiff", "truth", "cpu")})
    summary.timings["tables"] = time.perf_counter() - t_written
    # CPU of the calling process besides the series tasks (which it ran itself when workers == 1)
    summary.timings["parent_cpu"] = time.process_time() - cpu0 - (summary.timings["cpu"] if workers == 1 else 0.0)
    summary.seconds = time.perf_counter() - started
    doc = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(summary).items()}
    (out / MARKER).write_text(json.dumps({"arguments": arguments, "complete": True, "summary": doc}, indent=2))
    return summary


def _normal_slices(p: PatientPlan, lung_px: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Labelled SR_2 instances (0-based) of a normal patient: the slices with the most lung, as the
    authors' selection keeps them, a few interior ones sometimes missing as in the real all.csv."""
    n_open = int((lung_px >= 0.3 * max(int(lung_px.max()), 1)).sum()) if lung_px.max() > 0 else 0
    if n_open == 0:
        return np.zeros(0, np.int64)
    k = p.normal_labels if p.normal_labels else round(rng.uniform(0.6, 0.85) * n_open)
    k = int(min(max(k, 1), n_open))
    chosen = np.sort(np.argsort(-lung_px, kind="stable")[:k])
    if k > 6 and rng.random() < 0.3:
        drop = rng.choice(np.arange(1, k - 1), size=int(rng.integers(1, 3)), replace=False)
        chosen = np.delete(chosen, drop)
    return chosen


def _labels(plan: CohortPlan, stats: dict, *, normal_series: tuple[str, ...] = ("SR_2",)) -> pd.DataFrame:
    """all.csv rows (filename, class) plus patient, group, series and instance columns; a normal patient's
    slices are labelled in ``normal_series`` (SR_2 only, as in the real data)."""
    rows = []
    for p in plan.patients:
        rng = np.random.default_rng([plan.seed, 17, zlib.crc32(p.patient.encode())])
        for s in p.series:
            st = stats[(p.patient, s.series)]
            if p.covid:
                idx = np.flatnonzero(st["lesion_px"] > 0)
            elif s.series in normal_series:
                idx = _normal_slices(p, st["lung_px"], rng)
            else:
                continue
            for g in s.groups:
                rows.extend((g, p.patient, s.series, int(k) + 1, "covid" if p.covid else "normal") for k in idx)
    df = pd.DataFrame(rows, columns=["group", "patient", "series", "instance", "class"])
    df["num"] = pd.to_numeric(df["patient"].str.removeprefix("patient"), errors="coerce")
    df = df.sort_values(["group", "num", "series", "instance"], kind="stable").drop(columns="num")
    df.insert(0, "filename", [flat_name(*r) for r in df[["group", "patient", "series", "instance"]].itertuples(False)])
    return df.reset_index(drop=True)


def _write_tables(out: Path, plan: CohortPlan, labels: pd.DataFrame) -> None:
    pd.DataFrame([p.details for p in plan.patients], columns=list(DETAIL_COLUMNS)).to_csv(
        out / "Patient_details.csv", index=False)
    pd.DataFrame([p.metadata for p in plan.patients]).to_csv(out / "Patients_metadata.csv", index=False)
    csv = out / "CSV"
    csv.mkdir(exist_ok=True)
    labels[["filename", "class"]].to_csv(csv / "all.csv", index=False)
    folds = make_folds(labels["patient"].tolist(), labels["class"].tolist(), seed=plan.seed)
    write_fold_csvs(csv, labels["filename"].tolist(), labels["class"].tolist(), folds)


def _write_truth_groups(out: Path, plan: CohortPlan) -> None:
    root = out / "truth.zarr"
    write_group_json(root, {"ctengine": {"synthetic_truth": True, "seed": plan.seed,
                                         "arrays": "<patient>/<series>/lung and lesion, uint8 (z, y, x)"}})
    for p in plan.patients:
        write_group_json(root / p.patient, {"covid": p.covid, "groups": list(p.groups)})
        for s in p.series:
            write_group_json(root / p.patient / s.series, {
                "thickness_mm": s.thickness_mm, "spacing_mm": s.spacing_mm, "kernel": s.kernel,
                "scan_length_mm": s.scan_length_mm, "groups": list(s.groups)})


def _write_flat(out: Path, labels: pd.DataFrame) -> None:
    flat = out / FLAT
    flat.mkdir(exist_ok=True)
    for name, g, p, s, k in labels[["filename", "group", "patient", "series", "instance"]].itertuples(False):
        shutil.copyfile(out / TREE / g / p / s / f"IM{k:05d}.tif", flat / name)
