"""``tools/bench.py`` smoke tests: the ``vae`` subcommand at tiny sizes (JSON lines, keys, streamed == whole
up to rounding, the diffusers comparison or its skip line), one ``train`` case with the Latte reference,
the ``align`` losses with dREPA against the blog's reference, the ``decode`` per-clip reader against
whole-file decoding, and the ``cogvideox`` and ``wan`` training steps on their tiny CPU configs (``wan``
against diffusers' ``WanTransformer3DModel``). CPU, one thread, ~30 s.
``tools/`` is a folder of scripts, so the module is loaded from its path."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench", ROOT / "tools" / "bench.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

pytestmark = pytest.mark.usefixtures("single_thread")

TINY_VAE = ["--device", "cpu", "--size", "16", "--iters", "1", "--warmup", "0"]
TINY_VAE += ["--base-channels", "8", "--latent-channels", "4"]
CAUSAL_KEYS = {
    "impl",
    "op",
    "mode",
    "chunk",
    "frames",
    "latent_frames",
    "size",
    "seconds",
    "peak_mem_mib",
    "mem_metric",
    "output_mib",
    "max_abs_diff",
}


def _rows(capsys) -> list[dict]:
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert lines and all(line.startswith("{") for line in lines), lines
    return [json.loads(line) for line in lines]


def _check_causal(rows: list[dict], frames: list[int], decode_chunks: int, encode_chunks: int) -> None:
    causal = [r for r in rows if r["impl"] == "causal3d"]
    ops = {r["op"] for r in causal}
    per_frames = sum({"decode": 1 + decode_chunks, "encode": 1 + encode_chunks}[op] for op in ops)
    assert len(causal) == per_frames * len(frames)
    for r in causal:
        assert "error" not in r, r
        assert r.keys() >= CAUSAL_KEYS, r
        assert r["latent_frames"] == (r["frames"] - 1) // 4 + 1
        assert r["seconds"] > 0
        assert r["peak_mem_mib"] is None or r["peak_mem_mib"] >= 0
        if r["mode"] == "whole":
            assert r["chunk"] is None and r["max_abs_diff"] is None
        else:  # fp32, other conv shapes: ≈ 20 convs of k ≤ 27·32 ≈ √(20·864)·u ≈ 8e-6 of outputs ≲ 5
            assert r["chunk"] >= 1 and 0 <= r["max_abs_diff"] < 1e-4, r
    assert sorted({r["frames"] for r in causal}) == frames


def test_vae_in_process(capsys):
    bench.main(
        ["vae", *TINY_VAE, "--frames", "5", "9", "--in-process"]
        + ["--diffusers-frames", "5", "9", "--diffusers-size", "16", "--diffusers-channels", "16", "32", "32"]
    )
    rows = _rows(capsys)
    _check_causal(rows, [5, 9], decode_chunks=2, encode_chunks=1)
    ref = [r for r in rows if r["impl"] == "cogvideox-vs-diffusers"]
    if len(ref) == 1:  # diffusers missing: one line saying why
        assert "not importable" in ref[0]["skipped"]
        return
    assert {(r["op"], r["frames"]) for r in ref} == {(op, f) for op in ("encode", "decode") for f in (5, 9)}
    for r in ref:
        assert r["speedup"] > 0 and r["seconds"] > 0 and r["seconds_diffusers"] > 0
        assert r["max_abs_diff"] < 1e-4, r  # same weights, same maths (diffusers parity)


@pytest.mark.slow
def test_vae_cases_in_subprocesses(capsys):
    """The default on CPU: every case in a fresh interpreter (``vae --case``), peak RSS measured there."""
    bench.main(
        ["vae", *TINY_VAE, "--frames", "5", "--ops", "decode", "--decode-chunks", "1", "--skip-diffusers"]
    )
    rows = _rows(capsys)
    _check_causal(rows, [5], decode_chunks=1, encode_chunks=0)
    threshold = os.environ.get("MALLOC_MMAP_THRESHOLD_", bench.EXACT_RSS_MALLOC["MALLOC_MMAP_THRESHOLD_"])
    for r in rows[:-1]:
        assert r["mem_metric"] and r["malloc_mmap_threshold"] == threshold
    assert rows[-1] == {"bench": "vae", "impl": "cogvideox-vs-diffusers", "skipped": "--skip-diffusers"}


def test_vae_rejects_bad_frame_counts():
    with pytest.raises(SystemExit):
        bench.main(["vae", *TINY_VAE, "--frames", "6", "--skip-diffusers"])


def test_train_with_reference(capsys):
    bench.main(
        ["train", "--preset", "V-DiT-S/2", "--frames", "2", "--size", "8", "--batch", "1"]
        + ["--iters", "1", "--warmup", "0", "--reference", "--device", "cpu"]
    )
    rows = _rows(capsys)
    assert [r["impl"] for r in rows] == ["minivdit", "latte-reference"]
    for r in rows:
        assert r["step_s"] > 0 and r["frames"] == 2 and r["size"] == 8
    assert rows[1]["minivdit_speedup"] > 0
    assert (rows[0]["backend"], rows[0]["requested"], rows[0]["fallback_reason"]) == ("sdpa", "sdpa", None)


def test_train_flash_on_cpu_reports_the_sdpa_it_measured():
    """``python tools/bench.py train --backends flash`` on a CPU: flash-attn cannot run there, SDPA serves the
    attention, and the line says so (``backend`` sdpa, ``requested`` flash, and why); the fallback warning on
    stderr is a log line in the trainer's format (``[HH:MM:SS] message``)."""
    cmd = [sys.executable, str(ROOT / "tools" / "bench.py"), "train", "--preset", "V-DiT-S/2"]
    cmd += ["--frames", "2", "--size", "8", "--batch", "1", "--iters", "1", "--warmup", "0"]
    cmd += ["--device", "cpu", "--backends", "flash"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]  # stdout: JSON only
    assert (row["backend"], row["requested"]) == ("sdpa", "flash") and row["fallback_reason"], row
    warning = r"^\[\d\d:\d\d:\d\d\] attention backend 'flash' unavailable \(.+\); falling back to 'sdpa'$"
    assert re.search(warning, proc.stderr, re.MULTILINE), proc.stderr[-3000:]


