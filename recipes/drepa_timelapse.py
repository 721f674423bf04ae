"""dREPA on CogVideoX-5B-I2V with anyframe conditioning: the blog's method arm (seeds/000, "From Anyframe to
Timelapse"). Every setting, the seed included, is ``cogvideox_i2v.py``'s, so the two runs are the blog's
paired ablation ("identical random seeds and learning hyperparameters"); the only addition is the loss
``L = L_diffusion + λ·L_dREPA``.

- **dREPA** (``minivdit/align/losses.py``): the squared distance between the patch-pair cosine similarities
  of the projected DiT tokens and of the teacher's tokens, off the diagonal, with the blog appendix's
  normalisation (``drepa_variant="appendix"``) and L2 (the blog: L2 beats L1).
- **Teacher**: V-JEPA 2 (``--teacher.vjepa2``; the blog: V-JEPA 2 or per-frame DINOv3 beat VideoMAE-v2),
  run as VideoREPA runs its video teachers (the blog gives no resolution, layer or grid matching; it follows
  VideoREPA for the tap): on **160×240** pixels (``--teacher.token-grid 10 15``: 10×15 tokens per tubelet
  against the DiT's 30×45; VideoREPA ``lora_trainer.py`` l.184-191), on the **pre-norm** tokens
  (``--teacher.prenorm vjepa2``: the final LayerNorm replaced by Identity, l.69-74), and the projected DiT
  grid shrunk onto the teacher's by a **learned stride-3 conv** (``--align.grid-match learned_conv``:
  ``Conv2d(1024, 1024, 3, stride 3)`` for V-JEPA 2-L, VideoREPA's ``downsampler_cogvideo_output``, l.334).
  At 480×720 V-JEPA 2 would see 9× the tokens, RoPE positions far beyond its 16×16 training grid, and 81×
  larger dREPA Grams. Differences from VideoREPA: pixels are shrunk bilinearly with antialiasing (VideoREPA:
  plain bicubic), and the two tubelets of a latent frame are averaged instead of the DiT features being
  upsampled ×2 in time (``minivdit/align/heads.py``). A ``--data.image-size`` whose DiT grid (size / 16) is
  not a multiple of 10×15 needs another ``--teacher.token-grid`` (the DiT grid divided by an integer per
  axis).
- DINOv3 instead: ``--teacher.vjepa2 None --teacher.dinov3 DIR --align.frame-match group_mean``, and
  ``--teacher.token-grid None --align.grid-match dit_to_teacher`` for VideoREPA's per-frame setting (its
  DINOv2 path runs at the DiT grid × patch, post-norm tokens, no conv); ``--teacher.prenorm`` names V-JEPA 2
  only, so DINOv3 stays post-norm.
- **Tap**: the blog's "layer 17 ... following VideoREPA" read as VideoREPA's 1-indexed ``align_layer=18``
  (the output of ``transformer_blocks[17]``, 0-indexed 17): ``--align.block-index 18``.
- **Frames**: 49 pixel frames → 13 latent frames. V-JEPA 2 sees frames 1…48 (frame 0 dropped, as VideoREPA
  does, so that 4k + 1 frames make 2k tubelets of 2): 24 teacher frames, matched to the 13 latent frames in
  the head (``frame_match="tubelet"``).
- **λ = 0.5**: the blog gives no value; this is VideoREPA's ``proj_coeff`` 0.5 (``finetune/schemas/args.py``),
  the prior work the blog follows, carried over unchanged. VideoREPA tuned it for its TRD loss, an L1 hinge
  ``mean(relu(|S_a − S_e| − 0.1))`` on the same kind of relation differences d; dREPA's loss is ``mean(d²)``
  with no margin. The two do not have the same size (|d| = 0.2: TRD 0.1, dREPA 0.04; |d| < 0.1: TRD 0) nor
  the same gradient (±1 beyond the margin against 2d), so λ = 0.5 does not give dREPA VideoREPA's weight.
  The trainer logs ``align_ratio`` = λ·L_align / L_diff in metrics.jsonl: check it and set
  ``--align.weight`` for the share of the loss you want.
- ``--pretrained`` decides the architecture (its ``transformer/config.json``), as in ``cogvideox_i2v.py``;
  ``--align.block-index`` must then be within its layers.
- Projector: REPA/VideoREPA's 3-layer MLP of width 2048, then the conv; both PyTorch-default initialised (as
  VideoREPA), trained with the model's optimizer settings, not EMA'd, dropped at inference.

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
            projector_init="torch",  # PyTorch's default Linear init, as VideoREPA's build_mlp (no re-init)
            frame_match="tubelet",
            grid_match="learned_conv",  # VideoREPA's stride-3 Conv2d: 30×45 DiT grid → the teacher's 10×15
            drepa_variant="appendix",
            drepa_distance="l2",
        ),
        teacher=TeacherConfig(
            vjepa2="/models/vjepa2-vitl-fpc64-256",
            drop_first_frame=True,
            prenorm=("vjepa2",),  # VideoREPA: V-JEPA 2's final norm replaced by Identity
            token_grid=(10, 15),  # VideoREPA: video teachers at 160×240 for 480×720 clips
        ),
    )


if __name__ == "__main__":
    main(config())
