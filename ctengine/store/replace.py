"""Replace a whole group of the store (a series, a table) so that a failed write never costs the old one.

The group's objects are built first (zarr metadata rendered in memory, so
the documents are exactly what zarr writes), then written:

- on a local disk, into a temporary folder beside the store
  (``STORE.partial/<id>``) that is swapped with the old group in one
  ``renameat2(RENAME_EXCHANGE)`` where Linux offers it, else by two renames;
  the old group is removed only once the new one is in place;
- on a remote (fsspec) store, where there is no rename of a folder, data
  first and the group's ``zarr.json`` (attributes and completion marker)
  last, so the old complete marker is replaced only after the new data is in.
"""
from __future__ import annotations

import ctypes
import functools
import os
import shutil
import uuid
from typing import Callable

import fsspec
import zarr
from zarr.storage import MemoryStore

from . import names

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def group_objects(path: str, build: Callable[[zarr.Group], None]) -> dict[str, bytes]:
    """The objects of the group at ``path`` that ``build`` writes, keyed relative to ``path``.

    ``build`` receives the root of an empty in-memory zarr hierarchy. The
    group's own ``zarr.json`` comes last, so writing the objects in order
    puts its attributes (and completion marker) after everything else.
    """
    found: dict = {}
    build(zarr.open_group(MemoryStore(found), mode="w", zarr_format=3))
    prefix = f"{path}/"
    objects = {key[len(prefix):]: value.to_bytes() for key, value in found.items()
               if key.startswith(prefix) and key != f"{prefix}zarr.json"}
    objects["zarr.json"] = found[f"{prefix}zarr.json"].to_bytes()
    return objects


def write_file(path: str, data: bytes | memoryview) -> None:
    """Write one local file (the single place local store objects are written, so tests can fail it)."""
    with open(path, "wb") as handle:
        handle.write(data)


@functools.lru_cache(maxsize=1)
def _renameat2():
    """The C library's ``renameat2``, or None where it has none."""
    try:
        return ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None


def _exchange(a: str, b: str) -> bool:
    """Swap two local paths atomically (Linux ``renameat2``); False where the system cannot."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    return renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def replace_local(base: str, path: str, objects: dict[str, bytes | memoryview]) -> None:
    """Write ``objects`` into a temporary folder beside the store and swap it in as ``base/path``.

    On any error (a full disk) the temporary folder is removed and the old
    group is untouched.
    """
    partial = f"{base}{names.PARTIAL_SUFFIX}"
    tmp = f"{partial}/{uuid.uuid4().hex}"
    target = f"{base}/{path}"
    try:
        _make_temporary(tmp, partial)
        for folder in _folders(objects):
            os.mkdir(f"{tmp}/{folder}")
        for key, data in objects.items():
            write_file(f"{tmp}/{key}", data)
    except BaseException:
        _remove(tmp, partial)
        raise
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if not os.path.lexists(target):
        os.rename(tmp, target)
    elif not _exchange(tmp, target):
        os.rename(target, f"{tmp}.old")  # kept until the new group is in place
        os.rename(tmp, target)
        tmp = f"{tmp}.old"
    _remove(tmp, partial)


def _make_temporary(tmp: str, partial: str) -> None:
    """Create the folder ``tmp`` inside ``partial``, which another write may remove once it is empty."""
    while True:
        os.makedirs(partial, exist_ok=True)
        try:
            os.mkdir(tmp)
            return
        except FileNotFoundError:  # ``partial`` was removed between the two calls: create it again
            continue


def _folders(objects: dict[str, bytes | memoryview]) -> list[str]:
    """The folders below the group's own that the keys of ``objects`` need, parents first."""
    folders = set()
    for key in objects:
        parts = key.split("/")[:-1]
        folders.update("/".join(parts[:n]) for n in range(1, len(parts) + 1))
    return sorted(folders, key=lambda folder: (folder.count("/"), folder))


def _remove(tmp: str, partial: str) -> None:
    """Remove a temporary folder, and the folder of temporary folders once empty."""
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        os.rmdir(partial)
    except OSError:  # another write is using it (or it is gone)
        pass


def replace_remote(fs: fsspec.AbstractFileSystem, base: str, path: str, objects: dict[str, bytes | memoryview]) -> None:
    """Write ``objects`` under ``base/path`` in order: the data, then the group's ``zarr.json`` last."""
    for key, data in objects.items():
        fs.pipe_file(f"{base}/{path}/{key}", bytes(data))


def replace_group(fs: fsspec.AbstractFileSystem, base: str, path: str, objects: dict[str, bytes | memoryview], *,
                  local: bool) -> None:
    """Replace the group at ``path`` of the store at ``base`` by ``objects`` (see the module)."""
    if local:
        replace_local(base, path, objects)
    else:
        replace_remote(fs, base, path, objects)
