"""Encoder diagnostics of Align4Gen (seeds/004 §3 "Analysis of Features"): IICR, Δfreq and PCA colour maps.

There is no public code; everything below is written from the paper's equations (5)-(12) and Figs. 1-3, and
the choices the paper leaves open are explicit keyword arguments (``anchors-modules.md`` §5.1).

IICR, the Intra-Inter Consistency Ratio (Eqs. 5-7). Per-frame features of V videos are clustered with k-means
(k clusters over all V·F frame vectors jointly; the paper clusters 1,000 videos and plots IICR against k).
With ``u_i`` the centroid (mean embedding) of cluster i and σ_i the spread of the embeddings in cluster i:

    D_inter = min_{i≠j} ‖u_i − u_j‖,    D_intra = max_i σ_i,    IICR = D_inter / D_intra.

High IICR: frames of one video stay together (temporally stable, small σ) while clusters stay apart
(discriminative). Choices the paper does not specify, with our defaults:

- ``pool="mean"``: one vector per frame, the mean over its patch tokens (``"tokens"`` clusters every patch
  token instead; a [V, F, D] input is already one vector per frame);
- ``normalize="none"``: raw features (``"l2"``: each clustered vector is L2-normalised, after pooling);
- ``sigma="rms"``: σ_i = sqrt(mean_{x∈C_i} ‖x − u_i‖²), the RMS distance to the centroid, i.e. the square
  root of the trace of the cluster covariance: rotation invariant and in the units of ``D_inter``
  (``"dim_std"``: the mean over dimensions of the per-dimension std, which is not rotation invariant).
  Both use the population std (divide by |C_i|); a singleton cluster has σ = 0;
- k-means: greedy k-means++ seeded by ``seed``, then Lloyd iterations (:func:`kmeans`), one initialisation,
  in float64; the same seed for every k of a curve.

IICR is invariant to a global scale, rotation and translation of the features with the defaults (the k-means
result itself is, up to rounding), and under ``normalize="l2"`` to a global rotation and scale.

Δfreq (Eqs. 8-12). For a feature map F ∈ ℝ^{h×w×c}: S = FFT_2D(F) per channel, shifted so that the DC term is
at the centre (``fftshift``); M = log(|S| + ε); Δfreq = mean_{(u,v)∈H} M_{u,v} − M_{0,0} with
H = {(u, v) : sqrt(u² + v²) > 0.75·r}, (u, v) integer frequency indices measured from the centre. Choices:

- channels: the log-magnitude spectrum M is averaged over the c channels (mean of logs, per channel FFT);
  since Δfreq is linear in M this equals the mean over channels of the per-channel Δfreq;
- non-square maps: r = min(h, w) / 2 and the region is a circle in index units, so it reaches the edge of
  the shorter axis exactly as the paper's square case does (r = h/2); along the longer axis it starts at a
  lower fraction of that axis' Nyquist frequency. For even sizes the centre is index (h//2, w//2), for odd
  sizes the middle index (``torch.fft.fftshift``'s convention);
- the features are not mean-centred: the DC term holds the spatial mean of each channel (as in the paper;
  a centred map would have M_{0,0} = log ε).

More negative Δfreq = more energy at low frequencies (smoother, more "semantic" maps; DINOv2 in Fig. 3),
closer to zero = more high-frequency detail (SAM2.1 Hiera).

PCA colours (Fig. 2): the first three principal components of all tokens of all frames of one video, fitted
jointly so that a colour means the same feature in every frame, min-max scaled per component to RGB.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from einops import rearrange
from torch import Tensor

Pool = Literal["mean", "tokens"]
Normalize = Literal["none", "l2"]
Sigma = Literal["rms", "dim_std"]


# ---------------------------------------------------------------------------------------------- k-means


def _sq_dists(x: Tensor, c: Tensor) -> Tensor:
    """Squared Euclidean distances [M, k] between rows of ``x`` [M, D] and ``c`` [k, D]."""
    d = (x * x).sum(1, keepdim=True) - 2.0 * x @ c.T + (c * c).sum(1)[None]  # [M, k]
    return d.clamp_min_(0.0)


def _kmeans_pp(x: Tensor, k: int, gen: torch.Generator) -> Tensor:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007; scikit-learn's greedy variant): the first centre
    uniformly; for each next one, ``2 + floor(ln k)`` candidates drawn with probability ∝ the squared distance
    to the nearest chosen centre (uniformly when all those are 0), keeping the candidate that lowers the total
    squared distance most (first one on ties)."""
    M = x.shape[0]
    trials = 2 + int(math.log(k))
    idx = [int(torch.randint(M, (1,), generator=gen))]
    d2 = _sq_dists(x, x[idx[0]][None])[:, 0]  # [M]
    for _ in range(1, k):
        total = float(d2.sum())
        if total > 0.0:
            cand = torch.multinomial((d2 / total).cpu(), trials, replacement=True, generator=gen)  # [trials]
        else:  # fewer distinct points than centres: any point
            cand = torch.randint(M, (trials,), generator=gen)
        cand = cand.to(x.device)
        pot = torch.minimum(d2[None], _sq_dists(x, x[cand]).T)  # [trials, M]
        best = int(pot.sum(1).argmin())
        idx.append(int(cand[best]))
        d2 = pot[best]
    return x[idx].clone()  # [k, D]


