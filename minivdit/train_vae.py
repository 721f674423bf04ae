"""Training a causal 3-D VAE from scratch: ``VAETrainConfig``, ``train_vae(cfg)``, ``vae_step``, ``main``.

The result, ``<run>/vae`` (a ``CausalVAE3D.save_pretrained`` folder whose config carries latent constants
estimated on training clips), is what latent-space DiT training takes: ``--vae.kind causal3d --vae.path
<run>/vae`` (``minivdit.models.vae.VAEConfig``).

Why a loop of its own rather than ``minivdit.train.train``: the step is different (no diffusion objective
and no class labels: encode → reparameterised posterior sample → decode, L1 + L2 reconstruction + KL), so is
the evaluation (PSNR of the EMA model on held-out clips instead of sample grids), and so is the end of the run
(latent constants and a ``save_pretrained`` folder). Everything around the step is ``minivdit.train``'s own
code, called rather than copied: ``OptimConfig``/``EMAConfig``/``LogConfig``/``CkptConfig``, ``start_run``
(run directory, logging, ``config.json``, resume path), ``build_optimizer``, ``restore`` (exact resume),
``lr_at``, ``micro_seed`` (per-micro-batch reseeding), ``optimizer_step`` (delayed clipping, non-finite
skips, EMA), ``_peak_mem_gib``; ``minivdit.ckpt`` for checkpoints, ``minivdit.log.MetricLogger`` for the
status line, ``metrics.jsonl`` and tensorboard, ``minivdit.dist`` for DDP and precision, ``minivdit.data``
for the loader. The loop body below follows ``train.train`` line for line, so the two read side by side.

Loss (per micro-batch, all terms fp32):

- ``loss/l1`` = mean |x̂ − x| and ``loss/l2`` = mean (x̂ − x)² over pixel values in [−1, 1];
- ``loss/kl`` = KL(q(z|x) ‖ N(0, I)) summed over the latent elements and divided by the number of pixel
  values: the ratio of KL to reconstruction is that of LDM/SD's ``LPIPSWithDiscriminator`` (KL summed over
  the latent, reconstruction summed over pixels), so ``kl_weight`` values transfer (SD's VAE: 1e-6);
- ``loss`` = ``l1_weight`` · l1 + ``l2_weight`` · l2 + ``kl_weight`` · kl (weights 1, 1, 1e-6 by default).

Deviations from LDM/SD VAE training: no perceptual (LPIPS) term (``perceptual_weights`` must stay None, see
there) and no adversarial term; L1 + L2 instead of L1 alone; AdamW with a linear warm-up.
"""

from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from minivdit import ckpt, dist
from minivdit.config import check_types, to_dict
from minivdit.data import Batch, DataConfig, build_dataset, build_loader
from minivdit.log import MetricLogger, setup_logging
from minivdit.models.dit import num_params
from minivdit.models.vae.causal3d import (
    CausalVAE3D,
    CausalVAE3DConfig,
    _nearest_valid,
    estimate_latent_constants,
)
from minivdit.preempt import PreemptionHandler
from minivdit.train import (
    CkptConfig,
    EMAConfig,
    LogConfig,
    NonfiniteCounter,
    OptimConfig,
    _peak_mem_gib,
    build_optimizer,
    lr_at,
    micro_seed,
    optimizer_step,
    parse_config,
    restore,
    run,
    start_run,
    write_config,
)

log = logging.getLogger("minivdit")
VAE_DIR = "vae"
"""The final ``save_pretrained`` folder, under the run directory."""
_PARALLEL = dist.ParallelConfig(strategy="ddp")  # DDP when world > 1; nothing in a world of one


