"""CogVideoX's causal 3-D VAE (``AutoencoderKLCogVideoX``), hand-written; loads diffusers folders as they are.

Reference: diffusers 0.42.1 ``src/diffusers/models/autoencoders/autoencoder_kl_cogvideox.py`` plus
``CogVideoXDownsample3D`` (``downsampling.py``) and ``CogVideoXUpsample3D`` (``upsampling.py``); facts and
gotchas in ``reference/anchors-cogvideox.md`` §2. Parameter names are diffusers', so a checkpoint loads with
strict keys and no key map; ``save_pretrained`` writes a folder ``diffusers.AutoencoderKLCogVideoX`` loads.

Dataflow (pixels ``T = 4k + 1`` frames → ``k + 1`` latent frames, ×8 smaller):
  encoder: causal conv_in → 4 down blocks (resnets; stride-2 Conv2d downsampler on all but the last; blocks 0
  and 1 also halve time, keeping frame 0 apart) → 2 mid resnets → GroupNorm → SiLU → causal conv_out
  → (mean ‖ logvar). The decoder mirrors it with ``layers_per_block + 1`` resnets per up block and a
  ``SpatialNorm3D`` (GroupNorm modulated by the latents) in place of every GroupNorm.

Numerics kept on purpose, because the released weights were used this way through diffusers:
- **Frame batching.** ``encode`` runs the encoder on chunks of ``num_sample_frames_batch_size = 8`` frames,
  ``decode`` the decoder on chunks of ``num_latent_frames_batch_size = 2`` latents; the first chunk also takes
  the remainder (49 frames → [0:9], [9:17], …; 13 latents → [0:3], [3:5], …). Causal convs carry their last
  ``k_t − 1`` input frames across chunks (``ConvCache``), but **GroupNorm statistics are per chunk**, so the
  result differs from a single pass over the whole clip (and from SAT, which does one pass).
- ``decode`` of an even number of latents returns ``4·F'`` frames, not ``4·F' − 3``: the first-frame special
  case only exists for odd frame counts (diffusers does the same; CogVideoX's 13 and 21 latents are odd).

Notable deviations from diffusers:
- frames-first layout ``[B, F, C, H, W]`` at the boundary (diffusers: ``[B, C, F, H, W]``, used inside);
- the latent scaling lives here: ``encode`` returns ``scaling_factor · z`` and ``decode`` multiplies by
  ``1 / scaling_factor`` (diffusers leaves both to the pipelines); ``shift_factor``/``latents_mean``/
  ``latents_std`` are refused (no CogVideoX release sets them);
- **no tiled encode/decode and no batch slicing** (diffusers' ``enable_tiling``/``enable_slicing``: memory
  savers, and tiling changes the output); no gradient checkpointing (the VAE is frozen);
- conv caches are one flat dict keyed by conv module, filled in place, instead of nested dicts returned by
  every layer; 1×1×1 convs keep no cache (diffusers clones their whole input and never reads it);
- every ``CogVideoXCausalConv3d`` of ``AutoencoderKLCogVideoX`` runs its non-"replicate" branch (the model has
  no pad-mode setting): time padded on the left with the previous chunk's frames or copies of frame 0, zero
  spatial padding inside the conv. The "replicate" branch (used by Mochi) is not implemented;
- ``encode`` raises ``ValueError`` for ``T ≠ 4k + 1`` frames or H, W not multiples of 8 (diffusers accepts
  them and returns latents that do not decode back to the input size); loading raises on any key or shape
  mismatch.

Axis legend: B batch, C channels, F frames, H/W height/width (pixels or features), h/w latent height/width.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange, reduce
from safetensors.torch import load_file, save_file
from torch import Tensor

from minivdit import durable
from minivdit.config import check_types

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"

ConvCache = dict[nn.Module, Tensor]
"""Per causal conv, the last ``k_t − 1`` frames of its padded input in the previous chunk; one dict a call."""


@dataclass(frozen=True, kw_only=True)
class CogVideoXVAEConfig:
    """Architecture and latent constants of a CogVideoX VAE (the diffusers config.json fields that matter)."""

    scaling_factor: float
    """Latent scale applied by ``encode`` (undone by ``decode``): 0.7 for CogVideoX-5B/5B-I2V/1.5, 1.15258426
    for 2B. No default on purpose: read it from the checkpoint's config.json."""
    in_channels: int = 3
    """Pixel channels of the input video."""
    out_channels: int = 3
    """Pixel channels of the decoded video."""
    block_out_channels: tuple[int, ...] = (128, 256, 256, 512)
    """Width of each encoder down block (the decoder uses them reversed); ``len − 1`` spatial ×2 stages."""
    layers_per_block: int = 3
    """Resnets per encoder down block; the decoder's up blocks have one more."""
    latent_channels: int = 16
    """Latent channels C (the encoder outputs 2·C: mean ‖ logvar)."""
    norm_num_groups: int = 32
    """GroupNorm groups everywhere."""
    norm_eps: float = 1e-6
    """GroupNorm eps of the encoder resnets (diffusers fixes 1e-6 for the encoder's norm_out and every
    SpatialNorm3D; so do we)."""
    temporal_compression_ratio: int = 4
    """Temporal stride: log2 of it is the number of blocks (from the first) that also halve time."""
    use_quant_conv: bool = False
    """1×1×1 ``quant_conv`` on the encoder output (off in all releases; diffusers sizes it 2·out_channels)."""
    use_post_quant_conv: bool = False
    """1×1×1 ``post_quant_conv`` before the decoder (off in all releases; diffusers sizes it out_channels)."""
    invert_scale_latents: bool = False
    """CogVideoX 1.5: the I2V pipeline divides the *image* latents by ``scaling_factor`` instead of
    multiplying. ``encode``/``decode`` ignore it; image-conditioning code reads it from here. Round-trips
    through config.json."""
    sample_posterior: bool = True
    """``encode`` returns a posterior sample (as the CogVideoX trainers and I2V pipeline) or, if False, the
    mean."""
    num_sample_frames_batch_size: int = 8
    """Pixel frames per encoder chunk (diffusers' fixed 8; not in config.json); GroupNorm statistics are per
    chunk, so changing it changes the latents."""
    num_latent_frames_batch_size: int = 2
    """Latent frames per decoder chunk (diffusers' fixed 2: "the VAE hasn't been trained to be adaptive")."""

    def __post_init__(self):
        check_types(self)
        sizes = (
            self.in_channels,
            self.out_channels,
            self.layers_per_block,
            self.latent_channels,
            self.norm_num_groups,
            self.num_sample_frames_batch_size,
            self.num_latent_frames_batch_size,
        )
        if not self.block_out_channels or min(sizes) < 1 or self.scaling_factor <= 0:
            raise ValueError(f"invalid CogVideoXVAEConfig sizes: {self}")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(
                f"block_out_channels {self.block_out_channels} must be multiples of norm_num_groups "
                f"{self.norm_num_groups}"
            )
        ratio, num_blocks = self.temporal_compression_ratio, len(self.block_out_channels)
        if ratio < 1 or ratio & (ratio - 1) or ratio > 2 ** (num_blocks - 1):
            raise ValueError(
                f"temporal_compression_ratio must be a power of two ≤ 2**{num_blocks - 1} "
                f"(one halving per downsampling block), got {ratio}"
            )
        if self.num_sample_frames_batch_size % self.temporal_compression_ratio:
            raise ValueError(
                f"num_sample_frames_batch_size {self.num_sample_frames_batch_size} must be a multiple of "
                f"temporal_compression_ratio {self.temporal_compression_ratio}"
            )
        if self.use_quant_conv and self.latent_channels != self.out_channels:
            raise ValueError(
                "use_quant_conv needs latent_channels == out_channels: diffusers builds quant_conv with "
                f"2·out_channels = {2 * self.out_channels} channels; the encoder outputs "
                f"{2 * self.latent_channels}"
            )
        if self.use_post_quant_conv and self.latent_channels != self.out_channels:
            raise ValueError(
                "use_post_quant_conv needs latent_channels == out_channels (diffusers sizes it out_channels)"
            )

    @property
    def temporal_levels(self) -> int:
        """Number of blocks (from the first) whose resampler also acts on time."""
        return self.temporal_compression_ratio.bit_length() - 1

    @classmethod
    def from_diffusers_config(cls, config: dict, **overrides) -> CogVideoXVAEConfig:
        """Read a diffusers ``AutoencoderKLCogVideoX`` config.json dict; ``overrides`` set our own fields
        (``sample_posterior``, the frame batch sizes). Anything we cannot reproduce raises ``ValueError``."""
        cfg = {k: v for k, v in config.items() if not k.startswith("_")}
        for key in _DIFFUSERS_IGNORED:
            cfg.pop(key, None)
        if (act := cfg.pop("act_fn", "silu")) not in ("silu", "swish"):
            raise ValueError(f"act_fn {act!r} is not supported (CogVideoX uses 'silu')")
        for key in ("shift_factor", "latents_mean", "latents_std"):
            if (value := cfg.pop(key, None)) is not None:
                raise ValueError(f"{key}={value!r} is not supported: CogVideoX latents are only scaled")
        num_blocks = len(cfg.get("block_out_channels", cls.block_out_channels))
        for key, block in (
            ("down_block_types", "CogVideoXDownBlock3D"),
            ("up_block_types", "CogVideoXUpBlock3D"),
        ):
            types = list(cfg.pop(key, [block] * 4))
            if len(types) != num_blocks or any(t != block for t in types):
                raise ValueError(f"{key} must be {num_blocks} × {block!r}, got {types}")
        if unknown := sorted(set(cfg) - _DIFFUSERS_FIELDS):
            raise ValueError(f"unsupported AutoencoderKLCogVideoX config keys: {unknown}")
        if "scaling_factor" not in cfg:
            raise ValueError("config has no scaling_factor (0.7 for CogVideoX-5B, 1.15258426 for 2B)")
        if "block_out_channels" in cfg:
            cfg["block_out_channels"] = tuple(cfg["block_out_channels"])
        if "temporal_compression_ratio" in cfg:
            ratio = cfg["temporal_compression_ratio"]
            if ratio != int(ratio):
                raise ValueError(f"temporal_compression_ratio must be an integer, got {ratio}")
            cfg["temporal_compression_ratio"] = int(ratio)
        return cls(**cfg, **overrides)

    def to_diffusers_config(self) -> dict:
        """The config.json dict ``diffusers.AutoencoderKLCogVideoX.from_pretrained`` reads."""
        n = len(self.block_out_channels)
        cfg = {
            "_class_name": "AutoencoderKLCogVideoX",
            "act_fn": "silu",
            "down_block_types": ["CogVideoXDownBlock3D"] * n,
            "up_block_types": ["CogVideoXUpBlock3D"] * n,
        }
        for name in sorted(_DIFFUSERS_FIELDS):
            value = getattr(self, name)
            cfg[name] = list(value) if isinstance(value, tuple) else value
        return cfg


