"""``minivdit.align.heads``: the frame-matching index sets (49 → 13, 17 → 5, 16 → 16), non-square grid
resampling against ``F.interpolate`` of the 2-D map, ``AlignConfig`` validation, and ``AlignHead`` (shape
[B], gradients into the projector, fusion, meta-device init, errors). CPU, tiny sizes, ~1 s."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from minivdit.align import losses
from minivdit.align.heads import (
    AlignConfig,
    AlignHead,
    Projector,
    check_block_index,
    gather_frames,
    match_frames,
    resample_grid,
)

pytestmark = pytest.mark.usefixtures("single_thread")

# ---- frame matching


def test_per_frame_16():
    assert match_frames("per_frame", 16, 16) == [[j] for j in range(16)]


def test_pick_last():
    assert match_frames("pick_last", 49, 13) == [[4 * j] for j in range(13)]  # 0, 4, …, 48
    assert match_frames("pick_last", 17, 5) == [[0], [4], [8], [12], [16]]


def test_group_mean():
    groups = match_frames("group_mean", 49, 13)
    assert groups[0] == [0] and groups[1] == [1, 2, 3, 4] and groups[12] == [45, 46, 47, 48]
    assert sum(groups, []) == list(range(49))  # every pixel frame exactly once, in order
    assert match_frames("group_mean", 17, 5) == [
        [0],
        [1, 2, 3, 4],
        [5, 6, 7, 8],
        [9, 10, 11, 12],
        [13, 14, 15, 16],
    ]


def test_tubelet():
    # VideoMAE-style teacher: pixel frames 1..48 in tubelets of 2 -> 24 tubelets; latent 0 dropped
    groups = match_frames("tubelet", 24, 13)
    assert groups[0] == [] and groups[1] == [0, 1] and groups[12] == [22, 23]
    assert sum(groups, []) == list(range(24))
    assert match_frames("tubelet", 8, 5) == [[], [0, 1], [2, 3], [4, 5], [6, 7]]
    assert match_frames("tubelet", 4, 5, stride=2) == [[], [0], [1], [2], [3]]


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        (("per_frame", 16, 13), {}, r"'per_frame'.*16 teacher frames and 13 DiT frames"),
        (("pick_last", 48, 13), {}, r"'pick_last'.*4·k \+ 1.*49 for 13 DiT.*got 48 teacher"),
        (("group_mean", 17, 4), {}, r"'group_mean'.*13 for 4 DiT.*got 17 teacher"),
        (("tubelet", 24, 12), {}, r"'tubelet'.*22 for 12 DiT.*got 24 teacher"),
        (("tubelet", 9, 4), {"stride": 3}, "even temporal stride"),
        (("nearest", 4, 4), {}, "unknown frame_match"),
    ],
)
def test_match_frames_errors(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        match_frames(*args, **kwargs)


def test_gather_frames_averages_groups():
    feats = torch.arange(5.0).view(1, 5, 1, 1).expand(2, 5, 3, 4)
    out = gather_frames(feats, match_frames("group_mean", 5, 2, stride=4))
    assert out.shape == (2, 2, 3, 4) and out[0, :, 0, 0].tolist() == [0.0, 2.5]
    out = gather_frames(feats, [[], [4], [1]])  # selection only: index_select path
    assert out[0, :, 0, 0].tolist() == [4.0, 1.0]


# ---- grid matching


def _ramp(h: int, w: int) -> torch.Tensor:
    """A [1, 1, h·w, 2] grid: channel 0 grows along rows (h), channel 1 along columns (w)."""
    hh, ww = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    return torch.stack([hh, 10 * ww], -1).reshape(1, 1, h * w, 2)


def test_resample_non_square_upsample():
    x = _ramp(3, 5)
    out = resample_grid(x, (3, 5), (6, 10))
    assert out.shape == (1, 1, 60, 2) and out.dtype == torch.float64
    grid = out.view(6, 10, 2)
    assert (grid[1:, :, 0] >= grid[:-1, :, 0]).all() and (grid[1:, :, 0] > grid[:-1, :, 0]).any()  # rows
    assert (grid[:, 1:, 1] >= grid[:, :-1, 1]).all() and (grid[:, 1:, 1] > grid[:, :-1, 1]).any()  # columns
    assert (grid[:, 1:, 0] == grid[:, :-1, 0]).all() and (grid[1:, :, 1] == grid[:-1, :, 1]).all()
    ref = F.interpolate(x.view(3, 5, 2).permute(2, 0, 1)[None], size=(6, 10), mode="bilinear")
    torch.testing.assert_close(grid.permute(2, 0, 1)[None], ref)


def test_resample_downsample_antialiased_and_identity():
    x = torch.randn(2, 3, 6 * 8, 4)
    out = resample_grid(x, (6, 8), (3, 2))
    ref = F.interpolate(x.view(6, 6, 8, 4).permute(0, 3, 1, 2), size=(3, 2), mode="bilinear", antialias=True)
    torch.testing.assert_close(out, ref.permute(0, 2, 3, 1).reshape(2, 3, 6, 4))
    assert resample_grid(x, (6, 8), (6, 8)) is x
    assert resample_grid(x.bfloat16(), (6, 8), (3, 4)).dtype == torch.bfloat16
    with pytest.raises(ValueError, match=r"\(2, 3, 48, 4\) do not hold a 5×8 grid"):
        resample_grid(x, (5, 8), (3, 2))


# ---- config


def test_config_validation_and_block_index():
    cfg = AlignConfig()
    assert (cfg.loss, cfg.weight, cfg.block_index, cfg.projector_dim) == ("repa", 0.5, 8, 2048)
    check_block_index(cfg, 8)
    with pytest.raises(ValueError, match=r"block_index=8 out of range.*1\.\.6"):
        check_block_index(cfg, 6)
    for bad in (
        {"block_index": 0},
        {"weight": -1.0},
        {"crepa_tau": 0.0},
        {"trd_margin": -0.1},
        {"crepa_d": 0},
    ):
        with pytest.raises(ValueError):
            AlignConfig(**bad)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.weight = 1.0  # type: ignore[misc]


# ---- head

B, D, HID = 2, 8, 16
DIT_GRID, TEACHER_GRID = (2, 3), (4, 2)  # non-square and different: resampled


def _head(stride=4, teacher_dims=(6,), **cfg) -> AlignHead:
    torch.manual_seed(0)
    cfg = AlignConfig(projector_dim=HID, **cfg)
    return AlignHead(
        cfg,
        hidden_dim=D,
        teacher_dims=teacher_dims,
        dit_grid=DIT_GRID,
        teacher_grid=TEACHER_GRID,
        stride=stride,
    )


def _inputs(frames=3, teacher_frames=9, dt=6, grid=DIT_GRID, teacher_grid=TEACHER_GRID):
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(B, frames, grid[0] * grid[1], D, generator=g, requires_grad=True)
    feats = torch.randn(B, teacher_frames, teacher_grid[0] * teacher_grid[1], dt, generator=g)
    return hidden, feats


@pytest.mark.parametrize("loss", ["repa", "align4gen", "crepa", "trd", "drepa"])
@pytest.mark.parametrize("grid_match", ["dit_to_teacher", "teacher_to_dit"])
def test_head_shape_and_gradients(loss, grid_match):
    head = _head(loss=loss, frame_match="group_mean", grid_match=grid_match)
    hidden, feats = _inputs()
    out = head(hidden, feats)
    assert out.shape == (B,) and out.dtype == torch.float32 and torch.isfinite(out).all()
    out.sum().backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert hidden.grad.abs().sum() > 0


def test_head_equals_loss_on_matched_tokens():
    """per_frame and equal grids: the head is the projector followed by the loss."""
    head = AlignHead(
        AlignConfig(projector_dim=HID, loss="drepa"),
        hidden_dim=D,
        teacher_dims=[6],
        dit_grid=(2, 3),
        teacher_grid=(2, 3),
    )
    hidden, feats = _inputs(frames=3, teacher_frames=3, teacher_grid=(2, 3))
    torch.testing.assert_close(head(hidden, feats), losses.drepa(head.projectors[0](hidden), feats))


def test_head_tubelet_drops_latent_zero():
    head = _head(loss="trd", frame_match="tubelet")
    hidden, feats = _inputs(frames=3, teacher_frames=4)
    changed = hidden.detach().clone()
    changed[:, 0] = 100.0
    torch.testing.assert_close(head(hidden, feats), head(changed, feats))


def test_head_fusion_shared_and_separate():
    dims = (6, 4)
    hidden, feats = _inputs(frames=2, teacher_frames=2, dt=sum(dims), teacher_grid=DIT_GRID)
    shared = AlignHead(
        AlignConfig(projector_dim=HID, loss="align4gen"),
        hidden_dim=D,
        teacher_dims=dims,
        dit_grid=DIT_GRID,
        teacher_grid=DIT_GRID,
    )
    assert len(shared.projectors) == 1 and shared.projectors[0][-1].out_features == 10
    fused = torch.cat([F.normalize(feats[..., :6], dim=-1), F.normalize(feats[..., 6:], dim=-1)], -1)
    torch.testing.assert_close(shared(hidden, feats), losses.repa(shared.projectors[0](hidden), fused))
    # scaling one teacher does not change the fused target (each is normalised before concatenation)
    scaled = torch.cat([100 * feats[..., :6], feats[..., 6:]], -1)
    torch.testing.assert_close(shared(hidden, feats), shared(hidden, scaled))

    sep = AlignHead(
        AlignConfig(projector_dim=HID, loss="align4gen", fusion="separate"),
        hidden_dim=D,
        teacher_dims=dims,
        dit_grid=DIT_GRID,
        teacher_grid=DIT_GRID,
    )
    assert [p[-1].out_features for p in sep.projectors] == [6, 4]
    expected = (
        losses.repa(sep.projectors[0](hidden), feats[..., :6])
        + losses.repa(sep.projectors[1](hidden), feats[..., 6:])
    ) / 2
    torch.testing.assert_close(sep(hidden, feats), expected)


def test_head_meta_init_and_state():
    with torch.device("meta"):
        head = _head(loss="crepa", frame_match="pick_last")
    head.to_empty(device="cpu")
    head.init_weights()
    assert list(head.buffers()) == []  # the projector weights are the head's only state, all trainable
    assert all(p.requires_grad and torch.isfinite(p).all() for p in head.parameters())
    assert [k for k in head.state_dict() if k.endswith("weight")] == [
        f"projectors.0.{i}.weight" for i in (0, 2, 4)
    ]
    hidden, feats = _inputs()
    assert head(hidden, feats).shape == (B,)
    assert isinstance(head.projectors[0], Projector)


def test_head_under_autocast_returns_fp32():
    head = _head(loss="drepa", frame_match="group_mean")
    hidden, feats = _inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(hidden, feats)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize(
    "hidden_shape, feats_shape, match",
    [
        ((B, 3, 6), (B, 9, 8, 6), r"hidden must be \[B, F, 6, 8\].*\(2, 3, 6\)"),
        ((B, 3, 5, D), (B, 9, 8, 6), r"2×3 DiT grid.*\(2, 3, 5, 8\)"),
        ((B, 3, 6, D), (B, 9, 8, 5), r"feats must be \[B, F', 8, 6\].*\(2, 9, 8, 5\)"),
        ((B, 3, 6, D), (B, 9, 6, 6), r"4×2 teacher grid.*\(2, 9, 6, 6\)"),
        ((B, 3, 6, D), (1, 9, 8, 6), r"batch sizes differ"),
        ((B, 3, 6, D), (B, 8, 8, 6), r"'group_mean'.*got 8 teacher frames and 3 DiT frames"),
    ],
)
def test_head_errors(hidden_shape, feats_shape, match):
    head = _head(frame_match="group_mean")
    with pytest.raises(ValueError, match=match):
        head(torch.randn(hidden_shape), torch.randn(feats_shape))


def test_head_constructor_errors():
    with pytest.raises(ValueError, match="teacher_dims"):
        _head(teacher_dims=())
