"""The ``patnet`` command line: one library call per command.

No option is declared here: every command's flags are generated from the fields of its options' dataclass in
``patnet.config`` (``TrainConfig``, ``DetectConfig``, ``ExportOptions``, ...: help, ranges, choices and resume rules
live there). Every sub-command reports a user error
(missing file, bad checkpoint, unwritable path, missing optional package) as one line, ``patnet: error: ...``, and
exit status 2; ``--traceback`` shows the full stack instead.
"""
import argparse
import json
import logging
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import yaml

from . import __version__
from .config import (ConvertOptions, DeepforestOptions, DetectConfig, DetectEvalOptions,
                     DetectPredictOptions, ExportOptions, MakeFmnistOptions, QuantizeOptions, TrainConfig,
                     ValidateOptions, add_arguments, from_mapping)
from .deploy.export import export_model
from .deploy.quantize import quantize_model
from .deploy.runtime import evaluate_file
from .detection.data import CocoDataset, detection_transform
from .detection.engine import evaluate_detector, load_detector, predict_image, train_detector
from .detection.sources import deepforest_to_coco, make_fashion_mnist_detection
from .errors import PatnetError
from .io import atomic_path, check_not_inputs
from .train import train, validate
from .weights import convert_checkpoint, create_from_checkpoint, require_models

__all__ = ["main", "build_parser", "configure_logging", "report_errors"]

# Errors that mean "the user asked for something that cannot be done": reported in one line.
# KeyError is deliberately absent: a missing key is a bug of ours, and its traceback must show.
USER_ERRORS = (PatnetError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError, OSError, ImportError)

