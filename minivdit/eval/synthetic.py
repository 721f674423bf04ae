"""The synthetic-data detector: a small video classifier of the built-in synthetic classes, so that sample
quality is measurable on a CPU with no downloaded weights.

None of the papers has it (anchors-eval.md has no counterpart); it plays I3D's role for the synthetic dataset
(``minivdit/data/synthetic.py``):

- ``syn_fvd``: the Fréchet distance between its penultimate features (``dim`` = 128) of real and generated
  clips, with the same float64 statistics as FVD (``frechet.py``);
- ``syn_acc``: the fraction of class-conditional samples it classifies as the class they were sampled for;
- ``syn_count`` (no network): the fraction of generated frames that show as many objects as their class
  (one; two for the twin discs), counted as 8-connected regions brighter than ``COUNT_THRESHOLD`` (the
  dataset's background stays below ~0.35 and every object colour's brightest channel is ≥ 0.9). The
  detector's features are deliberately robust to fragments; this count is not, so a sample that splits its
  object in two, or grows a stray blob, fails it. Real clips score 1.000 at 16² and 32² (8 classes, 800
  clips, ``tests/test_eval_synthetic.py``).

Input contract (``detector.py``): ``uint8 [B, F, 3, H, W]``, any F ≥ 2 and any size. Every synthetic clip
shows
the whole motion over the clip, whatever its length, so the detector picks ``NUM_FRAMES`` frames evenly
over the
clip (nearest index) and resizes them to ``SIZE``² (bilinear, antialiased when shrinking). Both sides of a
comparison go through the same resampling.

Network: four 3×3×3 convolutions (16 → 32 → 64 → 128 channels; stride 1, (1, 2, 2), 2, 2) with GroupNorm and
SiLU, a global mean over (t, h, w), one Linear + SiLU (the feature), dropout and the class logits. GroupNorm
keeps every clip's features independent of its batch.

``tools/train_syn_detector.py`` trains it (about 3 minutes on 2 CPU cores, deterministic from its seed) with
augmentations that make it robust to imperfect samples: Gaussian pixel noise, pixel dropout, blur by down- and
up-sampling, grayscale (so shape and motion are features too, not only the colour), and feature dropout. Its
weights, ``assets/syn_detector.safetensors``, are committed, with the training config in the file's metadata.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from minivdit import durable
from minivdit.config import check_types
from minivdit.eval.detector import check_finite, check_video

NUM_FRAMES = 8
SIZE = 32
DEFAULT_WEIGHTS = Path(__file__).parent / "assets" / "syn_detector.safetensors"
"""The committed detector (``tools/train_syn_detector.py`` with its default seed)."""


@dataclass(frozen=True, kw_only=True)
class SynDetectorConfig:
    """Widths of the synthetic-data detector (the defaults are the committed detector's)."""

    widths: tuple[int, ...] = (16, 32, 64, 128)
    """Channels of the four 3-D convolutions."""
    dim: int = 128
    """Feature (penultimate) width: ``syn_fvd`` is computed on these."""
    num_classes: int = 10
    """Classes of ``minivdit/data/synthetic.py`` (all ten, whatever a run uses)."""
    dropout: float = 0.3
    """Dropout on the feature before the classifier (training only)."""

    def __post_init__(self):
        check_types(self)
        if len(self.widths) != 4 or min(self.widths) < 1 or self.dim < 1 or not 0 <= self.dropout < 1:
            raise ValueError(f"invalid SynDetectorConfig: {self}")


def resample(video: Tensor) -> Tensor:
    """``uint8 [B, F, 3, H, W]`` -> float ``[B, 3, NUM_FRAMES, SIZE, SIZE]`` in [-1, 1]: ``NUM_FRAMES`` frames
    evenly over the clip, each resized to ``SIZE``²."""
    B, Fr, _, H, W = video.shape
    idx = torch.linspace(0, Fr - 1, NUM_FRAMES).round().long()
    x = video[:, idx].float() / 127.5 - 1.0  # [B, T, 3, H, W]
    if (H, W) != (SIZE, SIZE):
        x = rearrange(x, "b t c h w -> (b t) c h w")
        x = F.interpolate(
            x, size=(SIZE, SIZE), mode="bilinear", align_corners=False, antialias=min(H, W) > SIZE
        )
        x = rearrange(x, "(b t) c h w -> b t c h w", b=B)
    return rearrange(x, "b t c h w -> b c t h w")


class SynDetector(nn.Module):
    """The classifier. ``forward(x [B, 3, T, S, S] float) -> (feature [B, dim], logits [B, classes])``;
    ``features`` / ``probs`` take uint8 videos (the detector contract)."""

    name = "synthetic"
    min_frames = 2
    batch_size = 64

    def __init__(self, cfg: SynDetectorConfig = SynDetectorConfig()):
        super().__init__()
        self.cfg = cfg
        strides = ((1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2))
        layers, c_in = [], 3
        for c, s in zip(cfg.widths, strides):
            layers += [nn.Conv3d(c_in, c, 3, stride=s, padding=1), nn.GroupNorm(8, c), nn.SiLU()]
            c_in = c
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Linear(c_in, cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.dim, cfg.num_classes)

    @property
    def dim(self) -> int:
        return self.cfg.dim

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.convs(x)  # [B, C, T/4, S/8, S/8]
        feat = F.silu(self.proj(h.mean(dim=(2, 3, 4))))  # [B, dim]
        return feat, self.head(self.drop(feat))  # [B, dim], [B, classes]

    @torch.no_grad()
    def _run(self, video: Tensor) -> tuple[Tensor, Tensor]:
        check_video(video, name=self.name, min_frames=self.min_frames)
        was = self.training
        self.eval()
        dev = next(self.parameters()).device
        feat, logits = self(resample(video.to(dev)))
        self.train(was)
        return check_finite(feat.float().cpu(), name=self.name), logits.float().cpu()

    def features(self, video: Tensor) -> Tensor:
        """``uint8 [B, F, 3, H, W]`` -> penultimate features ``[B, dim]`` (float32, CPU)."""
        return self._run(video)[0]

    def probs(self, video: Tensor) -> Tensor:
        """``uint8 [B, F, 3, H, W]`` -> class probabilities ``[B, num_classes]``."""
        return self._run(video)[1].softmax(-1)


def save(model: SynDetector, path: str | Path, train_config: dict) -> None:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"detector": json.dumps(asdict(model.cfg)), "train": json.dumps(train_config)}
    with durable.atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp), metadata=meta)


