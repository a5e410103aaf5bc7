"""Where Dask work runs: a LocalCluster sized to the machine, or an existing scheduler."""
from __future__ import annotations

import contextlib
import json
import logging
import os
from typing import Iterator

import dask
from distributed import Client, LocalCluster

#: seconds a connection to an existing scheduler may take before it is reported unreachable
CONNECT_TIMEOUT_S = 10


class SchedulerUnreachableError(ConnectionError):
    """No Dask scheduler answered at the given address (or scheduler file) within :data:`CONNECT_TIMEOUT_S`."""


def connect(scheduler: str, *, timeout: float = CONNECT_TIMEOUT_S) -> Client:
    """A Client of the running scheduler at ``scheduler`` (``tcp://host:8786`` or a scheduler file ``.json``).

    Parameters
    ----------
    scheduler : str
        Address of the scheduler, or path of its scheduler file.
    timeout : float
        Seconds to wait for the connection.

    Raises
    ------
    SchedulerUnreachableError
        When no scheduler answers within ``timeout`` seconds.
    """
    address = _scheduler_file_address(scheduler) if scheduler.endswith(".json") else scheduler
    try:
        return Client(address, timeout=timeout)
    except (OSError, TimeoutError) as exc:
        raise SchedulerUnreachableError(
            f"no Dask scheduler answered at {scheduler} within {timeout:g} s: start it (dask scheduler) or "
            f"check the address, or leave out --scheduler to run a local cluster") from exc


def default_workers() -> int:
    """One single-threaded worker process per core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _scheduler_file_address(path: str) -> str:
    """The address in a scheduler file (distributed would wait for a missing file without end)."""
    hint = f"start the scheduler with dask scheduler --scheduler-file {path}, or check the path"
    try:
        with open(path) as handle:
            return json.load(handle)["address"]
    except FileNotFoundError:
        raise SchedulerUnreachableError(f"no scheduler file at {path}: {hint}") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SchedulerUnreachableError(f"{path} is not a readable scheduler file ({exc!r}): {hint}") from None


#: environment of local workers, on top of Dask's own (which sets MALLOC_TRIM_THRESHOLD_=64 KiB and so turns
#: off glibc's adaptive mmap threshold and gives back the top of the heap after almost every free):
#: - MALLOC_MMAP_THRESHOLD_: a series' arrays (tens of MB) come from the heap and are used again, instead
#:   of a fresh mmap whose every page faults (the feature pass measured 310 -> 930 slices/s on the 2-core VM);
#: - MALLOC_TOP_PAD_: the heap keeps 16 MiB above its top when it shrinks, so the codec's per-call
#:   buffers do not fault in fresh pages on every chunk (ingest measured 0.55 -> 0.27 ms of system time
#:   per slice, 900 -> 1,050 slices/s).
#: See docs/DEPLOY.md for workers started elsewhere.
WORKER_ENVIRONMENT = {"MALLOC_MMAP_THRESHOLD_": str(64 * 2**20), "MALLOC_TOP_PAD_": str(16 * 2**20)}


@contextlib.contextmanager
def dask_client(*, scheduler: str | None = None, workers: int | None = None,
                memory_limit: str | None = "auto") -> Iterator[Client]:
    """A distributed Client: connect to ``scheduler`` if given, else start a LocalCluster.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running scheduler (``tcp://host:8786``) or a scheduler file path.
    workers : int, optional
        Worker processes of the local cluster (default: one per core).
    memory_limit : str, optional
        Memory limit per local worker (dask syntax, e.g. ``"2GiB"``).

    Raises
    ------
    SchedulerUnreachableError
        When ``scheduler`` does not answer within :data:`CONNECT_TIMEOUT_S` seconds.
    """
    if scheduler and workers:
        raise ValueError("give either scheduler or workers, not both")
    if scheduler:
        with connect(scheduler) as client:
            yield client
        return
    for name in ("distributed", "distributed.worker", "distributed.scheduler", "distributed.nanny"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # No dashboard; the scheduler's HTTP endpoint (health, metrics) listens on a free local port rather
    # than 8787, which another cluster on the machine may hold (a port clash is a warning, an error
    # where warnings are errors). Workers log only critical events: a task that raises is logged by its
    # worker with the task's traceback ("Compute Failed"), and the driver reports it as one line instead.
    with dask.config.set({f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in WORKER_ENVIRONMENT.items()}), \
            LocalCluster(n_workers=workers or default_workers(), threads_per_worker=1, processes=True,
                         dashboard_address=None, scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                         memory_limit=memory_limit, silence_logs=logging.CRITICAL) as cluster:
        with Client(cluster) as client:
            yield client