@dataclass(frozen=True, kw_only=True)
class VAETrainConfig:
    """Everything a VAE run needs. A recipe builds one; the CLI overrides values (``--kl-weight 1e-5``)."""

    vae: CausalVAE3DConfig = field(default_factory=CausalVAE3DConfig)
    """The autoencoder (``minivdit/models/vae/causal3d.py``); its ``scaling_factor``/``shift_factor`` are
    ignored in training and replaced by estimated ones in the saved ``<run>/vae``."""
    data: DataConfig = field(default_factory=lambda: DataConfig(num_frames=9))
    """Training clips: ``num_frames`` must be ``r·k + 1`` (r = the VAE's time compression, 4 by default: 5, 9,
    17, …) and ``image_size`` a multiple of its space compression (8 by default). Labels are ignored."""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, warmup_steps=100, grad_clip=1.0))
    """AdamW with linear warm-up (the DiT trainer's ``OptimConfig``)."""
    ema: EMAConfig = field(default_factory=lambda: EMAConfig(decay=0.999))
    """EMA of the VAE weights; the EMA model is evaluated and saved."""
    log: LogConfig = field(default_factory=LogConfig)
    """Status line / ``metrics.jsonl`` / tensorboard (the DiT trainer's ``LogConfig``)."""
    ckpt: CkptConfig = field(default_factory=CkptConfig)
    """Checkpoints under ``<run>/checkpoints`` (the DiT trainer's ``CkptConfig``)."""
    kl_weight: float = 1e-6
    """Weight of the KL term (normalised as LDM/SD, see the module docstring; SD's VAE: 1e-6)."""
    l1_weight: float = 1.0
    """Weight of the L1 reconstruction term. L1 pulls each pixel towards the *median* of what the latent
    leaves uncertain: where the object is present with probability f (small bright objects on a dark
    background, a contrast d in [−1, 1] units), the loss only moves the pixel off the background once
    f > l1_weight / (2·l1_weight + 2·l2_weight·d), ~19 % at weights 1, 1 and d = 1.6. Early in training,
    when the model localises objects poorly, that keeps objects out of the reconstructions; L2 alone (the
    mean) has no such dead zone."""
    l2_weight: float = 1.0
    """Weight of the L2 reconstruction term."""
    perceptual_weights: str | None = None
    """Local file of LPIPS-style weights for a perceptual loss term. None: no perceptual term (one log line
    says so). A path is rejected with a ValueError: a faithful LPIPS (pretrained VGG16/AlexNet features plus
    the learned linear heads) is not implemented here, and an approximation would not be LPIPS."""
    eval_every: int = 0
    """Evaluate the EMA model (held-out PSNR) every this many steps, and at the end; 0: only at the end. Must
    be a multiple of ``log.every`` (the PSNR is written into that step's log row)."""
    eval_clips: int = 32
    """Number of held-out clips for the PSNR."""
    eval_seed: int = 1_000_003
    """``DataConfig.seed`` of the held-out clips. A synthetic clip is a function of (seed, index), so a seed
    other than ``data.seed`` gives clips that are not in the training set."""
    latent_stats_clips: int = 64
    """Training clips whose latents set ``scaling_factor``/``shift_factor`` of the saved VAE."""
    out_dir: str = "runs"
    """Parent folder of run directories."""
    run_name: str = "vae"
    """Run directory is ``<out_dir>/<run_name>``."""
    seed: int = 0
    """Seeds the init and every micro-batch's posterior noise."""
    max_steps: int = 1000
    """Optimizer steps to train for (in total, counting steps before a resume)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step (global batch = data.batch_size × world × grad_accum)."""
    precision: dist.Precision = "fp32"
    """"fp32" or "bf16" (bf16 autocast; weights and optimizer state stay fp32)."""
    resume: str | None = None
    """None: start fresh; "auto": the latest checkpoint of this run if any; or a checkpoint folder path."""

    def __post_init__(self):
        check_types(self)
        if self.max_steps < 1 or self.grad_accum < 1:
            raise ValueError(
                f"max_steps and grad_accum must be >= 1, got {self.max_steps}, {self.grad_accum}"
            )
        r, s, frames = self.vae.temporal_compression, self.vae.spatial_compression, self.data.num_frames
        if (frames - 1) % r:
            raise ValueError(
                f"data.num_frames={frames}: the VAE's {r}x time compression needs {r}k + 1 frames "
                f"(nearest valid: {_nearest_valid(frames, r)}); set --data.num-frames"
            )
        if any(side % s for side in self.data.frame_size):
            raise ValueError(
                f"data.image_size={self.data.image_size} is not a multiple of the VAE's {s}x space "
                f"compression"
            )
        if min(self.kl_weight, self.l1_weight, self.l2_weight) < 0 or self.l1_weight + self.l2_weight == 0:
            raise ValueError(
                f"kl_weight, l1_weight and l2_weight must be >= 0 with l1_weight + l2_weight > 0, got "
                f"{self.kl_weight}, {self.l1_weight}, {self.l2_weight}"
            )
        if self.eval_every < 0 or self.eval_clips < 1 or self.latent_stats_clips < 1:
            raise ValueError(
                f"need eval_every >= 0, eval_clips >= 1 and latent_stats_clips >= 1, got {self.eval_every}, "
                f"{self.eval_clips}, {self.latent_stats_clips}"
            )
        if self.eval_every % self.log.every:
            raise ValueError(
                f"eval_every={self.eval_every} must be a multiple of log.every={self.log.every} "
                f"(the PSNR is logged in that step's row)"
            )
        if self.eval_seed == self.data.seed:
            raise ValueError(f"eval_seed must differ from data.seed={self.data.seed} (held-out clips)")

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.run_name


