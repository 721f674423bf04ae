"""Writing mp4 / gif / png outputs. CPU, about a second.

Run: ``pytest tests/test_media.py -q``
"""

import av
import numpy as np
import pytest
import torch
from PIL import Image

from minivdit.media import contact_sheet, make_grid, to_uint8, write_gif, write_mp4


def _videos(b: int, f: int, h: int, w: int) -> np.ndarray:
    """Smooth, moving gradients (codec friendly) as uint8 [B, F, H, W, 3]."""
    t, y, x = np.meshgrid(np.arange(f), np.arange(h), np.arange(w), indexing="ij")
    base = np.stack([x * 255 / w, y * 255 / h, (t * 255 / max(f - 1, 1)) + 0 * x], -1)
    return np.stack([np.roll(base, i, axis=2) for i in range(b)]).astype(np.uint8)


def test_to_uint8():
    video = torch.tensor([-1.0, 0.0, 1.0, 2.0]).reshape(1, 4, 1, 1, 1).expand(2, 4, 3, 5, 6)
    out = to_uint8(video)
    assert out.shape == (2, 4, 5, 6, 3) and out.dtype == np.uint8
    assert out[0, :, 0, 0, 0].tolist() == [0, 128, 255, 255]
    with pytest.raises(ValueError, match=r"\(2, 4, 5, 6, 3\)"):
        to_uint8(torch.zeros(2, 4, 5, 6, 3))


@pytest.mark.parametrize("h, w", [(32, 48), (33, 47)])
def test_mp4_round_trip(tmp_path, h, w):
    frames = _videos(1, 6, h, w)[0]
    path = tmp_path / "clip.mp4"
    write_mp4(path, frames, fps=8)
    with av.open(str(path)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 6
    assert decoded[0].shape == (h + h % 2, w + w % 2, 3)  # odd sides are padded to even for yuv420p
    error = np.abs(decoded[3][:h, :w].astype(float) - frames[3]).mean()
    assert error < 12  # lossy (and chroma-subsampled) but close


def test_gif(tmp_path):
    frames = _videos(1, 5, 16, 16)[0]
    path = tmp_path / "clip.gif"
    write_gif(path, frames, fps=4)
    with Image.open(path) as image:
        assert image.n_frames == 5 and image.size == (16, 16)
        assert image.info["loop"] == 0 and image.info["duration"] == 250


def test_grid():
    videos = _videos(5, 3, 8, 10)
    grid = make_grid(videos, nrow=3)
    assert grid.shape == (3, 2 * 8 + 2, 3 * 10 + 2 * 2, 3)
    np.testing.assert_array_equal(grid[:, 10:18, 12:22], videos[4])  # second row, second column
    assert (grid[:, 8:10] == 255).all()  # separator between the rows
    assert make_grid(videos, nrow=8).shape == (3, 8, 5 * 10 + 4 * 2, 3)


def test_contact_sheet(tmp_path):
    videos = _videos(3, 16, 32, 32)
    path = tmp_path / "sheet.png"
    contact_sheet(path, videos, num_frames=8)  # 32 px frames are upscaled 3× to 96 px
    with Image.open(path) as image:
        assert image.size == (8 * 96 + 7 * 2, 3 * 96 + 2 * 2)
    contact_sheet(path, videos, num_frames=4, labels=["a", "bb", "a much longer label"], scale=2)
    with Image.open(path) as image:
        assert image.size[1] == 3 * 64 + 2 * 2 and image.size[0] > 4 * 64 + 3 * 2
    with pytest.raises(ValueError, match="labels"):
        contact_sheet(path, videos, labels=["a"])
