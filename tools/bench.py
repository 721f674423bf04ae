"""Benchmarks. One JSON line per case; ratios are against a reference run in the same process.

    python tools/bench.py train --preset V-DiT-S/2 --frames 16 --size 32 --batch 2 --backends sdpa flash \
        --precisions fp32 bf16 --reference

``train``: forward + backward + AdamW step of a V-DiT training step (the objective's cost is negligible) for a
preset at a given latent frame count and resolution, per attention backend and precision. ``backend`` is the
kernel that served the attention calls, ``requested`` the one asked for, with ``fallback_reason`` when they
differ (flash / xformers fall back to SDPA on a CPU or without their package, flash also for fp32). Reports
samples/s, tokens/s, step time, peak memory and, on a GPU, the MFU with the FLOP count it used (3 × forward
matmul FLOPs from ``minivdit.models.dit.flops_per_sample``: backward ≈ 2 × forward). ``--reference`` adds
Latte's way of computing the same model (math attention, conditioning repeated per sequence before every
adaLN Linear, as in ``Vchitect/Latte models/latte.py``) and prints our speed-up over it.

    python tools/bench.py vae --device cpu --size 64 --frames 17 33 49 97 --iters 1 --warmup 1

``vae``: (1) the causal 3-D VAE (``minivdit.models.vae.causal3d``, config from the flags) decoding and
encoding a growing clip whole vs streamed (``decode(chunk_latents=c)``, ``encode(chunk_frames=c)``): seconds
per call, peak memory above the baseline (weights, input and anything left after ``--warmup`` calls) and the
max |Δ| of the streamed output against the whole one (rounding only: ~1e-6 in fp32). The point: streamed
peak memory stays ~flat as the clip grows, whole-clip memory grows with it (streamed still holds the output,
twice during the final ``torch.cat``: see ``output_mib``). Peak memory on CUDA is ``max_memory_allocated``
after ``reset_peak_memory_stats``; on the CPU it is the process's peak resident set (``VmHWM`` reset through
``/proc/self/clear_refs``, else a 5 ms ``VmRSS`` sampler) after ``malloc_trim``, each case in a fresh
subprocess (``--in-process`` to skip that) because the allocator keeps freed memory mapped; there glibc's
mmap threshold is fixed at 128 KiB (``EXACT_RSS_MALLOC``: ~20 % more time in page faults; with
``--default-malloc`` glibc's adaptive threshold and heap reuse add ~±50 MiB of noise to the deltas).
(2) our ``CogVideoXVAE`` vs ``diffusers.AutoencoderKLCogVideoX`` on the same random weights (a small
diffusers config, ``save_pretrained`` → ``CogVideoXVAE.from_pretrained``) and the same clip: encode and
decode seconds, ``speedup`` = diffusers / ours in the same process, and max |Δ|. A JSON line says why when
diffusers is not importable (or ``--skip-diffusers``).

    python tools/bench.py align --frames 13 16 --tokens 1350 256 --dim 1024 1472

``align``: forward + backward (into the DiT side) of each loss of ``minivdit.align.losses`` in fp32 on
random [B, F, n, d] tokens, one case per (F, n, d) triple (the defaults: CogVideoX 13×30×45 latents with a
1024-wide teacher; 16 frames of 16×16 tokens with DINOv2-L + SAM2.1 Hiera-B+ stride-16 fused, 1024 + 448):
seconds, peak memory (measured as in ``vae``: CUDA max allocated, or the CPU resident set in a fresh
subprocess per case) and the loss value. Then dREPA against the blog's reference ``dREPA_loss`` (seeds/000,
copied below, clearly labelled) at the largest n whose [B, F, F, n, n] Grams fit ``--ref-mem-gib``: both
times and peaks, ``speedup`` = reference / ours at that size, the relative difference of the fp32 values
and each one's error against an fp64 evaluation; when n had to shrink, the reference's time and memory at
full size extrapolated by (n_full / n_ref)² (its Grams have F²·n² entries and cost F²·n²·d).

    python tools/bench.py decode --seconds 10 --width 320 --height 240 --containers avi mp4

``decode``: writes a ``--seconds`` clip of moving texture per container (AVI/mpeg4 and MP4/libx264 at the
encoders' default GOPs, ``--gop`` to force one) into a temp dir, then times reading one training clip
(``--frames`` frames every ``--interval``-th, random window) with ``minivdit.data.video.read_frames`` (seek
to the keyframe, decode to the last wanted frame, convert only the wanted frames) against Latte's way
(``read_video``: decode and convert every frame, then pick). Seconds per clip, ``speedup`` = whole / ours,
frames decoded per clip, the one-off ``probe_s`` (demux index, cached per file afterwards) and ``exact``
(our frames are bit-identical to the whole-file decode's).

    python tools/bench.py eval --device cpu --clips 2 --videomae-clips 1

``eval``: each evaluation detector (``minivdit/eval/``) at its real size with random weights (no weight
file is
needed): clips/s on uint8 ``[B, 16, 3, 256, 256]`` clips (the ``align4gen-ucf`` protocol's input), after one
warm-up call. I3D is cd-fvd's ``InceptionI3d(400)`` (the architecture of StyleGAN-V's TorchScript, whose
file we
cannot have here), timed when the dev extra's cd-fvd is installed. Then the estimated wall time of the
``align4gen-ucf`` protocol's detectors: 2,048 real clips through VideoMAE, I3D and Inception, and 2,048
generated clips through those plus C3D and CLIP (sampling the 2,048 videos is not included: it depends on the
model and the sampler).

    python tools/bench.py cogvideox --device cpu --iters 1 --warmup 1
    python tools/bench.py cogvideox --preset CogVideoX-5B-I2V --frames 13 --height 60 --width 90 --batch 1 \
        --backends sdpa flash --lora-rank 0 128

``cogvideox``: forward + backward + AdamW step of the CogVideoX transformer (I2V: image latents in ``Cond``),
one case per attention backend × precision × activation checkpointing (``--ac off on``) × tuning
(``--lora-rank``: 0 = full fine-tune, r = LoRA on ``attn1.to_{q,k,v,out.0}``, base frozen, LoRA in fp32).
Precisions: ``fp32``; ``bf16`` = bf16 autocast over fp32 weights; ``bf16-params`` = bf16 weights and
activations, no autocast (what FSDP2's ``MixedPrecisionPolicy(param_dtype=bf16)`` computes with; AdamW states
then follow the weights, bf16 for a full fine-tune). The model is built on ``meta``, materialised with
``to_empty`` + ``init_weights()`` (random weights; the zero-initialised adaLN / output layers and LoRA B get
N(0, 0.02) so every branch does work). ``backend_ran`` is what actually served the attention calls (counted
during the step), with ``fallback_reason``: flash and xformers fall back to SDPA on the CPU and without their
package, flash also for fp32 queries (under CUDA bf16 autocast the per-head QK LayerNorm outputs fp32, so q/k
reach the kernel in fp32 and v in bf16: see ``attn_qkv_dtype``). Reports step seconds, samples/s, tokens/s
(text + video tokens), and FLOPs from ``minivdit.models.cogvideox.flops_per_sample``: ``model_flops_per_step``
= 3 × forward (LoRA: the frozen base computes no weight gradients, so one linear-forward less, plus the
adapters' own 3 ×), ``flops_per_step`` = that + one forward with activation checkpointing (the recompute),
``achieved_tflops`` from the latter; on a GPU in ``PEAK_TFLOPS`` ``mfu`` (model FLOPs) and ``hfu`` (with the
recompute), and ``peak_mem_gib`` (CUDA max allocated after the warm-up steps, so weights, gradients and AdamW
state included). ``speedup_vs_sdpa``: the SDPA case with the same other settings over this one;
``speedup_vs_sat_anchor``: 8 s/it (finetrainers #65, SAT 5B-I2V full SFT on H100, anchors-cogvideox §8) over
our seconds per sample, for 5B-I2V at 13×60×90 only. The default is a tiny I2V config (2 layers, 2 heads × 64,
32 text tokens of width 32, 5×8×12 latents: 152 tokens; one CPU thread unless ``--threads``), seconds on a
CPU; ``--preset`` with no other flags runs ``bf16-params``, flash, AC, full and LoRA r128. A first line
compares the flash kernel with SDPA at the model's attention shape on CUDA (bf16 output and q/k/v gradients
against each other and against fp32 SDPA); elsewhere it says why it was skipped.

    python tools/bench.py wan --device cpu --iters 1 --warmup 1
    python tools/bench.py wan --preset Wan2.1-T2V-1.3B --frames 13 --height 60 --width 104 \
        --precisions bf16 --lora-rank 0 64

``wan``: forward + backward + AdamW step of our ``WanTransformer`` against diffusers'
``WanTransformer3DModel`` with the same weights, inputs and optimizer, timed interleaved in the same run
(``_time_pair``), one case per precision (``fp32``; ``bf16`` = bf16 autocast over fp32 weights) × tuning
(``--lora-rank``: 0 = full fine-tune; r = our LoRA on ``WAN_TARGETS`` against PEFT's ``add_adapter`` on the
same modules). Reports each side's step seconds, ``speedup`` (diffusers' over ours: > 1 = ours faster) and
``max_abs_diff`` (and / max |diffusers'|: ``max_rel_diff``) of the first step's predictions. The model is
built on ``meta`` + ``init_weights()`` and its zero-initialised output projection gets N(0, 0.02). The default
is the tiny T2V config of diffusers' tests (2 layers, 2 heads × 12, 3×4×6 latents, 7 text tokens; one CPU
thread unless ``--threads``); ``--preset`` + sizes for a GPU.

    python tools/bench.py ckpt --mib 512

``ckpt``: the cost of durable, verified checkpoints (issue 13). ``ckpt.save`` of a model of ``--mib`` MiB of
fp32 weights (+ EMA + AdamW state: ~4x on disk), timed with checksums (CRC-32 of every file, the default)
and without (sizes only), ``verify`` of the result, and the CRC-32 rate from the page cache on 1 thread and
on 2 files at once. Then the estimate for a CogVideoX-5B full fine-tune checkpoint on 8 ranks (the ranks
share the reading in 1 GiB blocks, so a 22 GB ``model.safetensors`` is spread over them too).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from minivdit.align import losses as align_losses
from minivdit.log import setup_logging
from minivdit.models import attention as attention_mod
from minivdit.models import blocks
from minivdit.models import cogvideox as cvx
from minivdit.models.cond import Cond
from minivdit.models.dit import PRESETS, VDiT, flops_per_sample, num_params, preset
from minivdit.models.lora import (
    WAN_TARGETS,
    LoRAConfig,
    apply_lora,
    init_lora_weights,
    lora_modules,
    lora_state_dict,
)
from minivdit.models.vae.causal3d import CausalVAE3D, CausalVAE3DConfig

# Dense peak TFLOP/s per device for MFU (bf16 / tf32 tensor cores, no sparsity).
PEAK_TFLOPS = {
    "H100": {"bf16": 989.0, "fp32": 494.0},
    "H200": {"bf16": 989.0, "fp32": 494.0},
    "A100": {"bf16": 312.0, "fp32": 156.0},
}


def _peak(device: torch.device, precision: str) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peaks in PEAK_TFLOPS.items():
        if key in name:
            return peaks[precision] * 1e12
    return None


# ---------------------------------------------------------------- Latte-style reference (same weights/maths)


def _latte_block_forward(self: blocks.DiTBlock, x, c, rope=None):
    """Latte's TransformerBlock: c is repeated to one row per sequence first, then the adaLN Linear runs on
    every
    copy; attention is explicit softmax(QK^T)V ("math", Latte's default mode)."""
    c = c.repeat_interleave(x.shape[0] // c.shape[0], dim=0)  # [S, D]
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
        self.adaLN_modulation(c).unsqueeze(1).chunk(6, -1)
    )
    h = blocks.modulate(self.norm1(x), shift_msa, scale_msa)
    q, k, v = rearrange(self.attn.qkv(h), "s l (three h d) -> three s h l d", three=3, h=self.attn.num_heads)
    attn = (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(-1)
    h = self.attn.proj(rearrange(attn @ v, "s h l d -> s l (h d)"))
    x = x + gate_msa * h
    return x + gate_mlp * self.mlp(blocks.modulate(self.norm2(x), shift_mlp, scale_mlp))


def _latte_final_forward(self: blocks.FinalLayer, x, c):
    c = c.repeat_interleave(x.shape[0] // c.shape[0], dim=0)
    shift, scale = self.adaLN_modulation(c).unsqueeze(1).chunk(2, -1)
    return self.linear(blocks.modulate(self.norm_final(x), shift, scale))


def make_reference(model: VDiT) -> VDiT:
    for block in model.blocks:
        block.forward = _latte_block_forward.__get__(block)
    model.final_layer.forward = _latte_final_forward.__get__(model.final_layer)
    return model


# ---------------------------------------------------------------- train-step benchmark


def _time_steps(model, opt, x, t, cond, precision: str, device: torch.device, warmup: int, iters: int):
    """Seconds per training step (forward, backward, AdamW), after ``warmup`` untimed steps."""

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = model(x, t, cond).pred
        out.float().square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    sync()
    return (time.perf_counter() - t0) / iters


def bench_train(args: argparse.Namespace) -> list[dict]:
    device = torch.device(args.device)
    base = replace(
        preset(args.preset),
        num_frames=args.frames,
        input_size=(args.size, args.size),
        in_channels=args.channels,
        num_classes=args.num_classes,
    )
    cases = [(b, p, False) for b in args.backends for p in args.precisions]
    if args.reference:
        cases += [("math", p, True) for p in args.precisions]
    results, ours = [], {}
    for backend, precision, is_ref in cases:
        cfg = replace(base, attn_backend="sdpa" if is_ref else backend)
        torch.manual_seed(0)
        with torch.device("meta"):
            model = VDiT(cfg)
        model.to_empty(device=device)
        model.init_weights()
        for p in model.parameters():  # non-zero adaLN so every branch does real work
            p.data.normal_(0, 0.02)
        if is_ref:
            model = make_reference(model)
        model.grad_checkpointing = args.activation_checkpointing
        if args.compile:
            for block in model.blocks:
                block.compile()
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
        B = args.batch
        x = torch.randn(B, args.frames, args.channels, args.size, args.size, device=device)
        t = torch.randint(0, 1000, (B,), device=device).float()
        y = torch.randint(0, args.num_classes, (B,), device=device) if args.num_classes else None
        y = Cond(label=y)

        with _AttnProbe() as probe:
            dt = _time_steps(model, opt, x, t, y, precision, device, args.warmup, args.iters)
        ran, reason = (backend, None) if is_ref else probe.ran(backend)  # the reference: its own math
        tokens = B * args.frames * cfg.grid[0] * cfg.grid[1]
        flops = 3 * flops_per_sample(cfg, args.frames) * B
        row = {
            "bench": "train",
            "preset": args.preset,
            "impl": "latte-reference" if is_ref else "minivdit",
            "backend": ran,  # what served the attention calls: flash on a CPU is an SDPA measurement
            "requested": backend,
            "fallback_reason": reason,
            "precision": precision,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "frames": args.frames,
            "size": args.size,
            "batch": B,
            "params_M": round(num_params(model) / 1e6, 2),
            "step_s": round(dt, 4),
            "samples_s": round(B / dt, 3),
            "tokens_s": round(tokens / dt, 1),
            "flops_per_step": flops,
            "achieved_tflops": round(flops / dt / 1e12, 3),
        }
        peak = _peak(device, precision)
        if peak:
            row["mfu"] = round(flops / dt / peak, 4)
        if device.type == "cuda":
            row["peak_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        if is_ref and ("sdpa", precision) in ours:
            row["minivdit_speedup"] = round(dt / ours[("sdpa", precision)], 3)
        if not is_ref:
            ours[(backend, precision)] = dt
        print(json.dumps(row), flush=True)
        results.append(row)
    return results


# ---------------------------------------------------------------- VAE benchmark

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _status_kib(field: str) -> int | None:
    """``VmRSS``/``VmHWM`` of this process in KiB from ``/proc/self/status`` (None off Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _malloc_trim() -> None:
    """Give glibc's free pages back to the OS: the RSS baseline is then the live memory (no-op elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakRSS:
    """Peak resident set of the process above its value at ``__enter__``, in bytes (``peak_bytes``).

    Resets the kernel's high-water mark (``echo 5 > /proc/self/clear_refs``) and reads ``VmHWM`` at exit;
    where that is not allowed, a thread samples ``VmRSS`` every ``interval`` seconds (torch kernels release
    the GIL, so it keeps running). ``metric`` says which; None where ``/proc`` is missing.
    """

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.peak_bytes: int | None = None
        self.metric: str | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakRSS:
        self._base = _status_kib("VmRSS")
        if self._base is None:
            return self
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.metric = "rss_hwm_delta"
        except OSError:
            self.metric = "rss_sampled_delta"
            self._peak, self._stop = self._base, threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, _status_kib("VmRSS") or 0)

    def __exit__(self, *exc) -> None:
        if self._base is None:
            return
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak, _status_kib("VmRSS") or 0)
        else:
            peak = _status_kib("VmHWM") or 0
        self.peak_bytes = max(peak - self._base, 0) * 1024


def _measure(fn: Callable[[], torch.Tensor], device: torch.device, warmup: int, iters: int):
    """``warmup`` untimed calls of ``fn``, then ``iters`` timed ones → (last output, mean seconds, peak bytes
    above the baseline taken after the warm-up, the memory metric's name).

    The warm-up thus keeps one-off costs (kernel selection, thread pools, library pages first touched) out
    of both the time and the memory; with ``warmup=0`` they are in.
    """

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    out = None
    for _ in range(warmup):
        out = None  # do not hold the previous output while computing the next
        out = fn()
    out = None
    gc.collect()
    if device.type == "cuda":
        sync()
        torch.cuda.reset_peak_memory_stats(device)
        base, rss = torch.cuda.memory_allocated(device), None
    else:
        _malloc_trim()
        rss = PeakRSS().__enter__()
    times = []
    for _ in range(iters):
        out = None
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t0)
    seconds = sum(times) / len(times)
    if rss is None:
        return out, seconds, torch.cuda.max_memory_allocated(device) - base, "cuda_max_allocated_delta"
    rss.__exit__(None, None, None)
    return out, seconds, rss.peak_bytes, rss.metric


def _mib(n: int | float | None) -> float | None:
    return None if n is None else round(n / 2**20, 2)


def _causal_cfg(spec_vae: dict) -> CausalVAE3DConfig:
    return CausalVAE3DConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec_vae.items()})


