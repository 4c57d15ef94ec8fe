"""Log-mel spectrogram front end of M2D / MSM-MAE (16 kHz, 25 ms / 10 ms, 80 bins from 50 to 8000 Hz).

The official models convert audio offline with nnAudio: a periodic Hann window, centred reflect-padded
frames, a power spectrogram, librosa's (Slaney) mel filters and ``log(x + eps)`` with float32's machine
epsilon. This module computes the same on the model's device from the waveform. The spectrogram is then
standardised with one dataset-wide mean and std (``norm_stats``), stored in the model and so in every
checkpoint; the task measures them on a sample of the training set before training starts.
"""

import math

import torch
import torch.nn as nn
import torchaudio


class LogMelSpectrogram(nn.Module):
    """Waveforms ``[B, S]`` -> standardised log-mel spectrograms ``[B, n_mels, frames]`` in float32.

    ``frames = S // hop_length + 1`` (centred frames). Always computed in float32, also under autocast or
    in a half-precision model, since ``log(x + 1.2e-7)`` of a power spectrogram underflows in fp16.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        n_fft: int = 400,
        win_length: int = 400,
        hop_length: int = 160,
        n_mels: int = 80,
        f_min: float = 50.0,
        f_max: float = 8000.0,
    ):
        super().__init__()
        if f_max > sample_rate / 2:
            raise ValueError(f"f_max {f_max} Hz is above the Nyquist frequency of {sample_rate} Hz audio")
        self.n_fft, self.win_length, self.hop_length = n_fft, win_length, hop_length
        # rebuilt from the arguments, so not saved in checkpoints
        self.register_buffer("window", torch.hann_window(win_length), persistent=False)
        filters = torchaudio.functional.melscale_fbanks(
            n_fft // 2 + 1, f_min, f_max, n_mels, sample_rate, norm="slaney", mel_scale="slaney"
        )
        self.register_buffer("mel_filters", filters, persistent=False)  # [freqs, n_mels]
        # dataset mean and std of the log-mel values; NaN until the task (or a checkpoint) sets them
        self.register_buffer("norm_stats", torch.full((2,), math.nan))
        self._stats_checked = False

    def log_mel(self, waveform: torch.Tensor) -> torch.Tensor:
        """Unstandardised ``log(mel + eps)`` of ``waveform [B, S]`` -> ``[B, n_mels, frames]``."""
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            spectrum = torch.stft(
                waveform.float(), self.n_fft, self.hop_length, self.win_length, window=self.window.float(),
                center=True, pad_mode="reflect", return_complex=True,
            ).abs().pow(2)  # [B, freqs, frames]
            mel = torch.einsum("bft,fm->bmt", spectrum, self.mel_filters.float())
            return torch.log(mel + torch.finfo(torch.float32).eps)

    def set_norm_stats(self, mean: float, std: float) -> None:
        if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
            raise ValueError(f"log-mel normalisation needs a finite mean and a positive std, got {mean}, {std}")
        self.norm_stats.copy_(torch.tensor([mean, std], dtype=self.norm_stats.dtype))

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if not self._stats_checked:
            if torch.isnan(self.norm_stats).any():
                raise RuntimeError(
                    "the log-mel normalisation statistics are not set: build the model through the "
                    "spectrogram_pretraining task (it measures them) or load them from a checkpoint"
                )
            self._stats_checked = True
        mean, std = self.norm_stats.float()
        return (self.log_mel(waveform) - mean) / std
