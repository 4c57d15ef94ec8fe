"""Write a letter lexicon for lexicon-constrained CTC beam search (``run/decode.py --lexicon``).

    python manifests/lexicon.py --words demo/manifests/train_1h.wrd demo/manifests/pretrain.wrd --out lexicon.txt

Each line is ``WORD<TAB>W O R D |``, the spelling in the letter units of ``dict.ltr.txt`` (the format of
the LibriSpeech letter lexicon used with fairseq and flashlight). ``--words`` takes ``.wrd`` transcripts or
plain word lists; for a KenLM model, pass the words of its vocabulary.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _shared import manifests  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--words", type=Path, nargs="+", required=True, help="files of words, any number a line")
    parser.add_argument("--out", type=Path, required=True, help="lexicon file to write")
    parser.add_argument("--force", action="store_true", help="overwrite --out")
    args = parser.parse_args(argv)
    if args.out.exists() and not args.force:
        parser.error(f"{args.out} exists; pass --force to overwrite it")
    words = sorted({word.upper() for path in args.words for word in path.read_text(encoding="utf-8").split()})
    args.out.write_text("".join(f"{word}\t{manifests.letters(word)}\n" for word in words), encoding="utf-8")
    print(f"wrote {len(words)} words to {args.out}")


if __name__ == "__main__":
    main()
