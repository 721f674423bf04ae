"""``recipes/uniworld_osp2.py`` end to end on tiny random weights in the real formats: the tiny Wan
pipeline folder of ``tests/test_recipes_wan.py`` (transformer, VAE; its UMT5 unused), a tiny Qwen2.5-VL
folder with its tokenizer (``tests/tiny_qwen.py``) and a captioned clip folder. The adapter trains from the
recipe's command line with the DiT frozen; the caption is blanked before the VLM; a FlashI2V run fills the
frozen DiT (``--init-from``); resume is exact; wrong settings are refused by name.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_cli import run_cmd
from test_recipes import load
from test_recipes_wan import make_tiny
from test_recipes_wan import tiny_config as wan_config
from tiny_cogvideox import FRAMES, H, W
from tiny_qwen import save_qwen_vl

from minivdit import dist
from minivdit.conditioning import Conditioner
from minivdit.conditioning.vlm import VLMConfig, VLMEncoder
from minivdit.models.uniworld import UniWorldConfig
from minivdit.train import LogConfig, build_models, train

pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
pytestmark = [
    pytest.mark.usefixtures("single_thread"),
    pytest.mark.filterwarnings("ignore:torch.distributed is disabled"),
]
RECIPE = Path(__file__).parents[1] / "recipes" / "uniworld_osp2.py"
SOLO = dist.DistContext(rank=0, world=1, local_rank=0, device=torch.device("cpu"))
VLM_LEN = 200  # positions: 135 image tokens + template + caption (the recipe's 1024 test nothing more here)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    return make_tiny(tmp_path_factory.mktemp("wan"))


@pytest.fixture(scope="module")
def qwen(tmp_path_factory) -> Path:
    return save_qwen_vl(tmp_path_factory.mktemp("qwen") / "Qwen2.5-VL-tiny")


def uniworld_config(tiny, qwen, out: Path, **overrides):
    """The recipe's settings on the tiny folders (the Wan ones from ``wan_config``): only what the tiny
    weights and the CPU force changes."""
    cfg = load(RECIPE).config()
    base = wan_config(tiny, out)
    changes = dict(
        run_name=cfg.run_name,
        flashi2v=cfg.flashi2v,
        uniworld=UniWorldConfig(vlm_dim=16, hidden_dim=24, out_dim=32, latent_channels=4),
        vlm=dataclasses.replace(cfg.vlm, path=str(qwen), dtype="float32", max_length=VLM_LEN),
        optim=cfg.optim,
        ema=cfg.ema,
        text=cfg.text,
    )
    return dataclasses.replace(base, **(changes | overrides))


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_recipe_trains_the_adapter_alone_from_the_command_line(tiny, qwen, tmp_path):
    """``python recipes/uniworld_osp2.py`` as typed: the VLM reads caption + first frame, only the adapter is
    in the optimizer and in the checkpoint (the frozen DiT comes back from ``--pretrained``)."""
    pipe = tiny["pipe"]
    args = shlex.split(
        f"--pretrained {pipe} --vae.path {pipe} --vlm.path {qwen} --vlm.dtype float32 "
        f"--vlm.max-length {VLM_LEN} --uniworld.vlm-dim 16 --uniworld.hidden-dim 24 --uniworld.out-dim 32 "
        f"--uniworld.latent-channels 4 --data.root {tiny['data']} --data.num-frames {FRAMES} "
        f"--data.image-size {H} {W} --data.batch-size 2 --data.num-workers 0 "
        f"--model.num-frames 3 --model.input-size {H // 8} {W // 8} --model.attn-backend sdpa "
        f"--optim.lr 1e-3 --precision fp32 --max-steps 2 --log.every 1 --log.no-tensorboard --ckpt.every 2 "
        f"--out-dir {tmp_path}"
    )
    run_cmd([sys.executable, str(RECIPE), *args])
    run_dir = tmp_path / "uniworld_osp2"
    rows = _rows(run_dir)
    assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows)
    step = run_dir / "checkpoints" / "step_0000002"
    saved = load_file(str(step / "model.safetensors"))
    assert sorted(saved) == [f"adapter.fc{i}.{k}" for i in (1, 2) for k in ("bias", "weight")]
    assert json.loads((step / "meta.json").read_text())["weights"] == "trainable"
    assert saved["adapter.fc2.bias"].abs().max() > 0  # zero-init bias: trained away from 0
    config = json.loads((run_dir / "config.json").read_text())
    assert config["vlm"]["use_vision"] is False and config["uniworld"]["train"] == "adapter"
    from minivdit.models.uniworld import UniWorld
    from minivdit.sample import load_run

    model, *_ = load_run(run_dir)  # rebuilt as trained: the folder's DiT, the checkpoint's adapter (EMA)
    ema = load_file(str(step / "ema.safetensors"))
    assert isinstance(model, UniWorld) and torch.equal(model.adapter.fc2.bias, ema["adapter.fc2.bias"])


def test_dropped_captions_are_blanked_before_the_vlm(qwen):
    """Caption dropout with a VLM: the dropped sample's context is VLM("" + its own frame), the kept one's
    VLM(caption + frame); the keep mask is the generator's first draw, as for T5."""
    from minivdit.data import Batch

    vlm = VLMEncoder(VLMConfig(path=str(qwen), dtype="float32", max_length=VLM_LEN))
    g = torch.Generator().manual_seed(3)
    video = torch.rand(2, 5, 3, 16, 24, generator=g) * 2 - 1
    captions = ("a red disc", "a blue square")
    batch = Batch(video=video, label=torch.zeros(2, dtype=torch.long), caption=captions)
    conditioner = Conditioner(vlm=vlm, text_dropout=0.5)
    seed = next(s for s in range(100) if (torch.rand(2, generator=torch.Generator().manual_seed(s)) >= 0.5)
                .tolist() == [False, True])  # fmt: skip
    cond = conditioner(batch, torch.Generator().manual_seed(seed), torch.device("cpu"))
    want, _ = vlm.encode(["", "a blue square"], video[:, 0])
    assert torch.equal(cond.context, want) and cond.context_mask is None
    with pytest.raises(ValueError, match="one context source"):
        Conditioner(vlm=vlm, text_encoder=object())


