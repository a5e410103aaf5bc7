"""The feature pipeline over a store: one Dask task per series.

Per series: read the raw stack (one shard, C decoding), the authors' CT
selection, lung masks, HU statistics; masks and per-slice features go back
into the store as the series' OME-Zarr lung label
(:meth:`ctengine.store.Store.write_lung`). When every series is done the
client writes the selection into the catalog and the feature tables
(slices, series, patients) as Parquet beside the store
(:meth:`ctengine.store.Store.write_feature_tables`). A series is skipped
when its lung label is complete for the same raw data, so an interrupted
run resumes; a failing series is reported and the rest completes.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from ..constants import DEVICES, RAW_DTYPE
from ..driver import RunReport, map_series
from ..store import Store, names, open_store, pyramid, shard
from ..tiffio import slice_checksum
from .aggregate import stats_to_frame
from .dictionary import LEGACY_COLUMNS, TABLE_COLUMNS, arrow_table

__all__ = ["FeatureReport", "compute_features", "compute_series", "feature_device", "series_features", "warm_up"]


@dataclass
class FeatureReport(RunReport):
    """What a feature run did: series computed and skipped, slices in the catalog and computed.

    ``spacing_unknown`` lists the series ("patient/series") without a pixel
    spacing: their kernels ran with ``spacing=None`` (the kernels' default
    assumption), so their areas and volumes are not measured in mm.
    """

    series_computed: int = 0
    series_skipped: int = 0
    slices: int = 0
    slices_computed: int = 0
    spacing_unknown: list[str] = field(default_factory=list)
    derived: ClassVar[tuple[str, ...]] = ("slices_per_second",)

    @property
    def slices_per_second(self) -> float:
        """Slices computed per second of the run (cluster start-up not counted: see ``cluster_seconds``)."""
        return self.slices_computed / self.seconds if self.seconds else float("nan")


def series_features(raw: Any, *, spacing: tuple[float, float] | None, slope: float, intercept: float):
    """Selection, lung mask and HU statistics of one series (numpy or cupy in, same kind out).

    Returns ``(mask, table)``: the uint8 lung mask (z, y, x) and a DataFrame
    with one row per slice (selection flags and counts, statistics). With
    ``spacing=None`` (unknown) the lung mask's sizes use the nominal spacing
    and areas are NaN; callers record that the spacing was unknown.
    """
    from ..kernels import SpacingUnknownWarning, hu_stats, lung_mask, select_slices, select_slices_by_lung_area

    selection = select_slices(raw, slope=slope, intercept=intercept)
    with warnings.catch_warnings():  # the feature report lists the series measured without a spacing
        warnings.simplefilter("ignore", SpacingUnknownWarning)
        mask = lung_mask(raw, spacing=spacing, slope=slope, intercept=intercept)
    by_area = select_slices_by_lung_area(mask, spacing=spacing)
    stats = hu_stats(raw, mask, spacing=spacing, slope=slope, intercept=intercept)
    table = stats_to_frame(_to_host(stats))
    table.insert(0, "dark_count", _to_host(selection.counts))
    table.insert(0, "selected", _to_host(selection.keep))
    table.insert(2, "selected_by_area", _to_host(by_area.keep))
    return mask, table


def warm_up() -> None:
    """Load the feature pass's compiled CPU kernels into this process (on workers: ``client.run(warm_up)``).

    Numba loads each cached kernel at its first call, about 0.4 s in all
    for a fresh process. A long-running worker pays it once; a benchmark of
    a running cluster calls this first. It runs :func:`series_features` and
    the label pyramid on a small two-slice chest (128 x 128 pixels: body, two lungs).

    Examples
    --------
    >>> warm_up()
    """
    import numba

    yy, xx = np.mgrid[:128, :128]  # over 64 pixels: the pyramid halves it once
    body = (yy - 64) ** 2 / 56 ** 2 + (xx - 64) ** 2 / 60 ** 2 < 1
    lungs = (yy - 60) ** 2 / 24 ** 2 + (np.abs(xx - 64) - 26) ** 2 / 16 ** 2 < 1
    chest = np.where(lungs, 150, np.where(body, 1064, 0)).astype(RAW_DTYPE)
    threads = numba.get_num_threads()
    numba.set_num_threads(1)  # as compute_series runs them
    try:
        mask, _ = series_features(np.stack([chest, chest]), spacing=(2.75, 2.75), slope=1.0, intercept=-1024.0)
        pyramid.levels(np.asarray(mask, dtype=np.uint8), labels=True)
    finally:
        numba.set_num_threads(threads)


def _to_host(value: Any) -> Any:
    """numpy from cupy (dicts and arrays); numpy stays as is."""
    if isinstance(value, dict):
        return {k: _to_host(v) for k, v in value.items()}
    return value.get() if hasattr(value, "get") and not isinstance(value, np.ndarray) else np.asarray(value)


def compute_series(store: Store, patient: str, series: str, device: str = "cpu",
                   checksums: list[str] | None = None) -> dict[str, Any]:
    """Compute and store the features of one series; skip if already complete for this raw data.

    Before computing, every slice read is compared with its checksum
    (``checksums``, the catalog's in z order; default the series' own);
    a mismatch raises ValueError, so the series fails and no features are
    written from damaged pixels.
    """
    import numba

    numba.set_num_threads(1)  # one task per core: the cluster runs series in parallel, not threads in a kernel
    attrs = store.series_attrs(patient, series)
    # the pixels and what the kernels were told about them, not the names: new metadata computes again
    inputs = {"checksums": attrs["checksums"], "spacing": names.spacing(attrs), "rescale": names.rescale(attrs),
              "pyramid": pyramid.METHOD}
    plan = hashlib.sha256(json.dumps(inputs).encode()).hexdigest()
    known = names.spacing(attrs) is not None
    done = store.completed_lung(patient, series, plan)
    if done is not None:  # a label of the first column scheme keeps its values under the current names
        done = done.rename(columns=LEGACY_COLUMNS)
        return {"patient": patient, "series": series, "status": "skipped", "table": done, "spacing_known": known}
    raw = store.read_raw(patient, series)
    _check_pixels(raw, attrs, attrs["checksums"] if checksums is None else checksums, f"{patient}/{series}")
    if device == "gpu":
        import cupy

        raw = cupy.asarray(raw)
    slope, intercept = names.rescale(attrs)
    mask, table = series_features(raw, spacing=names.spacing(attrs), slope=slope, intercept=intercept)
    mask = _to_host(mask)
    table.insert(0, "instance", np.asarray(attrs["instances"], dtype=np.int64))
    store.write_lung(patient, series, mask, table, plan)
    return {"patient": patient, "series": series, "status": "computed", "table": table, "spacing_known": known}


def _check_pixels(raw: np.ndarray, attrs: dict[str, Any], checksums: list[str], label: str) -> None:
    """Raise ValueError naming the slices of ``raw`` that are not the ones the catalog's checksums name.

    The series' attributes hold the catalog's SHA-256 and, written with the
    pixels, each slice's CRC-32C: when the SHA-256 lists agree, the CRC-32C
    is checked (0.03 ms a slice); a series without CRC-32C (written before
    it was kept) is hashed with SHA-256 (0.25 ms a slice).
    """
    if len(raw) != len(checksums):
        raise ValueError(f"{label}: {len(raw)} slices stored, catalog lists {len(checksums)}")
    crcs = attrs.get(names.PIXEL_CRC32C)
    if crcs is not None and len(crcs) == len(raw) and list(attrs.get("checksums", [])) == list(checksums):
        bad = [z for z, (got, want) in enumerate(zip(shard.pixel_crc32c(raw), crcs)) if got != want]
    else:
        bad = [z for z, (image, checksum) in enumerate(zip(raw, checksums)) if slice_checksum(image) != checksum]
    if bad:
        raise ValueError(f"{label}: stored pixels of slice(s) z={', '.join(map(str, bad))} do not match the "
                         f"catalog checksum (run `ctengine verify`, then `ctengine ingest` to rewrite the series)")


def feature_device(device: str) -> str:
    """``"cpu"`` or ``"gpu"`` for a device name of :data:`ctengine.constants.DEVICES` (``"cuda"``: gpu)."""
    name = "gpu" if device == "cuda" else device
    if name not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if name != "auto":
        return name
    try:
        import cupy

        return "gpu" if cupy.cuda.runtime.getDeviceCount() > 0 else "cpu"
    except Exception:  # no CuPy, no driver or no device: the CPU kernels
        return "cpu"


def compute_features(store: str | os.PathLike, *, device: str = "cpu", client=None,
                     storage_options: dict | None = None, progress: bool = True) -> FeatureReport:
    """Compute selection, lung masks and HU statistics for every series of a store.

    Parameters
    ----------
    store : str
        Store path or fsspec URL.
    device : {"cpu", "gpu", "auto"}
        Numba CPU kernels, or CUDA kernels on CuPy arrays on the workers' GPU;
        ``"auto"``: the GPU when CuPy sees one on the client (``"cuda"`` is a
        spelling of ``"gpu"``).
    client : distributed.Client, optional
        Default: a LocalCluster sized to the machine.

    Returns
    -------
    FeatureReport
    """
    device = feature_device(device)
    started = time.perf_counter()
    url = open_store(store, storage_options=storage_options).url  # refuses a missing or foreign store
    opened = open_store(url, mode="a", storage_options=storage_options)
    catalog = opened.catalog
    sizes = catalog.groupby(["patient", "series"]).size()
    report = FeatureReport(store=opened.url, slices=len(catalog))
    checksums = catalog.sort_values("z").groupby(["patient", "series"])["checksum"].agg(list)
    outcome = map_series(compute_series, [(opened, p, s, device, checksums[(p, s)]) for p, s in sizes.index],
                         labels=[f"{p}/{s}" for p, s in sizes.index], name="features", client=client,
                         weights=[int(n) for n in sizes], unit="slice", progress=progress)
    report.failed_series.extend(outcome.failures)
    report.cluster_seconds = outcome.cluster_seconds
    tables = []
    for result in outcome.results:
        if result["status"] == "computed":
            report.series_computed += 1
            report.slices_computed += len(result["table"])
        else:
            report.series_skipped += 1
        if not result.get("spacing_known", True):
            report.spacing_unknown.append(f"{result['patient']}/{result['series']}")
        tables.append(result["table"].assign(patient=result["patient"], series=result["series"]))
    if tables:
        _write_outputs(opened, pd.concat(tables, ignore_index=True))
    report.seconds = time.perf_counter() - started - report.cluster_seconds
    return report


def _write_outputs(opened: Store, slices: pd.DataFrame) -> None:
    """Selection into the catalog; slice, series and patient tables as Parquet beside the store."""
    from .aggregate import aggregate_patient, aggregate_series

    key = ["patient", "series", "instance"]
    front = key + [c for c in names.FEATURE_COLUMNS if c in slices]
    ordered = [c for c in TABLE_COLUMNS["slices"] if c in slices]  # the dictionary's order; others fail below
    slices = slices[ordered + [c for c in slices.columns if c not in ordered]].sort_values(key, ignore_index=True)
    catalog = opened.catalog.drop(columns=[c for c in names.FEATURE_COLUMNS if c in opened.catalog])
    catalog = catalog.merge(slices[front], on=key, how="left")
    for column, missing in names.FEATURE_COLUMNS.items():
        catalog[column] = catalog[column].fillna(missing).astype(bool if isinstance(missing, bool) else "int64")
    opened.write_table(names.CATALOG, catalog)
    thickness = catalog.groupby(["patient", "series"])["thickness_mm"].first()
    labels = catalog.groupby("patient")["label"].first()
    series_table = aggregate_series(slices, thickness_mm=thickness)
    patient_table = aggregate_patient(series_table, labels=labels)
    frames = {"slices": slices, "series": series_table, "patients": patient_table}
    opened.write_feature_tables({name: arrow_table(frame, name) for name, frame in frames.items()})

