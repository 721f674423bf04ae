"""Buckets: train on clips of several sizes and lengths, one size per step.

Why. Captioned video comes in many aspect ratios and lengths. Resizing every clip to one ``F × H × W``
squashes or crops it badly (CogVideo's ``finetune/`` warns that its resize "may cause aspect ratio
distortion") and pads short clips with a frozen last frame. musubi-tuner, diffusion-pipe, finetrainers and
Open-Sora (``bucket_config``) bucket instead: a run lists a few sizes, each clip goes to the nearest one, and
every batch holds clips of a single size. minivdit does the same for the clip datasets (``folder``,
``ucf101``, ``sky``, ``ffs``) and for shards made from them (``shards.py``: the bucket of every sample is in
meta.json, so cached latents of different sizes sit in one folder).

Config (``BucketConfig``, ``DataConfig.buckets``)::

    --data.buckets.sizes 49x480x720 49x720x480 49x480x480 25x480x720

Each size is ``FxHxW``: pixel frames × height × width. Empty (the default): no buckets, every clip is cut to
``--data.num-frames`` × ``--data.image-size`` as before. With buckets, ``--data.num-frames`` and
``--data.image-size`` stay the run's nominal size (the model's ``num_frames`` / ``input_size``, validation
and samples); the loader serves the buckets' sizes, which the backbone must accept (CogVideoX, Wan: RoPE; the
V-DiT's tables have one size and refuse buckets).

Assignment (``assign_bucket``). A clip that gives ``T`` frames without padding (``usable_frames``: the
sampling mode's own rule, e.g. ``(F − 1)·interval + 1 ≤`` its frames for "interval") at ``H × W`` pixels goes
to the bucket chosen by, in order:

1. only buckets of ``F ≤ T``: a clip shorter than every bucket is skipped and counted
   (``BucketedIndex.skipped``, warned once), never padded into a bucket;
2. the nearest aspect ratio, ``|log(h/w) − log(H/W)|`` smallest;
3. among those, the largest area ``h·w ≤ H·W`` (no upscaling), else the smallest area;
4. then the most frames;
5. ties: the first listed.

The clip is then resized by the smallest factor that makes it cover ``h × w`` (aspect kept), cropped to
``h × w`` (``BucketConfig.crop``: centre, or a position drawn from the sample's rng), and its ``F`` frames are
picked by ``--data.frame-sampling`` as without buckets. A source that turns out unreadable is replaced by
another clip of the same bucket.

Batches (``epoch_batches``). Epoch ``e`` shuffles each bucket's clips with a generator seeded from
``(seed, e)``, cuts every bucket into global batches of ``W × batch_size`` clips (a bucket's incomplete last
global batch is left out of that epoch: the next epoch's shuffle leaves out others), then shuffles the list of
global batches with the same generator. Step ``k`` of the epoch is global batch ``k``; rank ``r`` takes block
``r`` of it. So a batch never mixes buckets, every rank trains on the same bucket at every step (FSDP and DDP
see the same shapes on all ranks), the order is a function of the seed, and the whole epoch is a pure function
of ``(seed, epoch)``: ``Loader.state_dict``'s ``(epoch, batch_in_epoch)`` resumes exactly, bucket included
(the state also records the bucket sizes and their clip counts; a resume with others is refused). One
deviation from the unbucketed loader: the k-th global batch depends on the world size (``W × batch_size``
clips of one bucket), so one rank accumulating 2 micro-batches no longer sees what 2 ranks see in one step.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal, NamedTuple

import numpy as np
import torch

from minivdit.config import check_types

if TYPE_CHECKING:
    from minivdit.data.video import ClipDataset, ClipSpec, Source

logger = logging.getLogger("minivdit")

_SIZE = re.compile(r"^\s*(\d+)\s*[x×]\s*(\d+)\s*[x×]\s*(\d+)\s*$")


class Bucket(NamedTuple):
    """One bucket: pixel frames × height × width of the clips it holds."""

    frames: int
    height: int
    width: int

    def __str__(self) -> str:
        return f"{self.frames}x{self.height}x{self.width}"


def parse_bucket(text: str) -> Bucket:
    """``"49x480x720"`` → ``Bucket(49, 480, 720)``; ``ValueError`` naming the text otherwise."""
    m = _SIZE.match(text) if isinstance(text, str) else None
    if m is None:
        raise ValueError(
            f"bucket size {text!r}: expected FxHxW (pixel frames x height x width), e.g. 49x480x720"
        )
    bucket = Bucket(*(int(g) for g in m.groups()))
    if min(bucket) < 1:
        raise ValueError(f"bucket size {text!r}: frames, height and width must be >= 1")
    return bucket


@dataclass(frozen=True, kw_only=True)
class BucketConfig:
    """Resolution, aspect-ratio and frame-count buckets (module docstring). Off while ``sizes`` is empty."""

    sizes: tuple[str, ...] = ()
    """The buckets, each ``FxHxW`` (pixel frames x height x width): ``--data.buckets.sizes 49x480x720
    49x720x480 25x480x720``. Every clip goes to the nearest (aspect ratio, then area, then the most frames it
    holds); a batch never mixes buckets. Empty: no buckets."""
    crop: Literal["center", "random"] = "center"
    """How a resized clip is cut to its bucket: the centre (musubi-tuner, diffusion-pipe), or a position
    drawn from the sample's rng (a new one every epoch, reproducible: the loader's per-sample seed)."""

    def __post_init__(self):
        if isinstance(self.sizes, list):  # config.json gives a list
            object.__setattr__(self, "sizes", tuple(self.sizes))
        check_types(self)
        buckets = [parse_bucket(s) for s in self.sizes]
        if len(set(buckets)) != len(buckets):
            dup = sorted({str(b) for b in buckets if buckets.count(b) > 1})
            raise ValueError(f"BucketConfig.sizes lists {dup} more than once: {list(self.sizes)}")
        if self.crop not in ("center", "random"):
            raise ValueError(f"BucketConfig.crop must be center or random, got {self.crop!r}")

    @property
    def enabled(self) -> bool:
        return bool(self.sizes)

    @property
    def buckets(self) -> tuple[Bucket, ...]:
        """The parsed ``sizes``, in the order given (a bucket's id is its position)."""
        return tuple(parse_bucket(s) for s in self.sizes)


# ---------------------------------------------------------------------------------------------- assignment


def assign_bucket(frames: int, height: int, width: int, buckets: Sequence[Bucket]) -> int | None:
    """Id (position in ``buckets``) of the bucket of a clip that gives ``frames`` frames without padding at
    ``height × width`` pixels, by the rule of the module docstring; None when every bucket is longer."""
    fits = [i for i, b in enumerate(buckets) if b.frames <= frames]
    if not fits or height < 1 or width < 1:
        return None
    aspect = math.log(height / width)
    area = height * width

    def key(i: int) -> tuple:
        b = buckets[i]
        gap = round(abs(math.log(b.height / b.width) - aspect), 9)  # equal ratios compare equal
        a = b.height * b.width
        return gap, (0, -a) if a <= area else (1, a), -b.frames, i

    return min(fits, key=key)


def usable_frames(
    total: int, spec: ClipSpec, native_fps: float | None = None, fps: float | None = None
) -> int:
    """The most frames ``F`` that ``spec.sampling`` takes from a source of ``total`` frames without padding
    (``minivdit/data/video.py``): "interval": ``(F − 1)·frame_interval + 1 ≤ n``; "even": ``F ≤ n``; "fps":
    the ``⌊F·native_fps / fps⌋`` frames the clip spans ``≤ n``; ``n`` = ``total`` less ``skip_frames`` at each
    end. 0 when there are none (no frame rate for "fps")."""
    n = total - 2 * spec.skip_frames
    if n < 1:
        return 0
    if spec.sampling == "interval":
        return (n - 1) // spec.frame_interval + 1
    if spec.sampling == "even":
        return n
    rate = spec.fps[0] if fps is None else fps
    if not native_fps or native_fps <= 0:
        return 0
    F = math.floor((n + 1) * rate / native_fps)
    while F > 0 and math.floor(F * native_fps / rate) > n:  # float rounding at the boundary
        F -= 1
    return F


def source_size(source: Source) -> tuple[int, int, int, float | None]:
    """``(frames, height, width, fps)`` of a video file (``probe``: packets only, cached) or a frame folder
    (its frame count and the size of its first image; no rate). ``BadVideo`` when unreadable."""
    from PIL import Image

    from minivdit.data.video import BadVideo, FrameFolder, probe

    if isinstance(source, FrameFolder):
        if len(source) == 0:
            raise BadVideo(source.path, "no frames")
        try:
            with Image.open(source.file(0)) as im:  # reads the header only
                w, h = im.size
        except (OSError, ValueError, SyntaxError) as e:
            raise BadVideo(
                source.path, f"cannot read frame {source.file(0)} ({type(e).__name__}: {e})"
            ) from None
        return len(source), h, w, None
    info = probe(source)
    return info.num_frames, info.height, info.width, info.fps


@dataclass
class BucketedIndex:
    """The buckets of a clip dataset (``bucket_clips``): which items it keeps and the bucket of each.

    The dataset's items become the kept ones: item ``i`` is the unbucketed index ``index[i]`` (a source, or a
    source at one rate of ``--data.fps``) in bucket ``bucket_of[i]``."""

    buckets: tuple[Bucket, ...]
    index: np.ndarray
    """[N] int64: the unbucketed index of each kept item."""
    bucket_of: np.ndarray
    """[N] int64: the bucket id of each kept item."""
    skipped: dict[str, str] = field(default_factory=dict)
    """Sources no bucket takes: path (``#k``: at rate k) → why (shorter than every bucket, unreadable)."""
    crop: Literal["center", "random"] = "center"

    def __post_init__(self):
        self.members = [np.flatnonzero(self.bucket_of == k) for k in range(len(self.buckets))]
        """Kept items of each bucket (replacements of bad sources are drawn among them)."""

    def spec(self, base: ClipSpec, bucket: int) -> ClipSpec:
        """``base`` at the size of ``bucket``: its frames, ``(H, W)``, resized to cover then cropped."""
        b = self.buckets[bucket]
        size = (b.height, b.width)
        return replace(base, num_frames=b.frames, image_size=size, resize="short_side_crop", crop=self.crop)

    def counts(self) -> list[int]:
        return [len(m) for m in self.members]

    def summary(self) -> str:
        """``49x480x720: 812, 25x480x720: 96; 7 skipped`` (clips per bucket)."""
        parts = ", ".join(f"{b}: {n}" for b, n in zip(self.buckets, self.counts(), strict=True))
        return parts + (f"; {len(self.skipped)} skipped" if self.skipped else "")


def bucket_clips(dataset: ClipDataset, cfg: BucketConfig) -> BucketedIndex:
    """Assign every item of the clip dataset ``dataset`` to a bucket of ``cfg`` (module docstring), reading
    each source's frame count and size once (``source_size``: a packet scan per video, about 4 ms for 10 s of
    AVI; run ``tools/make_shards.py`` once for large sets, the shards carry the buckets). Unreadable and too
    short sources are skipped, listed in ``skipped`` and in one warning; ``ValueError`` when none is left."""
    from minivdit.data.video import BadVideo, source_path

    buckets, spec, K = cfg.buckets, dataset.spec, dataset.spec.variants
    index, bucket_of, skipped = [], [], {}
    shortest = min(b.frames for b in buckets)
    for s, source in enumerate(dataset.sources):
        path = source_path(source)
        try:
            total, h, w, native = source_size(source)
        except BadVideo as e:
            skipped[path] = e.reason
            continue
        for v in range(K):
            T = usable_frames(total, spec, native, spec.fps[v])
            b = assign_bucket(T, h, w, buckets)
            name = path + (f"#{v}" if K > 1 else "")
            if b is None:
                skipped[name] = (
                    "no frame rate ('fps' sampling)"
                    if spec.sampling == "fps" and not native
                    else f"too short for every bucket: {T} frames usable ({total} in the source, "
                    f"{spec.sampling} sampling) < {shortest}"
                )
                continue
            index.append(s * K + v)
            bucket_of.append(b)
    out = BucketedIndex(
        buckets, np.asarray(index, np.int64), np.asarray(bucket_of, np.int64), skipped, crop=cfg.crop
    )
    if not index:
        raise ValueError(
            f"{dataset.name}: no clip fits a bucket of {list(cfg.sizes)}: {len(skipped)} skipped, e.g. "
            f"{dict(list(skipped.items())[:3])}"
        )
    if skipped:
        logger.warning(
            "%s: %d source(s) fit no bucket and are skipped, e.g. %s",
            dataset.name,
            len(skipped),
            "; ".join(f"{p} ({r})" for p, r in list(skipped.items())[:5]),
        )
    logger.info("%s: buckets %s", dataset.name, out.summary())
    return out


# ---------------------------------------------------------------------------------------------- batches


def epoch_batches(
    members: Sequence[np.ndarray], global_batch: int, gen: torch.Generator
) -> list[tuple[int, np.ndarray]]:
    """One epoch's global batches ``(bucket, indices [global_batch])`` in step order (module docstring):
    each bucket's ``members`` shuffled by ``gen`` and cut into full global batches, then the batches
    shuffled by ``gen``. A pure function of the members and of ``gen``'s seed."""
    batches: list[tuple[int, np.ndarray]] = []
    for k, m in enumerate(members):
        perm = np.asarray(m, np.int64)[torch.randperm(len(m), generator=gen).numpy()]
        batches += [
            (k, perm[i * global_batch : (i + 1) * global_batch]) for i in range(len(m) // global_batch)
        ]
    order = torch.randperm(len(batches), generator=gen).tolist()
    return [batches[i] for i in order]


__all__ = [
    "Bucket",
    "BucketConfig",
    "BucketedIndex",
    "assign_bucket",
    "bucket_clips",
    "epoch_batches",
    "parse_bucket",
    "source_size",
    "usable_frames",
]
