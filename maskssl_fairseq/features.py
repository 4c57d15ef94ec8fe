"""One features API for every model of the plugin and fairseq's own speech models: every layer's frame features,
the time of each frame and an utterance embedding, for clips of any length, batched.

    extractor = FeatureExtractor.from_checkpoint("checkpoint_best.pt")
    out = extractor([wave_a, wave_b])          # 1-D float tensors at extractor.sample_rate, any lengths
    out.layers      # [layer 0, ..., layer L], each [B, T, D], zeros past each clip's frames
    out.padding     # [B, T], True past a clip's frames
    out.timestamps  # [T] seconds, the centre of each frame (the same grid for every clip)
    out.embedding   # [B, E]: the mean of the last layer over the clip's frames; EAT: its CLS token

Speech models (data2vec 2.0 / EH-MAM ``Data2Vec2AudioModel``, ARMHuBERT / MaskHuBERT students, fairseq's
``Wav2Vec2Model`` and ``HubertModel``, ``wav2vec_ctc`` fine-tunes of any of them): layer 0 is the CNN's output
projection, layers 1..L the transformer layers (SUPERB's order); a frame every ``stride`` samples (320: 20 ms),
centred on the CNN's receptive field. Audio is normalised per clip when the model was trained so
(``task.normalize``).

Spectrogram models (M2D, MSM-MAE, M2D-CLAP, EAT, and classifiers fine-tuned from them): layer 0 is the
position-embedded patch tokens as the first block sees them, layers 1..L the blocks' outputs (the last after the
encoder's final norm); a frame is one column of patches, the ``F/p`` frequency tokens concatenated (ViT-B on 80
mel bins: 5 x 768 = 3840-d every 16 x 10 ms = 160 ms), as M2D's official runtime returns them. The clip's
spectrogram is cut into pieces of the training width; a last partial patch is padded (M2D: zeros after
standardisation, as its runtime pads; EAT: zeros before standardisation, as EAT pads short clips), so a 2.2 s
clip has 14 frames. The encoder sees only the patches of the clip, never padding up to the training width.

Long clips are cut into pieces of the training width (speech: ``task.max_sample_size`` samples, frame-aligned so
that the pieces' frames are exactly the whole clip's; spectrogram models: the encoder's time grid) and at most
``max_pieces`` pieces run at a time, so the transformer's memory does not grow with the length; only the layers
asked for are kept. Padded batches give each clip what it gives alone: spectrogram pieces run in groups of equal
width; speech pieces run their CNN one at a time and the transformer batched with the padded frames excluded as
keys.

Why the speech CNN runs one piece at a time: a group norm over time in the first conv block (wav2vec 2.0 BASE,
HuBERT BASE, data2vec 2.0) sees a padded row's zeros, so a batched CNN changes a short utterance's features
(by up to 0.2). The frames of each piece are then padded with zeros, which is what the positional convolutions
see past the end of a piece run alone. An ARMHuBERT student with ``official_compat`` pairs attention maps with
other samples of its batch (the released code's behaviour), so only its batches of one piece equal the piece alone.
"""

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .modules.cnn_frontend import conv_output_lengths

SPEECH_TRAINING_SECONDS = 20.0  # data2vec 2.0's crop (max_sample_size 320000), for checkpoints without one


SPECTROGRAM_TASKS = ("spectrogram_pretraining", "spectrogram_classification")


def load_model(path: str, data_dir: Optional[str] = None, device: str = "cpu") -> Tuple[nn.Module, object]:
    """A fairseq checkpoint of any plugin model or fairseq speech model -> (model in eval mode, its config).

    ``data_dir`` replaces the checkpoint's ``task.data``: a ``wav2vec_ctc`` fine-tune needs the folder of its
    ``dict.ltr.txt`` to be built. The spectrogram models build from their own configuration, which holds all
    they need (label names of a classifier included), so they load without their training data (M2D-CLAP's
    captions, a classifier's labels).
    """
    from fairseq import checkpoint_utils, models

    overrides = {"data": str(data_dir)} if data_dir else None
    state = checkpoint_utils.load_checkpoint_to_cpu(str(path), overrides)  # fairseq applies the overrides here
    cfg = state["cfg"]
    if cfg is not None and cfg.task is not None and cfg.task.get("_name") in SPECTROGRAM_TASKS:
        model = models.build_model(cfg.model, None, from_checkpoint=True)
        model.load_state_dict(state["model"], strict=True)
        return model.eval().to(device), cfg
    try:
        models_, cfg, _task = checkpoint_utils.load_model_ensemble_and_task([str(path)], arg_overrides=overrides,
                                                                            state=state)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{path}: building its task needs a file that is not there ({err}); for a "
                                "fine-tuned model pass data_dir= (--data-dir) with its dict.ltr.txt") from None
    return models_[0].eval().to(device), cfg


