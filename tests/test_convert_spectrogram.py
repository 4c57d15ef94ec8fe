"""Our EAT, M2D, MSM-MAE and M2D-CLAP equal their official implementations with copied weights.

The fixtures in ``tests/reference/`` were recorded from the official code by
``tests/reference/record_official_spectrogram.py`` (each names its repository and commit): tiny models with
seeded weights in the release layout, a fixed clip, the official front end's output and the model outputs.
Here the weights go through our converters (``from_official``), the converted checkpoint is saved and loaded
the way our tools load it, and our outputs are compared with the official ones; the exporters
(``to_official``) must give the same release layout back, bit for bit.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import maskssl_fairseq  # noqa: F401  (registers the models)
from maskssl_fairseq.features import load_model
from maskssl_fairseq.models import eat, m2d, m2d_clap, msm_mae
from maskssl_fairseq.modules import released_checkpoints as released
from maskssl_fairseq.modules.spectrogram_vit import sincos_positions, split_by_mask

from helpers import fairseq_hydra_train

REFERENCE = Path(__file__).parent / "reference"
TOLERANCE = 1e-4


def fixture(name: str):
    """(arrays, meta) of ``reference/<name>.npz``; weights as float32 tensors under ``w/`` (and ``ema/``)."""
    arrays = dict(np.load(REFERENCE / f"{name}.npz"))
    meta = json.loads(arrays.pop("meta").tobytes())
    return arrays, meta


def weights(arrays: dict, prefix: str) -> dict:
    return {key[len(prefix):]: torch.from_numpy(value.astype(np.float32)) for key, value in arrays.items()
            if key.startswith(prefix)}


def tensor(arrays: dict, key: str) -> torch.Tensor:
    return torch.from_numpy(arrays[key].astype(np.float32))


def saved_and_loaded(checkpoint: dict, tmp_path: Path, name: str):
    """The converted checkpoint written to disk and read back by fairseq's loader (``features.load_model``)."""
    path = tmp_path / f"{name}.pt"
    torch.save(checkpoint, path)
    model, _ = load_model(str(path))
    return model, path


def max_diff(ours: torch.Tensor, official: torch.Tensor) -> float:
    assert ours.shape == official.shape, (ours.shape, official.shape)
    return (ours.float() - official.float()).abs().max().item()


def assert_same_state(a: dict, b: dict) -> None:
    assert set(a) == set(b), sorted(set(a) ^ set(b))
    for key in a:
        if isinstance(a[key], dict):
            assert_same_state(a[key], b[key])
        else:
            assert torch.equal(a[key], b[key]), key


# ----- EAT -----

def eat_release(arrays: dict, meta: dict) -> dict:
    return {"cfg": meta["cfg"], "model": dict(weights(arrays, "w/"), _ema=weights(arrays, "ema/"))}


def official_tokens_to_ours(tokens: torch.Tensor, time_patches: int, freq_patches: int) -> torch.Tensor:
    """EAT's ``[B, 1 + T'F', D]`` (CLS, then time-major patches) -> ours (CLS, then frequency-major)."""
    batch, _, dim = tokens.shape
    patches = tokens[:, 1:].reshape(batch, time_patches, freq_patches, dim).transpose(1, 2).reshape(batch, -1, dim)
    return torch.cat([tokens[:, :1], patches], dim=1)


