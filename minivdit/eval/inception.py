"""FID-InceptionV3: the TF ``inception-2015-12-05`` graph as a PyTorch module, 2048-d pool features per frame.

References (anchors-eval.md §4.2-4.3):

- torch-fidelity 0.4.0 ``feature_extractor_inceptionv3.py``: uint8 NCHW → float → TF1 bilinear resize to
  299 (L102-119) → ``(x − 128) / 128`` → network → ``'2048'`` = flatten(AdaptiveAvgPool) (L179-189); the
  patched blocks at L269-270, L335, L406 (avg pools without the padded zeros) and L449-453 (Mixed_7c's max
  pool).
- torch-fidelity ``interpolate_compat_tensorflow.py`` (``resample_manually``, the "slow" path, bit-exact on
  CPU) for TF1's ``resize_bilinear(align_corners=False)``; rewritten here as ``resize_bilinear_tf1``.
- mseitzer/pytorch-fid@b9c1811 ``src/pytorch_fid/inception.py``: the same four patches to torchvision's
  InceptionV3 (L239, L269, L304, L340) and the weight file (L13, L195-217).

The network keeps torchvision's module names (``Conv2d_1a_3x3`` … ``Mixed_7c``, ``fc``), so both published
state dicts load as they are: pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` and torch-fidelity's
``weights-inception-2015-12-05-6726825d.pth`` (or a ``.safetensors`` copy of either). Differences from
torchvision's InceptionV3, all from the TF graph:

1. the branch_pool avg pools of Mixed_5b-5d, 6b-6e and 7b ignore the padded zeros
   (``count_include_pad=False``);
2. Mixed_7c's branch_pool is a *max* pool;
3. ``fc`` has 1008 outputs, no AuxLogits, no ``transform_input``; BN ``eps=1e-3``, bias-free convs;
4. inputs are scaled to [-1, 1] as ``(x − 128) / 128`` on uint8 values.

FID over video frames (StyleGAN-V ``frechet_inception_distance.py``, anchors-eval §4.1): every frame is one
item, and ``features`` returns ``[B·F, 2048]`` in (b, f) order.

Deviations and what is unverified:
- The resize is TF1's (torch-fidelity, the NVlabs TorchScript's "legacy_tensorflow" mode), not pytorch-fid's
  ``F.interpolate(align_corners=False)``: features match torch-fidelity, not pytorch-fid (clean-fid measured
  pytorch-fid ≈0.006 FID below TF on FFHQ, anchors-eval §4.2).
- Parity with torch-fidelity is tested with random weights only (tests/test_eval_inception.py). Whether the
  two ``6726825d`` files hold the same tensors, and the match with the NVlabs TorchScript
  ``inception-2015-12-05.pt`` that StyleGAN-V loads, could not be checked without the files.
- ``fc`` is loaded (the files hold it, and keys are strict) but unused: only the pooled features are returned.

Axis legend: B videos, F frames, N images ((B F) flattened), C channels, H/W pixels.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from minivdit.eval.detector import check_finite, check_video, require_weights

INPUT_SIZE = 299
FLAG = "--inception"
FILE_NAME = "pt_inception-2015-12-05-6726825d.pth"
PUBLISHED = (
    "pytorch-fid releases (https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
    "pt_inception-2015-12-05-6726825d.pth) or torch-fidelity's weights-inception-2015-12-05-6726825d.pth"
)


# ---------------------------------------------------------------------------------------------------- helpers


def resize_bilinear_tf1(x: Tensor, size: tuple[int, int]) -> Tensor:
    """TF1 ``resize_bilinear(align_corners=False)`` of ``[N, C, H, W]`` float images to ``size``: the source
    of output pixel ``d`` is ``d · in/out`` (no half-pixel offset, unlike ``F.interpolate``), ``lo = floor``,
    ``hi = min(lo + 1, in − 1)``; interpolated along W, then H, in TF's (and torch-fidelity's) order."""

    def taps(n_in: int, n_out: int) -> tuple[Tensor, Tensor, Tensor]:
        # float32 coordinates times a float32 scale, as TF computes them
        scale = torch.tensor(n_in / n_out, dtype=torch.float32, device=x.device)
        src = torch.arange(n_out, dtype=torch.float32, device=x.device) * scale
        lo = src.floor().long()
        hi = (lo + 1).clamp_max(n_in - 1)
        return lo, hi, (src - lo.float()).to(x.dtype)

    (h, w), (H, W) = size, x.shape[-2:]
    y_lo, y_hi, dy = taps(H, h)
    x_lo, x_hi, dx = taps(W, w)
    top, bottom = x.index_select(2, y_lo), x.index_select(2, y_hi)  # [N, C, h, W]
    top_l, top_r = top.index_select(3, x_lo), top.index_select(3, x_hi)  # [N, C, h, w]
    bot_l, bot_r = bottom.index_select(3, x_lo), bottom.index_select(3, x_hi)
    top = top_l + (top_r - top_l) * dx
    bottom = bot_l + (bot_r - bot_l) * dx
    return top + (bottom - top) * dy[:, None]  # [N, C, h, w]


def _avg_pool_tf(x: Tensor) -> Tensor:
    """TF's 3×3 average pool: the padded zeros are not counted (torchvision counts them)."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


# ----------------------------------------------------------------------------------------------------- layers


class BasicConv2d(nn.Module):
    """Bias-free conv → BatchNorm (eps 1e-3, TF's) → ReLU."""

    def __init__(self, in_channels: int, out_channels: int, **conv_kwargs):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **conv_kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


class InceptionA(nn.Module):
    """Mixed_5b-5d (35×35): 1×1, 5×5, double 3×3 and pool branches; TF avg pool."""

    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_avg_pool_tf(x))
        return torch.cat([b1, b5, b3, bp], 1)  # [N, 224 + pool_features, 35, 35]


