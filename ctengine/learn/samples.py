"""What the loaders hand to PyTorch: HU tensors (or a window) from raw slices, and dictionary samples.

Slices are stored raw (uint16, HU = raw * slope + intercept); a model, a
MONAI or TorchIO transform wants Hounsfield units, signed, in a dtype torch
computes with. :func:`raw_to_output` converts a raw batch, on its device and
into a given buffer, to one of :data:`OUTPUTS`; :func:`sample_dict` is the
dictionary form of one slice (keys ``image``, ``label``, ``patient``,
``series``, ``instance``, ``spacing_mm`` and ``mask``), the form MONAI's
dictionary transforms (``ScaleIntensityRanged(keys="image", ...)``,
``RandFlipd(keys=["image", "mask"])``) and TorchIO subjects take.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..constants import LUNG_WINDOW_HU

__all__ = ["OUTPUTS", "check_output", "output_dtype", "raw_to_output", "sample_dict"]

#: "hu": float32 HU; "hu_int32": int32 HU (exact; slope 1 and an integer intercept);
#: "window": float32 in [0, 1], HU clipped to a (centre, width) window and scaled
OUTPUTS = ("hu", "hu_int32", "window")


def check_output(output: str, window_hu: Any = LUNG_WINDOW_HU) -> tuple[str, tuple[float, float]]:
    """Validate an output name and window; return ``(output, (centre, width))``.

    Raises
    ------
    ValueError
        Unknown output; window not two finite numbers with width > 0 HU.
    """
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
    try:
        centre, width = (float(v) for v in window_hu)
    except (TypeError, ValueError):
        raise ValueError(f"window_hu must be (centre, width) in HU, got {window_hu!r}") from None
    if not (math.isfinite(centre) and math.isfinite(width) and width > 0):
        raise ValueError(f"window_hu must be finite with width > 0 HU, got {window_hu!r}")
    return output, (centre, width)


def output_dtype(output: str) -> torch.dtype:
    """torch dtype of an output: int32 for "hu_int32", float32 otherwise."""
    return torch.int32 if check_output(output)[0] == "hu_int32" else torch.float32


def raw_to_output(raw: torch.Tensor, slope: Any, intercept: Any, *, output: str = "hu",
                  window_hu: tuple[float, float] = LUNG_WINDOW_HU, out: torch.Tensor | None = None) -> torch.Tensor:
    """Raw slices (N, ...) -> HU (float32 or int32) or a window in [0, 1] (float32), on raw's device.

    Parameters
    ----------
    raw : torch.Tensor
        Raw values (N, ...), uint16 (or any integer dtype).
    slope, intercept : float or sequence of N floats
        Rescale of each image: HU = raw * slope + intercept.
    output : {"hu", "hu_int32", "window"}
    window_hu : (float, float)
        (centre, width) in HU of "window": HU clipped to
        [centre - width / 2, centre + width / 2], scaled to [0, 1].
    out : torch.Tensor, optional
        Buffer of raw's shape and the output's dtype, written in place
        (no allocation for slope 1 and integer intercepts).

    Returns
    -------
    torch.Tensor
        ``out`` or a new tensor. With slope 1 and an integer intercept (every
        COVID-CTset series) HU is exact in float32 and int32; otherwise it is
        computed in float64 and rounded once to float32.

    Raises
    ------
    ValueError
        Bad output or window; "hu_int32" for a series whose HU are not integers;
        ``out`` of the wrong shape or dtype.

    Examples
    --------
    >>> raw = torch.tensor([[0, 1024, 1174]], dtype=torch.uint16)
    >>> raw_to_output(raw, 1.0, -1024.0)
    tensor([[-1024.,     0.,   150.]])
    >>> raw_to_output(raw, 1.0, -1024.0, output="window", window_hu=(-600.0, 1500.0))
    tensor([[0.2173, 0.9000, 1.0000]])
    """
    output, (centre, width) = check_output(output, window_hu)
    dtype = output_dtype(output)
    if out is None:
        out = torch.empty(raw.shape, dtype=dtype, device=raw.device)
    elif out.shape != raw.shape or out.dtype != dtype:
        raise ValueError(f"out must be {dtype} of shape {tuple(raw.shape)}, got {out.dtype} {tuple(out.shape)}")
    n = raw.shape[0] if raw.ndim else 1
    slope = np.broadcast_to(np.asarray(slope, dtype=np.float64), (n,))
    intercept = np.broadcast_to(np.asarray(intercept, dtype=np.float64), (n,))
    shape = (n,) + (1,) * max(raw.ndim - 1, 0)
    if n == 0:
        return out
    if np.all(slope == 1.0) and np.all(intercept == np.round(intercept)):  # uint16 is exact in float32 and int32
        shift = intercept.astype(np.float32 if dtype == torch.float32 else np.int32).reshape(shape)
        if raw.device.type == "cpu" and out.device.type == "cpu":
            # one pass, single-threaded: the loader's decode threads call this and torch's own thread pool
            # would oversubscribe the cores (measured: 2 decode threads 5,500 -> 7,000 slices/s)
            np.add(raw.numpy(), shift, out=out.numpy())
        else:
            out.copy_(raw)
            out.add_(torch.from_numpy(shift).to(out.device))
    elif output == "hu_int32":
        raise ValueError("hu_int32 needs slope 1 and an integer intercept (integer HU); use output='hu'")
    else:
        rescale = [torch.tensor(np.array(v), dtype=torch.float64, device=out.device).reshape(shape)
                   for v in (slope, intercept)]
        out.copy_(raw.to(torch.float64) * rescale[0] + rescale[1])
    if output == "window":
        out.sub_(centre - width / 2).div_(width).clamp_(0.0, 1.0)
    return out


def sample_dict(image: torch.Tensor, *, label: int, patient: str, series: str, instance: int,
                spacing_mm: tuple[float, float] | None, mask: torch.Tensor | None = None) -> dict[str, Any]:
    """The dictionary form of one slice, for MONAI dictionary transforms and TorchIO.

    Parameters
    ----------
    image : torch.Tensor
        (1, y, x) float32 HU (or the loader's output).
    label : int
        Class index (0 normal, 1 COVID).
    patient, series : str
    instance : int
        Instance number of the slice in its series.
    spacing_mm : (float, float) or None
        Pixel spacing (y, x) in mm; NaN when unknown.
    mask : torch.Tensor, optional
        (1, y, x) uint8 lung mask (0 background, 1 right, 2 left lung).

    Returns
    -------
    dict
        ``image``, ``label`` (int), ``patient``, ``series``, ``instance`` (int),
        ``spacing_mm`` (float64 tensor (2,)), and ``mask`` when given; a torch
        DataLoader collates these into batches of the same keys.
    """
    spacing = (math.nan, math.nan) if spacing_mm is None else tuple(float(v) for v in spacing_mm)
    sample = {"image": image, "label": int(label), "patient": str(patient), "series": str(series),
              "instance": int(instance), "spacing_mm": torch.tensor(spacing, dtype=torch.float64)}
    if mask is not None:
        sample["mask"] = mask
    return sample
