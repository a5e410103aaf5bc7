import json
import os

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

import ctengine
from ctengine.learn.evaluate import evaluate, evaluation_rows
from ctengine.learn.train import count, fold_catalog, train
from conftest import SMALL, make_tree


@pytest.fixture(scope="module")
def store(tmp_path_factory, client):
    root = tmp_path_factory.mktemp("train")
    spec = [("137covid", f"patient{p}", s, 4) for p in (1, 3, 5, 7, 9) for s in ("SR_2", "SR_3")]
    spec += [("normal1", f"patient{p}", s, 4) for p in (2, 4, 6, 8, 10, 12) for s in ("SR_2", "SR_3")]
    make_tree(root / "src", series_spec=tuple(spec), seed=5)
    ctengine.ingest([root / "src"], root / "s.zarr", client=client, progress=False, shape=SMALL)
    return root / "s.zarr"


def test_generated_folds_are_patient_disjoint_and_cover_every_covid_patient(store):
    catalog = ctengine.open_store(store).catalog
    assert (catalog["fold1"] == "").all()
    tested = []
    for fold in range(1, 6):
        folded = fold_catalog(catalog, fold)
        sides = folded.groupby("patient")[f"fold{fold}"].nunique()
        assert sides.eq(1).all()  # every series of a patient on the same side
        test = set(folded.loc[folded[f"fold{fold}"] == "test", "patient"])
        tested += [p for p in test if folded.loc[folded.patient == p, "label"].iloc[0] == "covid"]
        assert set(folded.loc[folded[f"fold{fold}"] == "train", "patient"]).isdisjoint(test)
    assert sorted(tested) == [f"patient{p}" for p in (1, 3, 5, 7, 9)]


def test_store_folds_with_a_patient_on_both_sides_are_refused(store):
    catalog = ctengine.open_store(store).catalog.assign(fold2="train")
    catalog.loc[0, "fold2"] = "test+train"
    with pytest.raises(ValueError, match="both sides"):
        fold_catalog(catalog, 2)


def test_train_and_evaluate_write_the_paper_outputs(store, tmp_path, capsys):
    result = train(store, fold=1, epochs=1, batch_size=8, out=tmp_path / "run", progress=False,
                   input_size=32, threads=1, lung_only=False, crop=None)   # 64 x 64: no lung masks
    assert result.checkpoint.exists() and len(result.history) == 1
    assert np.isfinite(result.history[0]["loss"])
    capsys.readouterr()
    metrics = evaluate(store, fold=1, checkpoint=result.checkpoint, out=tmp_path / "eval")
    assert "evaluate fold 1" in capsys.readouterr().err  # the progress bar over the test slices
    predictions = pd.read_csv(tmp_path / "eval/predictions.csv")
    assert list(predictions.columns) == ["patient", "series", "instance", "label", "probability", "prediction",
                                         "labelled", "selected"]
    assert set(predictions["prediction"]) <= {"covid", "normal"} and predictions["probability"].between(0, 1).all()
    catalog = fold_catalog(ctengine.open_store(store).catalog, 1)
    assert set(predictions["patient"]) == set(catalog.loc[catalog.fold1 == "test", "patient"])
    saved = json.loads((tmp_path / "eval/metrics.json").read_text())
    for key in ("accuracy", "covid_sensitivity", "normal_sensitivity", "patients_correct", "patients_wrong",
                "covid_correct", "covid_missed", "normal_correct", "normal_called_covid"):
        assert key in saved
    assert saved["patients_correct"] + saved["patients_wrong"] == predictions["patient"].nunique()
    assert (tmp_path / "eval/confusion.png").stat().st_size > 1000 and (tmp_path / "eval/roc.png").exists()


def test_evaluation_rows_are_labelled_test_slices_and_selected_sr2(store):
    catalog = fold_catalog(ctengine.open_store(store).catalog, 1)
    catalog["selected"] = catalog["instance"].isin([2, 3])
    catalog.loc[catalog.index[:2], ["labelled", "slice_label"]] = [True, "covid"]
    rows = evaluation_rows(catalog, 1)
    test = catalog[catalog.fold1 == "test"]
    expected = test[test.labelled | ((test.series == "SR_2") & test.selected)]
    assert len(rows) == len(expected)
    assert set(rows.loc[~rows.labelled, "series"]) == {"SR_2"}


