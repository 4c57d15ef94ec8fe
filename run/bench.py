"""Benchmarks, reported as ratios measured inside one run (these machines are noisy, absolute times are not).

    python run/bench.py <method> [options]      # python run/bench.py <method> --help

Each method's benchmark lives in ``run/benchmarks/<method>.py`` and provides ``add_arguments(parser)``
and ``main(args)``.
"""

import argparse
import importlib
import pkgutil
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent / "benchmarks"


def main() -> None:
    sys.path.insert(0, str(BENCHMARKS))
    names = sorted(m.name for m in pkgutil.iter_modules([str(BENCHMARKS)]) if not m.name.startswith("_"))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    methods = parser.add_subparsers(dest="method", required=True, metavar="{" + ",".join(names) + "}")
    for name in names:
        module = importlib.import_module(name)
        sub = methods.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0])
        module.add_arguments(sub)
        sub.set_defaults(run=module.main)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
