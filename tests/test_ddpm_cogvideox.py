"""DDPM objective with the CogVideoX settings, against diffusers' CogVideoXDDIMScheduler and pipelines.

Schedule tables (scaled_linear β, SNR shift, zero terminal SNR), trailing timesteps, 50-step DDIM
trajectories, the CogVideoXDPMScheduler loop (``sampler="dpm"``) with the pipelines' generator, the
v-prediction corruption and the official CogVideoX loss, the dynamic CFG formula of the
pipelines, and the config validation.

Run: ``OMP_NUM_THREADS=1 pytest -q tests/test_ddpm_cogvideox.py`` (CPU, about 10 s).
"""

import ast
import dataclasses
import math
from pathlib import Path

import pytest
import torch

from minivdit.objectives.ddpm import (
    DDPM,
    DDPMConfig,
    dynamic_cfg_scale,
    rescale_zero_terminal_snr,
    scaled_linear_betas,
    shift_snr,
    trailing_timesteps,
)

diffusers = pytest.importorskip("diffusers")

SHAPE = (2, 3, 4, 5, 6)  # [B, F, C, H, W]
SHIFTS = [1.0, 3.0]  # 5B / 5B-I2V, 2B


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _video(shape=SHAPE, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(shape, generator=_gen(seed), dtype=dtype)


def _col(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1, 1)


def _scheduler(shift: float, set_alpha_to_one: bool = True):
    """The released CogVideoX scheduler config (anchors-cogvideox.md §3)."""
    return diffusers.CogVideoXDDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        set_alpha_to_one=set_alpha_to_one,
        timestep_spacing="trailing",
        snr_shift_scale=shift,
        clip_sample=False,
    )