def load(path: str | Path | None = None, *, device: str | torch.device = "cpu") -> SynDetector:
    """The detector saved at ``path`` (default: the committed one), in eval mode."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path) if path else DEFAULT_WEIGHTS
    if not path.is_file():
        raise ValueError(
            f"--syn-detector {path}: no such file; the committed detector is {DEFAULT_WEIGHTS}, "
            f"or train one with `python tools/train_syn_detector.py --out {path}`"
        )
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if "detector" not in meta:
        raise ValueError(f"{path}: not a synthetic-detector file (no 'detector' metadata)")
    cfg = SynDetectorConfig(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(meta["detector"]).items()}
    )
    model = SynDetector(cfg)
    state = load_file(str(path))
    missing, unexpected = set(model.state_dict()) - set(state), set(state) - set(model.state_dict())
    if missing or unexpected:
        raise ValueError(
            f"{path}: keys do not match the detector: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    model.load_state_dict(state)
    return model.to(device).eval()


def accuracy(probs: Tensor, labels: Tensor) -> float:
    """``syn_acc``: the fraction of rows whose argmax is the label."""
    if probs.shape[0] != labels.shape[0]:
        raise ValueError(f"accuracy: {probs.shape[0]} predictions for {labels.shape[0]} labels")
    return float((probs.argmax(-1) == labels.to(probs.device)).float().mean())


COUNT_THRESHOLD = 0.4
"""Brightness (max over RGB, in [0, 1]) above which a pixel is object, for ``count_objects``. At 0.5 the
16² green ring's antialiased thin side splits it in 19 % of real frames; at 0.4 no real frame splits."""


def expected_objects(labels: Tensor) -> Tensor:
    """How many objects a clip of each class shows: two for class 7 (the twin discs), one otherwise."""
    return torch.where(labels == 7, 2, 1)


