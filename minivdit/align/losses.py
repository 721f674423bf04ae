"""Representation-alignment losses on token tensors: REPA, CREPA, VideoREPA's TRD and dREPA.

Every loss takes the projected DiT tokens ``h [B, F, N, D]`` and the teacher tokens ``y [B, F, N, Dt]`` (same
B, F, N: frame and grid matching happen before, in ``heads.py``), L2-normalises each token inside, and
returns one value per sample, ``Tensor[B]`` in fp32 (fp64 for fp64 inputs). Autocast is disabled inside: the
products run in fp32 whatever the caller's autocast context (DESIGN.md §2, "local fp32 upcasts").
Below ĥ, ŷ are the normalised tokens and cos(a, b) = ⟨â, b̂⟩.

``repa`` (REPA, Yu et al. 2024; ``sihyun-yu/REPA loss.py::SILoss``; Align4Gen Eq. 13 / Alg. 1):

    L = −(1 / F·N) Σ_{f,n} cos(h_{f,n}, y_{f,n})

  Align4Gen writes 1 − cos: the same gradient, a value shifted by the constant 1.

``crepa`` (CREPA, Hwang et al. 2025, arXiv 2506.09229, project page formula; ``seeds/001``):

    L = −(1/F) Σ_f [ sim(y^f, h^f) + Σ_{k ∈ K(f)} e^{−|k−f|/τ} · sim(y^k, h^f) ],
    sim(y^k, h^f) = (1/N) Σ_n cos(h_{f,n}, y_{k,n})              (per-patch cosine, averaged over patches)

  K(f) = {f − d, f + d} (``mode="exact"``, SimpleTuner's corrected reading, its issue #2123) or
  {f ± 1, …, f ± d} (``"cumulative"``); neighbours outside [0, F) contribute nothing, and the sum over f is
  divided by F (SimpleTuner's ``per_video_sum / num_frames``). A d ≥ F is clamped to F − 1 (logged once per
  (d, F)), as SimpleTuner's ``d = min(self.distance, num_frames - 1)`` (``bghira/SimpleTuner``
  ``simpletuner/helpers/training/crepa.py`` l.504 at bc8e6ab): in ``exact`` mode the first and last frames
  are then each other's neighbours, where an unclamped d would leave no neighbour at all (CREPA = REPA);
  ``cumulative`` is unchanged by the clamp. With F = 1 only the frame's own term remains. The paper's code
  is unreleased, so d, τ and the frame normalisation follow SimpleTuner's ``CrepaRegularizer`` (d = 1,
  τ = 1). Patch tokens only: SimpleTuner feeds a torch.hub DINOv2's ``forward()`` output, which is the CLS
  vector, and then interpolates the DiT tokens down to that single token, so its "patch-level" loss silently
  becomes middle-token-vs-CLS (``reference/anchors-modules.md`` §4.1). Here both inputs must be [B, F, N, D]
  with the same N.

``trd`` (VideoREPA token-relation distillation, Zhang et al. 2025; ``aHapBean/VideoREPA``
``finetune/models/cogvideox_t2v_align/lora_trainer.py::compute_loss``):

    S_h = Ĥ_f Ĥᵀ, S_y = Ŷ_f Ŷᵀ  ([B·F, N, F·N]: each frame's tokens against all tokens of the clip)
    L = mean( relu(|S_h − S_y| − margin) )

  ``"full"``: mean over all F·N × F·N pairs; ``"spatial"``: same-frame blocks only (mean over F·N·N);
  ``"temporal"``: cross-frame blocks only (mean over F(F−1)·N², VideoREPA zeroes the diagonal blocks and
  rescales by the same count). The Grams are never built whole: rows are processed one frame at a time
  against the frames at or after it (the Gram is symmetric, so each off-diagonal block is counted twice),
  each chunk under activation checkpointing, so forward and backward hold one [B, N, F·N] chunk at a time
  and do about half VideoREPA's matmul work. The hinge has no low-rank form, so the cost is O((F·N)²·D).

``drepa`` (dREPA, Han, Mendieta, Falahatgar 2025, "From Anyframe to Timelapse", ``seeds/000``): squared
differences of token Grams. With S_f the sum over the same-frame pairs of frame f and T the sum over all
cross-frame pairs of (⟨ĥ_i, ĥ_j⟩ − ⟨ŷ_i, ŷ_j⟩)², and n tokens per frame, N = F·n:

    "appendix" (default; the blog's PyTorch reference ``dREPA_loss``):  Σ_f S_f / (F·n²) + T / (F(F−1)·n²)
    "blog" (the formula in the text):                                  (Σ_f S_f + T) / (N(N − 1))

  The two differ (``reference/anchors-modules.md`` §5.2): the appendix averages the spatial term over
  [F, n, n] *including* the i = j diagonal (whose terms are 0), and adds two equally weighted means, so a
  same-frame pair weighs (F − 1)× a cross-frame pair; the blog weights every pair i ≠ j equally. The appendix
  value is ≈ F× (same-frame) and ≈ F/(F−1)× (cross-frame) the blog's, so a λ tuned for one does not transfer.
  For F = 1 the appendix's temporal mean is over nothing (the reference returns nan); here it is 0.

  Exact evaluation in O(N·d²) time and O(d²) extra memory, never an N×N Gram: for unit rows H, Y,

    Σ_{i,j} (⟨h_i,h_j⟩ − ⟨y_i,y_j⟩)² = ‖HᵀH‖²_F + ‖YᵀY‖²_F − 2‖HᵀY‖²_F,

  per frame (S_f, or the direct n×n Grams when n·(d_h + d_y) < d_h² + d_y² + d_h·d_y makes them cheaper)
  and for the whole clip (T = whole − Σ_f S_f). Products are fp32, the squared norms are reduced in fp64
  because T is a difference of large sums. A custom autograd function gives the analytic gradient
  ∂/∂H = 4(H·HᵀH − Y·YᵀH) (direct path: 4(Gh − Gy)H), recomputing the per-frame products in backward (no
  double backward). Precision: the identity is a small difference of large sums, so the fp32 relative error
  grows like 1e-7 · ‖HHᵀ‖²_F / Σ(Gh − Gy)²: ~2e-8 on random features (``tools/bench.py align``), ~3e-4 when
  the two Grams agree to ~1e-3 RMS (a nearly converged alignment); fine for a regulariser. The products
  should be IEEE fp32: with TF32 matmuls enabled, the inputs are rounded to 10 mantissa bits first.

  ``distance="l1"`` (the blog's ablation, where L2 won): |·| has no low-rank identity, so it runs on the
  chunked Grams of ``trd`` (O((F·N)²·D)); same two normalisations.

Notable deviations from the references:
- per-sample values (the references reduce over the batch; their value is the mean of ours, as every sample
  has the same token count);
- dREPA with F = 1 gives temporal = 0 instead of nan; TRD "temporal" with F = 1 raises;
- CREPA's frame matching (SimpleTuner picks one pixel frame per latent) lives in ``heads.match_frames``;
- CREPA's d ≥ F clamp is logged (SimpleTuner clamps silently).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor
from torch.utils.checkpoint import checkpoint

log = logging.getLogger("minivdit")


def _check(h: Tensor, y: Tensor, *, same_dim: bool) -> None:
    if h.ndim != 4 or y.ndim != 4:
        raise ValueError(
            f"h and y must be token tensors [B, F, N, D], got shapes {tuple(h.shape)} and {tuple(y.shape)}"
        )
    if h.shape[:3] != y.shape[:3]:
        raise ValueError(f"h and y must share [B, F, N], got shapes {tuple(h.shape)} and {tuple(y.shape)}")
    if same_dim and h.shape[-1] != y.shape[-1]:
        raise ValueError(
            f"a cosine needs the same width on both sides, got shapes {tuple(h.shape)} and {tuple(y.shape)}"
        )


def _no_autocast(x: Tensor) -> AbstractContextManager:
    return torch.autocast(device_type=x.device.type, enabled=False)


def _normalize(h: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Both inputs with unit L2 norm along the last axis, in one dtype of at least fp32."""
    dtype = torch.promote_types(torch.promote_types(h.dtype, y.dtype), torch.float32)
    return F.normalize(h.to(dtype), dim=-1), F.normalize(y.to(dtype), dim=-1)


