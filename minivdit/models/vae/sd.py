"""The Stable Diffusion v1.x VAE (AutoencoderKL, f = 8), applied to a video one frame at a time.

Reference: diffusers ``AutoencoderKL`` (``models/autoencoders/autoencoder_kl.py`` + ``vae.py``, v0.42.1) with
its ``ResnetBlock2D``, ``UNetMidBlock2D``, ``DownEncoderBlock2D``/``UpDecoderBlock2D`` and the mid-block
``Attention``; itself a port of the LDM autoencoder (Rombach et al., 2022, ``ldm/modules/diffusionmodules/
model.py``). Checkpoints: ``stabilityai/sd-vae-ft-ema`` / ``sd-vae-ft-mse``, as used per frame by Latte
(``vae.encode(x).latent_dist.sample().mul_(0.18215)``) and Align4Gen.

Module and parameter names are diffusers' own, so a diffusers folder (``config.json`` +
``diffusion_pytorch_model.safetensors``) loads with an exact key match, and ``save_pretrained`` writes a
folder that ``diffusers.AutoencoderKL.from_pretrained`` reads back.

Layout: encoder = conv_in → down blocks (resnets, then a stride-2 conv on all but the last) → mid block
(resnet, single-head self-attention over the h·w positions, resnet) → GroupNorm → SiLU → conv_out to
(mean, logvar); quant_conv (1×1). Decoder = post_quant_conv (1×1) → conv_in → mid block → up blocks
(``layers_per_block + 1`` resnets, then nearest 2× + conv on all but the last) → GroupNorm → SiLU → conv_out.

Notable deviations from diffusers:
- ``encode``/``decode`` take and return videos ``[B, F, C, H, W]`` and own the latent constants: ``encode``
  returns ``(z − shift_factor) · scaling_factor`` and ``decode`` undoes it (diffusers leaves both to the
  pipeline);
- frames are flattened into the batch and processed ``frame_chunk`` at a time; the posterior noise is drawn
  once for the whole clip, so results do not depend on ``frame_chunk``;
- no tiling, slicing, gradient checkpointing, dropout (0 in every SD VAE), temb or spatial-norm paths, and no
  bf16 upcast around the nearest upsample (PyTorch ≥ 2.1 supports bf16 there);
- attention is one ``scaled_dot_product_attention`` call with a single head, as diffusers computes it
  (``heads = channels // attention_head_dim`` with ``attention_head_dim = channels``);
- legacy attention key names (``query``/``key``/``value``/``proj_attn``, still in early diffusers-format SD
  VAE folders) are renamed on load, as diffusers does; nothing else is remapped.

Axis legend: B batch, F frames, C channels, H/W pixel height/width, h/w latent height/width, N images in one
call ((B F) flattened), L positions h·w seen by the mid-block attention.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from safetensors.torch import load_file, save_file
from torch import Tensor

from minivdit import durable
from minivdit.config import check_types

EPS = 1e-6  # GroupNorm epsilon of every norm in the SD VAE (diffusers ``resnet_eps``)
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
WEIGHTS_NAME_BIN = "diffusion_pytorch_model.bin"

# diffusers' AutoencoderKL.__init__ defaults: what diffusers builds when a config.json omits a key.
_DIFFUSERS_DEFAULTS = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(64,),
    layers_per_block=1,
    norm_num_groups=32,
    scaling_factor=0.18215,
    shift_factor=None,
    use_quant_conv=True,
    use_post_quant_conv=True,
    mid_block_add_attention=True,
)
# Keys of an AutoencoderKL config.json that change nothing here: the tiling tile size, the pipeline's fp32
# upcast hint, and the bookkeeping keys diffusers adds (all starting with "_").
_IGNORED_KEYS = {"sample_size", "force_upcast"}
_LEGACY_ATTENTION = re.compile(
    r"^(.*\.mid_block\.attentions\.\d+\.)(query|key|value|proj_attn)\.(weight|bias)$"
)
_LEGACY_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


@dataclass(frozen=True, kw_only=True)
class SDVAEConfig:
    """Architecture and latent constants of an SD-style AutoencoderKL (field names as in diffusers'
    config.json), plus how minivdit runs it on videos. Defaults: SD v1.x (``sd-vae-ft-ema``/``-mse``)."""

    in_channels: int = 3
    """Pixel channels of the input video."""
    out_channels: int = 3
    """Pixel channels of the decoded video."""
    latent_channels: int = 4
    """Latent channels C (the encoder outputs 2·C: mean and log-variance)."""
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    """Width of each encoder level (the decoder mirrors it); each level but the last halves H and W."""
    layers_per_block: int = 2
    """Resnets per encoder level; decoder levels have one more."""
    norm_num_groups: int = 32
    """GroupNorm groups of every norm; must divide every width."""
    scaling_factor: float = 0.18215
    """Latent scale: ``encode`` returns ``(z - shift_factor) * scaling_factor`` (SD v1: 0.18215)."""
    shift_factor: float | None = None
    """Latent shift subtracted before scaling; None means 0 (SD v1; Flux's VAE uses 0.1159)."""
    use_quant_conv: bool = True
    """1×1 conv on the encoder's (mean, logvar) output."""
    use_post_quant_conv: bool = True
    """1×1 conv on the latents before the decoder."""
    mid_block_add_attention: bool = True
    """Self-attention between the two mid-block resnets of encoder and decoder."""
    frame_chunk: int = 16
    """Images (frames of the flattened B·F batch) encoded or decoded per call: bounds activation memory."""
    sample_posterior: bool = True
    """``encode`` samples z ~ N(mean, exp(logvar)) (Latte, Align4Gen) rather than returning the mean."""

    def __post_init__(self):
        check_types(self)
        widths = tuple(self.block_out_channels)
        if not widths or min(widths) < 1:
            raise ValueError(f"block_out_channels must be a non-empty tuple of positive ints, got {widths}")
        if self.norm_num_groups < 1 or any(c % self.norm_num_groups for c in widths):
            raise ValueError(
                f"norm_num_groups {self.norm_num_groups} must divide every block_out_channels {widths}"
            )
        sizes = (self.in_channels, self.out_channels, self.latent_channels, self.layers_per_block)
        if min(sizes) < 1:
            raise ValueError(
                f"in/out/latent channels and layers_per_block must be >= 1, got {sizes} "
                "(in_channels, out_channels, latent_channels, layers_per_block)"
            )
        if self.scaling_factor == 0:
            raise ValueError("scaling_factor must be non-zero")
        if self.frame_chunk < 1:
            raise ValueError(f"frame_chunk must be >= 1, got {self.frame_chunk}")

    @property
    def spatial_compression(self) -> int:
        """Pixels per latent along H and W: 2 ** (levels − 1) (8 for SD)."""
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def from_diffusers_config(cls, config: dict, **overrides) -> SDVAEConfig:
        """Read a diffusers ``AutoencoderKL`` config.json dict; ``overrides`` set fields on top (e.g.
        ``frame_chunk``). Keys the file omits take diffusers' defaults, so the result is what diffusers would
        build. Raises ValueError for anything this file cannot represent."""
        config = dict(config)
        problems = []
        name = config.get("_class_name", "AutoencoderKL")
        if name != "AutoencoderKL":
            problems.append(f"_class_name {name!r} (expected 'AutoencoderKL')")
        values = {k: config.pop(k, default) for k, default in _DIFFUSERS_DEFAULTS.items()}
        values["block_out_channels"] = tuple(values["block_out_channels"])
        act_fn = config.pop("act_fn", "silu")
        if act_fn not in ("silu", "swish"):  # diffusers maps both names to nn.SiLU
            problems.append(f"act_fn {act_fn!r} (only 'silu')")
        levels = len(values["block_out_channels"])
        for key, block in (
            ("down_block_types", "DownEncoderBlock2D"),
            ("up_block_types", "UpDecoderBlock2D"),
        ):
            types = list(config.pop(key, [block]))
            if types != [block] * levels:
                problems.append(f"{key} {types} (expected {levels} x {block!r})")
        for key in ("latents_mean", "latents_std"):
            if config.pop(key, None) is not None:
                problems.append(f"{key} (per-channel latent statistics are not supported)")
        unknown = sorted(k for k in config if not k.startswith("_") and k not in _IGNORED_KEYS)
        if unknown:
            problems.append(f"unknown keys {unknown}")
        if problems:
            raise ValueError("cannot represent this AutoencoderKL config: " + "; ".join(problems))
        return cls(**{**values, **overrides})

    def to_diffusers_config(self) -> dict:
        """The diffusers config.json dict of this architecture (minivdit-only fields are left out)."""
        levels = len(self.block_out_channels)
        out = {"_class_name": "AutoencoderKL", "act_fn": "silu"}
        out |= {k: getattr(self, k) for k in _DIFFUSERS_DEFAULTS}
        out["block_out_channels"] = list(self.block_out_channels)
        out["down_block_types"] = ["DownEncoderBlock2D"] * levels
        out["up_block_types"] = ["UpDecoderBlock2D"] * levels
        return out


# ---------------------------------------------------------------------------------------------------- layers


class ResnetBlock2D(nn.Module):
    """Pre-norm residual block: (GroupNorm → SiLU → 3×3 conv) × 2, plus a 1×1 shortcut when the width
    changes."""

    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=EPS)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=EPS)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # [N, C_out, H, W]
        h = self.conv2(F.silu(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the L = h·w positions of a feature map, with a residual (LDM
    ``AttnBlock``; diffusers ``Attention`` with ``group_norm`` and ``residual_connection``)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels, eps=EPS)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])  # "to_out.0" as in diffusers

    def forward(self, x: Tensor) -> Tensor:
        h = rearrange(self.group_norm(x), "n c h w -> n 1 (h w) c")  # one head: [N, 1, L, C]
        h = F.scaled_dot_product_attention(self.to_q(h), self.to_k(h), self.to_v(h))  # [N, 1, L, C]
        h = rearrange(self.to_out[0](h), "n 1 (h w) c -> n c h w", h=x.shape[-2])  # [N, C, h, w]
        return x + h


