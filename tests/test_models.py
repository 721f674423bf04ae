"""Models: attention backends, shared layers, V-DiT, the RepVideo gate, bad input, Latte weight conversion.

Run: ``pytest -q tests/test_models.py`` (CPU, tiny configs, about a minute on 2 cores, a third of it
``test_converted_latte_samples_through_the_clis``, whose two subprocesses each import torch; the real presets
are only counted, on the meta device).

Two oracles live in this file: MAE's numpy sin-cos formulas, and ``LatteOracle``, an independent, compact
re-implementation of Vchitect/Latte ``models/latte.py`` (variant 1, math attention) holding its parameters
under Latte's names. Its random state dict goes through ``tools/convert_weights.py`` into a VDiT and the two
forwards must agree to 1e-5 (fp32 sums over widths of 64: a few ulp of O(1) outputs), also after the round
trip through a pretrained folder (``save_pretrained`` then ``dist.load_pretrained``, what sampling and
``--pretrained`` read). ``tools/`` is a folder of scripts, not a package, so the converter is loaded from
its path with ``importlib.util``.

Most numerical tests use ``_randomize``: at init every block is the identity and the output is exactly zero
(adaLN-Zero), which would make layout, tap or gate tests pass vacuously.
"""

import argparse
import dataclasses
import importlib.util
import logging
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import tyro
from einops import rearrange, repeat
from safetensors.torch import load_file

import minivdit.dist as dist_mod
import minivdit.models.attention as attn_mod
import minivdit.models.dit as dit_mod
from minivdit.models.attention import attention, available_backends
from minivdit.models.blocks import (
    LabelEmbedder,
    TimestepEmbedder,
    apply_rope,
    rope_3d,
    sincos_1d,
    sincos_2d,
)
from minivdit.models.checkpointing import Checkpointing
from minivdit.models.cond import Cond
from minivdit.models.dit import PRESETS, DiTConfig, VDiT, num_params, preset
from minivdit.models.repvideo import RepVideoGate
from minivdit.models.vae.sd import SDVAE, SDVAEConfig
from minivdit.objectives.flow import FlowConfig
from minivdit.sample import SampleConfig, sample

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("convert_weights", ROOT / "tools" / "convert_weights.py")
convert_weights = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(convert_weights)

# Tiny: F=3 frames and N=16 tokens per frame differ, so a swapped layout cannot go unnoticed.
TINY = DiTConfig(depth=4, hidden_size=32, num_heads=2, input_size=(8, 8), num_frames=3, num_classes=0)


def _model(cfg: DiTConfig = TINY, seed: int = 0) -> VDiT:
    torch.manual_seed(seed)
    model = VDiT(cfg)
    model.init_weights()
    return model.eval()


@torch.no_grad()
def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Every trainable weight random and fan-in scaled (adaLN and final layer included), except a RepVideo
    gate, which keeps its init; the output is then O(1) and every residual branch is open."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.startswith("repvideo") or not p.requires_grad:
            continue
        std = p[0].numel() ** -0.5 if p.ndim > 1 else 0.1
        p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


def _inputs(cfg: DiTConfig = TINY, batch: int = 2, frames: int | None = None, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, frames or cfg.num_frames, cfg.in_channels, *cfg.input_size, generator=g)
    t_model = torch.tensor([3.0, 517.0, 999.0][:batch])
    y = torch.tensor([1, 4, 0][:batch]) if cfg.num_classes else None
    return x, t_model, y


# ---------------------------------------------------------------------------------------------- attention


def _qkv(shape=(2, 3, 10, 8), seed: int = 0, **kw):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(shape, generator=g, **kw) for _ in range(3))


def _naive_attention(q, k, v):
    q, k, v = (a.double() for a in (q, k, v))
    return (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(dim=-1) @ v


@pytest.mark.parametrize("backend", available_backends())
def test_attention_backends_match_naive_fp64(backend):
    # fp32 (the CPU kernel is SDPA's fused one or the math path, by ISA and shape): a score q·k/√d (d = 8,
    # |q||k| ≲ 20) carries ≲ √d·u·|q||k|/√d ≈ 1.2e-6, the softmax turns it into that relative error of the
    # weights, times |v| ≲ 3, plus the 10-term average's rounding: ≈ 5e-6; bf16 (CUDA): P and the output
    # rounded to 8 bits, 2^-8·max|v|.
    if backend == "sdpa":
        q, k, v = _qkv()
        tol = 1e-5
    else:  # flash / xformers only run on CUDA in half precision; elsewhere they are the SDPA fallback
        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        q, k, v = _qkv(device=device, dtype=dtype)
        tol = 2e-2 if device == "cuda" else 1e-5
    out = attention(q, k, v, backend=backend)
    assert out.shape == q.shape and out.dtype == q.dtype
    torch.testing.assert_close(out.double(), _naive_attention(q, k, v), rtol=0, atol=tol)


def test_attention_unknown_backend_raises():
    with pytest.raises(ValueError, match="'nope'"):
        attention(*_qkv(), backend="nope")


@pytest.mark.parametrize("backend", ["flash", "xformers"])
def test_attention_unavailable_backend_falls_back_once(backend, caplog):
    q, k, v = _qkv()  # CPU fp32: never runnable by flash-attn / xformers
    attn_mod._warn_once.cache_clear()
    with caplog.at_level(logging.WARNING, logger=attn_mod.log.name):
        outs = [attention(q, k, v, backend=backend) for _ in range(3)]
    for out in outs:  # the fallback is the same SDPA call on the same tensors: bit-identical
        assert torch.equal(out, attention(q, k, v, backend="sdpa"))
    records = [r for r in caplog.records if r.name == attn_mod.log.name]
    assert len(records) == 1 and backend in records[0].getMessage() and "sdpa" in records[0].getMessage()


@pytest.mark.parametrize(
    "shapes",
    [
        ((2, 10, 8), (2, 10, 8), (2, 10, 8)),  # 3-D
        ((2, 3, 10, 8), (2, 3, 12, 8), (2, 3, 11, 8)),  # k, v lengths differ
        ((2, 3, 10, 8), (2, 4, 10, 8), (2, 4, 10, 8)),  # heads differ
        ((2, 3, 10, 8), (2, 3, 10, 6), (2, 3, 10, 6)),  # head width differs
    ],
)
def test_attention_bad_shapes_raise(shapes):
    q, k, v = (torch.zeros(s) for s in shapes)
    with pytest.raises(ValueError, match=re.escape(str(tuple(shapes[0])))):
        attention(q, k, v)


@pytest.mark.parametrize("backend", ["sdpa", "flash"])
def test_attention_key_mask_ignores_padding(backend):
    """A key mask (issue 20: a context of valid tokens, then padding) gives each sample the attention over its
    valid keys only, whatever the padded keys hold: equal to the fp64 reference on the unpadded keys, to the
    fp32 bound of the unmasked test above (masked scores are -inf, exp(-inf) = 0 exactly, so the valid
    keys' weights are the unpadded softmax's); flash on a CPU (or with a mask) is SDPA."""
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 3, s, 8, generator=g) for s in (5, 9, 9))
    lengths = [4, 9]  # sample 0: 4 valid keys then 5 of garbage; sample 1: all valid
    mask = torch.arange(9)[None] < torch.tensor(lengths)[:, None]  # [B, Lk]
    k[0, :, 4:], v[0, :, 4:] = 1e4, -1e4  # garbage that would dominate if attended
    out = attention(q, k, v, backend=backend, mask=mask)
    for b, n in enumerate(lengths):
        want = _naive_attention(q[b : b + 1], k[b : b + 1, :, :n], v[b : b + 1, :, :n])
        torch.testing.assert_close(out[b : b + 1].double(), want, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=r"samples \[1\] attend to no key"):
        attention(q, k, v, mask=torch.stack([mask[0], torch.zeros(9, dtype=torch.bool)]))
    with pytest.raises(ValueError, match=r"\[B, Lk\]=\[2, 9\] bool key mask"):
        attention(q, k, v, mask=mask[:, :5])


