"""What an ingest did: the report, the one-line errors and the closing summary of the command."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import ClassVar, Iterable

import pandas as pd

from .driver import RunReport
from .store.names import SKIPPED_PREFIX

__all__ = ["SKIPPED_PREFIX", "IngestReport", "NothingToIngestError", "count_entries", "nothing_matched",
           "nothing_stored", "summary_lines"]

class NothingToIngestError(ValueError):
    """No entry of the sources is named like a slice, or none of those was stored.

    ``report`` is the :class:`IngestReport` when the store was written (its
    quarantine table says why each file was refused), else None.
    """

    def __init__(self, message: str, report: "IngestReport | None" = None):
        super().__init__(message)
        self.report = report


@dataclass
class IngestReport(RunReport):
    """What an ingest did (bytes are raw pixels in and encoded shards out).

    Every entry under the sources is counted once: stored
    (``entries_stored``), quarantined or skipped (listed with the reason),
    or in a failed series (``entries_failed``).

    Attributes
    ----------
    slices : int
        Slices in the store's catalog after the run.
    slices_written, series_written, series_skipped : int
    bytes_raw, bytes_stored : int
        Raw pixel bytes read and encoded shard bytes of full-resolution slices written (``ratio``).
    bytes_pyramid : int
        Encoded shard bytes of the pyramid levels written with them.
    entries_stored, entries_failed : int
        Source files (or archive members) stored, and those of series that failed.
    quarantined : list of (str, str)
        Refused entries: (location, reason).
    skipped : list of (str, str)
        Entries deliberately not read (other files, folders walked already,
        metadata files not used): (location, reason).
    metadata : dict of str to list of str
        Metadata CSVs read: details, metadata (per-series DICOM values) and labels.
    series, series_spacing_unknown, series_thickness_unknown : int
        Series in the catalog, and those without a pixel spacing or slice
        thickness (their attributes say ``"unknown"``).
    catalog_written : bool
        Whether the catalog changed.
    healed : list of (str, str)
        Stored series found damaged and written again from the sources:
        ("patient/series", what was wrong).
    """

    slices: int = 0
    slices_written: int = 0
    series_written: int = 0
    series_skipped: int = 0
    bytes_raw: int = 0
    bytes_stored: int = 0
    bytes_pyramid: int = 0
    entries_stored: int = 0
    entries_failed: int = 0
    quarantined: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    metadata: dict[str, list[str]] = field(default_factory=dict)
    series: int = 0
    series_spacing_unknown: int = 0
    series_thickness_unknown: int = 0
    catalog_written: bool = False
    healed: list[tuple[str, str]] = field(default_factory=list)
    derived: ClassVar[tuple[str, ...]] = ("ratio", "slices_per_second")

    @property
    def ratio(self) -> float:
        """Compression ratio: raw bytes / stored bytes."""
        return self.bytes_raw / self.bytes_stored if self.bytes_stored else float("nan")

    @property
    def slices_per_second(self) -> float:
        """Slices written per second of the run (cluster start-up not counted: see ``cluster_seconds``)."""
        return self.slices_written / self.seconds if self.seconds else float("nan")

    @property
    def nothing_written(self) -> bool:
        """True when the store was already complete."""
        return self.series_written == 0 and not self.catalog_written and not self.healed


def _first(listed: list[tuple[str, str]]) -> str:
    return f"; first: {listed[0][0]}: {listed[0][1]}" if listed else ""


def nothing_matched(sources: Iterable[str | os.PathLike], report: IngestReport) -> str:
    """The one-line reason of an ingest whose sources hold no entry named like a slice."""
    where = ", ".join(os.fspath(s) for s in sources)
    return (f"nothing to ingest: no entry under {where} is a slice named <group>/<patientN>/<SR_k>/IMnnnnn.tif "
            f"or <group>_<patientN>_<SR_k>_IMnnnnn.tif ({len(report.quarantined)} quarantined, "
            f"{len(report.skipped)} skipped{_first(report.quarantined or report.skipped)})")


def nothing_stored(report: IngestReport) -> str:
    """The one-line reason of an ingest that stored no slice."""
    failed = f", {len(report.failed_series)} series failed" if report.failed_series else ""
    return (f"nothing ingested: no slice was stored ({len(report.quarantined)} quarantined, "
            f"{len(report.skipped)} skipped{failed}{_first(report.quarantined or report.failed_series)}); "
            f"the store's quarantine table lists every reason")


def count_entries(files: pd.DataFrame, catalog: pd.DataFrame, report: IngestReport) -> None:
    """Source files stored (their slice is in the catalog and they were not quarantined) and in failed series."""
    key = ["patient", "series", "instance"]
    locations = [f"{a}::{p}" if a else p for a, p in zip(files["archive"], files["path"])]
    refused = {location for location, _ in report.quarantined}
    stored = set(map(tuple, catalog[key].itertuples(index=False)))
    failed = {label for label, _ in report.failed_series}
    for location, patient, series, instance in zip(locations, files["patient"], files["series"], files["instance"]):
        if f"{patient}/{series}" in failed:
            report.entries_failed += 1
        elif location not in refused and (patient, series, int(instance)) in stored:
            report.entries_stored += 1


def summary_lines(report: IngestReport) -> list[str]:
    """The closing lines of ``ctengine ingest``: entries, metadata found or missing, unknown spacing."""
    lines = [f"entries: {report.entries_stored} stored, {len(report.quarantined)} quarantined, "
             f"{len(report.skipped)} skipped" + (f", {report.entries_failed} in failed series"
                                                 if report.entries_failed else "")]
    found = []
    for kind, words in (("details", "Patient_details.csv"), ("metadata", "Patients_metadata.csv"),
                        ("labels", "label CSVs")):
        paths = report.metadata.get(kind, [])
        said = "not found" if not paths else paths[0] if len(paths) == 1 else f"{len(paths)} files"
        found.append(f"{words}: {said}")
    lines.append("metadata: " + "; ".join(found))
    if report.series_spacing_unknown:
        lines.append(f"pixel spacing unknown for {report.series_spacing_unknown} of {report.series} series "
                     f"(recorded as \"unknown\"; their coordinates are in pixels)")
    if report.series_thickness_unknown:
        lines.append(f"slice thickness unknown for {report.series_thickness_unknown} of {report.series} series "
                     f"(recorded as \"unknown\")")
    return lines
