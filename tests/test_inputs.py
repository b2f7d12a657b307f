"""Any input size, batch 1, one-pixel maps, the position bias, and clear errors on bad input."""
import math

import pytest
import timm
import torch
import torch.nn.functional as F

import patnet
from patnet.cli import main
from patnet.models.patnet import (
    EuclideanRelPosBias,
    PartialChannelAttention,
    PartialSelfAttention,
    channel_mean_std,
    euclidean_bucket_index,
)


def _spec_bucket(d2: int) -> int:
    """The spec's iRPE bucket for squared distance d2, written independently with Python's math."""
    d = round(math.sqrt(d2))
    if d <= 20:
        idx = d
    else:
        idx = min(40, round(20 + math.log(d / 20) / math.log(160 / 20) * (40 - 20)))
    return idx + 40


@pytest.mark.parametrize("hw", [(1, 1), (2, 3), (7, 7), (25, 42)])
def test_bucket_index_matches_spec_formula(hw):
    h, w = hw
    idx = euclidean_bucket_index(h, w)
    assert idx.shape == (h * w, h * w)
    pos = [(r, c) for r in range(h) for c in range(w)]
    rng = torch.Generator().manual_seed(0)
    pairs = torch.randint(0, h * w, (min(4000, (h * w) ** 2), 2), generator=rng).tolist()
    for i, j in pairs:
        d2 = (pos[i][0] - pos[j][0]) ** 2 + (pos[i][1] - pos[j][1]) ** 2
        assert idx[i, j].item() == _spec_bucket(d2), (i, j, d2)
    assert idx.min() >= 40 and idx.max() <= 80


def test_far_distances_use_log_buckets():
    idx = euclidean_bucket_index(25, 42)  # a 1333 x 800 image's stage-4 map
    assert idx.max().item() > 40 + 20  # distances beyond alpha reach the compressed buckets
    assert idx[0, 25 * 42 - 1].item() == _spec_bucket(24 ** 2 + 41 ** 2)


def test_bias_index_is_computed_once_per_size(monkeypatch):
    from patnet.models import patnet as impl

    calls = []
    real = impl.euclidean_bucket_index
    monkeypatch.setattr(impl, "euclidean_bucket_index", lambda *a, **k: calls.append(a[:2]) or real(*a, **k))
    rel = EuclideanRelPosBias(4)
    first = rel(5, 6)
    torch.testing.assert_close(rel(5, 6), first)
    rel(6, 5)
    assert calls == [(5, 6), (6, 5)]
    torch.testing.assert_close(first, rel.bias_table[:, real(5, 6)])


def test_mean_std_unbiased_and_one_pixel_defined():
    x = torch.randn(2, 3, 4, 5)
    mean, std = channel_mean_std(x)
    assert mean.shape == std.shape == (2, 3, 1, 1)
    torch.testing.assert_close(mean[..., 0, 0], x.mean((2, 3)))
    torch.testing.assert_close(std[..., 0, 0], x.std((2, 3), unbiased=True))
    mean1, std1 = channel_mean_std(x[:, :, :1, :1])
    assert torch.equal(mean1[..., 0, 0], x[:, :, 0, 0])
    assert torch.isfinite(std1).all() and std1.max() <= 1e-6


@pytest.mark.parametrize("shape", [(2, 3, 1, 1), (2, 3, 4, 4)])
def test_mean_std_gradients_finite_for_constant_channels(shape):
    """torch.std gives NaN gradients on a constant channel; the gate must not."""
    x = torch.randn(*shape)
    x[0, 0] = 1.5  # a constant channel (and every channel of a 1x1 map is constant)
    x.requires_grad_(True)
    mean, std = channel_mean_std(x)
    (mean.sum() + std.sum()).backward()
    assert torch.isfinite(x.grad).all()
    ref = x.detach()[1:, :].clone().requires_grad_(True)  # non-constant rows: the plain formula's gradient
    if shape[-1] > 1:
        (ref.mean((2, 3)).sum() + ref.std((2, 3)).sum()).backward()
        torch.testing.assert_close(x.grad[1:], ref.grad)


def test_one_pixel_map_gives_finite_output_and_gradients():
    model = timm.create_model("patnet_t0", num_classes=3)
    x = torch.randn(2, 3, 32, 32)  # stage 4 sees a 1x1 map
    model.train()
    out = model(x)
    out.sum().backward()
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(x[:1])).all()


