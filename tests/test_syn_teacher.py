"""The synthetic-world teacher (``minivdit/align/syn_teacher.py``, ``tools/train_syn_teacher.py``): a tiny
one trained for two steps loads through ``TeacherConfig(videomae=...)``, is stamped, is reused from its cache,
is never left half-written, probes to accuracies in [0, 1] (mean-, max- and tubelet-pooled), and is the
quickstart_align recipe's default teacher (trained on first use only when the run aligns to it). The JEPA
objective saves its context encoder (not the EMA target), whose folder gives the encoder's own tokens; the
multi-block masks are tubes with one count per batch; the MAE objective still trains.

Run: ``pytest -q tests/test_syn_teacher.py`` (CPU, about 20 s).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from minivdit.align import syn_teacher
from minivdit.align.syn_teacher import STAMP, SynTeacherConfig, ensure, probe, read_stamp
from minivdit.align.teachers import TeacherConfig, build_teacher
from minivdit.train import parse, train

pytestmark = [
    pytest.mark.usefixtures("single_thread"),
    pytest.mark.filterwarnings("ignore:torch.distributed is disabled"),
]
ROOT = Path(__file__).resolve().parents[1]
# The quickstart's clip and grid (8 frames of 16x16, patch 4), a model a few hundred parameters wide.
TINY = [
    "--steps", "2", "--batch-size", "2", "--warmup-steps", "1", "--hidden-size", "16", "--num-layers", "1",
    "--num-heads", "2", "--decoder-hidden-size", "16", "--decoder-layers", "1", "--threads", "1",
    "--seed", "3", "--center-clips", "16",
]  # fmt: skip
TINY_CFG = SynTeacherConfig(
    steps=2, batch_size=2, warmup_steps=1, hidden_size=16, num_layers=1, num_heads=2,
    decoder_hidden_size=16, decoder_layers=1, threads=1, seed=3, center_clips=16,
)  # fmt: skip


def load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses resolve their (string) annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tool():
    return load(ROOT / "tools" / "train_syn_teacher.py", "train_syn_teacher")


@pytest.fixture(scope="module")
def folder(tool, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("syn") / "teacher"
    stamp = tool.main([*TINY, "--out", str(out)])
    assert Path(stamp["out"]) == out.resolve()
    return out


def test_tool_folder_loads_through_teacher_config(folder):
    teacher = build_teacher(TeacherConfig(videomae=str(folder)), grid=(4, 4))
    assert teacher.names == ("videomae",) and teacher.dims == (16,)
    video = torch.rand(3, 8, 3, 16, 16) * 2 - 1
    feats = teacher(video)
    assert feats.shape == (3, 4, 16, 16)  # [B, F' = T / tubelet, h·w, D]
    assert torch.isfinite(feats).all()
    assert json.loads((folder / "config.json").read_text())["architectures"] == ["VideoMAEModel"]
    assert (folder / "model.safetensors").is_file()


def test_stamp_holds_seed_steps_and_settings(folder):
    stamp = read_stamp(folder)
    assert (stamp["seed"], stamp["steps"]) == (3, 2)
    assert stamp["settings"]["hidden_size"] == 16 and stamp["settings"]["version"] == syn_teacher.VERSION
    assert stamp["command"][0] == "tools/train_syn_teacher.py" and "--steps" in stamp["command"]
    assert len(stamp["loss_curve"]) == 2 and stamp["loss_final"] > 0 and stamp["probe"] is None
    assert stamp["data"]["split"] == "in_domain"  # no labels read; the out-of-domain pairs stay unseen


def test_rerun_reuses_the_cache(tool, folder, monkeypatch):
    before = (folder / STAMP).stat().st_mtime_ns, (folder / "model.safetensors").stat().st_mtime_ns

    def no_training(cfg):
        raise AssertionError("retrained a cached teacher")

    monkeypatch.setattr(syn_teacher, "train", no_training)
    assert tool.main([*TINY, "--out", str(folder)])["steps"] == 2
    assert ensure(TINY_CFG, folder) == folder
    after = (folder / STAMP).stat().st_mtime_ns, (folder / "model.safetensors").stat().st_mtime_ns
    assert before == after
    with pytest.raises(ValueError, match="another teacher's settings"):
        ensure(dataclasses.replace(TINY_CFG, steps=3), folder)


def test_default_folder_is_keyed_by_the_settings():
    assert syn_teacher.default_dir() == syn_teacher.ROOT / syn_teacher.cache_key(SynTeacherConfig())
    assert syn_teacher.default_dir(TINY_CFG) != syn_teacher.default_dir()
    assert syn_teacher.cache_key(TINY_CFG) == syn_teacher.cache_key(dataclasses.replace(TINY_CFG))


def test_interrupted_write_leaves_no_folder(tmp_path, monkeypatch):
    out = tmp_path / "teacher"

    def power_cut(tmp, final):
        assert (Path(tmp) / "config.json").is_file() and (Path(tmp) / STAMP).is_file()  # written, unpublished
        raise RuntimeError("power cut")

    monkeypatch.setattr(syn_teacher, "publish", power_cut)
    with pytest.raises(RuntimeError, match="power cut"):
        ensure(TINY_CFG, out)
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its temporary one
    monkeypatch.undo()
    assert ensure(TINY_CFG, out) == out and read_stamp(out)["steps"] == 2  # the next call trains it whole


def test_probe_returns_accuracies(folder):
    result = probe(folder, TINY_CFG, clips_per_set=20)
    tasks = ("class", "motion")
    for model in ("trained", "random_init"):
        accuracies = {k: v for k, v in result[model].items() if k != "feature_std"}
        assert set(accuracies) == {f"{t}{p}" for t in tasks for p in ("", "_max", "_tubelets")}
        assert all(0.0 <= acc <= 1.0 for acc in accuracies.values())
        std = result[model]["feature_std"]
        assert set(std) == {"tokens", "clips"} and all(v > 0 for v in std.values())
    assert result["chance"] == 0.1
    assert probe(folder, TINY_CFG, clips_per_set=20) == result  # deterministic


def test_tubelet_pooling_keeps_time():
    """The tubelet probe's features: positions averaged, the 4 tubelets concatenated in order."""
    video = torch.rand(2, 8, 3, 16, 16) * 2 - 1
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        syn_teacher._hf("VideoMAEModel")(syn_teacher.videomae_config(TINY_CFG)).save_pretrained(tmp)
        feats = build_teacher(TeacherConfig(videomae=tmp), grid=(4, 4))(video)  # [2, 4, 16, 16]
        pooled = syn_teacher.pooled_features(tmp, video, grid=(4, 4))
    assert pooled["tubelets"].shape == (2, 64)
    assert torch.allclose(pooled["tubelets"], feats.mean(2).flatten(1))
    assert torch.allclose(pooled["mean"], feats.mean((1, 2)))


