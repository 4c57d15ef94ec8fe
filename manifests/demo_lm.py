"""The demo corpus's language-model resources, as LibriSpeech ships them: LM text, a lexicon and a 4-gram model.

    python manifests/demo_lm.py --corpus demo [--sentences 50000] [--force]

writes ``<corpus>/lm/lm.txt`` (sentences of the demo grammar that are never a dev or test sentence, as
``librispeech-lm-norm.txt`` leaves out the books of dev and test), ``<corpus>/lm/lexicon.txt`` (the letter
lexicon of its words, ``manifests/lexicon.py``) and ``<corpus>/lm/4-gram.arpa`` (``manifests/ngram_lm.py``),
for ``run/decode.py --lexicon ... --lm ...`` (``run/quickstart.sh`` and ``demo_low_resource.sh`` run it).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lexicon  # noqa: E402
import ngram_lm  # noqa: E402
from demo_text import SentenceGenerator  # noqa: E402

LM_SEED_OFFSET = 7_000_001  # the LM text's sentences are drawn apart from every split's


def write_demo_lm(corpus: Path, seed: int, sentences: int) -> Path:
    """Writes ``<corpus>/lm/`` from the corpus's dev and test transcripts; returns that directory."""
    manifests = corpus / "manifests"
    evaluation = set()
    for split in ("dev", "test"):
        wrd = manifests / f"{split}.wrd"
        if not wrd.is_file():
            sys.exit(f"{wrd}: no such file (run manifests/demo_corpus.py --out {corpus} first)")
        evaluation.update(" ".join(line.split()) for line in wrd.read_text(encoding="utf-8").splitlines())
    generator = SentenceGenerator(seed + LM_SEED_OFFSET)
    lines = []
    while len(lines) < sentences:
        text = generator.sentence().upper()
        if text not in evaluation:
            lines.append(text)
    out = corpus / "lm"
    out.mkdir(exist_ok=True)
    (out / "lm.txt").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    lexicon.main(["--words", str(out / "lm.txt"), "--out", str(out / "lexicon.txt"), "--force"])
    ngram_lm.main(["--text", str(out / "lm.txt"), "--order", "4", "--out", str(out / "4-gram.arpa"), "--force"])
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, required=True, help="a demo_corpus.py --out directory")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sentences", type=int, default=50000, help="LM text size")
    parser.add_argument("--force", action="store_true", help="replace an existing <corpus>/lm")
    args = parser.parse_args(argv)
    if (args.corpus / "lm").exists() and not args.force:
        parser.error(f"{args.corpus / 'lm'} exists; pass --force to replace it")
    out = write_demo_lm(args.corpus, args.seed, args.sentences)
    print(f"[demo_lm] LM text, lexicon and 4-gram model in {out}")


if __name__ == "__main__":
    main()
