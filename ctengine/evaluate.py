"""Evaluation with the paper's definitions, and prediction on one patient's folder.

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

from . import store as schema
from .loader import CLASSES, slice_rows
from .train import _device, fold_catalog, predict_rows

DECISION_SERIES = "SR_2"


def evaluation_rows(catalog: pd.DataFrame, fold: int) -> pd.DataFrame:
    """Labelled test slices plus every selected SR_2 slice of the test patients (each slice once)."""
    test = slice_rows(catalog, fold=fold, split="test", selected_only=False)
    if "selected" not in test:
        test = test.assign(selected=True)
    keep = test["labelled"].astype(bool) | ((test["series"] == DECISION_SERIES) & test["selected"].astype(bool))
    return test[keep].reset_index(drop=True)


def evaluate(store: str | os.PathLike, *, fold: int, checkpoint: str | os.PathLike,
             out: str | os.PathLike = "evaluation", threshold: float = 0.10, batch_size: int = 16,
             device: str = "auto", seed: int = 0) -> dict[str, Any]:
    """Write ``predictions.csv``, ``metrics.json``, ``metrics.md`` and PNG plots for fold ``fold``.

    Returns the metrics dict: image metrics over the labelled rows
    (accuracy, per-class sensitivity, specificity, precision, AUC) and the
    patient table over the selected SR_2 rows.
    """
    from .metrics import image_metrics, metrics_markdown, patient_decisions, patient_table, plot_confusion_matrix, \
        plot_roc, confusion_matrix
    from .model import load_checkpoint

    net, _ = load_checkpoint(checkpoint, map_location=_device(device))
    catalog = fold_catalog(schema.open_store(store).catalog, fold, seed=seed)
    rows = evaluation_rows(catalog, fold)
    if rows.empty:
        raise ValueError(f"fold {fold} has no test slices to evaluate")
    probability = predict_rows(net, store, rows, batch_size=batch_size)
    predictions = pd.DataFrame({
        "patient": rows["patient"], "series": rows["series"], "instance": rows["instance"],
        "label": rows["target"].map(dict(enumerate(CLASSES))), "patient_label": rows["label"],
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
