"""Wan 2.1's flow objective and samplers against diffusers (issue 19 §4).

- the grids and timesteps of ``FlowMatchEulerDiscreteScheduler`` and ``UniPCMultistepScheduler``
  (``use_flow_sigmas``), step counts 1 to 50, the shifts Wan and FlashI2V use;
- our sampling loop (``minivdit.sample.generate`` → ``cfg_denoise_fn`` → ``Flow.sample``) against those
  schedulers driven as ``WanPipeline.__call__`` drives them, with a fixed stand-in network, and against
  ``WanPipeline.__call__`` itself on a tiny random ``WanTransformer3DModel``;
- point-mass recovery; the dynamic shift (FlashI2V's training times) and ``FlowConfig.wan()``.

Run: ``OMP_NUM_THREADS=1 pytest -q tests/test_flow_wan.py`` (CPU, ~10 s, most of it importing diffusers).
"""

import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch
from einops import rearrange

from minivdit.config import from_dict, to_dict
from minivdit.models.cond import Cond
from minivdit.objectives.flow import (
    Flow,
    FlowConfig,
    euler_schedule,
    seq_len_shift,
    shift_time,
    unipc_schedule,
)
from minivdit.sample import generate

diffusers = pytest.importorskip("diffusers")

SHAPE = (2, 3, 4, 4, 6)  # [B, F, C, H, W], non-square
CPU = torch.device("cpu")
GUIDANCE = 5.0  # Wan's guidance_scale (pipeline default, Wan2.1 generate.py)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _video(shape=SHAPE, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(shape, generator=_gen(seed), dtype=dtype)


def _scheduler(sampler: str, shift: float):
    """The schedulers as the Wan pipelines use them (diffusers' Wan docs and pipeline tests)."""
    if sampler == "unipc":
        return diffusers.UniPCMultistepScheduler(
            prediction_type="flow_prediction",
            use_flow_sigmas=True,
            num_train_timesteps=1000,
            flow_shift=shift,
        )
    return diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)


# ----------------------------------------------------------------------------------------------------------
# Grids and timesteps
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shift", [1.0, 3.0, 5.0, 7.0])
def test_schedules_match_diffusers(shift):
    """Bit-identical by construction: the same numpy float64 and torch float32 operations, in the same order,
    on the same inputs (``euler_schedule`` / ``unipc_schedule`` docstrings)."""
    for steps in (1, 2, 7, 40, 50):
        for sampler, ours in (("euler", euler_schedule), ("unipc", unipc_schedule)):
            sched = _scheduler(sampler, shift)
            sched.set_timesteps(steps)
            sigmas, t_model = ours(steps, shift)
            assert sigmas.dtype == t_model.dtype == torch.float32
            assert sigmas.shape == (steps + 1,) and t_model.shape == (steps,) and sigmas[-1] == 0
            assert torch.equal(sigmas, sched.sigmas), (sampler, steps)
            assert torch.equal(t_model, sched.timesteps.to(torch.float32)), (sampler, steps)
    # UniPC: integer timesteps, truncated from σ·1000 (999 first, as σ_0 = 1 − 1e-6)
    _, t_unipc = unipc_schedule(50, shift)
    assert t_unipc[0] == 999 and torch.equal(t_unipc, t_unipc.round())
    # FlowMatchEuler shifts its σ_min = shift(1/1000) a second time: its last nonzero σ is shift(shift(1e-3))
    s_min = shift_time(shift_time(torch.tensor(1e-3, dtype=torch.float64), shift), shift)
    assert euler_schedule(50, shift)[0][-2].item() == pytest.approx(s_min.item(), rel=1e-6)
    flow = Flow(FlowConfig.wan(shift, "euler"))
    assert all(torch.equal(a, b) for a, b in zip(flow.diffusers_schedule(9), euler_schedule(9, shift)))


# ----------------------------------------------------------------------------------------------------------
# Sampling loops: the pipeline's, step for step
# ----------------------------------------------------------------------------------------------------------


