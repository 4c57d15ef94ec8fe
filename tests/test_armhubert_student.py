"""ARMHuBERT student: attention-map reuse (clean and official_compat), parameter counts, layer bookkeeping."""

import re
import sys

import pytest
import torch
import yaml
from fairseq import checkpoint_utils
from omegaconf import OmegaConf

from helpers import REPO
from maskssl_fairseq.models.armhubert import ArmHubertConfig, ArmHubertModel
from maskssl_fairseq.modules.reuse_attention import (
    MapAttention,
    ReuseAttention,
    ReuseTransformerEncoder,
    official_reused_map,
)

CONFIGS = REPO / "examples" / "armhubert"


def build_from_yaml(name: str, **overrides) -> ArmHubertModel:
    """The student exactly as ``fairseq-hydra-train --config-name <name>`` builds it (model section only)."""
    model_cfg = OmegaConf.load(CONFIGS / f"{name}.yaml").model
    model_cfg.teacher_path = None
    for key, value in overrides.items():
        model_cfg[key] = value
    del model_cfg["_name"]
    cfg = OmegaConf.merge(OmegaConf.structured(ArmHubertConfig), model_cfg)
    return ArmHubertModel.build_model(cfg)


@pytest.mark.parametrize(
    "name, millions",
    [("maskhubert", 26.64), ("armhubert", 26.45), ("armhubert_s", 22.39),
     ("maskhubert_100h", 26.64), ("armhubert_100h", 26.45), ("armhubert_s_100h", 22.39)],
)
def test_paper_configs_have_the_paper_parameter_counts(name, millions):
    model = build_from_yaml(name)
    count = sum(p.numel() for p in model.parameters())
    assert round(count / 1e6, 2) == millions, count
    heads = sum(p.numel() for p in model.heads.parameters())
    assert heads == 12 * (model.cfg.encoder_embed_dim * 768 + 768)  # the paper's counts include the 12 heads


def test_reuse_layers_hold_no_query_or_key_weights():
    model = build_from_yaml("armhubert")
    names = {name for name, _ in model.named_parameters()}
    for i, layer in enumerate(model.encoder.layers):
        reuses = i % 2 == 1  # 2by6: layers 2, 4, ..., 12 (1-based)
        assert layer.reuses_map == reuses
        for proj in ("q_proj", "k_proj"):
            assert (f"encoder.layers.{i}.self_attn.{proj}.weight" in names) != reuses
        for proj in ("v_proj", "out_proj"):
            assert f"encoder.layers.{i}.self_attn.{proj}.weight" in names
    assert not any(layer.reuses_map for layer in build_from_yaml("maskhubert").encoder.layers)


def batch_with_padding(batch=3, length=9, dim=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, dim, generator=generator)
    padding = torch.zeros(batch, length, dtype=torch.bool)
    padding[1, 6:] = True
    padding[2, 4:] = True
    return x, padding


def direct_map(attention: MapAttention, x, padding):
    """softmax(Q_h K_h^T / sqrt(d)) for every sample and head, one at a time, padded keys excluded."""
    batch, length, _ = x.shape
    heads, d = attention.num_heads, attention.head_dim
    q, k = attention.q_proj(x), attention.k_proj(x)
    maps = torch.zeros(batch, heads, length, length)
    for b in range(batch):
        for h in range(heads):
            scores = q[b, :, h * d:(h + 1) * d] @ k[b, :, h * d:(h + 1) * d].T / d ** 0.5
            scores[:, padding[b]] = float("-inf")
            maps[b, h] = scores.softmax(dim=-1)
    return maps


def direct_reuse(attention: ReuseAttention, x, maps_for_slot):
    """[A_1 V_1, ..., A_H V_H] W_o with A for sample b and head h given by ``maps_for_slot(b, h)``."""
    batch, length, _ = x.shape
    heads, d = attention.num_heads, attention.head_dim
    v = attention.v_proj(x)
    concat = torch.zeros(batch, length, heads * d)
    for b in range(batch):
        for h in range(heads):
            concat[b, :, h * d:(h + 1) * d] = maps_for_slot(b, h) @ v[b, :, h * d:(h + 1) * d]
    return attention.out_proj(concat)


