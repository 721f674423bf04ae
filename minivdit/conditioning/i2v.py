"""Image-to-video conditioning: the ``Cond.image_latents [B, F', C, h, w]`` of CogVideoX-I2V and anyframe.

Two entry points, both pure functions of their inputs and a ``torch.Generator`` (DESIGN.md §7: the trainer
seeds the generator per micro-batch, so a resumed run draws the same conditions):

- ``image_condition(video, vae, cfg, generator) -> (image_latents, frame_index)`` for training;
- ``inference_condition(image, vae, num_frames, frame_index)`` for sampling.

The VAE is any minivdit VAE (``minivdit.models.vae``): ``encode(video [B, F, 3, H, W], generator=g)``
returns latents already multiplied by its ``scaling_factor`` (the VAE owns the constant) and draws its
posterior sample from ``g`` (or returns the mean with ``sample_posterior=False``, drawing nothing).

Mode "first" (CogVideoX-I2V; SAT ``sat/diffusion_video.py: shared_step`` + ``add_noise_to_first_frame``,
CogVideo ``finetune/models/cogvideox_i2v/lora_trainer.py: compute_loss``, diffusers
``examples/cogvideo/train_cogvideox_image_to_video_lora.py``; reference/anchors-cogvideox.md §4):
  1. take pixel frame 0 and add noise in pixel space: ``img + σ·ε``, ``σ = exp(N(noise_log_mean,
     noise_log_std²))`` (−3, 0.5: median σ ≈ 0.05 on [−1, 1] pixels), ε ~ N(0, I);
  2. encode it *alone*, as a one-frame clip (→ one latent frame), with the frozen VAE under ``no_grad``;
  3. zero-pad along latent frames to F' = (F − 1)/4 + 1: the image latent at index 0, zeros at 1..F'−1 (SAT
     ``noised_image_all_concat: false``);
  4. condition dropout: with probability ``dropout`` the image latents become zeros (SAT
     ``noised_image_dropout: 0.05``).

Mode "anyframe" (dREPA blog, ``seeds/000_*.txt`` "Anyframe Conditioning"; reference/anchors-modules.md §5.3):
  1. draw the condition frame i per sample, uniformly over 0..F−1 (the blog says "randomly"; uniform is the
     natural reading), or fix it with ``frame_index``;
  2. i = 0 falls back to mode "first" exactly ("the remaining latents are zero-padded"): the same latents, bit
     for bit, as mode "first" with the same generator state (see the RNG order);
  3. i > 0: build a clip-sized pixel tensor whose frame i is the condition frame and whose other frames are
     N(0, anyframe_noise_std²) noise (the blog: "zero-mean Gaussian noise of variance 0.07"; zeros gave poor
     VAE reconstructions), encode the whole clip (→ F' latent frames, all of them non-zero in general: pixel
     frame i lands in latent ⌈i/4⌉ and, through the causal convolutions, in the ones after it);
  4. the same condition dropout.

  Noise augmentation in anyframe: the blog does not say. We apply the same pixel noise σ·ε to the condition
  frame for every i (``anyframe_noise_aug=True``): the i = 0 fallback must keep it (it *is* the CogVideoX
  training path), the pretrained I2V model was trained on noised conditions, and a condition whose noise level
  depends on whether i = 0 would tell the model something it does not see at inference (where no noise is
  added for any i). ``anyframe_noise_aug=False`` leaves frames i > 0 clean (the blog read literally).

RNG order (all draws from ``generator``, on ``generator.device``, fp32; nothing else touches a global RNG; the
trainer's generator lives on the training device, so the fill noise of step 6 is drawn where it is used):
  1. ``randn(B)`` → log σ = noise_log_mean + noise_log_std · n  (``randn(1)`` with ``noise_per="batch"``);
  2. ``randn(B, 1, 3, H, W)`` → ε (the pixel noise of the condition frame, whichever frame that is);
  3. ``rand(B)`` → keep = u ≥ dropout  (``rand(1)`` with ``dropout_per="batch"``);
  4. ``vae.encode(noised frame 0 [B, 1, 3, H, W], generator=generator)`` → the VAE's posterior draw, for all
     B samples (skipped only when ``frame_index`` fixes a nonzero i, so that no sample can take the fallback);
  -- mode "first" stops here; anyframe goes on:
  5. the frame index: ``randint(0, F, (B,))``; with ``first_frame_prob`` p: ``rand(B) < p`` then
     ``randint(1, F, (B,))``; nothing when ``frame_index`` is fixed;
  6. ``randn(B', F, 3, H, W)`` → the fill noise of the B' samples with i > 0 (in batch order);
  7. ``vae.encode(those B' clips, generator=generator)`` → the VAE's posterior draw.
  Steps 1-4 are identical in both modes, which is what makes the i = 0 fallback exact for every sample,
  drawn i included. Their draws come before any anyframe-only draw, and the dropout draw comes before every
  VAE call, so the keep mask does not depend on ``sample_posterior``. The price: with a drawn i, frame 0 of
  every sample is encoded even if no sample ends up using it (one frame per sample, ~1/F of the clip encode).

Deviations and choices (from the sources above):
- σ per sample and dropout per sample are the defaults (σ: SAT, diffusers; dropout: diffusers' per-example
  ``random.random()``). SAT draws the dropout once per batch (``dropout_per="batch"``); CogVideo's finetune
  trainer draws one σ per batch (``noise_per="batch"``) and has no image dropout (``dropout=0``).
- The diffusers example encodes the noised image once per video when it caches the dataset (σ fixed per
  video); here, as in SAT and CogVideo's trainer, it is re-drawn and re-encoded every step.
- CogVideoX 1.5 (``vae.config.invert_scale_latents``): the diffusers I2V pipeline multiplies the image
  latents by 1/scaling_factor instead of scaling_factor ("the CogVideoX team forgot to multiply the scaling
  factor during training"). We follow the VAE flag in training *and* inference, so a fine-tune sees what the
  released 1.5-I2V pipeline feeds it (CogVideo's 1.5 finetune trainer multiplies by the factor instead; its
  own validation pipeline then divides). The condition latents, anyframe clips included, are scaled by
  (1/s²) after ``encode`` (which returns s·z): equal to diffusers' (1/s)·z up to float rounding.
- Padding the latent frames to a multiple of 1.5's ``patch_size_t`` is the caller's, as for the video
  latents (``models.cogvideox.pad_frames``, called by ``train_step``: ``[img, 0, …]`` at the padded length,
  as CogVideo's 1.5 trainer and the pipeline). SAT's z is a third reading of the scale: see that module.
- The returned ``frame_index`` keeps the drawn index of a dropped sample (its latents are zeros).

Classifier-free guidance: the CogVideoX-I2V pipelines keep the image latents in the unconditional branch
(diffusers duplicates ``image_latents`` for both halves; SAT sets ``uc["concat"] = image``), i.e. they guide
the text only. ``Cond.null()`` / ``Cond.drop()`` keep ``image_latents`` by default for that reason; the
training-time image dropout lives here, independent of the caption dropout.

Axis legend: B batch, F pixel frames, F' latent frames, C latent channels, H/W pixels, h/w latent grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
from torch import Tensor

from minivdit.config import check_types

ANYFRAME_NOISE_STD = math.sqrt(0.07)
"""Std of the anyframe fill noise: the dREPA blog's "zero-mean Gaussian noise of variance 0.07" (≈ 0.2646)."""


