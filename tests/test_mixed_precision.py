"""Mixed precision through fairseq's own optimizer wrappers and model casts, on CPU: one unscale under AMP, the
composite optimizer under AMP and fp16, front-end constants in fp32, M2D's target in fp32, the CLAP logits."""

import pytest
import torch
import torch.nn.functional as F
from fairseq import optim
from omegaconf import OmegaConf

import maskssl_fairseq  # noqa: F401  (installs the fixes, as common.user_dir does)
from maskssl_fairseq.models.eat import EATConfig, EATModel
from maskssl_fairseq.models.m2d import M2DConfig, M2DModel
from maskssl_fairseq.modules.clap import clip_loss
from maskssl_fairseq.modules.log_mel import KaldiFbank, LogMelSpectrogram

GRADIENT = torch.tensor([1.0, 2.0, 3.0])
SGD = {"_name": "sgd", "lr": [1.0], "momentum": 0.0, "weight_decay": 0.0}


def fairseq_cfg(optimizer: dict, **common):
    """What fairseq's trainer hands its optimizer builders (the fields they read)."""
    return OmegaConf.create({
        "common": {"fp16_init_scale": 128, "min_loss_scale": 1e-4, "fp16_scale_window": None,
                   "fp16_scale_tolerance": 0.0, "threshold_loss_scale": None, "fp16_no_flatten_grads": False,
                   "bf16": False, "fp16": False, "model_parallel_size": 1, **common},
        "optimization": {"lr": [1.0], "update_freq": [1]},
        "distributed_training": {"distributed_world_size": 1},
        "optimizer": optimizer,
    })


def composite(no_decay_param: torch.nn.Parameter) -> dict:
    no_decay_param.param_group = "no_decay"  # as the models tag biases and norms
    group = {"lr_float": 1.0, "optimizer": SGD, "lr_scheduler": {"_name": "fixed"}}
    return {"_name": "composite", "groups": {"default": group, "no_decay": group}}


def one_step(optimizer, params):
    """fairseq's trainer order: zero_grad, backward, clip (on every update), step."""
    optimizer.zero_grad()
    optimizer.backward(sum((p.float() * GRADIENT).sum() for p in params))
    optimizer.clip_grad_norm(0.0)
    optimizer.step()


@pytest.mark.parametrize("with_composite", [False, True])
def test_amp_step_moves_the_weights_by_lr_times_gradient(with_composite):
    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(3))]
    cfg = fairseq_cfg(composite(params[1]) if with_composite else SGD)
    optimizer = optim.AMPOptimizer.build_optimizer(cfg, params)
    # fairseq's scaler is a CUDA one, disabled on CPU: the same AMPOptimizer with a real scale
    optimizer._grad_scaler = torch.amp.GradScaler("cpu", init_scale=128.0)
    one_step(optimizer, params)
    for p in params:  # fairseq alone: -0.0078 (the gradient divided by the scale once more)
        assert torch.equal(p.detach(), -GRADIENT)
    assert optimizer.scaler.get_scale() == 128.0  # no overflow seen


def test_fp16_composite_keeps_its_groups_and_steps_by_lr_times_gradient():
    params = [torch.nn.Parameter(torch.zeros(3, dtype=torch.half)), torch.nn.Parameter(torch.zeros(3, dtype=torch.half))]
    cfg = fairseq_cfg(composite(params[1]), fp16=True)
    optimizer = optim.FP16Optimizer.build_optimizer(cfg, params)  # fairseq alone: "only works when ... groups"
    assert sorted(optimizer.fp32_optimizer.optimizers) == ["default", "no_decay"]
    assert not cfg.common.fp16_no_flatten_grads  # the run's own config is left as given
    one_step(optimizer, params)
    for p in params:
        assert p.dtype == torch.half and torch.equal(p.detach().float(), -GRADIENT)
    assert optimizer.scaler.loss_scale == 128.0


def test_each_composite_optimizer_holds_only_its_own_groups():
    # fairseq fills class-level dicts: a second composite optimizer in the process got the first one's groups too
    first_params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(3))]
    first = optim.build_optimizer(fairseq_cfg(composite(first_params[1])).optimizer, first_params)
    second_params = [torch.nn.Parameter(torch.zeros(3)) for _ in range(3)]
    second_params[1].param_group, second_params[2].param_group = "no_decay", "decoder"
    second_cfg = composite(second_params[1])
    second_cfg["groups"]["decoder"] = second_cfg["groups"]["default"]
    second = optim.build_optimizer(fairseq_cfg(second_cfg).optimizer, second_params)
    assert sorted(first.optimizers) == sorted(first.lr_schedulers) == ["default", "no_decay"]
    assert sorted(second.optimizers) == sorted(second.lr_schedulers) == ["decoder", "default", "no_decay"]
    assert [p for g in first.param_groups for p in g["params"]] == first_params
    assert [p for g in second.param_groups for p in g["params"]] == second_params


