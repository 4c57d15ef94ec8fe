"""Pretraining on fixed-length waveform crops for spectrogram models (M2D, MSM-MAE, EAT).

Reads the same ``<split>.tsv`` manifests as every other task (audio root on the first line, then
``relative/path<TAB>num_samples``). Any sample rate is resampled to ``sample_rate``; each item is a
random crop that gives ``crop_frames`` spectrogram frames (M2D: 608 = 6.08 s), zero-padded when the clip is
shorter. Before training, the mean and std of the log-mel values of a random sample of the training set are
measured and stored in the model (and so in every checkpoint).

With ``captions=true`` (M2D-CLAP) every split also has ``<split>.cap`` and ``<split>.capemb.npy``
(``maskssl_fairseq.data.captions``), and each item carries one of its clip's caption embeddings, drawn anew
every epoch from ``(seed, epoch, index)`` like the crop, so that a resumed run draws what an uninterrupted one
would; batches pass them to the model as ``net_input.caption_embedding [B, dim]``.
"""

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import soundfile
import torch
import torchaudio
from fairseq.data import FairseqDataset
from fairseq.distributed import utils as distributed_utils
from fairseq.dataclass import FairseqDataclass
from fairseq.tasks import FairseqTask, register_task
from omegaconf import II

from ..data.captions import CAPTION_SUFFIX, EMBEDDING_SUFFIX, CaptionEmbeddings
from ..data.manifests import nonfinite_problem, read_manifest

logger = logging.getLogger(__name__)


def load_audio(
    path: Path, sample_rate: int, where: str, max_samples: Optional[int] = None, rng: Optional[np.random.Generator] = None
) -> torch.Tensor:
    """Mono float32 waveform at ``sample_rate``: the whole file, or a window of at most ``max_samples``.

    The window starts at a sample drawn from ``rng`` (at the start without one) and only what it needs is read,
    counted at the file's own rate, from a file opened once. ``where`` (``manifest:line``) goes into the error
    message when the file cannot be read.
    """
    try:
        with soundfile.SoundFile(str(path)) as audio_file:
            rate, offset, frames = audio_file.samplerate, 0, -1
            if max_samples is not None:
                frames = math.ceil(max_samples * rate / sample_rate) + 1
                if rng is not None and audio_file.frames > frames:
                    offset = int(rng.integers(0, audio_file.frames - frames + 1))
                audio_file.seek(offset)
            audio = audio_file.read(frames, dtype="float32", always_2d=True)
    except (RuntimeError, OSError) as error:  # soundfile.LibsndfileError is a RuntimeError
        raise RuntimeError(f"{where}: cannot read {path}: {error}") from error
    if audio.shape[0] == 0:
        raise RuntimeError(f"{where}: {path} has no samples from sample {offset}")
    problem = nonfinite_problem(audio)
    if problem:
        raise ValueError(f"{where}: {path}: {problem}")
    waveform = torch.from_numpy(audio.mean(axis=1))
    if rate != sample_rate:
        waveform = torchaudio.functional.resample(waveform, rate, sample_rate)
    return waveform if max_samples is None else waveform[:max_samples]


