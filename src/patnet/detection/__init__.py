"""PATNet (or any timm backbone) in torchvision's Faster R-CNN and Mask R-CNN, with COCO-format data."""
from .models import TimmFpnBackbone, build_backbone, build_detector

__all__ = ["TimmFpnBackbone", "build_backbone", "build_detector"]
