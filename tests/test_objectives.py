"""Objectives: the time convention, DDPM closed forms and diffusers parity, the VB, respacing, samplers, flow.

Run: ``pytest -q tests/test_objectives.py`` (CPU, a few seconds). ``diffusers`` is an optional test oracle.
"""

import dataclasses
import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from minivdit.objectives import Noised
from minivdit.objectives.ddpm import DDPM, DDPMConfig, space_timesteps
from minivdit.objectives.flow import Flow, FlowConfig, shift_time

SHAPE = (2, 3, 4, 4, 4)  # [B, F, C, H, W]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _video(shape=SHAPE, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(shape, generator=_gen(seed), dtype=dtype)


def _col(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1, 1)


def _ref_schedule(T: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """β and ᾱ of the DiT "linear" schedule, computed with Python floats, independently of the module."""
    scale = 1000.0 / T
    b0, b1 = scale * 1e-4, scale * 0.02
    betas = [b0 + (b1 - b0) * k / (T - 1) for k in range(T)]
    acs, prod = [], 1.0
    for b in betas:
        prod *= 1.0 - b
        acs.append(prod)
    return torch.tensor(betas, dtype=torch.float64), torch.tensor(acs, dtype=torch.float64)


def _ref_posterior(x_data, x_t, i, betas, acs):
    """q(x_{i-1} | x_i, x_data) by Bayes' rule on q(x_{i-1} | x_data) and q(x_i | x_{i-1}), for i >= 1."""
    a_prev, beta = _col(acs[i - 1]), _col(betas[i])
    precision = 1.0 / (1.0 - a_prev) + (1.0 - beta) / beta
    var = 1.0 / precision
    mean = var * (a_prev.sqrt() * x_data / (1.0 - a_prev) + (1.0 - beta).sqrt() * x_t / beta)
    return mean, var


def _eps_oracle(obj: DDPM, x_data: torch.Tensor, v: float | None):
    """Denoiser returning the exact ε for a point-mass data distribution at ``x_data`` (and a constant v)."""

    def fn(x_t, t_model):
        a = _col(obj.alphas_cumprod[t_model.long()])  # fp64: 1 − ᾱ_0 = 1e-4 cancels badly in fp32
        eps = (x_t - a.sqrt().to(x_t.dtype) * x_data) / (1.0 - a).sqrt().to(x_t.dtype)
        return eps if v is None else torch.cat([eps, torch.full_like(eps, v)], dim=2)

    return fn


# ----------------------------------------------------------------------------------------------------------
# The convention
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ddpm", "flow"])
def test_time_convention(kind):
    obj = DDPM(DDPMConfig()) if kind == "ddpm" else Flow(FlowConfig())
    x = _video()
    lo, hi = obj.corrupt(x, _gen(1), t=0.0), obj.corrupt(x, _gen(2), t=1.0)
    bound = max(x.abs().max().item(), lo.noise.abs().max().item(), hi.noise.abs().max().item())
    if kind == "ddpm":
        # DDPM's ends are not exact: step 0 keeps ᾱ_0 = 1 − β_0, step T − 1 keeps a little data.
        a_lo, a_hi = obj.alphas_cumprod[0].item(), obj.alphas_cumprod[-1].item()
        assert math.sqrt(1 - a_lo) < 0.011 and math.sqrt(a_hi) < 0.007
        tol_lo = (1 - math.sqrt(a_lo) + math.sqrt(1 - a_lo)) * bound
        tol_hi = (math.sqrt(a_hi) + 1 - math.sqrt(1 - a_hi)) * bound
        t_model_hi = obj.num_timesteps - 1
    else:
        tol_lo = tol_hi = 1e-6
        t_model_hi = 1000.0
    assert (lo.x_t - x).abs().max() <= tol_lo
    assert (hi.x_t - hi.noise).abs().max() <= tol_hi
    # and not the other way round
    assert (lo.x_t - lo.noise).abs().max() > 10 * tol_lo
    assert lo.t.tolist() == [0.0, 0.0] and hi.t.tolist() == [1.0, 1.0]
    assert lo.t_model.tolist() == [0.0, 0.0] and hi.t_model.tolist() == [t_model_hi] * 2


@pytest.mark.parametrize("kind", ["ddpm", "flow"])
def test_corrupt_random(kind):
    obj = DDPM(DDPMConfig()) if kind == "ddpm" else Flow(FlowConfig())
    x = _video((64, 1, 2, 2, 2))
    a, b = obj.corrupt(x, _gen(3)), obj.corrupt(x, _gen(3))
    assert isinstance(a, Noised)
    torch.testing.assert_close(a.x_t, b.x_t, rtol=0, atol=0)  # the generator drives everything
    assert a.t.shape == (64,) and a.t.dtype == torch.float32 and a.t_model.dtype == torch.float32
    assert ((a.t >= 0) & (a.t <= 1)).all() and a.t.std() > 0.2
    assert a.x_t.shape == x.shape and a.x_t.dtype == x.dtype
    if kind == "ddpm":
        assert torch.equal(a.t_model, torch.round(a.t * 999)) and torch.equal(a.target, a.noise)
    else:
        torch.testing.assert_close(a.t_model, a.t * 1000)
        torch.testing.assert_close(a.target, a.noise - x)
    assert obj.corrupt(x).x_t.shape == x.shape  # generator=None works


# ----------------------------------------------------------------------------------------------------------
# DDPM: schedule, forward process, posterior
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("T", [1000, 250])
def test_ddpm_schedule_and_q_sample_closed_form(T):
    obj = DDPM(DDPMConfig(num_timesteps=T))
    betas, acs = _ref_schedule(T)
    assert obj.betas.dtype == torch.float64
    torch.testing.assert_close(obj.betas, betas, rtol=1e-12, atol=0)
    torch.testing.assert_close(obj.alphas_cumprod, acs, rtol=1e-10, atol=0)
    x, noise = _video(dtype=torch.float64), _video(seed=1, dtype=torch.float64)
    i = torch.tensor([0, T - 1])
    expected = _col(acs[i]).sqrt() * x + _col(1 - acs[i]).sqrt() * noise
    torch.testing.assert_close(obj.q_sample(x, i, noise), expected, rtol=1e-12, atol=1e-12)


def test_ddpm_posterior_closed_form():
    obj = DDPM(DDPMConfig())
    betas, acs = _ref_schedule()
    x, x_t = _video(dtype=torch.float64), _video(seed=1, dtype=torch.float64)
    i = torch.tensor([1, 700])
    mean, var, log_var = obj.q_posterior_mean_variance(x, x_t, i)
    ref_mean, ref_var = _ref_posterior(x, x_t, i, betas, acs)
    torch.testing.assert_close(mean, ref_mean, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(var, ref_var, rtol=1e-9, atol=0)
    torch.testing.assert_close(log_var, ref_var.log(), rtol=1e-9, atol=0)
    # at i = 0 the posterior is the point mass at x_data; the log-variance is clipped to the i = 1 value
    mean0, var0, log_var0 = obj.q_posterior_mean_variance(x, x_t, torch.tensor([0, 0]))
    torch.testing.assert_close(mean0, x, rtol=1e-12, atol=1e-12)
    assert (var0 == 0).all()
    torch.testing.assert_close(log_var0, _ref_posterior(x, x_t, torch.tensor([1, 1]), betas, acs)[1].log())


def test_ddpm_matches_diffusers():
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear",
        variance_type="learned_range",
        clip_sample=False,
    )
    obj = DDPM(DDPMConfig())
    # diffusers builds the schedule in fp32: its cumprod of n = 1000 factors is off by ≤ n·u = 6e-5 relative
    torch.testing.assert_close(obj.alphas_cumprod.float(), sched.alphas_cumprod, rtol=6e-5, atol=0)
    x, noise = _video((2, 1, 4, 4, 4)), _video((2, 1, 4, 4, 4), seed=1)
    i = torch.tensor([3, 600])
    # at t = 3, 1 − ᾱ = 5.2e-4: its fp32 ᾱ (4 factors, ≲ 4u) is 4.6e-4 relative in 1 − ᾱ, half that in
    # √(1 − ᾱ) = 0.023, times |noise| ≲ 3.4: ≈ 1.8e-5
    torch.testing.assert_close(
        obj.q_sample(x, i, noise)[:, 0], sched.add_noise(x[:, 0], noise[:, 0], i), rtol=1e-5, atol=2e-5
    )
    # one reverse step with learned-range variance: mean + exp(log_var / 2) · z with the same z
    x_t = _video((1, 1, 4, 4, 4), seed=2)
    v = torch.rand((1, 1, 4, 4, 4), generator=_gen(4)) * 2 - 1
    pred = torch.cat([_video((1, 1, 4, 4, 4), seed=3), v], dim=2)
    # diffusers' fp32 schedule near t = 0: 1 − ᾱ_1 = 2.2e-4 and 1 − ᾱ_0 = 1e-4, so each rounding of ᾱ (u)
    # is ≈ 3e-4 to 6e-4 relative in the posterior coefficients and β̃_1: rtol 1e-3 (atol for entries near 0)
    for step in [1, 10, 500, 999]:
        z = torch.randn((1, 4, 4, 4), generator=_gen(5))
        ref = sched.step(pred[:, 0], step, x_t[:, 0], generator=_gen(5)).prev_sample
        mean, log_var, _ = obj.p_mean_variance(pred, x_t, torch.tensor([step]))
        torch.testing.assert_close((mean + torch.exp(0.5 * log_var) * z)[:, 0], ref, rtol=1e-3, atol=1e-4)


# ----------------------------------------------------------------------------------------------------------
# DDPM: loss and variational bound
# ----------------------------------------------------------------------------------------------------------


def _noised_at(obj: DDPM, x: torch.Tensor, i: list[int]) -> Noised:
    t = torch.tensor(i, dtype=torch.float64) / (obj.num_timesteps - 1)
    return obj.corrupt(x, _gen(7), t=t)


def test_ddpm_loss_terms():
    obj = DDPM(DDPMConfig())
    x = _video()
    noised = obj.corrupt(x, _gen(1))
    pred = _video((2, 3, 8, 4, 4), seed=2)
    terms = obj.loss_terms(pred, noised)
    assert set(terms) == {"mse", "vb"} and all(v.shape == (2,) and v.isfinite().all() for v in terms.values())
    torch.testing.assert_close(terms["mse"], ((pred[:, :, :4] - noised.noise) ** 2).mean(dim=(1, 2, 3, 4)))
    torch.testing.assert_close(obj.loss(pred, noised), terms["mse"] + terms["vb"])
    fixed = DDPM(DDPMConfig(learn_sigma=False))
    assert fixed.pred_channels(4) == 4 and obj.pred_channels(4) == 8
    assert set(fixed.loss_terms(pred[:, :, :4], noised)) == {"mse"}


def test_vb_is_zero_at_the_true_posterior():
    obj = DDPM(DDPMConfig())
    x = _video(dtype=torch.float64)
    for i in ([1, 999], [30, 500]):
        noised = _noised_at(obj, x, i)
        # true ε gives the true posterior mean; v = −1 selects the (clipped) posterior variance
        pred = torch.cat([noised.noise, -torch.ones_like(x)], dim=2)
        vb = obj.loss_terms(pred, noised)["vb"]
        assert vb.abs().max() < 1e-10, vb


def test_vb_kl_against_torch_distributions():
    obj = DDPM(DDPMConfig())
    betas, acs = _ref_schedule()
    x = _video(dtype=torch.float64)
    i = torch.tensor([5, 800])
    noised = _noised_at(obj, x, i.tolist())
    eps = _video(seed=3, dtype=torch.float64)
    v = torch.rand(SHAPE, generator=_gen(4), dtype=torch.float64) * 2 - 1
    vb = obj.loss_terms(torch.cat([eps, v], dim=2), noised)["vb"]

    a = _col(acs[i])
    x_pred = (noised.x_t - (1 - a).sqrt() * eps) / a.sqrt()
    true_mean, true_var = _ref_posterior(x, noised.x_t, i, betas, acs)
    model_mean, _ = _ref_posterior(x_pred, noised.x_t, i, betas, acs)
    frac = (v + 1) / 2
    model_log_var = frac * _col(betas[i]).log() + (1 - frac) * true_var.log()
    kl = kl_divergence(Normal(true_mean, true_var.sqrt()), Normal(model_mean, (0.5 * model_log_var).exp()))
    torch.testing.assert_close(vb, kl.mean(dim=(1, 2, 3, 4)) / math.log(2), rtol=1e-9, atol=1e-12)


def test_vb_decoder_nll_at_step_zero():
    obj = DDPM(DDPMConfig())
    betas, acs = _ref_schedule()
    # 8-bit levels in [-1, 1], both edge bins included
    x = torch.randint(0, 256, SHAPE, generator=_gen(0)).to(torch.float64) / 127.5 - 1.0
    x[0, 0, 0, 0, :2] = torch.tensor([-1.0, 1.0])
    noised = _noised_at(obj, x, [0, 0])
    eps = noised.noise + 0.3 * _video(seed=3, dtype=torch.float64)  # off by a bit: a non-trivial likelihood
    v = torch.rand(SHAPE, generator=_gen(4), dtype=torch.float64) * 2 - 1
    vb = obj.loss_terms(torch.cat([eps, v], dim=2), noised)["vb"]

    # at i = 0: ᾱ_prev = 1, so the model mean is the predicted x_data itself
    mean = (noised.x_t - (1 - acs[0]).sqrt() * eps) / acs[0].sqrt()
    post_var_1 = betas[1] * (1 - acs[0]) / (1 - acs[1])
    frac = (v + 1) / 2
    std = (0.5 * (frac * betas[0].log() + (1 - frac) * post_var_1.log())).exp()
    dist = Normal(mean, std)
    upper, lower = dist.cdf(x + 1 / 255), dist.cdf(x - 1 / 255)
    prob = torch.where(x < -0.999, upper, torch.where(x > 0.999, 1 - lower, upper - lower))
    expected = -prob.log().mean(dim=(1, 2, 3, 4)) / math.log(2)
    torch.testing.assert_close(vb, expected, rtol=1e-7, atol=1e-9)


def test_vb_trains_only_the_variance_channels():
    obj = DDPM(DDPMConfig())
    noised = _noised_at(obj, _video(), [0, 400])  # both the decoder and the KL branch
    pred = _video((2, 3, 8, 4, 4), seed=2).requires_grad_(True)
    obj.loss_terms(pred, noised)["vb"].sum().backward()
    assert (pred.grad[:, :, :4] == 0).all() and (pred.grad[:, :, 4:] != 0).any()


# ----------------------------------------------------------------------------------------------------------
# DDPM: respacing and samplers
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [250, 50, 7])
def test_respacing_matches_dit_rule(steps):
    T = 1000
    # DiT space_timesteps(T, str(steps)), one section: evenly strided, stride (T - 1) / (steps - 1), rounded
    expected = sorted({round(k * (T - 1) / (steps - 1)) for k in range(steps)})
    assert len(expected) == steps and space_timesteps(T, steps) == expected
    obj = DDPM(DDPMConfig())
    s = obj.respaced(steps)
    assert s.timestep_map.tolist() == expected
    # the respaced process has the same ᾱ at the kept steps
    torch.testing.assert_close(s.alphas_cumprod, obj.alphas_cumprod[expected], rtol=1e-12, atol=0)
    # and the network sees the original indices, from noisiest to cleanest
    seen = []

    def record(x_t, t_model):
        seen.append(t_model.tolist())
        return torch.zeros(x_t.shape[0], x_t.shape[1], 2 * x_t.shape[2], *x_t.shape[3:])

    obj.sample(record, _video(), steps, _gen(1))
    assert seen == [[float(k)] * 2 for k in reversed(expected)]


