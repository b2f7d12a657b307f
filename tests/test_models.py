"""Contract tests: the spec's table over every registered variant; behaviour over T0..S at small resolutions.

M and L are T2/S with more channels and blocks (same block kinds, ReLU, no PAT_sp). As timm caps the sizes its
sweeps build, our behaviour sweeps stop at S; timm's own model tests (test_timm_contract.py) still run M and L.
"""
import logging

import pytest
import timm
import torch

import patnet
from patnet.flops import count_flops, count_params

from conftest import SWEEP

VARIANTS = list(patnet.VARIANTS)
IMG = 64

# The spec's table (fvcore counts of the authors' model, 1000 classes, 224 px): params (M), FLOPs (G).
SPEC_TABLE = {
    "patnet_t0": (3.49, 0.235),
    "patnet_t1": (6.14, 0.546),
    "patnet_t2": (12.27, 1.039),
    "patnet_s": (28.01, 2.716),
    "patnet_m": (59.18, 6.693),
    "patnet_l": (100.64, 11.909),
}
# Widths and depths of the spec's table, restated here on purpose: the test checks the code against the spec.
SPEC_GEOMETRY = {
    "patnet_t0": (32, (1, 2, 8, 2), "gelu", False),
    "patnet_t1": (48, (1, 2, 8, 2), "gelu", True),
    "patnet_t2": (64, (2, 2, 6, 4), "relu", False),
    "patnet_s": (96, (2, 2, 9, 4), "relu", False),
    "patnet_m": (128, (2, 3, 16, 4), "relu", False),
    "patnet_l": (160, (2, 3, 20, 4), "relu", False),
}


def test_all_six_registered():
    assert set(timm.list_models("patnet_*")) == set(SPEC_GEOMETRY)


@pytest.mark.parametrize("name", VARIANTS)
def test_geometry_matches_spec(name):
    model = timm.create_model(name)
    embed, depths, act, sp = SPEC_GEOMETRY[name]
    assert model.arch_args["embed_dim"] == embed
    assert tuple(len(s.blocks) for s in model.stages) == depths
    assert model.arch_args["act_layer"] == act
    assert isinstance(model.stages[0].blocks[0].mlp.spatial, patnet.models.patnet.PartialSpatialAttention) == sp


@pytest.fixture()
def quiet_logs():
    """fvcore warns about every op it does not count; silence it for this test only (never leak the setting)."""
    logging.disable(logging.WARNING)
    yield
    logging.disable(logging.NOTSET)


@pytest.mark.parametrize("name", VARIANTS)
def test_params_and_flops_match_spec(name, quiet_logs):
    model = timm.create_model(name)
    params, flops = count_params(model) / 1e6, count_flops(model) / 1e9
    exp_p, exp_f = SPEC_TABLE[name]
    assert abs(params - exp_p) / exp_p < 0.005
    assert abs(flops - exp_f) / exp_f < 0.005


def test_flop_counter_reproduces_fasternet_paper(quiet_logs):
    """The counter is trustworthy only if it reproduces FasterNet-T2's published 14.98 M / 1.911 G."""
    model = timm.create_model("fasternet_t2")
    assert abs(count_params(model) / 1e6 - 14.98) < 0.01
    assert abs(count_flops(model) / 1e9 - 1.911) < 0.002


@pytest.mark.parametrize("name", SWEEP)
def test_forward_backward_reaches_every_parameter(name):
    model = timm.create_model(name, num_classes=10, drop_path_rate=0.1)
    model.train()
    out = model(torch.randn(2, 3, IMG, IMG))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    out.square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, no_grad[:5]
    # Gradients carry signal into the very first layer.
    assert model.stem.conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", SWEEP)
