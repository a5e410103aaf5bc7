"""One set of cases that every kernel runs on every backend, through the public functions.

Backends: the numpy reference (the specification), Numba CPU, dask (numpy
blocks), numba.cuda under the CUDA simulator (``method="cuda"`` in a fresh
interpreter) and CuPy when a GPU is present. Every result must equal the
reference exactly, apart from hu_stats' float statistics (1e-12 relative,
as its docstring states; the kernels' own tests check which are exact).
"""
from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
import pytest

import kernel_cases as kc
import ctengine.kernels as K

#: pixel spacing (mm) of each case; the phantom is drawn as a 512-pixel slice of 0.7 mm
SPACING = {"phantom_series": (11.2, 11.2), "real_ct_slice": (1.32, 1.32)}


def _cases() -> dict[str, np.ndarray]:
    phantom = kc.ct_phantom(4, 32, seed=11)[0]             # small: the CUDA simulator runs it too
    real = kc.real_ct_raw()[None, ::2, ::2]                # pydicom's real CT slice at half size, 64 x 64
    return {
        "phantom_series": phantom,
        "real_ct_slice": real,
        "random": kc.random_raw((2, 12, 20), high=2000, seed=12),
        "flat_air": np.zeros((2, 9, 9), np.uint16),
        "one_pixel": np.full((1, 1, 1), 174, np.uint16),
    }


CASES = _cases()
KERNELS = ("lung_mask", "select_slices_by_lung_area", "hu_stats", "normalize", "select_slices")


def _call(kernel: str, case: str) -> tuple[np.ndarray, tuple, dict]:
    """(first argument, other positional arguments, keyword arguments) of a kernel on a case."""
    x, spacing = CASES[case], SPACING.get(case, (1.0, 1.0))
    if kernel == "lung_mask":
        return x, (), {"spacing": spacing}
    if kernel == "select_slices_by_lung_area":
        return K.lung_mask(x, spacing=spacing, method="reference"), (), {"spacing": spacing}
    if kernel == "hu_stats":
        return x, (kc.real_ct_mask(x),), {"spacing": spacing}
    if kernel == "normalize":
        return x, ("window",), {"window": "lung"}
    return x, (), {}


def _slices_ok(kernel: str, x: np.ndarray) -> bool:
    """select_slices needs slices of at least 6 x 3 for its scaled region."""
    return kernel != "select_slices" or min(x.shape[-2:]) >= 6


PAIRS = [(k, c) for k in KERNELS for c in CASES if _slices_ok(k, CASES[c])]


def _plain(result: Any) -> dict[str, np.ndarray]:
    """A kernel's result (array, named tuple or dict; numpy, cupy or dask) as numpy arrays by name."""
    if isinstance(result, tuple) and hasattr(result, "_fields"):
        result = result._asdict()
    if not isinstance(result, dict):
        result = {"out": result}
    out = {}
    for name, value in result.items():
        if isinstance(value, da.Array):
            value = value.compute(scheduler="synchronous")
        out[name] = value.get() if hasattr(value, "get") and not isinstance(value, np.ndarray) else np.asarray(value)
    return out


def run(kernel: str, case: str, backend: str, sim: dict | None = None) -> dict[str, np.ndarray]:
    x, args, kwargs = _call(kernel, case)
    fn = getattr(K, kernel)
    if backend == "reference":
        return _plain(fn(x, *args, method="reference", **kwargs))
    if backend == "cpu":
        return _plain(fn(x, *args, **kwargs))
    if backend == "dask":
        lazy = da.from_array(x, chunks=(1, -1, -1))
        args = tuple(da.from_array(a, chunks=(1, -1, -1)) if isinstance(a, np.ndarray) else a for a in args)
        out = fn(lazy, *args, **kwargs)
        return _plain(out)
    if backend == "cupy":
        cp = pytest.importorskip("cupy")
        try:
            cp.cuda.runtime.getDeviceCount()
        except cp.cuda.runtime.CUDARuntimeError:
            pytest.skip("no CUDA device")
        return _plain(fn(cp.asarray(x), *(cp.asarray(a) if isinstance(a, np.ndarray) else a for a in args), **kwargs))
    return _plain(sim[f"{kernel}|{case}"])


@pytest.fixture(scope="module")
def sim() -> dict:
    calls = {}
    for kernel, case in PAIRS:
        x, args, kwargs = _call(kernel, case)
        calls[f"{kernel}|{case}"] = {"kernel": kernel, "args": (x, *args), "kwargs": kwargs}
    return kc.run_cudasim("call", calls)


@pytest.mark.parametrize("backend", ["cpu", "dask", "cuda-sim", "cupy"])
@pytest.mark.parametrize("kernel, case", PAIRS)
def test_backend_equals_reference(kernel, case, backend, request):
    sim = request.getfixturevalue("sim") if backend == "cuda-sim" else None
    got, want = run(kernel, case, backend, sim), run(kernel, case, "reference")
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape, name
        if kernel == "hu_stats" and want[name].dtype.kind == "f":
            np.testing.assert_allclose(got[name], want[name], rtol=1e-12, atol=1e-9, err_msg=name)
        else:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_the_cases_reach_the_lungs():
    """The shared cases are not all trivial: the reference finds both lungs in the phantom and the real crop."""
    for case in ("phantom_series", "real_ct_slice"):
        mask = run("lung_mask", case, "reference")["out"]
        assert (mask == 1).any() and (mask == 2).any(), case
