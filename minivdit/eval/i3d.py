"""The FVD detector: StyleGAN-V's I3D TorchScript (``i3d_torchscript.pt``), called exactly as StyleGAN-V does.

Reference: ``universome/stylegan-v`` @ ``3fecd69``:

- ``src/metrics/frechet_video_distance.py:L14-L29``: the file URL (Dropbox ``ge9e5ujwgetktms``), the
  detector kwargs ``rescale=True, resize=True, return_features=True`` and the batch of
  ``128 // num_frames = 8`` clips at 256² (``NUM_FRAMES_IN_BATCH``);
- ``src/metrics/metric_utils.py:L56``: ``torch.jit.load(f).eval().to(device)``;
- ``src/metrics/metric_utils.py:L233-L234``: frames ``[B, T, C, H, W]`` are permuted to ``[B, C, T, H, W]``
  before the call; L285: generated frames are cast to ``uint8`` first, so the network always sees uint8.

The archive's declaration, as printed in JunyaoHu/common_metrics_on_video_quality#7, is
``forward(I3D self, Tensor x, bool rescale=False, bool resize=False, bool return_features=False) -> Tensor``.
With the three flags on it maps uint8 [0, 255] to [-1, 1] (``x / 255 * 2 - 1``, maintainer in
universome/fvd-comparison#4), resizes the frames to 224² itself and returns the 400 pre-softmax Kinetics
logits averaged over the remaining time steps (the tensor TF-hub's FVD calls ``RGB/inception_i3d/Mean:0``;
``fvd-comparison:their_fvd.py:L104-L112``).

Contract (``detector.py``): ``load(path)`` returns an ``I3D`` module whose ``features(video)`` takes
``uint8 [B, F, 3, H, W]`` with F ≥ 9 and returns float32 ``[B, 400]`` on the CPU. Nine frames is the shortest
clip that survives the network's three temporal stride-2 stages (TF-SAME ceil: 9→5→3→2) into its fixed
2×7×7 average pool; 8 frames reach it with one time step and fail. The archive is called unwrapped (a
``DataParallel`` around it broke the positional ``x`` on torch 2.1, JunyaoHu#7) with ``x`` contiguous.

Not verified without the real file (no copy was available when this was written; the tests use scripted
stand-ins with the same signature, and cd-fvd's ``InceptionI3d`` network as a structural stand-in):

- the exact resize inside (a third-party harness says bilinear; the maintainer says the network "matches the
  original up to the upsampling operation", ``frechet_video_distance.py:L2-L4``) and that it needs a
  contiguous input;
- that the archive holds no CUDA-only constants (it is scripted, not traced, so none are expected), so it is
  loaded with ``map_location="cpu"`` and moved with ``.to(device)``;
- the minimum of 9 frames is derived from the I3D architecture, not run.
"""

from __future__ import annotations

import itertools
import os

import torch
import torch.nn as nn
from einops import rearrange
from torch import Tensor

from minivdit.eval.detector import check_finite, check_video, require_weights

FILE_NAME = "i3d_torchscript.pt"
PUBLISHED = (
    "StyleGAN-V (universome/stylegan-v, src/metrics/frechet_video_distance.py: "
    "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt)"
)
# The keyword arguments StyleGAN-V passes (frechet_video_distance.py:L23); forward must accept all three.
DETECTOR_KWARGS = {"rescale": True, "resize": True, "return_features": True}


class I3D(nn.Module):
    """StyleGAN-V's I3D TorchScript behind the detector contract: ``uint8 [B, F, 3, H, W]`` → ``[B, 400]``."""

    name = "i3d"
    min_frames = 9
    batch_size = 8
    dim = 400

    def __init__(self, net: torch.jit.ScriptModule):
        super().__init__()
        self.net = net
        self.eval()

    def train(self, mode: bool = True) -> I3D:
        return super().train(False)  # a frozen detector: BatchNorm must keep its running statistics

    @property
    def device(self) -> torch.device:
        tensor = next(itertools.chain(self.net.parameters(), self.net.buffers()), None)
        return torch.device("cpu") if tensor is None else tensor.device

    @torch.no_grad()
    def features(self, video: Tensor) -> Tensor:
        """``uint8 [B, F, 3, H, W]`` (any H, W: the archive resizes to 224² itself) → float32 ``[B, 400]``."""
        check_video(video, name=self.name, min_frames=self.min_frames)
        B = video.shape[0]
        x = rearrange(video, "b f c h w -> b c f h w").contiguous()  # [B, 3, F, H, W] uint8
        out = self.net(x.to(self.device), **DETECTOR_KWARGS)
        if not isinstance(out, Tensor) or tuple(out.shape) != (B, self.dim):
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"{self.name}: the TorchScript returned {shape} for a [{B}, 3, {video.shape[1]}, "
                f"{video.shape[3]}, {video.shape[4]}] clip, expected [{B}, {self.dim}] (is it {FILE_NAME}? "
                f"a [B, 400, h, w] output means the frames were not resized to 224²)"
            )
        return check_finite(out.float().cpu(), name=self.name)

    forward = features


def load(path: str | os.PathLike | None, *, device: str | torch.device = "cpu") -> I3D:
    """Load ``i3d_torchscript.pt`` (a local file) as an ``I3D`` detector on ``device``.

    Raises ``ValueError`` if the path is missing, if the file is not a TorchScript archive, or if its
    ``forward`` lacks the ``rescale`` / ``resize`` / ``return_features`` arguments StyleGAN-V passes.
    """
    p = require_weights(path, flag="--i3d", file_name=FILE_NAME, published=PUBLISHED)
    try:
        net = torch.jit.load(str(p), map_location="cpu")
    except Exception as e:  # RuntimeError from the zip reader, IsADirectoryError, ...
        raise ValueError(f"--i3d {p}: not a TorchScript archive ({FILE_NAME} expected): {e}") from e
    forward = getattr(net, "forward", None)
    schema = getattr(forward, "schema", None)
    arguments = {a.name for a in schema.arguments} if schema is not None else set()
    missing = [k for k in DETECTOR_KWARGS if k not in arguments]
    if missing:
        declared = schema if schema is not None else "no scripted forward"
        raise ValueError(
            f"--i3d {p}: forward lacks the argument(s) {missing} that StyleGAN-V passes; "
            f"expected StyleGAN-V's {FILE_NAME}, found `{declared}`"
        )
    return I3D(net.eval()).to(device)
