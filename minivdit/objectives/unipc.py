"""UniPC on the flow-matching path, as diffusers' ``UniPCMultistepScheduler`` runs it for Wan.

Reference: Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion
Models" (Alg. 1 with the B(h) = e^h − 1 variant, "bh2", and data prediction); diffusers
``schedulers/scheduling_unipc_multistep.py`` (``convert_model_output``, ``multistep_uni_p_bh_update``,
``multistep_uni_c_bh_update``, ``step``) configured as the Wan pipelines configure it:
``UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=s,
num_train_timesteps=1000)`` with the defaults ``solver_order=2``, ``solver_type="bh2"``, ``predict_x0=True``,
``lower_order_final=True``, ``disable_corrector=[]``, ``final_sigmas_type="zero"``. The grid (σ, and the
timesteps the network sees) is ``minivdit.objectives.flow.unipc_schedule``. Written from the paper's
equations; the arithmetic follows the scheduler's, operation for operation (below), so that the loop
reproduces the pipeline's to float32 rounding.

On the flow path x_σ = (1 − σ)·x_data + σ·noise the "noise schedule" is α = 1 − σ, with
λ = log(α / σ) (half the log-SNR). Writing m_i = x_i − σ_i·v_i for the data prediction (the network predicts
the velocity v = noise − x_data, so x_data = x − σ·v), h_i = λ_{i+1} − λ_i and B(h) = e^{−h} − 1
(``expm1(−h)``; bh2 in data prediction):

- predictor UniP-p, from σ_i to σ_{i+1} (p = 1 is DPM-Solver++(1), i.e. DDIM):
  x_{i+1} = (σ_{i+1}/σ_i)·x_i − α_{i+1}·B(h_i)·m_i − α_{i+1}·B(h_i)·ρ·D,
  with, for p = 2, D = (m_{i−1} − m_i)/r, r = (λ_{i−1} − λ_i)/h_i and ρ = 1/2 (the paper's and diffusers'
  fixed choice for the second-order predictor); the last term is absent for p = 1;
- corrector UniC-p, once the network has seen the predicted x_i (no extra evaluation): the update from
  x_{i−1} to x_i is redone with m_i included,
  x_i ← (σ_i/σ_{i−1})·x_{i−1} − α_i·B(h)·m_{i−1} − α_i·B(h)·(ρ_1·D + ρ_p·(m_i − m_{i−1})), h = h_{i−1},
  with D from m_{i−2} as above (p = 2, and ρ solving R ρ = b, R = [[1, 1], [r, 1]]) or no D
  (p = 1, ρ_p = 1/2);
  b_k = k!·φ_{k+1}(h)/B(h), through the recursion φ ← φ/(−h) − 1/k!, starting from B(h)/(−h) − 1;
- orders: the predictor uses p = min(2, i + 1, N − i) (one step of warm-up; ``lower_order_final`` makes the
  last step first order), the corrector at step i the order of the predictor at step i − 1, min(2, i).
  The last step goes to σ_N = 0, where α = 1, λ = +∞, B(h) = −1: the update returns m_{N−1} exactly; the
  corrector never runs there (no evaluation at σ = 0).

Arithmetic as the scheduler's: σ is a float32 table, every coefficient (α, λ, h, B(h), the b_k, the 2 × 2
``torch.linalg.solve``, ρ) is a 0-dim float32 tensor computed with the same operations in the same order,
and each multiplies the state (float32 in the pipelines) with the same association, e.g.
``(σ_t/σ_s)·x − (α_t·B(h))·m``. The state keeps its own dtype (a float64 state gets float32 coefficients,
exactly converted). At σ_N = 0, log 0 = −∞ is produced and used as IEEE arithmetic allows; nothing is NaN.

Deviation from diffusers: none in the arithmetic. The network output must already be in the state's dtype
(``Flow.sample`` converts it); in a bf16 pipeline diffusers forms σ·v in bf16 instead (the model output's
dtype), see ``minivdit.objectives.flow``'s docstring.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

VelocityFn = Callable[[Tensor, int], Tensor]
"""``velocity_fn(x, i) -> v``: the network's velocity at state ``x`` on grid point ``i`` (σ = sigmas[i])."""


