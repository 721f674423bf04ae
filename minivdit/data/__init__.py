"""Data: ``DataConfig``, ``Batch``, ``build_loader(cfg, rank, world)``; an exact-resume sampler.

A dataset is any object with ``__len__`` and ``get(index: int, rng: numpy.random.Generator) -> dict``, where
the dict holds ``"video"`` (float ``[F, 3, H, W]`` in ``[-1, 1]``), ``"label"`` (int) and optionally
``"latents"``, ``"feats"``, ``"text"`` and ``"text_mask"`` (precomputed tensors). The dataset draws every
random choice it makes (temporal crop, flip, …) from ``rng``; it never touches global RNGs. Real-video
datasets may add ``"caption"`` (str; ``Batch.caption`` when every sample has one) and ``"skipped"``
(``(path, reason)`` of bad sources replaced by another draw from ``rng``); the loader logs the skipped paths
once per epoch and keeps them in ``Loader.bad_paths``.

Exact resume. Everything that decides which sample comes next is a pure function of the config and of two
integers, ``(epoch, batch_in_epoch)``:

- epoch ``e`` shuffles ``range(len(dataset))`` with a ``torch.Generator`` seeded from ``(seed, e)``;
- the epoch is cut into consecutive global batches of ``W × batch_size`` indices, and rank ``r`` takes block
  ``r`` of each: its k-th batch is ``perm[(k·W + r)·b : (k·W + r + 1)·b]``. No index is seen twice in an
  epoch,
  all ranks run the same number of steps, and the k-th global batch is the same set of clips for any split of
  ``W × grad_accum``: one process accumulating 2 micro-batches sees what 2 ranks see in one step;
- each index comes with ``sample_seed = f(seed, e, index)`` (independent of rank and world), which seeds the
  ``rng`` handed to ``get``: a sample's augmentation does not depend on which worker or rank produced it.

``Loader.state_dict()`` records ``(epoch, batch_in_epoch)`` of the batches the caller has *consumed* (not the
ones prefetched by workers), and ``load_state_dict`` restarts the sampler there: the next batch is the one the
uninterrupted run would have produced, for any ``num_workers``. Resuming requires the same ``seed``,
``batch_size``, ``drop_last``, dataset and world size.

Buckets (``minivdit/data/buckets.py``, ``DataConfig.buckets``): a dataset with ``buckets`` and
``bucket_of`` (the clip datasets once ``build_dataset`` bucketed them, bucketed shards) is batched by
``_BucketBatchSampler`` instead: each global batch holds clips of one bucket, all ranks take the same bucket
at each step, and the epoch is still a pure function of ``(seed, epoch)``, so the same ``(epoch,
batch_in_epoch)`` resumes it (the state also records the buckets' sizes and clip counts).

Adding a dataset: a file ``minivdit/data/<name>.py`` with a class implementing ``get``/``__len__``, its name
in the ``DataConfig.dataset`` ``Literal`` and a builder in ``DATASETS``.
"""

import logging
import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from functools import partial
from typing import Literal, Protocol

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from minivdit.config import check_types
from minivdit.data.buckets import BucketConfig, epoch_batches
from minivdit.data.synthetic import CLASS_NAMES, SyntheticVideos

logger = logging.getLogger("minivdit")

# ---------------------------------------------------------------------------------------------- config


