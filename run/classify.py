"""Score a manifest with an audio-classification checkpoint, or print the top labels of one audio file.

    python run/classify.py --checkpoint <finetune>/checkpoints/checkpoint_best.pt --manifest data/esc50/test.tsv
    python run/classify.py --checkpoint <finetune>/checkpoints/checkpoint_best.pt --audio clip.wav --top-k 5

The checkpoint holds everything needed (pretraining configuration, label names, front-end statistics); the
manifest's ``.label`` file beside it gives the references. Prints accuracy (single-label tasks) or mAP
(multi-label), as the fine-tuning validation computes them, and writes nothing.
"""

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import maskssl_fairseq  # noqa: E402,F401  (registers the models)
from maskssl_fairseq.criterions.audio_classification import mean_average_precision  # noqa: E402
from maskssl_fairseq.models.audio_classifier import SpectrogramClassifierModel  # noqa: E402
from maskssl_fairseq.tasks.audio_classification import LabeledCropDataset  # noqa: E402
from maskssl_fairseq.tasks.spectrogram_pretraining import load_audio  # noqa: E402


def load_classifier(checkpoint: Path, device: torch.device):
    """(model in eval mode, task configuration with the run's ``seed``) of a fine-tuned checkpoint."""
    from fairseq import checkpoint_utils

    state = checkpoint_utils.load_checkpoint_to_cpu(str(checkpoint))
    cfg = OmegaConf.create(state["cfg"])
    if cfg.model.get("_name") != "spectrogram_classifier":
        raise SystemExit(f"error: {checkpoint} holds a {cfg.model.get('_name')!r} model, not a fine-tuned "
                         "spectrogram_classifier")
    model = SpectrogramClassifierModel.build_model(cfg.model)
    model.load_state_dict(state["model"], strict=True)
    task_cfg = cfg.task
    task_cfg.seed = cfg.common.seed  # the crop positions of clips longer than crop_samples, as validated
    return model.eval().to(device), task_cfg


@torch.no_grad()
def score_manifest(model, task_cfg, manifest: Path, batch_size: int, device: torch.device) -> dict:
    dataset = LabeledCropDataset(manifest, manifest.with_suffix(".label"), list(model.cfg.labels), task_cfg.multi_label,
                                 sample_rate=task_cfg.sample_rate, crop_samples=task_cfg.crop_samples, seed=task_cfg.seed,
                                 random_crop=False, shuffle=False)
    scores, targets = [], []
    for start in range(0, len(dataset), batch_size):
        batch = dataset.collater([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        logits = model(**{k: v.to(device) for k, v in batch["net_input"].items()})["logits"].float()
        scores.append(logits.cpu())
        targets.append(batch["target"])
    scores, targets = torch.cat(scores), torch.cat(targets)
    if task_cfg.multi_label:
        return {"clips": len(dataset), "mAP": mean_average_precision(torch.sigmoid(scores), targets)}
    return {"clips": len(dataset), "accuracy": float((scores.argmax(-1) == targets.argmax(-1)).float().mean())}


@torch.no_grad()
def top_labels(model, task_cfg, audio: Path, k: int, device: torch.device):
    waveform = load_audio(audio, task_cfg.sample_rate, str(audio), task_cfg.crop_samples)
    length = torch.tensor([waveform.shape[0]], device=device)
    source = F.pad(waveform, (0, task_cfg.crop_samples - waveform.shape[0])).unsqueeze(0).to(device)
    logits = model(source, length)["logits"][0].float()
    probabilities = torch.sigmoid(logits) if task_cfg.multi_label else logits.softmax(-1)
    values, indices = probabilities.topk(min(k, len(probabilities)))
    return [(model.cfg.labels[int(i)], float(v)) for v, i in zip(values, indices)]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--manifest", type=Path, help="a <split>.tsv with <split>.label beside it: prints the score")
    source.add_argument("--audio", type=Path, help="one audio file: prints its top labels")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    model, task_cfg = load_classifier(args.checkpoint, device)
    if args.manifest is not None:
        result = score_manifest(model, task_cfg, args.manifest, args.batch_size, device)
        metric = "mAP" if task_cfg.multi_label else "accuracy"
        print(f"{args.manifest}: {result['clips']} clips, {metric} {result[metric]:.4f}")
    else:
        for label, probability in top_labels(model, task_cfg, args.audio, args.top_k, device):
            print(f"{probability:.4f}\t{label}")


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError, RuntimeError) as error:  # bad manifests, labels or audio
        sys.exit(f"error: {error}")
