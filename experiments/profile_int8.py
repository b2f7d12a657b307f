"""Where an int8 ONNX Runtime model spends its time: per-operator totals from ORT's profiler (1 thread, batch 1).

    python experiments/profile_int8.py --models patnet_t2,fasternet_t2 --out docs/results/int8_profile.md
"""
import argparse
import collections
import json
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import timm

import patnet  # noqa: F401
from patnet.bench import environment, generated_calibration
from patnet.export import export_model
from patnet.quantize import quantize_onnx


def profile(path: Path, runs: int) -> collections.Counter:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = 1, 1, 3
    opts.enable_profiling = True
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    for _ in range(runs):
        sess.run(None, {"input": x})
    events = json.loads(Path(sess.end_profiling()).read_text())
    per_op: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"] / runs / 1000  # ms per run
    return per_op


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="patnet_t2,fasternet_t2")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--out", type=Path, default=Path("outputs/int8_profile.md"))
    args = ap.parse_args()
    tables = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            fp32, int8 = Path(tmp) / f"{name}.onnx", Path(tmp) / f"{name}.int8.onnx"
            export_model(timm.create_model(name), fp32, "onnx", (224, 224))
            quantize_onnx(fp32, int8, generated_calibration(224))
            tables[name] = profile(int8, args.runs)
    ops = sorted({o for t in tables.values() for o in t}, key=lambda o: -max(t.get(o, 0) for t in tables.values()))
    names = list(tables)
    lines = ["| operator | " + " | ".join(f"{n} ms" for n in names) + " |", "|---|" + "---|" * len(names)]
    lines += [f"| {o} | " + " | ".join(f"{tables[n].get(o, 0):.3f}" for n in names) + " |" for o in ops[:16]]
    lines.append("| **total (kernels)** | " + " | ".join(f"**{sum(tables[n].values()):.3f}**" for n in names) + " |")
    env = environment()
    lines.append(f"\nONNX Runtime {env.get('onnxruntime')} CPU, 1 thread, batch 1, 224 px, mean of {args.runs} runs; "
                 f"{env['cpu']}; {env['date']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
