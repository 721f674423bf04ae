"""Fault injection (issue 13): what a cluster does to a run, and what survives it.

- durable writes: every file and folder is fsynced before the rename, the parent after it;
- kill -9 at random moments of ``ckpt.save`` (many, in forked children): every finished checkpoint verifies;
- truncated / corrupted ``*.safetensors``, ``meta.json``, ``rank0.pt``, DCP files: ``verify`` names the file,
  ``--resume auto`` falls back to the previous checkpoint and continues bit-exactly, an explicit ``--resume``
  raises a ``ValueError`` naming the file;
- ENOSPC / EIO in a save: the temporary folder goes, the previous checkpoint stays, the error names the path
  and the free space, training stops;
- SIGTERM / SIGUSR1 (a subprocess run): checkpoint at the end of the step, exit 75, bit-exact resume; a second
  signal exits at once;
- quiet logs (DCP's single-process warning, dataset warnings on rank 0 only).

CPU, ~1 minute (subprocesses: ~5 s each). Bad config values and forbidden calls: ``test_config_fuzz.py``.
"""

from __future__ import annotations

import errno
import json
import multiprocessing as mp
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.distributed.checkpoint import filesystem as dcp_filesystem

import minivdit.ckpt as ckpt_mod
from minivdit import ckpt, dist, durable
from minivdit.config import to_dict
from minivdit.data import DataConfig, build_loader
from minivdit.preempt import EXIT_PREEMPTED, PreemptionHandler
from minivdit.train import CkptConfig, train

pytestmark = pytest.mark.usefixtures("single_thread")

SOLO = dist.DistContext(rank=0, world=1, local_rank=0, device=torch.device("cpu"))


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def _same_weights(a: Path, b: Path) -> None:
    """Bitwise: an exact resume replays the same kernels on the same shapes in one process."""
    for name in ("model.safetensors", "ema.safetensors"):
        wa, wb = _weights(a / name), _weights(b / name)
        assert wa.keys() == wb.keys()
        for k in wa:
            assert torch.equal(wa[k], wb[k]), f"{name}: {k}"


def _losses(metrics, run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in metrics(run_dir)}


# ------------------------------------------------------------------------------------------ durable writes


def test_durable_write_replaces_and_cleans_up(tmp_path):
    target = tmp_path / "a.json"
    durable.write_text(target, "one")
    durable.write_text(target, "two")
    assert target.read_text() == "two"

    class Boom(Exception):
        pass

    with pytest.raises(Boom), durable.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise Boom
    assert target.read_text() == "two"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]  # no temporary left


def test_checkpoint_files_are_fsynced_before_the_rename(tiny_cfg, monkeypatch):
    """The order that survives a power loss: every file and folder of the checkpoint fsynced, the rename,
    then ``checkpoints/`` fsynced."""
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace_(src, dst):
        events.append(("rename", f"{src} -> {dst}"))
        return real_replace(src, dst)

    monkeypatch.setattr(durable.os, "fsync", fsync)
    monkeypatch.setattr(durable.os, "replace", replace_)
    cfg = tiny_cfg(max_steps=1)
    train(cfg)
    root = (cfg.run_dir / "checkpoints").resolve()
    final = root / "step_0000001"
    tmp = root / ".tmp_step_0000001"
    (i_rename,) = [i for i, e in enumerate(events) if e == ("rename", f"{tmp} -> {final}")]
    before = {what for kind, what in events[:i_rename] if kind == "fsync"}
    for f in final.rglob("*"):  # every file and folder, as it was named before the rename
        assert str(tmp / f.relative_to(final)) in before, f
    assert str(tmp) in before
    assert ("fsync", str(root)) in events[i_rename + 1 :]  # the rename itself is made durable
    assert ("fsync", str(cfg.run_dir.resolve())) in events  # config.json's folder (durable.write_text)


