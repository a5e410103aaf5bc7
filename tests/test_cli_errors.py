"""Every user error of the ``ctengine`` command ends in one line naming what is wrong, without a traceback.

Exit status 2 for usage errors, 1 for failures.
"""
from __future__ import annotations

import errno
import json
import os
import resource
import signal
import socket
import subprocess
import sys

import pytest
from click.testing import CliRunner
from conftest import make_tree

from ctengine.cli import main
from ctengine.cli_errors import DEBUG_ENV, disk_full, disk_full_reason

#: RLIMIT_FSIZE of the full-disk run: the store's small JSON files fit, a 512 x 512 slice's shard does not
FILE_SIZE_LIMIT = 64 * 1024


def error_line(result, exit_code: int) -> str:
    """The one ``Error:`` line of a CliRunner result that exited with ``exit_code`` through click, no traceback."""
    assert result.exit_code == exit_code, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert [line for line in lines if line.startswith("Error")] == lines[-1:], result.stderr
    return lines[-1]


def process_error_line(process: subprocess.CompletedProcess, exit_code: int) -> str:
    """The same check on a finished ``python -m ctengine.cli`` process."""
    assert process.returncode == exit_code, process.stdout + process.stderr
    assert "Traceback" not in process.stdout + process.stderr
    lines = process.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    assert errors == lines[-1:], process.stderr
    return lines[-1]


def ctengine(*arguments: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ctengine.cli", *arguments], capture_output=True, text=True,
                          timeout=300, **kwargs)


@pytest.fixture()
def a_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a store\n")
    return path


@pytest.fixture()
def source(tmp_path):
    src = tmp_path / "src"
    make_tree(src, shape=(512, 512), series_spec=(("normal1", "patient2", "SR_2", 2),
                                                  ("normal1", "patient3", "SR_2", 2)))
    return src


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("command", ["info", "features", "verify"])
def test_a_file_given_as_store_is_refused(command, a_file):
    line = error_line(CliRunner().invoke(main, [command, str(a_file)]), 1)
    assert f"{a_file} is a file, not a store" in line


def test_a_file_given_as_ingest_store_is_refused(source, a_file):
    line = error_line(CliRunner().invoke(main, ["ingest", str(source), "--store", str(a_file)]), 1)
    assert f"{a_file} is a file, not a store" in line and "created if missing" in line


COMMANDS = {"info": [], "features": [], "verify": [], "train": [], "evaluate": ["--fold", "1", "--checkpoint"]}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("where", ["empty", "missing"])
def test_a_folder_that_is_not_a_store_is_refused(command, where, tmp_path, a_file):
    folder = tmp_path / "store.zarr"
    if where == "empty":
        folder.mkdir()
    extra = [*COMMANDS[command], str(a_file)] if COMMANDS[command] else []
    line = error_line(CliRunner().invoke(main, [command, str(folder), *extra]), 1)
    assert str(folder) in line
    assert ("not a ctengine store" in line) if where == "empty" else ("no store at" in line and "ingest" in line)


def test_an_unreachable_scheduler_is_named_after_the_connect_timeout(source, tmp_path):
    address = f"tcp://127.0.0.1:{free_port()}"
    process = ctengine("ingest", str(source), "--store", str(tmp_path / "s.zarr"), "--scheduler", address)
    line = process_error_line(process, 1)
    assert address in line and "within 10 s" in line and "no Dask scheduler answered" in line


def test_a_missing_scheduler_file_is_named(source, tmp_path):
    missing = tmp_path / "scheduler.json"
    result = CliRunner().invoke(main, ["ingest", str(source), "--store", str(tmp_path / "s.zarr"),
                                       "--scheduler", str(missing)])
    line = error_line(result, 1)
    assert f"no scheduler file at {missing}" in line and "--scheduler-file" in line


def test_a_scheduler_file_gives_its_address(client, tmp_path):
    from ctengine.cluster import connect

    file = tmp_path / "scheduler.json"
    file.write_text(json.dumps({"address": client.scheduler.address}))
    with connect(str(file)) as connected:
        assert connected.scheduler.address == client.scheduler.address


def test_not_a_store_is_both_a_missing_file_and_a_bad_value(tmp_path):
    from ctengine.store import NotAStoreError, open_store

    with pytest.raises(NotAStoreError, match="no store at") as raised:
        open_store(tmp_path / "missing.zarr")
    assert isinstance(raised.value, FileNotFoundError) and isinstance(raised.value, ValueError)
    assert not (tmp_path / "missing.zarr").exists()


@pytest.mark.parametrize("command", ["ingest", "verify", "features", "demo", "bench"])
def test_workers_with_scheduler_is_a_usage_error(command, source, tmp_path):
    arguments = {"ingest": [str(source), "--store", str(tmp_path / "s.zarr")], "verify": [str(tmp_path)],
                 "features": [str(tmp_path)], "demo": ["--workdir", str(tmp_path / "demo")], "bench": ["--quick"]}
    result = CliRunner().invoke(main, [command, *arguments[command], "--workers", "2",
                                       "--scheduler", "tcp://127.0.0.1:8786"])
    line = error_line(result, 2)
    assert "--workers" in line and "--scheduler tcp://127.0.0.1:8786" in line
    assert not (tmp_path / "s.zarr").exists() and not (tmp_path / "demo").exists()


def test_predict_on_an_empty_folder(tmp_path, a_file):
    (tmp_path / "patient1").mkdir()
    line = error_line(CliRunner().invoke(main, ["predict", str(tmp_path / "patient1"), "--checkpoint", str(a_file)]),
                      1)
    assert f"no TIFF in {tmp_path / 'patient1'}" in line and "one patient's folder" in line