# config.json keys that map 1:1 onto our fields
_DIFFUSERS_FIELDS = {
    "in_channels",
    "out_channels",
    "block_out_channels",
    "layers_per_block",
    "latent_channels",
    "norm_num_groups",
    "norm_eps",
    "temporal_compression_ratio",
    "scaling_factor",
    "use_quant_conv",
    "use_post_quant_conv",
    "invert_scale_latents",
}
# config.json keys with no effect on encode/decode: tiling defaults and a pipeline upcast hint
_DIFFUSERS_IGNORED = ("sample_height", "sample_width", "force_upcast")


def frame_chunks(num_frames: int, batch_size: int) -> list[slice]:
    """diffusers' frame batching: chunks of ``batch_size`` frames, the first one also taking the remainder."""
    num_chunks = max(num_frames // batch_size, 1)
    remainder = num_frames % batch_size
    bounds = [0] + [i * batch_size + remainder for i in range(1, num_chunks)] + [num_frames]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


# ------------------------------------------------------------------------------------------------------------
# Layers ([B, C, F, H, W] inside, as diffusers and nn.Conv3d)
# ------------------------------------------------------------------------------------------------------------


class SafeConv3d(nn.Conv3d):
    """``nn.Conv3d`` that runs inputs over ``max_gib`` (counted at 2 bytes per element, as diffusers does) in
    time chunks overlapping by ``k_t − 1`` frames: the same result in pieces cuDNN accepts."""

    max_gib = 2.0

    def forward(self, x: Tensor) -> Tensor:
        gib = x.numel() * 2 / 2**30
        if gib <= self.max_gib:
            return super().forward(x)
        overlap = self.kernel_size[0] - 1
        pieces = torch.chunk(x, int(gib / self.max_gib) + 1, dim=2)
        outs = [super().forward(pieces[0])]
        for prev, piece in zip(pieces[:-1], pieces[1:]):
            outs.append(super().forward(torch.cat([prev[:, :, prev.shape[2] - overlap :], piece], dim=2)))
        return torch.cat(outs, dim=2)


class CausalConv3d(nn.Module):
    """Conv3d that never looks at future frames: time is padded on the left with the previous chunk's last
    ``k_t − 1`` frames (from ``cache``) or, for the first chunk, copies of frame 0 (diffusers
    ``CogVideoXCausalConv3d``; key ``<name>.conv``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        pad = kernel_size // 2
        self.conv = SafeConv3d(in_channels, out_channels, kernel_size, padding=(0, pad, pad))

    def forward(self, x: Tensor, cache: ConvCache | None = None) -> Tensor:
        past_frames = self.conv.kernel_size[0] - 1
        if past_frames:
            past = cache.get(self) if cache is not None else None
            if past is None:
                past = x[:, :, :1].expand(-1, -1, past_frames, -1, -1)  # [B, C, k_t-1, H, W]
            x = torch.cat([past, x], dim=2)  # [B, C, k_t-1+F, H, W]
            if cache is not None:
                cache[self] = x[:, :, -past_frames:].clone()  # clone: frees the rest of x after this chunk
        return self.conv(x)  # [B, C', F, H, W]


class SpatialNorm3D(nn.Module):
    """GroupNorm modulated by the latents zq (MoVQ's spatial norm, https://arxiv.org/abs/2209.09002):
    ``norm(f) · conv_y(zq↑) + conv_b(zq↑)``, zq nearest-upsampled to f's frames and size."""

    def __init__(self, f_channels: int, zq_channels: int, groups: int):
        super().__init__()
        self.norm_layer = nn.GroupNorm(groups, f_channels, eps=1e-6)  # eps fixed in diffusers
        self.conv_y = CausalConv3d(zq_channels, f_channels, kernel_size=1)
        self.conv_b = CausalConv3d(zq_channels, f_channels, kernel_size=1)

    def forward(self, f: Tensor, zq: Tensor) -> Tensor:
        num_frames, height, width = f.shape[-3:]
        if num_frames > 1 and num_frames % 2 == 1:
            # causal layout: latent frame 0 stands for pixel frame 0 alone, the others for groups of frames
            zq_first = F.interpolate(zq[:, :, :1], size=(1, height, width))  # [B, Cz, 1, H, W]
            zq_rest = F.interpolate(zq[:, :, 1:], size=(num_frames - 1, height, width))  # [B, Cz, F-1, H, W]
            zq = torch.cat([zq_first, zq_rest], dim=2)  # [B, Cz, F, H, W]
        else:
            zq = F.interpolate(zq, size=(num_frames, height, width))  # [B, Cz, F, H, W]
        return self.norm_layer(f) * self.conv_y(zq) + self.conv_b(zq)  # [B, C, F, H, W]


class ResnetBlock3D(nn.Module):
    """norm → SiLU → causal conv, twice, plus a 1×1×1 shortcut when the width changes. The encoder's norms are
    GroupNorm; the decoder's (``spatial_norm=True``) are ``SpatialNorm3D`` on the latents."""

    def __init__(self, cfg: CogVideoXVAEConfig, in_channels: int, out_channels: int, spatial_norm: bool):
        super().__init__()
        if spatial_norm:
            self.norm1 = SpatialNorm3D(in_channels, cfg.latent_channels, cfg.norm_num_groups)
            self.norm2 = SpatialNorm3D(out_channels, cfg.latent_channels, cfg.norm_num_groups)
        else:
            self.norm1 = nn.GroupNorm(cfg.norm_num_groups, in_channels, eps=cfg.norm_eps)
            self.norm2 = nn.GroupNorm(cfg.norm_num_groups, out_channels, eps=cfg.norm_eps)
        self.conv1 = CausalConv3d(in_channels, out_channels, kernel_size=3)
        self.conv2 = CausalConv3d(out_channels, out_channels, kernel_size=3)
        self.conv_shortcut = SafeConv3d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: Tensor, cache: ConvCache, zq: Tensor | None = None) -> Tensor:
        h = self.norm1(x) if zq is None else self.norm1(x, zq)
        h = self.conv1(F.silu(h), cache)  # [B, C_out, F, H, W]
        h = self.norm2(h) if zq is None else self.norm2(h, zq)
        h = self.conv2(F.silu(h), cache)
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return h + skip


class Downsample3D(nn.Module):
    """Optional ×2 time average (frame 0 kept apart when F is odd), then a stride-2 3×3 Conv2d per frame after
    zero padding right/bottom (diffusers ``CogVideoXDownsample3D``)."""

    def __init__(self, channels: int, compress_time: bool):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)
        self.compress_time = compress_time

    def forward(self, x: Tensor) -> Tensor:
        num_frames = x.shape[2]
        if self.compress_time and num_frames > 1:
            first, rest = (x[:, :, :1], x[:, :, 1:]) if num_frames % 2 else (x[:, :, :0], x)
            rest = reduce(
                rest, "b c (f two) h w -> b c f h w", "mean", two=2
            )  # = avg_pool1d(k=2) bit for bit
            x = torch.cat([first, rest], dim=2)  # [B, C, ceil(F/2), H, W]
        b = x.shape[0]
        x = rearrange(F.pad(x, (0, 1, 0, 1)), "b c f h w -> (b f) c h w")  # [B·F, C, H+1, W+1]
        x = self.conv(x)  # [B·F, C, H/2, W/2]
        return rearrange(x, "(b f) c h w -> b c f h w", b=b)


