"""Records reference outputs of the official EAT, M2D, MSM-MAE and M2D-CLAP code for ``tests/test_convert_spectrogram.py``.

Each official model is built from its own code at a tiny size with seeded weights (rounded to float16 values so
that the fixtures can store them at half size; the fixed sine-cosine tables stay float32), run on a fixed input
and written as a small ``.npz``: the weights in the release's layout, the input, the official front end's
output and the model's outputs, with the repository and commit they came from. The tests convert those weights
with our converters and compare. The official code never enters this repository: give the path of a snapshot.

    # EAT (cwx-worst-one/EAT): the model, task, data and utils folders of a snapshot
    git --git-dir=<EAT mirror> archive 06c1c34e2afd8dc35297e6d3815d31dbeec9d372 models utils tasks data | tar -x -C /tmp/EAT
    python tests/reference/record_official_spectrogram.py eat --repo /tmp/EAT --commit 06c1c34e2afd8dc35297e6d3815d31dbeec9d372

    # M2D / MSM-MAE / M2D-CLAP (nttcslab/m2d patches facebookresearch/mae at efb2a80 with patch_m2d.diff)
    git --git-dir=<m2d mirror> archive f0c4128d4e89b1ab4e303f03141067b34aadf128 patch_m2d.diff examples/portable_m2d.py | tar -x -C /tmp/m2d
    git --git-dir=<mae mirror> archive efb2a8062c206524e35e47d04501ed4f544c0ae8 models_mae.py util/pos_embed.py | tar -x -C /tmp/mae
    python tests/reference/record_official_spectrogram.py m2d --repo /tmp/m2d --commit f0c4128d4e89b1ab4e303f03141067b34aadf128 \\
        --mae /tmp/mae --mae-commit efb2a8062c206524e35e47d04501ed4f544c0ae8

Add ``--check-export`` (with this repository on ``PYTHONPATH``) to check the other direction instead: the fixtures
converted by our ``from_official``, exported by our ``to_official`` and loaded strictly by the official classes,
whose outputs are then compared with ours. Recording twice gives the same files.

Needs fairseq and timm (the project's environment), and for M2D's front end nnAudio and einops (imported by
``portable_m2d.py``; ``pip install --target DIR nnAudio==0.3.4 einops`` and ``PYTHONPATH=DIR`` keep them out of
the environment). Patched in memory, never on disk: EAT's config dataclasses use instances as defaults, which
Python 3.11 rejects (turned into ``default_factory``), and its dataset module imports ``h5py``, which the model
never uses (a stub when missing).
"""

import argparse
import importlib.abc
import importlib.machinery
import json
import re
import subprocess
import sys
import tempfile
import types
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

HERE = Path(__file__).resolve().parent
SAMPLE_RATE = 16000


def test_waveform(samples: int, seed: int) -> torch.Tensor:
    """A fixed clip ``[1, samples]``, float16-exact: a chirp plus a noisy tone burst (one clip keeps the
    fixtures small; nothing here depends on the batch)."""
    t = torch.arange(samples, dtype=torch.float64) / SAMPLE_RATE
    generator = torch.Generator().manual_seed(seed)
    chirp = 0.3 * torch.sin(2 * torch.pi * (300 + 1500 * t) * t)
    burst = 0.2 * torch.sin(2 * torch.pi * 880 * t) * (t > 0.05) + 0.05 * torch.randn(samples, generator=generator, dtype=torch.float64)
    return (chirp + burst).unsqueeze(0).half().float()


