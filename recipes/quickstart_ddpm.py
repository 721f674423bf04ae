"""Quickstart with Latte's objective: the same small V-DiT and data as ``quickstart.py``, trained with DDPM
(1000 linear-β steps, ε-prediction, learned-range σ + the unscaled VB term, as Latte/DiT) instead of flow
matching, and sampled with 50 respaced ancestral DDPM steps. Same budget (≤ 10 minutes on 2 CPU cores).

    python recipes/quickstart_ddpm.py
"""

from minivdit.data import DataConfig
from minivdit.models.dit import DiTConfig
from minivdit.objectives.ddpm import DDPMConfig
from minivdit.train import CkptConfig, EMAConfig, LogConfig, OptimConfig, SampleEvalConfig, TrainConfig, main


def config() -> TrainConfig:
    return TrainConfig(
        run_name="quickstart_ddpm",
        model=DiTConfig(
            depth=8,
            hidden_size=128,
            num_heads=4,
            patch_size=4,
            in_channels=3,
            input_size=(16, 16),
            num_frames=8,
            num_classes=8,
            learn_sigma=True,
        ),
        objective=DDPMConfig(learn_sigma=True, sampler="ddpm"),
        data=DataConfig(num_frames=8, image_size=16, num_classes=8, batch_size=16),
        optim=OptimConfig(lr=5e-4, warmup_steps=100, grad_clip=1.0),
        ema=EMAConfig(decay=0.995),
        log=LogConfig(every=50),
        ckpt=CkptConfig(every=500, keep=2),
        sample=SampleEvalConfig(num=8, steps=50, cfg_scale=3.0),
        max_steps=1500,
        sample_every=0,
    )


if __name__ == "__main__":
    main(config())
