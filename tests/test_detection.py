"""Detection: generated COCO data, COCO edge cases, tiny Faster/Mask R-CNN training + COCO eval, predict."""
import json
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from patnet.cli import main
from patnet.detection import build_backbone, build_detector
from patnet.detection.data import CocoDataset, detection_transform
from patnet.detection.sources import deepforest_to_coco, make_fashion_mnist_detection
from patnet.weights import from_official

from conftest import load_parity, make_idx_dataset


@pytest.fixture(scope="module")
def coco_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("det")
    idx = make_idx_dataset(root / "idx", n_train=40, n_val=20)
    paths = make_fashion_mnist_detection(root / "coco", source=str(idx), n_train=8, n_val=4, canvas=96, seed=1)
    return root / "coco", paths


def test_generator_masks_and_boxes_are_exact(coco_data):
    from pycocotools import mask as mask_utils

    root, paths = coco_data
    data = json.loads(paths["train"].read_text())
    assert len(data["images"]) == 8 and len(data["annotations"]) >= 8
    for ann in data["annotations"]:
        m = mask_utils.decode(ann["segmentation"])
        ys, xs = np.nonzero(m)
        assert m.sum() == ann["area"] > 0
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    # Objects never overlap: the masks of one image are disjoint.
    by_image = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(mask_utils.decode(ann["segmentation"]).astype(int))
    assert all(np.stack(ms).sum(0).max() <= 1 for ms in by_image.values())


def test_generator_is_seeded(coco_data, tmp_path):
    _, paths = coco_data
    idx = paths["train"].parent.parent / "idx"
    again = make_fashion_mnist_detection(tmp_path, source=str(idx), n_train=8, n_val=4, canvas=96, seed=1)
    assert again["train"].read_text() == paths["train"].read_text()
    assert (tmp_path / "train" / "00003.png").read_bytes() == (paths["train"].parent / "train" / "00003.png").read_bytes()


def _write_edge_case_coco(tmp_path):
    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    Image.new("L", (50, 40), 128).save(img_dir / "grey.png")
    Image.new("RGBA", (60, 45), (10, 20, 30, 128)).save(img_dir / "rgba.png")
    Image.new("RGB", (20, 20), (1, 2, 3)).save(img_dir / "tiny.png")
    Image.new("RGB", (64, 64)).save(img_dir / "empty.png")
    coco = {
        "images": [
            {"id": 1, "file_name": "grey.png", "width": 50, "height": 40},
            {"id": 2, "file_name": "rgba.png", "width": 60, "height": 45},
            {"id": 3, "file_name": "missing.png", "width": 10, "height": 10},
            {"id": 4, "file_name": "tiny.png", "width": 20, "height": 20},
            {"id": 5, "file_name": "empty.png", "width": 64, "height": 64},
        ],
        "categories": [{"id": 5, "name": "five"}, {"id": 9, "name": "nine"}, {"id": 20, "name": "twenty"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 9, "bbox": [5, 5, 20, 10], "area": 200, "iscrowd": 0,
             "segmentation": [[5, 5, 25, 5, 25, 15, 5, 15]]},
            {"id": 2, "image_id": 2, "category_id": 20, "bbox": [1, 1, 0, 10], "area": 0, "iscrowd": 0,
             "segmentation": [[1, 1, 1, 11, 2, 11]]},
            {"id": 3, "image_id": 2, "category_id": 5, "bbox": [10, 10, -4, 5], "area": 0, "iscrowd": 0,
             "segmentation": [[10, 10, 12, 10, 12, 12]]},
            {"id": 4, "image_id": 3, "category_id": 5, "bbox": [1, 1, 3, 3], "area": 9, "iscrowd": 0,
             "segmentation": [[1, 1, 4, 1, 4, 4]]},
            {"id": 5, "image_id": 4, "category_id": 20, "bbox": [2, 2, 10, 12], "area": 120, "iscrowd": 0,
             "segmentation": None},  # an RLE mask, filled in below
        ],
    }
    from pycocotools import mask as mask_utils

    m = np.zeros((20, 20), np.uint8, order="F")
    m[2:14, 2:12] = 1
    rle = mask_utils.encode(m)
    rle["counts"] = rle["counts"].decode("ascii")
    coco["annotations"][4]["segmentation"] = rle
    ann = tmp_path / "edge.json"
    ann.write_text(json.dumps(coco))
    return ann, img_dir


