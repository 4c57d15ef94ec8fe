"""Music tasks and general-audio pretraining clips rendered from a General MIDI soundfont, for run/linear_eval.py.

    python examples/m2d/demo_music.py instrument --out demo/instrument
    python examples/m2d/demo_music.py pitch --out demo/pitch
    python examples/m2d/demo_music.py pretrain --out demo/music --minutes 30

The sounds are the sampled instruments of Debian's ``fluid-soundfont-gm`` (FluidR3_GM.sf2), rendered by Debian's
``fluidsynth`` at 16 kHz (reverb and chorus off, so that nothing rings from one clip into the next). Each task is
three fairseq manifests, ``train.tsv``, ``valid.tsv`` and ``test.tsv``, with a ``.label`` file next to each, as
``demo_tasks.py`` writes them; the pretraining clips get one manifest, ``pretrain.tsv``.

- ``instrument`` (11 classes, as NSynth's instrument families): single notes of the GM programs of each family
  at many pitches, velocities and durations. A (program, note) pair belongs to one split only, so the test notes
  are notes of an instrument the classifier never heard at that pitch (NSynth holds out whole instruments; a
  soundfont has too few programs per family for that).
- ``pitch`` (36 classes, MIDI notes 48-83, as the paper's Surge task classifies 88 notes): single notes of the
  same programs, bass excluded; the programs of the three splits are disjoint, so pitch must be told across
  timbres the classifier never heard.
- ``pretrain``: 4-s phrases (a few notes, some overlapping, sometimes over a drum pattern) played by the GM
  programs that neither task uses (harp, timpani, pads, synth effects, ethnic, percussive and sound-effect
  programs): music for a general-audio pretraining mix that no evaluation clip repeats.
"""

import argparse
import random
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16000
SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
SPLITS = ("train", "valid", "test")

# NSynth's instrument families over General MIDI programs (0-based; GM groups programs in eights)
FAMILIES = {
    "keyboard": list(range(0, 8)),  # pianos, harpsichord, clavinet
    "mallet": list(range(8, 16)),  # celesta ... dulcimer
    "organ": list(range(16, 24)),
    "guitar": list(range(24, 32)),
    "bass": list(range(32, 40)),
    "string": list(range(40, 46)) + [48, 49, 50, 51],  # solo strings, tremolo, pizzicato; string ensembles
    "vocal": [52, 53, 54, 85],  # choir aahs, voice oohs, synth voice, lead 6 (voice)
    "brass": list(range(56, 64)),
    "reed": list(range(64, 72)),
    "flute": list(range(72, 80)),  # piccolo ... ocarina
    "synth_lead": [80, 81, 82, 83, 84, 86, 87],
}
NOTE_RANGES = {  # (lowest, highest) MIDI note a family's instruments play in the instrument task
    "keyboard": (36, 96), "mallet": (60, 96), "organ": (36, 84), "guitar": (40, 84), "bass": (28, 60),
    "string": (36, 96), "vocal": (48, 79), "brass": (40, 82), "reed": (44, 88), "flute": (60, 96),
    "synth_lead": (36, 96),
}
PITCHES = list(range(48, 84))
EVALUATION_PROGRAMS = {program for programs in FAMILIES.values() for program in programs}
PRETRAIN_PROGRAMS = [program for program in range(128) if program not in EVALUATION_PROGRAMS]
DRUM_NOTES = [35, 36, 38, 40, 42, 44, 46, 49, 51]  # kicks, snares, hi-hats, cymbals of GM's percussion key map
DRUM_CHANNEL = 9

CLIP_SECONDS = 2.0  # a single note and its release
PRETRAIN_CLIP_SECONDS = 4.0
GAP_SECONDS = 1.5  # silence rendered after each clip and dropped: the longest releases end inside it


