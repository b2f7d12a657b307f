"""Files: atomic writes and weights in safetensors with the architecture stored beside them."""
import errno
import fcntl
import os
import re
import secrets
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

import torch

__all__ = ["atomic_path", "atomic_files", "temporary_folder", "remove_stale_temporaries", "fsync_path",
           "check_not_inputs", "save_weights", "read_checkpoint", "check_writable"]

PathLike = Union[str, Path]


def check_writable(path: PathLike) -> Path:
    """Fail early, in one line, if ``path``'s folder cannot be created or written."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(f"cannot create folder {path.parent}: {e.strerror}") from e
    if not os.access(path.parent, os.W_OK):
        raise OSError(f"cannot write to folder {path.parent}: permission denied")
    if path.is_dir():
        raise OSError(f"{path} is a folder; give a file name")
    return path


def check_not_inputs(outputs: Sequence[Optional[PathLike]], inputs: Mapping[str, Optional[PathLike]]) -> None:
    """Refuse, in one line, a command whose output would replace one of its own inputs (``inputs``: flag -> path).

    Compared as resolved paths (and as the same file where both exist, so a hard link or ``./x`` is caught).
    """
    for out in outputs:
        if out is None:
            continue
        o = Path(out)
        for flag, given in inputs.items():
            if given is None:
                continue
            i = Path(given)
            same = o.resolve() == i.resolve() or (o.exists() and i.exists() and os.path.samefile(o, i))
            if same:
                raise ValueError(f"{o} is also this command's input ({flag}); writing it would destroy the input: "
                                 "choose another output file")


# What a failed write means to the user; the message says the previous file is unchanged (it is).
_DISK_ERRORS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
                errno.EROFS: "the file system is read-only"}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temporaries(folder: Path, prefix: str) -> int:
    """Remove ``folder/PREFIX<pid>-*`` temporaries whose writing process is gone (a kill -9 mid-write); return how many.

    Every temporary this package makes carries its writer's pid, so one of a live process (another run writing the
    same target, or this one) is never touched. A recycled pid only keeps a dead one's temporary a little longer.
    """
    pattern = re.compile(re.escape(prefix) + r"(\d+)-[0-9A-Za-z_]+(\.tmp)?")
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        m = pattern.fullmatch(entry.name)
        if not m or int(m.group(1)) == os.getpid() or _pid_alive(int(m.group(1))):
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            Path(entry.path).unlink(missing_ok=True)
        removed += 1
    return removed


def _new_temporary(path: Path) -> Path:
    """Create an empty temporary file beside ``path``: a fresh name carrying our pid, never through a symlink, mode
    0666 less umask. Temporaries a killed writer left beside ``path`` are removed first."""
    prefix = f".{path.name}."
    remove_stale_temporaries(path.parent, prefix)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = path.parent / f"{prefix}{os.getpid()}-{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(tmp, flags, 0o666))  # the kernel applies the umask: no process-wide umask change
            return tmp
        except FileExistsError:
            continue
    raise OSError(f"cannot create a temporary file beside {path}")


@contextmanager
def temporary_folder(prefix: str) -> Iterator[Path]:
    """A private scratch folder in the system's temporary directory, removed on exit; ``PREFIX<pid>-*`` folders that
    killed runs left there are removed first (``patnet-quant-``, ``patnet-bench-``)."""
    remove_stale_temporaries(Path(tempfile.gettempdir()), prefix)
    folder = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def fsync_path(path: Path) -> None:
    """Flush a written file (or a folder's entries) to the disk, so a power cut cannot undo a finished write."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if path.is_dir() else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def disk_error(e: BaseException, path: Path) -> Optional[OSError]:
    """The one-line error for a write of ``path`` that failed for lack of space or a read-only disk, else None."""
    code = getattr(e, "errno", None)
    if code in _DISK_ERRORS:
        return OSError(f"cannot write {path}: {_DISK_ERRORS[code]}; the previous {path.name} is unchanged")
    return None


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; on success it replaces ``path`` in one step.

    On any error the temporary file is removed and ``path`` is left as it was, so a reader never sees a half-written
    file; a full or read-only disk becomes a one-line ``OSError`` naming ``path``. The file and its folder are
    fsynced before and after the rename, so a finished write survives a power cut. Writers that bypass Python's
    file objects (TorchScript, safetensors) should serialise to bytes and write those, so their failures are
    Python errors too.
    """
    path = check_writable(path)
    tmp = _new_temporary(path)
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        mapped = disk_error(e, path)
        if mapped is not None:
            raise mapped from None
        raise


@contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive ``flock`` on the folder itself for a moment (no lock file to leave behind); released when the
    block ends or the process dies."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@contextmanager
def atomic_files(*paths: PathLike) -> Iterator[Path]:
    """Write several files as a unit: yield a temporary folder beside the first; the caller writes each target's
    name into it; on success every file replaces its target (in the order given, so put the one readers look
    for last) and on any error nothing replaces anything and the folder is removed. Concurrent writers of the same
    targets commit one whole set after the other (a lock on the folder), so the last complete set wins, never a mix
    of two."""
    targets = [check_writable(p) for p in paths]
    folder = targets[0].parent
    remove_stale_temporaries(folder, f".{targets[0].name}.")
    tmp = Path(tempfile.mkdtemp(prefix=f".{targets[0].name}.{os.getpid()}-", suffix=".tmp", dir=folder))
    failing = targets[0]  # named in a disk-full error: the file being flushed, or the first while the caller writes
    try:
        yield tmp
        for failing in targets:
            fsync_path(tmp / failing.name)
        with _folder_lock(folder):  # two writers of one pair commit one after the other, never interleaved
            for failing in targets:
                os.replace(tmp / failing.name, failing)
        for parent in {t.parent for t in targets}:
            fsync_path(parent)
    except BaseException as e:
        mapped = disk_error(e, failing)
        if mapped is not None:
            raise mapped from None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save_weights(state_dict: Mapping[str, torch.Tensor], path: PathLike) -> Path:
    """Write a state dict to ``.safetensors`` (or ``.pt``/``.pth``, wrapped as ``{"state_dict": ...}``) atomically."""
    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save

            tmp.write_bytes(save(tensors))  # bytes first: safetensors' own writer escapes ENOSPC
        else:
            with open(tmp, "wb") as f:
                torch.save({"state_dict": tensors}, f)
    return path


def read_checkpoint(path: PathLike) -> Any:
    """Load a checkpoint file as it was saved: ``.safetensors`` gives its tensors by name, anything else goes through
    ``torch.load(weights_only=True)`` (tensors and plain Python values only, never arbitrary objects).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: The file is truncated or not a checkpoint (one line, naming the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch / safetensors raise many types for broken files
        # torch's own message for a non-checkpoint advises weights_only=False (running arbitrary code); never quote it.
        detail = str(e).splitlines()[0] if str(e) else ""
        if "weights_only" in detail or "Weights only load failed" in detail:
            detail = "holds objects other than tensors and plain values, or is no checkpoint at all"
        raise ValueError(f"cannot read checkpoint {path}: truncated or not a checkpoint "
                         f"({type(e).__name__}: {detail[:160]})") from None