def _print(obj: Any) -> None:
    """Results go to stdout once per job: only rank 0 of a torchrun job prints them."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(obj if isinstance(obj, str) else json.dumps(obj, indent=2))


def _cmd_convert(args: argparse.Namespace) -> None:

    cfg = convert_checkpoint(args.src, args.out, to=args.to, act_layer=args.act)
    _print(f"wrote {args.out} ({args.to} layout): embed_dim={cfg['embed_dim']} depths={cfg['depths']} "
           f"spatial_attn={cfg['spatial_attn']} classes={cfg['num_classes']}")


def _model(args: argparse.Namespace) -> Any:
    """The model an export or quantize command works on: a registered name, with weights from --checkpoint."""
    import timm

    if args.checkpoint is None:
        require_models(args.model)
        return timm.create_model(args.model, num_classes=1000 if args.num_classes is None else args.num_classes)
    return create_from_checkpoint(args.model, args.checkpoint, num_classes=args.num_classes)


def _cmd_export(args: argparse.Namespace) -> None:

    check_not_inputs([args.out], {"--checkpoint": args.checkpoint})
    report = export_model(_model(args), args.out, args.format, tuple(args.img_size), args.dynamic_batch, args.opset,
                          args.tolerance, progress=True)
    errs = ", ".join(f"batch {b}: {e:.1e}" for b, e in report.max_rel_error.items())
    _print(f"wrote {report.path} ({args.format}, {args.img_size[0]}x{args.img_size[1]}"
           f"{', dynamic batch' if args.dynamic_batch else ''}); verified against PyTorch, relative error {errs}")
    if args.checkpoint is None:
        print("patnet: note: no --checkpoint given; exporting randomly initialised weights (fine for speed and "
              "shape checks, useless for predictions)", file=sys.stderr)


def _cmd_quantize(args: argparse.Namespace) -> None:

    out = Path(args.out)
    check_not_inputs([out, out.with_suffix(".json"), out.with_suffix(".bin")], {"--checkpoint": args.checkpoint})
    r = quantize_model(_model(args), args.out, args.calib, name=args.model, img_size=args.img_size,
                       crop_pct=args.crop_pct, method=args.method, calib_images=args.calib_images,
                       eval_images=args.eval_images, max_drop=args.max_drop, seed=args.seed, runtime=args.runtime)
    acc = (f"top-1 fp32 {r.top1_fp32:.2f}% -> int8 {r.top1_int8:.2f}% (drop {r.drop:.2f} points), "
           if r.top1_fp32 is not None else "")
    kind = {"openvino": "int8 OpenVINO IR (NNCF)", "executorch": "int8 ExecuTorch program (XNNPACK)"}.get(
        r.runtime, "int8 QDQ ONNX")
    _print(f"wrote {r.path} ({kind}, {r.img_size[0]}x{r.img_size[1]}, {r.method} calibration on {r.calib_images} "
           f"images); on {r.eval_images} held-out images: {acc}top-1 agreement with fp32 {r.top1_agreement:.2f}%; "
           f"report {Path(r.path).with_suffix('.json')}")


def _run_config(cls: Any, args: argparse.Namespace) -> Any:
    """The run configuration the parsed flags describe (its flags were generated from ``cls``'s fields)."""
    values = {f.name: getattr(args, f.name) for f in fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def _cmd_train(args: argparse.Namespace) -> None:

    _print(train(_run_config(TrainConfig, args)))


def _cmd_validate(args: argparse.Namespace) -> None:
    if args.output is not None and (args.output / "last.pth").exists():
        raise ValueError(f"--output {args.output} holds a training run, whose metrics.json is the run's own; write "
                         "the evaluation to another folder")
    if args.onnx is None:
        if args.model is None or args.checkpoint is None:
            raise ValueError("validate needs --model and --checkpoint (or --onnx FILE.onnx)")

        _print(validate(args.model, args.data, args.checkpoint, args.img_size or 64, args.batch_size,
                        0.9 if args.crop_pct is None else args.crop_pct, args.act, args.workers, args.amp,
                        args.output, args.max_val_batches))
        return
    if args.checkpoint is not None:
        raise ValueError("give either --onnx or --checkpoint, not both")

    res = evaluate_file(args.onnx, args.data, args.batch_size, max_images=args.max_images, img_size=args.img_size,
                        crop_pct=args.crop_pct)
    _print(res)
    if args.output is not None:
        with atomic_path(args.output / "metrics.json") as tmp:
            tmp.write_text(json.dumps(res, indent=2))


def _cmd_detect_train(args: argparse.Namespace) -> None:

    metrics = train_detector(_run_config(DetectConfig, args))
    _print({k: v for k, v in metrics.items() if k != "history"})


def _cmd_detect_eval(args: argparse.Namespace) -> None:

    model = load_detector(args.checkpoint)
    masks = args.task == "masks" if args.task else hasattr(model, "roi_heads") and model.roi_heads.has_mask()
    ds = CocoDataset(args.ann, args.images, masks, detection_transform(False))
    if ds.class_names != model.class_names:
        raise ValueError(f"{args.ann} has categories {ds.class_names}; the detector was trained on {model.class_names}")
    _print(evaluate_detector(model, ds, output=args.output, workers=args.workers, max_images=args.max_images))


def _cmd_detect_predict(args: argparse.Namespace) -> None:

    res = predict_image(load_detector(args.checkpoint), args.image, args.out, args.score_threshold)
    _print(res)
    if not res["detections"]:
        top = res["top_score"]
        print(f"patnet: note: nothing scored >= --score-threshold {args.score_threshold}"
              + (f"; the best candidate scored {top:.2f}: lower the threshold to see it" if top is not None else
                 "; the detector proposed nothing at all"), file=sys.stderr)


def _cmd_detect_make_fmnist(args: argparse.Namespace) -> None:

    paths = make_fashion_mnist_detection(args.out, args.data, args.train_images, args.val_images, args.canvas,
                                         seed=args.seed)
    _print(f"wrote {paths['train']} and {paths['val']} (images in {args.out}/train and {args.out}/val)")


def _cmd_detect_deepforest(args: argparse.Namespace) -> None:

    _print(f"wrote {deepforest_to_coco(args.source, args.out, args.single_class, args.tile)}")


# command -> (the library call, its options, one-line help, description). Runs and commands alike get their flags
# from their options' dataclass fields (``config.add_arguments``).
_COMMANDS = {
    "convert": (_cmd_convert, ConvertOptions, "convert an authors' checkpoint to timm's pretrained folder or back",
                "Convert an authors'-layout PATNet checkpoint into timm's pretrained folder (model.safetensors + "
                "config.json: timm.create_model('local-dir:OUT', pretrained=True) or patnet.load_model). --to "
                "official goes the other way."),
    "export": (_cmd_export, ExportOptions, "export a model's deployment form to ONNX or TorchScript, verified",
               "Fuse the model (BatchNorm folded), export it, run the file and compare it with PyTorch; beyond "
               "tolerance the file is removed and the command fails."),
    "quantize": (_cmd_quantize, QuantizeOptions, "int8 ONNX (QDQ) or OpenVINO IR of any model, calibrated and "
                 "verified", "Export the model's inference form, calibrate on --calib images (train split), quantize "
                 "for --runtime (ONNX Runtime QDQ: per-channel int8 weights, uint8 activations; OpenVINO: NNCF) and "
                 "verify on held-out val images; beyond --max-drop nothing is written."),
    "train": (_cmd_train, TrainConfig, "train a classifier (any timm model) on an image folder or IDX data",
              "Train with the paper's recipe or a short one (AdamW, cosine + warm-up, label smoothing, mixup/cutmix, "
              "RandAugment, drop path). Works under torchrun --no-python ... patnet train for DDP."),
    "validate": (_cmd_validate, ValidateOptions, "evaluate a checkpoint (ours or the authors') on a val split",
                 "Top-1, top-5 and loss of a checkpoint, or of an exported file, on the val split of --data."),
}
_DETECT_COMMANDS = {
    "train": (_cmd_detect_train, DetectConfig, "train a detector (evaluates on --val-ann at the end)", None),
    "eval": (_cmd_detect_eval, DetectEvalOptions, "COCO AP of a trained detector; writes coco_metrics.json", None),
    "predict": (_cmd_detect_predict, DetectPredictOptions, "draw a detector's boxes and masks onto an image (PNG)",
                None),
    "make-fmnist": (_cmd_detect_make_fmnist, MakeFmnistOptions, "generate COCO data from Fashion-MNIST garments on "
                    "canvases", None),
    "deepforest": (_cmd_detect_deepforest, DeepforestOptions, "convert deepforest's tree-crown photos (wheel or "
                   "folder) to COCO", None),
}


def _add_commands(sub: Any, commands: Dict[str, Any], train_defaults: Optional[Dict[str, Any]] = None) -> None:
    for name, (func, options, help_line, description) in commands.items():
        p = sub.add_parser(name, help=help_line, description=description or help_line)
        p.set_defaults(func=func)
        if options is TrainConfig:
            p.add_argument("--config", type=Path, help="YAML file of defaults (keys are flag names); flags win")
        add_arguments(p, options, train_defaults if options is TrainConfig else None)


def build_parser(train_defaults: Optional[Dict[str, Any]] = None) -> argparse.ArgumentParser:
    """The full ``patnet`` argument parser; ``train_defaults`` are a ``--config`` file's values for ``train``."""
    parser = argparse.ArgumentParser(
        prog="patnet", description="PATNet (arXiv 2503.03148): train, validate, export, quantize, convert and detect.")
    parser.add_argument("--version", action="version", version=f"patnet {__version__}")
    parser.add_argument("--traceback", action="store_true", help="show the full traceback on errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_commands(sub, _COMMANDS, train_defaults)
    det = sub.add_parser("detect", help="Faster / Mask R-CNN with a PATNet (or any timm) backbone",
                         description="Detection and instance segmentation on COCO-format data.")
    _add_commands(det.add_subparsers(dest="detect_command", metavar="ACTION", required=True), _DETECT_COMMANDS)
    return parser


def _config_file_values(argv: List[str]) -> Optional[Dict[str, Any]]:
    """``patnet train --config FILE.yaml``: the file's values, checked through ``TrainConfig``'s field types."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path)
    path = pre.parse_known_args(argv)[0].config
    if path is None:
        return None
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"config file {path} is not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise ValueError(f"config file {path} must map flag names to values, got a {type(values).__name__}")
    return from_mapping(TrainConfig, values, str(path))


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``patnet`` command."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        parser = build_parser(_config_file_values(argv[1:]) if argv[:1] == ["train"] else None)
    except (ValueError, FileNotFoundError) as e:
        print(f"patnet: error: {e}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    return report_errors(lambda: args.func(args), "patnet", args.traceback)


def configure_logging(verbose: bool = False, ours: Sequence[str] = ("patnet",)) -> None:
    """Our loggers (``ours``) at INFO, other libraries' at WARNING (ONNX Runtime's quantizer logs every bias copy
    at INFO); everything at DEBUG with ``verbose``."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for name in ours:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.INFO)


def report_errors(run: Callable[[], Any], prog: str, traceback: bool = False) -> int:
    """Call ``run``; a user error becomes one line, ``PROG: error: ...``, and exit status 2 (the full stack with
    ``traceback``); Ctrl-C exits 130. The benchmark scripts report their errors through this too."""
    try:
        run()
        return 0
    except USER_ERRORS as e:
        if traceback:
            raise
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
