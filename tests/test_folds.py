"""Five-fold splits in the paper's protocol (ctengine.folds)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import DATASET_CSVS

from ctengine.constants import MULTI_SEP, SERIES
from ctengine.folds import SPLITS, fold_summary, make_folds, write_fold_csvs
from ctengine.synth.cohort import load_reference

SHARED_ALL = DATASET_CSVS / "all.csv.gz"


def _real_like_rows() -> tuple[list[str], list[str]]:
    """Per-image (patient, class) rows with the real all.csv's counts, from the bundled reference table
    (a series under two groups lists its slices twice, as in all.csv)."""
    ref = load_reference("covid-ctset")
    patients, labels = [], []
    for r in ref.to_dict("records"):
        cls = "covid" if r["COVID-19 Infection"] == "Positive" else "normal"
        for s in SERIES:
            groups = [g for g in r[f"{s} groups"].split(MULTI_SEP) if g]
            n = int(r[f"{s} labelled"]) * len(groups)
            patients += [r["Patient ID"]] * n
            labels += [cls] * n
    return patients, labels


@pytest.fixture(scope="module")
def real_rows():
    return _real_like_rows()


@pytest.fixture(scope="module")
def real_folds(real_rows):
    return make_folds(*real_rows, seed=0)


def test_reference_rows_match_the_real_all_csv(real_rows):
    patients, labels = real_rows
    assert len(labels) == 12_058
    assert labels.count("covid") == 2_282 and labels.count("normal") == 9_776
    if SHARED_ALL.is_file():
        a = pd.read_csv(SHARED_ALL)
        pts = a["filename"].str.extract(r"_(patient\d+)_")[0]
        assert pts.value_counts().to_dict() == pd.Series(patients).value_counts().to_dict()


def test_folds_are_patient_disjoint(real_rows, real_folds):
    patients = pd.Series(real_rows[0])
    for col in real_folds:
        per_patient = real_folds[col].groupby(patients.to_numpy()).nunique()
        assert (per_patient == 1).all(), f"{col}: a patient is on two sides"
        assert set(real_folds[col]) <= set(SPLITS)


def test_every_covid_patient_is_tested_exactly_once(real_rows, real_folds):
    patients, labels = np.array(real_rows[0]), np.array(real_rows[1])
    covid = set(patients[labels == "covid"])
    times = {p: 0 for p in covid}
    for col in real_folds:
        for p in set(patients[(real_folds[col].to_numpy() == "test") & (labels == "covid")]):
            times[p] += 1
    assert set(times.values()) == {1}
    assert len(covid) == 95


def test_folds_follow_the_paper_table(real_rows, real_folds):
    s = fold_summary(*real_rows, real_folds)
    for fold, t in s.groupby("fold"):
        get = t.set_index(["split", "label"])
        train = get.loc[("train", "covid"), "images"] + get.loc[("validation", "covid"), "images"]
        train_n = get.loc[("train", "normal"), "images"] + get.loc[("validation", "normal"), "images"]
        # paper: ~20 % of the COVID patients in test (14..23 of 95), ~450 test COVID images
        assert 14 <= get.loc[("test", "covid"), "patients"] <= 23
        assert 400 <= get.loc[("test", "covid"), "images"] <= 520
        # balanced training, most normal patients in test
        assert abs(train - train_n) <= 0.05 * train
        assert get.loc[("test", "normal"), "patients"] > 3 * (get.loc[("train", "normal"), "patients"]
                                                            + get.loc[("validation", "normal"), "patients"])
        assert get.loc[("validation", "covid"), "patients"] >= 1
        assert get.loc[("validation", "normal"), "patients"] >= 1


def test_folds_are_deterministic_and_seeded(real_rows, real_folds):
    assert make_folds(*real_rows, seed=0).equals(real_folds)
    assert not make_folds(*real_rows, seed=1).equals(real_folds)


def test_small_cohort_edges():
    # fewer COVID patients than folds: some folds have no COVID test patient, none is lost
    pts = ["a"] * 5 + ["b"] * 4 + ["c"] * 30 + ["d"] * 2
    lab = ["covid"] * 9 + ["normal"] * 32
    f = make_folds(pts, lab, n_folds=5, validation_fraction=0.0)
    tested = [p for col in f for p in set(np.array(pts)[f[col].to_numpy() == "test"]) if p in ("a", "b")]
    assert sorted(tested) == ["a", "b"]
    assert set(f.columns) == {f"fold{k}" for k in range(1, 6)}


def test_write_fold_csvs(tmp_path, real_rows, real_folds):
    names = [f"g_{p}_SR_2_IM{i:05d}.tif" for i, p in enumerate(real_rows[0])]
    paths = write_fold_csvs(tmp_path, names, real_rows[1], real_folds)
    assert sorted(p.name for p in paths) == sorted(f"{s}{k}.csv" for s in SPLITS for k in range(1, 6))
    for k in range(1, 6):
        parts = [pd.read_csv(tmp_path / f"{s}{k}.csv") for s in SPLITS]
        assert all(list(p.columns) == ["filename", "class"] for p in parts)
        assert sorted(pd.concat(parts)["filename"]) == sorted(names)


@pytest.mark.parametrize("kwargs, match", [
    ({"patients": ["a"], "labels": ["covid", "normal"]}, "differ in length"),
    ({"patients": ["a"], "labels": ["sick"]}, "labels must be"),
    ({"patients": ["a"], "labels": ["covid"], "n_folds": 1}, "n_folds"),
    ({"patients": ["a"], "labels": ["covid"], "validation_fraction": 0.7}, "validation_fraction"),
])
def test_make_folds_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_folds(**kwargs)
