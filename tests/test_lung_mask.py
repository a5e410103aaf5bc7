"""Lung mask: Numba kernel identical to the scipy reference; accuracy on phantoms, a drawn scene and real CT."""
from __future__ import annotations


import numpy as np
import pytest
from scipy import ndimage

from ctengine.kernels._lung_cpu import lung_mask_stack
from ctengine.kernels import _lung_volume_cpu as volume_cpu
from ctengine.kernels import _lung_volume_reference as volume_reference
from ctengine.kernels._lung_params import LungParams, VolumeParams
from ctengine.kernels._lung_reference import lung_mask_reference
from ctengine.kernels import SpacingUnknownWarning
from ctengine.kernels.lung import lung_mask

#: most cases here measure at the nominal spacing on purpose
pytestmark = pytest.mark.filterwarnings("ignore::ctengine.kernels.SpacingUnknownWarning")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / s if s else 1.0


def cpu(stack: np.ndarray, p: LungParams) -> np.ndarray:
    out = np.empty(stack.shape, np.uint8)
    lung_mask_stack(np.ascontiguousarray(stack), out, *(int(v) for v in p))
    return out


def random_case(rng: np.random.Generator) -> tuple[np.ndarray, LungParams]:
    """Tiny random stack (noise or smooth blobs) and random integer parameters."""
    z, h, w = int(rng.integers(1, 3)), int(rng.integers(1, 48)), int(rng.integers(1, 48))
    if rng.random() < 0.3:
        raw = rng.integers(0, 1100, (z, h, w))
    else:
        f = ndimage.gaussian_filter(rng.normal(size=(z, h, w)), (0, *(rng.uniform(0.5, 4),) * 2))
        f = (f - f.min()) / (np.ptp(f) + 1e-9)
        raw = f * 1200 + rng.normal(0, rng.uniform(0, 80), (z, h, w))
    t_low = int(rng.integers(100, 900))
    p = LungParams(t_low, int(rng.integers(0, t_low + 1)), int(rng.integers(1, 20)),
                   int(rng.integers(1, 30)), int(rng.integers(1, 20)), int(rng.integers(0, 6)),
                   int(rng.integers(0, 6)), int(rng.integers(1, 40)), int(rng.integers(0, 1300)))
    return np.clip(raw, 0, 65535).astype(np.uint16), p


def ellipse(shape, cy, cx, ry, rx) -> np.ndarray:
    yy, xx = np.ogrid[:shape[0], :shape[1]]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def scene(*, junction: bool = False, lungs: bool = True, seed: int = 0):
    """A drawn 256 x 256 chest slice (1.4 mm pixels) with the structures a lung mask must handle.

    Returns raw, truth (0/1/2) and boolean masks of structures that must stay out.
    """
    n = 256
    rng = np.random.default_rng(seed)
    hu = np.full((n, n), -1000.0)
    hu[ellipse(hu.shape, 120, 128, 82, 112)] = -95.0                 # subcutaneous fat
    hu[ellipse(hu.shape, 120, 128, 76, 106)] = 40.0                  # body wall, mediastinum
    truth = np.zeros((n, n), np.uint8)
    out = {}
    if lungs:
        right = ellipse(hu.shape, 118, 84, 56, 34)
        left = ellipse(hu.shape, 118, 172, 56, 34)
        if junction:                                                   # lungs meet in front
            right |= ellipse(hu.shape, 70, 110, 12, 26)
            left |= ellipse(hu.shape, 70, 146, 12, 26)
        truth[right] = 1
        truth[left & ~right] = 2
        hu[truth > 0] = -850.0
        for cy, cx in ((110, 80), (130, 170), (95, 95)):              # vessels
            hu[ellipse(hu.shape, cy, cx, 3, 3)] = 40.0
        pleural = ellipse(hu.shape, 135, 52, 9, 8) & right             # consolidation at the wall
        hu[pleural] = -50.0
        out["pleural"] = pleural
        if not junction:                                               # trachea touching the right lung
            trachea = ellipse(hu.shape, 72, 108, 9, 9)
            hu[trachea] = -1000.0
            truth[trachea] = 0
            out["trachea"] = trachea
    else:                                                              # abdomen: liver and bowel gas
        hu[ellipse(hu.shape, 115, 90, 45, 50)] = 58.0
        gas = ellipse(hu.shape, 100, 170, 12, 18) | ellipse(hu.shape, 140, 160, 8, 10)
        hu[gas] = -1000.0
        out["gas"] = gas
    hu[ellipse(hu.shape, 175, 128, 14, 16)] = 700.0                  # spine
    table = np.zeros((n, n), bool)
    table[206:222, 50:206] = True
    table_air = np.zeros((n, n), bool)
    table_air[209:219, 54:202] = True                                  # air between the layers
    hu[table] = 300.0
    hu[table_air] = -1000.0
    cable = ellipse(hu.shape, 42, 190, 6, 6)
    cable_air = ellipse(hu.shape, 42, 190, 3, 3)
    hu[cable] = 900.0
    hu[cable_air] = -1000.0
    hu += rng.normal(0.0, 20.0, hu.shape)
    raw = np.clip(hu + 1024.0, 0, 65535).astype(np.uint16)
    fov = ellipse(hu.shape, 127.5, 127.5, 128, 128)
    raw[~fov] = 0
    out.update(outside=~fov | ~ellipse(hu.shape, 120, 128, 84, 114), table=table | table_air,
               cable=cable | cable_air)
    return raw, truth, out


