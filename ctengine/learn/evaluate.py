"""Evaluation with the paper's definitions.

Rows evaluated on fold K: the labelled slices of the test patients (image
metrics) and every selected ``SR_2`` slice of each test patient (patient
decisions: COVID when at least 10 % of them are predicted COVID).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..constants import CLASS_NAMES, PATIENT_COVID_FRACTION
from ..store import open_store
from .loader import slice_rows
from .predict import DECISION_SERIES, predict_rows
from .train import fold_catalog


def evaluation_rows(catalog: pd.DataFrame, fold: int) -> pd.DataFrame:
    """Labelled test slices plus every selected SR_2 slice of the test patients (each slice once)."""
    test = slice_rows(catalog, fold=fold, split="test", selected_only=False)
    if "selected" not in test:
        test = test.assign(selected=True)
    keep = test["labelled"].astype(bool) | ((test["series"] == DECISION_SERIES) & test["selected"].astype(bool))
    return test[keep].reset_index(drop=True)


def evaluate(store: str | os.PathLike, *, fold: int, checkpoint: str | os.PathLike,
             out: str | os.PathLike = "evaluation", threshold: float = PATIENT_COVID_FRACTION,
             batch_size: int = 16, device: str = "auto", seed: int = 0, storage_options: dict | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Write ``predictions.csv``, ``metrics.json``, ``metrics.md`` and PNG plots for fold ``fold``.

    Parameters
    ----------
    store : str or path
        Store path or fsspec URL.
    fold : int
        1..5.
    checkpoint : path
        A checkpoint of :func:`ctengine.learn.train.train`.
    out : path
        Folder of the outputs.
    threshold : float
        A patient is COVID when at least this fraction of its selected SR_2 slices is.
    batch_size : int
    device : {"auto", "cpu", "gpu"}
    seed : int
        Seed of the folds made when the store has none.
    storage_options : dict, optional
        fsspec options of a remote store.
    progress : bool
        Show a progress bar over the test slices.

    Returns
    -------
    dict
        Image metrics over the labelled rows (accuracy, per-class
        sensitivity, specificity, precision, AUC) and the patient table over
        the selected SR_2 rows.
    """
    from .metrics import image_metrics, metrics_markdown, patient_decisions, patient_table, plot_confusion_matrix, \
        plot_roc, confusion_matrix
    from .device import resolve_device
    from .model import load_checkpoint

    net, _ = load_checkpoint(checkpoint, map_location=resolve_device(device))
    catalog = fold_catalog(open_store(store, storage_options=storage_options).catalog, fold, seed=seed)
    rows = evaluation_rows(catalog, fold)
    if rows.empty:
        raise ValueError(f"fold {fold} has no test slices to evaluate")
    probability = predict_rows(net, store, rows, batch_size=batch_size, storage_options=storage_options,
                               progress=f"evaluate fold {fold}" if progress else None)
    predictions = pd.DataFrame({
        "patient": rows["patient"], "series": rows["series"], "instance": rows["instance"],
        "label": rows["target"].map(dict(enumerate(CLASS_NAMES))), "patient_label": rows["label"],
        "probability": probability, "prediction": np.where(probability >= 0.5, "covid", "normal"),
        "labelled": rows["labelled"].astype(bool), "selected": rows["selected"].astype(bool)})
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    predictions.drop(columns="patient_label").to_csv(out_dir / "predictions.csv", index=False)
    labelled = predictions[predictions["labelled"]]
    metrics: dict[str, Any] = {"fold": fold, "threshold": threshold}
    metrics.update(image_metrics(labelled["label"], labelled["prediction"], scores=labelled["probability"]))
    decisions = patient_decisions(predictions.rename(columns={"prediction": "pred"}), threshold=threshold,
                                  series=DECISION_SERIES)
    metrics.update(patient_table(decisions))
    decisions.to_csv(out_dir / "patients.csv")
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
    (out_dir / "metrics.md").write_text(metrics_markdown(metrics, title=f"Fold {fold}"))
    plot_confusion_matrix(confusion_matrix(labelled["label"], labelled["prediction"]), out_dir / "confusion.png")
    plot_roc(labelled["label"], labelled["probability"], out_dir / "roc.png")
    return metrics

