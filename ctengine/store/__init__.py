"""The store: the one package that knows the format of a ctengine store.

A zarr v3 hierarchy keyed ``/<patient>/<series>`` (see :mod:`ctengine.store.names`
for every path, key and marker), readable with plain ``zarr``, ``xarray``
and OME-Zarr readers. Modules:

- :mod:`~ctengine.store.names`: paths, keys, markers, catalog columns, rescale defaults
- :mod:`~ctengine.store.schema`: codec, root attributes, stack arrays, OME-Zarr metadata
- :mod:`~ctengine.store.shard`: whole-shard encoding and decoding
- :mod:`~ctengine.store.pyramid`: the multiscale levels of series and labels
- :mod:`~ctengine.store.tables`: DataFrames stored as zarr arrays
- :mod:`~ctengine.store.location`: a location's filesystem and root group; what cannot be a store
- :mod:`~ctengine.store.handle`: :class:`Store`, the handle everything reads and writes through
- :mod:`~ctengine.store.views`: xarray views of series (mm coordinates where known)
- :mod:`~ctengine.store.chunks`: single chunks by byte range (the loader's reads)
- :mod:`~ctengine.store.replace`: whole groups written beside the old ones and swapped in
- :mod:`~ctengine.store.health`: cheap structural checks of series, the damaged list verify records
- :mod:`~ctengine.store.lock`, :mod:`~ctengine.store.verify`, :mod:`~ctengine.store.info`
"""
from __future__ import annotations

from .chunks import ChunkReader
from .handle import Store, open_store
from .health import DamagedSeriesError
from .info import store_info
from .location import NotAStoreError, filesystem, open_root
from .lock import StoreBusyError, store_lock
from .names import features_path, resolve
from .verify import VerifyReport, verify

__all__ = ["ChunkReader", "DamagedSeriesError", "NotAStoreError", "Store", "StoreBusyError", "VerifyReport",
           "features_path", "filesystem", "open_root", "open_store", "resolve", "store_info", "store_lock", "verify"]
