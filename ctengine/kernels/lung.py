"""Right and left lung masks of a raw CT series by a classical HU method.

Raw uint16 stacks (z, y, x) or slices (y, x) go in (numpy, cupy or dask), a
uint8 mask of the same shape and kind comes out: 0 background, 1 right lung
(the patient's right = image left, smaller column index), 2 left lung.

A stack is one series, superior slice first, and is segmented as a whole:

- air connected in 3-D to the outside of the body or the field of view is
  never lung: the air around the patient, the table padding and its air
  pockets, the air between the pad and the back (lungs joined to the
  outside through an open airway are recognised by their size and kept);
- the airways are found from the top of the trachea (a lumen near the body
  midline, in the neck slices too) and followed down slice by slice; they
  and their wall leave the candidates;
- each slice then gets the per-slice method below;
- 3-D components of the mask under ``min_volume_fraction`` of the largest
  (stomach and bowel gas under the diaphragm, islands) are dropped.

The per-slice method (alone for a single slice or ``per_slice=True``):

- air-like components (HU < ``low_hu``) whose median is pure air (HU <
  ``air_hu``) are not lung: the outside of the field of view and the air
  around the body, air between table layers, the trachea, bowel gas;
- pure-air blobs are carved out of the remaining candidates (a main
  bronchus touching a lung), small components dropped;
- right and left are told apart by a cut column near the body midline
  (lungs touching at the anterior or posterior junction are split there);
- each lung's holes are filled (vessels, nodules, lesions) except large
  soft-tissue holes (a liver or spleen dome), and a closing (``closing_mm``)
  on the lung's lateral side brings pleural ground glass and consolidation
  back, without soft-tissue regions.

The exact specification is in ``_lung_volume_reference`` (whole series) and
``_lung_reference`` (per slice); the Numba CPU kernels and, on CuPy arrays,
the numba.cuda per-slice kernels with the whole-series stages on CuPy give
identical masks. Size options are in mm or mm2 and converted with the pixel
spacing.
"""
from __future__ import annotations

from typing import Any, Literal

import numpy as np

from ..constants import (DEFAULT_INTERCEPT, DEFAULT_SLOPE, LUNG_AIR_HU, LUNG_AIRWAY_MAX_AREA_MM2,
                         LUNG_AIRWAY_MIN_AREA_MM2, LUNG_AIRWAY_WALL_MM, LUNG_CLOSING_MM, LUNG_LOW_HU,
                         LUNG_MIN_AREA_MM2, LUNG_MIN_VOLUME_FRACTION, LUNG_SPLIT_WINDOW_MM,
                         LUNG_TISSUE_HOLE_MM2, LUNG_TISSUE_HU, LUNG_TRACHEA_MIDLINE_MM, RAW_DTYPE)
from ._backend import map_slices_dask
from ._lung_params import LungParams, VolumeParams, resolve, resolve_volume
from ._validate import block_backend, kernel_input, spacing_or_nominal

__all__ = ["lung_mask"]


