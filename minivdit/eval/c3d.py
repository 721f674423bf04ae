"""C3D fine-tuned on UCF-101: the class probabilities behind the video Inception Score.

Reference: pfnet-research/tgan2@f892bc4 ``tgan2/models/c3d/c3d_ucf101.py:L22-170`` (``C3DVersion1UCF101``),
the Chainer port of the Caffe ``c3d_ucf101_finetune_whole_iter_20000`` (Sports-1M pre-trained, UCF-101
fine-tuned), with its preprocessing (anchors-eval.md §5.2). Weights: TGANv2's ``conv3d_deepnetA_ucf.npz``
(Chainer ``save_npz`` keys ``conv1a/W``, ``conv1a/b``, …, ``fc8/b``; layouts already PyTorch's, so ``np.load``
suffices) and ``mean2.npz`` (key ``mean``, at least (3, 16, 120, 120)).

Forward (TGANv2's ``functions`` OrderedDict, L74-93), on a clip of exactly 16 frames:

1. ``pre``: pixels on TGANv2's data scale, ``(u − 128) / 128`` from uint8
   (``tgan2/datasets/h5video.py:L70``; its generators learn that scale and are clipped to [-1, 1],
   ``tgan2/evaluations/inception_score.py:L79``), through a bias-free 1×1×1 conv whose weight is
   ``W[0, 2] = W[1, 1] = W[2, 0] = 128``: RGB → BGR, ×128 (L67-69).
2. ``_resize``: every frame to 112×112, Chainer ``F.resize_images``: bilinear, ``align_corners=True``
   (L164-170).
3. ``mean``: add ``128 − mean2[:, :, 8:120, 8:120]`` ((3, 16, 112, 112), per pixel and frame). Net effect:
   ``u − mean``: the network sees the pixel value itself, 0..255 (BGR), minus the mean.
4. conv1a → pool1 (1, 2, 2) → conv2a → pool2 → conv3a, conv3b → pool3 → conv4a, conv4b → pool4 → conv5a,
   conv5b → pool5, every conv 3×3×3 with pad 1 and a ReLU. Chainer's ``max_pooling_nd`` has stride = kernel
   and ``cover_all=True``, i.e. ``ceil_mode=True``: 16×112² → 16×56² → 8×28² → 4×14² → 2×7² → 1×4×4 (the 7 → 4
   windows are [0, 1], [2, 3], [4, 5], [6]; DavideA/c3d-pytorch pads instead, which shifts them).
5. fc6 (8192 → 4096) → ReLU → fc7 → ReLU → fc8 (→ 101) → softmax. Dropout is inert at test time and omitted.

A ``.safetensors`` holding this module's ``state_dict()`` (the eleven layers plus the ``mean_bias`` buffer)
loads too: ``save_file(load(npz).state_dict(), "c3d_ucf101.safetensors")`` converts the pair once.

Deviations and what is unverified:
- Input scale (issue 18 §1.12). TGANv2's code fixes it: real pixels enter its models as ``(u − 128) / 128``
  (``h5video.py:L70``), so its generators emit that scale and ``pre`` + 128 turns a pixel ``u`` back into
  ``u``. minivdit maps uint8 the same way: C3D sees ``u``, 0..255. Until this release minivdit used
  ``u / 127.5 − 1`` (minivdit's own data scale), which C3D saw as ``u · 256/255``: 0.4 % more contrast, 255 →
  256. Another port of the network feeds ``[0, 1] · 255``, i.e. ``u`` as here. **Unverified**: StyleGAN-V's
  ``isv2048_ucf`` (the IS Align4Gen cites) calls a TorchScript ``c3d_ucf101.pt`` on uint8 clips
  (``src/metrics/video_inception_score.py:L15-19, L39``), described as a perfect reproduction of this
  Chainer model; its uint8 scaling is inside the file, which could not be read here (no weights). Check its
  ``.code`` when the file is at hand.
- Chainer 6's ``resize_images`` default is bilinear with ``align_corners=True``; earlier Chainer releases
  used the same ``linspace(0, in − 1, out)`` grid. The resize follows Chainer's CPU code (float64 grid,
  weights cast to float32); its GPU kernel may round differently (~1e-5 relative, unverified). Which Chainer
  release TGANv2's numbers came from is not recorded.
- Nothing was run on the real weights: the architecture, key names and parameter count (78,409,573) are
  checked against the reference's definition only (tests/test_eval_c3d.py); no PyTorch oracle exists.

Axis legend: B clips, T frames (16), C channels, H/W pixels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from minivdit.config import check_types
from minivdit.eval.detector import check_finite, check_video, require_weights

NUM_FRAMES = 16
SIZE = 112
MEAN_CROP = slice(8, 8 + SIZE)  # TGANv2: mean[:, :, 8:8 + 112, 8:8 + 112]
CONVS = ("conv1a", "conv2a", "conv3a", "conv3b", "conv4a", "conv4b", "conv5a", "conv5b")
FCS = ("fc6", "fc7", "fc8")
# TGANv2's ``pre`` 1×1×1 conv weight [out, in]: output channel o = 128 · input channel (2 − o), RGB → BGR ×128
PRE = torch.tensor([[0.0, 0.0, 128.0], [0.0, 128.0, 0.0], [128.0, 0.0, 0.0]])
FLAG = "--c3d"
FILE_NAME = "conv3d_deepnetA_ucf.npz (+ mean2.npz)"
PUBLISHED = "TGANv2 releases (https://github.com/rezoo/tgan2/releases/download/v1.0/)"


@dataclass(frozen=True, kw_only=True)
class C3DConfig:
    """Layer widths of C3D; the defaults are the published network (78,409,573 parameters)."""

    widths: tuple[int, ...] = (64, 128, 256, 256, 512, 512, 512, 512)
    """Output channels of conv1a, conv2a, conv3a, conv3b, conv4a, conv4b, conv5a, conv5b."""
    fc_dim: int = 4096
    """Width of fc6 and fc7."""

    def __post_init__(self):
        check_types(self)
        if len(self.widths) != len(CONVS) or min(self.widths) < 1 or self.fc_dim < 1:
            raise ValueError(f"C3DConfig: need {len(CONVS)} positive widths and fc_dim >= 1, got {self}")


# ---------------------------------------------------------------------------------------------------- helpers


def resize_align_corners(x: Tensor, size: int) -> Tensor:
    """Chainer ``F.resize_images`` (bilinear, ``align_corners=True``), ``[N, C, H, W]`` → ``[N, C, size,
    size]``.

    Output pixel ``d`` samples the input at ``d · (in − 1)/(out − 1)``, a float64 ``linspace`` as in Chainer
    (``compute_indices_and_weights``); the four weights are formed in float64 and cast to the input dtype.
    ``F.interpolate(align_corners=True)`` computes the coordinates in float32 instead, up to ~1e-3 off on
    0..256 pixel values."""

    def taps(n_in: int) -> tuple[Tensor, Tensor, Tensor]:
        src = torch.linspace(0, n_in - 1, size, dtype=torch.float64, device=x.device)
        lo = src.floor()
        return lo.long(), (lo.long() + 1).clamp_max(n_in - 1), src - lo

    (y0, y1, fy), (x0, x1, fx) = taps(x.shape[-2]), taps(x.shape[-1])
    fy, fx = fy[:, None], fx[None, :]  # [size, 1], [1, size]
    w00, w01 = ((1 - fy) * (1 - fx)).to(x.dtype), ((1 - fy) * fx).to(x.dtype)
    w10, w11 = (fy * (1 - fx)).to(x.dtype), (fy * fx).to(x.dtype)
    top, bottom = x.index_select(-2, y0), x.index_select(-2, y1)  # [N, C, size, W]
    return (
        top.index_select(-1, x0) * w00
        + top.index_select(-1, x1) * w01
        + bottom.index_select(-1, x0) * w10
        + bottom.index_select(-1, x1) * w11
    )  # [N, C, size, size]


# ------------------------------------------------------------------------------------------------------ model


class C3D(nn.Module):
    """C3D-UCF101 with TGANv2's preprocessing; ``probs`` maps uint8 16-frame clips to 101 class
    probabilities."""

    name: ClassVar[str] = "c3d"
    min_frames: ClassVar[int] = NUM_FRAMES
    batch_size: ClassVar[int] = 32  # clips per call
    num_classes: ClassVar[int] = 101

    def __init__(self, cfg: C3DConfig = C3DConfig()):
        super().__init__()
        self.cfg = cfg
        widths = (3, *cfg.widths)
        for name, c_in, c_out in zip(CONVS, widths[:-1], widths[1:]):
            setattr(self, name, nn.Conv3d(c_in, c_out, kernel_size=3, padding=1))
        self.pool1 = nn.MaxPool3d((1, 2, 2), stride=(1, 2, 2), ceil_mode=True)
        self.pool2 = nn.MaxPool3d(2, stride=2, ceil_mode=True)
        self.pool3 = nn.MaxPool3d(2, stride=2, ceil_mode=True)
        self.pool4 = nn.MaxPool3d(2, stride=2, ceil_mode=True)
        self.pool5 = nn.MaxPool3d(2, stride=2, ceil_mode=True)  # 2×7×7 → 1×4×4: Chainer's cover_all
        self.fc6 = nn.Linear(cfg.widths[-1] * 1 * 4 * 4, cfg.fc_dim)
        self.fc7 = nn.Linear(cfg.fc_dim, cfg.fc_dim)
        self.fc8 = nn.Linear(cfg.fc_dim, self.num_classes)
        # TGANv2's ``mean`` Bias link: 128 − mean2[:, :, 8:120, 8:120], set by ``load``
        self.register_buffer("mean_bias", torch.zeros(3, NUM_FRAMES, SIZE, SIZE))

    def preprocess(self, video: Tensor) -> Tensor:
        """``uint8 [B, 16, 3, H, W]`` → the network input ``[B, 3, 16, 112, 112]`` (BGR, ``u − mean``)."""
        x = rearrange(video, "b t c h w -> b c t h w").to(self.mean_bias.device, torch.float32)
        x = (x - 128) / 128  # TGANv2's data scale (h5video.py:L70); exact: ``pre`` + 128 give back u
        x = torch.einsum("oc,bcthw->bothw", PRE.to(x.device), x)  # ``pre``: BGR ×128
        T = x.shape[2]
        x = resize_align_corners(rearrange(x, "b c t h w -> (b t) c h w"), SIZE)  # [(B T), 3, 112, 112]
        x = rearrange(x, "(b t) c h w -> b c t h w", t=T)
        return x + self.mean_bias  # [B, 3, 16, 112, 112]

    def forward(self, x: Tensor) -> Tensor:
        """Preprocessed clips ``[B, 3, 16, 112, 112]`` → fc8 logits ``[B, 101]``."""
        x = self.pool1(F.relu(self.conv1a(x)))  # [B, 64, 16, 56, 56]
        x = self.pool2(F.relu(self.conv2a(x)))  # [B, 128, 8, 28, 28]
        x = self.pool3(F.relu(self.conv3b(F.relu(self.conv3a(x)))))  # [B, 256, 4, 14, 14]
        x = self.pool4(F.relu(self.conv4b(F.relu(self.conv4a(x)))))  # [B, 512, 2, 7, 7]
        x = self.pool5(F.relu(self.conv5b(F.relu(self.conv5a(x)))))  # [B, 512, 1, 4, 4]
        x = rearrange(x, "b c t h w -> b (c t h w)")  # [B, 8192], Chainer's flatten order
        x = F.relu(self.fc7(F.relu(self.fc6(x))))  # [B, 4096]
        return self.fc8(x)  # [B, 101]

    @torch.no_grad()
    def probs(self, video: Tensor) -> Tensor:
        """``uint8 [B, 16, 3, H, W]`` → float32 class probabilities ``[B, 101]`` on the CPU."""
        check_video(video, name=self.name)
        if video.shape[1] != NUM_FRAMES:
            raise ValueError(
                f"{self.name}: needs clips of exactly {NUM_FRAMES} frames (the first 16 of each video, as "
                f"StyleGAN-V), got {video.shape[1]} frames in {video.shape[0]} clips"
            )
        logits = self(self.preprocess(video)).float()
        return check_finite(logits.softmax(dim=-1).cpu(), name=self.name)


# ---------------------------------------------------------------------------------------------------- loading


def _read(path: Path, what: str) -> dict[str, Tensor]:
    """The arrays of an ``.npz`` (no pickles) or ``.safetensors`` file, or a ``ValueError`` naming it."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(path)
        with np.load(path, allow_pickle=False) as f:
            return {k: torch.from_numpy(f[k]) for k in f.files}
    except Exception as e:  # not an npz, truncated download, ...
        raise ValueError(f"{FLAG} {path}: cannot read {what}: {e}") from e


