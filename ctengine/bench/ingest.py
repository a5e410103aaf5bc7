"""Ingest benchmark: ctengine vs what users would otherwise run, in one run on the same input.

Baselines, each writing the same layout (one slice per chunk, one shard per
series, the store's codec):
  (a) the per-series loop a user writes first: tifffile.imread per file,
      np.stack per series, one zarr-python array per series, ``a[:] = stack``;
  (a2) the same loop over series in a process pool of one process per core;
  (b) the best library a user could pick instead: the same loop with the
      Rust codec pipeline of the ``zarrs`` package;
  (c) dask_image.imread + to_zarr into pre-created sharded arrays;
  (d) the slice-by-slice loop (``a[i] = img``, the shard rewritten per
      slice), kept only as the anti-pattern it is.
ctengine is timed twice: ``ctengine.ingest`` on a running cluster, and the
``ctengine ingest`` command in a fresh process (imports and cluster start-up
included). Every entry records CPU seconds per slice (user + sys of all processes).
Ceiling: single-thread read, TIFF decode, SHA-256, blosc compression and
page-cache write, each done the cheapest way ctengine knows (:func:`ceiling`),
times the number of worker threads of the cluster.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
import zarr

import ctengine
from .. import entries
from ..constants import RAW_DTYPE, SLICE_SHAPE
from ..store import pyramid, schema, shard
from ..tiffio import decode_slice_into
from ..synth import write_cohort
from ._common import CpuClock, cluster, on_machine, pick_sizes, worker_count

SIZES = {"slices": 3000, "repeats": 3}
QUICK = {"slices": 120, "repeats": 1}
PER_SERIES = 40


def series_dirs(src: Path) -> list[Path]:
    """Every series folder of a synthetic tree."""
    return sorted(Path(p) for p in glob.glob(str(src / "COVID-CTset/*/patient*/SR_*")))


def ceiling(files: list[str], cores: int) -> dict:
    """Single-thread per-slice costs (ms) of every step ingest must take, each done the cheapest way, and the ceiling.

    Read into memory used again, parse the header and copy the pixels (ctengine's plain-TIFF path),
    SHA-256 of the pixels, blosc compression, write to the page cache (as ingest writes; the disk's own
    rate is measured by the full run). The memory is touched before the clock starts. ``pyramid_ms``,
    making and compressing a slice's pyramid levels, is reported apart and left out of the ceiling:
    ingest does it, no baseline does.
    """
    sample = files[:200]
    ms = {}
    buffers = np.ones((len(sample), max(os.path.getsize(f) for f in sample) + 1), np.uint8)  # one row a file
    images = np.ones((len(sample), *SLICE_SHAPE), RAW_DTYPE)

    def step(name: str, fn, items):
        items = list(items)
        start = time.perf_counter()
        out = [fn(*item) for item in items]
        ms[name] = 1e3 * (time.perf_counter() - start) / len(items)
        return out

    data = step("read_ms", lambda f, row: entries.read_regular_into(f, row)[0], zip(sample, buffers))
    step("decode_ms", decode_slice_into, zip(data, images))
    step("sha256_ms", lambda a: hashlib.sha256(a).digest(), [(a,) for a in images])
    encoded = step("compress_ms", shard.encode_chunk, [(a,) for a in images])
    step("pyramid_ms", lambda a: [shard.encode_chunk(level[0]) for level in pyramid.levels(a[None])],
         [(a,) for a in images])
    pyramid_ms = ms.pop("pyramid_ms")
    blob = b"".join(encoded)
    target = Path(files[0]).parent.parent.parent / "_ceiling.bin"
    start = time.perf_counter()
    with open(target, "wb") as f:
        f.write(blob)
    ms["write_ms"] = 1e3 * (time.perf_counter() - start) / len(sample)
    target.unlink()
    per_slice = sum(ms.values())
    ratio = images.nbytes / len(blob)
    return {**ms, "per_slice_ms": per_slice, "codec_ratio": ratio, "cores": cores,
            "ceiling_slices_per_s": cores * 1e3 / per_slice, "pyramid_ms": pyramid_ms}


def _write_series(root: zarr.Group, d: Path, stack: np.ndarray) -> None:
    """One sharded array per series, as a user writes it: chunks of one slice, one shard, the store's codec."""
    array = root.create_array(f"{d.parent.parent.name}/{d.parent.name}/{d.name}", shape=stack.shape,
                              chunks=(1, *stack.shape[1:]), shards=stack.shape, dtype="uint16",
                              compressors=[schema.raw_codec()])
    array[:] = stack


def _one_series(args: tuple[str, str]) -> int:
    """(series folder, store path) -> slices written: read, stack and write one series."""
    d, out = Path(args[0]), args[1]
    stack = np.stack([tifffile.imread(f) for f in sorted(d.glob("IM*.tif"))])
    _write_series(zarr.open_group(out, mode="a"), d, stack)
    return len(stack)


def _timed(fn) -> dict:
    """Wall and CPU time of ``fn() -> slices``."""
    clock, start = CpuClock(), time.perf_counter()
    n = fn()
    seconds, cpu = time.perf_counter() - start, clock.seconds()
    return {"slices": n, "seconds": seconds, "slices_per_s": n / seconds, "cpu_ms_per_slice": 1e3 * cpu / n}


def per_series_loop(dirs: list[Path], out: Path) -> dict:
    """(a) The loop a user writes first, one process."""
    zarr.open_group(out, mode="w")
    return _timed(lambda: sum(_one_series((str(d), str(out))) for d in dirs))


def per_series_pool(dirs: list[Path], out: Path, cores: int) -> dict:
    """(a2) The same loop over series in a process pool, one process per core."""
    from concurrent.futures import ProcessPoolExecutor

    zarr.open_group(out, mode="w")
    with ProcessPoolExecutor(cores) as pool:
        pool.submit(int).result()  # start-up outside the timing, as for the cluster
        return _timed(lambda: sum(pool.map(_one_series, [(str(d), str(out)) for d in dirs])))


def zarrs_loop(dirs: list[Path], out: Path) -> dict:
    """(b) The per-series loop with the zarrs Rust codec pipeline (its own threads); skipped if not installed."""
    try:
        import zarrs  # noqa: F401
    except ImportError:
        return {"skipped": "zarrs is not installed (pip install zarrs)"}
    zarr.open_group(out, mode="w")
    with zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"}):
        return _timed(lambda: sum(_one_series((str(d), str(out))) for d in dirs))


def slice_by_slice(dirs: list[Path], out: Path, budget_s: float) -> dict:
    """(d) The anti-pattern: one zarr write per slice, so the shard is rewritten each time."""
    root = zarr.open_group(out, mode="w")

    def loop() -> int:
        done, start = 0, time.perf_counter()
        for d in dirs:
            files = sorted(d.glob("IM*.tif"))
            array = root.create_array(f"{d.parent.parent.name}/{d.parent.name}/{d.name}",
                                      shape=(len(files), 512, 512), chunks=(1, 512, 512),
                                      shards=(len(files), 512, 512), dtype="uint16", compressors=[schema.raw_codec()])
            for i, f in enumerate(files):
                array[i] = tifffile.imread(f)
                done += 1
            if time.perf_counter() - start > budget_s:
                break
        return done
    return _timed(loop)


def dask_image_to_zarr(dirs: list[Path], out: Path, client) -> dict:
    """(c) dask_image.imread per series + da.to_zarr into pre-created sharded arrays; checks what was stored."""
    import dask
    import dask.array as da
    from dask_image.imread import imread

    root = zarr.open_group(out, mode="w")
    targets, sources = [], []
    clock, start = CpuClock(), time.perf_counter()
    for d in dirs:
        stack = imread(str(d / "IM*.tif"))
        array = root.create_array(f"{d.parent.parent.name}/{d.parent.name}/{d.name}", shape=stack.shape,
                                  chunks=(1, 512, 512), shards=stack.shape, dtype="uint16",
                                  compressors=[schema.raw_codec()])
        sources.append(stack.rechunk((stack.shape[0], 512, 512)))
        targets.append(array)
    dask.compute(*[da.to_zarr(s, t, compute=False) for s, t in zip(sources, targets)])
    seconds, cpu = time.perf_counter() - start, clock.seconds()
    n = sum(t.shape[0] for t in targets)
    lost = sum(int(not np.array_equal(t[i], tifffile.imread(f)))
               for d, t in zip(dirs, targets) for i, f in enumerate(sorted(d.glob("IM*.tif"))))
    return {"slices": n, "seconds": seconds, "slices_per_s": n / seconds, "cpu_ms_per_slice": 1e3 * cpu / n,
            "slices_wrong_or_lost": lost}


def ctengine_ingest(src: Path, store: Path, client) -> dict:
    """ctengine.ingest of the whole source tree into a fresh store."""
    shutil.rmtree(store, ignore_errors=True)
    clock = CpuClock()
    report = ctengine.ingest([src], store, client=client, progress=False)
    cpu = clock.seconds()
    return {"slices": report.slices_written, "seconds": report.seconds, "slices_per_s": report.slices_per_second,
            "cpu_ms_per_slice": 1e3 * cpu / max(report.slices_written, 1),
            "mb_per_s": report.bytes_raw / 1e6 / report.seconds, "ratio": report.ratio,
            "quarantined": len(report.quarantined)}


def ctengine_cli(src: Path, store: Path) -> dict:
    """``ctengine ingest SRC --store STORE`` as a user runs it: interpreter, imports and cluster start-up included."""
    shutil.rmtree(store, ignore_errors=True)
    command = [sys.executable, "-c", "from ctengine.cli import main; main()", "ingest", str(src), "--store", str(store),
               "--json"]
    clock, start = CpuClock(), time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    seconds, cpu = time.perf_counter() - start, clock.seconds()
    slices = json.loads(done.stdout)["slices_written"]
    return {"slices": slices, "seconds": seconds, "slices_per_s": slices / seconds,
            "cpu_ms_per_slice": 1e3 * cpu / max(slices, 1), "what": "the CLI, start-up included"}


def median_run(runs: list[dict]) -> dict:
    """The run with the median slices/s, with every run's slices/s beside it (a skipped contender as it is)."""
    if "slices_per_s" not in runs[0]:
        return runs[0]
    ordered = sorted(runs, key=lambda r: r["slices_per_s"])
    return {**ordered[(len(ordered) - 1) // 2], "runs_slices_per_s": [r["slices_per_s"] for r in runs]}


def run(workdir: Path, *, quick: bool = False, scheduler: str | None = None, workers: int | None = None,
        **sizes: int) -> dict:
    """ctengine ingest, the baselines and the ceiling on ``slices`` synthetic slices (40 per series).

    ctengine and the quick baselines run ``repeats`` times, interleaved; each reports its median run.
    """
    size = pick_sizes(SIZES, QUICK, quick, sizes)
    workdir = Path(workdir)
    src = workdir / "src"
    if not src.exists():
        write_cohort(src, patients=max(1, round(size["slices"] / (3 * PER_SERIES))), slices_per_series=PER_SERIES,
                     seed=1, progress=False)
    dirs = series_dirs(src)
    files = [str(f) for d in dirs for f in sorted(d.glob("IM*.tif"))]
    # every run writes a folder of its own, all removed at the end, so no contender writes its files right
    # after deleting thousands of others (a file system's inode allocation can slow down after deletions)
    outputs = workdir / "outputs"
    shutil.rmtree(outputs, ignore_errors=True)
    outputs.mkdir(parents=True)
    runs: dict[str, list[dict]] = {name: [] for name in ("ctengine", "ctengine_cli", "per_series_loop",
                                                         "per_series_pool", "zarrs_loop")}
    with on_machine() as machine:
        result = {"machine": machine, "date": time.strftime("%Y-%m-%d"), "quick": quick, "input_slices": len(files),
                  "repeats": size["repeats"]}
        for repeat in range(size["repeats"]):  # interleaved, so a slow spell of the machine hits every contender
            with cluster(scheduler, workers) as client:
                client.run(lambda: None)
                cores = worker_count(client)
                if repeat == 0:
                    result["ceiling"] = ceiling(files, cores)
                store = outputs / f"ctengine-{repeat}.zarr"
                runs["ctengine"].append(ctengine_ingest(src, store, client))
                assert len(ctengine.open_store(store).catalog) == len(files) - _duplicates(files), "lost slices"
                if repeat == 0:
                    result["dask_image"] = dask_image_to_zarr(dirs, outputs / "dask_image.zarr", client)
            runs["ctengine_cli"].append(ctengine_cli(src, outputs / f"cli-{repeat}.zarr"))
            runs["per_series_loop"].append(per_series_loop(dirs, outputs / f"loop-{repeat}.zarr"))
            runs["per_series_pool"].append(per_series_pool(dirs, outputs / f"pool-{repeat}.zarr", cores))
            runs["zarrs_loop"].append(zarrs_loop(dirs, outputs / f"zarrs-{repeat}.zarr"))
        result.update({name: median_run(found) for name, found in runs.items()})
        result["slice_by_slice"] = slice_by_slice(dirs, outputs / "slices.zarr", budget_s=30 if not quick else 5)
    shutil.rmtree(outputs, ignore_errors=True)
    ours = result["ctengine"]["slices_per_s"]
    result["speedup"] = {name: ours / result[name]["slices_per_s"] for name in BASELINES
                         if "slices_per_s" in result[name]}
    result["fraction_of_ceiling"] = ours / result["ceiling"]["ceiling_slices_per_s"]
    return result


#: baseline key -> what it is, in the ratios' labels
BASELINES = {"per_series_loop": "per-series loop", "per_series_pool": "per-series loop in a process pool",
             "zarrs_loop": "zarrs pipeline loop", "dask_image": "dask-image", "slice_by_slice": "slice-by-slice loop"}


def _duplicates(files: list[str]) -> int:
    """Files that are a second copy of the same patient/series/instance (kept once)."""
    keys = ["/".join(Path(f).parts[-3:]) for f in files]
    return len(keys) - len(set(keys))


def ratios(result: dict) -> dict[str, float]:
    """The headline ratios (ctengine / each baseline that ran; the last is ctengine / ceiling)."""
    out = {f"ingest vs {BASELINES[name]}": value for name, value in result["speedup"].items()}
    if "ctengine_cli" in result:
        out["ingest CLI, start-up included, vs per-series loop"] = (result["ctengine_cli"]["slices_per_s"]
                                                                    / result["per_series_loop"]["slices_per_s"])
    out["ingest / ceiling"] = result["fraction_of_ceiling"]
    return out


def throughput(result: dict) -> tuple[float, float]:
    """(ctengine, per-series loop) slices/s."""
    return result["ctengine"]["slices_per_s"], result["per_series_loop"]["slices_per_s"]
