"""The CogVideoX fine-tuning recipes end to end on tiny random weights saved in the real formats: a diffusers
CogVideoX-I2V folder (transformer/, vae/, text_encoder/, tokenizer/), a V-JEPA 2 teacher, and a captioned
video folder. Two steps of each recipe (online text, then cached text), exact resume with and without LoRA,
and with buckets."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tiny_cogvideox import TEXT_LEN, make_clips, make_pipeline_folder, tiny_config  # tests/ on sys.path

import minivdit.train as train_mod
from minivdit.align.teachers import make_tiny_teacher
from minivdit.conditioning.text import make_tiny_t5
from minivdit.models.lora import LoRAConfig
from minivdit.train import train

diffusers = pytest.importorskip("diffusers")
pytestmark = [pytest.mark.usefixtures("single_thread"), pytest.mark.slow]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """A tiny CogVideoX-I2V pipeline folder, a tiny V-JEPA 2 and a captioned folder of 4 clips."""
    root = tmp_path_factory.mktemp("cogvideox")
    pipe = make_pipeline_folder(root / "CogVideoX-tiny-I2V")
    make_tiny_teacher("vjepa2", root / "vjepa2")
    return {"pipe": pipe, "vjepa2": root / "vjepa2", "data": make_clips(root / "clips")}


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("recipe", ["cogvideox_i2v", "drepa_timelapse"])
def test_recipe_runs_two_steps(recipe, tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run_dir = train(tiny_config(recipe, tiny, tmp_path))
    rows = _rows(run_dir)
    assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows)
    assert all(("loss/align" in r) == ("align_ratio" in r) == (recipe == "drepa_timelapse") for r in rows)
    saved = load_file(str(run_dir / "checkpoints" / "step_0000002" / "model.safetensors"))
    assert "transformer_blocks.0.attn1.to_q.weight" in saved  # a full fine-tune saves every weight


@pytest.mark.parametrize("lora", [0, 4])
def test_resume_is_exact(lora, tiny, tmp_path):
    """3 steps straight = the same 3-step run resumed from its step-2 checkpoint: same last loss and lr, same
    weights; with LoRA the checkpoints hold the adapters only. (The recipe's SAT schedule depends on
    ``max_steps``, so a 2-step run continued to 3 would follow another lr curve.)"""
    kw = dict(lora=LoRAConfig(rank=lora, alpha=8.0)) if lora else {}
    straight = train(tiny_config("cogvideox_i2v", tiny, tmp_path / "a", max_steps=3, **kw))
    step2 = str(straight / "checkpoints" / "step_0000002")
    resumed = train(tiny_config("cogvideox_i2v", tiny, tmp_path / "b", max_steps=3, resume=step2, **kw))
    last = [(r["step"], r["lr"], r["loss"]) for r in _rows(straight)][-1:]
    assert [(r["step"], r["lr"], r["loss"]) for r in _rows(resumed)] == last
    a = load_file(str(straight / "checkpoints" / "step_0000003" / "model.safetensors"))
    b = load_file(str(resumed / "checkpoints" / "step_0000003" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # exact resume: same kernels
    if lora:
        assert a and all(".lora_" in k for k in a)  # the base is never copied into checkpoints
        meta = json.loads((resumed / "checkpoints" / "step_0000003" / "meta.json").read_text())
        assert meta["weights"] == "trainable"


def test_recipe_runs_on_shards_with_cached_text(tiny, tmp_path, monkeypatch):
    """Shards of the captioned clips + T5 tokens cached by tools/cache_text.py: the run loads no text encoder
    and drops captions to the cached empty prompt; a cache from another encoder is refused."""
    from test_text import load_tool

    from minivdit.data import shards as S

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = tiny_config("cogvideox_i2v", tiny, tmp_path)
    out = S.write_clip_shards(cfg.data, tmp_path / "shards", samples_per_shard=2)
    load_tool("cache_text").main(
        ["--root", str(out), "--text.path", str(tiny["pipe"]), "--text.dtype", "float32", "--batch-size", "2"]
        + ["--text.max-length", str(TEXT_LEN)]
    )
    data = dataclasses.replace(cfg.data, dataset="shards", root=str(out), labels_csv=None)
    cached = dataclasses.replace(cfg, data=data, text=dataclasses.replace(cfg.text, path=None))
    run_dir = train(cached)
    rows = _rows(run_dir)
    assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows)
    # the same run with the encoder's folder given (issue 21 §2): the cache covers it, so it is not loaded
    built = []
    monkeypatch.setattr(train_mod, "build_text_encoder", lambda c: built.append(c))
    with_folder = dataclasses.replace(cached, text=cfg.text, run_name="with-folder")
    assert [r["step"] for r in _rows(train(with_folder))] == [1, 2] and built == []
    other = make_tiny_t5(tmp_path / "other_t5", seed=1)
    with pytest.raises(ValueError, match="cached by another text encoder"):
        train(dataclasses.replace(cached, text=dataclasses.replace(cfg.text, path=str(other)), run_name="b"))


def test_alignment_on_cogvideox_15_is_refused_before_training():
    """1.5 patches two latent frames into one token frame: the head cannot pair token and teacher frames, so
    the config is refused (not a shape error at the first step)."""
    from test_recipes import load  # tests/ on sys.path

    from minivdit.models.cogvideox import preset

    cfg = load(Path(__file__).parents[1] / "recipes" / "drepa_timelapse.py").config()
    model = dataclasses.replace(preset("CogVideoX1.5-5B-I2V"), attn_backend=cfg.model.attn_backend)
    with pytest.raises(ValueError, match=r"alignment on CogVideoX 1.5 \(model.patch_size_t=2\)"):
        dataclasses.replace(cfg, model=model)


def test_bucketed_run_resumes_exactly_across_buckets(tiny, tmp_path, monkeypatch):
    """Issue 21 §1: the I2V recipe on clips of three buckets (landscape, portrait, short) with the learned PE
    dropped; a run resumed from step 2 continues with the same batches (buckets included, across the epoch
    end) and losses. The recipe's default learned PE refuses the portrait bucket before the first step."""
    from test_data_real import write_video

    from minivdit.data.buckets import BucketConfig

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    clips, rows = tmp_path / "clips", ["path,caption"]
    for i, (n, w, h) in enumerate(
        [(12, 48, 32), (12, 48, 32), (12, 32, 48), (12, 32, 48), (7, 48, 32), (7, 48, 32)]
    ):
        write_video(clips / f"c{i}.mp4", n, w=w, h=h, tint=40 * i)
        rows.append(f"c{i}.mp4,a red disc grows slowly {i}")
    (clips / "captions.csv").write_text("\n".join(rows) + "\n")
    buckets = BucketConfig(sizes=("9x32x48", "9x48x32", "5x32x48"))

    def cfg(out: str, learned_pe: str = "drop", **kw):
        base = tiny_config("cogvideox_i2v", {**tiny, "data": clips}, tmp_path / out, max_steps=4, **kw)
        data = dataclasses.replace(base.data, buckets=buckets, frame_sampling="even", skip_frames=0)
        return dataclasses.replace(
            base, data=data, model=dataclasses.replace(base.model, learned_pe=learned_pe)
        )

    with pytest.raises(ValueError, match=r"bucket 9x48x32 .*--model.learned-pe drop"):
        train(cfg("exact", learned_pe="exact"))
    straight = train(cfg("a"))  # 3 steps per epoch (2 clips per bucket, batch 2): 4 steps cross an epoch
    resumed = train(cfg("b", resume=str(straight / "checkpoints" / "step_0000002")))
    losses = [(r["step"], r["loss"]) for r in _rows(straight)]
    assert [(r["step"], r["loss"]) for r in _rows(resumed)] == losses[2:]
    assert all(np.isfinite(loss) for _, loss in losses)
