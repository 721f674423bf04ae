"""Will a run fit, and how long will a step take? ``python -m minivdit.plan RECIPE [--plan.*] [overrides]``

Predicted from the config alone, before any weight is loaded (issue 21 §5):

- **Static terms** from the model built on ``meta`` exactly as the trainer builds it (``train.build_model``:
  LoRA, frozen layers): fp32 parameters, fp32 gradients of the trained ones, AdamW's two fp32 moments, the
  EMA (a whole fp32 copy of the model, as ``train.build_models`` keeps it); each divided by the world size
  under FSDP. FSDP adds its gathered blocks (the current and the prefetched one, in the compute dtype);
  bf16 under autocast without FSDP adds autocast's cached bf16 copy of the trained weights.
- **Activations** by tracing one training forward and backward of the real model on ``meta`` tensors with
  the run's per-GPU batch, compute dtype, attention kernel and activation checkpointing mode: every storage
  the trace allocates is counted when created and when freed (``minivdit/memory.py``), so ``activations``
  is what the forward keeps for backward and ``workspace`` the rest of the step's peak (the largest
  transient of the forward or the backward; each parameter's gradient is released as soon as it is
  accumulated, as FSDP's reduce-scatter does, since gradients are their own term). Attention is traced as
  the kernel the run uses on a GPU (flash, or memory-efficient with a mask: O(L) memory), not as the L×L
  math fallback a ``meta`` SDPA would decompose into.
- **The batch** on the device (the pixels, unless latents are cached, and the cached tensors).
- **Frozen encoders** that would be resident: the VAE unless the shards cache latents, the text encoder or
  VLM unless they cache text, the alignment teachers unless they cache features; their size is read from
  the safetensors headers of their folders (no weights read); a folder that is not there is named and not
  counted.
- **FLOPs** of the step by ``torch.utils.flop_counter`` on the same trace (model FLOPs: forward + backward;
  activation checkpointing's recomputation is reported beside them), and the step time: all executed
  FLOPs at ``--plan.mfu`` of the GPU's dense bf16 (TF32 for fp32) peak.
- **A verdict**: the total against the GPU's memory less ``--plan.reserve-gib`` (CUDA context, NCCL and
  allocator fragmentation), the largest term named, and the levers (activation checkpointing, its
  selective modes, LoRA, more GPUs under FSDP, CPU offload, batch 1) each re-planned, so the table says what
  each one would give.

- **Context parallelism** (``--parallel.cp``): the trace is one rank's, with its L/cp tokens and H/cp heads in
  attention (``models/context_parallel.py`` with a simulated group: the all-to-alls and gathers become local
  copies of the same shapes); the batch is whole on every rank of a group.

Not modelled (the plan says so when they apply): the frozen encoders' own activations (a VAE encode of
49×480×720 pixels is a large transient; cache the latents), the alignment head and teacher features, and
the time of context parallelism's all-to-alls. Validation: ``docs/planner.md`` (measured peaks
against the predictions; ``tests/test_plan.py``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import math
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
from torch.utils.flop_counter import FlopCounterMode

from minivdit import dist
from minivdit.config import check_types
from minivdit.identity import safetensors_header
from minivdit.memory import TensorMemory
from minivdit.models import attention as attention_module
from minivdit.models import context_parallel
from minivdit.models.cogvideox import CogVideoXConfig
from minivdit.models.cond import Cond
from minivdit.models.context_parallel import ContextParallel
from minivdit.models.wan import WanConfig

GiB = 2**30


@dataclass(frozen=True)
class GPU:
    memory_gib: float
    """What ``torch.cuda.get_device_properties().total_memory`` reports."""
    bf16_tflops: float
    """Dense bf16 tensor-core peak."""
    tf32_tflops: float
    """Dense TF32 tensor-core peak (fp32 runs)."""


GPUS = {
    "h100": GPU(79.2, 989.0, 494.7),  # H100 SXM5 80 GB
    "h200": GPU(139.8, 989.0, 494.7),  # H200 SXM 141 GB
    "a100-80g": GPU(79.2, 312.0, 156.0),
    "a100-40g": GPU(39.4, 312.0, 156.0),
    "l40s": GPU(44.4, 362.0, 183.0),
}


@dataclass(frozen=True)
class PlanConfig:
    """The machine a plan is for (``--plan.*`` flags)."""

    gpus: int = 1
    """GPUs in the run (the world size)."""
    gpu: Literal["h100", "h200", "a100-80g", "a100-40g", "l40s"] = "h100"
    mfu: float = 0.35
    """The fraction of the GPU's dense peak the step sustains on the FLOPs it executes (activation
    checkpointing's recomputation included): the step time is (model + recomputed FLOPs) / (peak · mfu), so
    the MFU proper of a checkpointed run is lower by the recomputed share."""
    reserve_gib: float = 2.0
    """Memory the CUDA context, NCCL buffers and fragmentation take from each GPU."""
    levers: bool = True
    """Also re-plan each lever (slower: one trace each)."""

    def __post_init__(self):
        check_types(self)
        if self.gpus < 1 or not 0 < self.mfu <= 1:
            raise ValueError(f"PlanConfig: need gpus >= 1 and 0 < mfu <= 1, got {self.gpus}, {self.mfu}")


@dataclass
class Plan:
    """Per-GPU memory terms (bytes), FLOPs and the verdict of one configuration."""

    terms: dict[str, float]
    flops: float
    """Model FLOPs of one optimizer step on one GPU (forward + backward, all micro-batches)."""
    recomputed_flops: float
    """Extra FLOPs activation checkpointing spends recomputing forwards."""
    step_seconds: float
    capacity: float
    notes: list[str] = field(default_factory=list)
    about: str = ""

    @property
    def total(self) -> float:
        return sum(self.terms.values())

    @property
    def fits(self) -> bool:
        return self.total <= self.capacity

    @property
    def largest(self) -> str:
        return max(self.terms, key=self.terms.get)


# ---------------------------------------------------------------------------------------------- the trace


def _attention_for_plan(device_type: str):
    """``models.attention._sdpa`` as the kernel a real run would call (flash / memory-efficient on CUDA,
    the CPU flash kernel on a CPU), on meta tensors: O(L) memory, not the decomposed L×L math path."""

    def sdpa(q, k, v, mask=None):
        aten = torch.ops.aten
        if device_type == "cpu":
            bias = None if mask is None else mask[:, None, None, :]
            return aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False, attn_mask=bias)[0]
        if mask is None:
            return aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False)[0]
        bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, -math.inf)
        bias = bias[:, None, None, :].expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
        return aten._scaled_dot_product_efficient_attention(q, k, v, bias, True, 0.0, False)[0]

    return sdpa


def example_inputs(cfg, batch: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, Cond]:
    """``(x_t, t_model, cond)`` on meta as the trainer feeds the backbone of ``cfg`` (a ``TrainConfig``)."""
    m, B, meta = cfg.model, batch, {"device": "meta", "dtype": dtype}
    t = torch.empty(B, device="meta")
    if isinstance(m, (CogVideoXConfig, WanConfig)):
        h, w = m.latent_size
        x = torch.empty(B, m.frames, m.out_channels, h, w, **meta)
        text_dim = m.text_embed_dim if isinstance(m, CogVideoXConfig) else m.text_dim
        text_len = m.max_text_seq_length if isinstance(m, CogVideoXConfig) else cfg.text.max_length
        extra = m.in_channels - m.out_channels
        if cfg.uniworld is not None:  # the VLM's hidden states, all positions (conditioning/vlm.py)
            text_len, text_dim = cfg.vlm.max_length, cfg.uniworld.vlm_dim
        cond = Cond(
            context=torch.empty(B, text_len, text_dim, **meta),
            image_latents=torch.empty(B, m.frames, extra, h, w, **meta) if extra else None,
            image_context=torch.empty(B, 257, m.image_dim, **meta)
            if isinstance(m, WanConfig) and m.image_dim
            else None,
        )
    else:
        x = torch.empty(B, m.num_frames, m.in_channels, *m.input_size, **meta)
        label = torch.zeros(B, dtype=torch.long, device="meta") if m.num_classes else None
        cond = Cond(label=label)
    if cfg.flashi2v is not None:  # the start frame's latent, encoded alone: [B, 1, C, h, w]
        cond = dataclasses.replace(cond, image_latents=torch.empty(B, 1, *x.shape[2:], **meta))
    return x, t, cond


def trace(cfg, *, batch: int, dtype: torch.dtype, device_type: str) -> dict:
    """One training forward + backward of ``cfg``'s model on meta: ``activations`` (bytes the forward keeps),
    ``peak`` (the step's peak above what existed before it), ``flops`` (all executed, recomputation
    included) and ``model_flops`` (one forward + backward, without recomputation)."""
    from minivdit.train import build_model

    with torch.device("meta"):
        model = build_model(cfg).to(dtype)
    model.train()
    if cfg.parallel.cp > 1:  # one rank of a context group: its L/cp tokens, collectives as local copies
        context_parallel.enable(model, ContextParallel(cfg.parallel.cp, 0))

    def release(p: torch.Tensor) -> None:
        p.grad = None  # gradients are their own term (FSDP reduce-scatters and frees each block's)

    for p in model.parameters():
        if p.requires_grad:
            p.register_post_accumulate_grad_hook(release)
    x, t, cond = example_inputs(cfg, batch, dtype)
    ac = cfg.parallel.checkpointing

    def step(checkpointing, mode) -> int:
        """Forward + backward under ``mode``; returns ``mode.live`` after the forward when it has one."""
        model.grad_checkpointing = checkpointing
        with _patched(attention_module, "_sdpa", _attention_for_plan(device_type)), mode:
            pred = model(x, t, cond).pred
            kept = getattr(mode, "live", 0)
            pred.float().square().mean().backward()
        return kept

    # Separate passes: FlopCounterMode's module tracking keeps recomputed activations alive a while longer
    mem = TensorMemory()
    out = {"activations": step(ac, mem)}
    out["peak"] = mem.peak
    counter = FlopCounterMode(display=False)
    step(False, counter)
    out["model_flops"] = out["flops"] = float(counter.get_total_flops())
    if ac is not False:
        counter = FlopCounterMode(display=False)
        step(ac, counter)
        out["flops"] = float(counter.get_total_flops())
    return out


@contextlib.contextmanager
def _patched(module, name: str, value):
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


# ------------------------------------------------------------------------------------------- frozen encoders


def safetensors_bytes(folder: Path) -> int:
    """Bytes of every tensor in the ``*.safetensors`` files of ``folder`` (recursively), read from the file
    headers only (``minivdit.identity.safetensors_header``)."""
    total = 0
    for path in sorted(Path(folder).rglob("*.safetensors")):
        header = json.loads(safetensors_header(path))
        tensors = [v for k, v in header.items() if k != "__metadata__"]
        total += sum(v["data_offsets"][1] - v["data_offsets"][0] for v in tensors)
    return total


def _cached_fields(cfg) -> set[str]:
    """Fields the run's shards cache (their ``meta.json``), empty without shards."""
    root = cfg.data.root
    meta = Path(root) / "meta.json" if root else None
    if meta is None or not meta.is_file():
        return set()
    return set(json.loads(meta.read_text()).get("fields", {}))


