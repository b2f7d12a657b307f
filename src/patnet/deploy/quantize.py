"""int8 deployment: ONNX Runtime static QDQ or OpenVINO + NNCF, calibrated and verified on real images.

``quantize_model`` exports a model's inference form (``patnet.deploy.deploy_form``: every convolution a
static-weight Conv, gates as elementwise multiplies, BatchNorm folded) to ONNX, calibrates activation ranges on
images of a dataset through the model's eval transform, and writes an int8 model for one runtime:

* ``onnxruntime``: a QDQ ONNX file from ONNX Runtime's quantization tools, per-channel int8 weights, uint8
  activations. Quantized are the weight-bearing operators (Conv, Gemm, and MatMul with a constant weight). Left in
  fp32, by measurement (docs, "int8"): activation-by-activation products (PATNet's attention, q.k and attn.v),
  softmax, normalisation and PATNet's channel-gate layer (a 1x1 conv on a 1x1 map of statistics, whose
  quantization costs more in Quantize/Dequantize nodes than it saves).
* ``openvino``: an OpenVINO IR (``OUT.xml`` + ``OUT.bin``) quantized by NNCF post-training quantization with its
  CPU defaults (``nncf_quantize``; the fastest setting measured, ``experiments/nncf_options.py``). The fastest int8
  path on Intel CPUs with AMX.
* ``executorch``: an ExecuTorch program (``OUT.pte``) for XNNPACK, quantized by ExecuTorch's ``XNNPACKQuantizer``
  from the PyTorch model itself (``patnet.deploy.executorch``), batch 1. PyTorch's route to phones and boards.

The written model is verified before it is kept: on held-out images (the val split) it is run beside its fp32
twin in the same runtime, and top-1 agreement, and top-1 accuracy when labels exist, are measured. A drop beyond
``max_drop`` points (accuracy when labelled, disagreement otherwise) writes nothing and raises ``QuantizeError``.
The report goes next to the model as JSON (``OUT.json``), and model and report are written as a unit.
``patnet.deploy.evaluate_file`` scores either kind of file later.
"""
import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from ..config import CALIBRATION_METHODS, DEFAULT_MAX_DROP
from ..data import resolve_dataset
from ..errors import PatnetError
from ..io import atomic_files, check_writable, temporary_folder
from .executorch import lower_to_executorch
from .export import deploy_form, export_model
from .runtime import PTE_SUFFIX, IR_SUFFIX, ModelRunner, Preprocess, image_batches, require, top1_of, write_preprocess

__all__ = ["QuantizeError", "QuantizeReport", "quantize_model", "quantize_onnx", "nncf_quantize", "RUNTIMES"]

_log = logging.getLogger(__name__)

MIN_CALIB_IMAGES = 8
RUNTIMES = ("onnxruntime", "openvino", "executorch")
SUFFIX = {"onnxruntime": ".onnx", "openvino": IR_SUFFIX, "executorch": PTE_SUFFIX}


class QuantizeError(PatnetError):
    """The int8 model loses more accuracy than allowed, or the calibration data cannot be used."""


@dataclass
class QuantizeReport:
    """What ``quantize_model`` wrote and how the int8 file compares with fp32 on held-out images."""

    path: str
    model: str
    runtime: str
    method: str  # calibration: ONNX Runtime's minmax / entropy / percentile, 'nncf' or 'pt2e'

    img_size: Tuple[int, int]
    calib_images: int
    eval_images: int
    top1_agreement: float  # percent of held-out images where int8 and fp32 pick the same class
    top1_fp32: Optional[float]  # percent, when the data has labels
    top1_int8: Optional[float]
    drop: float  # points: top1_fp32 - top1_int8 when labelled, else 100 - agreement
    max_drop: float
    fp32_export_rel_error: float
    quantized_nodes: Dict[str, int] = field(default_factory=dict)
    fp32_nodes: int = 0
    # SHA-256 of each model file this report describes (the .bin too for OpenVINO), so a reader can check that a
    # report and the model beside it are one run's
    sha256: Dict[str, str] = field(default_factory=dict)


