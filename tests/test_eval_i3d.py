"""The FVD detector (``minivdit/eval/i3d.py``) without the real ``i3d_torchscript.pt``: scripted stand-ins
with the archive's exact signature check the call path (uint8, contiguous ``[B, 3, T, H, W]``, the three
keyword flags), the shapes and every error; a parity test puts cd-fvd's ``InceptionI3d`` (the same network
family, random weights and BatchNorm statistics) behind a scripted rescale + resize front end and checks that
our wrapper returns its logits (bit-identical here: the same traced ops run). Offline, CPU, ~10 s:
``pytest -q tests/test_eval_i3d.py``."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from oracles import load_file, package_file
from torch import Tensor

from minivdit.eval import i3d
from minivdit.eval.i3d import I3D

# The stand-in's feature: per-(channel, frame) means of the first 9 frames, then the first 4 row and column
# means; a fixed projection to 400. Any mix-up of the B, C, T, H, W axes changes it.
N_FEAT = 3 * 9 + 4 + 4


class StandIn(nn.Module):
    """What StyleGAN-V's archive declares: ``forward(x, rescale=False, resize=False, return_features=False)``.
    It raises unless it gets what StyleGAN-V passes."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(N_FEAT, 400)

    def forward(
        self, x: Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False
    ) -> Tensor:
        if x.dtype != torch.uint8:
            raise RuntimeError("stand-in: x must be uint8")
        if not x.is_contiguous():
            raise RuntimeError("stand-in: x must be contiguous")
        if x.dim() != 5 or x.size(1) != 3:
            raise RuntimeError("stand-in: x must be [B, 3, T, H, W]")
        if not (rescale and resize and return_features):
            raise RuntimeError("stand-in: StyleGAN-V passes rescale=True, resize=True, return_features=True")
        y = x.float() / 255 * 2 - 1
        ct = y.mean(dim=(3, 4))[:, :, :9].reshape(x.size(0), 27)  # [B, 3·9]
        rows = y.mean(dim=(1, 2, 4))[:, :4]  # [B, 4]
        cols = y.mean(dim=(1, 2, 3))[:, :4]  # [B, 4]
        return self.proj(torch.cat([ct, rows, cols], dim=1))


def expected_features(net: StandIn, video: Tensor) -> Tensor:
    """The stand-in's output computed from minivdit's ``[B, F, 3, H, W]`` layout directly."""
    y = video.float() / 255 * 2 - 1
    ct = y.mean(dim=(3, 4))[:, :9].transpose(1, 2).reshape(video.shape[0], 27)
    rows = y.mean(dim=(1, 2, 4))[:, :4]
    cols = y.mean(dim=(1, 2, 3))[:, :4]
    return net.proj(torch.cat([ct, rows, cols], dim=1))


class NoFlags(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.float().mean(dim=(2, 3, 4))


class SpatialLogits(nn.Module):
    """An I3D run without the resize on a 256² input: ``[B, 400, h, w]`` (fvd-comparison#4)."""

    def forward(
        self, x: Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False
    ) -> Tensor:
        return torch.zeros(x.size(0), 400, 2, 2)


class NaNLogits(nn.Module):
    def forward(
        self, x: Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False
    ) -> Tensor:
        return torch.full((x.size(0), 400), float("nan"))


def save_scripted(module: nn.Module, path) -> str:
    torch.jit.save(torch.jit.script(module.eval()), str(path))
    return str(path)


def random_video(b: int, f: int, h: int, w: int, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, f, 3, h, w), generator=g, dtype=torch.uint8)


@pytest.fixture
def stand_in(tmp_path):
    torch.manual_seed(0)
    net = StandIn()
    return net, save_scripted(net, tmp_path / "i3d_torchscript.pt")


def test_stand_in_rejects_what_stylegan_v_does_not_pass():
    """The stand-in's checks are real: without them the call-path test below would prove nothing."""
    net = torch.jit.script(StandIn())
    x = random_video(1, 9, 3, 8).permute(0, 2, 1, 3, 4)  # [B, 3, T, H, W], not contiguous
    with pytest.raises(torch.jit.Error, match="contiguous"):  # what a scripted raise becomes
        net(x, rescale=True, resize=True, return_features=True)
    with pytest.raises(torch.jit.Error, match="StyleGAN-V passes"):
        net(x.contiguous(), rescale=True, resize=False, return_features=True)
    with pytest.raises(torch.jit.Error, match="uint8"):
        net(x.contiguous().float(), rescale=True, resize=True, return_features=True)


def test_call_path_shapes_and_attributes(stand_in):
    net, path = stand_in
    det = i3d.load(path)
    assert isinstance(det, I3D) and not det.training
    assert (det.name, det.min_frames, det.batch_size, det.dim) == ("i3d", 9, 8, 400)
    video = random_video(2, 10, 12, 16)
    out = det.features(video)
    assert out.shape == (2, 400) and out.dtype == torch.float32 and out.device.type == "cpu"
    with torch.no_grad():
        ref = expected_features(net, video)
    # the same float32 maths from another layout (TorchScript, [B, 3, T, H, W]): the means over H·W and the
    # 35-term projection may reduce in another order, ≲ 35·u·Σ|w·x| ≈ 1e-5 at worst on O(1) features; an
    # axis mix-up moves them by O(0.1)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert not out.requires_grad
    torch.testing.assert_close(det(video), out, rtol=0, atol=0)  # forward is features: the same call
    # each clip only sees itself: a batch of one may take other float32 kernels than a batch of two (gemv
    # against gemm), so the same bound as above; another clip leaking in would move it by O(0.1)
    torch.testing.assert_close(det.features(video[1:]), out[1:], rtol=1e-5, atol=1e-5)


