"""Synthetic COVID-CTset generator: phantom, painter kernels, cohort plan and written layout."""
from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import DATASET_CSVS
import tifffile
import zarr
from scipy import ndimage

from ctengine.constants import (GROUPS_COVID, GROUPS_NORMAL, HU_OFFSET, SELECTION_COLS, SELECTION_DARK_RAW,
                                SELECTION_ROWS, SERIES)
from ctengine.synth import plan_cohort, render_series, write_cohort
from ctengine.synth import _cpu, _reference
from ctengine.synth._anatomy import make_anatomy
from ctengine.synth._io import tiff_bytes, write_mask_array, write_tiff
from ctengine.synth._reference import (BAND, CAPSULE, CLIP, ELLIPSE, KEEP, MAX, NCOL, SET, ADD)
from ctengine.synth._scene import Geometry, background_prims, slice_prims
from ctengine.synth.cohort import DETAIL_COLUMNS, META_ATTRS, REAL_SLICES, load_reference, reference_table
from ctengine.synth.phantom import _fov, _noise_bank, _texture_bank, noise_sigma

SHARED = DATASET_CSVS
SMALL = (64, 64)


def _hu(raw: np.ndarray) -> np.ndarray:
    return raw.astype(np.float64) - HU_OFFSET


# ---------------------------------------------------------------- painter kernels

