"""A self-supervised video teacher that knows the synthetic world (issue 22 §1): a small VideoMAE trained by
masked autoencoding on the synthetic clips (``minivdit/data/synthetic.py``), never on their labels (REPA's
teachers are self-supervised), and saved as a Hugging Face ``VideoMAEModel`` folder that
``TeacherConfig(videomae=...)`` loads unchanged.

- **Model**: ``VideoMAEConfig`` at the quickstart's clip size, 8 frames of 16×16, patch 4 and tubelet 2, so
  the teacher runs at its native grid for the quickstart's 4×4 DiT grid (``VideoMAEEncoder`` feeds it
  ``grid × patch`` = 16 px: no resize, and its position table is the trained one). Width 128, 4 layers,
  4 heads; a 2-layer decoder of width 64; ``use_mean_pooling=False`` so the tokens end in a LayerNorm (the
  original VideoMAE encoder's ``norm``; ``--teacher.layer prenorm`` reads before it).
- **Objective**: ``VideoMAEForPreTraining``'s MSE on masked tubes (VideoMAE's tube masking: one spatial mask
  for all tubelets), 90 % of the 4×4 positions hidden, per-patch normalised pixels as the target
  (``norm_pix_loss``, VideoMAE's default). The encoder sees the pixels as the teacher path gives them:
  ``[-1, 1]`` → ``[0, 1]`` → ImageNet statistics. Tried at 300 steps (mean-pooled probe, 400 clips a set:
  class / motion): pixels with 75 % tube-masked 0.63 / 0.27, 50 % 0.65 / 0.25, 90 % 0.68 / 0.28; normalised
  pixels with 75 % 0.66 / 0.29, with 90 % 0.67 / 0.31 (this); random (not tube) masking of 75 % of the tokens
  0.61 / 0.23 (pixels), 0.67 / 0.28 (normalised); future masking (the last half / three quarters of the
  tubelets hidden whole, so that the decoder must extrapolate the motion; ``masking="future"``) 0.64 / 0.29
  and 0.66 / 0.29; the same architecture at random init 0.53 / 0.20. All
  close: masked autoencoding here learns little that a linear probe reads beyond what a random ViT exposes
  (the full run's figures: ``tools/train_syn_teacher.py --probe``, README "Alignment").
- **Data**: fresh clips every step (``SyntheticVideos`` with ``data_seed``, indices ``step·B …``, never
  repeated) of the ten classes' ``in_domain`` appearance × motion pairings (70 pairs; the 30
  ``out_of_domain`` pairings are kept for the motion probe). The labels are never read.
- **Probe** (:func:`probe`): a linear classifier (multinomial logistic regression, L-BFGS, deterministic) on
  the teacher's tokens mean-pooled over tubelets and positions (what ``Teacher.forward`` returns), fitted on
  ``probe_clips`` clips and scored on as many held-out ones: *class* (the ten classes, split ``all``) and
  *motion* (fitted on ``in_domain`` clips, scored on the ``out_of_domain`` pairings: a motion seen only with
  other appearances), for the trained teacher and the same architecture at random init.

:func:`ensure` is the cache: the folder (``default_dir``: ``runs/syn_teacher/<hash of the settings>``) is
trained on first use, written to a temporary folder and published by one rename (``minivdit.durable``), and
stamped with its settings, seed, steps, loss curve and probe in ``minivdit_teacher.json``; later calls with
the same settings reuse it. ``tools/train_syn_teacher.py`` is its command line;
``recipes/quickstart_align.py`` aligns to it by default.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from minivdit.align.teachers import IMAGENET_MEAN, IMAGENET_STD, TeacherConfig, _hf, build_teacher
from minivdit.config import check_types, to_dict
from minivdit.data.synthetic import SyntheticVideos
from minivdit.durable import publish

log = logging.getLogger("minivdit")

STAMP = "minivdit_teacher.json"
VERSION = 1  # of the training procedure: part of the cache key
ROOT = Path("runs") / "syn_teacher"
NUM_CLASSES = 10  # every row of the synthetic table


@dataclass(frozen=True, kw_only=True)
class SynTeacherConfig:
    """How the synthetic-world teacher is trained (every field is part of its cache key)."""

    seed: int = 0
    """Init and mask seed."""
    steps: int = 1500
    """Optimizer steps (fresh clips every step)."""
    batch_size: int = 32
    lr: float = 1e-3
    """AdamW peak learning rate (linear warm-up, cosine decay)."""
    warmup_steps: int = 100
    weight_decay: float = 0.05
    mask_ratio: float = 0.9
    """Fraction of the spatial positions hidden in every tubelet (tube masking): 14 of 16."""
    masking: Literal["tube", "random", "future"] = "tube"
    """'tube': one spatial mask for every tubelet (VideoMAE); 'random': ``mask_ratio`` of all tokens;
    'future': the last ``mask_ratio`` of the tubelets, whole (the decoder extrapolates the motion seen in the
    first ones, so the encoder must carry it)."""
    norm_pix_loss: bool = True
    """VideoMAE's per-patch normalised pixels as the target (False: the pixels)."""
    data_seed: int = 1000
    """``SyntheticVideos`` seed of the training clips (the quickstart's clips are seed 0)."""
    num_frames: int = 8
    image_size: int = 16
    patch_size: int = 4
    tubelet_size: int = 2
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    decoder_hidden_size: int = 64
    decoder_layers: int = 2
    threads: int = 1
    """torch CPU threads while training (fixed: the run is deterministic for a fixed thread count). One: this
    model's small matrices gain little from a second, and on a busy 2-core machine two OpenMP threads ran a
    step 5× slower (1.0 s against 0.18 s)."""

    def __post_init__(self):
        check_types(self)
        sizes = (
            "steps",
            "batch_size",
            "num_frames",
            "image_size",
            "patch_size",
            "tubelet_size",
            "hidden_size",
        )
        sizes += ("num_layers", "num_heads", "decoder_hidden_size", "decoder_layers", "threads")
        if small := [f"{k}={getattr(self, k)}" for k in sizes if getattr(self, k) < 1]:
            raise ValueError(f"SynTeacherConfig: {', '.join(small)} must be >= 1")
        if not 0 < self.mask_ratio < 1:
            raise ValueError(f"mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if not (self.lr > 0 and math.isfinite(self.lr)) or self.warmup_steps < 0 or self.weight_decay < 0:
            raise ValueError(
                f"SynTeacherConfig: lr > 0 (finite), warmup_steps >= 0 and weight_decay >= 0, got {self.lr}, "
                f"{self.warmup_steps}, {self.weight_decay}"
            )
        if self.image_size % self.patch_size or self.num_frames % self.tubelet_size:
            raise ValueError(
                f"image_size {self.image_size} / num_frames {self.num_frames} must be multiples of "
                f"patch_size {self.patch_size} / tubelet_size {self.tubelet_size}"
            )
        if self.hidden_size % self.num_heads or self.decoder_hidden_size % self.num_heads:
            raise ValueError("hidden_size and decoder_hidden_size must be multiples of num_heads")

    @property
    def spatial(self) -> int:
        """Token positions per tubelet."""
        return (self.image_size // self.patch_size) ** 2

    @property
    def tokens(self) -> int:
        """Tokens per clip: tubelets × positions."""
        return self.num_frames // self.tubelet_size * self.spatial

    @property
    def num_masked(self) -> int:
        """Hidden positions per tubelet ('tube'), tokens per clip ('random') or tubelets ('future'); at least
        one of each kind."""
        n = {"tube": self.spatial, "random": self.tokens, "future": self.tokens // self.spatial}[self.masking]
        return min(n - 1, max(1, round(self.mask_ratio * n)))


def cache_key(cfg: SynTeacherConfig) -> str:
    """12 hex digits of the settings (and ``VERSION``): the folder name under ``ROOT``."""
    text = json.dumps({"version": VERSION, **to_dict(cfg)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def default_dir(cfg: SynTeacherConfig | None = None) -> Path:
    """``runs/syn_teacher/<cache_key>`` (relative to the working directory, as a run's ``--out-dir``)."""
    return ROOT / cache_key(cfg or SynTeacherConfig())


# ---------------------------------------------------------------------------------------------------- model


def videomae_config(cfg: SynTeacherConfig):
    """The ``VideoMAEConfig`` of the teacher (encoder and decoder)."""
    return _hf("VideoMAEConfig")(
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        num_frames=cfg.num_frames,
        tubelet_size=cfg.tubelet_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=4 * cfg.hidden_size,
        decoder_hidden_size=cfg.decoder_hidden_size,
        decoder_num_hidden_layers=cfg.decoder_layers,
        decoder_num_attention_heads=cfg.num_heads,
        decoder_intermediate_size=4 * cfg.decoder_hidden_size,
        use_mean_pooling=False,
        norm_pix_loss=cfg.norm_pix_loss,
    )


def pixels(video: Tensor) -> Tensor:
    """[B, T, 3, H, W] in [-1, 1] → ImageNet-normalised, as ``FrozenEncoder._pixels`` at the native size."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 1, 3, 1, 1)
    return ((video + 1) / 2 - mean) / std


def clips(dataset: SyntheticVideos, indices: range | np.ndarray) -> tuple[Tensor, Tensor]:
    """Clips ``[N, T, 3, H, W]`` in [-1, 1] and their labels (the motion in a held-out split)."""
    items = [dataset.get(int(i)) for i in indices]
    return torch.stack([x["video"] for x in items]), torch.tensor([x["label"] for x in items])


def mask(cfg: SynTeacherConfig, batch: int, gen: torch.Generator) -> Tensor:
    """The mask ``[B, tubelets·h·w]`` (True = hidden): 'tube' hides ``num_masked`` random positions of the
    ``h × w`` grid in every tubelet (VideoMAE's tube masking), 'random' ``num_masked`` random tokens."""
    if cfg.masking == "future":  # the last tubelets, every position: [B, T'·h·w]
        tubelets = cfg.tokens // cfg.spatial
        hidden = torch.arange(tubelets) >= tubelets - cfg.num_masked  # [T']
        return hidden.repeat_interleave(cfg.spatial).expand(batch, -1).clone()
    n = cfg.spatial if cfg.masking == "tube" else cfg.tokens
    order = torch.rand(batch, n, generator=gen).argsort(dim=1)
    hidden = torch.zeros(batch, n, dtype=torch.bool)
    hidden.scatter_(1, order[:, : cfg.num_masked], True)
    return hidden.repeat(1, cfg.tokens // n)


def train(cfg: SynTeacherConfig) -> tuple[torch.nn.Module, dict]:
    """Train the teacher: the ``VideoMAEForPreTraining`` model and a report (loss curve, seconds)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model = _hf("VideoMAEForPreTraining")(videomae_config(cfg))
        model.train()
        gen = torch.Generator().manual_seed(cfg.seed)
        data = SyntheticVideos(
            cfg.num_frames, cfg.image_size, NUM_CLASSES, size=cfg.steps * cfg.batch_size,
            seed=cfg.data_seed, split="in_domain",
        )  # fmt: skip
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "position" not in n]
        rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "position" not in n)]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}],
            lr=cfg.lr,
            betas=(0.9, 0.95),
        )
        curve, window, t0 = [], [], time.perf_counter()
        every = max(1, min(50, cfg.steps // 10))
        for step in range(cfg.steps):
            warm = min(1.0, (step + 1) / max(1, cfg.warmup_steps))
            lr = cfg.lr * warm * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
            for g in opt.param_groups:
                g["lr"] = lr
            video, _ = clips(data, range(step * cfg.batch_size, (step + 1) * cfg.batch_size))
            loss = model(pixels(video), bool_masked_pos=mask(cfg, cfg.batch_size, gen)).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            window.append(loss.item())
            if (step + 1) % every == 0 or step + 1 == cfg.steps:
                took = time.perf_counter() - t0
                curve.append([step + 1, round(float(np.mean(window)), 5)])
                log.info(
                    f"syn teacher: step {step + 1:5d}/{cfg.steps} | loss {curve[-1][1]:.4f} | lr {lr:.2e} | "
                    f"{took:.0f}s elapsed, eta {took / (step + 1) * (cfg.steps - step - 1):.0f}s"
                )
                window = []
    finally:
        torch.set_num_threads(threads)
    model.eval()
    report = {
        "loss_first": curve[0][1],
        "loss_final": curve[-1][1],
        "loss_curve": curve,
        "train_seconds": round(time.perf_counter() - t0, 1),
    }
    return model, report


# ---------------------------------------------------------------------------------------------------- probe


def pooled_features(
    folder: str | Path, video: Tensor, *, grid: tuple[int, int], batch: int = 128
) -> dict[str, Tensor]:
    """The teacher at ``folder`` through ``TeacherConfig(videomae=...)``: ``Teacher.forward`` features
    ``[N, F', h·w, D]`` averaged (``"mean"``) and max-pooled (``"max"``) over tubelets and positions →
    ``[N, D]`` each. The mean dilutes the one object token of 16 per tubelet into the background's."""
    teacher = build_teacher(TeacherConfig(videomae=str(folder)), grid=grid)
    feats = torch.cat([teacher(v) for v in video.split(batch)])  # [N, F', h·w, D]
    return {"mean": feats.mean(dim=(1, 2)), "max": feats.amax(dim=(1, 2))}


def linear_probe(
    train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, *, l2: float = 1e-3, iters: int = 200
) -> float:
    """Held-out accuracy of a multinomial logistic regression on standardised features, fitted by full-batch
    L-BFGS from zero (deterministic)."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    a, b = (train_x - mean) / std, (test_x - mean) / std
    classes = int(max(train_y.max(), test_y.max())) + 1
    w = torch.zeros(a.shape[1] + 1, classes, dtype=torch.float64, requires_grad=True)
    a1 = torch.cat([a, torch.ones(len(a), 1)], dim=1).double()
    opt = torch.optim.LBFGS([w], lr=1, max_iter=iters, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(a1 @ w, train_y) + l2 * w[:-1].pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        pred = (torch.cat([b, torch.ones(len(b), 1)], dim=1).double() @ w).argmax(1)
    return float((pred == test_y).float().mean())


def probe_sets(cfg: SynTeacherConfig, clips_per_set: int, seed: int) -> dict[str, tuple]:
    """``{"class": (train video, labels, test video, labels), "motion": (...)}``: class on split ``all``
    (seeds ``seed``, ``seed + 1``); motion fitted on ``in_domain``, scored on ``out_of_domain`` pairings."""
    n = clips_per_set
    args = (cfg.num_frames, cfg.image_size, NUM_CLASSES)

    def one(split: str, s: int) -> tuple[Tensor, Tensor]:
        return clips(SyntheticVideos(*args, size=n, seed=s, split=split), range(n))

    return {
        "class": (*one("all", seed), *one("all", seed + 1)),
        "motion": (*one("in_domain", seed + 2), *one("out_of_domain", seed + 3)),
    }


def probe(folder: str | Path, cfg: SynTeacherConfig, *, clips_per_set: int = 500, seed: int = 5000) -> dict:
    """Linear-probe accuracies ``{"trained": {"class", "motion", "class_max", "motion_max"}, "random_init":
    {...}, ...}`` (mean-pooled features; ``_max``: max-pooled) of the teacher at ``folder`` and of the same
    architecture at random init (seeded ``cfg.seed``), both loaded through ``TeacherConfig(videomae=...)`` on
    the grid of ``cfg.image_size / cfg.patch_size``; chance is 0.1."""
    grid = (cfg.image_size // cfg.patch_size,) * 2
    sets = probe_sets(cfg, clips_per_set, seed)
    out = {"clips_per_set": clips_per_set, "seed": seed, "chance": 1 / NUM_CLASSES}
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    with tempfile.TemporaryDirectory() as tmp:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            _hf("VideoMAEModel")(videomae_config(cfg)).save_pretrained(tmp)
        for name, path in (("trained", folder), ("random_init", tmp)):
            out[name] = {}
            for task, (xa, ya, xb, yb) in sets.items():
                fa, fb = pooled_features(path, xa, grid=grid), pooled_features(path, xb, grid=grid)
                out[name][task] = round(linear_probe(fa["mean"], ya, fb["mean"], yb), 4)
                out[name][f"{task}_max"] = round(linear_probe(fa["max"], ya, fb["max"], yb), 4)
    torch.set_num_threads(threads)
    return out


# ---------------------------------------------------------------------------------------------------- cache


def read_stamp(folder: str | Path) -> dict | None:
    """The folder's ``minivdit_teacher.json``, or None when there is none (or it is unreadable)."""
    try:
        return json.loads((Path(folder) / STAMP).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def ensure(
    cfg: SynTeacherConfig | None = None,
    out: str | Path | None = None,
    *,
    run_probe: bool = False,
    probe_clips: int = 500,
    command: list[str] | None = None,
) -> Path:
    """The teacher folder of ``cfg`` at ``out`` (default ``default_dir(cfg)``): reused when its stamp holds
    the same settings, else trained (and probed with ``run_probe``) and published atomically. A folder of
    other settings (or without a stamp) at ``out`` is refused, never overwritten."""
    cfg = cfg or SynTeacherConfig()
    out = Path(out) if out is not None else default_dir(cfg)
    settings = {"version": VERSION, **to_dict(cfg)}
    if out.exists():
        stamp = read_stamp(out)
        if stamp is not None and stamp.get("settings") == settings:
            log.info(f"syn teacher: reusing {out} (trained {stamp['steps']} steps, seed {stamp['seed']})")
            return out
        why = "no readable " + STAMP if stamp is None else "another teacher's settings"
        raise ValueError(f"syn teacher: {out} exists with {why}: delete it or choose another folder")
    log.info(f"syn teacher: training a VideoMAE on the synthetic clips for {cfg.steps} steps -> {out}")
    model, report = train(cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.videomae.save_pretrained(tmp, safe_serialization=True)  # VideoMAEModel: the teacher's class
        stamp = {
            "tool": "minivdit.align.syn_teacher",
            "version": VERSION,
            "command": command if command is not None else sys.argv,
            "seed": cfg.seed,
            "steps": cfg.steps,
            "settings": settings,
            "data": {"dataset": "synthetic", "split": "in_domain", "num_classes": NUM_CLASSES},
            **report,
            "probe": probe(tmp, cfg, clips_per_set=probe_clips) if run_probe else None,
        }
        (tmp / STAMP).write_text(json.dumps(stamp, indent=1) + "\n")
        try:
            publish(tmp, out)
        except OSError:  # another process published the same teacher first: keep theirs
            if read_stamp(out) is None or read_stamp(out).get("settings") != settings:
                raise
            log.info(f"syn teacher: {out} was published by another process meanwhile; using it")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info(f"syn teacher: saved {out} (final loss {report['loss_final']:.4f}, {report['train_seconds']}s)")
    return out


__all__ = [
    "ROOT",
    "STAMP",
    "SynTeacherConfig",
    "cache_key",
    "default_dir",
    "ensure",
    "linear_probe",
    "pooled_features",
    "probe",
    "read_stamp",
    "train",
]
