import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pandas as pd
import pytest
import tifffile
import zarr
from click.testing import CliRunner

import ctengine
from ctengine.cli import main
from ctengine.store import StoreBusyError, store_lock, verify
from conftest import SMALL, make_tree, write_slice


def ingest(src, store, client, **kwargs):
    return ctengine.ingest([src], store, client=client, progress=False, shape=SMALL, **kwargs)


def test_ingest_is_bit_exact_and_readable_without_ctengine(tree, tmp_path, client):
    src, images = tree
    report = ingest(src, tmp_path / "s.zarr", client)
    assert report.slices == report.slices_written == len(images) == 14 and not report.quarantined
    root = zarr.open_group(tmp_path / "s.zarr", mode="r")
    for (patient, series, instance), image in images.items():
        stack = root[f"{patient}/{series}/0"]
        assert stack.chunks == (1, *SMALL) and stack.shards == (stack.shape[0], *SMALL)
        assert np.array_equal(stack[instance - 1], image)
    catalog = ctengine.open_store(tmp_path / "s.zarr").catalog
    assert len(catalog) == 14 and catalog["checksum"].str.len().eq(64).all()
    assert root["patient1"].attrs["label"] == "covid" and root["patient2"].attrs["label"] == "normal"


def test_store_is_ome_zarr_and_xarray(tree, tmp_path, client):
    from ome_zarr_models.v05.image import Image

    src, images = tree
    ingest(src, tmp_path / "s.zarr", client)
    image = Image.from_zarr(zarr.open_group(tmp_path / "s.zarr/patient2/SR_2", mode="r"))
    assert [axis.name for axis in image.attributes.ome.multiscales[0].axes] == ["z", "y", "x"]
    store = ctengine.open_store(tmp_path / "s.zarr")
    array = store.series("patient2", "SR_2")
    assert array.dims == ("instance", "y", "x") and array["instance"].values.tolist() == [1, 2, 3, 4, 5]
    assert np.array_equal(array.sel(instance=3).values, images[("patient2", "SR_2", 3)])
    tree_view = store.to_datatree()
    assert tree_view["patient1/SR_3"].dataset["0"].shape == (3, *SMALL)
    assert tree_view["catalog"].dataset.sizes["slice"] == 14


def test_second_run_writes_nothing(tree, tmp_path, client):
    src, _ = tree
    ingest(src, tmp_path / "s.zarr", client)
    before = {p: os.stat(p).st_mtime_ns for p in (tmp_path / "s.zarr").rglob("*") if p.is_file()}
    report = ingest(src, tmp_path / "s.zarr", client)
    after = {p: os.stat(p).st_mtime_ns for p in (tmp_path / "s.zarr").rglob("*") if p.is_file()}
    assert report.nothing_written and report.series_skipped == 4
    assert {p: t for p, t in after.items() } == \
           {p: t for p, t in before.items() }


def test_new_slice_rewrites_only_its_series(tree, tmp_path, client):
    src, _ = tree
    ingest(src, tmp_path / "s.zarr", client)
    write_slice(src / "COVID-CTset/normal2/patient4/SR_4/IM00003.tif", np.full(SMALL, 7, np.uint16))
    report = ingest(src, tmp_path / "s.zarr", client)
    assert (report.series_written, report.series_skipped, report.slices) == (1, 3, 15)
    assert zarr.open_group(tmp_path / "s.zarr")["patient4/SR_4/0"][2].max() == 7


