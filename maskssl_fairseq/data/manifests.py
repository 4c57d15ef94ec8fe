"""Fairseq audio manifests: read a LibriSpeech-style corpus, write manifest sets, validate them.

A manifest set, in fairseq's convention, for a split ``<name>``:

- ``<name>.tsv``: the absolute audio root on the first line, then ``relative/path<TAB>num_samples`` per utterance;
- ``<name>.wrd``: the words of each utterance, one line each, same order;
- ``<name>.ltr``: the same as upper-case letters separated by spaces, ``|`` after each word
  (``H E L L O | W O R L D |``);
- ``dict.ltr.txt``: the letters in fairseq's ``Dictionary`` format, ``<symbol> <count>``, most frequent first.

No fairseq import here (fairseq takes seconds to import): the command-line tools in ``manifests/`` load this file.
"""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import soundfile

AUDIO_SUFFIX = ".flac"
TRANSCRIPT_SUFFIX = ".trans.txt"
WORD_BOUNDARY = "|"
LETTER_DICTIONARY = "dict.ltr.txt"
# Opening files dominates on cluster file systems, and libsndfile releases the GIL: threads overlap the opens.
# Chunks keep the thread pool's per-task overhead small next to a local open (about 0.1 ms).
IO_THREADS = 8
IO_CHUNK = 256
FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")  # libsndfile's float sample formats (WAV, AIFF, ...)


class ManifestError(Exception):
    """Bad input or refused output; the message names the file (and line) of each problem, one per line."""


class ManifestFormatError(ManifestError, ValueError):
    """A manifest line that cannot be read; the message names the file and line."""


# A UTF-8 byte-order mark (Windows editors write one) is refused wherever a text input is read, never stripped:
# fairseq's own readers (manifests, labels, dictionaries) would take it as part of the first path or symbol, and
# so would any other tool given the same file; removing it once from the file fixes them all.
BOM = "\ufeff"


def bom_problem(path: Path) -> str:
    """The message for a text file that starts with a byte-order mark, with the command that removes it."""
    return (f"{path}:1: starts with a UTF-8 byte-order mark (BOM), which would become part of its first "
            f"{'path' if path.suffix == '.tsv' else 'symbol'}; remove it: sed -i '1s/^\\xEF\\xBB\\xBF//' {path}")


def refuse_bom(path: Path) -> None:
    """Raises ``ManifestFormatError`` when the text file ``path`` starts with a UTF-8 byte-order mark."""
    with open(path, "rb") as file:
        if file.read(3) == BOM.encode("utf-8"):
            raise ManifestFormatError(bom_problem(path))


def nonfinite_problem(samples) -> str | None:
    """What is wrong with audio samples (a numpy array or torch tensor) holding NaN or inf, else None.

    Only float audio files (WAV subtype FLOAT or DOUBLE) can hold them; a cheap check on the host, once per read.
    """
    import numpy as np

    finite = np.isfinite(np.asarray(samples))
    if finite.all():
        return None
    bad = np.flatnonzero(~finite.reshape(len(finite), -1).all(axis=1))  # per sample (frame), over channels
    return (f"{len(bad)} samples are NaN or inf (first at sample {int(bad[0])}); the models would train on, and "
            "extract, NaN")


def read_manifest(tsv: Path) -> tuple[Path, list[tuple[str, int]]]:
    """``(audio root, [(relative path, num_samples), ...])`` of a fairseq audio manifest."""
    if not tsv.is_file():
        raise FileNotFoundError(f"{tsv}: no such manifest")
    refuse_bom(tsv)
    lines = tsv.read_text(encoding="utf-8").splitlines()
    if not lines or not lines[0].strip():
        raise ManifestFormatError(f"{tsv}:1: the first line must be the audio root directory")
    entries = []
    for number, line in enumerate(lines[1:], 2):
        fields = line.split("\t")
        if len(fields) != 2 or not fields[0] or not fields[1].isdigit() or int(fields[1]) == 0:
            raise ManifestFormatError(f"{tsv}:{number}: expected 'relative/path<TAB>num_samples > 0', got {line!r}")
        entries.append((fields[0], int(fields[1])))
    if not entries:
        raise ManifestFormatError(f"{tsv}: no utterances")
    return Path(lines[0].strip()), entries


def audio_files(tsv: Path) -> list[tuple[Path, int]]:
    """``(audio path, num_samples)`` for each utterance of a manifest, in manifest order."""
    root, entries = read_manifest(tsv)
    return [(root / path, samples) for path, samples in entries]


@dataclass(frozen=True)
class Utterance:
    path: str  # relative to the split's audio root, with "/" separators
    num_samples: int
    words: str | None  # None in an unlabeled split


