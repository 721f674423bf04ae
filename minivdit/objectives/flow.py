"""Flow matching on the linear path with a velocity target, as SiT/REPA train it.

Reference: REPA (sihyun-yu/REPA ``loss.py::SILoss`` with ``path_type="linear"``, ``prediction="v"``, and
``samplers.py::euler_sampler``), i.e. rectified flow / SiT's linear interpolant; logit-normal times and the
timestep shift from SD3 (Esser et al. 2024, §3.1 and §5.3.2). Written from the equations, not copied.

Path (``minivdit.objectives`` convention, t = 0 data, t = 1 noise; the same direction as REPA's
``alpha_t = 1 − t``, the opposite of SiT's code, where x0 is noise):

    x_t = (1 − t) · x_data + t · noise,        target = dx_t/dt = noise − x_data.

Sampling integrates dx/dt = v(x, t) from t = 1 to t = 0 on the grid ``shift(linspace(1, 0, N + 1))``.

``prediction="x"`` (JiT, "Back to Basics: Let Denoising Generative Models Denoise", Li & He 2025, §3-4): the
network predicts the clean data x̂ and the loss stays the velocity MSE, through v̂ = (x_t − x̂)/t, i.e.
‖x̂ − x_data‖²/t²; t in that denominator is clamped at ``t_min`` in both v̂ and the target v (JiT clamps 1 − t
at 0.05 in its direction of time, the same way). The sampler converts x̂ to v̂ the same way. A clean image
lies on a low-dimensional manifold while the
velocity carries the noise, so x-prediction lets a narrow network with large patches denoise in pixel space.

Notable deviations from REPA:
- ``t_model = t · t_model_scale`` with ``t_model_scale = 1000`` by default; REPA/SiT's embedder sees raw t, so
  set ``t_model_scale = 1.0`` for REPA parity (flux uses 1000, ``time_factor``);
- the optional ``shift`` and logit-normal t are SD3's; REPA samples t uniformly with no shift (the defaults);
- REPA's loss also offers a cosine path and per-time weighting; only the linear path and uniform weights are
  here;
- the sampler state is kept in at least fp32 (REPA samples in fp64).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from minivdit.config import check_types
from minivdit.objectives import Noised, check_video

DenoiseFn = Callable[[Tensor, Tensor], Tensor]
"""``denoise_fn(x_t [B, F, C, H, W], t_model [B]) -> pred [B, F, C, H, W]`` (the velocity, or x̂ with
``prediction="x"``)."""


@dataclass(frozen=True, kw_only=True)
class FlowConfig:
    """Linear-path flow matching (REPA/SiT defaults except ``t_model_scale``)."""

    t_sampling: Literal["uniform", "logit_normal"] = "uniform"
    """Training time distribution: U[0, 1] (REPA/SiT) or sigmoid(N(logit_mean, logit_std²)) (SD3)."""
    logit_mean: float = 0.0
    """Mean of the normal pushed through the sigmoid (``logit_normal`` only; SD3: 0)."""
    logit_std: float = 1.0
    """Std of the normal pushed through the sigmoid (``logit_normal`` only; SD3: 1)."""
    shift: float = 1.0
    """Timestep shift t' = s·t / (1 + (s − 1)·t) (SD3/flux), applied to training times and to the sampling
    grid. 1 = none; s > 1 spends more time near noise (used for larger resolutions / longer videos)."""
    t_model_scale: float = 1000.0
    """The network is conditioned on t · t_model_scale. 1.0 = REPA/SiT parity (raw t); 1000 matches the range
    of DDPM indices that DiT-style sinusoidal timestep embedders are tuned for (flux ``time_factor``)."""
    sampler: Literal["euler", "heun"] = "euler"
    """ODE solver: Euler (N evaluations) or Heun (2N − 1 evaluations; the last step is Euler, as EDM)."""
    prediction: Literal["velocity", "x"] = "velocity"
    """What the network outputs: the velocity (REPA/SiT) or the clean data x̂ (JiT), converted to the
    velocity (x_t − x̂)/t for the loss and the sampler (see the module docstring)."""
    t_min: float = 0.05
    """``prediction="x"`` only: the t in (x_t − x̂)/t is clamped at this value (JiT: 0.05)."""

    def __post_init__(self) -> None:
        check_types(self)
        if self.logit_std <= 0.0:
            raise ValueError(f"logit_std must be > 0, got {self.logit_std}")
        if self.shift <= 0.0:
            raise ValueError(f"shift must be > 0, got {self.shift}")
        if self.t_model_scale <= 0.0:
            raise ValueError(f"t_model_scale must be > 0, got {self.t_model_scale}")
        if self.prediction not in ("velocity", "x"):
            raise ValueError(f"prediction must be 'velocity' or 'x', got {self.prediction!r}")
        if not 0.0 < self.t_min < 1.0:
            raise ValueError(f"t_min must be in (0, 1), got {self.t_min}")


def shift_time(t: Tensor, shift: float) -> Tensor:
    """SD3/flux timestep shift t' = s·t / (1 + (s − 1)·t): a monotone map of [0, 1] onto itself, fixing 0, 1.

    It is the time at which the noise-to-signal ratio t/(1−t) is s times that at t (SD3 §5.3.2).
    """
    if shift == 1.0:
        return t
    return shift * t / (1.0 + (shift - 1.0) * t)


def _col(t: Tensor, like: Tensor) -> Tensor:
    """Per-sample ``[B]`` as ``[B, 1, 1, 1, 1]`` in ``like``'s dtype."""
    return t.to(like.dtype).view(-1, *([1] * (like.ndim - 1)))