def _random_prims(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    p = np.zeros((n, NCOL))
    p[:, 0] = rng.choice([ELLIPSE, CAPSULE, BAND], n, p=[0.6, 0.3, 0.1])
    p[:, 1] = rng.uniform(-10, w + 10, n)
    p[:, 2] = rng.uniform(-10, h + 10, n)
    ell, cap, band = p[:, 0] == ELLIPSE, p[:, 0] == CAPSULE, p[:, 0] == BAND
    rot = rng.uniform(0, np.pi, n)
    p[ell, 3], p[ell, 4] = rng.uniform(0.3, 30, ell.sum()), rng.uniform(0.3, 30, ell.sum())
    p[ell, 5], p[ell, 6] = np.cos(rot[ell]), np.sin(rot[ell])
    p[cap, 3], p[cap, 4] = rng.uniform(-10, w + 10, cap.sum()), rng.uniform(-10, h + 10, cap.sum())
    p[cap, 5] = rng.uniform(0.3, 6, cap.sum())
    p[band, 2] = rng.uniform(-200, 0, band.sum())
    p[band, 3] = rng.uniform(100, 220, band.sum())
    p[band, 4] = p[band, 3] + rng.uniform(0.5, 20, band.sum())
    p[band, 5] = rng.uniform(5, 60, band.sum())
    p[:, 7] = rng.uniform(-1000, 2000, n)
    p[:, 8] = rng.choice([SET, MAX, ADD], n)
    p[:, CLIP] = np.where(rng.random(n) < 0.5, 0, rng.integers(1, 16, n))
    p[:, 10] = np.where(rng.random(n) < 0.3, KEEP, rng.integers(0, 4, n))
    p[:, 11] = rng.random(n) < 0.2
    p[:, 12] = np.where(ell & (rng.random(n) < 0.5), rng.uniform(-0.5, 0.5, n), 0.0)
    p[:, 13] = np.where(rng.random(n) < 0.5, rng.uniform(0, 80, n), 0.0)
    p[:, 14] = np.where(rng.random(n) < 0.3, rng.uniform(-5, 5, n), 0.0)
    p[:, 15] = np.where(rng.random(n) < 0.3, rng.uniform(0.1, 1.0, n), 1.0)
    p[:, 16] = rng.uniform(0.3, 2.0, n)
    p[:, 17], p[:, 18] = rng.integers(0, h, n), rng.integers(0, w, n)
    holed = ell & (rng.random(n) < 0.5)
    p[holed, 19] = p[holed, 1] + rng.uniform(-4, 4, holed.sum())
    p[holed, 20] = p[holed, 2] + rng.uniform(-4, 4, holed.sum())
    p[holed, 21] = p[holed, 3] * rng.uniform(0.2, 1.1, holed.sum())
    p[holed, 22] = p[holed, 4] * rng.uniform(0.2, 1.1, holed.sum())
    return p


def _canvases(h: int, w: int, rng: np.random.Generator):
    return (rng.uniform(-1000, 100, (h, w)).astype(np.float32), rng.integers(0, 4, (h, w)).astype(np.uint8),
            np.zeros((h, w), np.uint8))


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_paint_matches_reference_on_random_primitives(seed):
    rng = np.random.default_rng(seed)
    h, w = 48, 56
    prims = _random_prims(rng, 60, h, w)
    tex = _texture_bank(h, w)
    a = _canvases(h, w, np.random.default_rng(seed + 10))
    b = tuple(x.copy() for x in a)
    _cpu.paint(*a, prims, tex)
    _reference.paint(*b, prims, tex)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_paint_and_finish_match_reference_on_phantom_slices():
    g = Geometry(96, 96, 0.75 * 512 / 96)
    an = make_anatomy(5, covid=True, body_width_mm=330.0, lesion_burden=0.8)
    tex = _texture_bank(96, 96)
    noise = _noise_bank(96, 96, True)
    fov = _fov(96, 96)
    for z in np.linspace(5.0, an.length - 5.0, 9):
        prims = np.concatenate([background_prims(an, g), slice_prims(an, g, z - 3.0, z + 3.0)])
        outs = []
        for impl in (_cpu, _reference):
            hu = np.full((96, 96), -1000.0, np.float32)
            lab, les = np.zeros((96, 96), np.uint8), np.zeros((96, 96), np.uint8)
            impl.paint(hu, lab, les, prims, tex)
            raw, lung = np.empty((96, 96), np.uint16), np.empty((96, 96), np.uint8)
            painted = (hu.copy(), lab.copy())
            bg_hu, bg_lab = np.full((96, 96), -990.0, np.float32), np.ones((96, 96), np.uint8)
            impl.finish(hu, lab, les, fov, noise, 40.0, 7, 11, HU_OFFSET + 0.5, 3, 4, 4095, raw, lung, bg_hu, bg_lab)
            assert np.array_equal(hu, bg_hu) and np.array_equal(lab, bg_lab)
            outs.append((*painted, les, raw, lung))
        for x, y in zip(*outs):
            np.testing.assert_array_equal(x, y)


def test_render_backends_agree():
    kw = dict(n_slices=5, covid=True, seed=3, shape=SMALL, kernel="B70s", lesion_burden=0.7)
    a, b = render_series(**kw), render_series(**kw, backend="reference")
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


# ---------------------------------------------------------------- phantom

@pytest.fixture(scope="module")
def covid_series():
    return render_series(n_slices=24, covid=True, seed=11, shape=(128, 128), kernel="B70s", thickness_mm=1.5,
                         lesion_burden=0.6)


def test_render_shapes_and_dtypes(covid_series):
    raw, lung, lesion = covid_series
    assert raw.shape == lung.shape == lesion.shape == (24, 128, 128)
    assert raw.dtype == np.uint16 and lung.dtype == np.uint8 and lesion.dtype == np.uint8
    assert set(np.unique(lung)) == {0, 1, 2} and set(np.unique(lesion)) == {0, 1}
    assert raw.max() <= 4095


def test_render_is_deterministic():
    kw = dict(n_slices=6, covid=True, shape=SMALL)
    a, b, c = render_series(seed=4, **kw), render_series(seed=4, **kw), render_series(seed=5, **kw)
    for x, y in zip(a, b):
        assert x.tobytes() == y.tobytes()
    assert a.raw.tobytes() != c.raw.tobytes()
    # same anatomy seed, other noise seed: same truth, other pixels
    d = render_series(seed=6, anatomy_seed=4, **kw)
    assert np.array_equal(d.lung, a.lung) and not np.array_equal(d.raw, a.raw)


def test_render_into_given_arrays():
    kw = dict(n_slices=4, covid=True, seed=9, shape=SMALL)
    bufs = render_series(**kw)
    dirty = tuple(np.full_like(a, 7) for a in bufs)
    again = render_series(**kw, out=dirty)
    assert all(x is y for x, y in zip(again, dirty))
    for x, y in zip(again, bufs):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="out arrays"):
        render_series(**kw, out=tuple(a[:2] for a in bufs))


def test_outside_fov_is_exactly_zero_and_air_and_lung_reach_zero(covid_series):
    raw, lung, _ = covid_series
    fov = _fov(128, 128)
    assert (raw[:, ~fov] == 0).all()
    inside = raw[:, fov]
    assert (inside == 0).any(), "noisy air inside the field of view must reach raw 0"
    assert (inside > 0).mean() > 0.6, "raw 0 is not a field-of-view mask"
    assert (raw[lung > 0] == 0).any(), "with a sharp thin kernel lung pixels reach 0 too"
    air = raw[:, 2:20, 50:78][:, fov[2:20, 50:78]]
    assert abs(np.median(_hu(air)) + 1000) < 60


