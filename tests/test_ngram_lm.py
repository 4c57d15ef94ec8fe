"""The Kneser-Ney ARPA writer (manifests/ngram_lm.py) and the demo corpus's LM resources (manifests/demo_lm.py)."""

import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO

sys.path.insert(0, str(REPO / "manifests"))
from demo_text import SentenceGenerator  # noqa: E402

TINY = ["the cat sat", "the dog sat", "a cat ran", "the cat ran away"]


def build(tmp_path: Path, sentences, order: int) -> Path:
    text, arpa = tmp_path / "lm.txt", tmp_path / "lm.arpa"
    text.write_text("".join(s + "\n" for s in sentences))
    subprocess.run([sys.executable, REPO / "manifests" / "ngram_lm.py", "--text", text, "--order", str(order),
                    "--out", arpa], check=True, capture_output=True)
    return arpa


def read_arpa(path: Path):
    """{ngram: (log10 prob, log10 back-off)} and the declared counts."""
    entries, declared, order = {}, {}, None
    for line in path.read_text().splitlines():
        if line.startswith("ngram "):
            n, count = line[6:].split("=")
            declared[int(n)] = int(count)
        elif line.endswith("-grams:"):
            order = int(line[1])
        elif line and order and not line.startswith("\\"):
            fields = line.split("\t")
            words = tuple(fields[1].split())
            assert len(words) == order, line
            entries[words] = (float(fields[0]), float(fields[2]) if len(fields) > 2 else 0.0)
    return entries, declared


def probability(entries, context, word) -> float:
    """ARPA back-off: the longest stored n-gram, times the back-off weights of the contexts skipped."""
    log10 = 0.0
    while (context + (word,)) not in entries:
        log10 += entries.get(context, (0.0, 0.0))[1]
        context = context[1:]
    return 10 ** (log10 + entries[context + (word,)][0])


def test_the_tiny_corpus_gives_the_hand_computed_kneser_ney_estimates(tmp_path):
    entries, declared = read_arpa(build(tmp_path, TINY, order=3))
    # continuation counts (distinct left words, <s> included): A 1, THE 1, CAT 2, SAT 2, RAN 1, DOG 1, AWAY 1,
    # </s> 3: 12 in all over 8 words, count-of-counts n1 = 5, n2 = 2, so D1 = 5 / 9; 9 outcomes with <unk>
    d1 = 5 / 9
    uniform = d1 * 8 / 12 / 9
    assert 10 ** entries[("CAT",)][0] == pytest.approx((2 - d1) / 12 + uniform, rel=1e-5)  # 3 occurrences, 2 contexts
    assert 10 ** entries[("<unk>",)][0] == pytest.approx(uniform, rel=1e-5)
    # bigrams count distinct left words too (those after <s> count occurrences): SAT </s> has two (CAT, DOG)
    # and is SAT's only continuation
    bigram_counts = {"<s> THE": 3, "<s> A": 1, "THE CAT": 1, "THE DOG": 1, "A CAT": 1, "CAT SAT": 1, "DOG SAT": 1,
                     "CAT RAN": 2, "RAN AWAY": 1, "SAT </s>": 2, "RAN </s>": 1, "AWAY </s>": 1}
    ones = sum(c == 1 for c in bigram_counts.values())
    twos = sum(c == 2 for c in bigram_counts.values())
    d2 = ones / (ones + 2 * twos)
    p_end = 10 ** entries[("</s>",)][0]
    assert 10 ** entries[("SAT", "</s>")][0] == pytest.approx((2 - d2) / 2 + d2 * 1 / 2 * p_end, rel=1e-5)
    assert declared == {1: 10, 2: 12, 3: 12}  # <s> is a unigram context only


@pytest.mark.parametrize("order", [2, 4])
def test_every_context_is_a_distribution(tmp_path, order):
    generator = SentenceGenerator(3)
    entries, _ = read_arpa(build(tmp_path, [generator.sentence() for _ in range(300)], order))
    vocabulary = [ngram[0] for ngram in entries if len(ngram) == 1 and ngram[0] != "<s>"]
    contexts = [ngram for ngram, (_, backoff) in entries.items() if len(ngram) < order and backoff != 0.0]
    contexts = [()] + contexts[:: max(1, len(contexts) // 60)]  # the unigrams and a spread of longer contexts
    for context in contexts:
        assert sum(probability(entries, context, w) for w in vocabulary) == pytest.approx(1.0, abs=2e-4), context
    assert entries[("<s>",)][0] == -99.0


def test_reserved_symbols_in_the_text_are_refused_with_the_line(tmp_path):
    text = tmp_path / "lm.txt"
    text.write_text("the cat sat\nthe </s> dog\n")
    proc = subprocess.run([sys.executable, REPO / "manifests" / "ngram_lm.py", "--text", text, "--out",
                           tmp_path / "lm.arpa"], capture_output=True, text=True)
    assert proc.returncode != 0 and proc.stderr.strip() == f"{text}:2: '</S>' is a reserved symbol of the language model"
    assert not (tmp_path / "lm.arpa").exists()


def test_demo_lm_leaves_out_dev_and_test_sentences(demo_corpus, tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "manifests").mkdir(parents=True)
    for split in ("dev", "test"):
        (corpus / "manifests" / f"{split}.wrd").write_text((demo_corpus / f"{split}.wrd").read_text())
    subprocess.run([sys.executable, REPO / "manifests" / "demo_lm.py", "--corpus", corpus, "--sentences", "3000"],
                   check=True, capture_output=True)
    lm_text = (corpus / "lm" / "lm.txt").read_text().splitlines()
    evaluation = set((demo_corpus / "dev.wrd").read_text().splitlines() + (demo_corpus / "test.wrd").read_text().splitlines())
    assert len(lm_text) == 3000 and not evaluation & set(lm_text)
    lexicon = {line.split("\t")[0] for line in (corpus / "lm" / "lexicon.txt").read_text().splitlines()}
    assert lexicon == set(" ".join(lm_text).split())
    entries, _ = read_arpa(corpus / "lm" / "4-gram.arpa")
    assert max(len(ngram) for ngram in entries) == 4
    # the evaluation words are in the LM's vocabulary: the demo grammar has about 1000 words
    evaluation_words = set(" ".join(evaluation).split())
    assert len(evaluation_words - lexicon) <= 0.02 * len(evaluation_words)
