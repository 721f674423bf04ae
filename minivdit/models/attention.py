"""One attention entry point with interchangeable kernels.

``attention(q, k, v, backend=...)`` takes and returns ``[B, H, L, Dh]`` (heads before length, as SDPA).
Backends:

- ``"sdpa"`` (default): ``torch.nn.functional.scaled_dot_product_attention``; PyTorch picks flash / cuDNN /
  memory-efficient / math itself, so on an H100 this is already a fused kernel.
- ``"flash"``: the flash-attn package (FA3 ``flash_attn_interface`` if present, else FA2 ``flash_attn``);
  needs
  CUDA and fp16/bf16 inputs. Layout ``[B, L, H, Dh]`` on its side, so we transpose.
- ``"xformers"``: ``xformers.ops.memory_efficient_attention`` (also ``[B, L, H, Dh]``).

A backend that cannot run here (package missing, CPU tensors, fp32 for flash) falls back to SDPA and says so
once in the log: a recipe written for an H100 still runs on a laptop.

``mask`` [B, Lk] (bool, True = attend) is a key-padding mask: a context of valid tokens followed by padding
(a VLM's or T5's valid tokens, issue 20) attends to its valid tokens only, so appending padded tokens of any
value leaves the output unchanged. SDPA takes it as a boolean ``attn_mask`` broadcast over heads and queries
(on a GPU PyTorch still picks a fused memory-efficient or cuDNN kernel for it). flash-attn and xformers are
given no mask here: a masked call falls back to SDPA, said once in the log (flash's varlen kernel would need
the keys unpadded per sample; for cross-attention over ≤ 1024 context tokens the SDPA kernel is the cheaper
change). A sample whose mask has no True key is a ValueError: its softmax would be 0/0.

Packages are imported lazily so that importing minivdit never needs the ``gpu`` extra.
"""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Backend = Literal["sdpa", "flash", "xformers"]
BACKENDS: tuple[str, ...] = ("sdpa", "flash", "xformers")
log = logging.getLogger(__name__)


def _sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    attn_mask = mask[:, None, None, :] if mask is not None else None  # [B, 1, 1, Lk]: every head and query
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)


@functools.cache
def _load(backend: str) -> Callable[[Tensor, Tensor, Tensor], Tensor] | None:
    """The kernel as a function on [B, L, H, Dh] tensors, or None if its package is not importable."""
    if backend == "flash":
        for module in ("flash_attn_interface", "flash_attn"):  # FA3 (Hopper) first, then FA2
            try:
                fn = importlib.import_module(module).flash_attn_func
            except (ImportError, AttributeError):
                continue

            def flash(q, k, v, fn=fn):
                out = fn(q, k, v)
                return out[0] if isinstance(out, tuple) else out  # FA3 returns (out, lse)

            return flash
        return None
    if backend == "xformers":
        try:
            ops = importlib.import_module("xformers.ops")
        except ImportError:
            return None
        return lambda q, k, v: ops.memory_efficient_attention(q, k, v)
    raise ValueError(f"unknown attention backend {backend!r}; valid: {BACKENDS}")


@functools.cache
def _warn_once(backend: str, reason: str) -> None:
    log.warning("attention backend %r unavailable (%s); falling back to 'sdpa'", backend, reason)


def available_backends() -> list[str]:
    """Backends whose package imports here (a CUDA device is still needed to run flash / xformers)."""
    return ["sdpa"] + [b for b in BACKENDS[1:] if _load(b) is not None]


def attention(
    q: Tensor, k: Tensor, v: Tensor, *, backend: Backend = "sdpa", mask: Tensor | None = None
) -> Tensor:
    """Softmax attention, non-causal, scale 1/sqrt(Dh). q, k, v: [B, H, L, Dh] -> [B, H, L, Dh]; ``mask``
    [B, Lk] bool (True = attend): a key-padding mask (module docstring)."""
    if q.ndim != 4 or k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"attention expects q, k, v as [B, H, L, Dh] with matching B, H, Dh; got q {tuple(q.shape)}, "
            f"k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if mask is not None:
        B, Lk = k.shape[0], k.shape[2]
        if mask.shape != (B, Lk) or mask.dtype != torch.bool:
            raise ValueError(
                f"attention mask must be a [B, Lk]=[{B}, {Lk}] bool key mask, got {mask.dtype} "
                f"{tuple(mask.shape)}"
            )
        empty = ~mask.any(dim=1)  # [B]
        if empty.any():
            raise ValueError(f"attention mask: samples {empty.nonzero().flatten().tolist()} attend to no key")
    if q.dtype != v.dtype or k.dtype != v.dtype:
        # Under CUDA autocast LayerNorm/RMSNorm return fp32, so QK-normed q, k arrive in fp32 next to a bf16 v
        # (CogVideoX's norm_q/norm_k). SDPA's autocast rule would cast all three to bf16; do it here for every
        # kernel, so flash / xformers still run instead of falling back (or failing on mixed dtypes).
        q, k = q.to(v.dtype), k.to(v.dtype)
    if backend == "sdpa" or mask is not None:
        if mask is not None and backend != "sdpa":
            _warn_once(backend, "a key mask is given (masked calls run on SDPA)")
        return _sdpa(q, k, v, mask) if mask is not None else _sdpa(q, k, v)
    kernel = _load(backend)
    if kernel is None:
        _warn_once(backend, "package not importable")
        return _sdpa(q, k, v)
    if not q.is_cuda:
        _warn_once(backend, "needs CUDA tensors")
        return _sdpa(q, k, v)
    if backend == "flash" and q.dtype not in (torch.float16, torch.bfloat16):
        _warn_once(backend, f"needs fp16/bf16, got {q.dtype}")
        return _sdpa(q, k, v)
    out = kernel(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # [B, L, H, Dh]
    return out.transpose(1, 2)  # [B, H, L, Dh]
