"""Frozen vision encoders ("teachers") for representation alignment, loaded from local Hugging Face folders.

A teacher maps a clean video ``[B, T, 3, H, W]`` in ``[-1, 1]`` to features ``[B, F', h·w, ΣD]`` on a token
grid ``(h, w)``: the DiT's, or ``TeacherConfig.token_grid`` (VideoREPA's video teachers see 160×240 pixels, a
10×15 grid, against CogVideoX's 30×45; the align head matches the grids). Every encoder resizes and normalises
the video itself, drops its non-patch tokens,
returns ``[B, F', h·w, D]``, and ``Teacher`` concatenates the encoders' **raw** tokens in a fixed order:
dinov2, dinov3, sam2, vjepa2, videomae, videomae2. Normalisation comes last, in the align head, after the
frame averaging and grid resampling (VideoREPA ``finetune/models/cogvideox_t2v_align/lora_trainer.py``
averages the raw DINOv2 tokens with ``avg_pool1d`` at l.233 and normalises at l.318-319): the head
L2-normalises each encoder's part before a fused projector (Align4Gen, seeds/004 Appendix B / Algorithm 1:
``F = [F1/‖F1‖; F2/‖F2‖]``), and every loss normalises its inputs. Cached features
(``tools/cache_latents.py``) are these raw tokens, stamped ``"features": FEATURES`` in meta.json; caches of
normalised tokens (written before) are refused.

References: REPA ``utils.load_encoders`` / ``preprocess_raw_image`` (reference/anchors-latte-repa.md §2.3),
VideoREPA ``lora_trainer.compute_loss`` (anchors-modules.md §4.2), and the transformers 5.x classes and
gotchas of anchors-modules.md §6. Download the folders with ``huggingface-cli download <id> --local-dir DIR``
(``hf download`` in recent hubs) and pass ``DIR``; nothing here touches the network.

Encoders (HF id to download → module kept; resize; patch or stride; tokens dropped; layout):

- dinov2: facebook/dinov2-base → ``Dinov2Model``, or facebook/dinov2-with-registers-base →
  ``Dinov2WithRegistersModel``; bicubic; patch 14; CLS + R; ``[CLS, R registers, patches]``.
- dinov3: facebook/dinov3-vitb16-pretrain-lvd1689m → ``DINOv3ViTModel``; bilinear; patch 16; CLS + R; same.
- sam2: facebook/sam2.1-hiera-base-plus → ``Sam2Model.vision_encoder.backbone`` (the Hiera trunk); bilinear;
  stride 4·2^stage; none; maps.
- vjepa2: facebook/vjepa2-vitl-fpc64-256 → ``VJEPA2Model`` run with ``skip_predictor=True``; bilinear; patch
  16, tubelet 2; none; tokens.
- videomae: MCG-NJU/videomae-base → ``VideoMAEForPreTraining.videomae``; bilinear; patch 16, tubelet 2; none;
  tokens.

Notes on the list:
- R = ``config.num_register_tokens`` (DINOv2 with registers: 4; DINOv3 LVD ViTs: 4 [unverified]), never
  hard-coded; the DINOv2 flavour is detected from ``model_type``. Patch sizes, tubelets and widths are read
  from the config.
- maps: Hiera stage maps are channels-last ``[N, h, w, C]``; stage 2 (stride 16) by default, 448 channels for
  base+. tokens: ``last_hidden_state [B, (t h w), D]``, frames-first input ``[B, T, 3, H, W]``.
- SAM2 also loads ``sam2_video`` (``Sam2VideoModel``), ``sam2_vision_model`` and ``sam2_hiera_det_model``
  folders; DINOv2 and VideoMAE also load their classification-head folders. Every folder is loaded with the
  full class it was saved from, with an exact key match: a sub-module class loaded from a full-model folder
  would silently re-initialise every weight in transformers.

Normalisation is hard-coded: ImageNet mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225) for all five, as
the released checkpoints' preprocessor configs use. Processor class defaults differ and are never read
(``BitImageProcessor``: OpenAI-CLIP statistics; ``VideoMAEImageProcessor``: 0.5/0.5). Pixels are resized in
``[-1, 1]`` with ``antialias=True`` (PIL-style filters, as the processors' PIL resize; bicubic output is then
clamped to ``[-1, 1]``, as PIL clamps uint8), mapped to ``[0, 1]`` and normalised. The interpolation mode
follows each processor: bicubic for DINOv2 (``BitImageProcessor``, and REPA), bilinear for the others.

Frames: image encoders run per frame (``F' = T``); video encoders with tubelet ``t`` give ``F' = T / t``, or
``(T − 1) / t`` with ``drop_first_frame`` (VideoREPA drops pixel frame 0 so that ``4k + 1`` frames make ``2k``
tubelets). Matching ``F'`` to the latent frames is the align head's job.

Notable deviations from running the transformers models as published:
- resolution: each encoder runs at ``grid × patch`` (not the processors' 224/256/1024 crops), so that its
  token grid is the DiT's, or ``token_grid`` when set (one grid for all encoders: each gets its own pixel
  size, e.g. DINOv2 at 420×630 and V-JEPA 2 at 480×720 for 30×45); DINOv2 interpolates its position table
  (bicubic, in transformers), DINOv3 and V-JEPA 2 use RoPE, VideoMAE interpolates its checkpoint's sinusoid
  table in 3-D (below). V-JEPA 2 at 480×720 (30×45 per tubelet) is far beyond its 256² training grid (16×16);
  VideoREPA's 160×240 (``token_grid=(10, 15)``) is within it in area.
- SAM2: only the Hiera trunk runs, and only up to the chosen stage (later blocks are deleted; transformers'
  last stage also mis-batches maps smaller than its window). The trunk tiles its window position embedding,
  so the stride-4 map must be a multiple of ``window_size_per_stage[0]`` (8 in the released models: inputs
  multiple of 32). When ``grid × stride`` is not, the input is rounded up to the next valid size and the stage
  map is resampled to the grid (bilinear, antialiased). FPN neck, prompt encoder and mask decoder are unused.
- V-JEPA 2: transformers' ``VJEPA2RopeAttention.get_position_ids`` splits token ids on a square
  ``crop_size / patch`` grid. Each encoder attention module gets ``_RopeGrid(h, w)`` instead, which uses the
  actual ``h × w`` grid as the original ``RoPEAttention`` does when given ``H_patches``/``W_patches``
  (identical for a square grid of side ``crop_size / patch``).
- VideoMAE: the checkpoint was trained with a 1-D sinusoid over the flattened ``(t, h, w)`` index of its
  native ``T0 × h0 × w0`` grid (``num_frames / tubelet × (image_size / patch)²``: 8 × 14 × 14 for
  videomae-base), i.e. position ``t·h0·w0 + i·w0 + j``. As VideoREPA (``aHapBean/VideoREPA``
  ``finetune/models/cogvideox_t2v_align/models/ssl/VideoMAE.py`` l.291-321, ``interpolate_pos_embed``), that
  native table is reshaped to ``[T0, h0, w0, D]``, resized bicubically in space to the grid (``align_corners=
  False``, no antialias) and linearly in time to the clip's tubelet count, so a token keeps the position code
  of the place it was trained for (loading with ``image_size = grid × patch`` instead takes the 1-D sinusoid
  over the flattened actual grid: another code for every row but the first). At the native grid and length
  the table is the checkpoint's, unchanged. A clip of fewer tubelets than ``T0`` gets the native table
  compressed in time (VideoREPA's rule; its 48-frame clips stretch 8 → 24).
- ``layer="prenorm"`` (all encoders) or ``prenorm=(names…)`` (those listed) replaces the final LayerNorm by
  ``Identity`` (VideoREPA's V-JEPA 2 "norm → Identity", ``lora_trainer.py`` l.69-74); for DINOv2/v3 this
  equals ``hidden_states[-1]``. SAM2 has no final norm; VideoMAE with ``use_mean_pooling=True`` has none on
  its tokens.
- pixels are resized with each processor's filter, antialiased; VideoREPA shrinks 480×720 → 160×240 for its
  video teachers with plain bicubic (``F.interpolate(mode='bicubic')``, no antialias, ``lora_trainer.py``
  l.190), after the ImageNet normalisation.
- weights are loaded in fp32 whatever dtype the folder stores; the caller's autocast picks the compute dtype.
- SAM2.1 on the Hub: the transformers-format folder may say ``model_type`` ``sam2`` or ``sam2_video``; both
  load with their own full class [unverified which one the released folders use]. A folder holding only the
  original ``.pt`` must be converted first (transformers' ``convert_sam2_to_hf.py``).

Axis legend: B batch, T input frames, F' output frames, N images in one call ((B T) flattened), H/W pixel
size, h/w token grid, D channels of one encoder.
"""

