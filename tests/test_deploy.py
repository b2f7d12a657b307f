"""Deployment form: fused PATNet equals the training form; exports are verified; bad input fails cleanly."""
import onnx
import pytest
import timm
import torch
from timm.utils import reparameterize_model

import patnet
from patnet.cli import main
from patnet import PATNet
from patnet.deploy import CompiledModel, ExportError, compiled_form, deploy_form, export_model
from patnet.models.patnet import FusedPatAttnBlock, FusedPatBlock

from conftest import PARITY_FILES, REL_TOL, SWEEP, load_parity, randomise_bn, rel_err

@pytest.mark.parametrize("name", PARITY_FILES)
def test_fused_official_model_reproduces_authors_logits(name):
    d = load_parity(name)
    model = patnet.from_official(d["state_dict"], act_layer=d["config"]["act_layer"].lower())
    fused = reparameterize_model(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    with torch.no_grad():
        assert rel_err(fused(d["input"]), d["logits"]) < REL_TOL


# Every variant's inference form is exact; the non-square size on the behaviour sweep (conftest.SWEEP) only.
@pytest.mark.parametrize(("name", "size"), [(name, size) for name in patnet.VARIANTS
                                            for size in ((64, 64), (96, 160)) if size == (64, 64) or name in SWEEP])
def test_fusion_equivalence_every_variant(name, size):
    model = randomise_bn(timm.create_model(name, num_classes=10)).eval()
    fused = reparameterize_model(model)
    blocks = [m for m in fused.modules() if isinstance(m, (FusedPatBlock, FusedPatAttnBlock))]
    assert len(blocks) == sum(model.arch_args["depths"])
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.LayerNorm)) for m in fused.modules())
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        assert rel_err(fused(x), model(x)) < REL_TOL
        assert rel_err(fused(x[:1]), model(x[:1])) < REL_TOL


@pytest.mark.parametrize("name", ["patnet_t0", "patnet_t1"])
def test_deployed_parameter_count_is_the_folded_count(name):
    from patnet.flops import count_params

    model = timm.create_model(name).eval()
    norms = sum(p.numel() for m in model.modules() if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.LayerNorm))
                for p in m.parameters())
    trained = count_params(model)
    form = deploy_form(model)
    deployed = count_params(form)
    # Folding removes the norms' affines (and, with PAT_sp, merges its 1x1 conv into fc2's rows: T1 loses 2.6%)
    # and adds one gate row per PAT_sp MLP; weights held outside .parameters() would lose ~40%.
    assert trained - norms - 0.03 * trained <= deployed <= trained, (deployed, trained)
    folded = [p for n, p in form.named_parameters() if n.endswith(("fc1.weight", "fc2.weight", "gate.weight", "qkv.weight"))]
    assert len(folded) >= 3 * sum(model.arch_args["depths"]) and not any(p.requires_grad for p in folded)


def test_inference_form_graph_is_weight_stationary_and_4d(tmp_path):
    """Every Conv of the exported form has a constant weight; the only MatMuls are attention's two activation
    products; PAT_ch's statistics reduce over H, W without reshaping the map (what OpenVINO reorders for)."""
    model = randomise_bn(timm.create_model("patnet_t1", num_classes=4))
    out = tmp_path / "s.onnx"
    export_model(model, out, img_size=(64, 64))
    graph = onnx.load(str(out)).graph
    constants = {i.name for i in graph.initializer}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    depths = model.arch_args["depths"]
    assert len(convs) >= 3 * sum(depths)
    assert all(n.input[1] in constants for n in convs)
    assert sum(n.op_type == "MatMul" for n in graph.node) == 2 * depths[-1]
    # Reshapes only in stage 4 (attention: tokens and heads) and the head's flatten, none in stages 1-3.
    reshapes = [n.name for n in graph.node if n.op_type in ("Reshape", "Flatten") and "stages.3" not in n.name]
    assert len(reshapes) <= 1, reshapes
    # Each softmax feeds its MatMul directly, as the first operand: the order OpenVINO's int8 path takes to AMX (a
    # Transpose between them, the other order, kept that product in fp32).
    producers = {o: n for n in graph.node for o in n.output}
    softmax_users = [(n, list(n.input).index(s.output[0])) for s in graph.node if s.op_type == "Softmax"
                     for n in graph.node if s.output[0] in n.input]
    assert len(softmax_users) == depths[-1]
    assert all(n.op_type == "MatMul" and slot == 0 for n, slot in softmax_users), softmax_users
    assert all(producers[n.input[1]].op_type == "Transpose" for n, _ in softmax_users)  # v^T, folded by runtimes
    assert model.training  # export_model left the caller's model as it was


