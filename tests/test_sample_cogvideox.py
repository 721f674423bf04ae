"""CogVideoX sampling (``python -m minivdit.sample --pretrained FOLDER | --ckpt RUN``) on tiny random
diffusers folders (``tiny_cogvideox.py``): end to end, parity with diffusers' own
``CogVideoXImageToVideoPipeline`` / ``CogVideoXPipeline`` (latents before decoding, CFG 6 with and without
``use_dynamic_cfg``), LoRA and full fine-tune runs, the bad-input errors.

How the parity runs share randomness: the pipeline gets ``generator=torch.Generator().manual_seed(s)``, which
draws the VAE posterior sample of the condition image (``retrieve_latents(..., generator)``) and then, when no
``latents=`` is passed, the initial noise. ``sample_cogvideox`` draws the same two things, in that order, from
its own CPU generator seeded ``seed + i`` (our VAE draws its posterior noise in diffusers' layout), so the
whole CLI path is compared with the pipeline on the seed alone. The explicit-noise test passes the same noise
to both (``latents=`` / ``generate(noise=...)``) and seeds both posterior draws with the same generator.

The tiny transformers' weights are N(0, 0.3²) (the recipe tests use 0.05): with 0.05 the text barely moves the
output (CFG 6 vs 1: 8e-6 relative), so a guidance bug would hide under the tolerance; with 0.3 it moves
it by ~8 %.

Run: ``pytest -q tests/test_sample_cogvideox.py`` (CPU, one thread, ~1 min).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import tyro
from einops import rearrange
from oracles import load_file as load_source
from PIL import Image
from safetensors.torch import load_file, save_file
from tiny_cogvideox import (  # tests/ is on sys.path (pytest's rootdir insertion)
    FRAMES,
    TEXT_LEN,
    H,
    W,
    make_clips,
    make_pipeline_folder,
    scheduler_config,
    tiny_config,
    transformer_kwargs,
)

from minivdit.conditioning.i2v import I2VConfig, inference_condition
from minivdit.conditioning.text import T5TextEncoder, TextEncoderConfig
from minivdit.models import cogvideox as cogvideox_module
from minivdit.models.cogvideox import PRESETS, CogVideoXConfig, pad_frames
from minivdit.models.cond import Cond
from minivdit.models.dit import DiTOutput
from minivdit.models.lora import LoRAConfig
from minivdit.objectives.ddpm import dynamic_cfg_scale
from minivdit.sample import (
    SampleConfig,
    cfg_denoise_fn,
    generate,
    load_image,
    load_pretrained_folder,
    pretrained_snr_shift,
    sample,
    sample_cogvideox,
)
from minivdit.train import EMAConfig, OptimConfig, train

diffusers = pytest.importorskip("diffusers")
pytestmark = [
    pytest.mark.usefixtures("single_thread"),
    pytest.mark.filterwarnings("ignore:torch.distributed is disabled"),
]
STD = 0.3
PROMPT = "a red flower blooms"
STEPS = 3
ERRORS: dict[str, float] = {}  # parity, max|Δ| / max|ref| per case (printed at the end of the module)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """Tiny pipeline folders (1.0-I2V like 5B-I2V, 1.0 T2V like 5B, 1.5-I2V), a condition image at the
    sampling size and a captioned clip folder."""
    root = tmp_path_factory.mktemp("cogvideox_sample")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        out = {
            "pipe": make_pipeline_folder(root / "i2v", std=STD),
            "t2v": make_pipeline_folder(root / "t2v", i2v=False, std=STD, seed=1),
            "i2v-1.5": make_pipeline_folder(root / "i2v15", version="1.5", std=STD, seed=2),
            "data": make_clips(root / "clips"),
            "image": root / "cond.png",
        }
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(out["image"])
    yield out
    print("\nCogVideoX sampling parity with diffusers, max|Δ| / max|ref|:", json.dumps(ERRORS))


@pytest.fixture(scope="module")
def runs(tiny, tmp_path_factory) -> dict[str, Path]:
    """One-step runs of the cogvideox_i2v recipe on the tiny I2V folder: LoRA r 4 with EMA (decay 0.5, so the
    EMA differs from the trained adapters), and a full fine-tune without EMA (the recipe's default)."""
    out = tmp_path_factory.mktemp("cogvideox_runs")
    optim = OptimConfig(lr=1e-3, betas=(0.9, 0.95), weight_decay=0.0, grad_clip=1.0)
    base = dict(max_steps=1, optim=optim)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        lora = train(
            tiny_config(
                "cogvideox_i2v",
                tiny,
                out,
                run_name="lora",
                lora=LoRAConfig(rank=4, alpha=8.0),
                ema=EMAConfig(decay=0.5),
                **base,
            )
        )
        full = train(tiny_config("cogvideox_i2v", tiny, out, run_name="full", **base))
    return {"lora": lora, "full": full}


def _cfg(**kw) -> SampleConfig:
    """Our request on the tiny sizes: STEPS steps, CFG 6, fp32 T5 (the run's dtype for ``--ckpt``)."""
    base = dict(prompt=(PROMPT,), steps=STEPS, cfg_scale=6.0, seed=3, device="cpu")
    if kw.get("pretrained") is not None:
        base["text_dtype"] = "float32"
    return SampleConfig(**(base | kw))


def _pipeline(folder: Path, i2v: bool):
    """diffusers' own pipeline, every component loaded from the folder; the scheduler is
    ``DDPMConfig.cogvideox()``."""
    from transformers import AutoTokenizer, T5EncoderModel

    cls = diffusers.CogVideoXImageToVideoPipeline if i2v else diffusers.CogVideoXPipeline
    pipe = cls(
        tokenizer=AutoTokenizer.from_pretrained(folder / "tokenizer"),
        text_encoder=T5EncoderModel.from_pretrained(folder / "text_encoder"),
        vae=diffusers.AutoencoderKLCogVideoX.from_pretrained(folder / "vae"),
        transformer=diffusers.CogVideoXTransformer3DModel.from_pretrained(folder / "transformer"),
        scheduler=diffusers.CogVideoXDDIMScheduler(**scheduler_config()),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run_pipeline(pipe, tiny, i2v: bool, **kw) -> torch.Tensor:
    image = dict(image=Image.open(tiny["image"]).convert("RGB")) if i2v else {}
    args = dict(prompt=PROMPT, height=H, width=W, num_frames=FRAMES, num_inference_steps=STEPS)
    args |= dict(guidance_scale=6.0, output_type="latent", max_sequence_length=TEXT_LEN)
    with torch.no_grad():
        return pipe(**image, **(args | kw)).frames


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return ((a - ref).abs().max() / ref.abs().max()).item()


# max|Δ| / max|ref| of two samplings that may run other fp32 kernels (the pipeline's batch layout, a batch
# of 2 vs 1): a forward of the 2-block, width-32 transformer ≈ √(Σk)·u ≈ √1000·6e-8 ≈ 2e-6 of its output;
# guidance at 6 takes 6·δ_cond − 5·δ_uncond (≈ 8× that) and 3 DDIM steps add up: ≈ √3·8·2e-6 ≈ 3e-5.
PARITY = 5e-5


# ---------------------------------------------------------------------------------------------- end to end


def test_pretrained_end_to_end(tiny, tmp_path):
    long = "ice melts slowly over a very long time in the city at night while the sun rises"
    args = ["--pretrained", str(tiny["pipe"]), "--image", str(tiny["image"]), "--prompt", PROMPT]
    args += ["--prompt", long, "--steps", "3", "--out", str(tmp_path / "s"), "--text-dtype", "float32"]
    args += ["--device", "cpu", "--batch-size", "2"]
    out = sample(tyro.cli(SampleConfig, args=args))
    assert out == tmp_path / "s"
    for name in ("0000.mp4", "0001.mp4", "grid.mp4", "grid.gif", "contact.png"):
        assert (out / name).stat().st_size > 0, name
    assert not (out / "0002.mp4").exists()
    with Image.open(out / "grid.gif") as gif:
        assert gif.n_frames == FRAMES
    record = json.loads((out / "samples.json").read_text())
    assert record["prompts"] == [PROMPT, long] and record["seeds"] == [0, 1]
    assert record["cfg_scale"] == 6.0 and record["size"] == [H, W] and record["num_frames"] == FRAMES


def test_cli_parses():
    args = ["--ckpt", "runs/r", "--image", "c.png", "--frame-index", "24", "--prompt", "a b", "--prompt", "c"]
    args += ["--text-encoder", "T5", "--dynamic-cfg", "--num-frames", "49", "--size", "480", "720"]
    cfg = tyro.cli(SampleConfig, args=args + ["--cfg-scale", "6", "--steps", "50"])
    assert cfg == SampleConfig(
        ckpt="runs/r",
        image="c.png",
        frame_index=24,
        prompt=("a b", "c"),
        text_encoder="T5",
        dynamic_cfg=True,
        num_frames=49,
        size=(480, 720),
        cfg_scale=6.0,
        steps=50,
    )


# ---------------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("dynamic", [False, True], ids=["cfg6", "dynamic"])
@pytest.mark.parametrize("variant", ["pipe", "t2v", "i2v-1.5"])
def test_seed_parity_with_diffusers_pipeline(tiny, variant, dynamic, monkeypatch):
    """The CLI path (prompt encoding, image loading, seeded draws, CFG, sampler; 1.5: the front padding
    frame) against the pipeline called with the same seed and nothing else."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tiny[variant]
    i2v = variant != "t2v"
    ref = _run_pipeline(
        _pipeline(folder, i2v), tiny, i2v, use_dynamic_cfg=dynamic, generator=torch.Generator().manual_seed(3)
    )
    ours, _, _ = sample_cogvideox(
        _cfg(pretrained=str(folder), image=str(tiny["image"]) if i2v else None, dynamic_cfg=dynamic)
    )
    pad = ref.shape[1] - ours.shape[1]  # output_type="latent" keeps 1.5's padding frame in front
    assert pad == (1 if variant == "i2v-1.5" else 0)
    ERRORS[f"seed/{variant}/{'dynamic' if dynamic else 'cfg6'}"] = err = _rel(ours, ref[:, pad:])
    assert err <= PARITY


@pytest.mark.parametrize("dynamic", [False, True], ids=["cfg6", "dynamic"])
def test_noise_parity_with_diffusers_pipeline(tiny, dynamic, monkeypatch):
    """``generate(noise=...)`` with the pipeline's ``latents=`` (the same tensor) and the image condition
    drawn from the same seeded generator on both sides; guidance visibly matters at this size."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tiny["pipe"]
    noise = torch.randn(1, 3, 4, H // 8, W // 8, generator=torch.Generator().manual_seed(11))
    ref = _run_pipeline(
        _pipeline(folder, True),
        tiny,
        True,
        latents=noise.clone(),
        use_dynamic_cfg=dynamic,
        generator=torch.Generator().manual_seed(5),
    )
    model, objective, vae, _ = load_pretrained_folder(folder)
    encoder = T5TextEncoder(TextEncoderConfig(path=str(folder), max_length=TEXT_LEN, dtype="float32"))
    context, _ = encoder.encode([PROMPT])
    image = load_image(tiny["image"], (H, W))
    g = torch.Generator().manual_seed(5)
    cond = Cond(context=context, image_latents=inference_condition(image, vae, FRAMES, generator=g))
    null = cond.null(context=encoder.empty())
    kw = dict(cond=cond, null=null, shape=tuple(noise.shape), noise=noise, steps=STEPS, dynamic_cfg=dynamic)
    ours = generate(model, objective, cfg_scale=6.0, seed=0, device=torch.device("cpu"), **kw)
    ERRORS[f"noise/pipe/{'dynamic' if dynamic else 'cfg6'}"] = err = _rel(ours, ref)
    assert err <= PARITY
    unguided = generate(model, objective, cfg_scale=1.0, seed=0, device=torch.device("cpu"), **kw)
    assert _rel(unguided, ref) > 1e-3  # the comparison can see a guidance error


@pytest.mark.parametrize("variant", ["pipe", "t2v"])
def test_dpm_seed_parity_with_diffusers_pipeline(tiny, variant, monkeypatch):
    """``--sampler dpm --dynamic-cfg`` (CogVideo's recommendation for 5B and 5B-I2V), parsed as typed,
    against the pipeline with ``CogVideoXDPMScheduler`` and the same seed: the scheduler's step noise
    continues the generator that drew the condition and the initial noise, on both sides. PARITY holds as
    for DDIM: the step noise is the same numbers, so only the forward's rounding propagates (3 steps)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder, i2v = tiny[variant], variant != "t2v"
    pipe = _pipeline(folder, i2v)
    pipe.scheduler = diffusers.CogVideoXDPMScheduler.from_config(pipe.scheduler.config)
    ref = _run_pipeline(pipe, tiny, i2v, use_dynamic_cfg=True, generator=torch.Generator().manual_seed(3))
    args = ["--pretrained", str(folder), "--prompt", PROMPT, "--steps", str(STEPS), "--cfg-scale", "6"]
    args += ["--seed", "3", "--device", "cpu", "--text-dtype", "float32", "--sampler", "dpm", "--dynamic-cfg"]
    args += ["--image", str(tiny["image"])] if i2v else []
    ours, _, record = sample_cogvideox(tyro.cli(SampleConfig, args=args))
    assert record["sampler"] == "dpm"
    ERRORS[f"seed/{variant}/dpm-dynamic"] = err = _rel(ours, ref)
    assert err <= PARITY


# ---------------------------------------------------------------------------------------------- runs


@pytest.mark.parametrize("how", ["negative", "zeros"])
def test_negative_prompt_and_zero_null_text_match_the_pipeline(tiny, how, monkeypatch):
    """``--negative-prompt`` is the pipelines' ``negative_prompt``; ``--text-null zeros`` (SAT's unconditional
    text, ``force_uc_zero_embeddings``) is the pipeline given all-zero ``negative_prompt_embeds``. Typed as a
    user types them; PARITY as above. Without them the sample differs (the null text matters here)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tiny["t2v"]
    pipe = _pipeline(folder, False)
    if how == "negative":
        flags, kw = ["--negative-prompt", "ice melts"], dict(negative_prompt="ice melts")
    else:  # the pipeline takes negative_prompt_embeds only with prompt_embeds
        no_cfg = dict(do_classifier_free_guidance=False, max_sequence_length=TEXT_LEN)
        embeds, _ = pipe.encode_prompt(PROMPT, **no_cfg)
        flags = ["--text-null", "zeros"]
        kw = dict(prompt=None, prompt_embeds=embeds, negative_prompt_embeds=torch.zeros_like(embeds))
    ref = _run_pipeline(pipe, tiny, False, generator=torch.Generator().manual_seed(3), **kw)
    args = ["--pretrained", str(folder), "--prompt", PROMPT, "--steps", str(STEPS), "--cfg-scale", "6"]
    args += ["--seed", "3", "--device", "cpu", "--text-dtype", "float32", *flags]
    ours, _, record = sample_cogvideox(tyro.cli(SampleConfig, args=args))
    ERRORS[f"null/{how}"] = err = _rel(ours, ref)
    assert err <= PARITY
    assert record["text_null"] == ("zeros" if how == "zeros" else "empty")
    assert record["negative_prompts"] == (["ice melts"] if how == "negative" else [])
    plain, _, _ = sample_cogvideox(_cfg(pretrained=str(folder)))
    assert _rel(plain, ref) > 1e-3
    with pytest.raises(ValueError, match="2 --negative-prompt for 1 --prompt"):
        sample_cogvideox(_cfg(pretrained=str(folder), negative_prompt=("a", "b")))


def _zero_adapters(ckpt: Path, dst: Path) -> Path:
    """A copy of a LoRA checkpoint whose adapters have B = 0 (what a fresh LoRA starts from)."""
    shutil.copytree(ckpt, dst)
    for name in ("model.safetensors", "ema.safetensors"):
        state = load_file(str(dst / name))
        assert state and all(".lora_" in k for k in state)  # the adapters only
        save_file(
            {k: torch.zeros_like(v) if ".lora_B." in k else v for k, v in state.items()}, str(dst / name)
        )
    return dst


def test_lora_run_differs_from_the_base_only_through_the_adapters(tiny, runs, tmp_path):
    image = str(tiny["image"])
    # the base with the run's unconditional text and sampler (the recipe's --text.null zeros and DPM;
    # --pretrained's: T5("") and DDIM)
    base, _, _ = sample_cogvideox(
        _cfg(pretrained=str(tiny["pipe"]), image=image, text_null="zeros", sampler="dpm")
    )
    ema, _, record = sample_cogvideox(_cfg(ckpt=str(runs["lora"]), image=image))
    raw, _, _ = sample_cogvideox(_cfg(ckpt=str(runs["lora"]), image=image, use_ema=False))
    assert record["ckpt"].endswith("step_0000001") and record["use_ema"] is True
    assert _rel(ema, base) > 1e-4 and _rel(raw, base) > 1e-4 and _rel(raw, ema) > 1e-5
    zero = _zero_adapters(runs["lora"] / "checkpoints" / "step_0000001", tmp_path / "zero")
    same, _, _ = sample_cogvideox(_cfg(ckpt=str(zero), image=image))
    assert torch.equal(same, base)  # B = 0: exactly the base model, same noise, same condition
    meta = json.loads((zero / "meta.json").read_text())
    meta["config"]["pretrained"] = str(tmp_path / "moved")
    (zero / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"adapters only.*base folder \(pretrained='.*moved'"):
        sample_cogvideox(_cfg(ckpt=str(zero), image=image))


def test_full_finetune_without_ema_falls_back_to_the_trained_weights(tiny, runs, tmp_path, caplog):
    image = str(tiny["image"])
    base, _, _ = sample_cogvideox(_cfg(pretrained=str(tiny["pipe"]), image=image))
    with caplog.at_level(logging.INFO, logger="minivdit"):
        out = sample(_cfg(ckpt=str(runs["full"]), image=image, out=str(tmp_path / "s")))
    fallback = [r for r in caplog.records if "no ema.safetensors" in r.getMessage()]
    assert len(fallback) == 1 and "model.safetensors" in fallback[0].getMessage()
    assert (out / "0000.mp4").stat().st_size > 0 and (out / "contact.png").stat().st_size > 0
    default, _, _ = sample_cogvideox(_cfg(ckpt=str(runs["full"]), image=image))
    raw, _, _ = sample_cogvideox(_cfg(ckpt=str(runs["full"]), image=image, use_ema=False))
    assert torch.equal(default, raw) and _rel(raw, base) > 1e-4


# ---------------------------------------------------------------------------------------------- bad input


def test_bad_input(tiny, runs, tmp_path, make_tiny_cfg):
    pipe, image, out = str(tiny["pipe"]), str(tiny["image"]), str(tmp_path / "x")
    cases = [
        (dict(pretrained=pipe, image=image, classes=(1,)), r"--classes \(1,\): CogVideoX .* no class label"),
        (dict(ckpt=str(runs["lora"]), image=image, classes=(0, 2)), r"--classes \(0, 2\)"),
        (dict(pretrained=pipe, image=image, prompt=()), "give --prompt"),
        (dict(pretrained=pipe), "image-to-video .* give --image"),
        (dict(pretrained=str(tiny["t2v"]), image=image), "--image .* text-to-video"),
        (dict(pretrained=pipe, image=image, size=(40, 48)), "--size 40 48: .* multiples of 16"),
        (dict(pretrained=pipe, image=image, num_frames=10), r"--num-frames 10: .* 4k\+1 .*: 9 or 13"),
        (
            dict(pretrained=pipe, image=image, frame_index=9),
            r"--frame-index 9 is outside the clip of 9 frames",
        ),
        (dict(pretrained=pipe, image=image, frame_index=-1), r"--frame-index -1 is outside .* \(0\.\.8\)"),
        (
            dict(pretrained=pipe, image=image, size=(48, 48)),
            "learned position embedding .* 9 frames of 32x48",
        ),
        (dict(pretrained=pipe, image=str(tmp_path / "none.png")), "none.png: no such file"),
        (dict(pretrained=str(tiny["t2v"]), frame_index=4), "--frame-index 4 needs an image-to-video"),
        (
            dict(pretrained=str(tiny["i2v-1.5"]), image=image, frame_index=4),
            "CogVideoX 1.5 pads an odd latent count in front, which only first-frame conditioning supports",
        ),
        (
            dict(ckpt=str(runs["lora"]), image=image, snr_shift_scale=3.0),
            "--snr-shift-scale is for --pretrained",
        ),
    ]
    for kw, message in cases:
        with pytest.raises(ValueError, match=message):
            sample(_cfg(out=out, **kw))
    with pytest.raises(ValueError, match="exactly one"):
        SampleConfig(prompt=(PROMPT,))
    with pytest.raises(ValueError, match="exactly one"):
        SampleConfig(ckpt=str(runs["lora"]), pretrained=pipe)
    vdit = train(make_tiny_cfg(tmp_path / "vdit", max_steps=1))
    with pytest.raises(ValueError, match="--image is for .* this run is a V-DiT without an image condition"):
        sample(_cfg(ckpt=str(vdit), out=out, prompt=(), image=image))
    for kw, flag in (
        (dict(), "--prompt"),
        (dict(prompt=(), size=(32, 48)), "--size"),
        (dict(prompt=(), sampler="dpm"), "--sampler"),
    ):
        with pytest.raises(ValueError, match=f"{flag}.* is for CogVideoX; this run is a V-DiT"):
            sample(_cfg(ckpt=str(vdit), out=out, **kw))
    assert not Path(out).exists()


# ---------------------------------------------------------------------------------------------- CogVideoX 1.5


def test_pad_frames_as_cogvideo_15_trainer():
    """``pad_frames`` against CogVideo's 1.5 trainer (``finetune/models/cogvideox_i2v/lora_trainer.py:
    compute_loss``, inherited by ``cogvideox1dot5_i2v``), re-stated below as the oracle in its [B, C, F, H, W]
    layout: 81 frames → 21 latents, scaled down to 3. Copies and concatenations only: exact."""
    cfg = PRESETS["CogVideoX1.5-5B-I2V"]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 2, 2, generator=g)  # [B, F' = 3 (odd), C, h, w]
    img = torch.randn(2, 1, 4, 2, 2, generator=g)
    first = torch.cat([img, torch.zeros(2, 2, 4, 2, 2)], dim=1)  # [img, 0, 0]: conditioning.i2v mode "first"
    # the oracle: ncopy = F % p_t copies of latent 0 in front; image latents + (F_padded − 1) zeros
    latent = x.permute(0, 2, 1, 3, 4)  # [B, C, F, H, W]
    ncopy = latent.shape[2] % 2
    latent = torch.cat([latent[:, :, :1].repeat(1, 1, ncopy, 1, 1), latent], dim=2).permute(0, 2, 1, 3, 4)
    want_img = torch.cat([img, img.new_zeros(2, latent.shape[1] - 1, 4, 2, 2)], dim=1)
    padded, cond = pad_frames(cfg, x, Cond(image_latents=first))
    assert padded.shape[1] == 4 and torch.equal(padded, latent) and torch.equal(cond.image_latents, want_img)
    # a whole-clip condition (anyframe, i > 0) is shifted with the video latents, frame for frame
    clip = torch.randn(2, 3, 4, 2, 2, generator=g)
    _, cond = pad_frames(cfg, x, Cond(image_latents=clip))
    assert torch.equal(cond.image_latents, torch.cat([clip[:, :1], clip], dim=1))
    # nothing to do: an even count, a 1.0 model, a V-DiT (no CogVideoX config)
    for c, f in ((cfg, 4), (PRESETS["CogVideoX-5B-I2V"], 3), (None, 3)):
        y = torch.randn(1, f, 4, 2, 2, generator=g)
        assert pad_frames(c, y, Cond())[0] is y
    with pytest.raises(ValueError, match="latent frames of the video latents"):
        pad_frames(cfg, x, Cond(image_latents=clip[:, :2]))


def test_cogvideox15_odd_latent_count_trains_padded(tiny, tmp_path, monkeypatch):
    """A 1.5-I2V run on 9-frame clips (3 latents: odd, as 81 → 21) trains instead of raising in the forward:
    ``train_step`` pads the video latents to 4 and the image latents to ``[img, 0, 0, 0]``."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    seen, real = [], cogvideox_module.pad_frames

    def spy(cfg, x_data, cond):
        out = real(cfg, x_data, cond)
        seen.append((x_data.shape[1], out[0], out[1].image_latents))
        return out

    monkeypatch.setattr(cogvideox_module, "pad_frames", spy)
    folders = {"pipe": tiny["i2v-1.5"], "data": tiny["data"]}
    first = I2VConfig(mode="first", dropout=0.0)  # CogVideoX-I2V's condition (the recipe's is anyframe)
    train(tiny_config("cogvideox_i2v", folders, tmp_path, run_name="v15", max_steps=1, i2v=first))
    frames, x_data, image = seen[0]
    assert frames == 3 and x_data.shape[1] == 4 and torch.equal(x_data[:, 0], x_data[:, 1])
    assert image.shape[1] == 4 and not image[:, 1:].any() and image[:, 0].any()


def test_cogvideox_vae_moments_are_what_encode_samples(tiny):
    """``tools/cache_latents.py``'s scaled moments of the CogVideoX VAE (issue 18 §2.6): the mean is
    ``encode``'s posterior mean, and mean + exp(logvar / 2)·ε is ``encode``'s posterior sample for the same ε
    (drawn in diffusers' [B, C, F', h, w] layout, as ``encode`` draws it)."""
    from minivdit.models.vae.cogvideox import CogVideoXVAE

    tool = load_source("tool_cache_latents", Path(__file__).parents[1] / "tools" / "cache_latents.py")
    folder = tiny["pipe"] / "vae"
    video = torch.rand(1, FRAMES, 3, H, W, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        vae = CogVideoXVAE.from_pretrained(folder, sample_posterior=False).eval()
        mean, logvar = tool.scaled_moments(vae, video)  # [1, 3, C, h, w] each
        assert torch.equal(mean, vae.encode(video))  # (μ − 0)·s and μ·s: the same product, bit for bit
        drawn = CogVideoXVAE.from_pretrained(folder).eval().encode(video, torch.Generator().manual_seed(1))
    B, F_lat, C, h, w = mean.shape
    eps = torch.randn(B, C, F_lat, h, w, generator=torch.Generator().manual_seed(1))
    ours = mean + torch.exp(0.5 * logvar) * rearrange(eps, "b c f h w -> b f c h w")
    # s·(μ + e^(lv/2)·ε) against s·μ + e^((lv + 2 log s)/2)·ε: the same value through other fp32 roundings
    # (the exp of a shifted argument, log s rounded, one product moved): a few ulp, ≲ 1e-6 relative per term
    torch.testing.assert_close(ours, drawn, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------- pieces


class _Stub(torch.nn.Module):
    """pred = x + 10·label: guidance is visible in the output."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.calls = 0

    def forward(self, x, t_model, cond):
        self.calls += 1
        return DiTOutput(pred=x + 10.0 * cond.label.float().view(-1, 1, 1, 1, 1))


