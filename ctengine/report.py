"""The demo report: one self-contained ``index.html`` (figures embedded as PNG) and ``metrics.json``."""
from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .constants import LUNG_WINDOW_HU, SELECTION_COLS, SELECTION_ROWS
from .figures import figure, png_bytes
from .store import Store, open_store


def _lung_window(raw: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    centre, width = LUNG_WINDOW_HU
    hu = raw.astype(np.float32) * slope + intercept
    return np.clip((hu - (centre - width / 2)) / width, 0, 1)


def montage_png(opened: Store, patient: str, series: str, *, count: int = 8) -> bytes:
    """Lung-window slices of one series with the lung masks outlined (right red, left blue)."""
    attrs = opened.series_attrs(patient, series)
    slope, intercept = opened.rescale(patient, series)
    raw = opened.raw(patient, series)[:]
    mask = opened.lung_mask(patient, series)[:]
    picks = np.linspace(0, len(raw) - 1, min(count, len(raw))).round().astype(int)
    cols = (len(picks) + 1) // 2
    fig, axes = figure(3.4 * cols, 7.2, rows=2, cols=cols)
    for ax, z in zip(np.ravel(axes), picks):
        ax.imshow(_lung_window(raw[z], slope, intercept), cmap="gray")
        for value, colour in ((1, "#e5533c"), (2, "#3c78e5")):
            if (mask[z] == value).any():
                ax.contour(mask[z] == value, levels=[0.5], colors=colour, linewidths=0.8)
        ax.set_title(f"IM{attrs['instances'][z]:05d}", fontsize=8)
        ax.axis("off")
    for ax in np.ravel(axes)[len(picks):]:
        ax.axis("off")
    fig.suptitle(f"{patient}/{series}: lung window, lung masks (right red, left blue)", fontsize=10)
    return png_bytes(fig)


def selection_png(opened: Store, patient: str, series: str) -> bytes:
    """Dark-pixel counts along a series, the authors' threshold and the kept slices."""
    rows = opened.catalog.query("patient == @patient and series == @series").sort_values("z")
    counts, keep = rows["dark_count"].to_numpy(), rows["selected"].to_numpy(bool)
    threshold = (counts.max() - counts.min()) / 1.5
    fig, ax = figure(7, 3)
    ax.bar(rows["instance"], counts, color=np.where(keep, "#2a9d8f", "#bbbbbb"))
    ax.axhline(threshold, color="#e76f51", linestyle="--", label=f"threshold (max - min) / 1.5 = {threshold:.0f}")
    ax.set_xlabel("instance (superior -> inferior)")
    ax.set_ylabel(f"pixels raw < 300 in rows {SELECTION_ROWS.start}..{SELECTION_ROWS.stop - 1}, "
                  f"cols {SELECTION_COLS.start}..{SELECTION_COLS.stop - 1}", fontsize=7)
    ax.set_title(f"CT selection of {patient}/{series}: {keep.sum()} of {len(keep)} slices kept", fontsize=10)
    ax.legend(fontsize=8)
    return png_bytes(fig)


def distributions_png(slices: pd.DataFrame) -> bytes:
    """Per-slice HU features of selected slices, COVID vs normal patients."""
    data = slices[(slices["selected"]) & (slices["voxels"] > 0)]
    fig, axes = figure(12, 3.2, cols=3)
    for ax, column, title in zip(axes, ("mean_hu", "opacity_pct", "frac_ground_glass"),
                                 ("mean HU in the lung", "opacity (% of lung, -700..+50 HU)", "ground-glass fraction")):
        for label, colour in (("normal", "#3c78e5"), ("covid", "#e5533c")):
            values = data.loc[data["label"] == label, column].dropna()
            if len(values):
                ax.hist(values, bins=30, alpha=0.6, color=colour, label=f"{label} ({len(values)} slices)")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    return png_bytes(fig)


def training_png(history: list[dict[str, float]]) -> bytes:
    fig, ax = figure(5, 3)
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["loss"] for h in history], "o-", label="training loss")
    ax.plot(epochs, [h["accuracy"] for h in history], "s-", label="training accuracy")
    if any("val_accuracy" in h for h in history):
        ax.plot(epochs, [h.get("val_accuracy", np.nan) for h in history], "^-", label="validation accuracy")
    ax.set_xlabel("epoch")
    ax.set_title("training curve", fontsize=10)
    ax.legend(fontsize=8)
    return png_bytes(fig)


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, float_format=lambda v: f"{v:.3f}", border=0, classes="t")