def test_init_from_a_flashi2v_run_fills_the_frozen_dit(tiny, qwen, tmp_path):
    """``--init-from RUN``: the FlashI2V run's EMA weights land in ``UniWorld.base`` (model and EMA), the
    adapter keeps its seeded init; a T2V run fills the backbone alone; a run with more wrappers is refused."""
    flash = train(wan_config(tiny, tmp_path, run_name="flash", max_steps=1, optim=dataclasses.replace(
        load(RECIPE).config().optim, lr=1e-2)))  # fmt: skip
    ema = load_file(str(flash / "checkpoints" / "step_0000001" / "ema.safetensors"))
    cfg = uniworld_config(tiny, qwen, tmp_path, init_from=str(flash))
    model, ema_model = build_models(cfg, SOLO)
    for m in (model, ema_model):
        state = m.base.state_dict()
        assert state.keys() == ema.keys() and all(torch.equal(state[k], ema[k]) for k in ema)
    fresh, _ = build_models(dataclasses.replace(cfg, init_from=None), SOLO)
    assert torch.equal(fresh.adapter.fc1.weight, model.adapter.fc1.weight)  # the seed's, either way
    assert not torch.equal(fresh.base.learnable_proj.proj[2].weight, model.base.learnable_proj.proj[2].weight)
    # a text-to-video run fills the backbone only (counted from the inside: FlashI2V's layers keep their init)
    t2v = train(wan_config(tiny, tmp_path, run_name="t2v", max_steps=1, flashi2v=None))
    wan, _ = build_models(dataclasses.replace(cfg, init_from=str(t2v)), SOLO)
    want = load_file(str(t2v / "checkpoints" / "step_0000001" / "ema.safetensors"))
    state = wan.base.base.state_dict()
    assert all(torch.equal(state[k], want[k]) for k in want)
    assert torch.equal(wan.base.learnable_proj.proj[2].weight, fresh.base.learnable_proj.proj[2].weight)
    plain = wan_config(tiny, tmp_path, flashi2v=None, init_from=str(flash))
    with pytest.raises(ValueError, match="that run has 1 wrapper"):
        build_models(plain, SOLO)  # FlashI2V's layers have nowhere to go


