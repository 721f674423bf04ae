"""What every detector shares: the input contract, local weight files, the shared resize, hashing.

The contract (one file per detector in ``minivdit/eval/``):

- ``load(path, *, device="cpu") -> <Detector nn.Module>``. ``path`` is a local file (or folder) the user
  has on
  disk; nothing is ever downloaded. A missing path raises ``ValueError`` through ``require_weights``
  (naming the
  CLI flag, the expected file name and where it is published); a file of the wrong architecture raises a
  strict-key ``ValueError`` listing missing / unexpected keys.
- The detector takes videos as ``uint8 [B, F, 3, H, W]`` (minivdit's layout, DESIGN.md §2) at the size the
  protocol gives it (the short side resized and centre-cropped to the protocol's resolution by the caller),
  and
  does its own, reference-exact preprocessing from there (I3D: its TorchScript's own resize; VideoMAE: [0, 1]
  and bilinear 224; Inception: TF1 bilinear 299; C3D: TGANv2's BGR x128 112²; CLIP: VBench's bicubic 224).
- Class attributes: ``name`` (the metric's detector name, e.g. ``"i3d"``), ``min_frames`` (clips shorter than
  this raise a ``ValueError``), ``batch_size`` (a sensible default on one GPU).
- It runs under ``no_grad``, in eval mode, and returns float32 on the CPU.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor


def require_weights(path: str | os.PathLike | None, *, flag: str, file_name: str, published: str) -> Path:
    """``path`` as a ``Path`` that exists, or a ``ValueError`` naming the flag, the expected file and its
    source."""
    if path is None or str(path) == "":
        raise ValueError(f"{flag} is not set: give the local path of {file_name} (published at {published})")
    p = Path(path).expanduser()
    if not p.exists():
        raise ValueError(f"{flag} {p}: no such file; expected {file_name} (published at {published})")
    return p


def check_video(video: Tensor, *, name: str, min_frames: int = 1) -> None:
    """``video`` must be ``uint8 [B, F, 3, H, W]`` with at least ``min_frames`` frames."""
    if not isinstance(video, Tensor) or video.dtype != torch.uint8:
        raise ValueError(
            f"{name}: expected a uint8 tensor [B, F, 3, H, W], got {getattr(video, 'dtype', type(video))}"
        )
    if video.ndim != 5 or video.shape[2] != 3:
        raise ValueError(f"{name}: expected [B, F, 3, H, W], got shape {tuple(video.shape)}")
    if video.shape[1] < min_frames:
        raise ValueError(f"{name}: needs clips of at least {min_frames} frames, got {video.shape[1]}")


def check_finite(x: Tensor, *, name: str) -> Tensor:
    """Non-finite features would silently poison the statistics: raise, naming the detector."""
    if not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).sum().item()
        raise ValueError(f"{name}: {bad} non-finite feature values (check the weights and the input range)")
    return x


def resize_short_centre_crop(video: Tensor, size: int) -> Tensor:
    """``uint8 [B, F, 3, H, W]`` -> ``uint8 [B, F, 3, size, size]``: short side to ``size`` (bilinear with
    antialias, as cd-fvd's video loader, which rounds the long side up and truncates instead of rounding:
    ``emulate.cdfvd_resize``), then a centre crop. A clip already ``size``×``size`` is returned untouched (no
    resampling at all). StyleGAN-V's loader does not resize (``src/training/dataset.py:L456-460`` reads each
    frame as it is; its I3D resizes inside): its frames were resized beforehand by
    ``convert_videos_to_frames.py`` with PIL Lanczos and saved as JPEG-75 (``emulate``, ``--emulate``)."""
    B, Fr, C, H, W = video.shape
    if (size, size) == (H, W):
        return video
    if min(H, W) != size:
        scale = size / min(H, W)
        h, w = max(size, round(H * scale)), max(size, round(W * scale))
        x = video.reshape(B * Fr, C, H, W).float()
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        video = x.round().clamp(0, 255).to(torch.uint8).reshape(B, Fr, C, h, w)
        H, W = h, w
    top, left = (H - size) // 2, (W - size) // 2
    return video[..., top : top + size, left : left + size]


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 of a file (or of a folder's files, sorted by relative path) for the protocol record."""
    p = Path(path)
    h = hashlib.sha256()
    files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
    for f in files:
        if p.is_dir():
            h.update(str(f.relative_to(p)).encode())
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()