def playable_notes(soundfont: Path = SOUNDFONT) -> dict:
    """The MIDI notes each GM program (bank 0) of a SoundFont 2 file has samples for: a soundfont's instruments
    cover only their real range (FluidR3's contrabass stops at note 57) and are silent above or below it.

    Read from the preset and instrument zones' key ranges (SoundFont 2.04: generator 41 names the instrument of a
    preset zone, 43 is a zone's key range, 53 its sample)."""
    if not soundfont.is_file():
        raise FileNotFoundError(f"{soundfont}: no soundfont (Debian/Ubuntu: apt-get install fluid-soundfont-gm)")
    with open(soundfont, "rb") as file:
        def chunks(start: int, end: int):
            while start < end:
                file.seek(start)
                name, size = struct.unpack("<4sI", file.read(8))
                yield name, start + 8, size
                start += 8 + size + (size & 1)

        file.seek(0, 2)
        tables = {}
        for name, offset, size in chunks(12, file.tell()):
            file.seek(offset)
            if name == b"LIST" and file.read(4) == b"pdta":
                for sub, sub_offset, sub_size in chunks(offset + 4, offset + size):
                    file.seek(sub_offset)
                    tables[sub.decode()] = file.read(sub_size)

    def records(name: str, layout: str) -> list:
        return list(struct.iter_unpack(layout, tables[name]))

    presets, preset_bags, preset_generators = records("phdr", "<20sHHHIII"), records("pbag", "<HH"), records("pgen", "<HH")
    instruments, instrument_bags, instrument_generators = records("inst", "<20sH"), records("ibag", "<HH"), records("igen", "<HH")

    def zones(bags: list, generators: list, first: int, last: int):
        for bag in range(first, last):
            yield dict(generators[bags[bag][0]:bags[bag + 1][0]])

    def key_range(zone: dict) -> range:
        packed = zone.get(43, 0x7F00)  # low key in the low byte, high key in the high byte
        return range(packed & 0xFF, (packed >> 8) + 1)

    notes = {}
    for index, (_, program, bank, first_bag, *_) in enumerate(presets[:-1]):  # the last record is a terminator
        if bank != 0:
            continue
        keys = set()
        for preset_zone in zones(preset_bags, preset_generators, first_bag, presets[index + 1][3]):
            if 41 in preset_zone:
                instrument = preset_zone[41]
                for zone in zones(instrument_bags, instrument_generators, instruments[instrument][1],
                                  instruments[instrument + 1][1]):
                    if 53 in zone:
                        keys |= set(key_range(zone)) & set(key_range(preset_zone))
        notes[program] = keys
    return notes


def midi_file(events: list, path: Path) -> None:
    """Writes a one-track Standard MIDI File at 1 ms a tick. ``events``: (time_ms, status, data1, data2 or None)."""
    def variable_length(value: int) -> bytes:
        groups = [value & 0x7F]
        while value > 0x7F:
            value >>= 7
            groups.append((value & 0x7F) | 0x80)
        return bytes(reversed(groups))

    track, now = bytearray(), 0
    track += variable_length(0) + bytes([0xFF, 0x51, 3]) + (1_000_000).to_bytes(3, "big")  # 1 s per quarter
    for time_ms, *message in sorted(events, key=lambda event: (event[0], event[1] & 0xF0 != 0xC0)):
        track += variable_length(time_ms - now) + bytes(byte for byte in message if byte is not None)
        now = time_ms
    track += variable_length(int(GAP_SECONDS * 1000)) + bytes([0xFF, 0x2F, 0])  # end of track after the last gap
    header = b"MThd" + struct.pack(">IHHH", 6, 0, 1, 1000)  # format 0, one track, 1000 ticks a quarter
    path.write_bytes(header + b"MTrk" + struct.pack(">I", len(track)) + bytes(track))