def test_linear_probe_separates_separable_features():
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(60) % 3
    x = torch.randn(60, 5, generator=gen) * 0.1 + torch.nn.functional.one_hot(y, 5).float()
    assert syn_teacher.linear_probe(x[:30], y[:30], x[30:], y[30:]) == 1.0


def test_quickstart_align_defaults_to_the_syn_teacher(folder, tmp_path, monkeypatch):
    recipe = load(ROOT / "recipes" / "quickstart_align.py", "quickstart_align")
    default = recipe.config()
    assert default.teacher.videomae == recipe.SYN_TEACHER == str(syn_teacher.default_dir())
    assert default.align.frame_match == "tubelet_repeat"
    calls = []
    monkeypatch.setattr(syn_teacher, "ensure", lambda cfg, out: calls.append((cfg, out)))
    recipe.ensure_teacher(default)  # the default folder: trained on first use (here: recorded)
    assert calls == [(SynTeacherConfig(), recipe.SYN_TEACHER)]
    fused = dataclasses.replace(default.teacher, videomae2=recipe.SYN_TEACHER_MAE)
    recipe.ensure_teacher(dataclasses.replace(default, teacher=fused))  # + the MAE twin (Align4Gen's fusion)
    assert calls[1:] == [(SynTeacherConfig(), recipe.SYN_TEACHER), (recipe.MAE, recipe.SYN_TEACHER_MAE)]
    assert recipe.MAE.objective == "mae" and recipe.SYN_TEACHER_MAE != recipe.SYN_TEACHER
    calls.clear()
    args = [
        "--out-dir", str(tmp_path), "--max-steps", "2", "--log.every", "1", "--sample-every", "-1",
        "--model.depth", "2", "--model.hidden-size", "32", "--model.num-heads", "2", "--data.batch-size", "2",
        "--align.block-index", "1", "--align.projector-dim", "32", "--log.no-tensorboard",
        "--precision", "fp32", "--teacher.videomae", str(folder),
        "--eval.num-gen", "16", "--eval.num-real", "16", "--eval.batch-size", "16", "--eval.steps", "2",
    ]  # fmt: skip
    cfg = parse(default, args)
    recipe.ensure_teacher(cfg)  # a folder given on the command line is used as it is
    assert calls == []
    train(cfg)  # the recipe's alignment with a (tiny) synthetic-world teacher: tubelet features, 8 frames
    rows = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]  # the quickstart's evaluation at the end logs a row too
    assert [r["step"] for r in train_rows] == [1, 2] and all("loss/align" in r for r in train_rows)
    assert (cfg.run_dir / "eval" / "step_0000002" / "metrics.json").is_file()  # the quickstart's evaluation


