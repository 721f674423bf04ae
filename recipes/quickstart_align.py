"""Quickstart with alignment: the quickstart's V-DiT plus Align4Gen fusion alignment (seeds/004 §3) to
DINOv2 + SAM2.1 Hiera features, on the built-in synthetic dataset.

Align4Gen L2-normalises each encoder's patch features, concatenates them, maps every DiT token of one block
through one shared MLP (REPA's projector) and adds ``λ · (−cos)`` to the diffusion loss; λ = 0.5 (seeds/004
§4, "alignment loss coefficient γ = 0.5"). Here the tap is block 3 of 8, a spatial block (Latte's layout
alternates spatial, temporal, …; Align4Gen aligns after a spatial block), and the teachers see each 16x16
frame resized to their 4x4 token grid (DINOv2 at 56 px, SAM2 at 64 px).

No weights ship with minivdit and none can be downloaded here, so **without ``--teacher.*`` folders this
recipe aligns to tiny random DINOv2 and SAM2 encoders** (``TeacherConfig.tiny_random``; saved under
``runs/quickstart_align/tiny_teachers`` and announced in the log). That exercises every piece (teacher, head,
frame/grid matching, loss, checkpointing) but teaches the DiT nothing about images. With real folders it is
the real thing:

    python recipes/quickstart_align.py                                      # tiny random teachers
    python recipes/quickstart_align.py --teacher.dinov2 /weights/dinov2-base \\
        --teacher.sam2 /weights/sam2.1-hiera-base-plus                       # real DINOv2 + SAM2.1

Logged: ``loss/diff`` (flow matching), ``loss/align`` (−cos, in [−1, 1]) and ``loss`` = diff + λ·align.
"""

from minivdit.align.heads import AlignConfig
from minivdit.align.teachers import TeacherConfig
from minivdit.data import DataConfig
from minivdit.models.dit import DiTConfig
from minivdit.objectives.flow import FlowConfig
from minivdit.train import CkptConfig, EMAConfig, LogConfig, OptimConfig, SampleEvalConfig, TrainConfig, main


def config() -> TrainConfig:
    return TrainConfig(
        run_name="quickstart_align",
        # Everything but align/teacher as the quickstart before issue 11 (spatial/temporal blocks, so that
        # block 3 is a spatial block, velocity prediction): the alignment smoke test keeps its baseline.
        model=DiTConfig(
            depth=8,
            hidden_size=128,
            num_heads=4,
            patch_size=4,
            in_channels=3,
            input_size=(16, 16),
            num_frames=8,
            num_classes=8,
            learn_sigma=False,
        ),
        objective=FlowConfig(sampler="heun"),
        data=DataConfig(num_frames=8, image_size=16, num_classes=8, batch_size=16),
        optim=OptimConfig(lr=5e-4, warmup_steps=100, grad_clip=1.0),
        ema=EMAConfig(decay=0.995),
        log=LogConfig(every=50),
        ckpt=CkptConfig(every=500, keep=2),
        sample=SampleEvalConfig(num=8, steps=30, cfg_scale=3.0),
        max_steps=1500,
        sample_every=0,
        # Projector hidden width 512 rather than REPA's 2048: the DiT is 128 wide.
        align=AlignConfig(
            loss="align4gen", weight=0.5, block_index=3, projector_dim=512, projector_init="xavier"
        ),
        teacher=TeacherConfig(tiny_random=True),
    )


if __name__ == "__main__":
    main(config())
