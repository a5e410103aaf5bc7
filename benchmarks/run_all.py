"""Run every benchmark (each against its baselines, in one run) and plot the ratios.

Writes benchmarks/results/<name>.json and benchmarks/results/summary.png.
Run: python benchmarks/run_all.py [ingest kernels loader] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
BENCHES = {"ingest": "bench_ingest.py", "kernels": "bench_kernels.py", "loader": "bench_loader.py"}


def ratios(name: str, result: dict) -> dict[str, float]:
    """The headline ratios of one benchmark (ctengine / baseline)."""
    if name == "ingest":
        return {"ingest vs naive loop": result["speedup_vs_naive"],
                "ingest vs dask-image": result["speedup_vs_dask_image"],
                "ingest / ceiling": result["fraction_of_ceiling"]}
    if name == "kernels":
        k = result["kernels"]
        return {"lung mask vs scipy recipe (1 core)": k["lung_mask"]["speedup_vs_scipy_recipe_1_core"],
                "selection vs numpy (1 core)": k["select_slices"]["speedup_1_core"],
                "statistics vs numpy (1 core)": k["hu_stats"]["speedup_1_core"]}
    return {"loader vs DataLoader+tifffile": result["speedup_vs_tifffile"],
            "loader vs DataLoader+zarr": result["speedup_vs_zarr"]}


def plot(summary: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.45 * len(summary) + 1), dpi=100)
    names = list(summary)
    ax.barh(names, [summary[n] for n in names], color="#2a9d8f")
    ax.axvline(1.0, color="#444", linewidth=0.8)
    for y, name in enumerate(names):
        ax.text(summary[name], y, f" {summary[name]:.2f}x", va="center", fontsize=8)
    ax.set_xscale("log")
    ax.set_title("ctengine / baseline, same run (higher is better)", fontsize=10)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", default=list(BENCHES), choices=list(BENCHES))
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ctengine_bench_"))
    summary: dict[str, float] = {}
    for name in args.names:
        target = out / f"{name}.json"
        subprocess.run([sys.executable, str(HERE / BENCHES[name]), "--workdir", str(workdir / name),
                        "--json", str(target)], check=True)
        summary.update(ratios(name, json.loads(target.read_text())))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot(summary, out / "summary.png")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
