"""The Fréchet maths (anchors-eval.md §1.4 and §8.2): closed form, StyleGAN-V's sqrtm formula, self-distance,
float64 accumulation, streaming = batch, merging, ddof, restricted unpickling, and the Inception Score."""

import pickle

import numpy as np
import pytest
import torch

from minivdit.eval.frechet import FeatureStats, fd_from_stats, frechet_distance, inception_score


def _random_stats(rng, n, d, offset=0.0, scale=1.0):
    x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * scale / np.sqrt(d) + offset
    return x.mean(0), np.cov(x, rowvar=False, bias=True)


def test_diagonal_closed_form():
    rng = np.random.default_rng(0)
    d = 50
    mu_a, mu_b = rng.normal(size=d), rng.normal(size=d)
    a, b = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    want = np.square(mu_a - mu_b).sum() + np.square(np.sqrt(a) - np.sqrt(b)).sum()
    for method in ("eigh", "sqrtm"):
        got = frechet_distance(mu_a, np.diag(a), mu_b, np.diag(b), method=method)
        assert got == pytest.approx(want, rel=1e-12), method


@pytest.mark.parametrize("offset", [0.0, 5.0])
def test_eigh_equals_stylegan_v_sqrtm(offset):
    scipy_linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(1)
    mu_a, cov_a = _random_stats(rng, 256, 64, offset)
    mu_b, cov_b = _random_stats(rng, 256, 64, offset + 0.3, scale=1.3)
    ours = frechet_distance(mu_a, cov_a, mu_b, cov_b)
    # StyleGAN-V, src/metrics/frechet_video_distance.py:L54-56, written out here as the oracle.
    m = np.square(mu_b - mu_a).sum()
    s = scipy_linalg.sqrtm(np.dot(cov_b, cov_a))
    s = s[0] if isinstance(s, tuple) else s
    ref = float(np.real(m + np.trace(cov_b + cov_a - s * 2)))
    assert ours == pytest.approx(ref, rel=1e-8)
    assert frechet_distance(mu_a, cov_a, mu_b, cov_b, method="sqrtm") == pytest.approx(ref, rel=1e-12)


def test_self_distance_is_tiny_not_clipped():
    rng = np.random.default_rng(2)
    mu, cov = _random_stats(rng, 512, 64)
    fd = frechet_distance(mu, cov, mu, cov)
    assert abs(fd) < 1e-8 * np.trace(cov)


def test_large_mean_needs_float64_accumulators():
    """With offset 100, float32 raw moments lose the covariance (anchors-eval §1.4); ours stay exact."""
    rng = np.random.default_rng(3)
    xa = rng.normal(size=(2048, 64)).astype(np.float32) + 100
    xb = (rng.normal(size=(2048, 64)) * 1.2 + 0.1).astype(np.float32) + 100
    sa, sb = FeatureStats(64), FeatureStats(64)
    sa.update(xa)
    sb.update(torch.from_numpy(xb))
    two_pass = frechet_distance(
        xa.astype(np.float64).mean(0),
        np.cov(xa.astype(np.float64), rowvar=False, bias=True),
        xb.astype(np.float64).mean(0),
        np.cov(xb.astype(np.float64), rowvar=False, bias=True),
    )
    assert fd_from_stats(sa, sb) == pytest.approx(two_pass, rel=1e-9)

    def raw32(x):
        n, s, ss = len(x), x.sum(0, dtype=np.float32), (x.T @ x).astype(np.float32)
        mean = s / n
        return mean.astype(np.float64), (ss / n - np.outer(mean, mean)).astype(np.float64)

    assert abs(frechet_distance(*raw32(xa), *raw32(xb)) - two_pass) > 1e-3 * two_pass


