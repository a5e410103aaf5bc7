"""Every name of the store contract: paths, keys, markers, columns and defaults.

::

    STORE/zarr.json                          root: format, codec
    STORE/catalog/<column>                   one 1-D array per catalog column (dim "slice")
    STORE/quarantine/<column>                files refused by ingest (location, reason)
    STORE/<patient>/zarr.json                label and demographics
    STORE/<patient>/<series>/zarr.json       OME-Zarr 0.5 multiscales; thickness, spacing,
                                             rescale, kernel, instances, checksums, pixel
                                             CRC-32C, sources
    STORE/<patient>/<series>/0               raw uint16 (z, y, x): 1 slice per chunk,
                                             the series in one shard (key ``0/c/0/0/0``)
    STORE/<patient>/<series>/1 .. n          the pyramid: y and x halved per level down to 64 pixels
                                             (2 x 2 block means), same layout
    STORE/<patient>/<series>/labels/lung/0   lung masks (uint8), same layout; levels 1 .. n by block mode
    STORE/<patient>/<series>/labels/lung/features   per-slice features (z, feature)
    STORE.features/{slices,series,patients}.parquet  feature tables beside the store
    STORE.lock                               lock file of a local ingest
    STORE.partial/                           groups being written on a local disk, swapped in once whole

A series group and its lung-label group are complete when their attribute
``ctengine`` is ``{"complete": true, "plan": <sha256>}``; the plan names
what they were computed from, so a rerun skips them only for the same input.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import fsspec

from ..constants import DEFAULT_INTERCEPT, DEFAULT_SLOPE

FORMAT = "ctengine-store"
FORMAT_VERSION = 1
#: the full-resolution level of a series and of a label group (the stored slices)
RAW = "0"
#: dimension name of the stored tables
TABLE_DIM = "slice"
CATALOG = "catalog"
QUARANTINE = "quarantine"
QUARANTINE_COLUMNS = ("location", "reason")
#: prefix of the reason of an entry the ingest skipped on purpose (the rest of the table was refused)
SKIPPED_PREFIX = "skipped: "
#: OME-Zarr labels group of a series and the lung label inside it
LABELS_GROUP = "labels"
LUNG = "lung"
LUNG_ARRAY = f"{LABELS_GROUP}/{LUNG}/{RAW}"
#: per-slice feature matrix inside the lung-label group
LUNG_FEATURES = "features"
#: colours of the lung label values (1 right lung, 2 left lung)
LUNG_COLORS = ({"label-value": 1, "rgba": [230, 80, 60, 255]}, {"label-value": 2, "rgba": [60, 120, 230, 255]})
#: names of the lung label values (OME-Zarr image-label properties)
LUNG_PROPERTIES = ({"label-value": 1, "name": "right lung"}, {"label-value": 2, "name": "left lung"})
#: suffix of the folder of Parquet feature tables beside a store, and the tables in it
FEATURES_SUFFIX = ".features"
FEATURE_TABLES = ("slices", "series", "patients")
LOCK_SUFFIX = ".lock"
#: suffix of the folder beside a local store where a group is written before it is swapped in
PARTIAL_SUFFIX = ".partial"
#: root attribute where ``verify`` records the damaged series ({"patient/series": reason}) for ingest to heal
DAMAGED = "damaged"
#: catalog columns written by the feature pipeline and their value for a slice without features
FEATURE_COLUMNS: dict[str, Any] = {"selected": False, "selected_by_area": False, "dark_count": -1}
#: series attribute: the CRC-32C of each slice's little-endian pixels, written with the pixels in one swap.
#: The feature pass checks it (0.03 ms a slice against SHA-256's 0.25); the catalog's SHA-256 stays the
#: checksum that ``verify`` proves the store with
PIXEL_CRC32C = "pixel_crc32c"
#: attribute holding the completion marker
MARKER = "ctengine"
#: value of the series attributes ``spacing_mm`` and ``thickness_mm`` when no metadata gives them
UNKNOWN = "unknown"
#: catalog columns whose value (the first slice's) becomes an attribute of the series group
SERIES_CATALOG_COLUMNS = ("thickness_mm", "spacing_y_mm", "spacing_x_mm", "slope", "intercept", "kernel",
                          "window_center", "window_width")


def is_remote(url: str) -> bool:
    """True for an fsspec URL of a remote filesystem (``s3://``, ``gs://``, chained ``a::b``).

    Local paths and ``file://`` / ``local://`` URLs are not remote.
    """
    if "://" not in url:
        return False
    return "::" in url or fsspec.core.split_protocol(url)[0] not in ("file", "local")


def resolve(url: str | os.PathLike) -> str:
    """A store or source location the workers can use: local paths made absolute, URLs unchanged."""
    url = os.fspath(url)
    return url if "://" in url else os.path.abspath(url)


def features_path(url: str | os.PathLike) -> str:
    """Folder of the Parquet feature tables beside a store (``STORE.features``)."""
    return os.fspath(url).rstrip("/") + FEATURES_SUFFIX


def lock_path(url: str) -> str:
    """Local lock file beside a store (``STORE.lock``)."""
    return url.split("://", 1)[-1].rstrip("/") + LOCK_SUFFIX


def series_path(patient: str, series: str, array: str | None = None) -> str:
    """Path of a series group, or of ``array`` (e.g. :data:`RAW`, :data:`LUNG_ARRAY`) inside it."""
    return f"{patient}/{series}" if array is None else f"{patient}/{series}/{array}"


def shard_key(array_path: str) -> str:
    """Store key of the single shard of a stack array (e.g. ``patient1/SR_2/0/c/0/0/0``)."""
    return f"{array_path}/c/0/0/0"


def level_name(level: int) -> str:
    """Array name of pyramid level ``level`` of a series or label (0: :data:`RAW`)."""
    return str(level)


def level_paths(attrs: Mapping[str, Any]) -> list[str]:
    """Array names of the levels an image or label group's OME-Zarr metadata lists (level 0 first); [] if none."""
    try:
        return [str(d["path"]) for d in attrs["ome"]["multiscales"][0]["datasets"]]
    except (KeyError, IndexError, TypeError):
        return []


def raw_shard_key(patient: str, series: str) -> str:
    """Store key of the single shard holding a series' raw stack."""
    return shard_key(series_path(patient, series, RAW))


def shard_index_nbytes(n_chunks: int) -> int:
    """Bytes at the end of a shard of ``n_chunks`` chunks: (offset, nbytes) uint64 pairs and a CRC-32C."""
    return 16 * n_chunks + 4


def incomplete() -> dict[str, Any]:
    """Attributes of a group being written."""
    return {MARKER: {"complete": False}}


def complete(plan: str) -> dict[str, Any]:
    """Attributes of a group written completely from the input named by ``plan``."""
    return {MARKER: {"complete": True, "plan": plan}}


def is_complete(attrs: Mapping[str, Any], plan: str) -> bool:
    """Whether a group's attributes mark it complete for ``plan``."""
    state = attrs.get(MARKER, {})
    return bool(state.get("complete")) and state.get("plan") == plan


def series_attributes(values: Mapping[str, Any], *, groups: list[str]) -> dict[str, Any]:
    """Attributes of a series group from the plain values of :data:`SERIES_CATALOG_COLUMNS`.

    The two spacings become one ``spacing_mm`` [y, x]; it and
    ``thickness_mm`` are :data:`UNKNOWN` when no metadata gives them (never
    a guessed value). ``groups`` are the dataset groups the series was found
    under.
    """
    attrs = {key: values[key] for key in SERIES_CATALOG_COLUMNS if key not in ("spacing_y_mm", "spacing_x_mm")}
    pair = (values["spacing_y_mm"], values["spacing_x_mm"])
    attrs["spacing_mm"] = UNKNOWN if None in pair else list(pair)
    if attrs["thickness_mm"] is None:
        attrs["thickness_mm"] = UNKNOWN
    attrs["groups"] = groups
    return attrs


def rescale(attrs: Mapping[str, Any]) -> tuple[float, float]:
    """(slope, intercept) of a series (HU = raw * slope + intercept), defaults when unknown.

    Only a missing (None) value takes the default, so an intercept of 0 stays 0.

    Examples
    --------
    >>> rescale({"slope": None, "intercept": 0.0})
    (1.0, 0.0)
    >>> rescale({})
    (1.0, -1024.0)
    """
    slope, intercept = attrs.get("slope"), attrs.get("intercept")
    return (float(DEFAULT_SLOPE if slope is None else slope),
            float(DEFAULT_INTERCEPT if intercept is None else intercept))


def spacing(attrs: Mapping[str, Any]) -> tuple[float, float] | None:
    """(y, x) pixel spacing in mm of a series, or None when unknown (:data:`UNKNOWN`, None or missing).

    Examples
    --------
    >>> spacing({"spacing_mm": [0.7, 0.75]})
    (0.7, 0.75)
    >>> spacing({"spacing_mm": "unknown"}) is None
    True
    """
    value = attrs.get("spacing_mm")
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        return None
    return (float(value[0]), float(value[1]))


def thickness(attrs: Mapping[str, Any]) -> float | None:
    """Slice thickness in mm of a series, or None when unknown (:data:`UNKNOWN`, None or missing).

    Examples
    --------
    >>> thickness({"thickness_mm": 1.5}), thickness({"thickness_mm": "unknown"})
    (1.5, None)
    """
    value = attrs.get("thickness_mm")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
