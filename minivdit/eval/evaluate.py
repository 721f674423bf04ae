"""The evaluation engine: clips -> detectors -> statistics -> metrics, for two folders, a checkpoint, or a
model in training.

Flow (DESIGN.md §8):

    real clips  (RealClips: a folder, a dataset split, or the synthetic set; protocol subset + seeded windows)
        └─▶ detectors ─▶ FeatureStats per detector (cached on disk, keyed by protocol + file list + detector)
    fake clips  (a folder's first frames, or samples of the EMA model with the run's objective and VAE)
        └─▶ detectors ─▶ FeatureStats / IS probabilities / CLIP sums / syn_acc counts
    metrics = Fréchet distances (fvd, cdfvd, fid, syn_fvd), IS, clipsim, syn_acc  + the protocol record

Clips reach the detectors as ``uint8 [B, F, 3, R, R]``: the protocol's frames, resized (short side, then a
centre
crop) to the protocol's resolution R; a clip already R×R is not resampled. Generated clips are never written
through a lossy codec on the way (anchors-eval §7); ``keep_frames`` writes them as PNG.

Distributed: the clips are cut into fixed chunks of ``batch_size``; rank r takes chunks r, r + W, …, and every
chunk (its real windows, its labels, its noise) is a function of the seed and the clip or chunk index only, so
each chunk is bitwise the same whatever W is. A generated clip's starting noise is drawn per clip
(``clip_noise``), so with a deterministic sampler (Euler, Heun, DDIM η = 0) its sample does not depend on the
batch size either; a stochastic sampler's step noise is per chunk, and the record keeps ``batch_size``.
Statistics are sums, merged with one all-reduce (float64; the order of the sum is the only difference from
one process, ≤ 1e-12 relative); IS probabilities are gathered in clip order. Every rank runs the same number
of model calls (a rank short of chunks repeats its last one and discards it), so FSDP-sharded models work.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from minivdit import durable
from minivdit.config import check_types
from minivdit.data import DataConfig, frame_size
from minivdit.eval import protocols
from minivdit.eval.detector import resize_short_centre_crop, sha256_file
from minivdit.eval.frechet import FeatureStats, fd_from_stats, inception_score
from minivdit.eval.protocols import DETECTOR_OF, REAL_METRICS, Metric, Protocol

log = logging.getLogger("minivdit")


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """Evaluation under a named protocol (``minivdit/eval/protocols.py``), with local detector weights.

    In training (``TrainConfig.eval``) it runs every ``every`` steps on the EMA weights; from the command line
    ``python -m minivdit.eval run --ckpt RUN --protocol NAME`` runs it once."""

    protocol: str = "synthetic"
    """A named protocol: stylegan-v, latte, align4gen-ucf, align4gen-sky, align4gen-ffs, synthetic."""
    metrics: tuple[Metric, ...] = ()
    """Metrics to compute (empty: the protocol's). A metric whose weights are not given is skipped with one
    logged line (in training) or refused (``run``/``folders``)."""
    every: int = 0
    """Training only: evaluate every this many steps, and at the end (0: at the end only)."""
    num_gen: int | None = None
    """Generated clips (None: the protocol's)."""
    num_real: int | None = None
    """Real clips (None: the protocol's)."""
    steps: int = 50
    """Sampler steps for the generated clips."""
    cfg_scale: float | None = None
    """Classifier-free guidance of the generated clips (None: the protocol's, 1.0 = none for every paper)."""
    seed: int | None = None
    """Seed of the real subset, the windows and the noise (None: the protocol's)."""
    batch_size: int = 16
    """Clips per chunk (generation and detectors)."""
    i3d: str | None = None
    """StyleGAN-V's ``i3d_torchscript.pt`` (FVD)."""
    videomae: str | None = None
    """VideoMAE-v2 ``vit_g_hybrid_pt_1200e_ssv2_ft.pth`` (cd-FVD)."""
    inception: str | None = None
    """``pt_inception-2015-12-05-6726825d.pth`` (FID)."""
    c3d: str | None = None
    """TGANv2's ``conv3d_deepnetA_ucf.npz`` (IS); ``mean2.npz`` is read from the same folder."""
    c3d_mean: str | None = None
    """TGANv2's ``mean2.npz`` if not next to the C3D weights."""
    clip: str | None = None
    """A local ``openai/clip-vit-base-patch32`` Hugging Face folder (CLIP similarity)."""
    syn_detector: str | None = None
    """The synthetic-data detector (None: the committed ``minivdit/eval/assets/syn_detector.safetensors``)."""
    data_root: str | None = None
    """The real dataset's folder (None: the run's ``data.root``; for a run trained on shards, the root of the
    dataset they were made from, recorded in their meta.json)."""
    real_stats: str | None = None
    """``folders`` only: read the real statistics of the one Fréchet metric asked from this file instead of
    a real folder: cd-fvd's published reference ``.pkl`` (restricted unpickling) or a cache ``.npz``."""
    cache_dir: str | None = None
    """Cache real statistics here (keyed by the protocol, the file list and the detector); None: no cache."""
    strict: bool = False
    """Fewer real clips than asked is an error instead of a warning."""
    keep_frames: bool = False
    """Also write every generated clip as lossless PNG frames beside the metrics file, in
    ``<its folder>/frames/<clip>/<frame>.png`` (``frames-<tag>/`` when the metrics go to
    ``metrics-<tag>.json`` beside a file of other settings); the log names the folder."""
    precision: str = "fp32"
    """"fp32" or "bf16" (autocast) for generation."""

    def __post_init__(self):
        check_types(self)
        bad = [m for m in self.metrics if m not in protocols.METRICS]
        if bad:
            raise ValueError(f"EvalConfig.metrics: unknown {bad} (choose from {protocols.METRICS})")
        if self.protocol not in protocols.PROTOCOLS:
            raise ValueError(
                f"EvalConfig.protocol: unknown {self.protocol!r}; choose from {sorted(protocols.PROTOCOLS)}"
            )
        if self.every < 0 or self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"EvalConfig: every >= 0, steps >= 1 and batch_size >= 1, got {self}")

    def resolved_protocol(self) -> Protocol:
        return protocols.get_protocol(
            self.protocol,
            num_fake=self.num_gen,
            num_real=self.num_real,
            cfg_scale=self.cfg_scale,
            seed=self.seed,
        )

    @property
    def chosen_metrics(self) -> tuple[str, ...]:
        return tuple(self.metrics) or self.resolved_protocol().metrics


# ---------------------------------------------------------------------------------------------- detectors

_WEIGHT_FIELD = {"i3d": "i3d", "videomae": "videomae", "inception": "inception", "c3d": "c3d", "clip": "clip"}


def missing_weights(cfg: EvalConfig, metrics) -> dict[str, str]:
    """Metrics whose detector weights are not given: metric -> the flag that is missing."""
    out = {}
    for m in metrics:
        det = DETECTOR_OF[m]
        if det in _WEIGHT_FIELD and not getattr(cfg, _WEIGHT_FIELD[det]):
            out[m] = f"--{_WEIGHT_FIELD[det]}"
    return out


_HASHES: dict[tuple, str] = {}


def weights_hash(path: str | Path) -> str:
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = sha256_file(p)
    return _HASHES[key]


def load_detectors(cfg: EvalConfig, metrics, device: torch.device) -> dict[str, tuple[torch.nn.Module, str]]:
    """``{detector name: (detector, sha256 of its weights)}`` for the metrics asked."""
    out = {}
    for det in dict.fromkeys(DETECTOR_OF[m] for m in metrics):
        if det == "i3d":
            from minivdit.eval import i3d

            model, path = i3d.load(cfg.i3d, device=device), cfg.i3d
        elif det == "videomae":
            from minivdit.eval import videomae

            model, path = videomae.load(cfg.videomae, device=device), cfg.videomae
        elif det == "inception":
            from minivdit.eval import inception

            model, path = inception.load(cfg.inception, device=device), cfg.inception
        elif det == "c3d":
            from minivdit.eval import c3d

            model, path = c3d.load(cfg.c3d, cfg.c3d_mean, device=device), cfg.c3d
        elif det == "clip":
            from minivdit.eval import clip

            model, path = clip.load(cfg.clip, device=device), cfg.clip
        else:
            from minivdit.eval import synthetic

            model = synthetic.load(cfg.syn_detector, device=device)
            path = cfg.syn_detector or synthetic.DEFAULT_WEIGHTS
        out[det] = (model, weights_hash(path))
    return out


def check_frames(detectors: dict, num_frames: int) -> None:
    """Every detector must accept clips of ``num_frames`` frames (I3D needs 9, C3D exactly 16)."""
    for name, (det, _) in detectors.items():
        need = getattr(det, "min_frames", 1)
        if num_frames < need:
            raise ValueError(f"{name} needs clips of at least {need} frames; the protocol gives {num_frames}")


# ---------------------------------------------------------------------------------------------- measuring


@contextlib.contextmanager
def tf32_off():
    """TF32 off for matmuls and cuDNN convolutions, restored afterwards. The trainer turns TF32 on for the
    whole process (as Latte/DiT); StyleGAN-V computes its metrics with it off for matmul and cuDNN
    (``src/scripts/calc_metrics_for_dataset.py``, anchors-eval.md), since its 10-bit mantissa moves the
    detectors' features (issue 18 §1.6). Only the detectors: generation keeps the run's setting. On a CPU
    TF32 does not exist, but the flags are set and restored the same way."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


class Measure:
    """What the detectors see of one side (real or generated): feature statistics per detector, and for
    generated clips the IS probabilities (by clip index), the CLIP-similarity sums and the syn_acc counts."""

    def __init__(self, detectors: dict, metrics, *, generated: bool):
        self.detectors, self.metrics = detectors, set(metrics)
        self.generated = generated
        need_fd = {DETECTOR_OF[m] for m in self.metrics if m in REAL_METRICS}
        self.stats = {d: None for d in need_fd}
        self.is_probs: list[tuple[int, np.ndarray]] = []
        self.clip_sum = self.clip_count = 0.0
        self.correct = self.labelled = 0
        self.frames_right = self.frames_counted = 0
        self.clips = 0

    def add(self, video: Tensor, labels: Tensor | None = None, first_index: int = 0) -> None:
        """A chunk of ``uint8 [B, F, 3, R, R]`` clips (``labels``: the classes they were sampled for); the
        detectors run in full float32 (:func:`tf32_off`)."""
        with tf32_off():
            self._add(video, labels, first_index)

    def _add(self, video: Tensor, labels: Tensor | None, first_index: int) -> None:
        self.clips += video.shape[0]
        for det, stats in self.stats.items():
            feats = self.detectors[det][0].features(video)
            if stats is None:
                stats = self.stats[det] = FeatureStats(feats.shape[1])
            stats.update(feats)
        if not self.generated:
            return
        if "is" in self.metrics:
            self.is_probs.append((first_index, self.detectors["c3d"][0].probs(video).double().numpy()))
        if "clipsim" in self.metrics:
            from minivdit.eval.clip import frame_similarity

            s, c = frame_similarity(self.detectors["clip"][0].embed(video))
            self.clip_sum += float(s.double().sum())
            self.clip_count += float(c.double().sum())
        if "syn_acc" in self.metrics and labels is not None:
            probs = self.detectors["synthetic"][0].probs(video)
            self.correct += int((probs.argmax(-1) == labels.cpu()).sum())
            self.labelled += len(labels)
        if "syn_count" in self.metrics and labels is not None:
            from minivdit.eval.synthetic import count_objects, expected_objects

            right = count_objects(video).cpu() == expected_objects(labels.cpu())[:, None]  # [B, F]
            self.frames_right += int(right.sum())
            self.frames_counted += right.numel()

    def all_reduce(self) -> None:
        """Merge every rank's sums (and gather the IS probabilities) into every rank."""
        import torch.distributed as tdist

        if not (tdist.is_available() and tdist.is_initialized()) or tdist.get_world_size() == 1:
            return
        for det in sorted(self.stats):
            if self.stats[det] is None:  # this rank saw no clips: join the reduction with zeros
                self.stats[det] = FeatureStats(self.detectors[det][0].dim)
            self.stats[det].all_reduce()
        t = torch.tensor(
            [self.clip_sum, self.clip_count, self.correct, self.labelled, self.clips]
            + [self.frames_right, self.frames_counted],
            dtype=torch.float64,
        )
        if tdist.get_backend() == "nccl":
            t = t.cuda()
        tdist.all_reduce(t)
        self.clip_sum, self.clip_count, correct, labelled, clips, right, counted = t.cpu().tolist()
        self.frames_right, self.frames_counted = int(right), int(counted)
        self.correct, self.labelled, self.clips = int(correct), int(labelled), int(clips)
        if "is" in self.metrics:
            parts: list = [None] * tdist.get_world_size()
            tdist.all_gather_object(parts, self.is_probs)
            self.is_probs = [p for part in parts for p in part]


def metric_values(real: Measure | None, fake: Measure, metrics, protocol: Protocol) -> dict[str, float]:
    out: dict[str, float] = {}
    for m in metrics:
        det = DETECTOR_OF[m]
        if m in REAL_METRICS:
            out[m] = fd_from_stats(real.stats[det], fake.stats[det], ddof=protocol.ddof)
        elif m == "is":
            probs = np.concatenate([p for _, p in sorted(fake.is_probs, key=lambda x: x[0])])
            out["is"], out["is_std"] = inception_score(probs, variant=protocol.is_variant)
        elif m == "clipsim":
            out["clipsim"] = fake.clip_sum / max(fake.clip_count, 1.0)
        elif m == "syn_acc":
            if fake.labelled == 0:
                raise ValueError(
                    "syn_acc needs class-conditional generated clips (labels); none were labelled"
                )
            out["syn_acc"] = fake.correct / fake.labelled
        elif m == "syn_count":
            if fake.frames_counted == 0:
                raise ValueError("syn_count needs class-conditional generated clips (labels); none had one")
            out["syn_count"] = fake.frames_right / fake.frames_counted
    return out


# ---------------------------------------------------------------------------------------------- clips


def to_uint8(video: Tensor) -> Tensor:
    """float ``[B, F, 3, H, W]`` in [-1, 1] -> uint8, rounding as StyleGAN-V (``x·127.5 + 128``, floored)."""
    return (video.float() * 127.5 + 128).clamp(0, 255).to(torch.uint8)


@dataclass
class RealClips:
    """The reference clips: ``count`` items, each ``clip(i) -> uint8 [F, 3, R, R]`` (seeded window), with
    ``labels`` and ``identity`` (what the cache key hashes: the file list with sizes, or the synthetic
    set)."""

    count: int
    clip: Callable[[int], Tensor]
    labels: np.ndarray
    identity: dict
    skipped: list[str]
    source: dict | None = None
    """Which dataset and folder (recorded with the metrics as ``real_data``)."""
    split_labels: np.ndarray | None = None
    """The label of every item of the real split, before the subset (``label_rule="real_items"``)."""


def real_from_folder(root: str, protocol: Protocol, num_frames: int, resolution: int) -> RealClips:
    """Every video / frame folder under ``root`` (sorted by path), subset and windows by the protocol."""
    from minivdit.data.video import scan

    if not root or not os.path.isdir(root):
        raise ValueError(f"--real {root!r}: not a folder of videos or frame folders")
    sources = scan(root)
    if not sources:
        raise ValueError(f"--real {root}: no videos or frame folders found")
    labels = np.zeros(len(sources), np.int64)
    return _real_from_sources(sources, labels, 0, protocol, num_frames, resolution, root)


def real_data_config(data_cfg: dict, root: str | None = None, *, flag: str = "--data-root") -> DataConfig:
    """The dataset the real clips come from, for a run whose ``data`` config is ``data_cfg``: that dataset
    itself, or for a run trained on shards (``--data.dataset shards``) the dataset the shards were made from,
    which ``tools/make_shards.py`` and ``tools/cache_latents.py`` record in meta.json's ``source``. Shards
    hold fixed, augmented training clips (or only latents), never the protocol's split and windows, so the
    reference is always the source videos. ``root`` (the ``flag`` a user sets) replaces the recorded root:
    the videos may live elsewhere on this machine. The synthetic dataset needs no files. ValueError naming
    ``flag`` when the real videos cannot be found."""
    from minivdit.config import from_dict
    from minivdit.data.shards import read_meta

    cfg = from_dict(DataConfig, data_cfg)
    seen = []
    while cfg.dataset == "shards":  # shards made from shards: follow the chain to the videos
        seen.append(cfg.root)
        try:
            source = read_meta(cfg.root).get("source") if cfg.root else None
        except ValueError as e:
            raise ValueError(
                f"the run trained on shards ({cfg.root}): the real clips come from the dataset the shards "
                f"were made from, named in their meta.json, which cannot be read ({e}); evaluate where the "
                f"shard folder's meta.json is, or train with --data.dataset <the source>"
            ) from None
        if not source:
            raise ValueError(
                f"{cfg.root}/meta.json records no source dataset: the real clips cannot be found; remake the "
                f"shards with tools/make_shards.py or tools/cache_latents.py"
            )
        # only DataConfig's fields: meta.json may carry keys of another minivdit version
        cfg = from_dict(DataConfig, {k: v for k, v in source.items() if k in DataConfig.__dataclass_fields__})
        if cfg.dataset == "shards" and cfg.root in seen:
            raise ValueError(f"{cfg.root}/meta.json: the shards name themselves as their source")
    if cfg.dataset == "synthetic":
        return cfg
    cfg = replace(cfg, root=root or cfg.root)
    if not cfg.root or not os.path.isdir(cfg.root):
        made = f" (recorded in the meta.json of the shards {seen[-1]})" if seen else ""
        raise ValueError(
            f"evaluation needs the real {cfg.dataset} videos: {cfg.root!r}{made} is not a folder; give "
            f"{flag} DIR, the {cfg.dataset} folder on this machine (README, section Datasets)"
        )
    return cfg


def real_from_dataset(
    data_cfg: dict,
    protocol: Protocol,
    num_frames: int,
    resolution: int,
    root: str | None,
    *,
    flag: str = "--data-root",
):
    """The run's real dataset (:func:`real_data_config`: its ``data`` config, or the source of its shards) at
    the protocol's split."""
    from minivdit.data import build_dataset
    from minivdit.data.synthetic import SyntheticVideos

    cfg = real_data_config(data_cfg, root, flag=flag)
    if cfg.dataset == "synthetic":
        n = min(protocol.num_real, cfg.synthetic_size)
        ds = SyntheticVideos(num_frames, resolution, cfg.num_classes, cfg.synthetic_size, cfg.seed)
        idx, _ = protocols.select_real(
            protocol, np.arange(cfg.synthetic_size) % cfg.num_classes, cfg.num_classes
        )
        identity = {
            "synthetic": {
                "frames": num_frames,
                "size": resolution,
                "classes": cfg.num_classes,
                "size_of_set": cfg.synthetic_size,
                "seed": cfg.seed,
                "indices": len(idx),
            }
        }
        return RealClips(
            n,
            lambda i: to_uint8(ds.get(int(idx[i]))["video"][None])[0],
            np.asarray(idx) % cfg.num_classes,
            identity,
            [],
            {"dataset": "synthetic", "num_classes": cfg.num_classes, "seed": cfg.seed},
            np.arange(cfg.synthetic_size) % cfg.num_classes,
        ), (
            np.bincount(np.asarray(idx) % cfg.num_classes, minlength=cfg.num_classes)
            if protocol.real_subset == "class_proportional"
            else None
        )
    cfg = replace(
        cfg,
        split=protocol.real_split,
        num_frames=num_frames,
        frame_interval=protocol.real_stride,
        image_size=resolution,
        flip=False,
    )
    ds = build_dataset(cfg)
    labels = np.asarray(ds.labels, np.int64)
    num_classes = getattr(ds, "num_classes", 0)
    real = _real_from_sources(ds.sources, labels, num_classes, protocol, num_frames, resolution, cfg.root)
    real.source = {"dataset": cfg.dataset, "root": cfg.root}
    real.split_labels = labels
    counts = None
    if protocol.real_subset == "class_proportional":
        counts = np.bincount(real.labels, minlength=num_classes)
    return real, counts


def _real_from_sources(sources, labels, num_classes, protocol, num_frames, resolution, root) -> RealClips:
    from minivdit.data.video import BadVideo, ClipSpec, sample_clip, source_path

    idx, _ = protocols.select_real(protocol, labels, max(num_classes, 1))
    spec = ClipSpec(
        num_frames=num_frames, frame_interval=protocol.real_stride, image_size=resolution, flip=False
    )
    skipped: list[str] = []

    def clip(i: int) -> Tensor:
        src = sources[int(idx[i])]
        rng = np.random.default_rng([protocol.seed, 2, int(idx[i])])  # the window: a function of the video
        try:
            return to_uint8(sample_clip(src, spec, rng)[None])[0]
        except BadVideo as e:
            raise ValueError(f"real clip {source_path(src)}: {e.reason}") from None

    files = []
    for s in (sources[int(i)] for i in idx):
        p = source_path(s)
        size = os.path.getsize(p) if os.path.isfile(p) else len(s)
        files.append([os.path.relpath(p, root), size])
    return RealClips(len(idx), clip, labels[idx], {"files": files}, skipped)


def fake_from_folder(root: str, count: int, num_frames: int, resolution: int) -> tuple[int, Callable]:
    """The first ``count`` videos / frame folders under ``root`` (sorted), first ``num_frames`` frames
    each. The overview files ``python -m minivdit.sample`` and training write next to the clips
    (``minivdit.sample.OVERVIEW_FILES``: ``grid.mp4``, ``grid.gif``, ``contact.png``) are not clips and are
    skipped, so a samples folder is given as it is."""
    from minivdit.data.video import BadVideo, FrameFolder, read_folder_frames, read_frames, scan, source_path
    from minivdit.data.video import num_frames as frames_in
    from minivdit.sample import OVERVIEW_FILES

    if not root or not os.path.isdir(root):
        raise ValueError(f"--fake {root!r}: not a folder of videos or frame folders")
    sources = scan(root, skip=OVERVIEW_FILES)[:count]
    if not sources:
        raise ValueError(f"--fake {root}: no videos or frame folders found")

    def clip(i: int) -> Tensor:
        src = sources[i]
        try:
            n = frames_in(src)
            if n < num_frames:
                raise ValueError(
                    f"generated clip {source_path(src)} has {n} frames, fewer than --num-frames {num_frames}"
                )
            idx = list(range(num_frames))
            frames = read_folder_frames(src, idx) if isinstance(src, FrameFolder) else read_frames(src, idx)
        except BadVideo as e:
            raise ValueError(f"generated clip {source_path(src)}: {e.reason}") from None
        video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)[None]  # [1, F, 3, H, W]
        return resize_short_centre_crop(video, resolution)[0]

    return len(sources), clip


