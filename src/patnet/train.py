"""Training and evaluation of any timm classifier (PATNet's and the FasterNet baseline alike).

The default recipe is the one PATNet's configurations copy from FasterNet (``RECIPES``, by size): AdamW (0.9, 0.999),
cosine decay after a linear warm-up (20 of 300 epochs, scaled to the run), peak lr 0.001 x global batch / 1024,
min lr 1e-5, label smoothing 0.1, cutmix 1.0 with the variant's mixup, RandAugment and weight decay, gradient
clipping for M and L, no random erasing. Built on timm's parts: ``create_transform``, ``Mixup``,
``SoftTargetCrossEntropy`` / ``LabelSmoothingCrossEntropy``, ``create_optimizer_v2``, ``create_scheduler_v2``,
``ModelEmaV3``.

Runs on one CPU or under ``torchrun`` (DistributedDataParallel: gloo on CPU, NCCL on GPU); only rank 0 writes.
Checkpoints (``last.pth`` every epoch, ``best.pth`` on a new best top-1) are written atomically. Every random
generator is reseeded from (seed, epoch, rank) at the start of each epoch, so ``--resume`` from an epoch's checkpoint
continues bit-for-bit as the uninterrupted run would on the same machine and thread count.
"""
import json
import os
import logging
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler
from torch.utils.data.distributed import DistributedSampler

from .config import AUTO_PAPER_EPOCHS, RECIPE_NAMES, TrainConfig, auto_recipe, check_ranges  # noqa: F401  (public here too)
from .flops import count_params
from .data import (
    SplitView, build_dataset, check_input_size, build_transform, collate_skip_bad, dataset_labels, holdout_indices, resolve_dataset,
)
from .runs import (  # noqa: F401  (init_distributed ... load_checkpoint: also this module's public names)
    LossMeter, NonFiniteError, RunFolder, _Dist, all_sum, epoch_seed, init_distributed, load_checkpoint, load_resume,
    peer_failures, seed_everything,
)
from .io import atomic_path
from .weights import create_from_checkpoint, require_models

__all__ = ["TrainConfig", "RECIPES", "recipe_for", "train", "validate", "evaluate", "TrainingError",
           "parse_size_schedule", "load_checkpoint", "init_distributed", "all_sum", "seed_everything", "epoch_seed"]

_log = logging.getLogger(__name__)

# The recipe by model size (spec: "Training recipe"). FasterNet's t0..l map onto the same rows.
RECIPES: Dict[str, Dict[str, Any]] = {
    "t0": dict(mixup=0.05, auto_augment=None, weight_decay=0.005, clip_grad=None),
    "t1": dict(mixup=0.1, auto_augment="rand-m3-mstd0.5", weight_decay=0.01, clip_grad=None),
    "t2": dict(mixup=0.1, auto_augment="rand-m5-mstd0.5", weight_decay=0.02, clip_grad=None),
    "s": dict(mixup=0.3, auto_augment="rand-m7-mstd0.5", weight_decay=0.03, clip_grad=None),
    "m": dict(mixup=0.5, auto_augment="rand-m7-mstd0.5", weight_decay=0.05, clip_grad=1.0),
    "l": dict(mixup=0.7, auto_augment="rand-m7-mstd0.5", weight_decay=0.05, clip_grad=0.01),
}
RECIPE_COMMON = dict(cutmix=1.0, smoothing=0.1, min_lr=1e-5, base_lr=1e-3, base_batch=1024, warmup_fraction=20 / 300)
# ``--recipe short``: for small data and minutes of CPU (the set-up's main job, the Fashion-MNIST studies). Mixup,
# cutmix and RandAugment cost more accuracy than they regularise in a few epochs; a higher peak lr (2e-3 at batch
# 128) and mild crops. Any flag still overrides it.
SHORT_RECIPE = dict(mixup=0.0, cutmix=0.0, auto_augment=None, smoothing=0.1, min_lr=1e-5, base_lr=0.016,
                    base_batch=1024, warmup_fraction=0.15, weight_decay=0.05, clip_grad=None)