@torch.inference_mode()
def vae_case(spec: dict) -> dict:
    """One causal-VAE measurement (``spec`` from ``bench_vae``) → its JSON row. Saves the output to
    ``spec["save"]`` if set; compares with the tensor at ``spec["ref"]`` if set (after measuring)."""
    torch.set_num_threads(spec["threads"])
    device, dtype = torch.device(spec["device"]), DTYPES[spec["dtype"]]
    torch.manual_seed(0)
    vae = CausalVAE3D.from_config(_causal_cfg(spec["vae"])).to(device=device, dtype=dtype).eval()
    op, chunk, frames, size = spec["op"], spec["chunk"], spec["frames"], spec["size"]
    latent_frames, h = vae.latent_frames(frames), size // vae.spatial_compression
    g = torch.Generator().manual_seed(1)
    if op == "decode":
        x = torch.randn(1, latent_frames, vae.latent_channels, h, h, generator=g).to(device, dtype)

        def fn():
            return vae.decode(x, chunk_latents=chunk)
    else:
        x = (torch.rand(1, frames, 3, size, size, generator=g) * 2 - 1).to(device, dtype)

        def fn():
            return vae.encode(x, chunk_frames=chunk, sample=False)

    out, seconds, peak, metric = _measure(fn, device, spec["warmup"], spec["iters"])
    row = {
        "bench": "vae",
        "impl": "causal3d",
        "op": op,
        "mode": "whole" if chunk is None else "streamed",
        "chunk": chunk,
        "chunk_unit": "latents" if op == "decode" else "frames",
        "frames": frames,
        "latent_frames": latent_frames,
        "size": size,
        "dtype": spec["dtype"],
        "device": _device_name(device),
        "params_M": round(num_params(vae) / 1e6, 2),
        "seconds": round(seconds, 4),
        "peak_mem_mib": _mib(peak),
        "mem_metric": metric,
        "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_") if device.type == "cpu" else None,
        "output_mib": _mib(out.numel() * out.element_size()),
        "max_abs_diff": None,
    }
    out = out.float().cpu()
    if spec.get("save"):
        torch.save(out, spec["save"])
    if spec.get("ref"):
        row["max_abs_diff"] = (out - torch.load(spec["ref"], weights_only=True)).abs().max().item()
    return row


