"""``recipes/flashi2v_wan.py`` end to end on tiny random weights saved in the real formats: a Wan pipeline
folder (``transformer/`` as ``WanTransformer3DModel``, ``vae/`` as ``AutoencoderKLWan``, ``text_encoder/`` +
``tokenizer/`` as UMT5) and a captioned clip folder. Two steps from the command line (the recipe's own entry
point, in a subprocess), exact resume of a Wan + FlashI2V run, and FlashI2V's step 0 = the T2V model's.

Sizes: 9 frames of 32×48 px → latents 3×4×6 (VAE stride 4 in time, 8 in space) → tokens 3×2×3.
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
from test_cli import run_cmd  # tests/ on sys.path (pytest's rootdir insertion)
from test_recipes import load
from tiny_cogvideox import FRAMES, H, W, make_clips

from minivdit.conditioning.text import make_tiny_t5
from minivdit.models.wan import WanConfig
from minivdit.train import CkptConfig, LogConfig, train

diffusers = pytest.importorskip("diffusers")
pytestmark = [
    pytest.mark.usefixtures("single_thread"),
    pytest.mark.filterwarnings("ignore:torch.distributed is disabled"),
]
RECIPE = Path(__file__).parents[1] / "recipes" / "flashi2v_wan.py"
TEXT_LEN = 8  # UMT5 tokens (the recipe's 512 cost time and test nothing more here)
# diffusers' tiny Wan test config (as tests/test_wan.py) with the tiny UMT5's width 32 and 4 latent channels
TRANSFORMER = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=12,
    in_channels=4,
    out_channels=4,
    text_dim=32,
    freq_dim=256,
    ffn_dim=32,
    num_layers=2,
    rope_max_seq_len=32,
)
VAE = dict(
    base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1, temperal_downsample=[False, True, True]
)


def _randomise(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Every parameter random, norm gains and modulation tables included (a zero table would hide one)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            base = 1.0 if "norm" in name and name.endswith("weight") else 0.0
            p.copy_(base + 0.1 * torch.randn(p.shape, generator=gen))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    return make_tiny(tmp_path_factory.mktemp("wan"))


def make_tiny(root: Path) -> dict[str, Path]:
    """A tiny Wan2.1-T2V pipeline folder and a captioned folder of 4 clips in ``root``."""
    pipe = root / "Wan-tiny-T2V"
    gen = torch.Generator().manual_seed(0)
    transformer = diffusers.WanTransformer3DModel(**TRANSFORMER)
    _randomise(transformer, gen)
    transformer.save_pretrained(pipe / "transformer", max_shard_size="40KB")  # several shard files
    vae = diffusers.AutoencoderKLWan(
        **VAE, latents_mean=[0.3, -0.7, 1.1, 0.05], latents_std=[1.7, 0.6, 2.4, 1.2]
    )
    _randomise(vae, gen)
    vae.save_pretrained(pipe / "vae")
    make_tiny_t5(pipe, model_type="umt5")  # text_encoder/ + tokenizer/, d_model 32
    return {"pipe": pipe, "data": make_clips(root / "clips")}


def tiny_config(tiny: dict[str, Path], out: Path, **overrides):
    """The recipe's config on the tiny folders: only what the tiny weights and the CPU force changes."""
    cfg = load(RECIPE).config()
    pipe = tiny["pipe"]
    model = WanConfig.from_json(
        pipe / "transformer" / "config.json", num_frames=3, input_size=(H // 8, W // 8)
    )
    changes = dict(
        out_dir=str(out),
        model=model,  # sdpa: the recipe's flash kernel is CUDA-only
        pretrained=str(pipe),
        vae=dataclasses.replace(cfg.vae, path=str(pipe)),
        text=dataclasses.replace(cfg.text, path=str(pipe), max_length=TEXT_LEN, dtype="float32"),
        data=dataclasses.replace(
            cfg.data,
            root=str(tiny["data"]),
            num_frames=FRAMES,
            image_size=(H, W),
            num_workers=0,
            batch_size=2,
        ),
        max_steps=2,
        precision="fp32",
        sample_every=-1,
        parallel=dataclasses.replace(cfg.parallel, activation_checkpointing=False),
        log=LogConfig(every=1, tensorboard=False),
        ckpt=CkptConfig(every=1, keep=5),
    )
    return dataclasses.replace(cfg, **(changes | overrides))


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_recipe_runs_two_steps_from_the_command_line(tiny, tmp_path):
    """``python recipes/flashi2v_wan.py`` as typed: ``--pretrained`` reads the tiny architecture from the
    folder, the VAE and UMT5 come from the same folder, FlashI2V's layers are trained and checkpointed."""
    pipe = tiny["pipe"]
    args = shlex.split(
        f"--pretrained {pipe} --vae.path {pipe} --text.path {pipe} --text.max-length {TEXT_LEN} "
        f"--text.dtype float32 --data.root {tiny['data']} --data.num-frames {FRAMES} "
        f"--data.image-size {H} {W} --data.batch-size 2 --data.num-workers 0 "
        f"--model.num-frames 3 --model.input-size {H // 8} {W // 8} --model.attn-backend sdpa "
        f"--precision fp32 --max-steps 2 --log.every 1 --log.no-tensorboard --ckpt.every 2 "
        f"--out-dir {tmp_path}"  # the recipe's activation checkpointing stays on
    )
    run_cmd([sys.executable, str(RECIPE), *args])
    run_dir = tmp_path / "flashi2v_wan"
    rows = _rows(run_dir)
    assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows)
    saved = load_file(str(run_dir / "checkpoints" / "step_0000002" / "model.safetensors"))
    assert "base.blocks.0.attn1.to_q.weight" in saved  # the Wan backbone, fully fine-tuned
    phi = saved["learnable_proj.proj.2.weight"]  # zero-init last conv of φ: trained away from 0
    assert phi.abs().max() > 0 and "fourier_embedding.1.weight" in saved
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"]["_type"] == "WanConfig" and config["model"]["num_layers"] == 2


