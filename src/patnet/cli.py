"""The ``patnet`` command line: thin wrappers over the library functions.

Every sub-command reports a user error (missing file, bad checkpoint, unwritable path, missing optional package)
as one line, ``patnet: error: ...``, and exit status 2; ``--traceback`` shows the full stack instead.
"""
import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from .config import AUTO_PAPER_EPOCHS, resume_help
from .errors import PatnetError

__all__ = ["main", "build_parser"]

_log = logging.getLogger("patnet")

# Errors that mean "the user asked for something that cannot be done": reported in one line.

# KeyError is deliberately absent: a missing key is a bug of ours, and its traceback must show.
USER_ERRORS = (PatnetError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError, OSError, ImportError)


def _is_rank0() -> bool:
    """Only one process of a torchrun job prints the results."""
    return int(os.environ.get("RANK", "0")) == 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from .io import load_weights, save_weights
    from .models.patnet import PATNet
    from .io import check_not_inputs
    from .weights import check_config_fits, from_official, load_strict, patnet_to_official

    check_not_inputs([args.out], {"SRC": args.src})
    if args.to == "patnet":
        model = from_official(args.src, act_layer=args.act)
        save_weights(model.state_dict(), args.out, config=model.arch_args)
        cfg = model.arch_args
    else:
        sd, cfg = load_weights(args.src)
        if not cfg:
            raise ValueError(f"{args.src} stores no PATNet architecture; convert it from the authors' layout first")
        check_config_fits(cfg, sd, args.src)  # before building anything the metadata asks for
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

    from .weights import create_from_checkpoint, require_models

    if args.checkpoint is None:
        require_models(args.model)
        return timm.create_model(args.model, num_classes=1000 if args.num_classes is None else args.num_classes)
    return create_from_checkpoint(args.model, args.checkpoint, num_classes=args.num_classes)


def _cmd_export(args: argparse.Namespace) -> int:
    from .deploy.export import export_model
    from .io import check_not_inputs

    check_not_inputs([args.out], {"--checkpoint": args.checkpoint})
    model = _load_for_export(args)
    report = export_model(model, args.out, args.format, tuple(args.img_size), args.dynamic_batch, args.opset,
                          args.tolerance, progress=True)
    errs = ", ".join(f"batch {b}: {e:.1e}" for b, e in report.max_rel_error.items())
    print(f"wrote {report.path} ({args.format}, {args.img_size[0]}x{args.img_size[1]}"
          f"{', dynamic batch' if args.dynamic_batch else ''}); verified against PyTorch, relative error {errs}")
    if args.checkpoint is None:
        print("patnet: note: no --checkpoint given; exporting randomly initialised weights (fine for speed and "
              "shape checks, useless for predictions)", file=sys.stderr)
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    from .config import DEFAULT_TOLERANCE, ONNX_OPSET

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
    from .bench import format_table, run_benchmark, write_results

    runtimes = [r.strip() for r in args.runtime.split(",") if r.strip()]
    if args.compile and "compile" not in runtimes:
        runtimes.append("compile")
    if args.suite:
        from .peers import run_peers

        paths = run_peers(args.suite, args.output, runtimes, threads=args.threads, warmup=args.warmup,
                          iters=args.iters, calib=args.calib, tiers=args.tiers)
        print("wrote " + ", ".join(str(p) for p in paths.values()))
        return 0
    results = run_benchmark(
        [m.strip() for m in args.models.split(",") if m.strip()], img_size=args.img_size, threads=args.threads,
        warmup=args.warmup, iters=args.iters, runtimes=runtimes, train_form=not args.no_train_form,
        gpu=False if args.no_gpu else None, calib=args.calib,
    )
    paths = write_results(results, args.output)
    print(format_table(results))
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
    p.add_argument("--runtime", default="eager",
                   help="comma-separated runtimes besides PyTorch eager: compile, onnxruntime (fp32), "
                        "onnxruntime-int8 (fp32 and int8 of the inference form)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd deployment forms")
    p.add_argument("--calib", help="int8 calibration data (as patnet train --data); default generated images")
    p.add_argument("--suite", choices=["peers"], help="peers: PATNet T0..S against timm's efficient backbones "
                   "per tier, with a latency-vs-top-1 plot per runtime (ignores --models)")
    p.add_argument("--tiers", help="with --suite: comma-separated tiers to run (default all: T0,T1,T2,S)")
    p.add_argument("--no-train-form", action="store_true", help="skip timing PATNet's unfused training form")
    p.add_argument("--no-gpu", action="store_true", help="skip GPU throughput even if CUDA is present")
    p.add_argument("--output", type=Path, default=Path("outputs/bench"), help="folder for json/csv/md/png")
    p.set_defaults(func=_cmd_bench)


