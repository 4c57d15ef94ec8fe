"""Log-mel front ends of the spectrogram models: M2D / MSM-MAE's and EAT's Kaldi-compatible fbank.

M2D / MSM-MAE (:class:`LogMelSpectrogram`, 16 kHz, 25 ms / 10 ms, 80 bins from 50 to 8000 Hz): the official
models convert audio offline with nnAudio: a periodic Hann window, centred reflect-padded frames, a power
spectrogram, librosa's (Slaney) mel filters and ``log(x + eps)`` with float32's machine epsilon. This module
computes the same on the model's device from the waveform.

EAT (:class:`KaldiFbank`, 128 bins): the official front end calls ``torchaudio.compliance.kaldi.fbank`` on
each mean-removed clip (Hanning window, no dither, 25 ms / 10 ms frames cut without padding) and zero-pads or
crops the result to a fixed number of frames; this module computes the same fbank for a whole batch at once.

Both standardise with one dataset-wide mean and std (``norm_stats``), stored in the model and so in every
checkpoint; the task measures them on a sample of the training set before training starts.
"""

import math
from typing import Optional

import torch
import torch.nn as nn
import torchaudio
from torchaudio.compliance import kaldi

from .float32_buffers import Float32Buffers


class StandardisedSpectrogram(Float32Buffers):
    """Holds the dataset mean and std (``norm_stats``) and standardises what a subclass's ``log_mel``
    computes (the task measures the statistics on ``log_mel``'s output).

    ``std_scale`` multiplies the std (EAT, like AST, divides by twice the std). The statistics, windows and
    filter banks stay float32 in a half-precision model.
    """

    def __init__(self, std_scale: float = 1.0):
        super().__init__()
        self.std_scale = std_scale
        # dataset mean and std of the log-mel values; NaN until the task (or a checkpoint) sets them
        self.register_buffer("norm_stats", torch.full((2,), math.nan))
        self._stats_checked = False

    def set_norm_stats(self, mean: float, std: float) -> None:
        if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
            raise ValueError(f"log-mel normalisation needs a finite mean and a positive std, got {mean}, {std}")
        self.norm_stats.copy_(torch.tensor([mean, std], dtype=self.norm_stats.dtype))

    def standardise(self, features: torch.Tensor) -> torch.Tensor:
        if not self._stats_checked:
            if torch.isnan(self.norm_stats).any():
                raise RuntimeError(
                    "the log-mel normalisation statistics are not set: build the model through the "
                    "spectrogram_pretraining task (it measures them) or load them from a checkpoint"
                )
            self._stats_checked = True
        mean, std = self.norm_stats
        return (features - mean) / (std * self.std_scale)

    def forward(self, waveform: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.standardise(self.log_mel(waveform))


class LogMelSpectrogram(StandardisedSpectrogram):
    """Waveforms ``[B, S]`` -> standardised log-mel spectrograms ``[B, n_mels, frames]`` in float32.

    ``frames = S // hop_length + 1`` (centred frames). Always computed in float32, also under autocast or
    in a half-precision model, since ``log(x + 1.2e-7)`` of a power spectrogram underflows in fp16.
    ``lengths`` is ignored: the M2D models train on whole crops.
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

    def log_mel(self, waveform: torch.Tensor) -> torch.Tensor:
        """Unstandardised ``log(mel + eps)`` of ``waveform [B, S]`` -> ``[B, n_mels, frames]``."""
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            spectrum = torch.stft(
                waveform.float(), self.n_fft, self.hop_length, self.win_length, window=self.window,
                center=True, pad_mode="reflect", return_complex=True,
            ).abs().pow(2)  # [B, freqs, frames]
            mel = torch.einsum("bft,fm->bmt", spectrum, self.mel_filters)
            return torch.log(mel + torch.finfo(torch.float32).eps)


class KaldiFbank(StandardisedSpectrogram):
    """EAT's front end: waveforms ``[B, S]`` -> standardised Kaldi fbanks ``[B, n_mels, target_frames]``.

    Per clip, as ``kaldi.fbank(clip - clip.mean(), htk_compat=True, window_type="hanning", dither=0,
    num_mel_bins=n_mels, frame_shift=10)`` on its first ``lengths[i]`` samples: ``1 + (len - win) // hop``
    frames, each with its DC offset removed, pre-emphasised (0.97), Hanning-windowed, zero-padded to a power
    of two for the FFT, a power spectrum through Kaldi's mel banks, ``log(max(x, eps))``. The frames are then
    zero-padded or cropped to ``target_frames`` (EAT: 1024) before standardisation, as EAT does. float32.
    """

    def __init__(self, sample_rate: int = 16000, win_length: int = 400, hop_length: int = 160, n_mels: int = 128,
                 f_min: float = 20.0, f_max: float = 0.0, target_frames: int = 1024, std_scale: float = 2.0,
                 preemphasis: float = 0.97):
        super().__init__(std_scale)
        self.win_length, self.hop_length, self.target_frames = win_length, hop_length, target_frames
        self.preemphasis = preemphasis
        self.fft_size = 1 << (win_length - 1).bit_length()
        banks, _ = kaldi.get_mel_banks(n_mels, self.fft_size, float(sample_rate), f_min, f_max, 100.0, -500.0, 1.0)
        # rebuilt from the arguments, so not saved in checkpoints
        self.register_buffer("mel_banks", nn.functional.pad(banks, (0, 1)).T.contiguous(), persistent=False)
        self.register_buffer("window", torch.hann_window(win_length, periodic=False), persistent=False)

    def num_frames(self, samples: torch.Tensor) -> torch.Tensor:
        return torch.clamp((samples - self.win_length) // self.hop_length + 1, min=0)

    def log_mel(self, waveform: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Unstandardised fbank of ``waveform [B, S]`` -> ``[B, n_mels, 1 + (S - win) // hop]``, zero
        after each clip's own last frame when ``lengths [B]`` (valid samples) is given."""
        batch, samples = waveform.shape
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            waveform = waveform.float()
            if lengths is None:
                lengths = torch.full((batch,), samples, device=waveform.device)
            lengths = lengths.to(waveform.device)
            valid = torch.arange(samples, device=waveform.device) < lengths.unsqueeze(1)
            mean = (waveform * valid).sum(1, keepdim=True) / lengths.clamp(min=1).unsqueeze(1)
            waveform = (waveform - mean) * valid
            if samples < self.win_length:
                return waveform.new_zeros(batch, self.mel_banks.shape[1], 0)
            frames = waveform.unfold(1, self.win_length, self.hop_length)  # [B, T, win]
            frames = frames - frames.mean(dim=-1, keepdim=True)
            previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
            frames = (frames - self.preemphasis * previous) * self.window
            spectrum = torch.fft.rfft(frames, n=self.fft_size).abs().pow(2)
            fbank = torch.matmul(spectrum, self.mel_banks).clamp(min=torch.finfo(torch.float32).eps).log()
            in_clip = torch.arange(fbank.shape[1], device=fbank.device) < self.num_frames(lengths).unsqueeze(1)
            return (fbank * in_clip.unsqueeze(-1)).transpose(1, 2)

    def forward(self, waveform: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        fbank = self.log_mel(waveform, lengths)[..., : self.target_frames]
        fbank = nn.functional.pad(fbank, (0, self.target_frames - fbank.shape[-1]))
        return self.standardise(fbank)