def _out(x: Tensor, like: Tensor) -> Tensor:
    """A per-sample result reduced in fp64, returned in ``like``'s dtype (fp32, or fp64 for fp64 inputs)."""
    return x.to(like.dtype)


#################################################################################
#                             REPA and CREPA                                    #
#################################################################################


def repa(h: Tensor, y: Tensor) -> Tensor:
    """REPA: negative cosine per token, averaged over frames and tokens. h, y [B, F, N, D] -> [B]."""
    _check(h, y, same_dim=True)
    with _no_autocast(h):
        hn, yn = _normalize(h, y)
        cos = (hn * yn).sum(-1)  # [B, F, N]
        return -cos.mean(dim=(1, 2))


@functools.cache
def _log_clamped_d(d: int, num_frames: int) -> None:
    """Once per (d, F): the clamp of ``crepa_weights`` changes what the user asked for."""
    log.warning(
        f"crepa: d={d} >= the clip's {num_frames} DiT frames, clamped to d={max(num_frames - 1, 0)} as "
        f"SimpleTuner does (crepa.py: d = min(distance, num_frames - 1))"
    )


def crepa_weights(
    num_frames: int, *, d: int = 1, tau: float = 1.0, mode: Literal["exact", "cumulative"] = "exact"
) -> Tensor:
    """[F, F] (fp64) weights W[f, k] of sim(y^k, h^f) in CREPA: 1 on the diagonal, e^{−|k−f|/τ} for k ∈ K(f)
    inside the clip, 0 elsewhere. d ≥ F is clamped to F − 1 (module docstring)."""
    if d < 1:
        raise ValueError(f"crepa distance d must be >= 1, got {d}")
    if tau <= 0:
        raise ValueError(f"crepa tau must be > 0, got {tau}")
    if mode not in ("exact", "cumulative"):
        raise ValueError(f"crepa mode must be 'exact' or 'cumulative', got {mode!r}")
    eye = torch.eye(num_frames, dtype=torch.float64)
    if d >= num_frames:
        _log_clamped_d(d, num_frames)
        d = num_frames - 1
        if d < 1:  # a single frame: its own term only (SimpleTuner's ``if d > 0`` skips the neighbours)
            return eye
    idx = torch.arange(num_frames, dtype=torch.float64)
    dist = (idx[:, None] - idx[None, :]).abs()  # [F, F]
    near = (dist == d) if mode == "exact" else (dist >= 1) & (dist <= d)
    return torch.where(near, torch.exp(-dist / tau), 0.0) + eye


