"""Two-process gloo runs (DDP and FSDP2 on CPU) against one process with gradient accumulation.

One process accumulating 2·A micro-batches of b clips and 2 ranks accumulating A micro-batches of b clips
each see the same global batch (block-interleaved sharding, ``minivdit/data``) and the same noise
(per-micro-batch reseeding, ``train.py``), so their per-step losses and weights agree up to float reduction
order; the distributed checkpoint resumes in a single process. Launched with
``python -m torch.distributed.run --nproc_per_node=2``.

Run: ``pytest -q tests/test_dist.py`` (about 10 s per case on 2 CPU cores).
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import safetensors.torch
import torch

from minivdit import ckpt, dist
from minivdit.config import to_dict
from minivdit.dist import ParallelConfig
from minivdit.train import build_models, train

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:torch.distributed is disabled")]

STEPS = 3
SOLO = dist.DistContext(rank=0, world=1, local_rank=0, device=torch.device("cpu"))
# (strategy, objective, grad_accum per rank): each strategy with flow (MSE) and DDPM (MSE + VB), with and
# without accumulation (DDP ``no_sync`` / FSDP ``set_requires_gradient_sync``).
CASES = [("ddp", "flow", 1), ("fsdp", "ddpm", 1), ("ddp", "ddpm", 2), ("fsdp", "flow", 2)]

WORKER = """
import json, sys
from minivdit import dist
from minivdit.config import from_dict
from minivdit.train import TrainConfig, train

cfg = from_dict(TrainConfig, json.loads(open(sys.argv[1]).read()))
try:
    train(cfg)
finally:
    dist.teardown()
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(script: str, args: list[str], tmp: Path, nproc: int = 2) -> None:
    """Run the Python source ``script`` under ``torchrun --nproc_per_node nproc`` with ``args`` (CPU, gloo,
    one thread per rank, a free port); fails the test with the end of its output when it fails."""
    path = tmp / "worker.py"
    path.write_text(script)
    launcher_vars = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in launcher_vars}
    port = _free_port()
    env.update(OMP_NUM_THREADS="1", MASTER_PORT=str(port), CUDA_VISIBLE_DEVICES="")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        "--master_addr=127.0.0.1",
        f"--master_port={port}",
        str(path),
        *args,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (
        f"torchrun failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    )


def torchrun_train(cfg, tmp: Path, nproc: int = 2, worker: str | None = None) -> None:
    """``train(cfg)`` on ``nproc`` ranks (``WORKER``, or ``worker`` reading the same config.json)."""
    cfg_file = tmp / "config.json"
    cfg_file.write_text(json.dumps(to_dict(cfg)))
    torchrun(worker or WORKER, [str(cfg_file)], tmp, nproc)


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _config(make_tiny_cfg, out: Path, objective: str, grad_accum: int, name: str):
    return make_tiny_cfg(
        out,
        objective=objective,
        max_steps=STEPS,
        grad_accum=grad_accum,
        run_name=name,
        ckpt={"every": 2, "keep": 0},
        sample_every=0,
    )


@pytest.fixture(scope="module")
def reference(make_tiny_cfg, tmp_path_factory):
    """Single-process runs with 2× the accumulation and the same per-rank batch size, per (objective, A)."""
    out = tmp_path_factory.mktemp("single")
    runs = {}

    def get(objective: str, grad_accum: int):
        key = (objective, 2 * grad_accum)
        if key not in runs:
            cfg = _config(make_tiny_cfg, out, objective, 2 * grad_accum, f"single-{objective}-{key[1]}")
            runs[key] = (cfg, train(cfg))
        return runs[key]

    return get


def _load_full_state(cfg, path: Path):
    """Model, EMA and optimizer of checkpoint ``path`` restored in this (single) process."""
    model, ema = build_models(cfg, SOLO)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr)
    meta, rank_state = ckpt.load(path, model=model, ema=ema, optimizer=opt, ctx=SOLO)
    return meta, rank_state, model, ema, opt


