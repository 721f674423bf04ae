"""Sampling: classifier-free guidance (written once, here), ``generate``, and ``python -m minivdit.sample``.

``python -m minivdit.sample --ckpt RUN/checkpoints/step_0001000 --out samples/ --classes 0 1 2 --cfg-scale 4``
loads the run's ``config.json``, the EMA weights (``--no-use-ema`` for the raw ones), samples with the run's
objective, and writes one mp4 per video, a grid (mp4 and gif) and ``contact.png`` (one row per sample, a few
frames across) for a quick look.

CFG (Ho & Salimans 2022): ``pred = uncond + s·(cond − uncond)`` on a doubled batch whose second half carries
the unconditional ``Cond`` (the backbone's ``null_cond``: for a V-DiT the null label, index ``num_classes``).
With learned σ only the first C channels (ε or the velocity) are guided; the variance channels are the
conditional ones. DiT/Latte take the variance channels of the *first half* after
mixing, i.e. the conditional half too, so numbers match; unlike DiT we do not restrict guidance to 3 of 4
latent channels (DiT's "exact reproducibility" quirk).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tyro
from torch import Tensor

from minivdit import media
from minivdit.config import from_dict
from minivdit.dist import Precision, autocast
from minivdit.models.cond import Cond
from minivdit.models.dit import DiTConfig, VDiT
from minivdit.models.vae import VAEConfig, build_vae
from minivdit.objectives.ddpm import DDPM, DDPMConfig
from minivdit.objectives.flow import Flow, FlowConfig

DenoiseFn = Callable[[Tensor, Tensor], Tensor]


def cfg_denoise_fn(
    model: torch.nn.Module,
    cond: Cond,
    null: Cond | None,
    *,
    scale: float,
    guided_channels: int,
    precision: Precision = "fp32",
) -> DenoiseFn:
    """``denoise_fn(x_t, t_model) -> pred`` for the sampler, with classifier-free guidance over ``Cond`` when
    ``null`` is given and ``scale != 1``: the conditional and the unconditional halves run as one doubled
    batch, ``pred = uncond + scale·(cond − uncond)`` on the first ``guided_channels`` channels."""
    device = next(model.parameters()).device

    def run(x: Tensor, t_model: Tensor, c: Cond) -> Tensor:
        with autocast(device, precision):
            return model(x, t_model, c).pred.float()

    if null is None or scale == 1.0:
        return lambda x, t_model: run(x, t_model, cond)
    both = Cond.cat([cond, null])

    def guided(x: Tensor, t_model: Tensor) -> Tensor:
        pred = run(torch.cat([x, x]), torch.cat([t_model, t_model]), both)
        on, off = pred.chunk(2)  # [B, F, C_out, H, W] each: conditional, unconditional
        c = guided_channels
        mixed = off[:, :, :c] + scale * (on[:, :, :c] - off[:, :, :c])
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
) -> Tensor:
    """Sample ``shape = (B, F, C, H, W)`` videos (in the model's space: pixels or latents) from a seeded
    noise (or the given starting ``noise`` of that shape; ``seed`` then only drives a stochastic sampler),
    conditioned on class ``labels`` (V-DiT) or on a ``cond`` with its unconditional ``null``."""
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
    fn = cfg_denoise_fn(model, cond, null, scale=cfg_scale, guided_channels=shape[2], precision=precision)
    out = objective.sample(fn, noise, steps, generator=gen)
    model.train(was_training)
    return out


@torch.no_grad()
def decode_latents(
    vae: torch.nn.Module, latents: Tensor, device: torch.device, precision: Precision
) -> Tensor:
    """Latents ``[B, F', C, h, w]`` -> video ``[B, F, 3, H, W]`` in [-1, 1] through the run's VAE."""
    with autocast(device, precision):
        return vae.decode(latents).float().clamp(-1, 1)


def write_samples(out_dir: Path, videos: Tensor, names: list[str] | None = None, fps: int = 8) -> dict:
    """Write each video as mp4, a grid (mp4 + gif) and a PNG contact sheet. ``videos`` [B, F, 3, H, W] in
    [-1, 1]. Returns the paths and the uint8 arrays (for tensorboard)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    frames = media.to_uint8(videos)  # [B, F, H, W, 3]
    for i, clip in enumerate(frames):
        media.write_mp4(out_dir / f"{i:04d}.mp4", clip, fps=fps)
    grid = media.make_grid(frames, nrow=int(np.ceil(np.sqrt(len(frames)))))
    media.write_mp4(out_dir / "grid.mp4", grid, fps=fps)
    media.write_gif(out_dir / "grid.gif", grid, fps=fps)
    contact = media.contact_sheet(out_dir / "contact.png", frames, labels=names)
    return {"dir": out_dir, "uint8": frames, "contact": contact}


@dataclass(frozen=True, kw_only=True)
class SampleConfig:
    """Sample videos from a checkpoint of a minivdit run."""

    ckpt: str
    """Checkpoint folder ``<run>/checkpoints/step_NNNNNNN`` (or a run folder: its latest checkpoint)."""
    out: str = "samples"
    """Output folder."""
    classes: tuple[int, ...] = ()
    """Class labels to sample, one video each (empty: ``num`` videos cycling over all classes)."""
    num: int = 8
    """Number of videos when ``classes`` is empty (and for unconditional models)."""
    cfg_scale: float = 1.0
    """Classifier-free guidance scale (1 = none; Latte UCF-101: 7.0)."""
    steps: int = 50
    """Sampler steps (DDPM respaced / DDIM / Euler / Heun as the run's objective says)."""
    seed: int = 0
    """Noise seed."""
    use_ema: bool = True
    """Sample with the EMA weights (default) or the raw trained weights."""
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    """Torch device."""
    precision: Precision = "fp32"
    """"fp32" or "bf16" (autocast)."""


def _import_class(path: str | None) -> type:
    """``"package.module:Class"`` (recorded by the trainer) -> the class; VDiT for older checkpoints."""
    if path is None:
        return VDiT
    import importlib

    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _find_ckpt(path: Path) -> Path:
    if (path / "meta.json").is_file():
        return path
    from minivdit.ckpt import latest

    found = latest(path / "checkpoints")
    if found is None:
        raise ValueError(
            f"--ckpt {path}: neither a checkpoint folder (with meta.json) nor a run with checkpoints/"
        )
    return found


def load_run(
    ckpt: str | Path, *, use_ema: bool = True, device: torch.device | str = "cpu"
) -> tuple[torch.nn.Module, DDPM | Flow, torch.nn.Module | None, dict]:
    """A run's checkpoint (or the run folder: its latest checkpoint) as ``(model, objective, vae, config)``:
    the model class the trainer recorded, built on meta and filled with the EMA (or raw) weights, the run's
    objective, its VAE (None in pixel space) and the run's config dict."""
    from minivdit.ckpt import load_weights

    ckpt_dir = _find_ckpt(Path(ckpt))
    meta = json.loads((ckpt_dir / "meta.json").read_text())
    run_cfg = meta["config"]
    model_cfg = from_dict(DiTConfig, run_cfg["model"])
    obj_dict = run_cfg["objective"]
    objective = (
        DDPM(from_dict(DDPMConfig, obj_dict))
        if obj_dict["_type"] == "DDPMConfig"
        else Flow(from_dict(FlowConfig, obj_dict))
    )
    device = torch.device(device)
    with torch.device("meta"):
        model = _import_class(meta.get("model_class"))(model_cfg)
    model.to_empty(device=device)
    model.reset_buffers()
    load_weights(model, ckpt_dir / ("ema.safetensors" if use_ema else "model.safetensors"))
    model.eval()
    vae_dict = run_cfg.get("vae")
    vae = build_vae(from_dict(VAEConfig, vae_dict)) if isinstance(vae_dict, dict) else None
    if vae is not None:
        vae = vae.to(device)
    return model, objective, vae, run_cfg | {"_ckpt": str(ckpt_dir)}


def sample(cfg: SampleConfig) -> Path:
    """Load the run's config and weights, sample, write videos; returns the output folder."""
    device = torch.device(cfg.device)
    model, objective, vae, run_cfg = load_run(cfg.ckpt, use_ema=cfg.use_ema, device=device)
    model_cfg = model.cfg
    if model_cfg.num_classes:
        labels = torch.tensor(cfg.classes) if cfg.classes else torch.arange(cfg.num) % model_cfg.num_classes
    else:
        if cfg.classes:
            raise ValueError(f"--classes given but the model is unconditional (num_classes=0): {cfg.classes}")
        labels = None
    n = len(labels) if labels is not None else cfg.num
    shape = (n, model_cfg.num_frames, model_cfg.in_channels, *model_cfg.input_size)
    videos = generate(
        model,
        objective,
        labels=labels,
        shape=shape,
        steps=cfg.steps,
        cfg_scale=cfg.cfg_scale,
        seed=cfg.seed,
        device=device,
        precision=cfg.precision,
    )
    if vae is not None:
        videos = decode_latents(vae, videos, device, cfg.precision)
    names = None
    if labels is not None:
        names = [str(int(y)) for y in labels]
        if run_cfg["data"]["dataset"] == "synthetic":
            from minivdit.data.synthetic import CLASS_NAMES

            names = [f"{int(y)}: {CLASS_NAMES[int(y)]}" for y in labels]
    out = write_samples(Path(cfg.out), videos, names)
    print(f"wrote {n} samples to {out['dir'].resolve()} (per-video mp4, grid.mp4, grid.gif, contact.png)")
    return out["dir"]


if __name__ == "__main__":
    sample(tyro.cli(SampleConfig))
