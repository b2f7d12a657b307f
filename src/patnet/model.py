"""Compatibility name: ``patnet.model`` is ``patnet.models.patnet`` (the same module object).

The network moved to ``patnet/models/patnet.py`` so that timm lists its registrations under the module name
"patnet" (``timm.list_modules()``), as timm names every family by its file.
"""
import sys

from .models import patnet as _impl

sys.modules[__name__] = _impl
