"""Two small fixes that make fairseq's multi-process training testable on CPU and equal to one process.

1. **pytorch_ddp on CPU.** fairseq wraps the model in ``DistributedDataParallel(device_ids=[device_id])`` even
   on CPU, which torch refuses (``device_ids ... only work with ... CPU modules``). On CPU the model is
   wrapped without ``device_ids``; every other case is left to fairseq's own ``DistributedFairseqModel``.
2. **One random stream per micro-batch.** fairseq seeds torch with ``common.seed + num_updates`` once per
   update, so every rank draws the same masks and dropout for its own batch, and micro-batch 2 of a
   one-process run with ``update_freq=2`` continues micro-batch 1's stream. Here micro-batch ``i`` of rank
   ``r`` (of ``w``) gets its own seed from ``(common.seed + num_updates, i * w + r)``: fairseq gives that
   position the same batch in every layout with the same ``world_size * update_freq``, so one process and
   several draw the same masks for the same utterances, and a resumed run draws what an uninterrupted one
   would. Position 0 keeps fairseq's seed, so single-process runs with ``update_freq=1`` are unchanged.

3. **Resuming on several processes.** fairseq's first rank reads the checkpoint and broadcasts its non-tensor
   part (config, optimizer history, iterator position) to the others, which read it back with ``torch.load``;
   since torch 2.6 that call refuses the checkpoint's ``DictConfig`` ("Weights only load failed"), so every
   distributed restart died on rank 1. Here that part travels with torch's ``broadcast_object_list``: it comes
   from rank 0 of the same run, which has just loaded the file with the plugin's loader.

All three are installed when the plugin is imported (``common.user_dir``), in every rank's process. Models with
a teacher that every rank steps on its own (EMA) check that it stays identical across ranks
(:func:`check_identical_across_ranks`).
"""

import logging
from typing import Iterable

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from fairseq import distributed_utils, models
from fairseq.distributed import ModuleProxyWrapper
from fairseq.tasks import FairseqTask

logger = logging.getLogger(__name__)
_fairseq_distributed_model = models.DistributedFairseqModel
_fairseq_train_step = FairseqTask.train_step


def distributed_model(args, model, process_group, device):
    """fairseq's ``DistributedFairseqModel``, except that a CPU ``pytorch_ddp`` model gets no ``device_ids``."""
    if getattr(args, "tpu", False) or args.ddp_backend not in {"c10d", "pytorch_ddp"} or torch.device(device).type != "cpu":
        return _fairseq_distributed_model(args, model, process_group, device)
    if args.ddp_comm_hook != "none":
        raise ValueError(f"distributed_training.ddp_comm_hook={args.ddp_comm_hook} compresses GPU gradients; "
                         "use 'none' on CPU")
    wrapped = DistributedDataParallel(
        module=model.to(device),
        broadcast_buffers=args.broadcast_buffers,
        bucket_cap_mb=args.bucket_cap_mb,
        process_group=process_group,
        find_unused_parameters=args.find_unused_parameters,
        gradient_as_bucket_view=args.gradient_as_bucket_view,
    )
    return ModuleProxyWrapper(wrapped)


def micro_batch_seed(update_seed: int, position: int) -> int:
    """The torch seed of micro-batch ``position`` of the update that fairseq seeded with ``update_seed``."""
    if position == 0:
        return update_seed
    return int(np.random.SeedSequence([update_seed, position]).generate_state(1, np.uint64)[0] >> 1)


class _MicroBatchCounter:
    """Tells the micro-batches of one update apart: fairseq reseeds torch at the start of every update, so a
    seed we did not set ourselves starts a new update."""

    def __init__(self):
        self.update_seed, self.index, self.last_set = None, 0, None

    def next_position(self) -> int:
        current = torch.initial_seed()
        if current != self.last_set:
            self.update_seed, self.index = current, 0
        else:
            self.index += 1
        world = distributed_utils.get_data_parallel_world_size()  # 1 when torch.distributed is not initialised
        rank = distributed_utils.get_data_parallel_rank() if world > 1 else 0
        return self.index * world + rank


def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False, **kwargs):
    # one counter per task, i.e. per run: a run started after another in the same process (run/recipe_check.py,
    # tests) would otherwise take its first batch for a later micro-batch of the update the other one ended on
    counter = vars(self).setdefault("_micro_batch_counter", _MicroBatchCounter())
    position = counter.next_position()
    if position != 0:
        torch.manual_seed(micro_batch_seed(counter.update_seed, position))
    counter.last_set = torch.initial_seed()
    return _fairseq_train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad, **kwargs)


def broadcast_object_slow(obj, src_rank: int, group, dist_device):
    """Replaces fairseq's ``_broadcast_object_slow`` (same arguments: ``src_rank`` a global rank, as fairseq's
    own broadcast takes it)."""
    holder = [obj]
    dist.broadcast_object_list(holder, src=src_rank, group=group, device=dist_device)
    return holder[0]


models.DistributedFairseqModel = distributed_model
FairseqTask.train_step = train_step
distributed_utils._broadcast_object_slow = broadcast_object_slow


def rank_check_due(num_updates: int) -> bool:
    """Updates 1, 2, 4, 8, ... and every 1000th: early enough for short checks, rare in long runs."""
    return num_updates > 0 and (num_updates & (num_updates - 1) == 0 or num_updates % 1000 == 0)


@torch.no_grad()
def check_identical_across_ranks(tensors: Iterable[torch.Tensor], what: str, num_updates: int) -> None:
    """Stops the run when the data-parallel ranks hold different ``tensors`` (compared through each tensor's
    float64 sum and sum of squares, which ranks stepping identically reproduce bit for bit)."""
    world = distributed_utils.get_data_parallel_world_size()
    if world == 1:
        return
    tensors = list(tensors)
    fingerprint = torch.stack([torch.stack([t.double().sum(), t.double().square().sum()]) for t in tensors]).flatten()
    group = distributed_utils.get_data_parallel_group()
    high, low = fingerprint.clone(), fingerprint.clone()
    dist.all_reduce(high, op=dist.ReduceOp.MAX, group=group)
    dist.all_reduce(low, op=dist.ReduceOp.MIN, group=group)
    spread = float((high - low).abs().max())
    if spread > 0:
        raise RuntimeError(f"{what} differs across the {world} ranks at update {num_updates} (largest difference of a "
                           f"tensor's sum or sum of squares: {spread:.3g}): the ranks no longer train one model")
    if distributed_utils.get_data_parallel_rank() == 0:
        logger.info(f"{what} identical on all {world} ranks at update {num_updates}")
