"""The peers table and its frontier; the compiled serving path equals eager."""
import pytest
import timm
import torch

from patnet import PATNet
from patnet.deploy import CompiledModel, ExportError, compiled_form
from patnet.peers import TIERS, load_peers, pareto_front


def test_peer_table_is_complete_and_known_to_timm():
    peers = load_peers()
    names = [p.model for p in peers]
    assert len(names) == len(set(names))
    assert {p.tier for p in peers} == set(TIERS)
    for tier in TIERS:  # every tier has PATNet and FasterNet
        tier_models = {p.model for p in peers if p.tier == tier}
        assert any(m.startswith("patnet") for m in tier_models) and any(m.startswith("fasternet") for m in tier_models)
    available = set(timm.list_models())
    assert all(n in available for n in names)
    assert all(50 < p.top1 < 90 and p.source for p in peers)


def test_pareto_front():
    # (latency, top-1): b dominates d (faster and more accurate); e equals a in latency but is less accurate.
    pts = [(1.0, 70.0), (2.0, 75.0), (3.0, 80.0), (2.5, 74.0), (1.0, 69.0)]
    assert pareto_front(pts) == [0, 1, 2]
    assert pareto_front([(1.0, 70.0)]) == [0]


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
