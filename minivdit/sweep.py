"""Sweeps: a grid of recipe × arms × seeds, run to the end, resumed after an interruption, and summarised.

An ablation is many runs of one recipe that differ by a few flags (the arms) and by the seed, each measured
at several steps under one evaluation protocol. This module turns a spec file into those runs and their
mean ± std table, so that the numbers of an ablation come from one command that can be rerun at any time:

    python -m minivdit.sweep sweeps/example.toml                 # run what is missing, then summarise
    python -m minivdit.sweep sweeps/example.toml --dry-run       # each run's state and command
    python -m minivdit.sweep sweeps/example.toml --only qknorm   # launch one arm's runs (summary: all arms)
    python -m minivdit.sweep sweeps/example.toml --no-run        # summarise the runs there
    torchrun --nproc_per_node=8 -m minivdit.sweep sweeps/example.toml   # 8 runs at a time, one GPU each

**Runs.** Each run is the recipe's own command line, as a user types it, in a subprocess::

    python RECIPE *common *arm --seed S --run-name ARM-sS --out-dir OUT/runs --resume auto

(the sweep sets these four flags; the spec may not). Seeds are the outer loop, so after the first pass every
arm has a result. The run's output (stdout and stderr) goes to ``OUT/logs/ARM-sS.txt``.

**Restarts.** When a run exits 0 the sweep writes ``OUT/runs/ARM-sS/sweep_done.json`` holding the run's
arguments and duration; a run whose marker holds the arguments the spec gives now is skipped. Any other run
is launched, and ``--resume auto`` makes an interrupted one continue from its newest verified checkpoint, with
its saved ``config.json`` under the command line (``train.parse``). A changed spec (``--max-steps 1500`` →
3000) therefore relaunches every run, and each continues where it stopped. A failed run gets
``sweep_failed.json`` (exit code, log path) and the sweep goes on with the others; it exits 1 at the end.
SIGTERM, SIGUSR1 and SIGINT are passed on to the running recipe exactly once (the recipe runs in its own
session, so a signal sent to the sweep's whole process group does not reach it twice: a second signal makes
the trainer exit without its checkpoint, ``minivdit/preempt.py``); the sweep then stops launching and exits
with the recipe's code (75 after a preemption checkpoint): requeue the same command.

**Under torchrun** (or srun) with N processes and ``gpus_per_run = g``, the processes form N / g rank groups
of g consecutive ranks on one node; group k runs runs k, k + N/g, k + 2N/g, … one after another, each on the
group's g devices (``CUDA_VISIBLE_DEVICES`` = the group's local ranks, or the entries of an existing list at
those positions), as a single process when g = 1 and under ``torchrun --standalone --nproc_per_node g``
otherwise. The other ranks of a group return at once. No process group is initialised (runs take hours; no
collective would wait that long): rank 0, once its own runs are done, polls the markers until every run is
settled, then writes the summary and exits 1 if any run failed; the other ranks exit 0 whatever their runs
did, since torchrun stops every rank as soon as one exits non-zero. ``gpus_per_run > 1`` without a launcher
runs every run under that torchrun, one after another.

**Summary** (rank 0, at the end, or alone with ``--no-run``), in OUT:

- ``summary.md``: per metric a table arm × step of ``mean ± std (sample std, ddof 1) over seeds``, the cell
  marked ``(n=k)`` when fewer seeds than the spec's have that step; above the tables the protocol (name, clip
  counts, frames and size, CFG, sampler steps, weights and detector hashes, read from the runs' evaluation
  records, with every setting on which the runs' records disagree), the recipe, the flags of each arm, the
  seeds and the command that regenerates it;
- ``summary.json``: the same numbers, every run's values and the file each came from;
- ``<metric>.png``: the metric against the step, one line per arm (the mean over seeds) with a band of ± one
  std, the protocol in the title.

Evaluation metrics (``syn_fvd``, ``fvd``, …) come from each run's ``eval/step_N/metrics.json``
(``train._evaluate``; a folder holding several files of different settings, after a
``python -m minivdit.eval run`` with other flags, gives the one the training run wrote, i.e. with no
``checkpoint`` in its record, else the newest). Training metrics (``loss``, ``loss/align``, …) come from
``metrics.jsonl`` as the mean of the rows logged over the ``smooth`` steps up to the step (the last row of
a step wins: a resumed run logs again the steps after its checkpoint); their curves use the same running
mean. Plots need matplotlib (the ``dev`` extra); without it the tables are still written and one line says
so.

Spec files are TOML (Python ≥ 3.11's ``tomllib``) or JSON with the same keys (:class:`SweepSpec`); flags
are one string, split as a shell would, or a list of strings. ``sweeps/example.toml`` is an example.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minivdit import durable
from minivdit.config import check_types
from minivdit.dist import launcher_env
from minivdit.log import _fmt_eta, setup_logging
from minivdit.preempt import EXIT_PREEMPTED

log = logging.getLogger("minivdit")

DONE, FAILED = "sweep_done.json", "sweep_failed.json"
"""Markers the sweep writes in a run directory when the run's process exits (0 / non-zero)."""

