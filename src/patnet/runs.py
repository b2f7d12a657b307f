"""Run machinery shared by classification and detection training: the output folder and its checkpoints.

``RunFolder`` owns an output folder for the length of a run:

* **One run per folder.** An exclusive ``fcntl`` lock on ``.patnet.lock``; a second run refuses in one line naming
  the holder (pid, host, start time). The lock dies with its process, so a killed run never leaves it stuck.
* **Nothing replaced by accident.** A folder that already holds a run (``last.pth`` or ``metrics.json``) needs
  ``--resume`` to continue it or ``--overwrite`` to start again.
* **No debris.** Temporary files of our own naming (``.NAME.*.tmp``, left by a kill during an atomic write) are
  removed when the lock is taken: nobody else can be writing them.
* **Checkpoints that survive any kill.** ``save_epoch`` refuses non-finite weights or metrics (nothing is written,
  the previous ``last.pth`` stays the last good one), writes ``best.pth`` *before* ``last.pth`` (a kill between the
  two leaves a ``last.pth`` one epoch older, whose resume recomputes the same epoch and rewrites ``best.pth``),
  and rewrites ``log.jsonl`` whole from the checkpointed history, so every epoch appears exactly once after any
  number of resumes.

``resume_config`` restores a run's own arguments from its checkpoint (see its docstring for what may change).
"""
import datetime
import errno
import json
import logging
import math
import os
import random
import socket
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Set, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from .config import may_change_on_resume
from .errors import PatnetError
from .io import atomic_path, read_checkpoint, remove_stale_temporaries

__all__ = ["RunFolder", "RunFolderError", "NonFiniteError", "non_finite_tensors", "json_safe", "resume_config",
           "load_resume",
           "init_distributed", "peer_failures", "PeerLostError", "all_sum", "epoch_seed", "seed_everything", "load_checkpoint", "LossMeter"]

_log = logging.getLogger(__name__)

LOCK_NAME = ".patnet.lock"
RUN_FILES = ("last.pth", "best.pth", "log.jsonl", "metrics.json", "args.json")

C = TypeVar("C")


class RunFolderError(PatnetError):
    """The output folder is in use, or holds a run that would be replaced."""


class NonFiniteError(PatnetError):
    """Weights or metrics became NaN / inf; nothing was written."""


class PeerLostError(PatnetError):
    """Another rank of a distributed run stopped (killed, crashed or hung past the process-group timeout)."""


def non_finite_tensors(state: Mapping[str, Any]) -> List[str]:
    """Names of floating-point tensors in ``state`` (a state dict, nested dicts allowed) holding NaN or inf."""
    bad: List[str] = []
    for k, v in state.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all()):
            bad.append(str(k))
        elif isinstance(v, Mapping):
            bad += [f"{k}.{n}" for n in non_finite_tensors(v)]
    return bad


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None, so ``json.dumps`` writes valid JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def resume_config(cfg: C, saved: Mapping[str, Any], defaults: C, checkpoint: Path) -> C:
    """The configuration of a resumed run: the saved run's own arguments, with the caller's changes applied.

    An argument the caller left at its default takes the saved value (so ``--resume X/last.pth`` alone continues
    X exactly, into X's folder). One the caller set to something else is an error unless it only decides how the
    run is watched (``config.may_change_on_resume``): the schedule, data, model and recipe of a run cannot change midway.
    """
    changes: Dict[str, Any] = {}
    conflicts: List[str] = []
    for f in fields(cfg):  # type: ignore[arg-type]
        name = f.name
        if name not in saved:
            continue
        mine, default, theirs = getattr(cfg, name), getattr(defaults, name), saved[name]
        if isinstance(theirs, list) and isinstance(mine, tuple):
            theirs = tuple(theirs)
        if name == "resume" or mine == theirs:
            continue
        if mine == default:
            changes[name] = theirs
        elif name == "epochs" and isinstance(theirs, int) and mine > theirs:
            _log.info("--epochs %d: extending the run from %d epochs; the schedule is recomputed for %d", mine,
                      theirs, mine)
        elif name == "epochs":
            conflicts.append(f"--epochs {mine} (the run is set for {theirs}; a resume can only extend it)")
        elif not may_change_on_resume(f):
            conflicts.append(f"--{name.replace('_', '-')} {mine} (the run used {theirs})")
    if conflicts:
        raise ValueError(f"--resume {checkpoint} continues a run with other settings: {'; '.join(conflicts)}; "
                         "drop them to continue it as it was, or start a new run in another --output")
    if changes:
        _log.info("resuming with the run's own arguments: %s", ", ".join(f"{k}={v}" for k, v in changes.items()))
    return replace(cfg, **changes)  # type: ignore[type-var]


