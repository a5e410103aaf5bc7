"""Writes never destroy good data, verify finds every damage, ingest heals it, features refuse rotten pixels."""
from __future__ import annotations

import errno
import shutil

import google_crc32c
import numpy as np
import pandas as pd
import pytest
import zarr

import ctengine
from ctengine.store import DamagedSeriesError, Store, health, names, open_store, replace, verify
from conftest import SMALL, write_slice

DAMAGED = ("patient1", "SR_2")


def ingest(sources, store, client):
    return ctengine.ingest(sources, store, client=client, progress=False, shape=SMALL)


def check(store, client):
    return verify(store, client=client)


@pytest.fixture()
def in_process():
    """A client whose worker is a thread of this process, so a monkeypatch reaches the writes."""
    from distributed import Client

    with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
        yield client


def full_disk_after(monkeypatch, files: int, *, suffix: str = "") -> None:
    """Let the local store write ``files`` files (ending in ``suffix``), then fail those writes with ENOSPC."""
    written = []
    original = replace.write_file

    def write(path, data):
        if path.endswith(suffix):
            if len(written) >= files:
                raise OSError(errno.ENOSPC, "No space left on device", path)
            written.append(path)
        original(path, data)

    monkeypatch.setattr(replace, "write_file", write)


def assert_bit_exact(store, images) -> None:
    opened = open_store(store)
    for (patient, series, instance), image in images.items():
        assert np.array_equal(opened.read_raw(patient, series)[instance - 1], image), (patient, series, instance)


# ---------------------------------------------------------------- (a) writes never destroy good data

@pytest.mark.parametrize("files", [0, 1, 2])
def test_a_full_disk_while_replacing_a_series_keeps_the_old_one(tmp_path, monkeypatch, files):
    store = open_store(tmp_path / "s.zarr", mode="a")
    store.initialise()
    old = np.arange(3 * 8 * 8, dtype="<u2").reshape(3, 8, 8)
    store.write_series("patient1", "SR_2", old, {"instances": [1, 2, 3]}, "old")
    full_disk_after(monkeypatch, files)
    with pytest.raises(OSError) as raised:
        store.write_series("patient1", "SR_2", old[::-1] + 1, {"instances": [3, 2, 1]}, "new")
    assert raised.value.errno == errno.ENOSPC
    assert store.completed_series("patient1", "SR_2", "old")["instances"] == [1, 2, 3]
    assert np.array_equal(zarr.open_group(tmp_path / "s.zarr", mode="r")["patient1/SR_2/0"][:], old)
    assert not health.series_damage(store, "patient1", "SR_2", 3)
    assert not (tmp_path / f"s.zarr{names.PARTIAL_SUFFIX}").exists()


def test_a_replaced_series_is_whole_and_has_nothing_of_the_old_one(tmp_path):
    store = open_store(tmp_path / "s.zarr", mode="a")
    store.initialise()
    store.write_series("patient1", "SR_2", np.ones((4, 8, 8), "<u2"), {"instances": [1, 2, 3, 4]}, "old")
    new = np.full((2, 8, 8), 7, "<u2")
    store.write_series("patient1", "SR_2", new, {"instances": [1, 2]}, "new")
    assert store.completed_series("patient1", "SR_2", "new")["instances"] == [1, 2]
    assert np.array_equal(store.read_raw("patient1", "SR_2"), new)
    assert store.series_group("patient1", "SR_2").attrs["ome"]["multiscales"][0]["name"] == "patient1/SR_2"


def test_a_full_disk_while_replacing_a_table_keeps_the_old_one(tmp_path, monkeypatch):
    store = open_store(tmp_path / "s.zarr", mode="a")
    store.initialise()
    old = pd.DataFrame({"patient": ["patient1", "patient2"], "z": [0, 1]})
    store.write_table(names.CATALOG, old)
    full_disk_after(monkeypatch, 2)
    with pytest.raises(OSError):
        store.write_table(names.CATALOG, pd.DataFrame({"patient": ["patient9"], "z": [5]}))
    pd.testing.assert_frame_equal(open_store(tmp_path / "s.zarr").catalog, old, check_dtype=False)


