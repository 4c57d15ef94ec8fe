"""EAT pretraining cost per clip against M2D's, and where an EAT step spends its time.

    python run/bench.py eat [--size base|small] [--batch 4] [--rounds 5] [--device cuda] [--bf16]

Ratios measured inside this one run (absolute times on shared machines are noise):

1. one full training step (front end, masks, teacher, student, decoder, backward, Adam, EMA update) of EAT
   (128 x 1024 fbank, 512 patches, 16 clones at 0.8 masked: the student sees 102 + CLS tokens per clone,
   the teacher all 512 once per clip) and of M2D (80 x 608 log-mel, 190 patches, 0.7 masked, its target
   encoder on the 133 masked ones) at the same batch of clips; the steps alternate within every round;
2. the forward pieces of an EAT step timed one by one: masks, teacher (targets), student encoder, decoder
   (and the loss), with the rest of the step (backward, optimizer, EMA) as the remainder.

EAT's claim is efficiency per clip: its encoder sees 20 % of the patches and its teacher runs once per 16
clones. The medians are compared.
"""

import statistics

import torch

from m2d import SIZES as M2D_SIZES
from m2d import synchronize, timed

SIZES = {  # encoder dim, layers, heads; the decoder is as wide as the encoder (EAT)
    "base": (768, 12, 12),  # EAT-base
    "small": (384, 6, 6),
}


def add_arguments(parser) -> None:
    parser.add_argument("--size", choices=sorted(SIZES), default="base", help="model size (default: EAT-base / M2D ViT-B)")
    parser.add_argument("--batch", type=int, default=4, help="clips per step (EAT: 12 per GPU)")
    parser.add_argument("--clones", type=int, default=16, help="EAT clone_batch")
    parser.add_argument("--rounds", type=int, default=5, help="timed steps per model")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true", help="run the steps under bf16 autocast")


def build_eat(size: str, clones: int, device: torch.device):
    from maskssl_fairseq.models.eat import EATConfig, EATModel

    dim, layers, heads = SIZES[size]
    cfg = EATConfig(sample_rate=16000, hop_length=160, input_frames=1024, max_update=1000, encoder_embed_dim=dim,
                    encoder_layers=layers, encoder_attention_heads=heads, decoder_dim=dim,
                    average_top_k_layers=layers, clone_batch=clones)
    model = EATModel.build_model(cfg)
    model.frontend.set_norm_stats(-4.268, 4.569)
    return model.to(device).train()


def build_m2d(size: str, device: torch.device):
    from maskssl_fairseq.models.m2d import M2DConfig, M2DModel

    dim, layers, heads, pdim, players, pheads = M2D_SIZES[size]
    cfg = M2DConfig(sample_rate=16000, hop_length=160, input_frames=608, max_update=1000, ema_anneal_end_step=1000,
                    masking="random", encoder_embed_dim=dim, encoder_layers=layers, encoder_attention_heads=heads,
                    predictor_embed_dim=pdim, predictor_layers=players, predictor_attention_heads=pheads)
    model = M2DModel.build_model(cfg)
    model.frontend.set_norm_stats(-7.1, 4.2)
    return model.to(device).train()


def main(args) -> None:
    device = torch.device(args.device)
    torch.manual_seed(0)
    eat, m2d = build_eat(args.size, args.clones, device), build_m2d(args.size, device)
    optimizers = {name: torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4, betas=(0.9, 0.95))
                  for name, model in (("eat", eat), ("m2d", m2d))}
    inputs = {"eat": torch.randn(args.batch, 160000, device=device) * 0.1,  # 10 s clips
              "m2d": torch.randn(args.batch, 607 * 160, device=device) * 0.1}  # 6.08 s crops
    models = {"eat": eat, "m2d": m2d}
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)

    def step(name: str) -> None:
        model = models[name]
        with autocast:
            output = model(inputs[name])
        loss = sum(output["losses"].values()) / output["sample_size"]
        optimizers[name].zero_grad(set_to_none=True)
        loss.backward()
        optimizers[name].step()
        model.set_num_updates(model.num_updates + 1)  # the EMA update

    spectrogram = eat.training_spectrogram(inputs["eat"])
    clones = args.clones

    def pieces() -> dict:
        """The forward of an EAT step, piece by piece, as EATModel.forward runs it."""
        times = {}
        with autocast:
            times["front end"] = timed(lambda: eat.training_spectrogram(inputs["eat"]), device)
            mask = {}
            times["masks"] = timed(lambda: mask.setdefault("m", eat.draw_mask(spectrogram, clones)), device)
            teacher = eat.teacher(eat.encoder.patch_embed.weight)
            times["teacher"] = timed(lambda: eat.targets(teacher.encoder, spectrogram), device)
            state = {}

            def student():
                from maskssl_fairseq.modules.spectrogram_vit import split_by_mask

                tokens = eat.encoder.embed(spectrogram).repeat_interleave(clones, 0)
                visible, _, order = split_by_mask(tokens, mask["m"])
                state["encoded"], state["order"] = eat.encoder(visible), order

            times["student"] = timed(student, device)
            times["decoder"] = timed(lambda: eat.decoder(eat.decoder_input(state["encoded"][:, 1:], state["order"])), device)
        return times

    for name in ("eat", "m2d"):  # warm-up
        step(name)
    step_times = {"eat": [], "m2d": []}
    piece_times = []
    for _ in range(args.rounds):
        for name in ("eat", "m2d"):
            step_times[name].append(timed(lambda: step(name), device))
        piece_times.append(pieces())
        synchronize(device)

    steps = {name: statistics.median(t) for name, t in step_times.items()}
    parts = {key: statistics.median(p[key] for p in piece_times) for key in piece_times[0]}
    precision = "bf16 autocast" if args.bf16 else "fp32"
    print(f"{args.size}: EAT {args.batch} clips x {clones} clones (128x1024, 512 patches) vs M2D {args.batch} clips "
          f"(80x608, 190 patches) on {device}, {precision}; medians of {args.rounds} rounds")
    print(f"step (s): EAT {steps['eat']:.3f}, M2D {steps['m2d']:.3f}; EAT / M2D per clip: {steps['eat'] / steps['m2d']:.2f}")
    forward = sum(parts.values())
    print(f"EAT step shares: " + ", ".join(f"{key} {100 * value / steps['eat']:.1f}%" for key, value in parts.items())
          + f", backward + optimizer + EMA {100 * (steps['eat'] - forward) / steps['eat']:.1f}%")
