"""Ulysses context parallelism: one clip's tokens split across the ranks of a ``cp`` group.

DeepSpeed-Ulysses (Jacobs et al., 2023, §3): every rank holds ``L / cp`` of the sequence for all heads;
around attention an all-to-all trades the split, so that each rank holds the whole sequence for ``H / cp``
heads, attends exactly, and a second all-to-all trades back. Everything else in a block (norms, MLP,
modulation) is per token and runs on the local slice untouched. Activation memory and FLOPs per rank fall by
``cp``; the communication is two all-to-alls of q/k/v/out per attention (4 · L · D / cp values per rank).

How a backbone uses it (``dit.py`` full-3-D, ``cogvideox.py``, ``wan.py``):

- after the patch embedding (positions added, FlashI2V's tokens added), the video tokens are cut with
  ``cp.shard(x, dim)``; the RoPE table is cut the same way, so each rank rotates its own slice;
- each self-attention calls ``cp.attention(q, k, v, ...)`` on its local ``[B, H, L/cp, Dh]``; text tokens
  that every rank holds whole (CogVideoX's joint attention) are passed as ``extra_qkv``: each rank takes its
  own heads of them, and their output is gathered over heads; cross-attention (Wan) needs nothing: the
  queries are local, the keys are the whole context on every rank;
- the prediction and the alignment tap are gathered (``cp.gather``) before they leave the model, so the
  objective, the alignment head and the losses see exactly what one process sees.

Why the gradients are exact. Every rank of a ``cp`` group computes the same loss from the same gathered
prediction. Read the group as computing ``Σ_r loss_r`` (``cp`` equal copies): cutting a replicated tensor is
a local slice (its backward pads with zeros), the all-to-all's backward is the inverse all-to-all, and the
gather's backward sums every rank's gradient before cutting (a reduce-scatter). The parameter gradients of
the ranks then add up to ``cp · ∇loss``, and DDP / FSDP2, which average over the whole world (dp × cp), give
``∇loss`` averaged over the data-parallel ranks: the same update as without context parallelism. Ranks of a
``cp`` group must therefore load the same batch and draw the same noise (``train.py``: data and seeds follow
the data-parallel rank).

Only in training mode: ``model.eval()`` (sampling, evaluation) runs the whole sequence on each rank without
communication, so a rank can sample alone.

Requirements, checked with a ``ValueError`` naming the sizes: the video tokens and the heads divisible by
``cp``. Padding uneven sequences (finetrainers does) is not done.

Where the communication lives. This file does not talk to ``torch.distributed`` (DESIGN.md §1): the base
class ``ContextParallel`` holds the token arithmetic and stands for the group on one process, its three
collectives (``gather``, ``_seq_to_heads``, ``_heads_to_seq``) done as local ops of the same shapes (what
``minivdit.plan`` traces on ``meta``); ``minivdit.dist.GroupContextParallel`` overrides them with the
autograd all-to-all and all-gather of a real process group.

References: torchtitan builds the ``(dp, cp)`` mesh with ``cp`` as the inner dimension and shards FSDP over
the flattened ``dp × cp`` ranks, as ``minivdit.dist`` does; finetrainers and xDiT use Ulysses for CogVideoX
and Wan; FlashI2V and UniWorld-OSP train with FSDP 8 × CP 2.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from einops import rearrange
from torch import Tensor


class ContextParallel:
    """This rank's place in a ``cp`` group and what a backbone calls (module docstring). On its own it
    stands for the group on one process: the collectives are local ops of the same shapes, the values
    meaningless (``minivdit.plan`` traces one rank's step on ``meta``); ``minivdit.dist.GroupContextParallel``
    communicates."""

    def __init__(self, size: int, rank: int):
        if size < 2 or not 0 <= rank < size:
            raise ValueError(f"context parallelism needs a group of >= 2 ranks, got size {size}, rank {rank}")
        self.size, self.rank = size, rank

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, rank={self.rank})"

    def _check(self, n: int, what: str) -> None:
        if n % self.size:
            raise ValueError(
                f"context parallelism over {self.size} ranks needs {what} divisible by {self.size}, got {n}"
            )

    def shard(self, x: Tensor, dim: int) -> Tensor:
        """This rank's contiguous slice of a tensor every rank holds whole (a local cut, no communication)."""
        self._check(x.shape[dim], f"dim {dim} of a {tuple(x.shape)} tensor")
        return x.chunk(self.size, dim=dim)[self.rank]

    def gather(self, x: Tensor, dim: int) -> Tensor:
        """The whole tensor from every rank's slice along ``dim`` (rank order); backward sums and cuts."""
        return torch.cat([x] * self.size, dim=dim)  # one process: the shape only

    def attention(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        attend: Callable[[Tensor, Tensor, Tensor], Tensor],
        extra_qkv: tuple[Tensor, Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Exact attention over the whole sequence from local ``q, k, v [B, H, L/cp, Dh]``.

        ``extra_qkv`` are tokens every rank holds whole ([B, H, Le, Dh]: CogVideoX's text), placed before the
        sequence as in one process. ``attend(q, k, v)`` is the backbone's kernel call. Returns the local
        output [B, H, L/cp, Dh] and the extra tokens' whole output [B, H, Le, Dh] (or None)."""
        self._check(q.shape[1], "the attention heads")
        q, k, v = (self._seq_to_heads(t) for t in (q, k, v))  # [B, H/cp, L, Dh]
        if extra_qkv is None:
            return self._heads_to_seq(attend(q, k, v)), None  # [B, H, L/cp, Dh]
        # this rank's heads of the replicated tokens, in front (one process's order)
        eq, ek, ev = (self.shard(t, dim=1) for t in extra_qkv)  # [B, H/cp, Le, Dh]
        out = attend(torch.cat([eq, q], dim=2), torch.cat([ek, k], dim=2), torch.cat([ev, v], dim=2))
        Le = eq.shape[2]  # out: [B, H/cp, Le + L, Dh]
        extra = self.gather(out[:, :, :Le], dim=1)  # [B, H, Le, Dh]
        return self._heads_to_seq(out[:, :, Le:]), extra  # [B, H, L/cp, Dh]

    def _seq_to_heads(self, x: Tensor) -> Tensor:
        """[B, H, L/cp, Dh] → [B, H/cp, L, Dh]: head group j goes to rank j, the slices arrive in order."""
        return rearrange(x, "b (g h) l d -> b h (g l) d", g=self.size)  # one process: the shape only

    def _heads_to_seq(self, x: Tensor) -> Tensor:
        """[B, H/cp, L, Dh] → [B, H, L/cp, Dh]: the inverse of ``_seq_to_heads``."""
        return rearrange(x, "b h (g l) d -> b (g h) l d", g=self.size)  # one process: the shape only


def enable(model: torch.nn.Module, cp: ContextParallel) -> int:
    """Give every module of ``model`` that declares a ``cp`` attribute (the backbone and its self-attention
    layers) the group. Returns how many; ``ValueError`` naming the model when none does."""
    modules = [m for m in model.modules() if hasattr(m, "cp")]
    if not modules:
        raise ValueError(
            f"{type(model).__name__} does not support context parallelism (--parallel.cp): it is built for "
            "CogVideoX, Wan and the full-3-D V-DiT"
        )
    for m in modules:
        m.cp = cp
    return len(modules)
