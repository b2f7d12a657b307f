"""Attack run: hostile and clumsy uses of the command line, each judged by what it left behind.

Each row replays one defect class of the attack runs behind the reliability issues (lock, symlinks, resume,
outputs over inputs, kills, silent wrong training, bounds, one-line errors) as a user would: real ``patnet``
processes on small generated data, real ``kill -9``, FIFOs, symlinks and sparse files. A row that holds is ``ok``;
one that does not is reported with its severity (``security``, ``data loss`` or ``defect``) and what was seen.

    python experiments/attack.py --output docs/results/attack            # every row, about 6 minutes on 2 cores
    python experiments/attack.py --only lock-symlink,resume-output-over-a-finished-run

Writes ``attack.md`` (the table, machine, versions, date, commit) and ``attack.json``; exit status 1 when any
security or data-loss row fails. Needs only CPU and what ``pip install -e .[dev]`` installs, plus Fashion-MNIST
(``dataset-fashion-mnist``) for the detection rows, which are reported ``skipped`` without it.
"""
import argparse
import gzip
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks/ is not installed

import numpy as np
import torch

from benchmarks.machine import environment
from patnet.data import write_idx

FMNIST = Path("/usr/share/datasets/fashion-mnist")
SEVERITIES = ("security", "data loss", "defect")


class Broken(Exception):
    """The attack succeeded: the row's guarantee does not hold (the message is what was seen)."""


class Skipped(Exception):
    """The row cannot run on this machine (the message says what is missing)."""


@dataclass
class Result:
    rc: int
    out: str
    err: str
    seconds: float

    def error_lines(self) -> List[str]:
        """stderr without the library's log lines (``HH:MM:SS logger: ...``) and progress bars."""
        return [line for line in self.err.splitlines()
                if line.strip() and not (line[:2].isdigit() and line[2:3] == ":") and "it/s" not in line]


def patnet(*args: str, cwd: Optional[Path] = None, timeout: float = 180, env: Optional[Dict[str, str]] = None) -> Result:
    """Run the command line in a fresh interpreter, as a user's shell would."""
    cmd = [sys.executable, "-c", "import sys; from patnet.cli import main; sys.exit(main())", *args]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired:
        raise Broken(f"still running after {timeout:.0f} s: patnet {' '.join(args)}") from None
    return Result(p.returncode, p.stdout, p.stderr, time.perf_counter() - t0)


def one_line(r: Result, *needles: str, within: float = 60) -> str:
    """The result is a user error: exit 2, one ``patnet: error:`` line naming ``needles``, no traceback, quickly."""
    lines = r.error_lines()
    if r.rc != 2 or len(lines) != 1 or not lines[0].startswith("patnet: error:") or "Traceback" in r.err:
        raise Broken(f"rc {r.rc}, stderr: {' | '.join(lines)[-300:] or r.err[-300:]}")
    missing = [n for n in needles if n not in lines[0]]
    if missing:
        raise Broken(f"the error does not name {missing}: {lines[0][:200]}")
    if r.seconds > within:
        raise Broken(f"the error came after {r.seconds:.0f} s (work was done first): {lines[0][:160]}")
    return lines[0][len("patnet: error: "):][:160]


def succeeded(r: Result) -> None:
    if r.rc != 0:
        raise Broken(f"rc {r.rc}: {' | '.join(r.error_lines())[-300:]}")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "absent"


