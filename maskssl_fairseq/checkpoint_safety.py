"""A checkpoint folder that two runs, a full disk or a torn file cannot spoil.

Installed when the plugin is imported (``common.user_dir``), for every task and model:

1. **One run per ``checkpoint.save_dir``.** The training run's first rank holds ``<save_dir>/train.lock``
   (host, pid, Slurm job, start time) from the start of training to its exit; a second run on the same folder
   stops before building its model and names the holder. A lock whose holder is gone is taken over with a
   warning: a dead pid on this host, an earlier incarnation of this Slurm job (a requeue keeps the job id and
   raises ``SLURM_RESTART_COUNT``), or, on another host, no heartbeat for :data:`STALE_AFTER_S` seconds (the
   holder touches the file every :data:`HEARTBEAT_S` seconds).
2. **Temporary files of one process, removed on failure.** fairseq writes ``checkpoint_last.pt.tmp`` and the
   plugin's copy wrote ``<name>.tmp``: one name for every process, left behind by a failed write. Here a write
   goes to ``<name>.<host>-<pid>.tmp`` and is renamed into place when complete; a failed write removes it and
   raises an error naming the folder, its free space and the system's reason (disk full, file too large, ...).
3. **A torn ``checkpoint_last.pt`` falls back.** At restart a ``checkpoint_last.pt`` whose zip archive is
   incomplete or fails its CRCs (``zipfile.testzip``, which reads the file without unpickling it) is passed over
   for the newest interval or epoch checkpoint that passes the same test, with a warning naming both. Resuming
   is exact (``tests/test_resume.py``), so starting again from an earlier checkpoint costs the updates since
   then and changes nothing in the result; without any readable checkpoint the run stops and says what to do.
"""

import atexit
import contextlib
import copy
import json
import logging
import os
import re
import shutil
import socket
import threading
import time
import zipfile
from pathlib import Path
from typing import Iterator, List, Optional

from omegaconf import open_dict

from fairseq import checkpoint_utils
from fairseq.file_io import PathManager

logger = logging.getLogger(__name__)

LOCK_NAME = "train.lock"
HEARTBEAT_S = 60
STALE_AFTER_S = 600


# ---------------------------------------------------------------------------------------------- temporary files


def free_space(folder: str) -> str:
    try:
        return f"{shutil.disk_usage(folder).free / 2**20:,.1f} MiB free"
    except OSError as error:
        return f"free space unknown ({error.strerror})"


def process_tag() -> str:
    """``<host>-<pid>``: names this process's temporary files, which no other process writes."""
    return f"{socket.gethostname()}-{os.getpid()}"


def write_error(target: str, error: OSError) -> OSError:
    """``error`` restated with the folder of ``target`` and its free space."""
    folder = os.path.dirname(os.path.abspath(target))
    return OSError(error.errno, f"could not write {os.path.basename(target)} in {folder} ({free_space(folder)}): "
                                f"{error.strerror or error}")


@contextlib.contextmanager
def partial_file(target: str) -> Iterator[str]:
    """Yields a temporary name beside ``target``, unique to this process; renames it to ``target`` when the
    block completes and removes it when the block fails (disk full, interrupt, ...)."""
    partial = f"{target}.{process_tag()}.tmp"
    try:
        yield partial
        os.replace(partial, target)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.remove(partial)
        if isinstance(error, OSError):
            raise write_error(target, error) from error
        raise


_fairseq_torch_persistent_save = checkpoint_utils.torch_persistent_save


class _WriteErrorRecorder:
    """A file's ``write`` that remembers the first system error: torch's zip writer replaces it with a
    RuntimeError ("unexpected pos ...") that no longer says the disk is full."""

    def __init__(self, stream):
        self.stream, self.error = stream, None

    def write(self, data):
        try:
            return self.stream.write(data)
        except OSError as error:
            self.error = self.error or error
            raise

    def flush(self):
        return self.stream.flush()


