"""Data pipeline: the synthetic dataset and the exact-resume loader. CPU, a few seconds.

Run: ``pytest tests/test_data.py -q``
"""

import time

import numpy as np
import pytest
import torch

from minivdit.data import Batch, DataConfig, build_loader, collate, sample_seeds
from minivdit.data.synthetic import CLASS_NAMES, PALETTE, SyntheticVideos

# ---------------------------------------------------------------------------------------------- synthetic


def test_synthetic_deterministic_per_seed_and_index():
    a = SyntheticVideos(num_frames=6, image_size=24, num_classes=8, size=100, seed=3)
    b = SyntheticVideos(num_frames=6, image_size=24, num_classes=8, size=100, seed=3)
    x = a.get(17, np.random.default_rng(0))["video"]
    assert torch.equal(x, b.get(17, np.random.default_rng(1))["video"])  # the passed rng is ignored
    assert not torch.equal(x, a.get(25, np.random.default_rng(0))["video"])  # same class (25 % 8 == 17 % 8)
    other_seed = SyntheticVideos(num_frames=6, image_size=24, num_classes=8, size=100, seed=4)
    assert not torch.equal(x, other_seed.get(17)["video"])


@pytest.mark.parametrize("frames, size", [(8, 32), (5, 17), (1, 64), (16, 8)])
def test_synthetic_shapes_dtype_range(frames, size):
    ds = SyntheticVideos(num_frames=frames, image_size=size, num_classes=10, size=30, seed=0)
    assert len(ds) == 30
    for i in (0, 9, 29):
        sample = ds.get(i, np.random.default_rng(0))
        video = sample["video"]
        assert video.shape == (frames, 3, size, size) and video.dtype == torch.float32
        assert video.min() >= -1.0 and video.max() <= 1.0
        assert sample["label"] == i % 10


def test_synthetic_bad_args():
    with pytest.raises(ValueError, match="num_classes"):
        SyntheticVideos(num_frames=4, image_size=16, num_classes=len(CLASS_NAMES) + 1, size=10)
    with pytest.raises(ValueError, match="image_size"):
        SyntheticVideos(num_frames=4, image_size=0, num_classes=4, size=10)
    with pytest.raises(IndexError):
        SyntheticVideos(num_frames=4, image_size=16, num_classes=4, size=10).get(10)


def test_synthetic_is_fast():
    ds = SyntheticVideos(num_frames=16, image_size=64, num_classes=10, size=100, seed=0)
    ds.get(0)
    start = time.perf_counter()
    for i in range(20):
        ds.get(i)
    # About 3 ms on one CPU core; the bound is loose so that a busy machine does not fail it.
    assert (time.perf_counter() - start) / 20 < 0.05


def _features(video: torch.Tensor) -> np.ndarray:
    """Mean object colour, centroid displacement, path length and area variation of one clip in [0, 1]."""
    rgb = (video.numpy().transpose(0, 2, 3, 1) + 1) / 2  # [F, H, W, 3]
    mask = rgb.max(-1) > 0.6  # the background stays below ~0.35, every object colour has a channel >= 0.9
    colour = rgb[mask].mean(0)
    ys, xs = np.mgrid[: rgb.shape[1], : rgb.shape[2]] / rgb.shape[1]
    area = mask.sum((1, 2))
    cx, cy = (mask * xs).sum((1, 2)) / area, (mask * ys).sum((1, 2)) / area
    path = np.hypot(np.diff(cx), np.diff(cy)).sum()
    return np.array([*colour, cx[-1] - cx[0], cy[-1] - cy[0], path, area.std() / area.mean()])


def test_synthetic_classes_are_distinguishable():
    ds = SyntheticVideos(num_frames=8, image_size=32, num_classes=10, size=400, seed=0)
    palette = np.asarray(PALETTE) / 255.0
    feats = np.stack([_features(ds.get(i)["video"]) for i in range(200)])
    labels = np.arange(200) % 10
    # The object's mean colour is nearest to its own class colour.
    nearest = np.linalg.norm(feats[:, None, :3] - palette[None], axis=-1).argmin(1)
    assert (nearest == labels).all()
    # A nearest-centroid classifier on colour + motion features: fit on the first half, test on the second.
    train, test = slice(0, 100), slice(100, 200)
    scale = feats[train].std(0) + 1e-6
    centroids = np.stack([feats[train][labels[train] == c].mean(0) for c in range(10)]) / scale
    pred = np.linalg.norm(feats[test][:, None] / scale - centroids[None], axis=-1).argmin(1)
    assert (pred == labels[test]).mean() >= 0.9
    # Motion alone (no colour) separates the classes that move from the ones that stay in place.
    moving = feats[:, 5] > 0.15  # path length as a fraction of the frame
    assert set(labels[moving]) == {0, 1, 2, 3, 4, 5, 9} and set(labels[~moving]) == {6, 7, 8}


