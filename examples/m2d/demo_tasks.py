"""Labeled classification tasks from the spoken demo corpus, for run/linear_eval.py.

    python examples/m2d/demo_tasks.py keywords --out demo/keywords
    python examples/m2d/demo_tasks.py speaker --manifests demo/manifests --out demo/speakers

Each task is three fairseq manifests, ``train.tsv``, ``valid.tsv`` and ``test.tsv``, with a ``.label`` file
next to each (one class label per line). The demo corpus (manifests/demo_corpus.py) has 30 speakers, each an
espeak-ng voice (accent: en-us, en-gb, ...) and variant (m1, f2, ...) pair.

- ``keywords``: the 35 words of Speech Commands V2 (EVAR's SPCV2 task), synthesised here as isolated words.
  As in Speech Commands, the speakers of the three splits are disjoint: 20 train, 5 valid and 5 test
  speakers. Every clip draws its own speaking rate and pitch, as the corpus does.
- ``speaker`` (30 classes, like VoxCeleb1 identification), ``voice`` (5 accents) and ``variant`` (6): labels
  of the corpus's own utterances, so the splits (``--splits``, default train_1h dev test) share speakers.
"""

import argparse
import random
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import soundfile as sf

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "manifests"))
from demo_corpus import SAMPLE_RATE, VARIANTS, VOICES, speak  # noqa: E402

FIRST_SPEAKER = 100  # demo_corpus numbers speaker i of VOICES x VARIANTS as 100 + i
SPLITS = ("train", "valid", "test")
SPEECH_COMMANDS = (
    "yes no up down left right on off stop go zero one two three four five six seven eight nine "
    "bed bird cat dog happy house marvin sheila tree wow backward forward follow learn visual"
).split()
SPEAKERS_PER_SPLIT = {"train": 20, "valid": 5, "test": 5}


def label_of(relative_path: str, kind: str, where: str) -> str:
    parts = Path(relative_path).parts
    speaker = int(parts[-3]) - FIRST_SPEAKER if len(parts) >= 3 and parts[-3].isdigit() else -1
    if not 0 <= speaker < len(VOICES) * len(VARIANTS):
        raise ValueError(f"{where}: {relative_path!r} is not under a demo-corpus speaker directory")
    voice, variant = VOICES[speaker // len(VARIANTS)], VARIANTS[speaker % len(VARIANTS)]
    return {"voice": voice, "variant": variant, "speaker": f"{voice}+{variant}"}[kind]


def corpus_labels(manifests: Path, kind: str, sources: list, out: Path) -> None:
    """Copies the corpus manifests ``sources`` to ``out/{train,valid,test}.tsv`` with their labels."""
    for split, source_name in zip(SPLITS, sources):
        source = manifests / f"{source_name}.tsv"
        lines = source.read_text(encoding="utf-8").splitlines()
        labels = [label_of(line.split("\t")[0], kind, f"{source}:{number}") for number, line in enumerate(lines[1:], 2)]
        shutil.copyfile(source, out / f"{split}.tsv")
        (out / f"{split}.label").write_text("".join(f"{label}\n" for label in labels), encoding="utf-8")


def keywords(out: Path, clips_per_word: dict, seed: int, jobs: int) -> None:
    """Synthesises the Speech Commands words with disjoint train / valid / test speakers under ``out/audio``."""
    rng = random.Random(seed)
    speakers = [f"{voice}+{variant}" for voice in VOICES for variant in VARIANTS]
    rng.shuffle(speakers)
    clips = {split: [] for split in SPLITS}
    for split in SPLITS:
        group, speakers = speakers[: SPEAKERS_PER_SPLIT[split]], speakers[SPEAKERS_PER_SPLIT[split]:]
        for word in SPEECH_COMMANDS:
            for i in range(clips_per_word[split]):
                speaker = rng.choice(group)  # named in the file, as Speech Commands does
                clips[split].append((f"{split}/{word}/{speaker}_{i:03d}.flac", word, speaker,
                                     rng.randint(130, 200), rng.randint(30, 70)))

    def render(clip) -> int:
        path, word, speaker, rate, pitch = clip
        audio = speak(word, speaker, rate, pitch)
        (out / "audio" / path).parent.mkdir(parents=True, exist_ok=True)
        sf.write(out / "audio" / path, audio.numpy(), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
        return audio.numel()

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for split in SPLITS:
            sizes = list(pool.map(render, clips[split]))
            rows = "".join(f"{path}\t{size}\n" for (path, *_), size in zip(clips[split], sizes))
            (out / f"{split}.tsv").write_text(f"{(out / 'audio').resolve()}\n{rows}", encoding="utf-8")
            (out / f"{split}.label").write_text("".join(f"{clip[1]}\n" for clip in clips[split]), encoding="utf-8")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=["keywords", "speaker", "voice", "variant"])
    parser.add_argument("--out", type=Path, required=True, help="where the labeled manifests (and audio) go")
    parser.add_argument("--manifests", type=Path, help="demo-corpus manifest directory (speaker, voice, variant)")
    parser.add_argument("--splits", nargs=3, default=["train_1h", "dev", "test"], metavar=("TRAIN", "VALID", "TEST"),
                        help="corpus splits that become train, valid and test (speaker, voice, variant)")
    parser.add_argument("--clips-per-word", nargs=3, type=int, default=[24, 9, 12], metavar=("TRAIN", "VALID", "TEST"),
                        help="keywords: clips of each word in train, valid and test")
    parser.add_argument("--seed", type=int, default=1, help="keywords: the same seed gives the same clips")
    parser.add_argument("--jobs", type=int, default=2, help="keywords: parallel espeak-ng processes")
    parser.add_argument("--force", action="store_true", help="overwrite an existing task in --out")
    args = parser.parse_args(argv)

    if args.task != "keywords" and args.manifests is None:
        parser.error(f"the {args.task} task relabels a demo corpus: pass --manifests")
    existing = [path for path in [args.out / "audio"] + [args.out / f"{s}.{x}" for s in SPLITS for x in ("tsv", "label")]
                if path.exists()]
    if existing and not args.force:
        parser.error(f"{existing[0]} exists; pass --force to overwrite it")
    if (args.out / "audio").exists():
        shutil.rmtree(args.out / "audio")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.task == "keywords":
        keywords(args.out, dict(zip(SPLITS, args.clips_per_word)), args.seed, args.jobs)
    else:
        corpus_labels(args.manifests, args.task, args.splits, args.out)
    for split in SPLITS:
        labels = (args.out / f"{split}.label").read_text(encoding="utf-8").splitlines()
        print(f"{args.out / split}.tsv: {len(labels)} clips, {len(set(labels))} classes")


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as error:  # a missing manifest, a file outside the corpus layout
        sys.exit(f"error: {error}")