# glibc: serve every allocation over 128 KiB by mmap and give it back at free (fixed, not adaptive), so that
# the resident set follows the live tensors; set for the ``vae --case`` subprocesses unless --default-malloc.
EXACT_RSS_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


def _case_subprocess(bench: str, spec: dict, default_malloc: bool, on_error: dict) -> dict:
    """``<bench> --case spec`` in a fresh interpreter: a clean heap, so RSS deltas are not hidden by memory
    the allocator kept from an earlier case (nor inflated by heap fragmentation: see ``EXACT_RSS_MALLOC``).
    Returns the case's JSON row, or ``on_error`` with the exit status and the last lines of its output."""
    cmd = [sys.executable, str(Path(__file__).resolve()), bench, "--case", json.dumps(spec)]
    env = dict(os.environ) if default_malloc else {**EXACT_RSS_MALLOC, **os.environ}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {**on_error, "error": f"exit {proc.returncode}: " + " | ".join(tail)}
    return json.loads(lines[-1])


def _vae_case_subprocess(spec: dict, default_malloc: bool = False) -> dict:
    """``vae_case`` in a fresh interpreter (``vae --case``)."""
    on_error = {"bench": "vae", "impl": "causal3d", **{k: spec[k] for k in ("op", "chunk", "frames", "size")}}
    return _case_subprocess("vae", spec, default_malloc, on_error)


def bench_vae_causal(args: argparse.Namespace) -> list[dict]:
    device = torch.device(args.device)
    vae = {
        "latent_channels": args.latent_channels,
        "base_channels": args.base_channels,
        "channel_multipliers": list(args.channel_multipliers),
        "num_res_blocks": args.num_res_blocks,
    }
    isolate = device.type == "cpu" and not args.in_process
    results = []
    with tempfile.TemporaryDirectory(prefix="minivdit-bench-") as tmp:
        for op in args.ops:
            chunks = args.decode_chunks if op == "decode" else args.encode_chunks
            for frames in args.frames:
                whole_path, whole = os.path.join(tmp, f"{op}-{frames}.pt"), None
                for chunk in [None, *chunks]:
                    spec = {
                        "op": op,
                        "chunk": chunk,
                        "frames": frames,
                        "size": args.size,
                        "device": args.device,
                        "dtype": args.dtype,
                        "warmup": args.warmup,
                        "iters": args.iters,
                        "threads": torch.get_num_threads(),
                        "vae": vae,
                        "save": whole_path if chunk is None else None,
                        "ref": whole_path if chunk is not None and whole is not None else None,
                    }
                    row = _vae_case_subprocess(spec, args.default_malloc) if isolate else vae_case(spec)
                    if chunk is None:
                        whole = row if "error" not in row else None
                    elif whole is not None and "error" not in row:
                        if row["peak_mem_mib"] is not None and whole["peak_mem_mib"]:
                            row["peak_mem_vs_whole"] = round(row["peak_mem_mib"] / whole["peak_mem_mib"], 3)
                        row["seconds_vs_whole"] = round(row["seconds"] / whole["seconds"], 3)
                    print(json.dumps(row), flush=True)
                    results.append(row)
    return results


def _diffusers_reference(channels: list[int], device: torch.device, dtype: torch.dtype, folder: str):
    """(diffusers ``AutoencoderKLCogVideoX`` with random weights, norms and biases included; ours loaded from
    its ``save_pretrained`` folder)."""
    import diffusers

    from minivdit.models.vae.cogvideox import CogVideoXVAE

    torch.manual_seed(0)
    ref = diffusers.AutoencoderKLCogVideoX(
        block_out_channels=tuple(channels),
        down_block_types=("CogVideoXDownBlock3D",) * len(channels),
        up_block_types=("CogVideoXUpBlock3D",) * len(channels),
        layers_per_block=1,
        norm_num_groups=min(32, math.gcd(*channels)),
        latent_channels=4,
        scaling_factor=0.7,
    ).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if p.ndim == 1 and name.endswith("weight"):  # GroupNorm scales
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif p.ndim == 1:  # biases, GroupNorm shifts
                p.copy_(0.1 * torch.randn_like(p))
    ref.save_pretrained(folder)
    ours = CogVideoXVAE.from_pretrained(folder, sample_posterior=False).eval()
    if dtype != torch.float32:  # diffusers warns on any .to(dtype), even a no-op one
        ref, ours = ref.to(dtype=dtype), ours.to(dtype=dtype)
    return ref.to(device), ours.to(device)


def _time_pair(ours: Callable, theirs: Callable, device: torch.device, warmup: int, iters: int):
    """Mean seconds of each over ``iters`` calls after ``warmup``, interleaved so that drift hits both."""

    def once(fn):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out, time.perf_counter() - t0

    t_ours = t_theirs = 0.0
    for i in range(warmup + iters):
        a, dt_a = once(ours)
        b, dt_b = once(theirs)
        if i >= warmup:
            t_ours, t_theirs = t_ours + dt_a, t_theirs + dt_b
    return a, b, t_ours / iters, t_theirs / iters


@torch.inference_mode()
def bench_vae_diffusers(args: argparse.Namespace) -> list[dict]:
    base = {"bench": "vae", "impl": "cogvideox-vs-diffusers"}
    if args.skip_diffusers:
        row = {**base, "skipped": "--skip-diffusers"}
        print(json.dumps(row), flush=True)
        return [row]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import diffusers  # noqa: F401
    except Exception as e:  # ImportError, or a broken install raising anything at import
        row = {**base, "skipped": f"diffusers not importable: {type(e).__name__}: {e}"}
        print(json.dumps(row), flush=True)
        return [row]
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    with tempfile.TemporaryDirectory(prefix="minivdit-bench-cogvideox-") as folder:
        ref, ours = _diffusers_reference(args.diffusers_channels, device, dtype, folder)
    scale = ours.config.scaling_factor
    size = args.diffusers_size
    results = []
    for frames in args.diffusers_frames:
        g = torch.Generator().manual_seed(frames)
        video = (torch.rand(1, frames, 3, size, size, generator=g) * 2 - 1).to(device, dtype)  # [B,F,C,H,W]
        video_cf = rearrange(video, "b f c h w -> b c f h w").contiguous()
        z, z_ref, t_ours, t_ref = _time_pair(
            lambda v=video: ours.encode(v),
            lambda v=video_cf: ref.encode(v).latent_dist.mode() * scale,
            device,
            args.warmup,
            args.iters,
        )
        enc_diff = (z.float() - rearrange(z_ref.float(), "b c f h w -> b f c h w")).abs().max().item()
        z_cf = rearrange(z, "b f c h w -> b c f h w").contiguous()
        x, x_ref, d_ours, d_ref = _time_pair(
            lambda z=z: ours.decode(z),
            lambda z=z_cf: ref.decode(z * (1 / scale)).sample,
            device,
            args.warmup,
            args.iters,
        )
        dec_diff = (x.float() - rearrange(x_ref.float(), "b c f h w -> b f c h w")).abs().max().item()
        for op, t_o, t_r, diff in (("encode", t_ours, t_ref, enc_diff), ("decode", d_ours, d_ref, dec_diff)):
            row = {
                **base,
                "op": op,
                "frames": frames,
                "latent_frames": z.shape[1],
                "size": size,
                "dtype": args.dtype,
                "device": _device_name(device),
                "channels": list(args.diffusers_channels),
                "params_M": round(num_params(ours) / 1e6, 2),
                "seconds": round(t_o, 4),
                "seconds_diffusers": round(t_r, 4),
                "speedup": round(t_r / t_o, 3),
                "max_abs_diff": diff,
            }
            print(json.dumps(row), flush=True)
            results.append(row)
    return results


def bench_vae(args: argparse.Namespace) -> list[dict]:
    return bench_vae_causal(args) + bench_vae_diffusers(args)


def _add_vae_parser(sub) -> None:
    va = sub.add_parser("vae", help="causal 3-D VAE whole vs streamed; CogVideoX VAE vs diffusers")
    va.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    va.add_argument("--size", type=int, default=None, help="pixel side (default 256 on CUDA, 64 on CPU)")
    va.add_argument("--frames", type=int, nargs="+", default=[17, 33, 49, 97], help="pixel frames, 4k + 1")
    va.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    va.add_argument("--iters", type=int, default=1, help="timed calls per case (mean)")
    va.add_argument("--warmup", type=int, default=1, help="untimed, unmeasured calls first")
    va.add_argument("--ops", nargs="+", default=["decode", "encode"], choices=["decode", "encode"])
    va.add_argument("--decode-chunks", type=int, nargs="+", default=[1, 2], help="chunk_latents streamed")
    va.add_argument("--encode-chunks", type=int, nargs="+", default=[4], help="chunk_frames streamed")
    va.add_argument("--base-channels", type=int, default=CausalVAE3DConfig.base_channels)
    va.add_argument("--latent-channels", type=int, default=CausalVAE3DConfig.latent_channels)
    va.add_argument("--num-res-blocks", type=int, default=CausalVAE3DConfig.num_res_blocks)
    va.add_argument(
        "--channel-multipliers", type=int, nargs="+", default=list(CausalVAE3DConfig.channel_multipliers)
    )
    va.add_argument(
        "--in-process",
        action="store_true",
        help="CPU: run cases in this process (faster; RSS deltas may then be underestimated)",
    )
    va.add_argument(
        "--default-malloc",
        action="store_true",
        help="CPU: keep glibc's adaptive mmap threshold in the case subprocesses (faster, noisier RSS)",
    )
    va.add_argument("--skip-diffusers", action="store_true")
    va.add_argument("--diffusers-frames", type=int, nargs="+", default=[17, 49])
    va.add_argument("--diffusers-size", type=int, default=None, help="default 64 on CPU, 256 on CUDA")
    va.add_argument("--diffusers-channels", type=int, nargs="+", default=[32, 64, 64, 64])
    va.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: one vae_case spec (JSON)


