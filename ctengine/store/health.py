"""Cheap structural checks of stored series, and the damaged list ``verify`` leaves for ``ingest``.

:func:`series_damage` reads two small metadata documents and the shard's
index (its last bytes) and compares the shard's size with what the index
says, for level 0 and every pyramid level; it decodes no pixel, so ``ingest`` runs it on every stored series.
Damage only a decode finds (pixels that no longer match their checksum) is
found by ``verify``, which records the series in the root attribute
:data:`~ctengine.store.names.DAMAGED` for the next ``ingest`` to rewrite.
"""
from __future__ import annotations

import json

import numpy as np

from . import names, pyramid, shard
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


def series_damage(store: Store, patient: str, series: str, n_slices: int | None = None, *,
                  older_format: bool = True) -> list[tuple[str, str]]:
    """Structural problems of a stored series as (path, reason); empty when it looks whole.

    Checks the series group's and the raw array's ``zarr.json`` (present,
    parseable), the shard (present, its index's checksum, its size equal to
    the chunks and index it lists), that no chunk is missing, and the same
    of every pyramid level (:mod:`ctengine.store.pyramid`) the slice size calls for.

    Parameters
    ----------
    store : Store
    patient, series : str
    n_slices : int, optional
        Slices the catalog lists; a different array length is a problem.
    older_format : bool
        Count a series that lists level 0 only (written before pyramids) as
        a problem, for ingest to write it again with its pyramid; ``verify``
        does not (its pixels are whole).

    Returns
    -------
    list of (str, str)
    """
    path = names.series_path(patient, series)
    group, problems = _document(store, f"{path}/zarr.json", "series group")
    array, found = _document(store, f"{path}/{names.RAW}/zarr.json", "raw array")
    problems += found
    if array is None:
        return problems
    shape = tuple(int(n) for n in array["shape"])
    if n_slices is not None and shape[0] != n_slices:
        problems.append((f"{path}/{names.RAW}", f"{shape[0]} slices stored, catalog lists {n_slices}"))
    problems += _shard_damage(store, f"{path}/{names.RAW}", shape[0])
    if group is not None:
        problems += _pyramid_damage(store, path, group.get("attributes") or {}, shape, older_format)
    return problems


def _pyramid_damage(store: Store, path: str, attrs: dict, shape: tuple[int, ...],
                    older_format: bool) -> list[tuple[str, str]]:
    """Problems of the pyramid of the series at ``path`` whose level 0 has ``shape``."""
    expected = [names.level_name(k) for k in range(1 + pyramid.level_count(shape[1:]))]
    listed = names.level_paths(attrs)
    if listed == [names.RAW] != expected:
        return [(path, "no pyramid (written before pyramids)")] if older_format else []
    if listed != expected:
        return [(path, f"pyramid levels {listed} listed where {expected} belong")]
    problems = []
    for k, level_shape in enumerate(pyramid.level_shapes(shape), 1):
        array_path = f"{path}/{names.level_name(k)}"
        array, found = _document(store, f"{array_path}/zarr.json", f"pyramid level {k} array")
        problems += found
        if array is not None and tuple(array["shape"]) != level_shape:
            problems.append((array_path, f"shape {tuple(array['shape'])}, level {k} of {shape} is {level_shape}"))
        elif array is not None:
            problems += _shard_damage(store, array_path, level_shape[0])
    return problems


def _shard_damage(store: Store, array_path: str, count: int) -> list[tuple[str, str]]:
    """Problems of the one shard of the stack array at ``array_path`` holding ``count`` chunks."""
    key = names.shard_key(array_path)
    try:
        size = int(store.fs.size(f"{store.base}/{key}"))
        tail_bytes = names.shard_index_nbytes(count)
        tail = store.fs.cat_file(f"{store.base}/{key}", start=max(size - tail_bytes, 0), end=size)
        index = shard.shard_index(tail, count) if size >= tail_bytes else None
    except FileNotFoundError:
        return [(key, "shard missing")]
    except ValueError:
        return [(key, f"shard index unreadable ({size} bytes: truncated or overwritten)")]
    if index is None:
        return [(key, f"shard of {size} bytes is shorter than its index ({tail_bytes} bytes)")]
    empty = np.all(index == np.uint64(2**64 - 1), axis=1)
    problems = [(f"{array_path} chunk z{z}", "chunk missing") for z in np.flatnonzero(empty)]
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
