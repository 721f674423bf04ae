"""UniWorld-OSP2.0: a FlashI2V Wan model conditioned on a frozen Qwen2.5-VL through a trained adapter. Paper:
seeds/003, "Uniworld-OSP2.0: A VLM-Enhanced Unified Framework for Image-to-Video Generation" (Open-Sora Plan
team); code ``PKU-YuanGroup/UniWorld``, folder ``UniWorld-OSP2.0/`` (read at e64fa8e; facts in
``reference/anchors-conditioning.md`` §2).

What trains: only UniWorld's ``EncoderAdapter`` (``minivdit/models/uniworld.py``: Linear(3584 → 4096), exact
GELU, Linear(4096 → 4096), xavier, zero biases; 31.47 M parameters), between the VLM's hidden states and Wan's
frozen text projection (``text_embedding``, made for T5's 4096-wide tokens). The DiT is a FlashI2V Wan2.1-14B
(``minivdit/models/flashi2v.py``): the start frame's latent shifts the input and its high frequencies are
patch-embedded, exactly as in ``recipes/flashi2v_wan.py``, and it stays frozen.

Settings and where they come from (``train/train_uniworld_osp2.py``,
``configs/train/gpu/uniworld_osp2_14b.yaml`` and ``ultrai2v/data/datasets/flashi2v_dataset.py``, as anchors
§2.1-2.2 quote them):
- VLM: Qwen2.5-VL-7B-Instruct (``--vlm.path``), bf16, frozen; the **text decoder only**
  (``Qwen2_5_VLTextModel``: the image reaches it as 135 ``<|image_pad|>`` placeholder tokens, never as
  pixels, ``VLMConfig.use_vision=False``); the prompt is the chat template with the default system prompt,
  ``[first frame resized to 240 × 416, caption truncated to 512 Qwen tokens]``, padded to 1024 positions;
  the last hidden state (post-norm), all 1024 positions, no mask (``VLMConfig()``).
- Adapter: ``UniWorldConfig()`` = in 3584 (the 7B's hidden size), hidden = out = 4096; only it trains
  (``model.requires_grad_(False)``; ``AdamW(vlm_encoder_adapter.parameters())``).
- AdamW lr 5e-6, weight decay 0, betas (0.9, 0.999), eps 1e-15; constant lr; gradient clipping at 1.0
  (``init_max_grad_norm``); EMA 0.9999 every step.
- Caption dropout 0.1: the caption becomes "" before the VLM, with the same image (``text_drop_ratio``).
- Data: 49 frames at 16 fps, 480 × 832 → 13 × 60 × 104 latents; batch 1 per GPU; the Wan VAE with the
  posterior mean, as FlashI2V.
- Objective and sampler: FlashI2V's (``FlowConfig.wan(7.0, "euler", sampling_grid="linear")``: logit-normal
  t with the dynamic shift in training; 50 Euler steps at shift 7.0, CFG 5.0 with the start frame kept in the
  unconditional branch, ``configs/infer/gpu/uniworld_osp2_14b.yaml`` l.39-43).
- bf16, FSDP2 per block with activation checkpointing.

Where the paper and the code disagree, this recipe follows the code (the released behaviour); the paper's
variants are flags:
- The paper's VLM(T, I) sees the image (eq. 1); the code's text decoder does not: ``--vlm.use-vision`` runs
  the full ``Qwen2_5_VLModel`` with the pixels.
- The paper adds first-frame VAE tokens f_img through an MLP (eq. 3-5); the code has none:
  ``--uniworld.f-img concat`` (after the VLM tokens) or ``decoupled`` (a gated branch in each
  cross-attention); both start as no-ops (``minivdit/models/uniworld.py`` lists the choices).
- ``--uniworld.train all`` or ``--lora.rank N`` also trains the DiT (the paper trains the adapter only).

Deviations:
- The DiT: the release starts from its own trained FlashI2V-14B checkpoint (not public). ``--init-from RUN``
  loads a FlashI2V run of this framework (``recipes/flashi2v_wan.py`` on Wan2.1-T2V-14B) into the frozen DiT;
  without it the DiT is Wan2.1-T2V-14B (``--pretrained``) with FlashI2V's layers at their zero init, which
  makes it a text-to-video model that sees the start frame only through the VLM.
- The VLM runs online on every step, replicated on each rank (the release FSDP-shards it per decoder layer);
  at scale, cache its features once instead (``tools/cache_text.py --vlm.path``; the run then never loads
  it).
- The VLM's first frame is the training clip's frame 0 (already resized and cropped to 480 × 832), not the
  source video's, and it is not written to and read back from a JPEG file; with ``use_vision=False`` only the
  number of image tokens reaches the model, so neither changes the released features.
- Gradient clipping at a fixed 1.0 (the release's ``AdaptiveGradClipper`` adapts it); no context
  parallelism (the release: FSDP 8 × CP 2); ``max_steps`` 1000, the iteration whose adapter the inference
  config loads (``iter_000001000``).

    torchrun --nproc_per_node=8 recipes/uniworld_osp2.py --pretrained /models/Wan2.1-T2V-14B-Diffusers \\
        --vae.path /models/Wan2.1-T2V-14B-Diffusers --vlm.path /models/Qwen2.5-VL-7B-Instruct \\
        --init-from runs/flashi2v_wan_14b --data.root /data/videos --data.labels-csv captions.csv
"""

from dataclasses import replace

from minivdit.conditioning.text import TextEncoderConfig
from minivdit.conditioning.vlm import VLMConfig
from minivdit.data import DataConfig
from minivdit.dist import ParallelConfig
from minivdit.models.flashi2v import FlashI2VConfig
from minivdit.models.lora import WAN_TARGETS, LoRAConfig
from minivdit.models.uniworld import UniWorldConfig
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

PRETRAINED = "/models/Wan2.1-T2V-14B-Diffusers"
VLM = "/models/Qwen2.5-VL-7B-Instruct"


def config() -> TrainConfig:
    return TrainConfig(
        run_name="uniworld_osp2",
        # 49 px frames -> 13 latent frames, 480 x 832 -> 60 x 104 latents (VAE stride 4 in time, 8 in space)
        model=replace(preset("Wan2.1-T2V-14B"), attn_backend="flash", num_frames=13, input_size=(60, 104)),
        flashi2v=FlashI2VConfig(),
        uniworld=UniWorldConfig(),
        vlm=VLMConfig(path=VLM),
        pretrained=PRETRAINED,
        lora=LoRAConfig(rank=0, targets=WAN_TARGETS),  # --lora.rank N: LoRA on the frozen DiT too
        objective=FlowConfig.wan(7.0, "euler", sampling_grid="linear"),
        vae=VAEConfig(kind="wan", path=PRETRAINED, sample_posterior=False),
        text=TextEncoderConfig(path=None, dropout=0.1),  # no T5: the VLM reads the caption
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
        optim=OptimConfig(lr=5e-6, betas=(0.9, 0.999), eps=1e-15, weight_decay=0.0, grad_clip=1.0),
        ema=EMAConfig(decay=0.9999),
        sample=SampleEvalConfig(num=1, steps=50, cfg_scale=5.0, seed=0),
        parallel=ParallelConfig(activation_checkpointing=True),
        log=LogConfig(every=10),
        ckpt=CkptConfig(every=500, keep=2),
        precision="bf16",
        max_steps=1000,
        seed=1024,
    )


if __name__ == "__main__":
    main(config())