def speech_encoder(model: nn.Module) -> nn.Module:
    """The pretrained network inside a ``wav2vec_ctc`` fine-tune, or the model itself."""
    encoder = getattr(model, "w2v_encoder", None)
    return encoder.w2v_model if encoder is not None else model


def conv_layers_of(model: nn.Module) -> List[Tuple[int, int, int]]:
    """The ``(dim, kernel, stride)`` layers of the model's fairseq ``ConvFeatureExtractionModel``."""
    convs = [block[0] for block in model.feature_extractor.conv_layers]
    return [(conv.out_channels, conv.kernel_size[0], conv.stride[0]) for conv in convs]


def receptive_field(layers: Sequence[Tuple[int, int, int]]) -> Tuple[int, int]:
    """(samples one frame sees, samples between frames) of unpadded conv layers: frame ``t`` covers samples
    ``[t * stride, t * stride + field)``."""
    field, stride = 1, 1
    for _, kernel, step in layers:
        field += (kernel - 1) * stride
        stride *= step
    return field, stride


def unsupported(model: nn.Module) -> str:
    return (f"no layer features for a {type(model).__name__}: supported are data2vec 2.0 / EH-MAM, ARMHuBERT, "
            "fairseq's wav2vec 2.0 and HuBERT, wav2vec_ctc fine-tunes of them, and the spectrogram models (M2D, "
            "MSM-MAE, M2D-CLAP, EAT) and classifiers fine-tuned from them")


def projected_features(model: nn.Module, waveform: torch.Tensor) -> torch.Tensor:
    """One utterance ``[1, S]`` -> the CNN output projection ``[1, T, C]`` (the first SUPERB hidden state)."""
    from fairseq.models.hubert import HubertModel
    from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Model

    from .models.armhubert import ArmHubertModel
    from .modules.data2vec2_audio import Data2Vec2AudioModel

    if isinstance(model, Data2Vec2AudioModel):
        return model.local_features(waveform)
    if isinstance(model, ArmHubertModel):
        return model.front_end(waveform)[0]
    if isinstance(model, (Wav2Vec2Model, HubertModel)):
        features = model.layer_norm(model.feature_extractor(waveform).transpose(1, 2))
        return model.post_extract_proj(features) if model.post_extract_proj is not None else features
    raise TypeError(unsupported(model))


def transformer_layers(model: nn.Module, x: torch.Tensor, padding: Optional[torch.Tensor]) -> List[torch.Tensor]:
    """Projected features ``[B, T, C]`` with zeros at ``padding [B, T]`` -> every layer's output ``[B, T, C]``."""
    from .models.armhubert import ArmHubertModel
    from .modules.data2vec2_audio import Data2Vec2AudioModel

    if isinstance(model, Data2Vec2AudioModel):
        return data2vec2_block_outputs(model, x, padding)
    if isinstance(model, ArmHubertModel):
        return model.encoder(x, padding)
    _, layer_results = model.encoder.extract_features(x, padding_mask=padding, tgt_layer=None)
    return [result[0].transpose(0, 1) for result in layer_results]  # fairseq: T x B x C


