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

import io
import os
import re
import zipfile
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np
import pandas as pd

from .constants import (DEFAULT_INTERCEPT, DEFAULT_SLOPE, GROUPS_COVID, GROUPS_NORMAL,
                        MAX_TIFF_BYTES, MULTI_SEP, SERIES)

TREE_NAME = re.compile(r"(?:^|/)(?P<group>[A-Za-z0-9._-]+)/(?P<patient>patient\d+)/(?P<series>SR_\d+)/"
                       r"IM(?P<instance>\d+)\.tiff?$", re.IGNORECASE)
FLAT_NAME = re.compile(r"^(?P<group>[A-Za-z0-9.-]+)_(?P<patient>patient\d+)_(?P<series>SR_\d+)_"
                       r"IM(?P<instance>\d+)\.tiff?$", re.IGNORECASE)
SPLIT_CSV = re.compile(r"^(?P<split>train|validation|test)(?P<fold>\d+)\.csv$", re.IGNORECASE)
ARCHIVE_PART = re.compile(r"^(?P<stem>.+\.zip)\.(?P<part>\d{3})$", re.IGNORECASE)
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


# ---------------------------------------------------------------- archives

class _Concatenated(io.RawIOBase):
    """Several part files read as one seekable file (split zip archives)."""

    def __init__(self, paths: tuple[str, ...]):
        self._files = [open(p, "rb") for p in paths]
        self._sizes = [os.fstat(f.fileno()).st_size for f in self._files]
        self._starts = np.concatenate([[0], np.cumsum(self._sizes)]).tolist()
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._starts[-1]}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self._pos < self._starts[-1]:
            part = int(np.searchsorted(self._starts, self._pos, side="right")) - 1
            handle = self._files[part]
            handle.seek(self._pos - self._starts[part])
            n = handle.readinto(view[done:done + self._starts[part + 1] - self._pos])
            if not n:
                break
            done += n
            self._pos += n
        return done

    def close(self) -> None:
        for handle in self._files:
            handle.close()
        super().close()


def open_archive(parts: tuple[str, ...]) -> zipfile.ZipFile:
    """Open a zip archive given as one file or as its split parts in order."""
    if len(parts) == 1:
        return zipfile.ZipFile(parts[0])
    return zipfile.ZipFile(io.BufferedReader(_Concatenated(parts), buffer_size=1 << 20))


def read_member(archive: zipfile.ZipFile, member: str) -> bytes:
    """Read one member, refusing one that declares more than the size limit."""
    info = archive.getinfo(member)
    if info.file_size > MAX_TIFF_BYTES:
        raise ValueError(f"member declares {info.file_size} bytes, over the limit of {MAX_TIFF_BYTES}")
    with archive.open(info) as handle:
        return handle.read(MAX_TIFF_BYTES + 1)


def unsafe_member(name: str) -> bool:
    """True for a member name that is absolute or climbs out with '..'."""
    name = name.replace("\\", "/")
    return name.startswith("/") or re.match(r"^[A-Za-z]:", name) is not None or ".." in name.split("/")


# ---------------------------------------------------------------- scanning

@dataclass
class Scan:
    """What a scan of the sources found.

    ``files`` has one row per slice file: patient, series, instance, group,
    name (the source name: tree path from the group, or flat name), archive
    (``+``-joined part paths, empty for plain files) and path (file path or
    archive member). ``rejected`` lists (location, reason) for files that
    cannot be slices. ``csvs`` maps a kind (details, metadata, labels) to
    the metadata files found beside the images.
    """

    files: pd.DataFrame
    rejected: list[tuple[str, str]] = field(default_factory=list)
    csvs: dict[str, list[str]] = field(default_factory=lambda: {"details": [], "metadata": [], "labels": []})


def scan(sources: Iterable[str | os.PathLike]) -> Scan:
    """Find every slice under folders, zip archives and files.

    Raises FileNotFoundError for a source that does not exist.
    """
    rows: list[dict] = []
    result = Scan(files=pd.DataFrame())
    for kind, item in _walk(sources):
        if kind == "csv":
            _classify_csv(item, result.csvs)
        elif kind == "archive":
            _scan_archive(item, rows, result.rejected)
        else:
            _add_file(rows, result.rejected, name=item, archive="", path=item)
    result.files = pd.DataFrame(rows, columns=["patient", "series", "instance", "group", "name", "archive", "path"])
    result.files = result.files.astype({"instance": "int64"})
    return result


def _walk(sources: Iterable[str | os.PathLike]) -> Iterator[tuple[str, object]]:
    """Yield ('tif', path), ('csv', path) and ('archive', parts) in a stable order."""
    files: list[str] = []
    for source in sources:
        source = os.path.abspath(os.fspath(source))
        if os.path.isdir(source):
            for top, dirs, names in os.walk(source):
                dirs[:] = sorted(d for d in dirs if not d.endswith(".zarr"))
                files.extend(os.path.join(top, n) for n in sorted(names))
        elif os.path.exists(source):
            files.append(source)
        else:
            raise FileNotFoundError(f"source {source!r} does not exist")
    parts: dict[str, list[str]] = {}
    for path in files:
        lower = path.lower()
        part = ARCHIVE_PART.match(path)
        if part:
            parts.setdefault(part["stem"], []).append(path)
        elif lower.endswith(".zip"):
            parts.setdefault(path, []).append(path)
        elif lower.endswith(".csv"):
            yield "csv", path
        elif lower.endswith((".tif", ".tiff")):
            yield "tif", path
    for stem in sorted(parts):
        yield "archive", tuple(sorted(parts[stem]))


def _classify_csv(path: str, csvs: dict[str, list[str]]) -> None:
    name = os.path.basename(path).lower()
    if name == "patient_details.csv":
        csvs["details"].append(path)
    elif name == "patients_metadata.csv":
        csvs["metadata"].append(path)
    elif name == "all.csv" or SPLIT_CSV.match(name):
        csvs["labels"].append(path)


def _scan_archive(parts: tuple[str, ...], rows: list[dict], rejected: list[tuple[str, str]]) -> None:
    label = "+".join(parts)
    try:
        with open_archive(parts) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        rejected.append((label, f"unreadable zip archive ({exc})"))
        return
    for info in infos:
        if info.is_dir() or not info.filename.lower().endswith((".tif", ".tiff")):
            continue
        location = f"{label}::{info.filename}"
        if unsafe_member(info.filename):
            rejected.append((location, "unsafe member name (absolute or '..')"))
            continue
        _add_file(rows, rejected, name=info.filename, archive=label, path=info.filename, location=location)


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
    """Bytes of one slice file (plain path, or member ``path`` of ``archive``)."""
    if not archive:
        size = os.path.getsize(path)
        if size > MAX_TIFF_BYTES:
            raise ValueError(f"file of {size} bytes exceeds the limit of {MAX_TIFF_BYTES}")
        with open(path, "rb") as handle:
            return handle.read()
    with open_archive(tuple(archive.split("+"))) as opened:
        return read_member(opened, path)


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
    grouped = files.groupby(key, sort=True)
    catalog = grouped.agg(group=("group", _join_unique), source=("name", _join_unique)).reset_index()
    catalog["z"] = catalog.groupby(["patient", "series"]).cumcount().astype("int64")
    catalog = _join_labels(catalog, labels)
    catalog["label"] = _patient_labels(catalog, details)
    catalog = _join_series_metadata(catalog, details, metadata)
    catalog["checksum"] = ""
    return catalog


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