def _check_vae_args(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    cuda = torch.device(args.device).type == "cuda"
    args.size = args.size or (256 if cuda else 64)
    args.diffusers_size = args.diffusers_size or (256 if cuda else 64)
    try:
        cfg = CausalVAE3DConfig(
            latent_channels=args.latent_channels,
            base_channels=args.base_channels,
            channel_multipliers=tuple(args.channel_multipliers),
            num_res_blocks=args.num_res_blocks,
        )
    except ValueError as e:
        ap.error(str(e))
    r, s = cfg.temporal_compression, cfg.spatial_compression
    if any(f < 1 or (f - 1) % r for f in args.frames + args.diffusers_frames):
        ap.error(f"frame counts must be {r}k + 1, got {args.frames} / {args.diffusers_frames}")
    if args.size % s:
        ap.error(f"--size must be a multiple of {s}, got {args.size}")
    if any(c < 1 for c in args.decode_chunks) or any(c < 1 or c % r for c in args.encode_chunks):
        ap.error(f"--decode-chunks must be >= 1, --encode-chunks positive multiples of {r}")
    if args.iters < 1 or args.warmup < 0:
        ap.error("--iters must be >= 1 and --warmup >= 0")
    if len(args.diffusers_channels) < 3 or args.diffusers_size % 2 ** (len(args.diffusers_channels) - 1):
        ap.error("--diffusers-channels needs >= 3 blocks and --diffusers-size a multiple of 2**(blocks - 1)")


# ---------------------------------------------------------------- alignment-loss benchmark


# seeds/000_909e03a75427b323.txt, "Appendix - Implementation": the dREPA blog's PyTorch reference, verbatim
# (REFERENCE ONLY, for timing, memory and numerical comparison; minivdit's dREPA is minivdit.align.losses).
# fmt: off
def dREPA_loss(
    yv: Tensor,      # [B, f, hw, D]  foundation-model features
    h:  Tensor,      # [B, f, hw, D]  generation-model features
    reshape = True,
) -> Tensor:

    if reshape:
        yv = rearrange(yv, 'B F C H W -> B F (H W) C')
        h  = rearrange(h,  'B F C H W -> B F (H W) C')

    B, f, hw, D = yv.shape
    device = yv.device

    # 1) Normalize features along D
    yv_norm = F.normalize(yv, p=2, dim=-1)  # [B, f, hw, D]
    h_norm  = F.normalize(h,  p=2, dim=-1)

    # 2) Spatial similarities per frame
    y_spatial = torch.einsum('bfid,bfjd->bfij', yv_norm, yv_norm)
    h_spatial = torch.einsum('bfid,bfjd->bfij', h_norm,  h_norm)
    L_spatial = (h_spatial - y_spatial).pow(2).mean()

    # 3) Full cross-frame similarities
    y_temp = torch.einsum('bfid,bgjd->bfgij', yv_norm, yv_norm)
    h_temp = torch.einsum('bfid,bgjd->bfgij', h_norm,  h_norm)
    diff_temp = (h_temp - y_temp).pow(2)

    # 4) Mask out same-frame pairs (keep only e != d)
    diag = torch.eye(f, dtype=torch.bool, device=device)
    mask = ~diag

    # 5) Expand mask to match diff_temp
    mask = mask.view(1, f, f, 1, 1).expand(B, f, f, hw, hw)

    # 6) Apply mask & mean
    L_temporal = diff_temp[mask].mean()

    return L_spatial + L_temporal
# fmt: on


ALIGN_LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "repa": align_losses.repa,
    "crepa": align_losses.crepa,  # d = 1, τ = 1, exact
    "trd": align_losses.trd,  # full, margin 0.1
    "drepa-appendix": lambda h, y: align_losses.drepa(h, y, variant="appendix"),
    "drepa-blog": lambda h, y: align_losses.drepa(h, y, variant="blog"),
    "drepa-l1": lambda h, y: align_losses.drepa(h, y, distance="l1"),
    # the reference returns the batch mean; expanded to [B] so that every case is summed the same way
    "reference": lambda h, y: dREPA_loss(y, h, reshape=False).expand(h.shape[0]),
}
REF_BYTES_PER_ENTRY = 64
"""Peak bytes of the reference's forward + backward per entry of its [B, f, f, hw, hw] Grams, measured on the
CPU (~60: four fp32 Gram-sized tensors, the boolean-mask gather and its int64 indices)."""


