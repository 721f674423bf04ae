"""SDVAE (``minivdit/models/vae/sd.py``) against diffusers' AutoencoderKL on a tiny random config: parity of
the posterior moments and the decoder, the latent constants applied once, frame chunking, seeded sampling, the
diffusers folder format both ways, and the errors. Offline, CPU, a few seconds:
``pytest -q tests/test_vae_sd.py``."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from minivdit.models.vae.sd import SDVAE, WEIGHTS_NAME, SDVAEConfig

diffusers = pytest.importorskip("diffusers")

TINY = dict(
    block_out_channels=(32, 64),
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    layers_per_block=1,
    norm_num_groups=8,
    latent_channels=4,
    sample_size=32,
)
# fp32 through other kernels (diffusers' layout vs ours, frame chunks of another batch size): the decoder
# chains ≈ 15 convolutions / attention products of k ≤ 9·64 = 576 terms between GroupNorms, ≈ √(15·576)·u
# ≈ 6e-6 of the activations' scale (u = 6e-8); outputs reach |x| ≈ 4 here (the encoder's ≈ 3): ≈ 2.4e-5.
TOL = 5e-5


@pytest.fixture(scope="module", autouse=True)
def offline():
    """Nothing here may touch the network (all loads are from local folders)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("DIFFUSERS_OFFLINE", "1")
        before = torch.get_num_threads()
        torch.set_num_threads(1)  # tiny tensors; a busy 2-core machine is faster on one thread
        yield
        torch.set_num_threads(before)