class Upsample3D(nn.Module):
    """Nearest ×2 in space and optionally in time (frame 0 stays single when F is odd), then a 3×3 Conv2d per
    frame (diffusers ``CogVideoXUpsample3D``)."""

    def __init__(self, channels: int, compress_time: bool):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1)
        self.compress_time = compress_time

    def forward(self, x: Tensor) -> Tensor:
        num_frames = x.shape[2]
        if self.compress_time and num_frames > 1 and num_frames % 2:
            first = F.interpolate(x[:, :, :1], scale_factor=(1.0, 2.0, 2.0))  # [B, C, 1, 2H, 2W]
            rest = F.interpolate(x[:, :, 1:], scale_factor=2.0)  # [B, C, 2(F-1), 2H, 2W]
            x = torch.cat([first, rest], dim=2)  # [B, C, 2F-1, 2H, 2W]
        elif self.compress_time and num_frames > 1:
            x = F.interpolate(x, scale_factor=2.0)  # [B, C, 2F, 2H, 2W]
        else:
            x = F.interpolate(x, scale_factor=(1.0, 2.0, 2.0))  # [B, C, F, 2H, 2W]
        b = x.shape[0]
        x = self.conv(rearrange(x, "b c f h w -> (b f) c h w"))
        return rearrange(x, "(b f) c h w -> b c f h w", b=b)


