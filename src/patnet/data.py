"""Classification data: MNIST-family IDX files and image-folder trees, with timm's transforms.

``--data`` accepts:

* ``fashion-mnist`` / ``mnist``: the IDX files of Debian's ``dataset-fashion-mnist`` (``/usr/share/datasets/
  fashion-mnist``) or of ``$PATNET_DATA/<name>``;
* a folder holding the four standard IDX files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each raw or ``.gz``);
* a folder with ``train/`` and ``val/`` trees of class folders (timm / torchvision ``ImageFolder`` layout).

Grey images become 3-channel RGB; every image is resized by the transform to ``img_size``. An unreadable image is
skipped (logged with its path and counted) unless ``strict`` is set, so a bad file never ends an epoch.
"""
import gzip
import logging
import math
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Hashable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from PIL import Image
from torch.utils.data import Dataset

__all__ = [
    "IdxDataset",
    "ImageFolderDataset",
    "DatasetInfo",
    "resolve_dataset",
    "build_transform",
    "collate_skip_bad",
    "read_idx",
    "write_idx",
    "KNOWN_IDX_DATASETS",
    "open_rgb",
    "MAX_IMAGE_PIXELS",
    "check_input_size",
    "MAX_IDX_BYTES",
]

_log = logging.getLogger(__name__)

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif")
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
KNOWN_IDX_DATASETS = {
    "fashion-mnist": ["/usr/share/datasets/fashion-mnist"],
    "mnist": ["/usr/share/datasets/mnist"],
}
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)


# Largest image decoded, in pixels (PATNET_MAX_IMAGE_PIXELS overrides): a 40 Mpx photo is 120 MB as RGB; anything
# larger (or a decompression bomb) is refused before decoding instead of taking the machine's memory.
MAX_IMAGE_PIXELS = int(os.environ.get("PATNET_MAX_IMAGE_PIXELS", 40_000_000))


def check_input_size(height: int, width: int, what: str) -> None:
    """Refuse an input size (from a flag, a file's metadata or a checkpoint) whose tensors would exceed the same
    ``MAX_IMAGE_PIXELS`` bound decoded images have, before anything is allocated."""
    if not (isinstance(height, int) and isinstance(width, int)) or height < 1 or width < 1:
        raise ValueError(f"{what} must be positive whole numbers of pixels, got {height}x{width}")
    if height * width > MAX_IMAGE_PIXELS:
        raise ValueError(f"{what} {height}x{width} is more than the {MAX_IMAGE_PIXELS:,} pixels allowed per image "
                         "(set PATNET_MAX_IMAGE_PIXELS to raise it)")


def open_rgb(path: Any, max_pixels: Optional[int] = None) -> Image.Image:
    """An image file as 8-bit RGB, whatever its mode.

    16-bit and 32-bit integer images are scaled by their range (65535 for 16-bit) and float images by theirs
    (0..1 taken as is), instead of saturating to white as ``convert('RGB')`` does; palette, grey and alpha images
    become RGB. The size is checked from the header before any pixel is decoded.

    Raises:
        ValueError: The image is larger than ``max_pixels`` (default ``MAX_IMAGE_PIXELS``).
        OSError: The file is not a readable image.
    """
    limit = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    if isinstance(path, (str, os.PathLike)) and not stat.S_ISREG(os.stat(path).st_mode):
        # a FIFO, socket or device under an image's name would block the read forever or never end it
        raise OSError(f"{path} is not a regular file")
    with Image.open(path) as im:
        if im.width * im.height > limit:
            raise ValueError(f"image {getattr(path, 'name', path)} is {im.width}x{im.height}, more than the "
                             f"{limit:,} pixels decoded at most (set PATNET_MAX_IMAGE_PIXELS to raise it)")
        if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            arr = np.asarray(im, dtype=np.float64)
            if im.mode.startswith("I;16"):
                top = 65535.0
            elif im.mode == "F" and arr.size and 0.0 <= arr.min() and arr.max() <= 1.0:
                top = 1.0
            else:
                lo = float(arr.min()) if arr.size else 0.0
                arr, top = arr - lo, max(float(arr.max() - lo) if arr.size else 1.0, 1e-12)
            grey = np.clip(np.round(arr / top * 255.0), 0, 255).astype(np.uint8)
            return Image.fromarray(grey).convert("RGB")
        return im.convert("RGB")