# ---------------------------------------------------------------------------------------------- running


class Progress:
    """A rank-0 progress line with throughput and ETA, at most every ``interval`` seconds."""

    def __init__(self, what: str, total: int, enabled: bool, interval: float = 10.0):
        self.what, self.total, self.enabled, self.interval = what, total, enabled, interval
        self.t0 = self.last = time.perf_counter()

    def update(self, done: int) -> None:
        """``done``: clips this rank has measured; all ranks move at about the same speed."""
        done = min(self.total, done * _rank_world()[1])
        now = time.perf_counter()
        if not self.enabled or (now - self.last < self.interval and done < self.total):
            return
        self.last = now
        rate = done / max(now - self.t0, 1e-9)
        eta = time.strftime("%H:%M:%S", time.gmtime(max(0.0, (self.total - done) / rate))) if rate else "?"
        print(
            f"eval {self.what}: {done}/{self.total} clips | {rate:.2f} clips/s | eta {eta}",
            file=sys.stderr,
            flush=True,
        )


def _rank_world() -> tuple[int, int]:
    import torch.distributed as tdist

    if tdist.is_available() and tdist.is_initialized():
        return tdist.get_rank(), tdist.get_world_size()
    return 0, 1


def chunks(count: int, batch_size: int) -> Iterator[tuple[int, int, bool]]:
    """This rank's chunks ``(start, stop, real)``; every rank yields the same number (padding with its last
    chunk, ``real=False``) so collective model calls stay in step."""
    rank, world = _rank_world()
    n = math.ceil(count / batch_size)
    for j in range(math.ceil(n / world)):
        k = j * world + rank
        real = k < n
        k = k if real else max(0, min(n - 1, (j - 1) * world + rank))
        yield k * batch_size, min(count, (k + 1) * batch_size), real


