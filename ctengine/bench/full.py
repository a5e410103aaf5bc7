"""Full-scale run: the synthetic COVID-CTset at its real size (63,849 slices), ingested, then its features.

The disk's own read and write rates are measured after synth (TIFFs dropped
from the page cache, a synced write), giving the disk-bound ingest time:
every TIFF read once and the store written once. Per stage (synth, ingest,
features): wall time, slices/s, peak memory (RSS
of this process and all its descendants, worker processes included,
sampled every 0.5 s) and the disk used under the TIFF folder, the store
and the store's sidecars at the end of the stage. The free disk is checked
before anything is written; the TIFFs are deleted at the end unless kept.
"""
from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable

from ..features import compute_features
from ..ingestion import ingest
from ..store import features_path, names
from ..synth import CohortPlan, plan_cohort, write_cohort
from ..synth.write import TREE
from ._common import cluster, on_machine, warm_workers, worker_count

#: bytes a TIFF file takes beyond its pixels: header and the file system's last block
TIFF_OVERHEAD = 4096
#: raw / stored bytes assumed for the estimate (below the 2.23 to 2.27 measured with the store codec)
STORE_RATIO = 2.1
#: extra room on top of the estimate (masks, truth, tables, rounding), as a share of it
MARGIN = 0.1
GB = 1e9


class DiskSpaceError(RuntimeError):
    """Not enough free disk for the full run."""


def cohort_plan(*, fraction: float = 1.0, patients: int | None = None,
                slices_per_series: int | None = None) -> CohortPlan:
    """The real cohort (or a ``fraction`` of it), or ``patients`` sampled ones for tests."""
    return plan_cohort(like=None if patients else "covid-ctset", patients=patients, fraction=fraction,
                       slices_per_series=slices_per_series)


def disk_needed(plan: CohortPlan) -> dict[str, float]:
    """Bytes the run needs at its peak: TIFFs (a series under two groups twice), store, margin."""
    slice_bytes = plan.shape[0] * plan.shape[1] * 2
    files = sum(s.n_slices * len(s.groups) for s in plan.series)
    tiffs = files * (slice_bytes + TIFF_OVERHEAD)
    store = plan.slices() * slice_bytes / STORE_RATIO
    margin = MARGIN * (tiffs + store)
    return {"files": files, "slices": plan.slices(), "tiffs": tiffs, "store": store, "margin": margin,
            "total": tiffs + store + margin}


def check_disk(workdir: Path, need: dict[str, float]) -> int:
    """Free bytes under ``workdir``; raise DiskSpaceError when below the need."""
    free = shutil.disk_usage(workdir).free
    if free < need["total"]:
        raise DiskSpaceError(
            f"the full run needs about {need['total'] / GB:.1f} GB free under {workdir}: TIFFs "
            f"{need['tiffs'] / GB:.1f} GB ({need['files']:,} files of {need['slices']:,} slices of 512 x 512 x 2 "
            f"bytes) + store about {need['store'] / GB:.1f} GB + margin {need['margin'] / GB:.1f} GB, but only "
            f"{free / GB:.1f} GB is free; give a workdir on a larger disk")
    return free


class PeakMemory:
    """Peak summed RSS (bytes) of this process and all its descendants, sampled every ``interval`` s."""

    def __init__(self, interval: float = 0.5):
        import psutil

        self.interval, self.peak = interval, 0
        self._process, self._stop = psutil.Process(), threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def sample(self) -> int:
        import psutil

        total = 0
        for process in [self._process, *self._process.children(recursive=True)]:
            try:
                total += process.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):  # ended between listing and reading
                continue
        self.peak = max(self.peak, total)
        return total

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> "PeakMemory":
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def disk_bytes(*paths: Path) -> int:
    """Bytes allocated on disk under files and folders (missing ones count 0)."""
    total = 0
    for path in paths:
        if path.is_file():
            total += path.stat().st_blocks * 512
        for folder, _, names in os.walk(path):
            total += sum(os.lstat(os.path.join(folder, name)).st_blocks * 512 for name in names)
    return total


