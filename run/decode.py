"""Decode a manifest with a CTC fine-tuned fairseq checkpoint and score it (WER and CER).

    python run/decode.py --checkpoint outputs/finetune/checkpoints/checkpoint_best.pt --manifest demo/manifests/test.tsv
    python run/decode.py ... --lexicon lexicon.txt [--lm 4-gram.arpa|.bin --lm-weight 2 --word-score -1]
    python run/decode.py ... --lexicon lexicon.txt --lm 4-gram.arpa --lm-weight 0.5 1 2 --word-score -1 0 1 \
        --tune-manifest demo/manifests/dev.tsv

Greedy CTC by default; with ``--lexicon`` a lexicon-constrained beam search (torchaudio's ``ctc_decoder``,
flashlight-text), scored by a KenLM model when ``--lm`` is given. Several ``--lm-weight`` / ``--word-score``
values are a grid: every pair decodes ``--tune-manifest`` (default: the scored manifest itself), the pair of
lowest WER there decodes ``--manifest``, and ``grid.json`` keeps every pair's WER (the LM-weight sweep that
fairseq's and wav2vec 2.0's results tune on dev). The references are the manifest's ``.wrd`` file (or its
``.ltr`` file turned into words). Writes ``hyp.wrd``, ``ref.wrd`` and ``wer.json`` into ``--out`` (default:
``decode_<manifest name>`` next to the checkpoint) and prints WER and CER (characters with spaces, as jiwer,
ESPnet and HF ``evaluate`` count them).
"""

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Callable, List, Set, Tuple

import editdistance
import soundfile as sf
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from maskssl_fairseq.checkpoints import load_finetuned  # noqa: E402
from maskssl_fairseq.data.manifests import (  # noqa: E402
    ManifestError, audio_files, read_dictionary, refuse_bom, text_lines)


def letters_to_words(letters: List[str]) -> str:
    """fairseq's ``letter`` post-processing: ``H I | T H E R E |`` -> ``HI THERE``."""
    return " ".join("".join(letters).replace("|", " ").split())


def greedy(emissions: torch.Tensor, lengths: torch.Tensor, symbols: List[str], dropped: Set[int]) -> List[str]:
    """Best path: argmax per frame, merge repeats, drop blank and special symbols. ``emissions [B, T, V]``."""
    hyps = []
    for best, length in zip(emissions.argmax(dim=-1), lengths):
        ids = torch.unique_consecutive(best[:length]).tolist()
        hyps.append(letters_to_words([symbols[i] for i in ids if i not in dropped]))
    return hyps


def characters(sentence: str) -> List[str]:
    """CER's units as jiwer, ESPnet and HF ``evaluate`` count them: every character, single spaces included."""
    return list(" ".join(sentence.split()))


