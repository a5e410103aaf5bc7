"""numba.cuda lung mask: identical to the reference under the CUDA simulator; on CuPy when a GPU is there.

The simulator must be switched on before numba.cuda is first imported, so the
simulator checks run in a fresh interpreter.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

SIM_SCRIPT = textwrap.dedent("""
    import os
    import sys
    assert os.environ["NUMBA_ENABLE_CUDASIM"] == "1"
    sys.setswitchinterval(1e-4)         # simulated threads wait on each other: hand the GIL over often
    import numpy as np
    from numba import cuda
    from scipy import ndimage
    from ctengine.kernels._lung_gpu import lung_mask_cuda
    from ctengine.kernels._lung_params import LungParams, resolve
    from ctengine.kernels._lung_reference import lung_mask_reference

    def gpu(stack, p):
        out = cuda.to_device(np.full(stack.shape, 7, np.uint8))
        lung_mask_cuda(cuda.to_device(stack), p, out)
        return out.copy_to_host()

    cases = []
    rng = np.random.default_rng(7)
    for _ in range(10):
        z, h, w = int(rng.integers(1, 3)), int(rng.integers(1, 24)), int(rng.integers(1, 24))
        f = ndimage.gaussian_filter(rng.normal(size=(z, h, w)), (0, 1.5, 1.5))
        f = (f - f.min()) / (np.ptp(f) + 1e-9) * 1200 + rng.normal(0, 40, (z, h, w))
        t_low = int(rng.integers(200, 900))
        p = LungParams(t_low, int(rng.integers(0, t_low + 1)), int(rng.integers(1, 12)),
                       int(rng.integers(1, 20)), int(rng.integers(1, 12)), int(rng.integers(0, 4)),
                       int(rng.integers(0, 4)), int(rng.integers(1, 20)), int(rng.integers(0, 1300)))
        cases.append((np.clip(f, 0, 65535).astype(np.uint16), p))
    from ctengine.synth.phantom import render_series
    ph = render_series(n_slices=4, covid=True, seed=3, shape=(32, 32))
    stack = ph.raw[1:3]
    cases.append((stack, resolve(stack.shape[1:])))
    from pydicom import examples
    ds = examples.ct
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    real = np.ascontiguousarray(np.clip(hu + 1024, 0, 65535).astype(np.uint16)[::2, ::2][None])
    cases.append((real, resolve(real.shape[1:], spacing=(2 * float(ds.PixelSpacing[0]),
                                                           2 * float(ds.PixelSpacing[1])))))
    lungs = 0
    for stack, p in cases:
        ref = lung_mask_reference(stack, p)
        got = gpu(stack, p)
        assert got.dtype == np.uint8 and got.shape == stack.shape
        assert np.array_equal(got, ref), (stack.shape, p, int((got != ref).sum()))
        lungs += int((ref == 1).any()) + int((ref == 2).any())
    assert lungs >= 8, lungs            # the cases do reach the lung stages
    # a whole series, composed as lung_mask composes it for cupy: whole-series stages around the kernels
    from ctengine.kernels import lung_mask
    from ctengine.kernels._lung_params import resolve_volume
    from ctengine.kernels._lung_volume_reference import declare_air, keep_lungs
    series = ph.raw
    p, v = resolve(series.shape[1:]), resolve_volume(series.shape[1:])
    composed = keep_lungs(gpu(declare_air(series, p.t_low, p.t_air, v), p), v)
    assert (composed > 0).any() and np.array_equal(composed, lung_mask(series))
    print("identical", len(cases) + 1)
""")


def test_cuda_kernels_match_reference_in_simulator():
    pytest.importorskip("numba.cuda")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    run = subprocess.run([sys.executable, "-c", SIM_SCRIPT], env=env, cwd=root,
                         capture_output=True, text=True, timeout=1800)  # a guard against a hung simulator only
    assert run.returncode == 0, run.stdout + run.stderr
    assert "identical 13" in run.stdout


@pytest.fixture(scope="module")
def cupy():
    cp = pytest.importorskip("cupy")
    try:
        if cp.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no CUDA device")
        cp.zeros(1)
    except Exception as exc:  # CUDARuntimeError without a driver or device
        pytest.skip(f"no usable CUDA device: {exc}")
    return cp


def _phantom_stack():
    from ctengine.synth.phantom import render_series
    return render_series(n_slices=12, covid=True, seed=4, kernel="B70s").raw


def test_cupy_matches_numpy(cupy):
    from ctengine.kernels.lung import lung_mask
    stack = _phantom_stack()
    got = lung_mask(cupy.asarray(stack))
    assert isinstance(got, cupy.ndarray) and got.dtype == cupy.uint8
    np.testing.assert_array_equal(cupy.asnumpy(got), lung_mask(stack))
    np.testing.assert_array_equal(cupy.asnumpy(lung_mask(cupy.asarray(stack[5]))), lung_mask(stack[5]))


def test_cupy_real_ct_and_dask(cupy):
    da = pytest.importorskip("dask.array")
    from pydicom import examples

    from ctengine.kernels.lung import lung_mask
    ds = examples.ct
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    raw = np.clip(hu + 1024, 0, 65535).astype(np.uint16)
    spacing = (float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1]))
    np.testing.assert_array_equal(cupy.asnumpy(lung_mask(cupy.asarray(raw), spacing=spacing)),
                                  lung_mask(raw, spacing=spacing))
    stack = _phantom_stack()
    lazy = lung_mask(da.from_array(cupy.asarray(stack), chunks=(4, -1, -1), asarray=False))
    assert isinstance(lazy._meta, cupy.ndarray)
    np.testing.assert_array_equal(cupy.asnumpy(lazy.compute(scheduler="synchronous")), lung_mask(stack))
