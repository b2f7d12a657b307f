"""Speed benchmark by the protocol of ``shared/guides/benchmarking.md`` (FasterNet's, hardened).

CPU: fp32, batch 1, every model in its deployment form (``patnet.deploy.deploy_form``: PATNet fused, FasterNet's
conv+BN pairs folded by torch.fx), ``torch.inference_mode``, warm-up, then single forwards timed with
``time.perf_counter`` with the models interleaved (A, B, A, B, ...) in one process, for each thread count. Reported:
median and the 10th-90th percentile spread, and the achieved GFLOP/s (2 x multiply-accumulates per second) next to the
single-thread peak of a 1024 x 1024 fp32 matmul measured in the same run. PATNet's training form is timed too, so the
gain of fusion is a number. GPU (when CUDA is present): batch 32 fp32 images/s as in the papers, and the best of
bf16 autocast + channels_last over a few batch sizes. ``runtime='onnxruntime'`` adds ONNX Runtime latency of the same
deployment form.
"""
import importlib
import json
import logging
import math
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from .deploy.export import deploy_form
from .flops import count_flops, count_params
from .io import atomic_files, atomic_path, temporary_folder
from .weights import require_models

__all__ = ["BenchRow", "run_benchmark", "matmul_peak_gflops", "environment", "cpu_features", "machine_line",
           "write_results", "plot_results", "format_table"]

_log = logging.getLogger(__name__)


@dataclass
class BenchRow:
    """Results of one model."""

    model: str
    params_m: float
    gflops: float  # multiply-accumulates, norms counted (the papers' "FLOPs")
    cpu_ms: Dict[str, float] = field(default_factory=dict)  # "1t" / "2t" -> median ms, deployment form
    cpu_p10_ms: Dict[str, float] = field(default_factory=dict)
    cpu_p90_ms: Dict[str, float] = field(default_factory=dict)
    achieved_gflops_per_s: Dict[str, float] = field(default_factory=dict)  # 2 * MACs / median latency
    train_form_ms: Dict[str, float] = field(default_factory=dict)  # PATNet only: unfused eval model
    ort_ms: Dict[str, float] = field(default_factory=dict)  # ONNX Runtime fp32, inference form
    ort_int8_ms: Dict[str, float] = field(default_factory=dict)  # ONNX Runtime int8 (QDQ), inference form
    compiled_ms: Dict[str, float] = field(default_factory=dict)  # torch.compile (inductor, freezing)
    ov_ms: Dict[str, float] = field(default_factory=dict)  # OpenVINO fp32, inference form
    ov_int8_ms: Dict[str, float] = field(default_factory=dict)  # OpenVINO int8 (NNCF post-training quantization)
    compile_s: Optional[float] = None  # compilation time, first call included
    int8_quantized_nodes: Optional[int] = None
    errors: Dict[str, str] = field(default_factory=dict)  # runtime -> why it could not be timed for this model
    gpu_fp32_b32_img_s: Optional[float] = None
    gpu_best_img_s: Optional[float] = None
    gpu_best_batch: Optional[int] = None


def _percentile(values: Sequence[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, max(0, int(round(q * (len(v) - 1)))))]


def matmul_peak_gflops(threads: int = 1, n: int = 1024, iters: int = 20) -> float:
    """GFLOP/s of an n x n fp32 matmul (2 n^3 FLOPs), best of ``iters``, at ``threads`` threads (restored after)."""
    caller = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        for _ in range(3):
            a @ b
        best = math.inf
        for _ in range(iters):
            t = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t)
    finally:
        torch.set_num_threads(caller)
    return 2 * n ** 3 / best / 1e9


def environment() -> Dict[str, Any]:
    """Machine and library versions, for publishing next to the figures."""
    import timm

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
    }
    env["cpu_features"] = cpu_features()
    for module in ("onnxruntime", "openvino", "nncf"):
        try:
            env[module] = importlib.import_module(module).__version__
        except ImportError:
            pass
    return env


