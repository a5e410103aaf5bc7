"""Run every benchmark (each against its baselines, in one run) and plot the ratios: ``ctengine bench``.

Writes benchmarks/results/<name>.json, summary.json and summary.png, and the generated table in
benchmarks/RESULTS.md (a --quick run writes to ./bench-results and leaves RESULTS.md alone).
Run: python benchmarks/run_all.py [ingest kernels loader training scaling | all] [--full] [--quick] [--workdir DIR]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ctengine.bench import BENCHMARKS, run_suite, select
from ctengine.bench.full import DiskSpaceError

HERE = Path(__file__).parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"{', '.join(BENCHMARKS)} or all (default all)")
    parser.add_argument("--full", action="store_true", help="the full-scale run instead (63,849 slices)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, seconds per benchmark")
    parser.add_argument("--keep", action="store_true", help="keep the full run's TIFFs")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--results-md", type=Path, default=None)
    parser.add_argument("--scheduler", default=None, help="address of a running Dask scheduler")
    parser.add_argument("--workers", type=int, default=None, help="worker processes of the local cluster")
    args = parser.parse_args()
    if args.full and (args.names or args.quick):
        parser.error("--full runs alone: give no names and no --quick")
    try:
        names = select(args.names)
    except ValueError as exc:
        parser.error(str(exc))
    out = args.out or (Path("bench-results") if args.quick else HERE / "results")
    results_md = args.results_md or (None if args.quick else HERE / "RESULTS.md")
    try:
        run_suite(names, full=args.full, quick=args.quick, keep=args.keep, workdir=args.workdir, out_dir=out,
                  results_md=results_md, scheduler=args.scheduler, workers=args.workers)
    except DiskSpaceError as exc:
        parser.exit(1, f"error: {exc}\n")


if __name__ == "__main__":
    main()
