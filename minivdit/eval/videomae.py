"""The cd-FVD detector: VideoMAE-v2 ViT-g/14 (SSv2 fine-tuned), its mean-pooled 1408-d features.

Reference: cd-fvd 0.1.1 (``songweige/content-debiased-fvd`` @ ``a1e037a``), which vendors
OpenGVLab/VideoMAEv2:

- ``cdfvd/third_party/VideoMAEv2/videomaev2_finetune.py``: ``VisionTransformer`` (L406-L562), built by
  ``vit_giant_patch14_224`` (L565-L576) with the arguments of ``VideoMAEv2/utils.py:L66-L73``;
- ``cdfvd/third_party/VideoMAEv2/utils.py:L8-L45``: the preprocessing (uint8 → [0, 1], bilinear 224², no
  mean/std) and L75-L80: unwrap ``ckpt["model"]`` / ``ckpt["module"]``, strict ``load_state_dict``;
- ``cdfvd/fvd.py:L21-L30``: batches of 16, the feature is ``model.forward_features`` (not the SSv2 logits).

Architecture (ViT-g/14: width 1408, 40 blocks, 16 heads of 88, MLP 6144): a Conv3d (2, 14, 14) tubelet
embedding → 8·16·16 = 2048 tokens in (t, h, w) order → + a fixed sin-cos table → pre-norm blocks
``x += attn(norm1(x)); x += mlp(norm2(x))`` → ``fc_norm(x.mean(1))``. The attention's ``qkv`` Linear has no
bias; separate ``q_bias`` and ``v_bias`` are concatenated around a zero k bias. Module and parameter names are
the reference's, so ``vit_g_hybrid_pt_1200e_ssv2_ft.pth`` loads with a strict key match (the SSv2 ``head``
is loaded, and unused by the feature).

Deviations from the reference (none changes a number at 16 frames of 224²):

- attention is one ``scaled_dot_product_attention`` call (same scale, ``head_dim ** -0.5``) instead of
  ``softmax(q·scale @ kᵀ) @ v``; fp32 results agree to ~1e-6 relative;
- the sin-cos table is a non-persistent buffer (the reference keeps a plain CPU attribute), built with
  vectorised NumPy that gives the same float64 values, hence the same float32 table; ``load`` keeps it in
  float32 whatever the weights' dtype, as the reference does;
- ``interpolate_pos_encoding`` hard-codes the 8×16×16 grid of the g/14 224² model; here the grid comes from
  the config (identical for the default). Interpolation in time for other clip lengths is the reference's,
  run on the CPU in float32 like the reference's CPU table;
- no dropout, drop-path, layer-scale, cosine attention, learnable positions or activation checkpointing
  (all inert or off in the released model: ``init_values=0``, ``drop_path_rate`` only acts in training);
- the preprocessing is batched ((B·C) as the batch, T as channels) instead of one video at a time; bilinear
  interpolation treats each (video, channel) plane alike, so the result is the same.

Axis legend: B batch, F frames, C channels, H/W pixels, t/h/w token grid (F / tubelet, H / patch, W / patch),
L tokens t·h·w, D width, Dh head width.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from safetensors.torch import load_file as load_safetensors
from torch import Tensor

from minivdit.config import check_types
from minivdit.eval.detector import check_finite, check_video, require_weights

FILE_NAME = "vit_g_hybrid_pt_1200e_ssv2_ft.pth"
PUBLISHED = (
    "OpenGVLab VideoMAEv2 model zoo (used by cd-fvd: "
    "https://huggingface.co/OpenGVLab/InternVideoMAE_models/blob/main/mae-g/vit_g_hybrid_pt_1200e_ssv2_ft.pth)"
)


@dataclass(frozen=True, kw_only=True)
class VideoMAEConfig:
    """Architecture of a VideoMAE-v2 ``VisionTransformer``. Defaults: ViT-g/14 as cd-fvd builds it
    (``vit_giant_patch14_224`` with ``num_classes=174, all_frames=16, tubelet_size=2``)."""

    img_size: int = 224
    """Input height and width; frames are resized to this square by ``preprocess``."""
    patch_size: int = 14
    """Spatial side of a tubelet."""
    embed_dim: int = 1408
    """Token width D, and the feature dimension."""
    depth: int = 40
    """Transformer blocks."""
    num_heads: int = 16
    """Attention heads (head width D / num_heads, 88 for ViT-g)."""
    mlp_ratio: float = 48 / 11
    """MLP hidden width is ``int(embed_dim * mlp_ratio)`` (6144 for ViT-g)."""
    num_frames: int = 16
    """Frames the sin-cos table is built for (``all_frames``); other clip lengths interpolate it in time."""
    tubelet_size: int = 2
    """Frames per tubelet (temporal patch size and stride)."""
    num_classes: int = 174
    """Classifier outputs (Something-Something v2); 0 means no ``head``. Unused by the feature."""
    norm_eps: float = 1e-6
    """LayerNorm epsilon of every norm."""

    def __post_init__(self):
        check_types(self)
        sizes = dict(
            img_size=self.img_size,
            patch_size=self.patch_size,
            embed_dim=self.embed_dim,
            depth=self.depth,
            num_heads=self.num_heads,
            num_frames=self.num_frames,
            tubelet_size=self.tubelet_size,
        )
        if min(sizes.values()) < 1 or self.num_classes < 0:
            raise ValueError(f"VideoMAEConfig sizes must be positive (num_classes ≥ 0), got {sizes}")
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} must be a multiple of patch_size {self.patch_size}")
        if self.num_frames % self.tubelet_size:
            raise ValueError(
                f"num_frames {self.num_frames} must be a multiple of tubelet_size {self.tubelet_size}"
            )
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} must be divisible by num_heads {self.num_heads}")
        if self.mlp_hidden < 1:
            raise ValueError(f"mlp_ratio {self.mlp_ratio} gives an empty MLP for embed_dim {self.embed_dim}")

    @property
    def grid(self) -> tuple[int, int, int]:
        """Token grid (t, h, w) of a ``num_frames`` clip: (8, 16, 16) for ViT-g."""
        side = self.img_size // self.patch_size
        return self.num_frames // self.tubelet_size, side, side

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)  # the reference's Block: int(dim * mlp_ratio)


def sinusoid_table(n_position: int, dim: int) -> Tensor:
    """``[1, n_position, dim]`` float32: ``angle[p, j] = p / 10000^(2·⌊j/2⌋/dim)``, sin on even j, cos on
    odd j (interleaved). Computed in float64 NumPy with the reference's operations
    (``get_sinusoid_encoding_table``, ``videomaev2_finetune.py:L387-L403``), then rounded to float32, so the
    table is bit-identical to it."""
    # the reference's per-entry divisor, np.power(10000, 2 * (j // 2) / dim), one call per column as it does
    divisor = np.array([np.power(10000, 2 * (j // 2) / dim) for j in range(dim)])  # [dim] float64
    table = np.arange(n_position)[:, None] / divisor[None, :]  # [N, dim] float64
    table[:, 0::2] = np.sin(table[:, 0::2])  # dim 2i
    table[:, 1::2] = np.cos(table[:, 1::2])  # dim 2i+1
    return torch.tensor(table, dtype=torch.float32).unsqueeze(0)


def preprocess(video: Tensor, size: int = 224) -> Tensor:
    """cd-fvd's VideoMAE input: ``uint8 [B, F, 3, H, W]`` → float32 ``[B, 3, F, size, size]`` in [0, 1].

    ``x / 255`` then ``F.interpolate(bilinear, align_corners=False)`` on the frames as channels, no antialias,
    no mean/std (``VideoMAEv2/utils.py:L8-L45``, also the official VideoMAEv2 ``extract_tad_feature.py``)."""
    B = video.shape[0]
    x = rearrange(video, "b f c h w -> (b c) f h w").to(torch.float32) / 255  # [B·3, F, H, W]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return rearrange(x, "(b c) f h w -> b c f h w", b=B)  # [B, 3, F, size, size]


class PatchEmbed(nn.Module):
    """Tubelets of ``tubelet × patch × patch`` pixels → tokens ``[B, L, D]``, L = t·h·w in (t, h, w) order."""

    def __init__(self, cfg: VideoMAEConfig):
        super().__init__()
        self.img_size = cfg.img_size
        kernel = (cfg.tubelet_size, cfg.patch_size, cfg.patch_size)
        self.proj = nn.Conv3d(3, cfg.embed_dim, kernel_size=kernel, stride=kernel)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(
                f"videomae: input frames must be {self.img_size}×{self.img_size}, got {tuple(x.shape[-2:])}"
            )
        return rearrange(self.proj(x), "b d t h w -> b (t h w) d")  # [B, 3, F, H, W] -> [B, L, D]


class Attention(nn.Module):
    """Multi-head self-attention; ``qkv`` without bias plus learned q and v biases (k bias fixed at 0)."""

    def __init__(self, cfg: VideoMAEConfig):
        super().__init__()
        dim = cfg.embed_dim
        self.num_heads = cfg.num_heads
        self.scale = (dim // cfg.num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))  # [3·D]
        qkv = F.linear(x, self.qkv.weight, bias)  # [B, L, 3·D]
        q, k, v = rearrange(qkv, "b l (three h dh) -> three b h l dh", three=3, h=self.num_heads)
        x = F.scaled_dot_product_attention(q, k, v, scale=self.scale)  # [B, H, L, Dh]
        return self.proj(rearrange(x, "b h l dh -> b l (h dh)"))


class Mlp(nn.Module):
    def __init__(self, cfg: VideoMAEConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.embed_dim, cfg.mlp_hidden)
        self.act = nn.GELU()  # exact (erf) GELU, as the reference
        self.fc2 = nn.Linear(cfg.mlp_hidden, cfg.embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block without layer scale (the released model has ``init_values=0``)."""

    def __init__(self, cfg: VideoMAEConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.mlp = Mlp(cfg)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """VideoMAE-v2's fine-tuning ViT with mean pooling, key for key as
    ``videomaev2_finetune.VisionTransformer``: ``patch_embed.proj``,
    ``blocks.{i}.{norm1, attn.{qkv, q_bias, v_bias, proj}, norm2, mlp.{fc1, fc2}}``, ``fc_norm``, ``head``.
    The sin-cos ``pos_embed`` is a non-persistent buffer (not in the state dict)."""

    def __init__(self, cfg: VideoMAEConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.fc_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.head = nn.Linear(cfg.embed_dim, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        t, h, w = cfg.grid
        self.register_buffer("pos_embed", sinusoid_table(t * h * w, cfg.embed_dim), persistent=False)

    def reset_buffers(self) -> None:
        """Rebuild the float32 sin-cos table on the weights' device (after a meta-device build, or a dtype
        cast that rounded it)."""
        t, h, w = self.cfg.grid
        self.pos_embed = sinusoid_table(t * h * w, self.cfg.embed_dim).to(self.patch_embed.proj.weight.device)

    def pos_embed_for(self, t: int) -> Tensor:
        """The ``[1, t·h·w, D]`` float32 table for ``t`` tubelets: the stored one when ``t`` equals the
        config's, else the reference's ``interpolate_pos_encoding`` (L515-L532): trilinear in time only, to
        the scale ``(t + 0.1) / t_cfg`` (the +0.1 guards the floor of the output size), on the CPU in
        float32."""
        T, h, w = self.cfg.grid
        if t == T:
            return self.pos_embed
        table = rearrange(self.pos_embed.float().cpu(), "1 (t h w) d -> 1 d t h w", t=T, h=h, w=w)
        table = F.interpolate(table, scale_factor=((t + 0.1) / T, 1, 1), mode="trilinear")  # [1, D, t, h, w]
        if table.shape[2] != t:
            raise ValueError(
                f"videomae: time interpolation of the positions gave {table.shape[2]} steps, not {t}"
            )
        return rearrange(table, "1 d t h w -> 1 (t h w) d").to(self.pos_embed.device)

    def forward_features(self, x: Tensor) -> Tensor:
        """``[B, 3, F, H, W]`` (preprocessed) → ``[B, D]``: LayerNorm of the mean token after the last
        block."""
        x = self.patch_embed(x)  # [B, L, D]
        x = x + self.pos_embed_for(x.shape[1] // (self.cfg.grid[1] * self.cfg.grid[2])).to(x.dtype)
        for block in self.blocks:
            x = block(x)
        return self.fc_norm(x.mean(1))  # [B, D]

    def forward(self, x: Tensor) -> Tensor:
        """SSv2 logits ``[B, num_classes]`` (the reference's ``forward``; not used by cd-FVD)."""
        return self.head(self.forward_features(x))


class VideoMAE(nn.Module):
    """The cd-FVD detector: ``uint8 [B, F, 3, H, W]`` → float32 ``[B, 1408]`` (cd-fvd's
    ``forward_features``)."""

    name = "videomae"
    min_frames = 2  # one tubelet
    batch_size = 16
    dim = 1408

    def __init__(self, model: VisionTransformer):
        super().__init__()
        self.model = model
        self.dim = model.cfg.embed_dim
        self.min_frames = model.cfg.tubelet_size
        self.eval()

    def train(self, mode: bool = True) -> VideoMAE:
        return super().train(False)  # a frozen detector

    @torch.no_grad()
    def features(self, video: Tensor) -> Tensor:
        """``uint8 [B, F, 3, H, W]`` (any H, W: resized to 224² here) → float32 ``[B, 1408]`` on the CPU."""
        check_video(video, name=self.name, min_frames=self.min_frames)
        weight = self.model.patch_embed.proj.weight
        x = preprocess(video.to(weight.device), self.model.cfg.img_size)  # [B, 3, F, 224, 224] float32
        out = self.model.forward_features(x.to(weight.dtype))  # [B, D]
        return check_finite(out.float().cpu(), name=self.name)

    forward = features


def _few(keys: list[str], n: int = 5) -> str:
    more = f", ... (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _read_state_dict(p: Path) -> dict[str, Tensor]:
    """The tensors of a ``.safetensors`` file or a ``torch.save`` checkpoint (unwrapping ``model`` /
    ``module`` as ``VideoMAEv2/utils.py:L76-L79``), loaded with ``weights_only=True``."""
    if p.suffix == ".safetensors":
        try:
            return load_safetensors(str(p), device="cpu")
        except Exception as e:
            raise ValueError(f"--videomae {p}: not a readable safetensors file: {e}") from e
    try:
        # VideoMAEv2's training script saves its argparse.Namespace under "args": allow that one plain class
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        # torch's message is a page long; its "WeightsUnpickler error: ..." line names the offending class
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        unpickler = next((line for line in lines if line.startswith("WeightsUnpickler")), None)
        if unpickler is None:
            raise ValueError(
                f"--videomae {p}: not a readable torch checkpoint ({type(e).__name__}: {str(e)[:200]})"
            ) from e
        raise ValueError(
            f"--videomae {p}: torch.load(weights_only=True) failed ({unpickler.split('. Please')[0]}). "
            f'If you trust the file, convert it once to safetensors: python -c "import torch, '
            f"safetensors.torch as st; c = torch.load('{p}', weights_only=False); c = c.get('model', "
            f"c.get('module', c)); st.save_file({{k: v.contiguous() for k, v in c.items()}}, "
            f"'videomae.safetensors')\""
        ) from e
    if isinstance(ckpt, dict):
        for key in ("model", "module"):
            if key in ckpt:
                ckpt = ckpt[key]
                break
    if not isinstance(ckpt, dict) or not all(isinstance(v, Tensor) for v in ckpt.values()):
        raise ValueError(
            f"--videomae {p}: expected a state dict of tensors (optionally under 'model'/'module')"
        )
    return ckpt


def load(
    path: str | os.PathLike | None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    config: VideoMAEConfig | None = None,
) -> VideoMAE:
    """Load ``vit_g_hybrid_pt_1200e_ssv2_ft.pth`` (or its ``.safetensors`` conversion) as a ``VideoMAE``.

    The model is built on the meta device and the checkpoint's tensors are assigned in place (moved to
    ``device`` and cast to ``dtype`` one by one), so the 1B-parameter model is never initialised or held
    twice. Keys must match exactly (``ValueError`` listing missing / unexpected / mis-shaped keys).
    ``config`` is for other VideoMAE-v2 sizes and tests; the default is ViT-g/14.
    """
    p = require_weights(path, flag="--videomae", file_name=FILE_NAME, published=PUBLISHED)
    cfg = config or VideoMAEConfig()
    state = _read_state_dict(p)
    with torch.device("meta"):
        model = VisionTransformer(cfg)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        problems = [
            f"missing {len(missing)}: {_few(missing)}" if missing else "",
            f"unexpected {len(unexpected)}: {_few(unexpected)}" if unexpected else "",
            f"wrong shape {len(shapes)}: {_few(shapes)}" if shapes else "",
        ]
        raise ValueError(
            f"--videomae {p}: not a VideoMAE-v2 checkpoint of this architecture ({FILE_NAME} expected, "
            f"embed_dim={cfg.embed_dim}, depth={cfg.depth}); " + "; ".join(x for x in problems if x)
        )
    for k in list(state):  # replace one by one: the original tensor is freed before the next is converted
        state[k] = state[k].to(device=device, dtype=dtype)
    model.load_state_dict(state, strict=True, assign=True)
    model.reset_buffers()
    return VideoMAE(model.requires_grad_(False))
