"""Train the synthetic-data detector (``minivdit/eval/synthetic.py``): the classifier behind ``syn_fvd`` and
``syn_acc``.

    python tools/train_syn_detector.py                     # -> minivdit/eval/assets/syn_detector.safetensors
    python tools/train_syn_detector.py --seed 1 --out /tmp/det.safetensors --steps 600

Every step renders fresh clips of all ten synthetic classes (the dataset with ``--data-seed``, indices
``step·B … step·B + B − 1``: never the quickstart's seed-0 clips, and never repeated), at ``NUM_FRAMES`` ×
``SIZE``², half of them rendered at ``SIZE``/2 and upsampled, as a 16² model's samples are. It augments them
(``synthetic.augment``: blur, grayscale, noise, pixel dropout, brightness) and trains AdamW with a cosine
schedule. The run is deterministic from ``--seed`` (seeded init, one seeded generator for the
augmentations, a fixed thread count; oneDNN's CPU convolutions are deterministic for a fixed thread count,
and ``torch.use_deterministic_algorithms`` is not used because it makes their backward 4× slower). At the
end it prints the accuracy on held-out clips
(``--val-seed``), clean and augmented, and writes the weights with this config in the file's metadata.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from minivdit.eval.synthetic import (
    DEFAULT_WEIGHTS,
    SIZE,
    SynDetector,
    SynDetectorConfig,
    augment,
    render,
    save,
)
from minivdit.log import setup_logging

log = logging.getLogger("minivdit")


def batch(indices: np.ndarray, seed: int, half_res: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips [B, 3, T, S, S] and labels; the clips where ``half_res`` is set are rendered at S/2 and
    upsampled (bilinear), as ``synthetic.resample`` upsamples a 16² run's samples."""
    video, labels = render(indices, seed=seed)
    if half_res.any():
        low, _ = render(indices[half_res], seed=seed, size=SIZE // 2)
        b = int(half_res.sum())
        x = low.transpose(1, 2).reshape(-1, 3, SIZE // 2, SIZE // 2)  # [(b t), 3, s, s]
        x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
        video[torch.from_numpy(half_res)] = x.reshape(b, -1, 3, SIZE, SIZE).transpose(1, 2)
    return video, labels


@torch.no_grad()
def evaluate(model: SynDetector, seed: int, n: int, gen: torch.Generator | None) -> float:
    model.eval()
    correct = 0
    for lo in range(0, n, 128):
        idx = np.arange(lo, min(n, lo + 128))
        x, y = batch(idx, seed, np.arange(len(idx)) % 2 == 1)
        if gen is not None:
            x = augment(x, gen)
        correct += int((model(x)[1].argmax(-1) == y).sum())
    model.train()
    return correct / n


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(DEFAULT_WEIGHTS), help="where to write the safetensors")
    ap.add_argument("--seed", type=int, default=0, help="init, order and augmentation seed")
    ap.add_argument(
        "--data-seed", type=int, default=1000, help="synthetic dataset seed of the training clips"
    )
    ap.add_argument("--val-seed", type=int, default=2000, help="synthetic dataset seed of the held-out clips")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--val-clips", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (fixed for determinism)")
    args = ap.parse_args(argv)
    setup_logging(0, stream=sys.stderr)  # the trainer's line format; stdout: the final JSON report

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model = SynDetector(SynDetectorConfig())
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    t0 = time.perf_counter()
    for step in range(args.steps):
        lr = args.lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        idx = np.arange(step * args.batch_size, (step + 1) * args.batch_size)
        x, y = batch(idx, args.data_seed, rng.random(args.batch_size) < 0.5)
        _, logits = model(augment(x, gen))
        loss = F.cross_entropy(logits, y, label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 50 == 0 or step + 1 == args.steps:
            took = time.perf_counter() - t0
            eta = took / (step + 1) * (args.steps - step - 1)
            log.info(
                f"step {step + 1:5d}/{args.steps} | loss {loss.item():.4f} | lr {lr:.2e} | "
                f"{took:.0f}s elapsed, eta {eta:.0f}s"
            )
    report = {
        "val_acc": evaluate(model, args.val_seed, args.val_clips, None),
        "val_acc_augmented": evaluate(model, args.val_seed, args.val_clips, torch.Generator().manual_seed(1)),
        "train_seconds": round(time.perf_counter() - t0, 1),
    }
    config = {k: v for k, v in vars(args).items() if k != "out"}
    save(model, args.out, config | {"val_acc": report["val_acc"]})
    print(json.dumps({"out": str(Path(args.out).resolve()), **report}))
    return report


if __name__ == "__main__":
    main()
