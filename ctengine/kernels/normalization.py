"""Intensity normalisation of raw CT slices, and dataset-wide running moments.

Raw integer slices (y, x) or stacks (z, y, x) go in, float32 comes out, as a
numpy, cupy or dask array like the input. Modes:

``"max"``
    float32(x / max(x)) per slice: the dataset viewer's own normalisation,
    bit-identical to ``(s / s.max()).astype(np.float32)`` for each slice s.
``"fixed"``
    float32(x / constant) with one constant for every slice (raw units).
``"hu"``
    float32(raw * slope + intercept), Hounsfield units.
``"window"``
    HU window [centre - width/2, centre + width/2] mapped onto [0, 1], clipped.
``"zscore"``
    float32((x - mean) / std) with dataset-wide mean/std in raw units, for
    example from :class:`RunningMoments`.
"""
from __future__ import annotations

import math
from types import MappingProxyType
from typing import Any, Literal, NamedTuple

import numpy as np

from ..constants import (DEFAULT_INTERCEPT, DEFAULT_SLOPE, FIXED_DIVISOR_RAW,
                         LUNG_WINDOW_HU, MEDIASTINUM_WINDOW_HU)
from . import _normalize_reference as _ref
from ._backend import array_kind, map_slices_dask
from ._validate import block_backend, finite, kernel_input, positive

__all__ = ["normalize", "RunningMoments", "WINDOW_PRESETS", "MODES"]

MODES = ("max", "fixed", "hu", "window", "zscore")
#: named HU windows (centre, width) of mode "window"
WINDOW_PRESETS = MappingProxyType({"lung": LUNG_WINDOW_HU, "mediastinum": MEDIASTINUM_WINDOW_HU})
_OPTIONS = {"max": (), "fixed": ("constant",), "hu": ("slope", "intercept"),
            "window": ("slope", "intercept", "window", "center", "width"),
            "zscore": ("moments", "mean", "std")}


def normalize(x: Any, mode: str, *, units: Literal["raw", "hu"] | None = None,
              constant: float | None = None, slope: float | None = None,
              intercept: float | None = None, window: str | None = None,
              center: float | None = None, width: float | None = None,
              moments: "RunningMoments | None" = None, mean: float | None = None,
              std: float | None = None, method: Literal["auto", "reference", "cuda"] = "auto") -> Any:
    """Normalise raw CT intensities to float32.

    Parameters
    ----------
    x : numpy, cupy or dask array of integers, (y, x) or (z, y, x)
        Raw stored values (raw = HU + 1024 for COVID-CTset), or Hounsfield
        units with ``units="hu"``.
    mode : {"max", "fixed", "hu", "window", "zscore"}
        See the module docstring.
    units : {"raw", "hu"}, optional
        What x holds. Default: raw for unsigned integers; signed or float
        input must say ``units="hu"`` (taken as raw = rint(HU) + 1024,
        clipped to 0..65535, so every mode sees the values COVID-CTset
        stores) or ``units="raw"``.
    constant : float, optional
        Mode "fixed": divisor in raw units, default 65535.0 (the full 16-bit
        range, so every raw value maps into [0, 1]; COVID-CTset raw values
        exceed 4095).
    slope, intercept : float, optional
        Modes "hu" and "window": HU = raw * slope + intercept (default 1, -1024).
    window : {"lung", "mediastinum"}, optional
        Mode "window": preset (centre, width) in HU, (-600, 1500) or (40, 400).
    center, width : float, optional
        Mode "window": explicit centre and width in HU instead of a preset,
        e.g. the series' own DICOM window. Mapping: (HU - (centre - width/2))
        / width clipped to [0, 1] (the plain linear window, not DICOM's
        ``c - 0.5, w - 1`` variant, which differs by under 1/width).
    moments : RunningMoments, optional
        Mode "zscore": dataset-wide moments of raw values.
    mean, std : float, optional
        Mode "zscore": raw-unit mean and standard deviation instead of ``moments``.
    method : {"auto", "reference", "cuda"}
        "auto": Numba CPU kernel for numpy blocks, numba.cuda for cupy
        blocks; "reference": the plain numpy specification (numpy blocks
        only); "cuda": numba.cuda kernels on numpy blocks too.

    Returns
    -------
    float32 array of x's shape and kind.
    Mode "max" gives zeros for a slice whose maximum is 0 (never NaN).

    Raises
    ------
    TypeError
        x is not an integer array (numbers with ``units="hu"``), or an option
        does not belong to ``mode``.
    ValueError
        Unknown mode, window or method; non-finite or non-positive divisor,
        slope, width or std; x neither 2-D nor 3-D.

    Examples
    --------
    >>> import numpy as np
    >>> normalize(np.array([[0, 512, 1024]], dtype=np.uint16), "max")
    array([[0. , 0.5, 1. ]], dtype=float32)
    >>> normalize(np.array([[0, 1024]], dtype=np.uint16), "hu")
    array([[-1024.,     0.]], dtype=float32)
    """
    if units == "hu" and (slope is not None or intercept is not None):
        raise ValueError("slope and intercept convert raw values to HU: with units='hu' leave them out")
    inp = kernel_input(x, units=units, method=method)
    plan = _plan(mode, constant=constant, slope=slope, intercept=intercept, window=window,
                 center=center, width=width, moments=moments, mean=mean, std=std)
    kind, stack, was_2d = inp.kind, inp.stack, inp.was_2d
    if kind == "dask":
        out = map_slices_dask(_run_block, stack, plan=plan, method=method, dtype=np.float32)
    else:
        out = _run_block(stack, plan=plan, method=method)
    return out[0] if was_2d else out


