"""Quickstart in latent space: the quickstart's V-DiT trained on the latents of the causal 3-D VAE that
``recipes/vae_causal3d.py`` trains, on the built-in synthetic dataset.

Two steps on 2 CPU cores (measured, machine otherwise idle):

    python recipes/vae_causal3d.py          # 13.5 min; writes runs/vae_causal3d (its VAE in .../vae)
    python recipes/quickstart_latent.py     # 8 min (3.0-3.4 it/s); --vae.path runs/vae_causal3d by default

The VAE maps 9 frames of 32x32 pixels to latents ``[3, 16, 4, 4]`` (4x time, 8x space, 16 channels, scaled
and shifted by the constants it estimated), so the DiT sees 3 latent frames of 4x4 tokens at patch 1: the
quickstart's 4 + 4 spatial/temporal blocks of width 128 otherwise unchanged, flow matching, 1500 steps of
batch 16. Samples are decoded back to pixels: ``runs/quickstart_latent/samples/step_<N>/contact.png``.
Measured at the end (loss 0.40): every row has its class's colour and, mostly, its shape; the straight
motions (orange left, yellow up, cyan down-right) are visible, the circling bar and the orbiting twin discs
less so, and some frames smear the object.

The same switch works on any recipe from the command line; ``minivdit.train.check_latent_shape`` names the
``--model.*`` flags a VAE's latents need:

    python recipes/quickstart.py --vae.kind causal3d --vae.path runs/vae_causal3d \\
        --data.num-frames 9 --data.image-size 32 --model.in-channels 16 --model.input-size 4 4 \\
        --model.num-frames 3 --model.patch-size 1

Differences from ``recipes/quickstart.py``: the VAE, the clip size (9 frames of 32x32 instead of 8 of 16x16:
a causal VAE takes 4k + 1 frames and compresses space 8x) and patch 1 on the 4x4 latent grid.
"""

from minivdit.data import DataConfig
from minivdit.models.dit import DiTConfig
from minivdit.models.vae import VAEConfig
from minivdit.objectives.flow import FlowConfig
from minivdit.train import CkptConfig, EMAConfig, LogConfig, OptimConfig, SampleEvalConfig, TrainConfig, main


def config() -> TrainConfig:
    return TrainConfig(
        run_name="quickstart_latent",
        model=DiTConfig(
            depth=8,
            hidden_size=128,
            num_heads=4,
            patch_size=1,
            in_channels=16,  # the VAE's latent channels
            input_size=(4, 4),  # 32 px / 8
            num_frames=3,  # 1 + (9 − 1) / 4
            num_classes=8,
            learn_sigma=False,
        ),
        objective=FlowConfig(sampler="heun"),
        vae=VAEConfig(kind="causal3d", path="runs/vae_causal3d"),
        data=DataConfig(num_frames=9, image_size=32, num_classes=8, batch_size=16),
        optim=OptimConfig(lr=5e-4, warmup_steps=100, grad_clip=1.0),
        ema=EMAConfig(decay=0.995),
        log=LogConfig(every=50),
        ckpt=CkptConfig(every=500, keep=2),
        sample=SampleEvalConfig(num=8, steps=30, cfg_scale=3.0),
        max_steps=1500,
        sample_every=0,
    )


if __name__ == "__main__":
    main(config())
