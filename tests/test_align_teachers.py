"""Frozen teachers (minivdit/align/teachers.py) on tiny random transformers models saved to disk: token
grids, raw (unnormalised) concatenation, frozen-ness, parity with the raw transformers models on manually
preprocessed input, VideoMAE's position table against VideoREPA's 3-D interpolation, loading errors and frame
counts.

Run: ``python -m pytest -q tests/test_align_teachers.py``."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from safetensors.torch import load_file, save_file
from transformers import (
    Dinov2Model,
    Dinov2WithRegistersModel,
    DINOv3ViTModel,
    Sam2HieraDetConfig,
    Sam2HieraDetModel,
    Sam2Model,
    VideoMAEModel,
    VJEPA2Model,
)

from minivdit.align.teachers import (
    TINY_KINDS,
    DINOv2Encoder,
    DINOv3Encoder,
    SAM2Encoder,
    Teacher,
    TeacherConfig,
    VideoMAEEncoder,
    VJEPA2Encoder,
    _RopeGrid,
    build_teacher,
    interpolate_positions,
    make_tiny_teacher,
)

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)  # ImageNet, written out independently here
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
ENCODERS = {
    "dinov2": DINOv2Encoder,
    "dinov2_registers": DINOv2Encoder,
    "dinov3": DINOv3Encoder,
    "sam2": SAM2Encoder,
    "vjepa2": VJEPA2Encoder,
    "videomae": VideoMAEEncoder,
}
VIDEO_KINDS = {"vjepa2", "videomae"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("teachers")
    return {kind: make_tiny_teacher(kind, root / kind) for kind in TINY_KINDS}


@pytest.fixture(autouse=True)
def offline(monkeypatch, single_thread):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def clip(b=1, t=4, h=20, w=30, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, t, 3, h, w, generator=g) * 2 - 1


def manual_pixels(video: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """[B, T, 3, H, W] in [-1, 1] → [(B T), 3, *size], resized and ImageNet-normalised."""
    x = rearrange(video, "b t c h w -> (b t) c h w")
    x = F.interpolate(x, size=size, mode=mode, antialias=True, align_corners=False).clamp(-1, 1)
    return ((x + 1) / 2 - MEAN) / STD


# ---------------------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("kind", TINY_KINDS)
def test_grid_and_raw_tokens(tiny, kind):
    enc = ENCODERS[kind](tiny[kind], grid=(2, 3))  # non-square grid
    teacher = Teacher([enc])
    video = clip(b=2, t=4)
    feats = teacher(video)
    f_out = 2 if kind in VIDEO_KINDS else 4
    assert feats.shape == (2, f_out, 6, enc.dim)
    assert feats.dtype == torch.float32
    assert teacher.grid == (2, 3) and teacher.dims == (enc.dim,) and teacher.frames_out(4) == f_out
    # raw tokens, not normalised: the head normalises after its frame averaging (the same call: bit-identical)
    assert torch.equal(feats, enc(video))


def test_fusion_dinov2_sam2(tiny):
    cfg = TeacherConfig(sam2=str(tiny["sam2"]), dinov2=str(tiny["dinov2"]))
    teacher = build_teacher(cfg, grid=(3, 2))
    assert teacher.names == ("dinov2", "sam2")  # fixed order, not the keyword order
    assert teacher.dims == (32, 64)  # tiny DINOv2 width, tiny Hiera stage-2 width
    video = clip(t=3)
    feats = teacher(video)
    assert feats.shape == (1, 3, 6, 96)
    assert torch.equal(feats, torch.cat([e(video) for e in teacher.encoders], dim=-1))  # raw, concatenated


def test_config_and_build():
    assert not TeacherConfig().enabled
    assert build_teacher(TeacherConfig(), grid=(2, 2)) is None
    assert TeacherConfig(vjepa2="x").enabled
    with pytest.raises(ValueError, match="sam2_stage"):
        TeacherConfig(sam2_stage=4)
    with pytest.raises(ValueError, match="unknown tiny teacher kind"):
        make_tiny_teacher("clip", "unused")


def test_token_grid_is_independent_of_the_dit_grid(tiny):
    """``TeacherConfig.token_grid``: the encoders run at token grid × their own patch (VideoREPA: V-JEPA 2 at
    160×240 → 10×15 under a 30×45 DiT), whatever the DiT grid passed; None keeps the DiT's."""
    video = clip(t=5, h=24, w=36)
    cfg = TeacherConfig(vjepa2=str(tiny["vjepa2"]), drop_first_frame=True, token_grid=(1, 2))
    teacher = build_teacher(cfg, grid=(3, 6))
    [enc] = teacher.encoders
    assert teacher.grid == (1, 2) and enc.input_size == (16, 32)  # tiny V-JEPA 2: patch 16
    feats = teacher(video)
    assert feats.shape == (1, 2, 2, 32)  # frames 1..4 → 2 tubelets, 1×2 tokens, width 32
    # the encoder built on that grid directly: same weights, same ops on the same input, so bit-identical
    direct = VJEPA2Encoder(tiny["vjepa2"], grid=(1, 2), drop_first_frame=True)
    assert torch.equal(feats, direct(video))
    assert build_teacher(dataclasses.replace(cfg, token_grid=None), grid=(3, 6)).grid == (3, 6)
    fused = build_teacher(
        TeacherConfig(dinov2=str(tiny["dinov2"]), sam2=str(tiny["sam2"]), token_grid=(2, 3)), grid=(4, 6)
    )
    assert fused.grid == (2, 3) and fused.encoders[0].input_size == (28, 42)  # each at its own patch (14)
    assert fused(clip(t=2)).shape == (1, 2, 6, 32 + 64)
    with pytest.raises(ValueError, match="token_grid"):
        TeacherConfig(token_grid=(0, 3))