class _Plan(NamedTuple):
    """Resolved options: out = clip(((x * slope + intercept) - lo) / div); div None = slice max."""

    mode: str
    slope: float = 1.0
    intercept: float = 0.0
    lo: float = 0.0
    div: float | None = 1.0
    clip: bool = False
    center: float = 0.0


def _run_block(stack: Any, *, plan: _Plan, method: str) -> Any:
    """Normalise one (z, y, x) numpy or cupy block following a resolved plan."""
    slope, intercept, lo, div, clip = plan.slope, plan.intercept, plan.lo, plan.div, plan.clip
    backend, xp = block_backend(stack, method)
    if backend == "cuda":
        return _cuda_block(stack, plan, xp)
    if backend == "reference":
        return _reference(stack, plan)
    from . import _normalize_cpu as cpu
    stack = np.ascontiguousarray(stack)
    divs = cpu.slice_max(stack) if div is None else np.full(stack.shape[0], div, np.float64)
    out = np.empty(stack.shape, dtype=np.float32)
    cpu.affine_f32(stack, slope, intercept, lo, divs, clip, out)
    return out


def _cuda_block(stack: Any, plan: _Plan, xp: Any) -> Any:
    """The numba.cuda path on device arrays of module xp (cupy; numpy under the CUDA simulator)."""
    from . import _normalize_gpu as gpu
    if plan.div is None:
        divs = gpu.slice_max(stack, xp)
    else:
        divs = xp.full(stack.shape[0], plan.div, dtype=xp.float64)
    return gpu.affine_f32(stack, plan.slope, plan.intercept, plan.lo, divs, plan.clip, xp)


def _reference(stack: np.ndarray, p: _Plan) -> np.ndarray:
    if p.mode == "max":
        return _ref.normalize_max(stack)
    if p.mode == "fixed":
        return _ref.normalize_fixed(stack, p.div)
    if p.mode == "hu":
        return _ref.normalize_hu(stack, p.slope, p.intercept)
    if p.mode == "window":
        return _ref.normalize_window(stack, p.slope, p.intercept, p.center, p.div)
    return _ref.normalize_zscore(stack, p.lo, p.div)


