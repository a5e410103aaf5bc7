import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from ctengine.constants import CLASS_COVID, CLASS_NAMES, CLASS_NORMAL, LABELS  # noqa: E402
from ctengine.learn.train import recalibrate_batchnorm  # noqa: E402
from ctengine.learn.model import (  # noqa: E402
    ARCHITECTURES, build_model, load_checkpoint, normalize_tensor, parameter_count, save_checkpoint,
)


@pytest.fixture(scope="module")
def full_model():
    return build_model("resnet50v2-fpn", seed=0).eval()


@pytest.mark.parametrize("size", [64, 96, 128, 200])
def test_small_forward_shapes(size):
    model = build_model("small", seed=0).eval()
    with torch.no_grad():
        assert model(torch.rand(3, 1, size, size) * 3000).shape == (3, 2)
        assert model.prepare(torch.rand(2, 1, size, size)).shape == (2, 1, 128, 128)


def _hu(*shape):
    """Integer HU in [-1024, 1000) as float32, and the same slices in raw units (HU + 1024)."""
    hu = torch.randint(-1024, 1000, shape, generator=torch.Generator().manual_seed(0)).to(torch.float32)
    return hu, hu + 1024


def test_prepare_resizes_by_box_average_or_bilinear():
    model = build_model("small", normalization="none", lung_only=False, crop=None, seed=0)
    x, raw = _hu(2, 1, 256, 256)   # HU in, raw units (HU + 1024) to the network under "none"
    torch.testing.assert_close(model.prepare(x), F.avg_pool2d(raw, 2), rtol=0, atol=0)
    y, raw_y = _hu(2, 1, 100, 100)
    want = F.interpolate(raw_y, size=(128, 128), mode="bilinear", align_corners=False)
    torch.testing.assert_close(model.prepare(y), want, rtol=0, atol=0)
    z, raw_z = _hu(1, 1, 128, 128)
    torch.testing.assert_close(model.prepare(z), raw_z, rtol=0, atol=0)
    cropping = build_model("small", normalization="none", seed=0)   # content everywhere: the whole slice
    torch.testing.assert_close(cropping.prepare(x), F.avg_pool2d(raw, 2), rtol=0, atol=0)


@pytest.mark.parametrize("size", [(64, 64), (50, 70), (33, 33)])
def test_small_native_size_forward(size):
    model = build_model("small", input_size=None, seed=0).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 1, *size)).shape == (2, 2)


def test_full_model_parameter_count_and_forward(full_model):
    # Keras ResNet50V2(include_top=False) with one input channel: 23,513,088
    # trainable parameters; with BatchNorm moving mean/variance 23,558,528.
    bb = full_model.backbone
    assert parameter_count(bb) == 23_513_088
    bn = sum(m.num_features for m in bb.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert parameter_count(bb) + 2 * bn == 23_558_528
    assert 30e6 < parameter_count(full_model) < 36e6
    with torch.no_grad():
        assert full_model(torch.rand(1, 1, 64, 64) * 3000).shape == (1, 2)


def test_fpn_concatenates(full_model):
    f = full_model.config["fpn_channels"]
    fpn = full_model.fpn
    assert (fpn.out5.in_channels, fpn.out4.in_channels, fpn.out3.in_channels) == (f, 2 * f, 3 * f)
    with torch.no_grad():
        p = full_model.pyramid(torch.rand(1, 1, 64, 64) * 3000)
        assert p["C3"].shape == (1, 512, 4, 4) and p["C4"].shape == (1, 1024, 2, 2)
        assert p["C5"].shape == (1, 2048, 2, 2)
        assert p["M4"].shape[1] == 2 * f and p["M3"].shape[1] == 3 * f
        torch.testing.assert_close(p["M4"][:, :f], F.interpolate(p["M5"], size=(2, 2)))
        torch.testing.assert_close(p["M4"][:, f:], fpn.lat4(p["C4"]))
        torch.testing.assert_close(p["M3"][:, :2 * f], F.interpolate(p["M4"], size=(4, 4)))
        torch.testing.assert_close(p["M3"][:, 2 * f:], fpn.lat3(p["C3"]))
        sizes = [tuple(p[k].shape[-2:]) for k in ("P3", "P4", "P5", "P6", "P7")]
        assert sizes == [(4, 4), (2, 2), (2, 2), (1, 1), (1, 1)]
        assert all(p[k].shape[1] == f for k in ("P3", "P4", "P5", "P6", "P7"))


def test_five_level_heads_feed_final_dense():
    model = build_model("small", seed=0)
    assert len(model.heads) == 5
    assert model.classifier.in_features == 5 * 2
    flat = build_model("small", head="flatten", input_size=64, seed=0).eval()
    # P3 at stride 16 of a 64 x 64 input: 4 x 4 x 32 features
    assert flat.heads[0].dense.in_features == 32 * 4 * 4
    with torch.no_grad():
        assert flat(torch.rand(2, 1, 100, 100)).shape == (2, 2)


def test_training_targets_are_the_logit_columns_of_their_class():
    from ctengine.learn.loader import slice_rows

    catalog = pd.DataFrame({"patient": ["p1", "p2", "p3"], "series": "SR_2", "z": 0,
                            "label": ["covid", "normal", "normal"], "slice_label": ["", "", "covid"],
                            "labelled": [False, False, True]})
    assert slice_rows(catalog)["target"].tolist() == [CLASS_COVID, CLASS_NORMAL, CLASS_COVID]
    assert sorted(CLASS_NAMES) == sorted(LABELS)  # the dataset's label spellings, in class-index order


def test_normalize_max_matches_dataset_viewer():
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 5000, size=(3, 1, 16, 16), dtype=np.uint16)
    raw[2] = 0
    got = normalize_tensor(torch.from_numpy(raw).float(), mode="max").numpy()
    for i in range(2):
        np.testing.assert_array_equal(got[i], np.float32(raw[i] / raw[i].max()))
    assert (got[2] == 0).all()