class Autoencode(nn.Module):
    """The training forward as one module call (DDP reduces gradients of what runs through ``forward``):
    video ``[B, F, 3, H, W]`` → (reconstruction, posterior mean, posterior logvar)."""

    def __init__(self, vae: CausalVAE3D):
        super().__init__()
        self.vae = vae

    def forward(self, video: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        mean, logvar = self.vae.encode_moments(video)  # each [B, F', C, h, w]
        z = self.vae.latents_from_moments(mean, logvar, sample=True)  # draws from the global (reseeded) RNG
        return self.vae.decode(z), mean, logvar  # [B, F, 3, H, W]


# ---------------------------------------------------------------------------------------------- the step


def vae_step(
    batch: Batch,
    *,
    model: nn.Module,
    l1_weight: float,
    l2_weight: float,
    kl_weight: float,
    precision: dist.Precision,
    device: torch.device,
) -> tuple[Tensor, dict[str, Tensor]]:
    """One micro-batch forward: video → ``Autoencode`` → l1_weight·L1 + l2_weight·L2 + kl_weight·KL. Returns
    the scalar loss to backpropagate and detached metrics (device tensors)."""
    if batch.video is None:
        raise ValueError("VAE training needs pixel clips; this dataset serves precomputed latents only")
    video = batch.video.to(device, non_blocking=True)
    with dist.autocast(device, precision):
        recon, mean, logvar = model(video)
    recon, mean, logvar = recon.float(), mean.float(), logvar.float()
    l1 = (recon - video).abs().mean()
    l2 = (recon - video).square().mean()
    kl = 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).sum() / video.numel()
    loss = l1_weight * l1 + l2_weight * l2 + kl_weight * kl
    metrics = {"loss": loss.detach(), "loss/l1": l1.detach(), "loss/l2": l2.detach(), "loss/kl": kl.detach()}
    return loss, metrics


# ---------------------------------------------------------------------------------------------- setup