@dataclass(frozen=True, kw_only=True)
class I2VConfig:
    """Image-to-video conditioning of the training batch (CogVideoX-I2V first frame, or dREPA anyframe)."""

    mode: Literal["off", "first", "anyframe"] = "off"
    """"off": no image condition; "first": CogVideoX-I2V (noised frame 0 encoded alone, zero-padded);
    "anyframe": the dREPA blog's any-frame condition (frame i in a clip of noise, encoded whole; i = 0 falls
    back to "first" exactly)."""
    noise_log_mean: float = -3.0
    """Mean of log σ of the pixel noise added to the condition frame before encoding (SAT
    ``add_noise_to_first_frame``: −3)."""
    noise_log_std: float = 0.5
    """Std of log σ (SAT: 0.5). σ = exp(N(noise_log_mean, noise_log_std²)); 0 fixes σ = exp(mean)."""
    noise_per: Literal["sample", "batch"] = "sample"
    """One σ per sample (SAT, diffusers) or one for the whole batch (CogVideo finetune trainer)."""
    dropout: float = 0.05
    """Probability that the whole image condition is replaced by zeros (SAT ``noised_image_dropout``)."""
    dropout_per: Literal["sample", "batch"] = "sample"
    """Dropout decided per sample (diffusers example) or once for the batch (SAT)."""
    anyframe_noise_std: float = ANYFRAME_NOISE_STD
    """Anyframe: std of the N(0, std²) pixel noise that fills the frames other than the condition frame. The
    blog gives the *variance*, 0.07, so the default is √0.07 ≈ 0.2646."""
    anyframe_noise_aug: bool = True
    """Anyframe: add the σ·ε pixel noise to the condition frame for i > 0 as well (always added for i = 0,
    the CogVideoX fallback). The blog does not say; see the module docstring."""
    frame_index: int | None = None
    """Anyframe: the condition frame; None draws it per sample (uniform over 0..F−1, or see
    ``first_frame_prob``); an int fixes it (0 = always the fallback). Mode "first" accepts None or 0."""
    first_frame_prob: float | None = None
    """Anyframe with a drawn index: probability of i = 0 (the fallback), the rest uniform over 1..F−1. None
    = uniform over 0..F−1 (P(i = 0) = 1/F). Not in the blog; a knob to keep more of the pretrained task."""

    def __post_init__(self) -> None:
        check_types(self)
        for name, value, choices in (
            ("mode", self.mode, ("off", "first", "anyframe")),
            ("noise_per", self.noise_per, ("sample", "batch")),
            ("dropout_per", self.dropout_per, ("sample", "batch")),
        ):
            if value not in choices:
                raise ValueError(f"I2VConfig.{name} must be one of {choices}, got {value!r}")
        if not math.isfinite(self.noise_log_mean):
            raise ValueError(f"I2VConfig.noise_log_mean must be finite, got {self.noise_log_mean}")
        if not self.noise_log_std >= 0.0:
            raise ValueError(f"I2VConfig.noise_log_std must be ≥ 0, got {self.noise_log_std}")
        if not 0.0 <= self.dropout <= 1.0:
            raise ValueError(f"I2VConfig.dropout must be in [0, 1], got {self.dropout}")
        if not self.anyframe_noise_std >= 0.0:
            raise ValueError(f"I2VConfig.anyframe_noise_std must be ≥ 0, got {self.anyframe_noise_std}")
        if self.frame_index is not None and self.frame_index < 0:
            raise ValueError(f"I2VConfig.frame_index must be ≥ 0 or None, got {self.frame_index}")
        if self.mode == "first" and self.frame_index not in (None, 0):
            raise ValueError(
                f"I2VConfig.frame_index={self.frame_index} needs mode 'anyframe' (mode 'first' conditions on "
                "frame 0)"
            )
        if self.first_frame_prob is not None:
            if not 0.0 <= self.first_frame_prob <= 1.0:
                raise ValueError(f"I2VConfig.first_frame_prob must be in [0, 1], got {self.first_frame_prob}")
            if self.frame_index is not None:
                raise ValueError(
                    f"I2VConfig.first_frame_prob={self.first_frame_prob} needs a drawn index "
                    f"(frame_index=None), got frame_index={self.frame_index}"
                )

    @property
    def enabled(self) -> bool:
        return self.mode != "off"


