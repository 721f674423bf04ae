"""Memory levers: activation checkpointing modes (``models/checkpointing.py``) and what each keeps for
backward, the config that selects them, and float8 / CPU offload refused where they cannot run. That
gradients are unchanged under checkpointing is pinned per backbone (``test_models.py``, ``test_wan.py``,
``test_cogvideox.py``); CPU offload's parity on 2 ranks is in ``test_dist.py``.

Run: ``pytest -q tests/test_checkpointing.py`` (CPU, seconds).
"""

from __future__ import annotations

import pytest
import torch

from minivdit import dist
from minivdit.dist import ParallelConfig
from minivdit.memory import TensorMemory
from minivdit.models.checkpointing import Checkpointing
from minivdit.models.cond import Cond
from minivdit.models.dit import DiTConfig, VDiT

pytestmark = pytest.mark.usefixtures("single_thread")

CFG = DiTConfig(
    depth=4, hidden_size=64, num_heads=2, input_size=(8, 8), patch_size=2, num_frames=4, block_type="full3d"
)


def _kept(ac) -> int:
    """Bytes the forward leaves for backward (``TensorMemory.live``) under checkpointing mode ``ac``."""
    torch.manual_seed(0)
    model = VDiT(CFG).train()
    model.grad_checkpointing = ac
    x = torch.randn(2, CFG.num_frames, CFG.in_channels, *CFG.input_size)
    t = torch.tensor([100.0, 700.0])
    with TensorMemory() as mem:
        out = model(x, t, Cond())
    assert out.pred.requires_grad
    return mem.live


def test_each_mode_keeps_less_than_none_and_more_than_full():
    none, full = _kept(False), _kept(True)
    half, ops = _kept(Checkpointing(every=2)), _kept(Checkpointing(ops=True))
    # every=2 recomputes blocks 0 and 2 of 4: it keeps about half of what the blocks keep without AC
    assert full < half < none and full < ops < none, (none, half, ops, full)
    # Not exactly half: a block's output is also the next checkpoint's input, kept either way (0.14% off
    # here); 10% still tells "half the blocks" from "none" or "all" of them.
    assert half - full == pytest.approx((none - full) / 2, rel=0.1)
    assert _kept(Checkpointing(every=1)) == full  # the default object is full recomputation


def test_tensor_memory_counts_what_autograd_keeps():
    x = torch.randn(64, 64, requires_grad=True)
    with TensorMemory() as mem:
        y = (x @ x).relu()  # the product is freed after relu; relu's output is kept for its backward
    assert mem.live == y.untyped_storage().nbytes() == 64 * 64 * 4
    assert mem.peak == 2 * 64 * 64 * 4  # the product and relu's output, both alive inside relu
    del y
    assert mem.live == 0


def test_config_refuses_selective_choices_without_checkpointing():
    with pytest.raises(ValueError, match="need --parallel.activation-checkpointing"):
        ParallelConfig(ac_every=2)
    with pytest.raises(ValueError, match="ac_every must be >= 1"):
        ParallelConfig(activation_checkpointing=True, ac_every=0)
    model = VDiT(CFG)
    cfg = ParallelConfig(activation_checkpointing=True, ac_every=3, ac_ops=True)
    ctx = dist.DistContext(rank=0, world=1, local_rank=0, device=torch.device("cpu"))
    dist.parallelize(model, cfg, ctx, "fp32")
    assert model.grad_checkpointing == Checkpointing(every=3, ops=True)


def test_float8_and_cpu_offload_are_refused_where_they_cannot_run():
    """float8 needs float8 tensor cores; CPU offload is FSDP2's policy (its parity: tests/test_dist.py)."""
    ctx = dist.DistContext(rank=0, world=1, local_rank=0, device=torch.device("cpu"))
    with pytest.raises(ValueError, match=r"float8 needs a CUDA GPU with float8 tensor cores .* on cpu"):
        dist.parallelize(VDiT(CFG), ParallelConfig(float8=True), ctx, "bf16")
    with pytest.raises(
        ValueError, match="cpu_offload is FSDP2's CPUOffloadPolicy: it needs --parallel.strategy"
    ):
        ParallelConfig(cpu_offload=True, strategy="ddp")
    with pytest.raises(ValueError, match=r"cpu-offload needs FSDP .* resolved to 'none'"):
        dist.parallelize(VDiT(CFG), ParallelConfig(cpu_offload=True), ctx, "fp32")
