"""Verify a store: re-read every slice with plain zarr and compare checksums.

With sources, every source file is decoded again and compared too, so a
store can be proven bit-exact against the archives it came from.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Iterable

from .. import layout
from ..tiffio import BadSliceError, decode_slice, slice_checksum
from .handle import Store, open_store


@dataclass
class VerifyReport:
    """Slices checked and every mismatch as (what, reason)."""

    slices_checked: int = 0
    sources_checked: int = 0
    mismatches: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches


def _check_series(store: Store, patient: str, series: str, expected: list[str]) -> list[tuple[str, str]]:
    """Compare the stored stack of one series (read with plain zarr) with its catalog checksums."""
    try:
        stack = store.raw(patient, series)[:]
    except Exception as exc:
        return [(f"{patient}/{series}", f"unreadable: {type(exc).__name__}: {exc}")]
    if stack.shape[0] != len(expected):
        return [(f"{patient}/{series}", f"{stack.shape[0]} slices stored, catalog lists {len(expected)}")]
    return [(f"{patient}/{series}/z{z}", "stored pixels do not match the catalog checksum")
            for z, checksum in enumerate(expected) if slice_checksum(stack[z]) != checksum]


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
           storage_options: dict | None = None) -> VerifyReport:
    """Re-read every stored slice (and optionally every source) and compare checksums (SHA-256)."""
    from ..cluster import dask_client

    opened = open_store(store, storage_options=storage_options)
    catalog, quarantined = opened.catalog, set(opened.quarantine["location"])
    report = VerifyReport(slices_checked=len(catalog))
    owned = contextlib.nullcontext(client) if client is not None else dask_client()
    with owned as active:
        futures = [active.submit(_check_series, opened, p, s, rows.sort_values("z")["checksum"].tolist(),
                                 pure=False)
                   for (p, s), rows in catalog.groupby(["patient", "series"])]
        sources = list(sources)
        if sources:
            files = layout.scan(sources).files
            locations = [f"{a}::{p}" if a else p for a, p in zip(files["archive"], files["path"])]
            files = files[[loc not in quarantined for loc in locations]]
            merged = files.merge(catalog[["patient", "series", "instance", "checksum"]],
                                 on=["patient", "series", "instance"], how="left")
            missing = merged[merged["checksum"].isna()]
            report.mismatches.extend((f"{a}::{p}" if a else p, "source slice is not in the store")
                                     for a, p in zip(missing["archive"], missing["path"]))
            merged = merged.dropna(subset=["checksum"])
            report.sources_checked = len(merged)
            for (_, _), rows in merged.groupby(["patient", "series"]):
                for checksum, copies in rows.groupby("checksum"):
                    futures.append(active.submit(_check_sources, list(zip(copies["archive"], copies["path"],
                                                                          copies["name"])), checksum, pure=False))
        for result in active.gather(futures):
            report.mismatches.extend(result)
    return report

