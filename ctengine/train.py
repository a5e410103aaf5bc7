"""Training a slice classifier on one fold of a store (the paper's protocol).

Folds come from the store's catalog (the dataset's fold CSVs) or, when it
has none, are made with the paper's protocol from the catalog
(:func:`ctengine.folds.make_folds`: patient-disjoint in every series).
Training uses the labelled slices of the fold's training patients, batches
from :class:`ctengine.loader.SliceLoader`, augmentation on the device and
Nadam; the checkpoint carries the model's config and the training history.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import store as schema
from .loader import CLASSES, SliceLoader, slice_rows

DEFAULT_LR = {"small": 1e-3, "resnet50v2-fpn": 1e-4}


@dataclass
class TrainResult:
    """Checkpoint path and one history row per epoch (loss, accuracy, slices/s)."""

    checkpoint: Path
    history: list[dict[str, float]] = field(default_factory=list)


def fold_catalog(catalog: pd.DataFrame, fold: int, *, seed: int = 0) -> pd.DataFrame:
    """The catalog with fold columns: the store's own, or made with the paper's protocol.

    Raises ValueError when the store's folds put one patient on both sides.
    """
    from .folds import make_folds

    column = f"fold{fold}"
    if column in catalog and (catalog[column] != "").any():
        mixed = catalog.loc[catalog[column].str.contains(r"\+"), "patient"].unique()
        if len(mixed):
            raise ValueError(f"fold {fold} puts patients on both sides: {sorted(mixed)[:5]}")
        return catalog
    patients = catalog.groupby("patient")["label"].first()
    known = patients[patients.isin(CLASSES)]
    folds = make_folds(list(known.index), list(known.values), seed=seed)
    folds.index = known.index
    catalog = catalog.copy()
    for name in folds.columns:
        catalog[name] = catalog["patient"].map(folds[name]).fillna("")
    return catalog


def training_rows(catalog: pd.DataFrame, fold: int, split: str) -> pd.DataFrame:
    """Labelled slices of a split (all slices of its patients when nothing is labelled)."""
    rows = slice_rows(catalog, fold=fold, split=split, selected_only=False)
    labelled = rows[rows["labelled"].astype(bool)]
    return (labelled if len(labelled) else rows).reset_index(drop=True)


def _device(device: str):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def train(store: str | os.PathLike, *, fold: int = 1, model: str = "small", epochs: int = 3,
          batch_size: int = 16, lr: float | None = None, out: str | os.PathLike = "runs", seed: int = 0,
          device: str = "auto", threads: int = 2, augmentation: bool = True, progress: bool = True,
          **model_config: Any) -> TrainResult:
    """Train a classifier on fold ``fold`` of a store and save ``out/model.pt``.

    Parameters
    ----------
    store : str
        Store path or URL.
    fold : int
        1..5.
    model : {"small", "resnet50v2-fpn"}
    epochs, batch_size : int
    lr : float, optional
        Nadam learning rate (default 1e-3 small, 1e-4 resnet50v2-fpn, as the paper).
    device : {"auto", "cpu", "cuda"}
        On CUDA: one host-to-device copy per batch, augmentation on the
        device and bfloat16 autocast.

    Returns
    -------
    TrainResult
    """
    import torch
    from tqdm.auto import tqdm

    from .augment import augment
    from .loader import DeviceLoader
    from .model import build_model, save_checkpoint

    torch.manual_seed(seed)
    target = _device(device)
    catalog = fold_catalog(schema.open_store(store).catalog, fold, seed=seed)
    rows = training_rows(catalog, fold, "train")
    validation = training_rows(catalog, fold, "validation") if (catalog[f"fold{fold}"] == "validation").any() \
        else None
    net = build_model(model, seed=seed, **model_config).to(target)
    optimizer = torch.optim.NAdam(net.parameters(), lr=lr or DEFAULT_LR.get(model, 1e-4))
    counts = np.bincount(rows["target"], minlength=2).astype(float)
    weights = torch.tensor(counts.sum() / (2 * np.maximum(counts, 1)), dtype=torch.float32, device=target)
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights)
    generator = torch.Generator().manual_seed(seed)
    history = []
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    with SliceLoader(store, rows, batch_size=batch_size, shuffle=True, seed=seed, drop_last=len(rows) > batch_size,
                     threads=threads) as loader:
        batches = DeviceLoader(loader, str(target))
        for epoch in range(epochs):
            loader.set_epoch(epoch)
            net.train()
            started, seen, loss_sum, correct = time.perf_counter(), 0, 0.0, 0
            for images, targets, _ in tqdm(batches, desc=f"epoch {epoch + 1}/{epochs}", disable=not progress,
                                           leave=False):
                if augmentation:
                    images = augment(images, generator=generator, fill=0.0)
                with torch.autocast(device_type=target.type, dtype=torch.bfloat16, enabled=target.type == "cuda"):
                    logits = net(images)
                    loss = loss_fn(logits.float(), targets)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                seen += len(targets)
                loss_sum += float(loss.detach()) * len(targets)
                correct += int((logits.argmax(1) == targets).sum())
            row = {"epoch": epoch + 1, "slices": seen, "loss": loss_sum / max(seen, 1),
                   "accuracy": correct / max(seen, 1),
                   "slices_per_s": seen / (time.perf_counter() - started)}
            if validation is not None and len(validation):
                probabilities = predict_rows(net, store, validation, batch_size=batch_size, threads=threads)
                row["val_accuracy"] = float(((probabilities >= 0.5).astype(int) == validation["target"]).mean())
            history.append(row)
    checkpoint = save_checkpoint(out_dir / "model.pt", net, extra={
        "fold": fold, "epochs": epochs, "seed": seed, "history": json.dumps(history)})
    (out_dir / "history.json").write_text(json.dumps(history, indent=2))
    return TrainResult(Path(checkpoint), history)


def predict_rows(net, store: str | os.PathLike, rows: pd.DataFrame, *, batch_size: int = 16,
                 threads: int = 2) -> np.ndarray:
    """COVID probability of every row (catalog rows with patient, series, z; any target)."""
    import torch

    from .loader import DeviceLoader

    rows = rows.reset_index(drop=True)
    if "target" not in rows:
        rows = rows.assign(target=0)
    device = next(net.parameters()).device
    was_training = net.training
    net.eval()
    out = np.empty(len(rows), dtype=np.float64)
    done = 0
    with torch.inference_mode(), SliceLoader(store, rows, batch_size=batch_size, threads=threads) as loader:
        for images, _, _ in DeviceLoader(loader, str(device)):
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = net(images)
            out[done:done + len(images)] = torch.softmax(logits.float(), 1)[:, 1].cpu().numpy()
            done += len(images)
    net.train(was_training)
    return out
