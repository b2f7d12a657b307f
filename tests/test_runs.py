"""The shared run folder (patnet.runs): lock, no silent replacement, best-before-last, finite checks, resume semantics."""
import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch

import patnet
from patnet.cli import main
from patnet.runs import NonFiniteError, RunFolder, RunFolderError, json_safe
from patnet.train import TrainConfig, train

from conftest import make_idx_dataset
from conftest import interrupt_at_epoch, small_run


@pytest.fixture()
def idx_data(tmp_path):
    return make_idx_dataset(tmp_path / "idx", n_train=48, n_val=24)


def test_second_run_on_a_folder_is_refused_naming_the_holder(tmp_path):
    with RunFolder(tmp_path / "run"):
        with pytest.raises(RunFolderError, match=r"in use by pid \d+ on .* \(started"):
            with RunFolder(tmp_path / "run"):
                pass
    with RunFolder(tmp_path / "run"):  # released with the first run
        pass


def test_second_training_run_is_refused_by_the_cli(idx_data, tmp_path, capsys):
    out = tmp_path / "run"
    with RunFolder(out):  # another run holds the folder
        assert main(["train", "--data", str(idx_data), "--output", str(out), "--epochs", "1", "--img-size", "32",
                     "--batch-size", "16", "--workers", "0", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("patnet: error: output folder") and "in use by pid" in err and "\n" not in err
    assert not (out / "args.json").exists()


def test_finished_folder_needs_resume_or_overwrite(idx_data, tmp_path):
    train(small_run(idx_data, tmp_path / "run", epochs=1))
    before = (tmp_path / "run" / "last.pth").read_bytes()
    with pytest.raises(RunFolderError, match="already holds a run.*--resume.*--overwrite"):
        train(small_run(idx_data, tmp_path / "run", epochs=1, seed=7))
    assert (tmp_path / "run" / "last.pth").read_bytes() == before  # nothing of the refused run was written
    res = train(small_run(idx_data, tmp_path / "run", epochs=1, seed=7, overwrite=True))
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["seed"] == 7 == res["seed"]


def test_stale_temporaries_are_removed(tmp_path):
    # What a killed run left of its checkpoint goes when the next run takes the folder; a live writer's is kept.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run = tmp_path / "run"
    run.mkdir()
    stale = run / f".last.pth.{dead.pid}-x1y2.tmp"
    live = run / f".best.pth.{os.getppid()}-x1y2.tmp"
    stale.write_bytes(b"half a checkpoint")
    live.write_bytes(b"being written")
    (run / "keep.tmp").write_text("not ours")
    with RunFolder(run):
        pass
    assert not stale.exists() and live.exists() and (run / "keep.tmp").exists()


def test_non_finite_weights_or_metrics_are_never_written(tmp_path):
    state = {"model": {"w": torch.tensor([1.0, float("nan")]), "steps": torch.tensor([3])}}
    with RunFolder(tmp_path / "run") as folder:
        with pytest.raises(NonFiniteError, match=r"1 weight tensors \(w\).*epoch 1.*No checkpoint"):
            folder.save_epoch(state, True, [{"epoch": 1, "loss": 0.5}])
        with pytest.raises(NonFiniteError, match=r"metrics \['loss'\]"):
            folder.save_epoch({"model": {"w": torch.ones(2)}}, True, [{"epoch": 1, "loss": math.inf}])
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".patnet.lock"]


def test_metrics_json_is_strict_json():
    assert json.dumps(json_safe({"a": float("nan"), "b": [1.0, float("inf")], "c": 2}), allow_nan=False) == \
        '{"a": null, "b": [1.0, null], "c": 2}'


def test_diverged_training_stops_before_writing(idx_data, tmp_path):
    """A learning rate that blows the weights up ends the run with one message; no NaN checkpoint or JSON."""
    with pytest.raises(NonFiniteError, match="NaN/inf at epoch 1|loss became"):
        train(small_run(idx_data, tmp_path / "run", epochs=2, lr=1e30))
    assert not (tmp_path / "run" / "last.pth").exists() and not (tmp_path / "run" / "metrics.json").exists()


def test_best_is_written_before_last(idx_data, tmp_path, monkeypatch):
    """A kill between the two writes leaves last.pth one epoch behind; resuming rewrites best.pth consistently."""
    order = []
    real = RunFolder._save

    def save(path, state):
        order.append(path.name)
        if order.count("last.pth") == 2:  # killed while writing epoch 2's last.pth (after its best.pth, if any)
            raise KeyboardInterrupt
        real(path, state)

    monkeypatch.setattr(RunFolder, "_save", staticmethod(save))
    base = dict(epochs=3, lr=5e-3)
    with pytest.raises(KeyboardInterrupt):
        train(small_run(idx_data, tmp_path / "run", **base))
    assert order[:2] == ["best.pth", "last.pth"]
    monkeypatch.setattr(RunFolder, "_save", staticmethod(real))
    train(small_run(idx_data, tmp_path / "run", resume=str(tmp_path / "run" / "last.pth"), **base))
    last = torch.load(tmp_path / "run" / "last.pth", weights_only=False)
    best = torch.load(tmp_path / "run" / "best.pth", weights_only=False)
    assert best["epoch"] + 1 == last["best"]["epoch"]  # best.pth is the epoch that last.pth calls best
    assert [h["epoch"] for h in last["history"]] == [1, 2, 3]


def test_resume_restores_the_runs_own_arguments(idx_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    with monkeypatch.context() as mp:
        interrupt_at_epoch(mp, 1)
        with pytest.raises(KeyboardInterrupt):
            train(small_run(idx_data, out, epochs=2, lr=3e-3, seed=5))
    # --resume alone: the model, data, schedule and output folder come from the checkpoint.
    res = train(TrainConfig(resume=str(out / "last.pth"), workers=0, progress=False))
    assert res["epochs"] == 2 and res["seed"] == 5 and res["img_size"] == 32
    assert (out / "log.jsonl").read_text().count("\n") == 2
    assert not (tmp_path.parent / "outputs").exists()
    # A contradicting argument is refused, naming it.
    with pytest.raises(ValueError, match=r"--lr 0.1 \(the run used 0.003\)"):
        train(TrainConfig(resume=str(out / "last.pth"), lr=0.1, workers=0, progress=False))


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--auto-augment", "bogus"], "not a timm RandAugment string"),
    (["--scale", "0.5", "2"], "--scale must be"),
    (["--crop-pct", "0"], "--crop-pct must be"),
])
def test_bad_training_arguments_are_one_line(idx_data, tmp_path, capsys, argv, message):
    assert main(["train", "--data", str(idx_data), "--output", str(tmp_path / "o"), "--img-size", "32",
                 "--workers", "0", "--no-progress", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("patnet: error:") and message in err and "\n" not in err


def test_detection_resume_keeps_history(tmp_path, monkeypatch):
    from patnet.detection.sources import make_fashion_mnist_detection

    idx = make_idx_dataset(tmp_path / "idx", n_train=20, n_val=10)
    paths = make_fashion_mnist_detection(tmp_path / "coco", source=str(idx), n_train=4, n_val=2, canvas=64, seed=1)
    out = tmp_path / "det"
    argv = ["detect", "train", "--ann", str(paths["train"]), "--images", str(tmp_path / "coco" / "train"),
            "--img-size", "64", "--batch-size", "2", "--max-iters-per-epoch", "1", "--epochs", "2", "--workers", "0",
            "--output", str(out), "--no-progress", "--task", "boxes", "--roi-batch-size", "16"]
    real = RunFolder.save_epoch
    calls = []

    def save_then_die(self, *a, **k):
        real(self, *a, **k)
        calls.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(RunFolder, "save_epoch", save_then_die)
    assert main(argv) == 130  # the command reports the interrupt
    monkeypatch.setattr(RunFolder, "save_epoch", real)
    assert main(["detect", "train", "--ann", str(paths["train"]), "--images", str(tmp_path / "coco" / "train"),
                 "--resume", str(out / "last.pth"), "--workers", "0", "--no-progress"]) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in log] == [1, 2]


def test_border_boxes_are_clamped_and_counted_and_paths_stay_inside(tmp_path):
    from PIL import Image

    from patnet.detection.data import CocoDataset, detection_transform

    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (40, 30)).save(images / "a.png")
    Image.new("RGB", (40, 30)).save(tmp_path / "outside.png")
    ann = {"images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30},
                      {"id": 2, "file_name": "../outside.png", "width": 40, "height": 30}],
           "categories": [{"id": 1, "name": "x"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [-0.5, 2, 10, 10], "area": 100,
                            "iscrowd": 0},
                           {"id": 2, "image_id": 1, "category_id": 1, "bbox": [30, 20, 15, 15], "area": 225,
                            "iscrowd": 0},
                           {"id": 3, "image_id": 2, "category_id": 1, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0}]}
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    ds = CocoDataset(tmp_path / "ann.json", images, False, detection_transform(False))
    assert ds.stats.clamped_boxes == 2 and ds.stats.unsafe_paths == 1 and len(ds) == 1
    _, target = ds[0]
    assert target["boxes"].tolist() == [[0.0, 2.0, 9.5, 12.0], [30.0, 20.0, 40.0, 30.0]]


