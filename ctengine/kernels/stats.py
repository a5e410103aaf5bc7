"""Per-slice first-order HU statistics inside a lung mask, and their series aggregates.

:func:`hu_stats` takes numpy, cupy or dask arrays and returns a dict of
arrays of the same kind; :func:`stats_to_frame`, :func:`aggregate_series`
and :func:`aggregate_patient` turn numpy results into pandas tables.
"""
from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np

from ..constants import (DEFAULT_INTERCEPT, DEFAULT_SLOPE, HU_HIST_BINS, HU_HIST_RANGE, SERIES,
                         STATS_PERCENTILES)
from . import _stats_reference as _ref
from ._backend import array_kind, as_stack, chunk_kind
from .selection import spacing_pair

__all__ = ["hu_stats", "stats_to_frame", "aggregate_series", "aggregate_patient",
           "STAT_COLUMNS", "SERIES_COLUMNS", "hu_hist_edges"]

FLOAT_COLUMNS = _ref.FLOAT_COLUMNS
#: per-slice keys of :func:`hu_stats`, besides "histogram"
STAT_COLUMNS = ("count", "area_mm2", *FLOAT_COLUMNS)
_NF = len(FLOAT_COLUMNS)


def hu_hist_edges() -> np.ndarray:
    """The 65 edges in HU of the fixed histogram: numpy.linspace(-1024, 200, 65), bins 19.125 HU wide."""
    return np.linspace(HU_HIST_RANGE[0], HU_HIST_RANGE[1], HU_HIST_BINS + 1)