def test_meta_records_every_file(tiny_cfg):
    cfg = tiny_cfg(max_steps=1)
    path = train(cfg) / "checkpoints" / "step_0000001"
    files = json.loads((path / "meta.json").read_text())["files"]
    on_disk = sorted(
        str(p.relative_to(path)) for p in path.rglob("*") if p.is_file() and p.name != "meta.json"
    )
    assert sorted(files) == on_disk
    assert {"model.safetensors", "ema.safetensors", "rank0.pt", "optim/.metadata"} <= set(files)
    for rel, rec in files.items():
        assert rec == {"size": (path / rel).stat().st_size, "crc32": durable.checksum(path / rel)}
    assert ckpt.verify(path) == []


def test_block_checksums(tiny_cfg, monkeypatch, tmp_path):
    """Files larger than ``durable.BLOCK`` (1 GiB; 4 KiB here) get one CRC-32 per block, so one big file is
    read by several ranks and threads; a flipped byte is found in its block."""
    import zlib

    data = bytes(range(256)) * 40  # 10,240 bytes
    f = tmp_path / "f.bin"
    f.write_bytes(data)
    monkeypatch.setattr(durable, "BLOCK", 4096)
    assert durable.blocks(len(data)) == [(0, 4096), (4096, 4096), (8192, 2048)]
    assert durable.blocks(0) == [(0, 0)]
    for o, n in durable.blocks(len(data)):
        assert durable.checksum(f, o, n) == f"crc32:{zlib.crc32(data[o : o + n]):08x}"
    assert durable.checksum(f) == f"crc32:{zlib.crc32(data):08x}"

    path = train(tiny_cfg(max_steps=1)) / "checkpoints" / "step_0000001"
    files = json.loads((path / "meta.json").read_text())["files"]
    rec = files["model.safetensors"]
    assert isinstance(rec["crc32"], list) and len(rec["crc32"]) == len(durable.blocks(rec["size"])) > 2
    assert ckpt.verify(path) == []
    _flip_byte(path / "model.safetensors", where=5000 / rec["size"])  # in block 1
    (problem,) = ckpt.verify(path)
    assert "model.safetensors" in problem and "GiB block 1" in problem


def test_checksum_off_records_sizes_only(tiny_cfg):
    cfg = tiny_cfg(max_steps=1, ckpt={"checksum": False})
    path = train(cfg) / "checkpoints" / "step_0000001"
    files = json.loads((path / "meta.json").read_text())["files"]
    assert all(set(rec) == {"size"} for rec in files.values())
    assert ckpt.verify(path, checksum=False) == [] and ckpt.verify(path) == []


# ---------------------------------------------------------------------------------------------- kill -9


def _save_forever(root: str, seed: int, ready) -> None:
    """A child process: save checkpoints of a small model one after another until killed."""
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(*[torch.nn.Linear(64, 64) for _ in range(4)])
    ema = torch.nn.Sequential(*[torch.nn.Linear(64, 64) for _ in range(4)])
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 64)).sum().backward()
    opt.step()
    root_path = Path(root)
    found = ckpt.list_checkpoints(root_path)
    step = int(found[-1].name.split("_")[1]) if found else 0
    ready.set()
    while True:
        step += 1
        ckpt.save(
            root_path, step, model=model, ema=ema, optimizer=opt, ctx=SOLO,
            rank_state={"data": {"epoch": 0, "batch": step}}, meta={}, keep=3,
        )  # fmt: skip


KILLS = 24