from __future__ import annotations

import abc
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from minivdit.config import check_types


def _hf(name: str):
    """A ``transformers`` class by name, imported on first use: importing transformers costs seconds, and
    ``minivdit.train`` imports this module (for ``TeacherConfig``) even in runs without a teacher."""
    import transformers

    transformers.utils.logging.disable_progress_bar()  # "Loading weights"/"Writing shards" bars: noise here
    return getattr(transformers, name)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ORDER = ("dinov2", "dinov3", "sam2", "vjepa2", "videomae", "videomae2")  # concatenation order of features
PrenormName = Literal["dinov2", "dinov3", "vjepa2", "videomae"]  # the encoders with a final LayerNorm
CONFIG_NAME = "config.json"
FEATURES = "raw"
"""What ``Teacher.forward`` returns, stamped into cached features' meta.json (``teacher.features``): each
encoder's unnormalised tokens. ``minivdit.data.shards.cache_mismatches`` refuses feats stamped otherwise or
not at all (those were L2-normalised per token before the head's frame averaging)."""


@dataclass(frozen=True, kw_only=True)
class TeacherConfig:
    """Which frozen encoders supervise the alignment head, each a local Hugging Face folder (None = unused).
    Features are concatenated in the order dinov2, dinov3, sam2, vjepa2, videomae, videomae2."""

    dinov2: str | None = None
    """DINOv2 folder, registers or not (facebook/dinov2-base, facebook/dinov2-with-registers-base)."""
    dinov3: str | None = None
    """DINOv3 ViT folder (facebook/dinov3-vitb16-pretrain-lvd1689m)."""
    sam2: str | None = None
    """SAM2.1 folder in transformers format (full Sam2Model, e.g. facebook/sam2.1-hiera-base-plus); only the
    Hiera image trunk is kept."""
    vjepa2: str | None = None
    """V-JEPA 2 folder (facebook/vjepa2-vitl-fpc64-256); video encoder, tubelet 2."""
    videomae: str | None = None
    """VideoMAE folder (MCG-NJU/videomae-base); video encoder, tubelet 2."""
    videomae2: str | None = None
    """A second VideoMAE folder, fused after the first: two video teachers of one architecture trained with
    different objectives (the synthetic-world teacher's V-JEPA and MAE, ``sweeps/alignment.toml``)."""
    sam2_stage: int = 2
    """0-indexed Hiera stage whose map is used: stride 4·2^stage pixels (stage 2 = stride 16)."""
    layer: Literal["last", "prenorm"] = "last"
    """ViT tokens: 'last' = last_hidden_state (after the final LayerNorm), 'prenorm' = the last block's output
    before it (VideoREPA's V-JEPA 2 setting). No effect on SAM2. Per encoder: ``prenorm``."""
    prenorm: tuple[PrenormName, ...] = ()
    """Encoders taken before their final LayerNorm whatever ``layer`` says (``--teacher.prenorm vjepa2``), so
    a fused teacher can mix: pre-norm V-JEPA 2 (VideoREPA's "norm → Identity") with post-norm DINOv2 (its
    ``x_norm_patchtokens``). A name whose folder is not set is ignored, so a recipe's teacher can be swapped
    on the command line without clearing this."""
    token_grid: tuple[int, int] | None = None
    """Teacher token grid (h, w); each encoder runs at ``token_grid × its patch`` pixels (SAM2: × its stride)
    and the align head matches it to the DiT's grid (``AlignConfig.grid_match``). None: the DiT's grid, i.e.
    every encoder at DiT grid × patch. VideoREPA runs its video teachers at 160×240 for 480×720 clips:
    ``(10, 15)`` for V-JEPA 2 / VideoMAE (patch 16) against CogVideoX's 30×45 grid."""
    drop_first_frame: bool = False
    """Video encoders only: drop pixel frame 0 first (VideoREPA), so 4k+1 frames give 2k tubelets."""
    frame_chunk: int = 64
    """Frames per encoder call (video encoders: whole clips of at most this many frames): bounds memory."""
    tiny_random: bool = False
    """When no folder is set: build tiny *random* DINOv2 + SAM2 encoders (``make_tiny_teacher``) under
    ``<run>/tiny_teachers`` and align to them. For the quickstart and smoke tests only, which have no real
    weights: random teachers teach nothing about images. Ignored when any folder is set."""

    def __post_init__(self):
        check_types(self)
        if not 0 <= self.sam2_stage <= 3:
            raise ValueError(f"sam2_stage must be in 0..3 (Hiera has 4 stages), got {self.sam2_stage}")
        if self.frame_chunk < 1:
            raise ValueError(f"frame_chunk must be >= 1, got {self.frame_chunk}")
        for name in ORDER:
            if getattr(self, name) == "":
                raise ValueError(f"{name}: empty path (use None to disable the encoder)")
        if self.token_grid is not None and min(self.token_grid) < 1:
            raise ValueError(f"token_grid must be two positive ints (h, w), got {self.token_grid}")
        if len(set(self.prenorm)) != len(self.prenorm):
            raise ValueError(f"prenorm lists an encoder twice: {self.prenorm}")

    @property
    def enabled(self) -> bool:
        """Whether any encoder path is set."""
        return any(getattr(self, name) for name in ORDER)

    def layer_of(self, name: str) -> Literal["last", "prenorm"]:
        """The layer encoder ``name`` is read at: 'prenorm' when ``layer`` says so or ``prenorm`` lists it."""
        return "prenorm" if self.layer == "prenorm" or name in self.prenorm else "last"


