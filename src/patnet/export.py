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
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn

from .errors import PatnetError
from .io import atomic_path, check_writable

__all__ = ["deploy_form", "export_model", "ExportReport", "ExportError", "ONNX_OPSET"]

_log = logging.getLogger(__name__)

ONNX_OPSET = 18
# An export must match PyTorch within this fraction of the largest logit (the fusion bar of the deployment issue).
DEFAULT_TOLERANCE = 1e-5


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


def _require(module: str, extra: str = "deploy") -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ImportError(f"{module} is not installed: pip install 'patnet[{extra}]'")


def export_onnx_file(model: nn.Module, example: torch.Tensor, path: Path, dynamic_batch: bool, opset: int) -> None:
    """Write ``model`` traced on ``example`` as ONNX (no verification; ``export_model`` verifies)."""
    _require("onnx")
    _require("onnxscript")
    kwargs = {}
    if dynamic_batch:
        kwargs["dynamic_axes"] = {"input": {0: "batch"}, "output": {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python ints from shapes: sizes are fixed here
        torch.onnx.export(
            model, (example,), str(path), input_names=["input"], output_names=["output"], opset_version=opset,
            dynamo=False, **kwargs,
        )


def _run_onnx(path: Path, x: torch.Tensor) -> torch.Tensor:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"input": x.numpy()})[0])


def _export_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            scripted = torch.jit.script(model)
        except Exception as e:  # not every timm model scripts; tracing fixes the image size instead
            _log.info("torch.jit.script failed (%s); tracing at %s instead", type(e).__name__, tuple(example.shape))
            scripted = torch.jit.trace(model, example)
        torch.jit.save(torch.jit.freeze(scripted.eval()), str(path))


def export_model(
        model: nn.Module,
        out: Union[str, Path],
        fmt: str = "onnx",
        img_size: Tuple[int, int] = (224, 224),
        dynamic_batch: bool = False,
        opset: int = ONNX_OPSET,
        tolerance: float = DEFAULT_TOLERANCE,
) -> ExportReport:
    """Export ``model``'s deployment form to ONNX or TorchScript and verify it against PyTorch.

    Args:
        model: Any timm-style classifier (PATNet or not); it is not modified.
        out: Output file; written atomically, so a failed export leaves nothing behind.
        fmt: 'onnx' or 'torchscript'.
        img_size: (H, W) of the example input (the ONNX graph is fixed to it).
        dynamic_batch: Make the batch axis symbolic (verified at batch 1 and 8).
        opset: ONNX opset.
        tolerance: Largest allowed |export - pytorch| as a fraction of the largest |logit|.

    Raises:
        ExportError: The exported file does not reproduce the model within ``tolerance``.
        ImportError: onnx / onnxruntime are missing for an ONNX export.
    """
    if fmt not in ("onnx", "torchscript"):
        raise ValueError(f"unknown export format {fmt!r}; use 'onnx' or 'torchscript'")
    if fmt == "onnx":
        _require("onnxruntime")
    path = check_writable(out)
    reference = model.eval()
    deploy = deploy_form(model)
    in_chans = getattr(model, "in_chans", 3)
    example = torch.randn(1, in_chans, *img_size)
    batches: List[int] = [1, 8] if dynamic_batch else [1]
    inputs = {b: torch.randn(b, in_chans, *img_size, generator=torch.Generator().manual_seed(b)) for b in batches}
    with torch.no_grad():
        deploy(example)  # fills the per-size caches so the graph holds constants, not their computation
        expected = {b: reference(x) for b, x in inputs.items()}
    report = ExportReport(path, fmt, tuple(img_size), dynamic_batch, opset=opset if fmt == "onnx" else None)
    with atomic_path(path) as tmp:
        with torch.no_grad():
            if fmt == "onnx":
                export_onnx_file(deploy, example, tmp, dynamic_batch, opset)
                run = lambda x: _run_onnx(tmp, x)  # noqa: E731
            else:
                _export_torchscript(deploy, example, tmp)
                loaded = torch.jit.load(str(tmp))
                run = loaded
            for b, x in inputs.items():
                report.max_rel_error[b] = _rel_err(run(x), expected[b])
        bad = {b: e for b, e in report.max_rel_error.items() if not e <= tolerance}
        if bad:
            raise ExportError(
                f"{fmt} export does not reproduce the model: relative error {bad} exceeds {tolerance:g}; "
                "nothing was written"
            )
    _log.info("exported %s (%s), relative error %s", path, fmt, report.max_rel_error)
    return report