def measure_clips(
    what: str, count: int, clip: Callable[[int], Tensor], measure: Measure, batch_size: int, show: bool
) -> None:
    """Feed this rank's chunks of ``clip(i)`` (uint8 ``[F, 3, R, R]``) to ``measure``; a progress line."""
    progress, done = Progress(what, count, show), 0
    for lo, hi, is_real in chunks(count, batch_size):
        if not is_real:
            continue
        measure.add(torch.stack([clip(i) for i in range(lo, hi)]), first_index=lo)
        done += hi - lo
        progress.update(done)


def measure_real(real: RealClips, measure: Measure, batch_size: int, show: bool) -> None:
    """The real side (not called when the cache has the statistics)."""
    measure_clips("real", real.count, real.clip, measure, batch_size, show)


def real_stats_cached(
    real: RealClips,
    detectors: dict,
    metrics,
    protocol: Protocol,
    cfg: EvalConfig,
    show: bool,
    num_frames: int,
    resolution: int,
) -> Measure:
    """The real side's statistics, from ``cfg.cache_dir`` when a cache with the same key exists."""
    measure = Measure(detectors, metrics, generated=False)
    if not measure.stats:
        return measure
    keys = {}
    for det in measure.stats:
        fields = {
            "protocol": {
                k: getattr(protocol, k)
                for k in ("name", "num_real", "real_split", "real_subset", "real_stride", "seed")
            },
            "num_frames": num_frames,
            "resolution": resolution,
            "data": real.identity,
            "detector": det,
            "weights": detectors[det][1],
        }
        keys[det] = (
            Path(cfg.cache_dir) / f"{protocol.name}-{det}-{protocols.protocol_hash(fields)}.npz"
            if cfg.cache_dir
            else None
        )
    if all(p is not None and p.is_file() for p in keys.values()):
        for det, p in keys.items():
            measure.stats[det], _ = FeatureStats.load(p)
        measure.clips = next(iter(measure.stats.values())).count
        log.info(f"eval: real statistics from the cache {cfg.cache_dir}")
        return measure
    measure_real(real, measure, cfg.batch_size, show)
    measure.all_reduce()
    rank, _ = _rank_world()
    if rank == 0 and cfg.cache_dir:
        Path(cfg.cache_dir).mkdir(parents=True, exist_ok=True)
        for det, p in keys.items():
            measure.stats[det].save(p, identity=json.dumps(real.identity)[:100000])
    return measure


