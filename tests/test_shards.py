"""Shards and caches (``minivdit/data/shards.py``, ``tools/make_shards.py``, ``tools/cache_latents.py``):
round trip, index reuse/rebuild, webdataset and tar compatibility, rank/worker disjointness and exact resume,
streaming without duplicates, atomic and resumable writes, and a cached run's first-step loss equal to the
uncached run's. Tiny synthetic clips, a tiny random causal VAE and tiny random DINOv2 + SAM2 teachers.

Run: ``pytest -q tests/test_shards.py`` (CPU, about 30 s on 2 busy cores).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from oracles import load_file  # noqa: E402  (tests/ is on sys.path)
from torch.utils.data import DataLoader

from minivdit import dist
from minivdit.align.heads import AlignConfig
from minivdit.align.teachers import TeacherConfig, make_tiny_teacher
from minivdit.data import DATASETS, DataConfig, build_dataset, build_loader
from minivdit.data import shards as S
from minivdit.media import write_mp4
from minivdit.models.vae import VAEConfig, build_vae
from minivdit.models.vae.causal3d import CausalVAE3D, CausalVAE3DConfig
from minivdit.train import build_alignment, build_models, build_objective, train_step

pytestmark = [
    pytest.mark.usefixtures("single_thread"),
    pytest.mark.filterwarnings("ignore:torch.distributed is disabled"),
]
TOOLS = Path(__file__).parents[1] / "tools"
CPU = torch.device("cpu")
SOLO = dist.DistContext(rank=0, world=1, local_rank=0, device=CPU)
CLIPS = DataConfig(num_frames=3, image_size=8, num_classes=4, synthetic_size=27, batch_size=2)


def load_tool(name: str):
    """``tools/<name>.py`` as a module (registered in sys.modules: dataclasses resolve annotations there)."""
    return load_file(f"tool_{name}", TOOLS / f"{name}.py")


def digest(t: torch.Tensor) -> str:
    return hashlib.sha1(t.contiguous().numpy().tobytes()).hexdigest()


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    """27 synthetic clips (3 × 8²), 6 per shard: 5 shards, the last holding 3."""
    return S.write_clip_shards(CLIPS, tmp_path_factory.mktemp("clips") / "shards", samples_per_shard=6)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    vae = CausalVAE3D.from_config(
        CausalVAE3DConfig(latent_channels=4, base_channels=8, channel_multipliers=(1, 1, 1, 1))
    )
    vae.save_pretrained(root / "vae")
    return {
        "vae": str(root / "vae"),
        "dinov2": str(make_tiny_teacher("dinov2", root / "dinov2")),
        "sam2": str(make_tiny_teacher("sam2", root / "sam2", seed=1)),
    }


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


# ---------------------------------------------------------------------------------------------- format


def test_round_trip_values_labels_and_layout(clip_dir):
    meta = json.loads((clip_dir / "meta.json").read_text())
    assert meta["complete"] and meta["num_samples"] == 27 and meta["num_classes"] == 4
    assert [s["count"] for s in meta["shards"]] == [6, 6, 6, 6, 3]
    assert meta["fields"]["video"] == {"member": "video.npy", "dtype": "uint8", "shape": [3, 3, 8, 8]}
    ds, src = S.ShardDataset(clip_dir), build_dataset(CLIPS)
    assert len(ds) == 27 and ds.num_classes == 4 and ds.classes[1] == "orange square moving left"
    for i in (0, 5, 6, 26):
        got, want = ds.get(i, np.random.default_rng(0)), src.get(i)
        assert got["key"] == f"{i:09d}" and got["label"] == want["label"] == i % 4
        assert got["video"].dtype == torch.float32 and got["video"].shape == (3, 3, 8, 8)
        assert (got["video"] - want["video"]).abs().max() <= 0.5 / 127.5 + 1e-6  # uint8 quantisation only
        raw = np.load(io.BytesIO(ds.read_members(i)["video.npy"]))
        np.testing.assert_array_equal(raw, S.to_uint8_clip(want["video"]))
    with pytest.raises(ValueError, match="fields \\['latents'\\] requested"):
        S.ShardDataset(clip_dir, fields=["latents"])


def test_mp4_clips_round_trip_approximately(tmp_path):
    cfg = dataclasses.replace(CLIPS, num_frames=5, image_size=15, synthetic_size=3)  # odd size: padded
    S.write_clip_shards(cfg, tmp_path, format="mp4", samples_per_shard=2, crf=10)
    ds, src = S.ShardDataset(tmp_path), build_dataset(cfg)
    assert ds.meta["fields"]["video"]["member"] == "video.mp4"
    for i in range(3):
        got = ds.get(i)["video"]
        assert got.shape == (5, 3, 15, 15) and (got - src.get(i)["video"]).abs().mean() < 0.08


def test_index_is_cached_and_rebuilt_for_a_changed_shard(clip_dir, tmp_path, monkeypatch):
    root = tmp_path / "copy"
    root.mkdir()
    for p in clip_dir.iterdir():
        if p.name != "index.json":
            (root / p.name).write_bytes(p.read_bytes())
    calls = []
    real = S.index_shard
    monkeypatch.setattr(
        S, "index_shard", lambda path, members: calls.append(path.name) or real(path, members)
    )
    S.ShardDataset(root)
    assert len(calls) == 5 and (root / "index.json").is_file()
    calls.clear()
    first = S.ShardDataset(root)
    assert calls == []  # reused
    shard = root / "shard-000002.tar"
    os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 10**9))
    again = S.ShardDataset(root)
    assert calls == ["shard-000002.tar"]
    assert torch.equal(again.get(14)["video"], first.get(14)["video"])
    # a shard replaced by a shorter one is named
    with tarfile.open(shard, "w") as tar, tarfile.open(clip_dir / "shard-000000.tar") as src:
        for info in src:
            if info.name.startswith("000000000."):
                tar.addfile(info, io.BytesIO(src.extractfile(info).read()))
    with pytest.raises(ValueError, match="shard-000002.tar: holds 1 samples, meta.json says 6"):
        S.ShardDataset(root)


def test_bad_members_are_named(clip_dir, tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    (root / "meta.json").write_bytes((clip_dir / "meta.json").read_bytes())
    meta = json.loads((root / "meta.json").read_text())
    meta["shards"] = meta["shards"][:1]
    (root / "meta.json").write_text(json.dumps(meta))
    with S.ShardWriter(root / "shard-000000.tar") as w:
        for i in range(6):
            w.write(
                f"{i:09d}", {"video.npy": S._npy_bytes(np.zeros((3, 3, 8, 4), np.uint8)), "label.cls": b"1"}
            )
    with pytest.raises(ValueError, match=r"shard-000000.tar:000000003.video.npy: uint8 \(3, 3, 8, 4\)"):
        S.ShardDataset(root).get(3)
    with S.ShardWriter(root / "shard-000000.tar") as w:
        w.write("000000000", {"label.cls": b"1"})
    with pytest.raises(ValueError, match="sample '000000000' has no member 000000000.video.npy"):
        S.ShardDataset(root)
    with pytest.raises(ValueError, match="no meta.json"):
        S.ShardDataset(tmp_path / "missing")


def test_real_videos_with_captions_and_a_broken_file(tmp_path, caplog):
    """A "folder" dataset (PyAV-decoded mp4s, CSV labels + captions) → shards; the broken file the dataset
    replaces is logged by name."""
    rng = np.random.default_rng(0)
    rows = ["path,label,caption"]
    for v in range(3):
        write_mp4(tmp_path / f"c{v}.mp4", rng.integers(0, 255, (12, 16, 16, 3), dtype=np.uint8))
        rows.append(f"c{v}.mp4,{v},clip number {v}")
    (tmp_path / "c2.mp4").write_bytes(b"not a video")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    cfg = DataConfig(
        dataset="folder", root=str(tmp_path), labels_csv="labels.csv", num_frames=4, image_size=8
    )
    out = S.write_clip_shards(cfg, tmp_path / "shards", samples_per_shard=2)
    assert "unreadable sources replaced by other clips" in caplog.text and "c2.mp4" in caplog.text
    ds = S.ShardDataset(out)
    assert ds.meta["fields"]["caption"] == {"member": "caption.txt"} and ds.num_classes == 3
    assert [(ds.get(i)["label"], ds.get(i)["caption"]) for i in (0, 1)] == [
        (0, "clip number 0"),
        (1, "clip number 1"),
    ]
    assert {s["caption"] for s in S.iter_shards(out, rank=0, world=1)} <= {"clip number 0", "clip number 1"}


def test_plain_webdataset_and_tar_read_the_shards(clip_dir):
    with tarfile.open(clip_dir / "shard-000004.tar") as tar:
        names = tar.getnames()
    assert names == [f"0000000{k}.{m}" for k in (24, 25, 26) for m in ("video.npy", "label.cls")]
    urls = [str(p) for p in sorted(clip_dir.glob("shard-*.tar"))]
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode())
    assert [s["__key__"] for s in samples] == [f"{i:09d}" for i in range(27)]
    ds = S.ShardDataset(clip_dir)
    for s in samples[::7]:
        i = int(s["__key__"])
        assert s["label.cls"] == i % 4
        np.testing.assert_array_equal(
            s["video.npy"], ((ds.get(i)["video"] + 1) * 127.5).round().byte().numpy()
        )


# ---------------------------------------------------------------------------------------------- loading


def test_loader_ranks_are_disjoint_and_resume_is_exact(clip_dir):
    cfg = dataclasses.replace(CLIPS, dataset="shards", root=str(clip_dir))
    assert isinstance(build_dataset(cfg), S.ShardDataset)
    seen = []
    for rank in (0, 1):
        loader = build_loader(cfg, rank, 2)
        assert loader.steps_per_epoch == 6  # 27 // 2 = 13 per rank → 6 batches of 2
        seen.append({digest(v) for _ in range(6) for v in next(loader).video})
    assert len(seen[0]) == len(seen[1]) == 12 and not seen[0] & seen[1]

    ref = build_loader(dataclasses.replace(cfg, num_workers=2), 1, 2)
    for _ in range(8):  # into epoch 1
        next(ref)
    state = ref.state_dict()
    expected = [next(ref) for _ in range(3)]
    resumed = build_loader(cfg, 1, 2)  # other worker count: same batches
    resumed.load_state_dict(state)
    for want in expected:
        got = next(resumed)
        assert torch.equal(got.video, want.video) and torch.equal(got.label, want.label)


def test_bad_config_for_shards(clip_dir):
    with pytest.raises(ValueError, match="--data.num-frames 5 --data.image-size 8: set them to 3 and 8"):
        build_dataset(dataclasses.replace(CLIPS, dataset="shards", root=str(clip_dir), num_frames=5))
    with pytest.raises(ValueError, match="needs --data.root"):
        build_dataset(dataclasses.replace(CLIPS, dataset="shards"))


@pytest.mark.parametrize("world", [2, 4])
def test_iter_shards_no_duplicates_over_ranks_and_workers(clip_dir, world):
    """2 workers per rank; with world 4 some workers get no shard (empty_check=False)."""
    keys = []
    for rank in range(world):
        stream = S.iter_shards(clip_dir, rank=rank, world=world, buffer=4, seed=1)
        keys += [s["key"] for s in DataLoader(stream, batch_size=None, num_workers=2)]
    assert sorted(keys) == [f"{i:09d}" for i in range(27)]


# ---------------------------------------------------------------------------------------------- writing


def test_interrupted_write_leaves_no_partial_shard_and_resumes(tmp_path, monkeypatch):
    with pytest.raises(RuntimeError), S.ShardWriter(tmp_path / "shard-000000.tar") as w:
        w.write("a", {"label.cls": b"0"})
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []

    class Flaky:
        def __init__(self, inner):
            self.inner = inner

        def __len__(self):
            return len(self.inner)

        def get(self, index, rng=None):
            if index == 9:
                raise RuntimeError("disk gone")
            return self.inner.get(index, rng)

    cfg = dataclasses.replace(CLIPS, synthetic_size=12)
    real = DATASETS["synthetic"]
    monkeypatch.setitem(DATASETS, "synthetic", lambda c: Flaky(real(c)))
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="disk gone"):
        S.write_clip_shards(cfg, out, samples_per_shard=4)
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "shard-000000.tar", "shard-000001.tar"]
    with pytest.raises(ValueError, match="incomplete \\(2 of 3 written"):
        S.ShardDataset(out)
    (out / "shard-000002.tar.tmp").write_bytes(b"half a shard of a killed run")
    before = (out / "shard-000000.tar").stat().st_mtime_ns
    monkeypatch.setitem(DATASETS, "synthetic", real)
    S.write_clip_shards(cfg, out, samples_per_shard=4)
    assert (out / "shard-000000.tar").stat().st_mtime_ns == before  # skipped
    assert not (out / "shard-000002.tar.tmp").exists() and len(S.ShardDataset(out)) == 12
    with pytest.raises(ValueError, match="other settings .*'samples_per_shard'"):
        S.write_clip_shards(cfg, out, samples_per_shard=5)
    S.write_clip_shards(cfg, out, samples_per_shard=5, overwrite=True)
    assert [s["count"] for s in S.read_meta(out)["shards"]] == [5, 5, 2]


# ---------------------------------------------------------------------------------------------- caches


def test_cached_run_matches_uncached_first_step_loss(models, tmp_path, make_tiny_cfg):
    teacher_cfg = TeacherConfig(dinov2=models["dinov2"], sam2=models["sam2"])
    vae_cfg = VAEConfig(kind="causal3d", path=models["vae"], sample_posterior=False)
    data = DataConfig(num_frames=5, image_size=16, num_classes=4, synthetic_size=8, batch_size=2)
    tool = load_tool("cache_latents")
    out = tool.cache_latents(
        tool.CacheConfig(
            data=data,
            out=str(tmp_path / "cache"),
            vae=vae_cfg,
            teacher=teacher_cfg,
            patch_size=1,
            latents_dtype="float32",
            feats_dtype="float32",
            batch_size=3,  # not the training batch: batching must not matter
            samples_per_shard=5,
            device="cpu",
            posterior="mean",  # the uncached run encodes the mean (sample_posterior=False)
        )
    )
    meta = S.read_meta(out)
    assert meta["fields"]["latents"]["shape"] == [2, 4, 2, 2] and "video" not in meta["fields"]
    assert meta["teacher"]["names"] == ["dinov2", "sam2"] and meta["teacher"]["grid"] == [2, 2]
    assert meta["teacher"]["features"] == "raw"  # raw tokens, normalised by the head after averaging
    assert meta["vae"]["kind"] == "causal3d" and meta["vae"]["sample_posterior"] is False
    cfg = make_tiny_cfg(
        tmp_path,
        vae=vae_cfg,
        data=dataclasses.asdict(data),
        model={"in_channels": 4, "input_size": (2, 2), "patch_size": 1, "num_frames": 2, "depth": 4},
        align=AlignConfig(
            loss="align4gen", weight=0.5, block_index=2, projector_dim=32, frame_match="pick_last"
        ),
        teacher=teacher_cfg,
    )
    assert (
        S.cache_mismatches(
            meta,
            vae=dataclasses.asdict(cfg.vae),
            teacher=dataclasses.asdict(cfg.teacher),
            grid=cfg.model.grid,
        )
        == []
    )
    assert S.cache_mismatches(meta, vae={"kind": "sd", "path": "x"}) != []
    vae = build_vae(cfg.vae)
    model, _ = build_models(cfg, SOLO)
    teacher, head = build_alignment(cfg, SOLO, vae)
    step = dict(
        model=model, objective=build_objective(cfg.objective), num_classes=4, precision="fp32", device=CPU
    )
    step |= dict(align=cfg.align, head=head)
    cached_cfg = dataclasses.replace(data, dataset="shards", root=str(out))
    pixels, cached = next(build_loader(data)), next(build_loader(cached_cfg))  # same sampler: same clips
    assert (
        cached.video is None
        and cached.latents.shape == (2, 2, 4, 2, 2)
        and cached.feats.shape == (2, 5, 4, 96)  # 32 (dinov2) + 64 (sam2)
    )
    assert torch.equal(cached.label, pixels.label)
    torch.manual_seed(0)
    loss_pixels, m_pixels = train_step(pixels, vae=vae, teacher=teacher, **step)
    torch.manual_seed(0)
    loss_cached, m_cached = train_step(cached, vae=None, teacher=None, **step)
    # cached in batches of 3, encoded here in batches of 2 (other conv kernels): latents and features carry
    # ≈ √(Σk)·u ≲ 5e-6 relative (≈ 20 convs / products of k ≲ 432), which the mean losses average down
    torch.testing.assert_close(loss_cached, loss_pixels, rtol=1e-5, atol=1e-6)
    for k in ("loss/diff", "loss/align"):
        torch.testing.assert_close(m_cached[k], m_pixels[k], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------- posterior


@pytest.fixture(scope="module")
def moments_dir(models, tmp_path_factory) -> Path:
    """6 clips (5 × 16²) cached as the tiny causal VAE's posterior moments (the default), 4 per shard."""
    tool = load_tool("cache_latents")
    data = DataConfig(num_frames=5, image_size=16, num_classes=4, synthetic_size=6, batch_size=2)
    vae = VAEConfig(kind="causal3d", path=models["vae"], sample_posterior=False)
    out = tmp_path_factory.mktemp("moments") / "cache"
    cfg = tool.CacheConfig(data=data, out=str(out), vae=vae, samples_per_shard=4, batch_size=3, device="cpu")
    return tool.cache_latents(cfg)


