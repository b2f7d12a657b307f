"""Reading, converting and checking weights: the authors' checkpoints and this package's own files.

The network lives in ``patnet.models.patnet``; this module only turns files into models:

* ``official_to_patnet`` / ``patnet_to_official``: rename a state dict between the authors' layout and ours (one
  table used in both directions, so a round trip cannot drift).
* ``load_official_state_dict`` / ``from_official``: read an authors' checkpoint; the architecture is inferred from
  its tensors.
* ``save_pretrained`` / ``load_model``: timm's pretrained folder (``model.safetensors`` + ``config.json``, as
  ``timm.models.save_for_hf`` writes and ``timm.create_model("local-dir:FOLDER", pretrained=True)`` reads), what
  ``patnet convert`` writes; ``load_model`` also takes an authors' file.
* ``create_from_checkpoint``: any registered timm model (PATNet or a baseline) from a checkpoint of ours or theirs.
* ``check_config_fits`` / ``load_strict``: refuse, in one line, weights that do not fit the architecture.
"""
import contextlib
import inspect
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Dict, Optional, Set, Tuple, Union

import timm
import torch
import torch.nn as nn
from safetensors.torch import save as safetensors_bytes
# timm's public save_for_hf writes the weights through safetensors' own file writer, whose disk-full error is no
# OSError; its config writer has no public name in timm 1.0.x. The round trip through timm is tested.
from timm.models._hub import save_config_for_hf

from .io import atomic_files, check_not_inputs, read_checkpoint, save_weights
from .models.patnet import (
    VARIANTS,
    LayerType,
    PATNet,
    is_official_layout,
    official_to_patnet,
    patnet_to_official,
    unwrap_state_dict,
)

__all__ = [
    "official_to_patnet", "patnet_to_official", "load_official_state_dict", "from_official", "load_strict",
    "check_config_fits", "load_model", "require_models", "create_from_checkpoint", "convert_checkpoint",
    "build_patnet", "save_pretrained", "read_pretrained", "PRETRAINED_FILES",
]

PRETRAINED_FILES = ("model.safetensors", "config.json")  # timm's pretrained folder (save_for_hf, local-dir:)


def load_official_state_dict(source: Union[str, Path, Mapping[str, Any]]) -> Dict[str, torch.Tensor]:
    """Load a state dict from a file (``.pth``/``.pt``/``.ckpt`` or ``.safetensors``) or a mapping, unwrapped."""
    if isinstance(source, (str, Path)):
        obj: Any = read_checkpoint(source)
    else:
        obj = source
    return unwrap_state_dict(obj)


def _infer_official_config(sd: Mapping[str, torch.Tensor]) -> Dict[str, Any]:
    """Architecture arguments of ``PATNet`` read off an authors'-layout state dict's tensors."""
    try:
        stem = sd["patch_embed.proj.weight"]
        embed_dim, in_chans, patch_size = stem.shape[0], stem.shape[1], stem.shape[2]
        depths = []
        for s in range(4):
            blocks = {int(m.group(1)) for k in sd if (m := re.match(rf"^stages\.{2 * s}\.blocks\.(\d+)\.", k))}
            depths.append(len(blocks))
        conv_p = sd["stages.0.blocks.0.spatial_mixing.partial_conv3.weight"].shape[0]
        hidden = sd["stages.0.blocks.0.mlp.0.weight"].shape[0]
        heads = sd["stages.6.blocks.0.spatial_mixing.attn.rpe_k.lookup_table_bias"].shape[0]
        head_conv = sd["avgpool_pre_head.1.weight"]
        merge = sd["stages.1.reduction.weight"].shape[-1]
    except KeyError as e:
        raise ValueError(f"not an authors'-layout PATNet state dict: key {e.args[0]!r} is missing") from e
    return dict(
        in_chans=in_chans,
        embed_dim=embed_dim,
        depths=tuple(depths),
        patch_size=patch_size,
        merge_size=merge,
        n_div=embed_dim // conv_p,
        mlp_ratio=hidden / embed_dim,
        spatial_attn=any(".mlp.4." in k for k in sd),
        num_heads=heads,
        feature_dim=head_conv.shape[0],
        num_classes=sd["head.weight"].shape[0] if "head.weight" in sd else 0,
    )