def lung_mask(x: Any, *, spacing: float | tuple[float, float] | None = None,
              units: Literal["raw", "hu"] | None = None,
              per_slice: bool = False, slope: float = DEFAULT_SLOPE, intercept: float = DEFAULT_INTERCEPT,
              low_hu: float = LUNG_LOW_HU, air_hu: float = LUNG_AIR_HU,
              min_area_mm2: float = LUNG_MIN_AREA_MM2,
              airway_min_area_mm2: float = LUNG_AIRWAY_MIN_AREA_MM2,
              closing_mm: float = LUNG_CLOSING_MM, split_window_mm: float = LUNG_SPLIT_WINDOW_MM,
              tissue_hu: float = LUNG_TISSUE_HU, tissue_hole_mm2: float = LUNG_TISSUE_HOLE_MM2,
              airway_max_area_mm2: float = LUNG_AIRWAY_MAX_AREA_MM2,
              airway_wall_mm: float = LUNG_AIRWAY_WALL_MM,
              trachea_midline_mm: float = LUNG_TRACHEA_MIDLINE_MM,
              min_volume_fraction: float = LUNG_MIN_VOLUME_FRACTION,
              method: Literal["auto", "reference", "cuda"] = "auto") -> Any:
    """Lung mask (0 background, 1 right lung, 2 left lung) of a raw CT series or slice.

    Parameters
    ----------
    x : numpy, cupy or dask array, (y, x) or (z, y, x)
        Raw stored values (uint16, HU = raw * slope + intercept) or, with
        ``units="hu"``, Hounsfield units. A stack is one contiguous series,
        superior slice first (the store's order).
    spacing : float or (float, float), optional
        Pixel spacing (sy, sx), or one value for both, in mm. None means
        unknown: the mm options then use the nominal 0.7 mm for a 512-pixel
        slice, scaled by 512 / max(y, x) (a 128 x 128 slice is taken as
        2.8 mm per pixel), and a ``SpacingUnknownWarning`` says so.
    units : {"raw", "hu"}, optional
        What x holds. Default: raw for unsigned integers; signed or float
        input must say ``units="hu"`` (converted to raw = rint(HU) + 1024,
        clipped to 0..65535, with the default slope and intercept) or
        ``units="raw"``.
    per_slice : bool
        Segment every slice on its own (for stacks that are not one
        contiguous series, such as selected slices of several series).
        Default False: a stack of two or more slices is one series.
    slope, intercept : float
        Rescale of raw to HU (default 1, -1024); slope must be > 0.
    low_hu : float
        Pixels below this HU (default -400) are air-like lung candidates.
    air_hu : float
        Pure-air HU (default -950): a component whose median is below it is
        not lung (outside, trachea, bowel gas, table).
    min_area_mm2 : float
        Smallest lung component kept, mm2 (default 100).
    airway_min_area_mm2 : float
        Smallest pure-air blob carved out of the lungs, mm2 (default 30).
    closing_mm : float
        Half size in mm of the closing rectangle that brings pleural lesions
        back (default 15).
    split_window_mm : float
        Half width in mm of the band around the body midline in which right
        and left are cut apart (default 40).
    tissue_hu, tissue_hole_mm2 : float
        A hole or a region the closing would add, of at least
        ``tissue_hole_mm2`` mm2 (default 400, a 22.6 mm disc), whose median
        is >= ``tissue_hu`` HU (default 20) is soft tissue and stays out of
        the mask; smaller ones (vessels, nodules) are lung. 800 keeps nodules
        up to about 3 cm, and lets more of the heart's and liver's edges in.
    airway_max_area_mm2 : float
        Largest airway cross-section (mm2) followed from the trachea
        (default 700); ``airway_min_area_mm2`` is the smallest trachea seed.
    airway_wall_mm : float
        Thickness (mm) of the airway wall dropped with the lumen (default 3).
    trachea_midline_mm : float
        Largest distance (mm) of the trachea's centroid from the body
        midline (default 25).
    min_volume_fraction : float
        3-D components of the mask smaller than this fraction of the largest
        one are dropped (default 0.05).
    method : {"auto", "reference", "cuda"}
        "auto": Numba CPU kernel for numpy blocks, numba.cuda for cupy
        blocks; "reference": the scipy specification (numpy blocks only);
        "cuda": numba.cuda kernels on numpy blocks too (copied to the
        device per launch; the CUDA simulator runs them on the CPU).

    Returns
    -------
    uint8 array of x's shape and kind.

    Raises
    ------
    TypeError
        x is not a numpy, cupy or dask array of uint16 (or HU with
        ``units="hu"``), or an option is not a number.
    ValueError
        x is neither 2-D nor 3-D, an option is out of range (spacing <= 0,
        slope <= 0, a negative size, air_hu > low_hu), unknown method.

    Notes
    -----
    A dask stack is segmented as one series: it is rechunked to a single
    chunk along z (the whole series must fit in a worker's memory) and the
    mask is given back in the input's z-chunks; with ``per_slice=True``
    every z-chunk is a task of its own. A lung cross-section under
    ``min_area_mm2`` (the last slice or two of a lung base) is not kept.
    Known limits of the per-slice method: a lung whose median is below
    ``air_hu`` (severe emphysema) is dropped like air; consolidation that
    fills a lung's corner against the chest wall, with no aerated lung
    beyond it along the wall, is not brought back (the closing only fills
    bites with lung on both sides); soft-tissue-dense consolidation
    (median >= ``tissue_hu``) is treated like the liver or heart; mottled
    bowel content below the diaphragm can pass for lung.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.zeros((64, 64), np.uint16)    # outside the field of view: -1024 HU
    >>> x[8:56, 4:60] = 1064                 # body, +40 HU
    >>> x[16:48, 10:28] = 174                # right lung (image left), -850 HU
    >>> x[16:48, 36:54] = 174                # left lung
    >>> m = lung_mask(x, spacing=(5.0, 5.0))
    >>> [int((m == k).sum()) for k in (0, 1, 2)]
    [2944, 576, 576]
    >>> int(m[30, 20]), int(m[30, 45])
    (1, 2)
    """
    kind, stack, was_2d, slope, intercept = _raw_input(x, units, slope, intercept, method)
    spacing = spacing_or_nominal(spacing, tuple(stack.shape[1:]))
    series = not per_slice and stack.shape[0] > 1
    volume = resolve_volume(tuple(stack.shape[1:]), spacing=spacing,
                            airway_min_area_mm2=airway_min_area_mm2,
                            airway_max_area_mm2=airway_max_area_mm2, airway_wall_mm=airway_wall_mm,
                            trachea_midline_mm=trachea_midline_mm,
                            min_volume_fraction=min_volume_fraction)
    params = resolve(tuple(stack.shape[1:]), spacing=spacing, slope=slope, intercept=intercept,
                     low_hu=low_hu, air_hu=air_hu, min_area_mm2=min_area_mm2,
                     airway_min_area_mm2=airway_min_area_mm2, closing_mm=closing_mm,
                     split_window_mm=split_window_mm, tissue_hu=tissue_hu,
                     tissue_hole_mm2=tissue_hole_mm2)
    if kind == "dask":
        zchunks = stack.chunks[0]
        out = map_slices_dask(_run_block, stack.rechunk({0: -1}) if series else stack, params=params,
                              volume=volume, series=series, method=method, dtype=np.uint8)
        out = out.rechunk({0: zchunks}) if series else out
    else:
        out = _run_block(stack, params=params, volume=volume, series=series, method=method)
    return out[0] if was_2d else out