def test_lesion_hu_ranges():
    ph = render_series(n_slices=20, covid=True, seed=2, shape=(128, 128), noise_scale=0.0, lesion_burden=0.9)
    hu = _hu(ph.raw)
    les = ph.lesion > 0
    assert les.sum() > 200
    v = hu[les]
    # ground glass -700..-300 and consolidation -300..+50; anti-aliased rims blend with lung
    assert ((v >= -700) & (v <= 50)).mean() > 0.9
    assert v.min() >= -860 and v.max() <= 60
    assert (v < -300).any(), "ground glass expected"
    lung_only = hu[(ph.lung > 0) & ~les & ~(ndimage.binary_dilation(les, iterations=2))]
    assert -900 < np.median(lung_only) < -780


def test_lesions_are_bilateral_and_touch_the_pleura():
    an = make_anatomy(8, covid=True, body_width_mm=330.0, lesion_burden=0.5)
    assert set(an.lesions.side.tolist()) == {0, 1}
    ph = render_series(n_slices=30, covid=True, seed=8, body_width_mm=330.0, lesion_burden=0.5, shape=(128, 128))
    lesion, lung = ph.lesion > 0, ph.lung > 0
    assert (lesion <= lung).all()
    # some lesion pixel sits on the lung boundary (subpleural)
    edge = lung & ~np.stack([ndimage.binary_erosion(s) for s in lung])
    assert (lesion & edge).any()


def test_normal_series_has_no_lesions():
    ph = render_series(n_slices=10, covid=False, seed=1, shape=SMALL)
    assert ph.lesion.sum() == 0 and ph.lung.sum() > 0


def test_truth_lungs_inside_body_and_right_lung_on_image_left():
    ph = render_series(n_slices=16, covid=True, seed=7, shape=(128, 128), noise_scale=0.0)
    hu = _hu(ph.raw)
    for k in range(16):
        body = ndimage.binary_fill_holes(hu[k] > -400)
        assert ((ph.lung[k] > 0) <= body).all()
    ys, xs = np.nonzero(ph.lung.max(axis=0) == 1)
    yl, xl = np.nonzero(ph.lung.max(axis=0) == 2)
    assert xs.mean() < 64 < xl.mean()


@pytest.mark.parametrize("n, seed", [(12, 0), (40, 1), (90, 2)])
def test_lungs_closed_at_both_ends(n, seed):
    ph = render_series(n_slices=n, covid=True, seed=seed, shape=SMALL, thickness_mm=5.0)
    area = (ph.lung > 0).sum(axis=(1, 2))
    assert area[0] == 0 and area[-1] == 0 and area.max() > 0.1 * 64 * 64
    peak = int(np.argmax(area))
    assert 0 < peak < n - 1


def test_selection_region_rejects_both_ends_at_512():
    ph = render_series(n_slices=14, covid=False, seed=3, spacing_mm=0.75, thickness_mm=6.0, kernel="B30s")
    dark = (ph.raw[:, SELECTION_ROWS, SELECTION_COLS] < SELECTION_DARK_RAW).sum(axis=(1, 2))
    keep = dark > (dark.max() - dark.min()) / 1.5
    assert not keep[0] and not keep[-1] and keep.sum() >= 5
    assert dark.max() > 0.4 * 25_000, "open lungs cover much of the selection region"


def test_noise_depends_on_kernel_and_thickness():
    assert noise_sigma("B70s", 5.0) > 2 * noise_sigma("B30s", 5.0)
    assert noise_sigma("B90s", 5.0) > noise_sigma("B70s", 5.0)
    assert noise_sigma("B30s", 1.5) > noise_sigma("B30s", 5.0) > noise_sigma("B30s", 8.0)
    fov = _fov(128, 128)
    win = (slice(4, 20), slice(44, 84))

    def air_std(kernel, th):
        raw = render_series(n_slices=3, covid=False, seed=1, shape=(128, 128), kernel=kernel, thickness_mm=th).raw
        return float(np.std(_hu(raw[:, win[0], win[1]])[:, fov[win]]))
    assert air_std("B70s", 5.0) > 2 * air_std("B30s", 5.0)
    assert air_std("B30s", 1.5) > 1.3 * air_std("B30s", 8.0)


