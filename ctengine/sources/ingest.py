"""DICOM folders and NIfTI / NRRD files planned into series tasks of the one ingest.

:func:`split_sources` sorts what the user named into COVID-CTset sources
(folders are always scanned for TIFFs too) and DICOM / volume files;
:func:`plan_sources` reads headers only and returns the catalog rows, the
refused files and the series plans; :class:`SourceSeriesTask` is what
:func:`ctengine.ingestion.ingest_series` runs on a worker (its ``read``
reads the pixels). Downstream nothing tells these series from TIFF series,
except the catalog columns ``study_uid``, ``series_uid``, ``sop_uid`` and
the ``source`` attribute of the series group.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import pandas as pd

from ..constants import RAW_DTYPE
from ..store import Store
from ..tiffio import slice_checksum
from . import dicom, keys, volume

__all__ = ["SourcePlan", "SeriesPlan", "SourceSeriesTask", "UID_COLUMNS", "finish_catalog", "merge_catalog",
           "plan_sources", "split_sources"]

#: catalog columns added when a store holds DICOM or volume series ('' for TIFF slices)
UID_COLUMNS = ("study_uid", "series_uid", "sop_uid")
_TIFF_LIKE = (".tif", ".tiff", ".zip", ".csv")


@dataclass
class SeriesPlan:
    """One series to store: its key, files in store order and the attributes known from headers."""

    kind: str  # "dicom" or "volume"
    patient: str
    series: str
    locations: list[str]  # one per slice (a volume repeats its path)
    names: list[str]
    attrs: dict[str, Any]
    headers: list[dicom.Header] = field(default_factory=list)
    axes: tuple[bool, bool, bool] = (False, False, False)
    geometry: dict[str, Any] = field(default_factory=dict)
    uids: tuple[str, str] = ("", "")
    sop_uids: list[str] = field(default_factory=list)

    @property
    def instances(self) -> list[int]:
        return list(range(1, len(self.locations) + 1))

    @property
    def plan(self) -> str:
        sizes = [os.path.getsize(p) for p in dict.fromkeys(self.locations)]
        text = json.dumps([self.kind, self.instances, self.names, self.sop_uids, sizes])
        return hashlib.sha256(text.encode()).hexdigest()

    def read_raw(self, offset: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """The raw uint16 stack and its ``source`` record; ``offset`` forces a DICOM offset (verify)."""
        if self.kind == "volume":
            return volume.read_volume(self.locations[0], self.geometry)
        stored = dicom.read_pixels(self.headers, self.axes)
        first = self.headers[0]
        if offset is not None:
            return dicom.apply_offset(stored, offset), {"offset": offset}
        raw, mapping = dicom.encode(stored, slope=first.slope, intercept=first.intercept)
        return raw, {"kind": "dicom", **mapping, "study_uid": self.uids[0], "series_uid": self.uids[1],
                     "transfer_syntax": first.transfer_syntax, "pixel_representation": first.pixel_representation,
                     "in_plane": dict(zip(("transposed", "flip_y", "flip_x"), self.axes))}


@dataclass
class SourceSeriesTask:
    """A series of a DICOM folder or volume file, as :func:`ctengine.ingestion.ingest_series` runs it.

    It has what ``ingest_series`` asks of a task (store, patient, series,
    instances, attrs, plan) and reads its own pixels (:meth:`read`).
    """

    store: Store
    spec: SeriesPlan
    patient: str = field(init=False)
    series: str = field(init=False)
    instances: list[int] = field(init=False)
    attrs: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.patient, self.series = self.spec.patient, self.spec.series
        self.instances = self.spec.instances
        self.attrs = dict(self.spec.attrs)

    #: attributes :meth:`read` sets from the pixels: a metadata update keeps the stored ones
    read_fields = ("slope", "intercept", "source")
    #: set by ingest: in the store's catalog already (checked for damage), and why verify found it damaged
    known = False
    heal = None

    @property
    def plan(self) -> str:
        return self.spec.plan

    def read(self) -> tuple[list[int], np.ndarray, list[str], list[tuple[str, str]]]:
        """(instances, raw stack, checksums, quarantined): a series that cannot be read is refused whole."""
        try:
            raw, record = self.spec.read_raw()
        except Exception as exc:  # decoder or file errors: refuse the series, keep the rest of the ingest
            reason = f"series {self.patient}/{self.series}: pixels unreadable ({type(exc).__name__}: {exc})"
            empty = np.empty((0, 0, 0), dtype=RAW_DTYPE)
            return [], empty, [], [(loc, reason) for loc in dict.fromkeys(self.spec.locations)]
        if record.get("kind") == "dicom":
            self.attrs.update(slope=record["slope"], intercept=record["intercept"])
        self.attrs["source"] = record
        return self.instances, raw, [slice_checksum(image) for image in raw], []


@dataclass
class SourcePlan:
    """What :func:`plan_sources` found: series plans, catalog rows and refused files."""

    series: list[SeriesPlan] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)

    def tasks(self, store: Store) -> list[SourceSeriesTask]:
        return [SourceSeriesTask(store, spec) for spec in self.series]

    def catalog(self) -> pd.DataFrame:
        """One row per planned slice (catalog columns the TIFF path fills, plus :data:`UID_COLUMNS`)."""
        rows = []
        for spec in self.series:
            a = spec.attrs
            spacing = a.get("spacing_mm") or (np.nan, np.nan)
            for z, (instance, name) in enumerate(zip(spec.instances, spec.names)):
                rows.append({"patient": spec.patient, "series": spec.series, "instance": instance, "group": "",
                             "source": name, "z": z, "label": "unknown", "thickness_mm": a.get("thickness_mm"),
                             "spacing_y_mm": spacing[0], "spacing_x_mm": spacing[1], "slope": a["slope"],
                             "intercept": a["intercept"], "kernel": a.get("kernel") or "",
                             "window_center": a.get("window_center"), "window_width": a.get("window_width"),
                             "study_uid": spec.uids[0], "series_uid": spec.uids[1],
                             "sop_uid": spec.sop_uids[z] if spec.sop_uids else ""})
        return pd.DataFrame(rows)


def split_sources(sources: Iterable[str | os.PathLike]) -> tuple[list[str], list[tuple[str, str]], list[str]]:
    """(COVID-CTset sources, DICOM files as (path, root), volume files) of what the user named.

    Folders stay COVID-CTset sources (their TIFFs, zips and CSVs) and are
    searched for DICOM files (``.dcm`` or the DICOM preamble) and volumes too.
    """
    tiff, dicoms, volumes = [], [], []
    for source in sources:
        path = os.path.abspath(os.fspath(source))
        if os.path.isdir(path):
            tiff.append(path)
            for top, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.endswith(".zarr"))
                for name in sorted(files):
                    _sort_file(os.path.join(top, name), path, dicoms, volumes, None)
        else:
            _sort_file(path, os.path.dirname(path), dicoms, volumes, tiff)
    return tiff, dicoms, volumes


def _sort_file(path: str, root: str, dicoms: list, volumes: list, tiff: list | None) -> None:
    if volume.is_volume_file(path):
        volumes.append(path)
    elif path.lower().endswith(_TIFF_LIKE) or ".zip." in path.lower():
        if tiff is not None:
            tiff.append(path)
    elif dicom.is_dicom_file(path):
        dicoms.append((path, root))
    elif tiff is not None:
        tiff.append(path)  # let the COVID-CTset scan name what it is not


def plan_sources(dicoms: list[tuple[str, str]], volumes: list[str]) -> SourcePlan:
    """Series plans from headers only (pixels are read by the tasks); refused files with the reason."""
    plan = SourcePlan()
    _plan_dicom(dicoms, plan)
    for path in volumes:
        try:
            geometry = volume.volume_geometry(path)
        except ValueError as exc:
            plan.rejected.append((path, str(exc)))
            continue
        patient, series = keys.volume_keys(path)
        nz = geometry["shape"][0]
        sz, sy, sx = geometry["spacing_mm"]
        attrs = {"thickness_mm": sz, "slice_spacing_mm": sz, "spacing_mm": [sy, sx], "slope": 1.0,
                 "intercept": -1024.0, "kernel": None, "window_center": None, "window_width": None, "groups": []}
        plan.series.append(SeriesPlan("volume", patient, series, [path] * nz, [os.path.basename(path)] * nz,
                                      attrs, geometry=geometry))
    _disambiguate(plan)
    return plan


def _plan_dicom(files: list[tuple[str, str]], plan: SourcePlan) -> None:
    groups: dict[tuple[str, str], list[tuple[dicom.Header, str]]] = defaultdict(list)
    for path, root in files:
        try:
            header = dicom.read_header(path)
        except ValueError as exc:
            plan.rejected.append((path, str(exc)))
            continue
        if header is None:  # a DICOMDIR
            continue
        problem = dicom.file_problem(header)
        if problem:
            plan.rejected.append((path, problem))
            continue
        groups[(header.study_uid, header.series_uid)].append((header, root))
    numbers = defaultdict(set)
    for (study, series_uid), members in groups.items():
        h = members[0][0]
        numbers[(keys.patient_key(h.patient_id, study), h.series_number)].add(series_uid)
    for (study, series_uid), members in sorted(groups.items()):
        first = members[0][0]
        patient = keys.patient_key(first.patient_id, study)
        collides = len(numbers[(patient, first.series_number)]) > 1
        series = keys.series_key(first.series_number, series_uid, collides=collides)
        roots = {h.path: root for h, root in members}
        try:
            ordered, step, axes = dicom.order_series([h for h, _ in members])
        except ValueError as exc:
            plan.rejected.extend((h.path, f"series {patient}/{series}: {exc}") for h, _ in members)
            continue
        spacing = list(first.pixel_spacing) if first.pixel_spacing else None
        if spacing and axes[0]:
            spacing = spacing[::-1]
        attrs = {"thickness_mm": first.thickness if first.thickness else step, "slice_spacing_mm": step,
                 "spacing_mm": spacing, "slope": first.slope, "intercept": first.intercept,
                 "kernel": first.kernel or None, "window_center": first.window_center,
                 "window_width": first.window_width, "groups": []}
        plan.series.append(SeriesPlan("dicom", patient, series, [h.path for h in ordered],
                                      [dicom.relative_name(h.path, roots[h.path]) for h in ordered], attrs,
                                      headers=ordered, axes=axes, uids=(study, series_uid),
                                      sop_uids=[h.sop_uid for h in ordered]))


def _disambiguate(plan: SourcePlan) -> None:
    """Two volume files with the same name (or a volume named like a DICOM patient) get a path hash."""
    seen: dict[tuple[str, str], int] = defaultdict(int)
    for spec in plan.series:
        seen[(spec.patient, spec.series)] += 1
    for spec in plan.series:
        if seen[(spec.patient, spec.series)] > 1 and spec.kind == "volume":
            spec.patient = f"{spec.patient}-{keys.short_hash(spec.locations[0])}"


def merge_catalog(catalog: pd.DataFrame, plan: SourcePlan) -> pd.DataFrame:
    """The COVID-CTset catalog with the planned series' rows; unchanged when there are none."""
    if not plan.series:
        return catalog
    extra = plan.catalog()
    extra["slice_label"], extra["labelled"], extra["checksum"] = "", False, ""
    for fold in range(1, 6):
        extra[f"fold{fold}"] = ""
    for column in ("thickness_mm", "spacing_y_mm", "spacing_x_mm", "slope", "intercept", "window_center",
                   "window_width"):
        extra[column] = pd.to_numeric(extra[column], errors="coerce").astype("float64")
    for column in catalog.columns:
        if column not in extra:  # e.g. columns of a metadata CSV
            kind = catalog[column].dtype.kind
            extra[column] = False if kind == "b" else (np.nan if kind in "fiuc" else "")
    if not len(catalog):
        return extra[list(catalog.columns) + [c for c in extra.columns if c not in catalog.columns]]
    base = catalog.copy()
    for column in UID_COLUMNS:
        base[column] = ""
    merged = pd.concat([base, extra[list(base.columns)]], ignore_index=True)
    return merged.astype({"instance": "int64", "z": "int64"})


def finish_catalog(catalog: pd.DataFrame, store: Store, plan: SourcePlan) -> pd.DataFrame:
    """Set the slope and intercept of stored DICOM series to those of their stored values (HU = raw*slope+intercept)."""
    for spec in plan.series:
        rows = (catalog["patient"] == spec.patient) & (catalog["series"] == spec.series)
        if spec.kind == "dicom" and rows.any():
            slope, intercept = store.rescale(spec.patient, spec.series)
            catalog.loc[rows, "slope"], catalog.loc[rows, "intercept"] = slope, intercept
    return catalog


def entries_stored(catalog: pd.DataFrame, plan: SourcePlan, failed: Iterable[tuple[str, str]]) -> int:
    """Files of the planned series whose slices are in the catalog (a volume file counts once)."""
    stored = set(map(tuple, catalog[["patient", "series"]].drop_duplicates().itertuples(index=False)))
    bad = {label for label, _ in failed}
    return sum(len(dict.fromkeys(spec.locations)) for spec in plan.series
               if (spec.patient, spec.series) in stored and f"{spec.patient}/{spec.series}" not in bad)
