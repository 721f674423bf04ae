"""Write any dataset the loader knows as webdataset-format tar shards of clips (``minivdit/data/shards.py``).

    python tools/make_shards.py --data.dataset ucf101 --data.root /data/UCF-101 --data.num-frames 16 \\
        --data.image-size 256 --data.frame-interval 3 --out /data/shards/ucf101-16x256 --workers 8

    # then train from the shards
    torchrun --nproc_per_node=8 recipes/align4gen_ucf.py --data.dataset shards \\
        --data.root /data/shards/ucf101-16x256

Every clip is decoded, sampled (``--data.num-frames`` frames ``--data.frame-interval`` apart) and resized
once, exactly as the loader would, and stored at that size: as uint8 arrays (``--format npy``, exact, about
``F·3·H·W`` bytes per clip: 3 MiB for 16×256²) or re-encoded (``--format mp4``, H.264 at ``--crf``, many times
smaller, lossy, decoded on every read). The temporal window and flip are the ones the loader would draw for
the clip in epoch ``k`` for repeat ``k`` (``--repeats``; seeds from ``--data.seed``); the shards hold those
fixed clips. Labels (``label.cls``) and captions (``caption.txt``, when the dataset has them) come along.

Resumable: shards are written to ``.tmp`` and renamed when whole; a rerun with the same flags skips the
finished ones (other flags in the same folder are refused unless ``--overwrite``). ``--workers N`` writes N
shards at a time in separate processes.

Import from Python: ``main([...])`` (tests load this file with ``importlib``) or
``minivdit.data.shards.write_clip_shards``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import tyro

from minivdit.data import DataConfig
from minivdit.data.shards import write_clip_shards
from minivdit.log import setup_logging


@dataclass(frozen=True, kw_only=True)
class MakeShardsConfig:
    """Dataset → tar shards of clips."""

    data: DataConfig = field(default_factory=DataConfig)
    """The dataset, as for training (``--data.dataset``, ``--data.root``, ``--data.num-frames``,
    ``--data.image-size``, ``--data.frame-interval``, ...). ``--data.num-workers`` is unused (see
    ``--workers``)."""
    out: str
    """Output folder for meta.json and shard-NNNNNN.tar."""
    format: Literal["npy", "mp4"] = "npy"
    """Clip storage: "npy" uint8 arrays (exact) or "mp4" re-encoded (smaller, lossy)."""
    crf: int = 18
    """H.264 constant rate factor of ``--format mp4`` (lower: better and bigger)."""
    fps: int = 8
    """Frame rate written in the mp4 headers (metadata only)."""
    samples_per_shard: int = 1000
    """Clips per shard (the last shard may hold fewer)."""
    workers: int = 0
    """Processes writing shards in parallel (0: this process)."""
    repeats: int = 1
    """Store each clip this many times with different temporal windows / flips."""
    limit: int | None = None
    """Only the first N clips of the dataset (for a quick look)."""
    overwrite: bool = False
    """Replace shards of different settings already in ``--out``."""


def make_shards(cfg: MakeShardsConfig) -> Path:
    return write_clip_shards(
        cfg.data,
        cfg.out,
        format=cfg.format,
        samples_per_shard=cfg.samples_per_shard,
        workers=cfg.workers,
        repeats=cfg.repeats,
        limit=cfg.limit,
        overwrite=cfg.overwrite,
        crf=cfg.crf,
        fps=cfg.fps,
    )


def main(args: list[str] | None = None) -> Path:
    cfg = tyro.cli(MakeShardsConfig, args=args, config=(tyro.conf.AvoidSubcommands,))
    setup_logging(0, stream=sys.stderr)  # the trainer's line format; stdout: the result
    out = make_shards(cfg)
    print(f"shards written to {out}")
    return out


if __name__ == "__main__":
    main()
