"""Shared layers of the DiT family: the pieces every backbone in ``models/`` is built from.

Follows DiT (facebookresearch/DiT ``models.py``) and Latte (Vchitect/Latte ``models/latte.py``): module and
parameter names are theirs (``adaLN_modulation``, ``qkv``/``proj``, ``fc1``/``fc2``, ``mlp.0``/``mlp.2``,
``embedding_table``), so their checkpoints map onto ours with a short key map (``tools/convert_weights.py``).

Notable deviations from the references:
- Attention calls ``models/attention.py`` (SDPA / flash-attn / xformers) instead of Latte's hand-written math.
- ``DiTBlock`` and ``FinalLayer`` compute the adaLN modulation once per *sample* and broadcast it to the
  sample's sequences; Latte repeats the conditioning vector per sequence first (256× for a temporal block)
  and runs the modulation Linear on every copy. Same numbers, less work.
- The label embedder always has the extra CFG null row (index ``num_classes``), as Latte/DiT do whenever
  ``class_dropout_prob > 0``.
- Optional 3-D RoPE (for full-3D attention) and optional QK-norm; both off in the Latte layout.

Axis legend: B batch, S sequences (B·F or B·N), L sequence length, D width, H heads, Dh head width.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from minivdit.models.attention import Backend, attention
from minivdit.models.context_parallel import ContextParallel


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: x·(1 + scale) + shift, with shift/scale [S, 1, D] broadcast over the sequence."""
    return x * (1 + scale) + shift


#################################################################################
#                    Sine/cosine tables (MAE / DiT / Latte)                     #
#################################################################################