def perturb_and_round(module: nn.Module, seed: int, keep=("pos_embed", "positions", "norm_stats")) -> None:
    """Every floating parameter and buffer moved off its initialisation (LayerNorms away from 1 and 0, so a
    swapped norm shows) and rounded to float16 values; fixed position tables untouched."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
            if not torch.is_floating_point(tensor) or any(k in name for k in keep):
                continue
            tensor.add_(0.1 * torch.randn(tensor.shape, generator=generator))
            tensor.copy_(tensor.half().float())


def weight_arrays(prefix: str, state: dict) -> dict:
    """``{prefix + key: array}``: float16 where the values are float16-exact, else float32."""
    arrays = {}
    for key, value in state.items():
        value = value.detach().float().cpu()
        exact = torch.equal(value.half().float(), value)
        arrays[prefix + key] = value.numpy().astype(np.float16 if exact else np.float32)
    return arrays


def write(path: Path, arrays: dict, meta: dict) -> None:
    arrays = dict(arrays, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
    np.savez_compressed(path, **arrays)
    print(f"wrote {path} ({path.stat().st_size / 1024:.1f} kB)")


# ----- EAT -----

class DataclassDefaultsFinder(importlib.abc.MetaPathFinder):
    """Loads the modules of package ``package`` with ``field: Type = Type()`` dataclass defaults rewritten
    to ``default_factory`` (Python >= 3.11 refuses mutable dataclass defaults)."""

    PATTERN = re.compile(r"^(\s+\w+: [\w\[\], ]+) = (\w+)\(\)\s*$", re.MULTILINE)

    def __init__(self, package: str):
        self.package = package

    def find_spec(self, fullname, path, target=None):
        if not fullname.startswith(self.package + "."):
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and isinstance(spec.loader, importlib.machinery.SourceFileLoader):
            spec.loader = PatchedLoader(spec.loader.name, spec.loader.path)
        return spec


class PatchedLoader(importlib.machinery.SourceFileLoader):
    def source_to_code(self, data, path, *, _optimize=-1):
        source = importlib.util.decode_source(data)
        source = DataclassDefaultsFinder.PATTERN.sub(
            r'\1 = __import__("dataclasses").field(default_factory=\2)', source)
        return compile(source, path, "exec", dont_inherit=True, optimize=_optimize)

    def get_code(self, fullname):  # skip the bytecode cache: the source is rewritten
        return self.source_to_code(self.get_data(self.get_filename(fullname)), self.get_filename(fullname))


def import_eat(repo: Path):
    """EAT's model and task modules, imported as the package ``eat_official``."""
    link_dir = Path(tempfile.mkdtemp())
    (link_dir / "eat_official").symlink_to(repo.resolve())
    sys.path.insert(0, str(link_dir))
    sys.meta_path.insert(0, DataclassDefaultsFinder("eat_official"))
    try:
        import h5py  # noqa: F401
    except ImportError:
        sys.modules["h5py"] = types.ModuleType("h5py")
    import importlib

    pretraining = importlib.import_module("eat_official.models.EAT_pretraining")
    classification = importlib.import_module("eat_official.models.EAT_audio_classification")
    importlib.import_module("eat_official.tasks.pretraining_AS2M")
    return pretraining, classification


EAT_TINY = {"embed_dim": 16, "depth": 2, "num_heads": 2, "mlp_ratio": 4.0, "average_top_k_layers": 2, "clone_batch": 2,
            "target_length": 32, "max_length": 4, "patch_size": 16, "decoder_dim": 16, "decoder_layers": 2, "decoder_groups": 16}
EAT_NORM = (-4.268, 4.569)


def eat_config(pretraining) -> "omegaconf.DictConfig":
    """The root config EAT's model reads (its pretraining_AS2M.yaml at a tiny size)."""
    from omegaconf import OmegaConf

    tiny = EAT_TINY
    root = OmegaConf.create({
        "common": {"seed": 1}, "optimization": {"max_update": 100},
        "task": {"_name": "mae_image_pretraining", "data": "", "audio_mae": True, "target_length": tiny["target_length"]},
        "model": OmegaConf.structured(pretraining.Data2VecMultiConfig),
    })
    root.model.merge_with({
        "_name": "data2vec_multi", "embed_dim": tiny["embed_dim"], "depth": tiny["depth"], "num_heads": tiny["num_heads"],
        "mlp_ratio": tiny["mlp_ratio"], "ema_decay": 0.9998, "ema_end_decay": 0.99999, "ema_anneal_end_step": 100,
        "instance_norm_target_layer": True, "layer_norm_target_layer": False, "layer_norm_targets": True,
        "average_top_k_layers": tiny["average_top_k_layers"], "clone_batch": tiny["clone_batch"], "norm_eps": 1e-6,
        "encoder_dropout": 0, "post_mlp_drop": 0, "attention_dropout": 0, "activation_dropout": 0,
        "supported_modality": "IMAGE", "cls_loss": 1, "ema_encoder_only": False,
        "modalities": {"image": {
            "in_chans": 1, "inverse_mask": True, "mask_prob": 0.8, "mask_prob_adjust": 0.07, "mask_length": 5,
            "mask_noise_std": 0.01, "prenet_depth": 0, "ema_local_encoder": True, "num_extra_tokens": 1,
            "init_extra_token_zero": False, "use_alibi_encoder": False, "embed_dim": tiny["embed_dim"],
            "patch_size": tiny["patch_size"],
            "target_length": tiny["target_length"], "max_length": tiny["max_length"],
            "decoder": {"decoder_dim": tiny["decoder_dim"], "decoder_groups": tiny["decoder_groups"], "decoder_kernel": 3,
                        "decoder_layers": tiny["decoder_layers"], "input_dropout": 0},
        }},
    })
    return root