def test_render_rejects_bad_arguments():
    with pytest.raises(ValueError, match="kernel"):
        render_series(n_slices=2, covid=False, seed=0, kernel="B99f", shape=SMALL)
    with pytest.raises(ValueError, match="n_slices"):
        render_series(n_slices=0, covid=False, seed=0, shape=SMALL)
    with pytest.raises(ValueError, match="shape"):
        render_series(n_slices=2, covid=False, seed=0, shape=(8, 8))


# ---------------------------------------------------------------- TIFF writer

@pytest.mark.parametrize("shape", [(512, 512), (64, 48)])
def test_fast_tiff_is_byte_identical_to_tifffile(tmp_path, shape):
    img = np.random.default_rng(0).integers(0, 4096, shape).astype(np.uint16)
    ref = io.BytesIO()
    tifffile.imwrite(ref, img, photometric="minisblack")
    assert tiff_bytes(img) == ref.getvalue()
    write_tiff(tmp_path / "a.tif", img)
    assert (tmp_path / "a.tif").read_bytes() == ref.getvalue()
    with tifffile.TiffFile(tmp_path / "a.tif") as t:
        assert len(t.pages) == 1 and t.pages[0].compression == 1 and t.pages[0].photometric == 1
        np.testing.assert_array_equal(t.asarray(), img)


def test_truth_arrays_read_back_with_zarr(tmp_path):
    rng = np.random.default_rng(1)
    mask = (rng.integers(0, 3, (6, 20, 24)) * (rng.random((6, 20, 24)) < 0.3)).astype(np.uint8)
    mask[[0, 4]] = 0
    assert write_mask_array(tmp_path / "m", mask, attributes={"a": 1}) > 0
    arr = zarr.open_array(tmp_path / "m", mode="r")
    assert arr.chunks == (1, 20, 24) and arr.dtype == np.uint8 and arr.attrs["a"] == 1
    np.testing.assert_array_equal(arr[:], mask)
    assert write_mask_array(tmp_path / "e", np.zeros((3, 8, 8), np.uint8)) == 0
    assert zarr.open_array(tmp_path / "e", mode="r")[:].sum() == 0
    with pytest.raises(ValueError, match="uint8"):
        write_mask_array(tmp_path / "x", mask.astype(np.int16))


# ---------------------------------------------------------------- cohort plan

def test_like_mode_counts_are_exact_at_full_scale():
    plan = plan_cohort(like="covid-ctset", fraction=1.0, seed=0)
    assert len(plan.patients) == 377 and sum(p.covid for p in plan.patients) == 95
    assert plan.slices(True) == REAL_SLICES["covid"] == 15_589
    assert plan.slices(False) == REAL_SLICES["normal"] == 48_260
    assert plan.slices() == 63_849
    assert sum(len(s.groups) == 2 for s in plan.series) == 78
    # thicker series have fewer slices over the same scan
    for p in plan.patients:
        n = {s.thickness_mm: s.n_slices for s in p.series}
        ths = sorted(n)
        assert all(n[a] >= n[b] for a, b in zip(ths, ths[1:]))
    ref = load_reference("covid-ctset")
    det = pd.DataFrame([p.details for p in plan.patients])
    assert det.equals(ref[list(DETAIL_COLUMNS)])
    assert (det == "N/A").sum().sum() == 12


@pytest.mark.parametrize("fraction", [0.05, 0.3, 0.77])
def test_like_mode_fraction_scales_counts_exactly(fraction):
    plan = plan_cohort(like="covid-ctset", fraction=fraction, seed=1)
    nc = sum(p.covid for p in plan.patients)
    nn = len(plan.patients) - nc
    assert nc == max(1, round(fraction * 95)) and nn == max(1, round(fraction * 282))
    assert plan.slices(True) == round(15_589 * nc / 95)
    assert plan.slices(False) == round(48_260 * nn / 282)


def test_patients_mode_plan():
    plan = plan_cohort(patients=8, seed=2)
    assert [p.patient for p in plan.patients] == [f"patient{i}" for i in range(1, 9)]
    assert sum(p.covid for p in plan.patients) == 2
    for p in plan.patients:
        assert [s.series for s in p.series] == list(SERIES)
        allowed = GROUPS_COVID if p.covid else GROUPS_NORMAL
        assert set(p.groups) <= set(allowed)
        assert len({s.anatomy_seed for s in p.series}) == 1 and len({s.seed for s in p.series}) == 3
    assert sum(len(s.groups) == 2 for s in plan.series) == 1
    assert plan_cohort(patients=8, seed=2, slices_per_series=9).slices() == 8 * 3 * 9


