"""Shared inputs of the kernel conformance tests, and the CUDA-simulator runner.

Every backend (reference, cpu, dask, cuda-sim) runs the same named cases:
random arrays, edge cases, CT-like phantom slices and the real CT slice
shipped with pydicom (``pydicom.examples.ct``, converted to raw = HU + 1024).

numba.cuda kernels run under the CUDA simulator in a subprocess
(``NUMBA_ENABLE_CUDASIM=1`` must be set before numba.cuda is first imported,
which the test process may already have done): :func:`run_cudasim` ships
the cases to it and returns the outputs of the GPU code paths, called with
numpy as the array module.
"""
from __future__ import annotations

import importlib
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent

HU_OFFSET = 1024


def random_raw(shape: tuple[int, ...], *, high: int = 5000, seed: int = 0,
               dtype: Any = np.uint16) -> np.ndarray:
    """Uniform random raw values in [0, high)."""
    return np.random.default_rng(seed).integers(0, high, shape).astype(dtype)


def ct_phantom(z: int = 6, size: int = 512, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """CT-like raw uint16 stack (z, size, size) and its lung mask (uint8: 1 image-left, 2 image-right).

    Field of view circle (exactly 0 outside), body ~1060 raw, table under the
    body with an air gap, two lungs ~170 raw whose size grows then shrinks
    along z (closed at the ends of the series), a trachea near the top, a
    ground-glass patch (~500 raw) and a consolidation (~1060 raw) inside the
    lungs of the middle slices, Gaussian noise sigma 20.
    """
    rng = np.random.default_rng(seed)
    s = size / 512.0
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    c = size / 2.0
    fov = (yy - c) ** 2 + (xx - c) ** 2 <= (0.48 * size) ** 2
    body = ((yy - c) / (0.36 * size)) ** 2 + ((xx - c) / (0.44 * size)) ** 2 <= 1
    raw = np.zeros((z, size, size), dtype=np.float64)
    mask = np.zeros((z, size, size), dtype=np.uint8)
    for k in range(z):
        img = np.where(body, 1060.0, 0.0)
        table = (yy > c + 0.39 * size) & (yy < c + 0.42 * size) & (np.abs(xx - c) < 0.35 * size)
        gap = (yy >= c + 0.40 * size) & (yy < c + 0.41 * size) & (np.abs(xx - c) < 0.33 * size)
        img[table] = 1500.0
        img[gap] = 30.0
        f = 0.15 + 0.85 * np.sin(np.pi * (k + 0.5) / z)
        for label, cx in ((1, 0.33 * size), (2, 0.67 * size)):
            lung = ((yy - 0.49 * size) / (0.22 * size * f)) ** 2 + ((xx - cx) / (0.12 * size * f)) ** 2 <= 1
            img[lung] = 170.0
            mask[k][lung] = label
        if k < z // 3:
            img[(yy - 0.30 * size) ** 2 + (xx - c) ** 2 <= (9 * s) ** 2] = 24.0
        if z // 3 <= k < 2 * z // 3 + 1:
            ggo = (yy - 0.45 * size) ** 2 + (xx - 0.30 * size) ** 2 <= (20 * s) ** 2
            cons = (yy - 0.55 * size) ** 2 + (xx - 0.70 * size) ** 2 <= (12 * s) ** 2
            img[ggo & (mask[k] == 1)] = 500.0
            img[cons & (mask[k] == 2)] = 1060.0
        img = img + rng.normal(0.0, 20.0, img.shape)
        img[~fov] = 0.0
        raw[k] = img
    return np.clip(np.rint(raw), 0, 65535).astype(np.uint16), mask


def real_ct_raw() -> np.ndarray:
    """The real 128 x 128 CT slice of pydicom, as raw = HU + 1024 uint16."""
    from pydicom import examples

    ds = examples.ct
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    return np.clip(np.rint(hu + HU_OFFSET), 0, 65535).astype(np.uint16)


def real_ct_mask(raw: np.ndarray) -> np.ndarray:
    """A simple air/lung mask of a raw slice: HU < -400 and not outside the scan (uint8 0/1)."""
    return ((raw < HU_OFFSET - 400) & (raw > 0)).astype(np.uint8)


def upsample(x: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upsampling of the last two axes."""
    return np.repeat(np.repeat(x, factor, axis=-2), factor, axis=-1)


def run_cudasim(kind: str, cases: dict[str, dict[str, Any]], *, timeout: float = 1800) -> dict[str, Any]:
    """Run the numba.cuda code path of ``kind`` on every case under the CUDA simulator.

    Each runs the public kernel with ``method="cuda"``. kind: "normalize"
    (case keys x, mode, opts), "dark" (x), "area" (masks), "stats" (x,
    mask, slope, intercept) or "lung" (x, opts). Returns {case name: output}.
    ``timeout`` (s) only guards against a hung simulator.
    """
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.pkl", Path(tmp) / "out.pkl"
        src.write_bytes(pickle.dumps((kind, cases)))
        code = (f"import sys; sys.path[:0] = [{str(ROOT)!r}, {str(TESTS)!r}]; "
                f"import kernel_cases; kernel_cases._cudasim_main({str(src)!r}, {str(dst)!r})")
        env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"CUDA simulator run failed:\n{proc.stderr[-4000:]}")
        return pickle.loads(dst.read_bytes())


def _cudasim_main(src: str, dst: str) -> None:
    """Subprocess side of :func:`run_cudasim`."""
    from numba import config

    if not config.ENABLE_CUDASIM:
        raise RuntimeError("NUMBA_ENABLE_CUDASIM is not active in this process")
    from ctengine.kernels import _normalize_gpu, _selection_gpu, _stats_gpu

    # The simulator runs each CUDA thread as a Python thread: small launches
    # keep it fast. Every kernel loops grid-stride, so results do not depend
    # on the launch size; several blocks per slice are still exercised.
    for module in (_normalize_gpu, _selection_gpu, _stats_gpu):
        module._MIN_GRID = 1
    _normalize_gpu._THREADS, _normalize_gpu._MAX_BLOCKS = 32, 4
    _selection_gpu._THREADS, _selection_gpu._MAX_BLOCKS_PER_SLICE = 32, 4
    _stats_gpu._HIST_THREADS, _stats_gpu._MAX_BLOCKS_PER_SLICE, _stats_gpu._THREADS = 32, 3, 32
    # simulated threads wait on each other (barriers, atomics): hand the GIL over often
    sys.setswitchinterval(1e-4)
    _lock_shared_arrays()
    kind, cases = pickle.loads(Path(src).read_bytes())
    out = {name: _SIM_RUNNERS[kind](**case) for name, case in cases.items()}
    Path(dst).write_bytes(pickle.dumps(out))


def _lock_shared_arrays() -> None:
    """Make the simulator's ``cuda.shared.array`` safe for simulated threads.

    ``FakeCUDAShared.array`` looks its array up by the caller's line and creates it when missing,
    without a lock: two threads switching in between get two arrays, and a block-wide reduction over
    "shared" memory then adds up the wrong values. This is the same lookup under a lock.
    """
    import threading
    import traceback

    from numba.cuda.simulator import kernelapi

    lock, unsafe = threading.Lock(), kernelapi.FakeCUDAShared.array

    def array(self, shape, dtype, alignment=None):
        if shape == 0 or alignment is not None:  # dynamic shared memory needs no lookup; alignment is refused
            return unsafe(self, shape, dtype, alignment)
        if isinstance(dtype, kernelapi.types.Type):
            dtype = kernelapi.numpy_support.as_dtype(dtype)
        caller = tuple(traceback.extract_stack(sys._getframe(1), limit=1)[-1])[0:2]
        with lock:
            if caller not in self._allocations:
                self._allocations[caller] = np.empty(shape, dtype)
            return self._allocations[caller]

    kernelapi.FakeCUDAShared.array = array


def _sim_normalize(x: np.ndarray, mode: str, opts: dict[str, Any]) -> np.ndarray:
    from ctengine.kernels import normalize

    return normalize(x, mode, units="raw", method="cuda", **opts)


def _sim_dark(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from ctengine.kernels import select_slices

    return tuple(select_slices(x, units="raw", method="cuda"))


def _sim_area(masks: np.ndarray) -> np.ndarray:
    from ctengine.kernels import select_slices_by_lung_area

    return select_slices_by_lung_area(masks, spacing=1.0, method="cuda").counts


def _sim_stats(x: np.ndarray, mask: np.ndarray, slope: float, intercept: float) -> tuple:
    from ctengine.kernels import hu_stats
    from ctengine.kernels.stats import FLOAT_COLUMNS

    out = hu_stats(x[None] if x.ndim == 2 else x, mask[None] if mask.ndim == 2 else mask,
                   units="raw", slope=slope, intercept=intercept, method="cuda")
    return out["count"], np.stack([out[k] for k in FLOAT_COLUMNS], axis=1), out["histogram"]


def _sim_call(kernel: str, args: tuple, kwargs: dict[str, Any]) -> Any:
    import ctengine.kernels

    return getattr(ctengine.kernels, kernel)(*args, method="cuda", **kwargs)


_SIM_RUNNERS = {"normalize": _sim_normalize, "dark": _sim_dark, "area": _sim_area,
                "stats": _sim_stats, "call": _sim_call}
