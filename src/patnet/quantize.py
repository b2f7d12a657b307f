"""int8 deployment: static QDQ quantization with ONNX Runtime, calibrated and verified on real images.

``quantize_model`` exports a model's inference form (``patnet.export.deploy_form``: every convolution a
static-weight Conv, gates as elementwise multiplies, BatchNorm folded), calibrates activation ranges on images of
a dataset through the model's eval transform, and writes a QDQ int8 ONNX file with ONNX Runtime's quantization
tools: per-channel int8 weights, uint8 activations. Quantized are the weight-bearing operators (Conv, Gemm, and
MatMul with a constant weight). Left in fp32, by measurement (README, "int8"): activation-by-activation products
(PATNet's attention, q.k and attn.v), softmax, normalisation and PATNet's channel-gate layer (a 1x1 conv on a 1x1
map of statistics, whose quantization costs more in Quantize/Dequantize nodes than it saves).

The written file is verified before it is kept: on held-out images (the val split) the int8 file is run beside
its fp32 ONNX twin, and top-1 agreement, and top-1 accuracy when labels exist, are measured. A drop beyond
``max_drop`` points (accuracy when labelled, disagreement otherwise) removes the file and raises
``QuantizeError``. The report is written next to the file as JSON (``OUT.json``).

``evaluate_onnx`` evaluates any exported fp32 or int8 ONNX classifier on a dataset's val split, with the same
metrics as ``patnet validate`` on a checkpoint; the preprocessing is read from the file's metadata.
"""
import json
import logging
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from .errors import PatnetError

__all__ = [
    "QuantizeError", "QuantizeReport", "Preprocess", "quantize_model", "evaluate_onnx", "image_batches",
    "quantize_onnx", "nncf_quantize", "read_preprocess", "write_preprocess", "CALIBRATION_METHODS", "DEFAULT_MAX_DROP",
]

from .config import CALIBRATION_METHODS, DEFAULT_MAX_DROP  # noqa: F401

_log = logging.getLogger(__name__)

MIN_CALIB_IMAGES = 8
METADATA_KEY = "patnet.preprocess"


class QuantizeError(PatnetError):
    """The int8 model loses more accuracy than allowed, or the calibration data cannot be used."""


@dataclass
class Preprocess:
    """How images become the model's input; stored in every exported file's metadata."""

    img_size: Tuple[int, int]
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    crop_pct: float
    interpolation: str
    num_classes: int
    model: str = ""

    @classmethod
    def for_model(cls, model: nn.Module, name: str, img_size: Optional[Sequence[int]] = None,
                  crop_pct: Optional[float] = None) -> "Preprocess":
        """The model's own eval transform (timm's data config), at ``img_size`` when given."""
        from timm.data import resolve_model_data_config

        cfg = resolve_model_data_config(model)
        size = tuple(img_size) if img_size else tuple(cfg["input_size"][1:])
        return cls((int(size[0]), int(size[1])), tuple(cfg["mean"]), tuple(cfg["std"]),
                   float(cfg["crop_pct"] if crop_pct is None else crop_pct), str(cfg["interpolation"]),
                   int(getattr(model, "num_classes", 0)), name)


@dataclass
class QuantizeReport:
    """What ``quantize_model`` wrote and how the int8 file compares with fp32 on held-out images."""

    path: str
    model: str
    method: str
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


def image_batches(data: str, split: str, pre: Preprocess, limit: int, batch_size: int = 32,
                  seed: Optional[int] = 0) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """Up to ``limit`` images of ``split`` of ``data`` (anything ``patnet train --data`` accepts), through the eval
    transform, as (images float32 NCHW, labels) batches; a seeded random subset when ``seed`` is not None."""
    from torch.utils.data import DataLoader, Subset

    from .data import build_dataset, build_transform, collate_skip_bad, resolve_dataset

    info = resolve_dataset(data)
    if pre.img_size[0] != pre.img_size[1]:
        raise ValueError(f"square images only for now, got {pre.img_size}")
    ds = build_dataset(info, split, build_transform(pre.img_size[0], False, crop_pct=pre.crop_pct,
                                                     interpolation=pre.interpolation, mean=pre.mean, std=pre.std))
    n = min(limit, len(ds))
    order = range(n) if seed is None else torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n]
    loader = DataLoader(Subset(ds, [int(i) for i in order]), batch_size=batch_size, collate_fn=collate_skip_bad)
    for images, labels, _ in loader:
        if len(labels):
            yield images.numpy(), labels.numpy()


def _session(path: Union[str, Path], threads: int = 0):
    from .export import ort_session

    return ort_session(path, threads)


