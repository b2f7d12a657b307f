"""PATNet: Partial Convolution Meets Visual Attention.

Paper: "Partial Convolution Meets Visual Attention", Huang et al., arXiv 2503.03148 (extended as PartialNet,
arXiv 2502.01303). Written from the verified specification of the authors' MIT-licensed code (haiduo/PartialNet);
no code was taken from it. The layout follows timm's FasterNet (arXiv 2303.03667), which PATNet extends.

A PATNet block keeps FasterNet's idea of convolving only a quarter of the channels, and spends the untouched
channels on cheap attention instead of ignoring them:

* ``PartialChannelAttention`` (PAT_ch, stages 1-3): 3x3 conv on the first quarter, a mean/std channel gate on
  the rest.
* ``PartialSpatialAttention`` (PAT_sp, optional last layer of the MLP): a per-pixel gate on half the channels,
  a 1x1 conv on the other half.
* ``PartialSelfAttention`` (PAT_sf, stage 4): 3x3 conv on the first quarter, multi-head self-attention with a
  Euclidean relative-position bias (iRPE) on the rest.

Every module here computes exactly what the authors' module computes (the parity tests prove it) and has a
``fuse()`` that returns an inference form with BatchNorm folded away, found by ``timm.utils.reparameterize_model``.
"""

import copy
import math
import re
from collections.abc import Mapping
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple, Union

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (
    DropPath,
    LayerNorm2d,
    SelectAdaptivePool2d,
    calculate_drop_path_rates,
    create_conv2d,
    get_act_layer,
    get_device_dtype,
    register_notrace_function,
    trunc_normal_,
    use_fused_attn,
)
from timm.layers import Linear as ClassifierLinear
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices  # no public name in timm 1.0.x
from torch.fx import _symbolic_trace as _fx_trace
from torch.nn.utils.fusion import fuse_conv_bn_weights

__all__ = [
    "ConvBn",
    "Stem",
    "PartialChannelAttention",
    "PartialSpatialAttention",
    "PartialSelfAttention",
    "EuclideanRelPosBias",
    "PatMlp",
    "PatBlock",
    "PatAttnBlock",
    "PatStage",
    "FusedMlp",
    "FusedPatBlock",
    "FusedPatAttnBlock",
    "PATNet",
    "VARIANTS",
    "checkpoint_filter_fn",
    "official_to_patnet",
    "patnet_to_official",
]

# iRPE "euclidean" bucketing constants used by every released PATNet configuration.
RPE_ALPHA = 20.0
RPE_BETA = 40.0
RPE_GAMMA = 160.0
# Variance floor of the channel gate's standard deviation: keeps constant channels and 1x1 maps free of NaN.
STD_MIN_VAR = 1e-12
# The authors' attention and projection dropout during training.
ATTN_DROP = 0.1
PROJ_DROP = 0.1

LayerType = Union[str, Callable[..., nn.Module]]

# torch.fx's own "inside symbolic_trace" check (private, no public name); older torch has only is_fx_tracing, which
# newer torch keeps but makes warn because it is also true under torch.export.
_is_fx_symbolic_tracing = getattr(_fx_trace, "is_fx_symbolic_tracing", _fx_trace.is_fx_tracing)


# ---------------------------------------------------------------------------------------------------------------
# Shape-dependent helpers. They are FX leaves (their Python logic depends on concrete sizes) and TorchScript-able.
# ---------------------------------------------------------------------------------------------------------------

@torch.fx.wrap
def check_image_input(x: torch.Tensor, in_chans: int, min_size: int) -> torch.Tensor:
    """Return ``x`` unchanged after checking that it is a (B, in_chans, H, W) batch with H, W >= min_size."""
    if x.dim() != 4:
        raise ValueError(
            f"PATNet expects a 4-D image batch (B, {in_chans}, H, W), got a tensor of shape {list(x.shape)}"
        )
    if x.shape[1] != in_chans:
        raise ValueError(
            f"PATNet expects {in_chans} input channels, shape (B, {in_chans}, H, W), got shape {list(x.shape)}"
        )
    if x.shape[2] < min_size or x.shape[3] < min_size:
        raise ValueError(
            f"PATNet reduces images {min_size}x, so H and W must be at least {min_size}, got shape {list(x.shape)}"
        )
    return x


