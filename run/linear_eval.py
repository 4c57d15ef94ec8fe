"""Linear evaluation of a spectrogram encoder (M2D, MSM-MAE) on a labeled classification manifest.

    python run/linear_eval.py --checkpoint checkpoint_last.pt --train train.tsv --valid valid.tsv --test test.tsv

Each ``<name>.tsv`` (fairseq manifest) needs a ``<name>.label`` next to it: one class label per line, in
manifest order. As in the M2D papers (EVAR): frozen clip embeddings (the mean over time of the
frame-level features of the whole clip), standardised with the training set's statistics, a single
linear layer trained with Adam and early stopping on validation accuracy (patience 20 epochs, at most
200), whose best validation weights are then scored on the test set. As in the DWM paper, this runs three
times (``--runs``) with seeds ``--seed``, ``--seed + 1``, ... and reports the mean and standard deviation.

``--random-init`` evaluates a randomly initialised encoder of the same architecture (and the same
log-mel statistics) instead of the checkpoint's weights: the baseline a pretrained encoder should beat.
Each run then draws its own encoder from its seed, so the spread includes the initialisation's.
"""

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import List, Tuple

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's maskssl_fairseq, not an installed one


def read_labeled_manifest(tsv: Path) -> Tuple[List[Path], List[str]]:
    from maskssl_fairseq.data.manifests import audio_files, refuse_bom

    entries = audio_files(tsv)
    label_file = tsv.with_suffix(".label")
    if not label_file.is_file():
        raise FileNotFoundError(f"{label_file}: no such label file (one class label per line, next to {tsv.name})")
    refuse_bom(label_file)
    labels = label_file.read_text(encoding="utf-8").splitlines()
    if len(labels) != len(entries):
        raise ValueError(f"{label_file}:{min(len(labels), len(entries)) + 1}: {len(labels)} labels for "
                         f"{len(entries)} utterances in {tsv}")
    for number, label in enumerate(labels, 1):
        if not label.strip():
            raise ValueError(f"{label_file}:{number}: empty label")
    return [path for path, _ in entries], [label.strip() for label in labels]


def load_encoder(checkpoint: Path, random_init: bool, device: torch.device):
    """The checkpoint's model, in eval mode; with ``random_init`` the same architecture freshly initialised
    (keeping the checkpoint's log-mel statistics, which are data, not learned weights). A checkpoint of another
    kind, or a release not yet converted, is an error naming the file (and the command that converts it)."""
    from maskssl_fairseq.models.audio_classifier import load_pretrained

    model, _ = load_pretrained(str(checkpoint), random_init, field="--checkpoint")
    return model.to(device).eval()


@torch.inference_mode()
def clip_embeddings(model, paths: List[Path], sample_rate: int, device: torch.device) -> torch.Tensor:
    from maskssl_fairseq.tasks.spectrogram_pretraining import load_audio

    rows = []
    for path in paths:
        waveform = load_audio(path, sample_rate, str(path)).to(device)
        rows.append(model.extract_features(waveform.unsqueeze(0))["clip"][0].float().cpu())
    return torch.stack(rows)


def train_linear_classifier(
    features: dict, labels: dict, *, lr: float, max_epochs: int, patience: int, batch_size: int, seed: int
) -> dict:
    """Standardises with the train statistics, trains one linear layer, early-stops on validation accuracy.

    ``features`` / ``labels`` map ``train``, ``valid``, ``test`` to ``[N, D]`` tensors / lists of strings.
    Returns the accuracies of the best-on-validation weights and the epoch they come from.
    """
    classes = sorted(set(labels["train"]))
    index = {name: i for i, name in enumerate(classes)}
    for split in ("valid", "test"):
        unseen = sorted(set(labels[split]) - set(classes))
        if unseen:
            raise ValueError(f"{split} labels not in the training set: {' '.join(unseen)}")
    mean = features["train"].mean(dim=0)
    std = features["train"].std(dim=0, unbiased=False).clamp_min(1e-8)
    x = {split: (f - mean) / std for split, f in features.items()}
    y = {split: torch.tensor([index[label] for label in labels[split]]) for split in labels}

    torch.manual_seed(seed)
    classifier = nn.Linear(x["train"].shape[1], len(classes))
    optimizer = torch.optim.Adam(classifier.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=1e-8)
    batch_size = min(batch_size, len(y["train"]))

    def accuracy(split: str) -> float:
        with torch.no_grad():
            return float((classifier(x[split]).argmax(dim=1) == y[split]).float().mean())

    best = (-1.0, 0, None)
    for epoch in range(1, max_epochs + 1):
        for batch in torch.randperm(len(y["train"])).split(batch_size):
            optimizer.zero_grad()
            nn.functional.cross_entropy(classifier(x["train"][batch]), y["train"][batch]).backward()
            optimizer.step()
        valid = accuracy("valid")
        if valid > best[0]:
            best = (valid, epoch, copy.deepcopy(classifier.state_dict()))
        elif epoch - best[1] >= patience:
            break
    classifier.load_state_dict(best[2])
    return {"valid_accuracy": best[0], "test_accuracy": accuracy("test"), "best_epoch": best[1],
            "classes": len(classes), "feature_dim": x["train"].shape[1]}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="an m2d or msm_mae training checkpoint")
    for split in ("train", "valid", "test"):
        parser.add_argument(f"--{split}", type=Path, required=True, help=f"{split} manifest with a .label file")
    parser.add_argument("--random-init", action="store_true", help="evaluate a randomly initialised encoder")
    parser.add_argument("--lr", type=float, default=3e-5, help="Adam learning rate (EVAR's m2d.yaml: 3e-5)")
    parser.add_argument("--max-epochs", type=int, default=200, help="EVAR: 200")
    parser.add_argument("--patience", type=int, default=20, help="epochs without a better validation accuracy (EVAR: 20)")
    parser.add_argument("--batch-size", type=int, default=200, help="EVAR: min(200, N)")
    parser.add_argument("--runs", type=int, default=3, help="classifiers (and random encoders) to average (DWM paper: 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first run")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    if args.runs < 1:
        parser.error(f"--runs {args.runs}: needs at least 1")
    paths, labels = {}, {}
    for split in ("train", "valid", "test"):  # every input is checked before the slow part starts
        paths[split], labels[split] = read_labeled_manifest(getattr(args, split))
    device = torch.device(args.device)
    runs = []
    for seed in range(args.seed, args.seed + args.runs):
        if args.random_init or not runs:
            torch.manual_seed(seed)  # the random-init encoder of this run
            model = load_encoder(args.checkpoint, args.random_init, device)
            features = {split: clip_embeddings(model, paths[split], model.cfg.sample_rate, device) for split in paths}
        runs.append(train_linear_classifier(features, labels, lr=args.lr, max_epochs=args.max_epochs,
                                            patience=args.patience, batch_size=args.batch_size, seed=seed))
    accuracies = torch.tensor([run["test_accuracy"] for run in runs])
    result = {
        "encoder": "random init" if args.random_init else str(args.checkpoint),
        "test_accuracy": float(accuracies.mean()),
        "test_accuracy_std": float(accuracies.std(unbiased=False)),
        "runs": runs,
    }
    print(json.dumps(result))
    print(f"test accuracy: {100 * result['test_accuracy']:.2f} +- {100 * result['test_accuracy_std']:.2f}% "
          f"({len(runs)} runs)")
    return result


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"error: {error}")
