"""What M2D, MSM-MAE and EAT share: config fields, log-mel front end, ViT encoder, masking and features.

Subclasses add their objective in ``forward``; the masking strategy (random, inverse block, DWM) is drawn
here, inside the model, because DWM needs the normalised spectrogram and its hint ratio follows the
training progress that fairseq reports through ``set_num_updates``.
"""

from dataclasses import dataclass, field
from typing import Optional

import torch
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.models import BaseFairseqModel
from omegaconf import II

from ..masking import dispersion_weighted_mask, hint_ratio, informed_mask, inverse_block_mask, masked_count, random_mask
from .log_mel import KaldiFbank, LogMelSpectrogram
from .spectrogram_vit import SpectrogramViT, patchify

MASKING_CHOICES = ChoiceEnum(["random", "ibm", "dwm", "sgim"])
FRONTEND_CHOICES = ChoiceEnum(["log_mel", "kaldi_fbank"])


@dataclass
class MaskedSpectrogramConfig(FairseqDataclass):
    # front end: M2D's wav_to_lms.py settings; the time grid comes from the task
    frontend: FRONTEND_CHOICES = field(
        default="log_mel", metadata={"help": "log_mel (M2D's nnAudio-equivalent) or kaldi_fbank (EAT: torchaudio's "
                                             "Kaldi fbank, padded or cropped to input_frames)"}
    )
    fbank_std_scale: float = field(default=2.0, metadata={"help": "kaldi_fbank: divide by this times the std (EAT: 2)"})
    sample_rate: int = II("task.sample_rate")
    hop_length: int = II("task.hop_length")
    input_frames: int = field(default=II("task.crop_frames"), metadata={"help": "spectrogram width the model trains on"})
    n_fft: int = 400
    win_length: int = 400
    n_mels: int = 80
    f_min: float = 50.0
    f_max: float = 8000.0
    # encoder: ViT-B on 16x16 patches (M2D m2d_vit_base)
    patch_size: int = 16
    encoder_embed_dim: int = 768
    encoder_layers: int = 12
    encoder_attention_heads: int = 12
    mlp_ratio: float = 4.0
    post_ln: bool = field(default=False, metadata={"help": "post-LN encoder blocks (EAT) instead of pre-LN ones (M2D)"})
    # masking
    masking: MASKING_CHOICES = field(
        default="random", metadata={"help": "random, ibm (inverse block), dwm or sgim (costly: an extra encoder pass)"}
    )
    mask_ratio: float = field(default=0.7, metadata={"help": "M2D: 0.7, MSM-MAE: 0.75"})
    ibm_block: int = field(default=5, metadata={"help": "inverse block side in patches (EAT / the DWM paper: 5)"})
    ibm_adjust: float = field(default=0.07, metadata={"help": "extra share of block centres (EAT: 0.07)"})
    hint_gamma: float = field(default=2.0, metadata={"help": "DWM/SGIM hint schedule 1 - progress^gamma (paper: 2)"})
    hint_constant: Optional[float] = field(
        default=None, metadata={"help": "fixed hint ratio instead of the schedule (DWM paper ablations: 0.0, 0.5)"}
    )
    max_update: int = II("optimization.max_update")
    # continued pretraining
    init_from: Optional[str] = field(
        default=None,
        metadata={"help": "a checkpoint of this plugin (e.g. an M2D or EAT release converted with "
                          "run/convert_checkpoint.py) whose weights, normalisation statistics and EMA teacher / "
                          "target encoder start this run; the architecture must match; ignored when the run "
                          "resumes from a checkpoint"},
    )


