"""``Cond``: the conditioning every backbone takes (DESIGN.md §7).

Every backbone is called ``model(x_t [B, F, C, H, W], t_model [B], cond: Cond, *, tap=None) -> DiTOutput``.
A backbone reads the fields it consumes and raises a ``ValueError`` naming a field it cannot use (a class
label given to CogVideoX, text given to a class-conditional V-DiT).

Fields (all optional, batch-first):
- ``label [B]`` int64 class ids (V-DiT; the null class is index ``num_classes``);
- ``context [B, L, Dc]`` text or VLM tokens, with ``context_mask [B, L]`` bool, True = keep (CogVideoX's T5
  tokens carry no mask: the padded tokens take part in attention, anchors-cogvideox §1.5);
- ``image_latents [B, F', C, h, w]`` the channel-concat image condition of CogVideoX-I2V (scaled VAE latents,
  the condition frame in place and zeros elsewhere) and of Wan-I2V (4 mask + 16 latent channels);
- ``image_context [B, Li, Di]`` image tokens for decoupled cross-attention (Wan-I2V: the 257 CLIP ViT-H
  penultimate-layer tokens, Di = 1280), kept apart from ``context`` so a backbone never has to guess where the
  image span ends (diffusers' Wan hard-codes 512 text tokens for that).

"Null" is not the same for every field and is named by whoever owns it: the backbone owns its null class, the
text encoder its empty-prompt embedding; an absent image is zeros. ``null()`` builds the unconditional
counterpart used by classifier-free guidance (``minivdit.sample.cfg_denoise_fn``) and ``drop(keep)`` applies
training-time condition dropout per sample. Image latents are kept by default in both: the CogVideoX-I2V
pipeline guides text only (its unconditional branch repeats the image latents) and its trainers drop the image
on their own schedule (p = 0.05, ``conditioning/i2v.py``), independently of the caption (p = 0.1).
Image tokens follow the same rule: ``WanImageToVideoPipeline.__call__`` passes the same ``image_embeds`` to
the conditional and the unconditional branch (diffusers 0.42.1, ``pipeline_wan_i2v.py`` l.780, 791), so text
CFG keeps them; only ``image=True`` drops them, to the null tokens given as ``image_context=`` (e.g. the CLIP
tokens of a blank frame) or to zeros (an absent image).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

FIELDS = ("label", "context", "context_mask", "image_latents", "image_context")


@dataclass(frozen=True)
class Cond:
    """Conditioning of one batch; every field optional (``Cond()`` is unconditional)."""

    label: Tensor | None = None
    """[B] int64 class ids."""
    context: Tensor | None = None
    """[B, L, Dc] text / VLM tokens."""
    context_mask: Tensor | None = None
    """[B, L] bool, True = attend to this token; None = all tokens."""
    image_latents: Tensor | None = None
    """[B, F', C, h, w] scaled VAE latents of the condition frame(s), zeros elsewhere."""
    image_context: Tensor | None = None
    """[B, Li, Di] image tokens for decoupled cross-attention (Wan-I2V: CLIP, [B, 257, 1280])."""

    def __post_init__(self) -> None:
        sizes = {f: getattr(self, f).shape[0] for f in FIELDS if getattr(self, f) is not None}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"Cond fields disagree on the batch size: {sizes}")
        if self.label is not None and self.label.ndim != 1:
            raise ValueError(f"Cond.label must be [B], got shape {tuple(self.label.shape)}")
        if self.context is not None and self.context.ndim != 3:
            raise ValueError(f"Cond.context must be [B, L, Dc], got shape {tuple(self.context.shape)}")
        if self.context_mask is not None:
            if self.context is None:
                raise ValueError("Cond.context_mask given without Cond.context")
            if self.context_mask.shape != self.context.shape[:2]:
                raise ValueError(
                    f"Cond.context_mask must be [B, L]={list(self.context.shape[:2])}, "
                    f"got shape {tuple(self.context_mask.shape)}"
                )
        if self.image_latents is not None and self.image_latents.ndim != 5:
            raise ValueError(
                f"Cond.image_latents must be [B, F', C, h, w], got shape {tuple(self.image_latents.shape)}"
            )
        if self.image_context is not None and self.image_context.ndim != 3:
            raise ValueError(
                f"Cond.image_context must be [B, Li, Di], got shape {tuple(self.image_context.shape)}"
            )

    # ------------------------------------------------------------------ helpers
    @property
    def batch_size(self) -> int | None:
        for f in FIELDS:
            if getattr(self, f) is not None:
                return getattr(self, f).shape[0]
        return None

    def given(self) -> tuple[str, ...]:
        """The names of the fields that are set."""
        return tuple(f for f in FIELDS if getattr(self, f) is not None)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Cond:
        return Cond(**{f.name: _to(getattr(self, f.name), device, non_blocking) for f in fields(self)})

    @staticmethod
    def cat(conds: list[Cond]) -> Cond:
        """Concatenate along the batch (CFG runs the conditional and unconditional halves as one batch)."""
        given = {c.given() for c in conds}
        if len(given) != 1:
            raise ValueError(f"Cond.cat needs the same fields set in every part, got {sorted(given)}")
        return Cond(**{f: torch.cat([getattr(c, f) for c in conds]) for f in given.pop()})

    def check_uses(self, owner: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> None:
        """Raise a ValueError naming every field ``owner`` cannot use, or one it needs that is missing."""
        extra = [f for f in self.given() if f not in allowed]
        if extra:
            raise ValueError(f"{owner} cannot use Cond.{', Cond.'.join(extra)} (it takes: {list(allowed)})")
        missing = [f for f in required if getattr(self, f) is None]
        if missing:
            raise ValueError(f"{owner} needs Cond.{', Cond.'.join(missing)}")

    # ------------------------------------------------------------------ CFG
    def drop(
        self,
        keep: Tensor,
        *,
        label: int | None = None,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
        image: bool = False,
        image_context: Tensor | None = None,
    ) -> Cond:
        """Per-sample condition dropout: where ``keep [B]`` (bool) is False, replace the label by the null
        class ``label``, the context by the null embedding ``context [L, Dc]`` (its ``context_mask [L]``),
        and, with ``image=True``, the image latents by zeros and the image tokens by ``image_context
        [Li, Di]`` (zeros when not given). A set label or context without its null raises; the image fields
        are kept unless ``image=True`` (module docstring)."""
        B = self.batch_size
        if keep.shape != (B,) or keep.dtype != torch.bool:
            raise ValueError(f"keep must be a [B]=[{B}] bool tensor, got {keep.dtype} {tuple(keep.shape)}")
        new = {}
        if self.label is not None:
            if label is None:
                raise ValueError("Cond.drop/null needs label=<the null class index> for Cond.label")
            new["label"] = torch.where(keep, self.label, torch.full_like(self.label, label))
        if self.context is not None:
            if context is None:
                raise ValueError("Cond.drop/null needs context=<the empty-prompt embedding [L, Dc]>")
            if context.shape != self.context.shape[1:]:
                raise ValueError(
                    f"null context must be [L, Dc]={list(self.context.shape[1:])}, got {tuple(context.shape)}"
                )
            k = keep.view(B, 1, 1)
            new["context"] = torch.where(k, self.context, context.to(self.context)[None])
            if self.context_mask is not None:
                null_mask = torch.ones_like(self.context_mask[0]) if context_mask is None else context_mask
                new["context_mask"] = torch.where(keep.view(B, 1), self.context_mask, null_mask.bool()[None])
        if image and self.image_latents is not None:
            k = keep.view(B, 1, 1, 1, 1)
            new["image_latents"] = torch.where(k, self.image_latents, torch.zeros_like(self.image_latents))
        if image and self.image_context is not None:
            null = torch.zeros_like(self.image_context[0]) if image_context is None else image_context
            if null.shape != self.image_context.shape[1:]:
                raise ValueError(
                    f"null image_context must be [Li, Di]={list(self.image_context.shape[1:])}, "
                    f"got {tuple(null.shape)}"
                )
            k = keep.view(B, 1, 1)
            new["image_context"] = torch.where(k, self.image_context, null.to(self.image_context)[None])
        return replace(self, **new)

    def null(self, **nulls) -> Cond:
        """The unconditional counterpart: ``drop`` with every sample dropped (same keyword arguments)."""
        B = self.batch_size
        if B is None:
            return self
        device = next(getattr(self, f).device for f in self.given())
        return self.drop(torch.zeros(B, dtype=torch.bool, device=device), **nulls)


def _to(x: Tensor | None, device, non_blocking: bool) -> Tensor | None:
    return None if x is None else x.to(device, non_blocking=non_blocking)


__all__ = ["Cond"]