# ---------------------------------------------------------------------------------------------- loader


class _Probe:
    """Each sample's video holds its index; its label is a draw from the rng it was handed."""

    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return self.size

    def get(self, index: int, rng: np.random.Generator) -> dict:
        return {"video": torch.full((1, 3, 1, 1), float(index)), "label": int(rng.integers(2**62))}


def _indices(batch: Batch) -> list[int]:
    return batch.video[:, 0, 0, 0, 0].long().tolist()


def _take(loader, n: int) -> list[Batch]:
    return [next(loader) for _ in range(n)]


def _same(a: list[Batch], b: list[Batch]) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x.video, y.video) and torch.equal(x.label, y.label) for x, y in zip(a, b, strict=True)
    )


def test_loader_batch_shapes():
    cfg = DataConfig(num_frames=4, image_size=16, batch_size=3, synthetic_size=20)
    loader = build_loader(cfg)
    assert loader.steps_per_epoch == 6
    batch = next(loader).to("cpu")
    assert isinstance(batch, Batch)
    assert batch.video.shape == (3, 4, 3, 16, 16) and batch.video.dtype == torch.float32
    assert batch.label.shape == (3,) and batch.label.dtype == torch.int64
    assert batch.latents is None and batch.feats is None
    assert (batch.label < cfg.num_classes).all()


def test_loader_ranks_disjoint_within_epoch():
    cfg = DataConfig(batch_size=4, seed=1)
    seen = []
    for rank in range(2):
        loader = build_loader(cfg, rank=rank, world=2, dataset=_Probe(50))
        assert loader.steps_per_epoch == 6  # 25 per rank -> 6 full batches
        seen.append([i for b in _take(loader, 6) for i in _indices(b)])
        assert loader.state_dict() == {"epoch": 1, "batch_in_epoch": 0}
    assert len(set(seen[0])) == len(seen[1]) == 24
    assert not set(seen[0]) & set(seen[1])


def test_sample_seed_depends_on_seed_epoch_index_only():
    cfg = DataConfig(batch_size=5, seed=2)
    labels = {}  # (epoch, index) -> the probe's rng draw
    for rank, world in ((0, 1), (0, 2), (1, 2)):
        loader = build_loader(cfg, rank=rank, world=world, dataset=_Probe(20))
        for _ in range(2 * loader.steps_per_epoch):
            epoch = loader.epoch
            batch = next(loader)
            for i, label in zip(_indices(batch), batch.label.tolist(), strict=True):
                assert labels.setdefault((epoch, i), label) == label
    assert labels[(0, 3)] != labels[(1, 3)]
    np.testing.assert_array_equal(sample_seeds(2, 0, np.array([3, 4])), sample_seeds(2, 0, np.array([3, 4])))


def test_loader_deterministic_under_seed():
    a = _take(build_loader(DataConfig(batch_size=4, seed=5), dataset=_Probe(40)), 12)
    b = _take(build_loader(DataConfig(batch_size=4, seed=5), dataset=_Probe(40)), 12)
    c = _take(build_loader(DataConfig(batch_size=4, seed=6), dataset=_Probe(40)), 12)
    assert _same(a, b) and not _same(a, c)


def test_loader_epoch_rollover():
    loader = build_loader(DataConfig(batch_size=4), dataset=_Probe(20))
    epochs = [[i for b in _take(loader, 5) for i in _indices(b)] for _ in range(3)]
    assert all(sorted(e) == list(range(20)) for e in epochs)  # every index exactly once per epoch
    assert epochs[0] != epochs[1] != epochs[2]  # reshuffled
    next(loader)
    assert loader.state_dict() == {"epoch": 3, "batch_in_epoch": 1}


def test_loader_keeps_last_partial_batch():
    loader = build_loader(DataConfig(batch_size=4, drop_last=False), dataset=_Probe(22))
    assert loader.steps_per_epoch == 6
    assert [len(b.label) for b in _take(loader, 7)] == [4, 4, 4, 4, 4, 2, 4]


