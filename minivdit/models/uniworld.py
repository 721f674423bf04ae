"""UniWorld-OSP2.0's VLM conditioning, as a wrapper: VLM hidden states → ``EncoderAdapter`` → the backbone's
own (frozen) text projection, optionally with the paper's first-frame image tokens f_img.

Reference: seeds/003 §3.2 (eq. 1-5) and the public code ``PKU-YuanGroup/UniWorld``, folder
``UniWorld-OSP2.0/`` (facts in ``reference/anchors-conditioning.md`` §2): ``ultrai2v/modules/flashi2v.py``
l.90-121 (``EncoderAdapter``), l.265-269 (its output enters Wan's ``text_embedding``), and
``train/train_uniworld_osp2.py`` l.249-258, l.319, l.349-355 (built with ``in_dim`` = the VLM's hidden size,
``hidden_dim = out_dim = 4096``; only the adapter trains). Written from those facts, not copied.

``UniWorld(base, cfg)`` has the common call shape (DESIGN.md §7) and sits around a text-to-video backbone
whose context width is ``cfg.out_dim`` (Wan: T5's 4096), typically ``FlashI2V(WanTransformer)``:

    cond.context       VLM hidden states [B, L, D_vlm] (``conditioning/vlm.py``: 1024 positions, all kept, no
                       mask, as released; or the valid ones with ``cond.context_mask``)
    f_map              EncoderAdapter: Linear(D_vlm → 4096), GELU (exact), Linear(4096 → 4096): [B, L, 4096]
    f_img (optional)   the start frame's latent z_c = ``cond.image_latents`` [B, 1, C, h, w] (the one FlashI2V
                       shifts by), patchified p × p → [B, h/p · w/p, C·p²] → Linear, GELU, Linear
                       → [B, N, 4096], concatenated after f_map (eq. 5: F = [F_map; F_img]); the mask, if
                       any, marks them valid
    base               ``base(x_t, t_model, cond with context = F)``: Wan's ``text_embedding`` maps 4096 → D

``cond.image_latents`` goes on to a base that takes it (FlashI2V, or a channel-concat I2V backbone) and is
dropped for a plain text-to-video one (f_img alone then carries the image). ``cfg`` / ``null_cond`` /
``grad_checkpointing`` are the base's, so the trainer and the samplers treat the wrapper as the backbone.

Deviations and choices:
- f_img is **not in the public code** (anchors §2.3): the paper names "a lightweight MLP" on frozen-VAE
  first-frame features and nothing more. Here: the VAE latent (not an intermediate layer), patch 2 (the
  backbone's own spatial patch: 1560 tokens at 480 × 832), a two-layer MLP as wide as the adapter, xavier with
  zero bias like it, but the output layer zero-init: at init the f_img tokens are exact zero rows in the 4096
  space, the rows the Wan pipelines already zero-pad the text with (``TextEncoderConfig.wan``) and that Wan
  attends unmasked, so turning f_img on starts from the context the backbone knows. Concatenated keys are
  never an exact no-op (a zero row still has the key ``to_k(text_embedding(0))``).
- ``f_img="decoupled"`` (anchors §6.1.6; Wan only): the same patches through an MLP to the blocks' width D,
  and in every block a ``GatedImageAttention``: the cross-attention's query, the tokens' own keys (RMS-normed)
  and values, summed into the cross-attention's output through its ``to_out`` weight, as Wan2.1-I2V's image
  branch, but scaled per channel by a zero-init gate, so the wrapped model is the base bit for bit at init.
  It is installed as forward hooks on the base's ``attn2`` modules: the backbone's code and keys stay
  untouched (a pretrained folder loads as it is); the wrapper hands the tokens to the hooks per forward.
- ``EncoderAdapter``'s ``p_drop`` argument is accepted and unused by the reference; not carried.
- ``zero_init_adapter=True`` (not released) zero-inits the adapter's output layer: the context starts as the
  backbone's ``text_embedding(0)`` rows (not the T5 output: every prompt then gives the same context).

Axis legend: B batch, L VLM tokens, N image tokens, C latent channels, h/w latent height/width.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
from einops import rearrange
from torch import Tensor

from minivdit.config import check_types
from minivdit.models.cond import Cond
from minivdit.models.dit import DiTOutput
from minivdit.models.flashi2v import BackboneWrapper, FlashI2V


@dataclass(frozen=True, kw_only=True)
class UniWorldConfig:
    """The adapter and the image branch; defaults = the released 7B-VLM / Wan setting."""

    vlm_dim: int = 3584
    """Hidden size of the VLM's states (Qwen2.5-VL-7B: 3584; 3B: 2048)."""
    hidden_dim: int = 4096
    """EncoderAdapter's hidden width (released: 4096)."""
    out_dim: int = 4096
    """Context width the backbone's text projection takes (Wan: T5-XXL's 4096)."""
    f_img: Literal["off", "concat", "decoupled"] = "off"
    """The paper's first-frame image tokens: "off" (the public code), "concat" (eq. 5, after the VLM tokens)
    or "decoupled" (their own keys and values in every cross-attention, gated; Wan only)."""
    f_img_patch: int = 2
    """Spatial patch of the start-frame latent for f_img (the backbone's: Wan (1, 2, 2))."""
    latent_channels: int = 16
    """Channels of the start-frame latent (the Wan VAE's 16)."""
    zero_init_adapter: bool = False
    """Zero-init the adapter's output layer (not released: xavier everywhere, zero biases)."""
    train: Literal["adapter", "all"] = "adapter"
    """What the trainer trains: "adapter" = the wrapper's own layers (the adapter; f_img when on) and LoRA's
    adapters when ``--lora.rank`` > 0, the base frozen (released: ``model.requires_grad_(False)``, only the
    adapter in the optimizer); "all" = every weight, the base's too."""

    def __post_init__(self) -> None:
        check_types(self)
        sizes = ("vlm_dim", "hidden_dim", "out_dim", "f_img_patch", "latent_channels")
        if small := {n: getattr(self, n) for n in sizes if getattr(self, n) < 1}:
            raise ValueError(f"UniWorldConfig sizes must be >= 1, got {small}")


