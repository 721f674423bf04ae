"""The synthetic-data detector: the committed weights classify clean synthetic clips at the sizes runs use,
its training tool is deterministic from its seed, and its loader refuses foreign files."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from minivdit import media
from minivdit.data.synthetic import SyntheticVideos
from minivdit.eval import synthetic


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
