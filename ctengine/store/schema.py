"""The store's zarr metadata: codec, root attributes, stack arrays and OME-Zarr 0.5 attributes."""
from __future__ import annotations

from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from ..constants import RAW_DTYPE
from . import shard
from . import names
from .names import FORMAT, FORMAT_VERSION, LUNG, LUNG_COLORS, RAW


def raw_codec(typesize: int = 2) -> BloscCodec:
    """The zarr codec matching :func:`ctengine.store.shard.encode_chunk`.

    Parameters
    ----------
    typesize : int
        Bytes per pixel: 2 for raw slices (uint16), 1 for lung masks (uint8).
    """
    return BloscCodec(cname=shard.BLOSC_CNAME, clevel=shard.BLOSC_CLEVEL, shuffle=shard.BLOSC_SHUFFLE,
                      typesize=typesize, blocksize=0)


def root_attributes() -> dict[str, Any]:
    """Attributes of the root group that make it a ctengine store."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "raw_codec": raw_codec().to_dict()}


def ome_multiscales(name: str, *, scale: tuple[float, float, float] | None) -> dict[str, Any]:
    """OME-Zarr 0.5 ``ome`` attribute of an image group with one level at path "0" (units mm)."""
    axes = [{"name": axis, "type": "space", **({"unit": "millimeter"} if scale else {})} for axis in "zyx"]
    transform = [{"type": "scale", "scale": [float(s) for s in (scale or (1.0, 1.0, 1.0))]}]
    return {"version": "0.5", "multiscales": [{
        "name": name, "axes": axes, "datasets": [{"path": RAW, "coordinateTransformations": transform}]}]}


def ome_lung_label(name: str, *, scale: tuple[float, float, float] | None) -> dict[str, Any]:
    """OME-Zarr 0.5 ``ome`` attribute of the lung label group of a series."""
    ome = ome_multiscales(name, scale=scale)
    ome["image-label"] = {"version": "0.5", "colors": [dict(c) for c in LUNG_COLORS], "source": {"image": "../../"}}
    return ome


def ome_labels() -> dict[str, Any]:
    """OME-Zarr 0.5 ``ome`` attribute of the ``labels`` group of a series."""
    return {"version": "0.5", "labels": [LUNG]}


def series_scale(thickness_mm: float | None, spacing_y_mm: float | None,
                 spacing_x_mm: float | None) -> tuple[float, float, float] | None:
    """(z, y, x) voxel size in mm, or None when any part is unknown."""
    values = (thickness_mm, spacing_y_mm, spacing_x_mm)
    return None if any(v is None or not np.isfinite(v) for v in values) else tuple(float(v) for v in values)


def attrs_scale(attrs: dict[str, Any]) -> tuple[float, float, float] | None:
    """(z, y, x) voxel size in mm of a series from its attributes (thickness_mm, spacing_mm); None when unknown."""
    return series_scale(names.thickness(attrs), *(names.spacing(attrs) or (None, None)))


def create_stack_array(group: zarr.Group, n_slices: int, shape: tuple[int, int], *,
                       dtype: np.dtype | str = RAW_DTYPE, name: str = RAW) -> zarr.Array:
    """(Re)create a (z, y, x) array: one slice per chunk, the whole stack in one shard."""
    dtype = np.dtype(dtype)
    return group.create_array(name, shape=(n_slices, *shape), chunks=(1, *shape), shards=(n_slices, *shape),
                              dtype=dtype, compressors=[raw_codec(dtype.itemsize)], fill_value=0,
                              dimension_names=("z", "y", "x"), overwrite=True)