def check_count(what: str, used: int, asked: int, strict: bool) -> None:
    if used < asked:
        msg = (
            f"eval: only {used} {what} clips available, {asked} asked; using {used} "
            "(StyleGAN-V caps the count)"
        )
        if strict:
            raise ValueError(msg + " (--strict)")
        log.warning(msg)


# Record keys that say what happened or where, not what was measured: two records that differ only in them
# hold the same measurement (ranks give the same numbers; the counts follow from the settings; training adds
# the step; ``frames`` names where the clips went). ``checkpoint`` is compared apart (settings_differences).
_OUTCOME_KEYS = ("num_real_used", "num_fake_used", "world_size", "minivdit_version", "step", "frames")


def _leaves(d: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _leaves(v, f"{prefix}{k}.")
        else:
            out[prefix + k] = v
    return out


def settings_differences(old: dict, new: dict) -> dict[str, tuple[object, object]]:
    """``{setting: (old value, new value)}`` where two protocol records measured differently. Only keys both
    records hold are compared (a record written by another minivdit version may lack some); checkpoints are
    compared by resolved path."""
    a = {k: v for k, v in _leaves(old).items() if k.split(".")[0] not in _OUTCOME_KEYS}
    b = {k: v for k, v in _leaves(new).items() if k.split(".")[0] not in _OUTCOME_KEYS}
    out = {}
    for k in sorted(a.keys() & b.keys()):
        x, y = a[k], b[k]
        if k == "checkpoint":
            if x is None or y is None:  # training records none: its eval/step_N is that step by construction
                continue
            x, y = str(Path(x).resolve()), str(Path(y).resolve())
        if json.dumps(x, default=str) != json.dumps(y, default=str):
            out[k] = (a[k], b[k])
    return out


def _tag(diff: dict[str, tuple[object, object]]) -> str:
    """``steps=50-cfg_scale=1`` from the differing settings' new values (a detector's weights: the first 8
    hex digits of their sha256); the same name and value once (the protocol and the sampler both hold
    ``cfg_scale``)."""
    parts = []
    for k, (_, v) in diff.items():
        *path, name = k.split(".")
        if name == "sha256" and path:
            name, v = path[-1], str(v)[:8]
        if isinstance(v, float):
            v = f"{v:g}"
        elif isinstance(v, list | tuple):
            v = "+".join(map(str, v))
        part = re.sub(r"[^A-Za-z0-9._+=-]", "_", f"{name}={v}")
        if part not in parts:
            parts.append(part)
    return "-".join(parts)


def _read_record(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text()).get("protocol")
    except (OSError, ValueError, AttributeError):
        return None


def metrics_path(out: str | Path, record: dict) -> Path:
    """Where metrics of ``record`` go when ``out`` is asked: ``out`` itself unless it holds metrics of other
    settings (``settings_differences``); those are never replaced. The new metrics then go beside, in a file
    named by what differs (``metrics-steps=50-cfg_scale=1.json``; with a short hash when that name holds
    yet other settings or grows long), and one logged line says so. The same settings replace the file (a
    rerun of the same measurement), also logged."""
    out = Path(out)
    if not out.exists():
        return out
    old = _read_record(out)
    diff = settings_differences(old, record) if old is not None else {"unreadable": (None, None)}
    if not diff:
        log.info(f"eval: replacing {out} (a rerun with the same settings)")
        return out
    tag = _tag(diff) if old is not None else ""
    digest = protocols.protocol_hash({k: v for k, v in record.items() if k not in _OUTCOME_KEYS})[:8]
    names = [f"{out.stem}-{tag}{out.suffix}", f"{out.stem}-{tag}-{digest}{out.suffix}"] if tag else []
    names = [n for n in names if len(n) <= 100] + [f"{out.stem}-{digest}{out.suffix}"]
    for name in names:
        beside = out.with_name(name)
        prior = _read_record(beside) if beside.exists() else None
        if not beside.exists() or (prior is not None and not settings_differences(prior, record)):
            break
    else:
        raise ValueError(f"{out}: every name for these metrics ({names}) holds other or unreadable metrics")
    shown = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in diff.items()) if old is not None else "unreadable"
    log.warning(f"eval: {out} holds metrics of other settings ({shown}): not replacing it; writing {beside}")
    return beside