def test_eat_pretrained_equals_official(tmp_path):
    arrays, meta = fixture("eat_pretrained")
    release = eat_release(arrays, meta)
    checkpoint = eat.from_official(release, path=tmp_path / "eat_official.pt")
    model, _ = saved_and_loaded(checkpoint, tmp_path, "eat")
    cfg = model.cfg
    assert (cfg.n_mels, cfg.input_frames, cfg.patch_size, cfg.encoder_embed_dim) == (128, 32, 16, 16)
    assert model.frontend.norm_stats.tolist() == pytest.approx([-4.268, 4.569])
    grid = (cfg.input_frames // cfg.patch_size, cfg.n_mels // cfg.patch_size)

    waveform = tensor(arrays, "waveform")
    official_fbank = tensor(arrays, "fbank")[:, 0].transpose(1, 2)  # [B, 128, T]
    fbank = model.frontend(waveform)
    # our table, computed, equals the one EAT stores (EAT computes it in float32)
    computed = sincos_positions(cfg.encoder_embed_dim, (grid[1], grid[0]), time_first=False)
    differences = {
        "fbank": max_diff(fbank, official_fbank),
        "positions": max_diff(computed, model.encoder.pos_embed),
    }
    with torch.no_grad():
        tokens = model.encoder.embed(official_fbank.unsqueeze(1))
        differences["student"] = max_diff(model.encoder(tokens), official_tokens_to_ours(tensor(arrays, "student"), *grid))
        teacher = model.teacher(tokens).encoder
        differences["teacher"] = max_diff(teacher(teacher.embed(official_fbank.unsqueeze(1))),
                                          official_tokens_to_ours(tensor(arrays, "teacher"), *grid))
        differences["student, our front end"] = max_diff(model.encoder(model.encoder.embed(fbank.unsqueeze(1))),
                                                         official_tokens_to_ours(tensor(arrays, "student"), *grid))
    print(f"EAT vs {meta['repo']}@{meta['commit'][:7]}: max abs differences {differences}")
    assert max(differences.values()) < TOLERANCE, differences

    # exporter: ours -> EAT's layout gives the release's weights back (the position rows past our input width
    # computed by us, in float64 then rounded, where EAT computes in float32), and -> ours again bit for bit
    exported = eat.to_official(checkpoint, max_length=meta["cfg"]["model"]["modalities"]["image"]["max_length"])
    positions = "modality_encoders.IMAGE.fixed_positional_encoder.positions"

    def without_positions(state: dict) -> dict:
        assert max_diff(state[positions], release["model"][positions]) < 1e-6
        return {k: without_positions(v) if k == "_ema" else v for k, v in state.items() if k != positions}

    assert_same_state(without_positions(exported["model"]), without_positions(release["model"]))
    assert_same_state(eat.from_official(exported)["model"], checkpoint["model"])


def test_eat_finetuned_equals_official(tmp_path):
    from maskssl_fairseq.models.audio_classifier import SpectrogramClassifierModel

    arrays, meta = fixture("eat_finetuned")
    inputs, _ = fixture("eat_pretrained")
    checkpoint = eat.from_official_finetuned({"cfg": meta["cfg"], "model": weights(arrays, "w/")},
                                             labels=["a", "b", "c", "d", "e"])
    path = tmp_path / "eat_finetuned.pt"
    torch.save(checkpoint, path)
    # as run/classify.py loads a classifier
    state = torch.load(path, weights_only=False)
    model = SpectrogramClassifierModel.build_model(OmegaConf.create(state["cfg"]["model"]))
    model.load_state_dict(state["model"], strict=True)
    model.eval()
    assert model.pooling == "cls" and model.fc_norm is not None
    with torch.no_grad():
        logits = model(tensor(inputs, "waveform"))["logits"]
    difference = max_diff(logits, tensor(arrays, "logits"))
    print(f"EAT fine-tuned vs {meta['repo']}@{meta['commit'][:7]}: logits max abs difference {difference:.2e}")
    assert difference < TOLERANCE


# ----- M2D, MSM-MAE, M2D-CLAP -----

def m2d_inputs():
    arrays, meta = fixture("m2d")
    return tensor(arrays, "waveform"), tensor(arrays, "log_mel")


def front_end_and_positions(model, log_mel: torch.Tensor) -> dict:
    """Our standardised log-mel against nnAudio's (M2D's runtime; the raw ``log(mel + eps)`` values, down to
    -16, differ by up to 1.3e-4: torch.stft against nnAudio's convolution), the encoder's features from our
    own front end, and our computed position table against the stored one."""
    waveform, _ = m2d_inputs()
    cfg = model.cfg
    grid = (cfg.n_mels // cfg.patch_size, cfg.input_frames // cfg.patch_size)
    ours = model.frontend(waveform)[..., : cfg.input_frames].unsqueeze(1)
    assert max_diff(model.frontend.log_mel(waveform)[..., : cfg.input_frames], log_mel[:, 0]) < 5e-4
    with torch.no_grad():
        from_our_front_end = model.encoder(model.encoder.embed(ours))
    return {
        "standardised log-mel": max_diff(ours, model.frontend.standardise(log_mel)),
        "features, our front end": max_diff(from_our_front_end, encode(model, log_mel)),
        "positions": max_diff(sincos_positions(cfg.encoder_embed_dim, grid, time_first=True), model.encoder.pos_embed),
    }


def encode(model, log_mel: torch.Tensor) -> torch.Tensor:
    """Our encoder on the official (standardised) spectrogram, all patches, CLS first."""
    with torch.no_grad():
        return model.encoder(model.encoder.embed(model.frontend.standardise(log_mel)))


def mask_of(order: torch.Tensor, visible: int) -> torch.Tensor:
    mask = torch.ones(order.shape, dtype=torch.bool)
    mask.scatter_(1, order[:, :visible], False)
    return mask


def test_m2d_equals_official(tmp_path):
    arrays, meta = fixture("m2d")
    release = {"model": weights(arrays, "w/")}  # an encoder-only file (util/to_encoder_only_weight.py)
    checkpoint = m2d.from_official(release, path=tmp_path / meta["name"] / "checkpoint-300.pth",
                                   encoder_attention_heads=2, predictor_embed_dim=16, predictor_layers=1,
                                   predictor_attention_heads=2)
    model, _ = saved_and_loaded(checkpoint, tmp_path, "m2d")
    assert (model.cfg.input_frames, model.cfg.patch_size) == (32, 8)  # from the folder name
    assert m2d.official_folder_name(checkpoint, suffix="tiny") == meta["name"]
    log_mel = tensor(arrays, "log_mel")
    differences = front_end_and_positions(model, log_mel)
    differences["features"] = max_diff(encode(model, log_mel), tensor(arrays, "features"))
    print(f"M2D vs {meta['repo']}@{meta['commit'][:7]}: max abs differences {differences}")
    assert max(differences.values()) < TOLERANCE, differences
    # an encoder-only release exports to the same layout plus what our model holds besides
    exported = m2d.to_official(checkpoint)["model"]
    assert_same_state({k: v for k, v in exported.items() if k in release["model"]}, release["model"])
    again = m2d.from_official({"model": exported}, name=meta["name"], encoder_attention_heads=2, predictor_attention_heads=2)
    assert_same_state(again["model"], checkpoint["model"])


def test_msm_mae_equals_official(tmp_path):
    arrays, meta = fixture("msm_mae")
    _, log_mel = m2d_inputs()
    release = {"model": weights(arrays, "w/")}
    checkpoint = msm_mae.from_official(release, name=meta["name"], encoder_attention_heads=2, decoder_attention_heads=2)
    model, _ = saved_and_loaded(checkpoint, tmp_path, "msm_mae")
    order = torch.from_numpy(arrays["order"])
    visible = order.shape[1] - arrays["reconstruction"].shape[1]
    differences = front_end_and_positions(model, log_mel)
    differences["features"] = max_diff(encode(model, log_mel), tensor(arrays, "features"))
    with torch.no_grad():
        tokens = model.encoder.embed(model.frontend.standardise(log_mel))
        kept, _, our_order = split_by_mask(tokens, mask_of(order, visible))
        assert torch.equal(our_order, order)
        reconstruction = model.decoder(model.encoder(kept), our_order)
    differences["reconstruction"] = max_diff(reconstruction, tensor(arrays, "reconstruction"))
    print(f"MSM-MAE vs {meta['repo']}@{meta['commit'][:7]}: max abs differences {differences}")
    assert max(differences.values()) < TOLERANCE, differences
    assert_same_state(msm_mae.to_official(checkpoint)["model"], release["model"])


def test_m2d_clap_equals_official(tmp_path):
    arrays, meta = fixture("m2d_clap")
    waveform, log_mel = m2d_inputs()
    release = {"model": weights(arrays, "w/")}  # a full checkpoint: predictor, target encoder, projector
    checkpoint = m2d_clap.from_official(release, name=meta["name"], encoder_attention_heads=2, predictor_attention_heads=2)
    model, _ = saved_and_loaded(checkpoint, tmp_path, "m2d_clap")
    order = torch.from_numpy(arrays["order"])
    visible = order.shape[1] - arrays["prediction"].shape[1]
    differences = {"features": max_diff(encode(model, log_mel), tensor(arrays, "features"))}
    with torch.no_grad():
        differences["audio embedding"] = max_diff(model.audio_proj(encode(model, log_mel)[:, 1:]),
                                                  tensor(arrays, "audio_embedding"))
        # end to end from the waveform: our front end, the clip cut into training crops (here one)
        differences["audio embedding, our front end"] = max_diff(model.clap_embedding(waveform),
                                                                 tensor(arrays, "audio_embedding"))
        tokens = model.encoder.embed(model.frontend.standardise(log_mel))
        kept, _, our_order = split_by_mask(tokens, mask_of(order, visible))
        differences["prediction"] = max_diff(model.predictor(model.encoder(kept), our_order), tensor(arrays, "prediction"))
    print(f"M2D-CLAP vs {meta['repo']}@{meta['commit'][:7]}: max abs differences {differences}")
    assert max(differences.values()) < TOLERANCE, differences
    assert_same_state(m2d_clap.to_official(checkpoint)["model"], release["model"])


def test_m2d_clap_2025_projector_equals_official(tmp_path):
    """A 2025 release (a saved RuntimeM2D: ``backbone.*``, the semantic-token projector ``audio_proj.sem_*``)."""
    arrays, meta = fixture("m2d_clap_2025")
    encoder, encoder_meta = fixture("m2d_clap")
    _, log_mel = m2d_inputs()
    backbone = {key: value for key, value in weights(encoder, "w/").items()
                if not key.startswith(("audio_proj.", "logit_scale", "decoder", "mask_token", "target_"))}
    backbone.update(weights(arrays, "w/"))
    release = {"model": {"backbone." + key: value for key, value in backbone.items()}}
    checkpoint = m2d_clap.from_official(release, name=encoder_meta["name"], encoder_attention_heads=2,
                                        predictor_embed_dim=16, predictor_layers=1, predictor_attention_heads=2)
    model, _ = saved_and_loaded(checkpoint, tmp_path, "m2d_clap_2025")
    assert (model.cfg.audio_projector, model.cfg.audio_projector_depth) == ("semantic", 1)
    with torch.no_grad():
        difference = max_diff(model.audio_proj(encode(model, log_mel)[:, 1:]), tensor(arrays, "audio_embedding"))
    print(f"M2D-CLAP 2025 projector vs {meta['repo']}@{meta['commit'][:7]}: max abs difference {difference:.2e}")
    assert difference < TOLERANCE
    exported = m2d_clap.to_official(checkpoint)["model"]
    assert_same_state({k: v for k, v in exported.items() if k in backbone}, backbone)


# ----- conventions and old checkpoints -----

def test_m2d_folder_name_and_64_channels_per_head():
    assert released.parse_m2d_name("m2d_vit_base-80x608p16x16-240213")["input_frames"] == 608
    assert released.parse_m2d_name("m2d_clap_vit_base-80x1001p16x16p32k-2025")["sample_rate"] == 32000
    with pytest.raises(ValueError, match="folder-name convention"):
        released.parse_m2d_name("my_weights")
    with pytest.raises(ValueError, match="square patches"):
        released.parse_m2d_name("m2d_vit_base-80x608p16x4-240213")
    base = {"patch_embed.proj.weight": torch.empty(768, 1, 16, 16), "blocks.0.mlp.fc1.weight": torch.empty(3072, 768),
            "blocks.11.norm1.weight": torch.empty(768)}
    arch = released.m2d_architecture(base, "m2d_vit_base-80x608p16x16-240213", {})
    assert (arch["encoder_attention_heads"], arch["encoder_layers"], arch["mlp_ratio"]) == (12, 12, 4.0)
    with pytest.raises(ValueError, match="input size is unknown"):
        released.m2d_architecture(base, None, {})


def test_checkpoints_from_before_the_fixes():
    """An M2D checkpoint without stored positions was trained with the frequency-first table and gets it back;
    an EAT checkpoint without the context LayerNorm is refused with the reason."""
    arrays, meta = fixture("m2d")
    checkpoint = m2d.from_official({"model": weights(arrays, "w/")}, name=meta["name"], encoder_attention_heads=2,
                                   predictor_embed_dim=16, predictor_layers=1, predictor_attention_heads=2)
    old = {k: v for k, v in checkpoint["model"].items() if not k.endswith("pos_embed")}
    model = m2d.M2DModel(OmegaConf.create(checkpoint["cfg"]["model"]))
    model.load_state_dict(old, strict=True)
    grid = model.encoder.grid
    assert torch.equal(model.encoder.pos_embed, sincos_positions(16, grid, time_first=False))
    assert not torch.allclose(model.encoder.pos_embed, sincos_positions(16, grid, time_first=True))
    # exported for the official code with the table it was trained with
    exported = m2d.to_official({"cfg": checkpoint["cfg"], "model": old})["model"]
    assert torch.equal(exported["pos_embed"][0, 1:], model.encoder.pos_embed)

    eat_arrays, eat_meta = fixture("eat_pretrained")
    converted = eat.from_official(eat_release(eat_arrays, eat_meta))
    model = eat.EATModel(OmegaConf.create(converted["cfg"]["model"]))
    old = {k: v for k, v in converted["model"].items() if "context_norm" not in k}
    with pytest.raises(KeyError, match="before 2026-12-06"):
        model.load_state_dict(old, strict=True)


# ----- continued pretraining from a release -----

def test_eat_init_from_a_release(tmp_path):
    """``model.init_from``: the student, its EMA teacher and the fbank statistics of a converted EAT release."""
    from maskssl_fairseq.checkpoints import load_init_weights

    arrays, meta = fixture("eat_pretrained")
    path = tmp_path / "eat.pt"
    torch.save(eat.from_official(eat_release(arrays, meta)), path)
    cfg = OmegaConf.create(torch.load(path, weights_only=False)["cfg"]["model"])
    model = eat.EATModel.build_model(cfg)
    model.frontend.set_norm_stats(0.0, 1.0)  # what a task would have measured
    report = load_init_weights(model, path)
    assert not report["fresh"] and not report["teacher_from_student"]
    official = weights(arrays, "ema/")
    teacher = model.teacher(official["blocks.0.attn.qkv.weight"]).encoder
    assert torch.equal(teacher.blocks[0].attn.qkv.weight, official["blocks.0.attn.qkv.weight"])
    assert torch.equal(model.encoder.blocks[1].mlp.fc2.weight, weights(arrays, "w/")["blocks.1.mlp.fc2.weight"])
    assert model.frontend.norm_stats.tolist() == pytest.approx([-4.268, 4.569])


def test_m2d_dwm_continues_from_a_release(tmp_path, demo_corpus):
    """fairseq-hydra-train with DWM masks from a converted M2D release: the run starts from its weights."""
    arrays, meta = fixture("m2d")
    release = {"model": weights(arrays, "w/")}
    init = tmp_path / "m2d_release.pt"
    torch.save(m2d.from_official(release, name=meta["name"], encoder_attention_heads=2, predictor_embed_dim=16,
                                 predictor_layers=1, predictor_attention_heads=2), init)
    run_dir = tmp_path / "run"
    log = fairseq_hydra_train(
        REFERENCE.parents[1] / "examples" / "m2d", "tiny_dwm", f"task.data={demo_corpus}",
        "task.crop_frames=32", "++model.patch_size=8", "model.encoder_embed_dim=16", "model.encoder_layers=2",
        "model.encoder_attention_heads=2", "model.predictor_embed_dim=16", "model.predictor_layers=1",
        "model.predictor_attention_heads=2", f"++model.init_from={init}", "optimization.max_update=2",
        "optimizer.groups.default.lr_float=1e-9", "optimizer.groups.no_decay.lr_float=1e-9",
        "++task.norm_stats=[0.0,1.0]", "dataset.disable_validation=true", run_dir=run_dir,  # the release brings its statistics
    )
    assert "model.init_from:" in log
    trained = torch.load(run_dir / "checkpoints" / "checkpoint_last.pt", weights_only=False)["model"]
    official = release["model"]
    assert trained["frontend.norm_stats"].tolist() == pytest.approx(official["norm_stats"].tolist())
    # two updates at a learning rate of 1e-9: the encoder is still the release's
    assert max_diff(trained["encoder.blocks.1.attn.qkv.weight"], official["blocks.1.attn.qkv.weight"]) < 1e-6
    assert max_diff(trained["encoder.patch_embed.weight"], official["patch_embed.proj.weight"]) < 1e-6
