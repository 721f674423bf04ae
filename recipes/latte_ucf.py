"""Latte on UCF-101, class-conditional: the V-DiT baseline as Latte ships it (Ma et al. 2024, "Latte: Latent
Diffusion Transformer for Video Generation"; ``Vchitect/Latte`` ``configs/ucf101/ucf101_train.yaml``).

Targets Latte's UCF-101 row (FVD₁₆ 477.97 in arXiv v1; later versions revise it, and users measure ≈170-320 on
the released checkpoint depending on the protocol: ``reference/anchors-latte-repa.md`` §1.9) and the V-DiT
baseline of Align4Gen Table 7 (I3D FVD 180.06, their protocol).

Settings (Latte's config): Latte-XL/2 (V-DiT-XL/2: 14 spatial + 14 temporal blocks, width 1152, 16 heads,
673.7 M parameters), DDPM with learned σ (ε + VB, 1000 linear-β steps), the SD v1.x VAE per frame (scaling
0.18215), 16 frames at 256² with frame interval 3, all 13,320 videos (``split="all"``: Latte trains on train +
test), random horizontal flip, AdamW lr 1e-4 without weight decay, local batch 5, EMA 0.9999, gradient
clipping at 0.1 from step 100k (Latte measures the norm before that), 1M steps, checkpoints every 10k, samples
with DDPM-250 and CFG 7.0 (null class 101).

Deviations: the optimizer state is checkpointed and resume is exact (Latte restarts AdamW); bf16 autocast and
FSDP2 are available (Latte: fp32, DDP); Latte spreads 16 frames over a 48-frame window with strides 3-4, we
use an exact stride of 3 (46 frames); the dataset is decoded clip by clip (Latte decodes whole AVIs).

    torchrun --nproc_per_node=8 recipes/latte_ucf.py --data.root /data/UCF-101 \
        --vae.path /weights/sd-vae-ft-ema
    python recipes/latte_ucf.py --objective flow ...        # the same with flow matching

Evaluation: protocol ``latte`` (FVD₁₆, I3D) every 50K steps with DDPM-250 and CFG 7, as Latte samples;
give ``--eval.i3d /weights/i3d_torchscript.pt`` (skipped with one logged line otherwise).
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
        run_name="latte_ucf",
        model=replace(
            preset("V-DiT-XL/2"),
            in_channels=4,  # SD-VAE latents
            input_size=(32, 32),  # 256 / 8
            num_frames=16,
            num_classes=101,
            learn_sigma=ddpm,
        ),
        objective=DDPMConfig(learn_sigma=True) if ddpm else FlowConfig(),
        vae=VAEConfig(kind="sd", path="/weights/sd-vae-ft-ema"),
        data=DataConfig(
            dataset="ucf101",
            root=None,
            split="all",
            num_frames=16,
            image_size=256,
            frame_interval=3,
            batch_size=5,
            num_workers=8,
        ),  # fmt: skip
        optim=OptimConfig(lr=1e-4, weight_decay=0.0, grad_clip=0.1, clip_start_step=100_000),
        ema=EMAConfig(decay=0.9999),
        log=LogConfig(every=50),
        ckpt=CkptConfig(every=10_000, keep=3),
        sample=SampleEvalConfig(num=8, steps=250, cfg_scale=7.0),
        # Latte samples UCF-101 with CFG 7 (its sample config); the protocol's default is none.
        eval=EvalConfig(protocol="latte", every=50_000, steps=250, cfg_scale=7.0),
        max_steps=1_000_000,
        sample_every=10_000,
    )


if __name__ == "__main__":
    main(config(pop_choice("--objective", ("ddpm", "flow"), "ddpm")))
