"""The commands users type, through the entry points they type them into (issue 17 §2, §3): a recipe's
``main`` with command-line arguments, in a subprocess for one recipe of each family (V-DiT, CogVideoX,
VAE), since tests that called ``train(cfg)`` once hid a crash of ``python recipes/cogvideox_i2v.py``.

- the backbone class follows the config (CogVideoX recipes from the command line, ``torchrun`` included);
- ``--pretrained FOLDER`` reads the architecture from the folder's ``config.json`` (CogVideoX and V-DiT);
- ``--resume auto`` continues from the run's saved ``config.json``, the command line overriding it; a flag
  that changes the weights' shapes is refused naming the field, and a failed launch leaves ``config.json``
  untouched (validate first, write last); a resume past ``max_steps`` says there is nothing to do;
- ``--eval.*`` turns evaluation on for a recipe that leaves it off; ``--data.root`` missing names the flag;
  a latent frame-count mismatch names ``--model.num-frames``.

Run: ``python -m pytest tests/test_cli.py`` (about a minute on 2 cores).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_recipes import load  # tests/ on sys.path (pytest's rootdir insertion)

from minivdit import train as train_mod
from minivdit.align.heads import AlignConfig
from minivdit.eval.evaluate import EvalConfig
from minivdit.models.dit import WEIGHTS_NAME, VDiT, save_pretrained

ROOT = Path(__file__).parents[1]
RECIPES = ROOT / "recipes"
pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")

# The quickstart at a size that trains in milliseconds per step; the synthetic evaluation at its end on 16
# clips instead of 512.
TINY_QS = shlex.split(  # as typed
    "--model.depth 2 --model.hidden-size 32 --model.num-heads 2 "  # TINY_QS[6:] keeps the recipe's model
    "--data.batch-size 2 --log.every 1 --log.no-tensorboard --sample-every -1 "
    "--eval.num-gen 16 --eval.num-real 16 --eval.batch-size 16 --eval.steps 2"
)


def run_cmd(cmd: list[str], *, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run a command as a user would, single-threaded (two of these never fight for the 2 cores)."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    assert out.returncode == 0, f"{cmd}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def recipe(name: str, *args: str) -> subprocess.CompletedProcess:
    return run_cmd([sys.executable, str(RECIPES / f"{name}.py"), *args])


def steps(run_dir: Path) -> list[int]:
    """The trained steps logged (evaluation rows, which carry no loss, left out)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if "loss" in r]


# ---------------------------------------------------------------------------------------------- CogVideoX


@pytest.fixture(scope="module")
def tiny_cogvideox(tmp_path_factory) -> dict[str, Path]:
    pytest.importorskip("diffusers")
    from tiny_cogvideox import make_clips, make_pipeline_folder

    from minivdit.align.teachers import make_tiny_teacher

    root = tmp_path_factory.mktemp("cogvideox")
    make_tiny_teacher("vjepa2", root / "vjepa2")
    return {"pipe": make_pipeline_folder(root / "pipe"), "clips": make_clips(root / "clips"), "root": root}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cogvideox_i2v", "drepa_timelapse"])
