"""Faults on real processes: a worker SIGKILLed in the middle of ingest and of features, the client
SIGKILLed in the middle of features, and data larger than the workers' memory limit.

Every run must end with complete results identical to the local reference run.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

import ctengine
from ctengine.store import names
from cluster_helpers import (CLI, COHORT_SERIES, Cluster, assert_same_objects, assert_same_results,
                             local_reference, run_cli, store_objects, synthetic_cohort, wait_for)

MEMORY_LIMIT = 300_000_000  # bytes per worker (dask worker --memory-limit)
MEMORY_TROUBLE = re.compile(r"Pausing worker|memory budget|Restarting|MemoryError|KilledWorker")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return synthetic_cohort(tmp_path_factory)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, client):
    return local_reference(tmp_path_factory, client)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    running = Cluster(tmp_path_factory.mktemp("faults-cluster"))
    try:
        running.use_workers("m1", "m2", memory_limit=str(MEMORY_LIMIT), wait=False)  # the first tests' workers
        yield running
    finally:
        running.close()


def replicate(cohort: Path, out: Path, copies: int) -> dict[tuple[str, str], tuple[str, str]]:
    """Hard-link the cohort's slices ``copies`` times under new patient numbers (no CSVs).

    Returns new (patient, series) -> original (patient, series).
    """
    origin = {}
    for path in sorted(cohort.glob("COVID-CTset/*/*/*/*.tif")):
        group, patient, series, name = path.relative_to(cohort / "COVID-CTset").parts
        for copy in range(1, copies + 1):
            new = f"patient{1000 * copy + int(patient.removeprefix('patient'))}"
            target = out / "COVID-CTset" / group / new / series / name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, target)
            origin[(new, series)] = (patient, series)
    return origin


def assert_copies_stored(store: Path, origin: dict[tuple[str, str], tuple[str, str]], reference: Path) -> None:
    """Every copied series holds exactly the reference's shard bytes and catalog checksums."""
    def checksums(url):
        return ctengine.open_store(url).catalog.groupby(["patient", "series"])["checksum"].agg(list)

    got, expected = checksums(store), checksums(reference)
    assert len(got) == len(origin)
    shards = {key: (reference / names.raw_shard_key(*key)).read_bytes() for key in set(origin.values())}
    for (patient, series), key in origin.items():
        assert got[(patient, series)] == expected[key], (patient, series)
        assert (store / names.raw_shard_key(patient, series)).read_bytes() == shards[key], (patient, series)
    assert not list(store.rglob("*.partial"))


def raw_shards(store: Path) -> int:
    return len(list(store.glob(f"*/*/{names.RAW}/c/0/0/0")))


def complete_lungs(store: Path) -> int:
    """Series whose lung labels are marked complete."""
    done = 0
    for path in store.glob("*/*/labels/lung/zarr.json"):
        try:
            done += bool(json.loads(path.read_text())["attributes"]["ctengine"]["complete"])
        except (OSError, ValueError, KeyError):  # being written
            pass
    return done


def kill_busy_worker(cluster: Cluster, prefix: str, progress, at_least: int) -> tuple[str, int]:
    """Once ``progress()`` reaches ``at_least``, SIGKILL a worker running a ``prefix`` task.

    Returns the worker's name and the progress at the kill.
    """
    def busy() -> str | None:
        if progress() < at_least:
            return None
        names = {address: name for name, address in cluster.workers().items()}
        return next((names[address] for address, keys in cluster.client.processing().items()
                     if any(str(key).startswith(f"{prefix}-") for key in keys)), None)

    victim = wait_for(busy, timeout=180, interval=0.01, what=f"a worker running {prefix} tasks")
    done = progress()
    cluster.kill(victim)
    return victim, done


