"""The device vocabulary of every command and function: ``cpu``, ``gpu`` or ``auto``."""
from __future__ import annotations

import torch

from ..constants import DEVICES


def resolve_device(device: str) -> torch.device:
    """The torch device of a device name.

    Parameters
    ----------
    device : {"auto", "cpu", "gpu"}
        ``"auto"``: the GPU when CUDA is available, else the CPU. ``"cuda"``
        is accepted as a spelling of ``"gpu"``.

    Returns
    -------
    torch.device

    Raises
    ------
    ValueError
        For another name, or ``"gpu"`` without CUDA.

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    name = "gpu" if device == "cuda" else device
    if name not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if name == "auto":
        name = "gpu" if torch.cuda.is_available() else "cpu"
    if name == "gpu" and not torch.cuda.is_available():
        raise ValueError("device 'gpu' needs CUDA, which torch does not see on this machine")
    return torch.device("cuda" if name == "gpu" else "cpu")