def _stand_in(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A fixed, deterministic stand-in denoiser of x_t and the (integer) timestep."""
    return 0.1 * x_t + 0.01 * _col(t.to(x_t.dtype))


def _diffusers_loop(sched, x: torch.Tensor, steps: int, seen: list | None = None) -> torch.Tensor:
    """The pipelines' loop: set_timesteps(steps), then model + step at each timestep."""
    sched.set_timesteps(steps)
    for t in sched.timesteps:
        if seen is not None:
            seen.append(int(t))
        x = sched.step(_stand_in(x, t.expand(x.shape[0])), t, x, return_dict=False)[0]
    return x


# ----------------------------------------------------------------------------------------------------------
# Schedule
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shift", SHIFTS)
def test_alphas_cumprod_match_diffusers(shift):
    obj = DDPM(DDPMConfig.cogvideox(snr_shift_scale=shift))
    ref = _scheduler(shift).alphas_cumprod
    assert obj.alphas_cumprod.dtype == ref.dtype == torch.float64
    torch.testing.assert_close(obj.alphas_cumprod, ref, rtol=0, atol=1e-12)
    ac = obj.alphas_cumprod
    assert ac[-1] == 0.0 and (ac.diff() < 0).all()  # zero terminal SNR, strictly decreasing
    assert obj.betas[-1] == 1.0 and ((obj.betas > 0) & (obj.betas <= 1)).all()
    if shift == 1.0:  # anchors-cogvideox.md §3 (verified values)
        assert ac[0].item() == pytest.approx(0.99915, abs=1e-12)
        assert ac[499].item() == pytest.approx(0.2424, abs=5e-5)
        assert ac[998].item() == pytest.approx(1.97e-7, rel=1e-2)


def test_schedule_helpers():
    T = 1000
    betas = scaled_linear_betas(T, 0.00085, 0.012)
    expected = torch.tensor(
        [(math.sqrt(0.00085) + k * (math.sqrt(0.012) - math.sqrt(0.00085)) / (T - 1)) ** 2 for k in range(T)],
        dtype=torch.float64,
    )
    torch.testing.assert_close(betas, expected, rtol=1e-12, atol=0)  # no 1000 / T scaling
    ac = torch.cumprod(1 - betas, 0)
    # the shift divides the SNR by s
    for s in (0.5, 3.0):
        shifted = shift_snr(ac, s)
        torch.testing.assert_close(shifted / (1 - shifted), ac / (1 - ac) / s, rtol=1e-10, atol=0)
    assert torch.equal(shift_snr(ac, 1.0), ac)
    # zero terminal SNR: √ᾱ affine in the old √ᾱ, first value kept, last one 0
    z = rescale_zero_terminal_snr(ac)
    assert z[-1] == 0 and z[0].item() == pytest.approx(ac[0].item(), abs=1e-15)
    r, rz = ac.sqrt(), z.sqrt()
    torch.testing.assert_close(rz, (r - r[-1]) / (r[0] - r[-1]) * r[0], rtol=1e-12, atol=1e-15)
    # the default DiT config is untouched by the new fields
    assert DDPM(DDPMConfig()).alphas_cumprod[0].item() == pytest.approx(1 - 1e-4, abs=1e-15)


def test_trailing_timesteps_match_diffusers():
    obj = DDPM(DDPMConfig.cogvideox())
    sched = _scheduler(1.0)
    sched.set_timesteps(50)
    assert obj.sampling_timesteps(50) == sched.timesteps.tolist() == list(range(999, 0, -20))
    # every step count: the same indices as diffusers (its first `steps` entries, see below)
    extra = []
    for steps in range(1, 1001):
        sched.set_timesteps(steps)
        ref = sched.timesteps.tolist()
        ours = trailing_timesteps(1000, steps)
        assert len(ours) == steps and ours == ref[:steps], steps
        if len(ref) != steps:
            extra.append(steps)
            assert ref[steps:] == [-1]  # diffusers' spurious extra step at t = -1; we stop before it
    assert extra[:3] == [61, 103, 121]
    with pytest.raises(ValueError, match="steps"):
        trailing_timesteps(1000, 0)
    with pytest.raises(ValueError, match="steps"):
        obj.sample(_stand_in, _video(), 1001)


# ----------------------------------------------------------------------------------------------------------
# Sampling: the diffusers loop, step for step
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shift", SHIFTS)
def test_50_step_trajectory_matches_diffusers(shift, dtype):
    obj = DDPM(DDPMConfig.cogvideox(snr_shift_scale=shift))
    noise = _video(dtype=dtype)
    seen_ours, seen_ref = [], []

    def fn(x_t, t_model):
        assert t_model.dtype == torch.float32 and t_model.shape == (SHAPE[0],)
        seen_ours.append(int(t_model[0].item()))
        return _stand_in(x_t, t_model)

    ours = obj.sample(fn, noise, 50)
    ref = _diffusers_loop(_scheduler(shift), noise.clone(), 50, seen_ref)
    assert seen_ours == seen_ref == list(range(999, 0, -20))
    assert ours.dtype == dtype and ours.shape == noise.shape
    err = (ours - ref).abs().max().item()
    assert err <= 1e-6, err  # the same elementwise ops in the same order (no reduction): bit-identical


@pytest.mark.parametrize(("steps", "set_alpha_to_one"), [(30, True), (7, True), (7, False), (50, False)])
def test_trajectory_quirks_match_diffusers(steps, set_alpha_to_one):
    """Step counts that do not divide T (the jump is T // steps, not the list's spacing; 7 steps end at ᾱ[0])
    and ``set_alpha_to_one=False`` (the last step lands on ᾱ_0, not 1)."""
    obj = DDPM(DDPMConfig.cogvideox(set_alpha_to_one=set_alpha_to_one))
    noise = _video(dtype=torch.float64)
    ours = obj.sample(_stand_in, noise, steps)
    ref = _diffusers_loop(_scheduler(1.0, set_alpha_to_one), noise.clone(), steps)
    assert (ours - ref).abs().max().item() <= 1e-12


def _v_oracle(obj: DDPM, x_data: torch.Tensor):
    """Exact v for a point-mass data distribution at ``x_data``: v = (√ᾱ x_t − x_data) / √(1 − ᾱ)."""

    def fn(x_t, t_model):
        a = _col(obj.alphas_cumprod[t_model.long()]).to(x_t.dtype)
        return (a.sqrt() * x_t - x_data) / (1 - a).sqrt()

    return fn


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"snr_shift_scale": 3.0},
        {"timestep_spacing": "dit"},  # DiT respacing, DDIM
        {"timestep_spacing": "dit", "sampler": "ddpm"},  # ancestral, fixed-large σ, from ᾱ = 0
        {"sampler": "dpm"},  # stochastic, but its last step is x̂ (m1 = 0, m2 = −1, no noise)
    ],
)
def test_v_samplers_recover_point_mass(overrides):
    """From ᾱ = 0 (x_t = noise) with the exact v of a point mass, every v-sampler lands on x_data: no NaN at
    zero terminal SNR, and the last step's ᾱ_prev = 1."""
    obj = DDPM(DDPMConfig.cogvideox(**overrides))
    x = _video(dtype=torch.float64)
    out = obj.sample(_v_oracle(obj, x), _video(seed=1, dtype=torch.float64), 20, _gen(2))
    assert out.isfinite().all()
    torch.testing.assert_close(out, x, rtol=0, atol=1e-9)


