"""CPU latency of any timm models in every runtime, by the protocol of ``shared/guides/benchmarking.md``.

FasterNet's protocol, hardened: fp32 (and int8 where asked), batch 1, every model in its deployment form
(``patnet.deploy.deploy_form``: PATNet fused, FasterNet's conv+BN pairs folded), warm-up, then single forwards
timed with ``time.perf_counter``, all models and runtimes interleaved (A, B, A, B, ...) in one process, for each
thread count. Reported: median and the 10th-90th percentile spread per runtime, the achieved GFLOP/s of eager
PyTorch next to the single-thread peak of a 1024 x 1024 fp32 matmul measured in the same run, and PATNet's
unfused training form, so the gain of fusion is a number. With CUDA present: batch-32 fp32 images/s as in the
papers, and the best of bf16 autocast + channels_last over a few batch sizes.

A runtime is one entry of ``RUNTIMES``: how to prepare a model's form once (export, quantize, compile) and how to
make a one-forward call of it at a thread count. Adding a runtime is adding an entry.

    python -m benchmarks.bench --models patnet_t2,fasternet_t2 --runtime onnxruntime-int8,openvino-int8
"""
import argparse
import csv
import json
import logging
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import timm
import torch
import torch.nn as nn
from tqdm.auto import tqdm

import patnet  # noqa: F401  (registers patnet_*)
from patnet.cli import configure_logging, report_errors
from patnet.config import add_arguments, option
from patnet.deploy.executorch import lower_to_executorch
from patnet.deploy.export import compiled_form, deploy_form, export_model
from patnet.deploy.quantize import nncf_quantize, quantize_onnx
from patnet.deploy.runtime import Preprocess, image_batches, openvino_compiled, ort_session, require
from patnet.flops import count_flops, count_params
from patnet.io import atomic_files, temporary_folder
from patnet.weights import require_models

from .machine import environment, machine_line

__all__ = ["RUNTIMES", "Runtime", "Case", "BenchRow", "run_benchmark", "generated_calibration", "matmul_peak_gflops",
           "time_interleaved", "latency_summary", "format_table", "write_results", "BenchOptions", "run_script",
           "split_list", "save_figure", "main"]

_log = logging.getLogger(__name__)


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