class Downsample2D(nn.Module):
    """Halve H and W with a stride-2 3×3 conv after padding one pixel on the right and bottom only (LDM's
    asymmetric padding, which the checkpoints were trained with)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # [N, C, H/2, W/2]


class Upsample2D(nn.Module):
    """Double H and W: nearest-neighbour 2× then a 3×3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # [N, C, 2H, 2W]


class DownEncoderBlock2D(nn.Module):
    """One encoder level: ``num_layers`` resnets, then an optional downsampler."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, downsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, groups)
            for i in range(num_layers)
        )
        self.downsamplers = nn.ModuleList([Downsample2D(out_channels)]) if downsample else None

    def forward(self, x: Tensor) -> Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
        return x


class UpDecoderBlock2D(nn.Module):
    """One decoder level: ``num_layers`` resnets, then an optional upsampler."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, upsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, groups)
            for i in range(num_layers)
        )
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels)]) if upsample else None

    def forward(self, x: Tensor) -> Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class UNetMidBlock2D(nn.Module):
    """resnet → (attention) → resnet at the lowest resolution."""

    def __init__(self, channels: int, groups: int, attention: bool):
        super().__init__()
        self.attentions = nn.ModuleList([AttnBlock(channels, groups)] if attention else [])
        self.resnets = nn.ModuleList(ResnetBlock2D(channels, channels, groups) for _ in range(2))

    def forward(self, x: Tensor) -> Tensor:
        x = self.resnets[0](x)
        for attn in self.attentions:
            x = attn(x)
        return self.resnets[1](x)


