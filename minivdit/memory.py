"""Tensor memory of a piece of code, on any device: live and peak bytes of the storages it creates.

``torch.cuda.max_memory_allocated`` has no CPU counterpart, and a process's RSS mixes tensors with the
allocator's caches and Python. ``TensorMemory`` counts exactly what the planner predicts: every storage an
ATen op allocates inside the ``with`` block (through a ``TorchDispatchMode``) is added when it is created and
removed when it is freed (a ``weakref.finalize`` on the storage), so ``peak`` is the largest sum of live
bytes at any moment and ``live`` what is still held at the end (after a forward: the activations autograd
keeps for backward). Storages that existed before the block (parameters, inputs) are not counted; views and
in-place results share their storage and count once. Meta tensors count as what they would allocate: a
forward traced on ``meta`` measures a model that does not fit on this machine (``minivdit/plan.py``).

    with TensorMemory() as mem:
        loss = model(x).square().mean()
    mem.live   # bytes kept for backward
    with TensorMemory() as mem:
        loss.backward()
    mem.peak   # the backward's own transient peak (gradients included)
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class TensorMemory(TorchDispatchMode):
    """Live and peak bytes of the tensor storages created inside the block (module docstring)."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()  # ids of the storages counted and not yet freed

    def _free(self, key: int, nbytes: int) -> None:
        self._seen.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = None
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            # One Python object per storage while it lives (PyTorch keeps it), so its id is the storage's
            # identity, on meta tensors too (which have no data pointer): ``minivdit.plan`` traces on meta.
            storage = t.untyped_storage()
            key = id(storage)
            if key in self._seen:
                continue
            if inputs is None:
                inputs = {
                    id(x.untyped_storage())
                    for x in tree_leaves((args, kwargs or {}))
                    if isinstance(x, torch.Tensor)
                }
            if key in inputs:  # a view or an in-place result: no new memory
                continue
            nbytes = storage.nbytes()
            self._seen.add(key)
            self.live += nbytes
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._free, key, nbytes)
        return out
