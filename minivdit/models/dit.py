"""V-DiT: the video diffusion transformer of Latte ("variant 1") and a full-3D variant, in one file.

Reference: Latte (Ma et al., 2024; Vchitect/Latte ``models/latte.py`` @ b27c24a), itself DiT (Peebles & Xie,
2023) made video-aware; see ``anchors-latte-repa.md`` §1.2-1.3.

``block_type="spatiotemporal"`` (Latte variant 1):
  per-frame 2-D patch embed → + frozen 2-D sin-cos spatial table → blocks alternating spatial (attention
  within a frame, ``(B F) N D``) and temporal (attention across frames at one patch position, ``(B N) F D``),
  with a frozen 1-D sin-cos temporal table added once, before the first temporal block → adaLN final layer →
  per-frame unpatchify. Timestep (+ class) conditioning is one vector per sample (Latte's "S-AdaLN").
``block_type="full3d"``:
  the same blocks, each attending jointly over all F·N tokens of a clip, positions given by 3-D RoPE.
  ``patch_t > 1`` (full-3-D only) makes each token span ``patch_t`` frames as well as p×p pixels (CogVideoX
  1.5's ``patch_size_t``): F/patch_t token frames, ``patch_t``× fewer tokens, and the tap's ``hidden`` holds
  F/patch_t frames (a tubelet-2 teacher then matches ``per_frame``).

Indexing rule for ``tap`` (DESIGN.md §2): ``tap=k`` returns the output of ``blocks[k-1]`` ("block k",
1-indexed as REPA's ``encoder_depth``); spatial and temporal blocks count separately, as in Latte's flat
``blocks`` list: in the spatiotemporal layout odd k is after a spatial block, even k after a temporal one.

Notable deviations from Latte:
- the sin-cos tables are non-persistent buffers rebuilt by ``init_weights()`` (Latte: frozen Parameters, which
  its EMA and checkpoints carry); the Latte key map drops them;
- non-square latents are supported (``input_size=(h, w)``); Latte's unpatchify assumes square frames;
- adaLN modulation is computed once per sample and broadcast (``blocks.py``); Latte repeats it per sequence;
- optional RepVideo gate, 3-D RoPE, QK-norm, temporal patches and activation checkpointing; all off for Latte
  parity;
- full-3-D only: Ulysses context parallelism (``models/context_parallel.py``, ``--parallel.cp``) splits the
  F·N tokens of a clip over ranks after the patch embedding (the RoPE table with them) and gathers them
  back before the final layer's unpatchify and at the tap.

Axis legend: B batch, F frames, C channels, H/W latent height/width, N tokens per frame, D width.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn
from einops import rearrange
from torch import Tensor

from minivdit.config import check_types
from minivdit.models.attention import Backend
from minivdit.models.blocks import (
    DiTBlock,
    FinalLayer,
    LabelEmbedder,
    TimestepEmbedder,
    rope_3d,
    sincos_1d,
    sincos_2d,
)
from minivdit.models.checkpointing import Checkpointing, run_block
from minivdit.models.cond import Cond
from minivdit.models.context_parallel import ContextParallel
from minivdit.models.repvideo import RepVideoGate

CLASS_NAME = "VDiT"  # ``_class_name`` of a V-DiT pretrained folder's config.json
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"  # diffusers' file name: one loader for both families
RUNTIME_FIELDS = ("attn_backend",)  # a run's choice, not part of the weights' architecture


@dataclass(frozen=True, kw_only=True)
class DiTConfig:
    """Architecture of a V-DiT. Presets in ``PRESETS``; recipes ``dataclasses.replace`` them."""

    block_type: Literal["spatiotemporal", "full3d"] = "spatiotemporal"
    """Latte variant 1 (alternating spatial/temporal blocks) or joint attention over all F·N tokens (RoPE)."""
    depth: int = 28
    """Number of blocks; spatial and temporal blocks count separately (Latte-XL: 28 = 14 + 14)."""
    hidden_size: int = 1152
    """Token width D."""
    num_heads: int = 16
    """Attention heads."""
    mlp_ratio: float = 4.0
    """MLP hidden width / D."""
    patch_size: int = 2
    """Per-frame square patch (p=2 on 32x32 latents gives N = 256 tokens per frame)."""
    patch_t: int = 1
    """Temporal patch (full3d only): each token spans ``patch_t`` consecutive frames (CogVideoX 1.5: 2), so
    a clip has F/patch_t token frames; 1 = per-frame patches (Latte)."""
    in_channels: int = 4
    """Input channels C (4 for SD-VAE latents, 3 in pixel space)."""
    cond_channels: int = 0
    """Channels of an image condition concatenated to ``x_t`` before the patch embedding
    (``Cond.image_latents`` [B, F, cond_channels, H, W]: the condition frame's latent at frame 0, zeros after;
    channel-concat image-to-video as CogVideoX-I2V, ``--i2v.mode first``); 0 = none (Latte)."""
    input_size: tuple[int, int] = (32, 32)
    """Latent (or pixel) frame size (H, W) the spatial position table is built for."""
    num_frames: int = 16
    """Frames F the temporal position table is built for (spatiotemporal); RoPE needs no fixed F."""
    num_classes: int = 0
    """Class-conditional when > 0 (UCF-101: 101); the CFG null label is index ``num_classes``."""
    class_dropout_prob: float = 0.1
    """Probability of replacing a label by the null class in training (CFG; Latte/DiT: 0.1)."""
    learn_sigma: bool = True
    """Output 2·C channels (ε and the learned variance v), as Latte; must match the objective."""
    qk_norm: bool = False
    """RMS-normalise queries and keys per head (off in Latte)."""
    attn_backend: Backend = "sdpa"
    """Attention kernel: ``sdpa`` | ``flash`` | ``xformers``; an unavailable one falls back to SDPA."""
    rope_theta: float = 10000.0
    """RoPE base (full3d only)."""
    repvideo_gate: Literal["off", "raw", "sigmoid"] = "off"
    """RepVideo feature-cache gate: ``raw`` = the released scalar per layer (init 0.5); ``sigmoid`` keeps it
    in (0, 1)."""
    repvideo_window: Literal["cumulative", "fixed"] = "cumulative"
    """RepVideo cache: cumulative mean reset every ``repvideo_group`` layers (released) or sliding window."""
    repvideo_group: int = 6
    """RepVideo group / window size in layers."""

    def __post_init__(self):
        check_types(self)
        sizes = ("depth", "hidden_size", "num_heads", "patch_size", "patch_t", "in_channels", "num_frames")
        if small := {n: getattr(self, n) for n in sizes if getattr(self, n) < 1}:
            raise ValueError(f"DiTConfig sizes must be >= 1, got {small}")
        if self.cond_channels < 0:
            raise ValueError(f"DiTConfig.cond_channels must be >= 0, got {self.cond_channels}")
        if min(self.input_size) < 1 or self.num_classes < 0 or self.mlp_ratio <= 0:
            raise ValueError(
                f"DiTConfig: input_size {self.input_size} must be >= 1, num_classes {self.num_classes} >= 0, "
                f"mlp_ratio {self.mlp_ratio} > 0"
            )
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} not divisible by num_heads {self.num_heads}")
        if self.block_type == "spatiotemporal" and self.depth % 2:
            raise ValueError(
                f"spatiotemporal depth must be even (spatial + temporal pairs), got {self.depth}"
            )
        if self.block_type == "spatiotemporal" and self.patch_t != 1:
            raise ValueError(
                f"patch_t={self.patch_t} needs block_type='full3d': Latte's temporal blocks attend across "
                f"single frames"
            )
        if self.block_type == "spatiotemporal" and self.hidden_size % 4:
            raise ValueError(
                f"hidden_size must be divisible by 4 for the 2-D sin-cos table, got {self.hidden_size}"
            )
        h, w = self.input_size
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"input_size {self.input_size} not divisible by patch_size {self.patch_size}")

    @classmethod
    def from_dict(cls, d: dict, *, source: str = "config", **overrides) -> DiTConfig:
        """A pretrained folder's ``config.json`` dict (:func:`save_pretrained`): ``_``-prefixed bookkeeping
        keys are ignored, unknown keys raise naming ``source``; ``overrides`` set any field (the recipe's
        runtime choices, e.g. ``attn_backend="flash"``)."""
        if (name := d.get("_class_name", CLASS_NAME)) != CLASS_NAME:
            raise ValueError(f"{source}: _class_name is {name!r}, not a minivdit V-DiT ({CLASS_NAME!r})")
        kw = {k: v for k, v in d.items() if not k.startswith("_")}
        if unknown := sorted(set(kw) - {f.name for f in dataclasses.fields(cls)}):
            raise ValueError(f"{source}: unsupported {CLASS_NAME} config keys {unknown}")
        if "input_size" in kw:
            kw["input_size"] = tuple(kw["input_size"])
        return cls(**(kw | overrides))

    @classmethod
    def from_json(cls, path: str | Path, **overrides) -> DiTConfig:
        return cls.from_dict(json.loads(Path(path).read_text()), source=str(path), **overrides)

    def to_dict(self) -> dict:
        """The pretrained folder's ``config.json`` dict: the architecture, without the runtime choices
        (``RUNTIME_FIELDS``: they belong to the run that loads the weights, not to the weights)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in RUNTIME_FIELDS}
        return {"_class_name": CLASS_NAME, **d, "input_size": list(self.input_size)}

    @property
    def out_channels(self) -> int:
        return 2 * self.in_channels if self.learn_sigma else self.in_channels

    @property
    def is_i2v(self) -> bool:
        """Channel-concat image-to-video (``cond_channels > 0``)."""
        return self.cond_channels > 0

    @property
    def grid(self) -> tuple[int, int]:
        """Token grid (h, w) of one frame."""
        return self.input_size[0] // self.patch_size, self.input_size[1] // self.patch_size

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclass(frozen=True)
class DiTOutput:
    pred: Tensor  # [B, F, C_out, H, W]
    hidden: Tensor | None = field(default=None)  # [B, F/patch_t, N, D]: block `tap`'s output, or None


