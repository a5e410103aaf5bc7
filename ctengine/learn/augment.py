"""The authors' training augmentation as one batched affine warp on the device.

Keras ``ImageDataGenerator(horizontal_flip=True, vertical_flip=True,
rotation_range=360, zoom_range=0.05, width_shift_range=0.05,
height_shift_range=0.05, shear_range=0.05)`` draws, per image, a rotation,
a shift, a shear and a zoom, composes them about the image centre and warps
with bilinear interpolation, then flips. Here the random parameters are
drawn on the CPU from a `torch.Generator` (the same numbers for CPU and
CUDA batches), folded into one 2 x 3 matrix per image (flips included) and
applied with a single ``grid_sample`` call on the images' device.

Conventions: coordinates are (x = column, y = row) in pixels relative to
the image centre; a matrix maps *output* coordinates to the *input*
coordinates sampled there. A positive angle turns the content
counter-clockwise as displayed (row 0 at the top), so +90 degrees equals
``torch.rot90(img, 1, dims=(-2, -1))``. A zoom factor below 1 magnifies.
Shear is in degrees, like Keras (the authors' 0.05 is 0.05 degrees); shift
is a fraction of the width (x) or height (y).

Regions that come from outside the input are filled with ``fill``: the
image's own minimum ("min", the default), a constant in the images' units
(raw 0.0 is -1024 HU, air outside the field of view), or "border" (the
nearest edge pixel, Keras' default ``fill_mode="nearest"`` that the authors
used). Apply the warp to raw values, before normalisation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["PAPER_AUGMENTATION", "AugmentConfig", "augment", "random_params", "params_to_theta",
           "warp_affine"]

_PARAM_NAMES = ("angle", "shear", "zoom_x", "zoom_y", "shift_x", "shift_y", "flip_h", "flip_v")


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random affine augmentation.

    Attributes
    ----------
    hflip, vflip : bool
        Mirror columns / rows with probability 1/2 each.
    rotation : float
        Angle uniform in [-rotation, rotation], degrees.
    zoom : float
        Zoom factors (x and y independently) uniform in [1 - zoom, 1 + zoom].
    shift : float
        Shift uniform in [-shift, shift] times the width (x) / height (y).
    shear : float
        Shear angle uniform in [-shear, shear], degrees.
    """

    hflip: bool = True
    vflip: bool = True
    rotation: float = 360.0
    zoom: float = 0.05
    shift: float = 0.05
    shear: float = 0.05

    def __post_init__(self) -> None:
        for name in ("rotation", "zoom", "shift", "shear"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if self.zoom >= 1:
            raise ValueError(f"zoom must be < 1, got {self.zoom!r}")


#: the authors' settings
PAPER_AUGMENTATION = AugmentConfig()


def random_params(n: int, *, config: AugmentConfig = PAPER_AUGMENTATION,
                  generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Draw the parameters of `n` random transforms (CPU float64 tensors of length n).

    Keys: angle, shear (degrees), zoom_x, zoom_y (factors), shift_x,
    shift_y (fractions of width / height), flip_h, flip_v (0.0 or 1.0).
    Always draws the same amount of random numbers, so a seeded generator
    gives the same parameters whatever `config` switches off.
    """
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an int >= 0, got {n!r}")
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(f"generator must be a CPU generator, got device {generator.device}")
    u = torch.rand((n, len(_PARAM_NAMES)), generator=generator, dtype=torch.float64)
    sym = 2.0 * u - 1.0  # uniform in [-1, 1)
    c = config
    return {
        "angle": sym[:, 0] * c.rotation,
        "shear": sym[:, 1] * c.shear,
        "zoom_x": 1.0 + sym[:, 2] * c.zoom,
        "zoom_y": 1.0 + sym[:, 3] * c.zoom,
        "shift_x": sym[:, 4] * c.shift,
        "shift_y": sym[:, 5] * c.shift,
        "flip_h": (u[:, 6] < 0.5).double() if c.hflip else torch.zeros(n, dtype=torch.float64),
        "flip_v": (u[:, 7] < 0.5).double() if c.vflip else torch.zeros(n, dtype=torch.float64),
    }


def identity_params(n: int) -> dict[str, torch.Tensor]:
    """Parameters of `n` identity transforms."""
    z = torch.zeros(n, dtype=torch.float64)
    return {"angle": z, "shear": z, "zoom_x": z + 1, "zoom_y": z + 1, "shift_x": z, "shift_y": z,
            "flip_h": z, "flip_v": z}


def params_to_theta(params: dict[str, torch.Tensor], *, height: int, width: int) -> torch.Tensor:
    """Compose parameters into ``affine_grid``-style matrices (N, 2, 3), float64, CPU.

    In centred pixel coordinates the output -> input map is
    ``R(angle) @ (Shear @ Zoom @ Flip @ p + shift)`` (Keras' order, flips
    last in image terms); it is then expressed in the normalised
    coordinates of ``grid_sample(align_corners=False)``.
    """
    missing = sorted(set(_PARAM_NAMES) - set(params))
    if missing:
        raise ValueError(f"params lacks {missing!r}")
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be >= 1, got {height!r}, {width!r}")
    p = {k: torch.as_tensor(params[k], dtype=torch.float64).reshape(-1) for k in _PARAM_NAMES}
    n = p["angle"].shape[0]
    a, s = torch.deg2rad(p["angle"]), torch.deg2rad(p["shear"])
    # exact values at multiples of 90 degrees (cos(pi/2) is 6e-17 in floating point)
    ca = torch.where(torch.remainder(p["angle"], 180) == 90, 0.0, torch.cos(a))
    sa = torch.where(torch.remainder(p["angle"], 180) == 0, 0.0, torch.sin(a))
    rot = torch.stack([torch.stack([ca, -sa], -1), torch.stack([sa, ca], -1)], -2)
    shear = torch.zeros(n, 2, 2, dtype=torch.float64)
    shear[:, 0, 0] = torch.cos(s)
    shear[:, 1, 0] = -torch.sin(s)
    shear[:, 1, 1] = 1.0
    lin = torch.diag_embed(torch.stack([p["zoom_x"] * (1 - 2 * p["flip_h"]),
                                        p["zoom_y"] * (1 - 2 * p["flip_v"])], -1))
    lin = rot @ shear @ lin
    shift = torch.stack([p["shift_x"] * width, p["shift_y"] * height], -1)
    trans = (rot @ shift.unsqueeze(-1)).squeeze(-1)
    # pixel -> normalised: u = x_n * W / 2, v = y_n * H / 2
    half = torch.tensor([width / 2.0, height / 2.0], dtype=torch.float64)
    theta = torch.empty(n, 2, 3, dtype=torch.float64)
    theta[:, :, :2] = lin * half[None, None, :] / half[None, :, None]
    theta[:, :, 2] = trans / half
    return theta


def _sampling_grid(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``affine_grid(theta, align_corners=False)`` as outer sums (N, H, W, 2).

    Pixel-centre coordinates are (2 i + 1 - size) / size, exact for
    power-of-2 sizes; x_in = (a x) + (b y + c) needs one add per element
    (a batched matmul over every pixel is twice as slow on the CPU).
    """
    xs = (torch.arange(width, dtype=theta.dtype, device=theta.device) * 2 + (1 - width)) / width
    ys = (torch.arange(height, dtype=theta.dtype, device=theta.device) * 2 + (1 - height)) / height
    grid = torch.empty((theta.shape[0], height, width, 2), dtype=theta.dtype, device=theta.device)
    for k in range(2):
        by_col = theta[:, k, 0, None] * xs  # (N, W)
        by_row = theta[:, k, 1, None] * ys + theta[:, k, 2, None]  # (N, H)
        torch.add(by_col[:, None, :], by_row[:, :, None], out=grid[..., k])
    return grid


def warp_affine(images: torch.Tensor, theta: torch.Tensor, *, fill: float | str = "min",
                mode: str = "bilinear") -> torch.Tensor:
    """Warp a batch (N, C, H, W) with one output -> input matrix (N, 2, 3) per image.

    Parameters
    ----------
    images : torch.Tensor
        Floating-point batch on any device; its dtype and device are kept.
    theta : torch.Tensor
        Matrices in ``grid_sample(align_corners=False)`` normalised
        coordinates (see `params_to_theta`), any device/dtype.
    fill : "min", "border" or float
        Value of regions outside the input: each image's minimum, the
        nearest edge pixel, or a constant in the images' units.
    mode : {"bilinear", "nearest"}
        Interpolation.

    Returns
    -------
    torch.Tensor
        Warped batch. Images whose matrix is exactly the identity are
        returned unchanged (bit for bit).
    """
    if not isinstance(images, torch.Tensor) or not torch.is_floating_point(images):
        raise TypeError(f"images must be a floating-point torch.Tensor, got "
                        f"{getattr(images, 'dtype', type(images).__name__)}")
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    n, ch, h, w = images.shape
    if tuple(theta.shape) != (n, 2, 3):
        raise ValueError(f"theta must be ({n}, 2, 3), got {tuple(theta.shape)}")
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
    if isinstance(fill, str) and fill not in ("min", "border"):
        raise ValueError(f"fill must be 'min', 'border' or a number, got {fill!r}")
    if n == 0:
        return images.clone()
    eye = torch.eye(2, 3, dtype=theta.dtype, device=theta.device)
    is_identity = (theta == eye).flatten(1).all(1).to(images.device)
    th = theta.to(device=images.device, dtype=images.dtype)
    grid = _sampling_grid(th, h, w)
    if fill == "border":
        out = F.grid_sample(images, grid, mode=mode, padding_mode="border", align_corners=False)
    else:
        if fill == "min":
            offset = images.amin(dim=(1, 2, 3), keepdim=True)
        else:
            offset = torch.full((n, 1, 1, 1), float(fill), dtype=images.dtype, device=images.device)
        out = F.grid_sample(images - offset, grid, mode=mode, padding_mode="zeros",
                            align_corners=False).add_(offset)
    return torch.where(is_identity[:, None, None, None], images, out)


def augment(images: torch.Tensor, *, config: AugmentConfig = PAPER_AUGMENTATION,
            generator: torch.Generator | None = None, seed: int | None = None,
            fill: float | str = "min", mode: str = "bilinear") -> torch.Tensor:
    """Randomly flip, rotate, zoom, shift and shear a batch in one warp.

    Parameters
    ----------
    images : torch.Tensor
        (N, C, H, W) floating-point batch in raw units, CPU or CUDA.
    config : AugmentConfig
        Ranges; `PAPER_AUGMENTATION` by default.
    generator : torch.Generator, optional
        CPU generator to draw from (advanced by each call).
    seed : int, optional
        Seed of a fresh generator (only when `generator` is None); neither
        given draws from the global RNG.
    fill, mode
        See `warp_affine`.

    Returns
    -------
    torch.Tensor
        Augmented batch, same shape, dtype and device.

    Examples
    --------
    >>> x = torch.rand(4, 1, 64, 64) * 3000
    >>> bool((augment(x, seed=1) == augment(x, seed=1)).all())
    True
    """
    if generator is None and seed is not None:
        generator = torch.Generator().manual_seed(seed)
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError(f"images must be a (N, C, H, W) tensor, got "
                         f"{tuple(getattr(images, 'shape', ())) or type(images).__name__}")
    params = random_params(images.shape[0], config=config, generator=generator)
    theta = params_to_theta(params, height=images.shape[-2], width=images.shape[-1])
    return warp_affine(images, theta, fill=fill, mode=mode)
