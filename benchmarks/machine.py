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


def cpu_features() -> List[str]:
    """The int8/bf16-relevant ISA flags this CPU reports (empty where /proc/cpuinfo is not readable)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return [f for f in SPEED_FLAGS if f in flags]


def environment() -> Dict[str, Any]:
    """CPU model and its speed flags, logical CPUs, GPU, date and the versions of every library a figure depends on."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    env: Dict[str, Any] = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
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
    return f"machine: {env['cpu']} ({env['logical_cpus']} logical CPUs; {flags}); {libs}; {env['date']}"
