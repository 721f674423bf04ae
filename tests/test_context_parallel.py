"""Ulysses context parallelism (``models/context_parallel.py``, issue 21 §3) against one process.

- ``test_backbones_on_two_ranks_equal_one_process``: one torchrun launch of 2 gloo ranks (one context group)
  runs each backbone — full-3-D V-DiT (RoPE, QK-norm), CogVideoX-5B-I2V (text in the joint attention, RoPE,
  learned PE), CogVideoX-2B (sin-cos PE, no RoPE), Wan-I2V (text mask, image branch), FlashI2V around Wan —
  in training mode twice on the same weights and inputs: whole (no group) and split over the 2 ranks. The
  prediction, the alignment tap and the parameter gradients (summed over the group and divided by cp, what
  DDP / FSDP do over a world of dp × cp) must equal the whole run's.
- ``test_dp2_cp2_training_equals_one_process``: ``train`` on 4 ranks as dp 2 × cp 2 with FSDP2, activation
  checkpointing and REPA alignment at block 2 against one process accumulating the same global batch.
- Single-process checks: divisibility errors, the simulated group the planner traces, config refusals.

Tolerances: fp32 everywhere; the split run differs from the whole one only in summation order (the sums of
the per-rank gradients, attention over a permuted batch of heads), a few ulps (u = 6e-8) relative per
reduction over ≤ 10² terms: 1e-5 relative with an absolute floor of 1e-6 of the tensor's scale.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
import safetensors.torch
import torch
from test_dist import torchrun, torchrun_train  # tests/ is on sys.path
from tiny_cogvideox import TINY_TRANSFORMER

from minivdit.align.teachers import TeacherConfig, make_tiny_teacher
from minivdit.dist import ParallelConfig
from minivdit.models import context_parallel
from minivdit.models.context_parallel import ContextParallel
from minivdit.train import AlignConfig, train

pytestmark = [pytest.mark.filterwarnings("ignore:torch.distributed is disabled")]

CASES = ("vdit", "cogvideox_i2v", "cogvideox_2b", "wan_i2v", "flashi2v_wan")

WORKER = r"""
import json, sys
import torch
import torch.distributed as dist
from minivdit import dist as mdist
from minivdit.models import context_parallel
from minivdit.models.cond import Cond

sys.path.insert(0, sys.argv[2])
from test_context_parallel import build_case  # noqa: E402

ctx = mdist.init(cp=2)
torch.set_num_threads(1)
results = {}
for name in sys.argv[3].split(","):
    torch.manual_seed(0)
    model, inputs, tap = build_case(name)
    model.train()

    def run():
        model.zero_grad(set_to_none=True)
        torch.manual_seed(3)  # FlashI2V draws its frequency ratio: the same on both runs and ranks (train.py)
        out = model(*inputs, tap=tap)
        g = torch.Generator().manual_seed(1)  # a fixed random functional of the prediction and the tap
        loss = (out.pred * torch.randn(out.pred.shape, generator=g)).sum()
        loss = loss + (out.hidden * torch.randn(out.hidden.shape, generator=g)).sum()
        loss.backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        return out.pred.detach(), out.hidden.detach(), grads

    whole = run()
    context_parallel.enable(model, ctx.context)
    split = run()
    for g in split[2].values():  # DDP / FSDP average over dp x cp; here dp = 1
        dist.all_reduce(g)
        g /= ctx.cp

    def rel(a, b):
        return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))

    results[name] = {
        "pred": rel(split[0], whole[0]),
        "hidden": rel(split[1], whole[1]),
        "grads": {  # [max |split - whole|, max |whole|]
            k: [float((split[2][k] - g).abs().max()), float(g.abs().max())]
            for k, g in whole[2].items()
        },
        "n_grads": [len(whole[2]), len(split[2])],
    }
if ctx.rank == 0:
    json.dump(results, open(sys.argv[1], "w"))
