"""The dataset's CSV files: patient details, per-series DICOM metadata, label and fold CSVs.

Units: thickness and spacing in mm, age in years, rescale as in DICOM
(HU = raw * slope + intercept).
"""
from __future__ import annotations

import io
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from .constants import SERIES
from .entries import MAX_CSV_BYTES, read_regular
from .layout import SPLIT_CSV, Scan, csv_kind, parse_name

#: folder beside the images where the dataset (and ``ctengine synth``) keeps the label CSVs
LABEL_FOLDER = "CSV"
KIND_NAMES = {"details": "Patient_details.csv", "metadata": "Patients_metadata.csv", "labels": "label CSVs"}


def _read_csv(path: str | os.PathLike, **kwargs) -> pd.DataFrame:
    """A CSV (or ``.csv.gz``) read only if it is a regular file within :data:`MAX_CSV_BYTES`."""
    data = read_regular(path, limit=MAX_CSV_BYTES)
    compression = "gzip" if os.fspath(path).lower().endswith(".gz") else None
    return pd.read_csv(io.BytesIO(data), compression=compression, **kwargs)


def read_details(path: str | os.PathLike) -> pd.DataFrame:
    """``Patient_details.csv`` -> one row per patient (label, sex, age in years, thickness per series, mm)."""
    raw = _read_csv(path, na_values=["N/A", "n/a", "NA", ""], keep_default_na=False, dtype=str)
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
    raw = _read_csv(path, na_values=["N/A", "n/a", "NA", ""], keep_default_na=False, dtype=str)
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
        try:
            table = _read_csv(path, dtype=str)
        except (ValueError, OSError) as exc:
            problems.append((path, f"unreadable label CSV ({type(exc).__name__}: {exc})"))
            continue
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


@dataclass
class FoundCsvs:
    """The metadata of an ingest: tables read, files used per kind, files not used and problems.

    ``used`` maps details, metadata and labels to the paths read (empty
    when none was found); ``skipped`` and ``problems`` list (path, reason).
    """

    details: pd.DataFrame | None = None
    metadata: pd.DataFrame | None = None
    labels: pd.DataFrame | None = None
    used: dict[str, list[str]] = field(default_factory=lambda: {kind: [] for kind in KIND_NAMES})
    skipped: list[tuple[str, str]] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)


def nearby_csvs(folders: Iterable[str]) -> dict[str, list[str]]:
    """Metadata CSVs in each folder and in its ``CSV`` subfolder (not recursive), by kind.

    Only regular files within :data:`MAX_CSV_BYTES` named like the
    dataset's metadata files are returned.
    """
    found: dict[str, list[str]] = {kind: [] for kind in KIND_NAMES}
    for folder in dict.fromkeys(folders):
        for place in (folder, os.path.join(folder, LABEL_FOLDER)):
            try:
                names = sorted(os.listdir(place))
            except OSError:
                continue
            for name in names:
                path, kind = os.path.join(place, name), csv_kind(name)
                try:
                    info = os.stat(path)
                except OSError:
                    continue
                if kind and stat.S_ISREG(info.st_mode) and info.st_size <= MAX_CSV_BYTES:
                    found[kind].append(path)
    return found


def find_csvs(scan_result: Scan, *, details: str | None = None, metadata: str | None = None,
              labels: list[str] | None = None) -> FoundCsvs:
    """Read the metadata CSVs: explicit paths, else those among the sources, else those beside them.

    Beside a source folder means in its parent folder and the parent's
    ``CSV`` folder, where the dataset's download and ``ctengine synth OUT``
    keep them (``OUT/Patient_details.csv``, ``OUT/CSV/all.csv`` beside
    ``OUT/COVID-CTset``); beside a file source, in its own folder. Files
    found but not used are listed in ``skipped``; a file that cannot be
    read is listed in ``problems`` (the next one found is tried), except an
    explicit ``details`` or ``metadata`` file, which raises ValueError.
    """
    around = nearby_csvs(scan_result.around)
    result = FoundCsvs()
    chosen: dict[str, list[str]] = {}
    for kind, explicit in (("details", details), ("metadata", metadata), ("labels", labels)):
        found = list(dict.fromkeys(scan_result.csvs[kind] + [p for p in around[kind]
                                                             if os.path.realpath(p) not in _real(scan_result)]))
        if explicit is not None:
            chosen[kind] = [os.fspath(p) for p in ([explicit] if kind != "labels" else explicit)]
            result.skipped.extend((p, f"{KIND_NAMES[kind]} given explicitly are used instead") for p in found)
        elif kind == "labels":
            chosen[kind] = _prefer_split_csvs(found)
        else:
            chosen[kind] = found  # the first that reads is used
    readers = {"details": read_details, "metadata": read_metadata}
    for kind, reader in readers.items():
        for path in chosen[kind]:
            if result.used[kind]:
                result.skipped.append((path, f"another {KIND_NAMES[kind]} is used: {result.used[kind][0]}"))
                continue
            try:
                setattr(result, kind, reader(path))
                result.used[kind].append(path)
            except (ValueError, OSError, KeyError) as exc:
                if {"details": details, "metadata": metadata}[kind] is not None:
                    raise ValueError(f"cannot read {path}: {exc}") from None
                result.problems.append((path, f"unreadable {KIND_NAMES[kind]} ({type(exc).__name__}: {exc})"))
    if chosen["labels"]:
        result.labels, problems = read_labels(chosen["labels"])
        result.problems.extend(problems)
        unread = {location for location, _ in problems}
        result.used["labels"] = [p for p in chosen["labels"] if p not in unread]
    return result


def _real(scan_result: Scan) -> set[str]:
    return {os.path.realpath(p) for paths in scan_result.csvs.values() for p in paths}


def _prefer_split_csvs(paths: list[str]) -> list[str]:
    """Keep every fold CSV and all.csv; all.csv labels slices not in any fold file."""
    return sorted(paths, key=lambda p: (Path(p).name.lower() == "all.csv", p))
