"""int8: quantize + validate --onnx end to end; bad calibration input."""
import hashlib
import json

import numpy as np
import onnx
import pytest
import timm
import torch

import patnet
from patnet.cli import main
from patnet.deploy import QuantizeError, quantize_model

from conftest import make_idx_dataset, make_image_folder


@pytest.fixture(scope="module")
def idx_data(tmp_path_factory):
    return make_idx_dataset(tmp_path_factory.mktemp("idx"), n_train=48, n_val=24, classes=3)


# 24 held-out images: one image is 4.2 points, so 10 points allow two flipped decisions of a trained model and
# still fail a broken quantization (the refusal itself is tested below with every answer made wrong).
MAX_DROP = "10"


@pytest.fixture(scope="module")
def trained_ckpt(tmp_path_factory, idx_data):
    """A patnet_t0 that has learnt the toy task, so int8 verification means something."""
    from patnet.train import TrainConfig, train

    out = tmp_path_factory.mktemp("run")
    train(TrainConfig(model="patnet_t0", data=str(idx_data), output=str(out), epochs=3, batch_size=8, img_size=32,
                      lr=2e-3, mixup=0, cutmix=0, auto_augment="none", workers=0, progress=False, crop_pct=1.0,
                      scale=(0.9, 1.0)))
    return out / "last.pth"


def _quantize_trained(out, runtime, ckpt, data):
    """``patnet quantize`` of the trained toy model for ``runtime``: 16 calibration and 24 held-out images."""
    return ["quantize", "patnet_t0", str(out), "--runtime", runtime, "--checkpoint", str(ckpt), "--calib", str(data),
            "--calib-images", "16", "--eval-images", "24", "--img-size", "32", "32", "--crop-pct", "1.0",
            "--max-drop", MAX_DROP]


def test_quantize_end_to_end_and_validate_onnx(tmp_path, idx_data, trained_ckpt, capsys):
    out = tmp_path / "q.onnx"
    assert main(_quantize_trained(out, "onnxruntime", trained_ckpt, idx_data)) == 0
    assert "(int8 QDQ ONNX, 32x32" in capsys.readouterr().out
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["calib_images"] == 16 and report["eval_images"] == 24 and report["runtime"] == "onnxruntime"
    assert report["quantized_nodes"]["quantized"] > 0 and report["quantized_nodes"]["QuantizeLinear"] > 0
    assert report["sha256"] == {"q.onnx": hashlib.sha256(out.read_bytes()).hexdigest()}  # the file it describes
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert main(["validate", "--onnx", str(out), "--data", str(idx_data)]) == 0
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.index("{"):])["count"] == 24
    # Evaluate the same file through the library and check its accuracy against a direct ORT run.
    from patnet.deploy import evaluate_file, ort_session, read_preprocess
    from patnet.deploy.runtime import image_batches

    metrics = evaluate_file(out, str(idx_data), show_progress=False)
    assert metrics["count"] == 24 and metrics["top1"] == pytest.approx(report["top1_int8"])
    pre = read_preprocess(out)
    assert pre.img_size == (32, 32) and pre.model == "patnet_t0" and pre.num_classes == 3
    sess = ort_session(out)
    correct = sum(int((sess.run(None, {"input": x})[0].argmax(1) == y).sum())
                  for x, y in image_batches(str(idx_data), "val", pre, 100, seed=None))
    assert metrics["top1"] == pytest.approx(100 * correct / 24)


def test_quantize_openvino_ir_end_to_end_and_validate(tmp_path, idx_data, trained_ckpt, capsys):
    import openvino as ov

    out = tmp_path / "q.xml"
    assert main(_quantize_trained(out, "openvino", trained_ckpt, idx_data)) == 0
    assert "OpenVINO IR" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.bin", "q.json", "q.xml"]
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["runtime"] == "openvino" and report["method"] == "nncf" and report["top1_int8"] is not None
    assert report["quantized_nodes"]["FakeQuantize"] > 10  # NNCF quantized the convolutions
    assert report["sha256"] == {f: hashlib.sha256((tmp_path / f).read_bytes()).hexdigest() for f in ("q.bin", "q.xml")}
    types = {op.get_type_name() for op in ov.Core().read_model(str(out)).get_ops()}
    assert "FakeQuantize" in types
    assert main(["validate", "--onnx", str(out), "--data", str(idx_data)]) == 0
    printed = capsys.readouterr().out
    res = json.loads(printed[printed.index("{"):])
    assert res["runtime"] == "openvino" and res["count"] == 24 and res["top1"] == pytest.approx(report["top1_int8"])


@pytest.fixture(scope="module")
def tiny_trained(idx_data):
    """A one-block-per-stage PATNet (every block kind: PAT_ch, merges, PAT_sf) that has learnt the toy task.

    ExecuTorch's lowering time grows with the graph: patnet_t0 took 77 s of this file, this model about a third.
    """
    from patnet.deploy.runtime import Preprocess, image_batches

    torch.manual_seed(0)
    model = patnet.PATNet(embed_dim=16, depths=(1, 1, 1, 1), num_classes=3, feature_dim=64)
    pre = Preprocess.for_model(model, "tiny", (32, 32), 1.0)
    batches = list(image_batches(str(idx_data), "train", pre, 48, batch_size=16, seed=0))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(15):
        for x, y in batches:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y).long()).backward()
            opt.step()
    return model.eval(), pre