SWEEP_FLAGS = ("--seed", "--run-name", "--out-dir", "--resume")
"""Flags the sweep sets on every run; a spec that sets them is refused."""

SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")
"""Signals passed on to the running recipe (``CkptConfig.signals`` and Ctrl-C)."""

LAUNCHER_ENV = (
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_RANK",
    "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS",
    "SLURM_LOCALID",
)  # fmt: skip
"""The launcher's variables (``dist.launcher_env``), removed from a run's environment: each run is a world of
its own, not a rank of the sweep's (``TORCHELASTIC_*`` go too)."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


@dataclass(frozen=True, kw_only=True)
class SweepSpec:
    """A sweep: one recipe, its arms and seeds, what to tabulate and plot. The keys of the spec file."""

    recipe: str
    """The recipe script, a path from the folder the sweep is launched in (``recipes/quickstart.py``)."""
    arms: dict[str, tuple[str, ...]]
    """Arm name → its flags, in table order. Names become run names (letters, digits, ``_.+-``)."""
    seeds: tuple[int, ...] = (0,)
    """``--seed`` of each arm's runs."""
    common: tuple[str, ...] = ()
    """Flags of every run, before the arm's (``--max-steps 1500 --eval.every 250``)."""
    steps: tuple[int, ...] = ()
    """Steps the tables show (empty: every step a run evaluated; with no evaluation, the last step logged)."""
    metrics: tuple[str, ...] = ()
    """Evaluation metrics to tabulate and plot, as named in ``eval/step_N/metrics.json`` (``syn_fvd``; empty:
    every metric the records hold)."""
    train_metrics: tuple[str, ...] = ("loss",)
    """Keys of ``metrics.jsonl`` rows to tabulate and plot (``loss``, ``loss/align``)."""
    smooth: int = 100
    """Training metrics at step s: the mean of the rows logged at steps (s − smooth, s]."""
    protocol: str | None = None
    """The evaluation protocol every record must name (``synthetic``); a record of another one is an error.
    None: the protocol the records name (they must agree)."""
    title: str = ""
    """Heading of the summary and the plots (empty: the spec file's name)."""
    out: str = ""
    """Folder of the runs (``OUT/runs``), their logs and the summary (empty: ``runs/sweeps/<spec name>``);
    ``--out`` overrides it."""
    gpus_per_run: int = 1
    """Devices per run: the size of a rank group under torchrun; above 1 each run is launched with
    ``torchrun --standalone --nproc_per_node gpus_per_run``."""

    def __post_init__(self):
        check_types(self)
        if not self.recipe:
            raise ValueError("SweepSpec.recipe: a recipe script is needed (recipes/quickstart.py)")
        if not self.arms:
            raise ValueError("SweepSpec.arms: at least one arm is needed (name = 'flags')")
        for name, flags in self.arms.items():
            if not isinstance(name, str) or not _NAME.fullmatch(name):
                raise ValueError(f"SweepSpec.arms: {name!r} is not a run name (letters, digits, '_.+-')")
            if not isinstance(flags, tuple) or not all(isinstance(f, str) for f in flags):
                raise ValueError(f"SweepSpec.arms.{name}: expected flags as a string or a list of strings")
        for where, flags in [("common", self.common), *((f"arms.{a}", f) for a, f in self.arms.items())]:
            taken = [f for f in flags if f.split("=", 1)[0] in SWEEP_FLAGS]
            if taken:
                raise ValueError(
                    f"SweepSpec.{where}: {taken} are set by the sweep for every run ({SWEEP_FLAGS})"
                )
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"SweepSpec.seeds: expected distinct seeds, got {list(self.seeds)}")
        if any(s < 1 for s in self.steps) or len(set(self.steps)) != len(self.steps):
            raise ValueError(f"SweepSpec.steps: expected distinct steps >= 1, got {list(self.steps)}")
        if self.smooth < 1 or self.gpus_per_run < 1:
            raise ValueError(
                f"SweepSpec: smooth={self.smooth} and gpus_per_run={self.gpus_per_run} must be >= 1"
            )


