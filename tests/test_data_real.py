"""Real-video datasets on their on-disk formats, generated here with PyAV (mpeg4 in .avi, libx264 in .mp4) and
PIL (jpg frame folders): a mini UCF-101 tree with split files, a mini SkyTimelapse tree, a mini FaceForensics
folder and a generic folder with a CSV. Counts per split/fold, labels, shapes, ranges, determinism, per-rank
disjointness, decoding only the frames needed, and the bad inputs of issue 6. CPU, a few seconds.

Every generated frame ``i`` is flat grey ``BASE + STEP · i`` (plus a per-video tint), so the mean of a decoded
frame tells which frame it is.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from minivdit.data import DataConfig, build_dataset, build_loader
from minivdit.data import video as V

F, INTERVAL, SIZE = 4, 3, 16  # span = (4 - 1) * 3 + 1 = 10 frames
BASE, STEP = 10, 6
CLASSES = ["ApplyEyeMakeup", "Basketball", "YoYo"]

pytestmark = pytest.mark.usefixtures("single_thread")


def frame_value(i: int) -> int:
    return BASE + STEP * i


def write_video(
    path: Path, n: int, codec: str = "libx264", w: int = 32, h: int = 24, tint: int = 0, gop=None
):
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=25)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.bit_rate = 2_000_000  # tiny frames, near-lossless: frame ids stay readable
        if gop:  # keyframes exactly every `gop` frames (no scene-cut keyframes on our flat frames)
            s.codec_context.gop_size = gop
            s.options = {"sc_threshold": "1000000000"} if codec == "mpeg4" else {"x264-params": "scenecut=0"}
        for i in range(n):
            a = np.full((h, w, 3), frame_value(i), np.uint8)
            a[..., 2] = tint
            for p in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def write_frames(folder: Path, n: int, name=lambda i: f"frame_{i}.jpg", w: int = 40, h: int = 24):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((h, w, 3), frame_value(i), np.uint8)).save(folder / name(i), quality=95)


def frame_ids(video: torch.Tensor) -> np.ndarray:
    """Frame numbers of a clip in [-1, 1] from the green channel's mean (see the module docstring)."""
    g = (video[:, 1].mean(dim=(1, 2)).numpy() + 1) * 127.5 + 1  # the RGB → YUV → RGB round trip loses ~1
    return np.round((g - BASE) / STEP).astype(int)