# ---------------------------------------------------------------------------------------------- blocks


def _mae_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    """MAE ``get_1d_sincos_pos_embed_from_grid`` (util/pos_embed.py), verbatim in numpy."""
    omega = np.arange(dim // 2, dtype=np.float64)
    omega /= dim / 2.0
    omega = 1.0 / 10000**omega
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def _mae_2d(dim: int, grid_h: int, grid_w: int) -> np.ndarray:
    """MAE ``get_2d_sincos_pos_embed`` for a grid_h x grid_w grid. ``np.meshgrid(grid_w, grid_h)`` puts the w
    coordinate in grid[0], so the first half of the width encodes w (MAE calls it ``emb_h``)."""
    grid_h_, grid_w_ = np.arange(grid_h, dtype=np.float32), np.arange(grid_w, dtype=np.float32)
    grid = np.meshgrid(grid_w_, grid_h_)  # here w goes first
    grid = np.stack(grid, axis=0).reshape([2, 1, grid_h, grid_w])
    return np.concatenate([_mae_1d(dim // 2, grid[0]), _mae_1d(dim // 2, grid[1])], axis=1)


@pytest.mark.parametrize("grid", [(4, 4), (3, 5), (5, 2)])
def test_sincos_2d_equals_mae(grid):
    ours = sincos_2d(32, *grid)
    assert ours.shape == (grid[0] * grid[1], 32) and ours.dtype == torch.float64
    np.testing.assert_allclose(ours.numpy(), _mae_2d(32, *grid), rtol=0, atol=1e-12)
    # row-major (h, w) tokens: moving one token right changes only the w half (the first half)
    assert torch.equal(ours[1, 16:], ours[0, 16:]) and not torch.equal(ours[1, :16], ours[0, :16])


def test_sincos_1d_temporal_equals_latte():
    # Latte get_1d_sincos_temp_embed(D, F) = MAE 1-D table at positions 0..F-1
    ours = sincos_1d(48, torch.arange(7)).numpy()
    np.testing.assert_allclose(ours, _mae_1d(48, np.arange(7)), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="31"):
        sincos_1d(31, torch.arange(3))


def test_rope_preserves_norms_and_depends_on_relative_position():
    F, gh, gw, dh = 3, 4, 5, 16
    angles = rope_3d(dh, F, gh, gw)
    L = F * gh * gw
    assert angles.shape == (L, dh // 2)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, L, dh, generator=g)
    torch.testing.assert_close(apply_rope(x, angles).norm(dim=-1), x.norm(dim=-1))
    # one query and one key vector placed at every position: scores [L, L] must depend on positions only via
    # their difference along each axis, i.e. be invariant to shifting both along t, h or w.
    q = torch.randn(dh, generator=g).expand(1, 1, L, dh)
    k = torch.randn(dh, generator=g).expand(1, 1, L, dh)
    s = (apply_rope(q, angles)[0, 0] @ apply_rope(k, angles)[0, 0].T).view(F, gh, gw, F, gh, gw)
    torch.testing.assert_close(s[1:, :, :, 1:], s[:-1, :, :, :-1], atol=1e-5, rtol=0)  # shift along t
    torch.testing.assert_close(s[:, 1:, :, :, 1:], s[:, :-1, :, :, :-1], atol=1e-5, rtol=0)  # along h
    torch.testing.assert_close(s[:, :, 1:, :, :, 1:], s[:, :, :-1, :, :, :-1], atol=1e-5, rtol=0)  # along w
    for other in (s[0, 0, 0, 1, 0, 0], s[0, 0, 0, 0, 1, 0], s[0, 0, 0, 0, 0, 1]):  # and positions do matter
        assert (other - s[0, 0, 0, 0, 0, 0]).abs() > 1e-3


def test_timestep_embedding_layout_is_dit():
    t = torch.tensor([0.0, 1.0, 250.5, 999.0])
    emb = TimestepEmbedder.timestep_embedding(t, 256)
    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)  # DiT / GLIDE
    args = t[:, None] * freqs[None]
    torch.testing.assert_close(emb, torch.cat([torch.cos(args), torch.sin(args)], dim=-1), rtol=0, atol=0)
    assert torch.equal(emb[0, :half], torch.ones(half)) and torch.equal(emb[0, half:], torch.zeros(half))
    odd = TimestepEmbedder.timestep_embedding(t, 7)
    assert odd.shape == (4, 7) and torch.equal(odd[:, -1], torch.zeros(4))


def test_label_dropout_rate_train_only_and_null_class():
    torch.manual_seed(0)
    emb = LabelEmbedder(num_classes=10, dim=8, dropout_prob=0.25)
    assert emb.embedding_table.num_embeddings == 11  # null class = index num_classes = 10
    labels = torch.randint(0, 10, (20_000,))
    null = emb.embedding_table.weight[10]

    def dropped(e: LabelEmbedder) -> torch.Tensor:
        return (e(labels) == null).all(dim=-1)

    rate = dropped(emb.train()).float().mean().item()
    assert abs(rate - 0.25) < 0.015  # 5 sigma at n = 20k
    assert not dropped(emb.eval()).any()
    emb.dropout_prob = 1.0
    assert dropped(emb.train()).all()  # every dropped label becomes exactly the null row
    emb.dropout_prob = 0.0
    assert not dropped(emb.train()).any()


def test_dit_block_is_identity_at_init():
    model = _model(dataclasses.replace(TINY, num_classes=5))
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(6, 7, 32, generator=g), torch.randn(2, 32, generator=g)  # 6 sequences of 2 samples
    for block in model.blocks:
        assert torch.equal(block(x, c), x)
    assert torch.equal(model.final_layer.linear(x), torch.zeros(6, 7, model.final_layer.linear.out_features))


# ---------------------------------------------------------------------------------------------- V-DiT


@pytest.mark.parametrize("block_type", ["spatiotemporal", "full3d"])
@pytest.mark.parametrize("learn_sigma", [True, False])
@pytest.mark.parametrize("input_size", [(8, 8), (8, 12)])
def test_output_shape_and_zero_at_init(block_type, learn_sigma, input_size):
    cfg = dataclasses.replace(
        TINY, block_type=block_type, learn_sigma=learn_sigma, input_size=input_size, num_classes=5
    )
    model = _model(cfg)
    x, t, y = _inputs(cfg)
    out = model(x, t, Cond(label=y))
    C = 8 if learn_sigma else 4
    assert out.pred.shape == (2, 3, C, *input_size) and out.hidden is None
    assert torch.equal(out.pred, torch.zeros_like(out.pred))  # adaLN-Zero + zero final linear
    assert _randomize(model)(x, t, Cond(label=y)).pred.abs().mean() > 0.1


@pytest.mark.parametrize("block_type", ["spatiotemporal", "full3d"])
def test_tap_is_output_of_block_k(block_type):
    cfg = dataclasses.replace(TINY, block_type=block_type)
    model = _randomize(_model(cfg))
    x, t, _ = _inputs(cfg)
    B, F, N, D = 2, 3, 16, 32
    reference = model(x, t).pred
    for k in range(1, cfg.depth + 1):
        seen = []
        handle = model.blocks[k - 1].register_forward_hook(lambda m, args, out, seen=seen: seen.append(out))
        out = model(x, t, tap=k)
        handle.remove()
        assert out.hidden.shape == (B, F, N, D)
        assert torch.equal(out.pred, reference)  # tapping changes nothing
        (raw,) = seen
        if block_type == "full3d":
            expected = rearrange(raw, "b (f n) d -> b f n d", f=F)
        elif k % 2 == 1:  # odd k: a spatial block, sequences are frames
            assert raw.shape == (B * F, N, D)
            expected = rearrange(raw, "(b f) n d -> b f n d", b=B)
        else:  # even k: a temporal block, sequences are patch positions
            assert raw.shape == (B * N, F, D)
            expected = rearrange(raw, "(b n) f d -> b f n d", b=B)
        assert torch.equal(out.hidden, expected)


def test_meta_build_equals_eager_build():
    cfg = dataclasses.replace(TINY, num_classes=5, repvideo_gate="sigmoid", qk_norm=True)
    with torch.device("meta"):
        meta = VDiT(cfg)
    meta.to_empty(device="cpu")
    torch.manual_seed(123)
    meta.init_weights()
    eager = VDiT(cfg)
    torch.manual_seed(123)
    eager.init_weights()
    a, b = meta.state_dict(), eager.state_dict()
    assert a.keys() == b.keys() and "pos_embed" not in a  # the sin-cos tables are non-persistent
    for key in a:
        assert torch.equal(a[key], b[key]), key
    for (name, buf_a), (_, buf_b) in zip(meta.named_buffers(), eager.named_buffers(), strict=True):
        assert torch.equal(buf_a, buf_b), name


def test_temporal_table_added_once_before_block_2():
    model = _randomize(_model(dataclasses.replace(TINY, depth=6)))
    x, t, _ = _inputs()
    B, F, N = 2, 3, 16
    ins, outs = {}, {}
    hooks = [
        h
        for i, block in enumerate(model.blocks)
        for h in (
            block.register_forward_pre_hook(lambda m, args, i=i: ins.__setitem__(i, args[0])),
            block.register_forward_hook(lambda m, args, out, i=i: outs.__setitem__(i, out)),
        )
    ]
    model(x, t)
    for h in hooks:
        h.remove()

    def tokens(i: int, seq: torch.Tensor) -> torch.Tensor:  # block i's sequences -> [B, F, N, D]
        pattern = "(b f) n d -> b f n d" if i % 2 == 0 else "(b n) f d -> b f n d"
        return rearrange(seq, pattern, b=B)

    temp = model.temp_embed[:, :, None]  # [1, F, 1, D]
    torch.testing.assert_close(tokens(1, ins[1]), tokens(0, outs[0]) + temp, rtol=0, atol=0)
    for i in range(2, 6):
        assert torch.equal(tokens(i, ins[i]), tokens(i - 1, outs[i - 1])), i
    assert not torch.equal(temp[0, 0], temp[0, 1])
    assert ins[1].shape == (B * N, F, 32)


def test_full3d_rope_positions_matter_and_frames_are_free(monkeypatch):
    cfg = dataclasses.replace(TINY, block_type="full3d", hidden_size=48, num_heads=2)  # head width 24
    model = _randomize(_model(cfg))
    x, t, _ = _inputs(cfg)
    perm = torch.tensor([2, 0, 1])
    moved = model(x[:, perm], t).pred
    assert not torch.allclose(moved, model(x, t).pred[:, perm], atol=1e-3)
    for frames in (1, 2, 5):  # RoPE needs no fixed frame count
        assert model(*_inputs(cfg, frames=frames)[:2]).pred.shape == (2, frames, 8, 8, 8)
    # control: without positions (all angles 0) full attention is permutation-equivariant over frames, up to
    # fp32 sums in another order: 4 blocks of width 48 (Σk ≈ 2000 per output) ≈ √2000·u ≈ 3e-6 of |pred| ≲ 4
    monkeypatch.setattr(dit_mod, "rope_3d", lambda dh, f, h, w, theta: torch.zeros(f * h * w, dh // 2))
    torch.testing.assert_close(model(x[:, perm], t).pred, model(x, t).pred[:, perm], atol=2e-5, rtol=1e-5)


def test_temporal_patch_is_a_3d_patchify_and_its_exact_inverse():
    """``patch_t=2``: the embedding is a Conv3d of kernel (2, p, p) over the clip, the tap holds F/2 token
    frames, and the unpatchify puts token (j, h, w)'s values for frame τ back at frame 2j + τ."""
    cfg = dataclasses.replace(TINY, block_type="full3d", patch_t=2, num_frames=4, learn_sigma=False)
    model = _model(cfg)
    x, t, _ = _inputs(cfg)
    B, Fr, C, H, W = x.shape
    p, pt, D = cfg.patch_size, 2, cfg.hidden_size
    assert torch.equal(model(x, t).pred, torch.zeros_like(x))  # adaLN-Zero still closes every branch
    model = _randomize(model)
    conv = model.x_embedder.proj  # [D, pt·C, p, p], channels ordered (t c)
    w3d = rearrange(conv.weight, "d (t c) p q -> d c t p q", t=pt)
    clip = rearrange(x, "b f c h w -> b c f h w")
    want = torch.nn.functional.conv3d(clip, w3d, conv.bias, stride=(pt, p, p))
    want = rearrange(want, "b d f h w -> b f (h w) d")  # [B, F/2, N, D]
    torch.testing.assert_close(rearrange(model.x_embedder(x), "(b f) n d -> b f n d", b=B), want)
    seen = []
    handle = model.final_layer.register_forward_hook(lambda m, args, out: seen.append(out))
    out = model(x, t, tap=2)
    handle.remove()
    gh, gw = H // p, W // p
    assert out.pred.shape == x.shape and out.hidden.shape == (B, Fr // pt, gh * gw, D)
    tokens = seen[0].reshape(B, Fr // pt, gh, gw, p, p, pt, C)  # per token: (p q t c)
    for j, tau, h, w in [(0, 0, 0, 0), (0, 1, 1, 0), (1, 0, 0, 1), (1, 1, 1, 1)]:
        patch = out.pred[:, pt * j + tau, :, h * p : (h + 1) * p, w * p : (w + 1) * p]  # [B, C, p, p]
        assert torch.equal(patch, rearrange(tokens[:, j, h, w, :, :, tau], "b p q c -> b c p q"))


def test_temporal_patch_needs_full3d_and_whole_patches():
    with pytest.raises(ValueError, match="patch_t=2 needs block_type='full3d'"):
        dataclasses.replace(TINY, patch_t=2)
    cfg = dataclasses.replace(TINY, block_type="full3d", patch_t=2)
    with pytest.raises(ValueError, match="3 frames, not a multiple of patch_t=2"):
        _model(cfg)(*_inputs(cfg)[:2])


LATTE_COUNTS = {
    "V-DiT-S/2": 32_480_672,
    "V-DiT-B/2": 129_547_040,
    "V-DiT-L/2": 456_815_648,
    "V-DiT-XL/2": 673_681_568,
}


@pytest.mark.parametrize("name", sorted(LATTE_COUNTS))
def test_preset_parameter_counts_match_latte(name):
    cfg = preset(name)
    with torch.device("meta"):
        uncond, ucf = VDiT(cfg), VDiT(dataclasses.replace(cfg, num_classes=101))
    assert num_params(uncond) == LATTE_COUNTS[name]
    assert num_params(ucf) - num_params(uncond) == 102 * cfg.hidden_size  # 101 classes + the CFG null row
    if name == "V-DiT-XL/2":
        assert (cfg.depth, cfg.hidden_size, cfg.num_heads) == (28, 1152, 16)
        assert round(num_params(uncond) / 1e6, 2) == 673.68


def _loss_and_grads(model: VDiT, x, t, y=None):
    model.zero_grad(set_to_none=True)
    pred = model(x, t, Cond(label=y)).pred
    (pred.square().mean() + pred.mean()).backward()
    return pred.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("block_type", ["spatiotemporal", "full3d"])
@pytest.mark.parametrize("ac", [True, Checkpointing(every=2), Checkpointing(ops=True)], ids=str)
def test_grad_checkpointing_is_exact(block_type, ac):
    cfg = dataclasses.replace(TINY, block_type=block_type, num_classes=5, class_dropout_prob=0.0)
    model = _randomize(_model(cfg)).train()
    x, t, y = _inputs(cfg)
    pred, grads = _loss_and_grads(model, x, t, y)
    model.grad_checkpointing = ac
    pred_ckpt, grads_ckpt = _loss_and_grads(model, x, t, y)
    assert torch.equal(pred, pred_ckpt)  # the recompute replays the same kernels on the same shapes
    assert grads.keys() == grads_ckpt.keys() and len(grads) == len(list(model.parameters()))
    for name in grads:
        assert torch.equal(grads[name], grads_ckpt[name]), name


# ---------------------------------------------------------------------------------------------- Latte oracle


class _LatteAttention(nn.Module):  # timm layout, Latte attention_mode="math"
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads, self.scale = num_heads, (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q @ k.transpose(-2, -1) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))


class _LatteMlp(nn.Module):  # timm Mlp with GELU(tanh)
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def _latte_modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class _LatteBlock(nn.Module):  # TransformerBlock: c is one vector per *sequence*
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = _LatteAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = _LatteMlp(dim, 4 * dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x, c):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, 1)
        x = x + gate_msa.unsqueeze(1) * self.attn(_latte_modulate(self.norm1(x), shift_msa, scale_msa))
        return x + gate_mlp.unsqueeze(1) * self.mlp(_latte_modulate(self.norm2(x), shift_mlp, scale_mlp))


class _LatteFinal(nn.Module):
    def __init__(self, dim: int, patch: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch * patch * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(_latte_modulate(self.norm_final(x), shift, scale))


class LatteOracle(nn.Module):
    """Latte ``models/latte.py`` variant 1 (extras 1: unconditional, 2: class-conditional), square frames."""

    def __init__(
        self,
        *,
        input_size: int,
        patch: int,
        in_ch: int,
        dim: int,
        depth: int,
        heads: int,
        frames: int,
        num_classes: int,
        learn_sigma: bool = True,
    ):
        super().__init__()
        self.patch, self.out_channels = patch, 2 * in_ch if learn_sigma else in_ch
        self.x_embedder = nn.Module()
        self.x_embedder.proj = nn.Conv2d(in_ch, dim, kernel_size=patch, stride=patch)
        self.t_embedder = nn.Module()
        self.t_embedder.mlp = nn.Sequential(nn.Linear(256, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.y_embedder = None
        if num_classes:
            self.y_embedder = nn.Module()
            self.y_embedder.embedding_table = nn.Embedding(num_classes + 1, dim)
        g = input_size // patch
        self.pos_embed = nn.Parameter(torch.from_numpy(_mae_2d(dim, g, g)).float()[None], requires_grad=False)
        temp = _mae_1d(dim, np.arange(frames))
        self.temp_embed = nn.Parameter(torch.from_numpy(temp).float()[None], requires_grad=False)
        self.blocks = nn.ModuleList(_LatteBlock(dim, heads) for _ in range(depth))
        self.final_layer = _LatteFinal(dim, patch, self.out_channels)

    @staticmethod
    def timestep_embedding(t, dim, max_period=10000):
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(start=0, end=half, dtype=torch.float32) / half)
        args = t[:, None].float() * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def unpatchify(self, x):
        c, p = self.out_channels, self.patch
        h = w = int(x.shape[1] ** 0.5)
        x = torch.einsum("nhwpqc->nchpwq", x.reshape(x.shape[0], h, w, p, p, c))
        return x.reshape(x.shape[0], c, h * p, h * p)

    def forward(self, x, t, y=None):
        batches = x.shape[0]
        x = rearrange(x, "b f c h w -> (b f) c h w")
        x = self.x_embedder.proj(x).flatten(2).transpose(1, 2) + self.pos_embed  # timm PatchEmbed
        t = self.t_embedder.mlp(self.timestep_embedding(t, 256))
        c_spatial = repeat(t, "n d -> (n c) d", c=self.temp_embed.shape[1])
        c_temp = repeat(t, "n d -> (n c) d", c=self.pos_embed.shape[1])
        if self.y_embedder is not None:
            y = self.y_embedder.embedding_table(y)  # eval: no label drop
            c_spatial = c_spatial + repeat(y, "n d -> (n c) d", c=self.temp_embed.shape[1])
            c_temp = c_temp + repeat(y, "n d -> (n c) d", c=self.pos_embed.shape[1])
        for i in range(0, len(self.blocks), 2):
            spatial_block, temp_block = self.blocks[i : i + 2]
            x = spatial_block(x, c_spatial)
            x = rearrange(x, "(b f) t d -> (b t) f d", b=batches)
            if i == 0:
                x = x + self.temp_embed
            x = temp_block(x, c_temp)
            x = rearrange(x, "(b t) f d -> (b f) t d", b=batches)
        x = self.unpatchify(self.final_layer(x, c_spatial))
        return rearrange(x, "(b f) c h w -> b f c h w", b=batches)


def _oracle(num_classes: int, seed: int = 0) -> tuple[LatteOracle, DiTConfig]:
    torch.manual_seed(seed)
    oracle = LatteOracle(
        input_size=8, patch=2, in_ch=4, dim=64, depth=4, heads=4, frames=3, num_classes=num_classes
    )
    cfg = DiTConfig(
        depth=4,
        hidden_size=64,
        num_heads=4,
        input_size=(8, 8),
        num_frames=3,
        num_classes=num_classes,
        learn_sigma=True,
    )
    return _randomize(oracle, seed).eval(), cfg


LATTE_KEYS = {
    "pos_embed",
    "temp_embed",
    "x_embedder.proj.weight",
    "t_embedder.mlp.0.bias",
    "t_embedder.mlp.2.weight",
    "blocks.3.attn.qkv.weight",
    "blocks.3.attn.proj.bias",
    "blocks.3.mlp.fc1.weight",
    "blocks.3.mlp.fc2.bias",
    "blocks.3.adaLN_modulation.1.weight",
    "final_layer.linear.weight",
    "final_layer.adaLN_modulation.1.bias",
}


@pytest.mark.parametrize("num_classes", [0, 7])
def test_latte_parity(num_classes):
    oracle, cfg = _oracle(num_classes)
    sd = oracle.state_dict()
    assert sd.keys() >= LATTE_KEYS and ("y_embedder.embedding_table.weight" in sd) == bool(num_classes)
    assert all(p.abs().max() > 0 for n, p in oracle.named_parameters() if "adaLN" in n)  # not vacuous
    model = VDiT(cfg)
    model.init_weights()
    model.load_state_dict(convert_weights.latte_to_minivdit(sd), strict=True)
    model.eval()
    x, t, y = _inputs(cfg, batch=3)
    with torch.no_grad():
        ref, ours = oracle(x, t, y), model(x, t, Cond(label=y)).pred
    assert ours.shape == ref.shape == (3, 3, 8, 8, 8) and ref.abs().mean() > 0.1
    # fp32, two implementations (math attention vs SDPA, other reshapes): 4 blocks of width 64, ≈ 32 products
    # of k ≤ 256 terms, ≈ √32·√256·u ≈ 5e-6 of the output's scale: 1e-5 · max|ref|
    assert (ours - ref).abs().max().item() <= 1e-5 * ref.abs().max().item()
    assert convert_weights.infer_config(sd, num_heads=cfg.num_heads) == cfg


# ---------------------------------------------------------------------------------------------- converter


def test_convert_latte_checkpoint_end_to_end(tmp_path, capsys):
    oracle, cfg = _oracle(num_classes=7)
    ema_sd = oracle.state_dict()
    # a DDP save of other weights (the frozen tables stay sin-cos)
    model_sd = {f"module.{k}": v if k in ("pos_embed", "temp_embed") else v + 1 for k, v in ema_sd.items()}
    torch.save({"model": model_sd, "ema": ema_sd}, tmp_path / "train.pt")
    torch.save({f"module.{k}": v for k, v in ema_sd.items()}, tmp_path / "bare.pt")
    x, t, y = _inputs(cfg)
    with torch.no_grad():
        ref = oracle(x, t, y)

    for src, flags, expected in [
        ("train.pt", [], ema_sd),
        ("train.pt", ["--no-ema"], model_sd),
        ("bare.pt", [], ema_sd),
    ]:
        out = tmp_path / f"{src.removesuffix('.pt')}{''.join(flags)}"
        convert_weights.main(["latte", str(tmp_path / src), str(out), "--num-heads", "4", *flags])
        printed = capsys.readouterr().out
        assert "--model.num-classes 7" in printed and "--model.hidden-size 64" in printed
        assert f"python -m minivdit.sample --pretrained {out} --vae.kind sd" in printed
        assert dit_mod.DiTConfig.from_json(out / "config.json") == cfg  # the folder's architecture
        converted = load_file(str(out / dit_mod.WEIGHTS_NAME))
        expected = {k.removeprefix("module."): v for k, v in expected.items()}
        assert converted.keys() == expected.keys() - {"pos_embed", "temp_embed"}
        for k, v in converted.items():
            assert torch.equal(v, expected[k]), k
        if src == "bare.pt":  # loaded as sampling and --pretrained runs load it: the Latte forward, to fp32
            with torch.device("meta"):
                model = VDiT(dit_mod.DiTConfig.from_json(out / "config.json"))
            model.to_empty(device="cpu")
            dist_mod.load_pretrained(model, out)
            with torch.no_grad():
                err = (model.eval()(x, t, Cond(label=y)).pred - ref).abs().max().item()
                assert err <= 1e-5 * ref.abs().max().item()  # as test_latte_parity


def test_convert_needs_num_heads_and_a_folder(tmp_path):
    oracle, _ = _oracle(num_classes=0)
    torch.save({"ema": oracle.state_dict()}, tmp_path / "ema.pt")  # Latte's train.py: no "args" entry
    src = str(tmp_path / "ema.pt")
    with pytest.raises(ValueError, match=r"--num-heads is required: .*not in the weight shapes"):
        convert_weights.main(["latte", src, str(tmp_path / "out")])
    with pytest.raises(ValueError, match=r"--num-heads 5 must be a positive divisor of the width 64"):
        convert_weights.main(["latte", src, str(tmp_path / "out"), "--num-heads", "5"])
    with pytest.raises(ValueError, match=r"OUT .*latte\.safetensors: .*pretrained folder .*e\.g\. .*latte$"):
        convert_weights.main(["latte", src, str(tmp_path / "latte.safetensors"), "--num-heads", "4"])
    assert not (tmp_path / "out").exists() and not (tmp_path / "latte.safetensors").exists()
    # naming the folder's weights file names the folder
    convert_weights.main(["latte", src, str(tmp_path / "dir" / dit_mod.WEIGHTS_NAME), "--num-heads", "4"])
    assert sorted(p.name for p in (tmp_path / "dir").iterdir()) == ["config.json", dit_mod.WEIGHTS_NAME]
    torch.save({"ema": oracle.state_dict(), "args": argparse.Namespace(model="Latte-S/2")}, tmp_path / "a.pt")
    with pytest.raises(ValueError, match=r"a\.pt: holds pickled Python objects"):
        convert_weights.main(["latte", str(tmp_path / "a.pt"), str(tmp_path / "x"), "--num-heads", "4"])


def _tiny_sd_vae(folder: Path) -> Path:
    """A random SD-VAE of 4 latent channels and 2x spatial compression (two blocks): Latte's VAE, shrunk."""
    torch.manual_seed(0)
    cfg = SDVAEConfig(block_out_channels=(8, 8), layers_per_block=1, norm_num_groups=4, latent_channels=4)
    SDVAE.from_config(cfg).save_pretrained(folder)
    return folder


def test_converted_latte_samples_through_the_clis(tmp_path, single_thread):
    """The converter and ``python -m minivdit.sample`` as a user runs them (subprocesses): a
    class-conditional Latte checkpoint becomes a pretrained folder, sampled with ``--pretrained FOLDER``, with
    the objective's default (DDPM, learned σ) and the VAE from ``--vae.*``; then the same command line with
    ``--ckpt`` on the folder's safetensors file (parsed by tyro in this process, one interpreter start less)
    gives the same contact sheet (same seed, same weights)."""
    oracle, _ = _oracle(num_classes=7)
    torch.save({"ema": oracle.state_dict()}, tmp_path / "ema.pt")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = tmp_path / "latte"
    convert = [sys.executable, str(ROOT / "tools" / "convert_weights.py"), "latte", str(tmp_path / "ema.pt")]
    proc = subprocess.run([*convert, str(out), "--num-heads", "4"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "'ema' weights" in proc.stdout and "learn_sigma=True" in proc.stdout
    vae = _tiny_sd_vae(tmp_path / "vae")
    common = ["--vae.kind", "sd", "--vae.path", str(vae), "--classes", "0", "6", "--cfg-scale", "4"]
    common += ["--steps", "2", "--device", "cpu"]
    args = ["--pretrained", str(out), *common, "--out", str(tmp_path / "a")]
    proc = subprocess.run(
        [sys.executable, "-m", "minivdit.sample", *args], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "wrote 2 samples" in proc.stdout
    args = ["--ckpt", str(out / dit_mod.WEIGHTS_NAME), *common, "--out", str(tmp_path / "b")]
    assert sample(tyro.cli(SampleConfig, args=args)) == tmp_path / "b"
    for samples in (tmp_path / "a", tmp_path / "b"):
        assert [(samples / f"000{i}.mp4").stat().st_size > 0 for i in range(2)] == [True, True]
        assert not (samples / "0002.mp4").exists()
    assert (tmp_path / "a" / "contact.png").read_bytes() == (tmp_path / "b" / "contact.png").read_bytes()


def test_sample_refuses_what_a_pretrained_folder_cannot_sample(tmp_path):
    oracle, _ = _oracle(num_classes=7)
    folder = tmp_path / "latte"
    sd = convert_weights.latte_to_minivdit(oracle.state_dict())
    dit_mod.save_pretrained(sd, convert_weights.infer_config(oracle.state_dict(), num_heads=4), folder)
    base = dict(out=str(tmp_path / "s"), classes=(0,), steps=1, device="cpu")
    with pytest.raises(ValueError, match=r"4-channel latents, not pixels: give the VAE .*--vae.kind sd"):
        sample(SampleConfig(pretrained=str(folder), **base))
    flow = ["--pretrained", str(folder), "objective:flow-config", "--objective.sampler", "heun", "--seed=1"]
    assert tyro.cli(SampleConfig, args=flow).objective == FlowConfig(sampler="heun")  # flags after it: fine
    with pytest.raises(ValueError, match=r"predicts 4 channels but the V-DiT .* outputs 8"):
        sample(SampleConfig(pretrained=str(folder), objective=FlowConfig(), **base))
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / dit_mod.WEIGHTS_NAME).write_bytes((folder / dit_mod.WEIGHTS_NAME).read_bytes())
    with pytest.raises(
        ValueError, match=r"--ckpt .*bare/diffusion_pytorch_model.safetensors: no config.json"
    ):
        sample(SampleConfig(ckpt=str(tmp_path / "bare" / dit_mod.WEIGHTS_NAME), **base))
    with pytest.raises(ValueError, match=r"--ckpt .*other\.safetensors: a weights file must be the"):
        (tmp_path / "other.safetensors").write_bytes(b"")
        sample(SampleConfig(ckpt=str(tmp_path / "other.safetensors"), **base))
    with pytest.raises(ValueError, match=r"--no-use-ema: the pretrained folder"):
        sample(SampleConfig(pretrained=str(folder), use_ema=False, **base))
    assert not (tmp_path / "s").exists()


def test_convert_rejects_wrong_tables_and_unknown_keys():
    oracle, _ = _oracle(num_classes=0)
    sd = oracle.state_dict()
    with pytest.raises(ValueError, match="temp_embed"):
        convert_weights.latte_to_minivdit({**sd, "temp_embed": sd["temp_embed"].flip(1)})
    with pytest.raises(ValueError, match="pos_embed"):
        convert_weights.latte_to_minivdit({**sd, "pos_embed": sd["pos_embed"] * 1.01})
    with pytest.raises(ValueError, match="text_embedding_projection"):
        convert_weights.latte_to_minivdit({**sd, "text_embedding_projection.1.weight": torch.zeros(2, 2)})


# ---------------------------------------------------------------------------------------------- RepVideo

DEEP = dataclasses.replace(TINY, depth=14, num_frames=2, input_size=(4, 4))  # 14 blocks, 4 tokens per frame


def _gated(cfg: DiTConfig = DEEP, seed: int = 0, **gate) -> VDiT:
    """Random weights, the gate at its init; same block weights as ``_randomize(_model(cfg, seed), seed)``."""
    return _randomize(_model(dataclasses.replace(cfg, repvideo_gate="raw", **gate), seed), seed)


def _set_gate(model: VDiT, values) -> VDiT:
    with torch.no_grad():
        model.repvideo.learnable_gating.copy_(torch.as_tensor(values, dtype=torch.float32))
    return model


@pytest.mark.parametrize("block_type", ["spatiotemporal", "full3d"])
def test_repvideo_gate_zero_is_ungated(block_type):
    cfg = dataclasses.replace(DEEP, block_type=block_type)
    x, t, _ = _inputs(cfg)
    plain = _randomize(_model(cfg))(x, t).pred
    gated = _gated(cfg)
    assert not torch.allclose(gated(x, t).pred, plain)  # the gate at its init (0.5) does something
    assert torch.equal(_set_gate(gated, torch.zeros(14))(x, t).pred, plain)
    # group 1 and the gate at 1: every block's input is its predecessor's output (the cache is just that)
    chain = _set_gate(_gated(cfg, repvideo_group=1), torch.ones(14))
    assert torch.equal(chain(x, t).pred, plain)


def test_repvideo_noop_layers():
    model = _gated()
    x, t, _ = _inputs(DEEP)
    base = model(x, t).pred
    for j in (0, 1, 7, 13):  # the cache holds only the current input: g·h + (1 − g)·h = h
        g = torch.full((14,), 0.5)
        g[j] = 3.0
        torch.testing.assert_close(_set_gate(model, g)(x, t).pred, base)  # equal up to fp32 rounding of g·h
    g = torch.full((14,), 0.5)
    g[2] = 3.0
    assert not torch.allclose(_set_gate(model, g)(x, t).pred, base, atol=1e-3)


def test_repvideo_cache_sizes_follow_the_release():
    gate = RepVideoGate(14, group=6)
    cache, sizes = [torch.zeros(1)], []
    for i in range(14):
        sizes.append(len(cache))
        cache = gate.update(i, torch.full((1,), float(i)), cache)
    assert sizes == [1, 1, 2, 3, 4, 5, 6, 1, 2, 3, 4, 5, 6, 1]
    fixed = RepVideoGate(14, group=3, window="fixed")
    cache = [torch.zeros(1)]
    for i in range(14):
        cache = fixed.update(i, torch.full((1,), float(i)), cache)
        assert len(cache) <= 3
    assert [c.item() for c in cache] == [11.0, 12.0, 13.0]


def test_repvideo_gate_gradient():
    """A non-zero gradient from the first step, on a *trained* backbone with a freshly inserted gate (RepVideo
    gates a pretrained CogVideoX). On a freshly initialised V-DiT every gradient behind the zero final linear
    is exactly zero at step 0, the gate's included, as for every adaLN weight: pinned below as well."""
    x, t, _ = _inputs(DEEP)
    model = _gated().train()
    _, grads = _loss_and_grads(model, x, t)
    g = grads["repvideo.learnable_gating"]
    noop = torch.tensor([j in (0, 1, 7, 13) for j in range(14)])
    assert (g[~noop].abs() > 1e-6).all()
    assert (g[noop].abs() <= 1e-6 * g.abs().max()).all()  # d/dg (g·h + (1 − g)·h) = 0
    fresh = _model(dataclasses.replace(DEEP, repvideo_gate="raw")).train()
    _, grads = _loss_and_grads(fresh, x, t)
    assert torch.equal(grads["repvideo.learnable_gating"], torch.zeros(14))
    assert grads["final_layer.linear.weight"].abs().max() > 0


@pytest.mark.parametrize("window", ["cumulative", "fixed"])
@pytest.mark.parametrize("block_type", ["spatiotemporal", "full3d"])
def test_repvideo_checkpointing_is_exact(window, block_type):
    cfg = dataclasses.replace(DEEP, block_type=block_type)
    model = _gated(cfg, repvideo_window=window, repvideo_group=4).train()
    x, t, _ = _inputs(cfg)
    pred, grads = _loss_and_grads(model, x, t)
    model.grad_checkpointing = True
    pred_ckpt, grads_ckpt = _loss_and_grads(model, x, t)
    assert torch.equal(pred, pred_ckpt) and grads.keys() == grads_ckpt.keys()
    for name in grads:
        assert torch.equal(grads[name], grads_ckpt[name]), name
    assert grads["repvideo.learnable_gating"].abs().sum() > 0


def test_repvideo_init_is_one_half():
    for param in ("raw", "sigmoid"):
        model = _model(dataclasses.replace(DEEP, repvideo_gate=param))
        assert torch.equal(model.repvideo.gates(), torch.full((14,), 0.5)), param
    sig = _model(dataclasses.replace(DEEP, repvideo_gate="sigmoid")).repvideo
    assert torch.equal(sig.learnable_gating.detach(), torch.zeros(14))  # logit(0.5) = 0


# ---------------------------------------------------------------------------------------------- bad input


def _bad_cases():
    x, t, _ = _inputs()
    cond = dataclasses.replace(TINY, num_classes=5)
    return {
        "ndim": (TINY, dict(x_t=x[:, 0], t_model=t), r"\(2, 4, 8, 8\)"),
        "channels": (TINY, dict(x_t=x[:, :, :3], t_model=t), "3 channels"),
        "frames": (TINY, dict(x_t=x[:, :2], t_model=t), "2 frames.*temporal table.*num_frames=3"),
        "height/width": (TINY, dict(x_t=x[..., :6], t_model=t), "8x6"),
        "t_model": (TINY, dict(x_t=x, t_model=t[:, None]), r"\(2, 1\)"),
        "t_model batch": (TINY, dict(x_t=x, t_model=t[:1]), r"\(1,\)"),
        "y to uncond": (TINY, dict(x_t=x, t_model=t, cond=Cond(label=torch.tensor([1, 2]))), "num_classes=0"),
        "y missing": (cond, dict(x_t=x, t_model=t), "num_classes=5"),
        "y shape": (cond, dict(x_t=x, t_model=t, cond=Cond(label=torch.tensor([1, 2, 3]))), r"\(3,\)"),
        "tap 0": (TINY, dict(x_t=x, t_model=t, tap=0), "tap=0"),
        "tap depth+1": (TINY, dict(x_t=x, t_model=t, tap=5), "tap=5"),
    }


@pytest.mark.parametrize("case", list(_bad_cases()))
def test_bad_input_raises_value_error_naming_the_value(case):
    cfg, kwargs, pattern = _bad_cases()[case]
    with pytest.raises(ValueError, match=pattern):
        _model(cfg)(**kwargs)


def test_unknown_preset_names_the_value():
    with pytest.raises(ValueError, match="'V-DiT-Q/2'"):
        preset("V-DiT-Q/2")
    assert preset("V-DiT-XL/2") is PRESETS["V-DiT-XL/2"]


def test_attention_casts_qk_to_v_dtype():
    """Autocast's fp32 QK norms next to a bf16 v: every backend gets one dtype (SDPA's autocast rule)."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 5, 8, generator=g) for _ in range(3))
    out = attention(q, k, v.bfloat16(), backend="sdpa")
    assert out.dtype == torch.bfloat16
    ref = attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), backend="sdpa")
    assert torch.equal(out, ref)
