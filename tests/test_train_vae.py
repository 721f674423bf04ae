"""Latent-space training: ``TrainConfig.vae`` wires a frozen VAE into ``train_step`` and into sampling.

Tiny random VAEs saved to a temp folder stand in for real weights.
Run: ``python -m pytest tests/test_train_vae.py``.
"""

import json

import pytest
import torch

from minivdit.data import build_loader
from minivdit.models.vae import VAEConfig, build_vae
from minivdit.models.vae.causal3d import CausalVAE3D, CausalVAE3DConfig
from minivdit.models.vae.sd import SDVAE, SDVAEConfig
from minivdit.objectives.flow import Flow, FlowConfig
from minivdit.train import TrainConfig, train, train_step


@pytest.fixture(scope="module")
def causal_vae_dir(tmp_path_factory):
    torch.manual_seed(0)
    cfg = CausalVAE3DConfig(latent_channels=4, base_channels=8, channel_multipliers=(1, 1, 1, 1))
    vae = CausalVAE3D.from_config(cfg)
    path = tmp_path_factory.mktemp("causal_vae")
    vae.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def sd_vae_dir(tmp_path_factory):
    torch.manual_seed(0)
    vae = SDVAE.from_config(
        SDVAEConfig(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4)
    )
    path = tmp_path_factory.mktemp("sd_vae")
    vae.save_pretrained(path)
    return path


def latent_cfg(make_tiny_cfg, tmp_path, kind, path, frames, latent_frames) -> TrainConfig:
    return make_tiny_cfg(
        tmp_path,
        vae=VAEConfig(kind=kind, path=str(path)),
        data={"num_frames": frames, "image_size": 16},
        model={"in_channels": 4, "input_size": (2, 2), "patch_size": 1, "num_frames": latent_frames},
        max_steps=2,
        sample_every=0,
    )


@pytest.mark.parametrize("kind, frames, latent_frames", [("causal3d", 5, 2), ("sd", 2, 2)])
def test_latent_training_and_sampling(
    make_tiny_cfg, tmp_path, single_thread, causal_vae_dir, sd_vae_dir, kind, frames, latent_frames
):
    path = causal_vae_dir if kind == "causal3d" else sd_vae_dir
    cfg = latent_cfg(make_tiny_cfg, tmp_path, kind, path, frames, latent_frames)
    run = train(cfg)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert (run / "samples" / "step_0000002" / "contact.png").is_file()
    saved = json.loads((run / "config.json").read_text())
    assert saved["vae"]["kind"] == kind and saved["vae"]["path"] == str(path)


def test_train_step_encodes_with_the_vae(make_tiny_cfg, tmp_path, causal_vae_dir):
    """The DiT sees exactly ``vae.encode(video)`` (posterior mean here), and cached latents bypass the VAE."""
    cfg = latent_cfg(make_tiny_cfg, tmp_path, "causal3d", causal_vae_dir, 5, 2)
    vae = build_vae(VAEConfig(kind="causal3d", path=str(causal_vae_dir), sample_posterior=False))
    batch = next(build_loader(cfg.data))
    seen = {}

    class Probe(torch.nn.Module):
        def forward(self, x_t, t_model, y):
            seen["x_t"] = x_t
            return type("Out", (), {"pred": torch.zeros_like(x_t)})()

    objective = Flow(FlowConfig())
    common = dict(
        model=Probe(), objective=objective, num_classes=4, precision="fp32", device=torch.device("cpu")
    )
    torch.manual_seed(0)
    train_step(batch, vae=vae, **common)
    via_vae = seen["x_t"]
    cached = type(batch)(video=None, label=batch.label, latents=vae.encode(batch.video))
    torch.manual_seed(0)
    train_step(cached, vae=None, **common)
    torch.testing.assert_close(seen["x_t"], via_vae, rtol=0, atol=0)
    assert via_vae.shape == (2, 2, 4, 2, 2)


def test_model_not_matching_the_latents_names_the_flags(make_tiny_cfg, tmp_path, causal_vae_dir):
    cfg = make_tiny_cfg(
        tmp_path,
        vae=VAEConfig(kind="causal3d", path=str(causal_vae_dir)),
        data={"num_frames": 5, "image_size": 16},
        model={"in_channels": 3, "input_size": (2, 2), "patch_size": 1, "num_frames": 2},
    )
    with pytest.raises(ValueError, match="--model.in-channels 4"):
        train(cfg)


def test_bad_vae_config():
    with pytest.raises(ValueError, match="--vae.path"):
        VAEConfig(kind="sd")
    with pytest.raises(ValueError, match="no config.json"):
        build_vae(VAEConfig(kind="causal3d", path="/nonexistent/vae"))