def crepa(
    h: Tensor, y: Tensor, *, d: int = 1, tau: float = 1.0, mode: Literal["exact", "cumulative"] = "exact"
) -> Tensor:
    """CREPA: each frame's DiT tokens aligned with its own teacher frame and, weighted by e^{−|k−f|/τ}, with
    the teacher frames k ∈ K(f) (see the module docstring). h, y [B, F, N, D] -> [B]."""
    _check(h, y, same_dim=True)
    B, Fr, N, _ = h.shape
    weights = crepa_weights(Fr, d=d, tau=tau, mode=mode)  # [F, F]
    with _no_autocast(h):
        hn, yn = _normalize(h, y)
        # sim[b, f, k] = (1/N) Σ_n ⟨ĥ_{f,n}, ŷ_{k,n}⟩: one bmm contracting over (n, d)
        sim = torch.einsum("bfnd,bknd->bfk", hn, yn) / N  # [B, F, F]
        total = (sim * weights.to(sim)).sum(-1)  # [B, F]
        return -total.mean(-1)


#################################################################################
#                   Chunked Gram blocks (TRD, dREPA with L1)                    #
#################################################################################


def _row_block(h_rows: Tensor, y_rows: Tensor, h_cols: Tensor, y_cols: Tensor, fn, n: int):
    """Rows of one frame against the columns of that frame and the later ones: (Σ same-frame block,
    2 · Σ later-frame blocks) of fn(S_h − S_y), per sample, in fp64."""
    e = fn(h_rows @ h_cols.mT - y_rows @ y_cols.mT)  # [B, n, C]
    same = e[..., :n].sum(dim=(1, 2), dtype=torch.float64)  # [B]
    later = 2 * e[..., n:].sum(dim=(1, 2), dtype=torch.float64)  # [B]
    return same, later