def _sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks (a model may be up to 2 GiB)."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _quantizable_nodes(path: Path) -> Tuple[List[str], List[str]]:
    """(nodes to quantize, nodes to keep fp32) among Conv / Gemm / MatMul, by the rule in the module docstring."""
    import onnx

    graph = onnx.load(str(path)).graph
    constants = {i.name for i in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    keep: List[str] = []
    quant: List[str] = []
    for n in graph.node:
        if n.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        has_weight = len(n.input) > 1 and (n.input[1] in constants)
        if not has_weight or "/gate/" in n.name:
            keep.append(n.name)
        else:
            quant.append(n.name)
    return quant, keep


class _Reader:
    """ONNX Runtime's CalibrationDataReader over a list of batches."""

    def __init__(self, batches: List[np.ndarray]) -> None:
        self._it = iter(batches)

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        batch = next(self._it, None)
        return None if batch is None else {"input": batch}

    def rewind(self) -> None:  # not needed: each calibrator pass gets a fresh reader
        pass


def quantize_onnx(src: Path, dst: Path, calib: Sequence[np.ndarray], method: str = "minmax") -> Tuple[int, int]:
    """Quantize the fp32 ONNX file ``src`` into ``dst`` (QDQ, per-channel int8 weights, uint8 activations),
    calibrated on the input batches ``calib``; returns (quantized nodes, weight-bearing nodes kept fp32)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in CALIBRATION_METHODS:
        raise ValueError(f"unknown calibration method {method!r}; use one of {', '.join(CALIBRATION_METHODS)}")
    with temporary_folder("patnet-quant-") as tmp:
        prepped = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(prepped), skip_symbolic_shape=True)
        quant_nodes, fp32_nodes = _quantizable_nodes(prepped)
        _log.info("quantizing %d Conv/Gemm/MatMul nodes (%s calibration on %d batches); %d stay fp32",
                  len(quant_nodes), method, len(calib), len(fp32_nodes))
        quantize_static(
            str(prepped), str(dst), _Reader(list(calib)), quant_format=QuantFormat.QDQ,
            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            op_types_to_quantize=["Conv", "Gemm", "MatMul"], nodes_to_quantize=quant_nodes,
            calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                              "percentile": CalibrationMethod.Percentile}[method],
        )
    return len(quant_nodes), len(fp32_nodes)


def nncf_quantize(model: Any, calib: Sequence[np.ndarray], preset: str = "performance",
                  model_type: Optional[str] = None, fast_bias_correction: bool = True) -> Any:
    """An OpenVINO model (``openvino.Model``) quantized to int8 by NNCF post-training quantization.

    ``calib`` are input batches (one image each is best: NNCF collects statistics per batch). ``preset``
    'performance' (symmetric activations, NNCF's default for CPUs) or 'mixed' (asymmetric activations);
    ``model_type`` 'transformer' makes NNCF keep more of attention's neighbourhood in fp32.
    """
    import nncf

    if preset not in ("performance", "mixed"):
        raise ValueError(f"unknown NNCF preset {preset!r}; use 'performance' or 'mixed'")
    kwargs: Dict[str, Any] = {}
    if model_type is not None:
        kwargs["model_type"] = {"transformer": nncf.ModelType.TRANSFORMER}[model_type]
    return nncf.quantize(
        model, nncf.Dataset(list(calib)), subset_size=len(calib), target_device=nncf.TargetDevice.CPU,
        preset=nncf.QuantizationPreset.PERFORMANCE if preset == "performance" else nncf.QuantizationPreset.MIXED,
        fast_bias_correction=fast_bias_correction, **kwargs,
    )


def quantize_model(
        model: nn.Module,
        out: Union[str, Path],
        data: str,
        name: str = "",
        img_size: Optional[Sequence[int]] = None,
        crop_pct: Optional[float] = None,
        method: str = "minmax",
        calib_images: int = 256,
        eval_images: int = 1000,
        max_drop: float = DEFAULT_MAX_DROP,
        seed: int = 0,
        show_progress: bool = True,
        runtime: str = "onnxruntime",
) -> QuantizeReport:
    """Quantize ``model`` to a verified int8 model for ``runtime`` (see the module docstring).

    Args:
        model: Any timm classifier (PATNet or not); it is not modified.
        out: The file to write: ``.onnx`` for ONNX Runtime, ``.xml`` for OpenVINO (its ``.bin`` goes beside it);
            the report goes to ``out`` with suffix ``.json``. Nothing is replaced unless all of it is written.
        data: Calibration and evaluation data (``patnet train --data``): calibration images come from its train
            split, verification images from its val split.
        name: The model's registered name (recorded in the report and metadata).
        img_size: (H, W); default the model's data config.
        crop_pct: Eval centre-crop fraction; default the model's data config.
        method: ONNX Runtime calibration: 'minmax', 'entropy' or 'percentile' (OpenVINO: NNCF's own statistics).
        calib_images: Images used to calibrate activation ranges (at least 8).
        eval_images: Held-out images used to verify the int8 model.
        max_drop: Largest accepted top-1 loss in points (see ``DEFAULT_MAX_DROP``).
        seed: Which calibration images are drawn.
        runtime: 'onnxruntime' (QDQ ONNX), 'openvino' (NNCF IR) or 'executorch' (XNNPACK ``.pte``).

    Raises:
        QuantizeError: Calibration data too small or of the wrong channel count, or the int8 model loses more than
            ``max_drop`` points (nothing is written).
    """
    from tqdm.auto import tqdm

    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; use {' or '.join(RUNTIMES)}")
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"unknown calibration method {method!r}; use one of {', '.join(CALIBRATION_METHODS)}")
    if calib_images < MIN_CALIB_IMAGES:
        raise ValueError(f"--calib-images must be at least {MIN_CALIB_IMAGES}, got {calib_images}")
    if eval_images < 1:
        raise ValueError(f"--eval-images must be at least 1, got {eval_images}")
    if not max_drop >= 0:
        raise ValueError(f"--max-drop must be >= 0 points, got {max_drop}")
    out = Path(out)
    if out.suffix != SUFFIX[runtime]:  # before check_writable, which creates the folder
        raise ValueError(f"an int8 model for {runtime} is written as {SUFFIX[runtime]}, not {out.name}")
    out = check_writable(out)
    report_path = out.with_suffix(".json")
    require("onnxruntime")
    if runtime == "executorch":
        require("executorch", "executorch")
    if runtime == "openvino":
        require("openvino", "openvino")
        require("nncf", "openvino")
    in_chans = int(getattr(model, "in_chans", 3))
    if in_chans != 3:
        raise QuantizeError(f"{name or 'the model'} takes {in_chans}-channel input, but calibration images are "
                            "read as 3-channel RGB; quantize a 3-channel model")
    pre = Preprocess.for_model(model, name, img_size, crop_pct)
    resolve_dataset(data)  # a missing or malformed dataset fails here, before any progress bar

    calib = list(tqdm(image_batches(data, "train", pre, calib_images, batch_size=1, seed=seed),
                      total=calib_images, desc="calibration images", disable=None if show_progress else True))
    if len(calib) < calib_images:
        raise QuantizeError(f"{data} gave {len(calib)} readable training images; --calib-images {calib_images} "
                            f"needs that many (pass a smaller --calib-images, at least {MIN_CALIB_IMAGES})")
    # Batches of 64, as ``evaluate_file`` uses: int8 kernels may round differently at other batch sizes.
    held_out = list(image_batches(data, "val", pre, eval_images, batch_size=64, seed=None))
    if not held_out:
        raise QuantizeError(f"{data} has no readable val images to verify the int8 model on")

    outputs = [report_path, out.with_suffix(".bin"), out] if runtime == "openvino" else [report_path, out]
    with temporary_folder("patnet-quant-") as tmp, atomic_files(*outputs) as staged:
        fmt = "executorch" if runtime == "executorch" else "onnx"
        fp32 = Path(tmp) / ("fp32.pte" if fmt == "executorch" else "fp32.onnx")
        report32 = export_model(model, fp32, fmt, pre.img_size, dynamic_batch=fmt == "onnx")
        int8 = staged / out.name
        if runtime == "executorch":
            program, n_quant = lower_to_executorch(
                deploy_form(model), torch.from_numpy(calib[0][0]), [torch.from_numpy(x) for x, _ in calib])
            int8.write_bytes(program)
            counts, n_fp32, used = {}, 0, "pt2e"
            reference = ModelRunner(fp32)  # the fp32 twin, in the same runtime
        elif runtime == "openvino":
            import openvino as ov

            quantized = nncf_quantize(ov.Core().read_model(str(fp32)), [x for x, _ in calib])
            quantized.set_rt_info(pre.to_json(), ["patnet", "preprocess"])
            ov.save_model(quantized, str(int8), compress_to_fp16=False)
            counts = {"FakeQuantize": sum(op.get_type_name() == "FakeQuantize" for op in quantized.get_ops())}
            n_quant, n_fp32, used = counts["FakeQuantize"], 0, "nncf"
            reference = ModelRunner(fp32, runtime="openvino")  # the fp32 twin, in the same runtime
        else:
            n_quant, n_fp32 = quantize_onnx(fp32, int8, [x for x, _ in calib], method)
            write_preprocess(int8, pre)
            import onnx

            counts = {}
            for node in onnx.load(str(int8)).graph.node:
                if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
                    counts[node.op_type] = counts.get(node.op_type, 0) + 1
            used = method
            reference = ModelRunner(fp32)
        bar = tqdm(total=2, desc="verifying int8", disable=None if show_progress else True)
        p32 = top1_of(reference, held_out)
        bar.update(1)
        p8 = top1_of(ModelRunner(int8), held_out)
        bar.update(1)
        bar.close()
        labels = np.concatenate([y for _, y in held_out])
        agreement = float((p32 == p8).mean() * 100)
        labelled = bool((labels >= 0).all())
        top1_32 = float((p32 == labels).mean() * 100) if labelled else None
        top1_8 = float((p8 == labels).mean() * 100) if labelled else None
        drop = (top1_32 - top1_8) if labelled else 100 - agreement
        report = QuantizeReport(
            str(out), name, runtime, used, pre.img_size, len(calib), len(labels), round(agreement, 3),
            None if top1_32 is None else round(top1_32, 3), None if top1_8 is None else round(top1_8, 3),
            round(drop, 3), max_drop, report32.max_rel_error[1], {"quantized": n_quant, **counts}, n_fp32,
            {t.name: _sha256(staged / t.name) for t in outputs[1:]},
        )
        if drop > max_drop:
            raise QuantizeError(
                f"int8 model loses {drop:.2f} top-1 points on {len(labels)} held-out images (agreement "
                f"{agreement:.1f}%), more than --max-drop {max_drop:g}; nothing was written"
                + (" (try --method entropy or percentile, or more --calib-images)" if runtime == "onnxruntime"
                   else " (try more --calib-images)"))
        (staged / report_path.name).write_text(json.dumps(asdict(report), indent=2))
    return report

