"""FlashI2V on Wan2.1-T2V-1.3B: image-to-video by latent shifting and Fourier guidance on a captioned video
folder. Paper: seeds/003, "Uniworld-OSP2.0: A VLM-Enhanced Unified Framework for Image-to-Video Generation"
(Open-Sora Plan team), which builds on FlashI2V (Fourier-Guided Latent Shifting I2V); code and configs
``PKU-YuanGroup/FlashI2V``.

Target: the released FlashI2V 1.3B model (the FlashI2V stage the paper builds on, not its 14B model with
the VLM conditioning), fine-tuned from Wan2.1-T2V-1.3B with FlashI2V's two additions
(``minivdit/models/flashi2v.py``): the start frame's latent z_c (frame 0 VAE-encoded alone) shifts the
backbone's input by a learned φ(z_c), and its high-frequency magnitude is patch-embedded and summed into the
video tokens. Every backbone weight is trained, with φ and the Fourier embedding (zero-init: step 0 is the T2V
model exactly). No channel concat, no CLIP tokens, no condition dropout.

Settings and where they come from (the train config ``configs/train/npu/flashi2v_1_3b.yaml`` as read at
146086a, whose values ``reference/anchors-modules.md`` §3.6 quotes for the ``gpu`` twin; the trainer
``train/train_flashi2v.py``):
- Backbone: the diffusers Wan2.1-T2V-1.3B folder (``--pretrained``; 30 blocks × 1536, 12 heads, ffn 8960),
  architecture read from its ``transformer/config.json``; the VAE (Wan 2.1, fp32: ``vae_config.dtype``) and
  UMT5-XXL (512 tokens, ``text_len: 512``) from the same folder. The VAE encodes with the posterior mean, as
  the reference's Wan VAE ``encode`` (``flashi2v/modules/vae.py`` l.536-541): ``sample_posterior=False``.
- FlashI2V: ``FlashI2VConfig()`` = the released model config: φ kernel (1, 3, 3) (``conv3x3x3_proj:
  False``), training ratio U[0.05, 0.95] (``low_freq_energy_ratio``), |ifft| features (``fft_return_abs``),
  inference ratio 0.1 (``configs/infer/gpu/flashi2v_1_3b.yaml``).
- Data: 49 frames at 16 fps (``sample_num_frames: 49``, ``train_fps: 16``), 480 × 832 (``sample_height``,
  ``sample_width``) → 13 × 60 × 104 latents; batch 1 per GPU, no accumulation
  (``gradient_accumulation_steps: 1``); caption dropout 0.1 to the empty prompt (``text_drop_ratio: 0.1``;
  the dataset blanks the caption, so UMT5("")).
- Objective: ``FlowConfig.wan(7.0, "euler", sampling_grid="linear")``. Training: velocity target noise − x,
  t_model = 1000σ, logit-normal σ (mean 0, std 1) with the dynamic shift exp(μ), μ from 0.5 at 256 to 1.15
  at 4096 tokens of one latent frame (``scheduler_config``: ``use_dynamic_shifting``,
  ``use_logitnorm_time_sampling``; ``flashi2v_flow_matching.py``). Sampling: FlashI2V's Euler loop on a
  linear σ grid shifted by 7.0, 50 steps, CFG 5.0 with the start frame kept in the unconditional branch
  (``configs/infer/gpu/flashi2v_1_3b.yaml``), recorded in the run's ``objective`` and ``sample`` sections
  (``objective.sample`` around the wrapper is FlashI2V's loop: ``tests/test_flashi2v.py``).
- AdamW lr 2e-5, weight decay 0.01 (``optimizer_config``), betas (0.9, 0.999) and eps 1e-15 (the trainer's
  defaults for keys the config leaves out, ``train/train_flashi2v.py`` ``torch.optim.AdamW(...)``); constant
  lr, no warm-up (no scheduler is built); gradient clipping at 1.0 (``init_max_grad_norm``); EMA 0.9999 every
  step (``ema_decay``, ``ema_update_interval: 1``).
- bf16 (``weight_dtype``) with FSDP2 per block and fp32 reduction, activation checkpointing per block
  (``gradient_checkpointing: True``); seed 1024 (``seed``); a checkpoint every 1000 steps
  (``save_interval``).

Deviations:
- Gradient clipping: the reference's ``AdaptiveGradClipper`` starts at ``init_max_grad_norm`` 1.0 and adapts
  the threshold to the running gradient-norm statistics; here a fixed threshold of 1.0.
- No context parallelism (the release: ``fsdp_size: 8``, ``cp_size: 2``): every rank holds whole sequences of
  13 × 30 × 52 = 20 280 video tokens.
- The global batch is batch 1 × the data-parallel ranks at hand (the reference's "effective batch size" is
  dp_size × 1 × 1, dp_size = world size / CP 2; the world size is not in the config): ``--global-batch``
  fixes one on any GPU count.
- ``max_steps`` 100 000, a choice: the config's ``training_iteration`` 1 000 000 is a cap, and the number of
  steps the released weights trained for is not in the code.
- Data: the reference trains on its own filtered set (the config's lmdb
  ``osp/lmdb/all_videos_720p/filtered_samples_3928666``, ~3.9 M clips); point ``--data.root`` /
  ``--data.labels-csv`` at yours (``path,caption``).
- The reference loads Wan's original ``.pth`` files; here the diffusers folders, loaded strictly (the same
  tensors: ``minivdit/models/wan.py``).

    torchrun --nproc_per_node=8 recipes/flashi2v_wan.py --pretrained /models/Wan2.1-T2V-1.3B-Diffusers \\
        --vae.path /models/Wan2.1-T2V-1.3B-Diffusers --text.path /models/Wan2.1-T2V-1.3B-Diffusers \\
        --data.root /data/videos --data.labels-csv captions.csv
    python -m minivdit.sample --ckpt runs/flashi2v_wan --image start.png --prompt "a boat drifts" \\
        --precision bf16 --out samples/flashi2v     # the run's sampler (Euler, shift 7, 50 steps, CFG 5)
"""

