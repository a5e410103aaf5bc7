"""Figures without pyplot's global state: one Agg canvas per figure, written as PNG."""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any


def figure(width: float, height: float, *, rows: int = 1, cols: int = 1) -> tuple[Any, Any]:
    """A (figure, axes) pair of width x height inches at 100 dpi; axes is one Axes or an array of them.

    Examples
    --------
    >>> fig, ax = figure(2, 1)
    >>> len(png_bytes(fig)) > 0
    True
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols, squeeze=True)


def png_bytes(fig: Any, **savefig: Any) -> bytes:
    """The figure as PNG bytes (tight bounding box)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight", **savefig)
    return buffer.getvalue()


def save_png(fig: Any, path: str | os.PathLike, **savefig: Any) -> Path:
    """Write the figure to ``path`` as PNG and return the path."""
    Path(path).write_bytes(png_bytes(fig, **savefig))
    return Path(path)