def test_cogvideox_recipes_from_the_command_line(name, tiny_cogvideox, tmp_path):
    """The README's commands with tiny folders and no preset change: the architecture (2 layers of 2 heads,
    the 5B-I2V preset's 42 × 48 notwithstanding) comes from ``--pretrained``'s ``transformer/config.json``.
    dREPA goes through ``torchrun``, as the README launches it."""
    pipe, clips = tiny_cogvideox["pipe"], tiny_cogvideox["clips"]
    args = ["--pretrained", str(pipe), "--vae.path", str(pipe / "vae"), "--text.path", str(pipe)]
    args += ["--data.root", str(clips), "--out-dir", str(tmp_path)]
    args += shlex.split(
        "--text.max-length 8 --text.dtype float32 --data.num-frames 9 --data.image-size 32 48 "
        "--data.num-workers 0 --data.batch-size 2 --max-steps 2 --precision fp32 --log.every 1 "
        "--log.no-tensorboard"
    )
    if name == "drepa_timelapse":
        args += ["--teacher.vjepa2", str(tiny_cogvideox["root"] / "vjepa2"), "--align.block-index", "1"]
        args += ["--align.projector-dim", "32", "--teacher.token-grid", "1", "3"]  # divides the 2×3 DiT grid
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", "--master_port=0"]
        run_cmd([*launcher, str(RECIPES / f"{name}.py"), *args])
    else:  # with validation samples every step (issue 18 §2.12): two prompts, anyframe at frames 0 and 4
        from PIL import Image
        from tiny_cogvideox import H, W

        Image.new("RGB", (W, H), (200, 40, 40)).save(image := tmp_path / "first.png")
        args += ["--validation.prompts", "a red disc", "clouds drift", "--validation.images", str(image)]
        args += shlex.split("--validation.frame-indices 0 4 --validation.every 1 --validation.steps 2")
        recipe(name, *args)
    run_dir = tmp_path / name
    assert steps(run_dir) == [1, 2]
    if name == "cogvideox_i2v":
        for step in (1, 2):
            out = run_dir / "samples" / "validation" / f"step_{step:07d}"
            assert {"0000.mp4", "0001.mp4", "contact.png", "samples.json"} <= {f.name for f in out.iterdir()}
            record = json.loads((out / "samples.json").read_text())
            assert (record["seeds"], record["frame_indices"], record["steps"]) == ([0, 1], [0, 4], 2)
    model = json.loads((run_dir / "config.json").read_text())["model"]
    theirs = json.loads((pipe / "transformer" / "config.json").read_text())
    assert (model["num_layers"], model["num_attention_heads"]) == (theirs["num_layers"], 2)
    assert model["attn_backend"] == "flash"  # the recipe's runtime choice is kept (SDPA stands in on CPU)


# ---------------------------------------------------------------------------------------------- V-DiT


def test_vdit_starts_from_a_pretrained_folder(tmp_path):
    """``--pretrained`` for a V-DiT recipe: a folder written by ``save_pretrained`` (what
    ``tools/convert_weights.py latte`` writes) gives the architecture and the initial weights."""
    quickstart = load(RECIPES / "quickstart.py").config().model
    arch = dataclasses.replace(quickstart, depth=2, hidden_size=48, num_heads=3)  # not 8 × 128: the folder's
    torch.manual_seed(1)
    model = VDiT(arch)
    model.init_weights()
    with torch.no_grad():  # adaLN and the final layer are zero-initialised: give them values to compare
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    folder = save_pretrained(model.state_dict(), arch, tmp_path / "pretrained")
    lr = 1e-10
    args = ["--pretrained", str(folder), "--out-dir", str(tmp_path), "--optim.lr", str(lr)]
    args += ["--optim.warmup-steps", "0"]
    train_mod.main(load(RECIPES / "quickstart.py").config(), [*args, "--max-steps", "1", *TINY_QS[6:]])
    run_dir = tmp_path / "quickstart"
    cfg = json.loads((run_dir / "config.json").read_text())["model"]
    assert (cfg["depth"], cfg["hidden_size"], cfg["num_heads"]) == (2, 48, 3)
    trained = load_file(str(run_dir / "checkpoints" / "step_0000001" / "model.safetensors"))
    start = load_file(str(folder / WEIGHTS_NAME))
    assert trained.keys() == start.keys()
    for k in start:
        # One AdamW step moves a weight by at most lr (|m̂ / (√v̂ + ε)| <= 1 on the first step), and the
        # float32 result rounds to within half an ulp of |w| <= 1: atol = lr + 2^-24 covers both.
        torch.testing.assert_close(trained[k], start[k], atol=lr + 2**-24, rtol=0, msg=k)