class PatchEmbed(nn.Module):
    """2-D patchify as a strided conv (timm ``PatchEmbed``; key ``x_embedder.proj``). A temporal patch of
    ``patch_t`` frames stacks them along the channels first, which is a Conv3d of kernel (patch_t, p, p)
    written as a Conv2d, so ``patch_t=1`` keeps Latte's weights and keys."""

    def __init__(self, patch_size: int, in_channels: int, dim: int, patch_t: int = 1):
        super().__init__()
        self.patch_t = patch_t
        self.proj = nn.Conv2d(patch_t * in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        x = rearrange(x, "b (f t) c h w -> (b f) (t c) h w", t=self.patch_t)  # [B·F/pt, pt·C, H, W]
        return rearrange(self.proj(x), "s d h w -> s (h w) d")  # [B·F/pt, N, D]


class VDiT(nn.Module):
    """Video DiT. ``forward(x_t [B,F,C,H,W], t_model [B], cond: Cond, *, tap) -> DiTOutput``; it consumes
    ``cond.label`` (class-conditional iff ``num_classes > 0``; the null class is ``num_classes``) and, with
    ``cond_channels > 0``, ``cond.image_latents`` concatenated to ``x_t`` along the channels."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        D = cfg.hidden_size
        self.x_embedder = PatchEmbed(cfg.patch_size, cfg.in_channels + cfg.cond_channels, D, cfg.patch_t)
        self.t_embedder = TimestepEmbedder(D)
        self.y_embedder = (
            LabelEmbedder(cfg.num_classes, D, cfg.class_dropout_prob) if cfg.num_classes else None
        )
        self.blocks = nn.ModuleList(
            DiTBlock(D, cfg.num_heads, cfg.mlp_ratio, qk_norm=cfg.qk_norm, backend=cfg.attn_backend)
            for _ in range(cfg.depth)
        )
        self.final_layer = FinalLayer(D, cfg.patch_size, cfg.patch_t * cfg.out_channels)
        self.repvideo = (
            RepVideoGate(
                cfg.depth, group=cfg.repvideo_group, param=cfg.repvideo_gate, window=cfg.repvideo_window
            )
            if cfg.repvideo_gate != "off"
            else None
        )
        N = cfg.grid[0] * cfg.grid[1]
        # Frozen position tables are derived data: non-persistent, rebuilt in init_weights() (meta-safe).
        self.register_buffer("pos_embed", torch.empty(1, N, D), persistent=False)
        self.register_buffer("temp_embed", torch.empty(1, cfg.num_frames, D), persistent=False)
        self.grad_checkpointing: bool | Checkpointing = False  # set by minivdit.dist.parallelize
        self.cp: ContextParallel | None = None  # likewise (--parallel.cp; full-3-D only)

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def init_weights(self) -> None:
        """Latte/DiT init; works after ``to_empty()`` on a meta-built model. A fresh model outputs 0."""

        def _basic(m: nn.Module) -> None:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.LayerNorm, nn.RMSNorm)):
                m.reset_parameters()  # qk-norm gains -> 1 (garbage after to_empty otherwise)

        self.apply(_basic)
        self.reset_buffers()
        w = self.x_embedder.proj.weight  # xavier as if it were a Linear (DiT)
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:  # adaLN-Zero: every residual branch starts closed
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for m in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)
        if self.repvideo is not None:
            self.repvideo.init_weights()

    @torch.no_grad()
    def reset_buffers(self) -> None:
        """Rebuild the frozen sin-cos tables (non-persistent buffers: not in checkpoints, garbage after
        ``to_empty``)."""
        cfg = self.cfg
        self.pos_embed.copy_(sincos_2d(cfg.hidden_size, *cfg.grid)[None])
        self.temp_embed.copy_(sincos_1d(cfg.hidden_size, torch.arange(cfg.num_frames))[None])

    # --------------------------------------------------------------- forward
    def null_cond(self, cond: Cond) -> Cond:
        """The unconditional counterpart of ``cond`` for classifier-free guidance: the null class."""
        return cond.null(label=self.cfg.num_classes)

    def _check(self, x_t: Tensor, t_model: Tensor, cond: Cond, tap: int | None) -> Tensor | None:
        cfg = self.cfg
        if not isinstance(cond, Cond):
            raise ValueError(f"cond must be a minivdit.models.cond.Cond (Cond(label=y)), got {type(cond)}")
        image = ("image_latents",) if cfg.cond_channels else ()
        cond.check_uses(
            f"VDiT (num_classes={cfg.num_classes}, cond_channels={cfg.cond_channels})",
            allowed=("label", *image),
            required=(("label",) if cfg.num_classes else ()) + image,
        )
        y = cond.label
        if x_t.ndim != 5:
            raise ValueError(f"x_t must be [B, F, C, H, W], got shape {tuple(x_t.shape)}")
        B, F, C, H, W = x_t.shape
        if cfg.in_channels != C:
            raise ValueError(f"x_t has {C} channels, model expects in_channels={cfg.in_channels}")
        if tuple(cfg.input_size) != (H, W):
            raise ValueError(f"x_t frames are {H}x{W}, model expects input_size={tuple(cfg.input_size)}")
        if F % cfg.patch_t:
            raise ValueError(f"x_t has {F} frames, not a multiple of patch_t={cfg.patch_t}")
        if cfg.block_type == "spatiotemporal" and cfg.num_frames != F:
            raise ValueError(f"x_t has {F} frames but the temporal table holds num_frames={cfg.num_frames}")
        if t_model.shape != (B,):
            raise ValueError(f"t_model must be [B]=[{B}], got shape {tuple(t_model.shape)}")
        if y is not None and self.y_embedder is None:
            raise ValueError(f"Cond.label given to an unconditional VDiT (num_classes={cfg.num_classes})")
        if y is not None and y.shape != (B,):
            raise ValueError(f"Cond.label must be [B]=[{B}] integer labels, got shape {tuple(y.shape)}")
        if tap is not None and not 1 <= tap <= cfg.depth:
            raise ValueError(f"tap={tap} out of range: blocks are 1-indexed, 1..{cfg.depth}")
        image = cond.image_latents
        if image is not None and image.shape != (B, F, cfg.cond_channels, H, W):
            raise ValueError(
                f"Cond.image_latents must be [B, F, cond_channels, H, W]={[B, F, cfg.cond_channels, H, W]}, "
                f"got shape {tuple(image.shape)}"
            )
        return y

    def _run_block(self, i: int, x: Tensor, c: Tensor, rope: Tensor | None) -> Tensor:
        """Block i on canonical tokens x [B, F, N, D]; the layout rearranges live here and only here."""
        B, F, N, _ = x.shape
        if self.cfg.block_type == "full3d":
            seq = rearrange(x, "b f n d -> b (f n) d")
            return rearrange(self.blocks[i](seq, c, rope), "b (f n) d -> b f n d", f=F)
        if i % 2 == 0:  # spatial: attention within each frame
            seq = rearrange(x, "b f n d -> (b f) n d")
            return rearrange(self.blocks[i](seq, c), "(b f) n d -> b f n d", b=B)
        seq = rearrange(x, "b f n d -> (b n) f d")  # temporal: attention across frames at each patch position
        return rearrange(self.blocks[i](seq, c), "(b n) f d -> b f n d", b=B)

    def forward(
        self, x_t: Tensor, t_model: Tensor, cond: Cond | None = None, *, tap: int | None = None
    ) -> DiTOutput:
        cond = Cond() if cond is None else cond
        y = self._check(x_t, t_model, cond, tap)
        cfg = self.cfg
        B, F, _, H, W = x_t.shape
        gh, gw = cfg.grid
        if cfg.cond_channels:  # channel-concat image condition (CogVideoX-I2V's layout: noisy video first)
            x_t = torch.cat([x_t, cond.image_latents.to(x_t.dtype)], dim=2)  # [B, F, C + Cc, H, W]
        Ft = F // cfg.patch_t  # token frames
        x = self.x_embedder(x_t)  # [B·Ft, N, D]
        x = rearrange(x, "(b f) n d -> b f n d", b=B)  # [B, Ft, N, D]
        rope = None
        if cfg.block_type == "spatiotemporal":
            x = x + self.pos_embed[:, None]  # [B, F, N, D]
        else:
            rope = rope_3d(cfg.head_dim, Ft, gh, gw, cfg.rope_theta).to(x.device)  # [Ft·N, Dh/2]
        c = self.t_embedder(t_model)  # [B, D]
        if self.y_embedder is not None:
            c = c + self.y_embedder(y)  # [B, D]
        cp = self.cp if self.training else None  # models/context_parallel.py
        if cp is not None:
            if cfg.block_type != "full3d":
                raise ValueError(
                    f"context parallelism splits one attention sequence: it needs block_type='full3d', got "
                    f"{cfg.block_type!r} (a spatial or temporal block attends within a frame or a position)"
                )
            x = cp.shard(
                rearrange(x, "b f n d -> b 1 (f n) d"), dim=2
            )  # [B, 1, F·N/cp, D]: this rank's tokens
            rope = cp.shard(rope, dim=0)  # [F·N/cp, Dh/2]: their angles

        hidden = None
        cache = [x]  # RepVideo: the cache starts from the embedding output, as released
        ac = self.grad_checkpointing if self.training else False  # models/checkpointing.py
        for i in range(len(self.blocks)):
            if self.repvideo is not None:
                x = self.repvideo.mix(i, x, cache)
            if i == 1 and cfg.block_type == "spatiotemporal":
                x = x + self.temp_embed[:, :, None]  # once, before the first temporal block (Latte)
            x = run_block(ac, i, self._run_block, i, x, c, rope)  # [B, Ft, N, D]
            if self.repvideo is not None:
                cache = self.repvideo.update(i, x, cache)
            if tap == i + 1:  # under cp: every rank's tokens, back in one [B, F, N, D]
                hidden = x if cp is None else rearrange(cp.gather(x, 2), "b 1 (f n) d -> b f n d", f=Ft)

        x = self.final_layer(rearrange(x, "b f n d -> (b f) n d"), c)  # [B·Ft, N, p·p·pt·C_out]
        if cp is not None:  # [B, F·N/cp, p·p·C_out] → every rank's tokens
            x = rearrange(cp.gather(x, dim=1), "b (f n) e -> (b f) n e", f=Ft)
        p, pt = cfg.patch_size, cfg.patch_t
        pred = rearrange(x, "(b f) (h w) (p q t c) -> b (f t) c (h p) (w q)", b=B, h=gh, w=gw, p=p, q=p, t=pt)
        return DiTOutput(pred=pred, hidden=hidden)  # pred [B, F·pt, C_out, H, W]


def num_params(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _preset(depth: int, width: int, heads: int) -> DiTConfig:
    return DiTConfig(depth=depth, hidden_size=width, num_heads=heads, patch_size=2)


# Latte's sizes (models/latte.py ``Latte_models``): 16 frames of 32x32x4 SD-VAE latents (256² video).
PRESETS: dict[str, DiTConfig] = {
    "V-DiT-S/2": _preset(12, 384, 6),
    "V-DiT-B/2": _preset(12, 768, 12),
    "V-DiT-L/2": _preset(24, 1024, 16),
    "V-DiT-XL/2": _preset(28, 1152, 16),
}


def preset(name: str) -> DiTConfig:
    """``PRESETS[name]`` with a ValueError listing the valid names."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid: {sorted(PRESETS)}")
    return PRESETS[name]