# Largest IDX payload read, in bytes (PATNET_MAX_IDX_BYTES overrides): MNIST-family sets are under 50 MB per file,
# so 4 GiB is generous; the header's shape is checked against it before anything is read or decompressed.
MAX_IDX_BYTES = int(os.environ.get("PATNET_MAX_IDX_BYTES", 4 << 30))


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (raw or gzip) into a numpy array; a clear error if the file is not IDX.

    The header is read and checked first and exactly the bytes it announces are then read, so a gzip file is never
    inflated past its own header's claim (a decompression bomb ends at the first byte too many).
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            magic = f.read(4)
            if len(magic) < 4 or magic[:3] != b"\x00\x00\x08" or not 1 <= magic[3] <= 4:
                raise ValueError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
            ndim = magic[3]
            dims = f.read(4 * ndim)
            if len(dims) < 4 * ndim:
                raise ValueError(f"{path} is truncated inside its header ({4 + len(dims)} of {4 + 4 * ndim} bytes)")
            shape = struct.unpack(f">{ndim}I", dims)
            expected = math.prod(shape)
            if expected > MAX_IDX_BYTES:
                raise ValueError(f"{path} announces {shape} = {expected:,} bytes, more than the {MAX_IDX_BYTES:,} "
                                 "read at most (set PATNET_MAX_IDX_BYTES to raise it)")
            data = f.read(expected + 1)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise ValueError(f"cannot read IDX file {path}: {e}") from e
    if len(data) != expected:
        what = "is truncated" if len(data) < expected else "is longer than its header says"
        raise ValueError(f"{path} {what}: header says {shape} ({expected} bytes)"
                         + (f", found {len(data)}" if len(data) < expected else ""))
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def read_idx_labels(path: Path) -> np.ndarray:
    """An IDX label file, which must be one number per image (``read_idx`` checks the rest)."""
    labels = read_idx(path)
    if labels.ndim != 1:
        raise ValueError(f"{path} holds a {labels.shape} array; IDX labels are one number per image")
    return labels


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as IDX (gzip if the name ends in .gz); for generated test data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())


def _find_idx(root: Path, stem: str) -> Optional[Path]:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (root / name).is_file():
            return root / name
    return None


class IdxDataset(Dataset):
    """An MNIST-family split (images N x H x W uint8 + labels N) as RGB PIL images."""

    def __init__(self, root: Path, split: str = "train", transform: Optional[Callable] = None) -> None:
        images_stem, labels_stem = IDX_FILES[split]
        images_path, labels_path = _find_idx(root, images_stem), _find_idx(root, labels_stem)
        if images_path is None or labels_path is None:
            raise FileNotFoundError(f"{root} lacks {images_stem}[.gz] / {labels_stem}[.gz] (MNIST-format IDX files)")
        self.images = read_idx(images_path)
        self.labels = read_idx_labels(labels_path).astype(np.int64)
        if self.images.ndim != 3:
            raise ValueError(f"{images_path} holds a {self.images.shape} array; IDX images are N x H x W")
        if len(self.images) != len(self.labels) or len(self.labels) == 0:
            raise ValueError(f"{images_path} and {labels_path} disagree: {self.images.shape} vs {self.labels.shape}")
        self.transform = transform
        self.num_classes = int(self.labels.max()) + 1

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> Tuple[Any, int]:
        img = Image.fromarray(self.images[i], mode="L").convert("RGB")
        return (self.transform(img) if self.transform else img), int(self.labels[i])


def image_files(folder: Path) -> List[Path]:
    """The images under ``folder`` (by extension, recursively, sorted) that are regular files: a FIFO or device
    named ``x.png`` would hang or never end a read, so it is left out, with a log line."""
    named = [p for p in folder.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS]
    files = sorted(p for p in named if p.is_file())
    if len(files) < len(named):
        _log.warning("skipping %d entries of %s with an image name that are not regular files",
                     len(named) - len(files), folder)
    return files


class ImageFolderDataset(Dataset):
    """``root/<class>/<image>`` with a fixed class list; unreadable images give ``None`` (or raise if strict)."""

    def __init__(self, root: Path, classes: Sequence[str], transform: Optional[Callable] = None,
                 strict: bool = False) -> None:
        self.root, self.classes, self.transform, self.strict = root, list(classes), transform, strict
        self.samples: List[Tuple[str, int]] = []
        for idx, cls in enumerate(self.classes):
            folder = root / cls
            files = image_files(folder) if folder.is_dir() else []
            self.samples.extend((str(p), idx) for p in files)
        self.num_classes = len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Optional[Tuple[Any, int]]:
        path, label = self.samples[i]
        try:
            img = open_rgb(path)
        except Exception as e:  # PIL raises many types for broken files (and open_rgb ValueError for huge ones)
            if self.strict:
                raise ValueError(f"unreadable image {path}: {e}") from e
            _log.warning("skipping unreadable image %s (%s)", path, type(e).__name__)
            return None
        return (self.transform(img) if self.transform else img), label


