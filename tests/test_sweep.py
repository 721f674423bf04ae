"""``python -m minivdit.sweep`` (issue 22 §2): a grid of recipe × arms × seeds that resumes and aggregates.

Most tests launch a stand-in recipe (``FAKE``: a Python script without torch that writes what a run writes:
``metrics.jsonl`` rows and ``eval/step_N/metrics.json`` with a protocol record, from its flags), so a grid
of subprocesses costs milliseconds each and its mean ± std can be checked by hand. One test runs the real
quickstart: an interrupted run (a checkpoint at step 2, no marker) continues from that step under the sweep's
``--resume auto`` and its evaluations are tabulated.

Run: ``python -m pytest tests/test_sweep.py`` (about 20 s on 2 cores).
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest

from minivdit import sweep
from minivdit.preempt import EXIT_PREEMPTED

ROOT = Path(__file__).resolve().parents[1]

FAKE = """
import argparse, json, os, signal, sys, time
from pathlib import Path
p = argparse.ArgumentParser()
for flag in ("--seed", "--max-steps", "--eval-every"):
    p.add_argument(flag, type=int, default=4 if flag == "--max-steps" else 2)
for flag in ("--run-name", "--out-dir", "--resume"):
    p.add_argument(flag)
p.add_argument("--offset", type=float, default=0.0)
p.add_argument("--fail", action="store_true")
p.add_argument("--wait", action="store_true")
a = p.parse_args()
run = Path(a.out_dir) / a.run_name
run.mkdir(parents=True, exist_ok=True)
with open(Path(a.out_dir) / "launches.txt", "a") as f:
    f.write(a.run_name + "\\n")
if a.fail:
    print("boom: a broken arm", flush=True)
    sys.exit(3)
if a.wait:  # a long run: a signal makes it write a checkpoint and exit 75, as the trainer does
    signal.signal(signal.SIGTERM, lambda *_: ((run / "checkpoints" / "step_0000001").mkdir(parents=True),
                                               sys.exit(75)))
    (run / "started").touch()
    time.sleep(60)
record = {"name": "synthetic", "num_fake_used": 16, "num_real_used": 16, "num_frames_used": 8,
          "resolution_used": 16, "cfg_scale": 3.0, "checkpoint": None,
          "sampler": {"steps": 2, "weights": "ema"},
          "detectors": {"synthetic": {"sha256": "ab" * 32}}}
with open(run / "metrics.jsonl", "a") as f:
    for step in range(1, a.max_steps + 1):
        f.write(json.dumps({"step": step, "loss": a.offset + a.seed + step}) + "\\n")
        if step % a.eval_every == 0:
            value = a.offset + 10 * a.seed + step
            f.write(json.dumps({"step": step, "eval/syn_fvd": value}) + "\\n")
            out = run / "eval" / f"step_{step:07d}" / "metrics.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            values = {"syn_fvd": value, "syn_acc": 0.5}
            out.write_text(json.dumps(values | {"protocol": record | {"step": step}}))
