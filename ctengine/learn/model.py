"""Slice classifier: ResNet50V2 backbone with a concatenating feature pyramid.

The network of Rahimzadeh et al. (2021) in plain PyTorch. A Keras-style
ResNetV2 backbone (pre-activation bottlenecks, the stride in the last block
of a stage, stage outputs 256/512/1024/2048 channels) feeds a feature
pyramid whose top-down path *concatenates* the upsampled coarser map with
the lateral 1 x 1 projection instead of adding them. Five pyramid levels
(P3..P7, as in the authors' code) are each classified by a small head; the
five pairs of outputs are concatenated and classified again by a final
dense layer.

Input: (N, 1, H, W) slices in Hounsfield units, float32 or integer (what
:class:`ctengine.learn.loader.SliceLoader` yields). The model converts them
to float32 raw units (raw = HU + 1024, the values the authors' network and
the viewer's normalisation take, identical to the stored uint16 values of
COVID-CTset), normalises them on the device (``config["normalization"]``),
resizes them to
``config["input_size"]`` if that is set (box average for an integer shrink
factor such as 512 -> 128, antialiased bilinear otherwise), and returns
logits (N, 2): column ``CLASS_NORMAL`` (0) is normal, ``CLASS_COVID`` (1)
is COVID, so ``softmax(logits, 1)[:, CLASS_COVID]`` is the COVID
probability.

Sizes: "resnet50v2-fpn" has 33.3 M parameters (backbone 23,513,088, the
Keras ResNet50V2 count for one input channel; pyramid 9.8 M); "small" has
0.28 M.

Deviations from the authors' Keras code, all documented in ``build_model``:
all 3 x 3 pyramid convolutions use "same" padding (P3 and P4 used "valid");
the default heads pool globally instead of flattening (``head="flatten"``
restores the flattening heads for a fixed input size); weights start from
PyTorch's default initialisation, not ImageNet.

References
----------
Rahimzadeh M, Attar A, Sakhaei SM. A fully automated deep learning-based
network for detecting COVID-19 from a new and large lung CT scan dataset.
Biomed Signal Process Control 2021;68:102588.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..constants import (CLASS_COVID, CLASS_NAMES, CLASS_NORMAL, FIXED_DIVISOR_RAW, HU_OFFSET,
                        LUNG_WINDOW_HU)
from .network import LEVELS, ConcatFPN, LevelHead, ResNetV2Backbone, level_sizes, resize

__all__ = [
    "ARCHITECTURES", "CLASS_COVID", "CLASS_NAMES", "CLASS_NORMAL", "NORMALIZATIONS",
    "FPNClassifier", "build_model", "crop_to_content", "load_checkpoint", "normalize_tensor", "parameter_count",
    "save_checkpoint",
]

#: normalisations applied on the device before the network (see `normalize_tensor`)
NORMALIZATIONS = ("none", "max", "fixed", "window")
#: head kinds: global average pooling or flattening (fixed input size)
HEADS = ("pool", "flatten")
CHECKPOINT_FORMAT = "ctengine.model/1"

_COMMON: dict[str, Any] = {
    "in_channels": 1,
    "num_classes": 2,
    "normalization": "max",
    "norm_constant": FIXED_DIVISOR_RAW,
    "window_hu": list(LUNG_WINDOW_HU),
    "head": "pool",
    "dropout": 0.5,
    "bn_momentum": 0.01,  # Keras momentum 0.99 in PyTorch's convention
    "lung_only": False,   # input slices with everything outside the lung mask set to raw 0 (data path)
    "crop": None,         # "lung": zoom each slice to the square around its lungs (needs lung_only)
}
#: default configuration of every named architecture
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "resnet50v2-fpn": {**_COMMON, "stem_channels": 64, "widths": [256, 512, 1024, 2048],
                       "blocks": [3, 4, 6, 3], "fpn_channels": 256, "input_size": None},
    "small": {**_COMMON, "stem_channels": 16, "widths": [32, 64, 128, 256],
              "blocks": [1, 1, 1, 1], "fpn_channels": 32, "input_size": 128,
              "bn_momentum": 0.1, "normalization": "window", "lung_only": True,
              "crop": "lung"},
}


def normalize_tensor(x: torch.Tensor, *, mode: str = "max", constant: float = FIXED_DIVISOR_RAW,
              window_hu: tuple[float, float] = LUNG_WINDOW_HU,
              hu_offset: float = HU_OFFSET) -> torch.Tensor:
    """Normalise raw slices on their device.

    Parameters
    ----------
    x : torch.Tensor
        Float tensor (N, C, H, W) in raw units (raw = HU + ``hu_offset``).
    mode : {"none", "max", "fixed", "window"}
        "none": unchanged (the authors fed raw values). "max": each image
        divided by its own maximum, ``float32(x / max(x))`` as the dataset's
        viewer does; an image whose maximum is <= 0 becomes all zeros.
        "fixed": ``x / constant``. "window": lung window, HU clipped to
        ``[centre - width/2, centre + width/2]`` and scaled to [0, 1].
    constant : float
        Divisor of "fixed" (raw units).
    window_hu : (float, float)
        (centre, width) of "window" in HU.
    hu_offset : float
        raw - HU.

    Returns
    -------
    torch.Tensor
        Same shape, dtype and device as `x`.

    Examples
    --------
    >>> raw = torch.tensor([[[[0.0, 424.0, 1174.0, 2000.0]]]])
    >>> normalize_tensor(raw, mode="window")
    tensor([[[[0.2173, 0.5000, 1.0000, 1.0000]]]])
    >>> normalize_tensor(raw, mode="max")
    tensor([[[[0.0000, 0.2120, 0.5870, 1.0000]]]])
    """
    if not torch.is_floating_point(x):
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    if x.ndim != 4:
        raise ValueError(f"x must be (N, C, H, W), got shape {tuple(x.shape)}")
    if mode == "none":
        return x
    if mode == "max":
        peak = x.amax(dim=(1, 2, 3), keepdim=True)
        positive = peak > 0
        # x / max(x), the same float32 division as the viewer; 0 where max <= 0
        return (x / torch.where(positive, peak, torch.ones_like(peak))).masked_fill_(~positive, 0.0)
    if mode == "fixed":
        if not constant > 0:
            raise ValueError(f"constant must be > 0, got {constant!r}")
        return x / constant
    if mode == "window":
        centre, width = (float(v) for v in window_hu)
        if not width > 0:
            raise ValueError(f"window width must be > 0 HU, got {width!r}")
        low = centre - width / 2 + hu_offset  # in raw units
        return (x - low).div_(width).clamp_(0.0, 1.0)
    raise ValueError(f"mode must be one of {NORMALIZATIONS}, got {mode!r}")


def crop_to_content(x: torch.Tensor, hw: tuple[int, int], *, min_side: int = 64) -> torch.Tensor:
    """Each image's square around its pixels > 0 (the lungs of lung-only input), resized to `hw`.

    The square is centred on the bounding box of ``x > 0`` (over channels),
    as large as the box's longer side (at least `min_side` pixels, at most
    the image's shorter side) and shifted to stay inside the image; an image
    with no pixel > 0 is taken whole. Antialiased bilinear resize.
    """
    n, _, h, w = x.shape
    present = (x > 0).any(dim=1)
    rows, cols = present.any(dim=2), present.any(dim=1)
    # first and last row / column holding content, one transfer for the whole batch
    bounds = torch.stack([rows.any(1).long(), rows.long().argmax(1), h - 1 - rows.flip(1).long().argmax(1),
                          cols.long().argmax(1), w - 1 - cols.flip(1).long().argmax(1)], 1).tolist()
    out = []
    for i, (found, y0, y1, x0, x1) in enumerate(bounds):
        image = x[i:i + 1]
        if found:
            side = min(max(y1 - y0 + 1, x1 - x0 + 1, min_side), h, w)
            top = min(max((y0 + y1 + 1 - side) // 2, 0), h - side)
            left = min(max((x0 + x1 + 1 - side) // 2, 0), w - side)
            image = image[:, :, top:top + side, left:left + side]
        out.append(resize(image, hw) if image.shape[-2:] != hw else image)
    return torch.cat(out)


class FPNClassifier(nn.Module):
    """Backbone + concatenating FPN + five level heads + final dense layer.

    Build it with `build_model`; ``.config`` is a plain JSON-compatible dict.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config = dict(config)
        c = self.config
        self.backbone = ResNetV2Backbone(in_channels=c["in_channels"], stem_channels=c["stem_channels"],
                                         widths=c["widths"], blocks=c["blocks"],
                                         bn_momentum=c["bn_momentum"])
        f = c["fpn_channels"]
        self.fpn = ConcatFPN(self.backbone.channels, f)
        flatten = c["head"] == "flatten"
        sizes = level_sizes(self._input_hw()) if flatten else None
        self.heads = nn.ModuleList(
            LevelHead(f * (sizes[lvl][0] * sizes[lvl][1] if flatten else 1), c["num_classes"],
                       flatten=flatten, dropout=c["dropout"]) for lvl in LEVELS)
        self.classifier = nn.Linear(len(LEVELS) * c["num_classes"], c["num_classes"])

    def _input_hw(self) -> tuple[int, int]:
        s = self.config["input_size"]
        return (s, s) if isinstance(s, int) else (int(s[0]), int(s[1]))

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """HU (N, C, H, W) slices -> float32 raw units (HU + 1024), normalised, resized network input.

        Float32 or integer HU; raw = HU + 1024 is exact in float32 for
        integer HU, so the network sees the stored raw values of a COVID-CTset
        slice.
        """
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim != 4 or x.shape[1] != self.config["in_channels"]:
            raise ValueError(f"x must be (N, {self.config['in_channels']}, H, W), got {tuple(x.shape)}")
        if x.dtype == torch.uint16:
            raise TypeError("x must be HU (float32 or a signed integer dtype), got uint16 raw values: "
                            "convert with ctengine.learn.samples.raw_to_output")
        x = x.to(torch.float32) + float(HU_OFFSET)  # the raw units of the authors' network
        c = self.config
        if c["crop"] == "lung":   # on raw values: the lungs are the pixels > 0 (HU > -1024) of lung-only input
            x = crop_to_content(x, self._input_hw() if c["input_size"] is not None else tuple(x.shape[-2:]))
        x = normalize_tensor(x, mode=c["normalization"], constant=c["norm_constant"],
                      window_hu=tuple(c["window_hu"]))
        if c["input_size"] is not None:
            x = resize(x, self._input_hw())
        return x

    def pyramid(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Backbone taps (C3, C4, C5), merged maps (M3..M5) and levels (P3..P7) of HU `x`."""
        c3, c4, c5 = self.backbone(self.prepare(x))
        return {"C3": c3, "C4": c4, "C5": c5, **self.fpn(c3, c4, c5)}

    def classify(self, prepared: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) of a batch that :meth:`prepare` already normalised and resized.

        ``net.classify(net.prepare(x))`` equals ``net(x)``; training augments
        between the two steps.
        """
        levels = self.fpn(*self.backbone(prepared))
        per_level = [head(levels[lvl]) for lvl, head in zip(LEVELS, self.heads)]
        return self.classifier(torch.cat(per_level, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) of HU slices (N, C, H, W); column 1 is COVID."""
        return self.classify(self.prepare(x))


def _plain_config(name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    if name not in ARCHITECTURES:
        raise ValueError(f"name must be one of {sorted(ARCHITECTURES)}, got {name!r}")
    config = {"name": name, **ARCHITECTURES[name]}
    unknown = sorted(set(overrides) - set(config))
    if unknown:
        raise ValueError(f"unknown config keys {unknown!r}; known: {sorted(config)}")
    config.update(overrides)
    for key in ("widths", "blocks", "window_hu"):
        config[key] = list(config[key])
    if isinstance(config["input_size"], (tuple, list)):
        config["input_size"] = [int(v) for v in config["input_size"]]
    if config["normalization"] not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {config['normalization']!r}")
    if config["head"] not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {config['head']!r}")
    if config["head"] == "flatten" and config["input_size"] is None:
        raise ValueError("head='flatten' needs a fixed input_size (for example 512)")
    if not 0.0 < float(config["bn_momentum"]) <= 1.0:
        raise ValueError(f"bn_momentum must be in (0, 1], got {config['bn_momentum']!r}")
    if not isinstance(config["lung_only"], bool):
        raise ValueError(f"lung_only must be True or False, got {config['lung_only']!r}")
    if config["crop"] not in (None, "lung"):
        raise ValueError(f"crop must be None or 'lung', got {config['crop']!r}")
    if config["crop"] == "lung" and not config["lung_only"]:
        raise ValueError("crop='lung' needs lung_only=True (the lungs are the pixels > 0 of lung-only input)")
    if not 0.0 <= float(config["dropout"]) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {config['dropout']!r}")
    return json.loads(json.dumps(config))  # plain JSON types only


def build_model(name: str = "small", *, seed: int | None = None, **config: Any) -> FPNClassifier:
    """Build a classifier by name, with configuration overrides.

    Parameters
    ----------
    name : {"small", "resnet50v2-fpn"}
        "resnet50v2-fpn": the authors' network (backbone 23.5 M parameters,
        stages 3/4/6/3, widths 256..2048, pyramid 256 channels, native
        input size). "small": the same structure with one block per stage,
        widths 32..256, 32 pyramid channels, input resized to 128 x 128,
        lung window, lung-only input zoomed to the lungs.
    seed : int, optional
        Seed of the weight initialisation (the global RNG is left untouched).
    **config
        Overrides of ``ARCHITECTURES[name]``: ``normalization`` (see
        `normalize_tensor`), ``norm_constant`` (raw), ``window_hu`` ((centre, width)
        HU), ``input_size`` (None keeps the input size, int or (H, W) resizes
        on the device, pixels), ``head`` ("pool" or "flatten"; "flatten"
        needs ``input_size``), ``dropout``, ``bn_momentum`` (PyTorch
        convention; 0.01 is Keras' 0.99, the small model uses 0.1 so that
        short runs get usable running statistics), ``stem_channels``, ``widths``,
        ``blocks``, ``fpn_channels``, ``in_channels``, ``num_classes``, and
        ``lung_only``: the network is fed slices whose pixels outside the
        stored lung mask are set to raw 0 (the loaders of training,
        evaluation and prediction read it from the checkpoint's config).
        ``crop`` ("lung" or None): each slice is cut to the square around
        its lungs (`crop_to_content`) before the resize, so the lungs fill
        the network's input. The small model defaults to the lung window,
        ``lung_only`` and ``crop="lung"``: with a handful of COVID patients
        to learn from, the whole slice lets it tell patients apart by body
        shape instead of finding lesions, and at 128 x 128 the zoom keeps
        small lesions visible.

    Returns
    -------
    FPNClassifier
        In training mode; ``.config`` holds ``name`` and every option.

    Examples
    --------
    >>> model = build_model("small", seed=0)
    >>> model(torch.zeros(2, 1, 64, 64)).shape
    torch.Size([2, 2])
    """
    cfg = _plain_config(name, config)
    if seed is None:
        return FPNClassifier(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return FPNClassifier(cfg)


def parameter_count(module: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters (BatchNorm running statistics are buffers, not counted)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def _check_plain(obj: Any, where: str = "extra") -> None:
    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor)):
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where} keys must be str or int, got {k!r}")
            _check_plain(v, f"{where}[{k!r}]")
        return
    raise TypeError(f"{where} must hold only None, bool, int, float, str, tensors, lists and "
                    f"dicts (weights_only loading), got {type(obj).__name__}")


def save_checkpoint(path: str | os.PathLike, model: FPNClassifier, *,
                    extra: dict[str, Any] | None = None) -> Path:
    """Write weights, config (JSON string) and `extra` to a .pt file atomically.

    `extra` (epoch, fold, metrics, optimizer state, ...) may hold only plain
    Python values and tensors, so `load_checkpoint` can use
    ``torch.load(weights_only=True)``.
    """
    if not isinstance(model, FPNClassifier):
        raise TypeError(f"model must be an FPNClassifier, got {type(model).__name__}")
    _check_plain(extra)
    path = Path(path)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": json.dumps(model.config, sort_keys=True),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": {} if extra is None else extra,
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu"
                    ) -> tuple[FPNClassifier, dict[str, Any]]:
    """Rebuild the model of a `save_checkpoint` file; return (model in eval mode, extra)."""
    payload = torch.load(Path(path), map_location=map_location, weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{str(path)!r} is not a {CHECKPOINT_FORMAT} checkpoint")
    config = json.loads(payload["config"])
    model = build_model(config.pop("name"), **config)
    model.load_state_dict(payload["state_dict"])
    return model.to(map_location).eval(), payload["extra"]
