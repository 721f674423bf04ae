"""Flow matching on the linear path with a velocity target, as SiT/REPA train it, and as Wan 2.1 / FlashI2V
train and sample it.

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

Wan 2.1 and FlashI2V (``FlowConfig.wan()``; ``anchors-conditioning.md`` §1.2, ``anchors-modules.md``
§3.3, §3.6). Wan's σ is this module's t (σ = 1 is noise), its network sees ``t_model = 1000·σ`` and the
velocity target is ``noise − x_data``: the path above, unchanged.

- Training times: logit-normal σ = sigmoid(N(0, 1)), then shifted by exp(μ) with μ = seq_len·k + b, the line
  through (256, 0.5) and (4096, 1.15) (``dynamic_shift``; FlashI2V
  ``flashi2v/schedulers/flow_matching.py::FlowMatchingScheduler._set_sigmas`` with
  ``configs/train/gpu/flashi2v_*.yaml``: ``use_dynamic_shifting``, ``use_logitnorm_time_sampling``; the same
  line as diffusers' ``calculate_shift``). seq_len is one latent frame's tokens, h·w // (ph·pw) for latents
  [B, F, C, h, w] and Wan's spatial patch (2, 2): FlashI2V's ``image_seq_len = h * w // 4``
  (``FlowMatchingScheduler.q_sample``), 1560 at 480 × 832 (μ = 0.72, shift 2.06). Wan 2.1's own training code
  is not public; FlashI2V, which fine-tunes Wan2.1-T2V, is the released recipe.
- Samplers, reproducing the diffusers loops as ``WanPipeline`` / ``WanImageToVideoPipeline.__call__`` drive
  them (``sampling_grid="diffusers"``): ``scheduler.set_timesteps(N)``, then per step the network at
  ``timestep = t.expand(B)``, CFG ``uncond + g·(cond − uncond)`` (``minivdit.sample.cfg_denoise_fn``, same
  order), ``scheduler.step``; fp32 latents from ``prepare_latents``.
  - ``sampler="euler"``: ``FlowMatchEulerDiscreteScheduler(shift=s)`` (``euler_schedule``; the scheduler of
    diffusers' Wan pipeline tests and its conversion script); ``step`` is x + (σ_{i+1} − σ_i)·v in fp32.
  - ``sampler="unipc"``: ``UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
    flow_shift=s)``, Wan's default sampler (Wan2.1 ``generate.py`` ``--sample_solver unipc``; diffusers' Wan
    docs), solver order 2, bh2, ``lower_order_final``, ``final_sigmas_type="zero"`` (``unipc_schedule`` and
    ``minivdit.objectives.unipc``).
  - ``shift``: the pipelines' ``flow_shift``: 3.0 for 480p, 5.0 for 720p (diffusers' Wan docs; Wan2.1
    ``generate.py`` defaults to 5.0, 3.0 for I2V at 480p); FlashI2V samples with 7.0.
  - FlashI2V's own sampler (``FlowMatchingScheduler.sample``, ``_step``) is Euler on shift(linspace(1, 0,
    N + 1)) with t = 1000σ, i.e. ``sampler="euler", sampling_grid="linear"`` here (its grid is float32 on the
    device, ours float64: a few float32 ulps apart).

Deviations from diffusers (Wan):
- dtype: the pipelines feed ``latents.to(transformer_dtype)`` and combine CFG in the model's dtype; the Euler
  ``step`` then casts the new latents to the model output's dtype (bf16 after the first step of a bf16 run),
  and UniPC forms σ·v in it. Here the state, the guidance combination (``cfg_denoise_fn`` upcasts the
  prediction) and the update stay in ≥ fp32 whatever the network's precision (FlashI2V asserts fp32
  latents too): a bf16 run is the fp32 pipeline's loop around a bf16 network, not the bf16 pipeline's loop.
  A float64 state stays float64 (diffusers' Euler step would round it to float32);
- the original Wan sampler (``wan/utils/fm_solvers_unipc.py``) builds its grid from its training table,
  shift(linspace(0.999, 0, N + 1)[:-1]); diffusers (reproduced here) uses shift(linspace(1, 0.001,
  N + 1)[:-1]) with σ_0 = 1 − 1e-6. The two grids differ slightly; only the diffusers one is checked;
- diffusers' ``FlowMatchEulerDiscreteScheduler`` shifts its smallest σ twice (``euler_schedule``): kept, as
  the pipelines run it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from minivdit.config import check_types
from minivdit.objectives import Noised, check_video
from minivdit.objectives.unipc import unipc_flow_sample

DenoiseFn = Callable[[Tensor, Tensor], Tensor]
"""``denoise_fn(x_t [B, F, C, H, W], t_model [B]) -> pred [B, F, C, H, W]`` (the velocity, or x̂ with
``prediction="x"``)."""


@dataclass(frozen=True, kw_only=True)
class FlowConfig:
    """Linear-path flow matching (REPA/SiT defaults except ``t_model_scale``; ``wan()`` for Wan 2.1)."""

    t_sampling: Literal["uniform", "logit_normal"] = "uniform"
    """Training time distribution: U[0, 1] (REPA/SiT) or sigmoid(N(logit_mean, logit_std²)) (SD3)."""
    logit_mean: float = 0.0
    """Mean of the normal pushed through the sigmoid (``logit_normal`` only; SD3: 0)."""
    logit_std: float = 1.0
    """Std of the normal pushed through the sigmoid (``logit_normal`` only; SD3: 1)."""
    shift: float = 1.0
    """Timestep shift t' = s·t / (1 + (s − 1)·t) (SD3/flux), applied to training times and to the sampling
    grid. 1 = none; s > 1 spends more time near noise (used for larger resolutions / longer videos). With
    ``dynamic_shift`` it shifts the sampling grid only (the Wan pipelines' ``flow_shift``)."""
    t_model_scale: float = 1000.0
    """The network is conditioned on t · t_model_scale. 1.0 = REPA/SiT parity (raw t); 1000 matches the range
    of DDPM indices that DiT-style sinusoidal timestep embedders are tuned for (flux ``time_factor``, Wan).
    With ``sampling_grid="diffusers"`` it is the schedulers' ``num_train_timesteps`` (an integer)."""
    sampler: Literal["euler", "heun", "unipc"] = "euler"
    """ODE solver: Euler (N evaluations), Heun (2N − 1 evaluations; the last step is Euler, as EDM), or
    UniPC-bh2 of order 2 (N evaluations; diffusers' ``UniPCMultistepScheduler`` with flow sigmas, Wan's
    default; needs ``sampling_grid="diffusers"``)."""
    sampling_grid: Literal["linear", "diffusers"] = "linear"
    """Sampling times and the network's timesteps. "linear": shift(linspace(1, 0, N + 1)) in fp64 with
    t_model = t·t_model_scale (REPA; FlashI2V's own sampler). "diffusers": the grid of the diffusers scheduler
    the Wan pipelines drive, float32 σ and the scheduler's timesteps: ``FlowMatchEulerDiscreteScheduler``
    (``sampler="euler"``, ``euler_schedule``) or ``UniPCMultistepScheduler`` (``sampler="unipc"``,
    ``unipc_schedule``)."""
    prediction: Literal["velocity", "x"] = "velocity"
    """What the network outputs: the velocity (REPA/SiT) or the clean data x̂ (JiT), converted to the
    velocity (x_t − x̂)/t for the loss and the sampler (see the module docstring)."""
    t_min: float = 0.05
    """``prediction="x"`` only: the t in (x_t − x̂)/t is clamped at this value (JiT: 0.05)."""
    dynamic_shift: bool = False
    """Shift the training times by exp(μ), μ linear in the sequence length of the input (``seq_len_shift``;
    FlashI2V's training, Flux), instead of by ``shift``, which then shifts the sampling grid only."""
    base_shift: float = 0.5
    """μ at ``base_seq_len`` tokens (``dynamic_shift``; FlashI2V and diffusers: 0.5)."""
    max_shift: float = 1.15
    """μ at ``max_seq_len`` tokens (``dynamic_shift``; FlashI2V and diffusers: 1.15)."""
    base_seq_len: int = 256
    """Sequence length at which μ = ``base_shift`` (``dynamic_shift``; 256)."""
    max_seq_len: int = 4096
    """Sequence length at which μ = ``max_shift`` (``dynamic_shift``; 4096). Beyond either end μ is
    extrapolated, unclamped, as FlashI2V and diffusers' ``calculate_shift`` do."""
    seq_patch: tuple[int, int] = (2, 2)
    """Spatial patch (ph, pw) of the backbone. The dynamic shift's sequence length is one latent frame's
    tokens, H·W // (ph·pw) (FlashI2V's ``image_seq_len = h * w // 4`` with Wan's (1, 2, 2) patch)."""

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
        if self.sampler == "unipc" and self.sampling_grid != "diffusers":
            raise ValueError(
                "sampler='unipc' is diffusers' UniPCMultistepScheduler, which runs on its own grid (σ_0 = "
                f"1 − 1e-6: λ = log((1 − σ)/σ) must be finite): set sampling_grid='diffusers', got "
                f"sampling_grid={self.sampling_grid!r}"
            )
        if self.sampler == "heun" and self.sampling_grid != "linear":
            raise ValueError(
                "sampler='heun' runs on sampling_grid='linear' only, got "
                f"sampling_grid={self.sampling_grid!r}"
            )
        if self.sampling_grid == "diffusers" and not (
            self.t_model_scale >= 2.0 and self.t_model_scale == round(self.t_model_scale)
        ):
            raise ValueError(
                "sampling_grid='diffusers' reads t_model_scale as the schedulers' num_train_timesteps, an "
                f"integer >= 2, got t_model_scale={self.t_model_scale}"
            )
        if self.base_seq_len < 1 or self.max_seq_len <= self.base_seq_len:
            raise ValueError(
                "need 1 <= base_seq_len < max_seq_len, got "
                f"base_seq_len={self.base_seq_len}, max_seq_len={self.max_seq_len}"
            )
        if min(self.seq_patch) < 1:
            raise ValueError(f"seq_patch must be positive, got {self.seq_patch}")

    @classmethod
    def wan(
        cls, shift: float = 3.0, sampler: Literal["unipc", "euler"] = "unipc", **overrides: Any
    ) -> FlowConfig:
        """Wan 2.1's objective and sampler as released (module docstring, "Wan 2.1 and FlashI2V").

        Training: velocity target noise − x_data, ``t_model = 1000·σ``, logit-normal σ (mean 0, std 1) with
        the dynamic shift exp(μ), μ from 0.5 at 256 to 1.15 at 4096 tokens of one latent frame, patch 2 × 2
        (FlashI2V's training config on Wan2.1-T2V). Sampling: ``sampler="unipc"``, diffusers'
        ``UniPCMultistepScheduler`` as the Wan pipelines use it, with ``flow_shift = shift``: 3.0 for 480p,
        5.0 for 720p; ``sampler="euler"``: ``FlowMatchEulerDiscreteScheduler(shift=shift)``. The step count
        (50 for T2V, 40 for I2V in Wan2.1's ``generate.py``) and the guidance scale (5.0) are the sampling
        call's. FlashI2V's sampler: ``wan(7.0, "euler", sampling_grid="linear")``. ``overrides`` replace
        single fields (validated as usual).
        """
        fields: dict[str, Any] = dict(
            t_sampling="logit_normal",
            logit_mean=0.0,
            logit_std=1.0,
            dynamic_shift=True,
            base_shift=0.5,
            max_shift=1.15,
            base_seq_len=256,
            max_seq_len=4096,
            seq_patch=(2, 2),
            t_model_scale=1000.0,
            prediction="velocity",
            shift=float(shift),
            sampler=sampler,
            sampling_grid="diffusers",
        )
        fields.update(overrides)
        return cls(**fields)


def shift_time(t: Tensor, shift: float) -> Tensor:
    """SD3/flux timestep shift t' = s·t / (1 + (s − 1)·t): a monotone map of [0, 1] onto itself, fixing 0, 1.

    It is the time at which the noise-to-signal ratio t/(1−t) is s times that at t (SD3 §5.3.2).
    """
    if shift == 1.0:
        return t
    return shift * t / (1.0 + (shift - 1.0) * t)


def seq_len_shift(
    seq_len: int,
    *,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
) -> float:
    """The dynamic shift exp(μ), μ = seq_len·k + b on the line through (base_seq_len, base_shift) and
    (max_seq_len, max_shift), unclamped (FlashI2V ``FlowMatchingScheduler.__init__`` and
    ``_set_sigmas``; diffusers ``calculate_shift``, whose μ the schedulers use as exp(μ) with
    ``time_shift_type="exponential"``)."""
    k = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    b = base_shift - k * base_seq_len
    return math.exp(seq_len * k + b)


def euler_schedule(steps: int, shift: float, num_train_timesteps: int = 1000) -> tuple[Tensor, Tensor]:
    """σ [steps + 1] and the network's timesteps [steps], both float32, of diffusers'
    ``FlowMatchEulerDiscreteScheduler(shift=shift, num_train_timesteps=T).set_timesteps(steps)``
    (``schedulers/scheduling_flow_match_euler_discrete.py``, ``__init__`` and ``set_timesteps``).

    The scheduler's training table is σ = shift(k / T), k = T … 1, in float32. Its ends σ_max = shift(1) = 1
    and σ_min = shift(1/T) bound the sampling grid linspace(T·σ_max, T·σ_min, steps) / T (float64), which is
    shifted again: σ_min is shifted twice (for shift 5 and T = 1000 the last nonzero σ is 0.0245, not 0.005).
    Rounded to float32, with σ = 0 appended; timesteps = float32 σ·T. The float64 part runs in numpy, as the
    scheduler runs it, so that the grid is the same to the bit.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    T = num_train_timesteps
    ends = torch.tensor([float(T), 1.0], dtype=torch.float32) / T  # the table's first and last entries
    ends = shift * ends / (1 + (shift - 1) * ends)
    sigma_max, sigma_min = float(ends[0]), float(ends[1])
    grid = np.linspace(sigma_max * T, sigma_min * T, steps) / T
    grid = shift * grid / (1 + (shift - 1) * grid)
    sigmas = torch.from_numpy(grid).to(torch.float32)
    return torch.cat([sigmas, sigmas.new_zeros(1)]), sigmas * T


def unipc_schedule(steps: int, shift: float, num_train_timesteps: int = 1000) -> tuple[Tensor, Tensor]:
    """σ [steps + 1] and the network's timesteps [steps], both float32, of diffusers'
    ``UniPCMultistepScheduler(use_flow_sigmas=True, flow_shift=shift, final_sigmas_type="zero",
    num_train_timesteps=T).set_timesteps(steps)`` (``schedulers/scheduling_unipc_multistep.py``).

    σ = shift(linspace(1, 1/T, steps + 1)[:-1]) in float64, with σ_0 = 1 lowered by 1e-6 (λ = log((1 − σ)/σ)
    must be finite at the first step); rounded to float32 with 0 appended. Timesteps: ``int64(σ·T)`` from the
    float64 σ, i.e. truncated toward zero (999 at the first step), which the network then sees as a float.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    T = num_train_timesteps
    grid = np.linspace(1.0, 1.0 / T, steps + 1)[:-1]
    grid = shift * grid / (1 + (shift - 1) * grid)
    if abs(grid[0] - 1.0) < 1e-6:
        grid[0] -= 1e-6
    t_model = torch.from_numpy(grid * T).to(torch.int64).to(torch.float32)
    return torch.from_numpy(np.concatenate([grid, [0.0]])).to(torch.float32), t_model


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

    def seq_len(self, shape: tuple[int, ...] | torch.Size) -> int:
        """Tokens of one frame of a ``[B, F, C, H, W]`` input, H·W // (ph·pw) (``seq_patch``): the sequence
        length of the dynamic shift (FlashI2V's ``image_seq_len``)."""
        if len(shape) != 5:
            raise ValueError(f"seq_len needs a [B, F, C, H, W] shape, got {tuple(shape)}")
        (H, W), (ph, pw) = shape[3:], self.cfg.seq_patch
        if H % ph or W % pw:
            raise ValueError(
                f"H×W = {H}×{W} of shape {tuple(shape)} is not divisible by seq_patch {(ph, pw)}"
            )
        return H * W // (ph * pw)

    def train_shift(self, shape: tuple[int, ...] | torch.Size) -> float:
        """The shift of the training times for inputs of ``shape``: exp(μ(seq_len(shape))) with
        ``dynamic_shift``, else ``shift``."""
        c = self.cfg
        if not c.dynamic_shift:
            return c.shift
        return seq_len_shift(
            self.seq_len(shape),
            base_shift=c.base_shift,
            max_shift=c.max_shift,
            base_seq_len=c.base_seq_len,
            max_seq_len=c.max_seq_len,
        )

    def sample_t(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
        *,
        shape: tuple[int, ...] | torch.Size | None = None,
    ) -> Tensor:
        """Training times [B] (float32): drawn from ``t_sampling`` then shifted (``train_shift``; ``shape``,
        the input's ``[B, F, C, H, W]``, is needed with ``dynamic_shift``)."""
        if self.cfg.dynamic_shift and shape is None:
            raise ValueError("dynamic_shift=True: sample_t needs the input's shape (shape=x_data.shape)")
        if self.cfg.t_sampling == "uniform":
            t = torch.rand(batch_size, generator=generator, device=device)
        else:
            z = torch.randn(batch_size, generator=generator, device=device)
            t = torch.sigmoid(self.cfg.logit_mean + self.cfg.logit_std * z)
        return shift_time(t, self.train_shift(shape) if shape is not None else self.cfg.shift)

    def time_grid(self, steps: int, device: torch.device | str = "cpu") -> Tensor:
        """Sampling grid [steps + 1] (fp64) from 1 (noise) to 0 (data): shifted ``linspace(1, 0, N + 1)``
        (``sampling_grid="linear"``)."""
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        grid = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64, device=device)
        return shift_time(grid, self.cfg.shift)

    def diffusers_schedule(self, steps: int) -> tuple[Tensor, Tensor]:
        """``(σ [steps + 1], t_model [steps])``, float32, of ``sampling_grid="diffusers"``: the sampler's
        diffusers scheduler (``euler_schedule`` or ``unipc_schedule``) with ``shift``."""
        T = int(self.cfg.t_model_scale)
        if self.cfg.sampler == "unipc":
            return unipc_schedule(steps, self.cfg.shift, T)
        return euler_schedule(steps, self.cfg.shift, T)

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
            t = self.sample_t(B, generator, device, shape=x_data.shape)
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
        """Integrate from ``noise`` (t = 1) to t = 0 in ``steps`` steps of ``sampler`` on ``sampling_grid``,
        with the state in at least fp32; returns ``noise.dtype``.

        Heun applies its second-order correction on every step but the last, which is Euler, so the network is
        never evaluated at t = 0 (EDM Alg. 1; REPA's ``euler_sampler(heun=True)`` does the same); neither
        Euler nor UniPC evaluates it there either. ``generator`` is unused (every solver here is
        deterministic); it is part of the common interface.
        """
        del generator
        check_video(noise, "noise")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        x = noise.to(torch.promote_types(noise.dtype, torch.float32))
        if self.cfg.sampling_grid == "diffusers":
            x = self._sample_diffusers(denoise_fn, x, steps)
        else:
            x = self._sample_linear(denoise_fn, x, steps)
        return x.to(noise.dtype)

    def _model_velocity(self, denoise_fn: DenoiseFn, x: Tensor, t_model: float, t: float) -> Tensor:
        """The network at ``x`` (conditioned on ``t_model``) as a velocity at time ``t``, in ``x``'s dtype."""
        B = x.shape[0]
        pred = denoise_fn(x, torch.full((B,), t_model, device=x.device, dtype=torch.float32))
        self._check_pred(pred, x)
        return self.velocity(pred.to(x.dtype), x, torch.full((B,), t, device=x.device))

    def _sample_linear(self, denoise_fn: DenoiseFn, x: Tensor, steps: int) -> Tensor:
        """Euler or Heun on ``time_grid`` (fp64, read as Python floats: no device syncs)."""
        grid = self.time_grid(steps)

        def velocity(x: Tensor, t: Tensor) -> Tensor:
            return self._model_velocity(denoise_fn, x, float(t) * self.cfg.t_model_scale, float(t))

        for j in range(steps):
            t_cur, t_next = grid[j], grid[j + 1]
            h = float(t_next - t_cur)  # negative: integrating toward the data
            d = velocity(x, t_cur)
            x_next = x + h * d
            if self.cfg.sampler == "heun" and j < steps - 1:
                x_next = x + h * 0.5 * (d + velocity(x_next, t_next))
            x = x_next
        return x

    def _sample_diffusers(self, denoise_fn: DenoiseFn, x: Tensor, steps: int) -> Tensor:
        """The Wan pipelines' loop over ``diffusers_schedule``: Euler as
        ``FlowMatchEulerDiscreteScheduler.step`` (x + (σ_{i+1} − σ_i)·v, the difference a float32 0-dim
        tensor) or UniPC (``unipc_flow_sample``)."""
        sigmas, t_model = self.diffusers_schedule(steps)

        def velocity(x: Tensor, i: int) -> Tensor:
            return self._model_velocity(denoise_fn, x, float(t_model[i]), float(sigmas[i]))

        if self.cfg.sampler == "unipc":
            return unipc_flow_sample(velocity, x, sigmas)
        for i in range(steps):
            x = x + (sigmas[i + 1] - sigmas[i]) * velocity(x, i)
        return x