@torch.fx.wrap
def channel_mean_std(x: torch.Tensor, min_var: float = STD_MIN_VAR) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-sample, per-channel mean and unbiased (N - 1) standard deviation over H and W, each (B, C, 1, 1).

    The standard deviation is ``sqrt(max(var, STD_MIN_VAR))``. For any real spread this is the plain unbiased
    value (the authors' ``torch.std``); for a constant channel, and for a 1x1 map whose unbiased spread is 0 / 0
    (taken as 0), it is 1e-6 with a zero gradient, where ``torch.std`` gives NaN gradients (and a NaN value on 1x1).
    """
    n = x.shape[2] * x.shape[3]
    # Exact two-pass form (the spread around the mean, never E[x^2] - E[x]^2, which cancels catastrophically for
    # channels whose mean dwarfs their spread), reduced over dims (2, 3) without flattening: a flatten makes
    # OpenVINO reorder the map out of its blocked layout. The sum of squares as an L2 norm is one fused reduction
    # (ReduceL2) in ONNX / OpenVINO instead of a Mul pass plus a ReduceSum that NNCF quantizes, and on CPU it is
    # faster than both that and torch.var_mean (docs/results/int8_profile).
    mean = x.mean((2, 3), keepdim=True)
    norm = torch.linalg.vector_norm(x - mean, 2, dim=(2, 3), keepdim=True)
    return mean, (norm * norm / max(n - 1, 1)).clamp_min(min_var).sqrt()


@torch.fx.wrap
def euclidean_bucket_index(
        height: int,
        width: int,
        alpha: float = RPE_ALPHA,
        beta: float = RPE_BETA,
        gamma: float = RPE_GAMMA,
        device: Optional[torch.device] = None,
) -> torch.Tensor:
    """iRPE bucket of every (query, key) pair of an H x W map, shape (H*W, H*W), values in [beta, 2*beta].

    The rounded Euclidean distance is kept as is up to ``alpha`` and compressed logarithmically beyond it, capped
    at ``beta``; ``beta`` is then added so the index points into a table of ``2 * beta + 1`` entries.
    """
    rows = torch.arange(height, device=device).repeat_interleave(width)
    cols = torch.arange(width, device=device).repeat(height)
    d_row = rows[:, None] - rows[None, :]
    d_col = cols[:, None] - cols[None, :]
    dist = (d_row * d_row + d_col * d_col).float().sqrt().round()
    # log(0) = -inf for the near pairs; torch.where discards those values, so no NaN can leak through.
    far = (alpha + torch.log(dist / alpha) / math.log(gamma / alpha) * (beta - alpha)).round().clamp(max=beta)
    index = torch.where(dist <= alpha, dist, far)
    return index.long() + int(beta)


@torch.fx.wrap
def check_gate_batch(stats: torch.Tensor) -> torch.Tensor:
    """Return ``stats`` after checking that a training-mode channel gate sees at least two samples.

    The gate's BatchNorm normalises one value per sample and channel (a 1x1 map), which cannot be done for a batch
    of one; this says so in words instead of BatchNorm's "Expected more than 1 value per channel".
    """
    if stats.shape[0] < 2:
        raise ValueError(
            "PATNet cannot train on a batch of 1: the channel gate's BatchNorm needs at least 2 samples per batch; "
            "use a batch of 2 or more, call model.eval(), or freeze BatchNorm (timm.layers.freeze_batch_norm_2d)"
        )
    return stats


register_notrace_function(check_image_input)
register_notrace_function(channel_mean_std)
register_notrace_function(euclidean_bucket_index)
register_notrace_function(check_gate_batch)


# ---------------------------------------------------------------------------------------------------------------
# Leaf layers
# ---------------------------------------------------------------------------------------------------------------

def _fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A copy of ``conv`` with the eval-mode ``bn`` that follows it folded into its weight and bias.

    The arithmetic is torch's ``fuse_conv_bn_weights``. ``torch.nn.utils.fusion.fuse_conv_bn_eval`` is not used
    because it refuses modules in training mode (``fuse()`` must not flip the caller's mode) and returns
    trainable parameters where an inference form wants frozen ones. The copy keeps the convolution's class, so a
    'same'-padded ``Conv2dSame`` (a dilated downsample) stays one.
    """
    fused = copy.deepcopy(conv)
    weight, bias = fuse_conv_bn_weights(
        conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
    )
    fused.weight = nn.Parameter(weight.detach(), requires_grad=False)
    fused.bias = nn.Parameter(bias.detach(), requires_grad=False)
    return fused


def _bn_affine(bn: nn.BatchNorm2d) -> Tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as ``x * scale + shift`` (per channel)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    return scale.detach(), shift.detach()


class ConvBn(nn.Module):
    """Convolution without bias followed by BatchNorm: the stem and the stage downsamples.

    A downsample that does not downsample (``output_stride``: stride 1, dilated) pads 'same' so the map keeps its
    size; its 2x2 kernel needs the asymmetric padding of timm's ``Conv2dSame``, as ConvNeXt's dilated stages do.
    ``fuse()`` folds the BatchNorm into the convolution in place (``bn`` becomes ``nn.Identity``).
    """

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int, dilation: int = 1,
                 device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        padding = "same" if stride == 1 and kernel_size > 1 else 0
        self.conv = create_conv2d(
            in_chs, out_chs, kernel_size, stride=stride, dilation=dilation, padding=padding, bias=False, **dd
        )
        self.bn: nn.Module = nn.BatchNorm2d(out_chs, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))

    @torch.no_grad()
    def fuse(self) -> "ConvBn":
        if isinstance(self.bn, nn.BatchNorm2d):
            self.conv = _fold_bn(self.conv, self.bn)
            self.bn = nn.Identity()
        return self


class Stem(ConvBn):
    """Patchify stem (conv k x k stride k + BN) that first checks the input's shape.

    The check lives here rather than in ``PATNet.forward`` so that ``features_only`` models, which call the
    children directly, validate their input too.
    """

    def __init__(self, in_chs: int, out_chs: int, patch_size: int, min_input_size: int,
                 device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None) -> None:
        super().__init__(in_chs, out_chs, patch_size, patch_size, device=device, dtype=dtype)
        self.in_chs = in_chs
        self.min_input_size = min_input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = check_image_input(x, self.in_chs, self.min_input_size)
        return self.bn(self.conv(x))