class DownBlock3D(nn.Module):
    """Encoder stage: resnets, then (all but the last stage) a downsampler."""

    def __init__(self, cfg: CogVideoXVAEConfig, index: int, in_channels: int, out_channels: int):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock3D(cfg, in_channels if i == 0 else out_channels, out_channels, spatial_norm=False)
            for i in range(cfg.layers_per_block)
        )
        self.downsamplers = None
        if index < len(cfg.block_out_channels) - 1:
            compress_time = index < cfg.temporal_levels
            self.downsamplers = nn.ModuleList([Downsample3D(out_channels, compress_time)])

    def forward(self, x: Tensor, cache: ConvCache) -> Tensor:
        for resnet in self.resnets:
            x = resnet(x, cache)
        return x if self.downsamplers is None else self.downsamplers[0](x)


class MidBlock3D(nn.Module):
    """Two resnets at the bottleneck width (GroupNorm in the encoder, SpatialNorm3D in the decoder)."""

    def __init__(self, cfg: CogVideoXVAEConfig, channels: int, spatial_norm: bool):
        super().__init__()
        self.resnets = nn.ModuleList(ResnetBlock3D(cfg, channels, channels, spatial_norm) for _ in range(2))

    def forward(self, x: Tensor, cache: ConvCache, zq: Tensor | None = None) -> Tensor:
        for resnet in self.resnets:
            x = resnet(x, cache, zq)
        return x


