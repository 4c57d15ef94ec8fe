"""EAT, the Efficient Audio Transformer (Chen et al., IJCAI 2024): data2vec 2.0-style self-distillation on
Kaldi fbank patches, with the Utterance-Frame Objective.

Per step, each clip's 128 x 1024 fbank (an 8 x 64 grid of 16 x 16 patches, 512 tokens) is encoded *once*,
unmasked, by a full EMA teacher (patch embedding, CLS and blocks); the target of every patch is the
average of all blocks' FFN outputs, each instance-normalised over the patches, then layer-normalised. The
student embeds the clip once and repeats it ``clone_batch`` times (16), each copy with its own inverse
block mask (80 % masked); its post-LN encoder sees only the visible patches plus CLS. A 2-D CNN decoder
fills the masked slots with N(0, 0.01) noise and predicts every patch.

Loss (all terms scaled by ``1 / sqrt(D)``), weighted as the official code weights them under fairseq's
``model`` criterion (it sums each loss and the trainer divides by ``sample_size``, the number of masked
patches):

- ``frame``: squared error summed over channels, summed over the masked patches of all clones; after the
  division, the mean over masked patches.
- ``utterance``: the student's final CLS against the patch mean of the teacher's target, squared error
  summed over channels and over the ``B * clone_batch`` rows, multiplied by ``utterance_loss_weight *
  sample_size``; after the division, ``utterance_loss_weight`` times the *sum* (not the mean) over rows.

fairseq logs ``loss_frame`` and ``loss_utterance`` after the same division, so they read as above.
"""

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from fairseq.models import register_model

from ..modules.data2vec2_audio import gather_frames, instance_norm_average
from ..modules.ema_teacher import EMATeacherMixin
from ..modules.grid_decoder import GridConvDecoder
from ..modules.masked_spectrogram import FRONTEND_CHOICES, MASKING_CHOICES, MaskedSpectrogramConfig, MaskedSpectrogramModel
from ..modules.spectrogram_vit import split_by_mask


@dataclass
class EATConfig(MaskedSpectrogramConfig):
    # front end (EAT's data pipeline: kaldi.fbank, 128 bins, low_freq 20 Hz, Nyquist top, (x - mean) / (2 std))
    frontend: FRONTEND_CHOICES = "kaldi_fbank"
    n_mels: int = 128
    f_min: float = 20.0
    f_max: float = 0.0
    post_ln: bool = True
    masking: MASKING_CHOICES = "ibm"
    mask_ratio: float = field(default=0.8, metadata={"help": "EAT: 0.8 (large: 0.75)"})
    clone_batch: int = field(default=16, metadata={"help": "masked copies of every clip per teacher pass (EAT: 16)"})
    # decoder (EAT's Decoder2d)
    decoder_dim: int = 768
    decoder_layers: int = 6
    decoder_kernel: int = 3
    decoder_groups: int = 16
    mask_noise_std: float = field(default=0.01, metadata={"help": "std of the noise tokens at masked slots"})
    # targets and loss
    average_top_k_layers: int = field(default=12, metadata={"help": "teacher blocks averaged into the target (all 12)"})
    utterance_loss_weight: float = field(default=1.0, metadata={"help": "lambda of the utterance term (EAT cls_loss: 1)"})
    # EMA teacher
    ema_decay: float = 0.9998
    ema_end_decay: float = 0.99999
    ema_anneal_end_step: int = field(default=100000, metadata={"help": "EAT: 100k (large: 150k)"})


