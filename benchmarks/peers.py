"""PATNet among timm's efficient backbones: latency per runtime against published ImageNet top-1.

The peers, their tiers and their published top-1 (with its source, and whether the figure came from distillation)
are data: ``benchmarks/imagenet_top1.csv``. ``run_peers`` times each tier's models interleaved with
``bench.run_benchmark`` (every model in its deployment form, each runtime asked for), then writes
``peers.{json,csv,md}`` and one latency-vs-top-1 plot per runtime with the Pareto frontier drawn and PATNet
highlighted, all as a unit.

    python -m benchmarks.peers --runtime eager,onnxruntime-int8,openvino-int8 --threads 1 --output outputs/peers
"""
import csv
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import matplotlib
import timm

from patnet.config import option
from patnet.io import atomic_files

from .bench import RUNTIMES, median_ms, run_benchmark, run_script, save_figure, split_list
from .machine import environment, machine_line

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["PeerEntry", "TOP1_TABLE", "load_peers", "pareto_front", "run_peers", "format_peers", "PeersOptions",
           "main"]

TOP1_TABLE = Path(__file__).with_name("imagenet_top1.csv")

_log = logging.getLogger(__name__)

TIERS = ("T0", "T1", "T2", "S")


@dataclass(frozen=True)
class PeerEntry:
    """One row of ``imagenet_top1.csv``."""

    tier: str
    model: str
    top1: float
    distilled: bool
    eval_img_size: int
    source: str


def load_peers(path: Optional[Path] = None) -> List[PeerEntry]:
    """The published ImageNet top-1 table (``TOP1_TABLE`` unless ``path`` is given)."""
    rows = list(csv.DictReader(Path(path or TOP1_TABLE).read_text().splitlines()))
    return [PeerEntry(r["tier"], r["model"], float(r["top1"]), r["distilled"] == "yes", int(r["eval_img_size"]),
                      r["source"]) for r in rows]


def pareto_front(points: Sequence[Tuple[float, float]]) -> List[int]:
    """Indices of the points (latency, top-1) that no other point beats: none is at least as fast and at least as
    accurate while strictly better in one. Sorted by latency."""
    front = []
    for i, (lat, acc) in enumerate(points):
        dominated = any(
            (l2 <= lat and a2 >= acc) and (l2 < lat or a2 > acc) for j, (l2, a2) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def run_peers(
        output: Path,
        runtimes: Sequence[str] = ("eager",),
        threads: Sequence[int] = (1,),
        warmup: int = 5,
        iters: int = 30,
        calib: Optional[str] = None,
        tiers: Sequence[str] = TIERS,
        show_progress: bool = True,
) -> Dict[str, Path]:
    """Time every tier of the peers table and write results and plots to ``output`` as a unit; returns the paths.

    Each tier is one interleaved ``run_benchmark`` (its own matmul peak); PATNet's training form is not timed.
    """
    bad = [t for t in tiers if t not in TIERS]
    if bad:
        raise ValueError(f"unknown tier {bad[0]!r}; use {', '.join(TIERS)}")
    entries = [e for e in load_peers() if e.tier in tiers]
    missing = [e.model for e in entries if e.model not in timm.list_models()]
    if missing:
        _log.warning("not in this timm, skipped: %s", ", ".join(missing))
    by_name = {e.model: e for e in entries if e.model not in missing}
    results: List[Dict[str, Any]] = []
    peaks: Dict[str, Dict[str, float]] = {}
    timed: List[str] = []
    for tier in tiers:
        models = [m for m, e in by_name.items() if e.tier == tier]
        if not models:
            continue
        _log.info("tier %s: %s", tier, ", ".join(models))
        res = run_benchmark(models, 224, threads, warmup, iters, runtimes, train_form=False, gpu=False,
                            show_progress=show_progress, calib=calib)
        peaks[tier], timed = res["matmul_peak_gflops"], res["settings"]["runtimes"]
        for row in res["rows"]:
            e = by_name[row["model"]]
            row.update(tier=tier, top1=e.top1, distilled=e.distilled, eval_img_size=e.eval_img_size, source=e.source)
            results.append(row)
    summary = {"environment": environment(), "settings": dict(threads=list(threads), warmup=warmup, iters=iters,
                                                             runtimes=timed, img_size=224, batch=1,
                                                             int8_calibration=calib or "generated images"),
               "matmul_peak_gflops": peaks, "rows": results}
    paths = {"md": output / "peers.md", "csv": output / "peers.csv"}
    paths.update({f"png_{r}": output / f"peers_{r}.png" for r in timed})
    paths["json"] = output / "peers.json"  # the record, committed last
    with atomic_files(*paths.values()) as staged:
        (staged / "peers.json").write_text(json.dumps(summary, indent=2))
        (staged / "peers.md").write_text(format_peers(summary))
        _write_csv(summary, staged / "peers.csv")
        for r in timed:
            _plot_frontier(summary, r, staged / f"peers_{r}.png")
    return paths


def _write_csv(summary: Dict[str, Any], path: Path) -> None:
    keys = [f"{t}t" for t in summary["settings"]["threads"]]
    runtimes = summary["settings"]["runtimes"]
    names = ["tier", "model", "top1", "distilled", "params_m", "gflops"]
    names += [f"{r}_ms_{k}" for r in runtimes for k in keys]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=names)
        w.writeheader()
        for row in summary["rows"]:
            d = {k: row[k] for k in names[:6]}
            d.update({f"{r}_ms_{k}": median_ms(row, r, k) for r in runtimes for k in keys})
            w.writerow(d)