def _align_inputs(spec: dict, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """Deterministic h, y [B, F, n, d] ~ N(0.5, 1): a shared mean direction, as real features have, so the
    Grams are far from 0 (harder for the Gram identity's cancellation than centred noise)."""
    g = torch.Generator().manual_seed(spec["seed"])
    shape = (spec["batch"], spec["frames"], spec["tokens"], spec["dim"])
    h = (torch.randn(shape, generator=g, dtype=torch.float64) + 0.5).to(device, dtype)
    y = (torch.randn(shape, generator=g, dtype=torch.float64) + 0.5).to(device, dtype)
    return h, y


def align_case(spec: dict) -> dict:
    """One alignment-loss measurement: forward + backward (into h) of ``spec["loss"]`` in fp32 → its row.
    ``value`` is the batch mean of the loss; for the dREPA losses and the reference also ``value_fp64``,
    minivdit's dREPA on the same inputs in fp64 (exact to ~1e-15: see tests/test_align_losses.py)."""
    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    h, y = _align_inputs(spec, torch.float32, device)
    h.requires_grad_(True)
    loss_fn = ALIGN_LOSSES[spec["loss"]]

    def fn():
        h.grad = None
        loss = loss_fn(h, y)
        loss.sum().backward()
        return loss.detach()

    out, seconds, peak, metric = _measure(fn, device, spec["warmup"], spec["iters"])
    row = {
        "bench": "align",
        "impl": "dREPA_loss (seeds/000 reference)" if spec["loss"] == "reference" else "minivdit",
        "loss": spec["loss"],
        "frames": spec["frames"],
        "tokens": spec["tokens"],
        "dim": spec["dim"],
        "batch": spec["batch"],
        "dtype": "fp32",
        "device": _device_name(device),
        "seconds": round(seconds, 4),
        "peak_mem_mib": _mib(peak),
        "mem_metric": metric,
        "value": out.double().mean().item(),
    }
    if spec["loss"].startswith("drepa") or spec["loss"] == "reference":
        h64, y64 = _align_inputs(spec, torch.float64, device)
        variant = "blog" if spec["loss"] == "drepa-blog" else "appendix"
        distance = "l1" if spec["loss"] == "drepa-l1" else "l2"
        with torch.no_grad():
            row["value_fp64"] = align_losses.drepa(h64, y64, variant=variant, distance=distance).mean().item()
        row["rel_err_vs_fp64"] = abs(row["value"] - row["value_fp64"]) / abs(row["value_fp64"])
    return row


def _ref_tokens(frames: int, tokens: int, batch: int, mem_gib: float) -> int:
    """The largest n <= tokens whose reference Grams (B·F²·n² entries × REF_BYTES_PER_ENTRY) fit mem_gib."""
    fit = math.isqrt(int(mem_gib * 2**30 / (REF_BYTES_PER_ENTRY * batch))) // frames
    return max(1, min(tokens, fit))


def bench_align(args: argparse.Namespace) -> list[dict]:
    isolate = torch.device(args.device).type == "cpu" and not args.in_process
    base = {"device": args.device, "batch": args.batch, "warmup": args.warmup, "iters": args.iters, "seed": 0}
    base["threads"] = torch.get_num_threads()

    def run(**kw) -> dict:
        spec = {**base, **kw}
        if not isolate:
            row = align_case(spec)
        else:
            on_error = {"bench": "align", **{k: spec[k] for k in ("loss", "frames", "tokens", "dim")}}
            row = _case_subprocess("align", spec, args.default_malloc, on_error)
        print(json.dumps(row), flush=True)
        results.append(row)
        return row

    results: list[dict] = []
    for frames, tokens, dim in zip(args.frames, args.tokens, args.dim, strict=True):
        size = {"frames": frames, "tokens": tokens, "dim": dim}
        ours = {loss: run(loss=loss, **size) for loss in args.losses}
        if args.no_reference:
            continue
        n_ref = _ref_tokens(frames, tokens, args.batch, args.ref_mem_gib)
        ref = run(loss="reference", **{**size, "tokens": n_ref})
        mine = ours.get("drepa-appendix") if n_ref == tokens else None
        if mine is None:  # ours at the reference's size, for the like-for-like ratio
            mine = run(loss="drepa-appendix", **{**size, "tokens": n_ref})
        if "error" in ref or "error" in mine:
            continue
        scale = (tokens / n_ref) ** 2
        row = {
            "bench": "align",
            "impl": "drepa-vs-reference",
            "frames": frames,
            "tokens": tokens,
            "dim": dim,
            "batch": args.batch,
            "tokens_ref": n_ref,
            "ref_seconds": ref["seconds"],
            "ours_seconds": mine["seconds"],
            "speedup": round(ref["seconds"] / mine["seconds"], 2),
            "ref_peak_mem_mib": ref["peak_mem_mib"],
            "ours_peak_mem_mib": mine["peak_mem_mib"],
            "rel_diff_fp32": abs(mine["value"] - ref["value"]) / abs(ref["value"]),
            "ref_rel_err_vs_fp64": ref["rel_err_vs_fp64"],
            "ours_rel_err_vs_fp64": mine["rel_err_vs_fp64"],
        }
        if n_ref < tokens:
            full = ours.get("drepa-appendix", {})
            row["extrapolation"] = (
                f"reference at n={tokens} = measured at n={n_ref} * (n/n_ref)^2 = *{scale:.2f}, time and "
                "memory: its Grams hold B*F^2*n^2 entries and cost B*F^2*n^2*d multiply-adds at fixed F, d"
            )
            row["ref_seconds_full_est"] = round(ref["seconds"] * scale, 2)
            peak = None if ref["peak_mem_mib"] is None else round(ref["peak_mem_mib"] * scale, 1)
            row["ref_peak_mem_mib_full_est"] = peak
            if full.get("seconds"):
                row["speedup_full_est"] = round(ref["seconds"] * scale / full["seconds"], 1)
            if peak and full.get("peak_mem_mib"):
                row["mem_ratio_full_est"] = round(peak / full["peak_mem_mib"], 1)
        print(json.dumps(row), flush=True)
        results.append(row)
    return results


def _add_align_parser(sub) -> None:
    al = sub.add_parser("align", help="alignment losses fwd+bwd; dREPA vs the blog's reference code")
    al.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    al.add_argument("--frames", type=int, nargs="+", default=[13, 16], help="F per case (zipped with below)")
    al.add_argument("--tokens", type=int, nargs="+", default=[1350, 256], help="n tokens per frame per case")
    al.add_argument("--dim", type=int, nargs="+", default=[1024, 1024 + 448], help="feature width per case")
    al.add_argument("--batch", type=int, default=1)
    al.add_argument(
        "--losses", nargs="+", default=[k for k in ALIGN_LOSSES if k not in ("reference", "drepa-l1")]
    )
    al.add_argument(
        "--ref-mem-gib", type=float, default=4.0, help="memory the reference may use (sets its n)"
    )
    al.add_argument("--no-reference", action="store_true")
    al.add_argument("--iters", type=int, default=1, help="timed calls per case (mean)")
    al.add_argument("--warmup", type=int, default=1, help="untimed, unmeasured calls first")
    al.add_argument("--in-process", action="store_true", help="CPU: run cases in this process")
    al.add_argument("--default-malloc", action="store_true", help="CPU: glibc's adaptive mmap threshold")
    al.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: one align_case spec (JSON)


def _check_align_args(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not len(args.frames) == len(args.tokens) == len(args.dim):
        ap.error(
            "--frames, --tokens and --dim give one value per case: "
            f"got {args.frames}, {args.tokens}, {args.dim}"
        )
    if min(args.frames + args.tokens + args.dim) < 1 or args.batch < 1:
        ap.error("--frames, --tokens, --dim and --batch must be >= 1")
    unknown = sorted(set(args.losses) - set(ALIGN_LOSSES) - {"reference"})
    if unknown:
        ap.error(f"unknown --losses {unknown}; choose from {sorted(ALIGN_LOSSES)}")
    if args.iters < 1 or args.warmup < 0:
        ap.error("--iters must be >= 1 and --warmup >= 0")


# ---------------------------------------------------------------- decode benchmark

DECODE_CODECS = {"avi": "mpeg4", "mp4": "libx264"}


def _write_test_video(path: str, codec: str, n: int, width: int, height: int, fps: int, gop: int | None):
    """Moving texture plus a scrolling colour ramp: real motion for the encoder, reproducible."""
    import av
    import numpy as np

    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (2 * height, 2 * width, 3), dtype=np.uint8)
    ramp = np.arange(width, dtype=np.int64)[None, :]
    with av.open(path, "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if gop:
            stream.codec_context.gop_size = gop
        for i in range(n):
            y, x = i % height, (2 * i) % width
            frame = texture[y : y + height, x : x + width].copy()
            frame[..., 0] = (ramp + 3 * i) % 256
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def bench_decode(args: argparse.Namespace) -> list[dict]:
    import numpy as np

    from minivdit.data import video

    n = round(args.seconds * args.fps)
    span = (args.frames - 1) * args.interval + 1
    if n < span:
        raise SystemExit(f"decode: {n} frames < the {span} a clip spans")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for ext in args.containers:
            codec = DECODE_CODECS[ext]
            folder = args.dir or tmp
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, f"bench_{args.width}x{args.height}_{args.seconds}s.{ext}")
            _write_test_video(path, codec, n, args.width, args.height, args.fps, args.gop)
            t0 = time.perf_counter()
            info = video.probe(path)
            probe_s = time.perf_counter() - t0
            rng = np.random.default_rng(args.seed)
            windows = [
                s + args.interval * np.arange(args.frames) for s in rng.integers(0, n - span + 1, args.clips)
            ]

            video.STATS.reset()
            t0 = time.perf_counter()
            ours = [video.read_frames(path, idx) for idx in windows]
            ours_s = (time.perf_counter() - t0) / args.clips
            decoded = video.STATS.frames_decoded / args.clips
            fallbacks = video.STATS.fallbacks

            k = min(args.whole_clips, args.clips)
            video.STATS.reset()
            t0 = time.perf_counter()
            whole = [video.read_all_frames(path)[idx] for idx in windows[:k]]
            whole_s = (time.perf_counter() - t0) / k
            row = {
                "bench": "decode",
                "container": ext,
                "codec": codec,
                "width": args.width,
                "height": args.height,
                "fps": args.fps,
                "video_frames": info.num_frames,
                "keyframes": len(info.keyframes) if info.keyframes is not None else None,
                "clip_frames": args.frames,
                "interval": args.interval,
                "clips": args.clips,
                "probe_s": round(probe_s, 5),
                "ours_s_per_clip": round(ours_s, 5),
                "whole_s_per_clip": round(whole_s, 5),
                "speedup": round(whole_s / ours_s, 2),
                "frames_decoded_per_clip": round(decoded, 1),
                "frames_decoded_per_clip_whole": video.STATS.frames_decoded / k,
                "fallbacks": fallbacks,
                "exact": all(np.array_equal(a, b) for a, b in zip(ours, whole, strict=False)),
            }
            print(json.dumps(row), flush=True)
            results.append(row)
    return results


def _add_decode_parser(sub) -> None:
    de = sub.add_parser("decode", help="per-clip video decode (seek + partial) vs whole-file decode")
    de.add_argument("--containers", nargs="+", default=["avi", "mp4"], choices=sorted(DECODE_CODECS))
    de.add_argument("--seconds", type=float, default=10.0)
    de.add_argument("--fps", type=int, default=25)
    de.add_argument("--width", type=int, default=320)
    de.add_argument("--height", type=int, default=240)
    de.add_argument("--gop", type=int, default=None, help="keyframe interval (default: the encoder's)")
    de.add_argument("--frames", type=int, default=16, help="frames per clip (F)")
    de.add_argument("--interval", type=int, default=3, help="frame interval")
    de.add_argument("--clips", type=int, default=20, help="random windows timed with our reader")
    de.add_argument("--whole-clips", type=int, default=5, help="of those, timed with the whole-file reader")
    de.add_argument("--seed", type=int, default=0)
    de.add_argument("--dir", default=None, help="write the test videos here instead of a temp dir")


# ---------------------------------------------------------------------------------------------- eval


def _random_detectors(device: torch.device, tmp: str) -> dict:
    """Every detector at its real size with random weights (``{name: (module, call)}``)."""

    from minivdit.eval import c3d, clip, inception, synthetic, videomae

    torch.manual_seed(0)
    out = {}
    with torch.device("meta"):
        vm = videomae.VisionTransformer(videomae.VideoMAEConfig())
    vm.to_empty(device=device)
    for prm in vm.parameters():
        torch.nn.init.normal_(prm, std=0.02)
    vm.reset_buffers()
    out["videomae"] = (videomae.VideoMAE(vm.requires_grad_(False)), "features")
    out["inception"] = (inception.FIDInceptionV3().to(device).eval().requires_grad_(False), "features")
    c = c3d.C3D().eval().requires_grad_(False)
    out["c3d"] = (c.to(device), "probs")
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = CLIPVisionConfig(
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        image_size=224,
        patch_size=32,
        projection_dim=512,
        hidden_act="quick_gelu",
    )
    CLIPVisionModelWithProjection(cfg).save_pretrained(os.path.join(tmp, "clip"))
    out["clip"] = (clip.load(os.path.join(tmp, "clip"), device=device), "embed")
    out["synthetic"] = (synthetic.load(device=device), "features")
    try:  # the I3D architecture, from the dev extra's cd-fvd (its __init__ imports torchvision: load by path)
        import importlib.util
        from importlib import metadata

        path = metadata.distribution("cd-fvd").locate_file("cdfvd/third_party/i3d/pytorch_i3d.py")
        spec = importlib.util.spec_from_file_location("bench_pytorch_i3d", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        net = mod.InceptionI3d(400, in_channels=3).to(device).eval().requires_grad_(False)

        class I3DStandIn(torch.nn.Module):  # what StyleGAN-V's TorchScript does: rescale, resize to 224
            def features(self, video):
                x = video.to(device).permute(0, 2, 1, 3, 4).float() / 127.5 - 1  # [B, 3, T, H, W]
                B, C, T, H, W = x.shape
                x = x.transpose(1, 2).reshape(B * T, C, H, W)
                x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False)
                x = x.reshape(B, T, C, 224, 224).transpose(1, 2)
                with torch.no_grad():
                    return net(x).float().cpu()

        out["i3d"] = (I3DStandIn(), "features")
    except Exception as e:  # cd-fvd not installed: say so
        print(
            json.dumps({"bench": "eval", "detector": "i3d", "skipped": f"{type(e).__name__}: {e}"}),
            flush=True,
        )
    return out


def bench_eval(args: argparse.Namespace) -> list[dict]:
    device = torch.device(args.device)
    rows, rate = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        dets = _random_detectors(device, tmp)
        for name in ("i3d", "videomae", "inception", "c3d", "clip", "synthetic"):
            if name not in dets:
                continue
            det, method = dets[name]
            n = args.videomae_clips if name == "videomae" else args.clips
            video = torch.randint(0, 256, (n, 16, 3, args.size, args.size), dtype=torch.uint8)
            call = getattr(det, method)
            call(video[:1])  # warm-up
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            call(video)
            if device.type == "cuda":
                torch.cuda.synchronize()
            took = time.perf_counter() - t0
            rate[name] = n / took
            row = {
                "bench": "eval",
                "detector": name,
                "device": device.type,
                "clips": n,
                "frames": 16,
                "size": args.size,
                "seconds": round(took, 3),
                "clips_per_s": round(rate[name], 4),
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    real, fake = ("videomae", "i3d", "inception"), ("videomae", "i3d", "inception", "c3d", "clip")
    if all(d in rate for d in fake):
        secs = sum(2048 / rate[d] for d in real) + sum(2048 / rate[d] for d in fake)
        row = {
            "bench": "eval",
            "protocol": "align4gen-ucf",
            "device": device.type,
            "detector_seconds_estimated": round(secs),
            "hours": round(secs / 3600, 2),
            "note": "2,048 real + 2,048 generated clips through the protocol's detectors; "
            "sampling not included",
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def _add_eval_parser(sub) -> None:
    ev = sub.add_parser("eval", help="evaluation detectors' throughput; align4gen-ucf wall-time estimate")
    ev.add_argument("--clips", type=int, default=2, help="clips per timed call (all detectors but VideoMAE)")
    ev.add_argument(
        "--videomae-clips", type=int, default=1, help="clips per timed VideoMAE call (ViT-g: slow)"
    )
    ev.add_argument("--size", type=int, default=256, help="frame side of the input clips")
    ev.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


# ---------------------------------------------------------------------------------------------- cogvideox

COGVIDEOX_TINY = replace(
    cvx.PRESETS["CogVideoX-5B-I2V"],
    num_layers=2,
    num_attention_heads=2,
    attention_head_dim=64,
    time_embed_dim=128,
    text_embed_dim=32,
    max_text_seq_length=32,
    sample_frames=17,  # pixel frames: 5 latent frames
    sample_height=8,
    sample_width=12,
)
"""The CPU default: 5B-I2V's architecture (learned PE, RoPE, I2V channel concat) at 2 layers of 2 × 64."""
SAT_ANCHOR_S_PER_IT = 8.0
"""finetrainers #65: CogVideoX-5B-I2V full SFT on an H100 with SAT, ≈ 8 s/it (anchors-cogvideox §8)."""
COGVIDEOX_PRECISIONS = ("fp32", "bf16", "bf16-params")


class _AttnProbe:
    """Counts, while active, the attention calls of ``minivdit.models.cogvideox`` and of the V-DiT blocks
    (``minivdit.models.blocks``) and how many of them SDPA served (patches the module globals
    ``cogvideox.attention``, ``blocks.attention`` and ``attention._sdpa``; restored on exit)."""

    def __enter__(self) -> _AttnProbe:
        self.calls, self.sdpa, self.qkv_dtypes, self.first = 0, 0, set(), None
        self._attention, self._sdpa = cvx.attention, attention_mod._sdpa

        def attention(q, k, v, *, backend="sdpa", mask=None):
            self.calls += 1
            self.qkv_dtypes.add("/".join(str(t.dtype).removeprefix("torch.") for t in (q, k, v)))
            self.first = self.first or (backend, q.device, q.dtype)
            return self._attention(q, k, v, backend=backend, mask=mask)

        def sdpa(q, k, v, mask=None):
            self.sdpa += 1
            return self._sdpa(q, k, v, mask)

        cvx.attention, blocks.attention, attention_mod._sdpa = attention, attention, sdpa
        return self

    def __exit__(self, *exc) -> None:
        cvx.attention, blocks.attention, attention_mod._sdpa = self._attention, self._attention, self._sdpa

    def ran(self, requested: str) -> tuple[str, str | None]:
        """(the backend that served the calls: requested, "sdpa" or "mixed"; why it fell back, if it did)."""
        if self.calls == 0:
            return "none", "no attention call"
        if requested == "sdpa" or self.sdpa == 0:
            return requested, None
        _, device, dtype = self.first
        if attention_mod._load(requested) is None:
            reason = "package not importable"
        elif device.type != "cuda":
            reason = "needs CUDA tensors"
        elif requested == "flash" and dtype not in (torch.float16, torch.bfloat16):
            reason = f"needs fp16/bf16 queries, got {str(dtype).removeprefix('torch.')}"
        else:
            reason = "unknown"
        return ("sdpa" if self.sdpa == self.calls else "mixed"), reason


def _cogvideox_cfg(args: argparse.Namespace) -> cvx.CogVideoXConfig:
    return COGVIDEOX_TINY if args.preset == "tiny" else cvx.preset(args.preset)


def _build_cogvideox(cfg, device: torch.device, precision: str, lora_rank: int, ac: bool):
    """Meta build → (bf16 cast) → LoRA (fp32) → ``to_empty`` → ``init_weights`` → non-zero adaLN/output."""
    torch.manual_seed(0)
    with torch.device("meta"):
        model = cvx.CogVideoXTransformer(cfg)
    if precision == "bf16-params":
        model.to(dtype=torch.bfloat16)
    if lora_rank:
        apply_lora(model, LoRAConfig(rank=lora_rank), dtype=torch.float32)
    model.grad_checkpointing = ac
    model.to_empty(device=device)
    model.init_weights()
    init_lora_weights(model)
    with torch.no_grad():  # the zero-initialised layers: random, so that every branch does real work
        zeroed = [model.norm_out.linear, model.proj_out]
        zeroed += [n.linear for b in model.transformer_blocks for n in (b.norm1, b.norm2)]
        for m in zeroed:
            m.weight.normal_(0, 0.02)
        for m in lora_modules(model).values():
            m.lora_B.weight.normal_(0, 0.02)
    return model.train()


def _cogvideox_inputs(cfg, args, device: torch.device, dtype: torch.dtype):
    B, F_, H, W = args.batch, args.frames, args.height, args.width
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, F_, cfg.out_channels, H, W, generator=g)
    context = torch.randn(B, cfg.max_text_seq_length, cfg.text_embed_dim, generator=g)
    image = None
    if cfg.is_i2v:  # the condition frame first, zeros elsewhere (CogVideoX-I2V)
        image = torch.zeros(B, F_, cfg.in_channels - cfg.out_channels, H, W)
        image[:, 0] = torch.randn(B, cfg.in_channels - cfg.out_channels, H, W, generator=g)
    t = torch.randint(0, 1000, (B,), generator=g).float().to(device)
    to = dict(device=device, dtype=dtype)
    cond = Cond(context=context.to(**to), image_latents=None if image is None else image.to(**to))
    return x.to(**to), t, cond


def _cogvideox_flops(cfg, args, model, ac: bool) -> tuple[float, float]:
    """(model FLOPs per step, executed FLOPs per step incl. the AC recompute), matmuls only."""
    B, L = args.batch, cfg.max_text_seq_length
    S = L + cvx.num_tokens(cfg, args.frames, args.height, args.width)
    fwd = cvx.flops_per_sample(cfg, args.frames, args.height, args.width, L) * B
    attn_fwd = 2.0 * cfg.num_layers * 2 * S**2 * cfg.inner_dim * B  # QK^T and AV
    lora = lora_modules(model).values()
    lora_fwd = 2.0 * S * B * sum(m.rank * (m.base.in_features + m.base.out_features) for m in lora)
    if lora_fwd:  # frozen base: activation gradients only (1 x), no weight gradients
        model_flops = 3 * fwd - (fwd - attn_fwd) + 3 * lora_fwd
    else:
        model_flops = 3 * fwd
    return model_flops, model_flops + (fwd + lora_fwd if ac else 0.0)


def attention_parity(shape: tuple[int, ...], device: torch.device, backend: str = "flash") -> dict:
    """``backend`` vs SDPA on random q, k, v of ``shape`` [B, H, L, Dh] in bf16: max |Δ| of the output and of
    the q/k/v gradients (a random upstream gradient), and each one's error against fp32 SDPA. ``parity_ok``:
    the backend's error is at most 2 × bf16 SDPA's + 1e-3, output and every gradient. Raises if the backend
    fell back to SDPA (then there is nothing to compare)."""
    g = torch.Generator(device=device).manual_seed(0)
    q, k, v, dout = (torch.randn(shape, generator=g, device=device) for _ in range(4))

    def run(name: str, dtype: torch.dtype) -> list[Tensor]:
        qq, kk, vv = (t.detach().to(dtype).requires_grad_() for t in (q, k, v))
        with _AttnProbe() as probe:
            out = attention_mod.attention(qq, kk, vv, backend=name)
        out.backward(dout.to(dtype))
        if name != "sdpa" and probe.sdpa:
            raise RuntimeError(f"{name} fell back to SDPA: nothing to compare")
        return [t.detach().float() for t in (out, qq.grad, kk.grad, vv.grad)]

    ref = run("sdpa", torch.float32)
    sdpa, other = run("sdpa", torch.bfloat16), run(backend, torch.bfloat16)
    row, ok = {}, True
    for name, a, b, r in zip(("out", "dq", "dk", "dv"), other, sdpa, ref, strict=True):
        row[f"{name}_max_abs_diff_vs_sdpa"] = (a - b).abs().max().item()
        row[f"{name}_max_abs_err_vs_fp32"] = err = (a - r).abs().max().item()
        row[f"{name}_max_abs_err_sdpa_vs_fp32"] = err_sdpa = (b - r).abs().max().item()
        ok = ok and err <= 2 * err_sdpa + 1e-3
    row["parity_ok"] = ok
    row["criterion"] = f"{backend}'s error against fp32 SDPA <= 2 x bf16 SDPA's + 1e-3, output and each grad"
    return row


def _flash_parity(cfg, args, device: torch.device) -> dict:
    """The flash-vs-SDPA line at the model's attention shape [B, heads, L + N, Dh] (CUDA only)."""
    S = cfg.max_text_seq_length + cvx.num_tokens(cfg, args.frames, args.height, args.width)
    shape = (args.batch, cfg.num_attention_heads, S, cfg.attention_head_dim)
    row = {"bench": "cogvideox", "check": "flash-vs-sdpa-parity", "device": _device_name(device)}
    row["shape_bhld"] = list(shape)
    if device.type != "cuda":
        row["skipped"] = "needs CUDA: flash-attn has no CPU kernels (anchors-cogvideox §7); run this on a GPU"
    elif attention_mod._load("flash") is None:
        row["skipped"] = "flash-attn not importable here (neither flash_attn_interface nor flash_attn)"
    else:
        try:
            row |= attention_parity(shape, device, "flash")
        except Exception as e:  # a kernel refusing the shape, out of memory: say so, go on
            row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        finally:
            gc.collect()
            torch.cuda.empty_cache()
    return row


def bench_cogvideox(args: argparse.Namespace) -> list[dict]:
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _bench_cogvideox(args)
    finally:
        torch.set_num_threads(threads)


def _bench_cogvideox(args: argparse.Namespace) -> list[dict]:
    device, cfg = torch.device(args.device), _cogvideox_cfg(args)
    results, sdpa_s = [], {}
    row = _flash_parity(cfg, args, device)
    print(json.dumps(row), flush=True)
    results.append(row)
    N = cvx.num_tokens(cfg, args.frames, args.height, args.width)
    L = cfg.max_text_seq_length
    at_anchor = args.preset == "CogVideoX-5B-I2V" and (args.frames, args.height, args.width) == (13, 60, 90)
    backends = sorted(set(args.backends), key=cvx.BACKENDS.index)  # sdpa first: the ratios' reference
    for rank in args.lora_rank:
        for precision in args.precisions:
            for ac in (a == "on" for a in args.ac):
                for backend in backends:
                    case = {"bench": "cogvideox", "preset": args.preset, "backend": backend}
                    case |= {"precision": precision, "activation_checkpointing": ac}
                    case |= {"tuning": "lora" if rank else "full", "lora_rank": rank}
                    try:
                        row = _cogvideox_case(cfg, args, device, backend, precision, ac, rank)
                    except Exception as e:  # out of memory, a kernel refusing: one line, then the next case
                        row = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
                    finally:
                        gc.collect()
                        if device.type == "cuda":
                            torch.cuda.empty_cache()
                    row = case | row
                    key = (rank, precision, ac)
                    if "error" not in row:
                        if backend == "sdpa":
                            sdpa_s[key] = row["step_s"]
                        ref = sdpa_s.get(key) if backend != "sdpa" else None
                        row["speedup_vs_sdpa"] = round(ref / row["step_s"], 3) if ref else None
                        per_sample = row["step_s"] / args.batch
                        row["speedup_vs_sat_anchor"] = (  # the anchor is a full fine-tune
                            round(SAT_ANCHOR_S_PER_IT / per_sample, 3) if at_anchor and not rank else None
                        )
                        row["text_tokens"], row["video_tokens"] = L, N
                    print(json.dumps(row), flush=True)
                    results.append(row)
    return results


def _cogvideox_case(cfg, args, device, backend: str, precision: str, ac: bool, rank: int) -> dict:
    cfg = replace(cfg, attn_backend=backend)
    model = _build_cogvideox(cfg, device, precision, rank, ac)
    dtype = torch.bfloat16 if precision == "bf16-params" else torch.float32
    x, t, cond = _cogvideox_inputs(cfg, args, device, dtype)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, fused=device.type == "cuda")
    with _AttnProbe() as probe:
        dt = _time_steps(model, opt, x, t, cond, precision, device, args.warmup, args.iters)
    ran, reason = probe.ran(backend)
    model_flops, flops = _cogvideox_flops(cfg, args, model, ac)
    peak = _peak(device, "fp32" if precision == "fp32" else "bf16")
    S = args.batch * (cfg.max_text_seq_length + cvx.num_tokens(cfg, args.frames, args.height, args.width))
    row = {
        "backend_ran": ran,
        "fallback_reason": reason,
        "attn_qkv_dtype": sorted(probe.qkv_dtypes),
        "param_dtype": "bf16" if precision == "bf16-params" else "fp32",
        "device": _device_name(device),
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "frames": args.frames,
        "height": args.height,
        "width": args.width,
        "batch": args.batch,
        "params_M": round(num_params(model, trainable_only=False) / 1e6, 2),
        "trainable_M": round(num_params(model) / 1e6, 3),
        "step_s": round(dt, 4),
        "samples_s": round(args.batch / dt, 4),
        "tokens_s": round(S / dt, 1),
        "model_flops_per_step": model_flops,
        "flops_per_step": flops,
        "achieved_tflops": round(flops / dt / 1e12, 3),
        "mfu": round(model_flops / dt / peak, 4) if peak else None,
        "hfu": round(flops / dt / peak, 4) if peak else None,
        "peak_mem_gib": (
            round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None
        ),
        "sat_anchor_s_per_it": SAT_ANCHOR_S_PER_IT,
    }
    del model, opt, params
    return row


def _add_cogvideox_parser(sub) -> None:
    cv = sub.add_parser("cogvideox", help="CogVideoX train step per attention backend, precision, AC, LoRA")
    cv.add_argument("--preset", default="tiny", choices=["tiny", *sorted(cvx.PRESETS)])
    cv.add_argument("--frames", type=int, default=None, help="latent frames (default: the preset's PE size)")
    cv.add_argument("--height", type=int, default=None, help="latent height (default: the preset's)")
    cv.add_argument("--width", type=int, default=None, help="latent width (default: the preset's)")
    cv.add_argument("--batch", type=int, default=1)
    cv.add_argument(
        "--backends",
        nargs="+",
        default=None,
        choices=list(cvx.BACKENDS),
        help="default: tiny: every importable one; a preset: flash",
    )
    cv.add_argument(
        "--precisions",
        nargs="+",
        default=None,
        choices=COGVIDEOX_PRECISIONS,
        help="default: tiny: fp32 bf16; a preset: bf16-params",
    )
    cv.add_argument("--ac", nargs="+", default=None, choices=["off", "on"], help="activation checkpointing")
    cv.add_argument(
        "--lora-rank",
        type=int,
        nargs="+",
        default=None,
        help="0 = full fine-tune (default: tiny 0 8; a preset 0 128)",
    )
    cv.add_argument("--warmup", type=int, default=2)
    cv.add_argument("--iters", type=int, default=5)
    cv.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    cv.add_argument(
        "--threads", type=int, default=None, help="CPU threads (default: 1 for tiny, whose ops gain nothing)"
    )


def _check_cogvideox_args(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    tiny = args.preset == "tiny"
    cfg = _cogvideox_cfg(args)
    F0, H0, W0 = cfg.trained_size
    pt = cfg.patch_size_t or 1  # 1.5: 21 latent frames padded to 22, as its pipeline does
    args.frames, args.height, args.width = (
        args.frames or -(-F0 // pt) * pt,
        args.height or H0,
        args.width or W0,
    )
    args.backends = args.backends or (attention_mod.available_backends() if tiny else ["flash"])
    args.precisions = args.precisions or (["fp32", "bf16"] if tiny else ["bf16-params"])
    args.ac = args.ac or (["off", "on"] if tiny else ["on"])
    args.lora_rank = args.lora_rank or ([0, 8] if tiny else [0, 128])
    if args.threads is None and tiny and torch.device(args.device).type == "cpu":
        args.threads = 1  # tiny ops: more threads only add OpenMP overhead (many times slower on a busy host)
    if args.threads is not None and args.threads < 1:
        ap.error("cogvideox: --threads must be >= 1")
    if min(args.frames, args.height, args.width, args.batch, args.iters) < 1 or args.warmup < 0:
        ap.error("cogvideox: --frames, --height, --width, --batch and --iters must be >= 1, --warmup >= 0")
    if min(args.lora_rank) < 0:
        ap.error("cogvideox: --lora-rank must be >= 0 (0 = full fine-tune)")
    p = cfg.patch_size
    if args.height % p or args.width % p or args.frames % (cfg.patch_size_t or 1):
        ap.error(f"cogvideox: latent H, W must be multiples of {p} (and F of patch_size_t for 1.5)")
    if cfg.use_learned_positional_embeddings and (args.frames, args.height, args.width) != (F0, H0, W0):
        ap.error(f"cogvideox: {args.preset} has a learned PE for latents {F0}x{H0}x{W0} only")


# ---------------------------------------------------------------------------------------------- ckpt


def bench_ckpt(args: argparse.Namespace) -> list[dict]:
    from minivdit import ckpt, dist, durable
    from minivdit.models import cogvideox as cvx_mod

    ctx = dist.DistContext(rank=0, world=1, local_rank=0, device=torch.device("cpu"))
    width = 1024
    layers = max(1, round(args.mib * 2**20 / 4 / (width * width)))
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width, bias=False) for _ in range(layers)])
    ema = torch.nn.Sequential(*[torch.nn.Linear(width, width, bias=False) for _ in range(layers)])
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(1, width)).sum().backward()
    opt.step()
    rows = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        times = {}
        for checksum in (False, True) * 3:  # interleaved, best of 3: the write (fsync) time is noisy
            t0 = time.perf_counter()
            path = ckpt.save(
                root,
                1,
                model=model,
                ema=ema,
                optimizer=opt,
                ctx=ctx,
                rank_state={},
                meta={},
                checksum=checksum,
            )
            times.setdefault(checksum, []).append(time.perf_counter() - t0)
        files = sorted(p for p in path.rglob("*") if p.is_file())
        total = sum(p.stat().st_size for p in files)
        t0 = time.perf_counter()
        assert ckpt.verify(path) == []
        verify_s = time.perf_counter() - t0
        big = max(files, key=lambda p: p.stat().st_size)
        t0 = time.perf_counter()
        durable.checksum(big)
        rate1 = big.stat().st_size / (time.perf_counter() - t0) / 1e9
        two = sorted(files, key=lambda p: -p.stat().st_size)[:2]
        t0 = time.perf_counter()
        durable.checksums([(p, 0, None) for p in two])
        rate2 = sum(p.stat().st_size for p in two) / (time.perf_counter() - t0) / 1e9
        save_plain, save_sum = min(times[False]), min(times[True])
        rows.append(
            {
                "bench": "ckpt",
                "checkpoint_gb": round(total / 1e9, 3),
                "files": len(files),
                "save_s_sizes_only": round(save_plain, 3),
                "save_s_checksums": round(save_sum, 3),
                "checksum_overhead": round(save_sum / save_plain - 1, 3),
                "verify_s": round(verify_s, 3),
                "crc32_gb_s_1_thread": round(rate1, 2),
                "crc32_gb_s_2_files": round(rate2, 2),
                "cpus": os.cpu_count(),
            }
        )
    with torch.device("meta"):
        big_model = cvx_mod.CogVideoXTransformer(cvx_mod.PRESETS["CogVideoX-5B"])
    n = sum(p.numel() for p in big_model.parameters())
    model_gb = n * 4 / 1e9  # fp32 master weights
    total_gb = model_gb * 4  # + EMA + AdamW exp_avg, exp_avg_sq
    per_rank = math.ceil(total_gb * 1e9 / 2**30 / args.ranks) * 2**30 / 1e9  # whole 1 GiB blocks per rank
    rows.append(
        {
            "bench": "ckpt-estimate",
            "model": "CogVideoX-5B full fine-tune, fp32 weights + EMA + AdamW",
            "params_B": round(n / 1e9, 3),
            "checkpoint_gb": round(total_gb, 1),
            "ranks": args.ranks,
            "checksum_s_per_checkpoint": round(per_rank / rate1, 1),
            "assumes": f"{rate1:.2f} GB/s CRC-32 per rank (1 thread, page cache, measured above), the "
            f"blocks shared evenly; more threads per rank divide it further",
        }
    )
    for r in rows:
        print(json.dumps(r), flush=True)
    return rows


