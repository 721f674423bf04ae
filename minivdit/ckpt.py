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
- ``meta.json``: step, world size, anything the trainer adds, and ``files``: the size and CRC-32 of every
  other file (``verify``). Written last: a folder without it is not a checkpoint.

Atomicity and durability: everything is written into ``.tmp_step_<N>/``, every file and folder is fsynced,
and rank 0 renames it after a barrier and fsyncs ``checkpoints/`` (``minivdit/durable.py``): a crash or a
power loss mid-write never touches the previous checkpoint, and a renamed checkpoint is on the disk. Old
checkpoints are renamed to ``.trash_*`` before they are deleted. Stale ``.tmp_*`` / ``.trash_*`` folders are
ignored and cleaned up. A write error (ENOSPC, EIO) on any rank removes the temporary
folder on all of them and raises ``CheckpointWriteError`` naming the folder and the free space: training
stops rather than carrying on without checkpoints.

Verification: ``verify(path)`` checks ``meta.json`` and each file's size and checksum (the ranks share the
reading); ``latest_verified`` is what ``--resume auto`` takes, skipping (and naming) a newer checkpoint that
is truncated or corrupt. ``python -m minivdit.ckpt verify RUN_DIR`` lists every checkpoint and its state.
Checksums cost one read of what was written: CRC-32 runs at ~1.7-2.8 GB/s per core from the page cache,
recorded per GiB block so that the ranks share even one large file (``python tools/bench.py ckpt``);
``checksum=False`` records and checks sizes only.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
import torch.nn as nn
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from minivdit import dist, durable

log = logging.getLogger(__name__)
STEP_PREFIX = "step_"
META = "meta.json"


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (the message names the folder and the free space)."""


@contextmanager
def _quiet_single_process():
    """DCP warns "assuming the intent is to save in a single process" on every call without a process group:
    in a world of one that is exactly the intent."""
    with warnings.catch_warnings():
        if not torch.distributed.is_initialized():
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


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
    checksum: bool = True,
) -> Path:
    """Write checkpoint ``step`` atomically and durably (collective: every rank calls it) and keep the newest
    ``keep``. An ``OSError`` while writing, on any rank, removes the temporary folder and raises
    ``CheckpointWriteError`` on every rank; the previous checkpoints are untouched."""
    final = step_dir(root, step)
    tmp = root / f".tmp_{final.name}"
    if ctx.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    keys = trainable_keys(model)  # LoRA: only the adapters are written; the base comes from --pretrained
    model_sd = _weights(model, keys)  # collectives first, outside the error handling: they are not writes
    ema_sd = _weights(ema, keys) if ema is not None else None
    optim_sd = get_optimizer_state_dict(model, optimizer)
    error = None
    try:
        with _quiet_single_process():  # DCP fsyncs its own files (FileSystemWriter sync_files=True)
            dcp.save({"optim": optim_sd}, checkpoint_id=str(tmp / "optim"))
        torch.save({"rng": rng_state(), **rank_state}, tmp / f"rank{ctx.rank}.pt")
        if ctx.is_main:
            save_file({k: v.contiguous() for k, v in model_sd.items()}, str(tmp / "model.safetensors"))
            if ema_sd is not None:
                save_file({k: v.contiguous() for k, v in ema_sd.items()}, str(tmp / "ema.safetensors"))
            if extra is not None and (extra_sd := extra.state_dict()):
                save_file(
                    {k: v.detach().cpu().contiguous() for k, v in extra_sd.items()},
                    str(tmp / "extra.safetensors"),
                )
            if extra_optimizer is not None:
                torch.save(extra_optimizer.state_dict(), tmp / "extra_optim.pt")
    except (OSError, CheckpointException) as e:
        error = _os_error(e)
    dist.barrier()  # every rank's writes are done (their own temporary names are gone) before the walk
    try:
        durable.fsync_tree(tmp)  # each rank flushes what it wrote (on a shared file system too)
    except OSError as e:
        error = error or e
    files = {}
    if not dist.any_rank(error is not None):
        try:
            files = _file_records(tmp, ctx, checksum=checksum)  # the ranks share the reading
        except OSError as e:
            error = e
    if dist.any_rank(error is not None):
        _abort_save(root, tmp, ctx, error)
    if ctx.is_main:
        weights = "all" if keys is None else "trainable"
        info = {"step": step, "world": ctx.world, "weights": weights, **meta, "files": files}
        try:
            durable.write_text(tmp / META, json.dumps(info, indent=2))
        except OSError as e:
            error = e
    if dist.any_rank(error is not None):
        _abort_save(root, tmp, ctx, error)
    if ctx.is_main:
        if final.exists():  # a re-run of the same step: replace only once the new copy is complete
            _remove(final)
        durable.publish(tmp, final)  # rename, then fsync checkpoints/ so the rename survives a power loss
        for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
            _remove(old)
        for stale in [*root.glob(".tmp_*"), *root.glob(".trash_*")]:
            shutil.rmtree(stale, ignore_errors=True)
    dist.barrier()
    return final


def _os_error(e: BaseException) -> OSError:
    """The OSError behind ``e``: DCP wraps a failed write (ENOSPC in its writer) in a ``CheckpointException``
    (a BaseException) holding each rank's exception; anything else is not a write error and propagates."""
    if isinstance(e, OSError):
        return e
    for exc, _ in e.failures.values():
        if isinstance(exc, OSError):
            return exc
    raise e


