"""Sources other than COVID-CTset trees: DICOM folders, NIfTI and NRRD files, into the same store.

- :mod:`~ctengine.sources.keys`: patient / series keys from DICOM tags and file names
- :mod:`~ctengine.sources.dicom`: headers, series checks and ordering, bit-exact stored values
- :mod:`~ctengine.sources.volume`: NIfTI / NRRD reoriented to the store, HU -> raw
- :mod:`~ctengine.sources.ingest`: series plans and the tasks the one ingest runs
- :mod:`~ctengine.sources.verify`: ``verify --source`` for these sources
"""
from __future__ import annotations

from .ingest import (UID_COLUMNS, SeriesPlan, SourcePlan, SourceSeriesTask, entries_stored, finish_catalog,
                     merge_catalog, plan_sources, split_sources)
from .verify import verify_sources

__all__ = ["SeriesPlan", "SourcePlan", "SourceSeriesTask", "UID_COLUMNS", "entries_stored", "finish_catalog",
           "merge_catalog",
           "plan_sources", "split_sources", "verify_sources"]
