"""Released speech checkpoints in and out: fairseq's data2vec 2.0, EH-MAM and ARMHuBERT.

The references (``tests/reference/{data2vec2,eh_mam}.npz``) were recorded by ``tests/reference/record_official.py``
from the official code (fairseq's ``examples/data2vec``, ``cs20s030/ehmam``) with seeded tiny weights: converted,
our model must give the official outputs.
"""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from fairseq import checkpoint_utils

import maskssl_fairseq  # noqa: F401  (registers the models)
from maskssl_fairseq.checkpoints import load_init_weights
from maskssl_fairseq.features import hidden_states, load_model
from maskssl_fairseq.models import armhubert, eh_mam
from maskssl_fairseq.modules.data2vec2_audio import instance_norm_average

from helpers import REPO, fairseq_hydra_train

sys.path.insert(0, str(REPO / "run"))
import convert_checkpoint  # noqa: E402

REFERENCE = REPO / "tests" / "reference"
IMPORT = {"data2vec2": eh_mam.from_official_data2vec2, "eh_mam": eh_mam.from_official_eh_mam}


def official_release(kind: str):
    """The fixture's official checkpoint (``{cfg, model}`` as fairseq saves it) and its recorded outputs."""
    fixture = np.load(REFERENCE / f"{kind}.npz")
    text = {name: json.loads(bytes(fixture[name])) for name in ("cfg", "meta", "index")}
    flat = torch.from_numpy(fixture["weights"]).float()
    weights, teacher, offset = {}, {}, 0
    for section, key, shape in text["index"]:
        size = math.prod(shape)
        (weights if section == "model" else teacher)[key] = flat[offset:offset + size].reshape(shape)
        offset += size
    weights["_ema"] = teacher
    state = {"args": None, "cfg": text["cfg"], "model": weights,
             "optimizer_history": [{"criterion_name": "ModelCriterion", "lr_scheduler_state": {"best": None},
                                    "num_updates": 0}], "extra_state": {}, "last_optimizer_state": None}
    outputs = {name[4:]: torch.from_numpy(fixture[name]) for name in fixture.files if name.startswith("out_")}
    source = torch.from_numpy(fixture["source"]).float()
    padding = torch.arange(source.size(1))[None, :] >= torch.from_numpy(fixture["lengths"])[:, None]
    return state, outputs, source, padding, text["meta"]


def official_ctc_finetune(release: dict) -> dict:
    """fairseq's wav2vec_ctc fine-tune of the recorded data2vec 2.0, laid out as the released ``*_960h.pt``: the
    pretrained model under ``w2v_encoder.w2v_model`` without its teacher and decoder, a CTC head."""
    inner = {f"w2v_encoder.w2v_model.{k}": v for k, v in release["model"].items()
             if k != "_ema" and ".decoder." not in k}
    head = {"w2v_encoder.proj.weight": torch.randn(6, 16), "w2v_encoder.proj.bias": torch.zeros(6)}  # 2 letters + 4
    cfg = {"model": {"_name": "wav2vec_ctc", "w2v_path": "base_libri.pt", "w2v_args": release["cfg"],
                     "normalize": True, "mask_prob": 0.65, "layerdrop": 0.1},
           "task": {"_name": "audio_finetuning", "data": "/data/960h", "labels": "ltr", "normalize": True}}
    return dict(release, cfg=cfg, model={**inner, **head})


def max_error(ours: torch.Tensor, theirs: torch.Tensor, valid: torch.Tensor) -> float:
    return float((ours.float() - theirs.float())[valid].abs().max())


