"""DDPM objective: ε-prediction with the learned-range σ and the variational bound, as Latte/DiT train it.

Reference: DiT ``diffusion/gaussian_diffusion.py``, ``respace.py`` and ``__init__.py::create_diffusion``
(facebookresearch/DiT, itself openai/improved-diffusion, Nichol & Dhariwal 2021, "IDDPM"), as vendored by
Vchitect/Latte, which splits the model output on the channel axis of ``[B, F, C, H, W]`` (dim 2); see
``anchors-latte-repa.md`` §1.4. Written from the equations of Ho et al. 2020 and IDDPM, not copied.

What Latte/DiT use, and the defaults here: T = 1000, the "linear" β schedule, ε-prediction,
``learn_sigma=True`` (LEARNED_RANGE variance), loss = MSE(ε) + VB with the ε output detached (``frozen_out``),
VB not rescaled (loss type MSE, not RESCALED_MSE), uniform training steps; sampling with the respaced process
``create_diffusion(str(steps))``, ancestral DDPM with 250 steps in the configs.

Time (``minivdit.objectives`` convention): step index ``i ∈ {0..T-1}``, ``t = i / (T − 1)``, so ``t = 0`` is
the least noisy step (ᾱ_0 = 1 − β_0, not exactly clean) and ``t = 1`` the noisiest; ``t_model = float(i)``.

Channel layout with ``learn_sigma``: the network outputs ``2C`` channels on dim 2, ``pred[:, :, :C]`` = ε and
``pred[:, :, C:]`` = v ∈ [-1, 1], which interpolates the log-variance between the clipped posterior variance
(v = −1) and β (v = +1) (IDDPM eq. 15).

Notable deviations from DiT/Latte:
- the discretized Gaussian decoder uses the exact normal CDF (``torch.special.ndtr``/``log_ndtr``) instead of
  IDDPM's tanh approximation (|ΔΦ| < 2e-4); the 1e-12 floor on the middle bin's probability is kept;
- ``learn_sigma=False`` means FIXED_LARGE (DiT's ``create_diffusion`` with ``sigma_small=False``); FIXED_SMALL
  is not offered;
- respacing takes an integer step count only: the single-section rule of ``space_timesteps(T, str(steps))``;
  the multi-section ("10,10,20") and "ddimN" strings are not supported (Latte uses neither);
- ancestral sampling draws no noise at the last step (DiT draws it and multiplies by 0), so at equal seeds the
  random streams differ from DiT's; the distribution is the same;
- ``t_model`` is the step index as float32 (DiT passes int64; its timestep embedder casts it to float);
- loss and sampler arithmetic run in at least fp32 (schedule tables are fp64, gathered, then cast), whatever
  the dtype of the network output.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from minivdit.objectives import Noised, check_video

DenoiseFn = Callable[[Tensor, Tensor], Tensor]
"""``denoise_fn(x_t [B, F, C, H, W], t_model [B]) -> pred [B, F, C or 2C, H, W]``."""


@dataclass(frozen=True, kw_only=True)
class DDPMConfig:
    """Gaussian diffusion with a discrete schedule (Latte/DiT defaults)."""

    num_timesteps: int = 1000
    """Number of training steps T."""
    beta_start: float = 1e-4
    """First β of the "linear" schedule, quoted for T = 1000 and scaled by 1000 / T (DiT/IDDPM)."""
    beta_end: float = 0.02
    """Last β of the "linear" schedule, quoted for T = 1000 and scaled by 1000 / T (DiT/IDDPM)."""
    learn_sigma: bool = True
    """Network outputs 2C channels (ε, v), trained with MSE + VB (Latte/DiT). False: C channels, MSE only, and
    the fixed "large" variance (β) for sampling."""
    sampler: Literal["ddpm", "ddim"] = "ddpm"
    """Ancestral sampling (Latte's configs) or DDIM (Song et al. 2021)."""
    eta: float = 0.0
    """DDIM stochasticity (0 = deterministic, 1 = DDPM-like variance); used by ``sampler="ddim"`` only."""
    clip_denoised: bool = False
    """Clamp the predicted ``x_data`` to [-1, 1] while sampling (off in Latte/DiT, which sample latents)."""

    def __post_init__(self) -> None:
        if self.num_timesteps < 2:
            raise ValueError(f"num_timesteps must be >= 2, got {self.num_timesteps}")
        if not 0.0 < self.beta_start < self.beta_end:
            raise ValueError(f"need 0 < beta_start < beta_end, got {self.beta_start}, {self.beta_end}")
        if self.beta_end * 1000.0 / self.num_timesteps >= 1.0:
            raise ValueError(
                f"beta_end scaled by 1000/T = {self.beta_end * 1000.0 / self.num_timesteps} must be < 1 "
                f"(beta_end={self.beta_end}, num_timesteps={self.num_timesteps})"
            )
        if self.eta < 0.0:
            raise ValueError(f"eta must be >= 0, got {self.eta}")


# ----------------------------------------------------------------------------------------------------------
# Pure helpers
# ----------------------------------------------------------------------------------------------------------


def linear_betas(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """DiT/IDDPM "linear" schedule in fp64: ``linspace(s·beta_start, s·beta_end, T)`` with ``s = 1000 / T``.

    The scale keeps ᾱ_{T−1} about the same for any T (IDDPM §3.2 / ``get_named_beta_schedule``).
    """
    scale = 1000.0 / num_timesteps
    return torch.linspace(scale * beta_start, scale * beta_end, num_timesteps, dtype=torch.float64)


def space_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """The original step indices kept when sampling with ``steps`` steps, sorted ascending.

    DiT's ``space_timesteps(T, str(steps))`` with one section: ``steps`` indices evenly strided over
    ``[0, T − 1]`` with stride ``(T − 1) / (steps − 1)``, each rounded; always contains 0 and T − 1.
    """
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must be in [1, {num_timesteps}] (num_timesteps), got {steps}")
    if steps == 1:
        return [0]
    stride = (num_timesteps - 1) / (steps - 1)
    # DiT accumulates the fractional position in a float and rounds each partial sum with Python's round();
    # doing the same keeps the index set identical to DiT's, float error and ties included.
    kept, position = [], 0.0
    for _ in range(steps):
        kept.append(round(position))
        position += stride
    return kept


def normal_kl(mean1: Tensor, log_var1: Tensor, mean2: Tensor, log_var2: Tensor) -> Tensor:
    """Elementwise KL(N(mean1, exp(log_var1)) || N(mean2, exp(log_var2))) in nats; arguments broadcast."""
    return 0.5 * (
        log_var2
        - log_var1
        - 1.0
        + torch.exp(log_var1 - log_var2)
        + (mean1 - mean2) ** 2 * torch.exp(-log_var2)
    )


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """Elementwise log-probability (nats) of the bin of ``x`` under N(mean, exp(log_scale)²).

    Data are assumed to be 8-bit levels mapped to [-1, 1]: each value owns a bin of width 2/255 centred on it,
    and the two edge bins extend to ∓∞ (Ho et al. 2020 §3.3, IDDPM ``discretized_gaussian_log_likelihood``).
    """
    inv_std = torch.exp(-log_scale)
    centered = x - mean
    upper = inv_std * (centered + 1.0 / 255.0)
    lower = inv_std * (centered - 1.0 / 255.0)
    log_cdf_upper = torch.special.log_ndtr(upper)  # left edge bin: P(X < x + 1/255)
    log_sf_lower = torch.special.log_ndtr(-lower)  # right edge bin: P(X > x - 1/255)
    # Middle bins: Φ(upper) − Φ(lower), taken on the side of the mean where it does not cancel to 0 in fp32;
    # the 1e-12 floor is IDDPM's (it caps the NLL at ~27.6 nats).
    bin_prob = torch.where(
        centered > 0,
        torch.special.ndtr(-lower) - torch.special.ndtr(-upper),
        torch.special.ndtr(upper) - torch.special.ndtr(lower),
    )
    log_bin = torch.log(bin_prob.clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_upper, torch.where(x > 0.999, log_sf_lower, log_bin))


def _mean_flat(x: Tensor) -> Tensor:
    """Mean over every non-batch dim: ``[B, ...] -> [B]``."""
    return x.mean(dim=tuple(range(1, x.ndim)))


def _col(v: Tensor, like: Tensor) -> Tensor:
    """A per-sample value ``[B]`` as ``[B, 1, 1, 1, 1]`` in ``like``'s dtype, to broadcast against a video."""
    return v.to(like.dtype).view(-1, *([1] * (like.ndim - 1)))


@dataclass(frozen=True)
class Schedule:
    """Coefficient tables (fp64, ``[K]``) of one DDPM process, indexed by its own step ``k``.

    The training process has K = T and ``timestep_map = arange(T)``; a respaced process (``DDPM.respaced``)
    keeps K of the T steps, and ``timestep_map[k]`` is the original index of its step k (the network's input).
    """

    timestep_map: Tensor
    """[K] int64: original step index of each step k."""
    betas: Tensor
    """[K] β_k of this process (respaced: ``1 − ᾱ_k / ᾱ_{k−1}``)."""
    alphas_cumprod: Tensor
    """[K] ᾱ_k = ∏_{j≤k} (1 − β_j)."""
    alphas_cumprod_prev: Tensor
    """[K] ᾱ_{k−1}, with ᾱ_{−1} = 1."""
    posterior_variance: Tensor
    """[K] variance of q(x_{k−1} | x_k, x_data): β_k (1 − ᾱ_{k−1}) / (1 − ᾱ_k); 0 at k = 0."""
    posterior_log_variance_clipped: Tensor
    """[K] log ``posterior_variance``, the k = 0 entry (0, log = −∞) replaced by the k = 1 entry (IDDPM)."""
    posterior_mean_coef1: Tensor
    """[K] coefficient of x_data in the posterior mean: β_k √ᾱ_{k−1} / (1 − ᾱ_k)."""
    posterior_mean_coef2: Tensor
    """[K] coefficient of x_k in the posterior mean: √α_k (1 − ᾱ_{k−1}) / (1 − ᾱ_k)."""
    fixed_large_log_variance: Tensor
    """[K] log σ² of FIXED_LARGE: β_k, with k = 0 set to the posterior variance at k = 1 (IDDPM)."""

    @classmethod
    def from_betas(cls, betas: Tensor, timestep_map: Tensor) -> Schedule:
        betas = betas.to(torch.float64)
        alphas = 1.0 - betas
        ac = torch.cumprod(alphas, dim=0)
        ac_prev = torch.cat([ac.new_ones(1), ac[:-1]])
        post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
        # The posterior variance is 0 at k = 0; IDDPM substitutes the k = 1 value so the log stays finite.
        # With a single respaced step there is no k = 1: use β_0, a finite stand-in that sampling never reads
        # (no noise is added at the last step).
        first = post_var[1:2] if len(betas) > 1 else betas[:1]
        return cls(
            timestep_map=timestep_map.to(torch.int64),
            betas=betas,
            alphas_cumprod=ac,
            alphas_cumprod_prev=ac_prev,
            posterior_variance=post_var,
            posterior_log_variance_clipped=torch.log(torch.cat([first, post_var[1:]])),
            posterior_mean_coef1=betas * ac_prev.sqrt() / (1.0 - ac),
            posterior_mean_coef2=alphas.sqrt() * (1.0 - ac_prev) / (1.0 - ac),
            fixed_large_log_variance=torch.log(torch.cat([first, betas[1:]])),
        )

    def to(self, device: torch.device) -> Schedule:
        # MPS has no float64; everywhere else the tables stay fp64 until gathered.
        dtype = torch.float32 if device.type == "mps" else None
        return Schedule(
            **{
                name: getattr(self, name).to(device=device, dtype=dtype if name != "timestep_map" else None)
                for name in self.__dataclass_fields__
            }
        )

    def __len__(self) -> int:
        return len(self.betas)


# ----------------------------------------------------------------------------------------------------------
# The objective
# ----------------------------------------------------------------------------------------------------------


class DDPM:
    """ε-prediction Gaussian diffusion (Latte/DiT); see the module docstring for the conventions.

    A plain object, not an ``nn.Module``: it has no parameters, and its fp64 tables must not follow a model's
    ``.to(bf16)``. Tables are copied to a device on first use there and cached.
    """

    def __init__(self, cfg: DDPMConfig) -> None:
        self.cfg = cfg
        T = cfg.num_timesteps
        self.schedule = Schedule.from_betas(linear_betas(T, cfg.beta_start, cfg.beta_end), torch.arange(T))
        """The training process (K = T), fp64 on CPU."""
        self._training_tables: dict[torch.device, Schedule] = {}
        self._respaced_tables: dict[tuple[int, torch.device], Schedule] = {}

    # -- schedule access -------------------------------------------------------------------------------------

    @property
    def num_timesteps(self) -> int:
        return self.cfg.num_timesteps

    @property
    def betas(self) -> Tensor:
        """[T] fp64 β of the training process."""
        return self.schedule.betas

    @property
    def alphas_cumprod(self) -> Tensor:
        """[T] fp64 ᾱ of the training process."""
        return self.schedule.alphas_cumprod

    def respaced(self, steps: int, device: torch.device | str = "cpu") -> Schedule:
        """The process used by ``sample(..., steps)``: the kept indices of ``space_timesteps(T, steps)`` and
        β_k = 1 − ᾱ_k / ᾱ_{k−1} over them (DiT ``SpacedDiffusion``). ``steps = T`` is the training process."""
        key = (steps, torch.device(device))
        if key not in self._respaced_tables:
            kept = torch.tensor(space_timesteps(self.num_timesteps, steps))  # validates steps
            ac = self.alphas_cumprod[kept]
            betas = 1.0 - ac / torch.cat([ac.new_ones(1), ac[:-1]])
            self._respaced_tables[key] = Schedule.from_betas(betas, kept).to(key[1])
        return self._respaced_tables[key]

    def _training(self, device: torch.device) -> Schedule:
        if device not in self._training_tables:
            self._training_tables[device] = self.schedule.to(device)
        return self._training_tables[device]

    def pred_channels(self, in_channels: int) -> int:
        """Channels the network must output: ``2C`` (ε, v) with ``learn_sigma``, else ``C``."""
        return 2 * in_channels if self.cfg.learn_sigma else in_channels

    def index_from_t(self, t: Tensor) -> Tensor:
        """Step index ``i = round(t · (T − 1))`` (int64) of a time ``t ∈ [0, 1]``."""
        return torch.round(t.to(torch.float64) * (self.num_timesteps - 1)).to(torch.int64)

    # -- forward process -------------------------------------------------------------------------------------

    def q_sample(self, x_data: Tensor, i: Tensor, noise: Tensor) -> Tensor:
        """x_t = √ᾱ_i · x_data + √(1 − ᾱ_i) · noise, for step indices ``i`` [B] (int64), training process."""
        check_video(x_data, "x_data")
        ac = self._training(x_data.device).alphas_cumprod[i]
        dtype = torch.promote_types(x_data.dtype, torch.float32)
        xd, n = x_data.to(dtype), noise.to(dtype)
        return (_col(ac.sqrt(), xd) * xd + _col((1.0 - ac).sqrt(), xd) * n).to(x_data.dtype)

    def q_posterior_mean_variance(
        self, x_data: Tensor, x_t: Tensor, i: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance and clipped log-variance of q(x_{i−1} | x_i, x_data) in the training process.

        The mean has ``x_t``'s shape; the variances are ``[B, 1, 1, 1, 1]``. Returned in ``x_t``'s dtype.
        """
        return self._q_posterior(self._training(x_t.device), x_data, x_t, i)

    def predict_x_data(self, x_t: Tensor, i: Tensor, eps: Tensor) -> Tensor:
        """x_data implied by an ε prediction: (x_t − √(1 − ᾱ_i) ε) / √ᾱ_i, training process."""
        return self._predict_x_data(self._training(x_t.device), x_t, i, eps)

    def p_mean_variance(
        self, pred: Tensor, x_t: Tensor, i: Tensor, clip_denoised: bool = False
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Mean and log-variance of the model's p(x_{i−1} | x_i) and its predicted x_data, training process.

        ``pred`` is the network output (``[B, F, 2C, H, W]`` with ``learn_sigma``). The log-variance is
        ``[B, F, C, H, W]`` when learned, ``[B, 1, 1, 1, 1]`` when fixed.
        """
        self._check_pred(pred, x_t)
        return self._p_mean_variance(self._training(x_t.device), pred, x_t, i, clip_denoised)

    @staticmethod
    def _q_posterior(s: Schedule, x_data: Tensor, x_t: Tensor, k: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        mean = _col(s.posterior_mean_coef1[k], x_t) * x_data + _col(s.posterior_mean_coef2[k], x_t) * x_t
        return mean, _col(s.posterior_variance[k], x_t), _col(s.posterior_log_variance_clipped[k], x_t)

    @staticmethod
    def _predict_x_data(s: Schedule, x_t: Tensor, k: Tensor, eps: Tensor) -> Tensor:
        # IDDPM's form √(1/ᾱ) x_t − √(1/ᾱ − 1) ε, algebraically (x_t − √(1−ᾱ) ε) / √ᾱ.
        ac = s.alphas_cumprod[k]
        return _col((1.0 / ac).sqrt(), x_t) * x_t - _col((1.0 / ac - 1.0).sqrt(), x_t) * eps

    def _p_mean_variance(
        self, s: Schedule, pred: Tensor, x_t: Tensor, k: Tensor, clip: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Mean and log-variance of p(x_{k−1} | x_k), and the predicted x_data; ``pred`` as the network's."""
        C = x_t.shape[2]
        x_pred = self._predict_x_data(s, x_t, k, pred[:, :, :C])
        if clip:
            x_pred = x_pred.clamp(-1.0, 1.0)
        mean, _, _ = self._q_posterior(s, x_pred, x_t, k)
        if self.cfg.learn_sigma:
            # LEARNED_RANGE (IDDPM eq. 15): v ∈ [-1, 1] interpolates log σ² between the clipped posterior
            # variance β̃_k (v = −1) and β_k (v = +1) of this process.
            frac = (pred[:, :, C:] + 1.0) / 2.0
            max_log = _col(torch.log(s.betas[k]), x_t)
            min_log = _col(s.posterior_log_variance_clipped[k], x_t)
            log_var = frac * max_log + (1.0 - frac) * min_log
        else:
            log_var = _col(s.fixed_large_log_variance[k], x_t)
        return mean, log_var, x_pred

    def _check_pred(self, pred: Tensor, x_t: Tensor) -> None:
        B, F, C, H, W = x_t.shape
        expected = (B, F, self.pred_channels(C), H, W)
        if tuple(pred.shape) != expected:
            raise ValueError(
                f"pred must have shape {expected} for x_t of shape {tuple(x_t.shape)} "
                f"(learn_sigma={self.cfg.learn_sigma}), got {tuple(pred.shape)}"
            )

    # -- training --------------------------------------------------------------------------------------------

    def corrupt(
        self, x_data: Tensor, generator: torch.Generator | None = None, *, t: Tensor | float | None = None
    ) -> Noised:
        """Draw i ~ U{0..T−1} and ε ~ N(0, I) (on ``x_data.device``, from ``generator`` if given, which must
        live on that device) and return the noised batch with ``target = ε``.

        ``t`` (tests, analysis): fixed times instead of random ones, a float or ``[B]``; snapped to the step
        grid ``i = round(t · (T − 1))``.
        """
        check_video(x_data, "x_data")
        B, device = x_data.shape[0], x_data.device
        if t is None:
            i = torch.randint(0, self.num_timesteps, (B,), generator=generator, device=device)
        else:
            t = torch.as_tensor(t, device=device).expand(B)
            if not bool(((t >= 0) & (t <= 1)).all()):
                raise ValueError(f"t must lie in [0, 1], got {t.tolist()}")
            i = self.index_from_t(t)
        noise = torch.randn(x_data.shape, generator=generator, device=device, dtype=x_data.dtype)
        return Noised(
            x_data=x_data,
            noise=noise,
            x_t=self.q_sample(x_data, i, noise),
            t=i.to(torch.float32) / (self.num_timesteps - 1),
            t_model=i.to(torch.float32),
            target=noise,
        )

    def loss_terms(self, pred: Tensor, noised: Noised) -> dict[str, Tensor]:
        """Per-sample terms ``[B]``: ``"mse"`` on ε, and with ``learn_sigma`` ``"vb"`` (bits per dim)."""
        check_video(pred, "pred")
        self._check_pred(pred, noised.x_t)
        dtype = torch.promote_types(pred.dtype, torch.float32)  # losses in >= fp32
        pred = pred.to(dtype)
        x_data, x_t = noised.x_data.to(dtype), noised.x_t.to(dtype)
        C = x_t.shape[2]
        terms = {"mse": _mean_flat((pred[:, :, :C] - noised.target.to(dtype)) ** 2)}
        if self.cfg.learn_sigma:
            s = self._training(x_t.device)
            i = self.index_from_t(noised.t)
            # DiT/Latte `frozen_out`: the VB trains only the variance channels; the MSE trains the mean.
            frozen = torch.cat([pred[:, :, :C].detach(), pred[:, :, C:]], dim=2)
            mean, log_var, _ = self._p_mean_variance(s, frozen, x_t, i, clip=False)
            true_mean, _, true_log_var = self._q_posterior(s, x_data, x_t, i)
            kl = _mean_flat(normal_kl(true_mean, true_log_var, mean, log_var)) / math.log(2.0)
            # At i = 0 the bound's term is the decoder -log p(x_data | x_0). As DiT/Latte, it is applied to
            # latents too, although they are not 8-bit data; it is 1/T of the samples.
            log_p = discretized_gaussian_log_likelihood(x_data, mean, 0.5 * log_var)
            nll = -_mean_flat(log_p) / math.log(2.0)
            terms["vb"] = torch.where(i == 0, nll, kl)
        return terms

    def loss(self, pred: Tensor, noised: Noised) -> Tensor:
        """Per-sample loss ``[B]``: the sum of ``loss_terms`` (MSE + VB, unweighted: DiT's loss type MSE)."""
        return sum(self.loss_terms(pred, noised).values())

    # -- sampling --------------------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(
        self, denoise_fn: DenoiseFn, noise: Tensor, steps: int, generator: torch.Generator | None = None
    ) -> Tensor:
        """Run the respaced reverse process from ``noise`` (t = 1) to a sample (t = 0), in ``noise``'s dtype.

        ``denoise_fn(x_t, t_model)`` receives the ORIGINAL step index as ``t_model`` ([B] float32), as DiT's
        ``_WrappedModel`` with ``rescale_timesteps=False``. ``generator`` (on ``noise.device``) drives the
        noise of ancestral / η > 0 DDIM steps. The sampler state is kept in at least fp32.
        """
        check_video(noise, "noise")
        s = self.respaced(steps, noise.device)
        B = noise.shape[0]
        x = noise.to(torch.promote_types(noise.dtype, torch.float32))
        for k in reversed(range(len(s))):
            kk = torch.full((B,), k, device=noise.device, dtype=torch.int64)
            t_model = s.timestep_map[kk].to(torch.float32)
            pred = denoise_fn(x, t_model)
            self._check_pred(pred, x)
            mean, log_var, x_pred = self._p_mean_variance(s, pred.to(x.dtype), x, kk, self.cfg.clip_denoised)
            if self.cfg.sampler == "ddpm":
                x = mean
                if k > 0:
                    x = x + torch.exp(0.5 * log_var) * self._randn(x, generator)
            else:
                x = self._ddim_step(s, x, x_pred, kk, k, generator)
        return x.to(noise.dtype)

    def _ddim_step(
        self, s: Schedule, x: Tensor, x_pred: Tensor, kk: Tensor, k: int, generator: torch.Generator | None
    ) -> Tensor:
        """One DDIM step (Song et al. 2021 eq. 12) from x_k to x_{k−1} of the respaced process."""
        ac, ac_prev = s.alphas_cumprod[kk], s.alphas_cumprod_prev[kk]
        # ε re-derived from the (possibly clipped) x_data prediction, as IDDPM's ddim_sample.
        eps = (_col((1.0 / ac).sqrt(), x) * x - x_pred) / _col((1.0 / ac - 1.0).sqrt(), x)
        sigma = self.cfg.eta * ((1.0 - ac_prev) / (1.0 - ac)).sqrt() * (1.0 - ac / ac_prev).sqrt()
        dir_coef = (1.0 - ac_prev - sigma**2).clamp(min=0.0).sqrt()
        x = _col(ac_prev.sqrt(), x) * x_pred + _col(dir_coef, x) * eps
        if k > 0 and self.cfg.eta > 0:
            x = x + _col(sigma, x) * self._randn(x, generator)
        return x

    @staticmethod
    def _randn(like: Tensor, generator: torch.Generator | None) -> Tensor:
        return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)