def frames_folder(metrics: Path) -> Path:
    """Where ``keep_frames`` puts the generated clips of the metrics file ``metrics``: beside it,
    ``metrics.json`` -> ``frames/``, ``metrics-<tag>.json`` -> ``frames-<tag>/``, another name ``X.json``
    -> ``X_frames/``; one folder per metrics file, so frames are replaced only with their metrics."""
    stem = metrics.stem
    name = "frames" + stem[len("metrics") :] if stem.startswith("metrics") else f"{stem}_frames"
    return metrics.parent / name


def frames_staging(out: str | Path) -> Path:
    """The folder ``keep_frames`` writes into while measuring (every rank writes its own clips), moved by
    :func:`place_frames` once the metrics file's name is known (``metrics_path`` needs the record)."""
    out = Path(out)
    return out.parent / f".{out.stem}.frames.partial"


def place_frames(staging: Path, metrics: Path) -> Path:
    """Move the kept frames from ``staging`` to ``frames_folder(metrics)`` (replacing the frames of the
    metrics file just replaced, if any) and log where they are."""
    import shutil

    final = frames_folder(metrics)
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    log.info(f"eval: generated clips kept as lossless PNG frames in {final.resolve()}")
    return final


def write_metrics(out: str | Path, values: dict, record: dict, *, frames: Path | None = None) -> Path:
    """Write ``{values…, "protocol": record}`` to ``metrics_path(out, record)`` (never over metrics of other
    settings); returns the path written. ``frames``: the staging folder of the kept frames
    (:func:`frames_staging`), moved beside the metrics (:func:`place_frames`) and named in the record."""
    path = metrics_path(out, record)
    if frames is not None:
        record = record | {"frames": str(place_frames(frames, path))}
    path.parent.mkdir(parents=True, exist_ok=True)
    durable.write_text(path, json.dumps({**values, "protocol": record}, indent=2))
    return path