@torch.no_grad()
def count_objects(video: Tensor, threshold: float = COUNT_THRESHOLD) -> Tensor:
    """``uint8 [B, F, 3, H, W]`` -> ``[B, F]`` int64: the number of 8-connected bright regions per frame.

    Connected-component labelling by propagation: every object pixel starts with its own id and repeatedly
    takes the largest id in its 3×3 neighbourhood among object pixels, until nothing changes (at most H·W
    rounds; a few dozen at 16²)."""
    check_video(video, name="count_objects")
    B, T = video.shape[:2]
    bright = video.amax(2).flatten(0, 1).float() / 255.0 > threshold  # [B·F, H, W]
    N, H, W = bright.shape
    ids = torch.arange(1, H * W + 1, dtype=torch.float32, device=video.device).view(1, H, W).expand(N, H, W)
    ids = torch.where(bright, ids, 0.0)
    for _ in range(H * W):
        grown = torch.where(bright, F.max_pool2d(ids[:, None], 3, 1, 1)[:, 0], 0.0)
        if torch.equal(grown, ids):
            break
        ids = grown
    # each region ends holding its largest id, which sits on exactly one of its own pixels
    own = torch.arange(1, H * W + 1, dtype=torch.float32, device=video.device).view(1, H, W)
    counts = ((ids == own) & bright).flatten(1).sum(1)  # [B·F]
    return counts.view(B, T)


# ---------------------------------------------------------------------------------------------- training


def augment(video: Tensor, gen: torch.Generator) -> Tensor:
    """Robustness augmentations on float ``[B, 3, T, S, S]`` in [-1, 1], each applied per clip at random:
    blur (down- then up-sampling by 2 or 4), grayscale, Gaussian noise (σ up to 0.3), pixel dropout (up to
    15 %
    of the pixels set to a random level), and a small brightness/contrast change."""
    B = video.shape[0]

    def coin(p: float) -> Tensor:
        return torch.rand(B, generator=gen) < p

    x = video.clone()
    for factor in (2, 4):
        m = coin(0.2)
        if m.any():
            small = rearrange(x[m], "b c t h w -> (b t) c h w")
            small = F.interpolate(small, scale_factor=1 / factor, mode="bilinear", antialias=True)
            small = F.interpolate(small, size=x.shape[-2:], mode="bilinear", align_corners=False)
            x[m] = rearrange(small, "(b t) c h w -> b c t h w", b=int(m.sum()))
    m = coin(0.2)
    x[m] = x[m].mean(1, keepdim=True).expand_as(x[m])
    sigma = torch.rand(B, generator=gen) * 0.3 * coin(0.5)
    x = x + sigma.view(B, 1, 1, 1, 1) * torch.randn(x.shape, generator=gen)
    rate = torch.rand(B, generator=gen) * 0.15 * coin(0.3)
    drop = torch.rand(B, 1, *x.shape[2:], generator=gen) < rate.view(B, 1, 1, 1, 1)
    x = torch.where(drop, torch.rand(B, 1, *x.shape[2:], generator=gen) * 2 - 1, x)
    gain = 1 + (torch.rand(B, generator=gen) - 0.5) * 0.3
    bias = (torch.rand(B, generator=gen) - 0.5) * 0.2
    return (x * gain.view(B, 1, 1, 1, 1) + bias.view(B, 1, 1, 1, 1)).clamp(-1, 1)


def render(
    indices: np.ndarray, *, seed: int, num_classes: int = 10, size: int = SIZE
) -> tuple[Tensor, Tensor]:
    """Synthetic clips ``indices`` of the dataset with ``seed``, at ``NUM_FRAMES`` × ``size``²: float
    ``[B, 3, T, S, S]`` in [-1, 1] and labels ``[B]``."""
    from minivdit.data.synthetic import SyntheticVideos

    ds = SyntheticVideos(NUM_FRAMES, size, num_classes, size=int(indices.max()) + 1, seed=seed)
    items = [ds.get(int(i)) for i in indices]
    video = torch.stack([it["video"] for it in items])  # [B, T, 3, S, S]
    labels = torch.tensor([it["label"] for it in items])
    return rearrange(video, "b t c h w -> b c t h w"), labels