@dataclass(frozen=True)
class Split:
    name: str
    root: Path  # absolute audio root, the first line of the tsv
    utterances: list[Utterance]
    labeled: bool = True


def letters(words: str) -> str:
    """``"HELLO WORLD"`` -> ``"H E L L O | W O R L D |"``: fairseq's letter targets."""
    return " ".join(f"{' '.join(word)} {WORD_BOUNDARY}" for word in words.split())


def read_split(name: str, root: Path, subdirs: tuple[str, ...] = (".",), labeled: bool = True) -> Split:
    """Every ``*.flac`` under ``root/<subdir>`` (LibriSpeech layout), with its words from the ``*.trans.txt`` files.

    Raises ``ManifestError`` listing every audio file without a transcript line and every transcript line
    without an audio file (when ``labeled``), and every empty, truncated or unreadable audio file.
    """
    root = root.resolve()
    problems: list[str] = []
    audio: list[Path] = []
    for subdir in subdirs:
        directory = root / subdir
        found = sorted(directory.rglob("*" + AUDIO_SUFFIX)) if directory.is_dir() else []
        if not found:
            problems.append(f"{directory}: no {AUDIO_SUFFIX} files (or no such directory)")
        audio += found
    words = _read_transcripts(root, subdirs, set(audio), problems) if labeled else {}
    if labeled:
        for path in audio:
            if path not in words:
                expected = path.parent / f"{'-'.join(path.stem.split('-')[:2])}{TRANSCRIPT_SUFFIX}"
                problems.append(f"{path}: no transcript (expected a line starting '{path.stem} ' in {expected})")
    found = _map_files(_inspect_audio, audio)
    problems += [f"{path}: {what}" for path, what in zip(audio, found, strict=True) if isinstance(what, str)]
    if problems:
        raise ManifestError("\n".join(problems))
    utterances = [
        Utterance(path.relative_to(root).as_posix(), frames, words.get(path))
        for path, (_, _, frames) in zip(audio, found, strict=True)
    ]
    return Split(name, root, sorted(utterances, key=lambda u: u.path), labeled)


def read_splits(requests: list[dict]) -> list[Split]:
    """``read_split(**request)`` for each request; one ``ManifestError`` lists the problems of all of them."""
    splits, problems = [], []
    for request in requests:
        try:
            splits.append(read_split(**request))
        except ManifestError as error:
            problems += str(error).splitlines()
    if problems:
        raise ManifestError("\n".join(dict.fromkeys(problems)))  # nested splits share folders: report once
    return splits


def _read_transcripts(root: Path, subdirs: tuple[str, ...], audio: set[Path], problems: list[str]) -> dict[Path, str]:
    """Upper-case words keyed by audio path, from every transcript file under ``root/<subdir>``."""
    words: dict[Path, str] = {}
    for subdir in subdirs:
        for transcript in sorted((root / subdir).rglob("*" + TRANSCRIPT_SUFFIX)):
            lines = transcript.read_text(encoding="utf-8").splitlines()
            for number, line in enumerate(lines, 1):
                utterance_id, *text = line.split(maxsplit=1) or [""]
                path = transcript.parent / (utterance_id + AUDIO_SUFFIX)
                where = f"{transcript}:{number}:"
                if not utterance_id:
                    problems.append(f"{where} empty line")
                elif not text:
                    problems.append(f"{where} no words after the utterance id {utterance_id!r}")
                elif path not in audio:
                    problems.append(f"{where} transcript of {utterance_id!r}, but there is no audio file {path}")
                elif path in words:
                    problems.append(f"{where} second transcript of {utterance_id!r}")
                else:
                    words[path] = " ".join(text[0].upper().split())
    return words


def _map_files(function, paths: list[Path]) -> list:
    """``[function(path) for path in paths]``, on several threads."""

    def apply(chunk):
        return [function(path) for path in chunk]

    chunks = [paths[start : start + IO_CHUNK] for start in range(0, len(paths), IO_CHUNK)]
    with ThreadPoolExecutor(IO_THREADS) as pool:
        return [result for results in pool.map(apply, chunks) for result in results]


def output_paths(out: Path, names: list[str], labeled: list[str]) -> list[Path]:
    """The files that ``write_manifests`` writes for these splits."""
    paths = [
        out / f"{name}.{kind}" for name in names for kind in (("tsv", "wrd", "ltr") if name in labeled else ("tsv",))
    ]
    return paths + ([out / LETTER_DICTIONARY] if labeled else [])


def refuse_overwrite(paths: list[Path], force: bool) -> None:
    existing = [path for path in paths if path.exists()]
    if existing and not force:
        raise ManifestError("\n".join(f"{path}: exists; pass --force to overwrite it" for path in existing))


