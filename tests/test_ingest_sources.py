"""Hostile sources: every entry is stored, quarantined or skipped with its reason, and nothing hangs."""
import os
import zipfile

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

import ctengine
from ctengine import layout
from ctengine.cli import main
from ctengine.constants import MAX_TIFF_BYTES
from ctengine.entries import NotRegularError
from conftest import SMALL, make_tree, write_slice

SERIES = "COVID-CTset/normal1/patient2/SR_2"


def ingest(sources, store, client, **kwargs):
    return ctengine.ingest(sources, store, client=client, progress=False, shape=SMALL, **kwargs)


def reasons(listed, path) -> list[str]:
    return [reason for location, reason in listed if location == str(path)]


def test_group_folder_that_is_a_link_is_followed(tmp_path, client):
    images = make_tree(tmp_path / "elsewhere", series_spec=(("normal1", "patient2", "SR_2", 3),))
    (tmp_path / "src/COVID-CTset").mkdir(parents=True)
    (tmp_path / "src/COVID-CTset/normal1").symlink_to(tmp_path / "elsewhere/COVID-CTset/normal1")
    report = ingest([tmp_path / "src"], tmp_path / "s.zarr", client)
    assert report.slices == report.entries_stored == len(images) == 3
    stack = zarr.open_group(tmp_path / "s.zarr", mode="r")["patient2/SR_2/0"]
    assert np.array_equal(stack[2], images[("patient2", "SR_2", 3)])


def test_link_cycle_is_skipped_and_counted_once(tmp_path):
    make_tree(tmp_path / "src", series_spec=(("normal1", "patient2", "SR_2", 3),))
    (tmp_path / "src" / SERIES / "again").symlink_to(tmp_path / "src/COVID-CTset")
    found = layout.scan([tmp_path / "src"])
    assert len(found.files) == 3
    assert reasons(found.skipped, tmp_path / "src" / SERIES / "again") == [
        f"folder already walked as {tmp_path / 'src/COVID-CTset'} (symbolic link)"]


def test_link_to_a_folder_above_the_source_is_skipped(tmp_path):
    make_tree(tmp_path / "src", series_spec=(("normal1", "patient2", "SR_2", 2),))
    (tmp_path / "src" / SERIES / "up").symlink_to(tmp_path)
    found = layout.scan([tmp_path / "src"])
    assert len(found.files) == 2
    assert reasons(found.skipped, tmp_path / "src" / SERIES / "up") == [
        f"symbolic link to {os.path.realpath(tmp_path)}, a folder holding a source (a cycle)"]


def test_name_that_is_not_utf8_is_quarantined(tmp_path, client):
    make_tree(tmp_path / "src", series_spec=(("normal1", "patient2", "SR_2", 2),))
    (tmp_path / "src" / SERIES / os.fsdecode(b"IM\xff1.tif")).write_bytes(b"x")
    report = ingest([tmp_path / "src"], tmp_path / "s.zarr", client)
    assert report.quarantined == [(f"{tmp_path / 'src' / SERIES}/IM\\xff1.tif",
                                   "name is not valid UTF-8 (rename it); not read")]
    assert ctengine.open_store(tmp_path / "s.zarr").quarantine["location"].tolist() == [report.quarantined[0][0]]


def test_folder_named_like_a_slice_is_quarantined(tmp_path):
    make_tree(tmp_path / "src", series_spec=(("normal1", "patient2", "SR_2", 2),))
    (tmp_path / "src" / SERIES / "IM00007.tif").mkdir()
    found = layout.scan([tmp_path / "src"])
    assert reasons(found.rejected, tmp_path / "src" / SERIES / "IM00007.tif") == [
        "a folder named like a slice file; its contents are not read"]


def test_named_pipe_named_like_a_slice_is_quarantined_without_opening(tmp_path):
    make_tree(tmp_path / "src", series_spec=(("normal1", "patient2", "SR_2", 2),))
    os.mkfifo(tmp_path / "src" / SERIES / "IM00007.tif")
    found = layout.scan([tmp_path / "src"])
    assert reasons(found.rejected, tmp_path / "src" / SERIES / "IM00007.tif") == [
        "not a regular file (named pipe); not opened"]
    assert len(found.files) == 2


def test_link_to_a_device_is_quarantined(tmp_path):
    make_tree(tmp_path / "src", series_spec=(("normal1", "patient2", "SR_2", 2),))
    (tmp_path / "src" / SERIES / "IM00007.tif").symlink_to("/dev/zero")
    found = layout.scan([tmp_path / "src"])
    assert reasons(found.rejected, tmp_path / "src" / SERIES / "IM00007.tif") == [
        "not a regular file (character device); not opened"]