@pytest.mark.slow
def test_kill_9_during_saves_never_loses_a_finished_checkpoint(tmp_path, monkeypatch):
    """``KILLS`` children (forked from a server that has imported torch: ~10 ms each) save in a loop and get
    SIGKILL a random 0-250 ms after their first save began; after each kill every checkpoint with
    ``meta.json`` verifies and ``latest_verified`` is the newest one. Most kills land mid-save (a ``.tmp_``
    folder is left)."""
    ctx = mp.get_context("forkserver")
    # Preloaded, each child starts in ~50 ms instead of ~1.3 s: this module (the server's sys.path is the
    # environment's, which lacks tests/ under pytest) and torch._dynamo (the first AdamW imports it)
    path = [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(path))
    ctx.set_forkserver_preload(["torch", "torch._dynamo", "minivdit.ckpt", __name__])
    rng = random.Random(0)
    root = tmp_path / "checkpoints"
    outcomes = {"mid-save (.tmp left)": 0, "mid-prune (.trash left)": 0, "between saves": 0}
    for i in range(KILLS):
        ready = ctx.Event()
        proc = ctx.Process(target=_save_forever, args=(str(root), i, ready))
        proc.start()
        assert ready.wait(timeout=60)
        time.sleep(rng.uniform(0.0, 0.25))
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(timeout=30)
        assert proc.exitcode == -signal.SIGKILL
        if list(root.glob(".tmp_*")):
            outcomes["mid-save (.tmp left)"] += 1
        elif list(root.glob(".trash_*")):  # killed while deleting an old one: it is not a checkpoint any more
            outcomes["mid-prune (.trash left)"] += 1
        else:
            outcomes["between saves"] += 1
        done = ckpt.list_checkpoints(root)
        for path in done:
            assert ckpt.verify(path) == [], path
        if done:
            assert ckpt.latest_verified(root) == done[-1]
    print(f"kill -9 x{KILLS}: {outcomes}; {len(ckpt.list_checkpoints(root))} checkpoints kept, all verify")
    assert outcomes["mid-save (.tmp left)"] >= KILLS // 3  # the test does hit the write itself
    assert ckpt.list_checkpoints(root)  # progress was made across the kills


# ---------------------------------------------------------------------------------------------- corruption


def _flip_byte(path: Path, where: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * where)] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _dcp_file(ckpt_dir: Path) -> Path:
    (data,) = (ckpt_dir / "optim").glob("*.distcp")
    return data


CORRUPTIONS = {  # name: (what to do to checkpoint step 4, the file the error must name)
    "model.safetensors truncated": (lambda d: _truncate(d / "model.safetensors"), "model.safetensors"),
    "ema.safetensors one byte flipped": (lambda d: _flip_byte(d / "ema.safetensors", 0.9), "ema.safetensors"),
    "meta.json truncated": (lambda d: _truncate(d / "meta.json"), "meta.json"),
    "meta.json not JSON": (lambda d: (d / "meta.json").write_text("\x00\x00"), "meta.json"),
    "rank0.pt one byte flipped": (lambda d: _flip_byte(d / "rank0.pt"), "rank0.pt"),
    "rank0.pt deleted": (lambda d: (d / "rank0.pt").unlink(), "rank0.pt"),
    "optimizer shard truncated": (lambda d: _truncate(_dcp_file(d)), ".distcp"),
    "optimizer metadata flipped": (lambda d: _flip_byte(d / "optim" / ".metadata"), ".metadata"),
}


@pytest.fixture(scope="module")
def reference_runs(tmp_path_factory, make_tiny_cfg):
    """An uninterrupted 6-step run, and a 4-step run with checkpoints at steps 2 and 4 to corrupt."""
    out = tmp_path_factory.mktemp("ref")
    with warnings.catch_warnings():
        full = train(make_tiny_cfg(out, run_name="full", max_steps=6, ckpt=CkptConfig(every=2, keep=0)))
        base_cfg = make_tiny_cfg(out, run_name="base", max_steps=4, ckpt=CkptConfig(every=2, keep=0))
        train(base_cfg)
    return full, base_cfg


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_corrupt_newest_checkpoint_falls_back(reference_runs, tmp_path, metrics, corruption):
    full, base_cfg = reference_runs
    corrupt, names = CORRUPTIONS[corruption]
    cfg = replace(base_cfg, out_dir=str(tmp_path), max_steps=6)
    shutil.copytree(base_cfg.run_dir, cfg.run_dir)
    newest = cfg.run_dir / "checkpoints" / "step_0000004"
    corrupt(newest)

    problems = ckpt.verify(newest)
    assert problems and names in problems[0], problems
    with pytest.raises(ValueError, match=rf"does not verify.*{names}"):  # an explicit path must verify
        train(replace(cfg, resume=str(newest)))

    train(replace(cfg, resume="auto"))
    skip = [line for line in (cfg.run_dir / "log.txt").read_text().splitlines() if "skipping" in line]
    assert len(skip) == 1 and "step_0000004" in skip[0] and names in skip[0], skip
    # Steps 3..6 again from step 2, exactly as the uninterrupted run.
    rows = metrics(cfg.run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 3, 4, 5, 6]
    ref = _losses(metrics, full)
    assert {r["step"]: r["loss"] for r in rows[4:]} == {s: ref[s] for s in (3, 4, 5, 6)}
    _same_weights(full / "checkpoints" / "step_0000006", cfg.run_dir / "checkpoints" / "step_0000006")


