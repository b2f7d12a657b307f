"""Run configurations: each option declared once, as a dataclass field that carries its help, range and resume rule.

``TrainConfig`` and ``DetectConfig`` are what a run depends on (saved as ``args.json``). Their fields are the one
source of truth for the options: ``add_arguments`` generates the command-line flags from them, ``check_ranges``
validates a configuration before any work, ``from_mapping`` reads a ``--config`` YAML mapping through the same
types, and ``may_change_on_resume`` tells the run folder which options a resume may change.
"""
import argparse
import math
import typing
from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Type

__all__ = ["TrainConfig", "DetectConfig", "RECIPE_NAMES", "AUTO_PAPER_EPOCHS", "auto_recipe", "ONNX_OPSET",
           "DEFAULT_TOLERANCE", "CALIBRATION_METHODS", "DEFAULT_MAX_DROP", "Range", "option", "add_arguments",
           "check_ranges", "from_mapping", "may_change_on_resume", "resume_help"]

RECIPE_NAMES = ("paper", "short")
# ``--recipe auto`` (the default): the paper's recipe (long warm-up, mixup / cutmix / RandAugment) is made for 300
# ImageNet epochs and costs a short run accuracy (2 epochs of MNIST: 94.4% against the short recipe's 99%); below
# this many epochs a run gets the short recipe.
AUTO_PAPER_EPOCHS = 50


def auto_recipe(epochs: int) -> str:
    """The recipe ``--recipe auto`` picks for a run of ``epochs`` epochs."""
    return "paper" if epochs >= AUTO_PAPER_EPOCHS else "short"


ONNX_OPSET = 18
# An export must match PyTorch within this fraction of the largest logit (the fusion bar of the deployment issue).
DEFAULT_TOLERANCE = 1e-5
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
# Largest accepted top-1 cost of quantization, in points (accuracy when labelled, else disagreement with fp32).
# One point is what a careful deployment tolerates for an 8-bit model; tighter bounds are a flag away.
DEFAULT_MAX_DROP = 1.0


@dataclass(frozen=True)
class Range:
    """The values an option accepts: ``low``/``high`` bounds (``None``: unbounded), open or closed; always finite."""

    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False

    def holds(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self, integer: bool) -> str:
        if self.high is None:
            if integer and not self.low_open:
                return f"at least {self.low:g}"
            return f"a finite number {'>' if self.low_open else '>='} {self.low:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


def option(default: Any = None, help: Any = "", *, group: str = "", choices: Optional[Tuple[Any, ...]] = None,
           range: Optional[Range] = None, resume: bool = False, metavar: Any = None, show_default: bool = True,
           positional: bool = False, required: bool = False) -> Any:
    """A configuration field with what its flag needs: help, argument group, choices, accepted range, and whether
    a resumed run may change it (options that decide how a run is watched, not what it computes). ``positional``
    and ``required`` are for command options that have no default (a file to read or write)."""
    return field(default=default, metadata={"help": help, "group": group, "choices": choices, "range": range,
                                            "resume": resume, "metavar": metavar, "show_default": show_default,
                                            "positional": positional, "required": required})


def may_change_on_resume(f: Field) -> bool:
    """Whether a resumed run may set this field to another value than the run's own."""
    return bool(f.metadata.get("resume"))


def _flag(f: Field) -> str:
    prefix = "--no-" if _base(f) is bool and f.default is True else "--"
    return prefix + f.name.replace("_", "-")


def _base(f: Field) -> Any:
    """The field's value type with ``Optional`` removed (``Tuple[float, float]`` stays a tuple type)."""
    tp = f.type
    if typing.get_origin(tp) is typing.Union:
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def _item_type(f: Field) -> Tuple[Any, Any]:
    """(the type of one value, how many values: None for a single one)."""
    tp = _base(f)
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        return args[0], len(args)
    if typing.get_origin(tp) is list:
        return typing.get_args(tp)[0], "+"
    return tp, None


