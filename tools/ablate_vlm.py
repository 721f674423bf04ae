"""Does UniWorld's VLM path carry information at CPU scale? (issue 20 §4; results in docs/ablations/vlm.md)

Trains ``recipes/uniworld_synthetic.py`` (a tiny Wan in pixel space, conditioned on captions through a
tiny random Qwen2.5-VL and UniWorld's adapter) for each arm and seed, each a subprocess with the recipe's
own command line (a run whose final checkpoint exists is kept):

- ``text``: the released VLM path: the text decoder only (the first frame reaches it as placeholder tokens);
- ``vision``: ``--vlm.use-vision``: the full VLM with the first frame's pixels (the paper's VLM(T, I)).

Then each run's EMA weights generate clips for real clips of every class the runs never saw (the synthetic
dataset at another seed): the VLM reads the clip's caption ("a red disc moving right") and its frame 0, the
null branch "" with the same frame (Euler, the recipe's 10 steps and CFG 3; the same noise for every run).
``syn_acc`` is the synthetic detector's accuracy on them (``minivdit/eval/synthetic.py``; chance = 1 / 10).
The ``empty`` rows sample from the empty caption with the same frame (no guidance): what the frame alone
gives.

    python tools/ablate_vlm.py --out runs/ablate_vlm              # train what is missing, measure
    python tools/ablate_vlm.py --out runs/ablate_vlm --no-train   # measure the runs there

Writes ``<out>/results.json`` and ``<out>/samples.png`` (per arm of seed 0: one clip per class, captioned)
and prints the table ``docs/ablations/vlm.md`` shows.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from minivdit.conditioning.vlm import VLMConfig, VLMEncoder, make_tiny_qwen_vl  # noqa: E402
from minivdit.config import from_dict  # noqa: E402
from minivdit.data.synthetic import CLASS_NAMES, SyntheticVideos, caption  # noqa: E402
from minivdit.eval.evaluate import to_uint8  # noqa: E402
from minivdit.eval.synthetic import accuracy  # noqa: E402
from minivdit.eval.synthetic import load as load_detector  # noqa: E402
from minivdit.models.cond import Cond  # noqa: E402
from minivdit.sample import generate, load_run  # noqa: E402

ARMS = {"text": [], "vision": ["--vlm.use-vision"]}
EVAL_SEED = 1  # the training clips are seed 0 (DataConfig.seed)
VLM_WIDTH = 32  # recipes/uniworld_synthetic.py


def run_name(arm: str, seed: int) -> str:
    return f"{arm}_s{seed}"


def train(out: Path, arms, seeds, steps: int) -> None:
    """Every missing run, one subprocess each (the recipe's own command line); the tiny VLM is made once."""
    vlm = out / "tiny-qwen-vl"
    if not (vlm / "config.json").is_file():
        make_tiny_qwen_vl(vlm, hidden=VLM_WIDTH, seed=0)
    for seed in seeds:
        for arm in arms:
            final = out / run_name(arm, seed) / "checkpoints" / f"step_{steps:07d}"
            if final.is_dir():
                print(f"{run_name(arm, seed)}: done ({final})", flush=True)
                continue
            cmd = [
                sys.executable, str(ROOT / "recipes" / "uniworld_synthetic.py"), *ARMS[arm],
                "--vlm.path", str(vlm), "--seed", str(seed), "--max-steps", str(steps),
                "--out-dir", str(out), "--run-name", run_name(arm, seed), "--resume", "auto",
            ]  # fmt: skip
            print(" ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)


def real_clips(num_frames: int, size: int, per_class: int, seed: int):
    """``per_class`` real clips of each of the 10 classes at ``seed``: video [N, F, 3, H, W], labels [N]."""
    n = len(CLASS_NAMES) * per_class
    data = SyntheticVideos(num_frames, size, len(CLASS_NAMES), n, seed=seed)
    items = [data.get(i) for i in range(n)]  # label = i mod 10
    return torch.stack([x["video"] for x in items]), torch.tensor([x["label"] for x in items])


@torch.no_grad()
def sample_run(
    run_dir: Path, video: torch.Tensor, labels: torch.Tensor, *, empty: bool, seed: int, steps: int | None
):
    """Clips the run's EMA generates for the captions of ``labels`` (or the empty caption, unguided) with
    ``video``'s frame 0 through the run's VLM (``steps`` or the run's ``sample.steps``); the same noise for
    every run (per batch: seed + index)."""
    model, objective, _, cfg = load_run(run_dir)
    vlm = VLMEncoder(from_dict(VLMConfig, cfg["vlm"]))
    steps, scale = steps or cfg["sample"]["steps"], cfg["sample"]["cfg_scale"]
    out, batch = [], 20
    for i in range(0, len(video), batch):
        v, y = video[i : i + batch], labels[i : i + batch]
        texts = ["" if empty else caption(int(c), int(c)) for c in y]
        context, _ = vlm.encode(texts, v[:, 0])
        null, _ = vlm.encode([""] * len(y), v[:, 0])
        out.append(
            generate(
                model,
                objective,
                cond=Cond(context=context),
                null=Cond(context=null),
                shape=tuple(v.shape),
                steps=steps,
                cfg_scale=1.0 if empty else scale,
                seed=seed + i,
                device=torch.device("cpu"),
            ).clamp(-1, 1)
        )
    return torch.cat(out)


def mean_std(xs: list[float]) -> tuple[float, float]:
    a = np.asarray(xs, np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def measure(out: Path, arms, seeds, per_class: int, steps: int | None = None) -> dict:
    detector = load_detector()
    video, labels = real_clips(8, 16, per_class, EVAL_SEED)
    real_acc = accuracy(detector.probs(to_uint8(video)), labels)
    results = {"protocol": {
        "clips": len(video), "per_class": per_class, "eval_seed": EVAL_SEED, "chance": 1 / len(CLASS_NAMES),
        "metric": "syn_acc of the synthetic detector (minivdit/eval/synthetic.py)", "real_clips": real_acc,
    }, "runs": {}, "summary": {}}  # fmt: skip
    samples = {}
    for arm in arms:
        for seed in seeds:
            run_dir = out / run_name(arm, seed)
            row = {}
            for empty in (False, True):
                t = time.time()
                fake = sample_run(run_dir, video, labels, empty=empty, seed=1000, steps=steps)
                key = "empty" if empty else "caption"
                row[key] = accuracy(detector.probs(to_uint8(fake)), labels)
                took = time.time() - t
                print(f"{run_name(arm, seed)} {key}: syn_acc {row[key]:.3f} ({took:.0f} s)", flush=True)
                if seed == seeds[0] and not empty:
                    samples[arm] = fake[: len(CLASS_NAMES)]  # one clip per class (label = index mod 10)
            losses = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
            row["final_loss"] = float(np.mean([r["loss"] for r in losses if "loss" in r][-5:]))
            results["runs"][run_name(arm, seed)] = row
        results["summary"][arm] = {
            k: mean_std([results["runs"][run_name(arm, s)][k] for s in seeds])
            for k in ("caption", "empty", "final_loss")
        }
    sheet(out, samples, video[: len(CLASS_NAMES)])
    return results


def sheet(out: Path, samples: dict, real: torch.Tensor) -> None:
    """``samples.png``: the real clips, then each arm's, one row per class (frames 0, 3, 7)."""
    from minivdit.media import contact_sheet
    from minivdit.media import to_uint8 as frames_uint8

    rows, names = [], []
    for c in range(len(CLASS_NAMES)):
        for name, clips in [("real", real), *samples.items()]:
            rows.append(clips[c])
            names.append(f"{name}: {CLASS_NAMES[c]}" if name == "real" else name)
    contact_sheet(out / "samples.png", frames_uint8(torch.stack(rows)), labels=names)


def table(results: dict) -> str:
    p = results["protocol"]
    lines = [
        f"syn_acc on {p['clips']} clips ({p['per_class']} per class, eval seed {p['eval_seed']}); chance "
        f"{p['chance']:.2f}, real clips {p['real_clips']:.3f}",
        "",
        "| arm | syn_acc, caption (CFG) | syn_acc, empty caption | final loss |",
        "| --- | --- | --- | --- |",
    ]
    for arm, s in results["summary"].items():
        cells = [f"{s[k][0]:.3f} ± {s[k][1]:.3f}" for k in ("caption", "empty", "final_loss")]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--out", default="runs/ablate_vlm")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=1500, help="training steps per run (the recipe's)")
    parser.add_argument("--per-class", type=int, default=10, help="generated clips per class")
    parser.add_argument("--sample-steps", type=int, default=None, help="Euler steps (default: the run's)")
    parser.add_argument("--no-train", action="store_true", help="measure the runs in --out only")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if not args.no_train:
        train(out, args.arms, args.seeds, args.steps)
    results = measure(out, args.arms, args.seeds, args.per_class, args.sample_steps)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(table(results))
    return results


if __name__ == "__main__":
    main()
