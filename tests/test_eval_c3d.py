"""C3D-UCF101 (minivdit/eval/c3d.py). No PyTorch oracle of TGANv2's Chainer model exists, so the tests pin
each piece of ``c3d_ucf101.py`` separately (sizes, ceil pooling windows, the ``pre`` matrix, the mean crop,
the align-corners resize against NumPy) and the whole forward against a functional re-implementation, on a
narrow C3D (full-size shapes are checked on ``meta``).

Run: ``pytest tests/test_eval_c3d.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from minivdit.eval import c3d

TINY = c3d.C3DConfig(widths=(4, 4, 8, 8, 8, 8, 8, 8), fc_dim=16)


def _npz_arrays(cfg: c3d.C3DConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights under TGANv2's Chainer ``save_npz`` keys (``conv1a/W`` …), scaled to keep a signal."""
    rng = np.random.default_rng(seed)
    arrays, c_in = {}, 3
    for name, c_out in zip(c3d.CONVS, cfg.widths):
        std = (2 / (c_in * 27)) ** 0.5 / (128 if name == "conv1a" else 1)  # inputs are ≈ ±128
        arrays[f"{name}/W"] = rng.normal(0, std, (c_out, c_in, 3, 3, 3))
        arrays[f"{name}/b"] = rng.normal(0, 0.1, c_out)
        c_in = c_out
    for name, (n_out, n_in) in zip(
        c3d.FCS, [(cfg.fc_dim, cfg.widths[-1] * 16), (cfg.fc_dim, cfg.fc_dim), (101, cfg.fc_dim)]
    ):
        arrays[f"{name}/W"] = rng.normal(0, (2 / n_in) ** 0.5, (n_out, n_in))
        arrays[f"{name}/b"] = rng.normal(0, 0.1, n_out)
    return {k: v.astype(np.float32) for k, v in arrays.items()}


def _mean2() -> np.ndarray:
    """A mean2.npz-like array (3, 16, 128, 171) whose every entry differs, so a wrong crop shows."""
    return (
        np.arange(3 * 16 * 128 * 171, dtype=np.float64).reshape(3, 16, 128, 171) % 997 / 997 * 200
    ).astype(np.float32)


@pytest.fixture
def files(tmp_path):
    weights = tmp_path / "conv3d_deepnetA_ucf.npz"
    np.savez(weights, **_npz_arrays(TINY))
    np.savez(tmp_path / "mean2.npz", mean=_mean2())
    return weights


def _video(shape=(2, 16, 3, 64, 80), seed=0) -> torch.Tensor:
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_full_size_parameters_on_meta():
    with torch.device("meta"):
        model = c3d.C3D()
    assert sum(p.numel() for p in model.parameters()) == 78_409_573
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["conv1a.weight"] == (64, 3, 3, 3, 3) and shapes["conv5b.bias"] == (512,)
    assert shapes["fc6.weight"] == (4096, 8192) and shapes["fc8.weight"] == (101, 4096)
    assert shapes.pop("mean_bias") == (3, 16, 112, 112)
    assert set(shapes) == {f"{n}.{p}" for n in c3d.CONVS + c3d.FCS for p in ("weight", "bias")}


def test_pool_sizes_16x112():
    """16×112² → 16×56² → 8×28² → 4×14² → 2×7² → 1×4×4 (ceil at 7 → 4), so fc6 sees 512·16 = 8192."""
    model = c3d.C3D(TINY)
    sizes = {}
    for i in range(1, 6):
        getattr(model, f"pool{i}").register_forward_hook(
            lambda m, a, out, i=i: sizes.update({i: out.shape[2:]})
        )
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 16, 112, 112))
    assert logits.shape == (1, 101)
    assert [tuple(sizes[i]) for i in range(1, 6)] == [
        (16, 56, 56),
        (8, 28, 28),
        (4, 14, 14),
        (2, 7, 7),
        (1, 4, 4),
    ]


def test_ceil_pool_windows_7_to_4():
    """Chainer ``max_pooling_nd(ksize=2)`` (stride 2, cover_all): 7 → 4, windows [0, 1], [2, 3], [4, 5],
    [6]."""
    model = c3d.C3D(TINY)
    x = torch.randn(1, 2, 2, 7, 7)
    windows = [[0, 1], [2, 3], [4, 5], [6]]
    expected = torch.tensor(
        [[[x[0, c][:, r][:, :, w].max().item() for w in windows] for r in windows] for c in range(2)]
    )  # [C, 4, 4], each window over both frames
    # max pooling selects one input per window, no arithmetic: exact whatever the kernel
    assert torch.equal(model.pool5(x)[0, :, 0], expected)
    # pool1 is (1, 2, 2): frames are kept, the same spatial windows
    expected1 = torch.tensor(
        [[[x[0, 0, t][r][:, w].max().item() for w in windows] for r in windows] for t in range(2)]
    )
    assert torch.equal(model.pool1(x)[0, 0], expected1)


