"""Frame labels for a small HuBERT teacher: k-means over MFCCs at 50 Hz, HuBERT's first-iteration targets.

    python examples/armhubert/mfcc_labels.py --data <manifest dir> --splits pretrain,dev [--out <label dir>]

writes ``<split>.km`` (one line of space-separated cluster ids per utterance, in manifest order) and
``dict.km.txt`` into ``--out`` (default: next to the manifests), as fairseq's ``hubert_pretraining`` task reads
them (``task.label_dir``). The clusters are
fitted on the first split. Meant for the CPU demo and the tests (a teacher that fairseq trains in seconds);
real HuBERT labels come from fairseq's ``examples/hubert/simple_kmeans`` recipe.
"""

import argparse
from pathlib import Path
from typing import Sequence

import soundfile as sf
import torch
import torchaudio

from maskssl_fairseq.data.manifests import audio_files

SAMPLE_RATE = 16000
HOP = 320  # 50 Hz, HuBERT BASE's frame rate
WINDOW = 400  # HuBERT's conv front end sees 400 samples per frame, so both give the same frame count


def mfcc_frames(audio_path: Path, transform: torchaudio.transforms.MFCC) -> torch.Tensor:
    """``[frames, 39]``: 13 MFCCs with deltas and double deltas."""
    audio, rate = sf.read(str(audio_path), dtype="float32")
    if rate != SAMPLE_RATE or audio.ndim != 1:
        raise ValueError(f"{audio_path}: {rate} Hz with shape {audio.shape}, expected mono {SAMPLE_RATE} Hz")
    mfcc = transform(torch.from_numpy(audio))  # [13, frames]
    deltas = torchaudio.functional.compute_deltas(mfcc)
    return torch.cat([mfcc, deltas, torchaudio.functional.compute_deltas(deltas)]).T


def kmeans(points: torch.Tensor, clusters: int, iterations: int, generator: torch.Generator) -> torch.Tensor:
    """Lloyd's k-means on standardised points; returns the centroids ``[clusters, dim]``."""
    centroids = points[torch.randperm(len(points), generator=generator)[:clusters]].clone()
    for _ in range(iterations):
        assignment = torch.cdist(points, centroids).argmin(dim=1)
        for k in range(len(centroids)):
            members = points[assignment == k]
            if len(members):
                centroids[k] = members.mean(dim=0)
    return centroids


def write_labels(
    data: Path,
    splits: Sequence[str],
    out: Path = None,
    clusters: int = 32,
    iterations: int = 10,
    seed: int = 0,
    force: bool = False,
) -> None:
    out = Path(out or data)
    targets = [out / f"{split}.km" for split in splits] + [out / "dict.km.txt"]
    if not force and any(path.exists() for path in targets):
        raise FileExistsError(f"{', '.join(str(p) for p in targets if p.exists())} exist: pass --force to overwrite")
    out.mkdir(parents=True, exist_ok=True)
    transform = torchaudio.transforms.MFCC(
        sample_rate=SAMPLE_RATE, n_mfcc=13,
        melkwargs={"n_fft": WINDOW, "win_length": WINDOW, "hop_length": HOP, "n_mels": 40, "center": False},
    )
    features = {split: [mfcc_frames(p, transform) for p, _ in audio_files(data / f"{split}.tsv")] for split in splits}
    fit = torch.cat(features[splits[0]])
    mean, std = fit.mean(dim=0), fit.std(dim=0).clamp(min=1e-5)
    generator = torch.Generator().manual_seed(seed)
    centroids = kmeans((fit - mean) / std, min(clusters, len(fit)), iterations, generator)
    counts = torch.zeros(len(centroids), dtype=torch.long)
    for split, utterances in features.items():
        lines = []
        for frames in utterances:
            ids = torch.cdist((frames - mean) / std, centroids).argmin(dim=1)
            counts += torch.bincount(ids, minlength=len(centroids))
            lines.append(" ".join(str(int(i)) for i in ids))
        (out / f"{split}.km").write_text("\n".join(lines) + "\n")
    (out / "dict.km.txt").write_text("".join(f"{k} {max(int(c), 1)}\n" for k, c in enumerate(counts)))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="directory with <split>.tsv manifests")
    parser.add_argument("--splits", required=True, help="comma-separated splits; k-means is fitted on the first")
    parser.add_argument("--out", type=Path, help="where to write the labels (default: --data)")
    parser.add_argument("--clusters", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="overwrite existing label files")
    args = parser.parse_args(argv)
    splits = [s for s in args.splits.split(",") if s]
    try:
        write_labels(args.data, splits, args.out, args.clusters, seed=args.seed, force=args.force)
    except (FileExistsError, ValueError) as err:
        raise SystemExit(f"[mfcc_labels] {err}") from None
    print(f"[mfcc_labels] wrote {args.splits.replace(',', '.km, ')}.km and dict.km.txt in {args.out or args.data}")


if __name__ == "__main__":
    main()
