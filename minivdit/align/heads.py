"""The alignment head: projector MLP(s), frame and grid matching, and one of the losses of ``losses.py``.

``train_step`` calls ``AlignHead(hidden, feats) -> loss [B]`` with the DiT tokens of block
``AlignConfig.block_index`` and the frozen teacher's features of the clean video, and adds
``weight · loss`` to the diffusion loss. The head is trained and checkpointed, never EMA'd, and dropped at
inference (REPA, Align4Gen, dREPA all remove the projector after training).

Order inside ``forward``:
1. frames: ``match_frames`` gives each DiT frame the teacher frames it is compared with; the teacher features
   of a group are averaged raw (``Teacher`` returns unnormalised tokens; VideoREPA ``lora_trainer.py``
   averages with ``avg_pool1d`` at l.233 and normalises at l.318-319), DiT frames with an empty group are
   dropped (before the projector, which is per token, so this only saves work);
2. projector: REPA's MLP on every DiT token (``Projector``);
3. grid: ``resample_grid`` bilinearly resamples the projected DiT grid to the teacher's (``"dit_to_teacher"``,
   as the dREPA blog: "the same spatio-temporal resolution" as the VFM) or the raw teacher grid to the DiT's
   (``"teacher_to_dit"``); or ``"learned_conv"`` shrinks the projected DiT grid with a learned
   ``Conv2d(Dt, Dt, kernel=s, stride=s)`` per frame, s = DiT grid / teacher grid per axis (VideoREPA's
   ``downsampler_cogvideo_output``: ``Conv2d(768, 768, 3, stride 3)`` on the projector's output, 30×45 →
   10×15, ``finetune/models/cogvideox_t2v_align/models/cogvideox_align.py`` l.117, applied in
   ``lora_trainer.py`` l.313/334; PyTorch's default init, trained with the projector, ``trainer.py`` l.260);
4. several teachers (``teacher_dims`` with more than one entry, features concatenated along the last axis):
   ``fusion="shared"`` L2-normalises each teacher's part and concatenates them (Align4Gen §3 "Multi-Feature
   Fusion", Appendix B) for one projector; ``"separate"`` has one projector and one loss per teacher and
   averages the losses (REPA's multi-encoder form; Align4Gen Table 5 "2-MLP": 307.63 vs fused 295.63 FVD);
5. the loss, per sample.

Frame matching (``reference/anchors-modules.md`` §4.3; T pixel frames, a causal VAE of temporal stride s
maps T = s·k + 1 frames to k + 1 latents; latent 0 holds pixel frame 0, latent j ≥ 1 pixel frames
s(j−1)+1 … s·j):

    per_frame   teacher frames == DiT frames (a per-frame VAE, Align4Gen): j ↔ [j]
    pick_last   per-pixel-frame teacher: 0 ↔ [0], j ↔ [s·j]           (SimpleTuner/takenoko CREPA)
    group_mean  per-pixel-frame teacher: 0 ↔ [0], j ↔ [s(j−1)+1 … s·j]  (VideoREPA's DINOv2 path)
    tubelet     video teacher, tubelet 2 on pixel frames 1 … T−1 (frame 0 dropped), F' = s·k/2 tubelets:
                0 ↔ [] (dropped, as VideoREPA), j ↔ the s/2 tubelets covering pixel frames s(j−1)+1 … s·j
    tubelet_repeat  video teacher (tubelet 2) with a per-frame VAE or in pixel space (s = 1, F DiT frames):
                F' = F/2 tubelets, j ↔ [j // 2], each tubelet's feature repeated over its two frames
                (Align4Gen Table 4's VideoMAE arm on a 2-D VAE); with pixel frame 0 dropped
                (``drop_first_frame``, F odd): F' = (F − 1)/2, 0 ↔ [], j ↔ [(j − 1) // 2]

Projector init (``AlignConfig.projector_init``): ``"xavier"`` is REPA's ``SiT.initialize_weights``
(``sihyun-yu/REPA`` ``models/sit.py`` l.212-219: ``xavier_uniform_`` weights and zero biases for every
``nn.Linear`` of the model, the projectors built at l.206 included); ``"torch"`` keeps PyTorch's default
``nn.Linear`` init (kaiming-uniform a = √5, uniform bias), as VideoREPA (``build_mlp`` in
``finetune/models/cogvideox_t2v_align/models/cogvideox_align.py`` l.27) and SimpleTuner's CREPA projector do.

Notable deviations from the references:
- ``tubelet`` averages the two tubelets of a latent; VideoREPA instead upsamples the DiT features ×2 in time
  (trilinear, 12 → 24 latent frames) and compares per tubelet;
- ``learned_conv`` is VideoREPA's conv, with one stride per axis (VideoREPA's is square, 3×3); it runs per
  DiT frame on the kept frames, which commutes with VideoREPA's ×2 temporal upsampling before it (both are
  linear and the interpolation weights sum to 1). VideoREPA casts the conv's input to bf16; here it runs in
  the autocast dtype of the run. With several teachers there is one conv per projector (``fusion``);
- SimpleTuner's CREPA projector is LayerNorm + Linear and it resamples flattened tokens in 1-D when a grid
  is not square; here the projector is REPA's MLP for every loss and grids are resampled in 2-D.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from minivdit.align import losses
from minivdit.config import check_types

LossName = Literal["repa", "align4gen", "crepa", "trd", "drepa"]
FrameMatch = Literal["per_frame", "pick_last", "group_mean", "tubelet", "tubelet_repeat"]


@dataclass(frozen=True, kw_only=True)
class AlignConfig:
    """Representation alignment: which loss, where in the DiT, how features are matched. Defaults where the
    papers are silent are REPA's (``sihyun-yu/REPA``: λ 0.5, block 8, projector width 2048)."""

    loss: LossName = "repa"
    """``repa`` (−cos per token), ``align4gen`` (the same cosine, on fused multi-encoder features), ``crepa``
    (cross-frame REPA), ``trd`` (VideoREPA token relations), ``drepa`` (Gram distance); see ``losses.py``."""
    weight: float = 0.5
    """λ of ``loss = diffusion + λ·align`` (REPA/VideoREPA ``proj_coeff`` 0.5, Align4Gen T2V γ 0.5)."""
    block_index: int = 8
    """Align the output of block k, 1-indexed (REPA ``encoder_depth``, VideoREPA ``align_layer``): k = 8 taps
    ``blocks[7]``. REPA uses 8 for SiT-L/XL, Align4Gen 8 (V-DiT-L) or 12 (XL), VideoREPA 18 (CogVideoX)."""
    projector_dim: int = 2048
    """Hidden width of the projector MLP (REPA / VideoREPA ``projector_dim``)."""
    projector_init: Literal["xavier", "torch"] = "xavier"
    """Projector Linear init: ``xavier`` (REPA's ``initialize_weights``: xavier-uniform weights, zero biases)
    or ``torch`` (PyTorch's default, kept by VideoREPA and SimpleTuner); module docstring of ``heads.py``."""
    frame_match: FrameMatch = "per_frame"
    """How teacher frames map to DiT frames (module docstring of ``heads.py``; VideoREPA's DINOv2 path uses
    ``group_mean``, CREPA ports ``pick_last``, video teachers ``tubelet`` with a causal VAE and
    ``tubelet_repeat`` with a per-frame VAE)."""
    grid_match: Literal["dit_to_teacher", "teacher_to_dit", "learned_conv"] = "dit_to_teacher"
    """How the DiT and teacher token grids are matched when they differ (``TeacherConfig.token_grid``): one is
    bilinearly resampled to the other's, or ``learned_conv`` shrinks the projected DiT grid with a learned
    stride-s conv (VideoREPA; the teacher grid must divide the DiT grid, s = their ratio per axis)."""
    fusion: Literal["shared", "separate"] = "shared"
    """Several teachers: per-teacher L2-normalised features concatenated for one projector (Align4Gen), or
    one projector and one loss per teacher, averaged (REPA's multi-encoder form, Align4Gen Table 5)."""
    crepa_d: int = 1
    """CREPA neighbour distance d (SimpleTuner ``crepa_adjacent_distance``; the paper's K is unreleased).
    A d of F or more is clamped to F − 1 for a clip of F DiT frames (logged once), as SimpleTuner does."""
    crepa_tau: float = 1.0
    """CREPA temperature τ of the weights e^{−|k−f|/τ} (SimpleTuner ``crepa_adjacent_tau``)."""
    crepa_mode: Literal["exact", "cumulative"] = "exact"
    """CREPA K(f): {f ± d} (``exact``, SimpleTuner's default) or {f ± 1, …, f ± d} (``cumulative``)."""
    trd_margin: float = 0.1
    """TRD hinge margin on |S_h − S_y| (VideoREPA ``--margin`` 0.1)."""
    trd_variant: Literal["full", "spatial", "temporal"] = "full"
    """TRD Gram blocks: all, same-frame only, or cross-frame only (VideoREPA's ``_only_*`` losses)."""
    drepa_variant: Literal["appendix", "blog"] = "appendix"
    """dREPA normalisation: the blog appendix's reference code, or the formula in its text (``losses.py``)."""
    drepa_distance: Literal["l2", "l1"] = "l2"
    """dREPA distance between Grams; the blog found L2 better; L1 costs O((F·N)²·D) (chunked Grams)."""

    def __post_init__(self) -> None:
        check_types(self)
        if self.weight < 0:
            raise ValueError(f"align weight must be >= 0, got {self.weight}")
        if self.block_index < 1:
            raise ValueError(f"block_index is 1-indexed (the output of block k), got {self.block_index}")
        if self.projector_dim < 1:
            raise ValueError(f"projector_dim must be >= 1, got {self.projector_dim}")
        if self.crepa_d < 1:
            raise ValueError(f"crepa_d must be >= 1, got {self.crepa_d}")
        if self.crepa_tau <= 0:
            raise ValueError(f"crepa_tau must be > 0, got {self.crepa_tau}")
        if self.trd_margin < 0:
            raise ValueError(f"trd_margin must be >= 0, got {self.trd_margin}")


