"""timm's own model contract: timm's tests/test_models.py, from the sdist of the installed timm, on every patnet_*.

The file is not copied into this repository (it is timm's code): the test fetches the sdist of the installed timm
version from the package index once (pip download, cached under ~/.cache/patnet-tests) and runs the file's
patnet cases in a child pytest with a conftest that imports patnet. timm builds models there on the meta device
with device/dtype factory kwargs, scripts them, fx-traces them and checks every default config.
"""
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import timm

CACHE = Path(os.environ.get("PATNET_TEST_CACHE", Path.home() / ".cache" / "patnet-tests"))
# timm 1.0.31's test_models.py selects 48 cases for patnet_* (8 tests x 6 variants); other versions at least one each
EXPECTED_CASES = 48 if timm.__version__ == "1.0.31" else 6


def _timm_tests() -> Path:
    """timm's tests/ folder of the installed version, downloaded and unpacked on first use."""
    version = timm.__version__
    root = CACHE / f"timm-{version}"
    tests = root / "tests"
    if (tests / "test_models.py").is_file():
        return tests
    CACHE.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", f"timm=={version}",
         "-d", str(CACHE)], capture_output=True, text=True, timeout=300,
    )
    sdist = CACHE / f"timm-{version}.tar.gz"
    assert done.returncode == 0 and sdist.is_file(), f"could not fetch timm {version}'s sdist: {done.stderr[-500:]}"
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(f"timm-{version}/tests/") and m.isfile()]
        tar.extractall(CACHE, members=members, filter="data")
    return tests


@pytest.mark.slow
def test_timm_test_models_passes_for_every_variant(tmp_path):
    src = _timm_tests() / "test_models.py"
    (tmp_path / "test_models.py").write_text(src.read_text())
    (tmp_path / "conftest.py").write_text("import patnet  # noqa: F401  (registers patnet_* with timm)\n")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "patnet", "test_models.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )
    tail = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-300:]
    assert done.returncode == 0, done.stdout[-3000:]
    passed = int(tail.split(" passed")[0].split()[-1]) if " passed" in tail else 0
    assert passed >= EXPECTED_CASES and "failed" not in tail and "error" not in tail, tail