def build_vaes(cfg: VAETrainConfig, ctx: dist.DistContext) -> tuple[nn.Module, CausalVAE3D]:
    """Trainable ``Autoencode`` (DDP-wrapped when world > 1) and the EMA VAE, both from one seeded CPU init
    (``CausalVAE3D.from_config``), so every world size and device starts from bitwise the same weights."""
    torch.manual_seed(cfg.seed)
    state = CausalVAE3D.from_config(cfg.vae).state_dict()
    with torch.device("meta"):
        model, ema = Autoencode(CausalVAE3D(cfg.vae)), CausalVAE3D(cfg.vae)
    model = dist.parallelize(model, _PARALLEL, ctx, cfg.precision)
    for m in (model, ema):
        dist.materialize(m, ctx.device, init=False)
    dist.unwrap(model).vae.load_state_dict(state, strict=True)
    ema.load_state_dict(state, strict=True)
    ema.requires_grad_(False).eval()
    return model, ema


def check_perceptual(path: str | None) -> None:
    """No perceptual term without weights; with weights, refuse rather than approximate LPIPS."""
    if path is None:
        return
    if not Path(path).is_file():
        raise ValueError(f"perceptual_weights={path!r}: no such file")
    raise ValueError(
        f"perceptual_weights={path!r}: a perceptual (LPIPS) loss is not supported by this trainer: a "
        f"faithful LPIPS needs the pretrained VGG16/AlexNet backbone and its learned linear heads, which "
        f"are not implemented here; leave --perceptual-weights unset (loss = L1 + L2 + kl_weight·KL)"
    )


def held_out_clips(cfg: VAETrainConfig) -> list[Tensor]:
    """The ``eval_clips`` held-out clips (the dataset built with ``eval_seed``) in batches of
    ``data.batch_size``, each ``[b, F, 3, H, W]``."""
    dataset = build_dataset(replace(cfg.data, seed=cfg.eval_seed))
    return _clips(dataset, range(min(cfg.eval_clips, len(dataset))), cfg.data.batch_size)


def _clips(dataset, indices: range, batch_size: int) -> list[Tensor]:
    rng = np.random.default_rng(0)  # augmentation of real datasets; the synthetic one ignores it
    videos = [torch.as_tensor(dataset.get(i, rng)["video"]) for i in indices]
    return [torch.stack(videos[i : i + batch_size]) for i in range(0, len(videos), batch_size)]


@torch.no_grad()
def evaluate(
    vae: CausalVAE3D, clips: list[Tensor], device: torch.device, precision: dist.Precision
) -> tuple[dict[str, float], Tensor]:
    """Reconstruct ``clips`` through the posterior mean. Returns ``{"eval/psnr": dB, "eval/l1": …}`` and the
    first batch's reconstructions. PSNR per clip on [0, 1] pixels (reconstruction clamped to [−1, 1]), then
    averaged over clips."""
    psnr, l1, first = [], [], None
    for video in clips:
        video = video.to(device)
        with dist.autocast(device, precision):
            recon = vae.decode(vae.encode(video, sample=False)).float().clamp(-1.0, 1.0)
        mse = ((recon - video) / 2).square().mean(dim=(1, 2, 3, 4))  # [b], on [0, 1] pixels
        psnr.append(10 * torch.log10(1.0 / mse.clamp_min(1e-10)))
        l1.append((recon - video).abs().mean(dim=(1, 2, 3, 4)))
        first = recon.cpu() if first is None else first
    return {"eval/psnr": torch.cat(psnr).mean().item(), "eval/l1": torch.cat(l1).mean().item()}, first


