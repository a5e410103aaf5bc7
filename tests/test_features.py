import json
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import pytest
import zarr

import ctengine
from ctengine.features import compute_features
from ctengine.features.dictionary import FIELDS, METADATA_KEY, TABLE_COLUMNS, hist_edges_hu, hu_cutoffs
from ctengine.kernels import select_slices
from ctengine.store import features_path
from ctengine.synth import write_cohort


@pytest.fixture(scope="module")
def store(tmp_path_factory, client):
    root = tmp_path_factory.mktemp("features")
    write_cohort(root / "src", patients=2, slices_per_series=8, seed=4, progress=False, workers=1)
    ctengine.ingest([root / "src"], root / "s.zarr", client=client, progress=False)
    report = compute_features(root / "s.zarr", client=client, progress=False)
    assert report.series_computed == 6 and not report.failed_series
    return root / "s.zarr"


def test_masks_are_ome_zarr_labels_readable_with_plain_zarr(store):
    from ome_zarr_models.v05.image_label import ImageLabel

    root = zarr.open_group(store, mode="r")
    raw, lung = root["patient1/SR_2/0"], root["patient1/SR_2/labels/lung/0"]
    assert lung.shape == raw.shape and lung.dtype == np.uint8 and set(np.unique(lung[:])) <= {0, 1, 2}
    assert root["patient1/SR_2/labels"].attrs["ome"]["labels"] == ["lung"]
    ImageLabel.from_zarr(root["patient1/SR_2/labels/lung"])


def test_ome_zarr_readers_see_the_scale_the_lung_window_and_the_named_labels(store):
    """ome-zarr-py (napari's reader) and ngff-zarr open a series and its lung label as written."""
    from ctengine.constants import LUNG_WINDOW_HU
    from ctengine.store import names

    opened = ctengine.open_store(store)
    attrs = opened.series_attrs("patient1", "SR_2")
    scale = [names.thickness(attrs), *names.spacing(attrs)]
    slope, intercept = names.rescale(attrs)
    centre, width = LUNG_WINDOW_HU
    window = [(centre - width / 2 - intercept) / slope, (centre + width / 2 - intercept) / slope]  # stored units
    raw, lung = opened.raw("patient1", "SR_2")[:], opened.lung_mask("patient1", "SR_2")[:]
    series = store / "patient1" / "SR_2"
    with dask.config.set(scheduler="synchronous"):  # the readers' lazy arrays, read here and not on the cluster
        _check_readers(series, scale, window, raw, lung)