def test_prenorm_per_encoder_in_a_fused_teacher(tiny):
    """``prenorm`` names the encoders read before their final LayerNorm: a fused teacher mixes post-norm
    DINOv2 with pre-norm DINOv3; a listed encoder that is not set (V-JEPA 2 here) is ignored."""
    cfg = TeacherConfig(dinov2=str(tiny["dinov2"]), dinov3=str(tiny["dinov3"]), prenorm=("dinov3", "vjepa2"))
    assert [cfg.layer_of(k) for k in ("dinov2", "dinov3", "vjepa2")] == ["last", "prenorm", "prenorm"]
    assert TeacherConfig(layer="prenorm").layer_of("dinov2") == "prenorm"  # the global switch still applies
    teacher = build_teacher(cfg, grid=(2, 2))
    dinov2, dinov3 = teacher.encoders
    assert isinstance(dinov3.model.norm, nn.Identity) and isinstance(dinov2.model.layernorm, nn.LayerNorm)
    video = clip(t=2)
    post = DINOv2Encoder(tiny["dinov2"], grid=(2, 2))(video)
    pre = DINOv3Encoder(tiny["dinov3"], grid=(2, 2), layer="prenorm")(video)
    # the same encoders on the same input, concatenated: bit-identical
    assert torch.equal(teacher(video), torch.cat([post, pre], dim=-1))
    assert not torch.equal(pre, DINOv3Encoder(tiny["dinov3"], grid=(2, 2))(video))
    for bad in (("sam2",), ("dinov2", "dinov2")):  # SAM2 has no final norm; a name twice
        with pytest.raises(ValueError, match="prenorm"):
            TeacherConfig(prenorm=bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------- frozen


def test_frozen(tiny):
    teacher = build_teacher(TeacherConfig(dinov2=str(tiny["dinov2"]), sam2=str(tiny["sam2"])), grid=(2, 2))
    head = nn.Linear(sum(teacher.dims), 4)
    wrapper = nn.ModuleDict({"teacher": teacher, "head": head})
    wrapper.train()  # a parent's train() must not reach the encoders
    assert head.training
    assert not any(m.training for m in teacher.modules())
    assert not any(p.requires_grad for p in teacher.parameters())
    feats = teacher(clip(t=2).requires_grad_(True))
    assert not feats.requires_grad
    head(feats).square().mean().backward()
    assert head.weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())


# ---------------------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize(
    ("kind", "layer"), [("dinov2", "last"), ("dinov2", "prenorm"), ("dinov2_registers", "last")]
)
def test_dinov2_parity(tiny, kind, layer):
    raw_cls = Dinov2WithRegistersModel if kind == "dinov2_registers" else Dinov2Model
    raw = raw_cls.from_pretrained(tiny[kind], local_files_only=True).eval()
    prefix = 1 + (4 if kind == "dinov2_registers" else 0)  # CLS + the tiny config's 4 registers
    enc = DINOv2Encoder(tiny[kind], grid=(2, 3), layer=layer)
    assert enc.num_prefix == prefix
    video = clip(t=2)
    with torch.no_grad():
        out = raw(pixel_values=manual_pixels(video, (28, 42), "bicubic"), output_hidden_states=True)
    tokens = out.last_hidden_state if layer == "last" else out.hidden_states[-1]
    ref = rearrange(tokens[:, prefix:], "(b t) n d -> b t n d", b=1)  # [1, 2, 6, 32]
    torch.testing.assert_close(enc(video), ref)
    torch.testing.assert_close(Teacher([enc])(video), ref)


