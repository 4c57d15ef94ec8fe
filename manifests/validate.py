"""Checks a fairseq audio manifest, its audio files and (with --labels) its label file and dictionary.

    python manifests/validate.py manifests/ls/dev-clean.tsv --labels ltr

Prints every problem as ``<file>:<line>: <what is wrong>`` on stderr and exits 1, or prints a one-line summary.
"""

import argparse
import sys
from pathlib import Path

from _shared import manifests


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tsv", type=Path, help="the manifest, <name>.tsv")
    parser.add_argument("--labels", help="label file extension to check as well, e.g. ltr for <name>.ltr")
    parser.add_argument(
        "--dict", type=Path, help="dictionary of the labels (default: dict.<labels>.txt next to the tsv)"
    )
    parser.add_argument("--sample-rate", type=int, default=16000, help="expected sample rate in Hz (default 16000)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.tsv.is_file():
        print(f"{args.tsv}: no such file", file=sys.stderr)
        return 1
    problems, summary = manifests.validate_manifest(args.tsv, args.labels, args.dict, args.sample_rate)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"{args.tsv}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
