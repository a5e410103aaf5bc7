"""Ingest: a Dask graph from the catalog to the store, one task per series.

Each task reads every source of its series (plain files or zip members),
decodes them safely, checks duplicates for conflicts, encodes the whole
series as one shard and writes it in one object, then marks the series
complete. A series is skipped when it is already complete for the same
plan (same instances and source names), so a killed run resumes where it
stopped and a second run over a complete store writes nothing; a complete
series whose metadata changed gets its new attributes, not its pixels again.

Every entry under the sources ends stored, quarantined or skipped with its
reason (:mod:`ctengine.entries`, :mod:`ctengine.layout`), and the report
counts them (:mod:`ctengine.ingest_report`).
"""
from __future__ import annotations

import hashlib
import json
import lzma
import os
import time
import zipfile
import zlib
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import pandas as pd

from . import csvs, layout, sources as other_sources
from .entries import prefetch_regular
from .constants import MULTI_SEP, RAW_DTYPE, SLICE_SHAPE
from .driver import map_series
from .ingest_report import (SKIPPED_PREFIX, IngestReport, NothingToIngestError, count_entries, nothing_matched,
                            nothing_stored)
from .store import Store, health, names, open_store, store_lock
from .store.buffers import ThreadBuffers
from .tiffio import BadSliceError, decode_slice_into, slice_checksum

__all__ = ["IngestPlan", "IngestReport", "NothingToIngestError", "SeriesTask", "ingest", "ingest_series",
           "plan_ingest"]

#: what reading one copy of a slice may raise for a bad file; it is quarantined, the series goes on
READ_ERRORS = (BadSliceError, OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError, NotImplementedError,
               zlib.error, lzma.LZMAError)


# ---------------------------------------------------------------- one series (runs on a worker)

@dataclass
class SeriesTask:
    """Everything a worker needs to store one series."""

    store: Store
    patient: str
    series: str
    instances: list[int]
    copies: list[list[tuple[str, str, str]]]  # per instance: (archive, path, source name)
    attrs: dict[str, Any]
    shape: tuple[int, int] = SLICE_SHAPE
    known: bool = False  # in the store's catalog already: checked for damage before it is skipped
    heal: str | None = None  # why verify recorded it as damaged

    @property
    def plan(self) -> str:
        text = json.dumps([self.instances, [[c[2] for c in copies] for copies in self.copies]])
        return hashlib.sha256(text.encode()).hexdigest()


def ingest_series(task: SeriesTask) -> dict[str, Any]:
    """Store one series; return its instances, checksums, quarantine and byte counts.

    A stored series is checked first (:func:`ctengine.store.health.series_damage`);
    a damaged one, or one ``verify`` recorded as damaged (``task.heal``), is
    written again from the sources and its result says why (``healed``).
    """
    done = task.store.completed_series(task.patient, task.series, task.plan)
    damage = task.heal
    if damage is None and task.known:
        found = health.series_damage(task.store, task.patient, task.series)
        damage = f"{found[0][0]}: {found[0][1]}" if found else None
    if done is not None and damage is None:
        # attributes set when the pixels are read (a DICOM series' stored-value rescale) stay as stored
        kept = {k: done[k] for k in ("instances", "checksums", "quarantined", *getattr(task, "read_fields", ()))
                if k in done}
        given = {k: v for k, v in task.attrs.items() if k not in kept}
        if {k: done.get(k) for k in given} != json.loads(json.dumps(given)):  # new metadata only
            task.store.update_series(task.patient, task.series, {**given, **kept}, task.plan)
        return {"patient": task.patient, "series": task.series, "status": "skipped", "bytes_raw": 0,
                "bytes_stored": 0, "bytes_pyramid": 0, "healed": None,
                **{k: done[k] for k in ("instances", "checksums", "quarantined")}}
    # DICOM and volume series (ctengine.sources) read themselves
    instances, images, checksums, quarantined = task.read() if hasattr(task, "read") else _read_series(task)
    result = {"patient": task.patient, "series": task.series, "instances": instances, "checksums": checksums,
              "quarantined": quarantined, "bytes_raw": 0, "bytes_stored": 0, "bytes_pyramid": 0,
              "healed": damage}
    if not len(images):
        task.store.begin_series(task.patient, task.series)
        return {**result, "status": "empty"}
    attrs = dict(task.attrs, instances=instances, checksums=checksums, quarantined=quarantined)
    stored = task.store.write_series(task.patient, task.series, images, attrs, task.plan)
    return {**result, "status": "written", "bytes_raw": images.nbytes, "bytes_stored": stored[0],
            "bytes_pyramid": sum(stored[1:])}


#: the file and the stack each worker thread reads and decodes into, series after series (the file buffer
#: is sized by :func:`ctengine.layout.read_source_into`, at most MAX_TIFF_BYTES)
_buffers = ThreadBuffers()
_NONE = np.empty(0, np.uint8)


