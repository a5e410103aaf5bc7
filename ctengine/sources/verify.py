"""``ctengine verify --source`` for DICOM folders and volume files: read the sources again, compare.

Each source series is planned from its headers as ingest plans it, its
pixels are read again and mapped to raw with the offset recorded in the
store (DICOM) or the same HU conversion (volumes), and every slice's SHA-256
is compared with the catalog's.
"""
from __future__ import annotations



from ..driver import map_series
from ..store import Store
from ..tiffio import slice_checksum
from .ingest import SeriesPlan, plan_sources

__all__ = ["verify_sources"]


def _check_source_series(store: Store, spec: SeriesPlan, expected: list[str]) -> list[tuple[str, str]]:
    """Mismatches of one source series against its stored checksums (one per differing slice)."""
    where = f"{spec.patient}/{spec.series}"
    try:
        offset = store.series_attrs(spec.patient, spec.series)["source"]["offset"] if spec.kind == "dicom" else None
        raw, _ = spec.read_raw(offset)
    except Exception as exc:  # unreadable or out-of-range source: one mismatch for the series
        return [(where, f"source unreadable: {type(exc).__name__}: {exc}")]
    if len(raw) != len(expected):
        return [(where, f"source has {len(raw)} slices, the store {len(expected)}")]
    label = (lambda z: spec.locations[z]) if spec.kind == "dicom" else (lambda z: f"{spec.locations[z]}#z{z}")
    return [(label(z), "source pixels differ from the stored slice")
            for z, checksum in enumerate(expected) if slice_checksum(raw[z]) != checksum]


def verify_sources(dicoms: list[tuple[str, str]], volumes: list[str], store: Store, *, client=None,
                   progress: bool = False) -> tuple[int, list[tuple[str, str]], list[tuple[str, str]]]:
    """Compare DICOM and volume sources with a store.

    Parameters
    ----------
    dicoms : list of (path, root)
        DICOM files and the folder each was found under (see :func:`split_sources`).
    volumes : list of str
        NIfTI / NRRD files.
    store : Store
    client : distributed.Client, optional

    Returns
    -------
    (slices checked, mismatches, failed series), mismatches as (location, reason).
    """
    plan = plan_sources(dicoms, volumes)
    catalog = store.catalog
    quarantined = set(store.quarantine["location"])
    mismatches = [(loc, f"source refused ({reason}) but not in the store's quarantine")
                  for loc, reason in plan.rejected if loc not in quarantined]
    expected = {key: rows.sort_values("z")["checksum"].tolist()
                for key, rows in catalog.groupby(["patient", "series"])}
    tasks, checked = [], 0
    for spec in plan.series:
        sums = expected.get((spec.patient, spec.series))
        if sums is None:
            mismatches.extend((loc, "source slice is not in the store")
                              for loc in dict.fromkeys(spec.locations) if loc not in quarantined)
            continue
        checked += len(spec.locations)
        tasks.append((store, spec, sums))
    if not tasks:
        return checked, mismatches, []
    outcome = map_series(_check_source_series, tasks, labels=[f"{t[1].patient}/{t[1].series}" for t in tasks],
                         name="verify-sources", client=client, weights=[len(t[2]) for t in tasks], unit="slice",
                         progress=progress)
    for problems in outcome.results:
        mismatches.extend(problems)
    return checked, mismatches, outcome.failures


