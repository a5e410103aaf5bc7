"""The store schema: a zarr v3 hierarchy keyed ``/<patient>/<series>``.

::

    STORE/zarr.json                       root: format, codec, quarantine report
    STORE/catalog/<column>                one 1-D array per catalog column (dim "slice")
    STORE/<patient>/zarr.json             label and demographics
    STORE/<patient>/<series>/zarr.json    OME-Zarr 0.5 multiscales; thickness, spacing,
                                          rescale, kernel, instances, checksums, sources
    STORE/<patient>/<series>/0            raw uint16 (z, y, x): 1 slice per chunk,
                                          the series in one shard, blosc lz4 + bitshuffle
    STORE/<patient>/<series>/labels/lung/0   lung masks (uint8) once computed

Everything is readable with plain ``zarr`` and ``xarray`` (every array has
dimension names) and by OME-Zarr readers; nothing needs ctengine.
"""
from __future__ import annotations

import os
import uuid
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import zarr
from zarr.codecs import BloscCodec

from . import _shard
from .constants import RAW_DTYPE

FORMAT = "ctengine-store"
FORMAT_VERSION = 1
RAW = "0"
TABLE_DIM = "slice"


def raw_codec(typesize: int = 2) -> BloscCodec:
    """The zarr codec matching :func:`ctengine._shard.encode_chunk` (typesize 2: raw, 1: masks)."""
    return BloscCodec(cname=_shard.BLOSC_CNAME, clevel=_shard.BLOSC_CLEVEL, shuffle=_shard.BLOSC_SHUFFLE,
                      typesize=typesize, blocksize=0)


def resolve(url: str | os.PathLike) -> str:
    """A store or source location the workers can use: local paths made absolute, URLs unchanged."""
    url = os.fspath(url)
    return url if "://" in url else os.path.abspath(url)


def open_root(url: str, *, mode: str = "r", storage_options: dict | None = None) -> zarr.Group:
    """Open the root group of a store (local path or fsspec URL).

    Remote stores (``s3://``, ``gs://``, ...) are opened without a listings
    cache unless ``storage_options`` sets ``use_listings_cache``: workers
    write the store concurrently, so a cached listing goes stale.
    """
    kwargs: dict[str, Any] = {}
    if "://" in url:
        options = dict(storage_options or {})
        if fsspec.core.split_protocol(url)[0] not in ("file", "local") and "::" not in url:
            options.setdefault("use_listings_cache", False)
        kwargs = {"storage_options": options} if options else {}
    return zarr.open_group(url, mode=mode, zarr_format=3, **kwargs)


