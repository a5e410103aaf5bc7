"""Counts and sizes of a store (``ctengine info``)."""
from __future__ import annotations

import os
from typing import Any

from . import store as schema


def store_info(store: str | os.PathLike, *, storage_options: dict | None = None) -> dict[str, Any]:
    """Patients, series and slices per label, raw and stored bytes, compression ratio.

    Bytes: raw = slices x y x x x 2 (uint16); stored = the raw shards on disk.
    """
    opened = schema.open_store(store, storage_options=storage_options)
    catalog = opened.catalog
    labels = {}
    for label, rows in catalog.groupby("label"):
        labels[str(label)] = {"patients": int(rows["patient"].nunique()),
                              "series": int(len(rows[["patient", "series"]].drop_duplicates())),
                              "slices": int(len(rows)), "labelled_slices": int(rows["labelled"].sum())}
    fs, root = schema.filesystem(opened.url, storage_options)
    shards = fs.glob(f"{root}/*/*/{schema.RAW}/c/0/0/0", detail=True)
    stored = int(sum(info["size"] for info in shards.values()))
    raw = 0
    for patient, series in opened.series_keys():
        shape = opened.raw(patient, series).shape
        raw += shape[0] * shape[1] * shape[2] * 2
    return {"store": opened.url, "patients": int(catalog["patient"].nunique()),
            "series": int(len(opened.series_keys())), "slices": int(len(catalog)), "labels": labels,
            "bytes_raw": raw, "bytes_stored": stored, "ratio": raw / stored if stored else float("nan"),
            "quarantined": int(len(opened.quarantine))}
