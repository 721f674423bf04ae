"""UniWorld-OSP2.0's VLM conditioning wrapper (``minivdit/models/uniworld.py``) on a tiny Wan: the released
``EncoderAdapter``, the paper's f_img tokens (concatenated, eq. 5), masks, and what trains."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from minivdit.models.cond import Cond
from minivdit.models.flashi2v import FlashI2V
from minivdit.models.uniworld import EncoderAdapter, UniWorld, UniWorldConfig
from minivdit.models.wan import WanConfig, WanTransformer

TINY = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
            text_dim=16, freq_dim=256, ffn_dim=32, num_layers=2, rope_max_seq_len=32)  # fmt: skip
VLM, B, L, F, H, W = 12, 2, 6, 3, 4, 6


def _setup(**cfg):
    torch.manual_seed(0)
    base = WanTransformer(WanConfig(**TINY)).eval()
    uw = UniWorld(
        base, UniWorldConfig(vlm_dim=VLM, hidden_dim=20, out_dim=16, latent_channels=4, **cfg)
    ).eval()
    g = torch.Generator().manual_seed(1)
    x_t = torch.randn(B, F, 4, H, W, generator=g)
    z_c = torch.randn(B, 1, 4, H, W, generator=g)
    vlm = torch.randn(B, L, VLM, generator=g)
    return uw, base, x_t, torch.tensor([999.0, 40.0]), vlm, z_c


def test_adapter_is_the_released_one():
    with torch.device("meta"):
        adapter = EncoderAdapter(3584, 4096, 4096)  # Qwen2.5-VL-7B → T5 width
    assert sum(p.numel() for p in adapter.parameters()) == 31_465_472  # anchors §2.2: 31.47 M
    small = EncoderAdapter(64, 48, 32)
    assert isinstance(small.act, torch.nn.GELU) and small.act.approximate == "none"
    for fc in (small.fc1, small.fc2):
        bound = (6 / (fc.in_features + fc.out_features)) ** 0.5  # xavier-uniform
        assert fc.weight.abs().max() <= bound and fc.weight.std() > bound / 4 and not fc.bias.any()


def test_context_goes_through_the_adapter_into_the_base():
    uw, base, x_t, t, vlm, _ = _setup()
    with torch.no_grad():
        ours = uw(x_t, t, Cond(context=vlm)).pred
        ref = base(x_t, t, Cond(context=uw.adapter(vlm))).pred
    assert torch.equal(ours, ref)  # the same operations


def test_image_tokens_start_as_zero_rows_and_follow_the_mask():
    """f_img at init: exact zero rows after the adapted VLM tokens, the rows Wan's pipelines pad with; with a
    mask (valid VLM tokens only) the image tokens are marked valid."""
    uw, base, x_t, t, vlm, z_c = _setup(f_img="concat")
    N = (H // 2) * (W // 2)
    ctx, mask = uw.context(Cond(context=vlm, image_latents=z_c))
    assert ctx.shape == (B, L + N, 16) and mask is None and not ctx[:, L:].any()
    keep = torch.tensor([[True] * 4 + [False] * 2, [True] * 6])
    ctx, mask = uw.context(Cond(context=vlm, context_mask=keep, image_latents=z_c))
    assert mask.tolist() == [row + [True] * N for row in keep.tolist()]
    with torch.no_grad():
        padded = torch.cat([uw.adapter(vlm), torch.zeros(B, N, 16)], dim=1)
        ours = uw(x_t, t, Cond(context=vlm, image_latents=z_c)).pred
        # the same model on the same rows, f_img's zero rows given as zero padding
        ref = base(x_t, t, Cond(context=padded)).pred
    assert torch.equal(ours, ref)
    with torch.no_grad():  # after training f_img its tokens change the output
        uw.image_proj.fc2.weight.normal_()
        moved = uw(x_t, t, Cond(context=vlm, image_latents=z_c)).pred
    assert not torch.equal(moved, ours)


def test_only_the_wrapper_trains_around_a_frozen_flashi2v_wan():
    """The released setting: the DiT (a trained FlashI2V checkpoint) frozen, the adapter trained; f_img, when
    on, trains with it. FlashI2V still gets the start frame (it consumes ``image_latents``)."""
    torch.manual_seed(0)
    base = FlashI2V(WanTransformer(WanConfig(**TINY)))
    cfg = UniWorldConfig(vlm_dim=VLM, hidden_dim=20, out_dim=16, latent_channels=4, f_img="concat")
    uw = UniWorld(base, cfg)
    base.requires_grad_(False)
    _, _, x_t, t, vlm, z_c = _setup()
    uw(x_t, t, Cond(context=vlm, image_latents=z_c), ratio=0.1).pred.square().mean().backward()
    grads = {n for n, p in uw.named_parameters() if p.grad is not None}
    assert grads == {n for n, _ in uw.named_parameters() if n.startswith(("adapter.", "image_proj."))}
    assert uw.cfg is base.base.cfg


def test_errors():
    uw, _, x_t, t, vlm, z_c = _setup(f_img="concat")
    with pytest.raises(ValueError, match=r"VLM states \[B, L, 12\]"):
        uw(x_t, t, Cond(context=vlm[..., :5], image_latents=z_c))
    with pytest.raises(ValueError, match=r"f_img needs Cond.image_latents"):
        uw(x_t, t, Cond(context=vlm))
    with pytest.raises(ValueError, match="sizes must be >= 1"):
        dataclasses.replace(uw.uw_cfg, hidden_dim=0)


def test_decoupled_image_branch_is_an_exact_no_op_at_init_and_learns():
    """f_img="decoupled": at init (zero gates) the output is the base's on the adapted context bit for bit;
    the gates get gradients at once (the branch's own keys and values once a gate moves); the backbone's keys
    are untouched; with activation checkpointing the gradients are the same."""
    uw, base, x_t, t, vlm, z_c = _setup(f_img="decoupled")
    cond = Cond(context=vlm, image_latents=z_c)
    with torch.no_grad():
        ours = uw(x_t, t, cond).pred
        ref = base(x_t, t, Cond(context=uw.adapter(vlm))).pred
    assert torch.equal(ours, ref)  # + exact zeros
    assert set(base.state_dict()) == set(WanTransformer(WanConfig(**TINY)).state_dict())
    assert len(uw.image_attn) == TINY["num_layers"] and uw.image_proj.fc2.out_features == 24  # D = 2 × 12

    uw.train()
    uw(x_t, t, cond).pred.square().mean().backward()
    gates = [b.gate.grad for b in uw.image_attn]
    assert all(g is not None and g.abs().max() > 0 for g in gates)
    assert not uw.image_attn[0].to_v.weight.grad.any()  # scaled by the zero gate
    with torch.no_grad():
        for b in uw.image_attn:
            b.gate.fill_(0.5)
        moved = uw(x_t, t, cond).pred
    assert not torch.equal(moved, ours)
    grads = {}
    for ckpt in (False, True):
        uw.zero_grad()
        base.grad_checkpointing = ckpt
        uw(x_t, t, cond).pred.square().mean().backward()
        grads[ckpt] = [p.grad.clone() for p in uw.image_attn.parameters()]
    # the same operations recomputed (the hooks read the tokens kept for this forward)
    assert all(torch.equal(a, b) for a, b in zip(grads[False], grads[True], strict=True))


def test_decoupled_needs_a_cross_attention():
    from minivdit.models.dit import DiTConfig, VDiT

    vdit = VDiT(
        DiTConfig(depth=2, hidden_size=32, num_heads=2, patch_size=1, input_size=(2, 2), num_frames=2)
    )
    with pytest.raises(ValueError, match="a text cross-attention per block"):
        UniWorld(vdit, UniWorldConfig(f_img="decoupled", vlm_dim=8, out_dim=8))
