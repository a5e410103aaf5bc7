import numpy as np
import pytest

torch = pytest.importorskip("torch")
from scipy import ndimage  # noqa: E402

from ctengine.learn.augment import (  # noqa: E402
    PAPER_AUGMENTATION, AugmentConfig, augment, identity_params, params_to_theta, random_params,
    warp_affine,
)


def _raw(n=3, h=64, w=64, seed=0):
    """Integer-valued float raw slices (exact in float32)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 4000, (n, 1, h, w), generator=g).float()


def _params(n, **kw):
    p = identity_params(n)
    for k, v in kw.items():
        p[k] = p[k] + torch.as_tensor(v, dtype=torch.float64)
    return p


def _warp(x, fill="min", mode="bilinear", **kw):
    theta = params_to_theta(_params(x.shape[0], **kw), height=x.shape[-2], width=x.shape[-1])
    return warp_affine(x, theta, fill=fill, mode=mode)


@pytest.mark.parametrize("shape", [(64, 64), (60, 90), (33, 17)])
@pytest.mark.parametrize("fill", ["min", "border", 0.0])
def test_identity_reproduces_input_exactly(shape, fill):
    x = torch.rand(2, 1, *shape, dtype=torch.float32) * 3000 + 0.123
    torch.testing.assert_close(_warp(x, fill=fill), x, rtol=0, atol=0)


@pytest.mark.parametrize("angle,k", [(90, 1), (180, 2), (270, 3), (-90, 3), (450, 1)])
def test_right_angle_rotations_equal_rot90(angle, k):
    x = _raw()
    torch.testing.assert_close(_warp(x, angle=angle), torch.rot90(x, k, dims=(-2, -1)), rtol=0, atol=0)


def test_flips_equal_torch_flip():
    x = _raw()
    torch.testing.assert_close(_warp(x, flip_h=1.0), x.flip(-1), rtol=0, atol=0)
    torch.testing.assert_close(_warp(x, flip_v=1.0), x.flip(-2), rtol=0, atol=0)
    torch.testing.assert_close(_warp(x, flip_h=1.0, flip_v=1.0), torch.rot90(x, 2, dims=(-2, -1)),
                               rtol=0, atol=0)


def test_rot90_on_other_square_sizes_is_close():
    x = torch.rand(2, 1, 60, 60) * 3000
    torch.testing.assert_close(_warp(x, angle=90, fill="border"), torch.rot90(x, 1, dims=(-2, -1)),
                               rtol=0, atol=0.05)


def test_shift_moves_content_and_fills_constant():
    x = _raw(n=1)
    y = _warp(x, fill=-7.0, shift_x=2 / 64)  # output samples input two columns to the right
    torch.testing.assert_close(y[..., :62], x[..., 2:], rtol=0, atol=0)
    assert (y[..., 62:] == -7.0).all()
    y = _warp(x, fill="min", shift_y=-3 / 64)  # content moves down by three rows
    torch.testing.assert_close(y[..., 3:, :], x[..., :61, :], rtol=0, atol=0)
    assert (y[..., :3, :] == x.min()).all()


def test_fill_min_is_per_image_minimum_in_corners():
    x = torch.stack([torch.full((1, 32, 32), 500.0), torch.full((1, 32, 32), 900.0)])
    x[0, 0, 16, 16] = 100.0
    y = _warp(x, angle=45)
    assert y[0, 0, 0, 0] == 100.0 and y[1, 0, 0, 0] == 900.0
    assert _warp(x, angle=45, fill="border")[0, 0, 0, 0] == 500.0


def _scipy_reference(img, params, *, mode):
    """scipy.ndimage.affine_transform built from the documented conventions.

    Centred pixel coordinates (x = column, y = row), output -> input:
    R(angle) @ (Shear @ Zoom @ Flip @ p + (shift_x * W, shift_y * H)).
    """
    h, w = img.shape
    p = {k: float(v[0]) for k, v in params.items()}
    a, s = np.deg2rad(p["angle"]), np.deg2rad(p["shear"])
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    shear = np.array([[np.cos(s), 0.0], [-np.sin(s), 1.0]])
    zoom = np.diag([p["zoom_x"] * (1 - 2 * p["flip_h"]), p["zoom_y"] * (1 - 2 * p["flip_v"])])
    lin = rot @ shear @ zoom
    t = rot @ np.array([p["shift_x"] * w, p["shift_y"] * h])
    m_rc = lin[::-1, ::-1]  # (row, col) order
    c = np.array([(h - 1) / 2, (w - 1) / 2])
    offset = c - m_rc @ c + t[::-1]
    return ndimage.affine_transform(img, m_rc, offset=offset, order=1, mode=mode, prefilter=False)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_warp_matches_scipy_reference(seed):
    img = np.random.default_rng(seed).random((48, 80)).astype(np.float64) * 3000
    params = random_params(1, config=AugmentConfig(shear=10.0, zoom=0.2, shift=0.1),
                           generator=torch.Generator().manual_seed(seed))
    params["flip_h"][:] = seed % 2  # cover both flips
    params["flip_v"][:] = 1 - seed % 2
    theta = params_to_theta(params, height=48, width=80)
    got = warp_affine(torch.from_numpy(img)[None, None], theta, fill="border")[0, 0].numpy()
    want = _scipy_reference(img, params, mode="nearest")
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", [(64, 64), (48, 80), (31, 17)])
def test_sampling_grid_matches_affine_grid(shape):
    from ctengine.learn.augment import _sampling_grid
    theta = params_to_theta(random_params(3, generator=torch.Generator().manual_seed(0)),
                            height=shape[0], width=shape[1])
    want = torch.nn.functional.affine_grid(theta, (3, 1, *shape), align_corners=False)
    torch.testing.assert_close(_sampling_grid(theta, *shape), want, rtol=0, atol=1e-12)


def test_params_to_theta_keras_order():
    # rotation of (zoom, then shift): a shift along x turns with the image
    p = _params(1, angle=90, shift_x=0.25, zoom_x=-0.5)
    th = params_to_theta(p, height=64, width=64)[0]
    # output (x, y) -> input R90 @ (diag(0.5, 1) @ (x, y) + (16, 0)) = (-y, 0.5 x + 16)
    torch.testing.assert_close(th, torch.tensor([[0.0, -1.0, 0.0], [0.5, 0.0, 0.5]], dtype=torch.float64))


def test_seeded_augmentation_is_deterministic():
    x = torch.rand(4, 1, 32, 32) * 3000
    a, b, c = augment(x, seed=5), augment(x, seed=5), augment(x, seed=6)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    first = augment(x, generator=g1)
    assert torch.equal(first, augment(x, generator=g2))
    assert not torch.equal(augment(x, generator=g1), first)  # the generator advances


def test_random_params_ranges():
    p = random_params(4000, generator=torch.Generator().manual_seed(0))
    assert p["angle"].abs().max() <= 360 and p["angle"].abs().max() > 350
    assert p["shear"].abs().max() <= 0.05
    for k in ("zoom_x", "zoom_y"):
        assert ((p[k] >= 0.95) & (p[k] <= 1.05)).all()
    for k in ("shift_x", "shift_y"):
        assert p[k].abs().max() <= 0.05
    for k in ("flip_h", "flip_v"):
        assert set(p[k].unique().tolist()) == {0.0, 1.0} and abs(p[k].mean() - 0.5) < 0.05
    q = random_params(10, config=AugmentConfig(hflip=False, rotation=0.0),
                      generator=torch.Generator().manual_seed(0))
    r = random_params(10, generator=torch.Generator().manual_seed(0))
    assert (q["flip_h"] == 0).all() and (q["angle"] == 0).all()
    assert torch.equal(q["zoom_x"], r["zoom_x"])  # same draws whatever is switched off
    assert PAPER_AUGMENTATION.rotation == 360.0


def test_validation_and_dtype():
    x = torch.rand(2, 1, 16, 16, dtype=torch.float64)
    assert augment(x, seed=0).dtype == torch.float64
    with pytest.raises(TypeError):
        warp_affine(x.to(torch.int32), params_to_theta(identity_params(2), height=16, width=16))
    with pytest.raises(ValueError):
        warp_affine(x, torch.zeros(3, 2, 3))
    with pytest.raises(ValueError):
        augment(x, seed=0, fill="edge")
    with pytest.raises(ValueError):
        AugmentConfig(zoom=1.5)
    assert augment(torch.zeros(0, 1, 8, 8), seed=0).shape == (0, 1, 8, 8)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x = torch.rand(4, 1, 64, 64) * 3000
    cpu = augment(x, seed=3)
    gpu = augment(x.cuda(), seed=3)
    assert gpu.is_cuda
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=0.05)
