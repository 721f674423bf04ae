"""Train the synthetic-world teacher (``minivdit/align/syn_teacher.py``): a small self-supervised video ViT
(V-JEPA feature prediction on the synthetic clips by default, ``--objective mae`` for masked autoencoding; no
labels) saved as a Hugging Face ``VideoMAEModel`` folder that ``--teacher.videomae`` loads, the teacher
``recipes/quickstart_align.py`` aligns to by default.

    python tools/train_syn_teacher.py --probe                  # -> runs/syn_teacher/<settings hash>, probed
    python tools/train_syn_teacher.py --seed 1 --steps 200 --out /tmp/teacher
    python tools/train_syn_teacher.py --objective mae --masking tube --steps 1500 --out /tmp/mae  # VERSION 1

A folder already holding the same settings is reused (no training); one holding other settings is refused.
The write is atomic (a temporary folder, then one rename) and durable; ``minivdit_teacher.json`` in the folder
holds the settings, seed, steps, loss curve, the JEPA target tokens' std (collapse check), training time and,
with ``--probe``, the linear-probe accuracies (class and motion, on mean-, max- and tubelet-pooled tokens;
trained vs the same architecture at random init). Prints the stamp as JSON on stdout.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Annotated

import tyro

from minivdit.align.syn_teacher import SynTeacherConfig, ensure, read_stamp
from minivdit.log import setup_logging


@dataclass(frozen=True, kw_only=True)
class TrainSynTeacherConfig:
    """Train (or reuse) the synthetic-world teacher (a VideoMAEModel folder)."""

    teacher: Annotated[SynTeacherConfig, tyro.conf.OmitArgPrefixes] = SynTeacherConfig()
    out: str | None = None
    """Teacher folder; default ``runs/syn_teacher/<hash of the settings>`` (what the quickstart uses)."""
    probe: bool = False
    """Linear-probe the trained teacher and the same architecture at random init (class and motion; mean-,
    max- and tubelet-pooled tokens)."""
    probe_clips: int = 500
    """Clips per probe set (fit and held-out, each)."""


def main(argv: list[str] | None = None) -> dict:
    args = sys.argv[1:] if argv is None else list(argv)
    cfg = tyro.cli(
        TrainSynTeacherConfig, args=args, config=(tyro.conf.AvoidSubcommands,), description=__doc__
    )
    setup_logging(0, stream=sys.stderr)  # the trainer's line format; stdout: the stamp
    command = ["tools/train_syn_teacher.py", *args]
    out = ensure(cfg.teacher, cfg.out, run_probe=cfg.probe, probe_clips=cfg.probe_clips, command=command)
    stamp = read_stamp(out) | {"out": str(out.resolve())}
    print(json.dumps(stamp))
    return stamp


if __name__ == "__main__":
    main()
