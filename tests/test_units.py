"""Units are explicit: every kernel takes raw values or, with units="hu", Hounsfield units; never a guess."""
from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

import kernel_cases as kc
from ctengine.kernels import hu_stats, lung_mask, normalize, select_slices

SPACING = (0.7, 0.7)
RAW, MASK = kc.ct_phantom(4, 128, seed=9)
HU16 = (RAW.astype(np.int32) - 1024).astype(np.int16)


def _kernels(x, **kw):
    """Every kernel's result on x, as comparable numpy values."""
    stats = hu_stats(x, MASK, spacing=SPACING, **kw)
    return {
        "select": select_slices(x, **kw).counts,
        "lung": lung_mask(x, spacing=SPACING, **kw),
        "window": normalize(x, "window", window="lung", **kw),
        "stats": np.stack([np.asarray(stats[k], dtype=np.float64) for k in ("mean", "p50", "frac_ground_glass")]),
    }


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.float32, np.float64])
def test_hu_input_gives_the_raw_results(dtype):
    want = _kernels(RAW)
    got = _kernels(HU16.astype(dtype), units="hu")
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_hu_statistics_of_an_int16_stack_are_true_hu():
    """The failure this guards against: int16 HU read as raw gave a mean of HU - 1024."""
    stats = hu_stats(HU16, MASK, spacing=SPACING, units="hu")
    lung = MASK > 0
    np.testing.assert_allclose(stats["mean"], [HU16[k][lung[k]].mean() for k in range(len(HU16))], rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("kernel", ["select", "lung", "window", "stats"])
def test_signed_or_float_input_without_units_is_refused_naming_the_keyword(kernel, dtype):
    with pytest.raises(TypeError, match=r"units='hu'.*units='raw'"):
        _kernels_one(kernel, HU16.astype(dtype))


def _kernels_one(kernel, x, **kw):
    if kernel == "select":
        return select_slices(x, **kw)
    if kernel == "lung":
        return lung_mask(x, spacing=SPACING, **kw)
    if kernel == "window":
        return normalize(x, "window", window="lung", **kw)
    return hu_stats(x, MASK, spacing=SPACING, **kw)


def test_signed_raw_is_accepted_when_said():
    """Signed stored values (a DICOM int16 series) with their own rescale are raw when the caller says so."""
    shifted = (RAW.astype(np.int32) - 32768).astype(np.int16)
    got = hu_stats(shifted, MASK, spacing=SPACING, units="raw", intercept=32768 - 1024.0)
    want = hu_stats(RAW, MASK, spacing=SPACING)
    np.testing.assert_array_equal(got["p50"], want["p50"])
    np.testing.assert_array_equal(got["histogram"], want["histogram"])


def test_hu_below_the_field_of_view_is_raw_zero_and_floats_round():
    hu = np.array([[-3024.0, -2048.0, -1024.0, -1023.6, 0.4, 64511.0, 70000.0]])
    got = normalize(hu, "hu", units="hu")
    np.testing.assert_array_equal(got, np.array([[-1024, -1024, -1024, -1024, 0, 64511, 64511]], np.float32))


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"units": "HU"}, ValueError, "'HU'"),
    ({"units": "hu", "slope": 2.0}, ValueError, "leave them out"),
    ({"units": "hu", "intercept": 0.0}, ValueError, "leave them out"),
])
def test_bad_units_options(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        hu_stats(HU16, MASK, spacing=SPACING, **kwargs)
    with pytest.raises(exc, match=match):
        normalize(HU16, "hu", **kwargs)


def test_nan_hu_is_refused():
    hu = HU16.astype(np.float32)
    hu[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        select_slices(hu, units="hu")


def test_raw_float_and_bool_are_refused():
    with pytest.raises(TypeError, match="units='hu'"):
        select_slices(RAW.astype(np.float32), units="raw")
    with pytest.raises(TypeError, match="bool"):
        select_slices(RAW > 100, units="hu")


def test_dask_hu_is_converted_lazily_block_by_block():
    lazy = da.from_array(HU16, chunks=(1, 64, 128))
    sel = select_slices(lazy, units="hu")
    assert isinstance(sel.counts, da.Array)
    np.testing.assert_array_equal(sel.counts.compute(), select_slices(RAW).counts)
    out = normalize(lazy, "hu", units="hu")
    np.testing.assert_array_equal(out.compute(), normalize(RAW, "hu"))
