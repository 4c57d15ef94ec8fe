"""Writes one fairseq audio manifest holding the clips of several, e.g. speech and music for general-audio pretraining.

    python manifests/combine.py demo/manifests/pretrain.tsv music/pretrain.tsv --out mix/pretrain.tsv

The manifests may have different audio roots: the combined one is rooted at their common folder, every row
pointing at the same file as before. Only the ``.tsv`` is written (pretraining reads no labels).
"""

import argparse
import os
from pathlib import Path

from _shared import manifests, run_tool


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", type=Path, nargs="+", help="fairseq manifests (.tsv)")
    parser.add_argument("--out", type=Path, required=True, help="the combined manifest (.tsv)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --out")
    args = parser.parse_args(argv)

    manifests.refuse_overwrite([args.out], args.force)
    files = [file for tsv in args.inputs for file in manifests.audio_files(tsv)]
    root = Path(os.path.commonpath([path.resolve().parent for path, _ in files]))
    rows = "".join(f"{path.resolve().relative_to(root)}\t{samples}\n" for path, samples in files)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(f"{root}\n{rows}", encoding="utf-8")
    print(f"{args.out}: {len(files)} clips from {len(args.inputs)} manifests, rooted at {root}")
    return args.out


if __name__ == "__main__":
    run_tool(main)
