"""Named evaluation protocols: every choice that changes a number, frozen, recorded next to the number.

A paper's FVD is only comparable under its protocol (anchors-eval.md §7: clip counts, frames, stride, split,
subset rule and resize all move it). A ``Protocol`` fixes them; ``record`` writes all of them, plus what was
actually used (clip counts, detector hashes, minivdit version), into ``metrics.json``.

=================  ======================================================================================
``stylegan-v``     FVD₁₆ (StyleGAN-V ``fvd2048_16f``): real: the first 2,048 videos in sorted order of the
                   run's own split (StyleGAN-V measures against its training set), one 16-frame window at a
                   random seeded offset from each; generated: the first 16 frames of the first 2,048
                   videos. StyleGAN-V's offsets come from unseeded workers (stylegan-v #23); ours come from
                   ``(seed, video index)``, so a rerun gives the same number. A class-conditional model
                   samples the labels of random real items (StyleGAN-V's rule).
``latte``          as ``stylegan-v``, but the real clips take every 3rd frame (Latte trains with
                   ``frame_interval`` 3: ``realdata_subsample_factor=3``, Latte
                   ``tools/metrics/frechet_video_distance.py`` L18) and the 2,048 real videos are a
                   random seeded subset (Latte's ``tools/metrics/metric_utils.py`` ``random.sample``,
                   unseeded there) of the run's split (Latte's UCF-101 trains on all 13,320 videos and
                   evaluates against all of them). A class-conditional model samples uniform labels
                   (Latte's ``sample_ddp.py`` ``randint``).
``align4gen-ucf``  seeds/004 App. A: UCF-101 fold-1 **test** split; 2,048 real clips, class-proportional (the
                   test split's class shares, largest-remainder rounding; videos drawn at random within a
                   class), one random 16-frame window each at the run's ``frame_interval`` (the appendix
                   names no stride; the recipes train at 3, so generated and real clips move alike, as
                   Latte keeps them). Generated: 2,048 class-conditional samples with the same class
                   counts, no CFG (the paper says only "2,048 videos without CFG": the class-proportional
                   labels are minivdit's reading, recorded as ``label_rule``; ``real_items`` and
                   ``uniform`` are the alternatives). Metrics: cd-FVD (the tables' "FVD"), I3D FVD
                   (Table 7), FID over all frames, IS (C3D), CLIP similarity.
``align4gen-sky``  the same metrics but IS (seeds/004 Table 2), unconditional, the **train** split as the
``align4gen-ffs``  reference (2,048 random videos, one random window each at the run's ``frame_interval``).
``synthetic``      the built-in synthetic dataset and the synthetic detector (``syn_fvd``, ``syn_acc``,
                   ``syn_count``: the fraction of frames showing the class's number of objects):
                   512 real clips (the run's dataset, indices 0…511, so every class equally) against 512
                   class-conditional samples (labels cycling over the classes), at the run's frames and size.
=================  ======================================================================================

``num_frames`` / ``resolution`` / ``real_stride`` / ``real_split`` of ``None`` mean "the run's" (its
``data`` config; ``run`` mode and training) or the command line's (``folders``). Every field but the name
and the metrics can be overridden from the command line, the same flags in ``run``, ``folders`` and
training (``--eval.*``), all through ``EvalConfig.resolved_protocol``; the record then says what was used,
with the run's values filled in.

Real videos that cannot give a clip (issue 18 §1.4): a video shorter than ``num_frames × real_stride``
frames is left out of the split *before* the subset is drawn, as the references do (StyleGAN-V
``discard_short_videos=True``, ``src/training/dataset.py``; Latte's copy of it); a truncated or corrupt one
is replaced by the next candidate of the subset's seeded order (``real_subset``), of its own class under
``class_proportional``, so the clip count holds. Both are counted in the record (``real_bad``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Literal

import numpy as np

from minivdit.eval.emulate import EMULATIONS, Emulation

Metric = Literal["fvd", "cdfvd", "fid", "is", "clipsim", "syn_fvd", "syn_acc", "syn_count"]
METRICS: tuple[str, ...] = ("fvd", "cdfvd", "fid", "is", "clipsim", "syn_fvd", "syn_acc", "syn_count")
DETECTOR_OF: dict[str, str] = {
    "fvd": "i3d",
    "cdfvd": "videomae",
    "fid": "inception",
    "is": "c3d",
    "clipsim": "clip",
    "syn_fvd": "synthetic",
    "syn_acc": "synthetic",
    "syn_count": "synthetic",  # counts bright regions, no network; listed with the detector it goes with
}
"""Which detector (``minivdit/eval/<name>.py``) computes each metric."""
REAL_METRICS = ("fvd", "cdfvd", "fid", "syn_fvd")
"""Metrics that compare against real clips (the others only look at generated ones)."""


LabelRule = Literal["real_items", "uniform", "class_proportional", "cycle"]
LABEL_RULES: tuple[str, ...] = ("real_items", "uniform", "class_proportional", "cycle")


@dataclass(frozen=True, kw_only=True)
class Protocol:
    """How real and generated clips are chosen and measured (see the module docstring for the named ones)."""

    name: str
    """The protocol's name, as recorded."""
    metrics: tuple[Metric, ...]
    """Metrics computed by default."""
    num_frames: int | None = 16
    """Frames per clip given to the detectors (None: the run's / the command line's)."""
    resolution: int | None = None
    """Clips are resized to this before the detectors, real ones with the dataset's own resize mode (a
    centre crop on the short side then a resize for SkyTimelapse, the other way round for the rest), so the
    reference frames are framed as the training frames were (None: the run's)."""
    num_real: int = 2048
    """Real clips (fewer if the split has fewer videos: a warning, or an error with ``strict``)."""
    num_fake: int = 2048
    """Generated clips."""
    real_split: Literal["train", "test", "all"] | None = None
    """Which split of the dataset is the reference (None: the run's own ``data.split``, the set it trained
    on, as StyleGAN-V and Latte measure against their training set)."""
    real_subset: Literal["first", "random", "class_proportional"] = "first"
    """Which videos: the first N in sorted order, N at random (seeded), or N with the split's class shares."""
    real_stride: int | None = 1
    """Frame stride inside each real window (None: the run's ``data.frame_interval``, so real clips move as
    the training clips did; ``folders`` has no run and needs it given)."""
    label_rule: LabelRule = "real_items"
    """The class labels of the generated clips when the model is class-conditional (an unconditional model
    gets none), each a reference's rule, seeded by ``seed``:
    ``real_items``: the labels of uniformly random items of the real split (StyleGAN-V
    ``metric_utils.py``: ``dataset.get_label(np.random.randint(len(dataset)))`` per generated clip);
    ``uniform``: uniform over the classes (Latte ``sample/sample_ddp.py``: ``torch.randint(0, num_classes)``);
    ``class_proportional``: the class counts of the real subset, of any ``real_subset`` rule
    (``align4gen-ucf``: the appendix asks only for "2,048 videos without CFG"; minivdit's reading, with
    ``real_items`` and ``uniform`` as the alternatives);
    ``cycle``: 0, 1, …, K−1, 0, … (``synthetic``: every class equally)."""
    cfg_scale: float = 1.0
    """Classifier-free guidance of the generated clips (the papers: none)."""
    seed: int = 0
    """Seeds the real subset, the real windows and the generated noise."""
    ddof: Literal[0, 1] = 0
    """Covariance ddof (StyleGAN-V and cd-fvd: 0, the population covariance)."""
    is_variant: Literal["stylegan-v", "tganv2"] = "stylegan-v"
    """IS splits: StyleGAN-V's 10 shuffled splits, or TGANv2's single split (``frechet.inception_score``)."""
    is_draws: int = 10
    """``is_variant="tganv2"``: IS mean ± std over this many disjoint draws of ``is_draw_size`` generated
    clips (TGANv2's ``--n-loops 10``); with fewer than ``is_draws · is_draw_size`` clips, one draw and
    ``is_std`` NaN (``frechet.tganv2_inception_score``)."""
    is_draw_size: int = 2048
    """``is_variant="tganv2"``: clips per draw (TGANv2's ``--n-samples 2048``)."""
    emulate: Emulation = "none"
    """Prepare the clips as a reference did before its detectors (``minivdit/eval/emulate.py``): ``none``
    (minivdit's float resize, lossless generated clips), ``stylegan-v`` / ``latte`` (their frame-conversion
    scripts: Lanczos and JPEG-75 for real frames; JPEG-75, and for Latte its mp4 first, for generated ones),
    ``cd-fvd`` (cd-fvd's loader, truncating to uint8: for its published ``--real-stats`` pickles)."""

    def __post_init__(self):
        bad = [m for m in self.metrics if m not in METRICS]
        if bad or not self.metrics:
            raise ValueError(f"Protocol.metrics: unknown {bad} (choose from {METRICS})")
        for name in ("num_real", "num_fake"):
            if getattr(self, name) < 1:
                raise ValueError(f"Protocol.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("num_frames", "resolution", "real_stride"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"Protocol.{name} must be >= 1 or None, got {v}")
        if self.real_split not in (None, "train", "test", "all"):
            raise ValueError(f"Protocol.real_split: unknown {self.real_split!r}; choose train, test or all")
        if self.real_subset not in ("first", "random", "class_proportional"):
            raise ValueError(f"Protocol.real_subset: unknown {self.real_subset!r}")
        if self.ddof not in (0, 1):
            raise ValueError(f"Protocol.ddof must be 0 or 1, got {self.ddof}")
        if self.label_rule not in LABEL_RULES:
            raise ValueError(f"Protocol.label_rule: unknown {self.label_rule!r}; choose from {LABEL_RULES}")
        if self.is_draws < 1 or self.is_draw_size < 1:
            raise ValueError(
                f"Protocol.is_draws / is_draw_size must be >= 1, got {self.is_draws}, {self.is_draw_size}"
            )
        if self.emulate not in EMULATIONS:
            raise ValueError(f"Protocol.emulate: unknown {self.emulate!r}; choose from {EMULATIONS}")

    @property
    def needs_real_labels(self) -> bool:
        """The generated clips' labels come from the real split (its items or its class shares)."""
        return self.label_rule in ("real_items", "class_proportional")


_A4G = ("cdfvd", "fvd", "fid", "is", "clipsim")
PROTOCOLS: dict[str, Protocol] = {
    "stylegan-v": Protocol(name="stylegan-v", metrics=("fvd",), label_rule="real_items"),
    "latte": Protocol(
        name="latte", metrics=("fvd",), real_subset="random", real_stride=3, label_rule="uniform"
    ),
    "align4gen-ucf": Protocol(
        name="align4gen-ucf",
        metrics=_A4G,
        resolution=256,
        real_split="test",
        real_subset="class_proportional",
        real_stride=None,
        label_rule="class_proportional",
    ),
    "align4gen-sky": Protocol(
        name="align4gen-sky",
        metrics=("cdfvd", "fvd", "fid", "clipsim"),
        resolution=256,
        real_split="train",
        real_subset="random",
        real_stride=None,
    ),
    "align4gen-ffs": Protocol(
        name="align4gen-ffs",
        metrics=("cdfvd", "fvd", "fid", "clipsim"),
        resolution=256,
        real_split="train",
        real_subset="random",
        real_stride=None,
    ),
    "synthetic": Protocol(
        name="synthetic",
        metrics=("syn_fvd", "syn_acc", "syn_count"),
        num_frames=None,
        num_real=512,
        num_fake=512,
        label_rule="cycle",
    ),
}


def get_protocol(name: str, **overrides) -> Protocol:
    """The named protocol with ``overrides`` (fields set to None are left as the protocol has them)."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; choose from {sorted(PROTOCOLS)}")
    return dataclasses.replace(PROTOCOLS[name], **{k: v for k, v in overrides.items() if v is not None})


def proportional_counts(labels: np.ndarray, n: int, num_classes: int) -> np.ndarray:
    """``n`` split over the classes in proportion to ``labels``' class shares, by largest remainder (ties to
    the lower class id), so the counts sum to exactly ``n``."""
    share = np.bincount(labels, minlength=num_classes).astype(np.float64) / len(labels) * n
    counts = np.floor(share).astype(np.int64)
    order = np.argsort(-(share - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    return counts


@dataclass(frozen=True)
class RealSubset:
    """The real videos a protocol takes from a split, and the ones that replace a video which cannot give a
    clip. Indices are into the split's ``labels``."""

    chosen: np.ndarray
    """The subset, sorted (the order the videos are read in)."""
    group: np.ndarray
    """For each chosen video, the group its replacements come from (its class under
    ``class_proportional``, else 0)."""
    spares: tuple[np.ndarray, ...]
    """Per group, the videos left out of the subset in the subset's seeded order: the next candidates."""
    counts: np.ndarray | None
    """``class_proportional``: the per-class counts that the generated side copies; else None."""


