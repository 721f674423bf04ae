"""Rank candidate alignment teachers without training: IICR, Δfreq and PCA maps of Align4Gen (seeds/004 §3).

    python tools/analyze_encoders.py --out reports/encoders --videos /data/UCF-101 --num-videos 1000 \
        --frames 16 --size 256 --dinov2 /models/dinov2-base --sam2 /models/sam2.1-hiera-base-plus \
        --videomae /models/videomae-base --ks 2 4 8 16 32 64 128 --device cuda

    python tools/analyze_encoders.py --out reports/synthetic --num-videos 64 --dinov2 DIR --sam2 DIR \
        --ckpt runs/align4gen/checkpoints/step_0100000 --tap 8 --t 0.5

Videos: ``--videos DIR`` reads every video file under DIR (recursively, sorted by path; PyAV), takes
``--frames`` frames ``--frame-interval`` apart from the start (or spread evenly over the whole clip when it
is too short, repeating frames when it has fewer than ``--frames``), resizes the short side to
``--size`` and centre-crops (``F.interpolate``, bilinear with antialias). Without ``--videos`` the built-in
synthetic dataset (``minivdit/data/synthetic.py``) is used. Undecodable files are skipped and counted.

Features: every configured encoder (``--dinov2 DIR`` ... as in ``minivdit.align.teachers.TeacherConfig``,
with ``--sam2-stage``, ``--layer`` and ``--drop-first-frame``) runs as its own one-encoder ``Teacher`` at
``--grid``, so image encoders (F' = T) and video encoders (F' = T / tubelet) can be compared in one run (a
fused ``Teacher`` requires equal F'). ``--features raw`` (default) analyses each encoder's raw output, as
Align4Gen's analysis does (seeds/004 §3, Eq. 8: ``F = E(x_0)``, the encoder output, and Eqs. 5-7 cluster
"features extracted" by the encoder): use it for the paper's Figs. 1 and 3. ``--features l2`` L2-normalises
every token first (of the DiT tap too), which removes the per-token scale (the cosine losses see only
directions) and changes IICR and Δfreq. Video encoders need T to be a multiple of the tubelet (or 4k + 1 with
``--drop-first-frame``); their PCA rows show one map per tubelet. ``--ckpt`` adds a trained
V-DiT: the run's EMA weights (``--no-ema``: raw), loaded as ``python -m minivdit.sample`` does, fed the clip
resampled to the run's frame count and size, encoded by the run's VAE when it has one, noised to ``x_t`` at
time ``--t`` by the run's objective (``corrupt(x, t=...)``, noise from ``--seed``), and tapped at block
``--tap`` (1-indexed, DESIGN.md §2): hidden tokens ``[B, F, N, D]``, not normalised. A class-conditional
model trained on the synthetic dataset gets the clips' true labels (when in range); otherwise every clip gets
the CFG null label.

Metrics, per encoder (``minivdit/align/analysis.py`` documents the choices):
- IICR for each k of ``--ks`` (ks >= the number of clustered vectors are skipped), with ``--pool``,
  ``--normalize`` and ``--sigma``; the vectors are pooled batch by batch, so memory is V·F'·D per encoder
  (times N with ``--pool tokens``);
- Δfreq of every frame's ``h × w × D`` feature map, averaged over all frames of all videos (and its std);
- PCA colour maps of the first ``--pca-videos`` videos (3 components fitted per video and encoder over all
  its frames).

Outputs in ``--out``: ``report.json`` (``iicr``: {encoder: {k: IICR}}, ``iicr_terms``: {encoder: {k:
{d_inter, d_intra}}}, ``delta_freq`` / ``delta_freq_std``: {encoder: float}, ``features``: {encoder: {dim,
frames, grid}}, ``videos``, ``skipped``, ``settings``, ``plots``), ``iicr.png`` (IICR vs k, Fig. 1),
``delta_freq.png`` (Fig. 3) and ``pca_video<i>.png`` (input frames, then one row per encoder, Fig. 2).
Non-finite IICR values (every cluster a single point) are written as ``null``.

Import from Python: load this file with ``importlib.util.spec_from_file_location`` (``tests/`` do) and call
``main([...])``, which returns the report dict.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from minivdit import durable
from minivdit.align.analysis import delta_freq, frame_vectors, iicr_terms, pca_colors
from minivdit.data import DataConfig, build_dataset, frame_size
from minivdit.dist import autocast
from minivdit.log import setup_logging
from minivdit.models.cond import Cond

log = logging.getLogger("minivdit")

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".gif", ".mpg", ".mpeg")
ENCODERS = ("dinov2", "dinov3", "sam2", "vjepa2", "videomae")  # TeacherConfig path fields, in CLI order


# ---------------------------------------------------------------------------------------------- videos


def resize_crop(video: Tensor, size: int) -> Tensor:
    """``[T, 3, H, W]`` float -> ``[T, 3, size, size]``: short side to ``size`` (bilinear, antialiased), then
    a centre crop."""
    _, _, H, W = video.shape
    scale = size / min(H, W)
    h, w = max(size, round(H * scale)), max(size, round(W * scale))
    if (h, w) != (H, W):
        video = F.interpolate(video, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    top, left = (h - size) // 2, (w - size) // 2
    return video[:, :, top : top + size, left : left + size]


def frame_indices(available: int, frames: int, interval: int) -> list[int]:
    """``frames`` indices ``interval`` apart from 0, or spread evenly (rounded ``linspace``) over a clip too
    short for that, which repeats frames when the clip has fewer than ``frames``."""
    if (frames - 1) * interval < available:
        return [i * interval for i in range(frames)]
    return np.linspace(0, available - 1, frames).round().astype(int).tolist()


def read_video(path: Path, frames: int, interval: int, size: int) -> Tensor:
    """Decode ``path`` with PyAV: ``[frames, 3, size, size]`` float32 in [-1, 1] (``frame_indices``)."""
    import av

    wanted_max = (frames - 1) * interval
    decoded = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            decoded.append(frame.to_ndarray(format="rgb24"))  # [H, W, 3] uint8
            if len(decoded) > wanted_max:
                break
    if not decoded:
        raise ValueError(f"{path}: no video frames")
    picked = np.stack([decoded[i] for i in frame_indices(len(decoded), frames, interval)])  # [T, H, W, 3]
    video = torch.from_numpy(picked).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # [T, 3, H, W]
    return resize_crop(video, size).clamp(-1.0, 1.0)


def video_files(root: Path) -> list[Path]:
    if not root.is_dir():
        raise ValueError(f"--videos {root}: not a directory")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTS)


def iter_videos(args: argparse.Namespace, skipped: list[str]) -> Iterator[tuple[Tensor, Tensor]]:
    """Batches ``(video [B, T, 3, H, W] in [-1, 1], label [B])`` (label −1: unknown), ``--num-videos`` in
    all (fewer if the folder has fewer decodable files). Undecodable files are appended to ``skipped``."""
    if args.videos is None:
        cfg = DataConfig(
            num_frames=args.frames,
            image_size=args.size,
            num_classes=args.num_classes,
            synthetic_size=args.num_videos,
            seed=args.seed,
        )
        dataset = build_dataset(cfg)
        samples = (dataset.get(i) for i in range(args.num_videos))
    else:

        def decode() -> Iterator[dict]:
            for path in video_files(Path(args.videos)):
                try:
                    yield {
                        "video": read_video(path, args.frames, args.frame_interval, args.size),
                        "label": -1,
                    }
                except Exception as e:  # corrupt or unsupported: skip and count
                    skipped.append(f"{path}: {type(e).__name__}: {e}")

        samples = decode()
    batch: list[dict] = []
    for n, sample in enumerate(samples, start=1):
        batch.append(sample)
        if len(batch) == args.batch or n == args.num_videos:
            yield torch.stack([s["video"] for s in batch]), torch.tensor([int(s["label"]) for s in batch])
            batch = []
        if n == args.num_videos:
            return
    if batch:
        yield torch.stack([s["video"] for s in batch]), torch.tensor([int(s["label"]) for s in batch])


def resample_video(video: Tensor, frames: int, size: int) -> Tensor:
    """``[B, T, 3, H, W]`` -> ``[B, frames, 3, size, size]``: evenly spaced frames, then ``resize_crop``."""
    B, T = video.shape[:2]
    if frames != T:
        video = video[:, np.linspace(0, T - 1, frames).round().astype(int)]
    if video.shape[-2:] != (size, size):
        video = torch.stack([resize_crop(v, size) for v in video])
    return video


# ---------------------------------------------------------------------------------------------- features


def build_teachers(args: argparse.Namespace, device: torch.device) -> dict:
    """One single-encoder ``Teacher`` per encoder given on the command line: ``{name: teacher}``."""
    from minivdit.align.teachers import TeacherConfig, build_teacher

    options = dict(sam2_stage=args.sam2_stage, layer=args.layer, drop_first_frame=args.drop_first_frame)
    teachers = {}
    for name in ENCODERS:
        if getattr(args, name) is not None:
            cfg = TeacherConfig(**{name: getattr(args, name)}, **options)
            teachers[name] = build_teacher(cfg, grid=tuple(args.grid)).to(device)
    return teachers


class DiTTap:
    """A trained V-DiT run's block ``tap`` on noised inputs (module docstring)."""

    def __init__(self, ckpt: str, *, tap: int, t: float, use_ema: bool, device: torch.device, seed: int):
        from minivdit.ckpt import load_weights
        from minivdit.config import from_dict
        from minivdit.models.dit import DiTConfig
        from minivdit.models.vae import VAEConfig, build_vae
        from minivdit.objectives.ddpm import DDPM, DDPMConfig
        from minivdit.objectives.flow import Flow, FlowConfig
        from minivdit.sample import _find_ckpt, _import_class  # the loading path of ``minivdit.sample``

        ckpt_dir = _find_ckpt(Path(ckpt))
        meta = json.loads((ckpt_dir / "meta.json").read_text())
        run = meta["config"]
        self.cfg = from_dict(DiTConfig, run["model"])
        obj = run["objective"]
        self.objective = (
            DDPM(from_dict(DDPMConfig, obj))
            if obj["_type"] == "DDPMConfig"
            else Flow(from_dict(FlowConfig, obj))
        )
        with torch.device("meta"):
            model = _import_class(meta.get("model_class"))(self.cfg)
        model.to_empty(device=device)
        model.reset_buffers()
        load_weights(model, ckpt_dir / ("ema.safetensors" if use_ema else "model.safetensors"))
        self.model = model.eval()
        vae_dict = run.get("vae")
        vae = build_vae(from_dict(VAEConfig, vae_dict)) if isinstance(vae_dict, dict) else None
        self.vae = vae.to(device) if vae is not None else None
        H, W = frame_size(run["data"]["image_size"])
        if H != W:
            raise ValueError(f"{ckpt}: analyze_encoders takes square runs, this one trains on {H}x{W} frames")
        self.frames, self.size = int(run["data"]["num_frames"]), H
        self.synthetic = run["data"].get("dataset") == "synthetic"
        if not 1 <= tap <= self.cfg.depth:
            raise ValueError(f"--tap {tap} out of range: blocks are 1-indexed, 1..{self.cfg.depth}")
        self.tap, self.t, self.device = tap, t, device
        self.gen = torch.Generator(device=device).manual_seed(seed)
        self.name = f"dit_block{tap}"
        self.grid = tuple(self.cfg.grid)

    @torch.no_grad()
    def __call__(self, video: Tensor, label: Tensor) -> Tensor:
        """Hidden tokens ``[B, F, N, D]`` (float32) of block ``tap`` for clean ``video`` [B, T, 3, H, W]."""
        x = resample_video(video, self.frames, self.size).to(self.device)  # [B, F, 3, S, S]
        if self.vae is not None:
            x = self.vae.encode(x).float()  # [B, F', C, h, w]
        noised = self.objective.corrupt(x, self.gen, t=self.t)
        y = None
        if self.cfg.num_classes:  # labels of the synthetic clips mean something only to a synthetic run
            known = (label >= 0) & (label < self.cfg.num_classes) & self.synthetic
            y = torch.where(known, label, torch.full_like(label, self.cfg.num_classes)).to(self.device)
        out = self.model(noised.x_t, noised.t_model, Cond(label=y), tap=self.tap)
        return out.hidden.float()  # [B, F, N, D]