class Encoder(nn.Module):
    """Pixels [N, 3, H, W] → (mean, logvar) moments [N, 2·C, h, w] (before ``quant_conv``)."""

    def __init__(self, cfg: SDVAEConfig):
        super().__init__()
        widths, groups = cfg.block_out_channels, cfg.norm_num_groups
        self.conv_in = nn.Conv2d(cfg.in_channels, widths[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            DownEncoderBlock2D(
                widths[max(i - 1, 0)], width, cfg.layers_per_block, groups, downsample=i < len(widths) - 1
            )
            for i, width in enumerate(widths)
        )
        self.mid_block = UNetMidBlock2D(widths[-1], groups, cfg.mid_block_add_attention)
        self.conv_norm_out = nn.GroupNorm(groups, widths[-1], eps=EPS)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(widths[-1], 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_in(x)  # [N, widths[0], H, W]
        for block in self.down_blocks:
            x = block(x)  # [N, width, H/2^i, W/2^i]
        x = self.mid_block(x)  # [N, widths[-1], h, w]
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))  # [N, 2C, h, w]


class Decoder(nn.Module):
    """Latents [N, C, h, w] (after ``post_quant_conv``) → pixels [N, 3, H, W]."""

    def __init__(self, cfg: SDVAEConfig):
        super().__init__()
        widths, groups = tuple(reversed(cfg.block_out_channels)), cfg.norm_num_groups
        self.conv_in = nn.Conv2d(cfg.latent_channels, widths[0], 3, padding=1)
        self.mid_block = UNetMidBlock2D(widths[0], groups, cfg.mid_block_add_attention)
        self.up_blocks = nn.ModuleList(
            UpDecoderBlock2D(
                widths[max(i - 1, 0)], width, cfg.layers_per_block + 1, groups, upsample=i < len(widths) - 1
            )
            for i, width in enumerate(widths)
        )
        self.conv_norm_out = nn.GroupNorm(groups, widths[-1], eps=EPS)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(widths[-1], cfg.out_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        x = self.mid_block(self.conv_in(z))  # [N, widths[0], h, w]
        for block in self.up_blocks:
            x = block(x)  # [N, width, h·2^(i+1), w·2^(i+1)] (the last level keeps its size)
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))  # [N, 3, H, W]


