"""The store handle: one object that owns a store's root group, filesystem and base path.

Everything that reads or writes a store goes through :class:`Store`
(ingest, features, verify, the loader, training), so the contract of
:mod:`ctengine.store.names` is applied in one place. A handle pickles as
its location, so it can be sent to Dask workers, which reopen it.
"""
from __future__ import annotations

import json
import os
import uuid
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import zarr

from . import names, pyramid, replace, schema, shard, tables
from .buffers import ThreadBuffers
from .location import NotAStoreError, check_location, filesystem, is_local, open_root
from .names import LABELS_GROUP, LUNG, LUNG_ARRAY, LUNG_FEATURES, RAW


def _reopen(url: str, mode: str, storage_options: dict | None) -> "Store":
    return Store(url, mode=mode, storage_options=storage_options)


class Store:
    """A ctengine store, opened for reading (``mode="r"``) or writing (``mode="a"``).

    Parameters
    ----------
    url : str or path
        Local path (made absolute) or fsspec URL (``s3://bucket/covid.zarr``).
    mode : {"r", "a"}
        ``"r"``: the location must be a ctengine store. ``"a"``: created
        when missing (ingest writes the root attributes).
    storage_options : dict, optional
        fsspec options (endpoint, credentials). Remote stores are opened
        without a listings cache unless these set ``use_listings_cache``:
        workers write the store concurrently, so a cached listing goes stale.

    Attributes
    ----------
    url : str
    root : zarr.Group
    fs : fsspec.AbstractFileSystem
    base : str
        Path of the store's root on ``fs``.
    """

    def __init__(self, url: str | os.PathLike, *, mode: str = "r", storage_options: dict | None = None):
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
        self.url = names.resolve(url)
        self.mode = mode
        self.storage_options = storage_options
        check_location(self.url, mode)
        try:
            self.root = open_root(self.url, mode=mode, storage_options=storage_options)
        except FileNotFoundError as exc:  # a remote location without a root group
            raise NotAStoreError(f"no store at {self.url}: check the URL, or write one with "
                                 f"ctengine ingest SOURCES --store {self.url}") from exc
        if mode == "r" and self.root.attrs.get("format") != names.FORMAT:
            raise NotAStoreError(f"{self.url} is not a ctengine store (root attribute format={names.FORMAT!r} "
                                 f"missing): give the folder ctengine ingest --store wrote")
        self.fs, self.base = filesystem(self.url, storage_options)
        self._catalog: pd.DataFrame | None = None

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    def __reduce__(self):
        return _reopen, (self.url, self.mode, self.storage_options)

    # ------------------------------------------------------------ objects

    def put(self, key: str, data: bytes | memoryview) -> None:
        """Write one object under the store (atomically on local disks: temporary file and rename)."""
        path = f"{self.base}/{key}"
        if is_local(self.fs):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{uuid.uuid4().hex}.partial"
            with open(tmp, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        else:
            self.fs.pipe_file(path, bytes(data))

    def shard_path(self, patient: str, series: str, array: str = RAW) -> str:
        """Path on :attr:`fs` of the shard of ``array`` (:data:`RAW` or :data:`LUNG_ARRAY`) of a series."""
        return f"{self.base}/{names.shard_key(names.series_path(patient, series, array))}"

    @property
    def local(self) -> bool:
        """Whether the store is on a local disk."""
        return is_local(self.fs)

    def read_stack(self, array: zarr.Array) -> np.ndarray:
        """Read a whole single-shard stack at codec speed (one object read, C decoding)."""
        data = self.fs.cat_file(f"{self.base}/{names.shard_key(array.path)}")
        return shard.decode_shard(data, array.shape, dtype=array.dtype)

    def raw_shard_bytes(self) -> int:
        """Bytes of every raw shard of the store."""
        found = self.fs.glob(f"{self.base}/*/*/{names.shard_key(RAW)}", detail=True)
        return int(sum(info["size"] for info in found.values()))

    # ------------------------------------------------------------ tables

    def initialise(self) -> None:
        """Write the root attributes of a ctengine store unless they are there already."""
        attrs = schema.root_attributes()
        if {k: self.root.attrs.get(k) for k in attrs} != json.loads(json.dumps(attrs)):
            self.root.update_attributes(attrs)

    def read_table(self, name: str) -> pd.DataFrame | None:
        """A table of the root (:data:`~ctengine.store.names.CATALOG`, ...), None when absent."""
        return tables.read_table(self.root, name) if name in self.root else None

    def write_table(self, name: str, table: pd.DataFrame, *, if_changed: bool = False) -> bool:
        """Write a table of the root; with ``if_changed``, only when it differs. Return whether it wrote.

        The table is written whole beside the old one and swapped in (see
        :mod:`ctengine.store.replace`), so a failed write keeps the old table.
        """
        self._catalog = None
        if if_changed and name in self.root and tables.same_table(self.root, name, table):
            return False
        objects = replace.group_objects(name, lambda root: tables.write_table(root, name, table.reset_index(drop=True)))
        replace.replace_group(self.fs, self.base, name, objects, local=self.local)
        return True

    @property
    def catalog(self) -> pd.DataFrame:
        """One row per stored slice (see :func:`ctengine.layout.build_catalog`)."""
        if self._catalog is None:
            if names.CATALOG not in self.root:
                raise ValueError(f"store {self.url!r} has no catalog yet (ingest did not finish)")
            self._catalog = tables.read_table(self.root, names.CATALOG)
        return self._catalog

    @property
    def quarantine(self) -> pd.DataFrame:
        """Files refused by ingest: location and reason."""
        table = self.read_table(names.QUARANTINE)
        return pd.DataFrame(columns=list(names.QUARANTINE_COLUMNS)) if table is None else table

    @property
    def features_url(self) -> str:
        """Folder of the Parquet feature tables beside the store."""
        return names.features_path(self.url)

    @property
    def features(self) -> pd.DataFrame:
        """Per-slice features written by :func:`ctengine.features.compute_features` (one row per slice)."""
        return self.feature_table("slices")

    def _feature_path(self, name: str) -> tuple[fsspec.AbstractFileSystem, str]:
        """(filesystem, path) of an existing feature table; ValueError for another name or no features yet."""
        if name not in names.FEATURE_TABLES:
            raise ValueError(f"feature table must be slices, series or patients, got {name!r}")
        fs, base = filesystem(self.features_url, self.storage_options)
        path = f"{base}/{name}.parquet"
        if not fs.exists(path):
            raise ValueError(f"store {self.url!r} has no features yet: run `ctengine features {self.url}`")
        return fs, path

    def feature_table(self, name: str = "slices") -> pd.DataFrame:
        """A feature table beside the store: ``slices``, ``series`` or ``patients``.

        Column units and definitions: :meth:`feature_schema` and ``docs/FEATURES.md``.
        """
        fs, path = self._feature_path(name)
        with fs.open(path, "rb") as handle:
            return pd.read_parquet(handle)

    def feature_schema(self, name: str = "slices"):
        """The ``pyarrow.Schema`` of a feature table, with its metadata.

        Each field's metadata holds ``unit``, ``description`` and
        ``definition`` (bytes); the schema's ``ctengine`` entry the JSON of
        :func:`ctengine.features.dictionary.schema_metadata` (histogram bin
        edges and HU cut-offs).
        """
        import pyarrow.parquet as pq

        fs, path = self._feature_path(name)
        with fs.open(path, "rb") as handle:
            return pq.read_schema(handle)

    def write_feature_tables(self, frames: dict[str, Any]) -> None:
        """Write feature tables (``slices``, ``series``, ``patients``) as Parquet beside the store.

        Each table is a ``pyarrow.Table`` (written with its field and schema
        metadata, see :func:`ctengine.features.dictionary.arrow_table`) or a
        DataFrame.
        """
        import pyarrow.parquet as pq

        fs, base = filesystem(self.features_url, self.storage_options)
        fs.makedirs(base, exist_ok=True)
        for name, table in frames.items():
            if name not in names.FEATURE_TABLES:
                raise ValueError(f"feature table must be slices, series or patients, got {name!r}")
            with fs.open(f"{base}/{name}.parquet", "wb") as handle:
                if isinstance(table, pd.DataFrame):
                    table.to_parquet(handle, index=False)
                else:
                    pq.write_table(table, handle)

    # ------------------------------------------------------------ series

    def series_keys(self) -> list[tuple[str, str]]:
        """Every stored (patient, series), sorted."""
        keys = self.catalog[["patient", "series"]].drop_duplicates()
        return [tuple(k) for k in keys.itertuples(index=False)]

    def series_group(self, patient: str, series: str) -> zarr.Group:
        """The zarr group of a series."""
        return self.root[names.series_path(patient, series)]

    def raw(self, patient: str, series: str) -> zarr.Array:
        """The raw uint16 (z, y, x) zarr array of a series."""
        return self.root[names.series_path(patient, series, RAW)]

    def read_raw(self, patient: str, series: str) -> np.ndarray:
        """The whole raw stack (z, y, x) of a series as numpy, read at codec speed."""
        return self.read_stack(self.raw(patient, series))

    def has_lung_mask(self, patient: str, series: str) -> bool:
        """Whether the series has a stored lung mask."""
        return names.series_path(patient, series, LUNG_ARRAY) in self.root

    def lung_mask(self, patient: str, series: str) -> zarr.Array:
        """The stored lung mask (uint8 (z, y, x): 0 background, 1 right, 2 left lung) of a series."""
        if not self.has_lung_mask(patient, series):
            raise ValueError(f"{patient}/{series} has no lung mask yet: run `ctengine features {self.url}`")
        return self.root[names.series_path(patient, series, LUNG_ARRAY)]

    def series_attrs(self, patient: str, series: str) -> dict[str, Any]:
        """Attributes of a series group (thickness, spacing, rescale, kernel, instances, ...)."""
        return dict(self.series_group(patient, series).attrs)

    def rescale(self, patient: str, series: str) -> tuple[float, float]:
        """(slope, intercept) of a series: HU = raw * slope + intercept."""
        return names.rescale(self.series_attrs(patient, series))

    def spacing(self, patient: str, series: str) -> tuple[float, float] | None:
        """(y, x) pixel spacing of a series in mm, None when unknown."""
        return names.spacing(self.series_attrs(patient, series))

    # ------------------------------------------------------------ writing series (ingest)

    def write_patient(self, patient: str, attrs: dict[str, Any]) -> None:
        """Create a patient group and set its attributes unless they are there already."""
        group = self.root.require_group(patient)
        if dict(group.attrs) != attrs:
            group.update_attributes(attrs)

    def completed_series(self, patient: str, series: str, plan: str) -> dict[str, Any] | None:
        """The attributes of a series when it is complete for ``plan``, else None."""
        try:
            attrs = dict(self.root[names.series_path(patient, series)].attrs)
        except Exception:  # missing or half-written metadata: not complete
            return None
        return attrs if names.is_complete(attrs, plan) else None

    def begin_series(self, patient: str, series: str) -> zarr.Group:
        """(Re)create the group of a series, marked incomplete (an empty series; see :meth:`write_series`)."""
        return self.root.require_group(patient).create_group(series, overwrite=True, attributes=names.incomplete())

    @staticmethod
    def series_document(path: str, attrs: dict[str, Any], plan: str, *, levels: int,
                        old: dict[str, Any] | None = None) -> bytes:
        """The ``zarr.json`` of a complete series group: ``attrs`` over ``old``, OME-Zarr metadata with
        ``levels`` pyramid levels, and the completion marker for ``plan``."""
        slope, intercept = names.rescale(attrs)
        ome = schema.ome_image(path, scale=schema.attrs_scale(attrs), slope=slope, intercept=intercept,
                               levels=levels)
        return schema.group_document({**(names.incomplete() if old is None else old), **attrs, "ome": ome,
                                      **names.complete(plan)})

    def update_series(self, patient: str, series: str, attrs: dict[str, Any], plan: str) -> None:
        """Set new attributes of a stored series in one write of its ``zarr.json`` (the pixels stay).

        The document is rendered in memory and written with :meth:`put`
        (temporary file and rename on a local disk), so a failed write keeps the old one.
        """
        path = names.series_path(patient, series)
        old = dict(self.series_group(patient, series).attrs)
        levels = max(len(names.level_paths(old)) - 1, 0)  # the levels it has (none before pyramids)
        self.put(f"{path}/zarr.json", self.series_document(path, attrs, plan, levels=levels, old=old))

    def write_series(self, patient: str, series: str, stack: np.ndarray, attrs: dict[str, Any],
                     plan: str) -> list[int]:
        """Write a whole series (shard, pyramid, array and group metadata, marked complete) in place of the old one.

        The old series stays readable until the new one is whole (see
        :mod:`ctengine.store.replace`); return the bytes of each level's shard, level 0 first.
        """
        path = names.series_path(patient, series)
        attrs = {**attrs, names.PIXEL_CRC32C: shard.pixel_crc32c(stack)}
        stacks = [stack, *pyramid.levels(stack, buffers=_level_buffers)]  # consumed before returning
        shards = [shard.encode_stack(level, buffer=f"shard{k}") for k, level in enumerate(stacks)]
        objects = {**{names.shard_key(names.level_name(k)): data for k, data in enumerate(shards)},
                   **_level_documents(stacks),
                   "zarr.json": self.series_document(path, attrs, plan, levels=len(stacks) - 1)}
        self.root.require_group(patient)
        replace.replace_group(self.fs, self.base, path, objects, local=self.local)
        return [len(data) for data in shards]

    # ------------------------------------------------------------ lung labels (features)

    def completed_lung(self, patient: str, series: str, plan: str) -> pd.DataFrame | None:
        """The per-slice features of a series' lung label when complete for ``plan``, else None."""
        try:
            lung = self.root[names.series_path(patient, series, f"{LABELS_GROUP}/{LUNG}")]
            if names.is_complete(lung.attrs, plan):
                return tables.read_matrix(lung[LUNG_FEATURES])
        except Exception:  # missing or half-written: compute again
            return None
        return None

    def write_lung(self, patient: str, series: str, mask: np.ndarray, table: pd.DataFrame, plan: str) -> None:
        """Store a series' lung mask (OME-Zarr label) and per-slice features, marked complete, in place of the old.

        The label group is built whole and swapped in (see
        :mod:`ctengine.store.replace`), so a failed write keeps the old label.
        """
        scale = schema.attrs_scale(self.series_attrs(patient, series))  # raises for a series that is not there
        series_path = names.series_path(patient, series)
        self._ensure_group(f"{series_path}/{LABELS_GROUP}", {"ome": schema.ome_labels()})
        path = f"{series_path}/{LABELS_GROUP}/{LUNG}"
        mask = mask.astype(np.uint8, copy=False)
        stacks = [mask, *pyramid.levels(mask, labels=True, buffers=_label_level_buffers)]  # consumed before returning
        ome = schema.ome_lung_label(path, scale=scale, levels=len(stacks) - 1)

        objects = {**{names.shard_key(names.level_name(k)): shard.encode_stack(level, buffer=f"label{k}")
                      for k, level in enumerate(stacks)},
                   **_level_documents(stacks), **tables.matrix_objects(LUNG_FEATURES, table),
                   "zarr.json": schema.group_document({"ome": ome, **names.complete(plan)})}
        replace.replace_group(self.fs, self.base, path, objects, local=self.local)

    def _ensure_group(self, path: str, attrs: dict[str, Any]) -> None:
        """Write the ``zarr.json`` of the group at ``path`` unless it holds these attributes already."""
        key = f"{path}/zarr.json"
        try:
            found = json.loads(self.fs.cat_file(f"{self.base}/{key}")).get("attributes")
        except (FileNotFoundError, ValueError):  # missing or unreadable: written below
            found = None
        if found != json.loads(json.dumps(attrs)):
            self.put(key, schema.group_document(attrs))

    # ------------------------------------------------------------ views

    def series(self, patient: str, series: str):
        """A dask-backed ``xarray.DataArray`` (instance, y, x) of raw values (see :func:`.views.series_array`)."""
        from .views import series_array

        return series_array(self, patient, series)

    def to_datatree(self):
        """The whole store as an ``xarray.DataTree`` (lazy, dask-backed), level 0 of every series and label.

        The pyramid levels are left out: OME-Zarr names every level's axes
        (z, y, x), and a DataTree cannot hold arrays sharing a dimension
        name at different sizes in one group or below it. Plain xarray
        opens the store the same way with ``drop_variables=pyramid.LEVEL_NAMES``.
        """
        import xarray as xr

        kwargs = {"storage_options": self.storage_options} if self.storage_options else {}
        return xr.open_datatree(self.url, engine="zarr", chunks={}, consolidated=False,
                                drop_variables=list(pyramid.LEVEL_NAMES), **kwargs)


#: each worker thread's pyramid levels of series and of lung labels, written again series after series
#: (see :func:`pyramid.levels`)
_level_buffers = ThreadBuffers()
_label_level_buffers = ThreadBuffers()


def _level_documents(stacks: list[np.ndarray]) -> dict[str, bytes]:
    """The ``zarr.json`` of every pyramid level array, keyed by level name."""
    return {f"{names.level_name(k)}/zarr.json": schema.stack_array_document(len(level), level.shape[1:], level.dtype)
            for k, level in enumerate(stacks)}


def open_store(url: str | os.PathLike, *, mode: str = "r", storage_options: dict | None = None) -> Store:
    """Open a ctengine store.

    Parameters
    ----------
    url : str or path
        Local path or fsspec URL.
    mode : {"r", "a"}
        Read an existing store, or open one for writing (created if missing).
    storage_options : dict, optional
        fsspec options of a remote store.

    Returns
    -------
    Store

    Raises
    ------
    NotAStoreError
        When the location is missing (``mode="r"``), a regular file, or not
        a ctengine store (``mode="r"``).

    Examples
    --------
    >>> store = open_store("covid.zarr")  # doctest: +SKIP
    >>> store.catalog.groupby("label").size()  # doctest: +SKIP
    """
    return Store(url, mode=mode, storage_options=storage_options)