def kmeans(x: Tensor, k: int, *, seed: int = 0, iters: int = 100, tol: float = 1e-6) -> tuple[Tensor, Tensor]:
    """k-means of the rows of ``x`` [M, D]: greedy k-means++ seeding, then Lloyd iterations. Returns
    ``(centroids [k, D], assign [M])`` with ``assign`` in [0, k) (int64) and ``centroids`` the means of their
    clusters, in float64 on ``x.device``.

    Deterministic for a given ``seed`` (a CPU ``torch.Generator`` drives the seeding). Lloyd stops after
    ``iters`` updates, when no assignment changes, or when the total squared centroid shift is at most
    ``tol`` × the mean per-dimension variance of ``x`` (scikit-learn's relative tolerance, so the result does
    not depend on the scale of ``x``). Ties go to the lowest cluster index. A cluster that becomes empty is
    re-seeded deterministically with the point farthest from its own centroid (the next farthest for the
    next empty cluster), which is moved to the empty cluster before the centroids are recomputed.
    """
    if x.ndim != 2:
        raise ValueError(f"kmeans: x must be [M, D], got shape {tuple(x.shape)}")
    M = x.shape[0]
    if not 1 <= k <= M:
        raise ValueError(f"kmeans: need 1 <= k <= M = {M} points, got k={k}")
    if iters < 1:
        raise ValueError(f"kmeans: iters must be >= 1, got {iters}")
    x = x.detach().to(torch.float64)
    gen = torch.Generator().manual_seed(seed)
    centroids = _kmeans_pp(x, k, gen)  # [k, D]
    threshold = tol * float(x.var(0, unbiased=False).mean())
    assign = None
    for _ in range(iters):
        d2 = _sq_dists(x, centroids)  # [M, k]
        new = d2.argmin(1)  # [M]
        counts = torch.bincount(new, minlength=k)  # [k]
        if bool((counts == 0).any()):
            own = d2.gather(1, new[:, None])[:, 0]  # [M] distance to the own centroid
            order = own.argsort(descending=True, stable=True)
            taken = 0
            for c in (counts == 0).nonzero()[:, 0].tolist():
                # The farthest point whose cluster keeps at least one member after the move.
                while counts[new[order[taken]]] <= 1:
                    taken += 1
                p = order[taken]
                counts[new[p]] -= 1
                new[p], counts[c] = c, 1
                taken += 1
        sums = torch.zeros_like(centroids).index_add_(0, new, x)  # [k, D]
        updated = sums / counts[:, None].to(x.dtype)
        shift = float(((updated - centroids) ** 2).sum())
        unchanged = assign is not None and bool((new == assign).all())
        centroids, assign = updated, new
        if unchanged or shift <= threshold:
            break
    return centroids, assign


# ---------------------------------------------------------------------------------------------- IICR


