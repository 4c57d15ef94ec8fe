"""Turns demo-corpus manifests into a speaker-voice classification task for run/linear_eval.py.

    python examples/m2d/demo_labels.py --manifests demo/manifests --out demo/voices [--label voice]

The demo corpus (manifests/demo_corpus.py) files every utterance under its speaker, an espeak-ng voice and
variant pair. This copies ``<split>.tsv`` of each split into ``--out`` and writes ``<split>.label`` next to
it: the utterance's voice (accent: en-us, en-gb, ...), its variant (m1, f2, ...) or the speaker (both).
"""

import argparse
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "manifests"))
from demo_corpus import VARIANTS, VOICES  # noqa: E402

FIRST_SPEAKER = 100  # demo_corpus numbers speaker i of VOICES x VARIANTS as 100 + i


def label_of(relative_path: str, kind: str, where: str) -> str:
    parts = Path(relative_path).parts
    speaker = int(parts[-3]) - FIRST_SPEAKER if len(parts) >= 3 and parts[-3].isdigit() else -1
    if not 0 <= speaker < len(VOICES) * len(VARIANTS):
        raise ValueError(f"{where}: {relative_path!r} is not under a demo-corpus speaker directory")
    voice, variant = VOICES[speaker // len(VARIANTS)], VARIANTS[speaker % len(VARIANTS)]
    return {"voice": voice, "variant": variant, "speaker": f"{voice}+{variant}"}[kind]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifests", type=Path, required=True, help="demo-corpus manifest directory")
    parser.add_argument("--out", type=Path, required=True, help="where the labeled manifests go")
    parser.add_argument("--splits", nargs="+", default=["train_1h", "dev", "test"])
    parser.add_argument("--label", choices=["voice", "variant", "speaker"], default="voice")
    parser.add_argument("--force", action="store_true", help="overwrite existing files in --out")
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    for split in args.splits:
        source, tsv, label_file = args.manifests / f"{split}.tsv", args.out / f"{split}.tsv", args.out / f"{split}.label"
        existing = [p for p in (tsv, label_file) if p.exists()]
        if existing and not args.force:
            parser.error(f"{existing[0]} exists; pass --force to overwrite it")
        lines = source.read_text(encoding="utf-8").splitlines()
        labels = [label_of(line.split("\t")[0], args.label, f"{source}:{number}")
                  for number, line in enumerate(lines[1:], 2)]
        shutil.copyfile(source, tsv)
        label_file.write_text("".join(f"{label}\n" for label in labels), encoding="utf-8")
        print(f"{label_file}: {len(labels)} labels, {len(set(labels))} classes")


if __name__ == "__main__":
    main()
