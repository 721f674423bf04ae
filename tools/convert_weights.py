"""Convert public checkpoints to minivdit pretrained folders.

    python tools/convert_weights.py latte SRC.pt OUT_DIR --num-heads H [--ema | --no-ema]

``latte``: a Vchitect/Latte checkpoint (``models/latte.py``, class ``Latte``, the paper's variant 1). Latte's
``train.py`` saves ``{"ema": ...}`` (its ``"model"``, ``"opt"`` and ``"args"`` entries are commented out; a
save that has ``"model"`` is read too); released weights and DDP saves may be a bare state dict and may carry
a ``module.`` prefix. The EMA weights are used when present (as
Latte's ``find_model``), unless ``--no-ema``. minivdit keeps Latte's module names, so the key map below is a
whitelist that renames nothing; keys it does not know (the text-to-video ``text_embedding_projection``, LoRA
weights, ...) are an error rather than silently dropped. Latte's frozen ``pos_embed`` / ``temp_embed``
Parameters are dropped because VDiT rebuilds them as buffers, after checking that they equal VDiT's sin-cos
tables (else ValueError: the checkpoint would then mean a different model).

OUT_DIR becomes a V-DiT pretrained folder (``minivdit.models.dit.save_pretrained``): ``config.json``
(``"_class_name": "VDiT"`` and the architecture) + ``diffusion_pytorch_model.safetensors``, the layout of a
diffusers transformer folder. An OUT ending in ``diffusion_pytorch_model.safetensors`` names that file of the
folder around it; any other ``.safetensors`` name is refused (the config.json must sit beside the weights).

The architecture is inferred from the weight shapes, except two things that are not in them:

- ``num_heads``: ``--num-heads`` is required. No Latte checkpoint records it: there is no ``"args"`` entry
  (above), and the heads live in the ``Latte_models`` size table, keyed by a model name the
  checkpoint does not store either. A guess from the width would be wrong for any model outside that table
  and fail silently: every head count that divides the width loads the same tensors and computes another
  function. Latte's sizes (``models/latte.py``): S 6, B 12, L 16, XL 16 heads.
- whether the label table has the CFG null row: assumed, as in every Latte config
  (``class_dropout_prob > 0``), so ``num_classes`` is the table's rows minus one.

Using the folder. Sampling needs what the weights do not carry, the objective and the VAE: for Latte, DDPM
with learned σ (1000 linear-β steps, ε-prediction: ``DDPMConfig()``, the default of ``minivdit.sample`` for a
V-DiT folder whose config has ``learn_sigma``) and the SD VAE Latte encoded with (its pretrained folder's
``vae/``; ``stabilityai/sd-vae-ft-ema`` in Latte's ``train.py``)::

    python -m minivdit.sample --pretrained OUT_DIR --vae.kind sd --vae.path /weights/sd-vae-ft-ema \
        --classes 0 1 2 3 --cfg-scale 7 --steps 250 --out samples/     # Latte's UCF-101 sample config

Fine-tuning: a V-DiT recipe (``recipes/latte_*.py``) with ``--pretrained OUT_DIR``; the printed ``--model.*``
flags are the architecture the recipe's model must have.

Import from Python: ``tools/`` is a folder of scripts, not a package; load this file with
``importlib.util.spec_from_file_location`` (as ``tests/test_models.py`` does) or run it as a script.
"""

from __future__ import annotations

import argparse
import math
import pickle
import re
import sys
from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch import Tensor

from minivdit.models.blocks import sincos_1d, sincos_2d
from minivdit.models.dit import WEIGHTS_NAME, DiTConfig, save_pretrained

# Latte key (regex, full match) -> minivdit key. Identical by design (DESIGN.md §2 "Names"); kept explicit so
# a fork that renames a module edits one line here.
LATTE_KEY_MAP: list[tuple[str, str]] = [
    (r"x_embedder\.proj\.(weight|bias)", r"x_embedder.proj.\1"),
    (r"t_embedder\.mlp\.([02])\.(weight|bias)", r"t_embedder.mlp.\1.\2"),
    (r"y_embedder\.embedding_table\.weight", r"y_embedder.embedding_table.weight"),
    (r"blocks\.(\d+)\.attn\.(qkv|proj)\.(weight|bias)", r"blocks.\1.attn.\2.\3"),
    (r"blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", r"blocks.\1.mlp.\2.\3"),
    (r"blocks\.(\d+)\.adaLN_modulation\.1\.(weight|bias)", r"blocks.\1.adaLN_modulation.1.\2"),
    (r"final_layer\.(linear|adaLN_modulation\.1)\.(weight|bias)", r"final_layer.\1.\2"),
]
LATTE_DERIVED = ("pos_embed", "temp_embed")  # frozen sin-cos tables: verified, then dropped
TABLE_ATOL = 1e-5  # Latte stores the fp64 MAE tables as fp32