def cfg(**kw) -> DataConfig:
    base = dict(num_frames=F, frame_interval=INTERVAL, image_size=SIZE, batch_size=2)
    return DataConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("real")
    # UCF-101: 3 classes × 4 groups (g01..g04), AVI/mpeg4 with 20..35 frames; fold k tests group k.
    ucf = root / "ucf"
    lists = ucf / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    (lists / "classInd.txt").write_text("".join(f"{i + 1} {c}\n" for i, c in enumerate(CLASSES)))
    for c, cls in enumerate(CLASSES):
        for g in range(1, 5):
            write_video(ucf / "UCF-101" / cls / f"v_{cls}_g{g:02d}_c01.avi", 20 + 5 * g, "mpeg4", tint=40 * c)
    for fold in (1, 2, 3):
        train = [
            f"{cls}/v_{cls}_g{g:02d}_c01.avi {c + 1}" for c, cls in enumerate(CLASSES) for g in range(1, 5)
        ]
        test = [line.split()[0] for line in train if f"_g{fold:02d}_" in line]
        (lists / f"trainlist0{fold}.txt").write_text(
            "\n".join(line for line in train if f"_g{fold:02d}_" not in line) + "\n"
        )
        (lists / f"testlist0{fold}.txt").write_text("\r\n".join(test) + "\r\n")  # CRLF, as the official files
    # SkyTimelapse, nested as the public copy; one clip too short (5 < 10 frames).
    sky = root / "sky" / "sky_train"
    for v in range(3):
        for k in range(2):
            n = 5 if (v, k) == (2, 1) else 14 + 3 * v
            write_frames(
                sky / f"vid{v}" / f"vid{v}_{k}", n, name=lambda i, v=v, k=k: f"vid{v}_{k}_frames_{i}.jpg"
            )
    # FaceForensics: <root>/train/videos/*.mp4.
    for v in range(3):
        write_video(root / "ffs" / "train" / "videos" / f"{v:03d}.mp4", 24, tint=30 * v)
    # A generic folder: 6 videos (avi + mp4) and 2 frame folders, with a CSV giving each a distinct label.
    folder = root / "folder"
    rows = ["path,label,caption"]
    for v in range(6):
        ext, codec = ("avi", "mpeg4") if v % 2 else ("mp4", "libx264")
        write_video(folder / "clips" / f"c{v}.{ext}", 16 + v, codec)
        rows.append(f"clips/c{v}.{ext},{v},clip number {v}")
    for v in (6, 7):
        write_frames(folder / "frames" / f"f{v}", 12, name=lambda i: f"{i:03d}.png")
        rows.append(f"frames/f{v},{v},frames {v}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return {"root": root, "ucf": ucf, "sky": root / "sky", "ffs": root / "ffs", "folder": folder}


# ---------------------------------------------------------------------------------------------- UCF-101


@pytest.mark.parametrize(
    "split, fold, n", [("train", 1, 9), ("test", 1, 3), ("all", 1, 12), ("train", 2, 9), ("test", 3, 3)]
)
def test_ucf101_counts_per_split_and_fold(trees, split, fold, n):
    ds = build_dataset(cfg(dataset="ucf101", root=str(trees["ucf"]), split=split, fold=fold))
    assert len(ds) == n and ds.num_classes == 3 and ds.classes == CLASSES
    if split == "test":
        assert all(f"_g{fold:02d}_" in ds.path(i) for i in range(n))
    for i in range(n):  # labels from classInd.txt, 0-based, matching the folder
        assert CLASSES[ds.labels[i]] == Path(ds.path(i)).parent.name


def test_ucf101_clip_shape_range_order_label(trees):
    ds = build_dataset(cfg(dataset="ucf101", root=str(trees["ucf"]), split="all", flip=False))
    for i in (0, 5, 11):
        sample = ds.get(i, np.random.default_rng(i))
        video = sample["video"]
        assert video.shape == (F, 3, SIZE, SIZE) and video.dtype == torch.float32
        assert video.min() >= -1 and video.max() <= 1
        ids = frame_ids(video)
        assert np.all(np.diff(ids) == INTERVAL) and ids[0] >= 0, ids  # F frames, every 3rd, in order
        assert sample["label"] == CLASSES.index(Path(ds.path(i)).parent.name) and sample["skipped"] == []


def test_ucf101_root_may_be_the_video_folder(trees):
    """``--data.root /data/UCF-101`` with ucfTrainTestlist/ next to it."""
    ds = build_dataset(cfg(dataset="ucf101", root=str(trees["ucf"] / "UCF-101"), split="test"))
    assert len(ds) == 3


def test_ucf101_unknown_classes_and_missing_videos(trees, tmp_path, caplog):
    lists = tmp_path / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_text((trees["ucf"] / "ucfTrainTestlist" / "classInd.txt").read_text())
    good = (trees["ucf"] / "ucfTrainTestlist" / "trainlist01.txt").read_text().splitlines()
    bad = ["Nope/v_Nope_g01_c01.avi 4", "YoYo/v_YoYo_g09_c01.avi 3", "YoYo/v_YoYo_g08_c01.avi 3"]
    (lists / "trainlist01.txt").write_text("\n".join(good + bad))
    (lists / "testlist01.txt").write_text("YoYo/v_YoYo_g09_c01.avi\nNope/v_Nope_g02_c01.avi\n")
    os.symlink(trees["ucf"] / "UCF-101", tmp_path / "UCF-101")
    with caplog.at_level(logging.WARNING, logger="minivdit"):
        ds = build_dataset(cfg(dataset="ucf101", root=str(tmp_path)))
    assert len(ds) == 9
    assert ds.dropped["unknown_class"] == ["Nope/v_Nope_g01_c01.avi"]
    assert ds.dropped["missing"] == ["YoYo/v_YoYo_g09_c01.avi", "YoYo/v_YoYo_g08_c01.avi"]
    assert "3 of 12 entries skipped" in caplog.text and "v_YoYo_g09_c01.avi" in caplog.text
    with pytest.raises(
        ValueError, match="none of the 2 entries is usable.*missing from classInd.*Nope.*missing videos.*g09"
    ):
        build_dataset(cfg(dataset="ucf101", root=str(tmp_path), split="test"))


@pytest.mark.parametrize("name", ["ucf101", "sky", "ffs", "folder"])
def test_missing_root_one_clear_error(tmp_path, name):
    with pytest.raises(
        ValueError, match=rf"--data.dataset {name} needs --data.root .*README, section Datasets"
    ):
        build_dataset(cfg(dataset=name, root=None))  # names the flag, not "root=None"
    with pytest.raises(ValueError, match=r"expected .*README, section Datasets"):
        build_dataset(cfg(dataset=name, root=str(tmp_path / "nowhere")))
    if name != "folder":  # an existing folder with nothing of the layout in it
        with pytest.raises(ValueError, match="README, section Datasets"):
            build_dataset(cfg(dataset=name, root=str(tmp_path)))


# ---------------------------------------------------------------------------------------------- Sky, FFS


def test_sky_nested_numeric_order_short_clips_dropped(trees, caplog):
    with caplog.at_level(logging.WARNING, logger="minivdit"):
        ds = build_dataset(cfg(dataset="sky", root=str(trees["sky"])))
    assert len(ds) == 5 and ds.num_classes == 0 and ds.dropped["too_short"][0].endswith("vid2_1")
    assert "1 of 6 frame folders have fewer than 10 frames" in caplog.text
    assert ds.spec.resize == "crop_resize" and ds.spec.flip is False
    for i in range(len(ds)):
        sample = ds.get(i, np.random.default_rng(i))
        video = sample["video"]
        assert video.shape == (F, 3, SIZE, SIZE) and sample["label"] == 0
        assert np.all(
            np.diff(frame_ids(video)) == INTERVAL
        )  # numeric, not lexicographic (frame_10 < frame_2)


def test_sky_bad_frame_names_and_all_too_short(tmp_path):
    write_frames(tmp_path / "a" / "clip", 12, name=lambda i: f"{i}.jpg")
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "clip" / "cover.jpg")
    with pytest.raises(ValueError, match=r"frame folder .*clip: frame 'cover.jpg' has no number"):
        build_dataset(cfg(dataset="sky", root=str(tmp_path / "a")))
    write_frames(tmp_path / "b" / "clip", 6)
    with pytest.raises(ValueError, match="fewer than 10 frames.*no clip left"):
        build_dataset(cfg(dataset="sky", root=str(tmp_path / "b")))


