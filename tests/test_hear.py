"""The HEAR 2021 API (maskssl_fairseq.hear): every check hearvalidator makes (its clip lengths, shapes, dtypes,
regular timestamps within 1 ms, none past the audio), and batch independence, for a tiny checkpoint of every model."""

import numpy as np
import pytest
import torch

from maskssl_fairseq import hear
from tiny_checkpoints import SPEECH, TINY

HEAR_RATES = (16000, 22050, 32000, 44100, 48000)


def hear_audio(num: int, seconds: float, rate: int, seed: int) -> torch.Tensor:
    """The validator's input: uniform white noise in [-1, 1]."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(num, int(seconds * rate), generator=generator) * 2 - 1


@pytest.mark.parametrize("kind", TINY)
def test_hear_api_passes_the_validator_checks(tiny_checkpoints, kind):
    model = hear.load_model(str(tiny_checkpoints[kind]))
    assert isinstance(model, torch.nn.Module) and model.sample_rate in HEAR_RATES
    assert isinstance(model.scene_embedding_size, int) and isinstance(model.timestamp_embedding_size, int)
    for seed, seconds in enumerate((1.07, 1.98, 4.0)):
        audio = hear_audio(2, seconds, model.sample_rate, seed)
        embeddings, timestamps = hear.get_timestamp_embeddings(audio, model)
        assert embeddings.dtype == torch.float32 and embeddings.ndim == 3 and timestamps.ndim == 2
        assert embeddings.shape[0] == 2 and embeddings.shape[:2] == timestamps.shape
        assert embeddings.shape[2] == model.timestamp_embedding_size
        steps = np.diff(timestamps.numpy())
        assert np.abs(steps - steps.mean()).max() <= 1.0  # regular, within 1 ms
        assert steps.mean() == pytest.approx(20.0 if kind in SPEECH else 160.0, abs=1e-3)  # speech within HEAR's 50 ms
        assert timestamps.max() <= 1000 * seconds and timestamps.min() <= steps.mean()
        alone, alone_timestamps = hear.get_timestamp_embeddings(audio[1:], model)
        torch.testing.assert_close(alone[0], embeddings[1], rtol=0, atol=1e-5)
        torch.testing.assert_close(alone_timestamps[0], timestamps[1])
    scenes_audio = hear_audio(4, 2.74, model.sample_rate, 3)
    scenes = hear.get_scene_embeddings(scenes_audio, model)
    assert scenes.dtype == torch.float32 and scenes.shape == (4, model.scene_embedding_size)
    torch.testing.assert_close(hear.get_scene_embeddings(scenes_audio[2:3], model)[0], scenes[2], rtol=0, atol=1e-5)