def test_broken_link_is_quarantined(tmp_path):
    make_tree(tmp_path / "src", series_spec=(("normal1", "patient2", "SR_2", 2),))
    (tmp_path / "src" / SERIES / "IM00007.tif").symlink_to(tmp_path / "gone.tif")
    found = layout.scan([tmp_path / "src"])
    assert reasons(found.rejected, tmp_path / "src" / SERIES / "IM00007.tif") == [
        "broken symbolic link (its target does not exist)"]


def test_reading_a_pipe_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "IM00001.tif")
    with pytest.raises(NotRegularError, match="named pipe"):
        layout.read_source("", str(tmp_path / "IM00001.tif"))


def test_file_over_the_size_limit_is_refused_from_its_size(tmp_path):
    make_tree(tmp_path / "src", series_spec=(("normal1", "patient2", "SR_2", 2),))
    big = tmp_path / "src" / SERIES / "IM00007.tif"
    with open(big, "wb") as handle:
        handle.truncate(MAX_TIFF_BYTES + 1)  # sparse: no disk used
    found = layout.scan([tmp_path / "src"])
    assert reasons(found.rejected, big) == [
        f"file of {MAX_TIFF_BYTES + 1} bytes exceeds the limit of {MAX_TIFF_BYTES}; not read"]


def test_zip_inside_a_zip_is_quarantined_by_name(tmp_path):
    inner = tmp_path / "inner.zip"
    with zipfile.ZipFile(inner, "w") as archive:
        archive.writestr("normal1/patient2/SR_2/IM00001.tif", b"II*\x00")
    with zipfile.ZipFile(tmp_path / "outer.zip", "w") as archive:
        archive.write(inner, "COVID-CTset/inner.zip")
    found = layout.scan([tmp_path / "outer.zip"])
    assert found.rejected == [(f"{tmp_path / 'outer.zip'}::COVID-CTset/inner.zip", "zip archive inside a zip "
                               "archive is not read (extract it and ingest the inner archive)")]


def test_zip_member_folder_named_like_a_slice_is_quarantined(tmp_path):
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as archive:
        archive.writestr(zipfile.ZipInfo("COVID-CTset/normal1/patient2/SR_2/IM00007.tif/"), b"")
    found = layout.scan([tmp_path / "a.zip"])
    assert reasons(found.rejected, f"{tmp_path / 'a.zip'}::COVID-CTset/normal1/patient2/SR_2/IM00007.tif/") == [
        "a folder named like a slice file"]


def test_link_member_in_a_zip_is_quarantined(tmp_path):
    link = zipfile.ZipInfo("COVID-CTset/normal1/patient2/SR_2/IM00001.tif")
    link.external_attr = (0o120777 << 16)  # a symbolic link entry, as `zip --symlinks` writes it
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as archive:
        archive.writestr(link, "/dev/zero")
    found = layout.scan([tmp_path / "a.zip"])
    assert found.files.empty and [r for _, r in found.rejected] == [
        "not a regular file inside the archive (symbolic link or special file)"]


def test_file_link_loop_is_quarantined(tmp_path):
    make_tree(tmp_path / "src", series_spec=(("normal1", "patient2", "SR_2", 2),))
    series = tmp_path / "src" / SERIES
    (series / "IM00007.tif").symlink_to(series / "IM00008.tif")
    (series / "IM00008.tif").symlink_to(series / "IM00007.tif")
    found = layout.scan([tmp_path / "src"])
    assert [r for _, r in found.rejected] == ["symbolic link loop"] * 2


def test_every_entry_is_stored_quarantined_or_skipped(tmp_path, client):
    src = tmp_path / "src"
    make_tree(src, series_spec=(("normal1", "patient2", "SR_2", 3),))
    series = src / SERIES
    (series / "IM00004.tif").write_bytes(b"")                     # empty: quarantined at read
    (series / "notes.txt").write_text("scanner notes")             # skipped
    (src / "extra.csv").write_text("a,b\n1,2\n")                   # skipped: not a metadata CSV
    write_slice(series / "IM0000X.tif", np.zeros(SMALL, np.uint16))  # name does not parse
    (series / "IM00008.tif").mkdir()                               # folder named like a slice
    (src / "old.zarr").mkdir()                                     # skipped: a store
    with zipfile.ZipFile(src / "more.zip", "w") as archive:
        archive.writestr("readme.md", "hello")                     # skipped member
        archive.writestr("nested.zip", b"PK")                      # quarantined member
    report = ingest([src], tmp_path / "s.zarr", client)
    entries = [os.path.join(top, n) for top, dirs, names in os.walk(src)
               for n in names + [d for d in dirs if d.endswith((".tif", ".zarr"))]]
    entries += [f"{src / 'more.zip'}::{n}" for n in ("readme.md", "nested.zip")]
    listed = [location for location, _ in report.quarantined + report.skipped]
    assert report.entries_stored == 3 and len(listed) == len(set(listed))
    assert sorted(listed) == sorted(set(entries) - {str(series / f"IM0000{i}.tif") for i in (1, 2, 3)}
                                    - {str(src / "more.zip")})
    table = ctengine.open_store(tmp_path / "s.zarr").quarantine
    assert table.loc[table["location"] == str(series / "notes.txt"), "reason"].tolist() == [
        "skipped: not a slice (.tif/.tiff), a metadata CSV or a zip archive"]
    assert len(table) == len(listed)


