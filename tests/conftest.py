"""Shared fixtures: the parity vectors (copied from ../shared/parity, made by running the authors' code)."""
from pathlib import Path

import pytest
import torch

DATA = Path(__file__).parent / "data"
PARITY_FILES = sorted(p.name for p in DATA.glob("*.pt"))


def load_parity(name: str) -> dict:
    return torch.load(DATA / name, weights_only=True)


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