def load_latte_checkpoint(path: str | Path, *, ema: bool = True) -> tuple[dict[str, Tensor], str]:
    """The state dict in a Latte checkpoint and where it came from (``"ema"``, ``"model"`` or ``"bare"``)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # e.g. a DiT-style "args" Namespace next to the weights
        raise ValueError(
            f"{path}: holds pickled Python objects besides tensors, which weights-only loading refuses "
            f"({e}); re-save only its state dicts where it was written, e.g. "
            f"torch.save({{'ema': ckpt['ema']}}, ...)"
        ) from e
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: expected a dict checkpoint, got {type(ckpt).__name__}")
    if ema and "ema" in ckpt:
        sd, source = ckpt["ema"], "ema"
    elif "model" in ckpt:
        sd, source = ckpt["model"], "model"
    elif "ema" in ckpt:
        sd, source = ckpt["ema"], "ema"  # --no-ema but only EMA weights saved
    else:
        sd, source = ckpt, "bare"
    if not all(isinstance(v, Tensor) for v in sd.values()):
        raise ValueError(f"{path}: the {source!r} entry is not a state dict of tensors ({sorted(sd)[:5]})")
    return {k.removeprefix("module."): v for k, v in sd.items()}, source


def check_position_tables(sd: dict[str, Tensor]) -> None:
    """Raise ValueError unless Latte's frozen ``pos_embed`` / ``temp_embed`` equal VDiT's sin-cos tables."""
    if "pos_embed" in sd:
        _, n, d = sd["pos_embed"].shape
        g = math.isqrt(n)
        if g * g != n:
            raise ValueError(f"pos_embed has {n} tokens, not a square grid (Latte frames are square)")
        _compare("pos_embed", sd["pos_embed"][0], sincos_2d(d, g, g))
    if "temp_embed" in sd:
        _, f, d = sd["temp_embed"].shape
        _compare("temp_embed", sd["temp_embed"][0], sincos_1d(d, torch.arange(f)))


def _compare(name: str, stored: Tensor, ours: Tensor) -> None:
    err = (stored.double() - ours).abs().max().item()
    if err > TABLE_ATOL:
        raise ValueError(
            f"{name} {tuple(stored.shape)} differs from minivdit's sin-cos table by {err:.3g} "
            f"(> {TABLE_ATOL}); dropping it would change the model"
        )


def latte_to_minivdit(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Latte state dict (``module.`` prefix allowed) -> VDiT state dict; pos/temp tables checked, dropped."""
    sd = {k.removeprefix("module."): v for k, v in state_dict.items()}
    check_position_tables(sd)
    out, unknown = {}, []
    for key, value in sd.items():
        if key in LATTE_DERIVED:
            continue
        for pattern, target in LATTE_KEY_MAP:
            if re.fullmatch(pattern, key):
                out[re.sub(pattern, target, key)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        more = " ..." if len(unknown) > 8 else ""
        raise ValueError(f"unknown Latte keys (not variant-1 Latte?): {unknown[:8]}{more}")
    return out


def infer_config(sd: dict[str, Tensor], *, num_heads: int | None) -> DiTConfig:
    """The DiTConfig a state dict (Latte or minivdit keys) was trained with: everything from its weight
    shapes but ``num_heads``, which they do not hold (module docstring): ValueError naming ``--num-heads``
    when it is None or does not divide the width."""
    try:
        proj = sd["x_embedder.proj.weight"]  # [D, C, p, p]
        final = sd["final_layer.linear.weight"]  # [p·p·C_out, D]
        fc1 = sd["blocks.0.mlp.fc1.weight"]  # [mlp, D]
    except KeyError as e:
        raise ValueError(f"not a Latte/V-DiT state dict: missing {e}") from None
    width, in_ch, p, _ = proj.shape
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
    c_out = final.shape[0] // (p * p)
    if c_out not in (in_ch, 2 * in_ch):
        raise ValueError(f"final layer has {final.shape[0]} outputs, not p²·C or p²·2C (p={p}, C={in_ch})")
    if num_heads is None:
        raise ValueError(
            f"--num-heads is required: the attention heads are not in the weight shapes (width {width}) and "
            f"Latte checkpoints do not record them; Latte-S/B/L/XL use 6/12/16/16 (models/latte.py)"
        )
    if num_heads < 1 or width % num_heads:
        raise ValueError(f"--num-heads {num_heads} must be a positive divisor of the width {width}")
    labels = sd.get("y_embedder.embedding_table.weight")
    cfg = replace(
        DiTConfig(),
        depth=depth,
        hidden_size=width,
        num_heads=num_heads,
        mlp_ratio=fc1.shape[0] / width,
        patch_size=p,
        in_channels=in_ch,
        learn_sigma=c_out == 2 * in_ch,
        num_classes=0 if labels is None else labels.shape[0] - 1,  # the last row is the CFG null class
    )
    if "pos_embed" in sd:
        g = math.isqrt(sd["pos_embed"].shape[1])
        cfg = replace(cfg, input_size=(g * p, g * p))
    if "temp_embed" in sd:
        cfg = replace(cfg, num_frames=sd["temp_embed"].shape[1])
    return cfg


def config_flags(cfg: DiTConfig) -> str:
    """The fields that differ from DiTConfig's defaults, as ``--model.*`` command-line flags."""
    default, flags = asdict(DiTConfig()), []
    for name, value in asdict(cfg).items():
        if value != default[name]:
            shown = " ".join(map(str, value)) if isinstance(value, tuple) else value
            flags.append(f"--model.{name.replace('_', '-')} {shown}")
    return " ".join(flags) or "(all defaults)"


def out_folder(out: str | Path) -> Path:
    """The pretrained folder OUT names: OUT itself, or the folder of an OUT that is its
    ``diffusion_pytorch_model.safetensors``; ValueError for another ``.safetensors`` name or an existing
    file (the config.json must sit beside the weights, under the name loaders look for)."""
    out = Path(out)
    if out.name == WEIGHTS_NAME:
        return out.parent
    if out.suffix == ".safetensors" or out.is_file():
        raise ValueError(
            f"OUT {out}: the converter writes a pretrained folder (config.json + {WEIGHTS_NAME}), not a "
            f"single file; give a folder, e.g. {out.with_suffix('')}"
        )
    return out


def convert_latte(src: str | Path, out: str | Path, *, num_heads: int | None, ema: bool = True) -> DiTConfig:
    """Latte .pt -> a V-DiT pretrained folder (``out_folder(out)``); returns the config it holds."""
    folder = out_folder(out)
    sd, source = load_latte_checkpoint(src, ema=ema)
    cfg = infer_config(sd, num_heads=num_heads)
    converted = latte_to_minivdit(sd)
    save_pretrained(converted, cfg, folder)  # checks keys and shapes against cfg, writes durably
    flags = config_flags(cfg)
    print(f"converted {len(converted)} tensors from {src} ({source!r} weights) -> {folder}")
    print(f"architecture: {cfg}")
    print(
        "sample it: the folder holds no objective and no VAE; Latte's are DDPM with learned sigma (the "
        "default of minivdit.sample for this folder) and the SD VAE (Latte's vae/, sd-vae-ft-ema):\n"
        f"  python -m minivdit.sample --pretrained {folder} --vae.kind sd --vae.path /weights/sd-vae-ft-ema "
        f"{'--classes 0 1 2 3 --cfg-scale 7 ' if cfg.num_classes else ''}--steps 250 --out samples/"
    )
    print(f"fine-tune it: a V-DiT recipe with --pretrained {folder} and the architecture flags {flags}")
    return cfg


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("format", choices=["latte"], help="source checkpoint format")
    parser.add_argument("src", type=Path, help="checkpoint to read (.pt)")
    parser.add_argument("out", type=Path, help="pretrained folder to write (config.json + safetensors)")
    parser.add_argument(
        "--num-heads",
        type=int,
        default=None,
        help="attention heads (required: not in the weight shapes; Latte-S/B/L/XL: 6/12/16/16)",
    )
    parser.add_argument(
        "--ema",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="use the EMA weights when the checkpoint has them (default: yes)",
    )
    args = parser.parse_args(argv)
    convert_latte(args.src, args.out, num_heads=args.num_heads, ema=args.ema)


if __name__ == "__main__":
    sys.exit(main())