def frozen_encoders(cfg, cached: set[str]) -> tuple[dict[str, float], list[str]]:
    """Bytes of each frozen encoder the run keeps on the GPU, and notes on the ones left out; ``cached``: the
    fields the run's shards cache (``_cached_fields``)."""
    out, notes = {}, []
    wanted = []
    if cfg.vae.kind != "none" and cfg.vae.path:
        if "latents" in cached:
            notes.append("VAE not loaded: the shards cache the latents")
        else:
            wanted.append(("VAE", Path(cfg.vae.path) / ("vae" if cfg.vae.kind == "wan" else "")))
    for name, path in (("text encoder", cfg.text.path), ("VLM", cfg.vlm.path)):
        if path is None:
            continue
        if "text" in cached:
            notes.append(f"{name} not loaded: the shards cache its features")
        else:
            sub = Path(path) / "text_encoder"
            wanted.append((name, sub if name == "text encoder" and sub.is_dir() else Path(path)))
    if cfg.align is not None:
        teachers = {k: v for k, v in vars(cfg.align.teachers).items() if isinstance(v, str)}
        for name, path in teachers.items():
            if "feats" in cached:
                notes.append(f"teacher {name} not loaded: the shards cache its features")
            else:
                wanted.append((f"teacher {name}", Path(path)))
    for name, folder in wanted:
        if folder.is_dir():
            out[f"frozen {name} ({folder})"] = float(safetensors_bytes(folder))
        else:
            notes.append(f"frozen {name}: {folder} not found, not counted")
    return out, notes


