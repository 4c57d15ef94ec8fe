"""Layer features (maskssl_fairseq.features, run/extract_features.py): every model gives every layer, frame times and
an utterance embedding for any clip length; a padded batch gives each utterance's features alone, for every model
kind; fairseq's own forward is the reference where it returns layer outputs."""

import json
import math
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from fairseq.data import Dictionary
from fairseq.models.hubert.hubert import HubertConfig, HubertModel
from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model
from fairseq.models.wav2vec.wav2vec2_asr import Wav2Vec2CtcConfig, Wav2VecCtc, Wav2VecEncoder
from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig
from omegaconf import OmegaConf

import maskssl_fairseq
from helpers import REPO
from maskssl_fairseq.features import FeatureExtractor, hidden_states
from maskssl_fairseq.models.armhubert import ArmHubertConfig, ArmHubertModel
from maskssl_fairseq.models.eh_mam import EhMamConfig, EhMamModel

sys.path.insert(0, str(REPO / "run"))
sys.path.insert(0, str(REPO / "examples" / "armhubert"))
from extract_features import main as extract_main  # noqa: E402
from make_random_teacher import main as make_random_teacher  # noqa: E402
from tiny_checkpoints import TINY, build_classifier  # noqa: E402

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


@pytest.fixture(scope="module")
def extractors(tiny_checkpoints):
    return {kind: FeatureExtractor.from_checkpoint(str(path)) for kind, path in tiny_checkpoints.items()}


def expected_frames(extractor: FeatureExtractor, samples: int) -> int:
    if not extractor.spectrogram:  # the CNN's frames
        return (samples - extractor.field) // extractor.stride + 1
    if extractor.kaldi:  # EAT: uncentred 25 ms frames, the last partial patch padded
        spectrogram_frames = (samples - 400) // extractor.hop + 1
    else:  # M2D: centred frames
        spectrogram_frames = samples // extractor.hop + 1
    return math.ceil(spectrogram_frames / extractor.patch)


@pytest.mark.parametrize("kind", TINY)
def test_every_model_gives_every_layer_timestamps_and_an_embedding_for_any_length(extractors, kind):
    extractor = extractors[kind]
    width = extractor.frames_per_piece * extractor.stride  # samples a training-width piece advances
    generator = torch.Generator().manual_seed(0)
    # short (0.7 s), M2D's 2.2 s example, and a clip of 2.5 training widths (three pieces)
    waves = [torch.randn(n, generator=generator) * 0.1 for n in (11200, 35200, int(2.5 * width))]
    out = extractor(waves)
    assert len(out.layers) == 3  # layer 0 + the 2 transformer layers of every tiny model
    assert out.lengths.tolist() == [expected_frames(extractor, len(w)) for w in waves]
    if kind in ("m2d", "msm_mae", "m2d_clap"):
        assert out.lengths[1] == 14  # as M2D's runtime: the last partial patch is padded, not dropped
    steps = out.timestamps.diff()
    assert torch.allclose(steps, torch.tensor(extractor.frame_seconds), atol=1e-5)
    for row, wave in enumerate(waves):  # every frame centre lies in the clip, give or take half a patch
        assert out.timestamps[out.lengths[row] - 1] <= len(wave) / 16000 + extractor.frame_seconds / 2
    for layer in out.layers:
        assert layer.shape[:2] == out.padding.shape and (layer[out.padding] == 0).all()
    for row, wave in enumerate(waves):  # a padded batch gives each clip what it gives alone
        alone = extractor([wave])
        frames = int(out.lengths[row])
        assert alone.lengths.tolist() == [frames]
        for batched, single in zip(out.layers, alone.layers):
            torch.testing.assert_close(batched[row, :frames], single[0], rtol=0, atol=1e-5)
        torch.testing.assert_close(out.embedding[row], alone.embedding[0], rtol=0, atol=1e-5)
    if kind == "eat":  # EAT's utterance embedding is its CLS token, as the official feature extraction returns it
        model = extractor.model
        spectrogram = extractor.standardised_spectrogram(waves[0].to(torch.float32))
        cls = model.encoder(model.encoder.embed(spectrogram))[:, 0]
        torch.testing.assert_close(out.embedding[0], cls[0], rtol=0, atol=1e-5)
        assert out.lengths[0] == 5  # 0.7 s: 68 fbank frames in 5 patches, not the 16 of the training width
    else:
        valid = out.lengths[0]
        torch.testing.assert_close(out.embedding[0], out.layers[-1][0, :valid].mean(0), rtol=0, atol=1e-6)
    if kind in ("eh_mam", "data2vec2"):  # the pieces' CNN frames are exactly the whole clip's
        whole, _ = hidden_states(extractor.model, torch.nn.functional.layer_norm(waves[2], waves[2].shape)[None])
        torch.testing.assert_close(out.layers[0][2, :out.lengths[2]], whole[0][0], rtol=0, atol=1e-5)


def write_manifest(root, lengths):
    generator = np.random.default_rng(0)
    lines = [str(root)]
    for i, n in enumerate(lengths):
        sf.write(root / f"{i}.wav", (0.1 * generator.standard_normal(n)).astype(np.float32), 16000)
        lines.append(f"{i}.wav\t{n}")
    (root / "clips.tsv").write_text("\n".join(lines) + "\n")
    return root / "clips.tsv"


@pytest.mark.parametrize("kind", ["m2d", "eat", "eh_mam"])
def test_extract_features_writes_every_layer_of_any_checkpoint(tiny_checkpoints, extractors, kind, tmp_path):
    manifest = write_manifest(tmp_path, [16000, 35200, 9000])
    extract_main(["--checkpoint", str(tiny_checkpoints[kind]), "--manifest", str(manifest), "--layer", "all",
                  "--out", str(tmp_path / "all"), "--batch-size", "2"])
    extractor = extractors[kind]
    rows = [line.split("\t") for line in (tmp_path / "all" / "index.tsv").read_text().splitlines()[1:]]
    for (name, audio, frames), n in zip(rows, [16000, 35200, 9000]):
        features = np.load(tmp_path / "all" / name)
        assert int(frames) == expected_frames(extractor, n) and features.shape[:2] == (3, int(frames))
    timing = json.loads((tmp_path / "all" / "timing.json").read_text())
    assert timing == pytest.approx({"first_frame": float(extractor([torch.zeros(16000)]).timestamps[0]),
                                    "frame_step": extractor.frame_seconds})
    extract_main(["--checkpoint", str(tiny_checkpoints[kind]), "--manifest", str(manifest), "--layer", "0",
                  "--pool", "embedding", "--out", str(tmp_path / "embedding")])
    embedding = np.load(tmp_path / "embedding" / rows[0][0])
    expected = extractor([torch.from_numpy(sf.read(tmp_path / "0.wav", dtype="float32")[0])])
    np.testing.assert_allclose(embedding, expected.embedding[0].numpy(), rtol=0, atol=1e-5)


def test_a_fine_tuned_classifier_gives_its_encoder_s_features_without_its_data(tiny_checkpoints, extractors, tmp_path):
    classifier = FeatureExtractor.from_checkpoint(str(build_classifier(tiny_checkpoints["eat"], tmp_path / "cls.pt")))
    wave = [torch.randn(20000, generator=torch.Generator().manual_seed(1)) * 0.1]
    ours, pretrained = classifier(wave), extractors["eat"](wave)
    for mine, theirs in zip(ours.layers, pretrained.layers):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours.embedding, pretrained.embedding, rtol=0, atol=1e-6)  # the CLS: pooling "cls"