def check_block_index(cfg: AlignConfig, depth: int) -> None:
    """Raise ``ValueError`` unless ``cfg.block_index`` names a block of a ``depth``-block DiT (1 … depth)."""
    if not 1 <= cfg.block_index <= depth:
        raise ValueError(
            f"align block_index={cfg.block_index} out of range: blocks are 1-indexed, 1..{depth} for this DiT"
        )


#################################################################################
#                          Frame and grid matching                              #
#################################################################################


def match_frames(
    mode: FrameMatch, num_teacher_frames: int, num_dit_frames: int, *, stride: int = 4
) -> list[list[int]]:
    """For each DiT frame, the teacher-frame indices it is compared with (their features are averaged; an
    empty list drops the DiT frame from the loss). See the module docstring for the rules.

    >>> match_frames("pick_last", 9, 3)
    [[0], [4], [8]]
    >>> match_frames("tubelet", 4, 3)
    [[], [0, 1], [2, 3]]
    >>> match_frames("tubelet_repeat", 2, 4, stride=1)
    [[0], [0], [1], [1]]
    """
    T, Fd = num_teacher_frames, num_dit_frames
    if stride < 1:
        raise ValueError(f"temporal stride must be >= 1, got {stride}")
    if T < 1 or Fd < 1:
        raise ValueError(f"frame counts must be >= 1, got {T} teacher and {Fd} DiT frames")
    k = Fd - 1
    if mode == "per_frame":
        expected = Fd
    elif mode in ("pick_last", "group_mean"):
        expected = stride * k + 1
    elif mode == "tubelet":
        if stride % 2:
            raise ValueError(f"frame_match='tubelet' needs an even temporal stride, got {stride}")
        expected = stride * k // 2
    elif mode == "tubelet_repeat":
        if stride != 1:
            raise ValueError(
                f"frame_match='tubelet_repeat' is for a per-frame VAE or pixel space (temporal stride 1), "
                f"got stride {stride}; a causal VAE of even stride takes frame_match='tubelet'"
            )
        expected = Fd // 2  # F even: all frames in tubelets; F odd: frame 0 dropped, (F − 1)/2 tubelets
    else:
        raise ValueError(f"unknown frame_match {mode!r}")
    if expected != T:
        rule = {
            "per_frame": "as many teacher frames as DiT frames",
            "pick_last": f"T = {stride}·k + 1 teacher frames for k + 1 DiT frames",
            "group_mean": f"T = {stride}·k + 1 teacher frames for k + 1 DiT frames",
            "tubelet": f"{stride}·k/2 teacher tubelets (pixel frames 1..T−1, tubelet 2) for k + 1 DiT frames",
            "tubelet_repeat": "F/2 teacher tubelets (tubelet 2) for F DiT frames, (F − 1)/2 when frame 0 is "
            "dropped (F odd)",
        }[mode]
        raise ValueError(
            f"frame_match={mode!r} needs {rule}: {expected} for {Fd} DiT frames, "
            f"got {T} teacher frames and {Fd} DiT frames"
        )
    if mode == "per_frame":
        return [[j] for j in range(Fd)]
    if mode == "pick_last":
        return [[stride * j] for j in range(Fd)]
    if mode == "group_mean":
        return [[0]] + [list(range(stride * (j - 1) + 1, stride * j + 1)) for j in range(1, Fd)]
    if mode == "tubelet_repeat":
        if Fd % 2:  # pixel frame 0 was dropped before the tubelets: DiT frame 0 has no teacher frame
            return [[]] + [[(j - 1) // 2] for j in range(1, Fd)]
        return [[j // 2] for j in range(Fd)]
    half = stride // 2  # tubelets per latent frame
    return [[]] + [list(range(half * (j - 1), half * j)) for j in range(1, Fd)]


def gather_frames(feats: Tensor, groups: Sequence[Sequence[int]]) -> Tensor:
    """feats [B, F', N, D] -> [B, G, N, D]: the mean of each non-empty group's frames, in group order."""
    groups = [g for g in groups if g]
    if all(len(g) == 1 for g in groups):
        idx = torch.tensor([g[0] for g in groups], device=feats.device)
        return feats.index_select(1, idx)  # [B, G, N, D]
    return torch.stack([feats[:, list(g)].mean(1) for g in groups], dim=1)  # [B, G, N, D]


def conv_stride(dit_grid: Sequence[int], teacher_grid: Sequence[int]) -> tuple[int, int]:
    """Kernel and stride (sh, sw) of the ``learned_conv`` that maps the DiT grid onto the teacher grid: their
    ratio per axis. ``ValueError`` naming both grids unless the teacher grid divides the DiT grid.

    >>> conv_stride((30, 45), (10, 15))
    (3, 3)
    """
    (h, w), (th, tw) = dit_grid, teacher_grid
    if h % th or w % tw:
        raise ValueError(
            f"grid_match='learned_conv' needs a teacher grid that divides the DiT grid (a stride-s conv maps "
            f"h×w to h/s × w/s), got DiT grid {h}×{w} and teacher grid {th}×{tw}: set --teacher.token-grid "
            f"to the DiT grid divided by an integer per axis, or use --align.grid-match dit_to_teacher"
        )
    return h // th, w // tw


def resample_grid(tokens: Tensor, src: tuple[int, int], dst: tuple[int, int]) -> Tensor:
    """Bilinearly resample a token grid [B, F, h·w, D] (row-major (h, w) token order) from ``src`` = (h, w)
    to ``dst`` = (h2, w2) → [B, F, h2·w2, D]; identity when equal.

    ``F.interpolate(mode="bilinear", align_corners=False)`` on the 2-D grid (pixel-centre aligned, as
    torchvision's resize), antialiased when either side shrinks so that downsampling averages instead of
    aliasing; computed in at least fp32 (CPU bilinear antialias has no bf16 kernel), returned in the input
    dtype.
    """
    if tokens.ndim != 4:
        raise ValueError(f"tokens must be [B, F, h·w, D], got shape {tuple(tokens.shape)}")
    (h, w), (h2, w2) = src, dst
    if tokens.shape[2] != h * w:
        raise ValueError(
            f"tokens {tuple(tokens.shape)} do not hold a {h}×{w} grid ({h * w} tokens per frame)"
        )
    if (h, w) == (h2, w2):
        return tokens
    B = tokens.shape[0]
    dtype = torch.promote_types(tokens.dtype, torch.float32)
    grid = rearrange(tokens.to(dtype), "b f (h w) d -> (b f) d h w", h=h, w=w)
    out = F.interpolate(grid, size=(h2, w2), mode="bilinear", align_corners=False, antialias=h2 < h or w2 < w)
    return rearrange(out, "(b f) d h w -> b f (h w) d", b=B).to(tokens.dtype)  # [B, F, h2·w2, D]


#################################################################################
#                                    Head                                       #
#################################################################################


class Projector(nn.Sequential):
    """REPA's projector ``build_mlp``: Linear(D, hid) → SiLU → Linear(hid, hid) → SiLU → Linear(hid, Dt),
    applied to every token. An ``nn.Sequential``, so parameter names (``0.weight``, ``2.weight``,
    ``4.weight``) match REPA's ``projectors.<i>.*`` checkpoint keys."""

    def __init__(self, dim: int, hidden: int, out_dim: int):
        super().__init__(
            nn.Linear(dim, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, out_dim),
        )


class AlignHead(nn.Module):
    """Projector(s) + frame/grid matching + loss. ``forward(hidden [B, F, N, D], feats [B, F', N', ΣDt]) ->
    loss [B]`` with N = h·w of ``dit_grid``, N' = h'·w' of ``teacher_grid`` and the teachers' features
    concatenated along the last axis in ``teacher_dims`` order. ``stride`` is the VAE's temporal compression
    (for ``frame_match`` other than ``per_frame``). With ``grid_match="learned_conv"``, ``downsamplers`` holds
    one ``Conv2d`` per projector (empty otherwise, so other heads keep their state-dict keys)."""

    def __init__(
        self,
        cfg: AlignConfig,
        *,
        hidden_dim: int,
        teacher_dims: Sequence[int],
        dit_grid: tuple[int, int],
        teacher_grid: tuple[int, int],
        stride: int = 4,
    ):
        super().__init__()
        teacher_dims = tuple(int(d) for d in teacher_dims)
        if not teacher_dims or min(teacher_dims) < 1:
            raise ValueError(f"teacher_dims must be a non-empty list of positive widths, got {teacher_dims}")
        if hidden_dim < 1 or min(*dit_grid, *teacher_grid) < 1:
            raise ValueError(f"bad head sizes: hidden_dim={hidden_dim}, grids {dit_grid} / {teacher_grid}")
        self.cfg, self.hidden_dim, self.teacher_dims = cfg, hidden_dim, teacher_dims
        self.dit_grid, self.teacher_grid, self.stride = tuple(dit_grid), tuple(teacher_grid), stride
        separate = cfg.fusion == "separate" and len(teacher_dims) > 1
        out_dims = teacher_dims if separate else (sum(teacher_dims),)
        self.projectors = nn.ModuleList(Projector(hidden_dim, cfg.projector_dim, d) for d in out_dims)
        self.downsamplers = nn.ModuleList()
        if cfg.grid_match == "learned_conv":
            s = conv_stride(self.dit_grid, self.teacher_grid)
            self.downsamplers.extend(nn.Conv2d(d, d, kernel_size=s, stride=s) for d in out_dims)

    @torch.no_grad()
    def init_weights(self) -> None:
        """Every Linear by ``cfg.projector_init`` (module docstring): REPA's xavier-uniform weights and zero
        biases, or PyTorch's default; works after ``to_empty()`` on a meta-built head. The Linears are drawn
        in module order (REPA's ``self.apply`` visits them in the same order), the learned convs after them
        with PyTorch's default (VideoREPA does not re-initialise its ``downsampler_cogvideo_output``)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                m.reset_parameters()
            if not isinstance(m, nn.Linear):
                continue
            if self.cfg.projector_init == "xavier":
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            else:
                m.reset_parameters()

    def _check(self, hidden: Tensor, feats: Tensor) -> None:
        (h, w), (th, tw) = self.dit_grid, self.teacher_grid
        if hidden.ndim != 4 or hidden.shape[2] != h * w or hidden.shape[3] != self.hidden_dim:
            raise ValueError(
                f"hidden must be [B, F, {h * w}, {self.hidden_dim}] (a {h}×{w} DiT grid), "
                f"got shape {tuple(hidden.shape)}"
            )
        dt = sum(self.teacher_dims)
        if feats.ndim != 4 or feats.shape[2] != th * tw or feats.shape[3] != dt:
            raise ValueError(
                f"feats must be [B, F', {th * tw}, {dt}] (a {th}×{tw} teacher grid, teacher widths "
                f"{self.teacher_dims}), got shape {tuple(feats.shape)}"
            )
        if hidden.shape[0] != feats.shape[0]:
            raise ValueError(f"batch sizes differ: hidden {tuple(hidden.shape)}, feats {tuple(feats.shape)}")

    def _loss(self, h: Tensor, y: Tensor) -> Tensor:
        cfg = self.cfg
        if cfg.loss in ("repa", "align4gen"):
            return losses.repa(h, y)
        if cfg.loss == "crepa":
            return losses.crepa(h, y, d=cfg.crepa_d, tau=cfg.crepa_tau, mode=cfg.crepa_mode)
        if cfg.loss == "trd":
            return losses.trd(h, y, margin=cfg.trd_margin, variant=cfg.trd_variant)
        return losses.drepa(h, y, variant=cfg.drepa_variant, distance=cfg.drepa_distance)

    def _downsample(self, conv: nn.Conv2d, z: Tensor) -> Tensor:
        """Projected DiT tokens [B, F, h·w, Dt] → [B, F, h'·w', Dt] on the teacher grid, per frame."""
        h, w = self.dit_grid
        x = rearrange(z, "b f (h w) d -> (b f) d h w", h=h, w=w)
        x = conv(x)  # [(B F), Dt, h/sh, w/sw]
        return rearrange(x, "(b f) d h w -> b f (h w) d", b=z.shape[0])

    def forward(self, hidden: Tensor, feats: Tensor) -> Tensor:
        self._check(hidden, feats)
        groups = match_frames(self.cfg.frame_match, feats.shape[1], hidden.shape[1], stride=self.stride)
        keep = [j for j, g in enumerate(groups) if g]
        if len(keep) < hidden.shape[1]:
            hidden = hidden[:, keep]  # [B, F_kept, N, D]
        feats = gather_frames(feats, groups)  # [B, F_kept, N', ΣDt]
        if self.cfg.grid_match == "teacher_to_dit":
            feats = resample_grid(feats, self.teacher_grid, self.dit_grid)  # [B, F_kept, N, ΣDt]
        parts = feats.split(self.teacher_dims, dim=-1)  # per teacher [B, F_kept, N*, Dt_i]
        if len(self.projectors) == 1:
            if len(parts) > 1:  # Align4Gen fusion: each teacher normalised, then concatenated
                parts = (torch.cat([F.normalize(p.float(), dim=-1) for p in parts], dim=-1),)
            pairs = [(self.projectors[0], parts[0])]
        else:
            pairs = list(zip(self.projectors, parts))
        out = []
        for i, (proj, target) in enumerate(pairs):
            z = proj(hidden)  # [B, F_kept, N, Dt]
            if self.cfg.grid_match == "dit_to_teacher":
                z = resample_grid(z, self.dit_grid, self.teacher_grid)  # [B, F_kept, N', Dt]
            elif self.cfg.grid_match == "learned_conv":
                z = self._downsample(self.downsamplers[i], z)  # [B, F_kept, N', Dt]
            out.append(self._loss(z, target))  # [B]
        return out[0] if len(out) == 1 else torch.stack(out).mean(0)


__all__ = [
    "AlignConfig",
    "AlignHead",
    "Projector",
    "check_block_index",
    "conv_stride",
    "gather_frames",
    "match_frames",
    "resample_grid",
]