def frame_vectors(features: Tensor, *, pool: Pool = "mean", normalize: Normalize = "none") -> Tensor:
    """The vectors IICR clusters, [M, D] in float64: ``features`` [V, F, N, D] pooled per frame (``"mean"``:
    M = V·F) or kept per token (``"tokens"``: M = V·F·N); [V, F, D] is used as is (M = V·F). ``"l2"``
    normalises each vector after pooling."""
    if features.ndim not in (3, 4):
        raise ValueError(f"features must be [V, F, N, D] or [V, F, D], got shape {tuple(features.shape)}")
    if pool not in ("mean", "tokens"):
        raise ValueError(f"pool must be 'mean' or 'tokens', got {pool!r}")
    if normalize not in ("none", "l2"):
        raise ValueError(f"normalize must be 'none' or 'l2', got {normalize!r}")
    x = features.detach().to(torch.float64)
    if x.ndim == 4:
        x = x.mean(2) if pool == "mean" else rearrange(x, "v f n d -> v (f n) d")  # [V, F | F·N, D]
    x = rearrange(x, "v m d -> (v m) d")  # [M, D]
    if normalize == "l2":
        x = torch.nn.functional.normalize(x, dim=1)
    return x


def iicr_terms(
    features: Tensor,
    k: int,
    *,
    seed: int = 0,
    pool: Pool = "mean",
    normalize: Normalize = "none",
    sigma: Sigma = "rms",
    iters: int = 100,
) -> dict[str, float]:
    """``{"iicr", "d_inter", "d_intra"}`` of ``features`` ([V, F, N, D] or [V, F, D]) with k clusters
    (Eqs. 5-7; the keyword choices are described in the module docstring). IICR is ``inf`` when every
    cluster has zero spread."""
    if sigma not in ("rms", "dim_std"):
        raise ValueError(f"sigma must be 'rms' or 'dim_std', got {sigma!r}")
    x = frame_vectors(features, pool=pool, normalize=normalize)  # [M, D]
    if not 2 <= k <= x.shape[0]:
        raise ValueError(f"IICR needs 2 <= k <= {x.shape[0]} clustered vectors, got k={k}")
    centroids, assign = kmeans(x, k, seed=seed, iters=iters)  # [k, D], [M]
    d_inter = float(torch.pdist(centroids).min())  # Eq. 5
    counts = torch.bincount(assign, minlength=k).to(x.dtype)[:, None]  # [k, 1]
    sq = torch.zeros_like(centroids).index_add_(0, assign, (x - centroids[assign]) ** 2) / counts  # [k, D]
    per_cluster = sq.sum(1).sqrt() if sigma == "rms" else sq.sqrt().mean(1)  # [k]
    d_intra = float(per_cluster.max())  # Eq. 6
    value = d_inter / d_intra if d_intra > 0 else float("inf")  # Eq. 7
    return {"iicr": value, "d_inter": d_inter, "d_intra": d_intra}


def iicr(
    features: Tensor,
    k: int,
    *,
    seed: int = 0,
    pool: Pool = "mean",
    normalize: Normalize = "none",
    sigma: Sigma = "rms",
    iters: int = 100,
) -> float:
    """IICR = D_inter / D_intra (Eq. 7) of per-frame ``features`` [V, F, N, D] or [V, F, D] with k k-means
    clusters; see :func:`iicr_terms` and the module docstring for the choices."""
    return iicr_terms(features, k, seed=seed, pool=pool, normalize=normalize, sigma=sigma, iters=iters)[
        "iicr"
    ]


def iicr_curve(
    features: Tensor,
    ks: list[int] | tuple[int, ...],
    *,
    seed: int = 0,
    pool: Pool = "mean",
    normalize: Normalize = "none",
    sigma: Sigma = "rms",
    iters: int = 100,
) -> dict[int, float]:
    """``{k: IICR}`` for each k of ``ks`` (Fig. 1), every k clustered from the same ``seed``."""
    x = frame_vectors(features, pool=pool, normalize=normalize)[None]  # [1, M, D]: pooled once
    kw = {"seed": seed, "sigma": sigma, "iters": iters}
    return {int(k): iicr(x, int(k), **kw) for k in ks}


# ---------------------------------------------------------------------------------------------- Δfreq