# ---------------------------------------------------------------------------------------------------------------
# Processes, seeds and checkpoint files
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed() -> _Dist:
    """Join the torchrun process group when WORLD_SIZE > 1 (gloo on CPU, NCCL on GPU); rank, world and device.

    Not ``timm.utils.init_distributed_device``: in the timm this package supports (1.0.x) it reads and mutates an
    argparse namespace (``args.device``, ``args.dist_backend``, ...) shared with timm's own train script, and the
    side-effect-free ``init_distributed_device_so`` is not part of it; both trainers here need a plain record.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist(device=torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        device, backend = torch.device("cuda", local), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=dist_timeout_seconds()))
    return _Dist(rank, world, local, device)


# How long a rank waits for the others at a collective before the run fails (torch's gloo default is 30 minutes):
# long enough for rank 0 to write a checkpoint and run an evaluation pass, short enough that a stopped or hung
# rank ends the run in minutes. PATNET_DIST_TIMEOUT (seconds) overrides it for runs whose epochs need longer.
DIST_TIMEOUT_SECONDS = 600


def dist_timeout_seconds() -> float:
    """The process-group timeout in seconds (``DIST_TIMEOUT_SECONDS`` unless ``PATNET_DIST_TIMEOUT`` is set)."""
    raw = os.environ.get("PATNET_DIST_TIMEOUT")
    if raw is None:
        return float(DIST_TIMEOUT_SECONDS)
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"PATNET_DIST_TIMEOUT must be a number of seconds above 0, got {raw!r}")
    return value


# What the collectives raise when a peer is gone: gloo's "Connection reset/closed by peer" / "Timed out", NCCL's
# watchdog, or torch's own DistError family (DistBackendError, DistNetworkError, DistStoreError).
_PEER_SIGNS = ("connection reset", "connection closed", "connection refused", "timed out", "timeout", "gloo", "nccl",
               "broken pipe")


@contextmanager
def peer_failures(d: _Dist, output: Path) -> Iterator[None]:
    """Turn a lost peer in a distributed run into one :class:`PeerLostError` line naming this rank and the
    checkpoint to resume from. A single-process run, or an error that is not a collective's, passes through."""
    try:
        yield
    except RuntimeError as e:
        if d.world <= 1 or isinstance(e, PatnetError):
            raise
        text = str(e)
        if not (isinstance(e, dist.DistError) or any(s in text.lower() for s in _PEER_SIGNS)):
            raise
        reason = text.split("] ", 1)[-1].split(". ")[0].strip()[:160]
        last = output / "last.pth"
        where = (f"resume from {last} on {d.world} processes with --resume" if last.exists()
                 else "no epoch was checkpointed yet; start the run again")
        raise PeerLostError(f"rank {d.rank} of {d.world} lost the other ranks (one was stopped or killed): {reason}; "
                            f"{where}") from e


def all_sum(values: Sequence[float], d: _Dist) -> List[float]:
    """Sum scalars over every rank (a no-op in a single process), in float64, in one collective.

    Not ``timm.utils.reduce_tensor``: that averages one tensor per call; metrics here are exact counts (hits,
    images, skipped files) that must be summed, several at once.
    """
    t = torch.tensor(list(values), dtype=torch.float64, device=d.device)
    if d.world > 1:
        dist.all_reduce(t)
    return t.tolist()


# Steps between loss reductions (a device sync and, distributed, a collective): both trainers' progress-bar loss and
# non-finite check run at this interval and at the end of each epoch.
LOSS_CHECK_EVERY = 20