@pytest.mark.skipif(not SHARED.is_dir(), reason="real dataset CSVs not present")
def test_bundled_reference_matches_the_real_csvs():
    ref = reference_table(SHARED / "Patient_details.csv", SHARED / "Patients_metadata.csv.gz", SHARED / "all.csv.gz")
    assert ref.equals(load_reference("covid-ctset"))


def test_plan_rejects_bad_arguments():
    with pytest.raises(ValueError, match="exactly one"):
        plan_cohort(patients=3, like="covid-ctset")
    with pytest.raises(ValueError, match="exactly one"):
        plan_cohort()
    with pytest.raises(ValueError, match="fraction"):
        plan_cohort(like="covid-ctset", fraction=0.0)
    with pytest.raises(ValueError, match="like must be"):
        plan_cohort(like="mnist")
    with pytest.raises(ValueError, match="like-mode only"):
        plan_cohort(patients=3, fraction=0.5)
    with pytest.raises(ValueError, match="slices_per_series"):
        plan_cohort(patients=3, slices_per_series=2)


# ---------------------------------------------------------------- written cohort

NAME = re.compile(r"^(?P<group>[a-z0-9]+)_(?P<patient>patient\d+)_(?P<series>SR_[234])_IM(?P<im>\d{5})\.tif$")


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".ctengine-synth.json"}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "out"
    summary = write_cohort(out, patients=5, slices_per_series=14, seed=3, shape=SMALL, workers=1, flat=True,
                           progress=False)
    return out, summary


def test_layout_and_names(cohort):
    out, summary = cohort
    tree = out / "COVID-CTset"
    files = sorted(tree.rglob("*.tif"))
    assert len(files) == summary.files == 5 * 3 * 14 + 14   # one series also under a second group
    for f in files:
        group, patient, series = f.parts[-4:-1]
        assert group in GROUPS_COVID + GROUPS_NORMAL and re.fullmatch(r"patient\d+", patient)
        assert series in SERIES and re.fullmatch(r"IM\d{5}\.tif", f.name)
    for d in {f.parent for f in files}:
        assert sorted(p.name for p in d.iterdir()) == [f"IM{k:05d}.tif" for k in range(1, 15)]
    with tifffile.TiffFile(files[0]) as t:
        page = t.pages[0]
        assert len(t.pages) == 1 and page.shape == SMALL and page.dtype == np.uint16
        assert page.compression == 1 and page.photometric == 1
    assert summary.slices == 5 * 3 * 14 and summary.covid_slices + summary.normal_slices == summary.slices


def test_duplicate_series_are_bit_identical(cohort):
    out, _ = cohort
    by_series: dict[tuple[str, str], list[Path]] = {}
    for d in (out / "COVID-CTset").glob("*/*/SR_*"):
        by_series.setdefault((d.parent.name, d.name), []).append(d)
    dups = [v for v in by_series.values() if len(v) > 1]
    assert len(dups) == 1 and len(dups[0]) == 2
    a, b = dups[0]
    assert _digest(a) == _digest(b)


def test_csv_files(cohort):
    out, summary = cohort
    det = pd.read_csv(out / "Patient_details.csv", dtype=str, keep_default_na=False)
    assert list(det.columns) == list(DETAIL_COLUMNS) and len(det) == 5
    assert det["AGE"].str.fullmatch(r"\d{3}Y").all()
    assert set(det["COVID-19 Infection"]) == {"Positive", "Negative"}
    meta = pd.read_csv(out / "Patients_metadata.csv", dtype=str, keep_default_na=False)
    assert list(meta.columns) == ["Patient ID"] + [f"{s} {a}" for a in META_ATTRS for s in SERIES]
    assert meta["SR_2 PixelSpacing"].str.fullmatch(r"\[0\.\d+, 0\.\d+\]").all()
    assert (pd.read_csv(out / "Patients_metadata.csv")["SR_3 RescaleIntercept"] == -1024.0).all()
    csv = out / "CSV"
    names = ["all.csv"] + [f"{s}{k}.csv" for s in ("train", "validation", "test") for k in range(1, 6)]
    assert sorted(p.name for p in csv.iterdir()) == sorted(names)
    alldf = pd.read_csv(csv / "all.csv")
    assert list(alldf.columns) == ["filename", "class"] and set(alldf["class"]) == {"covid", "normal"}
    assert len(alldf) == summary.labelled_covid + summary.labelled_normal
    covid_pts = set(det.loc[det["COVID-19 Infection"] == "Positive", "Patient ID"])
    for name, cls in alldf.itertuples(index=False):
        m = NAME.match(name)
        assert m, name
        assert (out / "COVID-CTset" / m["group"] / m["patient"] / m["series"] / f"IM{m['im']}.tif").is_file()
        assert (cls == "covid") == (m["patient"] in covid_pts)
        if cls == "normal":
            assert m["series"] == "SR_2"
        assert (out / "Training&Validation" / name).read_bytes() == \
            (out / "COVID-CTset" / m["group"] / m["patient"] / m["series"] / f"IM{m['im']}.tif").read_bytes()
    for k in range(1, 6):
        parts = pd.concat([pd.read_csv(csv / f"{s}{k}.csv") for s in ("train", "validation", "test")])
        assert sorted(parts["filename"]) == sorted(alldf["filename"])