TINY_ALIGN = ["align", "--device", "cpu", "--frames", "3", "--tokens", "8", "--dim", "16"]
TINY_ALIGN += ["--iters", "1", "--warmup", "0", "--in-process"]


def test_align_with_reference(capsys):
    """Every loss once, then dREPA vs the blog's reference at a reduced n (a tiny memory budget): the fp32
    values agree and the extrapolation to the full n is reported."""
    bench.main([*TINY_ALIGN, "--ref-mem-gib", "1e-5"])
    rows = _rows(capsys)
    ours = [r for r in rows if r["impl"] == "minivdit" and r["tokens"] == 8]
    assert [r["loss"] for r in ours] == ["repa", "crepa", "trd", "drepa-appendix", "drepa-blog"]
    for r in rows[:-1]:
        assert "error" not in r and r["seconds"] > 0 and math.isfinite(r["value"]), r
    cmp = rows[-1]
    assert cmp["impl"] == "drepa-vs-reference" and cmp["tokens_ref"] < cmp["tokens"] == 8
    assert (  # fp32 Grams of d = 16 and fp64 sums: ≲ (d + 2)·u ≈ 1e-6 per entry, relative to |ΔG| ~ 0.3
        cmp["rel_diff_fp32"] < 1e-5
        and cmp["ref_rel_err_vs_fp64"] < 1e-5
        and cmp["ours_rel_err_vs_fp64"] < 1e-5
    )
    assert cmp["ref_seconds_full_est"] >= cmp["ref_seconds"] and "n/n_ref" in cmp["extrapolation"]


def test_align_rejects_unpaired_sizes():
    with pytest.raises(SystemExit):
        bench.main([*TINY_ALIGN, "--tokens", "8", "9"])


def test_decode_partial_vs_whole(capsys):
    """Tiny files (2 s of 64×48 at 10 fps): one JSON line per container, our frames bit-identical to the
    whole-file decode's, and fewer frames decoded per clip than the file has."""
    bench.main(
        ["decode", "--seconds", "2", "--fps", "10", "--width", "64", "--height", "48", "--gop", "5"]
        + ["--frames", "3", "--interval", "2", "--clips", "3", "--whole-clips", "2"]
    )
    rows = _rows(capsys)
    assert [(r["container"], r["codec"]) for r in rows] == [("avi", "mpeg4"), ("mp4", "libx264")]
    for r in rows:
        assert r["video_frames"] == 20 and r["exact"] and r["speedup"] > 0, r
        assert r["ours_s_per_clip"] > 0 and r["whole_s_per_clip"] > 0 and r["probe_s"] > 0
        assert r["frames_decoded_per_clip"] < r["frames_decoded_per_clip_whole"] == 20


def test_decode_rejects_clips_longer_than_the_video():
    with pytest.raises(SystemExit):
        bench.main(["decode", "--seconds", "0.4", "--fps", "10", "--width", "32", "--height", "24"])


COGVIDEOX_KEYS = {
    "bench",
    "preset",
    "backend",
    "backend_ran",
    "fallback_reason",
    "attn_qkv_dtype",
    "precision",
    "param_dtype",
    "activation_checkpointing",
    "tuning",
    "lora_rank",
    "threads",
    "frames",
    "height",
    "width",
    "batch",
    "text_tokens",
    "video_tokens",
    "params_M",
    "trainable_M",
    "step_s",
    "samples_s",
    "tokens_s",
    "model_flops_per_step",
    "flops_per_step",
    "achieved_tflops",
    "mfu",
    "hfu",
    "peak_mem_gib",
    "speedup_vs_sdpa",
    "speedup_vs_sat_anchor",
}


