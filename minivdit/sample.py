"""Sampling: classifier-free guidance (written once, here), ``generate``, and ``python -m minivdit.sample``.

V-DiT runs (class-conditional or unconditional):
``python -m minivdit.sample --ckpt RUN/checkpoints/step_0001000 --out samples/ --classes 0 1 2 --cfg-scale 4``
loads the run's ``config.json``, the EMA weights (``--no-use-ema`` for the raw ones), samples with the run's
objective, and writes one mp4 per video, a grid (mp4 and gif) and ``contact.png`` (one row per sample, a few
frames across) for a quick look.

V-DiT pretrained folders (``config.json`` with ``"_class_name": "VDiT"`` +
``diffusion_pytorch_model.safetensors``: ``tools/convert_weights.py latte``,
``minivdit.models.dit.save_pretrained``)::

    python -m minivdit.sample --pretrained /weights/latte-ucf --vae.kind sd --vae.path /weights/sd-vae-ema \
        --classes 0 1 2 3 --cfg-scale 7 --steps 250 --out DIR

``--ckpt`` takes the same folder, or its ``diffusion_pytorch_model.safetensors`` (the config.json must sit
beside it). The folder holds the architecture and the weights, not the objective nor the VAE, so those come
from flags: ``--vae.kind/--vae.path`` (required unless the model is in pixel space, 3 input channels;
checked against the model's input channels), and the objective, by default ``DDPMConfig()`` with
``learn_sigma`` as the folder's config: Latte's (1000 linear-β steps, ε-prediction, learned σ, ancestral
sampling); another with ``objective:ddpm-config --objective.sampler ddim`` or
``objective:flow-config --objective.sampler heun`` (checked against the model's output channels). A run's
``--ckpt`` and a CogVideoX folder bring their own objective and VAE and refuse these flags.

CogVideoX (text-to-video and image-to-video), from a fine-tuning run or from a diffusers folder::

    python -m minivdit.sample --ckpt RUN --image cond.png --frame-index 24 --prompt "a flower blooms" \
        --prompt "ice melts" --out DIR [--steps 50 --cfg-scale 6 --dynamic-cfg --seed 0 --num-frames 49 \
        --size 480 720 --text-encoder DIR --precision bf16]
    python -m minivdit.sample --pretrained /models/CogVideoX-5b-I2V --image cond.png --prompt "..." --out DIR

- ``--ckpt`` rebuilds the run from its ``config.json``: the model class, then either the full fine-tuned
  weights, or the run's ``pretrained`` base plus the LoRA adapters of the checkpoint (a LoRA run saves only
  those); EMA weights when the run kept them (``--use-ema``, the default), else ``model.safetensors`` with one
  log line. The VAE and the text encoder are the run's (``--text-encoder`` replaces the latter; a run that
  trained on cached text falls back to its ``pretrained`` folder when that holds ``text_encoder/``).
- ``--pretrained FOLDER`` samples a diffusers CogVideoX pipeline folder (``transformer/``, ``vae/``,
  ``text_encoder/``, ``tokenizer/``) with no minivdit checkpoint, so the base model and a fine-tune can be
  compared on the same seed: same noise, same image condition. The objective is ``DDPMConfig.cogvideox`` with
  the SNR shift of ``FOLDER/scheduler/scheduler_config.json`` when present, else inferred from the
  transformer: 3.0 for the 2B (the only release without RoPE), 1.0 for every 5B and 1.5 model
  (``--snr-shift-scale`` overrides). I2V iff ``in_channels == 2·out_channels``.
- One video per ``--prompt``; sample i uses its own CPU generator seeded ``seed + i``, which draws, in the
  pipeline's order, the VAE posterior of the image condition (and the anyframe fill noise) and then the
  initial noise [1, F', C, h, w]. With ``frame_index = 0`` that is what ``CogVideoXImageToVideoPipeline``
  draws with ``generator=torch.Generator().manual_seed(seed + i)`` (``CogVideoXPipeline``: the noise only),
  so the two give the same video for the same seed; ``--batch-size`` only changes how many run at once.
- The text is the T5 encoding of the prompt. The unconditional text of CFG is ``--negative-prompt`` (one for
  every prompt, or one per ``--prompt``), else the null text of ``--text-null`` (default: the run's
  ``text.null``; with ``--pretrained``, "empty"): the empty prompt ``""`` (the diffusers pipelines' default
  negative prompt) or zeros (SAT's ``force_uc_zero_embeddings=["txt"]``; CogVideoX recipes train with it).
  The image latents are kept in the unconditional half (``Cond.null``), as the I2V pipeline does: guidance
  acts on the text only. ``--dynamic-cfg`` is the pipelines' ``use_dynamic_cfg``
  (``objectives.ddpm.dynamic_cfg_scale``, its odd schedule included); as there, a scale ≤ 1 turns CFG off.
- ``--sampler dpm``: diffusers' ``CogVideoXDPMScheduler`` loop (``DDPMConfig.cogvideox(sampler="dpm")``),
  which CogVideo recommends for 5B and 5B-I2V with ``--dynamic-cfg``. Its step noise is drawn from sample i's
  generator after the initial noise, so ``--seed s`` gives the pipeline's video with that scheduler and
  ``generator=torch.Generator().manual_seed(s + i)``. Default: the run's sampler (DDIM for CogVideoX).
- The image is loaded with PIL, resized to cover ``--size`` (bicubic) and centre-cropped, then mapped to
  [-1, 1] as diffusers' ``VaeImageProcessor`` (x / 255 · 2 − 1). The pipeline stretches it to the size
  instead; both agree for an image that already has the size. ``--frame-index i > 0`` is anyframe conditioning
  (``conditioning.i2v.inference_condition``).
- CogVideoX 1.5 (``patch_size_t`` 2): when the latent frame count is odd, one latent frame is added in front
  and dropped after sampling, as the pipelines do (first-frame conditioning only).
- ``--precision bf16`` casts the CogVideoX transformer's weights to bf16 (the pipelines' ``torch_dtype``; a 5B
  is 22 GB in fp32) and runs it under autocast; the VAE stays fp32 (decoded under autocast).

Wan 2.1 (text-to-video and image-to-video) from a diffusers pipeline folder::

    python -m minivdit.sample --pretrained /models/Wan2.1-T2V-1.3B-Diffusers --prompt "a cat" --out DIR
    python -m minivdit.sample --pretrained /models/Wan2.1-I2V-14B-480P-Diffusers --image cond.png \
        --prompt "..." --out DIR [--steps 40 --cfg-scale 5 --sampler euler --flow-shift 3 --size 480 832 \
        --num-frames 81 --negative-prompt "..." --precision bf16]

- Wan is recognised by ``transformer/config.json``'s ``_class_name`` (``WanTransformer3DModel``); I2V iff the
  transformer takes a concat condition or CLIP tokens (``in_channels`` 36, ``image_dim`` 1280).
- The objective is ``FlowConfig.wan(shift, sampler)``: the sampler of ``scheduler/scheduler_config.json``
  (``UniPCMultistepScheduler``, the released folders', or ``FlowMatchEulerDiscreteScheduler``; ``--sampler
  unipc|euler`` overrides) with its ``flow_shift`` (Euler: ``shift``; ``--flow-shift`` overrides).
- Defaults as ``Wan2.1/generate.py``: 50 steps for T2V, 40 for I2V (diffusers' I2V pipeline defaults to 50),
  guidance 5.0 (a scale ≤ 1 turns CFG off, as the pipelines), 81 frames of 480 × 832, 16 fps in the mp4s.
- Text: UMT5 as the pipelines (``TextEncoderConfig.wan``: cleaned, 512 tokens, trimmed and zero-padded, no
  mask to the transformer). The unconditional text is ``--negative-prompt`` else the empty prompt (the
  pipelines' ``negative_prompt or ""``; Wan's own ``generate.py`` uses ``shared_config.py``'s long
  ``sample_neg_prompt``: pass it with ``--negative-prompt``); the image condition is kept in the unconditional
  half.
- I2V (``WanImageToVideoPipeline.encode_image`` / ``prepare_latents``): the CLIP tokens of the image file as
  read (``cond.image_context``), and the concat condition ``cond.image_latents`` = [4-channel mask (1 on
  latent frame 0, the four pixel frames it stands for), the VAE posterior mean of (the image at ``--size``,
  then ``num_frames − 1`` zero frames), normalised]. The image at ``--size``: ``load_image`` (cover and
  centre-crop; the pipeline stretches it, Lanczos: the same for an image that already has the size).
- Seeds: sample i draws its initial noise [1, C, F', h, w] (the pipelines' layout, permuted to ours) from a
  CPU generator seeded ``seed + i``: ``WanPipeline`` / ``WanImageToVideoPipeline`` with
  ``generator=torch.Generator().manual_seed(seed + i)`` give the same latents (the I2V condition is the
  posterior mean: it draws nothing).
- ``--precision bf16``: the transformer's weights in bf16 (fp32 where diffusers keeps them) under autocast;
  the VAE and CLIP stay fp32 (the diffusers Wan examples load them in fp32); the UMT5 dtype is
  ``--text-dtype`` (bf16 by default).

CFG (Ho & Salimans 2022): ``pred = uncond + s·(cond − uncond)`` on a doubled batch whose second half carries
the unconditional ``Cond`` (the backbone's ``null_cond``: for a V-DiT the null label, index ``num_classes``;
for CogVideoX the empty prompt). With learned σ only the first C channels (ε or the velocity) are guided; the
variance channels are the conditional ones. DiT/Latte take the variance channels of the *first half* after
mixing, i.e. the conditional half too, so numbers match; unlike DiT we do not restrict guidance to 3 of 4
latent channels (DiT's "exact reproducibility" quirk).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
import tyro
from einops import rearrange
from torch import Tensor

from minivdit import durable, media
from minivdit.config import check_types, from_dict
from minivdit.dist import Precision, autocast
from minivdit.models.cond import Cond
from minivdit.models.dit import CLASS_NAME as DIT_CLASS_NAME
from minivdit.models.dit import WEIGHTS_NAME as DIT_WEIGHTS_NAME
from minivdit.models.dit import DiTConfig, VDiT
from minivdit.models.vae import PixelSpace, VAEConfig, build_vae
from minivdit.objectives.ddpm import DDPM, DDPMConfig, dynamic_cfg_scale
from minivdit.objectives.flow import Flow, FlowConfig

log = logging.getLogger("minivdit")

DenoiseFn = Callable[[Tensor, Tensor], Tensor]
COGVIDEOX_CFG_SCALE = 6.0
"""The CogVideoX pipelines' default ``guidance_scale``."""
DEFAULT_STEPS = 50
"""Sampler steps when ``--steps`` is not given (Wan I2V: ``WAN_I2V_STEPS``)."""
WAN_CFG_SCALE = 5.0
"""The Wan pipelines' default ``guidance_scale`` (``Wan2.1/generate.py`` ``--sample_guide_scale``)."""
WAN_I2V_STEPS = 40
"""Wan2.1 ``generate.py``'s ``sample_steps`` for I2V (T2V: 50; diffusers' I2V pipeline defaults to 50)."""
WAN_FPS = 16
"""Wan's frame rate (``shared_config.py`` ``sample_fps``; the diffusers examples' ``export_to_video``)."""
PROMPT_LABEL_CHARS = 40
"""Prompts longer than this are truncated in the contact sheet's labels."""


