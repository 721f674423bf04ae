"""Activation checkpointing of a backbone's blocks: all of them, every k-th, or op-level selective.

A backbone runs block ``i`` as ``run_block(self.grad_checkpointing if self.training else False, i, fn,
*args)``. ``grad_checkpointing`` is set by ``minivdit.dist.parallelize`` from ``ParallelConfig``:

- ``False``: nothing is recomputed (the activations of every block are kept for backward);
- ``True`` or ``Checkpointing()``: every block is recomputed in backward (``torch.utils.checkpoint``): only
  each block's inputs are kept, at the cost of a second forward (≈ +1/3 of the step's compute);
- ``Checkpointing(every=k)``: blocks ``0, k, 2k…`` are recomputed, the others keep their activations
  (torchtitan's ``selective_ac_option="k"``): memory and recomputation both scale by ≈ 1/k;
- ``Checkpointing(ops=True)``: op-level selective checkpointing (torchtitan's ``"op"``): inside a
  checkpointed block, the outputs of matmuls and of attention are kept and only the cheap element-wise ops
  (norms, activations, modulation, RoPE) are recomputed. Less memory saved than full recomputation, far
  less compute spent: the expensive ops never run twice. torchtitan saves every other matmul; we keep all
  of them (one rule, and the recomputed work is then purely element-wise).

Gradients are the same with any of these as without: recomputation replays the same kernels on the same
inputs (``tests/test_models.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from minivdit.config import check_types

aten = torch.ops.aten
SAVED_OPS = {
    aten.mm.default,
    aten.addmm.default,
    aten.bmm.default,
    aten.baddbmm.default,
    aten._scaled_dot_product_efficient_attention.default,
    aten._scaled_dot_product_flash_attention.default,
    aten._scaled_dot_product_cudnn_attention.default,
    aten._scaled_dot_product_flash_attention_for_cpu.default,
}
"""The ops whose outputs op-level selective checkpointing keeps (torchtitan's ``_save_list``, minus the
float8 and collective entries): every matmul and every SDPA kernel."""


def _keep_matmuls(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


@dataclass(frozen=True)
class Checkpointing:
    """Which blocks recompute their activations in backward, and how (module docstring)."""

    every: int = 1
    """Recompute blocks ``0, every, 2·every…``; 1 = all of them."""
    ops: bool = False
    """Op-level selective: keep matmul and attention outputs of a recomputed block, recompute the rest."""

    def __post_init__(self):
        check_types(self)
        if self.every < 1:
            raise ValueError(f"Checkpointing.every must be >= 1, got {self.every}")

    def __call__(self, i: int, fn: Callable, *args):
        if i % self.every:
            return fn(*args)
        if self.ops:
            context = partial(create_selective_checkpoint_contexts, _keep_matmuls)
            return checkpoint(fn, *args, use_reentrant=False, context_fn=context)
        return checkpoint(fn, *args, use_reentrant=False)


def run_block(ac: bool | Checkpointing, i: int, fn: Callable, *args):
    """Block ``i`` as ``fn(*args)``, recomputed in backward as ``ac`` says (a backbone's
    ``grad_checkpointing``; pass False outside training)."""
    if ac is False:
        return fn(*args)
    return (Checkpointing() if ac is True else ac)(i, fn, *args)
