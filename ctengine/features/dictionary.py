"""The data dictionary of the feature tables: every column's unit, description and definition.

The one source of what the columns of ``slices.parquet``, ``series.parquet``
and ``patients.parquet`` mean. :func:`arrow_table` writes each entry as the
Parquet field metadata of its column (keys ``unit``, ``description``,
``definition``) and :func:`schema_metadata` the parameters behind them (the
histogram's bin edges and the HU cut-offs of the ``frac_*`` columns) as the
table's schema metadata; ``docs/FEATURES.md`` is :func:`markdown`::

    python -m ctengine.features.dictionary > docs/FEATURES.md

Naming scheme, the same in every table: the unit is the suffix (``_hu``,
``_mm``, ``_mm2``, ``_l`` litres, ``_pct`` percent, ``_bits``,
``_voxels``); ``frac_*`` are fractions in [0, 1]; ``voxels`` is a count of
lung voxels, ``n_*`` a count of slices or series; ``skewness``,
``kurtosis`` and ``uniformity`` have no unit. Statistics follow pyradiomics'
first-order definitions (population moments, numpy's linear-interpolation
percentiles) over the voxels inside the lung mask, with HU = raw * slope +
intercept.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..constants import (ENTROPY_BIN_WIDTH_HU, HU_AERATED_BELOW, HU_CONSOLIDATION_BELOW, HU_EMPHYSEMA_BELOW,
                         HU_GROUND_GLASS_BELOW, HU_HIST_BINS, HU_HIST_RANGE, SELECTION_COLS,
                         SELECTION_DARK_RAW, SELECTION_DIVISOR, SELECTION_ROWS, STATS_PERCENTILES)

__all__ = ["FEATURES_SCHEMA", "FIELDS", "Field", "HIST_COLUMNS", "KERNEL_COLUMNS", "LEGACY_COLUMNS", "METADATA_KEY",
           "TABLE_COLUMNS", "arrow_table", "hist_edges_hu", "hu_cutoffs", "markdown", "schema_metadata"]

#: version of the tables' column scheme, written with every table
FEATURES_SCHEMA = "ctengine.features/2"
#: key of the schema metadata entry holding :func:`schema_metadata`
METADATA_KEY = "ctengine"
SLICES, SERIES, PATIENTS = "slices", "series", "patients"
_ALL = (SLICES, SERIES, PATIENTS)
_AGG = (SERIES, PATIENTS)


@dataclass(frozen=True)
class Field:
    """One column: unit ("" for keys and flags), description, definition, the tables that hold it."""

    unit: str
    description: str
    definition: str
    tables: tuple[str, ...]


def hist_edges_hu() -> list[float]:
    """The 65 bin edges in HU of the ``hist_NN_voxels`` columns (bins [a, b), the last [a, b])."""
    return np.linspace(HU_HIST_RANGE[0], HU_HIST_RANGE[1], HU_HIST_BINS + 1).tolist()


def hu_cutoffs() -> dict[str, list[float | None]]:
    """[low, high) in HU of each density class behind the ``frac_*`` columns (None: unbounded)."""
    return {"frac_emphysema": [None, HU_EMPHYSEMA_BELOW],
            "frac_aerated": [HU_EMPHYSEMA_BELOW, HU_AERATED_BELOW],
            "frac_ground_glass": [HU_AERATED_BELOW, HU_GROUND_GLASS_BELOW],
            "frac_consolidation": [HU_GROUND_GLASS_BELOW, HU_CONSOLIDATION_BELOW]}


def _hu(value: float | None) -> str:
    return "" if value is None else f"{value:.10g}"


def _fraction(name: str, what: str) -> Field:
    low, high = hu_cutoffs()[name]
    rule = f"HU < {_hu(high)}" if low is None else f"{_hu(low)} <= HU < {_hu(high)}"
    return Field("1", f"fraction of the lung voxels that are {what}",
                 f"count({rule}) / voxels; schema metadata hu_cutoffs", _ALL)


def _percentile(q: int) -> Field:
    name = {10: "10Percentile", 50: "Median", 90: "90Percentile"}.get(q)
    ref = f"pyradiomics firstorder {name}" if name else "no pyradiomics feature (quartile of InterquartileRange)"
    return Field("HU", f"{q}th percentile of HU in the lung", f"numpy.percentile(HU, {q}), linear; {ref}",
                 (SLICES,))


_LO, _HI = HU_HIST_RANGE
_WIDTH = (_HI - _LO) / HU_HIST_BINS
_PCTS = {f"p{q}_hu": _percentile(q) for q in STATS_PERCENTILES}

#: every column of the feature tables, in table order
FIELDS: dict[str, Field] = {
    "patient": Field("", "patient identifier, as in the store (patientN)", "catalog key", _ALL),
    "label": Field("", "patient label: covid or normal", "catalog column label", (PATIENTS,)),
    "series": Field("", "series name (SR_2, SR_3, SR_4); in patients.parquet the series whose values are given",
                    "catalog key; patients: the first of SR_2, SR_3, SR_4 the patient has", _ALL),
    "instance": Field("", "instance number of the slice in its series (the IMxxxxx file number)", "catalog key",
                      (SLICES,)),
    "selected": Field("", "the authors' CT selection keeps the slice",
                      f"dark_count > (max - min) / {SELECTION_DIVISOR:.10g} of the series' dark counts", (SLICES,)),
    "dark_count": Field("pixels", "dark pixels of the authors' selection region",
                        f"count(raw < {SELECTION_DARK_RAW}) in rows {SELECTION_ROWS.start}..{SELECTION_ROWS.stop - 1}, "
                        f"columns {SELECTION_COLS.start}..{SELECTION_COLS.stop - 1}", (SLICES,)),
    "selected_by_area": Field("", "the lung-area selection keeps the slice (False without pixel spacing)",
                              f"area_mm2 > max(area_mm2) / {SELECTION_DIVISOR:.10g} over the series", (SLICES,)),
    "n_series": Field("series", "series the patient has", "count of the patient's rows in series.parquet",
                      (PATIENTS,)),
    "n_slices": Field("slices", "slices of the series in the table", "count of the series' rows in slices.parquet",
                      _AGG),
    "n_slices_with_lung": Field("slices", "slices with at least one lung voxel", "count(voxels > 0)", _AGG),
    "voxels": Field("voxels", "lung voxels (mask > 0)", "count(mask > 0); series: sum over its slices", _ALL),
    "area_mm2": Field("mm2", "lung cross-section area (NaN without pixel spacing)",
                      "voxels * spacing_y_mm * spacing_x_mm", (SLICES,)),
    "thickness_mm": Field("mm", "nominal slice thickness of the series (NaN when unknown)",
                          "catalog column thickness_mm", _AGG),
    "lung_volume_l": Field("L", "lung volume: every slice a slab of the nominal thickness",
                           "sum(area_mm2) * thickness_mm / 1e6", _AGG),
    "mean_hu": Field("HU", "mean HU in the lung", "pyradiomics firstorder Mean; series: voxel-weighted", _ALL),
    "std_hu": Field("HU", "population standard deviation of HU in the lung",
                    "sqrt(mean((HU - mean)^2)); pyradiomics firstorder StandardDeviation; series: pooled, exact",
                    _ALL),
    "min_hu": Field("HU", "lowest HU in the lung", "pyradiomics firstorder Minimum", _ALL),
    "max_hu": Field("HU", "highest HU in the lung", "pyradiomics firstorder Maximum", _ALL),
    **_PCTS,
    "iqr_hu": Field("HU", "interquartile range of HU in the lung",
                    "p75_hu - p25_hu; pyradiomics firstorder InterquartileRange", (SLICES,)),
    "mad_hu": Field("HU", "mean absolute deviation of HU in the lung",
                    "mean(|HU - mean|); pyradiomics firstorder MeanAbsoluteDeviation", (SLICES,)),
    "skewness": Field("1", "skewness of HU in the lung (0 for a flat region)",
                      "m3 / m2^1.5, population moments; pyradiomics firstorder Skewness", (SLICES,)),
    "kurtosis": Field("1", "kurtosis of HU in the lung (0 for a flat region)",
                      "m4 / m2^2, population moments; pyradiomics firstorder Kurtosis (IBSI's excess kurtosis "
                      "is this minus 3)", (SLICES,)),
    "entropy_bits": Field("bits", f"entropy of HU in bins {ENTROPY_BIN_WIDTH_HU:.10g} HU wide",
                          f"-sum p log2(p + 2.2e-16), bins floor(HU / {ENTROPY_BIN_WIDTH_HU:.10g}); "
                          "pyradiomics firstorder Entropy (binWidth 25)", (SLICES,)),
    "uniformity": Field("1", f"uniformity of HU in bins {ENTROPY_BIN_WIDTH_HU:.10g} HU wide",
                        "sum p^2 over the entropy's bins; pyradiomics firstorder Uniformity", (SLICES,)),
    "frac_emphysema": _fraction("frac_emphysema", "emphysema-like"),
    "frac_aerated": _fraction("frac_aerated", "normally aerated"),
    "frac_ground_glass": _fraction("frac_ground_glass", "ground glass"),
    "frac_consolidation": _fraction("frac_consolidation", "consolidation"),
    "opacity_pct": Field("%", "percentage of the lung voxels that are opacities (ground glass or consolidation)",
                         "100 * (frac_ground_glass + frac_consolidation); series: voxel-weighted", _ALL),
    **{f"hist_{b:02d}_voxels": Field(
        "voxels", f"lung voxels with {_LO + b * _WIDTH:.10g} <= HU {'<=' if b == HU_HIST_BINS - 1 else '<'} "
                  f"{_LO + (b + 1) * _WIDTH:.10g}",
        f"bin {b} of numpy.histogram(HU, {HU_HIST_BINS}, range=({_LO:.10g}, {_HI:.10g})); "
        "schema metadata hist_edges_hu", (SLICES,)) for b in range(HU_HIST_BINS)},
}

#: columns of each table, in order
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {t: tuple(k for k, f in FIELDS.items() if t in f.tables) for t in _ALL}
HIST_COLUMNS = tuple(f"hist_{b:02d}_voxels" for b in range(HU_HIST_BINS))
#: :func:`ctengine.kernels.hu_stats` key -> column of slices.parquet ("histogram" -> HIST_COLUMNS)
KERNEL_COLUMNS: dict[str, str] = {
    "count": "voxels", "area_mm2": "area_mm2", "mean": "mean_hu", "std": "std_hu", "min": "min_hu",
    "max": "max_hu", **{f"p{q}": f"p{q}_hu" for q in STATS_PERCENTILES}, "iqr": "iqr_hu", "mad": "mad_hu",
    "skewness": "skewness", "kurtosis": "kurtosis", "entropy": "entropy_bits", "uniformity": "uniformity",
    "frac_emphysema": "frac_emphysema", "frac_aerated": "frac_aerated", "frac_ground_glass": "frac_ground_glass",
    "frac_consolidation": "frac_consolidation", "opacity_pct": "opacity_pct"}
#: column names of the first scheme (per-slice tables stored before FEATURES_SCHEMA 2) -> current names
LEGACY_COLUMNS: dict[str, str] = {**{k: v for k, v in KERNEL_COLUMNS.items() if k != v},
                                  **{f"hist_{b:02d}": f"hist_{b:02d}_voxels" for b in range(HU_HIST_BINS)}}


def schema_metadata() -> dict[str, Any]:
    """The parameters behind the columns, stored as JSON under :data:`METADATA_KEY` in every table's schema.

    Returns
    -------
    dict
        ``schema`` (:data:`FEATURES_SCHEMA`), ``hist_edges_hu`` (65 edges, HU),
        ``hu_cutoffs`` ([low, high) HU per ``frac_*`` column, None unbounded),
        ``entropy_bin_width_hu`` and ``percentiles``.

    Examples
    --------
    >>> meta = schema_metadata()
    >>> meta["hist_edges_hu"][:2], meta["hu_cutoffs"]["frac_ground_glass"]
    ([-1024.0, -1004.875], [-700.0, -300.0])
    """
    return {"schema": FEATURES_SCHEMA, "hist_edges_hu": hist_edges_hu(), "hu_cutoffs": hu_cutoffs(),
            "entropy_bin_width_hu": ENTROPY_BIN_WIDTH_HU, "percentiles": list(STATS_PERCENTILES)}


def arrow_table(frame: Any, table: str):
    """A feature table as a ``pyarrow.Table`` whose fields and schema carry the dictionary.

    Parameters
    ----------
    frame : pandas.DataFrame
        Rows of the table; its columns must all be in :data:`FIELDS` for ``table``.
    table : {"slices", "series", "patients"}

    Returns
    -------
    pyarrow.Table
        Columns in the frame's order, each field's metadata ``unit``,
        ``description``, ``definition``; schema metadata :data:`METADATA_KEY`
        -> JSON of :func:`schema_metadata` (beside pandas' own entry).

    Raises
    ------
    ValueError
        Unknown table, or columns without a dictionary entry for it.
    """
    import pyarrow as pa

    if table not in TABLE_COLUMNS:
        raise ValueError(f"table must be one of {', '.join(TABLE_COLUMNS)}, got {table!r}")
    unknown = [c for c in frame.columns if c not in TABLE_COLUMNS[table]]
    if unknown:
        raise ValueError(f"{table} columns without a FIELDS entry: {unknown}")
    arrow = pa.Table.from_pandas(frame, preserve_index=False)
    fields = [f.with_metadata({"unit": FIELDS[f.name].unit, "description": FIELDS[f.name].description,
                               "definition": FIELDS[f.name].definition}) for f in arrow.schema]
    meta = {**(arrow.schema.metadata or {}), METADATA_KEY.encode(): json.dumps(schema_metadata()).encode()}
    return arrow.cast(pa.schema(fields, metadata=meta))


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown() -> str:
    """The text of ``docs/FEATURES.md``: the tables, their columns and parameters, from :data:`FIELDS`."""
    meta = schema_metadata()
    lines = ["# Feature tables", "",
             "<!-- generated by `python -m ctengine.features.dictionary > docs/FEATURES.md`: do not edit -->", "",
             "`ctengine features STORE` writes `slices.parquet` (one row per slice), `series.parquet` (one row",
             "per series) and `patients.parquet` (one row per patient) to `STORE.features/`. Each column's",
             "unit, description and definition below is also stored in the Parquet file as the field's",
             "metadata (`unit`, `description`, `definition`), and the parameters at the end as the schema's",
             f"`{METADATA_KEY}` entry (JSON); `Store.feature_schema(name)` reads both.", "",
             "Names carry their unit: `_hu`, `_mm`, `_mm2`, `_l` (litres), `_pct`, `_bits`, `_voxels`;",
             "`frac_*` are fractions in [0, 1]; `voxels` counts lung voxels (mask > 0), `n_*` slices or",
             "series. Unit `1`: dimensionless. Statistics are over the voxels inside the lung mask, with",
             "HU = raw * slope + intercept, in pyradiomics' first-order definitions (population moments,",
             "numpy's linear percentiles); a slice without lung voxels has NaN statistics. Series values are",
             "voxel-weighted over the series' slices; a patient takes the values of one series (SR_2 first),",
             "never a mean of its three reconstructions.", ""]
    hist = [c for c in FIELDS if c.startswith("hist_")]
    for table in TABLE_COLUMNS:
        lines += [f"## {table}.parquet", "", "| column | unit | description | definition |", "|---|---|---|---|"]
        for name in TABLE_COLUMNS[table]:
            if name in hist[1:-1]:
                continue
            f = FIELDS[name]
            lines.append(f"| `{name}` | {f.unit} | {_cell(f.description)} | {_cell(f.definition)} |")
            if name == hist[0]:
                lines.append(f"| ... | voxels | `hist_01_voxels` .. `hist_{len(hist) - 2:02d}_voxels`: "
                             f"{_WIDTH:.10g} HU wide bins | edges in `hist_edges_hu` |")
        lines.append("")
    lines += ["## Parameters (schema metadata)", "", "| key | value |", "|---|---|",
              f"| `schema` | `{meta['schema']}` |",
              f"| `hist_edges_hu` | {len(meta['hist_edges_hu'])} edges, numpy.linspace({_LO:.10g}, {_HI:.10g}, "
              f"{HU_HIST_BINS + 1}): {meta['hist_edges_hu'][0]:.10g}, {meta['hist_edges_hu'][1]:.10g}, ..., "
              f"{meta['hist_edges_hu'][-1]:.10g} |"]
    for name, (low, high) in meta["hu_cutoffs"].items():
        lines.append(f"| `hu_cutoffs.{name}` | [{_hu(low) or '-inf'}, {_hu(high)}) HU |")
    lines += [f"| `entropy_bin_width_hu` | {meta['entropy_bin_width_hu']:.10g} |",
              f"| `percentiles` | {', '.join(str(q) for q in meta['percentiles'])} |", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(markdown())
