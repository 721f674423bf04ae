"""dREPA on CogVideoX-5B-I2V with anyframe conditioning: the blog's method arm (seeds/000, "From Anyframe to
Timelapse"). Every setting, the seed included, is ``cogvideox_i2v.py``'s, so the two runs are the blog's
paired ablation ("identical random seeds and learning hyperparameters"); the only addition is the loss
``L = L_diffusion + λ·L_dREPA``.

- **dREPA** (``minivdit/align/losses.py``): the squared distance between the patch-pair cosine similarities
  of the projected DiT tokens and of the teacher's tokens, off the diagonal, with the blog appendix's
  normalisation (``drepa_variant="appendix"``) and L2 (the blog: L2 beats L1).
- **Teacher**: V-JEPA 2 (``--teacher.vjepa2``; the blog: V-JEPA 2 or per-frame DINOv3 beat VideoMAE-v2);
  ``--teacher.vjepa2 None --teacher.dinov3 DIR --align.frame-match group-mean`` for DINOv3.
- **Tap**: the blog's "layer 17 ... following VideoREPA" read as VideoREPA's 1-indexed ``align_layer=18``
  (the output of ``transformer_blocks[17]``, 0-indexed 17): ``--align.block-index 18``.
- **Frames**: 49 pixel frames → 13 latent frames. V-JEPA 2 sees frames 1…48 (frame 0 dropped, as VideoREPA
  does, so that 4k + 1 frames make 2k tubelets of 2): 24 teacher frames, matched to the 13 latent frames in
  the head (``frame_match="tubelet"``).
- **λ = 0.5**: the blog gives no value; VideoREPA's ``proj_coeff`` 0.5, the prior work it follows.
- ``--pretrained`` decides the architecture (its ``transformer/config.json``), as in ``cogvideox_i2v.py``;
  ``--align.block-index`` must then be within its layers.
- Projector: REPA/VideoREPA's 3-layer MLP of width 2048; trained with the model's optimizer settings, not
  EMA'd, dropped at inference.

    torchrun --nproc_per_node=8 recipes/drepa_timelapse.py --pretrained /models/CogVideoX-5b-I2V \\
        --vae.path /models/CogVideoX-5b-I2V/vae --text.path /models/CogVideoX-5b-I2V \\
        --teacher.vjepa2 /models/vjepa2-vitl-fpc64-256 --data.root /data/timelapse
"""

import sys
from dataclasses import replace
from pathlib import Path

from minivdit.align.heads import AlignConfig
from minivdit.align.teachers import TeacherConfig
from minivdit.train import TrainConfig, main

sys.path.insert(0, str(Path(__file__).parent))  # the paired baseline recipe sits next to this file
from cogvideox_i2v import config as baseline  # noqa: E402


def config() -> TrainConfig:
    return replace(
        baseline(),
        run_name="drepa_timelapse",
        align=AlignConfig(
            loss="drepa",
            weight=0.5,
            block_index=18,
            projector_dim=2048,
            frame_match="tubelet",
            drepa_variant="appendix",
            drepa_distance="l2",
        ),
        teacher=TeacherConfig(vjepa2="/models/vjepa2-vitl-fpc64-256", drop_first_frame=True),
    )


if __name__ == "__main__":
    main(config())