def test_resume_is_exact(tiny, tmp_path):
    """3 steps straight = the same run resumed from its step-2 checkpoint: same last loss, same weights. The
    noise, t, caption drops and FlashI2V's per-sample Fourier ratio all come from the per-micro-batch seed."""
    straight = train(tiny_config(tiny, tmp_path / "a", max_steps=3))
    step2 = str(straight / "checkpoints" / "step_0000002")
    resumed = train(tiny_config(tiny, tmp_path / "b", max_steps=3, resume=step2))
    last = [(r["step"], r["lr"], r["loss"]) for r in _rows(straight)][-1:]
    assert [(r["step"], r["lr"], r["loss"]) for r in _rows(resumed)] == last
    for name in ("model", "ema"):
        a = load_file(str(straight / "checkpoints" / "step_0000003" / f"{name}.safetensors"))
        b = load_file(str(resumed / "checkpoints" / "step_0000003" / f"{name}.safetensors"))
        # exact: the same kernels on the same inputs in the same order
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_flashi2v_step_zero_is_the_t2v_model(tiny, tmp_path):
    """At init φ ≡ 0 and the Fourier tokens are exactly 0, so the first loss of the FlashI2V run equals that
    of the same run without FlashI2V bit for bit (x − 0 and tokens + 0 are exact; the ratio is drawn after
    the noise and t, so both runs corrupt the same way)."""
    flash = train(tiny_config(tiny, tmp_path, max_steps=1, run_name="flash"))
    t2v = train(tiny_config(tiny, tmp_path, max_steps=1, run_name="t2v", flashi2v=None))
    assert _rows(flash)[0]["loss"] == _rows(t2v)[0]["loss"]