def machine_line(env: Dict[str, Any]) -> str:
    """One line naming the machine, its int8/bf16 ISA flags, the library versions and the date of a result."""
    flags = ", ".join(env.get("cpu_features") or []) or "no int8/bf16 ISA flags read"
    libs = ", ".join(f"{k} {env[k]}" for k in ("torch", "timm", "onnxruntime", "openvino", "nncf", "python")
                     if env.get(k))
    return f"machine: {env['cpu']} ({env['logical_cpus']} logical CPUs; {flags}); {libs}; {env['date']}"


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


def _time_interleaved(
        fns: Dict[str, Callable[[], Any]], warmup: int, iters: int, progress: Optional[Any] = None
) -> Dict[str, List[float]]:
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: Dict[str, List[float]] = {k: [] for k in fns}
    for _ in range(iters):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
        if progress is not None:
            progress.update(1)
    return times


def _export_for_ort(model: nn.Module, img_size: int, tmpdir: Path, name: str, int8: bool,
                    calib: Optional[List[np.ndarray]]) -> Dict[str, Path]:
    """The inference form as fp32 ONNX (verified against PyTorch) and, with ``int8``, its QDQ quantization."""
    from .deploy.export import export_model
    from .deploy.quantize import quantize_onnx

    paths = {"fp32": tmpdir / f"{name}.onnx"}
    export_model(model, paths["fp32"], "onnx", (img_size, img_size))
    if int8:
        paths["int8"] = tmpdir / f"{name}.int8.onnx"
        quantize_onnx(paths["fp32"], paths["int8"], calib or [])
    return paths


def generated_calibration(img_size: int, n: int = 32, seed: int = 0) -> List[np.ndarray]:
    """``n`` smooth random images (low-frequency noise, normalised like ImageNet inputs) for speed-only int8 runs.

    Enough to set activation ranges for timing; accuracy of an int8 model is measured with real images
    (``patnet quantize`` / ``patnet validate --onnx``), never with these.
    """
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        low = torch.randn(1, 3, 7, 7, generator=g)
        img = torch.nn.functional.interpolate(low, size=(img_size, img_size), mode="bicubic", align_corners=False)
        out.append((img + 0.3 * torch.randn(1, 3, img_size, img_size, generator=g)).numpy().astype(np.float32))
    return out


def _gpu_throughput(model: nn.Module, img_size: int, batch: int, amp: bool, iters: int = 200) -> float:
    device = torch.device("cuda")
    model = model.to(device)
    x = torch.randn(batch, 3, img_size, img_size, device=device)
    if amp:
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if amp else torch.autocast("cuda", enabled=False)
    with torch.inference_mode(), ctx:
        for _ in range(50):
            model(x)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(iters):
            model(x)
        torch.cuda.synchronize()
    return batch * iters / (time.perf_counter() - t)


RUNTIMES = ("eager", "compile", "onnxruntime", "onnxruntime-int8", "openvino", "openvino-int8")


def _openvino_request(onnx_path: Path, threads: int, calib: Optional[List[np.ndarray]]) -> Callable[[], Any]:
    """An OpenVINO CPU infer request for the ONNX file (fp32), or for its NNCF int8 quantization with ``calib``."""
    import openvino as ov

    from .deploy.quantize import nncf_quantize
    from .deploy.runtime import openvino_compiled

    model = ov.Core().read_model(str(onnx_path))
    if calib is not None:
        model = nncf_quantize(model, calib)
    return openvino_compiled(model, threads).create_infer_request()


