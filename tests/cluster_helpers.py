"""Real processes for the scale-out and fault tests: a ``dask scheduler`` with ``dask worker``
processes on 127.0.0.1 (:class:`Cluster`), the ``ctengine`` CLI in a fresh process (:func:`run_cli`),
the session's synthetic cohort and its local reference run, and comparisons of stores.
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
from pathlib import Path

import numpy as np
import pandas as pd

import ctengine
from ctengine.features import compute_features
from ctengine.store import filesystem
from ctengine.synth import write_cohort

CLI = [sys.executable, "-m", "ctengine.cli"]
COHORT_SLICES, COHORT_SERIES = 36, 6  # 2 patients x 3 series x 6 slices of 512 x 512
BUCKET = "ctengine-test"


def run_cli(*args, timeout: float = 900) -> subprocess.CompletedProcess:
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
