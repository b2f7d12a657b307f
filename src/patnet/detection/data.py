"""COCO-format detection data: a dataset and its transforms (``patnet.detection.sources`` makes data to try it on).

* ``CocoDataset``: any COCO JSON plus an image folder (boxes; polygon or RLE masks for instance segmentation).
  Category ids may have gaps or start anywhere: they map to contiguous labels 1..K and back. Problems are handled
  up front and counted in the log: annotations of missing images, boxes of zero or negative size and crowd
  regions are dropped; images without annotations stay (as negatives); grey and RGBA images become RGB.
"""
import contextlib
import io
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..data import open_rgb

__all__ = ["CocoDataset", "detection_transform", "collate", "sanitize_coco", "MAX_ANNOTATIONS_PER_IMAGE"]

_log = logging.getLogger(__name__)


@dataclass
class _Stats:
    missing_images: int = 0
    bad_boxes: int = 0
    crowd: int = 0
    unknown_category: int = 0
    empty_images: int = 0
    clamped_boxes: int = 0
    unsafe_paths: int = 0
    bad_masks: int = 0
    orphan_annotations: int = 0
    unreadable_images: int = 0


# Most annotations one image may carry (PATNET_MAX_ANNOTATIONS_PER_IMAGE overrides). COCO's busiest image has a few
# hundred; each one costs a full-image mask when training masks, so 100,000 boxes on one image would ask for 20 GB.
MAX_ANNOTATIONS_PER_IMAGE = int(os.environ.get("PATNET_MAX_ANNOTATIONS_PER_IMAGE", 2000))


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_id(v: Any) -> bool:
    return isinstance(v, (int, str)) and not isinstance(v, bool)


def _clean_segmentation(seg: Any) -> Any:
    """Polygons of >= 3 finite points, or an RLE with a size and counts; None for anything else."""
    if isinstance(seg, list):
        polys = [p for p in seg if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 and all(map(_is_number, p))]
        return polys or None
    if isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        if isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size) and \
                (isinstance(counts, str) or (isinstance(counts, list) and all(isinstance(v, int) for v in counts))):
            return seg
    return None