# ---------------------------------------------------------------------------------------------- training


def image_condition(
    video: Tensor,
    vae: nn.Module,
    cfg: I2VConfig,
    generator: torch.Generator,
    first: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The training image condition of a batch (module docstring: recipe and RNG order).

    ``video`` [B, F, 3, H, W] float in [−1, 1], F = 4k + 1 (the VAE's ``temporal_compression``·k + 1);
    ``vae`` frozen, in eval mode. Returns ``image_latents`` [B, F', C, h, w] fp32 (scaled as the VAE scales,
    zeros where dropped) and ``frame_index`` [B] int64 (the condition frame; zeros in mode "first"), both on
    ``video.device``. A pure function of (``video``, ``generator``'s state); it advances ``generator``.

    ``first``: frame 0's latents cached with their noise ([B, 1, C, h, w] as ``encode`` returns them;
    ``tools/cache_latents.py --start-frame noised``): step 4's encode (and its posterior draw) is skipped, so
    anyframe encodes only the noise-filled clips of its i > 0 samples (see ``cached_image_condition``)."""
    if cfg.mode == "off":
        raise ValueError("image_condition: I2VConfig.mode is 'off' (no image condition to build)")
    B, F, _, H, W = _check_video(video, "video")
    F_lat = latent_frames(vae, F)
    fixed = cfg.frame_index if cfg.mode == "anyframe" else 0
    if fixed is not None and fixed >= F:
        raise ValueError(
            f"I2VConfig.frame_index {fixed} is out of range for a clip of F = {F} frames (0..{F - 1})"
        )
    dev, gdev = video.device, generator.device

    # 1-3: σ, ε, keep — the same draws in both modes (module docstring)
    sigma, eps = _pixel_noise(cfg, B, H, W, generator, dev)  # [B], [B, 1, 3, H, W]
    u = torch.rand(B if cfg.dropout_per == "sample" else 1, generator=generator, device=gdev)
    keep = (u >= cfg.dropout).expand(B).to(dev)  # [B] bool

    def noised(frames: Tensor, rows: Tensor | slice) -> Tensor:  # [b, 1, 3, H, W] + σ·ε of those rows
        return (frames.float() + sigma[rows].view(-1, 1, 1, 1, 1) * eps[rows]).to(video.dtype)

    latents: Tensor | None = None
    with torch.no_grad():
        # 4: the CogVideoX path for every sample that can take it: frame 0 + σε, encoded alone, zero-padded
        if fixed in (None, 0):
            if first is None:
                x0 = noised(video[:, :1], slice(None))  # [B, 1, 3, H, W]
                first = vae.encode(x0, generator=generator).float()  # [B, 1, C, h, w]
            elif first.shape[0] != B:
                raise ValueError(f"cached frame-0 latents {tuple(first.shape)} for a batch of {B} clips")
            latents = _zero_pad(first.float(), F_lat)  # [B, F', C, h, w]
        index = torch.zeros(B, dtype=torch.long, device=dev)
        if cfg.mode == "anyframe":
            # 5: the condition frame
            index = _draw_index(cfg, B, F, generator).to(dev) if fixed is None else index.fill_(fixed)
            rows = (index != 0).nonzero().squeeze(1)  # [B'] the samples that do not take the fallback
            if len(rows):
                # 6: a clip of N(0, std²) noise with the condition frame at i
                fill = torch.randn(len(rows), F, 3, H, W, generator=generator, device=gdev).to(dev)
                clip = (cfg.anyframe_noise_std * fill).to(video.dtype)  # [B', F, 3, H, W]
                at = index[rows]  # [B']
                cond = video[rows, at][:, None]  # [B', 1, 3, H, W]
                clip[torch.arange(len(rows), device=dev), at] = (
                    noised(cond, rows) if cfg.anyframe_noise_aug else cond
                )[:, 0]
                # 7: the whole clip through the VAE
                any_lat = vae.encode(clip, generator=generator).float()  # [B', F', C, h, w]
                if latents is None:
                    latents = any_lat.new_zeros(B, *any_lat.shape[1:])
                latents[rows] = any_lat
    assert latents is not None  # step 4 or step 7 ran: a fixed nonzero i sends every sample to step 7
    latents = torch.where(keep[:, None, None, None, None], latents, torch.zeros_like(latents))
    return _invert_scale(latents, vae), index


def cached_image_condition(
    first: Tensor, num_latent_frames: int, vae: nn.Module, cfg: I2VConfig, generator: torch.Generator
) -> Tensor:
    """Mode "first" from frame 0's cached latents, without pixels: ``image_latents`` [B, F', C, h, w] fp32.

    ``first`` [B, 1, C, h, w]: frame 0 with CogVideoX's pixel noise σ·ε, encoded alone
    (``tools/cache_latents.py --start-frame noised``: σ and ε drawn once per clip at caching time, the
    posterior mean; as the diffusers example, which encodes the noised image once per video when it caches).
    Here: zero-padded to ``num_latent_frames`` and dropped with ``cfg.dropout`` (step 3, the only draw from
    ``generator``). Deviation from the online path: the noise and the VAE's posterior draw are fixed per clip
    instead of fresh at each step (named in ``docs/fidelity.md``)."""
    if cfg.mode != "first":
        raise ValueError(
            f"cached_image_condition builds mode 'first' (frame 0), got --i2v.mode {cfg.mode!r}: anyframe "
            "encodes its noise-filled clips online (image_condition with first=...)"
        )
    if first.ndim != 5 or first.shape[1] != 1:
        raise ValueError(f"cached frame-0 latents must be [B, 1, C, h, w], got shape {tuple(first.shape)}")
    B, gdev = first.shape[0], generator.device
    u = torch.rand(B if cfg.dropout_per == "sample" else 1, generator=generator, device=gdev)
    keep = (u >= cfg.dropout).expand(B).to(first.device)  # [B] bool
    latents = _zero_pad(first.float(), num_latent_frames)  # [B, F', C, h, w]
    latents = torch.where(keep[:, None, None, None, None], latents, torch.zeros_like(latents))
    return _invert_scale(latents, vae)


def noised_first_frame(frame: Tensor, cfg: I2VConfig, generator: torch.Generator) -> Tensor:
    """Frame 0 [B, 1, 3, H, W] + σ·ε (steps 1-2 of the module docstring: σ log-normal per ``noise_per``, ε ~
    N(0, I)), drawn from ``generator``: what ``tools/cache_latents.py
    --start-frame noised`` encodes once per clip."""
    B, _, _, H, W = frame.shape
    sigma, eps = _pixel_noise(cfg, B, H, W, generator, frame.device)  # [B], [B, 1, 3, H, W]
    return (frame.float() + sigma.view(-1, 1, 1, 1, 1) * eps).to(frame.dtype)


def _draw_index(cfg: I2VConfig, B: int, F: int, generator: torch.Generator) -> Tensor:
    """Step 5: [B] int64 on the generator's device."""
    gdev = generator.device
    if F == 1:
        return torch.zeros(B, dtype=torch.long, device=gdev)
    if cfg.first_frame_prob is None:
        return torch.randint(0, F, (B,), generator=generator, device=gdev)
    first = torch.rand(B, generator=generator, device=gdev) < cfg.first_frame_prob
    later = torch.randint(1, F, (B,), generator=generator, device=gdev)
    return torch.where(first, torch.zeros_like(later), later)


# ---------------------------------------------------------------------------------------------- sampling


def inference_condition(
    image: Tensor,
    vae: nn.Module,
    num_frames: int,
    frame_index: int = 0,
    *,
    noise_std: float = ANYFRAME_NOISE_STD,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The image condition for sampling: ``image`` [B, 3, H, W] in [−1, 1] placed at pixel frame
    ``frame_index`` of a ``num_frames``-frame clip → ``image_latents`` [B, F', C, h, w] fp32.

    No noise augmentation and no dropout (the CogVideoX-I2V pipeline adds none). ``frame_index = 0`` is the
    pipeline's path (``prepare_latents``): the image encoded alone, zero-padded. ``frame_index > 0`` is
    anyframe: the other frames are N(0, ``noise_std``²) noise, then the whole clip is encoded. The fill noise
    and the VAE's posterior sample are drawn, in that order, from ``generator``; None uses a fresh CPU
    generator seeded with 0, so the same call gives the same condition."""
    if image.ndim != 4 or image.shape[1] != 3 or 0 in image.shape or not image.is_floating_point():
        raise ValueError(
            f"image must be float [B, 3, H, W] in [-1, 1], got {image.dtype} {tuple(image.shape)}"
        )
    B, _, H, W = image.shape
    F_lat = latent_frames(vae, num_frames)
    if not 0 <= frame_index < num_frames:
        raise ValueError(
            f"frame_index {frame_index} is out of range for a clip of F = {num_frames} frames "
            f"(0..{num_frames - 1})"
        )
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    dev = image.device
    with torch.no_grad():
        if frame_index == 0:
            latents = _zero_pad(
                vae.encode(image[:, None], generator=generator).float(), F_lat
            )  # [B, F', C, h, w]
        else:
            fill = torch.randn(B, num_frames, 3, H, W, generator=generator, device=generator.device)
            clip = (noise_std * fill).to(device=dev, dtype=image.dtype)  # [B, F, 3, H, W]
            clip[:, frame_index] = image
            latents = vae.encode(clip, generator=generator).float()  # [B, F', C, h, w]
    return _invert_scale(latents, vae)


# ---------------------------------------------------------------------------------------------- helpers


def _check_video(video: Tensor, name: str) -> tuple[int, int, int, int, int]:
    if video.ndim != 5 or video.shape[2] != 3 or 0 in video.shape:
        raise ValueError(f"{name} must be [B, F, 3, H, W] (non-empty), got shape {tuple(video.shape)}")
    if not video.is_floating_point():
        raise ValueError(f"{name} must be float in [-1, 1], got dtype {video.dtype}")
    return tuple(video.shape)  # type: ignore[return-value]


def _pixel_noise(
    cfg: I2VConfig, B: int, H: int, W: int, generator: torch.Generator, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Steps 1-2 (module docstring): σ [B] = exp(N(noise_log_mean, noise_log_std²)), one per sample or one for
    the batch (``noise_per``), and ε [B, 1, 3, H, W] ~ N(0, I); drawn on the generator's device, returned on
    ``device``."""
    gdev = generator.device
    log_sigma = torch.randn(B if cfg.noise_per == "sample" else 1, generator=generator, device=gdev)
    sigma = (cfg.noise_log_mean + cfg.noise_log_std * log_sigma).exp().expand(B).to(device)  # [B]
    eps = torch.randn(B, 1, 3, H, W, generator=generator, device=gdev).to(device)  # [B, 1, 3, H, W]
    return sigma, eps


def latent_frames(vae: nn.Module, num_frames: int) -> int:
    """F' for F pixel frames; F must be r·k + 1 with r the VAE's temporal compression (4 for CogVideoX)."""
    r = getattr(vae, "temporal_compression", 4)
    if num_frames < 1 or (num_frames - 1) % r:
        below = max(num_frames - 1, 0) // r * r + 1
        nearest = [n for n in (below, below + r) if n >= 1]
        raise ValueError(
            f"I2V conditioning needs {r}k+1 frames (the causal VAE's latent 0 is frame 0 alone), got "
            f"{num_frames}; nearest valid counts: {' and '.join(map(str, nearest))}"
        )
    return (num_frames - 1) // r + 1


def _zero_pad(first: Tensor, num_latent_frames: int) -> Tensor:
    """[B, 1, C, h, w] → [B, F', C, h, w]: the image latent at index 0, zeros after (CogVideoX-I2V)."""
    if first.shape[1] != 1:
        raise ValueError(f"a one-frame encode must give one latent frame, got shape {tuple(first.shape)}")
    pad = first.new_zeros(first.shape[0], num_latent_frames - 1, *first.shape[2:])
    return torch.cat([first, pad], dim=1)


def _invert_scale(latents: Tensor, vae: nn.Module) -> Tensor:
    """CogVideoX 1.5 (``invert_scale_latents``): (1/s)·z instead of the s·z that ``encode`` returns."""
    config = getattr(vae, "config", None)
    if not getattr(config, "invert_scale_latents", False):
        return latents
    return latents * (1.0 / config.scaling_factor**2)


__all__ = ["ANYFRAME_NOISE_STD", "I2VConfig", "image_condition", "inference_condition"]
