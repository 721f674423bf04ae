"""Frame sampling of real videos (``minivdit/data/video.py``, issue 18 §2.2): target-fps resampling (CogVideoX
SAT), even spacing (CogVideo ``finetune/``), last-frame padding, skipped ends, several rates per video, and
exact resume through the loader. The index rules are checked against minimal re-implementations of the
reference code (the oracles below, marked and cited); decoding is checked on videos whose frame ``i`` is flat
grey ``10 + 6·i`` (``test_data_real``), so a decoded clip tells which frames it holds. CPU, a few seconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_data_real import frame_ids, write_frames, write_video  # tests/ is on sys.path

from minivdit.data import DataConfig, build_dataset, build_loader
from minivdit.data import video as V

pytestmark = pytest.mark.usefixtures("single_thread")
RNG = np.random.default_rng(0)

# ---------------------------------------------------------------------------------------------- oracles


def oracle_sat_load_video(ori_vlen: int, actual_fps: float, wanted_fps: float, num_frames: int, start: int):
    """ORACLE: the indices of CogVideo ``sat/data_video.py: load_video`` (commit e519ece, l.161-193) for a
    given ``start`` (SAT draws it with ``random.randint``), then ``pad_last_frame`` (l.148-158): its
    ``np.arange(start, end, (end - start) / n_frms).astype(int)`` and ``tensor[:num_frames]``."""
    end = int(start + num_frames / wanted_fps * actual_fps)
    indices = np.arange(start, end, (end - start) / num_frames).astype(int)
    assert indices[-1] < ori_vlen  # SAT's webdataset loader skips videos too short for the clip
    return indices[:num_frames]


def oracle_cogvideo_finetune(video_num_frames: int, max_num_frames: int) -> np.ndarray:
    """ORACLE: the frames CogVideo ``finetune/datasets/utils.py: preprocess_video_with_resize`` (commit
    e519ece, l.102-146) returns, as indices: all frames then the last one repeated when the video is short,
    else ``range(0, N, N // F)[:F]``."""
    if video_num_frames < max_num_frames:
        idx = list(range(video_num_frames))
        return np.array(idx + [idx[-1]] * (max_num_frames - video_num_frames))
    return np.array(list(range(0, video_num_frames, video_num_frames // max_num_frames))[:max_num_frames])


# ---------------------------------------------------------------------------------------------- index rules


@pytest.mark.parametrize("native", [24.0, 25.0, 30.0, 59.94, 60.0])
@pytest.mark.parametrize("start", [0, 3, 17])
def test_fps_indices_are_sats_load_video(native, start):
    """49 frames at 8 fps from a fixed start: SAT's indices exactly (its float arange hits an exact integer
    only at k = 0 for these rates, so its rounding cannot differ from the integer rule here)."""
    spec = V.ClipSpec(num_frames=49, sampling="fps", fps=(8.0,), skip_frames=start, random_start=False)
    total = 20_000
    got = V.clip_indices(total, spec, RNG, native_fps=native)
    assert np.array_equal(got, oracle_sat_load_video(total, native, 8.0, 49, start))
    # 8 fps: 48 steps span 6 s of the video, up to two native frames lost to the floors (of m and of k·m/F)
    assert (got[-1] - got[0]) / native == pytest.approx(48 / 8, abs=2.0 / native)


@pytest.mark.parametrize("n", [5, 48, 49, 50, 97, 98, 300, 1001])
def test_even_indices_are_cogvideo_finetunes(n):
    spec = V.ClipSpec(num_frames=49, sampling="even")
    assert np.array_equal(V.clip_indices(n, spec, RNG), oracle_cogvideo_finetune(n, 49))


def test_padding_skip_and_random_start():
    # A video shorter than the clip's span: the rate is kept, the frames past the end repeat the last one.
    spec = V.ClipSpec(num_frames=8, sampling="fps", fps=(8.0,), skip_frames=3, random_start=False)
    idx = V.clip_indices(20, spec, RNG, native_fps=24.0)  # span 24 frames > 20 - 2·3 usable
    assert idx.tolist() == [3, 6, 9, 12, 15, 16, 16, 16]  # 3 + 3k up to frame 16 = 20 - 3 - 1, then it again
    even = V.ClipSpec(num_frames=8, sampling="even", skip_frames=3)
    assert V.clip_indices(20, even, RNG).tolist() == [3 + k for k in range(8)]  # 14 usable: ⌊14/8⌋ = 1
    assert V.clip_indices(12, even, RNG).tolist() == [3, 4, 5, 6, 7, 8, 8, 8]  # 6 usable: padded
    # random_start: uniform over the room left after the span, inside the skipped ends
    rnd = V.ClipSpec(num_frames=4, sampling="fps", fps=(8.0,), skip_frames=2)
    starts = {int(V.clip_indices(40, rnd, np.random.default_rng(s), native_fps=16.0)[0]) for s in range(500)}
    assert starts == set(range(2, 40 - 2 - 8 + 1))  # span m = ⌊4·16/8⌋ = 8 frames
    with pytest.raises(ValueError, match="too short: 6 frames < 7"):
        V.clip_indices(6, spec, RNG, native_fps=24.0)
    with pytest.raises(ValueError, match="frame rate"):
        V.clip_indices(100, spec, RNG)


def test_config_validation():
    for bad, match in (
        (dict(frame_sampling="random"), "frame_sampling"),
        (dict(fps=()), "fps"),
        (dict(fps=(8.0, 0.0)), "fps"),
        (dict(skip_frames=-1), "skip_frames"),
    ):
        with pytest.raises(ValueError, match=match):
            DataConfig(**bad)


# ---------------------------------------------------------------------------------------------- datasets


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """Two 25 fps videos of 40 frames and a 40-frame folder, with a captions CSV."""
    root = tmp_path_factory.mktemp("fps")
    write_video(root / "a.mp4", 40)
    write_video(root / "b.mp4", 40, tint=80)
    write_frames(root / "frames", 40)
    (root / "captions.csv").write_text("path,caption\na.mp4,first\nb.mp4,second\n")
    return root


def _cfg(root: Path, **kw) -> DataConfig:
    base = dict(dataset="folder", root=str(root), labels_csv="captions.csv", num_frames=4, image_size=16)
    return DataConfig(**(base | kw))


def test_fps_clips_decode_the_resampled_frames(clips):
    ds = build_dataset(_cfg(clips, frame_sampling="fps", fps=(8.0,), skip_frames=3, random_start=False))
    got = frame_ids(ds.get(0, np.random.default_rng(0))["video"])
    assert got.tolist() == [3, 6, 9, 12]  # m = ⌊4·25/8⌋ = 12 frames: 3 + ⌊12k/4⌋


def test_several_rates_list_every_video_once_per_rate(clips):
    """``--data.fps 8 4``: index 2i is video i at 8 fps, 2i + 1 at 4 fps; captions follow the video."""
    ds = build_dataset(_cfg(clips, frame_sampling="fps", fps=(8.0, 4.0), random_start=False))
    assert len(ds) == 4 and [ds.path(i) for i in range(4)] == [str(clips / f"{n}.mp4") for n in "aabb"]
    rows = [ds.get(i, np.random.default_rng(0)) for i in range(4)]
    assert [r["caption"] for r in rows] == ["first", "first", "second", "second"]
    assert frame_ids(rows[1]["video"]).tolist() == [0, 6, 12, 18]  # 4 fps: m = ⌊4·25/4⌋ = 25
    assert frame_ids(rows[0]["video"]).tolist() == [0, 3, 6, 9]


def test_frame_folders_have_no_rate(clips):
    spec = V.ClipSpec(num_frames=4, image_size=16, sampling="fps")
    with pytest.raises(V.BadVideo, match="no frame rate"):
        V.sample_clip(V.list_frames(clips / "frames"), spec, np.random.default_rng(0))
    even = V.ClipSpec(num_frames=4, image_size=16, sampling="even")
    got = V.sample_clip(V.list_frames(clips / "frames"), even, np.random.default_rng(0))
    assert frame_ids(got).tolist() == [0, 10, 20, 30]


def test_exact_resume_with_random_fps_starts(clips):
    """The start is drawn from the sample's rng: a resumed loader gives the uninterrupted run's next batch."""
    c = _cfg(clips, frame_sampling="fps", fps=(8.0, 4.0), batch_size=2, seed=3)
    run = build_loader(c)
    next(run)
    state, expected = run.state_dict(), next(run)
    resumed = build_loader(c)
    resumed.load_state_dict(state)
    got = next(resumed)
    assert torch.equal(got.video, expected.video) and got.caption == expected.caption
