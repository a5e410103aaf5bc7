"""Scaling benchmark: ingest and features on 1 worker and on N workers (default 2), same cohort.

Each worker count gets a fresh store and its own cluster: a LocalCluster of
that many single-threaded worker processes, or, with a scheduler, that many
of its workers (tasks restricted to them). Both stages run inside a Dask
performance report (HTML under the workdir, where bokeh is installed beside
the scheduler), and the scheduler's task stream gives per stage: tasks,
tasks/s, median and total compute time per task, and the per-task overhead
(wall x threads - task compute) / tasks. Where the time goes is split into
shares of wall x threads: computing in tasks, workers idle while tasks run
(imbalance, scheduling, transfers), and the client outside the tasks
(planning, catalog and table writes). Speedup N vs 1 and parallel
efficiency per stage compare slices/s.
"""
from __future__ import annotations

import contextlib
import shutil
import statistics
import time
from pathlib import Path
from typing import Callable, Iterator

from ..features import compute_features
from ..ingestion import ingest
from ..store import features_path
from ..synth import write_cohort
from ._common import on_machine, pick_sizes, warm_workers

SIZES = {"slices": 3000, "slices_per_series": 40}
QUICK = {"slices": 72, "slices_per_series": 12}


@contextlib.contextmanager
def workers_of(scheduler: str | None, count: int) -> Iterator:
    """A client whose tasks run on ``count`` single-threaded workers: a fresh LocalCluster, or ``count``
    workers of the given scheduler."""
    import dask

    from ..cluster import dask_client

    if scheduler is None:
        with dask_client(workers=count) as client:
            yield client
        return
    with dask_client(scheduler=scheduler) as client:
        addresses = sorted(client.nthreads())
        if len(addresses) < count:
            raise ValueError(f"the scheduler {scheduler} has {len(addresses)} workers; {count} are needed")
        with dask.annotate(workers=addresses[:count]):
            yield client


def task_numbers(records: list[dict], prefix: str, seconds: float, threads: int) -> dict:
    """Tasks, tasks/s, compute per task (s), overhead per task (s) and where wall x threads went."""
    mine = [r for r in records if str(r["key"]).startswith(prefix)]
    spans = [s for r in mine for s in r["startstops"] if s["action"] == "compute"]
    compute = [sum(s["stop"] - s["start"] for s in r["startstops"] if s["action"] == "compute") for r in mine]
    total = sum(compute)
    span = max(s["stop"] for s in spans) - min(s["start"] for s in spans) if spans else 0.0
    budget = seconds * threads
    return {"tasks": len(mine), "tasks_per_s": len(mine) / seconds,
            "task_compute_median_s": statistics.median(compute) if compute else float("nan"),
            "task_compute_total_s": total,
            "overhead_per_task_s": (budget - total) / len(mine) if mine else float("nan"),
            "task_span_s": span, "share_computing": total / budget,
            "share_idle_while_tasks_run": (span * threads - total) / budget,
            "share_outside_tasks": (seconds - span) / seconds}


def timed_stage(client, threads: int, prefix: str, work: Callable[[], tuple[int, float]]) -> dict:
    """Run ``work`` (returns slices, seconds) under the scheduler's task stream."""
    from distributed import get_task_stream

    with get_task_stream(client=client) as stream:
        slices, seconds = work()
    return {"slices": slices, "wall_s": seconds, "slices_per_s": slices / seconds,
            **task_numbers(stream.data, prefix, seconds, threads)}


def performance_report(client, path: Path) -> contextlib.AbstractContextManager:
    """A Dask performance report to ``path`` where the scheduler can draw it (bokeh), else nothing."""
    from distributed import performance_report as report

    return report(filename=str(path)) if client.run_on_scheduler(_has_bokeh) else contextlib.nullcontext()


def _has_bokeh() -> bool:
    import importlib.util

    return importlib.util.find_spec("bokeh") is not None


def one_count(src: Path, workdir: Path, scheduler: str | None, count: int) -> dict:
    """Ingest then features into a fresh store on ``count`` workers."""
    store = workdir / f"store-{count}w.zarr"
    shutil.rmtree(store, ignore_errors=True)
    shutil.rmtree(features_path(str(store)), ignore_errors=True)
    html = workdir / f"performance-{count}w.html"
    html.unlink(missing_ok=True)
    with workers_of(scheduler, count) as client:
        warm_workers(client)
        threads = sum(client.nthreads()[a] for a in sorted(client.nthreads())[:count])

        def run_ingest() -> tuple[int, float]:
            report = ingest([src], store, client=client, progress=False)
            return report.slices_written, report.seconds

        def run_features() -> tuple[int, float]:
            report = compute_features(store, client=client, progress=False)
            return report.slices_computed, report.seconds

        with performance_report(client, html):
            result = {"workers": count, "threads": threads,
                      "ingest": timed_stage(client, threads, "ingest-", run_ingest),
                      "features": timed_stage(client, threads, "features-", run_features)}
    result["performance_report"] = str(html) if html.exists() else None
    return result


def compare(base: dict, top: dict) -> dict:
    """Speedup (slices/s, top / base) and parallel efficiency (speedup / thread ratio) per stage."""
    out = {}
    for stage in ("ingest", "features"):
        speedup = top[stage]["slices_per_s"] / base[stage]["slices_per_s"]
        out[stage] = {"slices_per_s": {str(base["workers"]): base[stage]["slices_per_s"],
                                       str(top["workers"]): top[stage]["slices_per_s"]},
                      "speedup": speedup, "efficiency": speedup / (top["threads"] / base["threads"])}
    return out


def run(workdir: Path, *, quick: bool = False, scheduler: str | None = None, workers: int | None = None,
        **sizes: int) -> dict:
    """Ingest and features of ``slices`` synthetic slices on 1 worker, then on ``workers`` (default 2)."""
    size = pick_sizes(SIZES, QUICK, quick, sizes)
    top = workers or 2
    if top < 2:
        raise ValueError(f"scaling compares 1 worker with more: workers must be >= 2, got {top}")
    workdir = Path(workdir)
    src = workdir / "src"
    if not src.exists():
        per_series = size["slices_per_series"]
        write_cohort(src, patients=max(1, round(size["slices"] / (3 * per_series))), slices_per_series=per_series,
                     seed=3, progress=False)
    with on_machine() as machine:
        runs = {count: one_count(src, workdir, scheduler, count) for count in (1, top)}
    return {"machine": machine, "date": time.strftime("%Y-%m-%d"), "quick": quick,
            "slices": runs[1]["ingest"]["slices"], "workers": [1, top],
            "runs": {f"{count}_workers": r for count, r in runs.items()}, "stages": compare(runs[1], runs[top])}


def ratios(result: dict) -> dict[str, float]:
    """Speedup per stage, N workers vs 1."""
    top = result["workers"][-1]
    return {f"scaling {stage}: {top} vs 1 workers": result["stages"][stage]["speedup"]
            for stage in ("ingest", "features")}


def throughput(result: dict) -> tuple[float, float]:
    """Ingest slices/s on N workers and on 1."""
    top = result["workers"][-1]
    rates = result["stages"]["ingest"]["slices_per_s"]
    return rates[str(top)], rates["1"]