class WaveformCropDataset(FairseqDataset):
    """Fixed-length waveform crops of the utterances of one manifest.

    A training crop starts at a random sample (a new draw every epoch, reproducible from ``seed``); with
    ``random_crop=False`` (validation) every epoch gets the same crops. With ``captions`` every item also
    carries one caption embedding of its clip, drawn in the same way.
    """

    def __init__(self, manifest: Path, sample_rate: int, crop_samples: int, seed: int, random_crop: bool, shuffle: bool,
                 captions: bool = False):
        super().__init__()
        self.manifest = manifest
        self.root, self.entries = read_manifest(manifest)
        self.captions = None
        if captions:
            self.captions = CaptionEmbeddings(manifest.with_suffix(CAPTION_SUFFIX), manifest.with_suffix(EMBEDDING_SUFFIX),
                                              len(self.entries))
        self.sample_rate, self.crop_samples = sample_rate, crop_samples
        self.seed, self.random_crop, self.shuffle = seed, random_crop, shuffle
        self.epoch = 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.entries)

    def unpadded_crop(self, index: int, epoch: int) -> torch.Tensor:
        relative, _ = self.entries[index]
        rng = np.random.default_rng((self.seed, epoch if self.random_crop else 0, index))
        return load_audio(self.root / relative, self.sample_rate, f"{self.manifest}:{index + 2}", self.crop_samples, rng)

    def crop(self, index: int, epoch: int) -> torch.Tensor:
        waveform = self.unpadded_crop(index, epoch)
        return torch.nn.functional.pad(waveform, (0, self.crop_samples - waveform.shape[0]))

    def __getitem__(self, index: int) -> dict:
        waveform = self.unpadded_crop(index, self.epoch)
        source = torch.nn.functional.pad(waveform, (0, self.crop_samples - waveform.shape[0]))
        item = {"id": index, "source": source, "length": waveform.shape[0]}
        if self.captions is not None:  # its own stream: the crop's draws stay as without captions
            rng = np.random.default_rng((self.seed, self.epoch if self.random_crop else 0, index, 1))
            item["caption_embedding"] = torch.from_numpy(self.captions.draw(index, rng))
        return item

    def collater(self, samples: List[dict]) -> dict:
        if not samples:
            return {}
        # the valid samples of each zero-padded crop (EAT's fbank front end pads its frames instead)
        net_input = {"source": torch.stack([s["source"] for s in samples]),
                     "lengths": torch.tensor([s["length"] for s in samples])}
        if self.captions is not None:
            net_input["caption_embedding"] = torch.stack([s["caption_embedding"] for s in samples])
        return {"id": torch.tensor([s["id"] for s in samples]), "net_input": net_input}

    def num_tokens(self, index: int) -> int:
        return self.crop_samples

    def size(self, index: int) -> int:
        return self.crop_samples

    def batch_by_size(self, indices, max_tokens=None, max_sentences=None, required_batch_size_multiple=1):
        """fairseq's batches; in training a left-out remainder is logged, and a split that makes no batch is an
        error that says what to change.

        fairseq drops a last batch whose size is not a multiple of ``dataset.required_batch_size_multiple``
        (8 by default): in training that is the remainder of the epoch (validation asks for a multiple of 1,
        ``maskssl_fairseq.data.checked_inputs``).
        """
        multiple = required_batch_size_multiple
        batches = super().batch_by_size(indices, max_tokens, max_sentences, multiple)
        if self.random_crop and not batches and len(indices):
            raise ValueError(
                f"{self.manifest}: its {len(indices)} clips make no training batch of dataset.batch_size="
                f"{max_sentences} (fairseq keeps only batches whose size is a multiple of "
                f"dataset.required_batch_size_multiple={multiple}); set dataset.required_batch_size_multiple=1 to "
                "keep a smaller last batch, or add clips")
        left_out = len(indices) - sum(len(batch) for batch in batches)
        if self.random_crop and left_out:
            logger.warning(f"{self.manifest}: {left_out} of {len(indices)} clips left out of this epoch's training "
                           f"batches (the last batch is not a multiple of dataset.required_batch_size_multiple="
                           f"{multiple}; set it to 1 to keep them)")
        return batches

    def ordered_indices(self) -> np.ndarray:
        if self.shuffle:
            return np.random.default_rng((self.seed, self.epoch)).permutation(len(self))
        return np.arange(len(self))


@dataclass
class SpectrogramPretrainingConfig(FairseqDataclass):
    data: str = field(default="???", metadata={"help": "directory of <split>.tsv manifests"})
    sample_rate: int = field(default=16000, metadata={"help": "audio is resampled to this rate (M2D: 16 kHz)"})
    hop_length: int = field(default=160, metadata={"help": "spectrogram frame shift in samples (10 ms)"})
    crop_frames: int = field(default=608, metadata={"help": "frames per training crop (M2D: 608 = 6.08 s)"})
    crop_samples: Optional[int] = field(
        default=None, metadata={"help": "samples per crop instead of the crop_frames centred frames' (EAT: 160000, "
                                        "10 s clips whose 998 fbank frames the model pads to 1024)"}
    )
    norm_sample_size: int = field(
        default=5000, metadata={"help": "training clips whose log-mel values give the mean and std (M2D: 10000 // 2)"}
    )
    norm_stats: Optional[List[float]] = field(
        default=None, metadata={"help": "[mean, std] to use instead of measuring them (M2D's fallback: [-7.1, 4.2])"}
    )
    captions: bool = field(
        default=False, metadata={"help": "read <split>.cap and <split>.capemb.npy and give every item one caption "
                                         "embedding of its clip (M2D-CLAP)"}
    )
    train_subset: str = II("dataset.train_subset")
    seed: int = II("common.seed")


