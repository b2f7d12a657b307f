"""The README: its Quick start runs exactly as printed, the authors'-checkpoint block runs with such a file, CI runs
its test command verbatim, it stays a front door (<= 250 lines), and every relative link in it points at a file that
exists."""
import re
from pathlib import Path

import torch

from conftest import load_parity

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_quick_start_runs_as_printed(tmp_path, monkeypatch, capsys):
    quick = next(b for b in _python_blocks() if "timm.create_model(\"patnet_t2\"" in b)
    monkeypatch.chdir(tmp_path)  # no files needed: nothing is set up beforehand
    scope: dict = {}
    exec(compile(quick, "README.md quick start", "exec"), scope)  # noqa: S102 - our own documentation
    assert scope["logits"].shape == (1, 10)
    assert [c.shape[1] for c in (scope["c2"], scope["c3"], scope["c4"], scope["c5"])] == [32, 64, 128, 256]
    assert "[32, 64, 128, 256] [4, 8, 16, 32]" in capsys.readouterr().out
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(scope["fused"](x), scope["model"](x), rtol=1e-4, atol=1e-4)


def test_authors_checkpoint_block_runs_with_such_a_file(tmp_path, monkeypatch):
    block = next(b for b in _python_blocks() if "from_official" in b)
    d = load_parity("patnet_t1_official_cfg.pt")
    torch.save({"state_dict": d["state_dict"]}, tmp_path / "patnet_t1_official.pth")  # the file the block names
    monkeypatch.chdir(tmp_path)
    import patnet

    scope: dict = {"patnet": patnet}
    exec(compile(block, "README.md authors' checkpoint", "exec"), scope)  # noqa: S102
    assert scope["model"].num_classes == d["state_dict"]["head.weight"].shape[0]


def test_readme_is_a_front_door_with_working_links():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    for target in re.findall(r"\]\(([^)#]+)\)", text):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target


def test_ci_runs_the_readme_test_command_verbatim():
    """CI must run what a newcomer is told to run, so a missing install step shows up in CI first."""
    tests_block = next(b for b in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S) if "pytest" in b)
    ci_lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert tests_block.strip() == ci_lines[-1]