def error_rate(hyps: List[str], refs: List[str], unit) -> float:
    errors = sum(editdistance.eval(unit(h), unit(r)) for h, r in zip(hyps, refs))
    return 100.0 * errors / max(1, sum(len(unit(r)) for r in refs))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="CTC fine-tuned checkpoint (wav2vec_ctc)")
    parser.add_argument("--manifest", type=Path, required=True, help="<dir>/<name>.tsv; labels from <name>.wrd/.ltr")
    parser.add_argument("--out", type=Path, help="output directory (default: decode_<name> next to the checkpoint)")
    parser.add_argument("--lexicon", type=Path, help="letter lexicon (`word<TAB>w o r d |`): lexicon beam search")
    parser.add_argument("--lm", type=Path, help="KenLM model (.arpa or .bin), used with --lexicon")
    parser.add_argument("--beam-size", type=int, default=50)
    parser.add_argument("--lm-weight", type=float, nargs="+", default=[2.0], help="one value, or a grid")
    parser.add_argument("--word-score", type=float, nargs="+", default=[-1.0], help="one value, or a grid")
    parser.add_argument("--tune-manifest", type=Path, help="manifest the grid is tuned on (default: --manifest)")
    parser.add_argument("--batch-seconds", type=float, default=60.0, help="audio per forward batch")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output directory")
    args = parser.parse_args(argv)
    if args.lm and not args.lexicon:
        parser.error("--lm needs --lexicon (the beam search spells words from the lexicon)")
    grid = list(itertools.product(args.lm_weight, args.word_score))
    if len(grid) > 1 and not args.lexicon:
        parser.error("several --lm-weight or --word-score values need --lexicon (greedy decoding has no weights)")
    if args.tune_manifest and len(grid) == 1:
        parser.error("--tune-manifest needs several --lm-weight or --word-score values (and --lexicon)")

    out = args.out or args.checkpoint.parent / f"decode_{args.manifest.stem}"
    if out.exists() and any(out.iterdir()) and not args.force:
        parser.error(f"{out} exists; pass --force to overwrite it or --out to write elsewhere")

    for flag, path in (("--lexicon", args.lexicon), ("--lm", args.lm)):
        if path is not None and not path.is_file():
            sys.exit(f"{flag} {path}: no such file")
    if args.lexicon:
        check_lexicon(args.lexicon, args.manifest.parent / "dict.ltr.txt")
    tune_on = args.tune_manifest or args.manifest
    scored = {}  # manifest -> (audio files, reference words)
    for manifest in dict.fromkeys((args.manifest, tune_on)):
        entries = checked_audio_files(manifest)
        scored[manifest] = (entries, reference_words(manifest, len(entries)))
    model, dictionary, normalize, sample_rate = load_finetuned(args.checkpoint, args.manifest.parent, args.device)
    symbols = list(dictionary.symbols)
    blank = dictionary.bos()  # fairseq's CTC uses <s> as the blank
    dropped = {blank, dictionary.pad(), dictionary.eos()}  # as fairseq's ctc criterion scores WER

    started = time.time()
    emissions = {manifest: all_emissions(model, entries, normalize, sample_rate, args.device, args.batch_seconds)
                 for manifest, (entries, _) in scored.items()}

    language_model = None
    if args.lm:
        # loaded once for every grid point: reading a large ARPA file takes longer than a beam search
        from flashlight.lib.text.decoder import KenLM
        from flashlight.lib.text.dictionary import create_word_dict, load_words

        language_model = KenLM(str(args.lm), create_word_dict(load_words(str(args.lexicon))))

    def decoder(lm_weight: float, word_score: float) -> Callable:
        if not args.lexicon:
            return lambda emission: greedy(emission[None], torch.tensor([len(emission)]), symbols, dropped)[0]
        from torchaudio.models.decoder import ctc_decoder

        beam = ctc_decoder(
            lexicon=str(args.lexicon), tokens=symbols, lm=language_model,
            beam_size=args.beam_size, lm_weight=lm_weight, word_score=word_score,
            blank_token=symbols[blank], sil_token="|", unk_word="<unk>",
        )

        def best(emission: torch.Tensor) -> str:
            results = beam(emission[None].contiguous(), torch.tensor([len(emission)], dtype=torch.int32))[0]
            return " ".join(results[0].words).upper() if results else ""
        return best

    tried = []
    lm_weight, word_score = grid[0]
    if len(grid) > 1:
        for weight, score in grid:
            decode = decoder(weight, score)
            hyps = [decode(e) for e in emissions[tune_on]]
            tried.append({"lm_weight": weight, "word_score": score,
                          "wer": round(error_rate(hyps, scored[tune_on][1], str.split), 2)})
            print(f"[decode] {tune_on.name}: lm_weight {weight:g} word_score {score:g}: "
                  f"WER {tried[-1]['wer']:.2f}%", flush=True)
        best = min(tried, key=lambda t: t["wer"])
        lm_weight, word_score = best["lm_weight"], best["word_score"]
    decode = decoder(lm_weight, word_score)
    refs = scored[args.manifest][1]
    hyps = [decode(e) for e in emissions[args.manifest]]

    wer = error_rate(hyps, refs, str.split)
    cer = error_rate(hyps, refs, characters)
    out.mkdir(parents=True, exist_ok=True)
    (out / "hyp.wrd").write_text("".join(h + "\n" for h in hyps))
    (out / "ref.wrd").write_text("".join(r + "\n" for r in refs))
    summary = {
        "manifest": str(args.manifest), "checkpoint": str(args.checkpoint), "utterances": len(hyps),
        "decoder": "lexicon+kenlm" if args.lm else "lexicon" if args.lexicon else "greedy",
        "wer": round(wer, 2), "cer": round(cer, 2), "seconds": round(time.time() - started, 1),
    }
    if args.lexicon:
        summary.update(lm_weight=lm_weight, word_score=word_score, beam_size=args.beam_size)
    if tried:
        summary["tuned_on"] = str(tune_on)
        (out / "grid.json").write_text(json.dumps({"tuned_on": str(tune_on), "grid": tried}, indent=2) + "\n")
    (out / "wer.json").write_text(json.dumps(summary, indent=2) + "\n")
    setting = f" (lm_weight {lm_weight:g}, word_score {word_score:g})" if args.lexicon else ""
    print(f"[decode] {summary['decoder']}{setting} on {args.manifest.name}: WER {wer:.2f}%  CER {cer:.2f}%  "
          f"({len(hyps)} utterances)")
    print(f"[decode] hypotheses: {out / 'hyp.wrd'}  references: {out / 'ref.wrd'}")


