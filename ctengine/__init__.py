"""ctengine: high-throughput preprocessing and feature engine for lung CT."""
from __future__ import annotations

from .ingestion import IngestReport, NothingToIngestError, ingest
from .store import Store, open_store

__version__ = "0.1.0"
__all__ = ["IngestReport", "NothingToIngestError", "Store", "ingest", "open_store", "__version__"]
