"""select_slices() and select_slices_by_lung_area(): every backend against the reference, plus behaviours."""
from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

import kernel_cases as kc
from ctengine.kernels.selection import select_slices, select_slices_by_lung_area, selection_region

BACKENDS = ["reference", "cpu", "dask", "cuda-sim"]
REGION = (slice(240, 340), slice(120, 370))


def _with_dark(counts: list[int], shape=(512, 512), bright: int = 1024, dark: int = 299) -> np.ndarray:
    """A stack whose slice k has exactly counts[k] dark pixels inside the region (and some outside)."""
    out = np.full((len(counts), *shape), bright, dtype=np.uint16)
    for k, n in enumerate(counts):
        region = np.full(100 * 250, bright, dtype=np.uint16)
        region[:n] = dark
        out[k, REGION[0], REGION[1]] = region.reshape(100, 250)
        out[k, :240, :] = 0  # dark, but outside the region: never counted
        out[k, :, 370:] = 0
        out[k, 340:, :] = 0
    return out


def _cases() -> dict[str, np.ndarray]:
    boundary = np.full((3, 512, 512), 300, dtype=np.uint16)
    boundary[1, REGION[0], REGION[1]] = 299
    boundary[2, 240:320, REGION[1]] = 299
    signed = kc.random_raw((2, 512, 512), high=700, seed=4, dtype=np.int16) - np.int16(300)
    return {
        "random": kc.random_raw((2, 512, 512), high=700, seed=0),
        "ct_like": kc.ct_phantom(5, 512, seed=1)[0],
        "all_zero": np.zeros((2, 512, 512), np.uint16),
        "all_bright": np.full((2, 512, 512), 1024, np.uint16),
        "boundary_299_300": boundary,
        "threshold_tie": _with_dark([0, 3000, 2000]),
        "real_ct_2d": kc.upsample(kc.real_ct_raw(), 4),
        "int16": signed,
        "uint16_max": np.full((1, 512, 512), 65535, np.uint16),
        "uint8_all_dark": kc.random_raw((2, 512, 512), high=256, seed=5, dtype=np.uint8),
    }


CASES = _cases()


def _mask_cases() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    _, ct_mask = kc.ct_phantom(4, 64, seed=2)
    single = np.zeros((2, 16, 16), np.uint8)
    single[0, 3, 4] = 2
    return {
        "random": rng.integers(0, 3, (3, 24, 40)).astype(np.uint8),
        "bool": rng.random((2, 16, 16)) < 0.3,
        "ct_like": ct_mask,
        "empty": np.zeros((2, 8, 8), np.uint8),
        "single_pixel": single,
        "slice_2d": rng.integers(0, 2, (12, 12)).astype(np.uint8),
    }


MASKS = _mask_cases()


@pytest.fixture(scope="module")
def sim() -> dict:
    out = kc.run_cudasim("dark", {k: {"x": v} for k, v in CASES.items()})
    area = kc.run_cudasim("area", {k: {"masks": v} for k, v in MASKS.items()})
    return {"dark": out, "area": area}


def dark(backend: str, case: str, request) -> tuple[np.ndarray, np.ndarray]:
    x = CASES[case]
    if backend == "reference":
        return tuple(select_slices(x, units="raw", method="reference"))
    if backend == "cpu":
        return tuple(select_slices(x, units="raw"))
    if backend == "dask":
        chunks = (1, 128, 128) if x.ndim == 3 else (128, 128)
        sel = select_slices(da.from_array(x, chunks=chunks), units="raw")
        assert isinstance(sel.keep, da.Array) and isinstance(sel.counts, da.Array)
        return sel.keep.compute(), sel.counts.compute()
    return request.getfixturevalue("sim")["dark"][case]


def area_counts(backend: str, case: str, request) -> np.ndarray:
    m = MASKS[case]
    if backend == "cuda-sim":
        return request.getfixturevalue("sim")["area"][case]
    if backend == "dask":
        r = select_slices_by_lung_area(da.from_array(m, chunks=1 if m.ndim == 3 else 6), spacing=1.0)
        assert isinstance(r.counts, da.Array)
        return r.counts.compute()
    method = "reference" if backend == "reference" else "auto"
    return select_slices_by_lung_area(m, spacing=1.0, method=method).counts


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("backend", ["cpu", "dask", "cuda-sim"])
def test_selection_identical_to_reference(backend, case, request):
    keep, counts = dark(backend, case, request)
    want_keep, want_counts = dark("reference", case, request)
    assert keep.dtype == np.bool_ and counts.dtype == np.int64
    np.testing.assert_array_equal(counts, want_counts)
    np.testing.assert_array_equal(keep, want_keep)


