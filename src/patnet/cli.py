"""The ``patnet`` command line: thin wrappers over the library functions.

Every sub-command reports a user error (missing file, bad checkpoint, unwritable path, missing optional package)
as one line, ``patnet: error: ...``, and exit status 2; ``--traceback`` shows the full stack instead.
"""
import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional

__all__ = ["main", "build_parser"]

_log = logging.getLogger("patnet")

# Errors that mean "the user asked for something that cannot be done": reported in one line.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, OSError, ImportError, KeyError)


def _cmd_convert(args: argparse.Namespace) -> int:
    from .io import load_weights, save_weights
    from .model import PATNet, from_official, load_strict, patnet_to_official

    if args.to == "patnet":
        model = from_official(args.src, act_layer=args.act)
        save_weights(model.state_dict(), args.out, config=model.arch_args)
        cfg = model.arch_args
    else:
        sd, cfg = load_weights(args.src)
        if not cfg:
            raise ValueError(f"{args.src} stores no PATNet architecture; convert it from the authors' layout first")
        load_strict(PATNet(**cfg), sd)  # proves the weights are a complete PATNet before renaming
        save_weights(patnet_to_official(sd), args.out)
    print(f"wrote {args.out} ({args.to} layout): embed_dim={cfg['embed_dim']} depths={cfg['depths']} "
          f"spatial_attn={cfg['spatial_attn']} classes={cfg['num_classes']}")
    return 0


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert an authors' checkpoint to our layout (.safetensors) or back",
        description="Convert an authors'-layout PATNet checkpoint into this package's layout, architecture stored in "
                    "the file's metadata (load it with patnet.load_model). --to official goes the other way.",
    )
    p.add_argument("src", type=Path, help="input checkpoint (.pth/.pt/.ckpt/.safetensors)")
    p.add_argument("out", type=Path, help="output file (.safetensors recommended; .pth also works)")
    p.add_argument("--act", choices=["gelu", "relu"], default="gelu",
                   help="activation the checkpoint was trained with: gelu for T0/T1, relu for T2..L (default gelu)")
    p.add_argument("--to", choices=["patnet", "official"], default="patnet", help="target layout (default patnet)")
    p.set_defaults(func=_cmd_convert)


def _load_for_export(args: argparse.Namespace):
    import timm

    from . import model as _model  # noqa: F401  (registers patnet_* with timm)

    if not timm.is_model(args.model):
        raise ValueError(f"unknown model {args.model!r}; see timm.list_models() (patnet_t0 .. patnet_l, fasternet_t0 ..)")
    if args.checkpoint is None:
        return timm.create_model(args.model, num_classes=args.num_classes or 1000)
    from .io import load_weights
    from .model import _is_official_layout, _unwrap, checkpoint_filter_fn, load_strict

    sd, cfg = load_weights(args.checkpoint)
    sd = checkpoint_filter_fn(_unwrap(sd), None)
    classes = args.num_classes or next((v.shape[0] for k, v in sd.items() if k.endswith("classifier.weight")), 1000)
    model = timm.create_model(args.model, num_classes=classes)
    try:
        load_strict(model, sd)
    except ValueError as e:
        raise ValueError(f"checkpoint {args.checkpoint} does not fit {args.model}: {e}") from None
    return model


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import export_model

    model = _load_for_export(args)
    report = export_model(model, args.out, args.format, tuple(args.img_size), args.dynamic_batch, args.opset,
                          args.tolerance)
    errs = ", ".join(f"batch {b}: {e:.1e}" for b, e in report.max_rel_error.items())
    print(f"wrote {report.path} ({args.format}, {args.img_size[0]}x{args.img_size[1]}"
          f"{', dynamic batch' if args.dynamic_batch else ''}); verified against PyTorch, relative error {errs}")
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    from .export import DEFAULT_TOLERANCE, ONNX_OPSET

    p = sub.add_parser("export", help="export a model's deployment form to ONNX or TorchScript, verified",
                       description="Fuse the model (BatchNorm folded), export it, run the file and compare it with "
                                   "PyTorch; beyond tolerance the file is removed and the command fails.")
    p.add_argument("model", help="registered model name, e.g. patnet_t2 or fasternet_t2")
    p.add_argument("out", type=Path, help="output file")
    p.add_argument("--checkpoint", type=Path, help="weights: ours (.safetensors/.pth) or the authors' layout")
    p.add_argument("--num-classes", type=int, help="classes (default: read from the checkpoint, else 1000)")
    p.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    p.add_argument("--img-size", type=int, nargs=2, metavar=("H", "W"), default=[224, 224])
    p.add_argument("--dynamic-batch", action="store_true", help="symbolic batch axis (verified at batch 1 and 8)")
    p.add_argument("--opset", type=int, default=ONNX_OPSET, help=f"ONNX opset (default {ONNX_OPSET})")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help="max |export - pytorch| / max |logit| (default %(default)g)")
    p.set_defaults(func=_cmd_export)


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import _fmt_table, run_benchmark, write_results

    results = run_benchmark(
        [m.strip() for m in args.models.split(",") if m.strip()], img_size=args.img_size, threads=args.threads,
        warmup=args.warmup, iters=args.iters, runtime=args.runtime, train_form=not args.no_train_form,
        gpu=False if args.no_gpu else None,
    )
    paths = write_results(results, args.output)
    print(_fmt_table(results))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="params, FLOPs, CPU latency (and GPU / ONNX Runtime) of any models",
                       description="Benchmark registered model names by the papers' protocol, hardened: deployment "
                                   "form, fp32, batch 1, interleaved timing, median and p10-p90, matmul peak.")
    p.add_argument("--models", default="patnet_t0,fasternet_t0,patnet_t2,fasternet_t2",
                   help="comma-separated model names (default: %(default)s)")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="CPU thread counts (default 1 2)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--iters", type=int, default=200, help="timed forwards per model and thread count")
    p.add_argument("--runtime", choices=["torch", "onnxruntime"], default="torch",
                   help="onnxruntime: also time the ONNX export in ONNX Runtime")
    p.add_argument("--no-train-form", action="store_true", help="skip timing PATNet's unfused training form")
    p.add_argument("--no-gpu", action="store_true", help="skip GPU throughput even if CUDA is present")
    p.add_argument("--output", type=Path, default=Path("outputs/bench"), help="folder for json/csv/md/png")
    p.set_defaults(func=_cmd_bench)


# Sub-command registrars; later capabilities append theirs here.
_SUBCOMMANDS: List[Callable[[argparse._SubParsersAction], None]] = [_add_convert, _add_export, _add_bench]


def build_parser() -> argparse.ArgumentParser:
    """The full ``patnet`` argument parser."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="patnet",
        description="PATNet (arXiv 2503.03148): convert checkpoints, benchmark, export, train and detect.",
    )
    parser.add_argument("--version", action="version", version=f"patnet {__version__}")
    parser.add_argument("--traceback", action="store_true", help="show the full traceback on errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in _SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``patnet`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as e:
        if args.traceback:
            raise
        msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        print(f"patnet: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("patnet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