def real_subset(protocol: Protocol, labels: np.ndarray, num_classes: int) -> RealSubset:
    """The real subset of a split with ``labels`` [num_videos] by ``protocol.real_subset``, and its spares.

    The subset is drawn from stream ``(seed, 1)`` and the spares' order from its own stream ``(seed, 5)``,
    so a subset is the same whether or not a spare is ever needed. The spares continue each rule: ``first``
    takes the next videos in sorted order (StyleGAN-V's deterministic subset continued), ``random`` the
    rest in a seeded random order, ``class_proportional`` the rest of the same class in a seeded random
    order (so the class counts hold)."""
    total, n = len(labels), min(protocol.num_real, len(labels))
    rng = np.random.default_rng([protocol.seed, 1])
    spare_rng = np.random.default_rng([protocol.seed, 5])
    if protocol.real_subset == "first":
        chosen = np.arange(n)
        return RealSubset(chosen, np.zeros(n, np.int64), (np.arange(n, total),), None)
    if protocol.real_subset == "random":
        chosen = np.sort(rng.choice(total, n, replace=False))
        rest = spare_rng.permutation(np.setdiff1d(np.arange(total), chosen))
        return RealSubset(chosen, np.zeros(n, np.int64), (rest,), None)
    counts = proportional_counts(labels, n, num_classes)
    picked, spares = [], []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        k = min(counts[c], len(members))
        pick = np.sort(rng.choice(members, k, replace=False))
        picked.append(pick)
        spares.append(spare_rng.permutation(np.setdiff1d(members, pick)))
    chosen = np.sort(np.concatenate(picked)).astype(np.int64)
    return RealSubset(chosen, np.asarray(labels, np.int64)[chosen], tuple(spares), counts)