@register_task("spectrogram_pretraining", dataclass=SpectrogramPretrainingConfig)
class SpectrogramPretrainingTask(FairseqTask):
    cfg: SpectrogramPretrainingConfig

    @classmethod
    def setup_task(cls, cfg: SpectrogramPretrainingConfig, **kwargs):
        return cls(cfg)

    @property
    def crop_samples(self) -> int:
        if self.cfg.crop_samples is not None:
            return self.cfg.crop_samples
        # centred frames: (crop_frames - 1) hops give exactly crop_frames frames
        return (self.cfg.crop_frames - 1) * self.cfg.hop_length

    def load_dataset(self, split: str, combine: bool = False, **kwargs) -> None:
        is_train = split == self.cfg.train_subset
        self.datasets[split] = WaveformCropDataset(
            Path(self.cfg.data) / f"{split}.tsv", self.cfg.sample_rate, self.crop_samples, self.cfg.seed,
            random_crop=is_train, shuffle=is_train, captions=self.cfg.captions,
        )

    def build_model(self, cfg, from_checkpoint: bool = False):
        model = super().build_model(cfg, from_checkpoint)
        if self.cfg.captions and hasattr(model.cfg, "caption_embed_dim"):
            manifest = Path(self.cfg.data) / f"{self.cfg.train_subset}.tsv"
            captions = CaptionEmbeddings(manifest.with_suffix(CAPTION_SUFFIX), manifest.with_suffix(EMBEDDING_SUFFIX),
                                         len(read_manifest(manifest)[1]))
            if captions.dim != model.cfg.caption_embed_dim:
                raise ValueError(f"{manifest.with_suffix(EMBEDDING_SUFFIX)}: {captions.dim}-d caption embeddings, "
                                 f"model.caption_embed_dim is {model.cfg.caption_embed_dim}")
        if not from_checkpoint:
            mean, std = self.cfg.norm_stats or self.measure_norm_stats(model.frontend)
            model.frontend.set_norm_stats(float(mean), float(std))
        return model

    @torch.no_grad()
    def measure_norm_stats(self, frontend) -> Tuple[float, float]:
        """Mean and std of the log-mel values of up to ``norm_sample_size`` random training crops, in batches of
        32. Under distributed training each rank reads every world-size-th batch and the ranks exchange the
        batches' sums, which every rank then adds in one process's order: the same statistics to the last bit,
        with each clip read once on the node instead of once per rank."""
        manifest = Path(self.cfg.data) / f"{self.cfg.train_subset}.tsv"
        dataset = WaveformCropDataset(manifest, self.cfg.sample_rate, self.crop_samples, self.cfg.seed,
                                      random_crop=True, shuffle=False)
        picked = np.random.default_rng(self.cfg.seed).permutation(len(dataset))[: self.cfg.norm_sample_size]
        batches = [picked[start:start + 32] for start in range(0, len(picked), 32)]
        world = distributed_utils.get_data_parallel_world_size()  # 1 when torch.distributed is not initialised
        rank = distributed_utils.get_data_parallel_rank() if world > 1 else 0
        sums = torch.zeros(len(batches), 3, dtype=torch.float64)  # sum, sum of squares, count; 0 where not read
        for index in range(rank, len(batches), world):
            values = frontend.log_mel(torch.stack([dataset.crop(int(i), epoch=0) for i in batches[index]])).double()
            sums[index] = torch.stack([values.sum(), values.square().sum(), values.new_tensor(values.numel())])
        if world > 1:  # each entry has one non-zero term: the all-reduce adds zeros, exactly
            nccl = torch.distributed.get_backend(distributed_utils.get_data_parallel_group()) == "nccl"
            sums = distributed_utils.all_reduce(sums.cuda() if nccl else sums,
                                                distributed_utils.get_data_parallel_group()).cpu()
        total = total_sq = count = 0.0
        for batch_sum, batch_sq, batch_count in sums.tolist():
            total, total_sq, count = total + batch_sum, total_sq + batch_sq, count + batch_count
        mean = total / count
        std = math.sqrt(max(total_sq / count - mean * mean, 0.0))
        logger.info(f"log-mel mean {mean:.4f}, std {std:.4f} from {len(picked)} clips of {manifest}"
                    + (f", {len(range(rank, len(batches), world))} of their {len(batches)} batches read by this rank"
                       if world > 1 else ""))
        return mean, std

    @property
    def source_dictionary(self):
        return None

    @property
    def target_dictionary(self):
        return None

    def max_positions(self):
        return None
