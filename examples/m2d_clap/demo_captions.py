#!/usr/bin/env python
"""Captions for the spoken demo corpus, for M2D-CLAP on CPU (the official code has no speech-caption set-up).

    python examples/m2d_clap/demo_captions.py --manifests demo/manifests --splits pretrain,dev
    python examples/m2d_clap/demo_captions.py --manifests demo/keywords --splits train,valid,test
    python examples/m2d_clap/demo_captions.py --combine demo/clap/pretrain.tsv demo/manifests/pretrain.tsv \
        demo/keywords/train.tsv

Writes ``<split>.cap`` beside each ``<split>.tsv``: from a ``.wrd`` transcript, the captions
``a voice says "<words>"`` and ``someone says "<words>"``; from a keyword task's ``.label``
(``examples/m2d/demo_tasks.py keywords``), ``someone says the word <w>`` and ``<w> can be heard``.
``--combine OUT.tsv SOURCE.tsv...`` writes one manifest of all the sources' clips (audio root ``/``,
absolute paths) and its ``.cap``, from the sources' ``.cap`` files.
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


def combine(out: Path, sources: list) -> None:
    rows, captions = [], []
    for source in sources:
        lines = source.read_text(encoding="utf-8").splitlines()
        root = Path(lines[0].strip()).resolve()
        source_captions = source.with_suffix(".cap").read_text(encoding="utf-8").splitlines()
        if len(source_captions) != len(lines) - 1:
            raise ValueError(f"{source.with_suffix('.cap')}: {len(source_captions)} lines for {len(lines) - 1} clips")
        for line in lines[1:]:
            relative, samples = line.split("\t")
            rows.append(f"{root / relative}\t{samples}")
        captions += source_captions
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("/\n" + "\n".join(rows) + "\n", encoding="utf-8")
    out.with_suffix(".cap").write_text("\n".join(captions) + "\n", encoding="utf-8")
    print(f"{out}: {len(rows)} clips from {len(sources)} manifests")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifests", type=Path, help="directory of the manifests to caption")
    parser.add_argument("--splits", default="pretrain,dev", help="comma-separated manifest names")
    parser.add_argument("--combine", type=Path, nargs="+", metavar=("OUT.tsv", "SOURCE.tsv"),
                        help="write OUT.tsv and OUT.cap from captioned SOURCE manifests")
    parser.add_argument("--force", action="store_true", help="overwrite existing files")
    args = parser.parse_args(argv)
    if args.combine:
        out, sources = args.combine[0], args.combine[1:]
        if not sources:
            parser.error("--combine needs OUT.tsv and at least one SOURCE.tsv")
        if out.exists() and not args.force:
            sys.exit(f"{out} exists (--force overwrites it)")
        combine(out, sources)
        return
    if not args.manifests:
        parser.error("give --manifests (or --combine)")
    for split in args.splits.split(","):
        out = args.manifests / f"{split}.cap"
        if out.exists() and not args.force:
            sys.exit(f"{out} exists (--force overwrites it)")
        lines = caption_lines(args.manifests, split)
        out.write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"{out}: {len(lines)} clips")


if __name__ == "__main__":
    main()
