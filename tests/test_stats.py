"""hu_stats() and its pandas aggregates: every backend against the numpy reference, plus behaviours."""
from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import scipy.stats

import kernel_cases as kc
from ctengine.features.aggregate import SERIES_COLUMNS, SLICE_COLUMNS, aggregate_patient, aggregate_series, stats_to_frame
from ctengine.kernels.stats import STAT_COLUMNS, hu_hist_edges, hu_stats

BACKENDS = ["reference", "cpu", "dask", "cuda-sim"]
# bit-identical on every backend: counts, order statistics, class fractions, histograms
EXACT = ("count", "area_mm2", "min", "max", "p10", "p25", "p50", "p75", "p90", "iqr",
         "frac_emphysema", "frac_aerated", "frac_ground_glass", "frac_consolidation",
         "opacity_pct", "histogram")
# sums in another order: within 1e-9 relative (the contract is 1e-6)
CLOSE = ("mean", "std", "mad", "skewness", "kurtosis", "entropy", "uniformity")
SPACING = (0.7, 0.65)


def _edges_case() -> dict:
    # slope 1/8: raw 153 * i lands exactly on fixed-histogram edge i (19.125 HU apart)
    raw = np.array([[[0, 152, 153, 154, 153 * 63, 153 * 64, 153 * 64 + 1, 153 * 70]]], np.uint16)
    return {"x": raw, "mask": np.ones_like(raw, np.uint8), "slope": 0.125, "intercept": -1024.0}


def _classes_case() -> dict:
    hu = np.array([-1024, -951, -950, -701, -700, -301, -300, 49, 50, 51, 3000])
    raw = (hu + 1024).astype(np.uint16)[None, None]
    return {"x": raw, "mask": np.ones_like(raw, np.uint8), "slope": 1.0, "intercept": -1024.0}


def _cases() -> dict[str, dict]:
    rng = np.random.default_rng(0)

    def case(x, mask, slope=1.0, intercept=-1024.0):
        return {"x": x, "mask": mask, "slope": slope, "intercept": intercept}

    x = kc.random_raw((3, 24, 24), seed=1)
    single = np.zeros((2, 8, 8), np.uint8)
    single[0, 3, 5] = 1
    ct, ct_mask = kc.ct_phantom(3, 48, seed=2)
    real = kc.real_ct_raw()[16:64, 16:64]
    two = np.zeros((1, 6, 6), np.uint8)
    two[0, :2] = 1
    return {
        "random": case(x, rng.integers(0, 3, x.shape).astype(np.uint8)),
        "random_full_range": case(kc.random_raw((2, 12, 12), high=65536, seed=3), np.ones((2, 12, 12), np.uint8)),
        "empty_mask": case(x[:2], np.zeros((2, 24, 24), np.uint8)),
        "single_pixel": case(x[:2, :8, :8], single),
        "constant": case(np.full((2, 8, 8), 1024, np.uint16), np.ones((2, 8, 8), np.uint8)),
        "all_zero": case(np.zeros((1, 8, 8), np.uint16), np.ones((1, 8, 8), np.uint8)),
        "uint16_max": case(np.full((1, 8, 8), 65535, np.uint16), np.ones((1, 8, 8), np.uint8)),
        "two_values": case(np.where(np.arange(36).reshape(1, 6, 6) % 2, 100, 900).astype(np.uint16), two),
        "ct_like": case(ct, ct_mask),
        "real_ct_2d": case(real, kc.real_ct_mask(real)),
        "bool_mask": case(x[:2], rng.random((2, 24, 24)) < 0.5),
        "int16_hu": case((kc.random_raw((2, 16, 16), high=2000, seed=4) - 1024).astype(np.int16),
                         np.ones((2, 16, 16), np.uint8), 1.0, 0.0),
        "uint8": case(kc.random_raw((2, 16, 16), high=256, seed=5, dtype=np.uint8),
                      rng.integers(0, 2, (2, 16, 16)).astype(np.uint8), 4.0, -1024.0),
        "scaled": case(x[:2], np.ones((2, 24, 24), np.uint8), 0.37, -1000.25),
        "histogram_edges": _edges_case(),
        "density_classes": _classes_case(),
    }