def test_no_checkpoint_verifies(reference_runs, tmp_path):
    _, base_cfg = reference_runs
    cfg = replace(base_cfg, out_dir=str(tmp_path), resume="auto")
    shutil.copytree(base_cfg.run_dir, cfg.run_dir)
    for d in ckpt.list_checkpoints(cfg.run_dir / "checkpoints"):
        _truncate(d / "model.safetensors")
    with pytest.raises(ValueError, match=r"no checkpoint under .* verifies .*step_0000004.*step_0000002"):
        train(cfg)


def test_sampling_skips_a_truncated_checkpoint(reference_runs, tmp_path):
    """``python -m minivdit.sample --ckpt RUN`` (and ``eval run``) take the newest checkpoint whose files have
    their recorded sizes; an explicit truncated one is refused with the file's name."""
    from minivdit.sample import _read_run

    _, base_cfg = reference_runs
    run_dir = tmp_path / "run"
    shutil.copytree(base_cfg.run_dir, run_dir)
    newest = run_dir / "checkpoints" / "step_0000004"
    assert _read_run(run_dir)[0] == newest
    _truncate(newest / "ema.safetensors")
    assert _read_run(run_dir)[0] == run_dir / "checkpoints" / "step_0000002"
    with pytest.raises(ValueError, match=r"--ckpt .*step_0000004.*does not verify.*ema.safetensors"):
        _read_run(newest)


