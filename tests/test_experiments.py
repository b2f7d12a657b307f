"""The accuracy study's runner and the elpv split: the statistics and the bookkeeping behind published verdicts."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


study = _load("study")
elpv = _load("elpv_prepare")


def test_paired_verdict_matches_scipy_ttest_rel():
    from scipy import stats  # in [dev]
    a, b = [91.2, 90.7, 91.5], [90.9, 90.8, 91.0]
    v = study.paired_verdict(a, b)
    ref = stats.ttest_rel(a, b)
    assert v["n"] == 3
    assert v["mean_diff"] == pytest.approx(sum(a) / 3 - sum(b) / 3)
    assert v["t"] == pytest.approx(ref.statistic) and v["p"] == pytest.approx(ref.pvalue)
    assert v["spread"] == pytest.approx(0.4041, abs=1e-4)  # sd of a (the larger): sqrt(0.49/3)


def _fake_run(root: Path, model: str, seed: int, top1s, finished: bool) -> None:
    d = root / f"{model}_s{seed}"
    d.mkdir(parents=True)
    (d / "log.jsonl").write_text("\n".join(json.dumps({"epoch": i + 1, "top1": t}) for i, t in enumerate(top1s)))
    (d / "args.json").write_text(json.dumps({"img_size": 64, "data": "fashion-mnist"}))
    if finished:
        (d / "metrics.json").write_text(json.dumps({"top1": top1s[-1]}))


def test_summary_reports_finished_runs_per_seed_and_progress_of_the_rest(tmp_path, monkeypatch):
    out = tmp_path / "study"
    out.mkdir()
    (out / "study.json").write_text(json.dumps({"models": ["patnet_t0", "fasternet_t0"], "seeds": [0, 1, 2],
                                                "epochs": 3, "train_args": ["--img-size", "64"]}))
    _fake_run(out, "patnet_t0", 0, [80.0, 85.0, 90.0], True)
    _fake_run(out, "patnet_t0", 1, [81.0, 86.0, 91.0], True)
    _fake_run(out, "fasternet_t0", 0, [79.0, 84.0, 89.5], True)
    _fake_run(out, "fasternet_t0", 1, [80.0, 85.0, 90.0], True)
    _fake_run(out, "patnet_t0", 2, [82.0], False)
    res = tmp_path / "res" / "s"
    monkeypatch.setattr(sys, "argv", ["study.py", "summarize", "--out", str(out), "--results", str(res)])
    study.main()
    summary = json.loads(res.with_suffix(".json").read_text())
    p = summary["models"]["patnet_t0"]
    assert p["seeds"] == [0, 1] and p["top1"] == [90.0, 91.0] and p["img_size"] == 64 and p["epochs"] == 3
    assert summary["paired"]["n"] == 2 and summary["paired"]["mean_diff"] == pytest.approx(0.75)
    md = res.with_suffix(".md").read_text()
    assert "patnet_t0 seed 2: 1/3 epochs" in md and "fasternet_t0 seed 2: 0/3 epochs" in md
    assert "exceeds the seed-to-seed spread" in md and "not significant at p < 0.05" in md  # 0.75 > 0.71, p 0.2
    assert "ahead on 2 of 2 paired seeds" in md and "--seeds 0,1,2 --epochs 3 -- --img-size 64" in md
    assert res.with_suffix(".png").stat().st_size > 0


def test_elpv_split_is_stratified_and_fixed():
    rows = [(f"c{i:04d}.png", [0.0, 1 / 3, 2 / 3, 1.0][i % 4], "mono" if i % 3 else "poly") for i in range(400)]
    split = elpv.make_split(rows)
    assert split == elpv.make_split(rows)  # the same split every time
    assert split == elpv.make_split(rows[::-1])  # whatever the order of labels.csv
    assert split != elpv.make_split(rows, seed=1)
    for level in range(4):
        for kind in ("mono", "poly"):
            names = [n for n, p, k in rows if round(p * 3) == level and k == kind]
            n_val = sum(split[n] == "val" for n in names)
            assert abs(n_val - 0.25 * len(names)) <= 1, (level, kind, n_val, len(names))
    assert elpv.class_of(2 / 3, 2) == "defective" and elpv.class_of(1 / 3, 2) == "functional"
    assert elpv.class_of(1 / 3, 4) == "p1of3"


tune = _load("tune")


def test_tuning_chooses_by_the_mean_over_both_models_and_ignores_unfinished_candidates():
    scores = {"base": {"patnet_t0": 90.0, "fasternet_t0": 89.0},
              "lr4e-3": {"patnet_t0": 91.0, "fasternet_t0": 87.0},  # best for PATNet alone, worse on the mean
              "wd0.01": {"patnet_t0": 95.0}}  # unfinished: FasterNet has no score
    assert tune.choose(scores) == ("base", pytest.approx(89.5))
    with pytest.raises(ValueError, match="no candidate"):
        tune.choose({"wd0.01": {"patnet_t0": 95.0}})


def test_tuning_always_holds_out_a_validation_split_and_summarises_the_choice(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(tune.study, "run", lambda ns, train_args: calls.append((ns, train_args)))
    out = tmp_path / "tune"
    monkeypatch.setattr(sys, "argv", ["tune.py", "run", "--out", str(out), "--epochs", "2", "--", "--img-size", "64"])
    tune.main()
    assert [ns.out.name for ns, _ in calls] == list(tune.CANDIDATES)
    for (ns, train_args), flags in zip(calls, tune.CANDIDATES.values()):
        assert train_args == ["--img-size", "64", "--val-split", str(tune.VAL_SPLIT), *flags]
        assert ns.models == tune.MODELS and ns.seeds == [0] and ns.epochs == 2
    for name, (p, f) in {"base": (90.0, 89.0), "lr4e-3": (90.5, 89.2), "lr1e-3": (88.0, 87.0)}.items():
        for model, top1 in (("patnet_t0", p), ("fasternet_t0", f)):
            _fake_run(out / name, model, 0, [top1], True)
    res = tmp_path / "res" / "t"
    monkeypatch.setattr(sys, "argv", ["tune.py", "summarize", "--out", str(out), "--results", str(res)])
    tune.main()
    summary = json.loads(res.with_suffix(".json").read_text())
    assert summary["chosen"] == "lr4e-3" and summary["chosen_flags"] == ["--lr", "0.004"]
    md = res.with_suffix(".md").read_text()
    assert "| lr4e-3 (chosen) |" in md and "not run" in md  # wd0.01 has no runs
    assert "--epochs 2 --seed 0 -- --img-size 64`" in md


def test_study_runs_pin_one_core_each_on_cpu_and_go_one_at_a_time_on_a_gpu(tmp_path, monkeypatch):
    import argparse

    started, live = [], []

    class FakeRun:  # a run that finishes when the runner waits for it; records how many ran at once
        def __init__(self, cmd, **kw):
            started.append((cmd, len(live) + 1, kw["env"].get("OMP_NUM_THREADS")))
            live.append(self)
            self.returncode = None

        def poll(self):
            return self.returncode

        def wait(self, timeout=None):
            self.returncode = 0
            live.remove(self)

    monkeypatch.setattr(study.subprocess, "Popen", FakeRun)
    monkeypatch.setattr(study, "_wait_any", lambda running: next(iter(running.values())).wait())
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    ns = dict(models=["patnet_t0", "fasternet_t0"], seeds=[0], epochs=3, parallel=2, workers=6)
    study.run(argparse.Namespace(out=tmp_path / "cpu", gpu=False, **ns), ["--img-size", "64"])
    assert [c[:3] for c, _, _ in started] == [["taskset", "-c", "0"], ["taskset", "-c", "1"]]
    assert max(n for _, n, _ in started) == 2 and {t for _, _, t in started} == {"1"}
    assert all(c[c.index("--workers") + 1] == "0" and c[-2:] == ["--img-size", "64"] for c, _, _ in started)
    started.clear()
    study.run(argparse.Namespace(out=tmp_path / "gpu", gpu=True, **ns), ["--img-size", "64"])
    assert len(started) == 2 and max(n for _, n, _ in started) == 1  # never two runs on the GPU at once
    assert all(c[:2] == ["patnet", "train"] and c[c.index("--workers") + 1] == "6" and t is None
               for c, _, t in started)
    (tmp_path / "gpu" / "patnet_t0_s0").mkdir()
    (tmp_path / "gpu" / "patnet_t0_s0" / "last.pth").write_bytes(b"")
    cmd = study._command(argparse.Namespace(out=tmp_path / "gpu", gpu=True, **ns), 0, "patnet_t0", 0, ["--x"])
    assert cmd[-2:] == ["--resume", str(tmp_path / "gpu" / "patnet_t0_s0" / "last.pth")] and "--x" not in cmd


segment = _load("segment_fmnist")


def test_segmentation_canvases_label_exactly_the_pasted_items():
    import numpy as np

    images = np.zeros((2, 28, 28), dtype=np.uint8)
    images[0, 6:22, 6:22] = 255  # a bright square, class 3
    labels = np.array([3, 7])  # item 1 is all dark: it must leave no label behind
    x, y = segment.make_canvases(images, labels, n=6, size=64, per_canvas=2, seed=0)
    assert x.shape == (6, 3, 64, 64) and y.shape == (6, 64, 64)
    assert set(y.unique().tolist()) <= {0, 4}
    raw = x[:, 0] * 0.3 + 0.3
    assert bool((raw[y == 4] > 0.2).all())  # every labelled pixel is the item's
    assert (y == 4).flatten(1).any(1).sum() >= 1


def test_miou_is_exact_for_perfect_and_constant_predictions():
    from torch.utils.data import DataLoader, TensorDataset

    y = torch.zeros(2, 8, 8, dtype=torch.long)
    y[:, :4] = 5  # half class 5, half background
    onehot = torch.nn.functional.one_hot(y, segment.NUM_CLASSES).permute(0, 3, 1, 2).float()
    loader = DataLoader(TensorDataset(onehot, y), batch_size=1)
    assert segment.miou(torch.nn.Identity(), loader)[0] == pytest.approx(100.0)
    background = torch.zeros_like(onehot)
    background[:, 0] = 1
    # Predicting background everywhere: IoU 0.5 for background, 0 for class 5, absent classes left out.
    const = torch.nn.Module()
    const.forward = lambda x: background[: len(x)]
    assert segment.miou(const, loader)[0] == pytest.approx(25.0)


def test_attack_run_reports_what_holds_and_fails_on_a_broken_security_row(tmp_path, monkeypatch, capsys):
    """The attack harness judges by what a row leaves behind: a real row (the lock-file symlink, run as a user
    would) is ok, a row whose guarantee breaks is reported with its severity, and the exit status says so."""
    attack = _load("attack")

    def broken(lab):
        raise attack.Broken("the victim was overwritten")

    monkeypatch.setattr(attack, "ATTACKS", [a for a in attack.ATTACKS if a.name == "lock-symlink"]
                        + [attack.Attack("planted", "security", "a row whose guarantee breaks", broken)])
    monkeypatch.setattr(sys, "argv", ["attack.py", "--output", str(tmp_path / "out")])
    assert attack.main() == 1
    report = json.loads((tmp_path / "out" / "attack.json").read_text())
    verdicts = {r["name"]: r["verdict"] for r in report["rows"]}
    assert verdicts == {"lock-symlink": "ok", "planted": "security"}
    assert report["totals"]["security"] == 1 and "symbolic link" in report["rows"][0]["seen"]
    table = (tmp_path / "out" / "attack.md").read_text()
    assert "| planted | security | a row whose guarantee breaks | **security** | the victim was overwritten |" in table
    monkeypatch.setattr(sys, "argv", ["attack.py", "--output", str(tmp_path / "o2"), "--only", "nope"])
    with pytest.raises(SystemExit, match="unknown rows"):
        attack.main()


def test_litert_run_says_how_to_install_litert_and_writes_nothing_without_it(tmp_path, monkeypatch):
    litert = _load("litert")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("litert_torch", "ai_edge_litert") else real(name, *a))
    with pytest.raises(SystemExit) as e:
        litert.main(["--output", str(tmp_path / "out"), "--iters", "1"])
    assert str(e.value).startswith("litert.py: error: litert_torch, ai_edge_litert")
    assert "not installed: pip install litert-torch" in str(e.value)
    assert not (tmp_path / "out").exists()


def test_litert_report_puts_each_ratio_of_one_run_beside_its_figures():
    litert = _load("litert")
    lat = lambda m: {"median": m, "p10": m * 0.9, "p90": m * 1.1}  # noqa: E731
    results = {"environment": {"date": "D", "cpu": "CPU", "cpu_features": ["avx2"], "logical_cpus": 2,
                               "torch": "t", "timm": "m", "python": "p"},
               "versions": {"litert-torch": "0.10.0"}, "threads": 1, "iters": 5,
               "speed": {"a": {"fp32": lat(3.0), "int8": lat(1.0), "fp32_rel_error_vs_pytorch": 1e-6},
                         "b": {"fp32": lat(6.0), "int8": lat(4.0), "fp32_rel_error_vs_pytorch": 2e-6}},
               "accuracy": {"model": "a", "checkpoint": "c.pth", "data": "fashion-mnist", "img_size": 64,
                            "calib_images": 8, "eval_images": 100, "pytorch_top1": 90.0, "litert_fp32_top1": 90.0,
                            "litert_fp32_agreement": 100.0, "litert_int8_top1": 89.0, "litert_int8_agreement": 98.0}}
    text = litert.report(results, "python experiments/litert.py")
    assert "| LiteRT fp32 | 3.00 (2.70-3.30) | 6.00 (5.40-6.60) | **0.50** |" in text
    assert "| LiteRT int8 | 1.00 (0.90-1.10) | 4.00 (3.60-4.40) | **0.25** |" in text
    assert "| LiteRT int8 | 89.00 | 98.00 |" in text and "litert-torch 0.10.0" in text


def test_readme_verdicts_follow_the_figures(tmp_path):
    """The README's met/short words and its advice are computed from the set: halve PATNet's latencies in a copy of
    the set and every target reads met, with no advice to pick FasterNet."""
    import shutil

    from experiments.readme_figures import RESULTS, render_blocks

    shutil.copytree(RESULTS, tmp_path / "set")
    for path in (tmp_path / "set").glob("bench*.json"):
        bench = json.loads(path.read_text())
        for row in bench["rows"]:
            if row["model"].startswith("patnet"):
                for times in row["latency_ms"].values():
                    times["1t"] = {k: v / 2 for k, v in times["1t"].items()}
        path.write_text(json.dumps(bench))
    fast = render_blocks(tmp_path / "set")["speed"]
    assert "**short**" not in fast and "FasterNet is the faster" not in fast and fast.count("met") >= 3
    shown = render_blocks(RESULTS)["speed"]
    assert shown != fast
