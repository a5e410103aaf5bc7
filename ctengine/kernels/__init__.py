"""Per-slice kernels on numpy (Numba CPU), cupy (CUDA) and dask arrays.

Each public function has a plain numpy/scipy reference implementation
(``method="reference"``) that is its specification; the fast paths are
tested against it. Every kernel takes raw stored values (unsigned integers,
HU = raw * slope + intercept) or, with ``units="hu"``, Hounsfield units;
signed or float input must say which. Pixel spacing is ``spacing`` in mm,
and None always means unknown.
"""
from ._validate import METHODS, UNITS, SpacingUnknownWarning, nominal_spacing
from .lung import lung_mask
from .normalization import MODES, WINDOW_PRESETS, RunningMoments, normalize
from .selection import LungAreaSelection, Selection, select_slices, select_slices_by_lung_area, selection_region
from .stats import STAT_COLUMNS, hu_hist_edges, hu_stats

__all__ = ["METHODS", "MODES", "UNITS", "WINDOW_PRESETS", "LungAreaSelection", "RunningMoments", "STAT_COLUMNS",
           "Selection", "SpacingUnknownWarning", "hu_hist_edges", "hu_stats", "lung_mask", "nominal_spacing",
           "normalize", "select_slices", "select_slices_by_lung_area", "selection_region"]
