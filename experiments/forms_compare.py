"""Which inference form: the deployment form, the static form and the candidate, timed interleaved.

Run at the commit that adds it (both old forms still exist there; the next commit keeps only the candidate).

    python experiments/forms_compare.py --models patnet_t0,patnet_t2 --out docs/results/forms/

Eager (batch 1, 1 thread, inference_mode), ONNX Runtime fp32 and int8 (QDQ), OpenVINO int8 (NNCF) of each form of
each model, all in one interleaved loop; FasterNet (torch.fx-folded) beside them as the yardstick.
"""
import argparse
import copy
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np
import timm
import torch

import patnet  # noqa: F401
from patnet.bench import _openvino_request, _time_interleaved, environment, generated_calibration
from patnet.export import deploy_form, export_onnx_file, ort_session
from patnet.models import patnet as P
from patnet.quantize import quantize_onnx


def candidate_form(model):
    m = copy.deepcopy(model).eval()
    with torch.no_grad():
        for parent in list(m.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, P.PatBlock):
                    setattr(parent, name, P.CandidatePatBlock(child))
                elif isinstance(child, P.PatAttnBlock):
                    setattr(parent, name, P.PatAttnBlockStatic(child))
    return deploy_form(m)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="patnet_t0,patnet_t2")
    ap.add_argument("--peers", default="fasternet_t0,fasternet_t2")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("outputs/forms"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    calib = generated_calibration(224)
    x = torch.randn(1, 3, 224, 224)
    feed = x.numpy()
    fns = {}
    with tempfile.TemporaryDirectory() as tmp:
        forms = {}
        for name in args.models.split(","):
            model = timm.create_model(name).eval()
            forms[name] = {"deploy": deploy_form(model), "static": patnet.export.static_form(model),
                           "candidate": candidate_form(model)}
            with torch.no_grad():
                ref = model(x)
                for f, m in forms[name].items():
                    err = float((m(x) - ref).abs().max() / ref.abs().max())
                    assert err < 1e-5, (name, f, err)
        for name in args.peers.split(","):
            forms[name] = {"fx": deploy_form(timm.create_model(name).eval())}
        for name, fs in forms.items():
            for f, m in fs.items():
                fns[f"{name}/{f}/eager"] = (lambda m=m: m(x))
                if f == "deploy":
                    continue  # batched-GEMM form: its int8 graph is not weight-stationary
                path = Path(tmp) / f"{name}-{f}.onnx"
                with torch.no_grad():
                    m(x)
                    export_onnx_file(m, x, path, False, 18)
                q = Path(tmp) / f"{name}-{f}.int8.onnx"
                quantize_onnx(path, q, calib)
                s32, s8 = ort_session(path, 1), ort_session(q, 1)
                fns[f"{name}/{f}/ort-fp32"] = (lambda s=s32: s.run(None, {"input": feed}))
                fns[f"{name}/{f}/ort-int8"] = (lambda s=s8: s.run(None, {"input": feed}))
                req = _openvino_request(path, 1, calib)
                fns[f"{name}/{f}/ov-int8"] = (lambda r=req: r.infer({0: feed}))
        with torch.inference_mode():
            times = _time_interleaved(fns, args.warmup, args.iters)
    res = {k: round(statistics.median(v) * 1e3, 3) for k, v in times.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    env = environment()
    (args.out / "forms.json").write_text(json.dumps({"environment": env, "median_ms": res}, indent=2))
    lines = ["| model / form | eager | ORT fp32 | ORT int8 | OpenVINO int8 |", "|---|---|---|---|---|"]
    for name, fs in forms.items():
        for f in fs:
            cells = [res.get(f"{name}/{f}/{r}") for r in ("eager", "ort-fp32", "ort-int8", "ov-int8")]
            lines.append(f"| {name} / {f} | " + " | ".join("-" if c is None else f"{c:.2f}" for c in cells) + " |")
    lines.append(f"\nms, median of {args.iters} interleaved runs, batch 1, 224 px, 1 thread; {env['cpu']}; "
                 f"torch {env['torch']}, onnxruntime {env.get('onnxruntime')}; {env['date']}")
    (args.out / "forms.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
