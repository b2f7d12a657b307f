"""Shared helpers and fixtures: the parity vectors (copied from ../shared/parity, made by running the authors' code),
small datasets, a small training configuration, export tolerances."""
import errno
import os
from pathlib import Path

import pytest
import torch

import patnet.io
import patnet.models.patnet

DATA = Path(__file__).parent / "data"
PARITY_FILES = sorted(p.name for p in DATA.glob("*.pt"))


def load_parity(name: str) -> dict:
    return torch.load(DATA / name, weights_only=True)


# Behaviour sweeps run T0..S: M and L are S with more channels and blocks (same block kinds), and timm's own model
# tests (test_timm_contract.py) and the spec's table still cover them, as timm caps the sizes its sweeps build.
SWEEP = [v for v in patnet.models.patnet.VARIANTS if v not in ("patnet_m", "patnet_l")]


def pytest_configure(config):
    # Under pytest-xdist (-n N) the workers share the cores: each gets its share of threads, and so do the
    # processes its tests start, instead of every worker running one thread per core and oversubscribing them.
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        share = str(max(1, len(os.sched_getaffinity(0)) // workers))
        os.environ.setdefault("OMP_NUM_THREADS", share)
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_collection_modifyitems(config, items):
    # The slow tests first. With pytest-xdist handing out one test at a time (-n auto --maxschedchunk 1, the README's
    # command) every worker then starts on a long test and the short ones fill the gaps (longest-first scheduling),
    # instead of a worker running an 80 s test alone at the end: 309 s -> 266 s on 2 cores, paired runs.
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


def make_idx_dataset(root: Path, n_train: int = 96, n_val: int = 48, classes: int = 3, gz: bool = True,
                     size: int = 28, seed: int = 0) -> Path:
    """Write a small learnable MNIST-format dataset: class k is a bright square at a class-specific place."""
    import numpy as np

    from patnet.data import write_idx

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    for split, n in (("train", n_train), ("t10k", n_val)):
        labels = np.arange(n) % classes
        images = rng.integers(0, 60, size=(n, size, size), dtype=np.uint8)
        for i, k in enumerate(labels):
            r0 = 2 + 7 * int(k)
            images[i, r0:r0 + 8, 4:24] = 255
        write_idx(root / f"{split}-images-idx3-ubyte{ext}", images)
        write_idx(root / f"{split}-labels-idx1-ubyte{ext}", labels.astype(np.uint8))
    return root


def make_image_folder(root: Path, classes=("a", "b"), per_class: int = 6, size: int = 40) -> Path:
    """train/ and val/ trees of small PNGs (grey, RGB and RGBA mixed)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for ci, cls in enumerate(classes):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                arr = rng.integers(0, 255, size=(size, size, 3), dtype=np.uint8)
                arr[:, : size // 2] = 255 if ci else 0
                mode = ("L", "RGB", "RGBA")[i % 3]
                Image.fromarray(arr).convert(mode).save(folder / f"{i}.png")
    return root


# An export must match PyTorch within this fraction of the largest logit (config.DEFAULT_TOLERANCE's bar).
REL_TOL = 1e-5


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def randomise_bn(model: torch.nn.Module) -> torch.nn.Module:
    """Random BatchNorm statistics and affines, so folding them is actually tested."""
    import patnet

    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g) * 0.5 + 1)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.2)
        if isinstance(m, patnet.models.patnet.EuclideanRelPosBias):
            m.bias_table.data.normal_(generator=g)
    return model


def small_run(data, out, **kw):
    """A TrainConfig that trains patnet_t0 for 2 epochs at 32 px on a few images, with the recipe's randomness off."""
    from patnet.config import TrainConfig

    base = dict(model="patnet_t0", data=str(data), output=str(out), epochs=2, batch_size=16, img_size=32,
                workers=0, progress=False, seed=3, mixup=0.0, cutmix=0.0, auto_augment="none", scale=(0.6, 1.0),
                crop_pct=1.0, lr=2e-3)
    base.update(kw)
    return TrainConfig(**base)


def interrupt_at_epoch(monkeypatch, epoch_index: int) -> None:
    """Make a run stop with KeyboardInterrupt as epoch ``epoch_index`` begins (its seeding is the hook)."""
    import patnet.train as T

    real = T.seed_everything
    calls = {"n": 0}

    def seed(s):
        if calls["n"] == epoch_index + 1:  # the first call seeds the initial weights
            raise KeyboardInterrupt
        calls["n"] += 1
        real(s)

    monkeypatch.setattr(T, "seed_everything", seed)


def disk_full_at(monkeypatch, name):
    """ENOSPC when the write of ``name`` is flushed (what a full disk does to a buffered or delayed-allocation write):
    every command writes through patnet.io's atomic writers, so this reaches each of them at that file."""
    real = patnet.io.fsync_path

    def fsync(path):
        p = Path(path)
        if p.is_file() and (p.name.startswith(f".{name}.") or (p.name == name and p.parent.name.endswith(".tmp"))):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path)

    monkeypatch.setattr(patnet.io, "fsync_path", fsync)