def _comparison(video: Tensor, recon: Tensor, n: int = 4) -> np.ndarray:
    """uint8 [H', W', 3]: for each of ``n`` clips, a row of its frames above a row of its reconstruction."""
    rows = [
        torch.cat(list(clip), dim=-1)  # [F, 3, H, W] -> [3, H, F·W]
        for pair in zip(video[:n], recon[:n])
        for clip in pair
    ]
    img = torch.cat(rows, dim=-2)  # [3, 2n·H, F·W]
    return ((img.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()


# ---------------------------------------------------------------------------------------------- the loop


def train_vae(cfg: VAETrainConfig) -> Path:
    """Train to ``cfg.max_steps``, then write ``<run>/vae``; returns the run directory. A signal of
    ``cfg.ckpt.signals`` ends the run after a checkpoint by raising ``Preempted`` (``preempt.py``)."""
    with PreemptionHandler(cfg.ckpt.signals) as preemption:
        return _train_vae(cfg, preemption)


def _train_vae(cfg: VAETrainConfig, preemption: PreemptionHandler) -> Path:
    ctx = dist.init()
    run_dir = cfg.run_dir
    check_perceptual(cfg.perceptual_weights)
    resume_from = start_run(cfg, ctx, structural=("vae",))
    if cfg.perceptual_weights is None:
        log.info(
            f"perceptual loss: skipped (perceptual_weights is None); loss = {cfg.l1_weight:g}·L1 + "
            f"{cfg.l2_weight:g}·L2 + {cfg.kl_weight:g}·KL"
        )

    model, ema = build_vaes(cfg, ctx)
    vae = dist.unwrap(model).vae
    optimizer = build_optimizer(vae.parameters(), cfg.optim)
    loader = build_loader(cfg.data, ctx.rank, ctx.world)
    step = restore(cfg, resume_from, model=vae, ema=ema, optimizer=optimizer, loader=loader, ctx=ctx)
    write_config(cfg, ctx)
    held_out = held_out_clips(cfg) if ctx.is_main else []
    if cfg.data.dataset != "synthetic":
        log.warning(f"eval clips of {cfg.data.dataset!r} come from the training files: PSNR is not held out")

    H, W = cfg.data.frame_size
    s = cfg.vae.spatial_compression
    latent = (vae.latent_frames(cfg.data.num_frames), cfg.vae.latent_channels, H // s, W // s)
    pixels = cfg.data.num_frames * 3 * H * W
    log.info(
        f"VAE: {num_params(vae) / 1e6:.2f} M trainable parameters; clips {cfg.data.num_frames}x"
        f"{H}x{W} -> latents {list(latent)} "
        f"({pixels / math.prod(latent):.0f}x fewer values); kl_weight {cfg.kl_weight:g}; world {ctx.world} "
        f"on {ctx.device.type}; strategy {dist.resolve_strategy(_PARALLEL, ctx)}; precision {cfg.precision}"
    )
    log.info(f"run dir: {run_dir.resolve()}")
    logger = MetricLogger(
        run_dir, is_main=ctx.is_main, max_steps=cfg.max_steps, tensorboard=cfg.log.tensorboard
    )
    samples_per_step = cfg.data.batch_size * ctx.world * cfg.grad_accum
    sums: dict[str, Tensor] = {}
    logged_steps, nonfinite = 0, NonfiniteCounter()
    model.train()
    logger.start(step)
    while step < cfg.max_steps:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg.optim, cfg.max_steps)
        step_metrics: dict[str, Tensor] = {}
        for micro in range(cfg.grad_accum):
            batch = next(loader)
            torch.manual_seed(micro_seed(cfg.seed, step, micro * ctx.world + ctx.rank))
            with dist.sync_grads(model, enabled=micro == cfg.grad_accum - 1):
                loss, metrics = vae_step(
                    batch,
                    model=model,
                    l1_weight=cfg.l1_weight,
                    l2_weight=cfg.l2_weight,
                    kl_weight=cfg.kl_weight,
                    precision=cfg.precision,
                    device=ctx.device,
                )
                (loss / cfg.grad_accum).backward()
            for k, v in metrics.items():
                step_metrics[k] = step_metrics.get(k, 0.0) + v / cfg.grad_accum
        grad_norm = optimizer_step(cfg, step, model=model, ema=ema, optimizer=optimizer, nonfinite=nonfinite)
        if grad_norm is None:  # non-finite: skipped, the same step is retried on the next batch
            nonfinite.check(step)
            continue
        step += 1

        step_metrics["grad_norm"] = grad_norm
        for k, v in step_metrics.items():
            sums[k] = sums.get(k, 0.0) + v
        logged_steps += 1
        last = step == cfg.max_steps
        if step % cfg.log.every == 0 or last:
            means = {k: dist.all_reduce_mean(v / logged_steps).item() for k, v in sums.items()}
            means["lr"] = optimizer.param_groups[0]["lr"]
            means["nonfinite_skipped"] = float(nonfinite.total)
            means["epoch"] = float(loader.epoch)
            if ctx.is_main and ((cfg.eval_every and step % cfg.eval_every == 0) or last):
                scores, recon = evaluate(ema, held_out, ctx.device, cfg.precision)
                means.update(scores)
                logger.image("eval/reconstructions", _comparison(held_out[0], recon), step)
            logger.log(step, means, samples_per_step=samples_per_step, peak_mem_gib=_peak_mem_gib(ctx.device))
            sums, logged_steps = {}, 0
        stop = preemption.requested()
        if (cfg.ckpt.every and step % cfg.ckpt.every == 0) or last or stop:
            path = ckpt.save(
                run_dir / "checkpoints",
                step,
                model=vae,
                ema=ema,
                optimizer=optimizer,
                ctx=ctx,
                rank_state={"data": loader.state_dict()},
                meta={"config": to_dict(cfg), "model_class": f"{CausalVAE3D.__module__}:CausalVAE3D"},
                keep=cfg.ckpt.keep,
                checksum=cfg.ckpt.checksum,
            )
            log.info(f"saved checkpoint {path}")
        if stop:
            logger.close()
            raise preemption.stopped(step, path)
    logger.close()
    if ctx.is_main:
        export(cfg, ema, ctx.device)
    dist.barrier()
    return run_dir


@torch.no_grad()
def export(cfg: VAETrainConfig, ema: CausalVAE3D, device: torch.device) -> Path:
    """Estimate the latent constants of the EMA VAE on training clips and ``save_pretrained`` it to
    ``<run>/vae`` (posterior samples, as ``VAEConfig.sample_posterior=True`` encodes for the DiT)."""
    dataset = build_dataset(cfg.data)
    clips = _clips(dataset, range(min(cfg.latent_stats_clips, len(dataset))), cfg.data.batch_size)
    gen = torch.Generator(device).manual_seed(cfg.seed)
    constants = estimate_latent_constants(ema, (c.to(device) for c in clips), sample=True, generator=gen)
    final = CausalVAE3D(replace(cfg.vae, **constants))
    final.load_state_dict({k: v.detach().cpu() for k, v in ema.state_dict().items()}, strict=True)
    path = cfg.run_dir / VAE_DIR
    final.save_pretrained(path)
    log.info(
        f"latent constants on {sum(len(c) for c in clips)} training clips: scaling_factor "
        f"{constants['scaling_factor']:.4g}, shift_factor {constants['shift_factor']:.4g}"
    )
    log.info(f"VAE saved to {path.resolve()}  (latent DiT training: --vae.kind causal3d --vae.path {path})")
    return path


def main(default: VAETrainConfig, args: list[str] | None = None) -> None:
    """CLI entry of VAE recipes: the command line over the recipe's config (``--resume auto`` continues
    from the run's saved ``config.json``; ``minivdit.train.parse_config``), then ``train_vae``."""
    setup_logging(dist.launcher_env()[0])  # console only: the run directory is not known yet
    recipe_doc = getattr(sys.modules.get("__main__"), "__doc__", None)  # the recipe's docstring: --help
    cfg = parse_config(
        VAETrainConfig, default, sys.argv[1:] if args is None else list(args), description=recipe_doc
    )
    run(train_vae, cfg)


if __name__ == "__main__":
    main(VAETrainConfig())


__all__ = [
    "VAETrainConfig",
    "Autoencode",
    "vae_step",
    "build_vaes",
    "evaluate",
    "export",
    "train_vae",
    "main",
]