def _problems(expected: dict[str, tuple], got: dict[str, tuple]) -> list[str]:
    """What differs between two ``{key: shape}`` maps: missing and unexpected keys, shape mismatches."""
    shapes = [f"{k}: {got[k]} != {v}" for k, v in expected.items() if k in got and got[k] != v]
    return [
        f"{len(keys)} {what}: {keys[:8]}{' …' if len(keys) > 8 else ''}"
        for what, keys in (
            ("missing keys", sorted(expected.keys() - got.keys())),
            ("unexpected keys", sorted(got.keys() - expected.keys())),
            ("shape mismatches", sorted(shapes)),
        )
        if keys
    ]


def _state_dict_from_npz(path: Path, mean_path: Path) -> dict[str, Tensor]:
    """TGANv2's two files as this module's state dict (``conv1a/W`` → ``conv1a.weight``; the cropped mean →
    ``mean_bias``)."""
    arrays = _read(path, "conv3d_deepnetA_ucf.npz")
    expected = {f"{n}/{p}": () for n in CONVS + FCS for p in "Wb"}  # shapes are checked by ``load``
    problems = _problems(expected, {k: () for k in arrays})
    if problems:
        raise ValueError(f"{FLAG} {path}: not TGANv2's C3D weights: " + "; ".join(problems))
    sd = {k.replace("/W", ".weight").replace("/b", ".bias"): v for k, v in arrays.items()}

    arrays = _read(mean_path, "mean2.npz")
    mean = arrays.get("mean")
    if (
        mean is None
        or mean.ndim != 4
        or mean.shape[:2] != (3, NUM_FRAMES)
        or min(mean.shape[2:]) < MEAN_CROP.stop
    ):
        found = {k: tuple(v.shape) for k, v in arrays.items()}
        raise ValueError(
            f"{FLAG} {mean_path}: expected mean2.npz with an array 'mean' of shape (3, 16, ≥120, ≥120) for "
            f"TGANv2's [:, :, 8:120, 8:120] crop, got {found}"
        )
    sd["mean_bias"] = (128 - mean[:, :, MEAN_CROP, MEAN_CROP]).float()  # in mean's dtype, as Chainer
    return sd