def cfg_denoise_fn(
    model: torch.nn.Module,
    cond: Cond,
    null: Cond | None,
    *,
    scale: float,
    guided_channels: int,
    precision: Precision = "fp32",
    dynamic_steps: int | None = None,
) -> DenoiseFn:
    """``denoise_fn(x_t, t_model) -> pred`` for the sampler, with classifier-free guidance over ``Cond`` when
    ``null`` is given and ``scale != 1``: the conditional and the unconditional halves run as one doubled
    batch, ``pred = uncond + scale·(cond − uncond)`` on the first ``guided_channels`` channels.

    ``dynamic_steps = N`` (the sampler's step count): the CogVideoX pipelines' ``use_dynamic_cfg``. The weight
    becomes per sample, ``w = dynamic_cfg_scale(scale, t_model, N)`` = 1 + scale·(1 − cos(π((N − t)/N)⁵))/2,
    cast to the prediction's dtype (the pipeline multiplies by a Python float, i.e. in fp32), and, as in the
    pipeline, ``scale ≤ 1`` turns guidance off."""
    device = next(model.parameters()).device

    def run(x: Tensor, t_model: Tensor, c: Cond) -> Tensor:
        with autocast(device, precision):
            return model(x, t_model, c).pred.float()

    off_scale = scale == 1.0 if dynamic_steps is None else scale <= 1.0
    if null is None or off_scale:
        return lambda x, t_model: run(x, t_model, cond)
    both = Cond.cat([cond, null])

    def guided(x: Tensor, t_model: Tensor) -> Tensor:
        pred = run(torch.cat([x, x]), torch.cat([t_model, t_model]), both)
        on, off = pred.chunk(2)  # [B, F, C_out, H, W] each: conditional, unconditional
        c = guided_channels
        w: float | Tensor = scale
        if dynamic_steps is not None:
            w = dynamic_cfg_scale(scale, t_model, dynamic_steps).to(on.dtype)  # [B]
            w = w.view(-1, 1, 1, 1, 1)
        mixed = off[:, :, :c] + w * (on[:, :, :c] - off[:, :, :c])
        return torch.cat([mixed, on[:, :, c:]], dim=2)

    return guided


def label_cond(model: torch.nn.Module, labels: Tensor | None) -> tuple[Cond, Cond | None]:
    """``(cond, null)`` of a class-conditional V-DiT for ``labels`` (range-checked), or ``(Cond(), None)``."""
    if labels is None:
        return Cond(), None
    num_classes = model.cfg.num_classes
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"sample labels must be in [0, {num_classes}), got {labels.tolist()}")
    cond = Cond(label=labels)
    return cond, model.null_cond(cond)


@torch.no_grad()
def start_frame_cond(
    model: torch.nn.Module,
    labels: Tensor | None,
    images: Tensor,
    vae: torch.nn.Module,
    *,
    flashi2v: bool,
    num_frames: int,
) -> tuple[Cond, Cond | None]:
    """``(cond, null)`` of an image-to-video V-DiT: class ``labels`` (or None) and the start frames
    ``images`` [B, 3, H, W] in [−1, 1], as the model takes them: FlashI2V's start-frame latent
    (``models.flashi2v.start_frame_latents``) or the channel-concat condition of a ``num_frames`` clip
    (``conditioning.i2v.inference_condition``), both encoded by ``vae`` (``models.vae.PixelSpace`` in pixel
    space). Guidance acts on the label only: the null keeps the image, as FlashI2V's sampler and the
    CogVideoX-I2V pipeline (both feed the image latents to the unconditional branch)."""
    from minivdit.conditioning.i2v import inference_condition
    from minivdit.models.flashi2v import start_frame_latents

    cond, null = label_cond(model, labels)
    if flashi2v:
        latents = start_frame_latents(vae, images)  # [B, 1, C, h, w]
    else:
        latents = inference_condition(images, vae, num_frames)  # [B, F', C, h, w], zeros after frame 0
    cond = dataclasses.replace(cond, image_latents=latents)
    null = dataclasses.replace(null, image_latents=latents) if null is not None else None
    return cond, null


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    objective: DDPM | Flow,
    *,
    labels: Tensor | None = None,
    cond: Cond | None = None,
    null: Cond | None = None,
    shape: tuple[int, ...],
    steps: int,
    cfg_scale: float,
    seed: int,
    device: torch.device,
    precision: Precision = "fp32",
    noise: Tensor | None = None,
    dynamic_cfg: bool = False,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> Tensor:
    """Sample ``shape = (B, F, C, H, W)`` videos (in the model's space: pixels or latents) from a seeded
    noise (or the given starting ``noise`` of that shape; ``seed`` then only drives a stochastic sampler),
    conditioned on class ``labels`` (V-DiT) or on a ``cond`` with its unconditional ``null``.
    ``dynamic_cfg``: the CogVideoX pipelines' per-step guidance weight (``cfg_denoise_fn``).
    ``generator``: the stochastic sampler's noise source instead of the one seeded with ``seed`` (one per
    sample, or one for all; ``objective.sample``): the generators that drew ``noise``, so that a stochastic
    sampler continues their streams as a diffusers pipeline continues its ``generator``."""
    if labels is not None and cond is not None:
        raise ValueError("generate takes labels or cond, not both")
    if cond is None:
        cond, null = label_cond(model, labels.to(device) if labels is not None else None)
    was_training = model.training
    model.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    if noise is None:
        noise = torch.randn(shape, generator=gen, device=device)
    elif tuple(noise.shape) != tuple(shape):
        raise ValueError(f"generate: noise has shape {tuple(noise.shape)}, expected {tuple(shape)}")
    noise = noise.to(device)
    cond = cond.to(device)
    null = null.to(device) if null is not None else None
    fn = cfg_denoise_fn(
        model,
        cond,
        null,
        scale=cfg_scale,
        guided_channels=shape[2],
        precision=precision,
        dynamic_steps=steps if dynamic_cfg else None,
    )
    out = objective.sample(fn, noise, steps, generator=gen if generator is None else generator)
    model.train(was_training)
    return out


@torch.no_grad()
def decode_latents(
    vae: torch.nn.Module, latents: Tensor, device: torch.device, precision: Precision
) -> Tensor:
    """Latents ``[B, F', C, h, w]`` -> video ``[B, F, 3, H, W]`` in [-1, 1] through the run's VAE."""
    with autocast(device, precision):
        return vae.decode(latents).float().clamp(-1, 1)


OVERVIEW_FILES = frozenset({"grid.mp4", "grid.gif", "contact.png"})
"""The files ``write_samples`` puts next to the clips to look at them all at once; not clips themselves."""


def write_samples(out_dir: Path, videos: Tensor, names: list[str] | None = None, fps: int = 8) -> dict:
    """Write each video as mp4, a grid (mp4 + gif) and a PNG contact sheet. ``videos`` [B, F, 3, H, W] in
    [-1, 1]. Returns the paths and the uint8 arrays (for tensorboard).

    The overview files (``OVERVIEW_FILES``) stay in ``out_dir`` beside the clips, where the README, the
    training log and tensorboard point; ``python -m minivdit.eval folders --fake out_dir`` skips them by
    name instead (``evaluate.fake_from_folder``), so a samples folder is evaluated as it is. Moving them
    into a subfolder was the other choice, but it would move every documented ``samples/step_N/contact.png``
    and still leave any older samples folder counting ``grid.mp4`` as a clip."""
    out_dir.mkdir(parents=True, exist_ok=True)
    frames = media.to_uint8(videos)  # [B, F, H, W, 3]
    for i, clip in enumerate(frames):
        media.write_mp4(out_dir / f"{i:04d}.mp4", clip, fps=fps)
    grid = media.make_grid(frames, nrow=int(np.ceil(np.sqrt(len(frames)))))
    media.write_mp4(out_dir / "grid.mp4", grid, fps=fps)
    media.write_gif(out_dir / "grid.gif", grid, fps=fps)
    contact = media.contact_sheet(out_dir / "contact.png", frames, labels=names)
    return {"dir": out_dir, "uint8": frames, "contact": contact}


