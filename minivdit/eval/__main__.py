"""``python -m minivdit.eval``: the papers' metrics from the command line.

Two folders (videos ``.mp4 .avi …`` or frame folders ``<clip>/<frame>.png``, sorted numerically)::

    python -m minivdit.eval folders --real /data/UCF-101/test_clips --fake samples/ --metrics fvd fid \\
        --i3d /weights/i3d_torchscript.pt --inception /weights/pt_inception-2015-12-05-6726825d.pth \\
        --num-frames 16 --resolution 256 --out metrics.json

A checkpoint (EMA weights, the run's objective and VAE; ``torchrun`` shards the samples over ranks), with
the settings the run evaluated itself with unless flags say otherwise (a run trained on shards is measured
against the dataset the shards were made from)::

    python -m minivdit.eval run --ckpt runs/quickstart
    python -m minivdit.eval run --ckpt runs/quickstart --cfg-scale 1  # beside: metrics-cfg_scale=1.json
    torchrun --nproc_per_node=8 -m minivdit.eval run --ckpt runs/align4gen_ucf --protocol align4gen-ucf \\
        --videomae … --i3d … --inception … --c3d … --clip … --cache-dir ~/.cache/minivdit

Both take the same protocol flags, each overriding one field of the named protocol (``--num-frames``,
``--resolution``, ``--num-real``, ``--num-gen``/``--num-fake``, ``--real-subset``, ``--real-stride``,
``--seed``, ``--ddof``, ``--is-variant``; ``run`` also ``--real-split``, ``--label-rule`` and
``--cfg-scale``, which only mean something when clips are generated from a run), built one way
(``EvalConfig.resolved_protocol``); in training they are ``--eval.*``. The ``align4gen-*`` protocols take
the real window stride from the run (its ``data.frame_interval``): ``folders`` needs ``--real-stride``::

    python -m minivdit.eval folders --protocol align4gen-ucf --real-stride 3 --real … --fake … --videomae …
    python -m minivdit.eval run --ckpt runs/align4gen_ucf --num-frames 16 --label-rule uniform

Both print one JSON line and write ``--out``: the metric values at the top level (``fvd``, ``cdfvd``, ``fid``,
``is`` and ``is_std``, ``clipsim``, ``syn_fvd``, ``syn_acc``, ``syn_count``) and the protocol record under
``protocol``. A metrics file of other settings is never replaced: the new one goes beside it, named by what
differs, and the log says so (``evaluate.metrics_path``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import torch
import tyro

from minivdit.config import check_types, from_dict
from minivdit.eval.evaluate import (
    EvalConfig,
    evaluate_folders,
    evaluate_model,
    frames_staging,
    missing_weights,
    write_metrics,
)
from minivdit.eval.protocols import LabelRule, Metric

log = logging.getLogger("minivdit")

FOLDERS_RESOLUTION = 256
"""``folders``' resolution when neither ``--resolution`` nor the protocol gives one (StyleGAN-V's and Latte's
datasets are prepared at 256²)."""


@dataclass(frozen=True, kw_only=True)
class Folders(EvalConfig):
    """Metrics between a folder of real clips and a folder of generated clips."""

    protocol: str = "stylegan-v"
    """A named protocol (the subset rule, the windows, the counts); the flags below override its values."""
    real: str | None = None
    """Folder of real videos / frame folders (sorted by path; one seeded window each)."""
    fake: str
    """Folder of generated videos / frame folders (the first ``num_frames`` frames of the first N; the
    overview files of ``python -m minivdit.sample``, ``grid.mp4``/``grid.gif``/``contact.png``, are
    skipped)."""
    num_gen: Annotated[int | None, tyro.conf.arg(aliases=("--num-fake",))] = None
    """Generated clips, the first N of ``--fake`` (None: the protocol's, 2,048)."""
    out: str = "metrics.json"
    """Where to write the metrics and the protocol record (a file of other settings there is not replaced:
    the metrics go beside it, ``metrics-<what differs>.json``, and the log says so)."""
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    # EvalConfig's settings for generating clips or for training: the clips here exist already, so these
    # flags would do nothing and are kept out of --help.
    every: tyro.conf.Suppress[int] = 0
    steps: tyro.conf.Suppress[int] = 50
    cfg_scale: tyro.conf.Suppress[float | None] = None
    precision: tyro.conf.Suppress[str] = "fp32"
    keep_frames: tyro.conf.Suppress[bool] = False
    data_root: tyro.conf.Suppress[str | None] = None
    # Protocol fields of generation or of a run's dataset: --real is the reference, the clips exist already.
    real_split: tyro.conf.Suppress[Literal["train", "test", "all"] | None] = None
    label_rule: tyro.conf.Suppress[LabelRule | None] = None


@dataclass(frozen=True, kw_only=True)
class Run(EvalConfig):
    """Sample a checkpoint under a protocol and measure the samples against the run's real data (for a run
    trained on shards, the dataset the shards were made from).

    Every setting not given on the command line (a flag left at None, or no ``--metrics``) is the one the
    run's own evaluation used (``eval`` in the run's config.json: protocol and the protocol fields it set,
    steps, CFG, counts, seed, batch size, precision, detector weights, data root, cache), else EvalConfig's
    default; a bare ``run --ckpt RUN`` repeats the training's measurement. ``--keep-frames`` and
    ``--strict`` are this command's own."""

    ckpt: str
    """A run folder (its latest checkpoint) or ``<run>/checkpoints/step_N``."""
    out: str | None = None
    """Where to write the metrics (default ``<run>/eval/step_N/metrics.json``). A file there written with
    other settings is not replaced: the metrics go beside it, in ``metrics-<what differs>.json`` (e.g.
    ``metrics-steps=50-cfg_scale=1.json``), and the log says so."""
    use_ema: bool = True
    """Sample the EMA weights (default) or the raw ones."""
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    protocol: str | None = None
    """A named protocol: stylegan-v, latte, align4gen-ucf, align4gen-sky, align4gen-ffs, synthetic (None: the
    run's evaluation protocol, else synthetic)."""
    metrics: tuple[Metric, ...] = ()
    """Metrics to compute (empty: the run's evaluation metrics, else the protocol's)."""
    num_gen: int | None = None
    """Generated clips (None: the run's evaluation count, else the protocol's)."""
    num_real: int | None = None
    """Real clips (None: the run's evaluation count, else the protocol's)."""
    steps: int | None = None
    """Sampler steps for the generated clips (None: the run's evaluation steps, else 50)."""
    cfg_scale: float | None = None
    """Classifier-free guidance of the generated clips (None: the run's evaluation CFG, else the protocol's,
    1.0 = none for every paper)."""
    seed: int | None = None
    """Seed of the real subset, the windows and the noise (None: the run's evaluation seed, else the
    protocol's)."""
    data_root: str | None = None
    """The real dataset's folder (None: the run's ``eval.data_root``, else its ``data.root``; for a run
    trained on shards, the root of the dataset they were made from, recorded in their meta.json)."""
    batch_size: int | None = None
    """Clips per chunk (None: the run's evaluation batch size, else 16)."""
    precision: str | None = None
    """"fp32" or "bf16" (autocast) for generation (None: the run's evaluation precision, else fp32)."""
    # Training-only (``every``) and ``folders``-only (``real_stats``) settings: kept out of --help.
    every: tyro.conf.Suppress[int] = 0
    real_stats: tyro.conf.Suppress[str | None] = None

    def __post_init__(self):
        check_types(self)  # the rest is checked when the settings are merged into an EvalConfig


# Settings of the invocation itself, not of the measurement: never taken from the run's config.
_OWN_SETTINGS = ("keep_frames", "strict", "every", "real_stats")


def run_settings(cmd: Run, run_eval: dict | None) -> EvalConfig:
    """The ``EvalConfig`` of ``run``: the command line's settings over the run's own evaluation settings
    (``run_eval``, the ``eval`` section of its config.json; None: EvalConfig's defaults). Without
    ``--metrics``, the metrics whose detector weights are not given are skipped as in training (all of them
    missing: the detectors refuse, naming the flags). Logs which settings came from where."""
    base = from_dict(EvalConfig, run_eval) if run_eval else EvalConfig()
    given = {}
    for f in dataclasses.fields(EvalConfig):
        value = getattr(cmd, f.name)
        if f.name in _OWN_SETTINGS or (value is not None and value != ()):
            given[f.name] = value
    cfg = dataclasses.replace(base, **given)
    if not cmd.metrics:  # the run's metrics: skip those without weights, as its training did
        absent = missing_weights(cfg, cfg.chosen_metrics)
        if absent and len(absent) < len(cfg.chosen_metrics):
            needed = ", ".join(sorted(set(absent.values())))
            log.info(f"eval run: skipping {', '.join(absent)}: no weights given ({needed})")
            cfg = dataclasses.replace(cfg, metrics=tuple(m for m in cfg.chosen_metrics if m not in absent))
    flags = [f"--{k.replace('_', '-')} {v}" for k, v in given.items() if k not in _OWN_SETTINGS]
    log.info(
        f"eval run: protocol {cfg.protocol}, steps {cfg.steps}, cfg_scale "
        f"{cfg.resolved_protocol().cfg_scale}, batch {cfg.batch_size}, precision {cfg.precision}: "
        + ("the run's own evaluation settings" if run_eval else "EvalConfig's defaults (the run has no eval)")
        + (f", with {' '.join(flags)} from the command line" if flags else "")
    )
    return cfg


def main(args: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    cmd = tyro.extras.subcommand_cli_from_dict(
        {"folders": Folders, "run": Run}, args=args, description=__doc__
    )
    if isinstance(cmd, Folders):
        cfg = EvalConfig(**{f.name: getattr(cmd, f.name) for f in dataclasses.fields(EvalConfig)})
        protocol = cfg.resolved_protocol()
        if protocol.num_frames is None:
            raise ValueError(f"--num-frames is needed (protocol {cmd.protocol} takes the run's)")
        values, record = evaluate_folders(
            cfg,
            real_dir=cmd.real,
            fake_dir=cmd.fake,
            num_frames=protocol.num_frames,
            resolution=protocol.resolution or FOLDERS_RESOLUTION,
            device=torch.device(cmd.device),
        )
        return _emit(Path(cmd.out), values, record, is_main=True)

    from minivdit import dist
    from minivdit.sample import load_run

    ctx = dist.init()
    try:
        device = ctx.device if ctx.distributed else torch.device(cmd.device)
        model, objective, vae, run_cfg = load_run(cmd.ckpt, use_ema=cmd.use_ema, device=device)
        ckpt_dir = Path(run_cfg["_ckpt"])
        cfg = run_settings(cmd, run_cfg.get("eval"))
        out = Path(cmd.out) if cmd.out else ckpt_dir.parent.parent / "eval" / ckpt_dir.name / "metrics.json"
        staging = frames_staging(out) if cfg.keep_frames else None
        if staging is not None and ctx.is_main:
            shutil.rmtree(staging, ignore_errors=True)  # a crashed run's clips must not mix with these
        if staging is not None:
            dist.barrier()
        values, record = evaluate_model(
            cfg,
            model=model,
            objective=objective,
            vae=vae,
            run_cfg=run_cfg,
            device=device,
            frames_dir=staging,
            show=ctx.is_main,
            weights="ema" if cmd.use_ema and (ckpt_dir / "ema.safetensors").is_file() else "raw",
        )
        return _emit(out, values, record, is_main=ctx.is_main, frames=staging)
    finally:
        dist.teardown()


def _emit(out: Path, values: dict, record: dict, *, is_main: bool, frames: Path | None = None) -> dict:
    result = {**values, "protocol": record}
    if is_main:
        path = write_metrics(out, values, record, frames=frames)
        print(json.dumps({**values, "out": str(path)}))
    return result


if __name__ == "__main__":
    main()