@torch.no_grad()
def evaluate_model(
    cfg: EvalConfig,
    *,
    model: torch.nn.Module,
    objective,
    vae: torch.nn.Module | None,
    run_cfg: dict,
    device: torch.device,
    metrics=None,
    frames_dir: Path | None = None,
    show: bool = True,
    weights: str = "ema",
    root_flag: str = "--data-root",
) -> tuple[dict[str, float], dict]:
    """Sample ``num_gen`` clips from ``model`` (EMA weights, the run's objective and VAE) under the
    protocol and measure them against the run's real data (:func:`real_data_config`: for a run trained on
    shards, the dataset they were made from). Returns ``(values, record)``; collective across ranks.

    ``weights`` ("ema" or "raw") is recorded with the sampler; ``root_flag`` is the flag that sets
    ``cfg.data_root`` where the caller reads it (``--eval.data-root`` in training), named when the real
    videos cannot be found. ``frames_dir``: write every generated clip there as PNG frames."""
    from minivdit.sample import decode_latents, generate

    protocol = cfg.resolved_protocol()
    metrics = tuple(metrics or cfg.chosen_metrics)
    model_cfg = model.cfg
    pixel_frames = run_cfg["data"]["num_frames"]
    num_frames = protocol.num_frames or pixel_frames
    resolution = protocol.resolution or min(frame_size(run_cfg["data"]["image_size"]))  # short side
    detectors = load_detectors(cfg, metrics, device)
    check_frames(detectors, num_frames)
    rank, world = _rank_world()

    real = counts = None
    if any(m in REAL_METRICS for m in metrics) or (protocol.needs_real_labels and model_cfg.num_classes):
        real, counts = real_from_dataset(
            run_cfg["data"], protocol, num_frames, resolution, cfg.data_root, flag=root_flag
        )
        check_count("real", real.count, protocol.num_real, cfg.strict)
    real_measure = (
        real_stats_cached(real, detectors, metrics, protocol, cfg, show and rank == 0, num_frames, resolution)
        if real is not None
        else None
    )

    split_labels = real.split_labels if real is not None else None
    labels_all = protocols.fake_labels(protocol, model_cfg.num_classes, counts, split_labels)
    if labels_all is None and {"syn_acc", "syn_count"} & set(metrics):
        log.info("eval: syn_acc/syn_count skipped: the model is unconditional (they need the classes)")
        metrics = tuple(m for m in metrics if m not in ("syn_acc", "syn_count"))
    fake = Measure(detectors, metrics, generated=True)
    shape = (model_cfg.num_frames, model_cfg.in_channels, *model_cfg.input_size)
    progress = Progress("generated", protocol.num_fake, show and rank == 0)
    done = 0
    for lo, hi, is_real in chunks(protocol.num_fake, cfg.batch_size):
        labels = torch.from_numpy(labels_all[lo:hi]) if labels_all is not None else None
        seed = int(np.random.SeedSequence([protocol.seed, 3, lo]).generate_state(1)[0] >> 1)
        videos = generate(
            model,
            objective,
            labels=labels,
            shape=(hi - lo, *shape),
            steps=cfg.steps,
            cfg_scale=protocol.cfg_scale,
            seed=seed,
            device=device,
            precision=cfg.precision,
            noise=clip_noise(protocol.seed, range(lo, hi), shape),
        )
        if vae is not None:
            videos = decode_latents(vae, videos, device, cfg.precision)
        if not is_real:
            continue
        if videos.shape[1] < num_frames:
            raise ValueError(
                f"the model generates {videos.shape[1]} frames, fewer than the protocol's {num_frames}"
            )
        clips = resize_short_centre_crop(to_uint8(videos[:, :num_frames]).cpu(), resolution)
        if frames_dir is not None:
            _write_frames(frames_dir, clips, lo)
        fake.add(clips, labels, first_index=lo)
        done += hi - lo
        progress.update(done)
    return _finish(
        protocol,
        metrics,
        real_measure,
        fake,
        detectors,
        num_frames,
        resolution,
        checkpoint=run_cfg.get("_ckpt"),
        sampler={
            "steps": cfg.steps,
            "cfg_scale": protocol.cfg_scale,
            # the starting noise is per clip; a stochastic sampler's step noise is per chunk of batch_size
            "batch_size": cfg.batch_size,
            "objective": run_cfg["objective"].get("_type"),
            "precision": cfg.precision,
            "weights": weights,
        },
        real_data=real.source if real is not None else None,
        world_size=world,
    )


