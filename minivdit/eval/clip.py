"""Frame-wise CLIP similarity (Align4Gen's "CLIP ↑", seeds/004 Eq. 18), computed as VBench's
``background_consistency``.

References (anchors-eval.md §6):

- Vchitect/VBench@45e79ec ``vbench/background_consistency.py:L23-65``: L2-normalised CLIP image embeddings of
  all frames of a video; for every frame t ≥ 2, ``sim_pre = max(0, cos(x_{t−1}, x_t))``, ``sim_fir = max(0,
  cos(x_1, x_t))``, ``(sim_pre + sim_fir) / 2``; the dataset score is ``Σ all / Σ count`` (frame pairs, not
  videos, are averaged). ``frame_similarity`` returns the per-video sum and count.
- VBench ``vbench/utils.py:L33-39`` ``clip_transform(224)`` on uint8 ``[T, C, H, W]`` tensors: torchvision
  ``Resize(224, BICUBIC, antialias=False)`` of the short side (the long side is ``int(224 · long / short)``;
  tensor semantics: float32 bicubic, clamp to [0, 255], round, back to uint8; a frame already at the size is
  untouched), ``CenterCrop(224)`` (offset ``int(round((H − 224) / 2))``, round half to even), ``/ 255``, and
  ``Normalize`` with CLIP's mean and std. Written here without torchvision.
- The model: OpenAI CLIP ViT-B/32 (VBench's choice, ``vbench/utils.py:L244-254``; Align4Gen does not name it),
  loaded from the Hugging Face folder ``openai/clip-vit-base-patch32`` as ``CLIPVisionModelWithProjection``;
  ``image_embeds`` is OpenAI's ``encode_image`` (``ln_post(x[:, 0]) @ proj``, ``openai/CLIP:clip/model.py``).
  The published folder is a full ``CLIPModel``: its text tower is ignored, every vision key must match.

Deviations and what is unverified:
- VBench loads OpenAI's JIT archive ``ViT-B-32.pt``, which runs in fp16 on CUDA; this module runs fp32. That
  the Hugging Face conversion holds the same tensors as the JIT archive was not checked (no weights here); the
  architecture mapping is tested against ``clip/model.py`` with random weights (tests/test_eval_clip.py).
- The input is resized to the model's ``config.image_size`` (224 for ViT-B/32, VBench's constant).
- VBench's ``read_frame=True`` path (PIL bicubic with antialias) is not reproduced.

Axis legend: B videos, F frames, N images ((B F) flattened), C channels, H/W pixels, D embedding width.
"""

from __future__ import annotations

import json
import os
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from minivdit.eval.detector import check_finite, check_video, require_weights

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MODEL_TYPES = ("clip", "clip_vision_model")  # a full CLIPModel folder (as published) or a vision-only one
TEXT_KEYS = ("text_model.", "text_projection.", "logit_scale")  # a CLIPModel folder's keys we do not use
FLAG = "--clip"
FILE_NAME = "openai/clip-vit-base-patch32 (a local Hugging Face folder)"
PUBLISHED = "https://huggingface.co/openai/clip-vit-base-patch32"


# ---------------------------------------------------------------------------------------------------- helpers


def resize_short_side(frames: Tensor, size: int) -> Tensor:
    """torchvision ``Resize(size, BICUBIC, antialias=False)`` on uint8 ``[N, C, H, W]`` tensors: the short
    side to ``size``, the long side to ``int(size · long / short)``; bicubic in float32, clamped to [0, 255],
    rounded (half to even) and cast back to uint8. A frame already at that size is returned untouched."""
    H, W = frames.shape[-2:]
    long = int(size * max(H, W) / min(H, W))
    h, w = (size, long) if H <= W else (long, size)
    if (h, w) == (H, W):
        return frames
    x = F.interpolate(frames.float(), size=(h, w), mode="bicubic", align_corners=False, antialias=False)
    return x.clamp(0, 255).round().to(torch.uint8)  # [N, C, h, w]


def center_crop(frames: Tensor, size: int) -> Tensor:
    """torchvision ``CenterCrop(size)``: offsets ``int(round((H − size) / 2))`` (Python's round, half to
    even), on inputs at least ``size`` on both sides."""
    H, W = frames.shape[-2:]
    top, left = int(round((H - size) / 2.0)), int(round((W - size) / 2.0))
    return frames[..., top : top + size, left : left + size]


