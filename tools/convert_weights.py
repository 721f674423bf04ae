"""Convert public checkpoints to minivdit safetensors.

    python tools/convert_weights.py latte SRC.pt OUT.safetensors [--ema | --no-ema]

``latte``: a Vchitect/Latte checkpoint (``models/latte.py``, class ``Latte``, the paper's variant 1). Latte's
``train.py`` saves ``{"model": ..., "ema": ...}``; released weights and DDP saves may be a bare state dict and
may carry a ``module.`` prefix. The EMA weights are used when present (as Latte's ``find_model``), unless
``--no-ema``. minivdit keeps Latte's module names, so the key map below is a whitelist that renames nothing;
keys it does not know (the text-to-video ``text_embedding_projection``, LoRA weights, ...) are an error rather
than silently dropped. Latte's frozen ``pos_embed`` / ``temp_embed`` Parameters are dropped because VDiT
rebuilds them as buffers, after checking that they equal VDiT's sin-cos tables (else ValueError: the
checkpoint would then mean a different model).

The architecture is inferred from the weight shapes and printed as ``--model.*`` flags to pass to a recipe.
Two things are not in the shapes: ``num_heads`` (taken from Latte's size table by width, else guessed with a
head width of at least 64, with a warning) and whether the label table has the CFG null row (assumed, as in
every Latte config: ``class_dropout_prob > 0``).

Import from Python: ``tools/`` is a folder of scripts, not a package; load this file with
``importlib.util.spec_from_file_location`` (as ``tests/test_models.py`` does) or run it as a script.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import asdict, replace
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

from minivdit import durable
from minivdit.models.blocks import sincos_1d, sincos_2d
from minivdit.models.dit import DiTConfig

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
LATTE_HEADS = {384: 6, 768: 12, 1024: 16, 1152: 16}  # Latte_models: S, B, L, XL
TABLE_ATOL = 1e-5  # Latte stores the fp64 MAE tables as fp32


def load_latte_checkpoint(path: str | Path, *, ema: bool = True) -> tuple[dict[str, Tensor], str]:
    """The state dict in a Latte checkpoint and where it came from (``"ema"``, ``"model"`` or ``"bare"``)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
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


def infer_config(sd: dict[str, Tensor]) -> DiTConfig:
    """The DiTConfig a state dict (Latte or minivdit keys) was trained with, from its weight shapes."""
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
    heads = LATTE_HEADS.get(width)
    if heads is None:  # not a Latte size: assume head width >= 64, as Latte's S/B/L
        heads = max((h for h in range(1, width + 1) if width % h == 0 and width // h >= 64), default=1)
        print(f"warning: num_heads is not in the weights; guessed {heads} for width {width}", file=sys.stderr)
    labels = sd.get("y_embedder.embedding_table.weight")
    cfg = replace(
        DiTConfig(),
        depth=depth,
        hidden_size=width,
        num_heads=heads,
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


def convert_latte(src: str | Path, out: str | Path, *, ema: bool = True) -> DiTConfig:
    """Latte .pt -> minivdit .safetensors; returns the inferred config."""
    sd, source = load_latte_checkpoint(src, ema=ema)
    cfg = infer_config(sd)
    converted = latte_to_minivdit(sd)
    meta = {"source": f"latte:{source}", "dit_config": json.dumps(asdict(cfg))}
    with durable.atomic_path(out) as tmp:  # never a half-written file under the output name
        save_file({k: v.detach().cpu().contiguous() for k, v in converted.items()}, str(tmp), metadata=meta)
    print(f"converted {len(converted)} tensors from {src} ({source!r} weights) -> {out}")
    print(f"inferred {cfg}")
    print(f"flags: {config_flags(cfg)}")
    return cfg


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("format", choices=["latte"], help="source checkpoint format")
    parser.add_argument("src", type=Path, help="checkpoint to read (.pt)")
    parser.add_argument("out", type=Path, help="safetensors file to write")
    parser.add_argument(
        "--ema",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="use the EMA weights when the checkpoint has them (default: yes)",
    )
    args = parser.parse_args(argv)
    convert_latte(args.src, args.out, ema=args.ema)


if __name__ == "__main__":
    sys.exit(main())