def _read_series(task: SeriesTask) -> tuple[list[int], np.ndarray, list[str], list[tuple[str, str]]]:
    """Decode every copy of every instance into one stack; quarantine bad files and conflicting duplicates.

    The first good copy of an instance is decoded into its place in the
    stack, further copies into a spare slice and compared by checksum. The
    stack is the worker thread's (valid until its next series).
    """
    n, (h, w) = len(task.instances), task.shape
    prefetch_regular(member for copies in task.copies for archive, member, _ in copies if not archive)
    both = _buffers.get("stack", (n + 1) * h * w, RAW_DTYPE).reshape(n + 1, h, w)
    stack, spare = both[:n], both[n]
    instances, checksums, quarantined = [], [], []
    for instance, copies in zip(task.instances, task.copies):
        good = []
        for archive, member, name in copies:
            location = f"{archive}::{member}" if archive else member
            target = spare if good else stack[len(instances)]
            try:
                data, _buffers.file = layout.read_source_into(archive, member, getattr(_buffers, "file", _NONE))
                decode_slice_into(data, target)
            except READ_ERRORS as exc:
                quarantined.append((location, str(exc) or type(exc).__name__))
                continue
            good.append((location, slice_checksum(target)))
        if len({checksum for _, checksum in good}) > 1:
            names = ", ".join(location for location, _ in good)
            quarantined.extend((location, f"conflict: copies of {task.patient}/{task.series}/IM{instance:05d} "
                                          f"differ in pixels ({names})") for location, _ in good)
        elif good:
            instances.append(int(instance))
            checksums.append(good[0][1])
    return instances, stack[:len(instances)], checksums, quarantined


# ---------------------------------------------------------------- the whole ingest (runs on the client)

@dataclass
class IngestPlan:
    """What an ingest will read: the slice files, the catalog, the metadata and every other entry.

    ``files`` and ``catalog`` are those of :func:`ctengine.layout.scan` and
    :func:`ctengine.layout.build_catalog`; ``details`` the patient table;
    ``quarantined`` and ``skipped`` list (location, reason); ``metadata``
    maps details, metadata and labels to the CSV files read.
    """

    files: pd.DataFrame
    catalog: pd.DataFrame
    details: pd.DataFrame | None
    quarantined: list[tuple[str, str]]
    skipped: list[tuple[str, str]]
    metadata: dict[str, list[str]]


def plan_ingest(sources: Iterable[str | os.PathLike], *, details: str | None = None, metadata: str | None = None,
                labels: list[str] | None = None) -> IngestPlan:
    """Scan the sources and read the metadata found among them or beside them (see :func:`csvs.find_csvs`)."""
    found = layout.scan(sources)
    tables = csvs.find_csvs(found, details=details, metadata=metadata, labels=labels)
    catalog = layout.build_catalog(found.files, details=tables.details, metadata=tables.metadata,
                                   labels=tables.labels)
    return IngestPlan(found.files, catalog, tables.details, found.rejected + tables.problems,
                      found.skipped + tables.skipped, tables.used)