def _add_ckpt_parser(sub) -> None:
    ck = sub.add_parser("ckpt", help="checkpoint save / verify time with and without checksums; 5B estimate")
    ck.add_argument("--mib", type=int, default=512, help="fp32 model weights in MiB (the checkpoint is ~4x)")
    ck.add_argument("--ranks", type=int, default=8, help="ranks sharing the checksum reading (estimate)")
    ck.add_argument("--dir", default=None, help="where to write (default: the system temp folder)")


# ---------------------------------------------------------------------------------------------- wan

WAN_TINY = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
    text_dim=16, freq_dim=256, ffn_dim=32, num_layers=2, rope_max_seq_len=32,
)  # fmt: skip
"""CPU default: diffusers' tiny Wan test config (tests/models/transformers/test_models_transformer_wan.py)."""


def _wan_pair(cfg, device: torch.device, rank: int):
    """(ours, diffusers') with identical weights on ``device``; LoRA (r > 0) on the same modules both sides:
    ours via ``apply_lora``, theirs via PEFT ``add_adapter`` with our A and B copied in."""
    from diffusers import WanTransformer3DModel

    from minivdit.models.wan import WanTransformer

    torch.manual_seed(0)
    with torch.device("meta"):
        ours = WanTransformer(cfg)
    ours.to_empty(device=device)
    ours.init_weights()
    with torch.no_grad():
        ours.proj_out.weight.normal_(0, 0.02)  # zero-initialised: give the output layer real work
    theirs = WanTransformer3DModel(**{k: v for k, v in cfg.to_dict().items() if not k.startswith("_")})
    theirs = theirs.to(device)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    if rank:
        from peft import LoraConfig as PeftLoraConfig

        names = apply_lora(ours, LoRAConfig(rank=rank, alpha=float(rank), targets=WAN_TARGETS))
        with torch.no_grad():
            for m in lora_modules(ours).values():
                m.lora_B.weight.normal_(0, 0.02)
        theirs.requires_grad_(False)
        theirs.add_adapter(PeftLoraConfig(r=rank, lora_alpha=rank, target_modules=names))
        theirs.load_state_dict(
            {k.replace(".lora_A.", ".lora_A.default.").replace(".lora_B.", ".lora_B.default."): v
             for k, v in lora_state_dict(ours).items()},
            strict=False,
        )  # fmt: skip
    return ours.train(), theirs.train()


