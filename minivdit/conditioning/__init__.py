"""What turns a training batch into the ``Cond`` a backbone takes (DESIGN.md §7).

``train_step`` makes one call, ``Conditioner(batch, generator) -> Cond``; the methods live in this package
(text encoders in ``text.py``, image-to-video and anyframe conditioners in ``i2v.py``). Everything is a pure
function of the batch and the generator the trainer seeds per micro-batch, so exact resume holds. Order of
the generator's draws: the caption keep mask (``rand(B)``), then the I2V condition (``i2v.image_condition``).
FlashI2V's start frame (``models.flashi2v.start_frame_latents``) draws nothing: the VAE is built with
``sample_posterior=False`` in its recipe, as the reference encodes with the posterior mean.

No model constants live here: the backbone owns its null class (``VDiT.null_cond``), the text encoder or the
text cache its empty-prompt embedding, the VAE its latent scale.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from minivdit.models.cond import Cond

if TYPE_CHECKING:  # conditioning/ depends on models/ only (DESIGN.md §1); a Batch is duck-typed here
    from minivdit.conditioning.i2v import I2VConfig
    from minivdit.data import Batch


def batch_cond(batch: Batch, *, num_classes: int) -> Cond:
    """The ``Cond`` of a batch: class labels when the model is class-conditional (``num_classes > 0``) and the
    cached text tokens (``Batch.text`` [B, L, Dt], ``Batch.text_mask`` [B, L]) when the batch carries them.
    Labels are range-checked here, once, with the values in the message."""
    label = None
    if num_classes:
        if batch.label.min() < 0 or batch.label.max() >= num_classes:
            raise ValueError(
                f"labels must be in [0, {num_classes}) (index {num_classes} is the CFG null class), "
                f"got {batch.label.tolist()}"
            )
        label = batch.label
    context = batch.text.float() if batch.text is not None else None  # cached in bf16; the model casts
    mask = batch.text_mask.bool() if batch.text_mask is not None else None
    return Cond(label=label, context=context, context_mask=mask)


class Conditioner:
    """The ``Cond`` of a training batch: labels, text (cached in the batch, or encoded online from
    ``Batch.caption``) with caption dropout, and the image-to-video condition.

    ``text_encoder``: a frozen encoder (``text.T5TextEncoder``) for online encoding, or None when the batches
    carry cached text. ``text_null``: the null text ``[L, Dt]`` (and mask) that replaces a dropped caption
    (``TextEncoderConfig.null``: the empty prompt's tokens or zeros, ``text.null_context``); taken from the
    encoder's ``null()`` when not given. ``text_dropout``: per-sample caption dropout in training
    (CogVideoX SAT ``ucg_rate`` 0.1). ``i2v`` + ``vae``: the image condition (``i2v.image_condition``),
    encoded under ``autocast_dtype`` (the autocast the trainer encodes the video latents under:
    ``torch.bfloat16`` in bf16 runs, None for none), so condition and video latents come out of the same VAE
    numerics. ``start_frame`` + ``vae``: FlashI2V's condition, ``Cond.image_latents`` = frame 0 of the clip
    VAE-encoded alone [B, 1, C, h, w] (``models.flashi2v.start_frame_latents``), never dropped.
    Cached frame-0 latents in the batch (``Batch.image_latents``, ``tools/cache_latents.py --start-frame``;
    the trainer checked their stamp, ``data.shards.start_frame_mismatches``) replace the online encode:
    FlashI2V's z_c as they are, I2V's "first" zero-padded and dropped (``i2v.cached_image_condition``, no
    pixels needed), anyframe's i = 0 samples (its other samples' clips are encoded online).
    ``context_mask=False`` drops the text mask from the ``Cond``: the zero-padded Wan context
    (``TextEncoderConfig.wan``) is attended whole, as in the Wan pipelines and FlashI2V's trainer.
    ``vlm``: a frozen VLM (``vlm.VLMEncoder``) in place of the text encoder (UniWorld-OSP2.0): each caption
    with its clip's frame 0 goes through the VLM's prompt; a dropped caption becomes "" *before* the VLM, with
    the same image (the released dataset blanks the caption, ``flashi2v_dataset.py`` l.115-145), so the null
    is per sample and no fixed null context is needed.

    Every draw comes from ``generator`` on its own device: the trainer hands a generator on the training
    device, so anyframe's fill noise (``[B', F, 3, H, W]``, ~200 MB per 49×480×720 sample) is drawn where it
    is used instead of on the CPU and copied."""

    def __init__(
        self,
        *,
        num_classes: int = 0,
        text_encoder=None,
        text_null: tuple[Tensor, Tensor | None] | None = None,
        text_dropout: float = 0.0,
        i2v: I2VConfig | None = None,
        start_frame: bool = False,
        context_mask: bool = True,
        vae=None,
        autocast_dtype: torch.dtype | None = None,
        vlm=None,
    ):
        if not 0.0 <= text_dropout < 1.0:
            raise ValueError(f"text dropout must be in [0, 1), got {text_dropout}")
        if i2v is not None and i2v.enabled and vae is None:
            raise ValueError("--i2v.mode needs the frozen VAE (--vae.kind, --vae.path)")
        self.num_classes, self.text_encoder, self.text_dropout = num_classes, text_encoder, text_dropout
        if start_frame and vae is None:
            raise ValueError("FlashI2V (--flashi2v) needs the frozen VAE (--vae.kind, --vae.path)")
        self.i2v = i2v if i2v is not None and i2v.enabled else None
        self.start_frame, self.context_mask = start_frame, context_mask
        self.vae, self.autocast_dtype, self.vlm = vae, autocast_dtype, vlm
        if vlm is not None and text_encoder is not None:
            raise ValueError("one context source: a VLM (--vlm.path) or a text encoder (--text.path)")
        if text_null is None and text_encoder is not None:
            null = text_encoder.null()  # TextEncoderConfig.null: T5("") or zeros (SAT)
            text_null = (null["context"], null["context_mask"])
        self.text_null = text_null

    @property
    def needs_prompts(self) -> bool:
        """Text-conditioned: samples need prompts (the in-training class grid does not apply)."""
        return self.text_encoder is not None or self.text_null is not None or self.vlm is not None

    def __call__(self, batch: Batch, generator: torch.Generator, device: torch.device) -> Cond:
        cond = batch_cond(batch, num_classes=self.num_classes)
        if cond.context is None and self.text_encoder is not None:
            if batch.caption is None:
                raise ValueError("online text encoding needs captions in the batch (a captioned dataset)")
            context, mask = self.text_encoder.encode(list(batch.caption))  # [B, L, Dt], [B, L] | None
            cond = Cond(label=cond.label, context=context.float(), context_mask=mask)
        B = batch.label.shape[0]
        keep = torch.rand(B, generator=generator, device=generator.device) >= self.text_dropout  # always
        if self.vlm is not None:
            if batch.caption is None or batch.video is None:
                raise ValueError("the VLM (--vlm.path) needs captions and pixel clips (frame 0) in the batch")
            captions = [c if k else "" for c, k in zip(batch.caption, keep.tolist(), strict=True)]
            context, mask = self.vlm.encode(captions, batch.video[:, 0])  # [B, L, D_vlm], [B, L] | None
            cond = Cond(label=cond.label, context=context, context_mask=mask)
        cond = cond.to(device)
        if cond.context is not None and self.text_dropout > 0 and self.vlm is None:
            if self.text_null is None:
                raise ValueError("caption dropout needs the empty-prompt tokens (cache them, or --text.path)")
            null, null_mask = self.text_null
            null_mask = null_mask.to(device) if null_mask is not None else None
            cond = cond.drop(keep.to(device), context=null.to(device).float(), context_mask=null_mask)
        first = getattr(batch, "image_latents", None)  # [B, 1, C, h, w] cached frame 0 (cache_latents.py)
        first = first.to(device) if first is not None else None
        if self.i2v is not None:
            from minivdit.conditioning.i2v import cached_image_condition, image_condition, latent_frames

            if first is not None and self.i2v.mode == "first":  # no encode, no pixels
                frames = (
                    batch.latents.shape[1]
                    if batch.latents is not None
                    else latent_frames(self.vae, batch.video.shape[1])
                )
                latents = cached_image_condition(first, frames, self.vae, self.i2v, generator)
            else:
                if batch.video is None:
                    raise ValueError(
                        f"--i2v.mode {self.i2v.mode} needs the pixel clips in the batch, not only latents"
                    )
                on = self.autocast_dtype is not None  # the autocast of the video latents' encode (train_step)
                with torch.autocast(device.type, dtype=self.autocast_dtype or torch.bfloat16, enabled=on):
                    video = batch.video.to(device)
                    latents, _ = image_condition(video, self.vae, self.i2v, generator, first=first)
            cond = Cond(
                label=cond.label, context=cond.context, context_mask=cond.context_mask, image_latents=latents
            )
        if self.start_frame:
            from minivdit.models.flashi2v import start_frame_latents

            if first is not None:  # cached: frame 0 encoded clean, the posterior mean (as the reference)
                z_c = first.float()
            elif batch.video is None:
                raise ValueError("--flashi2v needs the pixel clips in the batch (frame 0), not only latents")
            else:
                on = self.autocast_dtype is not None  # the autocast of the video latents' encode (train_step)
                with torch.autocast(device.type, dtype=self.autocast_dtype or torch.bfloat16, enabled=on):
                    z_c = start_frame_latents(self.vae, batch.video[:, 0].to(device))  # [B, 1, C, h, w] fp32
            cond = replace(cond, image_latents=z_c)
        if not self.context_mask:
            cond = replace(cond, context_mask=None)
        return cond


__all__ = ["batch_cond", "Conditioner"]
