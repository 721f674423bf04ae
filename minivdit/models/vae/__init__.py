"""Video autoencoders between pixels and the DiT. One file per family; a common interface.

Every VAE here is an ``nn.Module`` with:

- ``encode(video [B, F, 3, H, W] in [-1, 1]) -> latents [B, F', C, h, w]``: already scaled/shifted (the VAE
  owns its latent constants, read from its config: SD's 0.18215, CogVideoX's 0.7, ...), so the rest of
  minivdit never sees a magic number;
- ``decode(latents [B, F', C, h, w]) -> video [B, F, 3, H, W]`` in [-1, 1] (not clamped);
- ``latent_channels``, ``spatial_compression``, ``temporal_compression`` (1 for per-frame VAEs) and
  ``latent_frames(num_frames) -> int``;
- ``from_pretrained(path)`` for a diffusers-format folder (``config.json`` +
  ``diffusion_pytorch_model.safetensors``), ``from_config(cfg)`` for random init, and
  ``save_pretrained(path)``.

Frozen VAEs run under ``no_grad`` in ``train_step``; cached latents (``Batch.latents``) bypass ``encode``.

Identity. ``vae_identity(cfg)`` says which VAE made cached latents without loading it: the kind, and the
``minivdit.identity.folder_identity`` of the folder ``build_vae`` loads (``vae_folder``: for "causal3d" a run
directory resolves to its ``vae/``): sha256 of its config.json (latent constants included) and of its weight
files' names, sizes, safetensors headers and sampled blocks (that module says why not a full hash).
``tools/cache_latents.py`` stamps it into meta.json; ``minivdit.data.shards.cache_mismatches`` compares it.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn
from torch import Tensor

from minivdit.config import check_types


@dataclass(frozen=True, kw_only=True)
class VAEConfig:
    """Which autoencoder sits between pixels and the DiT, and where its weights are."""

    kind: Literal["none", "sd", "causal3d", "cogvideox", "wan"] = "none"
    """"none": pixel space; "sd": the per-frame SD v1.x VAE (Latte/Align4Gen); "causal3d": minivdit's causal
    3-D VAE (4x time, 8x space); "cogvideox": the CogVideoX VAE (diffusers weights); "wan": the Wan 2.1 VAE
    (diffusers weights, latents normalised per channel)."""
    path: str | None = None
    """Weights folder: diffusers format (config.json + diffusion_pytorch_model.safetensors) for "sd" and
    "cogvideox" (e.g. a download of stabilityai/sd-vae-ft-ema); a ``save_pretrained`` folder for
    "causal3d", or the run directory of ``recipes/vae_causal3d.py`` (its ``vae/`` folder is used); for "wan"
    an ``AutoencoderKLWan`` folder or a Wan pipeline folder (its ``vae/`` folder is used)."""
    sample_posterior: bool = True
    """Encode to a posterior sample (Latte, CogVideoX) rather than the posterior mean (Wan's own encode)."""

    def __post_init__(self):
        check_types(self)
        if self.kind != "none" and not self.path:
            raise ValueError(f"VAEConfig(kind={self.kind!r}) needs a weights folder: --vae.path /path/to/vae")


def vae_folder(cfg: VAEConfig) -> Path:
    """The folder ``build_vae`` loads for ``cfg`` (kind other than "none")."""
    if cfg.kind == "causal3d":
        from minivdit.models.vae.causal3d import resolve_folder

        return resolve_folder(cfg.path)
    if cfg.kind == "wan":
        from minivdit.models.vae.wan import resolve_folder as wan_folder

        return wan_folder(cfg.path)
    return Path(cfg.path)


def vae_identity(cfg: VAEConfig) -> dict:
    """``{"kind", "folder", "config_sha256", "weights_sha256"}`` of the VAE ``cfg`` names (module docstring);
    ``folder`` is resolved and absolute, for messages: the kind and the two hashes are the identity.
    ValueError naming ``--vae.path`` when the folder has no config.json or no weights."""
    if cfg.kind == "none":
        raise ValueError("vae_identity: --vae.kind none has no weights to identify")
    from minivdit.identity import folder_identity

    return {"kind": cfg.kind, **folder_identity(vae_folder(cfg), "--vae.path")}


class PixelSpace(nn.Module):
    """Pixel space in a VAE's clothes (``--vae.kind none``): ``encode`` and ``decode`` return the clip as it
    is (fp32), one "latent" frame per frame. What the image conditions (``conditioning/i2v.py``, FlashI2V's
    ``start_frame_latents``) encode the start frame with when a V-DiT trains on pixels."""

    temporal_compression = 1
    spatial_compression = 1
    latent_channels = 3

    def latent_frames(self, num_frames: int) -> int:
        return num_frames

    def encode(self, video: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if video.ndim != 5 or video.shape[2] != 3:
            raise ValueError(f"PixelSpace.encode: video must be [B, F, 3, H, W], got {tuple(video.shape)}")
        return video.float()

    def decode(self, latents: Tensor) -> Tensor:
        return latents.float()


def build_vae(cfg: VAEConfig) -> nn.Module | None:
    """The VAE ``cfg`` names, loaded from its folder, frozen and in eval mode; None for pixel space."""
    if cfg.kind == "none":
        return None
    path = vae_folder(cfg) if cfg.kind == "wan" else Path(cfg.path)  # a Wan pipeline folder: its vae/
    if not (path / "config.json").is_file():
        raise ValueError(f"--vae.path {path}: no config.json there (expected a {cfg.kind} weights folder)")
    if cfg.kind == "sd":
        from minivdit.models.vae.sd import SDVAE

        vae = SDVAE.from_pretrained(path, sample_posterior=cfg.sample_posterior)
    elif cfg.kind == "cogvideox":
        from minivdit.models.vae.cogvideox import CogVideoXVAE

        vae = CogVideoXVAE.from_pretrained(path, sample_posterior=cfg.sample_posterior)
    elif cfg.kind == "wan":
        from minivdit.models.vae.wan import WanVAE

        vae = WanVAE.from_pretrained(path, sample_posterior=cfg.sample_posterior)
    else:
        from minivdit.models.vae.causal3d import CausalVAE3D

        vae = CausalVAE3D.from_pretrained(path)
        vae.sample_posterior = cfg.sample_posterior
    return vae.eval().requires_grad_(False)
