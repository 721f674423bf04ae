"""Wan 2.1's causal 3-D VAE (diffusers ``AutoencoderKLWan``), hand-written; loads diffusers folders as is.

References: diffusers 0.42.1 ``src/diffusers/models/autoencoders/autoencoder_kl_wan.py`` (the modules and
their parameter names, ``AutoencoderKLWan._encode``/``_decode``); the original ``Wan-Video/Wan2.1`` @ 9737cba
``wan/modules/vae.py`` (the same network; ``WanVAE`` l.619-661 normalises the latents); the latent
normalisation of ``pipelines/wan/pipeline_wan.py`` l.663-673 and ``pipeline_wan_i2v.py`` l.443-462. Parameter
names are diffusers', so a checkpoint loads with strict keys and no key map; ``save_pretrained`` writes a
folder ``diffusers.AutoencoderKLWan`` loads.

Dataflow (pixels ``T = 4k + 1`` frames → ``k + 1`` latent frames of 16 channels, ×8 smaller; Wan 2.1's
``base_dim 96``, ``dim_mult (1, 2, 4, 4)``, 2 resnets per level, ≈127 M parameters):
  encoder: causal conv_in → per level: resnets (RMS norm → SiLU → causal 3×3×3 conv, twice, plus a shortcut),
  then (all but the last level) a per-frame stride-2 Conv2d, followed on levels 1 and 2 by a stride-2 causal
  time conv → mid (resnet, per-frame attention, resnet) → RMS norm → SiLU → causal conv_out → 1×1×1
  ``quant_conv`` → (mean ‖ logvar). The decoder mirrors it with ``num_res_blocks + 1`` resnets per level; its
  upsamplers first double time (a causal conv to 2·C, then depth-to-time), then space (nearest ×2 and a 3×3
  Conv2d that halves the width).

The feature cache. Wan runs the encoder on chunks of 1, 4, 4, … frames and the decoder on one latent at a
time, carrying ``feat_cache`` between calls: for every 3×3×3 conv the last ``CACHE_T = 2`` frames of its
input, i.e. of its zero-padded input (Wan pads time with ``2·pad_t`` zeros on the left, ``F.pad``). That is
the rule of ``causal3d.py`` (a causal conv with kernel k and stride s caches the last k − s frames of its
padded input), the mechanism is shared: ``causal3d.CausalCache`` holds the tails and ``causal3d.causal_pad``
pads and caches; only the first-chunk pad differs (zeros here, frame 0 there). The two resamplers give frame 0
its own latent, which is what makes 1 + 4k frames ↔ 1 + k latents:
- time downsampling passes frame 0 through untouched on the first chunk (diffusers stores the chunk and skips
  ``time_conv``), then the stride-2 conv windows are (f0 f1 f2), (f2 f3 f4), …, carrying one frame;
- time upsampling passes latent 0 through untouched on the first chunk (diffusers' ``"Rep"`` sentinel), then
  the causal conv runs on latents 1, 2, … with a zero pad in front (latent 0 is never in its window).
Here the first chunk is the one where ``cache.frames == 0`` (the encoder and decoder advance it), and any
chunking gives the whole clip's result: the first encode chunk holds ``1 + 4m`` frames, later ones ``4m``;
decode chunks hold any number of latents (pinned in float64 by ``tests/test_vae_wan.py``). Nothing else
mixes time: the norms are per (t, h, w) position and attention is within a frame.

Memory: ``encode``/``decode`` default to Wan's chunking (1, 4, 4, … frames; one latent at a time), so the
activations held at once are those of one chunk, and the state carried between chunks is two frames per
causal conv (one per stride-2 time conv) at its resolution, the same after every chunk but the first,
whatever the clip length. For frames on the fly (to write a long video without holding it), call
``decode_chunk`` in a loop after ``reset()``.

Numerics kept on purpose: the RMS norm is diffusers' ``F.normalize(x, dim=1)·√C·γ`` (‖x‖ clamped at 1e-12,
normalised in fp32 for half inputs, then cast back before the scale), and the latent constants are applied as
the pipelines do, ``(z − mean) · (1/std)`` and ``z / (1/std) + mean``, with ``1/std`` computed in the latents'
dtype.

Notable deviations from diffusers:
- frames-first layout ``[B, F, C, H, W]`` at the boundary (diffusers: ``[B, C, F, H, W]``, used inside);
- the latent normalisation lives here (diffusers leaves it to the pipelines): ``encode`` returns
  ``(z − latents_mean) / latents_std`` and ``decode`` inverts it;
- ``decode`` does not clamp to [−1, 1] (diffusers and Wan do; minivdit's VAEs leave it to the caller,
  ``sample.decode_latents`` clamps);
- any valid chunking, and whole clips, give the same result (diffusers only runs its fixed chunking; with no
  ``feat_cache`` its resamplers skip the time convs altogether);
- ``encode`` draws a posterior *sample* only if ``sample_posterior`` says so; Wan's own ``WanVAE.encode``,
  FlashI2V's trainer through it (``PKU-YuanGroup/FlashI2V`` @ e244797 ``flashi2v/modules/vae.py`` l.659) and
  the I2V pipeline (``sample_mode="argmax"``) use the posterior mean, hence the config's default ``False``
  (``VAEConfig.sample_posterior`` defaults to True: a Wan recipe sets it);
- nearest ×2 upsampling by repetition (bit-identical to ``nearest-exact`` ×2; diffusers also rounds a float64
  input to float32 there);
- no tiling, no batch slicing, no dropout (the releases use 0.0) and no gradient checkpointing (frozen VAE);
- refused with a ``ValueError``: Wan 2.2's VAE (``is_residual``, ``patch_size``: ``AvgDown3D``/``DupUp3D``
  shortcuts and a 2×2 patcher), ``attn_scales`` (no Wan 2.1 release sets it; diffusers' decoder ignores it),
  ``dropout`` ≠ 0, and frame counts other than 4k + 1 or sizes not multiples of 8 (diffusers accepts them
  and returns latents that do not decode back to the input's shape).

Axis legend: B batch, F frames (public layout), T frames inside the conv stack (layout ``[B, C, T, H, W]``),
C channels, H/W height/width, h/w latent height/width, r temporal compression.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange, repeat
from safetensors.torch import load_file, save_file
from torch import Tensor

from minivdit import durable
from minivdit.config import check_types
from minivdit.models.vae.causal3d import CausalCache, causal_pad

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
CLASS_NAME = "AutoencoderKLWan"

# Wan 2.1's latent statistics (wan/modules/vae.py l.628-635; diffusers' config defaults)
WAN21_LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
WAN21_LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class WanVAEConfig:
    """Architecture and latent statistics of a Wan 2.1 VAE (the diffusers config.json fields that matter)."""

    base_dim: int = 96
    """Width of the encoder's first level; level i has ``base_dim · dim_mult[i]`` channels."""
    decoder_base_dim: int | None = None
    """Decoder's base width (None: ``base_dim``, as every Wan 2.1 release)."""
    z_dim: int = 16
    """Latent channels C (the encoder outputs 2·C: mean ‖ logvar)."""
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    """Width multiplier per level; ``len − 1`` spatial ×2 stages."""
    num_res_blocks: int = 2
    """Resnets per encoder level; the decoder's levels have one more."""
    temperal_downsample: tuple[bool, ...] = (False, True, True)
    """Per encoder downsampling stage, whether it also halves time (diffusers' spelling, kept so config.json
    maps 1:1); the decoder upsamples time in reverse order."""
    latents_mean: tuple[float, ...] = WAN21_LATENTS_MEAN
    """Per-channel mean of the raw latents; ``encode`` returns ``(z − latents_mean) / latents_std``."""
    latents_std: tuple[float, ...] = WAN21_LATENTS_STD
    """Per-channel standard deviation of the raw latents (see ``latents_mean``)."""
    in_channels: int = 3
    """Pixel channels of the input video."""
    out_channels: int = 3
    """Pixel channels of the decoded video."""
    sample_posterior: bool = False
    """``encode`` returns a posterior sample or, if False (Wan's ``WanVAE.encode``, the I2V pipeline's
    ``argmax``), the posterior mean. Not in config.json; ``build_vae`` sets it from ``VAEConfig``."""

    def __post_init__(self) -> None:
        check_types(self)
        for name in ("base_dim", "z_dim", "num_res_blocks", "in_channels", "out_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"WanVAEConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.decoder_base_dim is not None and self.decoder_base_dim < 1:
            raise ValueError(f"WanVAEConfig.decoder_base_dim must be >= 1, got {self.decoder_base_dim}")
        if not self.dim_mult or min(self.dim_mult) < 1:
            raise ValueError(f"WanVAEConfig.dim_mult must be positive, got {self.dim_mult}")
        if len(self.temperal_downsample) != len(self.dim_mult) - 1:
            raise ValueError(
                f"WanVAEConfig.temperal_downsample {self.temperal_downsample} needs one entry per "
                f"downsampling stage ({len(self.dim_mult) - 1} for dim_mult {self.dim_mult})"
            )
        for name in ("latents_mean", "latents_std"):
            if len(getattr(self, name)) != self.z_dim:
                raise ValueError(
                    f"WanVAEConfig.{name} has {len(getattr(self, name))} values, z_dim is {self.z_dim}"
                )
        if min(self.latents_std) <= 0:
            raise ValueError(f"WanVAEConfig.latents_std must be positive, got {self.latents_std}")
        dec = self.decoder_base_dim or self.base_dim
        if any(dec * m % 2 for m in self.dim_mult[1:]):  # every upsampler halves its level's width
            raise ValueError(
                f"decoder widths {[dec * m for m in self.dim_mult]} must be even after the first level "
                "(Wan 2.1's upsamplers halve them)"
            )

    @property
    def temporal_compression(self) -> int:
        return 2 ** sum(self.temperal_downsample)

    @property
    def spatial_compression(self) -> int:
        return 2 ** (len(self.dim_mult) - 1)

    @classmethod
    def from_diffusers_config(cls, config: dict, **overrides) -> WanVAEConfig:
        """Read a diffusers ``AutoencoderKLWan`` config.json dict; ``overrides`` set our own fields
        (``sample_posterior``). Anything we cannot reproduce raises ``ValueError`` naming the key."""
        cfg = {k: v for k, v in config.items() if not k.startswith("_")}
        if cfg.pop("is_residual", False) or cfg.pop("patch_size", None) is not None:
            raise ValueError(
                "is_residual/patch_size describe Wan 2.2's VAE (AvgDown3D/DupUp3D shortcuts, 2x2 patcher): "
                "not supported, only Wan 2.1's"
            )
        if attn := cfg.pop("attn_scales", []):
            raise ValueError(f"attn_scales={attn!r} is not supported (no Wan 2.1 release sets it)")
        if (dropout := cfg.pop("dropout", 0.0)) != 0.0:
            raise ValueError(f"dropout={dropout!r} is not supported (inference only; the releases use 0.0)")
        scales = {k: cfg.pop(k) for k in ("scale_factor_temporal", "scale_factor_spatial") if k in cfg}
        if unknown := sorted(set(cfg) - _DIFFUSERS_FIELDS):
            raise ValueError(f"unsupported AutoencoderKLWan config keys: {unknown}")
        for key, cast in (("dim_mult", int), ("temperal_downsample", bool), ("latents_mean", float)):
            if key in cfg:
                cfg[key] = tuple(cast(v) for v in cfg[key])
        if "latents_std" in cfg:
            cfg["latents_std"] = tuple(float(v) for v in cfg["latents_std"])
        out = cls(**cfg, **overrides)
        for key, have in (
            ("scale_factor_temporal", out.temporal_compression),
            ("scale_factor_spatial", out.spatial_compression),
        ):
            if scales.get(key) not in (None, have):
                raise ValueError(f"{key}={scales[key]} disagrees with the architecture's {have}")
        return out

    def to_diffusers_config(self) -> dict:
        """The config.json dict ``diffusers.AutoencoderKLWan.from_pretrained`` reads."""
        cfg = {"_class_name": CLASS_NAME, "attn_scales": [], "dropout": 0.0, "is_residual": False}
        for name in sorted(_DIFFUSERS_FIELDS):
            value = getattr(self, name)
            cfg[name] = list(value) if isinstance(value, tuple) else value
        cfg["patch_size"] = None
        cfg["scale_factor_temporal"] = self.temporal_compression
        cfg["scale_factor_spatial"] = self.spatial_compression
        return cfg


# config.json keys that map 1:1 onto our fields
_DIFFUSERS_FIELDS = {
    "base_dim",
    "decoder_base_dim",
    "z_dim",
    "dim_mult",
    "num_res_blocks",
    "temperal_downsample",
    "latents_mean",
    "latents_std",
    "in_channels",
    "out_channels",
}


def resolve_folder(path: str | Path) -> Path:
    """The ``AutoencoderKLWan`` folder ``path`` names: ``path`` itself, or ``<path>/vae`` for a Wan pipeline
    folder (``model_index.json`` at the top, the VAE in ``vae/``). Loading and the cache identity
    (``minivdit.models.vae.vae_identity``) both go through here, so the two spellings are one VAE."""
    path = Path(path)
    if not (path / CONFIG_NAME).is_file() and (path / "vae" / CONFIG_NAME).is_file():
        return path / "vae"
    return path


def _chunk_lengths(total: int, chunks: int | Sequence[int] | None, *, first: int, step: int) -> list[int]:
    """Split ``total`` frames: None = one chunk; an int c = ``[first, c, c, …]`` (no ``first`` when it is 0;
    the last chunk shorter); a sequence = those lengths (checked to sum to ``total``)."""
    if chunks is None:
        return [total]
    if isinstance(chunks, int):
        if chunks < 1 or chunks % step:
            raise ValueError(f"chunk size must be a positive multiple of {step}, got {chunks}")
        head = [first] if first else []
        return head + [min(chunks, total - s) for s in range(first, total, chunks)]
    lengths = [int(c) for c in chunks]
    if sum(lengths) != total or min(lengths, default=0) < 1:
        raise ValueError(f"chunks {lengths} must be positive and sum to the {total} frames")
    return lengths


# ------------------------------------------------------------------------------------------------ layers
class WanCausalConv3d(nn.Conv3d):
    """Conv3d that sees only the present and the past along T: on the first chunk ``2·padding_t`` zero frames
    in front, later the cached tail (``causal_pad``); spatial zero padding as given (diffusers
    ``WanCausalConv3d``; the module is the ``nn.Conv3d``, so the keys are ``<name>.weight``). 1×1×1 convs keep
    no cache."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int, int],
        stride: int | tuple[int, int, int] = 1,
        padding: int | tuple[int, int, int] = 0,
    ):
        pt, ph, pw = (padding,) * 3 if isinstance(padding, int) else padding
        super().__init__(in_channels, out_channels, kernel_size, stride, padding=(0, ph, pw))
        self.time_pad = 2 * pt  # Wan pads 2·p_t on the left only (autoencoder_kl_wan.py l.167)
        self.cache_frames = self.kernel_size[0] - self.stride[0]  # CACHE_T = 2 for the 3×3×3 convs

    def forward(self, x: Tensor, cache: CausalCache | None = None) -> Tensor:
        if self.kernel_size[0] > 1:
            x = causal_pad(x, cache, self, self.time_pad, self.cache_frames, "zeros")  # [B, C, pad + T, H, W]
        return super().forward(x)  # [B, C', (pad + T − k) // s + 1, H', W']


class RMSNorm(nn.Module):
    """``F.normalize(x, dim=1) · √C · γ`` over C at each position (diffusers ``WanRMS_norm``, bias-free as Wan
    2.1 uses it); ``images``: γ is ``[C, 1, 1]`` for per-frame 4-D inputs, else ``[C, 1, 1, 1]``."""

    def __init__(self, channels: int, *, images: bool = False):
        super().__init__()
        self.scale = channels**0.5
        self.gamma = nn.Parameter(torch.ones(channels, *((1, 1) if images else (1, 1, 1))))

    def forward(self, x: Tensor) -> Tensor:
        low = x.dtype in (torch.float16, torch.bfloat16)  # normalise in fp32, as diffusers (l.203-208)
        normalized = F.normalize(x.float() if low else x, dim=1).to(x.dtype)
        return normalized * self.scale * self.gamma


class ResidualBlock(nn.Module):
    """RMS norm → SiLU → causal 3×3×3 conv, twice, plus the input (a 1×1×1 conv when the width changes)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = RMSNorm(in_channels)
        self.conv1 = WanCausalConv3d(in_channels, out_channels, 3, padding=1)
        self.norm2 = RMSNorm(out_channels)
        self.conv2 = WanCausalConv3d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = (
            WanCausalConv3d(in_channels, out_channels, 1) if in_channels != out_channels else None
        )

    def forward(self, x: Tensor, cache: CausalCache | None = None) -> Tensor:
        h = x if self.conv_shortcut is None else self.conv_shortcut(x)
        x = self.conv1(F.silu(self.norm1(x)), cache)  # [B, C', T, H, W]
        x = self.conv2(F.silu(self.norm2(x)), cache)
        return x + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over the H·W positions of each frame (never across frames: no cache)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = RMSNorm(channels, images=True)
        self.to_qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        B, _, _, H, _ = x.shape
        h = self.to_qkv(self.norm(rearrange(x, "b c t h w -> (b t) c h w")))  # [B·T, 3C, H, W]
        q, k, v = rearrange(h, "n (three c) h w -> three n 1 (h w) c", three=3)  # each [B·T, 1, H·W, C]
        h = F.scaled_dot_product_attention(q, k, v)
        h = self.proj(rearrange(h, "n 1 (h w) c -> n c h w", h=H))  # [B·T, C, H, W]
        return x + rearrange(h, "(b t) c h w -> b c t h w", b=B)


class MidBlock(nn.Module):
    """resnet → per-frame attention → resnet, at the bottleneck width."""

    def __init__(self, channels: int):
        super().__init__()
        self.resnets = nn.ModuleList([ResidualBlock(channels, channels), ResidualBlock(channels, channels)])
        self.attentions = nn.ModuleList([AttentionBlock(channels)])

    def forward(self, x: Tensor, cache: CausalCache | None = None) -> Tensor:
        x = self.resnets[0](x, cache)
        return self.resnets[1](self.attentions[0](x), cache)


def _per_frame(module: nn.Module, x: Tensor) -> Tensor:
    """Apply a 2-D ``module`` to every frame of ``x`` [B, C, T, H, W]."""
    y = module(rearrange(x, "b c t h w -> (b t) c h w"))  # [B·T, C', H', W']
    return rearrange(y, "(b t) c h w -> b c t h w", b=x.shape[0])


class Nearest2x(nn.Module):
    """Nearest ×2 in H and W by repetition (= ``nn.Upsample(mode="nearest-exact")`` ×2, in every dtype)."""

    def forward(self, x: Tensor) -> Tensor:
        return repeat(x, "n c h w -> n c (h a) (w e)", a=2, e=2)


class Downsample(nn.Module):
    """Per-frame right/bottom zero pad + 3×3 stride-2 Conv2d (space), then with ``time`` a stride-2 causal
    (3, 1, 1) conv: T = 1 + 2n → 1 + n (diffusers ``WanResample`` "downsample2d"/"downsample3d")."""

    def __init__(self, channels: int, *, time: bool):
        super().__init__()
        # a Sequential for the checkpoint's keys: resample.1.weight
        self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(channels, channels, 3, stride=2))
        self.time_conv = WanCausalConv3d(channels, channels, (3, 1, 1), stride=(2, 1, 1)) if time else None

    def forward(self, x: Tensor, cache: CausalCache | None = None) -> Tensor:
        x = _per_frame(self.resample, x)  # [B, C, T, H/2, W/2]
        if self.time_conv is None:
            return x
        if cache is not None and cache.frames:
            return self.time_conv(x, cache)  # (tail, f1, f2), (f2, f3, f4), … → [B, C, T/2, H, W]
        # first chunk: frame 0 is latent 0 as it is (diffusers l.306-311 skip time_conv on the first chunk);
        # it is also the tail the next window starts from: (f0 f1 f2), (f2 f3 f4), …
        cache = CausalCache() if cache is None else cache
        first, rest = x[:, :, :1], x[:, :, 1:]
        cache.tails[self.time_conv] = first.clone()
        if rest.shape[2] == 0:
            return first
        return torch.cat([first, self.time_conv(rest, cache)], dim=2)  # [B, C, 1 + (T − 1)/2, H, W]