def test_idx_label_problems_fail_before_training(tmp_path, capsys):
    import numpy as np

    from patnet.data import read_idx, write_idx

    data = make_idx_dataset(tmp_path / "a", n_train=48, n_val=24)
    val = read_idx(data / "t10k-labels-idx1-ubyte.gz").copy()
    val[0] = 7  # three training classes
    write_idx(data / "t10k-labels-idx1-ubyte.gz", val.astype(np.uint8))
    assert main(["train", "--data", str(data), "--output", str(tmp_path / "o"), "--img-size", "32",
                 "--workers", "0", "--no-progress"]) == 2
    assert "validation label 7 is outside the 3 training classes" in capsys.readouterr().err
    data = make_idx_dataset(tmp_path / "b", n_train=48, n_val=24)
    train_labels = read_idx(data / "train-labels-idx1-ubyte.gz").copy()
    train_labels[0] = 200
    write_idx(data / "train-labels-idx1-ubyte.gz", train_labels.astype(np.uint8))
    assert main(["train", "--data", str(data), "--output", str(tmp_path / "o"), "--img-size", "32"]) == 2
    assert "training labels must be 0..K-1" in capsys.readouterr().err
    data = make_idx_dataset(tmp_path / "c", n_train=48, n_val=24)
    write_idx(data / "train-labels-idx1-ubyte.gz", np.zeros((48, 2), dtype=np.uint8))  # once judged by its values
    assert main(["train", "--data", str(data), "--output", str(tmp_path / "o"), "--img-size", "32"]) == 2
    assert "holds a (48, 2) array; IDX labels are one number per image" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_hostile_coco_trains_and_scores(tmp_path):
    """String ids, a missing bbox, a 2-point polygon and a corrupt image: skipped and counted, never a crash."""
    from PIL import Image

    from patnet.detection.data import CocoDataset, collate, detection_transform
    from patnet.detection.engine import DetectConfig, evaluate_detector, train_detector

    images = tmp_path / "images"
    images.mkdir()
    rng = __import__("numpy").random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype="uint8")).save(images / f"{i}.png")
    (images / "bad.png").write_bytes(b"not a png")
    square = [10, 10, 40, 10, 40, 40, 10, 40]
    ann = {"images": [{"id": f"img{i}", "file_name": f"{i}.png", "width": 64, "height": 64} for i in range(4)]
           + [{"id": "broken", "file_name": "bad.png", "width": 64, "height": 64}],
           "categories": [{"id": 3, "name": "thing"}],
           "annotations": [{"id": i, "image_id": f"img{i}", "category_id": 3, "bbox": [10, 10, 30, 30],
                            "segmentation": [square], "iscrowd": 0} for i in range(4)]
           + [{"id": 10, "image_id": "img0", "category_id": 3, "segmentation": [square]},  # no bbox
              {"id": 11, "image_id": "img1", "category_id": 3, "bbox": [1, 1, 5, 5], "segmentation": [[1, 1, 5, 5]]},
              {"id": 12, "image_id": "broken", "category_id": 3, "bbox": [1, 1, 5, 5], "segmentation": [square]},
              {"id": 13, "image_id": "nowhere", "category_id": 3, "bbox": [1, 1, 5, 5]}]}
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    ds = CocoDataset(tmp_path / "ann.json", images, True, detection_transform(False))
    assert ds.stats.bad_boxes == 1 and ds.stats.bad_masks == 1 and ds.stats.orphan_annotations == 1
    assert len(ds) == 5 and ds[4] is None and collate([ds[0], ds[4]])[0].__len__() == 1
    cfg = DetectConfig(model="patnet_t0", ann=str(tmp_path / "ann.json"), images=str(images), task="masks",
                       epochs=1, batch_size=2, img_size=64, workers=0, output=str(tmp_path / "run"), progress=False,
                       roi_batch_size=16, warmup_iters=1)
    train_detector(cfg)
    from patnet.detection.engine import load_detector

    metrics = evaluate_detector(load_detector(tmp_path / "run" / "last.pth"), ds, workers=0)
    assert metrics["images"] == 5 and set(metrics["masks"]) >= {"AP", "AP50"}


