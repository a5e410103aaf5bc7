"""Plain numpy CT selection: the specification the fast kernels are tested against."""
from __future__ import annotations

import numpy as np

from ..constants import SELECTION_COLS, SELECTION_DARK_RAW, SELECTION_DIVISOR, SELECTION_ROWS


def dark_counts(stack: np.ndarray) -> np.ndarray:
    """Per slice, the number of raw < 300 pixels in rows 240..339, cols 120..369, as int64 (z,)."""
    return count_dark(stack[:, SELECTION_ROWS, SELECTION_COLS])


def count_dark(region: np.ndarray) -> np.ndarray:
    """Per slice of an already cut (z, y, x) region, the number of raw < 300 pixels, as int64 (z,)."""
    return (region < SELECTION_DARK_RAW).sum(axis=(1, 2)).astype(np.int64)


def keep_from_counts(counts: np.ndarray) -> np.ndarray:
    """The authors' rule: keep count > (max count - min count) / 1.5 (strict), over the series."""
    threshold = (counts.max() - counts.min()) / SELECTION_DIVISOR
    return counts > threshold


def mask_counts(masks: np.ndarray) -> np.ndarray:
    """Per slice, the number of mask > 0 pixels, as int64 (z,)."""
    return (masks > 0).sum(axis=(1, 2)).astype(np.int64)