class SplitView(Dataset):
    """Some indices of a dataset with a transform of its own: a held-out validation split of a training set.

    ``base`` is built without a transform and returns PIL images (or ``None`` for an unreadable file); the view's
    ``transform`` is applied on top, so a training view and a validation view can share one base.
    """

    def __init__(self, base: Dataset, indices: Sequence[int], transform: Optional[Callable] = None) -> None:
        self.base, self.indices, self.transform = base, list(indices), transform
        self.num_classes = getattr(base, "num_classes", None)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Optional[Tuple[Any, int]]:
        item = self.base[self.indices[i]]
        if item is None:
            return None
        img, label = item
        return (self.transform(img) if self.transform else img), label


def dataset_labels(ds: Dataset) -> List[int]:
    """Every sample's label without reading an image (IDX and image-folder datasets)."""
    if isinstance(ds, IdxDataset):
        return [int(x) for x in ds.labels]
    if isinstance(ds, ImageFolderDataset):
        return [label for _, label in ds.samples]
    raise TypeError(f"cannot list the labels of a {type(ds).__name__}")


def holdout_indices(labels: Sequence[Hashable], fraction: float, seed: int = 0) -> Tuple[List[int], List[int]]:
    """(train, held-out) indices: ``fraction`` of every stratum held out, drawn with ``seed`` (the same split for every
    run whatever its own seed, so a recipe is compared on one validation set).

    ``labels`` are the strata: class indices, or any sortable keys such as ``(level, kind)`` tuples. Within a stratum
    the indices are shuffled in their given order, so the draw depends only on the order of the samples and ``seed``.
    """
    import random

    if not 0 < fraction < 1:
        raise ValueError(f"--val-split must be a fraction between 0 and 1, got {fraction}")
    by_stratum: Dict[Hashable, List[int]] = {}
    for i, label in enumerate(labels):
        by_stratum.setdefault(label, []).append(i)
    rng = random.Random(seed)
    train, held = [], []
    for key in sorted(by_stratum):  # type: ignore[type-var]  # keys are sortable by contract
        idx = by_stratum[key]
        rng.shuffle(idx)
        n = round(len(idx) * fraction)
        held += idx[:n]
        train += idx[n:]
    if not held or not train:
        raise ValueError(f"--val-split {fraction} of {len(labels)} images leaves an empty training or validation set")
    return sorted(train), sorted(held)


def collate_skip_bad(batch: List[Optional[Tuple[torch.Tensor, int]]]) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """Stack the readable samples; also return how many were skipped."""
    good = [b for b in batch if b is not None]
    skipped = len(batch) - len(good)
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), skipped
    images = torch.stack([b[0] for b in good])
    labels = torch.tensor([b[1] for b in good], dtype=torch.long)
    return images, labels, skipped


@dataclass
class DatasetInfo:
    """Where a dataset lives and what it is."""

    kind: str  # "idx" or "folder"
    root: Path
    num_classes: int
    classes: List[str]


def resolve_dataset(spec: str) -> DatasetInfo:
    """Turn ``--data`` into a ``DatasetInfo``, or a one-line error saying what was expected."""
    candidates: List[Path] = []
    if spec.lower() in KNOWN_IDX_DATASETS:
        env = os.environ.get("PATNET_DATA")
        if env:
            candidates.append(Path(env) / spec.lower())
        candidates += [Path(p) for p in KNOWN_IDX_DATASETS[spec.lower()]]
        for root in candidates:
            if root.is_dir() and _find_idx(root, IDX_FILES["train"][0]):
                return _idx_info(root, spec.lower())
        hint = " (sudo apt-get install dataset-fashion-mnist)" if spec.lower() == "fashion-mnist" else ""
        raise FileNotFoundError(f"{spec} not found in {', '.join(map(str, candidates))}{hint}; or pass its folder")
    root = Path(spec)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset path {root} does not exist (give a folder, 'fashion-mnist' or 'mnist')")
    if _find_idx(root, IDX_FILES["train"][0]):
        return _idx_info(root, root.name)
    train, val = root / "train", root / "val"
    if not train.is_dir() or not val.is_dir():
        raise ValueError(f"{root} holds neither IDX files nor train/ and val/ folders of classes")
    classes = sorted(d.name for d in train.iterdir() if d.is_dir())
    if not classes:
        raise ValueError(f"{train} has no class folders")
    for split in (train, val):
        for cls in classes:
            folder = split / cls
            if not folder.is_dir() or not any(p.suffix.lower() in IMG_EXTENSIONS and p.is_file()
                                              for p in folder.rglob("*")):
                raise ValueError(f"class folder {folder} is missing or has no images")
    extra = sorted(d.name for d in val.iterdir() if d.is_dir() and d.name not in classes)
    if extra:
        raise ValueError(f"{val} has classes that {train} lacks: {extra}")
    return DatasetInfo("folder", root, len(classes), classes)


