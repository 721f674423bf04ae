"""CogVideoX-5B-I2V fine-tuned for anyframe conditioning on a captioned video folder: the baseline arm of the
dREPA blog's paired ablation (seeds/000, "From Anyframe to Timelapse"; ``drepa_timelapse.py`` is the other
arm, identical but for the alignment loss).

What it trains: the diffusers CogVideoX-5B-I2V transformer (``--pretrained``), full fine-tune by default
(``--lora.rank 128`` for LoRA), on 49-frame 480×720 clips encoded by its frozen VAE (13×60×90 latents), with
the objective CogVideoX was trained with (``DDPMConfig.cogvideox()``: v-prediction, scaled-linear β, zero
terminal SNR, SNR shift 1.0, uniform t) and its T5 text (226 tokens, no mask, caption dropout 0.1 = SAT's
``ucg_rate``; a dropped caption becomes an all-zero context, as in SAT, which trained the released weights:
``--text.null zeros``; diffusers' trainers use T5(""), ``--text.null empty``). The image condition is
**anyframe** (seeds/000; ``minivdit/conditioning/i2v.py``): the condition frame i is drawn uniformly over the
49 frames, placed in a clip of N(0, 0.07) noise and VAE-encoded; i = 0 is exactly CogVideoX-I2V's first-frame
path (pixel noise σ = exp(N(−3, 0.5)), 5 % condition dropout).

Settings and where they come from:
- AdamW lr 1e-5, betas (0.9, 0.95), weight decay 1e-4, gradient clipping 0.1: CogVideoX's SAT SFT config
  (``sat/configs/sft.yaml``, anchors-cogvideox §5.2). With ``--lora.rank 128`` raise the lr (SAT LoRA: 1e-3
  to 5e-4; CogVideo's diffusers trainer ``finetune/``: 2e-5 by default, α 64; VideoREPA, diffusers'
  training example and finetrainers: 1e-4).
- Learning rate: SAT's schedule (SwissArmyTransformer ``AnnealingLR``, CogVideoX SAT defaults ``--warmup
  0.01 --lr-decay-style linear``): linear warm-up over 1 % of the steps, then a linear decay to 0.01·lr at
  the last step (``OptimConfig.schedule``; SAT's fine-tune mode also caps the first 100 steps at 5 % of the
  lr, not reproduced). CogVideo's ``finetune/`` and VideoREPA: 100 warm-up steps, then constant
  (``--optim.warmup-fraction 0 --optim.warmup-steps 100 --optim.schedule constant``).
- Global batch 16 (SAT's ``sft.yaml``: "16 videos per batch for ALL GPUs"; VideoREPA's 5B run: 32): batch 1
  per GPU, and ``--global-batch`` sets the gradient accumulation for the GPUs at hand (2 on the blog's 8
  H100s, about 30 h with dREPA). bf16 with FSDP2 per block, fp32 reduction, activation checkpointing per
  block, flash attention (``models/attention.py`` falls back to SDPA where flash-attn is missing).
- Frames: SAT's ``SFTDataset`` (``sat/configs/sft.yaml``: ``fps: 8``, ``skip_frms_num: 3``): 49 frames
  resampled to 8 fps from frame 3 (about 6 s of video, as in pretraining; 49 consecutive frames at 24-30
  fps would move 3-4x slower), padded with the last frame when the video is shorter. ``--data.fps 8 4 2``
  lists every video once per rate, as the blog's subclips "at three different time intervals" (which it
  does not give); ``--data.frame-sampling even`` is CogVideo ``finetune/``'s even spacing.
- EMA off (the blog does not mention one; a 5B EMA is another sharded copy): ``--ema.enabled`` turns it on.
- Seed 0 for both arms, so the two runs see the same clips, noise, t, caption drops and condition frames.
- Samples of the run use CogVideoXDPMScheduler's loop (``sampler="dpm"``), CogVideo's recommendation for
  5B-I2V; ``--validation.prompts … --validation.images …`` samples them during training
  (``minivdit/validate.py``).

``--pretrained`` decides the architecture: the folder's ``transformer/config.json`` replaces the 5B-I2V
preset (keeping the recipe's runtime choices: flash attention, activation checkpointing, and the frames and
size the run trains at), so a CogVideoX-2B, 1.5 or tiny test folder needs no preset change.

Deviations: the blog trains on 11k curated timelapse clips (ChronoMagic-ProH plus an internal Apple set);
point ``--data.root`` / ``--data.labels-csv`` at yours (``path,caption`` or ChronoMagic's ``videoid,name``).
The pos-embedding of 5B-I2V is learned for exactly 49×480×720 and 226 text tokens: other sizes are refused,
unless ``--model.learned-pe drop`` (RoPE only; diffusers' I2V LoRA example and cogvideox-factory drop it for
multi-resolution training) or ``interpolate``. Buckets (``minivdit/data/buckets.py``):
``--data.buckets.sizes`` trains on clips of several sizes and lengths, one bucket per step on every rank;
bucketed runs drop the learned PE (below). The default is unchanged: one size, the learned PE as released.

    torchrun --nproc_per_node=8 recipes/cogvideox_i2v.py --pretrained /models/CogVideoX-5b-I2V \\
        --vae.path /models/CogVideoX-5b-I2V/vae --text.path /models/CogVideoX-5b-I2V \\
        --data.root /data/timelapse --data.labels-csv captions.csv
    ... --lora.rank 128 --optim.lr 1e-4          # LoRA instead of a full fine-tune
    ... --data.buckets.sizes 49x480x720 49x720x480 49x480x480 25x480x720 --model.learned-pe drop   # buckets
"""