def filesystem(url: str, storage_options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """fsspec filesystem and root path of a store URL (remote: no listings cache, see :func:`open_root`)."""
    options = dict(storage_options or {})
    if "://" in url and "::" not in url and fsspec.core.split_protocol(url)[0] not in ("file", "local"):
        options.setdefault("use_listings_cache", False)
    fs, root = fsspec.core.url_to_fs(url, **options)
    return fs, root.rstrip("/")


def put_object(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write one object atomically (temporary file and rename on local disks)."""
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    if {"file", "local"} & set(protocols):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{uuid.uuid4().hex}.partial"
        with open(tmp, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, data)


def ome_multiscales(name: str, *, scale: tuple[float, float, float] | None) -> dict[str, Any]:
    """OME-Zarr 0.5 ``ome`` attribute of an image group with one level at path "0" (units mm)."""
    axes = [{"name": axis, "type": "space", **({"unit": "millimeter"} if scale else {})} for axis in "zyx"]
    transform = [{"type": "scale", "scale": [float(s) for s in (scale or (1.0, 1.0, 1.0))]}]
    return {"version": "0.5", "multiscales": [{
        "name": name, "axes": axes, "datasets": [{"path": RAW, "coordinateTransformations": transform}]}]}


def series_scale(thickness_mm: float, spacing_y_mm: float, spacing_x_mm: float) -> tuple[float, float, float] | None:
    """(z, y, x) voxel size in mm, or None when any part is unknown."""
    values = (thickness_mm, spacing_y_mm, spacing_x_mm)
    return None if any(v is None or not np.isfinite(v) for v in values) else tuple(float(v) for v in values)


def create_stack_array(group: zarr.Group, n_slices: int, shape: tuple[int, int], *,
                       dtype: np.dtype | str = RAW_DTYPE, name: str = RAW) -> zarr.Array:
    """(Re)create a (z, y, x) array: one slice per chunk, the whole stack in one shard."""
    dtype = np.dtype(dtype)
    return group.create_array(name, shape=(n_slices, *shape), chunks=(1, *shape), shards=(n_slices, *shape),
                              dtype=dtype, compressors=[raw_codec(dtype.itemsize)], fill_value=0,
                              dimension_names=("z", "y", "x"), overwrite=True)


def shard_key(array_path: str) -> str:
    """Store key of the single shard of a stack array (e.g. ``patient1/SR_2/0``)."""
    return f"{array_path}/c/0/0/0"


def raw_shard_key(patient: str, series: str) -> str:
    """Store key of the single shard holding a series' raw stack."""
    return shard_key(f"{patient}/{series}/{RAW}")


def write_stack(url: str, storage_options: dict | None, group: zarr.Group, stack: np.ndarray,
                name: str = RAW) -> int:
    """Create the array ``name`` in ``group`` and write ``stack`` as one shard; return bytes written."""
    shard = _shard.encode_shard([_shard.encode_chunk(image) for image in stack])
    create_stack_array(group, stack.shape[0], stack.shape[1:], dtype=stack.dtype, name=name)
    fs, base = filesystem(url, storage_options)
    put_object(fs, f"{base}/{shard_key(f'{group.path}/{name}')}", shard)
    return len(shard)


def read_stack(url: str, storage_options: dict | None, array: zarr.Array) -> np.ndarray:
    """Read a whole single-shard stack at codec speed (one object read, C decoding)."""
    fs, base = filesystem(url, storage_options)
    data = fs.cat_file(f"{base}/{shard_key(array.path)}")
    return _shard.decode_shard(data, array.shape, dtype=array.dtype)


# ---------------------------------------------------------------- tables

def write_table(group: zarr.Group, name: str, table: pd.DataFrame) -> None:
    """Store a DataFrame as a group of 1-D arrays (dimension ``slice``), replacing any old one."""
    sub = group.create_group(name, overwrite=True, attributes={"columns": list(table.columns)})
    n = len(table)
    for column in table.columns:
        values = table[column].to_numpy()
        if values.dtype == object or pd.api.types.is_string_dtype(table[column].dtype):
            values = table[column].astype(str).to_numpy(dtype=object)
            dtype: Any = str
        else:
            dtype = values.dtype
        array = sub.create_array(column, shape=(n,), chunks=(max(n, 1),), dtype=dtype,
                                 dimension_names=(TABLE_DIM,), fill_value="" if dtype is str else None)
        if n:
            array[:] = values


def read_table(group: zarr.Group, name: str) -> pd.DataFrame:
    """Read a table written by :func:`write_table`."""
    sub = group[name]
    columns = sub.attrs["columns"]
    data = {column: sub[column][:] for column in columns}
    return pd.DataFrame({c: (v.astype(object) if v.dtype.kind in "OTU" else v) for c, v in data.items()},
                        columns=columns)


# ---------------------------------------------------------------- reading

class Store:
    """A ctengine store opened for reading.

    Attributes
    ----------
    url : str
        Local path or fsspec URL.
    root : zarr.Group
        The root group.
    """

    def __init__(self, url: str | os.PathLike, *, storage_options: dict | None = None):
        self.url = os.fspath(url)
        self.storage_options = storage_options
        self.root = open_root(self.url, mode="r", storage_options=storage_options)
        if self.root.attrs.get("format") != FORMAT:
            raise ValueError(f"{self.url!r} is not a ctengine store (root attribute format={FORMAT!r} missing)")
        self._catalog: pd.DataFrame | None = None

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    @property
    def catalog(self) -> pd.DataFrame:
        """One row per stored slice (see :func:`ctengine.layout.build_catalog`)."""
        if self._catalog is None:
            if "catalog" not in self.root:
                raise ValueError(f"store {self.url!r} has no catalog yet (ingest did not finish)")
            self._catalog = read_table(self.root, "catalog")
        return self._catalog

    @property
    def quarantine(self) -> pd.DataFrame:
        """Files refused by ingest: location and reason."""
        if "quarantine" not in self.root:
            return pd.DataFrame(columns=["location", "reason"])
        return read_table(self.root, "quarantine")

    @property
    def features(self) -> pd.DataFrame:
        """Per-slice features written by :func:`ctengine.compute_features` (one row per slice)."""
        return self.feature_table("slices")

    def feature_table(self, name: str = "slices") -> pd.DataFrame:
        """A feature table beside the store: ``slices``, ``series`` or ``patients``."""
        if name not in ("slices", "series", "patients"):
            raise ValueError(f"feature table must be slices, series or patients, got {name!r}")
        fs, base = filesystem(self.url.rstrip("/") + ".features", self.storage_options)
        path = f"{base}/{name}.parquet"
        if not fs.exists(path):
            raise ValueError(f"store {self.url!r} has no features yet: run `ctengine features {self.url}`")
        with fs.open(path, "rb") as handle:
            return pd.read_parquet(handle)

    def series_keys(self) -> list[tuple[str, str]]:
        """Every stored (patient, series), sorted."""
        keys = self.catalog[["patient", "series"]].drop_duplicates()
        return [tuple(k) for k in keys.itertuples(index=False)]

    def raw(self, patient: str, series: str) -> zarr.Array:
        """The raw uint16 (z, y, x) zarr array of a series."""
        return self.root[f"{patient}/{series}/{RAW}"]

    def lung_mask(self, patient: str, series: str) -> zarr.Array:
        """The stored lung mask (uint8 (z, y, x): 0 background, 1 right, 2 left lung) of a series."""
        path = f"{patient}/{series}/labels/lung/{RAW}"
        if path not in self.root:
            raise ValueError(f"{patient}/{series} has no lung mask yet: run `ctengine features {self.url}`")
        return self.root[path]

    def series_attrs(self, patient: str, series: str) -> dict[str, Any]:
        """Attributes of a series group (thickness, spacing, rescale, kernel, instances, ...)."""
        return dict(self.root[f"{patient}/{series}"].attrs)

    def series(self, patient: str, series: str):
        """A dask-backed ``xarray.DataArray`` (instance, y, x) of raw values, mm coordinates where known."""
        import dask.array as da
        import xarray as xr

        array = self.raw(patient, series)
        attrs = self.series_attrs(patient, series)
        z, ny, nx = array.shape
        sy, sx = attrs.get("spacing_mm") or (None, None)
        coords: dict[str, Any] = {"instance": np.asarray(attrs["instances"], dtype=np.int64)}
        coords["y"] = np.arange(ny) * sy if sy else np.arange(ny)
        coords["x"] = np.arange(nx) * sx if sx else np.arange(nx)
        if attrs.get("thickness_mm"):
            coords["z_mm"] = ("instance", np.arange(z) * float(attrs["thickness_mm"]))
        keep = ("thickness_mm", "spacing_mm", "kernel", "window_center", "window_width")
        rescale = {"slope": float(attrs.get("slope") or 1.0),
                   "intercept": float(attrs["intercept"]) if attrs.get("intercept") is not None else -1024.0}
        return xr.DataArray(da.from_zarr(array), dims=("instance", "y", "x"), coords=coords,
                            name=f"{patient}/{series}",
                            attrs={"units": "raw", **rescale, **{k: attrs[k] for k in keep if attrs.get(k) is not None}})

    def to_datatree(self):
        """The whole store as an ``xarray.DataTree`` (lazy, dask-backed)."""
        import xarray as xr

        kwargs = {"storage_options": self.storage_options} if self.storage_options else {}
        return xr.open_datatree(self.url, engine="zarr", chunks={}, consolidated=False, **kwargs)


def open_store(url: str | os.PathLike, *, storage_options: dict | None = None) -> Store:
    """Open a ctengine store for reading.

    Examples
    --------
    >>> store = open_store("covid.zarr")  # doctest: +SKIP
    >>> store.catalog.groupby("label").size()  # doctest: +SKIP
    """
    return Store(url, storage_options=storage_options)