@pytest.mark.parametrize("case", CASES)
def test_reference_is_the_published_rule(case):
    x = CASES[case]
    x = x[None] if x.ndim == 2 else x
    counts = np.array([np.count_nonzero(s[240:340, 120:370] < 300) for s in x])
    keep = counts > (counts.max() - counts.min()) / 1.5
    sel = select_slices(x, units="raw", method="reference")
    np.testing.assert_array_equal(sel.counts, counts)
    np.testing.assert_array_equal(sel.keep, keep)


@pytest.mark.parametrize("backend", BACKENDS)
def test_threshold_is_strict_and_ignores_outside(backend, request):
    keep, counts = dark(backend, "threshold_tie", request)
    assert counts.tolist() == [0, 3000, 2000]
    assert keep.tolist() == [False, True, False]  # 2000 == (3000 - 0) / 1.5 is not kept


@pytest.mark.parametrize("backend", BACKENDS)
def test_dark_means_below_300(backend, request):
    keep, counts = dark(backend, "boundary_299_300", request)
    assert counts.tolist() == [0, 25000, 20000]
    assert keep.tolist() == [False, True, True]


@pytest.mark.parametrize("backend", BACKENDS)
def test_flat_series(backend, request):
    assert dark(backend, "all_zero", request)[0].tolist() == [True, True]
    assert dark(backend, "all_bright", request)[0].tolist() == [False, False]
    assert dark(backend, "uint16_max", request)[0].tolist() == [False]
    assert dark(backend, "uint8_all_dark", request)[1].tolist() == [25000, 25000]  # every uint8 < 300


@pytest.mark.parametrize("backend", BACKENDS)
def test_ct_like_keeps_middle_slices(backend, request):
    keep, counts = dark(backend, "ct_like", request)
    assert keep.tolist() == [False, True, True, True, False]
    assert counts[2] > counts[0]


def test_single_slice_is_a_series_of_one():
    sel = select_slices(CASES["real_ct_2d"])
    assert sel.keep.shape == (1,) and sel.counts.shape == (1,)
    assert bool(sel.keep[0]) == (sel.counts[0] > 0)


@pytest.mark.parametrize("size", [384, 256, 640])
def test_other_sizes_scale_the_region(size):
    """The authors' rule on a phantom drawn at another size equals the 512 rule on the 512 phantom."""
    small = kc.ct_phantom(5, size, seed=1)[0]
    sel = select_slices(small)
    assert sel.keep.tolist() == select_slices(kc.ct_phantom(5, 512, seed=1)[0]).keep.tolist()
    assert not sel.keep.all()
    rows, cols = selection_region((size, size))
    counts = [np.count_nonzero(s[rows, cols] < 300) for s in small]
    assert sel.counts.tolist() == counts


def test_region_of_512_is_the_published_one_and_tiny_slices_are_refused():
    assert selection_region((512, 512)) == (slice(240, 340), slice(120, 370))
    assert selection_region((512, 256)) == (slice(240, 340), slice(60, 185))
    with pytest.raises(ValueError, match=r"\(2, 512\)"):
        select_slices(np.zeros((1, 2, 512), np.uint16))


def test_dark_threshold_follows_the_rescale():
    """HU < -724 is dark for any rescale: int16 stored values with intercept -32768 - 1024."""
    raw = kc.ct_phantom(5, 512, seed=1)[0]
    shifted = raw.astype(np.int32) - 32768
    want = select_slices(raw)
    got = select_slices(shifted.astype(np.int16), units="raw", intercept=32768 - 1024.0)
    np.testing.assert_array_equal(got.counts, want.counts)
    hu = select_slices(raw.astype(np.float32) - 1024.0, units="hu")
    np.testing.assert_array_equal(hu.counts, want.counts)


def test_rejects_bad_dtype_ndim_and_empty():
    with pytest.raises(TypeError, match="float32.*units='hu'"):
        select_slices(np.zeros((1, 512, 512), np.float32))
    with pytest.raises(TypeError, match="int16.*units='hu'"):
        select_slices(np.zeros((1, 512, 512), np.int16))
    with pytest.raises(ValueError, match="shape"):
        select_slices(np.zeros((1, 1, 512, 512), np.uint16))
    with pytest.raises(ValueError, match="no slices"):
        select_slices(np.zeros((0, 512, 512), np.uint16))
    with pytest.raises(ValueError, match="'gpu'"):
        select_slices(np.zeros((1, 512, 512), np.uint16), method="gpu")