def from_official(
        source: Union[str, Path, Mapping[str, Any]],
        act_layer: LayerType = "gelu",
        **overrides: Any,
) -> PATNet:
    """Build a ``PATNet`` from an authors'-layout checkpoint, architecture inferred from its tensors.

    Width, depths, stem/merge sizes, split ratio, MLP ratio, PAT_sp, heads, head width and classes are read off the
    tensors. The activation cannot be (it has no weights), so pass ``act_layer`` ('gelu' for T0/T1, 'relu' for
    T2..L). ``overrides`` set any other ``PATNet`` argument (``drop_path_rate``, ``num_classes`` is not allowed to
    disagree with the tensors). Loading is strict: missing or unused keys raise an error naming them.

    Args:
        source: A state dict, a checkpoint dict (``state_dict`` / ``model`` wrappers, Lightning ``model.``
            prefixes), or a path to one.
        act_layer: Activation the checkpoint was trained with.
        **overrides: Extra ``PATNet`` constructor arguments.

    Returns:
        The model in eval mode.
    """
    sd = load_official_state_dict(source)
    if not is_official_layout(sd):
        raise ValueError("state dict is not in the authors' layout (no 'patch_embed.*' keys); use load_state_dict")
    cfg = _infer_official_config(sd)
    for key, value in overrides.items():
        if key in cfg and key != "num_classes" and value != cfg[key]:
            raise ValueError(f"override {key}={value!r} contradicts the checkpoint, which has {key}={cfg[key]!r}")
    cfg.update(overrides)
    cfg["act_layer"] = act_layer
    model = build_patnet(cfg)
    load_strict(model, official_to_patnet(sd))
    return model.eval()


def _variant_of(arch: Mapping[str, Any]) -> str:
    """The registered variant with ``arch``'s width and depths (config.json's "architecture"), else the family's
    first: every argument is stored in "model_args" too, so the name only chooses the default cfg."""
    return next((name for name, v in VARIANTS.items()
                 if v["embed_dim"] == arch.get("embed_dim") and list(v["depths"]) == list(arch.get("depths", ()))),
                "patnet_t0")


def build_patnet(arch: Mapping[str, Any]) -> PATNet:
    """``timm.create_model`` of the PATNet with exactly the architecture ``arch`` (``PATNet`` arguments), so the
    model carries timm's pretrained cfg and records its arguments for ``config.json``."""
    return timm.create_model(_variant_of(arch), **dict(arch))


def save_pretrained(model: PATNet, folder: Union[str, Path]) -> Path:
    """Write ``model`` as timm's pretrained folder: ``model.safetensors`` and ``config.json`` (architecture, every
    constructor argument in "model_args", preprocessing), as a unit: a failure or kill leaves the previous pair (or
    no folder at all). ``model`` must come from timm's factory (``timm.create_model``, ``from_official``,
    ``load_model``), which records its arguments.

    Load it with ``timm.create_model("local-dir:FOLDER", pretrained=True)`` or ``load_model(FOLDER)``.
    """
    folder = Path(folder)
    created = not folder.exists()
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    try:
        with atomic_files(*(folder / name for name in PRETRAINED_FILES)) as staged:  # config.json, timm's key, last
            (staged / PRETRAINED_FILES[0]).write_bytes(safetensors_bytes(tensors))  # a full disk is an OSError
            save_config_for_hf(model, staged / PRETRAINED_FILES[1], model_args=dict(model.arch_args))
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # the folder this call made, still empty
        raise
    return folder


def read_pretrained(folder: Union[str, Path]) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """A timm pretrained folder's state dict and the PATNet architecture its ``config.json`` names ("model_args"),
    checked against each other before anything is built for it."""
    folder = Path(folder)
    cfg_file = folder / PRETRAINED_FILES[1]
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{folder} is not a timm pretrained folder: it has no {PRETRAINED_FILES[1]}")
    try:
        cfg = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError(f"{cfg_file} is not valid JSON") from None
    arch = cfg.get("model_args") if isinstance(cfg, dict) else None
    if not isinstance(arch, dict) or not str(cfg.get("architecture", "")).startswith("patnet"):
        raise ValueError(f"{cfg_file} does not describe a PATNet (no patnet_* architecture with model_args)")
    sd = read_checkpoint(folder / PRETRAINED_FILES[0])
    check_config_fits(arch, sd, folder)
    return sd, arch


