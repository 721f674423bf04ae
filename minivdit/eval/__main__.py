"""``python -m minivdit.eval``: the papers' metrics from the command line.

Two folders (videos ``.mp4 .avi …`` or frame folders ``<clip>/<frame>.png``, sorted numerically)::

    python -m minivdit.eval folders --real /data/UCF-101/test_clips --fake samples/ --metrics fvd fid \\
        --i3d /weights/i3d_torchscript.pt --inception /weights/pt_inception-2015-12-05-6726825d.pth \\
        --num-frames 16 --resolution 256 --out metrics.json

A checkpoint (EMA weights, the run's objective and VAE; ``torchrun`` shards the samples over ranks)::

    python -m minivdit.eval run --ckpt runs/quickstart --protocol synthetic
    torchrun --nproc_per_node=8 -m minivdit.eval run --ckpt runs/align4gen_ucf --protocol align4gen-ucf \\
        --videomae … --i3d … --inception … --c3d … --clip … --cache-dir ~/.cache/minivdit

Both print one JSON line and write ``--out``: the metric values at the top level (``fvd``, ``cdfvd``, ``fid``,
``is`` and ``is_std``, ``clipsim``, ``syn_fvd``, ``syn_acc``, ``syn_count``) and the protocol record under
``protocol``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import torch
import tyro

from minivdit.eval.evaluate import EvalConfig, evaluate_folders, evaluate_model, write_metrics


@dataclass(frozen=True, kw_only=True)
class Folders(EvalConfig):
    """Metrics between a folder of real clips and a folder of generated clips."""

    protocol: str = "stylegan-v"
    """A named protocol (the subset rule, the windows, the counts); the flags below override its values."""
    real: str | None = None
    """Folder of real videos / frame folders (sorted by path; one seeded window each)."""
    fake: str
    """Folder of generated videos / frame folders (the first ``num_frames`` frames of the first N)."""
    num_frames: int | None = None
    """Frames per clip (None: the protocol's; 16 for FVD)."""
    resolution: int = 256
    """Clips are resized (short side, centre crop) to this before the detectors."""
    num_gen: Annotated[int | None, tyro.conf.arg(aliases=("--num-fake",))] = None
    """Generated clips, the first N of ``--fake`` (None: the protocol's, 2,048)."""
    out: str = "metrics.json"
    """Where to write the metrics and the protocol record."""
    device: str = "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True, kw_only=True)
class Run(EvalConfig):
    """Sample a checkpoint under a protocol and measure the samples against the run's real data."""

    ckpt: str
    """A run folder (its latest checkpoint) or ``<run>/checkpoints/step_N``."""
    out: str | None = None
    """Where to write the metrics (default ``<run>/eval/step_N/metrics.json``)."""
    use_ema: bool = True
    """Sample the EMA weights (default) or the raw ones."""
    device: str = "cuda" if torch.cuda.is_available() else "cpu"


def main(args: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    cmd = tyro.extras.subcommand_cli_from_dict(
        {"folders": Folders, "run": Run}, args=args, description=__doc__
    )
    if isinstance(cmd, Folders):
        cfg = EvalConfig(**{f.name: getattr(cmd, f.name) for f in dataclasses.fields(EvalConfig)})
        num_frames = cmd.num_frames or cfg.resolved_protocol().num_frames
        if num_frames is None:
            raise ValueError(f"--num-frames is needed (protocol {cmd.protocol} takes the run's)")
        values, record = evaluate_folders(
            cfg,
            real_dir=cmd.real,
            fake_dir=cmd.fake,
            num_frames=num_frames,
            resolution=cmd.resolution,
            device=torch.device(cmd.device),
        )
        out = Path(cmd.out)
        return _emit(out, values, record, is_main=True)

    from minivdit import dist
    from minivdit.sample import load_run

    ctx = dist.init()
    try:
        device = ctx.device if ctx.distributed else torch.device(cmd.device)
        model, objective, vae, run_cfg = load_run(cmd.ckpt, use_ema=cmd.use_ema, device=device)
        ckpt_dir = Path(run_cfg["_ckpt"])
        eval_dir = ckpt_dir.parent.parent / "eval" / ckpt_dir.name
        cfg = EvalConfig(**{f.name: getattr(cmd, f.name) for f in dataclasses.fields(EvalConfig)})
        values, record = evaluate_model(
            cfg,
            model=model,
            objective=objective,
            vae=vae,
            run_cfg=run_cfg,
            device=device,
            frames_dir=eval_dir / "frames" if cmd.keep_frames else None,
            show=ctx.is_main,
        )
        out = Path(cmd.out) if cmd.out else eval_dir / "metrics.json"
        return _emit(out, values, record, is_main=ctx.is_main)
    finally:
        dist.teardown()


def _emit(out: Path, values: dict, record: dict, *, is_main: bool) -> dict:
    result = {**values, "protocol": record}
    if is_main:
        write_metrics(out, values, record)
        print(json.dumps({**values, "out": str(out)}))
    return result


if __name__ == "__main__":
    main()
