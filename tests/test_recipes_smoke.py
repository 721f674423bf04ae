"""Every paper recipe (Latte, Align4Gen, REPA) end to end for 2 steps on CPU: a generated mini dataset in the
real on-disk layout, a tiny random SD-VAE folder, tiny random DINOv2 + SAM2 folders, and a tiny model through
``--model.*`` overrides, exactly as a user's command line would. Plus the flag list of every recipe against a
snapshot (``tests/snapshots/recipe_flags.json``; regenerate with ``MINIVDIT_UPDATE_SNAPSHOTS=1``), and the one
clear error of a missing dataset root.

Run: ``pytest -q tests/test_recipes_smoke.py`` (about a minute on 2 cores).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from test_data_real import write_frames, write_video  # tests/ is on sys.path (pytest's rootdir insertion)
from test_recipes import RECIPES, load

from minivdit.align.teachers import make_tiny_teacher
from minivdit.models.vae.sd import SDVAE, SDVAEConfig
from minivdit.train import main, train

pytestmark = [
    pytest.mark.usefixtures("single_thread"),
    pytest.mark.filterwarnings("ignore:torch.distributed is disabled"),
]
SNAPSHOT = Path(__file__).parent / "snapshots" / "recipe_flags.json"
COGVIDEOX_RECIPES = ("cogvideox_i2v", "drepa_timelapse")  # their smoke runs: tests/test_recipes_cogvideox.py
WAN_RECIPES = ("flashi2v_wan", "uniworld_osp2")  # their smoke runs: tests/test_recipes_{wan,uniworld}.py
# synthetic data, no assets: tests/test_flashi2v_ablation.py, tests/test_recipes_uniworld.py
ABLATIONS = ("flashi2v_ablation", "uniworld_synthetic")
PAPER_RECIPES = [
    p
    for p in RECIPES
    if not p.stem.startswith("quickstart") and p.stem not in COGVIDEOX_RECIPES + WAN_RECIPES + ABLATIONS
]
CLASSES = ("ApplyEyeMakeup", "Basketball", "YoYo")


def flags(cfg) -> list[str]:
    """The dotted CLI flags of a config, as tyro names them (one per leaf field)."""
    out = []

    def walk(obj, prefix):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            name = f"{prefix}{f.name.replace('_', '-')}"
            if dataclasses.is_dataclass(value):
                walk(value, name + ".")
            else:
                out.append("--" + name)

    walk(cfg, "")
    return sorted(out)


def test_flag_lists_match_snapshot():
    got = {p.stem: flags(load(p).config()) for p in RECIPES}
    if os.environ.get("MINIVDIT_UPDATE_SNAPSHOTS"):
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    want = json.loads(SNAPSHOT.read_text())
    assert got == want, "recipe flags changed: review, then rerun with MINIVDIT_UPDATE_SNAPSHOTS=1"


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("assets")
    ucf = root / "ucf"
    lists = ucf / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    (lists / "classInd.txt").write_text("".join(f"{i + 1} {c}\n" for i, c in enumerate(CLASSES)))
    names = []
    for c, cls in enumerate(CLASSES):
        for g in (1, 2):
            write_video(ucf / "UCF-101" / cls / f"v_{cls}_g{g:02d}_c01.avi", 24, "mpeg4", tint=60 * c)
            names.append((f"{cls}/v_{cls}_g{g:02d}_c01.avi", c + 1, g))
    for fold in (1, 2, 3):
        (lists / f"trainlist0{fold}.txt").write_text("".join(f"{n} {c}\n" for n, c, g in names if g == 1))
        (lists / f"testlist0{fold}.txt").write_text("".join(f"{n}\n" for n, c, g in names if g == 2))
    for v in range(2):
        write_frames(root / "sky" / "sky_train" / f"v{v}" / f"v{v}_0", 16, name=lambda i: f"f_{i}.jpg")
    for v in range(2):
        write_video(root / "ffs" / "train" / "videos" / f"{v:03d}.mp4", 20, tint=50 * v)
    torch.manual_seed(0)
    vae_cfg = SDVAEConfig(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4)
    SDVAE.from_config(vae_cfg).save_pretrained(root / "sd-vae")
    make_tiny_teacher("dinov2", root / "dinov2")
    make_tiny_teacher("sam2", root / "sam2", seed=1)
    return {"root": root, "ucf101": ucf, "sky": root / "sky", "ffs": root / "ffs"}


@pytest.mark.parametrize("path", PAPER_RECIPES, ids=lambda p: p.stem)
def test_recipe_runs_two_steps(path, assets, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    default = load(path).config()
    aligned = default.align is not None
    args = [
        "--out-dir", str(tmp_path), "--max-steps", "2", "--sample-every", "-1", "--precision", "fp32",
        "--log.every", "1", "--log.no-tensorboard",
        "--data.root", str(assets[default.data.dataset]), "--data.num-frames", "4", "--data.image-size", "16",
        "--data.batch-size", "2", "--data.num-workers", "0",
        "--vae.path", str(assets["root"] / "sd-vae"),
        "--model.depth", "2", "--model.hidden-size", "32", "--model.num-heads", "2",
        "--model.patch-size", "1", "--model.input-size", "2", "2", "--model.num-frames", "4",
    ]  # fmt: skip
    if default.model.num_classes:
        args += ["--model.num-classes", str(len(CLASSES))]
    if aligned:
        args += ["--align.block-index", "1", "--align.projector-dim", "32"]
        for name in ("dinov2", "sam2"):
            if getattr(default.teacher, name):
                args += [f"--teacher.{name}", str(assets["root"] / name)]
    main(default, args)  # the recipe's entry point: ``main(config())`` with the command line
    run_dir = tmp_path / default.run_name
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(np.isfinite(r["loss"]) for r in rows)
    assert all(("loss/align" in r) == aligned for r in rows)
    assert (run_dir / "checkpoints" / "step_0000002" / "ema.safetensors").is_file()


@pytest.mark.parametrize("path", PAPER_RECIPES[:1], ids=lambda p: p.stem)
def test_missing_dataset_root_is_one_clear_error(path, tmp_path):
    default = load(path).config()
    cfg = dataclasses.replace(
        default, data=dataclasses.replace(default.data, root=str(tmp_path / "nope")), out_dir=str(tmp_path)
    )
    with pytest.raises(ValueError, match="README"):
        train(cfg)
