"""Ingest benchmark: ctengine vs what users would otherwise run, in one run on the same input.

Baselines
  (a) naive loop: tifffile.imread, then zarr-python writes slice by slice
      into the same layout (1-slice chunks, one shard per series, same codec);
  (b) dask_image.imread + to_zarr into the same pre-created sharded arrays
      (dask chunks regrouped to whole shards, the only correct way).
Ceiling: single-thread TIFF decode and blosc compression measured here,
times the number of worker threads of the cluster.
"""
from __future__ import annotations

import glob
import shutil
import time
from pathlib import Path

import numpy as np
import tifffile
import zarr

import ctengine
from ..store import schema, shard
from ..synth import write_cohort
from ._common import cluster, on_machine, pick_sizes, worker_count

SIZES = {"slices": 3000}
QUICK = {"slices": 120}
PER_SERIES = 40


def series_dirs(src: Path) -> list[Path]:
    """Every series folder of a synthetic tree."""
    return sorted(Path(p) for p in glob.glob(str(src / "COVID-CTset/*/patient*/SR_*")))


def ceiling(files: list[str], cores: int) -> dict:
    """Single-thread decode and compression rates (slices/s) and the resulting ceiling."""
    sample = files[:200]
    start = time.perf_counter()
    images = [tifffile.imread(f) for f in sample]
    decode = len(sample) / (time.perf_counter() - start)
    start = time.perf_counter()
    encoded = [shard.encode_chunk(image) for image in images]
    compress = len(sample) / (time.perf_counter() - start)
    ratio = sum(i.nbytes for i in images) / sum(len(e) for e in encoded)
    return {"decode_slices_per_s": decode, "compress_slices_per_s": compress, "codec_ratio": ratio,
            "cores": cores, "ceiling_slices_per_s": cores / (1 / decode + 1 / compress)}


def naive_loop(dirs: list[Path], out: Path, budget_s: float) -> dict:
    """tifffile.imread per file, then one zarr write per slice (the shard is rewritten each time)."""
    root = zarr.open_group(out, mode="w")
    done, start = 0, time.perf_counter()
    for d in dirs:
        files = sorted(d.glob("IM*.tif"))
        array = root.create_array(f"{d.parent.parent.name}/{d.parent.name}/{d.name}", shape=(len(files), 512, 512),
                                  chunks=(1, 512, 512), shards=(len(files), 512, 512), dtype="uint16",
                                  compressors=[schema.raw_codec()])
        for i, f in enumerate(files):
            array[i] = tifffile.imread(f)
            done += 1
        if time.perf_counter() - start > budget_s:
            break
    seconds = time.perf_counter() - start
    return {"slices": done, "seconds": seconds, "slices_per_s": done / seconds}


def dask_image_to_zarr(dirs: list[Path], out: Path, client) -> dict:
    """dask_image.imread per series + da.to_zarr into pre-created sharded arrays; checks what was stored."""
    import dask
    import dask.array as da
    from dask_image.imread import imread

    root = zarr.open_group(out, mode="w")
    targets, sources = [], []
    start = time.perf_counter()
    for d in dirs:
        stack = imread(str(d / "IM*.tif"))
        array = root.create_array(f"{d.parent.parent.name}/{d.parent.name}/{d.name}", shape=stack.shape,
                                  chunks=(1, 512, 512), shards=stack.shape, dtype="uint16",
                                  compressors=[schema.raw_codec()])
        sources.append(stack.rechunk((stack.shape[0], 512, 512)))
        targets.append(array)
    dask.compute(*[da.to_zarr(s, t, compute=False) for s, t in zip(sources, targets)])
    seconds = time.perf_counter() - start
    n = sum(t.shape[0] for t in targets)
    lost = sum(int(not np.array_equal(t[i], tifffile.imread(f)))
               for d, t in zip(dirs, targets) for i, f in enumerate(sorted(d.glob("IM*.tif"))))
    return {"slices": n, "seconds": seconds, "slices_per_s": n / seconds, "slices_wrong_or_lost": lost}


def ctengine_ingest(src: Path, store: Path, client) -> dict:
    """ctengine.ingest of the whole source tree into a fresh store."""
    shutil.rmtree(store, ignore_errors=True)
    report = ctengine.ingest([src], store, client=client, progress=False)
    return {"slices": report.slices_written, "seconds": report.seconds, "slices_per_s": report.slices_per_second,
            "mb_per_s": report.bytes_raw / 1e6 / report.seconds, "ratio": report.ratio,
            "quarantined": len(report.quarantined)}


def run(workdir: Path, *, quick: bool = False, scheduler: str | None = None, workers: int | None = None,
        **sizes: int) -> dict:
    """ctengine ingest, the two baselines and the codec ceiling on ``slices`` synthetic slices (40 per series)."""
    size = pick_sizes(SIZES, QUICK, quick, sizes)
    workdir = Path(workdir)
    src = workdir / "src"
    if not src.exists():
        write_cohort(src, patients=max(1, round(size["slices"] / (3 * PER_SERIES))), slices_per_series=PER_SERIES,
                     seed=1, progress=False)
    dirs = series_dirs(src)
    files = [str(f) for d in dirs for f in sorted(d.glob("IM*.tif"))]
    with on_machine() as machine:
        result = {"machine": machine, "date": time.strftime("%Y-%m-%d"), "quick": quick, "input_slices": len(files)}
        with cluster(scheduler, workers) as client:
            client.run(lambda: None)
            result["ceiling"] = ceiling(files, worker_count(client))
            store = workdir / "ctengine.zarr"
            result["ctengine"] = ctengine_ingest(src, store, client)
            assert len(ctengine.open_store(store).catalog) == len(files) - _duplicates(files), "ctengine lost slices"
            result["dask_image"] = dask_image_to_zarr(dirs, workdir / "dask_image.zarr", client)
        result["naive"] = naive_loop(dirs, workdir / "naive.zarr", budget_s=60)
    ours = result["ctengine"]["slices_per_s"]
    result["speedup_vs_naive"] = ours / result["naive"]["slices_per_s"]
    result["speedup_vs_dask_image"] = ours / result["dask_image"]["slices_per_s"]
    result["fraction_of_ceiling"] = ours / result["ceiling"]["ceiling_slices_per_s"]
    return result


def _duplicates(files: list[str]) -> int:
    """Files that are a second copy of the same patient/series/instance (kept once)."""
    keys = ["/".join(Path(f).parts[-3:]) for f in files]
    return len(keys) - len(set(keys))


def ratios(result: dict) -> dict[str, float]:
    """The headline ratios (ctengine / baseline; the last is ctengine / ceiling)."""
    return {"ingest vs naive loop": result["speedup_vs_naive"],
            "ingest vs dask-image": result["speedup_vs_dask_image"],
            "ingest / ceiling": result["fraction_of_ceiling"]}


def throughput(result: dict) -> tuple[float, float]:
    """(ctengine, naive loop) slices/s."""
    return result["ctengine"]["slices_per_s"], result["naive"]["slices_per_s"]
