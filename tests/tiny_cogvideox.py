"""Tiny random CogVideoX diffusers folders and a captioned clip folder, for tests without weights.

``make_pipeline_folder`` writes what a released CogVideoX folder holds (``transformer/`` in several shards,
``vae/``, ``text_encoder/`` + ``tokenizer/`` from ``make_tiny_t5``, ``scheduler/``) at 9 frames of 32×48
pixels (latents 3×4×6, tokens 3×2×3) and 8 text tokens. ``tiny_config`` turns a CogVideoX recipe into a
2-step run on those folders. Used by ``test_recipes_cogvideox.py`` and ``test_sample_cogvideox.py``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from test_data_real import write_video  # tests/ is on sys.path (pytest's rootdir insertion)
from test_recipes import load

from minivdit.conditioning.text import make_tiny_t5
from minivdit.models.cogvideox import CogVideoXConfig
from minivdit.models.vae import VAEConfig
from minivdit.objectives.ddpm import DDPMConfig
from minivdit.train import CkptConfig, LogConfig

RECIPES = Path(__file__).parents[1] / "recipes"
TEXT_LEN = 8
VAE = dict(block_out_channels=(16, 32, 32, 32), layers_per_block=1, norm_num_groups=4, latent_channels=4)
# A tiny transformer of the 2B layout for unit tests: 2 blocks of 2 heads x 16 (RoPE, when switched on,
# splits 16 into t:h:w = 4:6:6), D = 32, text width 24; trained latent size F=3 (9 px frames), 8x12.
TINY_TRANSFORMER = dict(
    num_attention_heads=2,
    attention_head_dim=16,
    in_channels=4,
    out_channels=4,
    time_embed_dim=16,
    text_embed_dim=24,
    num_layers=2,
    sample_height=8,
    sample_width=12,
    sample_frames=9,
    max_text_seq_length=8,
)
FRAMES, H, W = 9, 32, 48  # pixels -> latents 3 x 4 x 6 -> tokens 3 x 2 x 3
TINY_TEACHER_GRID = (1, 3)  # a teacher token grid dividing the 2 x 3 DiT grid: a learned conv of stride 2 x 1


def transformer_kwargs(*, i2v: bool = True, version: str = "1.0") -> dict:
    """``CogVideoXTransformer3DModel`` arguments: 1.0-I2V as 5B-I2V (RoPE + learned PE), 1.0 T2V as 5B (RoPE),
    ``"2b"`` as 2B (sin-cos PE), ``"1.5"`` as 1.5(-I2V) (temporal patch 2, slice RoPE, ofs embedding)."""
    kw = dict(
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=8 if i2v else 4,
        out_channels=4,
        time_embed_dim=16,
        text_embed_dim=32,
        num_layers=2,
        sample_width=W // 8,
        sample_height=H // 8,
        sample_frames=FRAMES,
        max_text_seq_length=TEXT_LEN,
        use_rotary_positional_embeddings=version != "2b",
        use_learned_positional_embeddings=i2v and version == "1.0",
    )
    if version == "1.5":
        kw |= dict(patch_size_t=2, patch_bias=False, ofs_embed_dim=16 if i2v else None)
    return kw


def scheduler_config(snr_shift_scale: float = 1.0) -> dict:
    """``CogVideoXDDIMScheduler`` arguments equal to ``DDPMConfig.cogvideox(snr_shift_scale)``."""
    c = DDPMConfig.cogvideox(snr_shift_scale=snr_shift_scale)
    return dict(
        num_train_timesteps=c.num_timesteps,
        beta_start=c.beta_start,
        beta_end=c.beta_end,
        beta_schedule=c.beta_schedule,
        prediction_type="v_prediction",
        rescale_betas_zero_snr=c.zero_terminal_snr,
        set_alpha_to_one=c.set_alpha_to_one,
        timestep_spacing=c.timestep_spacing,
        snr_shift_scale=c.snr_shift_scale,
        clip_sample=c.clip_denoised,
    )


def make_pipeline_folder(
    folder: Path,
    *,
    i2v: bool = True,
    version: str = "1.0",
    seed: int = 0,
    snr_shift_scale: float = 1.0,
    std: float = 0.05,
) -> Path:
    """A tiny random CogVideoX pipeline folder (module docstring); every transformer weight, norms and the
    learned PE included, is N(0, std²). 1.5 gets a VAE with ``invert_scale_latents``. Returns ``folder``."""
    import diffusers

    torch.manual_seed(seed)
    transformer = diffusers.CogVideoXTransformer3DModel(**transformer_kwargs(i2v=i2v, version=version))
    with torch.no_grad():  # random everything, norms and the learned PE included
        for p in transformer.parameters():
            p.normal_(0, std)
    transformer.save_pretrained(folder / "transformer", max_shard_size="40KB")  # several shard files
    vae = VAE | (dict(invert_scale_latents=True) if version == "1.5" else {})
    diffusers.AutoencoderKLCogVideoX(**vae).save_pretrained(folder / "vae")
    make_tiny_t5(folder)  # text_encoder/ + tokenizer/, d_model 32
    scheduler = diffusers.CogVideoXDDIMScheduler(**scheduler_config(snr_shift_scale))
    scheduler.save_pretrained(folder / "scheduler")
    return folder


def make_clips(folder: Path, n: int = 4) -> Path:
    """``n`` short 32×48 clips and their ``captions.csv`` (``path,caption``)."""
    rows = ["path,caption"]
    for i in range(n):
        write_video(folder / f"clip{i}.mp4", FRAMES + 3, w=W, h=H, tint=40 * i)
        rows.append(f"clip{i}.mp4,a red disc grows slowly {i}")
    (folder / "captions.csv").write_text("\n".join(rows) + "\n")
    return folder


def tiny_config(recipe: str, tiny: dict[str, Path], out: Path, **overrides):
    """The recipe's config with the tiny folders and sizes: only what the tiny weights force changes.
    ``tiny``: ``{"pipe": pipeline folder, "data": clips, "vjepa2": teacher (alignment recipes)}``."""
    cfg = load(RECIPES / f"{recipe}.py").config()
    pipe = tiny["pipe"]
    model = CogVideoXConfig.from_json(pipe / "transformer" / "config.json")
    changes = dict(
        out_dir=str(out),
        model=dataclasses.replace(model, attn_backend=cfg.model.attn_backend),
        pretrained=str(pipe),
        vae=VAEConfig(kind="cogvideox", path=str(pipe / "vae")),
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
        global_batch=None,  # the recipe's 16 would accumulate 8 micro-batches of 2 on one CPU process
        precision="fp32",
        parallel=dataclasses.replace(cfg.parallel, compile=False),
        log=LogConfig(every=1, tensorboard=False),
        ckpt=CkptConfig(every=1, keep=5),
    )
    if cfg.align is not None:
        changes["align"] = dataclasses.replace(cfg.align, block_index=1, projector_dim=32)
        changes["teacher"] = dataclasses.replace(cfg.teacher, vjepa2=str(tiny["vjepa2"]))
        if cfg.teacher.token_grid is not None:  # the 2×3 DiT grid cannot hold the recipe's 10×15 teacher grid
            changes["teacher"] = dataclasses.replace(changes["teacher"], token_grid=TINY_TEACHER_GRID)
    return dataclasses.replace(cfg, **(changes | overrides))