def _lam(sigma: Tensor) -> Tensor:
    """λ = log α − log σ with α = 1 − σ (0-dim, the table's dtype); +∞ at σ = 0."""
    return torch.log(1 - sigma) - torch.log(sigma)


def _phi_terms(h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(B(h), b_1, b_2) for a step of length h in λ: B(h) = expm1(−h) (bh2, data prediction) and
    b_k = k!·φ_{k+1}/B(h) by the recursion φ ← φ/(−h) − 1/k!, in the scheduler's order of operations
    (``(φ·k!)/B(h)``)."""
    hh = -h
    b_h = torch.expm1(hh)  # h·φ_1(h) and B(h) coincide for bh2
    phi = b_h / hh - 1
    b1 = phi * 1 / b_h
    phi = phi / hh - 1 / 2
    b2 = phi * 2 / b_h
    return b_h, b1, b2


def unipc_flow_sample(velocity_fn: VelocityFn, x: Tensor, sigmas: Tensor) -> Tensor:
    """Integrate from ``x`` at σ = ``sigmas[0]`` to ``sigmas[-1]`` (= 0) with UniPC-bh2 of order 2 (module
    docstring); ``sigmas`` [N + 1] float32, decreasing. Evaluates ``velocity_fn`` N times, at i = 0 … N − 1,
    and returns the state in ``x``'s dtype."""
    if sigmas.dtype != torch.float32 or sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ValueError(
            f"sigmas must be a float32 [N + 1] grid with N >= 1, got {sigmas.dtype} {tuple(sigmas.shape)}"
        )
    if float(sigmas[-1]) != 0.0:
        raise ValueError(f"sigmas must end at 0 (final_sigmas_type='zero'), got {float(sigmas[-1])}")
    sigmas = sigmas.cpu()  # 0-dim coefficients stay on the CPU, as the scheduler keeps them: no device syncs
    N, dt = sigmas.numel() - 1, x.dtype
    lam = [_lam(s) for s in sigmas]
    alpha = [1 - s for s in sigmas]
    m_hist: list[Tensor] = []  # data predictions m_{i-2}, m_{i-1}
    last: Tensor | None = None  # the predictor's input of the previous step
    for i in range(N):
        v = velocity_fn(x, i)
        m = x - sigmas[i] * v  # flow_prediction: x_data = x − σ·v
        if i > 0:  # UniC on the step σ_{i−1} → σ_i just taken
            assert last is not None
            h = lam[i] - lam[i - 1]
            b_h, b1, b2 = _phi_terms(h)
            m0 = m_hist[-1]
            base = sigmas[i] / sigmas[i - 1] * last - alpha[i] * b_h * m0
            if i >= 2:  # order 2: one older data prediction
                r = (lam[i - 2] - lam[i - 1]) / h
                d = (m_hist[-2] - m0) / r
                rks = torch.stack([r, torch.ones((), dtype=r.dtype)])
                R = torch.stack([torch.ones_like(rks), rks])  # [[1, 1], [r, 1]]: powers 0 and 1 of (r, 1)
                rho = torch.linalg.solve(R, torch.stack([b1, b2])).to(dt)
                x = base - alpha[i] * b_h * (rho[0] * d + rho[1] * (m - m0))
            else:
                x = base - alpha[i] * b_h * (0.5 * (m - m0))
        m_hist = [*m_hist[-1:], m]
        last = x
        order = min(2, i + 1, N - i)
        h = lam[i + 1] - lam[i]
        b_h, _, _ = _phi_terms(h)
        base = sigmas[i + 1] / sigmas[i] * x - alpha[i + 1] * b_h * m
        if order == 2:
            r = (lam[i - 1] - lam[i]) / h
            d = (m_hist[-2] - m) / r
            x = base - alpha[i + 1] * b_h * (0.5 * d)
        else:
            x = base
        x = x.to(dt)
    return x
