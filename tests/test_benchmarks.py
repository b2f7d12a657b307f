"""The benchmarks (not installed; imported from the checkout): the runtime registry, the tables they write, the
peers table and its frontier. Tiny settings: the published figures come from real runs, never from tests."""
import json
from pathlib import Path

import pytest
import timm

from benchmarks import bench, peers
from benchmarks.machine import SPEED_FLAGS, cpu_features, environment, machine_line

from conftest import disk_full_at

TINY = ["--img-size", "64", "--threads", "1", "--iters", "2", "--warmup", "1", "--no-gpu"]


def test_bench_times_every_asked_runtime_and_writes_its_four_files(tmp_path, capsys):
    code = bench.main(["--models", "patnet_t0,fasternet_t0", *TINY, "--runtime", "onnxruntime-int8",
                       "--output", str(tmp_path)])
    assert code == 0
    res = json.loads((tmp_path / "bench.json").read_text())
    rows = {r["model"]: r for r in res["rows"]}
    assert set(rows) == {"patnet_t0", "fasternet_t0"}
    # onnxruntime-int8 brings its fp32 companion, so the int8 speed-up is a same-run ratio; the training form is
    # PATNet's only.
    assert res["settings"]["runtimes"] == ["eager", "train-form", "onnxruntime", "onnxruntime-int8"]
    assert set(rows["patnet_t0"]["latency_ms"]) == {"eager", "train-form", "onnxruntime", "onnxruntime-int8"}
    assert set(rows["fasternet_t0"]["latency_ms"]) == {"eager", "onnxruntime", "onnxruntime-int8"}
    t = rows["fasternet_t0"]["latency_ms"]["onnxruntime-int8"]["1t"]
    assert 0 < t["p10"] <= t["median"] <= t["p90"] and res["matmul_peak_gflops"]["1t"] > 0
    assert (tmp_path / "bench.png").stat().st_size > 1000
    header = (tmp_path / "bench.csv").read_text().splitlines()[0].split(",")
    assert header[0] == "model" and "onnxruntime-int8_1t_median_ms" in header
    table = capsys.readouterr().out
    assert "| patnet_t0 |" in table and "ORT int8 ms 1t" in table and "fuse speed-up" in table
    assert "machine: " in (tmp_path / "bench.md").read_text()


@pytest.mark.slow
def test_bench_times_executorch_programs(tmp_path):
    """The ExecuTorch runtimes lower each model once (fp32 verified, int8 by PT2E) and time both in one run. A tiny
    timm test model keeps the lowering short; PATNet's own programs are tested in test_quantize.py."""
    res = bench.run_benchmark(["test_resnet"], 64, (1,), 1, 2, ["executorch-int8"], train_form=False, gpu=False,
                              show_progress=False)
    row = res["rows"][0]
    assert not row["errors"] and res["settings"]["runtimes"] == ["eager", "executorch", "executorch-int8"]
    for runtime in ("executorch", "executorch-int8"):
        t = row["latency_ms"][runtime]["1t"]
        assert 0 < t["p10"] <= t["median"] <= t["p90"]


def test_a_runtime_that_cannot_take_a_model_is_reported_and_the_rest_is_timed(tmp_path, monkeypatch):
    def prepare(case):
        if case.name.startswith("fasternet"):
            raise RuntimeError("this exporter cannot take it")
        return case.model

    monkeypatch.setitem(bench.RUNTIMES, "picky", bench.Runtime("picky", prepare, bench._torch_call))
    res = bench.run_benchmark(["patnet_t0", "fasternet_t0"], 64, (1,), 1, 2, ["picky"], train_form=False,
                              gpu=False, show_progress=False)
    rows = {r["model"]: r for r in res["rows"]}
    assert set(rows["patnet_t0"]["latency_ms"]) == {"eager", "picky"} and not rows["patnet_t0"]["errors"]
    assert set(rows["fasternet_t0"]["latency_ms"]) == {"eager"}
    assert rows["fasternet_t0"]["errors"] == {"picky": "RuntimeError: this exporter cannot take it"}
    assert "not timed: fasternet_t0 picky: RuntimeError" in bench.format_table(res)


def test_a_form_that_fails_is_made_once_for_every_runtime_that_needs_it(tmp_path):
    case = bench.Case("patnet_t0", 64, tmp_path, None)
    calls = []

    def make():
        calls.append(1)
        raise ValueError("cannot export")

    for _ in range(3):
        with pytest.raises(ValueError, match="cannot export"):
            case.form("onnx", make)
    assert len(calls) == 1


