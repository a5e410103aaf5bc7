"""Class-activation maps (Grad-CAM) of ctengine's classifier: where the network looked for COVID.

Grad-CAM (Selvaraju et al., ICCV 2017): the activations A_k of a backbone
stage, weighted by the spatial mean of d logit / d A_k, summed over the
channels k and kept where positive, then upsampled to the network input.
The maps are computed on the network's own input (after :meth:`prepare`:
lung-only, crop, normalisation and resize exactly as in training), so an
overlay shows what the network saw and where its COVID logit came from.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..constants import CLASS_COVID
from ..figures import figure, save_png

__all__ = ["LAYERS", "grad_cam", "save_overlays", "explain_patient"]

#: backbone stages a map can be taken from (strides 8, 16 and 32 of the network input)
LAYERS = ("C3", "C4", "C5")


def grad_cam(net: torch.nn.Module, hu: torch.Tensor, *, layer: str = "C4",
             target: int = CLASS_COVID) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grad-CAM of a batch of slices.

    Parameters
    ----------
    net : FPNClassifier
        A model of :func:`ctengine.learn.model.build_model` (eval mode is used, and restored).
    hu : torch.Tensor
        (N, C, H, W) float HU slices, as the loader feeds them.
    layer : {"C3", "C4", "C5"}
        Backbone stage of the map.
    target : int
        Class whose logit is explained (default COVID).

    Returns
    -------
    images : ndarray
        float32 (N, h, w): the first channel of the network input.
    cams : ndarray
        float32 (N, h, w) in [0, 1], each map divided by its own maximum (all 0 when nothing is positive).
    probability : ndarray
        float64 (N,): softmax probability of ``target``.

    Examples
    --------
    >>> from ctengine.learn.model import build_model
    >>> net = build_model("small", seed=0)
    >>> images, cams, p = grad_cam(net, torch.full((2, 1, 128, 128), -1000.0))
    >>> images.shape, cams.shape, p.shape, bool(((cams >= 0) & (cams <= 1)).all())
    ((2, 128, 128), (2, 128, 128), (2,), True)
    """
    if layer not in LAYERS:
        raise ValueError(f"layer must be one of {LAYERS}, got {layer!r}")
    taps: dict[str, torch.Tensor] = {}

    def keep(_module: Any, _inputs: Any, outputs: tuple[torch.Tensor, ...]) -> None:
        taps["A"] = outputs[LAYERS.index(layer)]
        taps["A"].retain_grad()

    was_training = net.training
    net.eval()
    handle = net.backbone.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            prepared = net.prepare(hu).detach()
            logits = net.classify(prepared)
            logits[:, target].sum().backward()
        activations, grads = taps["A"].detach(), taps["A"].grad.detach()
    finally:
        handle.remove()
        net.zero_grad(set_to_none=True)
        net.train(was_training)
    cams = F.relu((grads.mean(dim=(2, 3), keepdim=True) * activations).sum(dim=1, keepdim=True))
    cams = F.interpolate(cams, size=prepared.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cams.amax(dim=(1, 2), keepdim=True)
    cams = torch.where(peak > 0, cams / peak.clamp_min(1e-12), torch.zeros_like(cams))
    probability = torch.softmax(logits.detach().float(), 1)[:, target].double()
    return (prepared[:, 0].float().cpu().numpy(), cams.float().cpu().numpy(), probability.cpu().numpy())


def save_overlays(images: np.ndarray, cams: np.ndarray, titles: Sequence[str], path: str | os.PathLike, *,
                  columns: int = 4) -> Path:
    """A PNG of network inputs (grey) with their class-activation maps (jet, 40 % opaque) and titles."""
    n = len(images)
    if n == 0:
        raise ValueError("no images to draw")
    cols = min(columns, n)
    rows = -(-n // cols)
    fig, axes = figure(3.0 * cols, 3.2 * rows, rows=rows, cols=cols)
    axes = np.atleast_1d(axes).ravel()
    for ax, image, cam, title in zip(axes, images, cams, titles):
        lo, hi = float(np.min(image)), float(np.max(image))
        ax.imshow(image, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1)
        ax.imshow(cam, cmap="jet", alpha=0.4, vmin=0, vmax=1)
        ax.set_title(title, fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.suptitle("Grad-CAM of the COVID logit on the network input", fontsize=10)
    return save_png(fig, path)


def explain_patient(patient_dir: str | os.PathLike, *, checkpoint: str | os.PathLike, out: str | os.PathLike,
                    layer: str = "C4", count: int = 8, **predict: Any) -> dict[str, Any]:
    """:func:`~ctengine.learn.predict.predict_patient`, plus Grad-CAM overlays of up to ``count`` selected slices.

    Writes ``out/gradcam.png`` (slices spread over the selection, each titled with its file, COVID
    probability and prediction) and returns the prediction with ``"explain"``: the PNG's path and the
    files drawn.
    """
    from .device import resolve_device
    from .model import load_checkpoint
    from .predict import DECISION_SERIES, predict_series, read_patient_series

    read = read_patient_series(patient_dir, predict.pop("series", DECISION_SERIES))
    net, _ = load_checkpoint(checkpoint, map_location=resolve_device(predict.pop("device", "auto")))
    result, inputs = predict_series(net, read, **predict)
    files = [row["file"] for row in result["rows"] if row["selected"]]
    if not files:
        raise ValueError(f"no selected slice in {patient_dir}: nothing to explain")
    picks = np.unique(np.linspace(0, len(files) - 1, min(count, len(files))).round().astype(int))
    target = next(net.parameters()).device
    images, cams, probability = grad_cam(net, torch.from_numpy(inputs[picks]).to(target), layer=layer)
    titles = [f"{files[i]}\np(COVID) {p:.2f}" for i, p in zip(picks, probability)]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    png = save_overlays(images, cams, titles, out / "gradcam.png")
    return {**result, "explain": {"png": str(png), "layer": layer, "files": [files[i] for i in picks]}}
