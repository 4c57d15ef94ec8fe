"""M2D-CLAP step cost against plain M2D at the same batch and size.

    python run/bench.py m2d_clap [--size base|small] [--batch 16] [--rounds 7] [--device cuda]

One full training step each (front end, masking, encoder, EMA target, predictor, for M2D-CLAP also the
audio projector and the batch contrastive loss, backward, AdamW, EMA update), alternating within every
round; the ratio of the medians is the cost of the CLAP term. It reuses M2D's encoder pass over the visible
patches, so the target is <= 1.05.
"""

import statistics

import torch

from m2d import SIZES, synchronize, timed


def build(model_class, config_class, size: str, device: torch.device):
    dim, layers, heads, pdim, players, pheads = SIZES[size]
    cfg = config_class(sample_rate=16000, hop_length=160, input_frames=608, max_update=1000, ema_anneal_end_step=1000,
                       encoder_embed_dim=dim, encoder_layers=layers, encoder_attention_heads=heads,
                       predictor_embed_dim=pdim, predictor_layers=players, predictor_attention_heads=pheads)
    if hasattr(cfg, "caption_embed_dim"):
        cfg.caption_embed_dim = dim
    model = model_class.build_model(cfg)
    model.frontend.set_norm_stats(-7.1, 4.2)
    return model.to(device).train()


def add_arguments(parser) -> None:
    parser.add_argument("--size", choices=sorted(SIZES), default="base", help="model size (default: ViT-B)")
    parser.add_argument("--batch", type=int, default=16, help="clips per step (the paper: 512 per GPU)")
    parser.add_argument("--rounds", type=int, default=7, help="timed steps per model")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def main(args) -> None:
    from maskssl_fairseq.models.m2d import M2DConfig, M2DModel
    from maskssl_fairseq.models.m2d_clap import M2DClapConfig, M2DClapModel

    device = torch.device(args.device)
    torch.manual_seed(0)
    models = {"m2d": build(M2DModel, M2DConfig, args.size, device),
              "m2d_clap": build(M2DClapModel, M2DClapConfig, args.size, device)}
    optimizers = {name: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4, betas=(0.9, 0.95),
                                          weight_decay=0.05) for name, m in models.items()}
    waveform = torch.randn(args.batch, 607 * 160, device=device)
    captions = torch.randn(args.batch, SIZES[args.size][0], device=device)

    def step(name: str) -> None:
        model = models[name]
        output = model(waveform, caption_embedding=captions)
        loss = sum(output["losses"].values()) / output["sample_size"]
        optimizers[name].zero_grad(set_to_none=True)
        loss.backward()
        optimizers[name].step()
        model.set_num_updates(model.num_updates + 1)  # EMA update (and, for M2D-CLAP, the logit-scale clamp)

    times = {name: [] for name in models}
    for name in models:  # warm-up
        step(name)
    synchronize(device)
    for _ in range(args.rounds):
        for name in models:
            times[name].append(timed(lambda: step(name), device))
    medians = {name: statistics.median(t) for name, t in times.items()}
    ratio = medians["m2d_clap"] / medians["m2d"]
    print(f"{args.size}, batch {args.batch} x 80x608 on {device}, {args.rounds} rounds; median step: "
          f"M2D {medians['m2d']:.3f} s, M2D-CLAP {medians['m2d_clap']:.3f} s")
    print(f"M2D-CLAP step / M2D step: {ratio:.3f} ({'meets' if ratio <= 1.05 else 'misses'} the target of <= 1.05)")