@pytest.mark.parametrize(("strategy", "objective", "grad_accum"), CASES)
def test_two_ranks_match_one_process_with_accumulation(
    make_tiny_cfg, reference, tmp_path, metrics, single_thread, strategy, objective, grad_accum
):
    single_cfg, single_dir = reference(objective, grad_accum)
    cfg = _config(make_tiny_cfg, tmp_path / "runs", objective, grad_accum, strategy)
    cfg = replace(cfg, parallel=ParallelConfig(strategy=strategy))
    torchrun_train(cfg, tmp_path)
    run_dir = cfg.run_dir

    # Per-step losses (all terms) and gradient norms.
    ref, got = metrics(single_dir), metrics(run_dir)
    assert [r["step"] for r in got] == [r["step"] for r in ref] == list(range(1, STEPS + 1))
    keys = ["loss", "grad_norm"] + (["loss/mse", "loss/vb"] if objective == "ddpm" else [])
    # The micro-batches have the same shapes on both sides (the same kernels); what differs is the order of
    # the 2·A micro-batch gradients' sum, the ranks' reductions (losses, gradient norm) and, from step 2 on,
    # weights that differ by that rounding: each ≲ a few u = 6e-8 relative, ≪ 1e-5 over 3 steps.
    for r, g in zip(ref, got, strict=True):
        for k in keys:
            assert g[k] == pytest.approx(r[k], rel=1e-5), (strategy, r["step"], k)
        assert g["samples_s"] == pytest.approx(g["it_s"] * 2 * grad_accum * cfg.data.batch_size)

    # The checkpoint: full weights gathered from the ranks, one RNG/data file per rank, and the same weights:
    # an AdamW step moves a weight by ≲ lr = 1e-3 and the two sides' steps differ by the gradients' relative
    # rounding (≲ 2A·u); with the weight's own rounding (u·|w| ≈ 3e-8 per step) ≲ 1e-7 after 3 steps: 1e-6.
    last = run_dir / "checkpoints" / f"step_{STEPS:07d}"
    ref_last = single_dir / "checkpoints" / f"step_{STEPS:07d}"
    assert [p.name for p in ckpt.list_checkpoints(run_dir / "checkpoints")] == ["step_0000002", last.name]
    assert json.loads((last / "meta.json").read_text())["world"] == 2
    assert (last / "rank0.pt").is_file() and (last / "rank1.pt").is_file()
    for name in ("model.safetensors", "ema.safetensors"):
        a = safetensors.torch.load_file(str(ref_last / name))
        b = safetensors.torch.load_file(str(last / name))
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=f"{name}:{k}")
    assert (run_dir / "samples" / f"step_{STEPS:07d}" / "contact.png").is_file()

    # The distributed checkpoint loads in one process: weights, EMA and (resharded) optimizer state.
    meta, rank_state, model, ema, opt = _load_full_state(single_cfg, last)
    _, _, ref_model, ref_ema, ref_opt = _load_full_state(single_cfg, ref_last)
    assert meta["step"] == STEPS
    for mine, theirs in ((model, ref_model), (ema, ref_ema)):
        for (k, p), q in zip(mine.state_dict().items(), theirs.state_dict().values(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=k)
    state, ref_state = opt.state_dict()["state"], ref_opt.state_dict()["state"]
    assert state.keys() == ref_state.keys() and len(state) == len(list(model.parameters()))
    # AdamW moments: sums of the gradients above (≲ 3 steps · 2A · u ≈ 7e-7 of a tensor's largest |g|, twice
    # that for g² in exp_avg_sq), so a tolerance in units of each tensor's scale, 1e-5 · max|ref|, not an
    # absolute one (their largest entries range from 1e-17 to 1e-2).
    for i in state:
        for k in ("step", "exp_avg", "exp_avg_sq"):
            want = ref_state[i][k]
            scale = 1e-5 * want.abs().max().item()
            torch.testing.assert_close(state[i][k], want, rtol=1e-5, atol=scale, msg=f"{i}.{k}")

    # ... and training continues from it.
    resumed = train(
        replace(
            single_cfg,
            out_dir=str(tmp_path),
            run_name="resumed",
            resume=str(last),
            max_steps=STEPS + 2,
            sample_every=-1,
        )
    )
    rows = metrics(resumed)
    assert [r["step"] for r in rows] == [STEPS + 1, STEPS + 2]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in rows)