def torch_persistent_save(obj, filename, async_write: bool = False):
    """fairseq's checkpoint write, through :func:`partial_file` for local paths. fairseq retries a failed
    ``torch.save`` twice, 2.5 s apart, which cannot help a full disk; here a failure is reported at once."""
    if async_write or not isinstance(filename, str) or not PathManager.supports_rename(filename):
        return _fairseq_torch_persistent_save(obj, filename, async_write)
    import torch

    with partial_file(filename) as partial:
        with open(partial, "wb") as stream:
            recorder = _WriteErrorRecorder(stream)
            try:
                torch.save(obj, recorder)
            except RuntimeError as error:
                if recorder.error is None:
                    raise
                raise recorder.error from error
            stream.flush()
            os.fsync(stream.fileno())


checkpoint_utils.torch_persistent_save = torch_persistent_save


# ---------------------------------------------------------------------------------------------- the folder lock


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _this_holder() -> dict:
    return {
        "host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "slurm_restart_count": int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0),
    }


def _parsed(text: Optional[str]) -> dict:
    try:
        holder = json.loads(text or "")
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict) -> str:
    if not holder:
        return "an unknown run"
    job = f", Slurm job {holder['slurm_job_id']}" if holder.get("slurm_job_id") else ""
    started = f", started {holder['started']}" if holder.get("started") else ""
    return f"host {holder.get('host')} pid {holder.get('pid')}{job}{started}"


def stale_reason(holder: dict, lock: Path) -> Optional[str]:
    """Why the run named in a lock file has certainly stopped, or None when it may still be running."""
    me = _this_holder()
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return "the lock file names no process"
    if holder.get("host") == me["host"]:
        if pid == me["pid"]:
            return f"pid {pid} is this process now: the run that held it has ended"
        if not _process_alive(pid):
            return f"pid {pid} no longer runs on {me['host']}"
        return None
    if me["slurm_job_id"] and holder.get("slurm_job_id") == me["slurm_job_id"] \
            and int(holder.get("slurm_restart_count", 0)) < me["slurm_restart_count"]:
        return f"Slurm requeued job {me['slurm_job_id']} (restart {me['slurm_restart_count']})"
    idle = time.time() - lock.stat().st_mtime
    if idle > STALE_AFTER_S:
        return f"no heartbeat for {idle:.0f} s (a live holder touches it every {HEARTBEAT_S} s)"
    return None


class SaveDirLock:
    """``<save_dir>/train.lock``, created atomically (a complete file hard-linked into place, which also holds
    on NFS), touched by a heartbeat thread, removed at exit if it still names this process."""

    def __init__(self, save_dir: str):
        self.path = Path(save_dir) / LOCK_NAME
        self.holder = _this_holder()
        self._stop = threading.Event()

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        mine = Path(f"{self.path}.{process_tag()}.tmp")
        try:  # also proves that the folder is writable
            mine.write_text(json.dumps(self.holder) + "\n")
        except OSError as error:
            with contextlib.suppress(OSError):
                mine.unlink()
            raise write_error(str(self.path), error) from error
        try:
            for _ in range(3):
                try:
                    os.link(mine, self.path)
                    break
                except FileExistsError:
                    self._take_over_if_stale()
            else:
                raise RuntimeError(f"{self.path}: could not take the lock (another run keeps replacing it)")
        finally:
            mine.unlink()
        atexit.register(self.release)
        threading.Thread(target=self._heartbeat, name="save_dir-lock-heartbeat", daemon=True).start()
        logger.info(f"holding {self.path} ({_describe(self.holder)})")

    def _in_use(self, holder: dict) -> RuntimeError:
        return RuntimeError(
            f"checkpoint.save_dir={self.path.parent} is in use by another training run ({_describe(holder)}; "
            f"lock file {self.path}). Wait for it to end or stop it, or give this run its own checkpoint.save_dir; "
            f"if that run is gone (a lost node), delete {self.path}.")

    def _take_over_if_stale(self) -> None:
        try:
            judged = self.path.read_text()
            reason = stale_reason(json.loads(judged), self.path)
        except FileNotFoundError:
            return  # released meanwhile: try again
        except (OSError, ValueError, AttributeError):
            judged, reason = None, "the lock file is unreadable"
        holder = _parsed(judged)
        if reason is None:
            raise self._in_use(holder)
        logger.warning(f"taking over the stale lock {self.path} of {_describe(holder)}: {reason}")
        aside = Path(f"{self.path}.{process_tag()}.stale")
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:
            return
        moved = aside.read_text()
        if judged is not None and moved != judged:  # another run took it over meanwhile: give it back
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)
            aside.unlink()
            raise self._in_use(_parsed(moved))
        aside.unlink()

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def release(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError, ValueError):
            holder = json.loads(self.path.read_text())
            if (holder.get("host"), holder.get("pid")) == (self.holder["host"], self.holder["pid"]):
                self.path.unlink()


