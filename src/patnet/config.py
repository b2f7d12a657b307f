"""Run configurations and defaults, free of torch so that ``patnet --help`` answers at once.

``TrainConfig`` and ``DetectConfig`` are what a run depends on (saved as ``args.json``); the command line's
defaults are read from them. The modules that use them re-export them (``patnet.train.TrainConfig``, ...).
"""
from dataclasses import dataclass
from typing import Optional, Tuple

__all__ = ["TrainConfig", "DetectConfig", "RECIPE_NAMES", "AUTO_PAPER_EPOCHS", "auto_recipe", "ONNX_OPSET", "DEFAULT_TOLERANCE", "CALIBRATION_METHODS",
           "DEFAULT_MAX_DROP", "RESUME_MAY_CHANGE", "resume_help"]

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
# Arguments a resumed run may change: they decide how the run is watched, not what it computes (``--epochs`` may
# grow too: the run is extended). Fields of TrainConfig / DetectConfig; tests check every name is one.
RESUME_MAY_CHANGE = frozenset({"workers", "progress", "tensorboard", "max_val_batches", "strict_data", "resume",
                               "overwrite", "compile"})


def resume_help() -> str:
    """The ``--resume`` help, listing exactly the flags a resume may change."""
    flag = {"progress": "no-progress"}
    flags = ", ".join(f"--{flag.get(n, n.replace('_', '-'))}" for n in sorted(RESUME_MAY_CHANGE - {"resume", "overwrite"}))
    return (f"continue a run from its last.pth, in its folder, with the run's own arguments (only {flags} may "
            "differ; a larger --epochs extends the run)")


@dataclass
class TrainConfig:
    """Everything a run depends on; saved as ``args.json`` next to the results. ``None`` means "the recipe's"."""

    model: str = "patnet_t0"
    data: str = "fashion-mnist"
    output: str = "outputs/train"
    epochs: int = 10
    batch_size: int = 128  # per process
    img_size: int = 64
    img_size_schedule: Optional[str] = None  # "EPOCH:SIZE,..." e.g. "0:192,280:224"
    val_split: Optional[float] = None  # hold out this fraction of the training set for validation (tuning)
    lr: Optional[float] = None
    weight_decay: Optional[float] = None
    warmup_epochs: Optional[float] = None
    min_lr: Optional[float] = None
    mixup: Optional[float] = None
    cutmix: Optional[float] = None
    smoothing: Optional[float] = None
    auto_augment: Optional[str] = None  # "none" disables the recipe's RandAugment
    scale: Tuple[float, float] = (0.08, 1.0)
    crop_pct: float = 0.9
    drop_path_rate: Optional[float] = None
    clip_grad: Optional[float] = None
    amp: str = "none"  # none | bf16 | fp16
    channels_last: bool = False
    compile: bool = False  # torch.compile the training forward/backward (inductor)
    model_ema: bool = False
    model_ema_decay: float = 0.9998
    seed: int = 0
    workers: int = 2
    resume: Optional[str] = None
    strict_data: bool = False
    tensorboard: bool = False
    max_train_batches: Optional[int] = None  # cap per epoch (smoke tests, budgets)
    max_val_batches: Optional[int] = None
    progress: bool = True
    overwrite: bool = False  # replace the run already in --output
    recipe: str = "auto"  # "auto" (``auto_recipe``), "paper" (the authors' per-size recipe) or "short" (few epochs)


@dataclass
class DetectConfig:
    """A detection run; saved as ``args.json`` beside the results."""

    model: str = "patnet_t0"
    ann: str = ""
    images: str = ""
    val_ann: Optional[str] = None
    val_images: Optional[str] = None
    task: str = "boxes"
    epochs: int = 12
    batch_size: int = 4
    img_size: int = 512  # shorter side after resizing
    max_size: Optional[int] = None  # longer side bound (default 5/3 of img_size)
    lr: float = 2e-4
    weight_decay: float = 0.05
    schedule: str = "step"  # step | cosine
    warmup_iters: int = 100
    backbone_checkpoint: Optional[str] = None
    backbone_act: Optional[str] = None
    trainable_stages: int = 4
    norm: str = "frozen"
    roi_batch_size: int = 512
    clip_grad: Optional[float] = 10.0
    seed: int = 0
    workers: int = 2
    output: str = "outputs/detect"
    resume: Optional[str] = None
    max_iters_per_epoch: Optional[int] = None
    progress: bool = True
    overwrite: bool = False  # replace the run already in --output