# Cascade: the ``objective:*`` subcommand may come anywhere on the line, not only after every other flag.
@tyro.conf.configure(tyro.conf.CascadeSubcommandArgs)
@dataclass(frozen=True, kw_only=True)
class SampleConfig:
    """Sample videos from a minivdit run's checkpoint (V-DiT or CogVideoX), a diffusers CogVideoX folder or a
    V-DiT pretrained folder."""

    ckpt: str | None = None
    """Checkpoint folder ``<run>/checkpoints/step_NNNNNNN`` (or a run folder: its latest checkpoint), or a
    V-DiT pretrained folder or its ``diffusion_pytorch_model.safetensors`` (as ``--pretrained``)."""
    pretrained: str | None = None
    """Instead of ``ckpt``: a diffusers CogVideoX or Wan 2.1 pipeline folder (transformer/, vae/,
    text_encoder/, tokenizer/[, scheduler/, image_encoder/, image_processor/]), sampled as released (the base
    model a fine-tune is compared with), or a V-DiT pretrained folder (``tools/convert_weights.py latte``),
    sampled with ``--vae.*`` and the objective."""
    vae: VAEConfig = field(default_factory=VAEConfig)
    """V-DiT pretrained folder only: the VAE its latents belong to (Latte: ``--vae.kind sd --vae.path DIR``
    of sd-vae-ft-ema); a run samples with its own, a CogVideoX folder with its ``vae/``."""
    objective: DDPMConfig | FlowConfig | None = None
    """V-DiT pretrained folder only: the objective its weights were trained with
    (``objective:ddpm-config --objective.*`` or ``objective:flow-config --objective.*``); default
    ``DDPMConfig()`` with the folder's ``learn_sigma``, Latte's. A run samples with its own."""
    out: str = "samples"
    """Output folder."""
    classes: tuple[int, ...] = ()
    """V-DiT: class labels to sample, one video each (empty: ``num`` videos cycling over all classes)."""
    num: int = 8
    """V-DiT: number of videos when ``classes`` is empty (and for unconditional models)."""
    prompt: Annotated[tuple[str, ...], tyro.conf.UseAppendAction] = ()
    """CogVideoX / Wan: a text prompt, one video each; repeat the flag for more
    (``--prompt "a" --prompt "b"``)."""
    negative_prompt: Annotated[tuple[str, ...], tyro.conf.UseAppendAction] = ()
    """CogVideoX: the prompt of CFG's unconditional branch (the pipelines' ``negative_prompt``): one for every
    ``--prompt``, or one per ``--prompt`` in order; none: the null text (``text_null``)."""
    text_null: Literal["zeros", "empty"] | None = None
    """CogVideoX: the unconditional text without ``--negative-prompt``: "empty" T5("") (the diffusers
    pipelines) or "zeros" (SAT); default: the run's ``text.null``, "empty" with ``--pretrained``."""
    image: str | None = None
    """CogVideoX-I2V / Wan-I2V / an image-to-video V-DiT run (``--i2v.mode``, ``--flashi2v``): the condition
    image (PNG/JPG), resized to cover ``size`` (a V-DiT: its frame size) and centre-cropped (Wan: its CLIP
    tokens from the file as read); a V-DiT starts every video from it, one per ``--classes`` label."""
    frame_index: int = 0
    """CogVideoX-I2V: the pixel frame the image conditions (0 = the first frame, as the pipeline; > 0 =
    anyframe)."""
    text_encoder: str | None = None
    """CogVideoX: the T5 folder (a CogVideoX folder holding text_encoder/ + tokenizer/, or one T5 folder);
    default: the run's ``text.path`` (or its ``pretrained`` folder), or the ``--pretrained`` folder."""
    vlm: str | None = None
    """A UniWorld run (``--ckpt``): the local Qwen2.5-VL folder its VLM loads from (default: the run's
    ``vlm.path``)."""
    text_dtype: Literal["bfloat16", "float32", "float16"] | None = None
    """CogVideoX: the T5's dtype; default: the run's ``text.dtype``, bfloat16 with ``--pretrained``."""
    num_frames: int | None = None
    """CogVideoX: pixel frames, 4k + 1 (default: the model's, 49 for CogVideoX-5B)."""
    size: tuple[int, int] | None = None
    """CogVideoX: pixel height and width, multiples of 16 (default: the model's, 480 720 for CogVideoX-5B)."""
    cfg_scale: float | None = None
    """Classifier-free guidance scale; default 1 (none) for a V-DiT (Latte UCF-101: 7.0), 6 for CogVideoX,
    5 for Wan (the pipelines' ``guidance_scale``)."""
    dynamic_cfg: bool = False
    """The CogVideoX pipelines' ``use_dynamic_cfg``: the guidance weight changes per step
    (``objectives.ddpm.dynamic_cfg_scale``)."""
    sampler: Literal["ddim", "dpm", "unipc", "euler"] | None = None
    """CogVideoX: the sampler of the objective (default: the run's or ``DDPMConfig.cogvideox``'s, DDIM).
    "dpm": diffusers' ``CogVideoXDPMScheduler`` loop, which CogVideo recommends for 5B and 5B-I2V (with
    ``--dynamic-cfg``); stochastic, its step noise continues each sample's seeded generator as in the
    pipelines. Wan: "unipc" or "euler" (default: the folder's scheduler, UniPC in the releases)."""
    flow_shift: float | None = None
    """Wan ``--pretrained``: the sampler's time shift (default: the folder's scheduler config, ``flow_shift``;
    3.0 for 480p, 5.0 for 720p in the releases)."""
    snr_shift_scale: float | None = None
    """``--pretrained``: the objective's SNR shift (default: the folder's scheduler config, else 3.0 for the
    2B, 1.0 otherwise)."""
    batch_size: int = 1
    """CogVideoX: videos per forward batch (doubled by CFG); the noise and the conditions do not depend on
    it."""
    steps: int | None = None
    """Sampler steps (DDPM respaced / DDIM / Euler / Heun / UniPC as the objective says); default 50, Wan I2V
    40 (``WAN_I2V_STEPS``)."""
    seed: int = 0
    """Noise seed (CogVideoX: sample i uses ``seed + i``)."""
    use_ema: bool = True
    """Sample with the EMA weights (default; runs without EMA fall back to the trained weights) or the raw
    trained weights."""
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    """Torch device."""
    precision: Precision = "fp32"
    """"fp32" or "bf16" (autocast; CogVideoX: bf16 weights too)."""

    def __post_init__(self):
        check_types(self)
        if (self.ckpt is None) == (self.pretrained is None):
            raise ValueError(
                "give --ckpt RUN (a minivdit run or checkpoint) or --pretrained FOLDER (a diffusers "
                "CogVideoX or Wan folder, or a V-DiT pretrained folder), exactly one; got "
                f"ckpt={self.ckpt!r}, pretrained={self.pretrained!r}"
            )
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {self.steps}")


def _import_class(path: str | None) -> type:
    """``"package.module:Class"`` (recorded by the trainer) -> the class; VDiT for older checkpoints."""
    if path is None:
        return VDiT
    import importlib

    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _find_ckpt(path: Path) -> Path:
    """A checkpoint folder as given, or a run's newest checkpoint that verifies. Sizes only (a stat per
    file): sampling reads the weights, and a truncated file would otherwise fail deep in safetensors."""
    from minivdit.ckpt import latest_verified, verify

    if (path / "meta.json").is_file():
        if problems := verify(path, checksum=False):
            raise ValueError(f"--ckpt {path}: the checkpoint does not verify: {'; '.join(problems)}")
        return path
    found = latest_verified(path / "checkpoints", checksum=False)
    if found is None:
        raise ValueError(
            f"--ckpt {path}: neither a checkpoint folder (with meta.json) nor a run with checkpoints/"
        )
    return found


def _read_run(ckpt: str | Path) -> tuple[Path, dict]:
    """The checkpoint folder and its meta.json (``meta["config"]`` is the run's config)."""
    ckpt_dir = _find_ckpt(Path(ckpt))
    return ckpt_dir, json.loads((ckpt_dir / "meta.json").read_text())


def _model_config(run_cfg: dict):
    """The run's backbone config: a ``CogVideoXConfig``, a ``WanConfig`` or a ``DiTConfig`` (by its
    ``_type`` tag)."""
    from minivdit.models.cogvideox import CogVideoXConfig
    from minivdit.models.wan import WanConfig

    d = run_cfg["model"]
    kinds = {"CogVideoXConfig": CogVideoXConfig, "WanConfig": WanConfig}
    return from_dict(kinds.get(d.get("_type"), DiTConfig), d)


def _weights_file(ckpt_dir: Path, use_ema: bool) -> Path:
    """``ema.safetensors`` (``use_ema``) or ``model.safetensors``; a run without EMA falls back to the
    latter, with one log line."""
    if use_ema and (ckpt_dir / "ema.safetensors").is_file():
        return ckpt_dir / "ema.safetensors"
    if use_ema:
        log.warning(f"{ckpt_dir}: no ema.safetensors (the run kept no EMA): sampling model.safetensors")
    return ckpt_dir / "model.safetensors"


