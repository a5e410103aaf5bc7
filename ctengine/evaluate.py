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

from .store import open_store
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
    catalog = fold_catalog(open_store(store).catalog, fold, seed=seed)
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


def predict_patient(patient_dir: str | os.PathLike, *, checkpoint: str | os.PathLike, threshold: float = 0.10,
                    series: str = DECISION_SERIES, batch_size: int = 16, device: str = "auto") -> dict[str, Any]:
    """The fully automated path on one patient's folder of TIFFs: selection, classification, decision.

    ``patient_dir`` holds ``SR_k`` folders (``series`` is used) or the TIFFs
    of one series. Unreadable files are skipped and listed.

    Returns
    -------
    dict
        verdict ("covid"/"normal"), series, slices, selected, covid_slices,
        fraction, threshold, skipped [(file, reason)], and per-slice rows
        (file, instance, selected, dark_count, probability, prediction).
    """
    import torch

    from .kernels import lung_mask, select_slices
    from .layout import parse_name
    from .model import load_checkpoint
    from .tiffio import BadSliceError, decode_slice

    folder = Path(patient_dir)
    if (folder / series).is_dir():
        folder = folder / series
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".tif", ".tiff"))
    images, names, instances, skipped = [], [], [], []
    for path in files:
        try:
            images.append(decode_slice(path.read_bytes(), shape=None))
        except (BadSliceError, OSError) as exc:
            skipped.append((str(path), str(exc)))
            continue
        names.append(path.name)
        key = parse_name(f"g/patient0/{series}/{path.name}")
        instances.append(key.instance if key else len(instances) + 1)
    if not images:
        raise ValueError(f"no readable slice in {folder}")
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
        raise ValueError(f"slices of {folder} differ in shape: {sorted(shapes)}")
    order = np.argsort(instances, kind="stable")
    stack = np.stack([images[i] for i in order])
    selection = select_slices(stack)
    net, _ = load_checkpoint(checkpoint, map_location=_device(device))
    net.eval()
    device_ = next(net.parameters()).device
    probability = np.full(len(stack), np.nan)
    chosen = np.flatnonzero(selection.keep)
    if net.config["lung_only"] and len(chosen):   # as the store's loader: raw 0 outside the lung mask
        picked = stack[chosen]
        picked[lung_mask(picked) == 0] = 0
        stack[chosen] = picked
    with torch.inference_mode():
        for start in range(0, len(chosen), batch_size):
            part = chosen[start:start + batch_size]
            batch = torch.from_numpy(stack[part][:, None]).to(device_).to(torch.float32)
            probability[part] = torch.softmax(net(batch).float(), 1)[:, 1].cpu().numpy()
    covid = int(np.sum(probability[chosen] >= 0.5))
    fraction = covid / len(chosen) if len(chosen) else float("nan")
    return {"verdict": "covid" if len(chosen) and fraction >= threshold else "normal", "series": folder.name,
            "slices": int(len(stack)), "selected": int(len(chosen)), "covid_slices": covid, "fraction": fraction,
            "threshold": threshold, "skipped": skipped,
            "rows": [{"file": names[i], "instance": int(instances[i]), "selected": bool(selection.keep[z]),
                      "dark_count": int(selection.counts[z]),
                      "probability": None if np.isnan(probability[z]) else float(probability[z]),
                      "prediction": None if np.isnan(probability[z]) else
                      ("covid" if probability[z] >= 0.5 else "normal")}
                     for z, i in enumerate(order)]}
