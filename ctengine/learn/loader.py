"""Zero-copy batches of slices from a store into PyTorch.

Each slice is one compressed chunk inside its series' shard. The loader
reads the shard indexes once, then for every batch reads the chunks' bytes
and decompresses each straight into its place in a preallocated batch
buffer (pinned host memory when CUDA is present); the tensor handed out is
``torch.from_numpy`` of that buffer, so nothing is copied between
decompression and the tensor. Buffers are reused round-robin: a batch stays
valid until ``prefetch + 1`` further batches have been drawn.

On a CUDA device each batch is copied to the GPU once (non-blocking, on a
side stream, double-buffered), converted and normalised there.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import pandas as pd

from ..constants import CLASS_NAMES, RAW_DTYPE
from ..store import ChunkReader, Store, names, open_store


def slice_rows(catalog: pd.DataFrame, *, fold: int | None = None, split: str | None = None,
               selected_only: bool = True, series: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Rows of the catalog to load: a fold's split, selected slices (when known), chosen series.

    The target of a row is its slice label when labelled, else the patient's.
    """
    rows = catalog
    if fold is not None:
        column = f"fold{fold}"
        if column not in rows or not (rows[column] != "").any():
            raise ValueError(f"the catalog has no fold {fold}: make folds first (ctengine.folds)")
        if split is not None:
            rows = rows[rows[column].str.split("+").map(lambda parts: split in parts)]
    if selected_only and "selected" in rows:
        rows = rows[rows["selected"].astype(bool) | rows["labelled"].astype(bool)]
    if series is not None:
        rows = rows[rows["series"].isin(series)]
    rows = rows.copy()
    target = rows["slice_label"].where(rows["slice_label"] != "", rows["label"])
    unknown = sorted(set(target) - set(CLASS_NAMES))
    if unknown:
        raise ValueError(f"rows without a covid/normal target: {unknown}")
    rows["target"] = target.map({name: i for i, name in enumerate(CLASS_NAMES)}).astype("int64")
    return rows.reset_index(drop=True)


