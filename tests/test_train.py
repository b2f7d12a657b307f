"""Training and evaluation: datasets, a small run, exact resume, two-process DDP, and bad input."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import patnet.train as T
from patnet.cli import main
from patnet.data import IdxDataset, read_idx, resolve_dataset, write_idx
from patnet.train import TrainConfig, TrainingError, train, validate

from conftest import interrupt_at_epoch, make_idx_dataset, make_image_folder, small_run

FMNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture()
def idx_data(tmp_path):
    return make_idx_dataset(tmp_path / "idx")


def test_idx_raw_and_gz_roundtrip(tmp_path):
    arr = np.arange(2 * 5 * 4, dtype=np.uint8).reshape(2, 5, 4)
    for name in ("a-idx3-ubyte", "b-idx3-ubyte.gz"):
        write_idx(tmp_path / name, arr)
        assert np.array_equal(read_idx(tmp_path / name), arr)


def test_idx_truncated_and_bad_magic(tmp_path):
    write_idx(tmp_path / "x-idx3-ubyte", np.zeros((4, 3, 3), np.uint8))
    data = (tmp_path / "x-idx3-ubyte").read_bytes()
    (tmp_path / "t-idx3-ubyte").write_bytes(data[:-5])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "t-idx3-ubyte")
    (tmp_path / "m-idx3-ubyte").write_bytes(b"\x01\x02" + data[2:])
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "m-idx3-ubyte")


def test_idx_short_header_and_gzip_bomb_are_refused_before_inflating(tmp_path, monkeypatch):
    import gzip

    (tmp_path / "h-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03\x00\x00")  # 3 dims announced, 2 bytes of them
    with pytest.raises(ValueError, match="truncated inside its header"):
        read_idx(tmp_path / "h-idx3-ubyte")
    # A header claiming 4 x 3 x 3 bytes followed by 50 MB of zeros: read stops at the first byte too many.
    header = bytes([0, 0, 8, 3]) + (4).to_bytes(4, "big") + (3).to_bytes(4, "big") + (3).to_bytes(4, "big")
    with gzip.open(tmp_path / "b-idx3-ubyte.gz", "wb") as f:
        f.write(header + bytes(50 << 20))
    reads = []
    real_read = gzip.GzipFile.read
    monkeypatch.setattr(gzip.GzipFile, "read", lambda self, n=-1: reads.append(n) or real_read(self, n))
    with pytest.raises(ValueError, match="longer than its header says"):
        read_idx(tmp_path / "b-idx3-ubyte.gz")
    assert -1 not in reads and max(reads) == 4 * 3 * 3 + 1
    monkeypatch.setattr("patnet.data.MAX_IDX_BYTES", 10)
    with pytest.raises(ValueError, match="more than the 10 read at most"):
        read_idx(tmp_path / "b-idx3-ubyte.gz")


def test_idx_labels_must_be_one_per_image(tmp_path):
    root = make_idx_dataset(tmp_path / "idx", gz=False)
    write_idx(root / "train-labels-idx1-ubyte", np.zeros((96, 2), np.uint8))
    with pytest.raises(ValueError, match="labels are one number per image"):
        IdxDataset(root, "train")


@pytest.mark.skipif(not FMNIST.is_dir(), reason="Debian package dataset-fashion-mnist is not installed here")
def test_real_fashion_mnist_files():
    info = resolve_dataset("fashion-mnist")
    assert info.num_classes == 10 and info.classes[0] == "T-shirt/top"
    train, val = IdxDataset(info.root, "train"), IdxDataset(info.root, "val")
    assert len(train) == 60000 and len(val) == 10000
    img, label = train[0]
    assert img.mode == "RGB" and img.size == (28, 28) and 0 <= label < 10


def test_small_training_run_writes_everything(idx_data, tmp_path):
    out = tmp_path / "run"
    m = train(small_run(idx_data, out, epochs=3, img_size_schedule="0:32,2:40", model_ema=True))
    for key in ("top1", "top5", "loss", "epochs", "train_images_per_second"):
        assert key in m
    assert m["epochs"] == 3 and m["train_images_per_second"] > 0
    assert m["top1"] > 50  # three easy classes: well above chance (33%)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["top1"] == m["top1"]
    args = json.loads((out / "args.json").read_text())
    assert args["model"] == "patnet_t0" and args["resolved"]["lr"] == 2e-3
    log = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    assert [l["epoch"] for l in log] == [1, 2, 3] and [l["img_size"] for l in log] == [32, 32, 40]
    assert "top1_ema" in log[-1]
    assert (out / "last.pth").is_file() and (out / "best.pth").is_file()
    assert not list(out.glob(".*.tmp"))


def test_auto_recipe_fits_the_run_and_is_saved_resolved(tmp_path, caplog):
    from patnet.config import auto_recipe

    assert [auto_recipe(e) for e in (2, 49, 50, 300)] == ["short", "short", "paper", "paper"]
    data = make_idx_dataset(tmp_path / "idx", n_train=48, n_val=24)
    cfg = TrainConfig(model="patnet_t0", data=str(data), output=str(tmp_path / "run"), epochs=1, batch_size=16,
                      img_size=32, workers=0, progress=False)
    assert cfg.recipe == "auto"
    with caplog.at_level("INFO", logger="patnet"):
        train(cfg)
    assert "recipe: short (--recipe auto: 1 epochs, below the paper recipe's 50" in caplog.text
    saved = json.loads((tmp_path / "run" / "args.json").read_text())
    assert saved["recipe"] == "short" and saved["resolved"]["mixup"] == 0.0


def test_recipe_defaults():
    r = T._resolve(TrainConfig(model="patnet_t2", batch_size=256, epochs=300), T.recipe_for("patnet_t2"), world=1)
    assert r["lr"] == pytest.approx(0.001 * 256 / 1024) and r["weight_decay"] == 0.02
    assert r["mixup"] == 0.1 and r["cutmix"] == 1.0 and r["auto_augment"] == "rand-m5-mstd0.5"
    assert r["warmup_epochs"] == pytest.approx(20) and r["min_lr"] == 1e-5 and r["smoothing"] == 0.1
    assert T.recipe_for("fasternet_l")["clip_grad"] == 0.01 and T.recipe_for("patnet_t0")["auto_augment"] is None


def test_resume_is_exact(idx_data, tmp_path, monkeypatch):
    kw = dict(mixup=0.1, cutmix=1.0, auto_augment="rand-m3-mstd0.5", drop_path_rate=0.1, epochs=3)
    straight = train(small_run(idx_data, tmp_path / "a", **kw))
    with monkeypatch.context() as mp:
        interrupt_at_epoch(mp, 2)
        with pytest.raises(KeyboardInterrupt):
            train(small_run(idx_data, tmp_path / "b", **kw))
    assert torch.load(tmp_path / "b" / "last.pth", weights_only=False)["epoch"] == 1
    resumed = train(small_run(idx_data, tmp_path / "b", resume=str(tmp_path / "b" / "last.pth"), **kw))
    a = torch.load(tmp_path / "a" / "last.pth", weights_only=False)
    b = torch.load(tmp_path / "b" / "last.pth", weights_only=False)
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    for key in ("top1", "top5", "loss"):
        assert straight[key] == resumed[key]
    assert (tmp_path / "a" / "log.jsonl").read_text().count("\n") == (tmp_path / "b" / "log.jsonl").read_text().count("\n") == 3


def test_validate_ours_and_authors_layout(idx_data, tmp_path, capsys):
    out = tmp_path / "run"
    m = train(small_run(idx_data, out, epochs=1))
    ours = validate("patnet_t0", str(idx_data), out / "last.pth", img_size=32, crop_pct=1.0, workers=0)
    assert ours["top1"] == pytest.approx(m["top1"]) and ours["count"] == 48
    from patnet.weights import patnet_to_official

    sd = torch.load(out / "last.pth", weights_only=False)["model"]
    torch.save({"state_dict": patnet_to_official(sd)}, tmp_path / "official.pth")
    theirs = validate("patnet_t0", str(idx_data), tmp_path / "official.pth", img_size=32, crop_pct=1.0, workers=0)
    assert theirs["top1"] == pytest.approx(m["top1"]) and theirs["loss"] == pytest.approx(ours["loss"], rel=1e-5)
    assert main(["validate", "--model", "patnet_t1", "--data", str(idx_data), "--checkpoint",
                 str(tmp_path / "official.pth"), "--img-size", "32"]) == 2
    assert "does not fit patnet_t1" in capsys.readouterr().err


@pytest.mark.slow
def test_distributed_two_processes(idx_data, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
           "-m", "patnet.cli", "train", "--data", str(idx_data), "--output", str(out), "--epochs", "1",
           "--batch-size", "8", "--img-size", "32", "--workers", "0", "--mixup", "0", "--cutmix", "0",
           "--auto-augment", "none", "--no-progress", "--crop-pct", "1.0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["world_size"] == 2
    log = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
    assert log["val_images"] == 48  # each val image counted exactly once across the two ranks
    assert log["train_images"] == 96  # 2 ranks x 6 batches x 8
    assert sorted(p.name for p in out.iterdir() if p.name != ".patnet.lock") == ["args.json", "best.pth", "last.pth", "log.jsonl", "metrics.json"]


def test_corrupt_image_is_an_error_with_strict_data(tmp_path):
    root = make_image_folder(tmp_path / "imgs")
    (root / "train" / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="unreadable image .*broken.png"):
        train(small_run(root, tmp_path / "strict", epochs=1, batch_size=13, strict_data=True))


def test_corrupt_image_counted_when_sampled(tmp_path, caplog):
    root = make_image_folder(tmp_path / "imgs", per_class=2)
    (root / "train" / "a" / "broken.png").write_bytes(b"not a png")
    caplog.set_level("WARNING")
    train(small_run(root, tmp_path / "run", epochs=1, batch_size=5))  # one batch holds all 5 training files
    log = json.loads((tmp_path / "run" / "log.jsonl").read_text())
    assert log["skipped_images"] == 1
    assert "broken.png" in caplog.text


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("empty_class", "has no images"),
    ("not_dataset", "neither IDX files nor train/ and val/"),
])
def test_bad_dataset_is_a_clear_error(tmp_path, capsys, case, message):
    if case == "missing":
        data = tmp_path / "nope"
    elif case == "empty_class":
        data = make_image_folder(tmp_path / "imgs")
        (data / "train" / "c").mkdir()
    else:
        data = tmp_path / "plain"
        data.mkdir()
    assert main(["train", "--data", str(data), "--output", str(tmp_path / "o"), "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("patnet: error:") and message in err and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_resume_mismatch_and_truncated(idx_data, tmp_path, capsys):
    train(small_run(idx_data, tmp_path / "run", epochs=1))
    ckpt = tmp_path / "run" / "last.pth"
    assert main(["train", "--model", "fasternet_t0", "--data", str(idx_data), "--resume", str(ckpt),
                 "--img-size", "32"]) == 2
    assert "continues a run with other settings: --model fasternet_t0 (the run used patnet_t0)" in \
        capsys.readouterr().err
    assert main(["train", "--data", str(idx_data), "--resume", str(ckpt), "--output", str(tmp_path / "o")]) == 2
    assert "a resume continues the run in its checkpoint's folder" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    bad = tmp_path / "trunc.pth"
    bad.write_bytes(ckpt.read_bytes()[:1000])
    assert main(["train", "--data", str(idx_data), "--resume", str(bad), "--output", str(tmp_path / "o")]) == 2
    assert "truncated or not a checkpoint" in capsys.readouterr().err


def test_nan_loss_stops_and_keeps_last_good(idx_data, tmp_path, monkeypatch):
    from timm.loss import LabelSmoothingCrossEntropy

    real_seed, real_fwd = T.seed_everything, LabelSmoothingCrossEntropy.forward
    state = {"epoch": -2}  # the first call seeds the initial weights, then one per epoch

    def seed(s):
        state["epoch"] += 1
        real_seed(s)

    def fwd(self, x, target):
        loss = real_fwd(self, x, target)
        return loss * float("nan") if state["epoch"] == 1 else loss

    monkeypatch.setattr(T, "seed_everything", seed)
    monkeypatch.setattr(LabelSmoothingCrossEntropy, "forward", fwd)
    with pytest.raises(TrainingError, match=r"loss became nan in epoch 2 by step \d+; stopped. Last good checkpoint"):
        train(small_run(idx_data, tmp_path / "run", epochs=2))
    assert torch.load(tmp_path / "run" / "last.pth", weights_only=False)["epoch"] == 0


def test_loss_is_reduced_at_intervals_not_every_step(idx_data, tmp_path, monkeypatch):
    # A reduction is a device sync plus (distributed) a collective: 24 steps must not cost 24 of them.
    import patnet.runs as E

    calls = []
    real = E.all_sum

    def counting(values, d):
        calls.append(len(values))
        return real(values, d)

    monkeypatch.setattr(T, "all_sum", counting)  # the trainer's own reductions
    monkeypatch.setattr(E, "all_sum", counting)  # the loss meter's
    metrics = train(small_run(idx_data, tmp_path / "run", epochs=1, batch_size=4))
    assert len(calls) <= 6, calls  # 96 images / 4 = 24 steps
    assert math.isfinite(metrics["loss"])
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert 0 < log[0]["train_loss"] < 5


def test_val_split_holds_out_part_of_the_training_set(idx_data, tmp_path, monkeypatch):
    from patnet.data import IdxDataset, holdout_indices

    labels = [i % 3 for i in range(96)]
    train_idx, held = holdout_indices(labels, 0.25)
    assert holdout_indices(labels, 0.25) == (train_idx, held)  # fixed, whatever the run's seed
    assert not set(train_idx) & set(held) and len(train_idx) + len(held) == 96
    assert [sum(labels[i] == c for i in held) for c in range(3)] == [8, 8, 8]  # stratified
    with pytest.raises(ValueError, match="--val-split must be a fraction"):
        holdout_indices(labels, 1.0)
    pairs = [(i % 2, "ab"[i % 3 == 0]) for i in range(96)]  # any sortable strata, e.g. (level, kind)
    _, held_pairs = holdout_indices(pairs, 0.25)
    assert sorted(sum(pairs[i] == key for i in held_pairs) for key in set(pairs)) == [4, 4, 8, 8]

    # The test split is never read: every image the run evaluates comes from the training files.
    read = []
    real_getitem = IdxDataset.__getitem__

    def spy(self, i):
        read.append((self.images.shape[0], i))
        return real_getitem(self, i)

    monkeypatch.setattr(IdxDataset, "__getitem__", spy)
    train(small_run(idx_data, tmp_path / "run", epochs=1, val_split=0.25))
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log[0]["val_images"] == 24
    assert {n for n, _ in read} == {96}  # only the 96-image training file, never the 48-image test file
    assert main(["train", "--data", str(idx_data), "--val-split", "0", "--output", str(tmp_path / "o")]) == 2


def test_yaml_config_sets_defaults(idx_data, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {idx_data}\nepochs: 1\nbatch-size: 16\nimg_size: 32\nworkers: 0\nmixup: 0\ncutmix: 0\n")
    assert main(["train", "--config", str(cfg), "--output", str(tmp_path / "o"), "--no-progress"]) == 0
    assert json.loads((tmp_path / "o" / "args.json").read_text())["batch_size"] == 16
    cfg.write_text("epoch: 1\n")
    assert main(["train", "--config", str(cfg)]) == 2


def test_randaugment_survives_zero_bit_posterize():
    """timm maps low Posterize magnitudes to 0 bits, which Pillow >= 12 rejects; our transform must not crash."""
    from PIL import Image
    from timm.data.auto_augment import AugmentOp

    from patnet.data import build_transform

    build_transform(32, True, "rand-m3-mstd0.5")
    op = AugmentOp("Posterize", prob=1.0, magnitude=0)  # level 0 -> 0 bits kept
    img = Image.new("RGB", (8, 8), (200, 100, 50))
    out = op(img)
    assert out.size == (8, 8) and out.getextrema() == ((0, 0), (0, 0), (0, 0))


def test_bf16_autocast_and_channels_last_on_cpu(idx_data, tmp_path):
    m = train(small_run(idx_data, tmp_path / "amp", epochs=2, amp="bf16", channels_last=True))
    ref = train(small_run(idx_data, tmp_path / "fp32", epochs=2))
    # Same seed and data order: bf16 rounding moves the result a little, never far (3 classes, 48 val images:
    # one image is 2.1 points; 5 images allowed).
    assert abs(m["top1"] - ref["top1"]) <= 11 and abs(m["loss"] - ref["loss"]) < 0.1 * ref["loss"] + 0.02
    assert m["loss"] != ref["loss"]  # bf16 really ran: identical to the last bit would mean autocast was ignored
    assert json.loads((tmp_path / "amp" / "args.json").read_text())["amp"] == "bf16"
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        train(small_run(idx_data, tmp_path / "fp16", epochs=1, amp="fp16"))


def test_short_recipe_resolves():
    r = T._resolve(TrainConfig(recipe="short", batch_size=128, epochs=2), T.recipe_for("patnet_t2", "short"), world=1)
    assert r["lr"] == pytest.approx(2e-3) and r["mixup"] == r["cutmix"] == 0 and r["auto_augment"] is None
    assert r["warmup_epochs"] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="unknown recipe"):
        T.recipe_for("patnet_t0", "long")


def test_run_checkpoints_load_through_timm(idx_data, tmp_path):
    # timm's own loaders read our best.pth / last.pth (timm.models.load_checkpoint unwraps the 'model' entry), and
    # give the same model as patnet's strict loader.
    import timm

    from patnet.weights import create_from_checkpoint

    train(small_run(idx_data, tmp_path / "run", epochs=1, max_train_batches=2))
    x = torch.randn(2, 3, 32, 32)
    for name in ("best.pth", "last.pth"):
        ckpt = tmp_path / "run" / name
        ours = create_from_checkpoint("patnet_t0", ckpt).eval()
        via_create = timm.create_model("patnet_t0", num_classes=3, checkpoint_path=str(ckpt)).eval()
        via_load = timm.create_model("patnet_t0", num_classes=3).eval()
        timm.models.load_checkpoint(via_load, str(ckpt), strict=True)
        with torch.no_grad():
            expected = ours(x)
            assert not torch.equal(expected, timm.create_model("patnet_t0", num_classes=3).eval()(x))
            assert torch.equal(via_create(x), expected) and torch.equal(via_load(x), expected)
