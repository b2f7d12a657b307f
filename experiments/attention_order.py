"""PAT_sf's second attention product in its two operand orders, timed in one process: the decision record.

    python experiments/attention_order.py --iters 300 --out docs/results/attention_order

The inference form computes ``attn @ v^T`` (the softmax output first); the form before 2026-12-08 computed
``v @ attn^T``. Both give the same values. This program builds PATNet-T2's inference form in each order (the old one
by overriding ``FusedPatAttnBlock.forward`` here), exports and quantizes both exactly as the bench does (NNCF for
OpenVINO int8), and times them interleaved with FasterNet-T2 at 1 thread, batch 1, 224 px: OpenVINO int8 (where the
order matters: OpenVINO keeps ``v @ attn^T`` in fp32) and PyTorch eager fp32 (to show the change costs nothing there).
"""
import argparse
import json
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any, Callable, Dict, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks/ is not installed

import openvino as ov
import timm
import torch

import patnet  # noqa: F401  (registers the models)
from benchmarks.bench import generated_calibration
from benchmarks.machine import environment, machine_line
from patnet.deploy import deploy_form, export_model, nncf_quantize
from patnet.deploy.runtime import openvino_compiled
from patnet.models.patnet import FusedPatAttnBlock


def previous_order(self: FusedPatAttnBlock, x: torch.Tensor) -> torch.Tensor:
    """``FusedPatAttnBlock.forward`` as it was before 2026-12-08: the second product as ``v @ attn^T``."""
    B, C, H, W = x.shape
    N = H * W
    x1, x2 = torch.split(x, [self.dim_conv, self.dim_untouched], dim=1)
    t = torch.nn.functional.layer_norm(x2.flatten(2).transpose(1, 2), [self.dim_untouched], eps=self.eps)
    qkv = self.qkv(t.transpose(1, 2).reshape(B, self.dim_untouched, H, W))
    q, k, v = qkv.reshape(B, 3, self.num_heads, self.head_dim, N).unbind(1)
    attn = (q.transpose(-2, -1) @ k + self.rel_pos(H, W).to(q.dtype)).softmax(dim=-1)
    out = (v @ attn.transpose(-2, -1)).reshape(B, self.dim_untouched, H, W)
    x = x + torch.cat([self.conv(x1), self.proj(out)], dim=1)
    return self.mlp(x, x)


def with_order(model: torch.nn.Module, old: bool) -> torch.nn.Module:
    """The inference form of ``model``, its attention blocks in the previous order if ``old``."""
    form = deploy_form(model)  # FasterNet: its conv+BN pairs folded, as the bench times it
    if old:
        for m in form.modules():
            if isinstance(m, FusedPatAttnBlock):
                m.forward = types.MethodType(previous_order, m)
    return form


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--out", type=Path, default=Path("outputs/attention_order"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    calib = generated_calibration(224)
    x = torch.from_numpy(calib[0])
    fns: Dict[Tuple[str, str], Callable[[], Any]] = {}
    errors = {}
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        for tag, name, old in (("attn @ v^T (now)", "patnet_t2", False), ("v @ attn^T (before)", "patnet_t2", True),
                               ("fasternet_t2", "fasternet_t2", False)):
            torch.manual_seed(0)
            base = timm.create_model(name).eval()
            form = with_order(base, old)
            path = Path(tmp) / f"{len(fns)}.onnx"
            export_model(form, path, "onnx", (224, 224))  # a fused form exports as it is
            errors[tag] = float((form(x) - deploy_form(base)(x)).abs().max())
            request = openvino_compiled(nncf_quantize(ov.Core().read_model(str(path)), calib), 1).create_infer_request()
            fns[tag, "OpenVINO int8"] = lambda r=request: r.infer({0: calib[0]})
            fns[tag, "eager fp32"] = lambda f=form: f(x)
        for fn in fns.values():
            for _ in range(10):
                fn()
        times: Dict[Tuple[str, str], list] = {k: [] for k in fns}
        for _ in range(args.iters):
            for k, fn in fns.items():
                start = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - start)
    med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    env = environment()
    lines = ["# PAT_sf's second attention product: operand order", "",
             f"`python experiments/attention_order.py --iters {args.iters}`; PATNet-T2 in both orders and "
             "FasterNet-T2, interleaved, 1 thread, batch 1, 224 px, median ms; ratio to FasterNet-T2 in brackets.", "",
             "| form | OpenVINO int8 | eager fp32 |", "|---|---|---|"]
    for tag in ("attn @ v^T (now)", "v @ attn^T (before)", "fasternet_t2"):
        cells = (f"{med[tag, rt]:.3f} ({med[tag, rt] / med['fasternet_t2', rt]:.3f})"
                 for rt in ("OpenVINO int8", "eager fp32"))
        lines.append(f"| {tag} | " + " | ".join(cells) + " |")
    lines += ["", f"Largest difference of the logits of each order from the library's form: {errors}.", "",
              machine_line(env)]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "attention_order.md").write_text("\n".join(lines) + "\n")
    (args.out / "attention_order.json").write_text(json.dumps(
        {"environment": env, "iters": args.iters, "median_ms": {f"{a} | {b}": v for (a, b), v in med.items()},
         "max_abs_logit_difference": errors}, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