POISONED_WORKER = """
import json, sys
import torch
import minivdit.train as train_mod
from minivdit import dist
from minivdit.config import from_dict

real, count = train_mod.build_models, [-1]

def poison(module, args, output):  # rank 1's first forward and its replay emit inf
    count[0] += 1
    return output * float("inf") if count[0] in (0, 1) else None

def build(cfg, ctx, model_cls):
    model, ema = real(cfg, ctx, model_cls)
    if ctx.rank == 1:
        dist.unwrap(model).get_submodule("blocks.1.mlp").register_forward_hook(poison)
    return model, ema

train_mod.build_models = build
cfg = from_dict(train_mod.TrainConfig, json.loads(open(sys.argv[1]).read()))
try:
    train_mod.train(cfg)
finally:
    dist.teardown()
"""


def test_nonfinite_report_on_fsdp_names_the_rank_and_block(make_tiny_cfg, tmp_path, metrics, single_thread):
    """One rank's block emits inf under FSDP2: every rank replays in step (no collective hangs), the bad
    rank's report names the block, the other's finds its own forward finite."""
    cfg = _config(make_tiny_cfg, tmp_path / "runs", "flow", 1, "poisoned")
    cfg = replace(cfg, parallel=ParallelConfig(strategy="fsdp"), max_steps=2)
    torchrun_train(cfg, tmp_path, worker=POISONED_WORKER)
    assert [r["nonfinite_skipped"] for r in metrics(cfg.run_dir)] == [1, 1]
    folder = cfg.run_dir / "nonfinite"
    assert sorted(p.name for p in folder.iterdir()) == ["step_0.json", "step_0.rank1.json"]
    bad = json.loads((folder / "step_0.rank1.json").read_text())
    good = json.loads((folder / "step_0.json").read_text())
    assert bad["rank"] == 1 and bad["micro_batches"][0]["first_nonfinite"] == {"module": "blocks.1.mlp"}
    assert good["rank"] == 0 and good["micro_batches"][0]["first_nonfinite"] is None
    assert good["micro_batches"][0]["ids"] != bad["micro_batches"][0]["ids"]


def test_fsdp_cpu_offload_matches_one_process(make_tiny_cfg, reference, tmp_path, metrics, single_thread):
    """FSDP2 with ``CPUOffloadPolicy`` (sharded parameters, gradients, AdamW state and EMA in host memory;
    the optimizer step on the CPU): the same losses and weights as one process, to the bounds of the main
    test above (on a CPU the copies to the "device" are copies to the same memory: what this checks is the
    path: materialising on the CPU, the policy, the offloaded optimizer and EMA, the checkpoint)."""
    single_cfg, single_dir = reference("flow", 1)
    cfg = _config(make_tiny_cfg, tmp_path / "runs", "flow", 1, "offload")
    cfg = replace(cfg, parallel=ParallelConfig(strategy="fsdp", cpu_offload=True))
    torchrun_train(cfg, tmp_path)
    for r, g in zip(metrics(single_dir), metrics(cfg.run_dir), strict=True):
        assert g["loss"] == pytest.approx(r["loss"], rel=1e-5) and g["grad_norm"] == pytest.approx(
            r["grad_norm"], rel=1e-5
        )
    last = f"checkpoints/step_{STEPS:07d}"
    for name in ("model.safetensors", "ema.safetensors"):
        a = safetensors.torch.load_file(str(single_dir / last / name))
        b = safetensors.torch.load_file(str(cfg.run_dir / last / name))
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=f"{name}:{k}")