def _remove(path: Path) -> None:
    """Delete a checkpoint so that no crash leaves half of it looking like a checkpoint: rename it out of
    ``step_*`` first (atomic), then delete the files (a kill mid-``rmtree`` leaves only a ``.trash_`` folder,
    removed by the next save)."""
    trash = path.with_name(f".trash_{path.name}")
    shutil.rmtree(trash, ignore_errors=True)
    path.rename(trash)
    shutil.rmtree(trash, ignore_errors=True)


def _abort_save(root: Path, tmp: Path, ctx: dist.DistContext, error: OSError | None) -> None:
    """Every rank: remove the temporary folder (rank 0) and raise, naming the folder and the free space."""
    dist.barrier()
    if ctx.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
    dist.barrier()
    prev = latest(root)
    cause = f"{error}" if error is not None else "another rank failed to write its part"
    raise CheckpointWriteError(
        f"could not write checkpoint {tmp.name[len('.tmp_') :]} under {root}: {cause} "
        f"({durable.free_space(root)}). The temporary folder was removed; "
        f"{f'the previous checkpoint {prev} is intact' if prev else 'no earlier checkpoint exists'}. "
        f"Training stops here: free space (or fix the disk) and rerun with --resume auto."
    ) from error


def _file_records(folder: Path, ctx: dist.DistContext, *, checksum: bool) -> dict[str, dict]:
    """``{relative path: {"size": bytes, "crc32": "crc32:…" (a list, one per GiB, for larger files)}}`` of
    every file in ``folder`` (but ``meta.json``); the ranks share the reading and rank 0 gets them all."""
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != META)
    sizes = {str(p.relative_to(folder)): p.stat().st_size for p in paths}
    records = {rel: {"size": n} for rel, n in sizes.items()}
    if checksum:
        for rel, sums in _block_checksums(folder, sizes, ctx).items():
            records[rel]["crc32"] = sums[0] if len(sums) == 1 else sums
    return records


