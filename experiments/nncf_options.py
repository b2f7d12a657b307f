"""Which NNCF settings make the fastest OpenVINO int8 model: every setting of every model, timed interleaved.

    python experiments/nncf_options.py --models patnet_t2,fasternet_t2 --out docs/results/int8_profile

Each model's inference form is exported to ONNX, read by OpenVINO and quantized by ``patnet.deploy.nncf_quantize``
with each setting (preset, model type, bias correction) on generated calibration images (speed only), then every
(model, setting) pair runs at 1 thread, batch 1, 224 px, interleaved, median of ``--iters``.
"""
import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks/ is not installed

import timm

import patnet  # noqa: F401  (registers the models)
from benchmarks.bench import generated_calibration
from benchmarks.machine import environment
from patnet.deploy import export_model, nncf_quantize

SETTINGS = {
    "default (performance)": dict(),
    "mixed preset": dict(preset="mixed"),
    "transformer model type": dict(model_type="transformer"),
    "full bias correction": dict(fast_bias_correction=False),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="patnet_t2,fasternet_t2")
    ap.add_argument("--iters", type=int, default=60)
    ap.add_argument("--out", type=Path, default=Path("outputs/int8_profile"))
    args = ap.parse_args()
    import openvino as ov

    core = ov.Core()
    cfg = {"INFERENCE_NUM_THREADS": 1, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
           "INFERENCE_PRECISION_HINT": "f32"}
    calib = generated_calibration(224)
    x = calib[0]
    reqs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            path = Path(tmp) / f"{name}.onnx"
            export_model(timm.create_model(name), path, "onnx", (224, 224))
            for label, opts in SETTINGS.items():
                model = nncf_quantize(core.read_model(str(path)), calib, **opts)
                reqs[(name, label)] = core.compile_model(model, "CPU", cfg).create_infer_request()
    for r in reqs.values():
        for _ in range(10):
            r.infer({0: x})
    times = {k: [] for k in reqs}
    for _ in range(args.iters):
        for k, r in reqs.items():
            t = time.perf_counter()
            r.infer({0: x})
            times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    env = environment()
    names = args.models.split(",")
    lines = ["| NNCF setting | " + " | ".join(f"{n} ms" for n in names) + " |", "|---|" + "---|" * len(names)]
    lines += [f"| {label} | " + " | ".join(f"{med[(n, label)]:.3f}" for n in names) + " |" for label in SETTINGS]
    lines.append(f"\nOpenVINO {env.get('openvino')}, NNCF {env.get('nncf')}, 1 thread, batch 1, 224 px, median of "
                 f"{args.iters} interleaved runs; {env['cpu']} ({', '.join(env['cpu_features'])}); {env['date']}. "
                 f"Command: `python experiments/nncf_options.py --models {args.models} --iters {args.iters}`.")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "nncf_options.md").write_text("\n".join(lines) + "\n")
    (args.out / "nncf_options.json").write_text(json.dumps(
        {"environment": env, "median_ms": {f"{n}/{s}": v for (n, s), v in med.items()}}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