def check_lexicon(lexicon: Path, dictionary: Path) -> None:
    """Stops at the first lexicon line that spells a word with a letter the model's dictionary lacks."""
    problems: List[str] = []
    letters = read_dictionary(dictionary, problems) if dictionary.is_file() else None
    if letters is None or problems:
        sys.exit(problems[0] if problems else f"{dictionary}: no such file (the model's letters, next to the manifest)")
    for number, line in enumerate(text_lines(lexicon, problems), 1):
        word, _, spelling = line.partition("\t")
        unknown = sorted(set(spelling.split()) - letters)
        if not spelling.strip() or unknown:
            what = f"letters not in {dictionary}: {' '.join(unknown)}" if unknown else "expected 'word<TAB>w o r d |'"
            sys.exit(f"{lexicon}:{number}: {word!r}: {what}")
    if problems:
        sys.exit(problems[0])


def checked_audio_files(manifest: Path) -> List[Tuple[Path, int]]:
    """The manifest's ``(audio path, samples)``; a bad manifest or a missing audio file ends the run before the
    model loads, naming the manifest line."""
    try:
        entries = audio_files(manifest)
    except (ManifestError, FileNotFoundError) as error:
        sys.exit(str(error))
    for line, (path, _) in enumerate(entries, 2):
        if not path.is_file():
            sys.exit(f"{manifest}:{line}: {path}: no such file")
    return entries


def reference_words(manifest: Path, count: int) -> List[str]:
    wrd, ltr = manifest.with_suffix(".wrd"), manifest.with_suffix(".ltr")
    if wrd.exists():
        refs = [" ".join(line.split()) for line in wrd.read_text().splitlines()]
    elif ltr.exists():
        refs = [letters_to_words(line.split()) for line in ltr.read_text().splitlines()]
    else:
        sys.exit(f"{manifest}: no {wrd.name} or {ltr.name} next to it to score against")
    try:
        refuse_bom(wrd if wrd.exists() else ltr)
    except ManifestError as error:
        sys.exit(str(error))
    if len(refs) != count:
        sys.exit(f"{wrd if wrd.exists() else ltr}: {len(refs)} lines for {count} utterances in {manifest}")
    return refs


def all_emissions(model, entries: List[Tuple[Path, int]], normalize: bool, sample_rate: int, device: str,
                  batch_seconds: float) -> List[torch.Tensor]:
    """Each utterance's CTC log-probabilities ``[T_i, V]`` on the CPU, in manifest order, batched by length."""
    emissions: List[torch.Tensor] = [None] * len(entries)
    order = sorted(range(len(entries)), key=lambda i: entries[i][1])
    batch: List[int] = []
    for position, index in enumerate(order):
        batch.append(index)
        full = sum(entries[i][1] for i in batch) >= batch_seconds * sample_rate
        if full or position == len(order) - 1:
            log_probs, frames = forward(model, [entries[i][0] for i in batch], normalize, sample_rate, device)
            for i, emission, length in zip(batch, log_probs.cpu(), frames.tolist()):
                emissions[i] = emission[:length]
            batch = []
            print(f"[decode] {position + 1}/{len(order)} utterances", end="\r", flush=True)
    print()
    return emissions


@torch.inference_mode()
def forward(model, paths: List[Path], normalize: bool, sample_rate: int, device: str):
    """CTC log-probabilities ``[B, T, V]`` and valid frame counts ``[B]`` for a batch of files."""
    waves = []
    for path in paths:
        audio, rate = sf.read(path, dtype="float32")
        if rate != sample_rate:
            sys.exit(f"{path}: sample rate {rate}, the model expects {sample_rate}")
        wave = torch.from_numpy(audio)
        waves.append(F.layer_norm(wave, wave.shape) if normalize else wave)
    lengths = torch.tensor([len(w) for w in waves])
    source = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True).to(device)
    padding_mask = torch.arange(source.shape[1], device=device)[None, :] >= lengths.to(device)[:, None]
    net_output = model(source=source, padding_mask=padding_mask)
    log_probs = model.get_normalized_probs(net_output, log_probs=True).transpose(0, 1)  # [B, T, V]
    if net_output["padding_mask"] is not None:
        frames = (~net_output["padding_mask"]).sum(dim=1)
    else:
        frames = torch.full((len(paths),), log_probs.shape[1], device=log_probs.device)
    return log_probs.float(), frames


if __name__ == "__main__":
    main()