class UpBlock3D(nn.Module):
    """Decoder stage: ``layers_per_block + 1`` spatially-normed resnets, then (not the last) an upsampler."""

    def __init__(self, cfg: CogVideoXVAEConfig, index: int, in_channels: int, out_channels: int):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock3D(cfg, in_channels if i == 0 else out_channels, out_channels, spatial_norm=True)
            for i in range(cfg.layers_per_block + 1)
        )
        self.upsamplers = None
        if index < len(cfg.block_out_channels) - 1:
            compress_time = index < cfg.temporal_levels
            self.upsamplers = nn.ModuleList([Upsample3D(out_channels, compress_time)])

    def forward(self, x: Tensor, cache: ConvCache, zq: Tensor) -> Tensor:
        for resnet in self.resnets:
            x = resnet(x, cache, zq)
        return x if self.upsamplers is None else self.upsamplers[0](x)


class Encoder3D(nn.Module):
    """Pixels [B, 3, F, H, W] → moments [B, 2·C, F', H/8, W/8] (mean ‖ logvar), one frame chunk at a time."""

    def __init__(self, cfg: CogVideoXVAEConfig):
        super().__init__()
        widths = cfg.block_out_channels
        self.conv_in = CausalConv3d(cfg.in_channels, widths[0], kernel_size=3)
        self.down_blocks = nn.ModuleList(
            DownBlock3D(cfg, i, widths[max(i - 1, 0)], width) for i, width in enumerate(widths)
        )
        self.mid_block = MidBlock3D(cfg, widths[-1], spatial_norm=False)
        self.norm_out = nn.GroupNorm(cfg.norm_num_groups, widths[-1], eps=1e-6)  # eps fixed in diffusers
        self.conv_out = CausalConv3d(widths[-1], 2 * cfg.latent_channels, kernel_size=3)

    def forward(self, x: Tensor, cache: ConvCache) -> Tensor:
        x = self.conv_in(x, cache)  # [B, C0, F, H, W]
        for block in self.down_blocks:
            x = block(x, cache)  # [B, Ci, F', H', W'] (halved where the block resamples)
        x = self.mid_block(x, cache)
        return self.conv_out(F.silu(self.norm_out(x)), cache)  # [B, 2·C, F', h, w]


