"""numba.cuda lung mask on device arrays: the reference algorithm as a sequence of simple kernels.

Works on anything numba.cuda accepts as a device array (CuPy arrays through
``__cuda_array_interface__``) and, with ``NUMBA_ENABLE_CUDASIM=1``, on numpy
arrays in the CUDA simulator. Connected components are union-find kernels
(see ``_lung_gpu_kernels``); the per-slice decisions (cut column) run one
thread per slice. Scratch memory is about 80 bytes per pixel: callers give
it stacks of a few dozen 512 x 512 slices at a time.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import config, cuda

from . import _lung_gpu_closing as C
from . import _lung_gpu_kernels as K
from ._lung_params import LungParams

_THREADS = 256
_MAX_BLOCKS = 65535
#: pixels per call that keep the scratch memory near 1.3 GiB
MAX_PIXELS = 1 << 24


def _config(count: int) -> tuple[int, int]:
    """(blocks, threads) of a grid-stride launch over ``count`` items."""
    if config.ENABLE_CUDASIM:
        # simulated threads are Python threads: with more than two, the atomic-min unions of the
        # connected-component kernels slow down by orders of magnitude (3 s for 6,912 pixels on two
        # threads, over 100 s on four); two still interleave the atomics
        return 1, 2
    return max(1, min(_MAX_BLOCKS, math.ceil(count / _THREADS))), _THREADS


def lung_mask_cuda(stack: Any, p: LungParams, out: Any, stream: Any = 0) -> Any:
    """Lung masks (0/1/2) of a raw (z, h, w) uint16 device stack into ``out`` (z, h, w) uint8."""
    nz, h, w = stack.shape
    n = nz * h * w
    if n == 0:
        return out
    if n >= 2**31:
        raise ValueError(f"at most 2**31 - 1 pixels per call, got {n}")

    def run(kernel: Any, count: int, *args: Any) -> None:
        blocks, threads = _config(count)
        kernel[blocks, threads, stream](*args)

    def arr(dtype: Any, size: Any = n) -> Any:
        return cuda.device_array(size, dtype, stream=stream)

    def zeros(dtype: Any, size: Any) -> Any:
        return cuda.to_device(np.zeros(size, dtype), stream=stream)

    lab_a, lab_b, lab_c, lab_d = (arr(np.int32) for _ in range(4))
    s = [arr(np.int32) for _ in range(6)]  # low/air statistics, then background statistics
    t = [arr(np.int32) for _ in range(6)]  # statistics of the closing's additions
    area_c, left_c, sum_c = arr(np.int32), arr(np.int32), arr(np.int64)
    state, carve, lung, fb = arr(np.uint8), arr(np.uint8), arr(np.uint8), arr(np.uint8)
    prof = arr(np.int64, (nz, w))
    nb, sb = zeros(np.int64, nz), zeros(np.int64, nz)
    cut, deep = arr(np.int32, nz), arr(np.int32, nz)
    lim1, lim2 = arr(np.int32, nz * h), arr(np.int32, nz * h)
    padded = (nz, h + 2 * p.ry, w + 2 * p.rx)
    pad_a, pad_b = arr(np.uint8, padded), arr(np.uint8, padded)
    npad = padded[0] * padded[1] * padded[2]

    # low and pure-air components; outside, air blobs, candidates
    run(K.classify, n, stack, p.t_low, p.t_air, lab_a, lab_b, *s)
    run(K.merge2, n, lab_a, lab_b, h, w)
    run(K.flatten2, n, lab_a, lab_b, stack, p.t_air, *s)
    run(K.outside_blobs, n, lab_a, lab_b, s[0], s[1], s[2], s[3], p.airway_px, state)
    run(K.candidates, n, state, h, w, carve, lab_c, area_c, sum_c, left_c)
    run(K.merge1, n, lab_c, h, w)
    run(K.flatten_cand, n, lab_c, w, area_c, sum_c)
    # midline, cut column, right/left assignment
    run(K.columns, nz * w, state, lab_c, area_c, p.lung_px, h, w, prof, nb, sb)
    run(K.cut_columns, nz, prof, nb, sb, p.split_px, cut, deep)
    run(K.left_counts, n, lab_c, area_c, p.lung_px, cut, h, w, left_c)
    run(K.assign, n, lab_c, area_c, sum_c, left_c, p.lung_px, cut, deep, h, w, lung, lab_a, lab_b,
        *s)
    # F_k, H_k: holes of each lung
    run(K.merge2, n, lab_a, lab_b, h, w)
    run(K.flatten2, n, lab_a, lab_b, stack, p.t_soft, *s)
    run(K.fill, n, lung, lab_a, lab_b, *s, p.hole_px, fb)
    run(C.lateral_limits, nz * h, fb, h, w, lim1, lim2)
    # closing of F_k in the padded frame
    run(C.dilate_x, npad, fb, h, w, p.ry, p.rx, pad_a)
    run(C.dilate_y, npad, pad_a, p.ry, pad_b)
    run(C.erode_y, npad, pad_b, p.ry, pad_a)
    run(C.erode_x, npad, pad_a, p.rx, pad_b)
    # additions of the closing, minus tissue components; G_k and its holes
    run(K.additions, n, fb, pad_b, lim1, lim2, h, w, p.ry, p.rx, lab_c, lab_d, *t)
    run(K.merge2, n, lab_c, lab_d, h, w)
    run(K.flatten2, n, lab_c, lab_d, stack, p.t_soft, *t)
    run(K.grow, n, fb, lab_c, lab_d, t[0], t[1], t[3], t[4], p.hole_px, lab_a, lab_b, *s)
    run(K.merge2, n, lab_a, lab_b, h, w)
    run(K.flatten2, n, lab_a, lab_b, stack, p.t_soft, *s)
    run(K.final, n, fb, carve, lab_a, lab_b, *s, p.hole_px, h, w, out)
    return out
