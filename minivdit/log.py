"""Logging: one status line per interval on rank 0, the same numbers in ``metrics.jsonl`` and tensorboard.

Losses are reduced across ranks only at log time (the trainer accumulates them on device between logs), so
there is no per-step ``.item()`` beyond the finite check on the gradient norm.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import TextIO

import numpy as np

log = logging.getLogger("minivdit")


LOG_FORMAT, LOG_DATEFMT = "[%(asctime)s] %(message)s", "%H:%M:%S"
"""Every log line of the trainer and of ``tools/*.py``: ``[HH:MM:SS] message``."""


def setup_logging(rank: int, run_dir: Path | None = None, *, stream: TextIO | None = None) -> None:
    """Rank 0 logs INFO to ``stream`` (stdout by default) and ``run_dir/log.txt``; other ranks only warnings.
    Without ``run_dir`` nothing goes to a file: the tools call ``setup_logging(0, stream=sys.stderr)``, so
    their stdout keeps only their results (JSON lines, paths) and their log lines read as the trainer's."""
    root = logging.getLogger()
    for h in root.handlers:  # a previous run's log.txt (train() called again in one process): close it
        if isinstance(h, logging.FileHandler):
            h.close()
    root.handlers.clear()
    fmt = logging.Formatter(LOG_FORMAT, datefmt=LOG_DATEFMT)
    handlers: list[logging.Handler] = [logging.StreamHandler(stream or sys.stdout)]
    if rank == 0 and run_dir is not None:
        handlers.append(logging.FileHandler(run_dir / "log.txt"))
    for h in handlers:
        h.setFormatter(fmt)
        root.addHandler(h)
    root.setLevel(logging.INFO if rank == 0 else logging.WARNING)


def _fmt_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class MetricLogger:
    """Writes ``metrics.jsonl`` (one JSON object per logged step, keys ``step``, ``loss``, …) and tensorboard
    scalars on rank 0; prints the status line: step, loss parts, it/s, samples/s, ETA, peak memory."""

    def __init__(self, run_dir: Path, *, is_main: bool, max_steps: int, tensorboard: bool = True):
        self.is_main, self.max_steps = is_main, max_steps
        self.jsonl = open(run_dir / "metrics.jsonl", "a") if is_main else None  # noqa: SIM115 (closed in close())
        self.tb = None
        if is_main and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"))
        self._t0, self._step0 = time.perf_counter(), None

    def start(self, step: int) -> None:
        self._t0, self._step0 = time.perf_counter(), step

    def log(
        self, step: int, metrics: dict[str, float], *, samples_per_step: int, peak_mem_gib: float | None
    ) -> None:
        now = time.perf_counter()
        steps = step - (self._step0 if self._step0 is not None else step - 1)
        it_s = steps / max(now - self._t0, 1e-9)
        self._t0, self._step0 = now, step
        row = {"step": step, **metrics, "it_s": it_s, "samples_s": it_s * samples_per_step}
        if peak_mem_gib is not None:
            row["peak_mem_gib"] = peak_mem_gib
        if not self.is_main:
            return
        self.jsonl.write(json.dumps(row) + "\n")
        self.jsonl.flush()
        if self.tb is not None:
            for k, v in row.items():
                if k != "step":
                    self.tb.add_scalar(k, v, step)
            self.tb.flush()  # as metrics.jsonl: nothing is lost if the run dies (e.g. non-finite losses)
        parts = " ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k.startswith("loss"))
        extra = " ".join(f"{k} {v:.3g}" for k, v in metrics.items() if not k.startswith("loss"))
        mem = f" | mem {peak_mem_gib:.2f} GiB" if peak_mem_gib is not None else ""
        eta = _fmt_eta((self.max_steps - step) / max(it_s, 1e-9))
        log.info(
            f"step {step:>7d}/{self.max_steps} | {parts} | {extra} | {it_s:.2f} it/s "
            f"{row['samples_s']:.1f} samples/s | eta {eta}{mem}"
        )

    def scalars(self, step: int, metrics: dict[str, float]) -> None:
        """A row of other scalars (evaluation metrics) at ``step``, in metrics.jsonl and tensorboard; the
        status line's timing is not touched."""
        if not self.is_main:
            return
        self.jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
        self.jsonl.flush()
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(k, v, step)
            self.tb.flush()

    def video(self, tag: str, videos_uint8: np.ndarray, step: int, fps: int = 8) -> None:
        """Sample videos [B, F, H, W, 3] uint8 to tensorboard (needs moviepy<2, else tensorboard skips
        them)."""
        if self.tb is None:
            return
        import torch

        self.tb.add_video(tag, torch.from_numpy(videos_uint8).permute(0, 1, 4, 2, 3), step, fps=fps)

    def image(self, tag: str, image_uint8: np.ndarray, step: int) -> None:
        if self.tb is not None:
            self.tb.add_image(tag, image_uint8, step, dataformats="HWC")

    def close(self) -> None:
        if self.jsonl is not None:
            self.jsonl.close()
        if self.tb is not None:
            self.tb.close()
