"""The cd-FVD detector (``minivdit/eval/videomae.py``) against cd-fvd 0.1.1's vendored VideoMAE-v2
``VisionTransformer`` (``cdfvd/third_party/VideoMAEv2/videomaev2_finetune.py``, loaded by file path; it
imports only torch and NumPy) with one random state dict: features, the sin-cos table, the time
interpolation of the table for other clip lengths, the key names and shapes of the real ViT-g/14 (on the meta
device), cd-fvd's preprocessing, checkpoint loading and its errors. Offline, CPU, ~10 s:
``pytest -q tests/test_eval_videomae.py``."""

from __future__ import annotations

import argparse
import types
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn as nn
from oracles import load_file, package_file
from safetensors.torch import save_file

from minivdit.eval import videomae
from minivdit.eval.videomae import VideoMAE, VideoMAEConfig, VisionTransformer, preprocess, sinusoid_table

# Ours against the reference's float32 ViT (other kernels, other reduction orders): reductions of K terms
# (1,176 in the patch embedding, ≤ 256 in the blocks) differ by about √K·u ≤ 2e-6 of their magnitude, a few
# per block over two blocks; 1e-5 of the largest output keeps a margin and is far below a wiring error
# (positions, pooling, LayerNorm: O(1)).
TOL = 1e-5
# Tiny sizes: 28² frames make a 2×2 patch grid. The oracle's interpolate_pos_encoding hard-codes the ViT-g
# grid 8×16×16, so clip lengths other than 16 frames are compared on MID (224² frames, width 64) instead.
TINY = dict(img_size=28, patch_size=14, embed_dim=64, depth=2, num_heads=4, num_frames=16, tubelet_size=2)
MID = dict(TINY, img_size=224)


@pytest.fixture(scope="module")
def oracle():
    return load_file(
        "cdfvd_videomaev2_finetune",
        package_file("cd-fvd", "cdfvd/third_party/VideoMAEv2/videomaev2_finetune.py"),
    )


def oracle_vit(oracle, sizes: dict) -> nn.Module:
    """The reference model as cd-fvd's ``vit_giant_patch14_224`` builds it, at the given sizes."""
    return oracle.VisionTransformer(
        img_size=sizes["img_size"],
        patch_size=sizes["patch_size"],
        embed_dim=sizes["embed_dim"],
        depth=sizes["depth"],
        num_heads=sizes["num_heads"],
        mlp_ratio=48 / 11,
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        num_classes=174,
        all_frames=sizes["num_frames"],
        tubelet_size=sizes["tubelet_size"],
        drop_path_rate=0.3,  # as cd-fvd; inert in eval
        use_mean_pooling=True,
    ).eval()


