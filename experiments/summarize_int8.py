"""Summarise experiments/int8_fmnist.sh: top-1 of each trained checkpoint in fp32 and int8 ONNX (10,000 test images).

    python experiments/summarize_int8.py outputs/int8 docs/results/int8_accuracy
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks/ is not installed

from benchmarks.machine import environment


def main(src: Path, dst: Path) -> None:
    rows = []
    for model_dir in sorted(p for p in src.iterdir() if (p / "int8.json").is_file()):
        q = json.loads((model_dir / "int8.json").read_text())
        v32 = json.loads((model_dir / "val_fp32" / "metrics.json").read_text())
        v8 = json.loads((model_dir / "val_int8" / "metrics.json").read_text())
        train = json.loads((model_dir / "metrics.json").read_text())
        rows.append(dict(model=model_dir.name, epochs=train["epochs"], checkpoint_top1=train["top1"],
                         onnx_fp32_top1=v32["top1"], int8_top1=v8["top1"], drop=round(v32["top1"] - v8["top1"], 3),
                         agreement=q["top1_agreement"], images=v8["count"], calib_images=q["calib_images"],
                         method=q["method"]))
    env = environment()
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.with_suffix(".json").write_text(json.dumps({"environment": env, "rows": rows}, indent=2))
    lines = ["| model | epochs | fp32 ONNX top-1 | int8 top-1 | drop (points) | top-1 agreement int8 vs fp32 |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['epochs']} | {r['onnx_fp32_top1']:.2f} | {r['int8_top1']:.2f} | {r['drop']:.2f} "
              f"| {r['agreement']:.2f}% |" for r in rows]
    lines.append(f"\nFashion-MNIST test set ({rows[0]['images']} images), 64 px; int8: ONNX Runtime QDQ, "
                 f"{rows[0]['method']} calibration on {rows[0]['calib_images']} training images. {env['cpu']}, torch "
                 f"{env['torch']}, onnxruntime {env.get('onnxruntime')}; {env['date']}")
    dst.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
