"""Accuracy study: PATNet against FasterNet with one recipe over several seeds, resumable, summarised with a verdict.

Run (or continue: finished runs are skipped, interrupted ones resume exactly from their last.pth, on this or any
machine that has the output folder):

    python experiments/study.py run --out outputs/study_fmnist --models patnet_t0,fasternet_t0 --seeds 0,1,2 \
        --epochs 30 -- --data fashion-mnist --img-size 64 --recipe short --amp bf16 --channels-last

Summarise whatever has finished (and how far the others are):

    python experiments/study.py summarize --out outputs/study_fmnist --results docs/results/study_fmnist

Runs go two at a time, each pinned to its own core with one thread, so a study never shares a core with itself;
never time anything else while it runs (its images/s are not speed figures). Everything after ``--`` is passed to
``patnet train`` unchanged, so the recipe is exactly one command line for every run.

On a GPU machine add ``--gpu``: runs go one at a time on the GPU, unpinned, loading data in ``--workers``
processes. A run killed by a time limit resumes from its last finished epoch on the next call, so a study can be
driven by commands of a few minutes each.
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks/ is not installed


def _run_dir(out: Path, model: str, seed: int) -> Path:
    return out / f"{model}_s{seed}"


def _command(args: argparse.Namespace, slot: int, model: str, seed: int, train_args: List[str]) -> List[str]:
    """The ``patnet train`` line of one run: on CPU pinned to core ``slot`` with the data loaded in-process (one
    thread per run, so two runs never share a core); with ``--gpu`` unpinned, data in ``--workers`` processes."""
    d = _run_dir(args.out, model, seed)
    gpu = getattr(args, "gpu", False)
    prefix = [] if gpu else ["taskset", "-c", str(slot)]
    common = ["patnet", "train", "--workers", str(args.workers if gpu else 0), "--no-progress"]
    if (d / "last.pth").exists():  # a resumed run takes its arguments from the checkpoint
        return [*prefix, *common, "--resume", str(d / "last.pth")]
    return [*prefix, *common, "--model", model, "--seed", str(seed), "--epochs", str(args.epochs), "--output", str(d),
            *train_args]


def run(args: argparse.Namespace, train_args: List[str]) -> None:
    jobs = [(m, s) for s in args.seeds for m in args.models]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "study.json").write_text(json.dumps({"models": args.models, "seeds": args.seeds, "epochs": args.epochs,
                                                     "train_args": train_args}, indent=2))
    pending = [(m, s) for m, s in jobs if not (_run_dir(args.out, m, s) / "metrics.json").exists()]
    gpu = getattr(args, "gpu", False)
    slots = [0] if gpu else list(range(min(args.parallel, os.cpu_count() or 1)))  # one GPU run at a time
    where = "on the GPU" if gpu else "on core {}"
    load = os.getloadavg()[0]
    # the study's own throughput is no claim, but say that something else is on the cores
    if not gpu and getattr(args, "check_load", True) and load > 0.5:
        print(f"study: load average {load:.1f} before starting: another job shares the cores; its runs will be "
              "slower, and nothing should be timed until the study stops", file=sys.stderr)
    env = os.environ if gpu else {**os.environ, "OMP_NUM_THREADS": "1"}
    running: Dict[int, subprocess.Popen] = {}
    while pending or running:
        for slot in slots:
            proc = running.get(slot)
            if proc is not None and proc.poll() is not None:
                if proc.returncode:
                    print(f"study: a run {where.format(slot)} failed (exit {proc.returncode}); see its log",
                          file=sys.stderr)
                del running[slot]
            if slot not in running and pending:
                model, seed = pending.pop(0)
                cmd = _command(args, slot, model, seed, train_args)
                print(("resuming " if "--resume" in cmd else "starting ") + f"{model} seed {seed} {where.format(slot)}",
                      flush=True)
                log = open(args.out / f"{model}_s{seed}.log", "a")
                running[slot] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        if running:
            next(iter(running.values())).wait(timeout=None) if len(running) == 1 else _wait_any(running)


def _wait_any(running: Dict[int, subprocess.Popen]) -> None:
    import time

    while all(p.poll() is None for p in running.values()):
        time.sleep(5)


def paired_verdict(a: List[float], b: List[float]) -> Dict[str, float]:
    """Paired by seed: mean difference a - b, its standard deviation, the paired t statistic and two-sided p, and
    the seed-to-seed spread (the larger of the two models' standard deviations over seeds)."""
    diffs = [x - y for x, y in zip(a, b)]
    n = len(diffs)
    mean = statistics.mean(diffs)
    sd = statistics.stdev(diffs) if n > 1 else float("nan")
    t = mean / (sd / math.sqrt(n)) if n > 1 and sd > 0 else float("nan")
    try:
        from scipy import stats

        p = float(2 * stats.t.sf(abs(t), n - 1)) if math.isfinite(t) else float("nan")
    except ImportError:
        p = float("nan")
    spread = max(statistics.stdev(a), statistics.stdev(b)) if n > 1 else float("nan")
    return {"n": n, "mean_diff": mean, "sd_diff": sd, "t": t, "p": p, "spread": spread}


def summarize(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks.machine import environment

    study = json.loads((args.out / "study.json").read_text())
    rows, curves, progress = {}, {}, []
    for model in study["models"]:
        for seed in study["seeds"]:
            d = _run_dir(args.out, model, seed)
            log = [json.loads(line) for line in (d / "log.jsonl").read_text().splitlines()] if (d / "log.jsonl").exists() else []
            curves[(model, seed)] = log
            progress.append(f"{model} seed {seed}: {len(log)}/{study['epochs']} epochs"
                            + (" (finished)" if (d / "metrics.json").exists() else ""))
            if (d / "metrics.json").exists():
                rows.setdefault(model, {})[seed] = json.loads((d / "metrics.json").read_text())["top1"]
    lines = [f"Runs: {'; '.join(progress)}", "",
             "| model | seeds finished | top-1 mean | top-1 std | top-1 per seed |", "|---|---|---|---|---|"]
    summary = {"models": {}, "study": study, "environment": environment()}
    for model, by_seed in rows.items():
        vals = [by_seed[s] for s in sorted(by_seed)]
        sd = f"{statistics.stdev(vals):.2f}" if len(vals) > 1 else "- (one seed)"
        lines.append(f"| {model} | {len(vals)} | {statistics.mean(vals):.2f} | {sd} | "
                     f"{', '.join(f'{v:.2f}' for v in vals)} |")
        args_file = next((_run_dir(args.out, model, s) / "args.json" for s in sorted(by_seed)), None)
        run_args = json.loads(args_file.read_text()) if args_file is not None and args_file.exists() else {}
        summary["models"][model] = {"seeds": sorted(by_seed), "epochs": study["epochs"],
                                    "img_size": run_args.get("img_size"), "data": run_args.get("data"),
                                    "top1": vals, "top1_by_seed": {str(s): by_seed[s] for s in sorted(by_seed)},
                                    "train_args": study["train_args"]}
    if len(study["models"]) == 2 and all(m in rows for m in study["models"]):
        a, b = study["models"]
        common = sorted(set(rows[a]) & set(rows[b]))
        if len(common) >= 2:
            wins = sum(rows[a][x] > rows[b][x] for x in common)
            lines += ["", f"{a} ahead on {wins} of {len(common)} paired seeds."]
            v = paired_verdict([rows[a][s] for s in common], [rows[b][s] for s in common])
            summary["paired"] = v
            exceeds = abs(v["mean_diff"]) > v["spread"]
            lines += ["", f"Paired by seed ({v['n']} seeds): {a} - {b} = {v['mean_diff']:+.2f} points; the larger "
                      f"per-model seed-to-seed sd is {v['spread']:.2f}, so the difference "
                      + ("exceeds" if exceeds else "does not exceed") + " the seed-to-seed spread. "
                      f"Paired t-test: sd of the difference {v['sd_diff']:.2f}, t = {v['t']:.2f}, two-sided "
                      f"p = {v['p']:.3f}: " + ("significant at p < 0.05." if v["p"] < 0.05 else
                                               "not significant at p < 0.05.")
                      + (" Only 2 paired seeds (1 degree of freedom): indicative, not a test with power."
                         if v["n"] == 2 else "")]
    seeds = ",".join(str(x) for x in study["seeds"])
    lines += ["", f"Run or continue (finished runs are skipped, interrupted ones resume from their last.pth): "
              f"`python experiments/study.py run --out {args.out} --models {','.join(study['models'])} --seeds {seeds} "
              f"--epochs {study['epochs']} -- {' '.join(study['train_args'])}`"]
    env = summary["environment"]
    lines.append(f"\n{env['cpu']}, torch {env['torch']}, timm {env['timm']}; {env['date']}; "
                 f"`patnet train` arguments: `{' '.join(study['train_args'])}`, {study['epochs']} epochs")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.with_suffix(".md").write_text("\n".join(lines) + "\n")
    args.results.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for i, model in enumerate(study["models"]):
        for seed in study["seeds"]:
            log = curves.get((model, seed), [])
            if log:
                ax.plot([h["epoch"] for h in log], [h["top1"] for h in log], color=f"C{i}", alpha=0.8,
                        label=model if seed == study["seeds"][0] else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel("val top-1 [%]")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.results.with_suffix(".png"))
    print("\n".join(lines))


def command_line(doc: str, results: str) -> Tuple[argparse.ArgumentParser, List[str], List[str]]:
    """The parser shared by the experiment runners (action, --out, --parallel, --results), this runner's own
    arguments, and everything after ``--`` (passed to ``patnet train`` unchanged)."""
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("action", choices=["run", "summarize"])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--parallel", type=int, default=2, help="runs at once, one core each")
    ap.add_argument("--results", type=Path, default=Path(results))
    return ap, argv[:split], argv[split + 1:]


def main() -> None:
    ap, argv, train_args = command_line(__doc__, "docs/results/study")
    ap.add_argument("--models", type=lambda s: s.split(","), default=["patnet_t0", "fasternet_t0"])
    ap.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--gpu", action="store_true", help="one run at a time on the GPU, data in --workers processes")
    ap.add_argument("--workers", type=int, default=8, help="data-loading processes per run with --gpu")
    args = ap.parse_args(argv)
    run(args, train_args) if args.action == "run" else summarize(args)


if __name__ == "__main__":
    main()
