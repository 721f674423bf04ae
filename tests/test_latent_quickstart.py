"""The quickstart recipe switched to the latent space of a causal 3-D VAE from the command line (issue 4 §4):
``--vae.kind causal3d --vae.path <run>/vae`` plus the ``--model.*``/``--data.*`` flags that
``minivdit.train.check_latent_shape`` asks for. A tiny random VAE saved with ``save_pretrained`` stands in for
``recipes/vae_causal3d.py``'s output; a tiny DiT trains 2 steps in its latents and its samples are decoded to
pixels. Run: ``python -m pytest tests/test_latent_quickstart.py`` (a few seconds).
"""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

import minivdit.train as train_mod
from minivdit.models.vae.causal3d import CausalVAE3D, CausalVAE3DConfig

RECIPES = Path(__file__).parents[1] / "recipes"
VAE = CausalVAE3DConfig(  # 8x space (patch 2 · 2 · 2), 4x time and shortcuts, as the VAE recipe
    patch_size=2,
    base_channels=8,
    channel_multipliers=(1, 1, 2),
    space_down_levels=(0, 1),
    time_down_levels=(0, 1),
    latent_channels=4,
    mid_attention=False,
    shortcuts=True,
    scaling_factor=0.5,
    shift_factor=0.1,
)
TINY_DIT = [  # fmt: skip  # small enough for milliseconds per step; the shape flags below are what matters
    "--model.depth",
    "2",
    "--model.hidden-size",
    "32",
    "--model.num-heads",
    "2",
    "--data.batch-size",
    "2",
    "--sample.num",
    "2",
    "--sample.steps",
    "2",
    "--log.every",
    "1",
    "--log.no-tensorboard",
    "--max-steps",
    "2",
]


def quickstart_config(name: str = "quickstart"):
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", RECIPES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.config()


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vae_causal3d") / "vae"
    CausalVAE3D.from_config(VAE).save_pretrained(path)
    return path


def test_quickstart_trains_in_latent_space(tmp_path, vae_dir, single_thread, monkeypatch):
    written = []
    write_samples = train_mod.write_samples

    def spy(out_dir, videos, names=None, **kw):  # what the trainer writes: decoded pixels
        written.append(videos)
        return write_samples(out_dir, videos, names, **kw)

    monkeypatch.setattr(train_mod, "write_samples", spy)
    # 9 frames of 32x32 pixels -> latents [3, 4, 4, 4]: the flags check_latent_shape names
    latent = "--vae.kind causal3d --data.num-frames 9 --data.image-size 32 --model.in-channels 4"
    latent += " --model.input-size 4 4 --model.num-frames 3 --model.patch-size 1"
    args = [*latent.split(), "--vae.path", str(vae_dir), "--out-dir", str(tmp_path), "--run-name", "qs"]
    tiny_eval = ["--eval.num-gen", "4", "--eval.num-real", "4", "--eval.steps", "2", "--eval.batch-size", "4"]
    train_mod.main(quickstart_config(), [*args, *TINY_DIT, *tiny_eval])

    run = tmp_path / "qs"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]
    [ev] = [r for r in rows if "eval/syn_fvd" in r]  # the quickstart evaluates itself on decoded pixels
    assert ev["step"] == 2 and 0.0 <= ev["eval/syn_acc"] <= 1.0
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows if "loss" in r)
    saved = json.loads((run / "config.json").read_text())
    assert saved["vae"]["kind"] == "causal3d" and saved["model"]["in_channels"] == 4

    [videos] = written  # sample_every=0: one grid, at the end
    assert videos.shape == (2, 9, 3, 32, 32)  # 3 latents of 4x4 decoded to 9 frames of 32x32 pixels
    assert videos.abs().max() <= 1.0 and videos.std() > 0
    assert (run / "samples" / "step_0000002" / "contact.png").is_file()


def test_quickstart_latent_recipe_takes_the_vae_run_dir(tmp_path, vae_dir, single_thread):
    """``recipes/quickstart_latent.py`` is the flags above fixed in Python; ``--vae.path`` may name the VAE
    recipe's run directory (its ``vae/`` folder is used). The tiny VAE has 4 latent channels, not 16."""
    run_dir = vae_dir.parent
    (run_dir / "config.json").write_text("{}")  # a train_vae run has its own config.json next to vae/
    default = quickstart_config("quickstart_latent")
    assert (default.vae.kind, default.vae.path) == ("causal3d", "runs/vae_causal3d")
    args = ["--vae.path", str(run_dir), "--model.in-channels", "4", "--out-dir", str(tmp_path), *TINY_DIT]
    train_mod.main(default, args)
    rows = (tmp_path / "quickstart_latent" / "metrics.jsonl").read_text().splitlines()
    assert len([r for r in rows if r.strip()]) == 2


@pytest.mark.parametrize("block_type", ["spatiotemporal", "full3d"])
def test_wrong_latent_flags_name_the_fix(tmp_path, vae_dir, block_type):
    """num-frames in both layouts: the temporal table, and the length of the clips a model samples (a full-3-D
    model of 8 latent frames once sampled 29-frame clips against 9-frame real ones)."""
    args = ["--vae.kind", "causal3d", "--vae.path", str(vae_dir), "--data.num-frames", "9"]
    args += ["--data.image-size", "32", "--out-dir", str(tmp_path), *TINY_DIT]
    args += ["--model.block-type", block_type]
    fix = r"--model.in-channels 4 --model.input-size 4 4 --model.num-frames 3"
    with pytest.raises(ValueError, match=fix):
        train_mod.main(quickstart_config(), args)


def test_a_frame_count_the_vae_cannot_take_names_the_flag(tmp_path, vae_dir):
    """8 frames for a causal VAE (4k + 1) was a traceback from inside the VAE naming no flag."""
    args = ["--vae.kind", "causal3d", "--vae.path", str(vae_dir), "--data.num-frames", "8"]
    args += ["--data.image-size", "32", "--out-dir", str(tmp_path), *TINY_DIT]
    with pytest.raises(ValueError, match=r"--data.num-frames 8 does not fit .* \(nearest valid: 5 or 9\)"):
        train_mod.main(quickstart_config(), args)
