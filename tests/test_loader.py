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


def stored_hu(store, row):
    """The stored slice in HU (float64), with the series' rescale."""
    slope, intercept = ctengine.open_store(store).rescale(row.patient, row.series)
    return stored(store, row).astype(np.float64) * slope + intercept


def test_batches_hold_the_stored_pixels_in_hu_and_targets(store):
    rows = slice_rows(ctengine.open_store(store).catalog)
    with SliceLoader(store, rows, batch_size=5, threads=2) as loader:
        seen = 0
        for batch in loader:
            assert batch.images.dtype == torch.float32 and batch.images.shape[1:] == (1, *SMALL)
            for i, row in enumerate(batch.rows.itertuples()):
                np.testing.assert_array_equal(batch.images[i, 0].numpy(), stored_hu(store, row))
                assert batch.targets[i].item() == (1 if row.label == "covid" else 0)
            seen += len(batch.rows)
    assert seen == len(rows) == 42


@pytest.mark.parametrize("output, dtype", [("hu", torch.float32), ("hu_int32", torch.int32),
                                           ("window", torch.float32)])
def test_outputs_are_float32_or_int32_never_uint16(store, output, dtype):
    rows = slice_rows(ctengine.open_store(store).catalog).iloc[:6]
    with SliceLoader(store, rows, batch_size=6, output=output, window_hu=(-600.0, 1500.0)) as loader:
        batch = next(iter(loader))
    assert batch.images.dtype == dtype
    hu = np.stack([stored_hu(store, row) for row in rows.itertuples()])[:, None]
    want = np.clip((hu + 1350.0) / 1500.0, 0, 1).astype(np.float32) if output == "window" else hu
    np.testing.assert_allclose(batch.images.numpy(), want, rtol=0, atol=1e-6 if output == "window" else 0)
    with pytest.raises(ValueError, match="output must be one of hu, hu_int32, window"):
        SliceLoader(store, rows, output="raw")


def test_buffers_are_reused_and_shared_with_torch(store):
    rows = slice_rows(ctengine.open_store(store).catalog)
    with SliceLoader(store, rows, batch_size=4, prefetch=1, drop_last=True) as loader:
        addresses = {batch.images.data_ptr() for epoch in range(2) for batch in loader}
        assert addresses == {b.data_ptr() for b in loader.buffers}  # every batch is a view of an output buffer
        raw_addresses = {batch.images.data_ptr() for batch in loader.raw_batches()}
        assert raw_addresses == {b.data_ptr() for b in loader.raw_buffers}  # chunks decode into these
        for b in (*loader.buffers, *loader.raw_buffers):
            assert b.numpy().ctypes.data == b.data_ptr()  # torch and numpy share the memory
        raw = next(iter(loader.raw_batches()))
        assert raw.images.dtype == torch.uint16 and torch.equal(raw.images.to(torch.float32) - 1024,
                                                                  next(iter(loader)).images)


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
    dataset = SliceDataset(store, rows)
    assert isinstance(dataset, torch.utils.data.Dataset)
    loader = torch.utils.data.DataLoader(dataset, batch_size=6, num_workers=0)
    images, targets = next(iter(loader))
    assert images.shape == (6, 1, *SMALL) and images.dtype == torch.float32
    np.testing.assert_array_equal(images[2, 0].numpy(), stored_hu(store, rows.iloc[2]))
    assert targets.tolist() == rows["target"].iloc[:6].tolist()


def test_dataset_dict_samples_have_the_keys_and_types_of_monai_dictionaries(store):
    rows = slice_rows(ctengine.open_store(store).catalog)
    opened = ctengine.open_store(store)
    sample = SliceDataset(store, rows, as_dict=True)[4]
    row = rows.iloc[4]
    assert set(sample) == {"image", "label", "patient", "series", "instance", "spacing_mm"}
    assert sample["image"].dtype == torch.float32 and sample["image"].shape == (1, *SMALL)
    np.testing.assert_array_equal(sample["image"][0].numpy(), stored_hu(store, row))
    assert (sample["label"], sample["patient"], sample["series"], sample["instance"]) == \
        (int(row["target"]), row["patient"], row["series"], int(row["instance"]))
    want = opened.spacing(row["patient"], row["series"]) or (np.nan, np.nan)
    np.testing.assert_array_equal(sample["spacing_mm"].numpy(), want)
    assert sample["spacing_mm"].dtype == torch.float64
    batch = next(iter(torch.utils.data.DataLoader(SliceDataset(store, rows, as_dict=True), batch_size=3)))
    assert batch["image"].shape == (3, 1, *SMALL) and batch["patient"] == rows["patient"].iloc[:3].tolist()
    assert batch["spacing_mm"].shape == (3, 2) and batch["instance"].tolist() == rows["instance"].iloc[:3].tolist()
    with SliceLoader(store, rows.iloc[:3], batch_size=3) as loader:
        from_loader = next(iter(loader)).as_dict()
    assert set(from_loader) == set(batch) and torch.equal(from_loader["image"], batch["image"])
    assert from_loader["patient"] == batch["patient"] and torch.equal(from_loader["instance"], batch["instance"])
    torch.testing.assert_close(from_loader["spacing_mm"], batch["spacing_mm"], equal_nan=True)
    with pytest.raises(ValueError, match="mask=True needs as_dict=True"):
        SliceDataset(store, rows, mask=True)


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
                slope, intercept = opened.rescale(row.patient, row.series)
                want = np.where(mask > 0, raw, 0) * slope + intercept
                np.testing.assert_array_equal(batch.images[i, 0].numpy(), want)
                seen += int(mask.any())
    assert seen > len(rows) // 2   # most phantom slices hold lung
    item, _ = SliceDataset(phantom_store, rows, lung_only=True)[3]
    with SliceLoader(phantom_store, rows.iloc[[3]], batch_size=1, lung_only=True) as loader:
        assert np.array_equal(item.numpy(), next(iter(loader)).images[0].numpy())


