"""The one driver over series (ctengine.driver.map_series) and the report shape."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from ctengine.driver import RunReport, map_series


def _half(value: int) -> int:
    if value % 2:
        raise ValueError(f"{value} is odd")
    return value // 2


def test_results_in_task_order_and_failures_collected(client):
    outcome = map_series(_half, [(v,) for v in (8, 3, 4, 5, 2)], labels=["a/1", "b/2", "c/3", "d/4", "e/5"],
                         name="half", client=client, progress=False, retries=0)
    assert outcome.results == [4, 2, 1]
    assert sorted(outcome.failures) == [("b/2", "ValueError: 3 is odd"), ("d/4", "ValueError: 5 is odd")]


def test_a_second_run_computes_again(client):
    for _ in range(2):  # keys are unique per run, so a second run is not served the first one's futures
        assert map_series(_half, [(2,), (2,)], labels=["a/1", "a/1"], name="again", client=client,
                          progress=False).results == [1, 1]


def test_a_cluster_started_for_the_run_is_timed_apart(monkeypatch):
    """The start-up and shutdown of the run's own cluster go to cluster_seconds (a scripted clock)."""
    import contextlib
    import types

    from distributed import Client

    import ctengine.cluster
    import ctengine.driver

    @contextlib.contextmanager
    def in_process_cluster():
        with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as c:
            yield c

    ticks = iter([10.0, 12.5, 20.0, 21.0])  # start, started, closing, closed
    monkeypatch.setattr(ctengine.cluster, "dask_client", in_process_cluster)
    monkeypatch.setattr(ctengine.driver, "time", types.SimpleNamespace(perf_counter=lambda: next(ticks)))
    outcome = map_series(_half, [(2,)], labels=["a/1"], name="own", progress=False)
    assert outcome.results == [1] and outcome.cluster_seconds == 3.5


def test_one_label_per_task():
    with pytest.raises(ValueError, match="one entry per task"):
        map_series(_half, [(2,)], labels=[], name="x", progress=False)


@dataclass
class _Report(RunReport):
    count: int = 0
    derived = ("twice",)

    @property
    def twice(self) -> int:
        return 2 * self.count


def test_report_to_dict():
    report = _Report(store="s.zarr", seconds=2.5, count=3, failed_series=[("p/s", "boom")])
    assert report.to_dict() == {"store": "s.zarr", "seconds": 2.5, "failed_series": [["p/s", "boom"]],
                                "cluster_seconds": 0.0, "count": 3, "twice": 6}
    assert not report.ok


def test_local_workers_start_with_the_allocator_settings(client):
    import os

    from ctengine.cluster import WORKER_ENVIRONMENT

    seen = client.run(lambda: {name: os.environ.get(name) for name in WORKER_ENVIRONMENT})
    assert set(WORKER_ENVIRONMENT) >= {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_"}
    assert all(found == WORKER_ENVIRONMENT for found in seen.values()) and len(seen) == 2