def _flags(value, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(shlex.split(value))
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueError(f"{where}: expected flags as a string or a list of strings, got {value!r}")


def load_spec(path: str | Path) -> SweepSpec:
    """The spec of a ``.toml`` or ``.json`` file; ``ValueError`` naming the file and the key at fault."""
    path = Path(path)
    try:
        if path.suffix == ".toml":
            import tomllib

            raw = tomllib.loads(path.read_text())
        elif path.suffix == ".json":
            raw = json.loads(path.read_text())
        else:
            raise ValueError(f"{path}: a sweep spec is a .toml or .json file")
    except (OSError, ValueError) as e:  # tomllib.TOMLDecodeError and JSONDecodeError are ValueErrors
        raise ValueError(f"{path}: cannot read the sweep spec: {e}") from e
    if not isinstance(raw, dict):
        raise ValueError(
            f"{path}: expected a table of keys ({[f.name for f in dataclasses.fields(SweepSpec)]})"
        )
    known = {f.name for f in dataclasses.fields(SweepSpec)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown} (known: {sorted(known)})")
    values = dict(raw)
    if not isinstance(values.get("arms", {}), dict):
        raise ValueError(f"{path}: arms: expected a table of name = 'flags'")
    values["arms"] = {k: _flags(v, f"{path}: arms.{k}") for k, v in values.get("arms", {}).items()}
    if "common" in values:
        values["common"] = _flags(values["common"], f"{path}: common")
    for key in ("seeds", "steps", "metrics", "train_metrics"):
        if isinstance(values.get(key), list):
            values[key] = tuple(values[key])
    values.setdefault("title", path.stem)
    try:
        return SweepSpec(**values)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from e


# ---------------------------------------------------------------------------------------------- the runs


@dataclass(frozen=True)
class Run:
    """One run of the grid."""

    arm: str
    seed: int
    args: tuple[str, ...]
    """The recipe and its flags: the command after ``python`` (what the markers record)."""
    dir: Path

    @property
    def name(self) -> str:
        return self.dir.name


def plan(spec: SweepSpec, out: Path) -> list[Run]:
    """Every run of the sweep, seeds outer, arms inner."""
    runs = []
    for seed in spec.seeds:
        for arm, flags in spec.arms.items():
            name = f"{arm}-s{seed}"
            sweep_flags = ["--seed", str(seed), "--run-name", name, "--out-dir", str(out / "runs")]
            args = (spec.recipe, *spec.common, *flags, *sweep_flags, "--resume", "auto")
            runs.append(Run(arm, seed, args, out / "runs" / name))
    return runs


def command(run: Run, gpus_per_run: int) -> list[str]:
    if gpus_per_run == 1:
        return [sys.executable, *run.args]
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus_per_run}"]
    return [sys.executable, *launcher, *run.args]


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def state(run: Run) -> str:
    """``done`` (its marker holds these arguments), ``resume`` (a checkpoint is there) or ``new``."""
    marker = _read_json(run.dir / DONE)
    if marker is not None and tuple(marker.get("args", ())) == run.args:
        return "done"
    if any((run.dir / "checkpoints").glob("step_*")):
        return "resume"
    return "new"