def clip_noise(seed: int, indices: range, shape: tuple[int, ...]) -> Tensor:
    """The starting noise ``[len(indices), *shape]`` of generated clips, each drawn from its own generator
    seeded by ``(seed, clip index)``: a clip's sample does not depend on the batch size or the rank count
    (for deterministic samplers: Euler, Heun, DDIM η = 0)."""
    out = []
    for i in indices:
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, 4, i]).generate_state(1)[0] >> 1))
        out.append(torch.randn(shape, generator=g))
    return torch.stack(out)


def _finish(
    protocol,
    metrics,
    real_measure: Measure | None,
    fake: Measure,
    detectors,
    num_frames,
    resolution,
    /,
    **used,
):
    """Merge the ranks' generated-side sums, compute the values and the protocol record."""
    fake.all_reduce()
    values = metric_values(real_measure, fake, metrics, protocol)
    record = protocols.record(
        protocol,
        metrics=list(metrics),
        num_frames_used=num_frames,
        resolution_used=resolution,
        num_real_used=real_measure.clips if real_measure is not None else 0,
        num_fake_used=fake.clips,
        detectors={d: {"sha256": h} for d, (_, h) in detectors.items()},
        **used,
    )
    return values, record


def _write_frames(root: Path, clips: Tensor, first: int) -> None:
    from PIL import Image

    for i, clip in enumerate(clips):
        d = root / f"{first + i:05d}"
        d.mkdir(parents=True, exist_ok=True)
        for f, frame in enumerate(clip.permute(0, 2, 3, 1).numpy()):
            Image.fromarray(frame).save(d / f"{f:03d}.png")