def _idx_info(root: Path, name: str) -> DatasetInfo:
    """Classes from the training labels, which must be 0..K-1; val labels must fall among them (checked here, so
    a bad label file fails before training instead of after an epoch)."""
    labels = read_idx_labels(_find_idx(root, IDX_FILES["train"][1]))
    if labels.size == 0:
        raise ValueError(f"{root}: the training label file is empty")
    present = np.unique(labels)
    n = int(present.max()) + 1
    if len(present) != n:
        missing = sorted(set(range(n)) - set(int(v) for v in present))
        raise ValueError(f"{root}: training labels must be 0..K-1; label {n - 1} is used but "
                         f"{len(missing)} of the labels below it never occur (e.g. {missing[:5]})")
    val_file = _find_idx(root, IDX_FILES["val"][1])
    if val_file is not None:
        val = read_idx_labels(val_file)
        if val.size and int(val.max()) >= n:
            raise ValueError(f"{root}: validation label {int(val.max())} is outside the {n} training classes 0..{n - 1}")
    classes = list(FASHION_MNIST_CLASSES) if name == "fashion-mnist" and n == 10 else [str(i) for i in range(n)]
    return DatasetInfo("idx", root, n, classes)


def build_dataset(info: DatasetInfo, split: str, transform: Optional[Callable], strict: bool = False) -> Dataset:
    """The ``split`` ('train' or 'val') of a resolved dataset."""
    if info.kind == "idx":
        return IdxDataset(info.root, split, transform)
    return ImageFolderDataset(info.root / split, info.classes, transform, strict)


def _posterize_zero_bits_safe(img: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    """timm's posterize with the pre-Pillow-12 meaning of 0 bits (a black image) instead of a ValueError."""
    from PIL import ImageOps

    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def ensure_randaugment_compat() -> bool:
    """Make timm's RandAugment safe on Pillow >= 12, which rejects ``posterize(img, 0)``.

    timm maps low Posterize magnitudes to 0 bits (its TPU-style range 0-4, meant to give a black image); with a
    magnitude std, any RandAugment policy can draw it and crash the epoch. Applied only when the installed Pillow
    rejects 0 bits; returns whether the shim was installed.
    """
    from PIL import ImageOps
    from timm.data import auto_augment

    try:
        ImageOps.posterize(Image.new("RGB", (1, 1)), 0)
        return False
    except ValueError:
        for name in ("Posterize", "PosterizeIncreasing", "PosterizeOriginal"):
            if name in auto_augment.NAME_TO_OP:
                auto_augment.NAME_TO_OP[name] = _posterize_zero_bits_safe
        return True


def build_transform(
        img_size: int,
        training: bool,
        auto_augment: Optional[str] = None,
        scale: Tuple[float, float] = (0.08, 1.0),
        crop_pct: float = 0.9,
        interpolation: str = "bicubic",
        mean: Tuple[float, ...] = IMAGENET_DEFAULT_MEAN,
        std: Tuple[float, ...] = IMAGENET_DEFAULT_STD,
) -> Callable:
    """timm's transforms: random-resized crop, flip and RandAugment for training; resize + centre crop for eval.

    Random erasing is off and mixup/cutmix are applied on batches by the trainer, as in the recipe.
    """
    from timm.data import create_transform

    if training:
        if auto_augment:
            ensure_randaugment_compat()
        return create_transform(
            img_size, is_training=True, auto_augment=auto_augment, scale=scale, interpolation=interpolation,
            mean=mean, std=std, re_prob=0.0,
        )
    return create_transform(img_size, is_training=False, crop_pct=crop_pct, interpolation=interpolation,
                            mean=mean, std=std)