SHORT_SCALE, SHORT_CROP_PCT = (0.7, 1.0), 1.0


# Training cannot go on (diverged loss, non-finite weights); the message says where and which checkpoint is good.
TrainingError = NonFiniteError


def recipe_for(model_name: str, recipe: str = "paper") -> Dict[str, Any]:
    """The paper's recipe row of a model name by its size suffix (patnet_t2 / fasternet_t2 -> 't2'; T0's
    otherwise), or the short recipe (``SHORT_RECIPE``, the same for every size)."""
    if recipe not in RECIPE_NAMES:
        raise ValueError(f"unknown recipe {recipe!r}; use one of {', '.join(RECIPE_NAMES)}")
    size = model_name.rsplit("_", 1)[-1].split(".")[0]
    if size not in RECIPES:
        _log.info("no recipe row for %s; using T0's", model_name)
        size = "t0"
    if recipe == "short":
        return dict(SHORT_RECIPE)
    return {**RECIPE_COMMON, **RECIPES[size]}


def parse_size_schedule(spec: Optional[str], default: int) -> List[Tuple[int, int]]:
    """``"0:192,280:224"`` -> [(0, 192), (280, 224)]: from epoch 0 train at 192, from epoch 280 at 224."""
    if not spec:
        return [(0, default)]
    try:
        steps = sorted((int(e), int(s)) for e, s in (part.split(":") for part in spec.split(",")))
    except ValueError:
        raise ValueError(f"--img-size-schedule {spec!r}: expected EPOCH:SIZE pairs such as 0:192,280:224") from None
    if steps[0][0] != 0:
        steps.insert(0, (0, default))
    return steps


def _size_at(schedule: List[Tuple[int, int]], epoch: int) -> int:
    return [s for e, s in schedule if e <= epoch][-1]


# ------------------------------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------------------------------

@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, d: _Dist, amp: str = "none", channels_last: bool = False,
             max_batches: Optional[int] = None, progress: bool = False, desc: str = "validate") -> Dict[str, float]:
    """Loss (plain cross-entropy), top-1 and top-5 (percent), summed over every rank's shard.

    Counts, not per-batch percentages: ``timm.utils.accuracy`` / ``AverageMeter`` give a local mean of batch
    percentages, which neither reduces across processes nor stays exact with a short last batch. Sums stay on the
    device until the end (one sync and one collective per evaluation).
    """
    from tqdm.auto import tqdm

    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=d.device)  # loss, top-1 hits, top-5 hits, images
    skipped = 0
    total = len(loader) if max_batches is None else min(len(loader), max_batches)
    for i, (images, labels, bad) in enumerate(tqdm(loader, total=total, desc=desc, disable=not progress,
                                                   leave=False)):
        if max_batches is not None and i >= max_batches:
            break
        skipped += bad
        if len(labels) == 0:
            continue
        images, labels = images.to(d.device), labels.to(d.device)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with _autocast(amp, d.device):
            logits = model(images)
        logits = logits.float()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        sums += torch.stack([
            nn.functional.cross_entropy(logits, labels, reduction="sum").double(),
            (top[:, 0] == labels).sum().double(), (top == labels[:, None]).any(dim=1).sum().double(),
            torch.tensor(float(len(labels)), dtype=torch.float64, device=d.device),
        ])
    loss_sum, correct1, correct5, count, skipped = all_sum([*sums.tolist(), skipped], d)
    if count == 0:
        raise ValueError("no readable validation images were evaluated (all were skipped, or the split is empty)")
    return {"loss": loss_sum / count, "top1": 100 * correct1 / count, "top5": 100 * correct5 / count,
            "count": int(count), "skipped": int(skipped)}


def _norm_of(model: nn.Module) -> Dict[str, Any]:
    """Normalisation and interpolation from the model's pretrained config (``timm.data.resolve_model_data_config``)."""
    from timm.data import resolve_model_data_config

    cfg = resolve_model_data_config(model)
    return {"mean": tuple(cfg["mean"]), "std": tuple(cfg["std"]), "interpolation": cfg["interpolation"]}


