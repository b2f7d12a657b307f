"""The docs site builds with no warning (mkdocs --strict: every link resolves, every API entry exists), and its API
page documents every public name a user imports."""
import re
import subprocess
import sys
from pathlib import Path

import patnet
import patnet.deploy
import patnet.detection
import patnet.detection.engine
import patnet.detection.sources

ROOT = Path(__file__).resolve().parents[1]


def test_mkdocs_build_strict(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    documented = {anchor.rpartition(".")[2] for anchor in re.findall(r'id="(patnet[\w.]*)"', api)}
    public = set(patnet.__all__) | set(patnet.deploy.__all__) | set(patnet.detection.__all__)
    public |= {"train_detector", "evaluate_detector", "predict_image", "load_detector"} & set(patnet.detection.engine.__all__)
    public |= set(patnet.detection.sources.__all__) | {"train", "validate", "resolve_dataset", "RunFolder"}
    assert public <= documented, sorted(public - documented)