def test_predict_on_a_group_folder_names_a_patient_folder(tmp_path, a_file):
    make_tree(tmp_path / "src", series_spec=(("normal1", "patient2", "SR_2", 1), ("normal1", "patient3", "SR_2", 1)))
    group = tmp_path / "src" / "COVID-CTset" / "normal1"
    line = error_line(CliRunner().invoke(main, ["predict", str(group), "--checkpoint", str(a_file)]), 1)
    assert f"{group} holds patient folders (patient2, patient3)" in line and str(group / "patient2") in line


def test_predict_without_another_series_names_the_ones_there(tmp_path, a_file):
    make_tree(tmp_path / "src", series_spec=(("normal1", "patient2", "SR_3", 1),))
    patient = tmp_path / "src" / "COVID-CTset" / "normal1" / "patient2"
    line = error_line(CliRunner().invoke(main, ["predict", str(patient), "--checkpoint", str(a_file)]), 1)
    assert f"{patient} has no SR_2 folder (it has SR_3)" in line and "--series" in line


def test_predict_needs_a_checkpoint(tmp_path):
    make_tree(tmp_path / "src", series_spec=(("normal1", "patient2", "SR_2", 1),))
    patient = str(tmp_path / "src" / "COVID-CTset" / "normal1" / "patient2")
    assert "--checkpoint" in error_line(CliRunner().invoke(main, ["predict", patient]), 2)
    missing = tmp_path / "model.pt"
    line = error_line(CliRunner().invoke(main, ["predict", patient, "--checkpoint", str(missing)]), 2)
    assert str(missing) in line and "does not exist" in line


def test_a_file_that_is_not_a_checkpoint_is_named(tmp_path, a_file):
    make_tree(tmp_path / "src", shape=(512, 512), series_spec=(("normal1", "patient2", "SR_2", 1),))
    patient = str(tmp_path / "src" / "COVID-CTset" / "normal1" / "patient2")
    line = error_line(CliRunner().invoke(main, ["predict", patient, "--checkpoint", str(a_file), "--device", "cpu"]),
                      1)
    assert f"{a_file} is not a ctengine checkpoint" in line


def _limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))


def test_a_full_disk_during_ingest_says_to_free_space_and_rerun(source, tmp_path):
    store = tmp_path / "s.zarr"
    arguments = ["ingest", str(source), "--store", str(store), "--workers", "1"]
    line = process_error_line(ctengine(*arguments, preexec_fn=_limit_file_size), 1)
    assert line == (f"Error: no space left on {store}: free space and run the same command again; "
                    f"it resumes where it stopped")
    resumed = ctengine(*arguments, "--json")
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(resumed.stdout)
    assert report["slices"] == 4 and report["series_written"] == 2 and not report["failed_series"]


def test_series_failed_on_a_full_disk_end_features_with_the_free_space_line(tmp_path, monkeypatch):
    import contextlib
    from types import SimpleNamespace

    report = SimpleNamespace(slices_computed=0, series_computed=0, series_skipped=1, seconds=1.0, slices_per_second=0,
                             spacing_unknown=[], failed_series=[("patient1/SR_2", "OSError: [Errno 28] No space")])
    monkeypatch.setattr("ctengine.cli._require_store", lambda store, options: None)
    monkeypatch.setattr("ctengine.cli._client", lambda scheduler, workers: contextlib.nullcontext())
    monkeypatch.setattr("ctengine.features.compute_features", lambda store, **kwargs: report)
    store = tmp_path / "s.zarr"
    result = CliRunner().invoke(main, ["features", str(store)])
    line = error_line(result, 1)
    assert line.startswith(f"Error: no space left on {store}.features: free space and run the same command again")
    assert "failed series: patient1/SR_2: OSError: [Errno 28] No space" in result.stderr


@pytest.mark.parametrize("number", [errno.ENOSPC, errno.EFBIG])
def test_a_full_disk_in_the_command_itself_names_the_store(number, tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(number, os.strerror(number))

    monkeypatch.setattr("ctengine.store.store_info", full)
    line = error_line(CliRunner().invoke(main, ["info", str(tmp_path / "s.zarr")]), 1)
    assert line.startswith(f"Error: no space left on {tmp_path / 's.zarr'}: free space")


def test_disk_full_errors_and_reasons():
    assert disk_full(OSError(errno.ENOSPC, "No space left on device")) and disk_full(OSError(errno.EFBIG, "big"))
    assert not disk_full(FileNotFoundError(errno.ENOENT, "missing")) and not disk_full(ValueError("x"))
    assert disk_full_reason("OSError: [Errno 28] No space left on device")
    assert not disk_full_reason("OSError: [Errno 2] No such file or directory")


def test_an_unexpected_error_is_one_line_with_how_to_see_the_traceback(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("first\nsecond")

    monkeypatch.setattr("ctengine.store.store_info", broken)
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    line = error_line(CliRunner().invoke(main, ["info", str(tmp_path)]), 1)
    assert line == f"Error: RuntimeError: first second (run with {DEBUG_ENV}=1 for the traceback)"


@pytest.mark.parametrize("how", ["env", "flag"])
def test_debug_shows_the_unexpected_error(how, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr("ctengine.store.store_info", broken)
    if how == "env":
        monkeypatch.setenv(DEBUG_ENV, "1")
    result = CliRunner().invoke(main, ["--debug", "info", str(tmp_path)] if how == "flag" else ["info", str(tmp_path)])
    assert result.exit_code == 1 and isinstance(result.exception, RuntimeError)
