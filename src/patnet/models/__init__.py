"""Model families. ``patnet`` holds the network; importing it registers the variants with timm (module "patnet")."""
from . import patnet  # noqa: F401
