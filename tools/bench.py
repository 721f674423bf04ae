"""Benchmarks. One JSON line per case; ratios are against a reference run in the same process.

    python tools/bench.py train --preset V-DiT-S/2 --frames 16 --size 32 --batch 2 --backends sdpa flash \
        --precisions fp32 bf16 --reference

``train``: forward + backward + AdamW step of a V-DiT training step (the objective's cost is negligible) for a
preset at a given latent frame count and resolution, per attention backend and precision. Reports samples/s,
tokens/s, step time, peak memory and, on a GPU, the MFU with the FLOP count it used (3 × forward matmul FLOPs
from ``minivdit.models.dit.flops_per_sample``: backward ≈ 2 × forward). ``--reference`` adds Latte's way of
computing the same model (math attention, conditioning repeated per sequence before every adaLN Linear, as in
``Vchitect/Latte models/latte.py``) and prints our speed-up over it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace

import torch
from einops import rearrange

from minivdit.models import blocks
from minivdit.models.dit import PRESETS, VDiT, flops_per_sample, num_params, preset

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


def _time_steps(model, opt, x, t, y, precision: str, device: torch.device, warmup: int, iters: int) -> float:
    """Seconds per training step (forward, backward, AdamW), after ``warmup`` untimed steps."""

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = model(x, t, y).pred
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

        dt = _time_steps(model, opt, x, t, y, precision, device, args.warmup, args.iters)
        tokens = B * args.frames * cfg.grid[0] * cfg.grid[1]
        flops = 3 * flops_per_sample(cfg, args.frames) * B
        row = {
            "bench": "train",
            "preset": args.preset,
            "impl": "latte-reference" if is_ref else "minivdit",
            "backend": backend,
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
    args = ap.parse_args(argv)
    if args.cmd == "train":
        bench_train(args)


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["main", "bench_train", "make_reference"]