def add_arguments(parser: argparse.ArgumentParser, cls: Type[Any], defaults: Optional[Mapping[str, Any]] = None) -> None:
    """Add one flag per field of the dataclass ``cls`` (in argument groups), its default from ``defaults`` (the
    ``--config`` file's) or the field's own."""
    groups: Dict[str, Any] = {}
    for f in fields(cls):
        md = f.metadata
        target = parser
        if md.get("group"):
            target = groups.setdefault(md["group"], parser.add_argument_group(md["group"]))
        default = (defaults or {}).get(f.name, f.default)
        item, count = _item_type(f)
        help_text = md.get("help", "")
        help_text = help_text(cls) if callable(help_text) else help_text
        if item is bool:
            target.add_argument(_flag(f), dest=f.name, action="store_false" if f.default is True else "store_true",
                                default=default, help=help_text or None)
            continue
        if md.get("show_default", True) and f.default not in (None, "") and not md.get("positional"):
            shown = " ".join(map(str, f.default)) if isinstance(f.default, (tuple, list)) else f.default
            help_text = f"{help_text} (default {shown})".strip()
        kwargs = dict(type=item, nargs=count, choices=md.get("choices"), help=help_text.replace("%", "%%") or None,
                      metavar=md.get("metavar") or (f.name.upper() if count else None))
        if md.get("positional"):
            target.add_argument(f.name, **kwargs)
            continue
        target.add_argument(_flag(f), dest=f.name, required=md.get("required", False),
                            default=list(default) if isinstance(default, tuple) else default, **kwargs)


def from_mapping(cls: Type[Any], values: Mapping[str, Any], source: str) -> Dict[str, Any]:
    """Field values of ``cls`` from a mapping (a ``--config`` YAML file: keys are field or flag names, with - or _),
    each checked and converted as its flag would be, or a one-line ``ValueError`` naming the key."""
    by_name = {f.name: f for f in fields(cls)}
    unknown = [k for k in values if str(k).replace("-", "_") not in by_name]
    if unknown:
        raise ValueError(f"config file {source} has unknown keys {unknown}")
    out = {}
    for key, value in values.items():
        f = by_name[key.replace("-", "_")]

        def bad(why: str) -> ValueError:
            return ValueError(f"config file {source}: {key}: {value!r} {why}")

        item, count = _item_type(f)
        if item is bool:
            if not isinstance(value, bool):
                raise bad("must be true or false")
            out[f.name] = value
            continue
        items = value if isinstance(value, list) else [value]
        if isinstance(value, dict) or any(isinstance(v, (list, dict)) for v in items) or \
                (count is None and isinstance(value, list)):
            raise bad("must be a single value" if count is None else "must be a list of plain values")
        if count is not None and len(items) != count:
            raise bad(f"must be a list of {count} values")
        converted = []
        for v in items:
            try:
                v = v if v is None else item(str(v))
            except (TypeError, ValueError) as e:
                raise bad(f"is not a valid value ({e})") from None
            choices = f.metadata.get("choices")
            if choices is not None and v not in choices:
                raise bad(f"is not one of {', '.join(map(str, choices))}")
            converted.append(v)
        out[f.name] = tuple(converted) if count is not None else converted[0]
    return out