def test_a_remote_series_is_written_data_first_and_marker_last(tmp_path):
    store = open_store(tmp_path / "s.zarr", mode="a")
    stack = np.ones((2, 8, 8), "<u2")
    objects = {names.shard_key(names.RAW): b"shard", **replace.group_objects(
        "patient1/SR_2", lambda root: root.create_group("patient1/SR_2", attributes=names.complete("plan"))
        .create_array(names.RAW, shape=stack.shape, dtype=stack.dtype))}
    written = []

    class Recorder:
        def pipe_file(self, path, data):
            written.append(path)

    replace.replace_group(Recorder(), store.base, "patient1/SR_2", objects, local=False)
    assert written[0].endswith("/0/c/0/0/0") and written[-1] == f"{store.base}/patient1/SR_2/zarr.json"


def test_an_ingest_that_fails_on_a_full_disk_keeps_the_old_series_and_catalog(tree, tmp_path, in_process,
                                                                               monkeypatch):
    src, images = tree
    store = tmp_path / "s.zarr"
    ingest([src], store, in_process)
    catalog = open_store(store).catalog
    other = np.full(SMALL, 9, np.uint16)
    write_slice(src / "COVID-CTset/137covid/patient1/SR_2/IM00005.tif", other)  # a new slice: rewrite the series
    full_disk_after(monkeypatch, 0, suffix=names.shard_key(names.RAW))
    report = ingest([src], store, in_process)
    assert [series for series, _ in report.failed_series] == ["patient1/SR_2"]
    assert "No space left" in report.failed_series[0][1]
    assert_bit_exact(store, images)
    pd.testing.assert_frame_equal(open_store(store).catalog, catalog)
    assert check(store, in_process).ok


# ---------------------------------------------------------------- (b), (c) verify finds damage, ingest heals it

def truncate_shard(store):
    path = store / names.raw_shard_key(*DAMAGED)
    path.write_bytes(path.read_bytes()[:-100])
    return names.raw_shard_key(*DAMAGED)


def flip_chunk_bytes(store):
    path = store / names.raw_shard_key(*DAMAGED)
    data = bytearray(path.read_bytes())
    for position in range(40, 48):  # inside the first chunk's compressed pixels, past the blosc header
        data[position] ^= 0xFF
    path.write_bytes(bytes(data))
    return f"{names.series_path(*DAMAGED)}"


def rewrite_chunk_pixels(store):
    """New pixels in one chunk through plain zarr: the shard stays well formed, the checksum does not match."""
    zarr.open_array(store / names.series_path(*DAMAGED, names.RAW), mode="r+")[1] = np.full(SMALL, 3, np.uint16)
    return f"{names.series_path(*DAMAGED)}/z1"


def delete_array_metadata(store):
    (store / names.series_path(*DAMAGED, names.RAW) / "zarr.json").unlink()
    return f"{names.series_path(*DAMAGED, names.RAW)}/zarr.json"


def delete_group_metadata(store):
    (store / names.series_path(*DAMAGED) / "zarr.json").unlink()
    return f"{names.series_path(*DAMAGED)}/zarr.json"


DAMAGES = [truncate_shard, flip_chunk_bytes, rewrite_chunk_pixels, delete_array_metadata, delete_group_metadata]
#: damage the structural check finds without verify
STRUCTURAL = [truncate_shard, delete_array_metadata, delete_group_metadata]


@pytest.fixture()
def damaged_store(request, tree, tmp_path, client):
    src, images = tree
    store = tmp_path / "s.zarr"
    ingest([src], store, client)
    where = request.param(store)
    return src, images, store, where


@pytest.mark.parametrize("damaged_store", DAMAGES, indirect=True, ids=lambda f: f.__name__)
def test_verify_reports_the_damage_with_its_path_and_ingest_heals_exactly_that_series(damaged_store, client):
    src, images, store, where = damaged_store
    report = check(store, client)
    assert not report.ok and report.mismatches
    assert all(what.startswith(names.series_path(*DAMAGED)) for what, _ in report.mismatches), report.mismatches
    assert any(what.startswith(where) for what, _ in report.mismatches), (where, report.mismatches)
    assert list(health.damaged_series(open_store(store))) == ["patient1/SR_2"]

    healed = ingest([src], store, client)
    assert [series for series, _ in healed.healed] == ["patient1/SR_2"] and not healed.nothing_written
    assert (healed.series_written, healed.series_skipped) == (1, 3)
    assert check(store, client).ok
    assert health.damaged_series(open_store(store)) == {}
    assert_bit_exact(store, images)
    assert ingest([src], store, client).nothing_written