def test_coco_edge_cases(tmp_path):
    ann, img_dir = _write_edge_case_coco(tmp_path)
    ds = CocoDataset(ann, img_dir, masks=True, transform=detection_transform(False))
    assert len(ds) == 4  # the missing image is skipped
    assert ds.stats.missing_images == 1 and ds.stats.bad_boxes == 2 and ds.stats.empty_images == 2
    assert ds.cat_to_label == {5: 1, 9: 2, 20: 3} and ds.label_to_cat[3] == 20
    img, tgt = ds[0]  # grey -> 3 channels
    assert img.shape == (3, 40, 50) and tgt["labels"].tolist() == [2]
    assert tgt["masks"].shape == (1, 40, 50) and tgt["masks"][0, 5:15, 5:25].float().mean() > 0.9
    img, tgt = ds[1]  # RGBA -> RGB, both boxes dropped
    assert img.shape == (3, 45, 60) and len(tgt["boxes"]) == 0 and tgt["masks"].shape == (0, 45, 60)
    img, tgt = ds[2]  # RLE mask
    assert tgt["masks"][0].sum() == 120 and tgt["labels"].tolist() == [3]


def test_coco_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CocoDataset(tmp_path / "none.json", tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not a COCO annotation file"):
        CocoDataset(bad, tmp_path)
    only_missing = tmp_path / "m.json"
    only_missing.write_text(json.dumps({"images": [{"id": 1, "file_name": "x.png", "width": 1, "height": 1}],
                                        "annotations": [], "categories": [{"id": 1, "name": "a"}]}))
    with pytest.raises(ValueError, match="none of the images"):
        CocoDataset(only_missing, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("task", ["boxes", "masks"])
def test_tiny_training_and_coco_eval(coco_data, tmp_path, task, capsys):
    root, paths = coco_data
    out = tmp_path / task
    argv = ["detect", "train", "--model", "patnet_t0", "--ann", str(paths["train"]), "--images", str(root / "train"),
            "--val-ann", str(paths["val"]), "--val-images", str(root / "val"), "--task", task, "--epochs", "1",
            "--batch-size", "2", "--img-size", "96", "--workers", "0", "--output", str(out), "--no-progress",
            "--warmup-iters", "2"]
    assert main(argv) == 0
    metrics = json.loads((out / "coco_metrics.json").read_text())
    kinds = ["boxes", "masks"] if task == "masks" else ["boxes"]
    for kind in kinds:
        assert set(metrics[kind]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
        m = metrics[kind]  # COCO AP over IoU 0.5:0.95 and at 0.75 can never exceed AP at 0.5
        assert m["AP"] <= m["AP50"] and m["AP75"] <= m["AP50"], m
    assert metrics["images"] == 4
    # eval and predict from the checkpoint
    assert main(["detect", "eval", "--checkpoint", str(out / "last.pth"), "--ann", str(paths["val"]), "--images",
                 str(root / "val"), "--output", str(tmp_path / "ev"), "--workers", "0"]) == 0
    again = json.loads((tmp_path / "ev" / "coco_metrics.json").read_text())
    assert again["boxes"] == metrics["boxes"]
    png = tmp_path / "pred.png"
    assert main(["detect", "predict", "--checkpoint", str(out / "last.pth"), "--image",
                 str(root / "val" / "00000.png"), "--out", str(png), "--score-threshold", "0.0"]) == 0
    with Image.open(png) as im:
        assert im.size == (96, 96) and im.mode == "RGB"
    if task == "boxes":  # a threshold no score can reach: an empty picture, with a hint instead of silence
        capsys.readouterr()
        assert main(["detect", "predict", "--checkpoint", str(out / "last.pth"), "--image",
                     str(root / "val" / "00000.png"), "--out", str(png), "--score-threshold", "1.01"]) == 0
        captured = capsys.readouterr()
        assert json.loads(captured.out)["detections"] == 0
        assert "nothing scored >= --score-threshold 1.01" in captured.err


def test_backbone_from_official_checkpoint_is_strict(tmp_path):
    d = load_parity("patnet_t0_official_cfg.pt")
    path = tmp_path / "t0.pth"
    torch.save({"state_dict": d["state_dict"]}, path)
    backbone = build_backbone("patnet_t0", checkpoint=path, act_layer="gelu", norm="train")
    ref = from_official(d["state_dict"], act_layer="gelu")
    torch.testing.assert_close(backbone.body.stages_3.blocks[0].mixer.qkv.weight, ref.stages[3].blocks[0].mixer.qkv.weight)
    with pytest.raises(ValueError, match="does not fit patnet_t1"):
        build_backbone("patnet_t1", checkpoint=path)


def test_frozen_stages_and_norm():
    backbone = build_backbone("patnet_t0", trainable_stages=2, norm="frozen")
    frozen = {n.split(".")[0] for n, p in backbone.body.named_parameters() if not p.requires_grad}
    assert frozen == {"stem", "stages_0", "stages_1"}
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.body.modules())
    fn = build_backbone("fasternet_t0", trainable_stages=4, norm="train")
    assert all(p.requires_grad for p in fn.parameters())
    out = fn(torch.randn(1, 3, 64, 96))
    assert list(out) == ["0", "1", "2", "3", "pool"] and out["0"].shape == (1, 256, 16, 24)


def test_detector_rejects_tiny_resize():
    with pytest.raises(ValueError, match="at least 64"):
        build_detector("patnet_t0", 3, min_size=32)


def test_deepforest_conversion_from_wheel(tmp_path):
    """The converter reads Pascal VOC files out of a deepforest-style wheel (a small stand-in built here)."""
    img = tmp_path / "a.png"
    Image.new("RGB", (40, 30), (30, 90, 30)).save(img)
    xml = ("<annotation><filename>a.png</filename><size><width>40</width><height>30</height></size>"
           "<object><name>Tree</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>11</xmax><ymax>22</ymax></bndbox>"
           "</object><object><name>Dead</name><bndbox><xmin>5</xmin><ymin>5</ymin><xmax>9</xmax><ymax>8</ymax>"
           "</bndbox></object></annotation>")
    wheel = tmp_path / "deepforest-0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.write(img, "deepforest/data/a.png")
        z.writestr("deepforest/data/a.xml", xml)
    ann = deepforest_to_coco(wheel, tmp_path / "out")
    coco = json.loads(ann.read_text())
    assert [c["name"] for c in coco["categories"]] == ["Tree", "Dead"]
    assert coco["annotations"][0]["bbox"] == [1.0, 2.0, 10.0, 20.0]
    ds = CocoDataset(ann, tmp_path / "out" / "images")
    assert len(ds) == 1 and ds[0][1]["labels"].tolist() == [1, 2]


def test_deepforest_tiling_and_single_class(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    Image.new("RGB", (100, 60)).save(data / "big.png")
    objs = [("Dead", 5, 5, 15, 15), ("Alive", 45, 20, 60, 30), ("Dead", 80, 40, 95, 55)]
    xml = "<annotation><filename>big.png</filename>" + "".join(
        f"<object><name>{n}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax>"
        "</bndbox></object>" for n, a, b, c, d in objs) + "</annotation>"
    (data / "big.xml").write_text(xml)
    coco = json.loads(deepforest_to_coco(data, tmp_path / "out", single_class="Tree", tile=50).read_text())
    # x windows start at 0 and 50, y windows at 0 and 10 (the last one overlaps so every tile is 50 x 50).
    assert sorted((i["file_name"], i["width"], i["height"]) for i in coco["images"]) == [
        ("big_0_0.png", 50, 50), ("big_0_10.png", 50, 50), ("big_50_0.png", 50, 50), ("big_50_10.png", 50, 50)]
    assert [c["name"] for c in coco["categories"]] == ["Tree"]
    by_file = {}
    for a in coco["annotations"]:
        name = next(i["file_name"] for i in coco["images"] if i["id"] == a["image_id"])
        by_file.setdefault(name, []).append(a["bbox"])
    # Box (5,5)-(15,15): whole in the first tile, exactly half in the tile starting at y=10 (kept, clipped).
    assert by_file["big_0_0.png"] == [[5.0, 5.0, 10.0, 10.0]]
    assert by_file["big_0_10.png"] == [[5.0, 0.0, 10.0, 5.0]]
    # Box (45,20)-(60,30): 1/3 in the left tiles (dropped), 2/3 in the right ones (kept, clipped).
    # Box (80,40)-(95,55): 2/3 in the top-right tile, whole in the bottom-right one.
    assert by_file["big_50_0.png"] == [[0.0, 20.0, 10.0, 10.0], [30.0, 40.0, 15.0, 10.0]]
    assert by_file["big_50_10.png"] == [[0.0, 10.0, 10.0, 10.0], [30.0, 30.0, 15.0, 15.0]]


@pytest.mark.slow
def test_detection_distributed_two_processes(coco_data, tmp_path):
    import os
    import subprocess
    import sys

    root, paths = coco_data
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29531",
           "-m", "patnet.cli", "detect", "train", "--ann", str(paths["train"]), "--images", str(root / "train"),
           "--val-ann", str(paths["val"]), "--val-images", str(root / "val"), "--epochs", "1", "--batch-size", "2",
           "--img-size", "64", "--workers", "0", "--output", str(out), "--no-progress", "--warmup-iters", "1"]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    metrics = json.loads((out / "coco_metrics.json").read_text())
    assert metrics["images"] == 4  # both ranks' shards gathered before scoring
    assert json.loads((out / "args.json").read_text())["world_size"] == 2
    assert sorted(p.name for p in out.iterdir() if p.name != ".patnet.lock") == ["args.json", "coco_metrics.json", "last.pth", "log.jsonl"]


def test_roi_batch_size_reaches_the_sampler():
    model = build_detector("patnet_t0", 3, task="masks", min_size=64, max_size=96, roi_batch_size=64)
    assert model.roi_heads.fg_bg_sampler.batch_size_per_image == 64
    assert build_detector("patnet_t0", 3, min_size=64).roi_heads.fg_bg_sampler.batch_size_per_image == 512


def _typed_coco(tmp_path, **changes):
    from PIL import Image

    img_dir = tmp_path / "imgs"
    img_dir.mkdir(exist_ok=True)
    Image.new("RGB", (32, 32)).save(img_dir / "a.png")
    coco = {"images": [{"id": 1, "file_name": "a.png", "width": 32, "height": 32}],
            "categories": [{"id": 1, "name": "x"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10], "iscrowd": 0,
                             "segmentation": [[2, 2, 12, 2, 12, 12]]}]}
    for where, value in changes.items():
        section, field = where.split("__")
        coco[section][0][field] = value
    (tmp_path / "a.json").write_text(json.dumps(coco))
    return tmp_path / "a.json", img_dir


@pytest.mark.parametrize("where,value,message", [
    ("categories__id", "one", "every category needs an integer 'id'"),
    ("images__id", [1], "every image needs an 'id'"),
    ("images__file_name", 7, "a 'file_name' string"),
    ("images__width", "32", "positive integer 'width' and 'height'"),
])
def test_coco_fields_of_the_wrong_type_are_one_line_errors(tmp_path, where, value, message):
    ann, img_dir = _typed_coco(tmp_path, **{where: value})
    with pytest.raises(ValueError, match=message):
        CocoDataset(ann, img_dir, masks=True)


@pytest.mark.parametrize("where,value,counter", [
    ("annotations__image_id", {"a": 1}, "orphan_annotations"),
    ("annotations__category_id", [1], "orphan_annotations"),
    ("annotations__iscrowd", "yes", "orphan_annotations"),
    ("annotations__bbox", [2, 2, "10", 10], "bad_boxes"),
    ("annotations__bbox", [2, 2, float("nan"), 10], "bad_boxes"),
    ("annotations__segmentation", [[2, 2, "x", 2, 12, 12]], "bad_masks"),
])
def test_coco_annotations_of_the_wrong_type_are_dropped_and_counted(tmp_path, where, value, counter):
    ann, img_dir = _typed_coco(tmp_path, **{where: value})
    ds = CocoDataset(ann, img_dir, masks=True)
    assert getattr(ds.stats, counter) == 1 and ds.anns[ds.ids[0]] == []
    ds[0]  # and the image still loads


def test_coco_area_of_the_wrong_type_is_recomputed(tmp_path):
    ann, img_dir = _typed_coco(tmp_path, annotations__area="big")
    ds = CocoDataset(ann, img_dir, masks=True)
    assert ds.anns[ds.ids[0]][0]["area"] == 100.0


def test_coco_annotations_per_image_are_bounded(tmp_path, monkeypatch):
    ann, img_dir = _typed_coco(tmp_path)
    coco = json.loads(ann.read_text())
    coco["annotations"] = [dict(coco["annotations"][0], id=i) for i in range(6)]
    ann.write_text(json.dumps(coco))
    monkeypatch.setattr("patnet.detection.data.MAX_ANNOTATIONS_PER_IMAGE", 5)
    with pytest.raises(ValueError, match="more than 5 annotations"):
        CocoDataset(ann, img_dir, masks=False)


@pytest.mark.slow
def test_resume_alone_finishes_a_run_killed_before_its_evaluation(coco_data, tmp_path, capsys):
    # A kill after the last epoch's checkpoint, before the COCO evaluation wrote coco_metrics.json: `--resume`
    # alone (no --ann / --images: they come from the checkpoint) runs what is missing and nothing else.
    root, paths = coco_data
    out = tmp_path / "run"
    assert main(["detect", "train", "--model", "patnet_t0", "--ann", str(paths["train"]), "--images",
                 str(root / "train"), "--val-ann", str(paths["val"]), "--val-images", str(root / "val"),
                 "--epochs", "1", "--batch-size", "2", "--img-size", "96", "--workers", "0", "--output", str(out),
                 "--no-progress", "--warmup-iters", "2", "--max-iters-per-epoch", "2"]) == 0
    first = json.loads((out / "coco_metrics.json").read_text())
    (out / "coco_metrics.json").unlink()
    log = (out / "log.jsonl").read_text()
    assert main(["detect", "train", "--resume", str(out / "last.pth"), "--workers", "0", "--no-progress"]) == 0
    assert json.loads((out / "coco_metrics.json").read_text())["boxes"] == first["boxes"]
    assert (out / "log.jsonl").read_text() == log  # no epoch trained again
    capsys.readouterr()
    assert main(["detect", "train", "--output", str(tmp_path / "new")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs --ann and --images" in err and not (tmp_path / "new").exists()
