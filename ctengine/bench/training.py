"""Training benchmark: does the small model learn the task on this CPU, and what does its input buy?

On a synthetic cohort in the real class ratio (24 patients by default, fold
1 of the generated folds) the small model is trained and evaluated on the
test split twice, with the same recipe, seed and epochs:

  ctengine   the small model as shipped: lung window, lung-only input
             (pixels outside the stored lung mask set to air) zoomed to the lungs
  baseline   the same model fed the whole slice divided by its maximum (the
             authors' input: ``normalization="max", lung_only=False, crop=None``)

Reported per fold: image accuracy, COVID and normal sensitivity, patients
right and wrong (10 % rule), training seconds and training slices/s.
Target (``target_met``): at least 95 % image accuracy and every test
patient right, in under 5 minutes of training, on every fold run.
"""
from __future__ import annotations

import time
from pathlib import Path

import ctengine
from ..features import compute_features
from ..synth import write_cohort
from ._common import cluster, on_machine, pick_sizes

SIZES = {"patients": 24, "epochs": 60, "folds": 1, "slices_per_series": 0}
QUICK = {"patients": 8, "epochs": 1, "folds": 1, "slices_per_series": 8}
VARIANTS = {"ctengine": {}, "whole_slice": {"normalization": "max", "lung_only": False, "crop": None}}
TARGET = {"accuracy": 0.95, "train_seconds": 300.0}
_KEYS = ("accuracy", "covid_sensitivity", "normal_sensitivity", "patients_correct", "patients_wrong", "images")


def prepare(workdir: Path, patients: int, slices_per_series: int, *, scheduler: str | None,
            workers: int | None) -> Path:
    """Synthetic cohort -> store with features (reused when already there); returns the store path."""
    src, store = workdir / "src", workdir / "s.zarr"
    if not (store / "zarr.json").exists() or "selected" not in ctengine.open_store(store).catalog:
        write_cohort(src, patients=patients, slices_per_series=slices_per_series or None, seed=0, progress=False)
        with cluster(scheduler, workers) as client:
            ctengine.ingest([src], store, client=client, progress=False)
            compute_features(store, client=client, progress=False)
    return store


def train_and_evaluate(store: Path, out: Path, *, fold: int, epochs: int, **config) -> dict:
    """One training run and its evaluation on the fold's test split."""
    from ..learn.evaluate import evaluate
    from ..learn.train import train

    started = time.perf_counter()
    trained = train(store, fold=fold, epochs=epochs, out=out, progress=False, **config)
    seconds = time.perf_counter() - started
    metrics = evaluate(store, fold=fold, checkpoint=trained.checkpoint, out=out / "evaluation")
    slices = sum(h["slices"] for h in trained.history)
    return {"fold": fold, **{k: metrics[k] for k in _KEYS}, "train_seconds": seconds,
            "train_slices_per_s": slices / seconds, "final_train_accuracy": trained.history[-1]["accuracy"]}


def run(workdir: Path, *, quick: bool = False, scheduler: str | None = None, workers: int | None = None,
        **sizes: int) -> dict:
    """Train and evaluate both variants on folds 1..``folds``; see the module docstring."""
    size = pick_sizes(SIZES, QUICK, quick, sizes)
    workdir = Path(workdir)
    started = time.perf_counter()
    store = prepare(workdir, size["patients"], size["slices_per_series"], scheduler=scheduler, workers=workers)
    prepared = time.perf_counter() - started
    with on_machine() as machine:
        result = {"machine": machine, "date": time.strftime("%Y-%m-%d"), "quick": quick, "sizes": size,
                  "prepare_seconds": prepared,
                  "slices": len(ctengine.open_store(store).catalog)}
        for name, config in VARIANTS.items():
            runs = [train_and_evaluate(store, workdir / name / f"fold{k}", fold=k, epochs=size["epochs"], **config)
                    for k in range(1, size["folds"] + 1)]
            result[name] = {"config": config, "folds": runs,
                            "mean_accuracy": sum(r["accuracy"] for r in runs) / len(runs),
                            "patients_wrong": sum(r["patients_wrong"] for r in runs),
                            "train_slices_per_s": sum(r["train_slices_per_s"] for r in runs) / len(runs)}
    result["target_met"] = all(r["accuracy"] >= TARGET["accuracy"] and r["patients_wrong"] == 0
                               and r["train_seconds"] < TARGET["train_seconds"] for r in result["ctengine"]["folds"])
    return result


def ratios(result: dict) -> dict[str, float]:
    """Image accuracy of the shipped input over the whole-slice input (same model, recipe and epochs)."""
    return {"training: image accuracy vs whole-slice input":
            result["ctengine"]["mean_accuracy"] / max(result["whole_slice"]["mean_accuracy"], 1e-9)}


def throughput(result: dict) -> tuple[float, float]:
    """Training slices/s (forward, backward, augmentation, loader) of both variants."""
    return result["ctengine"]["train_slices_per_s"], result["whole_slice"]["train_slices_per_s"]