def test_set_alpha_to_one_false_ends_at_alpha_0():
    """DDIM (η = 0) keeps the implied ε of a point mass equal to the initial noise, so with ᾱ_prev = ᾱ_0 after
    the last step the sample is √ᾱ_0 x_data + √(1 − ᾱ_0) noise."""
    obj = DDPM(DDPMConfig.cogvideox(set_alpha_to_one=False))
    x, noise = _video(dtype=torch.float64), _video(seed=1, dtype=torch.float64)
    out = obj.sample(_v_oracle(obj, x), noise, 50)
    a0 = obj.alphas_cumprod[0]
    torch.testing.assert_close(out, a0.sqrt() * x + (1 - a0).sqrt() * noise, rtol=0, atol=1e-9)


def test_trailing_eta_and_clip():
    noise = _video()
    stochastic = DDPM(DDPMConfig.cogvideox(eta=1.0))
    a, b, c = (stochastic.sample(_stand_in, noise, 10, _gen(s)) for s in (0, 0, 1))
    assert a.isfinite().all() and torch.equal(a, b) and not torch.equal(a, c)
    # η > 0 still ends exactly at a point mass (no noise at the last step, σ = 0 there)
    x = _video(seed=3, dtype=torch.float64)
    out = stochastic.sample(_v_oracle(stochastic, x), _video(seed=1, dtype=torch.float64), 10, _gen(0))
    torch.testing.assert_close(out, x, rtol=0, atol=1e-9)
    clipped = DDPM(DDPMConfig.cogvideox(clip_denoised=True))
    out = clipped.sample(_v_oracle(clipped, 3 * x), noise.double(), 10)
    assert out.abs().max() == 1.0


# ----------------------------------------------------------------------------------------------------------
# Sampling: CogVideoXDPMScheduler, driven as the pipelines drive it
# ----------------------------------------------------------------------------------------------------------


def _dpm_scheduler(shift: float, set_alpha_to_one: bool = True):
    """CogVideoXDPMScheduler with the released config (CogVideo's cli_demo: ``from_config(pipe.scheduler
    .config, timestep_spacing="trailing")``)."""
    return diffusers.CogVideoXDPMScheduler.from_config(_scheduler(shift, set_alpha_to_one).config)


def _diffusers_dpm_loop(sched, x: torch.Tensor, steps: int, generator) -> torch.Tensor:
    """The oracle: the DPM branch of the denoising loop of diffusers' ``pipeline_cogvideox.py`` (and
    ``pipeline_cogvideox_image2video.py``): ``old_pred_original_sample`` carried from step to step,
    ``timesteps[i - 1]`` as ``timestep_back``, the pipeline's ``generator`` and ``eta`` passed to ``step``."""
    sched.set_timesteps(steps)
    timesteps, old = sched.timesteps, None
    for i, t in enumerate(timesteps):
        out = _stand_in(x, t.expand(x.shape[0]))
        back = timesteps[i - 1] if i > 0 else None
        x, old = sched.step(out, old, t, back, x, eta=0.0, generator=generator, return_dict=False)
    return x


