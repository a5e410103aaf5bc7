"""Kernel benchmark (ctengine.bench.kernels): Numba kernels vs numpy/scipy references, and the feature pass.

Run: python benchmarks/bench_kernels.py [--slices 400] [--store-slices 5000] [--workdir DIR] [--json OUT]
     [--scheduler ADDR] [--quick]
"""
from __future__ import annotations

import argparse

from ctengine.bench import add_script_options, kernels, run_script


def main() -> None:
    parser = argparse.ArgumentParser(description=kernels.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=None, help="phantom slices (default 400; --quick 20)")
    parser.add_argument("--store-slices", type=int, default=None,
                        help="slices of the feature-pass store (default 5000; --quick 150)")
    add_script_options(parser)
    args = parser.parse_args()
    run_script("kernels", args, slices=args.slices, store_slices=args.store_slices)


if __name__ == "__main__":
    main()