def frame_size(size: int | Sequence[int]) -> tuple[int, int]:
    """``(H, W)`` of an ``image_size``: an int ``S`` is the square ``(S, S)``, a pair is ``(H, W)``;
    ``ValueError`` for anything else or a side < 1."""
    if isinstance(size, int | np.integer) and not isinstance(size, bool):
        hw = (int(size), int(size))
    elif isinstance(size, Sequence) and not isinstance(size, str) and len(size) == 2:
        hw = (int(size[0]), int(size[1]))
    else:
        raise ValueError(f"image_size must be an int or a pair (H, W), got {size!r}")
    if min(hw) < 1:
        raise ValueError(f"image_size sides must be >= 1, got {size!r}")
    return hw


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    dataset: Literal["synthetic", "shards", "ucf101", "sky", "ffs", "folder"] = "synthetic"
    """Which dataset to load (a key of ``minivdit.data.DATASETS``). "synthetic" is procedurally generated and
    needs no files; its classes are described in ``minivdit/data/synthetic.py``. "ucf101", "sky", "ffs" and
    "folder" read videos / frame folders under ``root`` (layouts: ``minivdit/data/<name>.py`` and the README,
    section Datasets); their class count is ``build_dataset(cfg).num_classes`` (UCF-101: 101; 0 when
    unconditional)."""
    root: str | None = None
    """Directory holding the dataset's files; unused by "synthetic"."""
    num_frames: int = 8
    """Frames per clip (F)."""
    image_size: int | tuple[int, int] = 32
    """Frame size in pixels: one side for square frames (``--data.image-size 256``) or ``H W``
    (``--data.image-size 480 720``, CogVideoX). Real videos are resized to cover it, then centre-cropped.
    A square pair ``S S`` is stored as the int ``S``; ``frame_size`` is always ``(H, W)``."""
    frame_interval: int = 3
    """Stride between sampled frames when decoding real videos with ``frame_sampling`` "interval"; unused by
    "synthetic", whose clips always span the whole motion."""
    frame_sampling: Literal["interval", "fps", "even"] = "interval"
    """How real videos' frames are picked (``minivdit/data/video.py``): "interval": ``frame_interval`` apart
    from a random start, the video must be long enough (Latte); "fps": resampled to ``fps`` frames per second
    of the video's own rate, padded with the last frame when the video is too short (CogVideoX SAT, 8 fps);
    "even": ``num_frames`` spread evenly over the whole video, padded likewise (CogVideo's ``finetune/``)."""
    fps: tuple[float, ...] = (8.0,)
    """"fps" sampling: the target frame rate (SAT: 8). Several values (``--data.fps 8 4 2``) list every video
    once per rate: the dREPA blog's subclips at several time intervals."""
    skip_frames: int = 0
    """Frames left out at both ends of every real video (SAT: 3, "avoiding transitions")."""
    random_start: bool = True
    """"fps" sampling: a start uniform over the frames left after the clip; False: at ``skip_frames``, the
    same clip every epoch (SAT's ``SFTDataset``). "interval" always draws its start."""
    num_classes: int = 8
    """Number of classes of "synthetic" (at most 10); real datasets define their own."""
    batch_size: int = 8
    """Clips per batch PER RANK: the global batch is ``batch_size × world size``."""
    num_workers: int = 0
    """DataLoader worker processes per rank (0 loads in the training process)."""
    seed: int = 0
    """Seeds the shuffling, the per-sample augmentation seeds, the workers and the synthetic clips."""
    synthetic_size: int = 10000
    """Number of distinct clips of "synthetic", i.e. the length of one epoch."""
    synthetic_captions: bool = False
    """"synthetic" only: each clip also carries its caption ("a red disc moving right",
    ``minivdit.data.synthetic.caption``), for text-conditioned runs (``Batch.caption``)."""
    synthetic_split: Literal["all", "in_domain", "out_of_domain"] = "all"
    """"synthetic" only: "all" = the classes (colour, shape and motion tied); "in_domain" / "out_of_domain" =
    appearance × motion pairs with a held-out set of pairings, labelled by the motion
    (``minivdit/data/synthetic.py``, "Held-out combinations"; the FlashI2V ablation)."""
    drop_last: bool = True
    """Drop each epoch's last, incomplete batch (keeps every batch the same shape)."""
    shard_fields: tuple[
        Literal["video", "caption", "latents", "image_latents", "feats", "text", "text_mask"], ...
    ] = ()
    """"shards" only: the stored fields to read (label always); empty reads all. E.g. ``latents feats`` skips
    the clips of a cache made with ``--keep-video`` (``minivdit/data/shards.py``); ``text`` brings
    ``text_mask`` along when the shards store one."""
    split: Literal["train", "test", "all"] = "train"
    """"ucf101": the official split of ``fold`` ("all" = train + test, Latte's 13,320 clips); "sky": the
    ``sky_train`` / ``sky_test`` folder ("all": both); "ffs": ``train`` or ``test``. Unused otherwise."""
    fold: Literal[1, 2, 3] = 1
    """"ucf101" only: which of the three official train/test splits."""
    flip: bool | None = None
    """Random horizontal flip (p = 0.5) of whole clips; None: the dataset's default, as Latte (ucf101 and ffs
    flip; sky and folder do not)."""
    resize: Literal["short_side_crop", "crop_resize"] | None = None
    """Spatial transform of real videos: "short_side_crop" resizes the short side to ``image_size`` then
    centre-crops; "crop_resize" centre-crops a square on the short side then resizes. None: the dataset's
    default, as Latte (sky: crop_resize; the others: short_side_crop)."""
    labels_csv: str | None = None
    """"folder" only: CSV listing the clips, with a header naming a clip column (``path`` relative to
    ``root``, or a video id ``videoid`` resolved as ``<root>/<id>.mp4``), an optional ``label`` and an
    optional caption column (``caption``, or ``name`` as in the ChronoMagic-ProH / WebVid CSVs). Without it
    every video / frame folder under ``root`` is used, unlabelled (``minivdit/data/folder.py``)."""
    path_column: str | None = None
    """"folder" CSV only: the column naming each clip; None: the first of path, videoid, video_id, video."""
    caption_column: str | None = None
    """"folder" CSV only: the column holding the captions; None: caption, else name, else no captions."""
    buckets: BucketConfig = field(default_factory=BucketConfig)
    """Resolution, aspect-ratio and frame-count buckets (``minivdit/data/buckets.py``): ``--data.buckets.sizes
    49x480x720 49x720x480 25x480x720``. Each clip goes to the nearest bucket, is resized to cover it and
    cropped; a batch never mixes buckets and every rank trains on the same bucket at each step. Clip datasets
    and shards made from them; ``num_frames`` / ``image_size`` stay the model's nominal size. Empty: off."""

    def __post_init__(self):
        if isinstance(self.image_size, list | tuple):  # tyro gives a tuple, config.json a list
            size = tuple(self.image_size)
            object.__setattr__(self, "image_size", size[0] if len(size) == 2 and size[0] == size[1] else size)
        if (
            isinstance(self.buckets, dict)
            and self.buckets
            and set(self.buckets) <= {"sizes", "crop", "_type"}
        ):
            try:  # DataConfig(**dataclasses.asdict(cfg)), meta.json's "source"
                kw = {k: v for k, v in self.buckets.items() if k != "_type"}
                object.__setattr__(self, "buckets", BucketConfig(**kw))
            except ValueError as e:
                raise ValueError(f"DataConfig.buckets={self.buckets!r}: {e}") from None
        check_types(self)
        if self.dataset not in DATASETS:
            raise ValueError(f"DataConfig.dataset must be one of {sorted(DATASETS)}, got {self.dataset!r}")
        try:
            frame_size(self.image_size)
        except ValueError as e:  # a bad size, named as check_types names a field ([0, 0] became 0 above)
            raise ValueError(f"DataConfig.image_size={self.image_size!r}: {e}") from None
        for name in (
            "num_frames",
            "frame_interval",
            "num_classes",
            "batch_size",
            "synthetic_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"DataConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_workers < 0:
            raise ValueError(f"DataConfig.num_workers must be >= 0, got {self.num_workers}")
        if self.frame_sampling not in ("interval", "fps", "even"):
            raise ValueError(
                f"DataConfig.frame_sampling must be interval, fps or even, got {self.frame_sampling!r}"
            )
        if not self.fps or not all(math.isfinite(r) and r > 0 for r in self.fps):
            raise ValueError(f"DataConfig.fps must be one or more positive rates, got {self.fps!r}")
        if self.skip_frames < 0:
            raise ValueError(f"DataConfig.skip_frames must be >= 0, got {self.skip_frames}")
        if self.seed < 0:
            raise ValueError(f"DataConfig.seed must be >= 0, got {self.seed}")
        if self.split not in ("train", "test", "all"):
            raise ValueError(f"DataConfig.split must be train, test or all, got {self.split!r}")
        if self.fold not in (1, 2, 3):
            raise ValueError(f"DataConfig.fold must be 1, 2 or 3, got {self.fold!r}")
        if self.resize not in (None, "short_side_crop", "crop_resize"):
            raise ValueError(f"DataConfig.resize must be short_side_crop or crop_resize, got {self.resize!r}")
        if self.dataset == "synthetic" and self.num_classes > len(CLASS_NAMES):
            raise ValueError(
                f"DataConfig.num_classes must be <= {len(CLASS_NAMES)} for the synthetic dataset, "
                f"got {self.num_classes}"
            )
        if self.synthetic_split != "all" and (self.dataset != "synthetic" or self.num_classes < 4):
            raise ValueError(
                f"DataConfig.synthetic_split={self.synthetic_split!r} is for the synthetic dataset with "
                f"num_classes >= 4 (got dataset={self.dataset!r}, num_classes={self.num_classes})"
            )
        if self.synthetic_captions and self.dataset != "synthetic":
            raise ValueError(
                f"DataConfig.synthetic_captions is for the synthetic dataset (got {self.dataset!r}: captions "
                "come from --data.labels-csv)"
            )
        if self.buckets.enabled and self.dataset == "synthetic":
            raise ValueError(
                f"DataConfig.buckets={list(self.buckets.sizes)}: buckets need clips of their own sizes (a "
                f"video folder, ucf101, sky, ffs, or shards made from one); the synthetic clips have none"
            )
        if self.buckets.enabled and not self.drop_last:
            raise ValueError(
                "DataConfig.drop_last=False with buckets: every rank must take a full batch of the same "
                "bucket at each step, so each bucket's incomplete global batch is left out of the epoch"
            )
        if self.dataset == "synthetic" and not isinstance(self.image_size, int):
            raise ValueError(
                f"DataConfig.image_size={self.image_size!r}: the synthetic dataset needs one side (square "
                f"frames)"
            )

    @property
    def frame_size(self) -> tuple[int, int]:
        """``(H, W)`` of the clips: ``(image_size, image_size)`` for an int."""
        return frame_size(self.image_size)


# ---------------------------------------------------------------------------------------------- datasets


class VideoDataset(Protocol):
    """What ``build_loader`` needs from a dataset (see the module docstring)."""

    def __len__(self) -> int: ...

    def get(self, index: int, rng: np.random.Generator) -> dict: ...


def _synthetic(cfg: DataConfig) -> VideoDataset:
    return SyntheticVideos(
        cfg.num_frames,
        cfg.image_size,
        cfg.num_classes,
        cfg.synthetic_size,
        cfg.seed,
        cfg.synthetic_split,
        captions=cfg.synthetic_captions,
    )


def _shards(cfg: DataConfig) -> VideoDataset:
    from minivdit.data.shards import ShardDataset  # webdataset-format tars: root is the shard folder

    return ShardDataset.from_config(cfg)


def _clip_spec(cfg: DataConfig, resize: str, flip: bool):
    from minivdit.data.video import ClipSpec

    # With buckets, each clip is cut at its bucket's size; the shortest bucket decides which sources are long
    # enough to index (the datasets' drop_short).
    frames = min(b.frames for b in cfg.buckets.buckets) if cfg.buckets.enabled else cfg.num_frames
    return ClipSpec(
        num_frames=frames,
        frame_interval=cfg.frame_interval,
        image_size=cfg.image_size,
        resize=cfg.resize or resize,
        flip=flip if cfg.flip is None else cfg.flip,
        sampling=cfg.frame_sampling,
        fps=cfg.fps,
        skip_frames=cfg.skip_frames,
        random_start=cfg.random_start,
    )


def _ucf101(cfg: DataConfig) -> VideoDataset:
    from minivdit.data import ucf101

    return ucf101.build(cfg.root, cfg.split, cfg.fold, _clip_spec(cfg, "short_side_crop", True))


def _sky(cfg: DataConfig) -> VideoDataset:
    from minivdit.data import sky

    return sky.build(cfg.root, cfg.split, _clip_spec(cfg, "crop_resize", False))


def _ffs(cfg: DataConfig) -> VideoDataset:
    from minivdit.data import ffs

    return ffs.build(cfg.root, cfg.split, _clip_spec(cfg, "short_side_crop", True))


def _folder(cfg: DataConfig) -> VideoDataset:
    from minivdit.data import folder

    return folder.build(
        cfg.root,
        cfg.labels_csv,
        _clip_spec(cfg, "short_side_crop", False),
        path_column=cfg.path_column,
        caption_column=cfg.caption_column,
    )


DATASETS: dict[str, Callable[[DataConfig], VideoDataset]] = {
    "synthetic": _synthetic,
    "shards": _shards,
    "ucf101": _ucf101,
    "sky": _sky,
    "ffs": _ffs,
    "folder": _folder,
}
"""Dataset name -> builder from the config."""


def build_dataset(cfg: DataConfig) -> VideoDataset:
    """The dataset named by ``cfg.dataset``; every one but ``synthetic`` needs ``cfg.root``."""
    if cfg.root is None and cfg.dataset != "synthetic":
        what = "the shard folder" if cfg.dataset == "shards" else "the folder holding it"
        raise ValueError(
            f"--data.dataset {cfg.dataset} needs --data.root ({what}); the layouts are in the README, "
            f"section Datasets"
        )
    dataset = DATASETS[cfg.dataset](cfg)
    if cfg.buckets.enabled and cfg.dataset != "shards":  # shards carry their buckets (shards.py)
        from minivdit.data.buckets import bucket_clips
        from minivdit.data.video import ClipDataset

        if not isinstance(dataset, ClipDataset):
            raise ValueError(f"--data.buckets.sizes: the {cfg.dataset} dataset cannot be bucketed")
        dataset.bucketing = bucket_clips(dataset, cfg.buckets)
    return dataset


# ---------------------------------------------------------------------------------------------- batch


@dataclass(frozen=True)
class Batch:
    """One batch. ``video`` is None when the dataset serves precomputed ``latents`` only."""

    video: Tensor | None  # [B, F, 3, H, W] float32 in [-1, 1]
    label: Tensor  # [B] int64
    latents: Tensor | None = None  # [B, F', C, h, w], already scaled by the VAE
    feats: Tensor | None = None  # teacher features, layout owned by the teacher
    text: Tensor | None = None  # [B, L, Dt] cached text-encoder tokens (bf16 on disk), see conditioning/
    text_mask: Tensor | None = None  # [B, L] bool, True = real token; None = no mask (CogVideoX's T5)
    image_latents: Tensor | None = None  # [B, 1, C, h, w] cached frame-0 latents (the I2V condition)
    caption: tuple[str, ...] | None = None  # the captions, when every sample has one (online text encoding)
    ids: tuple[str, ...] | None = None  # which clip each sample is (a path, a shard key): forensics, logs

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        """A new ``Batch`` with every tensor on ``device``."""
        return Batch(
            **{
                f.name: _apply(getattr(self, f.name), lambda t: t.to(device, non_blocking=non_blocking))
                for f in fields(self)
            }
        )

    def pin_memory(self) -> "Batch":
        """Called by DataLoader(pin_memory=True) on custom batch types."""
        return Batch(**{f.name: _apply(getattr(self, f.name), Tensor.pin_memory) for f in fields(self)})


def _apply(x, fn: Callable[[Tensor], Tensor]):
    return fn(x) if isinstance(x, Tensor) else x


def collate(samples: Sequence[dict]) -> Batch:
    """Stack dataset samples ``{"video", "label", "latents"?, "feats"?, "text"?, "text_mask"?, "caption"?}``
    into a ``Batch`` (captions as a tuple of str, when every sample has one)."""
    if not samples:
        raise ValueError("collate: got an empty list of samples")
    stacked = {}
    for key in ("video", "latents", "image_latents", "feats", "text", "text_mask"):
        present = [key in s and s[key] is not None for s in samples]
        if any(present) and not all(present):
            raise ValueError(
                f"collate: {sum(present)} of {len(samples)} samples carry {key!r}; all or none must"
            )
        if all(present):
            tensors = [torch.as_tensor(s[key]) for s in samples]
            if len({t.shape for t in tensors}) > 1:
                raise ValueError(
                    f"collate: {key!r} shapes differ: {sorted({tuple(t.shape) for t in tensors})}"
                )
            stacked[key] = torch.stack(tensors)
    video = stacked.get("video")
    if video is not None and (video.ndim != 5 or video.shape[2] != 3):
        raise ValueError(
            f"collate: video must be [F, 3, H, W] per sample, got batch shape {tuple(video.shape)}"
        )
    label = torch.tensor([int(s["label"]) for s in samples], dtype=torch.int64)
    return Batch(
        video=video,
        label=label,
        latents=stacked.get("latents"),
        feats=stacked.get("feats"),
        text=stacked.get("text"),
        text_mask=stacked.get("text_mask"),
        image_latents=stacked.get("image_latents"),
        caption=tuple(str(s["caption"]) for s in samples)
        if all(s.get("caption") is not None for s in samples)
        else None,
        ids=tuple(str(s["key"]) for s in samples) if all("key" in s for s in samples) else None,
    )


def _collate_with_skips(samples: Sequence[dict]) -> tuple[Batch, list[tuple[str, str]]]:
    """``collate`` plus the ``(path, reason)`` of the bad sources the samples skipped (``"skipped"``)."""
    return collate(samples), [tuple(x) for s in samples for x in s.get("skipped", ())]


# ---------------------------------------------------------------------------------------------- sampler


def _mix(*keys: int) -> int:
    """A well-mixed 63-bit seed (non-negative, as ``torch.Generator.manual_seed`` wants) from integer keys."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0] >> np.uint64(1))


def _splitmix64(x: np.ndarray) -> np.ndarray:
    # Vectorised, so an epoch's seeds cost one numpy pass even for millions of clips; uint64 arithmetic wraps.
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def sample_seeds(seed: int, epoch: int, indices: np.ndarray) -> np.ndarray:
    """The augmentation seed of each index in an epoch: a function of ``(seed, epoch, index)`` only."""
    key = np.uint64(_mix(seed, epoch))
    return (_splitmix64(key ^ _splitmix64(indices.astype(np.uint64))) >> np.uint64(1)).astype(np.int64)


class _ResumableBatchSampler:
    """Infinite iterable of batches of ``(index, sample_seed)``, starting at ``start = (epoch, batch)``.

    Infinite, so that the DataLoader's workers keep prefetching across epoch boundaries.
    """

    def __init__(self, size: int, cfg: DataConfig, rank: int, world: int):
        self.size, self.rank, self.world = size, rank, world
        self.seed, self.batch_size, self.drop_last = cfg.seed, cfg.batch_size, cfg.drop_last
        self.per_rank = size // world
        self.steps_per_epoch = (
            self.per_rank // self.batch_size if self.drop_last else math.ceil(self.per_rank / self.batch_size)
        )
        self.start = (0, 0)

    def epoch_pairs(self, epoch: int) -> list[tuple[int, int]]:
        """This rank's ``(index, sample_seed)`` pairs of ``epoch``, in order."""
        gen = torch.Generator().manual_seed(_mix(self.seed, epoch))
        perm = torch.randperm(self.size, generator=gen).numpy()
        b, W = self.batch_size, self.world
        full = self.per_rank // b  # complete batches per rank
        blocks = perm[: full * W * b].reshape(full, W, b)[:, self.rank].reshape(-1)  # [full·b]
        # The remainder (< W·b clips) is split as perm[r::W] so drop_last=False still covers the epoch.
        rest = perm[full * W * b :][self.rank :: W][: self.per_rank - full * b]
        mine = np.concatenate([blocks, rest])
        return list(zip(mine.tolist(), sample_seeds(self.seed, epoch, mine).tolist(), strict=True))

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, batch = self.start
        while True:
            pairs = self.epoch_pairs(epoch)
            for k in range(batch, self.steps_per_epoch):
                yield pairs[k * self.batch_size : (k + 1) * self.batch_size]
            epoch, batch = epoch + 1, 0


class _BucketBatchSampler:
    """``_ResumableBatchSampler`` over buckets (``minivdit/data/buckets.py``): every batch holds clips of one
    bucket, all ranks take the same bucket at each step, and epoch ``e`` is a pure function of ``(seed, e)``
    (``epoch_batches``): ``start = (epoch, batch)`` resumes exactly."""

    def __init__(self, bucket_of: np.ndarray, buckets: Sequence, cfg: DataConfig, rank: int, world: int):
        self.rank, self.world, self.seed, self.batch_size = rank, world, cfg.seed, cfg.batch_size
        self.buckets = tuple(buckets)
        bucket_of = np.asarray(bucket_of, np.int64)
        if bucket_of.size and not 0 <= bucket_of.min() <= bucket_of.max() < len(self.buckets):
            raise ValueError(f"bucket ids must be in [0, {len(self.buckets)}), got {np.unique(bucket_of)}")
        self.members = [np.flatnonzero(bucket_of == k) for k in range(len(self.buckets))]
        self.global_batch = world * cfg.batch_size
        self.steps_per_epoch = sum(len(m) // self.global_batch for m in self.members)
        self.start = (0, 0)

    def counts(self) -> list[int]:
        """Clips in each bucket."""
        return [len(m) for m in self.members]

    def epoch_steps(self, epoch: int) -> list[tuple[int, np.ndarray]]:
        """``(bucket, global batch [W·b])`` of every step of ``epoch``, in order."""
        gen = torch.Generator().manual_seed(_mix(self.seed, epoch))
        return epoch_batches(self.members, self.global_batch, gen)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, batch = self.start
        b = self.batch_size
        while True:
            steps = self.epoch_steps(epoch)
            for k in range(batch, self.steps_per_epoch):
                mine = steps[k][1][self.rank * b : (self.rank + 1) * b]  # block r of the global batch
                yield list(zip(mine.tolist(), sample_seeds(self.seed, epoch, mine).tolist(), strict=True))
            epoch, batch = epoch + 1, 0


class _Keyed(Dataset):
    """Maps the sampler's ``(index, sample_seed)`` to ``dataset.get(index, default_rng(sample_seed))``."""

    def __init__(self, dataset: VideoDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, seed = key
        # "key" names the clip (``Batch.ids``): a dataset that knows better (a path, a shard key) sets its own
        return {"key": str(index), **self.dataset.get(index, np.random.default_rng(seed))}


def _seed_worker(seed: int, rank: int, worker_id: int) -> None:
    # Datasets should only use the rng they are handed; this makes stray global-RNG use reproducible anyway.
    s = _mix(seed, rank, worker_id)
    torch.manual_seed(s)
    np.random.seed(s % 2**32)
    random.seed(s)


# ---------------------------------------------------------------------------------------------- loader


class Loader:
    """Infinite iterator of ``Batch`` with exact resume (module docstring). Built by ``build_loader``."""

    def __init__(self, dataset: VideoDataset, cfg: DataConfig, rank: int = 0, world: int = 1):
        if not 0 <= rank < world:
            raise ValueError(f"build_loader: need 0 <= rank < world, got rank={rank}, world={world}")
        self.dataset = dataset
        self.buckets = _dataset_buckets(dataset, cfg)
        """The buckets the batches are drawn from (``minivdit/data/buckets.py``), or None."""
        if self.buckets is not None:
            self._sampler = _BucketBatchSampler(dataset.bucket_of, self.buckets, cfg, rank, world)
            counts = self._sampler.counts()
            sizes = ", ".join(f"{b}: {n}" for b, n in zip(self.buckets, counts, strict=True))
            if self._sampler.steps_per_epoch == 0:
                raise ValueError(
                    f"build_loader: no bucket holds one global batch of {world} ranks x {cfg.batch_size} "
                    f"clips ({sizes})"
                )
            if rank == 0:
                idle = [
                    str(b) for b, n in zip(self.buckets, counts, strict=True) if n < world * cfg.batch_size
                ]
                logger.info(
                    "data: clips per bucket %s; %d steps per epoch%s",
                    sizes,
                    self._sampler.steps_per_epoch,
                    f"; {idle} hold less than a global batch and are never used" if idle else "",
                )
        else:
            self._sampler = _ResumableBatchSampler(len(dataset), cfg, rank, world)
            if self._sampler.per_rank < cfg.batch_size:
                raise ValueError(
                    f"build_loader: {len(dataset)} clips over {world} ranks leave {self._sampler.per_rank} "
                    f"per rank, fewer than one batch of {cfg.batch_size}"
                )
        workers = cfg.num_workers
        self._loader = DataLoader(
            _Keyed(dataset),
            batch_sampler=self._sampler,
            num_workers=workers,
            collate_fn=_collate_with_skips,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=workers > 0,
            worker_init_fn=partial(_seed_worker, cfg.seed, rank) if workers > 0 else None,
            # Each new iterator draws a base seed from this generator; without one it would draw from the
            # global torch RNG and perturb the training run's randomness (and its own resume).
            generator=torch.Generator().manual_seed(_mix(cfg.seed, rank)),
        )
        self._iterator: Iterator[tuple[Batch, list]] | None = None
        self._epoch, self._batch = 0, 0
        self.rank = rank
        self.bad_paths: dict[str, str] = {}
        """Every bad source (corrupt, truncated, too short…) a batch of this rank skipped: path → reason."""
        self._epoch_skips: dict[str, int] = {}

    @property
    def steps_per_epoch(self) -> int:
        """Batches per epoch on each rank."""
        return self._sampler.steps_per_epoch

    @property
    def epoch(self) -> int:
        """Epoch of the next batch."""
        return self._epoch

    def __iter__(self) -> "Loader":
        return self

    def __next__(self) -> Batch:
        if self._iterator is None:
            # With persistent workers, iter() resets the live iterator: the workers drop what they prefetched.
            self._sampler.start = (self._epoch, self._batch)
            self._iterator = iter(self._loader)
        batch, skipped = next(self._iterator)
        for path, reason in skipped:
            self.bad_paths[path] = reason
            self._epoch_skips[path] = self._epoch_skips.get(path, 0) + 1
        self._batch += 1
        if self._batch == self.steps_per_epoch:
            self._log_skips()
            self._epoch, self._batch = self._epoch + 1, 0
        return batch

    def _log_skips(self) -> None:
        """One warning per epoch listing the bad sources skipped (and replaced) in it, then forget them."""
        if not self._epoch_skips:
            return
        shown = sorted(self._epoch_skips)[:50]
        more = len(self._epoch_skips) - len(shown)
        logger.warning(
            "data: epoch %d, rank %d: skipped %d bad video(s) %d time(s), replaced by other clips: %s%s",
            self._epoch,
            self.rank,
            len(self._epoch_skips),
            sum(self._epoch_skips.values()),
            "; ".join(f"{p} ({self.bad_paths[p]})" for p in shown),
            f"; and {more} more (Loader.bad_paths)" if more else "",
        )
        self._epoch_skips = {}

    def state_dict(self) -> dict:
        """Position after the batches consumed so far: ``{"epoch": e, "batch_in_epoch": k}``; with buckets
        also ``buckets`` (their sizes and clip counts, which the epoch's order is a function of) and
        ``next_bucket`` (the bucket of the next batch, for the record)."""
        state = {"epoch": self._epoch, "batch_in_epoch": self._batch}
        if self.buckets is not None:
            state["buckets"] = self._bucket_state()
            state["next_bucket"] = str(self.buckets[self._sampler.epoch_steps(self._epoch)[self._batch][0]])
        return state

    def _bucket_state(self) -> dict[str, int]:
        return {str(b): n for b, n in zip(self.buckets, self._sampler.counts(), strict=True)}

    def load_state_dict(self, state: dict) -> None:
        """Make the next batch the one an uninterrupted run would yield after ``state`` was taken."""
        epoch, batch = int(state["epoch"]), int(state["batch_in_epoch"])
        if epoch < 0 or not 0 <= batch < self.steps_per_epoch:
            raise ValueError(
                f"Loader.load_state_dict: need epoch >= 0 and 0 <= batch_in_epoch < "
                f"{self.steps_per_epoch}, got {state}"
            )
        mine = None if self.buckets is None else self._bucket_state()
        if state.get("buckets") != mine:
            raise ValueError(
                f"Loader.load_state_dict: the state was saved with buckets {state.get('buckets')} (size: "
                f"clips), this loader has {mine}: the epoch's order would differ; resume with the same "
                f"--data.buckets.sizes and data"
            )
        self._epoch, self._batch = epoch, batch
        self._iterator = None


def _dataset_buckets(dataset: VideoDataset, cfg: DataConfig) -> tuple | None:
    """The dataset's buckets when the config asks for buckets (None when it does not); ``ValueError`` when
    the two disagree."""
    buckets = getattr(dataset, "buckets", None)
    if not cfg.buckets.enabled:
        if buckets is not None:
            raise ValueError(
                f"build_loader: the dataset holds clips of buckets {[str(b) for b in buckets]}: pass "
                f"--data.buckets.sizes {' '.join(map(str, buckets))}"
            )
        return None
    if buckets is None or getattr(dataset, "bucket_of", None) is None:
        raise ValueError(
            f"build_loader: --data.buckets.sizes {' '.join(cfg.buckets.sizes)}, but the "
            f"{type(dataset).__name__} dataset has no buckets (a clip dataset built by build_dataset, or "
            f"shards made with buckets)"
        )
    return tuple(buckets)


def build_loader(
    cfg: DataConfig, rank: int = 0, world: int = 1, *, dataset: VideoDataset | None = None
) -> Loader:
    """The infinite, resumable loader of rank ``rank`` of ``world``; ``dataset`` overrides ``cfg.dataset``.

    Every rank reads the same index, so the warnings of building it (rows skipped, an index rebuilt) are the
    same on every rank: only rank 0 prints them. Bad clips met while loading differ per rank and are logged
    by each (``Loader._log_skips``, with the rank)."""
    if dataset is None:
        level = logger.level
        if rank != 0:
            logger.setLevel(logging.ERROR)
        try:
            dataset = build_dataset(cfg)
        finally:
            logger.setLevel(level)
    return Loader(dataset, cfg, rank, world)


__all__ = [
    "DATASETS",
    "Batch",
    "DataConfig",
    "Loader",
    "VideoDataset",
    "build_dataset",
    "build_loader",
    "collate",
    "frame_size",
    "sample_seeds",
]