def _cmd_quantize(args: argparse.Namespace) -> int:
    from .deploy.quantize import quantize_model
    from .io import check_not_inputs

    out = Path(args.out)
    check_not_inputs([out, out.with_suffix(".json"), out.with_suffix(".bin")], {"--checkpoint": args.checkpoint})
    model = _load_for_export(args)
    report = quantize_model(
        model, args.out, args.calib, name=args.model, img_size=args.img_size, crop_pct=args.crop_pct,
        method=args.method, calib_images=args.calib_images, eval_images=args.eval_images, max_drop=args.max_drop,
        seed=args.seed, runtime=args.runtime,
    )
    acc = (f"top-1 fp32 {report.top1_fp32:.2f}% -> int8 {report.top1_int8:.2f}% (drop {report.drop:.2f} points), "
           if report.top1_fp32 is not None else "")
    kind = "int8 OpenVINO IR (NNCF)" if report.runtime == "openvino" else "int8 QDQ ONNX"
    print(f"wrote {report.path} ({kind}, {report.img_size[0]}x{report.img_size[1]}, {report.method} calibration on "
          f"{report.calib_images} images); on {report.eval_images} held-out images: {acc}top-1 agreement with fp32 "
          f"{report.top1_agreement:.2f}%; report {Path(report.path).with_suffix('.json')}")
    return 0


