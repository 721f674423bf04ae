"""Frozen CLIP image tokens for Wan2.1 image-to-video (anchors-conditioning §1.8), from local folders.

``CLIPImageEncoder(cfg).encode(images) -> tokens [B, 257, 1280]`` (ViT-H/14 at 224 px) reproduces the
diffusers ``WanImageToVideoPipeline.encode_image`` (``diffusers/pipelines/wan/pipeline_wan_i2v.py``
l.241-251):

1. the pipeline folder's ``image_processor`` (a ``CLIPImageProcessor`` config): convert to RGB (transparency
   composited onto white), resize the shortest edge to ``size.shortest_edge`` (224) with PIL bicubic, centre
   crop ``crop_size`` (224 x 224), rescale by ``rescale_factor`` (1/255, in float64 then cast to float32) and
   normalise with the OpenAI CLIP mean and std (float32);
2. ``CLIPVisionModel(pixel_values, output_hidden_states=True).hidden_states[-2]``: the output of the
   penultimate transformer block, without ``post_layernorm`` (Wan's ``use_31_block=True``: the original runs
   ``transformer[:-1]``, ``Wan2.1/wan/modules/clip.py`` l.279-300);
3. the tokens in the encoder's dtype (the pipeline casts them to the transformer's dtype later, l.705).

The preprocessing is written out here (``preprocess``) instead of calling a transformers processor class: in
transformers 5 ``CLIPImageProcessor`` is the torchvision backend (it falls back to ``CLIPImageProcessorPil``
when torchvision is missing, as in minivdit's environment), and minivdit never imports torchvision. The code
follows the PIL backend step for step (``transformers/image_processing_backends.py``
``PilBackend._preprocess``; the ``CLIPImageProcessor`` of transformers 4, which the diffusers Wan I2V
pipeline used when it was released), so its pixels and tokens equal ``CLIPImageProcessorPil`` +
``encode_image`` bit for bit (``tests/test_wan_encoders.py``).

Inputs: PIL images (any mode and size, as the pipeline takes them), or a float tensor ``[B, 3, H, W]`` in
``[-1, 1]`` (a video's first frame, ``video[:, 0]``, DESIGN.md §2).

Deviations (each a choice, not an accident):

- A float tensor is first quantised to uint8 exactly as ``minivdit.media.to_uint8`` writes frames
  (``clip((x + 1)·127.5, 0, 255).round()``), then preprocessed as an image: the tokens of a training frame are
  the pipeline's tokens of that frame saved as a PNG. The pipeline itself only takes images.
- Wan's original code preprocesses differently from diffusers: it squashes the ``[-1, 1]`` frame to 224 x 224
  with ``F.interpolate(mode="bicubic", align_corners=False)`` (no antialias, no aspect-preserving resize, no
  crop) and then normalises (``Wan2.1/wan/modules/clip.py`` l.527-542). For a 480 x 832 frame the two see
  different pixels (diffusers drops the sides). This module follows diffusers, as issue 19 asks; Wan's own
  inference squashes (its training code is not public).
- With torchvision installed, transformers 5's ``CLIPImageProcessor`` resizes uint8 tensors with torchvision's
  antialiased bicubic kernel instead of PIL's; its pixels can then differ slightly from these (not measured
  here: torchvision is not installed).

Folders (never downloaded, never ``trust_remote_code``): ``path`` is a Wan I2V diffusers folder holding
``image_encoder/`` (``CLIPVisionModel``: config.json + weights) and ``image_processor/``
(``preprocessor_config.json``); ``image_encoder`` and ``image_processor`` name the two folders separately
(they override ``path``).

Identity. ``image_encoder_identity(cfg)`` describes the encoder without loading it, with the hashes of
``minivdit.identity`` (config.json, weight headers and sampled blocks) plus the sha256 of the processor's
``preprocessor_config.json``, the hidden layer and the dtype: what a cache of CLIP tokens is stamped with.
"""

from __future__ import annotations

import json
import logging
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

from minivdit.config import check_types
from minivdit.identity import config_sha256, weight_files, weights_sha256