def test_wan_run_configs_are_checked_and_flashi2v_exposes_the_block_list(tiny, tmp_path):
    """FSDP2 / compile find the blocks through the wrapper; runs the trainer cannot serve are refused up front
    with the flag to change (not a shape error at the first step)."""
    from minivdit import dist
    from minivdit.models.dit import DiTConfig
    from minivdit.models.flashi2v import FlashI2V
    from minivdit.models.wan import WanTransformer

    cfg = tiny_config(tiny, tmp_path)
    with torch.device("meta"):
        model = FlashI2V(WanTransformer(cfg.model), cfg.flashi2v)
    assert dist.block_list(model) is model.base.blocks
    i2v = dataclasses.replace(cfg.model, in_channels=24, image_dim=8, added_kv_proj_dim=24)
    with pytest.raises(ValueError, match="training Wan2.1-I2V"):
        dataclasses.replace(cfg, model=i2v)
    with pytest.raises(ValueError, match="Wan is text-conditioned: give --text.path"):
        dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, path=None))
    # FlashI2V wraps a V-DiT too (tests/test_flashi2v_ablation.py): what remains is the V-DiT's own check
    with pytest.raises(ValueError, match="pixel-space training .* needs model.in_channels=3"):
        dataclasses.replace(cfg, model=DiTConfig(), vae=dataclasses.replace(cfg.vae, kind="none", path=None))


def test_sample_a_flashi2v_run_from_its_start_frame(tiny, tmp_path):
    """``python -m minivdit.sample --ckpt RUN --image PNG --prompt P`` on a FlashI2V Wan run: the run's
    weights, UMT5, VAE, flow and ``sample.*`` settings, every video from the start frame.

    Oracle: a run trained one step at lr 1e-30 keeps the folder's weights (a change of ~1e-30 is below the
    fp32 spacing of weights ~0.1, and φ's and the Fourier projection's zero-init weights move to ~1e-30,
    whose contributions are below the spacing of x_t and of the tokens), so it is the T2V model: its latents
    must equal ``WanPipeline``'s from the same folder for the same seeds, with the run's sampler (Euler,
    shift 7, here on the diffusers grid), guidance (5) and text length, to the fp32 parity bound of
    ``tests/test_sample_wan.py`` (1e-5 relative: the same operations in another order)."""
    import transformers
    from einops import rearrange
    from PIL import Image

    from minivdit.sample import SampleConfig, sample_wan

    cfg = load(RECIPE).config()
    optim = dataclasses.replace(cfg.optim, lr=1e-30)
    # the pipeline's Euler grid (the recipe samples on FlashI2V's own: shift(linspace(1, 0, N + 1)))
    objective = dataclasses.replace(cfg.objective, sampling_grid="diffusers")
    overrides = dict(max_steps=1, run_name="flash", optim=optim, objective=objective)
    run = train(tiny_config(tiny, tmp_path, **overrides))
    png = tmp_path / "start.png"
    pixels = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(png)
    prompts = ("a red ball", "waves on a beach at dusk")
    request = SampleConfig(
        ckpt=str(run), image=str(png), prompt=prompts, steps=2, seed=3, use_ema=False, device="cpu"
    )
    ours, _, record = sample_wan(request)
    assert record["model"] == "wan-t2v+flashi2v" and record["sampler"] == "euler"
    assert record["flow_shift"] == 7.0 and record["cfg_scale"] == 5.0

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
    with torch.no_grad():
        ref = pipe(
            prompt=list(prompts), height=H, width=W, num_frames=FRAMES, num_inference_steps=2,
            guidance_scale=5.0, generator=gens, output_type="latent", max_sequence_length=TEXT_LEN,
        ).frames  # fmt: skip
    ref = rearrange(ref, "b c f h w -> b f c h w")
    assert ours.shape == ref.shape
    assert ((ours - ref).abs().max() / ref.abs().max()).item() <= 1e-5

    out = tmp_path / "samples"
    run_cmd([sys.executable, "-m", "minivdit.sample", "--ckpt", str(run), "--image", str(png),
             "--prompt", prompts[0], "--steps", "2", "--out", str(out), "--device", "cpu"])  # fmt: skip
    assert (out / "contact.png").is_file()
    assert json.loads((out / "samples.json").read_text())["model"] == "wan-t2v+flashi2v"
    with pytest.raises(ValueError, match="give --image FILE, the start frame"):
        sample_wan(dataclasses.replace(request, image=None))