def test_resume_is_exact(tiny, qwen, tmp_path):
    """3 steps straight = 2 steps, then resumed: the adapter-only checkpoint on the DiT rebuilt from the
    folders; the VLM's caption drops come from the per-micro-batch seed."""
    kw = dict(max_steps=3, log=LogConfig(every=1, tensorboard=False))
    straight = train(uniworld_config(tiny, qwen, tmp_path / "a", **kw))
    step2 = str(straight / "checkpoints" / "step_0000002")
    resumed = train(uniworld_config(tiny, qwen, tmp_path / "b", resume=step2, **kw))
    assert [r["loss"] for r in _rows(straight)][-1:] == [r["loss"] for r in _rows(resumed)]
    for name in ("model", "ema"):
        a = load_file(str(straight / "checkpoints" / "step_0000003" / f"{name}.safetensors"))
        b = load_file(str(resumed / "checkpoints" / "step_0000003" / f"{name}.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_settings_that_cannot_work_are_refused(tiny, qwen, tmp_path):
    cfg = uniworld_config(tiny, qwen, tmp_path)
    with pytest.raises(ValueError, match="--vlm.path and --uniworld go together"):
        dataclasses.replace(cfg, uniworld=None)
    with pytest.raises(ValueError, match="replaces the text encoder"):
        dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, path=str(tiny["pipe"])))
    with pytest.raises(ValueError, match="--uniworld.out-dim 32"):
        dataclasses.replace(cfg, uniworld=UniWorldConfig(vlm_dim=16, out_dim=48))
    with pytest.raises(ValueError, match="--uniworld.vlm-dim 16"):
        train(dataclasses.replace(cfg, uniworld=dataclasses.replace(cfg.uniworld, vlm_dim=20), max_steps=1))