def test_truth_store_and_labels(cohort):
    out, _ = cohort
    root = zarr.open_group(out / "truth.zarr", mode="r")
    alldf = pd.read_csv(out / "CSV" / "all.csv")
    parts = alldf["filename"].str.extract(NAME.pattern)
    for patient in sorted(root.group_keys()):
        for series in SERIES:
            lung = root[f"{patient}/{series}/lung"]
            lesion = root[f"{patient}/{series}/lesion"]
            assert lung.shape == lesion.shape == (14, *SMALL) and lung.chunks == (1, *SMALL)
            assert lung.dtype == np.uint8 and lesion.dtype == np.uint8
            lu, le = lung[:], lesion[:]
            assert (le <= (lu > 0)).all() and lu[0].sum() == 0 and lu[-1].sum() == 0
            labelled = parts[(parts["patient"] == patient) & (parts["series"] == series)]
            ims = sorted(set(labelled["im"].astype(int)))
            if root[patient].attrs["covid"]:
                assert ims == [k + 1 for k in np.flatnonzero(le.reshape(14, -1).any(axis=1))]
                assert (labelled.index.map(alldf["class"]) == "covid").all()


def test_write_is_deterministic_and_process_independent(tmp_path, cohort):
    out, _ = cohort
    a = write_cohort(tmp_path / "a", patients=5, slices_per_series=14, seed=3, shape=SMALL, workers=2, flat=True,
                     progress=False)
    assert _digest(tmp_path / "a") == _digest(out)
    write_cohort(tmp_path / "b", patients=5, slices_per_series=14, seed=4, shape=SMALL, workers=1, progress=False)
    assert _digest(tmp_path / "b") != _digest(out)
    # rewriting our own folder replaces it; a foreign dataset folder is refused
    write_cohort(tmp_path / "a", patients=2, slices_per_series=6, seed=3, shape=SMALL, workers=1, progress=False)
    assert len(list((tmp_path / "a" / "COVID-CTset").rglob("*.tif"))) == 2 * 3 * 6
    (tmp_path / "c" / "COVID-CTset").mkdir(parents=True)
    with pytest.raises(FileExistsError):
        write_cohort(tmp_path / "c", patients=2, slices_per_series=6, shape=SMALL, workers=1, progress=False)
    assert a.slices == 5 * 3 * 14


def test_like_mode_small_fraction_writes_real_groups(tmp_path):
    s = write_cohort(tmp_path, like="covid-ctset", fraction=0.02, seed=0, shape=(32, 32), workers=1,
                     progress=False)
    ref = load_reference("covid-ctset").set_index("Patient ID")
    det = pd.read_csv(tmp_path / "Patient_details.csv", dtype=str, keep_default_na=False)
    assert s.covid_slices == round(15_589 * 2 / 95) and s.normal_slices == round(48_260 * 6 / 282)
    assert sum(1 for _ in (tmp_path / "COVID-CTset").rglob("*.tif")) >= s.slices
    for pid in det["Patient ID"]:
        primary = next(g for s in SERIES for g in ref.loc[pid, f"{s} groups"].split(";") if g)
        for series in SERIES:
            groups = ref.loc[pid, f"{series} groups"].split(";") if ref.loc[pid, f"{series} groups"] else [primary]
            for g in groups:
                assert (tmp_path / "COVID-CTset" / g / pid / series).is_dir()
    meta = pd.read_csv(tmp_path / "Patients_metadata.csv", dtype=str, keep_default_na=False).set_index("Patient ID")
    for pid in det["Patient ID"]:
        assert meta.loc[pid, "SR_2 PixelSpacing"] == ref.loc[pid, "SR_2 PixelSpacing"]


# ---------------------------------------------------------------- what real scans showed (issue 11)

