"""Which VAE and teachers made a cache (issue 17 §1): content identities, not folder names.

Every ``recipes/vae_causal3d.py`` run exports its VAE to a folder named ``vae``, and one VAE can be given as
the run directory or its ``vae/``: caches are stamped with ``vae_identity`` / ``teacher_identity`` (hashes of
config and weights, ``minivdit.identity``) and ``cache_mismatches`` compares those. Two tiny random causal 3-D
VAEs (same config, other seeds) stand in for two runs; the end-to-end test goes through
``tools/cache_latents.py`` and ``recipes/quickstart_latent.py`` in subprocesses, as a user would.

Run: ``python -m pytest tests/test_cache_identity.py -q`` (CPU, 25 s on 2 shared cores, 45 s when they are
busy; most of it the two subprocesses' imports).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import minivdit.train as train_mod
from minivdit.align.teachers import TeacherConfig, make_tiny_teacher, teacher_identity
from minivdit.data import shards as S
from minivdit.identity import folder_identity
from minivdit.models.vae import VAEConfig, vae_identity
from minivdit.models.vae.causal3d import CausalVAE3D, CausalVAE3DConfig

pytestmark = [
    pytest.mark.usefixtures("single_thread"),
    pytest.mark.filterwarnings("ignore:torch.distributed is disabled"),
]
ROOT = Path(__file__).resolve().parents[1]
VAE = CausalVAE3DConfig(  # 9 frames of 32² -> latents [3, 4, 4, 4], as tests/test_latent_quickstart.py
    patch_size=2,
    base_channels=8,
    channel_multipliers=(1, 1, 2),
    space_down_levels=(0, 1),
    time_down_levels=(0, 1),
    latent_channels=4,
    mid_attention=False,
    shortcuts=True,
    scaling_factor=0.5,
    shift_factor=0.1,
)
LATENTS = {"member": "latents.npy", "dtype": "float32", "shape": [3, 4, 4, 4]}
FEATS = {"member": "feats.npy", "dtype": "bfloat16", "shape": [3, 4, 32]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Two VAE recipe runs, ``a`` and ``b``: each a run directory with its own config.json and the VAE in
    ``vae/`` (same architecture, other weights)."""
    root = tmp_path_factory.mktemp("runs")
    for seed, name in enumerate("ab"):
        torch.manual_seed(seed)
        CausalVAE3D.from_config(VAE).save_pretrained(root / name / "vae")
        (root / name / "config.json").write_text("{}")  # train_vae's run config, next to vae/
    return {"a": root / "a", "b": root / "b"}


def _vae(path: Path) -> dict:
    return dataclasses.asdict(VAEConfig(kind="causal3d", path=str(path)))


def _latent_meta(vae_path: Path | None, *, identity: bool = True) -> dict:
    """meta.json of latents cached with the causal3d VAE at ``vae_path`` (``identity=False``: as written
    before caches were stamped)."""
    cfg = VAEConfig(kind="causal3d", path=str(vae_path))
    vae = dataclasses.asdict(cfg) | ({"identity": vae_identity(cfg)} if identity else {})
    return {"fields": {"label": {"member": "label.cls"}, "latents": LATENTS}, "vae": vae}


def test_vae_identity_is_the_content_not_the_folder(runs, tmp_path):
    a_run, a_vae = vae_identity(VAEConfig(kind="causal3d", path=str(runs["a"]))), runs["a"] / "vae"
    assert a_run == vae_identity(VAEConfig(kind="causal3d", path=str(a_vae)))  # both spellings: one VAE
    assert a_run["folder"] == str(a_vae.resolve()) and a_run["kind"] == "causal3d"
    moved = shutil.copytree(a_vae, tmp_path / "elsewhere" / "renamed")  # folders move between machines
    assert {
        k: v for k, v in vae_identity(VAEConfig(kind="causal3d", path=str(moved))).items() if k != "folder"
    } == {k: v for k, v in a_run.items() if k != "folder"}
    b = vae_identity(VAEConfig(kind="causal3d", path=str(runs["b"])))
    assert b["config_sha256"] == a_run["config_sha256"] and b["weights_sha256"] != a_run["weights_sha256"]
    with pytest.raises(ValueError, match=r"--vae.path .*nowhere"):
        vae_identity(VAEConfig(kind="causal3d", path=str(tmp_path / "nowhere")))


