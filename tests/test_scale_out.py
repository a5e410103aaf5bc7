"""Scale-out on real processes: `dask scheduler` and `dask worker` on 127.0.0.1 driven through the
ctengine CLI, and a store on S3 (a moto server), both compared with a run on a local cluster.

The processes, the session cohort and the comparisons are in tests/cluster_helpers.py.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request

import numpy as np
import pandas as pd
import pytest

import ctengine
from ctengine.features import compute_features
from ctengine.store import filesystem, names, open_root, store_info, verify
from cluster_helpers import (BUCKET, COHORT_SERIES, COHORT_SLICES, Cluster, assert_same_objects,
                             assert_same_results, free_port, local_reference, run_cli, store_objects,
                             synthetic_cohort, wait_for)

# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return synthetic_cohort(tmp_path_factory)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, client):
    return local_reference(tmp_path_factory, client)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    running = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        running.use_workers("w1", "w2", wait=False)  # they start while the tests prepare their data
        yield running
    finally:
        running.close()


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on 127.0.0.1 with one bucket; yields the fsspec storage options."""
    pytest.importorskip("s3fs", reason="object-store tests need s3fs")
    pytest.importorskip("flask", reason="the moto server needs flask (moto[server])")
    pytest.importorskip("moto.server", reason="object-store tests need moto[server]")
    import s3fs

    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    options = {"endpoint_url": f"http://127.0.0.1:{port}", "key": "test", "secret": "test"}
    try:
        def up() -> bool:
            if server.poll() is not None:
                raise RuntimeError(f"moto server exited:\n{log.read_text()}")
            try:
                return urllib.request.urlopen(options["endpoint_url"], timeout=1).status == 200
            except OSError:
                return False
        wait_for(up, what="the moto server")
        s3fs.S3FileSystem(**options).mkdir(BUCKET)
        yield options
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=20)


def executed_tasks(cluster: Cluster) -> dict[str, int]:
    """Tasks each worker has run since it started."""
    names = {address: name for name, address in cluster.workers().items()}
    counts = cluster.client.run(lambda dask_worker: dask_worker.state.executed_count)
    return {names[address]: count for address, count in counts.items()}


# ---------------------------------------------------------------- tests

def test_cli_on_a_running_scheduler_matches_the_local_run(cluster, cohort, reference, tmp_path):
    cluster.use_workers("w1", "w2")
    before = executed_tasks(cluster)
    store = tmp_path / "s.zarr"
    report = json.loads(run_cli("ingest", cohort, "--store", store, "--scheduler", cluster.address, "--json").stdout)
    assert (report["slices"], report["series_written"], report["failed_series"]) == (COHORT_SLICES, COHORT_SERIES, [])
    out = run_cli("features", store, "--scheduler", cluster.scheduler_file).stdout  # a scheduler file works too
    assert f"in {COHORT_SERIES} series (0 already done)" in out
    ran = {name: count - before[name] for name, count in executed_tasks(cluster).items()}
    assert sum(ran.values()) >= 2 * COHORT_SERIES and min(ran.values()) > 0, ran  # both workers did the work
    assert_same_results(store, reference / "s.zarr")
    assert_same_objects(store_objects(store), store_objects(reference / "s.zarr"))
    assert not list(store.rglob("*.partial"))


def test_relative_paths_are_resolved_on_the_client(cohort, cluster, tmp_path, monkeypatch):
    (tmp_path / "src").symlink_to(cohort)
    monkeypatch.chdir(tmp_path)  # the workers run elsewhere
    report = ctengine.ingest(["src"], "rel.zarr", client=cluster.client, progress=False)
    assert (report.slices, report.quarantined) == (COHORT_SLICES, [])
    assert (tmp_path / "rel.zarr" / names.raw_shard_key("patient1", "SR_2")).exists()


