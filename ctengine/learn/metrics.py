"""The paper's evaluation: image metrics, ROC AUC, the 10 % patient rule, tables, plots.

Definitions (Rahimzadeh et al. 2021): overall accuracy = correct / all;
for a class c, sensitivity = TP / (TP + FN), specificity = TN / (TN + FP),
precision = TP / (TP + FP), counting c as the positive class. Labels are
spelled "covid" and "normal"; integer predictions use the classifier's
indices (``CLASS_NORMAL`` 0, ``CLASS_COVID`` 1) and booleans mean COVID.

A ratio whose denominator is zero (no image of a class, nothing predicted
as a class, one class missing for the AUC) is NaN, never an error; means
over folds propagate NaN.

No torch needed: numpy, pandas, scipy and matplotlib (Agg canvas, no pyplot
state) only.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from ..constants import CLASS_NAMES, LABELS, PATIENT_COVID_FRACTION
from ..figures import figure, save_png

__all__ = ["as_labels", "confusion_matrix", "image_metrics", "mean_over_folds", "metrics_markdown",
           "patient_decisions", "patient_table", "plot_confusion_matrix", "plot_roc", "roc_auc",
           "roc_curve"]

#: keys of `patient_table`
PATIENT_KEYS = ("patients", "patients_correct", "patients_wrong", "covid_correct", "covid_missed",
                "normal_correct", "normal_called_covid")


def as_labels(values: Any, *, name: str = "labels") -> np.ndarray:
    """Labels as an array of "covid" / "normal" strings.

    Accepts strings (any case), class indices (0 normal, 1 covid) or
    booleans (True = covid). Raises ValueError for anything else.
    """
    a = np.asarray(values)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if a.size == 0:
        return np.zeros(0, dtype=object)
    if a.dtype == bool:
        return np.where(a, "covid", "normal").astype(object)
    if a.dtype.kind in "iu":
        bad = ~np.isin(a, (0, 1))
        if bad.any():
            raise ValueError(f"{name} class indices must be 0 (normal) or 1 (covid), got {a[bad][0]!r}")
        return np.asarray(CLASS_NAMES, dtype=object)[a]
    if a.dtype.kind in "OUS":
        s = np.array([str(v).strip().lower() for v in a], dtype=object)
        bad = ~np.isin(s, LABELS)
        if bad.any():
            raise ValueError(f"{name} must be 'covid' or 'normal', got {a[bad][0]!r}")
        return s
    raise ValueError(f"{name} must be strings, class indices or booleans, got dtype {a.dtype}")


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else math.nan


def confusion_matrix(y_true: Any, y_pred: Any, *, labels: Sequence[str] = LABELS) -> np.ndarray:
    """Counts (len(labels), len(labels)) int64: row = true label, column = predicted."""
    t, p = as_labels(y_true, name="y_true"), as_labels(y_pred, name="y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length: {t.shape[0]} != {p.shape[0]}")
    cm = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for i, a in enumerate(labels):
        for j, b in enumerate(labels):
            cm[i, j] = np.count_nonzero((t == a) & (p == b))
    return cm


def roc_auc(y_true: Any, scores: Any, *, positive: str = "covid") -> float:
    """Area under the ROC curve, Mann-Whitney U / (n_pos * n_neg), ties counted 1/2.

    `scores` are higher for `positive` (e.g. the COVID probability). NaN
    when either class is absent.

    Examples
    --------
    >>> roc_auc(["covid", "covid", "normal", "normal"], [0.8, 0.5, 0.5, 0.2])
    0.875
    """
    t = as_labels(y_true, name="y_true") == positive
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != t.shape:
        raise ValueError(f"scores must have shape {t.shape}, got {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    n_pos = int(t.sum())
    n_neg = t.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(s)  # mid-ranks for ties
    u = ranks[t].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_curve(y_true: Any, scores: Any, *, positive: str = "covid"
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate, thresholds), one point per distinct score.

    The curve starts at (0, 0) with threshold +inf; a sample is called
    positive when its score >= threshold. Rates are NaN for a missing class.
    """
    t = as_labels(y_true, name="y_true") == positive
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != t.shape:
        raise ValueError(f"scores must have shape {t.shape}, got {s.shape}")
    order = np.argsort(-s, kind="stable")
    s, t = s[order], t[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1] if s.size else np.zeros(0, int)
    tp = np.r_[0, np.cumsum(t)[last]]
    fp = np.r_[0, np.cumsum(~t)[last]]
    n_pos, n_neg = int(t.sum()), int((~t).sum())
    tpr = tp / n_pos if n_pos else np.full(tp.shape, np.nan)
    fpr = fp / n_neg if n_neg else np.full(fp.shape, np.nan)
    return fpr, tpr, np.r_[np.inf, s[last]]