CASES = _cases()
_real = kc.real_ct_raw()
BIG_CASES = {"ct_like_512": dict(zip(("x", "mask"), kc.ct_phantom(3, 512, seed=6)), slope=1.0, intercept=-1024.0),
             "real_ct": {"x": _real, "mask": kc.real_ct_mask(_real), "slope": 1.0, "intercept": -1024.0}}


@pytest.fixture(scope="module")
def sim() -> dict:
    return kc.run_cudasim("stats", CASES)


def run(backend: str, case: str, request=None) -> dict[str, np.ndarray]:
    c = CASES[case] if case in CASES else BIG_CASES[case]
    kw = {"spacing": SPACING, "units": "raw", "slope": c["slope"], "intercept": c["intercept"]}
    if backend == "reference":
        return hu_stats(c["x"], c["mask"], method="reference", **kw)
    if backend == "cpu":
        return hu_stats(c["x"], c["mask"], **kw)
    if backend == "dask":
        x = c["x"]
        chunks = (1, max(1, x.shape[-2] // 2), -1) if x.ndim == 3 else (max(1, x.shape[0] // 2), -1)
        out = hu_stats(da.from_array(x, chunks=chunks), da.from_array(c["mask"], chunks=chunks), **kw)
        assert all(isinstance(v, da.Array) for v in out.values())
        return dask.compute(out)[0]
    counts, stats, hists = request.getfixturevalue("sim")[case]
    ref = hu_stats(c["x"], c["mask"], method="reference", **kw)  # only for area_mm2 and shapes
    out = {"count": counts, "area_mm2": counts * SPACING[0] * SPACING[1]}
    out.update({k: stats[:, i] for i, k in enumerate(STAT_COLUMNS[2:])})
    out["histogram"] = hists
    return {k: v.reshape(np.shape(ref[k])) for k, v in out.items()}


def assert_conforms(got: dict, want: dict, *, also_close: tuple[str, ...] = ()) -> None:
    assert set(got) == set(want) == {*STAT_COLUMNS, "histogram"}
    for k in EXACT:
        assert got[k].dtype == want[k].dtype, k
        if k not in also_close:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    for k in CLOSE + also_close:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-9, atol=1e-9, err_msg=k)
    assert got["count"].dtype == np.int64 and got["histogram"].dtype == np.int64


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("backend", ["cpu", "dask", "cuda-sim"])
def test_conforms_to_reference(backend, case, request):
    assert_conforms(run(backend, case, request), run("reference", case))


@pytest.mark.parametrize("case", BIG_CASES)
@pytest.mark.parametrize("backend", ["cpu", "dask"])
def test_conforms_on_full_size_slices(backend, case):
    assert_conforms(run(backend, case), run("reference", case))


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_mask_gives_count_zero_and_nan(backend, request):
    out = run(backend, "empty_mask", request)
    assert out["count"].tolist() == [0, 0] and out["area_mm2"].tolist() == [0.0, 0.0]
    for k in STAT_COLUMNS[2:]:
        assert np.isnan(out[k]).all(), k
    assert not out["histogram"].any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_pixel(backend, request):
    out = run(backend, "single_pixel", request)
    hu = float(CASES["single_pixel"]["x"][0, 3, 5]) - 1024.0
    assert out["count"].tolist() == [1, 0]
    for k in ("mean", "min", "max", "p10", "p50", "p90"):
        assert out[k][0] == hu, k
    assert out["std"][0] == 0 and out["skewness"][0] == 0 and out["uniformity"][0] == 1.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_flat_region_moments_are_zero(backend, request):
    out = run(backend, "constant", request)
    np.testing.assert_array_equal(out["mean"], [0.0, 0.0])
    for k in ("std", "mad", "skewness", "kurtosis", "iqr"):
        np.testing.assert_array_equal(out[k], [0.0, 0.0], err_msg=k)
    np.testing.assert_allclose(out["entropy"], 0.0, atol=1e-15)
    np.testing.assert_array_equal(out["frac_consolidation"], [1.0, 1.0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_histogram_edges_are_half_open(backend, request):
    out = run(backend, "histogram_edges", request)
    # HU: -1024 (bin 0), -1005 (bin 0), -1004.875 (edge 1: bin 1), -1004.75 (bin 1),
    # edge 63 (bin 63), 200 (last edge: bin 63, closed), 200.125 and 314.75 (outside)
    want = np.zeros(64, np.int64)
    want[0], want[1], want[63] = 2, 2, 2
    np.testing.assert_array_equal(out["histogram"][0], want)
    assert out["count"][0] == 8


@pytest.mark.parametrize("backend", BACKENDS)
def test_density_classes_are_half_open(backend, request):
    out = run(backend, "density_classes", request)
    # HU -1024 -951 | -950 -701 | -700 -301 | -300 49 | 50 51 3000
    assert out["frac_emphysema"][0] == 2 / 11 and out["frac_aerated"][0] == 2 / 11
    assert out["frac_ground_glass"][0] == 2 / 11 and out["frac_consolidation"][0] == 2 / 11
    assert out["opacity_pct"][0] == 100.0 * 4 / 11


@pytest.mark.parametrize("backend", BACKENDS)
def test_values_outside_the_histogram_are_not_counted(backend, request):
    out = run(backend, "uint16_max", request)
    assert out["count"][0] == 64 and not out["histogram"].any()
    assert out["max"][0] == 65535 - 1024 and out["opacity_pct"][0] == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_values_percentiles_interpolate(backend, request):
    out = run(backend, "two_values", request)
    hu = np.sort(np.where(np.arange(12) % 2, 100, 900) - 1024.0)
    for q in (10, 25, 50, 75, 90):
        assert out[f"p{q}"][0] == np.percentile(hu, q)


@pytest.mark.parametrize("case", ["random", "ct_like", "scaled", "real_ct_2d"])
def test_reference_matches_scipy_and_pyradiomics_formulas(case):
    c = CASES[case]
    x, m = (c["x"][None], c["mask"][None]) if c["x"].ndim == 2 else (c["x"], c["mask"])
    out = hu_stats(x, m, slope=c["slope"], intercept=c["intercept"], method="reference")
    for k in range(x.shape[0]):
        hu = x[k][m[k] > 0].astype(np.float64) * c["slope"] + c["intercept"]
        assert out["skewness"][k] == pytest.approx(scipy.stats.skew(hu), rel=1e-10)
        assert out["kurtosis"][k] == pytest.approx(scipy.stats.kurtosis(hu, fisher=False), rel=1e-10)
        assert out["iqr"][k] == pytest.approx(scipy.stats.iqr(hu), rel=1e-12)
        assert out["std"][k] == pytest.approx(np.std(hu), rel=1e-12)
        # pyradiomics discretisation: edges from min - min % 25 in steps of 25, numpy.digitize
        lo = hu.min() - hu.min() % 25
        edges = np.arange(lo, hu.max() + 50, 25.0)
        p = np.bincount(np.digitize(hu, edges)) / hu.size
        p = p[p > 0]
        assert out["entropy"][k] == pytest.approx(-np.sum(p * np.log2(p + np.spacing(1))), rel=1e-12)
        assert out["uniformity"][k] == pytest.approx(np.sum(p ** 2), rel=1e-12)


def test_histogram_edges_helper():
    e = hu_hist_edges()
    assert e.shape == (65,) and e[0] == -1024.0 and e[-1] == 200.0 and e[1] - e[0] == 19.125


def test_single_slice_returns_scalars():
    out = run("cpu", "real_ct_2d")
    assert out["mean"].shape == () and out["histogram"].shape == (64,)


def test_no_spacing_gives_nan_area():
    c = CASES["random"]
    out = hu_stats(c["x"], c["mask"])
    assert np.isnan(out["area_mm2"]).all() and (out["count"] > 0).all()


def test_numpy_mask_with_dask_image():
    c = CASES["ct_like"]
    out = hu_stats(da.from_array(c["x"], chunks=(1, 48, 48)), c["mask"], spacing=0.7)
    assert isinstance(out["mean"], da.Array)
    np.testing.assert_array_equal(out["count"].compute(), hu_stats(c["x"], c["mask"])["count"])


@pytest.mark.parametrize("x_dtype, m_dtype, match", [
    (np.float32, np.uint8, "float32"), (np.uint32, np.uint8, "uint32"),
    (np.uint16, np.int8, "int8"), (np.uint16, np.uint16, "uint16"),
])
def test_rejects_bad_dtypes(x_dtype, m_dtype, match):
    with pytest.raises(TypeError, match=match):
        hu_stats(np.zeros((2, 4, 4), x_dtype), np.zeros((2, 4, 4), m_dtype))


@pytest.mark.parametrize("kwargs, match", [
    ({"slope": 0.0}, "slope"), ({"slope": -1.0}, "slope"), ({"intercept": float("inf")}, "intercept"),
    ({"spacing": (0.7, -1.0)}, "spacing"), ({"method": "gpu"}, "'gpu'"),
])
def test_rejects_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        hu_stats(np.zeros((2, 4, 4), np.uint16), np.zeros((2, 4, 4), np.uint8), **kwargs)


def test_rejects_shape_mismatch_and_kind_mismatch():
    with pytest.raises(ValueError, match=r"\(2, 4, 4\) vs \(2, 4, 5\)"):
        hu_stats(np.zeros((2, 4, 4), np.uint16), np.zeros((2, 4, 5), np.uint8))
    with pytest.raises(TypeError, match="same kind"):
        hu_stats(np.zeros((2, 4, 4), np.uint16), da.zeros((2, 4, 4), np.uint8))


def test_cupy_stats_on_device():
    cp = pytest.importorskip("cupy")
    try:
        x, m = cp.asarray(CASES["ct_like"]["x"]), cp.asarray(CASES["ct_like"]["mask"])
    except Exception as err:  # cupy installed but no usable GPU
        pytest.skip(f"no CUDA device: {err}")
    out = hu_stats(x, m, spacing=SPACING)
    assert all(isinstance(v, cp.ndarray) for v in out.values())
    # on a real GPU, NVVM fuses the percentile interpolation a + (b - a) * g into one FMA
    pct = ("p10", "p25", "p50", "p75", "p90", "iqr")
    assert_conforms({k: cp.asnumpy(v) for k, v in out.items()}, run("reference", "ct_like"), also_close=pct)


# --- pandas helpers -------------------------------------------------------------------


def test_stats_frame_columns():
    frame = stats_to_frame(run("cpu", "ct_like"))
    assert list(frame.columns) == list(SLICE_COLUMNS)
    assert list(frame.columns[:3]) == ["voxels", "area_mm2", "mean_hu"] and frame.columns[-1] == "hist_63_voxels"
    stats = run("cpu", "ct_like")
    for key, column in (("count", "voxels"), ("p50", "p50_hu"), ("entropy", "entropy_bits")):
        np.testing.assert_array_equal(frame[column], stats[key])
    np.testing.assert_array_equal(frame["hist_07_voxels"], stats["histogram"][:, 7])
    assert len(frame) == 3 and frame["voxels"].dtype == np.int64
    assert len(stats_to_frame(run("cpu", "real_ct_2d"))) == 1
    with pytest.raises(TypeError, match="numpy"):
        stats_to_frame(hu_stats(da.from_array(CASES["random"]["x"]), CASES["random"]["mask"]))


def test_aggregate_series_equals_statistics_of_all_voxels():
    c = BIG_CASES["ct_like_512"]
    frame = stats_to_frame(hu_stats(c["x"], c["mask"], spacing=SPACING))
    agg = aggregate_series(frame, thickness_mm=5.0).iloc[0]
    hu = c["x"][c["mask"] > 0].astype(np.float64) - 1024.0
    assert agg["voxels"] == hu.size and agg["n_slices"] == 3
    assert agg["lung_volume_l"] == pytest.approx(hu.size * SPACING[0] * SPACING[1] * 5.0 / 1e6, rel=1e-12)
    assert agg["mean_hu"] == pytest.approx(hu.mean(), rel=1e-12)
    assert agg["std_hu"] == pytest.approx(hu.std(), rel=1e-9)
    assert agg["min_hu"] == hu.min() and agg["max_hu"] == hu.max()
    opac = np.count_nonzero((hu >= -700) & (hu < 50)) / hu.size * 100
    assert agg["opacity_pct"] == pytest.approx(opac, rel=1e-12)
    assert agg["frac_emphysema"] == pytest.approx(np.count_nonzero(hu < -950) / hu.size, abs=1e-15)


def test_aggregate_series_without_lung_or_thickness():
    frame = stats_to_frame(run("cpu", "empty_mask"))
    agg = aggregate_series(frame).iloc[0]
    assert agg["voxels"] == 0 and np.isnan(agg["mean_hu"]) and np.isnan(agg["lung_volume_l"])
    with pytest.raises(ValueError, match="-2"):
        aggregate_series(frame, thickness_mm=-2)


def _slices_of_two_patients() -> pd.DataFrame:
    parts = []
    for patient, series, case, thick in (("p1", "SR_3", "random", 1.5), ("p1", "SR_2", "ct_like", 5.0),
                                         ("p2", "SR_4", "constant", 8.0)):
        f = stats_to_frame(run("cpu", case))
        parts.append(f.assign(patient=patient, series=series, thickness_mm=thick))
    return pd.concat(parts, ignore_index=True)


def test_aggregate_series_one_row_per_series():
    slices = _slices_of_two_patients()
    table = aggregate_series(slices)  # thickness from the thickness_mm column
    assert list(table.columns) == ["patient", "series", *SERIES_COLUMNS]
    assert list(zip(table["patient"], table["series"])) == [("p1", "SR_2"), ("p1", "SR_3"), ("p2", "SR_4")]
    one = aggregate_series(slices[slices["series"] == "SR_3"].drop(columns=["patient", "series"]),
                           thickness_mm=1.5).iloc[0]
    row = table.iloc[1]
    assert row["lung_volume_l"] == one["lung_volume_l"] and row["mean_hu"] == one["mean_hu"]
    keyed = pd.Series({("p1", "SR_2"): 5.0, ("p1", "SR_3"): 1.5, ("p2", "SR_4"): 8.0})
    pd.testing.assert_frame_equal(aggregate_series(slices.drop(columns="thickness_mm"), thickness_mm=keyed),
                                  table)
    bad = slices.copy()
    bad.loc[0, "thickness_mm"] = 2.0
    with pytest.raises(ValueError, match="varies"):
        aggregate_series(bad)


def test_aggregate_patient_takes_the_preferred_series():
    series_table = aggregate_series(_slices_of_two_patients())
    patients = aggregate_patient(series_table, labels=pd.Series({"p1": "covid", "p2": "normal"}))
    assert list(patients["patient"]) == ["p1", "p2"] and list(patients["label"]) == ["covid", "normal"]
    assert list(patients["series"]) == ["SR_2", "SR_4"] and list(patients["n_series"]) == [2, 1]
    sr2 = series_table[(series_table["patient"] == "p1") & (series_table["series"] == "SR_2")].iloc[0]
    assert patients.iloc[0]["lung_volume_l"] == sr2["lung_volume_l"]
    assert aggregate_patient(series_table, prefer=("SR_3",)).iloc[0]["series"] == "SR_3"
    with pytest.raises(ValueError, match="'series'"):
        aggregate_patient(series_table.drop(columns="series"))


@pytest.mark.parametrize("layout", ["words", "strided", "odd_width"])
def test_sparse_masks_give_the_reference_whatever_their_layout(layout):
    rng = np.random.default_rng(21)
    x = kc.random_raw((3, 40, 72), high=3000, seed=21)
    mask = (rng.random((3, 40, 72)) < 0.03).astype(np.uint8)  # most 8-pixel words empty
    mask[1, 5, 8:16] = 1  # one word full
    if layout == "strided":
        x, mask = x[:, :, ::2], mask[:, :, ::2]
    elif layout == "odd_width":
        x, mask = x[:, :, :67], mask[:, :, :67]
    kw = {"spacing": SPACING, "units": "raw", "slope": 1.0, "intercept": -1024.0}
    assert_conforms(hu_stats(x, mask, **kw), hu_stats(x, mask, method="reference", **kw))