from dataclasses import replace

from minivdit.conditioning.text import TextEncoderConfig
from minivdit.data import DataConfig
from minivdit.dist import ParallelConfig
from minivdit.models.flashi2v import FlashI2VConfig
from minivdit.models.lora import WAN_TARGETS, LoRAConfig
from minivdit.models.vae import VAEConfig
from minivdit.models.wan import preset
from minivdit.objectives.flow import FlowConfig
from minivdit.train import (
    CkptConfig,
    EMAConfig,
    LogConfig,
    OptimConfig,
    SampleEvalConfig,
    TrainConfig,
    main,
)

PRETRAINED = "/models/Wan2.1-T2V-1.3B-Diffusers"


def config() -> TrainConfig:
    return TrainConfig(
        run_name="flashi2v_wan",
        # 49 px frames -> 13 latent frames, 480 x 832 -> 60 x 104 latents (VAE stride 4 in time, 8 in space)
        model=replace(preset("Wan2.1-T2V-1.3B"), attn_backend="flash", num_frames=13, input_size=(60, 104)),
        flashi2v=FlashI2VConfig(),
        pretrained=PRETRAINED,
        # full fine-tune as FlashI2V; --lora.rank N adapts q/k/v/o of both attentions (finetrainers')
        lora=LoRAConfig(rank=0, targets=WAN_TARGETS),
        objective=FlowConfig.wan(7.0, "euler", sampling_grid="linear"),
        vae=VAEConfig(kind="wan", path=PRETRAINED, sample_posterior=False),
        text=TextEncoderConfig.wan(PRETRAINED, dropout=0.1, null="empty"),
        data=DataConfig(
            dataset="folder",
            root=None,
            labels_csv="captions.csv",
            num_frames=49,
            frame_sampling="fps",
            fps=(16.0,),
            image_size=(480, 832),
            batch_size=1,
            num_workers=8,
        ),
        optim=OptimConfig(lr=2e-5, betas=(0.9, 0.999), eps=1e-15, weight_decay=0.01, grad_clip=1.0),
        ema=EMAConfig(decay=0.9999),
        sample=SampleEvalConfig(num=1, steps=50, cfg_scale=5.0, seed=0),
        parallel=ParallelConfig(activation_checkpointing=True),
        log=LogConfig(every=10),
        ckpt=CkptConfig(every=1000, keep=2),
        precision="bf16",
        max_steps=100_000,
        seed=1024,
    )


if __name__ == "__main__":
    main(config())