def test_streaming_equals_batch_and_merge_equals_union():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(301, 16)) * 3 + 2
    streamed = FeatureStats(16)
    for lo in range(0, 301, 64):  # uneven last batch
        streamed.update(x[lo : lo + 64])
    mean, cov = streamed.mean_cov()
    x32 = x.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(mean, x32.mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov, np.cov(x32, rowvar=False, bias=True), rtol=1e-9, atol=1e-12)
    _, cov1 = streamed.mean_cov(ddof=1)
    np.testing.assert_allclose(cov1, np.cov(x32, rowvar=False), rtol=1e-9, atol=1e-12)
    # Two "ranks" holding interleaved rows merge to the same moments as one process.
    r0, r1 = FeatureStats(16), FeatureStats(16)
    r0.update(x[0::2])
    r1.update(x[1::2])
    merged = r0.merge(r1)
    assert merged.count == 301
    np.testing.assert_allclose(merged.raw_cov, streamed.raw_cov, rtol=1e-12)
    np.testing.assert_allclose(merged.raw_mean, streamed.raw_mean, rtol=1e-12)


def test_ddof_switch_scales_covariance():
    rng = np.random.default_rng(5)
    s = FeatureStats(8)
    s.update(rng.normal(size=(100, 8)))
    _, c0 = s.mean_cov(0)
    _, c1 = s.mean_cov(1)
    np.testing.assert_allclose(c1, c0 * 100 / 99, rtol=1e-12)
    with pytest.raises(ValueError, match="ddof"):
        s.mean_cov(2)


def test_bad_input_errors():
    s = FeatureStats(4)
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        s.update(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="non-finite"):
        s.update(np.full((2, 4), np.nan))
    with pytest.raises(ValueError, match="mu_b"):
        frechet_distance(np.zeros(4), np.eye(4), np.zeros(3), np.eye(3))


def test_save_load_and_cdfvd_pickle(tmp_path):
    rng = np.random.default_rng(6)
    s = FeatureStats(8)
    s.update(rng.normal(size=(40, 8)))
    s.save(tmp_path / "stats.npz", protocol='{"name": "x"}')
    t, meta = FeatureStats.load(tmp_path / "stats.npz")
    assert meta == {"protocol": '{"name": "x"}'} and t.count == 40
    np.testing.assert_array_equal(t.raw_cov, s.raw_cov)
    # cd-fvd's reference pickle: FeatureStats.__dict__ (anchors-eval §3.4).
    d = dict(
        capture_all=False,
        capture_mean_cov=True,
        max_items=None,
        num_items=40,
        num_features=8,
        all_features=[],
        raw_mean=s.raw_mean,
        raw_cov=s.raw_cov,
    )
    (tmp_path / "ref.pkl").write_bytes(pickle.dumps(d))
    u = FeatureStats.from_cdfvd_pkl(tmp_path / "ref.pkl")
    assert u.count == 40 and fd_from_stats(u, s) == pytest.approx(0.0, abs=1e-9)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"raw_mean": Evil()}))
    with pytest.raises(ValueError, match="refusing to unpickle"):
        FeatureStats.from_cdfvd_pkl(tmp_path / "evil.pkl")


