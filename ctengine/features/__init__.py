"""Features of the series of a store: the pipeline on a Dask cluster and the tables it writes.

- :mod:`~ctengine.features.pipeline`: :func:`series_features` (selection,
  lung mask and HU statistics of one series, the function training and
  prediction share) and :func:`compute_features` over a whole store
- :mod:`~ctengine.features.aggregate`: per-slice rows, series and patient aggregates
- :mod:`~ctengine.features.dictionary`: ``FIELDS``, every column's unit,
  description and definition, written into the Parquet tables and
  ``docs/FEATURES.md``
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

# names -> submodule; imported on first use, so ``python -m ctengine.features.dictionary`` runs the
# dictionary module once (an eager import here would load it before runpy executes it)
_EXPORTS = {"SERIES_COLUMNS": "aggregate", "SLICE_COLUMNS": "aggregate", "aggregate_patient": "aggregate",
            "aggregate_series": "aggregate", "stats_to_frame": "aggregate", "FIELDS": "dictionary",
            "TABLE_COLUMNS": "dictionary", "FeatureReport": "pipeline", "compute_features": "pipeline",
            "compute_series": "pipeline", "feature_device": "pipeline", "series_features": "pipeline",
            "warm_up": "pipeline"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
