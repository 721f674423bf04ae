"""REPA on UCF-101, class-conditional: REPA's recipe (Yu et al. 2025, "Representation Alignment for
Generation", ``sihyun-yu/REPA``) ported to the V-DiT: flow matching (SiT's linear path, velocity),
DINOv2-B only, alignment of the output of block 8 (REPA's ``encoder_depth=8``, 1-indexed) through REPA's
3-layer projector (2048 wide, xavier-uniform init as REPA's ``SiT.initialize_weights``) with −cos, λ = 0.5
(``proj_coeff``).

Targets the "V-DiT + Ours (DINOv2)" rows of Align4Gen Table 1 (REPA-style single-encoder alignment: cd-FVD
225.32 at 400K, 194.70 at 1M) as the single-encoder baseline of ``align4gen_ucf.py``.

Settings: V-DiT-L/2 on SD-VAE latents of 16 frames at 256², frame interval 3, the fold-1 train split, global
batch 24 (3 per rank on 8 GPUs), AdamW lr 1e-4 (REPA), EMA 0.9999, gradient clipping at 1.0 (REPA's
``max_grad_norm``), Euler-50 sampling, bf16.

Deviations from REPA: video rather than images; in Latte's alternating layout block 8 is a temporal block
(Align4Gen prefers "after a spatial block": ``--align.block-index 9``); REPA's SiT uses per-sample uniform t
in [0, 1] as here, its ``path_type="linear"``.

    torchrun --nproc_per_node=8 recipes/repa_ucf.py --data.root /data/UCF-101 \
        --vae.path /weights/sd-vae-ft-ema --teacher.dinov2 /weights/dinov2-base

Evaluation: protocol ``align4gen-ucf`` every 100K steps, as ``align4gen_ucf.py`` (its "DINOv2" rows).
"""

from dataclasses import replace

from minivdit.align.heads import AlignConfig
from minivdit.align.teachers import TeacherConfig
from minivdit.data import DataConfig
from minivdit.eval.evaluate import EvalConfig
from minivdit.models.dit import preset
from minivdit.models.vae import VAEConfig
from minivdit.objectives.flow import FlowConfig
from minivdit.train import CkptConfig, EMAConfig, LogConfig, OptimConfig, SampleEvalConfig, TrainConfig, main


def config() -> TrainConfig:
    return TrainConfig(
        run_name="repa_ucf",
        model=replace(
            preset("V-DiT-L/2"),
            in_channels=4,
            input_size=(32, 32),
            num_frames=16,
            num_classes=101,
            learn_sigma=False,
        ),  # fmt: skip
        objective=FlowConfig(sampler="euler"),
        vae=VAEConfig(kind="sd", path="/weights/sd-vae-ft-ema"),
        data=DataConfig(
            dataset="ucf101",
            root=None,
            split="train",
            fold=1,
            num_frames=16,
            image_size=256,
            frame_interval=3,
            batch_size=3,
            num_workers=8,
        ),  # fmt: skip
        align=AlignConfig(
            loss="repa", weight=0.5, block_index=8, projector_dim=2048, projector_init="xavier"
        ),  # REPA's SiT.initialize_weights: xavier-uniform projector weights, zero biases
        teacher=TeacherConfig(dinov2="/weights/dinov2-base"),
        optim=OptimConfig(lr=1e-4, weight_decay=0.0, grad_clip=1.0),
        ema=EMAConfig(decay=0.9999),
        log=LogConfig(every=50),
        ckpt=CkptConfig(every=10_000, keep=3),
        sample=SampleEvalConfig(num=8, steps=50, cfg_scale=1.0),
        eval=EvalConfig(protocol="align4gen-ucf", every=100_000, steps=50),
        max_steps=1_000_000,
        sample_every=10_000,
        precision="bf16",
    )


if __name__ == "__main__":
    main(config())
