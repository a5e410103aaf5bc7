"""Batches of slices from a store into PyTorch, in Hounsfield units, with as few copies as possible.

Each slice is one compressed chunk inside its series' shard. The loader
reads the shard indexes once, then for every batch reads the chunks' bytes
and decompresses each straight into its place in a preallocated raw
(uint16) batch buffer; one pass then converts the batch into a reused
output buffer (float32 HU by default, int32 HU, or a window in [0, 1]:
:data:`~ctengine.learn.samples.OUTPUTS`), and the tensor handed out is a
view of that buffer (``torch.from_numpy`` memory, pinned when CUDA is
present). Buffers are reused round-robin: a batch stays valid until
``prefetch + 1`` further batches have been drawn. Raw uint16 never leaves
the loader except through :meth:`SliceLoader.raw_batches`.

On a CUDA device each raw batch is copied to the GPU once (non-blocking, on
a side stream, double-buffered: half the bytes of float32) and converted
there.

:class:`SliceDataset` is a ``torch.utils.data.Dataset`` of the same values,
item by item, as ``(image, target)`` or, with ``as_dict=True``, as the
dictionary samples (``image``, ``label``, ``patient``, ``series``,
``instance``, ``spacing_mm``, ``mask``) of MONAI's dictionary transforms.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import pandas as pd
import torch

from ..constants import CLASS_NAMES, LUNG_WINDOW_HU, RAW_DTYPE
from ..store import ChunkReader, Store, names, open_store
from .device import DeviceLoader
from .samples import check_output, output_dtype, raw_to_output, sample_dict

__all__ = ["Batch", "DeviceLoader", "SliceDataset", "SliceLoader", "apply_lung_only", "read_slice", "slice_rows"]


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
    """One batch: images (N, 1, y, x) sharing one of the loader's buffers, targets (N,), catalog rows.

    ``images`` are in the loader's output (float32 HU by default), or raw
    uint16 from :meth:`SliceLoader.raw_batches`; ``slope``, ``intercept``
    (N,) rescale raw to HU and ``spacing_mm`` (N, 2) is the pixel spacing
    (y, x) in mm (NaN when unknown).
    """

    images: Any
    targets: Any
    rows: pd.DataFrame
    slope: np.ndarray | None = None
    intercept: np.ndarray | None = None
    spacing_mm: np.ndarray | None = None

    def as_dict(self) -> dict[str, Any]:
        """The batch in the dictionary form of collated :class:`SliceDataset` samples.

        Keys ``image``, ``label``, ``patient`` and ``series`` (lists of str),
        ``instance`` (int64 tensor (N,)), ``spacing_mm`` (float64 tensor (N, 2)).
        """
        return {"image": self.images, "label": self.targets, "patient": self.rows["patient"].tolist(),
                "series": self.rows["series"].tolist(),
                "instance": torch.tensor(self.rows["instance"].to_numpy(dtype=np.int64)),
                "spacing_mm": torch.tensor(np.asarray(self.spacing_mm, dtype=np.float64))}


def _series_info(opened: Store, keys: list[tuple[str, str]]) -> dict[tuple[str, str], tuple]:
    """(slices, (y, x) shape, slope, intercept, spacing (y, x) mm or NaN) of each series."""
    info = {}
    for key in keys:
        raw = opened.raw(*key)
        attrs = opened.series_attrs(*key)
        slope, intercept = names.rescale(attrs)
        info[key] = (raw.shape[0], tuple(raw.shape[1:]), slope, intercept,
                     names.spacing(attrs) or (float("nan"), float("nan")))
    return info


class SliceLoader:
    """Iterate batches of slices from a store as float32 HU (or int32 HU, or a window), with prefetch.

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
    output : {"hu", "hu_int32", "window"}
        What the batches hold: float32 HU (HU = raw * slope + intercept of
        each series), int32 HU, or float32 in [0, 1] for ``window_hu``.
    window_hu : (float, float)
        (centre, width) in HU of ``output="window"`` (default: lung window).
    """

    def __init__(self, store: str | os.PathLike, rows: pd.DataFrame, *, batch_size: int = 16, shuffle: bool = False,
                 seed: int = 0, drop_last: bool = False, threads: int = 2, prefetch: int = 2,
                 rank: int | None = None, world_size: int | None = None, pin_memory: bool | None = None,
                 storage_options: dict | None = None, lung_only: bool = False, output: str = "hu",
                 window_hu: tuple[float, float] = LUNG_WINDOW_HU):
        if batch_size < 1 or threads < 1 or prefetch < 0:
            raise ValueError(f"batch_size and threads must be >= 1, prefetch >= 0 "
                             f"(got {batch_size}, {threads}, {prefetch})")
        self.output, self.window_hu = check_output(output, window_hu)
        self.rows = rows.reset_index(drop=True)
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last
        self.threads, self.prefetch, self.epoch = threads, prefetch, 0
        self.rank, self.world_size = _distributed(rank, world_size)
        opened = open_store(store, storage_options=storage_options)
        self.reader = ChunkReader(opened)
        self._items = list(zip(self.rows["patient"], self.rows["series"], self.rows["z"].astype(int)))
        self._info = _series_info(opened, list(self.rows.groupby(["patient", "series"]).groups))
        self._lengths = {k: v[0] for k, v in self._info.items()}
        shapes = {v[1] for v in self._info.values()}
        if len(shapes) > 1:
            raise ValueError(f"slices of different shapes cannot share a batch: {sorted(shapes)}")
        self.shape = shapes.pop() if shapes else (0, 0)
        self._pin = torch.cuda.is_available() if pin_memory is None else pin_memory
        #: raw uint16 buffers the chunks are decoded into
        self.raw_buffers = [torch.empty((batch_size, 1, *self.shape), dtype=torch.uint16, pin_memory=self._pin)
                            for _ in range(prefetch + 2)]
        self._buffers: list | None = None
        self.lung_only = lung_only
        if lung_only:
            _require_lung_masks(opened, list(self._lengths))
        # one mask buffer per decoding part (batches are filled one at a time by the prefetch thread)
        self._scratch = [np.empty(self.shape, dtype=np.uint8) for _ in range(threads)] if lung_only else []
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ctengine-loader")

    @property
    def buffers(self) -> list:
        """The output buffers (batch_size, 1, y, x) the batch tensors are views of, made on first use."""
        if self._buffers is None:
            self._buffers = [torch.empty((self.batch_size, 1, *self.shape), dtype=output_dtype(self.output),
                                         pin_memory=self._pin) for _ in range(self.prefetch + 2)]
        return self._buffers

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

    def _fill(self, number: int, indices: np.ndarray, convert: bool) -> Batch:
        raw = self.raw_buffers[number % len(self.raw_buffers)]
        out = self.buffers[number % len(self.buffers)] if convert else None
        array = raw.numpy()
        rows = self.rows.iloc[indices]
        n = len(indices)
        info = [self._info[self._items[k][:2]] for k in indices]
        slope = np.array([v[2] for v in info], dtype=np.float64)
        intercept = np.array([v[3] for v in info], dtype=np.float64)
        parts = np.array_split(np.arange(n), min(self.threads, n))

        def work(part: int) -> None:
            for i in parts[part]:
                patient, series, z = self._items[indices[i]]
                read_slice(self.reader, patient, series, z, self._lengths[(patient, series)], array[i, 0],
                           scratch=self._scratch[part] if self.lung_only else None)
                if out is not None:  # one pass, while the slice is in cache, into the buffer the batch shares
                    raw_to_output(raw[i:i + 1], slope[i], intercept[i], output=self.output,
                                  window_hu=self.window_hu, out=out[i:i + 1])

        list(self._pool.map(work, range(len(parts))))
        return Batch(raw[:n] if out is None else out[:n], torch.from_numpy(np.array(rows["target"], dtype=np.int64)),
                     rows, slope, intercept, np.array([v[4] for v in info], dtype=np.float64).reshape(n, 2))

    def _batches(self, convert: bool) -> Iterator[Batch]:
        order = self.order()
        starts = list(range(0, len(order), self.batch_size))
        if self.drop_last:
            starts = [s for s in starts if s + self.batch_size <= len(order)]
        pending: list = []
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ctengine-prefetch") as ahead:
            for number, start in enumerate(starts):
                pending.append(ahead.submit(self._fill, number, order[start:start + self.batch_size], convert))
                if len(pending) > self.prefetch:
                    yield pending.pop(0).result()
            for future in pending:
                yield future.result()

    def __iter__(self) -> Iterator[Batch]:
        """Batches in the loader's output (float32 HU by default), views of :attr:`buffers`."""
        return self._batches(convert=True)

    def raw_batches(self) -> Iterator[Batch]:
        """Batches of raw uint16 images, views of :attr:`raw_buffers` (for one copy to a device).

        Convert them with :func:`~ctengine.learn.samples.raw_to_output` and the
        batch's ``slope`` and ``intercept``, as :class:`DeviceLoader` does.
        """
        return self._batches(convert=False)

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