log = logging.getLogger("minivdit")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
HIDDEN_LAYER = -2
"""``hidden_states[-2]``: the penultimate block's output (``pipeline_wan_i2v.py`` l.251; Wan's
``use_31_block`` of the 32-block ViT-H)."""
MODEL_TYPES = ("clip_vision_model", "clip")
"""``config.json`` ``model_type`` of a folder ``CLIPVisionModel`` loads: a vision tower (Wan's
``image_encoder/``) or a full CLIP model (e.g. ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``; its text tower is
ignored)."""
PROCESSOR_FILE = "preprocessor_config.json"


@dataclass(frozen=True, kw_only=True)
class ImageEncoderConfig:
    """A frozen CLIP vision encoder and its image processor from local folders
    (``minivdit/conditioning/clip_image.py``)."""

    path: str | None = None
    """A Wan I2V diffusers folder holding ``image_encoder/`` and ``image_processor/`` (e.g.
    Wan2.1-I2V-14B-480P-Diffusers). None: no image encoder."""
    image_encoder: str | None = None
    """The ``CLIPVisionModel`` folder (config.json + weights), when not ``<path>/image_encoder``."""
    image_processor: str | None = None
    """The folder holding ``preprocessor_config.json``, when not ``<path>/image_processor``."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weights and output dtype. float32 as the diffusers Wan I2V example loads it; Wan's original runs the
    ViT-H in fp16 under autocast on GPU (``Wan2.1/wan/configs/wan_i2v_14B.py``, ``clip_dtype``)."""

    def __post_init__(self):
        check_types(self)
        for name in ("path", "image_encoder", "image_processor"):
            if getattr(self, name) == "":
                raise ValueError(f"ImageEncoderConfig.{name}: empty path (use None)")
        if self.dtype not in DTYPES:
            raise ValueError(f"ImageEncoderConfig.dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")

    @property
    def enabled(self) -> bool:
        """Whether any folder is set."""
        return bool(self.path or self.image_encoder or self.image_processor)


# ---------------------------------------------------------------------------------------------- folders


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"image encoder: cannot read {path} ({e})") from e


def resolve_folders(cfg: ImageEncoderConfig) -> tuple[Path, Path]:
    """``(image_encoder folder, image_processor folder)`` of ``cfg``; ValueError naming the folder when one
    is missing, lacks its config file, or does not hold a CLIP vision model."""
    if not cfg.enabled:
        raise ValueError("image encoder: no folder given (set path, or image_encoder and image_processor)")
    root = Path(cfg.path) if cfg.path else None
    if root is not None and not root.is_dir():
        raise ValueError(f"image encoder: {root}: no such folder (expected a Wan I2V diffusers folder)")
    if root is None and not (cfg.image_encoder and cfg.image_processor):
        raise ValueError(
            "image encoder: without path give both image_encoder and image_processor, got "
            f"image_encoder={cfg.image_encoder!r}, image_processor={cfg.image_processor!r}"
        )
    encoder = Path(cfg.image_encoder) if cfg.image_encoder else root / "image_encoder"
    processor = Path(cfg.image_processor) if cfg.image_processor else root / "image_processor"
    if not encoder.is_dir():
        raise ValueError(
            f"image encoder: {encoder}: no such folder (expected a CLIPVisionModel folder: config.json + "
            f"weights, as <Wan I2V folder>/image_encoder)"
        )
    if not (encoder / "config.json").is_file():
        raise ValueError(
            f"image encoder: {encoder}: no config.json in it (expected a CLIPVisionModel folder)"
        )
    model_type = _read_json(encoder / "config.json").get("model_type")
    if model_type not in MODEL_TYPES:
        raise ValueError(
            f"image encoder: {encoder} holds model_type {model_type!r}, not a CLIP vision model (expected "
            f"one of {list(MODEL_TYPES)})"
        )
    if not (processor / PROCESSOR_FILE).is_file():
        raise ValueError(
            f"image encoder: {processor}: no {PROCESSOR_FILE} (expected <Wan I2V folder>/image_processor, a "
            f"CLIPImageProcessor folder)"
        )
    return encoder, processor