class PartialChannelAttention(nn.Module):
    """PAT_ch: 3x3 conv on the first ``dim // n_div`` channels, a Gaussian channel gate on the rest.

    The gate describes each untouched channel by its spatial mean and (unbiased) standard deviation, mixes those
    statistics across channels with a dense (1, 2) convolution + BN, and squashes them with hard-sigmoid. The gated
    channels then pass a BatchNorm (after the multiply, as the authors do).

    Authors' names: ``partial_conv3`` -> ``conv``, ``attn.cfc1`` -> ``gate_conv``, ``attn.bn`` -> ``gate_bn``,
    ``norm`` -> ``norm``.
    """

    def __init__(self, dim: int, n_div: int = 4, dilation: int = 1,
                 device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.dim_conv = dim // n_div
        self.dim_untouched = dim - self.dim_conv
        self.conv = nn.Conv2d(self.dim_conv, self.dim_conv, 3, 1, dilation, dilation, bias=False, **dd)
        self.gate_conv = nn.Conv2d(self.dim_untouched, self.dim_untouched, (1, 2), bias=False, **dd)
        self.gate_bn = nn.BatchNorm2d(self.dim_untouched, **dd)
        self.norm = nn.BatchNorm2d(self.dim_untouched, **dd)

    def gate(self, x2: torch.Tensor) -> torch.Tensor:
        """Channel gate (B, C2, 1, 1) in [0, 1] from the statistics of ``x2``."""
        mean, std = channel_mean_std(x2)
        stats = torch.cat([mean, std], dim=-1)  # (B, C2, 1, 2)
        if not torch.jit.is_scripting():
            if self._gate_bn_trains():
                stats = check_gate_batch(stats)
        return F.hardsigmoid(self.gate_bn(self.gate_conv(stats)))

    @torch.jit.unused
    def _gate_bn_trains(self) -> bool:
        # A FrozenBatchNorm2d (detection) or an eval-mode BatchNorm takes any batch.
        return isinstance(self.gate_bn, nn.modules.batchnorm._BatchNorm) and self.gate_bn.training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = torch.split(x, [self.dim_conv, self.dim_untouched], dim=1)
        return torch.cat([self.conv(x1), self.norm(x2 * self.gate(x2))], dim=1)


class PartialSpatialAttention(nn.Module):
    """PAT_sp: a per-pixel gate on the first half of the channels, BN + 1x1 conv on the second half.

    The first part has ``dim - int(dim / 2)`` channels (the authors' split). Authors' names (``mlp.4``):
    ``conv_attn`` -> ``attn_conv``, ``norm`` -> ``attn_norm``, ``conv`` -> ``conv``, ``norm2`` -> ``conv_norm``.
    """

    def __init__(self, dim: int, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.dim_conv = int(0.5 * dim)
        self.dim_attn = dim - self.dim_conv
        self.attn_conv = nn.Conv2d(self.dim_attn, 1, 1, bias=False, **dd)
        self.attn_norm = nn.BatchNorm2d(self.dim_attn, **dd)
        self.conv_norm = nn.BatchNorm2d(self.dim_conv, **dd)
        self.conv = nn.Conv2d(self.dim_conv, self.dim_conv, 1, bias=False, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.split(x, [self.dim_attn, self.dim_conv], dim=1)
        a = self.attn_norm(a * F.hardsigmoid(self.attn_conv(a)))
        return torch.cat([a, self.conv(self.conv_norm(b))], dim=1)


class EuclideanRelPosBias(nn.Module):
    """iRPE relative-position bias (Euclidean method, bias mode, one table per head) for an H x W map.

    ``forward(H, W)`` returns the additive attention bias of shape (heads, H*W, H*W). The bucket index depends only
    on the map size: eager calls keep the index of the last size in a non-persistent buffer (it follows the module
    across devices and is never saved), made outside inference mode so a later training step can use it. Traced,
    scripted, compiled and exported graphs compute it in the graph instead, where it is a constant of the size, so
    no graph depends on what ran before it. Authors' name: ``rpe_k.lookup_table_bias`` -> ``bias_table``.
    """

    def __init__(
            self,
            num_heads: int,
            alpha: float = RPE_ALPHA,
            beta: float = RPE_BETA,
            gamma: float = RPE_GAMMA,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        self.alpha, self.beta, self.gamma = float(alpha), float(beta), float(gamma)
        self.bias_table = nn.Parameter(torch.zeros(num_heads, 2 * int(beta) + 1, device=device, dtype=dtype))
        self.register_buffer("index", torch.zeros(0, 0, dtype=torch.int32, device=device), persistent=False)
        self.index_size = (0, 0)

    def forward(self, height: int, width: int) -> torch.Tensor:
        if torch.jit.is_scripting() or not self._eager():
            index = euclidean_bucket_index(height, width, self.alpha, self.beta, self.gamma, self.bias_table.device)
        else:
            index = self._cached_index(height, width)
        return self.bias_table[:, index]

    @torch.jit.unused
    def _eager(self) -> bool:
        return not (torch.jit.is_tracing() or torch.compiler.is_compiling() or _is_fx_symbolic_tracing())

    @torch.jit.unused
    def _cached_index(self, height: int, width: int) -> torch.Tensor:
        if self.index_size != (height, width) or self.index.device != self.bias_table.device:
            with torch.inference_mode(False):  # an inference tensor here would poison later training steps
                self.index = euclidean_bucket_index(
                    height, width, self.alpha, self.beta, self.gamma, self.bias_table.device
                ).to(torch.int32)
            self.index_size = (height, width)
        return self.index


class PartialSelfAttention(nn.Module):
    """PAT_sf: 3x3 conv on the first ``dim // n_div`` channels, self-attention over pixels on the rest.

    The untouched channels are layer-normalised per pixel, attended with ``num_heads`` heads and a learned
    Euclidean relative-position bias on the logits, and projected back. Attention runs through
    ``F.scaled_dot_product_attention`` with the bias as the additive mask (``fused_attn``), or the explicit
    softmax path; both compute the same function.

    Authors' names: ``partial_conv3`` -> ``conv``, ``norm`` -> ``norm``, ``attn.qkv`` -> ``qkv``,
    ``attn.proj`` -> ``proj``, ``attn.rpe_k.lookup_table_bias`` -> ``rel_pos.bias_table``.
    """

    fused_attn: bool

    def __init__(
            self,
            dim: int,
            n_div: int = 4,
            num_heads: int = 4,
            attn_drop: float = ATTN_DROP,
            proj_drop: float = PROJ_DROP,
            rpe_alpha: float = RPE_ALPHA,
            rpe_beta: float = RPE_BETA,
            rpe_gamma: float = RPE_GAMMA,
            dilation: int = 1,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.dim_conv = dim // n_div
        self.dim_untouched = dim - self.dim_conv
        if self.dim_untouched % num_heads:
            raise ValueError(
                f"PartialSelfAttention: {self.dim_untouched} attended channels do not split into {num_heads} heads"
            )
        self.num_heads = num_heads
        self.head_dim = self.dim_untouched // num_heads
        self.scale = self.head_dim ** -0.5
        self.fused_attn = use_fused_attn()

        self.conv = nn.Conv2d(self.dim_conv, self.dim_conv, 3, 1, dilation, dilation, bias=False, **dd)
        self.norm = LayerNorm2d(self.dim_untouched, eps=1e-6, **dd)
        self.qkv = nn.Linear(self.dim_untouched, 3 * self.dim_untouched, bias=False, **dd)
        self.rel_pos = EuclideanRelPosBias(num_heads, rpe_alpha, rpe_beta, rpe_gamma, **dd)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(self.dim_untouched, self.dim_untouched, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    def attend(self, x2: torch.Tensor) -> torch.Tensor:
        """Self-attention over the pixels of ``x2`` (B, C2, H, W) -> (B, C2, H, W)."""
        B, C, H, W = x2.shape
        tokens = self.norm(x2).flatten(2).transpose(1, 2)  # (B, N, C2)
        qkv = self.qkv(tokens).reshape(B, H * W, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, head_dim)
        bias = self.rel_pos(H, W).to(q.dtype)  # (heads, N, N)
        if self.fused_attn:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=bias, dropout_p=self.attn_drop.p if self.training else 0.0
            )
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1) + bias
            attn = self.attn_drop(attn.softmax(dim=-1))
            out = attn @ v
        out = self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, H * W, C)))  # (B, N, C2)
        return out.transpose(1, 2).reshape(B, C, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = torch.split(x, [self.dim_conv, self.dim_untouched], dim=1)
        return torch.cat([self.conv(x1), self.attend(x2)], dim=1)


class PatMlp(nn.Module):
    """Conv MLP: 1x1 conv (dim -> hidden) + BN + act + 1x1 conv (hidden -> dim) [+ PAT_sp].

    Authors' names: ``mlp.0`` -> ``fc1``, ``mlp.1`` -> ``norm``, ``mlp.3`` -> ``fc2``, ``mlp.4`` -> ``spatial``.
    """

    def __init__(self, dim: int, hidden_dim: int, act_layer: Callable[..., nn.Module], spatial_attn: bool,
                 device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.fc1 = nn.Conv2d(dim, hidden_dim, 1, bias=False, **dd)
        self.norm = nn.BatchNorm2d(hidden_dim, **dd)
        self.act = act_layer()
        self.fc2 = nn.Conv2d(hidden_dim, dim, 1, bias=False, **dd)
        self.spatial: nn.Module = PartialSpatialAttention(dim, **dd) if spatial_attn else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.fc2(self.act(self.norm(self.fc1(x)))))


# ---------------------------------------------------------------------------------------------------------------
# Blocks and stage
# ---------------------------------------------------------------------------------------------------------------

class PatBlock(nn.Module):
    """Block v1 (stages 1-3): ``x + DropPath(MLP(PAT_ch(x)))``."""

    def __init__(
            self,
            dim: int,
            n_div: int = 4,
            mlp_ratio: float = 2.0,
            act_layer: Callable[..., nn.Module] = nn.GELU,
            spatial_attn: bool = False,
            drop_path: float = 0.0,
            dilation: int = 1,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.mixer = PartialChannelAttention(dim, n_div, dilation, **dd)
        self.mlp = PatMlp(dim, int(dim * mlp_ratio), act_layer, spatial_attn, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.mlp(self.mixer(x)))

    @torch.no_grad()
    def fuse(self) -> nn.Module:
        """The inference form (``FusedPatBlock``): same eval outputs, BatchNorm folded away."""
        return FusedPatBlock(self)


class PatAttnBlock(nn.Module):
    """Block v2 (stage 4): ``x = x + PAT_sf(x)`` then ``x + DropPath(MLP(x))`` (drop path on the MLP only)."""

    def __init__(
            self,
            dim: int,
            n_div: int = 4,
            mlp_ratio: float = 2.0,
            act_layer: Callable[..., nn.Module] = nn.GELU,
            spatial_attn: bool = False,
            drop_path: float = 0.0,
            num_heads: int = 4,
            attn_drop: float = ATTN_DROP,
            proj_drop: float = PROJ_DROP,
            dilation: int = 1,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.mixer = PartialSelfAttention(dim, n_div, num_heads, attn_drop, proj_drop, dilation=dilation, **dd)
        self.mlp = PatMlp(dim, int(dim * mlp_ratio), act_layer, spatial_attn, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mixer(x)
        return x + self.drop_path(self.mlp(x))

    @torch.no_grad()
    def fuse(self) -> nn.Module:
        """The inference form (``FusedPatAttnBlock``): same eval outputs, norms folded away."""
        return FusedPatAttnBlock(self)


class PatStage(nn.Module):
    """A downsample (2x2 stride-2 conv + BN; absent in stage 1) followed by blocks, so stage i is feature level i."""

    def __init__(self, downsample: nn.Module, blocks: Sequence[nn.Module]) -> None:
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.Sequential(*blocks)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


# ---------------------------------------------------------------------------------------------------------------
# The inference form (``fuse()``): every BatchNorm folded into a static-weight convolution
#
# One form serves PyTorch eager, ONNX Runtime, OpenVINO and their int8 quantizers. It was chosen by measurement
# (``experiments/forms_compare.py``, ``docs/results/forms/``): static 1x1 Convs are as fast in eager as batched
# GEMMs over per-sample scaled weights, 10-15% faster in ONNX Runtime, and the only form an int8 quantizer can
# make weight-stationary. Everything stays 4-D NCHW (statistics are reductions over dims 2 and 3), because a
# reshape of a feature map makes OpenVINO reorder it out of its blocked layout.
# ---------------------------------------------------------------------------------------------------------------

def _frozen(value: torch.Tensor) -> nn.Parameter:
    """A folded weight: a parameter (so parameter counts and ``.parameters()`` see it) that needs no gradient."""
    return nn.Parameter(value.detach().clone(), requires_grad=False)


def _conv1x1(weight: torch.Tensor, bias: Optional[torch.Tensor]) -> nn.Conv2d:
    """A frozen 1x1 ``nn.Conv2d`` from an (out, in) matrix and an optional (out,) bias."""
    conv = nn.Conv2d(weight.shape[1], weight.shape[0], 1, bias=bias is not None,
                     device=weight.device, dtype=weight.dtype)
    conv.weight = _frozen(weight[:, :, None, None])
    if bias is not None:
        conv.bias = _frozen(bias)
    return conv


def _matrix(conv: nn.Conv2d) -> torch.Tensor:
    """The (out, in) matrix of a 1x1 convolution."""
    return conv.weight.detach()[:, :, 0, 0]


class FusedMlp(nn.Module):
    """Inference form of ``x + PatMlp(y)``: two static 1x1 Convs with every BatchNorm folded.

    ``fc1`` absorbs the MLP's BatchNorm and, through ``in_affine``, a per-channel affine on the last input channels
    (PAT_ch's post-gate BatchNorm). With PAT_sp, its BN + 1x1 conv half is folded into ``fc2``'s rows, its gate
    logit becomes one extra ``fc2`` row, and its post-gate BatchNorm scales the gated rows (its shift follows the
    gate), so PAT_sp costs one output row and one multiply.
    """

    def __init__(self, mlp: PatMlp, in_affine: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> None:
        super().__init__()
        w1 = _matrix(mlp.fc1).clone()  # (hidden, C)
        b1 = torch.zeros(w1.shape[0], dtype=w1.dtype, device=w1.device)
        if in_affine is not None:  # y[:, off:] = y_raw[:, off:] * s + t  ->  fold into fc1's columns
            s, t = in_affine
            off = w1.shape[1] - s.numel()
            b1 = b1 + w1[:, off:] @ t
            w1[:, off:] = w1[:, off:] * s
        s_n, t_n = _bn_affine(mlp.norm)
        self.fc1 = _conv1x1(w1 * s_n[:, None], b1 * s_n + t_n)
        self.act = mlp.act

        w2 = _matrix(mlp.fc2)  # (C, hidden)
        self.dim = w2.shape[0]
        sp = mlp.spatial
        if isinstance(sp, PartialSpatialAttention):
            self.dim_attn = sp.dim_attn
            s_c, t_c = _bn_affine(sp.attn_norm)  # BN after the gate
            s_d, t_d = _bn_affine(sp.conv_norm)  # BN before the 1x1 conv
            wc = _matrix(sp.conv)
            w_a, w_b = w2[: self.dim_attn], w2[self.dim_attn:]
            gate_row = _matrix(sp.attn_conv) @ w_a  # (1, hidden): the gate logit straight from the hidden layer
            rows = torch.cat([w_a * s_c[:, None], (wc * s_d[None, :]) @ w_b, gate_row], 0)
            self.fc2 = _conv1x1(rows, torch.cat([torch.zeros_like(t_c), wc @ t_d, t_c.new_zeros(1)]))
            self.shift = _frozen(t_c.reshape(1, -1, 1, 1))
        else:
            self.dim_attn = 0
            self.fc2 = _conv1x1(w2, None)
            self.shift = _frozen(w2.new_zeros(0))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``x`` residual and ``y`` MLP input, both (B, C, H, W)."""
        z = self.fc2(self.act(self.fc1(y)))
        if self.dim_attn == 0:
            return x + z
        za, zb, logit = torch.split(z, [self.dim_attn, self.dim - self.dim_attn, 1], dim=1)
        return x + torch.cat([za * F.hardsigmoid(logit) + self.shift, zb], dim=1)


class FusedPatBlock(nn.Module):
    """Inference form of ``PatBlock`` (made by ``PatBlock.fuse()``): the same eval outputs, no BatchNorm.

    PAT_ch's gate is a 1x1 conv (its BatchNorm folded in) on the (B, 2 * C2, 1, 1) map of per-channel mean and
    standard deviation, and multiplies the untouched channels; the post-gate BatchNorm and the MLP's BatchNorm are
    folded into ``mlp.fc1``.
    """

    def __init__(self, block: PatBlock) -> None:
        super().__init__()
        mixer = block.mixer
        self.dim_conv, self.dim_untouched = mixer.dim_conv, mixer.dim_untouched
        self.conv = mixer.conv
        # The (1, 2) conv over [mean, std] is a linear map of the concatenated statistics.
        w = mixer.gate_conv.weight.detach()[:, :, 0, :]  # (C2, C2, 2)
        s_g, t_g = _bn_affine(mixer.gate_bn)
        self.gate = _conv1x1(torch.cat([w[..., 0], w[..., 1]], dim=1) * s_g[:, None], t_g)
        self.mlp = FusedMlp(block.mlp, in_affine=_bn_affine(mixer.norm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = torch.split(x, [self.dim_conv, self.dim_untouched], dim=1)
        mean, std = channel_mean_std(x2)  # (B, C2, 1, 1) each
        gate = F.hardsigmoid(self.gate(torch.cat([mean, std], dim=1)))  # (B, C2, 1, 1)
        return self.mlp(x, torch.cat([self.conv(x1), x2 * gate], dim=1))


class FusedPatAttnBlock(nn.Module):
    """Inference form of ``PatAttnBlock`` (made by ``PatAttnBlock.fuse()``): the same eval outputs, no norms.

    ``qkv`` and ``proj`` are 1x1 Convs, with the LayerNorm's affine and the attention scale folded into ``qkv``.
    The two activation-by-activation products and the softmax are written out as plain MatMul / Softmax
    (through ``F.scaled_dot_product_attention`` they would need two extra transposes of q and v, which OpenVINO
    turns into layout reorders), in the operand order that lets OpenVINO's int8 path take both products to AMX.
    """

    def __init__(self, block: PatAttnBlock) -> None:
        super().__init__()
        m = block.mixer
        self.dim_conv, self.dim_untouched = m.dim_conv, m.dim_untouched
        self.num_heads, self.head_dim = m.num_heads, m.head_dim
        self.eps = m.norm.eps
        self.conv = m.conv
        w = m.qkv.weight.detach()
        scale = torch.ones(3 * self.dim_untouched, dtype=w.dtype, device=w.device)
        scale[: self.dim_untouched] = m.scale  # q's 1/sqrt(head_dim)
        self.qkv = _conv1x1(w * m.norm.weight.detach()[None, :] * scale[:, None], (w @ m.norm.bias.detach()) * scale)
        self.rel_pos = m.rel_pos
        self.proj = _conv1x1(m.proj.weight.detach(), m.proj.bias.detach())
        self.mlp = FusedMlp(block.mlp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        N = H * W
        x1, x2 = torch.split(x, [self.dim_conv, self.dim_untouched], dim=1)
        t = F.layer_norm(x2.flatten(2).transpose(1, 2), [self.dim_untouched], eps=self.eps)  # (B, N, C2)
        qkv = self.qkv(t.transpose(1, 2).reshape(B, self.dim_untouched, H, W))
        q, k, v = qkv.reshape(B, 3, self.num_heads, self.head_dim, N).unbind(1)  # each (B, heads, head_dim, N)
        attn = (q.transpose(-2, -1) @ k + self.rel_pos(H, W).to(q.dtype)).softmax(dim=-1)  # (B, heads, N, N)
        # attn @ v^T, not v @ attn^T: with the softmax output as the first operand OpenVINO runs this product in
        # int8 on AMX (the other order stays fp32 behind a Transpose and two requantizations), same values.
        out = (attn @ v.transpose(-2, -1)).transpose(-2, -1).reshape(B, self.dim_untouched, H, W)
        x = x + torch.cat([self.conv(x1), self.proj(out)], dim=1)
        return self.mlp(x, x)


# ---------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------

class PATNet(nn.Module):
    """PATNet backbone and classifier.

    Layout: stem (4x4/4 conv + BN) -> 4 stages of widths C, 2C, 4C, 8C (stages 2-4 open with a 2x2/2 conv + BN)
    -> global pool -> 1x1 conv to ``feature_dim`` -> act -> linear classifier. Stages 1-3 use ``PatBlock``
    (PAT_ch), stage 4 uses ``PatAttnBlock`` (PAT_sf).

    The authors' configuration keys map onto the arguments as follows: ``embed_dim`` -> ``embed_dim``,
    ``depths`` -> ``depths``, ``mlp_ratio`` -> ``mlp_ratio``, ``n_div`` -> ``n_div``, ``patch_size`` /
    ``patch_stride`` -> ``patch_size``, ``patch_size2`` / ``patch_stride2`` -> ``merge_size``, ``feature_dim``
    -> ``feature_dim``, ``drop_path_rate`` -> ``drop_path_rate``, ``act_layer`` ('GELU' / 'RELU') ->
    ``act_layer`` ('gelu' / 'relu'), ``use_spatial_attn`` -> ``spatial_attn``, the attention's 4 heads ->
    ``num_heads``; their hard-coded attention/projection dropout (0.1) -> ``attn_drop_rate`` /
    ``proj_drop_rate``.

    Args:
        in_chans: Input image channels.
        num_classes: Classifier outputs (0 for no classifier).
        global_pool: Pooling type of the head ('avg', 'max', ... as timm's ``SelectAdaptivePool2d``).
        embed_dim: Width C of stage 1; stage i has C * 2**i channels.
        depths: Blocks per stage.
        mlp_ratio: Hidden width of each block's MLP relative to the block's width.
        n_div: The convolved part of PAT_ch / PAT_sf is ``dim // n_div`` channels.
        patch_size: Stem kernel and stride.
        merge_size: Downsample kernel and stride.
        feature_dim: Width of the pre-logits 1x1 conv of the head.
        act_layer: Activation of the MLPs and head, a name ('gelu', 'relu') or a module class.
        spatial_attn: Whether each MLP ends with PAT_sp.
        num_heads: Attention heads of PAT_sf.
        drop_rate: Dropout before the classifier.
        drop_path_rate: Stochastic depth, rising linearly from 0 over all blocks of the network.
        attn_drop_rate: Dropout on PAT_sf's attention weights (training only).
        proj_drop_rate: Dropout after PAT_sf's output projection (training only).
        output_stride: Total reduction of the last feature map: 32 (the paper's), 16 or 8. Below 32 the last
            stages keep their input's resolution (stride-1 downsample) and dilate their 3x3 convolutions instead,
            as timm's ResNet and ConvNeXt do, for dense-prediction heads such as DeepLabV3+. Weights are the same
            shapes at every output stride; PAT_sf's relative-position bias then sees finer pixel offsets than at 32.
    """

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = "avg",
            embed_dim: int = 64,
            depths: Sequence[int] = (2, 2, 6, 4),
            mlp_ratio: float = 2.0,
            n_div: int = 4,
            patch_size: int = 4,
            merge_size: int = 2,
            feature_dim: int = 1280,
            act_layer: LayerType = "relu",
            spatial_attn: bool = False,
            num_heads: int = 4,
            drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            attn_drop_rate: float = ATTN_DROP,
            proj_drop_rate: float = PROJ_DROP,
            output_stride: int = 32,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if len(depths) != 4 or min(depths) < 1:
            raise ValueError(f"PATNet needs 4 stages of at least one block each, got depths={tuple(depths)}")
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"PATNet num_classes must be 0 (no classifier) or more, got {num_classes!r}")
        strides = [patch_size * merge_size ** i for i in range(1, len(depths))]
        if output_stride not in strides:
            raise ValueError(f"PATNet output_stride must be one of {strides}, got {output_stride!r}")
        # Constructor arguments that define the weights' shapes and math, saved next to weights (``patnet.io``).
        self.arch_args: Dict[str, Any] = dict(
            in_chans=in_chans, num_classes=num_classes, embed_dim=embed_dim, depths=list(depths),
            mlp_ratio=mlp_ratio, n_div=n_div, patch_size=patch_size, merge_size=merge_size, feature_dim=feature_dim,
            act_layer=act_layer if isinstance(act_layer, str) else getattr(act_layer, "__name__", str(act_layer)),
            spatial_attn=spatial_attn, num_heads=num_heads, output_stride=output_stride,
        )
        act = get_act_layer(act_layer)
        if act is None:
            raise ValueError(f"unknown act_layer {act_layer!r}; use 'gelu' or 'relu' or a module class")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        self.stem = Stem(in_chans, embed_dim, patch_size, min_input_size=output_stride, **dd)
        # Linear from 0 over all blocks (torch.linspace, as the authors' and timm's FasterNet).
        dpr = calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=True)
        stages: List[nn.Module] = []
        self.feature_info: List[Dict[str, Any]] = []
        dim, reduction, dilation = embed_dim, patch_size, 1
        for i, depth in enumerate(depths):
            if i == 0:
                downsample: nn.Module = nn.Identity()
            else:
                # Past output_stride a stage keeps the resolution and dilates by what it would have downsampled.
                first_dilation, stride = dilation, merge_size
                if reduction * merge_size > output_stride:
                    dilation, stride = dilation * merge_size, 1
                reduction *= stride
                downsample = ConvBn(dim, dim * 2, merge_size, stride, dilation=first_dilation, **dd)
                dim *= 2
            block_dpr = dpr[i]
            common = dict(
                n_div=n_div, mlp_ratio=mlp_ratio, act_layer=act, spatial_attn=spatial_attn, dilation=dilation, **dd
            )
            if i < len(depths) - 1:
                blocks: List[nn.Module] = [PatBlock(dim, drop_path=p, **common) for p in block_dpr]
            else:
                blocks = [
                    PatAttnBlock(
                        dim, drop_path=p, num_heads=num_heads, attn_drop=attn_drop_rate, proj_drop=proj_drop_rate,
                        **common,
                    )
                    for p in block_dpr
                ]
            stages.append(PatStage(downsample, blocks))
            self.feature_info.append(dict(num_chs=dim, reduction=reduction, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)

        self.num_features = dim
        self.head_hidden_size = feature_dim
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool)
        # A pooling that concatenates (timm's 'catavgmax') widens what the head's 1x1 conv takes.
        self.conv_head = nn.Conv2d(dim * self.global_pool.feat_mult(), feature_dim, 1, bias=False, **dd)
        self.act = act()
        self.flatten = nn.Flatten(1) if global_pool else nn.Identity()
        self.classifier: nn.Module = (
            ClassifierLinear(feature_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()
        )
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r"^stem",
            blocks=r"^stages\.(\d+)" if coarse else [
                (r"^stages\.(\d+)\.downsample", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^conv_head", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None,
                         device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None) -> None:
        """A new classifier for ``num_classes`` (0: none), on the model's device and dtype unless given.

        ``global_pool`` may change the pooling, but not its width: the head's trained 1x1 conv takes the pooled
        features, so 'avg' <-> 'max' works and 'avg' -> 'catavgmax' is refused (create the model with it instead).
        """
        dd = get_device_dtype(self, device=device, dtype=dtype)
        if global_pool is not None:
            pool = SelectAdaptivePool2d(pool_type=global_pool)
            if global_pool and isinstance(self.conv_head, nn.Conv2d) and (
                    pool.feat_mult() != self.global_pool.feat_mult()):
                raise ValueError(f"global_pool={global_pool!r} changes the pooled width the head's conv was built "
                                 f"for ({self.global_pool.pool_type!r}); create the model with global_pool="
                                 f"{global_pool!r} instead")
            self.global_pool = pool.train(self.training)
            self.flatten = (nn.Flatten(1) if global_pool else nn.Identity()).train(self.training)
        self.num_classes = num_classes
        self.arch_args["num_classes"] = num_classes
        self.classifier = (
            ClassifierLinear(self.head_hidden_size, num_classes, **dd) if num_classes > 0 else nn.Identity()
        )
        self.classifier.train(self.training)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Forward that also returns the outputs of the selected stages (timm's feature API).

        Args:
            x: Input images (B, in_chans, H, W).
            indices: Take the last n stages if int, all if None, the listed stages if a sequence.
            norm: Unused (PATNet has no final norm); kept for timm's interface.
            stop_early: Stop after the last requested stage.
            output_fmt: Only 'NCHW'.
            intermediates_only: Return only the intermediates.
        """
        if output_fmt != "NCHW":
            raise ValueError("PATNet intermediates are NCHW only (output_fmt='NCHW')")
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        intermediates: List[torch.Tensor] = []
        x = self.stem(x)
        if torch.jit.is_scripting() or not stop_early:
            stages = self.stages
        else:
            stages = self.stages[:max_index + 1]
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
            self, indices: Union[int, List[int]] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> List[int]:
        """Drop the stages (and head) that the requested intermediates do not need."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[:max_index + 1]
        if max_index < len(self.feature_info) - 1:
            self.num_features = self.feature_info[max_index]["num_chs"]
        if prune_head or max_index < len(self.feature_info) - 1:
            self.conv_head = nn.Identity()
            self.act = nn.Identity()
            self.head_hidden_size = self.num_features
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.flatten(self.act(self.conv_head(self.global_pool(x))))
        if self.drop_rate > 0.0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# ---------------------------------------------------------------------------------------------------------------
# Variants, pretrained configs and registration
# ---------------------------------------------------------------------------------------------------------------

# Key suffixes inside one block, (authors', ours). Used in both directions, so a round trip cannot drift.
_BLOCK_KEYS: Tuple[Tuple[str, str], ...] = (
    ("spatial_mixing.partial_conv3.", "mixer.conv."),
    ("spatial_mixing.attn.cfc1.", "mixer.gate_conv."),
    ("spatial_mixing.attn.bn.", "mixer.gate_bn."),
    ("spatial_mixing.attn.qkv.", "mixer.qkv."),
    ("spatial_mixing.attn.proj.", "mixer.proj."),
    ("spatial_mixing.attn.rpe_k.lookup_table_bias", "mixer.rel_pos.bias_table"),
    ("spatial_mixing.norm.", "mixer.norm."),
    ("mlp.0.", "mlp.fc1."),
    ("mlp.1.", "mlp.norm."),
    ("mlp.3.", "mlp.fc2."),
    ("mlp.4.conv_attn.", "mlp.spatial.attn_conv."),
    ("mlp.4.norm.", "mlp.spatial.attn_norm."),
    ("mlp.4.norm2.", "mlp.spatial.conv_norm."),
    ("mlp.4.conv.", "mlp.spatial.conv."),
)
# Keys outside the stages, (authors', ours).
_TOP_KEYS: Tuple[Tuple[str, str], ...] = (
    ("patch_embed.proj.", "stem.conv."),
    ("patch_embed.norm.", "stem.bn."),
    ("avgpool_pre_head.1.", "conv_head."),
    ("head.", "classifier."),
)
_OFFICIAL_STAGE = re.compile(r"^stages\.(\d+)\.(.*)$")
_OURS_STAGE = re.compile(r"^stages\.(\d+)\.(downsample|blocks)\.(.*)$")


def _swap_prefix(key: str, table: Sequence[Tuple[str, str]], reverse: bool) -> Optional[str]:
    for theirs, ours in table:
        src, dst = (ours, theirs) if reverse else (theirs, ours)
        if key.startswith(src):
            return dst + key[len(src):]
    return None


def _official_key_to_ours(key: str) -> Optional[str]:
    m = _OFFICIAL_STAGE.match(key)
    if m is None:
        return _swap_prefix(key, _TOP_KEYS, reverse=False)
    index, rest = int(m.group(1)), m.group(2)
    if index % 2:  # merges sit between stages: stages.1 / .3 / .5 are the downsamples of our stages 1 / 2 / 3
        for theirs, ours in (("reduction.", "conv."), ("norm.", "bn.")):
            if rest.startswith(theirs):
                return f"stages.{(index + 1) // 2}.downsample.{ours}{rest[len(theirs):]}"
        return None
    bm = re.match(r"^blocks\.(\d+)\.(.*)$", rest)
    if bm is None:
        return None
    suffix = _swap_prefix(bm.group(2), _BLOCK_KEYS, reverse=False)
    return None if suffix is None else f"stages.{index // 2}.blocks.{bm.group(1)}.{suffix}"


def _our_key_to_official(key: str) -> Optional[str]:
    m = _OURS_STAGE.match(key)
    if m is None:
        return _swap_prefix(key, _TOP_KEYS, reverse=True)
    index, part, rest = int(m.group(1)), m.group(2), m.group(3)
    if part == "downsample":
        for theirs, ours in (("reduction.", "conv."), ("norm.", "bn.")):
            if rest.startswith(ours):
                return f"stages.{2 * index - 1}.{theirs}{rest[len(ours):]}"
        return None
    bm = re.match(r"^(\d+)\.(.*)$", rest)
    if bm is None:
        return None
    suffix = _swap_prefix(bm.group(2), _BLOCK_KEYS, reverse=True)
    return None if suffix is None else f"stages.{2 * index}.blocks.{bm.group(1)}.{suffix}"


def _rename(state_dict: Mapping[str, torch.Tensor], fn: Callable[[str], Optional[str]], what: str) -> Dict[str, torch.Tensor]:
    out: Dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        new = fn(key)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise KeyError(f"{len(unknown)} key(s) are not part of a {what} PATNet state dict: {sorted(unknown)[:8]}")
    return out


def official_to_patnet(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename an authors'-layout state dict to this package's layout (tensors are shared, not copied)."""
    return _rename(state_dict, _official_key_to_ours, "authors'-layout")


def patnet_to_official(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename a state dict of this package to the authors' layout (the inverse of ``official_to_patnet``)."""
    return _rename(state_dict, _our_key_to_official, "patnet-layout")


def is_official_layout(state_dict: Mapping[str, Any]) -> bool:
    """Whether a state dict uses the authors' key layout (their stem and head names)."""
    return any(k.startswith("patch_embed.") or k.startswith("avgpool_pre_head.") for k in state_dict)


def unwrap_state_dict(obj: Any) -> Dict[str, torch.Tensor]:
    """Find the state dict inside a checkpoint object and strip wrapper prefixes (Lightning's ``model.``, DDP's
    ``module.``)."""
    for key in ("state_dict", "model", "model_state", "state_dict_ema"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError("checkpoint holds no state dict: expected tensors by name, or a 'state_dict'/'model' entry")
    state = dict(obj)
    for prefix in ("model.", "module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module) -> Dict[str, torch.Tensor]:
    """timm pretrained filter: accepts our layout or the authors' (converted on the fly)."""
    sd = unwrap_state_dict(state_dict)
    return official_to_patnet(sd) if is_official_layout(sd) else sd


# The authors' released configurations (see the spec's variant table). Every consumer refers to these by name.
VARIANTS: Dict[str, Dict[str, Any]] = {
    "patnet_t0": dict(embed_dim=32, depths=(1, 2, 8, 2), act_layer="gelu", drop_path_rate=0.0, spatial_attn=False),
    "patnet_t1": dict(embed_dim=48, depths=(1, 2, 8, 2), act_layer="gelu", drop_path_rate=0.02, spatial_attn=True),
    "patnet_t2": dict(embed_dim=64, depths=(2, 2, 6, 4), act_layer="relu", drop_path_rate=0.05, spatial_attn=False),
    "patnet_s": dict(embed_dim=96, depths=(2, 2, 9, 4), act_layer="relu", drop_path_rate=0.1, spatial_attn=False),
    "patnet_m": dict(embed_dim=128, depths=(2, 3, 16, 4), act_layer="relu", drop_path_rate=0.2, spatial_attn=False),
    "patnet_l": dict(embed_dim=160, depths=(2, 3, 20, 4), act_layer="relu", drop_path_rate=0.3, spatial_attn=False),
}
"""The authors' released configurations by timm name (the spec's variant table): ``PATNet(**VARIANTS["patnet_t2"])``
is ``timm.create_model("patnet_t2")`` without the registry."""


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.9,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.conv",
        "classifier": "classifier",
        "license": "mit",
        "paper_ids": "arXiv:2503.03148",
        "paper_name": "Partial Convolution Meets Visual Attention",
        "origin_url": "https://github.com/haiduo/PartialNet",
        **kwargs,
    }


# No PATNet weights are published; load local files with
# timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=PATH)) (either layout).
default_cfgs = generate_default_cfgs({name: _cfg() for name in VARIANTS})


def _create_patnet(variant: str, pretrained: bool = False, **kwargs: Any) -> PATNet:
    args = dict(VARIANTS[variant])
    args.update(kwargs)
    return build_model_with_cfg(
        PATNet,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), flatten_sequential=True),
        **args,
    )


@register_model
def patnet_t0(pretrained: bool = False, **kwargs: Any) -> PATNet:
    """PATNet-T0: C=32, depths 1-2-8-2, GELU, 3.5 M params, 0.24 GFLOPs."""
    return _create_patnet("patnet_t0", pretrained, **kwargs)


@register_model
def patnet_t1(pretrained: bool = False, **kwargs: Any) -> PATNet:
    """PATNet-T1: C=48, depths 1-2-8-2, GELU, PAT_sp on, 6.1 M params, 0.55 GFLOPs."""
    return _create_patnet("patnet_t1", pretrained, **kwargs)


@register_model
def patnet_t2(pretrained: bool = False, **kwargs: Any) -> PATNet:
    """PATNet-T2: C=64, depths 2-2-6-4, ReLU, 12.3 M params, 1.04 GFLOPs."""
    return _create_patnet("patnet_t2", pretrained, **kwargs)


@register_model
def patnet_s(pretrained: bool = False, **kwargs: Any) -> PATNet:
    """PATNet-S: C=96, depths 2-2-9-4, ReLU, 28.0 M params, 2.7 GFLOPs."""
    return _create_patnet("patnet_s", pretrained, **kwargs)


@register_model
def patnet_m(pretrained: bool = False, **kwargs: Any) -> PATNet:
    """PATNet-M: C=128, depths 2-3-16-4, ReLU, 59.2 M params, 6.7 GFLOPs."""
    return _create_patnet("patnet_m", pretrained, **kwargs)


@register_model
def patnet_l(pretrained: bool = False, **kwargs: Any) -> PATNet:
    """PATNet-L: C=160, depths 2-3-20-4, ReLU, 100.6 M params, 11.9 GFLOPs."""
    return _create_patnet("patnet_l", pretrained, **kwargs)