def _check_readers(series, scale, window, raw, lung):
    import ngff_zarr
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    from ctengine.store._pyramid_reference import halve_mean, halve_mode

    image, _, label = list(Reader(parse_url(str(series)))())
    z, ny, nx = raw.shape
    shapes = [(z, ny // 2**k, nx // 2**k) for k in range(4)]  # 512 -> 64 pixels
    assert [tuple(d.shape) for d in image.data] == shapes
    assert [tuple(d.shape) for d in label.data] == shapes
    scales = [t[0]["scale"] for t in image.metadata["coordinateTransformations"]]
    assert scales == [[scale[0], scale[1] * 2**k, scale[2] * 2**k] for k in range(4)]
    assert [a["unit"] for a in image.metadata["axes"]] == ["millimeter"] * 3
    assert image.metadata["contrast_limits"] == [window]
    assert label.metadata["properties"] == {1: {"name": "right lung"}, 2: {"name": "left lung"}}
    np.testing.assert_array_equal(np.asarray(image.data[0]), raw)
    np.testing.assert_array_equal(np.asarray(image.data[1]), halve_mean(raw))
    np.testing.assert_array_equal(np.asarray(label.data[0]), lung)
    np.testing.assert_array_equal(np.asarray(label.data[1]), halve_mode(lung))

    multiscales = ngff_zarr.from_ngff_zarr(str(series))
    assert [m.data.shape for m in multiscales.images] == shapes
    assert multiscales.images[0].scale == dict(zip("zyx", scale))
    assert multiscales.images[3].scale == {"z": scale[0], "y": scale[1] * 8, "x": scale[2] * 8}
    np.testing.assert_array_equal(multiscales.images[0].data.compute(), raw)
    shown = multiscales.metadata.omero.channels[0].window
    assert [shown.start, shown.end] == window
    labels = ngff_zarr.from_ngff_zarr(str(series / "labels" / "lung"))
    assert len(labels.images) == 4
    np.testing.assert_array_equal(labels.images[0].data.compute(), lung)


def test_masks_match_the_phantom_truth(store):
    truth = zarr.open_group(store.parent / "src/truth.zarr", mode="r")
    root = zarr.open_group(store, mode="r")
    for patient in ("patient1", "patient2"):
        mask, expected = root[f"{patient}/SR_2/labels/lung/0"][:], truth[f"{patient}/SR_2/lung"][:]
        both = (mask > 0) & (expected > 0)
        dice = 2 * both.sum() / ((mask > 0).sum() + (expected > 0).sum())
        assert dice > 0.9


def test_selection_lands_in_the_catalog_and_equals_the_kernel(store):
    opened = ctengine.open_store(store)
    catalog = opened.catalog
    for (patient, series), rows in catalog.groupby(["patient", "series"]):
        expected = select_slices(opened.raw(patient, series)[:])
        assert rows.sort_values("z")["selected"].tolist() == expected.keep.tolist()
        assert rows.sort_values("z")["dark_count"].tolist() == expected.counts.tolist()
    assert catalog["selected"].any() and not catalog["selected"].all()


def test_feature_tables(store):
    opened = ctengine.open_store(store)
    slices = opened.features
    assert len(slices) == len(opened.catalog) and {"mean_hu", "opacity_pct", "hist_63_voxels"} <= set(slices.columns)
    lung = slices[slices["voxels"] > 500]
    assert lung["mean_hu"].between(-950, -600).all()
    patients = opened.feature_table("patients")
    assert sorted(patients["patient"]) == ["patient1", "patient2"] and (patients["lung_volume_l"] > 0).all()
    assert Path(features_path(store), "series.parquet").is_file()


def test_every_written_column_has_a_dictionary_entry_and_metadata(store):
    opened = ctengine.open_store(store)
    written = set()
    for name in TABLE_COLUMNS:
        schema = opened.feature_schema(name)
        assert schema.names == list(TABLE_COLUMNS[name]) == list(opened.feature_table(name).columns)
        for field in schema:
            entry = FIELDS[field.name]
            assert name in entry.tables
            assert field.metadata == {b"unit": entry.unit.encode(), b"description": entry.description.encode(),
                                      b"definition": entry.definition.encode()}
        meta = json.loads(schema.metadata[METADATA_KEY.encode()])
        assert meta["hist_edges_hu"] == hist_edges_hu() and meta["hu_cutoffs"] == hu_cutoffs()
        written |= set(schema.names)
    assert written == set(FIELDS)  # and every entry is a column of some table


def test_the_stored_histogram_edges_bin_the_stored_voxels(store):
    opened = ctengine.open_store(store)
    edges = json.loads(opened.feature_schema("slices").metadata[METADATA_KEY.encode()])["hist_edges_hu"]
    row = opened.features.query("patient == 'patient1' and series == 'SR_2'").sort_values("voxels").iloc[-1]
    z = int(opened.catalog.query("patient == 'patient1' and series == 'SR_2' and instance == @row.instance")["z"].iloc[0])
    hu = opened.raw("patient1", "SR_2")[z].astype(np.float64) - 1024.0
    inside = hu[opened.lung_mask("patient1", "SR_2")[z] > 0]
    want = np.histogram(inside, bins=np.asarray(edges))[0]
    got = row[[f"hist_{b:02d}_voxels" for b in range(64)]].to_numpy(dtype=np.int64)
    np.testing.assert_array_equal(got, want)
    assert row["voxels"] == inside.size and row["frac_ground_glass"] == np.mean((inside >= -700) & (inside < -300))


def test_the_data_dictionary_document_is_generated_from_fields():
    from ctengine.features.dictionary import markdown

    committed = Path(__file__).resolve().parents[1] / "docs" / "FEATURES.md"
    assert committed.read_text() == markdown(), "regenerate: python -m ctengine.features.dictionary > docs/FEATURES.md"
    assert all(f"`{name}`" in markdown() for name in FIELDS if not name.startswith("hist_")
               or name in ("hist_00_voxels", "hist_63_voxels"))


def test_columns_without_an_entry_are_refused():
    from ctengine.features.dictionary import arrow_table

    with pytest.raises(ValueError, match=r"series columns without a FIELDS entry: \['mean'\]"):
        arrow_table(pd.DataFrame({"patient": ["p"], "mean": [1.0]}), "series")
    with pytest.raises(ValueError, match="'voxel'"):
        arrow_table(pd.DataFrame({"patient": ["p"]}), "voxel")


def test_labels_stored_with_the_first_column_names_are_read_under_the_current_ones(store, client):
    from ctengine.features.dictionary import LEGACY_COLUMNS

    before = {name: ctengine.open_store(store).feature_table(name) for name in TABLE_COLUMNS}
    features = zarr.open_group(store, mode="a")["patient1/SR_3/labels/lung/features"]
    current = features.attrs["columns"]
    old = {new: legacy for legacy, new in LEGACY_COLUMNS.items()}
    features.attrs["columns"] = [old.get(c, c) for c in current]
    assert "mean" in features.attrs["columns"] and "hist_05" in features.attrs["columns"]
    report = compute_features(store, client=client, progress=False)
    assert report.series_skipped == 6 and report.series_computed == 0
    for name, table in before.items():
        pd.testing.assert_frame_equal(ctengine.open_store(store).feature_table(name), table)


def test_second_run_skips_and_a_broken_series_is_reported(store, client, tmp_path):
    again = compute_features(store, client=client, progress=False)
    assert again.series_skipped == 6 and again.series_computed == 0
    root = zarr.open_group(store, mode="a")
    del root["patient2/SR_4/labels"]
    shard = store / "patient2/SR_4/0/c/0/0/0"
    saved = shard.read_bytes()
    shard.write_bytes(saved[:100])
    try:
        broken = compute_features(store, client=client, progress=False)
    finally:
        shard.write_bytes(saved)
    assert [s for s, _ in broken.failed_series] == ["patient2/SR_4"] and broken.series_skipped == 5


def test_a_second_ingest_keeps_the_selection(store, client):
    before = ctengine.open_store(store).catalog
    report = ctengine.ingest([store.parent / "src"], store, client=client, progress=False)
    after = ctengine.open_store(store).catalog
    assert report.nothing_written
    assert after["selected"].tolist() == before["selected"].tolist()
    assert ctengine.open_store(store).lung_mask("patient1", "SR_2").dtype == np.uint8


def test_series_without_spacing_are_listed_in_the_report(tmp_path, client):
    from conftest import make_tree

    make_tree(tmp_path / "src", shape=(512, 512), series_spec=(("normal1", "patient2", "SR_2", 4),))
    ctengine.ingest([tmp_path / "src"], tmp_path / "s.zarr", client=client, progress=False)
    report = compute_features(tmp_path / "s.zarr", client=client, progress=False)
    assert not report.failed_series and report.spacing_unknown == ["patient2/SR_2"]


def test_features_are_computed_again_when_the_spacing_becomes_known(tmp_path, client):
    from conftest import make_tree

    make_tree(tmp_path / "src", shape=(512, 512), series_spec=(("normal1", "patient2", "SR_2", 4),))
    ctengine.ingest([tmp_path / "src"], tmp_path / "s.zarr", client=client, progress=False)
    compute_features(tmp_path / "s.zarr", client=client, progress=False)
    meta = tmp_path / "meta.csv"
    meta.write_text('Patient ID,SR_2 PixelSpacing\npatient2,"[0.75, 0.75]"\n')
    ctengine.ingest([tmp_path / "src"], tmp_path / "s.zarr", client=client, progress=False, metadata=str(meta))
    report = compute_features(tmp_path / "s.zarr", client=client, progress=False)
    assert report.series_computed == 1 and report.spacing_unknown == []


def test_lung_labels_carry_their_names_and_colours(store):
    label = zarr.open_group(store, mode="r")["patient1/SR_2/labels/lung"].attrs["ome"]["image-label"]
    assert {p["label-value"]: p["name"] for p in label["properties"]} == {1: "right lung", 2: "left lung"}
    assert {c["label-value"] for c in label["colors"]} == {1, 2}


#: in a fresh process: warm_up, then a phantom series through the feature pass's kernels; prints the
#: kernels warm_up loaded and those the series still had to load
WARM_UP_CHECK = """
import sys
from numba.core.registry import CPUDispatcher
from ctengine.features.pipeline import series_features, warm_up
from ctengine.store import pyramid
from ctengine.synth.phantom import render_series

def loaded():
    return {f"{name}.{key}" for name, module in list(sys.modules.items())
            if name.startswith("ctengine.") and not name.startswith("ctengine.synth")
            for key, value in vars(module).items() if isinstance(value, CPUDispatcher) and value.signatures}

warm_up()
warm = loaded()
raw = render_series(n_slices=6, covid=True, seed=3).raw
mask, table = series_features(raw, spacing=(0.7, 0.7), slope=1.0, intercept=-1024.0)
pyramid.levels(mask, labels=True)
assert set(mask.ravel().tolist()) == {0, 1, 2}
print(len(warm), sorted(loaded() - warm))
"""


def test_warm_up_loads_every_kernel_a_series_needs():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", WARM_UP_CHECK], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    count, missing = done.stdout.split(" ", 1)
    assert int(count) >= 8 and missing.strip() == "[]", done.stdout
