"""Counts and sizes of a store (``ctengine info``)."""
from __future__ import annotations

import os
from typing import Any

from . import names
from .handle import open_store


def store_info(store: str | os.PathLike, *, storage_options: dict | None = None) -> dict[str, Any]:
    """Patients, series and slices per label, raw and stored bytes, compression ratio.

    Parameters
    ----------
    store : str or path
        Store path or fsspec URL.
    storage_options : dict, optional
        fsspec options of a remote store.

    Returns
    -------
    dict
        store, patients, series, slices, labels (per label: patients,
        series, slices, labelled_slices), bytes_raw (slices x y x x x 2,
        uint16), bytes_stored (the raw shards), ratio, quarantined and
        skipped (entries of the quarantine table), series_spacing_unknown and
        series_thickness_unknown (series whose attributes say "unknown").
    """
    opened = open_store(store, storage_options=storage_options)
    catalog = opened.catalog
    labels = {}
    for label, rows in catalog.groupby("label"):
        labels[str(label)] = {"patients": int(rows["patient"].nunique()),
                              "series": int(len(rows[["patient", "series"]].drop_duplicates())),
                              "slices": int(len(rows)), "labelled_slices": int(rows["labelled"].sum())}
    stored = opened.raw_shard_bytes()
    raw = no_spacing = no_thickness = 0
    for patient, series in opened.series_keys():
        shape = opened.raw(patient, series).shape
        raw += shape[0] * shape[1] * shape[2] * 2
        attrs = opened.series_attrs(patient, series)
        no_spacing += names.spacing(attrs) is None
        no_thickness += names.thickness(attrs) is None
    skipped = opened.quarantine["reason"].astype(str).str.startswith(names.SKIPPED_PREFIX)
    return {"store": opened.url, "patients": int(catalog["patient"].nunique()),
            "series": int(len(opened.series_keys())), "slices": int(len(catalog)), "labels": labels,
            "bytes_raw": raw, "bytes_stored": stored, "ratio": raw / stored if stored else float("nan"),
            "quarantined": int((~skipped).sum()), "skipped": int(skipped.sum()),
            "series_spacing_unknown": int(no_spacing), "series_thickness_unknown": int(no_thickness)}