@pytest.mark.parametrize(
    ("shift", "steps", "set_alpha_to_one", "dtype"),
    [
        (1.0, 50, True, torch.float32),  # 5B / 5B-I2V as released
        (3.0, 50, True, torch.float32),  # 2B
        (1.0, 7, False, torch.float64),  # T // steps jump ≠ spacing; the last step lands on ᾱ_0
    ],
)
def test_dpm_loop_matches_diffusers(shift, steps, set_alpha_to_one, dtype):
    """``DDPMConfig.cogvideox(sampler="dpm")`` against the pipelines' CogVideoXDPMScheduler loop, both fed
    by one seeded generator that first draws the initial latents (``randn_tensor``, as ``prepare_latents``)
    and then every step's noise: the same trajectory, and the generators end in the same state (the
    scheduler's 2N − 2 draws: two per step, one on the first and the last)."""
    from diffusers.utils.torch_utils import randn_tensor

    obj = DDPM(DDPMConfig.cogvideox(snr_shift_scale=shift, sampler="dpm", set_alpha_to_one=set_alpha_to_one))
    g_ours, g_ref = _gen(7), _gen(7)
    noise = torch.randn(SHAPE, generator=g_ours, dtype=dtype)
    ours = obj.sample(_stand_in, noise, steps, g_ours)
    start = randn_tensor(SHAPE, generator=g_ref, dtype=dtype)  # prepare_latents' draw
    ref = _diffusers_dpm_loop(_dpm_scheduler(shift, set_alpha_to_one), start, steps, g_ref)
    assert torch.equal(g_ours.get_state(), g_ref.get_state())
    assert ours.dtype == dtype and ours.isfinite().all()
    # The same elementwise ops in the same order on both sides, coefficients rounded from the same fp64
    # 0-dim values: bit-identical as run. Should a kernel round one op differently, that is ≤ 1 ulp
    # (6e-8 relative in fp32) per op, ~4 ops per step, and the update contracts (m1 ≤ 1): over 50 steps
    # ≤ 50·4·6e-8 ≈ 1.2e-5 relative in fp32 (2.2e-14 in fp64).
    tol = 2e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(ours, ref, rtol=tol, atol=tol)
    # it is stochastic: another generator state, another sample
    assert not torch.equal(ours, obj.sample(_stand_in, noise, steps, _gen(8)))


def test_dpm_generator_per_sample_is_one_pipeline_call_per_seed():
    """A list of B generators draws row b of every step's noise from generator b, as ``randn_tensor`` with a
    list (and as B pipeline calls, one seed each): row b equals the single-sample run on generator b."""
    obj = DDPM(DDPMConfig.cogvideox(sampler="dpm"))
    gens = [_gen(1), _gen(2)]
    noise = torch.cat([torch.randn(1, *SHAPE[1:], generator=g) for g in gens])
    both = obj.sample(_stand_in, noise, 10, gens)
    for b, seed in enumerate((1, 2)):
        g = _gen(seed)
        alone = obj.sample(_stand_in, torch.randn(1, *SHAPE[1:], generator=g), 10, g)
        # _stand_in is elementwise, so rows do not interact: the same ops on the same numbers, bit-identical
        assert torch.equal(both[b : b + 1], alone)
    with pytest.raises(ValueError, match="one per sample"):
        obj.sample(_stand_in, noise, 10, [_gen(1)])


