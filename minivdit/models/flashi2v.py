"""FlashI2V: image-to-video on a text-to-video backbone by latent shifting and Fourier guidance, as a wrapper.

Reference: FlashI2V (UniWorld-OSP2.0, ``seeds/003``), ``PKU-YuanGroup/FlashI2V`` @ e244797, built on
Wan2.1-T2V; facts in ``reference/anchors-modules.md`` §3. Files read: ``flashi2v/modules/flashi2v.py``
(``LearnableProj``, ``FlashI2VModel``), ``flashi2v/utils/filter.py`` (``HighFrequencyExtractor``),
``flashi2v/schedulers/flashi2v_flow_matching.py``, ``train/train_flashi2v.py`` and ``infer/infer_flashi2v.py``
(both ``FlashI2VWrapper``), ``configs/{train,infer}/gpu/flashi2v_1_3b.yaml``. Written from them, not copied.

The start frame's latent ``z_c`` [B, 1, C, h, w] (the clean frame 0, VAE-encoded alone:
``start_frame_latents``) conditions the backbone twice, and nothing else does (no channel concat, no image
tokens):

1. **Latent shift.** φ = ``LearnableProj`` (Conv3d C→4C, SiLU, Conv3d 4C→C, kernel (1,3,3), the last conv
   zero-init, run in fp32) maps z_c to a shift broadcast over all F latent frames. The backbone sees
   ``x_t − φ(z_c)``: in training ``x_t = σε + (1−σ)x_data`` with the target ``ε − x_data`` unchanged
   (``flashi2v_flow_matching.py`` l.71, ``flow_matching.py`` l.83: the shift is the same at both ends of the
   path, so the velocity is the same); in sampling the solver keeps the unshifted fp32 latents and only the
   model input is shifted (``infer_flashi2v.py`` l.70; ``flashi2v_flow_matching.py`` l.21, l.53). φ learns
   only through the model's input. Here the subtraction happens inside ``FlashI2V.forward``, so the objective
   (``objectives/flow.py``), ``train_step`` and the samplers run unchanged: ``corrupt`` gives the unshifted
   x_t and its target, the wrapper shifts its input (DESIGN.md §7, last point).
2. **Fourier guidance.** ``high_frequency(z_c, ratio)`` (``filter.py`` ``extract`` l.133-224 on the released
   path: ``cutoff_freq=None``, no sigmas, ``return_abs=True``, no normalisation or downsampling):

       S = fftshift(fft2(z_c))                                   per channel, over (h, w)
       r(y, x) = √((y − ⌊h/2⌋)² + (x − ⌊w/2⌋)²)                  radius of each centred frequency bin
       m = mean_c |S|,  bins sorted by r,  cum = cumsum(m)        per sample [B, h·w]
       k = #{cum < ratio · cum[-1]},  r_cut = r_sorted[k]         "ratio" of the magnitude is "low"
       hf = |ifft2(ifftshift(S · [r ≥ r_cut]))|                   hard radial high-pass, spatial magnitude

   with |a| = √(Re² + Im² + 1e−12) as the reference's ``_complex_mag`` (l.66-67). ``ratio`` ~ U[0.05, 0.95]
   per sample in training (``low_freq_energy_ratio: [0.05, 0.95]``, drawn as l.160) and 0.1 at inference
   (``configs/infer/gpu/flashi2v_1_3b.yaml``). ratio → 0 keeps every bin (hf ≈ |z_c|); the cut-off grows
   with ratio; ratio → 1 keeps only the outermost radius. hf is repeated over the F latent frames, patchified
   by a conv like the backbone's own patch embedding (xavier, zero bias), projected by a zero-init 1×1 conv
   (``fourier_embedding``, ``flashi2v.py`` l.94-107, l.121-126) and **summed** into the video tokens right
   after the backbone's patch embedding (l.159-161).

At init φ ≡ 0 and the Fourier tokens are exactly 0, so ``FlashI2V(base)`` returns the base model's output bit
for bit (``x_t − 0`` and ``tokens + 0`` are exact in IEEE arithmetic).

How the tokens reach the backbone. FlashI2V subclasses ``WanModel`` and edits its forward; minivdit wraps any
backbone with the call shape ``model(x_t, t_model, cond, *, tap)`` (DESIGN.md §7, §10) instead, so no
backbone file changes. The wrapper needs one point in the backbone's token stream: the output of its video
patch projection, a strided ``nn.Conv2d`` applied per frame to ``(b f) c h w`` (V-DiT ``x_embedder.proj``,
CogVideoX 1.0 ``patch_embed.proj``) or an ``nn.Conv3d`` on ``b c f h w`` (Wan ``patch_embedding``). For the
duration of one forward it registers a forward hook there that adds the Fourier tokens, built by a conv of
the same type, kernel and stride, so they come out in the projection's own layout; the hook is removed when
the call returns and must fire exactly once (``ValueError`` otherwise: a wrong ``patch_proj``). The hook sits
outside the checkpointed and compiled blocks (``dist.parallelize`` compiles and checkpoints blocks only), so
activation checkpointing and per-block ``torch.compile`` are unaffected; checkpointing the *whole* model
would re-run the projection without the hook and is not supported. A linear patch embedding over flattened
patches (CogVideoX 1.5's ``patch_size_t`` layout) raises ``ValueError``: its input layout is the backbone's
private business.

Deviations from the reference:
- The shift lives in the wrapper's forward (above), not in the scheduler's ``q_sample`` / the inference
  wrapper; the numbers are the same: ``x_t`` in fp32, minus φ in fp32, cast to the input's dtype.
- The Fourier patch conv follows the backbone's patch projection: per-frame ``Conv2d`` (p, p) on V-DiT and
  CogVideoX is FlashI2V's ``Conv3d`` (1, p, p) frame by frame; the 1×1 projection is a conv of the same
  dimensionality. On Wan both are ``Conv3d`` as released. Parameter names match the reference
  (``learnable_proj.proj.{0,2}``, ``fourier_embedding.{0,1}``).
- φ's fp32: the reference gets it from an fp32 FSDP2 policy on ``LearnableProj`` (``fsdp2_wrapper.py``
  l.48-54, ``models_blocks_to_output_float``) and asserts the dtype; here ``LearnableProj.forward`` disables
  autocast and computes in fp32 from fp32 (or upcast) weights.
- ``ratio`` in training is drawn from the global torch RNG, as the reference's ``torch.rand`` (l.160);
  ``train.py`` seeds that RNG per micro-batch, so a resumed run draws the same ratios. ``forward(ratio=...)``
  fixes it (tests, analysis).
- Not carried (off in every released config): the extractor's ``downscale_factor``, centring/standardising,
  low-pass output, external ``cutoff_freq``, the sigma-dependent ratio ``_get_low_info_ratio_from_sigma``
  (defined, never called) and ``return_abs=False``; context parallelism.
- ``FlashI2VConfig.fourier=False`` drops the Fourier branch (latent shift only): issue 19's ablation arm (c),
  not a released configuration.
- Classifier-free guidance: the reference's unconditional branch keeps φ and the Fourier features and drops
  the text only (``flashi2v_flow_matching.py`` l.44-51: the same ``model_kwargs``); ``Cond.null()`` keeps
  ``image_latents`` by default, so ``minivdit.sample.cfg_denoise_fn`` does the same.
- With a DDPM objective the wrapper shifts ``√ᾱ x_data + √(1−ᾱ) ε`` by −φ and the ε/v target is unchanged:
  an extrapolation (anchors §3.7), not from the paper.

Axis legend: B batch, F latent frames, C latent channels, h/w latent height/width, D token width.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor

from minivdit.config import check_types
from minivdit.models.cond import Cond
from minivdit.models.dit import DiTOutput

PATCH_PROJ_NAMES = ("x_embedder.proj", "patch_embed.proj", "patch_embedding")
"""Where the Fourier tokens go, tried in order when ``FlashI2VConfig.patch_proj`` is None: V-DiT
(``models/dit.py``), CogVideoX 1.0 (``models/cogvideox.py``), Wan (``models/wan.py``, diffusers' name)."""
MAG_EPS = 1e-12
"""Added inside the square root of every complex magnitude, as ``_complex_mag`` (filter.py l.66-67)."""
PHI_EXPANSION = 4
"""φ's hidden width is 4·C (``LearnableProj``, flashi2v.py l.45, l.62: ``proj_out_dim * 4``)."""


@dataclass(frozen=True, kw_only=True)
class FlashI2VConfig:
    """FlashI2V on top of a backbone; defaults = the released 1.3B / 14B configs."""

    phi_kernel_t: Literal[1, 3] = 1
    """φ's temporal kernel: (1, 3, 3) per frame (released, ``conv3x3x3_proj: False``) or (3, 3, 3)."""
    train_ratio: tuple[float, float] = (0.05, 0.95)
    """Training: ``ratio`` ~ U[lo, hi] per sample (``low_freq_energy_ratio: [0.05, 0.95]``)."""
    inference_ratio: float = 0.1
    """Eval mode: the fixed ``ratio`` (``configs/infer/gpu/flashi2v_*.yaml``: 0.1)."""
    fourier: bool = True
    """Add the Fourier tokens; False = latent shift only (issue 19 ablation arm (c), not released)."""
    patch_proj: str | None = None
    """Dotted name of the backbone's video patch projection (an ``nn.Conv2d`` per frame or an ``nn.Conv3d``)
    the Fourier tokens are added to; None = the first of ``PATCH_PROJ_NAMES`` the backbone has."""

    def __post_init__(self) -> None:
        check_types(self)
        lo, hi = self.train_ratio
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(
                f"FlashI2VConfig.train_ratio must satisfy 0 <= lo <= hi <= 1, got {self.train_ratio}"
            )
        if not 0.0 <= self.inference_ratio <= 1.0:
            raise ValueError(f"FlashI2VConfig.inference_ratio must be in [0, 1], got {self.inference_ratio}")
        if self.phi_kernel_t not in (1, 3):
            raise ValueError(f"FlashI2VConfig.phi_kernel_t must be 1 or 3, got {self.phi_kernel_t}")


# --------------------------------------------------------------------------- high-frequency extractor
def centred_spectrum(z: Tensor) -> Tensor:
    """``z`` [B, C, h, w] → its 2-D spectrum per channel, zero frequency at (⌊h/2⌋, ⌊w/2⌋), complex64
    (filter.py l.149-150: the FFT runs in fp32 whatever ``z``'s dtype)."""
    if z.ndim != 4:
        raise ValueError(f"z must be [B, C, h, w], got shape {tuple(z.shape)}")
    return torch.fft.fftshift(torch.fft.fft2(z.float(), dim=(-2, -1)), dim=(-2, -1))


def radius_map(h: int, w: int, device: torch.device | str | None = None) -> Tensor:
    """[h, w] fp32 distance of each centred frequency bin from (⌊h/2⌋, ⌊w/2⌋) (filter.py l.54-60)."""
    y = torch.arange(h, device=device) - h // 2
    x = torch.arange(w, device=device) - w // 2
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    return torch.sqrt(xx.float() ** 2 + yy.float() ** 2)


def _magnitude(c: Tensor) -> Tensor:
    return torch.sqrt(c.real * c.real + c.imag * c.imag + MAG_EPS)


def _ratios(ratio: float | Tensor, batch: int, device: torch.device) -> Tensor:
    """``ratio`` as [B] fp32 clamped to [0, 1] (filter.py l.163)."""
    r = torch.as_tensor(ratio, dtype=torch.float32, device=device)
    if r.ndim == 0:
        r = r.expand(batch)
    if r.shape != (batch,):
        raise ValueError(f"ratio must be a float or [B]=[{batch}], got shape {tuple(r.shape)}")
    return r.clamp(0.0, 1.0)


def cutoff_radius(spectrum: Tensor, ratio: float | Tensor) -> Tensor:
    """Per-sample cut-off radius [B] of a ``centred_spectrum`` [B, C, h, w]: the radius at which the
    cumulative channel-mean magnitude, summed from the centre outwards, first reaches ``ratio`` of its total
    (filter.py l.165-188). ``ratio``: a float or [B]."""
    B, _, h, w = spectrum.shape
    mag = _magnitude(spectrum).mean(dim=1)  # [B, h, w]
    r = radius_map(h, w, spectrum.device).flatten()  # [h·w]
    # Stable sort: ties (bins at one radius) keep one order; the cut-off is the same for any tie order (the
    # cumulative sum at the edges of a tie group does not depend on it), the reference's unstable sort too.
    order = torch.argsort(r, stable=True)
    cum = torch.cumsum(mag.flatten(1)[:, order], dim=1)  # [B, h·w]
    target = cum[:, -1] * _ratios(ratio, B, spectrum.device)  # [B]
    k = (cum < target[:, None]).sum(dim=1).clamp(max=h * w - 1)  # [B] first bin with cum >= target
    return r[order][k]


@torch.no_grad()
def high_frequency(z: Tensor, ratio: float | Tensor) -> Tensor:
    """FlashI2V's high-frequency features of ``z`` [B, C, h, w] (the start-frame latent, frames squeezed):
    the spatial magnitude of its hard radial high-pass, [B, C, h, w] fp32 (module docstring; filter.py
    ``extract``). No gradient, as the reference (``allow_grad=False``)."""
    spectrum = centred_spectrum(z)  # [B, C, h, w] complex
    B, _, h, w = spectrum.shape
    cutoff = cutoff_radius(spectrum, ratio)  # [B]
    keep = (radius_map(h, w, z.device)[None] >= cutoff.view(B, 1, 1)).float()[:, None]  # [B, 1, h, w]
    hf = torch.fft.ifft2(torch.fft.ifftshift(spectrum * keep, dim=(-2, -1)), dim=(-2, -1))
    return _magnitude(hf)  # [B, C, h, w]


# --------------------------------------------------------------------------- φ and the Fourier embedding
class LearnableProj(nn.Module):
    """φ: Conv3d(C → 4C) → SiLU → Conv3d(4C → C), kernel (k_t, 3, 3), padding keeping the size
    (flashi2v.py l.20-88). ``forward(z [B, F, C, h, w]) -> [B, F, C, h, w]`` in fp32."""

    def __init__(self, channels: int, kernel_t: int = 1):
        super().__init__()
        k, pad = (kernel_t, 3, 3), (kernel_t // 2, 1, 1)
        hidden = PHI_EXPANSION * channels
        self.proj = nn.Sequential(
            nn.Conv3d(channels, hidden, k, padding=pad),
            nn.SiLU(),
            nn.Conv3d(hidden, channels, k, padding=pad),
        )

    @torch.no_grad()
    def init_weights(self) -> None:
        """flashi2v.py l.78-82: xavier (as a Linear) + zero bias first, the last conv all zeros: φ ≡ 0."""
        first, _, last = self.proj
        nn.init.xavier_uniform_(first.weight.view(first.weight.shape[0], -1))
        nn.init.zeros_(first.bias)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, z: Tensor) -> Tensor:
        first, act, last = self.proj
        x = rearrange(z.float(), "b f c h w -> b c f h w")
        # fp32 whatever the caller's autocast and the weights' dtype: the shift is subtracted from fp32
        # latents, and the reference keeps this module in fp32 (module docstring).
        fp32 = contextlib.nullcontext() if x.is_meta else torch.autocast(x.device.type, enabled=False)
        with fp32:  # (meta: minivdit.plan's trace, which has no autocast)
            x = F.conv3d(x, first.weight.float(), first.bias.float(), padding=first.padding)
            x = F.conv3d(act(x), last.weight.float(), last.bias.float(), padding=last.padding)
        return rearrange(x, "b c f h w -> b f c h w")  # [B, F, C, h, w] fp32


def fourier_embedding(proj: nn.Module) -> nn.Sequential:
    """FlashI2V's ``fourier_embedding`` (flashi2v.py l.94-107) shaped after the backbone's patch projection
    ``proj``: a conv of its type, kernel, stride, padding and dilation (C → D), then a 1×1 conv (D → D);
    initialised by :func:`init_fourier_embedding`."""
    if type(proj) not in (nn.Conv2d, nn.Conv3d) or proj.groups != 1:
        raise ValueError(
            f"FlashI2V adds its Fourier tokens after a convolutional patch embedding (nn.Conv2d per frame or "
            f"nn.Conv3d, groups=1); the backbone's is {proj!r} (a linear patchify, e.g. CogVideoX 1.5, is "
            "not supported: its input layout is private to the backbone)"
        )
    conv, C, D = type(proj), proj.in_channels, proj.out_channels
    patch = conv(C, D, proj.kernel_size, stride=proj.stride, padding=proj.padding, dilation=proj.dilation)
    return nn.Sequential(patch, conv(D, D, kernel_size=1))


@torch.no_grad()
def init_fourier_embedding(embed: nn.Sequential) -> None:
    """flashi2v.py l.123-126: xavier (as a Linear) + zero bias on the patch conv, zeros on the 1×1 conv."""
    patch, out = embed
    nn.init.xavier_uniform_(patch.weight.view(patch.weight.shape[0], -1))
    nn.init.zeros_(patch.bias)
    nn.init.zeros_(out.weight)
    nn.init.zeros_(out.bias)


# --------------------------------------------------------------------------- shift and start frame
def shift_latents(x: Tensor, phi: Tensor) -> Tensor:
    """The backbone's input ``x − φ(z_c)``: ``x`` [B, F, C, h, w] (the objective's x_t, or the sampler's
    unshifted latents) minus ``phi`` [B, 1, C, h, w] broadcast over the F frames, in ≥ fp32, cast back
    to ``x``'s dtype (flashi2v_flow_matching.py l.65-73; infer_flashi2v.py l.70, l.74)."""
    if phi.ndim != 5 or phi.shape[1] != 1 or phi.shape[2:] != x.shape[2:] or phi.shape[0] != x.shape[0]:
        raise ValueError(f"phi must be [B, 1, C, h, w] for x {tuple(x.shape)}, got {tuple(phi.shape)}")
    dtype = torch.promote_types(x.dtype, torch.float32)  # fp32, or fp64 for fp64 latents (tests)
    return (x.to(dtype) - phi.to(dtype)).to(x.dtype)


@torch.no_grad()
def start_frame_latents(vae: nn.Module, image: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """The FlashI2V condition ``z_c`` [B, 1, C, h, w] fp32 of ``image`` [B, 3, H, W] in [−1, 1] (the clip's
    frame 0 in training, the user's image at inference): the image VAE-encoded **alone**, as a one-frame clip
    (``flashi2v_dataset.py`` l.43, ``train_flashi2v.py`` l.439, ``flashi2v_pipeline.py`` l.20-25), with no
    noise augmentation and no dropout. Pass it as ``Cond(image_latents=z_c)``.

    ``vae`` is any minivdit VAE (its ``encode`` scales the latents). The reference encodes with the posterior
    mean (Wan VAE ``encode`` returns μ, ``flashi2v/modules/vae.py`` l.536-541): build the VAE with
    ``sample_posterior=False`` to match; otherwise the posterior sample is drawn from ``generator``."""
    if image.ndim != 4 or image.shape[1] != 3 or not image.is_floating_point():
        raise ValueError(
            f"image must be float [B, 3, H, W] in [-1, 1], got {image.dtype} {tuple(image.shape)}"
        )
    z = vae.encode(image[:, None], generator=generator).float()  # [B, 1, C, h, w]
    if z.ndim != 5 or z.shape[1] != 1:
        raise ValueError(f"a one-frame encode must give one latent frame, got shape {tuple(z.shape)}")
    return z


# --------------------------------------------------------------------------- the wrapper
class BackboneWrapper(nn.Module):
    """What callers read of a backbone, delegated to ``self.base``: ``cfg``, ``grad_checkpointing`` and
    ``null_cond``, so the trainer, ``dist.parallelize`` and the samplers treat a wrapper (FlashI2V,
    ``models/uniworld.py``) as the backbone it wraps."""

    base: nn.Module

    @property
    def cfg(self):
        return self.base.cfg

    @property
    def grad_checkpointing(self) -> bool:
        return self.base.grad_checkpointing

    @grad_checkpointing.setter
    def grad_checkpointing(self, on: bool) -> None:
        self.base.grad_checkpointing = on

    def null_cond(self, cond: Cond) -> Cond:
        """The base's unconditional ``Cond`` (FlashI2V: the start frame stays, the reference guides the text
        only)."""
        return self.base.null_cond(cond)


class FlashI2V(BackboneWrapper):
    """FlashI2V around ``base`` (any backbone with the §7 call shape and a convolutional patch embedding).

    ``forward(x_t [B,F,C,h,w], t_model [B], cond: Cond(image_latents=z_c [B,1,C,h,w], ...), *, tap, ratio)``
    → the base's ``DiTOutput``. ``cond.image_latents`` is consumed here (``start_frame_latents``); every other
    field goes to the base unchanged. ``cfg`` / ``null_cond`` / ``grad_checkpointing`` are the base's, so
    samplers and the trainer treat the wrapper as the backbone."""

    def __init__(self, base: nn.Module, config: FlashI2VConfig | None = None):
        super().__init__()
        self.base = base
        self.flash_cfg = config = config if config is not None else FlashI2VConfig()
        names = (config.patch_proj,) if config.patch_proj else PATCH_PROJ_NAMES
        found = [n for n in names if _has_submodule(base, n)]
        if not found:
            raise ValueError(
                f"{type(base).__name__} has no patch projection named {' or '.join(names)} "
                "(set FlashI2VConfig.patch_proj to its dotted module name)"
            )
        self.patch_proj = found[0]  # a name, not a module attribute: the base's weights stay registered once
        proj = base.get_submodule(self.patch_proj)
        if not isinstance(proj, (nn.Conv2d, nn.Conv3d, nn.Linear)):
            raise ValueError(f"{type(base).__name__}.{self.patch_proj} is {type(proj).__name__}, not a conv")
        self.channels = proj.in_features if isinstance(proj, nn.Linear) else proj.in_channels
        device = proj.weight.device
        with torch.device(device):
            self.learnable_proj = LearnableProj(self.channels, config.phi_kernel_t)
            self.fourier_embedding = fourier_embedding(proj) if config.fourier else None
        if device.type != "meta":
            self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """FlashI2V's own layers only (``flashi2v_init_weights``, flashi2v.py l.121-128): the base keeps its
        (pretrained) weights. Works after ``to_empty()``."""
        self.learnable_proj.init_weights()
        if self.fourier_embedding is not None:
            init_fourier_embedding(self.fourier_embedding)

    # ------------------------------------------------------------ forward
    def ratio(self, batch: int, device: torch.device) -> Tensor:
        """[B]: U[lo, hi] per sample in training (global RNG, filter.py l.158-160), the inference ratio
        otherwise."""
        if self.training:
            lo, hi = self.flash_cfg.train_ratio
            return torch.rand(batch, device=device) * (hi - lo) + lo
        return torch.full((batch,), self.flash_cfg.inference_ratio, device=device)

    def _start_frame(self, x_t: Tensor, cond: Cond) -> Tensor:
        if not isinstance(cond, Cond):
            raise ValueError(f"cond must be a minivdit.models.cond.Cond, got {type(cond)}")
        if x_t.ndim != 5:
            raise ValueError(f"x_t must be [B, F, C, h, w], got shape {tuple(x_t.shape)}")
        B, _, C, h, w = x_t.shape
        z = cond.image_latents
        if z is None:
            raise ValueError(
                "FlashI2V needs Cond.image_latents: the start frame's latent (start_frame_latents)"
            )
        if tuple(z.shape) != (B, 1, C, h, w) or self.channels != C:
            raise ValueError(
                f"FlashI2V: Cond.image_latents must be the start frame encoded alone, [B, 1, C, h, w] = "
                f"{[B, 1, self.channels, h, w]} for x_t {tuple(x_t.shape)}, got {tuple(z.shape)} "
                "(start_frame_latents; a zero-padded channel-concat condition is not FlashI2V's)"
            )
        return z

    def forward(
        self,
        x_t: Tensor,
        t_model: Tensor,
        cond: Cond,
        *,
        tap: int | None = None,
        ratio: float | Tensor | None = None,
    ) -> DiTOutput:
        z_c = self._start_frame(x_t, cond)  # [B, 1, C, h, w]
        x_in = shift_latents(x_t, self.learnable_proj(z_c))  # [B, F, C, h, w]: x_t − φ(z_c)
        base_cond = dataclasses.replace(cond, image_latents=None)  # the base is text-to-video
        if self.fourier_embedding is None:
            return self.base(x_in, t_model, base_cond, tap=tap)
        B = x_t.shape[0]
        ratio = self.ratio(B, x_t.device) if ratio is None else ratio
        hf = high_frequency(z_c[:, 0], ratio)  # [B, C, h, w] fp32
        with self._add_tokens(hf) as calls:
            out = self.base(x_in, t_model, base_cond, tap=tap)
        if calls != [1]:
            raise ValueError(
                f"{type(self.base).__name__}.{self.patch_proj} ran {len(calls)} times in one forward; "
                "FlashI2V adds its Fourier tokens to the video patch embedding, which must run exactly once"
            )
        return out

    @contextlib.contextmanager
    def _add_tokens(self, hf: Tensor) -> Iterator[list[int]]:
        """Within the block, the base's patch projection returns its tokens + the Fourier tokens of ``hf``
        [B, C, h, w], laid out as its input: ``(b f) c h w`` for a per-frame Conv2d, ``b c f h w`` for a
        Conv3d (hf repeated over the frames, train_flashi2v.py l.76-77)."""
        proj = self.base.get_submodule(self.patch_proj)
        calls: list[int] = []

        def hook(module: nn.Module, args: tuple, tokens: Tensor) -> Tensor:
            (u,) = args  # the projection's input
            B = hf.shape[0]
            if isinstance(module, nn.Conv2d) and u.ndim == 4 and u.shape[0] % B == 0:
                f = repeat(hf, "b c h w -> (b f) c h w", f=u.shape[0] // B)
            elif isinstance(module, nn.Conv3d) and u.ndim == 5:
                f = repeat(hf, "b c h w -> b c f h w", f=u.shape[2])
            else:
                f = hf
            if f.shape != u.shape:
                raise ValueError(
                    f"FlashI2V: {self.patch_proj} input {tuple(u.shape)} is not the start frame's features "
                    f"{tuple(hf.shape)} laid out per frame ((b f) c h w for Conv2d, b c f h w for Conv3d)"
                )
            calls.append(1)
            return tokens + self.fourier_embedding(f.to(u.dtype))  # [B·F, D, h', w'] or [B, D, F', h', w']

        handle = proj.register_forward_hook(hook)
        try:
            yield calls
        finally:
            handle.remove()


def _has_submodule(module: nn.Module, name: str) -> bool:
    try:
        module.get_submodule(name)
    except AttributeError:
        return False
    return True


__all__ = [
    "FlashI2V",
    "FlashI2VConfig",
    "LearnableProj",
    "centred_spectrum",
    "cutoff_radius",
    "fourier_embedding",
    "high_frequency",
    "init_fourier_embedding",
    "radius_map",
    "shift_latents",
    "start_frame_latents",
]