def high_freq_mask(h: int, w: int, ring: float = 0.75) -> Tensor:
    """Boolean [h, w] mask of H = {sqrt(u² + v²) > ring·r} on the ``fftshift``-ed grid, r = min(h, w)/2,
    (u, v) integer offsets from the centre index (h//2, w//2)."""
    u = torch.arange(h, dtype=torch.float64) - h // 2
    v = torch.arange(w, dtype=torch.float64) - w // 2
    radius = (u[:, None] ** 2 + v[None, :] ** 2).sqrt()  # [h, w]
    return radius > ring * min(h, w) / 2


def delta_freq(feature_map: Tensor, *, eps: float = 1e-6, ring: float = 0.75) -> float | Tensor:
    """Δfreq (Eqs. 8-12) of ``feature_map`` [h, w, c] (a float) or [B, h, w, c] (a float64 tensor [B]):
    mean log-magnitude over the high-frequency ring minus the log-magnitude of the DC term; the FFT is per
    channel and M is averaged over channels (module docstring)."""
    if feature_map.ndim not in (3, 4):
        raise ValueError(
            f"feature_map must be [h, w, c] or [B, h, w, c], got shape {tuple(feature_map.shape)}"
        )
    x = feature_map.detach().to(torch.float64)
    single = x.ndim == 3
    if single:
        x = x[None]
    _, h, w, _ = x.shape
    mask = high_freq_mask(h, w, ring).to(x.device)  # [h, w]
    if not bool(mask.any()):
        raise ValueError(f"delta_freq: the high-frequency region is empty for a {h}x{w} map (ring={ring})")
    spec = torch.fft.fftshift(torch.fft.fft2(x, dim=(1, 2)), dim=(1, 2))  # [B, h, w, c], DC at the centre
    M = torch.log(spec.abs() + eps).mean(-1)  # [B, h, w], Eq. 9 averaged over channels
    out = M[:, mask].mean(1) - M[:, h // 2, w // 2]  # [B], Eq. 12
    return float(out[0]) if single else out


# ---------------------------------------------------------------------------------------------- PCA colours


def pca_colors(tokens: Tensor) -> np.ndarray:
    """Fig. 2: the first three principal components of ``tokens`` [F, h, w, D], fitted on all F·h·w tokens
    jointly, as uint8 RGB [F, h, w, 3].

    Exact (SVD of the centred tokens in float64, no randomised PCA). Sign convention: each component is
    flipped so that its score with the largest magnitude is positive (scikit-learn's ``svd_flip`` on the
    scores), so the colours are deterministic and unchanged when all features are negated. Each component is
    min-max scaled to [0, 255] over all frames; a constant component (or a missing one when D < 3) is 0.
    """
    if tokens.ndim != 4:
        raise ValueError(f"pca_colors: tokens must be [F, h, w, D], got shape {tuple(tokens.shape)}")
    F, h, w, D = tokens.shape
    x = rearrange(tokens.detach().to(torch.float64).cpu(), "f h w d -> (f h w) d")  # [M, D]
    x = x - x.mean(0)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)  # vh [min(M, D), D]
    scores = x @ vh[:3].T  # [M, ≤3]
    top = scores.abs().argmax(0, keepdim=True)  # [1, ≤3]
    sign = torch.sign(scores.gather(0, top))
    scores = scores * torch.where(sign == 0, torch.ones_like(sign), sign)  # largest |score| positive
    lo, hi = scores.min(0).values, scores.max(0).values
    span = hi - lo
    scaled = torch.where(span > 0, (scores - lo) / span.clamp_min(1e-300), torch.zeros_like(scores))
    rgb = torch.zeros(x.shape[0], 3, dtype=torch.float64)
    rgb[:, : scaled.shape[1]] = scaled
    rgb = (rgb * 255.0).round().clamp(0, 255).to(torch.uint8)
    return rearrange(rgb, "(f h w) c -> f h w c", f=F, h=h, w=w).numpy()


__all__ = [
    "delta_freq",
    "frame_vectors",
    "high_freq_mask",
    "iicr",
    "iicr_curve",
    "iicr_terms",
    "kmeans",
    "pca_colors",
]
