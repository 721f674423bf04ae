"""The Fréchet maths, once: streaming float64 feature statistics, the Fréchet distance, the Inception Score.

Feature statistics (StyleGAN-V ``src/metrics/metric_utils.py:L63-127``, copied by cd-fvd and StyleGAN3): the
features of a batch are cast to float32 (as the detector returns them), then to **float64**, and
accumulated as
raw moments: ``Σx`` [D], ``Σxxᵀ`` [D, D] and the count. Raw moments are sums, so they merge exactly across
batches and ranks (``merge``, ``all_reduce``). ``mean_cov`` gives the **population** covariance ``Σxxᵀ/N −
μμᵀ`` (ddof 0, StyleGAN-V and cd-fvd) unless ``ddof=1`` (pytorch-fid, torch-fidelity, TF-GAN's ``np.cov``;
×N/(N−1), about ×1.0005 on the FD at N = 2048, anchors-eval.md §1.4). float32 raw moments break when features
have a large mean (offset 100: 41.32 instead of 42.89, anchors-eval §1.4); the accumulators stay float64.

Fréchet distance ``‖μa − μb‖² + tr(Σa + Σb − 2 (Σa Σb)^½)``:

- ``method="eigh"`` (default, no SciPy): ``tr (Σa Σb)^½ = Σ √λ(√Σa Σb √Σa)``, two symmetric
  eigendecompositions
  in float64. ``√Σa Σb √Σa`` is symmetric PSD and similar to ``Σa Σb``, so its eigenvalues are those of
  ``Σa Σb``; round-off negatives are clipped to 0. It equals StyleGAN-V's formula to ≤ 1e-10 relative on
  full-rank covariances (tests), and never returns complex values.
- ``method="sqrtm"``: StyleGAN-V's exact formula, ``np.real(m + tr(Σa + Σb − 2·sqrtm(Σa Σb)))``
  (``frechet_video_distance.py:L54-56``), with ``scipy>=1.13`` (earlier ``sqrtm`` releases are wrong on these
  matrices, scipy#19415). It is called without ``disp`` (removed in SciPy 1.18).

The self-distance is ~1e-12 rather than 0: neither method clips the result at 0.

Inception Score from class probabilities ``p [N, K]``: ``exp(E_x KL(p(y|x) ‖ p(y)))`` per split, mean and std
(ddof 0) over splits.

- ``variant="stylegan-v"`` (default; ``video_inception_score.py:L38-52``): ``RandomState(42).shuffle`` of the
  rows, 10 splits ``[i·N//10 : (i+1)·N//10]``, no eps (an exact 0 in ``p`` gives NaN).
- ``variant="tganv2"`` (``tgan2/evaluations/inception_score.py:L57-64``): one split, no shuffle, ``eps=1e-20``
  added to ``p`` (``part = part + eps`` before the logs and the product, L60).
- ``tganv2_inception_score``: TGANv2's ± (``scripts/compute_inception_score.py:L24-25, L55-66``): ``--n-loops
  10`` independent draws of ``--n-samples 2048`` fresh videos, one split each, then ``np.mean`` / ``np.std``
  (ddof 0) over the draws. Disjoint consecutive blocks of independently sampled clips are independent draws.
  The split size alone moves the score (one split of 2,048 against StyleGAN-V's 10 of ~205: about 20 %), so
  with fewer than ``draws · draw_size`` clips the score is one draw of ``draw_size`` (all clips if fewer) and
  the std is NaN, never a misleading 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from minivdit import durable


class FeatureStats:
    """Streaming raw moments of ``D``-dim features in float64: ``update`` per batch, ``merge`` across
    batches or ranks, ``mean_cov`` at the end."""

    def __init__(self, dim: int):
        if dim < 1:
            raise ValueError(f"FeatureStats: dim must be >= 1, got {dim}")
        self.dim = dim
        self.count = 0
        self.raw_mean = np.zeros(dim, np.float64)  # Σx (StyleGAN-V's name for the sum)
        self.raw_cov = np.zeros((dim, dim), np.float64)  # Σxxᵀ

    def update(self, feats: Tensor | np.ndarray) -> None:
        """Add a batch ``[N, D]`` of features (float32 precision, accumulated in float64)."""
        x = feats.detach().to("cpu", torch.float32).numpy() if isinstance(feats, Tensor) else feats
        x = np.asarray(x, np.float32).astype(np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"FeatureStats.update: expected [N, {self.dim}] features, got {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError(f"FeatureStats.update: {(~np.isfinite(x)).sum()} non-finite feature values")
        self.count += x.shape[0]
        self.raw_mean += x.sum(0)
        self.raw_cov += x.T @ x

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Add ``other``'s moments into ``self`` (exact: they are sums). Returns ``self``."""
        if other.dim != self.dim:
            raise ValueError(f"FeatureStats.merge: dims differ ({self.dim} vs {other.dim})")
        self.count += other.count
        self.raw_mean += other.raw_mean
        self.raw_cov += other.raw_cov
        return self

    def all_reduce(self) -> FeatureStats:
        """Sum the moments over all ranks of the default process group (a no-op without one)."""
        import torch.distributed as tdist

        if not (tdist.is_available() and tdist.is_initialized()) or tdist.get_world_size() == 1:
            return self
        backend = tdist.get_backend()
        device = (
            torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        )
        flat = np.concatenate([[float(self.count)], self.raw_mean, self.raw_cov.ravel()])
        t = torch.from_numpy(flat).to(device)
        tdist.all_reduce(t)
        flat = t.cpu().numpy()
        self.count = int(round(flat[0]))
        self.raw_mean = flat[1 : 1 + self.dim].copy()
        self.raw_cov = flat[1 + self.dim :].reshape(self.dim, self.dim).copy()
        return self

    def mean_cov(self, ddof: Literal[0, 1] = 0) -> tuple[np.ndarray, np.ndarray]:
        """``(μ [D], Σ [D, D])`` in float64; ``ddof=0`` is the population covariance (StyleGAN-V)."""
        if ddof not in (0, 1):
            raise ValueError(f"ddof must be 0 or 1, got {ddof}")
        if self.count <= ddof:
            raise ValueError(f"FeatureStats: {self.count} items cannot give a covariance with ddof={ddof}")
        mean = self.raw_mean / self.count
        cov = self.raw_cov / self.count - np.outer(mean, mean)
        if ddof:
            cov *= self.count / (self.count - 1)
        return mean, cov

    # -------------------------------------------------------------------------------------- files

    def save(self, path: str | Path, **meta: str) -> None:
        """Write the moments (and string metadata, e.g. the protocol record as JSON) to an ``.npz``."""
        path = Path(path)
        extra = {f"meta_{k}": np.asarray(v) for k, v in meta.items()}
        with durable.atomic_path(path, suffix=".tmp.npz") as tmp:  # never a half-written cache
            np.savez(tmp, count=np.int64(self.count), raw_mean=self.raw_mean, raw_cov=self.raw_cov, **extra)

    @classmethod
    def load(cls, path: str | Path) -> tuple[FeatureStats, dict[str, str]]:
        """Read what ``save`` wrote: ``(stats, meta)``."""
        with np.load(path, allow_pickle=False) as f:
            stats = cls(int(f["raw_mean"].shape[0]))
            stats.count, stats.raw_mean, stats.raw_cov = int(f["count"]), f["raw_mean"], f["raw_cov"]
            meta = {k[5:]: str(f[k]) for k in f.files if k.startswith("meta_")}
        return stats, meta

    @classmethod
    def from_cdfvd_pkl(cls, path: str | Path) -> FeatureStats:
        """cd-fvd's published reference statistics (``pickle.dump(FeatureStats.__dict__)``, anchors-eval
        §3.4), read with an unpickler that only allows plain containers and NumPy arrays."""
        import pickle

        allowed = {
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
        }

        class Restricted(pickle.Unpickler):
            def find_class(self, module, name):
                if (module, name) not in allowed:
                    raise ValueError(f"{path}: refusing to unpickle {module}.{name} (not a stats file)")
                return super().find_class(module, name)

        with open(path, "rb") as fh:
            d = Restricted(fh).load()
        if not isinstance(d, dict) or not {"raw_mean", "raw_cov", "num_items"} <= set(d):
            raise ValueError(f"{path}: not a cd-fvd statistics pickle (needs raw_mean, raw_cov, num_items)")
        if d["raw_mean"] is None:
            raise ValueError(f"{path}: the pickle holds no mean/cov (capture_mean_cov was off)")
        stats = cls(len(d["raw_mean"]))
        stats.count = int(d["num_items"])
        stats.raw_mean = np.asarray(d["raw_mean"], np.float64)
        stats.raw_cov = np.asarray(d["raw_cov"], np.float64)
        return stats


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(
    mu_a: np.ndarray,
    cov_a: np.ndarray,
    mu_b: np.ndarray,
    cov_b: np.ndarray,
    *,
    method: Literal["eigh", "sqrtm"] = "eigh",
) -> float:
    """Fréchet distance between two Gaussians, in float64 (see the module docstring for the two methods)."""
    mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
    cov_a, cov_b = np.asarray(cov_a, np.float64), np.asarray(cov_b, np.float64)
    d = mu_a.shape[0]
    for name, m, c in (("a", mu_a, cov_a), ("b", mu_b, cov_b)):
        if m.shape != (d,) or c.shape != (d, d):
            raise ValueError(
                f"frechet_distance: mu_{name} {m.shape} / cov_{name} {c.shape}, expected [{d}] / [{d}, {d}]"
            )
    m = float(np.square(mu_a - mu_b).sum())
    if method == "eigh":
        s = _psd_sqrt(cov_a)
        inner = s @ cov_b @ s
        tr_sqrt = float(np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0.0, None)).sum())
        return m + float(np.trace(cov_a) + np.trace(cov_b)) - 2.0 * tr_sqrt
    if method == "sqrtm":
        import scipy
        import scipy.linalg

        major, minor = (int(x) for x in scipy.__version__.split(".")[:2])
        if (major, minor) < (1, 13):
            raise ValueError(
                f"method='sqrtm' needs scipy>=1.13 (sqrtm is wrong before it), got {scipy.__version__}"
            )
        s = scipy.linalg.sqrtm(cov_b @ cov_a)  # StyleGAN-V: sqrtm(np.dot(sigma_gen, sigma_real))
        s = s[0] if isinstance(s, tuple) else s
        return float(np.real(m + np.trace(cov_b + cov_a - s * 2)))
    raise ValueError(f"frechet_distance: method must be 'eigh' or 'sqrtm', got {method!r}")


