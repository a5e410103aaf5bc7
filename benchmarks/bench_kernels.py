"""Kernel benchmark: ctengine's Numba kernels vs the numpy/scipy references, one run, same slices.

Per kernel, on synthetic CT phantoms (512 x 512, raw uint16): slices/s on one
core (numba.set_num_threads(1)) and on every core, and the ratio to the
reference. The lung mask is also compared with the common scipy recipe
(threshold, label, drop border-connected parts, fill holes). Then the whole
feature pass (read, selection, lung mask, statistics, write masks) over a
store on a LocalCluster, extrapolated to the 63,849 slices of COVID-CTset.

Run: python benchmarks/bench_kernels.py [--slices 400] [--store-slices 5000] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numba
import numpy as np
from scipy import ndimage

FULL_DATASET = 63_849


def phantoms(n: int) -> tuple[np.ndarray, np.ndarray]:
    from ctengine.synth.phantom import render_series

    stacks, masks = [], []
    seed = 0
    while sum(len(s) for s in stacks) < n:
        p = render_series(n_slices=50, covid=seed % 2 == 0, seed=seed, thickness_mm=5.0, kernel="B70s")
        stacks.append(p.raw)
        masks.append(p.lung)
        seed += 1
    return np.concatenate(stacks)[:n], np.concatenate(masks)[:n]


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
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        best = min(best, time.perf_counter() - start)
    return n / best


def kernels(n: int) -> dict:
    from ctengine.kernels import hu_stats, lung_mask, normalize, select_slices

    raw, truth = phantoms(n)
    spacing = (0.7, 0.7)
    mask = lung_mask(raw, spacing=spacing)  # compile before timing
    select_slices(raw), hu_stats(raw, mask, spacing=spacing), normalize(raw, "window", window="lung")
    cases = {
        "select_slices": (lambda: select_slices(raw), lambda: select_slices(raw, method="reference")),
        "lung_mask": (lambda: lung_mask(raw, spacing=spacing),
                      lambda: lung_mask(raw[: max(20, n // 10)], spacing=spacing, method="reference")),
        "hu_stats": (lambda: hu_stats(raw, mask, spacing=spacing),
                     lambda: hu_stats(raw[: max(20, n // 10)], mask[: max(20, n // 10)], spacing=spacing,
                                      method="reference")),
        "normalize_window": (lambda: normalize(raw, "window", window="lung"),
                             lambda: normalize(raw, "window", window="lung", method="reference")),
        "normalize_max": (lambda: normalize(raw, "max"), lambda: normalize(raw, "max", method="reference")),
    }
    slow_n = {"lung_mask": max(20, n // 10), "hu_stats": max(20, n // 10)}
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
    sub = raw[: max(20, n // 10)]
    result["lung_mask"]["scipy_recipe_slices_per_s"] = rate(lambda: scipy_recipe(sub), len(sub), repeat=1)
    result["lung_mask"]["speedup_vs_scipy_recipe_1_core"] = (result["lung_mask"]["slices_per_s_1_core"]
                                                             / result["lung_mask"]["scipy_recipe_slices_per_s"])
    numba.set_num_threads(threads)
    both = (mask > 0) & (truth > 0)
    result["lung_mask"]["dice_vs_truth_all_slices"] = float(2 * both.sum() / ((mask > 0).sum() + (truth > 0).sum()))
    return result


def feature_pass(store_slices: int, workdir: Path) -> dict:
    import ctengine
    from ctengine.cluster import dask_client, default_workers
    from ctengine.features import compute_features, features_path
    from ctengine.synth import write_cohort

    src, store = workdir / "src", workdir / "store.zarr"
    if not store.exists():
        write_cohort(src, patients=max(1, round(store_slices / 150)), slices_per_series=50, seed=7, progress=False)
        with dask_client() as client:
            ctengine.ingest([src], store, client=client, progress=False)
    shutil.rmtree(features_path(str(store)), ignore_errors=True)
    root = __import__("zarr").open_group(store, mode="a")
    for patient, series in ctengine.open_store(store).series_keys():
        if "labels" in root[f"{patient}/{series}"]:
            del root[f"{patient}/{series}/labels"]
    workers = default_workers()
    with dask_client(workers=workers) as client:
        client.run(lambda: __import__("ctengine.kernels"))  # import and load cached kernels first
        report = compute_features(store, client=client, progress=False)
    per_s = report.slices_computed / report.seconds
    return {"slices": report.slices_computed, "workers": workers, "seconds": report.seconds, "slices_per_s": per_s,
            "full_dataset_seconds_extrapolated": FULL_DATASET / per_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=400)
    parser.add_argument("--store-slices", type=int, default=5000)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_kernels_"))
    workdir.mkdir(parents=True, exist_ok=True)
    result = {"machine": platform.node(), "date": time.strftime("%Y-%m-%d"), "kernels": kernels(args.slices),
              "feature_pass": feature_pass(args.store_slices, workdir)}
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