def _raw_input(x: Any, units: Any, slope: Any, intercept: Any, method: Any) -> tuple:
    """(kind, raw uint16 stack, was_2d, slope, intercept) of a validated input."""
    inp = kernel_input(x, units=units, slope=slope, intercept=intercept, method=method, raw_dtypes="u")
    if inp.stack.dtype != RAW_DTYPE:
        raise TypeError(f"x must hold raw uint16 values (HU + 1024 for COVID-CTset), got dtype {x.dtype}")
    return inp.kind, inp.stack, inp.was_2d, inp.slope, inp.intercept


def _run_block(stack: Any, *, params: LungParams, volume: VolumeParams, series: bool,
               method: str) -> Any:
    """Lung masks of one (z, y, x) numpy or cupy block (one series when ``series``)."""
    backend, xp = block_backend(stack, method)
    if backend == "cuda":
        from . import _lung_volume_reference as whole

        def per_slice(s: Any, p: LungParams) -> Any:
            return _run_cuda(s, p, xp)
    elif backend == "reference":
        from . import _lung_volume_reference as whole
        from ._lung_reference import lung_mask_reference as per_slice
    else:
        from . import _lung_volume_cpu as whole
        per_slice = _run_numba
    if not series or stack.shape[0] < 2:
        return per_slice(stack, params)
    cleaned = whole.declare_air(stack, params.t_low, params.t_air, volume)
    return whole.keep_lungs(per_slice(cleaned, params), volume)


def _run_numba(stack: np.ndarray, params: LungParams) -> np.ndarray:
    """Numba CPU per-slice masks of a numpy stack, slices in parallel."""
    from ._lung_cpu import lung_mask_stack
    out = np.empty(stack.shape, dtype=np.uint8)
    if out.size:
        lung_mask_stack(np.ascontiguousarray(stack), out, *(int(v) for v in params))
    return out


def _run_cuda(stack: Any, params: LungParams, xp: Any) -> Any:
    """numba.cuda kernels on a cupy stack (on cupy's current stream) or a numpy one, a few million
    pixels per call."""
    from numba import cuda
    from ._lung_gpu import MAX_PIXELS, lung_mask_cuda
    stack = xp.ascontiguousarray(stack)
    out = xp.empty(stack.shape, dtype=xp.uint8)
    if out.size == 0:
        return out
    stream = 0
    if xp is not np:
        ptr = xp.cuda.get_current_stream().ptr
        stream = cuda.external_stream(ptr) if ptr else 0
    step = max(1, MAX_PIXELS // (stack.shape[1] * stack.shape[2]))
    for a in range(0, stack.shape[0], step):
        lung_mask_cuda(stack[a:a + step], params, out[a:a + step], stream=stream)
    return out