REAL = dict(n_slices=40, covid=False, shape=(256, 256), spacing_mm=0.7, body_width_mm=300.0, noise_scale=0.0)
REAL_MMPP = 0.7 * 512 / 256


def _real(seed: int):
    ph = render_series(seed=seed, **REAL)
    an = make_anatomy(seed, covid=False, body_width_mm=REAL["body_width_mm"], fov_mm=512 * 0.7)
    return ph, an


def _px(x_mm: float) -> float:
    return 127.5 + x_mm / REAL_MMPP


def _slices(an, z0: float, z1: float) -> list[int]:
    step = an.length / REAL["n_slices"]
    return [k for k in range(REAL["n_slices"]) if z0 < (k + 0.5) * step < z1]


@pytest.fixture(scope="module")
def real_like():
    return {seed: _real(seed) for seed in (0, 1)}


def test_thick_foam_pad_with_air_pockets_on_a_wide_table(real_like):
    from ctengine.synth._scene import pad_top
    for ph, an in real_like.values():
        assert 30.0 <= an.pad_thick <= 60.0 and an.table_half_width > 1.1 * an.A
        hu = _hu(ph.raw)
        # the pad's core under the patient, away from the pockets: foam -900..-800 with texture
        cols = np.arange(int(_px(-0.5 * an.A)), int(_px(0.5 * an.A)))
        core = []
        for c in cols:
            top = pad_top(an, (c - 127.5) * REAL_MMPP)
            r0, r1 = int(_px(top + 0.25 * an.pad_thick)), int(_px(top + 0.75 * an.pad_thick))
            core.append(hu[:, r0:r1, c])
        core = np.concatenate(core, axis=1)
        foam = core[(core > -960) & (core < -700)]
        assert foam.size > 0.6 * core.size
        assert -900 <= np.median(foam) <= -800 and foam.std() > 5.0, "textured foam"
        assert (core <= -999).sum() > 50, "air pockets inside the pad"
        # a pocket is air enclosed in foam: a pure-air component below the back, off the image border
        seen = 0
        for k in range(ph.raw.shape[0]):
            lab, n = ndimage.label(hu[k] < -950)
            for i in range(1, n + 1):
                ys, xs = np.nonzero(lab == i)
                if ys.min() > _px(an.y_table) + 1 and xs.min() > 0 and ys.max() < 255 and xs.max() < 255:
                    ring = ndimage.binary_dilation(lab == i) & (lab != i)
                    assert (hu[k][ring] >= -950).all() and np.median(hu[k][ring]) < -700, "in foam"
                    seen += 1
        assert seen >= 1
        assert (ph.lung[:, int(_px(an.y_table)) + 1:] == 0).all(), "nothing below the back is truth lung"


def test_air_gap_between_pad_and_back_is_enclosed(real_like):
    found = 0
    for ph, an in real_like.values():
        xg, gw, gh, g0, g1 = an.back_gap
        hu = _hu(ph.raw)
        for k in _slices(an, g0, g1):
            c = int(round(_px(xg)))
            col = hu[k, :, c]
            y_back = int(np.floor(_px(an.y_table - 0.5)))
            below = col[y_back + 1:y_back + 1 + int(np.ceil(gh / REAL_MMPP)) + 2]
            if not (below <= -999).any():
                continue
            lab, _ = ndimage.label(hu[k] < -950)
            i = lab[y_back + 1 + int(np.argmax(below <= -999)), c]
            ys, xs = np.nonzero(lab == i)
            # bounded by the body above, the foam below and on both sides: not the air around the patient
            assert ys.min() > 0 and xs.min() > 0 and xs.max() < 255 and ys.max() < 255
            assert len(ys) < (4 * gw * gh) / REAL_MMPP ** 2
            ring = ndimage.binary_dilation(lab == i) & (lab != i)
            assert (hu[k][ring] >= -950).all()
            assert (hu[k, ys.min() - 1, xs] > -200).mean() > 0.5, "the back lies on it"
            assert (ph.lung[k][lab == i] == 0).all()
            found += 1
    assert found >= 5