def random_state_dict(model: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """Every tensor random, LayerNorm affine and q/v biases included (defaults would hide mistakes there)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in model.state_dict().items():
        noise = torch.randn(v.shape, generator=g)
        if "norm" in k and k.endswith("weight"):
            out[k] = 1 + 0.2 * noise
        elif v.ndim >= 2:
            out[k] = noise / v[0].numel() ** 0.5  # unit-variance outputs
        else:
            out[k] = 0.2 * noise
    return out


def pair(oracle, sizes: dict, seed: int = 0) -> tuple[nn.Module, VisionTransformer]:
    ref = oracle_vit(oracle, sizes)
    state = random_state_dict(ref, seed)
    ref.load_state_dict(state, strict=True)
    ours = VisionTransformer(VideoMAEConfig(**sizes)).eval()
    ours.load_state_dict(state, strict=True)
    return ref, ours


@pytest.fixture(scope="module")
def mid_pair(oracle):
    return pair(oracle, MID, seed=3)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def random_video(b: int, f: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, f, 3, h, w), generator=g, dtype=torch.uint8)


# cd-fvd's preprocessing, cdfvd/third_party/VideoMAEv2/utils.py:L8-L9, L15-L27, L41-L45 (copied: that file
# imports torchvision, requests and tqdm); the transforms.Compose is spelled out as its two calls.
def oracle_preprocess_videomae(videos: np.ndarray) -> torch.Tensor:
    def to_normalized_float_tensor(vid):  # L8-L9
        return vid.permute(3, 0, 1, 2).to(torch.float32) / 255

    def resize(vid, size, interpolation="bilinear"):  # L15-L27
        scale = None
        if isinstance(size, int):
            scale = float(size) / min(vid.shape[-2:])
            size = None
        return torch.nn.functional.interpolate(
            vid, size=size, scale_factor=scale, mode=interpolation, align_corners=False
        )

    return torch.stack([resize(to_normalized_float_tensor(f), (224, 224)) for f in torch.from_numpy(videos)])


# ------------------------------------------------------------------------------------------------ parity


def test_forward_features_match(oracle):
    ref, ours = pair(oracle, TINY)
    x = torch.rand(2, 3, 16, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = ref.forward_features(x), ours.forward_features(x)
        logits_want, logits_got = ref(x), ours(x)
    assert got.shape == (2, 64)
    assert rel_err(got, want) <= TOL, rel_err(got, want)
    assert rel_err(logits_got, logits_want) <= TOL
    assert (got - got.mean()).abs().max() > 0.1  # not a degenerate (constant) feature


def test_state_dict_keys_match_and_table_is_not_saved(oracle):
    ref = oracle_vit(oracle, TINY)
    ours = VisionTransformer(VideoMAEConfig(**TINY))
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in ref.state_dict().items()
    }
    assert "pos_embed" not in ours.state_dict() and "blocks.0.attn.q_bias" in ours.state_dict()
    assert "pos_embed" in dict(ours.named_buffers())  # moves with .to(device), never saved


def test_sinusoid_table_is_the_references(oracle):
    # (2048, 64): every position of the ViT-g table; (16, 1408): every one of its columns. The full 2048×1408
    # table is the same elementwise NumPy operations on a larger array; the oracle's Python loop over its 2.9M
    # entries takes seconds, so it is not rebuilt here.
    for n, d in [(32, 64), (2048, 64), (16, 1408), (7, 10)]:
        want = oracle.get_sinusoid_encoding_table(n, d)
        got = sinusoid_table(n, d)
        assert got.dtype == torch.float32 and got.shape == (1, n, d)
        assert torch.equal(got, want), (n, d)
    # interleaved, not [sin ‖ cos]: column 1 is cos(p), column 2 is sin(p / 10000^(2/d))
    t = sinusoid_table(5, 8)[0].double()
    p = torch.arange(5, dtype=torch.float64)
    # a float64 table rounded to float32: values ≤ 1 are off by ≤ ½ ulp(1) = 6e-8
    torch.testing.assert_close(t[:, 1], torch.cos(p), rtol=0, atol=1e-7)
    torch.testing.assert_close(t[:, 2], torch.sin(p / 10000 ** (2 / 8)), rtol=0, atol=1e-7)
    assert torch.equal(VisionTransformer(VideoMAEConfig(**TINY)).pos_embed, sinusoid_table(32, 64))


@pytest.mark.parametrize("frames", [8, 9, 2, 18])
def test_other_clip_lengths_match_the_oracle_interpolation(mid_pair, frames):
    """At 224² the oracle's hard-coded 8×16×16 interpolation runs; 9 frames floors to 4 tubelets as its Conv3d
    does, 2 frames is one tubelet, 18 frames interpolates upwards."""
    ref, ours = mid_pair
    # the reference's own F.interpolate call on the same float32 table: each output is an elementwise
    # formula of two inputs (no reduction a kernel could reorder), so bit-identical by construction
    torch.testing.assert_close(
        ours.pos_embed_for(frames // 2), ref.interpolate_pos_encoding(frames), rtol=0, atol=0
    )
    x = torch.rand(1, 3, frames, 224, 224, generator=torch.Generator().manual_seed(frames))
    with torch.no_grad():
        want, got = ref.forward_features(x), ours.forward_features(x)
    assert rel_err(got, want) <= TOL, rel_err(got, want)


def test_vit_g_interpolated_tables_are_the_references(oracle):
    """The time interpolation of the real ViT-g/14 table (2048 × 1408), without building the 1B model: ours on
    the meta device with the table put back; the oracle's method called on a stand-in ``self``."""
    table = sinusoid_table(2048, 1408)  # the oracle's (test_sinusoid_table_is_the_references)
    with torch.device("meta"):
        ours = VisionTransformer(VideoMAEConfig())
    ours.pos_embed = table.clone()
    ref_self = types.SimpleNamespace(pos_embed=table, tubelet_size=2)
    for frames in (16, 8, 32):
        want = oracle.VisionTransformer.interpolate_pos_encoding(ref_self, frames)
        assert torch.equal(ours.pos_embed_for(frames // 2), want), frames


def test_vit_g_key_names_and_shapes_on_meta(oracle, monkeypatch):
    # On the meta device the oracle's stochastic-depth schedule calls .item() on a torch.linspace: keep that
    # one on the CPU. Its sin-cos table is no state-dict entry; skip its slow Python loop here.
    linspace = torch.linspace
    monkeypatch.setattr(torch, "linspace", lambda *a, **k: linspace(*a, **{**k, "device": "cpu"}))
    monkeypatch.setattr(oracle, "get_sinusoid_encoding_table", lambda n, d: torch.zeros(1, n, d))
    with torch.device("meta"):
        ref = oracle.vit_giant_patch14_224(
            img_size=224, pretrained=False, num_classes=174, all_frames=16, tubelet_size=2,
            drop_path_rate=0.3, use_mean_pooling=True,
        )  # fmt: skip
        ours = VisionTransformer(VideoMAEConfig())
    want = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert got == want
    assert got["blocks.39.attn.qkv.weight"] == (4224, 1408) and got["blocks.0.mlp.fc1.weight"] == (6144, 1408)
    assert got["patch_embed.proj.weight"] == (1408, 3, 2, 14, 14) and got["head.weight"] == (174, 1408)
    assert sum(np.prod(s) for s in got.values()) == 1_011_855_918  # anchors-eval §3.1
    assert ours.pos_embed.shape == (1, 2048, 1408)


@pytest.mark.parametrize("hw", [(256, 256), (120, 160)])
def test_preprocess_is_cdfvds(hw):
    video = random_video(2, 16, *hw, seed=4)  # [B, F, 3, H, W]
    want = oracle_preprocess_videomae(video.permute(0, 1, 3, 4, 2).numpy())  # cd-fvd takes (B, T, H, W, C)
    got = preprocess(video)
    assert got.shape == (2, 3, 16, 224, 224) and got.dtype == torch.float32
    # cd-fvd's two float32 steps (÷255, bilinear F.interpolate), elementwise per output: bit-identical
    assert torch.equal(got, want)
    assert got.min() >= 0 and got.max() <= 1


# ------------------------------------------------------------------------------------------------ loading


def test_detector_end_to_end_and_checkpoint_formats(mid_pair, tmp_path):
    """``{"model": sd}`` (with VideoMAEv2's argparse ``args``), ``{"module": sd}``, a bare state dict and a
    safetensors file all load the same weights with ``weights_only=True``; the detector's features are the
    oracle's ``forward_features(preprocess_videomae(...))`` for an 8-frame clip."""
    ref, _ = mid_pair
    state = ref.state_dict()
    files = {
        "model.pth": {"model": state, "epoch": 3, "args": argparse.Namespace(model="vit_giant_patch14_224")},
        "module.pth": {"module": state},
        "bare.pth": state,
    }
    for name, obj in files.items():
        torch.save(obj, tmp_path / name)
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "vit.safetensors")
    video = random_video(2, 8, 40, 52, seed=6)
    with torch.no_grad():
        want = ref.forward_features(oracle_preprocess_videomae(video.permute(0, 1, 3, 4, 2).numpy()))
    cfg = VideoMAEConfig(**MID)
    for name in [*files, "vit.safetensors"]:
        det = videomae.load(tmp_path / name, config=cfg)
        assert isinstance(det, VideoMAE) and not det.training
        assert (det.name, det.min_frames, det.batch_size, det.dim) == ("videomae", 2, 16, 64)
        assert not any(p.requires_grad for p in det.parameters())
        loaded = det.model.state_dict()
        assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], v) for k, v in state.items())
        assert torch.equal(det.model.pos_embed, sinusoid_table(2048, 64))  # rebuilt after the meta build
    got = det.features(video)
    assert got.shape == (2, 64) and got.dtype == torch.float32
    assert rel_err(got, want) <= TOL, rel_err(got, want)


