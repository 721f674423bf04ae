"""Cached image conditions (issue 21 §2): ``tools/cache_latents.py --start-frame clean|noised`` stores frame 0
encoded alone; FlashI2V and I2V "first" runs then train without the pixel clips or a VAE encode, anyframe
encodes only the clips of its i > 0 samples, and a cache made for another condition is refused by name.

A tiny random causal 3-D VAE (4× time, 8× space), 5-frame 16² synthetic clips: latents [2, 4, 2, 2]."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from minivdit.conditioning import Conditioner
from minivdit.conditioning.i2v import I2VConfig, cached_image_condition, image_condition, noised_first_frame
from minivdit.data import DataConfig, build_dataset, build_loader
from minivdit.data import shards as S
from minivdit.models.flashi2v import FlashI2VConfig, start_frame_latents
from minivdit.models.vae import VAEConfig, build_vae
from minivdit.models.vae.causal3d import CausalVAE3D, CausalVAE3DConfig
from minivdit.train import vae_only_decodes

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("single_thread")
CPU = torch.device("cpu")


def _tool():
    spec = importlib.util.spec_from_file_location(
        "tool_cache_latents_i2v", ROOT / "tools" / "cache_latents.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def caches(tmp_path_factory) -> dict:
    """The VAE folder and two caches of the same 4 clips (with the clips): clean and noised frame 0."""
    root = tmp_path_factory.mktemp("i2v_cache")
    torch.manual_seed(0)
    vae = CausalVAE3D.from_config(
        CausalVAE3DConfig(latent_channels=4, base_channels=8, channel_multipliers=(1, 1, 1, 1))
    )
    vae.save_pretrained(root / "vae")
    tool = _tool()
    args = ["--data.num-frames", "5", "--data.image-size", "16", "--data.synthetic-size", "4"]
    args += [
        "--vae.kind",
        "causal3d",
        "--vae.path",
        str(root / "vae"),
        "--device",
        "cpu",
        "--batch-size",
        "4",
    ]
    args += ["--keep-video", "--posterior", "mean"]
    out = {"vae": str(root / "vae"), "tool": tool}
    for frame in ("clean", "noised"):
        out[frame] = tool.main([*args, "--start-frame", frame, "--out", str(root / frame)])
    return out


def _clips() -> torch.Tensor:
    """The 4 clips the tool encoded, as it saw them (float, before the shards' uint8)."""
    data = DataConfig(num_frames=5, image_size=16, synthetic_size=4)
    planned = S.PlannedSamples(build_dataset(data), range(4), 4, data.seed)
    return torch.stack([torch.as_tensor(planned[i][1]["video"]) for i in range(4)])  # [4, 5, 3, 16, 16]


def _vae(caches):
    return build_vae(VAEConfig(kind="causal3d", path=caches["vae"], sample_posterior=False)).eval()


def test_clean_start_frame_is_flashi2v_z_c_and_needs_no_clips(caches):
    meta = S.read_meta(caches["clean"])
    assert meta["start_frame"] == {"frame": "clean", "posterior": "mean"}
    assert meta["fields"]["image_latents"]["shape"] == [1, 4, 2, 2]
    ds = S.ShardDataset(caches["clean"])
    vae, video = _vae(caches), _clips()
    with torch.no_grad():
        online = start_frame_latents(vae, video[:, 0])  # [4, 1, 4, 2, 2]
    cached = torch.stack([ds.get(i)["image_latents"] for i in range(4)])
    # one encode of the same frames, batched alike: fp32 rounding only
    torch.testing.assert_close(cached, online, rtol=1e-5, atol=1e-6)

    data = DataConfig(dataset="shards", root=str(caches["clean"]), num_frames=5, image_size=16, batch_size=4)
    data = dataclasses.replace(data, shard_fields=("latents", "image_latents"))
    batch = next(build_loader(data))
    assert batch.video is None and batch.image_latents.shape == (4, 1, 4, 2, 2)
    cond = Conditioner(start_frame=True, vae=vae)(batch, torch.Generator().manual_seed(0), CPU)
    assert torch.equal(cond.image_latents, batch.image_latents)


def test_noised_start_frame_is_i2v_first_without_pixels(caches):
    tool, meta = caches["tool"], S.read_meta(caches["noised"])
    assert meta["start_frame"]["frame"] == "noised" and meta["start_frame"]["noise_log_std"] == 0.5
    ds = S.ShardDataset(caches["noised"])
    vae, video = _vae(caches), _clips()
    # the tool's draw: one generator per (data seed, shard, batch, part), σ per clip, then the mean encode
    g = torch.Generator().manual_seed(tool._seed(0, 1, 0, 0, 0))
    with torch.no_grad():
        expected = tool.scaled_moments(vae, noised_first_frame(video[:, :1], I2VConfig(), g))[0]
    cached = torch.stack([ds.get(i)["image_latents"] for i in range(4)])
    torch.testing.assert_close(cached, expected, rtol=1e-5, atol=1e-6)
    clean = torch.stack([S.ShardDataset(caches["clean"]).get(i)["image_latents"] for i in range(4)])
    assert not torch.allclose(cached, clean, atol=1e-3)  # σ ≈ 0.05 of noise changed the latents

    cfg = I2VConfig(mode="first", dropout=0.0)
    got = cached_image_condition(cached, 2, vae, cfg, torch.Generator().manual_seed(1))
    assert got.shape == (4, 2, 4, 2, 2) and torch.equal(got[:, 0], cached[:, 0]) and not got[:, 1].any()
    dropped = cached_image_condition(cached, 2, vae, dataclasses.replace(cfg, dropout=1.0), torch.Generator())
    assert not dropped.any()
    # through the Conditioner: no pixels in the batch, the same latents as the function
    data = DataConfig(dataset="shards", root=str(caches["noised"]), num_frames=5, image_size=16, batch_size=4)
    batch = next(build_loader(dataclasses.replace(data, shard_fields=("latents", "image_latents"))))
    cond = Conditioner(i2v=cfg, vae=vae)(batch, torch.Generator().manual_seed(1), CPU)
    torch.testing.assert_close(cond.image_latents[:, 0], batch.image_latents[:, 0])
    assert cond.image_latents.shape == (4, 2, 4, 2, 2)


def test_anyframe_encodes_only_the_clips_of_its_later_frames(caches):
    ds = S.ShardDataset(caches["noised"])
    video = torch.stack([ds.get(i)["video"] for i in range(4)])
    first = torch.stack([ds.get(i)["image_latents"] for i in range(4)])
    vae = _vae(caches)
    calls = []
    encode = vae.encode
    vae.encode = lambda x, generator=None: calls.append(tuple(x.shape)) or encode(x, generator=generator)
    cfg = I2VConfig(mode="anyframe", dropout=0.0, first_frame_prob=0.5)
    g = torch.Generator().manual_seed(3)
    latents, index = image_condition(video, vae, cfg, g, first=first)
    later = int((index > 0).sum())
    assert 0 < later < 4, index  # the seed draws both kinds
    assert calls == [(later, 5, 3, 16, 16)]  # one encode: the noise-filled clips of the i > 0 samples
    at0 = index == 0
    assert torch.equal(latents[at0, :1], first[at0]) and not latents[at0, 1:].any()
    vae.encode = encode


def test_a_cache_for_another_condition_is_refused_by_name():
    base = {"fields": {"latents": {}, "image_latents": {}, "video": {}}}
    clean = base | {"start_frame": {"frame": "clean", "posterior": "mean"}}
    noised = base | {"start_frame": {"frame": "noised", "noise_log_mean": -3.0, "noise_log_std": 0.5}}
    first = I2VConfig(mode="first")
    check = S.start_frame_mismatches
    assert check(clean, ["latents", "image_latents"], flashi2v=True, i2v=None) == []
    assert check(noised, ["latents", "image_latents"], flashi2v=False, i2v=first) == []
    assert check(noised, ["latents"], flashi2v=False, i2v=I2VConfig()) == []  # no image condition
    [why] = check(noised, ["latents", "image_latents"], flashi2v=True, i2v=None)
    assert "encode frame 0 'noised'" in why and "--start-frame clean --overwrite" in why
    [why] = check(clean, ["latents", "image_latents"], flashi2v=False, i2v=first)
    assert "needs 'noised'" in why and "--start-frame noised" in why
    [why] = check(
        noised, ["image_latents"], flashi2v=False, i2v=dataclasses.replace(first, noise_log_std=0.2)
    )
    assert "noise_log_std=0.5" in why and "--i2v.noise-log-std 0.2" in why and "--noise-log-std 0.2" in why
    [why] = check(noised, ["latents", "image_latents"], flashi2v=False, i2v=I2VConfig(mode="anyframe"))
    assert "anyframe" in why and "--keep-video" in why
    assert check(noised, ["video", "image_latents"], flashi2v=False, i2v=I2VConfig(mode="anyframe")) == []
    [why] = check(clean, ["latents"], flashi2v=True, i2v=None)
    assert "neither the clips nor cached start-frame latents" in why and "--data.shard-fields" in why


def test_the_vae_stays_parked_only_when_nothing_encodes():
    read = lambda *f: SimpleNamespace(fields=["label", *f], meta={})  # a ShardDataset's read fields
    run = lambda i2v="off", flashi2v=None: SimpleNamespace(  # the fields vae_only_decodes reads
        i2v=I2VConfig(mode=i2v), model=SimpleNamespace(), flashi2v=flashi2v, uniworld=None
    )
    flash = run(flashi2v=FlashI2VConfig())
    assert vae_only_decodes(flash, read("latents", "image_latents"))
    assert not vae_only_decodes(flash, read("latents", "video"))
    assert not vae_only_decodes(run("anyframe"), read("latents", "image_latents", "video"))
    assert vae_only_decodes(run("first"), read("latents", "image_latents"))
    assert not vae_only_decodes(run("first"), read("latents", "video"))
    assert vae_only_decodes(run(), read("latents")) and not vae_only_decodes(run(), read("video"))
