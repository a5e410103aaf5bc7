"""Features of the series of a store: the pipeline on a Dask cluster and the tables it writes.

- :mod:`~ctengine.features.pipeline`: :func:`series_features` (selection,
  lung mask and HU statistics of one series, the function training and
  prediction share) and :func:`compute_features` over a whole store
- :mod:`~ctengine.features.aggregate`: per-slice rows, series and patient aggregates
"""
from __future__ import annotations

from .aggregate import SERIES_COLUMNS, aggregate_patient, aggregate_series, stats_to_frame
from .pipeline import FeatureReport, compute_features, compute_series, feature_device, series_features

__all__ = ["SERIES_COLUMNS", "FeatureReport", "aggregate_patient", "aggregate_series", "compute_features",
           "compute_series", "feature_device", "series_features", "stats_to_frame"]
