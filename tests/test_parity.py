"""Our PATNet reproduces the authors' model: logits of the reference vectors, and conversion in both directions."""
import pytest
import torch

import patnet
from patnet.weights import patnet_to_official, official_to_patnet

from conftest import PARITY_FILES, load_parity

# The bar: every logit within 1e-5 of the largest logit's magnitude.
REL_TOL = 1e-5


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).abs().max() / ref.abs().max()).item()


def test_parity_files_present():
    assert len(PARITY_FILES) == 4, PARITY_FILES


@pytest.mark.parametrize("name", PARITY_FILES)
def test_from_official_reproduces_logits(name):
    d = load_parity(name)
    model = patnet.from_official(d["state_dict"], act_layer=d["config"]["act_layer"].lower())
    assert not model.training
    cfg = d["config"]
    assert model.arch_args["embed_dim"] == cfg["embed_dim"]
    assert model.arch_args["depths"] == list(cfg["depths"])
    assert model.arch_args["spatial_attn"] == cfg["use_spatial_attn"]
    with torch.no_grad():
        out = model(d["input"])
    assert _rel_err(out, d["logits"]) < REL_TOL


@pytest.mark.parametrize("name", PARITY_FILES)
def test_plain_attention_path_also_reproduces_logits(name):
    d = load_parity(name)
    model = patnet.from_official(d["state_dict"], act_layer=d["config"]["act_layer"].lower())
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False
    with torch.no_grad():
        assert _rel_err(model(d["input"]), d["logits"]) < REL_TOL


def test_wrong_activation_is_detected():
    """The parity check is sharp: the right weights with the wrong activation miss by far."""
    d = load_parity("tiny_gelu_sp.pt")
    model = patnet.from_official(d["state_dict"], act_layer="relu")
    with torch.no_grad():
        assert _rel_err(model(d["input"]), d["logits"]) > 1e-2


def test_round_trip_is_identity():
    d = load_parity("patnet_t1_official_cfg.pt")
    ours = official_to_patnet(d["state_dict"])
    back = patnet_to_official(ours)
    assert set(back) == set(d["state_dict"])
    for k, v in d["state_dict"].items():
        assert torch.equal(back[k], v), k


def test_our_state_dict_exports_to_official_and_back():
    model = patnet.PATNet(embed_dim=16, depths=(1, 1, 2, 1), spatial_attn=True, num_classes=5, act_layer="gelu")
    official = patnet_to_official(model.state_dict())
    assert any(k.startswith("patch_embed.") for k in official)
    rebuilt = patnet.from_official(official, act_layer="gelu")
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), rebuilt(x))


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "lightning"])
def test_from_official_reads_files_and_wrappers(tmp_path, wrap):
    d = load_parity("tiny_relu_nosp.pt")
    sd = d["state_dict"]
    obj = {
        "plain": sd,
        "state_dict": {"state_dict": sd, "epoch": 3},
        "model": {"model": sd, "optimizer": {}},
        "lightning": {"state_dict": {f"model.{k}": v for k, v in sd.items()}},
    }[wrap]
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    model = patnet.from_official(path, act_layer="relu")
    with torch.no_grad():
        assert _rel_err(model(d["input"]), d["logits"]) < REL_TOL


def test_missing_key_is_named():
    sd = dict(load_parity("tiny_relu_nosp.pt")["state_dict"])
    del sd["stages.2.blocks.0.mlp.3.weight"]
    with pytest.raises(ValueError, match=r"missing 1: \['stages\.1\.blocks\.0\.mlp\.fc2\.weight'\]"):
        patnet.from_official(sd, act_layer="relu")


def test_unused_key_is_named():
    sd = dict(load_parity("tiny_relu_nosp.pt")["state_dict"])
    # A channel-gate weight inside a stage-4 (self-attention) block: a valid name that this model has no use for.
    sd["stages.6.blocks.0.spatial_mixing.attn.cfc1.weight"] = torch.zeros(96, 96, 1, 2)
    with pytest.raises(ValueError, match=r"unused 1: \['stages\.3\.blocks\.0\.mixer\.gate_conv\.weight'\]"):
        patnet.from_official(sd, act_layer="relu")


def test_unknown_key_is_named():
    sd = dict(load_parity("tiny_relu_nosp.pt")["state_dict"])
    sd["stages.0.blocks.0.extra.weight"] = torch.zeros(1)
    with pytest.raises(KeyError, match="extra.weight"):
        patnet.from_official(sd, act_layer="relu")


def test_contradicting_override_is_refused():
    sd = load_parity("tiny_relu_nosp.pt")["state_dict"]
    with pytest.raises(ValueError, match="embed_dim"):
        patnet.from_official(sd, act_layer="relu", embed_dim=32)


def test_overrides_that_do_not_touch_weights_apply():
    sd = load_parity("tiny_relu_nosp.pt")["state_dict"]
    model = patnet.from_official(sd, act_layer="relu", drop_path_rate=0.1)
    assert model.stages[3].blocks[0].drop_path.drop_prob == pytest.approx(0.1)


def test_truncated_file_is_a_clear_error(tmp_path):
    src = patnet.models.patnet.__file__  # any non-checkpoint bytes
    bad = tmp_path / "bad.pth"
    bad.write_bytes(open(src, "rb").read()[:100])
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        patnet.from_official(bad, act_layer="gelu")


def test_our_layout_is_not_mistaken_for_official():
    model = patnet.PATNet(embed_dim=16, depths=(1, 1, 1, 1), num_classes=3)
    with pytest.raises(ValueError, match="not in the authors' layout"):
        patnet.from_official(model.state_dict())


def test_timm_pretrained_file_loads_official_layout(tmp_path):
    """timm's local-file pretrained path converts the authors' layout on the fly."""
    import timm

    d = load_parity("patnet_t0_official_cfg.pt")
    path = tmp_path / "t0.pth"
    torch.save(d["state_dict"], path)
    model = timm.create_model(
        "patnet_t0", pretrained=True, num_classes=10, pretrained_cfg_overlay=dict(file=str(path), num_classes=10)
    ).eval()
    with torch.no_grad():
        assert _rel_err(model(d["input"]), d["logits"]) < REL_TOL
