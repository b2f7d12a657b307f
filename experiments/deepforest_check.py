"""Real-photo check: PATNet-T0 Faster R-CNN on deepforest's aerial tree-crown photos (MIT licence).

Train on the two Yellowstone orthophotos (cut into 400 px tiles), evaluate on the two other sites (OSBS_029,
SOAP_061: different forests, never seen in training), and draw the predictions for a person to check.

Usage: pip download deepforest --no-deps -d outputs/deepforest
       python experiments/deepforest_check.py outputs/deepforest/deepforest-*.whl [--epochs 12]
"""
import argparse
import json
import subprocess
from pathlib import Path

from patnet.detection.sources import deepforest_to_coco


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("wheel", type=Path)
    ap.add_argument("--work", type=Path, default=Path("outputs/deepforest/run"))
    ap.add_argument("--out", type=Path, default=Path("docs/results/deepforest"))
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--roi-batch-size", type=int, default=512)
    args = ap.parse_args()
    coco_dir = args.work / "coco"
    ann = deepforest_to_coco(args.wheel, coco_dir, single_class="Tree", tile=400)
    coco = json.loads(ann.read_text())
    val_sources = {"OSBS_029.png", "SOAP_061.png"}
    for split, keep in (("train", lambda i: i["source"] not in val_sources), ("val", lambda i: i["source"] in val_sources)):
        images = [i for i in coco["images"] if keep(i)]
        ids = {i["id"] for i in images}
        (coco_dir / f"{split}.json").write_text(json.dumps({
            **coco, "images": images, "annotations": [a for a in coco["annotations"] if a["image_id"] in ids]}))
    train_out = args.work / "patnet_t0"
    subprocess.run(["patnet", "detect", "train", "--model", "patnet_t0", "--task", "boxes",
                    "--ann", str(coco_dir / "train.json"), "--images", str(coco_dir / "images"),
                    "--val-ann", str(coco_dir / "val.json"), "--val-images", str(coco_dir / "images"),
                    "--epochs", str(args.epochs), "--batch-size", "2", "--img-size", "400", "--lr", "3e-4",
                    "--roi-batch-size", str(args.roi_batch_size),
                    "--warmup-iters", "30", "--workers", "0", "--output", str(train_out), "--no-progress"], check=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name in sorted(val_sources):
        subprocess.run(["patnet", "detect", "predict", "--checkpoint", str(train_out / "last.pth"), "--image",
                        str(coco_dir / "images" / name), "--out", f"{args.out}_{Path(name).stem}.png",
                        "--score-threshold", "0.4"], check=True)
    metrics = json.loads((train_out / "coco_metrics.json").read_text())
    n_train = sum(1 for i in coco["images"] if i["source"] not in val_sources)
    summary = {"train_tiles": n_train, "val_images": sorted(val_sources), "epochs": args.epochs,
               "roi_batch_size": args.roi_batch_size, "boxes": metrics["boxes"]}
    (args.out.with_suffix(".json")).write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