# ----------------------------------------------------------------------------------------------------------
# Training: corruption, v target, the official loss
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shift", SHIFTS)
def test_corrupt_and_official_loss(shift):
    obj = DDPM(DDPMConfig.cogvideox(snr_shift_scale=shift))
    sched = _scheduler(shift)
    ac = sched.alphas_cumprod
    x = _video((8, 3, 4, 5, 6))
    noised = obj.corrupt(x, _gen(1))
    i = noised.t_model.long()
    # uniform integer t; t = i / (T − 1), t_model = float(i)
    assert torch.equal(noised.t_model, i.float()) and noised.t_model.dtype == torch.float32
    torch.testing.assert_close(noised.t, i.float() / 999, rtol=0, atol=0)
    a = _col(ac[i]).float()
    torch.testing.assert_close(noised.x_t, a.sqrt() * x + (1 - a).sqrt() * noised.noise, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(noised.x_t, sched.add_noise(x, noised.noise, i), rtol=1e-6, atol=1e-6)
    v = sched.get_velocity(x, noised.noise, i)  # √ᾱ noise − √(1 − ᾱ) x_data
    torch.testing.assert_close(noised.target, v, rtol=1e-6, atol=1e-6)

    pred = _video((8, 3, 4, 5, 6), seed=2)
    assert obj.pred_channels(4) == 4
    terms = obj.loss_terms(pred, noised)
    assert set(terms) == {"mse"}
    loss = obj.loss(pred, noised)
    assert loss.shape == (8,) and loss.dtype == torch.float32
    v_mse = ((pred - v) ** 2).mean(dim=(1, 2, 3, 4))
    # official (diffusers examples/cogvideo): x̂ = get_velocity(model_out, x_t, t) = √ᾱ x_t − √(1 − ᾱ) v̂,
    # loss = mean(1/(1 − ᾱ) (x̂ − x_data)²) per sample
    x_hat = sched.get_velocity(pred, noised.x_t, i)
    weights = _col(1 / (1 - ac[i]))
    official = (weights * (x_hat - x) ** 2).reshape(8, -1).mean(dim=1)
    torch.testing.assert_close(loss, v_mse, rtol=1e-6, atol=0)
    torch.testing.assert_close(loss.double(), official, rtol=1e-5, atol=0)


def test_corrupt_ends_and_uniform_steps():
    obj = DDPM(DDPMConfig.cogvideox())
    x = _video(dtype=torch.float64)
    # t = 1: ᾱ = 0, x_t is exactly the noise and v = −x_data; the official weight 1/(1 − ᾱ) is 1
    hi = obj.corrupt(x, _gen(1), t=1.0)
    assert torch.equal(hi.x_t, hi.noise) and torch.equal(hi.target, -x)
    assert hi.t_model.tolist() == [999.0, 999.0]
    # t = 0: ᾱ_0 = 0.99915, weight 1/(1 − ᾱ_0) ≈ 1176: finite, and official = v-MSE still (fp64)
    sched = _scheduler(1.0)
    for noised in (obj.corrupt(x, _gen(2), t=0.0), hi):
        i = noised.t_model.long()
        pred = noised.target + 0.1 * _video(seed=5, dtype=torch.float64)
        x_hat = sched.get_velocity(pred, noised.x_t, i)
        official = (_col(1 / (1 - sched.alphas_cumprod[i])) * (x_hat - x) ** 2).mean(dim=(1, 2, 3, 4))
        assert official.isfinite().all()
        torch.testing.assert_close(obj.loss(pred, noised), official, rtol=1e-10, atol=0)
    # training steps: uniform integers over [0, T − 1]
    many = obj.corrupt(torch.zeros(20000, 1, 1, 1, 1), _gen(3))
    steps = many.t_model
    assert torch.equal(steps, steps.round()) and steps.min() == 0 and steps.max() == 999
    assert abs(steps.mean().item() - 499.5) < 5 and abs(steps.std().item() - 288.7) < 5


# ----------------------------------------------------------------------------------------------------------
# Dynamic CFG: the pipelines' formula, re-derived from their source
# ----------------------------------------------------------------------------------------------------------


def _pipeline_dynamic_cfg(filename: str):
    """The expression the pipeline assigns to ``self._guidance_scale`` under ``use_dynamic_cfg``, compiled
    from the installed diffusers source, as a function of (guidance_scale, t, num_inference_steps)."""
    path = Path(diffusers.__file__).parent / "pipelines" / "cogvideo" / filename
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) == "use_dynamic_cfg":
            for stmt in node.body:
                if isinstance(stmt, ast.Assign) and ast.unparse(stmt.targets[0]) == "self._guidance_scale":
                    found.append(stmt.value)
    assert len(found) == 1, f"dynamic CFG assignment not found (or ambiguous) in {path}"
    assert "t.item()" in ast.unparse(found[0])  # the timestep, not the loop index: see dynamic_cfg_scale
    code = compile(ast.Expression(found[0]), str(path), "eval")

    def formula(guidance_scale: float, t: torch.Tensor, num_inference_steps: int) -> float:
        names = dict(guidance_scale=guidance_scale, t=t, num_inference_steps=num_inference_steps)
        return eval(code, {"math": math}, names)

    return formula


