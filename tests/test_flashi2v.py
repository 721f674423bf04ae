"""FlashI2V (``minivdit/models/flashi2v.py``): identity with the wrapped backbone at init, parity with the
FlashI2V repository's extractor, projection, Fourier injection, training interpolation and sampling loop, the
ratio limits, gradients, the start-frame encode and the errors. CPU, fp32, offline, a few seconds.

Oracle: ``PKU-YuanGroup/FlashI2V`` @ e244797. It is not a package we can depend on (and its model module
imports its Wan code and torch's tensor-parallel API), so the functions used are re-implemented minimally
below, each cited by path and line, in the reference's [B, C, T, H, W] layout. The backbones are tiny minivdit
models (V-DiT full-3D, CogVideoX-1.0 T2V) with every parameter randomised, so no output is trivially zero.

Tolerances (fp32, unit roundoff u = 2⁻²⁴ ≈ 6e-8). Where ours and the oracle run different but equivalent
kernels (a per-frame Conv2d vs the reference's Conv3d, sums in another order), an n-term dot product differs
by at most n·u·Σ|w·x|; n ≤ 4C·9 = 144 here gives 8.6e-6·Σ|w·x|, and with random weights Σ|w·x| is within a
small factor (≲ 10) of max|out|, which two tiny blocks keep: bound 1e-4 of max|ref| (``MODEL_RTOL``). An
fp32 FFT round trip on N = h·w ≤ 70 points errs by O(u·log₂N) ≈ 4e-7 of the input's norm: bound 1e-5
(``FFT_RTOL``). Exact equality only where the operations are the same by construction (said there).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn as nn
from einops import rearrange

from minivdit.models.cogvideox import CogVideoXConfig, CogVideoXTransformer
from minivdit.models.cond import Cond
from minivdit.models.dit import DiTConfig, VDiT
from minivdit.models.flashi2v import (
    FlashI2V,
    FlashI2VConfig,
    LearnableProj,
    centred_spectrum,
    cutoff_radius,
    high_frequency,
    radius_map,
    shift_latents,
    start_frame_latents,
)
from minivdit.objectives.flow import Flow, FlowConfig

pytestmark = pytest.mark.usefixtures("single_thread")

B, F, C, H, W = 2, 3, 4, 4, 6  # latents: non-square, 3 frames; tokens 3 x 2 x 3 with patch 2
TEXT_LEN, TEXT_DIM = 5, 8
U = 2.0**-24  # fp32 unit roundoff
MODEL_RTOL = 1e-4  # module docstring: n·u·Σ|w·x| per layer, two tiny blocks
FFT_RTOL = 1e-5  # module docstring: O(u·log₂N) per FFT round trip


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return ((a.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


# --------------------------------------------------------------------------- tiny random backbones
def randomize(module: nn.Module, seed: int, std: float = 0.3) -> nn.Module:
    """Every parameter, norms and modulation tables included, drawn N(0, std²) (adaLN-zero and zero heads
    would otherwise make the outputs 0 and every comparison trivial)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


def make_backbone(kind: str) -> tuple[nn.Module, dict]:
    """A tiny random backbone and the non-image conditioning it takes."""
    if kind == "vdit":
        cfg = DiTConfig(
            block_type="full3d", depth=2, hidden_size=32, num_heads=2, patch_size=2, in_channels=C,
            input_size=(H, W), num_frames=F, num_classes=0, learn_sigma=False,
        )  # fmt: skip
        return randomize(VDiT(cfg).eval(), 0), {}
    cfg = CogVideoXConfig(  # CogVideoX-1.0 T2V (5B layout: RoPE, no absolute PE), per-frame Conv2d patches
        num_attention_heads=2, attention_head_dim=16, in_channels=C, out_channels=C, time_embed_dim=16,
        text_embed_dim=TEXT_DIM, num_layers=2, sample_height=H, sample_width=W, sample_frames=4 * (F - 1) + 1,
        max_text_seq_length=TEXT_LEN, use_rotary_positional_embeddings=True,
    )  # fmt: skip
    g = torch.Generator().manual_seed(1)
    context = torch.randn(B, TEXT_LEN, TEXT_DIM, generator=g)
    return randomize(CogVideoXTransformer(cfg).eval(), 1), {"context": context}