def write_manifests(out: Path, splits: list[Split], force: bool = False) -> list[Path]:
    """Writes ``<split>.tsv`` (and ``.wrd``, ``.ltr`` for labeled splits) and ``dict.ltr.txt``, all or nothing.

    The letter dictionary counts each distinct utterance once, so that nested splits (LibriLight's 10 min
    inside 1 h inside 10 h) do not count theirs several times.
    """
    texts: dict[Path, str] = {}
    letter_lines: dict[Path, str] = {}
    for split in splits:
        texts[out / f"{split.name}.tsv"] = "".join(
            [f"{split.root}\n"] + [f"{u.path}\t{u.num_samples}\n" for u in split.utterances]
        )
        if split.labeled:
            ltr = [letters(u.words) for u in split.utterances]
            texts[out / f"{split.name}.wrd"] = "".join(f"{u.words}\n" for u in split.utterances)
            texts[out / f"{split.name}.ltr"] = "".join(f"{line}\n" for line in ltr)
            letter_lines.update((split.root / u.path, line) for u, line in zip(split.utterances, ltr, strict=True))
    if letter_lines:
        counts = Counter(symbol for line in letter_lines.values() for symbol in line.split())
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        texts[out / LETTER_DICTIONARY] = "".join(f"{symbol} {count}\n" for symbol, count in ranked)
    refuse_overwrite(list(texts), force)
    _write_all(out, texts)
    return list(texts)


def write_split_manifests(out: Path, requests: list[dict], force: bool = False) -> list[Path]:
    """Reads the splits (``read_split`` arguments, one dict each) and writes their manifest set; reports each.

    Existing outputs are refused before any audio is scanned.
    """
    names = [request["name"] for request in requests]
    labeled = [request["name"] for request in requests if request.get("labeled", True)]
    refuse_overwrite(output_paths(out, names, labeled), force)
    splits = read_splits(requests)
    written = write_manifests(out, splits, force)
    for split in splits:
        print(f"{split.name}: {len(split.utterances)} utterances")
    print(f"wrote {', '.join(path.name for path in written)} to {out}")
    return written


def _write_all(out: Path, texts: dict[Path, str]) -> None:
    """Writes every file to a temporary name first and renames them only once all are written."""
    out.mkdir(parents=True, exist_ok=True)
    staged: dict[Path, Path] = {}
    try:
        for path, text in texts.items():
            staged[path] = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            staged[path].write_text(text, encoding="utf-8")
        for path, temporary in staged.items():
            temporary.replace(path)
    finally:
        for temporary in staged.values():
            temporary.unlink(missing_ok=True)


def text_lines(path: Path, problems: list[str]) -> list[str]:
    """The lines of a UTF-8 text file; a byte that is not UTF-8 is reported at its line and ends the file there.

    A byte-order mark is reported and left out of the lines, so that the other checks see the rest.
    """
    data = path.read_bytes()
    if data.startswith(BOM.encode("utf-8")):
        problems.append(bom_problem(path))
        data = data[len(BOM.encode("utf-8")):]
    try:
        return data.decode("utf-8").splitlines()
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        problems.append(f"{path}:{line}: not UTF-8 (byte {data[error.start]:#04x}: {error.reason})")
        return data[:error.start].decode("utf-8").splitlines()[: line - 1]


def read_dictionary(path: Path, problems: list[str]) -> set[str]:
    """The symbols of a fairseq ``Dictionary`` file (``<symbol> <count>[ #fairseq:overwrite]`` per line).

    A symbol listed twice without ``#fairseq:overwrite`` is a problem: fairseq's ``Dictionary`` refuses it.
    """
    first_at: dict[str, int] = {}
    for number, line in enumerate(text_lines(path, problems), 1):
        overwrite = line.rstrip().endswith(" #fairseq:overwrite")
        symbol, _, count = line.removesuffix(" #fairseq:overwrite").rstrip().rpartition(" ")
        if not symbol or not count.isdigit():
            problems.append(f"{path}:{number}: expected '<symbol> <count>', got {line!r}")
        elif symbol in first_at and not overwrite:
            problems.append(f"{path}:{number}: the symbol {symbol!r} is listed again (first at line {first_at[symbol]})")
        else:
            first_at.setdefault(symbol, number)
    return set(first_at)


