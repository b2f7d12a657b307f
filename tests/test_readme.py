"""The README's Quick start runs as written (the one file it names is made from the parity vectors)."""
import re
from pathlib import Path

import torch

from conftest import load_parity

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_quick_start_runs(tmp_path, monkeypatch, capsys):
    blocks = _python_blocks()
    quick = next(b for b in blocks if "timm.create_model(\"patnet_t2\"" in b)
    d = load_parity("patnet_t1_official_cfg.pt")
    torch.save({"state_dict": d["state_dict"]}, tmp_path / "patnet_t1_official.pth")  # the file the block names
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(quick, "README.md quick start", "exec"), scope)  # noqa: S102 - our own documentation
    assert scope["logits"].shape == (1, 10)
    assert [c.shape[1] for c in (scope["c2"], scope["c3"], scope["c4"], scope["c5"])] == [32, 64, 128, 256]
    assert "[32, 64, 128, 256] [4, 8, 16, 32]" in capsys.readouterr().out
    assert scope["model"].num_classes == d["state_dict"]["head.weight"].shape[0]