def test_nothing_matched_raises_and_leaves_no_store(tmp_path, client):
    (tmp_path / "src").mkdir()
    (tmp_path / "src/readme.txt").write_text("no slices here")
    with pytest.raises(ctengine.NothingToIngestError, match="nothing to ingest: no entry under"):
        ingest([tmp_path / "src"], tmp_path / "s.zarr", client)
    assert not (tmp_path / "s.zarr").exists()


def test_nothing_stored_raises_with_the_report(tmp_path, client):
    (tmp_path / "src" / SERIES).mkdir(parents=True)
    (tmp_path / "src" / SERIES / "IM00001.tif").write_bytes(b"not a tiff")
    with pytest.raises(ctengine.NothingToIngestError, match="nothing ingested") as caught:
        ingest([tmp_path / "src"], tmp_path / "s.zarr", client)
    assert [reason for _, reason in caught.value.report.quarantined] == ["not a TIFF file (bad magic bytes)"]


def test_a_run_that_stores_nothing_keeps_the_old_catalog(tree, tmp_path, client):
    ingest([tree[0]], tmp_path / "s.zarr", client)
    (tmp_path / "bad" / SERIES).mkdir(parents=True)
    (tmp_path / "bad" / SERIES / "IM00001.tif").write_bytes(b"not a tiff")
    with pytest.raises(ctengine.NothingToIngestError):
        ingest([tmp_path / "bad"], tmp_path / "s.zarr", client)
    assert len(ctengine.open_store(tmp_path / "s.zarr").catalog) == 14


def test_cli_summary_counts_entries(tmp_path, client):
    make_tree(tmp_path / "src", shape=(512, 512), series_spec=(("normal1", "patient2", "SR_2", 2),))
    (tmp_path / "src/notes.txt").write_text("x")
    result = CliRunner().invoke(main, ["ingest", str(tmp_path / "src"), "--store", str(tmp_path / "s.zarr"),
                                       "--scheduler", client.scheduler.address])
    assert result.exit_code == 0, result.output
    assert "entries: 2 stored, 0 quarantined, 1 skipped" in result.stdout.splitlines()


# ---------------------------------------------------------------- metadata found, or its absence said


def test_synth_csvs_one_level_up_are_found(tmp_path, client):
    from ctengine.synth import write_cohort

    out = tmp_path / "cohort"
    write_cohort(out, patients=2, slices_per_series=4, seed=1, progress=False, workers=1)
    report = ctengine.ingest([out / "COVID-CTset"], tmp_path / "s.zarr", client=client, progress=False)
    assert report.metadata["details"] == [str(out / "Patient_details.csv")]
    assert report.metadata["metadata"] == [str(out / "Patients_metadata.csv")]
    assert str(out / "CSV" / "all.csv") in report.metadata["labels"]
    assert report.series_spacing_unknown == report.series_thickness_unknown == 0
    array = ctengine.open_store(tmp_path / "s.zarr").series("patient1", "SR_2")
    assert array["x"].attrs["units"] == "mm" and 0.5 < float(array["x"][1]) < 0.9


def test_unknown_spacing_and_thickness_are_recorded_as_unknown(tree, tmp_path, client):
    report = ingest([tree[0]], tmp_path / "s.zarr", client)
    assert report.series == report.series_spacing_unknown == report.series_thickness_unknown == 4
    attrs = ctengine.open_store(tmp_path / "s.zarr").series_attrs("patient2", "SR_2")
    assert attrs["spacing_mm"] == attrs["thickness_mm"] == "unknown"


def test_series_coordinates_stay_in_pixels_with_the_reason(tree, tmp_path, client):
    ingest([tree[0]], tmp_path / "s.zarr", client)
    array = ctengine.open_store(tmp_path / "s.zarr").series("patient2", "SR_2")
    assert array["y"].values.tolist() == list(range(SMALL[0])) and array["y"].attrs["units"] == "pixel"
    assert "spacing unknown" in array["x"].attrs["note"] and "z_mm" not in array.coords


