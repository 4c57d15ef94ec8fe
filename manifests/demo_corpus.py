"""Synthesise a deterministic spoken English corpus with espeak-ng, in the LibriSpeech layout, with manifests.

    python manifests/demo_corpus.py --out demo [--seed 1] [--force]

writes ``<out>/LibriSpeech/<split>/<speaker>/<chapter>/*.flac`` (16 kHz mono) with ``<speaker>-<chapter>.trans.txt``
for the splits ``pretrain`` (used unlabeled), ``train_10m``, ``train_1h``, ``dev`` and ``test``, then the fairseq
manifests ``<out>/manifests/<split>.{tsv,wrd,ltr}`` and ``dict.ltr.txt`` with ``manifests/librispeech.py``, and
checks each with ``manifests/validate.py``. Speakers are espeak-ng voice and variant pairs; every utterance draws
its own speaking rate and pitch; ``--heldout-speakers N`` keeps N speakers for dev and test only, and dev and test
sentences never occur in the training splits. The default sizes keep the CPU quickstart short; ``--train-1h-minutes 60`` and
``--train-10m-minutes 10`` give the real LibriLight sizes.
"""

import argparse
import random
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List, Set

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_text import SentenceGenerator  # noqa: E402

SAMPLE_RATE = 16000
SPLITS = ("pretrain", "train_10m", "train_1h", "dev", "test")
# espeak-ng's own (non-mbrola) English voices and voice variants: 5 x 6 = 30 speakers
VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp")
VARIANTS = ("m1", "m3", "m5", "f1", "f2", "f4")
SEED_OFFSETS = {split: i * 1_000_003 for i, split in enumerate(SPLITS)}


def speak(text: str, voice: str, rate: int, pitch: int) -> torch.Tensor:
    """espeak-ng's rendering of ``text`` as a float waveform at 16 kHz."""
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(rate), "-p", str(pitch), "--stdout", text],
        check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    ).stdout
    # espeak-ng streams a canonical 44-byte WAV header with a placeholder length: read the samples after it
    if wav[:4] != b"RIFF" or wav[36:40] != b"data":
        raise RuntimeError(f"espeak-ng -v {voice} wrote an unexpected WAV header: {wav[:44]!r}")
    rate = int.from_bytes(wav[24:28], "little")
    audio = torch.from_numpy(np.frombuffer(wav[44:], dtype="<i2").astype(np.float32) / 32768.0)
    return AF.resample(audio, rate, SAMPLE_RATE)


SPEAKERS = [(v, var) for v in VOICES for var in VARIANTS]
EVALUATION_SPLITS = ("dev", "test")


def heldout_speakers(count: int) -> List[int]:
    """Indices into ``SPEAKERS`` of ``count`` speakers heard only in dev and test, spread over the voices."""
    if not 0 <= count < len(SPEAKERS):
        raise ValueError(f"--heldout-speakers must be in [0, {len(SPEAKERS) - 1}], got {count}")
    stride = len(SPEAKERS) / max(count, 1)
    return [int(i * stride + stride / 2) for i in range(count)]


def synthesise_split(split: str, minutes: float, root: Path, seed: int, jobs: int, speakers: List[int],
                     seen_sentences: Set[str]) -> float:
    """Writes utterances for ``split`` until ``minutes`` of audio; returns the minutes written.

    Utterances are spoken by ``speakers`` (indices into ``SPEAKERS``); sentences in ``seen_sentences`` are
    skipped, and the split's own sentences are added to it.
    """
    rng = random.Random(seed + SEED_OFFSETS[split])
    sentences = SentenceGenerator(seed + SEED_OFFSETS[split])
    chapter = 10 + SPLITS.index(split)
    transcripts = {}
    written = 0.0
    utterance = 0

    def render(job):
        path, text, voice, rate, pitch = job
        audio = speak(text, voice, rate, pitch)
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, audio.numpy(), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
        return audio.numel() / SAMPLE_RATE

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        while written < minutes * 60:
            batch = []
            for _ in range(4 * jobs):
                speaker_index = speakers[rng.randrange(len(speakers))]
                voice, variant = SPEAKERS[speaker_index]
                speaker = 100 + speaker_index
                text = sentences.sentence()
                while text in seen_sentences:
                    text = sentences.sentence()
                seen_sentences.add(text)
                utt_id = f"{speaker}-{chapter}-{utterance:04d}"
                utterance += 1
                path = root / split / str(speaker) / str(chapter) / f"{utt_id}.flac"
                transcripts.setdefault(speaker, []).append(f"{utt_id} {text.upper()}")
                batch.append((path, text, f"{voice}+{variant}", rng.randint(130, 200), rng.randint(30, 70)))
            written += sum(pool.map(render, batch))
    for speaker, lines in transcripts.items():
        trans = root / split / str(speaker) / str(chapter) / f"{speaker}-{chapter}.trans.txt"
        trans.write_text("\n".join(lines) + "\n")
    return written / 60


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=1, help="the same seed gives the same corpus")
    parser.add_argument("--pretrain-minutes", type=float, default=30.0, help="unlabeled pretraining audio")
    parser.add_argument("--train-10m-minutes", type=float, default=5.0, help="smallest labeled split")
    parser.add_argument("--train-1h-minutes", type=float, default=20.0, help="larger labeled split")
    parser.add_argument("--dev-minutes", type=float, default=3.0)
    parser.add_argument("--test-minutes", type=float, default=3.0)
    parser.add_argument("--heldout-speakers", type=int, default=0,
                        help="speakers (of 30) heard only in dev and test: evaluation on unseen voices")
    parser.add_argument("--jobs", type=int, default=2, help="parallel espeak-ng processes")
    parser.add_argument("--force", action="store_true", help="replace an existing corpus in --out")
    args = parser.parse_args(argv)

    if shutil.which("espeak-ng") is None:
        parser.error("espeak-ng is not installed (Debian/Ubuntu: apt-get install espeak-ng, or run run/setup.sh as root)")
    audio_root = args.out / "LibriSpeech"
    manifest_dir = args.out / "manifests"
    existing = [p for p in (audio_root, manifest_dir) if p.exists()]
    if existing and not args.force:
        parser.error(f"{existing[0]} exists; pass --force to replace the corpus")
    for path in existing:
        shutil.rmtree(path)

    minutes = {
        "pretrain": args.pretrain_minutes, "train_10m": args.train_10m_minutes, "train_1h": args.train_1h_minutes,
        "dev": args.dev_minutes, "test": args.test_minutes,
    }
    try:
        heldout = heldout_speakers(args.heldout_speakers)
    except ValueError as error:
        parser.error(str(error))
    seen_sentences: Set[str] = set()  # dev and test sentences never occur in a training split
    for split in SPLITS:
        if split in EVALUATION_SPLITS and heldout:
            speakers = heldout
        else:
            speakers = [i for i in range(len(SPEAKERS)) if i not in heldout]
        done = synthesise_split(split, minutes[split], audio_root, args.seed, args.jobs, speakers, seen_sentences)
        print(f"[demo_corpus] {split}: {done:.1f} min of speech", flush=True)

    tools = Path(__file__).resolve().parent
    subprocess.run(
        [sys.executable, tools / "librispeech.py", "--root", audio_root, "--splits", ",".join(SPLITS),
         "--out", manifest_dir], check=True,
    )
    for split in SPLITS:
        subprocess.run([sys.executable, tools / "validate.py", manifest_dir / f"{split}.tsv", "--labels", "ltr"],
                       check=True)
    print(f"[demo_corpus] manifests in {manifest_dir}")


if __name__ == "__main__":
    main()