class EncoderAdapter(nn.Module):
    """f_map: Linear(in → hidden), exact GELU, Linear(hidden → out); xavier-uniform weights, zero biases (the
    released ``EncoderAdapter``; 31.47 M parameters for 3584 → 4096 → 4096)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, *, zero_out: bool = False):
        super().__init__()
        self.fc1, self.act, self.fc2 = (
            nn.Linear(in_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, out_dim),
        )
        self.zero_out = zero_out
        if self.fc1.weight.device.type != "meta":
            self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        for fc in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)
        if self.zero_out:
            nn.init.zeros_(self.fc2.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class GatedImageAttention(nn.Module):
    """One block's decoupled f_img branch (Wan2.1-I2V's layout, anchors §1.8 / §6.1.6, plus a gate): the
    cross-attention's own query (recomputed from its input: ``norm_q(to_q(x))``), keys and values of the
    f_img tokens from this module's ``to_k`` / ``to_v`` (keys RMS-normed, as ``norm_added_k``), the result
    scaled per channel by ``gate`` (zero-init) and sent through the cross-attention's ``to_out`` weight (its
    bias is already in the text branch). ``gate = 0`` adds exact zeros: the base's output bit for bit."""

    def __init__(self, dim: int, heads: int, eps: float):
        super().__init__()
        self.heads = heads
        self.to_k, self.to_v = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.norm_k = nn.RMSNorm(dim, eps=eps)
        self.gate = nn.Parameter(torch.zeros(dim))
        if self.gate.device.type != "meta":
            self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        for fc in (self.to_k, self.to_v):
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)
        nn.init.ones_(self.norm_k.weight)
        nn.init.zeros_(self.gate)

    def forward(self, attn: nn.Module, x: Tensor, tokens: Tensor) -> Tensor:
        """``attn``: the block's cross-attention (``WanAttention``), x [B, S, D] its input, tokens [B, N, D]
        → what its output gains [B, S, D]."""
        from minivdit.models.attention import attention

        heads = "b s (h d) -> b h s d"
        q = rearrange(attn.norm_q(attn.to_q(x)), heads, h=self.heads)  # [B, H, S, Dh]
        k = rearrange(self.norm_k(self.to_k(tokens)), heads, h=self.heads)
        v = rearrange(self.to_v(tokens), heads, h=self.heads)
        out = rearrange(attention(q, k, v, backend=attn.backend), "b h s d -> b s (h d)")
        return nn.functional.linear(out * self.gate.to(out.dtype), attn.to_out[0].weight)


