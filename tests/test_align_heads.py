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
    conv_stride,
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


def test_tubelet_repeat():
    # VideoMAE (tubelet 2) on a per-frame VAE (Align4Gen Table 4): 16 frames -> 8 tubelets, each over 2 frames
    assert match_frames("tubelet_repeat", 8, 16, stride=1) == [[j // 2] for j in range(16)]
    # pixel frame 0 dropped first (drop_first_frame): 17 frames -> 8 tubelets over frames 1..16, frame 0 none
    assert match_frames("tubelet_repeat", 8, 17, stride=1) == [[]] + [[j // 2] for j in range(16)]


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        (("per_frame", 16, 13), {}, r"'per_frame'.*16 teacher frames and 13 DiT frames"),
        (("pick_last", 48, 13), {}, r"'pick_last'.*4·k \+ 1.*49 for 13 DiT.*got 48 teacher"),
        (("group_mean", 17, 4), {}, r"'group_mean'.*13 for 4 DiT.*got 17 teacher"),
        (("tubelet", 24, 12), {}, r"'tubelet'.*22 for 12 DiT.*got 24 teacher"),
        (("tubelet", 9, 4), {"stride": 3}, "even temporal stride"),
        (("tubelet_repeat", 8, 16), {"stride": 4}, r"temporal stride 1\), got stride 4.*'tubelet'"),
        (("tubelet_repeat", 7, 16), {"stride": 1}, r"'tubelet_repeat'.*8 for 16 DiT.*got 7 teacher"),
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


def test_head_tubelet_repeat_is_repa_on_repeated_tubelets():
    head = _head(loss="repa", frame_match="tubelet_repeat", stride=1, grid_match="teacher_to_dit")
    hidden, feats = _inputs(frames=4, teacher_frames=2)
    target = resample_grid(feats.repeat_interleave(2, dim=1), TEACHER_GRID, DIT_GRID)  # tubelets 0,0,1,1
    # same ops on the same values in the same order (a frame copy commutes with the per-frame resampling)
    torch.testing.assert_close(head(hidden, feats), losses.repa(head.projectors[0](hidden), target))


def test_head_normalises_after_averaging():
    """Raw teacher tokens are averaged first, normalised last (VideoREPA's avg_pool1d, then the loss): a
    frame with 100× larger tokens dominates its group's mean, which averaging unit tokens would not do."""
    head = _head(loss="repa", frame_match="group_mean", grid_match="teacher_to_dit")
    hidden, feats = _inputs(frames=2, teacher_frames=5)
    feats[:, 2] *= 100.0
    z = head.projectors[0](hidden)
    raw_mean = torch.stack([feats[:, 0], feats[:, 1:5].mean(1)], 1)  # groups [0], [1, 2, 3, 4]
    unit_mean = torch.stack([F.normalize(feats[:, 0], dim=-1), F.normalize(feats[:, 1:5], dim=-1).mean(1)], 1)
    out = head(hidden, feats)
    # the head runs the same fp32 ops (group mean, resampling, loss) on the same values: default tolerances
    torch.testing.assert_close(out, losses.repa(z, resample_grid(raw_mean, TEACHER_GRID, DIT_GRID)))
    assert not torch.allclose(out, losses.repa(z, resample_grid(unit_mean, TEACHER_GRID, DIT_GRID)))


def _repa_init_oracle(head: AlignHead) -> None:
    """The oracle: REPA's ``SiT.initialize_weights`` ``_basic_init`` (``sihyun-yu/REPA`` ``models/sit.py``
    l.214-219), applied with ``Module.apply`` as REPA does."""

    def _basic_init(module):
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                torch.nn.init.constant_(module.bias, 0)

    head.apply(_basic_init)


def test_projector_init_xavier_is_repas_and_torch_is_pytorchs():
    assert AlignConfig().projector_init == "xavier"
    ours, ref = _head(projector_init="xavier"), _head(projector_init="xavier")
    torch.manual_seed(5)
    ours.init_weights()
    torch.manual_seed(5)
    _repa_init_oracle(ref)
    for (name, a), b in zip(ours.state_dict().items(), ref.state_dict().values(), strict=True):
        assert torch.equal(a, b), name  # the same RNG draws in the same order: bit-identical
    for lin in (ours.projectors[0][i] for i in (0, 2, 4)):
        bound = (6 / (lin.in_features + lin.out_features)) ** 0.5  # xavier-uniform, gain 1
        assert lin.weight.abs().max() <= bound and lin.weight.abs().max() > 0.9 * bound
        assert not lin.bias.any()

    torch_head = _head(projector_init="torch")
    torch.manual_seed(5)
    torch_head.init_weights()
    torch.manual_seed(5)
    for lin in (ref.projectors[0][i] for i in (0, 2, 4)):
        lin.reset_parameters()  # nn.Linear's own init: kaiming-uniform (a = √5) weights, uniform biases
    for (name, a), b in zip(torch_head.state_dict().items(), ref.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert all(torch_head.projectors[0][i].bias.any() for i in (0, 2, 4))
    with pytest.raises(ValueError, match="projector_init"):
        AlignConfig(projector_init="zeros")  # type: ignore[arg-type]


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


# ---- learned conv (VideoREPA's downsampler_cogvideo_output)


def _videorepa_conv_oracle(head: AlignHead, hidden: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    """The oracle: VideoREPA's DiT path for per-frame matching (``aHapBean/VideoREPA``
    ``finetune/models/cogvideox_t2v_align/lora_trainer.py`` l.295-322: projector output reshaped to
    ``[B, F, h, w, C]``, permuted to ``[B·F, C, h, w]``, ``downsampler_cogvideo_output``, back to tokens),
    then the loss; written with reshape/permute, not the head's einops."""
    (h, w), (th, tw) = head.dit_grid, head.teacher_grid
    z = head.projectors[0](hidden)  # [B, F, h·w, C]
    Bn, Fn, _, C = z.shape
    x = z.reshape(Bn, Fn, h, w, C).permute(0, 1, 4, 2, 3).reshape(Bn * Fn, C, h, w)
    x = head.downsamplers[0](x)  # [B·F, C, th, tw]
    x = x.reshape(Bn, Fn, C, th * tw).permute(0, 1, 3, 2)  # [B, F, th·tw, C]
    return losses.repa(x, feats)


@pytest.mark.parametrize(
    "dit_grid, teacher_grid, stride", [((6, 9), (2, 3), (3, 3)), ((4, 6), (2, 2), (2, 3))]
)
def test_learned_conv_shapes_gradients_and_oracle(dit_grid, teacher_grid, stride):
    """VideoREPA's stride 3 (30×45 → 10×15, first case scaled down); strides may differ per axis."""
    assert conv_stride((30, 45), (10, 15)) == (3, 3)
    assert conv_stride(dit_grid, teacher_grid) == stride
    head = AlignHead(
        AlignConfig(projector_dim=HID, loss="repa", grid_match="learned_conv", projector_init="torch"),
        hidden_dim=D,
        teacher_dims=[6],
        dit_grid=dit_grid,
        teacher_grid=teacher_grid,
    )
    head.init_weights()
    [conv] = head.downsamplers
    assert (conv.in_channels, conv.out_channels) == (6, 6)  # on the projector's output, as VideoREPA (768)
    assert conv.kernel_size == conv.stride == stride and conv.padding == (0, 0)
    hidden, feats = _inputs(frames=3, teacher_frames=3, grid=dit_grid, teacher_grid=teacher_grid)
    out = head(hidden, feats)
    assert out.shape == (B,) and torch.isfinite(out).all()
    # the same fp32 ops on the same values (a reshape/permute instead of einops): default fp32 tolerances
    torch.testing.assert_close(out, _videorepa_conv_oracle(head, hidden, feats))
    out.sum().backward()
    for name, p in head.named_parameters():  # conv trained with the projector (VideoREPA trainer.py l.260)
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert {k for k in head.state_dict() if k.startswith("downsamplers")} == {
        "downsamplers.0.weight",
        "downsamplers.0.bias",
    }


def test_learned_conv_per_projector_and_error():
    dims = (6, 4)
    sep = AlignHead(
        AlignConfig(projector_dim=HID, loss="drepa", grid_match="learned_conv", fusion="separate"),
        hidden_dim=D,
        teacher_dims=dims,
        dit_grid=(4, 6),
        teacher_grid=(2, 3),
    )
    assert [c.out_channels for c in sep.downsamplers] == [6, 4]
    hidden, feats = _inputs(frames=2, teacher_frames=2, dt=10, grid=(4, 6), teacher_grid=(2, 3))
    assert sep(hidden, feats).shape == (B,)
    assert len(_head().downsamplers) == 0  # resampling heads keep their state-dict keys
    with pytest.raises(ValueError, match=r"got DiT grid 4×6 and teacher grid 3×3: set --teacher.token-grid"):
        AlignHead(
            AlignConfig(projector_dim=HID, grid_match="learned_conv"),
            hidden_dim=D,
            teacher_dims=[6],
            dit_grid=(4, 6),
            teacher_grid=(3, 3),
        )
