"""The planner (``minivdit/plan.py``): its meta trace against real CPU steps, its total against the measured
peak of a training run, the frozen-encoder and cache accounting, the levers, and the command line.

Run: ``pytest -q tests/test_plan.py`` (CPU, under a minute).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import save_file

from minivdit.dist import ParallelConfig
from minivdit.memory import TensorMemory
from minivdit.models.checkpointing import Checkpointing
from minivdit.models.cogvideox import CogVideoXConfig
from minivdit.models.flashi2v import FlashI2VConfig
from minivdit.models.wan import WanConfig
from minivdit.plan import (
    GPUS,
    GiB,
    PlanConfig,
    example_inputs,
    levers,
    plan,
    safetensors_bytes,
    split_args,
    trace,
)
from minivdit.train import TrainConfig, build_model, train

pytestmark = pytest.mark.usefixtures("single_thread")
ROOT = Path(__file__).resolve().parents[1]

WAN = WanConfig(
    num_attention_heads=2, attention_head_dim=16, ffn_dim=64, num_layers=2, text_dim=32, freq_dim=16,
    num_frames=3, input_size=(8, 8), in_channels=16, out_channels=16,
)  # fmt: skip
COGVIDEOX = CogVideoXConfig(
    num_attention_heads=2, attention_head_dim=16, num_layers=2, text_embed_dim=32, time_embed_dim=32,
    sample_frames=9, sample_height=8, sample_width=12, in_channels=32, out_channels=16,
    max_text_seq_length=7, use_rotary_positional_embeddings=True,
)  # fmt: skip


def _cfg(tmp_path, model=None, **overrides) -> TrainConfig:
    """``tiny_config``; ``model``: a Wan / CogVideoX config (5 text tokens), or a dict of V-DiT fields."""
    if isinstance(model, dict):
        return tiny_config(tmp_path, model=model, **overrides)
    cfg = tiny_config(tmp_path, **overrides)
    if model is None:
        return cfg
    kind = "wan" if isinstance(model, WanConfig) else "cogvideox"
    vae = dataclasses.replace(cfg.vae, kind=kind, path=str(tmp_path / "no-vae"))  # not there: not counted
    data = dataclasses.replace(cfg.data, dataset="shards", root=str(tmp_path / "shards"))  # cached text
    text = dataclasses.replace(cfg.text, max_length=5)
    i2v = dataclasses.replace(cfg.i2v, mode="first" if model.is_i2v else "off")
    return dataclasses.replace(cfg, model=model, vae=vae, data=data, text=text, i2v=i2v)


def _real_step(cfg: TrainConfig, batch: int, ac) -> tuple[int, int]:
    """What ``trace`` predicts, measured: the model materialised on the CPU, random weights and inputs of
    the same shapes, PyTorch's own SDPA dispatch, one forward + backward under ``TensorMemory``."""
    with torch.device("meta"):
        model = build_model(cfg)
    model.to_empty(device="cpu").train()
    torch.manual_seed(0)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
        if p.requires_grad:
            p.register_post_accumulate_grad_hook(lambda p: setattr(p, "grad", None))
    model.grad_checkpointing = ac
    x, t, cond = example_inputs(cfg, batch, torch.float32)
    real = {f.name: getattr(cond, f.name) for f in dataclasses.fields(cond)}
    real = {
        k: torch.randn(v.shape) if v is not None and v.is_floating_point() else v for k, v in real.items()
    }
    if real.get("label") is not None:
        real["label"] = torch.zeros(batch, dtype=torch.long)
    cond = type(cond)(**real)
    x, t = torch.randn(x.shape), torch.rand(batch) * 1000
    with TensorMemory() as mem:
        pred = model(x, t, cond).pred
        kept = mem.live
        pred.float().square().mean().backward()
    return kept, mem.peak