def data2vec2_block_outputs(model: nn.Module, x: torch.Tensor, padding: Optional[torch.Tensor]) -> List[torch.Tensor]:
    """Every main block's output of data2vec 2.0's context encoder (its ``forward`` returns the FFN outputs
    instead), the padded frames zeroed after each positional conv block as the conv's own zero padding is."""
    encoder = model.encoder
    positional = x.transpose(1, 2)
    for block in encoder.pos_conv:
        positional = block(positional)
        if padding is not None:
            positional = positional.masked_fill(padding.unsqueeze(1), 0.0)
    x = x + positional.transpose(1, 2)
    positions = torch.arange(x.size(1), device=x.device).expand(x.size(0), -1)
    alibi = encoder.alibi_bias(positions)
    key_bias = None
    if padding is not None:
        key_bias = torch.zeros(padding.shape, device=x.device).masked_fill(padding, -math.inf)[:, None, None, :]
    x = encoder.prenet_norm(x)
    for i, block in enumerate(encoder.prenet):
        x, _ = block(x, encoder.layer_bias(alibi, key_bias, i))
    outputs = []
    for i, block in enumerate(encoder.blocks):
        x, _ = block(x, encoder.layer_bias(alibi, key_bias, encoder.cfg.prenet_depth + i))
        outputs.append(x)
    return outputs


@torch.no_grad()
def hidden_states(
    model: nn.Module, waveforms: torch.Tensor, padding_mask: Optional[torch.Tensor] = None
) -> Tuple[List[torch.Tensor], Optional[torch.Tensor]]:
    """Per-layer features of a speech model's batch, without chunking: (``[projection, layer 1, ..., layer L]``,
    each ``[B, T, C]``, frame padding ``[B, T]`` (True = padding) or None).

    Args:
        model: a speech model from :func:`load_model` (in eval mode).
        waveforms: ``[B, S]``, already normalised if the model was trained on normalised audio
            (``cfg.task.normalize``).
        padding_mask: ``[B, S]``, True at padded samples (each row's valid samples come first).
    """
    model = speech_encoder(model)
    lengths = [waveforms.size(1)] * waveforms.size(0)
    if padding_mask is not None:
        lengths = (~padding_mask).sum(1).tolist()
    frames = conv_output_lengths(torch.tensor(lengths), conv_layers_of(model)).tolist()
    per_utterance = [projected_features(model, waveforms[b:b + 1, :n]) for b, n in enumerate(lengths)]
    longest = max(frames)
    x = torch.cat([F.pad(f, (0, 0, 0, longest - f.size(1))) for f in per_utterance])
    padding = torch.arange(longest, device=x.device).unsqueeze(0) >= torch.tensor(frames, device=x.device)[:, None]
    padding = padding if padding.any() else None
    return [x] + transformer_layers(model, x, padding), padding


def select_layers(layers: Sequence[torch.Tensor], layer: Optional[int]) -> torch.Tensor:
    """``layer`` (0 = the first hidden state, 1..L = the layers) ``[B, T, C]``, or all stacked ``[B, L+1, T, C]``."""
    if layer is None:
        return torch.stack(list(layers), dim=1)
    if not 0 <= layer < len(layers):
        raise ValueError(f"--layer {layer}: the model has layers 0 (CNN projection or patch embedding) to "
                         f"{len(layers) - 1}")
    return layers[layer]


@dataclass
class Features:
    """What :class:`FeatureExtractor` returns for a batch of clips."""

    layers: List[torch.Tensor]  # the kept layers, each [B, T, D], zeros at padding
    padding: torch.Tensor  # [B, T] bool, True past a clip's frames
    timestamps: torch.Tensor  # [T] seconds: the centre of each frame
    embedding: torch.Tensor  # [B, E]: the utterance embedding

    @property
    def lengths(self) -> torch.Tensor:
        """Frames of each clip ``[B]``."""
        return (~self.padding).sum(1)


