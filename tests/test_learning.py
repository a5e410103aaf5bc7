"""The small model learns the task on a CPU: a reduced copy of the training benchmark's proof.

The full proof (24 patients at their real slice counts, 30 epochs, target 95 %
image accuracy and every patient right) runs in `ctengine bench training`;
here the cohort has 32 slices per series and training 25 epochs (about a
minute on two cores).
"""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import ctengine
from ctengine.features import compute_features
from ctengine.learn.evaluate import evaluate
from ctengine.learn.predict import predict_patient
from ctengine.learn.train import train
from ctengine.synth import write_cohort


@pytest.fixture(scope="module")
def learned(tmp_path_factory, client):
    root = tmp_path_factory.mktemp("learning")
    write_cohort(root / "src", patients=24, slices_per_series=32, seed=0, progress=False)
    ctengine.ingest([root / "src"], root / "s.zarr", client=client, progress=False)
    compute_features(root / "s.zarr", client=client, progress=False)
    trained = train(root / "s.zarr", fold=1, epochs=25, out=root / "run", progress=False)
    metrics = evaluate(root / "s.zarr", fold=1, checkpoint=trained.checkpoint, out=root / "evaluation")
    return root, trained, metrics


def test_training_accuracy_rises(learned):
    _, trained, _ = learned
    accuracy = [h["accuracy"] for h in trained.history]
    assert accuracy[-1] >= 0.8 and accuracy[-1] > accuracy[0] + 0.2, accuracy


def test_test_split_is_classified_well_above_the_majority_rate(learned):
    _, _, metrics = learned   # both sensitivities high: no constant answer passes
    assert metrics["images"] > 100
    assert metrics["accuracy"] >= 0.85, metrics
    assert metrics["covid_sensitivity"] >= 0.7 and metrics["normal_sensitivity"] >= 0.85, metrics
    assert metrics["patients_correct"] >= 6 and metrics["patients_wrong"] <= 2, metrics


def test_predict_on_a_test_patients_tiffs_finds_covid(learned):
    root, trained, _ = learned
    catalog = ctengine.open_store(root / "s.zarr").catalog
    test_covid = sorted(set(catalog.loc[(catalog.fold1 == "test") & (catalog.label == "covid"), "patient"]))
    folder = next((root / "src/COVID-CTset").glob(f"*/{test_covid[0]}"))
    out = predict_patient(folder, checkpoint=trained.checkpoint)
    assert out["verdict"] == "covid" and out["fraction"] >= 0.10, json.dumps({k: out[k] for k in (
        "verdict", "selected", "covid_slices", "fraction")})
    assert np.isfinite([r["probability"] for r in out["rows"] if r["selected"]]).all()