def bad_corpus(series_dir, tmp_path):
    """Every kind of bad file, written beside good slices; returns the expected reasons."""
    def tiff(array, **kwargs):
        buffer = io.BytesIO()
        tifffile.imwrite(buffer, array, **kwargs)
        return buffer.getvalue()
    good = tiff(np.ones(SMALL, np.uint16))
    bad = {
        "IM00011.tif": (good[: len(good) // 2], "truncated|holds"),
        "IM00012.tif": (b"<html>not a tiff</html>", "not a TIFF"),
        "IM00013.tif": (tiff(np.ones(SMALL, np.uint8)), "16-bit"),
        "IM00014.tif": (tiff(np.ones(SMALL, np.float32)), "16-bit"),
        "IM00015.tif": (tiff(np.ones((*SMALL, 3), np.uint16), photometric="rgb"), "grayscale"),
        "IM00016.tif": (tiff(np.ones((32, 64), np.uint16)), "shape"),
        "IM00017.tif": (b"", "empty"),
        "junk_name.tif": (good, "does not parse"),
    }
    for name, (data, _) in bad.items():
        (series_dir / name).write_bytes(data)
    return {name: reason for name, (_, reason) in bad.items()}


def test_bad_input_is_quarantined_and_good_data_kept(tree, tmp_path, client):
    src, images = tree
    reasons = bad_corpus(src / "COVID-CTset/normal1/patient2/SR_2", tmp_path)
    with zipfile.ZipFile(src / "extra.zip", "w") as archive:  # a zip with a corrupt member
        archive.writestr("normal1/patient9/SR_2/IM00001.tif", b"II*\x00corrupt")
    report = ingest(src, tmp_path / "s.zarr", client)
    assert report.slices == 14 and not report.failed_series
    found = {os.path.basename(loc): reason for loc, reason in report.quarantined}
    for name, pattern in reasons.items():
        assert pd.Series([found[name]]).str.contains(pattern).all(), (name, found[name])
    assert any(loc.endswith("extra.zip::normal1/patient9/SR_2/IM00001.tif") for loc, _ in report.quarantined)
    stored = ctengine.open_store(tmp_path / "s.zarr")
    assert len(stored.quarantine) == len(report.quarantined)
    assert "patient9" not in stored.catalog["patient"].values


def test_conflicting_duplicates_are_reported_not_resolved(tree, tmp_path, client):
    src, images = tree
    shutil.copytree(src / "COVID-CTset/normal1/patient2", src / "COVID-CTset/normal4/patient2")
    write_slice(src / "COVID-CTset/normal4/patient2/SR_2/IM00002.tif", np.zeros(SMALL, np.uint16))
    report = ingest(src, tmp_path / "s.zarr", client)
    conflicts = [loc for loc, reason in report.quarantined if reason.startswith("conflict")]
    assert len(conflicts) == 2 and all("IM00002" in c for c in conflicts)
    catalog = ctengine.open_store(tmp_path / "s.zarr").catalog
    rows = catalog[(catalog.patient == "patient2") & (catalog.series == "SR_2")]
    assert rows["instance"].tolist() == [1, 3, 4, 5] and rows["z"].tolist() == [0, 1, 2, 3]
    assert rows["group"].eq("normal1;normal4").all()


def test_zip_source_gives_the_same_store(tree, tmp_path, client):
    src, _ = tree
    archive = shutil.make_archive(str(tmp_path / "COVID-CTset"), "zip", src)
    ingest(src, tmp_path / "a.zarr", client)
    ingest(archive, tmp_path / "b.zarr", client)
    a, b = (ctengine.open_store(tmp_path / n).catalog for n in ("a.zarr", "b.zarr"))
    assert a["checksum"].tolist() == b["checksum"].tolist()
    assert verify(tmp_path / "b.zarr", sources=[archive], client=client).ok


def test_flat_layout_with_fold_csvs(tree, tmp_path, client):
    src, images = tree
    flat = tmp_path / "flat"
    flat.mkdir()
    for (patient, series, instance) in images:
        group = "137covid" if patient == "patient1" else ("normal1" if patient == "patient2" else "normal2")
        shutil.copy(src / f"COVID-CTset/{group}/{patient}/{series}/IM{instance:05d}.tif",
                    flat / f"{group}_{patient}_{series}_IM{instance:05d}.tif")
    pd.DataFrame({"filename": ["137covid_patient1_SR_2_IM00001.tif"], "class": ["covid"]}).to_csv(
        flat / "train2.csv", index=False)
    pd.DataFrame({"filename": ["normal1_patient2_SR_2_IM00001.tif"], "class": ["normal"]}).to_csv(
        flat / "test2.csv", index=False)
    ingest(flat, tmp_path / "s.zarr", client)
    catalog = ctengine.open_store(tmp_path / "s.zarr").catalog
    assert len(catalog) == 14 and catalog["labelled"].sum() == 2
    assert set(catalog.loc[catalog.patient == "patient1", "fold2"]) == {"train"}
    assert set(catalog.loc[catalog.patient == "patient2", "fold2"]) == {"test"}


def test_verify_detects_corruption(tree, tmp_path, client):
    src, _ = tree
    ingest(src, tmp_path / "s.zarr", client)
    assert verify(tmp_path / "s.zarr", sources=[src], client=client).ok
    write_slice(src / "COVID-CTset/normal1/patient2/SR_2/IM00002.tif", np.zeros(SMALL, np.uint16))
    report = verify(tmp_path / "s.zarr", sources=[src], client=client)
    assert [os.path.basename(w) for w, _ in report.mismatches] == ["IM00002.tif"]
    root = zarr.open_group(tmp_path / "s.zarr")
    root["patient1/SR_3/0"][1] = np.zeros(SMALL, np.uint16)  # tamper with the store itself
    assert any("patient1/SR_3" in w and "z1" in w for w, _ in verify(tmp_path / "s.zarr", client=client).mismatches)


def test_second_ingest_into_a_busy_store_is_refused(tree, tmp_path, client):
    src, _ = tree
    with store_lock(str(tmp_path / "s.zarr")):
        with pytest.raises(StoreBusyError, match="being written by pid"):
            ingest(src, tmp_path / "s.zarr", client)


def test_cli_strict_and_json(tmp_path, client):
    src = tmp_path / "src"
    make_tree(src, shape=(512, 512), series_spec=(("normal1", "patient2", "SR_2", 2),))
    (src / "COVID-CTset/normal1/patient2/SR_2/IM00099.tif").write_bytes(b"")
    address = client.scheduler.address
    runner = CliRunner()
    result = runner.invoke(main, ["ingest", str(src), "--store", str(tmp_path / "s.zarr"), "--json",
                                  "--scheduler", address])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["slices"] == 2
    result = runner.invoke(main, ["ingest", str(src), "--store", str(tmp_path / "t.zarr"), "--strict",
                                  "--scheduler", address])
    assert result.exit_code == 1


def test_cli_exits_1_with_one_line_when_nothing_is_stored(tree, tmp_path, client):
    src, _ = tree  # 64 x 64 slices: all refused by the CLI's 512 x 512 shape
    result = CliRunner().invoke(main, ["ingest", str(src), "--store", str(tmp_path / "s.zarr"),
                                       "--scheduler", client.scheduler.address])
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "nothing ingested" in errors[0] and "Traceback" not in result.output


#: runs the ``ctengine`` command with one change on the workers: the series that reaches
#: ``series_document`` after another one got there stops (its objects built, none written),
#: touches the file given as first argument and waits to be killed
HELD_INGEST = """
import os, sys, time

import ctengine.ingestion as ingestion
from ctengine.cli import main

REACHED = sys.argv.pop(1)
FIRST_DONE = REACHED + ".first"


def held(task):
    from ctengine.ingestion import ingest_series

    render = task.store.series_document

    def render_or_hold(path, attrs, plan, **options):
        if os.path.exists(FIRST_DONE):
            open(REACHED, "w").close()
            time.sleep(3600)
        document = render(path, attrs, plan, **options)
        open(FIRST_DONE, "w").close()
        return document

    task.store.series_document = render_or_hold
    return ingest_series(task)


if __name__ == "__main__":
    ingestion.ingest_series = held
    main()
"""


def _complete_series(store) -> int:
    markers = [json.loads(p.read_text()).get("attributes", {}).get("ctengine", {}) for p in store.glob("*/*/zarr.json")]
    return sum(bool(m.get("complete")) for m in markers)


def test_sigkill_then_resume_loses_nothing(tmp_path):
    src = tmp_path / "src"
    spec = tuple(("normal1", f"patient{p}", s, 12) for p in range(1, 9) for s in ("SR_2", "SR_3", "SR_4"))
    images = make_tree(src, shape=(512, 512), series_spec=spec)
    store, reached, script = tmp_path / "s.zarr", tmp_path / "reached", tmp_path / "held_ingest.py"
    script.write_text(HELD_INGEST)
    arguments = ["ingest", str(src), "--store", str(store), "--workers", "1"]
    process = subprocess.Popen([sys.executable, str(script), str(reached), *arguments], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    while not reached.exists() and process.poll() is None:  # bounded by the pytest timeout only
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert reached.exists(), "the held ingest ended before a series was held"
    assert 1 <= _complete_series(store) < 24, "the kill must land in the middle of the ingest"
    command = [sys.executable, "-m", "ctengine.cli", *arguments]
    resumed = subprocess.run(command + ["--json"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(resumed.stdout)
    assert report["slices"] == len(images) and report["series_skipped"] >= 1
    assert _complete_series(store) == 24 and not list(store.rglob("*.partial"))
    root = zarr.open_group(store, mode="r")
    for (patient, series, instance), image in images.items():
        assert np.array_equal(root[f"{patient}/{series}/0"][instance - 1], image)


def test_info_reports_counts_bytes_and_ratio(tree, tmp_path, client):
    src, _ = tree
    ingest(src, tmp_path / "s.zarr", client)
    result = CliRunner().invoke(main, ["info", str(tmp_path / "s.zarr"), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["labels"]["covid"] == {"patients": 1, "series": 2, "slices": 7, "labelled_slices": 0}
    assert info["labels"]["normal"]["slices"] == 7 and info["bytes_raw"] == 14 * 64 * 64 * 2
    assert 0 < info["bytes_stored"] and info["ratio"] == pytest.approx(info["bytes_raw"] / info["bytes_stored"])


def test_viewers_open_a_series_in_the_lung_window(tree, tmp_path, client):
    from ome_zarr_models.v05.image import Image

    src, _ = tree
    ingest(src, tmp_path / "s.zarr", client)
    group = zarr.open_group(tmp_path / "s.zarr/patient2/SR_2", mode="r")
    Image.from_zarr(group)   # still valid OME-Zarr 0.5 with the omero block
    channel = group.attrs["ome"]["omero"]["channels"][0]
    slope, intercept = ctengine.open_store(tmp_path / "s.zarr").rescale("patient2", "SR_2")
    hu = [channel["window"][k] * slope + intercept for k in ("start", "end")]
    assert hu == [-1350.0, 150.0] and "mediastinal 40/400 HU" in channel["label"]


def test_reports_and_summaries_leave_cluster_start_up_out_and_say_so(tmp_path, client):
    from ctengine.ingest_report import IngestReport

    report = IngestReport(slices_written=300, seconds=2.0, cluster_seconds=1.0)  # values, not a clock
    assert report.slices_per_second == 150.0 and report.to_dict()["cluster_seconds"] == 1.0
    src = tmp_path / "src"
    make_tree(src, shape=(512, 512), series_spec=(("normal1", "patient2", "SR_2", 2),))
    result = CliRunner().invoke(main, ["ingest", str(src), "--store", str(tmp_path / "cli.zarr"),
                                       "--scheduler", client.scheduler.address])
    assert result.exit_code == 0 and "slices/s (cluster start-up not counted)" in result.output
