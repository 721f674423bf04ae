"""Checkpoints: atomic, exact to resume, readable without minivdit.

Layout of ``<run>/checkpoints/step_<NNNNNNN>/``:

- ``model.safetensors``, ``ema.safetensors``: full (unsharded) weights, gathered from FSDP shards if needed;
  load them anywhere with ``safetensors.torch.load_file``.
- ``optim/``: optimizer state through ``torch.distributed.checkpoint`` (sharded under FSDP; DCP reshards on
  load, so a checkpoint written by N ranks resumes on M ranks, including a single process).
- ``extra.safetensors``, ``extra_optim.pt``: a small trainable module that is not EMA'd and not sharded (the
  alignment head, replicated on every rank) and its own optimizer's state, when given.
- ``rank<r>.pt``: that rank's RNG states (python, numpy, torch, cuda) and data-loader position; read back with
  ``torch.load(weights_only=True)``.
- ``meta.json``: step, world size, and anything the trainer adds.

Atomicity: everything is written into ``.tmp_step_<N>/`` and renamed by rank 0 after a barrier, so a crash
mid-write never touches the previous checkpoint; stale ``.tmp_*`` folders are ignored and cleaned up.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
import torch.nn as nn
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from minivdit import dist

STEP_PREFIX = "step_"


def step_dir(root: Path, step: int) -> Path:
    return root / f"{STEP_PREFIX}{step:07d}"


def list_checkpoints(root: Path) -> list[Path]:
    """Completed checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    done = [
        p
        for p in root.iterdir()
        if p.is_dir() and p.name.startswith(STEP_PREFIX) and (p / "meta.json").exists()
    ]
    return sorted(done, key=lambda p: int(p.name[len(STEP_PREFIX) :]))


