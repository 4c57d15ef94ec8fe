"""EH-MAM training step vs a plain data2vec 2.0 step (same backbone, EH-MAM off), and mask generation time.

    python run/bench.py eh_mam [--size base|tiny] [--batch 4] [--seconds 10] [--clone-batch 1] [--dtype fp32]

Both models get the same batch and the same backbone; the step is forward, backward, Adam update and the EMA
teacher update, timed alternately (A, B, A, B ...) so that machine noise hits both alike. The EH-MAM step
runs with hard fraction 0.5 (teacher scoring, adaptive mask and ranking loss all active). The ratio of the
median step times is the figure to read (target: at most 1.10); on CPU the process CPU time is reported
beside the wall time, as it is far less sensitive to other jobs on a shared machine. Mask generation is timed on its own:
``easy_to_hard_mask`` (both ``hard_selection`` choices) on the teacher's scores against data2vec 2.0's
``block_mask``.

    python run/bench.py eh_mam --masks-only --mask-shape 64 999   # mask times only, at a given [B, T]
    python run/bench.py eh_mam --hard-share                       # the hard-frame share table of the README
"""

import statistics
import time

import torch

SIZES = {
    # data2vec 2.0 / EH-MAM BASE as in examples/eh_mam/base_librispeech.yaml
    "base": dict(),
    # examples/eh_mam/tiny.yaml
    "tiny": dict(
        embed_dim=96, num_heads=4, depth=2, prenet_depth=1, average_top_k_layers=2,
        feature_encoder_spec="[(64, 10, 5)] + [(64, 3, 2)] * 4 + [(64, 2, 2)] * 2",
        conv_pos_depth=2, conv_pos_width=38, conv_pos_groups=8, decoder_dim=64, decoder_groups=8, decoder_layers=2,
    ),
}
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def add_arguments(parser) -> None:
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--batch", type=int, default=4, help="utterances per batch")
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds of 16 kHz audio per utterance")
    parser.add_argument("--clone-batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="autocast dtype (CUDA: bf16/fp16)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--masks-only", action="store_true", help="time the masks only, skip the training steps")
    parser.add_argument("--mask-shape", type=int, nargs=2, metavar=("B", "T"),
                        help="[B, T] for the mask timing (default: the batch's frames)")
    parser.add_argument("--hard-share", action="store_true",
                        help="print the share of masked frames in the top-scored half (README table) and exit")


def build(size: str, clone_batch: int, eh_mam: bool, seed: int, device: str):
    from maskssl_fairseq.models.eh_mam import EhMamConfig, EhMamModel

    torch.manual_seed(seed)
    extra = dict(hard_fraction_schedule="constant", hard_fraction_end=0.5, ranking_loss_weight=0.05) if eh_mam \
        else dict(hard_fraction_end=0.0, ranking_loss_weight=0.0)
    cfg = EhMamConfig(**SIZES[size], **extra, clone_batch=clone_batch, hard_fraction_ramp_updates=1,
                      layerdrop=0.0, prenet_layerdrop=0.0)
    model = EhMamModel(cfg).to(device).train()
    return model, torch.optim.Adam(model.parameters(), lr=1e-4)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def train_step(model, optimizer, source, step: int, dtype, device: str):
    """Runs one training step; returns (wall seconds, process CPU seconds)."""
    synchronize(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    model.set_num_updates(step)  # the EMA teacher step, as fairseq's task.train_step does it
    with torch.autocast(device_type=device.split(":")[0], dtype=dtype, enabled=dtype is not None):
        out = model(source)
        loss = sum(v.float().sum() for v in out["losses"].values()) / out["sample_size"]
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    synchronize(device)
    return time.perf_counter() - start, time.process_time() - cpu_start


def time_masks(rows: int, frames: int, mask_prob: float, span: int, device: str, repeats: int = 20):
    from maskssl_fairseq.masking import block_mask, easy_to_hard_mask

    scores = torch.randn(rows, frames, device=device)
    draws = {
        "easy_to_hard window": lambda: easy_to_hard_mask(scores, mask_prob, span, 0.5, hard_selection="window"),
        "easy_to_hard start": lambda: easy_to_hard_mask(scores, mask_prob, span, 0.5, hard_selection="start"),
        "block_mask": lambda: block_mask(rows, frames, mask_prob, block=span, device=device),
    }
    timings = {name: [] for name in draws}
    for _ in range(repeats):
        for name, draw in draws.items():
            synchronize(device)
            start = time.perf_counter()
            draw()
            synchronize(device)
            timings[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in timings.items()}


def print_mask_times(rows: int, frames: int, mask_prob: float, span: int, device: str) -> None:
    print(f"  mask generation for [{rows}, {frames}] (hard fraction 0.5):")
    for name, value in time_masks(rows, frames, mask_prob, span, device).items():
        print(f"    {name:20s} median {value * 1000:8.3f} ms")


def print_hard_share_table(seeds: int = 10) -> None:
    """B=16, T=500, mask_prob 0.5, span 5; scores: uniform noise averaged over w frames."""
    import torch.nn.functional as F

    from maskssl_fairseq.masking import easy_to_hard_mask

    fractions, widths = (0.0, 0.7, 1.0), (1, 7, 25)
    print(f"share of masked frames in the top-scored half (B=16, T=500, mask_prob 0.5, span 5, {seeds} seeds)")
    print("| selection | scores | " + " | ".join(f"hard_fraction {f:g}" for f in fractions) + " |")
    print("|---|---|" + "---|" * len(fractions))
    for selection in ("window", "start"):
        for width in widths:
            shares = []
            for fraction in fractions:
                total = 0.0
                for seed in range(seeds):
                    generator = torch.Generator().manual_seed(seed)
                    noise = torch.rand(16, 1, 500 + width - 1, generator=generator)
                    scores = F.avg_pool1d(noise, width, stride=1).squeeze(1)
                    mask = easy_to_hard_mask(scores, 0.5, 5, fraction, hard_selection=selection, generator=generator)
                    top = scores >= scores.median(dim=1, keepdim=True).values
                    total += float((mask & top).sum() / mask.sum())
                shares.append(total / seeds)
            print(f"| {selection} | w={width} | " + " | ".join(f"{v:.2f}" for v in shares) + " |")


def main(args) -> None:
    device, dtype = args.device, DTYPES[args.dtype]
    if args.hard_share:
        print_hard_share_table()
        return
    mask_prob, span = 0.5, 5  # data2vec 2.0 / EH-MAM pretraining
    if args.masks_only:
        rows, frames = args.mask_shape or (args.batch * args.clone_batch, int(args.seconds * 50))
        print_mask_times(rows, frames, mask_prob, span, device)
        return
    generator = torch.Generator().manual_seed(args.seed)
    source = torch.randn(args.batch, int(args.seconds * 16000), generator=generator).to(device)
    runs = {
        "data2vec2": build(args.size, args.clone_batch, False, args.seed, device),
        "eh_mam": build(args.size, args.clone_batch, True, args.seed, device),
    }
    wall = {name: [] for name in runs}
    cpu = {name: [] for name in runs}
    for step in range(1, args.warmup + args.steps + 1):
        for name, (model, optimizer) in runs.items():
            elapsed, cpu_time = train_step(model, optimizer, source, step, dtype, device)
            if step > args.warmup:
                wall[name].append(elapsed)
                cpu[name].append(cpu_time)
    print(f"device {device}, {args.dtype}, size {args.size}, batch {args.batch} x {args.seconds:g} s, "
          f"clone_batch {args.clone_batch}, {args.steps} timed steps each")
    clocks = [("wall", wall)] + ([("cpu", cpu)] if device == "cpu" else [])
    for clock, times in clocks:
        median = {name: statistics.median(t) for name, t in times.items()}
        for name, value in median.items():
            print(f"  {name:10s} step  median {clock} {value * 1000:9.1f} ms")
        print(f"  ratio eh_mam / data2vec2 ({clock} time): {median['eh_mam'] / median['data2vec2']:.3f}"
              "  (target <= 1.10)")
    model = runs["eh_mam"][0]
    with torch.no_grad():
        frames = model.local_features(source[:1]).size(1)
    rows, frames = args.mask_shape or (args.batch * args.clone_batch, frames)
    print_mask_times(rows, frames, model.cfg.mask_prob, model.cfg.mask_length, device)
