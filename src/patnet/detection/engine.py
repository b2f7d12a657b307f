"""Detection training, COCO evaluation (pycocotools) and prediction pictures.

Training: AdamW, a linear warm-up then step (x0.1 at 2/3 and 8/9 of the run, the "1x" shape) or cosine decay,
checkpoints every epoch written atomically, DistributedDataParallel under torchrun (only rank 0 writes). Evaluation
writes AP, AP50, AP75 and AP for small / medium / large objects, for boxes and (with masks) segmentation, to
``coco_metrics.json``.
"""
import contextlib
import io
import json
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, RandomSampler, SequentialSampler
from torch.utils.data.distributed import DistributedSampler

from ..config import DetectConfig, check_ranges  # noqa: F401  (also this module's public name)
from ..data import open_rgb
from ..runs import (
    LossMeter, RunFolder, epoch_seed, init_distributed, load_checkpoint, load_resume, peer_failures,
    seed_everything,
)
from ..errors import PatnetError
from ..io import atomic_path
from .data import CocoDataset, collate, detection_transform
from .models import build_detector

__all__ = ["DetectConfig", "train_detector", "evaluate_detector", "predict_image", "load_detector", "COCO_STAT_NAMES"]

_log = logging.getLogger(__name__)

COCO_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


class DetectionError(PatnetError):
    """Detection training cannot go on."""


def _lr_factor(cfg: DetectConfig, it: int, total: int) -> float:
    """The lr multiplier at iteration ``it``: linear warm-up times step (2/3, 8/9 of training) or cosine decay.

    As torchvision's detection references (``LinearLR`` warm-up chained with ``MultiStepLR`` / cosine), written as a
    closed form of the iteration so a resumed run needs no scheduler state. timm's schedulers are not used here:
    their warm-up is a separate phase ramping from ``warmup_lr_init`` rather than a factor on the decayed lr, so
    they would not reproduce the references' schedule.
    """
    warm = min(1.0, (it + 1) / max(cfg.warmup_iters, 1))
    t = it / max(total, 1)
    if cfg.schedule == "cosine":
        decay = 0.5 * (1 + math.cos(math.pi * t))
    else:
        decay = 0.1 ** (int(t >= 2 / 3) + int(t >= 8 / 9))
    return warm * decay


def load_detector(checkpoint: Path, map_location: str = "cpu") -> nn.Module:
    """Rebuild a detector saved by ``train_detector`` (architecture from the checkpoint), in eval mode."""
    state = load_checkpoint(Path(checkpoint))
    if "detector" not in state:
        raise ValueError(f"{checkpoint} is not a detection checkpoint of patnet (no 'detector' entry)")
    d = state["detector"]
    try:
        model = build_detector(d["model"], d["num_classes"], d["task"], d["min_size"], d["max_size"], norm=d["norm"])
        model.load_state_dict(state["model"])
        model.class_names = list(d["class_names"])
    except (KeyError, TypeError, AttributeError, RuntimeError) as e:
        what = f"no {e}" if isinstance(e, KeyError) else str(e).splitlines()[0][:200]
        raise ValueError(f"{checkpoint} is a malformed detection checkpoint ({what}); use a last.pth or best.pth "
                         "that patnet detect train wrote") from None
    return model.eval()


def train_detector(cfg: DetectConfig) -> Dict[str, Any]:
    """Train a detector; evaluates on the validation split at the end (if given). Returns the final metrics.

    The output folder, resume semantics and checkpoint writing are the shared ``patnet.runs``' (as for
    classification): locked folder, the run's own arguments on resume, history kept across resumes, finite check.
    """
    d = init_distributed()
    cfg, state = load_resume(cfg, DetectConfig(), "patnet detect train")
    check_ranges(cfg)
    if not (cfg.ann and cfg.images):
        raise ValueError("patnet detect train needs --ann and --images (training COCO JSON and image folder), or "
                         "--resume RUN/last.pth to continue a run")
    with RunFolder(Path(cfg.output), resume=state is not None, overwrite=cfg.overwrite, enabled=d.main) as folder, \
            peer_failures(d, Path(cfg.output)):
        return _train_detector(cfg, d, state, folder)


