import contextlib
import tracemalloc

import numpy as np
import pytest
import zarr

torch = pytest.importorskip("torch")

import ctengine
from ctengine.learn.loader import SliceDataset, SliceLoader, slice_rows
from conftest import SMALL, make_tree, write_slice


@pytest.fixture(scope="module")
def store(tmp_path_factory, client):
    root = tmp_path_factory.mktemp("loader")
    spec = tuple((g, p, s, 7) for g, p in (("137covid", "patient1"), ("normal1", "patient2"), ("normal2", "patient3"))
                 for s in ("SR_2", "SR_3"))
    make_tree(root / "src", series_spec=spec, seed=3)
    ctengine.ingest([root / "src"], root / "s.zarr", client=client, progress=False, shape=SMALL)
    return root / "s.zarr"


def stored(store, row):
    return zarr.open_group(store, mode="r")[f"{row.patient}/{row.series}/0"][int(row.z)]


def test_batches_hold_the_stored_pixels_and_targets(store):
    rows = slice_rows(ctengine.open_store(store).catalog)
    with SliceLoader(store, rows, batch_size=5, threads=2) as loader:
        seen = 0
        for batch in loader:
            assert batch.images.dtype == torch.uint16 and batch.images.shape[1:] == (1, *SMALL)
            for i, row in enumerate(batch.rows.itertuples()):
                assert np.array_equal(batch.images[i, 0].numpy(), stored(store, row))
                assert batch.targets[i].item() == (1 if row.label == "covid" else 0)
            seen += len(batch.rows)
    assert seen == len(rows) == 42


def test_buffers_are_reused_and_shared_with_torch(store):
    rows = slice_rows(ctengine.open_store(store).catalog)
    with SliceLoader(store, rows, batch_size=4, prefetch=1, drop_last=True) as loader:
        addresses = {batch.images.data_ptr() for epoch in range(2) for batch in loader}
        assert addresses == {b.data_ptr() for b in loader.buffers}
        assert all(b.numpy().ctypes.data == b.data_ptr() for b in loader.buffers)


def test_bytes_allocated_per_batch_are_bounded(tmp_path, client):
    rng = np.random.default_rng(0)
    for i in range(1, 17):  # CT-like slices: smooth body plus noise, so chunks compress
        image = np.full((512, 512), 1060, np.uint16) + rng.integers(0, 40, (512, 512), dtype=np.uint16)
        write_slice(tmp_path / f"src/normal1/patient1/SR_2/IM{i:05d}.tif", image)
    ctengine.ingest([tmp_path / "src"], tmp_path / "s.zarr", client=client, progress=False)
    store = tmp_path / "s.zarr"
    rows = slice_rows(ctengine.open_store(store).catalog)
    with SliceLoader(store, rows, batch_size=8, prefetch=0, threads=1) as loader:
        next(iter(loader))  # warm: shard indexes and file handles
        tracemalloc.start()
        batches = 0
        for batch in loader:
            batches += 1
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    raw_batch = 8 * 512 * 512 * 2
    assert batches == 2 and peak < 0.5 * raw_batch  # compressed chunk bytes only, never a decoded copy


def test_shuffle_is_deterministic_per_seed_and_epoch(store):
    rows = slice_rows(ctengine.open_store(store).catalog)
    with SliceLoader(store, rows, shuffle=True, seed=1) as a, SliceLoader(store, rows, shuffle=True, seed=1) as b:
        assert np.array_equal(a.order(), b.order())
        b.set_epoch(1)
        assert not np.array_equal(a.order(), b.order())
        assert sorted(b.order()) == list(range(len(rows)))


def test_ranks_split_the_rows_evenly(store):
    rows = slice_rows(ctengine.open_store(store).catalog)
    with contextlib.ExitStack() as stack:
        orders = [stack.enter_context(SliceLoader(store, rows, rank=r, world_size=4, shuffle=True)).order()
                  for r in range(4)]
    assert {len(o) for o in orders} == {11}
    assert set(np.concatenate(orders)) == set(range(42))
    with pytest.raises(ValueError, match="rank 4"):
        SliceLoader(store, rows, rank=4, world_size=4)


