"""Per-slice kernels on numpy (Numba CPU), cupy (CUDA) and dask arrays.

Each public function has a plain numpy/scipy reference implementation
(``method="reference"``) that is its specification; the fast paths are
tested against it.
"""
from .lung import lung_mask
from .normalize import MODES, WINDOW_PRESETS, RunningMoments, normalize
from .selection import LungAreaSelection, Selection, select_slices, select_slices_by_lung_area
from .stats import STAT_COLUMNS, hu_hist_edges, hu_stats

__all__ = ["MODES", "WINDOW_PRESETS", "LungAreaSelection", "RunningMoments", "STAT_COLUMNS", "Selection",
           "hu_hist_edges", "hu_stats", "lung_mask", "normalize", "select_slices", "select_slices_by_lung_area"]
