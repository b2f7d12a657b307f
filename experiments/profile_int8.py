"""Where an int8 model spends its time, node by node: OpenVINO (PERF_COUNT) or ONNX Runtime (its profiler).

    python experiments/profile_int8.py --runtime openvino --models patnet_t2,fasternet_t2 --out docs/results/int8_profile
    python experiments/profile_int8.py --runtime onnxruntime --models patnet_t2,fasternet_t2 --out docs/results/int8_profile

Each model's inference form is exported to ONNX (``patnet.deploy.export_model``) and quantized the way the bench
quantizes it (OpenVINO: NNCF post-training quantization; ONNX Runtime: static QDQ), on generated calibration images
(speed only), then run at 1 thread, batch 1, 224 px. Per-node times are summed by (node type, kernel) and written
as a table per model, with the number of executed nodes (every node costs a dispatch), plus the full per-node list
as JSON. ``--block NAME`` prints every node whose name contains NAME (one block, say ``stages.0/blocks/blocks.1/``).
"""
import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks/ is not installed

import numpy as np
import timm

import patnet  # noqa: F401  (registers the models)
from benchmarks.bench import generated_calibration
from benchmarks.machine import environment
from patnet.deploy import export_model, quantize_onnx

Nodes = List[Tuple[str, str, str, float]]  # (name, node type, kernel, ms per run)


def profile_openvino(onnx_path: Path, calib: List[np.ndarray], runs: int) -> Nodes:
    import openvino as ov

    try:
        from patnet.deploy import nncf_quantize
    except ImportError:  # profiling an older checkout (PYTHONPATH=OLD/src) for a before/after pair
        import nncf

        def nncf_quantize(m, c):
            return nncf.quantize(m, nncf.Dataset(c), subset_size=len(c), target_device=nncf.TargetDevice.CPU)
    model = nncf_quantize(ov.Core().read_model(str(onnx_path)), calib)
    compiled = ov.Core().compile_model(model, "CPU", {
        "INFERENCE_NUM_THREADS": 1, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
        "INFERENCE_PRECISION_HINT": "f32", "PERF_COUNT": True})
    req = compiled.create_infer_request()
    x = calib[0]
    for _ in range(10):
        req.infer({0: x})
    total: Dict[Tuple[str, str, str], float] = collections.Counter()
    for _ in range(runs):
        req.infer({0: x})
        for p in req.get_profiling_info():
            if p.status == p.Status.EXECUTED:
                total[(p.node_name, p.node_type, p.exec_type)] += p.real_time.total_seconds() * 1e3 / runs
    return [(n, t, k, ms) for (n, t, k), ms in total.items()]


def profile_onnxruntime(onnx_path: Path, calib: List[np.ndarray], runs: int) -> Nodes:
    import onnxruntime as ort

    int8 = onnx_path.with_suffix(".int8.onnx")
    quantize_onnx(onnx_path, int8, calib)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = 1, 1, 3
    opts.enable_profiling = True
    opts.profile_file_prefix = str(onnx_path.with_suffix(""))  # beside the temporary model, not in the cwd
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(int8), opts, providers=["CPUExecutionProvider"])
    for _ in range(10):
        sess.run(None, {"input": calib[0]})
    Path(sess.end_profiling()).unlink()  # the warm-up is in it too: restart
    sess = ort.InferenceSession(str(int8), opts, providers=["CPUExecutionProvider"])
    for _ in range(runs):
        sess.run(None, {"input": calib[0]})
    trace = Path(sess.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    total: Dict[Tuple[str, str, str], float] = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            name = e["name"][: -len("_kernel_time")]
            total[(name, e["args"]["op_name"], e["args"].get("provider", ""))] += e["dur"] / runs / 1000
    return [(n, t, k, ms) for (n, t, k), ms in total.items()]


def summarise(nodes: Nodes) -> Dict[str, Dict[str, float]]:
    by_type: Dict[str, Dict[str, float]] = {}
    for _, t, k, ms in nodes:
        d = by_type.setdefault(f"{t} ({k})", {"nodes": 0, "ms": 0.0})
        d["nodes"] += 1
        d["ms"] += ms
    return dict(sorted(by_type.items(), key=lambda kv: -kv[1]["ms"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="patnet_t2,fasternet_t2")
    ap.add_argument("--runtime", choices=("openvino", "onnxruntime"), default="openvino")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--block", default="", help="print every node whose name contains this")
    ap.add_argument("--out", type=Path, default=Path("outputs/int8_profile"))
    args = ap.parse_args()
    calib = generated_calibration(224)
    run = profile_openvino if args.runtime == "openvino" else profile_onnxruntime
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            path = Path(tmp) / f"{name}.onnx"
            export_model(timm.create_model(name), path, "onnx", (224, 224))
            results[name] = run(path, calib, args.runs)
    env = environment()
    lines = [f"# int8 per-node profile, {args.runtime}", "",
             f"Command: `python experiments/profile_int8.py --runtime {args.runtime} --models {args.models} "
             f"--runs {args.runs}`. {env['cpu']} ({', '.join(env.get('cpu_features', [])) or 'no int8/bf16 ISA flags'}"
             f"), 1 thread, batch 1, 224 px, mean of {args.runs} runs after 10 warm-up; node times as the runtime "
             f"reports them (their sum is below wall time: dispatch between nodes is not in it). "
             f"{env['date']}; {', '.join(f'{k} {env[k]}' for k in ('torch', 'onnxruntime', 'openvino', 'nncf') if k in env)}.", ""]
    for name, nodes in results.items():
        summary = summarise(nodes)
        lines += [f"## {name}: {len(nodes)} nodes, {sum(n[3] for n in nodes):.3f} ms in nodes", "",
                  "| node type (kernel) | nodes | ms |", "|---|---|---|"]
        lines += [f"| {k} | {v['nodes']} | {v['ms']:.3f} |" for k, v in summary.items()]
        lines.append("")
        if args.block:
            print(f"== {name}")
            for n, t, k, ms in nodes:
                if args.block in n:
                    print(f"   {n[:100]:100s} {t:16s} {k:28s} {ms * 1e3:7.1f} us")
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"profile_{args.runtime}"
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    (args.out / f"{stem}.json").write_text(json.dumps(
        {"environment": env, "nodes": {k: [dict(name=n, type=t, kernel=kk, ms=round(ms, 5)) for n, t, kk, ms in v]
                                       for k, v in results.items()}}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