def test_front_end_constants_stay_float32_in_a_half_precision_model():
    for frontend in (LogMelSpectrogram(), KaldiFbank()):
        frontend.set_norm_stats(-4.268, 4.569)
        before = {name: buffer.clone() for name, buffer in frontend.named_buffers()}
        for dtype in (torch.half, torch.bfloat16):
            frontend.to(dtype)  # what fairseq's trainer does to the whole model
            for name, buffer in frontend.named_buffers():
                assert buffer.dtype == torch.float32 and torch.equal(buffer, before[name]), name


def test_eat_trains_in_bf16_with_its_fbank_in_fp32():
    torch.manual_seed(0)
    settings = dict(sample_rate=16000, hop_length=160, input_frames=64, n_mels=32, encoder_embed_dim=32,
                    encoder_layers=2, encoder_attention_heads=4, decoder_dim=32, decoder_layers=1,
                    average_top_k_layers=2, clone_batch=2, max_update=10, ema_anneal_end_step=10)
    model = EATModel.build_model(EATConfig(**settings))
    model.frontend.set_norm_stats(-4.268, 4.569)
    waveform = torch.randn(2, 64 * 160 + 240)
    losses = {}
    for dtype in (torch.float32, torch.bfloat16):
        model.to(dtype).train()
        torch.manual_seed(1)  # the same masks
        output = model(waveform.to(dtype))  # fairseq casts the batch too
        losses[dtype] = sum(loss.float() for loss in output["losses"].values()) / output["sample_size"]
    assert torch.isfinite(losses[torch.bfloat16])
    assert losses[torch.bfloat16].item() == pytest.approx(losses[torch.float32].item(), rel=0.02)


def test_m2d_target_follows_in_fp32_inside_a_bf16_model(tmp_path):
    cfg = M2DConfig(sample_rate=16000, hop_length=160, input_frames=208, max_update=100, ema_anneal_end_step=100,
                    encoder_embed_dim=32, encoder_layers=1, encoder_attention_heads=2, predictor_embed_dim=32,
                    predictor_layers=1, predictor_attention_heads=2)
    torch.manual_seed(0)
    reference = M2DModel.build_model(cfg)
    model = M2DModel.build_model(cfg)
    model.load_state_dict(reference.state_dict())
    model.to(torch.bfloat16)
    for m in (reference, model):  # an online encoder far from the target
        m.encoder.norm.weight.data.fill_(2.0)
    for _ in range(100):
        reference.ema_step(0.99995)
        model.ema_step(0.99995)
    # the target norm starts at 1 and moves by about 100 x 5e-5 x (2 - 1) = 0.005, below bf16's spacing at 1
    # (0.0078): a bf16 target alone stays at 1; the fp32 master moves as the fp32 model does
    master = model.target_ema.fp32_params["norm.weight"]
    assert torch.allclose(master, reference.target_norm.weight, atol=1e-6)
    assert (master - 1.0).min() > 0.004
    assert torch.equal(model.target_norm.weight, master.bfloat16())  # the model's copy: the master, rounded
    # the checkpoint holds the fp32 target, and a bf16 model loaded from it resumes from those values
    state = model.state_dict()
    assert state["target_norm.weight"].dtype == torch.float32
    assert torch.allclose(state["target_norm.weight"], reference.target_norm.weight, atol=1e-6)
    resumed = M2DModel.build_model(cfg).to(torch.bfloat16)
    resumed.load_state_dict(state)
    resumed.ema_step(0.5)
    assert torch.allclose(resumed.target_ema.fp32_params["norm.weight"], 0.5 * state["target_norm.weight"] + 1.0)


def test_clap_logits_are_fp32_under_autocast():
    torch.manual_seed(0)
    audio, text = torch.randn(16, 64), torch.randn(16, 64)
    scale = torch.tensor(4.6)
    exact = clip_loss(audio, text, scale)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = clip_loss(audio, text, scale)
    assert autocast.dtype == torch.float32 and torch.allclose(autocast, exact, atol=1e-6)
    # what autocast alone would give: the product in bf16
    a, t = F.normalize(audio, dim=-1), F.normalize(text, dim=-1)
    logits = scale.exp() * (a.bfloat16() @ t.bfloat16().t()).float()
    targets = torch.arange(16)
    rounded = 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets))
    assert not torch.allclose(rounded, exact, atol=1e-4)


def test_amp_with_bf16_is_refused():
    params = [torch.nn.Parameter(torch.zeros(3, dtype=torch.bfloat16))]
    with pytest.raises(ValueError, match="common.amp=false common.bf16=true"):
        optim.AMPOptimizer.build_optimizer(fairseq_cfg(SGD, bf16=True, fp16=False), params)
