"""Per-slice first-order HU statistics inside a lung mask.

:func:`hu_stats` takes numpy, cupy or dask arrays and returns a dict of
arrays of the same kind; the tables built from them live in
:mod:`ctengine.features.aggregate`.
"""
from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np

from ..constants import DEFAULT_INTERCEPT, DEFAULT_SLOPE, HU_HIST_BINS, HU_HIST_RANGE, STATS_PERCENTILES
from . import _stats_reference as _ref
from ._backend import array_kind, as_stack
from ._validate import block_backend, kernel_input, spacing_pair

__all__ = ["hu_stats", "STAT_COLUMNS", "hu_hist_edges"]

FLOAT_COLUMNS = _ref.FLOAT_COLUMNS
#: per-slice keys of :func:`hu_stats`, besides "histogram"
STAT_COLUMNS = ("count", "area_mm2", *FLOAT_COLUMNS)
_NF = len(FLOAT_COLUMNS)


def hu_hist_edges() -> np.ndarray:
    """The 65 edges in HU of the fixed histogram: numpy.linspace(-1024, 200, 65), bins 19.125 HU wide."""
    return np.linspace(HU_HIST_RANGE[0], HU_HIST_RANGE[1], HU_HIST_BINS + 1)


def hu_stats(x: Any, mask: Any, *, spacing: float | tuple[float, float] | None = None,
             units: Literal["raw", "hu"] | None = None,
             slope: float = DEFAULT_SLOPE, intercept: float = DEFAULT_INTERCEPT,
             method: Literal["auto", "reference", "cuda"] = "auto") -> dict[str, Any]:
    """First-order HU statistics of each slice over the pixels where mask > 0.

    HU = raw * slope + intercept in float64. Statistics follow pyradiomics /
    IBSI first order: population variance, skewness m3 / m2^1.5, kurtosis
    m4 / m2^2 (no -3); a flat region (all values equal) gives std, MAD,
    skewness and kurtosis 0.

    Parameters
    ----------
    x : numpy, cupy or dask array, (z, y, x) or (y, x)
        Raw integer values, 8 or 16 bits (uint16 for COVID-CTset), or
        Hounsfield units with ``units="hu"``.
    mask : array of x's kind (a numpy mask is accepted with a dask x), uint8 or bool
        Same shape as x; pixels with mask > 0 are counted (lung labels 1, 2).
    spacing : float or (float, float), optional
        Pixel spacing (y, x) in mm; None means unknown and area_mm2 is NaN.
    units : {"raw", "hu"}, optional
        What x holds. Default: raw for unsigned integers; signed or float
        input must say ``units="hu"`` (rounded to whole HU, below -1024
        counted as -1024, with the default slope and intercept) or
        ``units="raw"``.
    slope, intercept : float
        Rescale of raw to HU (slope > 0).
    method : {"auto", "reference", "cuda"}
        "auto": Numba CPU for numpy, numba.cuda for cupy; "reference": plain
        numpy; "cuda": numba.cuda kernels on numpy arrays too.

    Returns
    -------
    dict
        One value per slice (shape (z,), or () for a single slice) of x's kind:

        - ``count`` (int64): masked voxels;
        - ``area_mm2``: count * spacing_y * spacing_x;
        - ``mean``, ``std``, ``min``, ``max``, ``p10`` ... ``p90`` (numpy's
          linear-interpolation percentiles), ``iqr`` (p75 - p25), ``mad``
          (mean |HU - mean|), ``skewness``, ``kurtosis`` in HU units;
        - ``entropy`` (-sum p log2(p + 2.2e-16)) and ``uniformity`` (sum p^2)
          over bins floor(HU / 25);
        - ``frac_emphysema`` HU < -950, ``frac_aerated`` [-950, -700),
          ``frac_ground_glass`` [-700, -300), ``frac_consolidation`` [-300, 50)
          as fractions of count, and ``opacity_pct`` = 100 * (ground glass +
          consolidation) fraction;
        - ``histogram`` (int64, (z, 64)): counts in 64 equal bins over
          [-1024, 200] HU (edges :func:`hu_hist_edges`, each bin [a, b), the
          last [a, 200]); values outside the range are not counted in it.

        An empty mask gives count 0, histogram zeros and NaN statistics.
        Fast paths agree with the reference within 1e-12 relative (CPU:
        bit-identical percentiles, min, max, fractions, counts, histogram).

    Raises
    ------
    TypeError
        Wrong dtypes, mask of another array kind.
    ValueError
        Shapes differ, not 2-D/3-D, bad spacing/slope/intercept.

    Examples
    --------
    >>> import numpy as np
    >>> raw = np.array([[24, 124, 1024, 2000]], dtype=np.uint16)
    >>> s = hu_stats(raw, np.array([[1, 1, 1, 0]], dtype=np.uint8), spacing=0.5)
    >>> int(s["count"]), float(s["area_mm2"]), round(float(s["mean"]), 3), float(s["p50"])
    (3, 0.75, -633.333, -900.0)
    """
    kind, mask_kind = array_kind(x), array_kind(mask)
    if mask_kind != kind and not (kind == "dask" and mask_kind == "numpy"):
        raise TypeError(f"mask must be an array of the same kind as x ({kind}), "
                        f"got {type(mask).__name__}")
    inp = kernel_input(x, units=units, slope=slope, intercept=intercept, method=method)
    if np.dtype(inp.stack.dtype).itemsize > 2:
        raise TypeError(f"x must hold 8- or 16-bit raw integers, got dtype {x.dtype}")
    if np.dtype(mask.dtype) not in (np.dtype(np.uint8), np.dtype(np.bool_)):
        raise TypeError(f"mask must be uint8 or bool, got dtype {mask.dtype}")
    if tuple(x.shape) != tuple(mask.shape):
        raise ValueError(f"x and mask shapes differ: {tuple(x.shape)} vs {tuple(mask.shape)}")
    if mask_kind != kind:
        import dask.array as da
        mask = da.from_array(mask, chunks=x.chunks)
    spacing = spacing_pair(spacing)
    x3, was_2d, slope, intercept = inp.stack, inp.was_2d, inp.slope, inp.intercept
    m3 = as_stack(mask, name="mask")[0]
    if kind == "dask":
        counts, stats, hists = _dask_stats(x3, m3, slope, intercept, method)
    else:
        counts, stats, hists = _block_stats(x3, m3, slope, intercept, method)
    out = {"count": counts, "area_mm2": _area(counts, spacing)}
    for i, name in enumerate(FLOAT_COLUMNS):
        out[name] = stats[:, i]
    out["histogram"] = hists
    if was_2d:
        out = {k: v[0, ...] for k, v in out.items()}
    return out