SCENE_SPACING = (1.4, 1.4)


# ---------------------------------------------------------------- reference == Numba

def test_cpu_matches_reference_on_random_inputs():
    rng = np.random.default_rng(20240501)
    for _ in range(120):
        raw, p = random_case(rng)
        np.testing.assert_array_equal(cpu(raw, p), lung_mask_reference(raw, p), err_msg=str(p))


def random_series(rng: np.random.Generator) -> tuple[np.ndarray, int, int, VolumeParams]:
    """Tiny random series (smooth blobs with noise and a pure-air rim) and random whole-series parameters."""
    z, h, w = int(rng.integers(2, 6)), int(rng.integers(3, 40)), int(rng.integers(3, 40))
    f = ndimage.gaussian_filter(rng.normal(size=(z, h, w)), (rng.uniform(0, 1.5), *(rng.uniform(0.5, 3),) * 2))
    f = (f - f.min()) / (np.ptp(f) + 1e-9) * 1200 + rng.normal(0, rng.uniform(0, 60), (z, h, w))
    if rng.random() < 0.5:
        f[:, :2] = 0
    t_low = int(rng.integers(200, 900))
    v = VolumeParams(int(rng.integers(1, 20)), int(rng.integers(1, 200)), int(rng.integers(0, 20)),
                     int(rng.integers(0, 4)), int(rng.integers(0, 1001)))
    return np.clip(f, 0, 65535).astype(np.uint16), t_low, int(rng.integers(0, t_low + 1)), v


def test_whole_series_stages_match_reference_on_random_inputs():
    rng = np.random.default_rng(20261202)
    tracked = 0
    for _ in range(150):
        raw, t_low, t_air, v = random_series(rng)
        expected = volume_reference.declare_air(raw, t_low, t_air, v)
        np.testing.assert_array_equal(volume_cpu.declare_air(raw, t_low, t_air, v), expected, err_msg=str(v))
        tracked += int(((expected == 0) & (raw > 0)).any())
        mask = rng.integers(0, 3, raw.shape).astype(np.uint8) * (rng.random(raw.shape) < 0.4)
        np.testing.assert_array_equal(volume_cpu.keep_lungs(mask.copy(), v),
                                      volume_reference.keep_lungs(mask.copy(), v), err_msg=str(v))
    assert tracked >= 30, tracked   # the cases do reach the outside and airway stages


