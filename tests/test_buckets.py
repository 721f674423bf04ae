"""Buckets (``minivdit/data/buckets.py``, issue 21 §1): the assignment rule, clip datasets cut at their
bucket's size, batches that never mix buckets, every rank on the same bucket, a seeded order, exact resume
across a bucket change, shards (and cached latents) that carry the bucket, and CogVideoX-5B-I2V's learned PE
at other sizes ("drop", "interpolate"). CPU, tiny clips (jpg frame folders, two mp4s), a second at most each.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import tyro
from oracles import load_file  # tests/ is on sys.path
from test_data_real import write_frames, write_video
from tiny_cogvideox import TINY_TRANSFORMER

from minivdit.config import from_dict, to_dict
from minivdit.data import DataConfig, build_dataset, build_loader, collate
from minivdit.data.buckets import Bucket, BucketConfig, assign_bucket, parse_bucket, usable_frames
from minivdit.data.video import ClipSpec, to_clip
from minivdit.models.cogvideox import CogVideoXConfig, CogVideoXTransformer, interpolate_learned_pe
from minivdit.models.cond import Cond
from minivdit.models.vae import VAEConfig
from minivdit.models.vae.causal3d import CausalVAE3D, CausalVAE3DConfig

TOOLS = Path(__file__).parents[1] / "tools"
SIZES = ("8x16x24", "8x24x16", "4x16x24")  # landscape, portrait, a short landscape
BUCKETS = BucketConfig(sizes=SIZES)


def _folder_cfg(root: Path, **kw) -> DataConfig:
    base = dict(dataset="folder", root=str(root), frame_interval=1, buckets=BUCKETS, batch_size=1)
    return DataConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """Frame folders and one mp4 of several sizes and lengths: (name, frames, w, h)."""
    root = tmp_path_factory.mktemp("buckets") / "clips"
    for name, n, w, h in [
        ("land", 12, 48, 32),
        ("port", 12, 32, 48),
        ("short", 5, 48, 32),
        ("tiny", 2, 48, 32),
    ]:
        write_frames(root / name, n, w=w, h=h)
    write_video(root / "wide.mp4", 12, w=64, h=40)
    write_video(root / "brief.mp4", 3, w=64, h=40)  # shorter than every bucket: skipped when indexed
    return root


class Fake:
    """A dataset of ``n`` clips, clip ``i`` in bucket ``i % 3`` of ``SIZES`` (``label`` = the index)."""

    def __init__(self, n: int, weights=(1, 1, 1)):
        self.buckets = BUCKETS.buckets
        self.bucket_of = np.repeat(np.arange(3), weights)[np.arange(n) % sum(weights)]

    def __len__(self) -> int:
        return len(self.bucket_of)

    def get(self, index: int, rng: np.random.Generator) -> dict:
        b = self.buckets[self.bucket_of[index]]
        return {"video": torch.full((b.frames, 3, b.height, b.width), float(rng.random())), "label": index}


def _run(loader, steps: int) -> list[tuple[tuple, list[int], float]]:
    """(shape, labels, a value of the augmentation draw) of the next ``steps`` batches."""
    out = []
    for _ in range(steps):
        batch = next(loader)
        out.append((tuple(batch.video.shape), batch.label.tolist(), float(batch.video[0, 0, 0, 0, 0])))
    return out


def _cfg(**kw) -> DataConfig:  # a Fake needs no root; "folder" only so that buckets are allowed
    return DataConfig(**{**dict(dataset="folder", root="unused", buckets=BUCKETS, batch_size=2), **kw})


# ---------------------------------------------------------------------------------------------- config


def test_config_parses_checks_and_round_trips():
    assert parse_bucket("49x480x720") == Bucket(49, 480, 720) and str(Bucket(49, 480, 720)) == "49x480x720"
    for bad in ("49x480", "0x480x720", "a-b-c"):
        with pytest.raises(ValueError, match="bucket size"):
            parse_bucket(bad)
    with pytest.raises(ValueError, match=r"more than once"):
        BucketConfig(sizes=("8x16x24", "8x16x24"))
    with pytest.raises(ValueError, match="synthetic clips have none"):
        DataConfig(buckets=BUCKETS)
    with pytest.raises(ValueError, match="drop_last=False with buckets"):
        _cfg(drop_last=False)
    flags = ["--dataset", "folder", "--buckets.sizes", "49x480x720", "25x480x720", "--buckets.crop", "random"]
    cli = tyro.cli(DataConfig, args=flags)
    assert cli.buckets == BucketConfig(sizes=("49x480x720", "25x480x720"), crop="random")
    assert from_dict(DataConfig, json.loads(json.dumps(to_dict(_cfg())))) == _cfg()
    assert not DataConfig().buckets.enabled  # off by default: today's loader


def test_assignment_nearest_aspect_then_area_then_frames():
    B = [Bucket(49, 480, 720), Bucket(49, 720, 480), Bucket(25, 480, 720), Bucket(49, 240, 360)]
    assert assign_bucket(100, 1080, 1920, B) == 0  # 16:9 is nearest 3:2; the largest area that fits
    assert assign_bucket(100, 1920, 1080, B) == 1  # portrait
    assert assign_bucket(100, 300, 450, B) == 3  # smaller than 480x720: no upscaling when a bucket fits
    assert assign_bucket(100, 100, 150, B) == 3  # smaller than every bucket: the smallest area
    assert assign_bucket(30, 1080, 1920, B) == 2  # 30 usable frames: only the 25-frame bucket holds them
    assert assign_bucket(30, 1920, 1080, B) == 2  # no portrait bucket that short: the aspect gives way
    assert assign_bucket(24, 1080, 1920, B) is None  # shorter than every bucket: skipped, not padded
    square = [Bucket(8, 16, 24), Bucket(8, 24, 16)]
    assert assign_bucket(8, 20, 20, square) == 0  # a tie: the first listed


def test_usable_frames_follow_the_sampling_mode():
    spec = ClipSpec(num_frames=4, frame_interval=3, skip_frames=1, sampling="interval")
    assert usable_frames(12, spec) == 4  # 10 frames after the skips: (F - 1)·3 + 1 <= 10
    assert usable_frames(12, ClipSpec(sampling="even", skip_frames=1)) == 10
    fps = ClipSpec(sampling="fps", fps=(8.0,))
    assert usable_frames(49 * 3, fps, native_fps=24.0) == 49  # 49 frames at 8 fps span 147 at 24
    assert usable_frames(49 * 3 - 1, fps, native_fps=24.0) == 48
    assert usable_frames(100, fps, native_fps=None) == 0  # no rate, no clip


def test_clip_dataset_is_cut_at_each_bucket(clips):
    ds = build_dataset(_folder_cfg(clips))
    names = [Path(ds.path(i)).name for i in range(len(ds))]
    assert names == ["land", "port", "short", "wide.mp4"]  # a 40x64 mp4 is nearest 16x24
    assert ds.bucket_of.tolist() == [0, 1, 2, 0]
    assert ds.dropped["too_short"] == [str(clips / "tiny")]  # a 2-frame folder: dropped when listed
    assert list(ds.bucketing.skipped) == [str(clips / "brief.mp4")]  # a 3-frame video: when probed
    assert "too short for every bucket: 3 frames usable" in ds.bucketing.skipped[str(clips / "brief.mp4")]
    for i, b in enumerate(ds.bucket_of):
        sample = ds.get(i, np.random.default_rng(i))
        want = SIZES[b].split("x")
        assert (
            sample["video"].shape == (int(want[0]), 3, int(want[1]), int(want[2])) and sample["bucket"] == b
        )


def test_bad_source_is_replaced_within_its_bucket(clips, tmp_path):
    import shutil

    shutil.copytree(clips, tmp_path / "c")
    ds = build_dataset(_folder_cfg(tmp_path / "c"))
    (tmp_path / "c" / "wide.mp4").write_bytes(b"broken")  # bucket 0 after indexing; "land" shares it
    for seed in range(5):
        sample = ds.get(3, np.random.default_rng(seed))
        assert sample["bucket"] == 0 and sample["video"].shape == (8, 3, 16, 24) and sample["skipped"]


def test_random_crop_is_drawn_from_the_anchor():
    frames = np.arange(6 * 10, dtype=np.uint8).reshape(1, 6, 10, 1).repeat(3, -1)  # [1, 6, 10, 3]
    centre, corner = to_clip(frames, (6, 6)), to_clip(frames, (6, 6), anchor=(0.0, 0.0))
    assert torch.equal(centre, to_clip(frames, (6, 6), anchor=(0.5, 0.5)))  # 4 columns to spare: 2 left
    assert torch.equal(corner[0, 0], torch.from_numpy(frames[0, :, :6, 0]).float().div(127.5).sub(1.0))
    right = to_clip(frames, (6, 6), anchor=(1.0, 1.0))
    assert torch.allclose(right, centre + 2 / 127.5)


# ---------------------------------------------------------------------------------------------- batches


def test_no_batch_mixes_buckets_and_every_rank_takes_the_same_bucket():
    ds = Fake(60, weights=(3, 2, 1))
    ranks = [build_loader(_cfg(), r, 2, dataset=ds) for r in range(2)]
    assert ranks[0].steps_per_epoch == 30 // 4 + 20 // 4 + 10 // 4
    used = set()
    for _ in range(2 * ranks[0].steps_per_epoch):  # two epochs
        a, b = next(ranks[0]), next(ranks[1])
        assert a.video.shape == b.video.shape  # one bucket per step on every rank
        for batch in (a, b):
            assert {int(ds.bucket_of[i]) for i in batch.label} == {SIZES.index(_size(batch))}
        used.add(_size(a))
    assert used == set(SIZES)
    with pytest.raises(ValueError, match="shapes differ"):
        collate([ds.get(0, np.random.default_rng(0)), ds.get(3, np.random.default_rng(0))])


def _size(batch) -> str:
    F, _, H, W = batch.video.shape[1:]
    return f"{F}x{H}x{W}"


def test_epoch_ranks_are_disjoint_and_the_order_is_seeded():
    ds = Fake(48)
    ranks = [build_loader(_cfg(), r, 2, dataset=ds) for r in range(2)]
    steps = ranks[0].steps_per_epoch
    labels = [[label for _, ls, _ in _run(loader, steps) for label in ls] for loader in ranks]
    assert not set(labels[0]) & set(labels[1]) and len(set(labels[0])) == len(labels[0]) == 2 * steps
    same = _run(build_loader(_cfg(), 0, 1, dataset=ds), 10)
    assert same == _run(build_loader(_cfg(), 0, 1, dataset=ds), 10)
    other = _run(build_loader(_cfg(seed=1), 0, 1, dataset=ds), 10)
    assert [s for s, _, _ in same] != [s for s, _, _ in other] and same != other


def test_exact_resume_across_a_bucket_change():
    ds = Fake(36)  # 12 clips per bucket, batch 2: 18 steps per epoch
    reference = _run(build_loader(_cfg(), 0, 1, dataset=ds), 40)
    k = next(k for k in range(3, 40) if reference[k - 1][0] != reference[k][0])  # the bucket changes at k
    loader = build_loader(_cfg(), 0, 1, dataset=ds)
    assert _run(loader, k) == reference[:k]
    state = loader.state_dict()
    assert state["next_bucket"] == _size_of(reference[k][0]) != _size_of(reference[k - 1][0])
    resumed = build_loader(_cfg(), 0, 1, dataset=ds)
    resumed.load_state_dict(json.loads(json.dumps(state)))  # as checkpoints store it
    assert _run(resumed, 40 - k) == reference[k:]  # into the next epoch too
    with pytest.raises(ValueError, match="saved with buckets"):
        build_loader(_cfg(), 0, 1, dataset=Fake(39)).load_state_dict(state)
    with pytest.raises(ValueError, match="saved with buckets"):
        build_loader(_cfg(buckets=BucketConfig()), 0, 1, dataset=_Plain(36)).load_state_dict(state)


def _size_of(shape: tuple) -> str:
    return f"{shape[1]}x{shape[3]}x{shape[4]}"


class _Plain(Fake):
    """The same clips without buckets (one size)."""

    buckets = bucket_of = None

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def get(self, index: int, rng: np.random.Generator) -> dict:
        return {"video": torch.zeros(8, 3, 16, 24), "label": index}


def test_loader_and_config_must_agree_on_buckets():
    with pytest.raises(ValueError, match="has no buckets"):
        build_loader(_cfg(), dataset=_Plain(8))
    with pytest.raises(ValueError, match="pass --data.buckets.sizes 8x16x24 8x24x16 4x16x24"):
        build_loader(_cfg(buckets=BucketConfig()), dataset=Fake(8))
    with pytest.raises(ValueError, match="no bucket holds one global batch"):
        build_loader(_cfg(batch_size=4), 0, 2, dataset=Fake(12))


# ---------------------------------------------------------------------------------------------- shards


def test_shards_carry_the_bucket(clips, tmp_path):
    tool = load_file("tool_make_shards", TOOLS / "make_shards.py")
    flags = ["--data.dataset", "folder", "--data.root", str(clips), "--data.frame-interval", "1"]
    out = tool.main(
        [*flags, "--data.buckets.sizes", *SIZES, "--out", str(tmp_path / "s"), "--samples-per-shard", "3"]
    )
    meta = json.loads((out / "meta.json").read_text())
    assert meta["buckets"]["sizes"] == list(SIZES) and meta["buckets"]["of_source"] == [0, 1, 2, 0]
    assert meta["fields"]["video"]["shape"] is None and meta["buckets"]["shapes"][1]["video"] == [
        8,
        3,
        24,
        16,
    ]
    cfg = DataConfig(dataset="shards", root=str(out), buckets=BucketConfig(sizes=SIZES[::-1]), batch_size=1)
    ds, src = build_dataset(cfg), build_dataset(_folder_cfg(clips))
    assert ds.bucket_of.tolist() == [0, 1, 2, 0] and ds.buckets == BUCKETS.buckets  # the shards' own ids
    for i in range(len(ds)):
        assert ds.get(i)["video"].shape == src.get(i, np.random.default_rng(0))["video"].shape
    shapes = {tuple(next(loader).video.shape) for loader in [build_loader(cfg)] for _ in range(8)}
    assert shapes == {(1, 8, 3, 16, 24), (1, 8, 3, 24, 16), (1, 4, 3, 16, 24)}
    with pytest.raises(ValueError, match="set --data.buckets.sizes 8x16x24 8x24x16 4x16x24"):
        build_dataset(DataConfig(dataset="shards", root=str(out)))
    with pytest.raises(ValueError, match=r"hold clips of buckets .* asks for \['8x16x24'\]"):
        build_dataset(DataConfig(dataset="shards", root=str(out), buckets=BucketConfig(sizes=("8x16x24",))))


def test_cached_latents_of_several_buckets(clips, tmp_path):
    torch.manual_seed(0)
    vae = CausalVAE3D.from_config(
        CausalVAE3DConfig(latent_channels=4, base_channels=8, channel_multipliers=(1, 1, 1, 1))
    )
    vae.save_pretrained(tmp_path / "vae")
    tool = load_file("tool_cache_latents", TOOLS / "cache_latents.py")
    buckets = BucketConfig(sizes=("5x16x24", "5x24x16"))  # causal VAE: 4k + 1 frames
    cfg = tool.CacheConfig(
        data=_folder_cfg(clips, buckets=buckets),
        out=str(tmp_path / "cache"),
        vae=VAEConfig(kind="causal3d", path=str(tmp_path / "vae"), sample_posterior=False),
        batch_size=3,  # a cache batch holding both buckets: encoded apart, order kept
        keep_video=True,
        samples_per_shard=3,
    )
    out = tool.cache_latents(cfg)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["buckets"]["shapes"][1] == {
        "video": [5, 3, 24, 16],
        "latents": [2, 4, 3, 2],
        "latents_logvar": [2, 4, 3, 2],
    }
    ds = build_dataset(DataConfig(dataset="shards", root=str(out), buckets=buckets, batch_size=1))
    assert ds.bucket_of.tolist() == [0, 1, 0, 0]  # land, port, short (5 frames: 5x16x24), wide.mp4
    for i in range(len(ds)):
        s = ds.get(i, np.random.default_rng(0))
        portrait = s["bucket"] == 1
        assert s["video"].shape == ((5, 3, 24, 16) if portrait else (5, 3, 16, 24))
        assert s["latents"].shape == ((2, 4, 3, 2) if portrait else (2, 4, 2, 3))


# ---------------------------------------------------------------------------------------------- CogVideoX PE


def _i2v(learned_pe: str) -> CogVideoXTransformer:
    pe = dict(use_rotary_positional_embeddings=True, use_learned_positional_embeddings=True)
    cfg = CogVideoXConfig(**{**TINY_TRANSFORMER, "in_channels": 8, **pe, "learned_pe": learned_pe})
    torch.manual_seed(0)
    model = CogVideoXTransformer(cfg).eval()
    model.patch_embed.pos_embedding.normal_()  # a learned table, not its sin-cos init
    return model


def _forward(model, F: int, H: int, W: int):
    g = torch.Generator().manual_seed(1)
    x_t, img = torch.randn(1, F, 4, H, W, generator=g), torch.randn(1, F, 4, H, W, generator=g)
    context = torch.randn(1, 8, 24, generator=g)
    with torch.no_grad():
        return model(x_t, torch.tensor([500.0]), Cond(context=context, image_latents=img)).pred


def test_cogvideox_learned_pe_at_other_sizes():
    exact, drop, interp = _i2v("exact"), _i2v("drop"), _i2v("interpolate")
    trained = exact.cfg.trained_size  # (3, 8, 12)
    assert torch.equal(_forward(interp, *trained), _forward(exact, *trained))  # the table itself
    with pytest.raises(ValueError, match=r"learned PE covers \(F, H, W\)=\(3, 8, 12\) only.*learned-pe drop"):
        _forward(exact, 2, 8, 8)
    assert _forward(drop, 2, 8, 8).shape == (1, 2, 4, 8, 8)
    assert _forward(interp, 2, 12, 8).shape == (1, 2, 4, 12, 8)
    zeroed = _i2v("exact")
    zeroed.patch_embed.pos_embedding.zero_()
    assert torch.equal(_forward(drop, *trained), _forward(zeroed, *trained))  # dropped: RoPE only
    assert "patch_embed.pos_embedding" in drop.state_dict()  # diffusers' weights still load strictly
    # the video rows, resampled; the text rows kept
    table = exact.patch_embed.pos_embedding
    L = exact.cfg.max_text_seq_length
    big = interpolate_learned_pe(exact.cfg, table, 3, 16, 24)  # [1, L + 3·8·12, D]
    assert big.shape == (1, L + 3 * 8 * 12, table.shape[-1]) and torch.equal(big[:, :L], table[:, :L])
    flat = table.clone()
    flat[:, L:] = 0.25
    assert torch.allclose(interpolate_learned_pe(exact.cfg, flat, 2, 4, 6)[:, L:], torch.tensor(0.25))