def test_store_on_object_storage_matches_the_local_store(cohort, cluster, s3, client, tmp_path):
    src = tmp_path / "src"  # one series (features on object storage cost ~10 s per series) and the CSVs
    for path in cohort.glob("COVID-CTset/*/patient1/SR_2/*.tif"):
        (src / path.relative_to(cohort)).parent.mkdir(parents=True, exist_ok=True)
        os.link(path, src / path.relative_to(cohort))
    for name in ("Patient_details.csv", "Patients_metadata.csv"):
        shutil.copy(cohort / name, src / name)
    local = tmp_path / "local.zarr"
    ctengine.ingest([src], local, client=client, progress=False)
    compute_features(local, client=client, progress=False)

    url, options = f"s3://{BUCKET}/{tmp_path.name}.zarr", json.dumps(s3)
    report = json.loads(run_cli("ingest", src, "--store", url, "--storage-options", options,
                                "--scheduler", cluster.address, "--json").stdout)
    assert (report["slices"], report["series_written"], report["failed_series"]) == (6, 1, [])
    checked = verify(url, sources=[src], client=cluster.client, storage_options=s3)
    assert checked.ok and (checked.slices_checked, checked.sources_checked) == (6, 6)
    run_cli("features", url, "--storage-options", options, "--scheduler", cluster.address)

    assert_same_results(url, local, s3)
    opened = ctengine.open_store(url, storage_options=s3)
    got, expected = opened.series("patient1", "SR_2"), ctengine.open_store(local).series("patient1", "SR_2")
    assert got.identical(expected.compute()) and got.dtype == np.uint16 and got.attrs["thickness_mm"] == 5
    info = store_info(url, storage_options=s3)
    assert info == {**store_info(local), "store": url}
    assert_same_objects(store_objects(url, s3), store_objects(local))


def test_a_store_on_object_storage_can_be_trained_on_and_evaluated(s3, client, tmp_path):
    pytest.importorskip("torch")
    from conftest import SMALL, make_tree

    from ctengine.learn.train import train

    spec = [("137covid", f"patient{p}", "SR_2", 3) for p in (1, 3, 5, 7, 9)]
    spec += [("normal1", f"patient{p}", "SR_2", 3) for p in (2, 4, 6, 8, 10)]
    make_tree(tmp_path / "src", series_spec=tuple(spec), seed=2)
    url = f"s3://{BUCKET}/{tmp_path.name}-train.zarr"
    ctengine.ingest([tmp_path / "src"], url, client=client, progress=False, shape=SMALL, storage_options=s3)
    result = train(url, fold=1, epochs=1, batch_size=4, out=tmp_path / "run", progress=False, input_size=32,
                   threads=1, lung_only=False, crop=None, device="cpu", storage_options=s3)
    assert result.checkpoint.exists() and np.isfinite(result.history[0]["loss"])
    run_cli("evaluate", url, "--fold", 1, "--checkpoint", result.checkpoint, "--out", tmp_path / "eval",
            "--device", "cpu", "--storage-options", json.dumps(s3))
    predictions = pd.read_csv(tmp_path / "eval/predictions.csv")
    assert len(predictions) and predictions["probability"].between(0, 1).all()


def test_object_store_listings_are_never_stale(s3):
    """Workers write the store while a client holds it open: a second look sees their objects."""
    import s3fs

    url = f"s3://{BUCKET}/listings.zarr"
    root = open_root(url, mode="w", storage_options=s3)
    root.create_group("patient1")
    fs, base = filesystem(url, s3)
    assert len(fs.ls(base)) == 2 and list(root.group_keys()) == ["patient1"]  # list it (fsspec and zarr)
    worker = s3fs.S3FileSystem(skip_instance_cache=True, **s3)  # another process, in effect
    worker.pipe_file(f"{base}/patient2/zarr.json", json.dumps({"zarr_format": 3, "node_type": "group"}).encode())
    fs, base = filesystem(url, s3)
    assert fs.exists(f"{base}/patient2/zarr.json") and len(fs.ls(base)) == 3
    assert fs.glob(f"{base}/*/zarr.json") == [f"{base}/patient1/zarr.json", f"{base}/patient2/zarr.json"]
    assert sorted(open_root(url, storage_options=s3).group_keys()) == ["patient1", "patient2"]


def test_local_cluster_starts_while_port_8787_is_taken():
    """Another cluster holding the default dashboard port must not stop a local run (warnings are errors)."""
    from ctengine.cluster import dask_client

    with socket.socket() as held:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with contextlib.suppress(OSError):  # already held by someone else: the same situation
            held.bind(("", 8787))
            held.listen()
        with dask_client(workers=1) as local:
            assert local.submit(sum, [1, 2]).result() == 3