def _gram_block_sums(
    hn: Tensor, yn: Tensor, fn: Callable[[Tensor], Tensor], *, cross: bool
) -> tuple[Tensor, Tensor]:
    """(same-frame sum [B], cross-frame sum [B]) of fn(⟨ĥ_i,ĥ_j⟩ − ⟨ŷ_i,ŷ_j⟩) over ordered token pairs, in
    fp64, one frame's rows at a time (checkpointed when a graph is recorded); ``cross=False`` skips the
    cross-frame blocks (the second sum is then 0)."""
    B, Fr, n, _ = hn.shape
    h_all, y_all = rearrange(hn, "b f n d -> b (f n) d"), rearrange(yn, "b f n d -> b (f n) d")
    grad = torch.is_grad_enabled() and (hn.requires_grad or yn.requires_grad)
    same = cross_sum = hn.new_zeros(B, dtype=torch.float64)
    for f in range(Fr):
        cols = slice(f * n, Fr * n if cross else (f + 1) * n)
        args = (hn[:, f], yn[:, f], h_all[:, cols], y_all[:, cols], fn, n)
        s, c = checkpoint(_row_block, *args, use_reentrant=False) if grad else _row_block(*args)
        same, cross_sum = same + s, cross_sum + c
    return same, cross_sum


def trd(
    h: Tensor,
    y: Tensor,
    *,
    margin: float = 0.1,
    variant: Literal["full", "spatial", "temporal"] = "full",
) -> Tensor:
    """VideoREPA token-relation distillation: mean(relu(|S_h − S_y| − margin)) over the chosen Gram blocks.
    h [B, F, N, D], y [B, F, N, Dt] -> [B]."""
    _check(h, y, same_dim=False)
    if margin < 0:
        raise ValueError(f"trd margin must be >= 0, got {margin}")
    if variant not in ("full", "spatial", "temporal"):
        raise ValueError(f"trd variant must be 'full', 'spatial' or 'temporal', got {variant!r}")
    B, Fr, n, _ = h.shape
    if variant == "temporal" and Fr < 2:
        raise ValueError(f"trd variant 'temporal' needs >= 2 frames, got shape {tuple(h.shape)}")
    with _no_autocast(h):
        hinge = lambda s: torch.relu(s.abs() - margin)
        hn, yn = _normalize(h, y)
        same, cross = _gram_block_sums(hn, yn, hinge, cross=variant != "spatial")
        if variant == "full":
            loss = (same + cross) / (Fr * n) ** 2
        elif variant == "spatial":
            loss = same / (Fr * n * n)
        else:
            loss = cross / (Fr * (Fr - 1) * n * n)
        return _out(loss, hn)


#################################################################################
#                    dREPA: exact O(N·d²) Gram distance                         #
#################################################################################


def _sq(x: Tensor) -> Tensor:
    """Squared Frobenius norm over the last two axes, reduced in fp64."""
    return x.double().square().sum(dim=(-2, -1))


def _use_direct(n: int, dh: int, dy: int) -> bool:
    """Per-frame Grams (n²·(dh + dy)) are cheaper than the three d×d products (n·(dh² + dy² + dh·dy))."""
    return n * (dh + dy) < dh * dh + dy * dy + dh * dy


class _GramSqDiff(torch.autograd.Function):
    """(per-frame sums S [B, F], whole-clip sum W [B]) of (⟨h_i,h_j⟩ − ⟨y_i,y_j⟩)² over ordered token pairs,
    both in fp64, from unit tokens H [B, F, n, dh], Y [B, F, n, dy] (at least fp32) by the Gram identity;
    ``frames=False`` skips S (returned as zeros). Backward recomputes the per-frame products."""

    @staticmethod
    def forward(ctx, H: Tensor, Y: Tensor, frames: bool) -> tuple[Tensor, Tensor]:
        B, Fr, n, _ = H.shape
        Hw, Yw = rearrange(H, "b f n d -> b (f n) d"), rearrange(Y, "b f n d -> b (f n) d")
        A, Cm = Hw.mT @ Hw, Hw.mT @ Yw  # [B, dh, dh], [B, dh, dy]
        whole = _sq(A) + _sq(Yw.mT @ Yw) - 2 * _sq(Cm)  # [B]
        per_frame = H.new_zeros(B, Fr, dtype=torch.float64)
        if frames:
            for f in range(Fr):
                per_frame[:, f] = _frame_sq_diff(H[:, f], Y[:, f])
        ctx.save_for_backward(H, Y, A, Cm)
        ctx.frames = frames
        return per_frame, whole

    @staticmethod
    def backward(ctx, g_frames: Tensor, g_whole: Tensor):
        H, Y, A, Cm = ctx.saved_tensors
        need_h, need_y = ctx.needs_input_grad[:2]
        Hw, Yw = rearrange(H, "b f n d -> b (f n) d"), rearrange(Y, "b f n d -> b (f n) d")
        gw = 4 * g_whole.to(H.dtype)[:, None, None]  # [B, 1, 1]
        dH = gw * (Hw @ A - Yw @ Cm.mT) if need_h else None  # [B, N, dh]
        dY = gw * (Yw @ (Yw.mT @ Yw) - Hw @ Cm) if need_y else None  # [B, N, dy]
        if ctx.frames:
            n = H.shape[2]
            for f in range(H.shape[1]):
                gf = 4 * g_frames[:, f].to(H.dtype)[:, None, None]
                dh_f, dy_f = _frame_sq_diff_grad(H[:, f], Y[:, f], need_h, need_y)
                rows = slice(f * n, (f + 1) * n)
                if need_h:
                    dH[:, rows] += gf * dh_f
                if need_y:
                    dY[:, rows] += gf * dy_f
        shape = H.shape[:3]
        dH = None if dH is None else dH.view(*shape, -1)
        dY = None if dY is None else dY.view(*shape, -1)
        return dH, dY, None


