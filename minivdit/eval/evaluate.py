"""The evaluation engine: clips -> detectors -> statistics -> metrics, for two folders, a checkpoint, or a
model in training.

Flow (DESIGN.md §8):

    real clips  (RealClips: a folder, a dataset split, or the synthetic set; protocol subset + seeded windows;
                 short videos left out before the subset, corrupt ones replaced by the subset's next spare)
        └─▶ detectors ─▶ FeatureStats per detector (cached on disk, keyed by protocol + file list + resize +
                         detector + minivdit version; the file holds the real clip count)
    fake clips  (a folder's first frames, or samples of the EMA model with the run's objective and VAE)
        └─▶ detectors ─▶ FeatureStats / IS probabilities / CLIP sums / syn_acc counts
    metrics = Fréchet distances (fvd, cdfvd, fid, syn_fvd), IS, clipsim, syn_acc  + the protocol record

Clips reach the detectors as ``uint8 [B, F, 3, R, R]``: the protocol's frames, resized to the protocol's
resolution R; a clip already R×R is not resampled. Real frames of a dataset are resized with the dataset's
own mode, as in training (SkyTimelapse: a centre crop on the short side, then a resize; the others: the
short side to R, then a centre crop); folders and generated clips with the latter. Generated clips are
never written through a lossy codec on the way (anchors-eval §7); ``keep_frames`` writes them as PNG.

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
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from minivdit import durable
from minivdit.config import check_types
from minivdit.data import DataConfig, frame_size
from minivdit.eval import emulate, protocols
from minivdit.eval.detector import sha256_file
from minivdit.eval.emulate import Emulation
from minivdit.eval.frechet import FeatureStats, fd_from_stats, inception_score, tganv2_inception_score
from minivdit.eval.protocols import DETECTOR_OF, REAL_METRICS, LabelRule, Metric, Protocol

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
    num_frames: int | None = None
    """Frames per clip given to the detectors (None: the protocol's; where it has none, the run's, and
    ``folders`` needs it given)."""
    resolution: int | None = None
    """Side the clips are resized to before the detectors (None: the protocol's; where it has none, the run's
    short side, or 256 in ``folders``)."""
    real_split: Literal["train", "test", "all"] | None = None
    """The reference split of the run's dataset (None: the protocol's; where it has none, the run's own
    ``data.split``)."""
    real_subset: Literal["first", "random", "class_proportional"] | None = None
    """Which real videos (None: the protocol's): the first N in sorted order, N at random (seeded), or N with
    the split's class shares."""
    real_stride: int | None = None
    """Frame stride inside each real window (None: the protocol's; align4gen-*: the run's
    ``data.frame_interval``, which ``folders`` needs given: the interval the model was trained at)."""
    label_rule: LabelRule | None = None
    """Labels of a class-conditional model's clips (None: the protocol's): real_items (StyleGAN-V), uniform
    (Latte), class_proportional (align4gen-ucf), cycle (synthetic); ``protocols.Protocol.label_rule``."""
    ddof: Literal[0, 1] | None = None
    """Covariance ddof of the Fréchet distances (None: the protocol's, 0 as StyleGAN-V and cd-fvd)."""
    is_variant: Literal["stylegan-v", "tganv2"] | None = None
    """IS splits (None: the protocol's): StyleGAN-V's 10 shuffled splits or TGANv2's single split."""
    is_draws: int | None = None
    """tganv2 IS: mean ± std over this many disjoint draws of ``is_draw_size`` clips (None: the protocol's,
    10 as TGANv2); fewer clips than ``is_draws · is_draw_size``: one draw, ``is_std`` NaN."""
    is_draw_size: int | None = None
    """tganv2 IS: clips per draw (None: the protocol's, 2,048 as TGANv2)."""
    emulate: Emulation | None = None
    """Prepare clips as a reference did (None: the protocol's, ``none``): ``stylegan-v`` / ``latte``
    (Lanczos + JPEG-75 real frames; JPEG-75, after Latte's mp4, generated), ``cd-fvd`` (its loader, for its
    published ``--real-stats`` pickles); ``minivdit/eval/emulate.py``."""
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
    """Fewer real clips than asked is an error instead of a warning, and so is a real video that cannot give
    a clip (shorter than frames × stride: otherwise left out before the subset; truncated or corrupt:
    otherwise replaced by the next video of the subset's seeded order; both counted in ``real_bad``)."""
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
        self.resolved_protocol()  # the overrides are checked where the protocol's fields are (ValueError)

    def resolved_protocol(self) -> Protocol:
        """The named protocol with every protocol field this config sets (not None) in its place: the one
        way ``run``, ``folders`` and training build their overrides (issue 18 §1.13)."""
        return protocols.get_protocol(self.protocol, **protocol_overrides(self))

    @property
    def chosen_metrics(self) -> tuple[str, ...]:
        return tuple(self.metrics) or self.resolved_protocol().metrics


_PROTOCOL_FIELD_OF = {"num_gen": "num_fake"}
"""EvalConfig fields named otherwise in ``Protocol`` (``--num-gen``: the generated clips)."""


def protocol_overrides(cfg) -> dict:
    """``{Protocol field: value}`` of every protocol field ``cfg`` (an ``EvalConfig`` or a subcommand of
    ``python -m minivdit.eval``) holds under the field's name (``num_gen``: ``num_fake``), None where it
    leaves the protocol's value. A field added to ``Protocol`` and to ``EvalConfig`` under the same name is
    a flag of ``run``, ``folders`` and training at once."""
    names = {f.name for f in fields(Protocol)} - {"name", "metrics"}
    own = {_PROTOCOL_FIELD_OF.get(f.name, f.name): f.name for f in fields(cfg)}
    return {k: getattr(cfg, own[k]) for k in sorted(names & own.keys())}


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
            if protocol.is_variant == "tganv2":  # TGANv2's ± over independent draws (issue 18 §1.11)
                out["is"], out["is_std"], used = tganv2_inception_score(
                    probs, draws=protocol.is_draws, draw_size=protocol.is_draw_size
                )
                if used < protocol.is_draws:
                    log.warning(
                        f"eval: tganv2 IS over one draw of {min(len(probs), protocol.is_draw_size)} clips, "
                        f"is_std NaN: its {protocol.is_draws} draws need "
                        f"{protocol.is_draws * protocol.is_draw_size} generated clips (--num-gen), "
                        f"got {len(probs)}"
                    )
            else:
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
    """The reference clips: the protocol's subset of a split (``protocols.real_subset``) and how to read it.

    ``clip(slot)`` is the uint8 ``[F, 3, R, R]`` clip of the video in subset slot ``slot``: one window seeded
    by ``(seed, the video's index in the split)``, so a video's window does not depend on which others are
    chosen. A video that cannot give one raises ``BadVideo``; :meth:`replace` then puts the next spare of
    its group in the slot (:func:`measure_real`)."""

    read: Callable[[int], Tensor]
    """Video index (into ``labels``) -> its clip (``BadVideo`` when it cannot give one)."""
    subset: protocols.RealSubset
    labels: np.ndarray
    """The label of every video of the split that is long enough (frames × stride; what the subset is drawn
    from; the real items of ``label_rule="real_items"``)."""
    num_classes: int
    protocol: Protocol
    """The protocol with the run's values filled in where it leaves them to the run (``real_split``,
    ``real_stride``): what the record and the cache key hold."""
    identity: dict
    """What the cache key hashes: the split's file list with sizes, before the short videos are left out
    (which are short follows from it and the window), or the synthetic set."""
    resize: str | None = "short_side_crop"
    """How the real frames were brought to the resolution: the dataset's own mode (``crop_resize`` for
    SkyTimelapse, as it trains); None for the synthetic set, drawn at the resolution."""
    short: list[str] = field(default_factory=list)
    """Videos shorter than frames × stride, left out before the subset was drawn."""
    corrupt: list[tuple[str, str]] = field(default_factory=list)
    """``(path, reason)`` of chosen videos that could not give a clip (each replaced by a spare)."""
    source: dict | None = None
    """Which dataset and folder (recorded with the metrics as ``real_data``)."""

    def __post_init__(self):
        self.slots = self.subset.chosen.astype(np.int64)  # video index per slot; -1: replaced, no spare left
        self._next_spare = [0] * len(self.subset.spares)

    @property
    def count(self) -> int:
        return int((self.slots >= 0).sum())

    @property
    def counts(self) -> np.ndarray | None:
        """The real subset's class counts (what ``label_rule="class_proportional"`` copies): the planned
        counts of a class-proportional subset, else the chosen videos' classes; None when unconditional."""
        if self.subset.counts is not None:
            return self.subset.counts
        if not self.num_classes:
            return None
        return np.bincount(self.labels[self.subset.chosen], minlength=self.num_classes)

    def clip(self, slot: int) -> Tensor:
        return self.read(int(self.slots[slot]))

    def replace(self, failed: list[tuple[int, str, str]]) -> list[int]:
        """Record the ``(slot, path, reason)`` of videos that could not give a clip and put the next spare
        of each one's group in its slot, in slot order (so every rank assigns the same spares); returns the
        slots to read again. A group without spares left loses the slot (the count drops, logged)."""
        again = []
        for slot, path, reason in sorted(failed):
            self.corrupt.append((path, reason))
            group = int(self.subset.group[slot])
            spares = self.subset.spares[group]
            if self._next_spare[group] < len(spares):
                self.slots[slot] = spares[self._next_spare[group]]
                self._next_spare[group] += 1
                again.append(slot)
            else:
                self.slots[slot] = -1
        return again


def real_from_folder(root: str, protocol: Protocol, num_frames: int, resolution: int) -> RealClips:
    """Every video / frame folder under ``root`` (sorted by path), subset and windows by the protocol, which
    must name its ``real_stride`` (``folders`` has no run to take it from)."""
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
) -> RealClips:
    """The run's real dataset (:func:`real_data_config`: its ``data`` config, or the source of its shards) at
    the protocol's split. Where the protocol leaves them to the run, the split is the run's own (Latte
    trains on all 13,320 UCF-101 videos and measures against all of them) and the window stride is the
    run's ``frame_interval`` (Latte's ``realdata_subsample_factor=3`` matches its training interval, issue
    18 §1.1 and §1.3): ``RealClips.protocol`` holds the values used. Real frames are resized with the
    dataset's own mode (its ``resize``, or its default: SkyTimelapse crops then resizes, §1.9)."""
    from minivdit.data import build_dataset
    from minivdit.data.synthetic import SyntheticVideos

    cfg = real_data_config(data_cfg, root, flag=flag)
    protocol = replace(
        protocol,
        real_split=protocol.real_split or cfg.split,
        real_stride=protocol.real_stride or cfg.frame_interval,
    )
    if cfg.dataset == "synthetic":
        ds = SyntheticVideos(num_frames, resolution, cfg.num_classes, cfg.synthetic_size, cfg.seed)
        labels = np.arange(cfg.synthetic_size) % cfg.num_classes  # the synthetic set's labels: index % K
        subset = protocols.real_subset(protocol, labels, cfg.num_classes)
        identity = {
            "synthetic": {
                "frames": num_frames,
                "size": resolution,
                "classes": cfg.num_classes,
                "size_of_set": cfg.synthetic_size,
                "seed": cfg.seed,
                "indices": len(subset.chosen),
            }
        }
        return RealClips(
            read=lambda v: to_uint8(ds.get(v)["video"][None])[0],
            subset=subset,
            labels=labels,
            num_classes=cfg.num_classes,
            protocol=protocol,
            identity=identity,
            resize=None,
            source={"dataset": "synthetic", "num_classes": cfg.num_classes, "seed": cfg.seed},
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
    real = _real_from_sources(
        ds.sources,
        np.asarray(ds.labels, np.int64),
        getattr(ds, "num_classes", 0),
        protocol,
        num_frames,
        resolution,
        cfg.root,
        resize=ds.spec.resize,
        short=ds.dropped.get("too_short", []),  # frame folders the dataset left out with the same window
    )
    real.source = {"dataset": cfg.dataset, "root": cfg.root}
    return real


def _real_from_sources(
    sources,
    labels: np.ndarray,
    num_classes: int,
    protocol: Protocol,
    num_frames: int,
    resolution: int,
    root: str,
    *,
    resize: str = "short_side_crop",
    short: list[str] = (),
) -> RealClips:
    """``sources`` (a split, ``labels`` per source) as ``RealClips``. Sources shorter than ``num_frames ×
    real_stride`` frames are left out *before* the subset is drawn, as StyleGAN-V does
    (``src/training/dataset.py``, ``VideoFramesFolderDataset.__init__``: ``discard_short_videos`` keeps
    ``len(frames) >= load_n_consecutive * subsample_factor``, which its metrics set; Latte the same,
    ``tools/metrics/frechet_video_distance.py`` L29-30).
    That threshold is s − 1 frames above one window's ``(F − 1)·s + 1``: a video in between could give a
    clip and is left out all the same, as there. This reads every video's frame count once (demuxing, no
    decoding, cached per file). A source whose length cannot be read is kept: it fails when read and is
    replaced. ``short``: sources the dataset already left out as shorter than one window (frame folders)."""
    from minivdit.data.video import BadVideo, ClipSpec, FrameFolder, sample_clip, source_path
    from minivdit.data.video import num_frames as frames_in

    if protocol.real_stride is None:
        raise ValueError(f"protocol {protocol.name}: real_stride is None (the run's), and there is no run")
    spec = ClipSpec(
        num_frames=num_frames,
        frame_interval=protocol.real_stride,
        image_size=resolution,
        resize=resize,
        flip=False,
    )
    files, keep, short = [], [], list(short)
    for i, s in enumerate(sources):
        p = source_path(s)
        size = len(s) if isinstance(s, FrameFolder) else os.path.getsize(p) if os.path.isfile(p) else -1
        files.append([os.path.relpath(p, root), size])
        try:
            long_enough = frames_in(s) >= num_frames * protocol.real_stride  # StyleGAN-V's threshold
        except BadVideo:  # its length is unknown: kept, so it is replaced like any other corrupt video
            long_enough = True
        if long_enough:
            keep.append(i)
        else:
            short.append(p)
    if not keep:
        raise ValueError(
            f"{root}: none of the {len(sources)} real videos has {num_frames} × {protocol.real_stride} "
            f"frames ({num_frames} frames at stride {protocol.real_stride}), e.g. {short[:3]}"
        )
    keep_idx = np.asarray(keep, np.int64)

    def read(v: int) -> Tensor:
        i = int(keep_idx[v])  # the index in the split: the window does not move when another video is short
        rng = np.random.default_rng([protocol.seed, 2, i])
        return to_uint8(sample_clip(sources[i], spec, rng)[None])[0]

    kept_labels = np.asarray(labels, np.int64)[keep_idx]
    return RealClips(
        read=read,
        subset=protocols.real_subset(protocol, kept_labels, max(num_classes, 1)),
        labels=kept_labels,
        num_classes=num_classes,
        protocol=protocol,
        identity={"files": files},
        resize=resize,
        short=short,
    )


def fake_from_folder(
    root: str, count: int, num_frames: int, resolution: int, emulation: Emulation = "none"
) -> tuple[int, Callable]:
    """The first ``count`` videos / frame folders under ``root`` (sorted), first ``num_frames`` frames
    each. The overview files ``python -m minivdit.sample`` and training write next to the clips
    (``minivdit.sample.OVERVIEW_FILES``: ``grid.mp4``, ``grid.gif``, ``contact.png``) are not clips and are
    skipped, so a samples folder is given as it is. ``emulation``: prepare them as that reference did
    (``emulate.generated_clips``; a video file stands for Latte's mp4, a frame folder is encoded first)."""
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
        encoded = not isinstance(src, FrameFolder)
        return emulate.generated_clips(video, resolution, emulation, encoded=encoded)[0]

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


def measure_real(
    real: RealClips, measure: Measure, batch_size: int, show: bool, strict: bool = False
) -> None:
    """The real side (not called when the cache has the statistics). A chosen video that cannot give a clip
    (truncated, corrupt, unreadable) is replaced by the next spare of the subset's seeded order
    (:meth:`RealClips.replace`), so the clip count holds; the ranks gather their failures after each pass
    and assign the spares in slot order, so any world size measures the same clips. ``strict``: such a
    video is an error instead (on every rank at once)."""
    from minivdit.data.video import BadVideo

    progress, done = Progress("real", real.count, show), 0
    slots = list(range(real.count))
    while slots:
        failed = []
        for lo, hi, is_real in chunks(len(slots), batch_size):
            if not is_real:
                continue
            clips = []
            for slot in slots[lo:hi]:
                try:
                    clips.append(real.clip(slot))
                except BadVideo as e:
                    failed.append((slot, e.path, e.reason))
            if clips:
                measure.add(torch.stack(clips))
            done += len(clips)
            progress.update(done)
        failed = _gather_all(failed)
        if failed and strict:
            _, path, reason = failed[0]
            raise ValueError(
                f"real clip {path}: {reason} ({len(failed)} such videos; --strict: without it each is "
                f"replaced by the next video of the subset's seeded order)"
            )
        slots = real.replace(failed)


def _gather_all(items: list) -> list:
    """Every rank's ``items``, concatenated and sorted, on every rank (one process: sorted ``items``)."""
    import torch.distributed as tdist

    if tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1:
        parts: list = [None] * tdist.get_world_size()
        tdist.all_gather_object(parts, items)
        items = [x for part in parts for x in part]
    return sorted(items)


def real_stats_cached(
    real: RealClips,
    detectors: dict,
    metrics,
    cfg: EvalConfig,
    show: bool,
    num_frames: int,
    resolution: int,
) -> Measure:
    """The real side's statistics, from ``cfg.cache_dir`` when a cache with the same key exists. The key
    hashes the protocol's real-side fields (the run's values filled in), the frames, resolution and resize
    mode, the split's file list, the detector's weights and minivdit's version (so a cache does not outlive
    a fix of the pipeline); the file holds the real clip count and the replaced videos, which the record
    reports (a detector over frames, Inception, counts frames, not clips)."""
    protocol = real.protocol
    measure = Measure(detectors, metrics, generated=False)
    if not measure.stats:
        return measure
    keys = {}
    for det in measure.stats:
        fields_ = {
            "protocol": {
                k: getattr(protocol, k)
                for k in ("name", "num_real", "real_split", "real_subset", "real_stride", "seed")
            },
            "num_frames": num_frames,
            "resolution": resolution,
            "resize": real.resize,
            "data": real.identity,
            "detector": det,
            "weights": detectors[det][1],
            "minivdit_version": protocols.minivdit_version(),
        }
        keys[det] = (
            Path(cfg.cache_dir) / f"{protocol.name}-{det}-{protocols.protocol_hash(fields_)}.npz"
            if cfg.cache_dir
            else None
        )
    if all(p is not None and p.is_file() for p in keys.values()):
        metas = []
        for det, p in sorted(keys.items()):
            measure.stats[det], meta = FeatureStats.load(p)
            metas.append(meta)
        if all("clips" in m and "corrupt" in m for m in metas):
            measure.clips = int(metas[0]["clips"])
            real.corrupt = [tuple(x) for x in json.loads(metas[0]["corrupt"])]
            log.info(f"eval: real statistics from the cache {cfg.cache_dir}")
            if cfg.strict and real.corrupt:
                path, reason = real.corrupt[0]
                raise ValueError(f"real clip {path}: {reason} (recorded in the cache; --strict)")
            _report_bad_real(real, measure.clips, show)
            return measure
        measure = Measure(detectors, metrics, generated=False)  # a file without the counts: measure again
    measure_real(real, measure, cfg.batch_size, show, strict=cfg.strict)
    measure.all_reduce()
    _report_bad_real(real, measure.clips, show)
    rank, _ = _rank_world()
    if rank == 0 and cfg.cache_dir:
        Path(cfg.cache_dir).mkdir(parents=True, exist_ok=True)
        for det, p in keys.items():
            measure.stats[det].save(
                p,
                identity=json.dumps(real.identity)[:100000],
                clips=str(measure.clips),
                corrupt=json.dumps(real.corrupt),
            )
    return measure


def _report_bad_real(real: RealClips, clips: int, show: bool) -> None:
    """One logged line (rank 0) for the real videos left out or replaced."""
    if not show or not (real.short or real.corrupt):
        return
    parts = []
    if real.short:
        parts.append(
            f"{len(real.short)} shorter than frames × {real.protocol.real_stride} left out "
            f"before the subset (as StyleGAN-V's discard_short_videos), e.g. {real.short[:3]}"
        )
    if real.corrupt:
        shown = "; ".join(f"{p}: {r}" for p, r in real.corrupt[:3])
        parts.append(
            f"{len(real.corrupt)} truncated or corrupt replaced by the next of the subset's seeded order "
            f"({shown})"
        )
    lost = len(real.subset.chosen) - clips
    left = f" ({lost} without a spare left)" if lost > 0 else ""
    log.warning(f"eval: real videos: {' and '.join(parts)}; {clips} real clips measured{left}")


def real_used(real: RealClips | None) -> dict:
    """What the record says about the real videos: their resize mode and how many were left out (short) or
    replaced (corrupt)."""
    if real is None:
        return {}
    return {"real_resize": real.resize, "real_bad": {"short": len(real.short), "corrupt": len(real.corrupt)}}


def check_short(real: RealClips, strict: bool) -> None:
    """``--strict``: real videos shorter than frames × stride are an error (without it they are left out
    before the subset, as StyleGAN-V and Latte do, and counted)."""
    if strict and real.short:
        raise ValueError(
            f"{len(real.short)} real videos are shorter than frames × stride "
            f"{real.protocol.real_stride}, e.g. {real.short[:3]} (--strict; without it they are left out "
            f"before the subset)"
        )


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
# the step; ``frames`` names where the clips went; ``real_bad`` counts the real videos of the same data left
# out or replaced). ``checkpoint`` is compared apart (settings_differences).
_OUTCOME_KEYS = (
    "num_real_used",
    "num_fake_used",
    "world_size",
    "minivdit_version",
    "step",
    "frames",
    "real_bad",
)


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

    real = None
    if any(m in REAL_METRICS for m in metrics) or (protocol.needs_real_labels and model_cfg.num_classes):
        real = real_from_dataset(
            run_cfg["data"], protocol, num_frames, resolution, cfg.data_root, flag=root_flag
        )
        protocol = real.protocol  # the run's split and frame interval, where the protocol takes the run's
        check_short(real, cfg.strict)
        check_count("real", real.count, protocol.num_real, cfg.strict)
    real_measure = (
        real_stats_cached(real, detectors, metrics, cfg, show and rank == 0, num_frames, resolution)
        if real is not None
        else None
    )

    counts, split_labels = (real.counts, real.labels) if real is not None else (None, None)
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
        # minivdit's resize, or the reference's preparation of its samples (emulate.py)
        clips = emulate.generated_clips(to_uint8(videos[:, :num_frames]).cpu(), resolution, protocol.emulate)
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
        **real_used(real),
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
    real = real_measure = None
    if cfg.real_stats:
        real_measure = _published_stats(cfg.real_stats, detectors, metrics)
        if cfg.real_stats.endswith(".pkl") and protocol.emulate != "cd-fvd":  # issue 18 §1.8
            log.warning(
                f"eval: --real-stats {cfg.real_stats} is a cd-fvd pickle: its real clips went through "
                "cd-fvd's loader (long side rounded up, truncated to uint8, about -0.4 grey levels); "
                "--emulate cd-fvd prepares the generated clips the same way"
            )
    elif any(m in REAL_METRICS for m in metrics):
        if not real_dir:
            raise ValueError(f"metrics {[m for m in metrics if m in REAL_METRICS]} need --real")
        if protocol.real_stride is None:
            raise ValueError(
                f"protocol {protocol.name} takes the real window stride from the run (its "
                f"data.frame_interval), and folders has no run: give --real-stride N, the frame interval "
                f"the generated clips' model was trained at (the Align4Gen recipes: 3)"
            )
        real = real_from_folder(real_dir, protocol, num_frames, resolution)
        check_short(real, cfg.strict)
        check_count("real", real.count, protocol.num_real, cfg.strict)
        real_measure = real_stats_cached(real, detectors, metrics, cfg, show, num_frames, resolution)
    count, clip = fake_from_folder(fake_dir, protocol.num_fake, num_frames, resolution, protocol.emulate)
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
        **real_used(real),
    )


