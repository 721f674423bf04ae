"""``tools/gpu_check.py --dry-run``: the prepared GPU check runs its sections end to end on the CPU at tiny
sizes, so a lent GPU's minutes are not spent on a crash. The ``vdit``, ``wan`` and ``drepa`` sections call
``tools/bench.py``'s ``train``, ``wan`` and ``align`` benchmarks, which ``tests/test_bench.py`` runs.

Run: ``pytest -q tests/test_gpu_check.py`` (CPU, about 40 s).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_dry_run_prints_one_table_without_errors(tmp_path):
    cmd = [sys.executable, "tools/gpu_check.py", "--dry-run", "--only", "attention", "cogvideox", "planner"]
    cmd += ["--json", str(tmp_path / "rows.json")]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    table = [line for line in out.stdout.splitlines() if line.startswith("| ")]
    assert table[0] == "| check | case | ours | reference | ratio | note |"
    rows = table[2:]
    assert {r.split(" | ")[0][2:] for r in rows} == {"attention", "cogvideox", "planner"}
    assert not any("error" in r for r in rows), rows
    # the CogVideoX pair has the same weights: the same prediction (fp32 on the CPU; tests/test_cogvideox.py
    # bounds the two implementations' difference at 1e-5 relative on its shapes, measured ~1e-6)
    same = next(r for r in rows if "same weights" in r)
    assert float(same.rsplit("diff of the predictions ", 1)[1].split(" ")[0]) <= 1e-5
    assert sum("planner" in r for r in rows) == 4  # CogVideoX and Wan, with and without checkpointing


def test_without_cuda_it_asks_for_the_dry_run():
    out = subprocess.run([sys.executable, "tools/gpu_check.py"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2 and "no CUDA device: run with --dry-run" in out.stderr