def sanitize_coco(raw: Any, ann_file: Path, masks: bool) -> Tuple[Dict[str, Any], Dict[int, Any], Dict[str, int]]:
    """A COCO dict that pycocotools can always index and score, the original image id of each new one, and counts.

    Image ids become 1..N (string ids and gaps are fine; a duplicate id is an error, since its annotations could
    belong to either image); annotation ids become 1..M. Fields of the wrong type are an error where the file cannot
    be used without them (categories, image ids and file names, image sizes for masks) and dropped and counted
    otherwise: annotations of unknown images or with an unusable ``category_id`` / ``iscrowd`` (orphan), without
    four finite ``bbox`` numbers (bad boxes), and, for masks, without a polygon of at least 3 finite points or an RLE
    (bad masks). An unusable ``area`` is recomputed from the box. An image with more than
    ``MAX_ANNOTATIONS_PER_IMAGE`` annotations is an error.
    """
    if not isinstance(raw, dict) or not isinstance(raw.get("images"), list) or \
            not isinstance(raw.get("categories"), list):
        raise ValueError(f"{ann_file} is not a COCO annotation file (it needs 'images' and 'categories' lists)")
    for cat in raw["categories"]:
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int) or isinstance(cat.get("id"), bool) or \
                not isinstance(cat.get("name"), str):
            raise ValueError(f"{ann_file}: every category needs an integer 'id' and a string 'name', got {str(cat)[:80]}")
    seen: Dict[Any, int] = {}
    images = []
    for img in raw["images"]:
        if not isinstance(img, dict) or not _is_id(img.get("id")) or not isinstance(img.get("file_name"), str):
            raise ValueError(f"{ann_file}: every image needs an 'id' (number or string) and a 'file_name' string, "
                             f"got {str(img)[:80]}")
        sizes = [img.get(k) for k in ("width", "height")]
        if (masks or any(v is not None for v in sizes)) and \
                not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sizes):
            raise ValueError(f"{ann_file}: image {img['id']!r} needs positive integer 'width' and 'height'"
                             f"{' (masks are drawn at that size)' if masks else ''}, got {sizes}")
        key = img["id"]
        if key in seen:
            raise ValueError(f"{ann_file}: image id {key!r} appears more than once; ids must be unique")
        seen[key] = len(seen) + 1
        images.append({**img, "id": seen[key]})
    counts = {"orphan_annotations": 0, "bad_boxes": 0, "bad_masks": 0}
    per_image: Dict[int, int] = {}
    anns = []
    for ann in raw.get("annotations") or []:
        if not isinstance(ann, dict) or not _is_id(ann.get("image_id")) or ann["image_id"] not in seen or \
                not _is_id(ann.get("category_id")) or ann.get("iscrowd", 0) not in (0, 1):
            counts["orphan_annotations"] += 1
            continue
        box = ann.get("bbox")
        if not (isinstance(box, (list, tuple)) and len(box) == 4 and all(map(_is_number, box))):
            counts["bad_boxes"] += 1
            continue
        image_id = seen[ann["image_id"]]
        per_image[image_id] = per_image.get(image_id, 0) + 1
        if per_image[image_id] > MAX_ANNOTATIONS_PER_IMAGE:
            raise ValueError(f"{ann_file}: image {ann['image_id']!r} has more than {MAX_ANNOTATIONS_PER_IMAGE} "
                             "annotations (set PATNET_MAX_ANNOTATIONS_PER_IMAGE to raise the limit)")
        area = ann.get("area")
        ann = {**ann, "image_id": image_id, "id": len(anns) + 1, "iscrowd": int(ann.get("iscrowd", 0)),
               "area": float(area) if _is_number(area) else float(box[2] * box[3])}
        seg = _clean_segmentation(ann.pop("segmentation", None))
        if seg is not None:
            ann["segmentation"] = seg
        if masks and seg is None and not ann["iscrowd"]:
            counts["bad_masks"] += 1
            continue
        anns.append(ann)
    clean = {**raw, "images": images, "annotations": anns}
    return clean, {v: k for k, v in seen.items()}, counts


