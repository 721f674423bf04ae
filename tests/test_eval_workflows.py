"""The documented evaluation workflows (issue 17), each through the command a user types: a quickstart
trained on shards evaluates itself; a run on shards of real videos is measured against those videos (found
through the shards' meta.json, or ``--data-root`` / ``--eval.data-root``); a ``python -m minivdit.sample``
folder is evaluated as it is; ``--keep-frames`` writes where ``--help`` says; a bare ``run`` repeats the run's
own evaluation settings and never replaces metrics of other settings; each subcommand's ``--help`` lists only
the flags it uses.

Run: ``pytest -q tests/test_eval_workflows.py`` (CPU, about 30 s on 2 busy cores; one recipe subprocess).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tyro
from oracles import load_file  # tests/ is on sys.path (pytest's rootdir insertion)

from minivdit import media
from minivdit.data import DataConfig
from minivdit.data.synthetic import SyntheticVideos
from minivdit.eval.__main__ import main as eval_main
from minivdit.eval.evaluate import EvalConfig

ROOT = Path(__file__).parents[1]
pytestmark = [
    pytest.mark.usefixtures("single_thread"),
    pytest.mark.filterwarnings("ignore:torch.distributed is disabled"),
]
FRAMES, SIZE = 4, 16
TINY_MODEL = {"num_frames": FRAMES, "input_size": (SIZE, SIZE)}


def _frame_folders(root: Path, n: int, seed: int = 0) -> Path:
    """``n`` synthetic clips as PNG frame folders ``root/clipNNN/frame_F.png`` (a "folder" dataset)."""
    from PIL import Image

    ds = SyntheticVideos(FRAMES, SIZE, 4, n, seed)
    for i in range(n):
        clip = media.to_uint8(ds.get(i)["video"][None])[0]  # [F, H, W, 3]
        (root / f"clip{i:03d}").mkdir(parents=True)
        for f, frame in enumerate(clip):
            Image.fromarray(frame).save(root / f"clip{i:03d}" / f"frame_{f}.png")
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory, make_tiny_cfg) -> Path:
    """A tiny class-conditional run that evaluated itself at its end with its own settings (2 Euler steps,
    CFG 2, 6 + 6 clips), as the quickstart does with 5 steps and CFG 3; it asked for FVD too, without the
    I3D weights, so training skipped it."""
    from minivdit.train import train

    metrics = ("syn_fvd", "syn_acc", "syn_count", "fvd")
    ev = EvalConfig(
        protocol="synthetic", metrics=metrics, steps=2, cfg_scale=2.0, num_gen=6, num_real=6, batch_size=6
    )
    data = {"num_frames": FRAMES, "image_size": SIZE}
    cfg = make_tiny_cfg(tmp_path_factory.mktemp("run"), max_steps=2, data=data, model=TINY_MODEL, eval=ev)
    return train(cfg)


def test_quickstart_trained_on_shards_evaluates_itself(tmp_path):
    """README: shards of the synthetic set (tools/make_shards.py), then ``recipes/quickstart.py --data.dataset
    shards``: its final synthetic evaluation needs no files and used to die on the shards."""
    shards = tmp_path / "shards"
    load_file("tool_make_shards", ROOT / "tools" / "make_shards.py").main(
        ["--data.dataset", "synthetic", "--data.num-frames", str(FRAMES), "--data.image-size", str(SIZE),
         "--data.synthetic-size", "16", "--out", str(shards)]
    )  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / "quickstart.py"), "--data.dataset", "shards",
         "--data.root", str(shards), "--data.num-frames", str(FRAMES), "--data.image-size", str(SIZE),
         "--data.batch-size", "4", "--model.num-frames", str(FRAMES), "--model.depth", "2",
         "--model.hidden-size", "32", "--model.num-heads", "2", "--max-steps", "2",
         "--out-dir", str(tmp_path), "--log.no-tensorboard", "--sample.num", "2",
         "--eval.num-gen", "8", "--eval.num-real", "8"],
        env=env | {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""},
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    written = json.loads((tmp_path / "quickstart" / "eval" / "step_0000002" / "metrics.json").read_text())
    assert np.isfinite(written["syn_fvd"]) and 0 <= written["syn_acc"] <= 1
    p = written["protocol"]
    assert p["real_data"]["dataset"] == "synthetic" and p["num_real_used"] == 8 and p["num_fake_used"] == 8
    assert p["sampler"]["steps"] == 5 and p["sampler"]["cfg_scale"] == 3.0  # the recipe's own settings
    # and again from the command line: the same settings, the same synthetic reference, no files
    again = eval_main(["run", "--ckpt", str(tmp_path / "quickstart")])["protocol"]
    assert again["real_data"]["dataset"] == "synthetic" and again["num_real_used"] == 8


def test_run_on_shards_of_real_videos_finds_the_source(tmp_path, tiny_cfg, capsys):
    """The README's cached-data command with ``--eval.*``: a run on shards is measured against the videos the
    shards were made from (meta.json's ``source``), in training and with ``python -m minivdit.eval run``;
    when they moved, one error names the flag, and the flag finds them."""
    from minivdit.data.shards import write_clip_shards
    from minivdit.train import train

    videos = _frame_folders(tmp_path / "videos", 8)
    shards = write_clip_shards(
        DataConfig(dataset="folder", root=str(videos), num_frames=FRAMES, image_size=SIZE, frame_interval=1),
        tmp_path / "shards",
    )
    ev = EvalConfig(protocol="synthetic", metrics=("syn_fvd",), num_gen=6, num_real=6, steps=2, batch_size=6)
    cfg = tiny_cfg(
        max_steps=2,
        model=TINY_MODEL | {"num_classes": 0},
        data={
            "dataset": "shards",
            "root": str(shards),
            "num_frames": FRAMES,
            "image_size": SIZE,
            "frame_interval": 1,
        },
        eval=ev,
    )
    run_dir = train(cfg)
    p = json.loads((run_dir / "eval" / "step_0000002" / "metrics.json").read_text())["protocol"]
    assert p["real_data"] == {"dataset": "folder", "root": str(videos)} and p["num_real_used"] == 6

    moved = videos.rename(tmp_path / "moved")
    with pytest.raises(ValueError, match="--eval.data-root") as err:  # at the start, not after training
        train(dataclasses.replace(cfg, run_name="lost"))
    assert str(videos) in str(err.value) and str(shards) in str(err.value)
    assert not (Path(cfg.out_dir) / "lost" / "checkpoints").exists()
    found_ev = dataclasses.replace(ev, data_root=str(moved), keep_frames=True)
    again = train(dataclasses.replace(cfg, run_name="found", eval=found_ev))
    found = json.loads((again / "eval" / "step_0000002" / "metrics.json").read_text())["protocol"]
    assert found["real_data"]["root"] == str(moved) and found["num_real_used"] == 6
    # --eval.keep-frames: the clips beside the step's metrics
    assert len(list((again / "eval" / "step_0000002" / "frames").glob("*/*.png"))) == 6 * FRAMES

    with pytest.raises(ValueError, match="give --data-root DIR"):
        eval_main(["run", "--ckpt", str(run_dir)])
    capsys.readouterr()
    eval_main(["run", "--ckpt", str(run_dir), "--data-root", str(moved)])
    out = Path(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["out"])
    assert out.parent == run_dir / "eval" / "step_0000002" and out.name.startswith("metrics-root=")
    assert json.loads(out.read_text())["protocol"]["real_data"]["root"] == str(moved)


def test_folders_counts_only_the_clips_of_a_samples_folder(run, tmp_path):
    """README: ``python -m minivdit.sample --out samples/`` then ``eval folders --fake samples/``: the grid
    and contact sheet written beside the clips are not clips (also in a training-style nested folder)."""
    from minivdit.sample import SampleConfig, sample

    samples = tmp_path / "samples"
    args = ["--ckpt", str(run), "--out", str(samples), "--num", "3", "--steps", "2"]
    sample(tyro.cli(SampleConfig, args=args))
    assert {"grid.mp4", "grid.gif", "contact.png", "0002.mp4"} <= {p.name for p in samples.iterdir()}
    real = _frame_folders(tmp_path / "real", 6)
    args = ["folders", "--real", str(real), "--metrics", "syn_fvd", "--num-frames", str(FRAMES),
            "--resolution", str(SIZE), "--num-real", "6", "--num-fake", "3",
            "--out", str(tmp_path / "m.json")]  # fmt: skip
    flat = eval_main(args + ["--fake", str(samples)])
    assert flat["protocol"]["num_fake_used"] == 3
    nested = tmp_path / "all" / "step_0000002"  # runs/<run>/samples/step_N/: contact.png in a subfolder
    nested.parent.mkdir()
    samples.rename(nested)
    assert eval_main(args + ["--fake", str(nested.parent)])["protocol"]["num_fake_used"] == 3


def test_bare_run_repeats_the_runs_settings_and_keeps_other_metrics(run, tmp_path, caplog, capsys):
    """``python -m minivdit.eval run --ckpt RUN`` measures as the run did (its ``eval`` settings), replacing
    only metrics of the same settings; other settings go beside, named by the difference; ``--keep-frames``
    puts the clips beside the metrics they belong to (``--out``'s folder) and says where."""
    step = run / "eval" / "step_0000002"
    trained = json.loads((step / "metrics.json").read_text())
    assert trained["protocol"]["sampler"]["steps"] == 2 and trained["protocol"]["sampler"]["cfg_scale"] == 2.0
    with caplog.at_level("INFO", logger="minivdit"):
        bare = eval_main(["run", "--ckpt", str(run)])
    assert "the run's own evaluation settings" in caplog.text and "same settings" in caplog.text
    assert "skipping fvd: no weights given (--i3d)" in caplog.text  # as training did
    again = json.loads((step / "metrics.json").read_text())
    assert again["protocol"]["sampler"] == trained["protocol"]["sampler"]
    assert again["protocol"]["num_fake_used"] == again["protocol"]["num_real_used"] == 6
    measured = ["syn_fvd", "syn_acc", "syn_count"]
    assert again["protocol"]["metrics"] == trained["protocol"]["metrics"] == measured
    # The same EMA weights and settings in one process: the same float32 computations (shapes, threads and
    # kernels as in training's evaluation), so the values agree to round-off at most.
    assert bare["syn_fvd"] == pytest.approx(trained["syn_fvd"], rel=1e-6)
    before = (step / "metrics.json").read_bytes()

    caplog.clear()
    with caplog.at_level("INFO", logger="minivdit"):
        eval_main(["run", "--ckpt", str(run), "--cfg-scale", "1", "--keep-frames"])
    assert (step / "metrics.json").read_bytes() == before  # never replaced by other settings
    beside = step / "metrics-cfg_scale=1.json"
    p = json.loads(beside.read_text())["protocol"]
    assert p["sampler"]["cfg_scale"] == 1.0  # the flag wins
    assert p["sampler"]["steps"] == 2  # the rest: the run's
    assert "not replacing it" in caplog.text and str(beside) in caplog.text
    assert len(sorted((step / "frames-cfg_scale=1").glob("*/*.png"))) == 6 * FRAMES
    assert p["frames"] == str(step / "frames-cfg_scale=1") and not (step / "frames").exists()

    caplog.clear()
    capsys.readouterr()
    with caplog.at_level("INFO", logger="minivdit"):
        eval_main(["run", "--ckpt", str(run), "--keep-frames", "--out", str(tmp_path / "x" / "metrics.json")])
    assert len(sorted((tmp_path / "x" / "frames").glob("*/*.png"))) == 6 * FRAMES  # <folder of --out>/frames
    assert str((tmp_path / "x" / "frames").resolve()) in caplog.text
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["out"] == str(tmp_path / "x" / "metrics.json")
    assert not (step / "frames").exists()


def _flags(subcommand: str, capsys) -> set[str]:
    with pytest.raises(SystemExit):
        eval_main([subcommand, "--help"])
    text = capsys.readouterr().out
    return {w.rstrip(",") for w in text.split() if w.startswith("--")}


def test_each_subcommand_lists_only_the_flags_it_uses(capsys):
    folders, run = _flags("folders", capsys), _flags("run", capsys)
    generation = {"--steps", "--cfg-scale", "--precision", "--keep-frames", "--no-keep-frames", "--data-root"}
    assert not (generation | {"--every"}) & folders  # folders measures clips that exist already
    assert {"--real", "--fake", "--real-stats", "--num-fake", "--resolution"} <= folders
    assert not {"--every", "--real-stats", "--real", "--fake"} & run
    assert generation | {"--ckpt", "--use-ema", "--num-gen"} <= run
    # issue 18 §1.13: the protocol's fields are the same flags in both (one EvalConfig, one resolver);
    # the split of a run's dataset and the generated clips' label rule only mean something in run
    shared = {"--num-frames", "--resolution", "--num-real", "--real-subset", "--real-stride", "--seed"}
    shared |= {"--ddof", "--is-variant"}
    assert shared <= folders and shared <= run
    assert {"--real-split", "--label-rule"} <= run and not {"--real-split", "--label-rule"} & folders


def test_run_and_folders_take_the_protocol_overrides(run, tmp_path):
    """Issue 18 §1.1, §1.10, §1.13 through the commands users type: ``run --num-frames`` (it had none),
    ``--real-stride`` and ``--label-rule`` land in the record; ``folders`` under an align4gen protocol asks
    for ``--real-stride`` (the run's frame interval, which a folder does not know) and records it."""
    p = eval_main(
        ["run", "--ckpt", str(run), "--num-frames", "3", "--real-stride", "2", "--label-rule", "uniform",
         "--out", str(tmp_path / "run.json")]
    )["protocol"]  # fmt: skip
    assert p["num_frames_used"] == 3 and p["real_stride"] == 2 and p["label_rule"] == "uniform"
    assert p["num_real_used"] == p["num_fake_used"] == 6 and p["real_bad"] == {"short": 0, "corrupt": 0}
    real, fake = _frame_folders(tmp_path / "real", 6), _frame_folders(tmp_path / "fake", 6, seed=1)
    args = ["folders", "--protocol", "align4gen-sky", "--real", str(real), "--fake", str(fake),
            "--metrics", "syn_fvd", "--num-frames", "2", "--resolution", str(SIZE), "--num-real", "6",
            "--num-fake", "6", "--out", str(tmp_path / "folders.json")]  # fmt: skip
    with pytest.raises(ValueError, match="give --real-stride N"):
        eval_main(args)
    p = eval_main(args + ["--real-stride", "2"])["protocol"]  # 2 frames at stride 2 of the 4
    assert p["real_stride"] == 2 and p["num_frames_used"] == 2 and p["name"] == "align4gen-sky"