def fd_from_stats(a: FeatureStats, b: FeatureStats, *, ddof: Literal[0, 1] = 0, method="eigh") -> float:
    """The Fréchet distance between two ``FeatureStats``."""
    return frechet_distance(*a.mean_cov(ddof), *b.mean_cov(ddof), method=method)


def inception_score(
    probs: Tensor | np.ndarray,
    *,
    variant: Literal["stylegan-v", "tganv2"] = "stylegan-v",
    splits: int | None = None,
) -> tuple[float, float]:
    """``(mean, std)`` of the Inception Score of class probabilities ``[N, K]`` (see the module docstring)."""
    p = probs.detach().cpu().double().numpy() if isinstance(probs, Tensor) else np.asarray(probs, np.float64)
    if p.ndim != 2 or p.shape[0] < 1:
        raise ValueError(f"inception_score: expected probabilities [N, K], got shape {p.shape}")
    if variant == "stylegan-v":
        splits, eps = splits or 10, 0.0
        p = p.copy()
        np.random.RandomState(42).shuffle(p)
    elif variant == "tganv2":
        splits, eps = splits or 1, 1e-20
    else:
        raise ValueError(f"inception_score: variant must be 'stylegan-v' or 'tganv2', got {variant!r}")
    n = p.shape[0]
    if splits > n:
        raise ValueError(f"inception_score: {splits} splits of {n} items")
    scores = []
    for i in range(splits):
        part = p[i * n // splits : (i + 1) * n // splits]
        marginal = part.mean(0, keepdims=True)
        if eps:  # TGANv2: ``part = part + eps``, then the same formula
            q = part + eps
            kl = q * (np.log(q) - np.log(q.mean(0, keepdims=True)))
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                kl = part * (np.log(part) - np.log(marginal))
        scores.append(np.exp(kl.sum(1).mean()))
    return float(np.mean(scores)), float(np.std(scores))


def tganv2_inception_score(
    probs: Tensor | np.ndarray, *, draws: int = 10, draw_size: int = 2048
) -> tuple[float, float, int]:
    """TGANv2's Inception Score: ``(mean, std, draws used)`` over ``draws`` disjoint blocks of ``draw_size``
    rows of ``probs [N, K]`` (in order), each scored as one split with ``eps=1e-20``. With ``N < draws ·
    draw_size`` the score is that of the first ``min(N, draw_size)`` rows, the std NaN and the draws used 1
    (see the module docstring); one draw never has a std (NaN, not 0)."""
    if draws < 1 or draw_size < 1:
        raise ValueError(f"tganv2_inception_score: draws {draws} and draw_size {draw_size} must be >= 1")
    p = probs.detach().cpu().double().numpy() if isinstance(probs, Tensor) else np.asarray(probs, np.float64)
    if p.ndim != 2 or p.shape[0] < 1:
        raise ValueError(f"tganv2_inception_score: expected probabilities [N, K], got shape {p.shape}")
    if p.shape[0] < draws * draw_size:
        return inception_score(p[:draw_size], variant="tganv2")[0], float("nan"), 1
    scores = [
        inception_score(p[i * draw_size : (i + 1) * draw_size], variant="tganv2")[0] for i in range(draws)
    ]
    return float(np.mean(scores)), float(np.std(scores)) if draws > 1 else float("nan"), draws
