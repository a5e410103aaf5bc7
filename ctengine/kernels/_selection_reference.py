"""Plain numpy CT selection: the specification the fast kernels are tested against."""
from __future__ import annotations

import numpy as np

from ..constants import SELECTION_COLS, SELECTION_DARK_RAW, SELECTION_DIVISOR, SELECTION_ROWS


def dark_counts(stack: np.ndarray, rows: slice = SELECTION_ROWS, cols: slice = SELECTION_COLS,
                dark: int = SELECTION_DARK_RAW) -> np.ndarray:
    """Per slice, the number of raw < dark pixels in the region (rows 240..339, cols 120..369 of 512), int64 (z,)."""
    return count_dark(stack[:, rows, cols], dark)


def count_dark(region: np.ndarray, dark: int = SELECTION_DARK_RAW) -> np.ndarray:
    """Per slice of an already cut (z, y, x) region, the number of raw < dark pixels, as int64 (z,)."""
    return (region.astype(np.int64) < dark).sum(axis=(1, 2)).astype(np.int64)


def keep_from_counts(counts: np.ndarray) -> np.ndarray:
    """The authors' rule: keep count > (max count - min count) / 1.5 (strict), over the series."""
    threshold = (counts.max() - counts.min()) / SELECTION_DIVISOR
    return counts > threshold


def mask_counts(masks: np.ndarray) -> np.ndarray:
    """Per slice, the number of mask > 0 pixels, as int64 (z,)."""
    return (masks > 0).sum(axis=(1, 2)).astype(np.int64)