def flops_per_sample(cfg: DiTConfig, num_frames: int | None = None) -> float:
    """Forward FLOPs (2·MAC) of one clip through the blocks and the embed/final layers (matmuls only)."""
    F = (num_frames or cfg.num_frames) // cfg.patch_t  # token frames
    N = cfg.grid[0] * cfg.grid[1]
    D, L = cfg.hidden_size, F * N
    mlp = int(cfg.mlp_ratio * D)
    linear = L * (4 * D * D + 2 * D * mlp)  # qkv + proj + fc1 + fc2, MACs
    if cfg.block_type == "full3d":
        attn = [2 * L * L * D] * cfg.depth  # QK^T and AV over the whole clip
    else:  # spatial blocks attend over N tokens in F sequences; temporal over F tokens in N sequences
        attn = [2 * F * N * N * D if i % 2 == 0 else 2 * N * F * F * D for i in range(cfg.depth)]
    voxels = cfg.patch_t * cfg.patch_size**2  # pixels (or latents) per token
    embed = L * (cfg.in_channels + cfg.cond_channels) * voxels * D + L * D * voxels * cfg.out_channels
    return 2.0 * (cfg.depth * linear + sum(attn) + embed)


__all__ = ["DiTConfig", "DiTOutput", "VDiT", "PRESETS", "preset", "num_params", "flops_per_sample"]