def check_ranges(cfg: Any) -> None:
    """Refuse, in one line naming the flag, any field of ``cfg`` outside its declared choices or range."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if value is None:
            continue
        choices, rng = f.metadata.get("choices"), f.metadata.get("range")
        if choices is not None and value not in choices:
            raise ValueError(f"{_flag(f)} must be one of {', '.join(map(str, choices))}, got {value!r}")
        if rng is not None and not all(rng.holds(v) for v in (value if isinstance(value, (tuple, list)) else (value,))):
            integer = _item_type(f)[0] is int
            raise ValueError(f"{_flag(f)} must be {rng.describe(integer)}, got {value}")


def resume_help(cls: Type[Any]) -> str:
    """The ``--resume`` help, listing exactly the flags a resume may change."""
    flags = ", ".join(sorted(_flag(f) for f in fields(cls) if may_change_on_resume(f)
                             and f.name not in ("resume", "overwrite")))
    return (f"continue a run from its last.pth, in its folder, with the run's own arguments (only {flags} may "
            "differ; a larger --epochs extends the run)")


AT_LEAST_0 = Range(0)
AT_LEAST_1 = Range(1)
POSITIVE = Range(0, low_open=True)
FRACTION = Range(0, 1, low_open=True)  # (0, 1]

DATA, SCHEDULE, RECIPE, RUNTIME = ("model and data", "schedule", "recipe overrides (default: the recipe's value)",
                                   "runtime and output")


@dataclass
class TrainConfig:
    """Everything a classification run depends on; saved as ``args.json`` next to the results. ``None`` means
    "the recipe's"."""

    model: str = option("patnet_t0", "registered timm model name", group=DATA)
    data: str = option("fashion-mnist", "fashion-mnist, mnist, an IDX folder or a train/ + val/ tree", group=DATA)
    img_size: int = option(64, "train and eval size", group=DATA, range=Range(32))
    img_size_schedule: Optional[str] = option(None, "EPOCH:SIZE,... e.g. 0:192,280:224 (train size per epoch)",
                                              group=DATA)
    val_split: Optional[float] = option(
        None, "validate on this fraction of the training set (stratified, the same for every seed) instead of the "
              "val/test split: tune a recipe without touching the test set",
        group=DATA, range=Range(0, 1, low_open=True, high_open=True), metavar="FRACTION")
    strict_data: bool = option(False, "stop on an unreadable image instead of skipping it", group=DATA, resume=True)
    workers: int = option(2, "data loading processes (capped to the CPU cores)", group=DATA, range=AT_LEAST_0,
                          resume=True)
    epochs: int = option(10, "epochs (on resume, a larger number extends the run)", group=SCHEDULE, range=AT_LEAST_1)
    batch_size: int = option(128, "per process; at least 2 (PATNet's channel gate uses BatchNorm over the batch)",
                             group=SCHEDULE, range=Range(2))
    lr: Optional[float] = option(None, "peak lr (default scales with the global batch: paper recipe 1e-3 per 1024, "
                                       "short 2e-3 per 128)", group=SCHEDULE, range=POSITIVE)
    warmup_epochs: Optional[float] = option(None, "warm-up epochs (paper recipe: 20/300 of --epochs)",
                                            group=SCHEDULE, range=AT_LEAST_0)
    min_lr: Optional[float] = option(None, "final lr of the cosine", group=SCHEDULE, range=AT_LEAST_0)
    max_train_batches: Optional[int] = option(None, "cap the batches of each epoch", group=SCHEDULE,
                                              range=AT_LEAST_1)
    max_val_batches: Optional[int] = option(None, "cap the validation batches", group=SCHEDULE, range=AT_LEAST_1,
                                            resume=True)
    recipe: str = option(
        "auto", f"auto: short below {AUTO_PAPER_EPOCHS} epochs, else paper; paper: the authors' recipe by size (made "
                "for 300 ImageNet epochs); short: for small data and a few epochs (no mixup, cutmix or RandAugment, "
                "lr 2e-3 at batch 128, crops 0.7-1.0)", group=RECIPE, choices=("auto",) + RECIPE_NAMES)
    weight_decay: Optional[float] = option(None, "AdamW weight decay", group=RECIPE, range=AT_LEAST_0)
    mixup: Optional[float] = option(None, "mixup alpha (0 disables)", group=RECIPE, range=Range(0, 10))
    cutmix: Optional[float] = option(None, "cutmix alpha (0 disables)", group=RECIPE, range=Range(0, 10))
    smoothing: Optional[float] = option(None, "label smoothing (below 1: 1 leaves no signal in the targets)",
                                        group=RECIPE, range=Range(0, 1, high_open=True))
    auto_augment: Optional[str] = option(None, "timm RandAugment string, or 'none'", group=RECIPE)
    scale: Tuple[float, float] = option((0.08, 1.0), "random-resized-crop scale range, 0 < MIN <= MAX <= 1",
                                        group=RECIPE, range=FRACTION, metavar="S")
    crop_pct: float = option(0.9, "eval centre-crop fraction", group=RECIPE, range=FRACTION)
    drop_path_rate: Optional[float] = option(None, "stochastic depth rate", group=RECIPE, range=Range(0, 1))
    clip_grad: Optional[float] = option(None, "gradient norm clip (0 disables)", group=RECIPE, range=AT_LEAST_0)
    model_ema: bool = option(False, "keep an exponential moving average of the weights", group=RECIPE)
    model_ema_decay: float = option(0.9998, "EMA decay, e.g. 0.9998", group=RECIPE,
                                    range=Range(0, 1, low_open=True, high_open=True))
    amp: str = option("none", "mixed precision (bf16 on CPU)", group=RUNTIME, choices=("none", "bf16", "fp16"))
    channels_last: bool = option(False, "channels-last memory format", group=RUNTIME)
    compile: bool = option(False, "torch.compile the training step (slow first steps)", group=RUNTIME, resume=True)
    seed: int = option(0, "random seed", group=RUNTIME)
    output: str = option("outputs/train", "folder for checkpoints, logs and metrics.json", group=RUNTIME)
    resume: Optional[str] = option(None, resume_help, group=RUNTIME, resume=True)
    overwrite: bool = option(False, "replace the run already in --output", group=RUNTIME, resume=True)
    tensorboard: bool = option(False, "also log to TensorBoard", group=RUNTIME, resume=True)
    progress: bool = option(True, "no progress bars", group=RUNTIME, resume=True)


@dataclass
class DetectConfig:
    """A detection run; saved as ``args.json`` beside the results."""

    model: str = option("patnet_t0", "backbone: any timm features_only model")
    ann: str = option("", "training COCO JSON (needed unless --resume)")
    images: str = option("", "training image folder (needed unless --resume)")
    val_ann: Optional[str] = option(None, "validation COCO JSON (evaluated at the end)")
    val_images: Optional[str] = option(None, "validation image folder")
    task: str = option("boxes", "boxes: Faster R-CNN; masks: Mask R-CNN", choices=("boxes", "masks"))
    epochs: int = option(12, "epochs (on resume, a larger number extends the run)", range=AT_LEAST_1)
    batch_size: int = option(4, "images per process and step", range=AT_LEAST_1)
    img_size: int = option(512, "shorter side after resizing", range=Range(64))
    max_size: Optional[int] = option(None, "longer side bound (default 5/3 of --img-size)", range=Range(64))
    lr: float = option(2e-4, "AdamW peak lr", range=POSITIVE)
    weight_decay: float = option(0.05, "AdamW weight decay", range=AT_LEAST_0)
    schedule: str = option("step", "lr schedule after warm-up", choices=("step", "cosine"))
    warmup_iters: int = option(100, "linear warm-up iterations", range=AT_LEAST_0)
    backbone_checkpoint: Optional[str] = option(None, "classification weights (ours or the authors' layout)")
    backbone_act: Optional[str] = option(None, "activation of an authors' checkpoint", choices=("gelu", "relu"))
    trainable_stages: int = option(4, "last backbone stages that train (0-4)", range=Range(0, 4))
    norm: str = option("frozen", "backbone BatchNorm handling", choices=("frozen", "train"))
    roi_batch_size: int = option(512, "RoIs sampled per image for the heads in training (torchvision's 512; 128 is "
                                      "~4x cheaper)", range=AT_LEAST_1)
    clip_grad: Optional[float] = option(10.0, "gradient norm clip (0 disables)", range=AT_LEAST_0)
    seed: int = option(0, "random seed")
    workers: int = option(2, "data loading processes (capped to the CPU cores)", range=AT_LEAST_0, resume=True)
    output: str = option("outputs/detect", "folder for checkpoints, logs and coco_metrics.json")
    resume: Optional[str] = option(None, resume_help, resume=True)
    max_iters_per_epoch: Optional[int] = option(None, "cap the iterations of each epoch", range=AT_LEAST_1)
    progress: bool = option(True, "no progress bars", resume=True)
    overwrite: bool = option(False, "replace the run already in --output", resume=True)


# The options of the commands that are not runs; ``patnet.cli`` generates their flags like the runs'.
WEIGHTS = "weights: ours (a patnet convert folder, .safetensors/.pth) or the authors' layout"
CLASSES = "classes (default: read from the checkpoint, else 1000)"
MODEL_NAME = "registered model name, e.g. patnet_t2 or fasternet_t2"
ACTIVATIONS = ("gelu", "relu")


@dataclass
class ConvertOptions:
    src: Path = option(help="the authors' checkpoint (.pth/.pt/.ckpt/.safetensors); with --to official, the folder "
                            "patnet convert wrote", positional=True)
    out: Path = option(help="output folder, timm's model.safetensors + config.json (timm.create_model("
                            "'local-dir:OUT', pretrained=True)); with --to official, a .pth or .safetensors file",
                       positional=True)
    act: str = option("gelu", "activation the checkpoint was trained with: gelu for T0/T1, relu for T2..L",
                      choices=ACTIVATIONS)
    to: str = option("patnet", "target layout", choices=("patnet", "official"))


@dataclass
class ExportOptions:
    model: str = option(help=MODEL_NAME, positional=True)
    out: Path = option(help="output file", positional=True)
    checkpoint: Optional[Path] = option(None, WEIGHTS)
    num_classes: Optional[int] = option(None, CLASSES)
    format: str = option("onnx", "file format (executorch: an XNNPACK .pte at batch 1)",
                         choices=("onnx", "torchscript", "executorch"))
    img_size: Tuple[int, int] = option((224, 224), "input height and width", metavar=("H", "W"))
    dynamic_batch: bool = option(False, "symbolic batch axis (verified at batch 1 and 8)")
    opset: int = option(ONNX_OPSET, "ONNX opset")
    tolerance: float = option(DEFAULT_TOLERANCE, "max |export - pytorch| / max |logit|")


@dataclass
class QuantizeOptions:
    model: str = option(help=MODEL_NAME, positional=True)
    out: Path = option(help="output .onnx (onnxruntime), .xml (openvino, with its .bin) or .pte (executorch); the "
                            "report goes next to it as .json", positional=True)
    checkpoint: Optional[Path] = option(None, WEIGHTS)
    num_classes: Optional[int] = option(None, CLASSES)
    runtime: str = option("onnxruntime", "int8 runtime (openvino is the fastest on Intel CPUs with AMX; executorch "
                          "is XNNPACK, for phones and boards)", choices=("onnxruntime", "openvino", "executorch"))
    calib: str = option(None, "data as for patnet train --data (fashion-mnist, a folder, ...)", required=True)
    calib_images: int = option(256, "calibration images")
    eval_images: int = option(1000, "held-out verification images")
    method: str = option("minmax", "calibration", choices=CALIBRATION_METHODS)
    img_size: Optional[Tuple[int, int]] = option(None, "default: the model's input size", metavar=("H", "W"))
    crop_pct: Optional[float] = option(None, "eval centre-crop fraction (default: the model's)")
    max_drop: float = option(DEFAULT_MAX_DROP, "largest accepted top-1 loss in points")
    seed: int = option(0, "which calibration images are drawn")


@dataclass
class ValidateOptions:
    model: Optional[str] = option(None, "registered model name (with --checkpoint)")
    data: str = option("fashion-mnist", "as for patnet train --data")
    checkpoint: Optional[Path] = option(None, "best.pth/last.pth, a patnet convert folder, .safetensors or authors' .pth")
    onnx: Optional[Path] = option(None, "evaluate an exported fp32 or int8 file instead: .onnx (ONNX Runtime) or "
                                        ".xml (an OpenVINO IR)")
    act: Optional[str] = option(None, "activation of an authors' checkpoint, if not the variant's",
                                choices=ACTIVATIONS)
    img_size: Optional[int] = option(None, "eval size (default 64; an ONNX file's own size)")
    crop_pct: Optional[float] = option(None, "eval centre-crop fraction (default 0.9; an ONNX file's own)")
    max_images: Optional[int] = option(None, "with --onnx: evaluate at most this many images")
    batch_size: int = option(128, "images per batch")
    workers: int = option(2, "data loading processes")
    amp: str = option("none", "mixed precision", choices=("none", "bf16", "fp16"))
    max_val_batches: Optional[int] = option(None, "cap the validation batches")
    output: Optional[Path] = option(None, "write metrics.json here")


@dataclass
class DetectEvalOptions:
    checkpoint: Path = option(None, "a detection run's best.pth or last.pth", required=True)
    ann: Path = option(None, "COCO JSON", required=True)
    images: Path = option(None, "image folder", required=True)
    task: Optional[str] = option(None, "default: masks if the detector has a mask head", choices=("boxes", "masks"))
    output: Path = option(Path("outputs/detect_eval"), "folder for coco_metrics.json")
    workers: int = option(2, "data loading processes")
    max_images: Optional[int] = option(None, "evaluate at most this many images")


@dataclass
class DetectPredictOptions:
    checkpoint: Path = option(None, "a detection run's best.pth or last.pth", required=True)
    image: Path = option(None, "the photo", required=True)
    out: Path = option(Path("outputs/prediction.png"), "the drawing (PNG)")
    score_threshold: float = option(0.5, "smallest score drawn")


@dataclass
class MakeFmnistOptions:
    out: Path = option(help="output folder", positional=True)
    data: str = option("fashion-mnist", "Fashion-MNIST location (name or IDX folder)")
    train_images: int = option(400, "training canvases")
    val_images: int = option(100, "validation canvases")
    canvas: int = option(160, "canvas side in pixels")
    seed: int = option(0, "random seed")


@dataclass
class DeepforestOptions:
    source: Path = option(help="deepforest-*.whl (pip download deepforest --no-deps) or its data/", positional=True)
    out: Path = option(help="output folder", positional=True)
    single_class: Optional[str] = option(None, "one label for every object, e.g. Tree")
    tile: Optional[int] = option(None, "cut larger images into TILE x TILE tiles")