def test_pre_matrix_is_bgr_times_128():
    W = torch.zeros(3, 3)
    W[[0, 1, 2], [2, 1, 0]] = 128  # TGANv2 L67-69: self.pre.W.data[[0, 1, 2], [2, 1, 0]] = 128
    assert torch.equal(c3d.PRE, W)


def test_preprocess_channel_order_and_mean_crop(files):
    model = c3d.load(files, cfg=TINY)
    crop = torch.from_numpy(_mean2()[:, :, 8:120, 8:120])
    assert torch.equal(model.mean_bias, 128 - crop)  # the loader's own single float32 subtraction: exact
    # pure red 112² frames (no resize): on TGANv2's data scale (u − 128)/128, B and G are -1 → -128 and R is
    # 127/128 → 127, then + 128 − mean: C3D sees the pixel values 0 and 255 (issue 18 §1.12)
    red = torch.zeros(1, 16, 3, 112, 112, dtype=torch.uint8)
    red[:, :, 0] = 255
    x = model.preprocess(red)[0]
    # float32 values up to 256, whose ulp is 3.1e-5: the model adds (128 − mean) in one rounding where these
    # sums take two, so they may differ by 2 half-ulp roundings; 1e-4 is about 3 ulp at 256.
    torch.testing.assert_close(x, torch.stack([0 - crop[0], 0 - crop[1], 255 - crop[2]]), rtol=0, atol=1e-4)
    # any 112² clip: BGR of u − mean (TGANv2: (u − 128)/128 · 128 + 128 = u, h5video.py:L70 and L67-73)
    video = _video((2, 16, 3, 112, 112))
    expected = video.flip(2).float() - crop.transpose(0, 1)  # [B, T, C, H, W]
    torch.testing.assert_close(model.preprocess(video), expected.transpose(1, 2), rtol=0, atol=1e-4)


def _resize_align_corners_np(x: np.ndarray, size: int) -> np.ndarray:
    """Chainer ``resize_images`` (bilinear, align_corners): source ``d · (in − 1)/(out − 1)``, float64."""

    def taps(n_in):
        src = np.arange(size) * (n_in - 1) / (size - 1)
        lo = np.floor(src).astype(int)
        return lo, np.minimum(lo + 1, n_in - 1), src - lo

    (y0, y1, fy), (x0, x1, fx) = taps(x.shape[-2]), taps(x.shape[-1])
    rows = x[..., y0, :] * (1 - fy)[:, None] + x[..., y1, :] * fy[:, None]
    return rows[..., x0] * (1 - fx) + rows[..., x1] * fx


@pytest.mark.parametrize("hw", [(64, 80), (128, 171), (112, 112)])
def test_resize_matches_numpy(hw):
    x = torch.rand(2, 3, *hw, generator=torch.Generator().manual_seed(3)) * 256
    got = c3d.resize_align_corners(x, 112)
    expected = _resize_align_corners_np(x.double().numpy(), 112)
    # float32 against float64 on values up to 256 (ulp 3.1e-5): two interpolation stages, each with weights
    # rounded from float64 (≤ ½ ulp of the result) and two products and a sum (≤ 3 half-ulps): ≤ 4 ulp.
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=4 * 256 * np.finfo(np.float32).eps)


def _reference_logits(arrays: dict[str, np.ndarray], x: torch.Tensor) -> torch.Tensor:
    """TGANv2's forward written with functionals from the npz: Chainer's cover_all max pooling as explicit
    −inf padding at the end of each axis, then a floor-mode pool."""

    def pool(h, k):
        pad = [p for n, kk in zip(h.shape[:1:-1], k[::-1]) for p in (0, (-n) % kk)]
        return F.max_pool3d(F.pad(h, pad, value=-float("inf")), k, stride=k)

    t = {k: torch.from_numpy(v).double() for k, v in arrays.items()}
    h = x.double()
    for name in c3d.CONVS:
        h = F.relu(F.conv3d(h, t[f"{name}/W"], t[f"{name}/b"], padding=1))
        if name in ("conv1a", "conv2a", "conv3b", "conv4b", "conv5b"):
            h = pool(h, (1, 2, 2) if name == "conv1a" else (2, 2, 2))
    h = h.reshape(h.shape[0], -1)
    h = F.relu(F.linear(h, t["fc6/W"], t["fc6/b"]))
    h = F.relu(F.linear(h, t["fc7/W"], t["fc7/b"]))
    return F.linear(h, t["fc8/W"], t["fc8/b"])


