"""Image-to-video conditioning (``minivdit/conditioning/i2v.py``): the CogVideoX-I2V first-frame recipe, the
documented RNG order, σ and dropout statistics, anyframe (i = 0 falls back to "first" bit for bit, the noise
fill), sampling, and input validation. A tiny random CogVideoX VAE plus a recording stand-in; CPU, a few
seconds; run with ``pytest -q tests/test_i2v.py``."""

from __future__ import annotations

import math
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from minivdit.conditioning.i2v import ANYFRAME_NOISE_STD, I2VConfig, image_condition, inference_condition
from minivdit.models.vae.cogvideox import CogVideoXVAE, CogVideoXVAEConfig

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = dict(block_out_channels=(16, 32, 32, 32), layers_per_block=1, norm_num_groups=4, latent_channels=4)


def _tiny_vae(**overrides) -> CogVideoXVAE:
    torch.manual_seed(0)
    return CogVideoXVAE(CogVideoXVAEConfig(scaling_factor=0.7, **TINY, **overrides)).eval()


@pytest.fixture(scope="module")
def vae() -> CogVideoXVAE:
    return _tiny_vae()


class RecordingVAE(nn.Module):
    """The VAE ``encode`` contract without the network: records every input clip; latent 0 = frame 0, latent
    k = mean of frames 4k−3..4k, 8× average-pooled, × 0.7, plus a posterior draw from ``generator`` as the
    CogVideoX VAE makes one."""

    temporal_compression = 4

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(scaling_factor=0.7, invert_scale_latents=False)
        self.calls: list[torch.Tensor] = []

    def encode(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        self.calls.append(video.clone())
        B, T, C, H, W = video.shape
        rest = video[:, 1:].reshape(B, (T - 1) // 4, 4, C, H, W).mean(2)
        z = F.avg_pool2d(torch.cat([video[:, :1], rest], 1).flatten(0, 1), 8)
        z = z.unflatten(0, (B, -1))  # [B, F', 3, H/8, W/8]
        noise = torch.randn(z.shape, generator=generator, device=generator.device if generator else None)
        return 0.7 * (z + 0.01 * noise)


def _video(B: int, T: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, T, 3, size, size, generator=g) * 2 - 1  # [B, F, 3, H, W]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------- "first"


def test_first_is_the_noised_frame_0_encoded_alone_and_zero_padded(vae):
    cfg = I2VConfig(mode="first", dropout=0.0)
    video = _video(3, 9)
    g = _gen(1)
    lat, index = image_condition(video, vae, cfg, g)
    assert lat.shape == (3, 3, 4, 2, 2) and lat.dtype == torch.float32
    assert torch.equal(index, torch.zeros(3, dtype=torch.long))
    assert torch.count_nonzero(lat[:, 1:]) == 0 and torch.count_nonzero(lat[:, 0]) == lat[:, 0].numel()

    # the documented order: randn(B) → log σ; randn(B, 1, 3, H, W) → ε; rand(B) → dropout; the VAE's draw
    ref = _gen(1)
    sigma = torch.exp(-3.0 + 0.5 * torch.randn(3, generator=ref))
    eps = torch.randn(3, 1, 3, 16, 16, generator=ref)
    torch.rand(3, generator=ref)
    with torch.no_grad():
        expected = vae.encode(video[:, :1] + sigma.view(3, 1, 1, 1, 1) * eps, generator=ref)
    assert torch.equal(lat[:, :1], expected)
    assert torch.equal(g.get_state(), ref.get_state())  # nothing else was drawn


def test_sigma_is_log_normal_per_sample():
    rec = RecordingVAE()
    B = 4000
    image_condition(torch.zeros(B, 1, 3, 16, 16), rec, I2VConfig(mode="first"), _gen(0))
    (x,) = rec.calls  # the noised frame 0 of a zero video: σ·ε
    log_sigma = x.square().mean((1, 2, 3, 4)).sqrt().log()  # [B], ± 0.026 per sample from 768 pixels
    assert abs(log_sigma.mean().item() + 3.0) < 0.03
    assert abs(log_sigma.std().item() - 0.5) < 0.03

    rec = RecordingVAE()
    image_condition(torch.zeros(64, 1, 3, 16, 16), rec, I2VConfig(mode="first", noise_per="batch"), _gen(0))
    sigma = rec.calls[0].square().mean((1, 2, 3, 4)).sqrt()
    assert sigma.std() / sigma.mean() < 0.1  # one σ for the batch (pixel estimates scatter by ~2.5%)


def test_dropout_zeroes_whole_samples():
    video = _video(400, 5, size=8)
    lat, _ = image_condition(video, RecordingVAE(), I2VConfig(mode="first", dropout=1.0), _gen(0))
    assert torch.count_nonzero(lat) == 0

    lat, _ = image_condition(video, RecordingVAE(), I2VConfig(mode="first", dropout=0.5), _gen(0))
    nonzero = lat.flatten(1).ne(0).any(1)  # [B]
    kept = lat[nonzero]
    assert 0.4 < nonzero.float().mean().item() < 0.6
    assert torch.count_nonzero(kept[:, 0]) == kept[:, 0].numel()  # a kept sample is kept whole

    whole_batch = set()
    for seed in range(12):
        lat, _ = image_condition(
            video[:4], RecordingVAE(), I2VConfig(mode="first", dropout=0.5, dropout_per="batch"), _gen(seed)
        )
        dropped = lat.flatten(1).eq(0).all(1)
        assert dropped.all() or not dropped.any()
        whole_batch.add(bool(dropped.all()))
    assert whole_batch == {True, False}


def test_same_seed_same_condition_other_seed_other(vae):
    cfg = I2VConfig(mode="anyframe", dropout=0.0)
    video = _video(4, 9)
    a = image_condition(video, vae, cfg, _gen(7))
    b = image_condition(video, vae, cfg, _gen(7))
    c = image_condition(video, vae, cfg, _gen(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


# ---------------------------------------------------------------------------------------------- anyframe


def test_anyframe_at_0_is_first_bit_for_bit(vae):
    video = _video(4, 9)
    first = I2VConfig(mode="first", dropout=0.3)
    for seed in range(3):
        g_first, g_any = _gen(seed), _gen(seed)
        want = image_condition(video, vae, first, g_first)
        got = image_condition(video, vae, I2VConfig(mode="anyframe", frame_index=0, dropout=0.3), g_any)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        assert torch.equal(g_any.get_state(), g_first.get_state())


def test_anyframe_drawn_0_is_first_per_sample(vae):
    """A drawn i = 0 takes the fallback exactly, whatever the other samples of the batch drew."""
    video = _video(8, 9)
    cfg = I2VConfig(mode="anyframe", dropout=0.0, first_frame_prob=0.5)
    lat, index = image_condition(video, vae, cfg, _gen(3))
    want, _ = image_condition(video, vae, I2VConfig(mode="first", dropout=0.0), _gen(3))
    at0 = index == 0
    assert 0 < at0.sum() < 8, index  # this seed gives a mixed batch
    assert torch.equal(lat[at0], want[at0])
    assert torch.count_nonzero(lat[~at0][:, 1:]) == lat[~at0][:, 1:].numel()  # no zero padding for i > 0


def test_anyframe_clip_is_noise_with_the_condition_frame_at_i():
    B, T = 4, 9
    video = _video(B, T)
    rec = RecordingVAE()
    cfg = I2VConfig(mode="anyframe", frame_index=5, dropout=0.0)
    lat, index = image_condition(video, rec, cfg, _gen(2))
    assert torch.equal(index, torch.full((B,), 5)) and lat.shape == (B, 3, 3, 2, 2)
    (clip,) = rec.calls  # a fixed i > 0: no sample can take the fallback, so no one-frame encode
    assert clip.shape == (B, T, 3, 16, 16)
    others = torch.cat([clip[:, :5], clip[:, 6:]], 1)
    assert abs(others.mean().item()) < 0.01
    assert abs(others.std().item() - math.sqrt(0.07)) < 0.01
    assert abs(ANYFRAME_NOISE_STD**2 - 0.07) < 1e-12

    ref = _gen(2)  # steps 1-3, then step 6 (the fill): the condition frame carries the same σ·ε
    sigma = torch.exp(-3.0 + 0.5 * torch.randn(B, generator=ref))
    eps = torch.randn(B, 1, 3, 16, 16, generator=ref)
    torch.rand(B, generator=ref)
    fill = torch.randn(B, T, 3, 16, 16, generator=ref)
    assert torch.equal(clip[:, 5], video[:, 5] + sigma.view(B, 1, 1, 1) * eps[:, 0])
    assert torch.equal(others, torch.cat([fill[:, :5], fill[:, 6:]], 1) * ANYFRAME_NOISE_STD)

    rec = RecordingVAE()
    image_condition(video, rec, replace(cfg, anyframe_noise_aug=False), _gen(2))
    assert torch.equal(rec.calls[0][:, 5], video[:, 5])


def test_anyframe_drawn_index_places_each_condition_frame():
    B, T = 16, 9
    video = _video(B, T)
    rec = RecordingVAE()
    _, index = image_condition(video, rec, I2VConfig(mode="anyframe", anyframe_noise_aug=False), _gen(5))
    first, clips = rec.calls  # step 4 on all B samples, then step 7 on the B' with i > 0
    assert first.shape == (B, 1, 3, 16, 16)
    rows = (index != 0).nonzero().squeeze(1)
    assert clips.shape == (len(rows), T, 3, 16, 16) and 0 < len(rows) < B
    assert torch.equal(clips[torch.arange(len(rows)), index[rows]], video[rows, index[rows]])
    assert index.min() >= 0 and index.max() < T


# ---------------------------------------------------------------------------------------------- sampling


def test_inference_condition(vae):
    image = _video(2, 1)[:, 0]  # [B, 3, H, W]
    lat = inference_condition(image, vae, 9)
    with torch.no_grad():
        want = vae.encode(image[:, None], generator=_gen(0))  # no noise augmentation, the default seed
    assert lat.shape == (2, 3, 4, 2, 2)
    assert torch.equal(lat[:, :1], want) and torch.count_nonzero(lat[:, 1:]) == 0
    assert torch.equal(inference_condition(image, vae, 9, 4), inference_condition(image, vae, 9, 4))

    rec = RecordingVAE()
    inference_condition(image, rec, 9, 4, generator=_gen(1))
    (clip,) = rec.calls
    assert torch.equal(clip[:, 4], image)
    fill = torch.randn(2, 9, 3, 16, 16, generator=_gen(1)) * ANYFRAME_NOISE_STD
    assert torch.equal(torch.cat([clip[:, :4], clip[:, 5:]], 1), torch.cat([fill[:, :4], fill[:, 5:]], 1))


def test_invert_scale_latents_divides_by_the_factor():
    image = _video(1, 1)[:, 0]
    plain = inference_condition(image, _tiny_vae(), 5)
    inverted = inference_condition(image, _tiny_vae(invert_scale_latents=True), 5)
    torch.testing.assert_close(inverted, plain / 0.7**2)


# ---------------------------------------------------------------------------------------------- validation


def test_bad_inputs_raise():
    rec, cfg = RecordingVAE(), I2VConfig(mode="first")
    with pytest.raises(ValueError, match="5 and 9"):
        image_condition(_video(1, 8, size=8), rec, cfg, _gen(0))
    with pytest.raises(ValueError, match=r"frame_index 49 .*F = 49"):
        image_condition(_video(1, 49, size=8), rec, I2VConfig(mode="anyframe", frame_index=49), _gen(0))
    with pytest.raises(ValueError, match=r"\(1, 3, 8, 8\)"):
        image_condition(torch.zeros(1, 3, 8, 8), rec, cfg, _gen(0))
    with pytest.raises(ValueError, match=r"\(1, 5, 4, 8, 8\)"):
        image_condition(torch.zeros(1, 5, 4, 8, 8), rec, cfg, _gen(0))
    with pytest.raises(ValueError, match="uint8"):
        image_condition(torch.zeros(1, 5, 3, 8, 8, dtype=torch.uint8), rec, cfg, _gen(0))
    with pytest.raises(ValueError, match="'off'"):
        image_condition(_video(1, 5, size=8), rec, I2VConfig(), _gen(0))
    with pytest.raises(ValueError, match="5 and 9"):
        inference_condition(torch.zeros(1, 3, 8, 8), rec, 6)
    with pytest.raises(ValueError, match=r"frame_index 9 .*F = 9"):
        inference_condition(torch.zeros(1, 3, 8, 8), rec, 9, 9)
    with pytest.raises(ValueError, match=r"\(1, 1, 3, 8, 8\)"):
        inference_condition(torch.zeros(1, 1, 3, 8, 8), rec, 9)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(mode="last"), "mode"),
        (dict(dropout=1.5), "dropout"),
        (dict(noise_log_std=-0.1), "noise_log_std"),
        (dict(noise_log_mean=float("nan")), "noise_log_mean"),
        (dict(anyframe_noise_std=-1.0), "anyframe_noise_std"),
        (dict(mode="anyframe", frame_index=-1), "frame_index"),
        (dict(mode="first", frame_index=3), "frame_index"),
        (dict(mode="anyframe", first_frame_prob=2.0), "first_frame_prob"),
        (dict(mode="anyframe", first_frame_prob=0.5, frame_index=2), "first_frame_prob"),
        (dict(noise_per="step"), "noise_per"),
        (dict(dropout_per="step"), "dropout_per"),
    ],
)
def test_config_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"I2VConfig.{field}"):
        I2VConfig(**kwargs)