"""


@pytest.fixture
def fake(tmp_path) -> Path:
    path = tmp_path / "fake_recipe.py"
    path.write_text(FAKE)
    return path


def write_spec(tmp_path: Path, recipe: Path, **keys) -> Path:
    spec = {
        "recipe": str(recipe),
        "arms": {"a": "--offset 0", "b": ["--offset", "100"]},
        "seeds": [0, 1],
        "common": "--max-steps 4",
        "steps": [2, 4],
        "metrics": ["syn_fvd"],
        "train_metrics": ["loss"],
        "smooth": 2,
        "protocol": "synthetic",
        "out": str(tmp_path / "sweep"),
    } | keys
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    return path


def launches(tmp_path: Path) -> list[str]:
    path = tmp_path / "sweep" / "runs" / "launches.txt"
    return path.read_text().split() if path.exists() else []


def test_spec_files_and_their_errors(tmp_path):
    example = sweep.load_spec(ROOT / "sweeps" / "example.toml")
    assert example.arms["full3d_qknorm"] == ("--model.block-type", "full3d", "--model.qk-norm")
    assert example.common[:2] == ("--max-steps", "1500") and example.seeds == (0, 1, 2)

    toml = tmp_path / "s.toml"
    toml.write_text('recipe = "r.py"\nseeds = [3]\n[arms]\nx = "--optim.lr 1e-3"\n')
    spec = sweep.load_spec(toml)
    assert spec.title == "s" and spec.arms == {"x": ("--optim.lr", "1e-3")}
    runs = sweep.plan(spec, tmp_path / "o")
    assert [r.name for r in runs] == ["x-s3"]
    assert runs[0].args == ("r.py", "--optim.lr", "1e-3", "--seed", "3", "--run-name", "x-s3", "--out-dir",
                            str(tmp_path / "o" / "runs"), "--resume", "auto")  # fmt: skip

    for text, match in [
        ('recipe = "r.py"\nsteep = [1]\n[arms]\nx = ""', r"s.toml: unknown keys \['steep'\]"),
        ('recipe = "r.py"\n[arms]\n"a b" = ""', r"s.toml: .*'a b' is not a run name"),
        ('recipe = "r.py"\n[arms]\nx = "--seed 3"', r"SweepSpec.arms.x: \['--seed'\] are set by the sweep"),
        ('recipe = "r.py"\ncommon = "--out-dir=x"\n[arms]\nx = ""', r"SweepSpec.common: \['--out-dir=x'\]"),
        ('recipe = "r.py"\nseeds = [0, 0]\n[arms]\nx = ""', r"seeds: expected distinct seeds"),
        ('recipe = "r.py"\nsmooth = "a"\n[arms]\nx = ""', r"SweepSpec.smooth='a': expected int"),
        ('recipe = "r.py"\n[arms]\nx = 3', r"arms.x: expected flags"),
        ('recipe = "r.py"\n[arms', r"s.toml: cannot read the sweep spec"),
    ]:
        toml.write_text(text)
        with pytest.raises(ValueError, match=match):
            sweep.load_spec(toml)


def test_sweep_runs_aggregates_and_skips_finished_runs(tmp_path, fake, capsys):
    spec = write_spec(tmp_path, fake)
    assert sweep.main([str(spec), "--dry-run"]) == 0
    assert capsys.readouterr().out.count(": new\n") == 4 and not launches(tmp_path)

    assert sweep.main([str(spec)]) == 0
    err = capsys.readouterr().err
    assert launches(tmp_path) == ["a-s0", "b-s0", "a-s1", "b-s1"]  # seeds outer: every arm after one pass
    assert "runs 1/4 done, 3 left, ETA 0:00:0" in err and "runs 4/4 done, 0 left, finished" in err
    out = tmp_path / "sweep"
    marker = json.loads((out / "runs" / "a-s1" / sweep.DONE).read_text())
    assert (
        marker["args"][-4:] == ["--out-dir", str(out / "runs"), "--resume", "auto"] and marker["seconds"] > 0
    )
    assert "# " in (out / "logs" / "a-s0.txt").read_text()  # the command heads the run's output

    summary = json.loads((out / "summary.json").read_text())
    # syn_fvd = offset + 10·seed + step: seeds 0 and 1 give mean offset + 5 + step, sample std √50
    cell = summary["table"]["syn_fvd"]["b"]["4"]
    assert cell["values"] == [104.0, 114.0] and cell["mean"] == 109.0
    assert cell["std"] == pytest.approx(np.sqrt(50))
    # loss = offset + seed + step, smoothed over the 2 steps up to 4: (3 + 4) / 2 + seed
    assert summary["table"]["loss"]["a"]["4"]["values"] == [3.5, 4.5]
    md = (out / "summary.md").read_text()
    assert "protocol synthetic: 16 generated vs 16 real clips, 8 frames at 16 px, CFG 3.0" in md
    assert "| b | 107 ± 7.1 | 109 ± 7.1 |" in md and "| a | 2 ± 0.71 | 4 ± 0.71 |" in md
    assert f"- arm `b`: `{shlex.join(['--offset', '100'])}`" in md and "every run finished" in md
    for name in ("syn_fvd.png", "loss.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert sweep.main([str(spec)]) == 0  # again: nothing to launch, the same summary
    assert len(launches(tmp_path)) == 4 and "a-s0: done, skipped" in capsys.readouterr().err
    assert json.loads((out / "summary.json").read_text())["table"] == summary["table"]

    # A changed spec relaunches (with --resume auto: a real run would continue from its checkpoint)
    assert sweep.main([str(write_spec(tmp_path, fake, common="--max-steps 6")), "--only", "b"]) == 0
    assert launches(tmp_path)[4:] == ["b-s0", "b-s1"]


def test_failed_runs_are_reported_and_the_others_go_on(tmp_path, fake, capsys):
    spec = write_spec(tmp_path, fake, arms={"ok": "", "broken": "--fail"}, seeds=[0])
    assert sweep.main([str(spec)]) == 1
    err = capsys.readouterr().err
    runs = tmp_path / "sweep" / "runs"
    assert "broken-s0: exit 3" in err and "boom: a broken arm" in err and "1 failed" in err
    assert json.loads((runs / "broken-s0" / sweep.FAILED).read_text())["returncode"] == 3
    assert (runs / "ok-s0" / sweep.DONE).is_file() and not (runs / "broken-s0" / sweep.DONE).exists()
    md = (tmp_path / "sweep" / "summary.md").read_text()
    assert "runs not finished: broken-s0" in md and "| broken | — | — |" in md
    with pytest.raises(ValueError, match=r"--only \['nope'\]: not arms of"):
        sweep.main([str(spec), "--only", "nope"])


def test_a_signal_is_passed_to_the_run_and_stops_the_sweep(tmp_path, fake):
    """SIGTERM to the sweep reaches the running recipe once (it checkpoints and exits 75); the sweep launches
    nothing more and exits 75, for the scheduler to requeue."""
    import os
    import signal
    import subprocess
    import time

    spec = write_spec(tmp_path, fake, arms={"slow": "--wait", "next": ""}, seeds=[0])
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "minivdit.sweep", str(spec)], env=env, cwd=tmp_path)
    started = tmp_path / "sweep" / "runs" / "slow-s0" / "started"
    for _ in range(600):
        if started.exists() or proc.poll() is not None:
            break
        time.sleep(0.05)
    assert started.exists()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == EXIT_PREEMPTED
    assert launches(tmp_path) == ["slow-s0"]
    run = tmp_path / "sweep" / "runs" / "slow-s0"
    assert (run / "checkpoints" / "step_0000001").is_dir() and not (run / sweep.DONE).exists()
    assert sweep.state(sweep.plan(sweep.load_spec(spec), tmp_path / "sweep")[0]) == "resume"


def test_what_the_summary_reads_from_a_run_directory(tmp_path):
    """A resumed run's re-logged steps (the last row wins), a line cut short by a kill, an evaluation folder
    that also holds a later ``python -m minivdit.eval run`` with other settings, a record of another
    protocol."""
    spec = sweep.SweepSpec(recipe="r.py", arms={"a": ()}, smooth=1, protocol="synthetic")
    (run,) = sweep.plan(spec, tmp_path)
    rows = [
        {"step": 1, "loss": 9.0},
        {"step": 2, "loss": 9.0},
        {"step": 1, "loss": 1.0},
        {"step": 2, "loss": 2.0},
    ]
    run.dir.mkdir(parents=True)
    (run.dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 3, "lo')
    step_dir = run.dir / "eval" / "step_0000002"
    step_dir.mkdir(parents=True)
    trained = {"syn_fvd": 5.0, "protocol": {"name": "synthetic", "checkpoint": None}}
    (step_dir / "metrics.json").write_text(json.dumps(trained))
    later = {"syn_fvd": 7.0, "protocol": {"name": "synthetic", "checkpoint": str(run.dir), "cfg_scale": 1.0}}
    (step_dir / "metrics-cfg_scale=1.json").write_text(json.dumps(later))
    assert sweep.eval_file(step_dir) == step_dir / "metrics.json"

    summary = sweep.summarize(spec, [run], tmp_path)
    assert summary["steps"] == [2]
    assert summary["table"]["syn_fvd"]["a"]["2"]["values"] == [5.0]
    assert summary["table"]["loss"]["a"]["2"]["values"] == [2.0]
    assert "| a | 5 |" in (tmp_path / "summary.md").read_text()  # one seed: a mean, no ± std

    (step_dir / "metrics.json").write_text(json.dumps(trained | {"protocol": {"name": "latte"}}))
    with pytest.raises(
        ValueError, match=r"metrics.json: protocol 'latte', but the sweep tabulates 'synthetic'"
    ):
        sweep.summarize(spec, [run], tmp_path)
    (step_dir / "metrics.json").unlink()
    (step_dir / "metrics-cfg_scale=1.json").unlink()
    assert sweep.summarize(spec, [run], tmp_path)["steps"] == [2]  # no evaluation: the last step logged


def test_rank_groups_and_their_devices():
    # 8 processes on one node, 2 GPUs per run: 4 groups, leaders at even ranks
    assert [sweep.rank_group(r, 8, r, 8, 2) for r in (0, 1, 2, 7)] == [
        (0, 4, True), (0, 4, False), (1, 4, True), (3, 4, False)
    ]  # fmt: skip
    with pytest.raises(ValueError, match="gpus_per_run=3 must divide"):
        sweep.rank_group(0, 8, 0, 8, 3)
    env = {"RANK": "2", "WORLD_SIZE": "8", "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "x", "PATH": "/bin"}
    assert sweep.run_env(env, world=8, local_rank=2, g=2) == {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "2,3"}
    visible = env | {"CUDA_VISIBLE_DEVICES": "4,5,6,7"}
    assert sweep.run_env(visible, world=4, local_rank=1, g=1)["CUDA_VISIBLE_DEVICES"] == "5"
    bound = {"CUDA_VISIBLE_DEVICES": "6", "SLURM_PROCID": "3", "SLURM_NTASKS": "4"}  # srun bound its GPU
    assert sweep.run_env(bound, world=4, local_rank=3, g=1) == {"CUDA_VISIBLE_DEVICES": "6"}
    assert sweep.run_env({"PATH": "/bin"}, world=1, local_rank=0, g=1) == {"PATH": "/bin"}
    runs = sweep.plan(sweep.SweepSpec(recipe="r.py", arms={"a": (), "b": ()}, seeds=(0, 1, 2)), Path("o"))
    assert [r.name for r in runs[1::4]] == ["b-s0", "b-s2"]  # group 1 of 4


def test_under_a_launcher_each_rank_runs_its_share_and_rank_0_summarises(tmp_path, fake, monkeypatch, capsys):
    """The ranks of ``torchrun --nproc_per_node 2 -m minivdit.sweep``, one after the other in this process:
    rank 1 runs runs 1, 3 and exits 0 even when one fails (torchrun would stop rank 0 otherwise); rank 0 runs
    0, 2, waits for every marker, writes the summary and reports the failure."""
    spec = write_spec(tmp_path, fake, arms={"a": "", "broken": "--fail"})
    launched = {}
    for rank in (1, 0):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        assert sweep.main([str(spec)]) == (1 if rank == 0 else 0)
        launched[rank] = launches(tmp_path)[len(sum(launched.values(), [])) :]
        assert (tmp_path / "sweep" / "summary.md").exists() == (rank == 0)
    assert launched == {1: ["broken-s0", "broken-s1"], 0: ["a-s0", "a-s1"]}
    assert "all rank groups: 2/4 runs done, 2 failed" in capsys.readouterr().err
    assert "runs not finished: broken-s0, broken-s1" in (tmp_path / "sweep" / "summary.md").read_text()


def test_an_interrupted_quickstart_run_resumes_and_is_tabulated(tmp_path, monkeypatch, capsys):
    """The real recipe: a run stopped after its step-2 checkpoint (no marker) continues from step 2 under the
    sweep, so its metrics.jsonl goes 1, 2, 3, 4 (a restart would log 1, 2, 1, 2, 3, 4); the table holds its
    synthetic-protocol evaluations at both steps."""
    from test_cli import TINY_QS  # tests/ on sys.path (pytest's rootdir insertion)
    from test_recipes import load

    from minivdit import train as train_mod

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    common = [*TINY_QS, "--eval.every", "2", "--ckpt.every", "2", "--max-steps", "4"]
    spec = write_spec(
        tmp_path,
        ROOT / "recipes" / "quickstart.py",
        arms={"qs": ""},
        seeds=[0],
        common=common,
        metrics=["syn_fvd", "syn_acc"],
    )
    (run,) = sweep.plan(sweep.load_spec(spec), tmp_path / "sweep")
    # The interrupted run: the sweep's command, stopped at step 2 (in-process: no interpreter start to pay)
    args = list(run.args[1:-2])  # without --resume auto
    args[args.index("--max-steps") + 1] = "2"
    train_mod.main(load(ROOT / "recipes" / "quickstart.py").config(), args)
    assert sweep.state(run) == "resume"
    capsys.readouterr()

    assert sweep.main([str(spec)]) == 0
    rows = [json.loads(line) for line in (run.dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    assert "resumed from" in (run.dir / "log.txt").read_text()
    summary = json.loads((tmp_path / "sweep" / "summary.json").read_text())
    for step in ("2", "4"):
        assert summary["table"]["syn_fvd"]["qs"][step]["n"] == 1
    assert summary["record"]["name"] == "synthetic" and summary["record"]["num_fake_used"] == 16
    assert "| qs |" in (tmp_path / "sweep" / "summary.md").read_text()


@pytest.mark.parametrize("path", sorted((ROOT / "sweeps").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_specs_parse_through_their_recipes(path, tmp_path):
    """Every arm of every shipped spec is a command line its recipe accepts (a typo in a flag would surface
    an hour into the sweep otherwise); the runs land in the spec's folder."""
    from test_recipes import load

    from minivdit.train import parse

    spec = sweep.load_spec(path)
    recipe = load(ROOT / spec.recipe)
    teachers = {getattr(recipe, k) for k in ("SYN_TEACHER", "SYN_TEACHER_MAE") if hasattr(recipe, k)}
    for run in sweep.plan(spec, tmp_path):
        flags = [a for a in run.args[1:] if a not in ("--resume", "auto")]
        cfg = parse(recipe.config(), flags)
        assert cfg.run_name == run.name and cfg.seed == run.seed
        # a synthetic-world teacher is named by the hash of its settings: the recipe trains it on first use
        # only under that name, so a spec must follow a change of the settings (syn_teacher.VERSION)
        stale = [f for f in flags if f.startswith("runs/syn_teacher/") and f not in teachers]
        assert not stale, f"{path.name}: {stale} are not the recipe's teacher folders {sorted(teachers)}"