class InceptionB(nn.Module):
    """Mixed_6a: 35×35 → 17×17 grid reduction."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3(x)
        b3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, b3dbl, bp], 1)  # [N, 768, 17, 17]


class InceptionC(nn.Module):
    """Mixed_6b-6e (17×17): factorised 7×7 branches; TF avg pool."""

    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b7dbl = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            b7dbl = layer(b7dbl)
        bp = self.branch_pool(_avg_pool_tf(x))
        return torch.cat([b1, b7, b7dbl, bp], 1)  # [N, 768, 17, 17]


class InceptionD(nn.Module):
    """Mixed_7a: 17×17 → 8×8 grid reduction."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = layer(b7)
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, b7, bp], 1)  # [N, 1280, 8, 8]


class InceptionE(nn.Module):
    """Mixed_7b (TF avg pool) and Mixed_7c (``pool="max"``: the TF graph max-pools here, pytorch-fid L340)."""

    def __init__(self, in_channels: int, *, pool: str):
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        b3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        b3dbl = torch.cat([self.branch3x3dbl_3a(b3dbl), self.branch3x3dbl_3b(b3dbl)], 1)
        pooled = (
            F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.pool == "max" else _avg_pool_tf(x)
        )
        bp = self.branch_pool(pooled)
        return torch.cat([b1, b3, b3dbl, bp], 1)  # [N, 2048, 8, 8]


# ------------------------------------------------------------------------------------------------------ model


class FIDInceptionV3(nn.Module):
    """The FID Inception network with torchvision's module names; ``features`` maps uint8 videos to the 2048-d
    pooled features of every frame."""

    name: ClassVar[str] = "inception"
    min_frames: ClassVar[int] = 1
    batch_size: ClassVar[int] = 64  # frames per call
    dim: ClassVar[int] = 2048

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")
        self.fc = nn.Linear(2048, 1008)  # the TF graph's 1008 classes; in the files, unused for features

    def forward(self, x: Tensor) -> Tensor:
        """``[N, 3, 299, 299]`` in [-1, 1] → pooled features ``[N, 2048]``."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # [N, 64, 147, 147]
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # [N, 64, 73, 73]
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # [N, 192, 71, 71]
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # [N, 192, 35, 35]
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))  # [N, 288, 35, 35]
        x = self.Mixed_6a(x)  # [N, 768, 17, 17]
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(x))))  # [N, 768, 17, 17]
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))  # [N, 2048, 8, 8]
        return x.mean(dim=(2, 3))  # [N, 2048]

    @torch.no_grad()
    def features(self, video: Tensor) -> Tensor:
        """``uint8 [B, F, 3, H, W]`` → float32 ``[B·F, 2048]`` on the CPU, one row per frame, (b, f) order."""
        check_video(video, name=self.name, min_frames=self.min_frames)
        device = next(self.parameters()).device
        x = rearrange(video, "b f c h w -> (b f) c h w").to(device, torch.float32)
        x = resize_bilinear_tf1(x, (INPUT_SIZE, INPUT_SIZE))  # [N, 3, 299, 299], values in [0, 255]
        x = (x - 128) / 128
        return check_finite(self(x).float().cpu(), name=self.name)


# ---------------------------------------------------------------------------------------------------- loading


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """A state dict from ``.safetensors`` or a torch file (``weights_only``: plain tensors only)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(path)
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch/safetensors file, pickled objects, truncated download, ...
        raise ValueError(f"{FLAG} {path}: cannot read a state dict ({FILE_NAME}): {e}") from e
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise ValueError(
            f"{FLAG} {path}: expected a state dict of tensors ({FILE_NAME}), got {type(sd).__name__}"
        )
    return sd


def load_strict(model: nn.Module, sd: dict[str, Tensor], path: Path, *, flag: str) -> None:
    """``load_state_dict(assign=True)`` (``model`` may be on ``meta``) with exact keys and shapes (BatchNorm's
    ``num_batches_tracked`` may be absent or present; weights become float32), or a ``ValueError`` naming the
    file and listing what differs."""
    sd = {
        k: v.float() if v.is_floating_point() else v for k, v in sd.items() if "num_batches_tracked" not in k
    }
    own = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing, unexpected = sorted(own.keys() - sd.keys()), sorted(sd.keys() - own.keys())
    shapes = sorted(
        f"{k}: {tuple(sd[k].shape)} != {tuple(v.shape)}"
        for k, v in own.items()
        if k in sd and sd[k].shape != v.shape
    )
    problems = [
        f"{len(keys)} {what}: {keys[:8]}{' …' if len(keys) > 8 else ''}"
        for what, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", shapes),
        )
        if keys
    ]
    if problems:
        raise ValueError(
            f"{flag} {path}: not the expected {type(model).__name__} weights: " + "; ".join(problems)
        )
    # every other key is checked above; BatchNorm's counters are set to 0 (only training reads them)
    counters = {k: torch.zeros_like(v, device="cpu") for k, v in model.state_dict().items() if k not in sd}
    model.load_state_dict(sd | counters, strict=True, assign=True)


def load(path: str | os.PathLike | None, *, device: str | torch.device = "cpu") -> FIDInceptionV3:
    """The FID Inception from a local state dict (pytorch-fid's or torch-fidelity's ``…-6726825d.pth``, or a
    ``.safetensors`` copy), in eval mode without gradients, on ``device``."""
    p = require_weights(path, flag=FLAG, file_name=FILE_NAME, published=PUBLISHED)
    with torch.device("meta"):  # no random init of 24M weights that the file replaces
        model = FIDInceptionV3()
    load_strict(model, read_state_dict(p), p, flag=FLAG)
    return model.to(device).eval().requires_grad_(False)