def test_respacing_edges():
    assert space_timesteps(100, 100) == list(range(100))
    assert space_timesteps(100, 1) == [0]
    obj = DDPM(DDPMConfig(num_timesteps=100))
    torch.testing.assert_close(obj.respaced(100).betas, obj.betas, rtol=1e-10, atol=0)
    seen = []
    obj.sample(lambda x_t, t: seen.append(t.tolist()) or torch.cat([x_t, x_t], 2), _video(), 1)
    assert seen == [[0.0, 0.0]]


@pytest.mark.parametrize(
    ("sampler", "learn_sigma"), [("ddim", True), ("ddim", False), ("ddpm", True), ("ddpm", False)]
)
def test_samplers_recover_point_mass(sampler, learn_sigma):
    """With the exact ε of a point mass, DDIM (η = 0) and ancestral sampling both end exactly at x_data: the
    last step's mean is the predicted x_data (ᾱ_prev = 1) and no noise is added there."""
    obj = DDPM(DDPMConfig(sampler=sampler, learn_sigma=learn_sigma))
    x = _video()
    out = obj.sample(_eps_oracle(obj, x, 0.0 if learn_sigma else None), _video(seed=1), 50, _gen(2))
    assert out.shape == x.shape and out.dtype == x.dtype
    torch.testing.assert_close(out, x, rtol=0, atol=1e-5)