def _autocast(amp: str, device: torch.device):
    if amp == "none":
        return torch.autocast(device.type, enabled=False)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    if device.type == "cpu" and amp == "fp16":
        raise ValueError("--amp fp16 needs a GPU; use --amp bf16 on CPU")
    return torch.autocast(device.type, dtype=dtype)


def _loader(ds: Dataset, batch: int, training: bool, d: _Dist, workers: int, seed: int) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    if d.world > 1:
        if training:
            sampler = DistributedSampler(ds, d.world, d.rank, shuffle=True, seed=seed, drop_last=True)
        else:  # an unpadded shard per rank, so reduced metrics count every image exactly once
            sampler = list(range(d.rank, len(ds), d.world))
    else:
        sampler = RandomSampler(ds, generator=g) if training else SequentialSampler(ds)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if workers > cores:  # more loader processes than cores only costs memory and forks
        _log.info("--workers %d capped to the %d cores this process may use", workers, cores)
        workers = cores
    return DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=workers, collate_fn=collate_skip_bad,
                      drop_last=training, generator=g, pin_memory=d.device.type == "cuda")


# ------------------------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------------------------

def _resolve(cfg: TrainConfig, recipe: Dict[str, Any], world: int) -> Dict[str, Any]:
    aa = recipe["auto_augment"] if cfg.auto_augment is None else (None if cfg.auto_augment == "none" else cfg.auto_augment)
    global_batch = cfg.batch_size * world
    return dict(
        lr=cfg.lr if cfg.lr is not None else recipe["base_lr"] * global_batch / recipe["base_batch"],
        weight_decay=recipe["weight_decay"] if cfg.weight_decay is None else cfg.weight_decay,
        warmup_epochs=cfg.warmup_epochs if cfg.warmup_epochs is not None else recipe["warmup_fraction"] * cfg.epochs,
        min_lr=recipe["min_lr"] if cfg.min_lr is None else cfg.min_lr,
        mixup=recipe["mixup"] if cfg.mixup is None else cfg.mixup,
        cutmix=recipe["cutmix"] if cfg.cutmix is None else cfg.cutmix,
        smoothing=recipe["smoothing"] if cfg.smoothing is None else cfg.smoothing,
        auto_augment=aa,
        clip_grad=recipe["clip_grad"] if cfg.clip_grad is None else (cfg.clip_grad or None),
        global_batch=global_batch,
    )


def _create_model(name: str, num_classes: int, drop_path_rate: Optional[float]) -> nn.Module:
    import timm

    require_models(name)
    kwargs: Dict[str, Any] = {"num_classes": num_classes}
    if drop_path_rate is not None:
        kwargs["drop_path_rate"] = drop_path_rate
    return timm.create_model(name, **kwargs)