# ---------------------------------------------------------------------------------------------- the plan


def plan(cfg, pc: PlanConfig, *, device_type: str = "cuda") -> Plan:
    """The per-GPU memory terms, FLOPs and step time of ``cfg`` (a ``TrainConfig``) on ``pc``'s machine
    (module docstring). ``device_type="cpu"``: as a CPU run computes (fp32 autocast-free, the CPU attention
    kernel): the validation against measured peaks (``tests/test_plan.py``)."""
    from minivdit.train import build_model

    world, gpu = pc.gpus, GPUS[pc.gpu]
    if world % cfg.parallel.cp:
        raise ValueError(f"--parallel.cp {cfg.parallel.cp} must divide --plan.gpus {world}")
    ctx = dist.DistContext(rank=0, world=world, local_rank=0, device=torch.device(device_type))
    strategy = dist.resolve_strategy(cfg.parallel, ctx)
    shard = world if strategy == "fsdp" else 1
    bf16 = cfg.precision == "bf16" and device_type == "cuda"
    dtype = torch.bfloat16 if bf16 else torch.float32
    with torch.device("meta"):
        model = build_model(cfg)
    params = [p for p in model.parameters()]
    total = sum(p.numel() for p in params)
    trained = sum(p.numel() for p in params if p.requires_grad)
    terms = {
        f"parameters (fp32{f', 1/{shard}' if shard > 1 else ''})": 4 * total / shard,
        "gradients (fp32, trained weights)": 4 * trained / shard,
        "AdamW moments (2 × fp32)": 8 * trained / shard,
    }
    if cfg.ema.enabled:
        terms["EMA (fp32 copy of the model)"] = 4 * total / shard
    host = 0.0
    if cfg.parallel.cpu_offload:  # FSDP2's CPUOffloadPolicy: the sharded state lives in host memory
        host, terms = sum(terms.values()), {}
    if strategy == "fsdp":
        blocks = dist.block_list(model)
        largest_block = max(sum(p.numel() for p in b.parameters()) for b in blocks)
        terms["FSDP gathered blocks (current + prefetched)"] = 2 * largest_block * dtype.itemsize
        if cfg.parallel.cpu_offload:  # a block's unsharded gradients, before they are reduced and copied out
            trained_block = max(sum(p.numel() for p in b.parameters() if p.requires_grad) for b in blocks)
            terms["a block's gradients on the device (offload)"] = 4 * trained_block
    elif bf16:
        terms["autocast's bf16 copy of the trained weights"] = 2 * trained
    B, A = cfg.data.batch_size, cfg.grad_accum
    traced = trace(cfg, batch=B, dtype=dtype, device_type=device_type)
    terms["activations kept for backward"] = traced["activations"]
    terms["forward / backward workspace"] = max(traced["peak"] - traced["activations"], 0)
    cached = _cached_fields(cfg)  # meta.json, read once
    terms["batch on the device"] = _batch_bytes(cfg, B, cached)
    frozen, notes = frozen_encoders(cfg, cached)
    terms |= frozen
    if host:
        notes.append(
            f"CPU offload: parameters, gradients, AdamW state and EMA in host memory, {host / GiB:.3g} GiB "
            f"per rank; the optimizer step runs on the CPU (not in the step time)"
        )
    if cfg.vae.kind != "none" and "latents" not in cached:
        notes.append(
            "the VAE encode's own activations are not counted (a large transient: cache the latents)"
        )
    if cfg.align is not None:
        notes.append("the alignment head and teacher activations are not counted")
    if cfg.parallel.cp > 1:
        notes.append(
            f"context parallelism: each GPU holds 1/{cfg.parallel.cp} of the tokens and of the attention "
            f"heads' work; the all-to-alls' time is not in the step time"
        )
    peak_tflops = gpu.bf16_tflops if cfg.precision == "bf16" else gpu.tf32_tflops
    flops = traced["model_flops"] * A
    recomputed = (traced["flops"] - traced["model_flops"]) * A
    seconds = (flops + recomputed) / (peak_tflops * 1e12 * pc.mfu)
    cp = cfg.parallel.cp
    about = (
        f"{type(model).__name__}: {total / 1e9:.3g} B parameters ({trained / 1e9:.3g} B trained), batch {B}"
        f"{f' × {A} accumulated' if A > 1 else ''} per {'context group' if cp > 1 else 'GPU'}, "
        f"{world} × {pc.gpu}{f' (dp {world // cp} × cp {cp})' if cp > 1 else ''}, {strategy}, "
        f"{_ac_name(cfg.parallel)}, {cfg.precision}"
    )
    capacity = (gpu.memory_gib - pc.reserve_gib) * GiB
    return Plan(terms, flops, recomputed, seconds, capacity, notes, about)