@pytest.mark.parametrize("mode", ["max", "fixed", "window"])
def test_normalize_matches_array_reference(mode):
    ref = pytest.importorskip("ctengine.kernels.normalization")
    rng = np.random.default_rng(2)
    raw = rng.integers(0, 5000, size=(4, 32, 32), dtype=np.uint16)
    raw[1] = 0
    opts = {"window": "lung"} if mode == "window" else {}
    want = ref.normalize(raw, mode, method="reference", **opts)
    got = normalize_tensor(torch.from_numpy(raw).float()[:, None], mode=mode)[:, 0].numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=0 if mode == "max" else 1e-6)


def test_normalize_fixed_window_none():
    raw = torch.tensor([-500.0, 0.0, 424.0, 1174.0, 3000.0]).reshape(1, 1, 1, 5)
    torch.testing.assert_close(normalize_tensor(raw, mode="fixed"), raw / 65535)
    torch.testing.assert_close(normalize_tensor(raw, mode="fixed", constant=4096.0), raw / 4096)
    # HU = raw - 1024; lung window -600 / 1500 spans -1350..150 HU
    want = torch.tensor([0.0, 326 / 1500, 0.5, 1.0, 1.0]).reshape(1, 1, 1, 5)
    torch.testing.assert_close(normalize_tensor(raw, mode="window"), want)
    assert normalize_tensor(raw, mode="none") is raw
    with pytest.raises(ValueError):
        normalize_tensor(raw, mode="hu")
    with pytest.raises(TypeError):
        normalize_tensor(raw.to(torch.int32), mode="max")


def test_forward_accepts_int32_hu_refuses_uint16_and_validates_shape():
    model = build_model("small", seed=0).eval()
    hu = np.random.default_rng(1).integers(-1024, 3000, size=(2, 1, 64, 64), dtype=np.int32)
    with torch.no_grad():
        a = model(torch.from_numpy(hu))
        b = model(torch.from_numpy(hu.astype(np.float32)))
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        with pytest.raises(TypeError, match="uint16"):
            model(torch.from_numpy((hu + 1024).astype(np.uint16)))
        with pytest.raises(ValueError):
            model(torch.zeros(2, 3, 64, 64))
        with pytest.raises(ValueError):
            model(torch.zeros(1, 64, 64))


def test_build_model_validates():
    with pytest.raises(ValueError, match="name"):
        build_model("resnet18")
    with pytest.raises(ValueError, match="unknown"):
        build_model("small", width=3)
    with pytest.raises(ValueError, match="normalization"):
        build_model("small", normalization="zscore")
    with pytest.raises(ValueError, match="input_size"):
        build_model("small", head="flatten", input_size=None)
    assert set(ARCHITECTURES) == {"small", "resnet50v2-fpn"}


