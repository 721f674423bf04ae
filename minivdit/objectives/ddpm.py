"""DDPM objective: ε-prediction with the learned-range σ and the VB (Latte/DiT), or CogVideoX's v-objective.

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

CogVideoX (``DDPMConfig.cogvideox()``; ``anchors-cogvideox.md`` §3). The released CogVideoX checkpoints were
trained and are sampled with diffusers' ``CogVideoXDDIMScheduler`` configured as
``beta_schedule="scaled_linear"`` (β from 0.00085 to 0.012, ``linspace(√β_0, √β_1, T)²`` with no 1000/T
scaling), T = 1000, ``prediction_type="v_prediction"``, ``snr_shift_scale`` 1.0 (5B, 5B-I2V) or 3.0 (2B),
``rescale_betas_zero_snr=True``, ``set_alpha_to_one=True`` and ``timestep_spacing="trailing"``. Here these
settings are config fields of this objective:

- ``beta_schedule="scaled_linear"``;
- ``snr_shift_scale = s``: ᾱ ← ᾱ / (s + (1 − s) ᾱ), so SNR ← SNR / s (the SD3-style shift CogVideoX applies
  to ᾱ). It is applied before the zero-terminal-SNR rescale, in the scheduler's order;
- ``zero_terminal_snr``: Lin et al. 2024 ("Common Diffusion Noise Schedules and Sample Steps are Flawed",
  Alg. 1). √ᾱ is shifted so that its last entry is 0, then scaled so that its first entry is unchanged.
  Result: ᾱ_{T−1} = 0 exactly, x_t = noise at i = T − 1, β_{T−1} = 1;
- ``prediction="v"``: the network outputs v = √ᾱ·noise − √(1 − ᾱ)·x_data (Salimans & Ho 2022). Then
  x̂_data = √ᾱ·x_t − √(1 − ᾱ)·v̂, which is finite at ᾱ = 0 (ε-prediction is not: x̂_data = (x_t − ε̂)/0);
- ``timestep_spacing="trailing"`` with ``sampler="ddim"`` (η = 0): diffusers' sampling loop, replicated
  exactly (``_sample_trailing``). The network is evaluated at ``trailing_timesteps(T, steps)``, i.e. 999,
  979, …, 19 for 50 steps. Each step goes from ᾱ[t] to ᾱ[t − T // steps], and to 1 (``set_alpha_to_one``)
  once that index is negative. CogVideoXDDIMScheduler's ``step`` is classic DDIM with η = 0 written as
  x_prev = a·x_t + b·x̂_data with a = √((1 − ᾱ_prev)/(1 − ᾱ_t)) and b = √ᾱ_prev − √ᾱ_t·a (its ``eta``
  argument is ignored);
- training is unchanged: i ~ U{0..T−1}, x_t = √ᾱ_i·x_data + √(1 − ᾱ_i)·noise, ``target`` = v, and the loss
  is the per-sample MSE on v. The official CogVideoX loss (diffusers
  ``examples/cogvideo/train_cogvideox_*_lora.py``, CogVideo ``finetune/``, finetrainers) is
  mean(1/(1 − ᾱ)·(x̂_data − x_data)²) with x̂_data = ``scheduler.get_velocity(v̂, x_t, t)``
  = √ᾱ·x_t − √(1 − ᾱ)·v̂. Since x̂_data − x_data = −√(1 − ᾱ)(v̂ − v), that is exactly the v-MSE, so no
  weighting field is needed. The weight is 1 at ᾱ = 0 (i = T − 1) and largest at i = 0: 1/(1 − ᾱ_0) ≈ 1176
  (shift 1) or 393 (shift 3). That is finite, but in the official form it multiplies a difference that is
  cancelled down to √(1 − ᾱ_0) ≈ 0.03 of v̂ − v;
- the dynamic CFG scale of the diffusers pipelines (``use_dynamic_cfg``) is ``dynamic_cfg_scale``. The
  guidance wrapper lives in ``minivdit.sample``;
- ``sampler="dpm"`` (``DDPMConfig.cogvideox(sampler="dpm")``, ``python -m minivdit.sample --sampler dpm``):
  diffusers' ``CogVideoXDPMScheduler`` (``schedulers/scheduling_dpm_cogvideox.py``, ``step`` and
  ``get_variables``/``get_mult``) driven as the denoising loops of ``pipeline_cogvideox.py`` and
  ``pipeline_cogvideox_image2video.py`` drive it: ``old_pred_original_sample`` carried between steps,
  ``timesteps[i − 1]`` as ``timestep_back``, the pipeline's ``generator`` passed to ``step``. It is the SDE
  variant of DPM-Solver++(2M) in log-SNR: stochastic, two noise draws per step after the first (the first
  discarded), one on the last; ``_sample_dpm`` gives the formulas. The schedule tables are the DDIM path's
  (the scheduler builds them identically). CogVideo's ``inference/cli_demo.py`` recommends it for
  CogVideoX-5B and 5B-I2V and DDIM for 2B ("We recommend using `CogVideoXDDIMScheduler` for CogVideoX-2B.
  using `CogVideoXDPMScheduler` for CogVideoX-5B / CogVideoX-5B-I2V"). With the same ``torch.Generator``
  state after the initial noise, the result equals the pipeline's loop up to float32 rounding
  (``tests/test_ddpm_cogvideox.py``, diffusers as the oracle).

Deviations from diffusers (CogVideoX DPM): the pipeline casts its latents to the transformer's dtype after
every step and draws the step noise in that dtype (bf16 in a bf16 pipeline); here the state and the noise
stay fp32 whatever ``--precision`` (only the network runs in bf16), so a bf16 run matches the fp32 pipeline,
not the bf16 one. ``eta`` and ``clip_denoised`` are refused with ``sampler="dpm"`` (the scheduler ignores
both).

Deviations from diffusers (CogVideoX):
- the loss is computed as the v-MSE in at least fp32. diffusers computes x̂_data = ``get_velocity`` in the
  model dtype, casting ᾱ to it; in bf16, ᾱ_0 = 0.99915 rounds to 1.0. The two are equal in exact arithmetic
  and differ only by rounding (pinned to 1e-5 in fp32 by ``tests/test_ddpm_cogvideox.py``);
- ``trailing_timesteps`` returns exactly ``steps`` indices. diffusers' ``np.arange(T, 0, -T/steps)`` yields
  one extra entry, −1, for some step counts (61, 103, 121, … for T = 1000), and its loop would then call the
  model at t = −1 (ᾱ[−1] = ᾱ[T−1]). For every other count the indices are identical. The jump of T // steps,
  which differs from the list's spacing when steps does not divide T (for 7 steps the loop ends at ᾱ[0], not
  1), is kept as diffusers has it;
- ``eta > 0`` and ``clip_denoised`` are honoured on the trailing path (classic DDIM σ, ε re-derived from the
  clipped x̂_data). CogVideoXDDIMScheduler ignores both. The CogVideoX preset sets η = 0 and no clipping,
  and is exact;
- ``learn_sigma`` (the learned-range σ and the VB) is only defined for ε-prediction. ``prediction="v"``
  requires ``learn_sigma=False``, and ``zero_terminal_snr`` requires ``prediction="v"``. Sampling v-models
  with the DiT respacing (``timestep_spacing="dit"``, DDPM or DDIM) is supported but is not what CogVideoX
  uses.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from minivdit.config import check_types
from minivdit.objectives import Noised, check_video

DenoiseFn = Callable[[Tensor, Tensor], Tensor]
"""``denoise_fn(x_t [B, F, C, H, W], t_model [B]) -> pred [B, F, C or 2C, H, W]``."""


@dataclass(frozen=True, kw_only=True)
class DDPMConfig:
    """Gaussian diffusion with a discrete schedule (Latte/DiT defaults; see ``cogvideox()`` for CogVideoX)."""

    num_timesteps: int = 1000
    """Number of training steps T."""
    beta_start: float = 1e-4
    """First β. "linear": quoted for T = 1000 and scaled by 1000 / T (DiT/IDDPM); "scaled_linear": as is."""
    beta_end: float = 0.02
    """Last β. "linear": quoted for T = 1000 and scaled by 1000 / T (DiT/IDDPM); "scaled_linear": as is."""
    beta_schedule: Literal["linear", "scaled_linear"] = "linear"
    """β schedule: "linear" (DiT/IDDPM, ``linear_betas``) or "scaled_linear" (latent diffusion / CogVideoX,
    ``linspace(√beta_start, √beta_end, T)²``, diffusers, no 1000 / T scaling)."""
    snr_shift_scale: float = 1.0
    """SNR shift s: ᾱ ← ᾱ / (s + (1 − s) ᾱ), i.e. SNR / s, applied before ``zero_terminal_snr``
    (CogVideoXDDIMScheduler; 1.0 = off, CogVideoX-5B; 3.0 for CogVideoX-2B)."""
    zero_terminal_snr: bool = False
    """Rescale the schedule so that ᾱ_{T−1} = 0 (Lin et al. 2024, Alg. 1; diffusers
    ``rescale_betas_zero_snr``). Needs ``prediction="v"``."""
    prediction: Literal["eps", "v"] = "eps"
    """What the network outputs: ε (Latte/DiT) or v = √ᾱ·noise − √(1 − ᾱ)·x_data (CogVideoX)."""
    learn_sigma: bool = True
    """Network outputs 2C channels (ε, v), trained with MSE + VB (Latte/DiT). False: C channels, MSE only, and
    the fixed "large" variance (β) for sampling. Only with ``prediction="eps"``."""
    sampler: Literal["ddpm", "ddim", "dpm"] = "ddpm"
    """Ancestral sampling (Latte's configs), DDIM (Song et al. 2021), or "dpm": diffusers'
    ``CogVideoXDPMScheduler`` loop (a stochastic DPM-Solver++(2M), CogVideo's recommended sampler for 5B and
    5B-I2V; ``timestep_spacing="trailing"`` only, see the module docstring)."""
    eta: float = 0.0
    """DDIM stochasticity (0 = deterministic, 1 = DDPM-like variance); used by ``sampler="ddim"`` only."""
    timestep_spacing: Literal["dit", "trailing"] = "dit"
    """Sampling steps: "dit" (DiT's respacing, ``space_timesteps``, ends at step 0) or "trailing" (diffusers'
    CogVideoX loop, ``trailing_timesteps``: starts at step T − 1; ``sampler="ddim"`` or ``"dpm"``)."""
    set_alpha_to_one: bool = True
    """ᾱ after DDIM's last step: 1 (diffusers ``set_alpha_to_one=True``, CogVideoX) or ᾱ_0. False needs
    ``timestep_spacing="trailing"`` (the DiT respacing always ends at ᾱ = 1)."""
    clip_denoised: bool = False
    """Clamp the predicted ``x_data`` to [-1, 1] while sampling (off in Latte/DiT, which sample latents)."""

    def __post_init__(self) -> None:
        check_types(self)
        if self.num_timesteps < 2:
            raise ValueError(f"num_timesteps must be >= 2, got {self.num_timesteps}")
        if not 0.0 < self.beta_start < self.beta_end:
            raise ValueError(f"need 0 < beta_start < beta_end, got {self.beta_start}, {self.beta_end}")
        if self.beta_schedule == "linear" and self.beta_end * 1000.0 / self.num_timesteps >= 1.0:
            raise ValueError(
                f"beta_end scaled by 1000/T = {self.beta_end * 1000.0 / self.num_timesteps} must be < 1 "
                f"(beta_end={self.beta_end}, num_timesteps={self.num_timesteps})"
            )
        if self.beta_schedule == "scaled_linear" and self.beta_end >= 1.0:
            raise ValueError(f"beta_end must be < 1 with beta_schedule='scaled_linear', got {self.beta_end}")
        if self.beta_schedule not in ("linear", "scaled_linear"):
            raise ValueError(f"beta_schedule must be 'linear' or 'scaled_linear', got {self.beta_schedule!r}")
        if not (math.isfinite(self.snr_shift_scale) and self.snr_shift_scale > 0.0):
            raise ValueError(f"snr_shift_scale must be a finite number > 0, got {self.snr_shift_scale}")
        if self.eta < 0.0:
            raise ValueError(f"eta must be >= 0, got {self.eta}")
        if self.prediction not in ("eps", "v"):
            raise ValueError(f"prediction must be 'eps' or 'v', got {self.prediction!r}")
        if self.prediction == "v" and self.learn_sigma:
            raise ValueError(
                "learn_sigma=True (learned-range σ trained with the VB) is only implemented for "
                "prediction='eps'; set learn_sigma=False with prediction='v'"
            )
        if self.zero_terminal_snr and self.prediction != "v":
            raise ValueError(
                "zero_terminal_snr=True needs prediction='v': at ᾱ_{T-1} = 0 an ε-prediction carries no "
                f"information about x_data (x_t = noise), got prediction={self.prediction!r}"
            )
        if self.timestep_spacing not in ("dit", "trailing"):
            raise ValueError(f"timestep_spacing must be 'dit' or 'trailing', got {self.timestep_spacing!r}")
        if self.sampler not in ("ddpm", "ddim", "dpm"):
            raise ValueError(f"sampler must be 'ddpm', 'ddim' or 'dpm', got {self.sampler!r}")
        if self.timestep_spacing == "trailing" and self.sampler == "ddpm":
            raise ValueError(
                "timestep_spacing='trailing' is implemented for sampler='ddim' or 'dpm', "
                f"got sampler={self.sampler!r}"
            )
        if self.sampler == "dpm" and self.timestep_spacing != "trailing":
            raise ValueError(
                "sampler='dpm' is CogVideoXDPMScheduler's loop, which needs timestep_spacing='trailing', "
                f"got timestep_spacing={self.timestep_spacing!r}"
            )
        if self.sampler == "dpm" and (self.eta != 0.0 or self.clip_denoised):
            raise ValueError(
                "sampler='dpm' takes neither eta nor clip_denoised (CogVideoXDPMScheduler.step ignores "
                f"both), got eta={self.eta}, clip_denoised={self.clip_denoised}"
            )
        if not self.set_alpha_to_one and self.timestep_spacing != "trailing":
            raise ValueError(
                "set_alpha_to_one=False needs timestep_spacing='trailing' (the 'dit' respacing always ends "
                f"at step 0 with ᾱ_prev = 1), got timestep_spacing={self.timestep_spacing!r}"
            )

    @classmethod
    def cogvideox(cls, snr_shift_scale: float = 1.0, **overrides: Any) -> DDPMConfig:
        """The released CogVideoX objective and sampler (diffusers ``CogVideoXDDIMScheduler`` config).

        scaled_linear β 0.00085 → 0.012, T = 1000, v-prediction, zero terminal SNR, SNR shift
        ``snr_shift_scale`` (1.0: 5B / 5B-I2V / 1.5; 3.0: 2B), trailing DDIM with η = 0 and ᾱ = 1 after the
        last step, no learned σ, no clipping; uniform integer training steps (as every DDPM config).
        ``overrides`` replace single fields (validated as usual): ``sampler="dpm"`` samples with
        ``CogVideoXDPMScheduler``'s loop instead (the same schedule; CogVideo's recommended sampler for 5B and
        5B-I2V, with dynamic CFG).
        """
        fields = dict(
            num_timesteps=1000,
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            snr_shift_scale=snr_shift_scale,
            zero_terminal_snr=True,
            prediction="v",
            learn_sigma=False,
            sampler="ddim",
            eta=0.0,
            timestep_spacing="trailing",
            set_alpha_to_one=True,
            clip_denoised=False,
        )
        fields.update(overrides)
        return cls(**fields)


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


def scaled_linear_betas(num_timesteps: int, beta_start: float, beta_end: float) -> Tensor:
    """The "scaled_linear" schedule of latent diffusion / CogVideoX in fp64: ``linspace(√β_0, √β_1, T)²``.

    Unlike ``linear_betas`` there is no 1000 / T scaling (diffusers ``beta_schedule="scaled_linear"``).
    """
    return torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64) ** 2


def shift_snr(alphas_cumprod: Tensor, scale: float) -> Tensor:
    """ᾱ / (s + (1 − s) ᾱ): divides the signal-to-noise ratio ᾱ / (1 − ᾱ) by ``scale`` at every step.

    CogVideoXDDIMScheduler's ``snr_shift_scale`` ("SNR shift following SD3"); ``scale = 1`` is the identity.
    """
    return alphas_cumprod / (scale + (1.0 - scale) * alphas_cumprod)


def rescale_zero_terminal_snr(alphas_cumprod: Tensor) -> Tensor:
    """ᾱ rescaled to zero terminal SNR (Lin et al. 2024, Algorithm 1), in the input's dtype.

    √ᾱ is shifted by its last value (so that ᾱ_{T−1} = 0 exactly) and scaled so that √ᾱ_0 keeps its value:
    √ᾱ' = (√ᾱ − √ᾱ_{T−1}) · √ᾱ_0 / (√ᾱ_0 − √ᾱ_{T−1}).
    """
    root = alphas_cumprod.sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    return root**2


def trailing_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """Step indices, noisiest first, at which diffusers' ``timestep_spacing="trailing"`` runs the network.

    ``round(T − n · T / steps) − 1`` for n = 0 … steps − 1 (999, 979, …, 19 for T = 1000 and 50 steps; Lin et
    al. 2024, Table 2). The arithmetic follows ``np.round(np.arange(T, 0, -T / steps)) - 1``: numpy fills an
    arange with the increment ``(T − T/steps) − T``, not ``−T/steps`` (hence ``delta`` below), and rounds
    half to even (as Python's ``round``). Exactly ``steps`` entries are returned: for some counts (61, 103,
    …) numpy's arange has one more element, which would be the step index −1 (see the module docstring).
    """
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must be in [1, {num_timesteps}] (num_timesteps), got {steps}")
    delta = (num_timesteps - num_timesteps / steps) - num_timesteps
    return [round(num_timesteps + n * delta) - 1 for n in range(steps)]


def dynamic_cfg_scale(scale: float, timestep: Tensor | float, num_inference_steps: int) -> Tensor | float:
    """The guidance weight of diffusers' CogVideoX pipelines with ``use_dynamic_cfg=True``, exactly.

    ``w = 1 + scale · (1 − cos(π · ((N − t) / N) ** 5)) / 2``, with ``N = num_inference_steps`` and ``t`` the
    integer TRAINING timestep the network is evaluated at (``t.item()`` in the pipeline, 0 … 999). It is used
    as ``uncond + w · (cond − uncond)``, with ``scale`` the pipeline's ``guidance_scale`` (6 by default), so
    w ∈ [1, 1 + scale].

    What the formula does numerically: it reads as a cosine ramp in (N − t) / N, but t runs over 999 … 19, not
    over the loop index 0 … N − 1. For t ≫ N the base (N − t) / N is very negative (−18.98 at t = 999 with
    N = 50), its fifth power reaches −2.46e6, and cos(π · that) is in effect a pseudo-random number per step.
    So w jumps around the whole range [1, 1 + scale] from one step to the next. With scale 6 and 50 trailing
    steps it is 2.29, 2.54, 6.97, 6.42, 2.79, 4.27, 1.04, … . Only the steps with |N − t| ≲ N/2 (t = 59,
    39, 19 for 50 steps) lie on the smooth part near cos = 1: w ≈ 1.00, 1.00, 1.12. This matches SAT's
    ``DynamicCFG`` (CogVideo #267, where the authors call the wave-like schedule intentional). diffusers
    #9641 / PR #13172 propose the loop index instead.

    ``timestep``: a Python number (returns a float, bit-identical to the pipeline's Python-float
    arithmetic) or a tensor, e.g. the ``t_model`` [B] that a sampler passes to ``denoise_fn`` (returns fp64 of
    the same shape, computed element by element with the same Python arithmetic, so also bit-identical).
    """

    def one(t: float) -> float:
        # Python float ** 5.0 of a negative base is real (integral exponent), as in the pipeline.
        base = (num_inference_steps - t) / num_inference_steps
        return 1 + scale * ((1 - math.cos(math.pi * base**5.0)) / 2)

    if isinstance(timestep, Tensor):
        values = [one(float(t)) for t in timestep.detach().cpu().reshape(-1).tolist()]
        return torch.tensor(values, dtype=torch.float64, device=timestep.device).reshape(timestep.shape)
    return one(float(timestep))


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
        """Tables of the process with these β (ᾱ = their cumulative product)."""
        betas = betas.to(torch.float64)
        return cls._from_tables(betas, torch.cumprod(1.0 - betas, dim=0), timestep_map)

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod: Tensor, timestep_map: Tensor) -> Schedule:
        """Tables of the process with exactly these ᾱ (β_k = 1 − ᾱ_k / ᾱ_{k−1}); for schedules defined on ᾱ
        (SNR shift, zero terminal SNR), whose ᾱ would otherwise pick up rounding through a second cumprod."""
        ac = alphas_cumprod.to(torch.float64)
        betas = 1.0 - ac / torch.cat([ac.new_ones(1), ac[:-1]])
        return cls._from_tables(betas, ac, timestep_map)

    @classmethod
    def _from_tables(cls, betas: Tensor, ac: Tensor, timestep_map: Tensor) -> Schedule:
        alphas = 1.0 - betas
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
        if cfg.beta_schedule == "linear":
            betas = linear_betas(T, cfg.beta_start, cfg.beta_end)
        else:
            betas = scaled_linear_betas(T, cfg.beta_start, cfg.beta_end)
        if cfg.snr_shift_scale == 1.0 and not cfg.zero_terminal_snr:
            schedule = Schedule.from_betas(betas, torch.arange(T))
        else:
            # CogVideoXDDIMScheduler's order: cumprod, SNR shift, then the zero-terminal-SNR rescale.
            ac = torch.cumprod(1.0 - betas, dim=0)
            if cfg.snr_shift_scale != 1.0:
                ac = shift_snr(ac, cfg.snr_shift_scale)
            if cfg.zero_terminal_snr:
                ac = rescale_zero_terminal_snr(ac)
            schedule = Schedule.from_alphas_cumprod(ac, torch.arange(T))
        self.schedule = schedule
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

    def sampling_timesteps(self, steps: int) -> list[int]:
        """The original step indices at which ``sample(..., steps)`` runs the network, noisiest first (the
        ``t_model`` values): the reversed ``space_timesteps`` ("dit") or ``trailing_timesteps``."""
        if self.cfg.timestep_spacing == "trailing":
            return trailing_timesteps(self.num_timesteps, steps)
        return space_timesteps(self.num_timesteps, steps)[::-1]

    def _training(self, device: torch.device) -> Schedule:
        if device not in self._training_tables:
            self._training_tables[device] = self.schedule.to(device)
        return self._training_tables[device]

    def pred_channels(self, in_channels: int) -> int:
        """Channels the network must output: ``2C`` (ε, v) with ``learn_sigma``, else ``C`` (ε or v)."""
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

    def velocity(self, x_data: Tensor, i: Tensor, noise: Tensor) -> Tensor:
        """v = √ᾱ_i · noise − √(1 − ᾱ_i) · x_data (the v-prediction target), training process."""
        check_video(x_data, "x_data")
        ac = self._training(x_data.device).alphas_cumprod[i]
        dtype = torch.promote_types(x_data.dtype, torch.float32)
        xd, n = x_data.to(dtype), noise.to(dtype)
        return (_col(ac.sqrt(), xd) * n - _col((1.0 - ac).sqrt(), xd) * xd).to(x_data.dtype)

    def q_posterior_mean_variance(
        self, x_data: Tensor, x_t: Tensor, i: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance and clipped log-variance of q(x_{i−1} | x_i, x_data) in the training process.

        The mean has ``x_t``'s shape; the variances are ``[B, 1, 1, 1, 1]``. Returned in ``x_t``'s dtype.
        """
        return self._q_posterior(self._training(x_t.device), x_data, x_t, i)

    def predict_x_data(self, x_t: Tensor, i: Tensor, pred: Tensor) -> Tensor:
        """x_data implied by the network's ε or v output (``cfg.prediction``; C channels), training process:
        (x_t − √(1 − ᾱ_i) ε) / √ᾱ_i, or √ᾱ_i x_t − √(1 − ᾱ_i) v."""
        return self._x_data_from_pred(self._training(x_t.device), x_t, i, pred)

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

    def _x_data_from_pred(self, s: Schedule, x_t: Tensor, k: Tensor, out: Tensor) -> Tensor:
        """x_data implied by the ε or v channels ``out`` at step k of process ``s``."""
        if self.cfg.prediction == "v":
            ac = s.alphas_cumprod[k]
            return _col(ac.sqrt(), x_t) * x_t - _col((1.0 - ac).sqrt(), x_t) * out
        return self._predict_x_data(s, x_t, k, out)

    def _p_mean_variance(
        self, s: Schedule, pred: Tensor, x_t: Tensor, k: Tensor, clip: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Mean and log-variance of p(x_{k−1} | x_k), and the predicted x_data; ``pred`` as the network's."""
        C = x_t.shape[2]
        x_pred = self._x_data_from_pred(s, x_t, k, pred[:, :, :C])
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
        live on that device) and return the noised batch with ``target = ε``, or ``target = v`` (``velocity``)
        with ``prediction="v"``.

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
            target=self.velocity(x_data, i, noise) if self.cfg.prediction == "v" else noise,
        )

    def loss_terms(self, pred: Tensor, noised: Noised) -> dict[str, Tensor]:
        """Per-sample terms ``[B]``: ``"mse"`` on ε or v (``prediction``), and with ``learn_sigma`` ``"vb"``
        (bits per dim). With ``prediction="v"`` the MSE equals the official CogVideoX loss
        mean(1/(1 − ᾱ)·(x̂_data − x_data)²) (module docstring)."""
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
        self,
        denoise_fn: DenoiseFn,
        noise: Tensor,
        steps: int,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> Tensor:
        """Run the reverse process from ``noise`` (t = 1) to a sample (t = 0), in ``noise``'s dtype.

        ``timestep_spacing="dit"``: the respaced process (``respaced``), ancestral or DDIM. ``"trailing"``:
        diffusers' CogVideoXDDIMScheduler loop (``set_timesteps(steps)``, then ``step`` at each timestep),
        reproduced exactly for η = 0 and no clipping; with ``sampler="dpm"`` CogVideoXDPMScheduler's loop as
        the CogVideoX pipelines drive it (``_sample_dpm``).

        ``denoise_fn(x_t, t_model)`` receives the ORIGINAL step index as ``t_model`` ([B] float32), as DiT's
        ``_WrappedModel`` with ``rescale_timesteps=False`` and as diffusers passes ``timestep``
        (``sampling_timesteps(steps)`` lists them). ``generator`` drives the noise of ancestral, η > 0 DDIM
        and DPM steps; as diffusers' ``randn_tensor``, a generator on another device (a CPU generator for a
        CUDA sample) draws there and the noise is moved, and a list of B generators draws row b from
        generator b (one pipeline call per seed, batched). The sampler state is kept in at least fp32.
        """
        check_video(noise, "noise")
        if isinstance(generator, list) and len(generator) != noise.shape[0]:
            raise ValueError(
                f"a list of generators needs one per sample: got {len(generator)} for a batch of "
                f"{noise.shape[0]} (noise {tuple(noise.shape)})"
            )
        if self.cfg.sampler == "dpm":
            return self._sample_dpm(denoise_fn, noise, steps, generator)
        if self.cfg.timestep_spacing == "trailing":
            return self._sample_trailing(denoise_fn, noise, steps, generator)
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
        # ε re-derived from the (possibly clipped) x_data prediction, as IDDPM's ddim_sample. IDDPM's form
        # divides by √ᾱ; v-models may run at ᾱ = 0 (zero terminal SNR), so they use (x − √ᾱ x̂) / √(1 − ᾱ).
        if self.cfg.prediction == "v":
            eps = (x - _col(ac.sqrt(), x) * x_pred) / _col((1.0 - ac).sqrt(), x)
        else:
            eps = (_col((1.0 / ac).sqrt(), x) * x - x_pred) / _col((1.0 / ac - 1.0).sqrt(), x)
        sigma = self.cfg.eta * ((1.0 - ac_prev) / (1.0 - ac)).sqrt() * (1.0 - ac / ac_prev).sqrt()
        dir_coef = (1.0 - ac_prev - sigma**2).clamp(min=0.0).sqrt()
        x = _col(ac_prev.sqrt(), x) * x_pred + _col(dir_coef, x) * eps
        if k > 0 and self.cfg.eta > 0:
            x = x + _col(sigma, x) * self._randn(x, generator)
        return x

    def _sample_trailing(
        self, denoise_fn: DenoiseFn, noise: Tensor, steps: int, generator: torch.Generator | None
    ) -> Tensor:
        """diffusers' CogVideoXDDIMScheduler loop: the network at ``trailing_timesteps(T, steps)``, and each
        step from ᾱ[t] to ᾱ[t − T // steps] (``final`` once that index is negative).

        The step is the scheduler's, operation for operation: 0-dim fp64 coefficients, cast to the state's
        dtype by the multiplication, and x_prev = a·x_t + b·x̂_data with a = √((1 − ᾱ_prev − σ²) / (1 − ᾱ_t))
        and b = √ᾱ_prev − √ᾱ_t·a. With η = 0, σ² = 0 and this is CogVideoX's step (which has no η). With
        η > 0 it is Song et al.'s DDIM with ε re-derived from x̂_data, plus σ·z except at the last step.
        """
        T, B = self.num_timesteps, noise.shape[0]
        timesteps = trailing_timesteps(T, steps)  # validates steps
        jump = T // steps  # diffusers' prev_timestep = t − T // steps, whatever the list's spacing
        ac_table = self._training(noise.device).alphas_cumprod
        final = ac_table.new_ones(()) if self.cfg.set_alpha_to_one else ac_table[0]
        eta = self.cfg.eta
        x = noise.to(torch.promote_types(noise.dtype, torch.float32))
        for n, t in enumerate(timesteps):
            t_model = torch.full((B,), float(t), device=noise.device, dtype=torch.float32)
            pred = denoise_fn(x, t_model)
            self._check_pred(pred, x)
            pred = pred.to(x.dtype)
            ac = ac_table[t]
            ac_prev = ac_table[t - jump] if t - jump >= 0 else final
            beta = 1.0 - ac
            x_pred = self._x0(x, pred, ac)
            if self.cfg.clip_denoised:
                x_pred = x_pred.clamp(-1.0, 1.0)
            if eta > 0:
                sigma2 = eta**2 * ((1.0 - ac_prev) / beta) * (1.0 - ac / ac_prev)
                a = ((1.0 - ac_prev - sigma2).clamp(min=0.0) / beta) ** 0.5
            else:
                a = ((1.0 - ac_prev) / beta) ** 0.5
            b = ac_prev**0.5 - ac**0.5 * a
            x = a.to(x.dtype) * x + b.to(x.dtype) * x_pred
            if eta > 0 and n < len(timesteps) - 1:
                x = x + (sigma2**0.5).to(x.dtype) * self._randn(x, generator)
        return x.to(noise.dtype)

    def _x0(self, x: Tensor, pred: Tensor, ac: Tensor) -> Tensor:
        """x̂₀ from the network's output at ᾱ = ``ac`` (0-dim fp64, cast by each product as the schedulers do):
        v-prediction √ᾱ·x − √(1−ᾱ)·v̂, ε-prediction (x − √(1−ᾱ)·ε̂) / √ᾱ."""
        beta = 1.0 - ac
        if self.cfg.prediction == "v":
            return (ac**0.5).to(x.dtype) * x - (beta**0.5).to(x.dtype) * pred
        return (x - (beta**0.5).to(x.dtype) * pred) / (ac**0.5).to(x.dtype)

    def _sample_dpm(
        self,
        denoise_fn: DenoiseFn,
        noise: Tensor,
        steps: int,
        generator: torch.Generator | list[torch.Generator] | None,
    ) -> Tensor:
        """diffusers' CogVideoXDPMScheduler loop as the CogVideoX pipelines drive it (module docstring).

        At step n the network runs at t = ``trailing_timesteps(T, steps)[n]``; ᾱ_prev = ᾱ[t − T // steps]
        (``final`` once negative) and, for n > 0, ᾱ_back = ᾱ at the previous timestep (the pipeline passes
        ``timesteps[i − 1]``). With λ(ᾱ) = log √(ᾱ / (1 − ᾱ)), h = λ(ᾱ_prev) − λ(ᾱ_t), r = (λ(ᾱ_t) −
        λ(ᾱ_back)) / h, the scheduler's multipliers are m1 = √((1 − ᾱ_prev)/(1 − ᾱ_t))·e^(−h),
        m2 = expm1(−2h)·√ᾱ_prev, m3 = 1 + 1/(2r), m4 = 1/(2r) and the noise scale σ = √(1 − ᾱ_prev)·
        √(1 − e^(−2h)). Every step draws z and forms m1·x − m2·x̂ + σ·z (first-order SDE-DPM-Solver++). On the
        first step and on the last (prev < 0) that is the result; otherwise the scheduler draws a SECOND z,
        discards the first, and returns m1·x − m2·D + σ·z with D = m3·x̂ − m4·x̂_old (the second-order
        update, x̂_old being the previous step's x̂: the pipeline's ``old_pred_original_sample``). So a run
        of N ≥ 2 steps draws 2N − 2 noise tensors from ``generator``, in this order.

        The arithmetic is the scheduler's, operation for operation: 0-dim fp64 coefficients (the schedule
        table's dtype) cast to the state's dtype by each multiplication. At ᾱ_t = 0 (zero terminal SNR,
        t = T − 1) λ = −∞, so h = +∞, m1 = 0 and r = +∞ at the next step (m3 = 1, m4 = 0): IEEE arithmetic
        gives the scheduler's values, which are finite.
        """
        T, B = self.num_timesteps, noise.shape[0]
        timesteps = trailing_timesteps(T, steps)  # validates steps
        jump = T // steps  # the scheduler's prev_timestep = t − T // steps, as in _sample_trailing
        ac_table = self._training(noise.device).alphas_cumprod
        final = ac_table.new_ones(()) if self.cfg.set_alpha_to_one else ac_table[0]

        def lam(ac: Tensor) -> Tensor:  # log-SNR / 2, CogVideoXDPMScheduler.get_variables' expression
            return ((ac / (1 - ac)) ** 0.5).log()

        x = noise.to(torch.promote_types(noise.dtype, torch.float32))
        x_pred_old: Tensor | None = None
        for n, t in enumerate(timesteps):
            t_model = torch.full((B,), float(t), device=noise.device, dtype=torch.float32)
            pred = denoise_fn(x, t_model)
            self._check_pred(pred, x)
            pred = pred.to(x.dtype)
            ac = ac_table[t]
            ac_prev = ac_table[t - jump] if t - jump >= 0 else final
            x_pred = self._x0(x, pred, ac)
            h = lam(ac_prev) - lam(ac)
            m1 = ((1 - ac_prev) / (1 - ac)) ** 0.5 * (-h).exp()
            m2 = (-2 * h).expm1() * ac_prev**0.5
            sigma = (1 - ac_prev) ** 0.5 * (1 - (-2 * h).exp()) ** 0.5
            dt = x.dtype
            z = self._randn(x, generator)  # drawn at every step, used by the first-order ones only
            if x_pred_old is not None and t - jump >= 0:  # second order: a second draw replaces z
                r = (lam(ac) - lam(ac_table[timesteps[n - 1]])) / h
                m3, m4 = 1 + 1 / (2 * r), 1 / (2 * r)
                d = m3.to(dt) * x_pred - m4.to(dt) * x_pred_old
                z = self._randn(x, generator)
            else:
                d = x_pred
            x, x_pred_old = m1.to(dt) * x - m2.to(dt) * d + sigma.to(dt) * z, x_pred
        return x.to(noise.dtype)

    @staticmethod
    def _randn(like: Tensor, generator: torch.Generator | list[torch.Generator] | None) -> Tensor:
        """N(0, I) of ``like``'s shape, dtype and device, drawn as diffusers' ``randn_tensor``: on the
        generator's device, then moved; a list of generators draws one row each."""
        if isinstance(generator, list):
            rows = [
                torch.randn((1, *like.shape[1:]), generator=g, device=g.device, dtype=like.dtype)
                for g in generator
            ]
            return torch.cat(rows).to(like.device)
        device = generator.device if generator is not None else like.device
        return torch.randn(like.shape, generator=generator, device=device, dtype=like.dtype).to(like.device)