def _ac_name(parallel) -> str:
    if not parallel.activation_checkpointing:
        return "no activation checkpointing"
    how = "op-level selective" if parallel.ac_ops else "full"
    every = "every block" if parallel.ac_every == 1 else f"every {parallel.ac_every} blocks"
    return f"activation checkpointing ({how}, {every})"


def _batch_bytes(cfg, B: int, cached: set[str]) -> float:
    """The tensors of one micro-batch on the device: pixels (unless latents are cached) and cached fields."""
    m = cfg.model
    total = 0.0
    if "latents" not in cached:
        H, W = cfg.data.frame_size
        total += 4 * B * cfg.data.num_frames * 3 * H * W  # float32 pixels
    if isinstance(m, (CogVideoXConfig, WanConfig)):
        h, w = m.latent_size
        total += 4 * B * m.frames * m.out_channels * h * w  # latents (fp32), cached or encoded
        if "text" in cached:
            L = m.max_text_seq_length if isinstance(m, CogVideoXConfig) else cfg.text.max_length
            D = m.text_embed_dim if isinstance(m, CogVideoXConfig) else m.text_dim
            total += 2 * B * L * D  # bf16 on disk
    return total


def levers(cfg, pc: PlanConfig, base: Plan, *, device_type: str = "cuda") -> list[tuple[str, Plan]]:
    """Each lever applied to ``cfg`` alone, re-planned: ``[(flags, plan)]``, the ones that change the
    config only."""
    par = cfg.parallel
    options: list[tuple[str, object, PlanConfig]] = []
    if not par.activation_checkpointing:
        for flags, kw in (
            ("--parallel.activation-checkpointing", {}),
            ("--parallel.activation-checkpointing --parallel.ac-every 2", {"ac_every": 2}),
            ("--parallel.activation-checkpointing --parallel.ac-ops", {"ac_ops": True}),
        ):
            new = replace(par, activation_checkpointing=True, **kw)
            options.append((flags, replace(cfg, parallel=new), pc))
    if not cfg.lora.enabled and isinstance(cfg.model, (CogVideoXConfig, WanConfig)):
        options.append(("--lora.rank 64", replace(cfg, lora=replace(cfg.lora, rank=64)), pc))
    if pc.gpus < 8 or dist.resolve_strategy(par, _ctx(pc, device_type)) != "fsdp":
        options.append(
            (
                "--plan.gpus 8 --parallel.strategy fsdp",
                replace(cfg, parallel=replace(par, strategy="fsdp")),
                replace(pc, gpus=max(8, pc.gpus)),
            )
        )
    if not par.cpu_offload and not cfg.lora.enabled:
        offload = replace(par, strategy="fsdp", cpu_offload=True)
        options.append(
            (
                f"--plan.gpus {max(2, pc.gpus)} --parallel.strategy fsdp --parallel.cpu-offload",
                replace(cfg, parallel=offload),
                replace(pc, gpus=max(2, pc.gpus)),
            )
        )
    splits = isinstance(cfg.model, (CogVideoXConfig, WanConfig)) or cfg.model.block_type == "full3d"
    if par.cp == 1 and splits and par.strategy != "none":
        gpus = max(2, pc.gpus + pc.gpus % 2)
        options.append(
            (
                f"--plan.gpus {gpus} --parallel.cp 2",
                replace(cfg, parallel=replace(par, cp=2)),
                replace(pc, gpus=gpus),
            )
        )
    if cfg.data.batch_size > 1:
        options.append(("--data.batch-size 1", replace(cfg, data=replace(cfg.data, batch_size=1)), pc))
    return [(flags, plan(c, p, device_type=device_type)) for flags, c, p in options]


