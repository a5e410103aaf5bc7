"""Scale-out on real processes: `dask scheduler` and `dask worker` on 127.0.0.1 driven through the
ctengine CLI, and a store on S3 (a moto server), both compared with a run on a local cluster.

The helpers here (``Cluster``, ``run_cli``, the session cohort and reference) are shared with
tests/test_faults.py.
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
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import ctengine
from ctengine.store import filesystem, names, open_root, store_info, verify
from ctengine.features import compute_features
from ctengine.synth import write_cohort

CLI = [sys.executable, "-m", "ctengine.cli"]
COHORT_SLICES, COHORT_SERIES = 36, 6  # 2 patients x 3 series x 6 slices of 512 x 512
BUCKET = "ctengine-test"


def run_cli(*args, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run ``ctengine ARGS`` in a fresh process; fail the test with its stderr on a non-zero exit."""
    result = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"ctengine {' '.join(map(str, args))}\n{result.stdout}\n{result.stderr[-4000:]}"
    return result


def wait_for(predicate, *, timeout: float = 60, what: str = "condition", interval: float = 0.05):
    """Poll ``predicate`` until it returns a truthy value; return it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


class Cluster:
    """A ``dask scheduler`` and ``dask worker`` processes on 127.0.0.1, each in its own process group.

    Workers run in a folder that is not the tests' working directory. ``client`` is a Client of the
    test process, used to watch the cluster (never to run ctengine work unless a test says so).
    """

    def __init__(self, folder: Path):
        from distributed import Client

        self.folder = folder
        (folder / "cwd").mkdir(parents=True, exist_ok=True)
        self.processes: dict[str, subprocess.Popen] = {}
        self.client = None
        self.scheduler_file = file = folder / "scheduler.json"
        self._spawn("scheduler", "scheduler", "--host", "127.0.0.1", "--port", "0", "--scheduler-file", file,
                    "--no-dashboard", "--dashboard-address", "127.0.0.1:0", "--idle-timeout", "600")
        try:
            self.address = wait_for(lambda: self._alive("scheduler") and file.exists() and _read_address(file),
                                    what="the scheduler file")
            self.client = Client(self.address, timeout="30s")
        except BaseException:
            self.close()
            raise

    def _spawn(self, name: str, *args) -> None:
        with open(self.folder / f"{name}.log", "wb") as log:
            self.processes[name] = subprocess.Popen([sys.executable, "-m", "dask", *map(str, args)], stdout=log,
                                                    stderr=subprocess.STDOUT, cwd=self.folder / "cwd",
                                                    start_new_session=True)

    def _alive(self, name: str) -> bool:
        if self.processes[name].poll() is not None:
            raise RuntimeError(f"{name} exited with {self.processes[name].returncode}:\n{self.log(name)[-3000:]}")
        return True

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")

    def workers(self) -> dict[str, str]:
        """Registered workers: name -> address."""
        return {info["name"]: address for address, info in self.client.scheduler_info()["workers"].items()}

    def use_workers(self, *names: str, memory_limit: str = "auto", wait: bool = True) -> None:
        """Make exactly ``names`` the workers (one thread each): stop the others, start the missing ones
        and (``wait``) wait until they are registered."""
        for name in [n for n, p in self.processes.items() if n != "scheduler" and n not in names]:
            self.stop(name)
        missing = [n for n in names if n not in self.processes]
        for name in missing:
            self._spawn(name, "worker", self.address, "--name", name, "--nthreads", "1", "--nworkers", "1",
                        "--host", "127.0.0.1", "--no-dashboard", "--memory-limit", memory_limit,
                        "--local-directory", self.folder / "scratch", "--death-timeout", "60")
        if wait:
            wait_for(lambda: all(self._alive(n) for n in names) and set(self.workers()) == set(names),
                     timeout=90, what=f"workers {names}")

    def pids(self) -> dict[str, int]:
        """Worker name -> pid of the worker process (under its nanny)."""
        names = {address: name for name, address in self.workers().items()}
        return {names[address]: pid for address, pid in self.client.run(os.getpid).items()}

    def kill(self, name: str) -> None:
        """SIGKILL a worker's whole process group (nanny and worker): the worker is gone for good."""
        process = self.processes.pop(name)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def stop(self, name: str) -> None:
        """SIGTERM a process group and wait (SIGKILL after 20 s)."""
        process = self.processes.pop(name)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):  # the group already exited
                os.killpg(process.pid, sig)
            try:
                process.wait(timeout=20)
                return
            except subprocess.TimeoutExpired:
                continue

    def close(self) -> None:
        """Close the client, stop the workers, then the scheduler."""
        try:
            if self.client is not None:
                self.client.close()
        finally:
            for name in sorted(self.processes, key=lambda n: n == "scheduler"):
                self.stop(name)