def run_benchmark(
        models: Sequence[str],
        img_size: int = 224,
        threads: Sequence[int] = (1, 2),
        warmup: int = 10,
        iters: int = 200,
        runtimes: Sequence[str] = ("eager",),
        train_form: bool = True,
        gpu: Optional[bool] = None,
        show_progress: bool = True,
        calib: Optional[str] = None,
) -> Dict[str, Any]:
    """Benchmark registered timm model names (PATNet's after ``import patnet``); see the module docstring.

    ``runtimes``: PyTorch eager is always timed; add 'compile' (``export.compiled_form``), 'onnxruntime' (fp32) and
    'onnxruntime-int8' (fp32 and int8 QDQ of the same inference form, calibrated on ``calib`` data's training images,
    else on generated images: speed only). Every runtime of every model is timed interleaved, per thread count.
    The caller's thread count is restored.

    Returns a dict with ``environment``, ``settings``, ``matmul_peak_gflops`` and ``rows`` (one ``BenchRow`` each).

    Raises:
        ValueError: A model name is not registered, a runtime is unknown, or a thread count is below 1.
        ImportError: An ONNX Runtime runtime without onnxruntime installed.
    """
    import timm
    from tqdm.auto import tqdm

    from .deploy.export import compiled_form
    from .deploy.runtime import ort_session, require

    require_models(*models)
    runtimes = ["eager" if r == "torch" else r for r in runtimes]
    unknown = [r for r in runtimes if r not in RUNTIMES]
    if unknown:
        raise ValueError(f"unknown runtime {unknown[0]!r}; use {', '.join(RUNTIMES)}")
    if not threads or min(threads) < 1:
        raise ValueError(f"thread counts must be at least 1, got {list(threads)}")
    use_ov = any(r.startswith("openvino") for r in runtimes)
    use_ort = use_ov or any(r.startswith("onnxruntime") for r in runtimes)
    if use_ort:
        require("onnxruntime")
    if use_ov:
        require("openvino", "openvino")
        if "openvino-int8" in runtimes:
            require("nncf", "openvino")
    gpu = torch.cuda.is_available() if gpu is None else gpu
    calib_batches: Optional[List[np.ndarray]] = None
    int8 = "onnxruntime-int8" in runtimes or "openvino-int8" in runtimes
    if int8:
        if calib is None:
            calib_batches = generated_calibration(img_size)
        else:
            from .deploy.runtime import Preprocess, image_batches

            calib_batches = None  # per model: each model's own eval transform

    caller_threads = torch.get_num_threads()
    rows: Dict[str, BenchRow] = {}
    deployed: Dict[str, nn.Module] = {}
    training: Dict[str, nn.Module] = {}
    compiled: Dict[str, nn.Module] = {}
    x = torch.randn(1, 3, img_size, img_size)
    try:
        with temporary_folder("patnet-bench-") as tmp:
            onnx_files: Dict[str, Dict[str, Path]] = {}
            calib_of: Dict[str, Optional[List[np.ndarray]]] = {}
            for name in tqdm(models, desc="building", disable=not show_progress):
                model = timm.create_model(name).eval()
                rows[name] = BenchRow(name, round(count_params(model) / 1e6, 3),
                                      round(count_flops(model, (img_size, img_size)) / 1e9, 4))
                deployed[name] = deploy_form(model)
                if train_form and name.startswith("patnet"):
                    training[name] = model
                if use_ort:
                    batches = calib_batches
                    if int8 and calib is not None:
                        pre = Preprocess.for_model(model, name, (img_size, img_size))
                        batches = [b for b, _ in image_batches(calib, "train", pre, 32, batch_size=1)]
                    calib_of[name] = batches
                    try:
                        onnx_files[name] = _export_for_ort(model, img_size, Path(tmp), name,
                                                           "onnxruntime-int8" in runtimes, batches)
                    except Exception as e:  # one model the exporter or quantizer cannot take must not end a suite
                        _log.warning("%s: ONNX export/quantization failed, not timed in ONNX runtimes (%s: %s)",
                                     name, type(e).__name__, e)
                        rows[name].errors["onnx"] = f"{type(e).__name__}: {str(e)[:200]}"
                if "compile" in runtimes:
                    torch.set_num_threads(threads[0])
                    try:
                        compiled[name] = compiled_form(model, x)
                        rows[name].compile_s = round(compiled[name].compile_seconds, 1)
                    except Exception as e:
                        _log.warning("%s: torch.compile failed (%s: %s)", name, type(e).__name__, e)
                        rows[name].errors["compile"] = f"{type(e).__name__}: {str(e)[:200]}"

            peaks: Dict[str, float] = {}
            for t in threads:
                key = f"{t}t"
                peaks[key] = round(matmul_peak_gflops(t), 1)
                torch.set_num_threads(t)
                fns: Dict[str, Callable[[], Any]] = {}
                for name, m in deployed.items():
                    fns[name] = (lambda m=m: m(x))
                    if name in training:
                        fns[f"{name}:train"] = (lambda m=training[name]: m(x))
                    if name in compiled:
                        fns[f"{name}:compile"] = (lambda m=compiled[name]: m(x))
                    feed = {"input": x.numpy()}
                    for precision, path in onnx_files.get(name, {}).items():
                        # 'onnxruntime-int8' times the fp32 file too, so the int8 speed-up is a same-run ratio
                        if "onnxruntime-int8" in runtimes or (precision == "fp32" and "onnxruntime" in runtimes):
                            sess = ort_session(path, t)
                            fns[f"{name}:ort-{precision}"] = (lambda s=sess, f=feed: s.run(None, f))
                    for kind, c in (("ov-fp32", None), ("ov-int8", calib_of.get(name))):
                        if ("openvino" if kind == "ov-fp32" else "openvino-int8") in runtimes and name in onnx_files:
                            try:
                                req = _openvino_request(onnx_files[name]["fp32"], t, c)
                            except Exception as e:
                                _log.warning("%s: OpenVINO failed (%s: %s)", name, type(e).__name__, e)
                                rows[name].errors[kind] = f"{type(e).__name__}: {str(e)[:200]}"
                                continue
                            fns[f"{name}:{kind}"] = (lambda r=req, f=feed: r.infer({0: f["input"]}))
                with torch.inference_mode():
                    bar = tqdm(total=iters, desc=f"CPU {t} thread(s)", disable=not show_progress)
                    times = _time_interleaved(fns, warmup, iters, bar)
                    bar.close()
                for k, v in times.items():
                    name, _, kind = k.partition(":")
                    ms = [s * 1e3 for s in v]
                    med = round(statistics.median(ms), 3)
                    row = rows[name]
                    if kind == "":
                        row.cpu_ms[key] = med
                        row.cpu_p10_ms[key] = round(_percentile(ms, 0.1), 3)
                        row.cpu_p90_ms[key] = round(_percentile(ms, 0.9), 3)
                        row.achieved_gflops_per_s[key] = round(2 * row.gflops / (med / 1e3), 1)
                    else:
                        target = {"train": row.train_form_ms, "compile": row.compiled_ms, "ort-fp32": row.ort_ms,
                                  "ort-int8": row.ort_int8_ms, "ov-fp32": row.ov_ms, "ov-int8": row.ov_int8_ms}[kind]
                        target[key] = med
    finally:
        torch.set_num_threads(caller_threads)

    if gpu:
        torch.backends.cudnn.benchmark = True
        for name, m in tqdm(deployed.items(), desc="GPU", disable=not show_progress):
            row = rows[name]
            row.gpu_fp32_b32_img_s = round(_gpu_throughput(m, img_size, 32, amp=False), 1)
            best = max((_gpu_throughput(m, img_size, b, amp=True), b) for b in (64, 128, 256))
            row.gpu_best_img_s, row.gpu_best_batch = round(best[0], 1), best[1]
            m.cpu()

    return {
        "environment": environment(),
        "settings": dict(img_size=img_size, threads=list(threads), warmup=warmup, iters=iters,
                         runtimes=list(runtimes), batch=1, dtype="float32",
                         form="inference form (BatchNorm folded; timm.utils.reparameterize_model)",
                         int8_calibration=calib or ("generated images (speed only)" if int8 else None)),
        "matmul_peak_gflops": peaks,
        "rows": [asdict(r) for r in rows.values()],
    }