@pytest.mark.parametrize("size", [(64, 64), (96, 160), (100, 75), (33, 47)])
def test_any_input_size(size):
    model = timm.create_model("patnet_t1", num_classes=4).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
    assert out.shape == (1, 4) and torch.isfinite(out).all()


@pytest.mark.slow
def test_detection_sized_input():
    model = timm.create_model("patnet_t0", features_only=True).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 800, 1333))
    assert tuple(feats[-1].shape) == (1, 256, 25, 41)
    assert all(torch.isfinite(f).all() for f in feats)


def test_eval_batch_one_equals_batched():
    model = timm.create_model("patnet_t2", num_classes=4).eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        batched = model(x)
        single = torch.cat([model(x[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(single, batched, rtol=1e-5, atol=1e-6)


def test_fused_and_plain_attention_agree():
    attn = PartialSelfAttention(64, num_heads=4).eval()
    torch.nn.init.normal_(attn.rel_pos.bias_table)
    x = torch.randn(2, 64, 5, 7)
    with torch.no_grad():
        attn.fused_attn = True
        a = attn(x)
        attn.fused_attn = False
        b = attn(x)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_channel_gate_matches_spec_equations():
    """PAT_ch written out from the spec's equations, independent of the module's code path."""
    m = PartialChannelAttention(16).eval()
    for bn in (m.gate_bn, m.norm):
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.normal_()
        bn.bias.data.normal_()
    x = torch.randn(2, 16, 6, 5)
    x1, x2 = x[:, :4], x[:, 4:]
    y1 = F.conv2d(x1, m.conv.weight, padding=1)
    stats = torch.stack([x2.mean((2, 3)), x2.std((2, 3))], -1).unsqueeze(2)
    z = F.batch_norm(F.conv2d(stats, m.gate_conv.weight), m.gate_bn.running_mean, m.gate_bn.running_var,
                     m.gate_bn.weight, m.gate_bn.bias, eps=m.gate_bn.eps)
    g = F.relu6(z + 3) / 6
    y2 = F.batch_norm(x2 * g, m.norm.running_mean, m.norm.running_var, m.norm.weight, m.norm.bias, eps=m.norm.eps)
    with torch.no_grad():
        torch.testing.assert_close(m(x), torch.cat([y1, y2], 1))


@pytest.mark.parametrize(
    "shape, match",
    [
        ((3, 64, 64), r"4-D image batch \(B, 3, H, W\)"),
        ((1, 1, 64, 64), r"expects 3 input channels"),
        ((1, 3, 16, 64), r"at least 32"),
        ((1, 3, 64, 31), r"at least 32"),
    ],
)
def test_bad_input_raises_value_error(shape, match):
    model = timm.create_model("patnet_t0").eval()
    features = timm.create_model("patnet_t0", features_only=True).eval()
    for m in (model, features):
        with pytest.raises(ValueError, match=match):
            m(torch.randn(*shape))


def test_invalid_constructor_arguments():
    with pytest.raises(ValueError, match="4 stages"):
        patnet.PATNet(depths=(1, 2, 3))
    with pytest.raises(ValueError, match="heads"):
        patnet.PATNet(embed_dim=16, num_heads=5)


# Round two of the hostile-input table: each is one line with exit status 2, before anything is allocated or written.
@pytest.mark.parametrize("yaml_text, message", [
    ("epochs: ten", "epochs: 'ten' is not a valid value"),
    ("lr: [1, 2]", "lr: [1, 2] must be a single value"),
    ("recipe: fast", "recipe: 'fast' is not one of auto, paper, short"),
    ("scale: [0.5]", "scale: [0.5] must be a list of 2 values"),
    ("progress: 3", "progress: 3 must be true or false"),
])
def test_config_file_values_of_the_wrong_type_are_one_line(tmp_path, capsys, yaml_text, message):
    (tmp_path / "c.yaml").write_text(yaml_text + "\n")
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("patnet: error: config file") and message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv, message", [
    (["export", "patnet_t0", "{tmp}/m.onnx", "--num-classes", "-5"], "num_classes must be 0 (no classifier) or more"),
    (["export", "patnet_t0", "{tmp}/m.onnx", "--img-size", "60000", "60000"], "--img-size 60000x60000 is more than"),
    (["train", "--img-size", "100000", "--output", "{tmp}/o"], "--img-size 100000x100000 is more than"),
])
def test_sizes_and_counts_out_of_range_are_refused_before_allocating(tmp_path, capsys, argv, message):
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("detector, message", [
    ({"model": "patnet_t0"}, "malformed detection checkpoint (no 'num_classes')"),
    ({"model": "patnet_t0", "num_classes": 2, "task": "boxes", "min_size": 96, "max_size": 10**6, "norm": "frozen",
      "class_names": ["a", "b"]}, "longest resized side 1000000x1000000 is more than"),
])
def test_malformed_detection_checkpoints_are_one_line(tmp_path, capsys, detector, message):
    from PIL import Image

    torch.save({"detector": detector, "model": {}}, tmp_path / "det.pth")
    Image.new("RGB", (64, 64)).save(tmp_path / "x.png")
    assert main(["detect", "predict", "--checkpoint", str(tmp_path / "det.pth"), "--image", str(tmp_path / "x.png"),
                 "--out", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not (tmp_path / "o.png").exists()


def test_an_input_size_over_the_bound_in_a_files_metadata_is_one_line(tmp_path, capsys):
    """The preprocessing stored in an ONNX file is checked like a flag (it once surfaced as "not a readable model
    file (ValueError)", which hid the reason)."""
    import json

    import onnx
    from onnx import TensorProto, helper

    from conftest import make_idx_dataset

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 32, 32])
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y]))
    prop = model.metadata_props.add()
    prop.key = "patnet.preprocess"
    prop.value = json.dumps({"img_size": [100000, 100000], "mean": [0.5] * 3, "std": [0.5] * 3, "crop_pct": 1.0,
                             "interpolation": "bicubic", "num_classes": 3})
    onnx.save(model, str(tmp_path / "m.onnx"))
    data = make_idx_dataset(tmp_path / "idx", n_train=6, n_val=6)
    assert main(["validate", "--onnx", str(tmp_path / "m.onnx"), "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert "preprocessing metadata is unusable: input size 100000x100000 is more than" in err and err.count("\n") == 1


def test_model_files_above_the_size_bound_are_not_read(tmp_path, capsys, monkeypatch):
    import patnet.deploy.runtime as runtime

    (tmp_path / "m.onnx").write_bytes(b"\0" * 4096)  # not even a model: the size is refused before any parse
    monkeypatch.setattr(runtime, "MAX_MODEL_BYTES", 1000)
    assert main(["validate", "--onnx", str(tmp_path / "m.onnx"), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is 4,096 bytes, more than the 1,000 a model file may be" in err and err.count("\n") == 1


@pytest.mark.parametrize("name, content, message", [
    ("m.onnx", b"\x08\x07garbage" * 64, "is not a readable ONNX model"),
    ("m.xml", b"<net><layers><garbage", "is not a readable OpenVINO IR model"),
])
def test_files_that_are_not_models_are_one_line(tmp_path, capsys, name, content, message):
    """ONNX Runtime's and OpenVINO's own load errors once reached the user as tracebacks."""
    (tmp_path / name).write_bytes(content)
    (tmp_path / name).with_suffix(".bin").write_bytes(b"\0" * 16)
    assert main(["validate", "--onnx", str(tmp_path / name), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err, err


@pytest.mark.parametrize("ann, message", [
    ({"images": "all", "annotations": [], "categories": {"id": 1}}, "needs 'images' and 'categories' lists"),
    ({"images": [{"id": 1, "file_name": 7, "width": "wide", "height": 64}],
      "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": "1,1,5,5"}],
      "categories": [{"id": 1, "name": "a"}]}, "every image needs an 'id' (number or string) and a 'file_name' string"),
])
def test_coco_fields_of_the_wrong_type_are_one_line(tmp_path, capsys, ann, message):
    import json

    from PIL import Image

    (tmp_path / "img").mkdir()
    Image.new("RGB", (64, 64)).save(tmp_path / "img" / "a.png")
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    argv = ["detect", "train", "--ann", str(tmp_path / "ann.json"), "--images", str(tmp_path / "img"), "--output",
            str(tmp_path / "run"), "--epochs", "1", "--img-size", "64", "--max-size", "64", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "run" / "last.pth").exists()
