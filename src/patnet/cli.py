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


# Sub-command registrars; later capabilities append theirs here.
_SUBCOMMANDS: List[Callable[[argparse._SubParsersAction], None]] = [_add_convert]


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