def test_dinov3_parity(tiny):
    raw = DINOv3ViTModel.from_pretrained(tiny["dinov3"], local_files_only=True).eval()
    enc = DINOv3Encoder(tiny["dinov3"], grid=(3, 2))
    video = clip(t=2)
    with torch.no_grad():
        tokens = raw(pixel_values=manual_pixels(video, (48, 32), "bilinear")).last_hidden_state
    ref = rearrange(tokens[:, 5:], "(b t) n d -> b t n d", b=1)  # CLS + 4 registers dropped
    torch.testing.assert_close(enc(video), ref)


def test_sam2_parity_and_subfolders(tiny, tmp_path):
    full = Sam2Model.from_pretrained(tiny["sam2"], local_files_only=True).eval()
    enc = SAM2Encoder(tiny["sam2"], grid=(4, 6), stage=2)
    assert enc.input_size == (64, 96) and len(enc.model.blocks) == 5  # stage 3's block is gone
    video = clip(t=2)
    with torch.no_grad():
        maps = full.vision_encoder.backbone(
            manual_pixels(video, (64, 96), "bilinear")
        ).intermediate_hidden_states
    ref = rearrange(maps[2], "(b t) h w c -> b t (h w) c", b=1)  # channels-last stride-16 map
    torch.testing.assert_close(enc(video), ref)
    # folders saved from the vision model or the trunk alone load (strictly) and agree
    full.vision_encoder.save_pretrained(tmp_path / "vision")
    full.vision_encoder.backbone.save_pretrained(tmp_path / "trunk")
    for sub in ("vision", "trunk"):
        torch.testing.assert_close(SAM2Encoder(tmp_path / sub, grid=(4, 6))(video), ref)
    stage1 = SAM2Encoder(tiny["sam2"], grid=(4, 6), stage=1)
    assert stage1.input_size == (32, 48) and stage1.dim == 32


def test_sam2_window_rounding(tmp_path):
    """A first window of 8 (as in the released Hiera) needs inputs that are multiples of 32: an odd grid is
    computed at the next valid size and its map resampled to the grid."""
    cfg = Sam2HieraDetConfig(
        hidden_size=16,
        num_attention_heads=1,
        blocks_per_stage=[1, 2, 2, 1],
        embed_dim_per_stage=[16, 32, 64, 128],
        num_attention_heads_per_stage=[1, 1, 2, 2],
        window_size_per_stage=[8, 2, 2, 2],
        global_attention_blocks=[2, 4],
        window_positional_embedding_background_size=[2, 2],
    )
    Sam2HieraDetModel(cfg).save_pretrained(tmp_path / "trunk")
    enc = SAM2Encoder(tmp_path / "trunk", grid=(3, 2))
    assert enc.input_size == (64, 32)
    assert enc(clip(t=1)).shape == (1, 1, 6, 64)


def test_vjepa2_parity_and_positions(tiny):
    # square grid 3×3 ≠ the config's 2×2: equals transformers loaded with the matching crop_size
    raw = VJEPA2Model.from_pretrained(tiny["vjepa2"], local_files_only=True, crop_size=48).eval()
    enc = VJEPA2Encoder(tiny["vjepa2"], grid=(3, 3), layer="prenorm")
    video = clip(t=4, h=40, w=40)
    x = rearrange(manual_pixels(video, (48, 48), "bilinear"), "(b t) c h w -> b t c h w", b=1)
    with torch.no_grad():
        out = raw(pixel_values_videos=x, skip_predictor=True, output_hidden_states=True)
    ref = rearrange(out.hidden_states[-1], "b (f n) d -> b f n d", n=9)  # pre-norm tokens
    torch.testing.assert_close(enc(video), ref)
    # non-square grid: (frame, row, column) of every token on the real 2×3 grid
    frame, row, col = _RopeGrid(2, 3)(torch.zeros(1, 12, 8))
    assert frame.tolist() == [0] * 6 + [1] * 6
    assert row.tolist() == [0, 0, 0, 1, 1, 1] * 2
    assert col.tolist() == [0, 1, 2] * 4