@pytest.mark.parametrize(
    ("name", "model", "ac"),
    [
        ("vdit", None, False),
        ("vdit-full3d", {"block_type": "full3d", "qk_norm": True}, True),
        ("vdit-ops", None, Checkpointing(ops=True)),
        ("wan", WAN, False),
        ("wan-ac", WAN, True),
        ("wan-flashi2v", WAN, True),
        ("cogvideox-i2v", COGVIDEOX, Checkpointing(every=2)),
    ],
)
def test_meta_trace_is_the_real_step(tmp_path, name, model, ac):
    """The trace on meta allocates, op for op, what the same step allocates on real CPU tensors: the
    activations it keeps and its peak are equal to the byte (shapes decide them, not values)."""
    cfg = _cfg(tmp_path, model=model)
    if name == "wan-flashi2v":
        cfg = dataclasses.replace(cfg, flashi2v=FlashI2VConfig())
    parallel = ParallelConfig(
        activation_checkpointing=ac is not False,
        ac_every=ac.every if isinstance(ac, Checkpointing) else 1,
        ac_ops=isinstance(ac, Checkpointing) and ac.ops,
    )
    cfg = dataclasses.replace(cfg, parallel=parallel)
    traced = trace(cfg, batch=2, dtype=torch.float32, device_type="cpu")
    kept, peak = _real_step(cfg, 2, ac)
    assert (traced["activations"], traced["peak"]) == (kept, peak)
    # recomputation re-runs the matmuls, except under op-level selective checkpointing, which keeps them
    recomputes_matmuls = ac is not False and not (isinstance(ac, Checkpointing) and ac.ops)
    assert traced["model_flops"] > 0 and (traced["flops"] > traced["model_flops"]) == recomputes_matmuls


def test_plan_bounds_the_measured_peak_of_a_training_run(tmp_path):
    """A whole run (build, steps, checkpoint) under ``TensorMemory`` against the plan of its config. The plan
    adds its terms as if every gradient coexisted with every activation, while the first backward frees
    activations as it creates gradients: it may exceed the peak by up to the gradient term, plus 5% for the
    small tensors it does not model (the batch's copies, RNG states, logged scalars)."""
    model = {"depth": 2, "hidden_size": 64, "patch_size": 2, "input_size": (16, 16), "num_frames": 4}
    data = {"image_size": 16, "num_frames": 4, "batch_size": 8}
    for parallel in (ParallelConfig(), ParallelConfig(activation_checkpointing=True)):
        cfg = dataclasses.replace(_cfg(tmp_path, model=model, data=data, max_steps=2), parallel=parallel)
        p = plan(cfg, PlanConfig(), device_type="cpu")
        with TensorMemory() as mem:
            train(cfg)
        grads = p.terms["gradients (fp32, trained weights)"]
        assert mem.peak <= p.total <= mem.peak + grads + 0.05 * mem.peak, (p.terms, mem.peak)


def test_frozen_encoders_and_caches(tmp_path):
    """A frozen encoder's size comes from its safetensors headers; cached fields keep it off the GPU."""
    enc = tmp_path / "t5" / "text_encoder"
    enc.mkdir(parents=True)
    tensors = {"a": torch.zeros(10, 3, dtype=torch.bfloat16), "b": torch.zeros(7)}
    save_file(tensors, str(enc / "m.safetensors"))
    assert safetensors_bytes(tmp_path / "t5") == 10 * 3 * 2 + 7 * 4
    cfg = _cfg(tmp_path, model=WAN)
    cfg = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, path=str(tmp_path / "t5")))
    p = plan(cfg, PlanConfig())
    assert p.terms[f"frozen text encoder ({enc})"] == 88
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "meta.json").write_text(json.dumps({"fields": {"text": {}, "latents": {}}}))
    cached = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str(shards)))
    p = plan(cached, PlanConfig())
    assert not any(k.startswith("frozen") for k in p.terms)
    assert "text encoder not loaded: the shards cache its features" in p.notes


