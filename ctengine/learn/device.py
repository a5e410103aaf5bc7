"""The device vocabulary of every command and function (``cpu``, ``gpu`` or ``auto``), and batches on a device."""
from __future__ import annotations

from typing import Any

import torch

from ..constants import DEVICES
from .samples import raw_to_output


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


class DeviceLoader:
    """Wrap a :class:`~ctengine.learn.loader.SliceLoader` for a device: on CUDA, one raw copy per batch.

    On CUDA each raw batch is copied non-blocking on a side stream (the next
    batch is copied while the current one is used), then converted on the
    device to the loader's output; on the CPU the loader's batches are
    passed through. Yields (images in the loader's output (N, 1, y, x) on
    the device, targets on the device, rows).
    """

    def __init__(self, loader: Any, device: str = "cuda"):
        self.loader, self.device = loader, torch.device(device)
        self.stream = torch.cuda.Stream(device=self.device) if self.device.type == "cuda" else None
        self.copies = 0

    def __len__(self) -> int:
        return len(self.loader)

    def _to_device(self, batch: Any):
        with torch.cuda.stream(self.stream):
            images = batch.images.to(self.device, non_blocking=True)
            targets = batch.targets.to(self.device, non_blocking=True)
            self.copies += 1
            event = torch.cuda.Event()
            event.record(self.stream)
        return images, targets, batch, event

    def __iter__(self):
        if self.stream is None:
            for batch in self.loader:
                yield batch.images, batch.targets, batch.rows
            return
        staged = None
        for batch in self.loader.raw_batches():
            ready = self._to_device(batch)
            if staged is not None:
                yield self._finish(staged)
            staged = ready
        if staged is not None:
            yield self._finish(staged)

    def _finish(self, staged):
        images, targets, batch, event = staged
        torch.cuda.current_stream().wait_event(event)
        images.record_stream(torch.cuda.current_stream())
        out = raw_to_output(images, batch.slope, batch.intercept, output=self.loader.output,
                            window_hu=self.loader.window_hu)
        return out, targets, batch.rows
