"""Writes fairseq manifests (tsv, wrd, ltr, dict.ltr.txt) for LibriSpeech-layout splits.

    python manifests/librispeech.py --root /data/LibriSpeech --splits train-clean-100,dev-clean --out manifests/ls

Each split folder holds ``<speaker>/<chapter>/*.flac`` and ``<speaker>-<chapter>.trans.txt``. Any split name
works, and ``NAME=A+B+C`` writes one manifest NAME of the folders A, B and C (rooted at --root), e.g.
``train-960=train-clean-100+train-clean-360+train-other-500``. ``dict.ltr.txt`` is built from all the labeled
splits of one call, so list every split in one call.
"""

import argparse
from pathlib import Path

from _shared import manifests, run_tool


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="the directory holding the split folders")
    parser.add_argument(
        "--splits", required=True, help="comma-separated split folders (dev-clean,test-other) or NAME=A+B+C"
    )
    parser.add_argument("--unlabeled", default="", help="comma-separated splits to write as tsv only (no transcripts)")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--force", action="store_true", help="overwrite existing manifests")
    return parser.parse_args(argv)


def split_request(spec: str, root: Path, labeled: bool) -> dict:
    """``read_split`` arguments for ``NAME`` (the folder ``root/NAME``) or ``NAME=A+B`` (folders A and B of root)."""
    name, _, folders = spec.partition("=")
    if folders:
        return {"name": name, "root": root, "subdirs": tuple(folders.split("+")), "labeled": labeled}
    return {"name": name, "root": root / name, "labeled": labeled}


def main(argv=None) -> list[Path]:
    """Runs the tool (also from Python, with ``manifests/`` on ``sys.path``); raises ``ManifestError`` on bad input."""
    args = parse_args(argv)
    specs = {spec.partition("=")[0]: spec for spec in args.splits.split(",") if spec}
    unlabeled = [name for name in args.unlabeled.split(",") if name]
    if unknown := sorted(set(unlabeled) - set(specs)):
        raise manifests.ManifestError(f"--unlabeled names splits that --splits lacks: {','.join(unknown)}")
    requests = [split_request(spec, args.root, name not in unlabeled) for name, spec in specs.items()]
    written = manifests.write_split_manifests(args.out, requests, args.force)
    return written


if __name__ == "__main__":
    run_tool(main)