def _plan(mode: str, **opts: Any) -> _Plan:
    """Resolve and validate the options of one mode."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    extra = [k for k, v in opts.items() if v is not None and k not in _OPTIONS[mode]]
    if extra:
        raise TypeError(f"option(s) {extra} do not apply to mode {mode!r}")
    opts = {k: opts.get(k) for k in ("constant", "slope", "intercept", "window", "center", "width",
                                     "moments", "mean", "std")}
    if mode == "max":
        return _Plan(mode, div=None)
    if mode == "fixed":
        c = FIXED_DIVISOR_RAW if opts["constant"] is None else opts["constant"]
        return _Plan(mode, div=positive("constant", c))
    slope = positive("slope", DEFAULT_SLOPE if opts["slope"] is None else opts["slope"])
    intercept = finite("intercept",
                        DEFAULT_INTERCEPT if opts["intercept"] is None else opts["intercept"])
    if mode == "hu":
        return _Plan(mode, slope, intercept)
    if mode == "window":
        c, w = _window(opts["window"], opts["center"], opts["width"])
        # lo computed exactly as the reference does: center - width / 2
        return _Plan(mode, slope, intercept, lo=c - w / 2.0, div=w, clip=True, center=c)
    return _zscore_plan(opts["moments"], opts["mean"], opts["std"])


def _window(window: str | None, center: Any, width: Any) -> tuple[float, float]:
    if window is not None:
        if center is not None or width is not None:
            raise TypeError("give either window or center/width, not both")
        if window not in WINDOW_PRESETS:
            raise ValueError(f"window must be one of {tuple(WINDOW_PRESETS)}, got {window!r}")
        center, width = WINDOW_PRESETS[window]
    elif center is None or width is None:
        raise TypeError("mode 'window' needs window=<preset> or both center= and width= (HU)")
    return finite("center", center), positive("width", width)


def _zscore_plan(moments: "RunningMoments | None", mean: Any, std: Any) -> _Plan:
    if moments is not None:
        if mean is not None or std is not None:
            raise TypeError("give either moments or mean/std, not both")
        if not isinstance(moments, RunningMoments):
            raise TypeError(f"moments must be a RunningMoments, got {type(moments).__name__}")
        if moments.count == 0:
            raise ValueError("moments is empty (count 0): update it with data first")
        mean, std = moments.mean, moments.std
    elif mean is None or std is None:
        raise TypeError("mode 'zscore' needs moments= or both mean= and std= (raw units)")
    return _Plan("zscore", lo=finite("mean", mean), div=positive("std", std))


class RunningMoments:
    """Streaming count, mean and variance of values, mergeable across tasks.

    Each :meth:`update` computes the batch's mean and sum of squared
    deviations in float64 (two passes) and folds them in with the parallel
    combination of Chan, Golub and LeVeque, which stays accurate for data
    with a large offset. :meth:`merge` combines accumulators built on
    different workers; :meth:`to_dict` / :meth:`from_dict` carry them between
    processes.

    Attributes
    ----------
    count : int
        Number of values seen.
    mean : float
        Mean of the values seen (NaN while empty).
    m2 : float
        Sum of squared deviations from the mean.

    Examples
    --------
    >>> import numpy as np
    >>> a = RunningMoments().update(np.array([1, 2, 3], dtype=np.uint16))
    >>> b = RunningMoments().update(np.array([4, 5], dtype=np.uint16))
    >>> m = a.merge(b); (m.count, m.mean, m.var)
    (5, 3.0, 2.0)
    """

    __slots__ = ("count", "mean", "m2")
    _BATCH = 1 << 22  # values per float64 pass (32 MiB)

    def __init__(self, count: int = 0, mean: float = math.nan, m2: float = 0.0) -> None:
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count!r}")
        self.count = int(count)
        self.mean = float(mean) if count else math.nan
        self.m2 = float(m2) if count else 0.0

    @property
    def var(self) -> float:
        """Population variance (ddof 0); NaN while empty."""
        return self.m2 / self.count if self.count else math.nan

    @property
    def std(self) -> float:
        """Population standard deviation; NaN while empty."""
        return math.sqrt(self.var)

    def _fold(self, n: int, mean: float, m2: float) -> None:
        if n == 0:
            return
        if self.count == 0:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta * delta * (self.count * n / total)
        self.count = total

    def update(self, x: Any) -> "RunningMoments":
        """Add every value of a numpy, cupy or dask array (any shape, real dtype); return self."""
        if np.dtype(x.dtype).kind not in "uif":
            raise TypeError(f"x must be a real numeric array, got dtype {x.dtype}")
        kind = array_kind(x)
        if kind == "dask":
            import dask
            parts = dask.compute(*[dask.delayed(_block_moments)(b) for b in x.to_delayed().ravel()])
            for n, mean, m2 in parts:
                self._fold(n, mean, m2)
            return self
        flat = x.reshape(-1)
        for start in range(0, flat.shape[0], self._BATCH):
            self._fold(*_block_moments(flat[start:start + self._BATCH]))
        return self

    def merge(self, other: "RunningMoments") -> "RunningMoments":
        """New accumulator holding the values of both (neither input changes)."""
        if not isinstance(other, RunningMoments):
            raise TypeError(f"can only merge a RunningMoments, got {type(other).__name__}")
        out = RunningMoments(self.count, self.mean, self.m2)
        out._fold(other.count, other.mean, other.m2)
        return out

    def to_dict(self) -> dict[str, float]:
        """JSON-serialisable state: {"count", "mean", "m2"}."""
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunningMoments":
        """Rebuild an accumulator from :meth:`to_dict` output."""
        return cls(int(d["count"]), float(d["mean"]), float(d["m2"]))

    def __repr__(self) -> str:
        return f"RunningMoments(count={self.count}, mean={self.mean!r}, std={self.std!r})"


def _block_moments(x: Any) -> tuple[int, float, float]:
    """(count, mean, sum of squared deviations) of one numpy or cupy block, float64 two-pass."""
    n = int(x.size)
    if n == 0:
        return 0, math.nan, 0.0
    v = x.reshape(-1).astype("float64")
    mean = float(v.sum() / n)
    d = v - mean
    return n, mean, float((d * d).sum())