class Flow:
    """Linear-path flow matching with velocity prediction; see the module docstring for the conventions."""

    def __init__(self, cfg: FlowConfig) -> None:
        self.cfg = cfg

    def pred_channels(self, in_channels: int) -> int:
        """Channels the network must output: the velocity has the data's C channels."""
        return in_channels

    @staticmethod
    def path(x_data: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """x_t = (1 − t)·x_data + t·noise for per-sample times ``t`` [B]."""
        return (1.0 - _col(t, x_data)) * x_data + _col(t, x_data) * noise

    def sample_t(
        self, batch_size: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
    ) -> Tensor:
        """Training times [B] (float32): drawn from ``t_sampling`` then shifted."""
        if self.cfg.t_sampling == "uniform":
            t = torch.rand(batch_size, generator=generator, device=device)
        else:
            z = torch.randn(batch_size, generator=generator, device=device)
            t = torch.sigmoid(self.cfg.logit_mean + self.cfg.logit_std * z)
        return shift_time(t, self.cfg.shift)

    def time_grid(self, steps: int, device: torch.device | str = "cpu") -> Tensor:
        """Sampling grid [steps + 1] (fp64) from 1 (noise) to 0 (data): shifted ``linspace(1, 0, N + 1)``."""
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        grid = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64, device=device)
        return shift_time(grid, self.cfg.shift)

    def corrupt(
        self, x_data: Tensor, generator: torch.Generator | None = None, *, t: Tensor | float | None = None
    ) -> Noised:
        """Draw t (``sample_t``) and noise ~ N(0, I) on ``x_data.device`` (from ``generator`` if given, which
        must live on that device) and return the noised batch with ``target = noise − x_data``.

        ``t`` (tests, analysis): fixed times instead of random ones, a float or ``[B]``, used as given (not
        shifted).
        """
        check_video(x_data, "x_data")
        B, device = x_data.shape[0], x_data.device
        if t is None:
            t = self.sample_t(B, generator, device)
        else:
            t = torch.as_tensor(t, dtype=torch.float32, device=device).expand(B)
            if not bool(((t >= 0) & (t <= 1)).all()):
                raise ValueError(f"t must lie in [0, 1], got {t.tolist()}")
        noise = torch.randn(x_data.shape, generator=generator, device=device, dtype=x_data.dtype)
        dtype = torch.promote_types(x_data.dtype, torch.float32)
        x_t = self.path(x_data.to(dtype), noise.to(dtype), t).to(x_data.dtype)
        return Noised(
            x_data=x_data,
            noise=noise,
            x_t=x_t,
            t=t,
            t_model=t * self.cfg.t_model_scale,
            target=noise - x_data,
        )

    def _check_pred(self, pred: Tensor, x_t: Tensor) -> None:
        if pred.shape != x_t.shape:
            raise ValueError(f"pred must have shape {tuple(x_t.shape)} (as x_t), got {tuple(pred.shape)}")

    def velocity(self, pred: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """The network's output as a velocity: itself, or (x_t − x̂)/max(t, t_min) for ``prediction="x"``."""
        if self.cfg.prediction == "velocity":
            return pred
        return (x_t - pred) / _col(t.clamp(min=self.cfg.t_min), x_t)

    def loss_terms(self, pred: Tensor, noised: Noised) -> dict[str, Tensor]:
        """Per-sample terms ``[B]``: ``"mse"``, the mean squared velocity error."""
        check_video(pred, "pred")
        self._check_pred(pred, noised.x_t)
        dtype = torch.promote_types(pred.dtype, torch.float32)  # losses in >= fp32
        if self.cfg.prediction == "x":
            # v̂ − v = (x_t − x̂)/t − (x_t − x)/t, with JiT's clamped t in both: (x − x̂)/max(t, t_min).
            t = noised.t.clamp(min=self.cfg.t_min)
            err = (noised.x_data.to(dtype) - pred.to(dtype)) / _col(t, pred.to(dtype))
        else:
            err = pred.to(dtype) - noised.target.to(dtype)
        return {"mse": (err**2).mean(dim=(1, 2, 3, 4))}

    def loss(self, pred: Tensor, noised: Noised) -> Tensor:
        """Per-sample loss ``[B]``: the sum of ``loss_terms``."""
        return sum(self.loss_terms(pred, noised).values())

    @torch.no_grad()
    def sample(
        self, denoise_fn: DenoiseFn, noise: Tensor, steps: int, generator: torch.Generator | None = None
    ) -> Tensor:
        """Integrate from ``noise`` (t = 1) to t = 0 in ``steps`` Euler or Heun steps, in ``noise.dtype``.

        Heun applies its second-order correction on every step but the last, which is Euler, so the network is
        never evaluated at t = 0 (EDM Alg. 1; REPA's ``euler_sampler(heun=True)`` does the same).
        ``generator`` is unused (both solvers are deterministic); it is part of the common interface.
        """
        del generator
        check_video(noise, "noise")
        B = noise.shape[0]
        x = noise.to(torch.promote_types(noise.dtype, torch.float32))
        grid = self.time_grid(steps)  # on the CPU: read as Python floats, no device syncs

        def velocity(x: Tensor, t: Tensor) -> Tensor:
            t_model = torch.full((B,), float(t) * self.cfg.t_model_scale, device=x.device)
            pred = denoise_fn(x, t_model)
            self._check_pred(pred, x)
            return self.velocity(pred.to(x.dtype), x, torch.full((B,), float(t), device=x.device))

        for j in range(steps):
            t_cur, t_next = grid[j], grid[j + 1]
            h = float(t_next - t_cur)  # negative: integrating toward the data
            d = velocity(x, t_cur)
            x_next = x + h * d
            if self.cfg.sampler == "heun" and j < steps - 1:
                x_next = x + h * 0.5 * (d + velocity(x_next, t_next))
            x = x_next
        return x.to(noise.dtype)
