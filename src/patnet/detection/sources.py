"""COCO data to train and try a detector on without network access (``patnet detect make-fmnist`` / ``deepforest``).

* ``make_fashion_mnist_detection``: Fashion-MNIST garments composed onto larger textured canvases, with exact
  per-pixel masks taken from the garment pixels, a fixed train/val split and a seed.
* ``deepforest_to_coco``: the real aerial photographs with tree-crown boxes inside the MIT-licensed ``deepforest``
  wheel (``pip download deepforest --no-deps``), converted from their Pascal VOC files.

Every file is written atomically, so a kill never leaves a truncated image or annotation file under its final name.
"""
import io
import json
import logging
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
from PIL import Image

from ..data import FASHION_MNIST_CLASSES, IdxDataset, resolve_dataset
from ..io import atomic_path

__all__ = ["make_fashion_mnist_detection", "deepforest_to_coco"]

_log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------------------------
# Generated data: Fashion-MNIST garments on canvases
# ------------------------------------------------------------------------------------------------------------------

def _save_image(image: Image.Image, path: Path) -> None:
    """An image written atomically (a kill never leaves a truncated file under its final name)."""
    with atomic_path(path) as tmp:
        image.save(tmp, format=Image.registered_extensions().get(path.suffix.lower(), "PNG"))


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth colour gradient with low-frequency blobs and pixel noise."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    c0, c1 = rng.uniform(0, 120, 3), rng.uniform(0, 120, 3)
    t = (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1))[..., None]
    t = (t - t.min()) / max(np.ptp(t), 1e-6)
    img = c0 * (1 - t) + c1 * t
    for _ in range(rng.integers(2, 6)):
        cy, cx, r = rng.uniform(0, size, 2).tolist() + [rng.uniform(size / 10, size / 3)]
        blob = np.exp(-(((yy * size - cy) ** 2 + (xx * size - cx) ** 2) / (2 * r * r)))[..., None]
        img = img + blob * rng.uniform(-40, 40, 3)
    img = img + rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255)


def make_fashion_mnist_detection(
        out: Path,
        source: str = "fashion-mnist",
        n_train: int = 400,
        n_val: int = 100,
        canvas: int = 160,
        max_objects: int = 4,
        scale: Tuple[float, float] = (1.0, 2.2),
        seed: int = 0,
) -> Dict[str, Path]:
    """Write ``out/{train,val}/`` images and ``out/{train,val}.json`` (COCO, boxes + RLE masks).

    Garments come from the Fashion-MNIST train split for ``train`` and its test split for ``val`` (so no garment is
    in both). Each is scaled by a factor in ``scale``, tinted, and pasted without overlap; its mask is exactly the
    pasted garment pixels (intensity above 10 of 255) and its box is the mask's extent.
    """
    from pycocotools import mask as mask_utils

    info = resolve_dataset(source)
    rng = np.random.default_rng(seed)
    out = Path(out)
    paths: Dict[str, Path] = {}
    categories = [{"id": i + 1, "name": n, "supercategory": "garment"} for i, n in enumerate(FASHION_MNIST_CLASSES)]
    for split, n_images, src_split in (("train", n_train, "train"), ("val", n_val, "val")):
        src = IdxDataset(info.root, src_split)
        img_dir = out / split
        img_dir.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(n_images):
            canvas_img = _background(rng, canvas)
            occupied = np.zeros((canvas, canvas), bool)
            for _ in range(int(rng.integers(1, max_objects + 1))):
                k = int(rng.integers(len(src)))
                garment = Image.fromarray(src.images[k])
                side = int(round(28 * rng.uniform(*scale)))
                g = np.asarray(garment.resize((side, side), Image.BILINEAR), dtype=np.float32)
                mask = g > 10
                if not mask.any():
                    continue
                for _attempt in range(20):
                    y, x = rng.integers(0, canvas - side + 1, 2)
                    if not (occupied[y:y + side, x:x + side] & mask).any():
                        break
                else:
                    continue
                tint = rng.uniform(0.5, 1.0, 3)
                region = canvas_img[y:y + side, x:x + side]
                alpha = (g / 255.0)[..., None]
                region[:] = np.where(mask[..., None], region * (1 - alpha) + alpha * 255 * tint, region)
                full = np.zeros((canvas, canvas), np.uint8)
                full[y:y + side, x:x + side] = mask
                occupied |= full.astype(bool)
                ys, xs = np.nonzero(full)
                rle = mask_utils.encode(np.asfortranarray(full))
                rle["counts"] = rle["counts"].decode("ascii")
                annotations.append({
                    "id": len(annotations) + 1, "image_id": i + 1, "category_id": int(src.labels[k]) + 1,
                    "bbox": [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
                             float(ys.max() - ys.min() + 1)],
                    "area": float(full.sum()), "segmentation": rle, "iscrowd": 0,
                })
            name = f"{i:05d}.png"
            _save_image(Image.fromarray(canvas_img.astype(np.uint8)), img_dir / name)
            images.append({"id": i + 1, "file_name": name, "width": canvas, "height": canvas})
        ann_path = out / f"{split}.json"
        with atomic_path(ann_path) as tmp:
            tmp.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories,
                                       "info": {"description": f"Fashion-MNIST composites, seed {seed}"}}))
        paths[split] = ann_path
        _log.info("wrote %d %s images with %d objects to %s", n_images, split, len(annotations), img_dir)
    return paths