def _block_checksums(folder: Path, sizes: dict[str, int], ctx: dist.DistContext) -> dict[str, list[str]]:
    """The CRC-32 of every ``durable.BLOCK`` of every file, on every rank. Each rank reads a share: blocks
    largest first, each to the rank with the fewest bytes so far (the same split on every rank)."""
    units = [(rel, o, n) for rel, size in sizes.items() for o, n in durable.blocks(size)]
    load, mine = [0] * ctx.world, []
    for unit in sorted(units, key=lambda u: (-u[2], u[0], u[1])):
        r = min(range(ctx.world), key=lambda r: (load[r], r))
        load[r] += unit[2]
        if r == ctx.rank:
            mine.append(unit)
    try:
        sums = durable.checksums([(folder / rel, o, n) for rel, o, n in mine])
        local = dict(zip([(rel, o) for rel, o, _ in mine], sums, strict=True))
    except OSError as e:  # still gathered: every rank raises it, none waits for the others
        local = e
    found = {}
    for part in dist.all_gather_object(local):
        if isinstance(part, OSError):
            raise part
        found |= part
    return {rel: [found[(rel, o)] for o, _ in durable.blocks(size)] for rel, size in sizes.items()}


# ---------------------------------------------------------------------------------------------- verification


def verify(path: Path, *, checksum: bool = True, ctx: dist.DistContext | None = None) -> list[str]:
    """What is wrong with checkpoint ``path``: ``[]`` when it is whole. Checks that ``meta.json`` parses and
    that every file it lists exists with its size and (``checksum``) CRC-32. With ``ctx`` the ranks share
    the reading and every rank gets the same answer. A checkpoint from before minivdit recorded files (no
    ``files`` in ``meta.json``) cannot be checked: it passes, as it did before."""
    path = Path(path)
    ctx = ctx or dist.DistContext(rank=0, world=1, local_rank=0, device=torch.device("cpu"))
    try:
        meta = json.loads((path / META).read_text())
        if not isinstance(meta, dict) or not isinstance(meta.get("step"), int):
            raise ValueError("no integer 'step'")
    except (OSError, ValueError) as e:
        return [f"{path / META}: unreadable ({type(e).__name__}: {e})"]
    records = meta.get("files")
    if records is None:  # written before minivdit recorded files: nothing to check against (as before)
        return []
    if not isinstance(records, dict) or not all(
        isinstance(r, dict) and isinstance(r.get("size"), int) for r in records.values()
    ):
        return [f"{path / META}: unreadable ('files' is not a table of sizes)"]
    problems = []
    for rel, rec in records.items():
        try:
            size = (path / rel).stat().st_size
        except OSError:
            problems.append(f"{path / rel}: missing")
            continue
        if size != rec["size"]:
            problems.append(f"{path / rel}: {size} bytes, {rec['size']} were written (truncated or altered)")
    summed = {rel: rec["size"] for rel, rec in records.items() if "crc32" in rec}
    if checksum and not problems and summed:
        try:
            got = _block_checksums(path, summed, ctx)
        except OSError as e:
            got, problems = {}, [f"{path}: unreadable ({e})"]
        for rel, sums in got.items():
            want = records[rel]["crc32"]
            want = [want] if isinstance(want, str) else want
            bad = [i for i, (a, b) in enumerate(zip(sums, want, strict=False)) if a != b]
            if bad or len(sums) != len(want):
                where = f" (GiB block {bad[0]})" if len(sums) > 1 and bad else ""
                problems.append(f"{path / rel}: checksum differs from the one written{where} (corrupt)")
    if ctx.world > 1:
        problems = sorted({q for part in dist.all_gather_object(problems) for q in part})
    return problems


