"""UniWorld's VLM conditioning at CPU scale (issue 20 §4): does text through a frozen VLM and the adapter
reach the video? A tiny Wan in pixel space learns the synthetic world (``minivdit/data/synthetic.py``) from
captions ("a red disc moving right") read by a tiny random Qwen2.5-VL, through UniWorld's ``EncoderAdapter``.
``tools/ablate_vlm.py`` trains it with and without the image path and measures ``syn_acc`` of caption-
conditioned samples (chance: 0.1). Measured (1,500 steps, ~10 min a run on 2 cores; seeds 0, 1, 2):

========================================  ======================  ======================
arm                                       syn_acc, caption        syn_acc, empty caption
========================================  ======================  ======================
text (released: the decoder only)         0.72 ± 0.03             0.11 ± 0.02
vision (``--vlm.use-vision``)             0.70 ± 0.05             0.14 ± 0.02
========================================  ======================  ======================

The caption's colour reaches the samples (8 of 10 classes right on the contact sheet), the shapes are rough.
The settings are the FlashI2V ablation's (x-prediction, logit-normal t at 0.8, lr 1e-3); the same run with
velocity prediction, uniform t and lr 5e-4 drew no objects (0.16). Table, samples and what this does not
show (a random VLM): ``docs/ablations/vlm.md``.

What is UniWorld's here and what is not:
- The VLM path is the released one: the chat template with the system prompt, the caption and the clip's
  first frame, the last hidden state, every position, no mask (``VLMConfig``), the adapter Linear-GELU-Linear
  (``UniWorldConfig``), caption dropout 0.1 to "" before the VLM, and the VLM frozen.
- The VLM is ``make_tiny_qwen_vl``'s: 2 layers of width 32, random weights, a BPE tokenizer that reads each
  caption word as one token (made in ``--vlm.path`` on first use). Random, but the tokens of different words
  are different vectors, which is all the adapter needs to tell captions apart.
- ``--vlm.use-vision`` is the image path (the paper's VLM(T, I)): the full model with the first frame's pixels
  (the tiny vision tower, also random). The VLM's frame is 56 × 56 (the smallest Qwen image: 2 × 2 merged
  tokens), not 240 × 416, which only costs positions at this scale.
- The DiT is trained from scratch with the adapter (``uniworld.train="all"``): no pretrained Wan is small
  enough, and the released setting (adapter only, on a trained DiT) has no trained DiT to start from here.
- The backbone is Wan's block (full 3-D self-attention with RoPE, text cross-attention, adaLN) at width 64,
  4 blocks, on 8 × 16 × 16 RGB clips (patch 1 × 2 × 2: 512 tokens), with no VAE.
- Rectified flow with x-prediction and the velocity loss, logit-normal t (0.8, 0.8), as
  ``recipes/flashi2v_ablation.py``; Euler 10 steps and CFG 3 at sampling (the null: VLM("" + the frame)).

    python recipes/uniworld_synthetic.py                      # the text path (released)
    python recipes/uniworld_synthetic.py --vlm.use-vision     # the image path (the paper's VLM(T, I))
"""

from pathlib import Path

from minivdit.conditioning.text import TextEncoderConfig
from minivdit.conditioning.vlm import VLMConfig, make_tiny_qwen_vl
from minivdit.data import DataConfig
from minivdit.models.uniworld import UniWorldConfig
from minivdit.models.vae import VAEConfig
from minivdit.models.wan import WanConfig
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

VLM_DIR = "runs/tiny-qwen-vl"
VLM_WIDTH = 32


def config() -> TrainConfig:
    return TrainConfig(
        run_name="uniworld_synthetic",
        model=WanConfig(
            patch_size=(1, 2, 2),
            num_attention_heads=4,
            attention_head_dim=16,
            in_channels=3,
            out_channels=3,
            text_dim=64,  # the adapter's output: T5's 4096 in the release
            freq_dim=64,
            ffn_dim=128,
            num_layers=4,
            rope_max_seq_len=32,
            num_frames=8,
            input_size=(16, 16),
        ),
        uniworld=UniWorldConfig(vlm_dim=VLM_WIDTH, hidden_dim=64, out_dim=64, train="all"),
        vlm=VLMConfig(path=VLM_DIR, dtype="float32", frame_size=(56, 56), max_length=48),
        text=TextEncoderConfig(path=None, dropout=0.1),
        vae=VAEConfig(kind="none"),
        objective=FlowConfig(
            prediction="x", t_sampling="logit_normal", logit_mean=0.8, logit_std=0.8, sampler="euler"
        ),
        data=DataConfig(
            dataset="synthetic",
            synthetic_captions=True,
            num_frames=8,
            image_size=16,
            batch_size=8,
            num_workers=0,
        ),
        optim=OptimConfig(lr=1e-3, warmup_steps=100, grad_clip=1.0),
        ema=EMAConfig(decay=0.995),
        sample=SampleEvalConfig(num=10, steps=10, cfg_scale=3.0, seed=0),
        log=LogConfig(every=50, tensorboard=False),
        ckpt=CkptConfig(every=0, keep=1),
        sample_every=-1,
        max_steps=1500,
        seed=0,
    )


def ensure_vlm(cfg: TrainConfig) -> None:
    """The tiny VLM at ``--vlm.path``, made on first use (``make_tiny_qwen_vl``, seeded: the same on every
    machine)."""
    if not (Path(cfg.vlm.path) / "config.json").is_file():
        make_tiny_qwen_vl(cfg.vlm.path, hidden=VLM_WIDTH, seed=0)


if __name__ == "__main__":
    main(config(), before=ensure_vlm)
