"""Every recipe builds its config, parses with no flags and with an override, and prints --help.

Run: ``python -m pytest tests/test_recipes.py``.
"""

import importlib.util
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from minivdit import train
from minivdit.train import TrainConfig

# DiT recipes; the VAE recipes (vae_*.py) build a VAETrainConfig and are tested in test_train_vae_recipe.py.
RECIPE_DIR = Path(__file__).parents[1] / "recipes"
RECIPES = sorted(p for p in RECIPE_DIR.glob("*.py") if not p.stem.startswith("vae_"))


def load(path: Path):
    spec = importlib.util.spec_from_file_location(f"recipe_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse(default: TrainConfig, args: list[str]) -> TrainConfig:
    """What a recipe's ``main`` parses (``minivdit.train.parse``: the command line a user types)."""
    return train.parse(default, args)


def test_recipes_exist():
    expected = {"quickstart", "quickstart_ddpm", "quickstart_align", "quickstart_latent", "repa_ucf"}
    expected |= {f"{a}_{d}" for a in ("latte", "align4gen") for d in ("ucf", "sky", "ffs")}
    assert expected <= {p.stem for p in RECIPES}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_parses_and_overrides(path):
    default = load(path).config()
    assert isinstance(default, TrainConfig)
    assert parse(default, []) == default
    depth = "--model.num-layers" if hasattr(default.model, "num_layers") else "--model.depth"  # CogVideoX
    changed = parse(default, ["--optim.lr", "3e-4", depth, "24", "--max-steps", "7"])
    assert (changed.optim.lr, changed.model.depth, changed.max_steps) == (3e-4, 24, 7)
    assert type(changed.objective) is type(default.objective)  # the recipe's objective class is kept


def recipe_help(path: Path, monkeypatch, capsys) -> str:
    """``python recipes/X.py --help`` run in this process: the file executed as ``__main__`` with that
    command line, as the interpreter runs it (saving the ~5 s import of a subprocess per recipe)."""
    monkeypatch.setattr(sys, "argv", [str(path), "--help"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(path), run_name="__main__")
    assert exit_.value.code in (0, None)
    return capsys.readouterr().out


def test_recipe_help_in_a_subprocess():
    """One recipe through the interpreter itself; the others in-process (``recipe_help``)."""
    path = RECIPE_DIR / "quickstart.py"
    out = subprocess.run([sys.executable, str(path), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--optim.lr" in out.stdout and "Quickstart" in out.stdout  # the recipe's docstring is its help


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_help(path, monkeypatch, capsys):
    out = recipe_help(path, monkeypatch, capsys)
    doc = load(path).__doc__.split()
    assert " ".join(doc[:4]) in " ".join(out.split())  # the recipe's docstring is its --help
    assert "--optim.lr" in out and "--objective." in out
    # Each family lists its own flags only: LoRA, T5 text and validation prompts are the text-to-video
    # backbones' (CogVideoX, Wan); evaluation is the V-DiT's (also for recipes that leave it off: any
    # --eval.* flag turns it on); image-to-video (--i2v, --flashi2v) is both families'.
    wan = ("flashi2v_wan", "uniworld_osp2", "uniworld_synthetic")
    cogvideox = path.stem in ("cogvideox_i2v", "drepa_timelapse", *wan)
    for flag in ("--lora.rank", "--text.path", "--validation.prompts", "--vlm.path"):
        assert (flag in out) == cogvideox, flag
    assert "--i2v.mode" in out and "--flashi2v" in out
    assert ("--eval.protocol" in out) != cogvideox
