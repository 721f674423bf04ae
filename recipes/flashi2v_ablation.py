"""FlashI2V against channel concat at CPU scale: seeds/003 Fig. 7 in miniature (issue 19 §7).

Image-to-video on the built-in synthetic clips, in pixel space: a small full-3-D V-DiT generates a clip from
its first frame and a label that names the motion. The training set is the synthetic dataset's held-out
combination split ``in_domain`` (``minivdit/data/synthetic.py``, "Held-out combinations"): 70 of the 100
appearance × motion pairs; the 30 others (``out_of_domain``) are never seen, and are where FlashI2V's claim
lives (better generalisation out of domain than channel concat). Three arms, chosen with ``--arm``:

- ``concat``: the start frame, noise-augmented and zero-padded over the clip, concatenated to ``x_t`` along
  the channels (``--model.cond-channels 3``, ``--i2v.mode first``: CogVideoX-I2V's conditioning with its
  image noise σ = exp(N(−3, 0.5²)) and 5 % image dropout, ``minivdit/conditioning/i2v.py``);
- ``flashi2v``: FlashI2V's latent shift by φ(frame 0) with Fourier guidance (``minivdit/models/flashi2v.py``,
  the released defaults: ratio ~ U[0.05, 0.95] in training, 0.1 at inference);
- ``shift``: the latent shift alone (``FlashI2VConfig.fourier=False``).

Everything else is the same in every arm: the quickstart's objective and optimiser (x-prediction with the
velocity loss, logit-normal t at 0.8, lr 1e-3, EMA 0.995), full-3-D blocks with QK-norm (the layout that
keeps one object per clip, ``recipes/quickstart.py``), 10 motion labels with CFG dropout. Pixel space, not a
VAE: FlashI2V's shift and Fourier features act on whatever space the model denoises (the paper's is Wan's
latent space), and pixels give the clearest signal for the CPU budget; the recipe's row in
``docs/fidelity.md`` lists it as a deviation.

``tools/ablate_flashi2v.py`` trains every arm with three seeds and measures them (chunk-wise ``syn_fvd`` in
and out of domain, frame-0 PSNR, the loss curves); the results are in ``docs/ablations/flashi2v.md``.

    python recipes/flashi2v_ablation.py --arm flashi2v --seed 0      # one arm, one seed (~7 min, 2 cores)
    python tools/ablate_flashi2v.py --out runs/ablate_flashi2v         # the whole ablation
"""

from minivdit.conditioning.i2v import I2VConfig
from minivdit.config import pop_choice
from minivdit.data import DataConfig
from minivdit.models.dit import DiTConfig
from minivdit.models.flashi2v import FlashI2VConfig
from minivdit.objectives.flow import FlowConfig
from minivdit.train import CkptConfig, EMAConfig, LogConfig, OptimConfig, SampleEvalConfig, TrainConfig, main

ARMS = ("concat", "flashi2v", "shift")
NUM_FRAMES, SIZE, MOTIONS = 8, 16, 10


def config(arm: str = "flashi2v") -> TrainConfig:
    if arm not in ARMS:
        raise ValueError(f"arm must be one of {ARMS}, got {arm!r}")
    return TrainConfig(
        run_name=f"flashi2v_ablation_{arm}",
        model=DiTConfig(
            block_type="full3d",
            qk_norm=True,
            depth=6,
            hidden_size=128,
            num_heads=4,
            patch_size=4,
            in_channels=3,
            cond_channels=3 if arm == "concat" else 0,
            input_size=(SIZE, SIZE),
            num_frames=NUM_FRAMES,
            num_classes=MOTIONS,
            learn_sigma=False,
        ),
        i2v=I2VConfig(mode="first") if arm == "concat" else I2VConfig(),
        flashi2v=FlashI2VConfig(fourier=arm == "flashi2v") if arm != "concat" else None,
        objective=FlowConfig(
            prediction="x", t_sampling="logit_normal", logit_mean=0.8, logit_std=0.8, sampler="euler"
        ),
        data=DataConfig(
            num_frames=NUM_FRAMES,
            image_size=SIZE,
            num_classes=MOTIONS,
            synthetic_split="in_domain",
            batch_size=16,
        ),
        optim=OptimConfig(lr=1e-3, warmup_steps=100, grad_clip=1.0),
        ema=EMAConfig(decay=0.995),
        log=LogConfig(every=25),
        ckpt=CkptConfig(every=0, keep=1),
        sample=SampleEvalConfig(num=10, steps=5, cfg_scale=3.0),  # x-prediction samples cleanly in 5 steps
        max_steps=1200,
        sample_every=0,  # the grid (frame 0 of the first 10 training clips) at the end only
    )


if __name__ == "__main__":
    main(config(pop_choice("--arm", ARMS, "flashi2v")))
