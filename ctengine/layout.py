"""Names and folders of COVID-CTset -> a catalog with one row per slice.

Three forms are read, alone or mixed:

* the whole-dataset tree ``<root>/<group>/<patientN>/<SR_k>/IMnnnnn.tif``;
* the zip archives as distributed, member by member without extracting
  (``X.zip``, or split parts ``X.zip.001``, ``X.zip.002``, ... read as one);
* the flat training folder ``<group>_<patientN>_<SR_k>_IMnnnnn.tif``.

Slices are keyed by (patient, series, instance), never by group: the same
slice arriving under two groups or two names is one row keeping every name.
"""
from __future__ import annotations

import os
import re
import zipfile
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import pandas as pd

from . import entries
from .archives import ARCHIVE_PART, member_refusal, open_archive, read_member, unsafe_member
from .constants import (DEFAULT_INTERCEPT, DEFAULT_SLOPE, GROUPS_COVID, GROUPS_NORMAL,
                        MAX_TIFF_BYTES, MULTI_SEP, SERIES)

__all__ = ["ARCHIVE_PART", "Scan", "SliceKey", "build_catalog", "csv_kind", "open_archive", "parse_name",
           "read_member", "read_source", "read_source_into", "scan", "unsafe_member"]

TREE_NAME = re.compile(r"(?:^|/)(?P<group>[A-Za-z0-9._-]+)/(?P<patient>patient\d+)/(?P<series>SR_\d+)/"
                       r"IM(?P<instance>\d+)\.tiff?$", re.IGNORECASE)
FLAT_NAME = re.compile(r"^(?P<group>[A-Za-z0-9.-]+)_(?P<patient>patient\d+)_(?P<series>SR_\d+)_"
                       r"IM(?P<instance>\d+)\.tiff?$", re.IGNORECASE)
SPLIT_CSV = re.compile(r"^(?P<split>train|validation|test)(?P<fold>\d+)\.csv$", re.IGNORECASE)
N_FOLDS = 5


@dataclass(frozen=True)
class SliceKey:
    """Where one slice belongs, parsed from a file name."""

    group: str
    patient: str
    series: str
    instance: int

    @property
    def flat_name(self) -> str:
        return f"{self.group}_{self.patient}_{self.series}_IM{self.instance:05d}.tif"


def parse_name(name: str) -> SliceKey | None:
    """Parse a tree path (its last four parts) or a flat file name; None if neither."""
    name = name.replace("\\", "/")
    match = TREE_NAME.search(name) or FLAT_NAME.match(name.rsplit("/", 1)[-1])
    if match is None:
        return None
    return SliceKey(match["group"], match["patient"].lower(), match["series"].upper(), int(match["instance"]))


# ---------------------------------------------------------------- scanning

@dataclass
class Scan:
    """What a scan of the sources found; every entry is in ``files``, ``rejected`` or ``skipped``.

    ``files`` has one row per slice file: patient, series, instance, group,
    name (the source name: tree path from the group, or flat name), archive
    (``+``-joined part paths, empty for plain files) and path (file path or
    archive member). ``rejected`` lists (location, reason) for entries that
    cannot be slices (quarantined); ``skipped`` lists (location, reason) for
    entries deliberately not read (other files, a folder walked already).
    ``csvs`` maps a kind (details, metadata, labels) to the metadata files
    found among the sources; ``folders`` are the source folders and
    ``around`` the folders where metadata beside them is looked for.
    """

    files: pd.DataFrame
    rejected: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    csvs: dict[str, list[str]] = field(default_factory=lambda: {"details": [], "metadata": [], "labels": []})
    folders: list[str] = field(default_factory=list)
    around: list[str] = field(default_factory=list)


def scan(sources: Iterable[str | os.PathLike]) -> Scan:
    """Find every slice under folders, zip archives and files, and the reason for every other entry.

    Symbolic links are followed (each folder walked once); only regular
    files are candidates; see :mod:`ctengine.entries` and
    :mod:`ctengine.archives`.

    Raises
    ------
    FileNotFoundError
        For a source that does not exist.
    """
    walked = entries.walk(sources)
    rows: list[dict] = []
    result = Scan(files=pd.DataFrame(), rejected=list(walked.quarantined), skipped=list(walked.skipped),
                  folders=list(walked.folders), around=list(walked.around))
    for path in walked.csvs:
        _classify_csv(path, result)
    for path in walked.slices:
        _add_file(rows, result.rejected, name=path, archive="", path=path)
    for parts in walked.archives:
        _scan_archive(parts, rows, result)
    result.files = pd.DataFrame(rows, columns=["patient", "series", "instance", "group", "name", "archive", "path"])
    result.files = result.files.astype({"instance": "int64"})
    return result