def _ctx(pc: PlanConfig, device_type: str) -> dist.DistContext:
    return dist.DistContext(rank=0, world=pc.gpus, local_rank=0, device=torch.device(device_type))


def report(base: Plan, rows: list[tuple[str, Plan]], pc: PlanConfig, command: str) -> str:
    """The plan as Markdown: the memory terms, the verdict, FLOPs and step time, the levers."""
    lines = [f"`{command}`", "", base.about, "", "| per GPU | GiB |", "| --- | ---: |"]
    lines += [f"| {k} | {v / GiB:.3g} |" for k, v in base.terms.items()]
    lines.append(f"| **total** | **{base.total / GiB:.2f}** |")
    verdict = "fits" if base.fits else "does NOT fit"
    lines += [
        "",
        f"**{verdict}** in {base.capacity / GiB:.1f} GiB ({pc.gpu} less {pc.reserve_gib:g} GiB reserve); "
        f"largest term: {base.largest} ({base.terms[base.largest] / GiB:.2f} GiB).",
        f"Step: {base.flops:.3g} model FLOPs per GPU"
        + (f" (+{base.recomputed_flops / base.flops:.0%} recomputed)" if base.recomputed_flops else "")
        + f" → {base.step_seconds:.3g} s at {pc.mfu:g} of the GPU's peak.",
    ]
    lines += [f"- {n}" for n in base.notes]
    if rows:
        lines += ["", "| lever | GiB per GPU | fits | step (s) |", "| --- | ---: | :---: | ---: |"]
        lines.append(
            f"| (as configured) | {base.total / GiB:.2f} | {'yes' if base.fits else 'no'} | "
            f"{base.step_seconds:.3g} |"
        )
        for flags, p in rows:
            lines.append(
                f"| `{flags}` | {p.total / GiB:.2f} | {'yes' if p.fits else 'no'} | {p.step_seconds:.3g} |"
            )
        fixes = [f for f, p in rows if p.fits]
        if not base.fits:
            lines.append("")
            lines.append(
                f"Levers that fit: {', '.join(f'`{f}`' for f in fixes)}."
                if fixes
                else "No single lever fits: combine them (each row above is one lever alone)."
            )
    return "\n".join(lines)