class SliceDataset(torch.utils.data.Dataset):
    """A ``torch.utils.data.Dataset`` of stored slices: item i -> (image (1, y, x), target), or a dict.

    Parameters
    ----------
    store : str
        Store path or fsspec URL.
    rows : DataFrame
        What to load (see :func:`slice_rows`): patient, series, z, instance, target.
    lung_only : bool
        As in :class:`SliceLoader`.
    output, window_hu
        As in :class:`SliceLoader`: float32 HU by default, never uint16.
    as_dict : bool
        Items as :func:`~ctengine.learn.samples.sample_dict` dictionaries
        (``image``, ``label``, ``patient``, ``series``, ``instance``,
        ``spacing_mm``), the form of MONAI's dictionary transforms.
    mask : bool
        Add the stored lung mask as ``mask`` (uint8 (1, y, x)); needs ``as_dict``
        and the masks of ``ctengine features``.

    Examples
    --------
    With MONAI (``monai.transforms``)::

        chain = Compose([ScaleIntensityRanged("image", a_min=-1350, a_max=150, b_min=0, b_max=1, clip=True),
                         RandFlipd(["image", "mask"], prob=0.5, spatial_axis=1)])
        sample = chain(SliceDataset(store, rows, as_dict=True, mask=True)[0])
    """

    def __init__(self, store: str | os.PathLike, rows: pd.DataFrame, *, storage_options: dict | None = None,
                 lung_only: bool = False, output: str = "hu", window_hu: tuple[float, float] = LUNG_WINDOW_HU,
                 as_dict: bool = False, mask: bool = False):
        if mask and not as_dict:
            raise ValueError("mask=True needs as_dict=True (the mask is the sample's 'mask' entry)")
        self.output, self.window_hu = check_output(output, window_hu)
        self.url, self.rows, self.storage_options = os.fspath(store), rows.reset_index(drop=True), storage_options
        self.lung_only, self.as_dict, self.mask = lung_only, as_dict, mask
        self._reader: ChunkReader | None = None
        self._info: dict[tuple[str, str], tuple] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def _open(self) -> None:
        """Open the store lazily: each DataLoader worker process gets its own reader."""
        opened = open_store(self.url, storage_options=self.storage_options)
        keys = list(self.rows.groupby(["patient", "series"]).groups)
        if self.lung_only or self.mask:
            _require_lung_masks(opened, keys)
        self._info = _series_info(opened, keys)
        self._reader = ChunkReader(opened)

    def __getitem__(self, i: int):
        if self._reader is None:
            self._open()
        row = self.rows.iloc[i]
        key = (row["patient"], row["series"])
        n, shape, slope, intercept, spacing = self._info[key]
        raw = np.empty((1, *shape), dtype=RAW_DTYPE)
        mask = np.empty(shape, dtype=np.uint8) if (self.lung_only or self.mask) else None
        self._reader.read_into(key[0], key[1], int(row["z"]), n, raw[0])
        if mask is not None:
            self._reader.read_into(key[0], key[1], int(row["z"]), n, mask, names.LUNG_ARRAY)
        if self.lung_only:
            apply_lung_only(raw[0], mask)
        image = raw_to_output(torch.from_numpy(raw), slope, intercept, output=self.output,
                              window_hu=self.window_hu)
        if not self.as_dict:
            return image, int(row["target"])
        return sample_dict(image, label=int(row["target"]), patient=key[0], series=key[1],
                           instance=int(row["instance"]), spacing_mm=spacing,
                           mask=torch.from_numpy(mask[None]) if self.mask else None)