def test_ddpm_sampler_stochastic_and_clipped():
    obj = DDPM(DDPMConfig())
    noise = _video()

    def fn(x_t, t_model):  # a smooth stand-in network, 2C channels
        return torch.cat([0.5 * x_t, torch.tanh(x_t)], dim=2)

    a, b, c = (obj.sample(fn, noise, 20, _gen(s)) for s in (0, 0, 1))
    assert a.shape == noise.shape and a.isfinite().all()
    assert torch.equal(a, b) and not torch.equal(a, c)
    ddim = DDPM(DDPMConfig(sampler="ddim", eta=1.0))
    assert ddim.sample(fn, noise, 10, _gen(0)).isfinite().all()
    # clip_denoised clamps the x_data prediction, hence the final sample
    clipped = DDPM(DDPMConfig(clip_denoised=True, sampler="ddim"))
    out = clipped.sample(_eps_oracle(clipped, 3 * _video(seed=4), 0.0), noise, 10)
    assert out.abs().max() <= 1.0 and out.abs().max() == 1.0


# ----------------------------------------------------------------------------------------------------------
# Flow
# ----------------------------------------------------------------------------------------------------------


def test_flow_target_is_the_path_derivative():
    obj = Flow(FlowConfig())
    x = _video(dtype=torch.float64)
    noised = obj.corrupt(x, _gen(1))
    torch.testing.assert_close(noised.x_t, Flow.path(x, noised.noise, noised.t))
    t = noised.t.to(torch.float64)
    _, tangent = torch.func.jvp(lambda t: Flow.path(x, noised.noise, t), (t,), (torch.ones_like(t),))
    torch.testing.assert_close(noised.target, tangent)
    terms = obj.loss_terms(noised.target, noised)
    assert set(terms) == {"mse"} and terms["mse"].shape == (2,) and (terms["mse"] == 0).all()
    expected = (noised.target**2).mean(dim=(1, 2, 3, 4))
    torch.testing.assert_close(obj.loss(torch.zeros_like(x), noised), expected)