def format_peers(summary: Dict[str, Any]) -> str:
    """Markdown: one table per tier (latency per runtime, 1st thread count), frontier membership marked."""
    runtimes = summary["settings"]["runtimes"]
    key = f"{summary['settings']['threads'][0]}t"
    fronts = {}
    for r in runtimes:  # the frontier of each runtime over all tiers together
        pts = [row for row in summary["rows"] if median_ms(row, r, key) is not None]
        fronts[r] = {pts[i]["model"] for i in pareto_front([(median_ms(p, r, key), p["top1"]) for p in pts])}
    lines = []
    for tier in TIERS:
        rows = [r for r in summary["rows"] if r["tier"] == tier]
        if not rows:
            continue
        lines += [f"### {tier}", "", "| model | ImageNet top-1 | params M | GFLOPs | "
                  + " | ".join(f"{RUNTIMES[r].label} ms ({key})" for r in runtimes) + " |",
                  "|---|---|---|---|" + "---|" * len(runtimes)]
        for row in sorted(rows, key=lambda r: median_ms(r, "eager", key) or 0):
            cells = [f"**{row['model']}**" if row["model"].startswith("patnet") else row["model"],
                     f"{row['top1']:.1f}{' (d)' if row['distilled'] else ''}", f"{row['params_m']:.2f}",
                     f"{row['gflops']:.3f}"]
            for r in runtimes:
                v = median_ms(row, r, key)
                cells.append("" if v is None else f"{v:.2f}{' *' if row['model'] in fronts[r] else ''}")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines.append("`*`: on the latency / top-1 Pareto frontier of that runtime (all tiers together); (d): the "
                 "published figure was trained with distillation. Sources: `benchmarks/imagenet_top1.csv`.")
    lines.append(f"\n{machine_line(summary['environment'])}; matmul peaks per tier {summary['matmul_peak_gflops']}\n")
    return "\n".join(lines)


def _plot_frontier(summary: Dict[str, Any], runtime: str, path: Path) -> None:
    """Latency (log) against published top-1 for ``runtime``; the Pareto frontier drawn, PATNet highlighted."""
    key = f"{summary['settings']['threads'][0]}t"
    rows = [r for r in summary["rows"] if median_ms(r, runtime, key) is not None]
    pts = [(median_ms(r, runtime, key), r["top1"]) for r in rows]
    fig, ax = plt.subplots(figsize=(7.5, 5.0), dpi=120)
    front = pareto_front(pts)
    ax.step([pts[i][0] for i in front], [pts[i][1] for i in front], where="post", color="0.6", lw=1,
            label="Pareto frontier")
    for r, (lat, acc) in zip(rows, pts):
        ours = r["model"].startswith("patnet")
        ax.scatter(lat, acc, marker="*" if ours else ("^" if r["distilled"] else "o"), s=140 if ours else 30,
                   color="tab:red" if ours else "tab:blue", zorder=3)
        ax.annotate(r["model"], (lat, acc), fontsize=6, textcoords="offset points", xytext=(3, 3),
                    color="tab:red" if ours else "0.2")
    ax.set_xscale("log")
    ax.set_xlabel(f"CPU latency, batch 1, 224 px, {key[:-1]} thread(s), {runtime} [ms]")
    ax.set_ylabel("published ImageNet-1k top-1 [%] (triangles: distilled)")
    env = summary["environment"]
    ax.set_title(f"{runtime}: {env['cpu'][:40]}, torch {env['torch']}, {env['date']}", fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    save_figure(fig, path)


@dataclass
class PeersOptions:
    runtime: str = option("eager", "comma-separated runtimes besides PyTorch eager: " + ", ".join(RUNTIMES))
    tiers: str = option(",".join(TIERS), "comma-separated tiers to run")
    threads: List[int] = option((1,), "CPU thread counts")
    warmup: int = option(5, "untimed forwards first")
    iters: int = option(30, "timed forwards per model and thread count")
    calib: Optional[str] = option(None, "int8 calibration data (as patnet train --data); default generated images")
    output: Path = option(Path("outputs/peers"), "folder for peers.{json,csv,md} and one plot per runtime")


def _peers(o: PeersOptions) -> None:
    paths = run_peers(o.output, split_list(o.runtime), o.threads, o.warmup, o.iters, o.calib, split_list(o.tiers))
    print("wrote " + ", ".join(str(p) for p in paths.values()))


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m benchmarks.peers``: time the tiers, write the tables and the frontier plots."""
    return run_script("python -m benchmarks.peers", __doc__, PeersOptions, _peers, argv)


if __name__ == "__main__":
    sys.exit(main())
