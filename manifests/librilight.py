"""Writes fairseq manifests for LibriLight's limited-resource splits: train_10m, train_1h and train_10h.

    python manifests/librilight.py --root /data/librispeech_finetuning --out manifests/ll

The root holds ``1h/{0..5}/{clean,other}/<speaker>/<chapter>/`` and ``9h/{clean,other}/...`` in the LibriSpeech
layout. train_10m is fold 0 of 1h, train_1h all six folds, train_10h is 1h plus 9h. The tsv root is ``--root``.
"""

import argparse
from pathlib import Path

from _shared import manifests, run_tool

SPLITS = {
    "train_10m": ("1h/0",),
    "train_1h": tuple(f"1h/{fold}" for fold in range(6)),
    "train_10h": tuple(f"1h/{fold}" for fold in range(6)) + ("9h",),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="the librispeech_finetuning directory")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--force", action="store_true", help="overwrite existing manifests")
    return parser.parse_args(argv)


def main(argv=None) -> list[Path]:
    """Runs the tool (also from Python, with ``manifests/`` on ``sys.path``); raises ``ManifestError`` on bad input."""
    args = parse_args(argv)
    requests = [dict(name=name, root=args.root, subdirs=subdirs) for name, subdirs in SPLITS.items()]
    written = manifests.write_split_manifests(args.out, requests, args.force)
    return written


if __name__ == "__main__":
    run_tool(main)
