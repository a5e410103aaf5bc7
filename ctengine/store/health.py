"""Cheap structural checks of stored series, and the damaged list ``verify`` leaves for ``ingest``.

:func:`series_damage` reads two small metadata documents and the shard's
index (its last bytes) and compares the shard's size with what the index
says; it decodes no pixel, so ``ingest`` runs it on every stored series.
Damage only a decode finds (pixels that no longer match their checksum) is
found by ``verify``, which records the series in the root attribute
:data:`~ctengine.store.names.DAMAGED` for the next ``ingest`` to rewrite.
"""
from __future__ import annotations

import json

import numpy as np

from . import names, shard
from .handle import Store

__all__ = ["DamagedSeriesError", "damaged_series", "record_damaged", "series_damage"]


class DamagedSeriesError(ValueError):
    """Stored series are damaged and the sources given to ingest do not hold them."""


def _document(store: Store, key: str, what: str) -> tuple[dict | None, list[tuple[str, str]]]:
    """The parsed ``zarr.json`` at ``key``, or None and the problem (missing, unreadable)."""
    try:
        document = json.loads(store.fs.cat_file(f"{store.base}/{key}"))
    except FileNotFoundError:
        return None, [(key, f"{what} metadata missing")]
    except (OSError, ValueError) as exc:
        return None, [(key, f"{what} metadata unreadable: {exc}")]
    if not isinstance(document, dict) or document.get("zarr_format") != 3:
        return None, [(key, f"{what} metadata is not zarr v3 metadata")]
    return document, []


def group_damage(store: Store, path: str, what: str) -> list[tuple[str, str]]:
    """The problem of the group at ``path`` (its ``zarr.json`` missing or unreadable), if any."""
    return _document(store, f"{path}/zarr.json", what)[1]


def series_damage(store: Store, patient: str, series: str, n_slices: int | None = None) -> list[tuple[str, str]]:
    """Structural problems of a stored series as (path, reason); empty when it looks whole.

    Checks the series group's and the raw array's ``zarr.json`` (present,
    parseable), the shard (present, its index's checksum, its size equal to
    the chunks and index it lists) and that no chunk is missing.

    Parameters
    ----------
    store : Store
    patient, series : str
    n_slices : int, optional
        Slices the catalog lists; a different array length is a problem.

    Returns
    -------
    list of (str, str)
    """
    path = names.series_path(patient, series)
    problems = group_damage(store, path, "series group")
    array, found = _document(store, f"{path}/{names.RAW}/zarr.json", "raw array")
    problems += found
    if array is None:
        return problems
    count = int(array["shape"][0])
    if n_slices is not None and count != n_slices:
        problems.append((f"{path}/{names.RAW}", f"{count} slices stored, catalog lists {n_slices}"))
    key = names.raw_shard_key(patient, series)
    try:
        size = int(store.fs.size(f"{store.base}/{key}"))
        tail_bytes = names.shard_index_nbytes(count)
        tail = store.fs.cat_file(f"{store.base}/{key}", start=max(size - tail_bytes, 0), end=size)
        index = shard.shard_index(tail, count) if size >= tail_bytes else None
    except FileNotFoundError:
        return problems + [(key, "shard missing")]
    except ValueError:
        return problems + [(key, f"shard index unreadable ({size} bytes: truncated or overwritten)")]
    if index is None:
        return problems + [(key, f"shard of {size} bytes is shorter than its index ({tail_bytes} bytes)")]
    empty = np.all(index == np.uint64(2**64 - 1), axis=1)
    problems += [(f"{path}/{names.RAW} chunk z{z}", "chunk missing") for z in np.flatnonzero(empty)]
    ends = index[~empty].sum(axis=1)
    expected = int(ends.max()) + tail_bytes if len(ends) else tail_bytes
    if size != expected:
        problems.append((key, f"shard is {size} bytes, its index says {expected}"))
    return problems


def damaged_series(store: Store) -> dict[str, str]:
    """The series ``verify`` last recorded as damaged: {"patient/series": reason}."""
    return dict(store.root.attrs.get(names.DAMAGED) or {})


def record_damaged(store: Store, damaged: dict[str, str]) -> None:
    """Record the damaged series in the root attributes (written only when they change)."""
    if damaged_series(store) != damaged:
        store.root.update_attributes({names.DAMAGED: dict(sorted(damaged.items()))})
