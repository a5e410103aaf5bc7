"""Loader benchmark (ctengine.bench.loader): SliceLoader vs torch DataLoaders on TIFFs and on the store.

Run: python benchmarks/bench_loader.py [--slices 1500] [--workers 2] [--batch 16] [--workdir DIR] [--json OUT]
     [--scheduler ADDR] [--quick]
"""
from __future__ import annotations

import argparse

from ctengine.bench import add_script_options, loader, run_script


def main() -> None:
    parser = argparse.ArgumentParser(description=loader.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=None, help="stored slices (default 1500; --quick 120)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    add_script_options(parser)
    args = parser.parse_args()
    run_script("loader", args, workers=args.workers, slices=args.slices, batch=args.batch)


if __name__ == "__main__":
    main()