def hu_stats(x: Any, mask: Any, *, spacing: float | tuple[float, float] | None = None,
             slope: float = DEFAULT_SLOPE, intercept: float = DEFAULT_INTERCEPT,
             method: Literal["auto", "reference"] = "auto") -> dict[str, Any]:
    """First-order HU statistics of each slice over the pixels where mask > 0.

    HU = raw * slope + intercept in float64. Statistics follow pyradiomics /
    IBSI first order: population variance, skewness m3 / m2^1.5, kurtosis
    m4 / m2^2 (no -3); a flat region (all values equal) gives std, MAD,
    skewness and kurtosis 0.

    Parameters
    ----------
    x : numpy, cupy or dask array, (z, y, x) or (y, x)
        Raw integer values, 8 or 16 bits (uint16 for COVID-CTset).
    mask : array of x's kind (a numpy mask is accepted with a dask x), uint8 or bool
        Same shape as x; pixels with mask > 0 are counted (lung labels 1, 2).
    spacing : float or (float, float), optional
        Pixel spacing (y, x) in mm; without it area_mm2 is NaN.
    slope, intercept : float
        Rescale of raw to HU (slope > 0).
    method : {"auto", "reference"}
        "auto": Numba CPU / numba.cuda kernels; "reference": plain numpy.

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
    dt = np.dtype(x.dtype)
    if dt.kind not in "ui" or dt.itemsize > 2:
        raise TypeError(f"x must hold 8- or 16-bit raw integers, got dtype {x.dtype}")
    if np.dtype(mask.dtype) not in (np.dtype(np.uint8), np.dtype(np.bool_)):
        raise TypeError(f"mask must be uint8 or bool, got dtype {mask.dtype}")
    if tuple(x.shape) != tuple(mask.shape):
        raise ValueError(f"x and mask shapes differ: {tuple(x.shape)} vs {tuple(mask.shape)}")
    if mask_kind != kind:
        import dask.array as da
        mask = da.from_array(mask, chunks=x.chunks)
    if spacing is not None:
        spacing_pair(spacing)  # validate before any work
    slope, intercept = float(slope), float(intercept)
    if not (math.isfinite(slope) and slope > 0):
        raise ValueError(f"slope must be finite and > 0, got {slope!r}")
    if not math.isfinite(intercept):
        raise ValueError(f"intercept must be finite, got {intercept!r}")
    if method not in ("auto", "reference"):
        raise ValueError(f"method must be 'auto' or 'reference', got {method!r}")
    if method == "reference" and chunk_kind(x) != "numpy":
        raise TypeError("method='reference' needs numpy arrays or numpy-backed dask arrays")
    x3, was_2d = as_stack(x)
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
    sy, sx = spacing_pair(spacing)
    return counts * sy * sx


def _block_stats(x: Any, mask: Any, slope: float, intercept: float,
                 method: str) -> tuple[Any, Any, Any]:
    """(counts, stats, hists) of one (z, y, x) numpy or cupy block."""
    if array_kind(x) == "cupy":
        import cupy as cp
        return _cuda_block_stats(x, mask, slope, intercept, cp)
    if method == "reference":
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


def stats_to_frame(stats: dict[str, Any]) -> "pd.DataFrame":
    """pandas DataFrame of a numpy :func:`hu_stats` result: one row per slice.

    Columns: ``STAT_COLUMNS`` then ``hist_00`` .. ``hist_63`` (int64).
    Compute dask results first (``dask.compute(stats)[0]``) and copy cupy
    ones to the host.
    """
    import pandas as pd

    missing = [k for k in (*STAT_COLUMNS, "histogram") if k not in stats]
    if missing:
        raise ValueError(f"not a hu_stats result: missing keys {missing}")
    if any(array_kind(stats[k]) != "numpy" for k in (*STAT_COLUMNS, "histogram")):
        raise TypeError("stats_to_frame needs numpy arrays: compute dask / copy cupy results first")
    cols = {k: np.atleast_1d(stats[k]) for k in STAT_COLUMNS}
    hist = np.atleast_2d(stats["histogram"])
    for b in range(hist.shape[1]):
        cols[f"hist_{b:02d}"] = hist[:, b]
    return pd.DataFrame(cols)


#: columns of :func:`aggregate_series` besides the group keys
SERIES_COLUMNS = ("n_slices", "n_slices_with_lung", "voxels", "thickness_mm", "lung_volume_l",
                  "mean_hu", "std_hu", "min_hu", "max_hu", "frac_emphysema", "frac_aerated",
                  "frac_ground_glass", "frac_consolidation", "opacity_pct")
_WEIGHTED = ("frac_emphysema", "frac_aerated", "frac_ground_glass", "frac_consolidation", "opacity_pct")


def aggregate_series(frame: "pd.DataFrame", *, thickness_mm: Any = None,
                     by: tuple[str, ...] = ("patient", "series")) -> "pd.DataFrame":
    """Whole-series values from per-slice rows (:func:`stats_to_frame` output), one row per series.

    - ``lung_volume_l`` = sum(area_mm2) * thickness_mm / 1e6: every slice is
      a slab of the nominal thickness (NaN without thickness or spacing);
      only the slices present count (e.g. after selection).
    - ``mean_hu``: voxel-weighted mean; ``std_hu``: pooled population std
      (exact, from the per-slice means and stds); ``min_hu`` / ``max_hu``.
    - ``frac_*`` and ``opacity_pct``: weighted by voxel count, i.e. by volume,
      since all voxels of a series have the same volume.

    Parameters
    ----------
    frame : DataFrame
        Per-slice rows; with columns ``by`` (default patient, series) each
        group is one series, without them the whole frame is one series.
    thickness_mm : None, float, mapping or Series, optional
        Slice thickness in mm: one number for every series, or keyed by the
        group key (e.g. a Series indexed by (patient, series)). When None, a
        ``thickness_mm`` column is used if the frame has one.
    by : tuple of str
        Group key columns.

    Returns
    -------
    DataFrame
        The key columns then ``SERIES_COLUMNS``, one row per series (NaN
        statistics for a series without lung voxels).

    Raises
    ------
    ValueError
        Only some key columns present; thickness not > 0; thickness column
        not constant within a series.
    """
    import pandas as pd

    keys = [c for c in by if c in frame.columns]
    if keys and len(keys) != len(by):
        raise ValueError(f"frame has the key columns {keys} but not all of {list(by)}")
    if not keys:
        return pd.DataFrame([_series_row(frame, _thickness(thickness_mm, (), frame))])
    rows = []
    for key, group in frame.groupby(list(by), sort=True):
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(by, key)), **_series_row(group, _thickness(thickness_mm, key, group))})
    return pd.DataFrame(rows, columns=[*by, *SERIES_COLUMNS])


def _thickness(thickness_mm: Any, key: tuple, group: "pd.DataFrame") -> float:
    """Thickness in mm of one series (NaN when unknown)."""
    if thickness_mm is None:
        if "thickness_mm" not in group.columns:
            return math.nan
        values = group["thickness_mm"].dropna().unique()
        if len(values) > 1:
            raise ValueError(f"series {key}: thickness_mm varies within the series: {sorted(values)}")
        value = values[0] if len(values) else math.nan
    elif np.ndim(thickness_mm) == 0 and not hasattr(thickness_mm, "get"):
        value = thickness_mm
    else:
        value = thickness_mm.get(key if len(key) != 1 else key[0], math.nan)
    value = math.nan if value is None else float(value)
    if not math.isnan(value) and not (math.isfinite(value) and value > 0):
        raise ValueError(f"thickness_mm must be finite and > 0 (or unknown), got {value!r} for {key}")
    return value


def _series_row(frame: "pd.DataFrame", thick: float) -> dict[str, Any]:
    n = frame["count"].to_numpy(dtype=np.int64)
    total = int(n.sum())
    area = float(frame["area_mm2"].to_numpy(dtype=np.float64).sum())
    row: dict[str, Any] = {"n_slices": len(frame), "n_slices_with_lung": int(np.count_nonzero(n)),
                           "voxels": total, "thickness_mm": thick, "lung_volume_l": area * thick / 1e6}
    if total == 0:
        return {**row, **{k: math.nan for k in SERIES_COLUMNS[5:]}}
    lung = n > 0
    w = n[lung].astype(np.float64)
    mean = frame["mean"].to_numpy(dtype=np.float64)[lung]
    std = frame["std"].to_numpy(dtype=np.float64)[lung]
    m = float((w * mean).sum() / total)
    row["mean_hu"] = m
    row["std_hu"] = math.sqrt(max(0.0, float((w * (std ** 2 + (mean - m) ** 2)).sum() / total)))
    row["min_hu"] = float(frame["min"].to_numpy(dtype=np.float64)[lung].min())
    row["max_hu"] = float(frame["max"].to_numpy(dtype=np.float64)[lung].max())
    for k in _WEIGHTED:
        row[k] = float((w * frame[k].to_numpy(dtype=np.float64)[lung]).sum() / total)
    return row


def aggregate_patient(series_table: "pd.DataFrame", *, labels: Any = None,
                      prefer: tuple[str, ...] = SERIES) -> "pd.DataFrame":
    """One row per patient from the :func:`aggregate_series` table.

    A patient's series (SR_2, SR_3, SR_4) are one breath-hold scan
    reconstructed three ways, so they are never summed or averaged: each
    patient takes the values of its first series in ``prefer`` order (SR_2
    first, the series the authors classify), or of its first series by
    name when none is listed.

    Parameters
    ----------
    series_table : DataFrame
        Output of :func:`aggregate_series` with ``patient`` and ``series`` columns.
    labels : mapping or Series, optional
        Patient -> label ("covid" / "normal"), added as a ``label`` column.
    prefer : tuple of str
        Series names in order of preference.

    Returns
    -------
    DataFrame
        ``patient``, (``label``), ``series`` (the one used), ``n_series``,
        then ``SERIES_COLUMNS``.
    """
    import pandas as pd

    for col in ("patient", "series"):
        if col not in series_table.columns:
            raise ValueError(f"series_table has no column {col!r}")
    rank = {name: i for i, name in enumerate(prefer)}
    rows = []
    for patient, group in series_table.groupby("patient", sort=True):
        order = sorted(group["series"], key=lambda s: (rank.get(s, len(rank)), str(s)))
        chosen = group[group["series"] == order[0]].iloc[0]
        row = {"patient": patient}
        if labels is not None:
            row["label"] = labels.get(patient)
        row.update({"series": order[0], "n_series": len(group)})
        row.update({k: chosen[k] for k in SERIES_COLUMNS if k in chosen.index})
        rows.append(row)
    cols = ["patient", *(["label"] if labels is not None else []), "series", "n_series",
            *(c for c in SERIES_COLUMNS if c in series_table.columns)]
    return pd.DataFrame(rows, columns=cols)