def sincos_1d(dim: int, pos: Tensor) -> Tensor:
    """[len(pos), dim] fp64 table: sin of the first half of the frequencies ‖ cos (MAE
    ``get_1d_sincos_pos_embed``)."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding width must be even, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    out = torch.outer(pos.reshape(-1).to(torch.float64), omega)  # [M, D/2]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_2d(dim: int, grid_h: int, grid_w: int) -> Tensor:
    """[grid_h·grid_w, dim] fp64 table in row-major (h, w) token order; the first half of the width encodes w,
    the second h, as MAE (whose ``np.meshgrid(grid_w, grid_h)`` puts the w coordinate first)."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding width must be divisible by 4, got {dim}")
    hh, ww = torch.meshgrid(
        torch.arange(grid_h, dtype=torch.float64), torch.arange(grid_w, dtype=torch.float64), indexing="ij"
    )
    return torch.cat([sincos_1d(dim // 2, ww), sincos_1d(dim // 2, hh)], dim=1)


def sincos_3d(dim: int, frames: int, grid_h: int, grid_w: int) -> Tensor:
    """[frames·grid_h·grid_w, dim] fp64 table: a quarter of the width for time, the rest 2-D spatial (for
    researchers who want absolute 3-D positions instead of RoPE)."""
    if dim % 8:
        raise ValueError(f"3-D sin-cos embedding width must be divisible by 8, got {dim}")
    d_t = dim // 4
    spatial = sincos_2d(dim - d_t, grid_h, grid_w)  # [N, D - Dt]
    temporal = sincos_1d(d_t, torch.arange(frames))  # [F, Dt]
    n = grid_h * grid_w
    return torch.cat([temporal.repeat_interleave(n, dim=0), spatial.repeat(frames, 1)], dim=1)


#################################################################################
#                                 3-D RoPE                                      #
#################################################################################


def rope_3d_dims(head_dim: int) -> tuple[int, int, int]:
    """Split of the head width over (t, h, w): h and w get 2·⌊Dh/6⌋ each, t the rest (all even)."""
    d_hw = 2 * (head_dim // 6)
    d_t = head_dim - 2 * d_hw
    if head_dim % 2 or d_hw == 0:
        raise ValueError(f"3-D RoPE needs an even head width >= 6, got {head_dim}")
    return d_t, d_hw, d_hw


def rope_3d(head_dim: int, frames: int, grid_h: int, grid_w: int, theta: float = 10000.0) -> Tensor:
    """Rotation angles [F·h·w, Dh/2] (fp32) for tokens in (f, h, w) row-major order."""
    angles = []
    for d, n in zip(rope_3d_dims(head_dim), (frames, grid_h, grid_w), strict=True):
        freqs = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)  # [d/2]
        angles.append(torch.outer(torch.arange(n, dtype=torch.float64), freqs))  # [n, d/2]
    t, h, w = angles
    grid = torch.cat(
        [
            t[:, None, None].expand(-1, grid_h, grid_w, -1),
            h[None, :, None].expand(frames, -1, grid_w, -1),
            w[None, None, :].expand(frames, grid_h, -1, -1),
        ],
        dim=-1,
    )  # [F, h, w, Dh/2]
    return rearrange(grid, "f h w d -> (f h w) d").float()


def apply_rope(x: Tensor, angles: Tensor) -> Tensor:
    """Rotate consecutive pairs (x[2i], x[2i+1]) of x [B, H, L, Dh] by angles [L, Dh/2]; computed in fp32."""
    xf = rearrange(x.float(), "b h l (d two) -> b h l d two", two=2)
    cos, sin = angles.cos(), angles.sin()  # [L, Dh/2]
    x_even, x_odd = xf[..., 0], xf[..., 1]
    out = torch.stack([x_even * cos - x_odd * sin, x_even * sin + x_odd * cos], dim=-1)
    return rearrange(out, "b h l d two -> b h l (d two)").to(x.dtype)


#################################################################################
#                             Attention and MLP                                 #
#################################################################################


class Attention(nn.Module):
    """Multi-head self-attention (timm layout: one ``qkv`` Linear, one ``proj`` Linear)."""

    def __init__(self, dim: int, num_heads: int, *, qk_norm: bool = False, backend: Backend = "sdpa"):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.backend = num_heads, backend
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = nn.RMSNorm(dim // num_heads, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(dim // num_heads, eps=1e-6) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)
        self.cp: ContextParallel | None = None  # set by minivdit.dist.parallelize (--parallel.cp)

    def forward(self, x: Tensor, rope: Tensor | None = None) -> Tensor:
        q, k, v = rearrange(self.qkv(x), "s l (three h d) -> three s h l d", three=3, h=self.num_heads)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:  # under context parallelism: this rank's slice of tokens and of the table
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        attend = partial(attention, backend=self.backend)
        if self.cp is not None and self.training:  # x holds L/cp tokens: Ulysses all-to-all around attention
            x = self.cp.attention(q, k, v, attend)[0]  # [S, H, L/cp, Dh]
        else:
            x = attend(q, k, v)  # [S, H, L, Dh]
        return self.proj(rearrange(x, "s h l d -> s l (h d)"))


class Mlp(nn.Module):
    """Two-layer MLP with tanh-GELU (timm ``Mlp`` as DiT/Latte configure it)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


#################################################################################
#                   Embedding layers for timesteps and labels                   #
#################################################################################


class TimestepEmbedder(nn.Module):
    """Scalar ``t_model`` -> [B, D]: 256-d sinusoidal features (cos ‖ sin, max period 10^4), then an MLP."""

    def __init__(self, dim: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    @staticmethod
    def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
        """[B] -> [B, dim] in fp32 (DiT's layout: cos first, then sin)."""
        half = dim // 2
        freqs = torch.exp(
            -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
        )
        args = t.float()[:, None] * freqs[None]  # [B, dim/2]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        return F.pad(emb, (0, dim % 2))

    def forward(self, t: Tensor) -> Tensor:
        freq = self.timestep_embedding(t, self.freq_dim)  # [B, 256] fp32
        return self.mlp(freq.to(self.mlp[0].weight.dtype))  # [B, D]


class LabelEmbedder(nn.Module):
    """Class labels -> [B, D]. Owns classifier-free-guidance label dropout: in training each label is replaced
    by the null class (index ``num_classes``) with probability ``dropout_prob``. This is the only place in
    minivdit that drops labels (REPA dropped them twice, hence its ``--legacy`` flag)."""

    def __init__(self, num_classes: int, dim: int, dropout_prob: float):
        super().__init__()
        self.num_classes, self.dropout_prob = num_classes, dropout_prob
        self.embedding_table = nn.Embedding(num_classes + 1, dim)  # +1: the CFG null class

    def forward(self, labels: Tensor) -> Tensor:
        if self.training and self.dropout_prob > 0:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        return self.embedding_table(labels)


#################################################################################
#                           adaLN-Zero DiT block                                #
#################################################################################


def _per_sequence(mod: Tensor, num_seq: int) -> Tensor:
    """Per-sample modulation [B, k·D] -> per-sequence [S, 1, k·D] for batch-major sequences S = B·R."""
    if num_seq % mod.shape[0]:
        raise ValueError(f"{num_seq} sequences are not a multiple of the batch {mod.shape[0]}")
    return mod.repeat_interleave(num_seq // mod.shape[0], dim=0).unsqueeze(1)


class DiTBlock(nn.Module):
    """A DiT block with adaptive layer norm zero (adaLN-Zero) conditioning (DiT §3.2; Latte
    TransformerBlock)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        *,
        qk_norm: bool = False,
        backend: Backend = "sdpa",
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads, qk_norm=qk_norm, backend=backend)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: Tensor, c: Tensor, rope: Tensor | None = None) -> Tensor:
        """x [S, L, D] with S = B·R batch-major sequences; c [B, D] one conditioning vector per sample."""
        mod = _per_sequence(self.adaLN_modulation(c), x.shape[0])  # [S, 1, 6D]
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=-1)
        x = x + gate_msa * self.attn(modulate(self.norm1(x), shift_msa, scale_msa), rope)
        return x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    """adaLN (shift, scale; no gate) then a zero-initialised Linear to p·p·C_out values per token."""

    def __init__(self, dim: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = _per_sequence(self.adaLN_modulation(c), x.shape[0]).chunk(2, dim=-1)  # [S, 1, D] each
        return self.linear(modulate(self.norm_final(x), shift, scale))  # [S, L, p·p·C_out]