# ------------------------------------------------------------------------------------------------------------------
# Real photographs: deepforest's example data
# ------------------------------------------------------------------------------------------------------------------

def deepforest_to_coco(source: Path, out: Path, single_class: Optional[str] = None, tile: Optional[int] = None,
                       min_visible: float = 0.5) -> Path:
    """Convert the Pascal VOC tree-crown annotations shipped in the deepforest wheel (or its unpacked data folder)
    into ``out/images/`` and ``out/annotations.json``.

    Args:
        single_class: Give every object this label (the files use Tree / Dead / Alive, one site each).
        tile: Cut images larger than ``tile`` pixels into ``tile`` x ``tile`` tiles (the last row / column overlap
            the previous one), as aerial imagery is usually processed; boxes are clipped to their tile and kept
            when at least ``min_visible`` of their area is inside.
    """
    source, out = Path(source), Path(out)
    img_dir = out / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    files: Dict[str, bytes] = {}
    if source.is_file() and source.suffix == ".whl":
        with zipfile.ZipFile(source) as z:
            for name in z.namelist():
                if name.startswith("deepforest/data/") and Path(name).suffix.lower() in (".xml", ".png", ".jpg", ".tif"):
                    files[Path(name).name] = z.read(name)
    elif source.is_dir():
        for p in source.iterdir():
            if p.suffix.lower() in (".xml", ".png", ".jpg", ".tif"):
                files[p.name] = p.read_bytes()
    else:
        raise FileNotFoundError(f"{source} is neither a deepforest wheel nor its data folder "
                                "(get it with: pip download deepforest --no-deps -d DIR)")
    categories: Dict[str, int] = {}
    images, annotations = [], []
    for xml_name in sorted(n for n in files if n.endswith(".xml")):
        try:
            root = ET.fromstring(files[xml_name])
        except ET.ParseError as e:
            _log.warning("malformed annotation %s skipped (%s)", xml_name, e)
            continue
        stem = Path(xml_name).stem
        image_name = next((n for n in (root.findtext("filename") or "", stem + ".png", stem + ".jpg") if n in files
                           and not n.endswith(".tif")), None)
        if image_name is None:
            _log.warning("no PNG/JPEG image for %s; skipped", xml_name)
            continue
        boxes = []
        for obj in root.iter("object"):
            label = single_class or obj.findtext("name") or "Tree"
            bb = obj.find("bndbox")
            boxes.append((label, *(float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))))
        with Image.open(io.BytesIO(files[image_name])) as im:
            photo = im.convert("RGB")
        w, h = photo.size
        windows = [(0, 0, w, h)]
        if tile and (w > tile or h > tile):
            xs = sorted({min(x, max(w - tile, 0)) for x in range(0, w, tile)})
            ys = sorted({min(y, max(h - tile, 0)) for y in range(0, h, tile)})
            windows = [(x, y, min(x + tile, w), min(y + tile, h)) for y in ys for x in xs]
        for wx1, wy1, wx2, wy2 in windows:
            kept = []
            for label, x1, y1, x2, y2 in boxes:
                cx1, cy1, cx2, cy2 = max(x1, wx1), max(y1, wy1), min(x2, wx2), min(y2, wy2)
                if cx2 <= cx1 or cy2 <= cy1 or (cx2 - cx1) * (cy2 - cy1) < min_visible * (x2 - x1) * (y2 - y1):
                    continue
                kept.append((label, cx1 - wx1, cy1 - wy1, cx2 - wx1, cy2 - wy1))
            name = image_name if len(windows) == 1 else f"{Path(image_name).stem}_{wx1}_{wy1}.png"
            _save_image(photo.crop((wx1, wy1, wx2, wy2)), img_dir / name)
            image_id = len(images) + 1
            images.append({"id": image_id, "file_name": name, "width": wx2 - wx1, "height": wy2 - wy1,
                           "source": image_name})
            for label, x1, y1, x2, y2 in kept:
                cat = categories.setdefault(label, len(categories) + 1)
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cat,
                                    "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    if not images:
        raise ValueError(f"no annotated images found in {source}")
    ann_path = out / "annotations.json"
    with atomic_path(ann_path) as tmp:
        tmp.write_text(json.dumps({
            "images": images, "annotations": annotations,
            "categories": [{"id": i, "name": n} for n, i in categories.items()],
            "info": {"description": "deepforest example data (MIT licence), converted from Pascal VOC"},
        }))
    _log.info("wrote %d images, %d boxes to %s", len(images), len(annotations), ann_path)
    return ann_path
