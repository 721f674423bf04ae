"""Process setup and model parallelisation: the only module that talks to ``torch.distributed``.

- ``init()`` works under ``torchrun`` (env ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``), under ``srun`` (SLURM's
  ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID``) and as a plain ``python`` process (a world of one, no
  process group). NCCL on CUDA, gloo on CPU.
- ``parallelize(model, cfg, ctx)`` applies, in torchtitan's order: activation checkpointing →
  ``torch.compile`` per block → FSDP2 (``fully_shard`` per block, then the root) or DDP. Call it on a model
  built on the ``meta`` device, then ``materialize`` (``to_empty`` + ``init_weights``) or
  ``materialize(init=False)`` + ``load_pretrained``: one code path for one GPU and many nodes, for every
  backbone whose repeated blocks are an ``nn.ModuleList`` named in ``BLOCK_LISTS`` (``block_list``).
- ``load_pretrained(model, folder)`` fills a materialised (sharded or not) model from a diffusers folder, one
  tensor at a time: no rank ever holds the full model; ``init_lora(model, seed)`` then initialises LoRA
  layers identically for every strategy and world size.
- Context parallelism (``ParallelConfig.cp``): ``init(cp)`` builds the (dp, cp) device mesh, cp inner, and
  ``parallelize`` gives the backbone its group (``models/context_parallel.py``); FSDP2 / DDP still span the
  whole world, which averages the context group's partial gradients correctly (see that module).
- Precision: ``"bf16"`` means FSDP2 ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`` on CUDA, and
  bf16 autocast otherwise (``autocast()``); master weights and optimizer state stay fp32 either way.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn as nn

from minivdit.config import check_types
from minivdit.models import context_parallel
from minivdit.models.checkpointing import Checkpointing
from minivdit.models.context_parallel import ContextParallel

log = logging.getLogger(__name__)
Precision = Literal["fp32", "bf16"]


@dataclass(frozen=True, kw_only=True)
class ParallelConfig:
    """How the trainable model is wrapped for data parallelism."""

    strategy: Literal["auto", "fsdp", "ddp", "none"] = "auto"
    """``auto``: FSDP2 when world > 1 on CUDA, DDP when world > 1 on CPU, nothing in a world of one."""
    activation_checkpointing: bool = False
    """Recompute each block in the backward pass (saves activation memory, costs ~1/3 more compute)."""
    ac_every: int = 1
    """With activation checkpointing: recompute every k-th block only, the others keep their activations
    (torchtitan's ``selective_ac_option="k"``; ``models/checkpointing.py``)."""
    ac_ops: bool = False
    """With activation checkpointing: op-level selective — keep the matmul and attention outputs of a
    recomputed block, recompute only its element-wise ops (torchtitan's ``"op"``)."""
    cpu_offload: bool = False
    """FSDP2's ``CPUOffloadPolicy``: the sharded parameters, gradients and AdamW state (and the EMA) live in
    pinned CPU memory and the optimizer step runs on the CPU; each block is copied to the GPU for its
    forward and backward. A full fine-tune then fits on fewer GPUs, at the cost of PCIe traffic and a CPU
    optimizer step. Needs the FSDP strategy."""
    float8: bool = False
    """Float8 training of the blocks' Linear layers (``torchao.float8.convert_to_float8_training``, dynamic
    tensorwise scaling, as torchtitan): needs a CUDA GPU with float8 tensor cores (H100 / H200 / Ada) and
    ``pip install torchao`` (imported only then)."""
    compile: bool = False
    """``torch.compile`` each block (cold start ~30 s on CPU; worth it on GPUs)."""
    cp: int = 1
    """Context parallelism (Ulysses, ``models/context_parallel.py``): each clip's tokens are split over
    groups of ``cp`` consecutive ranks, which train on the same batch; the data-parallel degree is
    world / cp. For CogVideoX, Wan and the full-3-D V-DiT; tokens and heads must be divisible by cp."""

    @property
    def checkpointing(self) -> bool | Checkpointing:
        """What a backbone's ``grad_checkpointing`` is set to (``models/checkpointing.py``)."""
        return Checkpointing(self.ac_every, self.ac_ops) if self.activation_checkpointing else False

    def __post_init__(self):
        check_types(self)
        if self.cp < 1:
            raise ValueError(f"ParallelConfig.cp must be >= 1, got {self.cp}")
        if self.ac_every < 1:
            raise ValueError(f"ParallelConfig.ac_every must be >= 1, got {self.ac_every}")
        if self.cpu_offload and self.strategy not in ("auto", "fsdp"):
            raise ValueError(
                f"ParallelConfig.cpu_offload is FSDP2's CPUOffloadPolicy: it needs --parallel.strategy fsdp "
                f"(got {self.strategy!r})"
            )
        if (self.ac_every > 1 or self.ac_ops) and not self.activation_checkpointing:
            raise ValueError(
                "ParallelConfig.ac_every / ac_ops choose which activations are recomputed: they need "
                "--parallel.activation-checkpointing"
            )


@dataclass(frozen=True)
class DistContext:
    """This process's place: ``rank`` of ``world`` on ``device``. With context parallelism the world is a
    (dp, cp) mesh, cp the inner dimension (torchtitan's order): ranks ``d·cp … d·cp + cp − 1`` form context
    group d, train on data-parallel shard d and split its clips' tokens (``context``)."""

    rank: int
    world: int
    local_rank: int
    device: torch.device
    cp: int = 1
    context: GroupContextParallel | None = field(default=None, compare=False)
    """This rank's context-parallel group (None when cp = 1); ``parallelize`` gives it to the backbone."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def dp_rank(self) -> int:
        """Index of this rank's data-parallel shard (its context group): what data and noise follow."""
        return self.rank // self.cp

    @property
    def dp_world(self) -> int:
        """Number of data-parallel shards: world / cp."""
        return self.world // self.cp


def launcher_env(env: dict[str, str] | None = None) -> tuple[int, int, int]:
    """``(rank, world, local_rank)`` from torchrun's variables, else from SLURM's (``srun python …``, one task
    per GPU: then the job step's exit code is the trainer's, e.g. 75 after a preemption), else a world of
    one. Under SLURM, ``MASTER_ADDR`` and ``MASTER_PORT`` must be exported by the batch script."""
    env = os.environ if env is None else env
    if "RANK" in env or "WORLD_SIZE" in env:
        return int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1")), int(env.get("LOCAL_RANK", "0"))
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in env]
        if missing:
            raise ValueError(
                f"launched by srun with {env['SLURM_NTASKS']} tasks but {' and '.join(missing)} not set: "
                f"export MASTER_ADDR=$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n 1) and "
                f"MASTER_PORT=29500 in the batch script (or launch with torchrun)"
            )
        return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", "0"))
    return 0, 1, 0