class _StandIn(torch.nn.Module):
    """A fixed stand-in network with the backbone call shape: v = a(τ)·x + 0.4·x/(1 + x²) + c − 0.2τ with
    τ = t_model / 1000 and c = the first entry of the text tokens (so that CFG matters). Only correctly
    rounded elementwise operations (+, −, ×, ÷), so its value at an element does not depend on the layout."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # cfg_denoise_fn reads the device from a parameter

    def velocity(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        tau = (timestep.float() / 1000).view(-1, 1, 1, 1, 1)
        c = context[:, 0, 0].view(-1, 1, 1, 1, 1)
        return (0.9 - 0.5 * tau) * x + 0.4 * x / (1 + x * x) + c - 0.2 * tau

    def forward(self, x, t_model, cond, *, tap=None):
        return SimpleNamespace(pred=self.velocity(x, t_model, cond.context))


def _texts(B: int = SHAPE[0]) -> tuple[torch.Tensor, torch.Tensor]:
    return _video((B, 5, 8), seed=11), _video((B, 5, 8), seed=12)


def _pipeline_loop(sched, fn, latents, context, null_context, steps: int) -> torch.Tensor:
    """The oracle: the denoising loop of ``WanPipeline.__call__`` (``pipelines/wan/pipeline_wan.py``; the
    I2V pipeline's is the same with the condition concatenated to the model input), on diffusers' layout
    [B, C, F, H, W]: ``set_timesteps``, ``set_begin_index(0)``, the conditional then the unconditional
    call at ``timestep = t.expand(B)``, ``uncond + g·(cond − uncond)``, ``scheduler.step``."""
    sched.set_timesteps(steps, device="cpu")
    sched.set_begin_index(0)
    for t in sched.timesteps:
        latent_model_input = latents.to(torch.float32)  # transformer_dtype
        timestep = t.expand(latents.shape[0])
        noise_pred = fn(latent_model_input, timestep, context)
        noise_uncond = fn(latent_model_input, timestep, null_context)
        noise_pred = noise_uncond + GUIDANCE * (noise_pred - noise_uncond)
        latents = sched.step(noise_pred, t, latents, return_dict=False)[0]
    return latents


def _ours(model, cfg: FlowConfig, noise: torch.Tensor, context, null_context, steps: int) -> torch.Tensor:
    """Our sampling path: ``generate`` with a text ``Cond`` and its null, CFG in ``cfg_denoise_fn``."""
    return generate(
        model,
        Flow(cfg),
        cond=Cond(context=context),
        null=Cond(context=null_context),
        shape=tuple(noise.shape),
        steps=steps,
        cfg_scale=GUIDANCE,
        seed=0,
        device=CPU,
        noise=noise,
    )


@pytest.mark.parametrize(
    ("sampler", "shift", "steps"),
    [
        ("unipc", 3.0, 50),  # Wan 480p
        ("unipc", 5.0, 7),  # 720p; few steps: warm-up, order-2 corrector, lower-order final step
        ("unipc", 5.0, 2),
        ("unipc", 3.0, 1),
        ("euler", 3.0, 50),
        ("euler", 7.0, 7),  # FlashI2V's shift
    ],
)
def test_loop_matches_wan_pipeline_scheduler(sampler, shift, steps):
    """``generate`` with ``FlowConfig.wan`` equals the pipeline's loop around diffusers' scheduler.

    Bit-identical by construction, so exact equality is asserted: both sides apply the same elementwise
    float32 operations, in the same order, to the same values (the σ table and every 0-dim coefficient are
    the scheduler's, ``unipc.py`` and ``flow.py`` docstrings); the stand-in network and the CFG
    combination are elementwise; UniPC's only non-elementwise operations are the same 2 × 2
    ``torch.linalg.solve`` on the same inputs and single-term ``einsum`` contractions, which are plain
    products. A difference here would mean that the two loops no longer do the same arithmetic (a
    changed scheduler, or a kernel rounding one operation differently: ≤ 1 ulp = 6e-8 each, ≲ 10 a step,
    typically √500·6e-8 ≈ 1.3e-6 relative after 50 steps, within the issue's 1e-5): look, do not loosen.
    """
    model = _StandIn()
    noise = _video()
    context, null_context = _texts()
    seen = []

    def traced(x, timestep, ctx):
        seen.append(timestep.float()[0].item())
        return model.velocity(x, timestep, ctx)

    ref = _pipeline_loop(
        _scheduler(sampler, shift),
        traced,
        rearrange(noise, "b f c h w -> b c f h w"),
        context,
        null_context,
        steps,
    )
    ref = rearrange(ref, "b c f h w -> b f c h w")
    ours = _ours(model, FlowConfig.wan(shift, sampler), noise, context, null_context, steps)
    assert ours.dtype == torch.float32 and ours.shape == noise.shape and ours.isfinite().all()
    rel = ((ours - ref).abs().max() / ref.abs().max()).item()
    assert torch.equal(ours, ref), rel
    # the network saw the scheduler's timesteps, twice each (cond, uncond), never σ = 0
    expected = Flow(FlowConfig.wan(shift, sampler)).diffusers_schedule(steps)[1].tolist()
    assert seen[::2] == seen[1::2] == expected


def _tiny_wan_transformer():
    """diffusers' tiny Wan test config (anchors-conditioning §1.9), every parameter randomised."""
    tr = diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=4,
        out_channels=4,
        text_dim=8,
        freq_dim=256,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )
    g = _gen(5)
    with torch.no_grad():
        for p in tr.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return tr.eval()


class _DiffusersBackbone(torch.nn.Module):
    """A diffusers ``WanTransformer3DModel`` behind the backbone call shape ([B, F, C, H, W], ``Cond``), a
    stand-in for ``minivdit.models.wan`` (another part of issue 19). CFG hands it the conditional and the
    unconditional halves as one batch; it runs them as two calls, as the pipeline does, so that both sides
    run the transformer on the same batches."""

    def __init__(self, transformer) -> None:
        super().__init__()
        self.tr = transformer

    def forward(self, x, t_model, cond, *, tap=None):
        outs = []
        for xs, ts, cs in zip(x.chunk(2), t_model.chunk(2), cond.context.chunk(2)):
            hidden = rearrange(xs, "b f c h w -> b c f h w")
            out = self.tr(hidden_states=hidden, timestep=ts, encoder_hidden_states=cs, return_dict=False)[0]
            outs.append(rearrange(out, "b c f h w -> b f c h w"))
        return SimpleNamespace(pred=torch.cat(outs))


@pytest.mark.parametrize(("sampler", "shift"), [("unipc", 3.0), ("euler", 5.0)])
def test_generate_matches_wan_pipeline(sampler, shift):
    """Against ``WanPipeline.__call__`` itself (tiny random transformer, the same initial latents, the text
    embeddings passed in, ``output_type="latent"``), latents 2 × 4 × 2 × 8 × 12 (num_frames 5, 64 × 96).

    Both sides run the same transformer on the same inputs, then the operations of the previous test, so
    the result is bit-identical as run. The issue's bound, 1e-5 relative, is asserted rather than equality
    because a GEMM may block its sums differently for differently aligned buffers: that reorders sums of
    ≤ 32 terms (ffn_dim), ≤ 32·u ≈ 2e-6 relative per evaluation at worst and √32·u ≈ 3e-7 typically, and
    both samplers integrate such errors with weights summing to Σ|Δσ| = 1 (UniPC's corrector reuses them
    with weights ≤ 1); CFG (g = 5) scales the difference of the two halves, not their common part.
    """
    steps = 8
    tr = _tiny_wan_transformer()
    sched = _scheduler(sampler, shift)
    pipe = diffusers.WanPipeline(tokenizer=None, text_encoder=None, vae=None, scheduler=sched, transformer=tr)
    pipe.set_progress_bar_config(disable=True)
    latents = _video((2, 4, 2, 8, 12), seed=3)  # [B, C, F', h, w] as prepare_latents draws them
    context, null_context = _video((2, 6, 8), seed=4), _video((2, 6, 8), seed=6)
    with torch.no_grad():
        ref = pipe(
            prompt_embeds=context,
            negative_prompt_embeds=null_context,
            height=64,
            width=96,
            num_frames=5,
            num_inference_steps=steps,
            guidance_scale=GUIDANCE,
            latents=latents.clone(),
            output_type="latent",
            return_dict=False,
        )[0]
    noise = rearrange(latents, "b c f h w -> b f c h w")
    ours = _ours(_DiffusersBackbone(tr), FlowConfig.wan(shift, sampler), noise, context, null_context, steps)
    ref = rearrange(ref, "b c f h w -> b f c h w")
    assert ours.shape == ref.shape and ours.isfinite().all()
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5 * ref.abs().max().item())


@pytest.mark.parametrize("sampler", ["euler", "unipc"])
def test_state_dtype(sampler):
    """The documented dtype deviation: a bf16 network output does not round the state, which stays float32
    (the pipelines' ``prepare_latents`` dtype) from the first step to the last; a float64 start stays
    float64. The network always gets float32 timesteps [B]."""
    f32, f64 = torch.float32, torch.float64
    for start, state in ((f32, f32), (torch.bfloat16, f32), (f64, f64)):
        seen = set()

        def bf16_net(x, t_model, seen=seen):
            seen.add((x.dtype, t_model.dtype, tuple(t_model.shape)))
            return (0.5 * x).to(torch.bfloat16)

        out = Flow(FlowConfig.wan(3.0, sampler)).sample(bf16_net, _video().to(start), 5)
        assert out.dtype == start and seen == {(state, torch.float32, (SHAPE[0],))}


# ----------------------------------------------------------------------------------------------------------
# Point-mass recovery
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", ["euler", "unipc"])
@pytest.mark.parametrize("steps", [1, 7, 50])
def test_point_mass_recovery(sampler, steps):
    """With the exact velocity of a point mass at x_data, v = (x − x_data)/σ, the exact flow is the straight
    line through x_data along e = noise − x_data, x_σ = x_data + σ·e. Euler stays on it: every step adds a
    multiple of v = e·(position/σ), and its float32 step sizes only move the position along the line. UniPC
    too: its data prediction m = x − σ·v is x_data at every step, so D = 0, and its update
    c1·x − c2·m (c1 = σ_{i+1}/σ_i, c2 = α_{i+1}·expm1(−h)) has c1 − c2 = 1 (α_{i+1}·e^{−h} = α_i·σ_{i+1}/σ_i),
    which maps the line to itself. Both end at x_data: the last step returns x − σ_{N−1}·v = x_data.

    Float64 state with float32 σ and UniPC coefficients (the scheduler's). Off-line distance (the part of
    x − x_data orthogonal to e): Euler, float64 rounding only, ≲ 50 steps · 4 ops · 1.1e-16 · |x| ≤ 5 =
    1e-13, bound 1e-12; UniPC, its float32 c1 − c2 misses 1 by ≲ u32·|λ|/|h| ≲ 6e-8·14/2 ≈ 4e-7 a step,
    which puts ≤ 4e-7·|x_data| (≤ 4.5) off the line, earlier errors damped by c1 < 1: ≲ a few · 2e-6,
    bound 1e-4. The end: x − σ·(x − x_data)/σ = x_data to float64 rounding whatever the path: 1e-12."""
    x_data = _video(dtype=torch.float64)
    noise = _video(seed=1, dtype=torch.float64)
    e = noise - x_data
    obj = Flow(FlowConfig.wan(5.0, sampler))
    sigmas, t_model = obj.diffusers_schedule(steps)
    seen, off_line = [], []

    def exact(x_t, t):
        s = float(sigmas[len(seen)])  # the σ of this call (UniPC's integer timesteps do not give it back)
        seen.append(t[0].item())
        r = x_t - x_data
        off_line.append((r - (r * e).sum() / (e * e).sum() * e).abs().max().item())
        return r / s

    out = obj.sample(exact, noise, steps)
    assert out.dtype == torch.float64 and out.isfinite().all()
    # float64 throughout and an exact velocity on a straight path: every solver step lands on the line, so
    # the result is x_data up to fp64 rounding (~1e-16 per step, |x| ~ 3): 1e-12 is a wide margin
    torch.testing.assert_close(out, x_data, rtol=0, atol=1e-12)
    assert seen == t_model.tolist() and min(seen) > 0  # N evaluations, never at σ = 0
    assert max(off_line) <= (1e-12 if sampler == "euler" else 1e-4), off_line


def test_unipc_beats_euler_on_a_gaussian():
    """Data ~ N(μ, s²) per element: the probability-flow velocity is linear in x and the exact solution
    from σ = 1 is μ + s·noise (tests/test_objectives.py::test_heun_beats_euler_on_a_gaussian). UniPC is
    second order, Euler first: with Wan's 50 steps, each on its diffusers grid, UniPC is far closer (0.004
    against 0.1 at 40 steps). Few steps do not show it: UniPC's last step jumps from σ_{N−1} ≈ shift(1/N)
    (0.25 for 10 steps at shift 3) to its data prediction there, the posterior mean, not the ODE's end."""
    mu, s = 0.3, 0.5
    sig = {}

    def velocity(x_t, t_model):
        t = sig["now"]
        var = (1 - t) ** 2 * s**2 + t**2
        return -mu + (t - (1 - t) * s**2) / var * (x_t - (1 - t) * mu)

    noise = _video(dtype=torch.float64)
    exact = mu + s * noise
    err = {}
    for sampler in ("euler", "unipc"):
        obj = Flow(FlowConfig.wan(3.0, sampler))
        calls = iter(obj.diffusers_schedule(50)[0].tolist())

        def fn(x_t, t_model, calls=calls):
            sig["now"] = next(calls)  # the σ of this call (UniPC's timesteps are truncated integers)
            return velocity(x_t, t_model)

        err[sampler] = (obj.sample(fn, noise, 50) - exact).abs().max().item()
    assert err["unipc"] < err["euler"] / 4, err


# ----------------------------------------------------------------------------------------------------------
# Training times: logit-normal with FlashI2V's dynamic shift
# ----------------------------------------------------------------------------------------------------------


def test_dynamic_shift_values():
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    for n in (1, 256, 1560, 4096, 9000):
        # the same two lines of arithmetic as calculate_shift, then exp: equal by construction
        assert seq_len_shift(n) == math.exp(calculate_shift(n))
    # at the two ends the linear interpolation gives μ = 0.5 and 1.15 up to fp64 rounding (~1e-16)
    assert seq_len_shift(256) == pytest.approx(math.exp(0.5), rel=1e-12)
    assert seq_len_shift(4096) == pytest.approx(math.exp(1.15), rel=1e-12)
    obj = Flow(FlowConfig.wan())
    # Wan 480 × 832: latents 60 × 104, patch 2 × 2 -> 1560 tokens a frame (FlashI2V's h * w // 4)
    assert obj.seq_len((1, 13, 16, 60, 104)) == 1560
    assert obj.train_shift((1, 13, 16, 60, 104)) == pytest.approx(2.0559, abs=1e-4)
    assert obj.seq_len((2, 5, 16, 8, 12)) == 24  # non-square; frames do not count
    with pytest.raises(ValueError, match=r"9×12.*seq_patch"):
        obj.seq_len((2, 5, 16, 9, 12))
    with pytest.raises(ValueError, match=r"\[B, F, C, H, W\]"):
        obj.seq_len((5, 16, 8, 12))
    assert Flow(FlowConfig(shift=3.0)).train_shift((1, 13, 16, 60, 104)) == 3.0  # not dynamic: the field


def test_training_times_follow_flashi2v():
    """``sample_t``/``corrupt`` draw σ = sigmoid(N(0, 1)) and shift it by exp(μ(h·w/4)), as FlashI2V's
    ``_set_sigmas`` (written out here from its formula); the shift grows with the latent size; the target,
    x_t and t_model = 1000σ are the flow path's."""
    obj = Flow(FlowConfig.wan())
    shape = (4096, 1, 2, 60, 104)
    x = torch.zeros(1, 1, 2, 60, 104).expand(shape)  # only the shape matters for t
    k = (1.15 - 0.5) / (4096 - 256)
    shift = math.exp(60 * 104 // 4 * k + (0.5 - k * 256))
    z = torch.randn(4096, generator=_gen(0))
    expected = shift * torch.sigmoid(z) / (1 + (shift - 1) * torch.sigmoid(z))
    t = obj.sample_t(4096, _gen(0), shape=shape)
    torch.testing.assert_close(t, expected, rtol=0, atol=0)  # the same operations on the same draws
    assert abs(t.median().item() - shift / (1 + shift)) < 0.02  # median of sigmoid(N(0, 1)): 1/2; 4.6 s.e.
    small = obj.sample_t(4096, _gen(0), shape=(1, 1, 2, 16, 16))  # 64 tokens: shift 1.60, not 2.06
    assert (t >= small).all() and t.median() > small.median() + 0.04
    batch = x[:16]
    noised = obj.corrupt(batch, _gen(0))
    t16 = obj.sample_t(16, _gen(0), shape=batch.shape)
    torch.testing.assert_close(noised.t, t16, rtol=0, atol=0)  # t is the generator's first draw
    torch.testing.assert_close(noised.t_model, 1000 * noised.t, rtol=0, atol=0)
    torch.testing.assert_close(noised.target, noised.noise - batch, rtol=0, atol=0)
    torch.testing.assert_close(noised.x_t, Flow.path(batch, noised.noise, noised.t), rtol=0, atol=0)
    with pytest.raises(ValueError, match="shape"):
        obj.sample_t(4, _gen(0))


# ----------------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------------


def test_wan_config_and_validation():
    cfg = FlowConfig.wan()
    released = dict(
        sampler="unipc",
        sampling_grid="diffusers",
        shift=3.0,
        t_model_scale=1000.0,
        prediction="velocity",
        t_sampling="logit_normal",
        logit_mean=0.0,
        logit_std=1.0,
        dynamic_shift=True,
        base_shift=0.5,
        max_shift=1.15,
        base_seq_len=256,
        max_seq_len=4096,
        seq_patch=(2, 2),
    )
    assert {k: getattr(cfg, k) for k in released} == released
    assert FlowConfig.wan(7, "euler").shift == 7.0  # FlashI2V's inference shift, an int accepted
    assert from_dict(FlowConfig, to_dict(cfg)) == cfg  # the run config round-trips (tuple field)
    # the defaults (V-DiT recipes) are unchanged
    base = FlowConfig()
    assert (base.sampler, base.sampling_grid, base.dynamic_shift) == ("euler", "linear", False)
    for bad, field in (
        (dict(sampler="unipc"), "sampling_grid"),  # UniPC on the linear grid
        (dict(sampler="heun", sampling_grid="diffusers"), "sampling_grid"),
        (dict(sampling_grid="diffusers", t_model_scale=1.0), "t_model_scale"),
        (dict(sampling_grid="diffusers", t_model_scale=999.5), "t_model_scale"),
        (dict(base_seq_len=4096), "max_seq_len"),
        (dict(base_seq_len=0), "base_seq_len"),
        (dict(seq_patch=(0, 2)), "seq_patch"),
        (dict(seq_patch=(2,)), "seq_patch"),
        (dict(sampler="dpm"), "sampler"),
        (dict(sampling_grid="karras"), "sampling_grid"),
    ):
        with pytest.raises(ValueError, match=field):
            FlowConfig(**bad)
    with pytest.raises(ValueError, match="sampling_grid"):
        FlowConfig.wan(sampling_grid="linear")  # unipc needs the diffusers grid
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.shift = 5.0  # type: ignore[misc]
    with pytest.raises(ValueError, match="steps"):
        Flow(cfg).sample(lambda x, t: x, _video(), 0)
    with pytest.raises(ValueError, match=r"\(2, 3, 1, 4, 6\)"):  # a network with the wrong channel count
        Flow(cfg).sample(lambda x, t: x[:, :, :1], _video(), 2)