@pytest.mark.parametrize("width", [1, 7, 8, 13, 16, 40, 64])
@pytest.mark.parametrize("fill", [0.0, 0.02, 0.4, 0.97, 1.0])
def test_runs_of_a_mask_are_its_rows_changes(width, fill):
    rng = np.random.default_rng(width * 100 + int(fill * 100))
    mask = (rng.random((3, 5, width)) < fill) * rng.integers(1, 3, (3, 5, width)).astype(np.uint8)
    s, e, ptr = volume_cpu.runs_of(mask)
    edges = np.diff(np.pad(mask != 0, ((0, 0), (0, 0), (1, 1))).astype(np.int8), axis=2).reshape(15, -1)
    assert [(list(s[ptr[r]:ptr[r + 1]]), list(e[ptr[r]:ptr[r + 1]])) for r in range(15)] == \
        [(list(np.flatnonzero(d == 1)), list(np.flatnonzero(d == -1))) for d in edges]


def test_cpu_matches_reference_on_phantom(phantom_series):
    for ph in phantom_series:
        sub = ph.raw[::3]
        np.testing.assert_array_equal(lung_mask(sub), lung_mask(sub, method="reference"))


def test_cpu_matches_reference_on_scenes_and_real_ct(real_ct):
    for kw in ({}, {"junction": True}, {"lungs": False}):
        raw = scene(**kw)[0]
        np.testing.assert_array_equal(lung_mask(raw, spacing=SCENE_SPACING),
                                      lung_mask(raw, spacing=SCENE_SPACING, method="reference"))
    raw, spacing = real_ct
    np.testing.assert_array_equal(lung_mask(raw, spacing=spacing),
                                  lung_mask(raw, spacing=spacing, method="reference"))


# ---------------------------------------------------------------- accuracy

@pytest.fixture(scope="module")
def phantom_series():
    synth = pytest.importorskip("ctengine.synth.phantom")
    return [synth.render_series(n_slices=24, covid=covid, seed=seed, kernel=kernel)
            for seed, covid, kernel in ((0, True, "B30s"), (1, False, "B70s"), (5, True, "B90s"))]


@pytest.fixture(scope="module")
def real_ct():
    pytest.importorskip("pydicom")
    from pydicom import examples
    ds = examples.ct
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    raw = np.clip(hu + 1024.0, 0, 65535).astype(np.uint16)
    return raw, (float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1]))


def test_dice_against_phantom_truth(phantom_series):
    scores = {1: [], 2: []}
    lesion_scores = []
    for ph in phantom_series:
        mask = lung_mask(ph.raw)
        for k in range(ph.raw.shape[0]):
            for lab in (1, 2):
                truth = ph.lung[k] == lab
                if truth.sum() <= 500:
                    continue
                d = dice(mask[k] == lab, truth)
                scores[lab].append(d)
                if (truth & (ph.lesion[k] > 0)).sum() > 200:   # ground glass or consolidation
                    lesion_scores.append(d)
    assert np.median(scores[1]) >= 0.97 and np.median(scores[2]) >= 0.97, scores
    assert len(lesion_scores) >= 10 and np.median(lesion_scores) >= 0.97, lesion_scores


def test_lung_free_phantom_slices_are_empty(phantom_series):
    n = 0
    for ph in phantom_series:
        mask = lung_mask(ph.raw)
        for k in np.flatnonzero(ph.lung.reshape(len(ph.lung), -1).max(axis=1) == 0):
            assert mask[k].max() == 0
            n += 1
    assert n >= 3


def test_phantom_mask_stays_in_body_and_out_of_pure_air(phantom_series):
    for ph in phantom_series:
        mask = lung_mask(ph.raw)
        for k in range(ph.raw.shape[0]):
            tissue, n = ndimage.label(ph.raw[k] >= 1024 - 400)
            if n == 0:
                continue
            body = ndimage.binary_fill_holes(tissue == np.argmax(np.bincount(tissue.ravel())[1:]) + 1)
            assert not (mask[k].astype(bool) & ~body).any()    # outside, table, cables
            # pure air outside the (hole-filled) lungs: trachea, bronchi at the hilum, bowel gas
            air_not_lung = (ph.raw[k] < 1024 - 950) & ~ndimage.binary_fill_holes(ph.lung[k] > 0)
            assert (mask[k].astype(bool) & air_not_lung).sum() <= 10, k   # a few noisy wall pixels


