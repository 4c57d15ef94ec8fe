"""Preemption-safe training: a stop signal ends the run at an update boundary with ``checkpoint_last.pt``.

``SIGTERM`` (Slurm preemption, ``scancel``, a job's time limit), ``SIGUSR1`` (Slurm's ``--signal=USR1@<s>``) and
a first ``SIGINT`` (Ctrl-C) let the current update finish; then every rank stops at that same update (the
ranks agree through an all-reduce after each update, so a signal seen by one rank stops all), the checkpoint is
written as fairseq writes it (``checkpoint_last.pt`` atomically, plus any interval checkpoint due at that
update), and the process exits with :data:`PREEMPTED_EXIT_STATUS`. Running the same command again resumes
exactly where it stopped. A second ``SIGINT`` exits at once, as Ctrl-C does without the plugin (except in the
workers of fairseq's spawn launch, see :meth:`StopRequest.install`).

Exit statuses: 0 training finished; 75 (``EX_TEMPFAIL``) stopped by a signal with the checkpoint written,
to be resumed; 130 or -2 a second Ctrl-C, nothing written since the last checkpoint; anything else a failure.

Installed when the plugin is imported (``common.user_dir``); the handlers are set when training loads its
checkpoint (``checkpoint_utils.load_checkpoint``), so the plugin's other tools keep the default signals.
"""

import logging
import multiprocessing
import os
import signal
import threading

import torch
import torch.distributed as dist

import fairseq_cli.train as fairseq_train
from fairseq import checkpoint_utils
from fairseq.file_io import PathManager

logger = logging.getLogger(__name__)

PREEMPTED_EXIT_STATUS = os.EX_TEMPFAIL  # 75: "temporary failure; the user is invited to retry" (sysexits.h)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class StopRequest:
    """The first stop signal this process received, set from its signal handler."""

    def __init__(self):
        self.signal_name = None
        self.spawned_worker = False
        self.saved_at = None  # the update of the last checkpoint written, so that a stop does not write it twice

    def handle(self, signum, frame):
        name = signal.Signals(signum).name
        if signum == signal.SIGINT and self.signal_name == "SIGINT" and not self.spawned_worker:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt("second SIGINT: stopped without saving")
        if self.signal_name is None:
            self.signal_name = name
            again = " (Ctrl-C again to exit at once, without saving)" if signum == signal.SIGINT else ""
            logger.warning(f"received {name}: stopping after the current update with a checkpoint{again}")

    def install(self):
        # A worker of fairseq's own spawn launch gets SIGINT when its launcher dies (torch sets it as the
        # parent-death signal), and the launcher, which does not load the plugin, dies at the first Ctrl-C: that
        # second SIGINT must not cost the checkpoint.
        self.spawned_worker = multiprocessing.parent_process() is not None
        for signum in STOP_SIGNALS:
            signal.signal(signum, self.handle)

    def agreed(self, device) -> bool:
        """Whether any rank received a stop signal; all ranks get the same answer."""
        flag = torch.tensor([int(self.signal_name is not None)], device=device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


stop_request = StopRequest()

_fairseq_load_checkpoint = checkpoint_utils.load_checkpoint  # the folder-safety wrapper when installed first


def load_checkpoint(cfg, trainer, **passthrough_args):
    result = _fairseq_load_checkpoint(cfg, trainer, **passthrough_args)
    if threading.current_thread() is threading.main_thread():
        stop_request.install()
    return result


_fairseq_save_checkpoint = checkpoint_utils.save_checkpoint


def save_checkpoint(cfg, trainer, epoch_itr, val_loss):
    saved = _fairseq_save_checkpoint(cfg, trainer, epoch_itr, val_loss)
    stop_request.saved_at = trainer.get_num_updates()
    return saved


_fairseq_validate_and_save = fairseq_train.validate_and_save


def validate_and_save(cfg, trainer, task, epoch_itr, valid_subsets, end_of_epoch):
    """fairseq's end of an update (validation and checkpoint when due, stop at ``max_update``), then the stop
    that a signal asked for: the checkpoint of this update unless fairseq just wrote it, and exit."""
    valid_losses, should_stop = _fairseq_validate_and_save(cfg, trainer, task, epoch_itr, valid_subsets, end_of_epoch)
    if should_stop or not stop_request.agreed(trainer.device):
        return valid_losses, should_stop
    updates = trainer.get_num_updates()
    if stop_request.saved_at != updates:
        checkpoint_utils.save_checkpoint(cfg.checkpoint, trainer, epoch_itr, valid_losses[0])
    if cfg.checkpoint.write_checkpoints_asynchronously:
        PathManager.async_close()
    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # the first rank has written the checkpoint before any rank exits
    reason = stop_request.signal_name or "a stop signal on another rank"
    saved = "no checkpoint written (checkpoint.no_save / no_last_checkpoints)" \
        if cfg.checkpoint.no_save or cfg.checkpoint.no_last_checkpoints \
        else f"{cfg.checkpoint.save_dir}/checkpoint_last.pt holds it"
    logger.warning(f"stopped by {reason} after update {updates}: {saved}; exit status {PREEMPTED_EXIT_STATUS} "
                   "(preempted: run the same command to resume)")
    raise SystemExit(PREEMPTED_EXIT_STATUS)


checkpoint_utils.load_checkpoint = load_checkpoint
checkpoint_utils.save_checkpoint = save_checkpoint
fairseq_train.validate_and_save = validate_and_save