def test_sample_a_uniworld_run_through_its_vlm(tiny, qwen, tmp_path):
    """``python -m minivdit.sample --ckpt RUN --image PNG --prompt P`` on a UniWorld run: the VLM reads each
    prompt with the image (Lanczos-resized to 240 × 416, as the released pipeline), the negative is
    UniWorld's default (Wan's English negative prompt) with the same image, through the run's adapter.

    Oracle: a run trained one step at lr 1e-30 keeps the folder's DiT, FlashI2V's zero-init layers (below
    the fp32 spacing, as ``test_recipes_wan.py``'s sampling test argues) and its adapter's init, so it is
    Wan(text_embedding(adapter(VLM states))): ``WanPipeline`` given ``prompt_embeds`` = adapter(states of
    the reference processor's ids through ``Qwen2_5_VLTextModel``) and the negative's samples the same
    latents for the same seeds, to the fp32 parity bound of ``tests/test_sample_wan.py`` (1e-5 relative)."""
    from einops import rearrange
    from PIL import Image
    from tiny_qwen import reference_processor

    from minivdit.models.uniworld import EncoderAdapter
    from minivdit.sample import UNIWORLD_NEGATIVE_PROMPT, SampleConfig, sample_wan

    diffusers = pytest.importorskip("diffusers")
    cfg = load(RECIPE).config()
    run = train(uniworld_config(
        tiny, qwen, tmp_path, max_steps=1, optim=dataclasses.replace(cfg.optim, lr=1e-30),
        objective=dataclasses.replace(cfg.objective, sampling_grid="diffusers"),  # the pipeline's Euler grid
        vlm=VLMConfig(path=str(qwen), dtype="float32"),  # 1024 positions: the default negative prompt fits
    ))  # fmt: skip
    png = tmp_path / "start.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)).save(png)
    prompts = ("a red disc moving right", "a blue square moving left")
    request = SampleConfig(
        ckpt=str(run), image=str(png), prompt=prompts, steps=2, seed=3, use_ema=False, device="cpu"
    )
    ours, _, record = sample_wan(request)
    assert record["model"] == "wan-t2v+flashi2v+uniworld" and record["vlm"] == str(qwen)
    assert record["negative_prompts"] == [UNIWORLD_NEGATIVE_PROMPT] and record["cfg_scale"] == 5.0

    processor = reference_processor(qwen)
    text_model = transformers.Qwen2_5_VLTextModel.from_pretrained(qwen).eval()
    adapter = EncoderAdapter(16, 24, 32)
    weights = load_file(str(run / "checkpoints" / "step_0000001" / "model.safetensors"))
    adapter.load_state_dict({k.removeprefix("adapter."): v for k, v in weights.items()})
    with Image.open(png) as im:  # uniworld_osp2_pipeline.py resize_and_save_image
        image = im.convert("RGB").resize((416, 240), Image.Resampling.LANCZOS)

    def embeds(text: str) -> torch.Tensor:  # _get_vlm_embeds, then the adapter
        content = [{"type": "image", "image": "start.jpg"}, {"type": "text", "text": text}]
        chat = processor.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
        inputs = processor(text=[chat], images=[image], padding="max_length", max_length=1024,
                           return_tensors="pt")  # fmt: skip
        with torch.no_grad():
            return adapter(text_model(**inputs, return_dict=False, use_cache=False)[0])

    pipe_dir = tiny["pipe"]
    pipe = diffusers.WanPipeline(
        tokenizer=transformers.AutoTokenizer.from_pretrained(pipe_dir / "tokenizer"),
        text_encoder=transformers.UMT5EncoderModel.from_pretrained(pipe_dir / "text_encoder"),
        vae=diffusers.AutoencoderKLWan.from_pretrained(pipe_dir / "vae"),
        transformer=diffusers.WanTransformer3DModel.from_pretrained(pipe_dir / "transformer"),
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=7.0),
    )
    pipe.set_progress_bar_config(disable=True)
    gens = [torch.Generator().manual_seed(3 + i) for i in range(len(prompts))]
    negative = embeds(UNIWORLD_NEGATIVE_PROMPT)
    with torch.no_grad():
        ref = pipe(
            prompt_embeds=torch.cat([embeds(p) for p in prompts]),
            negative_prompt_embeds=negative.expand(2, -1, -1),
            height=H, width=W, num_frames=FRAMES, num_inference_steps=2, guidance_scale=5.0, generator=gens,
            output_type="latent",
        ).frames  # fmt: skip
    ref = rearrange(ref, "b c f h w -> b f c h w")
    assert ours.shape == ref.shape
    rel = ((ours - ref).abs().max() / ref.abs().max()).item()
    print(f"UniWorld run vs WanPipeline(prompt_embeds=adapter(VLM)): max|d|/max|ref| = {rel:.2e}")
    assert rel <= 1e-5

    out = tmp_path / "samples"
    args = ["--ckpt", str(run), "--image", str(png), "--prompt", prompts[0], "--steps", "2"]
    args += ["--vlm", str(qwen)]
    run_cmd([sys.executable, "-m", "minivdit.sample", *args, "--out", str(out), "--device", "cpu"])
    assert json.loads((out / "samples.json").read_text())["model"] == "wan-t2v+flashi2v+uniworld"
    with pytest.raises(ValueError, match="give --image FILE"):
        sample_wan(dataclasses.replace(request, image=None))