def test_seed_is_deterministic_and_leaves_global_rng():
    state = torch.random.get_rng_state()
    a, b, c = (build_model("small", seed=s).state_dict() for s in (3, 3, 4))
    assert torch.equal(state, torch.random.get_rng_state())
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_checkpoint_round_trip(tmp_path):
    model = build_model("small", seed=1, normalization="window", dropout=0.25)
    model.train()
    with torch.no_grad():
        model(torch.rand(4, 1, 64, 64) * 3000)  # move BatchNorm running statistics
    model.eval()
    x = torch.rand(2, 1, 96, 96) * 3000
    extra = {"epoch": 3, "fold": 1, "history": [0.5, 0.25], "best": torch.tensor(0.9)}
    path = save_checkpoint(tmp_path / "m.pt", model, extra=extra)
    loaded, got = load_checkpoint(path)
    assert loaded.config == model.config and loaded.config["normalization"] == "window"
    assert not loaded.training
    assert got["epoch"] == 3 and got["history"] == [0.5, 0.25] and torch.equal(got["best"], extra["best"])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    raw = torch.load(path, weights_only=True)  # plain content only
    assert isinstance(raw["config"], str)
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path / "bad.pt", model, extra={"a": np.zeros(2)})
    with pytest.raises(ValueError):
        torch.save({"x": 1}, tmp_path / "other.pt")
        load_checkpoint(tmp_path / "other.pt")


def _blobs(n, size, seed):
    """Half the images (label 1) hold a ground-glass disc (-324 HU) in lung (-824 HU); raw units."""
    g = torch.Generator().manual_seed(seed)
    x = 200 + 30 * torch.randn(n, 1, size, size, generator=g)
    y = torch.arange(n) % 2
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for i in torch.nonzero(y).flatten():
        cy, cx = torch.randint(12, size - 12, (2,), generator=g)
        x[i, 0][(yy - cy) ** 2 + (xx - cx) ** 2 < 36] += 500
    return x, y


def test_small_model_overfits_tiny_problem():
    torch.manual_seed(0)
    x, y = _blobs(32, 64, seed=0)
    model = build_model("small", input_size=None, dropout=0.0, seed=0)
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    model.train()
    losses = []
    for step in range(60):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step == 0:
            first = loss.item()
            assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
            assert model.backbone.stem.weight.grad.abs().sum() > 0  # reaches the first layer
    recalibrate_batchnorm(model, [x[:16], x[16:]])   # running statistics of the final weights, as train() does
    model.eval()
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    # the lowest of the last ten losses: one step's spike (its size differs between CPUs) is not a failure
    assert min(losses[-10:]) < 0.05 * first and acc == 1.0, (first, losses[-10:], acc)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_forward_matches_cpu(tmp_path):
    model = build_model("small", seed=0).eval()
    x = torch.randint(0, 4000, (4, 1, 512, 512), dtype=torch.int32).float()
    with torch.no_grad():
        cpu = model(x)
        gpu = model.cuda()(x.cuda())
    assert gpu.is_cuda
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=2e-2, atol=2e-2)  # TF32 convolutions
    save_checkpoint(tmp_path / "g.pt", model)
    loaded, _ = load_checkpoint(tmp_path / "g.pt", map_location="cuda")
    assert next(loaded.parameters()).is_cuda


def _reference_crop(image: np.ndarray, min_side: int = 64) -> np.ndarray:
    """The square around the pixels > 0, by plain index arithmetic."""
    ys, xs = np.nonzero(image > 0)
    if not len(ys):
        return image
    h, w = image.shape
    side = min(max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1, min_side), h, w)
    top = int(np.clip((ys.min() + ys.max() + 1 - side) // 2, 0, h - side))
    left = int(np.clip((xs.min() + xs.max() + 1 - side) // 2, 0, w - side))
    return image[top:top + side, left:left + side]


def test_crop_to_content_zooms_to_the_square_around_the_lungs():
    from ctengine.learn.model import crop_to_content

    rng = np.random.default_rng(0)
    x = np.zeros((5, 1, 96, 80), np.float32)
    x[0, 0, 10:60, 20:40] = rng.integers(1, 900, (50, 20))   # tall box: side 50
    x[1, 0, 0:5, 70:80] = 300                                 # tiny box in a corner: min side, shifted inside
    x[2, 0, 3:90, 1:79] = 42                                  # wider than min side, clipped to the image
    x[4, 0, 40, 41] = 7                                       # one pixel
    out = crop_to_content(torch.from_numpy(x), (32, 32), min_side=24)
    assert out.shape == (5, 1, 32, 32)
    for i in range(5):   # x[3] is empty: taken whole
        expected = F.interpolate(torch.from_numpy(_reference_crop(x[i, 0], 24).copy())[None, None], size=(32, 32),
                                 mode="bilinear", align_corners=False, antialias=True)
        torch.testing.assert_close(out[i:i + 1], expected)
    assert _reference_crop(x[1, 0], 24).shape == (24, 24) and _reference_crop(x[2, 0], 24).shape == (80, 80)


def test_lung_crop_needs_lung_only_input():
    with pytest.raises(ValueError, match="crop='lung' needs lung_only"):
        build_model("small", lung_only=False)
    model = build_model("small", lung_only=False, crop=None, seed=0)
    assert model.config["crop"] is None and build_model("small").config["crop"] == "lung"