def render(clips: list, clip_seconds: float) -> list:
    """Renders clips (each a list of (onset_s, duration_s, channel, program, note, velocity)) one after another,
    each in a slot of ``clip_seconds`` + the gap; returns one float32 mono array of ``clip_seconds`` a clip."""
    if not SOUNDFONT.is_file():
        raise FileNotFoundError(f"{SOUNDFONT}: no soundfont (Debian/Ubuntu: apt-get install fluid-soundfont-gm)")
    slot_ms = int((clip_seconds + GAP_SECONDS) * 1000)
    events = []
    for index, notes in enumerate(clips):
        start = index * slot_ms
        for channel, program in {(channel, program) for _, _, channel, program, _, _ in notes}:
            if channel != DRUM_CHANNEL:
                events.append((start, 0xC0 | channel, program, None))
        for onset, duration, channel, _, note, velocity in notes:
            on = start + int(onset * 1000)
            off = min(on + int(duration * 1000), start + int(clip_seconds * 1000))
            events.append((on, 0x90 | channel, note, velocity))
            events.append((off, 0x80 | channel, note, 0))
    with tempfile.TemporaryDirectory() as tmp:
        midi, wav = Path(tmp) / "clips.mid", Path(tmp) / "clips.wav"
        midi_file(events, midi)
        subprocess.run(["fluidsynth", "-ni", "-q", "-R", "0", "-C", "0", "-g", "0.4", "-r", str(SAMPLE_RATE),
                        "-o", "audio.file.format=float", "-F", str(wav), str(SOUNDFONT), str(midi)],
                       check=True, stdout=subprocess.DEVNULL)
        audio, rate = sf.read(wav, dtype="float32")
    assert rate == SAMPLE_RATE, f"fluidsynth wrote {rate} Hz"
    audio = audio.mean(axis=1) if audio.ndim == 2 else audio
    peak = float(np.abs(audio).max())
    if peak > 0.99:  # one gain for the whole rendering keeps the velocities' loudness differences
        audio = audio * (0.99 / peak)
    slot, length = slot_ms * SAMPLE_RATE // 1000, int(clip_seconds * SAMPLE_RATE)
    audio = np.pad(audio, (0, max(0, len(clips) * slot - len(audio))))
    return [audio[i * slot: i * slot + length] for i in range(len(clips))]


def single_note(rng: random.Random, program: int, note: int) -> list:
    """One note at a random onset, duration and velocity, on channel 0."""
    return [(rng.uniform(0.0, 0.2), rng.uniform(0.3, 1.2), 0, program, note, rng.randint(50, 127))]


