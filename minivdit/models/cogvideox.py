"""CogVideoX transformer (2B, 5B, 5B-I2V, 1.5-5B, 1.5-5B-I2V) in one file; loads diffusers folders as is.

Reference: diffusers 0.42.1, ``src/diffusers/models/transformers/cogvideox_transformer_3d.py``
(``CogVideoXTransformer3DModel``, ``CogVideoXBlock``) with the pieces it uses from ``embeddings.py``
(``CogVideoXPatchEmbed``, ``get_3d_sincos_pos_embed``, ``get_3d_rotary_pos_embed``, ``apply_rotary_emb``,
``Timesteps``, ``TimestepEmbedding``), ``normalization.py`` (``CogVideoXLayerNormZero``, ``AdaLayerNorm``),
``attention_processor.py`` (``CogVideoXAttnProcessor2_0``) and the RoPE grid of the pipelines
(``pipelines/cogvideo/pipeline_cogvideox_image2video.py``: ``_prepare_rotary_positional_embeddings``,
``get_resize_crop_region_for_grid``). Facts and gotchas: ``anchors-cogvideox.md`` §1. Module and parameter
names are diffusers', so a diffusers state dict loads with ``strict=True`` and no key map.

Dataflow: text [B, L, 4096] → ``text_proj``; video → patches (1.0: per-frame p×p conv; 1.5: p_t×p×p linear);
one sequence [text; video] (+ absolute PE on 2B / 5B-I2V) → blocks: ONE shared LayerNorm with separate 6-way
adaLN for each stream ("expert adaLN"), joint attention with per-head QK LayerNorm and 3-D RoPE on the video
part only, one MLP over [text; video], gated residuals per stream → LayerNorm, adaLN (shift, scale) → linear →
unpatchify. The conditioning vector is sinusoidal(t, width D) → MLP, plus the same for ``ofs`` on 1.5-I2V.

Indexing rule for ``tap``: ``tap=k`` returns the video tokens (text dropped) output by
``transformer_blocks[k-1]`` ("block k", 1-indexed as VideoREPA's ``align_layer``) as ``DiTOutput.hidden``
[B, F', N, D].

Deviations from diffusers:
- I2V: the model concatenates ``cond.image_latents`` after the noisy latents (diffusers takes the concat).
- RoPE cos/sin are computed here from the latent F, H, W with the pipelines' grids (diffusers: the pipeline
  passes them in); ``t_model`` must be [B]; the ofs value is ``cfg.ofs`` (the I2V pipeline passes 2.0).
- The learned PE (5B-I2V) requires exactly the trained F, H, W and L = max_text_seq_length: ``ValueError``
  otherwise (diffusers raises for H, W but silently substitutes a sin-cos table for another F), unless
  ``learned_pe`` says otherwise: "drop" leaves it out (RoPE only: the diffusers CogVideoX I2V LoRA example's
  and cogvideox-factory's ``--ignore_learned_positional_embeddings``, "for multi-resolution training"; what
  the bucketed recipes use), "interpolate" resamples its video part trilinearly to the clip's token grid
  (``interpolate_learned_pe``; text rows as they are; exact at the trained size). The sin-cos
  PE (2B) is rebuilt for any size, as diffusers does, but needs L = max_text_seq_length (diffusers: broadcast
  error). Like diffusers, the learned PE is a buffer: fine-tuning leaves it frozen.
- Context parallelism (``--parallel.cp``, ``models/context_parallel.py``): the video tokens are split over the
  ranks after the patch embedding (positions added), the text stays whole on every rank; in the joint
  attention each rank attends with its heads of the text and of the whole video (Ulysses), and the text's
  output is gathered over heads; the prediction and the tap are gathered.
- 1.5: F must be divisible by patch_size_t; the pipeline pads by repeating the first latent; callers must
  (``pad_frames``, called by ``train_step``; ``minivdit.sample`` pads the noise).

CogVideoX 1.5 with an odd latent count (81 frames → 21 latents, ``patch_size_t`` 2): ``pad_frames`` does what
CogVideo's 1.5 trainer does (``finetune/models/cogvideox_i2v/lora_trainer.py: compute_loss``, which
``cogvideox1dot5_i2v`` inherits): prepend ``(−F) mod p_t`` copies of the first latent (CogVideo's
``F mod p_t``, the same for p_t = 2, the only released value) and give the image condition ``[img, 0, …]``
at the padded length (zeros appended); the loss covers every padded frame, the copy included, as there. The
diffusers pipelines sample the same layout (``prepare_latents``: noise for the padded count, image latents
``[img, 0, …]``, the first frame dropped after sampling). A whole-clip condition (anyframe, i > 0: every
latent frame non-zero) is padded like the video latents instead, by a copy of its first frame, so its frames
stay aligned with theirs; the references have no such condition.

The 1.5 image-latent scale disagrees between the references: the diffusers I2V pipeline feeds (1/s)·z
(``pipeline_cogvideox_image2video.py: prepare_latents`` l.387-392, ``invert_scale_latents``: "the CogVideoX
team forgot to multiply the scaling factor during training"), CogVideo's 1.5 trainer s·z (``compute_loss``:
``image_latent_dist.sample() * vae.config.scaling_factor``, and its validation runs the diffusers pipeline,
so it trains on one scale and samples on another), and SAT z (as issue 18 reports; not re-read here).
minivdit follows the VAE flag, i.e. the diffusers pipeline, in training and sampling
(``conditioning/i2v.py: _invert_scale``): a fine-tune sees what the released 1.5-I2V weights are sampled with.
- No text mask (``Cond.context_mask`` raises: the released pipelines let padded T5 tokens attend).
- No fused QKV, LoRA/PEFT, caches or attention processors; attention is ``minivdit.models.attention``.
- The 2B sin-cos table is a non-persistent buffer rebuilt by ``reset_buffers()``; timestep features are cast
  to the weight dtype (diffusers: to the input's dtype); ``attn1.to_out`` holds only the Linear (diffusers
  appends a p=0 Dropout, which has no weights).

Axis legend: B batch, F latent frames, F' = F / p_t token frames, C channels, H/W latent height/width, h/w
token grid, N = h·w tokens per frame, L text tokens, D width, Dh head width, Dt conditioning width.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange, repeat
from safetensors import safe_open
from torch import Tensor

from minivdit.config import check_types
from minivdit.models.attention import BACKENDS, Backend, attention
from minivdit.models.blocks import sincos_1d
from minivdit.models.checkpointing import Checkpointing, run_block
from minivdit.models.cond import Cond
from minivdit.models.context_parallel import ContextParallel
from minivdit.models.dit import DiTOutput

CLASS_NAME = "CogVideoXTransformer3DModel"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
# Not diffusers config.json keys: a run's choices (kernel, the frames and size it trains at), kept from the
# run's config when ``--pretrained`` supplies the architecture.
RUNTIME_FIELDS = _OURS = ("attn_backend", "ofs", "rope_grid", "input_size", "num_frames", "learned_pe")


@dataclass(frozen=True, kw_only=True)
class CogVideoXConfig:
    """A ``CogVideoXTransformer3DModel`` config.json (same keys, same defaults: the 2B) + 6 fields of ours."""

    num_attention_heads: int = 30
    """Attention heads (2B: 30; 5B: 48)."""
    attention_head_dim: int = 64
    """Head width Dh; RoPE splits it t:h:w = Dh/4 : 3Dh/8 : 3Dh/8, so it must be a multiple of 16."""
    in_channels: int = 16
    """Input channels: out_channels (T2V) or 2·out_channels (I2V: noisy ‖ image latents)."""
    out_channels: int = 16
    """Latent channels C predicted."""
    flip_sin_to_cos: bool = True
    """Timestep features ordered (cos, sin)."""
    freq_shift: int = 0
    """``downscale_freq_shift`` of the timestep features."""
    time_embed_dim: int = 512
    """Conditioning width Dt."""
    ofs_embed_dim: int | None = None
    """1.5-I2V only (512): width of the ``ofs`` embedding added to the conditioning (must equal Dt)."""
    text_embed_dim: int = 4096
    """Width of the text tokens (T5-v1.1-XXL)."""
    num_layers: int = 30
    """Blocks (2B: 30; 5B: 42)."""
    dropout: float = 0.0
    """Dropout after the embeddings and in the MLP (0 in every release)."""
    attention_bias: bool = True
    """Biases on to_q / to_k / to_v."""
    sample_width: int = 90
    """Latent width W of the PE table (learned PE: the only W; 1.0 RoPE: crop base; 1.5 RoPE: max W)."""
    sample_height: int = 60
    """Latent height H, as ``sample_width``."""
    sample_frames: int = 49
    """PIXEL frames of the PE table (diffusers' historical quirk): latent F = (sample_frames - 1) / 4 + 1."""
    patch_size: int = 2
    """Spatial patch p."""
    patch_size_t: int | None = None
    """Temporal patch p_t (1.5: 2); None = per-frame 2-D patches (1.0)."""
    temporal_compression_ratio: int = 4
    """VAE temporal compression, only to read ``sample_frames``."""
    max_text_seq_length: int = 226
    """Text tokens L the absolute PE covers (T5 padded to 226)."""
    activation_fn: Literal["gelu-approximate"] = "gelu-approximate"
    """MLP activation (tanh-GELU; the only one supported)."""
    timestep_activation_fn: Literal["silu"] = "silu"
    """Activation inside the timestep MLP (the only one supported)."""
    norm_elementwise_affine: bool = True
    """Affine weights on the block and output LayerNorms."""
    norm_eps: float = 1e-5
    """Epsilon of the block and output LayerNorms (the QK norms use 1e-6, as diffusers)."""
    spatial_interpolation_scale: float = 1.875
    """Sin-cos PE: spatial positions are divided by this."""
    temporal_interpolation_scale: float = 1.0
    """Sin-cos PE: temporal positions are divided by this."""
    use_rotary_positional_embeddings: bool = False
    """3-D RoPE on the video queries/keys (5B, 1.5); else a 3-D sin-cos table is added (2B)."""
    use_learned_positional_embeddings: bool = False
    """5B-I2V: a stored PE over [text; video] at the trained size (needs RoPE as well)."""
    patch_bias: bool = True
    """Bias of the 1.0 patch conv (the 1.5 patch Linear always has one, as in diffusers)."""
    attn_backend: Backend = "sdpa"
    """Ours: attention kernel ``sdpa`` | ``flash`` | ``xformers`` (unavailable ones fall back to SDPA)."""
    ofs: float = 2.0
    """Ours: the ofs value fed to the ofs embedding (1.5-I2V); the diffusers I2V pipeline uses 2.0."""
    rope_grid: Literal["auto", "linspace", "slice"] = "auto"
    """Ours: RoPE position grid; auto = ``linspace`` (with crop region) for 1.0, ``slice`` for 1.5."""
    input_size: tuple[int, int] | None = None
    """Ours: latent (H, W) a run trains and samples at (the trainer checks it against the VAE's latents);
    None = the trained ``sample_height`` × ``sample_width``. The model itself accepts any size RoPE allows."""
    num_frames: int | None = None
    """Ours: latent frames F a run trains and samples at; None = the trained ``(sample_frames − 1)/4 + 1``."""
    learned_pe: Literal["exact", "drop", "interpolate"] = "exact"
    """Ours, learned PE (5B-I2V) only: "exact" = diffusers, only the trained (F, H, W) is accepted; "drop" =
    the table is not added (RoPE only; diffusers' and cogvideox-factory's ``--ignore_learned_positional_
    embeddings``; the choice of bucketed runs, ``--model.learned-pe drop``); "interpolate" = its video part
    resampled trilinearly to each clip's token grid. The buffer stays in the state dict either way."""

    def __post_init__(self) -> None:
        check_types(self)
        names = ("num_attention_heads", "attention_head_dim", "in_channels", "out_channels", "num_layers")
        names += ("time_embed_dim", "text_embed_dim", "sample_width", "sample_height", "sample_frames")
        names += ("patch_size", "temporal_compression_ratio", "max_text_seq_length")
        sizes = {n: getattr(self, n) for n in names}
        sizes |= {n: getattr(self, n) for n in ("patch_size_t", "ofs_embed_dim") if getattr(self, n)}
        if small := {n: v for n, v in sizes.items() if v < 1}:  # before the rules below divide by them
            raise ValueError(f"CogVideoXConfig sizes must be >= 1, got {small}")
        rope, p, C = self.use_rotary_positional_embeddings, self.patch_size, self.out_channels
        rules = [  # (holds, what is wrong otherwise)
            (self.activation_fn == "gelu-approximate", "activation_fn must be 'gelu-approximate'"),
            (self.timestep_activation_fn == "silu", "timestep_activation_fn must be 'silu'"),
            (self.in_channels in (C, 2 * C), "in_channels must be out_channels or twice it (I2V)"),
            (not rope or self.attention_head_dim % 16 == 0, "RoPE needs attention_head_dim % 16 == 0"),
            (rope or self.inner_dim % 16 == 0, "the 3-D sin-cos PE needs inner_dim % 16 == 0"),
            (rope or not self.use_learned_positional_embeddings, "learned PE needs RoPE too (as diffusers)"),
            (self.patch_size_t is None or not self.has_abs_pos, "patch_size_t needs RoPE and no learned PE"),
            (self.ofs_embed_dim in (None, self.time_embed_dim), "ofs_embed_dim must equal time_embed_dim"),
            (self.sample_height % p == 0 and self.sample_width % p == 0, "sample H, W not divisible by p"),
            (self.attn_backend in BACKENDS, f"attn_backend must be one of {BACKENDS}"),
            (self.rope_grid in ("auto", "linspace", "slice"), "rope_grid must be auto | linspace | slice"),
            (self.learned_pe in ("exact", "drop", "interpolate"), "learned_pe: exact | drop | interpolate"),
            (0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)"),
        ]
        if wrong := [what for holds, what in rules if not holds]:
            raise ValueError(f"invalid CogVideoXConfig ({'; '.join(wrong)}): {self}")

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    # What the trainer reads of any backbone config (the same names as ``DiTConfig``).
    num_classes = 0  # CogVideoX is text-conditioned; a class label is refused
    learn_sigma = False
    block_type = "full3d"  # joint attention over [text; video]

    @property
    def depth(self) -> int:
        return self.num_layers

    @property
    def hidden_size(self) -> int:
        return self.inner_dim

    @property
    def frames(self) -> int:
        """Latent frames the run uses (``num_frames`` or the trained count)."""
        return self.num_frames or self.trained_size[0]

    @property
    def latent_size(self) -> tuple[int, int]:
        """Latent (H, W) the run uses (``input_size`` or the trained size)."""
        return tuple(self.input_size) if self.input_size else (self.sample_height, self.sample_width)

    @property
    def grid(self) -> tuple[int, int]:
        """Token grid (h, w) per frame at ``latent_size``."""
        H, W = self.latent_size
        return H // self.patch_size, W // self.patch_size

    @property
    def is_i2v(self) -> bool:
        return self.in_channels == 2 * self.out_channels

    @property
    def has_abs_pos(self) -> bool:
        """A ``patch_embed.pos_embedding`` table is added (sin-cos without RoPE, or learned)."""
        return self.use_learned_positional_embeddings or not self.use_rotary_positional_embeddings

    @property
    def adds_abs_pos(self) -> bool:
        """The absolute PE is added to the tokens (``has_abs_pos``, less a learned PE that ``learned_pe``
        drops)."""
        return self.has_abs_pos and not (self.use_learned_positional_embeddings and self.learned_pe == "drop")

    @property
    def trained_size(self) -> tuple[int, int, int]:
        """Latent (F, H, W) of the PE table."""
        F = (self.sample_frames - 1) // self.temporal_compression_ratio + 1
        return F, self.sample_height, self.sample_width

    @property
    def rope_grid_type(self) -> Literal["linspace", "slice"]:
        if self.rope_grid != "auto":
            return self.rope_grid
        return "linspace" if self.patch_size_t is None else "slice"

    @classmethod
    def from_dict(cls, d: dict, *, source: str = "config", **overrides) -> CogVideoXConfig:
        """A diffusers config.json dict; ``_``-prefixed bookkeeping keys are ignored, unknown keys raise.
        ``overrides`` set any field (e.g. ``attn_backend="flash"``)."""
        if (name := d.get("_class_name", CLASS_NAME)) != CLASS_NAME:
            raise ValueError(f"{source}: _class_name is {name!r}, not a CogVideoX transformer ({CLASS_NAME})")
        kw = {k: v for k, v in d.items() if not k.startswith("_")}
        if unknown := sorted(set(kw) - {f.name for f in dataclasses.fields(cls)}):
            raise ValueError(f"{source}: unsupported {CLASS_NAME} config keys {unknown}")
        return cls(**(kw | overrides))

    @classmethod
    def from_json(cls, path: str | Path, **overrides) -> CogVideoXConfig:
        return cls.from_dict(json.loads(Path(path).read_text()), source=str(path), **overrides)

    def to_dict(self) -> dict:
        """The diffusers config.json dict (our own fields left out)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in _OURS}
        return {"_class_name": CLASS_NAME, **d}


_SHARED = dict(attention_head_dim=64, time_embed_dim=512, text_embed_dim=4096, out_channels=16)
_V5B = dict(_SHARED, num_attention_heads=48, num_layers=42, use_rotary_positional_embeddings=True)
_V15 = dict(_V5B, patch_size_t=2, patch_bias=False, sample_height=300, sample_width=300, sample_frames=81)
# anchors-cogvideox §1.1 (diffusers' conversion script; 1.5 uses its 300x300, only the slice-RoPE bound).
PRESETS: dict[str, CogVideoXConfig] = {
    "CogVideoX-2B": CogVideoXConfig(**_SHARED, num_attention_heads=30, num_layers=30),
    "CogVideoX-5B": CogVideoXConfig(**_V5B),
    "CogVideoX-5B-I2V": CogVideoXConfig(**_V5B, in_channels=32, use_learned_positional_embeddings=True),
    "CogVideoX1.5-5B": CogVideoXConfig(**_V15),
    "CogVideoX1.5-5B-I2V": CogVideoXConfig(**_V15, in_channels=32, ofs_embed_dim=512),
}


# --------------------------------------------------------------------------- positions and time features
def timestep_features(t: Tensor, dim: int, flip_sin_to_cos: bool, shift: float) -> Tensor:
    """[B] -> [B, dim] fp32 sinusoidal features (diffusers ``get_timestep_embedding``, max period 10^4)."""
    half = dim // 2
    exponent = -math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device)
    args = t.float()[:, None] * torch.exp(exponent / (half - shift))[None]  # [B, dim/2]
    sin, cos = torch.sin(args), torch.cos(args)
    return F.pad(torch.cat([cos, sin] if flip_sin_to_cos else [sin, cos], dim=-1), (0, dim % 2))


def sincos_3d_table(cfg: CogVideoXConfig, frames: int, height: int, width: int) -> Tensor:
    """[1, L + F·h·w, D] fp64 sin-cos PE over [text (zeros); video], as ``CogVideoXPatchEmbed``. Width:
    time D/4, then w 3D/8, then h 3D/8; positions are divided by the interpolation scales in fp32 first."""
    D, p, s = cfg.inner_dim, cfg.patch_size, cfg.spatial_interpolation_scale
    gh, gw = height // p, width // p
    pos_h, pos_w = torch.arange(gh, dtype=torch.float32) / s, torch.arange(gw, dtype=torch.float32) / s
    hh, ww = torch.meshgrid(pos_h, pos_w, indexing="ij")  # [h, w]
    spatial = torch.cat([sincos_1d(3 * D // 8, ww), sincos_1d(3 * D // 8, hh)], dim=1)  # [N, 3D/4]
    pos_t = torch.arange(frames, dtype=torch.float32) / cfg.temporal_interpolation_scale
    temporal = sincos_1d(D // 4, pos_t)  # [F, D/4]
    temporal = repeat(temporal, "f d -> (f n) d", n=gh * gw)
    video = torch.cat([temporal, repeat(spatial, "n d -> (f n) d", f=frames)], dim=1)  # [F·N, D]
    return torch.cat([video.new_zeros(cfg.max_text_seq_length, D), video])[None]


def interpolate_learned_pe(
    cfg: CogVideoXConfig, table: Tensor, frames: int, height: int, width: int
) -> Tensor:
    """The learned PE ``table`` [1, L + F0·h0·w0, D] (text rows, then video rows at the trained size) for
    latents of ``frames × height × width``: the text rows as they are, the video rows resampled trilinearly
    (``align_corners=False``, in fp32) from the trained token grid to ``frames × height/p × width/p``;
    ``table`` itself at the trained size. ``learned_pe="interpolate"``."""
    F0, H0, W0 = cfg.trained_size
    if (frames, height, width) == (F0, H0, W0):
        return table
    L, p = cfg.max_text_seq_length, cfg.patch_size
    video = rearrange(table[:, L:].float(), "o (f h w) d -> o d f h w", f=F0, h=H0 // p, w=W0 // p)
    size = (frames, height // p, width // p)
    video = F.interpolate(video, size=size, mode="trilinear", align_corners=False)  # [1, D, F, h, w]
    return torch.cat([table[:, :L], rearrange(video, "o d f h w -> o (f h w) d").to(table.dtype)], dim=1)


def resize_crop_region(grid: tuple[int, int], base_w: int, base_h: int) -> tuple[tuple[int, int], ...]:
    """Fit the (h, w) token grid into the base grid, aspect kept, centred: ((top, left), (bottom, right));
    the pipelines' ``get_resize_crop_region_for_grid`` (Python ``round``, as there)."""
    h, w = grid
    if h / w > base_h / base_w:
        rh, rw = base_h, int(round(base_h / h * w))
    else:
        rh, rw = int(round(base_w / w * h)), base_w
    top, left = int(round((base_h - rh) / 2.0)), int(round((base_w - rw) / 2.0))
    return (top, left), (top + rh, left + rw)


def rope_cos_sin(cfg: CogVideoXConfig, frames: int, height: int, width: int, device=None) -> tuple:
    """cos, sin [F'·h·w, Dh/2] fp32 for video tokens in (t, h, w) order, as the pipelines compute them: 1.0
    "linspace" (positions stretched over the crop of the base grid sample_h/p x sample_w/p), 1.5 "slice"
    (integer positions, bounded by that grid). Head width split t:h:w = Dh/4 : 3Dh/8 : 3Dh/8, θ = 10^4."""
    p, Dh = cfg.patch_size, cfg.attention_head_dim
    gh, gw, T = height // p, width // p, frames // (cfg.patch_size_t or 1)
    base_h, base_w = cfg.sample_height // p, cfg.sample_width // p
    f32 = dict(dtype=torch.float32, device=device)
    if cfg.rope_grid_type == "linspace":  # diffusers' formula, quirks kept (stop = end·(n-1)/n)
        (top, left), (bottom, right) = resize_crop_region((gh, gw), base_w, base_h)
        pos_h = torch.linspace(top, bottom * (gh - 1) / gh, gh, **f32)
        pos_w = torch.linspace(left, right * (gw - 1) / gw, gw, **f32)
        pos_t = torch.linspace(0, T * (T - 1) / T, T, **f32)
    else:
        if gh > base_h or gw > base_w:
            raise ValueError(
                f"slice RoPE: token grid {gh}x{gw} (latent {height}x{width}) exceeds the {base_h}x{base_w} "
                "grid of sample_height/sample_width; raise those in the config"
            )
        pos_t, pos_h, pos_w = (torch.arange(n, **f32) for n in (T, gh, gw))
    angles = []
    for dim, pos in ((Dh // 4, pos_t), (Dh // 8 * 3, pos_h), (Dh // 8 * 3, pos_w)):
        angles.append(torch.outer(pos, 1.0 / 10000 ** (torch.arange(0, dim, 2, **f32) / dim)))  # [n, dim/2]

    def grid(t: Tensor, h: Tensor, w: Tensor) -> Tensor:  # per-axis tables -> [T·h·w, Dh/2]
        t = repeat(t, "t d -> t h w d", h=gh, w=gw)
        h = repeat(h, "h d -> t h w d", t=T, w=gw)
        w = repeat(w, "w d -> t h w d", t=T, h=gh)
        return rearrange(torch.cat([t, h, w], dim=-1), "t h w d -> (t h w) d")

    return grid(*(a.cos() for a in angles)), grid(*(a.sin() for a in angles))


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the interleaved pairs (x[2i], x[2i+1]) of x [B, H, S, Dh] by cos/sin [S, Dh/2], in fp32."""
    x_re, x_im = rearrange(x.float(), "b h s (d two) -> two b h s d", two=2)
    out = torch.stack([x_re * cos - x_im * sin, x_im * cos + x_re * sin], dim=-1)
    return rearrange(out, "b h s d two -> b h s (d two)").to(x.dtype)


# --------------------------------------------------------------------------- modules (diffusers names)
class PatchEmbed(nn.Module):
    """``CogVideoXPatchEmbed``: text and video to [text; video] tokens, plus the absolute PE if any."""

    def __init__(self, cfg: CogVideoXConfig):
        super().__init__()
        self.cfg, D, p = cfg, cfg.inner_dim, cfg.patch_size
        if cfg.patch_size_t is None:
            self.proj = nn.Conv2d(cfg.in_channels, D, kernel_size=p, stride=p, bias=cfg.patch_bias)
        else:
            self.proj = nn.Linear(cfg.in_channels * cfg.patch_size_t * p * p, D)
        self.text_proj = nn.Linear(cfg.text_embed_dim, D)
        F0, H0, W0 = cfg.trained_size
        n = cfg.max_text_seq_length + F0 * (H0 // p) * (W0 // p)  # [text; video] at the trained size
        pos = torch.empty(1, n, D) if cfg.has_abs_pos else None
        # learned PE: data (persistent); sin-cos: derived, rebuilt by reset_buffers (as diffusers: not saved)
        self.register_buffer("pos_embedding", pos, persistent=cfg.use_learned_positional_embeddings)

    def forward(self, text: Tensor, video: Tensor) -> Tensor:
        cfg, p, pt = self.cfg, self.cfg.patch_size, self.cfg.patch_size_t
        B, F_, _, H, W = video.shape
        if pt is None:
            x = self.proj(rearrange(video, "b f c h w -> (b f) c h w"))  # [B·F, D, h, w]
            x = rearrange(x, "(b f) d h w -> b (f h w) d", b=B)
        else:
            x = rearrange(video, "b (f t) c (h p) (w q) -> b (f h w) (c t p q)", t=pt, p=p, q=p)
            x = self.proj(x)  # [B, F'·N, D]
        x = torch.cat([self.text_proj(text), x], dim=1)  # [B, L + F'·N, D]
        if self.pos_embedding is None or not cfg.adds_abs_pos:  # no table, or a learned one dropped
            return x
        if cfg.trained_size == (F_, H, W):
            pos = self.pos_embedding
        elif cfg.use_learned_positional_embeddings:  # "interpolate" ("exact" refused the size in _check)
            pos = interpolate_learned_pe(cfg, self.pos_embedding, F_, H, W)
        else:  # sin-cos at another size: rebuilt, as diffusers does
            pos = sincos_3d_table(cfg, F_, H, W).to(x.device)
        return x + pos.to(x.dtype)


class TimestepEmbedding(nn.Module):
    """``TimestepEmbedding`` (time and ofs): linear_1, SiLU, linear_2."""

    def __init__(self, dim_in: int, dim: int):
        super().__init__()
        self.linear_1, self.linear_2 = nn.Linear(dim_in, dim), nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class LayerNormZero(nn.Module):
    """``CogVideoXLayerNormZero`` (norm1 / norm2): ONE LayerNorm, separate (shift, scale, gate) per stream."""

    def __init__(self, cond_dim: int, dim: int, affine: bool, eps: float):
        super().__init__()
        self.linear = nn.Linear(cond_dim, 6 * dim)
        self.norm = nn.LayerNorm(dim, eps=eps, elementwise_affine=affine)

    def forward(self, x: Tensor, ctx: Tensor, emb: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        mod = rearrange(self.linear(F.silu(emb)), "b (six d) -> six b 1 d", six=6)  # 6 x [B, 1, D]
        shift, scale, gate, c_shift, c_scale, c_gate = mod
        return self.norm(x) * (1 + scale) + shift, self.norm(ctx) * (1 + c_scale) + c_shift, gate, c_gate


class Attention(nn.Module):
    """Joint attention over [text; video] (diffusers ``Attention`` + ``CogVideoXAttnProcessor2_0``)."""

    def __init__(self, cfg: CogVideoXConfig):
        super().__init__()
        D, Dh, bias = cfg.inner_dim, cfg.attention_head_dim, cfg.attention_bias
        self.heads, self.backend = cfg.num_attention_heads, cfg.attn_backend
        self.to_q, self.to_k, self.to_v = (nn.Linear(D, D, bias=bias) for _ in range(3))
        self.norm_q, self.norm_k = nn.LayerNorm(Dh, eps=1e-6), nn.LayerNorm(Dh, eps=1e-6)
        self.to_out = nn.ModuleList([nn.Linear(D, D)])
        self.cp: ContextParallel | None = None  # set by minivdit.dist.parallelize (--parallel.cp)

    def forward(self, x: Tensor, num_text: int, rope: tuple[Tensor, Tensor] | None) -> Tensor:
        heads = lambda y: rearrange(y, "b s (h d) -> b h s d", h=self.heads)
        q, k, v = heads(self.to_q(x)), heads(self.to_k(x)), heads(self.to_v(x))  # [B, H, S, Dh]
        q, k = self.norm_q(q), self.norm_k(k)  # per-head QK LayerNorm, before RoPE
        if rope is not None:  # video part only: text tokens carry no position
            q = torch.cat([q[:, :, :num_text], apply_rope(q[:, :, num_text:], *rope)], dim=2)
            k = torch.cat([k[:, :, :num_text], apply_rope(k[:, :, num_text:], *rope)], dim=2)
        attend = partial(attention, backend=self.backend)
        if self.cp is not None and self.training:  # this rank's video tokens, the whole text: Ulysses
            text, video = (lambda y: y[:, :, :num_text]), (lambda y: y[:, :, num_text:])
            out, out_text = self.cp.attention(
                video(q), video(k), video(v), attend, (text(q), text(k), text(v))
            )
            x = torch.cat([out_text, out], dim=2)  # [B, H, L + S/cp, Dh]
        else:
            x = attend(q, k, v)  # [B, H, S, Dh]
        return self.to_out[0](rearrange(x, "b h s d -> b s (h d)"))


class GELUProj(nn.Module):
    """diffusers ``GELU`` (``ff.net.0``): Linear, then tanh-GELU."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.proj(x), approximate="tanh")


class FeedForward(nn.Module):
    """diffusers ``FeedForward``: net = [GELU proj 4x, dropout, Linear, final dropout]."""

    def __init__(self, dim: int, dropout: float):
        super().__init__()
        layers = GELUProj(dim, 4 * dim), nn.Dropout(dropout), nn.Linear(4 * dim, dim), nn.Dropout(dropout)
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class CogVideoXBlock(nn.Module):
    """Expert-adaLN block: attention and one MLP over [text; video], gated residuals per stream."""

    def __init__(self, cfg: CogVideoXConfig):
        super().__init__()
        args = (cfg.time_embed_dim, cfg.inner_dim, cfg.norm_elementwise_affine, cfg.norm_eps)
        self.norm1, self.attn1 = LayerNormZero(*args), Attention(cfg)
        self.norm2, self.ff = LayerNormZero(*args), FeedForward(cfg.inner_dim, cfg.dropout)

    def forward(self, x: Tensor, ctx: Tensor, emb: Tensor, rope: tuple[Tensor, Tensor] | None):
        """x [B, F'·N, D] video, ctx [B, L, D] text, emb [B, Dt] -> (x, ctx)."""
        L = ctx.shape[1]
        nx, nctx, gate, c_gate = self.norm1(x, ctx, emb)
        out = self.attn1(torch.cat([nctx, nx], dim=1), L, rope)  # [B, L + F'·N, D]
        x, ctx = x + gate * out[:, L:], ctx + c_gate * out[:, :L]
        nx, nctx, gate, c_gate = self.norm2(x, ctx, emb)
        out = self.ff(torch.cat([nctx, nx], dim=1))  # one MLP over both streams
        return x + gate * out[:, L:], ctx + c_gate * out[:, :L]


class AdaNormOut(nn.Module):
    """``AdaLayerNorm(chunk_dim=1)`` (``norm_out``): LayerNorm, then (shift, scale), in that order."""

    def __init__(self, cfg: CogVideoXConfig):
        super().__init__()
        self.linear = nn.Linear(cfg.time_embed_dim, 2 * cfg.inner_dim)
        self.norm = nn.LayerNorm(cfg.inner_dim, cfg.norm_eps, cfg.norm_elementwise_affine)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        shift, scale = rearrange(self.linear(F.silu(emb)), "b (two d) -> two b 1 d", two=2)
        return self.norm(x) * (1 + scale) + shift


# --------------------------------------------------------------------------- diffusers folders
def pretrained_folder(folder: str | Path) -> Path:
    """The diffusers transformer folder: ``folder`` itself, or ``folder/transformer`` in a pipeline folder,
    whichever holds config.json (``ValueError`` naming the folder otherwise)."""
    folder = Path(folder)
    if not (folder / "config.json").is_file() and (folder / "transformer" / "config.json").is_file():
        folder = folder / "transformer"
    if not (folder / "config.json").is_file():
        raise ValueError(
            f"{folder}: no config.json (expected a diffusers {CLASS_NAME} folder, or a V-DiT folder written "
            f"by tools/convert_weights.py / minivdit.models.dit.save_pretrained)"
        )
    return folder


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a transformer folder (``pretrained_folder``): the single file, or the shards
    its ``.index.json`` lists, sorted; ``ValueError`` naming the folder when none or some are missing."""
    if (folder / WEIGHTS_NAME).is_file():
        return [folder / WEIGHTS_NAME]
    if not (folder / INDEX_NAME).is_file():
        raise ValueError(f"{folder}: no weights ({WEIGHTS_NAME} or {INDEX_NAME})")
    weight_map = json.loads((folder / INDEX_NAME).read_text())["weight_map"]  # key -> shard file
    shards = sorted({folder / name for name in weight_map.values()})
    if absent := [s.name for s in shards if not s.is_file()]:
        raise ValueError(f"{folder}: shards listed in {INDEX_NAME} are missing: {absent}")
    return shards


def assign_weights(
    model: nn.Module, folder: Path, shards: list[Path], what: str, *, cast, ignore=lambda key: False
) -> None:
    """Assign the tensors of ``shards`` into the meta-built ``model``, strictly: keys and shapes are compared
    from the files' headers first (``ValueError`` naming ``folder`` and ``what``, listing the missing and
    unexpected keys and the shape mismatches), then each shard is read, ``cast(key, tensor)`` and assigned
    (no second copy). Keys for which ``ignore(key)`` holds are skipped on both sides. Used by every diffusers
    transformer port (this file, ``models/wan.py``)."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items() if not ignore(k)}
    have = {}
    for shard in shards:  # headers only
        with safe_open(str(shard), framework="pt") as f:
            have |= {k: tuple(f.get_slice(k).get_shape()) for k in f.keys() if not ignore(k)}  # noqa: SIM118
    missing, unexpected = sorted(want.keys() - have.keys()), sorted(have.keys() - want.keys())
    problems = [f"missing keys {missing}"] if missing else []
    problems += [f"unexpected keys {unexpected}"] if unexpected else []
    problems += [f"{k}: {have[k]} in file vs {s}" for k, s in want.items() if have.get(k, s) != s]
    if problems:
        raise ValueError(f"{folder}: weights do not match {what}: " + "; ".join(problems))
    for shard in shards:
        with safe_open(str(shard), framework="pt", device="cpu") as f:
            state = {k: cast(k, f.get_tensor(k)) for k in f.keys() if not ignore(k)}  # noqa: SIM118
        model.load_state_dict(state, strict=False, assign=True)  # strictness: checked above
        del state


# --------------------------------------------------------------------------- the model
class CogVideoXTransformer(nn.Module):
    """``forward(x_t [B,F,C,H,W], t_model [B], cond: Cond(context, image_latents?), *, tap) -> DiTOutput``."""

    def __init__(self, cfg: CogVideoXConfig):
        super().__init__()
        self.cfg, D, Do = cfg, cfg.inner_dim, cfg.ofs_embed_dim
        self.patch_embed = PatchEmbed(cfg)
        self.embedding_dropout = nn.Dropout(cfg.dropout)
        self.time_embedding = TimestepEmbedding(D, cfg.time_embed_dim)  # features are D wide, not 256
        self.ofs_embedding = TimestepEmbedding(Do, Do) if Do else None
        self.transformer_blocks = nn.ModuleList(CogVideoXBlock(cfg) for _ in range(cfg.num_layers))
        self.norm_final = nn.LayerNorm(D, cfg.norm_eps, cfg.norm_elementwise_affine)  # video only
        self.norm_out = AdaNormOut(cfg)
        self.proj_out = nn.Linear(D, cfg.patch_size**2 * (cfg.patch_size_t or 1) * cfg.out_channels)
        self.grad_checkpointing: bool | Checkpointing = False  # set by minivdit.dist.parallelize
        self.cp: ContextParallel | None = None  # likewise (--parallel.cp)
        pos = self.patch_embed.pos_embedding
        if pos is not None and not pos.is_meta:  # as diffusers: the PE (learned too) starts as sin-cos
            self.reset_buffers(learned=True)

    @torch.no_grad()
    def init_weights(self) -> None:
        """From-scratch init, also after ``to_empty()``: xavier linears, normal(0.02) timestep MLPs (DiT),
        zero adaLN and ``proj_out`` (a fresh model outputs exactly 0), LayerNorms reset, PE rebuilt (the
        learned one to sin-cos, its diffusers init)."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):  # the patch conv as if it were a Linear (DiT)
                nn.init.xavier_uniform_(m.weight.view(m.weight.shape[0], -1))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                m.reset_parameters()
        for emb in (self.time_embedding, self.ofs_embedding):
            for lin in (emb.linear_1, emb.linear_2) if emb is not None else ():
                nn.init.normal_(lin.weight, std=0.02)
        zero = [self.norm_out.linear, self.proj_out]
        zero += [n.linear for b in self.transformer_blocks for n in (b.norm1, b.norm2)]
        for m in zero:
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)
        self.reset_buffers(learned=True)

    @torch.no_grad()
    def reset_buffers(self, learned: bool = False) -> None:
        """Rebuild the sin-cos PE (non-persistent: not in checkpoints, garbage after ``to_empty``); the
        learned PE is checkpoint data, reset to sin-cos only with ``learned=True``."""
        pos = self.patch_embed.pos_embedding
        if pos is not None and (learned or not self.cfg.use_learned_positional_embeddings):
            pos.copy_(sincos_3d_table(self.cfg, *self.cfg.trained_size))

    def _check(self, x_t: Tensor, t_model: Tensor, cond: Cond, tap: int | None) -> None:
        cfg, name, shape = self.cfg, type(self).__name__, tuple(x_t.shape)
        if x_t.ndim != 5:
            raise ValueError(f"x_t must be [B, F, C, H, W], got shape {shape}")
        B, F_, C, H, W = shape
        if cond.context_mask is not None:
            raise ValueError(
                f"{name} cannot use Cond.context_mask: CogVideoX has no text mask (padded T5 tokens attend, "
                "as in the released pipelines); pass the context without a mask"
            )
        uses = ("context", "image_latents") if cfg.is_i2v else ("context",)
        cond.check_uses(name, uses, required=uses)
        L = cond.context.shape[1]
        if cond.context.shape != (B, L, cfg.text_embed_dim):
            raise ValueError(
                f"Cond.context must be [B={B}, L, {cfg.text_embed_dim}], got {cond.context.shape}"
            )
        want = cfg.out_channels if cfg.is_i2v else cfg.in_channels  # I2V: the image latents come in Cond
        if want != C:
            raise ValueError(f"x_t has {C} channels (shape {shape}), model expects {want}")
        if cfg.is_i2v and cond.image_latents.shape != (B, F_, cfg.in_channels - C, H, W):
            want = [B, F_, cfg.in_channels - C, H, W]
            raise ValueError(f"Cond.image_latents must be {want}, got {tuple(cond.image_latents.shape)}")
        if t_model.shape != (B,):
            raise ValueError(f"t_model must be [B]=[{B}], got shape {tuple(t_model.shape)}")
        if H % cfg.patch_size or W % cfg.patch_size:
            raise ValueError(f"latent H, W must be divisible by patch_size {cfg.patch_size}, got x_t {shape}")
        if cfg.patch_size_t is not None and F_ % cfg.patch_size_t:
            raise ValueError(
                f"x_t {shape}: {F_} latent frames not divisible by patch_size_t {cfg.patch_size_t}; pad by "
                "repeating the first latent frame, as the diffusers pipeline does"
            )
        if cfg.adds_abs_pos and cfg.max_text_seq_length != L:
            raise ValueError(f"the absolute PE needs {cfg.max_text_seq_length} text tokens, got L={L}")
        exact = cfg.use_learned_positional_embeddings and cfg.learned_pe == "exact"
        if exact and cfg.trained_size != (F_, H, W):
            raise ValueError(
                f"the learned PE covers (F, H, W)={cfg.trained_size} only, got x_t {shape}: other sizes "
                "(buckets) need --model.learned-pe drop (RoPE only) or interpolate"
            )
        if tap is not None and not 1 <= tap <= cfg.num_layers:
            raise ValueError(f"tap={tap} out of range: blocks are 1-indexed, 1..{cfg.num_layers}")

    def forward(self, x_t: Tensor, t_model: Tensor, cond: Cond, *, tap: int | None = None) -> DiTOutput:
        self._check(x_t, t_model, cond, tap)
        cfg, p = self.cfg, self.cfg.patch_size
        B, F_, _, H, W = x_t.shape
        x = torch.cat([x_t, cond.image_latents], dim=2) if cfg.is_i2v else x_t  # [B, F, C_in, H, W]
        dtype, sincos = self.time_embedding.linear_1.weight.dtype, (cfg.flip_sin_to_cos, cfg.freq_shift)
        emb = self.time_embedding(timestep_features(t_model, cfg.inner_dim, *sincos).to(dtype))  # [B, Dt]
        if self.ofs_embedding is not None:
            ofs = torch.full((B,), cfg.ofs, device=t_model.device)
            ofs = timestep_features(ofs, cfg.ofs_embed_dim, *sincos)  # [B, Dt]
            emb = emb + self.ofs_embedding(ofs.to(dtype))
        L = cond.context.shape[1]
        seq = self.embedding_dropout(self.patch_embed(cond.context, x))  # [B, L + F'·N, D]
        ctx, x = seq[:, :L], seq[:, L:]  # [B, L, D], [B, F'·N, D]
        rope = rope_cos_sin(cfg, F_, H, W, x.device) if cfg.use_rotary_positional_embeddings else None
        cp = self.cp if self.training else None  # models/context_parallel.py: the text stays whole
        if cp is not None:
            x = cp.shard(x, dim=1)  # [B, F'·N/cp, D]: this rank's video tokens
            rope = tuple(cp.shard(r, dim=0) for r in rope) if rope is not None else None  # their angles
        whole = (lambda y: y) if cp is None else (lambda y: cp.gather(y, dim=1))  # every rank's tokens

        hidden = None
        ac = self.grad_checkpointing if self.training else False  # models/checkpointing.py
        for i, block in enumerate(self.transformer_blocks):
            x, ctx = run_block(ac, i, block, x, ctx, emb, rope)
            if tap == i + 1:
                hidden = rearrange(whole(x), "b (f n) d -> b f n d", n=(H // p) * (W // p))  # [B, F', N, D]

        x = whole(self.proj_out(self.norm_out(self.norm_final(x), emb)))  # [B, F'·N, p_t·p·p·C_out]
        hw = dict(h=H // p, w=W // p, p=p, q=p)
        if cfg.patch_size_t is None:
            pred = rearrange(x, "b (f h w) (c p q) -> b f c (h p) (w q)", **hw)
        else:
            pred = rearrange(x, "b (f h w) (c t p q) -> b (f t) c (h p) (w q)", t=cfg.patch_size_t, **hw)
        return DiTOutput(pred=pred, hidden=hidden)  # pred [B, F, C_out, H, W]

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, *, dtype=torch.float32, device="cpu", **kw
    ) -> CogVideoXTransformer:
        """Load a diffusers ``transformer/`` folder (or a pipeline folder holding one): config.json plus
        ``diffusion_pytorch_model.safetensors``, or shards listed in its ``.index.json``. Keys and shapes must
        match exactly (``ValueError`` listing the differences); tensors are read one shard at a time, cast to
        ``dtype`` on ``device`` and assigned into a meta-built model (no second copy). ``kw`` set config
        fields (``attn_backend=...``). Returned in eval mode, as diffusers does."""
        folder = pretrained_folder(folder)
        cfg = CogVideoXConfig.from_json(folder / "config.json", **kw)
        shards = weight_files(folder)
        with torch.device("meta"):  # no init: every persistent tensor is assigned below
            model = cls(cfg)
        assign_weights(
            model, folder, shards, f"{CLASS_NAME}({cfg})", cast=lambda k, t: t.to(device=device, dtype=dtype)
        )
        pe = model.patch_embed
        if pe.pos_embedding is not None and pe.pos_embedding.is_meta:  # the sin-cos table is not in files
            pe.pos_embedding = torch.empty_like(pe.pos_embedding, device=device, dtype=dtype)
            model.reset_buffers()
        return model.eval()


def pad_frames(cfg, x_data: Tensor, cond: Cond) -> tuple[Tensor, Cond]:
    """CogVideoX 1.5's temporal padding of a training batch (module docstring): ``x_data`` [B, F, C, h, w]
    → [B, F + pad, C, h, w] with ``pad = (−F) mod patch_size_t`` copies of latent 0 in front, and
    ``cond.image_latents`` to the same length (``[img, 0, …]``: zeros appended; a whole-clip condition: a copy
    of its frame 0 in front). Unchanged for any other backbone config (``cfg`` may be a V-DiT's) and when F
    already divides."""
    p_t = getattr(cfg, "patch_size_t", None) if isinstance(cfg, CogVideoXConfig) else None
    pad = (-x_data.shape[1]) % p_t if p_t else 0
    if not pad:
        return x_data, cond
    x_data = torch.cat([x_data[:, :1].expand(-1, pad, -1, -1, -1), x_data], dim=1)  # [B, F + pad, C, h, w]
    image = cond.image_latents
    if image is None:
        return x_data, cond
    if image.shape[1] + pad != x_data.shape[1]:
        raise ValueError(
            f"Cond.image_latents {tuple(image.shape)} must have the {x_data.shape[1] - pad} latent frames of "
            f"the video latents before padding"
        )
    first_only = (image[:, 1:] == 0).flatten(1).all(1).view(-1, 1, 1, 1, 1)  # [B, 1, 1, 1, 1]
    zeros = image.new_zeros(image.shape[0], pad, *image.shape[2:])
    appended = torch.cat([image, zeros], dim=1)  # [img, 0, …]: CogVideo's trainer, the pipelines
    prepended = torch.cat([image[:, :1].expand(-1, pad, -1, -1, -1), image], dim=1)  # aligned with x_data
    return x_data, dataclasses.replace(cond, image_latents=torch.where(first_only, appended, prepended))


def num_tokens(cfg: CogVideoXConfig, frames: int, height: int, width: int) -> int:
    """Video tokens F'·h·w of a latent clip (text adds ``max_text_seq_length`` or the context length)."""
    return frames // (cfg.patch_size_t or 1) * (height // cfg.patch_size) * (width // cfg.patch_size)


def flops_per_sample(cfg: CogVideoXConfig, frames: int, height: int, width: int, text_len: int = 0) -> float:
    """Forward FLOPs (2·MAC, matmuls only) of one clip: blocks over L + N tokens, plus the embeddings and
    the output projection (anchors-cogvideox §8: 3.32e14 for 5B at 13x60x90). ``text_len=0``: the config's."""
    N = num_tokens(cfg, frames, height, width)
    L, D = text_len or cfg.max_text_seq_length, cfg.inner_dim
    block = (L + N) * 12 * D * D + 2 * (L + N) ** 2 * D  # qkv + out + 4x MLP, then QK^T and AV
    patch = cfg.patch_size**2 * (cfg.patch_size_t or 1)
    embed = L * cfg.text_embed_dim * D + N * patch * D * (cfg.in_channels + cfg.out_channels)
    return 2.0 * (cfg.num_layers * block + embed)


def preset(name: str) -> CogVideoXConfig:
    """``PRESETS[name]`` with a ValueError listing the valid names."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid: {sorted(PRESETS)}")
    return PRESETS[name]


__all__ = [
    "CogVideoXConfig",
    "CogVideoXTransformer",
    "PRESETS",
    "pad_frames",
    "preset",
    "rope_cos_sin",
    "sincos_3d_table",
]
__all__ += ["num_tokens", "flops_per_sample", "pretrained_folder", "weight_files"]
