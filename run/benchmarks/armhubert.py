"""ARMHuBERT: student vs HuBERT BASE (or WavLM Base, for ARMwavLM-S) forward time and multiply-accumulates, and a
reuse layer's attention cost.

    python run/bench.py armhubert [--variant armhubert] [--seconds 6 --batch 2] [--teacher-path hubert_base_ls960.pt]
    python run/bench.py armhubert --variant armwavlm_s [--teacher-path WavLM-Base.pt]

Everything is measured inside one run on one batch, and reported as ratios:

* forward time of the student (``hidden_states``: every layer and its projection head, what SUPERB evaluates)
  against the teacher (``extract_features``), median over interleaved repeats;
* analytic multiply-accumulates over the same audio: convolutions, linear layers and the two attention matmuls
  (Q K^T and A V; a reuse layer has only A V), heads included, as the paper's MACs (the SUPERB profiler) do;
  also over the paper's MACs set-up (32 LibriSpeech test-clean utterances, 224.9 s in all);
* one attention module of a reuse layer against one of a computing layer: analytic MACs and forward time.

Without ``--teacher-path`` the teacher is HuBERT BASE's (or, for ``armwavlm_s``, torchaudio's ``wavlm_base``)
architecture with random weights (same cost). WavLM's MACs add its gated relative position bias (a
``Linear(head_dim -> 8)`` per head and frame in every layer) to HuBERT's.
"""

import argparse
import statistics
import time
from pathlib import Path
from typing import Callable, List, Sequence

import torch
from omegaconf import OmegaConf

