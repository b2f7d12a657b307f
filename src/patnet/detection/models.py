"""Detectors: torchvision's Faster R-CNN / Mask R-CNN on a feature pyramid over any timm ``features_only`` backbone.

The backbone's four levels (strides 4, 8, 16, 32) feed torchvision's ``FeaturePyramidNetwork`` (plus its max-pool
level), named '0'..'3' and 'pool' as torchvision's ResNet-FPN detectors expect, so the default anchor generator and
RoI poolers apply unchanged. Widths come from the variant (``feature_info``), never restated here.
"""
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Dict, Optional, Union

import torch
import torch.nn as nn

from ..data import check_input_size
from ..weights import create_from_checkpoint, require_models

__all__ = ["TimmFpnBackbone", "build_backbone", "build_detector", "NORM_MODES"]

_log = logging.getLogger(__name__)

NORM_MODES = ("frozen", "train")


class TimmFpnBackbone(nn.Module):
    """A timm ``features_only`` network followed by an FPN; ``out_channels`` as torchvision detectors require."""

    def __init__(self, body: nn.Module, out_channels: int = 256) -> None:
        super().__init__()
        from torchvision.ops import FeaturePyramidNetwork
        from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

        self.body = body
        self.fpn = FeaturePyramidNetwork(body.feature_info.channels(), out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        feats = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))


def build_backbone(
        name: str,
        checkpoint: Optional[Union[str, Path]] = None,
        act_layer: Optional[str] = None,
        trainable_stages: int = 4,
        norm: str = "frozen",
        out_channels: int = 256,
) -> TimmFpnBackbone:
    """The FPN backbone of ``name`` (any timm model with ``features_only`` support, e.g. patnet_t0, fasternet_t0).

    Args:
        name: Registered model name.
        checkpoint: Classification weights to start from (ours, a ``patnet convert`` folder, or the authors' layout).
        act_layer: Activation of an authors' checkpoint, if it is not the variant's.
        trainable_stages: How many of the last stages train (0-4); the stem and earlier stages are frozen.
        norm: 'frozen' turns every BatchNorm into a FrozenBatchNorm2d (detection batches are small, as in
            torchvision's detectors); 'train' keeps them learning.
        out_channels: FPN width.
    """
    import timm
    from timm.layers import freeze_batch_norm_2d
    from timm.models import FeatureListNet

    require_models(name)
    if norm not in NORM_MODES:
        raise ValueError(f"norm must be one of {NORM_MODES}, got {norm!r}")
    if not 0 <= trainable_stages <= 4:
        raise ValueError(f"trainable_stages must be 0..4, got {trainable_stages}")
    if checkpoint is not None:
        body = FeatureListNet(create_from_checkpoint(name, checkpoint, act_layer), out_indices=(0, 1, 2, 3),
                              flatten_sequential=True)
    else:
        body = timm.create_model(name, features_only=True, out_indices=(0, 1, 2, 3))
    if norm == "frozen":
        body = freeze_batch_norm_2d(body)
    # The stem trains only with all four stages; FeatureListNet flattens "stages.i" to "stages_i".
    frozen = [] if trainable_stages == 4 else ["stem", "patch_embed"] + [f"stages_{i}" for i in range(4 - trainable_stages)]
    if frozen:  # timm.utils.freeze: the listed children's parameters stop learning (their BN is set by ``norm``)
        from timm.utils import freeze

        present = {n for n, _ in body.named_children()}
        freeze(body, [n for n in frozen if n in present], include_bn_running_stats=False)
    return TimmFpnBackbone(body, out_channels)


def build_detector(
        backbone: str,
        num_classes: int,
        task: str = "boxes",
        min_size: int = 512,
        max_size: int = 853,
        checkpoint: Optional[Union[str, Path]] = None,
        act_layer: Optional[str] = None,
        trainable_stages: int = 4,
        norm: str = "frozen",
        roi_batch_size: int = 512,
) -> nn.Module:
    """Faster R-CNN (``task='boxes'``) or Mask R-CNN (``task='masks'``) with a timm FPN backbone.

    ``num_classes`` counts the object classes without the background (torchvision's count is this plus one).
    ``min_size`` / ``max_size`` are torchvision's resize bounds for the shorter / longer image side.
    ``roi_batch_size`` is torchvision's ``box_batch_size_per_image`` (RoIs sampled per image for the box and mask
    heads in training): 512 by default; 128 makes Mask R-CNN training ~4x cheaper on a CPU for images with few objects.
    """
    from torchvision.models.detection import FasterRCNN, MaskRCNN

    if task not in ("boxes", "masks"):
        raise ValueError(f"task must be 'boxes' or 'masks', got {task!r}")
    if min_size < 64:
        raise ValueError(f"min_size {min_size} is too small for a 32x backbone with an FPN; use at least 64")
    check_input_size(max_size, max_size, "the detector's longest resized side")
    body = build_backbone(backbone, checkpoint, act_layer, trainable_stages, norm)
    cls = MaskRCNN if task == "masks" else FasterRCNN
    return cls(body, num_classes=num_classes + 1, min_size=min_size, max_size=max_size,
               box_batch_size_per_image=roi_batch_size)
