"""The machine and library versions a figure was taken on, to publish beside it."""
import importlib
import importlib.metadata
import os
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List

import timm
import torch

__all__ = ["environment", "machine_line", "cpu_features", "SPEED_FLAGS"]

# The ISA extensions that decide int8 and bf16 speed on x86 CPUs (Linux /proc/cpuinfo flag names).
SPEED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_fp16")


def _first_processor() -> Dict[str, str]:
    """The first processor's fields in /proc/cpuinfo ("model name", "flags", ...; empty where it is not readable)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields: Dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():  # the end of the first processor's block
            break
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_features() -> List[str]:
    """The int8/bf16-relevant ISA flags this CPU reports (empty where /proc/cpuinfo is not readable)."""
    flags = _first_processor().get("flags", "").split()
    return [f for f in SPEED_FLAGS if f in flags]


def environment() -> Dict[str, Any]:
    """CPU model and its speed flags, logical CPUs, GPU, date and the versions of every library a figure depends on."""
    fields = _first_processor()
    cpu = fields.get("model name") or platform.processor() or "unknown"
    # A virtual machine often reports a generic name ("Intel(R) Xeon(R) Processor"): the family and model numbers
    # still tell the generation (Intel family 6 model 143 is Sapphire Rapids, 207 Emerald Rapids).
    cpu_id = " ".join(f"{k.split()[-1]} {fields[k]}" for k in ("cpu family", "model", "stepping") if k in fields)
    env: Dict[str, Any] = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cpu_id": cpu_id or None,
        "logical_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_features": cpu_features(),
    }
    for module in ("onnxruntime", "openvino", "nncf"):
        try:
            env[module] = importlib.import_module(module).__version__
        except ImportError:
            pass
    try:  # by its metadata: importing executorch takes seconds and registers ops
        env["executorch"] = importlib.metadata.version("executorch")
    except importlib.metadata.PackageNotFoundError:
        pass
    return env


def machine_line(env: Dict[str, Any]) -> str:
    """One line naming the machine, its int8/bf16 ISA flags, the library versions and the date of a result."""
    flags = ", ".join(env.get("cpu_features") or []) or "no int8/bf16 ISA flags read"
    libs = ", ".join(f"{k} {env[k]}" for k in ("torch", "timm", "onnxruntime", "openvino", "nncf", "executorch",
                                                         "python")
                     if env.get(k))
    cpu = f"{env['cpu']}, {env['cpu_id']}" if env.get("cpu_id") else env["cpu"]
    return f"machine: {cpu} ({env['logical_cpus']} logical CPUs; {flags}); {libs}; {env['date']}"