def test_fusion_leaves_original_untouched():
    model = timm.create_model("patnet_t1", num_classes=3).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reparameterize_model(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_fused_features_only_and_fasternet_baseline():
    feats = timm.create_model("patnet_t0", features_only=True).eval()
    fused = reparameterize_model(feats)
    x = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        for a, b in zip(fused(x), feats(x)):
            assert rel_err(a, b) < REL_TOL
    fn = timm.create_model("fasternet_t0").eval()
    folded = deploy_form(fn)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        assert rel_err(folded(x), fn(x)) < REL_TOL


def test_fused_model_scripts():
    fused = reparameterize_model(timm.create_model("patnet_t1", num_classes=4).eval())
    scripted = torch.jit.script(fused)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), fused(x))


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_verified_dynamic_batch(tmp_path, fmt):
    model = randomise_bn(timm.create_model("patnet_t1", num_classes=5))
    out = tmp_path / f"m.{fmt}"
    report = export_model(model, out, fmt, img_size=(64, 96), dynamic_batch=True)
    assert out.is_file() and set(report.max_rel_error) == {1, 8}
    assert max(report.max_rel_error.values()) < REL_TOL
    if fmt == "onnx":
        graph = onnx.load(str(out)).graph
        ops = {n.op_type for n in graph.node}
        assert "ScatterND" not in ops  # no in-place slice assignment
        assert {"Split", "Concat"} <= ops
        assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_export_failure_leaves_no_file(tmp_path):
    model = timm.create_model("patnet_t0", num_classes=5)
    out = tmp_path / "m.onnx"
    with pytest.raises(ExportError, match="does not reproduce"):
        export_model(model, out, "onnx", img_size=(64, 64), tolerance=-1.0)  # nothing can pass
    assert list(tmp_path.iterdir()) == []


def test_cli_export_with_official_checkpoint(tmp_path, capsys):
    d = load_parity("patnet_t0_official_cfg.pt")
    ckpt = tmp_path / "t0.pth"
    torch.save({"state_dict": d["state_dict"]}, ckpt)
    out = tmp_path / "t0.onnx"
    assert main(["export", "patnet_t0", str(out), "--checkpoint", str(ckpt), "--img-size", "64", "64"]) == 0
    assert out.is_file() and "verified" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["export", "patnet_t9", "OUT"], "unknown model"),
        (["export", "patnet_t1", "OUT", "--checkpoint", "CKPT"], "does not fit patnet_t1"),
        (["export", "patnet_t0", "/proc/nope/m.onnx"], "cannot create folder"),
        (["export", "patnet_t0", "OUT", "--img-size", "-64", "64"], "image size must be two positive numbers"),
        (["export", "patnet_t0", "OUT", "--opset", "99"], "ONNX opset 99 is not supported"),
    ],
)
def test_cli_bad_input_one_line(tmp_path, capsys, argv, message):
    d = load_parity("patnet_t0_official_cfg.pt")
    torch.save(d["state_dict"], tmp_path / "ckpt.pth")
    argv = [a.replace("CKPT", str(tmp_path / "ckpt.pth")).replace("OUT", str(tmp_path / "o.onnx")) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("patnet: error:") and message in err and "\n" not in err
    assert not (tmp_path / "o.onnx").exists()


def test_missing_onnxruntime_is_one_line(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "onnxruntime" else real(n, *a))
    assert main(["export", "patnet_t0", str(tmp_path / "m.onnx"), "--img-size", "64", "64"]) == 2
    assert "onnxruntime is not installed: pip install 'patnet[deploy]'" in capsys.readouterr().err


@pytest.mark.slow
def test_compiled_form_equals_eager():
    model = PATNet(embed_dim=16, depths=(1, 1, 1, 2), num_classes=5, feature_dim=64).eval()
    x = torch.randn(1, 3, 64, 64)
    compiled = compiled_form(model, x)
    assert isinstance(compiled, CompiledModel) and compiled.compile_seconds > 0
    with torch.inference_mode():
        out, ref = compiled(x), model(x)
    assert ((out - ref).abs().max() / ref.abs().max()).item() < 1e-4


def test_compiled_form_rejects_a_wrong_result(monkeypatch):
    """The check is real: a compiled model that computes something else is refused."""
    model = PATNet(embed_dim=16, depths=(1, 1, 1, 2), num_classes=5, feature_dim=64).eval()
    monkeypatch.setattr(torch, "compile", lambda m, **kw: (lambda x: m(x) + 1.0))
    with pytest.raises(ExportError, match="differs from eager"):
        compiled_form(model, torch.randn(1, 3, 64, 64))
