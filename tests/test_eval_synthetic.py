"""The synthetic-data detector: the committed weights classify clean synthetic clips at the sizes runs use,
its training tool is deterministic from its seed, and its loader refuses foreign files."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from minivdit import media
from minivdit.data.synthetic import SyntheticVideos
from minivdit.eval import synthetic
from minivdit.eval.evaluate import to_uint8


def _clips(n: int, frames: int, size: int, seed: int = 3000) -> tuple[torch.Tensor, torch.Tensor]:
    ds = SyntheticVideos(frames, size, 10, n, seed)
    items = [ds.get(i) for i in range(n)]
    video = torch.from_numpy(media.to_uint8(torch.stack([it["video"] for it in items]))).permute(
        0, 1, 4, 2, 3
    )
    return video.contiguous(), torch.tensor([it["label"] for it in items])  # uint8 [B, F, 3, H, W]


@pytest.mark.parametrize("frames,size", [(8, 16), (8, 32), (16, 32), (9, 64)])
def test_committed_detector_classifies_clean_clips(frames, size):
    det = synthetic.load()
    video, labels = _clips(40, frames, size)
    probs = det.probs(video)
    assert probs.shape == (40, 10) and torch.allclose(probs.sum(-1), torch.ones(40), atol=1e-5)
    assert synthetic.accuracy(probs, labels) >= 0.95
    feats = det.features(video)
    assert feats.shape == (40, det.dim) and feats.dtype == torch.float32


def test_resample_and_errors(tmp_path):
    video = torch.randint(0, 256, (2, 16, 3, 20, 20), dtype=torch.uint8)
    x = synthetic.resample(video)
    assert x.shape == (2, 3, synthetic.NUM_FRAMES, synthetic.SIZE, synthetic.SIZE) and x.abs().max() <= 1
    same = torch.randint(
        0, 256, (1, 8, 3, 32, 32), dtype=torch.uint8
    )  # already the detector's size: untouched
    torch.testing.assert_close(
        synthetic.resample(same), same.float().div(127.5).sub(1).permute(0, 2, 1, 3, 4)
    )
    det = synthetic.load()
    with pytest.raises(ValueError, match="at least 2 frames"):
        det.features(video[:, :1])
    with pytest.raises(ValueError, match="no such file"):
        synthetic.load(tmp_path / "missing.safetensors")
    save_file({"w": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a synthetic-detector file"):
        synthetic.load(tmp_path / "other.safetensors")


def test_training_tool_is_deterministic(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "tools" / "train_syn_detector.py"
    spec = importlib.util.spec_from_file_location("train_syn_detector", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    from safetensors.torch import load_file

    args = ["--steps", "3", "--batch-size", "4", "--val-clips", "8", "--threads", "1"]
    tool.main(args + ["--out", str(tmp_path / "a.safetensors")])
    tool.main(args + ["--out", str(tmp_path / "b.safetensors")])
    tool.main(args + ["--out", str(tmp_path / "c.safetensors"), "--seed", "1"])
    a, b, c = (load_file(str(tmp_path / f"{k}.safetensors")) for k in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert synthetic.load(tmp_path / "a.safetensors").cfg == synthetic.SynDetectorConfig()


def _frame(*boxes, size=16):
    """uint8 [1, 1, 3, S, S]: a dark frame with bright rectangles (y0, y1, x0, x1)."""
    video = torch.full((1, 1, 3, size, size), 20, dtype=torch.uint8)
    for y0, y1, x0, x1 in boxes:
        video[..., 0, y0:y1, x0:x1] = 230
    return video


def test_count_objects_counts_8_connected_bright_regions():
    count = synthetic.count_objects
    assert count(_frame()).item() == 0
    assert count(_frame((2, 6, 2, 6))).item() == 1
    assert count(_frame((2, 6, 2, 6), (9, 12, 9, 12))).item() == 2  # a stray blob: two objects
    assert count(_frame((2, 4, 2, 4), (4, 6, 4, 6))).item() == 1  # touching at a corner: 8-connected
    ring = _frame((3, 13, 3, 13))
    ring[..., 5:11, 5:11] = 20
    assert count(ring).item() == 1  # a hollow shape is one object
    rows = [(r, r + 1, 0, 16) for r in range(0, 16, 2)]  # a serpentine: full rows joined at alternate ends
    links = [(r, r + 1, 15 if r % 4 == 1 else 0, 16 if r % 4 == 1 else 1) for r in range(1, 15, 2)]
    snake = _frame(*rows, *links)
    assert count(snake).item() == 1  # long winding regions converge too
    assert count(torch.cat([_frame(), _frame((1, 3, 1, 3), (8, 9, 8, 9), (12, 14, 1, 3))])).tolist() == [
        [0],
        [3],
    ]
    with pytest.raises(ValueError, match="count_objects"):
        count(torch.zeros(1, 1, 3, 4, 4))


@pytest.mark.parametrize("size", [16, 32])
def test_real_clips_show_their_class_count_of_objects(size):
    ds = SyntheticVideos(8, size, 10, size=120, seed=3)  # 12 clips per class, every frame counted
    items = [ds.get(i) for i in range(120)]
    video = to_uint8(torch.stack([it["video"] for it in items]))  # [B, F, 3, S, S], as the evaluation rounds
    labels = torch.tensor([it["label"] for it in items])
    right = synthetic.count_objects(video) == synthetic.expected_objects(labels)[:, None]
    assert right.all(), f"classes with miscounted frames: {sorted(set(labels[~right.all(1)].tolist()))}"