def make_reference(seed: int = 0, **overrides) -> diffusers.AutoencoderKL:
    """A tiny diffusers AutoencoderKL with every parameter randomised (norm gains around 1)."""
    torch.manual_seed(seed)
    ref = diffusers.AutoencoderKL(**{**TINY, **overrides}).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            is_norm_gain = "norm" in name and name.endswith("weight")
            p.copy_(1 + 0.1 * torch.randn_like(p) if is_norm_gain else p + 0.05 * torch.randn_like(p))
    return ref


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(diffusers model, its saved folder)."""
    ref = make_reference()
    folder = tmp_path_factory.mktemp("ref_vae")
    ref.save_pretrained(folder)
    return ref, folder


@pytest.fixture(scope="module")
def video() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand(2, 3, 3, 32, 32, generator=g) * 2 - 1  # [B, F, 3, H, W] in [-1, 1]


def flat(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(0, 1)  # [B, F, ...] -> [(B F), ...]


@torch.no_grad()
def test_parity_with_diffusers(reference, video):
    ref, folder = reference
    vae = SDVAE.from_pretrained(folder)
    dist = ref.encode(flat(video)).latent_dist
    mean, logvar = vae.encode_moments(video)
    assert mean.shape == logvar.shape == (2, 3, 4, 16, 16)
    err_mean = (flat(mean) - dist.mean).abs().max().item()
    err_logvar = (flat(logvar) - dist.logvar).abs().max().item()
    z = dist.mean  # unscaled latents
    out = vae.decode(z.unflatten(0, (2, 3)) * vae.cfg.scaling_factor)
    assert out.shape == video.shape
    err_dec = (flat(out) - ref.decode(z).sample).abs().max().item()
    print(f"parity max|Δ|: mean {err_mean:.2e}, logvar {err_logvar:.2e}, decode {err_dec:.2e}")
    assert max(err_mean, err_logvar, err_dec) <= TOL


@torch.no_grad()
def test_latent_constants_applied_once(reference, video):
    _, folder = reference
    vae = SDVAE.from_pretrained(folder, sample_posterior=False)
    mean, _ = vae.encode_moments(video)
    assert torch.equal(vae.encode(video), mean * 0.18215)
    shifted = SDVAE.from_pretrained(folder, sample_posterior=False, shift_factor=0.1, scaling_factor=0.5)
    latents = shifted.encode(video)
    torch.testing.assert_close(latents, (mean - 0.1) * 0.5, rtol=0, atol=1e-6)
    # decode inverts the constants: the same pixels as decoding the unscaled mean with the plain VAE
    torch.testing.assert_close(shifted.decode(latents), vae.decode(mean * 0.18215), rtol=0, atol=TOL)


@torch.no_grad()
def test_frame_chunk_invariance(reference, video):
    _, folder = reference
    one, many = SDVAE.from_pretrained(folder, frame_chunk=1), SDVAE.from_pretrained(folder, frame_chunk=16)
    lat_one = one.encode(video, generator=torch.Generator().manual_seed(3))
    lat_many = many.encode(video, generator=torch.Generator().manual_seed(3))
    # Not bit-identical on CPU: oneDNN picks its conv kernels by batch size, so allow fp32 rounding only.
    torch.testing.assert_close(lat_one, lat_many, rtol=0, atol=TOL)
    torch.testing.assert_close(one.decode(lat_many), many.decode(lat_many), rtol=0, atol=TOL)


@torch.no_grad()
def test_seeded_posterior_sampling(reference, video):
    ref, folder = reference
    vae = SDVAE.from_pretrained(folder)
    a = vae.encode(video, generator=torch.Generator().manual_seed(7))
    b = vae.encode(video, generator=torch.Generator().manual_seed(7))
    c = vae.encode(video, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    # the same draw as diffusers' latent_dist.sample(generator) on the flattened frames (Latte's encode)
    expected = ref.encode(flat(video)).latent_dist.sample(torch.Generator().manual_seed(7)) * 0.18215
    torch.testing.assert_close(flat(a), expected, rtol=0, atol=TOL)


@torch.no_grad()
def test_save_pretrained_loads_in_diffusers(tmp_path, video):
    cfg = SDVAEConfig(**{k: v for k, v in TINY.items() if not k.endswith("_types") and k != "sample_size"})
    torch.manual_seed(0)
    vae = SDVAE.from_config(cfg)
    vae.save_pretrained(tmp_path / "ours")
    ref = diffusers.AutoencoderKL.from_pretrained(tmp_path / "ours", low_cpu_mem_usage=False).eval()
    assert ref.config.scaling_factor == cfg.scaling_factor
    ours = vae.state_dict()
    assert ours.keys() == ref.state_dict().keys()
    assert all(torch.equal(ours[k], v) for k, v in ref.state_dict().items())
    z = torch.randn(6, 4, 16, 16)
    torch.testing.assert_close(
        flat(vae.decode(z.unflatten(0, (2, 3)) * cfg.scaling_factor)), ref.decode(z).sample, rtol=0, atol=TOL
    )
    assert SDVAE.from_pretrained(tmp_path / "ours").cfg == cfg


@torch.no_grad()
def test_legacy_attention_names_and_bin_weights(reference, tmp_path, video):
    ref, folder = reference
    legacy = tmp_path / "legacy"
    shutil.copytree(folder, legacy)
    state = load_file(legacy / WEIGHTS_NAME)
    renames = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}
    for old, new in renames.items():
        state = {k.replace(old, new): v for k, v in state.items()}
    assert any(".proj_attn." in k for k in state)
    (legacy / WEIGHTS_NAME).unlink()
    torch.save(state, legacy / "diffusion_pytorch_model.bin")
    vae, base = SDVAE.from_pretrained(legacy), SDVAE.from_pretrained(folder)
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in vae.state_dict().items())


def _with_state(folder, dst, edit):
    shutil.copytree(folder, dst)
    state = load_file(dst / WEIGHTS_NAME)
    edit(state)
    save_file(state, dst / WEIGHTS_NAME)
    return dst


def test_key_mismatch_errors(reference, tmp_path):
    _, folder = reference
    missing = _with_state(folder, tmp_path / "missing", lambda s: s.pop("decoder.conv_out.bias"))
    with pytest.raises(ValueError, match=r"1 missing: \['decoder.conv_out.bias'\]") as err:
        SDVAE.from_pretrained(missing)
    assert str(missing) in str(err.value)
    extra = _with_state(
        folder, tmp_path / "extra", lambda s: s.update({"encoder.extra.weight": torch.ones(1)})
    )
    with pytest.raises(ValueError, match=r"1 unexpected: \['encoder.extra.weight'\]"):
        SDVAE.from_pretrained(extra)
    # config.json of one architecture, weights of another
    other = tmp_path / "other"
    make_reference(block_out_channels=(16, 32)).save_pretrained(other)
    shutil.copy(folder / "config.json", other / "config.json")
    with pytest.raises(
        ValueError, match=r"mis-shaped: \['decoder.conv_in.bias: checkpoint \(32,\) vs model \(64,\)"
    ):
        SDVAE.from_pretrained(other)
    deeper = tmp_path / "deeper"
    make_reference(layers_per_block=2).save_pretrained(deeper)
    shutil.copy(folder / "config.json", deeper / "config.json")
    with pytest.raises(ValueError, match=r"unexpected: \['decoder.up_blocks.0.resnets.2.conv1.bias'"):
        SDVAE.from_pretrained(deeper)


def test_config_from_diffusers(reference):
    _, folder = reference
    config = json.loads((folder / "config.json").read_text())
    cfg = SDVAEConfig.from_diffusers_config(config, frame_chunk=2)
    assert cfg.block_out_channels == (32, 64) and cfg.norm_num_groups == 8 and cfg.frame_chunk == 2
    assert cfg.to_diffusers_config()["down_block_types"] == ["DownEncoderBlock2D"] * 2
    # the released sd-vae-ft-ema config.json predates scaling_factor: diffusers' default applies
    old = {k: v for k, v in config.items() if k not in ("scaling_factor", "shift_factor", "use_quant_conv")}
    assert SDVAEConfig.from_diffusers_config(old).scaling_factor == 0.18215
    bad = {
        "act_fn": ("gelu", "act_fn 'gelu'"),
        "down_block_types": (["DownEncoderBlock2D", "AttnDownEncoderBlock2D"], "down_block_types"),
        "up_block_types": (["UpDecoderBlock2D"], "up_block_types"),
        "latents_mean": ([0.0] * 4, "latents_mean"),
        "norm_type": ("spatial", "unknown keys \\['norm_type'\\]"),
        "_class_name": ("AutoencoderKLCogVideoX", "_class_name"),
    }
    for key, (value, message) in bad.items():
        with pytest.raises(ValueError, match=message):
            SDVAEConfig.from_diffusers_config({**config, key: value})
    with pytest.raises(ValueError, match="norm_num_groups 32 must divide"):
        SDVAEConfig(block_out_channels=(16, 32))
    with pytest.raises(ValueError, match="frame_chunk"):
        SDVAEConfig(frame_chunk=0)


def test_interface_and_bad_inputs(reference):
    assert SDVAEConfig().spatial_compression == 8
    _, folder = reference
    vae = SDVAE.from_pretrained(folder)
    assert (vae.latent_channels, vae.spatial_compression, vae.temporal_compression) == (4, 2, 1)
    assert vae.latent_frames(17) == 17
    cases = [
        (vae.encode, torch.zeros(3, 3, 8, 8), r"\[B, F, C, H, W\], got shape \(3, 3, 8, 8\)"),
        (vae.encode, torch.zeros(1, 2, 4, 8, 8), r"3 channels, got shape \(1, 2, 4, 8, 8\)"),
        (vae.encode, torch.zeros(1, 2, 3, 9, 8), r"divisible by 2, got shape \(1, 2, 3, 9, 8\)"),
        (vae.encode, torch.zeros(1, 2, 3, 8, 8, dtype=torch.uint8), "float tensor"),
        (vae.decode, torch.zeros(1, 2, 3, 4, 4), r"4 channels, got shape \(1, 2, 3, 4, 4\)"),
        (vae.decode, torch.zeros(2, 4, 4, 4), r"got shape \(2, 4, 4, 4\)"),
    ]
    for fn, x, message in cases:
        with pytest.raises(ValueError, match=message):
            fn(x)
    with pytest.raises(FileNotFoundError, match="config.json"):
        SDVAE.from_pretrained(folder / "nope")