def image_encoder_identity(cfg: ImageEncoderConfig) -> dict:
    """What made (or would make) cached CLIP tokens, without loading the encoder (module docstring)."""
    encoder, processor = resolve_folders(cfg)
    weights = weight_files(encoder)
    if not weights:
        raise ValueError(f"image encoder: {encoder}: no weight files (*.safetensors / *.bin) in it")
    return {
        "class": "CLIPImageEncoder",
        "name": Path(cfg.path).name if cfg.path else encoder.name,
        "config_sha256": config_sha256(_read_json(encoder / "config.json")),
        "weights_sha256": weights_sha256(weights),
        "processor_sha256": config_sha256(_read_json(processor / PROCESSOR_FILE)),
        "hidden_layer": HIDDEN_LAYER,
        "dtype": cfg.dtype,
    }


# ---------------------------------------------------------------------------------------------- processor


@dataclass(frozen=True)
class Preprocess:
    """The steps of a ``preprocessor_config.json`` that ``CLIPImageEncoder.preprocess`` applies (the
    ``CLIPImageProcessor`` defaults where a key is absent)."""

    size: tuple[int, int] | int | None
    """Resize target: ``shortest_edge`` (int, aspect kept) or ``(height, width)``; None: no resize."""
    resample: int
    """PIL resampling filter (3 = bicubic)."""
    crop: tuple[int, int] | None
    """Centre crop ``(height, width)``; None: no crop."""
    rescale: float | None
    """Multiplier of the uint8 values (1/255); None: no rescale."""
    mean: tuple[float, ...] | None
    """Per-channel mean and std of the normalisation; None: no normalisation."""
    std: tuple[float, ...] | None

    @staticmethod
    def from_json(path: Path) -> Preprocess:
        """Read ``path`` (``preprocessor_config.json``); ValueError naming the file and key for a setting
        this module does not reproduce."""
        c = _read_json(path)
        if c.get("do_pad") or c.get("do_reduce_labels"):
            raise ValueError(
                f"{path}: do_pad / do_reduce_labels are not supported (a CLIP processor has neither)"
            )
        if not c.get("do_convert_rgb", True):
            raise ValueError(f"{path}: do_convert_rgb=false is not supported (the encoder takes RGB)")
        size = None
        if c.get("do_resize", True):
            s = c.get("size", {"shortest_edge": 224})
            if isinstance(s, dict) and set(s) == {"shortest_edge"}:
                size = int(s["shortest_edge"])
            elif isinstance(s, dict) and set(s) == {"height", "width"}:
                size = (int(s["height"]), int(s["width"]))
            else:
                raise ValueError(
                    f"{path}: size={s!r} is not supported (expected shortest_edge, or height+width)"
                )
        crop = None
        if c.get("do_center_crop", True):
            s = c.get("crop_size", {"height": 224, "width": 224})
            s = {"height": s, "width": s} if isinstance(s, int) else s
            crop = (int(s["height"]), int(s["width"]))
        mean = std = None
        if c.get("do_normalize", True):
            mean = tuple(float(v) for v in c.get("image_mean", (0.48145466, 0.4578275, 0.40821073)))
            std = tuple(float(v) for v in c.get("image_std", (0.26862954, 0.26130258, 0.27577711)))
            if len(mean) != 3 or len(std) != 3:
                raise ValueError(f"{path}: image_mean / image_std must have 3 values, got {mean}, {std}")
        rescale = float(c.get("rescale_factor", 1 / 255)) if c.get("do_rescale", True) else None
        return Preprocess(
            size=size, resample=int(c.get("resample", 3)), crop=crop, rescale=rescale, mean=mean, std=std
        )

    def resized_hw(self, height: int, width: int) -> tuple[int, int]:
        """The size after the resize: the shortest edge to ``size``, the other ``int(size·long/short)``
        (truncated, as ``transformers.image_transforms.get_resize_output_image_size``)."""
        if self.size is None:
            return height, width
        if isinstance(self.size, tuple):
            return self.size
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.size, int(self.size * long / short)
        return (new_long, new_short) if width <= height else (new_short, new_long)


