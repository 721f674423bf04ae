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
"""