import maskssl_fairseq  # noqa: F401  (registers the model)
from maskssl_fairseq.models.armhubert import ArmHubertConfig, ArmHubertModel
from maskssl_fairseq.modules.cnn_frontend import parse_config_list
from maskssl_fairseq.modules.reuse_attention import MapAttention, ReuseAttention

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "examples" / "armhubert"
HUBERT_BASE_CONV = [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2
SUPERB_SECONDS, SUPERB_UTTERANCES = 224.9, 32  # the SUPERB-challenge MACs set-up (paper's MACs, notes section 7)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variant", default="armhubert", choices=["armhubert", "armhubert_s", "maskhubert", "armwavlm_s"],
                        help="student config in examples/armhubert")
    parser.add_argument("--teacher-path", help="a fairseq HuBERT or WavLM checkpoint (default: HuBERT BASE, or WavLM "
                                               "Base for armwavlm_s, random weights)")
    parser.add_argument("--batch", type=int, default=2, help="utterances per forward")
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each utterance")
    parser.add_argument("--repeats", type=int, default=5, help="timed forwards of each model (after one warm-up)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def frames_after(samples: int, conv_layers: Sequence) -> List[int]:
    lengths = []
    for _, kernel, stride in conv_layers:
        samples = (samples - kernel) // stride + 1
        lengths.append(samples)
    return lengths


def analytic_macs(
    samples: int,
    conv_layers: Sequence,
    dim: int,
    ffn: int,
    reuse: Sequence[bool],
    conv_pos: int = 128,
    conv_pos_groups: int = 16,
    head_dim: int = 0,
) -> dict:
    """Multiply-accumulates of one utterance of ``samples`` samples, by part (dict of ints)."""
    lengths = frames_after(samples, conv_layers)
    frames = lengths[-1]
    channels_in = [1] + [c for c, _, _ in conv_layers[:-1]]
    conv = sum(n * c_out * c_in * k for n, (c_out, k, _), c_in in zip(lengths, conv_layers, channels_in))
    conv_dim = conv_layers[-1][0]
    front = frames * conv_dim * dim if conv_dim != dim else 0  # post_extract_proj
    pos_conv = frames * dim * (dim // conv_pos_groups) * conv_pos
    projections = sum((2 if r else 4) * frames * dim * dim for r in reuse)
    attention = sum((1 if r else 2) * frames * frames * dim for r in reuse)
    ffn_macs = len(reuse) * 2 * frames * dim * ffn
    heads = len(reuse) * frames * dim * head_dim
    parts = {"conv": conv, "front_proj": front, "pos_conv": pos_conv, "qkvo_proj": projections,
             "attention_matmuls": attention, "ffn": ffn_macs, "heads": heads}
    parts["total"] = sum(parts.values())
    return parts


def student_macs(cfg, samples: int, with_heads: bool = True) -> dict:
    model_cfg = OmegaConf.merge(OmegaConf.structured(ArmHubertConfig), cfg)
    return analytic_macs(
        samples, parse_config_list(model_cfg.conv_feature_layers, "conv_feature_layers"), model_cfg.encoder_embed_dim,
        model_cfg.encoder_ffn_embed_dim, parse_config_list(model_cfg.reuse_attention, "reuse_attention"),
        model_cfg.conv_pos, model_cfg.conv_pos_groups,
        model_cfg.teacher_embed_dim if with_heads else 0,
    )


def teacher_macs(samples: int, kind: str = "hubert") -> dict:
    """HuBERT BASE, or WavLM Base (the same layers plus the gated relative position bias)."""
    parts = analytic_macs(samples, HUBERT_BASE_CONV, 768, 3072, [False] * 12)
    if kind == "wavlm":
        frames = frames_after(samples, HUBERT_BASE_CONV)[-1]
        parts["relative_position_gate"] = 12 * frames * 768 * 8  # per layer: H heads x (head_dim -> 8) per frame
        parts["total"] += parts["relative_position_gate"]
    return parts


def teacher_kind(variant: str) -> str:
    return "wavlm" if variant.startswith("armwavlm") else "hubert"


def load_student_cfg(variant: str):
    cfg = OmegaConf.load(REPO_CONFIGS / f"{variant}.yaml").model
    del cfg["_name"]
    cfg.teacher_path = None
    return cfg


def build_teacher(path: str, kind: str):
    """A frozen teacher whose ``layer_outputs`` is timed."""
    from fairseq.models.hubert.hubert import HubertConfig, HubertModel
    from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig

    from maskssl_fairseq.models.armhubert import load_teacher
    from maskssl_fairseq.modules.hubert_teacher import HubertTeacher
    from maskssl_fairseq.modules.wavlm_teacher import WavLMTeacher

    if path:
        return load_teacher(path, kind)
    if kind == "wavlm":
        from torchaudio.models import wavlm_base

        return WavLMTeacher(wavlm_base(), torch.zeros(768))
    model = HubertModel(HubertConfig(label_rate=50.0), HubertPretrainingConfig(data="unused", label_rate=50.0), [None])
    return HubertTeacher(model)


def timed(fn: Callable[[], object], device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def interleaved_ratio(numerator: Callable, denominator: Callable, repeats: int, device: str):
    """Median of per-repeat time ratios, the two calls alternating so that machine noise hits both alike."""
    numerator(), denominator()  # warm-up
    pairs = [(timed(numerator, device), timed(denominator, device)) for _ in range(repeats)]
    ratios = [a / b for a, b in pairs]
    return statistics.median(ratios), statistics.median(a for a, _ in pairs), statistics.median(b for _, b in pairs)


def main(args) -> None:
    torch.manual_seed(0)
    device = args.device
    samples = int(args.seconds * 16000)
    cfg = load_student_cfg(args.variant)
    student = ArmHubertModel.build_model(OmegaConf.merge(OmegaConf.structured(ArmHubertConfig), cfg))
    student = student.to(device).eval()
    kind = teacher_kind(args.variant)
    teacher = build_teacher(args.teacher_path, kind).to(device).eval()
    params_student = sum(p.numel() for p in student.parameters())
    params_teacher = sum(p.numel() for p in teacher.parameters())
    print(f"[armhubert] {args.variant}: {params_student / 1e6:.2f} M parameters (heads included); "
          f"teacher: {params_teacher / 1e6:.2f} M")

    # --- analytic MACs -------------------------------------------------------------------------
    s_macs, t_macs = student_macs(cfg, samples), teacher_macs(samples, kind)
    print(f"[armhubert] analytic MACs for {args.batch} x {args.seconds:.1f} s: student "
          f"{args.batch * s_macs['total'] / 1e9:.2f} G, teacher {args.batch * t_macs['total'] / 1e9:.2f} G, "
          f"ratio {s_macs['total'] / t_macs['total']:.3f} (without heads "
          f"{student_macs(cfg, samples, with_heads=False)['total'] / t_macs['total']:.3f})")
    per_utterance = int(SUPERB_SECONDS / SUPERB_UTTERANCES * 16000)
    s_superb = SUPERB_UTTERANCES * student_macs(cfg, per_utterance)["total"]
    t_superb = SUPERB_UTTERANCES * teacher_macs(per_utterance, kind)["total"]
    print(f"[armhubert] analytic MACs over {SUPERB_SECONDS} s as {SUPERB_UTTERANCES} equal utterances: student "
          f"{s_superb / 1e9:.1f} G, {'WavLM Base' if kind == 'wavlm' else 'HuBERT BASE'} {t_superb / 1e9:.1f} G, "
          f"ratio {s_superb / t_superb:.3f} (paper: about 0.30 for ARMHuBERT)")
    print("[armhubert] student MACs by part: " + ", ".join(
        f"{k} {v / s_macs['total']:.1%}" for k, v in s_macs.items() if k != "total"))

    # --- forward time --------------------------------------------------------------------------
    source = torch.randn(args.batch, samples, device=device)
    with torch.inference_mode():
        ratio, t_student, t_teacher = interleaved_ratio(
            lambda: student.hidden_states(source), lambda: teacher.layer_outputs(source),
            args.repeats, device,
        )
    print(f"[armhubert] forward time on {device}, {args.batch} x {args.seconds:.1f} s: "
          f"student {t_student * 1e3:.0f} ms, teacher {t_teacher * 1e3:.0f} ms, ratio {ratio:.3f} "
          f"(median of {args.repeats} interleaved repeats)")

    # --- one reuse attention against one computing attention -----------------------------------
    dim, heads = student.cfg.encoder_embed_dim, student.cfg.encoder_attention_heads
    frames = frames_after(samples, student.conv_layers)[-1]
    full = 4 * frames * dim * dim + 2 * frames * frames * dim
    reuse = 2 * frames * dim * dim + frames * frames * dim
    computing = MapAttention(dim, heads).to(device).eval()
    reusing = ReuseAttention(dim, heads).to(device).eval()
    x = torch.randn(args.batch, frames, dim, device=device)
    with torch.inference_mode():
        _, attention_map = computing(x, need_map=True)
        map_ratio, _, _ = interleaved_ratio(lambda: reusing(x, attention_map), lambda: computing(x, need_map=True),
                                            args.repeats * 4, device)
        fused_ratio, _, _ = interleaved_ratio(lambda: reusing(x, attention_map), lambda: computing(x),
                                              args.repeats * 4, device)
    print(f"[armhubert] reuse attention vs full attention at T={frames}, D={dim}: analytic MACs "
          f"{reuse / 1e6:.1f} M vs {full / 1e6:.1f} M, ratio {reuse / full:.3f}; forward time ratio "
          f"{map_ratio:.3f} against a computing layer that hands its map on, {fused_ratio:.3f} against fused SDPA")
