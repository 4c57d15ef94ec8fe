"""run/decode.py's error rates: CER counts characters with spaces (jiwer / ESPnet / HF evaluate), WER words."""

import importlib.util

from helpers import REPO

spec = importlib.util.spec_from_file_location("decode", REPO / "run" / "decode.py")
decode = importlib.util.module_from_spec(spec)
spec.loader.exec_module(decode)


def test_cer_counts_spaces_as_characters():
    refs = ["HELLO WORLD", "A CAT"]
    hyps = ["HELO WORD", "ACAT  "]
    # by hand: HELLO WORLD -> HELO WORD is 2 deletions of 11 characters; A CAT -> ACAT drops the space
    # (1 of 5; the trailing spaces are not characters); 3 errors over 16 reference characters
    assert decode.error_rate(hyps, refs, decode.characters) == 100.0 * 3 / 16
    # without spaces it would be 2 / 14: the space counts as an error and as a reference character
    assert decode.characters("  A  CAT ") == list("A CAT")


def test_wer_is_unchanged():
    # HELLO WORLD -> HELO WORD: 2 substitutions of 2 words; A CAT -> ACAT: 1 substitution and 1 deletion
    assert decode.error_rate(["HELO WORD", "ACAT"], ["HELLO WORLD", "A CAT"], str.split) == 100.0 * 4 / 4