def _caveat(counts: dict[str, int], what: str, *, per_patient: bool = False) -> str:
    """A warning next to figures computed from few patients of a class (fewer than 30 in any class)."""
    n = sum(counts.values())
    if not n or min(counts.values()) >= 30:
        return ""
    classes = ", ".join(f"{count} {name}" for name, count in counts.items())
    moves = (f"one patient moves the share of right verdicts by {100 / n:.0f} points" if per_patient else
             "the slices of one patient move together, so each class's figures rest on its few patients")
    return (f'<p class="caveat">{what} from {n} patient{"" if n == 1 else "s"} ({classes}): {moves}; '
            f"read them as a smoke test, not an estimate.</p>")


def _class_counts(patients: pd.DataFrame) -> dict[str, int]:
    """Patients per label (COVID first)."""
    by_label = patients["label"].value_counts()
    return {name: int(by_label.get(name, 0)) for name in ("covid", "normal")}


def evaluation_section(metrics: dict[str, Any], patients: pd.DataFrame, evaluation: Path) -> str:
    """Image metrics as an HTML table (paper definitions), the split's size beside them, confusion and ROC."""
    names = [("accuracy", "accuracy"), ("covid_sensitivity", "COVID sensitivity"),
             ("covid_specificity", "COVID specificity"), ("covid_precision", "COVID precision"),
             ("normal_sensitivity", "normal sensitivity"), ("auc", "ROC AUC")]
    table = pd.DataFrame({"metric": [label for _, label in names],
                          "value": [float(metrics.get(key, np.nan)) for key, _ in names]})
    counts = _class_counts(patients)
    size = (f"<p>Test split: {int(metrics.get('images', 0))} labelled images of {len(patients)} patients "
            f"({counts['covid']} COVID, {counts['normal']} normal).</p>")
    return (size + _table(table) + _caveat(counts, "Image metrics of the test split")
            + _img((evaluation / "confusion.png").read_bytes(), "confusion matrix")
            + _img((evaluation / "roc.png").read_bytes(), "ROC"))


def training_section(opened: Store, fold: int, history: list[dict[str, float]]) -> str:
    """The training curve with the patients and slices per class of the train and validation splits."""
    from .learn.train import describe_splits, split_lines

    splits = describe_splits(opened.catalog, fold)
    lines = "".join(f"<li>{html.escape(line)}</li>" for line in split_lines(splits))
    validation = {name: c["patients"] for name, c in splits.get("validation", {}).items()}
    return (f"<ul>{lines}</ul>" + _img(training_png(history), "training curve")
            + _caveat(validation, "Validation accuracy"))


def patients_table(opened: Store, evaluation: Path, fold: int) -> pd.DataFrame:
    """One row per test patient: label, split, selected slices, fraction called COVID, verdict, right or
    wrong, lung volume (L) and opacity (%) of SR_2."""
    decisions = pd.read_csv(evaluation / "patients.csv")
    features = opened.feature_table("patients")
    sr2 = features[features["series"] == "SR_2"] if "series" in features else features
    out = decisions.merge(sr2[["patient", "lung_volume_l", "opacity_pct"]], on="patient", how="left")
    out.insert(2, "split", f"test (fold {fold})")
    out["right"] = np.where(out["decision"] == out["label"], "right", "WRONG")
    return out.rename(columns={"slices": "selected_slices", "covid_slices": "called_covid",
                               "fraction": "fraction_covid", "decision": "verdict"})


