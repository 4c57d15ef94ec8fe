"""Records reference outputs of an official implementation, for the conversion tests (tests/test_convert_speech.py).

    python tests/reference/record_official.py --kind data2vec2 --repo <fairseq snapshot> --commit <sha>
    python tests/reference/record_official.py --kind eh_mam --repo <cs20s030/ehmam snapshot> --commit <sha>

``--repo`` is a checkout of the official repository (for example ``git --git-dir <mirror> archive <sha> | tar -x``);
its code is run from there and never copied into this repository. The script builds the official model at a tiny
size with seeded random weights (rounded to float16, so that the fixture can store them in half precision without
changing what was run), gives its EMA teacher different weights, runs both on a fixed padded batch in eval mode, and
writes ``tests/reference/<kind>.npz``: the official state dict (student and ``_ema`` teacher tensors as one flat
float16 array ``weights`` with its ``index`` of section, key and shape), the official config, the input, the
outputs (``out_<name>``), and the repository and commit they came from (``meta``).

Recorded outputs (B = 2 utterances of 800 and 600 samples, T = 39 frames, D = 16):

- ``student_x``: ``extract_features(mode="AUDIO")`` final output ``[B, T, D]``, and ``frame_padding`` ``[B, T]``;
- ``student_decoder``: the regression decoder ``Decoder1d`` applied to ``student_x``;
- ``teacher_targets``: data2vec 2.0's targets (``make_targets`` over the teacher's layer results), the teacher
  being the official model built without EMA and loaded with the ``_ema`` weights (plus the student's CNN, which
  ``ema_local_encoder: false`` shares), i.e. the network ``forward`` runs as its teacher;
- EH-MAM only: ``student_loss_pred`` = ``decoder_pred(student_x).mean(-1)`` and ``teacher_loss_pred`` =
  the teacher's ``decoder_pred(teacher_targets).mean(-1)`` (what the official ``forward_teacher`` computes, there
  in float16).

How the official code is made to import on Python 3.11 (in memory only, nothing is written to the snapshot):

1. its config dataclasses use instances of other dataclasses as defaults (``audio: D2vAudioConfig =
   D2vAudioConfig()``), which Python 3.11 rejects as mutable defaults because a dataclass with ``eq`` has no
   ``__hash__``; while its modules are imported, ``dataclasses.dataclass`` is wrapped to give such classes
   ``object.__hash__`` back (Python <= 3.10 accepted them as they are);
2. it imports itself as ``examples.data2vec.*`` (fairseq's repository layout); empty namespace packages with
   those names are put in ``sys.modules``, pointing at the snapshot's folders, so that the package
   ``__init__`` files (which import every task and modality) are not run;
3. EH-MAM imports ``compute_mask_indices_ema_loss`` from ``fairseq.data.data_utils`` (its README has users
   overwrite fairseq's file with its ``data_utils.py``); the snapshot's ``data_utils.py`` is loaded as its own
   module and only that function is set on ``fairseq.data.data_utils``.
"""

import argparse
import dataclasses
import importlib
import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import torch

KINDS = {
    # kind: (repository, the folder of the data2vec package inside the snapshot)
    "data2vec2": ("facebookresearch/fairseq", "examples/data2vec"),
    "eh_mam": ("cs20s030/ehmam", "."),
}
OUT_DIR = Path(__file__).resolve().parent
LENGTHS = (800, 600)
TINY = {
    "embed_dim": 16, "num_heads": 2, "depth": 2, "mlp_ratio": 2.0, "norm_eps": 1e-5, "average_top_k_layers": 2,
    "instance_norm_target_layer": True, "ema_encoder_only": False, "layerdrop": 0.0,
}
TINY_AUDIO = {
    "feature_encoder_spec": "[(16, 10, 5)] + [(16, 3, 2)] * 2", "prenet_depth": 1, "conv_pos_width": 10,
    "conv_pos_depth": 2, "conv_pos_groups": 4, "use_alibi_encoder": True, "learned_alibi_scale": True,
    "learned_alibi_scale_per_head": True, "prenet_layerdrop": 0.0,
}
TINY_DECODER = {"decoder_dim": 8, "decoder_groups": 4, "decoder_kernel": 3, "decoder_layers": 2}


def hashable_dataclass(real):
    """``dataclasses.dataclass`` whose classes keep ``object.__hash__`` (see the module docstring, point 1)."""

    def wrap(cls=None, **kwargs):
        def apply(target):
            made = real(**kwargs)(target)
            if made.__hash__ is None:
                made.__hash__ = object.__hash__
            return made

        return apply if cls is None else apply(cls)

    return wrap


