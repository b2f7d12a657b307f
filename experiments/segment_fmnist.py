"""Semantic segmentation end to end: segmentation_models_pytorch on PATNet (and FasterNet) encoders.

The data are real Fashion-MNIST photos pasted on noisy canvases: every pixel of an item is labelled with its class
(1..10), the rest is background (0); later items cover earlier ones. It needs nothing beyond the Debian package
``dataset-fashion-mnist`` (or any folder of Fashion-MNIST IDX files) and ``pip install -e '.[segmentation]'``.

    python experiments/segment_fmnist.py --data /usr/share/datasets/fashion-mnist \
        --encoders tu-patnet_t0,tu-fasternet_t0 --arch Unet --epochs 4 --out docs/results/segmentation

The metric is dataset mIoU over the 11 classes (background included): smp's per-class tp/fp/fn summed over the
validation set, IoU per class, then the mean over the classes that occur.
"""
import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks/ is not installed

import numpy as np
import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.machine import environment, machine_line
from patnet.data import read_idx

NUM_CLASSES = 11  # background + the 10 Fashion-MNIST classes
log = logging.getLogger("segment_fmnist")


def make_canvases(images: np.ndarray, labels: np.ndarray, n: int, size: int, per_canvas: int,
                  seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``n`` (3, size, size) float canvases and their (size, size) class masks, from 28x28 items."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.15, 0.08, size=(n, size, size)).clip(0, 1).astype(np.float32)
    y = np.zeros((n, size, size), dtype=np.int64)
    for i in range(n):
        for j in rng.integers(0, len(images), size=rng.integers(1, per_canvas + 1)):
            scale = int(rng.integers(28, 2 * 28 + 1))
            item = F.interpolate(torch.from_numpy(images[j][None, None].astype(np.float32) / 255), size=scale,
                                 mode="bilinear", align_corners=False)[0, 0].numpy()
            r, c = rng.integers(0, size - scale + 1, size=2)
            on = item > 0.2  # the item's own pixels; its dark surround stays background
            x[i, r:r + scale, c:c + scale][on] = item[on]
            y[i, r:r + scale, c:c + scale][on] = int(labels[j]) + 1
    x = (x - 0.3) / 0.3
    return torch.from_numpy(x)[:, None].expand(-1, 3, -1, -1).contiguous(), torch.from_numpy(y)


def load_split(root: Path, split: str) -> Tuple[np.ndarray, np.ndarray]:
    def find(kind: str) -> Path:
        hits = sorted(root.glob(f"{split}-{kind}-idx*-ubyte*"))
        if not hits:
            raise SystemExit(f"no {split}-{kind}-idx*-ubyte[.gz] under {root}")
        return hits[0]
    return read_idx(find("images")), read_idx(find("labels"))


@torch.no_grad()
def miou(model: torch.nn.Module, loader: DataLoader) -> Tuple[float, List[float]]:
    import segmentation_models_pytorch as smp

    model.eval()
    stats = [torch.zeros(NUM_CLASSES, dtype=torch.long) for _ in range(4)]
    for x, y in loader:
        tp, fp, fn, tn = smp.metrics.get_stats(model(x).argmax(1), y, mode="multiclass", num_classes=NUM_CLASSES)
        for acc, s in zip(stats, (tp, fp, fn, tn)):
            acc += s.sum(0)
    tp, fp, fn, tn = (s[None] for s in stats)
    # A class in neither the masks nor the predictions has no IoU (NaN) and is left out of the mean, as mmseg does;
    # smp's default would count it as 1.0.
    per_class = smp.metrics.iou_score(tp, fp, fn, tn, reduction="none", zero_division=float("nan"))[0]
    return float(per_class.nanmean()) * 100, [float(v) * 100 for v in per_class]


def train_one(encoder: str, arch: str, train: DataLoader, val: DataLoader, epochs: int, lr: float,
              seed: int) -> Dict[str, object]:
    import segmentation_models_pytorch as smp

    torch.manual_seed(seed)
    model = getattr(smp, arch)(encoder, encoder_weights=None, classes=NUM_CLASSES)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    opt = create_optimizer_v2(model, "adamw", lr=lr, weight_decay=0.05)
    steps = epochs * len(train)
    sched = CosineLRScheduler(opt, t_initial=steps, warmup_t=min(50, steps // 10), warmup_lr_init=lr / 100)
    history, step, start = [], 0, time.perf_counter()
    for epoch in range(epochs):
        model.train()
        total = 0.0
        for x, y in train:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            sched.step_update(step)
            total += float(loss.detach())
        m, _ = miou(model, val)
        history.append({"epoch": epoch + 1, "loss": total / len(train), "miou": m})
        log.info("%s %s epoch %d: loss %.4f, val mIoU %.2f", arch, encoder, epoch + 1, total / len(train), m)
    m, per_class = miou(model, val)
    return {"encoder": encoder, "arch": arch, "params_m": params, "miou": m, "per_class_iou": per_class,
            "history": history, "train_seconds": time.perf_counter() - start}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    ap.add_argument("--encoders", default="tu-patnet_t0,tu-fasternet_t0")
    ap.add_argument("--arch", default="Unet", help="an smp model class: Unet, FPN, DeepLabV3Plus, ...")
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--train", type=int, default=4000, help="training canvases")
    ap.add_argument("--val", type=int, default=500, help="validation canvases (from the t10k items)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("outputs/segmentation"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import patnet  # noqa: F401  (registers patnet_* so smp's tu- encoders find them)

    torch.set_num_threads(max(1, torch.get_num_threads()))
    tr_x, tr_y = make_canvases(*load_split(args.data, "train"), args.train, args.size, 3, args.seed)
    va_x, va_y = make_canvases(*load_split(args.data, "t10k"), args.val, args.size, 3, args.seed + 1)
    train = DataLoader(TensorDataset(tr_x, tr_y), batch_size=args.batch_size, shuffle=True, drop_last=True,
                       generator=torch.Generator().manual_seed(args.seed))
    val = DataLoader(TensorDataset(va_x, va_y), batch_size=64)
    results = [train_one(e, args.arch, train, val, args.epochs, args.lr, args.seed) for e in args.encoders.split(",")]

    env = environment()
    command = (f"python experiments/segment_fmnist.py --data {args.data} --encoders {args.encoders} --arch {args.arch} "
               f"--size {args.size} --train {args.train} --val {args.val} --epochs {args.epochs} "
               f"--batch-size {args.batch_size} --lr {args.lr} --seed {args.seed} --out {args.out}")
    lines = [f"# Semantic segmentation on Fashion-MNIST canvases ({args.arch})", "",
             f"Command: `{command}`", "", machine_line(env), "",
             f"{args.train} training / {args.val} validation canvases of {args.size}x{args.size} px, 1-3 items each, "
             f"{NUM_CLASSES} classes (background + 10); {args.epochs} epochs, AdamW lr {args.lr}, cosine, "
             f"batch {args.batch_size}, seed {args.seed}, no pretrained weights. One seed: differences under about "
             "a point are noise.", "",
             "Accuracy only: the JSON's train_seconds are wall times on a possibly shared machine, not a speed claim "
             "(speed comes from `python -m benchmarks.bench`).", "",
             "| encoder | params (M) | val mIoU (%) | background IoU (%) | mIoU after each epoch |", "|---|---|---|---|---|"]
    lines += [f"| {r['encoder']} | {r['params_m']:.2f} | {r['miou']:.2f} | {r['per_class_iou'][0]:.2f} | "
              f"{', '.join(format(h['miou'], '.1f') for h in r['history'])} |" for r in results]
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"fmnist_{args.arch.lower()}"
    (args.out / f"{stem}.json").write_text(json.dumps({"command": command, "environment": env, "results": results},
                                                      indent=1))
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