def rank_group(rank: int, world: int, local_rank: int, local_world: int, g: int) -> tuple[int, int, bool]:
    """``(group, groups, leader)``: ranks r of a world of ``world`` in groups of ``g`` consecutive ranks,
    which must lie on one node; the leader (the group's first rank) launches the group's runs."""
    if world % g or local_world % g:
        raise ValueError(
            f"gpus_per_run={g} must divide the number of processes ({world}) and of those per node "
            f"({local_world})"
        )
    return rank // g, world // g, local_rank % g == 0


def run_env(env: dict[str, str], *, world: int, local_rank: int, g: int) -> dict[str, str]:
    """The environment of a run: the sweep's without its launcher's variables; under a launcher, the group's
    devices (local ranks ``local_rank … local_rank + g − 1``, or those positions of an existing
    ``CUDA_VISIBLE_DEVICES``; a list of exactly ``g`` devices is this process's already, as srun binds it)."""
    out = {k: v for k, v in env.items() if k not in LAUNCHER_ENV and not k.startswith("TORCHELASTIC_")}
    if world == 1:
        return out
    visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d] or None
    if visible is not None and len(visible) == g:
        return out
    ids = list(range(local_rank, local_rank + g))
    if visible is not None:
        if ids[-1] >= len(visible):
            raise ValueError(f"local ranks {ids} need devices beyond CUDA_VISIBLE_DEVICES={visible}")
        ids = [visible[i] for i in ids]
    return out | {"CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in ids)}


class _Forwarder:
    """While active, SIGTERM / SIGUSR1 / SIGINT are recorded and passed on once to the running child."""

    def __init__(self):
        self.child: subprocess.Popen | None = None
        self.received: str | None = None
        self._previous = {}

    def _handle(self, signum, frame):
        self.received = signal.Signals(signum).name
        log.warning(f"sweep: {self.received}: passed to the running recipe; no further run is launched")
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signum)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # Python installs handlers only there
            for name in SIGNALS:
                sig = getattr(signal, name)
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