@register_model("eat", dataclass=EATConfig)
class EATModel(EMATeacherMixin, MaskedSpectrogramModel):
    def __init__(self, cfg: EATConfig):
        super().__init__(cfg)
        if cfg.clone_batch < 1:
            raise ValueError(f"model.clone_batch must be >= 1, got {cfg.clone_batch}")
        if not 1 <= cfg.average_top_k_layers <= cfg.encoder_layers:
            raise ValueError(f"model.average_top_k_layers must be in [1, encoder_layers={cfg.encoder_layers}], "
                             f"got {cfg.average_top_k_layers}")
        if cfg.ema_anneal_end_step <= 0:
            raise ValueError("model.ema_anneal_end_step must be > 0 for the EMA momentum schedule")
        if not cfg.post_ln:
            raise ValueError("model.post_ln must be true: EAT's targets are its post-LN blocks' FFN outputs")
        dim = cfg.encoder_embed_dim
        self.decoder = GridConvDecoder(dim, cfg.decoder_dim, cfg.decoder_layers, cfg.decoder_kernel,
                                       cfg.decoder_groups, self.encoder.grid)
        self.build_teacher(["encoder"])

    def set_num_updates(self, num_updates: int) -> None:
        super().set_num_updates(num_updates)
        self.step_teacher(num_updates)

    @torch.no_grad()
    def targets(self, teacher_encoder, spectrogram: torch.Tensor) -> torch.Tensor:
        """``[B, 1, F, T]`` -> ``[B, N, D]`` float32 targets of every patch (CLS excluded)."""
        _, ffn_outputs = teacher_encoder.forward_layers(teacher_encoder.embed(spectrogram))
        average = instance_norm_average([f[:, 1:] for f in ffn_outputs], self.cfg.average_top_k_layers, True)
        return F.layer_norm(average, average.shape[-1:])

    def decoder_input(self, encoded_patches: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        """Visible outputs ``[B', Nv, D]`` back in place, N(0, mask_noise_std) at masked slots -> ``[B', N, D]``."""
        batch, num_visible, dim = encoded_patches.shape
        full = encoded_patches.new_empty(batch, order.shape[1], dim).normal_(0, self.cfg.mask_noise_std)
        return full.scatter(1, order[:, :num_visible].unsqueeze(-1).expand(-1, -1, dim), encoded_patches)

    def forward(self, source: torch.Tensor, lengths: Optional[torch.Tensor] = None,
                precomputed_mask: Optional[torch.Tensor] = None, **unused) -> dict:
        """``source [B, S]`` waveforms (``lengths [B]`` valid samples); ``precomputed_mask [B * clone_batch, N]``
        (True = masked, clones of a clip consecutive) replaces the drawn masks, as EAT's dataset can supply them."""
        spectrogram = self.training_spectrogram(source, lengths)
        clones = self.cfg.clone_batch
        teacher = self.teacher(self.encoder.patch_embed.weight)
        teacher.eval()
        targets = self.targets(teacher.encoder, spectrogram)  # once per clip, shared by its clones

        tokens = self.encoder.embed(spectrogram).repeat_interleave(clones, 0)
        mask = self.draw_mask(spectrogram, clones) if precomputed_mask is None else precomputed_mask  # [B * clones, N]
        num_masked = self.num_masked if precomputed_mask is None else None
        visible, masked, order = split_by_mask(tokens, mask, num_masked)
        masked = order[:, order.shape[1] - masked.shape[1]:]  # the masked patches' indices, ascending
        encoded = self.encoder(visible)  # [B * clones, 1 + Nv, D]
        prediction = self.decoder(self.decoder_input(encoded[:, 1:], order))

        scale = encoded.shape[-1] ** -0.5
        clone_targets = targets.repeat_interleave(clones, 0)
        prediction, clone_targets = gather_frames(prediction, masked), gather_frames(clone_targets, masked)  # x[mask]
        frame = F.mse_loss(prediction.float(), clone_targets, reduction="none") * scale  # [M, D]
        utterance_target = targets.mean(dim=1).repeat_interleave(clones, 0)
        utterance = F.mse_loss(encoded[:, 0].float(), utterance_target, reduction="none") * scale  # [B * clones, D]
        sample_size = frame.shape[0]
        with torch.no_grad():
            prediction_std = torch.sqrt(prediction.float().var(dim=0) + 1e-6).mean()
            target_std = torch.sqrt(clone_targets.var(dim=0) + 1e-6).mean()
        return {
            "losses": {"frame": frame.sum(), "utterance": utterance.sum() * (self.cfg.utterance_loss_weight * sample_size)},
            "sample_size": sample_size,
            "ema_decay": self.ema.get_decay(),
            "pred_var": prediction_std,
            "target_var": target_std,
        }