def evaluate_folders(
    cfg: EvalConfig,
    *,
    real_dir: str | None,
    fake_dir: str,
    num_frames: int,
    resolution: int,
    device: torch.device,
    show: bool = True,
) -> tuple[dict[str, float], dict]:
    """Two folders of videos / frame folders under the protocol (``python -m minivdit.eval folders``)."""
    protocol = cfg.resolved_protocol()
    metrics = cfg.chosen_metrics
    for m in {"syn_acc", "syn_count"} & set(metrics):
        raise ValueError(f"{m} needs the classes the clips were sampled for: use `run` on a checkpoint")
    absent = missing_weights(cfg, metrics)
    if absent:
        m, flag = next(iter(absent.items()))
        raise ValueError(f"metric {m} needs {flag}: " + _PUBLISHED[DETECTOR_OF[m]])
    detectors = load_detectors(cfg, metrics, device)
    check_frames(detectors, num_frames)
    real_measure = None
    if cfg.real_stats:
        real_measure = _published_stats(cfg.real_stats, detectors, metrics)
    elif any(m in REAL_METRICS for m in metrics):
        if not real_dir:
            raise ValueError(f"metrics {[m for m in metrics if m in REAL_METRICS]} need --real")
        real = real_from_folder(real_dir, protocol, num_frames, resolution)
        check_count("real", real.count, protocol.num_real, cfg.strict)
        real_measure = real_stats_cached(
            real, detectors, metrics, protocol, cfg, show, num_frames, resolution
        )
    count, clip = fake_from_folder(fake_dir, protocol.num_fake, num_frames, resolution)
    check_count("generated", count, protocol.num_fake, cfg.strict)
    fake = Measure(detectors, metrics, generated=True)
    measure_clips("generated", count, clip, fake, cfg.batch_size, show)
    return _finish(
        protocol,
        metrics,
        real_measure,
        fake,
        detectors,
        num_frames,
        resolution,
        real=str(real_dir) if real_dir else None,
        real_stats=cfg.real_stats,
        fake=str(fake_dir),
    )


def _published_stats(path: str, detectors: dict, metrics) -> Measure:
    fd = [m for m in metrics if m in REAL_METRICS]
    if len(fd) != 1:
        raise ValueError(f"--real-stats {path}: one detector's statistics; ask for one of {REAL_METRICS}")
    stats = FeatureStats.from_cdfvd_pkl(path) if path.endswith(".pkl") else FeatureStats.load(path)[0]
    measure = Measure(detectors, fd, generated=False)
    measure.stats[DETECTOR_OF[fd[0]]] = stats
    measure.clips = stats.count
    return measure


_PUBLISHED = {
    "i3d": "i3d_torchscript.pt, published by StyleGAN-V (universome/stylegan-v)",
    "videomae": "vit_g_hybrid_pt_1200e_ssv2_ft.pth, published by OpenGVLab/VideoMAEv2 (used by cd-fvd)",
    "inception": "pt_inception-2015-12-05-6726825d.pth, published by mseitzer/pytorch-fid",
    "c3d": "conv3d_deepnetA_ucf.npz + mean2.npz, published by pfnet-research/tgan2 (rezoo/tgan2 releases)",
    "clip": "a local openai/clip-vit-base-patch32 folder (Hugging Face)",
}
