"""Quickstart with alignment: the quickstart (``recipes/quickstart.py``: its model, objective, data,
optimizer, samples and evaluation, unchanged) plus Align4Gen alignment (seeds/004 §3) to a self-supervised
video teacher that knows the synthetic world.

Align4Gen L2-normalises each encoder's patch features, concatenates them, maps every DiT token of one block
through one shared MLP (REPA's projector) and adds ``λ · (−cos)`` to the diffusion loss; λ = 0.5 (seeds/004
§4, "alignment loss coefficient γ = 0.5"). Here the tap is block 3 of 8, a spatial block (Latte's layout
alternates spatial, temporal, …; Align4Gen aligns after a spatial block). With one teacher, ``align4gen`` is
REPA's loss; ``--teacher.videomae2 SYN_TEACHER_MAE`` (this file's name for ``runs/syn_teacher/<its hash>``)
adds the same teacher trained by masked autoencoding as a second encoder, fused as Align4Gen fuses DINOv2 and
SAM2 (also trained on first use); ``--align.loss crepa|trd|drepa`` switches the loss, and ``--align.weight 0``
keeps everything (model, init, data, teacher) but the alignment gradient: the control of
``sweeps/alignment_search.toml`` (docs/ablations/alignment.md).

No pretrained weights ship with minivdit and none can be downloaded here, so **the teacher is trained here on
first use**: a small VideoMAE (width 128, 4 layers, patch 4, tubelet 2) trained by V-JEPA feature prediction
on the synthetic clips, never on their labels (REPA's teachers are self-supervised), its output tokens
centred, cached in ``runs/syn_teacher/<hash of its settings>`` and reused by every later run
(``minivdit/align/syn_teacher.py``; ``tools/train_syn_teacher.py --probe`` trains it by hand and measures it:
300 steps, about a minute on one CPU thread; a linear probe on its mean-pooled features reads the class at
0.76 and the motion of unseen appearance × motion pairings at 0.32, against 0.56 / 0.20 at random init:
README "Alignment"). It runs at its native 16x16 pixels for the DiT's 4x4 token grid and gives one feature per
tubelet of two frames, repeated over both frames (``--align.frame-match tubelet_repeat``, Align4Gen Table 4's
VideoMAE arm). Other teachers replace it on the command line, with the frame matching of an image teacher:

    python recipes/quickstart_align.py                                      # the synthetic-world VideoMAE
    python recipes/quickstart_align.py --teacher.videomae None --teacher.dinov2 /weights/dinov2-base \\
        --teacher.sam2 /weights/sam2.1-hiera-base-plus --align.frame-match per_frame   # DINOv2 + SAM2.1
    python recipes/quickstart_align.py --teacher.videomae None --teacher.tiny-random \\
        --align.frame-match per_frame          # tiny RANDOM DINOv2 + SAM2: the machinery only, for tests

Logged: ``loss/diff`` (flow matching), ``loss/align`` (−cos, in [−1, 1]) and ``loss`` = diff + λ·align.
"""

import sys
from dataclasses import replace
from pathlib import Path

from minivdit.align import syn_teacher
from minivdit.align.heads import AlignConfig
from minivdit.align.teachers import TeacherConfig
from minivdit.train import TrainConfig, main

sys.path.insert(0, str(Path(__file__).parent))  # the quickstart sits next to this file
from quickstart import config as quickstart  # noqa: E402

SYN_TEACHER = str(syn_teacher.default_dir())  # runs/syn_teacher/<hash of the default settings>
MAE = syn_teacher.SynTeacherConfig(objective="mae", masking="tube")  # the same teacher by masked autoencoding
SYN_TEACHER_MAE = str(syn_teacher.default_dir(MAE))  # Align4Gen's second encoder: --teacher.videomae2


def config() -> TrainConfig:
    base = quickstart()
    return replace(
        base,
        run_name="quickstart_align",
        # Everything else is the quickstart's (model, objective, data, optimizer, EMA, samples, evaluation):
        # this run and ``recipes/quickstart.py`` differ by the alignment alone (docs/ablations/alignment.md).
        ckpt=replace(base.ckpt, every=500),
        # Projector hidden width 512 rather than REPA's 2048: the DiT is 128 wide.
        align=AlignConfig(
            loss="align4gen",
            weight=0.5,
            block_index=3,
            projector_dim=512,
            projector_init="xavier",
            frame_match="tubelet_repeat",  # one teacher feature per two-frame tubelet
        ),
        teacher=TeacherConfig(videomae=SYN_TEACHER),
    )


def ensure_teacher(cfg: TrainConfig) -> None:
    """Train the synthetic-world teachers on first use when the run aligns to them (``SYN_TEACHER``, and
    ``SYN_TEACHER_MAE`` as ``--teacher.videomae2``); a folder given on the command line is used as it is."""
    if cfg.teacher.videomae == SYN_TEACHER:
        syn_teacher.ensure(syn_teacher.SynTeacherConfig(), SYN_TEACHER)
    if cfg.teacher.videomae2 == SYN_TEACHER_MAE:
        syn_teacher.ensure(MAE, SYN_TEACHER_MAE)


if __name__ == "__main__":
    main(config(), before=ensure_teacher)