class Decoder3D(nn.Module):
    """Latents [B, C, F', h, w] → pixels [B, 3, F, H, W], one latent chunk at a time; every norm sees the
    chunk's latents through ``SpatialNorm3D``."""

    def __init__(self, cfg: CogVideoXVAEConfig):
        super().__init__()
        widths = cfg.block_out_channels[::-1]
        self.conv_in = CausalConv3d(cfg.latent_channels, widths[0], kernel_size=3)
        self.mid_block = MidBlock3D(cfg, widths[0], spatial_norm=True)
        self.up_blocks = nn.ModuleList(
            UpBlock3D(cfg, i, widths[max(i - 1, 0)], width) for i, width in enumerate(widths)
        )
        self.norm_out = SpatialNorm3D(widths[-1], cfg.latent_channels, cfg.norm_num_groups)
        self.conv_out = CausalConv3d(widths[-1], cfg.out_channels, kernel_size=3)

    def forward(self, z: Tensor, cache: ConvCache) -> Tensor:
        x = self.conv_in(z, cache)  # [B, C0, F', h, w]
        x = self.mid_block(x, cache, z)
        for block in self.up_blocks:
            x = block(x, cache, z)  # [B, Ci, F, H, W] (doubled where the block resamples)
        return self.conv_out(F.silu(self.norm_out(x, z)), cache)  # [B, 3, F, H, W]