@pytest.mark.parametrize("argv, message", [
    (["--models", "patnet_t0,resnet_nope"], "unknown model"),
    (["--models", "patnet_t0", "--threads", "0"], "thread counts must be at least 1"),
    (["--models", "patnet_t0", "--runtime", "tensorrt"], "unknown runtime 'tensorrt'; use eager, train-form"),
])
def test_bench_bad_input_is_one_line(tmp_path, capsys, argv, message):
    assert bench.main([*argv, "--iters", "1", "--output", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("python -m benchmarks.bench: error:") and message in err and "\n" not in err
    assert not (tmp_path / "b").exists()


def test_bench_on_a_full_disk_keeps_the_previous_results_whole(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("bench.json", "bench.png"):
        (out / name).write_bytes(b"previous")
    disk_full_at(monkeypatch, "bench.png")
    assert bench.main(["--models", "patnet_t0", *TINY, "--no-train-form", "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == f"python -m benchmarks.bench: error: cannot write {out / 'bench.png'}: the disk is full; " \
                  "the previous bench.png is unchanged"
    assert sorted(p.name for p in out.iterdir()) == ["bench.json", "bench.png"]  # no new table beside the old plot
    assert all((out / n).read_bytes() == b"previous" for n in ("bench.json", "bench.png"))


def test_machine_line_names_cpu_flags_versions_and_date():
    env = {"cpu": "Some CPU", "logical_cpus": 2, "cpu_features": ["avx512_vnni", "amx_int8"], "torch": "2.9",
           "timm": "1.0", "date": "2026-12-03 10:00 UTC"}
    assert machine_line(env) == ("machine: Some CPU (2 logical CPUs; avx512_vnni, amx_int8); torch 2.9, timm 1.0; "
                                 "2026-12-03 10:00 UTC")
    # A generic name is told apart by its family, model and stepping numbers.
    generic = {**env, "cpu": "Intel(R) Xeon(R) Processor", "cpu_id": "family 6 model 207 stepping 2"}
    assert machine_line(generic).startswith("machine: Intel(R) Xeon(R) Processor, family 6 model 207 stepping 2 (2 ")
    assert set(cpu_features()) <= set(SPEED_FLAGS)
    here = environment()
    if Path("/proc/cpuinfo").is_file():  # Linux: the numbers are read off the first processor
        assert here["cpu_id"] and here["cpu_id"].startswith("family ") and " model " in here["cpu_id"]


def test_peer_table_is_complete_and_known_to_timm():
    entries = peers.load_peers()
    names = [p.model for p in entries]
    assert len(names) == len(set(names))
    assert {p.tier for p in entries} == set(peers.TIERS)
    for tier in peers.TIERS:  # every tier has PATNet and FasterNet
        tier_models = {p.model for p in entries if p.tier == tier}
        assert any(m.startswith("patnet") for m in tier_models) and any(m.startswith("fasternet") for m in tier_models)
    available = set(timm.list_models())
    assert all(n in available for n in names)
    assert all(50 < p.top1 < 90 and p.source for p in entries)


def test_pareto_front():
    # (latency, top-1): b dominates d (faster and more accurate); e equals a in latency but is less accurate.
    pts = [(1.0, 70.0), (2.0, 75.0), (3.0, 80.0), (2.5, 74.0), (1.0, 69.0)]
    assert peers.pareto_front(pts) == [0, 1, 2]
    assert peers.pareto_front([(1.0, 70.0)]) == [0]


def test_peers_writes_tables_and_one_frontier_plot_per_runtime(tmp_path, monkeypatch):
    table = tmp_path / "top1.csv"
    table.write_text("tier,model,top1,distilled,eval_img_size,source\n"
                     "T0,patnet_t0,73.9,no,224,paper\nT0,fasternet_t0,71.9,no,224,paper\n"
                     "T1,not_a_timm_model,70.0,no,224,nowhere\n")
    monkeypatch.setattr(peers, "TOP1_TABLE", table)
    paths = peers.run_peers(tmp_path / "out", ["eager"], (1,), warmup=1, iters=2, tiers=("T0", "T1"),
                            show_progress=False)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["peers.csv", "peers.json", "peers.md",
                                                                    "peers_eager.png"]
    summary = json.loads(paths["json"].read_text())
    assert [r["model"] for r in summary["rows"]] == ["patnet_t0", "fasternet_t0"]  # the unknown one skipped
    md = paths["md"].read_text()
    assert "### T0" in md and "### T1" not in md and "| **patnet_t0** | 73.9 |" in md
    assert paths["csv"].read_text().splitlines()[0] == "tier,model,top1,distilled,params_m,gflops,eager_ms_1t"


def test_peers_unknown_tier_is_one_line(tmp_path, capsys):
    assert peers.main(["--tiers", "T0,T9", "--output", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "python -m benchmarks.peers: error: unknown tier 'T9'; use T0, T1, T2, S"
