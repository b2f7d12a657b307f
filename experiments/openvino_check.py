"""Is OpenVINO a faster CPU runtime than ONNX Runtime for PATNet or FasterNet, fp32 or int8?

For each model: the static form exported to ONNX (``patnet.deploy.export_model``), its ORT QDQ int8 quantization
(``patnet.deploy.quantize_onnx``) and an NNCF int8 quantization of the OpenVINO model (same generated
calibration images), all timed interleaved in one process: ORT fp32, ORT int8, OpenVINO fp32, OpenVINO running the
QDQ file, OpenVINO + NNCF int8. 1 thread, batch 1, 224 px, random weights (speed only).

    python experiments/openvino_check.py --models patnet_t0,fasternet_t0,patnet_t2,fasternet_t2 \
        --out docs/results/openvino
"""
import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks/ is not installed

import numpy as np
import timm

import patnet  # noqa: F401  (registers the models)
from benchmarks.bench import generated_calibration
from benchmarks.machine import environment
from patnet.deploy import export_model, ort_session, quantize_onnx


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="patnet_t0,fasternet_t0,patnet_t2,fasternet_t2")
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("outputs/openvino"))
    args = ap.parse_args()
    import nncf
    import openvino as ov

    core = ov.Core()
    cfg = {"INFERENCE_NUM_THREADS": args.threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
           "INFERENCE_PRECISION_HINT": "f32"}
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    calib = generated_calibration(224)
    fns = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            fp32, int8 = Path(tmp) / f"{name}.onnx", Path(tmp) / f"{name}.int8.onnx"
            export_model(timm.create_model(name), fp32, "onnx", (224, 224))
            quantize_onnx(fp32, int8, calib)
            for label, path in (("ort_fp32", fp32), ("ort_int8", int8)):
                s = ort_session(path, args.threads)
                fns[(name, label)] = lambda s=s: s.run(None, {"input": x})
            ov_fp32 = core.read_model(str(fp32))
            nncf_int8 = nncf.quantize(ov_fp32, nncf.Dataset(calib), subset_size=len(calib))
            for label, m in (("openvino_fp32", ov_fp32), ("openvino_qdq_int8", core.read_model(str(int8))),
                             ("openvino_nncf_int8", nncf_int8)):
                req = core.compile_model(m, "CPU", cfg).create_infer_request()
                fns[(name, label)] = lambda r=req: r.infer({0: x})
        for fn in fns.values():
            for _ in range(5):
                fn()
        times = {k: [] for k in fns}
        for _ in range(args.iters):
            for k, fn in fns.items():
                t = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t)
    table = {}
    for (name, label), v in times.items():
        table.setdefault(name, {})[label] = round(statistics.median(v) * 1e3, 3)
    env = environment()
    env["openvino"], env["nncf"] = ov.__version__, nncf.__version__
    result = {"environment": env, "settings": vars(args) | {"out": str(args.out)}, "median_ms": table}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "openvino.json").write_text(json.dumps(result, indent=2))
    labels = ["ort_fp32", "openvino_fp32", "ort_int8", "openvino_qdq_int8", "openvino_nncf_int8"]
    lines = ["| model | " + " | ".join(f"{l} ms" for l in labels) + " |", "|---|" + "---|" * len(labels)]
    lines += [f"| {n} | " + " | ".join(f"{row[l]:.2f}" for l in labels) + " |" for n, row in table.items()]
    lines.append(f"\n{args.threads} thread(s), batch 1, 224 px, median of {args.iters}; {env['cpu']}; onnxruntime "
                 f"{env.get('onnxruntime')}, openvino {env['openvino']}, nncf {env['nncf']}, torch {env['torch']}; "
                 f"{env['date']}")
    (args.out / "openvino.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
