from pathlib import Path

import numpy as np
import pytest
import zarr

import ctengine
from ctengine.features import compute_features
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
    assert len(slices) == len(opened.catalog) and {"mean", "opacity_pct", "hist_63"} <= set(slices.columns)
    lung = slices[slices["count"] > 500]
    assert lung["mean"].between(-950, -600).all()
    patients = opened.feature_table("patients")
    assert sorted(patients["patient"]) == ["patient1", "patient2"] and (patients["lung_volume_l"] > 0).all()
    assert Path(features_path(store), "series.parquet").is_file()


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
