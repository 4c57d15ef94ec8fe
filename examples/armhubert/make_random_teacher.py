"""A randomly initialised distillation teacher, to try an ARMHuBERT / ARMwavLM config where no weights can be
downloaded (the targets are then meaningless, the pipeline is not).

    python examples/armhubert/make_random_teacher.py --kind wavlm --out wavlm_base_random.pt     # WavLM Base
    python examples/armhubert/make_random_teacher.py --kind hubert --out hubert_base_random.pt   # HuBERT BASE
    python examples/armhubert/make_random_teacher.py --kind wavlm --out tiny.pt --layers 2 --dim 64 --ffn 128 \\
        --heads 4 --conv-dim 32 --conv-pos 16 --conv-pos-groups 4                                 # test size

``--kind hubert`` writes a fairseq checkpoint (``hubert`` model, ``hubert_pretraining`` task with its label
dictionary in the task state) that ``checkpoint_utils`` loads; ``--kind wavlm`` writes the original authors'
``WavLM-Base.pt`` layout (``{"cfg", "model"}``) or, with ``--layout torchaudio``, torchaudio's state dict plus
the ``mask_emb`` tensor. Defaults are the BASE sizes (12 x 768, FFN 3072, 12 heads, CNN 512 wide).
"""

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", required=True, choices=["hubert", "wavlm"])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--layout", default="authors", choices=["authors", "torchaudio"],
                        help="WavLM only: the authors' {cfg, model} file or torchaudio's state dict + mask_emb")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--ffn", type=int, default=3072)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--conv-dim", type=int, default=512, help="channels of every CNN layer")
    parser.add_argument("--conv-pos", type=int, default=128, help="kernel of the positional convolution")
    parser.add_argument("--conv-pos-groups", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="overwrite --out")
    return parser.parse_args(argv)


def conv_layers(dim: int) -> str:
    return f"[({dim}, 10, 5)] + [({dim}, 3, 2)] * 4 + [({dim}, 2, 2)] * 2"


def random_hubert(args) -> dict:
    from fairseq.data import Dictionary
    from fairseq.dataclass.configs import FairseqConfig
    from fairseq.models.hubert.hubert import HubertConfig, HubertModel
    from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig
    from omegaconf import OmegaConf

    dictionary = Dictionary()
    for cluster in range(16):
        dictionary.add_symbol(str(cluster))
    model_cfg = HubertConfig(label_rate=50.0, conv_feature_layers=conv_layers(args.conv_dim),
                             encoder_layers=args.layers, encoder_embed_dim=args.dim, encoder_ffn_embed_dim=args.ffn,
                             encoder_attention_heads=args.heads, conv_pos=args.conv_pos,
                             conv_pos_groups=args.conv_pos_groups)
    task_cfg = HubertPretrainingConfig(data="unused", label_dir="unused", labels=["km"], label_rate=50.0)
    model = HubertModel(model_cfg, task_cfg, [dictionary])
    model.mask_emb.data.uniform_()
    cfg = OmegaConf.structured(FairseqConfig)
    cfg.model = OmegaConf.merge(OmegaConf.structured(model_cfg), {"_name": "hubert"})
    cfg.task = OmegaConf.merge(OmegaConf.structured(task_cfg), {"_name": "hubert_pretraining"})
    # what fairseq's trainer writes besides the weights, so that checkpoint_utils reads it as one of its own
    history = [{"criterion_name": "HubertCriterion", "optimizer_name": "none", "lr_scheduler_state": {},
                "num_updates": 0}]
    return {"cfg": OmegaConf.to_container(cfg, enum_to_str=True), "model": model.state_dict(),
            "task_state": {"dictionaries": [dictionary]}, "optimizer_history": history,
            "extra_state": {"train_iterator": {"epoch": 1, "iterations_in_epoch": 0}}}


def random_wavlm(args) -> dict:
    from maskssl_fairseq.modules.wavlm_teacher import UNILM_DEFAULTS, build_wavlm, torchaudio_kwargs_from_unilm, \
        torchaudio_to_unilm

    cfg = {**UNILM_DEFAULTS, "encoder_layers": args.layers, "encoder_embed_dim": args.dim,
           "encoder_ffn_embed_dim": args.ffn, "encoder_attention_heads": args.heads,
           "conv_feature_layers": conv_layers(args.conv_dim), "conv_pos": args.conv_pos,
           "conv_pos_groups": args.conv_pos_groups,
           # WavLM Base's own values (torchaudio's WAVLM_BASE bundle), where unilm's class defaults differ
           "relative_position_embedding": True, "gru_rel_pos": True, "max_distance": 800, "encoder_layerdrop": 0.05}
    model = build_wavlm(torchaudio_kwargs_from_unilm(cfg, "make_random_teacher"))
    mask_emb = torch.empty(args.dim).uniform_()
    if args.layout == "torchaudio":
        return {**model.state_dict(), "mask_emb": mask_emb}
    return {"cfg": cfg, "model": {**torchaudio_to_unilm(model.state_dict()), "mask_emb": mask_emb}}


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.out.exists() and not args.force:
        sys.exit(f"{args.out} exists; pass --force to overwrite it")
    torch.manual_seed(args.seed)
    state = random_hubert(args) if args.kind == "hubert" else random_wavlm(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, args.out)
    weights = state.get("model", state)
    count = sum(v.numel() for k, v in weights.items() if k != "mask_emb" and "label_embs" not in k)
    print(f"wrote a random {args.kind} ({args.layers} x {args.dim}, {count / 1e6:.2f} M parameters) to {args.out}")


if __name__ == "__main__":
    main()