def apply_lung_only(raw: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The lung-only input rule, in place: every raw pixel outside the lung mask becomes raw 0 (air).

    Parameters
    ----------
    raw : ndarray
        Raw slices (..., y, x), uint16.
    mask : ndarray
        Lung mask of the same shape (0 background, 1 right, 2 left lung).

    Returns
    -------
    ndarray
        ``raw``.

    Examples
    --------
    >>> apply_lung_only(np.array([[5, 6]], dtype=np.uint16), np.array([[0, 2]], dtype=np.uint8))
    array([[0, 6]], dtype=uint16)
    """
    np.copyto(raw, 0, where=mask == 0)
    return raw


def read_slice(reader: ChunkReader, patient: str, series: str, z: int, n_slices: int, out: np.ndarray, *,
               scratch: np.ndarray | None = None) -> None:
    """Decode raw slice ``z`` of a series into ``out``; with ``scratch`` (uint8 (y, x)), lung only.

    Lung only: the stored lung mask is decoded into ``scratch`` and
    :func:`apply_lung_only` applied.
    """
    reader.read_into(patient, series, z, n_slices, out)
    if scratch is not None:
        reader.read_into(patient, series, z, n_slices, scratch, names.LUNG_ARRAY)
        apply_lung_only(out, scratch)


@dataclass
class Batch:
    """One batch: raw uint16 images (N, 1, y, x) sharing the loader's buffer, targets (N,), catalog rows."""

    images: Any
    targets: Any
    rows: pd.DataFrame


class SliceLoader:
    """Iterate batches of raw slices from a store, zero-copy, with background prefetch.

    Parameters
    ----------
    store : str
        Store path or fsspec URL.
    rows : DataFrame
        What to load (see :func:`slice_rows`): patient, series, z, target.
    batch_size : int
    shuffle : bool
        Shuffle deterministically from ``seed`` and the epoch (:meth:`set_epoch`).
    drop_last : bool
    threads : int
        Decoding threads (blosc releases the GIL).
    prefetch : int
        Batches decoded ahead.
    rank, world_size : int
        Shard the rows across ``torch.distributed`` ranks (default: from
        torch.distributed when initialised). Every rank gets the same count.
    pin_memory : bool, optional
        Page-locked buffers (default: when CUDA is available).
    lung_only : bool
        Set every pixel outside the stored lung mask to raw 0 (air, -1024 HU);
        needs the masks of ``ctengine features``.
    """

    def __init__(self, store: str | os.PathLike, rows: pd.DataFrame, *, batch_size: int = 16, shuffle: bool = False,
                 seed: int = 0, drop_last: bool = False, threads: int = 2, prefetch: int = 2,
                 rank: int | None = None, world_size: int | None = None, pin_memory: bool | None = None,
                 storage_options: dict | None = None, lung_only: bool = False):
        import torch

        if batch_size < 1 or threads < 1 or prefetch < 0:
            raise ValueError(f"batch_size and threads must be >= 1, prefetch >= 0 "
                             f"(got {batch_size}, {threads}, {prefetch})")
        self.rows = rows.reset_index(drop=True)
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last
        self.threads, self.prefetch, self.epoch = threads, prefetch, 0
        self.rank, self.world_size = _distributed(rank, world_size)
        opened = open_store(store, storage_options=storage_options)
        self.reader = ChunkReader(opened)
        self._items = list(zip(self.rows["patient"], self.rows["series"], self.rows["z"].astype(int)))
        self._lengths = {k: opened.raw(*k).shape[0] for k in self.rows.groupby(["patient", "series"]).groups}
        shapes = {opened.raw(*k).shape[1:] for k in self._lengths}
        if len(shapes) > 1:
            raise ValueError(f"slices of different shapes cannot share a batch: {sorted(shapes)}")
        self.shape = shapes.pop() if shapes else (0, 0)
        pin = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.buffers = [torch.empty((batch_size, 1, *self.shape), dtype=torch.uint16, pin_memory=pin)
                        for _ in range(prefetch + 2)]
        self.lung_only = lung_only
        if lung_only:
            _require_lung_masks(opened, list(self._lengths))
        # one mask buffer per decoding part (batches are filled one at a time by the prefetch thread)
        self._scratch = [np.empty(self.shape, dtype=np.uint8) for _ in range(threads)] if lung_only else []
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ctengine-loader")

    def set_epoch(self, epoch: int) -> None:
        """Choose the shuffle of the next iteration (same seed and epoch -> same order)."""
        self.epoch = epoch

    def order(self) -> np.ndarray:
        """Row indices of this rank for the current epoch."""
        n = len(self.rows)
        order = np.arange(n)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(n)
        per_rank = n // self.world_size if self.drop_last else -(-n // self.world_size)
        padded = np.resize(order, per_rank * self.world_size) if n else order
        return padded[self.rank::self.world_size][:per_rank]

    def __len__(self) -> int:
        n = len(self.order())
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _fill(self, buffer, indices: np.ndarray) -> Batch:
        import torch

        array = buffer.numpy()
        rows = self.rows.iloc[indices]
        parts = np.array_split(np.arange(len(indices)), min(self.threads, len(indices)))

        def work(number: int) -> None:
            for i in parts[number]:
                patient, series, z = self._items[indices[i]]
                n = self._lengths[(patient, series)]
                read_slice(self.reader, patient, series, z, n, array[i, 0],
                           scratch=self._scratch[number] if self.lung_only else None)

        list(self._pool.map(work, range(len(parts))))
        n = len(indices)
        return Batch(buffer[:n], torch.from_numpy(np.array(rows["target"], dtype=np.int64)), rows)

    def __iter__(self) -> Iterator[Batch]:
        order = self.order()
        starts = list(range(0, len(order), self.batch_size))
        if self.drop_last:
            starts = [s for s in starts if s + self.batch_size <= len(order)]
        pending: list = []
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ctengine-prefetch") as ahead:
            for number, start in enumerate(starts):
                buffer = self.buffers[number % len(self.buffers)]
                pending.append(ahead.submit(self._fill, buffer, order[start:start + self.batch_size]))
                if len(pending) > self.prefetch:
                    yield pending.pop(0).result()
            for future in pending:
                yield future.result()

    def close(self) -> None:
        self._pool.shutdown()
        self.reader.close()

    def __enter__(self) -> "SliceLoader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _require_lung_masks(opened: Store, series: list[tuple[str, str]]) -> None:
    """ValueError naming the series that have no stored lung mask (lung-only input needs them)."""
    missing = ["/".join(key) for key in series if not opened.has_lung_mask(*key)]
    if missing:
        raise ValueError(f"{opened.url}: {len(missing)} series have no lung mask ({', '.join(missing[:5])}"
                         f"{', ...' if len(missing) > 5 else ''}); lung-only input needs them: run "
                         f"`ctengine features {opened.url}` (a series whose features failed is listed in its report)")


def _distributed(rank: int | None, world_size: int | None) -> tuple[int, int]:
    import torch.distributed as dist

    if rank is None or world_size is None:
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    return rank, world_size


class DeviceLoader:
    """Wrap a :class:`SliceLoader` for a CUDA device: one host-to-device copy per batch.

    Each batch's uint16 buffer is copied non-blocking on a side stream (the
    next batch is copied while the current one is used), then converted to
    float32 on the device. Yields (images float32 (N, 1, y, x) on the
    device, targets on the device, rows).
    """

    def __init__(self, loader: SliceLoader, device: str = "cuda"):
        import torch

        self.loader, self.device = loader, torch.device(device)
        self.stream = torch.cuda.Stream(device=self.device) if self.device.type == "cuda" else None
        self.copies = 0

    def __len__(self) -> int:
        return len(self.loader)

    def _to_device(self, batch: Batch):
        import torch

        if self.stream is None:
            return batch.images.to(torch.float32), batch.targets, batch.rows, None
        with torch.cuda.stream(self.stream):
            images = batch.images.to(self.device, non_blocking=True)
            targets = batch.targets.to(self.device, non_blocking=True)
            self.copies += 1
            event = torch.cuda.Event()
            event.record(self.stream)
        return images, targets, batch.rows, event

    def __iter__(self):
        import torch

        staged = None
        for batch in self.loader:
            ready = self._to_device(batch)
            if staged is not None:
                yield _finish(staged)
            staged = ready
        if staged is not None:
            yield _finish(staged)


def _finish(staged):
    import torch

    images, targets, rows, event = staged
    if event is not None:
        torch.cuda.current_stream().wait_event(event)
        images.record_stream(torch.cuda.current_stream())
    return images.to(torch.float32), targets, rows


class SliceDataset:
    """A plain ``torch.utils.data.Dataset`` view: item i -> (raw uint16 tensor (1, y, x), target).

    ``lung_only`` as in :class:`SliceLoader`.
    """

    def __init__(self, store: str | os.PathLike, rows: pd.DataFrame, *, storage_options: dict | None = None,
                 lung_only: bool = False):
        self.url, self.rows, self.storage_options = os.fspath(store), rows.reset_index(drop=True), storage_options
        self.lung_only = lung_only
        self._reader: ChunkReader | None = None
        self._lengths: dict[tuple[str, str], int] | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        import torch

        if self._reader is None:  # opened lazily: each DataLoader worker process gets its own
            opened = open_store(self.url, storage_options=self.storage_options)
            self._reader = ChunkReader(opened)
            self._lengths = {k: opened.raw(*k).shape[0] for k in self.rows.groupby(["patient", "series"]).groups}
            self._shape = opened.raw(*next(iter(self._lengths))).shape[1:]
        row = self.rows.iloc[i]
        key = (row["patient"], row["series"])
        out = np.empty((1, *self._shape), dtype=RAW_DTYPE)
        read_slice(self._reader, key[0], key[1], int(row["z"]), self._lengths[key], out[0],
                   scratch=np.empty(self._shape, dtype=np.uint8) if self.lung_only else None)
        return torch.from_numpy(out), int(row["target"])
