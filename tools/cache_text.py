"""Encode the captions of a shard folder once with a frozen T5 and add the tokens to its samples.

    # 1. clips (or latents) with captions: a CSV of videoid,name as ChronoMagic-ProH ships, 49 frames 480x720
    python tools/cache_latents.py --data.dataset folder --data.root /data/ChronoMagic-ProH/videos \\
        --data.labels-csv ChronoMagic-ProH.csv --data.num-frames 49 --data.frame-sampling fps \\
        --data.skip-frames 3 --data.no-random-start --data.image-size 480 720 --precision bf16 \\
        --vae.kind cogvideox --vae.path /models/CogVideoX-5b-I2V/vae --keep-video \\
        --out /data/cache/chronomagic-49x480x720
    # 2. the captions' T5 tokens, [226, 4096] bf16 per sample (1.8 MB), into the same shards
    python tools/cache_text.py --root /data/cache/chronomagic-49x480x720 \\
        --text.path /models/CogVideoX-5b-I2V --device cuda
    # Wan2.1: UMT5-XXL as WanPipeline encodes (512 tokens, masked, trimmed, zero-padded, prompts cleaned)
    python tools/cache_text.py --root /data/cache/wan-81x480x832 \\
        --text.path /models/Wan2.1-T2V-1.3B-Diffusers --text.max-length 512 --text.use-mask --text.clean \\
        --device cuda

Why a second pass over finished shards rather than a ``--text`` option of ``tools/cache_latents.py``: the VAE
(and teachers) and T5-XXL (9.5 GB in bf16) then never share the accelerator (CogVideo's own trainer unloads
one before the other), text can be added to shards made earlier by ``make_shards.py`` or ``cache_latents.py``
without decoding a single video again, and re-encoding with another text encoder rewrites only the text.

What it does (``minivdit/data/shards.py`` documents the format): every sample's ``caption.txt`` is encoded
exactly as the CogVideoX pipelines do (``T5TextEncoder``, ``minivdit/conditioning/text.py``: 226 tokens, no
attention mask) and stored as ``text.npy`` ``[L, D]`` in ``--dtype`` (bfloat16 by default, as uint16 bits;
plus ``text_mask.npy`` ``[L]`` with ``--text.use-mask``). The empty prompt's tokens, the null context of
caption dropout and CFG, go to ``text_null.npy`` in the folder. meta.json records the encoder's identity
under ``text_encoder`` (hashes of its config, weight headers and tokenizer, ``max_length``, ``use_mask``); a
training run compares it with its own encoder (``minivdit.data.shards.text_cache_mismatch``) and refuses
tokens of another encoder. Identical captions in a batch are encoded once.

Each shard is rewritten to ``.tmp`` and renamed, so an interrupted run loses nothing; a rerun resumes with
the shards not yet done. A folder already holding text of another encoder (or another dtype) is refused
unless ``--overwrite``. Shards made by a tool rerun later with the same flags are refused as "other settings"
(their meta.json now records text): cache the text last.

With ``--vlm.path`` (UniWorld-OSP2.0, ``recipes/uniworld_osp2.py``) the features are a frozen Qwen2.5-VL's
instead, of the caption with the clip's first frame (``VLMEncoder.encode``; ``[1024, 3584]`` bf16 per sample
for the 7B, 7.3 MB), stamped with ``vlm_identity`` (the folder's hashes, the layer, the template and the frame
size); the null is VLM("" + the frame), what a dropped caption becomes. Only the released
``use_vision=False`` is cached: that text decoder never reads the pixels (the frame reaches it as 135
``<|image_pad|>`` tokens whatever it shows), so a black frame of ``--vlm.frame-size`` stands for every clip
and the shards need no pixels (latents-only shards work); the features with ``--vlm.use-vision`` depend on
each image, the null too, and are computed online by the trainer. A run on such shards never loads the VLM.

    python tools/cache_text.py --root /data/cache/uniworld-49x480x832 \
        --vlm.path /models/Qwen2.5-VL-7B-Instruct --device cuda

Import from Python: ``main([...])`` or ``cache_text(CacheTextConfig(...))`` (tests load this file with
``importlib``).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import tyro

from minivdit.conditioning.text import T5TextEncoder, TextEncoderConfig, text_identity
from minivdit.conditioning.vlm import VLMConfig, VLMEncoder, vlm_identity
from minivdit.data.shards import (
    extend_shards,
    read_meta,
    shard_name,
    text_cache_mismatch,
    write_text_null,
)
from minivdit.log import setup_logging

log = logging.getLogger("minivdit")


@dataclass(frozen=True, kw_only=True)
class CacheTextConfig:
    """Shard folder with captions -> the same shards with the captions' text-encoder tokens."""

    root: str
    """The shard folder (made by tools/make_shards.py or tools/cache_latents.py from a captioned dataset)."""
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    """The text encoder (``--text.path /models/CogVideoX-5b-I2V``; ``--text.max-length``, ``--text.use-mask``,
    ``--text.dtype`` of the encoder)."""
    vlm: VLMConfig = field(default_factory=VLMConfig)
    """Instead of ``text``: a frozen Qwen2.5-VL (``--vlm.path``; its settings as the run's ``--vlm.*``)."""
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    """Stored dtype of the tokens."""
    batch_size: int = 16
    """Captions per encoder call."""
    device: str = "auto"
    """"auto" (cuda when available), "cpu", "cuda", "cuda:1", ..."""
    overwrite: bool = False
    """Replace text cached by another encoder or in another dtype."""

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.text.enabled == (self.vlm.path is not None):
            raise ValueError(
                "give one encoder: --text.path (a CogVideoX or Wan diffusers folder) or --vlm.path (a "
                "Qwen2.5-VL folder)"
            )
        if self.vlm.use_vision:
            raise ValueError(
                "--vlm.use-vision: the features (and the null) depend on each clip's pixels; the trainer "
                "computes them online (cache only the released use_vision=False)"
            )


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cache_text(cfg: CacheTextConfig) -> Path:
    """Add the text tokens of ``cfg`` to the shards in ``cfg.root`` (module docstring); returns the folder."""
    root = Path(cfg.root)
    meta = read_meta(root)
    if "caption" not in meta["fields"]:
        raise ValueError(
            f"{root}: the shards store no captions (fields {sorted(meta['fields'])}); make them from a "
            f"captioned dataset (e.g. --data.dataset folder --data.labels-csv with a caption column)"
        )
    vlm = cfg.vlm.path is not None
    # validates the folders before the weights are loaded
    identity = vlm_identity(cfg.vlm) if vlm else text_identity(cfg.text)
    L = cfg.vlm.max_length if vlm else cfg.text.max_length
    use_mask = cfg.vlm.keep == "valid" if vlm else cfg.text.use_mask
    redo, drop = False, []
    if "text" in meta["fields"]:
        problem = text_cache_mismatch(meta, identity)
        other_dtype = meta["fields"]["text"].get("dtype") != cfg.dtype
        if problem or other_dtype:
            if not cfg.overwrite:
                why = problem or (
                    f"text tokens were cached as {meta['fields']['text'].get('dtype')}, not {cfg.dtype}"
                )
                raise ValueError(f"{root}: {why}; use --overwrite to replace them")
            redo = True
            if "text_mask" in meta["fields"] and not use_mask:
                drop = ["text_mask"]
    device = _device(cfg.device)
    if vlm:
        encoder = VLMEncoder(cfg.vlm).to(device)
        black = torch.zeros(1, 3, *cfg.vlm.frame_size)  # the pixels are never read (module docstring)
        null, null_mask = encoder.encode([""], black)  # [1, L, D]: a dropped caption, with its frame
        null, null_mask = null[0], (None if null_mask is None else null_mask[0])

        def encode(captions: list[str]):
            return encoder.encode(captions, black.expand(len(captions), -1, -1, -1))
    else:
        encoder = T5TextEncoder(cfg.text).to(device)
        null, null_mask, encode = encoder.empty(), encoder.empty_mask(), encoder.encode
    fields = {"text": {"member": "text.npy", "dtype": cfg.dtype, "shape": [L, encoder.dim]}}
    if use_mask:
        fields["text_mask"] = {"member": "text_mask.npy", "dtype": "bool", "shape": [L]}
    null = write_text_null(root, null.cpu(), None if null_mask is None else null_mask.cpu(), fields)
    store = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[cfg.dtype]

    def compute(samples: list[dict]) -> list[dict]:
        captions = [s["caption"] for s in samples]
        unique = list(dict.fromkeys(captions))
        context, mask = encode(unique)  # [U, L, D], [U, L] | None
        row = {c: i for i, c in enumerate(unique)}
        out = []
        for c in captions:
            value = {"text": context[row[c]].to("cpu", store)}
            if mask is not None:
                value["text_mask"] = mask[row[c]].cpu()
            out.append(value)
        return out

    def on_shard(shard: int, took: float) -> None:
        log.info(f"{shard_name(shard)}: {meta['shards'][shard]['count']} captions encoded ({took:.1f} s)")

    log.info(
        f"{root}: encoding the captions of {meta['num_samples']} samples with {identity['name']} "
        f"({identity['model_type']}, {L} tokens x {encoder.dim}, mask={use_mask}) on {device}; "
        f"{L * encoder.dim * store.itemsize} bytes per sample"
    )
    extend_shards(
        root,
        fields,
        compute,
        inputs=["caption"],
        meta_updates={"text_encoder": identity | {"null": null, "made_by": "tools/cache_text.py"}},
        redo=redo,
        drop_fields=drop,
        batch_size=cfg.batch_size,
        on_shard=on_shard,
    )
    return root


def main(args: list[str] | None = None) -> Path:
    cfg = tyro.cli(CacheTextConfig, args=args, config=(tyro.conf.AvoidSubcommands,))
    setup_logging(0, stream=sys.stderr)  # the trainer's line format; stdout: the result
    out = cache_text(cfg)
    print(f"text tokens added to {out}")
    return out


if __name__ == "__main__":
    main()
