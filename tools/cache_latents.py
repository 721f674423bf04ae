"""Run the frozen VAE (and teachers) over a dataset once; write shards of latents (and features) with labels.

    # SD-VAE latents + DINOv2 / SAM2.1 features of UCF-101 (Align4Gen: 16 frames at 256², V-DiT-L/2 → 16×16
    # token grid)
    python tools/cache_latents.py --data.dataset ucf101 --data.root /data/UCF-101 --data.num-frames 16 \\
        --data.image-size 256 --data.num-workers 8 --out /data/cache/ucf101-sd-dino-sam2 \\
        --vae.kind sd --vae.path /models/sd-vae-ft-ema \\
        --teacher.dinov2 /models/dinov2-base --teacher.sam2 /models/sam2.1-hiera-base-plus \\
        --device cuda --batch-size 16 --precision bf16   # the recipe's precision (a run checks it)

    # then train from the cache: the loader fills Batch.latents / Batch.feats and train_step skips the VAE
    # encoder and the teachers (the VAE is still loaded to decode samples)
    torchrun --nproc_per_node=8 recipes/align4gen_ucf.py --data.dataset shards \\
        --data.root /data/cache/ucf101-sd-dino-sam2

What is stored (``minivdit/data/shards.py`` documents the format): ``latents.npy`` ``[F', C, h, w]``, exactly
what ``train_step`` would feed the DiT (``vae.encode``: scaled and shifted by the VAE), in
``--latents-dtype`` (float32 by default); ``feats.npy`` ``[F', h·w, ΣD]``, exactly ``Teacher.forward`` (each
encoder's raw tokens, concatenated dinov2, dinov3, sam2, vjepa2, videomae; the align head normalises them
after its frame averaging; meta.json says ``"features": "raw"``, older caches of normalised tokens are
refused) on the token grid
``--teacher.token-grid`` when set (VideoREPA's 10×15 for 480×720 clips), else ``--grid`` (default: image
size / VAE compression / ``--patch-size``, the DiT's grid), in ``--feats-dtype``
(bfloat16 by default); ``label.cls``; ``caption.txt`` when the dataset has captions; with ``--keep-video``
also the clip (``video.npy`` uint8, or ``--video-format mp4``). meta.json records the VAE and teacher configs,
the VAE's compression and the teacher's names, widths and grid, and the content identity of the VAE and of
each teacher folder (``minivdit.identity``: sha256 of the config.json and of the weight files' names, sizes,
safetensors headers and sampled blocks; the same VAE named ``runs/x`` or ``runs/x/vae`` has one identity).
A run on the cache recomputes them from its ``--vae.path`` / ``--teacher.*`` and refuses the cache when they
differ (``minivdit.data.shards.cache_mismatches``), naming both folders.

The VAE posterior (``--posterior``). "moments" (default): ``latents.npy`` holds the mean and
``latents_logvar.npy`` the log-variance of the *scaled* latents (``scaled_moments``: s·(μ − shift) and
logvar + 2·log s), and the loader draws a fresh posterior sample from them at every visit, seeded by the
loader's ``(seed, epoch, index)`` so resume stays exact (``minivdit/data/shards.py``, "Latent posterior"):
what diffusers' and finetrainers' cached training does (``DiagonalGaussianDistribution(moments).sample()``
each step; REPA caches the moments too). The sample equals ``vae.encode``'s up to float rounding (the scale
is applied to the moments instead of to the draw). "mean": the posterior mean only, the same latents every
epoch. "sample": one posterior sample per clip (seeded by shard and batch), frozen into the cache.
meta.json's ``latent_posterior`` records which; the latents' dtype (``--latents-dtype``) is the log-variance's
too.

The image condition (``--start-frame``). Image-to-video runs encode frame 0 of each clip alone at every step
(``conditioning/i2v.py``, FlashI2V's ``start_frame_latents``), which needs the pixel clips and the VAE
encoder. ``--start-frame clean`` caches that encode (``image_latents.npy`` [1, C, h, w], the posterior mean):
FlashI2V's z_c exactly as the trainer computes it online with a mean-encoding VAE (the reference encodes
with μ). ``--start-frame noised`` caches CogVideoX-I2V's condition: frame 0 plus the pixel noise σ·ε, σ
log-normal (``--noise-log-mean``, ``--noise-log-std``, the run's ``--i2v.*``), drawn once per clip here
instead of at every step (as the diffusers I2V example does when it caches). A run then reads
``--data.shard-fields latents image_latents``: no clips, no VAE encode (the VAE stays on the CPU for
samples). meta.json's ``start_frame`` is compared with the run (``shards.start_frame_mismatches``): FlashI2V
refuses a noised cache, I2V a clean one or other noise settings. Anyframe still encodes its noise-filled
clips online (they depend on the drawn frame and fill), so it needs the clips; the cache serves its i = 0
samples, and the online path encodes only the clips of the i > 0 samples.

Sizes (the tool logs the bytes per sample of each field before it starts): SD-VAE latents of a 16×256² clip
are 16·4·32·32 fp32 = 256 KiB; DINOv2-B (768) + SAM2.1-B+ stage 2 (448) features on the 16×16 grid are
16·256·1216 bf16 ≈ 9.5 MiB per clip, so about 130 GB for UCF-101's 13,320 clips: budget the disk (or cache
latents and clips only, ``--keep-video`` without teachers, and run the teachers online).

The clips are decoded, sampled and augmented as ``tools/make_shards.py`` does (repeat k = the loader's draw
for epoch k, ``--repeats``). Resumable: finished shards are skipped on a rerun with the same flags.
``--precision bf16`` runs the VAE and teachers under bf16 autocast (as ``train_step`` with
``--precision bf16``); fp32 by default. Give the run's: meta.json's ``precision`` is compared with the run's
``--precision``, and another one is refused (``shards.precision_mismatches``), as are clips sampled with
another frame sampler than the run's ``--data.*`` (``shards.sampler_mismatches``).

Import from Python: ``main([...])`` or ``cache_latents(CacheConfig(...))`` (tests load this file with
``importlib``).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import tyro
from torch.utils.data import DataLoader

from minivdit import dist
from minivdit.align.teachers import FEATURES, TeacherConfig, build_teacher, teacher_identity
from minivdit.conditioning.i2v import I2VConfig, noised_first_frame
from minivdit.data import DataConfig, build_dataset
from minivdit.data.shards import (
    FLOAT_DTYPES,
    PlannedSamples,
    bucket_meta,
    describe_source,
    finish_shards,
    log_shard,
    make_meta,
    note_skipped,
    prepare_shards,
    sample_fields,
    sample_key,
    video_field,
    write_shard,
)
from minivdit.log import setup_logging
from minivdit.models.vae import VAEConfig, build_vae, vae_identity

log = logging.getLogger("minivdit")
FloatName = Literal["float32", "float16", "bfloat16"]


@dataclass(frozen=True, kw_only=True)
class CacheConfig:
    """Dataset → shards of VAE latents and teacher features."""

    data: DataConfig = field(default_factory=DataConfig)
    """The dataset, as for training (``--data.dataset``, ``--data.root``, ``--data.num-frames``, ...);
    ``--data.num-workers`` decoding workers."""
    out: str
    """Output folder for meta.json and shard-NNNNNN.tar."""
    vae: VAEConfig = field(default_factory=lambda: VAEConfig(sample_posterior=False))
    """The VAE whose latents are cached (``--vae.kind sd --vae.path DIR``); kind "none" caches no latents."""
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    """Teacher folders whose features are cached (``--teacher.dinov2 DIR --teacher.sam2 DIR``); none set:
    no features."""
    grid: tuple[int, int] | None = None
    """DiT token grid (h, w), the teacher's unless ``--teacher.token-grid`` is set; default image size / VAE
    compression / ``--patch-size``."""
    patch_size: int = 2
    """DiT patch size, only to derive the default ``--grid`` (Latte / Align4Gen: 2)."""
    latents_dtype: FloatName = "float32"
    """Stored dtype of the latents."""
    feats_dtype: FloatName = "bfloat16"
    """Stored dtype of the teacher features."""
    keep_video: bool = False
    """Also store the clip (then the same shards serve pixel-space or uncached runs)."""
    video_format: Literal["npy", "mp4"] = "npy"
    """Clip storage with ``--keep-video``."""
    batch_size: int = 8
    """Clips per VAE / teacher call."""
    device: str = "auto"
    """"auto" (cuda when available), "cpu", "cuda", "cuda:1", ..."""
    precision: dist.Precision = "fp32"
    """Autocast of the VAE and teachers: "fp32" or "bf16"."""
    samples_per_shard: int = 1000
    """Samples per shard (the last may hold fewer)."""
    repeats: int = 1
    """Cache each clip this many times with different temporal windows / flips."""
    limit: int | None = None
    """Only the first N clips of the dataset."""
    overwrite: bool = False
    """Replace shards of different settings already in ``--out``."""
    posterior: Literal["moments", "mean", "sample"] = "moments"
    """What of the VAE posterior is cached (module docstring): its moments, sampled by the loader at every
    visit (diffusers, finetrainers); the mean; or one frozen sample."""
    start_frame: Literal["none", "clean", "noised"] = "none"
    """Also cache the image condition: frame 0 encoded alone (``image_latents.npy`` [1, C, h, w], the
    posterior mean). "clean": FlashI2V's z_c, exactly what the trainer computes online. "noised":
    CogVideoX-I2V's frame with the pixel noise σ·ε drawn once per clip (``--noise-log-mean`` and
    ``--noise-log-std``: the run's ``--i2v.*`` values). I2V "first" and FlashI2V runs then need neither the
    clips nor the VAE encoder."""
    noise_log_mean: float = -3.0
    """``--start-frame noised``: mean of log σ (``I2VConfig.noise_log_mean``; SAT −3)."""
    noise_log_std: float = 0.5
    """``--start-frame noised``: std of log σ (``I2VConfig.noise_log_std``; SAT 0.5)."""

    def __post_init__(self):
        if self.vae.sample_posterior and self.posterior != "sample":
            raise ValueError(
                f"--vae.sample-posterior with --posterior {self.posterior}: a frozen posterior sample is "
                f"--posterior sample (the default, moments, samples at every visit instead)"
            )
        if self.batch_size < 1 or self.samples_per_shard < 1 or self.repeats < 1 or self.patch_size < 1:
            raise ValueError("batch_size, samples_per_shard, repeats and patch_size must be >= 1")
        if self.start_frame != "none" and self.vae.kind == "none":
            raise ValueError(
                f"--start-frame {self.start_frame} encodes frame 0 with the VAE: give --vae.kind"
            )
        if self.vae.kind == "none" and not self.teacher.enabled:
            raise ValueError(
                "nothing to cache: give a VAE (--vae.kind sd --vae.path DIR) and/or teacher folders "
                "(--teacher.dinov2 DIR ...)"
            )


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _seed(*keys: int) -> int:
    return int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0] >> np.uint64(1))


def _collate(items: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    return items


def cache_latents(cfg: CacheConfig) -> Path:
    """Write the cache of ``cfg`` (module docstring); returns the output folder."""
    device = _device(cfg.device)
    dataset = build_dataset(cfg.data)
    size = len(dataset) if cfg.limit is None else min(cfg.limit, len(dataset))
    first = PlannedSamples(dataset, [0], size, cfg.data.seed)[0][1]
    F, _, H, W = first["video"].shape
    buckets = getattr(dataset, "buckets", None)  # --data.buckets.sizes: shapes per bucket (shards.py)
    if buckets is not None and cfg.teacher.enabled:
        raise ValueError(
            "teacher features with --data.buckets.sizes: the teachers' token grid is one size; cache latents "
            "only (the buckets' clips), or cache features without buckets"
        )
    vae_cfg = replace(cfg.vae, sample_posterior=cfg.posterior == "sample")  # encode() draws only for "sample"
    vae = build_vae(vae_cfg)
    # the content identity, not the path: what a run compares to refuse latents of another VAE
    identity = vae_identity(vae_cfg) if vae is not None else None
    fields: dict[str, dict] = {"label": {"member": "label.cls"}}
    meta_vae = meta_teacher = None
    s = 1
    if vae is not None:
        vae = vae.to(device)
        s = vae.spatial_compression
        for h, w in {(H, W)} | {(b.height, b.width) for b in buckets or ()}:
            if h % s or w % s:
                raise ValueError(f"clips of {h}x{w} px are not divisible by the VAE's {s}x compression")
        shape = None if buckets else [vae.latent_frames(F), vae.latent_channels, H // s, W // s]
        fields["latents"] = {"member": "latents.npy", "dtype": cfg.latents_dtype, "shape": shape}
        if cfg.posterior == "moments":
            fields["latents_logvar"] = fields["latents"] | {"member": "latents_logvar.npy"}
        if cfg.start_frame != "none":  # [1, C, h, w]: frame 0 encoded alone
            first_shape = None if buckets else [1, vae.latent_channels, H // s, W // s]
            fields["image_latents"] = fields["latents"] | {
                "member": "image_latents.npy",
                "shape": first_shape,
            }
        meta_vae = asdict(vae_cfg) | {
            "latent_channels": vae.latent_channels,
            "spatial_compression": s,
            "temporal_compression": getattr(vae, "temporal_compression", 1),
            "identity": identity,
        }
    teacher = None
    if cfg.teacher.enabled:
        grid = cfg.grid or (H // s // cfg.patch_size, W // s // cfg.patch_size)
        teacher = build_teacher(cfg.teacher, grid=tuple(grid)).to(device)
        grid = teacher.grid  # --teacher.token-grid when set: runs compare it (shards.cache_mismatches)
        shape = [teacher.frames_out(F), grid[0] * grid[1], sum(teacher.dims)]
        fields["feats"] = {"member": "feats.npy", "dtype": cfg.feats_dtype, "shape": shape}
        meta_teacher = asdict(cfg.teacher) | {
            "names": list(teacher.names),
            "dims": list(teacher.dims),
            "grid": list(grid),
            "identity": teacher_identity(cfg.teacher),
            "features": FEATURES,  # raw tokens; runs refuse normalised ones (shards.cache_mismatches)
        }
    if cfg.keep_video:
        fields["video"] = video_field(None if buckets else (F, 3, H, W), cfg.video_format)
    if first.get("caption") is not None:
        fields["caption"] = {"member": "caption.txt"}
    extra = {}
    if buckets is not None:

        def shapes(b) -> dict[str, tuple[int, ...]]:
            out = {"video": (b.frames, 3, b.height, b.width)} if cfg.keep_video else {}
            if vae is not None:
                latent = (vae.latent_frames(b.frames), vae.latent_channels, b.height // s, b.width // s)
                out |= {k: latent for k in ("latents", "latents_logvar") if k in fields}
                if "image_latents" in fields:
                    out["image_latents"] = (1, *latent[1:])
            return out

        extra["buckets"] = bucket_meta(dataset, size, shapes)
    meta = make_meta(
        fields=fields,
        source_size=size,
        samples_per_shard=cfg.samples_per_shard,
        repeats=cfg.repeats,
        **describe_source(cfg.data, dataset),
        vae=meta_vae,
        **({"latent_posterior": cfg.posterior} if vae is not None else {}),
        teacher=meta_teacher,
        precision=cfg.precision,
        **({"start_frame": _start_frame_stamp(cfg)} if cfg.start_frame != "none" else {}),
        made_by="tools/cache_latents.py",
        **extra,
    )
    out = Path(cfg.out)
    todo = prepare_shards(out, meta, overwrite=cfg.overwrite)
    sizes = {  # with buckets: those of the first clip's bucket
        k: math.prod(v["shape"]) * (1 if k == "video" else FLOAT_DTYPES[v["dtype"]].itemsize)
        for k, v in sample_fields(meta, sample_key(0)).items()
        if "shape" in v
    }
    log.info(
        f"{out}: {meta['num_samples']} samples in {len(meta['shards'])} shards, {len(todo)} to write; "
        f"bytes per sample: {sizes}; on {device}, {cfg.precision}"
    )
    for shard in todo:
        t0 = time.perf_counter()
        spec = meta["shards"][shard]
        start = shard * cfg.samples_per_shard
        planned = PlannedSamples(dataset, range(start, start + spec["count"]), size, cfg.data.seed)
        loader = DataLoader(
            planned, batch_size=cfg.batch_size, num_workers=cfg.data.num_workers, collate_fn=_collate
        )
        samples, skipped = _encode(loader, vae=vae, teacher=teacher, device=device, cfg=cfg, shard=shard), []
        write_shard(out, shard, meta, note_skipped(samples, skipped))
        log_shard(meta, shard, time.perf_counter() - t0, skipped)
    finish_shards(out, meta)
    return out


def _start_frame_stamp(cfg: CacheConfig) -> dict:
    """meta.json's ``start_frame``: what a run compares (``minivdit.data.shards.start_frame_mismatches``)."""
    stamp = {"frame": cfg.start_frame, "posterior": "mean"}
    if cfg.start_frame == "noised":
        stamp |= {
            "noise_log_mean": cfg.noise_log_mean,
            "noise_log_std": cfg.noise_log_std,
            "noise_per": "clip",
        }
    return stamp