@torch.no_grad()
def test_clean_reuse_equals_direct_attention_with_the_earlier_map():
    torch.manual_seed(0)
    x, padding = batch_with_padding()
    computing, reusing = MapAttention(16, 4).eval(), ReuseAttention(16, 4).eval()
    _, attention_map = computing(x, padding, need_map=True)
    expected_map = direct_map(computing, x, padding)
    torch.testing.assert_close(attention_map, expected_map)

    y = torch.randn_like(x)  # the reuse layer sees the next layer's input, with its own values
    expected = direct_reuse(reusing, y, lambda b, h: expected_map[b, h])
    torch.testing.assert_close(reusing(y, attention_map, padding), expected)


@torch.no_grad()
def test_official_compat_equals_the_released_codes_behaviour():
    torch.manual_seed(0)
    x, padding = batch_with_padding()
    batch, heads = x.size(0), 4
    computing = MapAttention(16, heads).eval()
    clean, official = ReuseAttention(16, heads).eval(), ReuseAttention(16, heads, official_compat=True).eval()
    official.load_state_dict(clean.state_dict())
    _, attention_map = computing(x, padding, need_map=True)
    head_major = attention_map.transpose(0, 1).reshape(heads * batch, 9, 9)  # fairseq's (H, B, T, T), flattened

    def released(b, h):
        # value slot b*H + h meets map slot b*H + h of the head-major tensor, whose own sample is (b*H + h) % B;
        # the key padding of sample b is applied and the probabilities are softmaxed again
        scores = head_major[b * heads + h].clone()
        scores[:, padding[b]] = float("-inf")
        return scores.softmax(dim=-1)

    y = torch.randn_like(x)
    expected = direct_reuse(official, y, released)
    torch.testing.assert_close(official(y, attention_map, padding), expected)
    assert not torch.allclose(clean(y, attention_map, padding), expected, atol=1e-3)
    # 10 of the 12 (sample, head) slots meet another slot's map, and the second softmax flattens the maps
    slots = [(b, h) for b in range(batch) for h in range(heads)]
    assert sum(((b * heads + h) % batch, (b * heads + h) // batch) != (b, h) for b, h in slots) == 10
    assert official_reused_map(attention_map, padding).amax() < attention_map.amax()


@torch.no_grad()
def test_encoder_hands_the_computed_map_to_the_reuse_layer():
    torch.manual_seed(0)
    encoder = ReuseTransformerEncoder(16, 32, 4, [False, True, True], conv_pos=4, conv_pos_groups=2).eval()
    x, padding = batch_with_padding()
    seen = {}
    encoder.layers[0].self_attn.register_forward_hook(lambda m, args, out: seen.update(map=out[1]))
    outputs = encoder(x, padding)
    assert len(outputs) == 3 and seen["map"] is not None
    expected = encoder.layers[2](outputs[1], padding, attention_map=seen["map"])[0]  # layer 3 reuses layer 1's map
    torch.testing.assert_close(outputs[2], expected)


def test_layerdrop_drops_a_computing_layer_with_its_reusers():
    encoder = ReuseTransformerEncoder(16, 32, 4, [False, True, False, True, True], conv_pos=4, conv_pos_groups=2,
                                      layerdrop=0.5).train()
    for _ in range(20):
        dropped = encoder.dropped_layers()
        assert dropped[0] == dropped[1] and dropped[2] == dropped[3] == dropped[4]
    assert encoder.eval().dropped_layers() == [False] * 5


def test_hidden_states_for_weighted_sum_and_feature_extraction():
    model = build_from_yaml("tiny").eval()
    source = torch.randn(2, 16000)
    padding = torch.zeros(2, 16000, dtype=torch.bool)
    padding[1, 9000:] = True
    with torch.no_grad():
        projected, frame_padding = model.hidden_states(source, padding)
        raw, _ = model.hidden_states(source, padding, projected=False)
        features = model.extract_features(source, padding)
    assert [h.shape for h in projected] == [torch.Size([2, 49, 64])] * 2  # one per layer, teacher width
    assert [h.shape for h in raw] == [torch.Size([2, 49, 48])] * 3  # transformer input + every layer
    assert frame_padding[0].sum() == 0 and frame_padding[1].sum() == 49 - 27
    torch.testing.assert_close(features["x"], raw[-1])


def test_bad_reuse_pattern_names_the_field():
    with pytest.raises(ValueError, match="reuse_attention"):
        build_from_yaml("tiny", reuse_attention="[True, False]")
    with pytest.raises(ValueError, match="reuse_attention"):
        build_from_yaml("tiny", reuse_attention="[False, True, True]")


def test_released_checkpoint_converts_to_an_official_compat_student(tmp_path):
    sys.path.insert(0, str(CONFIGS))
    from convert_official import main as convert_main

    torch.manual_seed(0)
    released = build_from_yaml("tiny", reuse_attention="[False, True]", official_compat=True).eval()
    # the released layout: Lightning state_dict with prefixes, heads under proj_head.<i>.lin_proj, teacher tensors
    state = {f"student_model.{k}".replace("student_model.heads.", "student_model.proj_head."): v
             for k, v in released.state_dict().items()}
    state = {re.sub(r"(proj_head\.\d+)\.", r"\1.lin_proj.", k): v for k, v in state.items()}
    state["teacher_model.model.mask_emb"] = torch.zeros(64)
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "last.ckpt")
    model_cfg = OmegaConf.to_container(OmegaConf.load(CONFIGS / "tiny.yaml").model)
    distiller = {k: model_cfg[k] for k in ("encoder_layers", "encoder_embed_dim", "encoder_ffn_embed_dim",
                                           "encoder_attention_heads", "conv_feature_layers", "conv_pos",
                                           "conv_pos_groups", "layer_grad_scale")}
    distiller.update(reuse_pattern="[True, False]", layerwise_proj=True, enable_tr_layer=False, pred_head_final_dim=64)
    (tmp_path / "released.yaml").write_text(yaml.safe_dump({"distiller": distiller, "teacher": {"mask_prob": 0.8}}))

    convert_main(["--checkpoint", str(tmp_path / "last.ckpt"), "--config", str(tmp_path / "released.yaml"),
                  "--out", str(tmp_path / "converted.pt")])
    models, cfg, _ = checkpoint_utils.load_model_ensemble_and_task([str(tmp_path / "converted.pt")])
    converted = models[0].eval()
    assert cfg.model.official_compat and cfg.model.reuse_attention == "[False, True]"
    source = torch.randn(3, 12000)
    padding = torch.zeros(3, 12000, dtype=torch.bool)
    padding[2, 7000:] = True
    with torch.no_grad():
        ours, theirs = converted.hidden_states(source, padding)[0], released.hidden_states(source, padding)[0]
    for mine, released_layer in zip(ours, theirs):
        torch.testing.assert_close(mine, released_layer)
    with pytest.raises(SystemExit, match="--force"):
        convert_main(["--checkpoint", str(tmp_path / "last.ckpt"), "--config", str(tmp_path / "released.yaml"),
                      "--out", str(tmp_path / "converted.pt")])


def test_layer_grad_scale_matches_the_released_gradient_scaling():
    torch.manual_seed(0)
    plain = ReuseTransformerEncoder(16, 32, 4, [False, True], conv_pos=4, conv_pos_groups=2, dropout=0.0,
                                    attention_dropout=0.0, activation_dropout=0.0)
    scaled = ReuseTransformerEncoder(16, 32, 4, [False, True], conv_pos=4, conv_pos_groups=2, dropout=0.0,
                                     attention_dropout=0.0, activation_dropout=0.0, layer_grad_scale=True)
    scaled.load_state_dict(plain.state_dict())
    x = torch.randn(2, 9, 16)
    grads = []
    for encoder in (plain, scaled):
        inputs = x.clone().requires_grad_()
        outputs = encoder(inputs)
        torch.testing.assert_close(outputs[1], plain(x)[1])  # the forward pass is unchanged
        outputs[1].sum().backward()
        grads.append(inputs.grad)
    # N = 2: layer 0 passes on m0 = 2/3, layer 1 passes on m1 = 1/2 and its head copy gets a further 1 - m1
    torch.testing.assert_close(grads[1], grads[0] * (2 / 3) * (1 / 2) * (1 / 2))