def eat_fbank(waveform: torch.Tensor, target_length: int) -> torch.Tensor:
    """EAT's front end as its feature_extract.py runs it, per clip -> ``[B, 1, T, 128]``."""
    import torchaudio

    images = []
    for clip in waveform:
        clip = clip - clip.mean()
        mel = torchaudio.compliance.kaldi.fbank(clip.unsqueeze(0), htk_compat=True, sample_frequency=SAMPLE_RATE,
                                                use_energy=False, window_type="hanning", num_mel_bins=128,
                                                dither=0.0, frame_shift=10)
        mel = torch.nn.functional.pad(mel, (0, 0, 0, max(0, target_length - mel.shape[0])))[:target_length]
        images.append((mel - EAT_NORM[0]) / (EAT_NORM[1] * 2))
    return torch.stack(images).unsqueeze(1)


def record_eat(repo: Path, commit: str, out: Path) -> None:
    from omegaconf import OmegaConf

    pretraining, classification = import_eat(repo)
    root = eat_config(pretraining)
    torch.manual_seed(0)
    model = pretraining.Data2VecMultiModel.build_model(root.model, task=None).eval()
    perturb_and_round(model, seed=1)
    teacher = model.ema.model
    perturb_and_round(teacher, seed=2)  # a teacher unlike the student, so that a mix-up of the two shows
    model.ema.build_fp32_params()
    waveform = test_waveform(4800, seed=3)  # 0.3 s: 28 fbank frames, zero-padded to 32
    fbank = eat_fbank(waveform, EAT_TINY["target_length"])
    with torch.no_grad():
        student = model.extract_features(fbank, mode="IMAGE", mask=False, remove_extra_tokens=False)["x"]
        teacher_out = teacher.extract_features(fbank, mode="IMAGE", mask=False, remove_extra_tokens=False)["x"]
    state = model.state_dict()
    ema = state.pop("_ema")
    config = OmegaConf.to_container(root, resolve=True, enum_to_str=True)
    meta = {"repo": "cwx-worst-one/EAT", "commit": commit, "cfg": config, "norm_stats": EAT_NORM}
    write(out / "eat_pretrained.npz", {**weight_arrays("w/", state), **weight_arrays("ema/", ema),
                                       "waveform": waveform.half().numpy(), "fbank": fbank.numpy(),
                                       "student": student.numpy(), "teacher": teacher_out.numpy()}, meta)

    # the fine-tuned classifier (mae_image_classification) built on the same pretraining config
    num_classes = 5
    cls_root = OmegaConf.create({"task": {"data": ""}, "model": OmegaConf.structured(classification.MaeImageClassificationConfig)})
    cls_root.model.merge_with({"_name": "mae_image_classification", "model_path": "", "num_classes": num_classes,
                               "audio_mae": True, "target_length": EAT_TINY["target_length"], "drop_path_rate": 0.0,
                               "prediction_mode": "CLS_TOKEN", "pretrained_model_args": config})
    torch.manual_seed(4)
    classifier = classification.MaeImageClassificationModel(cls_root.model).eval()
    perturb_and_round(classifier, seed=5)
    with torch.no_grad():
        logits = classifier(fbank)
    meta = {"repo": "cwx-worst-one/EAT", "commit": commit, "norm_stats": EAT_NORM,
            "cfg": {"model": OmegaConf.to_container(cls_root.model, resolve=True, enum_to_str=True)}}
    write(out / "eat_finetuned.npz", {**weight_arrays("w/", classifier.state_dict()), "logits": logits.numpy()},
          dict(meta, input="the waveform of eat_pretrained.npz"))


# ----- M2D, MSM-MAE, M2D-CLAP -----

