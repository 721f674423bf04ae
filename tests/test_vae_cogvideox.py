"""CogVideoX VAE: parity with ``diffusers.AutoencoderKLCogVideoX`` on a tiny random model, strict loading,
frame-count rules and the diffusers round trip. CPU, fp32, offline (~15 s, mostly imports); run with
``pytest -q tests/test_vae_cogvideox.py``."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from einops import rearrange
from safetensors.torch import load_file, save_file

from minivdit.models.vae.cogvideox import CogVideoXVAE, CogVideoXVAEConfig, SafeConv3d, frame_chunks

diffusers = pytest.importorskip("diffusers")

pytestmark = pytest.mark.usefixtures("single_thread")

SCALING = 0.7  # written to config.json by the reference; ours must read it from there
TINY = dict(
    block_out_channels=(16, 32, 32, 32),
    layers_per_block=1,
    norm_num_groups=4,
    latent_channels=4,
    sample_height=32,
    sample_width=32,
    scaling_factor=SCALING,
)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(diffusers model with randomised weights, norms included; its save_pretrained folder), offline."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        torch.manual_seed(0)
        ref = diffusers.AutoencoderKLCogVideoX(**TINY).eval()
        with torch.no_grad():
            for name, p in ref.named_parameters():
                if p.ndim == 1 and name.endswith("weight"):  # GroupNorm scales
                    p.copy_(1 + 0.2 * torch.randn_like(p))
                elif p.ndim == 1:  # biases, GroupNorm shifts
                    p.copy_(0.1 * torch.randn_like(p))
                else:
                    p.add_(0.02 * torch.randn_like(p))
        folder = tmp_path_factory.mktemp("cogvideox_vae")
        ref.save_pretrained(folder)
        yield ref, folder


def _video(num_frames: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, num_frames, 3, 32, 32, generator=g) * 2 - 1  # [B, F, 3, H, W]


def _ref_mean(ref, video: torch.Tensor) -> torch.Tensor:
    posterior = ref.encode(rearrange(video, "b f c h w -> b c f h w")).latent_dist
    return rearrange(posterior.mode(), "b c f h w -> b f c h w")


@pytest.mark.parametrize("num_frames", [9, 17])
@torch.no_grad()
def test_parity_with_diffusers(reference, num_frames):
    ref, folder = reference
    ours = CogVideoXVAE.from_pretrained(folder, sample_posterior=False).eval()
    assert ours.config.scaling_factor == SCALING
    video = _video(num_frames)
    latents = ours.encode(video)
    num_latents = ours.latent_frames(num_frames)
    assert latents.shape == (1, num_latents, 4, 4, 4)
    # scaled exactly once, by the config's factor
    assert (latents - SCALING * _ref_mean(ref, video)).abs().max().item() <= 1e-4

    z = torch.randn(1, num_latents, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    expected = ref.decode(rearrange(z, "b f c h w -> b c f h w") * (1 / SCALING)).sample
    decoded = ours.decode(z)
    assert decoded.shape == (1, num_frames, 3, 32, 32)
    assert (decoded - rearrange(expected, "b c f h w -> b f c h w")).abs().max().item() <= 1e-4

    if num_frames == 17:  # diffusers' frame batching is exercised: 2 encoder chunks, 2 decoder chunks
        assert frame_chunks(17, 8) == [slice(0, 9), slice(9, 17)]
        assert frame_chunks(num_latents, 2) == [slice(0, 3), slice(3, 5)]
        # and it matters: one pass (GroupNorm over the whole clip) gives different latents
        one_pass = CogVideoXVAE.from_pretrained(
            folder, sample_posterior=False, num_sample_frames_batch_size=16
        )
        assert (one_pass.encode(video) - latents).abs().max().item() > 1e-3


@torch.no_grad()
def test_posterior_sample_matches_diffusers_for_a_seed(reference):
    ref, folder = reference
    ours = CogVideoXVAE.from_pretrained(folder).eval()
    assert ours.config.sample_posterior
    video = _video(9)
    latents = ours.encode(video, generator=torch.Generator().manual_seed(3))
    posterior = ref.encode(rearrange(video, "b f c h w -> b c f h w")).latent_dist
    expected = SCALING * posterior.sample(generator=torch.Generator().manual_seed(3))
    assert (latents - rearrange(expected, "b c f h w -> b f c h w")).abs().max().item() <= 1e-4


@torch.no_grad()
def test_scaling_factor_comes_from_config(reference, tmp_path):
    ref, folder = reference
    config = json.loads((folder / "config.json").read_text())
    config["scaling_factor"] = 0.25
    (tmp_path / "config.json").write_text(json.dumps(config))
    shutil.copy(folder / "diffusion_pytorch_model.safetensors", tmp_path)
    ours = CogVideoXVAE.from_pretrained(tmp_path, sample_posterior=False)
    video = _video(9)
    assert (ours.encode(video) - 0.25 * _ref_mean(ref, video)).abs().max().item() <= 1e-4

    del config["scaling_factor"]
    with pytest.raises(ValueError, match="scaling_factor"):
        CogVideoXVAEConfig.from_diffusers_config(config)


def test_strict_loading_lists_keys(reference, tmp_path):
    _, folder = reference
    state = load_file(str(folder / "diffusion_pytorch_model.safetensors"))
    del state["decoder.norm_out.conv_y.conv.weight"]
    state["encoder.down_blocks.0.resnets.0.temb_proj.weight"] = torch.zeros(16, 4)
    save_file(state, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    shutil.copy(folder / "config.json", tmp_path)
    with pytest.raises(ValueError) as err:
        CogVideoXVAE.from_pretrained(tmp_path)
    message = str(err.value)
    assert "decoder.norm_out.conv_y.conv.weight" in message and "missing" in message
    assert "encoder.down_blocks.0.resnets.0.temb_proj.weight" in message and "unexpected" in message
    assert str(tmp_path) in message

    state = load_file(str(folder / "diffusion_pytorch_model.safetensors"))
    state["encoder.conv_in.conv.bias"] = torch.zeros(3)
    save_file(state, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(ValueError, match=r"encoder\.conv_in\.conv\.bias \(3,\) vs \(16,\)"):
        CogVideoXVAE.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"act_fn": "gelu"}, "act_fn"),
        ({"down_block_types": ["DownEncoderBlock2D"] * 4}, "down_block_types"),
        ({"shift_factor": 0.1}, "shift_factor"),
        ({"mystery": 1}, "mystery"),
    ],
)
def test_unsupported_config_raises(reference, change, match):
    _, folder = reference
    config = json.loads((folder / "config.json").read_text()) | change
    with pytest.raises(ValueError, match=match):
        CogVideoXVAEConfig.from_diffusers_config(config)


def test_frame_counts():
    vae = CogVideoXVAE(
        CogVideoXVAEConfig(
            scaling_factor=SCALING,
            **{k: v for k, v in TINY.items() if k not in ("sample_height", "sample_width", "scaling_factor")},
        )
    )
    assert [vae.latent_frames(t) for t in (1, 5, 9, 49)] == [1, 2, 3, 13]
    with pytest.raises(ValueError, match="13 and 17"):
        vae.latent_frames(16)
    with pytest.raises(ValueError, match="valid counts: 1$"):
        vae.latent_frames(0)
    with pytest.raises(ValueError, match="5 and 9"):
        vae.encode(torch.zeros(1, 8, 3, 32, 32))
    with pytest.raises(ValueError, match="multiples of 8"):
        vae.encode(torch.zeros(1, 9, 3, 30, 32))
    with pytest.raises(ValueError, match=r"got \(1, 2, 3, 4, 4\)"):
        vae.decode(torch.zeros(1, 2, 3, 4, 4))


def test_save_pretrained_loads_in_diffusers(reference, tmp_path):
    _, folder = reference
    ours = CogVideoXVAE.from_pretrained(folder)
    ours.save_pretrained(tmp_path)
    theirs = diffusers.AutoencoderKLCogVideoX.from_pretrained(tmp_path)
    assert theirs.config.scaling_factor == SCALING
    assert tuple(theirs.config.block_out_channels) == TINY["block_out_channels"]
    mine = ours.state_dict()
    assert theirs.state_dict().keys() == mine.keys()
    assert all(torch.equal(v, mine[k]) for k, v in theirs.state_dict().items())
    again = CogVideoXVAE.from_pretrained(tmp_path)
    assert again.config == ours.config


@pytest.mark.parametrize("kernel_size", [1, 3])
def test_safe_conv_time_chunks_match_one_conv(monkeypatch, kernel_size):
    conv = SafeConv3d(4, 6, kernel_size, padding=(0, kernel_size // 2, kernel_size // 2))
    x = torch.randn(1, 4, 11, 8, 8)
    expected = conv(x)
    monkeypatch.setattr(SafeConv3d, "max_gib", x.numel() * 2 / 2**30 / 3.5)  # → 4 overlapping time chunks
    # chunks are convolutions of other shapes (other kernels): k = 4·3³ = 108 terms of Σ|w·x| ≈ 4, so
    # ≈ √k·u·4 ≈ 2.5e-6 per output
    assert torch.allclose(conv(x), expected, atol=1e-5)
