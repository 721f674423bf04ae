"""Sampling from a checkpoint (``python -m minivdit.sample``) and the classifier-free-guidance wrapper.

Run: ``pytest -q tests/test_sample.py`` (CPU, a few seconds).
"""

from __future__ import annotations

import pytest
import torch
import tyro
from PIL import Image

import minivdit.ckpt as ckpt_mod
from minivdit.dist import DistContext
from minivdit.models.cond import Cond
from minivdit.models.dit import DiTOutput
from minivdit.models.vae import VAEConfig
from minivdit.objectives.flow import Flow, FlowConfig
from minivdit.sample import SampleConfig, cfg_denoise_fn, generate, sample
from minivdit.train import build_models, train

pytestmark = [
    pytest.mark.usefixtures("single_thread"),
    pytest.mark.filterwarnings("ignore:torch.distributed is disabled"),
]


@pytest.fixture(scope="module")
def runs(make_tiny_cfg, tmp_path_factory):
    """Two-step tiny runs: class-conditional flow, class-conditional DDPM (learned σ), unconditional flow."""
    out = tmp_path_factory.mktemp("runs")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {
            "flow": train(make_tiny_cfg(out, max_steps=2, run_name="flow")),
            "ddpm": train(make_tiny_cfg(out, objective="ddpm", max_steps=2, run_name="ddpm")),
            "uncond": train(make_tiny_cfg(out, max_steps=2, run_name="uncond", model={"num_classes": 0})),
        }
    finally:
        torch.set_num_threads(before)


def _expect_outputs(out, n: int) -> None:
    for i in range(n):
        assert (out / f"{i:04d}.mp4").stat().st_size > 0
    assert not (out / f"{n:04d}.mp4").exists()
    for name in ("grid.mp4", "grid.gif", "contact.png"):
        assert (out / name).stat().st_size > 0, name


@pytest.mark.parametrize("kind", ["flow", "ddpm"])
def test_sample_from_checkpoint(runs, tmp_path, kind):
    step = runs[kind] / "checkpoints" / "step_0000002"
    out = sample(
        SampleConfig(
            ckpt=str(step), out=str(tmp_path / "s"), classes=(0, 3, 1), cfg_scale=3.0, steps=2, device="cpu"
        )
    )
    assert out == tmp_path / "s"
    _expect_outputs(out, 3)
    with Image.open(out / "grid.gif") as gif:
        assert gif.n_frames == 2
    with Image.open(out / "contact.png") as sheet:
        assert sheet.mode == "RGB" and sheet.width >= 8 and sheet.height >= 3 * 8


def test_sample_from_run_dir_uses_latest_and_ema(runs, tmp_path, monkeypatch):
    loaded = []
    real = ckpt_mod.load_weights
    monkeypatch.setattr(ckpt_mod, "load_weights", lambda model, p: (loaded.append(p), real(model, p)))
    run = str(runs["flow"])
    _expect_outputs(sample(SampleConfig(ckpt=run, out=str(tmp_path / "a"), num=5, steps=1, device="cpu")), 5)
    sample(SampleConfig(ckpt=run, out=str(tmp_path / "b"), num=1, steps=1, use_ema=False, device="cpu"))
    last = runs["flow"] / "checkpoints" / "step_0000002"
    assert loaded == [last / "ema.safetensors", last / "model.safetensors"]


def test_sample_unconditional(runs, tmp_path):
    _expect_outputs(
        sample(
            SampleConfig(
                ckpt=str(runs["uncond"]), out=str(tmp_path / "u"), num=3, steps=2, cfg_scale=4.0, device="cpu"
            )
        ),
        3,
    )


def test_sample_bad_input(runs, tmp_path):
    with pytest.raises(ValueError, match=r"unconditional \(num_classes=0\): \(1,\)"):
        sample(SampleConfig(ckpt=str(runs["uncond"]), out=str(tmp_path / "x"), classes=(1,), device="cpu"))
    flow, out = str(runs["flow"]), str(tmp_path / "x")
    with pytest.raises(ValueError, match=r"labels must be in \[0, 4\), got \[0, 4\]"):
        sample(SampleConfig(ckpt=flow, out=out, classes=(0, 4), steps=1, device="cpu"))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 4\), got \[-1\]"):
        sample(SampleConfig(ckpt=flow, out=out, classes=(-1,), steps=1, device="cpu"))
    with pytest.raises(ValueError, match="nowhere"):
        sample(SampleConfig(ckpt=str(tmp_path / "nowhere"), out=str(tmp_path / "x"), device="cpu"))
    with pytest.raises(ValueError, match=r"are for a V-DiT pretrained folder; a run samples with its own"):
        sample(SampleConfig(ckpt=flow, out=out, vae=VAEConfig(kind="sd", path="x"), device="cpu"))
    assert not (tmp_path / "x").exists()


