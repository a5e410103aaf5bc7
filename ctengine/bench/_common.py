"""What every benchmark shares: the machine it ran on, its sizes, its cluster."""
from __future__ import annotations

import contextlib
import os
import platform
import sys
import time
from typing import Any, Iterator

from ..cluster import default_workers


@contextlib.contextmanager
def on_machine() -> Iterator[dict[str, Any]]:
    """Facts of this machine; the 1, 5 and 15 minute load averages at start and, on exit, at end."""
    import psutil

    info = {"node": platform.node(), "cpus": os.cpu_count(), "usable_cpus": default_workers(),
            "memory_gib": psutil.virtual_memory().total / 2**30, "platform": platform.platform(),
            "python": sys.version.split()[0], "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "load_average_start": list(os.getloadavg())}
    yield info
    info["load_average_end"] = list(os.getloadavg())


def pick_sizes(default: dict[str, int], quick: dict[str, int], use_quick: bool, given: dict[str, Any]) -> dict:
    """The sizes of a run: the full or quick defaults, overridden by the given ones."""
    unknown = sorted(set(given) - set(default))
    if unknown:
        raise TypeError(f"unknown sizes {unknown}; this benchmark takes {sorted(default)}")
    return {**(quick if use_quick else default), **{k: v for k, v in given.items() if v is not None}}


def cluster(scheduler: str | None, workers: int | None):
    """A Dask client: the given scheduler, else a LocalCluster of ``workers`` processes (default one per core)."""
    from ..cluster import dask_client

    return dask_client(scheduler=scheduler, workers=None if scheduler else workers)


def worker_count(client) -> int:
    """Worker threads of the cluster behind ``client``."""
    return sum(client.nthreads().values())


def warm_workers(client) -> None:
    """Import the ingest and feature code and load the cached kernels on every worker before timing."""
    client.run(_warm)


def _warm() -> None:
    import importlib

    importlib.import_module("ctengine.ingestion")
    importlib.import_module("ctengine.features").warm_up()


class CpuClock:
    """CPU seconds (user + sys) of this process and all its descendants between start and :meth:`seconds`.

    Descendants alive at either end are read with psutil; children that ended and were waited for count
    through ``RUSAGE_CHILDREN``. Work of a grandchild reaped by a child that is still alive is lost.
    """

    def __init__(self) -> None:
        self._start = self._now()

    @staticmethod
    def _now() -> float:
        import resource

        import psutil

        me = psutil.Process()
        total = sum(me.cpu_times()[:2])
        for child in me.children(recursive=True):
            try:
                total += sum(child.cpu_times()[:2])
            except psutil.Error:  # ended since it was listed
                pass
        reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
        return total + reaped.ru_utime + reaped.ru_stime

    def seconds(self) -> float:
        """CPU seconds since the clock was made."""
        return self._now() - self._start
