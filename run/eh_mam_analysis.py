"""EH-MAM analyses in the manner of the paper's Figures 5 and 6, each written as a PNG and a markdown table.

    # Figure 5: how much more CTC loss and WER rise when the loss predictor picks the masked frames
    python run/eh_mam_analysis.py masking --finetuned <wav2vec_ctc checkpoint> --pretrained <EH-MAM checkpoint> \\
        --manifest <dir>/dev.tsv --out analysis/ [--fractions 0.1 0.2 0.3 0.4]
    # Figure 6: reconstruction loss of easy-to-hard against hard-only masking over a short pretraining
    python run/eh_mam_analysis.py curriculum --data <manifest dir> --out analysis/ [--updates 300] \\
        [--config-name tiny] [hydra overrides ...]

``masking`` scores every frame with the *pretrained* model's teacher loss predictor, masks a fraction of the
frames of each utterance in spans on the top-scored frames (``easy_to_hard_mask`` with hard fraction 1) or
the same number of frames in random spans (``span_mask``, averaged over ``--random-draws``), feeds the
masked CNN features through the *fine-tuned* encoder, and reports the relative rise of the CTC loss and of
the greedy WER over the unmasked input. ``curriculum`` runs ``fairseq-hydra-train`` twice with the same
seed: the linear easy-to-hard ramp, and ``hard_fraction_schedule=constant`` at ``hard_fraction_end`` 1.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import soundfile as sf
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "run"))
from decode import error_rate, greedy, reference_words  # noqa: E402

from maskssl_fairseq.checkpoints import load_finetuned  # noqa: E402
from maskssl_fairseq.data.manifests import audio_files  # noqa: E402
from maskssl_fairseq.masking import easy_to_hard_mask, span_mask  # noqa: E402


def prepare_out(out: Path, names: List[str], force: bool) -> None:
    existing = [out / n for n in names if (out / n).exists()]
    if existing and not force:
        sys.exit(f"{existing[0]} exists; pass --force to overwrite it or --out to write elsewhere")
    out.mkdir(parents=True, exist_ok=True)


def load_pretrained(checkpoint: Path, data_dir: Path, device: str):
    from fairseq import checkpoint_utils

    models, _, _ = checkpoint_utils.load_model_ensemble_and_task([str(checkpoint)], arg_overrides={"data": str(data_dir)})
    model = models[0].eval().to(device)
    if getattr(model, "loss_predictor", None) is None or model.ema is None:
        sys.exit(f"{checkpoint}: not an EH-MAM pretraining checkpoint with a teacher loss predictor")
    return model


@torch.inference_mode()
def masking(args) -> None:
    prepare_out(args.out, ["figure5.png", "figure5.md", "figure5.json"], args.force)
    everything = audio_files(args.manifest)
    entries = everything[: args.max_utterances]
    refs = reference_words(args.manifest, len(everything))[: len(entries)]
    model, dictionary, normalize, rate = load_finetuned(args.finetuned, args.manifest.parent, args.device)
    pretrained = load_pretrained(args.pretrained, args.manifest.parent, args.device)
    teacher = pretrained.teacher(next(pretrained.parameters()))
    encoder = model.w2v_encoder
    w2v = encoder.w2v_model
    from maskssl_fairseq.modules.data2vec2_audio import instance_norm_average, mask_frames

    symbols = list(dictionary.symbols)
    blank = dictionary.bos()
    dropped = {blank, dictionary.pad(), dictionary.eos()}
    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    span = w2v.cfg.mask_length
    conditions = ["clean"] + [f"{kind}@{f:g}" for f in args.fractions for kind in ("predictor", "random")]
    losses: Dict[str, float] = {c: 0.0 for c in conditions}
    hyps: Dict[str, List[str]] = {c: [] for c in conditions}

    for index, ((path, _), ref) in enumerate(zip(entries, refs)):
        audio, sample_rate = sf.read(path, dtype="float32")
        if sample_rate != rate:
            sys.exit(f"{path}: sample rate {sample_rate}, the model expects {rate}")
        wave = torch.from_numpy(audio)
        source = (F.layer_norm(wave, wave.shape) if normalize else wave).unsqueeze(0).to(args.device)
        target = dictionary.encode_line(" ".join(list(ref.replace(" ", "|"))) + " |", append_eos=False,
                                        add_if_not_exist=False).long().unsqueeze(0).to(args.device)
        # the pretrained teacher's predicted difficulty of every frame, as EH-MAM's mask sees it
        out = teacher.encoder(pretrained.local_features(source))
        targets = instance_norm_average(out["layer_results"], pretrained.cfg.average_top_k_layers,
                                        pretrained.cfg.instance_norm_target_layer)
        inputs = targets if pretrained.cfg.loss_predictor_input == "targets" else out["x"]
        scores = teacher.loss_predictor(inputs)
        features = w2v.local_features(source)
        frames = features.size(1)

        def evaluate(mask):
            masked = features if mask is None else mask_frames(features, mask, w2v.cfg)
            logits = encoder.proj(w2v.encoder(masked)["x"])
            log_probs = logits.float().log_softmax(-1)
            loss = F.ctc_loss(log_probs.transpose(0, 1), target, torch.tensor([frames]),
                              torch.tensor([target.size(1)]), blank=blank, reduction="sum", zero_infinity=True)
            return loss.item(), greedy(log_probs, torch.tensor([frames]), symbols, dropped)[0]

        loss, hyp = evaluate(None)
        losses["clean"] += loss
        hyps["clean"].append(hyp)
        for fraction in args.fractions:
            loss, hyp = evaluate(easy_to_hard_mask(scores, fraction, span, 1.0, generator=generator))
            losses[f"predictor@{fraction:g}"] += loss
            hyps[f"predictor@{fraction:g}"].append(hyp)
            # random: the same frame count in random spans, several draws (loss averaged, first draw's WER)
            draws = [evaluate(span_mask(1, frames, fraction, span, generator=generator, device=args.device))
                     for _ in range(args.random_draws)]
            losses[f"random@{fraction:g}"] += sum(d[0] for d in draws) / len(draws)
            hyps[f"random@{fraction:g}"].append(draws[0][1])
        print(f"[analysis] {index + 1}/{len(entries)} utterances", end="\r", flush=True)
    print()

    clean_loss = losses["clean"]
    clean_wer = error_rate(hyps["clean"], refs, str.split)
    rows = []
    for fraction in args.fractions:
        row = {"fraction": fraction}
        for kind in ("predictor", "random"):
            key = f"{kind}@{fraction:g}"
            wer = error_rate(hyps[key], refs, str.split)
            row[f"{kind}_ctc_rise"] = (losses[key] - clean_loss) / max(clean_loss, 1e-9)
            row[f"{kind}_wer"] = wer
            row[f"{kind}_wer_rise"] = (wer - clean_wer) / max(clean_wer, 1e-9)
        rows.append(row)

    lines = [f"# Figure 5 analysis: {args.manifest} ({len(entries)} utterances)", "",
             f"unmasked: CTC loss {clean_loss / len(entries):.3f} per utterance, WER {clean_wer:.2f}%", "",
             "| masked fraction | CTC rise, predictor | CTC rise, random | WER, predictor | WER, random "
             "| WER rise, predictor | WER rise, random |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['fraction']:g} | {r['predictor_ctc_rise']:+.1%} | {r['random_ctc_rise']:+.1%} "
                     f"| {r['predictor_wer']:.2f} | {r['random_wer']:.2f} "
                     f"| {r['predictor_wer_rise']:+.1%} | {r['random_wer_rise']:+.1%} |")
    (args.out / "figure5.md").write_text("\n".join(lines) + "\n")
    (args.out / "figure5.json").write_text(json.dumps({"clean_ctc": clean_loss, "clean_wer": clean_wer,
                                                        "rows": rows}, indent=2) + "\n")
    plot(args.out / "figure5.png", "masked fraction", [r["fraction"] for r in rows], [
        ("relative CTC loss rise", {"loss predictor": [r["predictor_ctc_rise"] for r in rows],
                                    "random": [r["random_ctc_rise"] for r in rows]}),
        ("relative WER rise", {"loss predictor": [r["predictor_wer_rise"] for r in rows],
                               "random": [r["random_wer_rise"] for r in rows]}),
    ])
    print("\n".join(lines))


def plot(path: Path, xlabel: str, xs, panels) -> None:
    import logging

    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6))
    for ax, (title, curves) in zip(axes if len(panels) > 1 else [axes], panels):
        for (label, ys), marker in zip(curves.items(), ("^", "s")):
            ax.plot(xs[: len(ys)], ys, marker=marker, label=label, markersize=4)
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def curriculum(args) -> None:
    prepare_out(args.out, ["figure6.png", "figure6.md", "figure6.json"], args.force)
    sys.path.insert(0, str(REPO / "tests"))
    from helpers import series

    schedules = {
        "easy-to-hard": [],
        "hard only": ["++model.hard_fraction_schedule=constant", "model.hard_fraction_end=1.0"],
    }
    curves = {}
    for name, overrides in schedules.items():
        run_dir = args.out / "figure6_runs" / name.replace(" ", "_")
        cmd = [
            str(Path(sys.executable).parent / "fairseq-hydra-train"),
            "--config-dir", str(args.config_dir), "--config-name", args.config_name,
            f"common.user_dir={REPO / 'maskssl_fairseq'}", "common.log_format=json", "common.log_interval=1",
            f"task.data={args.data}", f"optimization.max_update={args.updates}",
            f"checkpoint.save_dir={run_dir / 'checkpoints'}", f"hydra.run.dir={run_dir}",
            "checkpoint.no_save=true", *overrides, *args.overrides,
        ]
        print(f"[analysis] pretraining with {name} masking: {args.updates} updates", flush=True)
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}")
        curves[name] = series(proc.stdout, "loss_regression")

    def smooth(values, window):
        return [sum(values[max(0, i - window + 1):i + 1]) / len(values[max(0, i - window + 1):i + 1])
                for i in range(len(values))]

    window = max(1, args.updates // 20)
    smoothed = {name: smooth(v, window) for name, v in curves.items()}
    steps = list(range(1, args.updates + 1))
    plot(args.out / "figure6.png", "update", steps, [(f"reconstruction loss ({window}-update mean)", smoothed)])
    marks = sorted({max(1, args.updates * k // 5) for k in range(1, 6)})
    lines = [f"# Figure 6 analysis: {args.config_name}, {args.updates} updates", "",
             "| update | easy-to-hard | hard only |", "|---|---|---|"]
    for m in marks:
        lines.append(f"| {m} | {smoothed['easy-to-hard'][m - 1]:.3f} | {smoothed['hard only'][m - 1]:.3f} |")
    (args.out / "figure6.md").write_text("\n".join(lines) + "\n")
    (args.out / "figure6.json").write_text(json.dumps(curves) + "\n")
    print("\n".join(lines))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("masking", help="Figure 5: predictor-chosen vs random masked frames on a fine-tuned model")
    m.add_argument("--finetuned", type=Path, required=True, help="wav2vec_ctc checkpoint fine-tuned from EH-MAM")
    m.add_argument("--pretrained", type=Path, required=True, help="EH-MAM pretraining checkpoint (its teacher scores)")
    m.add_argument("--manifest", type=Path, required=True, help="<dir>/<split>.tsv with .ltr/.wrd labels")
    m.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.4])
    m.add_argument("--random-draws", type=int, default=3)
    m.add_argument("--max-utterances", type=int, default=200)
    m.add_argument("--seed", type=int, default=1)
    m.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    c = sub.add_parser("curriculum", help="Figure 6: easy-to-hard vs hard-only reconstruction loss")
    c.add_argument("--data", type=Path, required=True, help="manifest directory for pretraining")
    c.add_argument("--updates", type=int, default=300)
    c.add_argument("--config-dir", type=Path, default=REPO / "examples" / "eh_mam")
    c.add_argument("--config-name", default="tiny")
    c.add_argument("overrides", nargs="*", help="extra hydra overrides for both runs")
    for p in (m, c):
        p.add_argument("--out", type=Path, required=True)
        p.add_argument("--force", action="store_true", help="overwrite existing outputs in --out")
    args = parser.parse_args(argv)
    masking(args) if args.command == "masking" else curriculum(args)


if __name__ == "__main__":
    main()