def load_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """``load_state_dict(strict=True)`` with one clear message naming missing, unused and mis-shaped keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unused = sorted(set(state_dict) - set(own))
    shapes = sorted(k for k in set(own) & set(state_dict) if own[k].shape != state_dict[k].shape)
    if missing or unused or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {missing[:6]}")
        if unused:
            parts.append(f"unused {len(unused)}: {unused[:6]}")
        if shapes:
            parts.append(
                "wrong shape: " + ", ".join(f"{k} {tuple(state_dict[k].shape)} != {tuple(own[k].shape)}" for k in shapes[:4])
            )
        raise ValueError("checkpoint does not fit the model; " + "; ".join(parts))
    model.load_state_dict(state_dict, strict=True)


def check_config_fits(config: Mapping[str, Any], sd: Mapping[str, torch.Tensor], source: Any) -> None:
    """Refuse a stored architecture that does not describe ``sd`` before anything is allocated for it.

    The widths, depths and class count are read off the tensors and compared, so a file whose metadata asks for,
    say, ``embed_dim=10**7`` fails in one line instead of allocating gigabytes.
    """
    allowed = set(inspect.signature(PATNet.__init__).parameters) - {"self"}
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise ValueError(f"{source}: stored architecture has unknown keys {unknown}")
    if "stem.conv.weight" not in sd or sd["stem.conv.weight"].dim() != 4:
        raise ValueError(f"{source} does not hold PATNet weights in this package's layout (no stem.conv.weight)")
    expected: Dict[str, Any] = {"embed_dim": sd["stem.conv.weight"].shape[0], "in_chans": sd["stem.conv.weight"].shape[1]}
    blocks: Dict[int, Set[int]] = {}
    for k in sd:
        m = re.match(r"^stages\.(\d+)\.blocks\.(\d+)\.", k)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    if blocks:
        expected["depths"] = [len(blocks.get(i, ())) for i in range(max(blocks) + 1)]
    if "conv_head.weight" in sd:
        expected["feature_dim"] = sd["conv_head.weight"].shape[0]
    expected["num_classes"] = sd["classifier.weight"].shape[0] if "classifier.weight" in sd else 0
    wrong = [f"{k}={config[k]!r} (the weights say {v!r})" for k, v in expected.items()
             if k in config and (list(config[k]) if isinstance(config[k], (list, tuple)) else config[k]) != v]
    if wrong:
        raise ValueError(f"{source}: stored architecture does not match its weights: {', '.join(wrong)}")


def load_model(path: Union[str, Path], act_layer: Optional[LayerType] = None, **overrides: Any) -> PATNet:
    """Build a PATNet from timm's pretrained folder (``patnet convert`` / ``save_pretrained`` output: config.json
    names the architecture) or from an authors' checkpoint file (architecture inferred; pass ``act_layer``).
    ``overrides`` and ``act_layer`` replace stored arguments. Strict, returned in eval mode."""
    path = Path(path)
    if path.is_dir():
        sd, arch = read_pretrained(path)
        arch.update(overrides)
        if act_layer is not None:
            arch["act_layer"] = act_layer
        model = build_patnet(arch)
        load_strict(model, sd)
        return model.eval()
    sd = load_official_state_dict(path)
    if not is_official_layout(sd):
        raise ValueError(f"{path} holds weights but no architecture: give the folder patnet convert or "
                         "save_pretrained wrote, or build the model yourself and use load_state_dict")
    if act_layer is None:
        raise ValueError(f"{path} is an authors' checkpoint: pass act_layer ('gelu' for T0/T1, 'relu' for T2..L)")
    return from_official(sd, act_layer=act_layer, **overrides)


def require_models(*names: str) -> None:
    """Raise a one-line ``ValueError`` naming every name that timm does not know (PATNet's are registered)."""
    unknown = [n for n in names if not timm.is_model(n)]
    if unknown:
        raise ValueError(f"unknown model name(s) {', '.join(unknown)}; see timm.list_models() "
                         "(patnet_t0 .. patnet_l, fasternet_t0 .. fasternet_l, ...)")


def create_from_checkpoint(
        name: str,
        checkpoint: Union[str, Path],
        act_layer: Optional[str] = None,
        num_classes: Optional[int] = None,
) -> nn.Module:
    """The registered timm model ``name`` with weights from any checkpoint, loaded strictly.

    Accepts our training checkpoints (``last.pth`` / ``best.pth``), timm's pretrained folders (``patnet convert``),
    weights files (``.safetensors`` / ``.pth``) and the authors' layout (converted on the fly; ``act_layer`` for one
    whose activation is not the variant's). The class count is read from the classifier unless ``num_classes`` is
    given.
    """
    require_models(name)
    if Path(checkpoint).is_dir():  # timm's pretrained folder (patnet convert / save_pretrained / save_for_hf)
        sd = (read_pretrained(checkpoint)[0] if name in VARIANTS
              else read_checkpoint(Path(checkpoint) / PRETRAINED_FILES[0]))
    elif name in VARIANTS:
        sd = load_official_state_dict(checkpoint)
        sd = official_to_patnet(sd) if is_official_layout(sd) else sd
    else:  # another timm model (the FasterNet baseline): its own keys, never taken for the authors' PATNet layout
        sd = unwrap_state_dict(read_checkpoint(checkpoint))
    classifier = "classifier"
    if name not in VARIANTS:
        classifier = timm.models.get_pretrained_cfg_value(name, "classifier") or "classifier"
        classifier = classifier[0] if isinstance(classifier, (list, tuple)) else classifier
    if num_classes is None:
        num_classes = next((v.shape[0] for k, v in sd.items() if k == f"{classifier}.weight"), 0)
    kwargs: Dict[str, Any] = {"act_layer": act_layer} if act_layer is not None and name in VARIANTS else {}
    model = timm.create_model(name, num_classes=num_classes, **kwargs)
    try:
        load_strict(model, sd)
    except ValueError as e:
        raise ValueError(f"checkpoint {checkpoint} does not fit {name}: {e}") from None
    return model


def convert_checkpoint(src: Union[str, Path], out: Union[str, Path], to: str = "patnet",
                       act_layer: LayerType = "gelu") -> Dict[str, Any]:
    """Convert an authors'-layout checkpoint into timm's pretrained folder ``out`` (``to="patnet"``:
    ``model.safetensors`` + ``config.json``, loadable with ``timm.create_model("local-dir:OUT", pretrained=True)``
    or ``load_model``), or such a folder back into an authors'-layout file (``to="official"``). Returns the
    architecture.

    Either direction builds the model and loads the weights strictly before anything is written, so an incomplete
    or foreign file fails in one line and nothing is ever half-written.
    """
    out = Path(out)
    if to == "patnet":
        check_not_inputs([out, *(out / n for n in PRETRAINED_FILES)], {"SRC": src})
        if out.suffix in (".safetensors", ".pth", ".pt", ".bin") or out.is_file():
            raise ValueError(f"{out}: the converted model is a folder (timm's model.safetensors + config.json); "
                             "give a folder name")
        model = from_official(src, act_layer=act_layer)
        save_pretrained(model, out)
        return dict(model.arch_args)
    if to != "official":
        raise ValueError(f"to must be 'patnet' or 'official', got {to!r}")
    check_not_inputs([out], {"SRC": src, "SRC's weights": Path(src) / PRETRAINED_FILES[0]})
    if not Path(src).is_dir():
        raise ValueError(f"{src} is not a folder; --to official converts the folder patnet convert wrote")
    sd, arch = read_pretrained(src)  # checked against the weights before anything is built
    load_strict(build_patnet(arch), sd)  # proves the weights are a complete PATNet before renaming
    save_weights(patnet_to_official(sd), out)
    return arch