class Accumulator:
    """Per-encoder running state: pooled frame vectors for IICR, per-frame Δfreq, tokens for PCA."""

    def __init__(self, grid: tuple[int, int], pool: str, pca_videos: int, features: str = "raw"):
        self.grid, self.pool, self.pca_videos, self.features = grid, pool, pca_videos, features
        self.vectors: list[Tensor] = []  # [B, F', D] or [B, F', N, D]
        self.dfreq: list[Tensor] = []  # [B·F']
        self.pca: list[Tensor] = []  # [F', h, w, D] per video
        self.dim = self.frames = 0

    def add(self, feats: Tensor) -> None:
        """``feats`` [B, F', N, D] with N = h·w of ``grid``."""
        B, Fp, N, D = feats.shape
        h, w = self.grid
        if h * w != N:
            raise ValueError(f"features have {N} tokens per frame, expected {h}x{w} = {h * w}")
        feats = feats.float().cpu()
        if self.features == "l2":  # per token, before pooling and the FFT
            feats = F.normalize(feats, dim=-1)
        self.dim, self.frames = D, Fp
        self.vectors.append(feats.mean(2) if self.pool == "mean" else feats)
        maps = feats.reshape(B * Fp, h, w, D)  # [B·F', h, w, D]
        self.dfreq.append(delta_freq(maps).float())
        for video in feats[: max(0, self.pca_videos - len(self.pca))]:
            self.pca.append(video.reshape(Fp, h, w, D))


