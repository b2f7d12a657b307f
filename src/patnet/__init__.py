"""patnet: PATNet ("Partial Convolution Meets Visual Attention", arXiv 2503.03148) for timm and torchvision.

Importing the package registers ``patnet_t0`` .. ``patnet_l`` with timm, so ``timm.create_model("patnet_t2")``
works everywhere timm models do. The public names below are loaded on first use.
"""
import importlib
import logging
import sys
from typing import Any

__version__ = "0.1.0"
__all__ = [
    "PATNet",
    "VARIANTS",
    "from_official",
    "load_model",
    "load_official_state_dict",
    "official_to_patnet",
    "patnet_to_official",
]

# public name -> the submodule that defines it
_PUBLIC = {"PATNet": "models.patnet", "VARIANTS": "models.patnet", "from_official": "weights",
           "load_model": "weights", "load_official_state_dict": "weights", "official_to_patnet": "weights",
           "patnet_to_official": "weights"}


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    if name in ("models", "weights", "deploy"):  # submodules, when registration was deferred
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list:
    return sorted(set(globals()) | set(__all__))


logging.getLogger(__name__).addHandler(logging.NullHandler())

# Registering with timm imports torch and timm (seconds). Only the ``patnet`` command's launcher (``patnet_cli``)
# defers it, so that ``patnet --help`` / ``--version`` answer at once; its commands register before they run.
if not getattr(sys.modules.get("patnet_cli"), "DEFER_REGISTRATION", False):
    from . import models  # noqa: F401,E402  (registers patnet_t0 .. patnet_l with timm)
