"""EAT: the Kaldi fbank front end, clone masks, teacher targets, the utterance-frame loss, the EMA teacher,
and pretraining through the real ``fairseq-hydra-train`` on the spoken demo corpus."""

import math

import pytest
import torch
import torch.nn.functional as F
from torchaudio.compliance import kaldi

from helpers import REPO, fairseq_hydra_train, logged, series

from maskssl_fairseq.masking import inverse_block_mask
from maskssl_fairseq.models.eat import EATConfig, EATModel
from maskssl_fairseq.modules.log_mel import KaldiFbank

MEAN, STD = -4.268, 4.569  # EAT's AudioSet statistics


def reference_fbank(clip: torch.Tensor, frames: int) -> torch.Tensor:
    """EAT's data pipeline on one clip, with torchaudio's own Kaldi fbank: ``[frames, 128]``."""
    if clip.numel() >= 400:
        fbank = kaldi.fbank((clip - clip.mean()).unsqueeze(0), htk_compat=True, sample_frequency=16000,
                            use_energy=False, window_type="hanning", num_mel_bins=128, dither=0.0, frame_shift=10)
    else:
        fbank = torch.zeros(0, 128)
    fbank = F.pad(fbank, (0, 0, 0, max(frames - fbank.shape[0], 0)))[:frames]
    return (fbank - MEAN) / (STD * 2)


def test_fbank_matches_torchaudio_kaldi_padded_and_cropped():
    generator = torch.Generator().manual_seed(0)
    frontend = KaldiFbank(target_frames=120)
    frontend.set_norm_stats(MEAN, STD)
    waveforms = torch.randn(4, 16000, generator=generator) * 0.1 + 0.05  # a DC offset the front end removes
    lengths = torch.tensor([16000, 9000, 2000, 300])  # 98 frames (padded), 54, 11, none at all
    out = frontend(waveforms, lengths)
    assert out.shape == (4, 128, 120)
    for i, length in enumerate(lengths.tolist()):
        torch.testing.assert_close(out[i].T, reference_fbank(waveforms[i, :length], 120), rtol=1e-4, atol=1e-4)
    # cropping: a 2 s clip gives 198 frames, the first 120 are kept
    long = torch.randn(1, 32000, generator=generator)
    torch.testing.assert_close(frontend(long)[0].T, reference_fbank(long[0], 120), rtol=1e-4, atol=1e-4)
    # padding is zero *before* standardisation, as EAT pads its fbank
    assert torch.allclose(out[0, :, 98:], torch.tensor(-MEAN / (2 * STD)))


def tiny_model(**overrides) -> EATModel:
    settings = dict(sample_rate=16000, hop_length=160, input_frames=64, n_mels=32, encoder_embed_dim=32,
                    encoder_layers=3, encoder_attention_heads=4, decoder_dim=32, decoder_layers=2,
                    average_top_k_layers=3, clone_batch=3, max_update=100, ema_anneal_end_step=100)
    settings.update(overrides)
    model = EATModel.build_model(EATConfig(**settings))
    model.frontend.set_norm_stats(MEAN, STD)
    return model


def test_clones_get_their_own_exact_masks():
    model = EATModel.build_model(EATConfig(sample_rate=16000, hop_length=160, input_frames=1024, max_update=10,
                                           encoder_layers=1, average_top_k_layers=1))
    assert model.encoder.grid == (8, 64) and model.encoder.num_patches == 512
    torch.manual_seed(0)
    mask = model.draw_mask(torch.zeros(2, 1, 128, 1024), clones=16)
    assert mask.shape == (32, 512)
    assert mask.sum(1).tolist() == [410] * 32  # 0.8 of 512 masked, 102 visible, in every clone
    assert len({tuple(row.tolist()) for row in mask}) == 32  # no two clones share a mask


def direct_targets(model: EATModel, spectrogram: torch.Tensor) -> torch.Tensor:
    """The teacher's target written out: FFN outputs of every block on the *unmasked* clip (CLS and patches
    layer-normalised first, EAT's context_encoder.norm), CLS dropped, each standardised over the patches
    (biased variance, eps 1e-5), averaged, then standardised per patch."""
    encoder = model.ema.model.encoder
    x = torch.cat([encoder.cls_token.expand(spectrogram.shape[0], -1, -1), encoder.embed(spectrogram)], dim=1)
    x = encoder.context_norm(x)
    layers = []
    for block in encoder.blocks:
        x, ffn = block(x, None)
        y = ffn[:, 1:]
        layers.append((y - y.mean(1, keepdim=True)) / torch.sqrt(y.var(1, unbiased=False, keepdim=True) + 1e-5))
    average = torch.stack(layers).mean(0)
    return (average - average.mean(-1, keepdim=True)) / torch.sqrt(average.var(-1, unbiased=False, keepdim=True) + 1e-5)