def test_ffs_train_videos(trees):
    ds = build_dataset(cfg(dataset="ffs", root=str(trees["ffs"])))
    assert len(ds) == 3 and ds.num_classes == 0 and ds.spec.flip is True
    video = ds.get(1, np.random.default_rng(0))["video"]
    assert video.shape == (F, 3, SIZE, SIZE) and np.all(np.diff(frame_ids(video)) == INTERVAL)
    assert len(build_dataset(cfg(dataset="ffs", root=str(trees["ffs"] / "train" / "videos")))) == 3


# ---------------------------------------------------------------------------------------------- folder


def test_folder_csv_labels_captions_and_names(trees, tmp_path):
    ds = build_dataset(cfg(dataset="folder", root=str(trees["folder"]), labels_csv="labels.csv"))
    assert len(ds) == 8 and ds.num_classes == 8 and ds.labels == list(range(8))
    sample = ds.get(6, np.random.default_rng(0))
    assert sample["caption"] == "frames 6" and sample["label"] == 6
    assert sample["video"].shape == (F, 3, SIZE, SIZE)
    (tmp_path / "named.csv").write_text(
        "path,label\nclips/c0.mp4,zebra\nclips/c1.avi,ant\nclips/c9.mp4,ant\n"
    )
    ds = build_dataset(
        cfg(dataset="folder", root=str(trees["folder"]), labels_csv=str(tmp_path / "named.csv"))
    )
    assert (
        ds.classes == ["ant", "zebra"] and ds.labels == [1, 0] and ds.dropped["missing"] == ["clips/c9.mp4"]
    )
    plain = build_dataset(cfg(dataset="folder", root=str(trees["folder"])))
    assert len(plain) == 8 and plain.num_classes == 0 and set(plain.labels) == {0}


def test_determinism_and_flip(trees):
    ds = build_dataset(cfg(dataset="folder", root=str(trees["folder"]), labels_csv="labels.csv", flip=True))
    a = ds.get(3, np.random.default_rng(123))["video"]
    assert torch.equal(a, ds.get(3, np.random.default_rng(123))["video"])
    starts = {int(frame_ids(ds.get(3, np.random.default_rng(s))["video"])[0]) for s in range(20)}
    assert len(starts) > 1 and min(starts) >= 0 and max(starts) <= 19 - 10 + 1 - 1  # c3: 19 frames


def test_per_rank_disjoint_and_resume(trees):
    c = cfg(dataset="folder", root=str(trees["folder"]), labels_csv="labels.csv", batch_size=2, seed=1)
    seen = []
    for rank in range(2):
        loader = build_loader(c, rank, 2)
        assert loader.steps_per_epoch == 2
        labels = torch.cat([next(loader).label for _ in range(2)]).tolist()
        seen.append(set(labels))
    assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == set(range(8))
    run = build_loader(c)
    next(run)
    state = run.state_dict()
    expected = next(run)
    resumed = build_loader(c)
    resumed.load_state_dict(state)
    got = next(resumed)
    assert torch.equal(got.video, expected.video) and torch.equal(got.label, expected.label)


