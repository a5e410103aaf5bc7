"""The store's zarr metadata: codec, root attributes, stack arrays and OME-Zarr 0.5 attributes."""
from __future__ import annotations

import functools
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.group import GroupMetadata
from zarr.storage import MemoryStore

from ..constants import LUNG_WINDOW_HU, MEDIASTINUM_WINDOW_HU, RAW_DTYPE
from . import names, pyramid, shard
from .names import FORMAT, FORMAT_VERSION, LUNG, LUNG_COLORS, LUNG_PROPERTIES, RAW


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


def ome_multiscales(name: str, *, scale: tuple[float, float, float] | None, levels: int = 0) -> dict[str, Any]:
    """OME-Zarr 0.5 ``ome`` attribute of an image group: level 0 at path "0" and ``levels`` halvings of y
    and x at paths "1".."n" (:mod:`ctengine.store.pyramid`).

    Each level is scaled in mm (in pixels of level 0 when the spacing is
    unknown) and shifted so that its pixel centres sit at the centres of the
    2 x 2 blocks they summarise.

    Examples
    --------
    >>> datasets = ome_multiscales("p/SR_2", scale=(2.0, 0.5, 0.5), levels=1)["multiscales"][0]["datasets"]
    >>> [d["path"] for d in datasets], datasets[1]["coordinateTransformations"]
    (['0', '1'], [{'type': 'scale', 'scale': [2.0, 1.0, 1.0]}, {'type': 'translation', 'translation': [0.0, 0.25, 0.25]}])
    """
    axes = [{"name": axis, "type": "space", **({"unit": "millimeter"} if scale else {})} for axis in "zyx"]
    sz, sy, sx = (float(s) for s in (scale or (1.0, 1.0, 1.0)))
    datasets = []
    for level in range(levels + 1):
        f = float(2 ** level)
        transform: list[dict[str, Any]] = [{"type": "scale", "scale": [sz, sy * f, sx * f]}]
        if level:
            transform.append({"type": "translation", "translation": [0.0, (f - 1) / 2 * sy, (f - 1) / 2 * sx]})
        datasets.append({"path": names.level_name(level), "coordinateTransformations": transform})
    return {"version": "0.5", "multiscales": [{"name": name, "axes": axes, "datasets": datasets,
                                               "type": pyramid.METHOD}]}


def ome_image(name: str, *, scale: tuple[float, float, float] | None, slope: float, intercept: float,
              levels: int = 0, dtype: np.dtype | str = RAW_DTYPE) -> dict[str, Any]:
    """``ome`` attribute of a series image: its multiscales and an ``omero`` rendering in the lung window.

    The window is given in stored units (raw = (HU - intercept) / slope), so a
    viewer opens the series at lung window (-600 / 1500 HU) with no contrast
    setting; the mediastinal window (40 / 400 HU) is stated in the channel's
    label for the user to switch to.

    Examples
    --------
    >>> window = ome_image("p/SR_2", scale=None, slope=1.0, intercept=-1024.0)["omero"]["channels"][0]["window"]
    >>> window["start"], window["end"], window["max"]
    (-326.0, 1174.0, 65535.0)
    """
    ome = ome_multiscales(name, scale=scale, levels=levels)
    info = np.iinfo(np.dtype(dtype))
    (centre, width), (m_centre, m_width) = LUNG_WINDOW_HU, MEDIASTINUM_WINDOW_HU
    start, end = ((hu - intercept) / slope for hu in (centre - width / 2, centre + width / 2))
    ome["omero"] = {"name": name, "version": "0.5", "rdefs": {"model": "greyscale", "defaultZ": 0},
                    "channels": [{"label": f"CT (lung window {centre:g}/{width:g} HU; mediastinal "
                                           f"{m_centre:g}/{m_width:g} HU)",
                                  "color": "FFFFFF", "active": True, "inverted": False, "coefficient": 1.0,
                                  "family": "linear",
                                  "window": {"start": float(start), "end": float(end), "min": float(info.min),
                                             "max": float(info.max)}}]}
    return ome


def ome_lung_label(name: str, *, scale: tuple[float, float, float] | None, levels: int = 0) -> dict[str, Any]:
    """OME-Zarr 0.5 ``ome`` attribute of the lung label group of a series: colours and names of the labels."""
    ome = ome_multiscales(name, scale=scale, levels=levels)
    ome["image-label"] = {"version": "0.5", "colors": [dict(c) for c in LUNG_COLORS],
                          "properties": [dict(p) for p in LUNG_PROPERTIES], "source": {"image": "../../"}}
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


def stack_array_document(n_slices: int, shape: tuple[int, int], dtype: np.dtype | str = RAW_DTYPE) -> bytes:
    """The ``zarr.json`` that :func:`create_stack_array` writes for this size, as zarr renders it.

    Rendered by zarr once per size and dtype and kept, so writing a series
    costs no metadata round trips (an array's document does not hold its name).

    Examples
    --------
    >>> import json
    >>> json.loads(stack_array_document(3, (512, 512)))["shape"]
    [3, 512, 512]
    """
    return _stack_array_document(int(n_slices), tuple(int(n) for n in shape), np.dtype(dtype).str)


@functools.lru_cache(maxsize=1024)
def _stack_array_document(n_slices: int, shape: tuple[int, int], dtype: str) -> bytes:
    found: dict = {}
    create_stack_array(zarr.open_group(MemoryStore(found), mode="w", zarr_format=3), n_slices, shape,
                       dtype=dtype, name="a")
    return found["a/zarr.json"].to_bytes()


def group_document(attributes: dict[str, Any]) -> bytes:
    """The ``zarr.json`` of a zarr v3 group holding ``attributes``, as zarr's ``create_group`` writes it.

    Examples
    --------
    >>> import json
    >>> json.loads(group_document({"a": 1}))["attributes"]
    {'a': 1}
    """
    return GroupMetadata(attributes=attributes, zarr_format=3).to_buffer_dict(
        default_buffer_prototype())["zarr.json"].to_bytes()
