"""patnet: PATNet ("Partial Convolution Meets Visual Attention", arXiv 2503.03148) for timm and torchvision.

Importing the package registers ``patnet_t0`` .. ``patnet_l`` with timm, so ``timm.create_model("patnet_t2")``
works everywhere timm models do.
"""
import logging

from .models.patnet import VARIANTS, PATNet  # importing the model file registers patnet_t0 .. patnet_l with timm
from .weights import from_official, load_model, load_official_state_dict, official_to_patnet, patnet_to_official

__version__ = "0.1.0"
__all__ = [
    "PATNet",
    "VARIANTS",
    "from_official",
    "load_model",
    "load_official_state_dict",
    "official_to_patnet",
    "patnet_to_official",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
