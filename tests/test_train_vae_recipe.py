"""Training a causal 3-D VAE from scratch (``minivdit/train_vae.py``, ``recipes/vae_causal3d.py``): the
recipe's CLI, a tiny run end to end, exact resume, bad input.

Run: ``python -m pytest tests/test_train_vae_recipe.py``.
"""

import dataclasses
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import tyro
from safetensors.torch import load_file

from minivdit import ckpt
from minivdit.data import DataConfig
from minivdit.models.vae import VAEConfig, build_vae
from minivdit.models.vae.causal3d import CausalVAE3D, CausalVAE3DConfig
from minivdit.train import CkptConfig, EMAConfig, LogConfig, OptimConfig
from minivdit.train_vae import VAETrainConfig, train_vae

RECIPE = Path(__file__).parents[1] / "recipes" / "vae_causal3d.py"
TINY_VAE = CausalVAE3DConfig(
    base_channels=4, channel_multipliers=(1, 1, 1, 1), latent_channels=4, mid_attention=False
)


def load_recipe():
    spec = importlib.util.spec_from_file_location("recipe_vae_causal3d", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny(tmp_path: Path, **overrides) -> VAETrainConfig:
    """5 frames of 8×8 pixels → latents [2, 4, 1, 1]; a step takes milliseconds."""
    cfg = VAETrainConfig(
        vae=TINY_VAE,
        data=DataConfig(num_frames=5, image_size=8, batch_size=2, synthetic_size=64),
        optim=OptimConfig(lr=1e-3, warmup_steps=2, grad_clip=1.0),
        ema=EMAConfig(decay=0.9),
        log=LogConfig(every=1, tensorboard=False),
        ckpt=CkptConfig(every=2, keep=0),
        kl_weight=1e-4,
        eval_every=2,
        eval_clips=3,
        latent_stats_clips=4,
        out_dir=str(tmp_path / "runs"),
        run_name="run",
        max_steps=4,
    )
    return dataclasses.replace(cfg, **overrides)


def rows(run: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------- the recipe


def test_recipe_parses_and_overrides():
    default = load_recipe().config()
    assert isinstance(default, VAETrainConfig)
    parse = lambda args: tyro.cli(  # noqa: E731
        VAETrainConfig, default=default, args=args, config=(tyro.conf.AvoidSubcommands,)
    )
    assert parse([]) == default
    changed = parse(["--kl-weight", "1e-5", "--data.num-frames", "17", "--vae.latent-channels", "8"])
    assert (changed.kl_weight, changed.data.num_frames, changed.vae.latent_channels) == (1e-5, 17, 8)
    # L2 only and parameter-free shortcuts by default (the docstring says why); L1 + L2 is one flag away
    assert (default.l1_weight, default.l2_weight, default.vae.shortcuts) == (0.0, 1.0, True)
    assert parse(["--l1-weight", "1"]).l1_weight == 1.0
    assert changed.optim == default.optim and changed.max_steps == default.max_steps
    # The recipe's clips suit its VAE: 4k + 1 frames, a multiple of 8 pixels.
    assert (default.data.num_frames - 1) % default.vae.temporal_compression == 0
    assert default.data.image_size % default.vae.spatial_compression == 0


def test_recipe_help():
    out = subprocess.run([sys.executable, str(RECIPE), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    flags = ("--kl-weight", "--perceptual-weights", "--eval-every", "--vae.latent-channels", "--optim.lr")
    for flag in flags:
        assert flag in out.stdout, flag


# ---------------------------------------------------------------------------------------------- a tiny run


def test_tiny_run_writes_metrics_checkpoints_and_vae(tmp_path, single_thread):
    cfg = tiny(tmp_path, l1_weight=0.5, l2_weight=2.0)
    run = train_vae(cfg)
    metrics = rows(run)
    assert [r["step"] for r in metrics] == [1, 2, 3, 4]
    for r in metrics:
        for key in ("loss", "loss/l1", "loss/l2", "loss/kl", "grad_norm", "lr", "it_s"):
            assert key in r and torch.isfinite(torch.tensor(r[key])), key
        parts = 0.5 * r["loss/l1"] + 2.0 * r["loss/l2"] + cfg.kl_weight * r["loss/kl"]
        assert r["loss"] == pytest.approx(parts, rel=1e-5)
    assert [("eval/psnr" in r) for r in metrics] == [False, True, False, True]  # eval_every=2
    assert all(0 < r["eval/psnr"] < 100 for r in metrics if "eval/psnr" in r)
    log_txt = (run / "log.txt").read_text()
    assert "perceptual loss: skipped" in log_txt and "--vae.path" in log_txt

    root = run / "checkpoints"
    assert [p.name for p in ckpt.list_checkpoints(root)] == ["step_0000002", "step_0000004"]
    ema = load_file(str(root / "step_0000004" / "ema.safetensors"))

    # <run>/vae: the EMA weights with estimated latent constants; usable as the DiT trainer's VAE.
    vae = CausalVAE3D.from_pretrained(run / "vae")
    assert vae.cfg == dataclasses.replace(
        TINY_VAE, scaling_factor=vae.cfg.scaling_factor, shift_factor=vae.cfg.shift_factor
    )
    assert (vae.cfg.scaling_factor, vae.cfg.shift_factor) != (1.0, 0.0)
    state = vae.state_dict()
    assert state.keys() == ema.keys() and all(torch.equal(state[k], ema[k]) for k in ema)
    frozen = build_vae(VAEConfig(kind="causal3d", path=str(run / "vae")))
    video = torch.zeros(1, 5, 3, 8, 8)
    assert frozen.encode(video).shape == (1, 2, 4, 1, 1)
    assert frozen.decode(frozen.encode(video, sample=False)).shape == video.shape
    # the run directory itself works too (issue 4: "--vae.path <run>"): its vae/ folder is taken
    from_run = build_vae(VAEConfig(kind="causal3d", path=str(run)))
    assert from_run.cfg == vae.cfg and all(torch.equal(from_run.state_dict()[k], ema[k]) for k in ema)


def test_exact_resume(tmp_path, single_thread):
    n = 2
    full = train_vae(tiny(tmp_path, run_name="full", max_steps=2 * n))
    half = tiny(tmp_path, run_name="half", max_steps=n)
    train_vae(half)
    train_vae(dataclasses.replace(half, max_steps=2 * n, resume="auto"))

    ref, resumed = rows(full), rows(half.run_dir)
    assert [r["step"] for r in resumed] == list(range(1, 2 * n + 1))
    for key in ("loss", "loss/l1", "loss/l2", "loss/kl", "grad_norm", "eval/psnr"):
        assert [r.get(key) for r in resumed] == [r.get(key) for r in ref], key  # bitwise
    last = f"checkpoints/step_{2 * n:07d}"
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(str(full / last / name)), load_file(str(half.run_dir / last / name))
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert (full / "vae" / "config.json").read_text() == (half.run_dir / "vae" / "config.json").read_text()


def test_preemption_checkpoints_and_resumes_exactly(tmp_path, single_thread, monkeypatch):
    """SIGUSR1 during step 2: the VAE trainer finishes it, checkpoints step 2 (off its every-2 schedule's
    step 4) and raises ``Preempted``; ``--resume auto`` then matches an uninterrupted run."""
    import os
    import signal

    import minivdit.train_vae as tv
    from minivdit.preempt import Preempted

    real, calls = tv.vae_step, []

    def signalling(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGUSR1)
        return real(*args, **kwargs)

    cfg = tiny(tmp_path, run_name="preempted", max_steps=4, ckpt=CkptConfig(every=3, keep=0))
    monkeypatch.setattr(tv, "vae_step", signalling)
    with pytest.raises(Preempted, match="SIGUSR1 at step 2"):
        train_vae(cfg)
    monkeypatch.undo()
    assert [p.name for p in ckpt.list_checkpoints(cfg.run_dir / "checkpoints")] == ["step_0000002"]
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # the handler is gone with the run
    train_vae(dataclasses.replace(cfg, resume="auto"))
    full = train_vae(tiny(tmp_path, run_name="full", max_steps=4, ckpt=CkptConfig(every=3, keep=0)))
    assert [r["loss"] for r in rows(cfg.run_dir)] == [r["loss"] for r in rows(full)]


# ---------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("frames", "nearest"), [(8, "5 or 9"), (16, "13 or 17"), (2, "1 or 5")])
def test_frame_count_not_4k_plus_1(tmp_path, frames, nearest):
    with pytest.raises(ValueError, match=rf"data.num_frames={frames}.*4k \+ 1.*nearest valid: {nearest}"):
        tiny(tmp_path, data=DataConfig(num_frames=frames, image_size=8))
    with pytest.raises(SystemExit):  # the CLI reports it too
        tyro.cli(
            VAETrainConfig,
            default=tiny(tmp_path),
            args=["--data.num-frames", str(frames)],
            config=(tyro.conf.AvoidSubcommands,),
        )


def test_other_bad_config(tmp_path):
    with pytest.raises(ValueError, match=r"image_size=12 is not a multiple of the VAE's 8x"):
        tiny(tmp_path, data=DataConfig(num_frames=5, image_size=12))
    with pytest.raises(ValueError, match=r"eval_every=3 must be a multiple of log.every=2"):
        tiny(tmp_path, eval_every=3, log=LogConfig(every=2))
    with pytest.raises(ValueError, match=r"eval_seed must differ"):
        tiny(tmp_path, eval_seed=0)
    with pytest.raises(ValueError, match=r"l1_weight and l2_weight must be >= 0"):
        tiny(tmp_path, l1_weight=-1.0)
    with pytest.raises(ValueError, match=r"l1_weight \+ l2_weight > 0"):
        tiny(tmp_path, l1_weight=0.0, l2_weight=0.0)


def test_perceptual_weights_are_refused_not_faked(tmp_path):
    weights = tmp_path / "lpips_vgg.pth"
    weights.write_bytes(b"\0")
    with pytest.raises(ValueError, match=r"perceptual.*not supported"):
        train_vae(tiny(tmp_path, perceptual_weights=str(weights)))
    with pytest.raises(ValueError, match=r"no such file"):
        train_vae(tiny(tmp_path, perceptual_weights=str(tmp_path / "missing.pth")))
    assert not (tmp_path / "runs").exists()  # refused before anything is written
