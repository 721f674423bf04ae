"""The training loop: ``TrainConfig``, ``train(cfg)``, ``train_step(...)``, ``main(default)``.

``train_step`` is the only orchestrator (DESIGN.md §3): it calls each module once, in one direction; the model
does not know the objective and the objective does not know the model. ``train`` owns the bookkeeping around
it: distributed setup, meta-device build → parallelize → init, AdamW with warm-up and (Latte-style delayed)
gradient clipping, EMA, logging, atomic checkpoints, exact resume, periodic samples.

Randomness. Every micro-batch reseeds the global torch RNG from ``(seed, step, micro·world + rank)``: the
index of its block in the global batch, in the loader's order (rank r's k-th batch is global block
``k·world + r``, see ``minivdit.data``). The noise, the timesteps and the CFG label drop of a sample therefore
depend only on where it sits in the global batch: a resumed run repeats the uninterrupted one exactly, and
N ranks with accumulation A match one process with accumulation N·A (up to float reduction order).

Deviations from Latte's ``train.py`` (anchors-latte-repa.md §1.5): the optimizer state is checkpointed and
resume is exact; the first step's gradients are zeroed; gradient accumulation is supported; lr, betas and
weight decay are read from the config (Latte hard-codes lr 1e-4).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import resource
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

from minivdit import ckpt, dist, durable, forensics
from minivdit.align.heads import AlignConfig, AlignHead, check_block_index
from minivdit.align.teachers import Teacher, TeacherConfig, build_teacher, make_tiny_teacher
from minivdit.conditioning import Conditioner, batch_cond
from minivdit.conditioning.i2v import I2VConfig
from minivdit.conditioning.text import TextEncoderConfig, build_text_encoder, null_context, text_identity
from minivdit.conditioning.vlm import VLMConfig, VLMEncoder, vlm_identity
from minivdit.config import check_types, cli, from_dict, to_dict
from minivdit.data import Batch, DataConfig, build_loader
from minivdit.data.shards import (
    cache_mismatches,
    clip_mismatches,
    precision_mismatches,
    sampler_mismatches,
    start_frame_mismatches,
)
from minivdit.eval.evaluate import EvalConfig
from minivdit.log import MetricLogger, setup_logging
from minivdit.models import cogvideox as cogvideox_model
from minivdit.models import dit as dit_model
from minivdit.models import wan as wan_model
from minivdit.models.cogvideox import CogVideoXConfig, CogVideoXTransformer, pretrained_folder
from minivdit.models.dit import DiTConfig, VDiT, num_params
from minivdit.models.flashi2v import BackboneWrapper, FlashI2V, FlashI2VConfig
from minivdit.models.lora import LoRAConfig, apply_lora, init_lora_weights
from minivdit.models.uniworld import UniWorld, UniWorldConfig
from minivdit.models.vae import PixelSpace, VAEConfig, build_vae
from minivdit.models.wan import WanConfig, WanTransformer
from minivdit.objectives.ddpm import DDPM, DDPMConfig
from minivdit.objectives.flow import Flow, FlowConfig
from minivdit.preempt import EXIT_PREEMPTED, Preempted, PreemptionHandler, check_signal_names
from minivdit.sample import decode_latents, generate, start_frame_cond, write_samples
from minivdit.validate import ValidationConfig, Validator

log = logging.getLogger("minivdit")
ModelConfig = DiTConfig | CogVideoXConfig | WanConfig
"""A backbone config: the trainer builds the class it names (``model_class``)."""
MAX_NONFINITE_IN_A_ROW = 10


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """AdamW with a linear warm-up, then a constant (Latte / DiT / REPA; CogVideo ``finetune/`` and VideoREPA:
    ``constant_with_warmup``, 100 steps) or linearly decaying learning rate (CogVideoX SAT), and an optional
    cool-down: :func:`lr_at`. The lr is a function of the step, and the step is checkpointed (with the
    optimizer's state): a resumed run follows the same curve."""

    lr: float = 1e-4
    """Peak learning rate (Latte/DiT/REPA: 1e-4)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas."""
    weight_decay: float = 0.0
    """Decoupled weight decay (Latte: 0)."""
    eps: float = 1e-8
    """Adam epsilon."""
    warmup_steps: int = 0
    """Linear warm-up from 0 to ``lr`` over this many optimizer steps (CogVideo ``finetune/``, VideoREPA:
    100)."""
    warmup_fraction: float = 0.0
    """Warm up over this fraction of ``max_steps`` instead of ``warmup_steps`` (SwissArmyTransformer's
    ``--warmup``, default 0.01 = 1 %, which CogVideoX's SAT fine-tuning keeps); 0: use ``warmup_steps``."""
    schedule: Literal["constant", "linear"] = "constant"
    """After the warm-up: "constant", or "linear", SwissArmyTransformer's ``AnnealingLR`` "linear" decay
    (``sat/training/learning_rates.py``, the CogVideoX SAT trainer's default ``--lr-decay-style``):
    ``lr·(1 − (n − W)/max_steps)`` at step n = 1, 2, … after a warm-up of W steps, i.e. from ``lr`` down to
    ``lr·W/max_steps`` at the last step (0.01·lr with ``warmup_fraction`` 0.01; SAT's ``--lr-decay-ratio``
    0.1 is read by its cosine style only). Depends on ``max_steps``: resuming with another ``--max-steps``
    changes the curve from there on."""
    grad_clip: float = 0.0
    """Clip the global gradient norm to this value; 0 disables clipping (the norm is still logged)."""
    clip_start_step: int = 0
    """Clip only from this step on (Latte: measure until ``start_clip_iter``, 20k sky/ffs, 100k UCF)."""
    decay_steps: int = 0
    """Decay the lr linearly to 0 over the last this many steps of ``max_steps`` (a warmup-stable-decay
    cool-down); 0 keeps it constant (Latte / DiT / REPA)."""

    def __post_init__(self):
        check_types(self)
        if self.lr <= 0 or self.warmup_steps < 0 or self.grad_clip < 0 or self.clip_start_step < 0:
            raise ValueError(f"invalid OptimConfig: {self}")
        if self.decay_steps < 0:
            raise ValueError(f"OptimConfig.decay_steps must be >= 0, got {self.decay_steps}")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError(f"OptimConfig.warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if self.warmup_fraction and self.warmup_steps:
            raise ValueError(
                f"OptimConfig: give warmup_steps ({self.warmup_steps}) or warmup_fraction "
                f"({self.warmup_fraction}), not both"
            )
        if self.schedule not in ("constant", "linear"):
            raise ValueError(f"OptimConfig.schedule must be 'constant' or 'linear', got {self.schedule!r}")


@dataclass(frozen=True, kw_only=True)
class EMAConfig:
    """Exponential moving average of the model weights (used for sampling)."""

    enabled: bool = True
    """Keep an EMA copy (sampling and evaluation use it); off: they use the trained weights."""
    decay: float = 0.9999
    """EMA decay per optimizer step (Latte/DiT: 0.9999)."""
    start_step: int = 0
    """Before this step the EMA copies the weights (decay 0)."""

    def __post_init__(self):
        check_types(self)
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"EMAConfig.decay must be in [0, 1), got {self.decay}")


@dataclass(frozen=True, kw_only=True)
class LogConfig:
    every: int = 50
    """Status line / metrics.jsonl / tensorboard every this many steps."""
    tensorboard: bool = True
    """Write tensorboard events under ``<run>/tb``."""

    def __post_init__(self):
        check_types(self)


@dataclass(frozen=True, kw_only=True)
class CkptConfig:
    """Checkpoints under ``<run>/checkpoints`` (``minivdit/ckpt.py``) and what stops a run early."""

    every: int = 10_000
    """Checkpoint every this many steps (and at the end); 0 saves only at the end."""
    keep: int = 3
    """Keep the newest K checkpoints (0 keeps all)."""
    checksum: bool = True
    """Record a CRC-32 of every file (per GiB) and check it on resume: one extra read of what was written,
    ~2 GB/s per core, shared by the ranks. False records and checks sizes only."""
    signals: tuple[str, ...] = ("SIGTERM", "SIGUSR1")
    """Signals that make every rank finish its step, checkpoint and exit with 75 (``minivdit/preempt.py``);
    empty to keep Python's defaults."""

    def __post_init__(self):
        check_types(self)
        if self.every < 0 or self.keep < 0:
            raise ValueError(f"ckpt.every={self.every} and ckpt.keep={self.keep} must be >= 0")
        check_signal_names(self.signals, "ckpt.signals")


@dataclass(frozen=True, kw_only=True)
class SampleEvalConfig:
    """What ``sample_every`` draws: a few EMA samples written to ``<run>/samples/step_<N>/``."""

    num: int = 8
    """Videos per sample grid (labels 0, 1, 2, … cycling over the classes)."""
    steps: int = 50
    """Sampler steps."""
    cfg_scale: float = 1.0
    """Classifier-free guidance scale (1 = none)."""
    seed: int = 0
    """Noise seed, fixed so grids are comparable across steps."""

    def __post_init__(self):
        check_types(self)


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything a run needs. Recipes build one in Python; the CLI overrides values (``--optim.lr 2e-4``)."""

    model: DiTConfig | CogVideoXConfig | WanConfig = field(default_factory=DiTConfig)
    """The backbone: a V-DiT (``minivdit/models/dit.py``), the CogVideoX transformer
    (``minivdit/models/cogvideox.py``) or the Wan2.1 transformer (``minivdit/models/wan.py``); the recipe
    picks the class, the CLI tweaks its fields."""
    flashi2v: FlashI2VConfig | None = None
    """FlashI2V (``minivdit/models/flashi2v.py``) around a text-to-video backbone (Wan, CogVideoX) or a V-DiT:
    latent shift by φ(z_c) and Fourier guidance from the clip's frame 0 encoded alone
    (``start_frame_latents``; as pixels when ``vae.kind`` is none); its layers are trained with the backbone.
    None: off."""
    pretrained: str | None = None
    """Weights the model starts from: a diffusers CogVideoX or Wan folder (the pipeline folder or its
    ``transformer/``) or a V-DiT folder (``tools/convert_weights.py latte``), loaded shard by shard into the
    (sharded) model; None: a fresh init. The architecture is read from the folder's ``config.json``; only
    the run's runtime choices (attention backend, the frames and size it trains at) are kept."""
    init_from: str | None = None
    """A run directory (its newest verified checkpoint) or a checkpoint folder whose EMA weights the model
    starts from, after ``pretrained``: a run with the inner wrappers of this one (UniWorld's frozen DiT from
    a ``FlashI2V`` run; the same architecture, loaded strictly). A checkpoint of trained weights only (LoRA)
    needs this run's LoRA settings. None: ``pretrained`` or a fresh init."""
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    """LoRA adapters (``minivdit/models/lora.py``); ``--lora.rank 0`` trains every weight. With LoRA only the
    adapters are trained and checkpointed; the base weights come from ``pretrained``."""
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    """Frozen T5 text encoder (``minivdit/conditioning/text.py``) for online encoding of the captions, and
    caption dropout; not needed when the shards carry cached text (``tools/cache_text.py``)."""
    i2v: I2VConfig = field(default_factory=I2VConfig)
    """Image-to-video / anyframe conditioning (``minivdit/conditioning/i2v.py``); needs the VAE."""
    vlm: VLMConfig = field(default_factory=VLMConfig)
    """A frozen Qwen2.5-VL (``minivdit/conditioning/vlm.py``) in place of the text encoder: each caption with
    its clip's first frame, encoded online (``--vlm.path``); with ``uniworld``. Caption dropout:
    ``--text.dropout``."""
    uniworld: UniWorldConfig | None = None
    """UniWorld-OSP2.0's adapter (``minivdit/models/uniworld.py``) between the VLM's states and the
    backbone's frozen text projection, around the (FlashI2V-wrapped) backbone; ``uniworld.train`` says what
    trains. None: off."""
    objective: DDPMConfig | FlowConfig = field(default_factory=FlowConfig)
    """Diffusion objective; the recipe picks the class, the CLI tweaks its fields."""
    data: DataConfig = field(default_factory=DataConfig)
    """Dataset and loader."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    log: LogConfig = field(default_factory=LogConfig)
    ckpt: CkptConfig = field(default_factory=CkptConfig)
    parallel: dist.ParallelConfig = field(default_factory=dist.ParallelConfig)
    sample: SampleEvalConfig = field(default_factory=SampleEvalConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    """Text / image-to-video runs: fixed prompts (and images) sampled every ``validation.every`` steps and at
    the end into ``<run>/samples/validation/`` and tensorboard (``minivdit/validate.py``)."""
    vae: VAEConfig = field(default_factory=VAEConfig)
    """Autoencoder between pixels and the DiT (``--vae.kind causal3d --vae.path DIR``); kind "none" trains in
    pixel space (model.in_channels = 3)."""
    align: AlignConfig | None = None
    """Representation alignment (``minivdit/align/heads.py``): the loss, its weight λ, the tapped block and
    the projector. None trains without alignment. The head is trained and checkpointed, never EMA'd, and
    dropped at sampling."""
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    """Frozen encoders the head aligns to, each a local Hugging Face folder (``--teacher.dinov2
    /weights/dinov2-base``; ``minivdit/align/teachers.py``). Needed when ``align`` is set."""
    out_dir: str = "runs"
    """Parent folder of run directories."""
    run_name: str = "run"
    """Run directory is ``<out_dir>/<run_name>``."""
    seed: int = 0
    """Seeds the init, the head's init and every micro-batch's noise, timesteps and label drop."""
    max_steps: int = 1000
    """Optimizer steps to train for (in total, counting steps before a resume)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step (global batch = data.batch_size × world × grad_accum)."""
    global_batch: int | None = None
    """Clips per optimizer step over all ranks. Set, it decides ``grad_accum`` at launch: ``global_batch /
    (data.batch_size × world)``, which must be a whole number, so a recipe keeps its reference batch on any
    number of GPUs. None: ``grad_accum`` as given."""
    precision: dist.Precision = "fp32"
    """"fp32" or "bf16" (FSDP2 bf16 params with fp32 reduction on CUDA; bf16 autocast otherwise)."""
    resume: str | None = None
    """None: start fresh; "auto": the latest checkpoint of this run if any; or a checkpoint folder path."""
    sample_every: int = 0
    """Write EMA samples every this many steps (and at the end); 0 only at the end; -1 never."""
    eval: EvalConfig | None = None
    """Evaluate the EMA weights under a named protocol every ``eval.every`` steps and at the end
    (``minivdit/eval/``): ``eval/<metric>`` in metrics.jsonl and tensorboard, the values and the protocol
    record
    in ``<run>/eval/step_N/metrics.json``. Metrics whose detector weights are not given are skipped with one
    logged line. None: no evaluation."""

    def __post_init__(self):
        check_types(self)
        if self.max_steps < 1 or self.grad_accum < 1:
            raise ValueError(
                f"max_steps and grad_accum must be >= 1, got {self.max_steps}, {self.grad_accum}"
            )
        if self.global_batch is not None and (
            self.global_batch < 1 or self.global_batch % self.data.batch_size
        ):
            raise ValueError(
                f"global_batch={self.global_batch} must be a positive multiple of data.batch_size="
                f"{self.data.batch_size}"
            )
        self._check_buckets()
        self._check_uniworld()
        self._check_context_parallel()
        if isinstance(self.model, CogVideoXConfig):
            self._check_cogvideox()
            self._check_flashi2v()
            return
        if isinstance(self.model, WanConfig):
            self._check_wan()
            self._check_flashi2v()
            return
        self._check_flashi2v()
        if self.validation.enabled:
            raise ValueError(
                "--validation.prompts is for text-conditioned (CogVideoX) runs; a V-DiT samples its class "
                "grid every --sample-every steps"
            )
        if self.lora.enabled:
            raise ValueError(
                "--lora.rank > 0 is for the CogVideoX and Wan transformers; this run trains a V-DiT"
            )
        if self.model.is_i2v != self.i2v.enabled or self.model.cond_channels not in (
            0,
            self.model.in_channels,
        ):
            # channel-concat I2V on a V-DiT: the condition is the frame in the model's own space (pixels or
            # the VAE's latents), so it has the model's channels
            raise ValueError(
                f"channel-concat image-to-video on a V-DiT needs both --i2v.mode first (or anyframe) and "
                f"--model.cond-channels {self.model.in_channels} (= model.in_channels); got --i2v.mode "
                f"{self.i2v.mode!r} and model.cond_channels={self.model.cond_channels}"
            )
        if (self.i2v.enabled or self.flashi2v is not None) and self.eval is not None:
            raise ValueError(
                "--eval samples class-conditional clips without a start frame; an image-to-video V-DiT "
                "(--i2v.mode, --flashi2v) is measured by tools/ablate_flashi2v.py (docs/ablations/"
                "flashi2v.md): train it from a recipe without evaluation (recipes/flashi2v_ablation.py)"
            )
        if self.vae.kind == "none" and self.model.in_channels != 3:
            raise ValueError(
                f"pixel-space training (vae='none') needs model.in_channels=3, got {self.model.in_channels}"
            )
        if self.vae.kind == "none" and tuple(self.model.input_size) != self.data.frame_size:
            raise ValueError(
                f"model.input_size {tuple(self.model.input_size)} must equal the pixel frame size "
                f"{self.data.frame_size} when vae='none'"
            )
        if self.vae.kind == "none" and self.model.num_frames != self.data.num_frames:
            # Both layouts: the spatiotemporal temporal table has num_frames rows, and every layout samples
            # clips of num_frames frames (a full-3-D model would otherwise sample clips of another length).
            raise ValueError(
                f"model.num_frames={self.model.num_frames} must equal data.num_frames="
                f"{self.data.num_frames} (the frames the model trains on and samples): set "
                f"--model.num-frames {self.data.num_frames}"
            )
        if self.data.dataset == "synthetic" and self.model.num_classes not in (0, self.data.num_classes):
            raise ValueError(
                f"model.num_classes={self.model.num_classes} must be 0 (unconditional) or "
                f"data.num_classes={self.data.num_classes}"
            )
        if self.align is not None:
            check_block_index(self.align, self.model.depth)
            if not (self.teacher.enabled or self.teacher.tiny_random or self.data.dataset == "shards"):
                raise ValueError(
                    "align is set but no teacher folder is: give at least one of --teacher.dinov2, "
                    "--teacher.dinov3, --teacher.sam2, --teacher.vjepa2, --teacher.videomae (local Hugging "
                    "Face folders; README 'Alignment'), or train on shards with cached feats"
                )
        pred = build_objective(self.objective).pred_channels(self.model.in_channels)
        if pred != self.model.out_channels:
            raise ValueError(
                f"objective needs {pred} output channels but model.learn_sigma={self.model.learn_sigma} "
                f"gives {self.model.out_channels}; set --model.learn-sigma to match the objective"
            )

    def _check_buckets(self) -> None:
        """Buckets (``minivdit/data/buckets.py``) need a backbone that takes any size; the sizes themselves
        are checked against the VAE and the patch in ``check_latent_shape``."""
        if not self.data.buckets.enabled:
            return
        flag = f"--data.buckets.sizes {' '.join(self.data.buckets.sizes)}"
        if isinstance(self.model, DiTConfig):
            raise ValueError(
                f"{flag}: the V-DiT's position tables hold one size (--model.input-size, "
                "--model.num-frames); buckets need a RoPE backbone (CogVideoX, Wan)"
            )
        if self.align is not None:
            raise ValueError(
                f"{flag} with alignment: the teachers' token grid and the head's grid matching have one "
                "size; train aligned runs without buckets"
            )

    def _check_cogvideox(self) -> None:
        m = self.model
        if self.vae.kind == "none":
            raise ValueError("the CogVideoX transformer trains on VAE latents: set --vae.kind cogvideox")
        if m.is_i2v != self.i2v.enabled:
            raise ValueError(
                f"model.in_channels={m.in_channels} is {'an I2V' if m.is_i2v else 'a text-to-video'} "
                f"CogVideoX but --i2v.mode is {self.i2v.mode!r}: I2V models need 'first' or 'anyframe'"
            )
        if not self.text.enabled and self.data.dataset != "shards":
            raise ValueError(
                "CogVideoX is text-conditioned: give --text.path (the T5 folder) or train on shards with "
                "cached text (tools/cache_text.py)"
            )
        if self.align is not None:
            check_block_index(self.align, m.depth)
            if m.patch_size_t:
                # 1.5 patches pairs of latent frames into one token frame (and pads an odd count in front):
                # the head's frame matching pairs one token frame with one latent frame's teacher features
                raise ValueError(
                    f"alignment on CogVideoX 1.5 (model.patch_size_t={m.patch_size_t}) is not supported: its "
                    f"token frames each cover {m.patch_size_t} latent frames, which --align.frame-match does "
                    "not map to teacher frames; train 1.0 (5B, 5B-I2V, 2B) with alignment"
                )
        pred = build_objective(self.objective).pred_channels(m.out_channels)
        if pred != m.out_channels:
            raise ValueError(f"objective needs {pred} output channels, CogVideoX gives {m.out_channels}")
        if self.eval is not None:
            raise ValueError("evaluation of text-conditioned runs is not supported yet (--eval None)")

    def _check_context_parallel(self) -> None:
        if self.parallel.cp == 1:
            return
        if self.parallel.strategy == "none":
            raise ValueError(
                f"--parallel.cp {self.parallel.cp} needs gradients averaged over the ranks (DDP or FSDP): "
                "--parallel.strategy none would let the ranks of a context group drift apart"
            )
        if isinstance(self.model, DiTConfig) and self.model.block_type != "full3d":
            raise ValueError(
                f"--parallel.cp splits one attention sequence ranks; it needs --model.block-type full3d, "
                f"got {self.model.block_type!r} (Latte's blocks attend within a frame or a patch position)"
            )

    def _check_wan(self) -> None:
        m = self.model
        if self.vae.kind == "none" and (m.in_channels, m.out_channels) != (3, 3):
            # pixel space (a tiny Wan on the synthetic clips, recipes/uniworld_synthetic.py): RGB in and out
            raise ValueError(
                "the Wan transformer trains on VAE latents (--vae.kind wan --vae.path DIR), or in pixel "
                f"space with model.in_channels = out_channels = 3 (got {m.in_channels}, {m.out_channels})"
            )
        if m.is_i2v or self.i2v.enabled:
            # Wan2.1-I2V also takes CLIP image tokens (cond.image_context) that no trainer path produces yet
            raise ValueError(
                f"training Wan2.1-I2V (model.in_channels={m.in_channels}, image_dim={m.image_dim}) or "
                f"--i2v.mode {self.i2v.mode!r} on Wan is not supported: train a text-to-video Wan, with "
                "--flashi2v for image-to-video"
            )
        if not self.text.enabled and self.vlm.path is None and self.data.dataset != "shards":
            raise ValueError(
                "Wan is text-conditioned: give --text.path (the Wan pipeline folder: UMT5) or train on "
                "shards with cached text (tools/cache_text.py)"
            )
        if self.align is not None:
            check_block_index(self.align, m.depth)
        if self.eval is not None:
            raise ValueError("evaluation of text-conditioned runs is not supported yet (--eval None)")
        if self.validation.enabled:
            raise ValueError(
                "--validation.prompts during a Wan run is not supported yet: sample its checkpoints with "
                "python -m minivdit.sample"
            )

    def _check_uniworld(self) -> None:
        if (self.uniworld is None) != (self.vlm.path is None):
            raise ValueError(
                "--vlm.path and --uniworld go together: the VLM's states reach the backbone through "
                f"UniWorld's adapter (got vlm.path={self.vlm.path!r}, uniworld={self.uniworld})"
            )
        if self.uniworld is None:
            return
        if not isinstance(self.model, (WanConfig, CogVideoXConfig)):
            raise ValueError("--uniworld conditions a text-to-video backbone (Wan, CogVideoX), not a V-DiT")
        if self.text.enabled:
            raise ValueError(
                f"--vlm.path replaces the text encoder: drop --text.path {self.text.path} (its dropout, "
                "--text.dropout, still blanks captions before the VLM)"
            )
        if self.uniworld.f_img == "decoupled" and not isinstance(self.model, WanConfig):
            raise ValueError(
                "--uniworld.f-img decoupled adds an image branch to each cross-attention: Wan only "
                "(CogVideoX attends text and video jointly); use --uniworld.f-img concat"
            )
        width = self.model.text_dim if isinstance(self.model, WanConfig) else self.model.text_embed_dim
        if self.uniworld.out_dim != width:
            raise ValueError(
                f"uniworld.out_dim={self.uniworld.out_dim} must be the backbone's text width {width} (the "
                f"adapter feeds its frozen text projection): --uniworld.out-dim {width}"
            )
        if self.validation.enabled:
            raise ValueError(
                "--validation.prompts with a VLM is not supported yet: sample the checkpoints with "
                "python -m minivdit.sample"
            )

    def _check_flashi2v(self) -> None:
        if self.flashi2v is None:
            return
        if self.i2v.enabled or self.model.is_i2v:
            raise ValueError(
                f"--flashi2v conditions a text-to-video backbone on the start frame by itself; it does not "
                f"combine with --i2v.mode {self.i2v.mode!r} or an I2V model "
                f"(model.is_i2v={self.model.is_i2v})"
            )

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.run_name


def with_global_batch(cfg: TrainConfig, world: int) -> TrainConfig:
    """``cfg`` with the ``grad_accum`` its ``global_batch`` needs on ``world`` ranks (unchanged without one);
    ValueError naming the three numbers when they do not divide."""
    if cfg.global_batch is None:
        return cfg
    per_step = cfg.data.batch_size * world
    if cfg.global_batch % per_step:
        raise ValueError(
            f"global_batch={cfg.global_batch} is not a multiple of data.batch_size {cfg.data.batch_size} × "
            f"{world} ranks: change --global-batch or --data.batch-size, or set --global-batch None and "
            f"--grad-accum"
        )
    accum = cfg.global_batch // per_step
    log.info(
        f"grad_accum {accum}: global batch {cfg.global_batch} = {cfg.data.batch_size} per rank × {world} "
        f"ranks × {accum} micro-batches (--global-batch decides it)"
    )
    return replace(cfg, grad_accum=accum)


def check_latent_shape(cfg: TrainConfig, vae: torch.nn.Module) -> None:
    """The DiT must be built for the VAE's latents of the configured clips; say which flags fix it if not."""
    s = vae.spatial_compression
    H, W = cfg.data.frame_size
    if H % s or W % s:
        raise ValueError(
            f"data.image_size={cfg.data.image_size} is not divisible by the VAE's {s}x compression"
        )
    try:
        F = vae.latent_frames(cfg.data.num_frames)
    except ValueError as e:  # the VAE's own frame rule (causal: 4k + 1), said in terms of the flag
        raise ValueError(
            f"--data.num-frames {cfg.data.num_frames} does not fit the {cfg.vae.kind} VAE at {cfg.vae.path}: "
            f"{e}; set --data.num-frames to one of those"
        ) from None
    if isinstance(cfg.model, (CogVideoXConfig, WanConfig)):
        m = cfg.model
        want = {
            "out-channels": (m.out_channels, vae.latent_channels),
            "input-size": (m.latent_size, (H // s, W // s)),
            "num-frames": (m.frames, F),
        }
        p = m.patch_size if isinstance(m, CogVideoXConfig) else m.patch_size[1]  # Wan: (p_t, p_h, p_w)
        if (H // s) % p or (W // s) % p:
            raise ValueError(
                f"data.image_size={cfg.data.image_size}: latents must divide by the patch {p}, "
                f"so the frame sides must be multiples of {s * p}"
            )
    else:  # num-frames in both V-DiT layouts: the temporal table and the length of the sampled clips
        want = {
            "in-channels": (cfg.model.in_channels, vae.latent_channels),
            "input-size": (tuple(cfg.model.input_size), (H // s, W // s)),
            "num-frames": (cfg.model.num_frames, F),
        }
    bad = {k: v for k, (have, v) in want.items() if have != v}
    if bad:
        flags = " ".join(
            f"--model.{k} {' '.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in bad.items()
        )
        raise ValueError(
            f"the model does not match the {cfg.vae.kind} VAE's latents of {cfg.data.num_frames} frames at "
            f"{cfg.data.image_size}px: have { ({k: want[k][0] for k in bad}) }; use {flags}"
        )
    for b in cfg.data.buckets.buckets:  # every bucket's latents must fit the VAE, the patch and the PE
        check_bucket_latents(cfg, vae, b)


def check_bucket_latents(cfg: TrainConfig, vae: torch.nn.Module, bucket) -> None:
    """One bucket (``minivdit.data.buckets.Bucket``) of the run: its frames fit the VAE, its sides divide by
    the VAE's compression times the patch, and a CogVideoX learned PE either covers it or is told what to do
    (``--model.learned-pe``)."""
    s, m = vae.spatial_compression, cfg.model
    p = m.patch_size if isinstance(m, CogVideoXConfig) else m.patch_size[1]  # Wan: (p_t, p_h, p_w)
    if bucket.height % (s * p) or bucket.width % (s * p):
        raise ValueError(f"bucket {bucket}: frame sides must be multiples of {s * p} (VAE {s}x, patch {p})")
    try:
        F = vae.latent_frames(bucket.frames)
    except ValueError as e:
        raise ValueError(f"bucket {bucket} does not fit the {cfg.vae.kind} VAE: {e}") from None
    latent = (F, bucket.height // s, bucket.width // s)
    exact = isinstance(m, CogVideoXConfig) and m.use_learned_positional_embeddings and m.learned_pe == "exact"
    if exact and latent != m.trained_size:
        raise ValueError(
            f"bucket {bucket} (latents {latent}): the learned PE covers {m.trained_size} only; buckets need "
            "--model.learned-pe drop (RoPE only, as diffusers' and cogvideox-factory's multi-resolution I2V "
            "training) or interpolate"
        )


def build_objective(cfg: DDPMConfig | FlowConfig) -> DDPM | Flow:
    return DDPM(cfg) if isinstance(cfg, DDPMConfig) else Flow(cfg)


def micro_seed(seed: int, step: int, micro: int) -> int:
    """Seed of one micro-batch: a function of the global position only (see the module docstring)."""
    return int(np.random.SeedSequence([seed, step, micro]).generate_state(1, np.uint64)[0] >> np.uint64(1))


# ---------------------------------------------------------------------------------------------- the step


def train_step(
    batch: Batch,
    *,
    model: torch.nn.Module,
    objective: DDPM | Flow,
    num_classes: int,
    precision: dist.Precision,
    device: torch.device,
    vae: torch.nn.Module | None = None,
    align: AlignConfig | None = None,
    teacher: Teacher | None = None,
    head: torch.nn.Module | None = None,
    conditioner: Conditioner | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """One micro-batch forward: data → (frozen VAE) → objective.corrupt → model → objective.loss, and with
    ``align``: clean video → (frozen teacher) → feats; the model's block ``align.block_index`` → head → loss.
    ``loss = mean(loss_diff + align.weight · loss_align)`` (DESIGN.md §3). Returns the scalar loss to
    backpropagate and detached metrics (device tensors; reduced across ranks only at log time)."""
    if conditioner is not None:  # text (cached or online, caption dropout), I2V: conditioning/
        cond = conditioner(batch, generator, device)
    else:
        cond = batch_cond(batch, num_classes=num_classes).to(device, non_blocking=True)
    batch = batch.to(device, non_blocking=True)
    if batch.latents is not None:  # cached by tools/cache_latents.py: the VAE is skipped
        x_data = batch.latents  # [B, F', C, h, w]
    elif vae is not None:
        with torch.no_grad(), dist.autocast(device, precision):
            x_data = vae.encode(batch.video).float()  # [B, F', C, h, w], scaled by the VAE
    else:
        x_data = batch.video  # pixel space: [B, F, 3, H, W]
    x_data, cond = cogvideox_model.pad_frames(getattr(dist.unwrap(model), "cfg", None), x_data, cond)  # 1.5
    feats = None
    if align is not None:
        if batch.feats is not None:  # cached by tools/cache_latents.py: the teacher is skipped
            feats = batch.feats.float()  # [B, F', N', ΣDt]
        elif batch.video is None or teacher is None:
            raise ValueError("alignment needs the clean video and a teacher, or cached feats in the batch")
        else:
            with dist.autocast(device, precision):
                feats = teacher(batch.video).float()  # [B, F', N', ΣDt]; no_grad inside the teacher
    noised = objective.corrupt(x_data)
    tap = {"tap": align.block_index} if align is not None else {}  # hidden [B, F, N, D] of that block
    with dist.autocast(device, precision):
        out = model(noised.x_t, noised.t_model, cond, **tap)
    terms = objective.loss_terms(out.pred.float(), noised)  # each [B], fp32
    loss_diff = torch.stack(list(terms.values())).sum(0)  # [B]
    # One name per value: the terms only when there are several (DDPM's mse + vb); ``loss/diff`` only beside
    # ``loss/align``. A lone term would repeat ``loss`` (or ``loss/diff``) under another name.
    metrics = {f"loss/{k}": v.detach().mean() for k, v in terms.items()} if len(terms) > 1 else {}
    if align is not None:
        with dist.autocast(device, precision):
            loss_align = head(out.hidden, feats).float()  # [B]; frame/grid matching lives in the head
        loss = (loss_diff + align.weight * loss_align).mean()
        metrics |= {"loss/diff": loss_diff.detach().mean(), "loss/align": loss_align.detach().mean()}
    else:
        loss = loss_diff.mean()
    return loss, {"loss": loss.detach(), **metrics}


# ---------------------------------------------------------------------------------------------- setup


def model_class(model_cfg: ModelConfig) -> type:
    """The backbone class a config builds."""
    if isinstance(model_cfg, WanConfig):
        return WanTransformer
    return CogVideoXTransformer if isinstance(model_cfg, CogVideoXConfig) else VDiT


def backbone(model: torch.nn.Module) -> torch.nn.Module:
    """The backbone inside a wrapped model (``FlashI2V``, ``UniWorld``): what ``--pretrained`` weights load
    into."""
    inner = dist.unwrap(model)
    while isinstance(inner, BackboneWrapper):
        inner = inner.base
    return inner


def wrappers(model: torch.nn.Module) -> list[BackboneWrapper]:
    """The wrappers around the backbone, innermost first (``UniWorld(FlashI2V(base))`` → [FlashI2V,
    UniWorld])."""
    chain, inner = [], dist.unwrap(model)
    while isinstance(inner, BackboneWrapper):
        chain.append(inner)
        inner = inner.base
    return chain[::-1]


def wrap(cfg: TrainConfig, m: torch.nn.Module) -> torch.nn.Module:
    """The backbone ``m`` in the run's wrappers: FlashI2V, then UniWorld (frozen but for its own layers and
    LoRA's under ``uniworld.train="adapter"``)."""
    if cfg.flashi2v is not None:
        m = FlashI2V(m, cfg.flashi2v)
    if cfg.uniworld is not None:
        if cfg.uniworld.train == "adapter":
            for name, p in m.named_parameters():
                p.requires_grad_(".lora_" in name)  # the DiT frozen, as released; its LoRA adapters train
        m = UniWorld(m, cfg.uniworld)
    return m


def pretrained_architecture(model: ModelConfig, folder: str) -> ModelConfig:
    """The architecture of the weights in ``folder`` (its ``config.json``, or ``transformer/config.json`` of
    a pipeline folder), in the family of ``model`` and keeping ``model``'s runtime choices (the attention
    backend; for CogVideoX and Wan also the frames and size the run trains at). A CogVideoX-2B or 1.5 folder
    then needs no preset change, and a folder of any size works from the command line."""
    config = pretrained_folder(folder) / "config.json"
    family = {CogVideoXConfig: cogvideox_model, WanConfig: wan_model}.get(type(model), dit_model)
    keep = {k: getattr(model, k) for k in family.RUNTIME_FIELDS}
    return type(model).from_json(config, **keep)


def with_pretrained_architecture(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with the model of ``cfg.pretrained`` (:func:`pretrained_architecture`); unchanged without
    one. Fields the config sets otherwise (a preset, a ``--model.*`` flag) are named in a warning: the
    weights decide the architecture."""
    if cfg.pretrained is None:
        return cfg
    model = pretrained_architecture(cfg.model, cfg.pretrained)
    if model == cfg.model:
        return cfg
    theirs, ours = model.__dict__, cfg.model.__dict__
    differ = {k: (ours[k], theirs[k]) for k in ours if ours[k] != theirs[k]}
    log.warning(
        f"--pretrained {cfg.pretrained}: the architecture comes from its config.json; overriding "
        + ", ".join(f"model.{k} {a!r} -> {b!r}" for k, (a, b) in differ.items())
    )
    return replace(cfg, model=model)


def build_model(cfg: TrainConfig, model_cls: type | None = None) -> torch.nn.Module:
    """The trained model as the config describes it, on the current default device (``meta`` in
    ``build_models`` and ``minivdit.plan``): the backbone, LoRA (which freezes the backbone's other weights),
    then the wrappers (``wrap``)."""
    m = (model_cls or model_class(cfg.model))(cfg.model)
    if cfg.lora.enabled:
        apply_lora(m, cfg.lora)  # freezes every non-LoRA weight of the backbone (FlashI2V's layers train)
    return wrap(cfg, m)


def build_models(
    cfg: TrainConfig, ctx: dist.DistContext, model_cls: type | None = None
) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    """Model and EMA (None with ``--ema.no-enabled``): built on ``meta``, LoRA-wrapped, parallelised,
    materialised on the device. A fresh init comes from one seeded CPU reference, loaded shard-wise, so every
    strategy (none / DDP / FSDP), world size and device starts from bitwise the same model. ``--pretrained``
    weights are read shard file by shard file straight into the (sharded) parameters, and the LoRA adapters
    are drawn whole on the CPU from the seed (``dist.init_lora``): reproducible without a full CPU copy."""
    model_cls = model_cls or model_class(cfg.model)
    lora = cfg.lora if cfg.lora.enabled else None
    build = partial(build_model, cfg, model_cls)
    with torch.device("meta"):
        model = build()
        ema = build() if cfg.ema.enabled else None
        # The reference too: a CPU constructor's default init would consume the seeded RNG. With a
        # pretrained backbone the wrappers' own layers (FlashI2V's φ, UniWorld's adapter) still start from
        # the seed.
        wrapped = cfg.flashi2v is not None or cfg.uniworld is not None
        reference = build() if cfg.pretrained is None or wrapped else None
    model = dist.parallelize(model, cfg.parallel, ctx, cfg.precision)
    if ema is not None:
        ema = dist.parallelize(ema, cfg.parallel, ctx, cfg.precision, trainable=False)
    torch.manual_seed(cfg.seed)
    state = None
    if reference is not None and cfg.pretrained is None:
        reference.to_empty(device="cpu")
        backbone(reference).init_weights()
        if lora is not None:
            init_lora_weights(backbone(reference))  # init_weights re-initialised every Linear, LoRA's too
        for wrapper in wrappers(reference):
            wrapper.init_weights()  # its own layers only, innermost first (after the backbone's draws)
        state = reference.state_dict()
    elif reference is not None:  # pretrained + wrappers: their layers, drawn whole on the CPU
        state = wrapper_init_state(reference, cfg.seed)
    for m in (model, ema):
        if m is None:
            continue
        # FSDP2's CPU offload keeps the sharded parameters on the CPU; buffers are computed on the device
        dist.materialize(m, torch.device("cpu") if cfg.parallel.cpu_offload else ctx.device, init=False)
        inner = dist.unwrap(m)
        if hasattr(backbone(inner), "reset_buffers"):  # Wan stores nothing positional
            backbone(inner).reset_buffers()
        if cfg.parallel.cpu_offload:
            dist.buffers_to(inner, ctx.device)
        if cfg.pretrained is None:
            set_model_state_dict(inner, state, options=StateDictOptions(full_state_dict=True, strict=True))
            continue
        dist.load_pretrained(backbone(inner), cfg.pretrained)  # the base weights, shard file by shard file
        if lora is not None:
            dist.init_lora(inner, cfg.seed)  # drawn whole on the CPU: the same for any sharding
        if state is not None:  # the wrappers' layers; strict=False: the backbone's keys came from the files
            set_model_state_dict(inner, state, options=StateDictOptions(full_state_dict=True, strict=False))
    del reference, state
    if cfg.init_from is not None:
        for m in (model, ema):
            if m is not None:
                load_init(dist.unwrap(m), cfg.init_from)
    if ema is not None:
        ema.requires_grad_(False).eval()
    return model, ema


def wrapper_init_state(reference: torch.nn.Module, seed: int) -> dict[str, Tensor]:
    """The wrappers' own layers (FlashI2V's φ, UniWorld's adapter) of a run on ``--pretrained`` weights as
    it starts them: ``reference`` is the model built on meta; only those layers are materialised, on the
    CPU, and drawn from ``seed``, innermost wrapper first. Keys outside the backbone. ``sample.load_run``
    redraws them for a run whose checkpoint does not hold them (UniWorld's frozen FlashI2V layers)."""
    chain = wrappers(reference)
    for wrapper in chain:
        for name, child in wrapper.named_children():
            if name != "base":
                child.to_empty(device="cpu")
    torch.manual_seed(seed)
    for wrapper in chain:
        wrapper.init_weights()
    inside = "base." * len(chain)  # the backbone's keys: from the files
    return {k: v for k, v in reference.state_dict().items() if not k.startswith(inside)}


def load_init(model: torch.nn.Module, source: str) -> Path:
    """``--init-from``: the EMA weights (else the model's) of a run or checkpoint folder into ``model``, or
    into the part of it the run trained (its wrappers, counted from the inside: a ``FlashI2V`` run fills
    ``UniWorld.base``). Returns the checkpoint. ``ValueError`` naming the folder for anything that does not
    match."""
    path = Path(source)
    if (path / "checkpoints").is_dir():
        found = ckpt.latest_verified(path / "checkpoints")
        if found is None:
            raise ValueError(f"--init-from {source}: no verified checkpoint in {path / 'checkpoints'}")
        path = found
    if not (path / "meta.json").is_file():
        raise ValueError(f"--init-from {source}: not a run directory or a checkpoint folder (no meta.json)")
    meta = json.loads((path / "meta.json").read_text())
    theirs = meta.get("config", {})
    depth = sum(theirs.get(k) is not None for k in ("flashi2v", "uniworld"))
    target = model
    while len(wrappers(target)) > depth:
        target = target.base
    if len(wrappers(target)) != depth:
        raise ValueError(
            f"--init-from {path}: that run has {depth} wrapper(s) around its backbone (flashi2v, uniworld), "
            f"this one {len(wrappers(model))}: it cannot hold those weights"
        )
    file = path / "ema.safetensors" if (path / "ema.safetensors").is_file() else path / "model.safetensors"
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as f:
        keys = set(f.keys())
    ours = set(target.state_dict())
    if unexpected := sorted(keys - ours):
        raise ValueError(
            f"--init-from {file}: weights this model lacks ({unexpected[:5]}): a different architecture, "
            "wrapper or --lora setting"
        )
    if meta.get("weights", "all") == "all" and (missing := sorted(ours - keys)):
        raise ValueError(f"--init-from {file}: the checkpoint lacks {missing[:5]}")
    try:
        ckpt.load_weights(target, file, keys=None if keys == ours else keys)
    except RuntimeError as e:  # shapes
        raise ValueError(f"--init-from {file}: {e}") from e
    log.info(f"--init-from: {len(keys)} tensors from {file}")
    return path


def build_conditioner(cfg: TrainConfig, ctx: dist.DistContext, vae, dataset) -> Conditioner | None:
    """What builds each batch's ``Cond`` beyond class labels (None: labels only, ``batch_cond``): the frozen
    text encoder or the shards' cached text with caption dropout, and the I2V condition or FlashI2V's start
    frame."""
    if not isinstance(cfg.model, (CogVideoXConfig, WanConfig)):
        if not (cfg.i2v.enabled or cfg.flashi2v is not None):
            return None
        # an image-to-video V-DiT: labels, and the start frame through the VAE (or as pixels)
        return Conditioner(
            num_classes=cfg.model.num_classes,
            i2v=cfg.i2v,
            start_frame=cfg.flashi2v is not None,
            vae=vae if vae is not None else PixelSpace(),
            autocast_dtype=torch.bfloat16 if cfg.precision == "bf16" else None,
        )
    cached = "text" in (getattr(dataset, "meta", None) or {}).get("fields", {})
    if cfg.vlm.path is not None and cached:  # the shards carry this VLM's features (check_dataset)
        log.info(
            f"VLM not loaded: the shards carry its features ({cfg.data.root}, tools/cache_text.py "
            '--vlm.path); a dropped caption takes the cached null, VLM("" + frame)'
        )
        return Conditioner(
            text_null=null_context("empty", *dataset.text_null()),
            text_dropout=cfg.text.dropout,
            start_frame=cfg.flashi2v is not None or cfg.uniworld.f_img != "off",
            context_mask=cfg.vlm.keep == "valid",
            vae=vae if vae is not None else PixelSpace(),
            autocast_dtype=torch.bfloat16 if cfg.precision == "bf16" else None,
        )
    if cfg.vlm.path is not None:  # UniWorld: the VLM reads caption + first frame (online; frozen)
        vlm = VLMEncoder(cfg.vlm).to(ctx.device)
        dim = vlm.dim
        if dim != cfg.uniworld.vlm_dim:
            raise ValueError(
                f"--vlm.path {cfg.vlm.path}: hidden size {dim}, but uniworld.vlm_dim={cfg.uniworld.vlm_dim}: "
                f"--uniworld.vlm-dim {dim}"
            )
        return Conditioner(
            vlm=vlm,
            text_dropout=cfg.text.dropout,
            start_frame=cfg.flashi2v is not None or cfg.uniworld.f_img != "off",  # z_c: FlashI2V's, f_img's
            vae=vae if vae is not None else PixelSpace(),
            autocast_dtype=torch.bfloat16 if cfg.precision == "bf16" else None,
        )
    cached = "text" in (getattr(dataset, "meta", None) or {}).get("fields", {})
    encoder = None
    if cached and cfg.text.enabled:  # issue 21 §2: a cached run never holds the 9.5 GB T5-XXL on a GPU
        log.info(
            f"text encoder not loaded: the shards in {cfg.data.root} cache its tokens (tools/cache_text.py); "
            "validation prompts, if any, are encoded once and the encoder freed (minivdit/validate.py)"
        )
    elif cfg.text.enabled:
        encoder = build_text_encoder(cfg.text).to(ctx.device)
    # the null text of --text.null, from the empty prompt's cached tokens (T5("") or zeros of their shape)
    null = null_context(cfg.text.null, *dataset.text_null()) if cached else None
    return Conditioner(
        text_encoder=encoder,
        text_null=null,
        text_dropout=cfg.text.dropout,
        i2v=cfg.i2v,
        start_frame=cfg.flashi2v is not None,
        context_mask=not isinstance(cfg.model, WanConfig),  # Wan attends the zero-padded context whole
        vae=vae,
        autocast_dtype=torch.bfloat16 if cfg.precision == "bf16" else None,  # as train_step's vae.encode
    )


def build_validator(cfg: TrainConfig, ctx: dist.DistContext, conditioner, vae) -> Validator | None:
    """The run's validation set (``cfg.validation``), prompts and images encoded once; None without one."""
    if not cfg.validation.enabled:
        return None
    model = cfg.model
    return Validator(
        cfg.validation,
        text_encoder=conditioner.text_encoder,
        text_cfg=cfg.text,
        text_null=conditioner.text_null,
        vae=vae,
        is_i2v=model.is_i2v,
        patch_size_t=model.patch_size_t,
        num_frames=cfg.data.num_frames,
        size=cfg.data.frame_size,
        device=ctx.device,
        rank=ctx.rank,
        world=ctx.world,
    )


def check_dataset(cfg: TrainConfig, dataset) -> None:
    """The run fits the dataset: class count, and for shards the VAE/teacher that made their caches."""
    num_classes = getattr(dataset, "num_classes", cfg.data.num_classes)
    if cfg.model.num_classes not in (0, num_classes) and not isinstance(cfg.model, CogVideoXConfig):
        raise ValueError(
            f"model.num_classes={cfg.model.num_classes} must be 0 (unconditional) or the dataset's "
            f"{num_classes} classes ({cfg.data.dataset} at {cfg.data.root}); set --model.num-classes"
        )
    meta = getattr(dataset, "meta", None)  # shards: what made the cached latents / feats
    if meta is None:
        return
    fields = meta.get("fields", {})
    if "latents" in fields and cfg.vae.kind == "none":
        raise ValueError(
            f"{cfg.data.root} holds cached latents (vae {meta.get('vae', {}).get('kind')!r}) but the run "
            f"trains in pixel space (--vae.kind none): set --vae.kind/--vae.path to the VAE that made them"
        )
    teacher = to_dict(cfg.teacher) if cfg.align is not None and cfg.teacher.enabled else None
    text = text_identity(cfg.text) if cfg.text.enabled else None
    if cfg.vlm.path is not None:  # UniWorld: the shards' cached text must be this VLM's features
        text = vlm_identity(cfg.vlm)
        if "text" not in fields and not {"caption", "video"} <= set(fields):
            raise ValueError(
                f"{cfg.data.root}: no cached VLM features (tools/cache_text.py --vlm.path ...) and no "
                "captions with clips to encode online"
            )
    problems = cache_mismatches(meta, vae=to_dict(cfg.vae), teacher=teacher, grid=cfg.model.grid, text=text)
    problems += clip_mismatches(meta, cfg.data) + sampler_mismatches(meta, cfg.data)
    problems += precision_mismatches(meta, cfg.precision)
    read = getattr(dataset, "fields", fields)  # the fields the run reads (--data.shard-fields)
    problems += start_frame_mismatches(meta, read, flashi2v=cfg.flashi2v is not None, i2v=cfg.i2v)
    if problems:
        raise ValueError(f"the caches in {cfg.data.root} do not fit this run: " + "; ".join(problems))


def build_alignment(
    cfg: TrainConfig, ctx: dist.DistContext, vae: torch.nn.Module | None, dataset=None
) -> tuple[Teacher | None, torch.nn.Module | None]:
    """The frozen teacher (run at ``teacher.token_grid``, else at the DiT's token grid) and the alignment
    head, or (None, None). With shards that carry cached feats there is no teacher (None): the head is sized
    from the shards' metadata.
    The head is seeded from ``cfg.seed`` on the CPU (the same on every rank), then replicated: DDP when
    world > 1, whatever the model's strategy (it is small; FSDP would shard a few MB for nothing)."""
    if cfg.align is None:
        return None, None
    meta = getattr(dataset, "meta", None) or {}
    if "feats" in meta.get("fields", {}):  # cached by tools/cache_latents.py: no teacher in this run
        t = meta["teacher"]
        names, dims, grid = tuple(t["names"]), tuple(t["dims"]), tuple(t["grid"])
        log.info(f"teacher: cached feats from {cfg.data.root} ({'+'.join(names)}); the teacher is not loaded")
        return None, _build_head(cfg, ctx, vae, names=names, dims=dims, grid=grid)
    if cfg.data.dataset == "shards" and not (cfg.teacher.enabled or cfg.teacher.tiny_random):
        raise ValueError(
            f"align is set but the shards in {cfg.data.root} carry no feats and no --teacher.* is set"
        )
    teacher_cfg = cfg.teacher
    if not teacher_cfg.enabled:  # tiny_random (validated in TrainConfig)
        root = cfg.run_dir / "tiny_teachers"
        if ctx.is_main:
            make_tiny_teacher("dinov2", root / "dinov2", seed=cfg.seed)
            make_tiny_teacher("sam2", root / "sam2", seed=cfg.seed + 1)
        dist.barrier()
        teacher_cfg = replace(teacher_cfg, dinov2=str(root / "dinov2"), sam2=str(root / "sam2"))
        log.warning(
            f"teacher: no --teacher.* folder given, so aligning to tiny RANDOM DINOv2 + SAM2 encoders saved "
            f"in {root} (a smoke test of the machinery, not Align4Gen; pass real folders for that)"
        )
    teacher = build_teacher(teacher_cfg, grid=cfg.model.grid).to(ctx.device)
    return teacher, _build_head(cfg, ctx, vae, names=teacher.names, dims=teacher.dims, grid=teacher.grid)


def _build_head(cfg: TrainConfig, ctx: dist.DistContext, vae, *, names, dims, grid) -> torch.nn.Module:
    torch.manual_seed(cfg.seed + 1)
    head = AlignHead(
        cfg.align,
        hidden_dim=cfg.model.hidden_size,
        teacher_dims=dims,
        dit_grid=cfg.model.grid,
        teacher_grid=grid,
        stride=getattr(vae, "temporal_compression", 1),
    )
    head.init_weights()
    head = head.to(ctx.device)
    if ctx.distributed:
        head = dist.parallelize_replicated(head, ctx)
    log.info(
        f"alignment: {cfg.align.loss} at block {cfg.align.block_index} (weight {cfg.align.weight}); teacher "
        f"{'+'.join(names)} dims {tuple(dims)} on a {grid[0]}x{grid[1]} grid; head "
        f"{num_params(dist.unwrap(head)) / 1e6:.2f} M parameters"
    )
    return head


@torch.no_grad()
def update_ema(ema: torch.nn.Module | None, model: torch.nn.Module, decay: float) -> None:
    """EMA of the trained weights (with LoRA: the adapters; the frozen base is the same in both)."""
    if ema is None:
        return
    pairs = zip(ema.parameters(), dist.unwrap(model).parameters(), strict=True)
    ema_p, model_p = zip(*[(dist.local(e), dist.local(m)) for e, m in pairs if m.requires_grad], strict=True)
    torch._foreach_lerp_(list(ema_p), list(model_p), 1.0 - decay)


def lr_at(step: int, cfg: OptimConfig, max_steps: int | None = None) -> float:
    """The lr of optimizer step ``step`` (0-based): a linear warm-up over W steps (``warmup_steps``, or
    ``warmup_fraction · max_steps``), then constant or SAT's linear decay (``OptimConfig.schedule``), then
    with ``decay_steps`` a linear cool-down reaching 0 after the last step.

    The warm-up and the decay are SwissArmyTransformer's ``AnnealingLR.get_lr`` with its iteration counter
    n = step + 1 (its scheduler is stepped once before the first update): ``lr·n/W`` while n ≤ W, then
    ``lr·(max_steps − (n − W))/max_steps``. Not reproduced: SAT's fine-tune mode caps the lr at 5 % for the
    first 100 iterations after every (re)start (``auto_warmup_steps``), which also shifts a resumed run's
    curve by 100 steps; here a resume continues the same curve."""
    if max_steps is None and (cfg.warmup_fraction or cfg.schedule == "linear"):
        raise ValueError("lr_at: warmup_fraction and schedule='linear' need max_steps")
    W = cfg.warmup_fraction * max_steps if cfg.warmup_fraction else cfg.warmup_steps  # SAT: a float
    n = step + 1
    if W and n <= W:
        lr = cfg.lr * n / W
    elif cfg.schedule == "linear":
        lr = cfg.lr * ((max_steps - (n - W)) / max_steps)  # SAT's expression, in its order
    else:
        lr = cfg.lr
    if cfg.decay_steps and max_steps is not None:
        lr *= min(1.0, (max_steps - step) / cfg.decay_steps)
    return lr


def _peak_mem_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def _resume_path(cfg, ctx: dist.DistContext) -> Path | None:
    """The checkpoint to resume: ``auto`` takes the newest one that verifies (sizes and checksums, read by
    all ranks together) and logs why it skipped any newer one; an explicit path must verify."""
    if cfg.resume is None:
        return None
    checksum = cfg.ckpt.checksum
    if cfg.resume == "auto":
        return ckpt.latest_verified(cfg.run_dir / "checkpoints", checksum=checksum, ctx=ctx)
    path = Path(cfg.resume)
    if not (path / "meta.json").is_file():
        raise ValueError(
            f"resume={cfg.resume!r}: no checkpoint there (expected a folder "
            f".../checkpoints/step_NNNNNNN with meta.json), or use resume='auto' / None"
        )
    problems = ckpt.verify(path, checksum=checksum, ctx=ctx)
    if problems:
        raise ValueError(f"resume={cfg.resume!r}: the checkpoint does not verify: {'; '.join(problems)}")
    return path


# ---------------------------------------------------------------------------------------------- shared steps
# Used by ``train`` and by the VAE trainer (``minivdit/train_vae.py``): any config with ``run_dir``,
# ``resume``, ``optim`` and ``ema`` fields.


def start_run(cfg, ctx: dist.DistContext, *, structural: tuple[str, ...] = ()) -> Path | None:
    """Create the run directory and set up logging; returns the checkpoint to resume, after checking that its
    config fits ``cfg`` on the ``structural`` sections (:func:`check_resume_config`). ``config.json`` is
    written later, by :func:`write_config`, once everything has been built and loaded: a launch that fails
    never replaces a good run's config."""
    run_dir = cfg.run_dir
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    setup_logging(ctx.rank, run_dir)
    resume_from = _resume_path(cfg, ctx)
    if resume_from is not None:
        check_resume_config(cfg, resume_from, structural)
    torch.backends.cuda.matmul.allow_tf32 = True  # as Latte/DiT: TF32 matmuls on Ampere+
    torch.backends.cudnn.allow_tf32 = True
    return resume_from


def write_config(cfg, ctx: dist.DistContext) -> None:
    """``<run>/config.json``: the resolved config, written once the run has been set up without error."""
    if ctx.is_main:
        durable.write_text(cfg.run_dir / "config.json", json.dumps(to_dict(cfg), indent=2))


def _flat(d, prefix: str = "") -> dict:
    """A ``to_dict`` tree as ``{"model.depth": 8, "model._type": "DiTConfig", ...}``."""
    if not isinstance(d, dict):
        return {prefix[:-1]: d}
    out = {}
    for k, v in d.items():
        out |= _flat(v, f"{prefix}{k}.")
    return out


# Fields of the structural sections that do not shape the weights: a resume may change them freely.
RESUME_FREE = ("model.attn_backend", "align.weight")


def check_resume_config(cfg, path: Path, structural: tuple[str, ...]) -> None:
    """``ValueError`` naming each field of the ``structural`` sections (those that shape the weights: the
    model, LoRA, the alignment head) in which ``cfg`` differs from the config checkpoint ``path`` was trained
    with, before anything is loaded; other changes (``--optim.lr``, ``--max-steps``, ...) are logged."""
    meta = json.loads((path / "meta.json").read_text())
    if "config" not in meta:
        return
    have, want = _flat(meta["config"]), _flat(to_dict(cfg))
    differ = {
        k: (have.get(k), want.get(k)) for k in sorted(have.keys() | want.keys()) if have.get(k) != want.get(k)
    }
    differ.pop("resume", None)
    bad = {k: v for k, v in differ.items() if k.split(".")[0] in structural and k not in RESUME_FREE}
    if bad:
        raise ValueError(
            f"--resume: {path} was trained with "
            + ", ".join(f"{k}={a!r} (this run: {b!r})" for k, (a, b) in bad.items())
            + "; these fields shape the weights: drop those flags to continue the run, or start a new one "
            "with --run-name"
        )
    if differ:
        log.info(
            "resuming with changed settings: "
            + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in differ.items())
        )


def build_optimizer(params, cfg: OptimConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, eps=cfg.eps)


def restore(
    cfg,
    resume_from: Path | None,
    *,
    model: torch.nn.Module,
    ema: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loader,
    ctx: dist.DistContext,
    extra: torch.nn.Module | None = None,
    extra_optimizer: torch.optim.Optimizer | None = None,
) -> int:
    """Load ``resume_from`` (weights, EMA, optimizer, RNG, data position, and the alignment head with its
    optimizer when given) if given; returns the step."""
    if resume_from is None:
        if cfg.resume is None and ckpt.latest(cfg.run_dir / "checkpoints") is not None:
            log.warning(
                f"{cfg.run_dir} already holds checkpoints; starting fresh (use --resume auto to continue)"
            )
        return 0
    meta, rank_state = ckpt.load(
        resume_from,
        model=model,
        ema=ema,
        optimizer=optimizer,
        ctx=ctx,
        extra=extra,
        extra_optimizer=extra_optimizer,
    )
    step = meta["step"]
    loader.load_state_dict(rank_state["data"])
    saved_dp = (meta.get("config") or {}).get("parallel", {}).get("cp", 1)  # context groups share data
    saved_dp = meta.get("world", ctx.world) // max(int(saved_dp), 1)
    if meta.get("world", ctx.world) != ctx.world or saved_dp != ctx.dp_world:
        log.warning(
            f"resuming a checkpoint of {meta['world']} ranks ({saved_dp} data-parallel) on {ctx.world} "
            f"({ctx.dp_world} data-parallel): weights, EMA and optimizer state are exact, but the data order "
            f"restarts from each rank's saved position (clips of this epoch may repeat or be skipped)"
        )
    log.info(f"resumed from {resume_from} at step {step}")
    if step >= cfg.max_steps:
        log.info(
            f"nothing to train: the checkpoint is at step {step} and max_steps is {cfg.max_steps}; raise "
            f"--max-steps to continue"
        )
    return step


@dataclass
class NonfiniteCounter:
    """Skipped optimizer steps: in a row (reset by a finite step) and in total (logged)."""

    in_a_row: int = 0
    total: int = 0

    def check(self, step: int) -> None:
        """Raise after ``MAX_NONFINITE_IN_A_ROW`` skips in a row (called once the skip is reported)."""
        if self.in_a_row >= MAX_NONFINITE_IN_A_ROW:
            raise RuntimeError(
                f"{MAX_NONFINITE_IN_A_ROW} non-finite losses in a row at step {step}: lower "
                f"--optim.lr, enable --optim.grad-clip, or check the data"
            )


def optimizer_step(
    cfg,
    step: int,
    *,
    model: torch.nn.Module,
    ema: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    nonfinite: NonfiniteCounter,
    head: torch.nn.Module | None = None,
    head_optimizer: torch.optim.Optimizer | None = None,
) -> Tensor | None:
    """Clip (from ``optim.clip_start_step``), AdamW step and EMA update on the accumulated gradients. Returns
    the pre-clip global gradient norm, or None when it is not finite: the step is skipped (gradients dropped)
    and counted; the caller reports it and calls ``nonfinite.check`` (too many in a row raise).

    With an alignment ``head`` the norm is that of the model's and the head's gradients together (REPA clips
    its projectors with the model: they are part of its SiT), the head has its own optimizer (it is
    replicated, not sharded, and not EMA'd) and follows the same learning-rate schedule."""
    clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 and step >= cfg.optim.clip_start_step else math.inf
    param_sets = [list(dist.unwrap(model).parameters())]
    if head is not None:
        param_sets.append(list(dist.unwrap(head).parameters()))
    norms = [_full(torch.nn.utils.clip_grad_norm_(ps, math.inf)).float() for ps in param_sets]  # no clipping
    grad_norm = torch.linalg.vector_norm(torch.stack(norms))
    optimizers = [optimizer] + ([head_optimizer] if head is not None else [])
    if not torch.isfinite(grad_norm):  # one sync per step; also catches a non-finite loss
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        nonfinite.in_a_row += 1
        nonfinite.total += 1
        log.warning(f"step {step}: non-finite loss/gradient, step skipped ({nonfinite.in_a_row} in a row)")
        return None
    nonfinite.in_a_row = 0
    if clip < math.inf:
        coef = min(1.0, clip / (grad_norm.item() + 1e-6))  # torch.nn.utils.clip_grad_norm_'s rule
        if coef < 1.0:
            for ps in param_sets:
                torch._foreach_mul_([p.grad for p in ps if p.grad is not None], coef)
    for opt in optimizers:
        opt.step()
        opt.zero_grad(set_to_none=True)
    update_ema(ema, model, 0.0 if step < cfg.ema.start_step else cfg.ema.decay)
    return grad_norm


def _about(batch: Batch, seed: int) -> dict:
    """What a micro-batch is, for the non-finite report: its seed, sample ids and labels."""
    return {"seed": seed, "ids": list(batch.ids) if batch.ids else None, "labels": batch.label.tolist()}


def _full(t: Tensor) -> Tensor:
    """A DTensor (FSDP2 gradient norm) as a plain replicated tensor; plain tensors pass through."""
    return t.full_tensor() if dist.is_sharded(t) else t


# ---------------------------------------------------------------------------------------------- the loop


def train(cfg: TrainConfig, *, model_cls: type | None = None) -> Path:
    """Train to ``cfg.max_steps``; returns the run directory. ``model_cls`` is the backbone class (default:
    the one ``cfg.model`` configures): a fork of ``VDiT`` or of the CogVideoX transformer (same constructor
    and forward contract) plugs in here without touching this file. A signal of ``cfg.ckpt.signals`` ends
    the run after a checkpoint by raising ``Preempted`` (``minivdit/preempt.py``)."""
    cfg = with_pretrained_architecture(cfg)
    with PreemptionHandler(cfg.ckpt.signals) as preemption:
        return _train(cfg, model_cls or model_class(cfg.model), preemption)


def _train(cfg: TrainConfig, model_cls: type, preemption: PreemptionHandler) -> Path:
    ctx = dist.init(cp=cfg.parallel.cp)
    cfg = with_global_batch(cfg, ctx.dp_world)  # a context-parallel group trains on one batch
    run_dir = cfg.run_dir
    resume_from = start_run(cfg, ctx, structural=("model", "lora", "align", "uniworld"))

    loader = build_loader(cfg.data, ctx.dp_rank, ctx.dp_world)  # first: a wrong --data.root fails fast
    check_dataset(cfg, loader.dataset)
    vae = build_vae(cfg.vae)
    parked = vae is not None and vae_only_decodes(cfg, loader.dataset)
    if parked:
        log.info(
            f"VAE kept on the CPU: the shards in {cfg.data.root} cache the latents and nothing in the step "
            f"encodes, so it moves to {ctx.device} only to decode samples"
        )
    elif vae is not None:
        vae = vae.to(ctx.device)
    if vae is not None:
        check_latent_shape(cfg, vae)
    model, ema = build_models(cfg, ctx, model_cls)
    teacher, head = build_alignment(cfg, ctx, vae, loader.dataset)
    conditioner = build_conditioner(cfg, ctx, vae, loader.dataset)
    validator = build_validator(cfg, ctx, conditioner, vae)
    objective = build_objective(cfg.objective)
    trainable = [p for p in dist.unwrap(model).parameters() if p.requires_grad]  # LoRA: the adapters only
    optimizer = build_optimizer(trainable, cfg.optim)
    head_optimizer = build_optimizer(dist.unwrap(head).parameters(), cfg.optim) if head is not None else None
    step = restore(
        cfg,
        resume_from,
        model=dist.unwrap(model),
        ema=ema,
        optimizer=optimizer,
        loader=loader,
        ctx=ctx,
        extra=dist.unwrap(head) if head is not None else None,
        extra_optimizer=head_optimizer,
    )
    write_config(cfg, ctx)

    log.info(
        f"model: {num_params(dist.unwrap(model)) / 1e6:.2f} M trainable parameters, {cfg.model.block_type}, "
        f"{cfg.model.depth} blocks × {cfg.model.hidden_size}; objective {type(objective).__name__}; "
        f"world {ctx.world}{f' = dp {ctx.dp_world} × cp {ctx.cp}' if ctx.cp > 1 else ''} on "
        f"{ctx.device.type}; strategy {dist.resolve_strategy(cfg.parallel, ctx)}; precision {cfg.precision}"
    )
    log.info(f"run dir: {run_dir.resolve()}")
    logger = MetricLogger(
        run_dir, is_main=ctx.is_main, max_steps=cfg.max_steps, tensorboard=cfg.log.tensorboard
    )
    eval_metrics = _eval_metrics(cfg)
    samples_per_step = cfg.data.batch_size * ctx.dp_world * cfg.grad_accum
    sums: dict[str, Tensor] = {}
    logged_steps, nonfinite = 0, NonfiniteCounter()
    model.train()
    if head is not None:
        head.train()

    def forward(batch: Batch, seed: int) -> tuple[Tensor, dict[str, Tensor]]:
        """One micro-batch's ``train_step``, seeded by its global position: a replay is the same step."""
        torch.manual_seed(seed)
        # the conditioner's own stream, on the training device (anyframe's fill noise is drawn there)
        generator = torch.Generator(ctx.device).manual_seed(seed + 1)
        return train_step(
            batch,
            model=model,
            objective=objective,
            num_classes=cfg.model.num_classes,
            precision=cfg.precision,
            device=ctx.device,
            vae=vae,
            align=cfg.align,
            teacher=teacher,
            head=head,
            conditioner=conditioner,
            generator=generator,
        )

    logger.start(step)
    while step < cfg.max_steps:
        for opt in (optimizer, head_optimizer) if head is not None else (optimizer,):
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg.optim, cfg.max_steps)
        step_metrics: dict[str, Tensor] = {}
        micro_batches: list[tuple[Batch, int]] = []  # kept for the step: a non-finite one is replayed
        for micro in range(cfg.grad_accum):
            batch = next(loader)
            seed = micro_seed(cfg.seed, step, micro * ctx.dp_world + ctx.dp_rank)  # a cp group: one seed
            sync = micro == cfg.grad_accum - 1
            with dist.sync_grads(model, enabled=sync), dist.sync_grads(head, enabled=sync):
                loss, metrics = forward(batch, seed)
                (loss / cfg.grad_accum).backward()
            micro_batches.append((batch, seed))
            for k, v in metrics.items():
                step_metrics[k] = step_metrics.get(k, 0.0) + v / cfg.grad_accum
        grad_norm = optimizer_step(
            cfg,
            step,
            model=model,
            ema=ema,
            optimizer=optimizer,
            nonfinite=nonfinite,
            head=head,
            head_optimizer=head_optimizer,
        )
        if grad_norm is None:  # non-finite: skipped, reported, the same step retried on the next batch
            forensics.report(
                run_dir,
                step,
                model=model,
                backbone=backbone(model),
                micro_batches=[(_about(b, s), partial(forward, b, s)) for b, s in micro_batches],
                lr=optimizer.param_groups[0]["lr"],
                counters={"in_a_row": nonfinite.in_a_row, "total": nonfinite.total},
                rank=ctx.rank,
            )
            nonfinite.check(step)
            continue
        step += 1

        step_metrics["grad_norm"] = grad_norm
        for k, v in step_metrics.items():
            sums[k] = sums.get(k, 0.0) + v
        logged_steps += 1
        if step % cfg.log.every == 0 or step == cfg.max_steps:
            means = {k: dist.all_reduce_mean(v / logged_steps).item() for k, v in sums.items()}
            means["lr"] = optimizer.param_groups[0]["lr"]
            means["nonfinite_skipped"] = float(nonfinite.total)
            means["epoch"] = float(loader.epoch)
            if cfg.align is not None:  # the alignment term next to the diffusion loss: λ·L_align / L_diff
                means["align_ratio"] = cfg.align.weight * means["loss/align"] / means["loss/diff"]
            logger.log(step, means, samples_per_step=samples_per_step, peak_mem_gib=_peak_mem_gib(ctx.device))
            sums, logged_steps = {}, 0
        last, stop = step == cfg.max_steps, preemption.requested()
        if (cfg.ckpt.every and step % cfg.ckpt.every == 0) or last or stop:
            path = ckpt.save(
                run_dir / "checkpoints",
                step,
                model=dist.unwrap(model),
                ema=ema,
                optimizer=optimizer,
                ctx=ctx,
                rank_state={"data": loader.state_dict()},
                extra=dist.unwrap(head) if head is not None else None,
                extra_optimizer=head_optimizer,
                meta={
                    "config": to_dict(cfg),
                    "model_class": f"{model_cls.__module__}:{model_cls.__qualname__}",
                },
                keep=cfg.ckpt.keep,
                checksum=cfg.ckpt.checksum,
            )
            log.info(f"saved checkpoint {path}")
        if stop:  # after the checkpoint, before sampling: the grace period is short
            logger.close()
            raise preemption.stopped(step, path)
        sampler = ema if ema is not None else dist.unwrap(model)
        due = cfg.sample_every >= 0 and ((cfg.sample_every and step % cfg.sample_every == 0) or last)
        if validator is not None and cfg.validation.due(step, last):
            with on_device(vae, ctx.device, parked):
                validator(
                    sampler, objective, step=step, run_dir=cfg.run_dir, logger=logger, precision=cfg.precision
                )
            model.train()
        elif due and conditioner is not None and conditioner.needs_prompts:
            if last and validator is None:
                log.info(
                    "samples: give --validation.prompts to sample during training, or sample the checkpoint "
                    "with python -m minivdit.sample --prompt"
                )
        elif due:
            with on_device(vae, ctx.device, parked):
                _sample_grid(
                    cfg,
                    sampler,
                    objective,
                    vae,
                    ctx,
                    logger,
                    step,
                    getattr(loader.dataset, "classes", None),
                    _start_frames(cfg, loader.dataset) if conditioner is not None else None,
                )
            model.train()
        if eval_metrics and ((cfg.eval.every and step % cfg.eval.every == 0) or last):
            with on_device(vae, ctx.device, parked):
                _evaluate(cfg, sampler, objective, vae, ctx, logger, step, eval_metrics)
            logger.start(step)  # the evaluation's time is not training throughput
    logger.close()
    dist.barrier()
    return run_dir


def vae_only_decodes(cfg: TrainConfig, dataset) -> bool:
    """Whether the run needs its VAE only to decode samples: the shards cache the latents, and no
    conditioning encodes frames in the step (I2V, anyframe, FlashI2V's start frame, UniWorld's f_img)."""
    meta = getattr(dataset, "meta", None) or {}
    read = set(getattr(dataset, "fields", None) or meta.get("fields", {}))  # the fields the run reads
    first = "image_latents" in read  # frame 0 cached: I2V "first" and FlashI2V encode nothing
    encodes = (
        cfg.i2v.mode == "anyframe"
        or ((cfg.i2v.enabled or getattr(cfg.model, "is_i2v", False)) and not first)
        or (cfg.flashi2v is not None and not first)
        or (cfg.uniworld is not None and cfg.uniworld.f_img != "off")
    )
    return "latents" in read and not encodes


@contextlib.contextmanager
def on_device(vae: torch.nn.Module | None, device: torch.device, parked: bool) -> Iterator[None]:
    """A parked VAE (``vae_only_decodes``: kept on the CPU) on ``device`` for the block, then back."""
    if not parked or vae is None:
        yield
        return
    vae.to(device)
    try:
        yield
    finally:
        vae.to("cpu")
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _sample_grid(
    cfg: TrainConfig,
    ema: torch.nn.Module,
    objective,
    vae: torch.nn.Module | None,
    ctx: dist.DistContext,
    logger: MetricLogger,
    step: int,
    classes=None,
    start_frames: tuple[Tensor, Tensor] | None = None,
) -> None:
    """Every rank samples (FSDP needs all of them in the forward); rank 0 writes. ``start_frames``
    (``_start_frames``): the image-to-video grid's condition frames and labels."""
    t0 = time.perf_counter()
    n, k = cfg.sample.num, max(cfg.model.num_classes, 1)
    labels = torch.arange(n) % k if cfg.model.num_classes else None
    shape = (n, cfg.model.num_frames, cfg.model.in_channels, *cfg.model.input_size)
    cond = null = None
    if start_frames is not None:  # image-to-video: the first n clips' frame 0 and labels
        labels = start_frames[1] if cfg.model.num_classes else None
        cond, null = start_frame_cond(
            ema,
            labels.to(ctx.device) if labels is not None else None,
            start_frames[0].to(ctx.device),
            vae if vae is not None else PixelSpace(),
            flashi2v=cfg.flashi2v is not None,
            num_frames=cfg.data.num_frames,
        )
    videos = generate(
        ema,
        objective,
        labels=labels if cond is None else None,
        cond=cond,
        null=null,
        shape=shape,
        steps=cfg.sample.steps,
        cfg_scale=cfg.sample.cfg_scale,
        seed=cfg.sample.seed,
        device=ctx.device,
        precision=cfg.precision,
    )
    if vae is not None:
        videos = decode_latents(vae, videos, ctx.device, cfg.precision)
    if ctx.is_main:
        names = _label_names(cfg, labels, classes)
        out = write_samples(cfg.run_dir / "samples" / f"step_{step:07d}", videos, names)
        logger.video("samples", out["uint8"], step)
        logger.image("samples/contact_sheet", out["contact"], step)
        took = time.perf_counter() - t0
        log.info(f"samples: {out['dir'].resolve()} (grid.mp4, grid.gif, contact.png; {took:.1f}s)")


def _start_frames(cfg: TrainConfig, dataset) -> tuple[Tensor, Tensor]:
    """Frame 0 [n, 3, H, W] and label [n] of the dataset's first ``sample.num`` clips: the condition of an
    image-to-video V-DiT's sample grid (the same clips at every step)."""
    if not hasattr(dataset, "get"):
        raise ValueError(
            f"the image-to-video sample grid takes its start frames from the dataset's clips, which "
            f"{type(dataset).__name__} ({cfg.data.dataset}) cannot index: set --sample-every -1"
        )
    rng = np.random.default_rng(cfg.sample.seed)
    clips = [dataset.get(i % len(dataset), rng) for i in range(cfg.sample.num)]
    frames = torch.stack([torch.as_tensor(c["video"])[0] for c in clips]).float()  # [n, 3, H, W]
    return frames, torch.tensor([int(c["label"]) for c in clips])


def _eval_metrics(cfg: TrainConfig) -> tuple[str, ...]:
    """The metrics ``cfg.eval`` can compute: those whose detector weights were given (one logged line names
    the others and the flags that would enable them). Called before the first step: a ValueError naming
    ``--eval.data-root`` when the real videos they need cannot be found (for a run on shards: the videos the
    shards were made from, ``evaluate.real_data_config``)."""
    if cfg.eval is None:
        return ()
    from minivdit.eval.evaluate import missing_weights, real_data_config
    from minivdit.eval.protocols import REAL_METRICS

    wanted = cfg.eval.chosen_metrics
    missing = missing_weights(cfg.eval, wanted)
    if missing:
        log.info(
            f"eval ({cfg.eval.protocol}): skipping {', '.join(missing)}: no weights given "
            f"({', '.join(sorted({'--eval.' + f[2:] for f in missing.values()}))}; README 'Evaluation')"
        )
    kept = tuple(m for m in wanted if m not in missing)
    labels_from_real = cfg.eval.resolved_protocol().needs_real_labels and cfg.model.num_classes
    if kept and (set(kept) & set(REAL_METRICS) or labels_from_real):
        # the real videos (for shards: those they were made from) must be found now, not at the first
        # evaluation hours in
        real_data_config(to_dict(cfg.data), cfg.eval.data_root, flag="--eval.data-root")
    return kept


def _evaluate(
    cfg: TrainConfig,
    ema,
    objective,
    vae,
    ctx: dist.DistContext,
    logger: MetricLogger,
    step: int,
    metrics: tuple[str, ...],
) -> None:
    """Evaluate the EMA weights (every rank takes part); rank 0 logs and writes
    ``eval/step_N/metrics.json`` (and with ``--eval.keep-frames`` the clips in ``eval/step_N/frames/``)."""
    import shutil

    from minivdit.eval.evaluate import evaluate_model, frames_staging, write_metrics

    t0 = time.perf_counter()
    out = cfg.run_dir / "eval" / f"step_{step:07d}" / "metrics.json"
    staging = frames_staging(out) if cfg.eval.keep_frames else None
    if staging is not None and ctx.is_main:
        shutil.rmtree(staging, ignore_errors=True)  # an interrupted evaluation's clips must not mix in
    if staging is not None:
        dist.barrier()
    values, record = evaluate_model(
        cfg.eval,
        model=ema,
        objective=objective,
        vae=vae,
        run_cfg=to_dict(cfg),
        device=ctx.device,
        metrics=metrics,
        frames_dir=staging,
        show=ctx.is_main,
        weights="ema" if cfg.ema.enabled else "raw",
        root_flag="--eval.data-root",
    )
    logger.scalars(step, {f"eval/{k}": v for k, v in values.items()})
    if ctx.is_main:
        out = write_metrics(out, values, record | {"step": step}, frames=staging)
        shown = ", ".join(f"{k} {v:.4g}" for k, v in values.items())
        n_fake, n_real = record["num_fake_used"], record["num_real_used"]
        log.info(
            f"eval ({cfg.eval.protocol}, {n_fake} generated vs {n_real} real clips, "
            f"{time.perf_counter() - t0:.0f}s): {shown} -> {out}"
        )
        contact = cfg.run_dir / "samples" / f"step_{step:07d}" / "contact.png"
        if contact.is_file():  # the samples a person looks at, next to the numbers that judge them
            log.info(f"step {step}: samples {contact.resolve()} | {shown}")


def _label_names(cfg: TrainConfig, labels: Tensor | None, classes=None) -> list[str] | None:
    if labels is None:
        return None
    if classes:
        return [f"{int(y)}: {classes[int(y)]}" for y in labels]
    return [str(int(y)) for y in labels]


def main(
    default: TrainConfig,
    args: list[str] | None = None,
    *,
    model_cls: type | None = None,
    before: Callable[[TrainConfig], None] | None = None,
) -> None:
    """CLI entry of every recipe: the command line over the recipe's config (:func:`parse`), then ``train``.
    ``model_cls`` plugs in a fork of the backbone; None builds the class the config names (a V-DiT or the
    CogVideoX transformer). ``before(cfg)`` runs on the parsed config before training (a recipe that makes
    an asset on first use, at the path the command line chose)."""
    setup_logging(dist.launcher_env()[0])  # console only: the run directory is not known yet
    recipe_doc = getattr(sys.modules.get("__main__"), "__doc__", None)  # the recipe's docstring: --help
    cfg = parse(default, sys.argv[1:] if args is None else list(args), description=recipe_doc)
    if before is not None:
        before(cfg)
    run(train, cfg, model_cls=model_cls)


def _flag_value(args: list[str], flag: str) -> str | None:
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def parse(default: TrainConfig, args: list[str], *, description: str | None = None) -> TrainConfig:
    """The run's config: the recipe's ``default``, then the command line (``minivdit.config.cli``).

    - ``--pretrained FOLDER`` replaces the recipe's architecture by the folder's before the flags apply
      (:func:`pretrained_architecture`);
    - ``--resume auto`` on a run directory with a ``config.json`` continues from that saved config, the
      command line overriding it (``--max-steps 2000`` to train longer);
    - the text-to-video sections (``--lora``, ``--text``, ``--validation``: CogVideoX and Wan) are hidden for
      a V-DiT recipe (which keeps ``--i2v`` and ``--flashi2v``: image-to-video on a V-DiT), and
      ``--eval.*`` / ``--align.*`` turn on a section the recipe leaves off."""
    return parse_config(TrainConfig, default, args, description=description, prepare=_prepare_train)


def _prepare_train(default: TrainConfig, args: list[str]) -> tuple[dict, tuple[str, ...]]:
    """The fields the command line changes before its flags apply (``minivdit.config.cli``'s ``overrides``),
    and the sections hidden from it."""
    overrides = {}
    folder = _flag_value(args, "--pretrained") or default.pretrained
    if folder is not None and any(
        (Path(folder) / sub / "config.json").is_file() for sub in ("", "transformer")
    ):
        # Before the flags, so that they apply to the folder's architecture. A folder that is not there (the
        # recipe's /models/... default on a laptop, --help) is left to train(), which names it.
        overrides["model"] = pretrained_architecture(default.model, folder)
    text_to_video = isinstance(default.model, (CogVideoXConfig, WanConfig))
    hide = ("eval",) if text_to_video else ("lora", "text", "validation", "vlm", "uniworld")
    return overrides, hide


def parse_config(cls, default, args: list[str], *, description=None, prepare=None):
    """``minivdit.config.cli`` with ``--resume auto`` continuing from the run's saved ``config.json`` (used by
    both trainers). ``prepare(default, args) -> (overrides, hidden fields)`` adjusts the recipe's default."""
    prepare = prepare or (lambda d, a: ({}, ()))
    overrides, hide = prepare(default, args)
    cfg = cli(cls, default, args, description=description, hide=hide, overrides=overrides)
    saved = cfg.run_dir / "config.json"
    if cfg.resume != "auto" or not saved.is_file():
        return cfg
    try:
        prior = from_dict(cls, json.loads(saved.read_text()))
    except (ValueError, TypeError, json.JSONDecodeError) as e:
        log.warning(f"--resume auto: {saved} cannot be read ({e}); using the recipe's config and the flags")
        return cfg
    # Where the run lives and that it resumes come from this command, whatever the saved file says.
    overrides, hide = prepare(prior, args)
    overrides |= {"out_dir": cfg.out_dir, "run_name": cfg.run_name, "resume": cfg.resume}
    log.info(f"--resume auto: continuing from {saved} (the command line overrides it)")
    return cli(cls, prior, args, description=description, hide=hide, overrides=overrides)


def run(fn, cfg, **kwargs) -> None:
    """Run a trainer under a recipe's ``main``: a clean teardown, and exit code ``EXIT_PREEMPTED`` (75) when
    a signal stopped it after its checkpoint, so the scheduler can requeue it with ``--resume auto``."""
    try:
        fn(cfg, **kwargs)
    except Preempted as e:
        log.warning(f"{e}; exiting with {EXIT_PREEMPTED}: requeue with --resume auto")
        dist.teardown(clean=True)  # every rank got here at the same step
        sys.exit(EXIT_PREEMPTED)
    finally:
        dist.teardown()


__all__ = [
    "TrainConfig",
    "OptimConfig",
    "EMAConfig",
    "LogConfig",
    "CkptConfig",
    "SampleEvalConfig",
    "train",
    "train_step",
    "main",
    "parse",
    "parse_config",
    "pretrained_architecture",
    "replace",
]