def _area(counts: Any, spacing: Any) -> Any:
    """count * spacing_y * spacing_x (float64), NaN without spacing."""
    if spacing is None:
        return counts * math.nan
    sy, sx = spacing
    return counts * sy * sx


def _block_stats(x: Any, mask: Any, slope: float, intercept: float,
                 method: str) -> tuple[Any, Any, Any]:
    """(counts, stats, hists) of one (z, y, x) numpy or cupy block."""
    backend, xp = block_backend(x, method)
    if backend == "cuda":
        return _cuda_block_stats(x, mask, slope, intercept, xp)
    if backend == "reference":
        return _ref.hu_stats(x, mask, slope, intercept)
    from . import _stats_cpu as cpu
    offset, nbins, qs = _raw_layout(x.dtype)
    z = x.shape[0]
    counts = np.zeros(z, dtype=np.int64)
    stats = np.empty((z, _NF), dtype=np.float64)
    hists = np.zeros((z, HU_HIST_BINS), dtype=np.int64)
    cpu.hu_stats(x, mask, offset, nbins, slope, intercept, qs, hu_hist_edges(), counts, stats, hists)
    return counts, stats, hists


def _raw_layout(dtype: Any) -> tuple[int, int, np.ndarray]:
    """(bin offset, number of raw-histogram bins, percentile fractions) for a raw dtype."""
    dt = np.dtype(dtype)
    return -int(np.iinfo(dt).min), 1 << (8 * dt.itemsize), np.array(STATS_PERCENTILES) / 100


def _cuda_block_stats(x: Any, mask: Any, slope: float, intercept: float,
                      xp: Any) -> tuple[Any, Any, Any]:
    """The numba.cuda path on device arrays of module xp (cupy; numpy under the CUDA simulator)."""
    from . import _stats_gpu as gpu
    offset, nbins, qs = _raw_layout(x.dtype)
    return gpu.hu_stats(x, mask, offset, nbins, slope, intercept, xp.asarray(qs),
                        xp.asarray(hu_hist_edges()), xp)


def _packed_block(x: Any, mask: Any, *, slope: float, intercept: float, method: str) -> Any:
    """(z, 1 + F + 64) float64 block: count, statistics, histogram (exact integers)."""
    counts, stats, hists = _block_stats(x, mask, slope, intercept, method)
    xp = np if isinstance(stats, np.ndarray) else __import__("cupy")
    return xp.concatenate([counts[:, None].astype(xp.float64), stats,
                           hists.astype(xp.float64)], axis=1)


def _dask_stats(x: Any, mask: Any, slope: float, intercept: float,
                method: str) -> tuple[Any, Any, Any]:
    x = x.rechunk({1: -1, 2: -1})
    mask = mask.rechunk(x.chunks)
    width = 1 + _NF + HU_HIST_BINS
    meta = x._meta.astype(np.float64).reshape(0, 0)
    packed = x.map_blocks(_packed_block, mask, slope=slope, intercept=intercept, method=method,
                          drop_axis=2, chunks=(x.chunks[0], (width,)), dtype=np.float64, meta=meta)
    return (packed[:, 0].astype(np.int64), packed[:, 1:1 + _NF],
            packed[:, 1 + _NF:].astype(np.int64))