def test_masks_hide_what_each_mode_says():
    """'tube': the same positions in every tubelet; 'future': the last tubelets whole."""
    gen = torch.Generator().manual_seed(0)
    tube = syn_teacher.mask(SynTeacherConfig(masking="tube", mask_ratio=0.75), 3, gen).view(
        3, 4, 16
    )  # [B, tubelets, positions]
    assert (tube == tube[:, :1]).all() and (tube.sum(-1) == 12).all()
    future = syn_teacher.mask(SynTeacherConfig(masking="future", mask_ratio=0.5), 3, gen).view(3, 4, 16)
    assert not future[:, :2].any() and future[:, 2:].all()


def test_multiblock_masks_are_tubes_of_equal_counts():
    """V-JEPA's multi-block mask: the same positions hidden in every tubelet, never all of them; the context
    and target masks are disjoint and have one count per batch (the collator's truncation)."""
    cfg = SynTeacherConfig(masking="multiblock")
    gen = torch.Generator().manual_seed(0)
    hidden = syn_teacher.mask(cfg, 16, gen).view(16, 4, 16)
    assert (hidden == hidden[:, :1]).all() and not hidden.all(-1).any()
    assert hidden.float().mean() > 0.6  # two blocks of 70 % of the grid
    context, target = syn_teacher.context_target(cfg, 16, gen)
    assert not (context & target).any()
    assert len(set(context.sum(1).tolist())) == 1 and len(set(target.sum(1).tolist())) == 1
    for m in (context, target):
        assert (m.view(16, 4, 16) == m.view(16, 4, 16)[:, :1]).all()
    tube = dataclasses.replace(cfg, masking="tube")  # every other masking: context = not hidden
    c, t = syn_teacher.context_target(tube, 3, torch.Generator().manual_seed(1))
    assert torch.equal(t, syn_teacher.mask(tube, 3, torch.Generator().manual_seed(1))) and torch.equal(c, ~t)


JEPA_CFG = dataclasses.replace(
    TINY_CFG, objective="jepa", masking="multiblock", steps=3, batch_size=3, lr=1e-2, ema_start=0.9,
    ema_end=0.95,
)  # fmt: skip


