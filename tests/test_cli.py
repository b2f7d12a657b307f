"""The ``patnet`` command: convert, its round trip and its one-line errors."""
import os
import subprocess
import sys

import pytest
import timm
import torch

import patnet
from patnet.cli import main

from conftest import DATA, load_parity, make_idx_dataset


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    assert "convert" in capsys.readouterr().out


def test_convert_round_trip(tmp_path, capsys):
    d = load_parity("tiny_gelu_sp.pt")
    ours = tmp_path / "t"
    assert main(["convert", str(DATA / "tiny_gelu_sp.pt"), str(ours), "--act", "gelu"]) == 0
    assert sorted(p.name for p in ours.iterdir()) == ["config.json", "model.safetensors"]  # timm's folder
    # Read back by us and by timm alone (config.json names the architecture, custom widths included).
    for model in (patnet.load_model(ours), timm.create_model(f"local-dir:{ours}", pretrained=True).eval()):
        with torch.no_grad():
            err = (model(d["input"]) - d["logits"]).abs().max() / d["logits"].abs().max()
        assert err < 1e-5 and model.arch_args["embed_dim"] == 16
    back = tmp_path / "back.pth"
    assert main(["convert", str(ours), str(back), "--to", "official"]) == 0
    sd = torch.load(back, weights_only=True)["state_dict"]
    assert set(sd) == set(d["state_dict"])
    assert all(torch.equal(sd[k], d["state_dict"][k]) for k in sd)
    assert "wrote" in capsys.readouterr().out


def test_a_pretrained_folder_is_a_checkpoint_everywhere(tmp_path):
    from patnet.weights import create_from_checkpoint, save_pretrained

    model = timm.create_model("patnet_t0", num_classes=3).eval()
    save_pretrained(model, tmp_path / "t0")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        for again in (create_from_checkpoint("patnet_t0", tmp_path / "t0").eval(), patnet.load_model(tmp_path / "t0"),
                      timm.create_model(f"local-dir:{tmp_path / 't0'}", pretrained=True).eval()):
            assert torch.equal(again(x), ref)
    assert not torch.equal(timm.create_model("patnet_t0", num_classes=3).eval()(x), ref)  # weights did travel


def test_convert_wants_a_folder_and_official_wants_one_back(tmp_path, capsys):
    assert main(["convert", str(DATA / "tiny_gelu_sp.pt"), str(tmp_path / "t.safetensors")]) == 2
    assert "the converted model is a folder" in capsys.readouterr().err
    assert main(["convert", str(DATA / "tiny_gelu_sp.pt"), str(tmp_path / "o.pth"), "--to", "official"]) == 2
    assert "is not a folder; --to official converts the folder patnet convert wrote" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_convert_missing_file_is_one_line(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["convert", str(tmp_path / "nope.pth"), str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("patnet: error:") and "does not exist" in err and "\n" not in err
    assert not out.exists()


def test_convert_bad_checkpoint_leaves_no_file(tmp_path, capsys):
    sd = dict(load_parity("tiny_relu_nosp.pt")["state_dict"])
    sd.pop("head.bias")
    src = tmp_path / "broken.pth"
    torch.save(sd, src)
    out = tmp_path / "o"
    assert main(["convert", str(src), str(out), "--act", "relu"]) == 2
    assert "classifier.bias" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [src]


@pytest.mark.slow
def test_console_script_installed():
    import shutil

    script = shutil.which("patnet", path=os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]]))
    assert script is not None, "the `patnet` console script is not installed (pip install -e .)"
    res = subprocess.run([script, "--version"], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == f"patnet {patnet.__version__}"
    res = subprocess.run([sys.executable, "-m", "patnet.cli", "--version"], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.startswith("patnet ")


def test_a_fresh_interpreter_gets_the_models_from_importing_patnet_and_every_help_answers():
    # Importing the package registers the models (no launcher, no deferred registration); every --help exits 0.
    code = (
        "import sys, timm, patnet\n"
        "from patnet.cli import main\n"
        "print('registered:', timm.list_models('patnet_*'))\n"
        "for argv in (['--help'], ['train', '--help'], ['detect', 'train', '--help'], ['quantize', '--help'], "
        "['export', '--help'], ['validate', '--help'], ['convert', '--help']):\n"
        "    try:\n        main(argv)\n    except SystemExit as e:\n        assert e.code == 0, argv\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "registered: ['patnet_l', 'patnet_m', 'patnet_s', 'patnet_t0', 'patnet_t1', 'patnet_t2']" in res.stdout


def test_jpeg_as_checkpoint_never_advises_unsafe_loading(tmp_path, capsys):
    from PIL import Image

    jpg = tmp_path / "photo.jpg"
    Image.new("RGB", (8, 8)).save(jpg)
    data = make_idx_dataset(tmp_path / "idx", n_train=8, n_val=8)
    assert main(["validate", "--model", "patnet_t0", "--checkpoint", str(jpg), "--data", str(data)]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a checkpoint" in err and "weights_only" not in err and len(err.splitlines()) == 1


def test_unknown_model_is_the_only_message(tmp_path, capsys, caplog):
    assert main(["train", "--model", "patnet_t9", "--output", str(tmp_path / "o")]) == 2
    assert "unknown model name(s) patnet_t9" in capsys.readouterr().err
    assert "recipe" not in caplog.text
    assert not (tmp_path / "o").exists()


def test_export_without_checkpoint_says_the_weights_are_random(tmp_path, capsys):
    assert main(["export", "patnet_t0", str(tmp_path / "m.onnx"), "--img-size", "64", "64"]) == 0
    assert "randomly initialised" in capsys.readouterr().err
