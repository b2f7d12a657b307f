"""Running deployed files: ONNX Runtime and OpenVINO sessions, the preprocessing a file carries, evaluating a file.

A leaf of the deployment package: ``export`` and ``quantize`` write files, this module reads and runs them, and it
imports neither. A file is an ONNX model (``.onnx``, run by ONNX Runtime) or an OpenVINO IR (``.xml`` with its
``.bin``, run by OpenVINO); both carry the model's eval preprocessing (``Preprocess``) in their metadata, so
``evaluate_file`` scores any of them on the same data path and metrics as ``patnet validate`` on a checkpoint.
"""
import importlib.util
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from ..data import build_dataset, build_transform, check_input_size, collate_skip_bad, resolve_dataset

__all__ = ["Preprocess", "ModelRunner", "open_model_file", "ort_session", "openvino_compiled", "read_preprocess",
           "write_preprocess", "image_batches", "evaluate_file", "require"]

METADATA_KEY = "patnet.preprocess"  # ONNX metadata_props key; in an IR, rt_info ["patnet", "preprocess"]
IR_SUFFIX = ".xml"
PTE_SUFFIX = ".pte"  # ExecuTorch programs (patnet.deploy.executorch writes them)


def require(module: str, extra: str = "deploy") -> None:
    """Fail in one line, naming the extra to install, when an optional dependency is missing."""
    if importlib.util.find_spec(module) is None:
        raise ImportError(f"{module} is not installed: pip install 'patnet[{extra}]'")


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

    def __post_init__(self) -> None:
        check_input_size(*self.img_size, what="input size")  # from a flag, or from a file's metadata

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

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Preprocess":
        d = json.loads(text)
        return cls(tuple(d["img_size"]), tuple(d["mean"]), tuple(d["std"]), d["crop_pct"], d["interpolation"],
                   d["num_classes"], d.get("model", ""))


def ort_session(path: Union[str, Path], threads: int = 0) -> Any:
    """An ONNX Runtime CPU session with the settings every measurement here uses.

    ``threads`` intra-op threads (0: ONNX Runtime's default), one inter-op thread, all graph optimisations, and
    no spinning: ORT's pool otherwise spins after each run and steals the cores from whatever runs next.
    """
    require("onnxruntime")
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def openvino_compiled(model: Any, threads: int = 0) -> Any:
    """An OpenVINO CPU compiled model (from a path or an ``openvino.Model``) with the settings used here.

    Latency mode, one stream, ``threads`` inference threads (0: OpenVINO's choice) and fp32 for whatever is not
    int8: on AMX CPUs OpenVINO would otherwise run an "fp32" model in bf16 (benchmarking guide).
    """
    require("openvino", "openvino")
    import openvino as ov

    core = ov.Core()
    if not isinstance(model, ov.Model):
        model = core.read_model(str(model))
    config: Dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    return core.compile_model(model, "CPU", config)


# Largest model file (with an IR's .bin) loaded, in bytes (PATNET_MAX_MODEL_BYTES overrides): PATNet-L in fp32 is
# ~0.4 GB and protobuf caps an ONNX file without external data at 2 GB, so a larger file is a mistake or an attack.
MAX_MODEL_BYTES = int(os.environ.get("PATNET_MAX_MODEL_BYTES", 2 << 30))


def check_model_size(path: Path) -> None:
    """Refuse a model file (and an IR's weights) above ``MAX_MODEL_BYTES`` before any runtime reads it (called by
    ``open_model_file``, the entry for files a user names; ``ModelRunner`` alone runs files this package wrote)."""
    files = [path, path.with_suffix(".bin")] if path.suffix == IR_SUFFIX else [path]
    size = sum(f.stat().st_size for f in files if f.is_file())
    if size > MAX_MODEL_BYTES:
        raise ValueError(f"{path} is {size:,} bytes, more than the {MAX_MODEL_BYTES:,} a model file may be "
                         "(set PATNET_MAX_MODEL_BYTES to raise it)")


class ModelRunner:
    """A deployed classifier file ready to run: ``runner(images) -> logits`` on float32 NCHW numpy batches.

    ``batch`` is the file's fixed batch size, or None when its batch axis is symbolic. ``runtime`` defaults to the
    file's own ('openvino' for an IR, 'executorch' for a ``.pte``, 'onnxruntime' for ONNX); OpenVINO also runs ONNX
    files. An ExecuTorch program has batch 1 and is run image by image on larger batches.
    """

    def __init__(self, path: Union[str, Path], threads: int = 0, runtime: Optional[str] = None) -> None:
        self.path = Path(path)
        default = {IR_SUFFIX: "openvino", PTE_SUFFIX: "executorch"}.get(self.path.suffix, "onnxruntime")
        self.runtime = runtime or default
        if self.runtime == "executorch":
            require("executorch", "executorch")
            from executorch.runtime import Runtime

            self._method = Runtime.get().load_program(str(self.path)).load_method("forward")
            self.batch = 1
        elif self.runtime == "openvino":
            self._compiled = openvino_compiled(self.path, threads)
            dim = self._compiled.inputs[0].get_partial_shape()[0]
            self.batch: Optional[int] = None if dim.is_dynamic else dim.get_length()
        else:
            self._session = ort_session(self.path, threads)
            self._input = self._session.get_inputs()[0].name
            dim0 = self._session.get_inputs()[0].shape[0]
            self.batch = dim0 if isinstance(dim0, int) else None

    def __call__(self, images: np.ndarray) -> np.ndarray:
        if self.runtime == "executorch":
            return np.concatenate([self._method.execute([torch.from_numpy(np.ascontiguousarray(x[None]))])[0].numpy()
                                   for x in images])
        if self.runtime == "openvino":
            return np.asarray(self._compiled(images)[0])
        return self._session.run(None, {self._input: images})[0]