def read_preprocess(path: Path) -> Optional[Preprocess]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            d = json.loads(prop.value)
            return Preprocess(tuple(d["img_size"]), tuple(d["mean"]), tuple(d["std"]), d["crop_pct"],
                              d["interpolation"], d["num_classes"], d.get("model", ""))
    return None


def write_preprocess(path: Path, pre: Preprocess) -> None:
    """Store ``pre`` in the ONNX file's metadata (rewrites ``path`` in place; callers hold it in a temp file)."""
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    prop = model.metadata_props.add()
    prop.key, prop.value = METADATA_KEY, json.dumps(asdict(pre))
    onnx.save(model, str(path))


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
    with tempfile.TemporaryDirectory(prefix="patnet-quant-") as tmp:
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


def _top1(session: Any, batches: Sequence[Tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    return np.concatenate([session.run(None, {"input": x})[0].argmax(1) for x, _ in batches])


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
) -> QuantizeReport:
    """Quantize ``model`` to a verified int8 QDQ ONNX file (see the module docstring).

    Args:
        model: Any timm classifier (PATNet or not); it is not modified.
        out: The .onnx file to write, atomically; the report goes to ``out`` with suffix ``.json``.
        data: Calibration and evaluation data (``patnet train --data``): calibration images come from its train
            split, verification images from its val split.
        name: The model's registered name (recorded in the report and metadata).
        img_size: (H, W); default the model's data config.
        crop_pct: Eval centre-crop fraction; default the model's data config.
        method: Calibration: 'minmax', 'entropy' or 'percentile' (ONNX Runtime's calibrators).
        calib_images: Images used to calibrate activation ranges (at least 8).
        eval_images: Held-out images used to verify the int8 file.
        max_drop: Largest accepted top-1 loss in points (see ``DEFAULT_MAX_DROP``).
        seed: Which calibration images are drawn.

    Raises:
        QuantizeError: Calibration data too small or of the wrong channel count, or the int8 model loses more than
            ``max_drop`` points (nothing is written).
    """
    from tqdm.auto import tqdm

    from .export import export_model
    from .io import atomic_path, check_writable

    if method not in CALIBRATION_METHODS:
        raise ValueError(f"unknown calibration method {method!r}; use one of {', '.join(CALIBRATION_METHODS)}")
    if calib_images < MIN_CALIB_IMAGES:
        raise ValueError(f"--calib-images must be at least {MIN_CALIB_IMAGES}, got {calib_images}")
    if eval_images < 1:
        raise ValueError(f"--eval-images must be at least 1, got {eval_images}")
    if not max_drop >= 0:
        raise ValueError(f"--max-drop must be >= 0 points, got {max_drop}")
    out = check_writable(out)
    in_chans = int(getattr(model, "in_chans", 3))
    if in_chans != 3:
        raise QuantizeError(f"{name or 'the model'} takes {in_chans}-channel input, but calibration images are "
                            "read as 3-channel RGB; quantize a 3-channel model")
    pre = Preprocess.for_model(model, name, img_size, crop_pct)
    from .data import resolve_dataset

    resolve_dataset(data)  # a missing or malformed dataset fails here, before any progress bar

    calib = list(tqdm(image_batches(data, "train", pre, calib_images, batch_size=1, seed=seed),
                      total=calib_images, desc="calibration images", disable=None if show_progress else True))
    if len(calib) < min(calib_images, MIN_CALIB_IMAGES) or len(calib) < calib_images:
        raise QuantizeError(f"{data} gave {len(calib)} readable training images; --calib-images {calib_images} "
                            f"needs that many (pass a smaller --calib-images, at least {MIN_CALIB_IMAGES})")
    # Batches of 64, as ``evaluate_onnx`` uses: int8 kernels may round differently at other batch sizes.
    held_out = list(image_batches(data, "val", pre, eval_images, batch_size=64, seed=None))
    if not held_out:
        raise QuantizeError(f"{data} has no readable val images to verify the int8 model on")

    with tempfile.TemporaryDirectory(prefix="patnet-quant-") as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        report32 = export_model(model, fp32, "onnx", pre.img_size, dynamic_batch=True)
        with atomic_path(out) as tmp_out:
            n_quant, n_fp32 = quantize_onnx(fp32, tmp_out, [x for x, _ in calib], method)
            write_preprocess(tmp_out, pre)
            s32, s8 = _session(fp32), _session(tmp_out)
            bar = tqdm(total=2, desc="verifying int8", disable=None if show_progress else True)
            p32 = _top1(s32, held_out)
            bar.update(1)
            p8 = _top1(s8, held_out)
            bar.update(1)
            bar.close()
            labels = np.concatenate([y for _, y in held_out])
            agreement = float((p32 == p8).mean() * 100)
            labelled = bool((labels >= 0).all())
            top1_32 = float((p32 == labels).mean() * 100) if labelled else None
            top1_8 = float((p8 == labels).mean() * 100) if labelled else None
            drop = (top1_32 - top1_8) if labelled else 100 - agreement
            import onnx

            ops: Dict[str, int] = {}
            for node in onnx.load(str(tmp_out)).graph.node:
                if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
                    ops[node.op_type] = ops.get(node.op_type, 0) + 1
            report = QuantizeReport(
                str(out), name, method, pre.img_size, len(calib), len(labels), round(agreement, 3),
                None if top1_32 is None else round(top1_32, 3), None if top1_8 is None else round(top1_8, 3),
                round(drop, 3), max_drop, report32.max_rel_error[1], {"quantized": n_quant, **ops}, n_fp32,
            )
            if drop > max_drop:
                raise QuantizeError(
                    f"int8 model loses {drop:.2f} top-1 points on {len(labels)} held-out images (agreement "
                    f"{agreement:.1f}%), more than --max-drop {max_drop:g}; nothing was written (try --method "
                    "entropy or percentile, or more --calib-images)"
                )
    with atomic_path(out.with_suffix(".json")) as tmp_json:
        tmp_json.write_text(json.dumps(asdict(report), indent=2))
    return report


def evaluate_onnx(path: Union[str, Path], data: str, batch_size: int = 64, max_images: Optional[int] = None,
                  img_size: Optional[int] = None, crop_pct: Optional[float] = None, threads: int = 0,
                  show_progress: bool = True) -> Dict[str, Any]:
    """Loss, top-1 and top-5 of an exported ONNX classifier (fp32 or int8) on ``data``'s val split.

    Preprocessing comes from the file's metadata (written by ``patnet export`` / ``patnet quantize``); a file
    without it needs ``img_size`` and gets ImageNet mean/std and crop 0.9.
    """
    from tqdm.auto import tqdm

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file {path} does not exist")
    try:
        pre = read_preprocess(path)
    except Exception as e:  # onnx raises DecodeError and friends for a file that is not ONNX
        raise ValueError(f"{path} is not a readable ONNX file ({type(e).__name__})") from None
    if pre is None:
        if img_size is None:
            raise ValueError(f"{path} carries no preprocessing metadata; pass --img-size")
        from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

        pre = Preprocess((img_size, img_size), IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, 0.9, "bicubic", 0)
    elif img_size is not None and tuple(pre.img_size) != (img_size, img_size):
        raise ValueError(f"{path} was exported for {pre.img_size[0]}x{pre.img_size[1]} input, not {img_size}")
    if crop_pct is not None:
        pre.crop_pct = crop_pct
    session = _session(path, threads)
    batch_dim = session.get_inputs()[0].shape[0]
    if isinstance(batch_dim, int):  # a fixed batch axis: feed that many images at a time
        batch_size = batch_dim
    from .data import resolve_dataset

    info = resolve_dataset(data)
    limit = max_images if max_images is not None else 1 << 62
    loss = correct1 = correct5 = count = 0.0
    bar = tqdm(desc=f"evaluating {path.name}", unit="img", disable=None if show_progress else True)
    for x, y in image_batches(data, "val", pre, limit, batch_size=batch_size, seed=None):
        if isinstance(batch_dim, int) and len(x) != batch_dim:
            x = np.concatenate([x, np.zeros((batch_dim - len(x),) + x.shape[1:], x.dtype)])
        logits = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x})[0][: len(y)]).float()
        if count == 0 and logits.shape[1] != info.num_classes:
            raise ValueError(f"{path} has {logits.shape[1]} outputs; {data} has {info.num_classes} classes")
        labels = torch.from_numpy(y).long()
        loss += float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        # argmax, not topk's first column: int8 logits tie often, and argmax breaks ties the way the quantize
        # verification (numpy) does, by the lowest class index
        correct1 += float((logits.argmax(1) == labels).sum())
        correct5 += float((top == labels[:, None]).any(dim=1).sum())
        count += len(y)
        bar.update(len(y))
    bar.close()
    if count == 0:
        raise ValueError(f"{data} has no readable val images")
    return {"loss": loss / count, "top1": 100 * correct1 / count, "top5": 100 * correct5 / count,
            "count": int(count), "onnx": str(path), "data": str(info.root), "img_size": list(pre.img_size)}