def test_probs_match_functional_reference(files):
    model = c3d.load(files, cfg=TINY)
    assert (model.name, model.min_frames, model.batch_size, model.num_classes) == ("c3d", 16, 32, 101)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    video = _video()
    probs = model.probs(video)
    assert probs.shape == (2, 101) and probs.dtype == torch.float32 and (probs >= 0).all()
    # a float32 softmax over K = 101 classes: each probability rounded a few times, then K summed: ≤ K·eps
    eps = torch.finfo(torch.float32).eps
    torch.testing.assert_close(probs.sum(-1), torch.ones(2), rtol=0, atol=101 * eps)
    expected = _reference_logits(_npz_arrays(TINY), model.preprocess(video)).softmax(-1)
    assert expected.max() > 2 / 101  # not uniform: the comparison below sees the weights
    # float32 network against a float64 one: eight convolutions and three linear layers, reductions of up to
    # K = 3³·8 = 216 terms (TINY), each off by about √K·u ≈ 1e-6 of its magnitude; the softmax turns an
    # absolute logit error δ into a relative probability error δ. rtol 1e-4 bounds 11 such layers with a
    # margin of about 10; a wrong channel order or pooling moves the probabilities by O(1).
    torch.testing.assert_close(probs, expected.float(), rtol=1e-4, atol=1e-6)

    with pytest.raises(ValueError, match=r"exactly 16 frames.*got 15 frames in 2 clips"):
        model.probs(video[:, :15])
    with pytest.raises(ValueError, match=r"exactly 16 frames.*got 17 frames"):
        model.probs(torch.cat([video, video[:, :1]], 1))
    with pytest.raises(ValueError, match="uint8"):
        model.probs(video.float())


def test_safetensors_round_trip(files, tmp_path):
    model = c3d.load(files, cfg=TINY)
    save_file(model.state_dict(), tmp_path / "c3d_ucf101.safetensors")
    again = c3d.load(tmp_path / "c3d_ucf101.safetensors", cfg=TINY)
    video = _video(seed=5)
    # the same float32 weights (safetensors stores them bitwise), shapes and threads in one process: the same
    # kernels run, so the outputs are bit-identical by construction
    assert torch.equal(again.probs(video), model.probs(video))
    with pytest.raises(ValueError, match="holds the mean already"):
        c3d.load(tmp_path / "c3d_ucf101.safetensors", tmp_path / "mean2.npz", cfg=TINY)


def test_load_errors(files, tmp_path):
    with pytest.raises(ValueError, match=r"--c3d is not set.*conv3d_deepnetA_ucf\.npz.*rezoo/tgan2/releases"):
        c3d.load(None)
    with pytest.raises(ValueError, match=r"--c3d .*absent\.npz: no such file"):
        c3d.load(tmp_path / "absent.npz")

    # the mean comes from next to the weights unless given
    other = tmp_path / "elsewhere"
    other.mkdir()
    np.savez(other / "m.npz", mean=_mean2())
    (tmp_path / "mean2.npz").rename(tmp_path / "moved.npz")
    with pytest.raises(ValueError, match=r"--c3d .*mean2\.npz: no such file"):
        c3d.load(files, cfg=TINY)
    assert torch.equal(
        c3d.load(files, other / "m.npz", cfg=TINY).mean_bias,
        128 - torch.from_numpy(_mean2()[:, :, 8:120, 8:120]),
    )

    np.savez(tmp_path / "small_mean.npz", mean=np.zeros((3, 16, 112, 112), np.float32))
    with pytest.raises(ValueError, match=r"small_mean\.npz: expected mean2\.npz with an array 'mean'"):
        c3d.load(files, tmp_path / "small_mean.npz", cfg=TINY)

    # the tiny weights are not the published shapes; a renamed and a missing key are listed by npz name
    with pytest.raises(ValueError, match=r"conv3d_deepnetA_ucf\.npz: not the expected C3D.*shape mismatches"):
        c3d.load(files, other / "m.npz")
    arrays = _npz_arrays(TINY)
    arrays["conv5c/W"] = arrays.pop("conv5b/W")
    del arrays["fc8/b"]
    np.savez(tmp_path / "renamed.npz", **arrays)
    with pytest.raises(ValueError, match=r"renamed\.npz: not TGANv2's C3D weights") as err:
        c3d.load(tmp_path / "renamed.npz", other / "m.npz", cfg=TINY)
    assert "2 missing keys: ['conv5b/W', 'fc8/b']" in str(err.value)
    assert "1 unexpected keys: ['conv5c/W']" in str(err.value)

    (tmp_path / "garbage.npz").write_bytes(b"not an npz")
    with pytest.raises(ValueError, match=r"garbage\.npz: cannot read conv3d_deepnetA_ucf\.npz"):
        c3d.load(tmp_path / "garbage.npz", other / "m.npz", cfg=TINY)