def launch(cmd: list[str], env: dict[str, str], log_path: Path, fwd: _Forwarder) -> int:
    """Run ``cmd``, its output appended to ``log_path``; returns its exit code."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as f:
        f.write(f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(cmd)}\n")
        f.flush()
        fwd.child = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            return fwd.child.wait()
        finally:
            fwd.child = None


class Progress:
    """``runs done / total, left, ETA`` from the mean duration of the runs finished so far."""

    def __init__(self, total: int, prior_seconds: list[float]):
        self.total, self.done, self.failed = total, 0, 0
        self.seconds: list[float] = []
        self.prior = prior_seconds  # durations recorded by earlier sweeps: an ETA before the first run ends

    def line(self) -> str:
        left = self.total - self.done - self.failed
        known = self.seconds or self.prior
        eta = f"ETA {_fmt_eta(np.mean(known) * left)}" if known and left else ("finished" if not left else "")
        failed = f", {self.failed} failed" if self.failed else ""
        return f"runs {self.done}/{self.total} done{failed}, {left} left, {eta}".rstrip(", ")


def execute(spec: SweepSpec, runs: list[Run], out: Path, *, env: dict[str, str] | None = None) -> int:
    """Run this process's share of ``runs`` (all of them without a launcher). Returns the exit code: 0, 1 if
    a run failed, or the interrupted run's code after a signal (75 after a preemption checkpoint)."""
    env = dict(os.environ if env is None else env)
    rank, world, local_rank = launcher_env(env)
    local_world = int(env.get("LOCAL_WORLD_SIZE", world))
    g = spec.gpus_per_run
    group, groups, leader = rank_group(rank, world, local_rank, local_world, g) if world > 1 else (0, 1, True)
    mine = runs[group::groups] if leader else []
    child_env = run_env(env, world=world, local_rank=local_rank, g=g)
    prior = [m["seconds"] for r in runs if (m := _read_json(r.dir / DONE)) and "seconds" in m]
    progress = Progress(len(mine), prior)
    where = f"rank group {group}/{groups}: " if world > 1 else ""
    with _Forwarder() as fwd:
        for run in mine:
            if fwd.received:
                break
            if state(run) == "done":
                progress.done += 1
                log.info(f"{where}{run.name}: done, skipped | {progress.line()}")
                continue
            cmd = command(run, g)
            log_path = out / "logs" / f"{run.name}.txt"
            log.info(f"{where}{run.name}: {state(run)} -> {log_path}\n    {shlex.join(cmd)}")
            for stale in (DONE, FAILED):  # of other arguments (a done marker of these was skipped above)
                (run.dir / stale).unlink(missing_ok=True)
            t0 = time.time()
            code = launch(cmd, child_env, log_path, fwd)
            seconds = time.time() - t0
            if fwd.received:
                log.warning(f"{where}{run.name}: stopped by {fwd.received} (exit {code}); rerun to resume it")
                return EXIT_PREEMPTED if code in (0, EXIT_PREEMPTED) else code
            record = {"args": list(run.args), "command": cmd, "seconds": seconds, "returncode": code}
            record |= {
                "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                "time": time.time(),
                "log": str(log_path),
            }
            run.dir.mkdir(parents=True, exist_ok=True)
            if code == 0:
                durable.write_text(run.dir / DONE, json.dumps(record, indent=2))
                progress.done += 1
                progress.seconds.append(seconds)
                log.info(f"{where}{run.name}: finished in {_fmt_eta(seconds)} | {progress.line()}")
            else:
                durable.write_text(run.dir / FAILED, json.dumps(record, indent=2))
                progress.failed += 1
                tail = "\n".join(log_path.read_text().splitlines()[-15:])
                log.error(
                    f"{where}{run.name}: exit {code}; the end of {log_path}:\n{tail}\n{progress.line()}"
                )
    return 1 if progress.failed else 0


def wait_for(runs: list[Run], since: float, poll: float = 5.0) -> None:
    """Rank 0 under a launcher: wait until every run is done or failed (a failure marker newer than a minute
    before ``since``: the ranks start together), logging the count whenever it changes."""
    shown = -1
    while True:
        failed = [r for r in runs if (m := _read_json(r.dir / FAILED)) and m.get("time", 0) >= since - 60]
        done = [r for r in runs if state(r) == "done"]
        if len(done) != shown:
            log.info(f"all rank groups: {len(done)}/{len(runs)} runs done, {len(failed)} failed")
            shown = len(done)
        if len(done) + len(failed) >= len(runs):
            return
        time.sleep(poll)


# ---------------------------------------------------------------------------------------------- the summary


def read_jsonl(path: Path) -> list[dict]:
    """The rows of ``metrics.jsonl``; a line cut short by a killed run is skipped."""
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int):
                rows.append(row)
    return rows


