"""A frozen Qwen2.5-VL as UniWorld-OSP2.0's condition encoder, from a local folder (seeds/003 §3.2;
``reference/anchors-conditioning.md`` §2.1 and §3).

What the released code computes (``UniWorld-OSP2.0/ultrai2v/data/datasets/flashi2v_dataset.py`` l.111-177,
``train/train_uniworld_osp2.py`` l.500, read at ``PKU-YuanGroup/UniWorld`` e64fa8e):

1. the caption, truncated to 512 Qwen tokens and decoded back, or "" when dropped (10 %);
2. the first frame resized to 240 × 416 and a chat message ``[image, caption]`` under the default system
   prompt, ``apply_chat_template(add_generation_prompt=True)``, the processor's pixels and
   ``padding="max_length", max_length=1024``;
3. ``Qwen2_5_VLTextModel(**inputs)[0]``: the **text decoder only** (no vision tower), the last hidden state
   after the final RMSNorm, all 1024 positions kept and no mask downstream. The image therefore reaches the
   VLM only as its ``<|image_pad|>`` placeholder tokens (the text model embeds their ids and ignores the
   pixels, anchors §2.1).

``VLMEncoder`` runs step 3 and its alternatives on the processor's tensors:

- ``use_vision=False`` (released): ``Qwen2_5_VLTextModel``; ``pixel_values`` are not used.
- ``use_vision=True`` (the paper's VLM(T, I), eq. 1): ``Qwen2_5_VLModel`` with ``pixel_values`` and
  ``image_grid_thw``: the image-token rows carry the vision tower's features (3-D M-RoPE positions from
  ``get_rope_index``).
- ``layer``: the hidden state read, as an index into ``hidden_states`` (``-1`` = the last hidden state,
  post-norm, released; ``-3`` = HunyuanVideo 1.5's un-normed output two layers from the end).
- ``keep="all"`` (released) returns every position and no mask; ``keep="valid"`` returns the processor's
  ``attention_mask`` as ``Cond.context_mask`` (padding not attended: ``models/attention.py``).

``qwen_image_inputs`` writes out the Qwen2-VL image processor (``Qwen2VLImageProcessorPil``: smart resize to
multiples of 28 within [min_pixels, max_pixels], PIL bicubic, rescale in float64 then float32, the OpenAI
CLIP normalisation, 14 × 14 patches merged 2 × 2 and repeated over 2 temporal frames) so that no torchvision
backend is needed; it equals the PIL processor bit for bit (``tests/test_vlm.py``).

Not in this file yet (issue 20): the tokenizer and chat-template step and the 240 × 416 first-frame resize
(1, 2), the shard cache of the features, and FSDP sharding of the frozen VLM.

Folders (never downloaded, never ``trust_remote_code``): ``path`` is a Qwen2.5-VL folder
(``Qwen2_5_VLForConditionalGeneration`` weights and config). Loading is strict: a weight the model needs and
the folder lacks is a ``ValueError`` naming it (the text model ignores the folder's vision tower and LM head,
as the released code does).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn as nn
from einops import rearrange
from PIL import Image
from torch import Tensor

from minivdit.conditioning.clip_image import _rgb
from minivdit.config import check_types

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}


@dataclass(frozen=True, kw_only=True)
class VLMConfig:
    """The frozen VLM; defaults = the released UniWorld-OSP2.0 setting."""

    path: str | None = None
    """A local Qwen2.5-VL folder (config.json + weights); None: no VLM."""
    use_vision: bool = False
    """False: the text decoder only, as released (the image contributes placeholder tokens); True: the full
    model with the image's pixels (the paper's VLM(T, I))."""
    layer: int = -1
    """Index into ``hidden_states``: -1 = the last hidden state after the final norm (released)."""
    keep: Literal["all", "valid"] = "all"
    """"all": every position, no mask (released); "valid": the attention mask as the context mask."""
    max_length: int = 1024
    """Positions per prompt (``padding="max_length"``; released: 1024)."""
    dtype: str = "bfloat16"
    """Weights' dtype (released: bf16)."""

    def __post_init__(self):
        check_types(self)
        if self.dtype not in DTYPES:
            raise ValueError(f"VLMConfig.dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.max_length < 1:
            raise ValueError(f"VLMConfig.max_length must be >= 1, got {self.max_length}")


# ---------------------------------------------------------------------------------------------- images


def smart_resize(
    height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56, max_pixels: int = 28 * 28 * 1280
) -> tuple[int, int]:
    """Qwen2-VL's target size: each side a multiple of ``factor`` (patch 14 × merge 2), the area within
    ``[min_pixels, max_pixels]``, the aspect ratio kept as closely as that allows (the processors' and
    ``qwen_vl_utils``' ``smart_resize``; 240 × 416 → 252 × 420)."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio must be below 200, got {height} x {width}")
    h, w = round(height / factor) * factor, round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


def qwen_image_inputs(
    images: Image.Image | Sequence[Image.Image],
    *,
    min_pixels: int = 56 * 56,
    max_pixels: int = 28 * 28 * 1280,
    patch: int = 14,
    merge: int = 2,
    temporal: int = 2,
) -> tuple[Tensor, Tensor]:
    """``(pixel_values [Σ h·w, 3·temporal·patch²] float32, image_grid_thw [n, 3] int64)`` of PIL images, as
    ``Qwen2VLImageProcessorPil`` computes them (module docstring). Each image gives ``(h/14)·(w/14)`` patch
    rows in merge-block order, and ``h·w/(14²·4)`` ``<|image_pad|>`` tokens in the prompt."""
    images = [images] if isinstance(images, Image.Image) else list(images)
    mean = torch.tensor(OPENAI_CLIP_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.tensor(OPENAI_CLIP_STD, dtype=torch.float32)[:, None, None]
    rows, grids = [], []
    for image in images:
        image = _rgb(image)
        h, w = smart_resize(image.height, image.width, patch * merge, min_pixels, max_pixels)
        if (h, w) != (image.height, image.width):
            image = image.resize((w, h), resample=Image.Resampling.BICUBIC, reducing_gap=None)
        x = rearrange(torch.from_numpy(np.array(image)), "h w c -> c h w")  # uint8
        x = ((x.double() * (1 / 255)).float() - mean) / std  # float64 product, then float32 (rescale)
        gh, gw = h // patch, w // patch
        x = rearrange(
            x,
            "c (bh mh ph) (bw mw pw) -> (bh bw mh mw) c ph pw",
            mh=merge,
            mw=merge,
            ph=patch,
            pw=patch,
        )  # [gh·gw, C, p, p] in merge-block order
        x = x[:, :, None].expand(-1, -1, temporal, -1, -1)  # a still image: repeated over the temporal patch
        rows.append(x.reshape(gh * gw, -1))
        grids.append([1, gh, gw])
    return torch.cat(rows), torch.tensor(grids, dtype=torch.int64)


# ---------------------------------------------------------------------------------------------- encoder


class VLMEncoder(nn.Module):
    """The frozen Qwen2.5-VL of ``cfg`` (module docstring). ``features(input_ids, attention_mask,
    pixel_values, image_grid_thw) -> (tokens [B, L, D] float32, mask [B, L] bool | None)``."""

    def __init__(self, cfg: VLMConfig):
        super().__init__()
        if cfg.path is None:
            raise ValueError("VLMEncoder needs VLMConfig.path: a local Qwen2.5-VL folder")
        folder = Path(cfg.path)
        if not (folder / "config.json").is_file():
            raise ValueError(f"--vlm.path {folder}: no config.json (expected a Qwen2.5-VL folder)")
        from transformers import Qwen2_5_VLModel, Qwen2_5_VLTextModel
        from transformers.utils import logging as hf_logging

        cls = Qwen2_5_VLModel if cfg.use_vision else Qwen2_5_VLTextModel
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the skipped vision tower / LM head are expected, not news
        try:
            model, info = cls.from_pretrained(
                folder, dtype=DTYPES[cfg.dtype], local_files_only=True, output_loading_info=True
            )
        finally:
            hf_logging.set_verbosity(verbosity)
        if info["missing_keys"]:
            raise ValueError(
                f"--vlm.path {folder}: the weights lack {sorted(info['missing_keys'])[:8]} (a Qwen2.5-VL "
                f"folder holds the {'full model' if cfg.use_vision else 'text decoder'})"
            )
        self.cfg, self.model = cfg, model.eval().requires_grad_(False)

    @property
    def dim(self) -> int:
        config = self.model.config
        return getattr(config, "text_config", config).hidden_size

    def train(self, mode: bool = True) -> VLMEncoder:
        return super().train(False)  # frozen: no dropout, ever

    @torch.no_grad()
    def features(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        pixel_values: Tensor | None = None,
        image_grid_thw: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """The hidden states ``cfg.layer`` [B, L, D] (float32) of the processor's tensors, and the mask
        (``keep="valid"``) or None. ``pixel_values`` / ``image_grid_thw``: used with ``use_vision`` only."""
        if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"input_ids and attention_mask must be [B, L] alike, got {tuple(input_ids.shape)} and "
                f"{tuple(attention_mask.shape)}"
            )
        device = next(self.model.parameters()).device
        kw = dict(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device))
        if self.cfg.use_vision:
            if pixel_values is None or image_grid_thw is None:
                raise ValueError("VLMConfig.use_vision needs pixel_values and image_grid_thw")
            kw |= dict(pixel_values=pixel_values.to(device), image_grid_thw=image_grid_thw.to(device))
        out = self.model(**kw, output_hidden_states=self.cfg.layer != -1, use_cache=False)
        hidden = out.last_hidden_state if self.cfg.layer == -1 else out.hidden_states[self.cfg.layer]
        mask = attention_mask.to(device).bool() if self.cfg.keep == "valid" else None
        return hidden.float(), mask


__all__ = ["VLMConfig", "VLMEncoder", "qwen_image_inputs", "smart_resize"]