@pytest.mark.slow
def test_quantize_executorch_program_end_to_end(tmp_path, idx_data, tiny_trained):
    """XNNPACK int8 through ExecuTorch's quantizer: a .pte and its report, verified against the fp32 program."""
    from patnet.deploy.runtime import ModelRunner, image_batches

    model, pre = tiny_trained
    out = tmp_path / "q.pte"
    report = quantize_model(model, out, str(idx_data), name="tiny", img_size=(32, 32), crop_pct=1.0,
                            calib_images=16, eval_images=24, max_drop=float(MAX_DROP), show_progress=False,
                            runtime="executorch")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.json", "q.pte"]
    assert json.loads(out.with_suffix(".json").read_text())["sha256"] == {
        "q.pte": hashlib.sha256(out.read_bytes()).hexdigest()}
    assert report.runtime == "executorch" and report.method == "pt2e" and report.eval_images == 24
    assert report.top1_fp32 >= 90  # the model learnt the task, so agreement and drop mean something
    assert report.quantized_nodes["quantized"] > 10  # the quantizer reached the convolutions
    assert report.fp32_export_rel_error <= 1e-4  # the fp32 program was verified against PyTorch
    # The written program, run again here, scores what the report says, and is not the fp32 model.
    batches = list(image_batches(str(idx_data), "val", pre, 24, batch_size=8, seed=None))
    program = ModelRunner(out)
    assert program.runtime == "executorch" and program.batch == 1
    logits = np.concatenate([program(x) for x, _ in batches])
    labels = np.concatenate([y for _, y in batches])
    assert 100 * float((logits.argmax(1) == labels).mean()) == pytest.approx(report.top1_int8)
    with torch.no_grad():
        ref = torch.cat([model(torch.from_numpy(x)) for x, _ in batches]).numpy()
    err = float(np.abs(logits - ref).max() / np.abs(ref).max())
    assert 1e-5 < err < 0.5, err  # int8 rounding shows, but the logits are the model's


def test_quantize_command_names_what_it_wrote_for_each_runtime(tmp_path, monkeypatch, capsys):
    """The summary line names the file's kind (an ExecuTorch program was once announced as QDQ ONNX)."""
    from patnet import cli
    from patnet.deploy import QuantizeReport

    kinds = {"onnxruntime": ("q.onnx", "int8 QDQ ONNX"), "openvino": ("q.xml", "int8 OpenVINO IR (NNCF)"),
             "executorch": ("q.pte", "int8 ExecuTorch program (XNNPACK)")}
    for runtime, (name, kind) in kinds.items():
        out = tmp_path / name
        monkeypatch.setattr(cli, "quantize_model", lambda *a, runtime=runtime, out=out, **k: QuantizeReport(
            str(out), "patnet_t0", runtime, "m", (32, 32), 8, 24, 100.0, 90.0, 90.0, 0.0, 1.0, 0.0, {}, 0, {}))
        assert main(["quantize", "patnet_t0", str(out), "--runtime", runtime, "--calib", "x"]) == 0
        assert f"wrote {out} ({kind}, 32x32, m calibration on 8 images)" in capsys.readouterr().out


def test_executorch_export_refuses_a_dynamic_batch(tmp_path, capsys):
    argv = ["export", "patnet_t0", str(tmp_path / "m.pte"), "--format", "executorch", "--dynamic-batch",
            "--img-size", "32", "32"]
    assert main(argv) == 2
    assert "an ExecuTorch program is exported at batch 1; drop --dynamic-batch" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_quantize_refuses_a_mismatched_suffix(tmp_path, idx_data, capsys):
    argv = ["quantize", "patnet_t0", str(tmp_path / "q.onnx"), "--runtime", "openvino", "--num-classes", "3",
            "--calib", str(idx_data), "--img-size", "32", "32"]
    assert main(argv) == 2
    assert "an int8 model for openvino is written as .xml, not q.onnx" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_int8_agrees_with_fp32_on_a_trained_model(tmp_path, idx_data, trained_ckpt):
    """A model that has learnt something keeps its decisions through int8 (the verification is meaningful)."""
    from patnet.weights import create_from_checkpoint

    model = create_from_checkpoint("patnet_t0", trained_ckpt)
    report = quantize_model(model, tmp_path / "q.onnx", str(idx_data), "patnet_t0", (32, 32), crop_pct=1.0,
                            calib_images=16, eval_images=24, max_drop=float(MAX_DROP), show_progress=False)
    assert report.top1_fp32 is not None and report.top1_fp32 > 60 and report.top1_agreement >= 75


def test_quantize_refuses_beyond_max_drop(tmp_path, idx_data, monkeypatch):
    """When verification fails, no int8 file (and no report) is written."""
    import patnet.deploy.quantize as q

    real = q.top1_of
    calls = []

    def worse_int8(run, batches):  # the second call is the int8 file: make every answer wrong
        pred = real(run, batches)
        calls.append(1)
        return (np.concatenate([y for _, y in batches]) + 1) % 3 if len(calls) == 2 else pred

    monkeypatch.setattr(q, "top1_of", worse_int8)
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
    # Random weights on 12 images: this checks the path for a non-PATNet model, not agreement (--max-drop off; the
    # bound itself is tested on the trained model above and by the refusal test).
    assert main(["quantize", "fasternet_t0", str(out), "--checkpoint", str(tmp_path / "fn.pth"), "--calib",
                 str(data), "--calib-images", "8", "--img-size", "32", "32", "--max-drop", "100"]) == 0
    assert out.is_file() and json.loads(out.with_suffix(".json").read_text())["model"] == "fasternet_t0"


def test_validate_onnx_checks_class_count(tmp_path, idx_data, capsys):
    from patnet.deploy import export_model

    out = tmp_path / "m.onnx"
    export_model(timm.create_model("patnet_t0", num_classes=5), out, img_size=(32, 32), dynamic_batch=True)
    assert main(["validate", "--onnx", str(out), "--data", str(idx_data)]) == 2
    assert "has 5 outputs" in capsys.readouterr().err
