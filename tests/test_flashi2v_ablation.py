"""Image-to-video on a V-DiT (issue 19 §7): the synthetic held-out combinations, channel concat
(``DiTConfig.cond_channels``), FlashI2V through the trainer in pixel space, and the ablation recipe and tool
(``recipes/flashi2v_ablation.py``, ``tools/ablate_flashi2v.py``) from their command lines."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minivdit.data import DataConfig
from minivdit.data.synthetic import PALETTE, SyntheticVideos, held_out_offsets, split_pairs
from minivdit.eval.evaluate import to_uint8
from minivdit.models.cond import Cond
from minivdit.models.dit import DiTConfig, VDiT
from minivdit.models.flashi2v import FlashI2V, FlashI2VConfig
from minivdit.models.vae import PixelSpace
from minivdit.sample import load_run, start_frame_cond
from minivdit.train import TrainConfig, main

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.usefixtures("single_thread"),
    pytest.mark.filterwarnings("ignore:torch.distributed is disabled"),
]


def _module(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RECIPE = _module(ROOT / "recipes" / "flashi2v_ablation.py")
TINY = [
    "--max-steps", "2", "--log.every", "1", "--log.no-tensorboard", "--data.batch-size", "2",
    "--data.num-workers", "0", "--model.depth", "2", "--model.hidden-size", "32", "--model.num-heads", "2",
    "--sample.num", "3", "--sample.steps", "2", "--optim.warmup-steps", "1",
]  # fmt: skip


# ------------------------------------------------------------------------------------------------ data
@pytest.mark.parametrize("n", [4, 8, 10])
def test_held_out_pairs_partition_every_pairing(n):
    inside, outside = set(split_pairs(n, "in_domain")), set(split_pairs(n, "out_of_domain"))
    assert not inside & outside
    assert inside | outside == {(a, m) for a in range(n) for m in range(n)}
    assert {(c, c) for c in range(n)} <= inside  # the classes of "all" are in domain
    offsets = held_out_offsets(n)
    assert outside == {(a, m) for a in range(n) for m in range(n) if (m - a) % n in offsets}
    # every appearance and every motion is trained, each with the same number of partners
    for k in range(n):
        assert sum(a == k for a, _ in inside) == n - len(offsets)
        assert sum(m == k for _, m in inside) == n - len(offsets)
    assert len(split_pairs(10, "out_of_domain")) == 30


def test_split_clips_draw_the_appearance_with_the_motion():
    split = SyntheticVideos(8, 32, 10, 200, seed=0, split="out_of_domain")
    tied = SyntheticVideos(8, 32, 10, 200, seed=0)
    assert split.classes[1] == "moving left" and tied.classes[1] == "orange square moving left"
    # in domain, pair (0, 0) at index 0 is class 0's clip, bit for bit (the same per-index randomness)
    assert torch.equal(
        SyntheticVideos(8, 32, 10, 200, split="in_domain").get(0)["video"], tied.get(0)["video"]
    )
    for i in range(len(split.pairs)):
        clip = split.get(i)
        a, m = split.pairs[i]
        assert (clip["appearance"], clip["label"]) == (a, m) and (m - a) % 10 in held_out_offsets(10)
        if m not in (0, 1):  # the horizontal motions: checked below
            continue
        video = (clip["video"] + 1) / 2  # [F, 3, H, W]
        # the object's pixels: near the appearance's colour (the background stays below ~0.35)
        colour = torch.tensor(PALETTE[a], dtype=torch.float32) / 255
        near = (video - colour[None, :, None, None]).abs().amax(1) < 0.05  # [F, H, W]
        assert near[0].sum() > 10, f"pair {(a, m)}: the appearance's colour is not in frame 0"
        xs = [torch.nonzero(f)[:, 1].float().mean() for f in (near[0], near[-1])]
        # the motion's direction (moving right: m = 0; left: m = 1), half the frame width over the clip
        assert (xs[1] - xs[0]) * (1 if m == 0 else -1) > 0.3 * 32


def test_split_is_refused_where_it_has_no_meaning():
    with pytest.raises(ValueError, match="synthetic_split"):
        DataConfig(dataset="ucf101", root="/x", synthetic_split="in_domain")
    with pytest.raises(ValueError, match="num_classes >= 4"):
        DataConfig(num_classes=3, synthetic_split="out_of_domain")


# ------------------------------------------------------------------------------------------------ model
def _tiny(**kw) -> DiTConfig:
    base = dict(depth=2, hidden_size=32, num_heads=2, patch_size=2, in_channels=3, input_size=(4, 6),
                num_frames=3, num_classes=5, learn_sigma=False, block_type="full3d")  # fmt: skip
    return DiTConfig(**(base | kw))


def test_channel_concat_takes_the_image_latents():
    torch.manual_seed(0)
    model = VDiT(_tiny(cond_channels=3))
    model.init_weights()
    with torch.no_grad():  # open the residual branches and the output, which adaLN-Zero closes at init
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    model.eval()
    x, t, y = torch.randn(2, 3, 3, 4, 6), torch.rand(2) * 1000, torch.tensor([1, 4])
    image = torch.randn(2, 3, 3, 4, 6)
    out = model(x, t, Cond(label=y, image_latents=image)).pred
    assert out.shape == x.shape  # the condition's channels are input only
    assert not torch.equal(out, model(x, t, Cond(label=y, image_latents=image.flip(0))).pred)
    with pytest.raises(ValueError, match="needs Cond.image_latents"):
        model(x, t, Cond(label=y))
    with pytest.raises(ValueError, match=r"\[B, F, cond_channels, H, W\]"):
        model(x, t, Cond(label=y, image_latents=image[:, :1]))
    plain = VDiT(_tiny())
    with pytest.raises(ValueError, match="cannot use Cond.image_latents"):
        plain(x, t, Cond(label=y, image_latents=image))


@pytest.mark.parametrize("flashi2v", [False, True])
def test_start_frame_cond(flashi2v):
    model = VDiT(_tiny(cond_channels=0 if flashi2v else 3))
    if flashi2v:
        model = FlashI2V(model, FlashI2VConfig())
    images, labels = torch.rand(2, 3, 4, 6) * 2 - 1, torch.tensor([0, 3])
    cond, null = start_frame_cond(model, labels, images, PixelSpace(), flashi2v=flashi2v, num_frames=3)
    lat = cond.image_latents
    assert lat.shape == ((2, 1, 3, 4, 6) if flashi2v else (2, 3, 3, 4, 6))
    assert torch.equal(lat[:, 0], images)  # pixel space: the frame itself
    assert flashi2v or not lat[:, 1:].any()  # concat: zeros after frame 0 (CogVideoX-I2V)
    assert torch.equal(null.image_latents, lat) and null.label.tolist() == [5, 5]  # CFG on the label only


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(i2v="first"), "--model.cond-channels 3"),
        (dict(cond_channels=3), "--model.cond-channels 3"),
        (dict(cond_channels=4, i2v="first"), "--model.cond-channels 3"),
        (dict(flashi2v=True, i2v="first", cond_channels=3), "does not combine"),
    ],
)
def test_image_to_video_vdit_config_errors(change, match):
    cfg = RECIPE.config("shift")
    model = dataclasses.replace(cfg.model, cond_channels=change.get("cond_channels", 0))
    i2v = dataclasses.replace(cfg.i2v, mode=change.get("i2v", "off"))
    flash = FlashI2VConfig() if change.get("flashi2v") else None
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(cfg, model=model, i2v=i2v, flashi2v=flash)


def test_image_to_video_vdit_refuses_the_class_conditional_evaluation():
    from minivdit.eval.evaluate import EvalConfig

    with pytest.raises(ValueError, match="tools/ablate_flashi2v.py"):
        dataclasses.replace(RECIPE.config("flashi2v"), eval=EvalConfig(protocol="synthetic"))


# ------------------------------------------------------------------------------------------------ runs
@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """The three arms, 2 tiny steps each: ``concat`` through the recipe's command line in a subprocess (what
    the tool runs), the FlashI2V arms through ``main`` in process."""
    out = tmp_path_factory.mktemp("ablation")
    cmd = [sys.executable, str(ROOT / "recipes" / "flashi2v_ablation.py"), "--arm", "concat",
           "--out-dir", str(out), "--run-name", "concat", *TINY]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for arm in ("flashi2v", "shift"):
        main(RECIPE.config(arm), ["--out-dir", str(out), "--run-name", arm, *TINY])
    return out


@pytest.mark.parametrize("arm", ["concat", "flashi2v", "shift"])
def test_each_arm_trains_samples_and_reloads(runs, arm):
    run = runs / arm
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]
    assert (run / "samples" / "step_0000002" / "contact.png").is_file()  # the start-frame grid
    model, objective, vae, cfg = load_run(run)  # strict: every key of the checkpoint in its place
    assert vae is None and isinstance(model, FlashI2V) == (arm != "concat")
    if arm == "shift":
        assert model.fourier_embedding is None
    tool = _module(ROOT / "tools" / "ablate_flashi2v.py")
    video, labels = tool.real_clips(8, 16, 10, "out_of_domain", 3, seed=1)
    fake = tool.sample_run(run, video, labels, steps=2, batch=2, seed=0)
    assert fake.shape == video.shape and torch.isfinite(fake).all()
    again = tool.sample_run(run, video, labels, steps=2, batch=2, seed=0)
    assert torch.equal(fake, again)  # the same noise for every run and call
    assert tool.losses(run)[0] == [1, 2]


def test_tool_measures():
    tool = _module(ROOT / "tools" / "ablate_flashi2v.py")
    video = torch.rand(2, 8, 3, 4, 4) * 2 - 1
    assert torch.equal(tool.chunk(video, "early"), video[:, :4])
    assert torch.equal(tool.chunk(video, "late"), video[:, 4:])
    # PSNR in [0, 1]: a uniform error of 0.1 (0.2 in [-1, 1]) is 20 dB
    assert tool.psnr(video.clamp(-0.5, 0.5) + 0.2, video.clamp(-0.5, 0.5)) == pytest.approx(20.0, abs=1e-3)
    assert to_uint8(video).dtype == torch.uint8


def test_trainconfig_accepts_the_three_arms():
    for arm in RECIPE.ARMS:
        cfg = RECIPE.config(arm)
        assert isinstance(cfg, TrainConfig) and cfg.data.synthetic_split == "in_domain"
        assert (cfg.flashi2v is None) == (arm == "concat") == cfg.model.is_i2v


def test_sample_cli_starts_every_video_from_the_image(runs, tmp_path):
    """``python -m minivdit.sample --ckpt RUN --image PNG --classes ...`` on an image-to-video V-DiT run."""
    import numpy as np
    from PIL import Image

    from minivdit.sample import SampleConfig, sample

    frame = SyntheticVideos(8, 16, 10, 1, seed=1, split="out_of_domain").get(0)["video"][0]  # [3, H, W]
    png = tmp_path / "start.png"
    Image.fromarray(to_uint8(frame[None, None])[0, 0].permute(1, 2, 0).numpy()).save(png)
    cmd = [sys.executable, "-m", "minivdit.sample", "--ckpt", str(runs / "flashi2v"), "--image", str(png),
           "--classes", "3", "7", "--steps", "2", "--out", str(tmp_path / "out"),
           "--device", "cpu"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "out" / "contact.png").is_file()
    frames = np.asarray(Image.open(tmp_path / "out" / "contact.png"))
    assert frames.ndim == 3 and frames.shape[0] > 0
    for arm in ("concat", "shift"):  # the same request in process, for the other arms
        sample(SampleConfig(ckpt=str(runs / arm), image=str(png), classes=(3,), steps=2,
                            out=str(tmp_path / arm), device="cpu"))  # fmt: skip
        assert (tmp_path / arm / "contact.png").is_file()
    with pytest.raises(ValueError, match="give --image"):
        sample(SampleConfig(ckpt=str(runs / "concat"), steps=2, out=str(tmp_path / "x"), device="cpu"))
