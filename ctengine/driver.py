"""The one way work is mapped over the series of a store, and the shape of the reports.

:func:`map_series` runs one function per series on a Dask client
(:func:`ctengine.cluster.dask_client` by default) with retries, keys unique
per run, a progress bar and failures collected; ingest, features and verify
use it. :class:`RunReport` is the base of their reports.
"""
from __future__ import annotations

import contextlib
import time
import uuid
from dataclasses import dataclass, field, fields
from typing import Any, Callable, ClassVar, Sequence


@dataclass
class RunReport:
    """What a run over the series of a store did: the store, seconds, series that failed.

    Attributes
    ----------
    store : str
        Store path or URL.
    seconds : float
        Wall-clock time of the run (s), without the start-up and shutdown of a cluster.
    failed_series : list of (str, str)
        (what failed, usually "patient/series"; "ExceptionType: message").
    cluster_seconds : float
        Start-up and shutdown of the Dask cluster the run started itself (s), not in ``seconds``;
        0 when a client was given. Rates (``slices_per_second``) use ``seconds``.
    """

    store: str = ""
    seconds: float = 0.0
    failed_series: list[tuple[str, str]] = field(default_factory=list)
    cluster_seconds: float = 0.0
    #: properties added to :meth:`to_dict`
    derived: ClassVar[tuple[str, ...]] = ()

    @property
    def ok(self) -> bool:
        """True when no series failed."""
        return not self.failed_series

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-friendly values (lists of tuples become lists of lists)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update({name: getattr(self, name) for name in self.derived})
        return {k: [list(v) for v in value] if isinstance(value, list) else value for k, value in values.items()}


@dataclass
class MapResult:
    """Results of :func:`map_series` in the order of the tasks, the tasks that failed, and the seconds
    spent starting and closing a cluster it started itself (0 with a given client)."""

    results: list[Any] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    cluster_seconds: float = 0.0


@contextlib.contextmanager
def _own_cluster(outcome: MapResult):
    """A default cluster for one run; its start-up and shutdown time goes to ``outcome.cluster_seconds``."""
    from .cluster import dask_client

    started = time.perf_counter()
    with dask_client() as client:
        outcome.cluster_seconds += time.perf_counter() - started
        yield client
        closing = time.perf_counter()
    outcome.cluster_seconds += time.perf_counter() - closing


def map_series(func: Callable[..., Any], tasks: Sequence[tuple], *, labels: Sequence[str], name: str,
               client=None, weights: Sequence[int] | None = None, unit: str = "series",
               progress: bool = True, retries: int = 2) -> MapResult:
    """Run ``func(*task)`` for every task on a Dask cluster; a failing task is collected, the rest completes.

    Parameters
    ----------
    func : callable
        Runs on a worker; its result must pickle.
    tasks : sequence of tuple
        Positional arguments of each call.
    labels : sequence of str
        What each task is about (``"patient/series"``), used in the task key
        and in :attr:`MapResult.failures`.
    name : str
        Prefix of the task keys (``name-...``) and label of the progress bar.
    client : distributed.Client, optional
        Default: a LocalCluster sized to the machine, closed afterwards.
    weights : sequence of int, optional
        Progress of each task (e.g. its slices); default one per task.
    unit : str
        Unit of the progress bar.
    progress : bool
        Show a tqdm progress bar.
    retries : int
        Times a task is retried when its worker dies or it raises.

    Returns
    -------
    MapResult
        Results of the tasks that succeeded, in task order; failures as
        (label, "ExceptionType: message"); the cluster's start-up and shutdown (s).
    """
    from distributed import as_completed
    from tqdm.auto import tqdm

    if len(labels) != len(tasks) or (weights is not None and len(weights) != len(tasks)):
        raise ValueError(f"labels and weights need one entry per task ({len(tasks)} tasks)")
    steps = list(weights) if weights is not None else [1] * len(tasks)
    done: dict[int, Any] = {}
    outcome = MapResult()
    owned = contextlib.nullcontext(client) if client is not None else _own_cluster(outcome)
    with owned as active, tqdm(total=sum(steps), unit=unit, desc=name, disable=not progress) as bar:
        run = uuid.uuid4().hex[:8]  # keys unique per run: the scheduler may still hold an older run's results
        futures = [active.submit(func, *task, key=f"{name}-{label.replace('/', '-')}-{number}-{run}",
                                 retries=retries, pure=False)
                   for number, (task, label) in enumerate(zip(tasks, labels))]
        position = {future.key: number for number, future in enumerate(futures)}
        for future in as_completed(futures):
            number = position[future.key]
            bar.update(steps[number])
            try:
                done[number] = future.result()
            except Exception as exc:  # the worker raised: report the task, keep going
                outcome.failures.append((labels[number], f"{type(exc).__name__}: {exc}"))
    outcome.results = [done[number] for number in sorted(done)]
    return outcome