def test_flow_time_sampling_and_shift():
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    for s in (0.5, 1.0, 3.0):
        ts = shift_time(t, s)
        assert ts[0] == 0 and ts[-1] == 1 and (ts.diff() > 0).all()
    assert (shift_time(t, 3.0)[1:-1] > t[1:-1]).all()  # shift > 1 moves mass toward noise

    uniform = Flow(FlowConfig()).sample_t(4096, _gen(0))
    assert uniform.min() >= 0 and uniform.max() < 1 and abs(uniform.mean() - 0.5) < 0.02
    for mean in (0.0, 1.0):
        ln = Flow(FlowConfig(t_sampling="logit_normal", logit_mean=mean)).sample_t(4096, _gen(0))
        assert ln.min() > 0 and ln.max() < 1 and abs(ln.median() - torch.sigmoid(torch.tensor(mean))) < 0.03
    shifted = Flow(FlowConfig(shift=3.0)).sample_t(4096, _gen(0))
    assert shifted.min() >= 0 and shifted.max() <= 1 and shifted.mean() > uniform.mean() + 0.1
    grid = Flow(FlowConfig(shift=3.0)).time_grid(8)
    assert grid[0] == 1 and grid[-1] == 0 and (grid.diff() < 0).all() and grid[4] > 0.5