def csv_kind(path: str) -> str | None:
    """``details``, ``metadata`` or ``labels`` for a metadata CSV's file name; None for another name."""
    name = os.path.basename(path).lower()
    if name == "patient_details.csv":
        return "details"
    if name == "patients_metadata.csv":
        return "metadata"
    if name == "all.csv" or SPLIT_CSV.match(name):
        return "labels"
    return None


def _classify_csv(path: str, result: Scan) -> None:
    kind = csv_kind(path)
    if kind is None:
        result.skipped.append((path, "a CSV that is not Patient_details.csv, Patients_metadata.csv, all.csv "
                                     "or a fold CSV (trainK, validationK, testK)"))
    else:
        result.csvs[kind].append(path)


def _scan_archive(parts: tuple[str, ...], rows: list[dict], result: Scan) -> None:
    label = "+".join(parts)
    try:
        with open_archive(parts) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        result.rejected.append((label, f"unreadable zip archive ({exc})"))
        return
    for info in infos:
        location, name = f"{label}::{info.filename}", info.filename
        if info.is_dir():
            if entries.is_slice_name(name):
                result.rejected.append((location, "a folder named like a slice file"))
            continue
        refusal = member_refusal(info)
        if refusal is None and entries.is_slice_name(name) and info.file_size > MAX_TIFF_BYTES:
            refusal = f"member declares {info.file_size} bytes, over the limit of {MAX_TIFF_BYTES}; not read"
        if refusal is not None:
            result.rejected.append((location, refusal))
        elif entries.is_slice_name(name):
            _add_file(rows, result.rejected, name=name, archive=label, path=name, location=location)
        elif name.lower().endswith(".csv"):
            result.skipped.append((location, "a CSV inside a zip archive is not read as metadata (extract it, "
                                             "or give it with --details, --metadata or --labels)"))
        else:
            result.skipped.append((location, entries.NOT_USED))


def _add_file(rows: list[dict], rejected: list[tuple[str, str]], *, name: str, archive: str, path: str,
              location: str | None = None) -> None:
    key = parse_name(name)
    if key is None:
        rejected.append((location or name, "name does not parse as <group>/<patientN>/<SR_k>/IMnnnnn.tif "
                                           "or <group>_<patientN>_<SR_k>_IMnnnnn.tif"))
        return
    rows.append({"patient": key.patient, "series": key.series, "instance": key.instance, "group": key.group,
                 "name": _source_name(name, key), "archive": archive, "path": path})


def _source_name(name: str, key: SliceKey) -> str:
    """The dataset-relative name: ``group/patient/SR_k/IMnnnnn.tif`` or the flat name."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    if FLAT_NAME.match(base):
        return base
    return f"{key.group}/{key.patient}/{key.series}/{base}"


def read_source(archive: str, path: str) -> bytes:
    """Bytes of one slice file (plain path, or member ``path`` of ``archive``), refused over the size limit.

    Raises
    ------
    ValueError
        When the file is not a regular file (:class:`ctengine.entries.NotRegularError`) or is too large.
    OSError, zipfile.BadZipFile
        When it cannot be read.
    """
    if not archive:
        return entries.read_regular(path, limit=MAX_TIFF_BYTES)
    with open_archive(tuple(archive.split("+"))) as opened:
        return read_member(opened, path)


def read_source_into(archive: str, path: str, buffer: np.ndarray) -> tuple[bytes | memoryview, np.ndarray]:
    """As :func:`read_source`, a plain file read into ``buffer`` (see :func:`ctengine.entries.read_regular_into`).

    Returns the file's bytes and the buffer to use next time.
    """
    if not archive:
        return entries.read_regular_into(path, buffer, limit=MAX_TIFF_BYTES)
    return read_source(archive, path), buffer


# ---------------------------------------------------------------- catalog

def build_catalog(files: pd.DataFrame, *, details: pd.DataFrame | None = None,
                  metadata: pd.DataFrame | None = None, labels: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per unique (patient, series, instance), sorted, with every source kept.

    Columns: patient, series, instance, z (index in the stored stack), label
    (the patient's), slice_label ('' when unlabelled), labelled, group and
    source (every group / source name, ``;``-joined), thickness_mm,
    spacing_y_mm, spacing_x_mm, slope, intercept, kernel, window_center,
    window_width (HU), fold1..fold5 (the patient's split: train, validation,
    test or ''), checksum ('' until ingested).
    """
    key = ["patient", "series", "instance"]
    catalog = _sources_per_slice(files, key)
    catalog["z"] = catalog.groupby(["patient", "series"]).cumcount().astype("int64")
    catalog = _join_labels(catalog, labels)
    catalog["label"] = _patient_labels(catalog, details)
    catalog = _join_series_metadata(catalog, details, metadata)
    catalog["checksum"] = ""
    return catalog