def image_metrics(y_true: Any, y_pred: Any, *, scores: Any = None) -> dict[str, float]:
    """The paper's per-image metrics as a flat dict.

    Parameters
    ----------
    y_true, y_pred : array_like
        Labels, see `as_labels`.
    scores : array_like, optional
        COVID scores (probabilities) for ``auc``.

    Returns
    -------
    dict
        ``images``, ``correct``, ``accuracy`` and, for c in covid, normal:
        ``c_tp``, ``c_fn``, ``c_fp``, ``c_tn``, ``c_sensitivity``,
        ``c_specificity``, ``c_precision``; ``auc`` when `scores` is given.
        Ratios with a zero denominator are NaN.

    Examples
    --------
    >>> m = image_metrics(["covid", "covid", "normal"], [1, 0, 0])
    >>> m["accuracy"], m["covid_sensitivity"], m["normal_precision"]
    (0.6666666666666666, 0.5, 0.5)
    """
    cm = confusion_matrix(y_true, y_pred)
    total = int(cm.sum())
    correct = int(np.trace(cm))
    out: dict[str, float] = {"images": total, "correct": correct, "accuracy": _ratio(correct, total)}
    for k, c in enumerate(LABELS):
        tp = int(cm[k, k])
        fn = int(cm[k].sum()) - tp
        fp = int(cm[:, k].sum()) - tp
        tn = total - tp - fn - fp
        out.update({f"{c}_tp": tp, f"{c}_fn": fn, f"{c}_fp": fp, f"{c}_tn": tn,
                    f"{c}_sensitivity": _ratio(tp, tp + fn), f"{c}_specificity": _ratio(tn, tn + fp),
                    f"{c}_precision": _ratio(tp, tp + fp)})
    if scores is not None:
        out["auc"] = roc_auc(y_true, scores)
    return out


def patient_decisions(df: pd.DataFrame, *, threshold: float = PATIENT_COVID_FRACTION,
                      series: str | None = "SR_2", patient_col: str = "patient",
                      series_col: str = "series", pred_col: str = "pred",
                      label_col: str = "patient_label", selected_col: str | None = "selected"
                      ) -> pd.DataFrame:
    """Apply the patient rule: COVID when >= `threshold` of the slices are called COVID.

    Parameters
    ----------
    df : pandas.DataFrame
        One row per slice: patient id, series, predicted slice label
        (`pred_col`, see `as_labels`) and the patient's true label
        (`label_col`; slice labels are not patient labels: a COVID patient
        has many normal-looking slices).
    threshold : float
        Fraction in [0, 1]; a patient is COVID when
        ``n_covid / n_slices >= threshold`` (10 %: 3 of 30 is COVID).
    series : str or None
        Keep only this series (the authors used SR_2); None keeps all rows.
    selected_col : str or None
        Boolean column of the CT selection; when present only True rows count.

    Returns
    -------
    pandas.DataFrame
        Indexed by patient: ``label``, ``slices``, ``covid_slices``,
        ``fraction``, ``decision``. A patient with no remaining slice gets
        fraction NaN and decision "normal".

    Notes
    -----
    Rows must be distinct slices: the same slice listed under two groups
    (COVID-CTset has such duplicates) would be counted twice.

    Examples
    --------
    >>> df = pd.DataFrame({"patient": ["p1"] * 10, "series": "SR_2",
    ...                    "patient_label": "covid", "pred": ["covid"] + ["normal"] * 9})
    >>> d = patient_decisions(df)
    >>> int(d.loc["p1", "covid_slices"]), float(d.loc["p1", "fraction"]), d.loc["p1", "decision"]
    (1, 0.1, 'covid')
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"df must be a pandas DataFrame, got {type(df).__name__}")
    if not (isinstance(threshold, (int, float)) and 0.0 <= threshold <= 1.0):
        raise ValueError(f"threshold must be a fraction in [0, 1], got {threshold!r}")
    need = [patient_col, pred_col, label_col] + ([series_col] if series is not None else [])
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise ValueError(f"df lacks columns {missing!r} (has {list(df.columns)!r})")
    labels = pd.Series(as_labels(df[label_col].to_numpy(), name=label_col), index=df.index)
    per_patient = labels.groupby(df[patient_col].to_numpy()).agg(["first", "nunique"])
    if (per_patient["nunique"] > 1).any():
        bad = per_patient.index[per_patient["nunique"] > 1][0]
        raise ValueError(f"patient {bad!r} has more than one {label_col!r}")
    keep = np.ones(len(df), dtype=bool)
    if series is not None:
        keep &= (df[series_col] == series).to_numpy()
    if selected_col is not None and selected_col in df.columns:
        keep &= df[selected_col].to_numpy(dtype=bool)
    covid = pd.Series(as_labels(df[pred_col].to_numpy(), name=pred_col) == "covid", index=df.index)
    kept = covid[keep].groupby(df[patient_col].to_numpy()[keep]).agg(["size", "sum"])
    out = pd.DataFrame({"label": per_patient["first"].astype(str)})
    out["slices"] = kept["size"].reindex(out.index).fillna(0).astype(np.int64)
    out["covid_slices"] = kept["sum"].reindex(out.index).fillna(0).astype(np.int64)
    n, k = out["slices"].to_numpy(), out["covid_slices"].to_numpy()
    fraction = np.full(n.shape, np.nan)
    np.divide(k, n, out=fraction, where=n > 0)
    out["fraction"] = fraction
    out["decision"] = np.where((n > 0) & (fraction >= threshold), "covid", "normal")
    out.index.name = patient_col
    return out


def patient_table(decisions: pd.DataFrame) -> dict[str, int]:
    """Counts of `patient_decisions` output in the paper's patient table.

    Returns ``patients``, ``patients_correct``, ``patients_wrong``,
    ``covid_correct``, ``covid_missed``, ``normal_correct``,
    ``normal_called_covid``.
    """
    for col in ("label", "decision"):
        if col not in decisions.columns:
            raise ValueError(f"decisions lacks column {col!r}")
    t = as_labels(decisions["label"].to_numpy(), name="label")
    p = as_labels(decisions["decision"].to_numpy(), name="decision")
    cm = confusion_matrix(t, p)  # rows/cols: covid, normal
    return {"patients": int(cm.sum()), "patients_correct": int(np.trace(cm)),
            "patients_wrong": int(cm[0, 1] + cm[1, 0]), "covid_correct": int(cm[0, 0]),
            "covid_missed": int(cm[0, 1]), "normal_correct": int(cm[1, 1]),
            "normal_called_covid": int(cm[1, 0])}


def mean_over_folds(folds: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Mean of every metric over folds (NaN in any fold gives NaN).

    Raises ValueError when the folds do not share the same keys.
    """
    folds = list(folds)
    if not folds:
        raise ValueError("folds is empty")
    keys = list(folds[0])
    for i, f in enumerate(folds[1:], 1):
        if set(f) != set(keys):
            diff = sorted(set(f) ^ set(keys))
            raise ValueError(f"fold {i} has different metric keys: {diff!r}")
    return {k: float(np.mean([float(f[k]) for f in folds])) for k in keys}