def _velocity_point_mass(x_data):
    def fn(x_t, t_model):
        return (x_t - x_data) / _col(t_model / 1000.0).to(x_t.dtype)  # exact: the path is a straight line

    return fn


@pytest.mark.parametrize("sampler", ["euler", "heun"])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_samplers_recover_point_mass(sampler, shift):
    obj = Flow(FlowConfig(sampler=sampler, shift=shift))
    x = _video()
    calls = []
    oracle = _velocity_point_mass(x)

    def fn(x_t, t_model):
        calls.append(t_model[0].item())
        return oracle(x_t, t_model)

    out = obj.sample(fn, _video(seed=1), 6)
    torch.testing.assert_close(out, x, rtol=0, atol=1e-5)
    assert len(calls) == (6 if sampler == "euler" else 11) and min(calls) > 0  # never evaluated at t = 0


def test_flow_x_prediction_loss_and_sampler():
    """JiT's x-prediction with the velocity loss: v̂ = (x_t − x̂)/max(t, t_min); the exact x̂ gives zero loss and
    the sampler, fed the point-mass x̂, lands on the data; the loss equals ‖x̂ − x‖²/t² away from the clamp."""
    obj = Flow(FlowConfig(prediction="x", t_min=0.05))
    x = _video()
    noised = obj.corrupt(x, t=torch.tensor([0.5, 0.02]))
    assert obj.loss(noised.x_data.clone(), noised).abs().max() < 1e-10
    guess = x + 0.1
    loss = obj.loss(guess, noised)
    torch.testing.assert_close(loss[0], ((0.1 / 0.5) ** 2) * torch.ones(()), rtol=1e-5, atol=0)
    torch.testing.assert_close(loss[1], ((0.1 / 0.05) ** 2) * torch.ones(()), rtol=1e-5, atol=0)  # clamped
    for sampler in ("euler", "heun"):
        out = Flow(FlowConfig(prediction="x", sampler=sampler)).sample(
            lambda x_t, t_model: x, _video(seed=1), 5
        )
        torch.testing.assert_close(out, x, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="prediction"):
        FlowConfig(prediction="eps")