def test_min_frames(stand_in):
    _, path = stand_in
    det = i3d.load(path)
    assert det.features(random_video(1, 9, 8, 8)).shape == (1, 400)
    with pytest.raises(ValueError, match="at least 9 frames, got 8"):
        det.features(random_video(1, 8, 8, 8))
    with pytest.raises(ValueError, match="uint8"):
        det.features(random_video(1, 9, 8, 8).float())


def test_missing_file_names_flag_and_file(tmp_path):
    with pytest.raises(ValueError, match=r"--i3d .*no such file; expected i3d_torchscript\.pt.*stylegan-v"):
        i3d.load(tmp_path / "absent.pt")
    with pytest.raises(ValueError, match=r"--i3d is not set.*i3d_torchscript\.pt"):
        i3d.load(None)


def test_not_a_torchscript_archive(tmp_path):
    state_dict = tmp_path / "state_dict.pt"
    torch.save(StandIn().state_dict(), state_dict)
    with pytest.raises(ValueError, match=r"state_dict\.pt: not a TorchScript archive"):
        i3d.load(state_dict)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a zip archive")
    with pytest.raises(ValueError, match=r"junk\.pt: not a TorchScript archive"):
        i3d.load(junk)


def test_forward_without_the_flags(tmp_path):
    path = save_scripted(NoFlags(), tmp_path / "other.pt")
    with pytest.raises(
        ValueError, match=r"other\.pt: forward lacks .*'rescale', 'resize', 'return_features'"
    ):
        i3d.load(path)


def test_bad_outputs_raise(tmp_path):
    det = i3d.load(save_scripted(SpatialLogits(), tmp_path / "spatial.pt"))
    with pytest.raises(ValueError, match=r"returned \(2, 400, 2, 2\).*expected \[2, 400\]"):
        det.features(random_video(2, 9, 8, 8))
    det = i3d.load(save_scripted(NaNLogits(), tmp_path / "nan.pt"))
    with pytest.raises(ValueError, match="i3d: 800 non-finite"):
        det.features(random_video(2, 9, 8, 8))


# ------------------------------------------------------------------------------------------------------------
# Parity with the real network structure


class ScriptedI3D(nn.Module):
    """StyleGAN-V's archive as documented: uint8 → ``x / 255 * 2 - 1`` (``rescale``), bilinear 224² per
    frame (``resize``), the 400 logits averaged over time (``return_features``) or their softmax. ``net`` is
    cd-fvd's ``InceptionI3d``, traced (its dynamic TF-SAME padding uses NumPy and a function attribute, so it
    cannot be scripted; the trace fixes the padding for the traced clip shape, all this test feeds it)."""

    def __init__(self, net: torch.jit.ScriptModule):
        super().__init__()
        self.net = net

    def forward(
        self, x: Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False
    ) -> Tensor:
        y = x.float()
        if rescale:
            y = y / 255 * 2 - 1
        if resize:
            b, c, t, h, w = y.shape
            frames = y.transpose(1, 2).reshape(b * t, c, h, w)
            frames = F.interpolate(frames, size=(224, 224), mode="bilinear", align_corners=False)
            y = frames.reshape(b, t, c, 224, 224).transpose(1, 2).contiguous()
        logits = self.net(y)
        return logits if return_features else logits.softmax(dim=1)


class Capture(nn.Module):
    """Runs the oracle eagerly (also while being traced) and keeps its output: the reference logits."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.out: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        y = self.net(x)
        self.out = y.detach().clone()
        return y


def randomise_batchnorm(net: nn.Module, g: torch.Generator) -> None:
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm3d):
                n = m.num_features
                m.weight.copy_(1 + 0.2 * torch.randn(n, generator=g))
                m.bias.copy_(0.2 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))


@pytest.mark.slow  # two I3D forwards at 224² (~5-15 s on 2 busy cores): the trace and our call
def test_parity_with_cdfvd_inception_i3d(tmp_path):
    """Random-weight ``InceptionI3d(400)`` behind the scripted front end: our wrapper's features are its
    logits for the same clip, preprocessed as StyleGAN-V's archive is documented to (9 frames, the
    minimum)."""
    oracle_module = load_file(
        "cdfvd_pytorch_i3d", package_file("cd-fvd", "cdfvd/third_party/i3d/pytorch_i3d.py")
    )
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    oracle = oracle_module.InceptionI3d(400, in_channels=3).eval()
    randomise_batchnorm(oracle, g)
    video = random_video(1, 9, 3 * 11, 4 * 11, seed=2)  # [B, F, 3, H, W] uint8, resized to 224² inside
    frames = video.float() / 255 * 2 - 1  # rescale
    frames = F.interpolate(frames.flatten(0, 1), size=(224, 224), mode="bilinear", align_corners=False)
    x = frames.reshape(1, 9, 3, 224, 224).transpose(1, 2).contiguous()  # [B, 3, T, 224, 224] in [-1, 1]

    capture = Capture(oracle).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the oracle's shape-dependent padding
        traced = torch.jit.trace(capture, x, check_trace=False)
    reference = capture.out  # the oracle's eager logits [1, 400]
    assert reference.shape == (1, 400) and reference.abs().max() > 1e-3

    det = i3d.load(save_scripted(ScriptedI3D(traced), tmp_path / "i3d_torchscript.pt"))
    out = det.features(video)
    rel = ((out - reference).abs().max() / reference.abs().max()).item()
    # the traced graph runs the oracle's own float32 ops on the same shapes in this process (bit-identical
    # in practice); 1e-5 of the largest logit leaves room for a TorchScript pass picking another kernel
    # (√K·u ≈ 2e-6 per reduction of K ≤ 1,000 terms) and is far below a wrong front end (resize, rescale)
    assert rel <= 1e-5, rel