def patched_m2d_models(repo: Path, mae: Path) -> types.ModuleType:
    """MAE's models_mae.py and util/pos_embed.py with patch_m2d.diff's hunks for them applied, in a temporary
    folder (as nttcslab/m2d's README sets its code up), imported as ``models_mae``."""
    work = Path(tempfile.mkdtemp()) / "m2d"
    work.mkdir(parents=True)
    (work / "models_mae.py").write_bytes((mae / "models_mae.py").read_bytes())
    (work / "pos_embed.py").write_bytes((mae / "util" / "pos_embed.py").read_bytes())
    sections, current = [], None
    for line in (repo / "patch_m2d.diff").read_text().splitlines(keepends=True):
        if line.startswith("--- "):
            current = [line]
            sections.append(current)
        elif current is not None:
            current.append(line)
    wanted = [s for s in sections if len(s) > 1 and s[1].split()[1] in ("m2d/models_mae.py", "m2d/pos_embed.py")]
    if len(wanted) != 2:
        raise SystemExit(f"{repo / 'patch_m2d.diff'}: expected hunks for m2d/models_mae.py and m2d/pos_embed.py")
    (work.parent / "filtered.diff").write_text("".join("".join(s) for s in wanted))
    subprocess.run(["patch", "-p1", "-s", "-i", str(work.parent / "filtered.diff")], cwd=work.parent, check=True)
    sys.path.insert(0, str(work))
    import models_mae

    return models_mae


def m2d_front_end(repo: Path, waveform: torch.Tensor) -> torch.Tensor:
    """Unnormalised ``log(mel + eps)`` ``[B, 1, 80, T]`` by M2D's portable runtime (nnAudio)."""
    sys.path.insert(0, str(repo / "examples"))
    import portable_m2d

    cfg = portable_m2d.Config()
    cfg.sr = "16k"
    runtime = types.SimpleNamespace(to_spec=portable_m2d.get_to_melspec(cfg))
    with torch.no_grad():
        return portable_m2d.PortableM2D.to_log_mel_spec(runtime, waveform)


M2D_FRAMES, M2D_NORM = 32, (-5.5, 3.5)
M2D_PATCH = 8  # 8 x 8 patches keep the fixtures small (the released models cut 16 x 16)
M2D_TINY = dict(img_size=[80, M2D_FRAMES], patch_size=M2D_PATCH, in_chans=1, embed_dim=16, depth=2, num_heads=2,
                decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2, mlp_ratio=4,
                norm_layer=partial(nn.LayerNorm, eps=1e-6), norm_stats=list(M2D_NORM))


def fixed_order(batch: int, patches: int, visible: int, seed: int) -> torch.Tensor:
    """``ids_shuffle`` with the visible patches first, each part ascending (our ``split_by_mask`` order)."""
    generator = torch.Generator().manual_seed(seed)
    orders = []
    for _ in range(batch):
        chosen = torch.randperm(patches, generator=generator)
        orders.append(torch.cat([chosen[:visible].sort().values, chosen[visible:].sort().values]))
    return torch.stack(orders)