def _rgb(image: Image.Image) -> Image.Image:
    """RGB, transparency composited onto white (``transformers.image_transforms.convert_to_rgb``)."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def frames_to_images(frames: Tensor) -> list[Image.Image]:
    """``[B, 3, H, W]`` float in ``[-1, 1]`` -> B RGB PIL images, quantised as ``minivdit.media.to_uint8``
    (``clip((x + 1)·127.5, 0, 255).round()`` in float32)."""
    if frames.ndim != 4 or frames.shape[1] != 3 or not frames.is_floating_point():
        raise ValueError(
            f"image encoder: frames must be a float [B, 3, H, W] tensor in [-1, 1], got {frames.dtype} "
            f"{tuple(frames.shape)}"
        )
    pixels = ((frames.detach().to("cpu", torch.float32) + 1.0) * 127.5).clamp(0.0, 255.0).round()
    pixels = rearrange(pixels.to(torch.uint8), "b c h w -> b h w c").numpy()
    return [Image.fromarray(p) for p in pixels]  # [h, w, 3] uint8: mode RGB


# ---------------------------------------------------------------------------------------------- encoder


class CLIPImageEncoder(nn.Module):
    """A frozen ``CLIPVisionModel`` + its preprocessing (module docstring). Always in eval mode, no
    gradients."""

    def __init__(self, cfg: ImageEncoderConfig):
        super().__init__()
        self.cfg = cfg
        encoder_dir, processor_dir = resolve_folders(cfg)
        self._identity = image_encoder_identity(cfg)
        self.pre = Preprocess.from_json(processor_dir / PROCESSOR_FILE)
        import transformers  # costs seconds: imported only when an encoder is built

        transformers.utils.logging.disable_progress_bar()
        try:
            model, info = transformers.CLIPVisionModel.from_pretrained(
                encoder_dir, output_loading_info=True, local_files_only=True, dtype=DTYPES[cfg.dtype]
            )
        except (OSError, ValueError) as e:
            raise ValueError(f"image encoder: cannot load CLIPVisionModel from {encoder_dir}: {e}") from e
        missing = sorted(str(k) for k in info.get("missing_keys") or ())
        if missing or info.get("mismatched_keys"):
            raise ValueError(
                f"image encoder: {encoder_dir} does not hold the weights of a CLIPVisionModel: "
                f"{len(missing)} missing keys {missing[:10]}, mismatched {info.get('mismatched_keys')}"
            )
        unexpected = sorted(str(k) for k in info.get("unexpected_keys") or ())
        if unexpected:  # e.g. the text tower of a full CLIP checkpoint: not used here
            log.info(
                f"image encoder: {encoder_dir}: {len(unexpected)} unused weights ignored, "
                f"e.g. {unexpected[:3]}"
            )
        layers = model.config.num_hidden_layers
        if layers < 2:
            raise ValueError(
                f"image encoder: {encoder_dir} has {layers} layer(s); the penultimate needs >= 2"
            )
        self.model = model.eval().requires_grad_(False)
        self.eval()

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        """Width of the tokens (ViT-H/14: 1280)."""
        return int(self.model.config.hidden_size)

    @property
    def num_tokens(self) -> int:
        """Tokens per image: class token + patches (ViT-H/14 at 224 px: 1 + 16² = 257)."""
        c = self.model.config
        return 1 + (c.image_size // c.patch_size) ** 2

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def identity(self) -> dict:
        """``image_encoder_identity(cfg)`` (module docstring): stamps caches made with this encoder."""
        return dict(self._identity)

    def train(self, mode: bool = True) -> CLIPImageEncoder:
        return super().train(False)  # frozen: whatever the caller asks

    # ------------------------------------------------------------------ encoding
    def preprocess(self, images: Image.Image | Sequence[Image.Image] | Tensor) -> Tensor:
        """``pixel_values [B, 3, h, w]`` float32 (224 x 224 for CLIP), as the PIL backend of
        ``CLIPImageProcessor`` computes them (module docstring)."""
        if isinstance(images, Tensor):
            images = frames_to_images(images)
        images = [images] if isinstance(images, Image.Image) else list(images)
        if not images or not all(isinstance(im, Image.Image) for im in images):
            raise ValueError(
                f"image encoder: expected PIL images or a [B, 3, H, W] tensor, "
                f"got {[type(i) for i in images]}"
            )
        p, out = self.pre, []
        for image in images:
            image = _rgb(image)
            h, w = p.resized_hw(image.height, image.width)
            if (h, w) != (image.height, image.width):  # PIL takes (width, height)
                image = image.resize((w, h), resample=Image.Resampling(p.resample), reducing_gap=None)
            x = torch.from_numpy(np.array(image))  # [h, w, 3] uint8
            if p.crop is not None:
                ch, cw = p.crop
                if ch > h or cw > w:  # the processor would zero-pad; a shortest-edge CLIP config never does
                    raise ValueError(
                        f"image encoder: crop {p.crop} is larger than the resized image {(h, w)}"
                    )
                top, left = (h - ch) // 2, (w - cw) // 2  # image_transforms.center_crop
                x = x[top : top + ch, left : left + cw]
            x = rearrange(x, "h w c -> c h w")
            if p.rescale is not None:
                x = (
                    x.double() * p.rescale
                ).float()  # float64 product, then float32 (image_transforms.rescale)
            else:
                x = x.float()
            if p.mean is not None:  # float32 (x - mean) / std per channel (image_transforms.normalize)
                mean = torch.tensor(p.mean, dtype=torch.float32)[:, None, None]
                std = torch.tensor(p.std, dtype=torch.float32)[:, None, None]
                x = (x - mean) / std
            out.append(x)
        shapes = {tuple(x.shape) for x in out}
        if len(shapes) > 1:
            raise ValueError(f"image encoder: preprocessed images differ in shape {sorted(shapes)}")
        return torch.stack(out)

    @torch.no_grad()
    def encode(self, images: Image.Image | Sequence[Image.Image] | Tensor) -> Tensor:
        """CLIP image tokens ``[B, 257, 1280]`` (ViT-H/14) in the encoder's dtype on its device: the
        penultimate block's hidden states of the preprocessed images (module docstring)."""
        pixels = self.preprocess(images).to(self.device)  # float32; the model casts to its dtype
        hidden = self.model(pixel_values=pixels, output_hidden_states=True).hidden_states
        return hidden[HIDDEN_LAYER]  # [B, 1 + (224/14)², D]

    def forward(self, images: Image.Image | Sequence[Image.Image] | Tensor) -> Tensor:
        return self.encode(images)


