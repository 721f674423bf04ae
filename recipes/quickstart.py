"""Quickstart: a small class-conditional V-DiT trained with flow matching on the built-in synthetic dataset,
which then measures its own samples.

No files, no GPU, no VAE: 8-frame 16x16 pixel clips of coloured shapes whose colour, shape and motion are set
by the class (``minivdit/data/synthetic.py``). Pixel space (``vae="none"``), patch 4 (16 tokens per frame),
4 + 4 spatial/temporal blocks of width 128, x-prediction trained with the velocity loss, 1500 steps of batch
16. On 2 CPU cores it trains in about 7 minutes; samples of every class land in
``runs/quickstart/samples/step_<N>/contact.png`` (one row per class: compare the colour, shape and motion
with the row's label), and the run ends by evaluating itself with the ``synthetic`` protocol
(``minivdit/eval/protocols.py``): ``syn_fvd`` (the Fréchet distance of the synthetic detector's features, 512
samples against 512 real clips; lower is better; two sets of real clips are 0.008 apart), ``syn_acc`` (the
fraction of samples the detector classifies as the class they were sampled for) and ``syn_count`` (the
fraction of sample frames showing the class's number of objects, one or two; real clips 1.000), printed next
to the sample path and written to ``runs/quickstart/eval/step_0001500/metrics.json``.

Why these settings (issue 11). Each run below trained 1500 steps of batch 16 and was measured with the
synthetic detector on 512 samples (Euler) as ``syn_fvd`` / ``syn_acc`` (/ ``syn_count`` where measured):

===============================================================  ===============  =======================
run                                                              CFG 1            CFG 3
===============================================================  ===============  =======================
the previous quickstart (velocity, uniform t, lr 5e-4)           8.03 / 0.594     6.53 / 0.814
x-prediction, logit-normal t (0.8, 0.8), lr 5e-4                 3.21 / 0.867     2.37 / 0.961
  the same at 32x32 with patch 8 (16 tokens per frame)           5.95 / 0.699     —
  the same with full-3-D blocks                                  5.21 / 0.799     —
  the same with full-3-D blocks and lr 1e-3                      4.03 / 0.867     2.27 / 0.932
x-prediction, logit-normal t (0.0, 0.8), lr 1e-3                 —                1.59 / 0.957
**x-prediction, logit-normal t (0.8, 0.8), lr 1e-3 (this)**      1.41 / 0.979     0.70 / 1.000 / 0.47
                                                                 / 0.59
  the same with full-3-D blocks                                  —                2.21 / 0.924 / 0.88
  the same with full-3-D blocks and QK-norm                      —                0.56 / 1.000 / 0.88
    ... stopped at 1200 steps (to fit 10 minutes)                —                2.52 / 0.941 / 0.84
    ... 1200 steps, the last 400 with a linear lr decay          —                2.86 / 0.947 / 0.80
    ... 6 blocks instead of 8 (3.6 it/s: fits the budget)        —                2.22 / 0.951 / 0.84
    ... width 96 with 2 heads (3.8 it/s: fits the budget)        —                3.42 / 0.887 / 0.82
    ... measured again (issue 22)                                —                0.56 / 1.000 / 0.88
    ... sampled with 10 Euler steps instead of 5                 —                0.54 / 0.998 / 0.89
    ... MLP ratio 2 (1.2× the steps per second)                  —                1.52 / 0.936 / 0.85
    ... 2-frame patches (``--model.patch-t 2``: 64 tokens, 1.9×) —                3.27 / 0.951 / 0.74
===============================================================  ===============  =======================

- **x-prediction** (JiT, Li & He 2025; ``FlowConfig.prediction="x"``): the network outputs the clean clip and
  the loss stays the velocity MSE. A velocity target carries the noise, so each token must reproduce its 48
  noise values; a clean clip is far simpler to predict. It alone cut ``syn_fvd`` 2.5× and removed the
  speckle.
- **Logit-normal t centred at 0.8** (JiT's −0.8 in its direction of time) spends the training on noisy times,
  which the 1/t² weight of an x-prediction velocity loss would otherwise starve; centred at 0 it was worse.
- **lr 1e-3** (with 100 warm-up steps and clipping at 1): twice the previous rate, for a short run.
- **One object per clip: not yet within the budget.** ``syn_count`` exposes what the detector forgives:
  with Latte's spatial + temporal blocks the samples often split the object or grow a second one (0.47 of
  the frames right), because an object that moves across patches is only ever seen by attention within one
  frame or along one patch position. Joint attention over all 128 tokens keeps one object (0.88) but blurs
  the shapes (``syn_fvd`` 2.21); with RMS-normalised queries and keys (``--model.block-type full3d
  --model.qk-norm``) shapes are sharp too (0.56 / 1.000 / 0.88), but it runs at 2.8 it/s here against 3.8
  for this layout, so the whole quickstart takes about 11.5 minutes instead of 9.5, and stopping it at 1200
  steps (with or without an lr cool-down, ``--optim.decay-steps``), at 6 blocks, or at width 96 (the
  layouts that fit the budget), loses the gain; ``torch.compile`` per block (``--parallel.compile``) was
  slower here (2.3 it/s after a 50 s warm-up).
  The full-3-D + QK-norm command is the one to use when the extra two minutes do not matter.
- **Fewer or cheaper tokens lose it too** (issue 22 §4): patches spanning two frames (CogVideoX 1.5's
  temporal patch) halve the tokens and step 1.9× as fast, but each token must then carry the motion within
  its two frames: blocky objects that stall (3.27 / 0.951 / 0.74); an MLP half as wide runs 1.2× as fast
  and loses most of the quality (1.52 / 0.936 / 0.85). Ten sampling steps instead of five move
  ``syn_count`` by 0.01. So the goal of issue 22 (``syn_count`` ≥ 0.9 with ``syn_fvd`` ≤ 0.7 and
  ``syn_acc`` ≥ 0.98 within ten minutes, install included) is not met by any layout measured here.
- **Not taken:** 32x32 with patch 8 keeps the cost but cuts objects along the 8-pixel patch grid.
- **CFG 3** for the samples and the evaluation, as the previous quickstart sampled: guidance sharpens class
  identity, which a short run still mixes up. The protocol's default is no guidance (as the papers); the
  quickstart's record says which it used. **Euler, 5 steps**: x-prediction samples cleanly in few steps
  (this run, measured before the per-clip noise: 0.78 with 5 steps, 0.72 with 10), and 5 steps keep the
  512-sample evaluation
  near a minute.

    python recipes/quickstart.py                        # defaults below
    python recipes/quickstart.py --model.block-type full3d --model.qk-norm   # one object per clip, ~11.5 min
    python recipes/quickstart.py --max-steps 500 --optim.lr 3e-4
    python -m minivdit.eval run --ckpt runs/quickstart --protocol synthetic --cfg-scale 1  # no CFG
"""

from minivdit.data import DataConfig
from minivdit.eval.evaluate import EvalConfig
from minivdit.models.dit import DiTConfig
from minivdit.objectives.flow import FlowConfig
from minivdit.train import CkptConfig, EMAConfig, LogConfig, OptimConfig, SampleEvalConfig, TrainConfig, main


def config() -> TrainConfig:
    return TrainConfig(
        run_name="quickstart",
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
        objective=FlowConfig(
            prediction="x", t_sampling="logit_normal", logit_mean=0.8, logit_std=0.8, sampler="euler"
        ),
        data=DataConfig(num_frames=8, image_size=16, num_classes=8, batch_size=16),
        optim=OptimConfig(lr=1e-3, warmup_steps=100, grad_clip=1.0),
        ema=EMAConfig(decay=0.995),  # a short run: 0.9999 would still be mostly the initial weights
        log=LogConfig(every=50),
        ckpt=CkptConfig(every=750, keep=2),
        sample=SampleEvalConfig(num=8, steps=5, cfg_scale=3.0),
        eval=EvalConfig(protocol="synthetic", steps=5, cfg_scale=3.0, batch_size=64),
        max_steps=1500,
        sample_every=0,  # samples at the end only
    )


if __name__ == "__main__":
    main(config())