def test_fold_split_and_selection(store):
    catalog = ctengine.open_store(store).catalog.copy()
    catalog["fold1"] = np.where(catalog.patient == "patient1", "test", "train")
    catalog["selected"] = catalog["instance"] > 2
    rows = slice_rows(catalog, fold=1, split="test", series=("SR_2",))
    assert set(rows.patient) == {"patient1"} and rows["instance"].tolist() == [3, 4, 5, 6, 7]
    with pytest.raises(ValueError, match="no fold 2"):
        slice_rows(catalog.assign(fold2=""), fold=2, split="test")


def test_dataset_view_works_with_a_torch_dataloader(store):
    rows = slice_rows(ctengine.open_store(store).catalog)
    loader = torch.utils.data.DataLoader(SliceDataset(store, rows), batch_size=6, num_workers=0)
    images, targets = next(iter(loader))
    assert images.shape == (6, 1, *SMALL)
    assert np.array_equal(images[2, 0].numpy(), stored(store, rows.iloc[2]))


@pytest.fixture(scope="module")
def phantom_store(tmp_path_factory, client):
    """Two synthetic patients with lung masks from `compute_features`."""
    from ctengine.features import compute_features
    from ctengine.synth import write_cohort

    root = tmp_path_factory.mktemp("lung_only")
    write_cohort(root / "src", patients=2, slices_per_series=6, seed=1, progress=False, workers=1)
    ctengine.ingest([root / "src"], root / "s.zarr", client=client, progress=False)
    compute_features(root / "s.zarr", client=client, progress=False)
    return root / "s.zarr"


def test_lung_only_batches_are_air_outside_the_stored_lung_mask(phantom_store):
    opened = ctengine.open_store(phantom_store)
    rows = slice_rows(opened.catalog, selected_only=False)
    seen = 0
    with SliceLoader(phantom_store, rows, batch_size=5, threads=2, lung_only=True) as loader:
        for batch in loader:
            for i, row in enumerate(batch.rows.itertuples()):
                raw = opened.raw(row.patient, row.series)[int(row.z)]
                mask = opened.lung_mask(row.patient, row.series)[int(row.z)]
                assert np.array_equal(batch.images[i, 0].numpy(), np.where(mask > 0, raw, 0))
                seen += int(mask.any())
    assert seen > len(rows) // 2   # most phantom slices hold lung
    item, _ = SliceDataset(phantom_store, rows, lung_only=True)[3]
    with SliceLoader(phantom_store, rows.iloc[[3]], batch_size=1, lung_only=True) as loader:
        assert np.array_equal(item.numpy(), next(iter(loader)).images[0].numpy())


def test_lung_only_without_masks_names_the_series(store):
    rows = slice_rows(ctengine.open_store(store).catalog)
    with pytest.raises(ValueError, match=r"6 series have no lung mask \(patient1/SR_2, .*run `ctengine features"):
        SliceLoader(store, rows, batch_size=4, lung_only=True)


def test_predict_feeds_the_network_what_the_loader_feeds(phantom_store):
    from ctengine.learn.loader import DeviceLoader
    from ctengine.learn.predict import series_inputs

    opened = ctengine.open_store(phantom_store)
    rows = slice_rows(opened.catalog, selected_only=False)
    rows = rows[rows["selected"]]
    assert len(rows)
    for (patient, series), part in rows.groupby(["patient", "series"]):
        part = part.sort_values("z")
        slope, intercept = opened.rescale(patient, series)
        _, chosen, inputs = series_inputs(opened.read_raw(patient, series), spacing=opened.spacing(patient, series),
                                          slope=slope, intercept=intercept, lung_only=True)
        assert chosen.tolist() == part["z"].tolist()
        with SliceLoader(phantom_store, part, batch_size=len(part), lung_only=True) as loader:
            images, _, _ = next(iter(DeviceLoader(loader, "cpu")))
        assert torch.equal(torch.from_numpy(inputs).to(torch.float32), images)