def test_duplicate_coco_image_ids_are_an_error(tmp_path):
    from patnet.detection.data import CocoDataset

    (tmp_path / "i").mkdir()
    ann = {"images": [{"id": 1, "file_name": "a.png"}, {"id": 1, "file_name": "b.png"}],
           "categories": [{"id": 1, "name": "x"}], "annotations": []}
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    with pytest.raises(ValueError, match="image id 1 appears more than once"):
        CocoDataset(tmp_path / "ann.json", tmp_path / "i")


def test_sixteen_bit_and_float_images_keep_their_range(tmp_path):
    import numpy as np
    from PIL import Image

    from patnet.data import open_rgb

    ramp16 = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 4369)  # 0 .. 65535
    Image.fromarray(ramp16).save(tmp_path / "a.png")  # uint16 -> mode I;16
    out = np.asarray(open_rgb(tmp_path / "a.png"))[..., 0]
    assert out.min() == 0 and out.max() == 255 and len(np.unique(out)) == 16  # not saturated to white
    flt = Image.fromarray(np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4))  # float32 -> mode F
    flt.save(tmp_path / "f.tiff")
    out = np.asarray(open_rgb(tmp_path / "f.tiff"))[..., 0]
    assert out.min() == 0 and out.max() == 255 and len(np.unique(out)) == 16
    with pytest.raises(ValueError, match="more than the 10 pixels"):
        open_rgb(tmp_path / "a.png", max_pixels=10)