def _encode(loader, *, vae, teacher, device, cfg: CacheConfig, shard: int) -> Iterator[tuple[str, dict]]:
    for b, batch in enumerate(loader):
        # buckets: a batch of the cache may hold several sizes; each size is encoded apart, order kept
        by_shape: dict[tuple, list] = {}
        for key, sample in batch:
            by_shape.setdefault(tuple(sample["video"].shape), []).append((key, sample))
        done = {}
        for part, items in enumerate(by_shape.values()):
            done |= dict(
                _encode_items(items, vae=vae, teacher=teacher, device=device, cfg=cfg, seed=(shard, b, part))
            )
        for key, _ in batch:
            yield key, done[key]


def _encode_items(
    items, *, vae, teacher, device, cfg: CacheConfig, seed: tuple
) -> Iterator[tuple[str, dict]]:
    """Latents / features of ``items`` ``[(key, sample)]``, clips of one shape; ``seed`` = (shard, batch,
    part of the batch)."""
    video = torch.stack([torch.as_tensor(s["video"]) for _, s in items]).to(device)  # [B, F, 3, H, W]
    if video.dtype == torch.uint8:
        video = video.float() / 127.5 - 1.0
    extra: dict[str, torch.Tensor] = {}
    with torch.no_grad(), dist.autocast(device, cfg.precision):
        if vae is not None:
            if cfg.posterior == "moments":
                mean, logvar = scaled_moments(vae, video)  # [B, F', C, h, w] each
                extra["latents"], extra["latents_logvar"] = mean.float().cpu(), logvar.float().cpu()
            else:
                # only --posterior sample draws; (shard, batch) without buckets, as before them
                torch.manual_seed(_seed(cfg.data.seed, *(seed if seed[2] else seed[:2])))
                extra["latents"] = vae.encode(video).float().cpu()  # [B, F', C, h, w]
            if cfg.start_frame != "none":
                extra["image_latents"] = _start_frame(vae, video[:, :1], cfg, seed).cpu()  # [B, 1, C, h, w]
        if teacher is not None:
            extra["feats"] = feats = teacher(video).float().cpu()  # [B, F', N', ΣD], raw tokens
            if cfg.feats_dtype == "float16" and feats.abs().max() > torch.finfo(torch.float16).max:
                raise ValueError(
                    f"teacher features reach |x| = {float(feats.abs().max()):.4g}, beyond float16's "
                    f"{torch.finfo(torch.float16).max:.0f} (raw, unnormalised tokens): use --feats-dtype "
                    f"bfloat16 or float32"
                )
    for i, (key, sample) in enumerate(items):
        yield key, {**sample, **{k: v[i] for k, v in extra.items()}}