class LossMeter:
    """The running mean of a training loss over one epoch, summed on the device.

    ``update`` adds a step's loss without a device sync; every ``every`` steps (and on ``reduce``) the sum is
    reduced over all ranks (one sync and one collective) and a NaN / inf mean stops the run with a
    ``NonFiniteError`` naming the epoch, the step and the last good checkpoint in ``out``.
    """

    def __init__(self, d: "_Dist", out: Path, epoch: int, every: int = LOSS_CHECK_EVERY) -> None:
        self.d, self.out, self.epoch, self.every = d, Path(out), epoch, every
        self.total = torch.zeros((), dtype=torch.float64, device=d.device)
        self.count = 0  # samples (or steps) weighted into ``total``
        self.steps = 0
        self.mean = float("nan")  # the last reduced mean

    def update(self, loss: torch.Tensor, weight: int = 1) -> bool:
        """Add one step's (mean) loss for ``weight`` samples; True when this step reduced (``mean`` is fresh)."""
        self.total += loss.detach().double() * weight
        self.count += weight
        self.steps += 1
        if self.steps % self.every:
            return False
        self.reduce()
        return True

    def reduce(self) -> float:
        """The mean over every rank so far; raises ``NonFiniteError`` if it is NaN / inf."""
        total, count = all_sum([self.total.item(), self.count], self.d)
        mean = total / max(count, 1)
        if not math.isfinite(mean):
            last = self.out / "last.pth"
            raise NonFiniteError(
                f"loss became {mean} in epoch {self.epoch + 1} by step {self.steps}; stopped. "
                + (f"Last good checkpoint: {last}" if last.exists() else "No checkpoint was written yet")
            )
        self.mean = mean
        return mean


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The seed of one epoch on one rank: runs resumed at an epoch boundary replay the same randomness."""
    return seed * 1_000_003 + epoch * 1009 + rank


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators.

    Not ``timm.utils.random_seed``: that adds the rank to the seed itself, while every seed here already comes from
    ``epoch_seed(seed, epoch, rank)``, which is what makes a resumed run replay the same randomness.
    """
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def load_checkpoint(path: Path) -> Dict[str, Any]:
    """Read a training checkpoint; a missing, truncated or foreign file is a one-line error (``io.read_checkpoint``)."""
    return read_checkpoint(path)


def load_resume(cfg: C, defaults: C, command: str) -> "tuple[C, Optional[Dict[str, Any]]]":
    """(configuration, checkpoint state) of a run: ``cfg`` and None without ``cfg.resume``; else the checkpoint,
    checked to be a training checkpoint, and the configuration from ``resume_config``."""
    resume = getattr(cfg, "resume", None)
    if not resume:
        return cfg, None

    state = read_checkpoint(Path(resume))
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        raise ValueError(f"--resume {resume} is not a checkpoint of {command} (no model/epoch)")
    # A resume continues the run in the checkpoint's own folder, never in a path stored inside the file (a
    # downloaded checkpoint must not choose where it writes), and never over another run.
    folder = Path(resume).resolve().parent
    mine = getattr(cfg, "output")
    if mine != getattr(defaults, "output") and Path(mine).resolve() != folder:
        raise ValueError(f"--output {mine}: a resume continues the run in its checkpoint's folder {folder}; "
                         "leave --output out (to branch a run, copy its folder first)")
    saved = {k: v for k, v in dict(state.get("config", {})).items() if k != "output"}
    cfg = replace(resume_config(cfg, saved, defaults, Path(resume)), output=str(folder))  # type: ignore[type-var]
    return cfg, state


def _clean_stale_temporaries(folder: Path) -> int:
    """Remove what killed writers left of the run's own files (``io.remove_stale_temporaries`` for each)."""
    removed = sum(remove_stale_temporaries(folder, f".{name}.") for name in RUN_FILES + ("coco_metrics.json",))
    if removed:
        _log.info("removed %d temporary files left in %s by an interrupted run", removed, folder)
    return removed


# Run-folder locks this process holds. A forked child (a data-loader worker) closes its copies at once, so the
# lock ends with the run process itself: after a kill -9 of the run, --resume can take the folder immediately,
# instead of waiting for orphaned workers to notice. (A POSIX record lock would not be inherited either, but a
# second open of the lock file in the same process would silently release it.)
_HELD_LOCKS: Set[int] = set()


def _close_locks_in_child() -> None:
    for fd in list(_HELD_LOCKS):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD_LOCKS.clear()


os.register_at_fork(after_in_child=_close_locks_in_child)