def latest(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Unsharded CPU state dict (collective under FSDP: call on every rank; only rank 0 gets the tensors)."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def trainable_keys(model: nn.Module) -> set[str] | None:
    """The names of the trained parameters when some are frozen (LoRA: the adapters), else None (all)."""
    named = list(model.named_parameters())
    if all(p.requires_grad for _, p in named):
        return None
    return {n for n, p in named if p.requires_grad}


def selected_state_dict(model: nn.Module, keys: set[str]) -> dict[str, torch.Tensor]:
    """The parameters named ``keys``, unsharded on the CPU (collective under FSDP: every rank gathers the
    same parameters in the same order); nothing else is gathered, so a LoRA checkpoint never touches the base
    weights."""
    out = {}
    for name, p in model.named_parameters():
        if name in keys:
            t = p.full_tensor() if dist.is_sharded(p) else p
            out[name] = t.detach().to("cpu", copy=True)
    return out


def _weights(model: nn.Module, keys: set[str] | None) -> dict[str, torch.Tensor]:
    return full_state_dict(model) if keys is None else selected_state_dict(model, keys)


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(
    root: Path,
    step: int,
    *,
    model: nn.Module,
    ema: nn.Module | None,
    optimizer: torch.optim.Optimizer,
    ctx: dist.DistContext,
    rank_state: dict,
    meta: dict,
    extra: nn.Module | None = None,
    extra_optimizer: torch.optim.Optimizer | None = None,
    keep: int = 3,
) -> Path:
    """Write checkpoint ``step`` atomically (collective: every rank calls it) and keep the newest ``keep``."""
    final = step_dir(root, step)
    tmp = root / f".tmp_{final.name}"
    if ctx.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    keys = trainable_keys(model)  # LoRA: only the adapters are written; the base comes from --pretrained
    model_sd = _weights(model, keys)
    ema_sd = _weights(ema, keys) if ema is not None else None
    extra_sd = extra.state_dict() if extra is not None else None
    dcp.save({"optim": get_optimizer_state_dict(model, optimizer)}, checkpoint_id=str(tmp / "optim"))
    torch.save({"rng": rng_state(), **rank_state}, tmp / f"rank{ctx.rank}.pt")
    if ctx.is_main:
        save_file({k: v.contiguous() for k, v in model_sd.items()}, str(tmp / "model.safetensors"))
        if ema_sd is not None:
            save_file({k: v.contiguous() for k, v in ema_sd.items()}, str(tmp / "ema.safetensors"))
        if extra_sd:
            save_file(
                {k: v.detach().cpu().contiguous() for k, v in extra_sd.items()},
                str(tmp / "extra.safetensors"),
            )
        if extra_optimizer is not None:
            torch.save(extra_optimizer.state_dict(), tmp / "extra_optim.pt")
        weights = "all" if keys is None else "trainable"
        info = {"step": step, "world": ctx.world, "weights": weights, **meta}
        (tmp / "meta.json").write_text(json.dumps(info, indent=2))
    dist.barrier()
    if ctx.is_main:
        if final.exists():  # a re-run of the same step: replace only once the new copy is complete
            shutil.rmtree(final)
        tmp.rename(final)
        for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
        for stale in root.glob(".tmp_*"):
            shutil.rmtree(stale, ignore_errors=True)
    dist.barrier()
    return final


def load_weights(model: nn.Module, path: Path, keys: set[str] | None = None) -> None:
    """Load a full safetensors state dict into a plain or FSDP-sharded model: every weight (strict), or with
    ``keys`` exactly those (a LoRA checkpoint; the frozen base is already in place)."""
    state = load_file(str(path))
    if keys is not None and set(state) != keys:
        missing, unexpected = sorted(keys - set(state)), sorted(set(state) - keys)
        raise ValueError(
            f"{path}: the checkpoint's trained weights do not match the model's (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}): was it written with the same --lora settings?"
        )
    options = StateDictOptions(full_state_dict=True, strict=keys is None)
    set_model_state_dict(model, state, options=options)


def load(
    path: Path,
    *,
    model: nn.Module,
    ema: nn.Module | None,
    optimizer: torch.optim.Optimizer,
    ctx: dist.DistContext,
    extra: nn.Module | None = None,
    extra_optimizer: torch.optim.Optimizer | None = None,
) -> tuple[dict, dict]:
    """Restore a checkpoint written by :func:`save` (any world size). Returns (meta, this rank's state)."""
    if not (path / "meta.json").exists():
        raise ValueError(
            f"{path} is not a minivdit checkpoint (no meta.json); expected .../checkpoints/step_NNNNNNN"
        )
    meta = json.loads((path / "meta.json").read_text())
    keys = trainable_keys(model)
    if (meta.get("weights", "all") == "trainable") != (keys is not None):
        raise ValueError(
            f"{path} holds {meta.get('weights', 'all')} weights but this run trains "
            f"{'only some (LoRA)' if keys is not None else 'all of them'}: resume with the same --lora"
        )
    load_weights(model, path / "model.safetensors", keys)
    if ema is not None:
        load_weights(ema, path / "ema.safetensors", keys)
    if extra is not None:
        if not (path / "extra.safetensors").exists():
            raise ValueError(
                f"{path} has no extra.safetensors: it was written without an alignment head, so the head "
                f"cannot resume from it (start fresh, or resume a run that had the same --align settings)"
            )
        extra.load_state_dict(load_file(str(path / "extra.safetensors")))
        if extra_optimizer is not None:
            extra_optimizer.load_state_dict(torch.load(path / "extra_optim.pt", weights_only=True))
    state = {"optim": get_optimizer_state_dict(model, optimizer)}
    dcp.load(state, checkpoint_id=str(path / "optim"))
    set_optimizer_state_dict(model, optimizer, state["optim"])
    rank_file = path / f"rank{ctx.rank}.pt"
    if not rank_file.exists():  # resumed on more ranks than wrote it: RNG is reseeded per step anyway
        rank_file = path / "rank0.pt"
    rank_state = torch.load(rank_file, weights_only=True)
    set_rng_state(rank_state.pop("rng"))
    return meta, rank_state
