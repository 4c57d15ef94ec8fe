"""s3prl upstream for every checkpoint of the plugin (and fairseq's speech checkpoints), over
:class:`maskssl_fairseq.features.FeatureExtractor`.

s3prl's ``UpstreamExpert`` contract: built as ``UpstreamExpert(ckpt, model_config, **kwargs)``; ``forward`` takes
a list of unpadded 16 kHz waveforms and returns ``{"hidden_states": [layer 0, ..., layer L], "last_hidden_state":
layer L}``, each ``[B, T, D]`` with zeros past each clip's frames; ``get_downsample_rates(key)`` gives the samples
per frame (speech 320, spectrogram models 16 patches x 160 = 2560). s3prl's ``Featurizer`` takes its weighted sum.
The upstream is frozen (SUPERB's protocol): its features carry no gradient, so s3prl's ``-f`` (fine-tune the
upstream) does not apply.

SUPERB downstream tasks run through s3prl's own ``run_downstream.py``; this module registers the upstream as
``maskssl`` in ``s3prl.hub`` and hands the command line over:

    python -m maskssl_fairseq.s3prl_upstream -m train -u maskssl -k checkpoint_best.pt -d asr -n my_asr

Importing this module installs the torchaudio stubs s3prl 0.4.18 needs on torchaudio 2.11
(:mod:`maskssl_fairseq.s3prl_compat`).
"""

import runpy
from typing import Dict, List, Union

import torch
import torch.nn as nn

from . import s3prl_compat  # noqa: F401  (before anything imports s3prl)
from .features import FeatureExtractor

SAMPLE_RATE = 16000  # s3prl hands every upstream 16 kHz audio


class UpstreamExpert(nn.Module):
    """Args:
        ckpt: a checkpoint of the plugin or of fairseq's speech models (``-k`` of ``run_downstream.py``).
        model_config: unused (the architecture is in the checkpoint); s3prl passes ``-g`` here.
        data_dir: a ``wav2vec_ctc`` fine-tune's folder with its ``dict.ltr.txt``, if its ``task.data`` is gone.
    """

    def __init__(self, ckpt: str, model_config: str = None, data_dir: str = None, **kwargs):
        super().__init__()
        self.extractor = FeatureExtractor.from_checkpoint(ckpt, data_dir)
        if self.extractor.sample_rate != SAMPLE_RATE:
            raise ValueError(f"{ckpt}: the model reads {self.extractor.sample_rate} Hz audio, s3prl gives {SAMPLE_RATE} Hz")

    def get_downsample_rates(self, key: str) -> int:
        return self.extractor.stride

    def forward(self, wavs: List[torch.Tensor]) -> Dict[str, Union[torch.Tensor, List[torch.Tensor]]]:
        layers = self.extractor(wavs).layers
        return {"hidden_states": layers, "last_hidden_state": layers[-1]}


def maskssl(ckpt: str, model_config: str = None, **kwargs) -> UpstreamExpert:
    """The hub entry ``-u maskssl -k <checkpoint>``."""
    return UpstreamExpert(ckpt, model_config, **kwargs)


if __name__ == "__main__":
    import s3prl.hub

    s3prl.hub.maskssl = maskssl
    runpy.run_module("s3prl.run_downstream", run_name="__main__", alter_sys=True)
