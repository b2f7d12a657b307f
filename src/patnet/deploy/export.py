"""Deployment: the inference form of any timm model, and verified ONNX / TorchScript export.

``deploy_form`` is what every benchmark and export uses: ``timm.utils.reparameterize_model`` (PATNet's ``fuse()``
methods fold every BatchNorm), then torch.fx's conv+BN folding for whatever BatchNorm remains (timm's FasterNet,
for one, has no ``fuse()`` of its own).

Exports are checked on the spot: the written file is loaded (onnxruntime / torch.jit), run at batch 1 (and 8 with
a dynamic batch) and compared with the PyTorch model; beyond tolerance the file is removed and an error raised.
ONNX uses opset 18 and torch's TorchScript-based exporter: the graph has a fixed image size (the relative-position
bias is a constant for it) and, with ``dynamic_batch``, a symbolic batch axis named ``batch``. Partial channels are
taken with Split and joined with Concat; the graph has no in-place slice assignment (ScatterND).
"""
import io
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn

from ..config import DEFAULT_TOLERANCE, ONNX_OPSET
from ..data import check_input_size
from ..errors import PatnetError
from ..io import atomic_path, check_writable
from .executorch import lower_to_executorch
from .runtime import ModelRunner, Preprocess, require, write_preprocess

__all__ = ["deploy_form", "compiled_form", "CompiledModel", "export_model", "export_onnx_file", "ExportReport",
           "ExportError"]


_log = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript", "executorch")
MAX_OPSET = 20  # the newest opset torch's TorchScript-based exporter writes


class ExportError(PatnetError):
    """The exported file does not reproduce the PyTorch model."""