def _read_address(file: Path) -> str | None:
    try:
        return json.loads(file.read_text())["address"]
    except (ValueError, KeyError):
        return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ---------------------------------------------------------------- data shared by the session

def synthetic_cohort(tmp_path_factory) -> Path:
    """2 patients x 3 series x 6 slices (512 x 512) in the COVID-CTset layout, written once per session."""
    out = tmp_path_factory.getbasetemp() / "scale-cohort"
    marker = out / ".ctengine-synth.json"
    if not (marker.exists() and json.loads(marker.read_text()).get("complete")):
        write_cohort(out, patients=2, slices_per_series=6, seed=11, progress=False, workers=1)
    return out


def local_reference(tmp_path_factory, client) -> Path:
    """The cohort run on the local cluster, once per session: ``ingested.zarr`` (ingest only) and
    ``s.zarr`` (ingest and features)."""
    base = tmp_path_factory.getbasetemp() / "scale-reference"
    if not (base / "done").exists():
        shutil.rmtree(base, ignore_errors=True)
        report = ctengine.ingest([synthetic_cohort(tmp_path_factory)], base / "ingested.zarr", client=client,
                                 progress=False)
        assert (report.slices, report.series_written, report.failed_series) == (COHORT_SLICES, COHORT_SERIES, [])
        shutil.copytree(base / "ingested.zarr", base / "s.zarr")
        features = compute_features(base / "s.zarr", client=client, progress=False)
        assert (features.series_computed, features.failed_series) == (COHORT_SERIES, [])
        (base / "done").touch()
    return base


def store_objects(url: str | os.PathLike, storage_options: dict | None = None) -> dict[str, bytes]:
    """Every object of a store and of its feature tables folder: relative key -> bytes."""
    objects = {}
    for suffix in ("", ".features"):
        fs, base = filesystem(os.fspath(url) + suffix, storage_options)
        data = fs.cat(fs.find(base))  # one batch: concurrent requests on object storage
        objects.update({f"{suffix or 'store'}/{path[len(base) + 1:]}": value for path, value in data.items()})
    return objects


def assert_same_objects(got: dict[str, bytes], expected: dict[str, bytes]) -> None:
    assert sorted(got) == sorted(expected)
    differ = sorted(key for key in expected if got[key] != expected[key])
    assert not differ, f"{len(differ)} objects differ, e.g. {differ[:5]}"


def assert_same_results(url: str | os.PathLike, reference: Path, storage_options: dict | None = None) -> None:
    """Catalog (checksums, selection), lung masks and the three feature tables equal the reference's."""
    got, expected = ctengine.open_store(url, storage_options=storage_options), ctengine.open_store(reference)
    pd.testing.assert_frame_equal(got.catalog, expected.catalog)
    for name in ("slices", "series", "patients"):
        pd.testing.assert_frame_equal(got.feature_table(name), expected.feature_table(name))
    for patient, series in expected.series_keys():
        mask = f"{patient}/{series}/labels/lung/0"
        np.testing.assert_array_equal(got.root[mask][:], expected.root[mask][:], err_msg=mask)


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