def test_sample_cli_parses():
    cfg = tyro.cli(
        SampleConfig,
        args=[
            "--ckpt",
            "runs/r",
            "--out",
            "o",
            "--classes",
            "0",
            "2",
            "--cfg-scale",
            "4",
            "--no-use-ema",
            "--steps",
            "10",
        ],
    )
    assert cfg == SampleConfig(ckpt="runs/r", out="o", classes=(0, 2), cfg_scale=4.0, use_ema=False, steps=10)


def test_generate_is_seeded(make_tiny_cfg, tmp_path):
    cfg = make_tiny_cfg(tmp_path)
    model, _ = build_models(cfg, DistContext(rank=0, world=1, local_rank=0, device=torch.device("cpu")))
    with torch.no_grad():  # open the adaLN-Zero output path so that the output depends on x, t and y
        for m in (model.final_layer.linear, model.final_layer.adaLN_modulation[-1]):
            torch.nn.init.normal_(m.weight, std=0.1)
    kw = dict(labels=torch.tensor([0, 3]), shape=(2, 2, 3, 8, 8), steps=3, device=torch.device("cpu"))
    a = generate(model, Flow(FlowConfig()), cfg_scale=2.0, seed=1, **kw)
    b = generate(model, Flow(FlowConfig()), cfg_scale=2.0, seed=1, **kw)
    c = generate(model, Flow(FlowConfig()), cfg_scale=2.0, seed=2, **kw)
    d = generate(model, Flow(FlowConfig()), cfg_scale=1.0, seed=1, **kw)
    assert a.shape == (2, 2, 3, 8, 8) and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, d)
    assert model.training  # restored


# ---------------------------------------------------------------------------------------------- CFG wrapper


class _Stub(torch.nn.Module):
    """pred = (y + 1)·x + 10·channel on 2C output channels (C with ``sigma=False``); records the labels."""

    def __init__(self, sigma: bool):
        super().__init__()
        self.sigma = sigma
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # cfg_denoise_fn reads the device from it
        self.seen: list[torch.Tensor | None] = []

    def forward(self, x, t_model, cond=None):
        y = cond.label if cond is not None else None
        self.seen.append(y)
        scale = (y.float() + 1.0 if y is not None else torch.ones(x.shape[0])).view(-1, 1, 1, 1, 1)
        out = torch.cat([x, x], dim=2) if self.sigma else x
        chan = torch.arange(out.shape[2], dtype=x.dtype).view(1, 1, -1, 1, 1)
        return DiTOutput(pred=scale * out + 10.0 * chan + t_model.view(-1, 1, 1, 1, 1))


X = torch.randn(3, 2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
T = torch.tensor([5.0, 6.0, 7.0])
LABELS = torch.tensor([0, 2, 1])
NUM_CLASSES = 4
COND = Cond(label=LABELS)
NULL = COND.null(label=NUM_CLASSES)  # what VDiT.null_cond gives


@pytest.mark.parametrize("sigma", [False, True])
def test_cfg_scale_one_is_the_conditional_prediction(sigma):
    stub = _Stub(sigma)
    fn = cfg_denoise_fn(stub, COND, NULL, scale=1.0, guided_channels=3)
    got = fn(X, T)
    assert torch.equal(got, stub(X, T, COND).pred)
    assert torch.equal(stub.seen[0], LABELS)  # one conditional pass, no doubled batch


@pytest.mark.parametrize("sigma", [False, True])
def test_cfg_guides_only_the_first_channels(sigma):
    stub = _Stub(sigma)
    s = 4.0
    got = cfg_denoise_fn(stub, COND, NULL, scale=s, guided_channels=3)(X, T)
    doubled = stub.seen[0]
    null = NUM_CLASSES  # the CFG null label
    assert torch.equal(doubled, torch.tensor([0, 2, 1, null, null, null]))
    cond = stub(X, T, COND).pred
    uncond = stub(X, T, Cond(label=torch.full_like(LABELS, NUM_CLASSES))).pred
    assert got.shape == cond.shape == (3, 2, 6 if sigma else 3, 4, 4)
    torch.testing.assert_close(got[:, :, :3], uncond[:, :, :3] + s * (cond[:, :, :3] - uncond[:, :, :3]))
    assert not torch.allclose(got[:, :, :3], cond[:, :, :3])
    if sigma:
        assert torch.equal(got[:, :, 3:], cond[:, :, 3:])  # variance channels: the conditional ones, unguided


def test_cfg_unconditional_passes_no_labels():
    stub = _Stub(False)
    got = cfg_denoise_fn(stub, Cond(), None, scale=5.0, guided_channels=3)(X, T)
    assert stub.seen == [None]
    assert torch.equal(got, X + 10.0 * torch.arange(3.0).view(1, 1, -1, 1, 1) + T.view(-1, 1, 1, 1, 1))
