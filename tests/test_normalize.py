"""normalize() and RunningMoments: every backend against the numpy reference, plus behaviours."""
from __future__ import annotations

import json
import math

import dask
import dask.array as da
import numpy as np
import pytest

import kernel_cases as kc
from ctengine.kernels.normalization import RunningMoments, normalize

BACKENDS = ["reference", "cpu", "dask", "cuda-sim"]


def _cases() -> dict[str, np.ndarray]:
    ct, _ = kc.ct_phantom(3, 32, seed=1)
    zero_slice = kc.random_raw((3, 8, 8), seed=2)
    zero_slice[1] = 0
    return {
        "random": kc.random_raw((2, 16, 16), high=65536, seed=0),
        "random_ct_range": kc.random_raw((2, 12, 20), high=5000, seed=1),
        "slice_2d": kc.random_raw((16, 16), seed=3),
        "all_zero": np.zeros((2, 8, 8), np.uint16),
        "zero_slice": zero_slice,
        "constant": np.full((2, 8, 8), 1024, np.uint16),
        "uint16_max": np.full((1, 4, 4), 65535, np.uint16),
        "ct_like": ct,
        "real_ct_crop": kc.real_ct_raw()[48:80, 40:72],
        "int16": kc.random_raw((2, 8, 8), seed=4, dtype=np.int16) - np.int16(1000),
        "uint8": kc.random_raw((2, 8, 8), high=256, seed=5, dtype=np.uint8),
        "strided": kc.random_raw((2, 16, 32), seed=6)[:, ::2, 1::3],
    }


CASES = _cases()
# cases too large for the CUDA simulator: reference, cpu and dask only
BIG_CASES = {"ct_like_512": kc.ct_phantom(3, 512, seed=7)[0], "real_ct": kc.real_ct_raw()}
MODES = {
    "max": ("max", {}),
    "fixed": ("fixed", {}),
    "fixed_4095": ("fixed", {"constant": 4095.0}),
    "hu": ("hu", {}),
    "hu_scaled": ("hu", {"slope": 0.7, "intercept": -1000.5}),
    "window_lung": ("window", {"window": "lung"}),
    "window_mediastinum": ("window", {"window": "mediastinum"}),
    "window_dicom": ("window", {"center": -600, "width": 1200}),
    "zscore": ("zscore", {"mean": 900.25, "std": 450.5}),
}


@pytest.fixture(scope="module")
def sim() -> dict:
    cases = {f"{c}|{m}": {"x": x, "mode": MODES[m][0], "opts": MODES[m][1]}
             for c, x in CASES.items() for m in MODES}
    return kc.run_cudasim("normalize", cases)


