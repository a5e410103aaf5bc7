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
    fig, axes = figure(2.4 * cols, 5, rows=2, cols=cols)
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
    fig.suptitle("HU features of selected slices by patient label", fontsize=10)
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


def write_report(out: str | os.PathLike, *, store: str, evaluation: str | os.PathLike, history: list[dict],
                 metrics: dict[str, Any], throughput: dict[str, float], seconds: dict[str, float]) -> Path:
    """Write ``out/index.html`` and ``out/metrics.json``; return the HTML path."""
    from .learn.metrics import metrics_markdown

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    opened = open_store(store)
    slices = opened.features.merge(opened.catalog[["patient", "label"]].drop_duplicates(), on="patient")
    covid = opened.catalog[opened.catalog["label"] == "covid"]
    patient = covid["patient"].iloc[0] if len(covid) else opened.catalog["patient"].iloc[0]
    evaluation = Path(evaluation)
    stages = pd.DataFrame({"stage": list(throughput), "slices/s": list(throughput.values()),
                           "seconds": [seconds.get(k, np.nan) for k in throughput]})
    sections = [
        ("Lung masks", _img(montage_png(opened, patient, "SR_2"), "montage")),
        ("CT selection", _img(selection_png(opened, patient, "SR_2"), "selection")),
        ("HU features, COVID vs normal", _img(distributions_png(slices), "distributions")),
        ("Training", _img(training_png(history), "training curve")),
        ("Evaluation (paper definitions)",
         f"<pre>{html.escape(metrics_markdown(metrics, title='Test split'))}</pre>"
         + _img((evaluation / "confusion.png").read_bytes(), "confusion matrix")
         + _img((evaluation / "roc.png").read_bytes(), "ROC")),
        ("Patients", _table(opened.feature_table("patients")[["patient", "label", "series", "n_slices",
                                                               "lung_volume_l", "mean_hu", "opacity_pct"]])),
        ("Throughput of every stage", _table(stages)),
    ]
    body = "\n".join(f"<h2>{html.escape(title)}</h2>\n{content}" for title, content in sections)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>ctengine demo report</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}}img{{max-width:100%;margin:.5em 0}}
table.t{{border-collapse:collapse}}table.t td,table.t th{{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}}
pre{{background:#f6f6f6;padding:1em}}</style></head><body>
<h1>ctengine demo report</h1><p>Store: <code>{html.escape(str(store))}</code></p>
{body}</body></html>"""
    (out / "index.html").write_text(page)
    summary = {"metrics": metrics, "throughput_slices_per_s": throughput, "seconds": seconds, "history": history}
    (out / "metrics.json").write_text(json.dumps(summary, indent=2, default=float))
    return out / "index.html"