@pytest.mark.parametrize("kind", ["data2vec2", "eh_mam"])
def test_converted_release_equals_the_official_model(kind, tmp_path):
    release, official, source, padding, meta = official_release(kind)
    assert meta["commit"] and meta["repository"] in ("facebookresearch/fairseq", "cs20s030/ehmam")
    torch.save(release, tmp_path / "release.pt")
    convert_checkpoint.main(["--from", kind, str(tmp_path / "release.pt"), str(tmp_path / "ours.pt")])
    model, cfg = load_model(tmp_path / "ours.pt")  # what run/extract_features.py loads
    assert (model.loss_predictor is not None) == (kind == "eh_mam") and cfg.task.normalize

    valid = ~official["frame_padding"]
    with torch.no_grad():
        out = model.extract_features(source, padding_mask=padding)
        assert torch.equal(out["padding_mask"], official["frame_padding"])
        assert max_error(out["x"], official["student_x"], valid) < 1e-4
        assert max_error(model.decoder(official["student_x"]), official["student_decoder"], valid) < 1e-4
        teacher = model.ema.model.eval()  # not a submodule: model.eval() does not reach it
        taught = teacher.encoder(model.local_features(source), out["padding_mask"])
        targets = instance_norm_average(taught["layer_results"], cfg.model.average_top_k_layers, True)
        assert max_error(targets, official["teacher_targets"], valid) < 1e-4
        if kind == "eh_mam":
            scores = model.loss_predictor(official["student_x"])
            assert max_error(scores, official["student_loss_pred"], valid) < 1e-4
            scores = teacher.loss_predictor(official["teacher_targets"])
            assert max_error(scores, official["teacher_loss_pred"], valid) < 1e-4
        # run/extract_features.py's per-utterance path: the unpadded utterance gives the official last layer
        layers, _ = hidden_states(model, source[:1])
        assert max_error(layers[-1], official["student_x"][:1], valid[:1]) < 1e-4


@pytest.mark.parametrize("kind", ["data2vec2", "eh_mam"])
def test_round_trips_are_bit_exact(kind):
    release = official_release(kind)[0]
    ours = IMPORT[kind](release)
    exported = eh_mam.to_official(ours)
    again = IMPORT[kind](exported)
    assert again["cfg"]["model"] == ours["cfg"]["model"]
    for key, value in ours["model"].items():
        if key == "_ema":
            assert value.keys() == again["model"]["_ema"].keys()
            assert all(torch.equal(value[k], again["model"]["_ema"][k]) for k in value)
        else:
            assert torch.equal(value, again["model"][key]), key
    # official -> ours -> official: every official tensor back, except the loss predictor's last layer, whose
    # 2 x 16 outputs are averaged into one (equal as a function: its score is their mean)
    averaged = "modality_encoders.AUDIO.decoder_pred.proj.1."
    for section in ("model", "_ema"):
        original, back = [{k: v for k, v in state["model"].items() if k != "_ema"} if section == "model"
                          else state["model"]["_ema"] for state in (release, exported)]
        assert original.keys() == back.keys()
        assert all(torch.equal(original[k], back[k]) for k in original if not k.startswith(averaged))


def test_released_layouts_are_named_with_their_command(tmp_path):
    release = official_release("eh_mam")[0]
    torch.save(release, tmp_path / "ehmam.pt")
    history = release["optimizer_history"]
    eat = {"cfg": {"model": {"_name": "data2vec_multi", "supported_modality": "IMAGE"}, "task": {}},
           "model": {"modality_encoders.IMAGE.extra_tokens": torch.zeros(1)}, "optimizer_history": history}
    torch.save(eat, tmp_path / "eat.pt")
    torch.save({"cfg": {"model": {"_name": "mae_image_classification"}, "task": {}}, "model": {},
                "optimizer_history": history}, tmp_path / "eat_ft.pt")
    torch.save({"model": {"patch_embed.proj.weight": torch.zeros(1), "norm_stats": torch.zeros(2)}},
               tmp_path / "m2d.pth")
    # a Lightning checkpoint pickles classes of packages that may not be installed (its hyper-parameters)
    (tmp_path / "lightning_stub.py").write_text("class AttributeDict(dict):\n    pass\n")
    sys.path.insert(0, str(tmp_path))
    import lightning_stub

    torch.save({"state_dict": {"student_model.mask_emb": torch.zeros(1)}, "epoch": 3,
                "hyper_parameters": lightning_stub.AttributeDict(lr=1)}, tmp_path / "arm.ckpt")
    sys.path.remove(str(tmp_path))
    del sys.modules["lightning_stub"]
    torch.save(official_ctc_finetune(release), tmp_path / "ctc.pt")
    for name, file in [("eh_mam", "ehmam.pt"), ("data2vec2", "ctc.pt"), ("eat", "eat.pt"), ("eat_finetuned", "eat_ft.pt"), ("m2d", "m2d.pth"),
                       ("armhubert", "arm.ckpt")]:
        with pytest.raises(ValueError, match=f"run/convert_checkpoint.py --from {name} "):
            load_model(tmp_path / file)
    # linear evaluation (and zero-shot classification) of a spectrogram model reads the same way
    import linear_eval

    with pytest.raises(ValueError, match="--from m2d "):
        linear_eval.load_encoder(tmp_path / "m2d.pth", random_init=False, device=torch.device("cpu"))
    # fine-tuning reads model.w2v_path through the same loader, and model.init_from too
    with pytest.raises(ValueError, match="--from eh_mam"):
        checkpoint_utils.load_checkpoint_to_cpu(str(tmp_path / "ehmam.pt"))
    converted = eh_mam.from_official_eh_mam(release)
    model = eh_mam.EhMamModel(eh_mam.EhMamConfig(**converted["cfg"]["model"]))
    with pytest.raises(ValueError, match="--from eh_mam"):
        load_init_weights(model, tmp_path / "ehmam.pt")
    # the converter names what it cannot map
    with pytest.raises(SystemExit, match="--from data2vec2: .*decoder_pred.*use --from eh_mam"):
        convert_checkpoint.main(["--from", "data2vec2", str(tmp_path / "ehmam.pt"), str(tmp_path / "x.pt")])