def test_predict_on_a_patient_folder(tmp_path, client):
    from click.testing import CliRunner

    from ctengine.cli import main
    from ctengine.learn.model import build_model, save_checkpoint
    from ctengine.synth import write_cohort

    write_cohort(tmp_path / "src", patients=2, slices_per_series=8, seed=2, progress=False, workers=1)
    checkpoint = save_checkpoint(tmp_path / "m.pt", build_model("small", seed=0, input_size=32))
    folder = next((tmp_path / "src/COVID-CTset").glob("*/patient1"))
    (folder / "SR_2/IM00099.tif").write_bytes(b"not a tiff")
    result = CliRunner().invoke(main, ["predict", str(folder), "--checkpoint", str(checkpoint), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["verdict"] in ("covid", "normal") and out["series"] == "SR_2" and out["slices"] == 8
    assert 0 < out["selected"] < 8 and [os.path.basename(p) for p, _ in out["skipped"]] == ["IM00099.tif"]
    chosen = [r for r in out["rows"] if r["selected"]]
    assert out["covid_slices"] == sum(r["prediction"] == "covid" for r in chosen)
    assert out["verdict"] == ("covid" if out["covid_slices"] / out["selected"] >= 0.10 else "normal")


def test_cosine_factor_warms_up_then_decays_to_zero():
    from ctengine.learn.train import cosine_factor

    assert [cosine_factor(k, 10, warmup=2) for k in (0, 1)] == [0.5, 1.0]
    assert cosine_factor(2, 10, warmup=2) == 1.0 and cosine_factor(6, 10, warmup=2) == pytest.approx(0.5)
    assert cosine_factor(10, 10) == pytest.approx(0.0) and cosine_factor(12, 10) == pytest.approx(0.0)


def test_classify_of_prepared_input_equals_the_forward_pass():
    from ctengine.learn.model import build_model

    net = build_model("small", seed=0, input_size=32).eval()
    x = torch.randint(0, 2000, (3, 1, 64, 64)).float()
    with torch.no_grad():
        torch.testing.assert_close(net.classify(net.prepare(x)), net(x))


def test_recalibrated_batchnorm_holds_the_average_of_the_batch_statistics():
    from ctengine.learn.model import build_model
    from ctengine.learn.train import recalibrate_batchnorm

    net = build_model("small", seed=0, input_size=None)
    bn = next(m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    inputs = []
    hook = bn.register_forward_hook(lambda module, args, out: inputs.append(args[0].detach()))
    batches = [torch.randint(0, 2000, (4, 1, 32, 32)).float() for _ in range(3)]
    assert recalibrate_batchnorm(net, batches + [batches[0][:1]]) == 3   # a single slice is skipped
    hook.remove()
    means = torch.stack([i.mean(dim=(0, 2, 3)) for i in inputs])
    variances = torch.stack([i.var(dim=(0, 2, 3), unbiased=True) for i in inputs])
    torch.testing.assert_close(bn.running_mean, means.mean(0))
    torch.testing.assert_close(bn.running_var, variances.mean(0))
    assert bn.momentum == 0.1 and net.training
    before = bn.running_mean.clone()
    assert recalibrate_batchnorm(net, []) == 0 and torch.equal(bn.running_mean, before)


def test_train_says_what_it_trains_on(tmp_path, client):
    from click.testing import CliRunner

    from ctengine.cli import main
    from ctengine.features import compute_features
    from ctengine.learn.train import describe_splits
    from ctengine.synth import write_cohort

    write_cohort(tmp_path / "src", patients=6, slices_per_series=4, seed=2, shape=(128, 128), progress=False,
                 workers=1)
    ctengine.ingest([tmp_path / "src"], tmp_path / "s.zarr", client=client, progress=False, shape=(128, 128))
    compute_features(tmp_path / "s.zarr", client=client, progress=False)
    catalog = fold_catalog(ctengine.open_store(tmp_path / "s.zarr").catalog, 1)
    data = describe_splits(catalog, 1)
    train_rows = catalog[catalog["fold1"] == "train"]
    assert sum(c["patients"] for c in data["train"].values()) == train_rows["patient"].nunique()
    result = CliRunner().invoke(main, ["train", str(tmp_path / "s.zarr"), "--fold", "1", "--epochs", "1",
                                       "--out", str(tmp_path / "run"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    first = result.output.splitlines()[:3]
    assert first[0].startswith("training small on fold 1")
    for name, counts in data["train"].items():
        assert f"{name} {count(counts['patients'], 'patient')} / {count(counts['slices'], 'slice')}" in first[1]