def _train_detector(cfg: DetectConfig, d: Any, state: Optional[Dict[str, Any]], folder: RunFolder) -> Dict[str, Any]:
    masks = cfg.task == "masks"
    train_ds = CocoDataset(Path(cfg.ann), Path(cfg.images), masks, detection_transform(True))
    val_ds = CocoDataset(Path(cfg.val_ann), Path(cfg.val_images or cfg.images), masks, detection_transform(False)) \
        if cfg.val_ann else None
    if val_ds is not None and val_ds.class_names != train_ds.class_names:
        raise ValueError(f"validation categories {val_ds.class_names} differ from training's {train_ds.class_names}")
    max_size = cfg.max_size or int(round(cfg.img_size * 5 / 3))
    seed_everything(cfg.seed)
    model = build_detector(cfg.model, train_ds.num_classes, cfg.task, cfg.img_size, max_size, cfg.backbone_checkpoint,
                           cfg.backbone_act, cfg.trainable_stages, cfg.norm, cfg.roi_batch_size).to(d.device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    start_epoch = 0
    history: List[Dict[str, Any]] = []
    if state is not None:
        det = state.get("detector", {})
        if det.get("model") != cfg.model or det.get("num_classes") != train_ds.num_classes or det.get("task") != cfg.task:
            raise ValueError(f"--resume {cfg.resume} is a {det.get('model')} {det.get('task')} detector with "
                             f"{det.get('num_classes')} classes; this run is {cfg.model} {cfg.task} with "
                             f"{train_ds.num_classes}")
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        except (KeyError, RuntimeError, ValueError) as e:
            raise ValueError(f"--resume {cfg.resume} is incomplete or does not fit this detector: "
                             f"{str(e).splitlines()[0][:200]}") from None
        start_epoch = state["epoch"] + 1
        history = list(state.get("history", []))  # the earlier epochs stay in log.jsonl
    net = nn.parallel.DistributedDataParallel(model) if d.world > 1 else model
    out = Path(cfg.output)
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / "args.json") as tmp:
            tmp.write_text(json.dumps({**asdict(cfg), "max_size": max_size, "world_size": d.world,
                                       "class_names": train_ds.class_names}, indent=2))
    per_epoch = len(train_ds) // (cfg.batch_size * d.world)
    if cfg.max_iters_per_epoch:
        per_epoch = min(per_epoch, cfg.max_iters_per_epoch)
    if per_epoch < 1:
        raise ValueError(f"{len(train_ds)} training images cannot fill one batch of {cfg.batch_size} x {d.world}")
    total = per_epoch * cfg.epochs
    for epoch in range(start_epoch, cfg.epochs):
        seed_everything(epoch_seed(cfg.seed, epoch, d.rank))
        g = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch))
        sampler = DistributedSampler(train_ds, d.world, d.rank, seed=cfg.seed, drop_last=True) if d.world > 1 \
            else RandomSampler(train_ds, generator=g)
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        loader = DataLoader(train_ds, cfg.batch_size, sampler=sampler, num_workers=cfg.workers, collate_fn=collate,
                            drop_last=True, generator=g)
        loss, n, seconds = train_one_epoch(net, loader, optimizer, params, cfg, d, epoch, per_epoch, total, out)
        history.append({"epoch": epoch + 1, "loss": loss, "seconds": seconds,
                        "images_per_second": n * cfg.batch_size * d.world / max(seconds, 1e-9)})
        _log.info("epoch %d/%d: loss %.4f, %.1f img/s", epoch + 1, cfg.epochs, history[-1]["loss"],
                  history[-1]["images_per_second"])
        if d.main:
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                     "history": history, "config": asdict(cfg),
                     "detector": {"model": cfg.model, "num_classes": train_ds.num_classes, "task": cfg.task,
                                  "min_size": cfg.img_size, "max_size": max_size, "norm": cfg.norm,
                                  "class_names": train_ds.class_names}}
            folder.save_epoch(state, False, history)
    metrics: Dict[str, Any] = {"epochs": cfg.epochs, "history": history}
    if val_ds is not None:
        metrics.update(evaluate_detector(model, val_ds, d, out if d.main else None, cfg.workers,
                                         progress=cfg.progress))
    return metrics


