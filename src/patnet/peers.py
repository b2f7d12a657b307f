"""PATNet among timm's efficient backbones: latency per runtime against published ImageNet top-1.

The peers, their tiers and their published top-1 (with its source, and whether the figure came from distillation)
are data: ``resources/imagenet_top1.csv``. ``run_peers`` times each tier's models interleaved with
``bench.run_benchmark`` (every model in its deployment form, each runtime asked for), then writes
``peers.{json,csv,md}`` and one latency-vs-top-1 plot per runtime with the Pareto frontier drawn and PATNet
highlighted.
"""
import csv
import json
import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

__all__ = ["PeerEntry", "load_peers", "pareto_front", "run_peers", "plot_frontier"]

_log = logging.getLogger(__name__)

TIERS = ("T0", "T1", "T2", "S")


@dataclass(frozen=True)
class PeerEntry:
    """One row of ``resources/imagenet_top1.csv``."""

    tier: str
    model: str
    top1: float
    distilled: bool
    eval_img_size: int
    source: str


def load_peers(path: Optional[Path] = None) -> List[PeerEntry]:
    """The published ImageNet top-1 table (the package's own unless ``path`` is given)."""
    if path is None:
        text = resources.files("patnet").joinpath("resources/imagenet_top1.csv").read_text()
    else:
        text = Path(path).read_text()
    rows = list(csv.DictReader(text.splitlines()))
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


# runtime -> the BenchRow field with its latencies
RUNTIME_FIELDS = {"eager": "cpu_ms", "compile": "compiled_ms", "onnxruntime": "ort_ms",
                  "onnxruntime-int8": "ort_int8_ms", "openvino": "ov_ms", "openvino-int8": "ov_int8_ms"}


def run_peers(
        suite: str,
        output: Path,
        runtimes: Sequence[str] = ("eager",),
        threads: Sequence[int] = (1,),
        warmup: int = 5,
        iters: int = 30,
        calib: Optional[str] = None,
        tiers: Optional[str] = None,
        show_progress: bool = True,
) -> Dict[str, Path]:
    """Time every tier of the peers table and write results and plots to ``output``; returns the paths written."""
    import timm

    from .bench import environment, run_benchmark
    from .io import atomic_path

    if suite != "peers":
        raise ValueError(f"unknown suite {suite!r}; use 'peers'")
    wanted = TIERS if not tiers else tuple(t.strip() for t in tiers.split(","))
    bad = [t for t in wanted if t not in TIERS]
    if bad:
        raise ValueError(f"unknown tier {bad[0]!r}; use {', '.join(TIERS)}")
    entries = [e for e in load_peers() if e.tier in wanted]
    missing = [e.model for e in entries if e.model not in timm.list_models()]
    if missing:
        _log.warning("not in this timm, skipped: %s", ", ".join(missing))
    entries = [e for e in entries if e.model not in missing]
    results: List[Dict[str, Any]] = []
    peaks: Dict[str, Dict[str, float]] = {}
    for tier in wanted:
        models = [e.model for e in entries if e.tier == tier]
        if not models:
            continue
        _log.info("tier %s: %s", tier, ", ".join(models))
        res = run_benchmark(models, 224, threads, warmup, iters, runtimes, train_form=False, gpu=False,
                            show_progress=show_progress, calib=calib)
        peaks[tier] = res["matmul_peak_gflops"]
        by_name = {e.model: e for e in entries}
        for row in res["rows"]:
            e = by_name[row["model"]]
            row.update(tier=tier, top1=e.top1, distilled=e.distilled, eval_img_size=e.eval_img_size, source=e.source)
            results.append(row)
    runtimes = ["eager" if r == "torch" else r for r in runtimes]
    summary = {"environment": environment(), "settings": dict(threads=list(threads), warmup=warmup, iters=iters,
                                                             runtimes=list(runtimes), img_size=224, batch=1,
                                                             int8_calibration=calib or "generated images"),
               "matmul_peak_gflops": peaks, "rows": results}
    output.mkdir(parents=True, exist_ok=True)
    paths = {"json": output / "peers.json", "md": output / "peers.md", "csv": output / "peers.csv"}
    with atomic_path(paths["json"]) as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    with atomic_path(paths["md"]) as tmp:
        tmp.write_text(format_peers(summary))
    with atomic_path(paths["csv"]) as tmp:
        fields = ["tier", "model", "top1", "distilled", "params_m", "gflops"]
        for r in runtimes:
            fields += [f"{r}_ms_{t}t" for t in threads]
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            for row in results:
                d = {k: row[k] for k in fields[:6]}
                for r in runtimes:
                    for t in threads:
                        d[f"{r}_ms_{t}t"] = row[RUNTIME_FIELDS[r]].get(f"{t}t")
                w.writerow(d)
    for r in runtimes:
        paths[f"png_{r}"] = plot_frontier(summary, r, output / f"peers_{r}.png")
    return paths


def format_peers(summary: Dict[str, Any]) -> str:
    """Markdown: one table per tier (latency per runtime, 1st thread count), frontier membership marked."""
    from .bench import machine_line

    runtimes = summary["settings"]["runtimes"]
    key = f"{summary['settings']['threads'][0]}t"
    lines = []
    for tier in TIERS:
        rows = [r for r in summary["rows"] if r["tier"] == tier]
        if not rows:
            continue
        lines += [f"### {tier}", "", "| model | ImageNet top-1 | params M | GFLOPs | "
                  + " | ".join(f"{r} ms ({key})" for r in runtimes) + " |",
                  "|---|---|---|---|" + "---|" * len(runtimes)]
        fronts = {}
        for r in runtimes:
            f = RUNTIME_FIELDS[r]
            pts = [r_ for r_ in summary["rows"] if key in r_[f]]
            idx = pareto_front([(p[f][key], p["top1"]) for p in pts])
            fronts[r] = {pts[i]["model"] for i in idx}
        for row in sorted(rows, key=lambda r: r["cpu_ms"].get(key, 0)):
            cells = [f"**{row['model']}**" if row["model"].startswith("patnet") else row["model"],
                     f"{row['top1']:.1f}{' (d)' if row['distilled'] else ''}", f"{row['params_m']:.2f}",
                     f"{row['gflops']:.3f}"]
            for r in runtimes:
                v = row[RUNTIME_FIELDS[r]].get(key)
                cells.append("" if v is None else f"{v:.2f}{' *' if row['model'] in fronts[r] else ''}")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    env = summary["environment"]
    lines.append("`*`: on the latency / top-1 Pareto frontier of that runtime (all tiers together); (d): the "
                 "published figure was trained with distillation. Sources: `src/patnet/resources/imagenet_top1.csv`.")
    lines.append(f"\n{machine_line(env)}; matmul peaks per tier {summary['matmul_peak_gflops']}\n")
    return "\n".join(lines)


def plot_frontier(summary: Dict[str, Any], runtime: str, path: Path) -> Path:
    """Latency (log) against published top-1 for ``runtime``; the Pareto frontier drawn, PATNet highlighted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .io import atomic_path

    key = f"{summary['settings']['threads'][0]}t"
    field = RUNTIME_FIELDS[runtime]
    rows = [r for r in summary["rows"] if key in r[field]]
    pts = [(r[field][key], r["top1"]) for r in rows]
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
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
