"""fairseq's waveform crops as a function of seed, epoch and sample index.

``RawAudioDataset.crop_to_max_size`` (``audio_pretraining``, ``audio_finetuning``) takes its offset from
numpy's global RNG, whose state depends on everything drawn since the process started: a run resumed from a
checkpoint, or a rank that collates only its share of the batches, crops the same utterance elsewhere. Here
the offset of utterance ``index`` in epoch ``epoch`` is drawn from ``numpy.random.default_rng((seed, epoch,
index))`` with the task's ``seed`` (``common.seed``); the crop length stays fairseq's (the batch's shortest
utterance, or its longest with ``enable_padding``, capped at ``max_sample_size``).

Installed when the plugin is imported (``common.user_dir``).
"""

import numpy as np

from fairseq.data.audio.raw_audio_dataset import RawAudioDataset
from fairseq.tasks.audio_pretraining import AudioPretrainingTask

_fairseq_collater = RawAudioDataset.collater
_fairseq_load_dataset = AudioPretrainingTask.load_dataset


def crop_offset(seed: int, epoch: int, index: int, excess: int) -> int:
    """Start of the crop of utterance ``index``: uniform in ``[0, excess]`` (samples beyond the crop length)."""
    return int(np.random.default_rng((seed, epoch, index)).integers(0, excess + 1))


def collater(self: RawAudioDataset, samples):
    seed = getattr(self, "crop_seed", None)
    kept = [s for s in samples if s["source"] is not None]
    if seed is None or not kept:
        return _fairseq_collater(self, samples)
    sizes = [len(s["source"]) for s in kept]
    length = min(max(sizes) if self.pad else min(sizes), self.max_sample_size)
    epoch = getattr(self, "crop_epoch", 1)
    cropped = []
    for sample, size in zip(kept, sizes):
        if size > length:
            start = crop_offset(seed, epoch, int(sample["id"]), size - length)
            sample = {**sample, "source": sample["source"][start:start + length]}
        cropped.append(sample)
    return _fairseq_collater(self, cropped)  # every source now fits: fairseq's own crop draws nothing


def set_epoch(self: RawAudioDataset, epoch: int) -> None:
    self.crop_epoch = epoch


def load_dataset(self: AudioPretrainingTask, split: str, task_cfg=None, **kwargs):
    _fairseq_load_dataset(self, split, task_cfg, **kwargs)
    dataset = self.datasets[split]
    while not isinstance(dataset, RawAudioDataset) and hasattr(dataset, "dataset"):  # AddTargetDataset, ...
        dataset = dataset.dataset
    if isinstance(dataset, RawAudioDataset):
        dataset.crop_seed = (task_cfg or self.cfg).seed


RawAudioDataset.collater = collater
RawAudioDataset.set_epoch = set_epoch
AudioPretrainingTask.load_dataset = load_dataset
