"""The dataset's CSV files: patient details, per-series DICOM metadata, label and fold CSVs.

Units: thickness and spacing in mm, age in years, rescale as in DICOM
(HU = raw * slope + intercept).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from .constants import SERIES
from .layout import SPLIT_CSV, Scan, parse_name

def read_details(path: str | os.PathLike) -> pd.DataFrame:
    """``Patient_details.csv`` -> one row per patient (label, sex, age in years, thickness per series, mm)."""
    raw = pd.read_csv(path, na_values=["N/A", "n/a", "NA", ""], keep_default_na=False, dtype=str)
    raw.columns = [c.strip() for c in raw.columns]
    out = pd.DataFrame({"patient": raw["Patient ID"].str.strip().str.lower()})
    infection = raw.get("COVID-19 Infection", pd.Series(index=raw.index, dtype=str)).str.strip().str.lower()
    out["label"] = infection.map({"positive": "covid", "negative": "normal"})
    out["sex"] = raw.get("SEX")
    out["age_years"] = pd.to_numeric(raw.get("AGE", pd.Series(index=raw.index, dtype=str))
                                     .str.extract(r"(\d+)")[0], errors="coerce")
    out["date"] = raw.get("Date")
    for series in SERIES:
        column = f"{series} Folder thickness(mm)"
        out[f"thickness_{series}"] = pd.to_numeric(raw[column], errors="coerce") if column in raw else np.nan
    return out.drop_duplicates("patient")


def read_metadata(path: str | os.PathLike) -> pd.DataFrame:
    """``Patients_metadata.csv`` -> one row per (patient, series) with spacing, rescale, kernel, window."""
    raw = pd.read_csv(path, na_values=["N/A", "n/a", "NA", ""], keep_default_na=False, dtype=str)
    raw.columns = [c.strip() for c in raw.columns]
    frames = []
    for series in SERIES:
        def col(name: str) -> pd.Series:
            return raw.get(f"{series} {name}", pd.Series(index=raw.index, dtype=object))
        spacing = col("PixelSpacing").map(_numbers)
        frames.append(pd.DataFrame({
            "patient": raw["Patient ID"].str.strip().str.lower(),
            "series": series,
            "meta_thickness_mm": pd.to_numeric(col("SliceThickness"), errors="coerce"),
            "spacing_y_mm": spacing.map(lambda v: v[0] if v else np.nan),
            "spacing_x_mm": spacing.map(lambda v: v[-1] if v else np.nan),
            "slope": pd.to_numeric(col("RescaleSlope"), errors="coerce"),
            "intercept": pd.to_numeric(col("RescaleIntercept"), errors="coerce"),
            "kernel": col("ConvolutionKernel"),
            "window_center": col("WindowCenter").map(lambda v: (_numbers(v) or [np.nan])[0]),
            "window_width": col("WindowWidth").map(lambda v: (_numbers(v) or [np.nan])[0]),
        }))
    return pd.concat(frames, ignore_index=True)


def _numbers(cell: object) -> list[float]:
    """'[0.75, 0.75]' or '-600' -> [0.75, 0.75] / [-600.0]; [] for a missing cell."""
    if not isinstance(cell, str):
        return [] if cell is None or pd.isna(cell) else [float(cell)]
    return [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?(?:[eE]-?\d+)?", cell)]


def read_labels(paths: Iterable[str | os.PathLike]) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Label CSVs (``filename,class``) -> per-slice labels and per-patient fold splits.

    Returns ``(labels, problems)``: labels has patient, series, instance,
    slice_label, fold (0 for all.csv), split ('' for all.csv); problems lists
    (file, reason) for rows whose file name does not parse or whose class is
    neither covid nor normal.
    """
    frames, problems = [], []
    for path in paths:
        path = os.fspath(path)
        split = SPLIT_CSV.match(os.path.basename(path))
        table = pd.read_csv(path, dtype=str)
        table.columns = [c.strip().lower() for c in table.columns]
        if not {"filename", "class"} <= set(table.columns):
            problems.append((path, "label CSV needs the columns filename,class"))
            continue
        keys = table["filename"].map(lambda n: parse_name(str(n).strip()))
        label = table["class"].str.strip().str.lower()
        bad = keys.isna() | ~label.isin(["covid", "normal"])
        problems.extend((f"{path}: {n}", "label row does not parse") for n in table.loc[bad, "filename"])
        keys, label = keys[~bad], label[~bad]
        frames.append(pd.DataFrame({
            "patient": [k.patient for k in keys], "series": [k.series for k in keys],
            "instance": [k.instance for k in keys], "slice_label": label.to_numpy(),
            "fold": int(split["fold"]) if split else 0, "split": split["split"].lower() if split else "",
        }))
    columns = ["patient", "series", "instance", "slice_label", "fold", "split"]
    labels = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    return labels.astype({"instance": "int64", "fold": "int64"}), problems


def find_csvs(scan_result: Scan, *, details: str | None = None, metadata: str | None = None,
              labels: list[str] | None = None) -> tuple[pd.DataFrame | None, pd.DataFrame | None,
                                                        pd.DataFrame | None, list[tuple[str, str]]]:
    """Read the metadata CSVs: explicit paths win over the ones found beside the images."""
    details_path = details or next(iter(scan_result.csvs["details"]), None)
    metadata_path = metadata or next(iter(scan_result.csvs["metadata"]), None)
    label_paths = labels if labels is not None else _prefer_split_csvs(scan_result.csvs["labels"])
    label_table, problems = read_labels(label_paths) if label_paths else (None, [])
    return (read_details(details_path) if details_path else None,
            read_metadata(metadata_path) if metadata_path else None, label_table, problems)


def _prefer_split_csvs(paths: list[str]) -> list[str]:
    """Keep every fold CSV and all.csv; all.csv labels slices not in any fold file."""
    return sorted(paths, key=lambda p: (Path(p).name.lower() == "all.csv", p))
