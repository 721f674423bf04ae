"""``minivdit.align.losses``: dREPA against the blog's reference code (kept verbatim in ``tools/bench.py``)
and a naive all-pairs formula, values and gradients in fp64; TRD against VideoREPA's Gram code; REPA and
CREPA on hand-computed cases; the checks on bad input. CPU, tiny tensors, a few seconds (the first
checkpointed call imports torch._dynamo: ~2 s)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from minivdit.align.losses import crepa, crepa_weights, drepa, repa, trd

pytestmark = pytest.mark.usefixtures("single_thread")


# Oracle: seeds/000_909e03a75427b323.txt, "Appendix - Implementation", kept verbatim once, in tools/bench.py
# (which times minivdit against it); ``tools/`` is a folder of scripts, so it is loaded from its path. Called
# with reshape=False on token layout [B, f, hw, D]; note the argument order: foundation-model features first.
_spec = importlib.util.spec_from_file_location("bench", Path(__file__).parents[1] / "tools" / "bench.py")
_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_bench)
dREPA_loss = _bench.dREPA_loss


def _gram_pairs(h: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """(all-pairs Gram difference [B, N, N], off-diagonal mask [N, N]) on normalised tokens, N = F·n."""
    hn = F.normalize(rearrange(h, "b f n d -> b (f n) d"), dim=-1)
    yn = F.normalize(rearrange(y, "b f n d -> b (f n) d"), dim=-1)
    diff = hn @ hn.mT - yn @ yn.mT
    return diff, ~torch.eye(diff.shape[-1], dtype=torch.bool)


def blog_naive(h: Tensor, y: Tensor, p: int = 2) -> Tensor:
    """1/(N(N−1)) Σ_{i≠j} |⟨h_i,h_j⟩ − ⟨y_i,y_j⟩|^p per sample, written out over all pairs."""
    diff, off = _gram_pairs(h, y)
    N = diff.shape[-1]
    return (diff.abs() ** p * off).sum((1, 2)) / (N * (N - 1))


def appendix_l1_naive(h: Tensor, y: Tensor) -> Tensor:
    """The appendix normalisation with |·| instead of (·)², from the all-pairs Gram."""
    B, f, n, _ = h.shape
    diff, _ = _gram_pairs(h, y)
    blocks = rearrange(diff.abs(), "b (f i) (g j) -> b f g i j", f=f, g=f)
    same_frame = torch.eye(f, dtype=torch.bool)[None, :, :, None, None]
    spatial = (blocks * same_frame).sum((1, 2, 3, 4)) / (f * n * n)
    temporal = (blocks * ~same_frame).sum((1, 2, 3, 4)) / (f * (f - 1) * n * n)
    return spatial + temporal


def _pair(shape_h, dy, *, dtype=torch.float64, seed=0, grad=True):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(*shape_h, generator=g, dtype=dtype) + 0.5  # a common component: Grams far from 0
    y = torch.randn(*shape_h[:-1], dy, generator=g, dtype=dtype) + 0.5
    return h.requires_grad_(grad), y.requires_grad_(grad)


def _rel(a: Tensor, b: Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


# n·(dh+dy) vs dh²+dy²+dh·dy picks the path: (6, 8, 8) direct per-frame Grams, (12, 4, 5) the identity.
DREPA_SHAPES = [((2, 3, 6, 8), 8), ((2, 4, 12, 4), 5), ((1, 1, 7, 6), 3)]


@pytest.mark.parametrize("shape_h, dy", DREPA_SHAPES)
def test_drepa_appendix_matches_reference_code(shape_h, dy):
    h, y = _pair(shape_h, dy)
    ours = drepa(h, y, variant="appendix")
    assert ours.shape == (shape_h[0],) and ours.dtype == torch.float64
    if shape_h[1] == 1:  # the reference's temporal mean is over nothing (nan); ours counts it as 0
        ref = (blog_naive(h, y) * (shape_h[2] - 1) / shape_h[2]).mean()  # spatial mean incl. the diagonal
    else:
        ref = dREPA_loss(y, h, reshape=False)
    assert abs(ours.mean().item() - ref.item()) <= 1e-10 * ref.item()
    g_ours = torch.autograd.grad(ours.mean(), (h, y))
    g_ref = torch.autograd.grad(ref, (h, y))
    for a, b in zip(g_ours, g_ref, strict=True):
        assert _rel(a, b) < 1e-10


@pytest.mark.parametrize("shape_h, dy", DREPA_SHAPES)
def test_drepa_blog_matches_all_pairs(shape_h, dy):
    h, y = _pair(shape_h, dy, seed=1)
    ours, ref = drepa(h, y, variant="blog"), blog_naive(h, y)
    assert _rel(ours, ref) < 1e-10
    w = torch.tensor([0.3, 1.7][: shape_h[0]], dtype=torch.float64)  # distinct per-sample upstream grads
    for a, b in zip(
        torch.autograd.grad((w * ours).sum(), (h, y)),
        torch.autograd.grad((w * ref).sum(), (h, y)),
        strict=True,
    ):
        assert _rel(a, b) < 1e-10


def test_drepa_per_sample_and_appendix_differs_from_blog():
    h, y = _pair((2, 3, 5, 4), 4, grad=False)
    both = drepa(h, y)
    for b in range(2):
        assert torch.allclose(drepa(h[b : b + 1], y[b : b + 1]), both[b : b + 1], rtol=1e-12, atol=0)
    # appendix ≈ F× (same-frame) and F/(F−1)× (cross-frame) the blog value: strictly larger
    assert (both > drepa(h, y, variant="blog")).all()


@pytest.mark.parametrize("variant", ["appendix", "blog"])
def test_drepa_l1_matches_naive(variant):
    h, y = _pair((2, 3, 4, 5), 6, seed=2)
    ours = drepa(h, y, variant=variant, distance="l1")
    ref = blog_naive(h, y, p=1) if variant == "blog" else appendix_l1_naive(h, y)
    assert _rel(ours, ref) < 1e-12
    for a, b in zip(torch.autograd.grad(ours.sum(), h), torch.autograd.grad(ref.sum(), h), strict=True):
        assert _rel(a, b) < 1e-10


def test_drepa_fp32_and_autocast():
    h, y = _pair((1, 4, 16, 12), 12, seed=3, grad=False)
    exact = drepa(h, y)
    fp32 = drepa(h.float(), y.float())
    # fp32 Grams of d = 12 (≲ (d + 2)·u ≈ 1e-6 per entry, against |ΔG| ~ 0.3), reduced in fp64: ≲ 1e-5
    assert fp32.dtype == torch.float32 and _rel(fp32.double(), exact) < 1e-5
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the loss opts out: products stay fp32
        auto = drepa(h.float(), y.float())
    assert auto.dtype == torch.float32 and torch.equal(auto, fp32)  # the same fp32 kernels: bit-identical
    bf16_in = drepa(h.bfloat16(), y.float())  # low-precision inputs are upcast, not the other way round
    assert bf16_in.dtype == torch.float32


def test_drepa_zero_for_rotated_teacher():
    """Grams are invariant to an orthogonal map of the features, and to scaling tokens."""
    h, _ = _pair((2, 3, 5, 6), 6, grad=False)
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(4)))
    y = 3.0 * h @ q
    for variant in ("appendix", "blog"):
        assert drepa(h, y, variant=variant).abs().max() < 1e-13


# ---- TRD: VideoREPA's Gram code (lora_trainer.py::compute_loss), adapted from its hard-coded 24 × (10·15)
# layout and its fixed shapes to [B, F, HW, C] inputs; returns the batch mean, as theirs.
def videorepa_trd(align: Tensor, align_target: Tensor, margin: float, variant: str) -> Tensor:
    B, F_, HW, _ = align.shape
    align = F.normalize(align, dim=-1)
    align_target = F.normalize(align_target, dim=-1)
    if variant == "full":
        align_sim = torch.bmm(
            align.flatten(0, 1),
            align.flatten(1, 2).unsqueeze(1).expand(-1, F_, -1, -1).flatten(0, 1).transpose(1, 2),
        )
        align_target_sim = torch.bmm(
            align_target.flatten(0, 1),
            align_target.flatten(1, 2).unsqueeze(1).expand(-1, F_, -1, -1).flatten(0, 1).transpose(1, 2),
        )
        return F.relu((align_sim - align_target_sim).abs() - margin).mean()
    if variant == "spatial":
        align_sim = torch.bmm(align.flatten(0, 1), align.flatten(0, 1).transpose(1, 2))
        align_target_sim = torch.bmm(align_target.flatten(0, 1), align_target.flatten(0, 1).transpose(1, 2))
        return F.relu((align_sim - align_target_sim).abs() - margin).mean()
    align_sim = torch.bmm(align.flatten(1, 2), align.flatten(1, 2).transpose(1, 2))
    align_target_sim = torch.bmm(align_target.flatten(1, 2), align_target.flatten(1, 2).transpose(1, 2))
    loss = F.relu((align_sim - align_target_sim).abs() - margin).clone()
    loss = loss.reshape(B, F_, HW, F_, HW)
    for i in range(F_):
        loss[:, i, :, i, :] = 0.0
    return loss.mean() * (B * F_ * HW * F_ * HW) / (B * F_ * HW * (F_ - 1) * HW)


@pytest.mark.parametrize("variant", ["full", "spatial", "temporal"])
@pytest.mark.parametrize("margin", [0.0, 0.1])
def test_trd_matches_videorepa(variant, margin):
    h, y = _pair((2, 3, 5, 6), 4, seed=5)
    ours = trd(h, y, margin=margin, variant=variant)
    ref = videorepa_trd(h, y, margin, variant)
    assert ours.shape == (2,) and abs(ours.mean().item() - ref.item()) < 1e-12 * max(ref.item(), 1.0)
    for a, b in zip(torch.autograd.grad(ours.mean(), (h, y)), torch.autograd.grad(ref, (h, y)), strict=True):
        assert _rel(a, b) < 1e-10


def test_trd_zero_for_identical_grams():
    h, _ = _pair((2, 3, 5, 6), 6, grad=False)
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(6)))
    for variant in ("full", "spatial", "temporal"):
        assert trd(h, h @ q, margin=0.0, variant=variant).abs().max() < 1e-13
    # the margin forgives small relation errors
    noisy = h @ q + 1e-3 * torch.randn(
        h.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(7)
    )
    assert trd(h, noisy, margin=0.0).min() > 0 and trd(h, noisy, margin=0.1).max() == 0


# ---- REPA and CREPA


def test_repa_is_minus_one_when_parallel():
    h = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    scale = torch.rand(2, 3, 4, 1, dtype=torch.float64) + 0.1
    assert torch.allclose(repa(h, scale * h), torch.full((2,), -1.0, dtype=torch.float64))
    assert torch.allclose(repa(h, -h), torch.ones(2, dtype=torch.float64))
    # REPA SILoss: −(normalize(z)·normalize(ẑ)).sum(-1), averaged over tokens per sample
    y = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    silo = -(F.normalize(y, dim=-1) * F.normalize(h, dim=-1)).sum(-1).flatten(1).mean(1)
    assert torch.allclose(repa(h, y), silo)


def test_crepa_hand_computed():
    """h^f = e1 for every frame; y^0 = e1, y^1 = (e1 + e2)/√2, y^2 = e2, so sim(y^k, h^f) = [1, c, 0][k]."""
    c = 1 / math.sqrt(2)
    h = torch.tensor([1.0, 0.0], dtype=torch.float64).expand(1, 3, 1, 2)
    y = torch.tensor([[1.0, 0.0], [c, c], [0.0, 1.0]], dtype=torch.float64).view(1, 3, 1, 2)
    tau = 2.0
    w1, w2 = math.exp(-1 / tau), math.exp(-2 / tau)
    cases = {
        (1, "exact"): (1 + w1 * c) + (c + w1 * (1 + 0)) + (0 + w1 * c),
        (2, "exact"): 1 + c + w2 * 1,
        (2, "cumulative"): (1 + w1 * c) + (c + w1 * 1) + (w1 * c + w2 * 1),
    }
    for (d, mode), total in cases.items():
        assert crepa(h, y, d=d, tau=tau, mode=mode).item() == pytest.approx(-total / 3, rel=1e-12)


def test_crepa_single_frame_is_repa():
    h, y = _pair((2, 1, 4, 5), 5, grad=False)
    # d clamped to F − 1 = 0: no neighbour. fp64 (_pair), the same per-token cosines averaged in another
    # order: a few ulp of 1e-16, so 1e-12 relative is a wide margin
    assert torch.allclose(crepa(h, y, d=3), repa(h, y), rtol=1e-12)
    assert crepa_weights(3, d=1).tolist()[1] == [math.exp(-1), 1.0, math.exp(-1)]


def simpletuner_crepa(h: Tensor, y: Tensor, d: int, tau: float) -> Tensor:
    """Oracle, re-implemented minimally: SimpleTuner ``CrepaRegularizer.compute_loss``, exact (adjacent)
    mode, frame-normalised, without λ and per sample (``bghira/SimpleTuner``
    ``simpletuner/helpers/training/crepa.py`` l.495-539 at bc8e6ab; the clamp d = min(d, F − 1): l.504)."""
    p, f = F.normalize(h, dim=-1), F.normalize(y, dim=-1)
    total = (p * f).sum(-1).mean(-1)  # [B, F] self similarity
    frames = total.shape[1]
    d = min(d, frames - 1)
    if d > 0:
        w = math.exp(-d / tau)
        total[:, :-d] += w * (p[:, :-d] * f[:, d:]).sum(-1).mean(-1)
        total[:, d:] += w * (p[:, d:] * f[:, :-d]).sum(-1).mean(-1)
    return -total.sum(1) / frames


def test_crepa_clamps_d_to_frames_minus_one_as_simpletuner(caplog):
    h, y = _pair((2, 4, 3, 5), 5, grad=False)
    with caplog.at_level("WARNING", logger="minivdit"):
        clamped = crepa(h, y, d=9, tau=2.0)
        crepa(h, y, d=9, tau=2.0)
    assert caplog.text.count("crepa: d=9 >= the clip's 4 DiT frames, clamped to d=3") == 1  # logged once
    assert torch.equal(clamped, crepa(h, y, d=3, tau=2.0))  # the same weights, built from d = 3
    assert not torch.allclose(clamped, repa(h, y))  # frames 0 and 3 are each other's neighbours
    # fp64, two different sums of ≤ 12 O(1) products: 1e-12 relative is thousands of ulp of margin
    torch.testing.assert_close(clamped, simpletuner_crepa(h, y, 9, 2.0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        crepa(h, y, d=2, tau=2.0), simpletuner_crepa(h, y, 2, 2.0), rtol=1e-12, atol=1e-12
    )
    # cumulative: every distance 1..F−1 either way, the clamp changes nothing
    assert torch.equal(crepa(h, y, d=9, mode="cumulative"), crepa(h, y, d=3, mode="cumulative"))


def test_crepa_gradients_reach_h():
    h, y = _pair((1, 4, 3, 5), 5, dtype=torch.float32)
    crepa(h, y, d=2, mode="cumulative").sum().backward()
    assert h.grad is not None and h.grad.abs().sum() > 0


# ---- bad input


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: repa(torch.randn(2, 3, 4), torch.randn(2, 3, 4)), r"\[B, F, N, D\].*\(2, 3, 4\)"),
        (lambda: repa(torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 5)), r"same width.*\(1, 2, 3, 5\)"),
        (
            lambda: drepa(torch.randn(1, 2, 3, 4), torch.randn(1, 2, 4, 4)),
            r"share \[B, F, N\].*\(1, 2, 4, 4\)",
        ),
        (lambda: drepa(torch.randn(1, 1, 1, 4), torch.randn(1, 1, 1, 4), variant="blog"), "i ≠ j"),
        (lambda: drepa(torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4), variant="x"), "variant"),
        (lambda: drepa(torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4), distance="cos"), "distance"),
        (lambda: trd(torch.randn(1, 1, 3, 4), torch.randn(1, 1, 3, 4), variant="temporal"), ">= 2 frames"),
        (lambda: trd(torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4), margin=-1), "margin"),
        (lambda: crepa(torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4), d=0), "distance d"),
        (lambda: crepa(torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4), mode="x"), "mode"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
