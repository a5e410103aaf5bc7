"""Training a slice classifier on one fold of a store (the paper's protocol).

Folds come from the store's catalog (the dataset's fold CSVs) or, when it
has none, are made with the paper's protocol from the catalog
(:func:`ctengine.folds.make_folds`: patient-disjoint in every series).
Training uses the labelled slices of the fold's training patients, batches
from :class:`ctengine.learn.loader.SliceLoader`, augmentation on the device and
Nadam; the checkpoint carries the model's config and the training history.

What makes the small model learn on a few hundred slices:

- its input (model config): lung window, lungs only, zoomed to the lungs;
  on the whole slice the same recipe reaches 83 % instead of 99 % image
  accuracy (``ctengine bench training``);
- each batch is normalised and resized by the model first and augmented
  at the network's input size (four times fewer pixels to warp than at
  512 x 512);
- the learning rate decays to zero along a cosine over all steps;
- the level heads end in a ReLU on two units each: started at PyTorch's
  default bias, most of them go negative for every slice within a few
  epochs and the network then outputs a constant. Their dense layers start
  with bias `HEAD_BIAS` so every head is active;
- BatchNorm running statistics that trail the weights predict one class in
  eval mode: after every epoch they are recomputed over the unaugmented
  training slices with the final weights (cumulative average, the
  "precise BN" of Wu & Johnson 2021), so validation and the checkpoint see
  the statistics the weights were trained with.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from ..constants import CLASS_NAMES, HU_OFFSET
from ..store import open_store
from .loader import SliceLoader, slice_rows

DEFAULT_LR = {"small": 1e-3, "resnet50v2-fpn": 1e-4}
#: epochs when none are given: the paper's 20 for its network; the small model needs 30 on a small cohort
DEFAULT_EPOCHS = {"small": 30, "resnet50v2-fpn": 20}
#: initial bias of the level heads' dense layers (their ReLU outputs start active)
HEAD_BIAS = 2.0


@dataclass
class TrainResult:
    """Checkpoint path and one history row per epoch (loss, accuracy, slices/s)."""

    checkpoint: Path
    history: list[dict[str, float]] = field(default_factory=list)
    #: what was trained on: split -> class -> {"patients", "slices"} (see :func:`describe_splits`)
    data: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)


def fold_catalog(catalog: pd.DataFrame, fold: int, *, seed: int = 0) -> pd.DataFrame:
    """The catalog with fold columns: the store's own, or made with the paper's protocol.

    Raises ValueError when the store's folds put one patient on both sides.
    """
    from ..folds import make_folds

    column = f"fold{fold}"
    if column in catalog and (catalog[column] != "").any():
        mixed = catalog.loc[catalog[column].str.contains(r"\+"), "patient"].unique()
        if len(mixed):
            raise ValueError(f"fold {fold} puts patients on both sides: {sorted(mixed)[:5]}")
        return catalog
    patients = catalog.groupby("patient")["label"].first()
    known = patients[patients.isin(CLASS_NAMES)]
    folds = make_folds(list(known.index), list(known.values), seed=seed)
    folds.index = known.index
    catalog = catalog.copy()
    for name in folds.columns:
        catalog[name] = catalog["patient"].map(folds[name]).fillna("")
    return catalog


def describe_splits(catalog: pd.DataFrame, fold: int) -> dict[str, dict[str, dict[str, int]]]:
    """Patients and training slices per class of the train and validation splits of a fold.
    """
    out = {}
    for split in ("train", "validation"):
        rows = training_rows(catalog, fold, split)
        if rows.empty:
            continue
        out[split] = {name: {"patients": int(rows.loc[rows["label"] == name, "patient"].nunique()),
                             "slices": int((rows["target"] == index).sum())}
                      for index, name in enumerate(CLASS_NAMES)}
        out[split] = {name: out[split][name] for name in sorted(out[split])}
    return out


def count(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless n is 1 ("1 patient", "2 patients")."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def split_lines(data: dict[str, dict[str, dict[str, int]]]) -> list[str]:
    """One line per split: patients (by patient label) and slices (by slice target) per class."""
    return [f"{split}: " + ", ".join(f"{name} {count(c['patients'], 'patient')} / {count(c['slices'], 'slice')}"
                                     for name, c in classes.items()) for split, classes in data.items()]


def training_rows(catalog: pd.DataFrame, fold: int, split: str) -> pd.DataFrame:
    """Labelled slices of a split (all slices of its patients when nothing is labelled)."""
    rows = slice_rows(catalog, fold=fold, split=split, selected_only=False)
    labelled = rows[rows["labelled"].astype(bool)]
    return (labelled if len(labelled) else rows).reset_index(drop=True)


def activate_heads(net, bias: float = HEAD_BIAS) -> None:
    """Set the bias of every level head's dense layer to `bias` (in place)."""
    import torch

    with torch.no_grad():
        for head in net.heads:
            head.dense.bias.fill_(float(bias))


