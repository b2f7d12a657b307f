"""Files: atomic writes and weights in safetensors with the architecture stored beside them."""
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional, Tuple, Union

import torch

__all__ = ["atomic_path", "save_weights", "load_weights", "read_checkpoint", "check_writable"]

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


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; on success it replaces ``path`` in one step.

    On any error the temporary file is removed and ``path`` is left as it was, so a reader never sees a
    half-written file.
    """
    path = check_writable(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the permissions open() would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_weights(
        state_dict: Mapping[str, torch.Tensor], path: PathLike, config: Optional[Mapping[str, Any]] = None
) -> Path:
    """Write a state dict to ``.safetensors`` (or ``.pt``/``.pth``) atomically, with ``config`` as metadata."""
    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            meta = {"patnet_config": json.dumps(dict(config), default=list)} if config else None
            save_file(tensors, str(tmp), metadata=meta)
        else:
            torch.save({"state_dict": tensors, "config": dict(config or {})}, tmp)
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


def load_weights(path: PathLike) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Read what ``save_weights`` wrote: (state dict, config); config is empty when none was stored."""
    path = Path(path)
    obj = read_checkpoint(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        try:
            config = json.loads(meta.get("patnet_config", "{}"))
        except json.JSONDecodeError:
            raise ValueError(f"{path}: its stored architecture (metadata 'patnet_config') is not valid JSON") from None
        if not isinstance(config, dict):
            raise ValueError(f"{path}: its stored architecture (metadata 'patnet_config') is not a mapping")
        return obj, config
    if isinstance(obj, Mapping) and "state_dict" in obj:
        return dict(obj["state_dict"]), dict(obj.get("config") or {})
    return dict(obj), {}