def test_wav2vec_ctc_and_feature_extraction_take_a_converted_release(tmp_path):
    from fairseq.models.wav2vec.wav2vec2_asr import Wav2Vec2AsrConfig, Wav2VecEncoder

    release, official, source, padding, _ = official_release("data2vec2")
    torch.save(release, tmp_path / "release.pt")
    convert_checkpoint.main(["--from", "data2vec2", str(tmp_path / "release.pt"), str(tmp_path / "ours.pt")])
    with pytest.raises(SystemExit, match="--force"):
        convert_checkpoint.main(["--from", "data2vec2", str(tmp_path / "release.pt"), str(tmp_path / "ours.pt")])
    encoder = Wav2VecEncoder(Wav2Vec2AsrConfig(w2v_path=str(tmp_path / "ours.pt"), normalize=True,
                                               data=str(tmp_path)), output_size=5).eval()
    with torch.no_grad():
        out = encoder.w2v_model.extract_features(source, padding_mask=padding)
    assert max_error(out["x"], official["student_x"], ~official["frame_padding"]) < 1e-4

    # a CTC fine-tune of data2vec 2.0 (the released *_960h.pt) converts too
    torch.save(official_ctc_finetune(release), tmp_path / "ctc_release.pt")
    convert_checkpoint.main(["--from", "data2vec2", str(tmp_path / "ctc_release.pt"), str(tmp_path / "ctc.pt")])
    (tmp_path / "dict.ltr.txt").write_text("".join(f"{c} 1\n" for c in "AB"))
    finetuned, cfg = load_model(tmp_path / "ctc.pt", data_dir=tmp_path)
    assert cfg.model._name == "wav2vec_ctc"
    with torch.no_grad():
        out = finetuned.w2v_encoder.w2v_model.extract_features(source, padding_mask=padding)
    assert max_error(out["x"], official["student_x"], ~official["frame_padding"]) < 1e-4

    import extract_features

    for i, length in enumerate((16000, 8000)):
        sf.write(tmp_path / f"{i}.wav", np.random.default_rng(i).normal(0, 0.1, length).astype("float32"), 16000)
    (tmp_path / "clips.tsv").write_text(f"{tmp_path}\n0.wav\t16000\n1.wav\t8000\n")
    extract_features.main(["--checkpoint", str(tmp_path / "ours.pt"), "--manifest", str(tmp_path / "clips.tsv"),
                           "--layer", "all", "--out", str(tmp_path / "features"), "--device", "cpu"])
    assert [np.load(tmp_path / "features" / f"00000{i}.npy").shape for i in range(2)] == [(3, 799, 16), (3, 399, 16)]


