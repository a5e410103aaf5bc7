"""Ingest benchmark (ctengine.bench.ingest): ctengine vs a naive loop and dask-image, same input, one run.

Run: python benchmarks/bench_ingest.py [--slices 3000] [--workdir DIR] [--json OUT] [--scheduler ADDR] [--quick]
"""
from __future__ import annotations

import argparse

from ctengine.bench import add_script_options, ingest, run_script


def main() -> None:
    parser = argparse.ArgumentParser(description=ingest.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=None, help="input slices (default 3000; --quick 120)")
    add_script_options(parser)
    args = parser.parse_args()
    run_script("ingest", args, slices=args.slices)


if __name__ == "__main__":
    main()