def test_checkpoint_from_before_checksums_still_resumes(reference_runs, tmp_path, capsys):
    """A ``meta.json`` without ``files`` (written before this change) cannot be checked: it is accepted, as
    before, and the CLI says it is unverified."""
    _, base_cfg = reference_runs
    run_dir = tmp_path / "run"
    shutil.copytree(base_cfg.run_dir, run_dir)
    newest = run_dir / "checkpoints" / "step_0000004"
    meta = json.loads((newest / "meta.json").read_text())
    del meta["files"]
    (newest / "meta.json").write_text(json.dumps(meta))
    assert ckpt.verify(newest) == [] and ckpt.latest_verified(run_dir / "checkpoints") == newest
    assert ckpt.main(["verify", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "unverified" in out and "--resume auto takes: step_0000004" in out


def test_verify_cli(reference_runs, tmp_path, capsys):
    _, base_cfg = reference_runs
    run_dir = tmp_path / "run"
    shutil.copytree(base_cfg.run_dir, run_dir)
    assert ckpt.main(["verify", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "step_0000002" in out and "ok (sizes and checksums)" in out
    assert "--resume auto takes: step_0000004" in out
    _flip_byte(run_dir / "checkpoints" / "step_0000004" / "model.safetensors")
    (run_dir / "checkpoints" / ".tmp_step_0000006").mkdir()
    assert ckpt.main(["verify", str(run_dir)]) == 1
    out = capsys.readouterr().out
    assert "step_0000004" in out and "CORRUPT" in out and "checksum" in out
    assert "incomplete write" in out and "--resume auto takes: step_0000002" in out
    assert ckpt.main(["verify", str(run_dir), "--no-checksum"]) == 0  # same size: only a checksum sees it
    assert ckpt.main(["verify", str(tmp_path / "nothing")]) == 2


def test_verify_cli_on_one_checkpoint_names_the_run(reference_runs, tmp_path):
    """``python -m minivdit.ckpt verify RUN/checkpoints/step_N`` checks that one folder; what ``--resume
    auto`` takes depends on the run's other checkpoints (a corrupt newest one: an older one), so the CLI says
    how to see it instead of "nothing"."""
    _, base_cfg = reference_runs
    run_dir = tmp_path / "run"
    shutil.copytree(base_cfg.run_dir, run_dir)
    newest = run_dir / "checkpoints" / "step_0000004"
    _flip_byte(newest / "model.safetensors")
    cmd = [sys.executable, "-m", "minivdit.ckpt", "verify", str(newest)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("step_0000004") and "CORRUPT" in lines[0], lines
    assert "nothing" not in lines[1] and lines[1].endswith(f"minivdit.ckpt verify {run_dir.resolve()}")
    assert ckpt.latest_verified(run_dir / "checkpoints") == run_dir / "checkpoints" / "step_0000002"


# ---------------------------------------------------------------------------------------------- write errors


def _fail_in(monkeypatch, where: str, err: int) -> None:
    """Raise OSError(err) in the given part of the save of step 4."""
    exc = OSError(err, os.strerror(err))
    targets = {
        "safetensors": (ckpt_mod, "save_file"),
        "dcp": (dcp_filesystem.FileSystem, "create_stream"),  # inside DCP's writer: it wraps the error
        "torch.save": (ckpt_mod.torch, "save"),
        "fsync": (durable, "fsync_tree"),
        "meta.json": (durable, "write_text"),
        "checksum": (durable, "checksums"),
    }
    module, name = targets[where]
    real = getattr(module, name)

    def failing(*args, **kwargs):
        text = " ".join(str(a) for a in (*args, *kwargs.values()))
        if "step_0000004" in text:
            raise exc
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, failing)


@pytest.mark.parametrize(
    ("where", "err"),
    [("safetensors", errno.ENOSPC), ("dcp", errno.ENOSPC), ("torch.save", errno.ENOSPC),
     ("fsync", errno.EIO), ("meta.json", errno.ENOSPC), ("checksum", errno.EIO)],
)  # fmt: skip
def test_write_error_keeps_previous_and_stops(tiny_cfg, metrics, monkeypatch, where, err):
    cfg = tiny_cfg(max_steps=6, ckpt={"every": 2, "keep": 0})
    root = cfg.run_dir / "checkpoints"
    _fail_in(monkeypatch, where, err)
    with pytest.raises(ckpt.CheckpointWriteError) as info:
        train(cfg)
    monkeypatch.undo()
    msg = str(info.value)
    assert "step_0000004" in msg and str(root) in msg and "GiB free on" in msg and os.strerror(err) in msg
    assert "step_0000002 is intact" in msg
    assert [r["step"] for r in metrics(cfg.run_dir)] == [1, 2, 3, 4]  # stopped: no step 5 without a save
    assert not list(root.glob(".tmp_*"))
    assert [p.name for p in ckpt.list_checkpoints(root)] == ["step_0000002"]
    assert ckpt.verify(root / "step_0000002") == []
    train(replace(cfg, resume="auto"))  # after the disk is fixed
    assert [p.name for p in ckpt.list_checkpoints(root)][-1] == "step_0000006"


# ---------------------------------------------------------------------------------------------- preemption

WORKER = """
import json, sys, time
import minivdit.train as T
from minivdit.config import from_dict

args = json.loads(sys.argv[1])
real_step, real_save = T.train_step, T.ckpt.save

def slow_step(*a, **k):  # ~20 steps/s, so that the signal lands mid-run
    time.sleep(0.05)
    return real_step(*a, **k)

def slow_save(*a, **k):  # a save that outlasts the test's patience: the second signal must cut it short
    if args["slow_save"]:
        time.sleep(60)
    return real_save(*a, **k)

T.train_step, T.ckpt.save = slow_step, slow_save
T.run(T.train, from_dict(T.TrainConfig, args["cfg"]))
"""


def _launch(cfg, tmp_path: Path, slow_save: bool = False) -> subprocess.Popen:
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(WORKER))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    args = json.dumps({"cfg": to_dict(cfg), "slow_save": slow_save})
    return subprocess.Popen(
        [sys.executable, str(script), args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for_step(proc: subprocess.Popen, run_dir: Path, step: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    path = run_dir / "metrics.jsonl"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"worker exited early ({proc.returncode}):\n{proc.stdout.read()}")
        if path.exists() and len(path.read_text().splitlines()) >= step:
            return
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"no step {step} within {timeout} s")


@pytest.mark.slow
def test_sigterm_checkpoints_exits_75_and_resumes_exactly(tiny_cfg, tmp_path, metrics):
    max_steps = 200
    cfg = tiny_cfg(max_steps=max_steps, ckpt={"every": 0})
    proc = _launch(cfg, tmp_path)
    _wait_for_step(proc, cfg.run_dir, 3)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_PREEMPTED, out
    done = ckpt.list_checkpoints(cfg.run_dir / "checkpoints")
    assert len(done) == 1, out
    stopped = int(done[0].name.split("_")[1])
    assert 3 <= stopped < max_steps
    assert ckpt.verify(done[0]) == []
    assert f"stopped by SIGTERM at step {stopped}" in out and "exiting with 75" in out
    assert [r["step"] for r in metrics(cfg.run_dir)] == list(range(1, stopped + 1))

    # Requeued: --resume auto continues from the preemption checkpoint, bit-exactly.
    resumed = replace(cfg, max_steps=stopped + 3, resume="auto")
    train(resumed)
    full = train(replace(cfg, run_name="full", max_steps=stopped + 3))
    assert _losses(metrics, cfg.run_dir) == _losses(metrics, full)
    last = f"checkpoints/step_{stopped + 3:07d}"
    _same_weights(full / last, cfg.run_dir / last)


@pytest.mark.slow
def test_second_signal_exits_at_once(tiny_cfg, tmp_path):
    cfg = tiny_cfg(max_steps=200, ckpt={"every": 0})
    proc = _launch(cfg, tmp_path, slow_save=True)
    _wait_for_step(proc, cfg.run_dir, 2)
    proc.send_signal(signal.SIGUSR1)
    time.sleep(1.0)  # in the (60 s) save now
    t0 = time.monotonic()
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGUSR1, out
    assert time.monotonic() - t0 < 10
    assert "SIGUSR1 again: exiting now" in out
    assert ckpt.list_checkpoints(cfg.run_dir / "checkpoints") == []


def test_handler_restores_previous_handlers():
    before = signal.getsignal(signal.SIGUSR1)
    with PreemptionHandler(("SIGUSR1",)) as h:
        assert signal.getsignal(signal.SIGUSR1) == h._handle
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.01)
        assert h.signal_name == "SIGUSR1" and h.requested()
    assert signal.getsignal(signal.SIGUSR1) == before


@pytest.mark.parametrize("bad", [("SIGKILL",), ("SIGTERMS",), ("TERM",), ("SIG_IGN",)])
def test_bad_signal_names(bad):
    with pytest.raises(ValueError, match=r"ckpt.signals"):
        CkptConfig(signals=bad)


def test_srun_launch_env():
    env = {"SLURM_PROCID": "3", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1"}
    with pytest.raises(ValueError, match="MASTER_ADDR and MASTER_PORT"):
        dist.launcher_env(env)
    assert dist.launcher_env(env | {"MASTER_ADDR": "n1", "MASTER_PORT": "29500"}) == (3, 8, 1)
    torchrun = {"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "0", **env}  # torchrun inside srun wins
    assert dist.launcher_env(torchrun) == (2, 4, 0)
    assert dist.launcher_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) == (0, 1, 0)
    assert dist.launcher_env({}) == (0, 1, 0)


# ---------------------------------------------------------------------------------------------- quiet logs


def test_single_process_run_has_no_dcp_warning(tiny_cfg):
    cfg = tiny_cfg(max_steps=2, ckpt={"every": 1})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(cfg)
        train(replace(cfg, max_steps=3, resume="auto"))
    assert not [w for w in caught if "distributed" in str(w.message)], [str(w.message) for w in caught]


def test_dataset_warnings_only_on_rank_0(tmp_path, caplog):
    """A folder CSV naming a missing clip: rank 0 warns about it, rank 1 (the same index) does not."""
    import numpy as np
    from PIL import Image

    root = tmp_path / "videos"
    for clip in ("f0", "f1"):
        (root / clip).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / clip / f"{i:03d}.png")
    (root / "labels.csv").write_text("path,label\nf0,0\nf1,0\nmissing_clip,0\n")
    cfg = DataConfig(
        dataset="folder", root=str(root), labels_csv="labels.csv", num_frames=2, frame_interval=1,
        image_size=8, batch_size=1, num_classes=1,
    )  # fmt: skip
    caplog.set_level("WARNING", logger="minivdit")
    build_loader(cfg, rank=1, world=2)
    assert not [r for r in caplog.records if "missing_clip" in r.getMessage()]
    build_loader(cfg, rank=0, world=2)
    assert [r for r in caplog.records if "missing_clip" in r.getMessage()]


# ---------------------------------------------------------------------------------------------- two ranks

DIST_WORKER = """
import errno, json, os, sys, time
import minivdit.train as T
from minivdit.config import from_dict

args = json.loads(sys.argv[1])
rank = int(os.environ["RANK"])
(__import__("pathlib").Path(args["out"]) / f"pid{rank}").write_text(str(os.getpid()))
real_step, real_save = T.train_step, T.ckpt.torch.save

def slow_step(*a, **k):
    time.sleep(0.05)
    return real_step(*a, **k)

def full_disk(obj, f, *a, **k):  # rank 1 only, checkpoint 4 only
    if args["enospc"] and rank == 1 and "step_0000004" in str(f):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real_save(obj, f, *a, **k)

T.train_step, T.ckpt.torch.save = slow_step, full_disk
T.run(T.train, from_dict(T.TrainConfig, args["cfg"]))
"""


def _torchrun(cfg, tmp_path: Path, *, enospc: bool) -> subprocess.Popen:
    script = tmp_path / "dist_worker.py"
    script.write_text(textwrap.dedent(DIST_WORKER))
    launcher_vars = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in launcher_vars}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    args = json.dumps({"cfg": to_dict(cfg), "enospc": enospc, "out": str(tmp_path)})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1"]
    cmd += [f"--master_port={port}", str(script), args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_two_ranks_enospc_on_one_rank_stops_both(tiny_cfg, tmp_path, metrics):
    cfg = tiny_cfg(max_steps=8, ckpt={"every": 2, "keep": 0})
    proc = _torchrun(cfg, tmp_path, enospc=True)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0, out
    assert out.count("could not write checkpoint step_0000004") >= 2, out  # raised on both ranks
    assert "No space left on device" in out and "GiB free on" in out
    root = cfg.run_dir / "checkpoints"
    assert not list(root.glob(".tmp_*"))
    assert [p.name for p in ckpt.list_checkpoints(root)] == ["step_0000002"]
    assert ckpt.verify(root / "step_0000002") == []
    assert [r["step"] for r in metrics(cfg.run_dir)] == [1, 2, 3, 4]


@pytest.mark.slow
def test_two_ranks_signal_to_one_rank_stops_both_at_one_step(tiny_cfg, tmp_path, metrics):
    cfg = tiny_cfg(max_steps=400, ckpt={"every": 0})
    proc = _torchrun(cfg, tmp_path, enospc=False)
    _wait_for_step(proc, cfg.run_dir, 3, timeout=120)
    os.kill(int((tmp_path / "pid1").read_text()), signal.SIGTERM)  # rank 1 only: rank 0 learns it
    out, _ = proc.communicate(timeout=120)
    (path,) = ckpt.list_checkpoints(cfg.run_dir / "checkpoints")
    stopped = int(path.name.split("_")[1])
    assert ckpt.verify(path) == [] and (path / "rank0.pt").is_file() and (path / "rank1.pt").is_file()
    assert "exitcode  : 75" in out, out  # torchrun's summary: the workers exited with 75
    assert f"stopped by SIGTERM at step {stopped}" in out  # rank 1's line
    assert f"stopped by a signal (to another rank) at step {stopped}" in out  # rank 0: the same step
    assert [r["step"] for r in metrics(cfg.run_dir)] == list(range(1, stopped + 1))