def save_pretrained(state: dict[str, Tensor], cfg: DiTConfig, folder: str | Path) -> Path:
    """Write a V-DiT pretrained folder: ``config.json`` (:meth:`DiTConfig.to_dict`) and
    ``diffusion_pytorch_model.safetensors``, the layout of a diffusers transformer folder, so that
    ``--pretrained FOLDER`` (``minivdit.dist.load_pretrained``) and ``python -m minivdit.sample --pretrained``
    read it as they read CogVideoX's. The weights are checked against ``cfg`` first (keys and shapes) and
    written durably, config last."""
    from safetensors.torch import save_file

    from minivdit import durable

    with torch.device("meta"):
        want = {k: tuple(v.shape) for k, v in VDiT(cfg).state_dict().items()}
    have = {k: tuple(v.shape) for k, v in state.items()}
    problems = [f"missing {sorted(want.keys() - have.keys())}"] if want.keys() - have.keys() else []
    problems += [f"unexpected {sorted(have.keys() - want.keys())}"] if have.keys() - want.keys() else []
    problems += [f"{k}: {have[k]} vs the config's {s}" for k, s in want.items() if have.get(k, s) != s]
    if problems:
        raise ValueError(
            f"save_pretrained({folder}): the weights do not fit the config: {'; '.join(problems)}"
        )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    with durable.atomic_path(folder / WEIGHTS_NAME) as tmp:
        save_file(tensors, str(tmp))
    durable.write_text(folder / "config.json", json.dumps(cfg.to_dict(), indent=2))
    return folder