class Upsample(nn.Module):
    """With ``time``, a causal (3, 1, 1) conv to 2·C and depth-to-time; then per frame nearest ×2 and a 3×3
    Conv2d to ``out_channels``: T = 1 + n → 1 + 2n (diffusers ``WanResample`` "upsample2d"/"upsample3d")."""

    def __init__(self, channels: int, out_channels: int, *, time: bool):
        super().__init__()
        self.resample = nn.Sequential(Nearest2x(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.time_conv = (
            WanCausalConv3d(channels, 2 * channels, (3, 1, 1), padding=(1, 0, 0)) if time else None
        )

    def forward(self, x: Tensor, cache: CausalCache | None = None) -> Tensor:
        if self.time_conv is not None:
            # latent 0 stands for frame 0 alone and skips the time conv (diffusers' "Rep", l.276-281); the
            # conv sees latents 1, 2, … behind a zero pad, so latent 0 is never in its window
            first_chunk = cache is None or cache.frames == 0
            first, rest = (x[:, :, :1], x[:, :, 1:]) if first_chunk else (x[:, :, :0], x)
            if rest.shape[2]:
                rest = rearrange(self.time_conv(rest, cache), "b (two c) t h w -> b c (t two) h w", two=2)
            x = torch.cat([first, rest], dim=2)  # [B, C, 1 + 2n, H, W] (first chunk) or [B, C, 2n, H, W]
        return _per_frame(self.resample, x)  # [B, C_out, T, 2H, 2W]


class UpBlock(nn.Module):
    """Decoder level: ``num_res_blocks + 1`` resnets, then (all but the last level) an upsampler."""

    def __init__(self, in_channels: int, out_channels: int, num_resnets: int, upsample: str | None):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResidualBlock(in_channels if i == 0 else out_channels, out_channels) for i in range(num_resnets)
        )
        self.upsamplers = None
        if upsample is not None:  # Wan 2.1's upsamplers halve the width (diffusers l.248-249, 845)
            up = Upsample(out_channels, out_channels // 2, time=upsample == "3d")
            self.upsamplers = nn.ModuleList([up])

    def forward(self, x: Tensor, cache: CausalCache | None = None) -> Tensor:
        for resnet in self.resnets:
            x = resnet(x, cache)
        return x if self.upsamplers is None else self.upsamplers[0](x, cache)


# ------------------------------------------------------------------------------------- encoder / decoder
class Encoder(nn.Module):
    """video [B, C, T, H, W] → moments [B, 2·C_z, 1 + (T − 1)/r, H/8, W/8] (before ``quant_conv``)."""

    def __init__(self, cfg: WanVAEConfig):
        super().__init__()
        dims = [cfg.base_dim * m for m in (1, *cfg.dim_mult)]
        self.conv_in = WanCausalConv3d(cfg.in_channels, dims[0], 3, padding=1)
        blocks: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResidualBlock(c_in, c_out))
                c_in = c_out
            if i < len(cfg.dim_mult) - 1:
                blocks.append(Downsample(c_out, time=cfg.temperal_downsample[i]))
        self.down_blocks = nn.ModuleList(blocks)  # one flat list, as diffusers: down_blocks.<j>.…
        self.mid_block = MidBlock(dims[-1])
        self.norm_out = RMSNorm(dims[-1])
        self.conv_out = WanCausalConv3d(dims[-1], 2 * cfg.z_dim, 3, padding=1)

    def forward(self, x: Tensor, cache: CausalCache | None = None) -> Tensor:
        num_frames = x.shape[2]
        x = self.conv_in(x, cache)  # [B, C0, T, H, W]
        for block in self.down_blocks:
            x = block(x, cache)  # [B, C_L, T', H/8, W/8] at the end
        x = self.mid_block(x, cache)
        x = self.conv_out(F.silu(self.norm_out(x)), cache)  # [B, 2·C_z, T', h, w]
        if cache is not None:
            cache.frames += num_frames  # the resamplers' "first chunk" is frames == 0
        return x


class Decoder(nn.Module):
    """latents [B, C_z, T', h, w] (after ``post_quant_conv``) → video [B, C, 1 + r·(T' − 1), 8h, 8w]."""

    def __init__(self, cfg: WanVAEConfig):
        super().__init__()
        base = cfg.decoder_base_dim or cfg.base_dim
        dims = [base * m for m in (cfg.dim_mult[-1], *reversed(cfg.dim_mult))]
        time_up = cfg.temperal_downsample[::-1]
        self.conv_in = WanCausalConv3d(cfg.z_dim, dims[0], 3, padding=1)
        self.mid_block = MidBlock(dims[0])
        blocks = []
        for i, (c_in, c_out) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:  # the previous level's upsampler halved its width
                c_in //= 2
            last = i == len(cfg.dim_mult) - 1
            upsample = None if last else ("3d" if time_up[i] else "2d")
            blocks.append(UpBlock(c_in, c_out, cfg.num_res_blocks + 1, upsample))
        self.up_blocks = nn.ModuleList(blocks)
        self.norm_out = RMSNorm(dims[-1])
        self.conv_out = WanCausalConv3d(dims[-1], cfg.out_channels, 3, padding=1)

    def forward(self, z: Tensor, cache: CausalCache | None = None) -> Tensor:
        num_latents = z.shape[2]
        x = self.mid_block(self.conv_in(z, cache), cache)  # [B, C_L, T', h, w]
        for block in self.up_blocks:
            x = block(x, cache)  # [B, C0, 1 + r·(T' − 1), 8h, 8w] at the end (first chunk)
        x = self.conv_out(F.silu(self.norm_out(x)), cache)  # [B, 3, T, H, W]
        if cache is not None:
            cache.frames += num_latents
        return x


# ------------------------------------------------------------------------------------------------- model
class WanVAE(nn.Module):
    """Wan 2.1's VAE behind minivdit's VAE interface (``minivdit.models.vae``): frames first, normalised
    latents, chunked/streaming coding through the causal cache."""

    def __init__(self, cfg: WanVAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.quant_conv = WanCausalConv3d(2 * cfg.z_dim, 2 * cfg.z_dim, 1)
        self.post_quant_conv = WanCausalConv3d(cfg.z_dim, cfg.z_dim, 1)
        self.decoder = Decoder(cfg)
        # The model's two streams (plain attributes, not state_dict entries); see reset().
        self.encode_cache = CausalCache()
        self.decode_cache = CausalCache()

    @classmethod
    def from_config(cls, cfg: WanVAEConfig) -> WanVAE:
        """Randomly initialised (PyTorch's default init, unit γ: diffusers has no init of its own)."""
        model = cls(cfg)
        model.init_weights()
        return model

    @torch.no_grad()
    def init_weights(self) -> None:
        """PyTorch default init and unit norms; works after ``to_empty()``."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                m.reset_parameters()
            elif isinstance(m, RMSNorm):
                nn.init.ones_(m.gamma)

    # ---------------------------------------------------------------- interface
    @property
    def config(self) -> WanVAEConfig:
        return self.cfg

    @property
    def sample_posterior(self) -> bool:
        return self.cfg.sample_posterior

    @property
    def latent_channels(self) -> int:
        return self.cfg.z_dim

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
            lo = r * (max(num_frames - 1, 0) // r) + 1
            nearest = "1" if num_frames < 1 else f"{lo} or {lo + r}"
            raise ValueError(
                f"got {num_frames} frames; the Wan VAE needs {r}k + 1 frames (nearest valid: {nearest})"
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
        if video.ndim != 5 or video.shape[2] != self.cfg.in_channels:
            raise ValueError(
                f"video must be [B, F, {self.cfg.in_channels}, H, W], got shape {tuple(video.shape)}"
            )
        H, W, s = video.shape[3], video.shape[4], self.spatial_compression
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

    # ---------------------------------------------------------------- latent constants
    def _constants(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """``latents_mean`` and ``1 / latents_std`` as ``[C, 1, 1]`` in ``like``'s dtype and device, computed
        as the pipelines do (the reciprocal after the cast; pipeline_wan.py l.664-671)."""
        mean = torch.tensor(self.cfg.latents_mean).view(-1, 1, 1).to(like.device, like.dtype)
        inv_std = 1.0 / torch.tensor(self.cfg.latents_std).view(-1, 1, 1).to(like.device, like.dtype)
        return mean, inv_std

    def normalize(self, z: Tensor) -> Tensor:
        """Raw latents ``[B, F', C, h, w]`` → what the DiT sees, ``(z − mean) · (1/std)`` per channel."""
        mean, inv_std = self._constants(z)
        return (z - mean) * inv_std

    def denormalize(self, latents: Tensor) -> Tensor:
        """Inverse of ``normalize``: ``latents / (1/std) + mean`` (the pipelines' expression)."""
        mean, inv_std = self._constants(latents)
        return latents / inv_std + mean

    # ---------------------------------------------------------------- streaming
    def encode_chunk(self, video: Tensor) -> tuple[Tensor, Tensor]:
        """Next chunk of the encode stream → raw posterior ``(mean, logvar)``, each ``[B, F', C, h, w]``,
        logvar clamped to [−30, 20] (diffusers' ``DiagonalGaussianDistribution``). The first chunk after
        ``reset()`` holds ``1 + r·m`` frames (m ≥ 0), later ones ``r·m`` (m ≥ 1)."""
        self._check_video(video)
        n, r, done = video.shape[1], self.temporal_compression, self.encode_cache.frames
        if (done == 0 and (n - 1) % r) or (done and (n < 1 or n % r)):
            need = f"1 + {r}m frames (first chunk)" if done == 0 else f"a positive multiple of {r} frames"
            raise ValueError(f"encode chunk of {n} frames after {done}; need {need}")
        h = self.encoder(rearrange(video, "b f c h w -> b c f h w"), self.encode_cache)
        moments = self.quant_conv(h)  # [B, 2·C, F', h, w]; 1×1×1, so per chunk = on the whole
        mean, logvar = rearrange(moments, "b (two c) f h w -> two b f c h w", two=2)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode_chunk(self, latents: Tensor) -> Tensor:
        """Next chunk of the decode stream (normalised latents ``[B, F', C, h, w]``, any F' ≥ 1) → its frames
        ``[B, F, 3, H, W]``: ``1 + r·(F' − 1)`` on the first chunk after ``reset()``, ``r·F'`` after."""
        self._check_latents(latents)
        z = rearrange(self.denormalize(latents), "b f c h w -> b c f h w")
        x = self.decoder(self.post_quant_conv(z), self.decode_cache)  # [B, 3, F, H, W]
        return rearrange(x, "b c f h w -> b f c h w")

    # ---------------------------------------------------------------- whole clips
    def encode_moments(
        self, video: Tensor, chunk_frames: int | Sequence[int] | None = 4
    ) -> tuple[Tensor, Tensor]:
        """Raw posterior ``(mean, logvar)`` of a clip, each ``[B, F', C, h, w]``, encoded in chunks.

        ``chunk_frames``: an int c (a multiple of r; default 4, Wan's) = chunks ``[1, c, c, …]``; None = the
        whole clip at once; a sequence = those chunk lengths (``1 + r·m`` first, then multiples of r). Every
        chunking gives the same result (up to float rounding); chunks bound the activation memory.
        """
        self._check_video(video)
        T = video.shape[1]
        self.latent_frames(T)
        chunks = _chunk_lengths(T, chunk_frames, first=1, step=self.temporal_compression)
        self.reset()
        try:
            starts = [sum(chunks[:i]) for i in range(len(chunks))]
            parts = [self.encode_chunk(video[:, s : s + n]) for s, n in zip(starts, chunks)]
        finally:
            self.reset()
        return torch.cat([m for m, _ in parts], dim=1), torch.cat([lv for _, lv in parts], dim=1)

    def encode(
        self,
        video: Tensor,
        chunk_frames: int | Sequence[int] | None = 4,
        *,
        generator: torch.Generator | None = None,
        sample: bool | None = None,
    ) -> Tensor:
        """video ``[B, F, 3, H, W]`` in [−1, 1] → normalised latents ``[B, 1 + (F − 1)/4, C, H/8, W/8]``.

        ``sample`` defaults to ``cfg.sample_posterior``. A sample draws its noise once, after the moments are
        assembled, in diffusers' ``[B, C, F', h, w]`` layout (so one seed gives diffusers' draw, and the same
        latents for every chunking); otherwise the posterior mean.
        """
        mean, logvar = self.encode_moments(video, chunk_frames)
        z = mean
        if self.cfg.sample_posterior if sample is None else sample:
            mean, logvar = (rearrange(t, "b f c h w -> b c f h w") for t in (mean, logvar))
            device = generator.device if generator is not None else mean.device
            eps = torch.randn(mean.shape, generator=generator, device=device, dtype=mean.dtype)
            z = rearrange(mean + torch.exp(0.5 * logvar) * eps.to(mean.device), "b c f h w -> b f c h w")
        return self.normalize(z)

    def decode(self, latents: Tensor, chunk_latents: int | Sequence[int] | None = 1) -> Tensor:
        """Normalised latents ``[B, F', C, h, w]`` → video ``[B, 1 + 4·(F' − 1), 3, 8h, 8w]`` (not clamped).

        ``chunk_latents``: an int c (default 1, Wan's) = chunks of c latents; None = all at once; a sequence =
        those lengths. Every chunking gives the same video (up to float rounding).
        """
        self._check_latents(latents)
        chunks = _chunk_lengths(latents.shape[1], chunk_latents, first=0, step=1)
        self.reset()
        try:
            starts = [sum(chunks[:i]) for i in range(len(chunks))]
            parts = [self.decode_chunk(latents[:, s : s + c]) for s, c in zip(starts, chunks)]
        finally:
            self.reset()
        return torch.cat(parts, dim=1)

    # ---------------------------------------------------------------- checkpoints (diffusers format)
    @classmethod
    def from_pretrained(cls, path: str | Path, **overrides) -> WanVAE:
        """Load a diffusers ``AutoencoderKLWan`` folder, or a Wan pipeline folder's ``vae/``
        (:func:`resolve_folder`), with strict keys and shapes into fp32 CPU parameters; ``overrides`` set
        config fields config.json does not carry (``sample_posterior``)."""
        folder = resolve_folder(path)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (folder / name).is_file():
                raise FileNotFoundError(
                    f"{folder}: no {name} (expected a diffusers AutoencoderKLWan folder or a Wan pipeline "
                    "folder with vae/)"
                )
        raw = json.loads((folder / CONFIG_NAME).read_text())
        if raw.get("_class_name", CLASS_NAME) != CLASS_NAME:
            raise ValueError(f"{folder / CONFIG_NAME} is a {raw['_class_name']!r}, not an {CLASS_NAME!r}")
        cfg = WanVAEConfig.from_diffusers_config(raw, **overrides)
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
            raise ValueError(f"{folder / WEIGHTS_NAME} does not match WanVAE({cfg}): " + "; ".join(problems))
        model.load_state_dict(state)
        return model.eval()

    def save_pretrained(self, path: str | Path) -> None:
        """Write ``config.json`` + ``diffusion_pytorch_model.safetensors`` in diffusers' format."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        with durable.atomic_path(folder / WEIGHTS_NAME) as tmp:
            save_file(state, str(tmp), metadata={"format": "pt"})
        durable.write_text(folder / CONFIG_NAME, json.dumps(self.cfg.to_diffusers_config(), indent=2) + "\n")


def _listing(items: list[str], limit: int = 20) -> str:
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown}, … ({len(items) - limit} more)"
