"""Validation samples during text- and image-to-video training (issue 18 §2.12).

CogVideo's ``finetune/`` (``validation_steps``, ``validation_dir``), diffusers' CogVideoX training examples
(``--validation_prompt``, ``--validation_epochs``), finetrainers (``--validation_dataset_file``,
``--validation_steps``) and musubi-tuner (``--sample_prompts``, ``--sample_every_n_steps``) all sample a fixed
set of prompts (and, for I2V, images) while they train, because a loss curve alone does not say whether the
model still makes videos. minivdit does the same:

- **What.** ``ValidationConfig.prompts``, with ``images`` (one per prompt, or one for all) and
  ``frame_indices`` for image-to-video and anyframe runs, sampled every ``every`` steps and at the end.
- **Same each time.** Sample i always starts from the noise seeded ``seed + i`` (as ``python -m
  minivdit.sample``: its image condition, then its noise), so successive validations differ only by the
  weights.
- **Which weights.** The EMA model when the run keeps one, otherwise the live model (with its LoRA adapters):
  the model the run will be judged by.
- **Cheap.** 20 steps by default (the pipelines' 50 would cost 2.5× more for a preview); the prompts and
  images are encoded once, at the start. The T5 that encodes them is the run's own (online text), or, for a
  run on cached text, ``text_encoder`` loaded once and freed, so the 9.5 GB T5-XXL never stays on a GPU.
- **Sharded over ranks.** Rank r samples prompts r, r + world, …; every rank runs the same number of forwards
  (FSDP needs all of them: a rank with fewer prompts repeats its last one and drops it), then rank 0 gathers
  the clips and writes ``<run>/samples/validation/step_<N>/`` (one mp4 per prompt, ``grid.mp4``,
  ``contact.png`` with the prompts, ``samples.json``) and the tensorboard videos next to the training curves.

The unconditional branch of CFG is the run's null text (``TextEncoderConfig.null``: zeros as SAT, or T5("")
as the diffusers pipelines), the same null its caption dropout trains.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from minivdit import durable
from minivdit.config import check_types
from minivdit.models.cond import Cond

log = logging.getLogger("minivdit")


@dataclass(frozen=True)
class ValidationConfig:
    """Fixed prompts (and images) sampled during text / image-to-video training (module docstring)."""

    prompts: tuple[str, ...] = ()
    """The validation prompts; empty: no validation (a V-DiT's class grid, ``sample_every``, is separate)."""
    images: tuple[str, ...] = ()
    """Image-to-video: the condition image files, one per prompt or one for all."""
    frame_indices: tuple[int, ...] = ()
    """Anyframe: the pixel frame each image is placed at, one per prompt or one for all; empty: frame 0
    (CogVideoX-I2V's first-frame path)."""
    every: int = 0
    """Sample every N optimizer steps, and always at the end; 0: only at the end."""
    steps: int = 20
    """Sampler steps (few: a preview, not the 50-step evaluation)."""
    cfg_scale: float = 6.0
    """Classifier-free guidance scale (the CogVideoX pipelines' default 6)."""
    dynamic_cfg: bool = False
    """The CogVideoX pipelines' cosine guidance ramp (``use_dynamic_cfg``)."""
    seed: int = 0
    """Sample i starts from the noise seeded ``seed + i``, every time."""
    text_encoder: str | None = None
    """For a run on cached text: the T5 folder (a CogVideoX pipeline folder or its ``text_encoder/``) that
    encodes the prompts once at the start; None: the run's ``--text.path``."""
    fps: int = 8
    """Frame rate of the written mp4s (CogVideoX: 8)."""

    def __post_init__(self) -> None:
        check_types(self)
        n = len(self.prompts)
        for name in ("images", "frame_indices"):
            k = len(getattr(self, name))
            if k not in (0, 1, n) or (k and not n):
                raise ValueError(
                    f"validation.{name}: {k} given for {n} prompts; give one for all or one per prompt"
                )
        if self.frame_indices and not self.images:
            raise ValueError("validation.frame_indices needs validation.images (image-to-video)")
        if any(i < 0 for i in self.frame_indices):
            raise ValueError(f"validation.frame_indices must be >= 0, got {self.frame_indices}")
        if self.steps < 1 or self.every < 0 or self.fps < 1:
            raise ValueError(
                f"validation: steps >= 1, every >= 0 and fps >= 1 needed, got steps={self.steps}, "
                f"every={self.every}, fps={self.fps}"
            )

    @property
    def enabled(self) -> bool:
        return bool(self.prompts)

    def due(self, step: int, last: bool) -> bool:
        return self.enabled and (last or (self.every > 0 and step % self.every == 0))


def _each(values: tuple, n: int, default) -> list:
    """``values`` spread over ``n`` prompts: one per prompt, one for all, or ``default`` when empty."""
    if not values:
        return [default] * n
    return list(values) if len(values) == n else [values[0]] * n


class Validator:
    """The validation set of one run, encoded once (``__init__``), sampled on demand (``__call__``).

    ``text_encoder``: the run's online T5, or None (cached text: ``text_cfg`` with ``cfg.text_encoder`` or its
    own path builds one for the prompts, freed after). ``text_null``: the run's null text ``(context [L, D],
    mask)``. ``num_frames`` / ``size``: the pixel clip the run trains on. ``is_i2v``: the model takes
    ``image_latents``. ``patch_size_t``: the model's temporal patch (CogVideoX 1.5: 2; the front padding)."""

    def __init__(
        self,
        cfg: ValidationConfig,
        *,
        text_encoder,
        text_cfg,
        text_null: tuple[Tensor, Tensor | None] | None,
        vae: torch.nn.Module | None,
        is_i2v: bool,
        patch_size_t: int | None = None,
        num_frames: int,
        size: tuple[int, int],
        device: torch.device,
        rank: int = 0,
        world: int = 1,
    ):
        if vae is None:
            raise ValueError("--validation.prompts needs the run's VAE (--vae.kind, --vae.path) to decode")
        if is_i2v and not cfg.images:
            raise ValueError(
                "this model is image-to-video: --validation.images FILE (one per prompt, or one for all) "
                "is needed with --validation.prompts"
            )
        if not is_i2v and cfg.images:
            raise ValueError(f"--validation.images {cfg.images}: this model is text-to-video")
        n = len(cfg.prompts)
        self.cfg, self.vae, self.device, self.rank, self.world = cfg, vae, device, rank, world
        self.num_frames, self.size = num_frames, size
        self.frame_indices = _each(cfg.frame_indices, n, 0)
        for i in self.frame_indices:
            if i >= num_frames:
                raise ValueError(
                    f"--validation.frame-indices {i} is outside the training clip of {num_frames} frames"
                )
        r = vae.temporal_compression
        if (num_frames - 1) % r:
            raise ValueError(f"validation: {num_frames} training frames is not {r}k+1")
        self.latent_frames = (num_frames - 1) // r + 1
        # CogVideoX 1.5 (patch_size_t 2) pads an odd latent count in front, as the pipelines and sample.py
        self.pad = (-self.latent_frames) % (patch_size_t or 1)
        if self.pad and any(self.frame_indices):
            raise ValueError(
                "validation: anyframe indices > 0 need an even latent frame count (CogVideoX 1.5)"
            )
        self.states: dict[int, Tensor] = {}
        self.context, self.mask, self.null = self._encode_text(cfg, text_encoder, text_cfg, text_null)
        self.image_latents = self._encode_images(cfg, is_i2v) if is_i2v else None
        log.info(
            f"validation: {n} prompt(s){' with images' if is_i2v else ''}, {cfg.steps} steps, CFG "
            f"{cfg.cfg_scale}, every {cfg.every or 'run'} step(s){' and at the end' if cfg.every else ''}"
        )

    def _encode_text(self, cfg, encoder, text_cfg, text_null):
        """Prompts → context [P, L, D] (CPU, fp32), mask, and the null text the run trains with."""
        owned = encoder is None
        if owned:
            import dataclasses

            from minivdit.conditioning.text import build_text_encoder

            path = cfg.text_encoder or text_cfg.path
            if path is None:
                raise ValueError(
                    "--validation.prompts on cached text: give --validation.text-encoder DIR (the T5 the "
                    "cache was made with; loaded once to encode the prompts, then freed)"
                )
            encoder = build_text_encoder(
                dataclasses.replace(text_cfg, path=path, text_encoder=None, tokenizer=None)
            ).to(self.device)
        with torch.no_grad():  # one prompt at a time: the tokens minivdit.sample gives a lone prompt
            pairs = [encoder.encode([p]) for p in cfg.prompts]  # P × ([1, L, D], [1, L] | None)
        context = torch.cat([c for c, _ in pairs])  # [P, L, D]
        mask = None if pairs[0][1] is None else torch.cat([m for _, m in pairs])  # [P, L] | None
        if text_null is None:
            null = encoder.null()  # TextEncoderConfig.null: T5("") or zeros
            text_null = (null["context"], null["context_mask"])
        if owned:
            del encoder
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        null_ctx, null_mask = text_null
        return (
            context.float().cpu(),
            None if mask is None else mask.cpu(),
            (null_ctx.float().cpu(), None if null_mask is None else null_mask.cpu()),
        )

    def _encode_images(self, cfg, is_i2v) -> Tensor:
        """Images → the sampling condition ``image_latents`` [P, F', C, h, w] (``i2v.inference_condition``),
        drawn from each sample's generator first, as ``minivdit.sample`` does."""
        from minivdit.conditioning.i2v import inference_condition
        from minivdit.sample import load_image

        out = []
        n = self.num_frames + self.vae.temporal_compression * self.pad  # CogVideoX 1.5: the padded clip
        for i, (path, index) in enumerate(zip(_each(cfg.images, len(cfg.prompts), None), self.frame_indices)):
            if not Path(path).is_file():
                raise ValueError(f"--validation.images {path}: no such file")
            image = load_image(path, self.size).to(self.device)  # [1, 3, H, W]
            g = torch.Generator().manual_seed(cfg.seed + i)  # CPU, as minivdit.sample
            out.append(inference_condition(image, self.vae, n, index, generator=g).cpu())
            self.states[i] = g.get_state()  # the noise continues this stream (__call__)
        return torch.cat(out)

    def sample(self, model: torch.nn.Module, objective, precision: str) -> Tensor | None:
        """Every rank samples its share; rank 0 returns all clips ``[P, F, 3, H, W]`` in [−1, 1], others None.
        Clip i equals ``python -m minivdit.sample --prompt p_i [--image im_i --frame-index k_i] --seed s+i``
        on the same weights (the same draws in the same order)."""
        from minivdit import dist
        from minivdit.sample import decode_latents, generate

        cfg, P = self.cfg, len(self.cfg.prompts)
        mine = list(range(self.rank, P, self.world))
        rounds = -(-P // self.world)  # every rank runs as many forwards (FSDP)
        s = self.vae.spatial_compression
        shape = (
            1,
            self.latent_frames + self.pad,
            _model_config(model).out_channels,
            *(v // s for v in self.size),
        )
        null_ctx, null_mask = self.null
        videos = {}
        for k in range(rounds):
            i = mine[min(k, len(mine) - 1)] if mine else 0  # no prompt left: sample prompt 0, drop it
            g = torch.Generator().manual_seed(cfg.seed + i)  # CPU, as minivdit.sample: same seed, same clip
            if i in self.states:  # the pipeline's order: the image condition's draws, then the noise
                g.set_state(self.states[i])
            noise = torch.randn(shape, generator=g)  # [1, F', C, h, w]
            cond = Cond(
                context=self.context[i : i + 1],
                context_mask=None if self.mask is None else self.mask[i : i + 1],
                image_latents=None if self.image_latents is None else self.image_latents[i : i + 1],
            )
            null = cond.null(context=null_ctx, context_mask=null_mask)  # image kept: text-only guidance
            latents = generate(
                model,
                objective,
                cond=cond,
                null=null,
                shape=shape,
                noise=noise,
                steps=cfg.steps,
                cfg_scale=cfg.cfg_scale,
                dynamic_cfg=cfg.dynamic_cfg,
                seed=cfg.seed + i,
                device=self.device,
                precision=precision,
                generator=[g],
            )[:, self.pad :]  # CogVideoX 1.5: the padding frame dropped
            video = decode_latents(self.vae, latents, self.device, precision).cpu()  # [1, F, 3, H, W]
            if k < len(mine):
                videos[i] = video[0]
        gathered = dist.all_gather_object(videos)
        if self.rank != 0:
            return None
        merged = {i: v for part in gathered for i, v in part.items()}
        return torch.stack([merged[i] for i in range(P)])  # [P, F, 3, H, W]

    def __call__(
        self, model: torch.nn.Module, objective, *, step: int, run_dir: Path, logger, precision
    ) -> None:
        """Sample (``sample``); rank 0 writes ``samples/validation/step_<N>/`` and the tensorboard videos."""
        from minivdit.sample import write_samples

        t0, cfg, P = time.perf_counter(), self.cfg, len(self.cfg.prompts)
        clips = self.sample(model, objective, precision)
        if clips is None:
            return
        out_dir = Path(run_dir) / "samples" / "validation" / f"step_{step:07d}"
        names = [" ".join(p.split())[:60] for p in cfg.prompts]
        out = write_samples(out_dir, clips, names, fps=cfg.fps)
        record = {
            "step": step,
            "prompts": list(cfg.prompts),
            "images": _each(cfg.images, P, None),
            "frame_indices": self.frame_indices if self.image_latents is not None else None,
            "seeds": [cfg.seed + i for i in range(P)],
            "steps": cfg.steps,
            "cfg_scale": cfg.cfg_scale,
            "dynamic_cfg": cfg.dynamic_cfg,
            "precision": precision,
        }
        durable.write_text(out_dir / "samples.json", json.dumps(record, indent=2))
        logger.video("validation", out["uint8"], step, fps=cfg.fps)
        logger.image("validation/contact_sheet", out["contact"], step)
        log.info(f"validation: {out_dir.resolve()} ({P} clips, {time.perf_counter() - t0:.1f}s)")


def _model_config(model: torch.nn.Module):
    from minivdit import dist

    mc = getattr(dist.unwrap(model), "cfg", None)
    if getattr(mc, "out_channels", None) is None:
        raise ValueError(
            f"validation samples need a CogVideoX-like model (cfg.out_channels), got {type(model)}"
        )
    return mc