_locks = {}


def verify_checkpoint_directory(save_dir: str) -> None:
    """fairseq calls this on the first rank before building the model; instead of writing and removing a file
    named ``dummy`` (one name for every run) it takes the folder's lock, which proves write access as well."""
    key = os.path.abspath(save_dir)
    if key not in _locks:
        lock = SaveDirLock(save_dir)
        lock.acquire()
        _locks[key] = lock


checkpoint_utils.verify_checkpoint_directory = verify_checkpoint_directory


# ------------------------------------------------------------------------------------- torn checkpoint_last.pt


def unreadable_reason(path: str) -> Optional[str]:
    """Why a torch checkpoint file cannot load (an incomplete zip archive, a CRC mismatch), or None.

    Files in torch's legacy (pre-zip) format are left to the loader."""
    try:
        with open(path, "rb") as stream:
            if stream.read(4) != b"PK\x03\x04":
                return None if os.path.getsize(path) > 0 else "empty file"
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
        return f"member {damaged} fails its CRC" if damaged else None
    except (zipfile.BadZipFile, EOFError, OSError) as error:
        return f"{type(error).__name__}: {error}"


def earlier_checkpoints(save_dir: str, suffix: str = "") -> List[str]:
    """Interval (``checkpoint_<epoch>_<updates>.pt``) and epoch (``checkpoint<epoch>.pt``) checkpoints, newest
    first."""
    pattern = re.compile(rf"checkpoint(_\d+_\d+|\d+){re.escape(suffix)}\.pt")
    names = [name for name in os.listdir(save_dir) if pattern.fullmatch(name)]
    paths = [os.path.join(save_dir, name) for name in names]
    return sorted(paths, key=os.path.getmtime, reverse=True)


_fairseq_load_checkpoint = checkpoint_utils.load_checkpoint


def load_checkpoint(cfg, trainer, **passthrough_args):
    """fairseq's restart from ``checkpoint_last.pt``, falling back to the newest readable earlier checkpoint
    when that file is torn."""
    if cfg.restore_file != "checkpoint_last.pt":
        return _fairseq_load_checkpoint(cfg, trainer, **passthrough_args)
    suffix = trainer.checkpoint_suffix or ""
    last = os.path.join(cfg.save_dir, f"checkpoint_last{suffix}.pt")
    reason = unreadable_reason(last) if os.path.isfile(last) else None
    if reason is None:
        return _fairseq_load_checkpoint(cfg, trainer, **passthrough_args)
    for candidate in earlier_checkpoints(cfg.save_dir, suffix):
        if unreadable_reason(candidate) is None:
            logger.warning(f"{last} does not load ({reason}); resuming from {candidate}, the newest readable "
                           "checkpoint in the folder: the updates since it are trained again, to the same result")
            fallback = copy.deepcopy(cfg)
            with open_dict(fallback):
                fallback.restore_file = candidate
                fallback.finetune_from_model = None  # fairseq refuses it beside a restore_file; it is resuming here
            return _fairseq_load_checkpoint(fallback, trainer, **passthrough_args)
    raise RuntimeError(
        f"{last} does not load ({reason}) and {cfg.save_dir} holds no earlier readable checkpoint "
        f"(checkpoint_<epoch>_<updates>.pt, checkpoint<epoch>.pt). To train from scratch, move it away: "
        f"mv {last} {last}.unreadable")


checkpoint_utils.load_checkpoint = load_checkpoint
