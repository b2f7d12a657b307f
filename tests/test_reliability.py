"""No lost runs and no hostile paths: locks that die with the run, symlinks, full disks, power loss, resume folders."""
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import patnet.io as pio
from patnet.cli import main
from patnet.runs import RunFolder, RunFolderError
from patnet.train import train

from conftest import disk_full_at, make_idx_dataset, small_run


@pytest.fixture()
def idx_data(tmp_path):
    return make_idx_dataset(tmp_path / "idx", n_train=48, n_val=24)


def test_lock_dies_with_the_run_not_with_its_forked_workers(tmp_path):
    """A run killed with -9 while a forked worker lives on frees its folder at once."""
    run = tmp_path / "run"
    script = textwrap.dedent(f"""
        import os, signal, time
        from patnet.runs import RunFolder
        folder = RunFolder({str(run)!r}).__enter__()
        worker = os.fork()
        if worker == 0:             # a data-loader-like worker that outlives its parent
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)     # off the test's pipes, so the test sees the parent's end at once
            os.dup2(devnull, 2)
            time.sleep(30)
            os._exit(0)
        print("locked", worker, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9 and "locked" in proc.stdout
    worker = int(proc.stdout.split()[-1])
    try:
        os.kill(worker, 0)  # the orphaned worker still lives (and still holds the inherited descriptors) ...
        with RunFolder(run):  # ... and the folder is free anyway
            pass
    finally:
        os.kill(worker, signal.SIGKILL)


def test_lock_file_symlink_is_refused_and_its_target_untouched(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    run = tmp_path / "run"
    run.mkdir()
    (run / ".patnet.lock").symlink_to(victim)
    with pytest.raises(RunFolderError, match="is a symbolic link"):
        with RunFolder(run):
            pass
    assert victim.read_text() == "precious"


def test_atomic_write_never_touches_the_umask(tmp_path, monkeypatch):
    """Changing the process umask for a moment made other threads' files world-writable."""
    def no_umask(*_):
        raise AssertionError("atomic_path changed the process umask")

    monkeypatch.setattr(os, "umask", no_umask)
    with pio.atomic_path(tmp_path / "a.txt") as tmp:
        tmp.write_text("x")
    assert (tmp_path / "a.txt").read_text() == "x"
    assert (tmp_path / "a.txt").stat().st_mode & 0o002 == 0


def test_atomic_write_fsyncs_the_file_and_its_folder(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real(fd))
    with pio.atomic_path(tmp_path / "a.bin") as tmp:
        tmp.write_bytes(b"1")
    assert any(s.endswith(".tmp") for s in synced) and str(tmp_path) in synced


def test_atomic_temporary_is_not_created_through_a_planted_symlink(tmp_path, monkeypatch):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    names = iter(["aaaa", "bbbb"])
    monkeypatch.setattr(pio.secrets, "token_hex", lambda n: next(names))
    (tmp_path / f".out.txt.{os.getpid()}-aaaa.tmp").symlink_to(victim)  # a guessed temporary name, planted
    with pio.atomic_path(tmp_path / "out.txt") as tmp:
        tmp.write_text("new")
    assert victim.read_text() == "precious" and (tmp_path / "out.txt").read_text() == "new"


def _full_disk(monkeypatch):
    def write_bytes(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", write_bytes)


def test_full_disk_torchscript_export_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    _full_disk(monkeypatch)
    out = tmp_path / "m.pt"
    assert main(["export", "patnet_t0", str(out), "--format", "torchscript", "--img-size", "64", "64"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert err == f"patnet: error: cannot write {out}: the disk is full; the previous m.pt is unchanged"
    assert list(tmp_path.iterdir()) == []


def test_full_disk_convert_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    from conftest import load_parity

    d = load_parity("patnet_t0_official_cfg.pt")
    src = tmp_path / "official.pth"
    torch.save({"state_dict": d["state_dict"]}, src)
    _full_disk(monkeypatch)
    assert main(["convert", str(src), str(tmp_path / "w"), "--act", "gelu"]) == 2
    assert "the disk is full" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["official.pth"]


def test_atomic_files_write_as_a_unit(tmp_path):
    (tmp_path / "m.onnx").write_text("old model")
    (tmp_path / "m.json").write_text("old report")
    with pytest.raises(RuntimeError):
        with pio.atomic_files(tmp_path / "m.json", tmp_path / "m.onnx") as tmp:
            (tmp / "m.json").write_text("new report")
            raise RuntimeError("killed between the two files")
    assert (tmp_path / "m.onnx").read_text() == "old model" and (tmp_path / "m.json").read_text() == "old report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.onnx"]


def test_resume_writes_to_the_checkpoints_folder_not_the_one_stored_in_it(idx_data, tmp_path):
    train(small_run(idx_data, tmp_path / "run1", epochs=1))
    theirs = tmp_path / "downloaded"
    theirs.mkdir()
    (theirs / "last.pth").write_bytes((tmp_path / "run1" / "last.pth").read_bytes())  # its config says run1
    before = (tmp_path / "run1" / "log.jsonl").read_text()
    assert main(["train", "--resume", str(theirs / "last.pth"), "--epochs", "2", "--no-progress"]) == 0
    assert (tmp_path / "run1" / "log.jsonl").read_text() == before  # run1 untouched
    assert len((theirs / "log.jsonl").read_text().splitlines()) == 2 and (theirs / "metrics.json").is_file()


def test_run_killed_after_its_last_checkpoint_finishes_on_resume(idx_data, tmp_path):
    run = tmp_path / "run"
    train(small_run(idx_data, run, epochs=2))
    (run / "metrics.json").unlink()  # what a kill between last.pth and the final writes leaves
    log = (run / "log.jsonl").read_text().splitlines()
    (run / "log.jsonl").write_text(log[0] + "\n")
    main(["train", "--resume", str(run / "last.pth"), "--no-progress"])
    assert len((run / "log.jsonl").read_text().splitlines()) == 2
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 2


def test_resume_with_more_epochs_extends_the_run(idx_data, tmp_path, capsys):
    run = tmp_path / "run"
    train(small_run(idx_data, run, epochs=2))
    assert main(["train", "--resume", str(run / "last.pth"), "--epochs", "1", "--no-progress"]) == 2
    assert "--epochs 1 (the run is set for 2; a resume can only extend it)" in capsys.readouterr().err
    assert main(["train", "--resume", str(run / "last.pth"), "--epochs", "3", "--no-progress"]) == 0
    history = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 3
    assert main(["train", "--resume", str(run / "last.pth"), "--no-progress"]) == 2
    assert "already finished its 3 epochs" in capsys.readouterr().err


@pytest.mark.parametrize("argv,cls", [(["train"], "TrainConfig"), (["detect", "train"], "DetectConfig")])
def test_every_run_option_is_a_flag_and_the_resume_help_lists_what_a_resume_may_change(argv, cls, capsys):
    from dataclasses import fields

    import patnet.config as config

    options = fields(getattr(config, cls))
    with pytest.raises(SystemExit):
        main(argv + ["--help"])
    shown = "".join(capsys.readouterr().out.split())  # argparse wraps (and breaks words at hyphens)
    for f in options:
        flag = ("--no-" if f.default is True else "--") + f.name.replace("_", "-")
        assert f"[{flag}" in shown, flag
    changeable = {f.name for f in options if config.may_change_on_resume(f)}
    assert {"workers", "progress", "resume"} <= changeable and not {"lr", "epochs", "model", "data"} & changeable
    resume_help = "".join(config.resume_help(getattr(config, cls)).split())
    assert resume_help in shown and "--no-progress" in resume_help and "--workers" in resume_help
    assert "--lr," not in resume_help and "--model," not in resume_help


def test_no_command_writes_over_its_own_input(idx_data, tmp_path, capsys):
    from conftest import load_parity

    d = load_parity("patnet_t0_official_cfg.pt")
    official = tmp_path / "official.pth"
    torch.save({"state_dict": d["state_dict"]}, official)
    before = official.read_bytes()
    cases = [
        ["export", "patnet_t0", str(official), "--checkpoint", str(official), "--img-size", "64", "64"],
        ["convert", str(official), str(official), "--act", "gelu"],
        ["convert", str(official), str(tmp_path / "." / "official.pth"), "--act", "gelu"],
        ["quantize", "patnet_t0", str(tmp_path / "official.onnx"), "--checkpoint", str(tmp_path / "official.json"),
         "--calib", str(idx_data)],
    ]
    (tmp_path / "official.json").write_bytes(before)
    for argv in cases:
        assert main(argv) == 2, argv
        assert "also this command's input" in capsys.readouterr().err
    assert official.read_bytes() == before and (tmp_path / "official.json").read_bytes() == before
    run = tmp_path / "run"
    train(small_run(idx_data, run, epochs=1))
    metrics = (run / "metrics.json").read_text()
    assert main(["validate", "--model", "patnet_t0", "--checkpoint", str(run / "best.pth"), "--data", str(idx_data),
                 "--img-size", "32", "--output", str(run)]) == 2
    assert "holds a training run" in capsys.readouterr().err and (run / "metrics.json").read_text() == metrics


@pytest.mark.parametrize("flag, value, message", [
    ("--clip-grad", "-1", "--clip-grad must be a finite number >= 0"),
    ("--model-ema-decay", "5", "--model-ema-decay must be in (0, 1)"),
    ("--smoothing", "1", "--smoothing must be in [0, 1)"),
    ("--min-lr", "nan", "--min-lr must be a finite number >= 0"),
    ("--max-train-batches", "-1", "--max-train-batches must be at least 1"),
    ("--max-val-batches", "0", "--max-val-batches must be at least 1"),
    ("--workers", "-2", "--workers must be at least 0"),
])
def test_silent_wrong_training_flags_are_refused_before_any_work(tmp_path, capsys, flag, value, message):
    out = tmp_path / "o"
    assert main(["train", "--output", str(out), flag, value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and not out.exists()


def test_workers_are_capped_to_the_cores(idx_data, tmp_path, caplog):
    with caplog.at_level("INFO", logger="patnet"):
        train(small_run(idx_data, tmp_path / "run", epochs=1, workers=64, max_train_batches=1, max_val_batches=1))
    assert "--workers 64 capped to the" in caplog.text


def test_process_group_timeout_is_set_and_stated(monkeypatch):
    import patnet.runs as E

    seen = {}
    monkeypatch.setattr(E.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(E.dist, "init_process_group", lambda backend, **kw: seen.update(backend=backend, **kw))
    monkeypatch.setattr(E.torch.cuda, "is_available", lambda: False)
    for key, value in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(key, value)
    E.init_distributed()
    assert seen["backend"] == "gloo" and seen["timeout"].total_seconds() == E.DIST_TIMEOUT_SECONDS == 600
    monkeypatch.setenv("PATNET_DIST_TIMEOUT", "45")
    E.init_distributed()
    assert seen["timeout"].total_seconds() == 45
    monkeypatch.setenv("PATNET_DIST_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="PATNET_DIST_TIMEOUT must be a number of seconds"):
        E.init_distributed()


def _tiny_coco(root):
    from PIL import Image

    (root / "img").mkdir(parents=True)
    rng = __import__("numpy").random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype="uint8")).save(root / "img" / f"{i}.png")
    ann = {"images": [{"id": i, "file_name": f"{i}.png", "width": 64, "height": 64} for i in range(2)],
           "categories": [{"id": 1, "name": "thing"}],
           "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [8, 8, 30, 30], "iscrowd": 0}
                           for i in range(2)]}
    (root / "ann.json").write_text(json.dumps(ann))
    return root / "ann.json", root / "img"


@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory):
    """A classification and a detection run to read from (made before any fault is injected)."""
    from patnet.detection.engine import DetectConfig, train_detector

    root = tmp_path_factory.mktemp("inputs")
    data = make_idx_dataset(root / "idx", n_train=48, n_val=24)
    train(small_run(data, root / "cls", epochs=1))
    ann, img = _tiny_coco(root / "coco")
    train_detector(DetectConfig(model="patnet_t0", ann=str(ann), images=str(img), task="boxes", epochs=1,
                                batch_size=2, img_size=64, workers=0, output=str(root / "det"), progress=False,
                                roi_batch_size=16, warmup_iters=1))
    return {"data": data, "ckpt": root / "cls" / "last.pth", "ann": ann, "img": img, "det": root / "det" / "last.pth"}


FULL_DISK_CASES = {
    "train": ("last.pth", lambda r, o: ["train", "--model", "patnet_t0", "--data", str(r["data"]), "--epochs", "1",
                                        "--img-size", "32", "--batch-size", "8", "--workers", "0", "--no-progress",
                                        "--output", str(o)]),
    "detect train": ("last.pth", lambda r, o: ["detect", "train", "--model", "patnet_t0", "--ann", str(r["ann"]),
                                               "--images", str(r["img"]), "--epochs", "1", "--batch-size", "2",
                                               "--img-size", "64", "--workers", "0", "--no-progress",
                                               "--roi-batch-size", "16", "--warmup-iters", "1", "--output", str(o)]),
    "validate --output": ("metrics.json", lambda r, o: ["validate", "--model", "patnet_t0", "--checkpoint",
                                                        str(r["ckpt"]), "--data", str(r["data"]), "--img-size",
                                                        "32", "--output", str(o)]),
    "export onnx": ("m.onnx", lambda r, o: ["export", "patnet_t0", str(o / "m.onnx"), "--img-size", "64", "64"]),
    "export torchscript": ("m.pt", lambda r, o: ["export", "patnet_t0", str(o / "m.pt"), "--format", "torchscript",
                                                 "--img-size", "64", "64"]),
    # --max-drop 100: this checks the write, not int8 accuracy (an untrained model's agreement means nothing).
    "quantize": ("q.onnx", lambda r, o: ["quantize", "patnet_t0", str(o / "q.onnx"), "--calib", str(r["data"]),
                                         "--calib-images", "8", "--eval-images", "8", "--img-size", "32", "32",
                                         "--max-drop", "100"]),
    "quantize openvino": ("q.xml", lambda r, o: ["quantize", "patnet_t0", str(o / "q.xml"), "--runtime", "openvino",
                                                 "--calib", str(r["data"]), "--calib-images", "8", "--eval-images",
                                                 "8", "--img-size", "32", "32", "--max-drop", "100"]),
    "detect predict": ("pred.png", lambda r, o: ["detect", "predict", "--checkpoint", str(r["det"]), "--image",
                                                 str(r["img"] / "0.png"), "--out", str(o / "pred.png")]),
}


@pytest.mark.slow
@pytest.mark.parametrize("command", list(FULL_DISK_CASES))
def test_full_disk_is_one_line_and_leaves_no_temporary(command, finished_runs, tmp_path, monkeypatch, capsys):
    name, argv = FULL_DISK_CASES[command]
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_bytes(b"previous")  # what the full disk must not damage
    if command in ("train", "detect train"):
        (out / name).unlink()  # a run folder that holds a run would be refused before any work
    disk_full_at(monkeypatch, name)
    assert main(argv(finished_runs, out)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == f"patnet: error: cannot write {out / name}: the disk is full; the previous {name} is unchanged"
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    if (out / name).exists():
        assert (out / name).read_bytes() == b"previous"


def test_temporaries_of_killed_writers_are_removed_at_the_next_write(tmp_path, monkeypatch):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid names temporaries nobody is writing any more
    stale = tmp_path / f".out.txt.{dead.pid}-abcd1234.tmp"
    stale.write_text("half a file")
    live = tmp_path / f".out.txt.{os.getppid()}-abcd1234.tmp"  # a live process's write in progress
    live.write_text("being written")
    with pio.atomic_path(tmp_path / "out.txt") as tmp:
        tmp.write_text("new")
    assert not stale.exists() and live.exists() and (tmp_path / "out.txt").read_text() == "new"
    # The scratch folders of quantize (and the benchmarks) in the system's temporary directory, likewise.
    monkeypatch.setattr(pio.tempfile, "gettempdir", lambda: str(tmp_path))
    (tmp_path / f"patnet-quant-{dead.pid}-x1y2z3").mkdir()
    (tmp_path / f"patnet-quant-{dead.pid}-x1y2z3" / "fp32.onnx").write_bytes(b"0" * 100)
    (tmp_path / f"patnet-quant-{os.getppid()}-a1b2c3").mkdir()
    with pio.temporary_folder("patnet-quant-") as scratch:
        assert scratch.parent == tmp_path and scratch.name.startswith(f"patnet-quant-{os.getpid()}-")
    assert sorted(p.name for p in tmp_path.glob("patnet-quant-*")) == [f"patnet-quant-{os.getppid()}-a1b2c3"]


def _ddp_train_args(data: Path, out: Path, epochs: int) -> list:
    return ["train", "--data", str(data), "--output", str(out), "--epochs", str(epochs), "--batch-size", "8",
            "--img-size", "32", "--workers", "0", "--mixup", "0", "--cutmix", "0", "--auto-augment", "none",
            "--no-progress", "--crop-pct", "1.0"]


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["kill", "stop"])
def test_a_lost_rank_ends_the_run_in_bounded_time_and_the_run_resumes(idx_data, tmp_path, fault):
    # Two gloo ranks started by hand (as a multi-node launcher would: no torchrun agent to stop the survivor).
    # kill -9 of rank 1: rank 0 sees the connection drop at its next collective. SIGSTOP of rank 1 (a hung rank):
    # rank 0 waits the process-group timeout, here PATNET_DIST_TIMEOUT=5 s. Either way rank 0 ends in one line.
    import signal

    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATNET_DIST_TIMEOUT": "5", "WORLD_SIZE": "2",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29561" if fault == "kill" else "29562"}
    ranks = [subprocess.Popen([sys.executable, "-m", "patnet.cli", *_ddp_train_args(idx_data, out, 4)],
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for r in range(2)]
    try:
        deadline = time.monotonic() + 240
        log = out / "log.jsonl"
        while not (log.exists() and log.read_text().count("\n") >= 1):
            assert time.monotonic() < deadline and ranks[0].poll() is None, "no epoch finished"
            time.sleep(0.02)
        ranks[1].send_signal(signal.SIGKILL if fault == "kill" else signal.SIGSTOP)
        lost = time.monotonic()
        _, err = ranks[0].communicate(timeout=120)
        waited = time.monotonic() - lost
    finally:
        for p in ranks:
            p.kill()
            p.communicate()
    assert waited < (30 if fault == "kill" else 5 + 30), waited
    assert ranks[0].returncode == 2
    lines = [line for line in err.splitlines() if line.startswith("patnet: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert "rank 0 of 2 lost the other ranks" in lines[0] and f"resume from {out / 'last.pth'} on 2 processes" in lines[0]
    # The last checkpoint stays valid: two processes continue it to the end, and (checked once, with the kill: the
    # refusal reads the checkpoint only, whatever ended the run) one process is refused in one line.
    assert json.loads(log.read_text().splitlines()[-1])["epoch"] < 4
    if fault == "kill":
        one = subprocess.run([sys.executable, "-m", "patnet.cli", "train", "--resume", str(out / "last.pth")],
                             capture_output=True, text=True, timeout=300,
                             env={k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK")})
        refusal = [line for line in one.stderr.splitlines() if line.startswith("patnet: error:")]
        assert one.returncode == 2 and len(refusal) == 1 and "2 processes" in refusal[0], one.stderr
        assert "Traceback" not in one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                          env["MASTER_PORT"], "-m", "patnet.cli", "train", "--resume", str(out / "last.pth")],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert two.returncode == 0, two.stderr[-2000:]
    history = [json.loads(line)["epoch"] for line in log.read_text().splitlines()]
    assert history == [1, 2, 3, 4]
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 4


def _commit_pairs(folder: str, me: str, rounds: int, barrier, slow: bool) -> None:
    import patnet.io as io_

    if slow:  # widen the window between the pair's two renames, where an unlocked commit would interleave
        replace = os.replace

        def slow_replace(src, dst):
            replace(src, dst)
            time.sleep(0.002)
        io_.os.replace = slow_replace
    for _ in range(rounds):
        barrier.wait()
        with io_.atomic_files(Path(folder) / "model.onnx", Path(folder) / "model.json") as staged:
            (staged / "model.onnx").write_text(me)
            (staged / "model.json").write_text(me)
        barrier.wait()


def test_concurrent_writers_of_one_pair_never_leave_a_mix(tmp_path):
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(3)  # two writers commit at once, then this process reads what they left
    rounds = 40
    writers = [ctx.Process(target=_commit_pairs, args=(str(tmp_path), me, rounds, barrier, True)) for me in "AB"]
    for w in writers:
        w.start()
    left = []
    for _ in range(rounds):
        barrier.wait()
        barrier.wait()
        left.append(((tmp_path / "model.onnx").read_text(), (tmp_path / "model.json").read_text()))
    for w in writers:
        w.join(120)
    assert [w.exitcode for w in writers] == [0, 0]
    assert [pair for pair in left if pair[0] != pair[1]] == []  # every round: one writer's whole pair
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.onnx"]  # no temporaries left


def test_two_exports_to_one_file_at_once_leave_one_complete_model(tmp_path):
    import onnx

    out = tmp_path / "m.onnx"
    runs = [subprocess.Popen([sys.executable, "-m", "patnet.cli", "export", model, str(out), "--img-size", "64", "64"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"}) for model in ("patnet_t0", "fasternet_t0")]
    errs = [p.communicate(timeout=300)[1] for p in runs]
    assert [p.returncode for p in runs] == [0, 0], errs
    onnx.checker.check_model(str(out), full_check=True)  # one whole model: either run's, never a torn file
    names = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert names  # it loads and has a graph
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_an_interrupted_detection_dataset_holds_only_whole_images(tmp_path, monkeypatch):
    """`detect make-fmnist` stopped mid-way (here: interrupted inside an image's write, after three whole ones)
    leaves every file under its final name decodable and no temporary behind; it once left a truncated PNG."""
    from PIL import Image

    from patnet.detection.sources import make_fashion_mnist_detection

    idx = make_idx_dataset(tmp_path / "idx", n_train=16, n_val=8)
    real, calls = Image.Image.save, []

    def save(self, fp, *args, **kwargs):
        calls.append(fp)
        if len(calls) == 4:
            Path(fp).write_bytes(b"\x89PNG\r\n\x1a\n")  # the start of a PNG, as a kill mid-write leaves it
            raise KeyboardInterrupt
        return real(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)
    with pytest.raises(KeyboardInterrupt):
        make_fashion_mnist_detection(tmp_path / "coco", source=str(idx), n_train=8, n_val=4, canvas=64, seed=1)
    files = sorted(p for p in (tmp_path / "coco").rglob("*") if p.is_file())
    assert len(files) == 3, files  # the three images written before the interruption, nothing else
    for p in files:
        with Image.open(p) as im:
            im.verify()