def train(cfg: TrainConfig) -> Dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.data``; returns the final metrics (also written to ``metrics.json``).

    The output folder is owned through ``runs.RunFolder`` (locked, never silently replaced, checkpoints written
    best-first after a finite check); ``cfg.resume`` continues a run with its own saved arguments
    (``runs.resume_config``).

    Raises:
        ValueError / FileNotFoundError: bad data, checkpoint or arguments, before any training step.
        RunFolderError: the output folder is in use, or holds a run and neither resume nor overwrite was asked.
        NonFiniteError: the loss, a metric or a weight became NaN / inf (the last good checkpoint is kept, named).
    """
    d = init_distributed()
    cfg, resume_state = load_resume(cfg, TrainConfig(), "patnet train")
    _check_config(cfg)

    require_models(cfg.model)  # an unknown name is the first and only message
    resolve_dataset(cfg.data)  # a bad --data fails before the output folder is created
    if cfg.recipe == "auto":  # resolved once and saved as such, so a resume (or an extension) keeps it
        cfg = replace(cfg, recipe=auto_recipe(cfg.epochs))
        _log.info("recipe: %s (--recipe auto: %s; name --recipe paper|short to choose)", cfg.recipe,
                  f"{cfg.epochs} epochs, below the paper recipe's {AUTO_PAPER_EPOCHS}" if cfg.recipe == "short"
                  else f"{cfg.epochs} epochs, enough for the paper's recipe")
    if cfg.recipe == "short":  # its crops, unless given
        defaults = TrainConfig()
        cfg = replace(cfg, scale=SHORT_SCALE if tuple(cfg.scale) == tuple(defaults.scale) else cfg.scale,
                      crop_pct=SHORT_CROP_PCT if cfg.crop_pct == defaults.crop_pct else cfg.crop_pct)
    with RunFolder(Path(cfg.output), resume=resume_state is not None, overwrite=cfg.overwrite,
                   enabled=d.main) as folder, peer_failures(d, Path(cfg.output)):
        return _train(cfg, d, resume_state, folder)


def _check_config(cfg: TrainConfig) -> None:
    """Every argument error as one line, before data or models are touched: the declared ranges
    (``config.check_ranges``), then what involves more than one value."""
    check_ranges(cfg)
    if not cfg.scale[0] <= cfg.scale[1]:
        raise ValueError(f"--scale must be two numbers 0 < MIN <= MAX <= 1, got {list(cfg.scale)}")
    check_input_size(cfg.img_size, cfg.img_size, "--img-size")
    if cfg.auto_augment not in (None, "none"):
        from timm.data.auto_augment import rand_augment_transform

        try:
            rand_augment_transform(cfg.auto_augment, {})
        except Exception:
            raise ValueError(f"--auto-augment {cfg.auto_augment!r} is not a timm RandAugment string "
                             "(e.g. rand-m7-mstd0.5) or 'none'") from None


def train_one_epoch(
        net: nn.Module, model: nn.Module, loader: DataLoader, criterion: nn.Module, optimizer: torch.optim.Optimizer,
        scheduler: Any, scaler: torch.amp.GradScaler, cfg: TrainConfig, clip_grad: Optional[float], d: _Dist,
        epoch: int, steps: int, step: int, out: Path, ema: Optional[nn.Module] = None, mixup: Optional[Any] = None,
) -> Tuple[Dict[str, Any], int]:
    """One epoch of classification training; returns (its metrics, the global step after it).

    ``net`` runs the steps (``model`` itself, or its DDP / compiled wrapper); ``model`` holds the weights that are
    clipped and tracked by ``ema``. ``scheduler`` is timm's, stepped per update. The loss is summed on the device
    and reduced every ``runs.LOSS_CHECK_EVERY`` steps and at the end (``runs.LossMeter``), where NaN / inf
    stops the run before anything of the epoch is written.
    """
    from timm.utils import dispatch_clip_grad
    from tqdm.auto import tqdm

    net.train()
    meter = LossMeter(d, out, epoch)
    seen, skipped, t0 = 0, 0, time.perf_counter()
    bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not (cfg.progress and d.main),
               leave=False)
    for i, (images, labels, bad) in enumerate(loader):
        if i >= steps:
            break
        skipped += bad
        if len(labels) < 2:
            continue
        if mixup is not None and len(labels) % 2:
            images, labels = images[:-1], labels[:-1]
        images, labels = images.to(d.device, non_blocking=True), labels.to(d.device, non_blocking=True)
        targets = labels
        if mixup is not None:
            images, targets = mixup(images, labels)
        if cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with _autocast(cfg.amp, d.device):
            loss = criterion(net(images), targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if clip_grad:
            scaler.unscale_(optimizer)
            dispatch_clip_grad(model.parameters(), clip_grad, mode="norm")
        scaler.step(optimizer)
        scaler.update()
        step += 1
        scheduler.step_update(step)
        if ema is not None:
            ema.update(model, step=step)
        seen += len(labels)
        if meter.update(loss, len(labels)):
            bar.set_postfix(loss=f"{meter.mean:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}",
                            img_s=f"{seen * d.world / (time.perf_counter() - t0):.0f}")
        bar.update(1)
    bar.close()
    train_loss = meter.reduce()
    seconds = time.perf_counter() - t0
    (skipped,) = all_sum([skipped], d)
    return {"train_loss": train_loss, "train_images": seen * d.world, "train_seconds": seconds,
            "skipped_images": int(skipped)}, step


def _train(cfg: TrainConfig, d: "_Dist", resume_state: Optional[Dict[str, Any]], folder: RunFolder) -> Dict[str, Any]:
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from timm.utils import ModelEmaV3

    out = Path(cfg.output)
    _check_config(cfg)
    schedule = parse_size_schedule(cfg.img_size_schedule, cfg.img_size)
    info = resolve_dataset(cfg.data)
    recipe = recipe_for(cfg.model, cfg.recipe)
    r = _resolve(cfg, recipe, d.world)
    seed_everything(cfg.seed)  # the initial weights depend on the seed alone (the same on every rank)
    model = _create_model(cfg.model, info.num_classes, cfg.drop_path_rate).to(d.device)

    # Everything that can be wrong with a resume is checked before the first step.
    start_epoch, best, history = 0, {"top1": -1.0, "epoch": -1}, []
    if resume_state is not None:
        arch = resume_state.get("arch", {})
        if arch.get("model") != cfg.model or arch.get("num_classes") != info.num_classes:
            raise ValueError(
                f"--resume {cfg.resume} is a {arch.get('model')} with {arch.get('num_classes')} classes; this run is "
                f"{cfg.model} with {info.num_classes} classes"
            )
        try:
            model.load_state_dict(resume_state["model"])
            start_epoch = resume_state["epoch"] + 1
            for key in ("optimizer", "scheduler"):
                if key not in resume_state:
                    raise KeyError(key)
        except (KeyError, RuntimeError) as e:
            raise ValueError(f"--resume {cfg.resume} is incomplete or does not fit {cfg.model}: "
                             f"{str(e).splitlines()[0][:200]}") from None
        if start_epoch > cfg.epochs:
            raise ValueError(f"--epochs {cfg.epochs}: the run has already done {start_epoch} epochs; give more "
                             "epochs to extend it")
        if start_epoch == cfg.epochs and (Path(cfg.output) / "metrics.json").exists():
            raise ValueError(f"--resume {cfg.resume} already finished its {cfg.epochs} epochs; give --epochs N "
                             "(more) to extend it")
        saved_epochs = resume_state.get("config", {}).get("epochs", cfg.epochs)
        saved_world = resume_state.get("world_size", d.world)
        if saved_world != d.world:
            raise ValueError(f"--resume {cfg.resume} was trained on {saved_world} processes (global batch "
                             f"{cfg.batch_size * saved_world}); resume it on {saved_world} (torchrun "
                             f"--nproc-per-node {saved_world}) so the batch and learning rate stay as they were")
        best, history = resume_state.get("best", best), resume_state.get("history", [])
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)

    train_ds = build_dataset(info, "train", None, cfg.strict_data)
    norm = _norm_of(model)  # the model's own mean / std / interpolation (ImageNet's for PATNet and FasterNet)
    eval_transform = build_transform(cfg.img_size, False, crop_pct=cfg.crop_pct, **norm)
    if cfg.val_split:  # tune on a held-out part of the training set; the val / test split is never read
        train_idx, held_idx = holdout_indices(dataset_labels(train_ds), cfg.val_split)
        train_ds, val_ds = SplitView(train_ds, train_idx), SplitView(train_ds, held_idx, eval_transform)
        _log.info("--val-split %g: validating on %d held-out training images (same split for every seed); "
                  "training on %d; the test split is not used", cfg.val_split, len(val_ds), len(train_ds))
    else:
        val_ds = build_dataset(info, "val", eval_transform, cfg.strict_data)
    if len(train_ds) < cfg.batch_size * d.world:
        raise ValueError(f"{len(train_ds)} training images cannot fill one batch of {cfg.batch_size} x {d.world}")

    optimizer = create_optimizer_v2(model, "adamw", lr=r["lr"], weight_decay=r["weight_decay"], betas=(0.9, 0.999))
    steps_per_epoch = len(train_ds) // (cfg.batch_size * d.world)
    if cfg.max_train_batches:
        steps_per_epoch = min(steps_per_epoch, cfg.max_train_batches)
    # warmup_epochs may be fractional (the recipe's 20/300 of a short run): timm scales it by updates_per_epoch.
    scheduler, _ = create_scheduler_v2(
        optimizer, "cosine", num_epochs=cfg.epochs, warmup_epochs=r["warmup_epochs"], min_lr=r["min_lr"],
        warmup_lr=1e-6, step_on_epochs=False, updates_per_epoch=steps_per_epoch,
    )
    scaler = torch.amp.GradScaler(enabled=cfg.amp == "fp16" and d.device.type == "cuda")
    ema = ModelEmaV3(model, decay=cfg.model_ema_decay) if cfg.model_ema else None
    if resume_state is not None:
        optimizer.load_state_dict(resume_state["optimizer"])
        if cfg.epochs == saved_epochs:
            scheduler.load_state_dict(resume_state["scheduler"])
        # else: an extended run keeps the new scheduler (per-step cosine over the new length, as timm's train.py
        # does on --resume with more --epochs): the learning rate continues from where the longer schedule is
        scaler.load_state_dict(resume_state.get("scaler", {}) or scaler.state_dict())
        if ema is not None and resume_state.get("ema") is not None:
            ema.load_state_dict(resume_state["ema"])

    use_mix = r["mixup"] > 0 or r["cutmix"] > 0
    mixup = Mixup(mixup_alpha=r["mixup"], cutmix_alpha=r["cutmix"], label_smoothing=r["smoothing"],
                  num_classes=info.num_classes) if use_mix else None
    criterion = SoftTargetCrossEntropy() if use_mix else LabelSmoothingCrossEntropy(r["smoothing"])
    net = nn.parallel.DistributedDataParallel(model) if d.world > 1 else model
    if cfg.compile:  # as timm's train.py: compile the (DDP-wrapped) module; weights stay in ``model``
        net = torch.compile(net)

    writer = None
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        resolved = {**asdict(cfg), "resolved": r, "world_size": d.world, "num_classes": info.num_classes,
                    "classes": info.classes, "data_root": str(info.root), "img_size_schedule_parsed": schedule}
        with atomic_path(out / "args.json") as tmp:
            tmp.write_text(json.dumps(resolved, indent=2, default=str))
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(out / "tensorboard"))
        _log.info("training %s on %s (%d images, %d classes): %d epochs, global batch %d, lr %.2e, world %d",
                  cfg.model, info.root, len(train_ds), info.num_classes, cfg.epochs, r["global_batch"], r["lr"], d.world)

    val_loader = _loader(val_ds, cfg.batch_size, False, d, cfg.workers, cfg.seed)
    total_images, total_time = 0, 0.0
    for h in history:
        total_images += h["train_images"]
        total_time += h["train_seconds"]
    step = start_epoch * steps_per_epoch
    metrics: Dict[str, Any] = history[-1] if history else {}
    for epoch in range(start_epoch, cfg.epochs):
        seed_everything(epoch_seed(cfg.seed, epoch, d.rank))
        size = _size_at(schedule, epoch)
        train_ds.transform = build_transform(size, True, r["auto_augment"], tuple(cfg.scale), **norm)
        loader = _loader(train_ds, cfg.batch_size, True, d, cfg.workers, epoch_seed(cfg.seed, epoch))
        if isinstance(loader.sampler, DistributedSampler):
            loader.sampler.set_epoch(epoch)
        done, step = train_one_epoch(net, model, loader, criterion, optimizer, scheduler, scaler, cfg, r["clip_grad"],
                                     d, epoch, steps_per_epoch, step, out, ema=ema, mixup=mixup)
        images_epoch, train_seconds = done["train_images"], done["train_seconds"]
        total_images += images_epoch
        total_time += train_seconds
        val = evaluate(model, val_loader, d, cfg.amp, cfg.channels_last, cfg.max_val_batches,
                       progress=cfg.progress and d.main, desc=f"validate epoch {epoch + 1}")
        metrics = {
            "epoch": epoch + 1, "train_loss": done["train_loss"], "loss": val["loss"], "top1": val["top1"],
            "top5": val["top5"], "val_images": val["count"], "lr": optimizer.param_groups[0]["lr"], "img_size": size,
            "train_images": images_epoch, "train_seconds": train_seconds,
            "train_images_per_second": images_epoch / max(train_seconds, 1e-9),
            "skipped_images": done["skipped_images"] + val["skipped"],
        }
        if ema is not None:
            ev = evaluate(ema.module, val_loader, d, cfg.amp, cfg.channels_last, cfg.max_val_batches,
                          progress=cfg.progress and d.main, desc="validate EMA")
            metrics.update(top1_ema=ev["top1"], top5_ema=ev["top5"])
        if metrics["skipped_images"]:
            _log.warning("epoch %d: skipped %d unreadable images (paths logged above)", epoch + 1, metrics["skipped_images"])
        history.append(metrics)
        is_best = metrics["top1"] > best["top1"]
        if is_best:
            best = {"top1": metrics["top1"], "epoch": epoch + 1}
        if d.main:
            state = {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "ema": ema.state_dict() if ema is not None else None,
                "epoch": epoch, "best": best, "history": history, "world_size": d.world,
                "arch": {"model": cfg.model, "num_classes": info.num_classes, "img_size": cfg.img_size},
                "config": asdict(cfg),
            }
            folder.save_epoch(state, is_best, history, checked_metrics=("loss", "train_loss"))
            if writer is not None:
                for k in ("train_loss", "loss", "top1", "top5", "lr", "train_images_per_second"):
                    writer.add_scalar(k, metrics[k], epoch + 1)
            _log.info("epoch %d/%d: train loss %.4f, val loss %.4f, top1 %.2f, top5 %.2f, %.0f img/s", epoch + 1,
                      cfg.epochs, metrics["train_loss"], metrics["loss"], metrics["top1"], metrics["top5"],
                      metrics["train_images_per_second"])

    if d.main and start_epoch == cfg.epochs:  # killed after its last checkpoint, before it was finalised
        _log.info("the run's last epoch was saved but not finalised; writing its log and metrics.json")
        folder.write_log(history)

    final = {
        "model": cfg.model, "data": str(info.root), "top1": metrics.get("top1"), "top5": metrics.get("top5"),
        "loss": metrics.get("loss"), "epochs": cfg.epochs, "best_top1": best["top1"], "best_epoch": best["epoch"],
        "train_images_per_second": total_images / max(total_time, 1e-9), "params_m": count_params(model) / 1e6,
        "seed": cfg.seed, "world_size": d.world, "img_size": cfg.img_size,
    }
    if d.main:
        folder.write_json("metrics.json", final)
        if writer is not None:
            writer.close()
    if d.world > 1:
        dist.barrier()
    return final


def validate(
        model_name: str, data: str, checkpoint: Path, img_size: int = 64, batch_size: int = 128, crop_pct: float = 0.9,
        act_layer: Optional[str] = None, workers: int = 2, amp: str = "none", output: Optional[Path] = None,
        max_batches: Optional[int] = None, progress: bool = True,
) -> Dict[str, Any]:
    """Evaluate a checkpoint on ``data``'s val split: a training checkpoint of ours, weights from
    a ``patnet convert`` folder, or an authors'-layout checkpoint (converted on the fly, strictly)."""
    d = init_distributed()
    info = resolve_dataset(data)
    model = create_from_checkpoint(model_name, checkpoint, act_layer)
    classes = getattr(model, "num_classes", None)
    if classes != info.num_classes:
        raise ValueError(f"{checkpoint} has {classes} classes; {data} has {info.num_classes}")
    model = model.to(d.device)
    ds = build_dataset(info, "val", build_transform(img_size, False, crop_pct=crop_pct, **_norm_of(model)))
    res = evaluate(model, _loader(ds, batch_size, False, d, workers, 0), d, amp, max_batches=max_batches,
                   progress=progress and d.main)
    res.update(model=model_name, checkpoint=str(checkpoint), data=str(info.root), img_size=img_size)
    if output is not None and d.main:
        with atomic_path(Path(output) / "metrics.json") as tmp:
            tmp.write_text(json.dumps(res, indent=2))
    return res
