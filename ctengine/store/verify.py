"""Verify a store: check every series' metadata and shard, re-read every slice with plain zarr, compare checksums.

Each series' pyramid levels are compared with those its verified slices give.

Each missing or unreadable group, array, shard or chunk is reported with
its path, and the damaged series are recorded in the store (root attribute
:data:`~ctengine.store.names.DAMAGED`) for the next ``ingest`` to rewrite.

With sources, every source file is decoded again and compared too, so a
store can be proven bit-exact against the archives it came from.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import pandas as pd

from .. import layout
from ..driver import RunReport, map_series
from ..tiffio import BadSliceError, decode_slice, slice_checksum
from . import health, names, pyramid
from .handle import Store, open_store


@dataclass
class VerifyReport(RunReport):
    """Slices and source files checked, and every mismatch as (what, reason)."""

    slices_checked: int = 0
    sources_checked: int = 0
    mismatches: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when everything matched and no series failed to be checked."""
        return not self.mismatches and not self.failed_series


def _check_series(store: Store, patient: str, series: str, expected: list[str],
                  sources: list[tuple[str, list[tuple[str, str, str]]]]) -> tuple[str, list, list]:
    """Compare the stored stack of one series (read with plain zarr) with its catalog checksums.

    ``sources`` are (checksum, copies) of the series' source files, each
    copy (archive, path, name), decoded again and compared too. Return the
    series ("patient/series"), the problems of the store and those of the sources.
    """
    label = f"{patient}/{series}"
    problems = [problem for checksum, copies in sources for problem in _check_sources(copies, checksum)]
    damage = health.group_damage(store, patient, "patient group") + \
        health.series_damage(store, patient, series, len(expected), older_format=False)
    if damage:
        return label, damage, problems
    try:
        stack = store.raw(patient, series)[:]
    except Exception as exc:
        return label, [(label, f"unreadable: {type(exc).__name__}: {exc}")], problems
    damaged = [(f"{label}/z{z}", "stored pixels do not match the catalog checksum")
               for z, checksum in enumerate(expected) if slice_checksum(stack[z]) != checksum]
    return label, damaged or _pyramid_mismatches(store, label, stack), problems


def _pyramid_mismatches(store: Store, label: str, stack) -> list[tuple[str, str]]:
    """The pyramid levels of a series that differ from those its (verified) level 0 gives."""
    group = store.root[label]
    listed = len(names.level_paths(group.attrs)) - 1  # 0 for a series written before pyramids
    found = []
    for k, level in enumerate(pyramid.levels(stack)[:listed], 1):
        try:
            same = np.array_equal(group[names.level_name(k)][:], level)
        except Exception as exc:
            found.append((f"{label}/{k}", f"pyramid level unreadable: {type(exc).__name__}: {exc}"))
            continue
        if not same:
            found.append((f"{label}/{k}", "pyramid level does not match the one level 0 gives"))
    return found


def _check_sources(copies: list[tuple[str, str, str]], expected: str) -> list[tuple[str, str]]:
    problems = []
    for archive, member, _ in copies:
        location = f"{archive}::{member}" if archive else member
        try:
            image = decode_slice(layout.read_source(archive, member), shape=None)
        except (BadSliceError, OSError, ValueError) as exc:
            problems.append((location, f"source unreadable: {exc}"))
            continue
        if slice_checksum(image) != expected:
            problems.append((location, "source pixels differ from the stored slice"))
    return problems


def verify(store: str | os.PathLike, *, sources: Iterable[str | os.PathLike] = (), client=None,
           storage_options: dict | None = None, progress: bool = False) -> VerifyReport:
    """Re-read every stored slice (and optionally every source) and compare checksums (SHA-256).

    Parameters
    ----------
    store : str or path
        Store path or fsspec URL.
    sources : paths, optional
        Source trees or archives the store was ingested from; every file not
        quarantined is decoded again and compared with the stored slice.
    client : distributed.Client, optional
        Default: a LocalCluster sized to the machine.
    storage_options : dict, optional
        fsspec options of a remote store.
    progress : bool
        Show a progress bar.

    Returns
    -------
    VerifyReport
    """
    from ..sources import split_sources, verify_sources

    started = time.perf_counter()
    opened = open_store(store, storage_options=storage_options)
    catalog, quarantined = opened.catalog, set(opened.quarantine["location"])
    report = VerifyReport(store=opened.url, slices_checked=len(catalog))
    tiff_sources, dicoms, volumes = split_sources(sources)  # DICOM and volume sources: ctengine.sources
    checked, problems, failed = verify_sources(dicoms, volumes, opened, client=client, progress=progress)
    report.mismatches.extend(problems)
    report.failed_series.extend(failed)
    per_series = _source_copies(catalog, tiff_sources, quarantined, report)
    report.sources_checked += checked
    expected = {key: rows.sort_values("z")["checksum"].tolist() for key, rows in catalog.groupby(["patient", "series"])}
    outcome = map_series(_check_series, [(opened, p, s, sums, per_series.get((p, s), []))
                                         for (p, s), sums in expected.items()],
                         labels=[f"{p}/{s}" for p, s in expected], name="verify", client=client,
                         weights=[len(sums) for sums in expected.values()], unit="slice", progress=progress)
    damaged: dict[str, str] = {}
    for label, stored, problems in outcome.results:
        report.mismatches.extend(stored + problems)
        if stored:  # damage of the store, not of the sources, is for ingest to rewrite
            damaged[label] = "; ".join(f"{what}: {why}" for what, why in stored[:3])
    report.failed_series.extend(outcome.failures)
    report.cluster_seconds = outcome.cluster_seconds
    _record(opened, damaged, report)
    report.seconds = time.perf_counter() - started - report.cluster_seconds
    return report


def _record(opened: Store, damaged: dict[str, str], report: VerifyReport) -> None:
    """Record the damaged series in the store for ``ingest`` to rewrite (when the store can be written)."""
    if report.failed_series:  # series that could not be checked: keep what was recorded about them
        damaged = {**{k: v for k, v in health.damaged_series(opened).items()
                      if k in {label for label, _ in report.failed_series}}, **damaged}
    if damaged == health.damaged_series(opened):
        return
    try:
        health.record_damaged(Store(opened.url, mode="a", storage_options=opened.storage_options), damaged)
    except (OSError, PermissionError) as exc:  # a read-only store: the report still lists every problem
        report.mismatches.append((opened.url, f"could not record the damaged series in the store: {exc}"))


def _source_copies(catalog: pd.DataFrame, sources: list, quarantined: set[str],
                   report: VerifyReport) -> dict[tuple[str, str], list[tuple[str, list[tuple[str, str, str]]]]]:
    """Source files of each series grouped by stored checksum; files not in the store become mismatches."""
    if not sources:
        return {}
    files = layout.scan(sources).files
    if not len(files):  # e.g. only DICOM folders
        return {}
    locations = [f"{a}::{p}" if a else p for a, p in zip(files["archive"], files["path"])]
    files = files[[loc not in quarantined for loc in locations]]
    merged = files.merge(catalog[["patient", "series", "instance", "checksum"]],
                         on=["patient", "series", "instance"], how="left")
    missing = merged[merged["checksum"].isna()]
    report.mismatches.extend((f"{a}::{p}" if a else p, "source slice is not in the store")
                             for a, p in zip(missing["archive"], missing["path"]))
    merged = merged.dropna(subset=["checksum"])
    report.sources_checked += len(merged)
    return {key: [(checksum, list(zip(copies["archive"], copies["path"], copies["name"])))
                  for checksum, copies in rows.groupby("checksum")]
            for key, rows in merged.groupby(["patient", "series"])}