def test_jepa_saves_the_context_encoder_not_the_target(tmp_path, monkeypatch):
    """JEPA trains a few steps; the folder holds the context encoder (the EMA target differs from it), and
    loads through TeacherConfig to the trained encoder's own tokens."""
    made = []

    class Recorded(syn_teacher.JEPA):
        def __init__(self, cfg):
            super().__init__(cfg)
            made.append(self)

    monkeypatch.setattr(syn_teacher, "JEPA", Recorded)
    out = ensure(JEPA_CFG, tmp_path / "jepa")
    (jepa,) = made
    stamp = read_stamp(out)
    assert stamp["settings"]["objective"] == "jepa" and len(stamp["loss_curve"]) == 3
    assert all(torch.isfinite(torch.tensor(stamp["loss_curve"])).flatten())
    assert set(stamp["target_feature_std"]) == {"tokens", "clips"}
    assert not any(p.requires_grad for p in jepa.target.parameters())
    enc, tgt = jepa.encoder.state_dict(), jepa.target.state_dict()
    assert any(not torch.equal(enc[k], tgt[k]) for k in enc)  # the EMA lags the trained encoder
    video = torch.rand(2, 8, 3, 16, 16) * 2 - 1
    feats = build_teacher(TeacherConfig(videomae=str(out)), grid=(4, 4))(video)  # [2, 4, 16, 16]
    with torch.no_grad():
        own = jepa.encoder.eval()(syn_teacher.pixels(video)).last_hidden_state.view(2, 4, 16, 16)
        target = jepa.target(syn_teacher.pixels(video)).last_hidden_state.view(2, 4, 16, 16)
    assert torch.allclose(feats, own, atol=1e-5)
    assert not torch.allclose(feats, target, atol=1e-3)


def test_jepa_target_follows_the_encoder_by_ema():
    """One EMA step: target <- m * target + (1 - m) * encoder."""
    torch.manual_seed(0)
    jepa = syn_teacher.JEPA(JEPA_CFG)
    before = [p.detach().clone() for p in jepa.target.parameters()]
    with torch.no_grad():
        for p in jepa.encoder.parameters():
            p.add_(1.0)
    jepa.update_target(0.9)
    for b, t, e in zip(before, jepa.target.parameters(), jepa.encoder.parameters(), strict=True):
        assert torch.allclose(t, 0.9 * b + 0.1 * e)


def test_mae_objective_still_trains(tmp_path):
    cfg = dataclasses.replace(TINY_CFG, objective="mae", masking="tube")
    out = ensure(cfg, tmp_path / "mae")
    stamp = read_stamp(out)
    assert stamp["settings"]["objective"] == "mae" and stamp["target_feature_std"] is None
    assert build_teacher(TeacherConfig(videomae=str(out)), grid=(4, 4)).dims == (16,)


def test_saved_tokens_are_centred_on_held_out_clips(folder):
    """``center``: the folder's mean token over the held-out clips it was centred on is 0 (the fp32 sum of
    16 clips × 64 tokens of O(1) values: ~1e-6), and the tokens of a clip differ from one another."""
    data = syn_teacher.SyntheticVideos(8, 16, syn_teacher.NUM_CLASSES, size=16, seed=1001, split="in_domain")
    video, _ = syn_teacher.clips(data, range(16))
    feats = build_teacher(TeacherConfig(videomae=str(folder)), grid=(4, 4))(video)  # [16, 4, 16, D]
    assert feats.mean((0, 1, 2)).abs().max() < 1e-4
    assert feats.flatten(0, 2).std(0).mean() > 0.1


def test_two_videomae_folders_fuse_in_order(folder):
    """``--teacher.videomae2``: a second encoder of the same class, its tokens after the first's."""
    video = torch.rand(2, 8, 3, 16, 16) * 2 - 1
    one = build_teacher(TeacherConfig(videomae=str(folder)), grid=(4, 4))
    two = build_teacher(TeacherConfig(videomae=str(folder), videomae2=str(folder)), grid=(4, 4))
    assert two.names == ("videomae", "videomae2") and two.dims == (16, 16)
    feats, alone = two(video), one(video)  # [2, 4, 16, 32], [2, 4, 16, 16]
    assert torch.equal(feats[..., :16], alone) and torch.equal(feats[..., 16:], alone)