def test_resume_auto_reuses_the_saved_config_and_refuses_shape_changes(tmp_path, capsys):
    """The continued run in a subprocess, as typed; the others through the same ``main`` in-process (no
    interpreter start to pay)."""
    out = ["--out-dir", str(tmp_path)]
    quickstart = load(RECIPES / "quickstart.py").config()
    train_mod.main(quickstart, [*out, *TINY_QS, "--max-steps", "2"])
    run_dir = tmp_path / "quickstart"
    saved = (run_dir / "config.json").read_bytes()

    with pytest.raises(ValueError, match=r"model.depth=2 \(this run: 4\).*start a new one with --run-name"):
        train_mod.main(quickstart, [*out, "--resume", "auto", "--model.depth", "4"])
    assert (run_dir / "config.json").read_bytes() == saved  # validated first, written last

    # No shape flags: depth 2, 32 wide, batch 2 ... come from the saved config.json.
    more = recipe("quickstart", *out, "--resume", "auto", "--max-steps", "3", "--optim.lr", "2e-4")
    assert "continuing from" in more.stdout and "max_steps 2 -> 3" in more.stdout
    assert steps(run_dir) == [1, 2, 3]
    again = json.loads((run_dir / "config.json").read_text())
    assert (again["model"]["depth"], again["max_steps"], again["optim"]["lr"]) == (2, 3, 2e-4)

    capsys.readouterr()
    train_mod.main(quickstart, [*out, "--resume", "auto"])
    assert "nothing to train: the checkpoint is at step 3 and max_steps is 3" in capsys.readouterr().out
    assert steps(run_dir) == [1, 2, 3]


def test_eval_flags_turn_on_evaluation_the_recipe_leaves_off(tmp_path):
    default = load(RECIPES / "quickstart_ddpm.py").config()
    assert default.eval is None and train_mod.parse(default, []).eval is None
    assert train_mod.parse(default, ["--eval.steps", "2"]).eval == EvalConfig(steps=2)
    # the same for alignment: any --align.* flag turns it on, from AlignConfig's defaults
    quickstart = load(RECIPES / "quickstart.py").config()
    assert quickstart.align is None and train_mod.parse(quickstart, []).align is None
    aligned = train_mod.parse(quickstart, ["--align.block-index", "3", "--teacher.tiny-random"])
    assert aligned.align == AlignConfig(block_index=3)
    train_mod.main(default, ["--out-dir", str(tmp_path), "--max-steps", "1", *TINY_QS])
    metrics = json.loads(
        (tmp_path / "quickstart_ddpm" / "eval" / "step_0000001" / "metrics.json").read_text()
    )
    assert metrics["protocol"]["name"] == "synthetic" and "syn_fvd" in metrics


def test_missing_data_root_names_the_flag_and_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match=r"--data.dataset ucf101 needs --data.root \(the folder holding it"):
        train_mod.main(load(RECIPES / "latte_ucf.py").config(), ["--out-dir", str(tmp_path)])
    assert not (tmp_path / "latte_ucf" / "config.json").exists()


@pytest.mark.parametrize("block_type", ["spatiotemporal", "full3d"])
def test_pixel_frame_mismatch_names_the_flag(block_type, tmp_path, capsys):
    """A full-3-D model (no temporal table) would otherwise sample clips of another length than it trained
    on."""
    args = ["--out-dir", str(tmp_path), "--model.block-type", block_type, "--data.num-frames", "4"]
    with pytest.raises(SystemExit):  # a usage error, as tyro's own
        train_mod.parse(load(RECIPES / "quickstart.py").config(), args)
    assert "set --model.num-frames 4" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- VAE

TINY_VAE = shlex.split(  # 5 frames of 8 × 8 -> latents [2, 4, 1, 1]
    "--vae.base-channels 4 --vae.channel-multipliers 1 1 1 1 --vae.latent-channels 4 --vae.no-mid-attention "
    "--data.num-frames 5 --data.image-size 8 --data.batch-size 2 --data.synthetic-size 64 "
    "--eval-every 2 --eval-clips 3 --latent-stats-clips 4 --log.every 1 --log.no-tensorboard"
)


def test_vae_recipe_resume_auto_from_the_command_line(tmp_path):
    out = ["--out-dir", str(tmp_path)]
    from minivdit.train_vae import main as vae_main

    default = load(RECIPES / "vae_causal3d.py").config()
    vae_main(default, [*out, *TINY_VAE, "--max-steps", "2"])
    run_dir = tmp_path / "vae_causal3d"
    with pytest.raises(ValueError, match=r"vae.latent_channels=4 \(this run: 8\)"):
        vae_main(default, [*out, "--resume", "auto", "--vae.latent-channels", "8"])
    recipe("vae_causal3d", *out, "--resume", "auto", "--max-steps", "3")  # the saved tiny config
    assert steps(run_dir) == [1, 2, 3]
    assert (run_dir / "vae" / "config.json").is_file()
