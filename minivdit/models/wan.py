"""Wan2.1 transformer (T2V-1.3B, T2V-14B, I2V-14B 480p/720p) in one file; loads diffusers folders as is.

Reference: diffusers 0.42.1, ``src/diffusers/models/transformers/transformer_wan.py``
(``WanTransformer3DModel``, ``WanTransformerBlock``, ``WanAttention`` + ``WanAttnProcessor``,
``WanTimeTextImageEmbedding``, ``WanImageEmbedding``, ``WanRotaryPosEmbed``) with the pieces it uses from
``embeddings.py`` (``Timesteps``, ``TimestepEmbedding``, ``PixArtAlphaTextProjection``,
``get_1d_rotary_pos_embed``), ``normalization.py`` (``FP32LayerNorm``) and ``attention.py``
(``FeedForward``, ``GELU``); the original is ``Wan-Video/Wan2.1`` ``wan/modules/model.py`` (``WanModel``).
Facts and gotchas: ``anchors-conditioning.md`` §1. Module and parameter names are diffusers', so a diffusers
state dict loads with ``strict=True`` and no key map.

Dataflow (anchors §1.2): [noisy latents ‖ I2V condition (4 mask + 16 latent channels)] → Conv3d patches
(1, 2, 2) → tokens in (f, h, w) order. t → 256 sinusoid → MLP → ``temb`` [B, D]; ``time_proj(SiLU(temb))``
→ the six modulation vectors [B, 6, D], shared by every block, each block adding its own table [1, 6, D].
Text [B, L, 4096] → MLP (GELU-tanh) → [B, L, D]; I2V CLIP tokens [B, 257, 1280] → LN, MLP (GELU), LN →
[B, 257, D]. Block: x += gate·SelfAttn(LN(x)·(1+scale)+shift, 3-D RoPE); x += CrossAttn(LN_affine(x), text
[, image]) (no modulation, no gate); x += gate·FFN(LN(x)·(1+scale)+shift). QK-norm is RMSNorm over the
whole width (across heads). I2V cross-attention is decoupled: one query, separate keys/values for text and
image tokens (``add_k_proj``/``add_v_proj``/``norm_added_k``), the two attention outputs summed before
``to_out``. Head: LN, (shift, scale) = table [1, 2, D] + ``temb`` (not projected), Linear, unpatchify with
each token's outputs ordered (p_t, p_h, p_w, C) (CogVideoX orders them (C, p, p): not shared).

Indexing rule for ``tap``: ``tap=k`` returns the video tokens output by ``blocks[k-1]`` ("block k",
1-indexed, as ``cogvideox.py`` and ``dit.py``) as ``DiTOutput.hidden`` [B, F', N, D].

Precision follows diffusers (``_keep_in_fp32_modules``, ``transformer_wan.py`` l.549): a bf16 load keeps
``time_embedder``, every ``scale_shift_table`` and the ``norm1``/``norm2``/``norm3`` parameters (the
cross-attention LN, the CLIP-token LNs) in fp32, the modulation and the LayerNorms are computed in fp32 and
the gated residual adds run in fp32 before casting back, exactly where diffusers casts (l.484-502, 714-723).

Deviations from diffusers:
- Context parallelism (``--parallel.cp``, ``models/context_parallel.py``; diffusers has none in the model):
  the video tokens are split over the ranks after the patch embedding (FlashI2V's Fourier tokens are added
  before), RoPE rotates each rank's slice, self-attention runs Ulysses' all-to-alls, cross-attention needs
  nothing (local queries, whole context); the prediction and the tap are gathered.
- Text and image tokens arrive separately (``cond.context``, ``cond.image_context``) and each block gets both.
  diffusers concatenates [image; text] and splits them again in every cross-attention at
  ``L − 512`` ("512 is the context length of the text encoder, hardcoded for now", ``WanAttnProcessor``
  l.87-91; the original also hard-codes ``T5_CONTEXT_TOKEN_NUMBER``, ``wan/modules/model.py`` l.14, 209), so
  it silently mis-splits any text that is not exactly 512 tokens. Here the image span is the shape of
  ``cond.image_context`` and the text may have any length; with 512 text tokens the two are identical (the
  parity test feeds 512).
- The 3-D RoPE angles are computed for the actual (F', h, w) in fp64 and cast to fp32, as diffusers'
  table (``get_1d_rotary_pos_embed(..., freqs_dtype=float64)`` then ``.float()``), instead of being sliced
  from a 1024-row buffer; a grid longer than ``rope_max_seq_len`` on any axis is refused (diffusers: shape
  error). Nothing positional is stored, so meta builds need no buffer reset.
- ``t_model`` must be [B] (diffusers also takes Wan 2.2's per-token [B, S]); FLF2V (``pos_embed_seq_len``),
  fused projections, LoRA hooks, caches and attention processors are not supported; the attention kernel
  is ``minivdit.models.attention``. ``qk_norm`` must be ``"rms_norm_across_heads"`` (every release; diffusers
  builds the same RMSNorms whatever the value).
- The text cross-attention takes an optional key mask, ``Cond.context_mask`` [B, L] (True = a real token),
  which the released models never get: the Wan pipelines zero-pad the trimmed UMT5 tokens in the 4096-d space
  and let them attend (anchors §1.2 step 4), and so does FlashI2V / UniWorld's VLM context. With a mask the
  padded tokens are not attended (a VLM's valid tokens, issue 20: appending padding changes nothing); without
  one (every recipe and the samplers' Wan path) the output is diffusers' exactly. The CLIP image tokens are
  never masked.
- Keys named ``norm_added_q`` in a file are ignored, as diffusers does
  (``_keys_to_ignore_on_load_unexpected``); every other missing or unexpected key is an error.
- ``attn.to_out`` and ``ffn.net`` hold no Dropout (p = 0 in every release): ``to_out`` is [Linear] and
  ``ffn.net[1]`` an ``nn.Identity`` that keeps diffusers' indices.
- The inputs are cast to the patch embedding's dtype (diffusers leaves that to the pipeline). Construction
  initialises like diffusers (PyTorch defaults, tables N(0, 1/D)); from-scratch training calls
  ``init_weights()`` (Wan's init), which sets every tensor, also after a meta build and ``to_empty()``.

Deviations from the original ``WanModel``: the timestep sinusoid is fp32 (diffusers) instead of fp64
(``sinusoidal_embedding_1d``); the residual stream stays in the model dtype (diffusers) where the original
keeps it fp32 after the first block (anchors §1.7); no per-sample ``seq_len`` padding or mask (every sample in
a batch has the same size here).

Axis legend: B batch, F latent frames, F' = F / p_t token frames, C channels, H/W latent height/width, h/w
token grid, N = h·w tokens per frame, L text tokens, Li image tokens, D width, Dh head width.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor

from minivdit.config import check_types
from minivdit.models.attention import BACKENDS, Backend, attention
from minivdit.models.checkpointing import Checkpointing, run_block
from minivdit.models.cogvideox import assign_weights, weight_files
from minivdit.models.cond import Cond
from minivdit.models.context_parallel import ContextParallel
from minivdit.models.dit import DiTOutput

CLASS_NAME = "WanTransformer3DModel"
# Not diffusers config.json keys: a run's choices (kernel, the frames and size it trains at).
RUNTIME_FIELDS = ("attn_backend", "input_size", "num_frames")
# diffusers ``WanTransformer3DModel._keep_in_fp32_modules`` (l.549), matched against the dot-separated parts
# of a parameter name as ``load_model_dict_into_meta`` does (``model_loading_utils.py`` l.238-239).
KEEP_FP32 = ("time_embedder", "scale_shift_table", "norm1", "norm2", "norm3")
# diffusers ``_keys_to_ignore_on_load_unexpected`` (l.550): regexes of file keys dropped silently.
IGNORED_KEYS = ("norm_added_q",)


@dataclass(frozen=True, kw_only=True)
class WanConfig:
    """A ``WanTransformer3DModel`` config.json (same keys, same defaults: the 14B T2V) + 3 fields of ours."""

    patch_size: tuple[int, int, int] = (1, 2, 2)
    """Patch (p_t, p_h, p_w) of the Conv3d patch embedding ((1, 2, 2) in every release)."""
    num_attention_heads: int = 40
    """Attention heads (1.3B: 12; 14B: 40)."""
    attention_head_dim: int = 128
    """Head width Dh (128 in every release); RoPE splits it t:h:w = Dh − 4⌊Dh/6⌋ : 2⌊Dh/6⌋ : 2⌊Dh/6⌋."""
    in_channels: int = 16
    """Input channels: out_channels (T2V) or out_channels + 20 (I2V: noisy ‖ 4 mask + 16 latent channels)."""
    out_channels: int = 16
    """Latent channels C predicted."""
    text_dim: int = 4096
    """Width of the text tokens (UMT5-XXL)."""
    freq_dim: int = 256
    """Width of the timestep sinusoid."""
    ffn_dim: int = 13824
    """FFN hidden width (1.3B: 8960; 14B: 13824)."""
    num_layers: int = 40
    """Blocks (1.3B: 30; 14B: 40)."""
    cross_attn_norm: bool = True
    """Affine LayerNorm (``norm2``) before the cross-attention (True in every release; False: none)."""
    qk_norm: Literal["rms_norm_across_heads"] = "rms_norm_across_heads"
    """QK-norm: RMSNorm over the whole width D, before the split into heads (the only one supported)."""
    eps: float = 1e-6
    """Epsilon of the block LNs, the QK RMSNorms and the output LN (the CLIP-token LNs use 1e-5)."""
    image_dim: int | None = None
    """I2V only (1280): width of the CLIP image tokens (``cond.image_context``); None = T2V."""
    added_kv_proj_dim: int | None = None
    """I2V only (= D): input width of ``add_k_proj``/``add_v_proj`` (the projected image tokens)."""
    rope_max_seq_len: int = 1024
    """Longest token grid axis (F', h or w) the RoPE table covers."""
    pos_embed_seq_len: int | None = None
    """FLF2V only (257·2): not supported; must be None."""
    attn_backend: Backend = "sdpa"
    """Ours: attention kernel ``sdpa`` | ``flash`` | ``xformers`` (unavailable ones fall back to SDPA)."""
    input_size: tuple[int, int] | None = None
    """Ours: latent (H, W) a run trains and samples at; None = 60 × 104 (480 × 832 px, VAE stride 8)."""
    num_frames: int | None = None
    """Ours: latent frames F a run trains and samples at; None = 21 (81 px frames, VAE stride 4)."""

    def __post_init__(self) -> None:
        check_types(self)
        names = ("num_attention_heads", "attention_head_dim", "in_channels", "out_channels", "text_dim")
        names += ("freq_dim", "ffn_dim", "num_layers", "rope_max_seq_len")
        sizes = {n: getattr(self, n) for n in names} | {"patch_size": min(self.patch_size)}
        sizes |= {
            n: getattr(self, n) for n in ("image_dim", "added_kv_proj_dim") if getattr(self, n) is not None
        }
        if small := {n: v for n, v in sizes.items() if v < 1}:
            raise ValueError(f"WanConfig sizes must be >= 1, got {small}")
        i2v_fields = (self.image_dim is None, self.added_kv_proj_dim is None)
        rules = [  # (holds, what is wrong otherwise)
            (self.qk_norm == "rms_norm_across_heads", "qk_norm must be 'rms_norm_across_heads'"),
            (self.attention_head_dim % 2 == 0, "attention_head_dim must be even (RoPE rotates pairs)"),
            (
                self.in_channels >= self.out_channels,
                "in_channels must be >= out_channels (I2V adds channels)",
            ),
            (len(set(i2v_fields)) == 1, "image_dim and added_kv_proj_dim must be set together (I2V)"),
            (self.added_kv_proj_dim in (None, self.inner_dim), "added_kv_proj_dim must equal inner_dim"),
            (self.pos_embed_seq_len is None, "pos_embed_seq_len (FLF2V) is not supported"),
            (self.attn_backend in BACKENDS, f"attn_backend must be one of {BACKENDS}"),
            (self.eps > 0, "eps must be > 0"),
        ]
        if wrong := [what for holds, what in rules if not holds]:
            raise ValueError(f"invalid WanConfig ({'; '.join(wrong)}): {self}")

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    # What the trainer reads of any backbone config (the same names as ``DiTConfig``).
    num_classes = 0  # Wan is text-conditioned; a class label is refused
    learn_sigma = False
    block_type = "full3d"  # self-attention over all video tokens, cross-attention to the text

    @property
    def depth(self) -> int:
        return self.num_layers

    @property
    def hidden_size(self) -> int:
        return self.inner_dim

    @property
    def frames(self) -> int:
        """Latent frames the run uses (``num_frames`` or 21)."""
        return self.num_frames or 21

    @property
    def latent_size(self) -> tuple[int, int]:
        """Latent (H, W) the run uses (``input_size`` or 60 × 104)."""
        return tuple(self.input_size) if self.input_size else (60, 104)

    @property
    def grid(self) -> tuple[int, int]:
        """Token grid (h, w) per frame at ``latent_size``."""
        H, W = self.latent_size
        return H // self.patch_size[1], W // self.patch_size[2]

    @property
    def concat_channels(self) -> int:
        """Channels of ``cond.image_latents`` concatenated after the noisy latents (I2V: 20; T2V: 0)."""
        return self.in_channels - self.out_channels

    @property
    def is_i2v(self) -> bool:
        return self.concat_channels > 0 or self.image_dim is not None

    @property
    def rope_split(self) -> tuple[int, int, int]:
        """Head-width share of (t, h, w) in RoPE (``WanRotaryPosEmbed`` l.368-369): 128 → 44, 42, 42."""
        hw = 2 * (self.attention_head_dim // 6)
        return self.attention_head_dim - 2 * hw, hw, hw

    @classmethod
    def from_dict(cls, d: dict, *, source: str = "config", **overrides) -> WanConfig:
        """A diffusers config.json dict; ``_``-prefixed bookkeeping keys are ignored, unknown keys raise.
        ``overrides`` set any field (e.g. ``attn_backend="flash"``)."""
        if (name := d.get("_class_name", CLASS_NAME)) != CLASS_NAME:
            raise ValueError(f"{source}: _class_name is {name!r}, not a Wan transformer ({CLASS_NAME})")
        kw = {k: v for k, v in d.items() if not k.startswith("_")} | overrides
        if unknown := sorted(set(kw) - {f.name for f in dataclasses.fields(cls)}):
            raise ValueError(f"{source}: unsupported {CLASS_NAME} config keys {unknown}")
        for k in ("patch_size", "input_size"):  # JSON lists
            if isinstance(kw.get(k), list):
                kw[k] = tuple(kw[k])
        return cls(**kw)

    @classmethod
    def from_json(cls, path: str | Path, **overrides) -> WanConfig:
        return cls.from_dict(json.loads(Path(path).read_text()), source=str(path), **overrides)

    def to_dict(self) -> dict:
        """The diffusers config.json dict (our own fields left out)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in RUNTIME_FIELDS}
        return {"_class_name": CLASS_NAME, **d}


_T2V_1_3B = dict(num_attention_heads=12, ffn_dim=8960, num_layers=30)
_I2V = dict(in_channels=36, image_dim=1280, added_kv_proj_dim=5120)
# anchors-conditioning §1.1 (wan/configs/*.py; diffusers' convert_wan_to_diffusers.py l.328-437). The 480p
# and 720p I2V checkpoints share one architecture; they differ in weights and in the size they sample at.
PRESETS: dict[str, WanConfig] = {
    "Wan2.1-T2V-1.3B": WanConfig(**_T2V_1_3B),
    "Wan2.1-T2V-14B": WanConfig(),
    "Wan2.1-I2V-14B-480P": WanConfig(**_I2V),
    "Wan2.1-I2V-14B-720P": WanConfig(**_I2V, input_size=(90, 160)),
}


# --------------------------------------------------------------------------- positions and time features
def timestep_features(t: Tensor, dim: int) -> Tensor:
    """[B] -> [B, dim] fp32 (cos, sin) features, frequencies 10^4^(−i/(dim/2)) (diffusers ``Timesteps(dim,
    flip_sin_to_cos=True, downscale_freq_shift=0)``; the original's ``sinusoidal_embedding_1d`` in fp64)."""
    half = dim // 2
    exponent = -math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    args = t.float()[:, None] * torch.exp(exponent)[None]  # [B, dim/2]
    return F.pad(torch.cat([torch.cos(args), torch.sin(args)], dim=-1), (0, dim % 2))


def rope_cos_sin(cfg: WanConfig, frames: int, h: int, w: int, device=None) -> tuple[Tensor, Tensor]:
    """cos, sin [F'·h·w, Dh/2] fp32 for video tokens in (f, h, w) order: per axis, pairs get angles
    pos·10^4^(−2i/d_axis) (fp64, then fp32, as ``get_1d_rotary_pos_embed``), axes concatenated [t | h | w]."""
    if (longest := max(frames, h, w)) > cfg.rope_max_seq_len:
        raise ValueError(
            f"token grid {frames}x{h}x{w} exceeds rope_max_seq_len={cfg.rope_max_seq_len} on an axis "
            f"({longest})"
        )
    f64 = dict(dtype=torch.float64, device=device)
    angles = []
    for dim, n in zip(cfg.rope_split, (frames, h, w), strict=True):
        freqs = 1.0 / 10000.0 ** (torch.arange(0, dim, 2, **f64) / dim)  # [d_axis/2]
        angles.append(torch.outer(torch.arange(n, **f64), freqs))  # [n, d_axis/2]
    t_, h_, w_ = angles
    grid = torch.cat(
        [
            repeat(t_, "f d -> f h w d", h=h, w=w),
            repeat(h_, "h d -> f h w d", f=frames, w=w),
            repeat(w_, "w d -> f h w d", f=frames, h=h),
        ],
        dim=-1,
    )
    grid = rearrange(grid, "f h w d -> (f h w) d")  # [F'·h·w, Dh/2]
    return grid.cos().float(), grid.sin().float()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the adjacent pairs (x[2i], x[2i+1]) of x [B, H, S, Dh] by cos/sin [S, Dh/2]. In fp32 at least
    (diffusers multiplies by its fp32 table, promoting bf16), then cast back to x's dtype."""
    x1, x2 = rearrange(x, "b h s (d two) -> two b h s d", two=2)
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return rearrange(out, "b h s d two -> b h s (d two)").to(x.dtype)


# --------------------------------------------------------------------------- modules (diffusers names)
class FP32LayerNorm(nn.LayerNorm):
    """diffusers ``FP32LayerNorm``: the LayerNorm computed in fp32 (weights upcast), output in x's dtype."""

    def forward(self, x: Tensor) -> Tensor:
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).to(x.dtype)


class TimestepEmbedding(nn.Module):
    """diffusers ``TimestepEmbedding`` (``time_embedder``): linear_1, SiLU, linear_2."""

    def __init__(self, dim_in: int, dim: int):
        super().__init__()
        self.linear_1, self.linear_2 = nn.Linear(dim_in, dim), nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class TextProjection(nn.Module):
    """diffusers ``PixArtAlphaTextProjection(act_fn="gelu_tanh")`` (``text_embedder``; Wan's
    ``text_embedding``)."""

    def __init__(self, dim_in: int, dim: int):
        super().__init__()
        self.linear_1, self.linear_2 = nn.Linear(dim_in, dim), nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_2(F.gelu(self.linear_1(x), approximate="tanh"))


class GELUProj(nn.Module):
    """diffusers ``GELU`` (``net.0``): Linear, then GELU (exact or tanh)."""

    def __init__(self, dim_in: int, dim_out: int, approximate: Literal["none", "tanh"]):
        super().__init__()
        self.proj, self.approximate = nn.Linear(dim_in, dim_out), approximate

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.proj(x), approximate=self.approximate)


class FeedForward(nn.Module):
    """diffusers ``FeedForward``: net = [GELU proj, (dropout p=0: Identity), Linear]."""

    def __init__(self, dim: int, hidden: int, dim_out: int, approximate: Literal["none", "tanh"]):
        super().__init__()
        self.net = nn.Sequential(
            GELUProj(dim, hidden, approximate), nn.Identity(), nn.Linear(hidden, dim_out)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ImageEmbedding(nn.Module):
    """diffusers ``WanImageEmbedding`` (Wan ``MLPProj``): CLIP tokens → LN, Linear, GELU, Linear, LN → D.
    The LNs use PyTorch's default eps 1e-5 in both references (``nn.LayerNorm(in_dim)``)."""

    def __init__(self, dim_in: int, dim: int):
        super().__init__()
        self.norm1 = FP32LayerNorm(dim_in)
        self.ff = FeedForward(dim_in, dim_in, dim, approximate="none")  # mult=1, exact GELU
        self.norm2 = FP32LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm2(self.ff(self.norm1(x)))


class ConditionEmbedder(nn.Module):
    """diffusers ``WanTimeTextImageEmbedding``: time → (temb [B, D], six modulation vectors [B, 6, D]),
    text → [B, L, D], CLIP tokens → [B, Li, D]."""

    def __init__(self, cfg: WanConfig):
        super().__init__()
        D, self.freq_dim = cfg.inner_dim, cfg.freq_dim
        self.time_embedder = TimestepEmbedding(cfg.freq_dim, D)
        self.time_proj = nn.Linear(D, 6 * D)
        self.text_embedder = TextProjection(cfg.text_dim, D)
        self.image_embedder = ImageEmbedding(cfg.image_dim, D) if cfg.image_dim else None

    def forward(
        self, t: Tensor, text: Tensor, image: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        feats = timestep_features(t, self.freq_dim).to(self.time_embedder.linear_1.weight.dtype)  # [B, 256]
        temb = self.time_embedder(feats).to(text.dtype)  # fp32 weights in bf16 loads, as diffusers (l.344)
        mod = rearrange(self.time_proj(F.silu(temb)), "b (six d) -> b six d", six=6)  # [B, 6, D]
        image = self.image_embedder(image) if image is not None else None
        return temb, mod, self.text_embedder(text), image


class WanAttention(nn.Module):
    """``WanAttention`` + ``WanAttnProcessor``: QK RMSNorm across heads; self-attention with RoPE, or
    cross-attention to text with (I2V) a decoupled image branch whose output is added before ``to_out``."""

    def __init__(self, cfg: WanConfig, *, image_kv: bool = False):
        super().__init__()
        D = cfg.inner_dim
        self.heads, self.backend = cfg.num_attention_heads, cfg.attn_backend
        self.to_q, self.to_k, self.to_v = nn.Linear(D, D), nn.Linear(D, D), nn.Linear(D, D)
        self.to_out = nn.ModuleList([nn.Linear(D, D)])
        self.norm_q, self.norm_k = nn.RMSNorm(D, eps=cfg.eps), nn.RMSNorm(D, eps=cfg.eps)
        if image_kv:
            self.add_k_proj = nn.Linear(cfg.added_kv_proj_dim, D)
            self.add_v_proj = nn.Linear(cfg.added_kv_proj_dim, D)
            self.norm_added_k = nn.RMSNorm(D, eps=cfg.eps)
        self.cp: ContextParallel | None = None  # set by minivdit.dist.parallelize (--parallel.cp)

    def _heads(self, y: Tensor) -> Tensor:
        return rearrange(y, "b s (h d) -> b h s d", h=self.heads)

    def forward(
        self,
        x: Tensor,
        ctx: Tensor | None = None,
        image: Tensor | None = None,
        rope: tuple[Tensor, Tensor] | None = None,
        mask: Tensor | None = None,
    ) -> Tensor:
        """x [B, S, D]; ctx [B, L, D] (None: self-attention); image [B, Li, D]; rope (cos, sin): [B, S, D];
        mask [B, L] bool: the context's key mask (None: every token attended)."""
        kv = x if ctx is None else ctx
        q = self._heads(self.norm_q(self.to_q(x)))  # norm over D, then heads: [B, H, S, Dh]
        k, v = self._heads(self.norm_k(self.to_k(kv))), self._heads(self.to_v(kv))
        if rope is not None:  # under context parallelism: this rank's tokens and their angles
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        attend = partial(attention, backend=self.backend, mask=mask)
        if ctx is None and self.cp is not None and self.training:  # self-attention over S/cp tokens: Ulysses
            out = self.cp.attention(q, k, v, attend)[0]  # [B, H, S/cp, Dh]
        else:  # cross-attention: local queries, the whole context on every rank
            out = attend(q, k, v)  # [B, H, S, Dh]
        if image is not None:  # same query, its own keys and values, no mask (anchors §1.8)
            k_img = self._heads(self.norm_added_k(self.add_k_proj(image)))
            out = out + attention(q, k_img, self._heads(self.add_v_proj(image)), backend=self.backend)
        return self.to_out[0](rearrange(out, "b h s d -> b s (h d)"))


class WanTransformerBlock(nn.Module):
    """Modulated self-attention, ungated cross-attention, modulated FFN (anchors §1.3)."""

    def __init__(self, cfg: WanConfig):
        super().__init__()
        D = cfg.inner_dim
        self.norm1 = FP32LayerNorm(D, cfg.eps, elementwise_affine=False)
        self.attn1 = WanAttention(cfg)
        self.attn2 = WanAttention(cfg, image_kv=cfg.added_kv_proj_dim is not None)
        self.norm2 = FP32LayerNorm(D, cfg.eps, elementwise_affine=True) if cfg.cross_attn_norm else None
        self.ffn = FeedForward(D, cfg.ffn_dim, D, approximate="tanh")
        self.norm3 = FP32LayerNorm(D, cfg.eps, elementwise_affine=False)
        self.scale_shift_table = nn.Parameter(torch.randn(1, 6, D) / D**0.5)  # diffusers l.460

    def forward(
        self,
        x: Tensor,
        ctx: Tensor,
        image: Tensor | None,
        mod: Tensor,
        rope: tuple[Tensor, Tensor],
        ctx_mask: Tensor | None = None,
    ):
        """x [B, S, D], ctx [B, L, D], image [B, Li, D] | None, mod [B, 6, D], ctx_mask [B, L] | None
        -> x [B, S, D]."""
        # chunk order (shift, scale, gate) for attention, then for the FFN; in fp32 (diffusers l.482-485)
        mod = rearrange(self.scale_shift_table + mod.float(), "b six d -> six b 1 d")
        shift, scale, gate, c_shift, c_scale, c_gate = mod
        h = (self.norm1(x.float()) * (1 + scale) + shift).type_as(x)
        x = (x.float() + self.attn1(h, rope=rope) * gate).type_as(x)
        h = self.norm2(x.float()).type_as(x) if self.norm2 is not None else x
        x = x + self.attn2(h, ctx, image, mask=ctx_mask)  # no modulation, no gate
        h = (self.norm3(x.float()) * (1 + c_scale) + c_shift).type_as(x)
        return (x.float() + self.ffn(h).float() * c_gate).type_as(x)


# --------------------------------------------------------------------------- diffusers folders
def pretrained_folder(folder: str | Path) -> Path:
    """The diffusers transformer folder: ``folder`` itself, or ``folder/transformer`` in a pipeline folder,
    whichever holds config.json (``ValueError`` naming the folder otherwise)."""
    folder = Path(folder)
    if not (folder / "config.json").is_file() and (folder / "transformer" / "config.json").is_file():
        folder = folder / "transformer"
    if not (folder / "config.json").is_file():
        raise ValueError(f"{folder}: no config.json (expected a diffusers {CLASS_NAME} folder or a pipeline)")
    return folder


def load_dtype(name: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype a parameter is loaded in: fp32 for diffusers' keep-in-fp32 modules (``KEEP_FP32``)."""
    return torch.float32 if any(part in KEEP_FP32 for part in name.split(".")) else dtype


# --------------------------------------------------------------------------- the model
class WanTransformer(nn.Module):
    """``forward(x_t [B,F,C,H,W], t_model [B], cond: Cond(context, image_latents?, image_context?), *, tap)
    -> DiTOutput``; ``t_model`` on Wan's 0..1000 scale (1000·σ)."""

    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.cfg, D = cfg, cfg.inner_dim
        self.patch_embedding = nn.Conv3d(
            cfg.in_channels, D, kernel_size=cfg.patch_size, stride=cfg.patch_size
        )
        self.condition_embedder = ConditionEmbedder(cfg)
        self.blocks = nn.ModuleList(WanTransformerBlock(cfg) for _ in range(cfg.num_layers))
        self.norm_out = FP32LayerNorm(D, cfg.eps, elementwise_affine=False)
        self.proj_out = nn.Linear(D, cfg.out_channels * math.prod(cfg.patch_size))
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, D) / D**0.5)  # diffusers l.624
        self.grad_checkpointing: bool | Checkpointing = False  # set by minivdit.dist.parallelize
        self.cp: ContextParallel | None = None  # likewise (--parallel.cp)

    @torch.no_grad()
    def init_weights(self) -> None:
        """Wan's from-scratch init (``WanModel.init_weights``, ``wan/modules/model.py`` l.609-631; anchors
        §1.6), also after ``to_empty()``: every Linear xavier-uniform with zero bias; the patch conv
        xavier-uniform as a Linear over (C, p_t, p_h, p_w) with PyTorch's default bias U(±1/√fan_in) (Wan
        leaves the bias at its default); the text and time MLPs' weights N(0, 0.02); ``proj_out`` zero (so
        a fresh model predicts exactly 0); the modulation tables N(0, 1/D), norms reset. Wan is not
        adaLN-Zero: the gates start random, only the output is zero."""
        D = self.cfg.inner_dim
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.LayerNorm, nn.RMSNorm)):
                m.reset_parameters()
        conv = self.patch_embedding
        nn.init.xavier_uniform_(conv.weight.view(conv.weight.shape[0], -1))
        bound = 1 / math.sqrt(conv.weight[0].numel())
        nn.init.uniform_(conv.bias, -bound, bound)
        emb = self.condition_embedder
        for lin in (emb.text_embedder.linear_1, emb.text_embedder.linear_2):
            nn.init.normal_(lin.weight, std=0.02)
        for lin in (emb.time_embedder.linear_1, emb.time_embedder.linear_2):
            nn.init.normal_(lin.weight, std=0.02)
        nn.init.zeros_(self.proj_out.weight)
        for table in [b.scale_shift_table for b in self.blocks] + [self.scale_shift_table]:
            table.copy_(torch.randn_like(table) / D**0.5)

    def _check(self, x_t: Tensor, t_model: Tensor, cond: Cond, tap: int | None) -> None:
        cfg, name, shape = self.cfg, type(self).__name__, tuple(x_t.shape)
        if not isinstance(cond, Cond):
            raise ValueError(f"cond must be a minivdit.models.cond.Cond, got {type(cond).__name__}")
        if x_t.ndim != 5:
            raise ValueError(f"x_t must be [B, F, C, H, W], got shape {shape}")
        B, F_, C, H, W = shape
        uses = ("context",)
        uses += ("image_latents",) if cfg.concat_channels else ()
        uses += ("image_context",) if cfg.image_dim else ()
        cond.check_uses(name, uses + ("context_mask",), required=uses)
        if cond.context.shape[0] != B or cond.context.shape[2] != cfg.text_dim:
            raise ValueError(
                f"Cond.context must be [B={B}, L, {cfg.text_dim}], got {tuple(cond.context.shape)}"
            )
        if cfg.out_channels != C:
            raise ValueError(f"x_t has {C} channels (shape {shape}), model expects {cfg.out_channels}")
        if cfg.concat_channels and cond.image_latents.shape != (B, F_, cfg.concat_channels, H, W):
            want = [B, F_, cfg.concat_channels, H, W]
            raise ValueError(f"Cond.image_latents must be {want}, got {tuple(cond.image_latents.shape)}")
        if cfg.image_dim and (
            cond.image_context.shape[0] != B or cond.image_context.shape[2] != cfg.image_dim
        ):
            raise ValueError(
                f"Cond.image_context must be [B={B}, Li, {cfg.image_dim}], "
                f"got {tuple(cond.image_context.shape)}"
            )
        if t_model.shape != (B,):
            raise ValueError(f"t_model must be [B]=[{B}], got shape {tuple(t_model.shape)}")
        pt, ph, pw = cfg.patch_size
        if F_ % pt or H % ph or W % pw:
            raise ValueError(
                f"latent F, H, W must be divisible by patch_size {cfg.patch_size}, got x_t {shape}"
            )
        if tap is not None and not 1 <= tap <= cfg.num_layers:
            raise ValueError(f"tap={tap} out of range: blocks are 1-indexed, 1..{cfg.num_layers}")

    def forward(self, x_t: Tensor, t_model: Tensor, cond: Cond, *, tap: int | None = None) -> DiTOutput:
        self._check(x_t, t_model, cond, tap)
        cfg, dtype = self.cfg, self.patch_embedding.weight.dtype
        (pt, ph, pw), (_, F_, _, H, W) = cfg.patch_size, x_t.shape
        f, h, w = F_ // pt, H // ph, W // pw
        x = torch.cat([x_t, cond.image_latents], dim=2) if cfg.concat_channels else x_t  # [B, F, C_in, H, W]
        x = self.patch_embedding(rearrange(x.to(dtype), "b f c h w -> b c f h w"))  # [B, D, F', h, w]
        x = rearrange(x, "b d f h w -> b (f h w) d").contiguous()  # tokens in (f, h, w) order
        image = cond.image_context.to(dtype) if cfg.image_dim else None
        temb, mod, ctx, image = self.condition_embedder(t_model, cond.context.to(dtype), image)
        rope = rope_cos_sin(cfg, f, h, w, x.device)
        mask = cond.context_mask.bool() if cond.context_mask is not None else None  # [B, L]
        cp = self.cp if self.training else None  # models/context_parallel.py
        if cp is not None:
            x = cp.shard(x, dim=1)  # [B, F'·N/cp, D]: this rank's video tokens
            rope = tuple(cp.shard(r, dim=0) for r in rope)  # their angles
        whole = (lambda y: y) if cp is None else (lambda y: cp.gather(y, dim=1))  # every rank's tokens

        hidden = None
        ac = self.grad_checkpointing if self.training else False  # models/checkpointing.py
        for i, block in enumerate(self.blocks):
            x = run_block(ac, i, block, x, ctx, image, mod, rope, mask)
            if tap == i + 1:
                hidden = rearrange(whole(x), "b (f n) d -> b f n d", f=f)  # [B, F', N, D]

        # head: (shift, scale) from the un-projected temb, in fp32 (diffusers l.714-723)
        shift, scale = rearrange(self.scale_shift_table + temb[:, None], "b two d -> two b 1 d")
        x = (self.norm_out(x.float()) * (1 + scale) + shift).type_as(x)
        x = whole(self.proj_out(x))  # [B, F'·N, p_t·p_h·p_w·C]
        pred = rearrange(
            x, "b (f h w) (pt ph pw c) -> b (f pt) c (h ph) (w pw)", f=f, h=h, w=w, pt=pt, ph=ph, pw=pw
        )
        return DiTOutput(pred=pred, hidden=hidden)  # pred [B, F, C_out, H, W]

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, *, dtype=torch.float32, device="cpu", **kw
    ) -> WanTransformer:
        """Load a diffusers ``transformer/`` folder (or a pipeline folder holding one): config.json plus
        ``diffusion_pytorch_model.safetensors``, or shards listed in its ``.index.json``. Keys and shapes must
        match exactly (``ValueError`` listing the missing and unexpected keys and the shape mismatches;
        ``norm_added_q`` keys are ignored, as diffusers does); tensors are read one shard at a time, cast to
        ``dtype`` (fp32 for diffusers' keep-in-fp32 modules, ``KEEP_FP32``) on ``device`` and assigned into
        a meta-built model (no second copy). ``kw`` set config fields (``attn_backend=...``). Returned in
        eval mode, as diffusers does."""
        folder = pretrained_folder(folder)
        cfg = WanConfig.from_json(folder / "config.json", **kw)
        shards = weight_files(folder)
        with torch.device("meta"):  # no init: every tensor is assigned below (nothing positional is stored)
            model = cls(cfg)
        assign_weights(
            model,
            folder,
            shards,
            f"{CLASS_NAME}({cfg})",
            cast=lambda k, t: t.to(device=device, dtype=load_dtype(k, dtype)),
            ignore=lambda k: any(re.search(p, k) for p in IGNORED_KEYS),
        )
        return model.eval()


def num_tokens(cfg: WanConfig, frames: int, height: int, width: int) -> int:
    """Video tokens F'·h·w of a latent clip."""
    pt, ph, pw = cfg.patch_size
    return frames // pt * (height // ph) * (width // pw)


def preset(name: str) -> WanConfig:
    """``PRESETS[name]`` with a ValueError listing the valid names."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid: {sorted(PRESETS)}")
    return PRESETS[name]


__all__ = [
    "WanConfig",
    "WanTransformer",
    "PRESETS",
    "preset",
    "rope_cos_sin",
    "apply_rope",
    "timestep_features",
]
__all__ += ["num_tokens", "pretrained_folder", "load_dtype", "KEEP_FP32"]