def latest_verified(root: Path, *, checksum: bool = True, ctx: dist.DistContext | None = None) -> Path | None:
    """The newest checkpoint under ``root`` that verifies; each newer one that does not is logged with the
    reason. None when there is no checkpoint; ``ValueError`` when there are some and none verifies."""
    found = list_checkpoints(root)
    skipped = []
    for path in reversed(found):
        problems = verify(path, checksum=checksum, ctx=ctx)
        if not problems:
            return path
        skipped.append(
            f"{path.name}: {problems[0]}" + (f" (+{len(problems) - 1} more)" if problems[1:] else "")
        )
        log.warning(f"resume: skipping {path}, it does not verify: {'; '.join(problems)}")
    if found:
        raise ValueError(
            f"no checkpoint under {root} verifies ({'; '.join(skipped)}): restore one from a backup, or "
            f"start fresh in another run directory"
        )
    return None


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
    with _quiet_single_process():
        dcp.load(state, checkpoint_id=str(path / "optim"))
    set_optimizer_state_dict(model, optimizer, state["optim"])
    rank_file = path / f"rank{ctx.rank}.pt"
    if not rank_file.exists():  # resumed on more ranks than wrote it: RNG is reseeded per step anyway
        rank_file = path / "rank0.pt"
    rank_state = torch.load(rank_file, weights_only=True)
    set_rng_state(rank_state.pop("rng"))
    return meta, rank_state


# ---------------------------------------------------------------------------------------------- CLI


def describe(root: Path, *, checksum: bool = True) -> tuple[list[tuple[str, str]], bool, str | None]:
    """``[(name, state)]`` for every checkpoint folder under ``root`` (a run directory, its
    ``checkpoints/``, or one checkpoint), oldest first; whether all of them verify; and the newest one that
    does (for a run, what ``--resume auto`` takes; for one checkpoint, itself if it verifies), or None."""
    root = Path(root)
    if (root / META).exists():
        folders = [root]
    else:
        if (root / "checkpoints").is_dir():
            root = root / "checkpoints"
        if not root.is_dir():
            raise ValueError(f"{root}: not a run directory, a checkpoints/ folder or a checkpoint")
        prefixes = (STEP_PREFIX, ".tmp_", ".trash_")
        folders = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(prefixes)]
        folders.sort(key=lambda p: (int(p.name.rsplit("_", 1)[-1]) if p.name[-1].isdigit() else -1, p.name))
    rows, ok, resumable = [], True, None
    for p in folders:
        size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) / 2**20
        if p.name.startswith(".tmp_"):
            state = "incomplete write (ignored, removed by the next save)"
        elif p.name.startswith(".trash_"):
            state = "interrupted deletion (ignored, removed by the next save)"
        elif not (p / META).exists():
            state, ok = "incomplete: no meta.json (ignored)", False
        else:
            problems = verify(p, checksum=checksum)
            if problems:
                state, ok = "CORRUPT: " + "; ".join(problems), False
            elif "files" not in json.loads((p / META).read_text()):
                state, resumable = "unverified (written before minivdit recorded sizes and checksums)", p.name
            else:
                state, resumable = ("ok (sizes and checksums)" if checksum else "ok (sizes)"), p.name
        rows.append((p.name, f"{size:10.1f} MiB  {state}"))
    return rows, ok, resumable


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minivdit.ckpt", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("verify", help="list every checkpoint of a run and whether it verifies")
    v.add_argument("run_dir", type=Path, help="a run directory, its checkpoints/ folder, or one checkpoint")
    v.add_argument("--no-checksum", action="store_true", help="check sizes only (no reading)")
    args = parser.parse_args(argv)
    try:
        rows, ok, resumable = describe(args.run_dir, checksum=not args.no_checksum)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, state in rows:
        print(f"{name:16s} {state}")
    if not rows:
        print(f"{args.run_dir}: no checkpoints")
    if (args.run_dir / META).exists():  # one checkpoint: what --resume auto takes depends on the others
        folder = args.run_dir.resolve().parent
        run = folder.parent if folder.name == "checkpoints" else folder
        print(
            "--resume auto takes the run's newest checkpoint that verifies; to see which: "
            f"python -m minivdit.ckpt verify {run}"
        )
    else:
        fallback = "nothing: no checkpoint verifies (it refuses)" if not ok else "nothing (starts fresh)"
        print(f"--resume auto takes: {resumable or fallback}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