def test_latents_of_another_vae_named_vae_are_refused(runs):
    a, b = runs["a"] / "vae", runs["b"] / "vae"
    assert a.name == b.name == "vae"  # what the old last-component check compared: equal
    [problem] = S.cache_mismatches(_latent_meta(a), vae=_vae(b))
    assert "cached by another VAE (differing: weights)" in problem
    assert str(a.resolve()) in problem and str(b.resolve()) in problem  # both folders named
    assert "re-run tools/cache_latents.py with --vae.path" in problem and "point --vae.path at" in problem


def test_the_same_vae_by_either_spelling_is_accepted(runs):
    a = runs["a"]
    for cached, run in [(a, a / "vae"), (a / "vae", a), (a, a), (a / "vae", a / "vae")]:
        assert S.cache_mismatches(_latent_meta(cached), vae=_vae(run)) == [], (cached, run)


def test_other_kind_and_missing_folder_are_refused(runs, tmp_path):
    meta = _latent_meta(runs["a"])
    [problem] = S.cache_mismatches(meta, vae={"kind": "sd", "path": "x"})
    assert "vae.kind='causal3d'" in problem and "the run has 'sd'" in problem
    [problem] = S.cache_mismatches(meta, vae=_vae(tmp_path / "gone"))
    assert "cannot identify the run's VAE" in problem and "gone" in problem


def test_old_cache_without_identity_is_accepted_with_a_warning(runs, caplog):
    meta = _latent_meta(runs["a"], identity=False)
    with caplog.at_level(logging.WARNING, logger="minivdit"):
        assert S.cache_mismatches(meta, vae=_vae(runs["b"])) == []  # cannot be checked: not refused
    assert "record no VAE identity" in caplog.text and "only the kind 'causal3d' is checked" in caplog.text
    assert S.cache_mismatches(meta, vae={"kind": "sd", "path": "x"}) != []  # the kind still is


def _feats_meta(teacher: TeacherConfig, *, identity: bool = True) -> dict:
    t = (
        dataclasses.asdict(teacher)
        | {"grid": [2, 2], "features": "raw"}  # tools/cache_latents.py's stamp (teachers.FEATURES)
        | ({"identity": teacher_identity(teacher)} if identity else {})
    )
    return {"fields": {"label": {"member": "label.cls"}, "feats": FEATS}, "teacher": t}


def test_feats_cached_normalised_are_refused():
    """Caches written before teachers gave raw tokens hold per-token L2-normalised ones (no stamp): the head
    now normalises after its frame averaging, so they would train another target. Refused, naming the fix."""
    meta = _feats_meta(TeacherConfig())
    assert S.cache_mismatches(meta, teacher=dataclasses.asdict(TeacherConfig())) == []
    del meta["teacher"]["features"]
    [problem] = S.cache_mismatches(meta, teacher=dataclasses.asdict(TeacherConfig()))
    assert "feats were cached as L2-normalised tokens (no stamp)" in problem
    assert "re-run tools/cache_latents.py" in problem