class RunFolder:
    """The output folder of one run (see the module docstring). Use as a context manager on the main process."""

    def __init__(self, path: Path, resume: bool = False, overwrite: bool = False, enabled: bool = True) -> None:
        self.path = Path(path)
        self.resume, self.overwrite, self.enabled = resume, overwrite, enabled
        self._lock_fd: Optional[int] = None

    def __enter__(self) -> "RunFolder":
        if not self.enabled:
            return self
        import fcntl

        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OSError(f"cannot create output folder {self.path}: {e.strerror}") from None
        lock = self.path / LOCK_NAME
        try:  # never through a symlink: a planted link would make the run truncate the file it points to
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise RunFolderError(f"{lock} is a symbolic link; remove it (a run folder's lock is a plain file)") \
                    from None
            raise OSError(f"cannot create the lock file {lock}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 512).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunFolderError(f"output folder {self.path} is in use by {holder}; wait for that run to end or "
                                 "choose another --output") from None
        self._lock_fd = fd
        _HELD_LOCKS.add(fd)
        os.ftruncate(fd, 0)
        started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} (started {started})".encode())
        try:
            _clean_stale_temporaries(self.path)
            existing = [n for n in ("last.pth", "metrics.json") if (self.path / n).exists()]
            if existing and not self.resume:
                if not self.overwrite:
                    raise RunFolderError(
                        f"output folder {self.path} already holds a run ({', '.join(existing)}); continue it with "
                        f"--resume {self.path / 'last.pth'}, replace it with --overwrite, or choose another --output")
                for name in RUN_FILES + ("coco_metrics.json",):
                    (self.path / name).unlink(missing_ok=True)
                _log.info("--overwrite: removed the earlier run's files from %s", self.path)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._lock_fd is not None:
            import fcntl

            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            _HELD_LOCKS.discard(self._lock_fd)
            os.close(self._lock_fd)
            self._lock_fd = None

    def save_epoch(self, state: Dict[str, Any], is_best: bool, history: List[Dict[str, Any]],
                   checked_metrics: Iterable[str] = ("loss",)) -> None:
        """Write one epoch's checkpoint(s) and log, after checking that weights and metrics are finite.

        Raises:
            NonFiniteError: A weight or a checked metric of the epoch is NaN / inf; nothing is written.
        """
        epoch = history[-1].get("epoch") if history else None
        bad = non_finite_tensors(state.get("model", {}))
        bad_metrics = [k for k in checked_metrics if isinstance(history[-1].get(k), float)
                       and not math.isfinite(history[-1][k])] if history else []
        if bad or bad_metrics:
            last = self.path / "last.pth"
            what = (f"{len(bad)} weight tensors ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})" if bad
                    else f"the metrics {bad_metrics}")
            raise NonFiniteError(
                f"{what} became NaN/inf at epoch {epoch}; stopped without writing. "
                + (f"Last good checkpoint: {last} (lower the learning rate and --resume it)" if last.exists()
                   else "No checkpoint was written yet (lower the learning rate)"))
        if is_best:
            self._save(self.path / "best.pth", state)
        self._save(self.path / "last.pth", state)
        self.write_log(history)

    def write_log(self, history: List[Dict[str, Any]]) -> None:
        """``log.jsonl``: one strict-JSON line per finished epoch."""
        with atomic_path(self.path / "log.jsonl") as tmp:
            tmp.write_text("".join(json.dumps(json_safe(h), allow_nan=False) + "\n" for h in history))

    def finished(self) -> bool:
        """Whether the run in this folder was finalised (``metrics.json`` written after its last epoch)."""
        return (self.path / "metrics.json").exists()

    def write_json(self, name: str, obj: Any) -> Path:
        """Atomically write ``obj`` as strict JSON (non-finite floats become null)."""
        path = self.path / name
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(json_safe(obj), indent=2, allow_nan=False, default=str))
        return path

    @staticmethod
    def _save(path: Path, state: Dict[str, Any]) -> None:
        try:
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                torch.save(state, f)  # through a Python file, so a full disk is an OSError atomic_path words
        except OSError:
            raise
        except RuntimeError as e:  # torch's own writer reports a full disk as "unexpected pos ..."
            raise OSError(f"cannot write {path} ({str(e).splitlines()[0][:120]}); is the disk full? The previous "
                          f"{path.name} is unchanged") from None
