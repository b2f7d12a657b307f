"""Summarise the Fashion-MNIST comparison: mean and spread of top-1 per model, curves PNG, markdown table.

Usage: python experiments/summarize_fmnist.py outputs/fmnist docs/results/fashion_mnist
"""
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks/ is not installed

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks.machine import environment  # noqa: E402


def main(runs_dir: Path, out_prefix: Path) -> None:
    runs = {}
    for metrics in sorted(runs_dir.glob("*/metrics.json")):
        model = metrics.parent.name.rsplit("_s", 1)[0]
        log = [json.loads(l) for l in (metrics.parent / "log.jsonl").read_text().splitlines()]
        runs.setdefault(model, []).append((json.loads(metrics.read_text()), log))
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    lines = ["| model | seeds | top-1 mean | top-1 std | top-1 per seed | top-5 mean | val loss mean | train img/s (1 core) |",
             "|---|---|---|---|---|---|---|---|"]
    summary = {}
    for (model, rs), color in zip(sorted(runs.items()), ("C0", "C1", "C2", "C3")):
        top1 = [m["top1"] for m, _ in rs]
        row = dict(seeds=len(rs), top1_mean=statistics.mean(top1), top1_std=statistics.stdev(top1) if len(rs) > 1 else 0.0,
                   top1=top1, top5_mean=statistics.mean(m["top5"] for m, _ in rs),
                   loss_mean=statistics.mean(m["loss"] for m, _ in rs),
                   img_s=statistics.mean(m["train_images_per_second"] for m, _ in rs), params_m=rs[0][0]["params_m"])
        summary[model] = row
        lines.append(f"| {model} | {row['seeds']} | {row['top1_mean']:.2f} | {row['top1_std']:.2f} | "
                     f"{', '.join(f'{t:.2f}' for t in top1)} | {row['top5_mean']:.2f} | {row['loss_mean']:.4f} | "
                     f"{row['img_s']:.0f} |")
        for i, (_, log) in enumerate(rs):
            ep = [l["epoch"] for l in log]
            kw = dict(color=color, alpha=0.8, label=model if i == 0 else None)
            axes[0].plot(ep, [l["train_loss"] for l in log], "--", **kw)
            axes[0].plot(ep, [l["loss"] for l in log], "-", color=color, alpha=0.8)
            axes[1].plot(ep, [l["top1"] for l in log], "o-", **kw)
    axes[0].set(xlabel="epoch", ylabel="loss (dashed: train, solid: val)", title="Fashion-MNIST loss")
    axes[1].set(xlabel="epoch", ylabel="val top-1 (%)", title="Fashion-MNIST top-1 (3 seeds each)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out_prefix.with_suffix(".png"))
    env = environment()
    (out_prefix.with_suffix(".json")).write_text(json.dumps({"summary": summary, "environment": env}, indent=2))
    (out_prefix.with_suffix(".md")).write_text("\n".join(lines) + f"\n\nmachine: {env['cpu']}, torch {env['torch']}, "
                                                f"timm {env['timm']}; summarised {env['date']}\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