def init(cp: int = 1) -> DistContext:
    """Initialise the process group when launched by torchrun or srun; pick the device; with ``cp > 1``
    build the (dp, cp) mesh (``DistContext``; ValueError when cp does not divide the world)."""
    rank, world, local_rank = launcher_env()
    if world % cp:
        raise ValueError(f"--parallel.cp {cp} must divide the number of ranks, got world {world}")
    if world > 1:  # init_process_group's env:// rendezvous reads these
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(local_rank))
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
    context = None
    if cp > 1:
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh(device.type, (world // cp, cp), mesh_dim_names=("dp", "cp"))
        context = GroupContextParallel(cp, rank % cp, mesh.get_group("cp"))
    return DistContext(rank=rank, world=world, local_rank=local_rank, device=device, cp=cp, context=context)


def teardown(clean: bool | None = None) -> None:
    """End of a run (call it in ``finally``). On success every rank meets at a barrier first: a rank that
    destroys its group while a peer is still using it (rank 0 writing a file, a last all-gather in flight)
    can abort the process (gloo: "terminate called without an active exception"). While an exception
    propagates (``clean=None`` looks; ``True`` asserts all ranks are here) nothing is done: peers may be dead
    or stuck in a collective, and destroying then can hang (torchtitan #1342); the process is exiting."""
    if clean is None:
        clean = sys.exc_info()[0] is None
    if not dist.is_initialized() or not clean:
        return
    dist.barrier()
    dist.destroy_process_group()


class GroupContextParallel(ContextParallel):
    """``models.context_parallel.ContextParallel`` over a process group: its collectives are the autograd
    all-to-all and all-gather below (that module's docstring: why the gradients are exact)."""

    def __init__(self, size: int, rank: int, group: dist.ProcessGroup):
        super().__init__(size, rank)
        self.group = group

    def gather(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        return _CPGather.apply(x, dim, self)

    def _seq_to_heads(self, x: torch.Tensor) -> torch.Tensor:
        return _CPAllToAll.apply(x, 1, 2, self)

    def _heads_to_seq(self, x: torch.Tensor) -> torch.Tensor:
        return _CPAllToAll.apply(x, 2, 1, self)


def _all_to_all(x: torch.Tensor, scatter_dim: int, gather_dim: int, cp: GroupContextParallel) -> torch.Tensor:
    """Cut ``x`` in ``cp.size`` chunks along ``scatter_dim``, send chunk j to rank j, and concatenate what
    arrives (rank order) along ``gather_dim``."""
    send = torch.stack(x.chunk(cp.size, dim=scatter_dim)).contiguous()  # [cp, ...chunk]
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=cp.group)
    return torch.cat(recv.unbind(0), dim=gather_dim)


class _CPAllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scatter_dim: int, gather_dim: int, cp: GroupContextParallel):
        ctx.dims, ctx.cp = (scatter_dim, gather_dim), cp
        return _all_to_all(x, scatter_dim, gather_dim, cp)

    @staticmethod
    def backward(ctx, grad):  # the inverse all-to-all
        scatter_dim, gather_dim = ctx.dims
        return _all_to_all(grad, gather_dim, scatter_dim, ctx.cp), None, None, None


class _CPGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dim: int, cp: GroupContextParallel):
        ctx.dim, ctx.cp = dim, cp
        whole = x.new_empty((cp.size * x.shape[0], *x.shape[1:]))  # rank slices stacked along dim 0
        dist.all_gather_into_tensor(whole, x.contiguous(), group=cp.group)
        return torch.cat(whole.chunk(cp.size), dim=dim)

    @staticmethod
    def backward(ctx, grad):
        cp = ctx.cp
        send = torch.cat(grad.chunk(cp.size, dim=ctx.dim)).contiguous()  # rank slices stacked along dim 0
        mine = send.new_empty((send.shape[0] // cp.size, *send.shape[1:]))
        dist.reduce_scatter_tensor(mine, send, group=cp.group)  # Σ over ranks of the gradient of my slice
        return mine, None, None


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


def all_gather_object(obj) -> list:
    """Every rank's Python object, in rank order, on every rank (``[obj]`` in a world of one)."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on at least one (a tiny MAX all-reduce)."""
    if not dist.is_initialized():
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def resolve_strategy(cfg: ParallelConfig, ctx: DistContext) -> str:
    if cfg.strategy != "auto":
        if cfg.strategy != "none" and not ctx.distributed:
            return "none"
        return cfg.strategy
    if not ctx.distributed:
        return "none"
    return "fsdp" if ctx.device.type == "cuda" else "ddp"


BLOCK_LISTS = ("blocks", "transformer_blocks")
"""The contract between a backbone and ``parallelize``: its repeated blocks are an ``nn.ModuleList`` attribute
with one of these names (``VDiT.blocks``; ``CogVideoXTransformer.transformer_blocks``, diffusers' name), and
it runs them through ``torch.utils.checkpoint`` as its ``grad_checkpointing`` attribute says
(``models/checkpointing.py``)."""


def block_list(model: nn.Module) -> nn.ModuleList:
    """The model's repeated blocks (``BLOCK_LISTS``): the units of FSDP2 sharding, compile and checkpointing.
    A wrapper around a backbone (``FlashI2V``: ``.base``, its own layers outside the blocks) gives its
    backbone's. ``ValueError`` naming the model class when it has none."""
    inner = unwrap(model)
    while True:
        for name in BLOCK_LISTS:
            blocks = getattr(inner, name, None)
            if isinstance(blocks, nn.ModuleList):
                return blocks
        base = getattr(inner, "base", None)
        if not isinstance(base, nn.Module):
            break
        inner = base  # the wrapper's layers stay in the root FSDP2 group (parallelize shards the root last)
    raise ValueError(
        f"{type(inner).__name__} has no block list: parallelize needs its blocks as an nn.ModuleList "
        f"attribute named one of {BLOCK_LISTS}"
    )


def parallelize(
    model: nn.Module, cfg: ParallelConfig, ctx: DistContext, precision: Precision, *, trainable: bool = True
) -> nn.Module:
    """AC → compile → FSDP2 / DDP on a (meta-built) model whose blocks ``block_list`` finds (VDiT, CogVideoX,
    with or without LoRA). ``trainable=False`` (the EMA copy) skips AC and compile and never uses DDP (it has
    no gradients to reduce). Frozen parameters (LoRA's base) are fine: FSDP2 shards them with the trainable
    ones of their block and reduces only gradients that exist; DDP (``find_unused_parameters=False``) ignores
    parameters with ``requires_grad=False``, so freeze *before* ``materialize`` builds it."""
    strategy = resolve_strategy(cfg, ctx)
    if cfg.cpu_offload and strategy != "fsdp":
        raise ValueError(
            f"--parallel.cpu-offload needs FSDP (--parallel.strategy fsdp); this run resolved to {strategy!r}"
        )
    if trainable and cfg.float8:
        to_float8(model, ctx.device)
    if trainable and ctx.context is not None:
        context_parallel.enable(model, ctx.context)  # the backbone splits tokens, its attention trades them
    if trainable and cfg.activation_checkpointing:
        if not hasattr(model, "grad_checkpointing"):
            raise ValueError(f"{type(model).__name__} has no grad_checkpointing flag: cannot checkpoint it")
        # per-block torch.utils.checkpoint inside the block loop (models/checkpointing.py)
        model.grad_checkpointing = cfg.checkpointing
    if trainable and cfg.compile:
        blocks = block_list(model)
        log.info(  # compiling is lazy: the first step does it, silently, before its first status line
            f"compiling the model's {len(blocks)} blocks with torch.compile (--parallel.compile): the first "
            f"step takes ~30 s longer on a CPU (minutes for a large model on a GPU)"
        )
        for block in blocks:
            block.compile()  # in place: parameter names are unchanged
    if strategy == "fsdp":
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

        mp = None
        if precision == "bf16" and ctx.device.type == "cuda":
            mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        kw = {"mp_policy": mp} if mp is not None else {}
        if cfg.cpu_offload:  # pinned host memory needs CUDA; a CPU run (the tests) offloads unpinned
            kw["offload_policy"] = CPUOffloadPolicy(pin_memory=torch.cuda.is_available())
        for block in block_list(model):
            fully_shard(block, **kw)
        fully_shard(model, **kw)
    elif strategy == "ddp" and trainable:
        model = _LazyDDP(model, ctx)
    return model


def to_float8(model: nn.Module, device: torch.device) -> None:
    """Swap the plain ``nn.Linear`` layers of the model's blocks for torchao's ``Float8Linear`` (parameter
    names unchanged; LoRA layers and dimensions not divisible by 16 are left alone, as torchtitan filters).
    Refused with a clear message without a CUDA GPU of compute capability ≥ 8.9 or without torchao."""
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 9):
        where = device.type if device.type != "cuda" else torch.cuda.get_device_name(device)
        raise ValueError(
            f"--parallel.float8 needs a CUDA GPU with float8 tensor cores (H100 / H200 / L40S / RTX 4090, "
            f"compute capability >= 8.9); this run is on {where}"
        )
    try:
        from torchao.float8 import convert_to_float8_training
    except ImportError as e:
        raise ValueError(f"--parallel.float8 needs torchao: pip install torchao ({e})") from None

    def eligible(module: nn.Module, fqn: str) -> bool:
        return type(module) is nn.Linear and module.in_features % 16 == 0 and module.out_features % 16 == 0

    for block in block_list(model):
        convert_to_float8_training(block, module_filter_fn=eligible)


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


def buffers_to(model: nn.Module, device: torch.device) -> None:
    """Every buffer of the model on ``device``, parameters left where they are (FSDP2's CPU offload)."""
    for module in model.modules():
        for name, buf in module._buffers.items():
            if buf is not None:
                module._buffers[name] = buf.to(device)


@torch.no_grad()
def load_pretrained(model: nn.Module, folder: str | Path) -> Path:
    """Fill a materialised model (``materialize(model, device, init=False)``; sharded by FSDP2, wrapped in
    DDP or plain) from a diffusers transformer folder (``folder`` or ``folder/transformer``, located by
    ``minivdit.models.cogvideox``): the single safetensors file or the shards of its index. Returns the
    transformer folder.

    Every rank reads the files itself, one tensor at a time in the file's dtype, casts it to the model
    tensor's dtype and keeps only its own FSDP2 shard (``distribute_tensor`` with ``src_data_rank=None``:
    local slicing, no communication): beyond its shards a rank holds one full tensor at a time (the file's
    copy and its cast), never the whole model.
    Before anything is written the file headers are checked: every parameter and persistent buffer must be
    in exactly one file with its shape, and nothing else (``ValueError`` naming the folder, listing missing,
    unexpected, duplicated and mis-shaped keys). LoRA layers (``apply_lora``) are mapped: the file's
    ``X.weight`` loads into ``X.base.weight``; ``lora_A`` / ``lora_B`` are not in the files and are left for
    ``init_lora``. Under a ``FlashI2V`` wrapper the backbone is loaded; the wrapper's own layers are left
    for its ``init_weights``. Non-persistent buffers (sin-cos tables) are rebuilt (``reset_buffers``). The
    config is the caller's (build the model from the folder's config.json); mismatches of shape-free
    diffusers config fields are logged as warnings."""
    from safetensors import safe_open

    from minivdit.models.cogvideox import pretrained_folder, weight_files
    from minivdit.models.lora import lora_modules, peft_root

    inner = peft_root(unwrap(model))  # under FlashI2V: its backbone (the wrapper's φ is not in the files)
    folder = pretrained_folder(folder)
    files = weight_files(folder)
    cfg = getattr(inner, "cfg", None)
    if hasattr(cfg, "from_json") and hasattr(cfg, "to_dict"):  # CogVideoXConfig, DiTConfig
        theirs, ours = type(cfg).from_json(folder / "config.json").to_dict(), cfg.to_dict()
        if differ := {k: (theirs[k], ours[k]) for k in ours if theirs[k] != ours[k]}:
            log.warning("%s: config.json differs from the model's config (file, model): %s", folder, differ)

    tensors = dict(inner.named_parameters()) | dict(inner.named_buffers())
    targets = {k: tensors[k] for k in inner.state_dict()}  # parameters and persistent buffers
    if meta := [k for k, t in targets.items() if t.is_meta]:
        raise ValueError(f"load_pretrained: {meta[0]!r} is on meta; call materialize(..., init=False) first")
    rename = {}  # file key -> model key, for the base Linears LoRA wrapped
    for name in lora_modules(inner):
        targets.pop(f"{name}.lora_A.weight")
        targets.pop(f"{name}.lora_B.weight")
        rename |= {f"{name}.{leaf}": f"{name}.base.{leaf}" for leaf in ("weight", "bias")}

    where: dict[str, list[Path]] = {}  # model key -> files holding it
    shapes, unexpected = {}, []
    for file in files:  # headers only
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118
                ours = rename.get(key, key)
                if ours not in targets:
                    unexpected.append(key)
                    continue
                where.setdefault(ours, []).append(file)
                shapes[ours] = tuple(f.get_slice(key).get_shape())
    problems = []
    if missing := sorted(targets.keys() - where.keys()):
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {sorted(unexpected)}")
    if twice := {k: [p.name for p in ps] for k, ps in where.items() if len(ps) > 1}:
        problems.append(f"keys in more than one file {twice}")
    problems += [
        f"{k}: {s} in file vs {tuple(targets[k].shape)} in model"
        for k, s in shapes.items()
        if s != tuple(targets[k].shape)
    ]
    if problems:
        raise ValueError(f"{folder}: weights do not fit {type(inner).__name__}: " + "; ".join(problems))

    back = {v: k for k, v in rename.items()}
    for file in files:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for ours in [k for k, ps in where.items() if ps[0] == file]:
                _copy_full(targets[ours], f.get_tensor(back.get(ours, ours)))
    if hasattr(inner, "reset_buffers"):
        inner.reset_buffers()  # non-persistent tables: garbage after to_empty, not in the files
    return folder


@torch.no_grad()
def init_lora(model: nn.Module, seed: int) -> int:
    """``LoRALinear.init_weights`` (A kaiming-uniform, B = 0) for every LoRA layer of a materialised model,
    the same for every strategy, world size and device: exactly the values of ``torch.manual_seed(seed);
    init_lora_weights(model)`` on the CPU in one process. Each layer's A and B are drawn whole on the CPU
    (from a forked RNG: the global state is left as it was) and each rank keeps its shard. Use it instead of
    ``init_lora_weights`` on an FSDP2 model: initialising DTensors in place draws from each rank's own RNG,
    and on CPU, where DTensor has no RNG tracker, every rank then draws the same values for its own rows
    (A's rank r shrinks to r / world). Returns the number of layers; base weights are untouched."""
    from minivdit.models.lora import LoRALinear, lora_modules

    layers = lora_modules(unwrap(model))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in layers.values():  # module order, as init_lora_weights
            A, B = m.lora_A.weight, m.lora_B.weight
            shape = nn.Linear(A.shape[1], B.shape[0], bias=False, device="meta")
            whole = LoRALinear(shape, m.rank, m.alpha, dtype=A.dtype)  # on meta: not initialised yet
            whole.lora_A.to_empty(device="cpu")
            whole.lora_B.to_empty(device="cpu")
            whole.init_weights()
            _copy_full(A, whole.lora_A.weight)
            _copy_full(B, whole.lora_B.weight)
    return len(layers)


def _copy_full(dst: torch.Tensor, full: torch.Tensor) -> None:
    """Copy the whole tensor ``full`` (the same on every rank) into a parameter or buffer, cast to its dtype;
    into an FSDP2 DTensor only this rank's shard, sliced locally (no communication)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    full = full.to(dtype=dst.dtype)
    if isinstance(dst, DTensor):
        full = distribute_tensor(full, dst.device_mesh, dst.placements, src_data_rank=None)
    dst.copy_(full)


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
