"""EH-MAM's loss predictor and the pairwise ranking loss that trains it.

The predictor is a lightweight 1-D convolutional head (the same conv stack as data2vec 2.0's audio
decoder) that maps frame representations ``[B, T, D]`` to one score per frame ``[B, T]``; only the
order of the scores within an utterance matters, so it is trained with a ranking loss over pairs of
masked frames rather than by regressing the loss values.
"""

from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data2vec2_audio import Data2Vec2AudioConfig, conv_decoder_blocks, run_conv_stack


class LossPredictor(nn.Module):
    """``[B, T, D] -> [B, T]`` predicted reconstruction loss of every frame.

    The official ``PredDecoder1d`` ends in LayerNorm -> Linear(384 -> 768) and averages the 768 outputs;
    a mean of a linear map is itself linear, so one Linear(384 -> 1) is the same function class.
    """

    def __init__(self, cfg: Data2Vec2AudioConfig):
        super().__init__()
        self.blocks = conv_decoder_blocks(cfg.embed_dim, cfg)
        self.norm = nn.LayerNorm(cfg.decoder_dim)
        self.proj = nn.Linear(cfg.decoder_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(run_conv_stack(self.blocks, x))).squeeze(-1)


def pairwise_ranking_loss(predicted: torch.Tensor, actual: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """EH-MAM's auxiliary loss over all pairs of frames of the same row, and the predictor's pair accuracy.

    For frames i, j of one row: ``I_ij = 1`` if ``actual_i > actual_j`` else 0, ``S_ij = sigmoid(p_i - p_j)``,
    loss = binary cross-entropy(S_ij, I_ij); pairs with ``actual_i == actual_j`` (the diagonal and ties)
    are ignored and the loss is averaged over the remaining pairs (the paper's normalised form; the
    official code sums instead). Computed in fp32 whatever the training precision.

    Args:
        predicted: ``[B, M]`` predicted scores of the ``M`` masked frames of each row.
        actual: ``[B, M]`` their actual reconstruction losses (detached here).

    Returns:
        ``(loss, accuracy)``: scalar loss with gradient to ``predicted``, and the fraction of valid pairs
        the predictor orders correctly (0.5 is chance).
    """
    predicted = predicted.float()
    actual = actual.detach().float()
    logits = predicted.unsqueeze(2) - predicted.unsqueeze(1)
    harder = actual.unsqueeze(2) > actual.unsqueeze(1)
    valid = actual.unsqueeze(2) != actual.unsqueeze(1)
    pairs = valid.sum().clamp(min=1)
    bce = F.binary_cross_entropy_with_logits(logits, harder.float(), reduction="none")
    loss = bce.masked_fill(~valid, 0.0).sum() / pairs
    with torch.no_grad():
        accuracy = (((logits > 0) == harder) & valid).sum().float() / pairs
    return loss, accuracy
