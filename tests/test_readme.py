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
    from experiments.readme_figures import readme_test_command

    ci_lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert readme_test_command(README) == ci_lines[-1]


def test_every_figure_block_is_rendered_from_the_results_set():
    """The README's figures are not typed by hand: each marked block is what experiments/readme_figures.py renders
    from docs/results/readme/, so an edited number, or a set regenerated without re-rendering, fails here."""
    from experiments.readme_figures import readme_blocks, render_blocks

    rendered, printed = render_blocks(), readme_blocks()
    assert set(printed) == set(rendered) == {"parity", "main_job", "variants", "speed", "int8_accuracy", "tests"}
    for name, block in rendered.items():
        assert printed[name] == block, f"README block {name!r} differs from the results set: run render"


def test_the_results_set_agrees_with_what_the_library_computes():
    """The set's static facts are the library's: params/FLOPs of every variant and the parity error's bound."""
    import json

    import timm

    import patnet  # noqa: F401
    from patnet.flops import count_params

    res = ROOT / "docs" / "results" / "readme"
    variants = json.loads((res / "variants.json").read_text())["variants"]
    assert set(variants) == set(timm.list_models("patnet_*"))
    model = timm.create_model("patnet_t1")
    assert round(count_params(model) / 1e6, 2) == variants["patnet_t1"]["params_m"]
    parity = json.loads((res / "parity.json").read_text())
    assert len(parity["files"]) == 8 and 0 <= parity["max_rel_error"] < 1e-5  # tests/test_parity.py's bar