def format_table(results: Dict[str, Any]) -> str:
    """The results as a markdown table, with the matmul peaks below it."""
    rows = results["rows"]
    keys = [f"{t}t" for t in results["settings"]["threads"]]
    head = ["model", "params M", "GFLOPs"]
    for k in keys:
        head += [f"ms {k}", f"p10-p90 {k}", f"GFLOP/s {k}"]
    show_train = any(r["train_form_ms"] for r in rows)
    if show_train:
        head += [f"train-form ms {keys[0]}", "fuse speed-up"]
    extra = [(f, label) for f, label in (("compiled_ms", "compiled ms"), ("ort_ms", "ORT fp32 ms"),
                                         ("ort_int8_ms", "ORT int8 ms"), ("ov_ms", "OpenVINO fp32 ms"),
                                         ("ov_int8_ms", "OpenVINO int8 ms")) if any(r[f] for r in rows)]
    for _, label in extra:
        head += [f"{label} {k}" for k in keys]
    if any(r["gpu_fp32_b32_img_s"] for r in rows):
        head += ["GPU fp32 b32 img/s", "GPU best img/s (batch)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["model"], f"{r['params_m']:.2f}", f"{r['gflops']:.3f}"]
        for k in keys:
            cells += [f"{r['cpu_ms'][k]:.2f}", f"{r['cpu_p10_ms'][k]:.2f}-{r['cpu_p90_ms'][k]:.2f}",
                      f"{r['achieved_gflops_per_s'][k]:.1f}"]
        if show_train:
            tf = r["train_form_ms"].get(keys[0])
            cells += [f"{tf:.2f}" if tf else "", f"{tf / r['cpu_ms'][keys[0]]:.2f}x" if tf else ""]
        for f, _ in extra:
            cells += [f"{r[f][k]:.2f}" if k in r[f] else "" for k in keys]
        if "GPU fp32 b32 img/s" in head:
            cells += [f"{r['gpu_fp32_b32_img_s']}", f"{r['gpu_best_img_s']} ({r['gpu_best_batch']})"]
        lines.append("| " + " | ".join(cells) + " |")
    peaks = ", ".join(f"{k}: {v} GFLOP/s" for k, v in results["matmul_peak_gflops"].items())
    lines.append("")
    lines.append(f"fp32 1024x1024 matmul peak in the same run: {peaks}")
    compile_s = [f"{r['model']} {r['compile_s']} s" for r in rows if r.get("compile_s") is not None]
    if compile_s:
        lines.append(f"torch.compile time (first call included, not in the latencies): {', '.join(compile_s)}")
    return "\n".join(lines)


def write_results(results: Dict[str, Any], out_dir: Path) -> Dict[str, Path]:
    """Write ``bench.json``, ``bench.csv``, ``bench.md`` (the table) and ``bench.png`` into ``out_dir``, as a unit: a
    failure or kill leaves the previous four files, never a new table beside an old plot."""
    import csv

    paths = {k: out_dir / f"bench.{k}" for k in ("csv", "md", "png", "json")}  # bench.json, the record, last
    flat = []
    for r in results["rows"]:
        d = {k: v for k, v in r.items() if not isinstance(v, dict)}
        for k, v in r.items():
            if isinstance(v, dict):
                d.update({f"{k}_{kk}": vv for kk, vv in v.items()})
        flat.append(d)
    with atomic_files(*paths.values()) as staged:
        (staged / "bench.json").write_text(json.dumps(results, indent=2))
        fields = sorted({k for d in flat for k in d}, key=lambda k: (k != "model", k))
        with open(staged / "bench.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(flat)
        env = results["environment"]
        (staged / "bench.md").write_text(format_table(results) + f"\n\n{machine_line(env)}\n")
        _draw_plot(results, staged / "bench.png")
    return paths


def plot_results(results: Dict[str, Any], path: Path) -> Path:
    """Latency (1 thread) against FLOPs, one line per model family (PATNet, FasterNet, others), written atomically."""
    with atomic_path(path) as tmp:
        _draw_plot(results, tmp)
    return path


def _draw_plot(results: Dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = f"{results['settings']['threads'][0]}t"
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    families: Dict[str, List[Dict[str, Any]]] = {}
    for r in results["rows"]:
        families.setdefault(r["model"].split("_")[0], []).append(r)
    for fam, rs in families.items():
        rs = sorted(rs, key=lambda r: r["gflops"])
        ax.plot([r["gflops"] for r in rs], [r["cpu_ms"][key] for r in rs], "o-", label=fam)
        for r in rs:
            ax.annotate(r["model"].split("_", 1)[-1], (r["gflops"], r["cpu_ms"][key]), fontsize=7,
                        textcoords="offset points", xytext=(3, 3))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("GFLOPs (multiply-accumulates) at 224 px")
    ax.set_ylabel(f"CPU latency, batch 1, {key[:-1]} thread(s) [ms]")
    env = results["environment"]
    ax.set_title(f"Deployment form, {env['cpu'][:40]}\ntorch {env['torch']}, {env['date']}", fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    try:
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
