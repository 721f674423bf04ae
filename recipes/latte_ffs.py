"""Latte on FaceForensics, unconditional: the V-DiT baseline as Latte ships it (Ma et al. 2024;
``Vchitect/Latte`` ``configs/ffs/ffs_train.yaml``).

Targets Latte's FaceForensics row: FVD₁₆ 34.00 (arXiv v1; users measure ≈30 on the released checkpoint),
StyleGAN-V protocol; see ``reference/anchors-latte-repa.md`` §1.9.

Settings (Latte's config): Latte-XL/2 (V-DiT-XL/2), DDPM with learned σ (ε + VB), the SD v1.x VAE per frame,
16 frames at 256² with frame interval 3, the train split, AdamW lr 1e-4 without weight decay, local batch 5,
EMA 0.9999, gradient clipping at 0.1 from step 20k, 1M steps, checkpoints every 10k, DDPM-250 samples without
guidance. FFS: resize then centre crop, random flip (Latte's ffs loader), StyleGAN-V face crops.

Deviations: exact resume with the optimizer state; bf16/FSDP2 available (Latte: fp32, DDP); clip-by-clip
decoding.

    torchrun --nproc_per_node=8 recipes/latte_ffs.py --data.root /data/FaceForensics \
        --vae.path /weights/sd-vae-ft-ema

Evaluation: protocol ``latte`` (FVD₁₆, I3D) every 50K steps with DDPM-250; give ``--eval.i3d
/weights/i3d_torchscript.pt`` (skipped with one logged line otherwise).
"""

from dataclasses import replace

from minivdit.config import pop_choice
from minivdit.data import DataConfig
from minivdit.eval.evaluate import EvalConfig
from minivdit.models.dit import preset
from minivdit.models.vae import VAEConfig
from minivdit.objectives.ddpm import DDPMConfig
from minivdit.objectives.flow import FlowConfig
from minivdit.train import CkptConfig, EMAConfig, LogConfig, OptimConfig, SampleEvalConfig, TrainConfig, main


def config(objective: str = "ddpm") -> TrainConfig:
    ddpm = objective == "ddpm"
    return TrainConfig(
        run_name="latte_ffs",
        model=replace(
            preset("V-DiT-XL/2"),
            in_channels=4,  # SD-VAE latents
            input_size=(32, 32),  # 256 / 8
            num_frames=16,
            num_classes=0,  # unconditional
            learn_sigma=ddpm,
        ),
        objective=DDPMConfig(learn_sigma=True) if ddpm else FlowConfig(),
        vae=VAEConfig(kind="sd", path="/weights/sd-vae-ft-ema"),
        data=DataConfig(
            dataset="ffs",
            root=None,
            split="train",
            num_frames=16,
            image_size=256,
            frame_interval=3,
            batch_size=5,
            num_workers=8,
        ),  # fmt: skip
        optim=OptimConfig(lr=1e-4, weight_decay=0.0, grad_clip=0.1, clip_start_step=20_000),
        ema=EMAConfig(decay=0.9999),
        log=LogConfig(every=100),  # ffs_train.yaml: log_every 100 (the other datasets: 50)
        ckpt=CkptConfig(every=10_000, keep=3),
        sample=SampleEvalConfig(num=8, steps=250, cfg_scale=1.0),
        eval=EvalConfig(protocol="latte", every=50_000, steps=250),
        max_steps=1_000_000,
        sample_every=10_000,
    )


if __name__ == "__main__":
    main(config(pop_choice("--objective", ("ddpm", "flow"), "ddpm")))