def test_cached_moments_are_the_vaes_posterior(models, moments_dir):
    """The stored moments are those of the scaled latents ``encode`` returns: its mean (sample=False) and,
    for the same ε, its posterior draw; the stamp says so and the log-variance has the latents' spec."""
    tool = load_tool("cache_latents")
    meta = S.read_meta(moments_dir)
    assert meta["latent_posterior"] == "moments" and meta["vae"]["sample_posterior"] is False
    assert meta["fields"]["latents_logvar"] == meta["fields"]["latents"] | {"member": "latents_logvar.npy"}
    vae = build_vae(VAEConfig(kind="causal3d", path=models["vae"]))
    video = torch.rand(2, 5, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        mean, logvar = tool.scaled_moments(vae, video)
        torch.testing.assert_close(mean, vae.encode(video, sample=False), rtol=0, atol=0)  # the same ops
        drawn = vae.encode(video, generator=torch.Generator().manual_seed(1))
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(1))
    # (μ + e^(lv/2)·ε − shift)·s against (μ − shift)·s + e^((lv + 2 log s)/2)·ε: a few fp32 roundings apart
    torch.testing.assert_close(mean + torch.exp(0.5 * logvar) * eps, drawn, rtol=1e-5, atol=1e-6)


def test_wan_vae_moments_are_its_normalised_posterior(tmp_path):
    """``--posterior moments`` with the Wan VAE (per-channel ``latents_mean`` / ``latents_std``, no scalar
    scale): the cache runs, its mean is ``encode``'s (sample=False) and mean + e^(lv/2)·ε is ``encode``'s
    posterior draw for the same ε (drawn, as Wan's encode does, in the [B, C, F', h, w] layout)."""
    from minivdit.models.vae.wan import WanVAE, WanVAEConfig

    tool = load_tool("cache_latents")
    torch.manual_seed(0)
    vcfg = WanVAEConfig(
        base_dim=8, z_dim=4, dim_mult=(1, 2, 2, 2), num_res_blocks=1,
        latents_mean=(0.3, -0.7, 1.1, 0.05), latents_std=(1.7, 0.6, 2.4, 1.2),
    )  # fmt: skip
    WanVAE(vcfg).save_pretrained(tmp_path / "wan_vae")
    data = DataConfig(num_frames=5, image_size=16, num_classes=4, synthetic_size=2, batch_size=2)
    vae_cfg = VAEConfig(kind="wan", path=str(tmp_path / "wan_vae"), sample_posterior=False)
    cfg = tool.CacheConfig(data=data, out=str(tmp_path / "cache"), vae=vae_cfg, batch_size=2, device="cpu")
    out = tool.cache_latents(cfg)
    assert S.read_meta(out)["latent_posterior"] == "moments"
    assert S.ShardDataset(out, fields=["latents_logvar"]).get(0)["latents_logvar"].shape == (2, 4, 2, 2)

    vae = build_vae(VAEConfig(kind="wan", path=str(tmp_path / "wan_vae")))
    video = torch.rand(2, 5, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        mean, logvar = tool.scaled_moments(vae, video)
        torch.testing.assert_close(mean, vae.encode(video, sample=False), rtol=0, atol=0)  # the same ops
        drawn = vae.encode(video, generator=torch.Generator().manual_seed(1), sample=True)
    eps = torch.randn(2, 4, 2, 2, 2, generator=torch.Generator().manual_seed(1)).transpose(1, 2)
    # ((μ + e^(lv/2)·ε) − m)/s against (μ − m)/s + e^((lv − 2 log s)/2)·ε: a few fp32 roundings apart
    # (≈ 4u ≈ 2.4e-7 of O(1) values; the per-channel shifts are O(1) so a wrong channel shows at ≫ 1e-2)
    torch.testing.assert_close(mean + torch.exp(0.5 * logvar) * eps, drawn, rtol=1e-5, atol=1e-6)


def test_cached_moments_are_sampled_per_visit_seeded_and_resume_exact(moments_dir):
    ds = S.ShardDataset(moments_dir)
    assert ds.latent_posterior == "moments" and "latents_logvar" in ds.fields
    logvar = S.ShardDataset(moments_dir, fields=["latents_logvar"]).get(1)["latents_logvar"]
    mean = ds.get(1)["latents"]  # no rng: the posterior mean
    assert "latents_logvar" not in ds.get(1) and logvar.shape == mean.shape
    a, b, c = (ds.get(1, np.random.default_rng(s))["latents"] for s in (5, 5, 6))
    eps = torch.from_numpy(np.random.default_rng(5).standard_normal(tuple(mean.shape), dtype=np.float32))
    assert torch.equal(a, mean + torch.exp(0.5 * logvar) * eps)  # the same three fp32 ops: bit for bit
    assert torch.equal(a, b) and not torch.equal(a, c)

    # streamed with webdataset: a draw of (seed, key), whichever worker reads the sample
    def stream(seed):
        return {s["key"]: s for s in S.iter_shards(moments_dir, rank=0, world=1, buffer=0, seed=seed)}

    s3, again, s4 = (stream(seed)[ds.key(1)] for seed in (3, 3, 4))
    assert "latents_logvar" not in s3 and not torch.equal(s3["latents"], mean)
    assert torch.equal(s3["latents"], again["latents"]) and not torch.equal(s3["latents"], s4["latents"])
    # through the loader: a fresh sample at every visit (epoch 1 sees other latents than epoch 0), and a
    # resumed loader draws what the uninterrupted one draws
    cfg = DataConfig(dataset="shards", root=str(moments_dir), num_frames=5, image_size=16, batch_size=2)
    loader = build_loader(cfg)  # 6 clips: 3 batches per epoch
    epochs = [[next(loader).latents for _ in range(3)] for _ in range(2)]
    assert not {digest(r) for x in epochs[0] for r in x} & {digest(r) for x in epochs[1] for r in x}
    loader = build_loader(cfg)
    for _ in range(2):
        next(loader)
    resumed = build_loader(dataclasses.replace(cfg, num_workers=2))
    resumed.load_state_dict(loader.state_dict())
    for want in epochs[0][2:] + epochs[1]:
        assert torch.equal(next(resumed).latents, want)


def test_old_mean_only_cache_is_read_as_documented(moments_dir, tmp_path, caplog):
    """A cache without the ``latent_posterior`` stamp (before moments were cached) serves its latents as they
    are (the mean here), with one warning naming the rebuild command; an unknown stamp or moments without
    their log-variance are refused, naming it too."""
    old = tmp_path / "old"
    shutil.copytree(moments_dir, old)
    meta = S.read_meta(old)
    del meta["latent_posterior"], meta["fields"]["latents_logvar"]
    (old / S.META).write_text(json.dumps(meta))
    with caplog.at_level("WARNING", logger="minivdit"):
        ds = S.ShardDataset(old)
    assert ds.latent_posterior == "mean" and "tools/cache_latents.py" in caplog.text
    assert "re-sample the posterior at every step" in caplog.text
    mean = S.ShardDataset(moments_dir).get(2)["latents"]
    assert torch.equal(ds.get(2, np.random.default_rng(0))["latents"], mean)  # no draw: the stored latents
    for stamp, fields, match in (
        ("posterior-v3", meta["fields"], "latent_posterior='posterior-v3', not one of"),
        ("moments", meta["fields"], "no latents_logvar"),
    ):
        (old / S.META).write_text(json.dumps(meta | {"latent_posterior": stamp, "fields": fields}))
        with pytest.raises(ValueError, match=match) as e:
            S.ShardDataset(old)
        assert "tools/cache_latents.py" in str(e.value)
    tool = load_tool("cache_latents")
    with pytest.raises(ValueError, match="--posterior sample"):
        tool.CacheConfig(out=str(tmp_path / "x"), vae=VAEConfig(kind="sd", path="v", sample_posterior=True))


# ---------------------------------------------------------------------------------------------- CLIs


def test_make_shards_cli_workers_and_rerun(tmp_path, capsys):
    tool = load_tool("make_shards")
    args = ["--data.num-frames", "2", "--data.image-size", "8", "--data.synthetic-size", "10"]
    args += ["--out", str(tmp_path), "--samples-per-shard", "3", "--workers", "2", "--repeats", "2"]
    tool.main(args)
    ds = S.ShardDataset(tmp_path)
    assert len(ds) == 20 and ds.key(10) == "000000000_r1" and len(S.read_meta(tmp_path)["shards"]) == 7
    stamp = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("shard-*.tar")}
    tool.main(args)  # resumable: nothing left to write
    assert stamp == {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("shard-*.tar")}
    printed = capsys.readouterr()
    assert "shards written to" in printed.out
    logged = printed.err.splitlines()  # the trainer's log format (minivdit.log.setup_logging) on stderr
    assert logged and all(re.match(r"\[\d\d:\d\d:\d\d\] \S", line) for line in logged), logged


