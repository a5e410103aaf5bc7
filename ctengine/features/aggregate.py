"""Feature tables from kernel results: per-slice rows, whole-series and per-patient aggregates.

:func:`stats_to_frame` turns a numpy :func:`ctengine.kernels.hu_stats`
result into one row per slice; :func:`aggregate_series` gives one row per
series (volume in litres, voxel-weighted HU statistics) and
:func:`aggregate_patient` one row per patient. Units: HU, mm, litres.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from ..constants import SERIES
from ..kernels import STAT_COLUMNS
from .dictionary import HIST_COLUMNS, KERNEL_COLUMNS, TABLE_COLUMNS

__all__ = ["SERIES_COLUMNS", "SLICE_COLUMNS", "aggregate_patient", "aggregate_series", "stats_to_frame"]

#: columns of :func:`stats_to_frame`: the statistics then the histogram (names of :mod:`.dictionary`)
SLICE_COLUMNS = (*(KERNEL_COLUMNS[k] for k in STAT_COLUMNS), *HIST_COLUMNS)


def stats_to_frame(stats: dict[str, Any]) -> pd.DataFrame:
    """pandas DataFrame of a numpy :func:`ctengine.kernels.hu_stats` result: one row per slice.

    Columns: ``SLICE_COLUMNS``, the kernel's keys under the tables' names
    (``count`` -> ``voxels``, ``mean`` -> ``mean_hu``, ... see
    :data:`~ctengine.features.dictionary.FIELDS` for units), then
    ``hist_00_voxels`` .. ``hist_63_voxels`` (int64). Compute dask results
    first (``dask.compute(stats)[0]``) and copy cupy ones to the host.
    """
    missing = [k for k in (*STAT_COLUMNS, "histogram") if k not in stats]
    if missing:
        raise ValueError(f"not a hu_stats result: missing keys {missing}")
    if any(not isinstance(stats[k], np.ndarray) for k in (*STAT_COLUMNS, "histogram")):
        raise TypeError("stats_to_frame needs numpy arrays: compute dask / copy cupy results first")
    cols = {KERNEL_COLUMNS[k]: np.atleast_1d(stats[k]) for k in STAT_COLUMNS}
    hist = np.atleast_2d(stats["histogram"])
    if hist.shape[1] != len(HIST_COLUMNS):
        raise ValueError(f"histogram must have {len(HIST_COLUMNS)} bins, got {hist.shape[1]}")
    for b, name in enumerate(HIST_COLUMNS):
        cols[name] = hist[:, b]
    return pd.DataFrame(cols)


#: columns of :func:`aggregate_series` besides the group keys
SERIES_COLUMNS = tuple(c for c in TABLE_COLUMNS["series"] if c not in ("patient", "series"))
_WEIGHTED = ("frac_emphysema", "frac_aerated", "frac_ground_glass", "frac_consolidation", "opacity_pct")


def aggregate_series(frame: pd.DataFrame, *, thickness_mm: Any = None,
                     by: tuple[str, ...] = ("patient", "series")) -> pd.DataFrame:
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


def _thickness(thickness_mm: Any, key: tuple, group: pd.DataFrame) -> float:
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


def _series_row(frame: pd.DataFrame, thick: float) -> dict[str, Any]:
    n = frame["voxels"].to_numpy(dtype=np.int64)
    total = int(n.sum())
    area = float(frame["area_mm2"].to_numpy(dtype=np.float64).sum())
    row: dict[str, Any] = {"n_slices": len(frame), "n_slices_with_lung": int(np.count_nonzero(n)),
                           "voxels": total, "thickness_mm": thick, "lung_volume_l": area * thick / 1e6}
    if total == 0:
        return {**row, **{k: math.nan for k in SERIES_COLUMNS if k not in row}}
    lung = n > 0
    w = n[lung].astype(np.float64)
    mean = frame["mean_hu"].to_numpy(dtype=np.float64)[lung]
    std = frame["std_hu"].to_numpy(dtype=np.float64)[lung]
    m = float((w * mean).sum() / total)
    row["mean_hu"] = m
    row["std_hu"] = math.sqrt(max(0.0, float((w * (std ** 2 + (mean - m) ** 2)).sum() / total)))
    row["min_hu"] = float(frame["min_hu"].to_numpy(dtype=np.float64)[lung].min())
    row["max_hu"] = float(frame["max_hu"].to_numpy(dtype=np.float64)[lung].max())
    for k in _WEIGHTED:
        row[k] = float((w * frame[k].to_numpy(dtype=np.float64)[lung]).sum() / total)
    return row


def aggregate_patient(series_table: pd.DataFrame, *, labels: Any = None,
                      prefer: tuple[str, ...] = SERIES) -> pd.DataFrame:
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
