"""fairseq's own readers of manifests, labels and dictionaries, made to stop at bad input with one line naming it.

fairseq's ``audio_pretraining`` / ``audio_finetuning`` tasks (EH-MAM, wav2vec 2.0, CTC fine-tuning, ARMHuBERT)
read their inputs with plain ``open``; on their own they would

- take a UTF-8 byte-order mark as part of the audio root or of the first label symbol (refused here, as
  everywhere in the plugin: :data:`maskssl_fairseq.data.manifests.BOM`);
- train on NaN / inf samples of a float WAV until the loss turns NaN, naming no file;
- stop at a trailing blank line of ``<split>.ltr`` with ``labels length (6) and dataset length (5) do not
  match``, or at a symbol listed twice in ``dict.ltr.txt`` with a message about Camembert;
- end a run whose phases of fairseq's ``tri_stage`` schedule round to 0 updates in a ``ZeroDivisionError``;
- validate without the last batch of a split whenever its size is not a multiple of
  ``dataset.required_batch_size_multiple`` (8 by default): 14 of the 16 dev utterances of the test corpus in
  ``examples/finetune/tiny.yaml``, none of a split smaller than the batch size. Validation here batches with a
  multiple of 1 (training keeps fairseq's batches).

Installed when the plugin is imported (``common.user_dir``). The sample check is one ``isfinite`` over each
waveform on load, on the host (in the data loader), not in the training step.
"""

import math
import os
from pathlib import Path

import soundfile
import torch
from fairseq.data.audio.raw_audio_dataset import FileAudioDataset
from fairseq.optim.lr_scheduler.tri_stage_lr_scheduler import TriStageLRSchedule
from fairseq.tasks.audio_finetuning import AudioFinetuningTask
from fairseq.trainer import Trainer
from omegaconf import open_dict

from .manifests import ManifestFormatError, nonfinite_problem, read_dictionary, refuse_bom, text_lines

_fairseq_dataset_init = FileAudioDataset.__init__
_fairseq_getitem = FileAudioDataset.__getitem__
_fairseq_load_dataset = AudioFinetuningTask.load_dataset
_fairseq_load_target_dictionary = AudioFinetuningTask.load_target_dictionary
_fairseq_tri_stage_init = TriStageLRSchedule.__init__
_fairseq_get_valid_iterator = Trainer.get_valid_iterator


def dataset_init(self: FileAudioDataset, manifest_path, *args, **kwargs):
    refuse_bom(Path(manifest_path))
    _fairseq_dataset_init(self, manifest_path, *args, **kwargs)
    self.manifest_path = manifest_path
    # the manifest line of each kept utterance (fairseq leaves out those shorter than min_sample_size)
    rows = len(self.fnames) + len(self.skipped_indices)
    self.manifest_lines = [row + 2 for row in range(rows) if row not in self.skipped_indices]


def getitem(self: FileAudioDataset, index):
    item = _fairseq_getitem(self, index)
    if not torch.isfinite(item["source"]).all():
        name = self.fnames[index] if isinstance(self.fnames, list) else self.fnames[index].as_py()
        path = os.path.join(self.root_dir, self.text_compressor.decompress(name))
        # counted in the file: normalisation (task.normalize) spreads one NaN over the whole utterance
        problem = nonfinite_problem(soundfile.read(path, dtype="float32")[0]) or nonfinite_problem(item["source"].numpy())
        raise ValueError(f"{self.manifest_path}:{self.manifest_lines[index]}: {path}: {problem}")
    return item


def label_problem(label_file: Path, tsv: Path) -> str:
    """What is wrong with ``<split>.<labels>`` beside the manifest ``tsv`` as fairseq reads it, or ''."""
    if not label_file.is_file():
        return f"{label_file}: no such file (the labels of {tsv})"
    refuse_bom(label_file)
    problems: list = []
    lines = text_lines(label_file, problems)
    if problems:
        return problems[0]
    utterances = len(tsv.read_text(encoding="utf-8").splitlines()) - 1
    if len(lines) == utterances + 1 and not lines[-1].strip():
        return f"{label_file}:{len(lines)}: a blank line after the last label; delete it"
    if len(lines) != utterances:
        return f"{label_file}:{min(len(lines), utterances) + 1}: {len(lines)} label lines for the {utterances} utterances of {tsv}"
    empty = [number for number, line in enumerate(lines, 1) if not line.strip()]
    if empty:
        return f"{label_file}:{empty[0]}: empty label"
    return ""


def load_dataset(self: AudioFinetuningTask, split: str, task_cfg=None, **kwargs):
    task_cfg = task_cfg or self.cfg
    if task_cfg.labels and task_cfg.multi_corpus_keys is None:
        data = Path(self.cfg.data)
        problem = label_problem(data / f"{split}.{task_cfg.labels}", data / f"{split}.tsv")
        if problem:
            raise ManifestFormatError(problem)
    return _fairseq_load_dataset(self, split, task_cfg, **kwargs)


def load_target_dictionary(self: AudioFinetuningTask):
    if self.cfg.labels:
        path = Path(self.cfg.target_dictionary or self.cfg.data) / f"dict.{self.cfg.labels}.txt"
        problems: list = []
        if path.is_file():
            read_dictionary(path, problems)
        if problems:
            raise ManifestFormatError(problems[0])
    return _fairseq_load_target_dictionary(self)


def tri_stage_init(self: TriStageLRSchedule, cfg, optimizer):
    ratios = cfg.phase_ratio
    if ratios is not None and cfg.max_update > 0 and ratios[2] > 0 and int(cfg.max_update * ratios[2]) == 0:
        needed = math.ceil(1 / ratios[2])
        while int(needed * ratios[2]) == 0:  # float rounding: int(4 * 0.3) must be 1
            needed += 1
        raise ValueError(f"lr_scheduler tri_stage: optimization.max_update={int(cfg.max_update)} leaves its decay phase "
                         f"int({int(cfg.max_update)} x {ratios[2]}) = 0 updates (lr_scheduler.phase_ratio={list(ratios)}); "
                         f"set optimization.max_update to at least {needed}")
    _fairseq_tri_stage_init(self, cfg, optimizer)


def get_valid_iterator(self: Trainer, subset, disable_iterator_cache=False):
    """fairseq's validation batches, with every clip: no last batch is dropped for its size."""
    multiple = self.cfg.dataset.required_batch_size_multiple
    with open_dict(self.cfg):
        self.cfg.dataset.required_batch_size_multiple = 1
    try:
        return _fairseq_get_valid_iterator(self, subset, disable_iterator_cache)
    finally:
        with open_dict(self.cfg):
            self.cfg.dataset.required_batch_size_multiple = multiple


FileAudioDataset.__init__ = dataset_init
FileAudioDataset.__getitem__ = getitem
AudioFinetuningTask.load_dataset = load_dataset
AudioFinetuningTask.load_target_dictionary = load_target_dictionary
TriStageLRSchedule.__init__ = tri_stage_init
Trainer.get_valid_iterator = get_valid_iterator