def test_fsdp_divides_the_model_state_and_levers_are_replanned(tmp_path):
    cfg = _cfg(tmp_path, model={"depth": 4, "hidden_size": 64}, data={"batch_size": 4})
    one = plan(cfg, PlanConfig(gpus=1))
    eight = plan(dataclasses.replace(cfg, parallel=ParallelConfig(strategy="fsdp")), PlanConfig(gpus=8))
    state = ("gradients (fp32, trained weights)", "AdamW moments (2 × fp32)", "EMA (fp32 copy of the model)")
    for key in state:
        assert eight.terms[key] == pytest.approx(one.terms[key] / 8)
    assert eight.terms["activations kept for backward"] == one.terms["activations kept for backward"]
    assert "FSDP gathered blocks (current + prefetched)" in eight.terms
    tf32 = GPUS["h100"].tf32_tflops * 1e12 * PlanConfig().mfu  # an fp32 run: TF32 tensor cores
    assert one.flops > 0 and one.step_seconds == pytest.approx(one.flops / tf32)
    rows = dict(levers(cfg, PlanConfig(), one))
    ac = rows["--parallel.activation-checkpointing"]
    assert ac.terms["activations kept for backward"] < one.terms["activations kept for backward"]
    assert ac.recomputed_flops > 0 and one.recomputed_flops == 0
    assert ac.step_seconds == pytest.approx((ac.flops + ac.recomputed_flops) / tf32)  # recomputing costs time
    assert rows["--data.batch-size 1"].flops == pytest.approx(one.flops / 4)
    offload = plan(
        dataclasses.replace(cfg, parallel=ParallelConfig(strategy="fsdp", cpu_offload=True)),
        PlanConfig(gpus=2),
    )
    assert not any(k.startswith(("parameters", "AdamW", "EMA")) for k in offload.terms)
    assert any(n.startswith("CPU offload: parameters, gradients, AdamW state and EMA") for n in offload.notes)
    assert "--plan.gpus 2 --parallel.strategy fsdp --parallel.cpu-offload" in rows
    # a model too large for the GPU: the verdict names the largest term
    big = plan(cfg, PlanConfig(gpu="a100-40g", reserve_gib=39.4 - 1e-4))
    assert not big.fits and big.largest == max(big.terms, key=big.terms.get)
    assert big.capacity == pytest.approx(1e-4 * GiB)


def test_split_args():
    assert split_args(["--plan.gpus", "8", "--max-steps", "3", "--plan.no-levers", "--plan.gpu=h200"]) == (
        ["--gpus", "8", "--no-levers", "--gpu=h200"],
        ["--max-steps", "3"],
    )


def test_command_line_plans_a_recipe():
    cmd = [sys.executable, "-m", "minivdit.plan", "recipes/quickstart.py", "--plan.gpus"]
    cmd += ["2", "--plan.no-levers"]
    cmd += ["--data.batch-size", "4"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "VDiT" in out.stdout and "batch 4 per GPU, 2 × h100" in out.stdout
    assert "**fits**" in out.stdout and "activations kept for backward" in out.stdout


def test_context_parallel_plans_one_rank_of_the_group(tmp_path):
    """``--parallel.cp 2``: the trace is one rank's (its half of the tokens, half of the heads in attention):
    activations and FLOPs about halve, while the model state (FSDP over all GPUs) and the batch do not; the
    lever is offered for a backbone that can split."""
    cfg = _cfg(tmp_path, model=WAN, parallel=ParallelConfig(strategy="fsdp"))
    one = plan(cfg, PlanConfig(gpus=2))
    two = plan(dataclasses.replace(cfg, parallel=ParallelConfig(strategy="fsdp", cp=2)), PlanConfig(gpus=2))
    kept = "activations kept for backward"
    assert 0.4 < two.terms[kept] / one.terms[kept] < 0.6
    assert 0.45 < two.flops / one.flops < 0.55  # the linears exactly half; text cross-attention too
    for key in ("AdamW moments (2 × fp32)", "batch on the device"):
        assert two.terms[key] == one.terms[key]
    assert "dp 1 × cp 2" in two.about and any(n.startswith("context parallelism") for n in two.notes)
    assert "--plan.gpus 2 --parallel.cp 2" in dict(levers(cfg, PlanConfig(gpus=2), one))
    with pytest.raises(ValueError, match="must divide --plan.gpus 3"):
        plan(dataclasses.replace(cfg, parallel=ParallelConfig(strategy="fsdp", cp=2)), PlanConfig(gpus=3))