def write_task(out: Path, clips: dict, clip_seconds: float, chunk: int = 400) -> None:
    """Renders ``clips[split]`` (a list of (name, label, notes)) to ``out/audio/<split>/<name>.flac``, ``chunk``
    clips a fluidsynth call; writes ``out/<split>.tsv`` and ``out/<split>.label``."""
    for split, split_clips in clips.items():
        (out / "audio" / split).mkdir(parents=True, exist_ok=True)
        rows, labels = [], []
        for begin in range(0, len(split_clips), chunk):  # bounded memory for long pretraining sets
            part = split_clips[begin: begin + chunk]
            for (name, label, _), audio in zip(part, render([notes for _, _, notes in part], clip_seconds)):
                sf.write(out / "audio" / split / f"{name}.flac", audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
                rows.append(f"{split}/{name}.flac\t{len(audio)}\n")
                labels.append(f"{label}\n")
        (out / f"{split}.tsv").write_text(f"{(out / 'audio').resolve()}\n{''.join(rows)}", encoding="utf-8")
        (out / f"{split}.label").write_text("".join(labels), encoding="utf-8")


def split_three(items: list, rng: random.Random, fractions=(0.6, 0.2)) -> dict:
    """Shuffles ``items`` into disjoint train / valid / test parts (at least one item each)."""
    items = list(items)
    rng.shuffle(items)
    n_train = max(1, round(fractions[0] * len(items)))
    n_valid = max(1, round(fractions[1] * len(items)))
    return {"train": items[:n_train], "valid": items[n_train:n_train + n_valid], "test": items[n_train + n_valid:]}


def instrument_clips(counts: dict, seed: int, playable: dict) -> dict:
    """``counts[split]`` clips a family; every (program, note) pair in one split only."""
    rng = random.Random(seed)
    pairs = {split: {} for split in SPLITS}
    for family, programs in FAMILIES.items():
        low, high = NOTE_RANGES[family]
        for program in programs:
            notes = sorted(set(range(low, high + 1)) & playable[program])
            for split, notes in split_three(notes, rng).items():
                pairs[split].setdefault(family, []).extend((program, note) for note in notes)
    clips = {split: [] for split in SPLITS}
    for split in SPLITS:
        for family in FAMILIES:
            for i in range(counts[split]):
                program, note = rng.choice(pairs[split][family])
                clips[split].append((f"{family}_{i:04d}_p{program}_n{note}", family, single_note(rng, program, note)))
    return clips


def pitch_clips(counts: dict, seed: int, playable: dict) -> dict:
    """``counts[split]`` clips a note, each by a program of its split that plays the note; the programs (bass
    excluded) of the three splits are disjoint."""
    rng = random.Random(seed)
    melodic = [program for family, programs in FAMILIES.items() if family != "bass" for program in programs]
    programs = split_three(melodic, rng)
    clips = {split: [] for split in SPLITS}
    for split in SPLITS:
        for note in PITCHES:
            players = [program for program in programs[split] if note in playable[program]]
            if not players:
                raise ValueError(f"no {split} program of the soundfont plays MIDI note {note}")
            for i in range(counts[split]):
                program = rng.choice(players)
                clips[split].append((f"n{note}_{i:03d}_p{program}", str(note), single_note(rng, program, note)))
    return clips



def phrase(rng: random.Random, program: int, keys: list) -> list:
    """3-8 notes of one program within 2 octaves of its keys, some overlapping, over a drum pattern one time in
    three."""
    notes, time = [], rng.uniform(0.0, 0.3)
    first = rng.randrange(max(1, len(keys) - 24))
    window = keys[first:first + 25]
    while time < PRETRAIN_CLIP_SECONDS - 0.3 and len(notes) < 8:
        duration = rng.choice([0.15, 0.25, 0.5, 0.75, 1.0])
        for _ in range(rng.choice([1, 1, 1, 2, 3])):  # single notes and small chords
            notes.append((time, duration, 0, program, rng.choice(window), rng.randint(50, 120)))
        time += duration * rng.choice([0.5, 1.0, 1.0, 1.5])
    if rng.random() < 1 / 3:
        beat = rng.choice([0.25, 0.375, 0.5])
        kit = rng.sample(DRUM_NOTES, 3)
        notes += [(t * beat, 0.1, DRUM_CHANNEL, 0, kit[t % 3], rng.randint(60, 110))
                  for t in range(int(PRETRAIN_CLIP_SECONDS / beat))]
    return notes


def pretrain_clips(minutes: float, seed: int, playable: dict) -> dict:
    """Phrases of the programs no evaluation task uses, ``minutes`` of them."""
    rng = random.Random(seed)
    programs = [program for program in PRETRAIN_PROGRAMS if playable[program]]
    clips = []
    for i in range(int(minutes * 60 / PRETRAIN_CLIP_SECONDS)):
        program = rng.choice(programs)
        clips.append((f"phrase_{i:05d}", str(program), phrase(rng, program, sorted(playable[program]))))
    return {"pretrain": clips}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=["instrument", "pitch", "pretrain"])
    parser.add_argument("--out", type=Path, required=True, help="where the manifests, labels and audio go")
    parser.add_argument("--clips", nargs=3, type=int, metavar=("TRAIN", "VALID", "TEST"),
                        help="clips of each class in train, valid and test (instrument: 80 20 30; pitch: 24 6 8)")
    parser.add_argument("--minutes", type=float, default=30.0, help="pretrain: minutes of music")
    parser.add_argument("--seed", type=int, default=1, help="the same seed gives the same clips")
    parser.add_argument("--force", action="store_true", help="overwrite an existing task in --out")
    args = parser.parse_args(argv)

    splits = ("pretrain",) if args.task == "pretrain" else SPLITS
    existing = [path for path in [args.out / "audio"] + [args.out / f"{s}.{x}" for s in splits for x in ("tsv", "label")]
                if path.exists()]
    if existing and not args.force:
        parser.error(f"{existing[0]} exists; pass --force to overwrite it")
    if shutil.which("fluidsynth") is None:
        parser.error("fluidsynth is not installed (Debian/Ubuntu: apt-get install fluidsynth fluid-soundfont-gm)")
    if (args.out / "audio").exists():
        shutil.rmtree(args.out / "audio")
    args.out.mkdir(parents=True, exist_ok=True)
    default_clips = {"instrument": [80, 20, 30], "pitch": [24, 6, 8]}.get(args.task)
    counts = dict(zip(SPLITS, args.clips or default_clips or []))
    playable = playable_notes()
    if args.task == "instrument":
        clips = instrument_clips(counts, args.seed, playable)
    elif args.task == "pitch":
        clips = pitch_clips(counts, args.seed, playable)
    else:
        clips = pretrain_clips(args.minutes, args.seed, playable)
    write_task(args.out, clips, PRETRAIN_CLIP_SECONDS if args.task == "pretrain" else CLIP_SECONDS)
    for split in splits:
        labels = (args.out / f"{split}.label").read_text(encoding="utf-8").splitlines()
        print(f"{args.out / split}.tsv: {len(labels)} clips, {len(set(labels))} distinct classes")


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError, subprocess.CalledProcessError) as error:
        sys.exit(f"error: {error}")
