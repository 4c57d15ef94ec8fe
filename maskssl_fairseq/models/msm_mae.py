"""MSM-MAE (Niizumi et al., HEAR 2021), as trained in the M2D code base: masked spectrogram reconstruction.

The encoder, front end and masking are M2D's (``MaskedSpectrogramModel``); a narrow MAE decoder
reconstructs the masked 16x16 log-mel patches and the loss is their mean squared error.
"""

from dataclasses import dataclass, field
from typing import Optional

import torch
from fairseq.models import register_model

from ..modules import released_checkpoints as released
from ..modules.masked_spectrogram import MaskedSpectrogramConfig, MaskedSpectrogramModel
from ..modules.spectrogram_vit import MaskedTokenPredictor, patchify, split_by_mask


@dataclass
class MSMMAEConfig(MaskedSpectrogramConfig):
    mask_ratio: float = field(default=0.75, metadata={"help": "MSM-MAE: 0.75"})
    decoder_embed_dim: int = field(default=384, metadata={"help": "msm_mae_vit_base forces 384"})
    decoder_layers: int = field(default=4, metadata={"help": "msm_mae_vit_base forces 4"})
    decoder_attention_heads: int = 6
    norm_pix_loss: bool = field(default=False, metadata={"help": "standardise each target patch (MAE default: off)"})


@register_model("msm_mae", dataclass=MSMMAEConfig)
class MSMMAEModel(MaskedSpectrogramModel):
    def __init__(self, cfg: MSMMAEConfig):
        super().__init__(cfg)
        self.decoder = MaskedTokenPredictor(cfg.encoder_embed_dim, cfg.decoder_embed_dim, cfg.decoder_layers,
                                            cfg.decoder_attention_heads, cfg.mlp_ratio, cfg.patch_size ** 2,
                                            self.encoder.grid)

    def forward(self, source: torch.Tensor, **unused) -> dict:
        spectrogram = self.training_spectrogram(source)
        mask = self.draw_mask(spectrogram)
        visible, _, order = split_by_mask(self.encoder.embed(spectrogram), mask, self.num_masked)
        reconstruction = self.decoder(self.encoder(visible), order).float()  # [B, Nm, p * p]
        _, target, _ = split_by_mask(patchify(spectrogram, self.cfg.patch_size), mask, self.num_masked)
        if self.cfg.norm_pix_loss:
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        per_patch = (reconstruction - target).pow(2).mean(dim=-1)
        return {"losses": {"mse": per_patch.sum()}, "sample_size": per_patch.numel(), "hint_ratio": self.logged_hint_ratio}


def from_official(state: dict, path: Optional[str] = None, name: Optional[str] = None,
                  config: Optional[dict] = None, **overrides) -> dict:
    """An MSM-MAE checkpoint of the M2D code base (``msm_mae_vit_base``: MAE's ``MaskedAutoencoderViT`` with a
    CLS token; ``torch.load`` of ``checkpoint-N.pth``) -> our ``msm_mae`` checkpoint. Input size from the folder
    name (``name`` or the folder of ``path``, M2D's convention) or ``overrides`` (any ``MSMMAEConfig`` field);
    heads at 64 channels each, in the encoder and the decoder (384 / 6)."""
    source = released.source_name(path)
    state = released.m2d_state(state)
    arch = released.m2d_architecture(state, name or released.folder_name(path), overrides)
    decoder = ("decoder_embed_dim", "decoder_layers", "decoder_attention_heads")
    arch = dict(released.decoder_fields(state, decoder, channels_per_head=64), **arch)
    grid = (arch["n_mels"] // arch["patch_size"], arch["input_frames"] // arch["patch_size"])
    converted = released.vit_from_official(state, grid)
    converted.update(released.decoder_from_official(state, "decoder."))
    released.unused_keys(state, released.VIT_PREFIXES + released.DECODER_PREFIXES, source)
    return released.m2d_family_checkpoint("msm_mae", arch, converted, source)


def to_official(checkpoint: dict, **unused) -> dict:
    """Our ``msm_mae`` checkpoint -> ``{'model': state}`` in the M2D code base's MAE layout (``norm_stats``
    inside); M2D's runtimes read the input size from the folder name (``m2d.official_folder_name``)."""
    ours = released.with_stored_positions(checkpoint)
    state = released.vit_to_official(ours)
    state.update(released.decoder_to_official(ours, "decoder."))
    return {"model": state}
