"""The HEAR 2021 API over :class:`maskssl_fairseq.features.FeatureExtractor`, for every checkpoint of the plugin
(and fairseq's speech checkpoints):

    from maskssl_fairseq import hear
    model = hear.load_model("checkpoint_best.pt")
    embeddings, timestamps = hear.get_timestamp_embeddings(audio, model)   # audio [n, samples] in [-1, 1]
    scenes = hear.get_scene_embeddings(audio, model)

``hear-validator maskssl_fairseq.hear --model checkpoint_best.pt`` checks it (README).

Timestamp embeddings are the last layer's frames at the centre of each frame, in milliseconds: speech models a
frame every 20 ms; spectrogram models (M2D, MSM-MAE, M2D-CLAP, EAT) a frame per column of 16 x 16 patches, every
160 ms, reported as they are (above HEAR's 50 ms advice, which the validator only warns about): the encoder has
no finer time resolution, and M2D's own runtime reports its 16 x 16 models' frames at that step too (its 16 x 4
patch models give 40 ms). A partial last patch whose centre lies past the end of the audio is dropped, as HEAR
refuses timestamps past the audio. Scene embeddings are the utterance embeddings (the mean of the last layer's
frames; EAT: its CLS token). Audio of any length, up to HEAR's 20 minutes, runs through the transformer in pieces of
the training width, at most ``max_pieces`` per forward pass, keeping only the last layer: what grows with the
length is the audio, its spectrogram and the output frames (20 minutes: a few hundred MiB; README). Everything
returned is float32 on the audio's device.
"""

from typing import Tuple

import torch
import torch.nn as nn

from .features import FeatureExtractor


class HearModel(nn.Module):
    """A feature extractor with the attributes HEAR asks for."""

    def __init__(self, extractor: FeatureExtractor):
        super().__init__()
        self.extractor = extractor
        self.sample_rate = extractor.sample_rate
        _, self.timestamp_embedding_size, self.scene_embedding_size = extractor.sizes()


def load_model(model_file_path: str = "", device: str = "cpu") -> HearModel:
    """A checkpoint of the plugin (or a fairseq speech checkpoint) -> the HEAR model, in eval mode."""
    if not model_file_path:
        raise ValueError("maskssl_fairseq.hear needs a checkpoint: load_model(path), hear-validator ... --model path")
    return HearModel(FeatureExtractor.from_checkpoint(model_file_path, device=device)).eval()


def _check(audio: torch.Tensor) -> None:
    if audio.dim() != 2:
        raise ValueError(f"HEAR audio is [n_sounds, n_samples], got {tuple(audio.shape)}")


def get_timestamp_embeddings(audio: torch.Tensor, model: HearModel) -> Tuple[torch.Tensor, torch.Tensor]:
    """``audio [n_sounds, n_samples]`` -> (embeddings ``[n_sounds, n_frames, timestamp_embedding_size]``,
    timestamps ``[n_sounds, n_frames]`` in milliseconds, the centre of each frame)."""
    _check(audio)
    features = model.extractor(audio, layers=[-1])
    duration_ms = 1000.0 * audio.shape[1] / model.sample_rate
    timestamps = 1000.0 * features.timestamps.double()
    inside = timestamps <= duration_ms
    embeddings = features.layers[0][:, inside].float().to(audio.device)
    return embeddings, timestamps[inside].float().to(audio.device).expand(len(audio), -1).contiguous()


def get_scene_embeddings(audio: torch.Tensor, model: HearModel) -> torch.Tensor:
    """``audio [n_sounds, n_samples]`` -> ``[n_sounds, scene_embedding_size]``."""
    _check(audio)
    return model.extractor(audio, layers=[-1]).embedding.float().to(audio.device)
