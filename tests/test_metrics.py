import math

import numpy as np
import pandas as pd
import pytest

from ctengine.learn.metrics import (
    as_labels, confusion_matrix, image_metrics, mean_over_folds, metrics_markdown,
    patient_decisions, patient_table, plot_confusion_matrix, plot_roc, roc_auc, roc_curve,
)

C, N = "covid", "normal"


def test_as_labels_accepts_strings_indices_and_booleans():
    assert list(as_labels(["COVID", " normal"])) == [C, N]
    assert list(as_labels(np.array([0, 1, 1]))) == [N, C, C]
    assert list(as_labels(np.array([True, False]))) == [C, N]
    assert as_labels([]).shape == (0,)


@pytest.mark.parametrize("bad", [["covid", "pneumonia"], [0, 2], [0.5, 1.0]])
def test_as_labels_rejects_unknown_values(bad):
    with pytest.raises(ValueError):
        as_labels(bad)


def test_confusion_matrix_rows_true_columns_predicted():
    cm = confusion_matrix([C, C, C, N, N], [C, C, N, N, C])
    np.testing.assert_array_equal(cm, [[2, 1], [1, 1]])
    np.testing.assert_array_equal(confusion_matrix([C, N], [C, N], labels=(N, C)), [[1, 0], [0, 1]])


def test_image_metrics_by_hand():
    m = image_metrics([C, C, C, N, N], [C, C, N, N, C])
    assert (m["images"], m["correct"]) == (5, 3)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert (m["covid_tp"], m["covid_fn"], m["covid_fp"], m["covid_tn"]) == (2, 1, 1, 1)
    assert m["covid_sensitivity"] == pytest.approx(2 / 3)
    assert m["covid_specificity"] == pytest.approx(1 / 2)
    assert m["covid_precision"] == pytest.approx(2 / 3)
    assert m["normal_sensitivity"] == pytest.approx(1 / 2)
    assert m["normal_specificity"] == pytest.approx(2 / 3)
    assert m["normal_precision"] == pytest.approx(1 / 2)
    assert "auc" not in m


def test_image_metrics_zero_division_gives_nan():
    m = image_metrics([C, C], [C, C])
    assert m["accuracy"] == 1.0 and m["covid_sensitivity"] == 1.0
    for key in ("normal_sensitivity", "covid_specificity", "normal_precision"):
        assert math.isnan(m[key]), key
    empty = image_metrics([], [])
    assert empty["images"] == 0 and math.isnan(empty["accuracy"])


def test_image_metrics_length_mismatch_raises():
    with pytest.raises(ValueError, match="differ"):
        image_metrics([C, N], [C])


def test_roc_auc_ties_by_hand():
    # pairs (pos, neg): (.8,.5)=1 (.8,.2)=1 (.5,.5)=1/2 (.5,.2)=1 -> 3.5 / 4
    assert roc_auc([C, C, N, N], [0.8, 0.5, 0.5, 0.2]) == pytest.approx(0.875)
    assert roc_auc([C, N], [0.3, 0.3]) == pytest.approx(0.5)
    assert roc_auc([C, N], [0.1, 0.9]) == 0.0
    assert roc_auc([N, C], [0.1, 0.9], positive="normal") == 0.0


def test_roc_auc_matches_pairwise_count_and_curve_area():
    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.3
    s = np.round(rng.random(300) + 0.3 * y, 1)  # many ties
    pos, neg = s[y], s[~y]
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    auc = roc_auc(y, s)
    assert auc == pytest.approx(pairs / (pos.size * neg.size), abs=1e-12)
    fpr, tpr, thr = roc_curve(y, s)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1 and thr[0] == np.inf
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2) == pytest.approx(auc, abs=1e-12)


def test_roc_auc_is_the_probability_a_covid_slice_scores_higher():
    rng = np.random.default_rng(1)
    y = rng.random(200) < 0.4
    s = np.round(rng.random(200) + 0.2 * y, 2)  # rounded: many ties, which count one half
    pairs = s[y][:, None] - s[~y][None, :]
    expected = (np.count_nonzero(pairs > 0) + 0.5 * np.count_nonzero(pairs == 0)) / pairs.size
    assert roc_auc(y, s) == pytest.approx(expected, abs=1e-12)


def test_roc_auc_one_class_is_nan():
    assert math.isnan(roc_auc([C, C], [0.1, 0.2]))
    fpr, tpr, _ = roc_curve([C, C], [0.1, 0.2])
    assert np.isnan(fpr).all() and not np.isnan(tpr).any()
    assert math.isnan(image_metrics([C, C], [C, N], scores=[0.9, 0.2])["auc"])


def _slices(patient, label, n, n_covid, series="SR_2", selected=True):
    return pd.DataFrame({"patient": patient, "series": series, "patient_label": label,
                         "pred": [C] * n_covid + [N] * (n - n_covid), "selected": selected})