def gradcam_picks(predictions: pd.DataFrame, *, per_group: int = 4) -> pd.DataFrame:
    """Labelled test slices to explain: ``per_group // 2`` right COVID, as many right normal, ``per_group`` wrong."""
    labelled = predictions[predictions["labelled"]]
    right = labelled[labelled["label"] == labelled["prediction"]]
    wrong = labelled[labelled["label"] != labelled["prediction"]]
    return pd.concat([right[right["label"] == "covid"].head(per_group // 2),
                      right[right["label"] == "normal"].head(per_group // 2), wrong.head(per_group)])


def gradcam_png(store: str, checkpoint: str | os.PathLike, evaluation: Path, *, per_group: int = 4) -> bytes | None:
    """Grad-CAM overlays of right and wrong labelled test slices (None when there are no predictions)."""
    import torch

    from .learn.explain import grad_cam, save_overlays
    from .learn.loader import SliceLoader
    from .learn.model import load_checkpoint

    picks = gradcam_picks(pd.read_csv(evaluation / "predictions.csv"), per_group=per_group)
    if picks.empty:
        return None
    catalog = open_store(store).catalog
    rows = picks.merge(catalog[["patient", "series", "instance", "z"]], on=["patient", "series", "instance"])
    net, _ = load_checkpoint(checkpoint)
    with SliceLoader(store, rows.assign(target=0), batch_size=len(rows), threads=1,
                     lung_only=net.config["lung_only"]) as loader:
        batch = next(iter(loader))
        images, shown = torch.as_tensor(batch.images).clone(), batch.rows.reset_index(drop=True)
    prepared, cams, probability = grad_cam(net, images)
    key = ["patient", "series", "instance"]
    shown = shown[key].merge(picks[[*key, "label", "prediction"]], on=key, how="left")
    titles = [f"{r.patient}/{r.series} IM{int(r.instance):05d}\n{r.label}, p(COVID) {p:.2f}"
              f"{'' if r.label == r.prediction else ', WRONG'}" for r, p in zip(shown.itertuples(), probability)]
    path = evaluation / "gradcam.png"
    save_overlays(prepared, cams, titles, path)
    return path.read_bytes()


def write_report(out: str | os.PathLike, *, store: str, evaluation: str | os.PathLike, history: list[dict],
                 metrics: dict[str, Any], throughput: dict[str, float], seconds: dict[str, float],
                 config: dict[str, Any] | None = None, checkpoint: str | os.PathLike | None = None) -> Path:
    """Write ``out/index.html`` and ``out/metrics.json``; return the HTML path.

    ``config`` (model, epochs, fold, seed, cohort, version) is shown as the run configuration;
    ``checkpoint`` adds Grad-CAM overlays of right and wrong test slices.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    opened = open_store(store)
    labels = opened.catalog[["patient", "label"]].drop_duplicates()
    slices = opened.features.merge(labels, on="patient")
    evaluation = Path(evaluation)
    fold = int(metrics.get("fold", (config or {}).get("fold", 1)))
    patients = patients_table(opened, evaluation, fold)
    stages = pd.DataFrame({"stage": list(throughput), "slices/s": list(throughput.values()),
                           "seconds": [seconds.get(k, np.nan) for k in throughput],
                           "note": ["on the running cluster (start-up not counted)" if k in ("ingest", "features")
                                    else "" for k in throughput]})
    examples = [labels.loc[labels["label"] == k, "patient"].iloc[0] for k in ("covid", "normal")
                if (labels["label"] == k).any()]
    sections = []
    if config:
        sections.append(("Run configuration", _table(pd.DataFrame({"setting": list(config),
                                                                   "value": [str(v) for v in config.values()]}))))
    sections += [
        *((f"Lung masks of {p} ({labels.set_index('patient').loc[p, 'label']})",
           _img(montage_png(opened, p, "SR_2", count=6), "montage")) for p in examples),
        ("CT selection", _img(selection_png(opened, examples[0], "SR_2"), "selection")),
        ("HU features of selected slices, COVID vs normal patients", _img(distributions_png(slices), "distributions")),
        ("Training", training_section(opened, fold, history)),
        ("Evaluation (paper definitions)", evaluation_section(metrics, patients, evaluation)),
        ("Patients of the test split (the authors' rule: COVID when >= 10 % of the selected SR_2 slices are)",
         _table(patients) + _caveat(_class_counts(patients), "Verdicts", per_patient=True)),
    ]
    if checkpoint is not None:
        cam = gradcam_png(store, checkpoint, evaluation)
        if cam is not None:
            sections.append(("Where the classifier looked (Grad-CAM of the COVID logit, right and wrong slices)",
                             _img(cam, "Grad-CAM")))
    sections.append(("Throughput of every stage", _table(stages)))
    body = "\n".join(f"<h2>{html.escape(title)}</h2>\n{content}" for title, content in sections)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>ctengine demo report</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}}img{{max-width:100%;margin:.5em 0}}
table.t{{border-collapse:collapse}}table.t td,table.t th{{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}}
p.caveat{{color:#8a4b00;background:#fff4e0;padding:.4em .8em}}</style></head><body>
<h1>ctengine demo report</h1><p>Store: <code>{html.escape(str(store))}</code></p>
{body}</body></html>"""
    (out / "index.html").write_text(page)
    summary = {"metrics": metrics, "throughput_slices_per_s": throughput, "seconds": seconds, "history": history,
               "config": config or {}}
    (out / "metrics.json").write_text(json.dumps(summary, indent=2, default=float))
    return out / "index.html"