def test_cupy_selection_on_device():
    cp = pytest.importorskip("cupy")
    try:
        x = cp.asarray(CASES["ct_like"])
    except Exception as err:  # cupy installed but no usable GPU
        pytest.skip(f"no CUDA device: {err}")
    sel = select_slices(x)
    assert isinstance(sel.keep, cp.ndarray) and isinstance(sel.counts, cp.ndarray)
    want = select_slices(CASES["ct_like"], method="reference")
    np.testing.assert_array_equal(cp.asnumpy(sel.counts), want.counts)
    np.testing.assert_array_equal(cp.asnumpy(sel.keep), want.keep)


# --- select_slices_by_lung_area ---------------------------------------------------------


@pytest.mark.parametrize("case", MASKS)
@pytest.mark.parametrize("backend", ["cpu", "dask", "cuda-sim"])
def test_lung_counts_identical_to_reference(backend, case, request):
    got = area_counts(backend, case, request)
    want = area_counts("reference", case, request)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got.reshape(want.shape), want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_lung_counts_of_hand_made_masks(backend, request):
    assert area_counts(backend, "single_pixel", request).tolist() == [1, 0]
    assert area_counts(backend, "empty", request).tolist() == [0, 0]


def test_area_rule_and_spacing():
    m = np.zeros((4, 10, 10), np.uint8)
    m[0, :1, :4] = 1   # 4 px
    m[1, :5, :6] = 2   # 30 px
    m[2, :4, :5] = 1   # 20 px: exactly 2/3 of 30, not kept (strict)
    m[3, :5, :5] = 2   # 25 px
    r = select_slices_by_lung_area(m, spacing=(0.5, 0.8))
    np.testing.assert_allclose(r.area_mm2, [1.6, 12.0, 8.0, 10.0])
    assert r.keep.tolist() == [False, True, False, True]
    floor = select_slices_by_lung_area(m, spacing=(0.5, 0.8), fraction=0.0, min_area_mm2=8.0)
    assert floor.keep.tolist() == [False, True, True, True]


def test_area_of_empty_series_keeps_nothing():
    r = select_slices_by_lung_area(MASKS["empty"], spacing=0.7)
    assert r.keep.tolist() == [False, False] and r.area_mm2.tolist() == [0.0, 0.0]


def test_area_selection_keeps_consolidated_slice_the_dark_count_drops():
    raw, mask = kc.ct_phantom(5, 512, seed=3)
    raw[2][mask[2] > 0] = 1060  # middle slice: both lungs fully consolidated
    assert select_slices(raw).keep.tolist() == [False, True, False, True, False]
    by_area = select_slices_by_lung_area(mask, spacing=0.7)
    assert by_area.keep.tolist() == [False, True, True, True, False]


def test_area_dask_is_lazy_and_equal():
    m = MASKS["ct_like"]
    r = select_slices_by_lung_area(da.from_array(m, chunks=(1, 32, 32)), spacing=0.6)
    assert isinstance(r.keep, da.Array) and isinstance(r.area_mm2, da.Array)
    want = select_slices_by_lung_area(m, spacing=0.6)
    np.testing.assert_array_equal(r.keep.compute(), want.keep)
    np.testing.assert_array_equal(r.area_mm2.compute(), want.area_mm2)


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"spacing": 0.0}, ValueError, "spacing"),
    ({"spacing": (0.7, 0.7, 1.0)}, TypeError, "pair"),
    ({"spacing": float("nan")}, ValueError, "nan"),
    ({"spacing": 0.7, "fraction": 1.0}, ValueError, "fraction"),
    ({"spacing": 0.7, "min_area_mm2": -1}, ValueError, "-1"),
])
def test_area_rejects_bad_options(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        select_slices_by_lung_area(MASKS["random"], **kwargs)


@pytest.mark.parametrize("dtype", [np.int8, np.uint16, np.float32])
def test_area_rejects_bad_mask_dtype(dtype):
    with pytest.raises(TypeError, match=np.dtype(dtype).name):
        select_slices_by_lung_area(np.zeros((1, 4, 4), dtype), spacing=0.7)


def test_area_rule_with_unknown_spacing_keeps_the_same_slices():
    known = select_slices_by_lung_area(MASKS["random"], spacing=0.7)
    unknown = select_slices_by_lung_area(MASKS["random"], spacing=None)
    np.testing.assert_array_equal(unknown.keep, known.keep)
    assert np.isnan(unknown.area_mm2).all()
    with pytest.raises(ValueError, match="spacing is unknown"):
        select_slices_by_lung_area(MASKS["random"], spacing=None, min_area_mm2=100.0)