def inputs(seed: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x_t = torch.randn(B, F, C, H, W, generator=g)
    t_model = torch.tensor([250.0, 800.0])
    z_c = torch.randn(B, 1, C, H, W, generator=g)  # distinct per sample: a batch-order mix-up shows
    return x_t, t_model, z_c


# --------------------------------------------------------------------------- the FlashI2V oracle
def oracle_extract(tensor: torch.Tensor, ratio_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``flashi2v/utils/filter.py`` ``HighFrequencyExtractor.extract`` (l.133-224) on the released path
    (``return_abs=True``, ``cutoff_freq=None``, no sigmas, ``downscale_factor=1``, no normalisation), with the
    per-sample ratio given instead of drawn (l.158-163). Returns (hf [B, C, H, W], cut-off radii [B])."""
    b, _, h, w = tensor.shape
    spec = torch.fft.fftshift(
        torch.fft.fft2(tensor.to(torch.float32), dim=(-2, -1)), dim=(-2, -1)
    )  # l.149-150
    yy, xx = torch.meshgrid(torch.arange(h) - h // 2, torch.arange(w) - w // 2, indexing="ij")  # l.54-59
    radius = torch.sqrt(xx.float() ** 2 + yy.float() ** 2)  # l.60

    def mag(z):  # _complex_mag, l.66-67
        return torch.sqrt(z.real * z.real + z.imag * z.imag + 1e-12)

    ratio_b = ratio_b.clamp(0.0, 1.0)  # l.163
    idx = torch.argsort(radius.flatten())  # l.170-172 (unstable, as there)
    cum = torch.cumsum(mag(spec).mean(dim=1).view(b, -1)[:, idx], dim=1)  # l.167, l.175-179
    k = torch.sum(cum < (cum[:, -1] * ratio_b).unsqueeze(1), dim=1).clamp(0, h * w - 1)  # l.180-185
    cutoff = radius.flatten()[idx].index_select(0, k)  # l.188
    mask = (radius.unsqueeze(0) >= cutoff.view(b, 1, 1)).float().unsqueeze(1)  # l.199
    hf = mag(torch.fft.ifft2(torch.fft.ifftshift(spec * mask, dim=(-2, -1)), dim=(-2, -1)))  # l.202-206
    return hf, cutoff


def oracle_learnable_proj(c: int, conv3x3x3: bool = False) -> nn.Sequential:
    """``flashi2v/modules/flashi2v.py`` ``LearnableProj.proj`` (l.41-76) on [B, C, T, H, W]."""
    k, pad = ((3, 3, 3), (1, 1, 1)) if conv3x3x3 else ((1, 3, 3), (0, 1, 1))
    return nn.Sequential(nn.Conv3d(c, 4 * c, k, padding=pad), nn.SiLU(), nn.Conv3d(4 * c, c, k, padding=pad))


def oracle_fourier_embedding(c: int, dim: int, patch: tuple[int, int, int]) -> nn.Sequential:
    """``flashi2v/modules/flashi2v.py`` ``FlashI2VModel.fourier_embedding`` (l.94-107)."""
    return nn.Sequential(nn.Conv3d(c, dim, patch, stride=patch), nn.Conv3d(dim, dim, (1, 1, 1)))


def load_oracle_weights(model: FlashI2V, phi: nn.Sequential, fourier: nn.Sequential | None) -> None:
    """Copy the oracle's (random) weights into the wrapper: the same layer names; our per-frame Conv2d is
    the reference's Conv3d with its time-1 kernel axis dropped."""
    model.learnable_proj.proj.load_state_dict(phi.state_dict())
    if fourier is not None:
        state = {k: v.squeeze(2) if v.ndim == 5 else v for k, v in fourier.state_dict().items()}
        model.fourier_embedding.load_state_dict(state)


def oracle_forward(base, proj_name, x_t, t_model, cond, z_c, phi, fourier, ratio) -> torch.Tensor:
    """FlashI2V's model call on our backbone: ``infer/infer_flashi2v.py`` ``FlashI2VWrapper.forward``
    (l.62-78: Fourier features repeated over the T latent frames, ``latents − learnable_proj(z_c)``) and
    ``FlashI2VModel.forward`` l.159-161 (``patch_embedding(x) + fourier_embedding(features)``). Our
    backbones patchify each frame of ``(b f) c h w`` (``models/dit.py`` ``VDiT.forward``,
    ``models/cogvideox.py`` ``PatchEmbed.forward``): the oracle's [B, D, T, h, w] tokens go there so."""
    z = rearrange(z_c, "b f c h w -> b c f h w")  # [B, C, 1, H, W], the reference's layout
    latents = x_t - rearrange(phi(z), "b c f h w -> b f c h w")  # l.67, l.70
    handle = None
    if fourier is not None:
        features = oracle_extract(z.squeeze(2), ratio)[0].unsqueeze(2).repeat(1, 1, x_t.shape[1], 1, 1)
        tokens = rearrange(fourier(features), "b d t h w -> (b t) d h w")
        handle = base.get_submodule(proj_name).register_forward_hook(lambda m, a, out: out + tokens)
    try:
        return base(latents, t_model, cond).pred
    finally:
        if handle is not None:
            handle.remove()


# --------------------------------------------------------------------------- the wrapper
@pytest.mark.parametrize("kind", ["vdit", "cogvideox"])
def test_identity_at_init(kind):
    """φ ≡ 0 and a zero 1×1 projection: the wrapper returns the base model's output bit for bit (x − 0 and
    tokens + 0 are exact in IEEE arithmetic), in eval (ratio 0.1) and train mode (random ratio), tap too."""
    base, extra = make_backbone(kind)
    model = FlashI2V(base)
    x_t, t_model, z_c = inputs()
    for bf16 in (False, True):  # fp32, and the trainer's bf16 autocast (φ stays fp32 inside)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            want = base(x_t, t_model, Cond(**extra), tap=1)
            for train in (False, True):
                model.train(train)
                base.eval()  # no dropout anywhere: only the ratio draw depends on the mode
                got = model(x_t, t_model, Cond(image_latents=z_c, **extra), tap=1)
                assert torch.equal(got.pred, want.pred) and torch.equal(got.hidden, want.hidden)


@pytest.mark.parametrize("kind,fourier", [("vdit", True), ("cogvideox", True), ("vdit", False)])
def test_forward_matches_flashi2v(kind, fourier):
    """With random φ and Fourier weights the wrapper equals FlashI2V's model call (oracle above) on the same
    backbone; fourier=False (ablation arm (c)) equals the shift alone."""
    base, extra = make_backbone(kind)
    model = FlashI2V(base, FlashI2VConfig(fourier=fourier))
    D = model.base.get_submodule(model.patch_proj).out_channels
    phi = randomize(oracle_learnable_proj(C), 3)
    embed = randomize(oracle_fourier_embedding(C, D, (1, 2, 2)), 4) if fourier else None
    load_oracle_weights(model, phi, embed)
    x_t, t_model, z_c = inputs()
    ratio = torch.tensor([0.1, 0.6])
    got = model(x_t, t_model, Cond(image_latents=z_c, **extra), ratio=ratio).pred
    want = oracle_forward(base, model.patch_proj, x_t, t_model, Cond(**extra), z_c, phi, embed, ratio)
    err = rel_err(got, want)
    print(f"\nFlashI2V forward vs oracle ({kind}, fourier={fourier}): max|Δ|/max|ref| = {err:.2e}")
    assert err <= MODEL_RTOL
    assert rel_err(got, base(x_t, t_model, Cond(**extra)).pred) > 1e-2  # the condition does act


def test_sampling_matches_flashi2v_loop():
    """Our flow sampler around the wrapper = FlashI2V's loop (``flashi2v_flow_matching.py`` ``sample``
    l.21-53 with ``infer_flashi2v.py`` l.62-78): fp32 unshifted latents, the model fed ``latents − φ``, the
    Euler update ``latents + v·(σ_{i+1} − σ_i)`` on the unshifted latents, no un-shift at the end. The grid
    and ``t_model`` are taken from our sampler (the grid is not what is compared)."""
    base, _ = make_backbone("vdit")
    model = FlashI2V(base).eval()
    D = base.x_embedder.proj.out_channels
    phi, embed = (
        randomize(oracle_learnable_proj(C), 5),
        randomize(oracle_fourier_embedding(C, D, (1, 2, 2)), 6),
    )
    load_oracle_weights(model, phi, embed)
    _, _, z_c = inputs()
    noise = torch.randn(B, F, C, H, W, generator=torch.Generator().manual_seed(7))
    flow, steps = Flow(FlowConfig(shift=3.0)), 3
    cond = Cond(image_latents=z_c)
    got = flow.sample(lambda x, t_model: model(x, t_model, cond).pred, noise, steps)

    grid = flow.time_grid(steps)
    ratio = torch.full((B,), 0.1)  # inference ratio
    latents = noise.clone()
    for i in range(steps):
        t_model = torch.full((B,), float(grid[i]) * 1000.0)
        v = oracle_forward(base, "x_embedder.proj", latents, t_model, Cond(), z_c, phi, embed, ratio)
        latents = latents + v * float(grid[i + 1] - grid[i])
    err = rel_err(got, latents)
    print(f"\nFlashI2V sampling vs oracle loop: max|Δ|/max|ref| = {err:.2e}")
    assert err <= MODEL_RTOL


def test_classifier_free_guidance_keeps_the_start_frame():
    """CFG through ``minivdit.sample.cfg_denoise_fn`` on a class-conditional V-DiT: the wrapper's null
    ``Cond`` is the base's (null class) with the start frame kept, as the reference's unconditional branch
    (``flashi2v_flow_matching.py`` l.44-51), and the doubled batch equals the two halves run apart."""
    from minivdit.sample import cfg_denoise_fn

    cfg = replace(make_backbone("vdit")[0].cfg, num_classes=3)
    model = FlashI2V(randomize(VDiT(cfg).eval(), 14)).eval()
    load_oracle_weights(model, randomize(oracle_learnable_proj(C), 15), None)
    x_t, t_model, z_c = inputs()
    cond = Cond(label=torch.tensor([0, 2]), image_latents=z_c)
    null = model.null_cond(cond)
    assert torch.equal(null.label, torch.tensor([3, 3])) and null.image_latents is z_c
    scale = 4.0
    got = cfg_denoise_fn(model, cond, null, scale=scale, guided_channels=C)(x_t, t_model)
    on, off = model(x_t, t_model, cond).pred, model(x_t, t_model, null).pred
    assert rel_err(got, off + scale * (on - off)) <= MODEL_RTOL  # one batch of 4 vs two of 2


def test_gradients_reach_phi_and_fourier():
    """At init only the zero-init last layers of φ and of the Fourier embedding get gradients (the first
    layers' gradients pass through those zero weights); φ learns through the model's input only. With
    activation checkpointing on (set through the wrapper): it re-runs the blocks only, not the hooked patch
    embedding, so the forward's exactly-once check holds."""
    base, _ = make_backbone("vdit")
    model = FlashI2V(base).train()
    model.grad_checkpointing = True
    assert base.grad_checkpointing
    x_t, t_model, z_c = inputs()
    model(x_t, t_model, Cond(image_latents=z_c)).pred.square().mean().backward()
    phi, fourier = model.learnable_proj.proj, model.fourier_embedding
    for layer in (phi[2], fourier[1]):
        assert layer.weight.grad.abs().sum() > 0 and layer.bias.grad.abs().sum() > 0
    for layer in (phi[0], fourier[0]):
        assert not layer.weight.grad.any() and not layer.bias.grad.any()


def test_ratio_schedule():
    """Training: ratio ~ U[0.05, 0.95] per sample; eval: 0.1 (the released configs)."""
    model = FlashI2V(make_backbone("vdit")[0])
    torch.manual_seed(0)
    drawn = model.train().ratio(4096, torch.device("cpu"))
    assert drawn.min() >= 0.05 and drawn.max() <= 0.95 and drawn.std() > 0.2  # U[.05,.95]: std 0.26
    assert torch.equal(model.eval().ratio(3, torch.device("cpu")), torch.full((3,), 0.1))


# --------------------------------------------------------------------------- extractor and φ
def test_extractor_matches_flashi2v():
    """``high_frequency`` and ``cutoff_radius`` against filter.py's ``extract`` on odd and even, non-square
    grids. The cut-off radii are compared exactly: they are radius values picked by the same cumulative sums
    (tied bins may sum in another order; that moves the cut-off only if ratio·total fell within rounding of a
    partial sum at a tie group's edge, which random data does not)."""
    g = torch.Generator().manual_seed(8)
    for shape in ((3, 4, 7, 10), (3, 16, 8, 8)):
        z = torch.randn(*shape, generator=g)
        ratio = torch.tensor([0.05, 0.5, 0.95])
        want_hf, want_cut = oracle_extract(z, ratio)
        assert torch.equal(cutoff_radius(centred_spectrum(z), ratio), want_cut)
        err = rel_err(high_frequency(z, ratio), want_hf)
        print(f"\nextractor {shape} vs oracle: max|Δ|/max|ref| = {err:.2e}")
        assert err <= FFT_RTOL


def test_ratio_limits_and_monotone_cutoff():
    """ratio → 0 keeps every bin: hf ≈ |z|; ratio → 1 keeps only the outermost radius; in between the
    cut-off grows with ratio and the kept energy Σ hf² shrinks (nested masks, Parseval)."""
    z = torch.randn(2, 4, 7, 10, generator=torch.Generator().manual_seed(9))
    spectrum, r = centred_spectrum(z), radius_map(7, 10)
    assert torch.equal(cutoff_radius(spectrum, 0.0), torch.zeros(2))
    assert rel_err(high_frequency(z, 0.0), z.abs()) <= FFT_RTOL
    assert torch.equal(cutoff_radius(spectrum, 1.0), r.max().expand(2))
    ratios = torch.linspace(0.0, 1.0, 21)
    cuts = torch.stack([cutoff_radius(spectrum, float(q)) for q in ratios])  # [21, B]
    assert (cuts.diff(dim=0) >= 0).all() and (cuts[-1] > cuts[0]).all()
    energy = torch.stack([high_frequency(z, float(q)).square().sum(dim=(1, 2, 3)) for q in ratios])  # [21, B]
    assert (energy[1:] <= energy[:-1] * (1 + FFT_RTOL)).all() and (energy[-1] < 0.5 * energy[0]).all()


@pytest.mark.parametrize("kernel_t", [1, 3])
def test_learnable_proj_matches_flashi2v(kernel_t):
    """φ = the reference's ``LearnableProj`` (both kernels, on 2 frames so the 3×3×3 padding matters); its
    init is xavier + zero bias, then zeros (φ ≡ 0); it runs in fp32 under a bf16 autocast."""
    phi = LearnableProj(C, kernel_t)
    phi.init_weights()
    z = torch.randn(B, 2, C, H, W, generator=torch.Generator().manual_seed(10))
    assert not phi(z).any() and phi.proj[0].weight.abs().sum() > 0 and not phi.proj[0].bias.any()
    oracle = randomize(oracle_learnable_proj(C, conv3x3x3=kernel_t == 3), 11)
    phi.proj.load_state_dict(oracle.state_dict())
    want = rearrange(oracle(rearrange(z, "b f c h w -> b c f h w")), "b c f h w -> b f c h w")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = phi(z)
    assert got.dtype == torch.float32
    err = rel_err(got, want)
    print(f"\nLearnableProj k_t={kernel_t} vs oracle: max|Δ|/max|ref| = {err:.2e}")
    assert err <= MODEL_RTOL


# --------------------------------------------------------------------------- latent shift
def test_shift_matches_flashi2v_and_keeps_the_target():
    """Training input: our objective's x_t shifted by φ equals the reference's ``interpolation``
    (``flashi2v_flow_matching.py`` l.65-75: σ·ε + (1 − σ)·x₀ − φ in fp32), and the target is its
    ``training_losses`` target ε − x₀ (``flow_matching.py`` l.83). The shift leaves the target invariant: the
    time derivative of the shifted path (fp64 finite difference; the path is linear in t, so exact up to
    rounding) is ε − x₀ for any φ."""
    g = torch.Generator().manual_seed(12)
    x_data, phi = torch.randn(B, F, C, H, W, generator=g), torch.randn(B, 1, C, H, W, generator=g)
    sigma = torch.tensor([0.3, 0.8])
    noised = Flow(FlowConfig()).corrupt(x_data, g, t=sigma)
    s = sigma.view(B, 1, 1, 1, 1)
    want = s * noised.noise + (1.0 - s) * x_data - phi
    # three roundings (two products, one sum) and the subtraction: ≤ 4u of the largest term
    bound = 4 * U * (noised.noise.abs().max() + x_data.abs().max() + phi.abs().max())
    assert (shift_latents(noised.x_t, phi) - want).abs().max() <= bound
    assert torch.equal(noised.target, noised.noise - x_data)

    x64, n64, phi64 = x_data.double(), noised.noise.double(), phi.double()
    t1, t2 = torch.full((B,), 0.25, dtype=torch.float64), torch.full((B,), 0.75, dtype=torch.float64)
    velocity = (
        shift_latents(Flow.path(x64, n64, t2), phi64) - shift_latents(Flow.path(x64, n64, t1), phi64)
    ) / 0.5
    assert (velocity - (n64 - x64)).abs().max() <= 1e-12


# --------------------------------------------------------------------------- start frame and errors
def test_start_frame_latents():
    """The start frame is encoded alone, as a one-frame clip, in fp32; a clip is refused."""
    from minivdit.models.vae.causal3d import CausalVAE3D, CausalVAE3DConfig

    vae = CausalVAE3D.from_config(
        CausalVAE3DConfig(latent_channels=C, base_channels=8, channel_multipliers=(1, 1, 1, 1))
    ).eval()
    vae.sample_posterior = False  # the reference encodes the posterior mean
    video = torch.rand(B, 5, 3, 16, 16, generator=torch.Generator().manual_seed(13)) * 2 - 1
    z = start_frame_latents(vae, video[:, 0])
    assert z.shape == (B, 1, C, 2, 2) and z.dtype == torch.float32
    assert torch.equal(z, vae.encode(video[:, :1]))
    with pytest.raises(ValueError, match=r"image must be float \[B, 3, H, W\]"):
        start_frame_latents(vae, video)


def test_errors():
    base, _ = make_backbone("vdit")
    model = FlashI2V(base)
    x_t, t_model, z_c = inputs()
    with pytest.raises(ValueError, match="needs Cond.image_latents"):
        model(x_t, t_model, Cond())
    with pytest.raises(ValueError, match=r"encoded alone, \[B, 1, C, h, w\]"):
        model(x_t, t_model, Cond(image_latents=z_c.expand(-1, F, -1, -1, -1)))  # a zero-padded concat shape
    with pytest.raises(ValueError, match="no patch projection named nope"):
        FlashI2V(base, FlashI2VConfig(patch_proj="nope"))
    with pytest.raises(ValueError, match="train_ratio"):
        FlashI2VConfig(train_ratio=(0.9, 0.1))
    v15 = CogVideoXConfig(  # CogVideoX 1.5: a linear patchify over flattened (t, p, q) patches
        num_attention_heads=2, attention_head_dim=16, in_channels=C, out_channels=C, time_embed_dim=16,
        text_embed_dim=TEXT_DIM, num_layers=1, sample_height=H, sample_width=W, patch_size_t=2,
        patch_bias=False, max_text_seq_length=TEXT_LEN, use_rotary_positional_embeddings=True,
    )  # fmt: skip
    with torch.device("meta"):
        cog15 = CogVideoXTransformer(v15)
    with pytest.raises(ValueError, match="convolutional patch embedding"):
        FlashI2V(cog15)
    assert FlashI2V(cog15, FlashI2VConfig(fourier=False)).fourier_embedding is None  # the shift needs no hook