def _add_quantize(sub: argparse._SubParsersAction) -> None:
    from .config import CALIBRATION_METHODS, DEFAULT_MAX_DROP

    p = sub.add_parser("quantize", help="int8 ONNX (QDQ) or OpenVINO IR of any model, calibrated and verified",
                       description="Export the model's inference form, calibrate on --calib images (train split), "
                                   "quantize for --runtime (ONNX Runtime QDQ: per-channel int8 weights, uint8 "
                                   "activations; OpenVINO: NNCF) and verify on held-out val images; beyond "
                                   "--max-drop nothing is written.")
    p.add_argument("model", help="registered model name, e.g. patnet_t0 or fasternet_t0")
    p.add_argument("out", type=Path, help="output .onnx (onnxruntime) or .xml (openvino, with its .bin); the "
                                          "report goes next to it as .json")
    p.add_argument("--runtime", choices=("onnxruntime", "openvino"), default="onnxruntime",
                   help="int8 runtime (default %(default)s; openvino is the fastest on Intel CPUs with AMX)")
    p.add_argument("--checkpoint", type=Path, help="weights: ours (.safetensors/.pth) or the authors' layout")
    p.add_argument("--num-classes", type=int, help="classes (default: read from the checkpoint, else 1000)")
    p.add_argument("--calib", required=True, help="data as for patnet train --data (fashion-mnist, a folder, ...)")
    p.add_argument("--calib-images", type=int, default=256, help="calibration images (default %(default)s)")
    p.add_argument("--eval-images", type=int, default=1000, help="held-out verification images (default %(default)s)")
    p.add_argument("--method", choices=CALIBRATION_METHODS, default="minmax", help="calibration (default %(default)s)")
    p.add_argument("--img-size", type=int, nargs=2, metavar=("H", "W"), help="default: the model's input size")
    p.add_argument("--crop-pct", type=float, help="eval centre-crop fraction (default: the model's)")
    p.add_argument("--max-drop", type=float, default=DEFAULT_MAX_DROP,
                   help="largest accepted top-1 loss in points (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="which calibration images are drawn")
    p.set_defaults(func=_cmd_quantize)


def _yaml_defaults(parser: argparse.ArgumentParser, argv: List[str]) -> None:
    """``--config FILE.yaml`` sets defaults (keys as flag names, - or _); flags given on the command line win."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path)
    known, _ = pre.parse_known_args(argv)
    if known.config is None:
        return
    import yaml

    if not known.config.is_file():
        raise FileNotFoundError(f"config file {known.config} does not exist")
    try:
        values = yaml.safe_load(known.config.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"config file {known.config} is not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise ValueError(f"config file {known.config} must map flag names to values, got a {type(values).__name__}")
    actions = {a.dest: a for a in parser._actions}
    unknown = [k for k in values if k.replace("-", "_") not in actions]
    if unknown:
        raise ValueError(f"config file {known.config} has unknown keys {unknown}")
    parser.set_defaults(**{k.replace("-", "_"): _yaml_value(known.config, k, v, actions[k.replace("-", "_")])
                           for k, v in values.items()})


def _yaml_value(config: Path, key: str, value: Any, action: argparse.Action) -> Any:
    """A config-file value checked and converted as its flag would be (type, count, choices), or a one-line error."""
    def bad(why: str) -> ValueError:
        return ValueError(f"config file {config}: {key}: {value!r} {why}")

    if action.nargs == 0:  # a switch (store_true / store_false)
        if not isinstance(value, bool):
            raise bad("must be true or false")
        return action.const if value else action.default
    many = action.nargs in ("+", "*") or isinstance(action.nargs, int)
    items = value if isinstance(value, list) else [value]
    if not many and isinstance(value, (list, dict)) or any(isinstance(v, (list, dict)) for v in items):
        raise bad("must be a single value" if not many else "must be a list of plain values")
    if isinstance(action.nargs, int) and len(items) != action.nargs:
        raise bad(f"must be a list of {action.nargs} values")
    convert = action.type if callable(action.type) else (lambda s: s)
    out = []
    for v in items:
        try:
            v = v if v is None else convert(str(v).lower() if isinstance(v, bool) else str(v))
        except (TypeError, ValueError, argparse.ArgumentTypeError) as e:
            raise bad(f"is not a valid value ({e})") from None
        if action.choices is not None and v not in action.choices:
            raise bad(f"is not one of {', '.join(map(str, action.choices))}")
        out.append(v)
    return out if many else out[0]


def _cmd_train(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from .train import TrainConfig, train

    names = {f.name for f in fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in names})
    cfg.scale = tuple(cfg.scale)
    metrics = train(cfg)
    if _is_rank0():
        print(json.dumps(metrics, indent=2))
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    from .config import TrainConfig

    d = TrainConfig()
    p = sub.add_parser("train", help="train a classifier (any timm model) on an image folder or IDX data",
                       description="Train with the paper's recipe by default (AdamW, cosine + warm-up, lr = 0.001 x "
                                   "batch / 1024, label smoothing, mixup/cutmix, RandAugment, drop path). Works "
                                   "under torchrun --no-python ... patnet train for DistributedDataParallel.")
    p.add_argument("--config", type=Path, help="YAML file of defaults (keys are flag names)")
    g = p.add_argument_group("model and data")
    g.add_argument("--model", default=d.model, help="registered model name (default %(default)s)")
    g.add_argument("--data", default=d.data, help="fashion-mnist, mnist, an IDX folder or a train/ + val/ tree")
    g.add_argument("--img-size", type=int, default=d.img_size, help="train and eval size (default %(default)s)")
    g.add_argument("--img-size-schedule", help="EPOCH:SIZE,... e.g. 0:192,280:224 (train size per epoch)")
    g.add_argument("--val-split", type=float, metavar="FRACTION",
                   help="validate on this fraction of the training set (stratified, the same for every seed) "
                        "instead of the val/test split: tune a recipe without touching the test set")
    g.add_argument("--strict-data", action="store_true", help="stop on an unreadable image instead of skipping it")
    g.add_argument("--workers", type=int, default=d.workers, help="data loading processes")
    g = p.add_argument_group("schedule")
    g.add_argument("--epochs", type=int, default=d.epochs)
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="per process (default %(default)s)")
    g.add_argument("--lr", type=float,
                   help="peak lr (default scales with the global batch: paper recipe 1e-3 per 1024, short 2e-3 per 128)")
    g.add_argument("--warmup-epochs", type=float, help="default 20/300 of --epochs")
    g.add_argument("--min-lr", type=float)
    g.add_argument("--max-train-batches", type=int, help="cap the batches of each epoch")
    g.add_argument("--max-val-batches", type=int, help="cap the validation batches")
    g = p.add_argument_group("recipe overrides (default: the variant's row of the paper's recipe)")
    g.add_argument("--recipe", choices=["auto", "paper", "short"], default=d.recipe,
                   help=f"auto: short below {AUTO_PAPER_EPOCHS} epochs, else paper; paper: the authors' recipe by "
                        "size (made for 300 ImageNet epochs); short: for small data and a few epochs (no mixup, "
                        "cutmix or RandAugment, lr 2e-3 at batch 128, crops 0.7-1.0) (default %(default)s)")
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--mixup", type=float)
    g.add_argument("--cutmix", type=float)
    g.add_argument("--smoothing", type=float)
    g.add_argument("--auto-augment", help="timm RandAugment string, or 'none'")
    g.add_argument("--scale", type=float, nargs=2, default=list(d.scale), help="random-resized-crop scale range")
    g.add_argument("--crop-pct", type=float, default=d.crop_pct, help="eval centre-crop fraction")
    g.add_argument("--drop-path-rate", type=float)
    g.add_argument("--clip-grad", type=float, help="gradient norm clip (0 disables)")
    g.add_argument("--model-ema", action="store_true")
    g.add_argument("--model-ema-decay", type=float, default=d.model_ema_decay)
    g = p.add_argument_group("runtime and output")
    g.add_argument("--amp", choices=["none", "bf16", "fp16"], default=d.amp, help="mixed precision (bf16 on CPU)")
    g.add_argument("--channels-last", action="store_true")
    g.add_argument("--compile", action="store_true", help="torch.compile the training step (slow first steps)")
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--output", default=d.output, help="folder for checkpoints, logs and metrics.json")
    g.add_argument("--resume", help=resume_help())
    g.add_argument("--overwrite", action="store_true", help="replace the run already in --output")
    g.add_argument("--tensorboard", action="store_true")
    g.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=_cmd_train)


def _cmd_validate(args: argparse.Namespace) -> int:
    if args.output is not None and (Path(args.output) / "last.pth").exists():
        raise ValueError(f"--output {args.output} holds a training run, whose metrics.json is the run's own; write "
                         "the evaluation to another folder")
    if args.onnx is not None:
        if args.checkpoint is not None:
            raise ValueError("give either --onnx or --checkpoint, not both")
        from .deploy.runtime import evaluate_file

        res = evaluate_file(args.onnx, args.data, args.batch_size, max_images=args.max_images,
                            img_size=args.img_size, crop_pct=args.crop_pct)
        print(json.dumps(res, indent=2))
        if args.output is not None:
            from .io import atomic_path

            with atomic_path(Path(args.output) / "metrics.json") as tmp:
                tmp.write_text(json.dumps(res, indent=2))
        return 0
    if args.model is None or args.checkpoint is None:
        raise ValueError("validate needs --model and --checkpoint (or --onnx FILE.onnx)")
    from .train import validate

    res = validate(args.model, args.data, args.checkpoint, args.img_size or 64, args.batch_size,
                   0.9 if args.crop_pct is None else args.crop_pct,
                   args.act, args.workers, args.amp, args.output, args.max_val_batches)
    print(json.dumps(res, indent=2))
    return 0


def _add_validate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="evaluate a checkpoint (ours or the authors') on a val split",
                       description="Top-1, top-5 and loss of a checkpoint on the val split of --data.")
    p.add_argument("--model", help="registered model name (with --checkpoint)")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--checkpoint", type=Path, help="best.pth/last.pth, .safetensors or authors' .pth")
    p.add_argument("--onnx", type=Path, help="evaluate an exported fp32 or int8 file instead: .onnx (ONNX Runtime) or "
                                             ".xml (an OpenVINO IR)")
    p.add_argument("--act", choices=["gelu", "relu"], help="activation of an authors' checkpoint, if not the variant's")
    p.add_argument("--img-size", type=int, help="eval size (default 64; an ONNX file's own size)")
    p.add_argument("--crop-pct", type=float, help="eval centre-crop fraction (default 0.9; an ONNX file's own)")
    p.add_argument("--max-images", type=int, help="with --onnx: evaluate at most this many images")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none")
    p.add_argument("--max-val-batches", type=int)
    p.add_argument("--output", type=Path, help="write metrics.json here")
    p.set_defaults(func=_cmd_validate)


def _cmd_detect_train(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from .detection.engine import DetectConfig, train_detector

    names = {f.name for f in fields(DetectConfig)}
    given = {k: v for k, v in vars(args).items() if k in names and not (k in ("ann", "images") and v is None)}
    cfg = DetectConfig(**{k: str(v) if isinstance(v, Path) else v for k, v in given.items()})
    metrics = train_detector(cfg)
    if _is_rank0():
        print(json.dumps({k: v for k, v in metrics.items() if k != "history"}, indent=2))
    return 0


def _cmd_detect_eval(args: argparse.Namespace) -> int:
    from .detection.data import CocoDataset, detection_transform
    from .detection.engine import evaluate_detector, load_detector

    model = load_detector(args.checkpoint)
    masks = args.task == "masks" if args.task else hasattr(model, "roi_heads") and model.roi_heads.has_mask()
    ds = CocoDataset(args.ann, args.images, masks, detection_transform(False))
    if ds.class_names != model.class_names:
        raise ValueError(f"{args.ann} has categories {ds.class_names}; the detector was trained on {model.class_names}")
    metrics = evaluate_detector(model, ds, output=args.output, workers=args.workers, max_images=args.max_images)
    print(json.dumps(metrics, indent=2))
    return 0


def _cmd_detect_predict(args: argparse.Namespace) -> int:
    from .detection.engine import load_detector, predict_image

    res = predict_image(load_detector(args.checkpoint), args.image, args.out, args.score_threshold)
    print(json.dumps(res, indent=2))
    if not res["detections"]:
        top = res["top_score"]
        print(f"patnet: note: nothing scored >= --score-threshold {args.score_threshold}"
              + (f"; the best candidate scored {top:.2f}: lower the threshold to see it" if top is not None else
                 "; the detector proposed nothing at all"), file=sys.stderr)
    return 0


def _cmd_detect_make_fmnist(args: argparse.Namespace) -> int:
    from .detection.data import make_fashion_mnist_detection

    paths = make_fashion_mnist_detection(args.out, args.data, args.train_images, args.val_images, args.canvas,
                                         seed=args.seed)
    print(f"wrote {paths['train']} and {paths['val']} (images in {args.out}/train and {args.out}/val)")
    return 0


def _cmd_detect_deepforest(args: argparse.Namespace) -> int:
    from .detection.data import deepforest_to_coco

    print(f"wrote {deepforest_to_coco(args.source, args.out, args.single_class, args.tile)}")
    return 0


def _add_detect(sub: argparse._SubParsersAction) -> None:
    from .config import DetectConfig

    d = DetectConfig()
    det = sub.add_parser("detect", help="Faster / Mask R-CNN with a PATNet (or any timm) backbone",
                         description="Detection and instance segmentation on COCO-format data.")
    dsub = det.add_subparsers(dest="detect_command", metavar="ACTION", required=True)

    p = dsub.add_parser("train", help="train a detector (evaluates on --val-ann at the end)")
    p.add_argument("--model", default=d.model, help="backbone: any timm features_only model (default %(default)s)")
    p.add_argument("--ann", type=Path, help="training COCO JSON (needed unless --resume)")
    p.add_argument("--images", type=Path, help="training image folder (needed unless --resume)")
    p.add_argument("--val-ann", type=Path)
    p.add_argument("--val-images", type=Path)
    p.add_argument("--task", choices=["boxes", "masks"], default=d.task, help="Faster R-CNN or Mask R-CNN")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--img-size", type=int, default=d.img_size, help="shorter side after resizing")
    p.add_argument("--max-size", type=int, help="longer side bound (default 5/3 of --img-size)")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--schedule", choices=["step", "cosine"], default=d.schedule)
    p.add_argument("--warmup-iters", type=int, default=d.warmup_iters)
    p.add_argument("--backbone-checkpoint", type=Path, help="classification weights (ours or the authors' layout)")
    p.add_argument("--backbone-act", choices=["gelu", "relu"], help="activation of an authors' checkpoint")
    p.add_argument("--trainable-stages", type=int, default=d.trainable_stages, help="last stages that train (0-4)")
    p.add_argument("--norm", choices=["frozen", "train"], default=d.norm, help="backbone BatchNorm handling")
    p.add_argument("--roi-batch-size", type=int, default=d.roi_batch_size,
                   help="RoIs sampled per image for the heads in training (torchvision's 512; 128 is ~4x cheaper)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--workers", type=int, default=d.workers)
    p.add_argument("--max-iters-per-epoch", type=int)
    p.add_argument("--output", type=Path, default=Path(d.output))
    p.add_argument("--resume", type=Path, help=resume_help())
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --output")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=_cmd_detect_train)

    p = dsub.add_parser("eval", help="COCO AP of a trained detector; writes coco_metrics.json")
    p.add_argument("--checkpoint", required=True, type=Path)
    p.add_argument("--ann", required=True, type=Path)
    p.add_argument("--images", required=True, type=Path)
    p.add_argument("--task", choices=["boxes", "masks"], help="default: masks if the detector has a mask head")
    p.add_argument("--output", type=Path, default=Path("outputs/detect_eval"))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--max-images", type=int)
    p.set_defaults(func=_cmd_detect_eval)

    p = dsub.add_parser("predict", help="draw a detector's boxes and masks onto an image (PNG)")
    p.add_argument("--checkpoint", required=True, type=Path)
    p.add_argument("--image", required=True, type=Path)
    p.add_argument("--out", type=Path, default=Path("outputs/prediction.png"))
    p.add_argument("--score-threshold", type=float, default=0.5)
    p.set_defaults(func=_cmd_detect_predict)

    p = dsub.add_parser("make-fmnist", help="generate COCO data from Fashion-MNIST garments on canvases")
    p.add_argument("out", type=Path)
    p.add_argument("--data", default="fashion-mnist", help="Fashion-MNIST location (name or IDX folder)")
    p.add_argument("--train-images", type=int, default=400)
    p.add_argument("--val-images", type=int, default=100)
    p.add_argument("--canvas", type=int, default=160)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_detect_make_fmnist)

    p = dsub.add_parser("deepforest", help="convert deepforest's tree-crown photos (wheel or folder) to COCO")
    p.add_argument("source", type=Path, help="deepforest-*.whl (pip download deepforest --no-deps) or its data/")
    p.add_argument("out", type=Path)
    p.add_argument("--single-class", help="one label for every object, e.g. Tree")
    p.add_argument("--tile", type=int, help="cut larger images into TILE x TILE tiles")
    p.set_defaults(func=_cmd_detect_deepforest)


# Sub-command registrars; later capabilities append theirs here.
_SUBCOMMANDS: List[Callable[[argparse._SubParsersAction], None]] = [
    _add_convert, _add_export, _add_quantize, _add_bench, _add_train, _add_validate, _add_detect,
]


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
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "train":
        try:
            _yaml_defaults(parser._subparsers._group_actions[0].choices["train"], argv[1:])
        except (ValueError, FileNotFoundError) as e:
            print(f"patnet: error: {e}", file=sys.stderr)
            return 2
    args = parser.parse_args(argv)
    # Our messages at INFO; other libraries' (ONNX Runtime's quantizer logs every bias copy at INFO) at WARNING.
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("patnet").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as e:
        if args.traceback:
            raise
        print(f"patnet: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("patnet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
