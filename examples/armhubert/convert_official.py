"""Converts a released ARMHuBERT / MaskHuBERT checkpoint (PyTorch Lightning) into a fairseq checkpoint of ``armhubert``.

    python examples/armhubert/convert_official.py --checkpoint ARMHuBERT-960h.ckpt \
        --config armhubert-960.yaml --out armhubert_960h_official.pt [--force]

``--config`` is the released training yaml (its ``distiller`` and ``teacher`` sections). The result has
``official_compat=true``, so the reuse layers behave as in the released code (see README.md), and it loads with
fairseq's ``checkpoint_utils`` for ``hidden_states`` (SUPERB) or ``wav2vec_ctc`` fine-tuning (``model.w2v_path``).
The student's parameter names are the same on both sides, except the heads: ``proj_head.<i>.lin_proj`` there,
``heads.<i>`` here. The released ``reuse_pattern`` (True = computes a map) is the negation of ``reuse_attention``.
"""

import argparse
import re
from pathlib import Path
from typing import Dict

import torch
import yaml

STUDENT_PREFIX = "student_model."
# released layouts this model does not implement
UNSUPPORTED = {"layerwise_proj": True, "enable_tr_layer": False, "layer_norm_first": False, "pos_conv_depth": 1,
               "layer_type": "transformer"}
COPIED = ("encoder_layers", "encoder_embed_dim", "encoder_ffn_embed_dim", "encoder_attention_heads", "activation_fn",
          "conv_feature_layers", "extractor_mode", "conv_bias", "conv_pos", "conv_pos_groups", "dropout",
          "attention_dropout", "activation_dropout", "dropout_input", "feature_grad_mult", "layer_grad_scale")


def model_config(distiller: Dict, teacher: Dict) -> Dict:
    """``model`` section for ``armhubert`` from the released ``distiller`` and ``teacher`` sections."""
    for key, wanted in UNSUPPORTED.items():
        if key in distiller and distiller[key] != wanted:
            raise ValueError(f"distiller.{key}={distiller[key]!r}: only {wanted!r} is supported")
    pattern = distiller.get("reuse_pattern")  # absent in the MaskHuBERT config: every layer computes its map
    computes = eval(pattern, {"__builtins__": {}}) if pattern else [True] * distiller["encoder_layers"]  # noqa: S307
    cfg = {key: distiller[key] for key in COPIED if key in distiller}
    cfg.update(
        _name="armhubert",
        teacher_path=None,
        teacher_embed_dim=distiller.get("pred_head_final_dim", 768),
        reuse_attention=str([not c for c in computes]),
        official_compat=True,
        mask_prob=teacher.get("mask_prob", 0.8),
        mask_length=teacher.get("mask_length", 10),
    )
    return cfg


def student_state(lightning_state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The student's tensors under this model's names (the teacher's are dropped)."""
    state = {}
    for key, value in lightning_state.items():
        if not key.startswith(STUDENT_PREFIX):
            continue
        key = re.sub(r"^proj_head\.(\d+)\.lin_proj\.", r"heads.\1.", key[len(STUDENT_PREFIX):])
        state[key] = value
    if not state:
        raise ValueError(f"no '{STUDENT_PREFIX}*' tensors in the checkpoint's state_dict")
    return state


def convert(checkpoint: Path, config: Path) -> Dict:
    lightning = torch.load(checkpoint, map_location="cpu", weights_only=False)  # a Lightning pickle, trusted input
    released = yaml.safe_load(config.read_text())
    return {
        "args": None,
        "cfg": {
            "model": model_config(released["distiller"], released.get("teacher", {})),
            "task": {"_name": "audio_pretraining", "data": "", "normalize": False, "sample_rate": 16000},
        },
        "model": student_state(lightning.get("state_dict", lightning)),
        "optimizer_history": [{"criterion_name": "armhubert_distillation", "optimizer_name": "released",
                               "lr_scheduler_state": {"best": None}, "num_updates": 0}],
        "extra_state": {"train_iterator": {"epoch": 1}},
        "last_optimizer_state": None,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="released Lightning checkpoint")
    parser.add_argument("--config", type=Path, required=True, help="released training yaml of that checkpoint")
    parser.add_argument("--out", type=Path, required=True, help="fairseq checkpoint to write")
    parser.add_argument("--force", action="store_true", help="overwrite --out")
    args = parser.parse_args(argv)
    if args.out.exists() and not args.force:
        raise SystemExit(f"{args.out} exists; pass --force to overwrite it")
    torch.save(convert(args.checkpoint, args.config), args.out)
    print(f"[convert_official] wrote {args.out}")


if __name__ == "__main__":
    main()