def test_cached_vlm_features_train_without_the_vlm(tiny, qwen, tmp_path, monkeypatch):
    """``tools/cache_text.py --vlm.path``: the features of each caption (with a black frame: the released
    text decoder never reads pixels) and the null VLM("" + frame) go into the shards, stamped; a run on them
    never loads the VLM; a cache made with other VLM settings, or with ``--vlm.use-vision``, is refused."""
    from test_text import load_tool

    import minivdit.train as train_mod
    from minivdit.data import shards as S

    cfg = uniworld_config(tiny, qwen, tmp_path, max_steps=2)
    out = S.write_clip_shards(cfg.data, tmp_path / "shards", samples_per_shard=2)
    tool = load_tool("cache_text")
    flags = ["--vlm.path", str(qwen), "--vlm.dtype", "float32", "--vlm.max-length", str(VLM_LEN)]
    tool.main(["--root", str(out), *flags, "--dtype", "float32", "--batch-size", "2"])
    dataset = S.ShardDataset(out)
    first = [dataset.get(i) for i in range(2)]  # shard 0, encoded as one batch of its two captions
    vlm = VLMEncoder(VLMConfig(path=str(qwen), dtype="float32", max_length=VLM_LEN))
    want, _ = vlm.encode([s["caption"] for s in first], torch.zeros(2, 3, 240, 416))
    # the same ids through the same weights; only the batch the kernels see may differ: fp32 ulps
    for s, w in zip(first, want):
        torch.testing.assert_close(s["text"].float(), w, rtol=1e-5, atol=1e-5 * w.abs().max().item())
    null, _ = dataset.text_null()
    torch.testing.assert_close(null.float(), vlm.encode([""], torch.zeros(1, 3, 240, 416))[0][0])

    def no_vlm(*a, **k):
        raise AssertionError("the VLM was loaded for a run on cached features")

    monkeypatch.setattr(train_mod, "VLMEncoder", no_vlm)
    data = dataclasses.replace(cfg.data, dataset="shards", root=str(out), labels_csv=None)
    run_dir = train(dataclasses.replace(cfg, data=data))
    assert [r["step"] for r in _rows(run_dir)] == [1, 2]
    other = dataclasses.replace(cfg, data=data, vlm=dataclasses.replace(cfg.vlm, layer=-2), run_name="b")
    with pytest.raises(ValueError, match=r"cached by another text encoder \(differing: layer\)"):
        train(other)
    with pytest.raises(ValueError, match="computes them online"):
        tool.CacheTextConfig(root=str(out), vlm=VLMConfig(path=str(qwen), use_vision=True))


def test_decoupled_f_img_trains_from_the_released_model(tiny, qwen, tmp_path):
    """``--uniworld.f-img decoupled``: the first loss is the released (f_img off) run's bit for bit (zero
    gates; the adapter's draws come first either way); its MLP and gated branches train with the adapter and
    are checkpointed."""
    off = train(uniworld_config(tiny, qwen, tmp_path, max_steps=1, run_name="off"))
    uw = dataclasses.replace(load(RECIPE).config().uniworld, vlm_dim=16, hidden_dim=24, out_dim=32,
                             latent_channels=4, f_img="decoupled")  # fmt: skip
    on = train(uniworld_config(tiny, qwen, tmp_path, max_steps=1, run_name="on", uniworld=uw))
    assert _rows(on)[0]["loss"] == _rows(off)[0]["loss"]
    saved = load_file(str(on / "checkpoints" / "step_0000001" / "model.safetensors"))
    assert {k.split(".")[0] for k in saved} == {"adapter", "image_proj", "image_attn"}
    assert all(saved[f"image_attn.{i}.gate"].abs().max() > 0 for i in range(2))  # trained away from 0


def test_cpu_scale_check_trains_the_synthetic_recipe_and_measures_it(tmp_path):
    """Issue 20 §4's tool end to end, tiny: ``tools/ablate_vlm.py`` makes the tiny VLM, trains
    ``recipes/uniworld_synthetic.py`` from its command line (a subprocess; the pixel-space Wan, the VLM on
    the synthetic captions), then samples every class from its caption and from the empty caption and
    scores them with the synthetic detector; a second call keeps the finished run."""
    from test_text import load_tool

    tool = load_tool("ablate_vlm")
    args = ["--out", str(tmp_path), "--arms", "text", "--seeds", "0", "--steps", "2", "--per-class", "1"]
    results = tool.main([*args, "--sample-steps", "1"])
    assert results["protocol"]["clips"] == 10 and results["protocol"]["real_clips"] >= 0.9
    row = results["runs"]["text_s0"]
    assert 0.0 <= row["caption"] <= 1.0 and 0.0 <= row["empty"] <= 1.0 and np.isfinite(row["final_loss"])
    config = json.loads((tmp_path / "text_s0" / "config.json").read_text())
    assert config["vae"]["kind"] == "none" and config["data"]["synthetic_captions"] is True
    assert (tmp_path / "samples.png").is_file() and (tmp_path / "results.json").is_file()
    tool.train(tmp_path, ["text"], [0], 2)  # done: not retrained