# ---------------------------------------------------------------------------------------------- trainer


def test_conditioner_encodes_under_the_video_latents_autocast(vae):
    """``Conditioner(autocast_dtype=bf16)`` (what ``build_conditioner`` passes in bf16 runs, where
    ``train_step`` encodes the video latents under bf16 autocast) encodes the condition under that autocast:
    bit for bit ``image_condition`` inside ``torch.autocast`` with the generator in the same state (the
    conditioner's first draw is the caption keep mask), and not the fp32 result."""
    from minivdit.conditioning import Conditioner

    cfg = I2VConfig(mode="anyframe", dropout=0.0)
    video = _video(2, 5)
    batch = SimpleNamespace(label=torch.zeros(2, dtype=torch.long), text=None, text_mask=None, video=video)
    cpu = torch.device("cpu")
    got = Conditioner(i2v=cfg, vae=vae, autocast_dtype=torch.bfloat16)(batch, _gen(3), cpu).image_latents
    g = _gen(3)
    torch.rand(2, generator=g)  # the caption keep mask, drawn first whether or not there is text
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want, _ = image_condition(video, vae, cfg, g)
    assert torch.equal(got, want)
    fp32 = Conditioner(i2v=cfg, vae=vae)(batch, _gen(3), cpu).image_latents
    assert not torch.equal(got, fp32)