def _published_stats(path: str, detectors: dict, metrics) -> Measure:
    fd = [m for m in metrics if m in REAL_METRICS]
    if len(fd) != 1:
        raise ValueError(f"--real-stats {path}: one detector's statistics; ask for one of {REAL_METRICS}")
    if path.endswith(".pkl"):  # cd-fvd's: one feature per clip
        stats = FeatureStats.from_cdfvd_pkl(path)
        clips = stats.count
    else:  # a minivdit cache: its clip count (a detector over frames counts frames)
        stats, meta = FeatureStats.load(path)
        clips = int(meta.get("clips", stats.count))
    measure = Measure(detectors, fd, generated=False)
    measure.stats[DETECTOR_OF[fd[0]]] = stats
    measure.clips = clips
    return measure


_PUBLISHED = {
    "i3d": "i3d_torchscript.pt, published by StyleGAN-V (universome/stylegan-v)",
    "videomae": "vit_g_hybrid_pt_1200e_ssv2_ft.pth, published by OpenGVLab/VideoMAEv2 (used by cd-fvd)",
    "inception": "pt_inception-2015-12-05-6726825d.pth, published by mseitzer/pytorch-fid",
    "c3d": "conv3d_deepnetA_ucf.npz + mean2.npz, published by pfnet-research/tgan2 (rezoo/tgan2 releases)",
    "clip": "a local openai/clip-vit-base-patch32 folder (Hugging Face)",
}