def teacher_identity(cfg: TeacherConfig) -> dict[str, dict]:
    """``{encoder: minivdit.identity.folder_identity(folder)}`` for each encoder folder ``cfg`` sets: which
    weights made cached features, without loading them (the folder names do not say: two fine-tunes may both
    be ``dinov2-base``). ``tools/cache_latents.py`` stamps it into meta.json,
    ``minivdit.data.shards.cache_mismatches`` compares it."""
    from minivdit.identity import folder_identity

    return {k: folder_identity(getattr(cfg, k), f"--teacher.{k}") for k in ORDER if getattr(cfg, k)}


# ---------------------------------------------------------------------------------------------------- helpers


def _check_video(video: Tensor, name: str = "video") -> None:
    if video.ndim != 5 or video.shape[2] != 3:
        raise ValueError(f"{name} must be [B, T, 3, H, W], got shape {tuple(video.shape)}")
    if not video.is_floating_point():
        raise ValueError(f"{name} must be a float tensor (pixels in [-1, 1]), got dtype {video.dtype}")


def _check_grid(grid: Sequence[int]) -> tuple[int, int]:
    grid = tuple(int(g) for g in grid)
    if len(grid) != 2 or min(grid) < 1:
        raise ValueError(f"grid must be two positive ints (h, w), got {grid}")
    return grid


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _read_config(path: str | Path, name: str) -> tuple[Path, dict]:
    """The folder and its config.json dict; ValueError naming the path when either is missing."""
    folder = Path(path)
    if not (folder / CONFIG_NAME).is_file():
        what = "no such folder" if not folder.is_dir() else f"no {CONFIG_NAME} in it"
        raise ValueError(f"{name}: {folder}: {what} (expected a local Hugging Face model folder)")
    return folder, json.loads((folder / CONFIG_NAME).read_text())


