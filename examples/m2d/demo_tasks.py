"""Labeled classification tasks from the spoken demo corpus, for run/linear_eval.py.

    python examples/m2d/demo_tasks.py keywords --out demo/keywords
    python examples/m2d/demo_tasks.py speaker --manifests demo/manifests --out demo/speakers

Each task is three fairseq manifests, ``train.tsv``, ``valid.tsv`` and ``test.tsv``, with a ``.label`` file
next to each (one class label per line). The demo corpus (manifests/demo_corpus.py) has 30 speakers, each an
espeak-ng voice (accent: en-us, en-gb, ...) and variant (m1, f2, ...) pair.

- ``keywords``: the 35 words of Speech Commands V2 (EVAR's SPCV2 task), synthesised here as isolated words.
  As in Speech Commands, the speakers of the three splits are disjoint: 20 train, 5 valid and 5 test
  speakers. Every clip draws its own speaking rate and pitch, as the corpus does.
- ``phrases``: a captioned set for retrieval, ``train`` and ``test`` manifests with transcripts (``.wrd``):
  ``--phrases TRAIN TEST`` clips of ``--words-per-phrase`` distinct Speech Commands words spoken in one
  breath, e.g. "seven dog left", by the keyword task's train and test speakers (the same ``--seed`` gives the
  same speakers as ``keywords``).
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


def split_speakers(rng: random.Random) -> dict:
    """The keyword task's disjoint train / valid / test speaker groups."""
    speakers = [f"{voice}+{variant}" for voice in VOICES for variant in VARIANTS]
    rng.shuffle(speakers)
    groups = {}
    for split in SPLITS:
        groups[split], speakers = speakers[: SPEAKERS_PER_SPLIT[split]], speakers[SPEAKERS_PER_SPLIT[split]:]
    return groups


def synthesise(out: Path, clips: dict, labels: str, jobs: int) -> None:
    """Speaks every ``(path, text, speaker, rate, pitch)`` of ``clips[split]`` to ``out/audio/path``; writes
    ``out/<split>.tsv`` and the texts as ``out/<split>.<labels>``."""
    def render(clip) -> int:
        path, text, speaker, rate, pitch = clip
        audio = speak(text, speaker, rate, pitch)
        (out / "audio" / path).parent.mkdir(parents=True, exist_ok=True)
        sf.write(out / "audio" / path, audio.numpy(), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
        return audio.numel()

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for split, split_clips in clips.items():
            sizes = list(pool.map(render, split_clips))
            rows = "".join(f"{path}\t{size}\n" for (path, *_), size in zip(split_clips, sizes))
            (out / f"{split}.tsv").write_text(f"{(out / 'audio').resolve()}\n{rows}", encoding="utf-8")
            (out / f"{split}.{labels}").write_text("".join(f"{clip[1]}\n" for clip in split_clips), encoding="utf-8")


def keywords(out: Path, clips_per_word: dict, seed: int, jobs: int) -> None:
    """Synthesises the Speech Commands words with disjoint train / valid / test speakers under ``out/audio``."""
    rng = random.Random(seed)
    groups = split_speakers(rng)
    clips = {split: [] for split in SPLITS}
    for split in SPLITS:
        for word in SPEECH_COMMANDS:
            for i in range(clips_per_word[split]):
                speaker = rng.choice(groups[split])  # named in the file, as Speech Commands does
                clips[split].append((f"{split}/{word}/{speaker}_{i:03d}.flac", word, speaker,
                                     rng.randint(130, 200), rng.randint(30, 70)))
    synthesise(out, clips, "label", jobs)


def phrases(out: Path, counts: dict, words: int, seed: int, jobs: int) -> None:
    """``counts[split]`` clips of ``words`` distinct Speech Commands words each, by the keyword task's speakers;
    no train clip has the words of a test clip, in any order."""
    groups = split_speakers(random.Random(seed))
    rng = random.Random(seed + 1)
    clips, test_word_sets = {split: [] for split in counts}, set()
    for split in sorted(counts, key=lambda name: name != "test"):
        for i in range(counts[split]):
            chosen = rng.sample(SPEECH_COMMANDS, words)
            while split != "test" and frozenset(chosen) in test_word_sets:
                chosen = rng.sample(SPEECH_COMMANDS, words)
            if split == "test":
                test_word_sets.add(frozenset(chosen))
            speaker = rng.choice(groups[split])
            clips[split].append((f"{split}/{speaker}_{i:04d}.flac", " ".join(chosen), speaker, rng.randint(130, 200),
                                 rng.randint(30, 70)))
    synthesise(out, clips, "wrd", jobs)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=["keywords", "phrases", "speaker", "voice", "variant"])
    parser.add_argument("--out", type=Path, required=True, help="where the labeled manifests (and audio) go")
    parser.add_argument("--manifests", type=Path, help="demo-corpus manifest directory (speaker, voice, variant)")
    parser.add_argument("--splits", nargs=3, default=["train_1h", "dev", "test"], metavar=("TRAIN", "VALID", "TEST"),
                        help="corpus splits that become train, valid and test (speaker, voice, variant)")
    parser.add_argument("--clips-per-word", nargs=3, type=int, default=[24, 9, 12], metavar=("TRAIN", "VALID", "TEST"),
                        help="keywords: clips of each word in train, valid and test")
    parser.add_argument("--phrases", nargs=2, type=int, default=[1500, 200], metavar=("TRAIN", "TEST"),
                        help="phrases: clips in train and test")
    parser.add_argument("--words-per-phrase", type=int, default=3, help="phrases: distinct words in a clip")
    parser.add_argument("--seed", type=int, default=1, help="keywords, phrases: the same seed gives the same clips")
    parser.add_argument("--jobs", type=int, default=2, help="keywords: parallel espeak-ng processes")
    parser.add_argument("--force", action="store_true", help="overwrite an existing task in --out")
    args = parser.parse_args(argv)

    if args.task not in ("keywords", "phrases") and args.manifests is None:
        parser.error(f"the {args.task} task relabels a demo corpus: pass --manifests")
    splits, labels = (("train", "test"), "wrd") if args.task == "phrases" else (SPLITS, "label")
    existing = [path for path in [args.out / "audio"] + [args.out / f"{s}.{x}" for s in splits for x in ("tsv", labels)]
                if path.exists()]
    if existing and not args.force:
        parser.error(f"{existing[0]} exists; pass --force to overwrite it")
    if (args.out / "audio").exists():
        shutil.rmtree(args.out / "audio")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.task == "keywords":
        keywords(args.out, dict(zip(SPLITS, args.clips_per_word)), args.seed, args.jobs)
    elif args.task == "phrases":
        if not 1 <= args.words_per_phrase <= len(SPEECH_COMMANDS):
            parser.error(f"--words-per-phrase {args.words_per_phrase}: between 1 and {len(SPEECH_COMMANDS)}")
        phrases(args.out, dict(zip(splits, args.phrases)), args.words_per_phrase, args.seed, args.jobs)
    else:
        corpus_labels(args.manifests, args.task, args.splits, args.out)
    for split in splits:
        lines = (args.out / f"{split}.{labels}").read_text(encoding="utf-8").splitlines()
        print(f"{args.out / split}.tsv: {len(lines)} clips, {len(set(lines))} distinct {'texts' if labels == 'wrd' else 'classes'}")


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as error:  # a missing manifest, a file outside the corpus layout
        sys.exit(f"error: {error}")