def tree_digest(folder: Path) -> Dict[str, str]:
    return {str(p.relative_to(folder)): digest(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def epochs_logged(run: Path) -> List[int]:
    return [json.loads(line)["epoch"] for line in (run / "log.jsonl").read_text().splitlines()]


# --- the shared material: a small dataset and one finished run, made once -------------------------------------


class Lab:
    """A scratch folder with a small learnable IDX dataset and, on first use, a finished 2-epoch run to copy."""

    TRAIN = ("--model", "patnet_t0", "--epochs", "2", "--img-size", "32", "--batch-size", "16", "--workers", "0",
             "--no-progress", "--seed", "3")

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "idx"
        rng = np.random.default_rng(0)
        self.data.mkdir(parents=True)
        for split, n in (("train", 64), ("t10k", 32)):
            labels = np.arange(n) % 3
            images = rng.integers(0, 60, size=(n, 28, 28), dtype=np.uint8)
            for i, k in enumerate(labels):
                images[i, 2 + 7 * int(k):10 + 7 * int(k), 4:24] = 255
            write_idx(self.data / f"{split}-images-idx3-ubyte.gz", images)
            write_idx(self.data / f"{split}-labels-idx1-ubyte.gz", labels.astype(np.uint8))
        self._finished: Optional[Path] = None
        self._count = 0

    def folder(self, name: str) -> Path:
        self._count += 1
        path = self.root / f"{self._count:02d}-{name}"
        path.mkdir()
        return path

    def train(self, out: Path, *extra: str, data: Optional[Path] = None) -> Result:
        return patnet("train", "--data", str(data or self.data), "--output", str(out), *self.TRAIN, *extra)

    def finished_run(self, dest: Path) -> Path:
        """A copy of a finished 2-epoch run at ``dest`` (trained once per attack run)."""
        if self._finished is None:
            self._finished = self.root / "finished"
            succeeded(self.train(self._finished))
        shutil.copytree(self._finished, dest)
        for lock in dest.glob(".patnet.lock"):
            lock.unlink()
        return dest


# --- the rows ---------------------------------------------------------------------------------------------------


def lock_symlink(lab: Lab) -> str:
    w = lab.folder("lock-symlink")
    victim, out = w / "victim.txt", w / "out"
    victim.write_text("precious\n")
    out.mkdir()
    (out / ".patnet.lock").symlink_to(victim)
    r = lab.train(out)
    if victim.read_text() != "precious\n":
        raise Broken(f"the lock was written through the symlink: victim now {victim.read_text()[:60]!r}")
    return f"victim untouched; rc {r.rc}: {' '.join(r.error_lines())[:120]}"


def checkpoint_chooses_the_folder(lab: Lab) -> str:
    w = lab.folder("checkpoint-chooses")
    victim = lab.finished_run(w / "victim")
    before = tree_digest(victim)
    downloaded = w / "downloaded"
    downloaded.mkdir()
    shutil.copy(victim / "last.pth", downloaded / "last.pth")  # its stored config.output names the victim
    succeeded(patnet("train", "--resume", str(downloaded / "last.pth"), "--epochs", "3", "--no-progress"))
    if tree_digest(victim) != before:
        raise Broken("the resume wrote into the folder stored inside the checkpoint")
    if epochs_logged(downloaded) != [1, 2, 3]:  # the history travels in the checkpoint
        raise Broken(f"the downloaded run's own folder logged {epochs_logged(downloaded)}")
    return "the resume wrote only beside the checkpoint given"


def resume_output_over_a_finished_run(lab: Lab) -> str:
    w = lab.folder("resume-over")
    x, y = lab.finished_run(w / "x"), lab.finished_run(w / "y")
    before = tree_digest(y)
    msg = one_line(patnet("train", "--resume", str(x / "last.pth"), "--output", str(y), "--epochs", "3",
                          "--no-progress"), "--output")
    if tree_digest(y) != before:
        raise Broken("the finished run Y was written")
    return msg


def resume_from_another_directory(lab: Lab) -> str:
    w = lab.folder("resume-cwd")
    run = lab.finished_run(w / "run")
    elsewhere = w / "elsewhere"
    elsewhere.mkdir()
    succeeded(patnet("train", "--resume", str(run / "last.pth"), "--epochs", "3", "--no-progress", cwd=elsewhere))
    if any(elsewhere.iterdir()):
        raise Broken(f"wrote into the working directory: {sorted(p.name for p in elsewhere.iterdir())}")
    if epochs_logged(run) != [1, 2, 3]:
        raise Broken(f"the run logged {epochs_logged(run)}")
    return "extended in its own folder; nothing in the working directory"


def umask_race(lab: Lab) -> str:
    """Files other threads create while the library writes atomically must keep the process umask."""
    import patnet.io

    w = lab.folder("umask")
    old = os.umask(0o022)
    made, stop = [], threading.Event()

    def creator() -> None:
        i = 0
        while not stop.is_set() and i < 20_000:
            p = w / f"other-{i}"
            p.write_bytes(b"x")
            made.append(p)
            i += 1

    t = threading.Thread(target=creator)
    t.start()
    try:
        for i in range(300):
            with patnet.io.atomic_path(w / f"atomic-{i % 5}.bin") as tmp:
                Path(tmp).write_bytes(b"y")
    finally:
        stop.set()
        t.join()
        os.umask(old)
    loose = [p for p in made + sorted(w.glob("atomic-*")) if p.stat().st_mode & 0o002]
    if loose:
        raise Broken(f"{len(loose)} of {len(made) + 5} files came out world-writable")
    return f"{len(made)} files of another thread and 300 atomic writes: none world-writable"


def output_is_a_symlink(lab: Lab) -> str:
    w = lab.folder("out-symlink")
    victim = w / "victim.txt"
    victim.write_text("precious\n")
    (w / "model.onnx").symlink_to(victim)
    succeeded(patnet("export", "patnet_t0", str(w / "model.onnx"), "--img-size", "64", "64", "--num-classes", "3"))
    if victim.read_text() != "precious\n":
        raise Broken("the export wrote through the symlink into its target")
    return "the link was replaced by the file; its target untouched"


def export_over_its_checkpoint(lab: Lab) -> str:
    w = lab.folder("export-over-input")
    run = lab.finished_run(w / "run")
    before = digest(run / "best.pth")
    msg = one_line(patnet("export", "patnet_t0", str(run / "best.pth"), "--checkpoint", str(run / "best.pth"),
                          "--img-size", "32", "32"), "input")
    if digest(run / "best.pth") != before:
        raise Broken("the checkpoint was replaced")
    return msg


def validate_over_a_run(lab: Lab) -> str:
    w = lab.folder("validate-over-run")
    run = lab.finished_run(w / "run")
    before = digest(run / "metrics.json")
    msg = one_line(patnet("validate", "--model", "patnet_t0", "--checkpoint", str(run / "best.pth"), "--data",
                          str(lab.data), "--img-size", "32", "--output", str(run)))
    if digest(run / "metrics.json") != before:
        raise Broken("the run's metrics.json was replaced")
    return msg


def convert_in_place(lab: Lab) -> str:
    import timm

    from patnet.weights import save_pretrained

    w = lab.folder("convert-in-place")
    save_pretrained(timm.create_model("patnet_t0", num_classes=3), w / "pretrained")
    official = w / "official.pth"  # an authors'-layout file, made by the command the other way
    succeeded(patnet("convert", str(w / "pretrained"), str(official), "--to", "official"))
    before = digest(official)
    msg = one_line(patnet("convert", str(official), str(official)), "input")
    if digest(official) != before:
        raise Broken("the authors' checkpoint was converted in place")
    return msg


def kill_after_the_last_checkpoint(lab: Lab) -> str:
    """The state a kill between the final epoch's last.pth and metrics.json leaves must finish on resume."""
    w = lab.folder("kill-before-metrics")
    run = lab.finished_run(w / "run")
    (run / "metrics.json").unlink()
    log = (run / "log.jsonl").read_text().splitlines()
    (run / "log.jsonl").write_text(log[0] + "\n")
    succeeded(patnet("train", "--resume", str(run / "last.pth"), "--no-progress"))
    if not (run / "metrics.json").is_file() or epochs_logged(run) != [1, 2]:
        raise Broken(f"metrics.json {'present' if (run / 'metrics.json').is_file() else 'absent'}, "
                     f"log epochs {epochs_logged(run)}")
    return "finished without training again: metrics.json written, epochs [1, 2] logged once"


def kill_mid_training(lab: Lab) -> str:
    w = lab.folder("kill-mid-run")
    run = w / "run"
    cmd = [sys.executable, "-c", "import sys; from patnet.cli import main; sys.exit(main())", "train", "--data",
           str(lab.data), "--output", str(run), *Lab.TRAIN[:2], "--epochs", "6", *Lab.TRAIN[4:]]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while not (run / "last.pth").exists() and time.time() - t0 < 120 and p.poll() is None:
        time.sleep(0.05)
    time.sleep(0.7)  # into the next epoch
    p.send_signal(signal.SIGKILL)
    p.wait()
    if not (run / "last.pth").exists():
        raise Skipped("the run ended before it could be killed")
    succeeded(patnet("train", "--resume", str(run / "last.pth"), "--no-progress"))
    if epochs_logged(run) != list(range(1, 7)) or not (run / "metrics.json").is_file():
        raise Broken(f"after resume the log has epochs {epochs_logged(run)}")
    leftovers = [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    if leftovers:
        raise Broken(f"temporaries left: {leftovers}")
    return "killed -9 mid-epoch, resumed to the end: epochs 1..6 once each, no temporaries"


def extend_a_finished_run(lab: Lab) -> str:
    w = lab.folder("extend")
    run = lab.finished_run(w / "run")
    succeeded(patnet("train", "--resume", str(run / "last.pth"), "--epochs", "3", "--no-progress"))
    if epochs_logged(run) != [1, 2, 3] or json.loads((run / "metrics.json").read_text())["epochs"] != 3:
        raise Broken(f"log epochs {epochs_logged(run)}")
    msg = one_line(patnet("train", "--resume", str(run / "last.pth"), "--epochs", "1", "--no-progress"), "--epochs")
    return f"extended to 3 epochs; a smaller N: {msg}"


def world_size_mismatch(lab: Lab) -> str:
    """A 2-process checkpoint (the world size written into a 1-process one) resumed by one process."""
    w = lab.folder("world-size")
    run = lab.finished_run(w / "run")
    state = torch.load(run / "last.pth", map_location="cpu", weights_only=True)
    state["world_size"] = 2
    torch.save(state, run / "last.pth")
    return one_line(patnet("train", "--resume", str(run / "last.pth"), "--epochs", "3", "--no-progress"),
                    "2 processes")


def flag(name: str, value: str, needle: str) -> Callable[[Lab], str]:
    def attack(lab: Lab) -> str:
        out = lab.folder(f"flag{name}")
        msg = one_line(lab.train(out / "run", name, value), needle, within=30)
        if (out / "run").exists() and any((out / "run").iterdir()):
            raise Broken(f"wrote {sorted(p.name for p in (out / 'run').iterdir())} before refusing")
        return msg
    attack.__doc__ = f"{name} {value} is refused before any work"
    return attack


def workers_capped(lab: Lab) -> str:
    w = lab.folder("workers")
    r = lab.train(w / "run", "--workers", "1000", "--epochs", "1", "--max-train-batches", "1",
                  "--max-val-batches", "1")
    succeeded(r)
    if "capped" not in r.err:
        raise Broken("no log line says the workers were capped")
    return next(line for line in r.err.splitlines() if "capped" in line)[9:160]


def fifo_in_image_folder(lab: Lab) -> str:
    from PIL import Image

    w = lab.folder("fifo")
    root = w / "imgs"
    for split in ("train", "val"):
        for ci, cls in enumerate("ab"):
            (root / split / cls).mkdir(parents=True)
            for i in range(8):
                Image.new("RGB", (36, 36), (255 * ci, i * 20, 0)).save(root / split / cls / f"{i}.png")
    os.mkfifo(root / "train" / "a" / "x.png")
    r = patnet("train", "--data", str(root), "--output", str(w / "run"), *Lab.TRAIN[:2], "--epochs", "1",
               "--img-size", "32", "--batch-size", "4", "--workers", "0", "--no-progress", timeout=90)
    succeeded(r)
    return "trained to the end; " + next((line[9:130] for line in r.err.splitlines() if "regular" in line),
                                         "no log line")


def idx_gzip_bomb(lab: Lab) -> str:
    """A gzip IDX whose header announces 10 images, followed by 300 MB of zeros (300 kB compressed)."""
    w = lab.folder("idx-bomb")
    shutil.copytree(lab.data, w / "idx")
    with gzip.open(w / "idx" / "train-images-idx3-ubyte.gz", "wb", compresslevel=1) as f:
        f.write(struct.pack(">HBB3I", 0, 0x08, 3, 10, 28, 28))
        block = bytes(1 << 20)
        for _ in range(300):
            f.write(block)
    r = lab.train(w / "run", data=w / "idx")
    return one_line(r, within=30)


def idx_short_header(lab: Lab) -> str:
    w = lab.folder("idx-short")
    shutil.copytree(lab.data, w / "idx")
    with gzip.open(w / "idx" / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(b"\x00\x00\x08")
    return one_line(lab.train(w / "run", data=w / "idx"), within=30)


def idx_two_d_labels(lab: Lab) -> str:
    w = lab.folder("idx-2d-labels")
    shutil.copytree(lab.data, w / "idx")
    write_idx(w / "idx" / "train-labels-idx1-ubyte.gz", np.zeros((64, 2), dtype=np.uint8))
    return one_line(lab.train(w / "run", data=w / "idx"), within=30)


def huge_img_size(lab: Lab) -> str:
    w = lab.folder("huge-size")
    return one_line(lab.train(w / "run", "--img-size", "100000"), "pixels", within=30)


def huge_model_file(lab: Lab) -> str:
    """A 3 GB sparse file named .onnx, handed to validate."""
    w = lab.folder("huge-onnx")
    big = w / "big.onnx"
    with open(big, "wb") as f:
        f.truncate(3 << 30)
    return one_line(patnet("validate", "--onnx", str(big), "--data", str(lab.data)), "PATNET_MAX_MODEL_BYTES", within=30)


def garbage_onnx(lab: Lab) -> str:
    w = lab.folder("garbage-onnx")
    (w / "m.onnx").write_bytes(os.urandom(4096))
    return one_line(patnet("validate", "--onnx", str(w / "m.onnx"), "--data", str(lab.data)), "m.onnx")


def yaml_wrong_type(lab: Lab) -> str:
    w = lab.folder("yaml")
    (w / "c.yaml").write_text("epochs: many\nlr: [1, 2]\n")
    return one_line(lab.train(w / "run", "--config", str(w / "c.yaml")), "epochs", within=30)


def negative_classes_export(lab: Lab) -> str:
    w = lab.folder("num-classes")
    msg = one_line(patnet("export", "patnet_t0", str(w / "m.onnx"), "--num-classes", "-5"), "num_classes")
    if (w / "m.onnx").exists():
        raise Broken("a model file was written")
    return msg


def stale_temporaries(lab: Lab) -> str:
    """Temporaries of a killed writer (a dead pid's ``.OUT.*.tmp``, a ``patnet-quant-*`` folder) are removed."""
    w = lab.folder("debris")
    dead = subprocess.Popen(["true"])
    dead.wait()
    planted = w / f".m.onnx.{dead.pid}-abc.tmp"
    planted.write_bytes(b"half")
    tmp_root = Path(tempfile.gettempdir())
    folder = tmp_root / f"patnet-quant-{dead.pid}-attack"
    folder.mkdir(exist_ok=True)
    succeeded(patnet("export", "patnet_t0", str(w / "m.onnx"), "--img-size", "64", "64", "--num-classes", "3"))
    left = [p.name for p in w.iterdir() if p.name.endswith(".tmp")]
    if left:
        raise Broken(f"left: {left}")
    quant = subprocess.run([sys.executable, "-c", "from patnet.io import temporary_folder\n"
                            "with temporary_folder('patnet-quant-'):\n    pass"], capture_output=True, text=True)
    if folder.exists():
        shutil.rmtree(folder, ignore_errors=True)
        raise Broken(f"a dead run's {folder.name} survived the next temporary folder (rc {quant.returncode})")
    return "a dead writer's .tmp beside the output and its patnet-quant-* folder were removed"


def concurrent_exports(lab: Lab) -> str:
    import onnxruntime as ort

    w = lab.folder("concurrent")
    args = [sys.executable, "-c", "import sys; from patnet.cli import main; sys.exit(main())", "export",
            "patnet_t0", str(w / "m.onnx"), "--img-size", "64", "64"]
    ps = [subprocess.Popen(args + ["--num-classes", str(k)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
          for k in (3, 5)]
    rcs = [p.wait(timeout=300) for p in ps]
    if rcs != [0, 0]:
        raise Broken(f"exit codes {rcs}")
    s = ort.InferenceSession(str(w / "m.onnx"), providers=["CPUExecutionProvider"])
    out = s.run(None, {s.get_inputs()[0].name: np.zeros((1, 3, 64, 64), np.float32)})[0]
    return f"both succeeded; the file is one complete model ({out.shape[1]} classes)"


def concurrent_quantize_pair(lab: Lab) -> str:
    """Two quantize runs to one OUT at once: OUT.onnx and OUT.json must come from the same run."""
    import onnx

    w = lab.folder("quantize-pair")
    base = [sys.executable, "-c", "import sys; from patnet.cli import main; sys.exit(main())", "quantize",
            "patnet_t0", str(w / "q.onnx"), "--calib", str(lab.data), "--img-size", "32", "32", "--calib-images",
            "16", "--eval-images", "16", "--max-drop", "100"]
    ps = [subprocess.Popen(base + ["--num-classes", str(k)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           text=True) for k in (3, 5)]
    rcs = [p.wait(timeout=400) for p in ps]
    if rcs != [0, 0]:
        raise Broken(f"exit codes {rcs}: {[p.stderr.read()[-200:] for p in ps]}")
    model = onnx.load(str(w / "q.onnx"))
    classes = model.graph.output[0].type.tensor_type.shape.dim[1].dim_value
    said = json.loads((w / "q.json").read_text()).get("sha256", {}).get("q.onnx")
    if said != digest(w / "q.onnx"):
        raise Broken(f"the report describes another model file (its sha256 {said}, the file's {digest(w / 'q.onnx')})")
    return f"both succeeded; model and report are one run's ({classes} classes)"


def make_fmnist_killed(lab: Lab) -> str:
    from PIL import Image

    if not FMNIST.is_dir():
        raise Skipped(f"{FMNIST} is missing (sudo apt-get install dataset-fashion-mnist)")
    w = lab.folder("make-fmnist-kill")
    cmd = [sys.executable, "-c", "import sys; from patnet.cli import main; sys.exit(main())", "detect",
           "make-fmnist", str(w / "coco"), "--train-images", "4000", "--val-images", "10"]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while time.time() - t0 < 60 and len(list(w.rglob("*.png"))) < 50:
        time.sleep(0.1)
    p.send_signal(signal.SIGKILL)
    p.wait()
    pngs = list(w.rglob("*.png"))
    broken = []
    for f in pngs:
        try:
            with Image.open(f) as im:
                im.load()
        except Exception:
            broken.append(f.name)
    if broken:
        raise Broken(f"{len(broken)} of {len(pngs)} images under their final names are truncated")
    return f"killed -9 after {len(pngs)} images: every one decodes"


def coco_annotation_bomb(lab: Lab) -> str:
    from PIL import Image

    w = lab.folder("coco-bomb")
    (w / "img").mkdir()
    Image.new("RGB", (64, 64)).save(w / "img" / "a.png")
    anns = [{"id": i, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0}
            for i in range(100_000)]
    (w / "ann.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 64}],
                                            "annotations": anns, "categories": [{"id": 1, "name": "x"}]}))
    r = patnet("detect", "train", "--ann", str(w / "ann.json"), "--images", str(w / "img"), "--output",
               str(w / "run"), "--epochs", "1", "--img-size", "64", "--max-size", "64", timeout=120)
    return one_line(r, "annotations", within=60)


def coco_wrong_types(lab: Lab) -> str:
    from PIL import Image

    w = lab.folder("coco-types")
    (w / "img").mkdir()
    Image.new("RGB", (64, 64)).save(w / "img" / "a.png")
    (w / "ann.json").write_text(json.dumps({"images": [{"id": 1, "file_name": 7, "width": "wide", "height": 64}],
                                            "annotations": [{"id": 1, "image_id": 1, "category_id": "x",
                                                             "bbox": "1,1,5,5"}],
                                            "categories": {"id": 1}}))
    r = patnet("detect", "train", "--ann", str(w / "ann.json"), "--images", str(w / "img"), "--output",
               str(w / "run"), "--epochs", "1", "--img-size", "64", "--max-size", "64", timeout=120)
    return one_line(r, within=60)


def malformed_detector_checkpoint(lab: Lab) -> str:
    w = lab.folder("detector-ckpt")
    torch.save({"model": {"backbone.x": torch.zeros(2)}, "config": {"model": "patnet_t0"}}, w / "d.pth")
    from PIL import Image

    Image.new("RGB", (64, 64)).save(w / "a.png")
    return one_line(patnet("detect", "predict", "--checkpoint", str(w / "d.pth"), "--image", str(w / "a.png"),
                           "--out", str(w / "p.json")), "d.pth")


def kill_mid_quantize(lab: Lab) -> str:
    """A finished OUT.onnx + OUT.json, then a second quantize to OUT killed -9 at several moments: each time the
    pair on disk must be one run's (the report's sha256 of the model is the model's)."""
    w = lab.folder("kill-mid-quantize")
    base = ("quantize", "patnet_t0", str(w / "q.onnx"), "--calib", str(lab.data), "--img-size", "32", "32",
            "--calib-images", "16", "--eval-images", "16", "--max-drop", "100")
    succeeded(patnet(*base, "--num-classes", "3"))
    cmd = [sys.executable, "-c", "import sys; from patnet.cli import main; sys.exit(main())", *base,
           "--num-classes", "5"]
    kills = []
    for delay in (5.0, 7.0, 8.5, 10.0, 11.5):
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        finished = p.poll() is not None
        p.send_signal(signal.SIGKILL)
        p.wait()
        said = json.loads((w / "q.json").read_text()).get("sha256", {}).get("q.onnx")
        if said != digest(w / "q.onnx"):
            raise Broken(f"after a kill at {delay} s the report describes another model than the one beside it")
        kills.append(f"{delay:g} s{' (had finished)' if finished else ''}")
    debris = [f.name for f in w.iterdir() if f.name.startswith(".")]
    return f"killed -9 at {', '.join(kills)}: the pair was one run's each time; hidden temporaries now {debris}"


def huge_size_in_onnx_metadata(lab: Lab) -> str:
    import onnx

    w = lab.folder("onnx-metadata")
    succeeded(patnet("export", "patnet_t0", str(w / "m.onnx"), "--img-size", "64", "64", "--num-classes", "3"))
    model = onnx.load(str(w / "m.onnx"))
    for prop in model.metadata_props:
        if prop.key == "patnet.preprocess":
            pre = json.loads(prop.value)
            pre["img_size"] = [100000, 100000]
            prop.value = json.dumps(pre)
    onnx.save(model, str(w / "m.onnx"))
    return one_line(patnet("validate", "--onnx", str(w / "m.onnx"), "--data", str(lab.data)), "pixels")


def detect_resume_alone(lab: Lab) -> str:
    """A detection run killed -9 after its first epoch, resumed with --resume alone (no --ann / --images)."""
    from patnet.detection.sources import make_fashion_mnist_detection

    w = lab.folder("detect-resume")
    paths = make_fashion_mnist_detection(w / "coco", source=str(lab.data), n_train=4, n_val=2, canvas=64, seed=1)
    run = w / "det"
    cmd = [sys.executable, "-c", "import sys; from patnet.cli import main; sys.exit(main())", "detect", "train",
           "--ann", str(paths["train"]), "--images", str(w / "coco" / "train"), "--img-size", "64", "--batch-size",
           "2", "--max-iters-per-epoch", "1", "--epochs", "12", "--workers", "0", "--output", str(run),
           "--no-progress", "--task", "boxes", "--roi-batch-size", "16"]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while not (run / "last.pth").exists() and time.time() - t0 < 180 and p.poll() is None:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    if not (run / "last.pth").exists():
        raise Skipped("the detection run ended before its first checkpoint")
    succeeded(patnet("detect", "train", "--resume", str(run / "last.pth"), "--workers", "0", "--no-progress",
                     timeout=400))
    logged = epochs_logged(run)
    if logged != list(range(1, 13)):
        raise Broken(f"log epochs {logged}")
    return "killed -9 after its first checkpoint; --resume alone finished epochs 1..12, each logged once"


@dataclass
class Attack:
    name: str
    severity: str
    what: str
    run: Callable[[Lab], str]


ATTACKS = [
    Attack("lock-symlink", "security", "OUT/.patnet.lock is a symlink to a victim file; train into OUT", lock_symlink),
    Attack("checkpoint-chooses-the-folder", "security", "resume a downloaded last.pth whose stored output names "
           "another run", checkpoint_chooses_the_folder),
    Attack("output-is-a-symlink", "security", "the export's output path is a symlink to a victim file",
           output_is_a_symlink),
    Attack("umask-race", "security", "files made by another thread during atomic writes", umask_race),
    Attack("resume-output-over-a-finished-run", "data loss", "--resume X/last.pth --output Y, Y a finished run",
           resume_output_over_a_finished_run),
    Attack("resume-from-another-directory", "data loss", "resume by absolute path from another working directory",
           resume_from_another_directory),
    Attack("export-over-its-checkpoint", "data loss", "export R/best.pth --checkpoint R/best.pth",
           export_over_its_checkpoint),
    Attack("validate-over-a-run", "data loss", "validate --output RUN, RUN a finished training run",
           validate_over_a_run),
    Attack("convert-in-place", "data loss", "convert A.pth A.pth", convert_in_place),
    Attack("concurrent-quantize-pair", "data loss", "two quantize runs to one OUT at once (OUT.onnx + OUT.json)",
           concurrent_quantize_pair),
    Attack("concurrent-exports", "data loss", "two exports to one file at once", concurrent_exports),
    Attack("make-fmnist-killed", "data loss", "kill -9 detect make-fmnist mid-way; are the images whole?",
           make_fmnist_killed),
    Attack("kill-mid-quantize", "data loss", "kill -9 a quantize over a finished OUT.onnx + OUT.json at 5 moments",
           kill_mid_quantize),
    Attack("kill-mid-training", "data loss", "kill -9 a run mid-epoch, then --resume", kill_mid_training),
    Attack("kill-after-the-last-checkpoint", "defect", "the final epoch's last.pth written, metrics.json not; "
           "--resume", kill_after_the_last_checkpoint),
    Attack("extend-a-finished-run", "defect", "--resume RUN/last.pth --epochs 3 after 2; then --epochs 1",
           extend_a_finished_run),
    Attack("detect-resume-alone", "defect", "kill -9 a detection run, then detect train --resume alone",
           detect_resume_alone),
    Attack("world-size-mismatch", "defect", "a 2-process checkpoint resumed by one process", world_size_mismatch),
    Attack("clip-grad-negative", "defect", "--clip-grad -1 (trained uphill)", flag("--clip-grad", "-1", "--clip-grad")),
    Attack("ema-decay-5", "defect", "--model-ema-decay 5", flag("--model-ema-decay", "5", "--model-ema-decay")),
    Attack("smoothing-1", "defect", "--smoothing 1", flag("--smoothing", "1", "--smoothing")),
    Attack("min-lr-nan", "defect", "--min-lr nan", flag("--min-lr", "nan", "--min-lr")),
    Attack("max-train-batches-negative", "defect", "--max-train-batches -1",
           flag("--max-train-batches", "-1", "--max-train-batches")),
    Attack("max-val-batches-0", "defect", "--max-val-batches 0 (wasted an epoch)",
           flag("--max-val-batches", "0", "--max-val-batches")),
    Attack("workers-1000", "defect", "--workers 1000", workers_capped),
    Attack("fifo-in-image-folder", "defect", "a FIFO named x.png among the training images", fifo_in_image_folder),
    Attack("idx-gzip-bomb", "defect", "a gzip IDX announcing 10 images with 300 MB behind its header",
           idx_gzip_bomb),
    Attack("idx-short-header", "defect", "an IDX label file of 3 bytes", idx_short_header),
    Attack("idx-2d-labels", "defect", "IDX labels of shape (N, 2)", idx_two_d_labels),
    Attack("huge-img-size", "defect", "--img-size 100000", huge_img_size),
    Attack("huge-model-file", "defect", "validate --onnx on a 3 GB file", huge_model_file),
    Attack("huge-size-in-onnx-metadata", "defect", "validate --onnx of a model whose metadata says 100000x100000",
           huge_size_in_onnx_metadata),
    Attack("garbage-onnx", "defect", "validate --onnx on random bytes", garbage_onnx),
    Attack("yaml-wrong-type", "defect", "--config with epochs: many", yaml_wrong_type),
    Attack("negative-num-classes", "defect", "export --num-classes -5", negative_classes_export),
    Attack("stale-temporaries", "defect", "a dead writer's .OUT.*.tmp and patnet-quant-* folder",
           stale_temporaries),
    Attack("coco-annotation-bomb", "defect", "100,000 boxes on one COCO image", coco_annotation_bomb),
    Attack("coco-wrong-types", "defect", "COCO fields of the wrong type", coco_wrong_types),
    Attack("malformed-detector-checkpoint", "defect", "detect predict with a malformed checkpoint",
           malformed_detector_checkpoint),
]


def run_attacks(names: Optional[List[str]], scratch: Path) -> List[Dict[str, str]]:
    chosen = [a for a in ATTACKS if not names or a.name in names]
    unknown = sorted(set(names or []) - {a.name for a in ATTACKS})
    if unknown:
        raise SystemExit(f"attack.py: unknown rows {unknown}; the rows are {[a.name for a in ATTACKS]}")
    lab = Lab(scratch)
    rows = []
    for a in chosen:
        t0 = time.perf_counter()
        try:
            verdict, seen = "ok", a.run(lab)
        except Broken as e:
            verdict, seen = a.severity, str(e)
        except Skipped as e:
            verdict, seen = "skipped", str(e)
        except Exception as e:  # the harness itself, or the library, broke in a way no row expected
            verdict, seen = a.severity, f"unexpected {type(e).__name__}: {str(e)[:200]}"
        rows.append({"name": a.name, "severity": a.severity, "attack": a.what, "verdict": verdict,
                     "seen": " ".join(seen.split()), "seconds": f"{time.perf_counter() - t0:.1f}"})
        print(f"{verdict:>9}  {a.name}  ({rows[-1]['seconds']} s)  {rows[-1]['seen'][:110]}", flush=True)
    return rows


def write_report(rows: List[Dict[str, str]], out: Path, command: str) -> None:
    from patnet.io import atomic_files

    env = environment()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    counts = {v: sum(r["verdict"] == v for r in rows) for v in ("ok", *SEVERITIES, "skipped")}
    lines = [
        "# Attack run", "",
        f"`{command}` at commit {commit}, {env['date']}.", "",
        f"Machine: {env['cpu']} ({', '.join(env['cpu_features'])}), {env['logical_cpus']} logical CPUs; "
        f"Python {env['python']}, torch {env['torch']}, timm {env['timm']}, onnxruntime {env.get('onnxruntime')}.",
        "",
        "Totals: " + ", ".join(f"{v} {n}" for v, n in counts.items()) + ".", "",
        "| row | severity if it fails | attack | verdict | what was seen |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {r['name']} | {r['severity']} | {r['attack']} | **{r['verdict']}** | "
              f"{r['seen'].replace('|', '/')} |" for r in rows]
    with atomic_files(out / "attack.md", out / "attack.json") as tmp:
        (tmp / "attack.md").write_text("\n".join(lines) + "\n")
        (tmp / "attack.json").write_text(json.dumps({"commit": commit, "environment": env, "command": command,
                                                     "totals": counts, "rows": rows}, indent=2) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", type=Path, default=Path("outputs/attack"))
    ap.add_argument("--only", default="", help="comma-separated row names (default: every row)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder (its path is printed)")
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n] or None
    scratch = Path(tempfile.mkdtemp(prefix="patnet-attack-"))
    try:
        rows = run_attacks(names, scratch)
    finally:
        if args.keep:
            print(f"scratch kept in {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    args.output.mkdir(parents=True, exist_ok=True)
    write_report(rows, args.output, "python experiments/attack.py " + " ".join(sys.argv[1:]))
    print(f"wrote {args.output / 'attack.md'}")
    return 1 if any(r["verdict"] in ("security", "data loss") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