def test_heun_beats_euler_on_a_gaussian():
    """Data ~ N(μ, s²) per element: the marginal is N((1 − t)μ, (1 − t)²s² + t²), the probability-flow
    velocity is linear in x, and the exact ODE solution from t = 1 is μ + s · noise."""
    mu, s = 0.3, 0.5

    def velocity(x_t, t_model):
        t = _col(t_model.to(torch.float64) / 1000.0)
        var = (1 - t) ** 2 * s**2 + t**2
        return -mu + (t - (1 - t) * s**2) / var * (x_t - (1 - t) * mu)

    noise = _video(dtype=torch.float64)
    exact = mu + s * noise
    err = {}
    for m in ("euler", "heun"):
        err[m] = (Flow(FlowConfig(sampler=m)).sample(velocity, noise, 8) - exact).abs().max().item()
    assert err["heun"] < err["euler"] / 4, err


# ----------------------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ddpm", "flow"])
def test_bad_input(kind):
    obj = DDPM(DDPMConfig(num_timesteps=100)) if kind == "ddpm" else Flow(FlowConfig())
    x = _video()
    with pytest.raises(ValueError, match=r"\[B, F, C, H, W\].*\(3, 4, 4, 4\)"):
        obj.corrupt(x[0])
    with pytest.raises(ValueError, match="t must lie"):
        obj.corrupt(x, t=1.5)
    noised = obj.corrupt(x, _gen(0))
    with pytest.raises(ValueError, match=r"\(2, 3, 5, 4, 4\)"):  # names the actual shape
        obj.loss(torch.zeros(2, 3, 5, 4, 4), noised)
    with pytest.raises(ValueError):
        obj.loss(torch.zeros(2, 3, 4, 4), noised)
    with pytest.raises(ValueError, match="steps"):
        obj.sample(lambda x_t, t: x_t, x, 0)
    with pytest.raises(ValueError, match=r"\(2, 3, 1, 4, 4\)"):  # a network with the wrong channel count
        obj.sample(lambda x_t, t: x_t[:, :, :1], x, 2)


def test_ddpm_bad_input():
    obj = DDPM(DDPMConfig(num_timesteps=100))
    with pytest.raises(ValueError, match=r"\(2, 3, 8, 4, 4\).*\(2, 3, 4, 4, 4\)"):  # expected and actual
        obj.loss(torch.zeros(SHAPE), obj.corrupt(_video()))
    with pytest.raises(ValueError, match="steps"):
        obj.sample(lambda x_t, t: x_t, _video(), 101)


def test_config_validation():
    for bad in (
        dict(num_timesteps=1),
        dict(beta_start=0.03),
        dict(beta_start=0.0),
        dict(eta=-0.1),
        dict(num_timesteps=10),
    ):  # β_end · 1000 / 10 = 2
        with pytest.raises(ValueError):
            DDPMConfig(**bad)
    for bad in (dict(shift=0.0), dict(logit_std=0.0), dict(t_model_scale=-1.0)):
        with pytest.raises(ValueError):
            FlowConfig(**bad)
    with pytest.raises(dataclasses.FrozenInstanceError):
        FlowConfig().shift = 2.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        DDPMConfig(1000)  # type: ignore[misc]  # kw_only