def load_run(
    ckpt: str | Path,
    *,
    use_ema: bool = True,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.nn.Module, DDPM | Flow, torch.nn.Module | None, dict]:
    """A run's checkpoint (or the run folder: its latest checkpoint) as ``(model, objective, vae, config)``:
    the model class the trainer recorded, built on meta and filled with the EMA (or raw) weights, the run's
    objective, its VAE (None in pixel space) and the run's config dict.

    A LoRA run (meta.json ``"weights": "trainable"``) is rebuilt as it trained: ``apply_lora`` with the
    run's LoRA config, the base from the run's ``pretrained`` folder (``dist.load_pretrained``), then the
    adapters of the checkpoint. A FlashI2V run (``config["flashi2v"]``) comes back wrapped in ``FlashI2V``,
    its LoRA (if any) inside the backbone, as the trainer built it. ``dtype``: the CogVideoX and Wan weights'
    dtype (V-DiT weights stay fp32)."""
    from minivdit import ckpt as ckpt_mod
    from minivdit.models.cogvideox import CogVideoXConfig
    from minivdit.models.wan import WanConfig

    ckpt_dir, meta = _read_run(ckpt)
    run_cfg = meta["config"]
    model_cfg = _model_config(run_cfg)
    obj_dict = run_cfg["objective"]
    objective = (
        DDPM(from_dict(DDPMConfig, obj_dict))
        if obj_dict["_type"] == "DDPMConfig"
        else Flow(from_dict(FlowConfig, obj_dict))
    )
    device = torch.device(device)
    weights = _weights_file(ckpt_dir, use_ema)
    with torch.device("meta"):
        model = _import_class(meta.get("model_class"))(model_cfg)
    text_to_video = isinstance(model_cfg, (CogVideoXConfig, WanConfig))
    lora = _run_lora(run_cfg, meta, weights) if text_to_video else None
    if lora is not None:  # before the wrapper, as the trainer (build_models): keys base.<...>.lora_A
        from minivdit.models.lora import apply_lora

        apply_lora(model, lora)
    if isinstance(run_cfg.get("flashi2v"), dict):  # the trainer wrapped the backbone (TrainConfig.flashi2v)
        from minivdit.models.flashi2v import FlashI2V, FlashI2VConfig

        with torch.device("meta"):
            model = FlashI2V(model, from_dict(FlashI2VConfig, run_cfg["flashi2v"]))
    if isinstance(run_cfg.get("uniworld"), dict):  # then UniWorld's adapter around it (TrainConfig.uniworld)
        from minivdit.models.uniworld import UniWorld, UniWorldConfig

        with torch.device("meta"):
            model = UniWorld(model, from_dict(UniWorldConfig, run_cfg["uniworld"]))
    if text_to_video:
        trained_only = meta.get("weights", "all") == "trainable"
        _load_transformer_run(model, run_cfg, lora, weights, device, dtype, trained_only=trained_only)
    else:
        model.to_empty(device=device)
        getattr(model, "base", model).reset_buffers()  # the backbone's tables (inside FlashI2V, if wrapped)
        ckpt_mod.load_weights(model, weights)
    model.eval()
    vae_dict = run_cfg.get("vae")
    vae = build_vae(from_dict(VAEConfig, vae_dict)) if isinstance(vae_dict, dict) else None
    if vae is not None:
        vae = vae.to(device)
    return model, objective, vae, run_cfg | {"_ckpt": str(ckpt_dir)}


def _run_lora(run_cfg: dict, meta: dict, weights: Path):
    """The run's ``LoRAConfig`` when its checkpoint holds only the trained weights (``weights ==
    "trainable"``: the adapters, and FlashI2V's layers), else None (every weight is in the checkpoint)."""
    from minivdit.models.lora import LoRAConfig

    if meta.get("weights", "all") != "trainable":
        return None
    lora = from_dict(LoRAConfig, run_cfg["lora"]) if run_cfg.get("lora") else LoRAConfig()
    if lora.enabled:
        return lora
    if isinstance(run_cfg.get("uniworld"), dict):  # UniWorld's adapter alone trained, the DiT frozen
        return None
    raise ValueError(f"{weights.parent}: holds only trained weights but the run has no LoRA config")


def _load_transformer_run(
    model: torch.nn.Module,
    run_cfg: dict,
    lora,
    weights: Path,
    device: torch.device,
    dtype: torch.dtype,
    *,
    trained_only: bool = False,
) -> None:
    """Fill a meta-built CogVideoX or Wan transformer (wrapped by FlashI2V / UniWorld or not) from a run's
    checkpoint: every weight (a full fine-tune), or (``trained_only``) the run's ``pretrained`` base, its
    ``init_from`` run (``train.load_init``), then the trained weights (LoRA's adapters, FlashI2V's layers,
    UniWorld's adapter)."""
    from minivdit import ckpt as ckpt_mod
    from minivdit import dist
    from minivdit.models.flashi2v import BackboneWrapper

    backbone = model
    while isinstance(backbone, BackboneWrapper):
        backbone = backbone.base
    trained_only = trained_only or lora is not None
    wrapped = None
    if trained_only and backbone is not model:  # the wrappers' layers as the run drew them (some stay frozen)
        from minivdit.train import wrapper_init_state  # train imports this module: here, not at the top

        wrapped = wrapper_init_state(copy.deepcopy(model), run_cfg.get("seed", 0))
    if trained_only:
        base = run_cfg.get("pretrained")
        if not base or not Path(base).is_dir():
            raise ValueError(
                f"{weights.parent}: a LoRA checkpoint (adapters only), but its run's base folder (pretrained="
                f"{base!r} in config.json) is not there"
            )
    model.to(dtype)  # on meta: no memory
    model.to_empty(device=device)
    if hasattr(backbone, "reset_buffers"):  # CogVideoX's position tables (Wan stores nothing positional)
        backbone.reset_buffers()
    if trained_only:
        dist.load_pretrained(backbone, base)  # the base, shard by shard (ValueError naming a missing folder)
        if wrapped is not None:
            model.load_state_dict(wrapped, strict=False)
        if run_cfg.get("init_from"):
            from minivdit.train import load_init  # train imports this module: here, not at the top

            load_init(model, run_cfg["init_from"])  # the frozen DiT the run started from
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as f:
            keys = set(f.keys())
        if unexpected := sorted(keys - set(model.state_dict())):
            raise ValueError(f"{weights}: weights the rebuilt run lacks ({unexpected[:5]})")
        ckpt_mod.load_weights(model, weights, keys=keys)  # the trained weights
        what = f"the LoRA adapters (rank {lora.rank})" if lora is not None else "the trained weights"
        log.info(f"sampling {what} of {weights} on the base {base}")
    else:
        ckpt_mod.load_weights(model, weights)


def pretrained_snr_shift(folder: str | Path) -> float:
    """The SNR shift of a diffusers CogVideoX folder: ``scheduler/scheduler_config.json``'s
    ``snr_shift_scale`` when the folder has one, else inferred from the transformer config: 3.0 for
    CogVideoX-2B (the only release without RoPE: a 3-D sin-cos PE), 1.0 for 5B, 5B-I2V and 1.5."""
    from minivdit.models.cogvideox import CogVideoXConfig, pretrained_folder

    folder = Path(folder)
    sched = folder / "scheduler" / "scheduler_config.json"
    if sched.is_file():
        value = json.loads(sched.read_text()).get("snr_shift_scale")
        if value is not None:
            return float(value)
    cfg = CogVideoXConfig.from_json(pretrained_folder(folder) / "config.json")
    return 1.0 if cfg.use_rotary_positional_embeddings else 3.0


def load_pretrained_folder(
    folder: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    snr_shift_scale: float | None = None,
) -> tuple[torch.nn.Module, DDPM, torch.nn.Module, dict]:
    """A diffusers CogVideoX pipeline folder as ``(model, objective, vae, info)``, like ``load_run``: the
    transformer (``transformer/``), ``DDPMConfig.cogvideox`` with ``pretrained_snr_shift`` (or the given
    shift), and the VAE of ``vae/``."""
    from minivdit.models.cogvideox import CogVideoXTransformer, pretrained_folder

    folder = Path(folder)
    model = CogVideoXTransformer.from_pretrained(pretrained_folder(folder), dtype=dtype, device=device)
    shift = pretrained_snr_shift(folder) if snr_shift_scale is None else snr_shift_scale
    objective = DDPM(DDPMConfig.cogvideox(snr_shift_scale=shift))
    if not (folder / "vae" / "config.json").is_file():
        raise ValueError(
            f"--pretrained {folder}: no vae/config.json (expected a diffusers CogVideoX pipeline folder: "
            "transformer/, vae/, text_encoder/, tokenizer/)"
        )
    vae = build_vae(VAEConfig(kind="cogvideox", path=str(folder / "vae"))).to(device)
    return model, objective, vae, {"pretrained": str(folder), "snr_shift_scale": shift}


# ---------------------------------------------------------------------------------------------- V-DiT folders


def vdit_pretrained_folder(path: str | Path, flag: str = "--pretrained") -> Path | None:
    """The V-DiT pretrained folder ``path`` names (the folder, its ``transformer/``, or its
    ``diffusion_pytorch_model.safetensors``), or None when ``path`` is something else (a run, a checkpoint,
    a CogVideoX folder). A ``.safetensors`` file without a V-DiT config.json beside it is a ValueError
    naming ``flag``: the weights alone do not say the architecture."""
    path = Path(path)
    if path.suffix == ".safetensors" or path.is_file():
        convert = "tools/convert_weights.py latte SRC FOLDER --num-heads H writes both"
        if not path.is_file():
            raise ValueError(f"{flag} {path}: no such file")
        if path.name != DIT_WEIGHTS_NAME:
            raise ValueError(
                f"{flag} {path}: a weights file must be the {DIT_WEIGHTS_NAME} of a V-DiT pretrained folder, "
                f"next to its config.json ({convert})"
            )
        if not (path.parent / "config.json").is_file():
            raise ValueError(
                f"{flag} {path}: no config.json beside it, and the weights alone do not give the "
                f"architecture (a V-DiT pretrained folder holds both; {convert})"
            )
        try:
            DiTConfig.from_json(path.parent / "config.json")
        except ValueError as e:  # e.g. a CogVideoX transformer's weights: sampled as --pretrained FOLDER
            raise ValueError(f"{flag} {path}: not the weights of a V-DiT pretrained folder: {e}") from e
        return path.parent
    for folder in (path, path / "transformer"):
        if (folder / "config.json").is_file():
            config = json.loads((folder / "config.json").read_text())
            return folder if config.get("_class_name") == DIT_CLASS_NAME else None
    return None


