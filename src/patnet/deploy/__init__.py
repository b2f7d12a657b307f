"""Deployment: the one inference form, verified exports, int8 for ONNX Runtime and OpenVINO, running the files.

``export`` writes (ONNX, TorchScript, ExecuTorch), ``quantize`` writes int8 models (ONNX Runtime QDQ, OpenVINO IR
via NNCF, ExecuTorch XNNPACK via PT2E), ``executorch`` lowers to ExecuTorch programs, ``runtime`` runs and
evaluates what they wrote and imports none of them.
"""
from .executorch import lower_to_executorch
from .export import CompiledModel, ExportError, ExportReport, compiled_form, deploy_form, export_model
from .quantize import QuantizeError, QuantizeReport, nncf_quantize, quantize_model, quantize_onnx
from .runtime import Preprocess, evaluate_file, open_model_file, ort_session, read_preprocess

__all__ = [
    "deploy_form", "compiled_form", "lower_to_executorch", "CompiledModel", "export_model", "ExportReport", "ExportError",
    "quantize_model", "quantize_onnx", "nncf_quantize", "QuantizeReport", "QuantizeError",
    "evaluate_file", "open_model_file", "ort_session", "read_preprocess", "Preprocess",
]
