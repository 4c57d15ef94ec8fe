"""Audio classification fine-tuning for the spectrogram models (EAT, M2D, MSM-MAE): ``spectrogram_classification``
(fairseq already registers an ``audio_classification`` task, a wav2vec 2.0 one with a single-label Dictionary).

Reads ``<split>.tsv`` manifests with a ``<split>.label`` file beside each: one line per clip, one label, or
several comma-separated labels for multi-label sets such as AudioSet (``task.multi_label=true``), the format
``examples/m2d/demo_tasks.py`` writes. The label vocabulary is ``labels.txt`` in the data directory, one label a
line: read when present (e.g. AudioSet's 527 classes in their official order), else written from the
training split's labels (sorted). A label outside the vocabulary, an empty line, several labels in a
single-label task or a label file whose line count differs from the manifest's clips is an error naming the
file and line. Each item is a crop of ``crop_samples`` (random while training, from the start otherwise),
zero-padded when the clip is shorter, with its multi-hot target.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import List

import torch
from fairseq.dataclass import FairseqDataclass
from fairseq.tasks import FairseqTask, register_task
from omegaconf import II, open_dict

from ..data.manifests import refuse_bom
from .spectrogram_pretraining import WaveformCropDataset

logger = logging.getLogger(__name__)

VOCABULARY = "labels.txt"


def read_label_lines(path: Path, multi_label: bool) -> List[List[str]]:
    """The labels of every line of ``path``; a malformed line is a ``ValueError`` naming ``path:line``."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no label file beside the manifest")
    refuse_bom(path)
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        labels = [label.strip() for label in line.split(",")] if multi_label else [line.strip()]
        if not all(labels):
            raise ValueError(f"{path}:{number}: empty label")
        if not multi_label and "," in line:
            raise ValueError(f"{path}:{number}: several labels ({line!r}) in a single-label task; "
                             "set task.multi_label=true for multi-label data")
        rows.append(labels)
    return rows


class LabeledCropDataset(WaveformCropDataset):
    """Waveform crops of one manifest with their multi-hot targets ``[num_classes]``."""

    def __init__(self, manifest: Path, label_file: Path, vocabulary: List[str], multi_label: bool, **crop_args):
        super().__init__(manifest, **crop_args)
        rows = read_label_lines(label_file, multi_label)
        if len(rows) != len(self.entries):
            raise ValueError(f"{label_file}:{len(rows)}: {len(rows)} label lines for the {len(self.entries)} clips "
                             f"of {manifest}")
        index = {label: i for i, label in enumerate(vocabulary)}
        self.targets = torch.zeros(len(rows), len(vocabulary))
        for number, labels in enumerate(rows, 1):
            for label in labels:
                if label not in index:
                    raise ValueError(f"{label_file}:{number}: unknown label {label!r} (not in "
                                     f"{label_file.parent / VOCABULARY})")
                self.targets[number - 1, index[label]] = 1.0

    def __getitem__(self, index: int) -> dict:
        return {**super().__getitem__(index), "target": self.targets[index]}

    def collater(self, samples: List[dict]) -> dict:
        batch = super().collater(samples)
        if batch:
            batch["target"] = torch.stack([s["target"] for s in samples])
        return batch


@dataclass
class SpectrogramClassificationConfig(FairseqDataclass):
    data: str = field(default="???", metadata={"help": "directory of <split>.tsv manifests and <split>.label files"})
    sample_rate: int = field(default=16000, metadata={"help": "audio is resampled to this rate"})
    crop_samples: int = field(default=160000, metadata={"help": "samples per clip (AS-20K: 10 s, ESC-50: 5 s, SPC-2: 1 s)"})
    multi_label: bool = field(default=False, metadata={"help": "comma-separated labels, BCE and mAP (AudioSet)"})
    train_subset: str = II("dataset.train_subset")
    seed: int = II("common.seed")


@register_task("spectrogram_classification", dataclass=SpectrogramClassificationConfig)
class SpectrogramClassificationTask(FairseqTask):
    cfg: SpectrogramClassificationConfig

    def __init__(self, cfg: SpectrogramClassificationConfig, labels: List[str]):
        super().__init__(cfg)
        self.labels = labels

    @classmethod
    def setup_task(cls, cfg: SpectrogramClassificationConfig, **kwargs):
        data = Path(cfg.data)
        vocabulary = data / VOCABULARY
        if vocabulary.is_file():
            refuse_bom(vocabulary)
            labels = [line.strip() for line in vocabulary.read_text(encoding="utf-8").splitlines() if line.strip()]
            if len(set(labels)) != len(labels):
                raise ValueError(f"{vocabulary}: a label is listed twice")
        else:
            train_labels = data / f"{cfg.train_subset}.label"
            labels = sorted({label for row in read_label_lines(train_labels, cfg.multi_label) for label in row})
            vocabulary.write_text("".join(f"{label}\n" for label in labels), encoding="utf-8")
            logger.info(f"wrote the {len(labels)} labels of {train_labels} to {vocabulary}")
        return cls(cfg, labels)

    def build_model(self, cfg, from_checkpoint: bool = False):
        model = super().build_model(cfg, from_checkpoint)
        # fairseq builds the model from a merged copy of cfg; what the model filled in (the pretraining
        # configuration, the label names) goes into the cfg that the checkpoints save
        with open_dict(cfg):
            cfg.pretrained_args = model.cfg.pretrained_args
            cfg.labels = list(self.labels)
        return model

    def load_dataset(self, split: str, combine: bool = False, **kwargs) -> None:
        is_train = split == self.cfg.train_subset
        data = Path(self.cfg.data)
        self.datasets[split] = LabeledCropDataset(
            data / f"{split}.tsv", data / f"{split}.label", self.labels, self.cfg.multi_label,
            sample_rate=self.cfg.sample_rate, crop_samples=self.cfg.crop_samples, seed=self.cfg.seed,
            random_crop=is_train, shuffle=is_train,
        )

    @property
    def source_dictionary(self):
        return None

    @property
    def target_dictionary(self):
        return None

    def max_positions(self):
        return None