def test_trachea_is_air_near_the_midline_in_the_neck_slices(real_like):
    for ph, an in real_like.values():
        hu = _hu(ph.raw)
        lung_slices = np.flatnonzero(ph.lung.reshape(len(ph.lung), -1).any(axis=1))
        neck = range(int(lung_slices[0]))
        assert len(neck) >= 1
        for k in neck:
            lab, n = ndimage.label(hu[k] < -950)
            found = False
            for i in range(1, n + 1):
                ys, xs = np.nonzero(lab == i)
                area = len(ys) * REAL_MMPP ** 2
                if ys.min() > 0 and xs.min() > 0 and 100 < area < 400 and abs(xs.mean() - 127.5) * REAL_MMPP < 10:
                    found = True
                    wall = ndimage.binary_dilation(lab == i, iterations=3) & ~ndimage.binary_dilation(lab == i)
                    assert (hu[k][wall] > -500).all(), "in soft tissue, not in lung"
            assert found, k
            assert ph.lung[k].max() == 0


def test_stomach_bubble_and_bowel_gas_under_the_left_dome(real_like):
    beside_lung = 0
    for ph, an in real_like.values():
        hu = _hu(ph.raw)
        s0, s1 = an.stomach[:2]
        g0, g1 = an.dome_gas[:, 2].min(), an.dome_gas[:, 3].max()
        ks = _slices(an, min(s0, g0), max(s1, g1))
        assert len(ks) >= 3
        for k in ks:
            lab, n = ndimage.label(hu[k] < -950)
            sizes = ndimage.sum_labels(np.ones_like(lab), lab, range(1, n + 1))
            inner = []
            for i in range(1, n + 1):
                ys, xs = np.nonzero(lab == i)
                if ys.min() > 0 and xs.min() > 0 and ys.max() < 255 and xs.max() < 255 and \
                        xs.mean() > 127.5 + 20 / REAL_MMPP and ys.mean() < _px(an.y_table - 10):
                    inner.append(i)
            gas = np.isin(lab, inner)
            if not gas.any():
                continue
            # gas on the patient's left, never truth lung, with tissue between it and any lung
            assert (ph.lung[k][ndimage.binary_dilation(gas, iterations=2)] == 0).all(), k
            assert sizes.max() > 0
            if (ph.lung[k] == 2).sum() > 100:
                beside_lung += 1
    assert beside_lung >= 1, "gas under the dome on slices that still hold left lung"
    # the stomach bubble has a flat air-fluid level (air anterior, fluid posterior)
    ph, an = real_like[0]
    hu = _hu(ph.raw)
    k = _slices(an, *an.stomach[:2])[len(_slices(an, *an.stomach[:2])) // 2]
    lab, n = ndimage.label(hu[k] < -950)
    inner = [i for i in range(1, n + 1) if not np.isin(i, np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))]
    big = lab == max(inner, key=lambda i: int((lab == i).sum()))
    assert np.nonzero(big)[1].mean() > 127.5, "on the patient's left"
    rows = np.flatnonzero(big.any(axis=1))
    widths = big.sum(axis=1)[rows]
    assert widths[-1] > 0.5 * widths.max(), "cut flat at the bottom"


@pytest.mark.parametrize("seed, touching", [(0, True), (1, False)])
def test_anterior_junction_where_the_lungs_touch(real_like, seed, touching):
    ph, an = real_like[seed]
    touch = [k for k in range(ph.lung.shape[0])
             if ((ph.lung[k] == 1) & ndimage.binary_dilation(ph.lung[k] == 2)).any()]
    assert (an.junction[1] > an.junction[0]) == touching
    if not touching:
        assert touch == []
        return
    assert 2 <= len(touch) <= 8 and set(touch) <= set(_slices(an, *an.junction[:2]))
    for k in touch:
        contact = (ph.lung[k] == 1) & ndimage.binary_dilation(ph.lung[k] == 2)
        ys, xs = np.nonzero(contact)
        assert len(ys) >= 3, "a junction line, not a point"
        assert abs(xs.mean() - _px(an.junction[2])) < 3, "at the midline"
        assert ys.mean() < np.nonzero(ph.lung[k])[0].mean(), "in front"
        # no tissue between them there: lung HU on both sides of the line
        hu = _hu(ph.raw[k])
        assert np.median(hu[ndimage.binary_dilation(contact) & (ph.lung[k] > 0)]) < -750


def test_render_backends_agree_on_pad_junction_and_gas():
    kw = dict(n_slices=20, covid=True, seed=0, shape=(96, 96), kernel="B30s", body_width_mm=300.0)
    an = make_anatomy(0, covid=True, body_width_mm=300.0, fov_mm=512 * 0.7)
    step = an.length / 20
    zs = (np.arange(20) + 0.5) * step
    assert ((zs > an.junction[0]) & (zs < an.junction[1])).any() and ((zs > an.stomach[0]) & (zs < an.stomach[1])).any()
    a, b = render_series(**kw), render_series(**kw, backend="reference")
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