def load_recipe(path: str):
    """The ``config()`` of a recipe file (a ``TrainConfig``)."""
    from minivdit.train import TrainConfig

    file = Path(path)
    if not file.is_file():
        raise ValueError(f"minivdit.plan: recipe {path} not found")
    spec = importlib.util.spec_from_file_location(f"recipe_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.config() if hasattr(module, "config") else None
    if not isinstance(cfg, TrainConfig):
        raise ValueError(
            f"minivdit.plan: {path} has no config() returning a TrainConfig (a DiT training recipe)"
        )
    return cfg


def split_args(args: list[str]) -> tuple[list[str], list[str]]:
    """``(plan flags without their "plan." prefix, the recipe's flags)``: ``--plan.gpus 8`` → ``--gpus 8``."""
    mine, theirs, i = [], [], 0
    while i < len(args):
        a = args[i]
        takes_value = "=" not in a and i + 1 < len(args) and not args[i + 1].startswith("--")
        if a.startswith("--plan."):
            mine += ["--" + a[len("--plan.") :]] + ([args[i + 1]] if takes_value else [])
            i += 2 if takes_value else 1
        else:
            theirs.append(a)
            i += 1
    return mine, theirs


def main(argv: list[str] | None = None) -> None:
    from minivdit.config import cli
    from minivdit.train import parse, with_pretrained_architecture

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        raise SystemExit(
            "usage: python -m minivdit.plan RECIPE.py [--plan.gpus N] [--plan.gpu h100|h200|a100-80g|"
            "a100-40g|l40s] [--plan.mfu 0.35] [--plan.no-levers] [recipe overrides, as for the recipe]"
        )
    mine, theirs = split_args(argv[1:])
    pc = cli(PlanConfig, PlanConfig(), mine)
    cfg = parse(load_recipe(argv[0]), theirs)
    folder = cfg.pretrained
    missing = folder is not None and not Path(folder).exists()  # plan the recipe's architecture instead
    cfg = replace(cfg, pretrained=None) if missing else with_pretrained_architecture(cfg)
    base = plan(cfg, pc)
    if missing:
        base.notes.insert(0, f"--pretrained {folder} not found: planned with the recipe's architecture")
    rows = levers(cfg, pc, base) if pc.levers else []
    print(report(base, rows, pc, "python -m minivdit.plan " + " ".join(argv)))


if __name__ == "__main__":
    main()