def disk_rates(files: list[Path], scratch: Path, *, sample_bytes: float = 2e9) -> dict[str, float]:
    """The disk's own sequential rates (bytes/s): read of ``files`` dropped from the page cache, write + fdatasync.

    Up to ``sample_bytes`` of the files are read after ``posix_fadvise(DONTNEED)`` (no root needed),
    and as much is written to ``scratch`` and synced, then removed.
    """
    chosen, total = [], 0
    for path in files[::max(1, len(files) // 4000)]:
        if total >= sample_bytes:
            break
        chosen.append(path)
        total += path.stat().st_size
    for path in chosen:
        with open(path, "rb") as handle:
            os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    start = time.perf_counter()
    for path in chosen:
        with open(path, "rb", buffering=0) as handle:
            while handle.read(1 << 20):
                pass
    read_s = time.perf_counter() - start
    block = os.urandom(1 << 20) * 16
    start = time.perf_counter()
    with open(scratch, "wb") as handle:
        for _ in range(max(1, total // len(block))):
            handle.write(block)
        os.fdatasync(handle.fileno())
    write_s = time.perf_counter() - start
    written = scratch.stat().st_size
    scratch.unlink()
    return {"read_bytes_per_s": total / read_s, "write_bytes_per_s": written / write_s, "sample_bytes": total}


def stage(name: str, work: Callable[[], tuple[int, float]], disk: Callable[[], int],
          echo: Callable[[str], Any]) -> dict:
    """Run ``work`` (returns slices, seconds) under the memory sampler; its numbers and the disk after it."""
    echo(f"full: {name}")
    with PeakMemory() as memory:
        slices, seconds = work()
    result = {"slices": slices, "wall_s": seconds, "slices_per_s": slices / seconds,
              "peak_memory_gib": memory.peak / 2**30, "disk_bytes": disk()}
    echo(f"full: {name}: {slices} slices in {seconds:.0f} s ({result['slices_per_s']:.0f} slices/s), peak memory "
         f"{result['peak_memory_gib']:.1f} GiB, disk {result['disk_bytes'] / GB:.1f} GB")
    return result


def run(workdir: Path, *, keep: bool = False, scheduler: str | None = None, workers: int | None = None,
        fraction: float = 1.0, patients: int | None = None, slices_per_series: int | None = None,
        progress: bool = True, echo: Callable[[str], Any] = print) -> dict:
    """Synth, ingest and features of the full synthetic cohort under ``workdir``; TIFFs deleted unless ``keep``.

    ``fraction`` (of the real patients), or ``patients`` and ``slices_per_series``, make it smaller.
    Raises DiskSpaceError before writing anything when the disk is too small.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    plan = cohort_plan(fraction=fraction, patients=patients, slices_per_series=slices_per_series)
    need = disk_needed(plan)
    free = check_disk(workdir, need)
    src, store = workdir / "src", workdir / "store.zarr"
    sidecars = (Path(features_path(store)), Path(names.lock_path(str(store))))

    def disk() -> int:
        return disk_bytes(src / TREE, store, *sidecars)

    def synth() -> tuple[int, float]:
        summary = write_cohort(src, like=None if patients else "covid-ctset", patients=patients,
                               fraction=fraction, slices_per_series=slices_per_series, progress=progress)
        return summary.slices, summary.seconds

    with on_machine() as machine:
        result: dict[str, Any] = {"machine": machine, "date": time.strftime("%Y-%m-%d"), "slices": plan.slices(),
                                  "patients": len(plan.patients), "series": len(plan.series),
                                  "disk_free_bytes_at_start": free, "disk_needed_bytes": need["total"],
                                  "stages": {"synth": stage("synth", synth, disk, echo)}}
        tiffs = sorted((src / TREE).rglob("*.tif"))
        result["disk_rates"] = disk_rates(tiffs, workdir / "_disk_rate.bin")
        with cluster(scheduler, workers) as client:
            warm_workers(client)

            def run_ingest() -> tuple[int, float]:
                report = ingest([src], store, client=client, progress=progress)
                return report.slices_written, report.seconds

            def run_features() -> tuple[int, float]:
                report = compute_features(store, client=client, progress=progress)
                return report.slices_computed, report.seconds

            result["workers"] = worker_count(client)
            result["stages"]["ingest"] = stage("ingest", run_ingest, disk, echo)
            result["stages"]["features"] = stage("features", run_features, disk, echo)
    result["disk"] = {"tiffs_bytes": disk_bytes(src / TREE), "store_bytes": disk_bytes(store),
                      "sidecar_bytes": disk_bytes(*sidecars)}
    rates = result["disk_rates"]
    bound = (result["disk"]["tiffs_bytes"] / rates["read_bytes_per_s"]
             + result["disk"]["store_bytes"] / rates["write_bytes_per_s"])
    result["ingest_disk_bound_s"] = bound  # read every TIFF once and write the store once, one disk
    result["ingest_vs_disk_bound"] = result["stages"]["ingest"]["wall_s"] / bound
    result["tiffs_kept"] = keep
    if not keep:
        shutil.rmtree(src)
    return result


def ratios(result: dict) -> dict[str, float]:
    """Ingest wall time over the disk-bound time measured in the same run (1.0 = as fast as the disk)."""
    return {"full ingest / disk-bound time": result["ingest_vs_disk_bound"]} if "ingest_vs_disk_bound" in result else {}


def throughput(result: dict) -> tuple[float, None]:
    """Ingest + features slices/s end to end; no baseline."""
    stages = result["stages"]
    return result["slices"] / (stages["ingest"]["wall_s"] + stages["features"]["wall_s"]), None
