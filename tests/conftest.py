"""Shared fixtures: a small COVID-CTset tree made of random slices and one Dask cluster."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

SMALL = (64, 64)


def write_slice(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, image)


def make_tree(root: Path, *, shape=SMALL, seed: int = 0,
              series_spec=(("137covid", "patient1", "SR_2", 4), ("137covid", "patient1", "SR_3", 3),
                           ("normal1", "patient2", "SR_2", 5), ("normal2", "patient4", "SR_4", 2))) -> dict:
    """Write ``<root>/COVID-CTset/<group>/<patient>/<SR_k>/IMnnnnn.tif``; return {(patient, series, i): image}."""
    rng = np.random.default_rng(seed)
    images = {}
    for group, patient, series, count in series_spec:
        for instance in range(1, count + 1):
            image = rng.integers(0, 5000, shape, dtype=np.uint16)
            write_slice(root / "COVID-CTset" / group / patient / series / f"IM{instance:05d}.tif", image)
            images[(patient, series, instance)] = image
    return images


@pytest.fixture(scope="session")
def client():
    from ctengine.cluster import dask_client

    with dask_client(workers=2) as c:
        yield c


@pytest.fixture()
def tree(tmp_path):
    images = make_tree(tmp_path / "src")
    return tmp_path / "src", images


def pytest_configure(config):
    os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(__file__).parent.parent / ".numba_cache"))


#: copies of the dataset's public CSVs kept with the tests (see tests/data/covid-ctset/README.md)
DATASET_CSVS = Path(__file__).resolve().parent / "data" / "covid-ctset"