def _pct(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * float(v):.2f} %"


def _auc(v: Any) -> str:
    return "n/a" if math.isnan(float(v)) else f"{float(v):.4f}"


def _num(v: Any) -> str:
    v = float(v)
    return "n/a" if math.isnan(v) else (f"{v:.0f}" if v.is_integer() else f"{v:.1f}")


def metrics_markdown(metrics: Mapping[str, float], *, title: str | None = None) -> str:
    """Paper-style Markdown tables of `image_metrics` / `patient_table` keys present."""
    lines: list[str] = [f"### {title}", ""] if title else []
    if "accuracy" in metrics:
        cols = ["image accuracy", "COVID sensitivity", "normal sensitivity"]
        vals = [metrics["accuracy"], metrics.get("covid_sensitivity"), metrics.get("normal_sensitivity")]
        if "auc" in metrics:
            cols.append("ROC AUC")
            vals.append(metrics["auc"])
        lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols),
                  "| " + " | ".join(_pct(v) if c != "ROC AUC" else _auc(v)
                                    for c, v in zip(cols, vals)) + " |", ""]
        lines += ["| class | sensitivity | specificity | precision | TP | FN | FP | TN |",
                  "|---|---|---|---|---|---|---|---|"]
        for c in LABELS:
            if f"{c}_sensitivity" in metrics:
                lines.append(f"| {c} | " + " | ".join(
                    [_pct(metrics[f"{c}_{m}"]) for m in ("sensitivity", "specificity", "precision")]
                    + [_num(metrics[f"{c}_{m}"]) for m in ("tp", "fn", "fp", "tn")]) + " |")
        lines.append("")
    if "patients_correct" in metrics:
        m = metrics
        lines += ["| patients right / wrong | COVID right / missed | normal right / called COVID |",
                  "|---|---|---|",
                  f"| {_num(m['patients_correct'])} / {_num(m['patients_wrong'])} "
                  f"| {_num(m['covid_correct'])} / {_num(m['covid_missed'])} "
                  f"| {_num(m['normal_correct'])} / {_num(m['normal_called_covid'])} |", ""]
    if not lines:
        raise ValueError("metrics holds neither image metrics nor a patient table")
    return "\n".join(lines)


def plot_confusion_matrix(cm: Any, path: str | os.PathLike, *, labels: Sequence[str] = LABELS,
                          title: str | None = None) -> Path:
    """Write a confusion matrix (rows true, columns predicted) as a PNG; return the path."""
    cm = np.asarray(cm)
    if cm.shape != (len(labels), len(labels)):
        raise ValueError(f"cm must be {len(labels)}x{len(labels)}, got shape {cm.shape}")
    fig, ax = figure(4.2, 3.6)
    ax.imshow(cm, cmap="Blues")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{cm[i, j]:g}", ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return save_png(fig, path)


def plot_roc(y_true: Any, scores: Any, path: str | os.PathLike, *, positive: str = "covid",
             title: str | None = None) -> Path:
    """Write the ROC curve (with its AUC in the legend) as a PNG; return the path."""
    fpr, tpr, _ = roc_curve(y_true, scores, positive=positive)
    auc = roc_auc(y_true, scores, positive=positive)
    fig, ax = figure(4.2, 4.0)
    ax.plot(fpr, tpr, lw=1.5, label=f"AUC = {auc:.4f}" if not math.isnan(auc) else "AUC n/a")
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel(f"true positive rate ({positive})")
    ax.legend(loc="lower right")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return save_png(fig, path)