def test_patient_rule_at_exactly_ten_percent():
    df = pd.concat([
        _slices("p1", C, 30, 3),   # 3/30 = 10 %: covid (0.1 * 30 > 3 in floating point)
        _slices("p2", C, 70, 7),   # 7/70 = 10 %: covid
        _slices("p3", C, 30, 2),   # 6.7 %: missed
        _slices("p4", N, 10, 1),   # 10 %: called covid
        _slices("p5", N, 11, 1),   # 9.1 %: normal
    ], ignore_index=True)
    d = patient_decisions(df)
    assert list(d.loc[["p1", "p2", "p3", "p4", "p5"], "decision"]) == [C, C, N, C, N]
    assert d.loc["p1", "fraction"] == 0.1 and d.loc["p1", "slices"] == 30
    assert d.loc["p1", "covid_slices"] == 3
    assert patient_table(d) == {"patients": 5, "patients_correct": 3, "patients_wrong": 2,
                                "covid_correct": 2, "covid_missed": 1, "normal_correct": 1,
                                "normal_called_covid": 1}
    d2 = patient_decisions(df, threshold=0.5)
    assert (d2["decision"] == N).all()
    assert (patient_decisions(df, threshold=0.0)["decision"] == C).all()


def test_patient_rule_uses_only_selected_sr2_slices():
    df = pd.concat([
        _slices("p1", N, 20, 0),
        _slices("p1", N, 20, 20, series="SR_3"),         # other series: ignored
        _slices("p1", N, 5, 5, selected=False),          # not selected: ignored
        _slices("p2", C, 4, 4, selected=False),          # nothing left: normal, NaN
    ], ignore_index=True)
    d = patient_decisions(df)
    assert d.loc["p1", "slices"] == 20 and d.loc["p1", "decision"] == N
    assert d.loc["p2", "slices"] == 0 and math.isnan(d.loc["p2", "fraction"])
    assert d.loc["p2", "decision"] == N
    assert patient_decisions(df, series=None, selected_col=None).loc["p1", "slices"] == 45


def test_patient_rule_accepts_class_indices_and_validates():
    df = pd.DataFrame({"patient": ["a"] * 10, "series": "SR_2", "patient_label": C,
                       "pred": [1] + [0] * 9})
    assert patient_decisions(df).loc["a", "decision"] == C
    with pytest.raises(ValueError, match="lacks"):
        patient_decisions(df.drop(columns="patient_label"))
    with pytest.raises(ValueError, match="threshold"):
        patient_decisions(df, threshold=10)
    bad = df.assign(patient_label=[C] * 9 + [N])
    with pytest.raises(ValueError, match="more than one"):
        patient_decisions(bad)


def test_mean_over_folds():
    a = {"accuracy": 0.9, "covid_sensitivity": 1.0, "patients_correct": 10}
    b = {"accuracy": 0.8, "covid_sensitivity": math.nan, "patients_correct": 11}
    m = mean_over_folds([a, b])
    assert m["accuracy"] == pytest.approx(0.85) and m["patients_correct"] == 10.5
    assert math.isnan(m["covid_sensitivity"])
    with pytest.raises(ValueError, match="different"):
        mean_over_folds([a, {"accuracy": 1.0}])
    with pytest.raises(ValueError):
        mean_over_folds([])


def test_metrics_markdown_tables():
    m = image_metrics([C, C, C, N, N], [C, C, N, N, C], scores=[0.9, 0.8, 0.4, 0.1, 0.7])
    df = pd.concat([_slices("p1", C, 10, 1), _slices("p2", N, 10, 0)], ignore_index=True)
    m.update(patient_table(patient_decisions(df)))
    md = metrics_markdown(m, title="fold 1")
    assert "### fold 1" in md
    assert "| 60.00 % | 66.67 % | 50.00 % | 0.8333 |" in md
    assert "| covid | 66.67 % | 50.00 % | 66.67 % | 2 | 1 | 1 | 1 |" in md
    assert "| 2 / 0 | 1 / 0 | 1 / 0 |" in md
    assert "n/a" in metrics_markdown(image_metrics([C], [C]))
    with pytest.raises(ValueError):
        metrics_markdown({})


def test_plots_write_png(tmp_path):
    cm = confusion_matrix([C, C, N], [C, N, N])
    p1 = plot_confusion_matrix(cm, tmp_path / "cm.png", title="fold 1")
    p2 = plot_roc([C, C, N, N], [0.9, 0.4, 0.5, 0.1], tmp_path / "roc.png")
    for p in (p1, p2):
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    with pytest.raises(ValueError):
        plot_confusion_matrix(np.zeros((3, 3)), tmp_path / "x.png")
