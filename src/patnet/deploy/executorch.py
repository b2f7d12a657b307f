"""ExecuTorch programs (``.pte``) lowered to the XNNPACK backend: PyTorch's own route to phones, boards and CPUs.

``lower_to_executorch`` exports a deployment form with ``torch.export`` at a fixed input shape (batch 1, the edge
case; XNNPACK's delegate here refuses to resize some of PATNet's outputs, so a symbolic batch is not offered),
folds the size-only constants (PATNet's relative-position index) into the graph, optionally quantizes it with
ExecuTorch's ``XNNPACKQuantizer`` (PT2E: per-channel symmetric int8 weights, int8 activations, calibrated on the
given batches) and lowers every supported operator to XNNPACK. ``patnet.deploy.export_model(fmt='executorch')``
and ``patnet.deploy.quantize_model(runtime='executorch')`` verify what it returns before it is kept;
``patnet.deploy.runtime.ModelRunner`` runs the written files.

The constant folding is needed, not cosmetic: PT2E's quantizer turns the integer offset of the index computation
into a float tensor constant, and the index lookup then fails during calibration.
"""
import logging
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .runtime import PTE_SUFFIX, require

__all__ = ["lower_to_executorch", "PTE_SUFFIX"]

_log = logging.getLogger(__name__)


def lower_to_executorch(model: nn.Module, example: torch.Tensor,
                        calib: Optional[Sequence[torch.Tensor]] = None) -> Tuple[bytes, int]:
    """An ExecuTorch program (bytes of a ``.pte``) of the eval-mode ``model`` for ``example``'s shape.

    With ``calib`` (input batches of ``example``'s shape), the program is int8 (see the module docstring).
    Returns the program and how many tensors were quantized (0 for fp32).
    """
    require("executorch", "executorch")
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from executorch.exir.passes.constant_prop_pass import constant_prop_pass

    with torch.no_grad():
        program = constant_prop_pass(torch.export.export(model.eval(), (example,)))
        quantized = 0
        if calib is not None:
            from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
                XNNPACKQuantizer, get_symmetric_quantization_config)
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

            quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
            prepared = prepare_pt2e(program.module(), quantizer)
            for batch in calib:
                prepared(batch)
            converted = convert_pt2e(prepared)
            quantized = sum("quantize_per" in str(n.target) and "dequantize" not in str(n.target)
                            for n in converted.graph.nodes)
            _log.info("quantized %d tensors for XNNPACK, calibrated on %d batches", quantized, len(calib))
            program = torch.export.export(converted, (example,))
        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch()
    return bytes(lowered.buffer), quantized
