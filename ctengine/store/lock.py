"""The writer's lock of a local store."""
from __future__ import annotations

import contextlib
import os
import socket
import time
from typing import Iterator

from .names import LOCK_SUFFIX, is_remote, lock_path


class StoreBusyError(RuntimeError):
    """Another ingest holds the store's lock."""


@contextlib.contextmanager
def store_lock(url: str) -> Iterator[None]:
    """Hold an exclusive lock on a local store; refuse if another ingest holds it.

    The lock is an ``flock`` on the file ``STORE.lock`` beside the store
    (inside it, zarr would see a foreign object), released by the kernel if
    the process dies, so a killed ingest never leaves a stale lock. Remote
    (fsspec) stores are not locked.

    Raises
    ------
    StoreBusyError
        When another process holds the lock.
    """
    if is_remote(url):
        yield
        return
    import fcntl

    path = lock_path(url)
    os.makedirs(path.removesuffix(LOCK_SUFFIX), exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise StoreBusyError(f"store {url!r} is being written by {holder}; wait for it to finish") from None
        handle.truncate(0)
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)