# (model_type, architecture or None for any) -> (class to load, dotted path of the module to keep)
Archs = dict[tuple[str, str | None], tuple[str, str]]  # class names: resolved by _hf at load time


def _load(folder: Path, raw: dict, archs: Archs, name: str, **overrides) -> nn.Module:
    """Load the full model class the folder was saved from (chosen by ``model_type`` and ``architectures``),
    with an exact key match, and return the sub-module that is used. Never loads a sub-module class from a
    full-model folder: transformers would silently re-initialise every weight."""
    model_type = raw.get("model_type")
    architecture = (raw.get("architectures") or [None])[0]
    entry = archs.get((model_type, architecture)) or archs.get((model_type, None))
    if entry is None:
        expected = sorted({t for t, _ in archs})
        raise ValueError(
            f"{name}: {folder} holds model_type {model_type!r} (architectures {raw.get('architectures')}), "
            f"expected model_type in {expected}"
        )
    cls_name, keep = entry
    cls = _hf(cls_name)
    try:
        model, info = cls.from_pretrained(
            folder, output_loading_info=True, local_files_only=True, dtype=torch.float32, **overrides
        )
    except OSError as e:  # no weights file, unreadable shard, ...
        raise ValueError(f"{name}: cannot load {cls.__name__} from {folder}: {e}") from e
    problems = []
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        keys = sorted(str(k) for k in info.get(key) or ())
        if keys:
            problems.append(
                f"{len(keys)} {key.replace('_', ' ')}: {keys[:10]}{' …' if len(keys) > 10 else ''}"
            )
    if info.get("error_msgs"):
        problems.append(f"errors: {info['error_msgs']}")
    if problems:
        raise ValueError(f"{name}: {folder} does not match {cls.__name__} exactly: " + "; ".join(problems))
    return model.get_submodule(keep)


# --------------------------------------------------------------------------------------------------- encoders