def train_one_epoch(net: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, params: List[nn.Parameter],
                    cfg: DetectConfig, d: Any, epoch: int, per_epoch: int, total: int,
                    out: Path) -> Tuple[float, int, float]:
    """One epoch of detection training: (mean loss per iteration over every rank, iterations, seconds).

    The lr follows ``_lr_factor`` per iteration; the loss is reduced at intervals and at the end
    (``runs.LossMeter``), where NaN / inf stops the run before anything of the epoch is written.
    """
    from tqdm.auto import tqdm

    net.train()
    meter = LossMeter(d, out, epoch)
    t0, n = time.perf_counter(), 0
    bar = tqdm(total=per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not (cfg.progress and d.main),
               leave=False)
    for i, (images, targets) in enumerate(loader):
        if i >= per_epoch:
            break
        if not images:  # every image of the batch was unreadable (logged by the dataset)
            continue
        it = epoch * per_epoch + i
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * _lr_factor(cfg, it, total)
        images = [im.to(d.device) for im in images]
        targets = [{k: (v.to(d.device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
        losses = net(images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip_grad:
            torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
        optimizer.step()
        n += 1
        if meter.update(loss):
            bar.set_postfix(loss=f"{meter.mean:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.1e}")
        bar.update(1)
    bar.close()
    return meter.reduce(), n, time.perf_counter() - t0


@torch.no_grad()
def evaluate_detector(model: nn.Module, dataset: CocoDataset, d: Any = None, output: Optional[Path] = None,
                      workers: int = 2, max_images: Optional[int] = None, progress: bool = True) -> Dict[str, Any]:
    """COCO AP of ``model`` on ``dataset`` (boxes, and masks if the dataset has them); written to
    ``output/coco_metrics.json`` when ``output`` is given. Under DDP each rank predicts a shard, rank 0 scores."""
    from pycocotools import mask as mask_utils
    from pycocotools.cocoeval import COCOeval

    d = d or init_distributed()
    model.eval()
    indices = list(range(len(dataset)))[: max_images or None]
    shard = indices[d.rank::d.world]
    loader = DataLoader(torch.utils.data.Subset(dataset, shard), batch_size=2, num_workers=workers,
                        collate_fn=collate, sampler=SequentialSampler(shard))
    from tqdm.auto import tqdm

    results: List[Dict[str, Any]] = []
    t0 = time.perf_counter()
    for images, targets in tqdm(loader, desc="COCO evaluation", disable=not (progress and d.main), leave=False):
        if not images:
            continue
        outputs = model([im.to(d.device) for im in images])
        for out, tgt in zip(outputs, targets):
            boxes = out["boxes"].cpu()
            for j in range(len(boxes)):
                x1, y1, x2, y2 = boxes[j].tolist()
                res = {"image_id": int(tgt["image_id"]), "category_id": dataset.label_to_cat[int(out["labels"][j])],
                       "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(out["scores"][j])}
                if dataset.masks and "masks" in out:
                    m = (out["masks"][j, 0] > 0.5).cpu().numpy().astype(np.uint8)
                    rle = mask_utils.encode(np.asfortranarray(m))
                    rle["counts"] = rle["counts"].decode("ascii")
                    res["segmentation"] = rle
                results.append(res)
    seconds = time.perf_counter() - t0
    if d.world > 1:
        import torch.distributed as dist

        gathered: List[Any] = [None] * d.world
        dist.all_gather_object(gathered, results)
        results = [r for part in gathered for r in part]
    metrics: Dict[str, Any] = {"images": len(indices), "detections": len(results),
                               "seconds_per_image": seconds / max(len(shard), 1)}
    kinds = ["bbox"] + (["segm"] if dataset.masks else [])
    for kind in kinds:
        stats = [0.0] * 6
        if results:
            with contextlib.redirect_stdout(io.StringIO()):
                dets = dataset.coco.loadRes(results)
                ev = COCOeval(dataset.coco, dets, kind)
                ev.params.imgIds = [dataset.ids[i] for i in indices]
                ev.evaluate()
                ev.accumulate()
                ev.summarize()
            stats = [float(s) for s in ev.stats[:6]]
        # pycocotools reports -1 where a size range has no objects; keep that meaning.
        metrics["boxes" if kind == "bbox" else "masks"] = {n: (100 * s if s >= 0 else -1.0)
                                                           for n, s in zip(COCO_STAT_NAMES, stats)}
    if output is not None and d.main:
        output.mkdir(parents=True, exist_ok=True)
        with atomic_path(output / "coco_metrics.json") as tmp:
            tmp.write_text(json.dumps(metrics, indent=2))
    return metrics


@torch.no_grad()
def predict_image(model: nn.Module, image_path: Path, out_path: Path, score_threshold: float = 0.5) -> Dict[str, Any]:
    """Detect objects in one image and save a PNG with boxes, labels, scores (and masks) drawn on it."""
    from torchvision.transforms.functional import pil_to_tensor, to_pil_image
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    if not Path(image_path).is_file():
        raise FileNotFoundError(f"image {image_path} does not exist")
    from PIL import Image

    try:
        pil = open_rgb(image_path)
    except (OSError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot read image {image_path} ({type(e).__name__}: {str(e)[:120]})") from None
    img = pil_to_tensor(pil)
    model.eval()
    out = model([img.float() / 255])[0]
    keep = out["scores"] >= score_threshold
    names = getattr(model, "class_names", None)
    labels = [f"{names[int(l) - 1] if names else int(l)} {s:.2f}" for l, s in zip(out["labels"][keep], out["scores"][keep])]
    drawn = img
    if "masks" in out and keep.any():
        drawn = draw_segmentation_masks(drawn, out["masks"][keep][:, 0] > 0.5, alpha=0.45)
    if keep.any():
        drawn = draw_bounding_boxes(drawn, out["boxes"][keep], labels=labels, colors="yellow", width=2)
    with atomic_path(Path(out_path)) as tmp:
        to_pil_image(drawn).save(tmp, format="PNG")
    top = float(out["scores"].max()) if len(out["scores"]) else None
    return {"detections": int(keep.sum()), "labels": labels, "output": str(out_path), "top_score": top}