def import_official(repo: Path, kind: str):
    """The official ``data2vec2`` module and ``Modality`` enum, imported from the snapshot."""
    package_dir = (repo / KINDS[kind][1]).resolve()
    for name, folder in [("examples", None), ("examples.data2vec", package_dir),
                         ("examples.data2vec.data", package_dir / "data"),
                         ("examples.data2vec.models", package_dir / "models"),
                         ("examples.data2vec.models.modalities", package_dir / "models" / "modalities")]:
        package = types.ModuleType(name)
        package.__path__ = [str(folder)] if folder else []
        sys.modules[name] = package
    if kind == "eh_mam":
        spec = importlib.util.spec_from_file_location("ehmam_data_utils", package_dir / "data_utils.py")
        data_utils = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(data_utils)
        import fairseq.data.data_utils

        fairseq.data.data_utils.compute_mask_indices_ema_loss = data_utils.compute_mask_indices_ema_loss
    real = dataclasses.dataclass
    dataclasses.dataclass = hashable_dataclass(real)
    try:
        official = importlib.import_module("examples.data2vec.models.data2vec2")
        modality = importlib.import_module("examples.data2vec.data.modality")
    finally:
        dataclasses.dataclass = real
    return official, modality.Modality


def build(official, Modality, kind: str):
    from omegaconf import OmegaConf

    cfg = OmegaConf.structured(official.Data2VecMultiConfig)
    root = OmegaConf.create({"model": cfg, "optimization": {"max_update": 1000}, "common": {"seed": 1}})
    model_cfg = root.model
    model_cfg._name = "data2vec_multi"  # as fairseq's registry names it in a saved checkpoint
    for key, value in TINY.items():
        model_cfg[key] = value
    model_cfg.supported_modality = Modality.AUDIO
    for key, value in TINY_AUDIO.items():
        model_cfg.modalities.audio[key] = value
    for key, value in TINY_DECODER.items():
        model_cfg.modalities.audio.decoder[key] = value
    torch.manual_seed(0)
    model = official.Data2VecMultiModel.build_model(model_cfg, task=None)
    return model, model_cfg


