"""NIfTI and NRRD CT volumes: one file with its affine is one series.

The file's voxel axes are reordered and flipped into the store's (z
superior -> inferior, y anterior -> posterior, x patient right -> left) by
their directions (the NIfTI affine, the NRRD ``space directions``); axes
more than 1 degree from the patient axes (an oblique affine) are refused,
since reorienting them would need resampling, which is never bit-exact.

Values are taken as HU (after the file's scaling) and stored in the
COVID-CTset convention, raw = clip(round(HU) + 1024, 0, 65535) as uint16,
with values at or below -2048 HU (outside the field of view: -2048, -3024)
set to 0 as in COVID-CTset. The conversion and the number of voxels it
clipped, rounded or set to 0 are recorded in the series' attributes.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..constants import HU_OFFSET, RAW_DTYPE
from ..volumes import store_axes

__all__ = ["OUTSIDE_FOV_HU", "hu_to_stored_raw", "is_volume_file", "read_volume", "volume_geometry"]

#: HU at or below which a voxel is outside the field of view (stored as raw 0)
OUTSIDE_FOV_HU = -2048.0
CONVERSION = "raw = clip(round(HU) + 1024, 0, 65535); HU <= -2048 -> 0"
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def is_volume_file(path: str) -> bool:
    """A NIfTI (``.nii``, ``.nii.gz``) or NRRD (``.nrrd``, ``.nhdr``) file name."""
    return path.lower().endswith((".nii", ".nii.gz", ".nrrd", ".nhdr"))


def _nifti_directions(path: str) -> tuple[np.ndarray, tuple[int, ...]]:
    import nibabel as nib

    img = nib.load(path)
    return (_RAS_TO_LPS @ img.affine[:3, :3]).T, tuple(int(n) for n in img.shape)


def _nrrd_directions(path: str) -> tuple[np.ndarray, tuple[int, ...]]:
    import nrrd

    header = nrrd.read_header(path)
    space = str(header.get("space", "")).lower()
    directions = np.asarray(header["space directions"], dtype=np.float64)
    if space in ("right-anterior-superior", "ras"):
        directions = directions @ _RAS_TO_LPS
    elif space not in ("left-posterior-superior", "lps"):
        raise ValueError(f"NRRD space {space!r} is not LPS or RAS")
    return directions, tuple(int(n) for n in header["sizes"])


def volume_geometry(path: str) -> dict[str, Any]:
    """Shape, axes and spacing of a volume in the store's orientation, from its header only.

    Returns
    -------
    dict
        shape (z, y, x) in the store, order and flips (see
        :func:`ctengine.volumes.store_axes`), spacing_mm (z, y, x), format.

    Raises
    ------
    ValueError
        Not 3-D, an oblique or degenerate affine, an NRRD space other than LPS / RAS.
    """
    kind = "nrrd" if path.lower().endswith((".nrrd", ".nhdr")) else "nifti"
    try:
        directions, shape = (_nrrd_directions if kind == "nrrd" else _nifti_directions)(path)
    except ValueError:
        raise
    except Exception as exc:  # nibabel / pynrrd raise many types for unreadable headers
        raise ValueError(f"unreadable {kind} header ({type(exc).__name__}: {exc})") from None
    if len(shape) != 3:
        raise ValueError(f"not a 3-D volume (shape {shape})")
    order, flips, spacing = store_axes(directions)
    return {"format": kind, "order": order, "flips": flips, "shape": tuple(shape[i] for i in order),
            "spacing_mm": tuple(float(s) for s in spacing)}


def hu_to_stored_raw(hu: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
    """COVID-CTset raw values of HU, clip(round(HU) + 1024, 0, 65535), <= -2048 HU -> 0; and what changed.

    Examples
    --------
    >>> raw, counts = hu_to_stored_raw(np.array([-3024.0, -1024.0, 40.4, 70000.0]))
    >>> raw.tolist(), counts["outside_fov"], counts["clipped_high"], counts["rounded"]
    ([0, 0, 1064, 65535], 1, 1, 1)
    """
    hu = np.asarray(hu)
    rounded = np.rint(hu) if hu.dtype.kind == "f" else hu.astype(np.int64)
    value = rounded + HU_OFFSET
    outside = hu <= OUTSIDE_FOV_HU
    counts = {"outside_fov": int(outside.sum()),
              "clipped_low": int(((value < 0) & ~outside).sum()),
              "clipped_high": int((value > np.iinfo(RAW_DTYPE).max).sum()),
              "rounded": int((rounded != hu).sum()) if hu.dtype.kind == "f" else 0}
    raw = np.clip(value, 0, np.iinfo(RAW_DTYPE).max).astype(RAW_DTYPE)
    raw[outside] = 0
    return raw, counts


def read_volume(path: str, geometry: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    """The raw uint16 (z, y, x) stack of a volume in the store's orientation, and its conversion record.

    Converted slice by slice, so the only full-size temporaries are the file's values and the result.
    """
    if geometry["format"] == "nrrd":
        import nrrd

        data, _ = nrrd.read(path)
    else:
        import nibabel as nib

        data = np.asarray(nib.load(path).dataobj)
    data = np.transpose(data, geometry["order"])
    data = data[tuple(slice(None, None, -1) if f else slice(None) for f in geometry["flips"])]
    raw = np.empty(data.shape, dtype=RAW_DTYPE)
    counts: dict[str, int] = {}
    for z in range(data.shape[0]):
        raw[z], found = hu_to_stored_raw(data[z])
        counts = {k: counts.get(k, 0) + v for k, v in found.items()}
    record = {"kind": geometry["format"], "conversion": CONVERSION, "outside_fov_hu": OUTSIDE_FOV_HU,
              "axes_order": list(geometry["order"]), "axes_flipped": list(geometry["flips"]), **counts}
    return raw, record
