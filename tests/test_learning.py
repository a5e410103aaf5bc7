"""The small model learns the task on a CPU: a reduced copy of the training benchmark's proof.

The full proof (24 patients at their real slice counts, 30 epochs, target 95 %
image accuracy and every patient right) runs in `ctengine bench training`;
here the cohort has 32 slices per series and training 25 epochs (about a
minute on two cores).
"""
import json

import numpy as np
import pandas as pd
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
    _, _, metrics = learned   # both sensitivities well above 0: no constant answer passes
    assert metrics["images"] > 100
    majority = max(metrics["covid_tp"] + metrics["covid_fn"], metrics["normal_tp"] + metrics["normal_fn"])
    assert metrics["accuracy"] >= majority / metrics["images"] + 0.08, metrics
    assert metrics["auc"] >= 0.85, metrics
    assert metrics["covid_sensitivity"] >= 0.55 and metrics["normal_sensitivity"] >= 0.85, metrics
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


def test_grad_cam_equals_its_definition_and_leaves_the_model_as_it_was(learned):
    from ctengine.learn.explain import grad_cam
    from ctengine.learn.model import load_checkpoint

    root, trained, _ = learned
    net, _ = load_checkpoint(trained.checkpoint)
    net.train()
    store = ctengine.open_store(root / "s.zarr")
    patient = sorted(set(store.catalog.loc[store.catalog.label == "covid", "patient"]))[0]
    hu = torch.from_numpy(store.read_raw(patient, "SR_2")[10:14].astype(np.float32) - 1024)[:, None]
    images, cams, p = grad_cam(net, hu, layer="C4")
    assert net.training and all(q.grad is None for q in net.parameters())
    net.eval()
    prepared = net.prepare(hu)
    _, c4, _ = taps = net.backbone(prepared)
    logits = net.classifier(torch.cat([h(lv) for h, lv in zip(net.heads, (net.fpn(*taps)[k] for k in (
        "P3", "P4", "P5", "P6", "P7")))], 1))
    grads, = torch.autograd.grad(logits[:, 1].sum(), c4)
    want = torch.relu((grads.mean((2, 3), keepdim=True) * c4).sum(1, keepdim=True))
    want = torch.nn.functional.interpolate(want, size=prepared.shape[-2:], mode="bilinear")[:, 0].detach()
    want = want / want.amax((1, 2), keepdim=True).clamp_min(1e-12)
    np.testing.assert_allclose(cams, want.numpy(), atol=1e-5)
    np.testing.assert_allclose(p, torch.softmax(logits, 1)[:, 1].detach().double().numpy(), rtol=1e-6)
    np.testing.assert_array_equal(images, prepared[:, 0].detach().numpy())
    assert cams.max() == pytest.approx(1.0)


def test_predict_explain_writes_overlays_of_the_selected_slices(learned, tmp_path):
    from click.testing import CliRunner
    from ctengine.cli import main

    root, trained, _ = learned
    catalog = ctengine.open_store(root / "s.zarr").catalog
    patient = sorted(set(catalog.loc[catalog.label == "covid", "patient"]))[0]
    folder = next((root / "src/COVID-CTset").glob(f"*/{patient}"))
    result = CliRunner().invoke(main, ["predict", str(folder), "--checkpoint", str(trained.checkpoint),
                                       "--explain", str(tmp_path / "explain"), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    selected = [r["file"] for r in out["rows"] if r["selected"]]
    assert out["explain"]["files"] and set(out["explain"]["files"]) <= set(selected)
    assert (tmp_path / "explain" / "gradcam.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_grad_cam_explains_right_slices_of_each_class_and_wrong_ones():
    from ctengine.report import gradcam_picks

    rows = [("covid", "covid"), ("covid", "normal"), ("normal", "normal"), ("normal", "covid"), ("covid", "covid"),
            ("normal", "normal"), ("covid", "covid")]
    predictions = pd.DataFrame(rows, columns=["label", "prediction"]).assign(labelled=[True] * 6 + [False])
    picks = gradcam_picks(predictions, per_group=4)  # the unlabelled last row is never picked
    assert list(zip(picks["label"], picks["prediction"])) == [
        ("covid", "covid"), ("covid", "covid"), ("normal", "normal"), ("normal", "normal"),
        ("covid", "normal"), ("normal", "covid")]


def test_report_shows_verdicts_caveats_configuration_and_class_activation(learned, tmp_path):
    from ctengine.report import write_report

    root, trained, metrics = learned
    config = {"model": "small", "epochs": 25, "fold": 1, "seed": 0}
    page = write_report(tmp_path / "report", store=str(root / "s.zarr"), evaluation=root / "evaluation",
                        history=trained.history, metrics=metrics, throughput={"ingest": 1.0}, seconds={"ingest": 1.0},
                        config=config, checkpoint=trained.checkpoint)
    text = page.read_text()
    for heading in ("Run configuration", "Lung masks of", "(covid)", "(normal)", "Patients of the test split",
                    "Where the classifier looked", "Evaluation (paper definitions)"):
        assert heading in text, heading
    for column in ("verdict", "fraction_covid", "right", "lung_volume_l", "opacity_pct", "split"):
        assert f"<th>{column}</th>" in text, column
    assert "<pre>" not in text
    # a few patients per split: the image metrics, the verdicts and the validation curve each carry a caveat
    caveats = [line for line in text.split('<p class="caveat">')[1:]]
    assert [c.split(" from ")[0] for c in caveats] == ["Validation accuracy", "Image metrics of the test split",
                                                         "Verdicts"]
    assert "<li>validation: covid " in text and "<li>train: covid " in text
    assert text.count("data:image/png;base64,") >= 7
    assert (root / "evaluation" / "gradcam.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())["config"] == config