class FrozenEncoder(nn.Module, abc.ABC):
    """One frozen encoder: video ``[B, T, 3, H, W]`` in [-1, 1] → tokens ``[B, F', h·w, D]`` on ``grid``.
    Owns its resize, normalisation, dropped tokens and layout; always in eval mode without gradients."""

    name: ClassVar[str]
    resample: ClassVar[Literal["bicubic", "bilinear"]]
    video: ClassVar[bool] = False
    mean: ClassVar[tuple[float, float, float]] = IMAGENET_MEAN
    std: ClassVar[tuple[float, float, float]] = IMAGENET_STD

    def __init__(
        self,
        model: nn.Module,
        *,
        grid: tuple[int, int],
        dim: int,
        input_size: tuple[int, int],
        tubelet: int = 1,
        drop_first_frame: bool = False,
        frame_chunk: int = 64,
    ):
        super().__init__()
        if frame_chunk < 1:
            raise ValueError(f"frame_chunk must be >= 1, got {frame_chunk}")
        self.model = model
        self.grid = grid
        self.dim = dim
        self.input_size = input_size
        self.tubelet = tubelet
        self.drop_first_frame = drop_first_frame and self.video
        self.frame_chunk = frame_chunk
        self.register_buffer("pixel_mean", torch.tensor(self.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(self.std).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FrozenEncoder:
        """Frozen: stays in eval mode (no dropout/drop-path, no DINOv3 RoPE jitter) whatever ``mode`` is."""
        return super().train(False)

    def frames_out(self, num_frames: int) -> int:
        """Output frames F' for ``num_frames`` input frames (ValueError when the count does not fit)."""
        if num_frames < 1:
            raise ValueError(f"{self.name}: need at least one frame, got T={num_frames}")
        if not self.video:
            return num_frames
        first = int(self.drop_first_frame)
        usable, t = num_frames - first, self.tubelet
        if usable < t or usable % t:
            valid = sorted({max(1, usable // t) * t + first, (usable // t + 1) * t + first})
            dropped = " after dropping frame 0" if first else ""
            raise ValueError(
                f"{self.name}: T={num_frames} frames leave {usable}{dropped}, not a positive multiple of the "
                f"tubelet size {t}; nearest valid T: {' or '.join(map(str, valid))}"
            )
        return usable // t

    def _pixels(self, video: Tensor) -> Tensor:
        """[B, T, 3, H, W] in [-1, 1] → [B, T, 3, *input_size], resized and normalised, in fp32."""
        with torch.autocast(device_type=video.device.type, enabled=False):
            x = rearrange(video.float(), "b t c h w -> (b t) c h w")
            if tuple(x.shape[-2:]) != self.input_size:
                x = F.interpolate(
                    x, size=self.input_size, mode=self.resample, antialias=True, align_corners=False
                )
                x = x.clamp(-1, 1)  # bicubic overshoot; PIL clamps the same way on uint8
            x = ((x + 1) / 2 - self.pixel_mean) / self.pixel_std  # [N, 3, H', W']
        return rearrange(x, "(b t) c h w -> b t c h w", b=video.shape[0])

    @abc.abstractmethod
    def _encode(self, x: Tensor) -> Tensor:
        """Image encoders: [N, 3, H', W'] → [N, h·w, D]; video: [b, T, 3, H', W'] → [b, F', h·w, D]."""

    def _check_tokens(self, tokens: Tensor, expected: int) -> None:
        if tokens.shape[1] != expected:
            raise ValueError(
                f"{self.name}: got {tokens.shape[1]} tokens, expected {expected} for grid {self.grid} "
                f"(shape {tuple(tokens.shape)})"
            )

    def forward(self, video: Tensor) -> Tensor:
        """video [B, T, 3, H, W] in [-1, 1] → tokens [B, F', h·w, D] (not normalised; dtype of the run)."""
        _check_video(video)
        self.frames_out(video.shape[1])
        if self.drop_first_frame:
            video = video[:, 1:]
        with torch.no_grad():
            x = self._pixels(video).to(next(self.model.parameters()).dtype)  # [B, T, 3, H', W']
            if self.video:
                clips = max(1, self.frame_chunk // x.shape[1])
                return torch.cat([self._encode(c) for c in x.split(clips)])  # [B, F', h·w, D]
            images = rearrange(x, "b t c h w -> (b t) c h w")
            tokens = torch.cat([self._encode(c) for c in images.split(self.frame_chunk)])  # [(B T), h·w, D]
            return rearrange(tokens, "(b t) n d -> b t n d", b=x.shape[0])


class _ViTEncoder(FrozenEncoder):
    """A per-frame ViT whose ``last_hidden_state`` is ``[CLS, registers…, patches]``."""

    ARCHS: ClassVar[Archs]
    norm_attr: ClassVar[str]  # the final LayerNorm, replaced by Identity for layer="prenorm"

    def __init__(
        self,
        path: str | Path,
        *,
        grid: tuple[int, int],
        layer: Literal["last", "prenorm"] = "last",
        frame_chunk: int = 64,
    ):
        grid = _check_grid(grid)
        model = _load(*_read_config(path, self.name), self.ARCHS, self.name)
        cfg = model.config
        if layer == "prenorm":
            setattr(model, self.norm_attr, nn.Identity())
        p = (
            cfg.patch_size
        )  # read from the config: Dinov2WithRegistersConfig defaults to 16, Dinov2Config to 14
        super().__init__(
            model,
            grid=grid,
            dim=cfg.hidden_size,
            input_size=(grid[0] * p, grid[1] * p),
            frame_chunk=frame_chunk,
        )
        self.num_prefix = 1 + getattr(cfg, "num_register_tokens", 0)  # CLS + registers (none in plain DINOv2)

    def _encode(self, x: Tensor) -> Tensor:
        tokens = self.model(pixel_values=x).last_hidden_state  # [N, 1 + R + h·w, D]
        self._check_tokens(tokens, self.num_prefix + self.grid[0] * self.grid[1])
        return tokens[:, self.num_prefix :]  # [N, h·w, D]


class DINOv2Encoder(_ViTEncoder):
    """DINOv2 (Oquab et al., 2023), with or without registers (detected from ``model_type``), per frame."""

    name = "dinov2"
    resample = "bicubic"
    norm_attr = "layernorm"
    ARCHS = {
        ("dinov2", None): ("Dinov2Model", ""),
        ("dinov2", "Dinov2ForImageClassification"): ("Dinov2ForImageClassification", "dinov2"),
        ("dinov2_with_registers", None): ("Dinov2WithRegistersModel", ""),
        ("dinov2_with_registers", "Dinov2WithRegistersForImageClassification"): (
            "Dinov2WithRegistersForImageClassification",
            "dinov2_with_registers",
        ),
    }


class DINOv3Encoder(_ViTEncoder):
    """DINOv3 ViT (Siméoni et al., 2025; RoPE, registers), per frame."""

    name = "dinov3"
    resample = "bilinear"
    norm_attr = "norm"
    ARCHS = {("dinov3_vit", None): ("DINOv3ViTModel", "")}


class SAM2Encoder(FrozenEncoder):
    """The Hiera image trunk of SAM 2.1 (Ravi et al., 2024), per frame: the channels-last map of one stage."""

    name = "sam2"
    resample = "bilinear"
    ARCHS = {
        ("sam2", None): ("Sam2Model", "vision_encoder.backbone"),
        ("sam2_video", None): ("Sam2VideoModel", "vision_encoder.backbone"),
        ("sam2_vision_model", None): ("Sam2VisionModel", "backbone"),
        ("sam2_hiera_det_model", None): ("Sam2HieraDetModel", ""),
    }

    def __init__(self, path: str | Path, *, grid: tuple[int, int], stage: int = 2, frame_chunk: int = 64):
        grid = _check_grid(grid)
        trunk = _load(*_read_config(path, self.name), self.ARCHS, self.name)
        cfg = trunk.config
        num_stages = len(cfg.blocks_per_stage)
        if not 0 <= stage < num_stages:
            raise ValueError(f"sam2: stage {stage} out of range, this Hiera has {num_stages} stages")
        trunk.blocks = trunk.blocks[: sum(cfg.blocks_per_stage[: stage + 1])]  # later stages never run
        patch, query = _pair(cfg.patch_stride), _pair(cfg.query_stride)
        pools = min(stage, cfg.num_query_pool_stages)
        stride = tuple(patch[i] * query[i] ** pools for i in range(2))
        # The trunk tiles pos_embed_window over the stride-4 map: it must be a multiple of the first window.
        unit = tuple(math.lcm(stride[i], patch[i] * cfg.window_size_per_stage[0]) for i in range(2))
        size = tuple(-(-grid[i] * stride[i] // unit[i]) * unit[i] for i in range(2))
        super().__init__(
            trunk, grid=grid, dim=cfg.embed_dim_per_stage[stage], input_size=size, frame_chunk=frame_chunk
        )
        self.stage = stage

    def _encode(self, x: Tensor) -> Tensor:
        maps = self.model(pixel_values=x).intermediate_hidden_states[self.stage]  # [N, h', w', C]
        if tuple(maps.shape[1:3]) != self.grid:  # input rounded up to a valid size: resample to the grid
            maps = rearrange(maps, "n h w c -> n c h w")
            maps = F.interpolate(maps, size=self.grid, mode="bilinear", antialias=True, align_corners=False)
            maps = rearrange(maps, "n c h w -> n h w c")  # [N, h, w, C]
        return rearrange(maps, "n h w c -> n (h w) c")  # [N, h·w, C]


class _RopeGrid:
    """Stands in for ``VJEPA2RopeAttention.get_position_ids``: (frame, row, column) of each token on the
    actual ``h × w`` grid, as the original V-JEPA 2 ``RoPEAttention.separate_positions`` given
    ``H_patches``/``W_patches`` (transformers assumes a square ``crop_size / patch`` grid)."""

    def __init__(self, h: int, w: int):
        self.h, self.w = h, w

    def __call__(self, x: Tensor, masks: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        if masks is not None:
            raise ValueError("vjepa2: masked (context/target) inputs are not supported by the frozen teacher")
        ids = torch.arange(x.size(1), device=x.device)
        per_frame = self.h * self.w
        return ids // per_frame, (ids % per_frame) // self.w, ids % self.w


class VJEPA2Encoder(FrozenEncoder):
    """V-JEPA 2 (Assran et al., 2025) video encoder: tubelets of 2 frames, 3-D RoPE; predictor skipped."""

    name = "vjepa2"
    resample = "bilinear"
    video = True
    ARCHS = {("vjepa2", None): ("VJEPA2Model", "")}

    def __init__(
        self,
        path: str | Path,
        *,
        grid: tuple[int, int],
        layer: Literal["last", "prenorm"] = "last",
        drop_first_frame: bool = False,
        frame_chunk: int = 64,
    ):
        grid = _check_grid(grid)
        model = _load(*_read_config(path, self.name), self.ARCHS, self.name)
        cfg = model.config
        if layer == "prenorm":
            model.encoder.layernorm = nn.Identity()
        for module in model.encoder.modules():
            if hasattr(module, "get_position_ids"):
                module.get_position_ids = _RopeGrid(*grid)
        p = cfg.patch_size
        super().__init__(
            model,
            grid=grid,
            dim=cfg.hidden_size,
            input_size=(grid[0] * p, grid[1] * p),
            tubelet=cfg.tubelet_size,
            drop_first_frame=drop_first_frame,
            frame_chunk=frame_chunk,
        )

    def _encode(self, x: Tensor) -> Tensor:
        out = self.model(pixel_values_videos=x, skip_predictor=True).last_hidden_state  # [b, F'·h·w, D]
        n = self.grid[0] * self.grid[1]
        self._check_tokens(out, x.shape[1] // self.tubelet * n)
        return rearrange(out, "b (f n) d -> b f n d", n=n)  # [b, F', h·w, D]


def interpolate_positions(table: Tensor, native: tuple[int, int, int], size: tuple[int, int, int]) -> Tensor:
    """A position table ``[1, T0·h0·w0, D]`` over the native ``(T0, h0, w0)`` token grid (row-major) →
    ``[1, T·h·w, D]`` for ``size = (T, h, w)``: bicubic in space (``align_corners=False``, no antialias),
    then linear in time (``align_corners=False``), as VideoREPA's ``interpolate_pos_embed`` (module
    docstring). Returns ``table`` itself when ``size == native``; computed in the table's dtype."""
    (T0, h0, w0), (T, h, w) = native, size
    if table.ndim != 3 or table.shape[:2] != (1, T0 * h0 * w0):
        raise ValueError(
            f"position table of shape {tuple(table.shape)} is not [1, {T0 * h0 * w0}, D] for the native "
            f"{T0}x{h0}x{w0} grid"
        )
    if min(size) < 1:
        raise ValueError(f"target grid must be positive, got {size}")
    if (T, h, w) == (T0, h0, w0):
        return table
    x = rearrange(table, "1 (t h w) d -> t d h w", t=T0, h=h0, w=w0)
    if (h, w) != (h0, w0):
        x = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False)  # [T0, D, h, w]
    if T != T0:
        x = rearrange(x, "t d h w -> 1 (d h w) t")
        x = F.interpolate(x, size=T, mode="linear", align_corners=False)  # [1, D·h·w, T]
        x = rearrange(x, "1 (d h w) t -> t d h w", h=h, w=w)
    return rearrange(x, "t d h w -> 1 (t h w) d")  # [1, T·h·w, D]


class VideoMAEEncoder(FrozenEncoder):
    """VideoMAE (Tong et al., 2022) video encoder: tubelets of 2 frames, the checkpoint's fixed sinusoid
    positions interpolated in 3-D to the actual grid and length (module docstring)."""

    name = "videomae"
    resample = "bilinear"
    video = True
    ARCHS = {
        ("videomae", None): ("VideoMAEModel", ""),
        ("videomae", "VideoMAEForPreTraining"): ("VideoMAEForPreTraining", "videomae"),
        ("videomae", "VideoMAEForVideoClassification"): ("VideoMAEForVideoClassification", "videomae"),
    }

    def __init__(
        self,
        path: str | Path,
        *,
        grid: tuple[int, int],
        layer: Literal["last", "prenorm"] = "last",
        drop_first_frame: bool = False,
        frame_chunk: int = 64,
    ):
        grid = _check_grid(grid)
        folder, raw = _read_config(path, self.name)
        # VideoMAEConfig's defaults where config.json omits a key (transformers 5.x)
        p, tubelet = raw.get("patch_size", 16), raw.get("tubelet_size", 2)
        trained = _pair(raw.get("image_size", 224))
        native = (raw.get("num_frames", 16) // tubelet, trained[0] // p, trained[1] // p)
        size = (grid[0] * p, grid[1] * p)
        # image_size fixes the patch-embedding check (anchors-modules §6); num_frames = one tubelet only keeps
        # the 1-D table transformers builds at init small: _encode replaces it before every call
        model = _load(folder, raw, self.ARCHS, self.name, image_size=list(size), num_frames=tubelet)
        cfg = model.config
        if layer == "prenorm" and model.layernorm is not None:
            model.layernorm = nn.Identity()
        super().__init__(
            model,
            grid=grid,
            dim=cfg.hidden_size,
            input_size=size,
            tubelet=cfg.tubelet_size,
            drop_first_frame=drop_first_frame,
            frame_chunk=frame_chunk,
        )
        from transformers.models.videomae.modeling_videomae import get_sinusoid_encoding_table

        self.native = native  # (T0, h0, w0) the checkpoint was trained on
        # the checkpoint's own table (the function VideoMAE and transformers build it with), [1, T0·h0·w0, D]
        self.native_table = get_sinusoid_encoding_table(math.prod(native), cfg.hidden_size)
        self._tables: dict[tuple[int, torch.device], Tensor] = {}  # (F', device) -> [1, F'·h·w, D]

    def positions(self, frames: int, device: torch.device | str = "cpu") -> Tensor:
        """The position table ``[1, frames·h·w, D]`` for ``frames`` tubelets on ``grid`` (fp32, on
        ``device``): the native table interpolated by :func:`interpolate_positions`, cached."""
        key = (frames, torch.device(device))
        if key not in self._tables:  # a plain tensor: .to(device) on the module would not move it
            table = interpolate_positions(self.native_table, self.native, (frames, *self.grid))
            self._tables[key] = table.to(key[1])
        return self._tables[key]

    def _encode(self, x: Tensor) -> Tensor:
        n = self.grid[0] * self.grid[1]
        frames = x.shape[1] // self.tubelet
        length = frames * n
        self.model.embeddings.position_embeddings = self.positions(frames, x.device)
        out = self.model(pixel_values=x).last_hidden_state  # [b, F'·h·w, D]
        self._check_tokens(out, length)
        return rearrange(out, "b (f n) d -> b f n d", n=n)  # [b, F', h·w, D]


# ---------------------------------------------------------------------------------------------------- teacher


class Teacher(nn.Module):
    """Frozen encoders run on the same clean video: ``[B, T, 3, H, W]`` in [-1, 1] → ``[B, F', h·w, ΣD]``
    in fp32, each encoder's raw (unnormalised) tokens concatenated in the given order (``build_teacher`` uses
    dinov2, dinov3, sam2, vjepa2, videomae, videomae2); the align head normalises after averaging (module
    docstring).
    The caller wraps it in autocast."""

    def __init__(self, encoders: Sequence[FrozenEncoder]):
        super().__init__()
        if not encoders:
            raise ValueError("Teacher needs at least one encoder")
        grids = [(e.name, e.grid) for e in encoders]
        if len({g for _, g in grids}) > 1:
            raise ValueError(f"all encoders must share one token grid, got {grids}")
        names = [e.name for e in encoders]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate encoders: {names}")
        self.encoders = nn.ModuleList(encoders)
        self.requires_grad_(False)
        self.eval()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.encoders)

    @property
    def dims(self) -> tuple[int, ...]:
        """Channels of each encoder, in concatenation order."""
        return tuple(e.dim for e in self.encoders)

    @property
    def grid(self) -> tuple[int, int]:
        """Token grid (h, w): N' = h·w tokens per output frame, row-major."""
        return self.encoders[0].grid

    def frames_out(self, num_frames: int) -> int:
        """Output frames F' for T = ``num_frames``; ValueError when the encoders disagree (e.g. an image
        encoder gives T, a video encoder T/2)."""
        counts = {e.name: e.frames_out(num_frames) for e in self.encoders}
        if len(set(counts.values())) > 1:
            raise ValueError(f"encoders give different frame counts F' for T={num_frames}: {counts}")
        return next(iter(counts.values()))

    def train(self, mode: bool = True) -> Teacher:
        """Frozen: stays in eval mode whatever ``mode`` is."""
        return super().train(False)

    def forward(self, video: Tensor) -> Tensor:
        """video [B, T, 3, H, W] in [-1, 1] → feats [B, F', h·w, ΣD] (fp32, raw tokens of each encoder)."""
        _check_video(video)
        self.frames_out(video.shape[1])
        with torch.no_grad():
            feats = [e(video) for e in self.encoders]  # each [B, F', h·w, D_e]
            return torch.cat([f.float() for f in feats], dim=-1)  # [B, F', h·w, ΣD]


def _named(encoder: FrozenEncoder, name: str) -> FrozenEncoder:
    """``encoder`` under another name (its features' name in the teacher, its errors, the head's log): a
    second encoder of one class. Its folder was read under the class's name."""
    encoder.name = name
    return encoder


def build_teacher(cfg: TeacherConfig, *, grid: tuple[int, int]) -> Teacher | None:
    """The teacher of ``cfg`` on ``cfg.token_grid``, or on the DiT token grid ``grid`` = (h, w) when that is
    None; None when no encoder is set. Each encoder is read at ``cfg.layer_of(name)``."""
    if not cfg.enabled:
        return None
    common = dict(grid=cfg.token_grid or grid, frame_chunk=cfg.frame_chunk)
    video = dict(common, drop_first_frame=cfg.drop_first_frame)
    build = {
        "dinov2": lambda p: DINOv2Encoder(p, layer=cfg.layer_of("dinov2"), **common),
        "dinov3": lambda p: DINOv3Encoder(p, layer=cfg.layer_of("dinov3"), **common),
        "sam2": lambda p: SAM2Encoder(p, stage=cfg.sam2_stage, **common),
        "vjepa2": lambda p: VJEPA2Encoder(p, layer=cfg.layer_of("vjepa2"), **video),
        "videomae": lambda p: VideoMAEEncoder(p, layer=cfg.layer_of("videomae"), **video),
        "videomae2": lambda p: _named(
            VideoMAEEncoder(p, layer=cfg.layer_of("videomae2"), **video), "videomae2"
        ),
    }
    return Teacher([build[name](getattr(cfg, name)) for name in ORDER if getattr(cfg, name)])


# ---------------------------------------------------------------------------------------------- tiny models


def _tiny_sam2() -> nn.Module:
    # q-pool blocks (first of stages 1..3) are 1, 3, 5 and must not be global-attention blocks (window 0)
    hiera = _hf("Sam2HieraDetConfig")(
        hidden_size=16,
        num_attention_heads=1,
        image_size=[64, 64],
        blocks_per_stage=[1, 2, 2, 1],
        embed_dim_per_stage=[16, 32, 64, 128],
        num_attention_heads_per_stage=[1, 1, 2, 2],
        window_size_per_stage=[2, 2, 2, 2],
        global_attention_blocks=[2, 4],
        window_positional_embedding_background_size=[2, 2],
    )
    vision = _hf("Sam2VisionConfig")(
        backbone_config=hiera,
        backbone_channel_list=[128, 64, 32, 16],
        backbone_feature_sizes=[[16, 16], [8, 8], [4, 4]],
        fpn_hidden_size=32,
    )
    return _hf("Sam2Model")(
        _hf("Sam2Config")(
            vision_config=vision,
            prompt_encoder_config=dict(hidden_size=32, mask_input_channels=4),
            mask_decoder_config=dict(hidden_size=32, mlp_dim=64, iou_head_hidden_dim=32, num_hidden_layers=1),
        )
    )


_TINY_SIZE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2)  # every tiny ViT
_TINY = {
    "dinov2": lambda: _hf("Dinov2Model")(_hf("Dinov2Config")(**_TINY_SIZE, image_size=28, patch_size=14)),
    "dinov2_registers": lambda: _hf("Dinov2WithRegistersModel")(
        _hf("Dinov2WithRegistersConfig")(
            **_TINY_SIZE,
            image_size=28,
            patch_size=14,
            num_register_tokens=4,
        )
    ),
    "dinov3": lambda: _hf("DINOv3ViTModel")(
        _hf("DINOv3ViTConfig")(
            **_TINY_SIZE,
            intermediate_size=64,
            image_size=32,
            patch_size=16,
            num_register_tokens=4,
        )
    ),
    "sam2": _tiny_sam2,
    "vjepa2": lambda: _hf("VJEPA2Model")(
        _hf("VJEPA2Config")(
            **_TINY_SIZE,
            crop_size=32,
            frames_per_clip=4,
            patch_size=16,
            tubelet_size=2,
            pred_hidden_size=16,
            pred_num_attention_heads=2,
            pred_num_hidden_layers=1,
            num_pooler_layers=1,
        )
    ),
    "videomae": lambda: _hf("VideoMAEModel")(
        _hf("VideoMAEConfig")(
            **_TINY_SIZE,
            intermediate_size=64,
            image_size=32,
            num_frames=4,
            patch_size=16,
            tubelet_size=2,
        )
    ),
}
TINY_KINDS = tuple(_TINY)


def make_tiny_teacher(kind: str, path: str | Path, *, seed: int = 0) -> Path:
    """Save a tiny randomly initialised encoder of ``kind`` (one of ``TINY_KINDS``; configs of
    anchors-modules §6) to ``path`` with ``save_pretrained`` and return the folder. For tests and the
    quickstart, which have no real weights. The global RNG state is left untouched."""
    if kind not in _TINY:
        raise ValueError(f"unknown tiny teacher kind {kind!r}, expected one of {TINY_KINDS}")
    folder = Path(path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _TINY[kind]()
    model.save_pretrained(folder)
    return folder