# ------------------------------------------------------------------------------------------------------------
# The VAE
# ------------------------------------------------------------------------------------------------------------


class CogVideoXVAE(nn.Module):
    """CogVideoX's VAE behind minivdit's VAE interface (``minivdit.models.vae``): frames first, scaled."""

    def __init__(self, cfg: CogVideoXVAEConfig):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder3D(cfg)
        self.decoder = Decoder3D(cfg)
        # diffusers sizes both from out_channels (not latent_channels); __post_init__ makes that consistent
        self.quant_conv = (
            SafeConv3d(2 * cfg.out_channels, 2 * cfg.out_channels, 1) if cfg.use_quant_conv else None
        )
        self.post_quant_conv = (
            SafeConv3d(cfg.out_channels, cfg.out_channels, 1) if cfg.use_post_quant_conv else None
        )

    @property
    def latent_channels(self) -> int:
        return self.config.latent_channels

    @property
    def spatial_compression(self) -> int:
        return 2 ** (len(self.config.block_out_channels) - 1)

    @property
    def temporal_compression(self) -> int:
        return self.config.temporal_compression_ratio

    def latent_frames(self, num_frames: int) -> int:
        """``T = r·k + 1`` pixel frames → ``k + 1`` latent frames (r = 4); others raise ``ValueError``."""
        r = self.temporal_compression
        if num_frames < 1 or (num_frames - 1) % r:
            below = (num_frames - 1) // r * r + 1
            nearest = [n for n in (below, below + r) if n >= 1]
            raise ValueError(
                f"CogVideoX VAE needs {r}k+1 frames, got {num_frames}; nearest valid counts: "
                f"{' and '.join(map(str, nearest))}"
            )
        return (num_frames - 1) // r + 1

    def encode_moments(self, video: Tensor) -> tuple[Tensor, Tensor]:
        """``video`` [B, F, 3, H, W] in [-1, 1] → the raw posterior ``(mean, logvar)``, each [B, F', C, h, w],
        unscaled, logvar clamped to [−30, 20] as diffusers' ``DiagonalGaussianDistribution`` (the moments
        ``tools/cache_latents.py`` caches; ``encode`` samples from the same numbers)."""
        mean, logvar = self._moments(video)
        return rearrange(mean, "b c f h w -> b f c h w"), rearrange(logvar, "b c f h w -> b f c h w")

    def encode(self, video: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``video`` [B, F, 3, H, W] in [-1, 1] → latents [B, F', C, H/8, W/8], already × ``scaling_factor``:
        a posterior sample (``generator`` seeds it, drawn in diffusers' layout so the same seed gives the same
        sample) or, with ``sample_posterior=False``, the posterior mean."""
        cfg = self.config
        mean, logvar = self._moments(video)  # [B, C, F', h, w] each
        z = mean
        if cfg.sample_posterior:
            std = torch.exp(0.5 * logvar)
            device = generator.device if generator is not None else mean.device
            noise = torch.randn(mean.shape, generator=generator, device=device, dtype=mean.dtype)
            z = mean + std * noise.to(mean.device)
        return rearrange(z * cfg.scaling_factor, "b c f h w -> b f c h w")

    def _moments(self, video: Tensor) -> tuple[Tensor, Tensor]:
        """Checked ``video`` → ``(mean, logvar)`` in diffusers' layout [B, C, F', h, w], logvar clamped."""
        cfg = self.config
        if video.ndim != 5 or video.shape[2] != cfg.in_channels:
            raise ValueError(f"expected video [B, F, {cfg.in_channels}, H, W], got {tuple(video.shape)}")
        s = self.spatial_compression
        if video.shape[-2] % s or video.shape[-1] % s:
            raise ValueError(
                f"video height and width must be multiples of {s}, got {tuple(video.shape[-2:])}"
            )
        self.latent_frames(video.shape[1])
        x = rearrange(video, "b f c h w -> b c f h w")
        cache: ConvCache = {}
        moments = []
        for frames in frame_chunks(x.shape[2], cfg.num_sample_frames_batch_size):
            m = self.encoder(x[:, :, frames], cache)  # [B, 2·C, F'_chunk, h, w]
            moments.append(m if self.quant_conv is None else self.quant_conv(m))
        mean, logvar = torch.cat(moments, dim=2).chunk(2, dim=1)  # [B, C, F', h, w] each
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, latents: Tensor) -> Tensor:
        """``latents`` [B, F', C, h, w] (scaled, as ``encode`` returns them) → video [B, F, 3, 8h, 8w], not
        clamped; F = 4·F' − 3 for odd F', 4·F' for even F' (diffusers' chunking, see the module docstring)."""
        cfg = self.config
        if latents.ndim != 5 or latents.shape[2] != cfg.latent_channels:
            raise ValueError(
                f"expected latents [B, F', {cfg.latent_channels}, h, w], got {tuple(latents.shape)}"
            )
        # (1 / s) · z, not z / s: the CogVideoX pipelines' expression, bit for bit
        z = rearrange(latents, "b f c h w -> b c f h w") * (1 / cfg.scaling_factor)
        cache: ConvCache = {}
        video = []
        for frames in frame_chunks(z.shape[2], cfg.num_latent_frames_batch_size):
            z_chunk = (
                z[:, :, frames] if self.post_quant_conv is None else self.post_quant_conv(z[:, :, frames])
            )
            video.append(self.decoder(z_chunk, cache))  # [B, 3, F_chunk, H, W]
        return rearrange(torch.cat(video, dim=2), "b c f h w -> b f c h w")

    # ----- checkpoints (diffusers folder format) -----

    @classmethod
    def from_config(cls, cfg: CogVideoXVAEConfig) -> CogVideoXVAE:
        """Randomly initialised (PyTorch default init)."""
        return cls(cfg)

    @classmethod
    def from_pretrained(cls, path: str | Path, **overrides) -> CogVideoXVAE:
        """Load a diffusers ``AutoencoderKLCogVideoX`` folder (``config.json`` +
        ``diffusion_pytorch_model.safetensors``) with strict keys and shapes, into fp32 CPU parameters.
        ``overrides`` set config fields that config.json does not carry (``sample_posterior``, the frame batch
        sizes)."""
        folder = Path(path)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (folder / name).is_file():
                raise FileNotFoundError(
                    f"{folder}: no {name} (expected a diffusers AutoencoderKLCogVideoX folder)"
                )
        cfg = CogVideoXVAEConfig.from_diffusers_config(
            json.loads((folder / CONFIG_NAME).read_text()), **overrides
        )
        with torch.device("meta"):  # skip the random init: every tensor is overwritten below
            model = cls(cfg)
        model.to_empty(device="cpu")
        state = load_file(str(folder / WEIGHTS_NAME))
        expected = model.state_dict()
        problems = []
        for what, keys in (
            ("missing", expected.keys() - state.keys()),
            ("unexpected", state.keys() - expected.keys()),
        ):
            if keys:
                problems.append(f"{len(keys)} {what} keys: {_listing(sorted(keys))}")
        shapes = [
            f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
            for k, v in expected.items()
            if k in state and state[k].shape != v.shape
        ]
        if shapes:
            problems.append(f"{len(shapes)} shape mismatches (checkpoint vs model): {_listing(shapes)}")
        if problems:
            raise ValueError(
                f"{folder / WEIGHTS_NAME} does not match CogVideoXVAE({cfg}): " + "; ".join(problems)
            )
        model.load_state_dict(state)
        return model

    def save_pretrained(self, path: str | Path) -> None:
        """Write ``config.json`` + ``diffusion_pytorch_model.safetensors`` in diffusers' format."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        with durable.atomic_path(folder / WEIGHTS_NAME) as tmp:
            save_file(state, str(tmp), metadata={"format": "pt"})
        durable.write_text(
            folder / CONFIG_NAME, json.dumps(self.config.to_diffusers_config(), indent=2) + "\n"
        )


def _listing(items: list[str], limit: int = 20) -> str:
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown}, … ({len(items) - limit} more)"
