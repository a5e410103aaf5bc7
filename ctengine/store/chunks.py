"""Single chunks of a series' single-shard stacks, read by byte range (the loader's reads)."""
from __future__ import annotations

import os
import threading

import numpy as np

from . import names, shard
from .buffers import ThreadBuffers
from .handle import Store


class ChunkReader:
    """Reads single chunks of a series' single-shard stacks (raw slices, lung masks) by byte range.

    Local stores are read with ``os.pread`` on file descriptors kept open
    (thread safe); remote ones with ranged ``cat_file``.

    Parameters
    ----------
    store : Store
        The opened store.
    """

    def __init__(self, store: Store):
        self.store = store
        self.url = store.url
        self._local = store.local
        self._index: dict[str, np.ndarray] = {}
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()
        self._buffers = ThreadBuffers()

    def index(self, patient: str, series: str, n_slices: int, array: str = names.RAW) -> np.ndarray:
        """The (offset, nbytes) table of the shard of ``array`` (a path inside the series), read once."""
        path = self.store.shard_path(patient, series, array)
        if path not in self._index:
            try:
                tail = self._read(path, -names.shard_index_nbytes(n_slices), None)
            except FileNotFoundError:
                hint = " (run `ctengine features` first)" if array == names.LUNG_ARRAY else ""
                raise FileNotFoundError(f"{self.url}: {patient}/{series}/{array} is missing{hint}") from None
            self._index[path] = shard.shard_index(tail, n_slices)
        return self._index[path]

    def _fd(self, path: str) -> int:
        with self._lock:
            fd = self._fds.get(path)
            if fd is None:
                fd = self._fds[path] = os.open(path, os.O_RDONLY)
        return fd

    def _read(self, path: str, start: int, end: int | None) -> bytes:
        if not self._local:
            return self.store.fs.cat_file(path, start=start, end=end)
        fd = self._fd(path)
        if start < 0:
            size = os.fstat(fd).st_size
            start, end = size + start, size if end is None else end
        return os.pread(fd, end - start, start)

    def read_into(self, patient: str, series: str, z: int, n_slices: int, out: np.ndarray,
                  array: str = names.RAW) -> None:
        """Decompress slice ``z`` of ``array`` straight into ``out`` (C-contiguous (y, x) of its dtype)."""
        offset, nbytes = (int(v) for v in self.index(patient, series, n_slices, array)[z])
        path = self.store.shard_path(patient, series, array)
        if nbytes > out.nbytes + shard.FRAME_OVERHEAD:  # a missing chunk's sentinel, or a damaged index
            raise ValueError(f"{self.url}: the chunk of slice z={z} of {patient}/{series}/{array} is missing or "
                             f"its index is damaged ({nbytes} bytes for a {out.nbytes}-byte slice): run "
                             f"`ctengine verify {self.url}`")
        if not self._local:
            shard.decode_chunk_into(self._read(path, offset, offset + nbytes), out)
            return
        # the compressed chunk, read into memory used again (nbytes is at most this size, checked above)
        view = memoryview(self._buffers.get("frame", out.nbytes + shard.FRAME_OVERHEAD, np.uint8))[:nbytes]
        if os.preadv(self._fd(path), [view], offset) != nbytes:
            raise OSError(f"{path}: short read of the chunk of slice {z}")
        shard.decode_chunk_into(view, out)

    def close(self) -> None:
        """Close the file descriptors of a local store."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
