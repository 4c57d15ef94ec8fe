"""Layer features (maskssl_fairseq.features, run/extract_features.py): a padded batch gives each utterance's features
alone, for every model kind; fairseq's own forward is the reference where it returns layer outputs."""

import sys

import numpy as np
import pytest
import torch
from fairseq.data import Dictionary
from fairseq.models.hubert.hubert import HubertConfig, HubertModel
from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model
from fairseq.models.wav2vec.wav2vec2_asr import Wav2Vec2CtcConfig, Wav2VecCtc, Wav2VecEncoder
from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig
from omegaconf import OmegaConf

import maskssl_fairseq
from helpers import REPO
from maskssl_fairseq.features import hidden_states
from maskssl_fairseq.models.armhubert import ArmHubertConfig, ArmHubertModel
from maskssl_fairseq.models.eh_mam import EhMamConfig, EhMamModel

sys.path.insert(0, str(REPO / "run"))
sys.path.insert(0, str(REPO / "examples" / "armhubert"))
from extract_features import main as extract_main  # noqa: E402
from make_random_teacher import main as make_random_teacher  # noqa: E402

CONV = "[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2"
SMALL = dict(encoder_layers=2, encoder_embed_dim=64, encoder_ffn_embed_dim=128, encoder_attention_heads=4,
             conv_pos=16, conv_pos_groups=4, conv_feature_layers=CONV)
LENGTHS = [16000, 11123, 6917]  # none a multiple of the stride


def wav2vec2():
    return Wav2Vec2Model(Wav2Vec2Config(**SMALL, final_dim=32, latent_vars=16))


def hubert():
    return HubertModel(HubertConfig(label_rate=50.0, **SMALL), HubertPretrainingConfig(data="x", label_rate=50.0),
                       [None])


def armhubert():
    cfg = OmegaConf.load(REPO / "examples" / "armhubert" / "tiny.yaml").model
    del cfg["_name"]
    cfg.teacher_path = None
    return ArmHubertModel.build_model(OmegaConf.merge(OmegaConf.structured(ArmHubertConfig), cfg))


def eh_mam():
    cfg = OmegaConf.load(REPO / "examples" / "eh_mam" / "tiny.yaml").model
    del cfg["_name"]
    cfg.hard_fraction_ramp_updates = 300  # the yaml takes it from optimization.max_update
    return EhMamModel(OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(EhMamConfig), cfg)))


def ctc_of_armhubert():
    """fairseq's wav2vec_ctc around an ARMHuBERT student (built from its config, as from a checkpoint's)."""
    student = OmegaConf.load(REPO / "examples" / "armhubert" / "tiny.yaml").model
    student.teacher_path = None
    w2v_args = OmegaConf.create({"model": student, "task": {"_name": "audio_pretraining", "data": "x"}})
    cfg = Wav2Vec2CtcConfig(w2v_path="unused", no_pretrained_weights=True, apply_mask=False, normalize=False,
                            data="x")
    cfg.w2v_args = w2v_args
    dictionary = Dictionary()
    return Wav2VecCtc(cfg, Wav2VecEncoder(cfg, output_size=len(dictionary)))


KINDS = {"wav2vec2": wav2vec2, "hubert": hubert, "armhubert": armhubert, "eh_mam": eh_mam,
         "wav2vec_ctc(armhubert)": ctc_of_armhubert}


def batch(seed=0):
    generator = torch.Generator().manual_seed(seed)
    waves = [torch.randn(n, generator=generator) for n in LENGTHS]
    source = torch.stack([torch.nn.functional.pad(w, (0, max(LENGTHS) - len(w))) for w in waves])
    padding = torch.stack([torch.arange(max(LENGTHS)) >= n for n in LENGTHS])
    return waves, source, padding


@pytest.mark.parametrize("kind", KINDS)
def test_a_padded_batch_gives_each_utterance_s_features_alone(kind):
    torch.manual_seed(0)
    model = KINDS[kind]().eval()
    waves, source, padding = batch()
    layers, frame_padding = hidden_states(model, source, padding)
    assert len(layers) == 3  # CNN projection + 2 transformer layers
    valid = (~frame_padding).sum(1).tolist()
    assert valid == [49, 34, 21]
    for row, wave in enumerate(waves):
        alone, no_padding = hidden_states(model, wave.unsqueeze(0))
        assert no_padding is None
        for batched, single in zip(layers, alone):
            assert single.size(1) == valid[row]
            torch.testing.assert_close(batched[row, :valid[row]], single[0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["wav2vec2", "hubert"])
def test_layers_equal_fairseq_s_own_layer_results(kind):
    torch.manual_seed(0)
    model = KINDS[kind]().eval()
    wave = batch()[0][0].unsqueeze(0)
    ours, _ = hidden_states(model, wave)
    seen = []
    hooks = [layer.register_forward_hook(lambda m, args, out: seen.append(out[0].transpose(0, 1)))
             for layer in model.encoder.layers]
    with torch.no_grad():
        model.extract_features(wave, padding_mask=None, mask=False)
    for hook in hooks:
        hook.remove()
    assert len(seen) == len(ours) - 1
    for mine, fairseqs in zip(ours[1:], seen):  # HuBERT pads the encoder input to an even length (one frame here)
        torch.testing.assert_close(mine, fairseqs[:, :mine.size(1)], rtol=0, atol=1e-6)


def test_extract_features_writes_one_file_per_utterance_and_refuses_to_overwrite(demo_corpus, tmp_path, capsys):
    checkpoint = tmp_path / "hubert.pt"
    make_random_teacher(["--kind", "hubert", "--out", str(checkpoint), "--layers", "2", "--dim", "64", "--ffn",
                         "128", "--heads", "4", "--conv-dim", "32", "--conv-pos", "16", "--conv-pos-groups", "4"])
    manifest = demo_corpus / "dev.tsv"
    count = len(manifest.read_text().splitlines()) - 1
    extract_main(["--checkpoint", str(checkpoint), "--manifest", str(manifest), "--layer", "all",
                  "--out", str(tmp_path / "all"), "--batch-size", "4"])
    speed = capsys.readouterr().out.strip().splitlines()[-1]
    print(speed)  # utterances/s, for the report
    index = (tmp_path / "all" / "index.tsv").read_text().splitlines()[1:]
    assert len(index) == count == len(list((tmp_path / "all").glob("*.npy")))
    name, audio, frames = index[0].split("\t")
    features = np.load(tmp_path / "all" / name)
    assert features.shape == (3, int(frames), 64)

    extract_main(["--checkpoint", str(checkpoint), "--manifest", str(manifest), "--layer", "2", "--pool", "mean",
                  "--out", str(tmp_path / "pooled")])
    pooled = np.load(tmp_path / "pooled" / name)
    np.testing.assert_allclose(pooled, features[2].mean(0), rtol=1e-5, atol=1e-5)  # batching does not matter
    with pytest.raises(SystemExit, match="--force"):
        extract_main(["--checkpoint", str(checkpoint), "--manifest", str(manifest), "--layer", "1",
                      "--out", str(tmp_path / "pooled")])
    assert maskssl_fairseq.load_model(str(checkpoint))[0].training is False