def build_image_encoder(cfg: ImageEncoderConfig) -> CLIPImageEncoder | None:
    """The encoder of ``cfg``, or None when no folder is set."""
    return CLIPImageEncoder(cfg) if cfg.enabled else None


# ---------------------------------------------------------------------------------------------- tiny model


def make_tiny_clip_vision(
    path: str | Path, *, seed: int = 0, hidden_size: int = 32, num_layers: int = 3, image_size: int = 28
) -> Path:
    """Write a tiny CLIP vision tower (``CLIPVisionConfig(hidden_size=32, 4 heads, 3 layers,
    patch_size=14, image_size=28)`` -> 1 + 2² = 5 tokens) with every parameter random (layer norms included,
    so a wrong norm or layer shows) to ``<path>/image_encoder``, and a ``CLIPImageProcessor`` config
    (shortest edge and crop ``image_size``, bicubic, OpenAI mean and std) to ``<path>/image_processor``: the
    Wan I2V diffusers layout, so ``ImageEncoderConfig(path=...)`` loads it. No download; the global RNG
    state is left untouched. For tests and smoke runs, which have no real weights. Returns ``path``."""
    import transformers

    folder = Path(path)
    config = transformers.CLIPVisionConfig(
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_attention_heads=4,
        num_hidden_layers=num_layers,
        image_size=image_size,
        patch_size=14,
        projection_dim=hidden_size,
        hidden_act="gelu",  # ViT-H/14 (open-clip) uses exact GELU
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.CLIPVisionModel(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            # norms around 1 (a zero-mean weight would hide a missing norm), everything else N(0, 0.2²)
            base = 1.0 if "norm" in name and name.endswith("weight") else 0.0
            p.copy_(base + 0.2 * torch.randn(p.shape, generator=gen))
    model.save_pretrained(folder / "image_encoder")
    processor = {
        "crop_size": {"height": image_size, "width": image_size},
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_processor_type": "CLIPImageProcessor",
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "resample": 3,
        "rescale_factor": 1 / 255,
        "size": {"shortest_edge": image_size},
    }
    (folder / "image_processor").mkdir(parents=True, exist_ok=True)
    (folder / "image_processor" / PROCESSOR_FILE).write_text(json.dumps(processor, indent=2))
    return folder


__all__ = [
    "CLIPImageEncoder",
    "ImageEncoderConfig",
    "Preprocess",
    "build_image_encoder",
    "frames_to_images",
    "image_encoder_identity",
    "make_tiny_clip_vision",
    "resolve_folders",
]