def load(
    path: str | os.PathLike | None,
    mean_path: str | os.PathLike | None = None,
    *,
    device: str | torch.device = "cpu",
    cfg: C3DConfig = C3DConfig(),
) -> C3D:
    """C3D from TGANv2's ``conv3d_deepnetA_ucf.npz`` and ``mean2.npz`` (default: the one next to the
    weights), or from a converted ``.safetensors`` that holds the mean too; in eval mode without gradients, on
    ``device``. Keys and shapes are strict."""
    p = require_weights(path, flag=FLAG, file_name=FILE_NAME, published=PUBLISHED)
    if p.suffix == ".safetensors":
        if mean_path is not None:
            raise ValueError(f"{FLAG} {p}: a converted .safetensors holds the mean already; drop mean_path")
        sd = _read(p, "a converted C3D state dict")
    else:
        m = require_weights(
            mean_path or p.with_name("mean2.npz"), flag=FLAG, file_name="mean2.npz", published=PUBLISHED
        )
        sd = _state_dict_from_npz(p, m)
    with torch.device("meta"):  # no random init of 78M weights that the files replace
        model = C3D(cfg)
    problems = _problems(
        {k: tuple(v.shape) for k, v in model.state_dict().items()}, {k: tuple(v.shape) for k, v in sd.items()}
    )
    if problems:
        raise ValueError(f"{FLAG} {p}: not the expected C3D weights ({cfg}): " + "; ".join(problems))
    model.load_state_dict({k: v.float() for k, v in sd.items()}, assign=True)
    return model.to(device).eval().requires_grad_(False)