class MaskedSpectrogramModel(BaseFairseqModel):
    """Front end, encoder and masking; ``forward(source)`` is the subclass's training objective."""

    # the channel order of the encoder's position table: M2D / MAE put time first, EAT frequency
    time_first_positions = True

    def __init__(self, cfg: MaskedSpectrogramConfig):
        super().__init__()
        self.cfg = cfg
        if not 0 < cfg.mask_ratio < 1:
            raise ValueError(f"model.mask_ratio must be in (0, 1): the encoder needs visible patches and the loss masked "
                             f"ones; got {cfg.mask_ratio}")
        if cfg.masking in ("dwm", "sgim") and cfg.hint_constant is None and cfg.max_update <= 0:
            raise ValueError(f"model.masking={cfg.masking} anneals its hint ratio over optimization.max_update, which is not set; "
                             "set optimization.max_update or model.hint_constant")
        if cfg.n_mels % cfg.patch_size or cfg.input_frames < cfg.patch_size:
            raise ValueError(f"model.patch_size={cfg.patch_size} does not cut the model.n_mels={cfg.n_mels} x "
                             f"{cfg.input_frames}-frame spectrogram into whole patches")
        if cfg.frontend == "kaldi_fbank":
            self.frontend = KaldiFbank(cfg.sample_rate, cfg.win_length, cfg.hop_length, cfg.n_mels, cfg.f_min,
                                       cfg.f_max, cfg.input_frames, cfg.fbank_std_scale)
        else:
            self.frontend = LogMelSpectrogram(cfg.sample_rate, cfg.n_fft, cfg.win_length, cfg.hop_length, cfg.n_mels,
                                              cfg.f_min, cfg.f_max)
        self.encoder = SpectrogramViT((cfg.n_mels, cfg.input_frames), cfg.patch_size, cfg.encoder_embed_dim,
                                      cfg.encoder_layers, cfg.encoder_attention_heads, cfg.mlp_ratio, cfg.post_ln,
                                      self.time_first_positions)
        self.num_updates = 0
        self.hint_ratio = self._hint_ratio(0)

    @classmethod
    def build_model(cls, cfg, task=None):
        model = cls(cfg)
        # M2D and MAE exempt biases and norm weights from weight decay (timm's rule: 1-D or bias); fairseq's
        # composite optimizer reads this attribute to put them into their own group
        for name, parameter in model.named_parameters():
            if parameter.ndim <= 1 or name.endswith(".bias"):
                parameter.param_group = "no_decay"
        return model

    def _hint_ratio(self, num_updates: int) -> float:
        progress = num_updates / self.cfg.max_update if self.cfg.max_update > 0 else 0.0
        return hint_ratio(progress, self.cfg.hint_gamma, constant=self.cfg.hint_constant)

    def set_num_updates(self, num_updates: int) -> None:
        super().set_num_updates(num_updates)
        self.hint_ratio = self._hint_ratio(num_updates)
        self.num_updates = num_updates

    @property
    def logged_hint_ratio(self) -> Optional[float]:
        """The hint ratio where it matters (DWM, SGIM), else None, which fairseq's ``model`` criterion skips."""
        return self.hint_ratio if self.cfg.masking in ("dwm", "sgim") else None

    def training_spectrogram(self, source: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Waveform crops ``[B, S]`` (``lengths [B]`` valid samples, for the fbank front end) -> standardised
        spectrograms ``[B, 1, n_mels, input_frames]``."""
        spectrogram = self.frontend(source, lengths)
        if spectrogram.shape[-1] < self.cfg.input_frames:
            raise ValueError(f"{source.shape[-1]} samples give {spectrogram.shape[-1]} frames, the model trains on "
                             f"{self.cfg.input_frames} (task.crop_frames)")
        return spectrogram[..., : self.cfg.input_frames].unsqueeze(1)

    @property
    def num_masked(self) -> int:
        """The masked patches of every row of :meth:`draw_mask`, whatever the strategy (known on the host)."""
        return masked_count(self.encoder.num_patches, self.cfg.mask_ratio)

    def draw_mask(self, spectrogram: torch.Tensor, clones: int = 1) -> torch.Tensor:
        """Boolean ``[B * clones, N]`` from ``cfg.masking``, drawn from the global RNG that fairseq seeds each
        step; the ``clones`` rows of a clip are consecutive, each with its own mask."""
        batch, device = spectrogram.shape[0] * clones, spectrogram.device
        if clones > 1 and self.cfg.masking in ("dwm", "sgim"):
            spectrogram = spectrogram.repeat_interleave(clones, 0)
        if self.cfg.masking == "random":
            return random_mask(batch, self.encoder.num_patches, self.cfg.mask_ratio, device=device)
        if self.cfg.masking == "ibm":
            return inverse_block_mask(batch, self.encoder.grid, self.cfg.mask_ratio, block=self.cfg.ibm_block,
                                      adjust=self.cfg.ibm_adjust, device=device)
        if self.cfg.masking == "dwm":
            return dispersion_weighted_mask(patchify(spectrogram, self.cfg.patch_size), self.cfg.mask_ratio,
                                            self.hint_ratio)
        with torch.no_grad():  # SGIM: the encoder's own view of every patch
            features = self.encoder(self.encoder.embed(spectrogram))[:, 1:]
        return informed_mask(features, self.cfg.mask_ratio, self.hint_ratio)

    @torch.no_grad()
    def extract_features(self, source: torch.Tensor) -> dict:
        """Frozen features of whole clips ``[B, S]`` (any length), the last layer of
        :class:`~maskssl_fairseq.features.FeatureExtractor`: ``frames [B, T', (F/p) * D]`` every ``patch * hop``
        samples (M2D: 3840-d every 160 ms; a last partial patch padded, as M2D's runtime does) and
        ``clip [B, (F/p) * D]``, their mean over time."""
        from ..features import FeatureExtractor, masked_mean

        features = FeatureExtractor(self, self.cfg.sample_rate)(source, layers=[-1])
        return {"frames": features.layers[0], "clip": masked_mean(features.layers[0], features.padding)}