def eval_file(step_dir: Path) -> Path | None:
    """The metrics file of an ``eval/step_N`` folder: the one the training run wrote (no ``checkpoint`` in its
    record), else the newest."""
    files = sorted(step_dir.glob("metrics*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    readable = [
        (p, m) for p in files if (m := _read_json(p)) is not None and isinstance(m.get("protocol"), dict)
    ]
    for p, m in readable:
        if m["protocol"].get("checkpoint") is None:
            return p
    return readable[0][0] if readable else None


def collect(run: Run, smooth: int, train_metrics: tuple[str, ...]) -> dict:
    """A run's evaluation values ``{step: {metric: value}}`` with their files and records, and its training
    metrics ``{metric: {step: running mean}}``."""
    evals, files, records = {}, {}, {}
    for step_dir in sorted((run.dir / "eval").glob("step_*")):
        path = eval_file(step_dir)
        if path is None or not step_dir.name[5:].isdigit():
            continue
        values = json.loads(path.read_text())
        step = int(step_dir.name[5:])
        evals[step] = {k: float(v) for k, v in values.items() if isinstance(v, int | float)}
        files[step], records[step] = str(path), values["protocol"]
    last: dict[str, dict[int, float]] = {k: {} for k in train_metrics}
    for row in read_jsonl(run.dir / "metrics.jsonl"):
        for k in train_metrics:
            if isinstance(row.get(k), int | float):
                last[k][row["step"]] = float(row[k])  # the last row of a step wins (a resumed run re-logs)
    train = {}
    for k, series in last.items():
        steps = np.array(sorted(series), dtype=np.int64)
        values = np.array([series[s] for s in steps], dtype=np.float64)
        train[k] = {
            int(s): float(values[(steps > s - smooth) & (steps <= s)].mean()) for s in steps
        }  # running mean over (s − smooth, s]
    return {"eval": evals, "files": files, "records": records, "train": train}


def _at(series: dict[int, float], step: int, smooth: int) -> float | None:
    """A training metric at ``step``: its running mean at the last step logged in (step − smooth, step]."""
    near = [s for s in series if step - smooth < s <= step]
    return series[max(near)] if near else None


def protocol_of(spec: SweepSpec, results: dict[str, dict]) -> tuple[dict | None, dict]:
    """The first evaluation record and the settings on which the others differ from it (``{setting:
    [values]}``); ``ValueError`` when a record names another protocol than the spec's, or records name
    several."""
    from minivdit.eval.evaluate import settings_differences

    first, differ = None, {}
    for name, r in results.items():
        for step, record in r["records"].items():
            wanted = spec.protocol or (first or record).get("name")
            if record.get("name") != wanted:
                raise ValueError(
                    f"{r['files'][step]}: protocol {record.get('name')!r}, but the sweep tabulates "
                    f"{wanted!r} (the spec's protocol or the first record's; run {name})"
                )
            if first is None:
                first = record
                continue
            for k, (a, b) in settings_differences(first, record).items():
                seen = differ.setdefault(k, [a])
                if b not in seen:
                    seen.append(b)
    return first, differ


def describe(record: dict | None, differ: dict, protocol: str | None) -> str:
    """One line naming the protocol and how it was measured."""
    if record is None:
        return (
            f"protocol {protocol}: no evaluation found"
            if protocol
            else "no evaluation (training metrics only)"
        )
    sampler = record.get("sampler", {})
    detectors = ", ".join(f"{k} {v.get('sha256', '?')[:12]}" for k, v in record.get("detectors", {}).items())
    text = (
        f"protocol {record.get('name')}: {record.get('num_fake_used')} generated vs "
        f"{record.get('num_real_used')} real clips, {record.get('num_frames_used')} frames at "
        f"{record.get('resolution_used')} px, CFG {record.get('cfg_scale')}, {sampler.get('steps')} sampler "
        f"steps, {sampler.get('weights')} weights; detectors: {detectors or 'none'}"
    )
    if differ:
        text += "; the runs' records differ in " + "; ".join(f"{k}: {v}" for k, v in differ.items())
    return text


def _cell(values: list[float], seeds: int) -> str:
    if not values:
        return "—"
    mean = float(np.mean(values))
    text = f"{mean:.4g} ± {float(np.std(values, ddof=1)):.2g}" if len(values) > 1 else f"{mean:.4g}"
    return text + (f" (n={len(values)})" if len(values) < seeds else "")


def summarize(spec: SweepSpec, runs: list[Run], out: Path, spec_path: Path | None = None) -> dict:
    """Write ``summary.md``, ``summary.json`` and the plots in ``out``; returns the summary."""
    results = {r.name: collect(r, spec.smooth, spec.train_metrics) for r in runs}
    record, differ = protocol_of(spec, results)
    protocol = describe(record, differ, spec.protocol)
    eval_steps = sorted({s for r in results.values() for s in r["eval"]})
    metrics = list(spec.metrics) or sorted(
        {k for r in results.values() for v in r["eval"].values() for k in v}
    )
    last = max((s for r in results.values() for t in r["train"].values() for s in t), default=None)
    steps = list(spec.steps) or eval_steps or ([last] if last is not None else [])  # no evaluation: the end
    table: dict[str, dict[str, dict[int, dict]]] = {}
    for metric in [*metrics, *spec.train_metrics]:
        table[metric] = {}
        for arm in spec.arms:
            table[metric][arm] = {}
            for step in steps:
                values = []
                for run in (r for r in runs if r.arm == arm):
                    res = results[run.name]
                    if metric in spec.train_metrics:
                        v = _at(res["train"].get(metric, {}), step, spec.smooth)
                    else:
                        v = res["eval"].get(step, {}).get(metric)
                    if v is not None:
                        values.append(v)
                sd = float(np.std(values, ddof=1)) if len(values) > 1 else None
                mean = float(np.mean(values)) if values else None
                table[metric][arm][step] = {"mean": mean, "std": sd, "n": len(values), "values": values}
    missing = [r.name for r in runs if state(r) != "done"]
    again = f"python -m minivdit.sweep {spec_path}" if spec_path else "python -m minivdit.sweep SPEC"
    lines = [
        f"# {spec.title or 'Sweep'}",
        "",
        f"- {protocol}",
        f"- recipe: `{shlex.join([spec.recipe, *spec.common])}`",
        *(f"- arm `{arm}`: `{shlex.join(flags) or '(no flags)'}`" for arm, flags in spec.arms.items()),
        f"- seeds: {', '.join(map(str, spec.seeds))}; cells: mean ± std (sample std, ddof 1) over seeds, "
        f"(n=k) when only k seeds have the step",
        f"- training metrics: the mean of the rows logged over the {spec.smooth} steps up to the step",
        f"- runs not finished: {', '.join(missing)}" if missing else "- every run finished",
        f"- regenerate: `{again} --out {out}`",
    ]
    for metric, arms in table.items():
        kind = "training" if metric in spec.train_metrics else (record or {}).get("name", "eval")
        lines += ["", f"## {metric} ({kind})", "", "| arm | " + " | ".join(f"step {s}" for s in steps) + " |"]
        lines.append("| --- | " + " | ".join("---:" for _ in steps) + " |")
        for arm, cells in arms.items():
            shown = [_cell(cells[s]["values"], len(spec.seeds)) for s in steps]
            lines.append(f"| {arm} | " + " | ".join(shown) + " |")
    out.mkdir(parents=True, exist_ok=True)
    durable.write_text(out / "summary.md", "\n".join(lines) + "\n")
    summary = {
        "spec": dataclasses.asdict(spec),
        "protocol": protocol,
        "record": record,
        "record_differences": differ,
        "steps": steps,
        "table": {
            m: {a: {str(s): c for s, c in cells.items()} for a, cells in arms.items()}
            for m, arms in table.items()
        },
        "runs": {
            r.name: {
                "arm": r.arm,
                "seed": r.seed,
                "dir": str(r.dir),
                "state": state(r),
                **{k: v for k, v in results[r.name].items() if k != "records"},  # the files hold them
            }
            for r in runs
        },
    }
    durable.write_text(out / "summary.json", json.dumps(summary, indent=2, default=str))
    plots = plot(spec, runs, results, metrics, out, protocol)
    log.info(f"summary: {out / 'summary.md'}, {out / 'summary.json'}" + "".join(f", {p}" for p in plots))
    return summary


def plot(
    spec: SweepSpec, runs: list[Run], results: dict, metrics: list[str], out: Path, protocol: str
) -> list[Path]:
    """``<metric>.png`` per metric: mean over seeds per arm against the step, with a band of ± one std."""
    try:
        import matplotlib
    except ImportError:
        log.warning("sweep: no plots: matplotlib is not installed (pip install matplotlib, or the dev extra)")
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for metric in [*metrics, *spec.train_metrics]:
        fig, ax = plt.subplots(figsize=(7, 4))
        drawn = False
        for arm in spec.arms:
            per_seed = []
            for run in (r for r in runs if r.arm == arm):
                res = results[run.name]
                if metric in spec.train_metrics:
                    per_seed.append(res["train"].get(metric, {}))
                else:
                    per_seed.append({s: v[metric] for s, v in res["eval"].items() if metric in v})
            steps = sorted({s for series in per_seed for s in series})
            if not steps:
                continue
            stacks = [[series[s] for series in per_seed if s in series] for s in steps]
            mean = np.array([np.mean(v) for v in stacks])
            sd = np.array([np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in stacks])
            marker = "o" if metric not in spec.train_metrics else None
            (line,) = ax.plot(steps, mean, marker=marker, label=f"{arm} ({len(per_seed)} seeds)")
            ax.fill_between(steps, mean - sd, mean + sd, color=line.get_color(), alpha=0.2)
            drawn = True
        if not drawn:
            plt.close(fig)
            continue
        ax.set_xlabel("step")
        what = f"running mean over {spec.smooth} steps" if metric in spec.train_metrics else "evaluation"
        ax.set_ylabel(f"{metric} ({what})")
        ax.set_title(f"{spec.title}: {metric}, mean ± std over seeds\n{protocol}", fontsize=7, wrap=True)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / f"{metric.replace('/', '_')}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


# ---------------------------------------------------------------------------------------------- entry


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m minivdit.sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("spec", type=Path, help="the sweep spec, a .toml or .json file (SweepSpec)")
    p.add_argument("--out", type=Path, help="folder of the runs and the summary (default: the spec's out)")
    p.add_argument("--only", nargs="+", default=[], metavar="ARM", help="launch only these arms' runs")
    p.add_argument("--dry-run", action="store_true", help="print each run's state and command; run nothing")
    p.add_argument("--no-run", action="store_true", help="summarise the runs there; launch nothing")
    args = p.parse_args(argv)
    setup_logging(0, stream=sys.stderr)  # the trainer's line format; every rank logs its own runs
    spec = load_spec(args.spec)
    out = args.out or Path(spec.out or Path("runs") / "sweeps" / args.spec.stem)
    unknown = sorted(set(args.only) - set(spec.arms))
    if unknown:
        raise ValueError(f"--only {unknown}: not arms of {args.spec} ({list(spec.arms)})")
    if not args.no_run and not Path(spec.recipe).is_file():
        raise ValueError(f"{args.spec}: recipe {spec.recipe!r} is not a file (from {Path.cwd()})")
    runs = plan(spec, out)
    chosen = [r for r in runs if not args.only or r.arm in args.only]
    rank, world, _ = launcher_env()
    if args.dry_run:
        if rank == 0:
            for r in chosen:
                print(f"{r.name}: {state(r)}\n    {shlex.join(command(r, spec.gpus_per_run))}")
        return 0
    code = 0
    if not args.no_run:
        since = time.time()
        code = execute(spec, chosen, out)
        if code not in (0, 1):  # stopped by a signal: no summary, the scheduler requeues
            return code
        if world > 1 and rank == 0:
            wait_for(chosen, since)
    if rank == 0:
        summarize(spec, runs, out, args.spec)
    if world > 1 and not args.no_run:
        # A rank that exits non-zero makes torchrun stop every other one: rank 0 alone reports the failures
        # (their markers), after its summary.
        code = 1 if rank == 0 and any(state(r) != "done" for r in chosen) else 0
    return code


if __name__ == "__main__":
    sys.exit(main())