def test_feats_of_another_teacher_with_the_same_folder_name_are_refused(tmp_path, caplog):
    one = make_tiny_teacher("dinov2", tmp_path / "one" / "dinov2", seed=0)
    two = make_tiny_teacher("dinov2", tmp_path / "two" / "dinov2", seed=1)
    moved = shutil.copytree(one, tmp_path / "moved" / "dinov2-base")
    meta = _feats_meta(TeacherConfig(dinov2=str(one)))
    run = dataclasses.asdict(TeacherConfig(dinov2=str(two)))
    [problem] = S.cache_mismatches(meta, teacher=run, grid=(2, 2))
    assert "cached by another dinov2 (differing: weights)" in problem
    assert str(one.resolve()) in problem and str(two.resolve()) in problem
    moved_run = dataclasses.asdict(TeacherConfig(dinov2=str(moved)))  # the same weights, renamed
    assert S.cache_mismatches(meta, teacher=moved_run, grid=(2, 2)) == []
    cached = meta["teacher"]["identity"]["dinov2"]
    assert folder_identity(moved, "--teacher.dinov2")["weights_sha256"] == cached["weights_sha256"]
    extra = dataclasses.asdict(TeacherConfig(dinov2=str(one), sam2=str(one)))
    assert S.cache_mismatches(meta, teacher=extra) == [
        "feats were cached with teacher.sam2=None, the run has '" + str(one) + "'"
    ]
    old = _feats_meta(TeacherConfig(dinov2=str(one)), identity=False)
    with caplog.at_level(logging.WARNING, logger="minivdit"):
        assert S.cache_mismatches(old, teacher=run) == []
    assert "record no identity of teacher dinov2" in caplog.text


