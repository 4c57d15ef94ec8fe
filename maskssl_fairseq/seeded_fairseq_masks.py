"""fairseq's own span masks drawn from torch's seeded RNG.

``compute_mask_indices`` (the masks of fairseq's wav2vec 2.0 and HuBERT, in pretraining and under
``wav2vec_ctc`` / ``hubert_ctc`` fine-tuning) draws every row from ``numpy.random.default_rng(None)`` when it
is called without a seed, as ``Wav2Vec2Model.apply_mask`` and ``HubertModel.apply_mask`` call it: fresh OS
entropy, so that fine-tuning a fairseq wav2vec 2.0 or HuBERT checkpoint repeats neither itself nor an
interrupted run, and two processes never mask as one. Here such a call takes its seed from torch's global
RNG, which fairseq reseeds before every update (and the plugin before every micro-batch,
``distributed.py``), and goes down fairseq's own seeded path (a row's stream from the seed and its position in
the batch): the masks keep fairseq's statistics. Our own models draw their masks with torch already.

Installed when the plugin is imported (``common.user_dir``).
"""

import inspect

import torch
from fairseq.data import data_utils
from fairseq.models.hubert import hubert
from fairseq.models.wav2vec import wav2vec2

_fairseq_compute_mask_indices = data_utils.compute_mask_indices
_SIGNATURE = inspect.signature(_fairseq_compute_mask_indices)


def compute_mask_indices(*args, **kwargs):
    call = _SIGNATURE.bind(*args, **kwargs)
    if call.arguments.get("seed") is None:
        batch = call.arguments["shape"][0]
        call.arguments.update(seed=int(torch.randint(2**31 - 1, ())), epoch=0, indices=torch.arange(batch))
    return _fairseq_compute_mask_indices(*call.args, **call.kwargs)


for module in (data_utils, wav2vec2, hubert):  # the two models import the function by name
    module.compute_mask_indices = compute_mask_indices
