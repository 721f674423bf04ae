"""Named evaluation protocols: every choice that changes a number, frozen, recorded next to the number.

A paper's FVD is only comparable under its protocol (anchors-eval.md §7: clip counts, frames, stride, split,
subset rule and resize all move it). A ``Protocol`` fixes them; ``record`` writes all of them, plus what was
actually used (clip counts, detector hashes, minivdit version), into ``metrics.json``.

=================  ======================================================================================
``stylegan-v``     FVD₁₆ (StyleGAN-V ``fvd2048_16f``): real: the first 2,048 videos in sorted order, one
                   16-frame window at a random seeded offset from each; generated: the first 16 frames of
                   the first 2,048 videos. StyleGAN-V's offsets come from unseeded workers (stylegan-v
                   #23); ours come from ``(seed, clip index)``, so a rerun gives the same number. A
                   class-conditional model samples the labels of random real items (StyleGAN-V's rule).
``latte``          as ``stylegan-v``, but the real clips take every 3rd frame (Latte trains with
                   ``frame_interval`` 3) and the 2,048 real videos are a random seeded subset (Latte's
                   ``tools/metrics/metric_utils.py`` ``random.sample``, unseeded there). A
                   class-conditional model samples uniform labels (Latte's ``sample_ddp.py`` ``randint``).
``align4gen-ucf``  seeds/004 App. A: UCF-101 fold-1 **test** split; 2,048 real clips, class-proportional (the
                   test split's class shares, largest-remainder rounding; videos drawn at random within a
                   class), one random 16-frame window each (stride 1: the appendix names none). Generated:
                   2,048 class-conditional samples with the same class counts, no CFG. Metrics: cd-FVD
                   (the tables' "FVD"), I3D FVD (Table 7), FID over all frames, IS (C3D), CLIP similarity.
``align4gen-sky``  the same metrics but IS (seeds/004 Table 2), unconditional, the **train** split as the
``align4gen-ffs``  reference (2,048 random videos, one random window each).
``synthetic``      the built-in synthetic dataset and the synthetic detector (``syn_fvd``, ``syn_acc``,
                   ``syn_count``: the fraction of frames showing the class's number of objects):
                   512 real clips (the run's dataset, indices 0…511, so every class equally) against 512
                   class-conditional samples (labels cycling over the classes), at the run's frames and size.
=================  ======================================================================================

``num_frames`` / ``resolution`` of ``None`` mean "the run's" (``run`` mode) or the command line's
(``folders``). Every field can be overridden from the command line; the record then says what was used.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Literal

import numpy as np

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
    """Clips are resized (short side, then a centre crop) to this before the detectors (None: the run's)."""
    num_real: int = 2048
    """Real clips (fewer if the split has fewer videos: a warning, or an error with ``strict``)."""
    num_fake: int = 2048
    """Generated clips."""
    real_split: Literal["train", "test", "all"] = "train"
    """Which split of the dataset is the reference."""
    real_subset: Literal["first", "random", "class_proportional"] = "first"
    """Which videos: the first N in sorted order, N at random (seeded), or N with the split's class shares."""
    real_stride: int = 1
    """Frame stride inside each real window."""
    label_rule: LabelRule = "real_items"
    """The class labels of the generated clips when the model is class-conditional (an unconditional model
    gets none), each a reference's rule, seeded by ``seed``:
    ``real_items``: the labels of uniformly random items of the real split (StyleGAN-V
    ``metric_utils.py``: ``dataset.get_label(np.random.randint(len(dataset)))`` per generated clip);
    ``uniform``: uniform over the classes (Latte ``sample/sample_ddp.py``: ``torch.randint(0, num_classes)``);
    ``class_proportional``: the class counts of the real subset (``align4gen-ucf``: the appendix asks for
    2,048 class-conditional samples; minivdit's reading);
    ``cycle``: 0, 1, …, K−1, 0, … (``synthetic``: every class equally)."""
    cfg_scale: float = 1.0
    """Classifier-free guidance of the generated clips (the papers: none)."""
    seed: int = 0
    """Seeds the real subset, the real windows and the generated noise."""
    ddof: Literal[0, 1] = 0
    """Covariance ddof (StyleGAN-V and cd-fvd: 0, the population covariance)."""
    is_variant: Literal["stylegan-v", "tganv2"] = "stylegan-v"
    """IS splits: StyleGAN-V's 10 shuffled splits, or TGANv2's single split (``frechet.inception_score``)."""

    def __post_init__(self):
        bad = [m for m in self.metrics if m not in METRICS]
        if bad or not self.metrics:
            raise ValueError(f"Protocol.metrics: unknown {bad} (choose from {METRICS})")
        for name in ("num_real", "num_fake", "real_stride"):
            if getattr(self, name) < 1:
                raise ValueError(f"Protocol.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("num_frames", "resolution"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"Protocol.{name} must be >= 1 or None, got {v}")
        if self.real_subset not in ("first", "random", "class_proportional"):
            raise ValueError(f"Protocol.real_subset: unknown {self.real_subset!r}")
        if self.ddof not in (0, 1):
            raise ValueError(f"Protocol.ddof must be 0 or 1, got {self.ddof}")
        if self.label_rule not in LABEL_RULES:
            raise ValueError(f"Protocol.label_rule: unknown {self.label_rule!r}; choose from {LABEL_RULES}")

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
        label_rule="class_proportional",
    ),
    "align4gen-sky": Protocol(
        name="align4gen-sky", metrics=("cdfvd", "fvd", "fid", "clipsim"), resolution=256, real_subset="random"
    ),
    "align4gen-ffs": Protocol(
        name="align4gen-ffs", metrics=("cdfvd", "fvd", "fid", "clipsim"), resolution=256, real_subset="random"
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


def select_real(
    protocol: Protocol, labels: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """Indices of the real videos (in the dataset's order) and, for class-proportional subsets, the
    per-class counts that the generated side copies. ``labels`` [num_videos]."""
    total, n = len(labels), min(protocol.num_real, len(labels))
    rng = np.random.default_rng([protocol.seed, 1])
    if protocol.real_subset == "first":
        return np.arange(n), None
    if protocol.real_subset == "random":
        return np.sort(rng.choice(total, n, replace=False)), None
    counts = proportional_counts(labels, n, num_classes)
    picked = []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        k = min(counts[c], len(members))
        picked.append(np.sort(rng.choice(members, k, replace=False)))
    return np.sort(np.concatenate(picked)), counts


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


def record(protocol: Protocol, **used) -> dict:
    """The protocol record written next to every number: every field of the protocol, what was used
    (``num_real_used``, ``num_fake_used``, detector hashes, sources…), the Fréchet method and the version."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("minivdit")
    except PackageNotFoundError:
        v = "unknown"
    return {
        **dataclasses.asdict(protocol),
        "frechet": {"method": "eigh (tr sqrt of sqrt(A) B sqrt(A)), float64", "ddof": protocol.ddof},
        "minivdit_version": v,
        **used,
    }


def protocol_hash(fields: dict) -> str:
    """A stable short hash of a JSON-able dict (cache keys)."""
    import hashlib

    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:20]