@pytest.mark.parametrize("filename", ["pipeline_cogvideox_image2video.py", "pipeline_cogvideox.py"])
def test_dynamic_cfg_matches_pipeline_formula(filename):
    formula = _pipeline_dynamic_cfg(filename)
    for steps in (50, 30, 7):
        sched = _scheduler(1.0)
        sched.set_timesteps(steps)
        for scale in (6.0, 4.0):
            ts = sched.timesteps
            want = [formula(scale, t, steps) for t in ts]
            got = [dynamic_cfg_scale(scale, int(t), steps) for t in ts]
            assert got == want  # bit-identical
            # the tensor form, as a sampler wrapper calls it with t_model [B] float32
            t_model = ts.to(torch.float32).repeat_interleave(2)
            got_t = dynamic_cfg_scale(scale, t_model, steps)
            assert got_t.dtype == torch.float64 and got_t.shape == t_model.shape
            assert got_t.tolist() == [w for w in want for _ in range(2)]
            assert all(1.0 <= w <= 1.0 + scale for w in want)
    # what it does numerically (docstring): w oscillates over [1, 1 + scale], it is not a ramp
    ts = trailing_timesteps(1000, 50)
    w = [dynamic_cfg_scale(6.0, t, 50) for t in ts]
    assert [round(v, 2) for v in w[:6]] == [2.29, 2.54, 6.97, 6.42, 2.79, 4.27]
    assert [round(v, 2) for v in w[-3:]] == [1.0, 1.0, 1.12]
    assert max(w) > 6.9 and min(w) < 1.01


# ----------------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------------


def test_cogvideox_preset():
    cfg = DDPMConfig.cogvideox()
    expected = dict(
        num_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        snr_shift_scale=1.0,
        zero_terminal_snr=True,
        prediction="v",
        learn_sigma=False,
        sampler="ddim",
        eta=0.0,
        timestep_spacing="trailing",
        set_alpha_to_one=True,
        clip_denoised=False,
    )
    assert dataclasses.asdict(cfg) == expected
    assert DDPMConfig.cogvideox(snr_shift_scale=3.0).snr_shift_scale == 3.0
    assert DDPMConfig.cogvideox(eta=0.5).eta == 0.5
    # the defaults are the Latte/DiT ones
    d = DDPMConfig()
    assert (d.beta_schedule, d.prediction, d.snr_shift_scale, d.zero_terminal_snr) == (
        "linear",
        "eps",
        1.0,
        False,
    )
    assert (d.timestep_spacing, d.set_alpha_to_one, d.learn_sigma) == ("dit", True, True)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (dict(prediction="v"), "learn_sigma"),  # learn_sigma defaults to True
        (dict(prediction="v", learn_sigma=True, zero_terminal_snr=True), "learn_sigma"),
        (dict(zero_terminal_snr=True, learn_sigma=False), "zero_terminal_snr.*prediction"),
        (dict(timestep_spacing="trailing", sampler="ddpm"), "trailing.*sampler"),
        (dict(set_alpha_to_one=False), "set_alpha_to_one.*trailing"),
        (dict(snr_shift_scale=0.0), "snr_shift_scale"),
        (dict(snr_shift_scale=-3.0), "snr_shift_scale"),
        (dict(snr_shift_scale=float("inf")), "snr_shift_scale"),
        (dict(beta_schedule="scaled_linear", beta_start=0.5, beta_end=1.0), "beta_end"),
        (dict(beta_schedule="cosine"), "beta_schedule"),
        (dict(prediction="x"), "prediction"),
        (dict(timestep_spacing="leading"), "timestep_spacing"),
        (dict(sampler="dpm", prediction="v", learn_sigma=False), "dpm.*trailing"),
        (dict(sampler="euler"), "sampler"),
    ],
)
def test_config_validation(bad, match):
    with pytest.raises(ValueError, match=match):
        DDPMConfig(**bad)


def test_cogvideox_overrides_are_validated():
    with pytest.raises(ValueError, match="learn_sigma"):
        DDPMConfig.cogvideox(learn_sigma=True)
    with pytest.raises(ValueError, match="zero_terminal_snr"):
        DDPMConfig.cogvideox(prediction="eps")
    with pytest.raises(ValueError, match="trailing"):
        DDPMConfig.cogvideox(sampler="ddpm")
    assert DDPMConfig.cogvideox(sampler="dpm").sampler == "dpm"
    for bad in (dict(eta=0.5), dict(clip_denoised=True)):
        with pytest.raises(ValueError, match="dpm.*neither eta nor clip_denoised"):
            DDPMConfig.cogvideox(sampler="dpm", **bad)
    # scaled_linear needs no 1000 / T room: β_end = 0.012 with T = 10 is fine (linear would scale it to 1.2)
    DDPMConfig(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_timesteps=10)
    with pytest.raises(ValueError):
        DDPMConfig(beta_start=0.00085, beta_end=0.012, num_timesteps=10)
