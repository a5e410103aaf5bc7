"""Memory a thread uses again, call after call: no new allocation (and no page faults) per slice or series."""
from __future__ import annotations

import threading

import numpy as np

from ..constants import MAX_KEPT_BUFFER_BYTES


class ThreadBuffers(threading.local):
    """Named buffers, one set per thread; each grows to the largest request and is kept up to a size.

    Examples
    --------
    >>> buffers = ThreadBuffers()
    >>> first = buffers.get("stack", 10, np.uint16)
    >>> np.shares_memory(first, buffers.get("stack", 4, np.uint16))
    True
    """

    def get(self, name: str, count: int, dtype: np.dtype | type) -> np.ndarray:
        """A 1-D array of ``count`` items of ``dtype``: the thread's buffer ``name``, or a new one.

        A new buffer is kept for the next call when at most
        :data:`~ctengine.constants.MAX_KEPT_BUFFER_BYTES`; a larger request
        gets memory of its own, returned after use.
        """
        found = getattr(self, name, None)
        if found is not None and found.dtype == np.dtype(dtype) and found.size >= count:
            return found[:count]
        fresh = np.empty(count, dtype)
        if fresh.nbytes <= MAX_KEPT_BUFFER_BYTES:
            setattr(self, name, fresh)
        return fresh