def test_cache_latents_cli_bf16_feats_and_kept_video(models, tmp_path):
    tool = load_tool("cache_latents")
    out = tmp_path / "c"
    tool.main(
        ["--data.num-frames", "5", "--data.image-size", "16", "--data.synthetic-size", "3", "--out", str(out)]
        + ["--vae.kind", "causal3d", "--vae.path", models["vae"], "--teacher.dinov2", models["dinov2"]]
        + ["--keep-video", "--device", "cpu", "--patch-size", "1", "--batch-size", "2"]
    )
    meta = S.read_meta(out)
    assert meta["fields"]["feats"]["dtype"] == "bfloat16" and meta["fields"]["latents"]["dtype"] == "float32"
    sample = S.ShardDataset(out).get(2)
    assert sample["feats"].dtype == torch.bfloat16 and sample["feats"].shape == (5, 4, 32)
    assert sample["latents"].dtype == torch.float32 and sample["video"].shape == (5, 3, 16, 16)
    raw = next(iter(wds.WebDataset(str(out / "shard-000000.tar"), shardshuffle=False).decode()))
    assert raw["feats.npy"].dtype == np.uint16  # bf16 bits; meta.json says bfloat16
    first = S.ShardDataset(out).get(0)["feats"]
    assert torch.equal(torch.from_numpy(raw["feats.npy"]).view(torch.bfloat16), first)
    only = DataConfig(dataset="shards", root=str(out), shard_fields=("latents",), num_frames=5, image_size=16)
    batch = next(build_loader(dataclasses.replace(only, batch_size=2)))
    assert batch.video is None and batch.feats is None and batch.latents.shape == (2, 2, 4, 2, 2)
    with pytest.raises(ValueError, match="nothing to cache"):
        tool.CacheConfig(out=str(out))