def test_dict_samples_carry_the_stored_lung_mask(phantom_store):
    opened = ctengine.open_store(phantom_store)
    rows = slice_rows(opened.catalog, selected_only=False)
    sample = SliceDataset(phantom_store, rows, as_dict=True, mask=True, lung_only=True)[3]
    row = rows.iloc[3]
    mask = opened.lung_mask(row["patient"], row["series"])[int(row["z"])]
    assert sample["mask"].dtype == torch.uint8 and sample["mask"].shape == (1, *mask.shape)
    np.testing.assert_array_equal(sample["mask"][0].numpy(), mask)
    assert (sample["image"][0][sample["mask"][0] == 0] == -1024).all()  # lung only: air outside the mask


def test_a_monai_dictionary_transform_chain_runs_on_the_samples(phantom_store):
    monai = pytest.importorskip("monai")
    from monai.transforms import Compose, RandFlipd, ScaleIntensityRanged

    opened = ctengine.open_store(phantom_store)
    rows = slice_rows(opened.catalog, selected_only=False)
    dataset = SliceDataset(phantom_store, rows, as_dict=True, mask=True)
    chain = Compose([ScaleIntensityRanged(keys="image", a_min=-1350.0, a_max=150.0, b_min=0.0, b_max=1.0,
                                          clip=True),
                     RandFlipd(keys=["image", "mask"], prob=1.0, spatial_axis=1)])
    sample = dataset[3]
    out = chain(dict(sample))
    window = torch.clamp((sample["image"] + 1350.0) / 1500.0, 0.0, 1.0)
    torch.testing.assert_close(torch.as_tensor(out["image"]), torch.flip(window, dims=[2]), rtol=0, atol=1e-6)
    assert torch.equal(torch.as_tensor(out["mask"]), torch.flip(sample["mask"], dims=[2]))
    assert out["patient"] == sample["patient"] and out["instance"] == sample["instance"]
    # the same window from the loader itself
    window_item = SliceDataset(phantom_store, rows, output="window", window_hu=(-600.0, 1500.0))[3][0]
    torch.testing.assert_close(window_item, window, rtol=0, atol=1e-6)
    batches = torch.utils.data.DataLoader(monai.data.Dataset(data=[dataset[i] for i in range(4)], transform=chain),
                                          batch_size=2)
    assert next(iter(batches))["image"].shape == (2, 1, *sample["image"].shape[1:])


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
        assert inputs.dtype == np.float32 and images.dtype == torch.float32
        assert torch.equal(torch.from_numpy(inputs), images)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("output", ["hu", "hu_int32", "window"])
def test_device_loader_converts_on_the_gpu_what_the_cpu_loader_gives(store, output):
    from ctengine.learn.loader import DeviceLoader

    rows = slice_rows(ctengine.open_store(store).catalog)
    with SliceLoader(store, rows, batch_size=8, output=output) as loader:
        cpu = [batch.images.clone() for batch in loader]
        device = DeviceLoader(loader, "cuda")
        gpu = [images for images, _, _ in device]
    assert device.copies == len(cpu) and all(images.is_cuda for images in gpu)
    assert all(torch.equal(a, b.cpu()) for a, b in zip(cpu, gpu))


def test_the_network_sees_the_values_it_saw_before_the_loader_gave_hu(phantom_store):
    """prepare(HU batch) equals the preparation of the raw batch as float32 in raw units (the previous input)."""
    from ctengine.learn.model import build_model

    net = build_model("small", seed=0, input_size=32).eval()
    rows = slice_rows(ctengine.open_store(phantom_store).catalog, selected_only=False).iloc[:4]
    with SliceLoader(phantom_store, rows, batch_size=4, lung_only=True) as loader:
        hu = next(iter(loader)).images.clone()
        raw = next(iter(loader.raw_batches())).images.to(torch.float32)
    assert torch.equal(hu + 1024, raw)
    with torch.no_grad():
        before = net.classify(_prepare_raw(net, raw))
        torch.testing.assert_close(net(hu), before, rtol=0, atol=0)
    with pytest.raises(TypeError, match="uint16"):
        net(raw.to(torch.uint16))


def _prepare_raw(net, x):
    """The model's input preparation as it was for raw float32 input (crop on raw > 0, normalise, resize)."""
    from ctengine.learn.model import crop_to_content, normalize_tensor
    from ctengine.learn.network import resize

    c = net.config
    x = crop_to_content(x, (32, 32))
    x = normalize_tensor(x, mode=c["normalization"], constant=c["norm_constant"], window_hu=tuple(c["window_hu"]))
    return resize(x, (32, 32))