def round_weights(model) -> None:
    """Seeded, float16-representable weights; the ALiBi scales and the EMA teacher made distinct."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("alibi_scale"):
                param.copy_(0.5 + torch.rand(param.shape, generator=generator))
            param.copy_(param.half().float())
        teacher = {}
        for key, value in model.ema.fp32_params.items():
            student = dict(model.named_parameters()).get(key, value)
            noisy = student + 0.05 * torch.randn(student.shape, generator=generator)
            teacher[key] = noisy.abs() if key.endswith("alibi_scale") else noisy
            teacher[key] = teacher[key].half().float()
        model.ema.restore(teacher, build_fp32_params=True)


def teacher_network(official, Modality, model, model_cfg):
    """The official model without EMA, holding the teacher's weights and the student's shared CNN."""
    teacher = official.Data2VecMultiModel(model_cfg, [Modality.AUDIO], skip_ema=True)
    state = {k: v for k, v in model.state_dict().items() if k != "_ema"}
    state.update(model.ema.fp32_params)
    teacher.load_state_dict(state, strict=True)
    return teacher.eval()


def record(kind: str, repo: Path, commit: str, out: Path) -> None:
    from omegaconf import OmegaConf

    official, Modality = import_official(repo, kind)
    model, model_cfg = build(official, Modality, kind)
    round_weights(model)
    model.eval()
    teacher = teacher_network(official, Modality, model, model_cfg)

    generator = torch.Generator().manual_seed(2)
    source = torch.randn(len(LENGTHS), max(LENGTHS), generator=generator).half().float()
    padding = torch.arange(max(LENGTHS))[None, :] >= torch.tensor(LENGTHS)[:, None]
    source = source.masked_fill(padding, 0.0)
    audio = model.modality_encoders["AUDIO"]
    with torch.no_grad():
        student = model.extract_features(source, mode="AUDIO", padding_mask=padding)
        ours = {"student_x": student["x"], "student_decoder": audio.decoder(student["x"], None)}
        teacher_out = teacher.extract_features(source, mode="AUDIO", padding_mask=padding)
        ours["teacher_targets"] = teacher.make_targets(teacher_out["layer_results"], model_cfg.average_top_k_layers)
        ours["frame_padding"] = student["padding_mask"]
        if kind == "eh_mam":
            ours["student_loss_pred"] = audio.decoder_pred(student["x"], None).mean(-1)
            ours["teacher_loss_pred"] = teacher.modality_encoders["AUDIO"].decoder_pred(
                ours["teacher_targets"], None).mean(-1)

    weights = [("model", k, v) for k, v in model.state_dict().items() if k != "_ema"]
    weights += [("_ema", k, v) for k, v in model.ema.fp32_params.items()]
    # one flat float16 array and its index keep the file small (an .npz entry per tensor costs ~250 bytes)
    index = [[section, key, list(value.shape)] for section, key, value in weights]
    arrays = {"weights": torch.cat([value.reshape(-1) for _, _, value in weights]).half().numpy(),
              "source": source.half().numpy(), "lengths": np.array(LENGTHS)}
    arrays.update({f"out_{k}": v.numpy() for k, v in ours.items()})
    cfg = {"model": OmegaConf.to_container(model_cfg, resolve=True, enum_to_str=True),
           "task": {"_name": "audio_pretraining", "normalize": True, "sample_rate": 16000}}
    meta = {"repository": KINDS[kind][0], "commit": commit, "kind": kind, "torch": torch.__version__,
            "python": sys.version.split()[0], "recorder": "tests/reference/record_official.py"}
    text = {name: np.frombuffer(json.dumps(value).encode(), dtype=np.uint8)
            for name, value in (("cfg", cfg), ("meta", meta), ("index", index))}
    np.savez_compressed(out, **text, **arrays)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} kB) from {KINDS[kind][0]}@{commit}")


def verify_export(kind: str, repo: Path, ours_path: Path) -> None:
    """Exports a checkpoint of ours to the official layout (``run/convert_checkpoint.py --to``), builds the official
    model from the exported config alone, loads the exported weights strictly, and prints the largest difference
    between the official model's features and ours on the recorded input (and of the loss predictors, EH-MAM)."""
    from omegaconf import OmegaConf

    official, Modality = import_official(repo, kind)
    sys.path.insert(0, str(OUT_DIR.parents[1]))
    from maskssl_fairseq.features import load_model
    from maskssl_fairseq.models.eh_mam import to_official

    exported = to_official(torch.load(ours_path, map_location="cpu", weights_only=False), path=ours_path)
    model_cfg = OmegaConf.merge(OmegaConf.structured(official.Data2VecMultiConfig), exported["cfg"]["model"])
    theirs = official.Data2VecMultiModel.build_model(model_cfg, task=None)
    theirs.load_state_dict(exported["model"], strict=True)
    theirs.eval()
    ours, _ = load_model(ours_path)
    generator = torch.Generator().manual_seed(2)
    source = torch.randn(2, 16000, generator=generator)
    padding = torch.arange(16000)[None, :] >= torch.tensor([16000, 12000])[:, None]
    source = source.masked_fill(padding, 0.0)
    with torch.no_grad():
        official_out = theirs.extract_features(source, mode="AUDIO", padding_mask=padding)
        our_out = ours.extract_features(source, padding_mask=padding)
        valid = ~official_out["padding_mask"]
        report = {"features": float((official_out["x"] - our_out["x"])[valid].abs().max())}
        if getattr(ours, "loss_predictor", None) is not None:
            scores = theirs.modality_encoders["AUDIO"].decoder_pred(official_out["x"], None).mean(-1)
            report["loss_predictor"] = float((scores - ours.loss_predictor(our_out["x"]))[valid].abs().max())
    print(f"{ours_path} exported to {KINDS[kind][0]}'s layout: loads strictly into its model; max abs difference "
          + ", ".join(f"{k} {v:.1e}" for k, v in report.items()))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", required=True, choices=sorted(KINDS))
    parser.add_argument("--repo", required=True, type=Path, help="checkout of the official repository")
    parser.add_argument("--commit", required=True, help="the commit the checkout was made from (recorded)")
    parser.add_argument("--out", type=Path, help="default: tests/reference/<kind>.npz")
    parser.add_argument("--force", action="store_true", help="overwrite --out")
    parser.add_argument("--verify-export", type=Path, metavar="OURS.pt",
                        help="instead of recording: check that this checkpoint of ours, exported, runs in the official "
                             "model with the same features")
    args = parser.parse_args(argv)
    if args.verify_export:
        verify_export(args.kind, args.repo, args.verify_export)
        return
    out = args.out or OUT_DIR / f"{args.kind}.npz"
    if out.exists() and not args.force:
        raise SystemExit(f"{out} exists; pass --force to overwrite it")
    if not (args.repo / KINDS[args.kind][1] / "models" / "data2vec2.py").is_file():
        raise SystemExit(f"{args.repo}: no {KINDS[args.kind][1]}/models/data2vec2.py; is it a {KINDS[args.kind][0]} checkout?")
    record(args.kind, args.repo, args.commit, out)


if __name__ == "__main__":
    main()
