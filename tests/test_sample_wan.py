"""Wan 2.1 sampling (``python -m minivdit.sample --pretrained WAN_FOLDER --prompt … [--image …]``) on tiny
random diffusers pipeline folders: the latents equal diffusers' own ``WanPipeline`` /
``WanImageToVideoPipeline`` (``output_type="latent"``) for the same seed, with UniPC and Euler, CFG 5, a
negative prompt; end to end (mp4s + samples.json); the bad-input errors.

The folders hold what a released ``*-Diffusers`` folder holds, tiny and with every parameter random (norms
and modulation tables included): ``transformer/`` (``WanTransformer3DModel``, 2 heads of 12, 2 layers),
``vae/`` (``AutoencoderKLWan``, 4 latent channels, 4× time, 8× space), ``text_encoder/`` + ``tokenizer/``
(UMT5, ``make_tiny_t5``), ``scheduler/`` (UniPC, flow shift 3) and for I2V ``image_encoder/`` +
``image_processor/`` (``make_tiny_clip_vision``). Requests are parsed by the real CLI parser.

How the two sides share randomness: the pipeline gets ``generator=[Generator().manual_seed(seed + i)]`` per
prompt, which draws the initial noise [1, C, F', h, w] of sample i (the I2V condition is the posterior mean:
no draw); ``sample_wan`` draws the same from its own generators seeded ``seed + i`` and permutes it to
[1, F', C, h, w].

Run: ``pytest -q tests/test_sample_wan.py`` (CPU, one thread, ~10 s).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import tyro
from einops import rearrange
from PIL import Image

from minivdit.conditioning.clip_image import make_tiny_clip_vision
from minivdit.conditioning.text import make_tiny_t5
from minivdit.sample import SampleConfig, sample, sample_wan

diffusers = pytest.importorskip("diffusers")
pytestmark = [
    pytest.mark.usefixtures("single_thread"),
    pytest.mark.filterwarnings("ignore:torch.distributed is disabled"),
]
H, W, FRAMES = 32, 48, 5  # latents 2 × 4 × 6: non-square, two latent frames (frame 0 and one of 4 frames)
STEPS, SEED = 3, 3
PROMPTS = ("a red flower blooms", "ice melts slowly over the city at night")
TEXT_DIM, IMAGE_DIM = 32, 32  # the tiny UMT5's and CLIP's widths
ERRORS: dict[str, float] = {}
# max|Δ| / max|ref| of our latents vs the pipeline's. Both sides run the same models on the same inputs with
# the same sampler arithmetic (tests/test_flow_wan.py: bit-identical loops); what may differ is fp32 rounding
# order: (1) our transformer runs CFG's halves as one batch of 2 where the pipeline makes two calls, and
# GEMMs may block sums differently per batch shape: a reordered sum of K ≤ 32 terms (ffn_dim; the cross-
# attention's softmax-weighted sums over 512 text tokens are dominated by a few) errs by ≤ √K·u ≈ 3.4e-7
# relative typically, per layer, ≈ 1e-6 through 2 blocks and the head; (2) I2V: our VAE encodes the
# condition with its own kernels, ≈ 7e-6 of max |ref| worst case (tests/test_vae_wan.py), but that error
# enters both CFG halves alike and reaches the output through a patch embedding with weights N(0, 1/fan_in)
# over 12·4 inputs, ≈ 1e-6 of the latents. CFG 5 forms 5·cond − 4·uncond: the independent parts of (1)
# grow ≈ √(25 + 16) ≈ 6.4×, ≈ 6e-6; 3 steps of UniPC / Euler weight them with Σ|Δσ| = 1. Issue 19's bound
# 1e-5 holds with this estimate; a wiring mistake (wrong mask, noise layout, shift, null text) is ≫ 1e-3.
PARITY = 1e-5


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Every parameter random, activations O(1): norm gains ~ 1 + N(0, 0.2²), modulation tables ~ N(0, 0.5²)
    (shift, scale and gate far from their init), biases ~ N(0, 0.1²), weights ~ N(0, 1/fan_in)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("scale_shift_table"):
                p.copy_(0.5 * noise)
            elif p.ndim == 1 and ("norm" in name or name.endswith("gamma")) and not name.endswith("bias"):
                p.copy_(1 + 0.2 * noise)
            elif p.ndim <= 1:
                p.copy_(0.1 * noise)
            else:
                p.copy_(noise / p[0].numel() ** 0.5)


def _make_folder(root: Path, *, i2v: bool) -> Path:
    """A tiny Wan diffusers pipeline folder (module docstring), written offline."""
    import transformers

    make_tiny_t5(root, seed=1, model_type="umt5")
    umt5 = transformers.UMT5EncoderModel.from_pretrained(root / "text_encoder", local_files_only=True)
    _randomise(umt5, seed=2)
    umt5.save_pretrained(root / "text_encoder")
    vae = diffusers.AutoencoderKLWan(
        base_dim=8,
        z_dim=4,
        dim_mult=[1, 2, 2, 2],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.3, -0.7, 1.1, 0.05],
        latents_std=[1.7, 0.6, 2.4, 1.2],
    )
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # convs keep PyTorch's random init; RMS-norm gains made visibly per channel
        for name, p in vae.named_parameters():
            if name.endswith("gamma"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
    vae.save_pretrained(root / "vae")
    config = dict(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=4,
        out_channels=4,
        text_dim=TEXT_DIM,
        freq_dim=256,
        ffn_dim=32,
        num_layers=2,
        rope_max_seq_len=32,
    )
    if i2v:  # 4 mask + 4 condition channels after the noisy latents; CLIP tokens of width IMAGE_DIM
        config |= dict(in_channels=4 + 4 + 4, image_dim=IMAGE_DIM, added_kv_proj_dim=24)
    transformer = diffusers.WanTransformer3DModel(**config)
    _randomise(transformer, seed=4 + i2v)
    transformer.save_pretrained(root / "transformer")
    scheduler = diffusers.UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=3.0
    )
    scheduler.save_pretrained(root / "scheduler")
    if i2v:
        make_tiny_clip_vision(root, seed=6)
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("wan_sample")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        out = {"t2v": _make_folder(root / "t2v", i2v=False), "i2v": _make_folder(root / "i2v", i2v=True)}
    rng = np.random.default_rng(0)
    out["image"] = root / "cond.png"
    Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(out["image"])
    yield out
    print("\nWan sampling parity with diffusers, max|Δ| / max|ref|:", json.dumps(ERRORS))


def _args(folder: Path, *extra: str, size=(H, W), frames=FRAMES) -> list[str]:
    args = ["--pretrained", str(folder), "--size", *map(str, size), "--num-frames", str(frames)]
    args += ["--steps", str(STEPS), "--seed", str(SEED), "--text-dtype", "float32", "--device", "cpu"]
    return args + list(extra)


def _prompt_args(prompts=PROMPTS) -> list[str]:
    return [a for p in prompts for a in ("--prompt", p)]


def _pipeline(folder: Path, i2v: bool, sampler: str):
    """diffusers' own pipeline with every component loaded from the folder; the scheduler is the folder's
    (UniPC) or ``FlowMatchEulerDiscreteScheduler`` with the same shift."""
    import transformers
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    scheduler = diffusers.UniPCMultistepScheduler.from_pretrained(folder / "scheduler")
    if sampler == "euler":
        scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    parts = dict(
        tokenizer=transformers.AutoTokenizer.from_pretrained(folder / "tokenizer"),
        text_encoder=transformers.UMT5EncoderModel.from_pretrained(folder / "text_encoder"),
        vae=diffusers.AutoencoderKLWan.from_pretrained(folder / "vae"),
        transformer=diffusers.WanTransformer3DModel.from_pretrained(folder / "transformer"),
        scheduler=scheduler,
    )
    if i2v:  # the PIL backend: transformers 5's default CLIPImageProcessor needs torchvision
        parts["image_encoder"] = transformers.CLIPVisionModel.from_pretrained(folder / "image_encoder")
        parts["image_processor"] = CLIPImageProcessorPil.from_pretrained(folder / "image_processor")
    pipe = (diffusers.WanImageToVideoPipeline if i2v else diffusers.WanPipeline)(**parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _reference(tiny, i2v: bool, sampler: str = "unipc", **kw) -> torch.Tensor:
    """The pipeline's latents [B, F', C, h, w] for PROMPTS at SEED (one generator per prompt)."""
    from diffusers.pipelines.wan import pipeline_wan, pipeline_wan_i2v

    pipe = _pipeline(tiny["i2v" if i2v else "t2v"], i2v, sampler)
    gens = [torch.Generator().manual_seed(SEED + i) for i in range(len(PROMPTS))]
    args = dict(prompt=list(PROMPTS), height=H, width=W, num_frames=FRAMES, num_inference_steps=STEPS)
    args |= dict(guidance_scale=5.0, generator=gens, output_type="latent", max_sequence_length=512)
    if i2v:
        args["image"] = Image.open(tiny["image"]).convert("RGB")
    # diffusers 0.42.1's I2V module calls ftfy unguarded (pipeline_wan_i2v.py l.97) and ftfy is not
    # installed here; its T2V module's prompt_clean is the same function with the guard (pipeline_wan.py
    # l.78-93), as minivdit's prompt_clean
    with torch.no_grad(), pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline_wan_i2v, "prompt_clean", pipeline_wan.prompt_clean)
        frames = pipe(**(args | kw)).frames  # [B, C, F', h, w]
    return rearrange(frames, "b c f h w -> b f c h w")


def _check(name: str, ours: torch.Tensor, ref: torch.Tensor) -> None:
    assert ours.shape == ref.shape == (len(PROMPTS), 2, 4, H // 8, W // 8), (ours.shape, ref.shape)
    rel = ((ours - ref).abs().max() / ref.abs().max()).item()
    ERRORS[name] = rel
    assert ours.isfinite().all() and rel <= PARITY, (name, rel)


# ---------------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("sampler", ["unipc", "euler"])
def test_t2v_matches_wan_pipeline(tiny, sampler):
    """``WanPipeline``: the folder's UniPC (default) and ``--sampler euler``, CFG 5 against the empty prompt,
    two prompts at batch size 2 (one doubled CFG batch of 4)."""
    extra = ["--sampler", "euler"] if sampler == "euler" else []
    cfg = tyro.cli(SampleConfig, args=_args(tiny["t2v"], *_prompt_args(), "--batch-size", "2", *extra))
    ours, _, record = sample_wan(cfg)
    _check(f"t2v-{sampler}", ours, _reference(tiny, False, sampler))
    assert record["sampler"] == sampler and record["flow_shift"] == 3.0 and record["cfg_scale"] == 5.0
    # the text matters: without guidance the latents move far beyond the tolerance
    unguided = sample_wan(
        tyro.cli(SampleConfig, args=_args(tiny["t2v"], *_prompt_args(), "--cfg-scale", "1"))
    )
    assert (unguided[0] - ours).abs().max() > 100 * PARITY * ours.abs().max()


def test_i2v_matches_wan_image_to_video_pipeline(tiny):
    """``WanImageToVideoPipeline``: CLIP tokens, the masked concat condition of the VAE-encoded image, a
    negative prompt for the unconditional half, one sample per forward."""
    neg = "blurry static"
    args = _args(tiny["i2v"], *_prompt_args(), "--image", str(tiny["image"]), "--negative-prompt", neg)
    ours, _, record = sample_wan(tyro.cli(SampleConfig, args=args))
    _check("i2v-unipc", ours, _reference(tiny, True, negative_prompt=neg))
    assert record["model"] == "wan-i2v" and record["negative_prompts"] == [neg]


# ---------------------------------------------------------------------------------------------- end to end


def test_end_to_end_writes_videos(tiny, tmp_path):
    """``sample`` on the T2V folder, one prompt, defaults but size/frames/steps: mp4s, grid and samples.json
    (Wan's guidance 5, 16 fps clips of FRAMES frames)."""
    out = sample(
        tyro.cli(SampleConfig, args=_args(tiny["t2v"], "--prompt", PROMPTS[0], "--out", str(tmp_path)))
    )
    assert out == tmp_path
    for name in ("0000.mp4", "grid.mp4", "grid.gif", "contact.png"):
        assert (out / name).stat().st_size > 0, name
    with Image.open(out / "grid.gif") as gif:
        assert gif.n_frames == FRAMES
    record = json.loads((out / "samples.json").read_text())
    assert record["prompts"] == [PROMPTS[0]] and record["seeds"] == [SEED] and record["size"] == [H, W]
    assert record["model"] == "wan-t2v" and record["sampler"] == "unipc" and record["steps"] == STEPS


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("folder", "extra", "match"),
    [
        ("i2v", [], "give --image FILE"),
        ("t2v", ["--image", "x.png"], "this Wan is text-to-video"),
        ("t2v", ["--sampler", "ddim"], "Wan samples with unipc or euler"),
        ("t2v", dict(frames=6), "4k\\+1 frames"),
        ("t2v", dict(size=(40, 48)), "multiples of 16"),
        ("t2v", ["--frame-index", "2"], "--frame-index is not for Wan"),
        ("t2v", ["--vae.kind", "sd", "--vae.path", "x"], "a Wan model samples with its own VAE"),
    ],
)
def test_bad_requests_raise(tiny, folder, extra, match):
    kw = extra if isinstance(extra, dict) else {}
    args = _args(tiny[folder], "--prompt", "a", *(extra if isinstance(extra, list) else []), **kw)
    with pytest.raises(ValueError, match=match):
        sample(tyro.cli(SampleConfig, args=args))


def test_no_prompt_and_no_shift_raise(tiny, tmp_path):
    with pytest.raises(ValueError, match='give --prompt "..."'):
        sample_wan(tyro.cli(SampleConfig, args=_args(tiny["t2v"])))
    # a folder without a scheduler config needs --flow-shift
    bare = tmp_path / "bare"
    bare.mkdir()
    for part in ("transformer", "vae", "text_encoder", "tokenizer"):
        (bare / part).symlink_to(tiny["t2v"] / part)
    with pytest.raises(ValueError, match="give --flow-shift"):
        sample_wan(tyro.cli(SampleConfig, args=_args(bare, "--prompt", "a")))
