"""LiteRT (Google's edge runtime, TensorFlow Lite's successor) for PATNet against FasterNet: exactness and speed.

LiteRT is tried as an experiment, not offered as a ``patnet export`` format: its PyTorch converter (litert-torch
0.10) pins typing-extensions below 4.13 through xdsl, which downgrades pydantic and other packages of the main
environment, and pulls jax and transformers. It therefore runs in an environment of its own (docs/deployment.md):

    python -m venv --system-site-packages .venv-litert
    .venv-litert/bin/pip install litert-torch ai-edge-litert ai-edge-quantizer
    .venv-litert/bin/python experiments/litert.py --output docs/results/litert \\
        --checkpoint RUN/best.pth --model patnet_t2 --data fashion-mnist --img-size 64

* fp32: ``litert_torch.convert`` of the inference form (``patnet.deploy.deploy_form``), batch 1, verified
  against PyTorch like every export (largest |difference| as a fraction of the largest |logit|).
* int8: ai-edge-quantizer's static recipe (``static_wi8_ai8``: int8 weights and activations, int8 input and
  output) applied to that fp32 flatbuffer, calibrated on images. litert-torch's own PT2E quantizer fails on
  PATNet: it puts histogram observers on the integer relative-position index and, with those removed, its
  converter rejects the standard deviation's reshape ("same scale constraint").
* Speed (``--speed-models``, random weights, 224 px): LiteRT's Interpreter with its XNNPACK delegate at
  ``--threads``, batch 1, every (model, precision) timed in interleaved rounds (``benchmarks.bench``).
* Accuracy (``--checkpoint``): top-1 agreement of LiteRT fp32 and int8 with PyTorch on real val images, and top-1.
"""
import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks/ is not installed

import numpy as np
import timm
import torch

import patnet  # noqa: F401  (registers the models)
from benchmarks.bench import generated_calibration, latency_summary, time_interleaved
from benchmarks.machine import environment
from patnet.deploy import deploy_form
from patnet.deploy.runtime import Preprocess, image_batches, top1_of
from patnet.io import atomic_files, temporary_folder
from patnet.weights import create_from_checkpoint

INSTALL = "pip install litert-torch ai-edge-litert ai-edge-quantizer (in its own environment: see this file)"


def require_litert() -> None:
    """Fail in one line, saying how to install LiteRT, when it is missing."""
    import importlib.util

    missing = [m for m in ("litert_torch", "ai_edge_litert", "ai_edge_quantizer") if importlib.util.find_spec(m) is None]
    if missing:
        raise SystemExit(f"litert.py: error: {', '.join(missing)} not installed: {INSTALL}")


