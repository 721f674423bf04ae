"""Align4Gen encoder diagnostics (``minivdit/align/analysis.py``) and ``tools/analyze_encoders.py``."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from minivdit.align.analysis import (
    delta_freq,
    high_freq_mask,
    iicr,
    iicr_curve,
    iicr_terms,
    kmeans,
    pca_colors,
)

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("single_thread")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _videos(V: int, F: int, D: int, *, sep: float, jitter: float, seed: int = 0, N: int = 0) -> torch.Tensor:
    """V "videos" whose F frames scatter with per-dimension std ``jitter`` around centre ``sep · e_v``
    (one-hot, so every pair of centres is exactly ``sep·√2`` apart). N > 0 adds N tokens per frame."""
    g = _gen(seed)
    centres = sep * torch.eye(V, D, dtype=torch.float64)  # [V, D]
    x = centres[:, None] + jitter * torch.randn(V, F, D, generator=g, dtype=torch.float64)  # [V, F, D]
    if N:
        x = x[:, :, None] + 0.1 * jitter * torch.randn(V, F, N, D, generator=g, dtype=torch.float64)
    return x


def _same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


# ---------------------------------------------------------------------------------------------- k-means


def test_kmeans_recovers_separated_clusters_deterministically():
    g = _gen(1)
    k, per, D = 6, 25, 8
    centres = 10.0 * torch.randn(k, D, generator=g)
    truth = torch.arange(k).repeat_interleave(per)  # [k·per]
    x = centres[truth] + torch.randn(k * per, D, generator=g)
    perm = torch.randperm(k * per, generator=g)
    x, truth = x[perm], truth[perm]
    for seed in range(4):
        centroids, assign = kmeans(x, k, seed=seed)
        assert centroids.shape == (k, D) and assign.shape == (k * per,) and assign.dtype == torch.int64
        assert _same_partition(assign, truth), seed
        for c in range(k):  # centroids are the cluster means
            torch.testing.assert_close(centroids[c], x[assign == c].double().mean(0))
    c1, a1 = kmeans(x, k, seed=3)
    c2, a2 = kmeans(x, k, seed=3)
    assert torch.equal(c1, c2) and torch.equal(a1, a2)


def test_kmeans_duplicate_points_leave_no_empty_cluster():
    x = torch.tensor([[0.0, 0.0]] * 6 + [[1.0, 0.0]] * 2 + [[5.0, 5.0]])
    for k in (3, 4, 5):
        centroids, assign = kmeans(x, k, seed=0)
        assert torch.bincount(assign, minlength=k).min() >= 1
        assert torch.isfinite(centroids).all()
    with pytest.raises(ValueError, match="k <= M"):
        kmeans(x, 10)
    with pytest.raises(ValueError, match=r"\[M, D\]"):
        kmeans(x[None], 2)


# ---------------------------------------------------------------------------------------------- IICR


def test_iicr_invariant_to_scale_rotation_translation():
    x = _videos(6, 5, 12, sep=3.0, jitter=0.5, N=4).float()  # [V, F, N, D]
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=_gen(2), dtype=torch.float64))
    moved = 7.3 * (x.double() @ q.T) + torch.randn(12, generator=_gen(3), dtype=torch.float64)
    for k in (2, 4, 6, 9):
        base = iicr(x, k, seed=0)
        assert math.isfinite(base) and base > 0
        assert iicr(moved, k, seed=0) == pytest.approx(base, rel=1e-9)
        l2 = iicr(x, k, seed=0, normalize="l2")  # L2: invariant to a global rotation and scale (no shift)
        assert iicr(7.3 * (x.double() @ q.T), k, seed=0, normalize="l2") == pytest.approx(l2, rel=1e-9)


def test_iicr_matches_known_ratio_and_rises_as_jitter_shrinks():
    V, F, D = 8, 12, 16
    sep = 8.0
    values = []
    for jitter in (0.8, 0.4, 0.2, 0.1):
        terms = iicr_terms(_videos(V, F, D, sep=sep, jitter=jitter), V)
        # k = V recovers the videos: D_inter ≈ sep·√2, D_intra ≈ jitter·√D (RMS distance to the centroid).
        assert terms["d_inter"] == pytest.approx(sep * math.sqrt(2), rel=0.15)
        assert terms["d_intra"] == pytest.approx(jitter * math.sqrt(D), rel=0.25)
        assert terms["iicr"] == pytest.approx(terms["d_inter"] / terms["d_intra"])
        dim_std = iicr(_videos(V, F, D, sep=sep, jitter=jitter), V, sigma="dim_std")
        assert dim_std == pytest.approx(sep * math.sqrt(2) / jitter, rel=0.3)
        values.append(terms["iicr"])
    assert values == sorted(values) and values[-1] > 6 * values[0]
    # Three "encoders" whose separation/jitter ratios are known are ranked in that order (k = V videos).
    encoders = {r: _videos(V, F, D, sep=r, jitter=1.0, seed=5) for r in (6.0, 12.0, 24.0)}
    curves = {r: iicr_curve(x, [2, V]) for r, x in encoders.items()}
    assert curves[6.0][V] < curves[12.0][V] < curves[24.0][V]
    assert set(curves[6.0]) == {2, V} and curves[24.0][2] == iicr(encoders[24.0], 2)


def test_iicr_pooling_and_validation():
    x = _videos(4, 3, 6, sep=3.0, jitter=0.3, N=5)  # [4, 3, 5, 6]
    assert iicr(x, 4) == pytest.approx(iicr(x.mean(2), 4))  # pool="mean" is one vector per frame
    assert iicr(x, 4, pool="tokens") > 0  # 60 token vectors clustered
    with pytest.raises(ValueError, match="shape"):
        iicr(x[0, 0], 2)
    with pytest.raises(ValueError, match="2 <= k"):
        iicr(x, 1)
    with pytest.raises(ValueError, match="pool"):
        iicr(x, 2, pool="cls")
    with pytest.raises(ValueError, match="sigma"):
        iicr(x, 2, sigma="var")


# ---------------------------------------------------------------------------------------------- Δfreq


def _reference_delta_freq(fmap: np.ndarray, eps: float = 1e-6) -> float:
    """Eqs. 8-12 with numpy and an explicit loop over the shifted grid."""
    h, w, _ = fmap.shape
    M = np.log(np.abs(np.fft.fftshift(np.fft.fft2(fmap, axes=(0, 1)), axes=(0, 1))) + eps).mean(-1)
    r = min(h, w) / 2
    ring = [M[i, j] for i in range(h) for j in range(w) if math.hypot(i - h // 2, j - w // 2) > 0.75 * r]
    return float(np.mean(ring) - M[h // 2, w // 2])


def test_delta_freq_smooth_map_far_below_white_noise():
    g = _gen(0)
    noise = 1.0 + torch.randn(16, 16, 32, generator=g)  # [h, w, c]
    # Smooth: the same noise blurred by a Gaussian of σ = 2 tokens (circular, through its transfer function).
    f = torch.fft.fftfreq(16)
    transfer = torch.exp(-2 * math.pi**2 * 2.0**2 * (f[:, None] ** 2 + f[None, :] ** 2))[..., None]
    blurred = torch.fft.ifft2(torch.fft.fft2(noise, dim=(0, 1)) * transfer, dim=(0, 1)).real
    # Smooth but not periodic: one slow wave per channel (the wrap-around edge leaks some high frequencies).
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 16), torch.linspace(0, 1, 16), indexing="ij")
    phase = torch.rand(32, generator=g) * 2 * math.pi
    wave = 1.0 + torch.cos(2 * math.pi * 0.5 * (xx + yy)[..., None] + phase)
    d_noise, d_blurred, d_wave = delta_freq(noise), delta_freq(blurred), delta_freq(wave)
    assert isinstance(d_noise, float)
    assert d_noise == pytest.approx(-0.5 * math.log(16 * 16), abs=0.6)  # |S_hf| ~ √(hw), |S_DC| = hw
    assert d_blurred < d_noise - 5.0
    assert d_wave < d_noise - 1.5
    batch = delta_freq(torch.stack([noise, blurred, wave]))  # [B, h, w, c] -> [B]
    assert batch.shape == (3,)
    torch.testing.assert_close(batch, torch.tensor([d_noise, d_blurred, d_wave], dtype=torch.float64))


def test_delta_freq_matches_reference_including_non_square():
    g = _gen(4)
    for h, w in ((8, 8), (6, 9), (7, 5)):
        fmap = torch.randn(h, w, 3, generator=g, dtype=torch.float64) + 0.5
        assert delta_freq(fmap) == pytest.approx(_reference_delta_freq(fmap.numpy()), rel=1e-10)
    const = torch.full((4, 4, 2), 3.0, dtype=torch.float64)  # only a DC term: log ε − log(hw·3 + ε)
    assert delta_freq(const) == pytest.approx(math.log(1e-6) - math.log(16 * 3 + 1e-6))
    mask = high_freq_mask(8, 8)
    assert not mask[4, 4] and mask[0, 0] and not mask[4, 7] and mask[4, 0] and int(mask.sum()) == 35
    with pytest.raises(ValueError, match="empty"):
        delta_freq(torch.randn(1, 1, 4))
    with pytest.raises(ValueError, match="shape"):
        delta_freq(torch.randn(8, 8))


# ---------------------------------------------------------------------------------------------- PCA colours


def test_pca_colors_shape_dtype_determinism():
    g = _gen(0)
    tokens = torch.randn(3, 4, 5, 16, generator=g)
    rgb = pca_colors(tokens)
    assert rgb.shape == (3, 4, 5, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb, pca_colors(tokens.clone()))
    # sign convention on the scores; centring. Exact although −t + 2 rounds in fp32: that moves the scores by
    # ~1e-6 of a uint8 step, the same on every machine (elementwise; the SVD is float64), no colour flips
    assert np.array_equal(rgb, pca_colors(-tokens + 2.0))
    assert (rgb.reshape(-1, 3).min(0) == 0).all() and (rgb.reshape(-1, 3).max(0) == 255).all()
    # Two token types shared across frames get the same two colours in every frame (Fig. 2's consistency).
    a, b = torch.randn(16, generator=g), torch.randn(16, generator=g)
    two = torch.where(torch.arange(4 * 5).view(1, 4, 5, 1) % 2 == 0, a, b).expand(3, 4, 5, 16)
    colours = {tuple(c) for c in pca_colors(two).reshape(-1, 3).tolist()}
    assert len(colours) == 2
    assert pca_colors(torch.randn(2, 2, 2, 2, generator=g))[..., 2].max() == 0  # D < 3: missing channel 0
    with pytest.raises(ValueError, match=r"\[F, h, w, D\]"):
        pca_colors(tokens[0])


# ---------------------------------------------------------------------------------------------- tool


def _tool():
    spec = importlib.util.spec_from_file_location("analyze_encoders", ROOT / "tools" / "analyze_encoders.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tool_reads_video_folders(tmp_path):
    from minivdit.media import write_mp4

    tool = _tool()
    root = tmp_path / "videos"
    (root / "class_a").mkdir(parents=True)
    ramp = np.linspace(0, 255, 12).astype(np.uint8)[:, None, None, None]  # brightness grows over 12 frames
    write_mp4(root / "class_a" / "v0.mp4", np.broadcast_to(ramp, (12, 24, 40, 3)).copy())
    write_mp4(root / "v1.mp4", np.full((3, 16, 16, 3), 128, np.uint8))  # too short: frames repeated
    (root / "broken.mp4").write_bytes(b"not a video")
    assert tool.frame_indices(12, 4, 3) == [0, 3, 6, 9] and tool.frame_indices(3, 4, 1) == [0, 1, 1, 2]
    video = tool.read_video(root / "class_a" / "v0.mp4", 4, 3, 8)
    assert video.shape == (4, 3, 8, 8) and video.min() >= -1 and video.max() <= 1
    assert (video.mean((1, 2, 3)).diff() > 0).all()  # frames 0, 3, 6, 9 in order
    args = tool.parse_args(["--out", "x", "--videos", str(root), "--num-videos", "5", "--frames", "4"])
    args.size, args.frame_interval, args.batch = 8, 3, 4
    skipped: list[str] = []
    batches = list(tool.iter_videos(args, skipped))
    assert [tuple(v.shape) for v, _ in batches] == [(2, 4, 3, 8, 8)]
    assert batches[0][1].tolist() == [-1, -1] and len(skipped) == 1 and "broken.mp4" in skipped[0]


@pytest.fixture
def tiny_run(tmp_path, make_tiny_cfg) -> Path:
    """A checkpoint folder of a tiny pixel-space flow V-DiT (random EMA weights), as ``train`` writes it."""
    from safetensors.torch import save_file

    from minivdit.config import to_dict
    from minivdit.models.dit import VDiT

    cfg = make_tiny_cfg(tmp_path / "runs")
    model = VDiT(cfg.model)
    model.init_weights()
    step = tmp_path / "runs" / "run" / "checkpoints" / "step_0000004"
    step.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(step / "ema.safetensors"))
    meta = {"step": 4, "config": to_dict(cfg), "model_class": "minivdit.models.dit:VDiT"}
    (step / "meta.json").write_text(json.dumps(meta))
    return step.parents[1]


def test_analyze_encoders_end_to_end(tmp_path, monkeypatch, tiny_run):
    teachers = pytest.importorskip("minivdit.align.teachers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    dinov2 = teachers.make_tiny_teacher("dinov2", tmp_path / "dinov2")
    sam2 = teachers.make_tiny_teacher("sam2", tmp_path / "sam2")
    videomae = teachers.make_tiny_teacher("videomae", tmp_path / "videomae")  # F' = T / 2: its own Teacher
    out = tmp_path / "report"
    argv = ["--out", str(out), "--num-videos", "5", "--frames", "4", "--size", "32", "--batch", "3"]
    argv += ["--dinov2", str(dinov2), "--sam2", str(sam2), "--videomae", str(videomae)]
    argv += ["--grid", "4", "4", "--ks", "2", "4", "999"]
    argv += ["--ckpt", str(tiny_run), "--tap", "1", "--pca-videos", "1", "--device", "cpu"]
    report = _tool().main(argv)
    assert report == json.loads((out / "report.json").read_text())
    encoders = ["dinov2", "sam2", "videomae", "dit_block1"]
    assert report["videos"] == 5 and report["skipped"] == []
    for key in ("iicr", "iicr_terms", "delta_freq", "delta_freq_std", "features"):
        assert sorted(report[key]) == sorted(encoders), key
    for name in encoders:
        assert list(report["iicr"][name]) == ["2", "4"]  # k = 999 >= the number of frame vectors: skipped
        assert all(v is None or v > 0 for v in report["iicr"][name].values())
        assert set(report["iicr_terms"][name]["2"]) == {"d_inter", "d_intra"}
        assert math.isfinite(report["delta_freq"][name])
    assert report["features"]["dit_block1"]["grid"] == [2, 2]  # 8x8 pixels, patch 4
    assert report["features"]["dinov2"] == {"dim": 32, "frames": 4, "grid": [4, 4]}
    assert report["features"]["videomae"]["frames"] == 2
    assert report["plots"] == ["iicr.png", "delta_freq.png", "pca_video0.png"]
    for png in report["plots"]:
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_analyze_encoders_raw_features_by_default_l2_on_request(tmp_path, monkeypatch):
    """Align4Gen's Eq. 8 takes the encoder output itself (F = E(x_0)): ``--features raw``, the default, feeds
    Δfreq and IICR the teacher's raw tokens; ``--features l2`` normalises each token first."""
    from minivdit.align.analysis import frame_vectors

    teachers = pytest.importorskip("minivdit.align.teachers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    dinov2 = teachers.make_tiny_teacher("dinov2", tmp_path / "dinov2")
    tool = _tool()
    argv = ["--num-videos", "3", "--frames", "2", "--size", "28", "--batch", "3", "--dinov2", str(dinov2)]
    argv += ["--grid", "3", "3", "--ks", "2", "--pca-videos", "0", "--device", "cpu"]
    argv += ["--layer", "prenorm"]  # token norms vary before the final LayerNorm (after it all are ≈ √D)
    raw = tool.main(["--out", str(tmp_path / "raw"), *argv])
    l2 = tool.main(["--out", str(tmp_path / "l2"), *argv, "--features", "l2"])
    assert raw["settings"]["features"] == "raw" and l2["settings"]["features"] == "l2"
    # the oracle: the same clips through the same teacher, the metrics on raw / normalised tokens
    [(video, _)] = list(tool.iter_videos(tool.parse_args(["--out", "x", *argv]), []))
    feats = tool.build_teachers(tool.parse_args(["--out", "x", *argv]), torch.device("cpu"))["dinov2"](video)
    for report, tokens in ((raw, feats), (l2, torch.nn.functional.normalize(feats, dim=-1))):
        maps = tokens.reshape(6, 3, 3, -1)  # [B·F', h, w, D]
        # the same float64 FFT of the same float32 tokens, averaged in float32 as the tool does
        dfreq = float(delta_freq(maps).float().mean())
        assert report["delta_freq"]["dinov2"] == pytest.approx(dfreq, rel=1e-6)
        # frame vectors pooled in float32 as the tool pools them, then the same seeded float64 k-means
        expected = iicr_terms(frame_vectors(tokens.mean(2))[None], 2, seed=0)["iicr"]
        # the same pooled float32 vectors through the same float64 k-means and seed: equal up to the float64
        # summation order of a few dozen terms (≈ 1e-15), so 1e-9 only guards the JSON round trip's repr
        assert report["iicr"]["dinov2"]["2"] == pytest.approx(expected, rel=1e-9)
    assert raw["delta_freq"]["dinov2"] != pytest.approx(l2["delta_freq"]["dinov2"], rel=1e-3)