def open_model_file(path: Union[str, Path], threads: int = 0) -> ModelRunner:
    """``ModelRunner`` for an ``.onnx`` file or an OpenVINO ``.xml`` IR, with a one-line error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    if path.suffix == IR_SUFFIX and not path.with_suffix(".bin").is_file():
        raise FileNotFoundError(f"OpenVINO IR {path} has no weights file {path.with_suffix('.bin')} beside it")
    check_model_size(path)
    try:
        return ModelRunner(path, threads)
    except (ImportError, FileNotFoundError):
        raise
    except Exception as e:  # both runtimes raise their own types for a file that is not a model
        kind = "OpenVINO IR" if path.suffix == IR_SUFFIX else "ONNX"
        detail = str(e).strip().splitlines()[-1][:160] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path} is not a readable {kind} model ({detail})") from None


def read_preprocess(path: Path) -> Optional[Preprocess]:
    """The preprocessing stored in an ONNX file or an OpenVINO IR, or None when it carries none."""
    path = Path(path)
    if path.suffix == IR_SUFFIX:
        import openvino as ov

        model = ov.Core().read_model(str(path))
        if not model.has_rt_info(["patnet", "preprocess"]):
            return None
        return Preprocess.from_json(model.get_rt_info(["patnet", "preprocess"]).astype(str))
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            return Preprocess.from_json(prop.value)
    return None


def write_preprocess(path: Path, pre: Preprocess) -> None:
    """Store ``pre`` in the ONNX file's metadata (rewrites ``path`` in place; callers hold it in a temp file)."""
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    prop = model.metadata_props.add()
    prop.key, prop.value = METADATA_KEY, pre.to_json()
    onnx.save(model, str(path))


def image_batches(data: str, split: str, pre: Preprocess, limit: int, batch_size: int = 32,
                  seed: Optional[int] = 0) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """Up to ``limit`` images of ``split`` of ``data`` (anything ``patnet train --data`` accepts), through the eval
    transform, as (images float32 NCHW, labels) batches; a seeded random subset when ``seed`` is not None."""
    from torch.utils.data import DataLoader, Subset

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


def top1_of(run: Callable[[np.ndarray], np.ndarray], batches: Sequence[Tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Predicted classes of ``run`` over ``batches`` (argmax: ties go to the lowest class index)."""
    return np.concatenate([run(x).argmax(1) for x, _ in batches])


def evaluate_file(path: Union[str, Path], data: str, batch_size: int = 64, max_images: Optional[int] = None,
                  img_size: Optional[int] = None, crop_pct: Optional[float] = None, threads: int = 0,
                  show_progress: bool = True) -> Dict[str, Any]:
    """Loss, top-1 and top-5 of a deployed classifier (ONNX or OpenVINO IR, fp32 or int8) on ``data``'s val split.

    Preprocessing comes from the file's metadata (written by ``patnet export`` / ``patnet quantize``); a file
    without it needs ``img_size`` and gets ImageNet mean/std and crop 0.9.
    """
    from tqdm.auto import tqdm

    path = Path(path)
    runner = open_model_file(path, threads)
    try:
        pre = read_preprocess(path)
    except ValueError as e:  # the metadata parsed but fails its own checks (an input size over the pixel bound)
        raise ValueError(f"{path}: its preprocessing metadata is unusable: {e}") from None
    except Exception as e:  # onnx raises DecodeError and friends for a file that is not a model
        raise ValueError(f"{path} is not a readable model file ({type(e).__name__})") from None
    if pre is None:
        if img_size is None:
            raise ValueError(f"{path} carries no preprocessing metadata; pass --img-size")
        from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

        pre = Preprocess((img_size, img_size), IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, 0.9, "bicubic", 0)
    elif img_size is not None and tuple(pre.img_size) != (img_size, img_size):
        raise ValueError(f"{path} was exported for {pre.img_size[0]}x{pre.img_size[1]} input, not {img_size}")
    if crop_pct is not None:
        pre.crop_pct = crop_pct
    if runner.batch is not None:  # a fixed batch axis: feed that many images at a time
        batch_size = runner.batch
    info = resolve_dataset(data)
    limit = max_images if max_images is not None else 1 << 62
    loss = correct1 = correct5 = count = 0.0
    bar = tqdm(desc=f"evaluating {path.name}", unit="img", disable=None if show_progress else True)
    try:
        for x, y in image_batches(data, "val", pre, limit, batch_size=batch_size, seed=None):
            if runner.batch is not None and len(x) != runner.batch:
                x = np.concatenate([x, np.zeros((runner.batch - len(x),) + x.shape[1:], x.dtype)])
            logits = torch.from_numpy(runner(x)[: len(y)]).float()
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
    finally:
        bar.close()
    if count == 0:
        raise ValueError(f"{data} has no readable val images")
    return {"loss": loss / count, "top1": 100 * correct1 / count, "top5": 100 * correct5 / count,
            "count": int(count), "file": str(path), "runtime": runner.runtime, "data": str(info.root),
            "img_size": list(pre.img_size)}
