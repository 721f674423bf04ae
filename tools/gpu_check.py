"""One prepared GPU check (issue 21 §7): what only a GPU can show, in one table, within ~8 minutes on one
H100 or H200.

    python tools/gpu_check.py                 # on a CUDA machine: the full-size checks
    python tools/gpu_check.py --dry-run       # anywhere: the same code paths at tiny sizes on the CPU
    python tools/gpu_check.py --only planner attention

Sections (each a row or a few of the table; a failing section prints its error and the rest go on):

- ``attention``: each backend (SDPA, flash-attn, xformers) against SDPA at CogVideoX-5B's attention shape
  [1, 48, 17 776, 64] in bf16: parity (``tools/bench.py``'s ``attention_parity``: error vs fp32 SDPA ≤ 2 ×
  bf16 SDPA's + 1e-3) and forward + backward time;
- ``vdit``: a V-DiT-XL/2 16×256² (16 × 32² latents) bf16 training step against Latte's formulation of the
  same model (``tools/bench.py train --reference``), with MFU;
- ``cogvideox``: CogVideoX-5B-I2V cut to 2 full-width blocks at 49×480×720 (13 × 60 × 90 latents, 17 776
  tokens): step time and peak memory, ours against diffusers' ``CogVideoXTransformer3DModel`` with the
  same weights (bf16 autocast, AdamW);
- ``wan``: a Wan2.1-T2V-1.3B training step at 21 × 60 × 104 latents (81×480×832), ours against diffusers
  (``tools/bench.py wan``);
- ``drepa``: dREPA at 13 × 1350 tokens against the seed's reference code (``tools/bench.py align``);
- ``planner``: ``minivdit.plan``'s predicted peak against ``torch.cuda.max_memory_allocated`` for the
  CogVideoX and Wan steps above (fp32 weights, bf16 autocast, AdamW, with and without activation
  checkpointing), as ``docs/planner.md`` reports for the CPU.

The dry run (``--dry-run``; ``tests/test_gpu_check.py``) runs every section on the CPU at tiny sizes so the
script is known to work before a GPU is lent; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))  # bench.py

import torch  # noqa: E402

from minivdit.models import attention as attention_mod  # noqa: E402
from minivdit.models.cond import Cond  # noqa: E402

SECTIONS = ("attention", "vdit", "cogvideox", "wan", "drepa", "planner")
GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Sizes:
    """The shapes of one run: the real ones on a GPU, tiny ones for ``--dry-run``."""

    attn_shape: tuple[int, int, int, int]
    vdit: list[str]
    cogvideox_latents: tuple[int, int, int]
    cogvideox_layers: int
    cogvideox_heads: int
    wan: list[str]
    wan_latents: tuple[int, int, int]
    wan_layers: int | None
    drepa: list[str]
    iters: int


FULL = Sizes(
    attn_shape=(1, 48, 17776, 64),
    vdit=["--preset", "V-DiT-XL/2", "--frames", "16", "--size", "32", "--batch", "4", "--precisions", "bf16"],
    cogvideox_latents=(13, 60, 90),
    cogvideox_layers=2,
    cogvideox_heads=48,
    wan=["--preset", "Wan2.1-T2V-1.3B", "--frames", "21", "--height", "60", "--width", "104"]
    + ["--text-tokens", "512", "--precisions", "bf16", "--lora-rank", "0"],
    wan_latents=(21, 60, 104),
    wan_layers=None,
    drepa=["--frames", "13", "--tokens", "1350", "--dim", "1024"],
    iters=5,
)
DRY = Sizes(
    attn_shape=(1, 2, 64, 16),
    vdit=["--preset", "V-DiT-S/2", "--frames", "2", "--size", "8", "--batch", "1", "--iters", "1"]
    + ["--warmup", "0"],
    cogvideox_latents=(2, 4, 6),
    cogvideox_layers=1,
    cogvideox_heads=2,
    wan=["--preset", "tiny", "--lora-rank", "0", "--iters", "1", "--warmup", "0"],
    wan_latents=(2, 4, 6),
    wan_layers=1,
    drepa=["--frames", "2", "--tokens", "16", "--dim", "32", "--in-process", "--ref-mem-gib", "0.1"],
    iters=1,
)


# ---------------------------------------------------------------------------------------------- helpers


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device, iters: int) -> tuple[float, float | None]:
    """Seconds per call after one warm-up call, and the peak memory (GiB, CUDA) of the timed calls."""
    fn()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    peak = torch.cuda.max_memory_allocated(device) / GiB if device.type == "cuda" else None
    return (time.perf_counter() - t0) / iters, peak


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _bench(args: list[str]) -> list[dict]:
    """JSON rows of ``tools/bench.py ARGS`` (a subprocess: its own memory, its own peak)."""
    cmd = [sys.executable, str(ROOT / "tools" / "bench.py"), *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"bench.py {' '.join(args)} failed: {out.stderr[-800:]}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def _fmt(x, unit: str = "") -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.4g}{unit}"
    return f"{x}{unit}"


Row = dict  # {"check", "case", "ours", "reference", "ratio", "note"}


# ---------------------------------------------------------------------------------------------- sections


def check_attention(sizes: Sizes, device: torch.device) -> list[Row]:
    from bench import attention_parity

    B, H, L, D = sizes.attn_shape
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    q, k, v = (torch.randn(B, L, H, D, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    rows, sdpa_s = [], None
    for backend in attention_mod.BACKENDS:
        case = f"{backend} [{B}, {H}, {L}, {D}] {str(dtype)[6:]}"
        if backend != "sdpa" and attention_mod._load(backend) is None:
            rows.append({"check": "attention", "case": case, "note": "not installed: skipped"})
            continue

        def fwd_bwd(backend=backend):
            attention_mod.attention(q, k, v, backend=backend).float().square().mean().backward()

        seconds, _ = _timed(fwd_bwd, device, sizes.iters)
        sdpa_s = seconds if backend == "sdpa" else sdpa_s
        note = ""
        if backend != "sdpa":
            parity = attention_parity((B, H, L, D), device, backend)
            verdict = "ok" if parity["parity_ok"] else "FAILED"
            note = f"parity {verdict}: out error {parity['out_max_abs_err_vs_fp32']:.2g} vs fp32"
        rows.append(
            {
                "check": "attention",
                "case": case + " fwd+bwd",
                "ours": f"{seconds * 1e3:.3g} ms",
                "reference": f"sdpa {sdpa_s * 1e3:.3g} ms",
                "ratio": sdpa_s / seconds,
                "note": note,
            }
        )
        _free(device)
    return rows


def check_vdit(sizes: Sizes, device: torch.device) -> list[Row]:
    backends = ["sdpa", "flash"] if device.type == "cuda" else ["sdpa"]
    rows = _bench(["train", *sizes.vdit, "--reference", "--backends", *backends, "--device", device.type])
    ours = {r["backend"]: r for r in rows if r["impl"] == "minivdit"}
    ref = next(r for r in rows if r["impl"] == "latte-reference")
    out = []
    for name, r in ours.items():
        out.append(
            {
                "check": "vdit",
                "case": f"{r['preset']} {r['frames']}×{r['size']}² b{r['batch']} {r['precision']} ({name})",
                "ours": f"{r['step_s']:.4g} s",
                "reference": f"Latte {ref['step_s']:.4g} s",
                "ratio": ref["step_s"] / r["step_s"],
                "note": f"MFU {r['mfu']:.1%}" if r.get("mfu") else "",
            }
        )
    return out


def _cogvideox_cfg(sizes: Sizes):
    """CogVideoX-5B-I2V cut to ``sizes.cogvideox_layers`` blocks, its learned positions at the check's size
    (``sample_height`` / ``sample_width`` are latent sides)."""
    from minivdit.models.cogvideox import PRESETS

    F, H, W = sizes.cogvideox_latents
    return dataclasses.replace(
        PRESETS["CogVideoX-5B-I2V"],
        num_layers=sizes.cogvideox_layers,
        num_attention_heads=sizes.cogvideox_heads,
        sample_frames=4 * (F - 1) + 1,
        sample_height=H,
        sample_width=W,
    )


def _cogvideox_pair(sizes: Sizes, device: torch.device):
    from diffusers import CogVideoXTransformer3DModel

    from minivdit.models.cogvideox import CogVideoXTransformer

    cfg = _cogvideox_cfg(sizes)
    torch.manual_seed(0)
    ours = CogVideoXTransformer(cfg).to(device)
    theirs = CogVideoXTransformer3DModel(**{k: v for k, v in cfg.to_dict().items() if k[0] != "_"}).to(device)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    return cfg, ours.train(), theirs.train()


def check_cogvideox(sizes: Sizes, device: torch.device) -> list[Row]:
    try:
        import diffusers  # noqa: F401
    except ImportError as e:
        return [{"check": "cogvideox", "case": "ours vs diffusers", "note": f"diffusers not importable: {e}"}]
    from diffusers.pipelines.cogvideo.pipeline_cogvideox_image2video import CogVideoXImageToVideoPipeline

    cfg, ours, theirs = _cogvideox_pair(sizes, device)
    F, H, W = sizes.cogvideox_latents
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, F, 16, H, W, generator=g).to(device)
    image = torch.randn(1, F, 16, H, W, generator=g).to(device)
    ctx = torch.randn(1, cfg.max_text_seq_length, cfg.text_embed_dim, generator=g).to(device)
    t = torch.tensor([500.0], device=device)
    fake = type("P", (), {"vae_scale_factor_spatial": 8, "transformer": theirs})()
    rope = CogVideoXImageToVideoPipeline._prepare_rotary_positional_embeddings(fake, 8 * H, 8 * W, F, device)
    autocast = dict(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    with torch.no_grad(), torch.autocast(**autocast):  # the same weights: the same prediction
        a = ours(x, t, Cond(context=ctx, image_latents=image)).pred.float()
        b = theirs(
            hidden_states=torch.cat([x, image], 2), encoder_hidden_states=ctx, timestep=t,
            image_rotary_emb=rope, return_dict=False,
        )[0].float()  # fmt: skip
    rel = ((a - b).abs().max() / b.abs().max()).item()
    del a, b
    results = {}
    for name, model, fwd in (
        ("ours", ours, lambda: ours(x, t, Cond(context=ctx, image_latents=image)).pred),
        (
            "diffusers",
            theirs,
            lambda: theirs(
                hidden_states=torch.cat([x, image], 2),
                encoder_hidden_states=ctx,
                timestep=t,
                image_rotary_emb=rope,
                return_dict=False,
            )[0],
        ),
    ):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=device.type == "cuda")

        def step(fwd=fwd, opt=opt):
            with torch.autocast(**autocast):
                out = fwd()
            out.float().square().mean().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        results[name] = _timed(step, device, sizes.iters)
        del opt
        _free(device)
    (s_ours, m_ours), (s_ref, m_ref) = results["ours"], results["diffusers"]
    precision = "bf16 autocast" if device.type == "cuda" else "fp32"
    case = f"5B-I2V, {sizes.cogvideox_layers} blocks, {F}×{H}×{W} latents, {precision}, AdamW"
    return [
        {
            "check": "cogvideox",
            "case": case + " (step)",
            "ours": f"{s_ours:.4g} s",
            "reference": f"diffusers {s_ref:.4g} s",
            "ratio": s_ref / s_ours,
            "note": f"same weights: max rel diff of the predictions {rel:.2g}",
        },
        {
            "check": "cogvideox",
            "case": case + " (peak memory)",
            "ours": _fmt(m_ours, " GiB"),
            "reference": f"diffusers {_fmt(m_ref, ' GiB')}",
            "ratio": (m_ref / m_ours) if m_ours else None,
            "note": "",
        },
    ]


def check_wan(sizes: Sizes, device: torch.device) -> list[Row]:
    rows = _bench(["wan", *sizes.wan, "--device", device.type])
    out = []
    for r in rows:
        if "seconds" not in r:
            out.append(
                {"check": "wan", "case": r.get("preset", "wan"), "note": r.get("skipped") or r.get("error")}
            )
            continue
        out.append(
            {
                "check": "wan",
                "case": f"{r['preset']} {r['frames']}×{r['height']}×{r['width']} {r['precision']} "
                f"{r['tuning']}",
                "ours": f"{r['seconds']:.4g} s",
                "reference": f"diffusers {r['seconds_diffusers']:.4g} s",
                "ratio": r["speedup"],
                "note": f"max rel diff {r['max_rel_diff']:.2g}; peak {_fmt(r['peak_mem_gib'], ' GiB')}",
            }
        )
    return out


def check_drepa(sizes: Sizes, device: torch.device) -> list[Row]:
    rows = _bench(["align", *sizes.drepa, "--losses", "drepa-appendix", "--device", device.type])
    out = []
    for r in rows:
        if r.get("impl") != "drepa-vs-reference":
            continue
        at = f" (reference at n={r['tokens_ref']}, scaled by n²)" if r["tokens_ref"] < r["tokens"] else ""
        ref_s = r.get("ref_seconds_full_est", r["ref_seconds"])
        out.append(
            {
                "check": "drepa",
                "case": f"F={r['frames']} n={r['tokens']} d={r['dim']} fp32 fwd+bwd",
                "ours": f"{r['ours_seconds']:.4g} s, {_fmt(r['ours_peak_mem_mib'], ' MiB')}",
                "reference": f"seed code {ref_s:.4g} s{at}",
                "ratio": r.get("speedup_full_est", r["speedup"]),
                "note": f"rel diff {r['rel_diff_fp32']:.2g} (fp32 vs fp32)",
            }
        )
    return out or [{"check": "drepa", "case": "align", "note": json.dumps(rows)[:300]}]


def check_planner(sizes: Sizes, device: torch.device) -> list[Row]:
    from minivdit.conditioning.i2v import I2VConfig
    from minivdit.conditioning.text import TextEncoderConfig
    from minivdit.data import DataConfig
    from minivdit.dist import ParallelConfig
    from minivdit.models.vae import VAEConfig
    from minivdit.models.wan import PRESETS as WAN
    from minivdit.plan import PlanConfig, plan
    from minivdit.train import TrainConfig

    cvx = _cogvideox_cfg(sizes)
    wf, wh, ww = sizes.wan_latents
    wan = dataclasses.replace(WAN["Wan2.1-T2V-1.3B"], num_frames=wf, input_size=(wh, ww))
    if sizes.wan_layers:
        wan = dataclasses.replace(wan, num_layers=sizes.wan_layers, num_attention_heads=2)
    rows = []
    for name, model_cfg, kind in (("CogVideoX-5B-I2V", cvx, "cogvideox"), ("Wan2.1-T2V-1.3B", wan, "wan")):
        for ac in (False, True):
            cfg = TrainConfig(
                model=model_cfg,
                vae=VAEConfig(kind=kind, path="/nonexistent"),
                precision="bf16",
                data=DataConfig(dataset="shards", root="/nonexistent", batch_size=1),
                text=TextEncoderConfig(max_length=cvx.max_text_seq_length if kind == "cogvideox" else 512),
                i2v=I2VConfig(mode="first" if kind == "cogvideox" else "off"),
                parallel=ParallelConfig(activation_checkpointing=ac),
            )
            predicted = plan(cfg, PlanConfig(levers=False), device_type=device.type)
            # the step the plan describes, measured: the batch, the EMA and the frozen encoders are not in it
            skip = ("batch", "frozen", "EMA")
            model_terms = {k: v for k, v in predicted.terms.items() if not k.startswith(skip)}
            measured = _measure_step(cfg, device)
            expected = sum(model_terms.values())
            rows.append(
                {
                    "check": "planner",
                    "case": f"{name} ({model_cfg.num_layers} blocks) {'AC' if ac else 'no AC'}",
                    "ours": f"predicted {expected / GiB:.3g} GiB",
                    "reference": f"measured {measured / GiB:.3g} GiB",
                    "ratio": expected / measured if measured else None,
                    "note": f"largest: {max(model_terms, key=model_terms.get)}",
                }
            )
            _free(device)
    return rows


def _measure_step(cfg, device: torch.device) -> int:
    """Peak bytes of the trainer's one-GPU step for ``cfg``: fp32 weights, bf16 autocast (CUDA), AdamW,
    batch 1, random inputs of the plan's shapes. On CUDA ``max_memory_allocated`` of the second step less
    what is not the model's (the inputs); on the CPU (dry run) ``TensorMemory``'s peak plus the weights."""
    from minivdit.memory import TensorMemory
    from minivdit.plan import example_inputs
    from minivdit.train import build_model

    with torch.device("meta"):
        model = build_model(cfg)
    model.to_empty(device=device)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    model.train()
    model.grad_checkpointing = cfg.parallel.checkpointing
    x, t, cond = example_inputs(cfg, 1, torch.float32)
    x, t = torch.randn(x.shape, device=device), torch.full((1,), 500.0, device=device)
    fields = {f.name: getattr(cond, f.name) for f in dataclasses.fields(cond)}
    cond = Cond(**{k: torch.randn(v.shape, device=device) for k, v in fields.items() if v is not None})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    autocast = dict(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step():
        with torch.autocast(**autocast):
            out = model(x, t, cond).pred
        out.float().square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    weights = sum(p.numel() * 4 for p in model.parameters())
    if device.type != "cuda":
        with TensorMemory() as mem:
            step()
            step()
        return mem.peak + weights
    step()  # AdamW's state exists from the first step on
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    outside = torch.cuda.memory_allocated(device) - 3 * weights  # weights and the two moments are the plan's
    step()
    _sync(device)
    return torch.cuda.max_memory_allocated(device) - outside


CHECKS = {
    "attention": check_attention,
    "vdit": check_vdit,
    "cogvideox": check_cogvideox,
    "wan": check_wan,
    "drepa": check_drepa,
    "planner": check_planner,
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (what the tests run)")
    ap.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    args = ap.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        ap.error("no CUDA device: run with --dry-run (tiny sizes on the CPU) or on a GPU machine")
    device = torch.device("cuda" if not args.dry_run else "cpu")
    sizes = DRY if args.dry_run else FULL
    name = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (dry run: numbers mean nothing)"
    )
    print(f"# minivdit GPU check on {name}, torch {torch.__version__}\n")
    print(
        "| check | case | ours | reference | ratio | note |\n| --- | --- | --- | --- | ---: | --- |",
        flush=True,
    )
    rows, failed = [], 0
    for section in args.only:
        t0 = time.perf_counter()
        try:
            got = CHECKS[section](sizes, device)
        except Exception as e:  # one section's failure is a row; the others still run
            got = [{"check": section, "case": "error", "note": f"{type(e).__name__}: {str(e)[:300]}"}]
            failed += 1
        for r in got:
            r["seconds_in_section"] = round(time.perf_counter() - t0, 1)
            print(
                f"| {r['check']} | {r.get('case', '')} | {r.get('ours', '')} | {r.get('reference', '')} | "
                f"{_fmt(r.get('ratio'))} | {r.get('note', '')} |",
                flush=True,
            )
        rows += got
        _free(device)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