def test_info_counts_series_without_spacing(tree, tmp_path, client):
    ingest([tree[0]], tmp_path / "s.zarr", client)
    result = CliRunner().invoke(main, ["info", str(tmp_path / "s.zarr")])
    assert result.exit_code == 0, result.output
    assert '  pixel spacing unknown for 4 of 4 series (recorded as "unknown")' in result.stdout.splitlines()


def test_cli_says_when_metadata_is_missing(tmp_path, client):
    make_tree(tmp_path / "src", shape=(512, 512), series_spec=(("normal1", "patient2", "SR_2", 2),))
    result = CliRunner().invoke(main, ["ingest", str(tmp_path / "src"), "--store", str(tmp_path / "s.zarr"),
                                       "--scheduler", client.scheduler.address])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "metadata: Patient_details.csv: not found; Patients_metadata.csv: not found; label CSVs: not found" in lines
    assert any(line.startswith("pixel spacing unknown for 1 of 1 series") for line in lines)


def test_metadata_given_later_updates_the_series_attributes(tree, tmp_path, client):
    src, _ = tree
    ingest([src], tmp_path / "s.zarr", client)
    meta = tmp_path / "meta" / "Patients_metadata.csv"
    meta.parent.mkdir()
    meta.write_text("Patient ID,SR_2 PixelSpacing,SR_2 SliceThickness\npatient2,\"[0.75, 0.7]\",5\n")
    report = ingest([src], tmp_path / "s.zarr", client, metadata=str(meta))
    attrs = ctengine.open_store(tmp_path / "s.zarr").series_attrs("patient2", "SR_2")
    assert report.series_written == 0 and attrs["spacing_mm"] == [0.75, 0.7] and attrs["thickness_mm"] == 5.0


def test_metadata_among_the_sources_wins_over_the_one_beside_them(tree, tmp_path, client):
    src, _ = tree
    (src / "Patients_metadata.csv").write_text('Patient ID,SR_2 PixelSpacing\npatient2,"[0.6, 0.6]"\n')
    (tmp_path / "Patients_metadata.csv").write_text('Patient ID,SR_2 PixelSpacing\npatient2,"[0.8, 0.8]"\n')
    report = ingest([src], tmp_path / "s.zarr", client)
    assert report.metadata["metadata"] == [str(src / "Patients_metadata.csv")]
    assert report.skipped == [(str(tmp_path / "Patients_metadata.csv"),
                               f"another Patients_metadata.csv is used: {src / 'Patients_metadata.csv'}")]
    assert ctengine.open_store(tmp_path / "s.zarr").spacing("patient2", "SR_2") == (0.6, 0.6)


def test_unreadable_metadata_found_is_quarantined_and_the_next_one_read(tree, tmp_path, client):
    src, _ = tree
    (src / "Patients_metadata.csv").write_text("no such columns\n1\n")
    (tmp_path / "Patients_metadata.csv").write_text('Patient ID,SR_2 PixelSpacing\npatient2,"[0.8, 0.8]"\n')
    report = ingest([src], tmp_path / "s.zarr", client)
    assert [location for location, _ in report.quarantined] == [str(src / "Patients_metadata.csv")]
    assert report.metadata["metadata"] == [str(tmp_path / "Patients_metadata.csv")]


def test_a_source_that_is_a_link_to_a_folder_is_read(tmp_path, client):
    from conftest import make_tree

    make_tree(tmp_path / "data", shape=(512, 512), series_spec=(("normal1", "patient2", "SR_2", 2),))
    (tmp_path / "src").symlink_to(tmp_path / "data")
    report = ctengine.ingest([tmp_path / "src"], tmp_path / "s.zarr", client=client, progress=False)
    assert report.slices_written == 2 and not report.skipped


def test_prefetch_asks_for_regular_files_only_and_never_blocks_or_raises(tmp_path):
    from ctengine.entries import prefetch_regular

    write_slice(tmp_path / "good.tif", np.zeros(SMALL, np.uint16))
    os.mkfifo(tmp_path / "pipe.tif")  # opening it for reading without O_NONBLOCK would wait for a writer
    (tmp_path / "folder.tif").mkdir()
    (tmp_path / "device.tif").symlink_to("/dev/zero")
    with open(tmp_path / "big.tif", "wb") as handle:
        handle.truncate(MAX_TIFF_BYTES + 1)
    paths = [tmp_path / name for name in ("good.tif", "pipe.tif", "folder.tif", "device.tif", "big.tif", "gone.tif")]
    prefetch_regular(str(path) for path in paths)
    assert layout.read_source("", str(tmp_path / "good.tif"))  # still read as before