# ---------------------------------------------------------------------------------------------- plots


def _plots(out: Path, report: dict, pca: dict[str, list[np.ndarray]], inputs: list[np.ndarray]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, curve in report["iicr"].items():
        ks = [int(k) for k, v in curve.items() if v is not None]
        ax.plot(ks, [curve[str(k)] for k in ks], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k (k-means clusters)")
    ax.set_ylabel("IICR = D_inter / D_intra")
    ax.set_title(f"IICR over {report['videos']} videos")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "iicr.png", dpi=120)
    plt.close(fig)
    written.append("iicr.png")

    names = list(report["delta_freq"])
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(names), 3.5))
    ax.bar(names, [report["delta_freq"][n] for n in names], yerr=[report["delta_freq_std"][n] for n in names])
    ax.set_ylabel("Δfreq = mean log|S| (high) − log|S| (DC)")
    ax.tick_params(axis="x", labelrotation=20)
    fig.tight_layout()
    fig.savefig(out / "delta_freq.png", dpi=120)
    plt.close(fig)
    written.append("delta_freq.png")

    for i, frames in enumerate(inputs):
        # One column per input frame; an encoder's F' frames sit under the first frame of their tubelet when
        # F' divides T, else evenly spread (the 4k + 1 -> k + 1 frame matching: frames 0, 4, 8, ...).
        cols = len(frames)
        rows = [("input", frames)] + [(n, maps[i]) for n, maps in pca.items() if i < len(maps)]
        fig, axes = plt.subplots(len(rows), cols, figsize=(1.0 * cols + 0.8, 1.0 * len(rows)), squeeze=False)
        for r, (name, images) in enumerate(rows):
            n = len(images)
            spread = np.linspace(0, cols - 1, n).round().astype(int).tolist()
            where = dict(zip(range(0, cols, cols // n) if cols % n == 0 else spread, images))
            for c in range(cols):
                ax = axes[r, c]
                ax.set_xticks([])
                ax.set_yticks([])
                if c in where:
                    ax.imshow(where[c], interpolation="nearest")
                else:
                    ax.set_frame_on(False)
            axes[r, 0].set_ylabel(name, fontsize=7)
        fig.tight_layout()
        fig.savefig(out / f"pca_video{i}.png", dpi=100)
        plt.close(fig)
        written.append(f"pca_video{i}.png")
    return written


# ---------------------------------------------------------------------------------------------- main


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def analyze(args: argparse.Namespace) -> dict:
    """Run the analysis described in the module docstring; returns the report (also written to disk)."""
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    teachers = build_teachers(args, device)
    dit = (
        DiTTap(args.ckpt, tap=args.tap, t=args.t, use_ema=args.ema, device=device, seed=args.seed)
        if args.ckpt
        else None
    )
    if not teachers and dit is None:
        raise ValueError("nothing to analyse: give at least one encoder (--dinov2 DIR, ...) or --ckpt RUN")
    accs: dict[str, Accumulator] = {}
    for name, teacher in teachers.items():
        accs[name] = Accumulator(tuple(teacher.grid), args.pool, args.pca_videos, args.features)
    if dit is not None:
        accs[dit.name] = Accumulator(dit.grid, args.pool, args.pca_videos, args.features)

    skipped: list[str] = []
    inputs: list[np.ndarray] = []  # uint8 [T, H, W, 3] of the PCA videos
    videos = 0
    with torch.no_grad():
        for video, label in iter_videos(args, skipped):
            videos += len(video)
            for v in video[: max(0, args.pca_videos - len(inputs))]:
                inputs.append(((v.permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255).byte().numpy())
            with autocast(device, args.precision):
                for name, teacher in teachers.items():
                    accs[name].add(teacher(video.to(device)))  # [B, F', N, D], raw tokens
                if dit is not None:
                    accs[dit.name].add(dit(video, label))  # [B, F, N, D]
            log.info(f"features of {videos} videos")
    if videos == 0:
        raise ValueError(f"no decodable videos (skipped {len(skipped)}: {skipped[:3]})")

    report: dict = {
        "videos": videos,
        "skipped": skipped,
        "iicr": {},
        "iicr_terms": {},
        "delta_freq": {},
        "delta_freq_std": {},
        "features": {},
    }
    pca: dict[str, list[np.ndarray]] = {}
    for name, acc in accs.items():
        vectors = frame_vectors(torch.cat(acc.vectors), pool=args.pool, normalize=args.normalize)  # [M, D]
        vectors = vectors.to(device)  # k-means on the accelerator when there is one (float64)
        curve, terms = {}, {}
        for k in args.ks:
            if not 2 <= k < vectors.shape[0]:
                continue
            r = iicr_terms(vectors[None], k, seed=args.seed, sigma=args.sigma, iters=args.kmeans_iters)
            curve[str(k)] = _finite(r["iicr"])
            terms[str(k)] = {"d_inter": r["d_inter"], "d_intra": r["d_intra"]}
        dfreq = torch.cat(acc.dfreq)  # [V·F']
        report["iicr"][name] = curve
        report["iicr_terms"][name] = terms
        report["delta_freq"][name] = float(dfreq.mean())
        report["delta_freq_std"][name] = float(dfreq.std()) if dfreq.numel() > 1 else 0.0
        report["features"][name] = {"dim": acc.dim, "frames": acc.frames, "grid": list(acc.grid)}
        pca[name] = [pca_colors(tokens) for tokens in acc.pca]
        log.info(f"{name}: IICR {curve}  Δfreq {report['delta_freq'][name]:.3f}")
    report["settings"] = {k: v for k, v in vars(args).items()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report["plots"] = _plots(out, report, pca, inputs)
    durable.write_text(out / "report.json", json.dumps(report, indent=2))
    log.info(f"wrote {out / 'report.json'} and {len(report['plots'])} plots")
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output folder (report.json and PNGs)")
    src = ap.add_argument_group("videos")
    src.add_argument("--videos", default=None, help="folder of video files (default: the synthetic dataset)")
    src.add_argument("--num-videos", type=int, default=64, help="videos to analyse (the paper: 1,000)")
    src.add_argument("--frames", type=int, default=16, help="frames per clip")
    src.add_argument("--frame-interval", type=int, default=1, help="stride between decoded frames (--videos)")
    src.add_argument("--size", type=int, default=224, help="side of the square frames fed to the encoders")
    src.add_argument("--num-classes", type=int, default=8, help="classes of the synthetic dataset")
    src.add_argument("--batch", type=int, default=4, help="videos per forward pass")
    enc = ap.add_argument_group("encoders (local Hugging Face folders, as TeacherConfig)")
    for name in ENCODERS:
        enc.add_argument(f"--{name}", default=None, metavar="DIR")
    enc.add_argument(
        "--grid", type=int, nargs=2, default=[16, 16], metavar=("H", "W"), help="teacher token grid"
    )
    enc.add_argument("--sam2-stage", type=int, default=2, help="Hiera stage (0-indexed) of SAM2's map")
    enc.add_argument("--layer", choices=["last", "prenorm"], default="last", help="ViT token layer")
    enc.add_argument("--drop-first-frame", action="store_true", help="video encoders: drop pixel frame 0")
    dit = ap.add_argument_group("a trained V-DiT (optional)")
    dit.add_argument("--ckpt", default=None, help="run folder or checkpoints/step_NNNNNNN")
    dit.add_argument("--tap", type=int, default=8, help="block whose output is analysed (1-indexed)")
    dit.add_argument("--t", type=float, default=0.5, help="noise time of x_t (0 = clean data, 1 = noise)")
    dit.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True, help="EMA or raw weights")
    met = ap.add_argument_group("metrics (minivdit/align/analysis.py)")
    met.add_argument(
        "--ks", type=int, nargs="+", default=[2, 4, 8, 16, 32, 64], help="k-means cluster counts"
    )
    met.add_argument(
        "--features",
        choices=["raw", "l2"],
        default="raw",
        help="tokens analysed: raw encoder output (Align4Gen Eq. 8; the paper's figures) or L2-normalised",
    )
    met.add_argument("--pool", choices=["mean", "tokens"], default="mean", help="per-frame vector for IICR")
    met.add_argument("--normalize", choices=["none", "l2"], default="none", help="IICR vector normalisation")
    met.add_argument("--sigma", choices=["rms", "dim_std"], default="rms", help="within-cluster spread σ_i")
    met.add_argument("--kmeans-iters", type=int, default=100)
    met.add_argument("--pca-videos", type=int, default=2, help="videos drawn as PCA colour maps")
    ap.add_argument("--seed", type=int, default=0, help="k-means, DiT noise and synthetic clips")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="autocast of the networks")
    args = ap.parse_args(argv)
    for name in ("num_videos", "frames", "frame_interval", "size", "batch", "num_classes", "kmeans_iters"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.pca_videos < 0 or min(args.grid) < 1 or not 0.0 <= args.t <= 1.0:
        ap.error("--pca-videos must be >= 0, --grid positive and --t in [0, 1]")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    setup_logging(0, stream=sys.stderr)  # the trainer's line format
    return analyze(args)


if __name__ == "__main__":
    main()


__all__ = ["main", "analyze", "parse_args", "read_video", "resize_crop", "frame_indices", "DiTTap"]