class Case:
    """One model under test and the forms the runtimes time, each made once on first use and shared.

    A form that cannot be made (an exporter or quantizer that cannot take the model) raises the same error for
    every runtime that asks for it, without being tried again.
    """

    def __init__(self, name: str, img_size: int, scratch: Path, calib: Optional[str]) -> None:
        self.name, self.img_size, self.scratch, self.calib_data = name, img_size, scratch, calib
        self.model = timm.create_model(name).eval()
        self.x = torch.randn(1, 3, img_size, img_size)
        self.compile_s: Optional[float] = None
        self._forms: Dict[str, Any] = {}

    def form(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self._forms:
            try:
                self._forms[key] = make()
            except Exception as e:
                self._forms[key] = e
        if isinstance(self._forms[key], Exception):
            raise self._forms[key]
        return self._forms[key]

    def calibration(self) -> List[np.ndarray]:
        """int8 calibration inputs: the model's own eval transform of ``calib`` data, else generated images."""
        def make() -> List[np.ndarray]:
            if self.calib_data is None:
                return generated_calibration(self.img_size)
            pre = Preprocess.for_model(self.model, self.name, (self.img_size, self.img_size))
            return [b for b, _ in image_batches(self.calib_data, "train", pre, 32, batch_size=1)]
        return self.form("calibration", make)

    def deployed(self) -> nn.Module:
        """``deploy_form`` of the model, shared by eager timing and the ExecuTorch int8 lowering."""
        return self.form("deployed", lambda: deploy_form(self.model))

    def onnx(self) -> Path:
        """The inference form as fp32 ONNX, verified against PyTorch."""
        def make() -> Path:
            path = self.scratch / f"{self.name}.onnx"
            export_model(self.model, path, "onnx", (self.img_size, self.img_size))
            return path
        return self.form("onnx", make)

    def onnx_int8(self) -> Path:
        """The fp32 ONNX file quantized to int8 QDQ for ONNX Runtime."""
        def make() -> Path:
            path = self.scratch / f"{self.name}.int8.onnx"
            quantize_onnx(self.onnx(), path, self.calibration())
            return path
        return self.form("onnx-int8", make)

    def openvino(self, int8: bool) -> Any:
        """The fp32 ONNX file read by OpenVINO, or its NNCF int8 quantization."""
        def make() -> Any:
            import openvino as ov

            model = ov.Core().read_model(str(self.onnx()))
            return nncf_quantize(model, self.calibration()) if int8 else model
        return self.form(f"openvino-{'int8' if int8 else 'fp32'}", make)

    def executorch(self, int8: bool) -> Path:
        """An XNNPACK ExecuTorch program: the fp32 one verified against PyTorch, or PT2E int8 of the same form."""
        def make() -> Path:
            path = self.scratch / f"{self.name}{'.int8' if int8 else ''}.pte"
            if int8:
                calib = [torch.from_numpy(b) for b in self.calibration()]
                path.write_bytes(lower_to_executorch(self.deployed(), self.x, calib)[0])
            else:
                export_model(self.model, path, "executorch", (self.img_size, self.img_size))
            return path
        return self.form(f"executorch-{'int8' if int8 else 'fp32'}", make)

    def compiled(self) -> nn.Module:
        def make() -> nn.Module:
            c = compiled_form(self.model, self.x)
            self.compile_s = round(c.compile_seconds, 1)
            return c
        return self.form("compiled", make)


def _torch_call(m: nn.Module, x: torch.Tensor, threads: int) -> Callable[[], Any]:
    return lambda: m(x)  # the thread count is set around the whole round (torch.set_num_threads)


def _ort_call(path: Path, x: torch.Tensor, threads: int) -> Callable[[], Any]:
    sess, feed = ort_session(path, threads), {"input": x.numpy()}
    return lambda: sess.run(None, feed)


def _openvino_call(model: Any, x: torch.Tensor, threads: int) -> Callable[[], Any]:
    request, feed = openvino_compiled(model, threads).create_infer_request(), {0: x.numpy()}
    return lambda: request.infer(feed)


def _executorch_call(path: Path, x: torch.Tensor, threads: int) -> Callable[[], Any]:
    from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool
    from executorch.runtime import Runtime as EtRuntime

    _unsafe_reset_threadpool(threads)  # XNNPACK's pool is process-wide: the rounds are per thread count
    method, inputs = EtRuntime.get().load_program(str(path)).load_method("forward"), [x]
    return lambda: method.execute(inputs)


@dataclass(frozen=True)
class Runtime:
    """How one runtime is timed: ``prepare`` makes a model's form once, ``call`` a one-forward call at a thread
    count. ``requires``: (module, extra) pairs it needs; ``also``: runtimes timed beside it, for a same-run ratio;
    ``patnet_only``: PATNet models only."""

    label: str
    prepare: Callable[[Case], Any]
    call: Callable[[Any, torch.Tensor, int], Callable[[], Any]]
    requires: Tuple[Tuple[str, str], ...] = ()
    also: Tuple[str, ...] = ()
    patnet_only: bool = False


_ORT = (("onnxruntime", "deploy"),)
_OV = _ORT + (("openvino", "openvino"),)
_ET = (("executorch", "executorch"),)
RUNTIMES: Dict[str, Runtime] = {
    "eager": Runtime("eager", Case.deployed, _torch_call),
    "train-form": Runtime("train-form", lambda c: c.model, _torch_call, patnet_only=True),
    "compile": Runtime("compiled", Case.compiled, _torch_call),
    "onnxruntime": Runtime("ORT fp32", Case.onnx, _ort_call, _ORT),
    "onnxruntime-int8": Runtime("ORT int8", Case.onnx_int8, _ort_call, _ORT, also=("onnxruntime",)),
    "openvino": Runtime("OpenVINO fp32", lambda c: c.openvino(int8=False), _openvino_call, _OV),
    "openvino-int8": Runtime("OpenVINO int8", lambda c: c.openvino(int8=True), _openvino_call,
                             _OV + (("nncf", "openvino"),)),
    "executorch": Runtime("ExecuTorch fp32", lambda c: c.executorch(int8=False), _executorch_call, _ET),
    "executorch-int8": Runtime("ExecuTorch int8", lambda c: c.executorch(int8=True), _executorch_call, _ET,
                               also=("executorch",)),
}


@dataclass
class BenchRow:
    """Results of one model: ``latency_ms[runtime][f"{threads}t"]`` holds ``median``, ``p10`` and ``p90``."""

    model: str
    params_m: float
    gflops: float  # multiply-accumulates, norms counted (the papers' "FLOPs")
    latency_ms: Dict[str, Dict[str, Dict[str, float]]] = field(default_factory=dict)
    compile_s: Optional[float] = None  # torch.compile time, first call included
    errors: Dict[str, str] = field(default_factory=dict)  # runtime -> why it could not be timed for this model
    gpu_fp32_b32_img_s: Optional[float] = None
    gpu_best_img_s: Optional[float] = None
    gpu_best_batch: Optional[int] = None


def _percentile(values: Sequence[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, max(0, int(round(q * (len(v) - 1)))))]


def latency_summary(seconds: Sequence[float]) -> Dict[str, float]:
    """``{median, p10, p90}`` in ms (3 decimals) of per-call times in seconds, as every latency row keeps them."""
    ms = [s * 1e3 for s in seconds]
    return {"median": round(statistics.median(ms), 3), "p10": round(_percentile(ms, 0.1), 3),
            "p90": round(_percentile(ms, 0.9), 3)}


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


def time_interleaved(fns: Dict[Any, Callable[[], Any]], warmup: int, iters: int,
                     progress: Optional[Any] = None) -> Dict[Any, List[float]]:
    """Seconds per call of each of ``fns``, called in turn for ``iters`` rounds after ``warmup`` calls each, so that
    the machine's drift falls on all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: Dict[Any, List[float]] = {k: [] for k in fns}
    for _ in range(iters):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
        if progress is not None:
            progress.update(1)
    return times


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


def _runtimes_asked(runtimes: Sequence[str], train_form: bool) -> List[str]:
    """The asked runtimes, checked, with eager first and each one's companions (``Runtime.also``) added."""
    asked = ["eager"] + (["train-form"] if train_form else []) + list(runtimes)
    unknown = [r for r in asked if r not in RUNTIMES]
    if unknown:
        raise ValueError(f"unknown runtime {unknown[0]!r}; use {', '.join(RUNTIMES)}")
    out: List[str] = []
    for r in asked:
        for name in (*RUNTIMES[r].also, r):
            if name not in out:
                out.append(name)
    for r in out:
        for module, extra in RUNTIMES[r].requires:
            require(module, extra)
    return out


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
    """Time registered timm model names (PATNet's after ``import patnet``) in ``runtimes``; see the module docstring.

    PyTorch eager is always timed (and, with ``train_form``, PATNet's unfused training form). int8 runtimes are
    calibrated on ``calib`` data's training images, else on generated images (speed only). Every runtime of every
    model is timed interleaved, per thread count; the caller's thread count is restored.

    Returns a dict with ``environment``, ``settings``, ``matmul_peak_gflops`` and ``rows`` (one ``BenchRow`` each).

    Raises:
        ValueError: A model name is not registered, a runtime is unknown, or a thread count is below 1.
        ImportError: A runtime whose package is not installed.
    """
    require_models(*models)
    runtimes = _runtimes_asked(runtimes, train_form)
    if not threads or min(threads) < 1:
        raise ValueError(f"thread counts must be at least 1, got {list(threads)}")
    gpu = torch.cuda.is_available() if gpu is None else gpu
    caller_threads = torch.get_num_threads()
    rows: Dict[str, BenchRow] = {}
    peaks: Dict[str, float] = {}
    try:
        with temporary_folder("patnet-bench-") as scratch:
            cases: List[Case] = []
            forms: Dict[Tuple[str, str], Any] = {}
            torch.set_num_threads(threads[0])  # torch.compile tunes for the thread count it compiles under
            for name in tqdm(models, desc="preparing", disable=not show_progress):
                case = Case(name, img_size, scratch, calib)
                cases.append(case)
                rows[name] = row = BenchRow(name, round(count_params(case.model) / 1e6, 3),
                                            round(count_flops(case.model, (img_size, img_size)) / 1e9, 4))
                for r in runtimes:
                    if RUNTIMES[r].patnet_only and not name.startswith("patnet"):
                        continue
                    try:
                        forms[name, r] = RUNTIMES[r].prepare(case)
                    except Exception as e:  # one model a runtime cannot take must not end a suite
                        _log.warning("%s: not timed in %s (%s: %s)", name, r, type(e).__name__, e)
                        row.errors[r] = f"{type(e).__name__}: {str(e)[:200]}"
                row.compile_s = case.compile_s

            for t in threads:
                key = f"{t}t"
                peaks[key] = round(matmul_peak_gflops(t), 1)
                torch.set_num_threads(t)
                fns: Dict[Tuple[str, str], Callable[[], Any]] = {}
                for case in cases:
                    for r in runtimes:
                        if (case.name, r) in forms:
                            try:
                                fns[case.name, r] = RUNTIMES[r].call(forms[case.name, r], case.x, t)
                            except Exception as e:
                                _log.warning("%s: %s failed (%s: %s)", case.name, r, type(e).__name__, e)
                                rows[case.name].errors[r] = f"{type(e).__name__}: {str(e)[:200]}"
                with torch.inference_mode():
                    bar = tqdm(total=iters, desc=f"CPU {t} thread(s)", disable=not show_progress)
                    times = time_interleaved(fns, warmup, iters, bar)
                    bar.close()
                for (name, r), v in times.items():
                    rows[name].latency_ms.setdefault(r, {})[key] = latency_summary(v)
            if gpu:
                torch.backends.cudnn.benchmark = True
                for case in tqdm(cases, desc="GPU", disable=not show_progress):
                    m, row = forms[case.name, "eager"], rows[case.name]
                    row.gpu_fp32_b32_img_s = round(_gpu_throughput(m, img_size, 32, amp=False), 1)
                    best = max((_gpu_throughput(m, img_size, b, amp=True), b) for b in (64, 128, 256))
                    row.gpu_best_img_s, row.gpu_best_batch = round(best[0], 1), best[1]
                    m.cpu()
    finally:
        torch.set_num_threads(caller_threads)
    return {
        "environment": environment(),
        "settings": dict(img_size=img_size, threads=list(threads), warmup=warmup, iters=iters, runtimes=runtimes,
                         batch=1, dtype="float32",
                         form="inference form (BatchNorm folded; timm.utils.reparameterize_model)",
                         int8_calibration=calib or ("generated images (speed only)"
                                                    if any("int8" in r for r in runtimes) else None)),
        "matmul_peak_gflops": peaks,
        "rows": [asdict(r) for r in rows.values()],
    }


def median_ms(row: Dict[str, Any], runtime: str, key: str) -> Optional[float]:
    """A row's median latency in ``runtime`` at thread count ``key`` ("1t"), None where it was not timed."""
    return row["latency_ms"].get(runtime, {}).get(key, {}).get("median")


def format_table(results: Dict[str, Any]) -> str:
    """The results as a markdown table, with the matmul peaks below it."""
    rows = results["rows"]
    keys = [f"{t}t" for t in results["settings"]["threads"]]
    others = [r for r in results["settings"]["runtimes"] if r not in ("eager", "train-form")]
    show_train = any("train-form" in r["latency_ms"] for r in rows)
    head = ["model", "params M", "GFLOPs"]
    for k in keys:
        head += [f"ms {k}", f"p10-p90 {k}", f"GFLOP/s {k}"]
    if show_train:
        head += [f"train-form ms {keys[0]}", "fuse speed-up"]
    for r in others:
        head += [f"{RUNTIMES[r].label} ms {k}" for k in keys]
    gpu = any(r["gpu_fp32_b32_img_s"] for r in rows)
    if gpu:
        head += ["GPU fp32 b32 img/s", "GPU best img/s (batch)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["model"], f"{row['params_m']:.2f}", f"{row['gflops']:.3f}"]
        for k in keys:
            t = row["latency_ms"].get("eager", {}).get(k)
            cells += ([f"{t['median']:.2f}", f"{t['p10']:.2f}-{t['p90']:.2f}",
                       f"{2 * row['gflops'] / (t['median'] / 1e3):.1f}"] if t else ["", "", ""])
        if show_train:
            tf, eager = median_ms(row, "train-form", keys[0]), median_ms(row, "eager", keys[0])
            cells += [f"{tf:.2f}" if tf else "", f"{tf / eager:.2f}x" if tf and eager else ""]
        for r in others:
            cells += [f"{v:.2f}" if (v := median_ms(row, r, k)) is not None else "" for k in keys]
        if gpu:
            cells += [f"{row['gpu_fp32_b32_img_s']}", f"{row['gpu_best_img_s']} ({row['gpu_best_batch']})"]
        lines.append("| " + " | ".join(cells) + " |")
    peaks = ", ".join(f"{k}: {v} GFLOP/s" for k, v in results["matmul_peak_gflops"].items())
    lines += ["", f"fp32 1024x1024 matmul peak in the same run: {peaks}"]
    compile_s = [f"{r['model']} {r['compile_s']} s" for r in rows if r.get("compile_s") is not None]
    if compile_s:
        lines.append(f"torch.compile time (first call included, not in the latencies): {', '.join(compile_s)}")
    errors = [f"{r['model']} {rt}: {e}" for r in rows for rt, e in r["errors"].items()]
    if errors:
        lines.append("not timed: " + "; ".join(errors))
    return "\n".join(lines)


def _flat_row(row: Dict[str, Any]) -> Dict[str, Any]:
    d = {k: v for k, v in row.items() if not isinstance(v, dict)}
    for runtime, per_threads in row["latency_ms"].items():
        for key, stats in per_threads.items():
            d.update({f"{runtime}_{key}_{s}_ms": v for s, v in stats.items()})
    d.update({f"error_{k}": v for k, v in row["errors"].items()})
    return d


def write_results(results: Dict[str, Any], out_dir: Path) -> Dict[str, Path]:
    """Write ``bench.json``, ``bench.csv``, ``bench.md`` (the table) and ``bench.png`` into ``out_dir``, as a unit: a
    failure or kill leaves the previous four files, never a new table beside an old plot."""
    paths = {k: out_dir / f"bench.{k}" for k in ("csv", "md", "png", "json")}  # the record, bench.json, last
    flat = [_flat_row(r) for r in results["rows"]]
    with atomic_files(*paths.values()) as staged:
        (staged / "bench.json").write_text(json.dumps(results, indent=2))
        names = sorted({k for d in flat for k in d}, key=lambda k: (k != "model", k))
        with open(staged / "bench.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=names)
            w.writeheader()
            w.writerows(flat)
        (staged / "bench.md").write_text(format_table(results) + f"\n\n{machine_line(results['environment'])}\n")
        _plot(results, staged / "bench.png")
    return paths


def _plot(results: Dict[str, Any], path: Path) -> None:
    """Eager latency (first thread count) against FLOPs, one line per model family (PATNet, FasterNet, others)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = f"{results['settings']['threads'][0]}t"
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    families: Dict[str, List[Dict[str, Any]]] = {}
    for r in results["rows"]:
        if median_ms(r, "eager", key) is not None:
            families.setdefault(r["model"].split("_")[0], []).append(r)
    for fam, rs in families.items():
        rs = sorted(rs, key=lambda r: r["gflops"])
        ax.plot([r["gflops"] for r in rs], [median_ms(r, "eager", key) for r in rs], "o-", label=fam)
        for r in rs:
            ax.annotate(r["model"].split("_", 1)[-1], (r["gflops"], median_ms(r, "eager", key)), fontsize=7,
                        textcoords="offset points", xytext=(3, 3))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"GFLOPs (multiply-accumulates) at {results['settings']['img_size']} px")
    ax.set_ylabel(f"CPU latency, batch 1, {key[:-1]} thread(s) [ms]")
    env = results["environment"]
    ax.set_title(f"Deployment form, {env['cpu'][:40]}\ntorch {env['torch']}, {env['date']}", fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def save_figure(fig: Any, path: Path) -> None:
    """A matplotlib figure laid out, written as PNG to ``path`` (a staged temporary) and closed whatever happens."""
    import matplotlib.pyplot as plt

    try:
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)


@dataclass
class BenchOptions:
    models: str = option("patnet_t0,fasternet_t0,patnet_t2,fasternet_t2", "comma-separated model names")
    img_size: int = option(224, "input size")
    threads: List[int] = option((1, 2), "CPU thread counts")
    warmup: int = option(10, "untimed forwards first")
    iters: int = option(200, "timed forwards per model and thread count")
    runtime: str = option("eager", "comma-separated runtimes besides PyTorch eager: " + ", ".join(RUNTIMES))
    calib: Optional[str] = option(None, "int8 calibration data (as patnet train --data); default generated images")
    train_form: bool = option(True, "skip timing PATNet's unfused training form")
    gpu: bool = option(True, "skip GPU throughput even if CUDA is present")
    output: Path = option(Path("outputs/bench"), "folder for json/csv/md/png")


def run_script(prog: str, doc: str, options: Any, work: Callable[[Any], None], argv: Optional[List[str]]) -> int:
    """A benchmark program's command line: flags generated from the ``options`` dataclass (as ``patnet``'s are),
    our loggers at INFO, ``work(options)`` called, a user error reported in one line (``--traceback`` for all)."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0])
    parser.add_argument("--traceback", action="store_true", help="show the full traceback on errors")
    add_arguments(parser, options)
    args = parser.parse_args(argv)
    configure_logging(ours=("patnet", "benchmarks"))
    chosen = options(**{f.name: getattr(args, f.name) for f in fields(options)})
    return report_errors(lambda: work(chosen), prog, args.traceback)


def split_list(text: str) -> List[str]:
    """A comma-separated flag value as its items."""
    return [item.strip() for item in text.split(",") if item.strip()]


def _bench(o: BenchOptions) -> None:
    results = run_benchmark(split_list(o.models), o.img_size, o.threads, o.warmup, o.iters, split_list(o.runtime),
                            train_form=o.train_form, gpu=None if o.gpu else False, calib=o.calib)
    paths = write_results(results, o.output)
    print(format_table(results))
    print("wrote " + ", ".join(str(p) for p in paths.values()))


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m benchmarks.bench``: time, print the table, write ``bench.{json,csv,md,png}``."""
    return run_script("python -m benchmarks.bench", __doc__, BenchOptions, _bench, argv)


if __name__ == "__main__":
    sys.exit(main())
