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