def test_cogvideox_tiny(capsys):
    """The tiny I2V config, 1 warm-up + 1 timed step per case: the parity line says why it was skipped, every
    case has the keys, flash reports that SDPA ran instead (no flash-attn / no CUDA here), bf16 weights reach
    the attention in bf16, LoRA trains only the adapters, and AC adds one forward to the executed FLOPs."""
    bench.main(
        ["cogvideox", "--device", "cpu", "--warmup", "1", "--iters", "1", "--backends", "sdpa", "flash"]
        + ["--precisions", "fp32", "bf16-params", "--ac", "off", "on", "--lora-rank", "0", "4"]
    )
    rows = _rows(capsys)
    parity, cases = rows[0], rows[1:]
    assert parity["check"] == "flash-vs-sdpa-parity" and "CUDA" in parity["skipped"]
    assert parity["shape_bhld"] == [1, 2, 32 + 5 * 4 * 6, 64]
    assert len(cases) == 2 * 2 * 2 * 2
    for r in cases:
        assert "error" not in r and r.keys() >= COGVIDEOX_KEYS, r
        assert r["preset"] == "tiny" and (r["frames"], r["height"], r["width"]) == (5, 8, 12)
        assert (r["text_tokens"], r["video_tokens"]) == (32, 120)
        assert r["step_s"] > 0 and r["tokens_s"] > 0 and r["mfu"] is None and r["peak_mem_gib"] is None
        assert r["speedup_vs_sat_anchor"] is None and r["threads"] == 1
        assert r["backend_ran"] == "sdpa"
        if r["backend"] == "sdpa":
            assert r["fallback_reason"] is None and r["speedup_vs_sdpa"] is None
        else:
            assert r["fallback_reason"] and r["speedup_vs_sdpa"] > 0
        bf16 = r["precision"] == "bf16-params"
        assert r["param_dtype"] == ("bf16" if bf16 else "fp32")
        assert r["attn_qkv_dtype"] == ["/".join(["bfloat16" if bf16 else "float32"] * 3)]
        if r["tuning"] == "lora":
            assert r["lora_rank"] == 4 and 0 < r["trainable_M"] < r["params_M"] / 10
        else:
            assert r["trainable_M"] == pytest.approx(r["params_M"], abs=0.01)
        if r["activation_checkpointing"]:
            assert r["flops_per_step"] > r["model_flops_per_step"]
        else:
            assert r["flops_per_step"] == r["model_flops_per_step"]
    full = next(r for r in cases if r["tuning"] == "full")
    assert full["model_flops_per_step"] == 3 * bench.cvx.flops_per_sample(bench.COGVIDEOX_TINY, 5, 8, 12)


def test_attention_parity_maths_on_cpu():
    """The CUDA-only flash line's comparison, run with SDPA on both sides: zero difference, parity holds."""
    row = bench.attention_parity((1, 2, 40, 64), bench.torch.device("cpu"), "sdpa")
    assert row["parity_ok"] and row["out_max_abs_diff_vs_sdpa"] == 0.0  # one SDPA call twice: bit-identical
    assert 0 < row["dq_max_abs_err_vs_fp32"] < 0.1


def test_wan_tiny_against_diffusers(capsys):
    """The tiny T2V config, 0 warm-up + 1 timed step per case, full and LoRA r=4, ours and diffusers' in the
    same run: each case has both timings and their ratio, and the first step's predictions agree."""
    pytest.importorskip("diffusers")
    pytest.importorskip("peft")  # the LoRA case puts PEFT's adapter on diffusers' side
    bench.main(["wan", "--device", "cpu", "--warmup", "0", "--iters", "1"])
    rows = _rows(capsys)
    assert [(r["tuning"], r["lora_rank"], r["precision"]) for r in rows] == [
        ("full", 0, "fp32"),
        ("lora", 4, "fp32"),
    ]
    for r in rows:
        assert r["impl"] == "ours-vs-diffusers" and r["threads"] == 1 and r["video_tokens"] == 3 * 2 * 3
        assert r["seconds"] > 0 and r["seconds_diffusers"] > 0
        assert r["speedup"] == pytest.approx(
            r["seconds_diffusers"] / r["seconds"], rel=0.05
        )  # 4-digit seconds
        # same weights and inputs in fp32; the transformers agree to ≤ 1e-5 relative (tests/test_wan.py,
        # issue 19's bound: only summation order may differ, √K·u per op over ~10 chained ops)
        assert r["max_rel_diff"] <= 1e-5, r
    assert rows[1]["trainable_M"] < rows[0]["trainable_M"] / 5  # LoRA: the adapters only


def test_cogvideox_rejects_sizes_off_the_learned_pe():
    with pytest.raises(SystemExit):
        bench.main(["cogvideox", "--device", "cpu", "--preset", "CogVideoX-5B-I2V", "--frames", "12"])


def test_ckpt_bench(capsys, tmp_path):
    bench.main(["ckpt", "--mib", "4", "--dir", str(tmp_path)])
    save, estimate = _rows(capsys)
    assert save["bench"] == "ckpt" and save["files"] >= 5 and save["checkpoint_gb"] > 0.01
    assert save["crc32_gb_s_1_thread"] > 0 and save["verify_s"] > 0
    assert estimate["bench"] == "ckpt-estimate" and 5.0 < estimate["params_B"] < 6.0
    assert estimate["checksum_s_per_checkpoint"] > 0
