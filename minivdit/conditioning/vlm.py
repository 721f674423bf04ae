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

``VLMPrompt`` runs steps 1-2 (``VLMEncoder.encode(captions, frames)`` = prompt, then features). Deviations:
the first frame is the training clip's frame 0 (already resized and cropped to the training size, in
[-1, 1]), not the source video's frame; and it goes to the image processor directly, not through a JPEG file
written and read back (quality 75: the released code's ``<video>_1f.jpg``). Neither matters to the released
``use_vision=False``, where only the number of image tokens (135) reaches the model.

Folders (never downloaded, never ``trust_remote_code``): ``path`` is a Qwen2.5-VL folder
(``Qwen2_5_VLForConditionalGeneration`` weights and config). Loading is strict: a weight the model needs and
the folder lacks is a ``ValueError`` naming it (the text model ignores the folder's vision tower and LM head,
as the released code does).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
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
    tokenizer: str | None = None
    """The folder of the Qwen2 tokenizer (``tokenizer.json`` + ``tokenizer_config.json``); None: ``path``
    (a Qwen2.5-VL hub folder holds both)."""
    caption_tokens: int = 512
    """A caption is truncated to this many tokens and decoded back before the template (released: 512);
    0: not truncated."""
    frame_size: tuple[int, int] = (240, 416)
    """(H, W) the first frame is resized to (bicubic, antialiased) before the image processor (released:
    240 × 416 → smart_resize 252 × 420 → 135 ``<|image_pad|>`` tokens)."""
    system_prompt: str = "You are a helpful assistant."
    """The chat template's default system prompt (Qwen2.5-VL's template adds it when no system turn is
    given, as in the released prompts)."""

    def __post_init__(self):
        check_types(self)
        if self.dtype not in DTYPES:
            raise ValueError(f"VLMConfig.dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.max_length < 1 or self.caption_tokens < 0:
            raise ValueError(
                f"VLMConfig.max_length must be >= 1 and caption_tokens >= 0, got {self.max_length} and "
                f"{self.caption_tokens}"
            )
        if len(self.frame_size) != 2 or min(self.frame_size) < 1:
            raise ValueError(f"VLMConfig.frame_size must be (H, W) >= 1, got {self.frame_size}")


TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "special_tokens_map.json",
)
"""Files of a Qwen2 tokenizer folder that decide its ids (hashed into the identity)."""


def vlm_identity(cfg: VLMConfig) -> dict:
    """What made (or would make) cached VLM features, without loading the model: the folder's config,
    weight headers and tokenizer hashed, and every setting that changes the features (the prompt's template
    and frame size, the layer, the positions kept). ``tools/cache_text.py --vlm.path`` stamps shards with it;
    a run compares it with its own (``minivdit.data.shards.text_cache_mismatch``)."""
    from minivdit.identity import config_sha256, sha, weight_files, weights_sha256

    if cfg.path is None:
        raise ValueError("VLM identity: no --vlm.path")
    folder, tokenizer = Path(cfg.path), Path(cfg.tokenizer or cfg.path)
    if not (folder / "config.json").is_file():
        raise ValueError(f"--vlm.path {folder}: no config.json (expected a Qwen2.5-VL folder)")
    weights = weight_files(folder)
    if not weights:
        raise ValueError(f"--vlm.path {folder}: no weight files (*.safetensors / *.bin) in it")
    config = json.loads((folder / "config.json").read_text())
    tok_files = [tokenizer / n for n in TOKENIZER_FILES if (tokenizer / n).is_file()]
    return {
        "class": "VLMEncoder",
        "model_type": config.get("model_type"),
        "name": folder.name,
        "d_model": (config.get("text_config") or config).get("hidden_size"),
        "config_sha256": config_sha256(config),
        "weights_sha256": weights_sha256(weights),
        "tokenizer_sha256": sha([b for p in tok_files for b in (p.name.encode(), p.read_bytes())]),
        "max_length": cfg.max_length,
        "use_mask": cfg.keep == "valid",
        "dtype": cfg.dtype,
        "use_vision": cfg.use_vision,
        "layer": cfg.layer,
        "caption_tokens": cfg.caption_tokens,
        "frame_size": list(cfg.frame_size),
        "system_prompt": cfg.system_prompt,
    }


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


# ---------------------------------------------------------------------------------------------- prompts


def first_frames(frames: Tensor, size: tuple[int, int]) -> list[Image.Image]:
    """``[B, 3, H, W]`` in ``[-1, 1]`` → B PIL images of ``size`` (H, W): the released dataset's step 2 on
    0-255 floats (torchvision ``resize(BICUBIC)``, antialiased on tensors = ``interpolate(antialias=True)``;
    its center crop to the same size is the identity), clamped, rounded to uint8."""
    if frames.ndim != 4 or frames.shape[1] != 3 or not frames.is_floating_point():
        raise ValueError(f"first frames must be float [B, 3, H, W] in [-1, 1], got {tuple(frames.shape)}")
    x = (frames.detach().float().cpu() + 1) * 127.5  # [B, 3, H, W] in 0-255
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bicubic", align_corners=False, antialias=True)
    x = rearrange(x.clamp(0, 255).round().to(torch.uint8), "b c h w -> b h w c").numpy()
    return [Image.fromarray(frame) for frame in x]


def inference_image(path: str | Path, size: tuple[int, int]) -> Image.Image:
    """The image file as the released pipeline gives it to the VLM: RGB, resized to ``size`` (H, W) with
    PIL's Lanczos (``uniworld_osp2_pipeline.py`` ``resize_and_save_image``; its JPEG round trip skipped)."""
    with Image.open(path) as im:
        return _rgb(im).resize((size[1], size[0]), Image.Resampling.LANCZOS)


class VLMPrompt:
    """Captions (and first frames) → the processor's tensors, as the released dataset builds them (module
    docstring steps 1-2): ``__call__(captions, frames) -> {input_ids, attention_mask [B, max_length],
    pixel_values [Σ patches, 1176], image_grid_thw [B, 3]}`` (the last two only with frames).

    The Qwen2.5-VL chat template is written out (``template``) rather than rendered by
    ``Qwen2_5_VLProcessor``, whose construction needs torchvision (its video processor); the image
    placeholder is expanded to ``t·h·w / merge²`` tokens as the processor does. ``tests/test_vlm.py`` checks
    the ids, mask and pixels against the processor's own ``apply_chat_template`` and ``__call__``."""

    IMAGE_TOKEN = "<|image_pad|>"

    def __init__(self, cfg: VLMConfig):
        folder = Path(cfg.tokenizer or cfg.path or "")
        if not (folder / "tokenizer_config.json").is_file():
            raise ValueError(
                f"--vlm.tokenizer {folder}: no tokenizer_config.json (expected a Qwen2.5-VL folder, or give "
                "--vlm.tokenizer the folder of its tokenizer)"
            )
        from transformers import AutoTokenizer

        self.cfg = cfg
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        if self.tokenizer.convert_tokens_to_ids(self.IMAGE_TOKEN) in (None, self.tokenizer.unk_token_id):
            raise ValueError(f"--vlm.tokenizer {folder}: the tokenizer has no {self.IMAGE_TOKEN} token")

    def caption(self, text: str) -> str:
        """Truncated to ``caption_tokens`` and decoded back, special tokens dropped (released step 1)."""
        if not self.cfg.caption_tokens:
            return text
        ids = self.tokenizer(text, truncation=True, max_length=self.cfg.caption_tokens)["input_ids"]
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def template(self, caption: str, image: bool) -> str:
        """Qwen2.5-VL's chat template for one user turn ``[image?, caption]`` with the generation prompt."""
        vision = "<|vision_start|><|image_pad|><|vision_end|>" if image else ""
        return (
            f"<|im_start|>system\n{self.cfg.system_prompt}<|im_end|>\n"
            f"<|im_start|>user\n{vision}{caption}<|im_end|>\n<|im_start|>assistant\n"
        )

    def __call__(
        self,
        captions: Sequence[str],
        frames: Tensor | Sequence[Image.Image] | None = None,
        *,
        truncate: bool = True,
    ) -> dict[str, Tensor]:
        """``frames``: training frames ``[B, 3, H, W]`` in [-1, 1] (resized by ``first_frames``) or PIL images
        taken as they are (``inference_image``). ``truncate=False``: captions whole (the released pipeline
        does not truncate at inference)."""
        captions = list(captions)
        image = frames is not None
        texts = [self.template(self.caption(c) if truncate else c, image=image) for c in captions]
        out = {}
        if frames is not None:
            if len(frames) != len(captions):
                raise ValueError(f"{len(captions)} captions but {len(frames)} first frames")
            images = first_frames(frames, self.cfg.frame_size) if isinstance(frames, Tensor) else frames
            out["pixel_values"], grid = qwen_image_inputs(images)
            out["image_grid_thw"] = grid
            pads = (grid.prod(-1) // 4).tolist()  # merged 2 × 2 patches per image
            texts = [t.replace(self.IMAGE_TOKEN, self.IMAGE_TOKEN * n) for t, n in zip(texts, pads)]
        tokens = self.tokenizer(texts, padding="max_length", max_length=self.cfg.max_length)
        if (longest := max(len(ids) for ids in tokens["input_ids"])) > self.cfg.max_length:
            raise ValueError(
                f"a prompt has {longest} tokens, over VLMConfig.max_length={self.cfg.max_length} (the "
                "released code does not truncate it: raise --vlm.max-length or lower --vlm.caption-tokens)"
            )
        out["input_ids"] = torch.tensor(tokens["input_ids"])  # [B, max_length]
        out["attention_mask"] = torch.tensor(tokens["attention_mask"])
        return out


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
        self.prompt: VLMPrompt | None = None

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

    def encode(
        self, captions: Sequence[str], frames=None, *, truncate: bool = True
    ) -> tuple[Tensor, Tensor | None]:
        """Captions and their first frames (``[B, 3, H, W]`` in ``[-1, 1]``, PIL images, or None: text
        only) → the features of ``features`` (the released prompt, ``VLMPrompt``). A dropped caption is
        ""."""
        if self.prompt is None:
            self.prompt = VLMPrompt(self.cfg)  # the tokenizer, on first use: features() needs none
        return self.features(**self.prompt(captions, frames, truncate=truncate))


# ---------------------------------------------------------------------------------------------- tiny


QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
"""Qwen2.5-VL's special tokens that the prompt uses (a tiny tokenizer gives them the first ids)."""


def tiny_corpus() -> list[str]:
    """What a tiny Qwen tokenizer is trained on: the chat template's words and every synthetic caption
    (``minivdit.data.synthetic.caption``), so that each word of them is one token."""
    from minivdit.data.synthetic import CLASS_NAMES, caption

    n = len(CLASS_NAMES)
    return ["You are a helpful assistant.", "system user assistant"] + [
        caption(a, m) for a in range(n) for m in range(n)
    ]


def make_tiny_qwen_vl(
    path: str | Path, *, seed: int = 0, hidden: int = 16, corpus: Sequence[str] | None = None
) -> Path:
    """Write a tiny random Qwen2.5-VL in the hub folder layout to ``path``: a Qwen2 tokenizer (byte-level
    BPE, the real model type, trained on ``corpus`` (``tiny_corpus()``) with ``QWEN_SPECIAL_TOKENS`` first)
    and a 2-layer ``Qwen2_5_VLForConditionalGeneration`` of width ``hidden`` (diffusers' tiny test
    configuration, anchors-conditioning §3) with that vocabulary and those special ids;
    ``VLMConfig(path=...)`` loads it. No download; the global RNG state is left untouched. For tests and
    CPU-scale checks, which have no real weights. Returns ``path``."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.trainers import BpeTrainer

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = BpeTrainer(
        vocab_size=512,
        special_tokens=list(QWEN_SPECIAL_TOKENS),
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus if corpus is not None else tiny_corpus()), trainer)
    tok.save(str(path / "tokenizer.json"))
    config = {"tokenizer_class": "Qwen2Tokenizer", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
    (path / "tokenizer_config.json").write_text(json.dumps(config | {"model_max_length": 32768}))
    ids = {t: tok.token_to_id(t) for t in QWEN_SPECIAL_TOKENS}
    heads = 2
    head_dim = hidden // heads
    if hidden % heads or head_dim % 8:
        raise ValueError(f"make_tiny_qwen_vl: hidden must be a multiple of 16, got {hidden}")
    rope = [head_dim // 8, head_dim // 8, head_dim // 4]  # sum = head_dim / 2 (M-RoPE's constraint)
    special = dict(bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"])
    text = dict(
        hidden_size=hidden,
        intermediate_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        rope_theta=1e6,
        vocab_size=tok.get_vocab_size(),
        rope_scaling={"mrope_section": rope, "rope_type": "default", "type": "default"},
        **special,
    )
    vision = dict(depth=2, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=hidden)
    cfg = transformers.Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        **special,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformers.Qwen2_5_VLForConditionalGeneration(cfg).save_pretrained(path)
    return path


__all__ = [
    "make_tiny_qwen_vl",
    "tiny_corpus",
    "vlm_identity",
    "VLMConfig",
    "VLMEncoder",
    "VLMPrompt",
    "first_frames",
    "inference_image",
    "qwen_image_inputs",
    "smart_resize",
]