def validate_manifest(
    tsv: Path, labels: str | None = None, dictionary: Path | None = None, sample_rate: int = 16000
) -> tuple[list[str], str]:
    """Checks a manifest (and its ``<name>.<labels>`` file) as fairseq's audio datasets will read it.

    Returns every problem as ``<file>:<line>: <what is wrong>``, and a one-line summary.
    """
    numbered: list[tuple[int, str]] = []  # (line, what is wrong) in the tsv
    encoding: list[str] = []
    lines = text_lines(tsv, encoding)
    root = Path(lines[0].strip()) if lines else None
    if root is None or not root.is_dir():
        numbered.append((1, f"the first line must be an existing audio root directory, got {lines[:1]}"))
    rows: list[tuple[int, str, int]] = []
    first_seen: dict[str, int] = {}
    for number, line in enumerate(lines[1:], 2):
        fields = line.strip().split("\t")  # as fairseq's FileAudioDataset reads it
        if len(fields) != 2 or not fields[0] or not (fields[1].isascii() and fields[1].isdigit()):
            numbered.append((number, f"expected 'relative/path<TAB>num_samples', got {line!r}"))
        elif fields[0] in first_seen:
            numbered.append((number, f"{fields[0]} is listed again (first at line {first_seen[fields[0]]})"))
        elif int(fields[1]) == 0:
            numbered.append((number, f"the stated number of samples of {fields[0]} is 0"))
        else:
            rows.append((number, fields[0], int(fields[1])))
        first_seen.setdefault(fields[0], number)
    if len(lines) == 1:
        numbered.append((1, "no utterances after the audio root line"))
    if root is not None and root.is_dir():
        found = _map_files(_inspect_audio, [root / path for _, path, _ in rows])
        for (number, path, stated), audio in zip(rows, found, strict=True):
            numbered += [(number, f"{root / path}: {what}") for what in _audio_problems(audio, stated, sample_rate)]
    problems = encoding + [f"{tsv}:{number}: {what}" for number, what in sorted(numbered, key=lambda item: item[0])]
    utterances = len(lines) - 1
    summary = f"{tsv}: {utterances} utterances, {sum(s for _, _, s in rows) / sample_rate / 3600:.2f} hours"
    if labels:
        dictionary = dictionary or tsv.parent / f"dict.{labels}.txt"
        problems += _label_problems(tsv.with_suffix(f".{labels}"), utterances, dictionary)
        summary += f", {labels} labels checked against {dictionary}"
    return problems, summary


def _inspect_audio(path: Path) -> tuple[int, int, int] | str:
    """``(channels, sample_rate, frames)``, or what is wrong; decodes the last sample to catch truncated files."""
    if not path.is_file():
        return "no such file"
    if path.stat().st_size == 0:
        return "empty file (0 bytes)"
    try:
        audio = soundfile.SoundFile(str(path))
    except RuntimeError as error:  # soundfile.LibsndfileError
        return f"unreadable audio ({error})"
    with audio:
        if audio.frames == 0:
            return "empty audio (0 samples)"
        try:
            audio.seek(audio.frames - 1)
            decoded = len(audio.read(1))
        except RuntimeError as error:
            decoded = error
        if decoded != 1:
            return f"truncated or corrupt audio: cannot decode sample {audio.frames} of {audio.frames} ({decoded})"
        if audio.subtype in FLOAT_SUBTYPES:  # only float files can hold NaN or inf: read them whole
            audio.seek(0)
            problem = nonfinite_problem(audio.read(dtype="float32"))
            if problem:
                return problem
        return audio.channels, audio.samplerate, audio.frames


def _audio_problems(audio: tuple[int, int, int] | str, stated: int, sample_rate: int) -> list[str]:
    if isinstance(audio, str):
        return [audio]
    channels, rate, frames = audio
    problems = []
    if channels != 1:
        problems.append(f"{channels} channels, expected mono")
    if rate != sample_rate:
        problems.append(f"sample rate {rate} Hz, expected {sample_rate} Hz")
    if frames != stated:
        problems.append(f"has {frames} samples, the manifest says {stated}")
    return problems


def _label_problems(label_file: Path, utterances: int, dictionary: Path) -> list[str]:
    problems: list[str] = []
    for path in (label_file, dictionary):
        if not path.is_file():
            problems.append(f"{path}: no such file")
    if problems:
        return problems
    symbols = read_dictionary(dictionary, problems)
    lines = text_lines(label_file, problems)
    trailing_blank = len(lines) == utterances + 1 and not lines[-1].strip()
    for number, line in enumerate(lines, 1):
        unknown = sorted(set(line.split()) - symbols)
        if trailing_blank and number == len(lines):
            problems.append(f"{label_file}:{number}: a blank line after the last label; delete it")
        elif not line.strip():
            problems.append(f"{label_file}:{number}: empty label")
        elif unknown:
            problems.append(f"{label_file}:{number}: symbols not in {dictionary}: {' '.join(unknown)}")
    if len(lines) != utterances and not trailing_blank:  # after the per-line problems, at the line where the files part
        problems.append(
            f"{label_file}:{min(len(lines), utterances) + 1}: {len(lines)} label lines for {utterances} utterances"
        )
    return problems
