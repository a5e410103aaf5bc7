"""Loader benchmark: ctengine's zero-copy loader vs plain torch DataLoaders, one run, same input.

  ctengine    SliceLoader (threads = workers), chunks decoded into reused buffers, float32 HU on hand-off
  (a) tiff    torch DataLoader (num_workers = workers) + tifffile.imread of the original TIFFs
  (b) zarr    torch DataLoader (num_workers = workers) reading the same store item by item with zarr-python

All produce float32 (N, 1, 512, 512) batches of the same slices. Bytes copied
per batch: ctengine decodes into its buffer (0 copies until the float32
conversion); the DataLoaders copy each item into the collated batch, and
worker processes send the batch through shared memory.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import tifffile
import torch
import zarr

import ctengine
from ..cluster import default_workers
from ..learn.loader import SliceLoader, slice_rows
from ..store import names
from ..synth import write_cohort
from ._common import cluster, on_machine, pick_sizes

SIZES = {"slices": 3000, "batch": 16, "passes": 3}
QUICK = {"slices": 120, "batch": 16, "passes": 1}


class TiffDataset(torch.utils.data.Dataset):
    """Baseline (a): one original TIFF per item, as float32 (1, y, x)."""

    def __init__(self, files: list[str], targets: list[int]):
        self.files, self.targets = files, targets

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        return torch.from_numpy(tifffile.imread(self.files[i]).astype(np.float32))[None], self.targets[i]


class ZarrDataset(torch.utils.data.Dataset):
    """Baseline (b): one slice of the store per item through zarr-python, as float32 (1, y, x)."""

    def __init__(self, store: str, rows):
        self.store, self.items = store, list(zip(rows["patient"], rows["series"], rows["z"], rows["target"]))
        self.root = None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        if self.root is None:
            self.root = zarr.open_group(self.store, mode="r")
        patient, series, z, target = self.items[i]
        return torch.from_numpy(self.root[names.series_path(patient, series, names.RAW)][int(z)].astype(np.float32))[None], int(target)


def timed(batches) -> dict:
    """Drain ``batches``: slices, batches, seconds and slices/s."""
    start, n, count = time.perf_counter(), 0, 0
    for images, _ in batches:
        n += images.shape[0]
        count += 1
    seconds = time.perf_counter() - start
    return {"slices": n, "batches": count, "seconds": seconds, "slices_per_s": n / seconds}


def ours(loader):
    """ctengine's batches as (float32 HU images, targets)."""
    for batch in loader:
        yield batch.images, batch.targets


def run(workdir: Path, *, quick: bool = False, scheduler: str | None = None, workers: int | None = None,
        **sizes: int) -> dict:
    """Best of ``passes`` passes of each loader over ``slices`` stored slices; ``workers`` threads or processes each.

    The passes alternate between the loaders, so a slow spell of the machine hits each of them.
    """
    size = pick_sizes(SIZES, QUICK, quick, sizes)
    workers = workers or default_workers()
    batch = size["batch"]
    workdir = Path(workdir)
    src, store = workdir / "src", workdir / "s.zarr"
    if not store.exists():
        write_cohort(src, patients=max(1, size["slices"] // 120), slices_per_series=40, seed=2, progress=False)
        with cluster(scheduler, workers) as client:
            ctengine.ingest([src], store, client=client, progress=False)
    rows = slice_rows(ctengine.open_store(store).catalog)
    first = rows["source"].str.split(";").str[0]
    files = [str(src / "COVID-CTset" / name) for name in first]
    with on_machine() as machine:
        result = {"machine": machine, "date": time.strftime("%Y-%m-%d"), "quick": quick, "slices": len(rows),
                  "workers": workers, "batch_size": batch, "slice_bytes": 512 * 512 * 2}
        for f in files:  # warm the page cache for every contender alike
            Path(f).read_bytes()
        runs = {}
        for _ in range(size["passes"]):
            with SliceLoader(store, rows, batch_size=batch, threads=workers, prefetch=2) as loader:
                runs.setdefault("ctengine", []).append(timed(ours(loader)))
            tiff = torch.utils.data.DataLoader(TiffDataset(files, rows["target"].tolist()), batch_size=batch,
                                               num_workers=workers, persistent_workers=False)
            runs.setdefault("dataloader_tifffile", []).append(timed(tiff))
            plain = torch.utils.data.DataLoader(ZarrDataset(str(store), rows), batch_size=batch, num_workers=workers)
            runs.setdefault("dataloader_zarr", []).append(timed(plain))
    for name, values in runs.items():
        result[name] = max(values, key=lambda r: r["slices_per_s"])
    raw = batch * 512 * 512
    result["bytes_copied_per_batch"] = {
        "ctengine": {"decode_to_tensor": 0, "to_float32": raw * 4},
        "dataloader_tifffile": {"decode_to_item": raw * 2, "item_to_float32": raw * 4, "collate": raw * 4,
                                "worker_to_main_shm": raw * 4},
        "dataloader_zarr": {"decode_to_item": raw * 2, "item_to_float32": raw * 4, "collate": raw * 4,
                            "worker_to_main_shm": raw * 4},
    }
    best = result["ctengine"]["slices_per_s"]
    result["speedup_vs_tifffile"] = best / result["dataloader_tifffile"]["slices_per_s"]
    result["speedup_vs_zarr"] = best / result["dataloader_zarr"]["slices_per_s"]
    return result


def ratios(result: dict) -> dict[str, float]:
    """The headline ratios, ctengine / DataLoader."""
    return {"loader vs DataLoader+tifffile": result["speedup_vs_tifffile"],
            "loader vs DataLoader+zarr": result["speedup_vs_zarr"]}


def throughput(result: dict) -> tuple[float, float]:
    """(ctengine SliceLoader, DataLoader + tifffile) slices/s."""
    return result["ctengine"]["slices_per_s"], result["dataloader_tifffile"]["slices_per_s"]