def test_scene_structures():
    raw, truth, parts = scene()
    mask = lung_mask(raw, spacing=SCENE_SPACING)
    for name in ("outside", "table", "cable", "trachea"):
        assert not (mask.astype(bool) & parts[name]).any(), name
    assert dice(mask == 1, truth == 1) > 0.97
    assert dice(mask == 2, truth == 2) > 0.97
    # consolidation at the chest wall (not air-like at all): the closing brings most of it back
    assert (mask[parts["pleural"]] == 1).mean() > 0.6


def test_lungs_touching_in_front_are_split():
    raw, truth, _ = scene(junction=True)
    mask = lung_mask(raw, spacing=SCENE_SPACING)
    assert dice(mask == 1, truth == 1) > 0.95
    assert dice(mask == 2, truth == 2) > 0.95


def test_abdomen_slice_and_flat_slices_are_empty():
    raw, _, parts = scene(lungs=False)
    assert lung_mask(raw, spacing=SCENE_SPACING).max() == 0
    for value in (0, 50, 1064, 4000):
        assert lung_mask(np.full((64, 64), value, np.uint16)).max() == 0


def test_real_ct_slice(real_ct):
    raw, spacing = real_ct
    mask = lung_mask(raw, spacing=spacing)
    hu = raw.astype(np.float64) - 1024.0
    cols = np.arange(raw.shape[1])
    assert (mask == 1).sum() > 1000 and (mask == 2).sum() > 1000
    assert cols[(mask == 1).any(axis=0)].mean() < cols[(mask == 2).any(axis=0)].mean()
    assert -900.0 <= hu[mask > 0].mean() <= -700.0


# ---------------------------------------------------------------- shapes, kinds, sizes

def test_stack_equals_slices_and_2d_in_2d_out(phantom_series):
    stack = phantom_series[0].raw[8:12]
    whole = lung_mask(stack)
    assert whole.shape == stack.shape and whole.dtype == np.uint8
    for k in range(stack.shape[0]):
        np.testing.assert_array_equal(lung_mask(stack[k]), whole[k])
    np.testing.assert_array_equal(lung_mask(np.asfortranarray(stack)), whole)


@pytest.mark.parametrize("size", [64, 128])
def test_small_slices_with_default_spacing(size):
    synth = pytest.importorskip("ctengine.synth.phantom")
    ph = synth.render_series(n_slices=12, covid=True, seed=2, shape=(size, size))
    mask = lung_mask(ph.raw)
    np.testing.assert_array_equal(mask, lung_mask(ph.raw, method="reference"))
    big = [k for k in range(12) if min((ph.lung[k] == 1).sum(), (ph.lung[k] == 2).sum()) > size]
    assert big
    for k in big:
        assert dice(mask[k] == 1, ph.lung[k] == 1) > 0.85
        assert dice(mask[k] == 2, ph.lung[k] == 2) > 0.85


def test_tiny_and_empty_inputs():
    assert lung_mask(np.zeros((1, 1), np.uint16)).tolist() == [[0]]
    assert lung_mask(np.zeros((0, 8, 8), np.uint16)).shape == (0, 8, 8)
    assert lung_mask(np.zeros((3, 1, 7), np.uint16)).shape == (3, 1, 7)


def test_spacing_scales_size_limits():
    raw = np.full((64, 64), 1064, np.uint16)
    raw[20:30, 20:30] = 174                     # 100 pixels of lung-like air
    assert lung_mask(raw, spacing=(1.0, 1.0)).max() == 1     # 100 mm2: kept
    assert lung_mask(raw, spacing=(0.5, 0.5)).max() == 0     # 25 mm2: too small


def test_dask_blocks_match_numpy(phantom_series):
    da = pytest.importorskip("dask.array")
    stack = phantom_series[0].raw[6:12]
    lazy = lung_mask(da.from_array(stack, chunks=(2, 256, 256)))
    assert isinstance(lazy, da.Array) and lazy.dtype == np.uint8
    assert lazy.chunks[0] == (2, 2, 2)
    np.testing.assert_array_equal(lazy.compute(scheduler="synchronous"), lung_mask(stack))
    ref = lung_mask(da.from_array(stack, chunks=(3, -1, -1)), method="reference")
    np.testing.assert_array_equal(ref.compute(scheduler="synchronous"), lung_mask(stack))