def load_vdit_pretrained(
    folder: str | Path,
    *,
    vae: VAEConfig | None = None,
    objective: DDPMConfig | FlowConfig | None = None,
    device: torch.device | str = "cpu",
) -> tuple[VDiT, DDPM | Flow, torch.nn.Module | None, dict]:
    """A V-DiT pretrained folder as ``(model, objective, vae, info)``, like ``load_run``: the VDiT of its
    config.json filled from its weights (``dist.load_pretrained``: strict keys and shapes), the objective
    (default ``DDPMConfig`` with the config's ``learn_sigma``, Latte's) and the VAE ``vae`` names (None or
    kind "none": pixel space). ValueError naming the flag when the objective's output channels or the VAE's
    latent channels do not fit the weights."""
    from minivdit import dist

    folder, vae = Path(folder), vae or VAEConfig()
    model_cfg = DiTConfig.from_json(folder / "config.json")
    obj_cfg = DDPMConfig(learn_sigma=model_cfg.learn_sigma) if objective is None else objective
    built = DDPM(obj_cfg) if isinstance(obj_cfg, DDPMConfig) else Flow(obj_cfg)
    pred = built.pred_channels(model_cfg.in_channels)
    if pred != model_cfg.out_channels:
        raise ValueError(
            f"the objective {obj_cfg} predicts {pred} channels but the V-DiT in {folder} outputs "
            f"{model_cfg.out_channels} (learn_sigma={model_cfg.learn_sigma}): pick the objective it was "
            f"trained with (objective:ddpm-config [--objective.no-learn-sigma] or objective:flow-config)"
        )
    if vae.kind == "none" and model_cfg.in_channels != 3:
        raise ValueError(
            f"the V-DiT in {folder} takes {model_cfg.in_channels}-channel latents, not pixels: give the VAE "
            f"they belong to, --vae.kind sd --vae.path DIR (Latte: sd-vae-ft-ema)"
        )
    device = torch.device(device)
    with torch.device("meta"):  # no random init: every weight comes from the folder
        model = VDiT(model_cfg)
    model.to_empty(device=device)
    dist.load_pretrained(model, folder)  # strict; rebuilds the sin-cos tables
    model.eval()
    decoder = build_vae(vae)
    if decoder is not None:
        if decoder.latent_channels != model_cfg.in_channels:
            raise ValueError(
                f"--vae.path {vae.path}: a {vae.kind} VAE of {decoder.latent_channels} latent channels, but "
                f"the V-DiT in {folder} takes {model_cfg.in_channels}"
            )
        decoder = decoder.to(device)
    return model, built, decoder, {"pretrained": str(folder), "objective": dataclasses.asdict(obj_cfg)}


def _refuse_vdit_flags(cfg: SampleConfig, what: str) -> None:
    """``--vae.*`` and ``--objective`` describe a V-DiT pretrained folder; ``what`` brings its own."""
    if cfg.vae != VAEConfig() or cfg.objective is not None:
        raise ValueError(
            f"--vae.* and objective:* are for a V-DiT pretrained folder; {what} samples with its own VAE and "
            f"objective: drop them"
        )


# ---------------------------------------------------------------------------------------------- CogVideoX


def load_image(path: str | Path, size: tuple[int, int]) -> Tensor:
    """An image file as ``[1, 3, H, W]`` float in [-1, 1] at ``size = (H, W)``: RGB, resized (bicubic) to
    cover the size with its aspect kept, centre-cropped, then x / 255 · 2 − 1 (diffusers'
    ``VaeImageProcessor``)."""
    from PIL import Image, UnidentifiedImageError

    H, W = size
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
    except (OSError, UnidentifiedImageError) as e:
        raise ValueError(f"--image {path}: cannot read it as an image ({e})") from e
    if im.size != (W, H):
        s = max(W / im.width, H / im.height)
        rw, rh = max(W, round(im.width * s)), max(H, round(im.height * s))
        im = im.resize((rw, rh), Image.Resampling.BICUBIC)
        left, top = (rw - W) // 2, (rh - H) // 2
        im = im.crop((left, top, left + W, top + H))
    x = np.asarray(im).astype(np.float32) / 255.0  # [H, W, 3]
    return torch.from_numpy(2.0 * x - 1.0).permute(2, 0, 1)[None]  # [1, 3, H, W]


@dataclass(frozen=True)
class _Request:
    """A checked CogVideoX request: pixel size and frames, latent frames and the 1.5 front padding."""

    height: int
    width: int
    num_frames: int
    latent_frames: int
    pad: int


def _check_prompts(cfg: SampleConfig, family: str) -> None:
    """A text-conditioned request has prompts, and one negative prompt for all or one per prompt."""
    if not cfg.prompt:
        raise ValueError(f'{family} is text-conditioned: give --prompt "..." (one video per prompt)')
    if len(cfg.negative_prompt) not in (0, 1, len(cfg.prompt)):
        raise ValueError(
            f"{len(cfg.negative_prompt)} --negative-prompt for {len(cfg.prompt)} --prompt: give one for all "
            f"prompts or one per prompt"
        )


