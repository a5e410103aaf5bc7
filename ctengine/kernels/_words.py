"""A one-byte mask seen as 8-pixel words, so CPU kernels skip eight pixels outside the mask at a time."""
from __future__ import annotations

import numpy as np


def mask_words(mask: np.ndarray) -> np.ndarray:
    """The uint64 words of a C-contiguous one-byte (z, y, x) mask whose rows are a multiple of 8 pixels;
    empty otherwise (the kernels then look at every pixel).

    Examples
    --------
    >>> mask_words(np.zeros((1, 2, 16), np.uint8)).shape, mask_words(np.zeros((1, 2, 12), np.uint8)).shape
    ((4,), (0,))
    """
    if mask.dtype.itemsize == 1 and mask.flags.c_contiguous and mask.shape[-1] % 8 == 0 and mask.size:
        return mask.reshape(-1).view(np.uint8).view(np.uint64)
    return np.zeros(0, np.uint64)