class CocoDataset(Dataset):
    """Images and targets (``boxes`` xyxy, ``labels`` 1..K, optional ``masks``) of a COCO JSON file.

    Args:
        ann_file: COCO annotation JSON.
        image_dir: Folder the ``file_name`` entries are relative to.
        masks: Also return instance masks (polygons or RLE, decoded with pycocotools).
        transform: ``transform(image, target) -> (image, target)`` with torchvision.tv_tensors inputs.
    """

    def __init__(self, ann_file: Path, image_dir: Path, masks: bool = False, transform: Any = None) -> None:
        try:
            from pycocotools.coco import COCO
        except ImportError as e:
            raise ImportError("COCO data needs pycocotools: pip install 'patnet[detection]'") from e
        ann_file, image_dir = Path(ann_file), Path(image_dir)
        if not ann_file.is_file():
            raise FileNotFoundError(f"annotation file {ann_file} does not exist")
        if not image_dir.is_dir():
            raise FileNotFoundError(f"image folder {image_dir} does not exist")
        try:
            raw = json.loads(ann_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{ann_file} is not a COCO annotation file ({type(e).__name__}: {e})") from None
        clean, self.original_ids, dropped = sanitize_coco(raw, ann_file, masks)
        self.coco = COCO()
        self.coco.dataset = clean
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            self.coco.createIndex()
        self.image_dir, self.masks, self.transform = image_dir, masks, transform
        cat_ids = sorted(self.coco.getCatIds())
        if not cat_ids:
            raise ValueError(f"{ann_file} defines no categories")
        self.cat_to_label = {c: i + 1 for i, c in enumerate(cat_ids)}
        self.label_to_cat = {i: c for c, i in self.cat_to_label.items()}
        self.class_names = [self.coco.cats[c]["name"] for c in cat_ids]
        stats = _Stats(**dropped)
        self.ids: List[int] = []
        self.anns: Dict[int, List[Dict[str, Any]]] = {}
        for img_id in sorted(self.coco.getImgIds()):
            info = self.coco.imgs[img_id]
            root = image_dir.resolve()
            if root not in (image_dir / str(info.get("file_name", ""))).resolve().parents:
                stats.unsafe_paths += 1  # '../x.png' or '/etc/x': never read outside --images
                _log.warning("image %r of %s lies outside %s; skipped", info.get("file_name"), ann_file.name, image_dir)
                continue
            if not (image_dir / info["file_name"]).is_file():
                stats.missing_images += 1
                _log.warning("image %s of %s is missing; its annotations are skipped", info["file_name"], ann_file.name)
                continue
            kept = []
            for ann in self.coco.imgToAnns.get(img_id, []):
                x, y, w, h = ann.get("bbox", (0, 0, 0, 0))
                if ann.get("iscrowd", 0):
                    stats.crowd += 1
                elif ann.get("category_id") not in self.cat_to_label:
                    stats.unknown_category += 1
                elif not (w > 0 and h > 0):
                    stats.bad_boxes += 1
                elif masks and not ann.get("segmentation"):
                    stats.bad_boxes += 1
                else:
                    iw, ih = info.get("width"), info.get("height")
                    if iw and ih and (x < 0 or y < 0 or x + w > iw or y + h > ih):
                        stats.clamped_boxes += 1  # kept; the transform clamps it to the image
                    kept.append(ann)
            if not kept:
                stats.empty_images += 1
            self.ids.append(img_id)
            self.anns[img_id] = kept
        if not self.ids:
            raise ValueError(f"none of the images of {ann_file} exist under {image_dir}")
        self.stats = stats
        if any(vars(stats).values()):
            _log.info("%s: %s", ann_file.name, ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in vars(stats).items() if v))

    @property
    def num_classes(self) -> int:
        return len(self.cat_to_label)

    def __len__(self) -> int:
        return len(self.ids)

    def load_image(self, index: int) -> Image.Image:
        info = self.coco.imgs[self.ids[index]]
        return open_rgb(self.image_dir / info["file_name"])

    def __getitem__(self, index: int) -> Optional[Tuple[Any, Dict[str, Any]]]:
        """The sample, or None for an unreadable image (logged with its path; ``collate`` drops it)."""
        from torchvision import tv_tensors

        img_id = self.ids[index]
        try:
            image = self.load_image(index)
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            _log.warning("unreadable image %s skipped (%s)", self.image_dir / self.coco.imgs[img_id]["file_name"],
                         type(e).__name__)
            return None
        w, h = image.size
        anns = self.anns[img_id]
        boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                              for a in anns], dtype=torch.float32).reshape(-1, 4)
        target: Dict[str, Any] = {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w)),
            "labels": torch.tensor([self.cat_to_label[a["category_id"]] for a in anns], dtype=torch.int64),
            "image_id": img_id,
        }
        if self.masks:
            m = np.stack([self.coco.annToMask(a) for a in anns]) if anns else np.zeros((0, h, w), np.uint8)
            target["masks"] = tv_tensors.Mask(torch.from_numpy(m))
        image = tv_tensors.Image(torch.from_numpy(np.array(image)).permute(2, 0, 1))
        if self.transform is not None:
            image, target = self.transform(image, target)
        return image, target


def detection_transform(training: bool) -> Any:
    """torchvision v2 transforms: float image, a horizontal flip when training, boxes clamped to the image and
    degenerate ones removed."""
    from torchvision.transforms import v2 as T

    steps: List[Any] = [T.RandomHorizontalFlip(0.5)] if training else []
    # Clamp first: a box that crosses the border (even by half a pixel) is kept, cut at the border; Sanitize then
    # removes only boxes that are (or became) degenerate.
    steps += [T.ToDtype(torch.float32, scale=True), T.ClampBoundingBoxes(), T.SanitizeBoundingBoxes(min_size=1.0)]
    return T.Compose(steps)


def collate(batch: Sequence[Optional[Tuple[Any, Dict[str, Any]]]]) -> Tuple[List[Any], List[Dict[str, Any]]]:
    """Images and targets as lists; unreadable samples (None) are left out."""
    good = [b for b in batch if b is not None]
    return [b[0] for b in good], [b[1] for b in good]