def test_features_only(name):
    model = timm.create_model(name, features_only=True).eval()
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    embed = SPEC_GEOMETRY[name][0]
    assert model.feature_info.channels() == [embed, 2 * embed, 4 * embed, 8 * embed]
    with torch.no_grad():
        feats = model(torch.randn(1, 3, IMG, 96))
    assert [tuple(f.shape) for f in feats] == [
        (1, embed * 2 ** i, IMG // 2 ** (i + 2), 96 // 2 ** (i + 2)) for i in range(4)
    ]


@pytest.mark.parametrize("name", SWEEP)
def test_forward_intermediates_agree_with_forward_features(name):
    model = timm.create_model(name, num_classes=0).eval()
    x = torch.randn(1, 3, IMG, IMG)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        ref = model.forward_features(x)
        only = model.forward_intermediates(x, indices=[1, 2], intermediates_only=True, stop_early=True)
    assert len(inter) == 4
    assert torch.equal(final, ref) and torch.equal(inter[-1], ref)
    assert torch.equal(only[0], inter[1]) and torch.equal(only[1], inter[2])


def test_prune_intermediate_layers():
    model = timm.create_model("patnet_t0").eval()
    model.prune_intermediate_layers(indices=[0, 1])
    assert len(model.stages) == 2 and model.num_features == 64
    with torch.no_grad():
        # timm's convention: a pruned model has no pooling or classifier and returns the last kept map.
        assert model(torch.randn(1, 3, IMG, IMG)).shape == (1, 64, IMG // 8, IMG // 8)


@pytest.mark.parametrize("name", ["patnet_t0", "patnet_t1", "patnet_s"])
def test_torchscript(name):
    model = timm.create_model(name, num_classes=5).eval()
    scripted = torch.jit.script(model)
    x = torch.randn(1, 3, IMG, 80)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", SWEEP)
def test_fx_trace(name):
    model = timm.create_model(name, num_classes=5).eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(1, 3, IMG, IMG)
    with torch.no_grad():
        assert torch.equal(traced(x), model(x))
        # The traced graph is not specialised to the traced size: the bias and the statistics follow the input.
        y = torch.randn(2, 3, 96, 128)
        assert torch.equal(traced(y), model(y))


def test_timm_fx_feature_extractor():
    from timm.models import create_feature_extractor

    model = timm.create_model("patnet_t1").eval()
    extractor = create_feature_extractor(model, return_nodes={"stages.1": "c3", "stages.3": "c5"})
    with torch.no_grad():
        out = extractor(torch.randn(1, 3, IMG, IMG))
    assert out["c3"].shape == (1, 96, 8, 8) and out["c5"].shape == (1, 384, 2, 2)


@pytest.mark.parametrize("name", ["patnet_t0", "patnet_t1", "patnet_t2"])
def test_grad_checkpointing_changes_nothing(name):
    model = timm.create_model(name, num_classes=4, attn_drop_rate=0.0, proj_drop_rate=0.0)
    model.train()
    x = torch.randn(2, 3, IMG, IMG)

    def run():
        model.zero_grad()
        out = model(x)
        out.sum().backward()
        return out.detach(), model.stem.conv.weight.grad.clone()

    torch.manual_seed(1)
    out_a, grad_a = run()
    model.set_grad_checkpointing(True)
    assert all(s.grad_checkpointing for s in model.stages)
    torch.manual_seed(1)
    out_b, grad_b = run()
    torch.testing.assert_close(out_a, out_b, rtol=0, atol=1e-6)
    torch.testing.assert_close(grad_a, grad_b, rtol=1e-5, atol=1e-7)


def test_create_model_kwargs():
    model = timm.create_model("patnet_t0", num_classes=7, in_chans=1, drop_path_rate=0.2).eval()
    assert model.stem.conv.in_channels == 1
    dpr = [b.drop_path.drop_prob for s in model.stages for b in s.blocks if hasattr(b.drop_path, "drop_prob")]
    # Linear over all 13 blocks, from 0 (the first block has none) to 0.2.
    assert len(dpr) == 12 and dpr[-1] == pytest.approx(0.2) and dpr[0] == pytest.approx(0.2 / 12)
    with torch.no_grad():
        assert model(torch.randn(1, 1, IMG, IMG)).shape == (1, 7)


def test_forward_head_and_reset_classifier():
    model = timm.create_model("patnet_t0").eval()
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 256, 2, 2)
        assert model.forward_head(feats, pre_logits=True).shape == (2, 1280)
        model.reset_classifier(3)
        assert model(x).shape == (2, 3)
        model.reset_classifier(0)
        assert model(x).shape == (2, 1280)


def test_pretrained_cfg():
    model = timm.create_model("patnet_t2")
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 224, 224) and cfg["crop_pct"] == 0.9 and cfg["interpolation"] == "bicubic"
    assert cfg["mean"] == (0.485, 0.456, 0.406) and cfg["std"] == (0.229, 0.224, 0.225)
    assert model.get_submodule(cfg["first_conv"]).in_channels == 3
    assert model.get_submodule(cfg["classifier"]).out_features == 1000
    data_cfg = timm.data.resolve_data_config({}, model=model)
    assert data_cfg["crop_pct"] == 0.9


def test_timm_lists_the_family_under_patnet():
    assert "patnet" in timm.list_modules() and "model" not in timm.list_modules()
    assert sorted(timm.list_models(module="patnet")) == sorted(patnet.VARIANTS)


def test_loaders_live_apart_from_the_network():
    import ast
    import inspect

    import patnet.models.patnet as net
    import patnet.weights as weights

    # The network module defines no file loader and imports nothing of the package above it (no import cycle);
    # the loaders use its key map.
    tree = ast.parse(inspect.getsource(net))
    defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    for name in ("from_official", "load_model", "create_from_checkpoint", "require_models"):
        assert name not in defined and hasattr(weights, name)
    assert weights.official_to_patnet is net.official_to_patnet
    relative = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level]
    assert relative == [], [n.module for n in relative]