@pytest.mark.parametrize("damaged_store", STRUCTURAL, indirect=True, ids=lambda f: f.__name__)
def test_ingest_finds_structural_damage_without_verify(damaged_store, client):
    src, images, store, where = damaged_store
    healed = ingest([src], store, client)
    assert len(healed.healed) == 1 and healed.healed[0][0] == "patient1/SR_2"
    assert healed.healed[0][1].startswith(where.removesuffix("/zarr.json")), healed.healed
    assert healed.series_written == 1 and check(store, client).ok
    assert_bit_exact(store, images)


@pytest.mark.parametrize("damaged_store", DAMAGES, indirect=True, ids=lambda f: f.__name__)
def test_ingest_without_the_damaged_series_sources_refuses_naming_it(damaged_store, client, tmp_path):
    src, _, store, _ = damaged_store
    check(store, client)
    partial = tmp_path / "partial"
    shutil.copytree(src, partial)
    shutil.rmtree(partial / "COVID-CTset/137covid/patient1/SR_2")
    before = {path: path.read_bytes() for path in store.rglob("*") if path.is_file()}
    with pytest.raises(DamagedSeriesError, match="patient1/SR_2"):
        ingest([partial], store, client)
    assert {path: path.read_bytes() for path in store.rglob("*") if path.is_file()} == before


def test_verify_reports_a_missing_patient_group(tree, tmp_path, client):
    src, _ = tree
    ingest([src], tmp_path / "s.zarr", client)
    (tmp_path / "s.zarr/patient2/zarr.json").unlink()
    report = check(tmp_path / "s.zarr", client)
    assert ("patient2/zarr.json", "patient group metadata missing") in report.mismatches


def test_the_command_names_the_healed_series(capsys):
    from ctengine.cli import _print_ingest
    from ctengine.ingest_report import IngestReport

    _print_ingest(IngestReport(store="s.zarr", series_written=1, healed=[("patient1/SR_2", "shard missing")]))
    assert "healed: patient1/SR_2: shard missing" in capsys.readouterr().out


# ---------------------------------------------------------------- (d) features refuse rotten pixels

@pytest.mark.parametrize("crc32c", [True, False], ids=["by-crc32c", "by-sha256-without-crc32c"])
def test_features_fail_a_series_whose_pixels_do_not_match_the_catalog(tmp_path, client, crc32c):
    from ctengine.features import compute_features
    from ctengine.synth import write_cohort

    write_cohort(tmp_path / "src", patients=1, slices_per_series=4, seed=4, progress=False, workers=1)
    store = tmp_path / "s.zarr"
    ctengine.ingest([tmp_path / "src"], store, client=client, progress=False)
    group = zarr.open_group(store / names.series_path(*DAMAGED), mode="r+")
    raw = group[names.RAW]
    assert group.attrs[names.PIXEL_CRC32C] == [google_crc32c.value(image.tobytes()) for image in raw[:]]
    if not crc32c:  # a series written before the CRC-32C was kept: its slices are hashed with SHA-256
        group.attrs.pop(names.PIXEL_CRC32C)
    raw[2] = raw[2] ^ np.uint16(1)  # well-formed chunk, pixels not those the catalog names
    report = compute_features(store, client=client, progress=False)
    assert [series for series, _ in report.failed_series] == ["patient1/SR_2"]
    assert "do not match the catalog checksum" in report.failed_series[0][1]
    slices = Store(store).features
    assert not ((slices["patient"] == "patient1") & (slices["series"] == "SR_2")).any()
    assert len(slices) == len(Store(store).catalog) - 4
    assert not Store(store).has_lung_mask(*DAMAGED)


def test_new_attributes_of_a_series_are_one_write_that_a_full_disk_does_not_truncate(tmp_path, monkeypatch):
    store = open_store(tmp_path / "s.zarr", mode="a")
    store.initialise()
    stack = np.ones((2, 8, 8), "<u2")
    store.write_series("patient1", "SR_2", stack, {"instances": [1, 2], "kernel": None}, "plan")
    before = (tmp_path / "s.zarr/patient1/SR_2/zarr.json").read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(Store, "put", full)
        with pytest.raises(OSError):
            store.update_series("patient1", "SR_2", {"instances": [1, 2], "kernel": "B30f"}, "plan")
    assert (tmp_path / "s.zarr/patient1/SR_2/zarr.json").read_bytes() == before
    store.update_series("patient1", "SR_2", {"instances": [1, 2], "kernel": "B30f"}, "plan")
    assert store.completed_series("patient1", "SR_2", "plan")["kernel"] == "B30f"
    assert np.array_equal(store.read_raw("patient1", "SR_2"), stack)