def _check_cogvideox_request(cfg: SampleConfig, mc) -> _Request:
    """Refuse what a CogVideoX model (config ``mc``) cannot sample, before any weight is loaded."""
    kind = "image-to-video" if mc.is_i2v else "text-to-video"
    if cfg.sampler in ("unipc", "euler") or cfg.flow_shift is not None:
        raise ValueError("--sampler unipc|euler and --flow-shift are for Wan; CogVideoX: ddim or dpm")
    if cfg.ckpt is not None and cfg.snr_shift_scale is not None:
        raise ValueError("--snr-shift-scale is for --pretrained; a run samples with its own objective")
    if cfg.classes:
        raise ValueError(
            f"--classes {cfg.classes}: CogVideoX is text-conditioned and takes no class label; give --prompt"
        )
    _check_prompts(cfg, "CogVideoX")
    if mc.is_i2v and cfg.image is None:
        raise ValueError(
            f"this CogVideoX is {kind} (in_channels {mc.in_channels} = 2 x out_channels): give --image FILE"
        )
    if not mc.is_i2v and cfg.image is not None:
        raise ValueError(f"--image {cfg.image}: this CogVideoX is {kind} (in_channels {mc.in_channels})")
    if not mc.is_i2v and cfg.frame_index:
        raise ValueError(f"--frame-index {cfg.frame_index} needs an image-to-video model and --image")
    r, s = mc.temporal_compression_ratio, 8  # the CogVideoX VAE: 4x time, 8x space
    H, W = cfg.size or (mc.latent_size[0] * s, mc.latent_size[1] * s)
    mult = s * mc.patch_size
    if min(H, W) < mult or H % mult or W % mult:
        near = [max(mult, round(v / mult) * mult) for v in (H, W)]
        raise ValueError(
            f"--size {H} {W}: height and width must be positive multiples of {mult} (VAE {s}x times patch "
            f"{mc.patch_size}); e.g. --size {near[0]} {near[1]}"
        )
    N = cfg.num_frames or (mc.frames - 1) * r + 1
    if N < 1 or (N - 1) % r:
        below = max(N - 1, 0) // r * r + 1
        nearest = " or ".join(str(n) for n in (below, below + r) if n >= 1 and n != N)
        raise ValueError(f"--num-frames {N}: CogVideoX needs {r}k+1 frames; nearest valid counts: {nearest}")
    F_lat = (N - 1) // r + 1
    if mc.use_learned_positional_embeddings and (F_lat, H // s, W // s) != mc.trained_size:
        F0, H0, W0 = mc.trained_size
        raise ValueError(
            f"--size {H} {W} --num-frames {N}: the learned position embedding of this model covers only "
            f"{(F0 - 1) * r + 1} frames of {H0 * s}x{W0 * s}"
        )
    if cfg.image is not None:
        if not 0 <= cfg.frame_index < N:
            raise ValueError(
                f"--frame-index {cfg.frame_index} is outside the clip of {N} frames (0..{N - 1})"
            )
        if not Path(cfg.image).is_file():
            raise ValueError(f"--image {cfg.image}: no such file")
    pad = (-F_lat) % (mc.patch_size_t or 1)
    if pad and cfg.frame_index:
        raise ValueError(
            f"--frame-index {cfg.frame_index} with {N} frames ({F_lat} latent frames): CogVideoX 1.5 pads an "
            f"odd latent count in front, which only first-frame conditioning supports; use {N + r} frames"
        )
    return _Request(height=H, width=W, num_frames=N, latent_frames=F_lat, pad=pad)


def _text_config(cfg: SampleConfig, mc, run_cfg: dict | None):
    """The T5 of this request (``SampleConfig.text_encoder`` docstring)."""
    from minivdit.conditioning.text import TextEncoderConfig

    if run_cfg is None:  # --pretrained
        return TextEncoderConfig(
            path=cfg.text_encoder or cfg.pretrained,
            max_length=mc.max_text_seq_length,
            dtype=cfg.text_dtype or "bfloat16",
            null=cfg.text_null or "empty",  # the diffusers pipelines' null
        )
    text = from_dict(TextEncoderConfig, run_cfg["text"])
    base = run_cfg.get("pretrained")
    if cfg.text_encoder:
        text = dataclasses.replace(text, path=cfg.text_encoder, text_encoder=None, tokenizer=None)
    elif not text.enabled:
        if not (base and (Path(base) / "text_encoder").is_dir()):
            raise ValueError(
                "the run trained on cached text and records no text encoder: give --text-encoder DIR (the T5 "
                "folder the cache was made with)"
            )
        text = dataclasses.replace(text, path=base)
    return dataclasses.replace(text, dtype=cfg.text_dtype or text.dtype, null=cfg.text_null or text.null)


def _slice(cond: Cond, rows: slice) -> Cond:
    return Cond(**{f: getattr(cond, f)[rows] for f in cond.given()})


def sample_cogvideox(cfg: SampleConfig) -> tuple[Tensor, torch.nn.Module, dict]:
    """The latents ``[B, F', C, h, w]`` of a CogVideoX request (module docstring), the VAE that decodes them,
    and a record of what made them."""
    from minivdit.conditioning.i2v import inference_condition
    from minivdit.conditioning.text import T5TextEncoder
    from minivdit.models.cogvideox import CogVideoXConfig, pretrained_folder

    device = torch.device(cfg.device)
    if cfg.pretrained is not None:
        run_cfg = None
        mc = CogVideoXConfig.from_json(pretrained_folder(cfg.pretrained) / "config.json")
    else:
        _, meta = _read_run(cfg.ckpt)
        run_cfg, mc = meta["config"], _model_config(meta["config"])
    req = _check_cogvideox_request(cfg, mc)
    text_cfg = _text_config(cfg, mc, run_cfg)

    prompts = list(cfg.prompt)
    encoder = T5TextEncoder(text_cfg).to(device)
    context, mask = encoder.encode(prompts)  # [B, L, D], None (CogVideoX: no mask)
    null_text = {k: v.float() if v is not None else None for k, v in encoder.null().items()}
    negative = None
    if cfg.negative_prompt:  # [1 or B, L, D]: the unconditional text instead of the null
        negative = encoder.encode(list(cfg.negative_prompt))
    context = context.float()
    del encoder  # the 5B's T5 is 9.5 GB: gone before the transformer loads

    dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32
    if cfg.pretrained is not None:
        model, objective, vae, info = load_pretrained_folder(
            cfg.pretrained, device=device, dtype=dtype, snr_shift_scale=cfg.snr_shift_scale
        )
    else:
        model, objective, vae, run = load_run(cfg.ckpt, use_ema=cfg.use_ema, device=device, dtype=dtype)
        info = {"ckpt": run["_ckpt"]}
    if cfg.sampler is not None:
        if not isinstance(objective, DDPM):
            raise ValueError(
                f"--sampler {cfg.sampler} is a DDPM sampler; this run's objective is {objective.cfg}"
            )
        objective = DDPM(dataclasses.replace(objective.cfg, sampler=cfg.sampler))

    s, r = vae.spatial_compression, vae.temporal_compression
    B, F_all = len(prompts), req.latent_frames + req.pad
    shape = (1, F_all, mc.out_channels, req.height // s, req.width // s)
    image = load_image(cfg.image, (req.height, req.width)).to(device) if cfg.image is not None else None
    image_latents, noise, gens = [], [], []
    for i in range(B):  # the pipeline's draws, per sample: the image condition, then the initial noise
        g = torch.Generator().manual_seed(cfg.seed + i)
        gens.append(g)  # a stochastic sampler (dpm) continues it: the pipeline's step noise
        if image is not None:
            n = req.num_frames + r * req.pad
            image_latents.append(inference_condition(image, vae, n, cfg.frame_index, generator=g))
        noise.append(torch.randn(shape, generator=g))
    cond = Cond(
        context=context,
        context_mask=mask,
        image_latents=torch.cat(image_latents) if image is not None else None,
    )
    null = cond.null(**null_text)  # the null text; the image latents are kept (text-only guidance)
    if negative is not None:  # the pipelines' negative_prompt, one per sample (a single one repeated)
        neg, neg_mask = negative  # [1 or B, L, D], [1 or B, L] | None
        neg_mask = None if neg_mask is None else neg_mask.expand(B, -1)
        null = dataclasses.replace(null, context=neg.float().expand(B, -1, -1), context_mask=neg_mask)
    noise = torch.cat(noise)  # [B, F', C, h, w]
    cfg_scale = COGVIDEOX_CFG_SCALE if cfg.cfg_scale is None else cfg.cfg_scale
    out = []
    for start in range(0, B, cfg.batch_size):
        rows = slice(start, start + cfg.batch_size)
        out.append(
            generate(
                model,
                objective,
                cond=_slice(cond, rows),
                null=_slice(null, rows),
                shape=tuple(noise[rows].shape),
                noise=noise[rows],
                steps=cfg.steps or DEFAULT_STEPS,
                cfg_scale=cfg_scale,
                dynamic_cfg=cfg.dynamic_cfg,
                seed=cfg.seed,
                device=device,
                precision=cfg.precision,
                generator=gens[rows],
            ).cpu()
        )
    latents = torch.cat(out)[:, req.pad :]  # CogVideoX 1.5: the front padding frame dropped, as the pipeline
    record = info | {
        "prompts": prompts,
        "negative_prompts": list(cfg.negative_prompt),
        "text_null": text_cfg.null,
        "seeds": [cfg.seed + i for i in range(B)],
        "image": cfg.image,
        "frame_index": cfg.frame_index if cfg.image is not None else None,
        "num_frames": req.num_frames,
        "size": [req.height, req.width],
        "steps": cfg.steps or DEFAULT_STEPS,
        "cfg_scale": cfg_scale,
        "dynamic_cfg": cfg.dynamic_cfg,
        "sampler": objective.cfg.sampler,
        "use_ema": cfg.use_ema if cfg.ckpt is not None else None,
        "precision": cfg.precision,
    }
    return latents, vae, record


# ---------------------------------------------------------------------------------------------- Wan

WAN_SCHEDULERS = {"UniPCMultistepScheduler": "unipc", "FlowMatchEulerDiscreteScheduler": "euler"}
"""The diffusers scheduler classes a Wan folder may name -> ``FlowConfig.wan``'s sampler."""
# What ``unipc.py`` reproduces: ``UniPCMultistepScheduler`` as the Wan folders configure it (that module's
# docstring); a folder that sets any of these otherwise would sample differently, so it is refused.
UNIPC_SETTINGS = dict(
    prediction_type="flow_prediction",
    use_flow_sigmas=True,
    num_train_timesteps=1000,
    solver_order=2,
    solver_type="bh2",
    predict_x0=True,
    lower_order_final=True,
    final_sigmas_type="zero",
)


def is_wan_folder(path: str | Path) -> bool:
    """Whether ``path`` is a diffusers Wan pipeline folder (or a transformer folder) by its transformer's
    config.json ``_class_name``."""
    from minivdit.models.wan import CLASS_NAME

    for folder in (Path(path) / "transformer", Path(path)):
        if (folder / "config.json").is_file():
            return json.loads((folder / "config.json").read_text()).get("_class_name") == CLASS_NAME
    return False


def wan_flow_config(
    folder: str | Path, *, sampler: str | None = None, flow_shift: float | None = None
) -> FlowConfig:
    """``FlowConfig.wan(shift, sampler)`` of a Wan pipeline folder: the sampler of
    ``scheduler/scheduler_config.json``'s class (UniPC or flow-match Euler) unless ``sampler`` is given, and
    its ``flow_shift`` (Euler's config: ``shift``) unless ``flow_shift`` is given. ValueError naming the file
    for a scheduler we do not reproduce, or when no shift is known."""
    path = Path(folder) / "scheduler" / "scheduler_config.json"
    sched = json.loads(path.read_text()) if path.is_file() else {}
    name = sched.get("_class_name")
    if sched and name not in WAN_SCHEDULERS:
        raise ValueError(
            f"{path}: scheduler {name!r} is not one minivdit samples Wan with ({sorted(WAN_SCHEDULERS)}); "
            "give --sampler unipc|euler and --flow-shift to sample anyway"
        )
    if name == "UniPCMultistepScheduler":
        off = {k: sched[k] for k, v in UNIPC_SETTINGS.items() if k in sched and sched[k] != v}
        if off:
            raise ValueError(f"{path}: UniPC settings {off} differ from the Wan pipelines' {UNIPC_SETTINGS}")
    if name == "FlowMatchEulerDiscreteScheduler" and sched.get("use_dynamic_shifting"):
        raise ValueError(f"{path}: use_dynamic_shifting is not Wan's sampler (a fixed shift)")
    default_shift = sched.get("flow_shift" if name == "UniPCMultistepScheduler" else "shift")
    shift = flow_shift if flow_shift is not None else default_shift
    if shift is None:
        raise ValueError(
            f"--pretrained {folder}: no scheduler/scheduler_config.json with a shift: give --flow-shift "
            "(Wan 2.1: 3.0 for 480p, 5.0 for 720p)"
        )
    return FlowConfig.wan(float(shift), sampler or WAN_SCHEDULERS.get(name, "unipc"))


def _wan_vae_config(folder: Path):
    """The ``WanVAEConfig`` of ``folder/vae`` (read without loading weights, to check a request first)."""
    from minivdit.models.vae.wan import WanVAEConfig

    path = folder / "vae" / "config.json"
    if not path.is_file():
        raise ValueError(
            f"--pretrained {folder}: no vae/config.json (expected a diffusers Wan pipeline folder: "
            "transformer/, vae/, text_encoder/, tokenizer/, scheduler/[, image_encoder/, image_processor/])"
        )
    return WanVAEConfig.from_diffusers_config(json.loads(path.read_text()))


def _check_wan_request(cfg: SampleConfig, mc, vc, *, flashi2v: bool = False) -> _Request:
    """Refuse what a Wan transformer (config ``mc``; ``flashi2v``: wrapped by a FlashI2V run) with its VAE
    (config ``vc``) cannot sample, before any weight is loaded."""
    kind = "image-to-video" if mc.is_i2v or flashi2v else "text-to-video"
    wrong = dict(
        classes=cfg.classes,
        frame_index=cfg.frame_index,
        dynamic_cfg=cfg.dynamic_cfg,
        snr_shift_scale=cfg.snr_shift_scale,
    )
    for name, value in wrong.items():
        if value:
            raise ValueError(f"--{name.replace('_', '-')} is not for Wan (text, and an image for I2V)")
    _check_prompts(cfg, "Wan")
    if flashi2v and cfg.image is None:
        raise ValueError(f"--ckpt {cfg.ckpt} trained FlashI2V ({kind}): give --image FILE, the start frame")
    if mc.is_i2v and cfg.image is None:
        raise ValueError(
            f"this Wan is {kind} (in_channels {mc.in_channels}, image_dim {mc.image_dim}): give --image FILE"
        )
    if not (mc.is_i2v or flashi2v) and cfg.image is not None:
        raise ValueError(f"--image {cfg.image}: this Wan is {kind} (in_channels {mc.in_channels})")
    r, s = vc.temporal_compression, vc.spatial_compression
    if mc.concat_channels not in (0, r + vc.z_dim) or mc.out_channels != vc.z_dim:
        raise ValueError(
            f"the Wan transformer (in_channels {mc.in_channels}, out_channels {mc.out_channels}) does not "
            f"fit its VAE ({vc.z_dim} latent channels; I2V adds {r} mask + {vc.z_dim} condition channels)"
        )
    H, W = cfg.size or (mc.latent_size[0] * s, mc.latent_size[1] * s)
    mult_h, mult_w = s * mc.patch_size[1], s * mc.patch_size[2]
    if min(H, W) < 1 or H % mult_h or W % mult_w:
        raise ValueError(
            f"--size {H} {W}: height and width must be positive multiples of {mult_h} and {mult_w} (VAE {s}x "
            f"times patch {mc.patch_size[1:]})"
        )
    N = cfg.num_frames or (mc.frames - 1) * r + 1
    if N < 1 or (N - 1) % r:
        raise ValueError(f"--num-frames {N}: Wan needs {r}k+1 frames (e.g. {max(N - 1, 0) // r * r + 1})")
    if cfg.image is not None and not Path(cfg.image).is_file():
        raise ValueError(f"--image {cfg.image}: no such file")
    return _Request(height=H, width=W, num_frames=N, latent_frames=(N - 1) // r + 1, pad=0)


def wan_image_condition(vae: torch.nn.Module, image: Tensor, num_frames: int) -> Tensor:
    """The I2V concat condition ``[1, F', 4 + C, h, w]`` of ``image [1, 3, H, W]`` in [−1, 1], as
    ``WanImageToVideoPipeline.prepare_latents`` (``pipeline_wan_i2v.py`` l.426-484, no last image): the VAE
    posterior mean ("argmax") of the image followed by ``num_frames − 1`` zero frames, normalised, after a
    mask whose ``r`` channels are the ``r`` pixel frames of each latent frame (frame 0 stands for r copies of
    the image): 1 on latent frame 0, 0 elsewhere."""
    r = vae.temporal_compression
    zeros = image.new_zeros(1, num_frames - 1, *image.shape[1:])
    video = torch.cat([image[:, None], zeros], dim=1)  # [1, N, 3, H, W]
    latents = vae.encode(video, sample=False)  # [1, F', C, h, w], normalised
    mask = torch.zeros(1, latents.shape[1], r, *latents.shape[3:], dtype=latents.dtype, device=latents.device)
    mask[:, 0] = 1.0
    return torch.cat([mask, latents], dim=2)


# UniWorld-OSP2.0's default negative prompt (``ultrai2v/utils/constant.py`` NEGATIVE_PROMOPT, Wan's English
# one), used when the request gives none (``uniworld_osp2_pipeline.py``)
UNIWORLD_NEGATIVE_PROMPT = (
    "Bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images, static, "
    "overall gray, worst quality, low quality, JPEG compression residue, ugly, incomplete, extra fingers, "
    "poorly drawn hands, poorly drawn faces, deformed, disfigured, misshapen limbs, fused fingers, still "
    "picture, messy background, three legs, many people in the background, walking backwards"
)


def _wan_run(cfg: SampleConfig):
    """What a Wan ``--ckpt`` request samples with, read from the run's config (no weights loaded): the
    transformer config, the VAE config, the text encoder config, the flow config (the run's, with
    ``--sampler`` / ``--flow-shift``), the default steps and guidance (the run's ``sample.*``) and whether the
    run trained FlashI2V."""
    from minivdit.models.vae import vae_folder
    from minivdit.models.vae.wan import WanVAEConfig

    _, meta = _read_run(cfg.ckpt)
    run_cfg = meta["config"]
    mc = _model_config(run_cfg)
    vae_cfg = from_dict(VAEConfig, run_cfg["vae"])
    vc = WanVAEConfig.from_diffusers_config(json.loads((vae_folder(vae_cfg) / "config.json").read_text()))
    flow_cfg = from_dict(FlowConfig, run_cfg["objective"])
    if cfg.sampler is not None:
        flow_cfg = dataclasses.replace(flow_cfg, sampler=cfg.sampler)
    if cfg.flow_shift is not None:
        flow_cfg = dataclasses.replace(flow_cfg, shift=cfg.flow_shift)
    sample = run_cfg.get("sample", {})
    flashi2v = isinstance(run_cfg.get("flashi2v"), dict)
    if not isinstance(run_cfg.get("uniworld"), dict):
        return mc, vc, _text_config(cfg, mc, run_cfg), flow_cfg, sample, flashi2v, None
    from minivdit.conditioning.vlm import VLMConfig

    vlm = from_dict(VLMConfig, run_cfg["vlm"])  # UniWorld: the VLM reads prompt + image, no T5
    if cfg.vlm is not None:
        vlm = dataclasses.replace(vlm, path=cfg.vlm, tokenizer=None)
    return mc, vc, None, flow_cfg, sample, flashi2v, vlm


def sample_wan(cfg: SampleConfig) -> tuple[Tensor, torch.nn.Module, dict]:
    """The latents ``[B, F', C, h, w]`` of a Wan request (module docstring), the VAE that decodes them, and
    a record of what made them: a diffusers Wan folder (``--pretrained``), or a Wan training run
    (``--ckpt``: its weights, full or LoRA on its ``pretrained`` base, its VAE, text encoder, flow and
    ``sample.*`` settings; a FlashI2V run starts every video from ``--image``, encoded alone as its start
    frame, ``models.flashi2v.start_frame_latents``; a UniWorld run reads each prompt with ``--image``
    through its VLM, as the released pipeline: the image Lanczos-resized to the VLM's frame size, the
    prompt whole, the negative ``--negative-prompt`` or ``UNIWORLD_NEGATIVE_PROMPT`` with the same image)."""
    from PIL import Image

    from minivdit.conditioning.clip_image import CLIPImageEncoder, ImageEncoderConfig
    from minivdit.conditioning.text import T5TextEncoder, TextEncoderConfig
    from minivdit.models.vae.wan import WanVAE
    from minivdit.models.wan import WanConfig, WanTransformer, pretrained_folder

    device = torch.device(cfg.device)
    if cfg.sampler not in (None, "unipc", "euler"):  # before a flow config is built with it
        raise ValueError(f"--sampler {cfg.sampler} is a CogVideoX sampler; Wan samples with unipc or euler")
    vlm_cfg = None
    if cfg.ckpt is not None:
        mc, vc, text_cfg, flow_cfg, run_sample, flashi2v, vlm_cfg = _wan_run(cfg)
        folder = None
    else:
        if cfg.vlm is not None:
            raise ValueError("--vlm is for a UniWorld run (--ckpt RUN): its adapter maps the VLM's states")
        folder, run_sample, flashi2v = Path(cfg.pretrained), {}, False
        mc = WanConfig.from_json(pretrained_folder(folder) / "config.json")
        vc = _wan_vae_config(folder)
        flow_cfg = wan_flow_config(folder, sampler=cfg.sampler, flow_shift=cfg.flow_shift)
        text_cfg = TextEncoderConfig.wan(
            cfg.text_encoder or str(folder), dtype=cfg.text_dtype or "bfloat16", null=cfg.text_null or "empty"
        )
    uniworld = vlm_cfg is not None
    req = _check_wan_request(cfg, mc, vc, flashi2v=flashi2v or uniworld)

    # one model in memory at a time: UMT5-XXL (11 GB in bf16) or the VLM, CLIP, then the VAE and the
    # transformer
    prompts, B = list(cfg.prompt), len(cfg.prompt)
    mask = negative_mask = None
    if uniworld:  # UniWorld's pipeline: prompt + image through the VLM; negative = Wan's, the same image
        from minivdit.conditioning.vlm import VLMEncoder, inference_image

        vlm = VLMEncoder(vlm_cfg).to(device)
        image = inference_image(cfg.image, vlm_cfg.frame_size)
        context, mask = vlm.encode(prompts, [image] * B, truncate=False)  # [B, L, D_vlm] (the states)
        negatives = list(cfg.negative_prompt) or [UNIWORLD_NEGATIVE_PROMPT]
        negative, negative_mask = vlm.encode(negatives, [image] * len(negatives), truncate=False)
        null_text = None
        del vlm
    else:
        encoder = T5TextEncoder(text_cfg).to(device)
        # the context is zero-padded past each prompt (TextEncoderConfig.wan), attended whole (the
        # pipelines: no mask)
        context = encoder.encode(prompts)[0].float()  # [B, L, D]
        null_text = encoder.null()["context"].float()  # [L, D]: T5("") (or zeros, --text-null zeros)
        negative = encoder.encode(list(cfg.negative_prompt))[0].float() if cfg.negative_prompt else None
        del encoder
    image_context = None
    if mc.image_dim is not None:  # the CLIP tokens of the file as read (encode_image gets the PIL image,
        # RGB as diffusers.utils.load_image converts it), not of the resized one
        if folder is None:
            raise ValueError(f"--ckpt {cfg.ckpt}: sampling a Wan2.1-I2V run is not supported (none trains)")
        clip = CLIPImageEncoder(ImageEncoderConfig(path=str(folder))).to(device)
        with Image.open(cfg.image) as im:
            image_context = clip.encode(im.convert("RGB")).float().expand(B, -1, -1)  # [B, Li, Di]
        del clip

    dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32
    if folder is not None:
        vae = WanVAE.from_pretrained(folder).to(device)
        model = WanTransformer.from_pretrained(folder, dtype=dtype, device=device)
    else:
        model, _, vae, run = load_run(cfg.ckpt, use_ema=cfg.use_ema, device=device, dtype=dtype)
    image_latents = None
    if mc.concat_channels or flashi2v or uniworld:
        image = load_image(cfg.image, (req.height, req.width)).to(device)
        with torch.no_grad():
            # z_c (UniWorld's f_img reads it too): the start frame encoded alone, the posterior mean whatever
            # the run trained with (FlashI2V's pipeline; models.flashi2v.start_frame_latents, no sampling)
            if flashi2v or uniworld:
                z_c = vae.encode(image[:, None], sample=False).float()  # [1, 1, C, h, w]
                image_latents = z_c.expand(B, -1, -1, -1, -1)
            else:
                image_latents = wan_image_condition(vae, image, req.num_frames).expand(B, -1, -1, -1, -1)

    s = vae.spatial_compression
    noise = []
    for i in range(B):  # the pipelines' draw: [1, C, F', h, w] from a generator seeded seed + i
        g = torch.Generator().manual_seed(cfg.seed + i)
        shape = (1, mc.out_channels, req.latent_frames, req.height // s, req.width // s)
        draw = torch.randn(shape, generator=g)
        noise.append(rearrange(draw, "b c f h w -> b f c h w"))
    noise = torch.cat(noise)  # [B, F', C, h, w]
    cond = Cond(context=context, context_mask=mask, image_latents=image_latents, image_context=image_context)
    if uniworld:
        null = dataclasses.replace(cond, context=None, context_mask=None)
    else:
        null = cond.null(context=null_text)  # the image condition is kept (the pipelines: text-only guidance)
    if negative is not None:  # one per sample (a single one repeated)
        negative_mask = negative_mask.expand(B, -1) if negative_mask is not None else None
        null = dataclasses.replace(null, context=negative.expand(B, -1, -1), context_mask=negative_mask)
    default_scale = run_sample.get("cfg_scale", WAN_CFG_SCALE)
    cfg_scale = default_scale if cfg.cfg_scale is None else cfg.cfg_scale
    # the pipelines guide only when guidance_scale > 1 (do_classifier_free_guidance)
    null = null if cfg_scale > 1.0 else None
    steps = cfg.steps or run_sample.get("steps") or (WAN_I2V_STEPS if mc.is_i2v else DEFAULT_STEPS)
    objective, out = Flow(flow_cfg), []
    for start in range(0, B, cfg.batch_size):
        rows = slice(start, start + cfg.batch_size)
        out.append(
            generate(
                model,
                objective,
                cond=_slice(cond, rows),
                null=_slice(null, rows) if null is not None else None,
                shape=tuple(noise[rows].shape),
                noise=noise[rows],
                steps=steps,
                cfg_scale=cfg_scale,
                seed=cfg.seed,
                device=device,
                precision=cfg.precision,
            ).cpu()
        )
    kind = ("wan-i2v" if mc.is_i2v else "wan-t2v") + ("+flashi2v" if flashi2v else "")
    kind += "+uniworld" if uniworld else ""
    record = {
        **({"pretrained": str(folder)} if folder is not None else {"ckpt": run["_ckpt"]}),
        "model": kind,
        "sampler": flow_cfg.sampler,
        "flow_shift": flow_cfg.shift,
        "prompts": prompts,
        "negative_prompts": negatives if uniworld else list(cfg.negative_prompt),
        **({"vlm": vlm_cfg.path} if uniworld else {"text_null": text_cfg.null}),
        "seeds": [cfg.seed + i for i in range(B)],
        "image": cfg.image,
        "num_frames": req.num_frames,
        "size": [req.height, req.width],
        "steps": steps,
        "cfg_scale": cfg_scale,
        "precision": cfg.precision,
    }
    return torch.cat(out), vae, record


def _prompt_label(prompt: str) -> str:
    prompt = " ".join(prompt.split())
    return prompt if len(prompt) <= PROMPT_LABEL_CHARS else prompt[: PROMPT_LABEL_CHARS - 3] + "..."


def _sample_text(cfg: SampleConfig, *, wan: bool = False) -> Path:
    device = torch.device(cfg.device)
    latents, vae, record = sample_wan(cfg) if wan else sample_cogvideox(cfg)
    precision = "fp32" if wan else cfg.precision  # the Wan VAE decodes in fp32 (module docstring)
    videos = torch.cat(
        [
            decode_latents(vae, latents[i : i + cfg.batch_size].to(device), device, precision).cpu()
            for i in range(0, len(latents), cfg.batch_size)
        ]
    )
    labels = [_prompt_label(p) for p in record["prompts"]]
    out = write_samples(Path(cfg.out), videos, labels, fps=WAN_FPS if wan else 8)
    durable.write_text(out["dir"] / "samples.json", json.dumps(record, indent=2))
    print(
        f"wrote {len(videos)} samples to {out['dir'].resolve()} (per-video mp4, grid.mp4, grid.gif, "
        "contact.png, samples.json)"
    )
    return out["dir"]


def _is_wan_run(cfg: SampleConfig) -> bool:
    """``--ckpt`` names a Wan training run (a run folder or one of its checkpoints)."""
    if cfg.ckpt is None or vdit_pretrained_folder(cfg.ckpt, "--ckpt") is not None:
        return False
    _, meta = _read_run(cfg.ckpt)
    return meta["config"]["model"].get("_type") == "WanConfig"


def _is_cogvideox(cfg: SampleConfig) -> bool:
    if cfg.pretrained is not None:
        folder = Path(cfg.pretrained)
        if not any((f / "config.json").is_file() for f in (folder, folder / "transformer")):
            raise ValueError(
                f"--pretrained {folder}: no config.json in it or in transformer/ (expected a V-DiT "
                "pretrained folder, tools/convert_weights.py, or a diffusers CogVideoX pipeline folder)"
            )
        return True
    _, meta = _read_run(cfg.ckpt)
    return meta["config"]["model"].get("_type") == "CogVideoXConfig"


def sample(cfg: SampleConfig) -> Path:
    """Load the run's config and weights (or a diffusers CogVideoX folder, or a V-DiT pretrained folder),
    sample, write videos; returns the output folder."""
    source, flag = (cfg.pretrained, "--pretrained") if cfg.ckpt is None else (cfg.ckpt, "--ckpt")
    if (cfg.pretrained is not None and is_wan_folder(cfg.pretrained)) or _is_wan_run(cfg):
        _refuse_vdit_flags(cfg, "a Wan model")
        return _sample_text(cfg, wan=True)
    folder = vdit_pretrained_folder(source, flag)  # None: a run, a checkpoint or a CogVideoX folder
    if cfg.vlm is not None:
        raise ValueError(f"--vlm {cfg.vlm} is for a UniWorld run (a Wan run trained with --uniworld)")
    if folder is None and _is_cogvideox(cfg):
        _refuse_vdit_flags(cfg, "a CogVideoX model")
        return _sample_text(cfg)
    cogvideox_only = dict(prompt=cfg.prompt, text_encoder=cfg.text_encoder, size=cfg.size)
    cogvideox_only |= dict(
        num_frames=cfg.num_frames, frame_index=cfg.frame_index, snr_shift_scale=cfg.snr_shift_scale
    )
    cogvideox_only |= dict(sampler=cfg.sampler, flow_shift=cfg.flow_shift)
    cogvideox_only |= dict(negative_prompt=cfg.negative_prompt, text_null=cfg.text_null)
    for name, value in cogvideox_only.items():
        if value:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag} is for CogVideoX; this run is a V-DiT (class labels: --classes)")
    device = torch.device(cfg.device)
    run_cfg = {}
    if folder is None:
        _refuse_vdit_flags(cfg, "a run")
        model, objective, vae, run_cfg = load_run(cfg.ckpt, use_ema=cfg.use_ema, device=device)
        dataset = run_cfg["data"]["dataset"]
    else:
        if not cfg.use_ema:
            raise ValueError(
                f"--no-use-ema: the pretrained folder {folder} holds one set of weights "
                "(tools/convert_weights.py chose EMA or not with --ema / --no-ema)"
            )
        model, objective, vae, _ = load_vdit_pretrained(
            folder, vae=cfg.vae, objective=cfg.objective, device=device
        )
        dataset = None
    model_cfg = model.cfg
    if model_cfg.num_classes:
        labels = torch.tensor(cfg.classes) if cfg.classes else torch.arange(cfg.num) % model_cfg.num_classes
    else:
        if cfg.classes:
            raise ValueError(f"--classes given but the model is unconditional (num_classes=0): {cfg.classes}")
        labels = None
    n = len(labels) if labels is not None else cfg.num
    shape = (n, model_cfg.num_frames, model_cfg.in_channels, *model_cfg.input_size)
    flashi2v = isinstance(run_cfg.get("flashi2v"), dict)
    cond = null = None
    if flashi2v or model_cfg.cond_channels:  # an image-to-video V-DiT run: every video from --image
        if cfg.image is None:
            raise ValueError(
                f"--ckpt {cfg.ckpt} is an image-to-video V-DiT "
                f"({'FlashI2V' if flashi2v else 'channel concat'}"
                "): give --image, the start frame of every video"
            )
        s = vae.spatial_compression if vae is not None else 1
        H, W = (s * side for side in model_cfg.input_size)
        image = load_image(cfg.image, (H, W)).expand(n, -1, -1, -1)  # [n, 3, H, W]
        num_frames = run_cfg.get("data", {}).get("num_frames", model_cfg.num_frames)  # pixel frames
        cond, null = start_frame_cond(
            model,
            labels.to(device) if labels is not None else None,
            image.to(device),
            vae if vae is not None else PixelSpace(),
            flashi2v=flashi2v,
            num_frames=num_frames,
        )
    elif cfg.image is not None:
        raise ValueError(
            "--image is for CogVideoX-I2V, Wan-I2V and image-to-video runs; this run is a V-DiT without an "
            "image condition (one trained with --i2v.mode first or --flashi2v takes it)"
        )
    videos = generate(
        model,
        objective,
        labels=labels if cond is None else None,
        cond=cond,
        null=null,
        shape=shape,
        steps=cfg.steps or DEFAULT_STEPS,
        cfg_scale=1.0 if cfg.cfg_scale is None else cfg.cfg_scale,
        dynamic_cfg=cfg.dynamic_cfg,
        seed=cfg.seed,
        device=device,
        precision=cfg.precision,
    )
    if vae is not None:
        videos = decode_latents(vae, videos, device, cfg.precision)
    names = None
    if labels is not None:
        names = [str(int(y)) for y in labels]
        if dataset == "synthetic":
            from minivdit.data.synthetic import CLASS_NAMES, MOTION_NAMES

            split = run_cfg["data"].get("synthetic_split", "all")
            table = CLASS_NAMES if split == "all" else MOTION_NAMES
            names = [f"{int(y)}: {table[int(y)]}" for y in labels]
    out = write_samples(Path(cfg.out), videos, names)
    print(f"wrote {n} samples to {out['dir'].resolve()} (per-video mp4, grid.mp4, grid.gif, contact.png)")
    return out["dir"]


if __name__ == "__main__":
    from minivdit.log import setup_logging

    setup_logging(rank=0)
    sample(tyro.cli(SampleConfig))
