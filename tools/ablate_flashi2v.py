"""FlashI2V against channel concat at CPU scale (issue 19 §7; seeds/003 Fig. 7 in miniature).

Trains ``recipes/flashi2v_ablation.py`` for every arm and seed (each a subprocess: the recipe's command line,
as a user types it; a run whose final checkpoint exists is kept), then measures every run's EMA weights on
two held-out sets of real clips the runs never saw (the synthetic dataset at another seed):

- ``in_domain``: appearance × motion pairs of the training split, new positions, sizes and backgrounds;
- ``out_of_domain``: the 30 held-out pairs (``minivdit/data/synthetic.py``, "Held-out combinations").

For each real clip the run generates a clip from the clip's frame 0 and its motion label (Euler, the
recipe's 5 steps and CFG 3 on the label; the same noise for every run), and the tool reports:

- ``syn_fvd`` per chunk of frames (the synthetic detector's Fréchet distance, ``minivdit/eval/synthetic.py``,
  between the generated and the real clips' chunks; the detector resamples any chunk of ≥ 2 frames to its
  8): ``early`` = the first half of the frames, ``late`` = the second half, ``all`` = the whole clip. Fig. 7's
  per-chunk FVD;
- ``psnr0``: PSNR (dB, images in [0, 1]) of the generated frame 0 against the condition frame: how well the
  clip starts from its image;
- ``psnr_early`` / ``psnr_late``: PSNR against the real clip's frames of each half (a synthetic clip is
  nearly determined by its first frame and its motion, so this measures the motion too);
- the training loss: the mean of the logged ``loss`` over the last 100 steps, and the curves (a plot).

``real`` is the floor: a second set of real clips (another seed) against the first, per chunk.

    python tools/ablate_flashi2v.py --out runs/ablate_flashi2v            # train what is missing, measure
    python tools/ablate_flashi2v.py --out runs/ablate_flashi2v --no-train  # measure the runs there

Writes ``<out>/results.json``, ``<out>/loss.png``, ``<out>/fvd.png`` and ``<out>/samples_out_of_domain.png``
(rows: the real clip, then each arm of seed 0, for the first out-of-domain pairs), and prints the table
``docs/ablations/flashi2v.md`` shows.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "recipes"))

from minivdit.data.synthetic import SyntheticVideos  # noqa: E402
from minivdit.eval.evaluate import to_uint8  # noqa: E402
from minivdit.eval.frechet import FeatureStats, fd_from_stats  # noqa: E402
from minivdit.eval.synthetic import load as load_detector  # noqa: E402
from minivdit.models.vae import PixelSpace  # noqa: E402
from minivdit.sample import generate, load_run, start_frame_cond  # noqa: E402

ARMS = ("concat", "flashi2v", "shift")
SPLITS = ("in_domain", "out_of_domain")
CHUNKS = ("early", "late", "all")
EVAL_SEED, FLOOR_SEED = 1, 2  # the training clips are seed 0 (DataConfig.seed)


def run_name(arm: str, seed: int) -> str:
    return f"{arm}_s{seed}"


def train(out: Path, arms, seeds, steps: int) -> None:
    """Every missing run, one subprocess each (the recipe's own command line)."""
    for seed in seeds:
        for arm in arms:
            final = out / run_name(arm, seed) / "checkpoints" / f"step_{steps:07d}"
            if final.is_dir():
                print(f"{run_name(arm, seed)}: done ({final})", flush=True)
                continue
            cmd = [
                sys.executable,
                str(ROOT / "recipes" / "flashi2v_ablation.py"),
                "--arm", arm,
                "--seed", str(seed),
                "--max-steps", str(steps),
                "--out-dir", str(out),
                "--run-name", run_name(arm, seed),
                "--resume", "auto",
            ]  # fmt: skip
            print(" ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)


def real_clips(num_frames: int, size: int, num_classes: int, split: str, count: int, seed: int):
    """``count`` real clips of ``split`` at ``seed``: video float [N, F, 3, H, W] in [−1, 1], labels [N]."""
    data = SyntheticVideos(num_frames, size, num_classes, count, seed=seed, split=split)
    items = [data.get(i) for i in range(count)]
    return torch.stack([x["video"] for x in items]), torch.tensor([x["label"] for x in items])


def chunk(video: torch.Tensor, name: str) -> torch.Tensor:
    """The frames of chunk ``name`` of ``[N, F, ...]`` clips (halves; ``all``: every frame)."""
    half = video.shape[1] // 2
    return {"early": video[:, :half], "late": video[:, half:], "all": video}[name]


def stats(detector, video: torch.Tensor, batch: int = 128) -> FeatureStats:
    s = FeatureStats(detector.dim)
    for i in range(0, len(video), batch):
        s.update(detector.features(to_uint8(video[i : i + batch])))
    return s


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean PSNR (dB) over clips of two float tensors in [−1, 1], compared in [0, 1]."""
    x, y = ((a.float().clamp(-1, 1) + 1) / 2), ((b.float().clamp(-1, 1) + 1) / 2)
    mse = (x - y).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return float((10 * torch.log10(1.0 / mse)).mean())


@torch.no_grad()
def sample_run(
    run_dir: Path, video: torch.Tensor, labels: torch.Tensor, steps: int | None, batch: int, seed: int
):
    """Clips the run's EMA generates from ``video``'s frame 0 and ``labels`` (Euler, ``steps`` or the run's
    ``sample.steps``, the run's CFG); the same noise for every run (per batch: ``seed`` + its first index)."""
    model, objective, vae, cfg = load_run(run_dir)
    flashi2v = isinstance(cfg.get("flashi2v"), dict)
    cfg_scale, steps = cfg["sample"]["cfg_scale"], steps or cfg["sample"]["steps"]
    out = []
    for i in range(0, len(video), batch):
        v, y = video[i : i + batch], labels[i : i + batch]
        cond, null = start_frame_cond(
            model, y, v[:, 0], vae or PixelSpace(), flashi2v=flashi2v, num_frames=v.shape[1]
        )
        out.append(
            generate(
                model,
                objective,
                cond=cond,
                null=null,
                shape=tuple(v.shape),
                steps=steps,
                cfg_scale=cfg_scale,
                seed=seed + i,
                device=torch.device("cpu"),
            ).clamp(-1, 1)
        )
    return torch.cat(out)


def losses(run_dir: Path) -> tuple[list[int], list[float]]:
    steps, values = [], []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec and "step" in rec:
            steps.append(int(rec["step"]))
            values.append(float(rec["loss"]))
    return steps, values


def mean_std(xs: list[float]) -> tuple[float, float]:
    a = np.asarray(xs, np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def plots(out: Path, results: dict, curves: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"concat": "tab:blue", "flashi2v": "tab:red", "shift": "tab:green"}
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for arm, runs in curves.items():
        steps = np.asarray(runs[0][0])
        n = min(len(r[1]) for r in runs)
        values = np.asarray([r[1][:n] for r in runs])  # [seeds, points]
        m, s = values.mean(0), values.std(0)
        ax.plot(steps[:n], m, color=colours[arm], label=f"{arm} (mean of {len(runs)} seeds)")
        ax.fill_between(steps[:n], m - s, m + s, color=colours[arm], alpha=0.2)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (velocity MSE)")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("Training loss (in-domain pairs)")
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.4), sharey=True)
    for ax, split in zip(axes, SPLITS):
        x = np.arange(len(CHUNKS))
        for k, arm in enumerate(results["arms"]):
            r = results["summary"][arm][split]
            m = [r[f"syn_fvd_{c}"][0] for c in CHUNKS]
            s = [r[f"syn_fvd_{c}"][1] for c in CHUNKS]
            ax.bar(x + (k - 1) * 0.27, m, 0.27, yerr=s, color=colours[arm], label=arm, capsize=2)
        floor = [results["floor"][split][c] for c in CHUNKS]
        ax.scatter(x, floor, color="black", marker="_", s=300, label="real vs real", zorder=3)
        ax.set_xticks(x, ["frames 0-3", "frames 4-7", "whole clip"])
        ax.set_title(split.replace("_", " "))
    axes[0].set_ylabel("syn_fvd (lower is better)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "fvd.png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/ablate_flashi2v", help="parent folder of the runs and results")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=1200, help="training steps of every run (the recipe's 1200)")
    p.add_argument("--clips", type=int, default=210, help="real clips per split (a multiple of 70 and 30)")
    p.add_argument("--sample-steps", type=int, default=5, help="Euler steps (the recipe's sample.steps)")
    p.add_argument("--batch", type=int, default=105)
    p.add_argument("--train", action=argparse.BooleanOptionalAction, default=True)
    args = p.parse_args(argv)
    out = Path(args.out)
    torch.set_grad_enabled(False)
    if args.train:
        train(out, args.arms, args.seeds, args.steps)

    from flashi2v_ablation import config  # the recipe's data shape

    rc = config()
    F, S, K = rc.data.num_frames, rc.data.image_size, rc.data.num_classes
    detector = load_detector()
    real = {s: real_clips(F, S, K, s, args.clips, EVAL_SEED) for s in SPLITS}
    real_stats = {s: {c: stats(detector, chunk(real[s][0], c)) for c in CHUNKS} for s in SPLITS}
    floor = {}
    for s in SPLITS:
        other = real_clips(F, S, K, s, args.clips, FLOOR_SEED)[0]
        floor[s] = {c: fd_from_stats(stats(detector, chunk(other, c)), real_stats[s][c]) for c in CHUNKS}

    per_run, curves, shown = {}, {}, {}
    for arm in args.arms:
        for seed in args.seeds:
            name = run_name(arm, seed)
            t0 = time.perf_counter()
            rec = {}
            for s in SPLITS:
                video, labels = real[s]
                fake = sample_run(out / name, video, labels, args.sample_steps, args.batch, seed=1000)
                for c in CHUNKS:
                    rec.setdefault(s, {})[f"syn_fvd_{c}"] = fd_from_stats(
                        stats(detector, chunk(fake, c)), real_stats[s][c]
                    )
                rec[s]["psnr0"] = psnr(fake[:, 0], video[:, 0])
                rec[s]["psnr_early"] = psnr(chunk(fake, "early"), chunk(video, "early"))
                rec[s]["psnr_late"] = psnr(chunk(fake, "late"), chunk(video, "late"))
                if s == "out_of_domain" and seed == args.seeds[0]:
                    shown[arm] = fake[:6]
            steps, values = losses(out / name)
            tail = [v for st, v in zip(steps, values) if st > steps[-1] - 100]
            rec["final_loss"] = float(np.mean(tail))
            curves.setdefault(arm, []).append((steps, values))
            per_run[name] = rec
            print(f"{name}: {json.dumps(rec)} ({time.perf_counter() - t0:.0f}s)", flush=True)

    summary = {}
    for arm in args.arms:
        runs = [per_run[run_name(arm, seed)] for seed in args.seeds]
        summary[arm] = {"final_loss": mean_std([r["final_loss"] for r in runs])}
        for s in SPLITS:
            summary[arm][s] = {k: mean_std([r[s][k] for r in runs]) for k in runs[0][s]}
    results = {
        "args": vars(args),
        "arms": args.arms,
        "floor": floor,
        "runs": per_run,
        "summary": summary,
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    plots(out, results, curves)
    _sheet(out, real["out_of_domain"][0][:6], shown)

    def f(ms, digits=2):
        return f"{ms[0]:.{digits}f} ± {ms[1]:.{digits}f}"

    print(
        "\n| arm | split | syn_fvd frames 0-3 | syn_fvd frames 4-7 | syn_fvd whole | PSNR frame 0 | "
        "PSNR 0-3 | PSNR 4-7 | final loss |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for arm in args.arms:
        for s in SPLITS:
            r = summary[arm][s]
            print(
                f"| {arm} | {s} | {f(r['syn_fvd_early'])} | {f(r['syn_fvd_late'])} | {f(r['syn_fvd_all'])} | "
                f"{f(r['psnr0'], 1)} | {f(r['psnr_early'], 1)} | {f(r['psnr_late'], 1)} | "
                f"{f(summary[arm]['final_loss'], 4)} |"
            )
    for s in SPLITS:
        fl = floor[s]
        print(f"| real vs real | {s} | {fl['early']:.2f} | {fl['late']:.2f} | {fl['all']:.2f} | | | | |")
    print(f"\nwrote {out / 'results.json'}, {out / 'loss.png'}, {out / 'fvd.png'}")
    if any(math.isnan(v[0]) for arm in summary.values() for v in arm[SPLITS[1]].values()):
        raise SystemExit("a metric is NaN")


def _sheet(out: Path, real: torch.Tensor, shown: dict) -> None:
    """Rows: real clip i, then each arm's clip i (seed 0), for the first out-of-domain pairs."""
    from minivdit.media import contact_sheet

    videos, labels = [], []
    for i in range(len(real)):
        videos.append(real[i])
        labels.append(f"{i}: real")
        for arm, fake in shown.items():
            videos.append(fake[i])
            labels.append(f"{i}: {arm}")
    u8 = to_uint8(torch.stack(videos)).permute(0, 1, 3, 4, 2).numpy()  # [B, F, H, W, 3]
    contact_sheet(out / "samples_out_of_domain.png", u8, num_frames=u8.shape[1], labels=labels)


if __name__ == "__main__":
    main()