def _start_frame(vae, frame: torch.Tensor, cfg: CacheConfig, seed: tuple) -> torch.Tensor:
    """Frame 0 [B, 1, 3, H, W] (+ CogVideoX's σ·ε, drawn from a generator of (data seed, shard, batch, part)
    with ``--start-frame noised``) encoded alone: the scaled posterior mean [B, 1, C, h, w] fp32, what
    ``start_frame_latents`` gives with a mean-encoding VAE (the FlashI2V reference encodes with μ)."""
    if cfg.start_frame == "noised":
        g = torch.Generator(frame.device).manual_seed(_seed(cfg.data.seed, 1, *seed))
        noise = I2VConfig(noise_log_mean=cfg.noise_log_mean, noise_log_std=cfg.noise_log_std)
        frame = noised_first_frame(frame, noise, g)
    if hasattr(vae, "encode_moments"):
        return scaled_moments(vae, frame)[0].float()
    if getattr(vae, "sample_posterior", False):
        raise ValueError(f"{type(vae).__name__} gives no posterior mean: cache with --posterior mean")
    return vae.encode(frame).float()


def scaled_moments(vae, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The posterior of the latents ``vae.encode(video)`` returns, i.e. of s·(z − shift) with z ~ N(μ, σ²):
    mean s·(μ − shift) and log-variance logvar + 2·log|s|, each ``[B, F', C, h, w]``. The constants are the
    VAE's own (its config's ``scaling_factor`` and ``shift_factor``, the values its ``encode`` applies), read
    here because every VAE applies them inside ``encode`` only. The Wan VAE normalises per channel instead,
    (z − m_c) / s_c (``latents_mean`` / ``latents_std``): the mean goes through its own ``normalize`` and the
    log-variance is shifted by −2·log s_c per channel."""
    if not hasattr(vae, "encode_moments"):
        raise ValueError(f"{type(vae).__name__} gives no posterior moments: cache with --posterior mean")
    mean, logvar = vae.encode_moments(video)  # raw, [B, F', C, h, w] each
    cfg = getattr(vae, "cfg", None) or vae.config
    if hasattr(cfg, "latents_std"):  # Wan: per channel; normalize is exactly what encode applies
        log_std = torch.tensor(cfg.latents_std, dtype=torch.float64).log().view(-1, 1, 1)  # [C, 1, 1]
        return vae.normalize(mean), logvar - (2.0 * log_std).to(logvar.device, logvar.dtype)
    scale, shift = float(cfg.scaling_factor), float(getattr(cfg, "shift_factor", None) or 0.0)
    return (mean - shift) * scale, logvar + 2.0 * math.log(abs(scale))


def main(args: list[str] | None = None) -> Path:
    cfg = tyro.cli(CacheConfig, args=args, config=(tyro.conf.AvoidSubcommands,))
    setup_logging(0, stream=sys.stderr)  # the trainer's line format; stdout: the result
    out = cache_latents(cfg)
    print(f"cache written to {out}")
    return out


if __name__ == "__main__":
    main()
