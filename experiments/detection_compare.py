"""PATNet-T0 vs FasterNet-T0 as Mask R-CNN backbones on generated Fashion-MNIST composites.

Same detector, data, schedule and seed for both; the two trainings run side by side, one CPU core and one thread
each. Then box and mask AP (pycocotools), parameters, backbone FLOPs and single-thread CPU latency of the whole
detector (interleaved, eval mode, one image) at the stated size are written to OUT.{md,json}.

Usage: python experiments/detection_compare.py [--epochs 6] [--out docs/results/detection]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks/ is not installed

import torch

MODELS = ("patnet_t0", "fasternet_t0")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("outputs/detcmp"))
    ap.add_argument("--out", type=Path, default=Path("docs/results/detection"))
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--img-size", type=int, default=160)
    ap.add_argument("--train-images", type=int, default=400)
    ap.add_argument("--val-images", type=int, default=100)
    ap.add_argument("--roi-batch-size", type=int, default=128)
    args = ap.parse_args()
    data = args.work / "data"
    if not (data / "train.json").exists():
        subprocess.run(["patnet", "detect", "make-fmnist", str(data), "--train-images", str(args.train_images),
                        "--val-images", str(args.val_images), "--canvas", str(args.img_size), "--seed", "0"], check=True)
    procs = []
    for core, model in enumerate(MODELS):
        out = args.work / model
        if (out / "coco_metrics.json").exists():
            continue
        cmd = ["taskset", "-c", str(core), "patnet", "detect", "train", "--model", model, "--task", "masks",
               "--ann", str(data / "train.json"), "--images", str(data / "train"), "--val-ann", str(data / "val.json"),
               "--val-images", str(data / "val"), "--epochs", str(args.epochs), "--batch-size", "4",
               "--img-size", str(args.img_size), "--roi-batch-size", str(args.roi_batch_size), "--lr", "2e-4", "--warmup-iters", "50", "--workers", "0",
               "--output", str(out), "--no-progress"]
        log = open(args.work / f"{model}.log", "w")
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"}))
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(f"training failed: see {args.work}/*.log")

    from benchmarks.machine import environment
    from patnet.detection.engine import load_detector
    from patnet.flops import count_flops, count_params
    import timm

    torch.set_num_threads(1)
    x = [torch.rand(3, args.img_size, args.img_size)]
    dets = {m: load_detector(args.work / m / "last.pth") for m in MODELS}
    times = {m: [] for m in MODELS}
    with torch.inference_mode():
        for m in MODELS:
            for _ in range(5):
                dets[m](x)
        for _ in range(50):
            for m in MODELS:
                t = time.perf_counter()
                dets[m](x)
                times[m].append((time.perf_counter() - t) * 1e3)
    rows = {}
    for m in MODELS:
        metrics = json.loads((args.work / m / "coco_metrics.json").read_text())
        hist = [json.loads(l) for l in (args.work / m / "log.jsonl").read_text().splitlines()]
        body = timm.create_model(m, features_only=True)
        rows[m] = dict(
            boxes=metrics["boxes"], masks=metrics["masks"], detector_params_m=count_params(dets[m]) / 1e6,
            backbone_params_m=count_params(body) / 1e6,
            backbone_gflops=count_flops(body, (args.img_size, args.img_size)) / 1e9,
            latency_ms_1t=statistics.median(times[m]), train_images_per_second=statistics.mean(h["images_per_second"] for h in hist),
            final_train_loss=hist[-1]["loss"],
        )
    env = environment()
    lines = [
        f"Mask R-CNN + FPN, {args.epochs} epochs, {args.train_images} train / {args.val_images} val images of "
        f"{args.img_size}x{args.img_size}, batch 4, {args.roi_batch_size} RoIs per image, AdamW lr 2e-4, step schedule, "
        "frozen BatchNorm, seed 0.",
        "",
        "| backbone | box AP | box AP50 | box AP75 | mask AP | mask AP50 | mask AP75 | detector params (M) | "
        f"backbone params (M) | backbone GFLOPs @{args.img_size} | detector CPU ms (1 thread, 1 image) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m, r in rows.items():
        b, k = r["boxes"], r["masks"]
        lines.append(f"| {m} | {b['AP']:.1f} | {b['AP50']:.1f} | {b['AP75']:.1f} | {k['AP']:.1f} | {k['AP50']:.1f} | "
                     f"{k['AP75']:.1f} | {r['detector_params_m']:.2f} | {r['backbone_params_m']:.2f} | "
                     f"{r['backbone_gflops']:.3f} | {r['latency_ms_1t']:.1f} |")
    lines.append("")
    lines.append(f"machine: {env['cpu']}; torch {env['torch']}, timm {env['timm']}; {env['date']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps({"rows": rows, "environment": env, "args": vars(args)},
                                                        indent=2, default=str))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
