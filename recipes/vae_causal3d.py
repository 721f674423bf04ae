"""Train minivdit's causal 3-D VAE from scratch on the built-in synthetic dataset (issue 4 §4).

PLACEHOLDER_DOC
"""

from minivdit.data import DataConfig
from minivdit.models.vae.causal3d import CausalVAE3DConfig
from minivdit.train import CkptConfig, EMAConfig, LogConfig, OptimConfig
from minivdit.train_vae import VAETrainConfig, main


def config() -> VAETrainConfig:
    return VAETrainConfig(
        run_name="vae_causal3d",
        vae=CausalVAE3DConfig(
            patch_size=2,
            base_channels=32,
            channel_multipliers=(1, 2, 4),
            space_down_levels=(0, 1),
            time_down_levels=(0, 1),
            latent_channels=16,
            mid_attention=True,
        ),
        data=DataConfig(num_frames=9, image_size=32, batch_size=8),
        optim=OptimConfig(lr=1e-3, warmup_steps=50, grad_clip=1.0),
        ema=EMAConfig(decay=0.99),
        log=LogConfig(every=25),
        ckpt=CkptConfig(every=200, keep=2),
        kl_weight=1e-6,
        eval_every=100,
        eval_clips=32,
        max_steps=600,
    )


if __name__ == "__main__":
    main(config())