def _frame_sq_diff(Hf: Tensor, Yf: Tensor) -> Tensor:
    """Σ_ij (⟨h_i,h_j⟩ − ⟨y_i,y_j⟩)² over one frame's rows Hf [B, n, dh], Yf [B, n, dy] → [B] fp64."""
    n, dh, dy = Hf.shape[1], Hf.shape[2], Yf.shape[2]
    if _use_direct(n, dh, dy):
        return _sq(Hf @ Hf.mT - Yf @ Yf.mT)  # [B, n, n] Grams
    return _sq(Hf.mT @ Hf) + _sq(Yf.mT @ Yf) - 2 * _sq(Hf.mT @ Yf)  # [B, d, d] products


def _frame_sq_diff_grad(Hf: Tensor, Yf: Tensor, need_h: bool, need_y: bool):
    """(∂/∂Hf, ∂/∂Yf) of ``_frame_sq_diff`` divided by 4 (None where not needed)."""
    n, dh, dy = Hf.shape[1], Hf.shape[2], Yf.shape[2]
    if _use_direct(n, dh, dy):
        D = Hf @ Hf.mT - Yf @ Yf.mT  # [B, n, n]
        return (D @ Hf if need_h else None), (-(D @ Yf) if need_y else None)
    C = Hf.mT @ Yf  # [B, dh, dy]
    dh_f = Hf @ (Hf.mT @ Hf) - Yf @ C.mT if need_h else None
    dy_f = Yf @ (Yf.mT @ Yf) - Hf @ C if need_y else None
    return dh_f, dy_f


def drepa(
    h: Tensor,
    y: Tensor,
    *,
    variant: Literal["appendix", "blog"] = "appendix",
    distance: Literal["l2", "l1"] = "l2",
) -> Tensor:
    """dREPA: distance between the token Grams of h and y (see the module docstring for the two
    normalisations). h [B, F, N, D], y [B, F, N, Dt] -> [B]."""
    _check(h, y, same_dim=False)
    if variant not in ("appendix", "blog"):
        raise ValueError(f"drepa variant must be 'appendix' or 'blog', got {variant!r}")
    if distance not in ("l2", "l1"):
        raise ValueError(f"drepa distance must be 'l2' or 'l1', got {distance!r}")
    B, Fr, n, _ = h.shape
    N = Fr * n
    if variant == "blog" and N < 2:
        raise ValueError(
            f"drepa 'blog' averages over pairs i ≠ j and needs >= 2 tokens, got {tuple(h.shape)}"
        )
    with _no_autocast(h):
        hn, yn = _normalize(h, y)
        if distance == "l1":
            same, cross = _gram_block_sums(hn, yn, torch.abs, cross=variant == "blog" or Fr > 1)
        else:
            per_frame, whole = _GramSqDiff.apply(hn, yn, variant == "appendix")
            same = per_frame.sum(-1)  # [B]
            cross = whole - same
        if variant == "blog":
            loss = (same + cross) / (N * (N - 1))
        else:
            temporal = cross / (Fr * (Fr - 1) * n * n) if Fr > 1 else torch.zeros_like(same)
            loss = same / (Fr * n * n) + temporal
        return _out(loss, hn)


__all__ = ["repa", "crepa", "crepa_weights", "trd", "drepa"]