from dataclasses import replace

from minivdit.conditioning.i2v import I2VConfig
from minivdit.conditioning.text import TextEncoderConfig
from minivdit.data import DataConfig
from minivdit.dist import ParallelConfig
from minivdit.models.cogvideox import preset
from minivdit.models.lora import LoRAConfig
from minivdit.models.vae import VAEConfig
from minivdit.objectives.ddpm import DDPMConfig
from minivdit.train import CkptConfig, EMAConfig, LogConfig, OptimConfig, TrainConfig, main

PRETRAINED = "/models/CogVideoX-5b-I2V"


def config() -> TrainConfig:
    return TrainConfig(
        run_name="cogvideox_i2v",
        model=replace(preset("CogVideoX-5B-I2V"), attn_backend="flash"),
        pretrained=PRETRAINED,
        lora=LoRAConfig(rank=0),
        # CogVideo recommends CogVideoXDPMScheduler for 5B and 5B-I2V (inference/cli_demo.py): the run's
        # samples (validation, python -m minivdit.sample --ckpt) use its loop; training is the same either way
        objective=DDPMConfig.cogvideox(snr_shift_scale=1.0, sampler="dpm"),
        vae=VAEConfig(kind="cogvideox", path=f"{PRETRAINED}/vae"),
        text=TextEncoderConfig(path=PRETRAINED, dropout=0.1, null="zeros"),
        i2v=I2VConfig(mode="anyframe"),
        data=DataConfig(
            dataset="folder",
            root=None,
            labels_csv="captions.csv",
            num_frames=49,
            frame_sampling="fps",
            fps=(8.0,),
            skip_frames=3,
            random_start=False,
            image_size=(480, 720),
            batch_size=1,
            num_workers=4,
        ),  # fmt: skip
        optim=OptimConfig(
            lr=1e-5,
            betas=(0.9, 0.95),
            weight_decay=1e-4,
            grad_clip=0.1,
            warmup_fraction=0.01,
            schedule="linear",
        ),
        ema=EMAConfig(enabled=False),
        parallel=ParallelConfig(activation_checkpointing=True),
        log=LogConfig(every=10),
        ckpt=CkptConfig(every=1000, keep=2),
        precision="bf16",
        max_steps=10_000,
        global_batch=16,
        seed=0,
    )


if __name__ == "__main__":
    main(config())
