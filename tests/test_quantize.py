"""int8: quantize + validate --onnx end to end; bad calibration input."""
import json

import numpy as np
import onnx
import pytest
import timm
import torch

import patnet
from patnet.cli import main
from patnet.quantize import QuantizeError, quantize_model

from conftest import make_idx_dataset, make_image_folder
from test_deploy import REL_TOL, _randomise_bn, _rel_err


@pytest.fixture(scope="module")
def idx_data(tmp_path_factory):
    return make_idx_dataset(tmp_path_factory.mktemp("idx"), n_train=48, n_val=24, classes=3)


def test_quantize_end_to_end_and_validate_onnx(tmp_path, idx_data, capsys):
    model = timm.create_model("patnet_t0", num_classes=3)
    torch.save({"model": model.state_dict()}, tmp_path / "ck.pth")
    out = tmp_path / "q.onnx"
    assert main(["quantize", "patnet_t0", str(out), "--checkpoint", str(tmp_path / "ck.pth"), "--calib",
                 str(idx_data), "--calib-images", "16", "--eval-images", "24", "--img-size", "32", "32",
                 "--max-drop", "100"]) == 0
    assert "top-1 agreement" in capsys.readouterr().out
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["calib_images"] == 16 and report["eval_images"] == 24
    assert report["quantized_nodes"]["quantized"] > 0 and report["quantized_nodes"]["QuantizeLinear"] > 0
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert main(["validate", "--onnx", str(out), "--data", str(idx_data)]) == 0
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.index("{"):])["count"] == 24
    # Evaluate the same file through the library and check its accuracy against a direct ORT run.
    from patnet.quantize import evaluate_onnx, image_batches, read_preprocess
    from patnet.export import ort_session

    metrics = evaluate_onnx(out, str(idx_data), show_progress=False)
    assert metrics["count"] == 24
    pre = read_preprocess(out)
    assert pre.img_size == (32, 32) and pre.model == "patnet_t0" and pre.num_classes == 3
    sess = ort_session(out)
    correct = sum(int((sess.run(None, {"input": x})[0].argmax(1) == y).sum())
                  for x, y in image_batches(str(idx_data), "val", pre, 100, seed=None))
    assert metrics["top1"] == pytest.approx(100 * correct / 24)


def test_int8_agrees_with_fp32_on_a_trained_model(tmp_path, idx_data):
    """A model that has learnt something keeps its decisions through int8 (the verification is meaningful)."""
    from patnet.train import TrainConfig, train

    cfg = TrainConfig(model="patnet_t0", data=str(idx_data), output=str(tmp_path / "run"), epochs=3, batch_size=8,
                      img_size=32, lr=2e-3, mixup=0, cutmix=0, auto_augment="none", workers=0, progress=False,
                      scale=(0.9, 1.0), crop_pct=1.0)
    train(cfg)
    from patnet.weights import create_from_checkpoint

    model = create_from_checkpoint("patnet_t0", tmp_path / "run" / "last.pth")
    report = quantize_model(model, tmp_path / "q.onnx", str(idx_data), "patnet_t0", (32, 32), crop_pct=1.0,
                            calib_images=16, eval_images=24, max_drop=100, show_progress=False)
    assert report.top1_fp32 is not None and report.top1_agreement >= 75


def test_quantize_refuses_beyond_max_drop(tmp_path, idx_data, monkeypatch):
    """When verification fails, no int8 file (and no report) is written."""
    import patnet.quantize as q

    real = q._top1
    calls = []

    def worse_int8(session, batches):  # the second call is the int8 file: make every answer wrong
        pred = real(session, batches)
        calls.append(1)
        return (np.concatenate([y for _, y in batches]) + 1) % 3 if len(calls) == 2 else pred

    monkeypatch.setattr(q, "_top1", worse_int8)
    model = timm.create_model("patnet_t0", num_classes=3)
    with pytest.raises(QuantizeError, match="more than --max-drop"):
        quantize_model(model, tmp_path / "q.onnx", str(idx_data), img_size=(32, 32), calib_images=8,
                       eval_images=24, show_progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--calib", "MISSING"], "does not exist"),
        (["--calib", "IDX", "--calib-images", "500"], "gave 48 readable training images"),
        (["--calib", "IDX", "--calib-images", "2"], "at least 8"),
        (["--calib", "IDX", "--method", "bogus"], "invalid choice"),
    ],
)
def test_quantize_bad_calibration_is_one_line(tmp_path, idx_data, capsys, extra, message):
    extra = [a.replace("MISSING", str(tmp_path / "nope")).replace("IDX", str(idx_data)) for a in extra]
    out = tmp_path / "q.onnx"
    argv = ["quantize", "patnet_t0", str(out), "--num-classes", "3", "--img-size", "32", "32", *extra]
    if message == "invalid choice":  # argparse's own usage error: exit status 2, usage line + error line
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2 and message in capsys.readouterr().err
    else:
        assert main(argv) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("patnet: error:")]
        assert len(errors) == 1 and message in errors[0]
    assert not out.exists()


def test_quantize_wrong_channel_count(tmp_path, idx_data):
    model = timm.create_model("patnet_t0", num_classes=3, in_chans=1)
    with pytest.raises(QuantizeError, match="1-channel input"):
        quantize_model(model, tmp_path / "q.onnx", str(idx_data), img_size=(32, 32), show_progress=False)


def test_quantize_fasternet_checkpoint_and_image_folder(tmp_path, capsys):
    """The baseline is quantized the same way, from a checkpoint of ours, on an image-folder dataset."""
    data = make_image_folder(tmp_path / "imgs", per_class=6, size=40)
    fn = timm.create_model("fasternet_t0", num_classes=2)
    torch.save({"model": fn.state_dict(), "epoch": 0}, tmp_path / "fn.pth")
    out = tmp_path / "fn.onnx"
    assert main(["quantize", "fasternet_t0", str(out), "--checkpoint", str(tmp_path / "fn.pth"), "--calib",
                 str(data), "--calib-images", "8", "--img-size", "32", "32", "--max-drop", "100"]) == 0
    assert out.is_file() and json.loads(out.with_suffix(".json").read_text())["model"] == "fasternet_t0"


def test_validate_onnx_checks_class_count(tmp_path, idx_data, capsys):
    from patnet.export import export_model

    out = tmp_path / "m.onnx"
    export_model(timm.create_model("patnet_t0", num_classes=5), out, img_size=(32, 32), dynamic_batch=True)
    assert main(["validate", "--onnx", str(out), "--data", str(idx_data)]) == 2
    assert "has 5 outputs" in capsys.readouterr().err