def select_real(
    protocol: Protocol, labels: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """Indices of the real videos (in the dataset's order) and, for class-proportional subsets, the
    per-class counts that the generated side copies. ``labels`` [num_videos]. (:func:`real_subset`
    without the spares.)"""
    subset = real_subset(protocol, labels, num_classes)
    return subset.chosen, subset.counts


def fake_labels(
    protocol: Protocol,
    num_classes: int,
    counts: np.ndarray | None,
    split_labels: np.ndarray | None = None,
) -> np.ndarray | None:
    """Class labels ``[num_fake]`` of the generated clips by ``protocol.label_rule``; None for an
    unconditional model (``num_classes`` 0). ``counts``: the real subset's per-class counts
    (``class_proportional``); ``split_labels``: the label of every item of the real split (``real_items``).
    The random rules draw from their own stream of ``protocol.seed``."""
    if num_classes == 0:
        return None
    rule, n = protocol.label_rule, protocol.num_fake
    rng = np.random.default_rng([protocol.seed, 4])
    if rule == "cycle":
        return np.arange(n) % num_classes
    if rule == "uniform":
        return rng.integers(0, num_classes, n)
    if rule == "real_items":
        if split_labels is None or len(split_labels) == 0:
            raise ValueError("label_rule real_items needs the labels of the real split's items")
        return np.asarray(split_labels, np.int64)[rng.integers(0, len(split_labels), n)]
    if counts is None:
        raise ValueError("label_rule class_proportional needs the real subset's class counts")
    labels = np.repeat(np.arange(num_classes), counts)
    if len(labels) != n:  # the counts were made for num_real clips: rescale
        labels = np.repeat(np.arange(num_classes), proportional_counts(labels, n, num_classes))
    return labels


def minivdit_version() -> str:
    """The installed minivdit version (recorded with every number and part of the real-statistics cache
    key, so a cache does not outlive a fix of the pipeline), or ``"unknown"``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("minivdit")
    except PackageNotFoundError:
        return "unknown"


def record(protocol: Protocol, **used) -> dict:
    """The protocol record written next to every number: every field of the protocol, what was used
    (``num_real_used``, ``num_fake_used``, detector hashes, sources…), the Fréchet method and the version."""
    return {
        **dataclasses.asdict(protocol),
        "frechet": {"method": "eigh (tr sqrt of sqrt(A) B sqrt(A)), float64", "ddof": protocol.ddof},
        "minivdit_version": minivdit_version(),
        **used,
    }


def protocol_hash(fields: dict) -> str:
    """A stable short hash of a JSON-able dict (cache keys)."""
    import hashlib

    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:20]