def ingest(sources: Iterable[str | os.PathLike], store: str | os.PathLike, *, details: str | None = None,
           metadata: str | None = None, labels: list[str] | None = None, client=None,
           storage_options: dict | None = None, progress: bool = True,
           shape: tuple[int, int] = SLICE_SHAPE) -> IngestReport:
    """Ingest COVID-CTset (tree, zip archives or flat folder) into a store, bit-exact.

    Every entry under the sources is stored, quarantined or skipped, and the
    last two are listed with their reason in the report and in the store's
    quarantine table (a skipped entry's reason starts with ``"skipped: "``).

    Parameters
    ----------
    sources : paths
        Folders, zip archives (or their ``.zip.NNN`` parts) and TIFF files;
        DICOM folders and files, NIfTI and NRRD files (:mod:`ctengine.sources`);
        symbolic links are followed.
    store : str
        Local path or fsspec URL of the store (created if missing).
    details, metadata, labels : paths, optional
        ``Patient_details.csv``, ``Patients_metadata.csv`` and label CSVs;
        found automatically among the sources or beside them (the parent
        of a source folder and its ``CSV`` folder) when not given.
    client : distributed.Client, optional
        Where to run; default a LocalCluster sized to the machine.
    shape : (int, int)
        Required slice shape (y, x) in pixels; other shapes are quarantined.

    Returns
    -------
    IngestReport

    Raises
    ------
    NothingToIngestError
        When no entry is named like a slice (the store is not touched), or
        when none was stored (the quarantine table is written).
    FileNotFoundError
        For a source that does not exist.
    """
    url = names.resolve(store)
    started = time.perf_counter()
    tiff_sources, dicoms, volumes = other_sources.split_sources(sources)
    plan = plan_ingest(tiff_sources, details=details, metadata=metadata, labels=labels)
    planned = other_sources.plan_sources(dicoms, volumes)  # DICOM folders, NIfTI / NRRD files
    read_elsewhere = {path for path, _ in dicoms} | set(volumes)
    report = IngestReport(store=url, quarantined=list(plan.quarantined) + planned.rejected,
                          skipped=[(where, why) for where, why in plan.skipped if where not in read_elsewhere],
                          metadata=plan.metadata)
    if plan.files.empty and not planned.series:
        raise NothingToIngestError(nothing_matched(sources, report))
    with store_lock(url):
        opened = open_store(url, mode="a", storage_options=storage_options)
        opened.initialise()
        tasks = _series_tasks(opened, plan.files, plan.catalog, shape) + planned.tasks(opened)
        old = opened.read_table(names.CATALOG)
        damaged = _mark_damaged(opened, tasks, old)
        catalog = other_sources.merge_catalog(plan.catalog, planned)
        _write_patient_groups(opened, catalog, plan.details)
        _count_unknown(tasks, report)
        results = _run(tasks, client, progress=progress, report=report)
        catalog = _keep_feature_columns(_apply_results(catalog, results, report), opened, results)
        catalog = other_sources.finish_catalog(catalog, opened, planned)
        catalog = _keep_failed_series(catalog, old, report)
        count_entries(plan.files, catalog, report)
        report.entries_stored += other_sources.entries_stored(catalog, planned, report.failed_series)
        if len(catalog) or names.CATALOG not in opened.root:  # a run that stores nothing keeps the old catalog
            report.catalog_written = opened.write_table(names.CATALOG, catalog, if_changed=True)
        rows = report.quarantined + [(where, SKIPPED_PREFIX + why) for where, why in report.skipped]
        opened.write_table(names.QUARANTINE, pd.DataFrame(rows, columns=list(names.QUARANTINE_COLUMNS)),
                           if_changed=True)
        if damaged:  # the damaged series this run rewrote are whole again
            health.record_damaged(opened, {k: v for k, v in damaged.items()
                                           if k not in {series for series, _ in report.healed}})
    report.slices = len(catalog)
    report.seconds = time.perf_counter() - started - report.cluster_seconds
    if not report.slices:
        raise NothingToIngestError(nothing_stored(report), report)
    return report


def _mark_damaged(opened: Store, tasks: list["SeriesTask"], old: pd.DataFrame | None) -> dict[str, str]:
    """Flag the tasks of stored series (checked for damage) and of series verify found damaged.

    Return the damaged list verify recorded. Raise
    :class:`~ctengine.store.health.DamagedSeriesError` naming the damaged
    stored series the sources do not hold, before anything is written.
    """
    damaged = health.damaged_series(opened)
    known = set() if old is None else set(zip(old["patient"], old["series"]))
    planned = {(t.patient, t.series) for t in tasks}
    for task in tasks:
        task.known = (task.patient, task.series) in known
        task.heal = damaged.get(f"{task.patient}/{task.series}")
    absent = {}
    for patient, series in sorted(known - planned):
        found = health.series_damage(opened, patient, series)
        reason = damaged.get(f"{patient}/{series}") or (f"{found[0][0]}: {found[0][1]}" if found else None)
        if reason:
            absent[f"{patient}/{series}"] = reason
    absent.update({key: why for key, why in damaged.items() if tuple(key.split("/", 1)) not in planned | known})
    if absent:
        listed = "; ".join(f"{key} ({why})" for key, why in sorted(absent.items()))
        raise health.DamagedSeriesError(f"store {opened.url} has {len(absent)} damaged series that the sources do "
                                        f"not hold, give their sources to rewrite them: {listed}")
    return damaged


def _keep_failed_series(catalog: pd.DataFrame, old: pd.DataFrame | None, report: IngestReport) -> pd.DataFrame:
    """Keep the old catalog rows of series that failed this run (their old data was not replaced)."""
    failed = {label for label, _ in report.failed_series}
    if old is None or not failed or set(catalog.columns) - set(old.columns):
        return catalog
    kept = old[[f"{p}/{s}" in failed for p, s in zip(old["patient"], old["series"])]]
    if kept.empty:
        return catalog
    key = ["patient", "series", "instance"]
    return pd.concat([catalog, kept[list(catalog.columns)]], ignore_index=True).sort_values(key, ignore_index=True)


def _count_unknown(tasks: list["SeriesTask"], report: IngestReport) -> None:
    report.series = len(tasks)
    report.series_spacing_unknown = sum(names.spacing(t.attrs) is None for t in tasks)
    report.series_thickness_unknown = sum(names.thickness(t.attrs) is None for t in tasks)