def test_armhubert_exports_the_released_layout_and_back(tmp_path):
    model_cfg = {"_name": "armhubert", "encoder_layers": 2, "encoder_embed_dim": 16, "encoder_ffn_embed_dim": 24,
                 "encoder_attention_heads": 2, "teacher_embed_dim": 8, "reuse_attention": "[False, True]",
                 "official_compat": True, "conv_feature_layers": "[(16, 10, 5)] + [(16, 3, 2)]", "conv_pos": 4,
                 "conv_pos_groups": 2, "layer_grad_scale": True}
    from fairseq.dataclass.utils import merge_with_parent
    from omegaconf import OmegaConf

    torch.manual_seed(0)
    model = armhubert.ArmHubertModel.build_model(merge_with_parent(armhubert.ArmHubertConfig(),
                                                                   OmegaConf.create(model_cfg)), task=None)
    ours = {"cfg": {"model": model_cfg, "task": {"_name": "audio_pretraining"}}, "model": model.state_dict()}
    torch.save(ours, tmp_path / "ours.pt")
    convert_checkpoint.main(["--to", "armhubert", str(tmp_path / "ours.pt"), str(tmp_path / "released.ckpt")])
    released = torch.load(tmp_path / "released.ckpt", weights_only=True)["state_dict"]
    assert "student_model.proj_head.1.lin_proj.weight" in released and "student_model.heads.1.weight" not in released
    convert_checkpoint.main(["--from", "armhubert", "--config", str(tmp_path / "released.yaml"),
                             str(tmp_path / "released.ckpt"), str(tmp_path / "back.pt")])
    back = torch.load(tmp_path / "back.pt", weights_only=False)
    assert back["model"].keys() == ours["model"].keys()
    assert all(torch.equal(back["model"][k], v) for k, v in ours["model"].items())
    for key in ("encoder_layers", "encoder_embed_dim", "reuse_attention", "conv_feature_layers", "layer_grad_scale"):
        assert back["cfg"]["model"][key] == model_cfg[key]


def test_init_from_starts_eh_mam_from_a_data2vec2_release_and_resume_wins(demo_corpus, tmp_path):
    release = official_release("data2vec2")[0]
    torch.save(release, tmp_path / "release.pt")
    convert_checkpoint.main(["--from", "data2vec2", str(tmp_path / "release.pt"), str(tmp_path / "d2v2.pt")])
    start = torch.load(tmp_path / "d2v2.pt", weights_only=False)
    other = dict(start, model={k: (v + 1 if k != "_ema" and v.is_floating_point() else v)
                               for k, v in start["model"].items()})
    torch.save(other, tmp_path / "other.pt")
    architecture = [f"++model.{setting}" for setting in (  # the recorded tiny data2vec 2.0, with EH-MAM on
        "embed_dim=16", "num_heads=2", "depth=2", "prenet_depth=1", "mlp_ratio=2",
        "feature_encoder_spec='[(16, 10, 5)] + [(16, 3, 2)] * 2'", "conv_pos_depth=2", "conv_pos_width=10",
        "conv_pos_groups=4", "decoder_dim=8", "decoder_groups=4", "decoder_kernel=3", "decoder_layers=2",
        "clone_batch=1",
        # no weight moves: an EMA decay of 1 (and lr 0 below) keeps exactly what was loaded
        "ema_decay=1.0", "ema_end_decay=1.0")] + ["task.max_sample_size=6000", "dataset.max_tokens=24000",
                                                    "optimization.lr=[0.0]"]
    run = tmp_path / "run"
    log = fairseq_hydra_train(REPO / "examples" / "eh_mam", "tiny", f"task.data={demo_corpus}", *architecture,
                              f"++model.init_from={tmp_path / 'd2v2.pt'}", "optimization.max_update=1", run_dir=run)
    assert "model.init_from:" in log
    trained = torch.load(run / "checkpoints" / "checkpoint_last.pt", weights_only=False)["model"]
    for key, value in start["model"].items():
        if key == "_ema":
            for name, tensor in value.items():
                assert torch.equal(trained["_ema"][name], tensor), name
        elif key != "teacher_updates":
            assert torch.equal(trained[key], value), key
    fresh = [k for k in trained if k.startswith("loss_predictor.")]
    assert fresh and not any(k in start["model"] for k in fresh)
    assert all(torch.equal(trained["_ema"][k], trained[k]) for k in fresh)  # the teacher's copy of the fresh one

    # resuming from checkpoint_last.pt wins over model.init_from
    log = fairseq_hydra_train(REPO / "examples" / "eh_mam", "tiny", f"task.data={demo_corpus}", *architecture,
                              f"++model.init_from={tmp_path / 'other.pt'}", "optimization.max_update=2", run_dir=run)
    assert "not used: training resumes" in log
    resumed = torch.load(run / "checkpoints" / "checkpoint_last.pt", weights_only=False)["model"]
    assert all(torch.equal(resumed[k], trained[k]) for k in trained if k not in ("_ema", "teacher_updates"))