def _recipe_config():
    spec = importlib.util.spec_from_file_location(
        "recipe_quickstart_latent", ROOT / "recipes" / "quickstart_latent.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.config()


TINY_RUN = [
    "--model.in-channels",
    "4",
    "--model.depth",
    "2",
    "--model.hidden-size",
    "32",
    "--model.num-heads",
    "2",
]
TINY_RUN += ["--data.batch-size", "2", "--sample.num", "2", "--sample.steps", "1", "--log.no-tensorboard"]
TINY_RUN += ["--max-steps", "1"]


def test_cache_then_train_refuses_another_vae(runs, tmp_path):
    """``tools/cache_latents.py`` with the run directory ``a``, then the latent quickstart on the shards: with
    ``b/vae`` (same folder name, other weights) it stops at start naming both folders; with ``a/vae`` (the
    other spelling of the caching VAE) it trains."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cache = tmp_path / "cache"
    data = ["--data.num-frames", "9", "--data.image-size", "32", "--data.num-classes", "8"]
    subprocess.run(
        [sys.executable, str(ROOT / "tools" / "cache_latents.py"), *data, "--data.synthetic-size", "4"]
        + ["--out", str(cache), "--vae.kind", "causal3d", "--vae.path", str(runs["a"]), "--device", "cpu"],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    meta = S.read_meta(cache)
    assert meta["vae"]["identity"]["folder"] == str((runs["a"] / "vae").resolve())
    shards = ["--data.dataset", "shards", "--data.root", str(cache), "--out-dir", str(tmp_path / "out")]
    refused = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / "quickstart_latent.py"), *shards, *TINY_RUN]
        + ["--vae.path", str(runs["b"] / "vae")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert refused.returncode != 0
    assert "latents were cached by another VAE (differing: weights)" in refused.stderr, refused.stderr[-3000:]
    assert str((runs["a"] / "vae").resolve()) in refused.stderr
    assert str((runs["b"] / "vae").resolve()) in refused.stderr
    assert not (tmp_path / "out" / "quickstart_latent" / "metrics.jsonl").exists()  # refused before training
    train_mod.main(_recipe_config(), [*shards, *TINY_RUN, "--vae.path", str(runs["a"] / "vae")])
    assert (tmp_path / "out" / "quickstart_latent" / "metrics.jsonl").read_text().strip()
    # issue 21 §2: the cache covers the VAE's encoding; it is kept off the device but for decoding samples
    assert (
        "VAE kept on the CPU: the shards in"
        in (tmp_path / "out" / "quickstart_latent" / "log.txt").read_text()
    )
    assert list((tmp_path / "out" / "quickstart_latent" / "samples").glob("step_*/contact.png"))


def test_latents_of_other_clips_are_refused_naming_the_field():
    """The clips a cache was made from (meta.json ``source``) must be the run's: frame count and size."""
    from minivdit.data import DataConfig

    meta = {"fields": {"latents": {}}, "source": {"num_frames": 17, "image_size": [32, 48]}}
    run = DataConfig(dataset="shards", root="x", num_frames=17, image_size=(32, 48))
    assert S.clip_mismatches(meta, run) == []
    problems = S.clip_mismatches(meta, dataclasses.replace(run, num_frames=9, image_size=32))
    assert (
        "17-frame clips (meta.json source.num_frames), the run expects 9 (--data.num-frames)" in problems[0]
    )
    assert "[32, 48] frames (meta.json source.image_size), the run expects [32, 32]" in problems[1]
    assert "tools/cache_latents.py" in problems[2]
    assert S.clip_mismatches({"fields": {"text": {}}, "source": meta["source"]}, run) == []  # text only


def test_the_vae_is_parked_only_when_nothing_in_the_step_encodes(tiny_cfg):
    cached = type("Shards", (), {"meta": {"fields": {"latents": {}}}})()
    cfg = tiny_cfg()
    assert train_mod.vae_only_decodes(cfg, cached)
    assert not train_mod.vae_only_decodes(cfg, type("Clips", (), {})())  # no cache: the step encodes
    i2v = tiny_cfg(i2v={"mode": "first"}, model={"cond_channels": 3})
    assert not train_mod.vae_only_decodes(i2v, cached)  # the first frame is encoded in the step


def test_frame_sampler_precision_and_text_dtype_stamps_are_compared():
    """Issue 21 §2: a cache says how its clips were sampled, under which precision its latents were encoded
    and in which dtype its text encoder ran; a run that would compute otherwise is refused, naming the field
    and what rebuilds the cache or matches it."""
    from minivdit.data import DataConfig

    fps = {
        "dataset": "folder",
        "frame_sampling": "fps",
        "fps": [8.0],
        "skip_frames": 3,
        "random_start": False,
    }
    meta = {"source": fps, "fields": {"latents": {}}, "precision": "bf16"}
    run = DataConfig(frame_sampling="fps", fps=(8.0,), skip_frames=3, random_start=False)
    assert S.sampler_mismatches(meta, run) == [] and S.precision_mismatches(meta, "bf16") == []
    [why] = S.sampler_mismatches(meta, DataConfig())  # the default: 3 frames apart
    assert "sampled with frame_sampling='fps', skip_frames=3" in why and "frame_sampling='interval'" in why
    assert "--data.frame-sampling fps --data.fps 8 --data.skip-frames 3 --data.no-random-start" in why
    [why] = S.sampler_mismatches(meta, dataclasses.replace(run, fps=(16.0,)))
    assert "fps=[8.0]" in why and "fps=(16.0,)" in why and "skip_frames" not in why.split(":")[0]
    interval = {"dataset": "ucf101", "frame_sampling": "interval", "frame_interval": 3, "fps": [8.0]}
    assert S.sampler_mismatches({"source": interval}, DataConfig(fps=(2.0,))) == []  # fps unused there
    assert S.sampler_mismatches({"source": {"dataset": "synthetic", "frame_sampling": "fps"}}, run) == []

    [why] = S.precision_mismatches(meta, "fp32")
    assert "--precision bf16 (meta.json precision)" in why and "--precision fp32 --overwrite" in why
    assert S.precision_mismatches({"fields": {"video": {}}, "precision": "bf16"}, "fp32") == []  # clips only

    identity = {k: "x" for k in S.TEXT_IDENTITY_KEYS} | {"dtype": "bfloat16"}
    text = {"fields": {"text": {}}, "text_encoder": identity}
    assert S.text_cache_mismatch(text, identity) is None
    why = S.text_cache_mismatch(text, identity | {"dtype": "float32"})
    assert why is not None and "differing: dtype" in why
    old = {"fields": {"text": {}}, "text_encoder": {k: v for k, v in identity.items() if k != "dtype"}}
    assert S.text_cache_mismatch(old, identity | {"dtype": "float32"}) is None  # no stamp: not compared