def videorepa_interpolate_pos_embed(table, native, size):
    """Oracle, re-implemented minimally: VideoREPA's ``interpolate_pos_embed`` (``aHapBean/VideoREPA``
    ``finetune/models/cogvideox_t2v_align/models/ssl/VideoMAE.py`` l.291-321 at 8002687): the native
    [T0, h0, w0] table bicubic in space, then ``trilinear`` to (T, h, w). VideoREPA hard-codes T = 3·T0 and
    a square native grid; both are parameters here."""
    (T0, h0, w0), (T, h, w), D = native, size, table.shape[-1]
    pe = table.reshape(-1, T0, h0, w0, D).reshape(-1, h0, w0, D).permute(0, 3, 1, 2)  # [T0, D, h0, w0]
    pe = F.interpolate(pe, size=(h, w), mode="bicubic", align_corners=False)
    pe = pe.permute(0, 2, 3, 1).reshape(-1, T0, h, w, D).permute(0, 4, 1, 2, 3)  # [1, D, T0, h, w]
    pe = F.interpolate(pe, size=(T, h, w), mode="trilinear", align_corners=False)
    return pe.permute(0, 2, 3, 4, 1).flatten(1, 3)  # [1, T·h·w, D]


def test_videomae_native_grid_keeps_the_checkpoint_table(tiny):
    # the tiny config: 4 frames at 32×32, patch 16, tubelet 2 -> native 2×2×2 tokens
    raw = VideoMAEModel.from_pretrained(tiny["videomae"], local_files_only=True).eval()
    enc = VideoMAEEncoder(tiny["videomae"], grid=(2, 2))
    assert enc.native == (2, 2, 2)
    assert enc.positions(2) is enc.native_table  # unchanged at the native length and grid, not recomputed
    assert torch.equal(enc.native_table, raw.embeddings.position_embeddings)  # the table transformers builds
    video = clip(t=4)
    x = rearrange(manual_pixels(video, (32, 32), "bilinear"), "(b t) c h w -> b t c h w", b=1)
    with torch.no_grad():
        tokens = raw(pixel_values=x).last_hidden_state
    torch.testing.assert_close(enc(video), rearrange(tokens, "b (f n) d -> b f n d", n=4))


def test_videomae_positions_interpolated_as_videorepa(tiny):
    enc = VideoMAEEncoder(tiny["videomae"], grid=(2, 3))
    for frames in (3, 6, 1):  # longer than native (VideoREPA's case), longer still, shorter
        ours = enc.positions(frames)
        oracle = videorepa_interpolate_pos_embed(enc.native_table, (2, 2, 2), (frames, 2, 3))
        assert ours.shape == oracle.shape == (1, frames * 6, 32)
        # the same bicubic call; 1-D linear here vs trilinear there: each a 2-tap fp32 blend of values
        # |x| ≲ 1.2, so the two differ by a few ulp(1) ≈ 1e-7; 1e-6 leaves margin
        torch.testing.assert_close(ours, oracle, rtol=0, atol=1e-6)
    # the encoder runs transformers' VideoMAE with that table in place of the 1-D sinusoid of the flat grid
    raw = VideoMAEModel.from_pretrained(tiny["videomae"], local_files_only=True, image_size=[32, 48]).eval()
    raw.embeddings.position_embeddings = enc.positions(3)
    video = clip(t=6)
    x = rearrange(manual_pixels(video, (32, 48), "bilinear"), "(b t) c h w -> b t c h w", b=1)
    with torch.no_grad():
        tokens = raw(pixel_values=x).last_hidden_state
    torch.testing.assert_close(enc(video), rearrange(tokens, "b (f n) d -> b f n d", n=6))
    assert enc(clip(t=2)).shape == (1, 1, 6, 32)  # a shorter clip after a longer one
    with pytest.raises(ValueError, match=r"not \[1, 8, D\] for the native 2x2x2 grid"):
        interpolate_positions(torch.zeros(1, 9, 4), (2, 2, 2), (2, 2, 3))


