#!/usr/bin/env python
"""Captions for the spoken demo corpus, for M2D-CLAP on CPU (the official code has no speech-caption set-up).

    python examples/m2d_clap/demo_captions.py --manifests demo/manifests --splits pretrain,dev
    python examples/m2d_clap/demo_captions.py --manifests demo/keywords --splits train,valid,test

Writes ``<split>.cap`` beside each ``<split>.tsv``: from a ``.wrd`` transcript, the captions
``a voice says "<words>"`` and ``someone says "<words>"``; from a keyword task's ``.label``
(``examples/m2d/demo_tasks.py keywords``), ``someone says the word <w>`` and ``<w> can be heard``.
"""

import argparse
import sys
from pathlib import Path

TRANSCRIPT_TEMPLATES = ('a voice says "{}"', 'someone says "{}"')
KEYWORD_TEMPLATES = ("someone says the word {}", "{} can be heard")
SEPARATOR = " ||| "  # maskssl_fairseq.data.captions.CAPTION_SEPARATOR


def caption_lines(manifests: Path, split: str) -> list:
    transcripts, labels = manifests / f"{split}.wrd", manifests / f"{split}.label"
    if transcripts.is_file():
        texts, templates = [line.lower() for line in transcripts.read_text(encoding="utf-8").splitlines()], TRANSCRIPT_TEMPLATES
    elif labels.is_file():
        texts, templates = labels.read_text(encoding="utf-8").splitlines(), KEYWORD_TEMPLATES
    else:
        raise FileNotFoundError(f"{manifests / split}: neither .wrd nor .label to caption")
    return [SEPARATOR.join(template.format(text.strip()) for template in templates) for text in texts]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifests", type=Path, required=True)
    parser.add_argument("--splits", default="pretrain,dev", help="comma-separated manifest names")
    parser.add_argument("--force", action="store_true", help="overwrite existing .cap files")
    args = parser.parse_args(argv)
    for split in args.splits.split(","):
        out = args.manifests / f"{split}.cap"
        if out.exists() and not args.force:
            sys.exit(f"{out} exists (--force overwrites it)")
        lines = caption_lines(args.manifests, split)
        out.write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"{out}: {len(lines)} clips")


if __name__ == "__main__":
    main()