def _sources_per_slice(files: pd.DataFrame, key: list[str]) -> pd.DataFrame:
    """One row per ``key``, sorted, with its files' groups and names (``;``-joined, first seen first).

    Most slices have one file: only the others are joined, in Python.
    """
    repeated = files.duplicated(key, keep=False)
    single = files.loc[~repeated, [*key, "group", "name"]].rename(columns={"name": "source"})
    joined = files[repeated].groupby(key, sort=False).agg(group=("group", _join_unique),
                                                          source=("name", _join_unique)).reset_index()
    parts = [part for part in (single, joined) if len(part)] or [single]
    both = pd.concat(parts, ignore_index=True)
    if len(both):  # the joined strings as pandas' string dtype, as a groupby gives them
        both = both.astype({"group": "str", "source": "str"})
    return both.sort_values(key, ignore_index=True)


def _join_unique(values: pd.Series) -> str:
    return MULTI_SEP.join(dict.fromkeys(values))


def _join_labels(catalog: pd.DataFrame, labels: pd.DataFrame | None) -> pd.DataFrame:
    key = ["patient", "series", "instance"]
    if labels is None or labels.empty:
        catalog["slice_label"] = ""
    else:
        first = labels.drop_duplicates(key)[key + ["slice_label"]]
        catalog = catalog.merge(first, on=key, how="left")
        catalog["slice_label"] = catalog["slice_label"].fillna("")
    catalog["labelled"] = catalog["slice_label"] != ""
    for fold in range(1, N_FOLDS + 1):
        splits: dict[str, str] = {}
        if labels is not None and not labels.empty:
            in_fold = labels[labels["fold"] == fold].drop_duplicates(["patient", "split"])
            splits = in_fold.groupby("patient")["split"].agg(lambda s: "+".join(sorted(s))).to_dict()
        catalog[f"fold{fold}"] = [splits.get(p, "") for p in catalog["patient"]]
    return catalog


def _patient_labels(catalog: pd.DataFrame, details: pd.DataFrame | None) -> pd.Series:
    """The patient's label: details CSV, else the group name, else its labelled slices."""
    label = pd.Series("", index=catalog.index, dtype=object)
    if details is not None:
        known = details.dropna(subset=["label"]).set_index("patient")["label"].to_dict()
        label = pd.Series([known.get(p, "") for p in catalog["patient"]], index=catalog.index, dtype=object)
    by_group = catalog["group"].map(_label_from_groups)
    label = label.where(label != "", by_group)
    votes = catalog[catalog["slice_label"] != ""].groupby("patient")["slice_label"].agg(
        lambda s: "covid" if (s == "covid").any() else "normal").to_dict()
    fallback = pd.Series([votes.get(p, "unknown") for p in catalog["patient"]], index=catalog.index)
    return label.where(label != "", fallback).astype(str)


def _label_from_groups(groups: str) -> str:
    names = set(groups.split(MULTI_SEP))
    if names & set(GROUPS_COVID):
        return "covid"
    if names & set(GROUPS_NORMAL):
        return "normal"
    return ""


def _join_series_metadata(catalog: pd.DataFrame, details: pd.DataFrame | None,
                          metadata: pd.DataFrame | None) -> pd.DataFrame:
    if metadata is not None:
        catalog = catalog.merge(metadata, on=["patient", "series"], how="left")
    for column in ("meta_thickness_mm", "spacing_y_mm", "spacing_x_mm", "slope", "intercept",
                   "window_center", "window_width"):
        if column not in catalog:
            catalog[column] = np.nan
    catalog["kernel"] = catalog["kernel"].fillna("").astype(str) if "kernel" in catalog else ""
    thickness = pd.Series(np.nan, index=catalog.index)
    if details is not None:
        per_series = details.melt(id_vars="patient", value_vars=[f"thickness_{s}" for s in SERIES],
                                  var_name="series", value_name="thickness_mm")
        per_series["series"] = per_series["series"].str.removeprefix("thickness_")
        thickness = catalog[["patient", "series"]].merge(per_series, how="left")["thickness_mm"]
        thickness.index = catalog.index
    catalog["thickness_mm"] = thickness.fillna(catalog.pop("meta_thickness_mm")).astype("float64")
    catalog["slope"] = catalog["slope"].fillna(DEFAULT_SLOPE)
    catalog["intercept"] = catalog["intercept"].fillna(DEFAULT_INTERCEPT)
    return catalog