def test_videomae_teacher_aligns_a_per_frame_vae_dit(tiny):
    """Align4Gen Table 4's VideoMAE arm: 16 frames through a 2-D VAE give 16 DiT frames but 8 tubelets;
    ``tubelet_repeat`` repeats each tubelet over its two frames, ``per_frame`` cannot match them."""
    from minivdit.align.heads import AlignConfig, AlignHead

    teacher = build_teacher(TeacherConfig(videomae=str(tiny["videomae"])), grid=(2, 2))
    feats = teacher(clip(t=4))  # [1, 2 tubelets, 4, 32]
    hidden = torch.randn(1, 4, 4, 8)  # 4 DiT frames (per-frame VAE: temporal stride 1)

    def head(frame_match):
        cfg = AlignConfig(loss="align4gen", projector_dim=8, frame_match=frame_match)
        kw = dict(hidden_dim=8, teacher_dims=teacher.dims, dit_grid=(2, 2), teacher_grid=teacher.grid)
        return AlignHead(cfg, stride=1, **kw)

    assert head("tubelet_repeat")(hidden, feats).shape == (1,)
    with pytest.raises(ValueError, match="'per_frame'.*got 2 teacher frames and 4 DiT frames"):
        head("per_frame")(hidden, feats)


# ---------------------------------------------------------------------------------------------------- frames


def test_frame_counts(tiny):
    enc = VJEPA2Encoder(tiny["vjepa2"], grid=(2, 2))
    assert enc.frames_out(8) == 4
    assert VideoMAEEncoder(tiny["videomae"], grid=(2, 2)).frames_out(8) == 4
    with pytest.raises(ValueError, match="T=7"):
        enc.frames_out(7)
    dropped = build_teacher(TeacherConfig(vjepa2=str(tiny["vjepa2"]), drop_first_frame=True), grid=(2, 2))
    assert dropped(clip(t=9)).shape == (1, 4, 4, 32)
    with pytest.raises(ValueError, match="T=8"):
        dropped.frames_out(8)
    mixed = Teacher([DINOv2Encoder(tiny["dinov2"], grid=(2, 2)), enc])
    with pytest.raises(ValueError, match="different frame counts"):
        mixed(clip(t=4))


def test_bad_inputs(tiny):
    enc = DINOv2Encoder(tiny["dinov2"], grid=(2, 2))
    with pytest.raises(ValueError, match=r"\(4, 3, 20, 30\)"):
        Teacher([enc])(clip()[0])
    with pytest.raises(ValueError, match="share one token grid"):
        Teacher([enc, SAM2Encoder(tiny["sam2"], grid=(2, 3))])


# ---------------------------------------------------------------------------------------------------- loading


def test_wrong_architecture_and_missing_folder(tiny, tmp_path):
    with pytest.raises(ValueError, match=r"dinov3_vit.*dinov2") as err:
        DINOv2Encoder(tiny["dinov3"], grid=(2, 2))
    assert str(tiny["dinov3"]) in str(err.value)
    with pytest.raises(ValueError, match="sam2_hiera_det_model"):
        SAM2Encoder(tiny["videomae"], grid=(2, 2))
    with pytest.raises(ValueError, match="no such folder"):
        VJEPA2Encoder(tmp_path / "nowhere", grid=(2, 2))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        VideoMAEEncoder(tmp_path / "empty", grid=(2, 2))


def test_key_mismatch(tiny, tmp_path):
    state = load_file(tiny["dinov2"] / "model.safetensors")
    edits = {
        "missing": lambda s: s.pop("layernorm.weight"),
        "unexpected": lambda s: s.update(x=s["layernorm.bias"].clone()),
    }
    for name, edit in edits.items():
        folder = tmp_path / name
        folder.mkdir()
        shutil.copy(tiny["dinov2"] / "config.json", folder / "config.json")
        edited = dict(state)
        edit(edited)
        save_file(edited, folder / "model.safetensors", metadata={"format": "pt"})
        key = "layernorm.weight" if name == "missing" else "'x'"
        with pytest.raises(ValueError, match=rf"{name} keys.*{key}") as err:
            DINOv2Encoder(folder, grid=(2, 2))
        assert str(folder) in str(err.value)


def test_tiny_is_deterministic_and_keeps_rng(tmp_path):
    before = torch.random.get_rng_state()
    a = make_tiny_teacher("dinov3", tmp_path / "a", seed=3)
    b = make_tiny_teacher("dinov3", tmp_path / "b", seed=3)
    assert torch.equal(torch.random.get_rng_state(), before)
    sa, sb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert json.loads((a / "config.json").read_text())["model_type"] == "dinov3_vit"