def _wan_step(fn: Callable, opt, *, device: torch.device, precision: str) -> Tensor:
    """One training step (forward under the precision's autocast, backward of mean(pred²), AdamW) → pred."""
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        out = fn()
    out.float().square().mean().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return out.detach().float()


def _wan_ours(model, x: Tensor, t: Tensor, ctx: Tensor) -> Tensor:
    return model(x, t, Cond(context=ctx)).pred


def _wan_theirs(model, x: Tensor, t: Tensor, ctx: Tensor) -> Tensor:
    """diffusers' forward on our [B, F, C, H, W] layout (as its pipeline does: [B, C, F, H, W])."""
    x = rearrange(x, "b f c h w -> b c f h w")
    out = model(hidden_states=x, timestep=t, encoder_hidden_states=ctx, return_dict=False)[0]
    return rearrange(out, "b c f h w -> b f c h w")


def bench_wan(args: argparse.Namespace) -> list[dict]:
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _bench_wan(args)
    finally:
        torch.set_num_threads(threads)


def _bench_wan(args: argparse.Namespace) -> list[dict]:
    from minivdit.models.wan import WanConfig, preset

    device = torch.device(args.device)
    cfg = WanConfig(**WAN_TINY) if args.preset == "tiny" else preset(args.preset)
    base = {"bench": "wan", "impl": "ours-vs-diffusers", "preset": args.preset}
    try:
        import diffusers  # noqa: F401
    except ImportError as e:
        row = base | {"skipped": f"diffusers not importable: {e}"}
        print(json.dumps(row), flush=True)
        return [row]
    B, F_, H, W = args.batch, args.frames, args.height, args.width
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, F_, cfg.out_channels, H, W, generator=g).to(device)
    ctx = torch.randn(B, args.text_tokens, cfg.text_dim, generator=g).to(device)
    t = torch.randint(0, 1000, (B,), generator=g).float().to(device)
    results = []
    for rank in args.lora_rank:
        for precision in args.precisions:
            case = base | {"precision": precision, "tuning": "lora" if rank else "full", "lora_rank": rank}
            try:
                row = case | _wan_case(cfg, args, device, precision, rank, (x, t, ctx))
            except Exception as e:  # out of memory, a missing package: one line, then the next case
                row = case | {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            finally:
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            print(json.dumps(row), flush=True)
            results.append(row)
    return results


def _wan_case(cfg, args, device: torch.device, precision: str, rank: int, inputs: tuple) -> dict:
    from minivdit.models.wan import num_tokens

    x, t, ctx = inputs
    B, F_, H, W = x.shape[0], x.shape[1], x.shape[3], x.shape[4]
    ours, theirs = _wan_pair(cfg, device, rank)
    opts = [
        torch.optim.AdamW(
            [p for p in m.parameters() if p.requires_grad], lr=1e-5, fused=device.type == "cuda"
        )
        for m in (ours, theirs)
    ]
    run = dict(device=device, precision=precision)
    ours_fn = partial(_wan_step, partial(_wan_ours, ours, x, t, ctx), opts[0], **run)
    theirs_fn = partial(_wan_step, partial(_wan_theirs, theirs, x, t, ctx), opts[1], **run)
    first = (ours_fn(), theirs_fn())  # untimed: equal weights, so the predictions must agree
    diff = (first[0] - first[1]).abs().max().item()
    _, _, dt_ours, dt_theirs = _time_pair(ours_fn, theirs_fn, device, args.warmup, args.iters)
    return {
        "device": _device_name(device),
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "frames": F_, "height": H, "width": W, "batch": B, "text_tokens": ctx.shape[1],
        "video_tokens": num_tokens(cfg, F_, H, W),
        "trainable_M": round(num_params(ours) / 1e6, 3),
        "seconds": round(dt_ours, 4),
        "seconds_diffusers": round(dt_theirs, 4),
        "speedup": round(dt_theirs / dt_ours, 3),
        "max_abs_diff": diff,
        "max_rel_diff": diff / first[1].abs().max().item(),
        "peak_mem_gib": (
            round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None
        ),
    }  # fmt: skip


def _add_wan_parser(sub) -> None:
    wa = sub.add_parser("wan", help="Wan 2.1 training step: ours vs diffusers' WanTransformer3DModel")
    wa.add_argument("--preset", default="tiny", help="tiny (CPU) or a minivdit.models.wan preset name")
    wa.add_argument("--frames", type=int, default=3, help="latent frames F")
    wa.add_argument("--height", type=int, default=4, help="latent height")
    wa.add_argument("--width", type=int, default=6, help="latent width")
    wa.add_argument("--text-tokens", type=int, default=7)
    wa.add_argument("--batch", type=int, default=1)
    wa.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    wa.add_argument("--lora-rank", type=int, nargs="+", default=[0, 4], help="0 = full fine-tune")
    wa.add_argument("--warmup", type=int, default=1)
    wa.add_argument("--iters", type=int, default=3)
    wa.add_argument("--threads", type=int, default=None, help="CPU threads (default: 1 for tiny)")
    wa.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train", help="forward+backward+AdamW of a V-DiT training step")
    tr.add_argument("--preset", default="V-DiT-S/2", choices=sorted(PRESETS))
    tr.add_argument("--frames", type=int, default=16, help="latent frames F")
    tr.add_argument("--size", type=int, default=32, help="latent side (32 = 256² video through the SD-VAE)")
    tr.add_argument("--channels", type=int, default=4)
    tr.add_argument("--num-classes", type=int, default=0)
    tr.add_argument("--batch", type=int, default=2)
    tr.add_argument("--backends", nargs="+", default=["sdpa"], choices=["sdpa", "flash", "xformers"])
    tr.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    tr.add_argument("--reference", action="store_true", help="also time Latte's formulation (same maths)")
    tr.add_argument("--activation-checkpointing", action="store_true")
    tr.add_argument("--compile", action="store_true")
    tr.add_argument("--warmup", type=int, default=2)
    tr.add_argument("--iters", type=int, default=5)
    tr.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    _add_vae_parser(sub)
    _add_align_parser(sub)
    _add_decode_parser(sub)
    _add_eval_parser(sub)
    _add_cogvideox_parser(sub)
    _add_wan_parser(sub)
    _add_ckpt_parser(sub)
    args = ap.parse_args(argv)
    setup_logging(0, stream=sys.stderr)  # the trainer's line format (e.g. a backend's fallback); stdout: JSON
    if args.cmd == "ckpt":
        bench_ckpt(args)
    elif args.cmd == "train":
        bench_train(args)
    elif args.cmd == "cogvideox":
        _check_cogvideox_args(ap, args)
        bench_cogvideox(args)
    elif args.cmd == "wan":
        if args.threads is None and args.preset == "tiny":
            args.threads = 1
        if min(args.frames, args.height, args.width, args.batch, args.text_tokens, args.iters) < 1:
            ap.error("wan: --frames, --height, --width, --batch, --text-tokens and --iters must be >= 1")
        bench_wan(args)
    elif args.cmd == "eval":
        bench_eval(args)
    elif args.cmd == "decode":
        if min(args.frames, args.interval, args.clips, args.whole_clips, args.width, args.height) < 1:
            ap.error("decode: --frames, --interval, --clips, --whole-clips and the size must be >= 1")
        bench_decode(args)
    elif args.case is not None:  # internal: one measurement in this (fresh) process
        case = vae_case if args.cmd == "vae" else align_case
        print(json.dumps(case(json.loads(args.case))), flush=True)
    elif args.cmd == "vae":
        _check_vae_args(ap, args)
        bench_vae(args)
    else:
        _check_align_args(ap, args)
        bench_align(args)


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "main",
    "bench_train",
    "bench_vae",
    "bench_align",
    "bench_decode",
    "bench_eval",
    "bench_cogvideox",
    "bench_ckpt",
    "attention_parity",
    "make_reference",
    "vae_case",
    "align_case",
    "PeakRSS",
]
