"""raw_to_output and sample_dict: what the loaders hand to PyTorch."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ctengine.learn.samples import OUTPUTS, check_output, raw_to_output, sample_dict  # noqa: E402

RAW = torch.tensor([[[0, 24, 1024, 65535]], [[0, 100, 200, 300]]], dtype=torch.uint16)  # (2, 1, 4)


@pytest.mark.parametrize("output, dtype", [("hu", torch.float32), ("hu_int32", torch.int32)])
def test_hu_is_exact_for_unit_slope_and_per_image_intercepts(output, dtype):
    got = raw_to_output(RAW, 1.0, [-1024.0, -1000.0], output=output)
    assert got.dtype == dtype
    want = RAW.numpy().astype(np.int64) + np.array([-1024, -1000])[:, None, None]
    np.testing.assert_array_equal(got.numpy(), want)


def test_other_rescales_are_computed_in_float64_and_rounded_once():
    got = raw_to_output(RAW, [0.5, 2.0], [-1000.25, 3.0])
    want = (RAW.numpy().astype(np.float64) * np.array([0.5, 2.0])[:, None, None]
            + np.array([-1000.25, 3.0])[:, None, None]).astype(np.float32)
    np.testing.assert_array_equal(got.numpy(), want)
    with pytest.raises(ValueError, match="hu_int32 needs slope 1"):
        raw_to_output(RAW, 0.5, -1024.0, output="hu_int32")


def test_window_is_clipped_hu_scaled_to_unit_range():
    got = raw_to_output(RAW[:1], 1.0, -1024.0, output="window", window_hu=(-600.0, 1500.0))
    want = np.clip((np.array([-1024, -1000, 0, 64511]) + 1350) / 1500, 0, 1).astype(np.float32)
    np.testing.assert_allclose(got.numpy()[0, 0], want, rtol=0, atol=1e-7)


def test_out_buffer_is_written_in_place_and_checked():
    out = torch.empty(RAW.shape, dtype=torch.float32)
    assert raw_to_output(RAW, 1.0, -1024.0, out=out) is out
    with pytest.raises(ValueError, match="out must be torch.int32"):
        raw_to_output(RAW, 1.0, -1024.0, output="hu_int32", out=out)
    with pytest.raises(ValueError, match="shape"):
        raw_to_output(RAW, 1.0, -1024.0, out=out[:1])


@pytest.mark.parametrize("output, window, match", [("raw", (0, 1), "output must be one of"),
                                                   ("window", (0, 0), "width > 0"),
                                                   ("window", (0, float("nan")), "finite"),
                                                   ("window", 5, "centre, width")])
def test_bad_outputs_and_windows_are_refused(output, window, match):
    with pytest.raises(ValueError, match=match):
        check_output(output, window)
    assert OUTPUTS == ("hu", "hu_int32", "window")


def test_sample_dict_keys_and_types():
    image = torch.zeros((1, 4, 4))
    sample = sample_dict(image, label=1, patient="patient1", series="SR_2", instance=7, spacing_mm=None,
                         mask=torch.ones((1, 4, 4), dtype=torch.uint8))
    assert list(sample) == ["image", "label", "patient", "series", "instance", "spacing_mm", "mask"]
    assert sample["image"] is image and sample["label"] == 1 and sample["instance"] == 7
    assert sample["spacing_mm"].dtype == torch.float64 and torch.isnan(sample["spacing_mm"]).all()
    assert "mask" not in sample_dict(image, label=0, patient="p", series="s", instance=1, spacing_mm=(0.7, 0.7))