def test_detector_defaults_and_frames():
    assert (VideoMAE.name, VideoMAE.min_frames, VideoMAE.batch_size, VideoMAE.dim) == (
        "videomae",
        2,
        16,
        1408,
    )
    det = VideoMAE(VisionTransformer(VideoMAEConfig(**TINY)))
    assert det.features(random_video(1, 3, 8, 8)).shape == (1, 64)  # 3 frames: one tubelet, as the Conv3d
    with pytest.raises(ValueError, match="at least 2 frames, got 1"):
        det.features(random_video(1, 1, 8, 8))


def test_dtype_keeps_the_table_in_float32(oracle, tmp_path):
    torch.save({"model": random_state_dict(oracle_vit(oracle, TINY))}, tmp_path / "vit.pth")
    det = videomae.load(tmp_path / "vit.pth", config=VideoMAEConfig(**TINY), dtype=torch.bfloat16)
    assert det.model.blocks[0].attn.qkv.weight.dtype == torch.bfloat16
    assert torch.equal(det.model.pos_embed, sinusoid_table(32, 64))  # float32, as the reference's table
    out = det.features(random_video(1, 16, 28, 28))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_wrong_architecture_lists_the_keys(oracle, tmp_path):
    state = random_state_dict(oracle_vit(oracle, TINY))
    missing = dict(state)
    del missing["blocks.1.attn.v_bias"]
    torch.save({"model": missing}, tmp_path / "missing.pth")
    with pytest.raises(
        ValueError, match=r"missing\.pth: not a VideoMAE-v2.*missing 1: blocks\.1\.attn\.v_bias"
    ):
        videomae.load(tmp_path / "missing.pth", config=VideoMAEConfig(**TINY))
    extra = dict(state, pos_embed=torch.zeros(1, 32, 64), **{"blocks.0.gamma_1": torch.zeros(64)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match=r"unexpected 2: blocks\.0\.gamma_1, pos_embed"):
        videomae.load(tmp_path / "extra.pth", config=VideoMAEConfig(**TINY))
    # the tiny checkpoint read as ViT-g: everything is missing or mis-shaped
    with pytest.raises(
        ValueError, match=r"embed_dim=1408, depth=40.*missing .*wrong shape .*patch_embed\.proj"
    ):
        videomae.load(tmp_path / "extra.pth")


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(
        ValueError, match=r"--videomae .*no such file; expected vit_g_hybrid_pt_1200e_ssv2_ft\.pth"
    ):
        videomae.load(tmp_path / "absent.pth")
    with pytest.raises(ValueError, match=r"--videomae is not set.*huggingface\.co/OpenGVLab"):
        videomae.load("")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"junk\.pth: not a readable torch checkpoint"):
        videomae.load(junk)
    torch.save({"model": {"a": torch.zeros(1)}, "opt": types.SimpleNamespace(lr=1)}, tmp_path / "o.pth")
    with pytest.raises(
        ValueError,
        match=r"o\.pth: torch\.load\(weights_only=True\) failed .*types\.SimpleNamespace.*safetensors",
    ):
        videomae.load(tmp_path / "o.pth")


def test_config_validation():
    with pytest.raises(ValueError, match="multiple of patch_size"):
        VideoMAEConfig(img_size=30)
    with pytest.raises(ValueError, match="divisible by num_heads"):
        VideoMAEConfig(embed_dim=100, num_heads=16)
    with pytest.raises(ValueError, match="multiple of tubelet_size"):
        VideoMAEConfig(num_frames=15)
    assert VideoMAEConfig().mlp_hidden == 6144 and VideoMAEConfig().grid == (8, 16, 16)
