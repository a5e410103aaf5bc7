"""Montage of a synthetic series in lung window (the picture in docs/img/synth_covid_series.png).

Run ``python -m ctengine.synth.montage docs/img/synth_covid_series.png`` to redraw it.
"""
from __future__ import annotations

import argparse
import os

import numpy as np

from ..constants import HU_OFFSET, LUNG_WINDOW_HU
from .phantom import render_series

__all__ = ["save_montage"]


def save_montage(path: str | os.PathLike, *, seed: int = 5, n_slices: int = 44, tiles: int = 16,
                 covid: bool = True, kernel: str = "B70s", thickness_mm: float = 6.0, spacing_mm: float = 0.7,
                 window: tuple[float, float] = LUNG_WINDOW_HU, lesion_burden: float | None = 0.55,
                 outline: bool = False) -> None:
    """Render one series (an SR_2-like 6 mm B70s series by default) and save ``tiles`` evenly spaced
    slices in lung window (centre, width in HU) as a PNG; ``lesion_burden`` as in ``render_series``
    (a moderately ill patient by default); ``outline`` draws the lesion truth in red."""
    from ..figures import figure, save_png

    ph = render_series(n_slices=n_slices, covid=covid, seed=seed, spacing_mm=spacing_mm, thickness_mm=thickness_mm,
                       kernel=kernel, lesion_burden=lesion_burden if covid else None)
    idx = np.linspace(0, n_slices - 1, tiles).round().astype(int)
    cols = int(np.ceil(np.sqrt(tiles)))
    rows = int(np.ceil(tiles / cols))
    fig, axes = figure(2.6 * cols, 2.75 * rows, rows=rows, cols=cols)
    axes = np.atleast_1d(axes)
    fig.set_facecolor("black")
    lo, hi = window[0] - window[1] / 2, window[0] + window[1] / 2
    for ax, k in zip(axes.flat, idx):
        ax.imshow(ph.raw[k].astype(np.float32) - HU_OFFSET, cmap="gray", vmin=lo, vmax=hi, interpolation="lanczos")
        if outline and ph.lesion[k].any():
            ax.contour(ph.lesion[k], [0.5], colors="red", linewidths=0.6)
        tag = " lesion" if ph.lesion[k].any() else ""
        ax.set_title(f"IM{k + 1:05d}{tag}", color="white", fontsize=8, pad=2)
        ax.axis("off")
    for ax in list(axes.flat)[len(idx):]:
        ax.axis("off")
    fig.suptitle(f"synthetic COVID-CTset series: {kernel}, {thickness_mm:g} mm, {spacing_mm} mm pixels, "
                 f"lung window {window[0]:g}/{window[1]:g} HU", color="white", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    save_png(fig, path, dpi=90, facecolor="black")


def main() -> None:  # pragma: no cover - command-line wrapper
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("path")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--outline", action="store_true")
    a = ap.parse_args()
    save_montage(a.path, seed=a.seed, outline=a.outline)


if __name__ == "__main__":  # pragma: no cover
    main()
