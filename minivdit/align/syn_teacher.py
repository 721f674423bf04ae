"""A self-supervised video teacher that knows the synthetic world (issue 22 §1): a small video ViT trained on
the synthetic clips (``minivdit/data/synthetic.py``), never on their labels (REPA's teachers are
self-supervised), and saved as a Hugging Face ``VideoMAEModel`` folder that ``TeacherConfig(videomae=...)``
loads unchanged.

- **Model**: ``VideoMAEConfig`` at the quickstart's clip size, 8 frames of 16×16, patch 4 and tubelet 2, so
  the teacher runs at its native grid for the quickstart's 4×4 DiT grid (``VideoMAEEncoder`` feeds it
  ``grid × patch`` = 16 px: no resize, and its position table is the trained one). Width 128, 4 layers,
  4 heads; ``use_mean_pooling=False`` so the tokens end in a LayerNorm (the original VideoMAE encoder's
  ``norm``; ``--teacher.layer prenorm`` reads before it). The encoder sees the pixels as the teacher path
  gives them: ``[-1, 1]`` → ``[0, 1]`` → ImageNet statistics (:func:`pixels`).
- **Objective** ``"jepa"`` (the default): V-JEPA's feature prediction (Bardes et al. 2024, "Revisiting
  Feature Prediction for Learning Visual Representations from Video"). The context encoder (the
  ``VideoMAEModel`` that is saved) sees the context tokens only; the target encoder, an EMA of it (§3.1;
  momentum 0.996 → 1 linearly over the run; no gradient), sees the whole clip; a narrow predictor (§3.3:
  width 64, 2 pre-norm blocks, a learned mask token plus the position's sinusoid per target) regresses the
  target encoder's layer-normed tokens at the hidden positions, L1 loss (§3.1). Masking: V-JEPA's long-range
  multi-block mask (§3.2: the union of 2 rectangles of 70 % of the 4×4 grid each, aspect 0.75-1.5, hidden
  through the whole clip: 86 % of the positions on average; cut to the batch's smallest counts, the context
  is one position's tube, 6 % of the tokens, and the target about 66 %). Deviations: the saved encoder is the
  context encoder, not the EMA (V-JEPA's evaluations read its target encoder); one mask per clip, not
  V-JEPA's short- and long-range pair; positions are VideoMAE's 1-D sinusoid over the flattened
  ``(t, h, w)`` index (V-JEPA: 3-D sin-cos); the batch's masks are equalised by dropping random whole tubes
  (V-JEPA's collator keeps the first ``min_keep`` indices).
- **Objective** ``"mae"`` (the teacher of ``VERSION`` 1 with ``--objective mae --masking tube --steps
  1500``): ``VideoMAEForPreTraining``'s MSE on masked tubes, 90 % of the 4×4 positions hidden,
  per-patch normalised pixels as the target (``norm_pix_loss``), a 2-layer decoder of width 64. Tried at 300
  steps (mean-pooled probe, 400 clips a set: class / motion): pixels with 75 % tube-masked 0.63 / 0.27, 50 %
  0.65 / 0.25, 90 % 0.68 / 0.28; normalised pixels with 75 % 0.66 / 0.29, with 90 % 0.67 / 0.31; random
  (not tube) masking of 75 % of the tokens 0.61 / 0.23 (pixels), 0.67 / 0.28 (normalised); future masking
  (the last half / three quarters of the tubelets hidden whole; ``masking="future"``) 0.64 / 0.29 and
  0.66 / 0.29; the same architecture at random init 0.53 / 0.20; at 1500 steps 0.618 / 0.232 against
  0.558 / 0.198 (500 clips a set). Masked autoencoding here learns little that a linear probe reads beyond
  what a random ViT exposes.
- **JEPA trials** (``tools/train_syn_teacher.py --probe``, seed 0, 500 clips a set; class / motion of the
  mean-pooled probe, then of the tubelet probe; random init: 0.56 / 0.20 and 0.66 / 0.21; the std of the
  saved encoder's layer-normed tokens across the batch, random init 0.52):

  ======================================================  ===========  ===========  =====
  settings (the rest: the defaults)                       mean         tubelets     std
  ======================================================  ===========  ===========  =====
  **multi-block 2 × 0.7, predictor 64 × 2, 300 steps**    0.76 / 0.32  0.79 / 0.32  0.09
  seed 1 (random init 0.56 / 0.18 and 0.63 / 0.21)        0.79 / 0.35  0.82 / 0.35  0.12
  EMA momentum from 0.99                                  0.74 / 0.35  0.77 / 0.31  0.08
  EMA momentum from 0.999                                 0.72 / 0.29  0.75 / 0.32  0.09
  weight decay 0.2                                        0.75 / 0.32  0.78 / 0.32  0.09
  lr 5e-4                                                 0.72 / 0.33  0.74 / 0.33  0.12
  lr 5e-4, 600 steps                                      0.69 / 0.29  0.75 / 0.33  0.19
  800 steps                                               0.47 / 0.16  0.60 / 0.24  0.34
  multi-block 2 × 0.5                                     0.68 / 0.29  0.75 / 0.31  0.14
  short-range multi-block, 8 × 0.15                       0.66 / 0.28  0.74 / 0.28  0.13
  tube masking, 75 % (VideoMAE's)                         0.69 / 0.26  0.74 / 0.27  0.15
  future masking, the last 2 of 4 tubelets                0.66 / 0.28  0.76 / 0.30  0.25
  predictor 32 × 1                                        0.65 / 0.27  0.74 / 0.30  0.11
  predictor 32 × 1, lr 5e-4                               0.64 / 0.22  0.73 / 0.23  0.70
  predictor 128 × 4                                       0.46 / 0.17  0.64 / 0.21  0.26
  MAE (tube 90 %, normalised pixels), 300 steps           0.68 / 0.32  0.74 / 0.32  0.11
  MAE, 1500 steps (``VERSION`` 1)                         0.62 / 0.23
  ======================================================  ===========  ===========  =====

  Both objectives learn most in their first few hundred steps and lose it after: the JEPA target tokens'
  std across the batch (logged: at most 1 per channel, 0 when collapsed) falls from 0.53 to 0.26 by step 300
  and 0.14 by step 800 (a slow partial collapse), so the default stops at 300 steps (about 70 s on one
  thread). JEPA beats MAE on the class, not on the motion. The saved tokens vary little from token to token
  (std 0.09: mostly one shared direction) though the probes read them. The EMA target encoder, probed alike
  in five trials (0.59-0.71 / 0.24-0.31 mean-pooled), beat its context encoder in two, the default in none.
- **Centring** (``center``, :func:`center_output`): that shared direction put every token at cosine 0.99
  from the mean token, a constant target for REPA's per-token cosine; the mean token of held-out clips is
  folded into the final LayerNorm's bias, so the saved folder outputs centred tokens (mean cosine 0.03
  between two tokens of a clip) and the probes, on standardised features, read the same.
- **Data**: fresh clips every step (``SyntheticVideos`` with ``data_seed``, indices ``step·B …``, never
  repeated) of the ten classes' ``in_domain`` appearance × motion pairings (70 pairs; the 30
  ``out_of_domain`` pairings are kept for the motion probe). The labels are never read.
- **Probe** (:func:`probe`): a linear classifier (multinomial logistic regression, L-BFGS, deterministic) on
  the teacher's tokens (what ``Teacher.forward`` returns) mean-pooled over tubelets and positions, max-pooled
  alike, and pooled over positions only with the 4 tubelets concatenated (``_tubelets``, 4 × 128: where the
  object is at each time, so the motion's direction), fitted on ``probe_clips`` clips and scored on as many
  held-out ones: *class* (the ten classes, split ``all``) and *motion* (fitted on ``in_domain`` clips,
  scored on the ``out_of_domain`` pairings: a motion seen only with other appearances), for the trained
  teacher and the same architecture at random init; with the tokens' std (:func:`feature_std`).

:func:`ensure` is the cache: the folder (``default_dir``: ``runs/syn_teacher/<hash of the settings>``) is
trained on first use, written to a temporary folder and published by one rename (``minivdit.durable``), and
stamped with its settings, seed, steps, loss curve, target std and probe in ``minivdit_teacher.json``; later
calls with the same settings reuse it. ``tools/train_syn_teacher.py`` is its command line;
``recipes/quickstart_align.py`` aligns to it by default.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minivdit.align.teachers import IMAGENET_MEAN, IMAGENET_STD, TeacherConfig, _hf, build_teacher
from minivdit.config import check_types, to_dict
from minivdit.data.synthetic import SyntheticVideos
from minivdit.durable import publish

log = logging.getLogger("minivdit")

STAMP = "minivdit_teacher.json"
VERSION = 3  # of the training procedure: part of the cache key
ROOT = Path("runs") / "syn_teacher"
NUM_CLASSES = 10  # every row of the synthetic table


@dataclass(frozen=True, kw_only=True)
class SynTeacherConfig:
    """How the synthetic-world teacher is trained (every field is part of its cache key)."""

    objective: Literal["mae", "jepa"] = "jepa"
    """'mae': ``VideoMAEForPreTraining``'s pixel reconstruction; 'jepa': V-JEPA feature prediction (an EMA
    target encoder's tokens at the hidden positions, predicted from the visible ones; module docstring)."""
    seed: int = 0
    """Init and mask seed."""
    steps: int = 300
    """Optimizer steps (fresh clips every step)."""
    batch_size: int = 32
    lr: float = 1e-3
    """AdamW peak learning rate (linear warm-up, cosine decay)."""
    warmup_steps: int = 100
    weight_decay: float = 0.05
    mask_ratio: float = 0.9
    """Fraction of the spatial positions hidden in every tubelet (tube masking): 14 of 16."""
    masking: Literal["tube", "random", "future", "multiblock"] = "multiblock"
    """'tube': one spatial mask for every tubelet (VideoMAE); 'random': ``mask_ratio`` of all tokens;
    'future': the last ``mask_ratio`` of the tubelets, whole (the decoder extrapolates the motion seen in the
    first ones, so the encoder must carry it); 'multiblock': V-JEPA's, the union of ``num_blocks`` random
    rectangles of ``block_scale`` of the grid each, hidden in every tubelet (``mask_ratio`` unused)."""
    num_blocks: int = 2
    """'multiblock': rectangles per clip (V-JEPA's long-range masks: 2 of scale 0.7; short-range: 8 of
    0.15)."""
    block_scale: float = 0.7
    """'multiblock': area of each rectangle, a fraction of the ``h × w`` grid (aspect ratio 0.75 to 1.5)."""
    ema_start: float = 0.996
    """'jepa': the target encoder's EMA momentum at the first step, linear to ``ema_end`` (V-JEPA)."""
    ema_end: float = 1.0
    norm_pix_loss: bool = True
    """VideoMAE's per-patch normalised pixels as the target (False: the pixels)."""
    center: bool = True
    """After training, shift the final LayerNorm's bias so that the mean output token over ``center_clips``
    held-out clips is 0 (:func:`center_output`). Without it every token of either objective is at cosine
    0.99 from the mean token, so REPA's per-token cosine target is nearly one constant vector (the alignment
    loss reached −0.996 by step 200); centred, two tokens of a clip are at mean cosine 0.03. A constant shift:
    the linear probes read the same."""
    center_clips: int = 512
    data_seed: int = 1000
    """``SyntheticVideos`` seed of the training clips (the quickstart's clips are seed 0)."""
    num_frames: int = 8
    image_size: int = 16
    patch_size: int = 4
    tubelet_size: int = 2
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    decoder_hidden_size: int = 64
    """Width of the MAE decoder, or of the JEPA predictor (V-JEPA's is narrow too: 384 against 1024)."""
    decoder_layers: int = 2
    threads: int = 1
    """torch CPU threads while training (fixed: the run is deterministic for a fixed thread count). One: this
    model's small matrices gain little from a second, and on a busy 2-core machine two OpenMP threads ran a
    step 5× slower (1.0 s against 0.18 s)."""

    def __post_init__(self):
        check_types(self)
        sizes = (
            "steps",
            "batch_size",
            "num_frames",
            "image_size",
            "patch_size",
            "tubelet_size",
            "hidden_size",
        )
        sizes += ("num_layers", "num_heads", "decoder_hidden_size", "decoder_layers", "threads", "num_blocks")
        if small := [f"{k}={getattr(self, k)}" for k in sizes if getattr(self, k) < 1]:
            raise ValueError(f"SynTeacherConfig: {', '.join(small)} must be >= 1")
        if not 0 < self.mask_ratio < 1:
            raise ValueError(f"mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if not 0 < self.block_scale <= 1:
            raise ValueError(f"block_scale must be in (0, 1], got {self.block_scale}")
        if not 0 <= self.ema_start <= self.ema_end <= 1:
            raise ValueError(f"need 0 <= ema_start <= ema_end <= 1, got {self.ema_start}, {self.ema_end}")
        if not (self.lr > 0 and math.isfinite(self.lr)) or self.warmup_steps < 0 or self.weight_decay < 0:
            raise ValueError(
                f"SynTeacherConfig: lr > 0 (finite), warmup_steps >= 0 and weight_decay >= 0, got {self.lr}, "
                f"{self.warmup_steps}, {self.weight_decay}"
            )
        if self.image_size % self.patch_size or self.num_frames % self.tubelet_size:
            raise ValueError(
                f"image_size {self.image_size} / num_frames {self.num_frames} must be multiples of "
                f"patch_size {self.patch_size} / tubelet_size {self.tubelet_size}"
            )
        if self.hidden_size % self.num_heads or self.decoder_hidden_size % self.num_heads:
            raise ValueError("hidden_size and decoder_hidden_size must be multiples of num_heads")

    @property
    def spatial(self) -> int:
        """Token positions per tubelet."""
        return (self.image_size // self.patch_size) ** 2

    @property
    def tokens(self) -> int:
        """Tokens per clip: tubelets × positions."""
        return self.num_frames // self.tubelet_size * self.spatial

    @property
    def num_masked(self) -> int:
        """Hidden positions per tubelet ('tube'), tokens per clip ('random') or tubelets ('future'); at least
        one of each kind ('multiblock': the hidden count varies; see :func:`context_target`)."""
        n = {"tube": self.spatial, "random": self.tokens, "future": self.tokens // self.spatial}.get(
            self.masking, self.spatial
        )
        return min(n - 1, max(1, round(self.mask_ratio * n)))


def cache_key(cfg: SynTeacherConfig) -> str:
    """12 hex digits of the settings (and ``VERSION``): the folder name under ``ROOT``."""
    text = json.dumps({"version": VERSION, **to_dict(cfg)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def default_dir(cfg: SynTeacherConfig | None = None) -> Path:
    """``runs/syn_teacher/<cache_key>`` (relative to the working directory, as a run's ``--out-dir``)."""
    return ROOT / cache_key(cfg or SynTeacherConfig())


# ---------------------------------------------------------------------------------------------------- model


def videomae_config(cfg: SynTeacherConfig):
    """The ``VideoMAEConfig`` of the teacher (encoder and decoder)."""
    return _hf("VideoMAEConfig")(
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        num_frames=cfg.num_frames,
        tubelet_size=cfg.tubelet_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=4 * cfg.hidden_size,
        decoder_hidden_size=cfg.decoder_hidden_size,
        decoder_num_hidden_layers=cfg.decoder_layers,
        decoder_num_attention_heads=cfg.num_heads,
        decoder_intermediate_size=4 * cfg.decoder_hidden_size,
        use_mean_pooling=False,
        norm_pix_loss=cfg.norm_pix_loss,
    )


def pixels(video: Tensor) -> Tensor:
    """[B, T, 3, H, W] in [-1, 1] → ImageNet-normalised, as ``FrozenEncoder._pixels`` at the native size."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 1, 3, 1, 1)
    return ((video + 1) / 2 - mean) / std


def clips(dataset: SyntheticVideos, indices: range | np.ndarray) -> tuple[Tensor, Tensor]:
    """Clips ``[N, T, 3, H, W]`` in [-1, 1] and their labels (the motion in a held-out split)."""
    items = [dataset.get(int(i)) for i in indices]
    return torch.stack([x["video"] for x in items]), torch.tensor([x["label"] for x in items])


def mask(cfg: SynTeacherConfig, batch: int, gen: torch.Generator) -> Tensor:
    """The mask ``[B, tubelets·h·w]`` (True = hidden): 'tube' hides ``num_masked`` random positions of the
    ``h × w`` grid in every tubelet (VideoMAE's tube masking), 'random' ``num_masked`` random tokens,
    'multiblock' :func:`multiblock`'s positions in every tubelet (a count that varies from clip to clip)."""
    if cfg.masking == "future":  # the last tubelets, every position: [B, T'·h·w]
        tubelets = cfg.tokens // cfg.spatial
        hidden = torch.arange(tubelets) >= tubelets - cfg.num_masked  # [T']
        return hidden.repeat_interleave(cfg.spatial).expand(batch, -1).clone()
    if cfg.masking == "multiblock":
        return multiblock(cfg, batch, gen).repeat(1, cfg.tokens // cfg.spatial)
    n = cfg.spatial if cfg.masking == "tube" else cfg.tokens
    order = torch.rand(batch, n, generator=gen).argsort(dim=1)
    hidden = torch.zeros(batch, n, dtype=torch.bool)
    hidden.scatter_(1, order[:, : cfg.num_masked], True)
    return hidden.repeat(1, cfg.tokens // n)


def multiblock(cfg: SynTeacherConfig, batch: int, gen: torch.Generator) -> Tensor:
    """V-JEPA's multi-block spatial mask ``[B, h·w]`` (§3.2 and its appendix: the union of ``num_blocks``
    rectangles of ``block_scale`` of the frame each, aspect ratio uniform in [0.75, 1.5]), which
    :func:`mask` repeats over every tubelet (V-JEPA's temporal scale 1: a tube through the whole clip).
    Deviation: a union that hides every position gets one random position back (V-JEPA resamples)."""
    side = cfg.image_size // cfg.patch_size
    area = cfg.block_scale * side * side
    hidden = torch.zeros(batch, side, side, dtype=torch.bool)
    for b in range(batch):
        for _ in range(cfg.num_blocks):
            aspect = 0.75 + 0.75 * float(torch.rand((), generator=gen))
            h = min(side, max(1, round(math.sqrt(area * aspect))))
            w = min(side, max(1, round(math.sqrt(area / aspect))))
            top, left = (int(torch.randint(side - k + 1, (), generator=gen)) for k in (h, w))
            hidden[b, top : top + h, left : left + w] = True
        if hidden[b].all():
            hidden[b].view(-1)[int(torch.randint(side * side, (), generator=gen))] = False
    return hidden.flatten(1)


def _truncate(chosen: Tensor, gen: torch.Generator) -> Tensor:
    """``chosen`` [B, n] with every row cut to the smallest row's count (random ones dropped); unchanged,
    drawing nothing, when the counts agree already."""
    counts = chosen.sum(1)
    if (counts == counts[0]).all():
        return chosen
    score = torch.rand(chosen.shape, generator=gen).masked_fill(~chosen, 2.0)  # the chosen ones first
    keep = score.argsort(dim=1)[:, : int(counts.min())]
    return torch.zeros_like(chosen).scatter_(1, keep, True)


def context_target(cfg: SynTeacherConfig, batch: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """The context (what the encoder sees) and target (what is predicted) masks ``[B, tubelets·h·w]``, each
    with the same count in every clip, as a batch needs. 'multiblock': V-JEPA's collator cuts every clip's
    lists to the batch's smallest (its ``min_keep``); here whole tubes, at random (V-JEPA's: the last in
    raster order). Every other masking: context = visible, target = hidden (:func:`mask`)."""
    if cfg.masking != "multiblock":
        hidden = mask(cfg, batch, gen)
        return ~hidden, hidden
    hidden = multiblock(cfg, batch, gen)  # [B, h·w]
    repeat = cfg.tokens // cfg.spatial
    return _truncate(~hidden, gen).repeat(1, repeat), _truncate(hidden, gen).repeat(1, repeat)


class Predictor(nn.Module):
    """V-JEPA's predictor (§3.3, "a narrow transformer"): the context tokens, embedded to the predictor's
    width, and one learned mask token per target position, each plus its position's embedding, through
    ``decoder_layers`` pre-norm blocks; the target positions' outputs are projected back to the encoder's
    width. Positions: VideoMAE's 1-D sinusoid over the flattened ``(t, h, w)`` index, as the encoder's
    (V-JEPA: 3-D sin-cos)."""

    def __init__(self, cfg: SynTeacherConfig):
        super().__init__()
        from transformers.models.videomae.modeling_videomae import get_sinusoid_encoding_table

        width = cfg.decoder_hidden_size
        self.embed = nn.Linear(cfg.hidden_size, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.register_buffer("positions", get_sinusoid_encoding_table(cfg.tokens, width), persistent=False)
        block = nn.TransformerEncoderLayer(
            width, cfg.num_heads, 4 * width, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(block, cfg.decoder_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Linear(width, cfg.hidden_size)

    def forward(self, z: Tensor, context: Tensor, target: Tensor) -> Tensor:
        """``z`` [B, Nc, D]: the context tokens (in ``context``'s raster order) → [B, Nt, D] at ``target``."""
        b, width = z.shape[0], self.positions.shape[-1]
        pos = self.positions.expand(b, -1, -1)
        seen = self.embed(z) + pos[context].view(b, -1, width)
        asked = self.mask_token + pos[target].view(b, -1, width)
        out = self.blocks(torch.cat([seen, asked], dim=1))[:, seen.shape[1] :]
        return self.proj(self.norm(out))


class JEPA(nn.Module):
    """V-JEPA (Bardes et al. 2024, §3): the context encoder (the ``VideoMAEModel`` that is saved) sees the
    context tokens only; the target encoder, its EMA (§3.1; no gradient), sees the whole clip; the predictor
    regresses the target encoder's layer-normed tokens at the target positions with an L1 loss (§3.1)."""

    def __init__(self, cfg: SynTeacherConfig):
        super().__init__()
        self.encoder = _hf("VideoMAEModel")(videomae_config(cfg))
        self.target = copy.deepcopy(self.encoder).requires_grad_(False)
        self.predictor = Predictor(cfg)

    def forward(self, x: Tensor, context: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """The loss, and the target encoder's layer-normed tokens ``[B, L, D]`` (for the collapse check)."""
        with torch.no_grad():
            y = self.target(x).last_hidden_state
            y = F.layer_norm(y, y.shape[-1:])  # V-JEPA normalises the targets (no affine)
        z = self.encoder(x, bool_masked_pos=~context).last_hidden_state  # [B, Nc, D]: the context only
        pred = self.predictor(z, context, target)
        return F.l1_loss(pred, y[target].view(pred.shape)), y

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """target ← momentum · target + (1 − momentum) · encoder."""
        for t, p in zip(self.target.parameters(), self.encoder.parameters(), strict=True):
            t.lerp_(p, 1 - momentum)


def feature_std(y: Tensor) -> dict[str, float]:
    """Collapse check on layer-normed tokens ``[B, L, D]``: the std per channel across every token of the
    batch (``"tokens"``) and across the clips' mean tokens (``"clips"``), averaged over channels. About 1 and
    well above 0 for healthy features (each token has unit variance over its channels); 0 when collapsed."""
    return {
        "tokens": round(float(y.flatten(0, 1).std(0).mean()), 4),
        "clips": round(float(y.mean(1).std(0).mean()), 4),
    }


def _momentum(cfg: SynTeacherConfig, step: int) -> float:
    """V-JEPA's EMA schedule: linear from ``ema_start`` to ``ema_end`` over the run."""
    return cfg.ema_start + (cfg.ema_end - cfg.ema_start) * (step + 1) / cfg.steps


def train(cfg: SynTeacherConfig) -> tuple[nn.Module, dict]:
    """Train the teacher: its encoder (the ``VideoMAEModel`` to save: MAE's, or JEPA's context encoder) and
    a report (loss curve, feature std, seconds)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    jepa = cfg.objective == "jepa"
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model = JEPA(cfg) if jepa else _hf("VideoMAEForPreTraining")(videomae_config(cfg))
        model.train()
        gen = torch.Generator().manual_seed(cfg.seed)
        data = SyntheticVideos(
            cfg.num_frames, cfg.image_size, NUM_CLASSES, size=cfg.steps * cfg.batch_size,
            seed=cfg.data_seed, split="in_domain",
        )  # fmt: skip
        params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]  # not the target encoder
        decay = [p for n, p in params if p.ndim >= 2 and "position" not in n]
        rest = [p for n, p in params if not (p.ndim >= 2 and "position" not in n)]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}],
            lr=cfg.lr,
            betas=(0.9, 0.95),
        )
        curve, window, t0, std = [], [], time.perf_counter(), None
        every = max(1, min(50, cfg.steps // 10))
        for step in range(cfg.steps):
            warm = min(1.0, (step + 1) / max(1, cfg.warmup_steps))
            lr = cfg.lr * warm * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
            for g in opt.param_groups:
                g["lr"] = lr
            video, _ = clips(data, range(step * cfg.batch_size, (step + 1) * cfg.batch_size))
            context, target = context_target(cfg, cfg.batch_size, gen)
            if jepa:
                loss, y = model(pixels(video), context, target)
            else:
                loss = model(pixels(video), bool_masked_pos=~context).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            if jepa:
                model.update_target(_momentum(cfg, step))
            window.append(loss.item())
            if (step + 1) % every == 0 or step + 1 == cfg.steps:
                took = time.perf_counter() - t0
                curve.append([step + 1, round(float(np.mean(window)), 5)])
                std = feature_std(y) if jepa else None
                log.info(
                    f"syn teacher: step {step + 1:5d}/{cfg.steps} | loss {curve[-1][1]:.4f} | lr {lr:.2e} | "
                    + (f"target std tokens {std['tokens']:.3f} clips {std['clips']:.3f} | " if jepa else "")
                    + f"{took:.0f}s elapsed, eta {took / (step + 1) * (cfg.steps - step - 1):.0f}s"
                )
                window = []
    finally:
        torch.set_num_threads(threads)
    encoder = model.encoder if jepa else model.videomae
    encoder.eval()
    if cfg.center:
        center_output(encoder, cfg)
    report = {
        "loss_first": curve[0][1],
        "loss_final": curve[-1][1],
        "loss_curve": curve,
        "target_feature_std": std,
        "train_seconds": round(time.perf_counter() - t0, 1),
    }
    return encoder, report


@torch.no_grad()
def center_output(encoder: nn.Module, cfg: SynTeacherConfig) -> Tensor:
    """Fold the mean output token into the final LayerNorm's bias: ``β ← β − E[token]`` over
    ``cfg.center_clips`` clips the training never saw (``data_seed + 1``), so the saved ``VideoMAEModel``
    outputs centred tokens and loads unchanged. Returns the mean that was removed [D]. (``prenorm`` reads
    before the LayerNorm: uncentred.)"""
    if getattr(encoder, "layernorm", None) is None:
        raise ValueError("center_output: the encoder has no final layernorm (use_mean_pooling must be False)")
    data = SyntheticVideos(
        cfg.num_frames, cfg.image_size, NUM_CLASSES, size=cfg.center_clips, seed=cfg.data_seed + 1,
        split="in_domain",
    )  # fmt: skip
    total, count = torch.zeros(cfg.hidden_size, dtype=torch.float64), 0
    for start in range(0, cfg.center_clips, 128):
        video, _ = clips(data, range(start, min(start + 128, cfg.center_clips)))
        tokens = encoder(pixel_values=pixels(video)).last_hidden_state  # [b, L, D]
        total += tokens.double().sum((0, 1))
        count += tokens.shape[0] * tokens.shape[1]
    mean = (total / count).float()
    encoder.layernorm.bias -= mean
    return mean


# ---------------------------------------------------------------------------------------------------- probe


def pooled_features(
    folder: str | Path, video: Tensor, *, grid: tuple[int, int], batch: int = 128
) -> dict[str, Tensor]:
    """The teacher at ``folder`` through ``TeacherConfig(videomae=...)``: ``Teacher.forward`` features
    ``[N, F', h·w, D]`` averaged (``"mean"``) and max-pooled (``"max"``) over tubelets and positions →
    ``[N, D]`` each, and averaged over positions only, the tubelets concatenated (``"tubelets"``,
    ``[N, F'·D]``: what can read where the object goes); ``"std"``: :func:`feature_std` of the tokens,
    layer-normed. The mean dilutes the one object token of 16 per tubelet into the background's."""
    teacher = build_teacher(TeacherConfig(videomae=str(folder)), grid=grid)
    feats = torch.cat([teacher(v) for v in video.split(batch)])  # [N, F', h·w, D]
    return {
        "mean": feats.mean(dim=(1, 2)),
        "max": feats.amax(dim=(1, 2)),
        "tubelets": feats.mean(dim=2).flatten(1),
        "std": feature_std(F.layer_norm(feats, feats.shape[-1:]).flatten(1, 2)),
    }


def linear_probe(
    train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, *, l2: float = 1e-3, iters: int = 200
) -> float:
    """Held-out accuracy of a multinomial logistic regression on standardised features, fitted by full-batch
    L-BFGS from zero (deterministic)."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    a, b = (train_x - mean) / std, (test_x - mean) / std
    classes = int(max(train_y.max(), test_y.max())) + 1
    w = torch.zeros(a.shape[1] + 1, classes, dtype=torch.float64, requires_grad=True)
    a1 = torch.cat([a, torch.ones(len(a), 1)], dim=1).double()
    opt = torch.optim.LBFGS([w], lr=1, max_iter=iters, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(a1 @ w, train_y) + l2 * w[:-1].pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        pred = (torch.cat([b, torch.ones(len(b), 1)], dim=1).double() @ w).argmax(1)
    return float((pred == test_y).float().mean())


def probe_sets(cfg: SynTeacherConfig, clips_per_set: int, seed: int) -> dict[str, tuple]:
    """``{"class": (train video, labels, test video, labels), "motion": (...)}``: class on split ``all``
    (seeds ``seed``, ``seed + 1``); motion fitted on ``in_domain``, scored on ``out_of_domain`` pairings."""
    n = clips_per_set
    args = (cfg.num_frames, cfg.image_size, NUM_CLASSES)

    def one(split: str, s: int) -> tuple[Tensor, Tensor]:
        return clips(SyntheticVideos(*args, size=n, seed=s, split=split), range(n))

    return {
        "class": (*one("all", seed), *one("all", seed + 1)),
        "motion": (*one("in_domain", seed + 2), *one("out_of_domain", seed + 3)),
    }


def probe(folder: str | Path, cfg: SynTeacherConfig, *, clips_per_set: int = 500, seed: int = 5000) -> dict:
    """Linear-probe accuracies ``{"trained": {"class", "motion", "class_max", "motion_max", "class_tubelets",
    "motion_tubelets", "feature_std"}, "random_init": {...}, ...}`` (mean-pooled features; ``_max``:
    max-pooled; ``_tubelets``: pooled over positions only, :func:`pooled_features`; ``feature_std``: of the
    class set's fitting clips) of the teacher at ``folder`` and of the same architecture at random init
    (seeded ``cfg.seed``), both loaded through ``TeacherConfig(videomae=...)`` on the grid of
    ``cfg.image_size / cfg.patch_size``; chance is 0.1."""
    grid = (cfg.image_size // cfg.patch_size,) * 2
    sets = probe_sets(cfg, clips_per_set, seed)
    out = {"clips_per_set": clips_per_set, "seed": seed, "chance": 1 / NUM_CLASSES}
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    with tempfile.TemporaryDirectory() as tmp:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            _hf("VideoMAEModel")(videomae_config(cfg)).save_pretrained(tmp)
        for name, path in (("trained", folder), ("random_init", tmp)):
            out[name] = {}
            for task, (xa, ya, xb, yb) in sets.items():
                fa, fb = pooled_features(path, xa, grid=grid), pooled_features(path, xb, grid=grid)
                out[name][task] = round(linear_probe(fa["mean"], ya, fb["mean"], yb), 4)
                out[name][f"{task}_max"] = round(linear_probe(fa["max"], ya, fb["max"], yb), 4)
                out[name][f"{task}_tubelets"] = round(linear_probe(fa["tubelets"], ya, fb["tubelets"], yb), 4)
                if task == "class":
                    out[name]["feature_std"] = fa["std"]
    torch.set_num_threads(threads)
    return out


# ---------------------------------------------------------------------------------------------------- cache


def read_stamp(folder: str | Path) -> dict | None:
    """The folder's ``minivdit_teacher.json``, or None when there is none (or it is unreadable)."""
    try:
        return json.loads((Path(folder) / STAMP).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def ensure(
    cfg: SynTeacherConfig | None = None,
    out: str | Path | None = None,
    *,
    run_probe: bool = False,
    probe_clips: int = 500,
    command: list[str] | None = None,
) -> Path:
    """The teacher folder of ``cfg`` at ``out`` (default ``default_dir(cfg)``): reused when its stamp holds
    the same settings, else trained (and probed with ``run_probe``) and published atomically. A folder of
    other settings (or without a stamp) at ``out`` is refused, never overwritten."""
    cfg = cfg or SynTeacherConfig()
    out = Path(out) if out is not None else default_dir(cfg)
    settings = {"version": VERSION, **to_dict(cfg)}
    if out.exists():
        stamp = read_stamp(out)
        if stamp is not None and stamp.get("settings") == settings:
            log.info(f"syn teacher: reusing {out} (trained {stamp['steps']} steps, seed {stamp['seed']})")
            return out
        why = "no readable " + STAMP if stamp is None else "another teacher's settings"
        raise ValueError(f"syn teacher: {out} exists with {why}: delete it or choose another folder")
    log.info(f"syn teacher: training a VideoMAE on the synthetic clips for {cfg.steps} steps -> {out}")
    model, report = train(cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp, safe_serialization=True)  # VideoMAEModel: the teacher's class
        stamp = {
            "tool": "minivdit.align.syn_teacher",
            "version": VERSION,
            "command": command if command is not None else sys.argv,
            "seed": cfg.seed,
            "steps": cfg.steps,
            "settings": settings,
            "data": {"dataset": "synthetic", "split": "in_domain", "num_classes": NUM_CLASSES},
            **report,
            "probe": probe(tmp, cfg, clips_per_set=probe_clips) if run_probe else None,
        }
        (tmp / STAMP).write_text(json.dumps(stamp, indent=1) + "\n")
        try:
            publish(tmp, out)
        except OSError:  # another process published the same teacher first: keep theirs
            if read_stamp(out) is None or read_stamp(out).get("settings") != settings:
                raise
            log.info(f"syn teacher: {out} was published by another process meanwhile; using it")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info(f"syn teacher: saved {out} (final loss {report['loss_final']:.4f}, {report['train_seconds']}s)")
    return out


__all__ = [
    "ROOT",
    "STAMP",
    "SynTeacherConfig",
    "cache_key",
    "default_dir",
    "ensure",
    "feature_std",
    "linear_probe",
    "pooled_features",
    "probe",
    "read_stamp",
    "train",
]