def to_litert(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    """Write the fp32 LiteRT flatbuffer of ``model``'s inference form at ``example``'s shape."""
    import litert_torch

    with torch.no_grad():
        litert_torch.convert(deploy_form(model), (example,)).export(str(path))


def to_int8(fp32: Path, calib: Sequence[np.ndarray], path: Path) -> None:
    """Write the static int8 model (ai-edge-quantizer's ``static_wi8_ai8``) of the fp32 flatbuffer ``fp32``."""
    from ai_edge_quantizer import quantizer, recipe

    signature, name = _signature(fp32)
    q = quantizer.Quantizer(str(fp32))
    q.load_quantization_recipe(recipe.static_wi8_ai8())
    calibration = q.calibrate({signature: [{name: x} for x in calib]}, num_threads=1)
    q.quantize(calibration, serialize_to_path=str(path), enable_progress_report=False)


def _signature(path: Path) -> Tuple[str, str]:
    """The flatbuffer's (signature key, input name): the names ai-edge-quantizer's calibration data is keyed by."""
    from ai_edge_litert.interpreter import Interpreter

    sig = Interpreter(model_path=str(path)).get_signature_list()
    key = next(iter(sig))
    return key, sig[key]["inputs"][0]


class LiteRTModel:
    """A LiteRT model file run by the Interpreter (XNNPACK delegate): float32 NCHW batches in, logits out.

    The model has batch 1 and is run image by image; an int8 model's input is quantized and its output
    dequantized with the scales stored in the file.
    """

    def __init__(self, path: Path, threads: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.it = Interpreter(model_path=str(path), num_threads=threads)
        self.it.allocate_tensors()
        self.inp, self.out = self.it.get_input_details()[0], self.it.get_output_details()[0]

    def one(self, x: np.ndarray) -> np.ndarray:
        """Logits of one (1, C, H, W) image."""
        d = self.inp
        if d["dtype"] != np.float32:
            scale, zero = d["quantization"]
            info = np.iinfo(d["dtype"])
            x = np.clip(np.round(x / scale + zero), info.min, info.max).astype(d["dtype"])
        self.it.set_tensor(d["index"], x)
        self.it.invoke()
        y = self.it.get_tensor(self.out["index"])
        if self.out["dtype"] != np.float32:
            scale, zero = self.out["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        return y

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return np.concatenate([self.one(np.ascontiguousarray(x[None])) for x in images])


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    """Largest |a - b| as a fraction of the largest |b|: the measure every patnet export is verified by."""
    return float(np.abs(a - b).max() / max(float(np.abs(b).max()), 1e-12))


def speed(models: Sequence[str], threads: int, iters: int, warmup: int, work: Path) -> Dict[str, Any]:
    """Median / p10 / p90 ms per (model, precision), interleaved, plus the fp32 file's error against PyTorch."""
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    xi = x.numpy()
    calib = generated_calibration(224)
    fns, rel = {}, {}
    for name in models:
        model = timm.create_model(name).eval()
        fp32, int8 = work / f"{name}.tflite", work / f"{name}.int8.tflite"
        to_litert(model, x, fp32)
        to_int8(fp32, calib, int8)
        runners = {"fp32": LiteRTModel(fp32, threads), "int8": LiteRTModel(int8, threads)}
        with torch.no_grad():
            rel[name] = rel_error(runners["fp32"].one(xi), model(x).numpy())
        for precision, m in runners.items():
            fns[(name, precision)] = lambda m=m: m.one(xi)
    out: Dict[str, Any] = {}
    for (name, precision), t in time_interleaved(fns, warmup, iters).items():
        out.setdefault(name, {"fp32_rel_error_vs_pytorch": rel[name]})[precision] = latency_summary(t)
    return out


def accuracy(model_name: str, checkpoint: Path, data: str, img_size: int, calib_images: int, eval_images: int,
             work: Path) -> Dict[str, Any]:
    """Top-1 of PyTorch, LiteRT fp32 and LiteRT int8 on ``data``'s val images, and their agreement with PyTorch."""
    model = create_from_checkpoint(model_name, checkpoint).eval()
    pre = Preprocess.for_model(model, model_name, (img_size, img_size))
    calib = [x for x, _ in image_batches(data, "train", pre, calib_images, batch_size=1, seed=0)]
    held = list(image_batches(data, "val", pre, eval_images, batch_size=64, seed=None))
    fp32, int8 = work / "trained.tflite", work / "trained.int8.tflite"
    to_litert(model, torch.from_numpy(calib[0]), fp32)
    to_int8(fp32, calib, int8)
    with torch.no_grad():
        ref = top1_of(lambda x: model(torch.from_numpy(x)).numpy(), held)
    labels = np.concatenate([y for _, y in held])
    out: Dict[str, Any] = {"model": model_name, "checkpoint": str(checkpoint), "data": data, "img_size": img_size,
                           "calib_images": len(calib), "eval_images": int(len(labels)),
                           "pytorch_top1": round(float((ref == labels).mean() * 100), 3)}
    for precision, path in (("fp32", fp32), ("int8", int8)):
        pred = top1_of(LiteRTModel(path), held)
        out[f"litert_{precision}_top1"] = round(float((pred == labels).mean() * 100), 3)
        out[f"litert_{precision}_agreement"] = round(float((pred == ref).mean() * 100), 3)
    return out


def report(results: Dict[str, Any], command: str) -> str:
    env = results["environment"]
    lines = ["# LiteRT (XNNPACK delegate)", "", f"`{command}`, {env['date']}.", "",
             f"Machine: {env['cpu']} ({', '.join(env['cpu_features'])}), {env['logical_cpus']} logical CPUs; "
             f"torch {env['torch']}, timm {env['timm']}, " + ", ".join(f"{k} {v}" for k, v in results["versions"].items())
             + f", Python {env['python']}.", ""]
    sp = results.get("speed")
    if sp:
        names = list(sp)
        lines += [f"Latency, batch 1, 224 px, {results['threads']} thread(s), median ms of {results['iters']} "
                  "interleaved rounds (p10-p90), random weights:", "",
                  "| precision | " + " | ".join(names) + (f" | {names[0]} / {names[1]} |" if len(names) == 2 else " |"),
                  "|---|" + "---|" * (len(names) + (len(names) == 2))]
        for precision in ("fp32", "int8"):
            cells = [f"{sp[n][precision]['median']:.2f} ({sp[n][precision]['p10']:.2f}-{sp[n][precision]['p90']:.2f})"
                     for n in names]
            ratio = [f"**{sp[names[0]][precision]['median'] / sp[names[1]][precision]['median']:.2f}**"] \
                if len(names) == 2 else []
            lines.append(f"| LiteRT {precision} | " + " | ".join(cells + ratio) + " |")
        lines += ["", "fp32 file against PyTorch (largest |difference| / largest |logit|): "
                  + ", ".join(f"{n} {sp[n]['fp32_rel_error_vs_pytorch']:.1e}" for n in names) + ".", ""]
    acc = results.get("accuracy")
    if acc:
        lines += [f"Accuracy: {acc['model']} ({acc['checkpoint']}) on {acc['eval_images']} val images of "
                  f"{acc['data']} at {acc['img_size']} px, int8 calibrated on {acc['calib_images']} training images:", "",
                  "| | top-1 % | top-1 agreement with PyTorch % |", "|---|---|---|",
                  f"| PyTorch fp32 | {acc['pytorch_top1']:.2f} | - |",
                  f"| LiteRT fp32 | {acc['litert_fp32_top1']:.2f} | {acc['litert_fp32_agreement']:.2f} |",
                  f"| LiteRT int8 | {acc['litert_int8_top1']:.2f} | {acc['litert_int8_agreement']:.2f} |", ""]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--speed-models", default="patnet_t2,fasternet_t2", help="comma-separated; '' skips timing")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--iters", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--checkpoint", type=Path, help="a trained checkpoint: measure int8 agreement on real images")
    ap.add_argument("--model", default="patnet_t2", help="the checkpoint's model name")
    ap.add_argument("--data", default="fashion-mnist", help="as patnet train --data")
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--calib-images", type=int, default=256)
    ap.add_argument("--eval-images", type=int, default=10000)
    ap.add_argument("--output", type=Path, default=Path("outputs/litert"))
    args = ap.parse_args(argv)
    if args.checkpoint is not None and not args.checkpoint.is_file():
        ap.error(f"--checkpoint {args.checkpoint} does not exist")
    if args.threads < 1 or args.iters < 1 or args.calib_images < 1 or args.eval_images < 1:
        ap.error("--threads, --iters, --calib-images and --eval-images must be at least 1")
    require_litert()
    from importlib.metadata import version

    results: Dict[str, Any] = {"environment": environment(), "threads": args.threads, "iters": args.iters,
                               "versions": {p: version(p) for p in ("litert-torch", "ai-edge-litert",
                                                                    "ai-edge-quantizer")}}
    with temporary_folder("patnet-litert-") as work:
        models = [m for m in args.speed_models.split(",") if m]
        if models:
            results["speed"] = speed(models, args.threads, args.iters, args.warmup, work)
        if args.checkpoint is not None:
            results["accuracy"] = accuracy(args.model, args.checkpoint, args.data, args.img_size, args.calib_images,
                                           args.eval_images, work)
    command = "python experiments/litert.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = report(results, command)
    with atomic_files(args.output / "litert.json", args.output / "litert.md") as staged:
        (staged / "litert.json").write_text(json.dumps({"command": command, **results}, indent=1))
        (staged / "litert.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
