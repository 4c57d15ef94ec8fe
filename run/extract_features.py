"""Layer features of every utterance of a manifest, from any checkpoint of the plugin (speech or spectrogram
models) or of fairseq's speech models.

    python run/extract_features.py --checkpoint checkpoint_best.pt --manifest demo/manifests/dev.tsv \\
        --layer all --out features/dev [--pool mean] [--batch-size 8] [--device cuda] [--force]

Layers as :mod:`maskssl_fairseq.features` numbers them: 0 is the CNN's output projection (speech) or the patch
embedding (spectrogram models), 1..L the transformer layers (SUPERB's order; ``--layer all`` keeps every one).
Writes ``<n>.npy`` per utterance (``frames x dim``, ``layers x frames x dim`` for ``all``; ``--pool mean``
averages over frames, ``--pool embedding`` writes the utterance embedding, EAT's CLS token) and ``index.tsv``
(file, audio path, frames); frame ``i`` of every file is centred at ``first_frame + i * frame_step`` seconds
(``timing.json``). Clips of any length: long ones in pieces of the training width; utterances are
batched by length with the padding handled (a padded batch gives each utterance's features alone). Audio is
normalised per utterance when the model was trained so (``task.normalize``). A ``wav2vec_ctc`` fine-tune needs
``--data-dir`` (the folder of its ``dict.ltr.txt``) unless its training ``task.data`` is still there.
"""

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from maskssl_fairseq.data.manifests import audio_files, nonfinite_problem  # noqa: E402
from maskssl_fairseq.features import FeatureExtractor, select_layers  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--manifest", required=True, type=Path, help="fairseq .tsv manifest")
    parser.add_argument("--layer", required=True,
                        help="N (0 = CNN projection or patch embedding, 1..L transformer layers) or all")
    parser.add_argument("--pool", choices=["none", "mean", "embedding"], default="none",
                        help="mean: average over frames; embedding: the utterance embedding (ignores --layer)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--batch-size", type=int, default=8, help="utterances per forward")
    parser.add_argument("--data-dir", help="replaces the checkpoint's task.data (a fine-tune's dict.ltr.txt)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--force", action="store_true", help="write into a non-empty --out")
    args = parser.parse_args(argv)
    if args.layer != "all" and not args.layer.isdigit():
        parser.error(f"--layer {args.layer}: a layer number or 'all'")
    return args


def read_audio(path: Path, sample_rate: int, where: str) -> torch.Tensor:
    """The mono waveform of ``path``; ``where`` (``manifest:line``) names it when it cannot be used."""
    audio, rate = sf.read(str(path), dtype="float32")
    if audio.ndim != 1:
        raise ValueError(f"{where}: {path}: {audio.ndim} channels; the models read mono audio")
    if rate != sample_rate:
        raise ValueError(f"{where}: {path}: {rate} Hz; the model reads {sample_rate} Hz audio")
    problem = nonfinite_problem(audio)
    if problem:
        sys.exit(f"{where}: {path}: {problem}")
    return torch.from_numpy(audio)


FEATURE_FILE = re.compile(r"\d{6}\.npy")  # <n>.npy, as written below


def owned_outputs(out: Path) -> list:
    """What an earlier run wrote into ``out``: its ``<n>.npy`` files, ``index.tsv`` and ``timing.json`` (nothing
    else is touched)."""
    return [path for path in out.iterdir()
            if FEATURE_FILE.fullmatch(path.name) or path.name in ("index.tsv", "timing.json")]


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()) and not args.force:
        sys.exit(f"{args.out} is not empty; pass --force to write into it")
    utterances = audio_files(args.manifest)
    extractor = FeatureExtractor.from_checkpoint(args.checkpoint, args.data_dir, args.device)
    layer = None if args.layer == "all" else int(args.layer)
    args.out.mkdir(parents=True, exist_ok=True)
    stale = owned_outputs(args.out)
    for path in stale:  # an earlier run's features would otherwise stay beside this run's index.tsv
        path.unlink()
    if stale:
        print(f"--force: removed {len(stale)} feature files and index of an earlier run from {args.out}")

    order = sorted(range(len(utterances)), key=lambda i: utterances[i][1])  # similar lengths, little padding
    index = [""] * len(utterances)
    start = time.perf_counter()
    with tqdm(total=len(utterances), unit="utt", desc="features") as progress:
        for first in range(0, len(order), args.batch_size):
            batch = order[first:first + args.batch_size]
            features = extractor([read_audio(utterances[i][0], extractor.sample_rate, f"{args.manifest}:{i + 2}")
                                  for i in batch])
            selected = select_layers(features.layers, layer)  # [B, T, C] or [B, L+1, T, C]
            for row, i in enumerate(batch):
                frames = int(features.lengths[row])
                clip = selected[row][..., :frames, :]
                if args.pool == "mean":
                    clip = clip.mean(dim=-2)
                elif args.pool == "embedding":
                    clip = features.embedding[row]
                name = f"{i:06d}.npy"
                np.save(args.out / name, clip.float().cpu().numpy())
                index[i] = f"{name}\t{utterances[i][0]}\t{frames}"
            progress.update(len(batch))
    elapsed = time.perf_counter() - start
    (args.out / "index.tsv").write_text("file\taudio\tframes\n" + "\n".join(index) + "\n")
    timing = {"first_frame": extractor.first_frame_seconds, "frame_step": extractor.frame_seconds}
    (args.out / "timing.json").write_text(json.dumps(timing) + "\n")
    print(f"wrote {len(utterances)} feature files (layer {args.layer}, pool {args.pool}) to {args.out} in "
          f"{elapsed:.1f} s: {len(utterances) / elapsed:.1f} utterances/s on {args.device}")


if __name__ == "__main__":
    main()
