"""Parameter and FLOP counts in the FasterNet / PATNet papers' convention.

FLOPs are fvcore's counts: one multiply-accumulate is one FLOP and BatchNorm / LayerNorm are counted. This
reproduces the FasterNet paper's figures for timm's ``fasternet_*`` (T2: 14.98 M params, 1.911 G FLOPs at 224),
which is what makes a comparison with PATNet's table meaningful. fvcore has no rule for
``F.scaled_dot_product_attention``; it is counted like the two matmuls it replaces (QK^T and AV).
"""
import logging
import math
from typing import Any, List, Tuple

import torch
import torch.nn as nn

__all__ = ["count_params", "count_flops"]

_log = logging.getLogger(__name__)


def count_params(model: nn.Module) -> int:
    """Number of parameters (every tensor registered as a parameter)."""
    return sum(p.numel() for p in model.parameters())


def _sdpa_flop(inputs: List[Any], outputs: List[Any]) -> int:
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(t) for t in inputs[:3])
    batch = math.prod(q[:-2])
    return batch * q[-2] * k[-2] * q[-1] + batch * q[-2] * k[-2] * v[-1]


def count_flops(model: nn.Module, img_size: Tuple[int, int] = (224, 224), in_chans: int = 3) -> int:
    """FLOPs (multiply-accumulates, norms counted) of one forward at batch 1, in eval mode, with fvcore.

    Raises:
        ImportError: fvcore is not installed (``pip install 'patnet[deploy]'``).
    """
    try:
        from fvcore.nn import FlopCountAnalysis
    except ImportError as e:  # optional dependency
        raise ImportError("FLOP counting needs fvcore: pip install 'patnet[deploy]'") from e
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters())
        x = torch.zeros(1, in_chans, *img_size, dtype=param.dtype, device=param.device)
        analysis = FlopCountAnalysis(model, x)
        analysis.set_op_handle("aten::scaled_dot_product_attention", _sdpa_flop)
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        with torch.no_grad():
            return int(analysis.total())
    finally:
        model.train(was_training)