@pytest.mark.timeout(60)
def test_non_regular_files_with_image_names_are_skipped_not_read(tmp_path, caplog):
    """A FIFO named x.png once hung training forever (the read never ends); it is left out of the folder's samples,
    a folder holding nothing else has no images, and open_rgb refuses it at once instead of blocking."""
    from conftest import make_image_folder
    from patnet.data import ImageFolderDataset, open_rgb, resolve_dataset

    root = make_image_folder(tmp_path / "imgs", per_class=2)
    os.mkfifo(root / "train" / "a" / "x.png")
    info = resolve_dataset(str(root))
    ds = ImageFolderDataset(root / "train", info.classes)
    assert len(ds) == 4 and not any(path.endswith("x.png") for path, _ in ds.samples)
    assert "1 entries of" in caplog.text and "not regular files" in caplog.text
    with pytest.raises(OSError, match="not a regular file"):
        open_rgb(root / "train" / "a" / "x.png")
    for f in (root / "val" / "b").iterdir():
        f.unlink()
    os.mkfifo(root / "val" / "b" / "y.png")
    with pytest.raises(ValueError, match="has no images"):
        resolve_dataset(str(root))


@pytest.mark.parametrize("content, message", [("a: [1, 2", "not valid YAML"), ("- 1\n- 2\n", "must map flag names")])
def test_bad_yaml_config_is_one_line(tmp_path, capsys, content, message):
    (tmp_path / "c.yaml").write_text(content)
    assert main(["train", "--config", str(tmp_path / "c.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_export_num_classes_zero_is_honoured(tmp_path):
    import onnx

    assert main(["export", "patnet_t0", str(tmp_path / "m.onnx"), "--num-classes", "0", "--img-size", "32", "32"]) == 0
    out = onnx.load(str(tmp_path / "m.onnx")).graph.output[0]
    assert out.type.tensor_type.shape.dim[1].dim_value == 1280  # pre-logits features, not 1000 classes


def test_zero_evaluated_images_is_an_error():
    from patnet.runs import _Dist
    from patnet.train import evaluate

    empty = [(torch.empty(0, 3, 32, 32), torch.empty(0, dtype=torch.long), 4)]  # one batch, every image skipped
    with pytest.raises(ValueError, match="no readable validation images"):
        evaluate(torch.nn.Identity(), empty, _Dist())


def test_stored_architecture_is_checked_before_building(tmp_path, capsys):
    import json as _json

    import timm
    from safetensors.torch import save_file

    from patnet.weights import save_pretrained

    def folder(name, config, tensors):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(config)
        save_file(tensors, str(tmp_path / name / "model.safetensors"))

    folder("bad", "{oops", {"a": torch.zeros(1)})
    folder("huge", _json.dumps({"architecture": "patnet_t0", "model_args": {"embed_dim": 10 ** 7,
                                                                             "depths": [1, 1, 1, 1]}}),
           {"a": torch.zeros(1)})
    folder("alien", _json.dumps({"architecture": "resnet50", "model_args": {}}), {"a": torch.zeros(1)})
    save_pretrained(timm.create_model("patnet_t0", num_classes=3), tmp_path / "wrong")
    cfg = _json.loads((tmp_path / "wrong" / "config.json").read_text())
    cfg["model_args"]["depths"] = [1, 2, 8, 3]
    (tmp_path / "wrong" / "config.json").write_text(_json.dumps(cfg))
    for name, message in [("bad", "is not valid JSON"), ("huge", "does not hold PATNet weights"),
                          ("alien", "does not describe a PATNet"),
                          ("wrong", "depths=[1, 2, 8, 3] (the weights say [1, 2, 8, 2])")]:
        assert main(["convert", str(tmp_path / name), str(tmp_path / "o.pth"), "--to", "official"]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, name
        with pytest.raises(ValueError, match=re.escape(message)):
            patnet.load_model(tmp_path / name)
    assert not (tmp_path / "o.pth").exists()


def test_malformed_deepforest_xml_is_skipped(tmp_path):
    from PIL import Image

    from patnet.detection.sources import deepforest_to_coco

    data = tmp_path / "data"
    data.mkdir()
    for name in ("good", "bad"):
        Image.new("RGB", (40, 30)).save(data / f"{name}.png")
    (data / "good.xml").write_text("<annotation><filename>good.png</filename><object><name>Tree</name><bndbox>"
                                   "<xmin>1</xmin><ymin>2</ymin><xmax>11</xmax><ymax>22</ymax></bndbox></object>"
                                   "</annotation>")
    (data / "bad.xml").write_text("<annotation><filename>bad.png</filename><object>")  # cut off
    coco = json.loads(deepforest_to_coco(data, tmp_path / "out").read_text())
    assert [i["file_name"] for i in coco["images"]] == ["good.png"]


def test_predict_refuses_an_oversized_image(tmp_path, monkeypatch):
    from PIL import Image

    import patnet.data
    from patnet.detection.engine import predict_image

    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(patnet.data, "MAX_IMAGE_PIXELS", 1000)  # stands in for a decompression bomb
    with pytest.raises(ValueError, match="more than the 1,000 pixels"):
        predict_image(torch.nn.Identity(), tmp_path / "big.png", tmp_path / "p.png")
    assert not (tmp_path / "p.png").exists()


def test_full_disk_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    with RunFolder(tmp_path / "run") as folder:
        folder.save_epoch({"model": {"w": torch.ones(2)}}, True, [{"epoch": 1, "loss": 0.5}])
        before = (tmp_path / "run" / "last.pth").read_bytes()

        def full(*a, **k):
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 4480 vs 4374")

        monkeypatch.setattr(torch, "save", full)
        with pytest.raises(OSError, match="is the disk full"):
            folder.save_epoch({"model": {"w": torch.zeros(2)}}, True, [{"epoch": 2, "loss": 0.4}])
    assert (tmp_path / "run" / "last.pth").read_bytes() == before
    assert not list((tmp_path / "run").glob(".*.tmp"))