def record_m2d(repo: Path, commit: str, mae: Path, mae_commit: str, out: Path) -> None:
    models_mae = patched_m2d_models(repo, mae)
    waveform = test_waveform((M2D_FRAMES - 1) * 160, seed=6)  # exactly M2D_FRAMES centred frames
    log_mel = m2d_front_end(repo, waveform)
    lms = (log_mel - M2D_NORM[0]) / M2D_NORM[1]
    patches = (80 // M2D_PATCH) * (M2D_FRAMES // M2D_PATCH)
    visible = patches * 3 // 10
    order = fixed_order(1, patches, visible=visible, seed=7)
    restore = order.argsort(dim=1)
    meta = {"repo": "nttcslab/m2d", "commit": commit, "mae_repo": "facebookresearch/mae", "mae_commit": mae_commit,
            "name": f"m2d_vit_base-80x{M2D_FRAMES}p{M2D_PATCH}x{M2D_PATCH}-tiny", "encoder_attention_heads": 2}
    shared = {"waveform": waveform.half().numpy(), "log_mel": log_mel.numpy()}
    same_input = "the waveform and log_mel of m2d.npz"

    # M2D: an encoder-only file (util/to_encoder_only_weight.py keeps the backbone), features of the whole input
    torch.manual_seed(10)
    m2d = models_mae.M2DViT(**M2D_TINY).eval()
    perturb_and_round(m2d, seed=11)
    with torch.no_grad():
        features = m2d.forward_encoder(lms, mask_ratio=0)[0]
    encoder_only = {k: v for k, v in m2d.state_dict().items()
                    if not k.startswith(("decoder", "mask_token", "target_"))}
    write(out / "m2d.npz", {**weight_arrays("w/", encoder_only), **shared, "features": features.numpy()},
          dict(meta, predictor_attention_heads=2))

    # MSM-MAE as the M2D code base trains it (MaskedAutoencoderViT): features and the reconstruction
    torch.manual_seed(12)
    msm = models_mae.MaskedAutoencoderViT(**M2D_TINY).eval()
    perturb_and_round(msm, seed=13)
    with torch.no_grad():
        msm_features = msm.forward_encoder(lms, mask_ratio=0)[0]
        latent = msm.forward_encoder(lms, mask_ratio=(restore, visible))[0]
        reconstruction = msm.forward_decoder(latent, restore)  # every position [B, L, 256]
    masked = reconstruction.gather(1, order[:, visible:, None].expand(-1, -1, reconstruction.shape[-1]))
    write(out / "msm_mae.npz", {**weight_arrays("w/", msm.state_dict()), "order": order.numpy(),
                                "features": msm_features.numpy(), "reconstruction": masked.numpy()},
          dict(meta, decoder_attention_heads=2, input=same_input))

    # M2D-CLAP (2024): a full checkpoint; features, the projected audio embedding, the predictor's output
    torch.manual_seed(14)
    clap = models_mae.M2D_CLAP_ViT(**M2D_TINY, off_emb_dim=16).eval()
    perturb_and_round(clap, seed=15)
    with torch.no_grad():
        latent = clap.forward_encoder(lms, mask_ratio=0)[0]
        audio = clap.audio_proj(clap.drop_cls_token(latent).mean(1))
        visible_latent = clap.forward_encoder(lms, mask_ratio=(restore, visible))[0]
        prediction = clap.forward_decoder(visible_latent, restore)  # masked positions, in ``order``
    write(out / "m2d_clap.npz", {**weight_arrays("w/", clap.state_dict()), "order": order.numpy(),
                                 "features": latent.numpy(), "audio_embedding": audio.numpy(),
                                 "prediction": prediction.numpy()},
          dict(meta, name=f"m2d_clap_vit_base-80x{M2D_FRAMES}p{M2D_PATCH}x{M2D_PATCH}-tiny", predictor_attention_heads=2,
               input=same_input))

    # M2D-CLAP 2025's projector (portable_m2d.AudioToSemantic, sem_mode 1) on the same encoder's patch tokens;
    # its release is a saved RuntimeM2D: this projector under backbone.audio_proj.*, the encoder beside it
    import portable_m2d

    torch.manual_seed(16)
    semantic = portable_m2d.add_semantic_audio_proj(1, M2D_TINY["embed_dim"]).eval()
    perturb_and_round(semantic, seed=17)
    with torch.no_grad():
        semantic_embedding = semantic(latent[:, 1:])
    write(out / "m2d_clap_2025.npz", {**weight_arrays("w/audio_proj.", semantic.state_dict()),
                                      "audio_embedding": semantic_embedding.numpy()},
          dict(meta, input=f"the encoder of m2d_clap.npz on {same_input}", commit=commit))


# ----- our exporters, loaded by the official code -----

def check_eat_export(pretraining, fixtures: Path) -> None:
    """Our EAT, converted from the fixture and exported with ``eat.to_official``, loads strictly into EAT's
    own model, which then gives our outputs."""
    from omegaconf import OmegaConf

    from maskssl_fairseq.models import eat

    arrays = dict(np.load(fixtures / "eat_pretrained.npz"))
    meta = json.loads(arrays.pop("meta").tobytes())
    state = {k[2:]: torch.from_numpy(v.astype(np.float32)) for k, v in arrays.items() if k.startswith("w/")}
    state["_ema"] = {k[4:]: torch.from_numpy(v.astype(np.float32)) for k, v in arrays.items() if k.startswith("ema/")}
    ours_checkpoint = eat.from_official({"cfg": meta["cfg"], "model": state})
    ours = eat.EATModel(OmegaConf.create(ours_checkpoint["cfg"]["model"]))
    ours.load_state_dict(ours_checkpoint["model"], strict=True)
    ours.eval()
    exported = eat.to_official(ours_checkpoint, max_length=EAT_TINY["max_length"])
    root = eat_config(pretraining)
    root.model.merge_with(exported["cfg"]["model"])
    official = pretraining.Data2VecMultiModel.build_model(root.model, task=None).eval()
    official.load_state_dict(exported["model"], strict=True)
    fbank = torch.from_numpy(arrays["fbank"])
    grid = (EAT_TINY["target_length"] // 16, 128 // 16)
    with torch.no_grad():
        theirs = official.extract_features(fbank, mode="IMAGE", mask=False, remove_extra_tokens=False)["x"]
        mine = ours.encoder(ours.encoder.embed(fbank[:, 0].transpose(1, 2).unsqueeze(1)))
    patches = mine[:, 1:].reshape(1, 128 // 16, grid[0], -1).transpose(1, 2).reshape(1, -1, mine.shape[-1])
    mine = torch.cat([mine[:, :1], patches], dim=1)
    print(f"EAT: ours exported, loaded strictly by EAT's code: max abs difference {(mine - theirs).abs().max():.2e}")


def check_m2d_exports(models_mae, fixtures: Path) -> None:
    """Our M2D / MSM-MAE / M2D-CLAP, converted from the fixtures and exported, load strictly into the official
    classes, which then give our outputs."""
    from maskssl_fairseq.models import m2d, m2d_clap, msm_mae

    log_mel = torch.from_numpy(np.load(fixtures / "m2d.npz")["log_mel"])
    for name, module, cls, extra in (("m2d", m2d, models_mae.M2DViT, dict(predictor_embed_dim=16, predictor_layers=1)),
                                     ("msm_mae", msm_mae, models_mae.MaskedAutoencoderViT, {}),
                                     ("m2d_clap", m2d_clap, models_mae.M2D_CLAP_ViT, {})):
        arrays = dict(np.load(fixtures / f"{name}.npz"))
        meta = json.loads(arrays.pop("meta").tobytes())
        state = {k[2:]: torch.from_numpy(v.astype(np.float32)) for k, v in arrays.items() if k.startswith("w/")}
        heads = {key: meta[key] for key in ("encoder_attention_heads", "predictor_attention_heads",
                                            "decoder_attention_heads") if key in meta}
        checkpoint = module.from_official({"model": state}, name=meta["name"], **heads, **extra)
        exported = module.to_official(checkpoint)["model"]
        official = cls(**M2D_TINY, **({"off_emb_dim": 16} if name == "m2d_clap" else {})).eval()
        official.load_state_dict(exported, strict=True)
        from fairseq.models import MODEL_REGISTRY
        from omegaconf import OmegaConf

        ours = MODEL_REGISTRY[name](OmegaConf.create(checkpoint["cfg"]["model"]))
        ours.load_state_dict(checkpoint["model"], strict=True)
        ours.eval()
        with torch.no_grad():
            theirs = official.forward_encoder((log_mel - M2D_NORM[0]) / M2D_NORM[1], mask_ratio=0)[0]
            mine = ours.encoder(ours.encoder.embed(ours.frontend.standardise(log_mel)))
            difference = (mine - theirs).abs().max()
            if name == "m2d_clap":
                difference = max(difference, (ours.audio_proj(mine[:, 1:]) - official.audio_proj(theirs[:, 1:].mean(1))).abs().max())
        print(f"{name}: ours exported, loaded strictly by the official class: max abs difference {difference:.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", choices=["eat", "m2d"], help="eat: EAT pretrained and fine-tuned; m2d: M2D, MSM-MAE, M2D-CLAP")
    parser.add_argument("--repo", type=Path, required=True, help="the official repository's snapshot")
    parser.add_argument("--commit", required=True, help="the snapshot's commit, recorded in the fixtures")
    parser.add_argument("--mae", type=Path, help="m2d: facebookresearch/mae's snapshot (models_mae.py, util/pos_embed.py)")
    parser.add_argument("--mae-commit", help="m2d: its commit (M2D's README names efb2a80)")
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--check-export", action="store_true",
                        help="instead of recording: our converters' round trip through the fixtures in --out, "
                             "exported with to_official and loaded strictly by the official code (needs this "
                             "repository on PYTHONPATH)")
    args = parser.parse_args()
    if args.model == "m2d" and (args.mae is None or args.mae_commit is None):
        parser.error("m2d needs --mae and --mae-commit")
    if args.check_export:
        if args.model == "eat":
            check_eat_export(import_eat(args.repo)[0], args.out)
        else:
            check_m2d_exports(patched_m2d_models(args.repo, args.mae), args.out)
    elif args.model == "eat":
        record_eat(args.repo, args.commit, args.out)
    else:
        record_m2d(args.repo, args.commit, args.mae, args.mae_commit, args.out)


if __name__ == "__main__":
    main()