def recalibrate_batchnorm(net, batches: Iterable, *, prepared: bool = False) -> int:
    """Recompute every BatchNorm's running statistics from `batches` with the current weights.

    Each layer's running mean and variance become the plain average of the
    per-batch statistics over all batches (momentum None), computed in
    training mode without gradients; the layers' momentum is restored
    afterwards. `batches` yields images (HU, or prepared when `prepared`)
    or tuples whose first item is the images. Returns the number of
    batches; with none the statistics are left unchanged.
    """
    import torch

    kinds = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d, torch.nn.SyncBatchNorm)
    layers = [m for m in net.modules() if isinstance(m, kinds)]
    saved = {m: (m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone(), m.momentum)
             for m in layers}
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    was_training = net.training
    net.train()
    count = 0
    with torch.no_grad():
        for batch in batches:
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            if len(images) < 2:
                continue  # a single slice gives no variance
            net.classify(images) if prepared else net(images)
            count += 1
    for m, (mean, var, tracked, momentum) in saved.items():
        m.momentum = momentum
        if not count:
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(tracked)
    net.train(was_training)
    return count


def cosine_factor(step: int, total: int, *, warmup: int = 0) -> float:
    """Learning-rate factor of `step` (0-based): linear warm-up, then cosine from 1 to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, total - warmup) / max(total - warmup, 1)))


def train(store: str | os.PathLike, *, fold: int = 1, model: str = "small", epochs: int | None = None,
          batch_size: int = 16, lr: float | None = None, out: str | os.PathLike = "runs", seed: int = 0,
          device: str = "auto", threads: int = 2, augmentation: bool = True, progress: bool = True,
          storage_options: dict | None = None, **model_config: Any) -> TrainResult:
    """Train a classifier on fold ``fold`` of a store and save ``out/model.pt``.

    Parameters
    ----------
    store : str
        Store path or URL.
    fold : int
        1..5.
    model : {"small", "resnet50v2-fpn"}
    epochs : int, optional
        Default `DEFAULT_EPOCHS` of the model (30 small, 20 resnet50v2-fpn).
    batch_size : int
    lr : float, optional
        Peak Nadam learning rate (default 1e-3 small, 1e-4 resnet50v2-fpn, as
        the paper), decayed to 0 along a cosine over all steps.
    device : {"auto", "cpu", "gpu"}
        On the GPU: one host-to-device copy per batch, augmentation on the
        device and bfloat16 autocast. ``"auto"``: the GPU when CUDA is available.
    augmentation : bool
        The paper's random affine warp (`ctengine.learn.augment`) on every batch.
    storage_options : dict, optional
        fsspec options of a remote store (endpoint, credentials).
    **model_config
        Overrides of the architecture's defaults (`ctengine.learn.model.build_model`).

    Returns
    -------
    TrainResult
        History rows: epoch, slices, loss, accuracy (training batches, in
        training mode), slices_per_s, lr (at the end of the epoch) and, when
        the fold has a validation split, val_accuracy (eval mode, after the
        BatchNorm statistics are recomputed).
    """
    import torch
    from tqdm.auto import tqdm

    from .augment import augment
    from .device import resolve_device
    from .loader import DeviceLoader
    from .model import build_model, save_checkpoint
    from .predict import predict_rows

    epochs = DEFAULT_EPOCHS.get(model, 20) if epochs is None else epochs
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs!r}, {batch_size!r}")
    torch.manual_seed(seed)
    target = resolve_device(device)
    catalog = fold_catalog(open_store(store, storage_options=storage_options).catalog, fold, seed=seed)
    rows = training_rows(catalog, fold, "train")
    if rows.empty:
        raise ValueError(f"fold {fold} has no training slices")
    validation = training_rows(catalog, fold, "validation") if (catalog[f"fold{fold}"] == "validation").any() \
        else None
    net = build_model(model, seed=seed, **model_config).to(target)
    activate_heads(net)
    peak = lr or DEFAULT_LR.get(model, 1e-4)
    optimizer = torch.optim.NAdam(net.parameters(), lr=peak)
    counts = np.bincount(rows["target"], minlength=2).astype(float)
    weights = torch.tensor(counts.sum() / (2 * np.maximum(counts, 1)), dtype=torch.float32, device=target)
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights)
    generator = torch.Generator().manual_seed(seed)
    # the value raw 0 (air outside the field of view, -1024 HU) takes after normalisation: fill of the warp
    fill = float(net.prepare(torch.full((1, 1, 1, 1), -float(HU_OFFSET), device=target)).flatten()[0])
    history = []
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    autocast = {"device_type": target.type, "dtype": torch.bfloat16, "enabled": target.type == "cuda"}
    with SliceLoader(store, rows, batch_size=batch_size, shuffle=True, seed=seed, drop_last=len(rows) > batch_size,
                     threads=threads, lung_only=net.config["lung_only"], storage_options=storage_options) as loader:
        batches = DeviceLoader(loader, str(target))
        total = epochs * len(loader)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: cosine_factor(step, total))
        for epoch in range(epochs):
            loader.set_epoch(epoch)
            net.train()
            started, seen, loss_sum, correct = time.perf_counter(), 0, 0.0, 0
            for images, targets, _ in tqdm(batches, desc=f"epoch {epoch + 1}/{epochs}", disable=not progress,
                                           leave=False):
                with torch.no_grad():
                    x = net.prepare(images)
                    if augmentation:
                        x = augment(x, generator=generator, fill=fill)
                with torch.autocast(**autocast):
                    logits = net.classify(x)
                    loss = loss_fn(logits.float(), targets)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                seen += len(targets)
                loss_sum += float(loss.detach()) * len(targets)
                correct += int((logits.argmax(1) == targets).sum())
            elapsed = time.perf_counter() - started
            with torch.autocast(**autocast):
                recalibrate_batchnorm(net, batches)
            row = {"epoch": epoch + 1, "slices": seen, "loss": loss_sum / max(seen, 1),
                   "accuracy": correct / max(seen, 1), "slices_per_s": seen / elapsed,
                   "lr": optimizer.param_groups[0]["lr"]}
            if validation is not None and len(validation):
                probabilities = predict_rows(net, store, validation, batch_size=batch_size, threads=threads,
                                             storage_options=storage_options,
                                             progress=f"validation {epoch + 1}/{epochs}" if progress else None)
                row["val_accuracy"] = float(((probabilities >= 0.5).astype(int) == validation["target"]).mean())
            history.append(row)
    net.eval()
    checkpoint = save_checkpoint(out_dir / "model.pt", net, extra={
        "fold": fold, "epochs": epochs, "seed": seed, "lr": peak, "history": json.dumps(history)})
    (out_dir / "history.json").write_text(json.dumps(history, indent=2))
    return TrainResult(Path(checkpoint), history, describe_splits(catalog, fold))

