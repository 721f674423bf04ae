"""The planner against measured peaks on this CPU (issue 21 §5; the table in ``docs/planner.md``).

For each configuration, ``minivdit.plan.plan`` predicts the per-device memory from the config alone; then
the whole training run (build, 3 steps, checkpoint) runs under ``minivdit.memory.TensorMemory``, whose
``peak`` is the largest sum of live tensor bytes at any moment (what ``torch.cuda.max_memory_allocated``
reports on a GPU). The process's peak RSS growth is printed beside it (it adds PyTorch's CPU allocator
caches, the interpreter and the libraries' buffers).

    python tools/validate_plan.py            # the quickstart's model at batch 16, three layouts
"""

from __future__ import annotations

import dataclasses
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "recipes"))


from minivdit.dist import ParallelConfig  # noqa: E402
from minivdit.memory import TensorMemory  # noqa: E402
from minivdit.plan import PlanConfig, plan  # noqa: E402
from minivdit.train import train  # noqa: E402

MiB = 2**20


def cases(base) -> list[tuple[str, dict]]:
    """``(name, TrainConfig overrides)``; ``base`` None: the names only."""
    ac = ParallelConfig(activation_checkpointing=True)
    full3d = None if base is None else dataclasses.replace(base.model, block_type="full3d", qk_norm=True)
    return [
        ("quickstart (Latte layout), batch 16", {}),
        ("  + activation checkpointing", {"parallel": ac}),
        ("  + op-level selective checkpointing", {"parallel": dataclasses.replace(ac, ac_ops=True)}),
        ("full-3-D + QK-norm, batch 16", {"model": full3d}),
    ]


def run_case(index: int) -> dict:
    """One configuration in this process: predicted bytes, measured peak, peak RSS growth (bytes)."""
    import quickstart

    base = quickstart.config()
    name, kw = cases(base)[index]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = dataclasses.replace(
            base, max_steps=3, sample_every=-1, eval=None, out_dir=tmp, run_name="run", **kw
        )
        predicted = plan(cfg, PlanConfig(), device_type="cpu").total
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with TensorMemory() as mem:
            train(cfg)
        rss = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) * 1024  # ru_maxrss is in KiB
    return {"name": name, "predicted": predicted, "peak": mem.peak, "rss": rss}


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--case":
        print(json.dumps(run_case(int(sys.argv[2]))))
        return
    print("| configuration | predicted (MiB) | measured peak (MiB) | error | peak RSS growth (MiB) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for i in range(len(cases(None))):  # one process each: a fresh peak RSS
        cmd = [sys.executable, __file__, "--case", str(i)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        error = r["predicted"] / r["peak"] - 1
        print(
            f"| {r['name']} | {r['predicted'] / MiB:.1f} | {r['peak'] / MiB:.1f} | {error:+.1%} | "
            f"{r['rss'] / MiB:.0f} |"
        )


if __name__ == "__main__":
    main()