# ---------------------------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("ext, codec", [("avi", "mpeg4"), ("mp4", "libx264"), ("mkv", "libx264")])
def test_decodes_only_the_frames_needed(tmp_path, ext, codec):
    path = tmp_path / f"v.{ext}"
    write_video(path, 40, codec, gop=10)
    info = V.probe(path)
    assert info.num_frames == 40 and list(info.keyframes[:4]) == [0, 10, 20, 30]
    whole = V.read_all_frames(path)
    for idx in ([21, 24, 27, 30], [0, 3, 6, 9], [31, 34, 37]):
        V.STATS.reset()
        got = V.read_frames(path, idx)
        assert np.array_equal(got, whole[idx])  # bit-exact against decoding everything
        # From the keyframe at or before the first frame to the last one, not one frame beyond.
        assert V.STATS.frames_decoded <= idx[-1] - 10 * (idx[0] // 10) + 1, V.STATS
        assert V.STATS.frames_converted == len(idx) and V.STATS.fallbacks == 0


def test_to_clip_modes():
    frames = np.zeros((2, 24, 40, 3), np.uint8)
    frames[:, :, :20] = 255  # left half white
    for resize in ("short_side_crop", "crop_resize"):
        x = V.to_clip(frames, 12, resize)
        assert x.shape == (2, 3, 12, 12) and x[0, 0, 0, 0] == 1 and x[0, 0, 0, -1] == -1
        assert V.to_clip(frames, 12, resize, flip=True)[0, 0, 0, 0] == -1


# ---------------------------------------------------------------------------------------------- bad input


def test_broken_videos_skipped_counted_and_logged_once_per_epoch(tmp_path, caplog):
    root = tmp_path / "broken"
    for v in range(3):
        write_video(root / f"good{v}.mp4", 15 + v, tint=60 * v)
    (root / "empty.mp4").write_bytes(b"")
    write_video(tmp_path / "whole.mp4", 30)
    data = (tmp_path / "whole.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (root / "random.avi").write_bytes(np.random.default_rng(0).bytes(4000))
    write_video(root / "short.avi", 6, "mpeg4")  # 6 < span 10
    write_frames(root / "frames", 10, name=lambda i: f"{i:02d}.jpg")
    (root / "frames" / "09.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    bad = {str(root / n) for n in ("empty.mp4", "truncated.mp4", "random.avi", "short.avi", "frames")}

    c = cfg(dataset="folder", root=str(root), batch_size=8, seed=0)
    ds = build_dataset(c)
    assert len(ds) == 8
    good_tints = set()
    for i in range(len(ds)):
        sample = ds.get(i, np.random.default_rng(i))
        assert sample["video"].shape == (F, 3, SIZE, SIZE)  # always a real clip, never garbage
        tint = round(float(sample["video"][:, 2].mean() + 1) * 127.5 / 60)
        good_tints.add(tint)
        if ds.path(i) in bad:
            assert sample["skipped"] and sample["skipped"][0][0] == ds.path(i)
        # Same draw, same replacement: exact resume holds through the skip.
        again = ds.get(i, np.random.default_rng(i))
        assert torch.equal(sample["video"], again["video"]) and sample["skipped"] == again["skipped"]
    assert good_tints <= {0, 1, 2}
    assert set(ds.bad_paths) == bad
    assert "too short: 6 frames < 10" in ds.bad_paths[str(root / "short.avi")]
    assert "empty file" in ds.bad_paths[str(root / "empty.mp4")]
    assert "cannot read frame" in ds.bad_paths[str(root / "frames")]

    loader = build_loader(c)
    with caplog.at_level(logging.WARNING, logger="minivdit"):
        for _ in range(3):  # 3 epochs of one batch holding every clip
            batch = next(loader)
            assert batch.video.shape == (8, F, 3, SIZE, SIZE)
    logs = [r.getMessage() for r in caplog.records if "bad video" in r.getMessage()]
    assert len(logs) == 3 and all(p in logs[0] for p in bad) and "epoch 0" in logs[0], logs
    assert set(loader.bad_paths) == bad


def test_bad_video_names_the_file(tmp_path):
    with pytest.raises(V.BadVideo, match="missing.mp4: cannot stat"):
        V.probe(tmp_path / "missing.mp4")
    (tmp_path / "x.avi").write_bytes(b"RIFF" + bytes(100))
    with pytest.raises(V.BadVideo, match=r"x\.avi: cannot read") as err:
        V.read_frames(tmp_path / "x.avi", [0])
    assert err.value.path == str(tmp_path / "x.avi") and isinstance(err.value, ValueError)
