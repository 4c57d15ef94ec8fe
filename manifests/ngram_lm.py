"""Estimate a word n-gram language model (interpolated Kneser-Ney) from text and write it as an ARPA file.

    python manifests/ngram_lm.py --text lm.txt --order 4 --out 4-gram.arpa

For machines without KenLM's ``lmplz``: the ARPA file loads in KenLM, flashlight-text and therefore
``run/decode.py --lm``. ``--text`` has one sentence a line; words are upper-cased, as in the ``.wrd``
transcripts and LibriSpeech's ``librispeech-lm-norm.txt``. The estimate is Kneser-Ney (1995) with one absolute
discount per order, ``D = n1 / (n1 + 2 n2)`` from that order's count-of-counts, interpolated with the next
lower order (Chen & Goodman 1998); orders below the highest count distinct left contexts instead of
occurrences, except n-grams that begin with ``<s>``; the unigrams are interpolated with a uniform distribution
over the vocabulary and ``<unk>``. Every seen context's distribution sums to one.
"""

import argparse
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, Iterable, List, Tuple

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
NGram = Tuple[str, ...]


def count_ngrams(sentences: Iterable[List[str]], order: int) -> List[Dict[NGram, int]]:
    """``counts[n - 1][ngram]``: occurrences for the highest order, Kneser-Ney continuation counts below it."""
    highest: Dict[NGram, int] = defaultdict(int)
    for words in sentences:
        padded = [BOS] + words + [EOS]
        for end in range(1, len(padded)):
            highest[tuple(padded[max(0, end + 1 - order):end + 1])] += 1
    counts: List[Dict[NGram, int]] = [defaultdict(int) for _ in range(order)]
    for ngram, count in highest.items():
        # an n-gram shorter than the order starts with <s>: nothing precedes it, so it keeps its occurrences
        counts[len(ngram) - 1][ngram] += count
    for n in range(order, 1, -1):
        for ngram in counts[n - 1]:
            suffix = ngram[1:]
            if suffix[0] != BOS:
                counts[n - 2][suffix] += 1
    return counts


def discount(counts: Dict[NGram, int]) -> float:
    ones = sum(1 for c in counts.values() if c == 1)
    twos = sum(1 for c in counts.values() if c == 2)
    return ones / (ones + 2 * twos) if ones and twos else 0.5


def estimate(counts: List[Dict[NGram, int]]) -> Tuple[List[Dict[NGram, float]], List[Dict[NGram, float]]]:
    """Interpolated probabilities of every seen n-gram and back-off weights of every seen context."""
    order = len(counts)
    vocabulary = {ngram[0] for ngram in counts[0]} - {BOS}
    probs: List[Dict[NGram, float]] = [{} for _ in range(order)]
    backoffs: List[Dict[NGram, float]] = [{} for _ in range(order)]

    d1 = discount(counts[0])
    total = sum(c for ngram, c in counts[0].items() if ngram[0] != BOS)
    seen_words = sum(1 for ngram in counts[0] if ngram[0] != BOS)
    uniform = d1 * seen_words / total / (len(vocabulary) + 1)  # + 1: <unk>
    for ngram, count in counts[0].items():
        if ngram[0] != BOS:
            probs[0][ngram] = (count - d1) / total + uniform
    probs[0][(UNK,)] = uniform

    for n in range(2, order + 1):
        d = discount(counts[n - 1])
        context_total: Dict[NGram, int] = defaultdict(int)
        context_types: Dict[NGram, int] = defaultdict(int)
        for ngram, count in counts[n - 1].items():
            context_total[ngram[:-1]] += count
            context_types[ngram[:-1]] += 1
        for context, types in context_types.items():
            backoffs[n - 2][context] = d * types / context_total[context]
        for ngram, count in counts[n - 1].items():
            context = ngram[:-1]
            probs[n - 1][ngram] = (count - d) / context_total[context] + backoffs[n - 2][context] * probs[n - 2][ngram[1:]]
    return probs, backoffs


def write_arpa(probs: List[Dict[NGram, float]], backoffs: List[Dict[NGram, float]], path: Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write("\\data\\\n")
        sizes = [len(p) + (1 if n == 0 else 0) for n, p in enumerate(probs)]  # + <s> among the unigrams
        for n, size in enumerate(sizes, 1):
            f.write(f"ngram {n}={size}\n")
        for n, level in enumerate(probs, 1):
            f.write(f"\n\\{n}-grams:\n")
            rows = list(level.items())
            if n == 1:
                rows.append(((BOS,), None))  # a context only: never predicted
            for ngram, prob in sorted(rows):
                logprob = -99.0 if prob is None else math.log10(prob)
                line = f"{logprob:.6f}\t{' '.join(ngram)}"
                if n < len(probs) and ngram in backoffs[n - 1]:
                    line += f"\t{math.log10(backoffs[n - 1][ngram]):.6f}"
                f.write(line + "\n")
        f.write("\n\\end\\\n")


def read_sentences(path: Path) -> List[List[str]]:
    sentences = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            words = line.upper().split()
            bad = [w for w in words if w in (BOS.upper(), EOS.upper(), UNK.upper())]
            if bad:
                sys.exit(f"{path}:{number}: {bad[0]!r} is a reserved symbol of the language model")
            if words:
                sentences.append(words)
    if not sentences:
        sys.exit(f"{path}: no sentences")
    return sentences


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text", type=Path, required=True, help="training text, one sentence a line")
    parser.add_argument("--order", type=int, default=4, help="n-gram order (LibriSpeech's official LM: 4)")
    parser.add_argument("--out", type=Path, required=True, help="ARPA file to write")
    parser.add_argument("--force", action="store_true", help="overwrite --out")
    args = parser.parse_args(argv)
    if args.order < 1:
        parser.error(f"--order must be at least 1, got {args.order}")
    if args.out.exists() and not args.force:
        parser.error(f"{args.out} exists; pass --force to overwrite it")
    if not args.text.is_file():
        sys.exit(f"--text {args.text}: no such file")
    counts = count_ngrams(read_sentences(args.text), args.order)
    probs, backoffs = estimate(counts)
    write_arpa(probs, backoffs, args.out)
    print(f"wrote a {args.order}-gram model of {len(probs[0])} words to {args.out} "
          f"({', '.join(str(len(p)) for p in probs)} n-grams)")


if __name__ == "__main__":
    main()