def test_dynamic_cfg_weight_per_sample():
    """``dynamic_steps``: w = dynamic_cfg_scale(scale, t_model, N) per sample; scale <= 1: no guidance."""
    x = torch.randn(2, 2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([999.0, 19.0])
    cond, null = Cond(label=torch.tensor([2, 3])), Cond(label=torch.tensor([0, 0]))
    y = 10.0 * cond.label.float().view(-1, 1, 1, 1, 1)  # cond − uncond of the stub
    got = cfg_denoise_fn(_Stub(), cond, null, scale=6.0, guided_channels=3, dynamic_steps=50)(x, t)
    w = dynamic_cfg_scale(6.0, t, 50).float()  # 1 + 6·(1 − cos(π((50 − t)/50)^5))/2, per sample
    assert w[1] == pytest.approx(1 + 6 * (1 - np.cos(np.pi * 0.62**5)) / 2) and w[0] != w[1]
    torch.testing.assert_close(got, x + w.view(-1, 1, 1, 1, 1) * y)
    fixed = cfg_denoise_fn(_Stub(), cond, null, scale=6.0, guided_channels=3)(x, t)
    torch.testing.assert_close(fixed, x + 6.0 * y)
    stub = _Stub()  # as the pipeline: a scale <= 1 turns guidance off, dynamic or not
    off = cfg_denoise_fn(stub, cond, null, scale=1.0, guided_channels=3, dynamic_steps=50)(x, t)
    assert torch.equal(off, x + y) and stub.calls == 1


def test_load_image_covers_and_centre_crops(tmp_path):
    rng = np.random.default_rng(1)
    exact = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    Image.fromarray(exact).save(tmp_path / "exact.png")
    got = load_image(tmp_path / "exact.png", (H, W))
    assert got.shape == (1, 3, H, W) and got.dtype == torch.float32
    want = torch.from_numpy(exact.astype(np.float32) / 255.0 * 2.0 - 1.0).permute(2, 0, 1)
    assert torch.equal(got[0], want)  # no resampling at the right size: diffusers' x / 255 · 2 − 1
    tall = np.zeros((4 * H, W, 3), dtype=np.uint8)  # a 4:1.5 portrait: the middle band survives the crop
    tall[: 3 * H // 2] = 255
    tall[5 * H // 2 :] = 255
    Image.fromarray(tall).save(tmp_path / "tall.png")
    got = load_image(tmp_path / "tall.png", (H, W))
    assert got.shape == (1, 3, H, W) and got.min() >= -1 and got.max() <= 1
    assert got[:, :, 2:-2].max() == -1.0  # the black middle band, aspect kept (a stretch would show white)
    with pytest.raises(ValueError, match="cannot read it as an image"):
        (tmp_path / "bad.png").write_bytes(b"not a png")
        load_image(tmp_path / "bad.png", (H, W))


def test_pretrained_snr_shift(tmp_path):
    for name, version, want in (("5b", "1.0", 1.0), ("2b", "2b", 3.0)):
        folder = tmp_path / name / "transformer"
        folder.mkdir(parents=True)
        kw = transformer_kwargs(i2v=False, version=version)
        (folder / "config.json").write_text(json.dumps(CogVideoXConfig(**kw).to_dict()))
        assert pretrained_snr_shift(tmp_path / name) == want  # no scheduler/: inferred from RoPE
    sched = tmp_path / "5b" / "scheduler"
    sched.mkdir()
    (sched / "scheduler_config.json").write_text(json.dumps(scheduler_config(3.0)))
    assert pretrained_snr_shift(tmp_path / "5b") == 3.0  # the folder's own scheduler wins


def test_anyframe_condition_and_bf16(tiny):
    """``--frame-index 4`` (anyframe: the image in a clip of noise, encoded whole) gives another video than
    the first-frame condition; bf16 weights under autocast run."""
    image, pipe = str(tiny["image"]), str(tiny["pipe"])
    first, _, _ = sample_cogvideox(_cfg(pretrained=pipe, image=image))
    middle, _, record = sample_cogvideox(_cfg(pretrained=pipe, image=image, frame_index=4))
    assert record["frame_index"] == 4 and _rel(middle, first) > 1e-2
    half, _, _ = sample_cogvideox(_cfg(pretrained=pipe, image=image, frame_index=4, precision="bf16"))
    assert half.dtype == torch.float32 and torch.isfinite(half).all() and _rel(half, middle) < 0.5


def test_same_seed_same_sample_whatever_the_batch(tiny):
    """Sample i is drawn from seed + i: the second of two prompts batched together is the single-prompt
    sample with seed + 1 (up to the kernels' batch-size rounding)."""
    image, pipe = str(tiny["image"]), str(tiny["pipe"])
    both, _, _ = sample_cogvideox(
        _cfg(pretrained=pipe, image=image, prompt=(PROMPT, "ice melts"), batch_size=2)
    )
    second, _, _ = sample_cogvideox(_cfg(pretrained=pipe, image=image, prompt=("ice melts",), seed=4))
    assert _rel(both[1:], second) <= PARITY