def test_targets_and_both_loss_terms_match_direct_computations():
    torch.manual_seed(0)
    model = tiny_model(mask_noise_std=0.0).train()
    with torch.no_grad():  # a teacher that differs from the student, as after some EMA steps
        for parameter in model.ema.model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    source = torch.randn(2, 12000) * 0.1
    spectrogram = model.training_spectrogram(source)
    targets = model.targets(model.ema.model.encoder, spectrogram)
    torch.testing.assert_close(targets, direct_targets(model, spectrogram), rtol=1e-4, atol=1e-4)

    clones, patches = 3, model.encoder.num_patches
    mask = inverse_block_mask(2 * clones, model.encoder.grid, 0.8, generator=torch.Generator().manual_seed(1))
    out = model(source, precomputed_mask=mask)
    masked = int(mask.sum())
    assert out["sample_size"] == masked

    # the student: the clip's tokens, visible ones only, CLS first; then the decoder on the full grid
    dim, frame_sum, utterance_sum = 32, 0.0, 0.0
    tokens = model.encoder.embed(spectrogram)
    for row in range(2 * clones):
        clip = row // clones  # every clone regresses its own clip's targets
        visible = tokens[clip][~mask[row]].unsqueeze(0)
        encoded = model.encoder(visible)[0]
        grid = torch.zeros(patches, dim)
        grid[~mask[row]] = encoded[1:]
        prediction = model.decoder(grid.unsqueeze(0))[0]
        frame_sum += ((prediction[mask[row]] - targets[clip][mask[row]]) ** 2).sum() / math.sqrt(dim)
        utterance_sum += ((encoded[0] - targets[clip].mean(0)) ** 2).sum() / math.sqrt(dim)
    # fairseq divides every loss by sample_size: the frame term becomes a mean over masked patches, the
    # utterance term (weighted by sample_size, as in the official code) a sum over the clone rows
    torch.testing.assert_close(out["losses"]["frame"] / masked, frame_sum / masked, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["losses"]["utterance"] / masked, utterance_sum, rtol=1e-4, atol=1e-5)


def test_ema_teacher_follows_the_schedule():
    model = tiny_model(ema_decay=0.9, ema_end_decay=0.99, ema_anneal_end_step=100).train()
    assert [model.ema_decay_at(n) for n in (0, 50, 100, 500)] == pytest.approx([0.9, 0.945, 0.99, 0.99])
    teacher = model.ema.model.encoder.blocks[0].mlp.fc1.weight
    before = teacher.detach().clone()
    with torch.no_grad():
        model.encoder.blocks[0].mlp.fc1.weight.add_(1.0)
    student = model.encoder.blocks[0].mlp.fc1.weight.detach().clone()
    model.set_num_updates(50)
    torch.testing.assert_close(model.ema.model.encoder.blocks[0].mlp.fc1.weight, 0.945 * before + 0.055 * student)
    model.set_num_updates(50)  # the same update again (a validation pass, a resumed run): no second step
    torch.testing.assert_close(model.ema.model.encoder.blocks[0].mlp.fc1.weight, 0.945 * before + 0.055 * student)
    # the teacher is not a submodule: the optimizer, built from model.parameters(), never sees it
    teacher_ids = {id(p) for p in model.ema.model.parameters()}
    assert not teacher_ids & {id(p) for p in model.parameters()}


@pytest.fixture(scope="module")
def tiny_run(demo_corpus, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("eat_tiny")
    log = fairseq_hydra_train(REPO / "examples" / "eat", "tiny", f"task.data={demo_corpus}",
                              "task.norm_sample_size=40", "optimization.max_update=10", run_dir=run_dir)
    return log, run_dir / "checkpoints" / "checkpoint_last.pt"


def test_tiny_pretrains_through_fairseq_hydra_train(tiny_run):
    log, checkpoint = tiny_run
    losses = series(log, "loss")
    assert len(losses) == 10 and sum(losses[-3:]) < sum(losses[:3]), losses
    for term in ("loss_frame", "loss_utterance"):  # both terms logged, both fall
        values = series(log, term)
        assert len(values) == 10 and sum(values[-3:]) < sum(values[:3]), (term, values)
    ema = series(log, "ema_decay")
    assert ema[0] == pytest.approx(0.99) and ema == sorted(ema) and ema[-1] > ema[0]
    assert logged(log, "dev")

    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    model_state = state["model"]
    # fairseq calls set_num_updates(n) before update n + 1: the teacher has stepped after updates 1 to 9,
    # and a resumed run takes the step for update 10 first
    assert "_ema" in model_state and int(model_state["teacher_updates"]) == 9
    assert not any(key.startswith("ema") for key in model_state)  # the teacher travels only under _ema
    # the student's weights; its fixed position table (a buffer) is stored too, not optimised
    trainable = [key for key in model_state if key.startswith(("encoder.", "decoder.")) and key != "encoder.pos_embed"]
    optimized = sum(len(group["state"]) for group in state["last_optimizer_state"].values())
    assert optimized == len(trainable)  # the student's parameters, not the teacher's
    # the teacher moved away from the student it was copied from
    teacher = model_state["_ema"]["encoder.blocks.0.mlp.fc1.weight"]
    assert not torch.equal(teacher, model_state["encoder.blocks.0.mlp.fc1.weight"])