# ----------------------------------------------------------------------------------------------------- model


class SDVAE(nn.Module):
    """SD AutoencoderKL on videos, per frame. ``encode`` returns scaled latents, ``decode`` undoes the scale;
    see ``minivdit.models.vae`` for the common interface."""

    temporal_compression = 1

    def __init__(self, cfg: SDVAEConfig):
        super().__init__()
        self.cfg = cfg
        C = cfg.latent_channels
        self.encoder = Encoder(cfg)
        self.quant_conv = nn.Conv2d(2 * C, 2 * C, 1) if cfg.use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(C, C, 1) if cfg.use_post_quant_conv else None
        self.decoder = Decoder(cfg)

    # ----------------------------------------------------------------- interface
    @property
    def latent_channels(self) -> int:
        return self.cfg.latent_channels

    @property
    def spatial_compression(self) -> int:
        return self.cfg.spatial_compression

    def latent_frames(self, num_frames: int) -> int:
        """Per-frame VAE: one latent frame per pixel frame."""
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        return num_frames

    @torch.no_grad()
    def init_weights(self) -> None:
        """PyTorch's default init of every layer (what diffusers uses); works after ``to_empty()``."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear, nn.GroupNorm)):
                m.reset_parameters()

    # ------------------------------------------------------------------- forward
    def _check(self, x: Tensor, name: str, channels: int, multiple: int) -> None:
        if x.ndim != 5:
            raise ValueError(f"{name} must be [B, F, C, H, W], got shape {tuple(x.shape)}")
        if x.shape[2] != channels:
            raise ValueError(f"{name} must have {channels} channels, got shape {tuple(x.shape)}")
        if x.shape[-2] % multiple or x.shape[-1] % multiple:
            raise ValueError(
                f"{name} height and width must be divisible by {multiple}, got shape {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise ValueError(f"{name} must be a float tensor (pixels in [-1, 1]), got dtype {x.dtype}")

    def encode_moments(self, video: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior (mean, logvar) of each frame, unscaled, each ``[B, F, C, h, w]``; logvar clamped to
        [-30, 20] as diffusers' ``DiagonalGaussianDistribution``."""
        self._check(video, "video", self.cfg.in_channels, self.spatial_compression)
        B = video.shape[0]
        x = rearrange(video, "b f c h w -> (b f) c h w")  # [B·F, 3, H, W]
        moments = []
        for chunk in x.split(self.cfg.frame_chunk):
            m = self.encoder(chunk)  # [N, 2C, h, w]
            moments.append(self.quant_conv(m) if self.quant_conv is not None else m)
        mean, logvar = rearrange(torch.cat(moments), "(b f) (two c) h w -> two b f c h w", b=B, two=2)
        return mean, logvar.clamp(-30.0, 20.0)  # 2 × [B, F, C, h, w]

    def encode(self, video: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Video ``[B, F, 3, H, W]`` in [-1, 1] → scaled latents ``[B, F, C, H/s, W/s]`` (s =
        ``spatial_compression``): a posterior sample drawn with ``generator`` (or the mean, per
        ``sample_posterior``), then ``(z - shift_factor) * scaling_factor``."""
        mean, logvar = self.encode_moments(video)
        z = mean
        if self.cfg.sample_posterior:
            # One draw for the whole clip in (b f) order: independent of frame_chunk, and the same numbers as
            # diffusers' latent_dist.sample(generator) on the flattened frames.
            # diffusers' randn_tensor convention: a CPU generator draws on the CPU, then moves.
            device = generator.device if generator is not None else mean.device
            noise = torch.randn(mean.shape, generator=generator, device=device, dtype=mean.dtype)
            noise = noise.to(mean.device)
            z = mean + torch.exp(0.5 * logvar) * noise
        return (z - (self.cfg.shift_factor or 0.0)) * self.cfg.scaling_factor  # [B, F, C, h, w]

    def decode(self, latents: Tensor) -> Tensor:
        """Scaled latents ``[B, F, C, h, w]`` → video ``[B, F, 3, h·s, w·s]``, about [-1, 1], not clamped."""
        self._check(latents, "latents", self.latent_channels, 1)
        B = latents.shape[0]
        z = latents / self.cfg.scaling_factor + (self.cfg.shift_factor or 0.0)
        z = rearrange(z, "b f c h w -> (b f) c h w")  # [B·F, C, h, w]
        frames = []
        for chunk in z.split(self.cfg.frame_chunk):
            if self.post_quant_conv is not None:
                chunk = self.post_quant_conv(chunk)
            frames.append(self.decoder(chunk))  # [N, 3, H, W]
        return rearrange(torch.cat(frames), "(b f) c h w -> b f c h w", b=B)  # [B, F, 3, H, W]

    # ------------------------------------------------------------------- weights
    @classmethod
    def from_config(cls, cfg: SDVAEConfig) -> SDVAE:
        """Randomly initialised (PyTorch default init, as diffusers)."""
        return cls(cfg)

    @classmethod
    def from_pretrained(cls, path: str | Path, **overrides) -> SDVAE:
        """Load a diffusers-format folder (``config.json`` + ``diffusion_pytorch_model.safetensors``, or
        ``.bin``). ``overrides`` set config fields (e.g. ``frame_chunk=4, sample_posterior=False``). The
        weights must match the architecture exactly; otherwise a ValueError lists the missing, unexpected and
        mis-shaped keys."""
        folder = Path(path)
        config_file = folder / CONFIG_NAME
        if not config_file.is_file():
            raise FileNotFoundError(f"{folder}: no {CONFIG_NAME} (expected a diffusers AutoencoderKL folder)")
        cfg = SDVAEConfig.from_diffusers_config(json.loads(config_file.read_text()))
        cfg = dataclasses.replace(cfg, **overrides)
        state = _rename_legacy_keys(_read_weights(folder))
        with torch.device("meta"):  # no random init: every parameter is overwritten below
            model = cls(cfg)
        _check_keys(model, state, folder)
        model.to_empty(device="cpu")
        model.load_state_dict(state, strict=True)
        return model

    def save_pretrained(self, path: str | Path) -> None:
        """Write ``config.json`` (diffusers keys only) + ``diffusion_pytorch_model.safetensors``, a folder
        that both ``SDVAE.from_pretrained`` and ``diffusers.AutoencoderKL.from_pretrained`` load."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        with durable.atomic_path(folder / WEIGHTS_NAME) as tmp:
            save_file(state, str(tmp), metadata={"format": "pt"})
        durable.write_text(folder / CONFIG_NAME, json.dumps(self.cfg.to_diffusers_config(), indent=2) + "\n")


# -------------------------------------------------------------------------------------------- loading helpers


def _read_weights(folder: Path) -> dict[str, Tensor]:
    if (folder / WEIGHTS_NAME).is_file():
        return load_file(folder / WEIGHTS_NAME)
    if (folder / WEIGHTS_NAME_BIN).is_file():
        return torch.load(folder / WEIGHTS_NAME_BIN, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{folder}: neither {WEIGHTS_NAME} nor {WEIGHTS_NAME_BIN}")


def _rename_legacy_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Early diffusers-format SD VAEs name the mid-block attention ``query/key/value/proj_attn`` (Linear
    weights, same shapes); diffusers renames them on load, so do we."""
    out = {}
    for key, value in state.items():
        m = _LEGACY_ATTENTION.match(key)
        out[f"{m[1]}{_LEGACY_NAMES[m[2]]}.{m[3]}" if m else key] = value
    return out


def _check_keys(model: nn.Module, state: dict[str, Tensor], folder: Path, show: int = 10) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    mis_shaped = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {expected[k]}"
        for k in sorted(expected.keys() & state.keys())
        if tuple(state[k].shape) != expected[k]
    ]
    if missing or unexpected or mis_shaped:
        parts = [
            f"{len(items)} {what}: {items[:show]}{' ...' if len(items) > show else ''}"
            for what, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mis_shaped))
            if items
        ]
        raise ValueError(
            f"{folder}: the weights do not match the SDVAE built from its config.json "
            f"(block_out_channels={list(model.cfg.block_out_channels)}, "
            f"layers_per_block={model.cfg.layers_per_block}); " + "; ".join(parts)
        )