def _write_patient_groups(opened: Store, catalog: pd.DataFrame, details: pd.DataFrame | None) -> None:
    info = details.set_index("patient") if details is not None else None
    labels = catalog.groupby("patient")["label"].first()
    for patient, label in labels.items():
        attrs: dict[str, Any] = {"label": label}
        if info is not None and patient in info.index:
            row = info.loc[patient]
            attrs.update({"sex": row.get("sex"), "age_years": row.get("age_years"), "date": row.get("date")})
        opened.write_patient(patient, {k: _plain(v) for k, v in attrs.items()})


def _series_tasks(opened: Store, files: pd.DataFrame, catalog: pd.DataFrame,
                  shape: tuple[int, int]) -> list[SeriesTask]:
    sources: dict[tuple, list[tuple]] = {}  # (patient, series, instance) -> every copy, in file order
    for patient, series, instance, *copy in zip(files["patient"], files["series"], files["instance"],
                                                files["archive"], files["path"], files["name"]):
        sources.setdefault((patient, series, instance), []).append(tuple(copy))
    tasks = []
    for (patient, series), rows in catalog.groupby(["patient", "series"], sort=True):
        first = rows.iloc[0]
        attrs = names.series_attributes({key: _plain(first[key]) for key in names.SERIES_CATALOG_COLUMNS},
                                        groups=sorted(set(MULTI_SEP.join(rows["group"]).split(MULTI_SEP))))
        instances = rows["instance"].tolist()
        tasks.append(SeriesTask(opened, patient, series, instances,
                                [sources[(patient, series, i)] for i in instances], attrs, shape))
    return tasks


def _plain(value: Any) -> Any:
    """JSON-friendly scalar: NaN and empty strings become None."""
    if isinstance(value, (float, np.floating)):
        return None if np.isnan(value) else float(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if value is None or value is pd.NA or value == "":
        return None
    return value


def _run(tasks: list[SeriesTask], client, *, progress: bool, report: IngestReport) -> list[dict[str, Any]]:
    """Map the tasks on the cluster; a failing series is reported, the rest completes."""
    outcome = map_series(ingest_series, [(t,) for t in tasks], labels=[f"{t.patient}/{t.series}" for t in tasks],
                         name="ingest", client=client, weights=[len(t.instances) for t in tasks], unit="slice",
                         progress=progress)
    report.failed_series.extend(outcome.failures)
    report.cluster_seconds = outcome.cluster_seconds
    return outcome.results


def _apply_results(catalog: pd.DataFrame, results: list[dict[str, Any]], report: IngestReport) -> pd.DataFrame:
    """Keep the stored slices, fill checksums and stack positions, collect the quarantine."""
    stored = []
    for result in results:
        report.quarantined.extend(tuple(q) for q in result["quarantined"])
        report.bytes_raw += result["bytes_raw"]
        report.bytes_stored += result["bytes_stored"]
        report.bytes_pyramid += result["bytes_pyramid"]
        if result["status"] == "written":
            report.series_written += 1
            if result.get("healed"):
                report.healed.append((f"{result['patient']}/{result['series']}", result["healed"]))
            report.slices_written += len(result["instances"])
        elif result["status"] == "skipped":
            report.series_skipped += 1
        stored.append(pd.DataFrame({"patient": result["patient"], "series": result["series"],
                                    "instance": np.asarray(result["instances"], dtype=np.int64),
                                    "checksum": result["checksums"]}))
    key = ["patient", "series", "instance"]
    kept = pd.concat(stored, ignore_index=True) if stored else pd.DataFrame(columns=key + ["checksum"])
    catalog = catalog.drop(columns="checksum").merge(kept.astype({"instance": "int64"}), on=key, how="inner")
    catalog = catalog.sort_values(key, ignore_index=True)
    catalog["z"] = catalog.groupby(["patient", "series"]).cumcount().astype("int64")
    return catalog


def _keep_feature_columns(catalog: pd.DataFrame, opened: Store, results: list[dict[str, Any]]) -> pd.DataFrame:
    """Carry the feature columns of the old catalog over for series this run left unchanged."""
    old = opened.read_table(names.CATALOG)
    if old is None:
        return catalog
    columns = [c for c in names.FEATURE_COLUMNS if c in old]
    if not columns:
        return catalog
    unchanged = {(r["patient"], r["series"]) for r in results if r["status"] == "skipped"}
    keep = old[[k in unchanged for k in zip(old["patient"], old["series"])]]
    key = ["patient", "series", "instance"]
    catalog = catalog.merge(keep[key + columns], on=key, how="left")
    for column in columns:
        catalog[column] = catalog[column].fillna(names.FEATURE_COLUMNS[column]).astype(type(names.FEATURE_COLUMNS[column]))
    return catalog

