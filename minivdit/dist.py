"""Process setup and model parallelisation: the only module that talks to ``torch.distributed``.

- ``init()`` works under ``torchrun`` (env ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``) and as a plain ``python``
  process (a world of one, no process group). NCCL on CUDA, gloo on CPU.
- ``parallelize(model, cfg, ctx)`` applies, in torchtitan's order: activation checkpointing →
  ``torch.compile``
  per block → FSDP2 (``fully_shard`` per block, then the root) or DDP. Call it on a model built on the
  ``meta``
  device, then ``to_empty`` + ``init_weights`` (or load weights): one code path for one GPU and many nodes.
- Precision: ``"bf16"`` means FSDP2 ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`` on CUDA, and
  bf16 autocast otherwise (``autocast()``); master weights and optimizer state stay fp32 either way.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn as nn

log = logging.getLogger(__name__)
Precision = Literal["fp32", "bf16"]


@dataclass(frozen=True, kw_only=True)
class ParallelConfig:
    """How the trainable model is wrapped for data parallelism."""

    strategy: Literal["auto", "fsdp", "ddp", "none"] = "auto"
    """``auto``: FSDP2 when world > 1 on CUDA, DDP when world > 1 on CPU, nothing in a world of one."""
    activation_checkpointing: bool = False
    """Recompute each block in the backward pass (saves activation memory, costs ~1/3 more compute)."""
    compile: bool = False
    """``torch.compile`` each block (cold start ~30 s on CPU; worth it on GPUs)."""


@dataclass(frozen=True)
class DistContext:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def init() -> DistContext:
    """Initialise the process group when launched by torchrun; pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend,
            timeout=datetime.timedelta(minutes=30),
            device_id=device if device.type == "cuda" else None,
        )
    return DistContext(rank=rank, world=world, local_rank=local_rank, device=device)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean over ranks (identity in a world of one). Used at log time only."""
    if dist.is_initialized():
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.AVG if t.is_cuda else dist.ReduceOp.SUM)
        if not t.is_cuda:  # gloo has no AVG
            t /= dist.get_world_size()
    return t


def broadcast_object(obj):
    """rank 0's Python object on every rank."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def resolve_strategy(cfg: ParallelConfig, ctx: DistContext) -> str:
    if cfg.strategy != "auto":
        if cfg.strategy != "none" and not ctx.distributed:
            return "none"
        return cfg.strategy
    if not ctx.distributed:
        return "none"
    return "fsdp" if ctx.device.type == "cuda" else "ddp"


def parallelize(
    model: nn.Module, cfg: ParallelConfig, ctx: DistContext, precision: Precision, *, trainable: bool = True
) -> nn.Module:
    """AC → compile → FSDP2 / DDP on a (meta-built) model with a ``blocks`` ModuleList. ``trainable=False``
    (the
    EMA copy) skips AC and compile and never uses DDP (it has no gradients to reduce)."""
    strategy = resolve_strategy(cfg, ctx)
    if trainable and cfg.activation_checkpointing:
        model.grad_checkpointing = True  # per-block torch.utils.checkpoint inside the block loop
    if trainable and cfg.compile:
        for block in model.blocks:
            block.compile()  # in place: parameter names are unchanged
    if strategy == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = None
        if precision == "bf16" and ctx.device.type == "cuda":
            mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        kw = {"mp_policy": mp} if mp is not None else {}
        for block in model.blocks:
            fully_shard(block, **kw)
        fully_shard(model, **kw)
    elif strategy == "ddp" and trainable:
        model = _LazyDDP(model, ctx)
    return model


def parallelize_replicated(module: nn.Module, ctx: DistContext) -> nn.Module:
    """A small trainable module kept whole on every rank (the alignment head): DDP over a materialised module
    when distributed, the module itself otherwise. Its parameters must already be equal on every rank."""
    if not ctx.distributed:
        return module
    wrapped = _LazyDDP(module, ctx)
    wrapped.materialize()
    return wrapped


class _LazyDDP(nn.Module):
    """DDP must be built on materialised parameters, but we parallelise on ``meta``: wrap after ``init``.
    Attribute access falls through to the inner model, so callers keep calling ``init_weights`` etc."""

    def __init__(self, module: nn.Module, ctx: DistContext):
        super().__init__()
        self.module, self._ctx, self._ddp = module, ctx, None

    def materialize(self) -> None:
        from torch.nn.parallel import DistributedDataParallel

        ids = [self._ctx.device.index] if self._ctx.device.type == "cuda" else None
        self._ddp = DistributedDataParallel(self.module, device_ids=ids)

    def forward(self, *args, **kwargs):
        if self._ddp is None:
            raise RuntimeError("DDP model used before materialize(); call minivdit.dist.materialize(model)")
        return self._ddp(*args, **kwargs)

    def no_sync(self):
        return self._ddp.no_sync()


def materialize(model: nn.Module, device: torch.device, *, init: bool = True) -> None:
    """``to_empty`` on the device, then ``init_weights()`` (optional), then build DDP if wrapped."""
    model.to_empty(device=device)
    if init:
        unwrap(model).init_weights()
    if isinstance(model, _LazyDDP):
        model.materialize()


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model under a DDP wrapper (FSDP2 modifies the module in place: nothing to unwrap)."""
    return model.module if isinstance(model, _LazyDDP) else model


def sync_grads(model: nn.Module, enabled: bool):
    """Context for one micro-batch of gradient accumulation: no gradient reduction unless ``enabled``."""
    if isinstance(model, _LazyDDP) and not enabled:
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(enabled)
    return contextlib.nullcontext()


def autocast(device: torch.device, precision: Precision):
    """bf16 autocast for ``precision="bf16"`` (also on top of FSDP's bf16 params: it handles stray fp32
    ops)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def is_sharded(t: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor, or the tensor itself."""
    return t.to_local() if is_sharded(t) else t