def masked_mean(frames: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
    """``[B, T, D]`` averaged over the frames that are not ``padding [B, T]`` -> ``[B, D]``."""
    valid = (~padding).unsqueeze(-1).to(frames.dtype)
    return (frames * valid).sum(1) / valid.sum(1).clamp(min=1)


def pad_and_stack(per_clip: List[torch.Tensor]) -> torch.Tensor:
    """Clips' ``[T_i, D]`` -> ``[B, max T_i, D]`` with zeros after each."""
    longest = max(x.shape[0] for x in per_clip)
    return torch.stack([F.pad(x, (0, 0, 0, longest - x.shape[0])) for x in per_clip])


@contextmanager
def block_io(blocks: nn.Module) -> Iterator[Dict[str, list]]:
    """Records the first block's input and every block's output while the encoder's own forward runs, so that
    whatever the encoder does before its blocks (positions, CLS, a pre-norm) is in layer 0 as it is in training."""
    seen: Dict[str, list] = {"input": [], "outputs": []}
    first = blocks[0]
    hooks = [first.register_forward_pre_hook(lambda module, args: seen["input"].append(args[0]))]
    for block in blocks:  # timm's blocks return the tokens, data2vec 2.0's post-LN blocks (tokens, FFN output)
        hooks.append(block.register_forward_hook(
            lambda module, args, out: seen["outputs"].append(out[0] if isinstance(out, tuple) else out)))
    try:
        yield seen
    finally:
        for hook in hooks:
            hook.remove()


class FeatureExtractor(nn.Module):
    """A model (speech or spectrogram) and what its features need: sample rate, normalisation, training width.

    Args:
        model: a model in eval mode (:func:`load_model`).
        sample_rate: of the audio the model was trained on (the checkpoint's ``task.sample_rate``).
        normalize: speech models: normalise each clip to zero mean and unit variance (``task.normalize``).
        training_samples: speech models: the piece width for long clips (``task.max_sample_size``).
        max_pieces: training-width pieces per forward pass (bounds memory on long clips).
    """

    def __init__(self, model: nn.Module, sample_rate: int = 16000, normalize: bool = False,
                 training_samples: Optional[int] = None, max_pieces: int = 16):
        super().__init__()
        self.model = model
        self.sample_rate = int(sample_rate)
        self.normalize = normalize
        self.max_pieces = max_pieces
        frontend, encoder = getattr(model, "frontend", None), getattr(model, "encoder", None)
        from .modules.spectrogram_vit import SpectrogramViT

        self.spectrogram = isinstance(encoder, SpectrogramViT) and frontend is not None
        if self.spectrogram:
            from .models.eat import EATModel
            from .modules.log_mel import KaldiFbank

            self.patch = encoder.patch
            self.hop = frontend.hop_length
            self.frames_per_piece = encoder.grid[1] * encoder.patch
            self.kaldi = isinstance(frontend, KaldiFbank)
            # Kaldi frames start at their first sample and span a window; the log-mel frames are centred
            self.first_frame_centre = frontend.win_length / 2 if self.kaldi else 0.0
            self.cls_embedding = isinstance(model, EATModel) or getattr(model, "pooling", None) == "cls"
            self.stride = self.patch * self.hop
        else:
            speech = speech_encoder(model)
            if not hasattr(speech, "feature_extractor"):
                raise TypeError(unsupported(model))
            self.field, self.stride = receptive_field(conv_layers_of(speech))
            width = training_samples or int(SPEECH_TRAINING_SECONDS * self.sample_rate)
            if width < self.field:
                raise ValueError(f"a piece of {width} samples is shorter than the CNN's receptive field ({self.field})")
            self.frames_per_piece = (width - self.field) // self.stride + 1
        self._sizes: Optional[Tuple[int, int, int]] = None

    @classmethod
    def from_checkpoint(cls, path: str, data_dir: Optional[str] = None, device: str = "cpu",
                        max_pieces: int = 16) -> "FeatureExtractor":
        model, cfg = load_model(path, data_dir, device)
        task = cfg.task
        return cls(model, int(getattr(task, "sample_rate", 16000) or 16000), bool(getattr(task, "normalize", False)),
                   getattr(task, "max_sample_size", None), max_pieces).to(device)

    @property
    def frame_seconds(self) -> float:
        """Seconds between frames."""
        return self.stride / self.sample_rate

    @property
    def first_frame_seconds(self) -> float:
        """The centre of the first frame: of the CNN's receptive field, or of the first patch's frames."""
        if self.spectrogram:
            return ((self.patch - 1) / 2 * self.hop + self.first_frame_centre) / self.sample_rate
        return self.field / 2 / self.sample_rate

    def sizes(self) -> Tuple[int, int, int]:
        """(layers, frame feature width, embedding width), read from the features of one second of silence."""
        if self._sizes is None:
            probe = self([torch.zeros(max(self.sample_rate, getattr(self, "field", 0)))])
            self._sizes = (len(probe.layers), probe.layers[-1].shape[-1], probe.embedding.shape[-1])
        return self._sizes

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def forward(self, waveforms: Union[torch.Tensor, Sequence[torch.Tensor]], padding_mask: Optional[torch.Tensor] = None,
                layers: Optional[Sequence[int]] = None) -> Features:
        """Features of clips: a list of 1-D waveforms, or ``[B, S]`` with ``padding_mask [B, S]`` (True at padded
        samples, each row's valid samples first). ``layers``: indices to keep (negative from the end; all if None)."""
        if isinstance(waveforms, torch.Tensor):
            if waveforms.dim() != 2:
                raise ValueError(f"waveforms must be [batch, samples] or a list of 1-D tensors, got {tuple(waveforms.shape)}")
            lengths = [waveforms.shape[1]] * len(waveforms) if padding_mask is None else (~padding_mask).sum(1).tolist()
            waveforms = [w[:n] for w, n in zip(waveforms, lengths)]
        clips = [w.to(self.device, torch.float32) for w in waveforms]
        if not clips:
            raise ValueError("no waveforms")
        for i, clip in enumerate(clips):
            if clip.dim() != 1:
                raise ValueError(f"waveform {i}: a 1-D tensor is expected, got {tuple(clip.shape)}")
        pieces, owner = self.spectrogram_pieces(clips) if self.spectrogram else self.speech_pieces(clips)
        encoded = self.encode_spectrogram_pieces(pieces) if self.spectrogram else self.encode_speech_pieces(pieces)
        per_clip: List[list] = [[] for _ in clips]
        keep = None
        for index, piece_layers, cls in encoded:
            if keep is None:
                total = len(piece_layers)
                keep = list(range(total)) if layers is None else sorted({i % total for i in layers})
            # copies: a slice would hold its whole group's output in memory
            kept = {i: piece_layers[i].clone() for i in set(keep) | {total - 1}}
            per_clip[owner[index]].append((kept, cls))
        kept_layers = [pad_and_stack([torch.cat([p[0][i] for p in clip_pieces]) for clip_pieces in per_clip])
                       for i in keep]
        frames = [[p[0][total - 1].shape[0] for p in clip_pieces] for clip_pieces in per_clip]
        if self.spectrogram and self.cls_embedding:  # the pieces' CLS tokens, each weighted by its frames
            embedding = torch.stack([sum(p[1] * n for p, n in zip(clip_pieces, counts)) / sum(counts)
                                     for clip_pieces, counts in zip(per_clip, frames)])
        else:  # the mean of the last layer over the clip's frames
            embedding = torch.stack([torch.cat([p[0][total - 1] for p in clip_pieces]).mean(0) for clip_pieces in per_clip])
        lengths = torch.tensor([sum(counts) for counts in frames], device=embedding.device)
        padding = torch.arange(int(lengths.max()), device=embedding.device) >= lengths.unsqueeze(1)
        steps = torch.arange(padding.shape[1], dtype=torch.float64, device=padding.device)
        timestamps = self.first_frame_seconds + steps * self.frame_seconds
        return Features(kept_layers, padding, timestamps.float(), embedding)

    def speech_pieces(self, clips: List[torch.Tensor]) -> Tuple[List[torch.Tensor], List[int]]:
        """Clips (normalised if the model wants it) cut into frame-aligned pieces of the training width, whose frames
        are exactly the whole clip's: (pieces, the clip of each)."""
        pieces, owner = [], []
        length = (self.frames_per_piece - 1) * self.stride + self.field
        for i, clip in enumerate(clips):
            if clip.numel() < self.field:
                raise ValueError(f"waveform {i}: {clip.numel()} samples, the model's first frame needs {self.field} "
                                 f"({1000 * self.field / self.sample_rate:.1f} ms)")
            if self.normalize:
                clip = F.layer_norm(clip, clip.shape)
            frames = (clip.numel() - self.field) // self.stride + 1
            for first in range(0, frames, self.frames_per_piece):
                pieces.append(clip[first * self.stride:first * self.stride + length])
                owner.append(i)
        return pieces, owner

    def encode_speech_pieces(self, pieces: List[torch.Tensor]) -> Iterator[Tuple[int, List[torch.Tensor], None]]:
        """Yields (piece index, its layers ``[T, D]``, None), ``max_pieces`` pieces per padded batch."""
        for start in range(0, len(pieces), self.max_pieces):
            group = pieces[start:start + self.max_pieces]
            source = torch.stack([F.pad(p, (0, max(map(len, group)) - len(p))) for p in group])
            padding = torch.stack([torch.arange(source.shape[1], device=source.device) >= len(p) for p in group])
            group_layers, frame_padding = hidden_states(self.model, source, padding)
            for row in range(len(group)):
                frames = group_layers[0].shape[1] if frame_padding is None else int((~frame_padding[row]).sum())
                yield start + row, [layer[row, :frames] for layer in group_layers], None

    def standardised_spectrogram(self, clip: torch.Tensor) -> torch.Tensor:
        """One clip -> its standardised spectrogram ``[1, 1, F, T]``, ``T`` a positive multiple of the patch."""
        frontend = self.model.frontend
        spectrogram = frontend.log_mel(clip.unsqueeze(0))
        pad = max(-spectrogram.shape[-1] % self.patch, self.patch - spectrogram.shape[-1])
        if self.kaldi:  # EAT pads a short clip's fbank with zeros, then standardises
            return frontend.standardise(F.pad(spectrogram, (0, pad))).unsqueeze(1)
        return F.pad(frontend.standardise(spectrogram), (0, pad)).unsqueeze(1)  # M2D's runtime pads after

    def encode_pieces(self, pieces: torch.Tensor) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """Equal-width pieces ``[n, 1, F, w]`` -> (every layer ``[n, w/p, (F/p) * D]``, the final CLS ``[n, D]``)."""
        encoder = self.model.encoder
        with block_io(encoder.blocks) as seen:
            final = encoder(encoder.embed(pieces))
        layers = [seen["input"][0]] + seen["outputs"][:-1] + [final]
        rows, columns = encoder.grid[0], pieces.shape[-1] // self.patch
        frames = []
        for layer in layers:  # tokens are numbered frequency row first: [n, rows * columns, D] -> [n, columns, rows * D]
            tokens = layer[:, -rows * columns:]
            frames.append(tokens.reshape(len(pieces), rows, columns, -1).permute(0, 2, 1, 3).reshape(len(pieces), columns, -1))
        return frames, final[:, 0]

    def spectrogram_pieces(self, clips: List[torch.Tensor]) -> Tuple[List[torch.Tensor], List[int]]:
        """Clips' standardised spectrograms cut into pieces of the encoder's width ``[1, 1, F, w]``: (pieces,
        the clip of each)."""
        pieces, owner = [], []
        for i, clip in enumerate(clips):
            spectrogram = self.standardised_spectrogram(clip)
            for start in range(0, spectrogram.shape[-1], self.frames_per_piece):
                pieces.append(spectrogram[..., start:start + self.frames_per_piece])
                owner.append(i)
        return pieces, owner

    def encode_spectrogram_pieces(self, pieces: List[torch.Tensor]) -> Iterator[Tuple[int, List[torch.Tensor], torch.Tensor]]:
        """Yields (piece index, its layers ``[t, (F/p) * D]``, its final CLS ``[D]``), pieces of equal width together
        (no padding inside a forward), at most ``max_pieces`` at a time."""
        by_width: Dict[int, List[int]] = {}
        for index, piece in enumerate(pieces):
            by_width.setdefault(piece.shape[-1], []).append(index)
        for indices in by_width.values():
            for start in range(0, len(indices), self.max_pieces):
                group = indices[start:start + self.max_pieces]
                frames, cls = self.encode_pieces(torch.cat([pieces[i] for i in group]))
                for row, index in enumerate(group):
                    yield index, [layer[row] for layer in frames], cls[row]