class UniWorld(BackboneWrapper):
    """VLM-conditioned ``base`` (module docstring). ``forward(x_t, t_model, cond: Cond(context=VLM states
    [B, L, vlm_dim], context_mask?, image_latents=z_c [B, 1, C, h, w] ...), *, tap, **kw)`` → the base's
    ``DiTOutput``; ``kw`` go to the base (FlashI2V's ``ratio``)."""

    def __init__(self, base: nn.Module, config: UniWorldConfig | None = None):
        super().__init__()
        self.base = base
        self.uw_cfg = cfg = config if config is not None else UniWorldConfig()
        device = next(base.parameters()).device
        with torch.device(device):
            self.adapter = EncoderAdapter(
                cfg.vlm_dim, cfg.hidden_dim, cfg.out_dim, zero_out=cfg.zero_init_adapter
            )
            self.image_proj, self.image_attn = None, None
            patch_dim = cfg.latent_channels * cfg.f_img_patch**2
            if cfg.f_img == "concat":
                self.image_proj = EncoderAdapter(patch_dim, cfg.hidden_dim, cfg.out_dim, zero_out=True)
            elif cfg.f_img == "decoupled":
                blocks = self._cross_attentions()
                D, first = base.cfg.inner_dim, blocks[0]
                # tokens in the blocks' width D (not the context's: no text projection on this path)
                self.image_proj = EncoderAdapter(patch_dim, cfg.hidden_dim, D)
                eps = first.norm_q.eps if first.norm_q.eps is not None else 1e-6
                self.image_attn = nn.ModuleList([GatedImageAttention(D, first.heads, eps) for _ in blocks])
                for attn, branch in zip(blocks, self.image_attn, strict=True):
                    # a hook, so the backbone's code and state-dict keys stay the base's (pretrained folders
                    # load unchanged); it reads the tokens this wrapper set for the current forward
                    attn.register_forward_hook(self._hook(branch), with_kwargs=True)
        self._tokens: Tensor | None = None

    def _cross_attentions(self) -> list[nn.Module]:
        """The backbone's text cross-attentions (Wan's ``blocks[i].attn2``), for the decoupled f_img."""
        from minivdit import dist

        attns = [getattr(b, "attn2", None) for b in dist.block_list(self.base)]
        if not attns or not all(hasattr(a, "to_q") and hasattr(a, "norm_q") for a in attns):
            raise ValueError(
                "UniWorldConfig.f_img='decoupled' needs a backbone with a text cross-attention per block "
                f"(Wan); {type(self.base).__name__} has none: use f_img='concat'"
            )
        return attns

    def _hook(self, branch: GatedImageAttention):
        def hook(attn, args, kwargs, out):
            if self._tokens is None:
                return out
            x = args[0] if args else kwargs["x"]
            return out + branch(attn, x, self._tokens.to(x.dtype))

        return hook

    @torch.no_grad()
    def init_weights(self) -> None:
        """The wrapper's own layers only (the base keeps its weights). Works after ``to_empty()``."""
        self.adapter.init_weights()
        if self.image_proj is not None:
            self.image_proj.init_weights()
        for branch in self.image_attn or ():
            branch.init_weights()

    # ------------------------------------------------------------ forward
    def image_tokens(self, z_c: Tensor) -> Tensor:
        """f_img: the start frame's latent [B, 1, C, h, w] → tokens [B, h/p · w/p, out_dim]."""
        p, C = self.uw_cfg.f_img_patch, self.uw_cfg.latent_channels
        if z_c is None or z_c.ndim != 5 or z_c.shape[1] != 1 or z_c.shape[2] != C:
            shape = None if z_c is None else tuple(z_c.shape)
            raise ValueError(
                f"f_img needs Cond.image_latents = the start frame encoded alone, [B, 1, {C}, h, w]; "
                f"got {shape}"
            )
        h, w = z_c.shape[-2:]
        if h % p or w % p:
            raise ValueError(f"f_img: latent {h}x{w} is not divisible by f_img_patch {p}")
        patches = rearrange(z_c[:, 0], "b c (h p) (w q) -> b (h w) (c p q)", p=p, q=p)  # [B, N, C·p²]
        return self.image_proj(patches.to(self.image_proj.fc1.weight.dtype))

    def context(self, cond: Cond) -> tuple[Tensor, Tensor | None]:
        """The context and mask the base takes: f_map of the VLM states, then f_img (eq. 5)."""
        vlm = cond.context
        if vlm is None or vlm.ndim != 3 or vlm.shape[-1] != self.uw_cfg.vlm_dim:
            shape = None if vlm is None else tuple(vlm.shape)
            raise ValueError(
                f"UniWorld needs Cond.context = VLM states [B, L, {self.uw_cfg.vlm_dim}], got {shape}"
            )
        ctx = self.adapter(vlm.to(self.adapter.fc1.weight.dtype))  # [B, L, out_dim]
        mask = cond.context_mask
        if self.uw_cfg.f_img != "concat":
            return ctx, mask
        img = self.image_tokens(cond.image_latents)  # [B, N, out_dim]
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones(img.shape[:2])], dim=1)  # [B, L + N]
        return torch.cat([ctx, img.to(ctx.dtype)], dim=1), mask

    def forward(self, x_t: Tensor, t_model: Tensor, cond: Cond, *, tap: int | None = None, **kw) -> DiTOutput:
        if not isinstance(cond, Cond):
            raise ValueError(f"cond must be a minivdit.models.cond.Cond, got {type(cond)}")
        ctx, mask = self.context(cond)
        takes_image = isinstance(self.base, FlashI2V) or getattr(self.base.cfg, "is_i2v", False)
        image = cond.image_latents if takes_image else None
        base_cond = dataclasses.replace(cond, context=ctx, context_mask=mask, image_latents=image)
        if self.image_attn is None:
            return self.base(x_t, t_model, base_cond, tap=tap, **kw)
        # read by the blocks' hooks; kept after the call: activation checkpointing recomputes the blocks in
        # the backward of this forward, and the next forward replaces them
        self._tokens = self.image_tokens(cond.image_latents)  # [B, N, D]
        return self.base(x_t, t_model, base_cond, tap=tap, **kw)


__all__ = ["EncoderAdapter", "UniWorld", "UniWorldConfig"]