def test_ingest_of_more_data_than_worker_memory(cluster, cohort, reference, tmp_path):
    cluster.use_workers("m1", "m2", memory_limit=str(MEMORY_LIMIT))
    pids = cluster.pids()
    origin = replicate(cohort, tmp_path / "src", copies=18)
    store = tmp_path / "s.zarr"
    report = json.loads(run_cli("ingest", tmp_path / "src", "--store", store, "--scheduler", cluster.address,
                                "--json").stdout)
    assert (report["slices"], report["series_written"]) == (18 * 36, len(origin))
    assert report["failed_series"] == [] and report["quarantined"] == []
    workers = cluster.client.scheduler_info()["workers"].values()
    assert {info["memory_limit"] for info in workers} == {MEMORY_LIMIT}
    memory = {info["name"]: info["metrics"]["memory"] for info in workers}
    # each worker's share of the pixels on top of its own footprint exceeds its limit: a worker that
    # kept what it ingested would have been paused or restarted by its nanny
    assert report["bytes_raw"] / 2 + min(memory.values()) > MEMORY_LIMIT and max(memory.values()) < MEMORY_LIMIT
    assert cluster.pids() == pids  # the same worker processes: none died or was restarted
    for name in pids:
        assert not MEMORY_TROUBLE.search(cluster.log(name)), cluster.log(name)[-3000:]
    assert_copies_stored(store, origin, reference / "ingested.zarr")
    shutil.rmtree(store)  # 140 MB that no one needs after the test


def test_worker_killed_during_ingest(cohort, reference, cluster, tmp_path):
    cluster.use_workers("m1", "m2", memory_limit=str(MEMORY_LIMIT))
    origin = replicate(cohort, tmp_path / "src", copies=16)   # enough series that the kill lands mid-run
    store = tmp_path / "s.zarr"
    run = subprocess.Popen([*CLI, "ingest", str(tmp_path / "src"), "--store", str(store), "--scheduler",
                            cluster.address, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        victim, written = kill_busy_worker(cluster, "ingest", lambda: raw_shards(store), at_least=3)
    finally:
        out, err = run.communicate(timeout=300)
    assert run.returncode == 0, err[-3000:]
    assert written < len(origin), "the kill must land in the middle of the ingest"
    assert victim not in cluster.workers() and len(cluster.workers()) == 1  # the survivor did the rest
    report = json.loads(out)  # a series the victim finished but could not report is re-run and found complete
    assert (report["slices"], report["failed_series"]) == (16 * 36, [])
    assert report["series_written"] + report["series_skipped"] == len(origin)
    assert_copies_stored(store, origin, reference / "ingested.zarr")


def test_worker_killed_during_features(reference, cluster, tmp_path):
    cluster.use_workers("w1", "w2")
    store = tmp_path / "s.zarr"
    shutil.copytree(reference / "ingested.zarr", store)
    run = subprocess.Popen([*CLI, "features", str(store), "--scheduler", cluster.address],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        victim, done = kill_busy_worker(cluster, "features", lambda: complete_lungs(store), at_least=1)
    finally:
        out, err = run.communicate(timeout=300)
    assert run.returncode == 0, err[-3000:]
    assert done < COHORT_SERIES, "the kill must land in the middle of the features run"
    assert victim not in cluster.workers() and len(cluster.workers()) == 1
    computed, skipped = map(int, re.search(r"in (\d+) series \((\d+) already done\)", out).groups())
    assert computed + skipped == COHORT_SERIES  # skipped: finished by the victim, found complete on re-run
    assert_same_results(store, reference / "s.zarr")
    assert_same_objects(store_objects(store), store_objects(reference / "s.zarr"))


def test_features_resume_after_the_client_is_killed(reference, cluster, tmp_path):
    store = tmp_path / "s.zarr"
    shutil.copytree(reference / "ingested.zarr", store)
    killed = subprocess.Popen([*CLI, "features", str(store), "--workers", "1"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: complete_lungs(store) >= 1, timeout=180, interval=0.02, what="a first series")
    finally:
        os.killpg(killed.pid, signal.SIGKILL)  # the client and its local cluster
        killed.wait()
    done = complete_lungs(store)
    assert 1 <= done < COHORT_SERIES, "the kill must land in the middle of the features run"
    assert not (tmp_path / "s.zarr.features").exists()

    if not cluster.workers():
        cluster.use_workers("w1")
    out = run_cli("features", store, "--scheduler", cluster.address).stdout
    assert f"in {COHORT_SERIES - done} series ({done} already done)" in out
    assert_same_results(store, reference / "s.zarr")
    assert_same_objects(store_objects(store), store_objects(reference / "s.zarr"))
