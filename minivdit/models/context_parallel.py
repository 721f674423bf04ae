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

References: torchtitan builds the ``(dp, cp)`` mesh with ``cp`` as the inner dimension and shards FSDP over
the flattened ``dp × cp`` ranks, as ``minivdit.dist`` does; finetrainers and xDiT use Ulysses for CogVideoX
and Wan; FlashI2V and UniWorld-OSP train with FSDP 8 × CP 2.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from einops import rearrange
from torch import Tensor


class ContextParallel:
    """A ``cp`` group: this rank's place in it and the three collectives a backbone needs. ``group=None``
    simulates the group on one process (``minivdit.plan`` traces one rank's step on ``meta``): collectives
    become local ops of the same shapes."""

    def __init__(self, size: int, rank: int, group: dist.ProcessGroup | None):
        if size < 2 or not 0 <= rank < size:
            raise ValueError(f"context parallelism needs a group of >= 2 ranks, got size {size}, rank {rank}")
        self.size, self.rank, self.group = size, rank, group

    def __repr__(self) -> str:
        return f"ContextParallel(size={self.size}, rank={self.rank})"

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
        if self.group is None:
            return torch.cat([x] * self.size, dim=dim)
        return _Gather.apply(x, dim, self)

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
        H = q.shape[1]
        self._check(H, "the attention heads")
        q, k, v = (self._seq_to_heads(t) for t in (q, k, v))  # [B, H/cp, L, Dh]
        if (
            extra_qkv is not None
        ):  # this rank's heads of the replicated tokens, in front (one process's order)
            eq, ek, ev = (self.shard(t, dim=1) for t in extra_qkv)  # [B, H/cp, Le, Dh]
            q, k, v = torch.cat([eq, q], dim=2), torch.cat([ek, k], dim=2), torch.cat([ev, v], dim=2)
        out = attend(q, k, v)  # [B, H/cp, (Le +) L, Dh]
        extra = None
        if extra_qkv is not None:
            Le = extra_qkv[0].shape[2]
            extra, out = (
                self.gather(out[:, :, :Le], dim=1),
                out[:, :, Le:],
            )  # [B, H, Le, Dh], [B, H/cp, L, Dh]
        return self._heads_to_seq(out), extra  # [B, H, L/cp, Dh]

    def _seq_to_heads(self, x: Tensor) -> Tensor:
        """[B, H, L/cp, Dh] → [B, H/cp, L, Dh]: head group j goes to rank j, the slices arrive in order."""
        if self.group is None:
            return rearrange(x, "b (g h) l d -> b h (g l) d", g=self.size)  # shapes only (meta)
        return _AllToAll.apply(x, 1, 2, self)

    def _heads_to_seq(self, x: Tensor) -> Tensor:
        """[B, H/cp, L, Dh] → [B, H, L/cp, Dh]: the inverse of ``_seq_to_heads``."""
        if self.group is None:
            return rearrange(x, "b h (g l) d -> b (g h) l d", g=self.size)  # shapes only (meta)
        return _AllToAll.apply(x, 2, 1, self)


def _all_to_all(x: Tensor, scatter_dim: int, gather_dim: int, cp: ContextParallel) -> Tensor:
    """Cut ``x`` in ``cp.size`` chunks along ``scatter_dim``, send chunk j to rank j, and concatenate what
    arrives (rank order) along ``gather_dim``."""
    send = torch.stack(x.chunk(cp.size, dim=scatter_dim)).contiguous()  # [cp, ...chunk]
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=cp.group)
    return torch.cat(recv.unbind(0), dim=gather_dim)


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, scatter_dim: int, gather_dim: int, cp: ContextParallel) -> Tensor:
        ctx.dims, ctx.cp = (scatter_dim, gather_dim), cp
        return _all_to_all(x, scatter_dim, gather_dim, cp)

    @staticmethod
    def backward(ctx, grad: Tensor):
        scatter_dim, gather_dim = ctx.dims
        return _all_to_all(grad, gather_dim, scatter_dim, ctx.cp), None, None, None


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, dim: int, cp: ContextParallel) -> Tensor:
        ctx.dim, ctx.cp = dim, cp
        whole = x.new_empty((cp.size * x.shape[0], *x.shape[1:]))  # rank slices stacked along dim 0
        dist.all_gather_into_tensor(whole, x.contiguous(), group=cp.group)
        return torch.cat(whole.chunk(cp.size), dim=dim)

    @staticmethod
    def backward(ctx, grad: Tensor):
        cp = ctx.cp
        send = torch.cat(grad.chunk(cp.size, dim=ctx.dim)).contiguous()  # rank slices stacked along dim 0
        mine = send.new_empty((send.shape[0] // cp.size, *send.shape[1:]))
        dist.reduce_scatter_tensor(mine, send, group=cp.group)  # Σ over ranks of the gradient of my slice
        return mine, None, None


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