# ---------------------------------------------------------------- validation

@pytest.mark.parametrize("dtype", [np.uint8, np.uint32, ">u2"])
def test_wrong_dtype(dtype):
    with pytest.raises(TypeError, match="uint16"):
        lung_mask(np.zeros((8, 8), dtype), spacing=0.7)


@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_signed_or_float_input_must_name_its_units(dtype):
    with pytest.raises(TypeError, match="units='hu'"):
        lung_mask(np.zeros((8, 8), dtype), spacing=0.7)


def test_unknown_spacing_is_said_out_loud():
    with pytest.warns(SpacingUnknownWarning, match="nominal 11.2 mm"):
        lung_mask(np.zeros((32, 32), np.uint16))


@pytest.mark.parametrize("shape", [(8,), (1, 2, 8, 8)])
def test_wrong_ndim(shape):
    with pytest.raises(ValueError, match="slice"):
        lung_mask(np.zeros(shape, np.uint16))


def test_wrong_kind_and_options():
    x = np.zeros((8, 8), np.uint16)
    with pytest.raises(TypeError, match="list"):
        lung_mask([[0, 1]])
    with pytest.raises(ValueError, match="spacing"):
        lung_mask(x, spacing=(0.0, 0.7))
    with pytest.raises(TypeError, match="spacing"):
        lung_mask(x, spacing="0.7")
    with pytest.raises(ValueError, match="spacing"):
        lung_mask(x, spacing=-0.7)
    np.testing.assert_array_equal(lung_mask(x, spacing=0.7), lung_mask(x, spacing=(0.7, 0.7)))
    with pytest.raises(ValueError, match="slope"):
        lung_mask(x, slope=-1.0)
    with pytest.raises(ValueError, match="air_hu"):
        lung_mask(x, air_hu=-300.0, low_hu=-400.0)
    with pytest.raises(ValueError, match="closing_mm"):
        lung_mask(x, closing_mm=-1.0)
    with pytest.raises(ValueError, match="finite"):
        lung_mask(x, low_hu=float("nan"))
    with pytest.raises(ValueError, match="method"):
        lung_mask(x, method="fast")



def test_thresholds_follow_slope_and_intercept():
    raw, truth, _ = scene()
    ref = lung_mask(raw, spacing=SCENE_SPACING)
    doubled = (raw.astype(np.uint32) * 2).astype(np.uint16)   # HU = raw * 0.5 - 1024
    np.testing.assert_array_equal(lung_mask(doubled, spacing=SCENE_SPACING, slope=0.5), ref)
    shifted = raw + np.uint16(1000)                            # HU = raw - 2024
    np.testing.assert_array_equal(lung_mask(shifted, spacing=SCENE_SPACING, intercept=-2024.0), ref)


def test_extreme_options_match_reference():
    raw = scene()[0][::2, ::2]
    for kw in ({"closing_mm": 1e9}, {"closing_mm": 0.0, "min_area_mm2": 0.0},
               {"tissue_hole_mm2": 1e30, "split_window_mm": 1e30}, {"low_hu": 5000.0},
               {"slope": 1e-300}):
        np.testing.assert_array_equal(lung_mask(raw, **kw), lung_mask(raw, method="reference", **kw),
                                      err_msg=str(kw))


@pytest.mark.parametrize("option", [{"min_volume_fraction": 1.5}, {"min_volume_fraction": -0.1},
                                    {"airway_wall_mm": -1.0}, {"airway_max_area_mm2": float("nan")},
                                    {"trachea_midline_mm": -3.0}])
def test_whole_series_options_out_of_range(option):
    with pytest.raises(ValueError):
        lung_mask(np.zeros((2, 16, 16), np.uint16), **option)


def test_whole_series_option_not_a_number():
    with pytest.raises(TypeError):
        lung_mask(np.zeros((2, 16, 16), np.uint16), airway_wall_mm="3 mm")