mdist.teardown()
"""


def build_case(name: str):
    """(model, (x_t, t, cond), tap) of a tiny backbone with every parameter perturbed away from its
    zero-init (so every gradient is non-zero), in fp32; the token count and heads divide by 2."""
    from minivdit.models.cogvideox import CogVideoXConfig, CogVideoXTransformer
    from minivdit.models.cond import Cond
    from minivdit.models.dit import DiTConfig, VDiT
    from minivdit.models.flashi2v import FlashI2V
    from minivdit.models.wan import WanConfig, WanTransformer

    g = torch.Generator().manual_seed(2)
    rand = lambda *s: torch.randn(*s, generator=g)
    t = torch.tensor([700.0, 30.0])
    if name == "vdit":
        cfg = DiTConfig(
            block_type="full3d", depth=2, hidden_size=32, num_heads=2, patch_size=2, in_channels=3,
            input_size=(4, 6), num_frames=3, num_classes=4, qk_norm=True,
        )  # fmt: skip
        model, inputs = VDiT(cfg), (rand(2, 3, 3, 4, 6), t, Cond(label=torch.tensor([1, 3])))
    elif name.startswith("cogvideox"):
        pe = dict(
            use_rotary_positional_embeddings=True, use_learned_positional_embeddings=True, in_channels=8
        )
        if name == "cogvideox_2b":
            pe = dict(use_rotary_positional_embeddings=False, use_learned_positional_embeddings=False)
        cfg = CogVideoXConfig(**(TINY_TRANSFORMER | pe))
        model = CogVideoXTransformer(cfg)
        F, H, W = cfg.trained_size
        image = dict(image_latents=rand(2, F, 4, H, W)) if cfg.is_i2v else {}
        cond = Cond(context=rand(2, cfg.max_text_seq_length, cfg.text_embed_dim), **image)
        inputs = (rand(2, F, 4, H, W), t, cond)
    else:
        tiny = dict(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
            text_dim=16, freq_dim=256, ffn_dim=32, num_layers=2, rope_max_seq_len=32,
        )  # fmt: skip
        if name == "wan_i2v":
            tiny |= dict(in_channels=12, image_dim=8, added_kv_proj_dim=24)
        model = WanTransformer(WanConfig(**tiny))
        mask = torch.tensor([[True] * 5 + [False] * 2, [True] * 7])
        cond = Cond(context=rand(2, 7, 16), context_mask=mask)
        if name == "wan_i2v":
            image = dict(image_latents=rand(2, 3, 8, 4, 6), image_context=rand(2, 5, 8))
            cond = Cond(context=cond.context, context_mask=mask, **image)
        if name == "flashi2v_wan":
            model = FlashI2V(model)
            cond = Cond(context=cond.context, context_mask=mask, image_latents=rand(2, 1, 4, 4, 6))
        inputs = (rand(2, 3, 4, 4, 6), t, cond)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model, inputs, 1


@pytest.mark.slow
def test_backbones_on_two_ranks_equal_one_process(tmp_path):
    out = tmp_path / "results.json"
    torchrun(WORKER, [str(out), str(Path(__file__).parent), ",".join(CASES)], tmp_path, nproc=2)
    results = json.loads(out.read_text())
    assert set(results) == set(CASES)
    for name, r in results.items():
        assert r["n_grads"][0] == r["n_grads"][1] > 0, (name, r)
        assert r["pred"] < 1e-5 and r["hidden"] < 1e-5, (name, r)
        # A gradient that is ~0 by cancellation (a key bias under the softmax: adding it shifts every logit
        # of a query alike) is rounding noise that depends on the summation order: the floor is 1e-6 of the
        # largest gradient of the model.
        largest = max(ref for _, ref in r["grads"].values())
        for key, (diff, ref) in r["grads"].items():
            assert diff <= 1e-5 * ref + 1e-6 * largest, (name, key, diff, ref, largest)


@pytest.mark.slow
def test_dp2_cp2_training_equals_one_process(make_tiny_cfg, tmp_path, metrics, single_thread):
    teacher_root = tmp_path / "teacher"
    teacher = TeacherConfig(dinov2=str(make_tiny_teacher("dinov2", teacher_root / "dinov2")))
    model = dict(block_type="full3d", qk_norm=True, depth=3, input_size=(8, 8), num_frames=2)
    common = dict(
        model=model,
        align=AlignConfig(loss="repa", weight=0.5, block_index=2, projector_dim=32),
        teacher=teacher,
        max_steps=3,
        ckpt={"every": 3, "keep": 0},
        sample_every=0,
    )
    solo = make_tiny_cfg(tmp_path / "runs", run_name="solo", grad_accum=2, **common)
    split = make_tiny_cfg(tmp_path / "runs", run_name="dp2xcp2", **common)
    pcfg = ParallelConfig(strategy="fsdp", activation_checkpointing=True, cp=2)
    split = replace(split, parallel=pcfg)
    os.environ["HF_HUB_OFFLINE"] = "1"
    train(solo)
    torchrun_train(split, tmp_path, nproc=4)
    for r, s in zip(metrics(solo.run_dir), metrics(split.run_dir), strict=True):
        for key in ("loss", "loss/align", "grad_norm"):
            assert s[key] == pytest.approx(r[key], rel=1e-5), (key, r, s)
    last = "checkpoints/step_0000003"
    for name in ("model.safetensors", "ema.safetensors"):
        a = safetensors.torch.load_file(str(solo.run_dir / last / name))
        b = safetensors.torch.load_file(str(split.run_dir / last / name))
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=f"{name}:{k}")


def test_shard_gather_and_simulated_all_to_all_shapes():
    """The one-process ``ContextParallel`` (``minivdit.plan`` traces one rank on meta) keeps every shape a
    real group gives: shard L/cp, heads ↔ sequence, gather back."""
    cp = ContextParallel(size=2, rank=1)
    x = torch.arange(12.0).reshape(1, 6, 2)
    assert torch.equal(cp.shard(x, dim=1), x[:, 3:])
    assert cp.gather(cp.shard(x, dim=1), dim=1).shape == x.shape
    q = torch.zeros(2, 4, 5, 8, device="meta")  # [B, H, L/cp, Dh]
    seen = {}
    out, extra = cp.attention(q, q, q, lambda a, b, c: seen.setdefault("q", a), (q[:, :, :3],) * 3)
    assert seen["q"].shape == (2, 2, 3 + 10, 8)  # H/cp heads, text + whole sequence
    assert out.shape == (2, 4, 5, 8) and extra.shape == (2, 4, 3, 8)


def test_divisibility_and_support_are_checked():
    cp = ContextParallel(size=2, rank=0)
    with pytest.raises(ValueError, match="divisible by 2, got 5"):
        cp.shard(torch.zeros(1, 5, 4), dim=1)
    q = torch.zeros(1, 3, 4, 8)
    with pytest.raises(ValueError, match="attention heads divisible by 2, got 3"):
        cp.attention(q, q, q, lambda a, b, c: a)
    with pytest.raises(ValueError, match="does not support context parallelism"):
        context_parallel.enable(torch.nn.Linear(2, 2), cp)
    with pytest.raises(ValueError, match="group of >= 2 ranks"):
        ContextParallel(size=1, rank=0)


def test_config_refuses_what_cannot_split(make_tiny_cfg, tmp_path):
    with pytest.raises(ValueError, match="block-type full3d"):
        make_tiny_cfg(tmp_path, parallel=ParallelConfig(cp=2))
    with pytest.raises(ValueError, match="strategy none"):
        make_tiny_cfg(
            tmp_path, model={"block_type": "full3d"}, parallel=ParallelConfig(cp=2, strategy="none")
        )
    with pytest.raises(ValueError, match="cp must be >= 1"):
        ParallelConfig(cp=0)