def frame_similarity(emb: Tensor) -> tuple[Tensor, Tensor]:
    """VBench ``background_consistency`` on embeddings ``[B, F, D]`` (F ≥ 2): per video, the float64 sum over
    frames t ≥ 2 of ``(max(0, cos(x_{t−1}, x_t)) + max(0, cos(x_1, x_t))) / 2`` and the count ``F − 1``. The
    dataset score is ``Σ sum / Σ count``; a video's score is ``sum / count``."""
    if emb.ndim != 3 or emb.shape[1] < 2:
        raise ValueError(f"frame_similarity: expected embeddings [B, F >= 2, D], got {tuple(emb.shape)}")
    cur = emb[:, 1:]  # [B, F-1, D]
    # cosines in the embeddings' dtype, then float64 (VBench: ``max(0.0, cos(...).item())``, summed in Python)
    sim_pre = F.cosine_similarity(emb[:, :-1], cur, dim=-1).double().clamp_min(0)  # [B, F-1]
    sim_fir = F.cosine_similarity(emb[:, :1].expand_as(cur), cur, dim=-1).double().clamp_min(0)  # [B, F-1]
    total = ((sim_pre + sim_fir) / 2).sum(dim=1)  # [B]
    return total, torch.full_like(total, cur.shape[1], dtype=torch.long)


# ------------------------------------------------------------------------------------------------------ model


class CLIPSimilarity(nn.Module):
    """A frozen CLIP vision tower with VBench's preprocessing; ``embed`` gives L2-normalised image embeddings
    per frame, ``frame_similarity`` turns them into Eq. 18's sums."""

    name: ClassVar[str] = "clip"
    min_frames: ClassVar[int] = 2
    batch_size: ClassVar[int] = 16  # videos per call (all frames of a video go through in one batch)

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model  # transformers CLIPVisionModelWithProjection
        self.image_size = int(model.config.image_size)
        self.dim = int(model.config.projection_dim)
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(3, 1, 1), persistent=False)

    def preprocess(self, video: Tensor) -> Tensor:
        """``uint8 [B, F, 3, H, W]`` → normalised pixels ``[B·F, 3, S, S]`` (S = the model's image size)."""
        x = rearrange(video, "b f c h w -> (b f) c h w").to(self.mean.device)
        x = center_crop(resize_short_side(x, self.image_size), self.image_size)  # uint8 [N, 3, S, S]
        return (x.float() / 255.0 - self.mean) / self.std

    @torch.no_grad()
    def embed(self, video: Tensor) -> Tensor:
        """``uint8 [B, F, 3, H, W]`` → L2-normalised float32 image embeddings ``[B, F, D]`` on the CPU."""
        check_video(video, name=self.name, min_frames=self.min_frames)
        emb = self.model(pixel_values=self.preprocess(video)).image_embeds  # [B·F, D]
        emb = F.normalize(emb.float(), dim=-1, p=2)
        return check_finite(rearrange(emb, "(b f) d -> b f d", b=video.shape[0]).cpu(), name=self.name)


# ---------------------------------------------------------------------------------------------------- loading


def load(path: str | os.PathLike | None, *, device: str | torch.device = "cpu") -> CLIPSimilarity:
    """CLIP's vision tower from a local Hugging Face folder (``openai/clip-vit-base-patch32``: a full
    ``CLIPModel``, or a ``CLIPVisionModelWithProjection`` folder), in eval mode without gradients, on
    ``device``. Every vision key must be in the folder; only the text tower's keys may be left over."""
    p = require_weights(path, flag=FLAG, file_name=FILE_NAME, published=PUBLISHED)
    if not (p / "config.json").is_file():
        raise ValueError(f"{FLAG} {p}: no config.json, not a Hugging Face model folder; expected {FILE_NAME}")
    model_type = json.loads((p / "config.json").read_text()).get("model_type")
    if model_type not in MODEL_TYPES:
        raise ValueError(f"{FLAG} {p}: model_type {model_type!r} is not CLIP (expected one of {MODEL_TYPES})")

    import transformers  # seconds to import: only when CLIP is used

    verbosity = transformers.utils.logging.get_verbosity()
    transformers.utils.logging.set_verbosity_error()  # a CLIPModel folder's load report lists its text keys
    transformers.utils.logging.disable_progress_bar()
    try:
        model, info = transformers.CLIPVisionModelWithProjection.from_pretrained(
            p, output_loading_info=True, local_files_only=True, dtype=torch.float32
        )
    except OSError as e:  # no weights file, unreadable shard, ...
        raise ValueError(f"{FLAG} {p}: cannot load CLIPVisionModelWithProjection: {e}") from e
    finally:
        transformers.utils.logging.set_verbosity(verbosity)
    info["unexpected_keys"] = [k for k in info.get("unexpected_keys") or () if not k.startswith(TEXT_KEYS)]
    problems = []
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        keys = sorted(str(k) for k in info.get(key) or ())
        if keys:
            problems.append(f"{len(keys)} {key.replace('_', ' ')}: {keys[:8]}{' …' if len(keys) > 8 else ''}")
    if info.get("error_msgs"):
        problems.append(f"errors: {info['error_msgs']}")
    if problems:
        raise ValueError(f"{FLAG} {p}: not a CLIP vision tower with projection: " + "; ".join(problems))
    return CLIPSimilarity(model).to(device).eval().requires_grad_(False)