def run(backend: str, case: str, mode_id: str, sim: dict | None = None) -> np.ndarray:
    x = CASES[case] if case in CASES else BIG_CASES[case]
    mode, opts = MODES[mode_id]
    if backend == "reference":
        return normalize(x, mode, units="raw", method="reference", **opts)
    if backend == "cpu":
        return normalize(x, mode, units="raw", **opts)
    if backend == "dask":
        chunks = (1, max(1, x.shape[-2] // 2), -1) if x.ndim == 3 else (max(1, x.shape[0] // 2), -1)
        out = normalize(da.from_array(x, chunks=chunks), mode, units="raw", **opts)
        assert isinstance(out, da.Array)
        return out.compute()
    return sim[f"{case}|{mode_id}"]


@pytest.mark.parametrize("mode_id", MODES)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("backend", ["cpu", "dask", "cuda-sim"])
def test_bit_identical_to_reference(backend, case, mode_id, request):
    sim = request.getfixturevalue("sim") if backend == "cuda-sim" else None
    got = run(backend, case, mode_id, sim)
    want = run("reference", case, mode_id)
    assert got.dtype == np.float32 and want.dtype == np.float32
    assert got.shape == CASES[case].shape
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("mode_id", ["max", "hu", "window_lung", "zscore"])
@pytest.mark.parametrize("case", BIG_CASES)
@pytest.mark.parametrize("backend", ["cpu", "dask"])
def test_bit_identical_on_full_size_slices(backend, case, mode_id):
    np.testing.assert_array_equal(run(backend, case, mode_id), run("reference", case, mode_id))


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_is_the_viewers_formula(backend, request):
    sim = request.getfixturevalue("sim") if backend == "cuda-sim" else None
    x = CASES["real_ct_crop"]
    np.testing.assert_array_equal(run(backend, "real_ct_crop", "max", sim),
                                  (x / x.max()).astype(np.float32))


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_all_zero_slice_gives_zeros(backend, request):
    sim = request.getfixturevalue("sim") if backend == "cuda-sim" else None
    out = run(backend, "zero_slice", "max", sim)
    assert np.all(out[1] == 0) and not np.isnan(out).any()
    assert out[0].max() == 1.0 and out[2].max() == 1.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_uint16_max_maps_to_one(backend, request):
    sim = request.getfixturevalue("sim") if backend == "cuda-sim" else None
    assert np.all(run(backend, "uint16_max", "max", sim) == 1.0)
    assert np.all(run(backend, "uint16_max", "fixed", sim) == 1.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_hu_of_constant_water(backend, request):
    sim = request.getfixturevalue("sim") if backend == "cuda-sim" else None
    assert np.all(run(backend, "constant", "hu", sim) == 0.0)


def test_window_preset_values():
    raw = np.array([[1024 - 1350, 1024 - 600, 1024 + 150, 0, 5000]], dtype=np.int16)
    out = normalize(raw, "window", units="raw", window="lung")
    np.testing.assert_array_equal(out, np.array([[0.0, 0.5, 1.0, 326 / 1500, 1.0]], np.float32))
    med = normalize(np.array([[1024 - 160, 1024 + 40]], np.uint16), "window", window="mediastinum")
    np.testing.assert_array_equal(med, np.array([[0.0, 0.5]], np.float32))


def test_fixed_default_keeps_16_bits():
    raw = np.array([[4095, 4096, 5000]], dtype=np.uint16)
    out = normalize(raw, "fixed")
    assert out.max() < 1.0 and len(np.unique(out)) == 3


@pytest.mark.parametrize("bad", [np.float32, np.float64, np.bool_])
def test_rejects_non_integer_dtype(bad):
    with pytest.raises(TypeError, match=np.dtype(bad).name):
        normalize(np.zeros((4, 4), bad), "max")


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"mode": "maxx"}, ValueError, "'maxx'"),
    ({"mode": "fixed", "constant": 0}, ValueError, "constant"),
    ({"mode": "fixed", "constant": math.inf}, ValueError, "inf"),
    ({"mode": "max", "constant": 2.0}, TypeError, "constant"),
    ({"mode": "hu", "slope": -1.0}, ValueError, "slope"),
    ({"mode": "window", "window": "bone"}, ValueError, "'bone'"),
    ({"mode": "window"}, TypeError, "center"),
    ({"mode": "window", "window": "lung", "center": 10}, TypeError, "not both"),
    ({"mode": "window", "center": 0, "width": 0}, ValueError, "width"),
    ({"mode": "zscore"}, TypeError, "moments"),
    ({"mode": "zscore", "mean": 1.0, "std": 0.0}, ValueError, "std"),
    ({"mode": "zscore", "moments": RunningMoments()}, ValueError, "empty"),
    ({"mode": "max", "method": "fast"}, ValueError, "'fast'"),
])
def test_rejects_bad_options(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        normalize(np.zeros((2, 4, 4), np.uint16), **kwargs)


@pytest.mark.parametrize("shape", [(4,), (1, 2, 4, 4)])
def test_rejects_bad_ndim(shape):
    with pytest.raises(ValueError, match=str(shape).replace("(", r"\(").replace(")", r"\)")):
        normalize(np.zeros(shape, np.uint16), "max")


def test_rejects_non_arrays():
    with pytest.raises(TypeError, match="list"):
        normalize([[1, 2]], "max")


def test_dask_stays_lazy_with_float32_meta():
    x = da.from_array(CASES["random"], chunks=(1, 8, 8))
    out = normalize(x, "window", window="lung")
    assert isinstance(out, da.Array) and out.dtype == np.float32
    assert out.chunks[0] == (1, 1) and isinstance(out._meta, np.ndarray)


def test_cupy_arrays_stay_on_device():
    cp = pytest.importorskip("cupy")
    try:
        x = cp.asarray(CASES["ct_like"])
    except Exception as err:  # cupy installed but no usable GPU
        pytest.skip(f"no CUDA device: {err}")
    for mode_id, (mode, opts) in MODES.items():
        out = normalize(x, mode, **opts)
        assert isinstance(out, cp.ndarray) and out.dtype == cp.float32
        want = run("reference", "ct_like", mode_id)
        if mode_id == "hu_scaled":  # NVVM may fuse x * slope + intercept into one FMA
            np.testing.assert_array_max_ulp(cp.asnumpy(out), want, maxulp=1)
        else:
            np.testing.assert_array_equal(cp.asnumpy(out), want)


# --- RunningMoments -------------------------------------------------------------------


def _batches(offset: float, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [offset + rng.normal(0, 1 + i, size=(rng.integers(1, 50), 7)) for i in range(12)]


@pytest.mark.parametrize("offset", [0.0, 1e4, 1e9])
def test_moments_match_float64_numpy_over_concatenation(offset):
    batches = _batches(offset)
    m = RunningMoments()
    for b in batches:
        m.update(b)
    allv = np.concatenate([b.ravel() for b in batches])
    assert m.count == allv.size
    assert m.mean == pytest.approx(allv.mean(), rel=1e-15, abs=1e-12)
    assert m.var == pytest.approx(allv.var(), rel=1e-9)
    assert m.std == pytest.approx(allv.std(), rel=1e-9)


def test_moments_merge_equals_one_pass():
    batches = _batches(1e9, seed=3)
    parts = [RunningMoments().update(b) for b in batches]
    while len(parts) > 1:  # pairwise tree, as dask tasks would combine them
        parts = [parts[i].merge(parts[i + 1]) if i + 1 < len(parts) else parts[i]
                 for i in range(0, len(parts), 2)]
    allv = np.concatenate([b.ravel() for b in batches])
    assert parts[0].count == allv.size
    assert parts[0].var == pytest.approx(allv.var(), rel=1e-9)
    assert parts[0].mean == pytest.approx(allv.mean(), rel=1e-15)


def test_moments_merge_with_empty_and_dict_round_trip():
    m = RunningMoments().update(CASES["random"])
    assert m.merge(RunningMoments()).to_dict() == m.to_dict()
    assert RunningMoments().merge(m).to_dict() == m.to_dict()
    back = RunningMoments.from_dict(json.loads(json.dumps(m.to_dict())))
    assert back.to_dict() == m.to_dict()


def test_moments_empty_is_nan():
    m = RunningMoments()
    assert m.count == 0 and math.isnan(m.mean) and math.isnan(m.var)


def test_moments_of_dask_array():
    x = CASES["ct_like"]
    m = RunningMoments().update(da.from_array(x, chunks=(1, 16, 32)))
    assert m.count == x.size
    assert m.mean == pytest.approx(x.mean(dtype=np.float64), rel=1e-14)
    assert m.std == pytest.approx(x.std(dtype=np.float64), rel=1e-12)


def test_moments_reject_bad_input():
    with pytest.raises(TypeError, match="complex128"):
        RunningMoments().update(np.zeros(3, np.complex128))
    with pytest.raises(TypeError, match="dict"):
        RunningMoments().merge({})


def test_zscore_with_moments_equals_formula():
    x = CASES["ct_like"]
    m = RunningMoments().update(x)
    out = normalize(x, "zscore", moments=m)
    np.testing.assert_array_equal(out, ((x.astype(np.float64) - m.mean) / m.std).astype(np.float32))
    assert abs(float(out.astype(np.float64).mean())) < 1e-5
    d = dask.compute(normalize(da.from_array(x, chunks=1), "zscore", moments=m))[0]
    np.testing.assert_array_equal(d, out)