def _count_bn(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def deploy_form(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with BatchNorm folded wherever the algebra allows."""
    from timm.utils import reparameterize_model

    fused = reparameterize_model(model.eval())
    if _count_bn(fused):
        try:
            from torch.fx.experimental.optimization import fuse as fx_fuse

            folded = fx_fuse(fused)
            _log.debug("fx folded %d of %d BatchNorms", _count_bn(fused) - _count_bn(folded), _count_bn(fused))
            fused = folded
        except Exception as e:  # a model FX cannot trace keeps its BatchNorms, and says so
            _log.warning("could not fold BatchNorm with torch.fx (%s: %s); timing unfolded", type(e).__name__, e)
    return fused.eval()


# Compiled and eager results may differ by float reassociation (inductor fuses and reorders reductions); this
# bound (of the largest logit) is ten times the fusion bar and far below any change of a prediction.
COMPILE_TOLERANCE = 1e-4


class CompiledModel(nn.Module):
    """A compiled deployment form, with what compiling it cost (``compile_seconds``, first call included)."""

    def __init__(self, compiled: nn.Module, compile_seconds: float, max_rel_error: float) -> None:
        super().__init__()
        self.compiled = compiled
        self.compile_seconds = compile_seconds
        self.max_rel_error = max_rel_error

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.compiled(x)


def compiled_form(model: nn.Module, example: torch.Tensor, freezing: bool = True, mode: Optional[str] = None,
                  tolerance: float = COMPILE_TOLERANCE) -> CompiledModel:
    """``deploy_form(model)`` compiled with torch.compile (inductor), for serving from Python on CPU.

    Compiles for ``example``'s shape (batch and image size; another shape recompiles once) under
    ``torch.inference_mode``, with inductor's freezing (weights become constants, so conv weights are pre-packed)
    unless ``freezing=False``. The compiled model is run on ``example`` and checked against the eager deployment
    form; beyond ``tolerance`` of the largest logit it raises ``ExportError``. Call the result under
    ``torch.inference_mode()`` (or ``no_grad``), as frozen graphs require. ``model`` is not modified.
    """
    import time

    deploy = deploy_form(model)
    compiled = torch.compile(deploy, backend="inductor", mode=mode, options={"freezing": freezing})
    with torch.inference_mode():
        expected = deploy(example)
        start = time.perf_counter()
        out = compiled(example)
        seconds = time.perf_counter() - start
    err = _rel_err(out, expected)
    if not err <= tolerance:
        raise ExportError(f"compiled model differs from eager by {err:.2e} of the largest logit (> {tolerance:g})")
    _log.info("compiled in %.1f s, relative error %.1e", seconds, err)
    return CompiledModel(compiled, seconds, err)


@dataclass
class ExportReport:
    """What was written and how well it reproduces PyTorch."""

    path: Path
    format: str
    img_size: Tuple[int, int]
    dynamic_batch: bool
    max_rel_error: Dict[int, float] = field(default_factory=dict)  # batch size -> error / max |logit|
    opset: Optional[int] = None


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


def export_onnx_file(model: nn.Module, example: torch.Tensor, path: Path, dynamic_batch: bool, opset: int) -> None:
    """Write ``model`` traced on ``example`` as ONNX (no verification; ``export_model`` verifies).

    Not ``timm.utils.onnx.onnx_export``: it checks with ``onnx.checker`` and an optional single comparison, writes
    the file in place, and picks the exporter from the torch version; here the file goes through ``atomic_path``,
    the TorchScript exporter is pinned (the inference form's Convs quantize cleanly from it), and ``export_model``
    verifies every batch size the file claims to accept before it exists under its name.
    """
    require("onnx")
    require("onnxscript")
    kwargs = {}
    if dynamic_batch:
        kwargs["dynamic_axes"] = {"input": {0: "batch"}, "output": {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python ints from shapes: sizes are fixed here
        torch.onnx.export(
            model, (example,), str(path), input_names=["input"], output_names=["output"], opset_version=opset,
            dynamo=False, **kwargs,
        )


def _export_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            scripted = torch.jit.script(model)
        except Exception as e:  # not every timm model scripts; tracing fixes the image size instead
            _log.info("torch.jit.script failed (%s); tracing at %s instead", type(e).__name__, tuple(example.shape))
            scripted = torch.jit.trace(model, example)
        buffer = io.BytesIO()  # TorchScript's file writer aborts the interpreter on a full disk; Python's raises
        torch.jit.save(torch.jit.freeze(scripted.eval()), buffer)
    path.write_bytes(buffer.getvalue())


def export_model(
        model: nn.Module,
        out: Union[str, Path],
        fmt: str = "onnx",
        img_size: Tuple[int, int] = (224, 224),
        dynamic_batch: bool = False,
        opset: int = ONNX_OPSET,
        tolerance: float = DEFAULT_TOLERANCE,
        progress: bool = False,
) -> ExportReport:
    """Export ``model``'s deployment form to ONNX, TorchScript or ExecuTorch and verify it against PyTorch.

    Args:
        model: Any timm-style classifier (PATNet or not); it is not modified.
        out: Output file; written atomically, so a failed export leaves nothing behind.
        fmt: 'onnx', 'torchscript' or 'executorch' (an XNNPACK ``.pte`` at batch 1; ``patnet.deploy.executorch``).
        img_size: (H, W) of the example input (the ONNX graph is fixed to it).
        dynamic_batch: Make the batch axis symbolic (verified at batch 1 and 8).
        opset: ONNX opset.
        tolerance: Largest allowed |export - pytorch| as a fraction of the largest |logit|.
        progress: Show a progress bar over the steps (folding, export, one verification per batch size).

    Raises:
        ExportError: The exported file does not reproduce the model within ``tolerance``.
        ImportError: onnx / onnxruntime are missing for an ONNX export.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        require("onnxruntime")
    if fmt == "executorch":
        require("executorch", "executorch")
        if dynamic_batch:
            raise ValueError("an ExecuTorch program is exported at batch 1; drop --dynamic-batch")
    if len(img_size) != 2 or min(img_size) < 1:
        raise ValueError(f"image size must be two positive numbers (H W), got {list(img_size)}")
    check_input_size(int(img_size[0]), int(img_size[1]), "--img-size")
    if fmt == "onnx" and not 14 <= opset <= MAX_OPSET:
        raise ValueError(f"ONNX opset {opset} is not supported; use 14 to {MAX_OPSET} (default {ONNX_OPSET})")
    path = check_writable(out)
    from tqdm.auto import tqdm

    batches: List[int] = [1, 8] if dynamic_batch else [1]
    bar = tqdm(total=2 + len(batches), desc=f"export {fmt}", disable=not progress, leave=False)
    try:
        bar.set_postfix_str("folding")
        was_training = model.training
        deploy = deploy_form(model)
        reference = model.eval()
        in_chans = getattr(model, "in_chans", 3)
        example = torch.randn(1, in_chans, *img_size)
        inputs = {b: torch.randn(b, in_chans, *img_size, generator=torch.Generator().manual_seed(b)) for b in batches}
        with torch.no_grad():
            try:
                expected = {b: reference(x) for b, x in inputs.items()}
            finally:
                model.train(was_training)
        bar.update(1)
        bar.set_postfix_str("writing")
        report = ExportReport(path, fmt, tuple(img_size), dynamic_batch, opset=opset if fmt == "onnx" else None)
        with atomic_path(path) as tmp:
            with torch.no_grad():
                if fmt == "onnx":
                    export_onnx_file(deploy, example, tmp, dynamic_batch, opset)
                    arch = str(getattr(model, "pretrained_cfg", {}).get("architecture", ""))
                    write_preprocess(tmp, Preprocess.for_model(model, arch, img_size))
                    runner = ModelRunner(tmp)  # one session for every verified batch size
                    run = lambda x: torch.from_numpy(runner(x.numpy()))  # noqa: E731
                elif fmt == "executorch":
                    tmp.write_bytes(lower_to_executorch(deploy, example)[0])
                    program = ModelRunner(tmp, runtime="executorch")
                    run = lambda x: torch.from_numpy(program(x.numpy()))  # noqa: E731
                else:
                    _export_torchscript(deploy, example, tmp)
                    loaded = torch.jit.load(str(tmp))
                    run = loaded
                bar.update(1)
                for b, x in inputs.items():
                    bar.set_postfix_str(f"verifying batch {b}")
                    report.max_rel_error[b] = _rel_err(run(x), expected[b])
                    bar.update(1)
            bad = {b: e for b, e in report.max_rel_error.items() if not e <= tolerance}
            if bad:
                raise ExportError(
                    f"{fmt} export does not reproduce the model: relative error {bad} exceeds {tolerance:g}; "
                    "nothing was written"
                )
    finally:
        bar.close()  # also on failure, so an error message starts on a line of its own
    _log.info("exported %s (%s), relative error %s", path, fmt, report.max_rel_error)
    return report