def test_loader_leaves_global_rng_alone():
    state = torch.get_rng_state()
    _take(build_loader(DataConfig(batch_size=2, synthetic_size=8)), 5)
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_exact_resume(workers):
    cfg = DataConfig(batch_size=4, num_workers=workers, seed=7)
    reference = _take(build_loader(cfg, dataset=_Probe(22)), 14)  # 5 steps per epoch: crosses two epochs

    first = build_loader(cfg, dataset=_Probe(22))
    assert _same(_take(first, 7), reference[:7])
    state = first.state_dict()
    assert state == {"epoch": 1, "batch_in_epoch": 2}
    _take(first, 2)  # consumed after the save: must not matter

    resumed = build_loader(cfg, dataset=_Probe(22))
    resumed.load_state_dict(state)
    assert _same(_take(resumed, 7), reference[7:14])
    # Reloading a live loader drops what its workers already prefetched.
    first.load_state_dict(state)
    assert _same(_take(first, 3), reference[7:10])


def test_loader_exact_resume_synthetic_with_workers():
    cfg = DataConfig(num_frames=4, image_size=16, batch_size=2, synthetic_size=10, num_workers=2)
    reference = _take(build_loader(cfg, rank=1, world=2), 5)
    loader = build_loader(cfg, rank=1, world=2)
    _take(loader, 3)
    resumed = build_loader(cfg, rank=1, world=2)
    resumed.load_state_dict(loader.state_dict())
    assert _same(_take(resumed, 2), reference[3:])


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "field, value",
    [
        ("num_frames", 0),
        ("image_size", 0),
        ("frame_interval", 0),
        ("num_classes", 0),
        ("batch_size", 0),
        ("synthetic_size", 0),
        ("num_workers", -1),
        ("seed", -1),
        ("num_classes", 11),
        ("dataset", "nope"),
    ],
)
def test_bad_config_raises(field, value):
    with pytest.raises(ValueError, match=field):
        DataConfig(**{field: value})


def test_bad_loader_args_raise():
    with pytest.raises(ValueError, match="fewer than one batch"):
        build_loader(DataConfig(batch_size=8), world=2, dataset=_Probe(15))
    with pytest.raises(ValueError, match="rank"):
        build_loader(DataConfig(batch_size=2), rank=2, world=2, dataset=_Probe(15))
    loader = build_loader(DataConfig(batch_size=4), dataset=_Probe(20))
    with pytest.raises(ValueError, match="batch_in_epoch"):
        loader.load_state_dict({"epoch": 0, "batch_in_epoch": 5})


def test_collate():
    samples = [
        {"video": torch.zeros(2, 3, 4, 4), "label": i, "latents": torch.ones(1, 4, 2, 2)} for i in range(3)
    ]
    batch = collate(samples)
    assert batch.video.shape == (3, 2, 3, 4, 4) and batch.latents.shape == (3, 1, 4, 2, 2)
    assert batch.label.tolist() == [0, 1, 2] and batch.feats is None
    latents_only = collate([{"video": None, "label": 0, "latents": torch.ones(1, 4, 2, 2)}])
    assert latents_only.video is None
    with pytest.raises(ValueError, match="latents"):
        collate([samples[0], {"video": torch.zeros(2, 3, 4, 4), "label": 0}])
    with pytest.raises(ValueError, match="shapes differ"):
        collate([samples[0], {**samples[1], "video": torch.zeros(3, 3, 4, 4)}])


def test_synthetic_captions_name_what_the_clip_shows():
    """``--data.synthetic-captions``: each batch carries its clips' captions (a class's name; an appearance
    with another row's motion in the held-out splits); other datasets refuse the flag."""
    from minivdit.data.synthetic import APPEARANCE_NAMES, MOTION_NAMES, caption

    cfg = DataConfig(synthetic_captions=True, num_frames=2, image_size=8, batch_size=4, num_workers=0)
    batch = next(build_loader(cfg, rank=0, world=1))
    assert batch.caption == tuple(f"a {CLASS_NAMES[int(c)]}" for c in batch.label)
    held = SyntheticVideos(2, 8, 10, 20, split="out_of_domain", captions=True)
    clip = held.get(0)
    a, m = clip["appearance"], clip["label"]
    assert a != m and clip["caption"] == caption(a, m) == f"a {APPEARANCE_NAMES[a]} {MOTION_NAMES[m]}"
    assert "caption" not in SyntheticVideos(2, 8, 10, 20).get(0)  # off by default: shards stay as they were
    with pytest.raises(ValueError, match="synthetic_captions is for the synthetic dataset"):
        DataConfig(dataset="ucf101", root="/data/ucf", synthetic_captions=True)
