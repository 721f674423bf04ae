"""Causal 3-D VAE (4× time, 8× space by default) whose causal cache makes chunked encode/decode exact.

References (``reference/anchors-modules.md`` §2):
- ``CausalConv3d`` of Open-Sora Plan (``PKU-YuanGroup/Open-Sora-Plan`` @ f7fa604f,
  ``opensora/models/causalvideovae/model/modules/conv.py``): temporal padding 0 inside the conv, the first
  frame replicated ``k_t − 1`` times as the left pad of the first chunk, the tail of the padded input cached
  for the next chunk; WF-VAE (``PKU-YuanGroup/WF-VAE`` @ d858bee) for per-position LayerNorm and per-frame
  attention;
- Wan 2.1's VAE for the causal depth-to-time upsample, RMS norm per position and the chunking 1, 4, 4, …
  frames on encode / one latent at a time on decode.

The rules that make chunking exact (§2.5, pinned in float64 by ``tests/test_vae_causal3d.py``):
1. a causal conv with temporal kernel k and stride s caches the last ``k − s`` frames of its *padded* input
   (none when k = s); the first chunk holds ``1 + r·m`` frames and later ones ``r·m``, r the time compression;
2. nothing else mixes time: norms are over C at each (t, h, w) position (never GroupNorm over T), attention
   is within a frame;
3. time is upsampled by a causal conv to 2·C channels followed by depth-to-time, dropping the duplicated
   frame 0 on the first chunk (1 + n → 1 + 2n); there is no trilinear look-ahead, so decode streams one
   latent at a time with no look-ahead or offset bookkeeping (the source of WF-VAE's decode-cache bugs).

The causal state is explicit: a ``CausalCache`` (per conv, the cached tail) is passed to every layer's
forward; ``cache=None`` means "one whole clip" and stores nothing. ``CausalCache`` and ``causal_pad`` (the
pad-and-cache step of every causal conv) are shared with Wan 2.1's VAE (``wan.py``), whose convs differ only
in the first-chunk pad (zeros, not frame 0) and in being the ``nn.Conv3d`` itself (diffusers' keys). Its
norm (``F.normalize``·√C: ‖x‖ clamped at 1e-12, not 1e-6 added to the mean square) and its resamplers (frame
0 passed through rather than padded or dropped) stay its own: sharing them would change either model's
numerics. The model owns one cache for encoding and one for decoding so that ``encode_chunk``/``decode_chunk``
can stream; ``reset()`` clears both, and ``encode``/``decode`` reset at their start (and at their end, to free
memory). A model is therefore not re-entrant: one stream at a time, or call ``encoder``/``decoder`` with
caches you own.

Notable deviations:
- no wavelet "energy-flow" pathway (WF-VAE) and no spatial tiling; weights are not compatible with any
  released checkpoint;
- depth-to-time upsampling instead of WF-VAE's trilinear interpolation; temporal downsampling is a strided
  causal conv with the replicate pad (Wan skips the conv on the first chunk instead);
- temporal resampling convs start as identity-like maps (downsample keeps frames 0, 2, 4, …; upsample repeats
  each latent frame); everything else uses PyTorch's default init;
- optional parameter-free shortcuts (``shortcuts=True``; DC-AE's residual autoencoding, Wan 2.2's
  ``AvgDown3D``/``DupUp3D``): causal window averages around downsampling, repeats around upsampling, channel
  averages/duplicates around width changes and at the latent. They add nothing that mixes time beyond each
  resampler's own window (frame 0 alone, then frame pairs), so chunking stays exact; the recipe needs them
  to leave the "predict the mean" plateau (``recipes/vae_causal3d.py``);
- scalar latent constants (``(z − shift_factor)·scaling_factor``, as flux/SD3), not per-channel statistics;
- logvar is clamped to [−30, 20] (as diffusers' ``DiagonalGaussianDistribution``).

Axis legend: B batch, F frames (public layout ``[B, F, C, H, W]``), T frames inside the conv stack (layout
``[B, C, T, H, W]``), C channels, H/W height/width, r temporal compression.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange, reduce, repeat
from safetensors.torch import load_file, save_file
from torch import Tensor

from minivdit import durable
from minivdit.config import check_types

CONFIG_NAME = "config.json"
Norm = Literal["rms", "layer", "frame_group"]
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
CLASS_NAME = "CausalVAE3D"


@dataclass(frozen=True, kw_only=True)
class CausalVAE3DConfig:
    """Architecture and latent constants of a causal 3-D VAE.

    The default is small enough for a CPU (≈11 M parameters). A "real" size, the scale of Wan 2.1's VAE, is
    ``base_channels=96``, ``num_res_blocks=2`` with the same multipliers and levels (≈130 M; 128 → ≈230 M).
    """

    in_channels: int = 3
    """Pixel channels."""
    latent_channels: int = 16
    """Latent channels C; the encoder outputs 2·C (posterior mean and logvar)."""
    base_channels: int = 32
    """Width of the first level; level i has ``base_channels · channel_multipliers[i]`` channels."""
    channel_multipliers: tuple[int, ...] = (1, 2, 4, 4)
    """Width multiplier per level (one level per resolution)."""
    num_res_blocks: int = 1
    """Residual blocks per encoder level (the decoder uses one more per level, as diffusers and Wan)."""
    time_down_levels: tuple[int, ...] = (1, 2)
    """Levels (0-indexed, excluding the last) whose end halves T: two of them give 4× time compression."""
    space_down_levels: tuple[int, ...] = (0, 1, 2)
    """Levels (0-indexed, excluding the last) whose end halves H and W: three of them give 8×."""
    patch_size: int = 1
    """Space-to-depth factor p: the encoder starts on ``[C·p², T, H/p, W/p]`` and the decoder ends with the
    inverse depth-to-space (the patcher of NVIDIA Cosmos' tokenizer; WF-VAE's Haar stem plays the same role).
    Spatial compression is ``p · 2^len(space_down_levels)``. p = 2 makes a small CPU VAE ~4× cheaper per step
    and much faster to start learning (the first convs no longer have to learn to pass pixels through)."""
    norm: Norm = "rms"
    """Norm over C at each (t, h, w) position; both keep chunking exact (GroupNorm over T would not)."""
    mid_attention: bool = True
    """Per-frame spatial self-attention in the middle blocks of encoder and decoder."""
    shortcuts: bool = False
    """Parameter-free shortcuts around every resampling and width change ("residual autoencoding" of DC-AE,
    Chen et al. 2024, arXiv:2410.10733; Wan 2.2's ``AvgDown3D``/``DupUp3D``): downsampling adds the causal
    average of its window, upsampling adds the repeated input, width changes add channel
    averages/duplicates, and the encoder's mean and decoder's input get channel-group averages/duplicates of
    the latent. The stream then
    has a path from ``conv_in`` to ``conv_out`` that no update can switch off. Without it, the first Adam
    steps (sign-like steps of size lr on every weight of 27·C fan-in convs) replace the input-dependent part
    of the activations by a shared one in every layer and the network sits on the "predict the mean"
    plateau for hundreds of steps (measured in the recipe's docstring). Needs ``latent_channels`` to divide
    the last level's width and widths that differ by integer factors."""
    scaling_factor: float = 1.0
    """Latents the DiT sees are ``(z − shift_factor) · scaling_factor``. After training a VAE set both from
    latent statistics (``estimate_latent_constants``) so that latents have zero mean and unit variance."""
    shift_factor: float = 0.0
    """See ``scaling_factor``."""

    def __post_init__(self) -> None:
        check_types(self)
        for name in ("in_channels", "latent_channels", "base_channels", "num_res_blocks", "patch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.channel_multipliers or min(self.channel_multipliers) < 1:
            raise ValueError(f"channel_multipliers must be positive, got {self.channel_multipliers}")
        for name in ("time_down_levels", "space_down_levels"):
            levels = tuple(getattr(self, name))
            valid = range(len(self.channel_multipliers) - 1)
            if len(set(levels)) != len(levels) or any(i not in valid for i in levels):
                raise ValueError(f"{name} must be distinct levels in {list(valid)}, got {levels}")
        if self.norm not in ("rms", "layer", "frame_group"):
            raise ValueError(f"norm must be 'rms', 'layer' or 'frame_group', got {self.norm!r}")
        if not self.scaling_factor > 0:
            raise ValueError(f"scaling_factor must be > 0, got {self.scaling_factor}")
        if self.shortcuts:
            chs = self.level_channels
            widths = [*zip(chs, chs[1:]), (chs[-1], self.latent_channels)]
            if any(max(a, b) % min(a, b) for a, b in widths):
                raise ValueError(
                    f"shortcuts=True needs level widths {list(chs)} and latent_channels "
                    f"{self.latent_channels} that divide one another"
                )

    @property
    def temporal_compression(self) -> int:
        return 2 ** len(self.time_down_levels)

    @property
    def spatial_compression(self) -> int:
        return self.patch_size * 2 ** len(self.space_down_levels)

    @property
    def level_channels(self) -> tuple[int, ...]:
        return tuple(self.base_channels * m for m in self.channel_multipliers)


# ----------------------------------------------------------------------------------------------- helpers
def _nearest_valid(num_frames: int, r: int) -> str:
    """The valid frame counts ``r·k + 1`` nearest to ``num_frames``, for error messages."""
    if num_frames < 1:
        return "1"
    lo = r * ((num_frames - 1) // r) + 1
    return f"{lo} or {lo + r}"


def sample_posterior(mean: Tensor, logvar: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One draw ``mean + exp(logvar / 2) · ε`` from the diagonal Gaussian posterior (raw, unscaled)."""
    eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + torch.exp(0.5 * logvar) * eps


class CausalCache:
    """The causal state of one encode or decode stream.

    ``tails[conv]`` holds the last ``k_t − s_t`` frames of that conv's padded input from the previous chunk;
    a conv absent from ``tails`` is on its first chunk and replicates frame 0 instead. ``frames`` counts the
    input frames consumed so far (pixel frames for encoding, latent frames for decoding).
    """

    def __init__(self) -> None:
        self.tails: dict[nn.Module, Tensor] = {}
        self.frames = 0

    def reset(self) -> None:
        self.tails.clear()
        self.frames = 0


# ------------------------------------------------------------------------------------------------ layers
def causal_pad(
    x: Tensor,
    cache: CausalCache | None,
    key: nn.Module,
    first_pad: int,
    cache_frames: int,
    mode: Literal["replicate", "zeros"],
) -> Tensor:
    """``x`` [B, C, T, H, W] with its causal past in front along T, the one mechanism of every causal conv
    here and in ``wan.py``: the tail ``key`` cached from the previous chunk, or on the first chunk
    ``first_pad`` frames, copies of frame 0 ("replicate", ours) or zeros ("zeros", Wan's ``F.pad``). With a
    cache, the last ``cache_frames`` (k − s) frames of the padded input become ``key``'s tail for the next
    chunk."""
    if cache is not None and key in cache.tails:
        past = cache.tails[key]  # [B, C, k − s, H, W]
    elif mode == "replicate":
        past = x[:, :, :1].expand(-1, -1, first_pad, -1, -1)
    else:
        past = x.new_zeros(x.shape[0], x.shape[1], first_pad, *x.shape[3:])
    x = torch.cat([past, x], dim=2)  # [B, C, T + pad, H, W]
    if cache is not None:  # clone: a view would keep the whole chunk alive
        cache.tails[key] = x[:, :, x.shape[2] - cache_frames :].clone()
    return x


class CausalConv3d(nn.Module):
    """Conv3d that sees only the present and the past along T; spatial padding ``k // 2`` (zeros)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int, int] = 3,
        stride: int | tuple[int, int, int] = 1,
    ):
        super().__init__()
        kt, kh, kw = (kernel_size,) * 3 if isinstance(kernel_size, int) else kernel_size
        st, sh, sw = (stride,) * 3 if isinstance(stride, int) else stride
        if st > kt:  # the next window would start past the cached tail: frames would have to be skipped
            raise ValueError(f"temporal stride {st} > temporal kernel {kt} is not supported")
        self.kernel_t = kt
        self.cache_frames = kt - st  # §2.5 rule 1; 0 for k = s (including k = 1)
        self.conv = nn.Conv3d(
            in_channels, out_channels, (kt, kh, kw), (st, sh, sw), padding=(0, kh // 2, kw // 2)
        )

    def forward(self, x: Tensor, cache: CausalCache | None = None) -> Tensor:
        # first chunk: replicate frame 0 (zeros would make frame 0 an outlier; §2.1)
        x = causal_pad(x, cache, self, self.kernel_t - 1, self.cache_frames, "replicate")
        return self.conv(x)  # [B, C', (T + pad − k) // s + 1, H', W']


class ChannelNorm(nn.Module):
    """RMSNorm or LayerNorm over C at every (t, h, w) position, optionally followed by SiLU.

    Statistics, affine and SiLU run in at least fp32 with one cast back at the end: in bf16 that is one
    rounding per norm instead of three.
    """

    def __init__(self, channels: int, kind: Norm, *, silu: bool = False, eps: float = 1e-6):
        super().__init__()
        self.eps, self.silu = eps, silu
        self.groups = math.gcd(32, channels) if kind == "frame_group" else 0
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels)) if kind in ("layer", "frame_group") else None

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:  # [B, C, T, H, W]
        dtype = torch.promote_types(x.dtype, torch.float32)
        h = x.to(dtype)
        if self.groups:  # statistics over (C/G, H, W) of each frame: SD's GroupNorm, but never across T
            g = rearrange(h, "b (g c) t h w -> b g c t h w", g=self.groups)
            g = g - g.mean(dim=(2, 4, 5), keepdim=True)
            g = g * torch.rsqrt(g.pow(2).mean(dim=(2, 4, 5), keepdim=True) + self.eps)
            h = rearrange(g, "b g c t h w -> b (g c) t h w")
        else:
            if self.bias is not None:
                h = h - h.mean(dim=1, keepdim=True)
            h = h * torch.rsqrt(h.pow(2).mean(dim=1, keepdim=True) + self.eps)
        h = h * rearrange(self.weight.to(dtype), "c -> c 1 1 1")
        if self.bias is not None:
            h = h + rearrange(self.bias.to(dtype), "c -> c 1 1 1")
        return (F.silu(h) if self.silu else h).to(x.dtype)


def resize_channels(x: Tensor, channels: int) -> Tensor:
    """Parameter-free width change along dim 1: duplicate each channel (C → k·C) or average groups of
    consecutive channels (k·C → C), as DC-AE's shortcuts."""
    c = x.shape[1]
    if channels == c:
        return x
    if channels > c:
        return x.repeat_interleave(channels // c, dim=1)
    return x.unflatten(1, (channels, c // channels)).mean(dim=2)


class ResBlock(nn.Module):
    """norm → SiLU → causal conv, twice, plus a shortcut: identity, a 1×1×1 projection when the width
    changes, or with ``free_shortcut`` a channel duplicate/average (``resize_channels``)."""

    def __init__(self, in_channels: int, out_channels: int, norm: Norm, *, free_shortcut: bool = False):
        super().__init__()
        self.out_channels = out_channels
        self.norm1 = ChannelNorm(in_channels, norm, silu=True)
        self.conv1 = CausalConv3d(in_channels, out_channels, 3)
        self.norm2 = ChannelNorm(out_channels, norm, silu=True)
        self.conv2 = CausalConv3d(out_channels, out_channels, 3)
        project = in_channels != out_channels and not free_shortcut
        self.shortcut = CausalConv3d(in_channels, out_channels, 1) if project else None

    def forward(self, x: Tensor, cache: CausalCache | None = None) -> Tensor:
        h = self.conv1(self.norm1(x), cache)  # [B, C', T, H, W]
        h = self.conv2(self.norm2(h), cache)
        if self.shortcut is not None:
            return h + self.shortcut(x, cache)
        return h + resize_channels(x, self.out_channels)


class FrameAttention(nn.Module):
    """Single-head self-attention over the H·W positions of each frame; never across frames: no cache."""

    def __init__(self, channels: int, norm: Norm):
        super().__init__()
        self.norm = ChannelNorm(channels, norm)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: Tensor, cache: CausalCache | None = None) -> Tensor:
        B, _, T, H, W = x.shape
        h = rearrange(self.norm(x), "b c t h w -> (b t) (h w) c")
        q, k, v = rearrange(self.qkv(h), "n l (three c) -> three n l c", three=3)  # each [B·T, H·W, C]
        h = self.proj(F.scaled_dot_product_attention(q, k, v))  # [B·T, H·W, C]
        return x + rearrange(h, "(b t) (h w) c -> b c t h w", b=B, h=H)


class Downsample(nn.Module):
    """Per-frame 3×3 stride-2 conv (space), then a causal k=3 stride-2 conv (time): T = 1 + 2n → 1 + n.

    With ``shortcut``, plus the average of each output's own input window: 2×2 pixels, and frames
    (f0 f0), (f1 f2), (f3 f4), … (causal, stride = window, so nothing to cache across chunks).
    """

    def __init__(self, channels: int, *, time: bool, space: bool, shortcut: bool = False):
        super().__init__()
        self.space = CausalConv3d(channels, channels, (1, 3, 3), (1, 2, 2)) if space else None
        self.time = CausalConv3d(channels, channels, (3, 1, 1), (2, 1, 1)) if time else None
        self.shortcut = shortcut

    def forward(self, x: Tensor, cache: CausalCache | None = None) -> Tensor:
        first = self.time is not None and (cache is None or self.time not in cache.tails)
        h = x
        if self.space is not None:
            h = self.space(h, cache)  # [B, C, T, H/2, W/2]
        if self.time is not None:  # windows (f0 f0 f0), (f0 f1 f2), (f2 f3 f4), …
            h = self.time(h, cache)  # [B, C, 1 + (T − 1)/2, H, W]
        if not self.shortcut:
            return h
        if self.space is not None:
            x = reduce(x, "b c t (h a) (w e) -> b c t h w", "mean", a=2, e=2)  # avg_pool3d lacks CPU bf16
        if self.time is not None:
            if first:  # latent 0 stands for frame 0 alone: pair it with itself
                x = torch.cat([x[:, :, :1], x], dim=2)
            x = rearrange(x, "b c (t two) h w -> b c t two h w", two=2).mean(dim=3)
        return h + x


class Upsample(nn.Module):
    """Causal depth-to-time (time), then nearest 2× + per-frame 3×3 conv (space): T = 1 + n → 1 + 2n.

    With ``shortcut``, plus the input repeated the same way (each frame twice, frame 0 once; 2×2 pixels).
    """

    def __init__(self, channels: int, *, time: bool, space: bool, shortcut: bool = False):
        super().__init__()
        self.time = CausalConv3d(channels, 2 * channels, (3, 1, 1)) if time else None
        self.space = CausalConv3d(channels, channels, (1, 3, 3)) if space else None
        self.shortcut = shortcut

    def forward(self, x: Tensor, cache: CausalCache | None = None) -> Tensor:
        first = self.time is not None and (cache is None or self.time not in cache.tails)
        h = x
        if self.time is not None:
            h = rearrange(self.time(h, cache), "b (r c) t h w -> b c (t r) h w", r=2)  # [B, C, 2T, H, W]
            if first:  # latent 0 stands for one frame, not two: drop its duplicate (only on the first chunk)
                h = h[:, :, 1:]  # [B, C, 2T − 1, H, W]
        if self.space is not None:
            h = repeat(h, "b c t h w -> b c t (h a) (w e)", a=2, e=2)  # [B, C, T, 2H, 2W]
            h = self.space(h, cache)
        if not self.shortcut:
            return h
        if self.time is not None:
            x = x.repeat_interleave(2, dim=2)[:, :, 1 if first else 0 :]  # [B, C, 2T (− 1), H, W]
        if self.space is not None:
            x = repeat(x, "b c t h w -> b c t (h a) (w e)", a=2, e=2)
        return h + x


# ------------------------------------------------------------------------------------- encoder / decoder
def _mid(channels: int, cfg: CausalVAE3DConfig) -> nn.ModuleList:  # same width: identity shortcuts
    attn = [FrameAttention(channels, cfg.norm)] if cfg.mid_attention else []
    return nn.ModuleList(
        [ResBlock(channels, channels, cfg.norm), *attn, ResBlock(channels, channels, cfg.norm)]
    )


class Encoder(nn.Module):
    """video [B, C, T, H, W] → posterior moments [B, 2·C_z, 1 + (T − 1)/r, H/8, W/8] (mean, then logvar)."""

    def __init__(self, cfg: CausalVAE3DConfig):
        super().__init__()
        chs = cfg.level_channels
        self.patch_size = cfg.patch_size
        self.conv_in = CausalConv3d(cfg.in_channels * cfg.patch_size**2, chs[0], 3)
        blocks: list[nn.Module] = []
        c = chs[0]
        for i, ch in enumerate(chs):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock(c, ch, cfg.norm, free_shortcut=cfg.shortcuts))
                c = ch
            time, space = i in cfg.time_down_levels, i in cfg.space_down_levels
            if time or space:
                blocks.append(Downsample(c, time=time, space=space, shortcut=cfg.shortcuts))
        self.down = nn.ModuleList(blocks)
        self.mid = _mid(c, cfg)
        self.norm_out = ChannelNorm(c, cfg.norm, silu=True)
        self.conv_out = CausalConv3d(c, 2 * cfg.latent_channels, 3)
        self.latent_channels, self.shortcut = cfg.latent_channels, cfg.shortcuts

    def forward(self, x: Tensor, cache: CausalCache | None = None) -> Tensor:
        p = self.patch_size
        x = rearrange(x, "b c t (h p) (w q) -> b (c p q) t h w", p=p, q=p)  # space-to-depth
        x = self.conv_in(x, cache)  # [B, C0, T, H/p, W/p]
        for block in [*self.down, *self.mid]:
            x = block(x, cache)  # [B, C_L, T', H/8, W/8] at the end
        moments = self.conv_out(self.norm_out(x), cache)  # [B, 2·C_z, T', H/8, W/8]
        if not self.shortcut:
            return moments
        zeros = torch.zeros_like(moments[:, self.latent_channels :])  # the logvar half gets no shortcut
        return moments + torch.cat([resize_channels(x, self.latent_channels), zeros], dim=1)


class Decoder(nn.Module):
    """latents [B, C_z, T', h, w] → video [B, C, 1 + r·(T' − 1), 8h, 8w]; the mirror of ``Encoder``."""

    def __init__(self, cfg: CausalVAE3DConfig):
        super().__init__()
        chs = cfg.level_channels
        c = chs[-1]
        self.conv_in = CausalConv3d(cfg.latent_channels, c, 3)
        self.mid = _mid(c, cfg)
        blocks: list[nn.Module] = []
        for i in reversed(range(len(chs))):
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResBlock(c, chs[i], cfg.norm, free_shortcut=cfg.shortcuts))
                c = chs[i]
            # level i runs at the resolution of encoder level i: undo the downsample that ended level i − 1
            time, space = (i - 1) in cfg.time_down_levels, (i - 1) in cfg.space_down_levels
            if i > 0 and (time or space):
                blocks.append(Upsample(c, time=time, space=space, shortcut=cfg.shortcuts))
        self.up = nn.ModuleList(blocks)
        self.norm_out = ChannelNorm(c, cfg.norm, silu=True)
        self.patch_size = cfg.patch_size
        self.conv_out = CausalConv3d(c, cfg.in_channels * cfg.patch_size**2, 3)
        self.shortcut = cfg.shortcuts

    def forward(self, z: Tensor, cache: CausalCache | None = None) -> Tensor:
        x = self.conv_in(z, cache)  # [B, C_L, T', h, w]
        if self.shortcut:
            x = x + resize_channels(z, x.shape[1])
        for block in [*self.mid, *self.up]:
            x = block(x, cache)  # [B, C0, 1 + r·(T' − 1), 8h, 8w] at the end
        x = self.conv_out(self.norm_out(x), cache)  # [B, C·p², T, H/p, W/p]
        p = self.patch_size
        return rearrange(x, "b (c p q) t h w -> b c t (h p) (w q)", p=p, q=p)  # [B, C, T, H, W]


# ------------------------------------------------------------------------------------------------- model
class CausalVAE3D(nn.Module):
    """Causal 3-D VAE: the common VAE interface (``minivdit.models.vae``) plus chunked/streaming coding."""

    def __init__(self, cfg: CausalVAE3DConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        # The model's two streams (plain attributes, not state_dict entries); see reset().
        self.encode_cache = CausalCache()
        self.decode_cache = CausalCache()
        self.sample_posterior = True  # encode()'s default: posterior sample (False: mean)

    @classmethod
    def from_config(cls, cfg: CausalVAE3DConfig) -> CausalVAE3D:
        model = cls(cfg)
        model.init_weights()
        return model

    @torch.no_grad()
    def init_weights(self) -> None:
        """PyTorch default init, unit norms, identity-like temporal resampling; works after ``to_empty()``."""
        for m in self.modules():
            if isinstance(m, (nn.Conv3d, nn.Linear, ChannelNorm)):
                m.reset_parameters()
        for m in self.modules():
            if isinstance(m, (Downsample, Upsample)) and m.time is not None:
                w, b = m.time.conv.weight, m.time.conv.bias  # [C·(1|2), C, 3, 1, 1]
                eye = torch.eye(w.shape[1], dtype=w.dtype, device=w.device)
                w.zero_()
                b.zero_()
                w[:, :, -1, 0, 0] = eye.repeat(w.shape[0] // w.shape[1], 1)  # present frame only

    # ---------------------------------------------------------------- interface
    @property
    def latent_channels(self) -> int:
        return self.cfg.latent_channels

    @property
    def spatial_compression(self) -> int:
        return self.cfg.spatial_compression

    @property
    def temporal_compression(self) -> int:
        return self.cfg.temporal_compression

    def latent_frames(self, num_frames: int) -> int:
        """``T = r·k + 1`` pixel frames → ``k + 1`` latent frames; anything else is a ValueError."""
        r = self.temporal_compression
        if num_frames < 1 or (num_frames - 1) % r:
            raise ValueError(
                f"got {num_frames} frames; this VAE needs {r}k + 1 frames "
                f"(nearest valid: {_nearest_valid(num_frames, r)})"
            )
        return (num_frames - 1) // r + 1

    def video_frames(self, num_latent_frames: int) -> int:
        """Inverse of ``latent_frames``: ``k + 1`` latents decode to ``r·k + 1`` frames."""
        if num_latent_frames < 1:
            raise ValueError(f"need at least 1 latent frame, got {num_latent_frames}")
        return self.temporal_compression * (num_latent_frames - 1) + 1

    def reset(self) -> None:
        """Forget both streams: the next ``encode_chunk``/``decode_chunk`` is a first chunk."""
        self.encode_cache.reset()
        self.decode_cache.reset()

    def _check_video(self, video: Tensor) -> None:
        if video.ndim != 5:
            raise ValueError(f"video must be [B, F, C, H, W], got shape {tuple(video.shape)}")
        _, _, channels, H, W = video.shape
        s = self.spatial_compression
        if channels != self.cfg.in_channels:
            raise ValueError(
                f"video has {channels} channels (shape {tuple(video.shape)}), expected {self.cfg.in_channels}"
            )
        if H % s or W % s or H == 0 or W == 0:
            raise ValueError(
                f"frames are {H}x{W} (shape {tuple(video.shape)}); both must be multiples of {s}"
            )

    def _check_latents(self, latents: Tensor) -> None:
        if latents.ndim != 5 or latents.shape[2] != self.latent_channels or latents.shape[1] < 1:
            raise ValueError(
                f"latents must be [B, F', {self.latent_channels}, h, w] with F' >= 1, "
                f"got {tuple(latents.shape)}"
            )

    # ---------------------------------------------------------------- streaming
    def encode_chunk(self, video: Tensor) -> tuple[Tensor, Tensor]:
        """Next chunk of the encode stream → raw posterior ``(mean, logvar)``, each ``[B, F', C, h, w]``.

        The first chunk after ``reset()`` holds ``1 + r·m`` frames (m ≥ 0), later ones ``r·m`` (m ≥ 1).
        """
        self._check_video(video)
        n, r, first = video.shape[1], self.temporal_compression, self.encode_cache.frames == 0
        if (first and (n - 1) % r) or (not first and (n < 1 or n % r)):
            need = f"1 + {r}m frames (first chunk)" if first else f"a positive multiple of {r} frames"
            raise ValueError(f"encode chunk of {n} frames after {self.encode_cache.frames}; need {need}")
        moments = self.encoder(rearrange(video, "b f c h w -> b c f h w"), self.encode_cache)
        self.encode_cache.frames += n
        mean, logvar = rearrange(moments, "b (two c) f h w -> two b f c h w", two=2)  # each [B, F', C, h, w]
        return mean, logvar.clamp(-30.0, 20.0)

    def decode_chunk(self, latents: Tensor) -> Tensor:
        """Next chunk of the decode stream (scaled latents ``[B, F', C, h, w]``, any F' ≥ 1) → its frames."""
        self._check_latents(latents)
        z = latents / self.cfg.scaling_factor + self.cfg.shift_factor
        # [B, C, 1 + r·(F' − 1), H, W] on the first chunk, [B, C, r·F', H, W] after
        x = self.decoder(rearrange(z, "b f c h w -> b c f h w"), self.decode_cache)
        self.decode_cache.frames += latents.shape[1]
        return rearrange(x, "b c f h w -> b f c h w")

    # ---------------------------------------------------------------- whole clips
    def encode_moments(
        self, video: Tensor, chunk_frames: int | Sequence[int] | None = None
    ) -> tuple[Tensor, Tensor]:
        """Raw posterior ``(mean, logvar)`` of a clip, each ``[B, F', C, h, w]``, encoded in chunks.

        ``chunk_frames``: None = the whole clip at once; an int c (a multiple of r) = chunks ``[1, c, c, …]``
        (the last one shorter); a sequence = those chunk lengths (``1 + r·m`` first, then multiples of r).
        The result is the same for every chunking (up to float rounding).
        """
        self._check_video(video)
        T = video.shape[1]
        self.latent_frames(T)
        r = self.temporal_compression
        if chunk_frames is None:
            chunks = [T]
        elif isinstance(chunk_frames, int):
            if chunk_frames < 1 or chunk_frames % r:
                raise ValueError(f"chunk_frames must be a positive multiple of {r}, got {chunk_frames}")
            chunks = [1] + [min(chunk_frames, T - s) for s in range(1, T, chunk_frames)]
        else:
            chunks = [int(c) for c in chunk_frames]
            if sum(chunks) != T:
                raise ValueError(f"chunk_frames {chunks} sum to {sum(chunks)}, the clip has {T} frames")
        self.reset()
        try:
            starts = [sum(chunks[:i]) for i in range(len(chunks))]
            parts = [self.encode_chunk(video[:, s : s + n]) for s, n in zip(starts, chunks)]
        finally:
            self.reset()
        return torch.cat([m for m, _ in parts], dim=1), torch.cat([lv for _, lv in parts], dim=1)

    def latents_from_moments(
        self, mean: Tensor, logvar: Tensor, *, generator: torch.Generator | None = None, sample: bool = True
    ) -> Tensor:
        """Posterior sample (or mean) → the scaled latents the DiT sees; the one place the constants apply."""
        z = sample_posterior(mean, logvar, generator) if sample else mean
        return (z - self.cfg.shift_factor) * self.cfg.scaling_factor

    def encode(
        self,
        video: Tensor,
        chunk_frames: int | Sequence[int] | None = None,
        *,
        generator: torch.Generator | None = None,
        sample: bool | None = None,
    ) -> Tensor:
        """video ``[B, F, C, H, W]`` in [−1, 1] → scaled latents ``[B, 1 + (F − 1)/r, C_z, H/8, W/8]``.

        ``sample`` defaults to the ``sample_posterior`` attribute (True; ``build_vae`` sets it from
        ``VAEConfig``). ``sample=True`` draws from the posterior (as DiT/Latte training), the noise drawn once
        for the whole latent after the moments are assembled, so a seeded ``generator`` gives the same latents
        for every chunking; ``sample=False`` returns the posterior mean.
        """
        mean, logvar = self.encode_moments(video, chunk_frames)
        sample = self.sample_posterior if sample is None else sample
        return self.latents_from_moments(mean, logvar, generator=generator, sample=sample)

    def decode(self, latents: Tensor, chunk_latents: int | Sequence[int] | None = None) -> Tensor:
        """Scaled latents ``[B, F', C_z, h, w]`` → video ``[B, 1 + r·(F' − 1), C, 8h, 8w]`` (not clamped).

        ``chunk_latents``: None = all at once; an int c ≥ 1 = chunks of c latents; a sequence = those lengths.
        """
        self._check_latents(latents)
        n = latents.shape[1]
        if chunk_latents is None:
            chunks = [n]
        elif isinstance(chunk_latents, int):
            if chunk_latents < 1:
                raise ValueError(f"chunk_latents must be >= 1, got {chunk_latents}")
            chunks = [min(chunk_latents, n - s) for s in range(0, n, chunk_latents)]
        else:
            chunks = [int(c) for c in chunk_latents]
            if sum(chunks) != n or min(chunks, default=0) < 1:
                raise ValueError(f"chunk_latents {chunks} must be positive and sum to the {n} latent frames")
        self.reset()
        try:
            starts = [sum(chunks[:i]) for i in range(len(chunks))]
            parts = [self.decode_chunk(latents[:, s : s + c]) for s, c in zip(starts, chunks)]
        finally:
            self.reset()
        return torch.cat(parts, dim=1)

    # ---------------------------------------------------------------- checkpoints
    def save_pretrained(self, path: str | Path) -> None:
        """Write a diffusers-style folder: ``config.json`` (fields + ``_class_name``) and the safetensors."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        config = {"_class_name": CLASS_NAME, **dataclasses.asdict(self.cfg)}
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        with durable.atomic_path(path / WEIGHTS_NAME) as tmp:
            save_file(state, str(tmp))
        durable.write_text(path / CONFIG_NAME, json.dumps(config, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, path: str | Path) -> CausalVAE3D:
        """Load a folder written by ``save_pretrained``, or the run directory of ``train_vae`` (the VAE it
        exported to ``<run>/vae``: :func:`resolve_folder`); strict about config fields and weight keys and
        shapes."""
        path = resolve_folder(path)
        raw = json.loads((path / CONFIG_NAME).read_text())
        if raw.get("_class_name", CLASS_NAME) != CLASS_NAME:
            raise ValueError(f"{path / CONFIG_NAME} is a {raw['_class_name']!r}, not a {CLASS_NAME!r}")
        fields = {f.name for f in dataclasses.fields(CausalVAE3DConfig)}
        unknown = sorted(k for k in raw if not k.startswith("_") and k not in fields)
        if unknown:
            raise ValueError(f"{path / CONFIG_NAME}: unknown config fields {unknown}")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items() if k in fields}
        with torch.device("meta"):
            model = cls(CausalVAE3DConfig(**kwargs))
        state = load_file(str(path / WEIGHTS_NAME))
        expected = model.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        shapes = sorted(
            f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}"
            for k, v in expected.items()
            if k in state and state[k].shape != v.shape
        )
        if missing or unexpected or shapes:
            raise ValueError(
                f"{path / WEIGHTS_NAME} does not match the config: missing keys {missing}, "
                f"unexpected keys {unexpected}, shape mismatches {shapes}"
            )
        model.to_empty(device="cpu")
        model.load_state_dict(state, strict=True)
        return model.eval()


def resolve_folder(path: str | Path) -> Path:
    """The ``save_pretrained`` folder that ``path`` names: ``path`` itself, or ``<path>/vae`` when ``path`` is
    the run directory of ``train_vae`` (no weights of its own, the exported VAE under ``vae/``). Loading and
    the cache identity (``minivdit.models.vae.vae_identity``) both go through here, so the two spellings of
    one VAE are one VAE."""
    path = Path(path)
    if not (path / WEIGHTS_NAME).is_file() and (path / "vae" / WEIGHTS_NAME).is_file():
        return path / "vae"
    return path


# ------------------------------------------------------------------------------------------ latent stats
@torch.no_grad()
def estimate_latent_constants(
    vae: CausalVAE3D,
    videos: Iterable[Tensor],
    *,
    sample: bool = True,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """``{"scaling_factor": 1/std, "shift_factor": mean}`` over all elements of the raw latents of ``videos``.

    Use on a freshly trained VAE: ``vae.cfg = dataclasses.replace(vae.cfg, **estimate_latent_constants(...))``
    (the config is frozen; ``encode``/``decode`` read the constants from ``vae.cfg`` at every call).
    """
    total = total_sq = count = 0.0
    for video in videos:
        mean, logvar = vae.encode_moments(video)
        z = (sample_posterior(mean, logvar, generator) if sample else mean).double()
        total, total_sq, count = total + z.sum().item(), total_sq + z.square().sum().item(), count + z.numel()
    if count < 2:
        raise ValueError("estimate_latent_constants needs at least one clip with two latent elements")
    mu = total / count
    std = max((total_sq / count - mu * mu) * count / (count - 1), 0.0) ** 0.5
    if std == 0.0:
        raise ValueError("latents have zero variance; cannot set scaling_factor")
    return {"scaling_factor": 1.0 / std, "shift_factor": mu}