def test_inception_score_variants():
    k = 8
    uniform = np.full((200, k), 1 / k)
    assert inception_score(uniform)[0] == pytest.approx(1.0, abs=1e-12)
    sharp = np.full((400, k), 1e-6)
    sharp[np.arange(400), np.arange(400) % k] = 1 - 1e-6 * (k - 1)
    assert inception_score(sharp, splits=1)[0] == pytest.approx(k, rel=1e-3)  # balanced: ≈ K
    mean, std = inception_score(sharp)  # 10 shuffled splits of 40 are not balanced: below K
    assert 0.8 * k < mean < k and std > 0
    # StyleGAN-V's loop written out (video_inception_score.py:L38-52): shuffle with RandomState(42), 10
    # splits.
    rng = np.random.default_rng(7)
    p = rng.dirichlet(np.ones(k) * 0.3, size=205)
    ref = p.copy()
    np.random.RandomState(42).shuffle(ref)
    scores = []
    for i in range(10):
        part = ref[i * 205 // 10 : (i + 1) * 205 // 10]
        kl = part * (np.log(part) - np.log(np.mean(part, axis=0, keepdims=True)))
        scores.append(np.exp(np.mean(np.sum(kl, axis=1))))
    assert inception_score(p) == pytest.approx((np.mean(scores), np.std(scores)), rel=1e-12)
    assert inception_score(torch.from_numpy(p)) == pytest.approx((np.mean(scores), np.std(scores)), rel=1e-12)
    # TGANv2: one split, eps 1e-20, so exact zeros are fine (StyleGAN-V gives NaN there).
    p0 = np.eye(k)[np.arange(64) % k]
    assert inception_score(p0, variant="tganv2") == pytest.approx((k, 0.0), rel=1e-9)
    assert np.isnan(inception_score(p0)[0])


def _tganv2_is_oracle(probs: np.ndarray, n_loops: int, n_samples: int) -> tuple[float, float]:
    """TGANv2's protocol written out: ``scripts/compute_inception_score.py:L55-66`` (``--n-loops`` draws of
    ``--n-samples`` videos, one split each, ``numpy.mean`` / ``numpy.std``) around
    ``tgan2/evaluations/inception_score.py:L57-64`` (``part = part + eps`` with eps 1e-20)."""
    scores = []
    for i in range(n_loops):
        part = probs[i * n_samples : (i + 1) * n_samples] + 1e-20
        kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
        scores.append(np.exp(np.mean(np.sum(kl, 1))))
    return float(np.mean(scores)), float(np.std(scores))


def test_tganv2_is_over_independent_draws_or_nan():
    """Issue 18 §1.11: TGANv2's ± is over independent draws of 2,048 videos, never one split's 0."""
    from minivdit.eval.frechet import tganv2_inception_score

    rng = np.random.default_rng(3)
    p = rng.dirichlet(np.ones(6) * 0.4, size=15)
    # float64, the oracle's operations in the oracle's order on the same rows: equal to round-off (1e-12)
    mean, std, used = tganv2_inception_score(p, draws=3, draw_size=5)
    assert used == 3 and std > 0
    assert (mean, std) == pytest.approx(_tganv2_is_oracle(p, 3, 5), rel=1e-12)
    # too few clips for the draws: the first draw's score, and no std (NaN, not the 0 of a single split)
    mean, std, used = tganv2_inception_score(p[:14], draws=3, draw_size=5)
    assert used == 1 and np.isnan(std)
    assert mean == pytest.approx(_tganv2_is_oracle(p, 1, 5)[0], rel=1e-12)
    assert np.isnan(tganv2_inception_score(p, draws=1, draw_size=15)[1])  # one draw has no spread
    with pytest.raises(ValueError, match="draws 0"):
        tganv2_inception_score(p, draws=0)


def test_tganv2_draws_reach_the_metrics(caplog):
    """The protocol fields (flags ``--is-draws`` / ``--is-draw-size`` of run, folders and training) drive
    the IS of ``metric_values``."""
    from types import SimpleNamespace

    from minivdit.eval.evaluate import EvalConfig, metric_values

    cfg = EvalConfig(protocol="align4gen-ucf", is_variant="tganv2", is_draws=3, is_draw_size=5)
    protocol = cfg.resolved_protocol()
    assert (protocol.is_variant, protocol.is_draws, protocol.is_draw_size) == ("tganv2", 3, 5)
    rng = np.random.default_rng(4)
    p = rng.dirichlet(np.ones(6) * 0.4, size=15)
    fake = SimpleNamespace(is_probs=[(5, p[5:]), (0, p[:5])])  # gathered out of order: sorted by index
    out = metric_values(None, fake, ["is"], protocol)
    assert (out["is"], out["is_std"]) == pytest.approx(_tganv2_is_oracle(p, 3, 5), rel=1e-12)
    fake = SimpleNamespace(is_probs=[(0, p[:14])])
    out = metric_values(None, fake, ["is"], protocol)
    assert np.isnan(out["is_std"]) and "is_std NaN" in caplog.text and "15 generated clips" in caplog.text
