"""Tune the study's recipe once, on a validation split carved from the training set, never on the test set.

Every candidate is the study's recipe plus a few ``patnet train`` flags; each trains PATNet-T0 and FasterNet-T0
(same seed, same epochs) with ``--val-split`` holding out a fixed stratified part of the training set, and the
candidate with the best mean hold-out top-1 over *both* models is chosen, so the recipe favours neither network.
Runs go through the study runner (two at a time, one core each, resumable), so the tuning can also be stopped and
continued:

    python experiments/tune.py run --out outputs/tune_fmnist --epochs 10 -- --data fashion-mnist --img-size 64 \
        --recipe short --amp bf16 --channels-last
    python experiments/tune.py summarize --out outputs/tune_fmnist --results docs/results/tune_fmnist

The epochs of a candidate are a proxy budget (shorter than the study's); the chosen candidate is then frozen and
used unchanged for every model and seed of the study.
"""
import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))  # study.py, next to this file
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks/ is not installed
import study  # noqa: E402  (the runner next to this file)

# name -> flags added to the study's recipe. "base" is the recipe as the study ran it (short: lr 2e-3 at batch 128,
# weight decay 0.05); the others move one knob each: the peak learning rate both ways, and weaker weight decay.
CANDIDATES: Dict[str, List[str]] = {
    "base": [],
    "lr4e-3": ["--lr", "0.004"],
    "lr1e-3": ["--lr", "0.001"],
    "wd0.01": ["--weight-decay", "0.01"],
}
MODELS = ["patnet_t0", "fasternet_t0"]
VAL_SPLIT = 0.1


def _mean(score: Dict[str, float]) -> Optional[float]:
    """A candidate's mean hold-out top-1 over the models; None until every model has a score."""
    return statistics.mean(score[m] for m in MODELS) if all(m in score for m in MODELS) else None


def choose(scores: Dict[str, Dict[str, float]]) -> Tuple[str, float]:
    """The candidate with the highest mean hold-out top-1 over the models (first in order on a tie), and its mean.
    Only candidates with a score for every model count."""
    means = {name: m for name, m in ((name, _mean(s)) for name, s in scores.items()) if m is not None}
    if not means:
        raise ValueError("no candidate has finished for every model yet")
    best = max(means, key=means.__getitem__)
    return best, means[best]


def run(args: argparse.Namespace, train_args: List[str]) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tune.json").write_text(json.dumps({"train_args": train_args, "epochs": args.epochs,
                                                    "seed": args.seed}, indent=2))
    for i, (name, flags) in enumerate(CANDIDATES.items()):
        print(f"tune: candidate {name} ({' '.join(flags) or 'the recipe as is'})", flush=True)
        # the load check is for other jobs; after the first candidate the load is this tuning's own runs
        study.run(argparse.Namespace(out=args.out / name, models=MODELS, seeds=[args.seed], epochs=args.epochs,
                                     parallel=args.parallel, check_load=i == 0),
                  [*train_args, "--val-split", str(VAL_SPLIT), *flags])


def summarize(args: argparse.Namespace) -> None:
    from benchmarks.machine import environment

    meta = json.loads((args.out / "tune.json").read_text())
    train_args, epochs, seed = meta["train_args"], meta["epochs"], meta["seed"]
    scores: Dict[str, Dict[str, float]] = {}
    for name in CANDIDATES:
        for model in MODELS:
            metrics = study._run_dir(args.out / name, model, seed) / "metrics.json"
            if metrics.exists():
                scores.setdefault(name, {})[model] = json.loads(metrics.read_text())["top1"]
    best, best_mean = choose(scores)
    lines = [f"Hold-out top-1 [%] ({VAL_SPLIT:.0%} of the training set, stratified, fixed; the test set is not read), "
             f"seed {seed}, {epochs} epochs per run:", "",
             "| candidate | flags | " + " | ".join(MODELS) + " | mean |", "|---|---|" + "---|" * (len(MODELS) + 1)]
    for name, flags in CANDIDATES.items():
        s = scores.get(name, {})
        cells = [f"{s[m]:.2f}" if m in s else "not run" for m in MODELS]
        mean = _mean(s)
        lines.append(f"| {name}{' (chosen)' if name == best else ''} | `{' '.join(flags) or '(none)'}` | "
                     + " | ".join(cells) + f" | {'-' if mean is None else f'{mean:.2f}'} |")
    env = environment()
    lines += ["", f"Chosen: **{best}** (mean {best_mean:.2f}), frozen for every model and seed of the study.",
              "", f"Command: `python experiments/tune.py run --out {args.out} --epochs {epochs} --seed {seed} -- "
              f"{' '.join(train_args)}`",
              f"\n{env['cpu']}, torch {env['torch']}, timm {env['timm']}; {env['date']}"]
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.with_suffix(".md").write_text("\n".join(lines) + "\n")
    args.results.with_suffix(".json").write_text(json.dumps(
        {"scores": scores, "chosen": best, "chosen_flags": CANDIDATES[best], "val_split": VAL_SPLIT,
         "seed": seed, "epochs": epochs, "train_args": train_args, "environment": env}, indent=2))
    print("\n".join(lines))


def main() -> None:
    ap, argv, train_args = study.command_line(__doc__, "docs/results/tune")
    ap.add_argument("--epochs", type=int, default=10, help="proxy budget per candidate run")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    run(args, train_args) if args.action == "run" else summarize(args)


if __name__ == "__main__":
    main()
