"""Where a store lives: its fsspec filesystem, its root group, and whether a location can be a store."""
from __future__ import annotations

import os
from typing import Any

import fsspec
import zarr

from . import names

__all__ = ["NotAStoreError", "check_location", "filesystem", "is_local", "open_root"]


def filesystem(url: str, storage_options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """fsspec filesystem and root path of a location (remote: no listings cache, see :class:`Store`)."""
    options = dict(storage_options or {})
    if names.is_remote(url):
        options.setdefault("use_listings_cache", False)
    fs, root = fsspec.core.url_to_fs(url, **options)
    return fs, root.rstrip("/")


def open_root(url: str, *, mode: str = "r", storage_options: dict | None = None) -> zarr.Group:
    """The root zarr group of a location (local path or fsspec URL), zarr format 3."""
    kwargs: dict[str, Any] = {}
    if "://" in url:
        options = dict(storage_options or {})
        if names.is_remote(url):
            options.setdefault("use_listings_cache", False)
        kwargs = {"storage_options": options} if options else {}
    return zarr.open_group(url, mode=mode, zarr_format=3, **kwargs)


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return bool({"file", "local"} & set(protocols))


class NotAStoreError(FileNotFoundError, ValueError):
    """Not a ctengine store: missing, a regular file or something else (as zarr's FileNotFoundError, a ValueError)."""


def check_location(url: str, mode: str) -> None:
    """Refuse a local store location that cannot be a store, naming it and what to give instead.

    Parameters
    ----------
    url : str
        Resolved location (:func:`ctengine.store.names.resolve`); URLs other
        than ``file://`` are left to zarr.
    mode : {"r", "a"}
        ``"r"``: the location must exist and be a folder with a root group.
        ``"a"``: it must not be a regular file (a missing folder is created).

    Raises
    ------
    NotAStoreError
    """
    if "://" in url and not url.startswith("file://"):
        return
    path = url.split("://", 1)[-1]
    if os.path.isfile(path):
        raise NotAStoreError(f"{url} is a file, not a store: give " + ("a folder (created if missing)" if mode == "a"
                                                                     else "the folder ctengine ingest --store wrote"))
    if mode == "a":
        return
    if not os.path.exists(path):
        raise NotAStoreError(f"no store at {url}: check the path, or write one with "
                             f"ctengine ingest SOURCES --store {url}")
    if not os.path.isfile(os.path.join(path, "zarr.json")):
        raise NotAStoreError(f"{url} is a folder but not a ctengine store (no zarr.json): give the folder "
                             f"ctengine ingest --store wrote")
