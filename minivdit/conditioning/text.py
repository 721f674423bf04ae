"""Frozen text encoders from local folders: T5 for CogVideoX (anchors-conditioning §4, anchors-cogvideox
§1.5), UMT5-XXL for Wan2.1 (anchors-conditioning §1.9).

``T5TextEncoder(cfg).encode(prompts) -> (context [B, L, D], mask [B, L] | None)`` reproduces the diffusers
CogVideoX pipelines' ``_get_t5_prompt_embeds`` (``pipeline_cogvideox.py``, ``..._image2video.py``):

1. ``tokenizer(prompts, padding="max_length", max_length=226, truncation=True, add_special_tokens=True)``:
   every prompt becomes exactly ``L = max_length`` ids, ``</s>`` after the text, ``<pad>`` after that;
2. ``text_encoder(input_ids)[0]`` **without an attention mask**: the pad positions give real, non-zero
   outputs, and the CogVideoX transformer attends to all ``L`` tokens (no mask anywhere on its text side);
3. the encoder's dtype (the pipeline casts to ``text_encoder.dtype``).

``use_mask=True`` is for other models (Wan-style): the attention mask goes to T5, the pad positions of the
output are zeros (as the Wan pipelines' trim-and-zero-pad), and the mask is returned (True = real token).

Wan2.1 (``TextEncoderConfig.wan(path)``: UMT5, ``max_length=512``, ``use_mask=True``, ``clean=True``)
reproduces ``WanPipeline._get_t5_prompt_embeds`` (``diffusers/pipelines/wan/pipeline_wan.py`` l.158-198, the
same in ``WanImageToVideoPipeline``; ``__call__`` passes ``max_sequence_length=512``), itself the original's
``T5EncoderModel.__call__`` (``Wan2.1/wan/modules/t5.py`` l.506-513) plus the zero-padding its ``WanModel``
does:

1. ``prompt_clean``: ``ftfy.fix_text`` when ftfy is installed (diffusers' condition; Wan's original always
   runs it), HTML-unescape twice, collapse whitespace, strip (``pipeline_wan.py`` l.78-93,
   ``Wan2.1/wan/modules/tokenizers.py`` l.12-21);
2. the tokenisation of 1. above with ``max_length=512`` (truncation included), and the attention mask;
3. ``text_encoder(ids, mask).last_hidden_state``, each row trimmed to its real length (``mask.sum()``: the
   tokenizer pads on the right) and zero-padded back to 512: here the pad rows are set to exact zeros, the
   same values without the per-row slicing, and the mask is returned.

The null text of classifier-free guidance and of caption dropout is ``TextEncoderConfig.null``: the empty
prompt ``""`` (``</s>`` then pads; the diffusers pipelines' default negative prompt), ``empty()`` ``[L, D]``,
computed once and kept; or zeros of that shape, as CogVideoX's SAT trainer and sampler (``ucg_rate`` 0.1
zeroes the T5 output; ``force_uc_zero_embeddings=["txt"]``), which trained the released weights. ``null()``
gives it as keyword arguments of ``Cond.drop`` / ``Cond.null``; ``null_context`` makes it from cached tokens.

Folders (never downloaded, never ``trust_remote_code``): ``path`` is a CogVideoX or Wan diffusers folder
holding ``text_encoder/`` (``T5EncoderModel`` or ``UMT5EncoderModel``) and ``tokenizer/``, or a single T5
folder holding both; ``text_encoder`` and ``tokenizer`` name the two folders separately (they override
``path``).

Identity. ``text_identity(cfg)`` describes an encoder without loading it: sha256 of its ``config.json``
(minus the transformers version and the saved path), of its weight files' names, sizes, safetensors headers
(tensor names, dtypes, shapes, offsets) and 16 evenly spaced 4 KiB blocks of each file (other values of the
same architecture differ there; this reads kilobytes, not the 9.5 GB of T5-XXL), of its tokenizer files,
plus ``max_length`` and ``use_mask``, and ``clean: True`` when prompts are cleaned (the key is absent
otherwise, so caches made before it existed keep their identity); the hashes are ``minivdit.identity``'s,
shared with the VAE and teacher identities of latent caches. ``tools/cache_text.py`` stamps it into a shard
folder's meta.json, and ``minivdit.data.shards.text_cache_mismatch`` refuses text tokens cached by another
encoder.

``make_tiny_t5(folder)`` writes a tiny random T5 encoder and a word-level T5 tokenizer in the CogVideoX
layout (``model_type="umt5"``: a UMT5 encoder, the Wan layout), for tests and smoke runs without weights.
"""

from __future__ import annotations

import html
import importlib.util
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn
from torch import Tensor

from minivdit.config import check_types
from minivdit.identity import config_sha256, sha, weight_files, weights_sha256

log = logging.getLogger("minivdit")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ARCHS = {"t5": "T5EncoderModel", "umt5": "UMT5EncoderModel"}
"""``config.json`` ``model_type`` -> the encoder-only class loaded from it (T5 v1.1 for CogVideoX, UMT5 for
Wan)."""
NULL_KINDS = ("zeros", "empty")
"""``TextEncoderConfig.null``: an all-zero context (CogVideoX SAT) or the empty prompt's (diffusers)."""
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "spiece.model",
    "special_tokens_map.json",
    "added_tokens.json",
)
"""Files of a tokenizer folder that decide its ids (hashed into the identity)."""


def _hf(name: str):
    """A ``transformers`` class by name, imported on first use (importing transformers costs seconds)."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    return getattr(transformers, name)


@dataclass(frozen=True, kw_only=True)
class TextEncoderConfig:
    """A frozen T5 text encoder from local folders (``minivdit/conditioning/text.py``)."""

    path: str | None = None
    """A CogVideoX or Wan diffusers folder holding ``text_encoder/`` and ``tokenizer/`` (e.g.
    CogVideoX-5b-I2V, Wan2.1-T2V-1.3B-Diffusers), or one T5 folder holding the encoder's config.json, weights
    and the tokenizer files. None: no text encoder."""
    text_encoder: str | None = None
    """The encoder folder (config.json + weights), when not ``<path>/text_encoder``."""
    tokenizer: str | None = None
    """The tokenizer folder, when not ``<path>/tokenizer``."""
    max_length: int = 226
    """Tokens per prompt: every prompt is truncated / padded to exactly this many (CogVideoX: 226; CogVideoX
    1.5 SAT used 224, diffusers 226)."""
    use_mask: bool = False
    """False (CogVideoX): no attention mask in T5, pad tokens' outputs are used as they are, no mask
    returned. True (other models): the mask goes to T5, pad outputs are zeroed and the mask is returned."""
    dtype: Literal["bfloat16", "float32", "float16"] = "bfloat16"
    """Weights and output dtype of the encoder (CogVideoX's trainers run T5 in bf16; fp16 overflows T5)."""
    dropout: float = 0.1
    """Caption dropout in training: the probability that a sample's text becomes the null text (``null``;
    CogVideoX SAT ``ucg_rate`` 0.1; finetrainers' examples use 0.05). Applies to cached text too."""
    null: Literal["zeros", "empty"] = "empty"
    """The null text, used for caption dropout in training and for the unconditional branch of CFG at
    sampling (cached text included). "empty": T5("") (the diffusers pipelines' default negative prompt,
    diffusers' and CogVideo's ``finetune/`` trainers, finetrainers). "zeros": an all-zero context ``[L, D]``:
    SAT's ``ucg_rate`` multiplies the T5 output by 0 (``sat/sgm/modules/encoders/modules.py``,
    ``get_single_embedding``) and SAT samples with ``force_uc_zero_embeddings=["txt"]``
    (``sat/sample_video.py``), which is how the released CogVideoX weights were trained."""
    clean: bool = False
    """Clean each prompt before tokenising as the Wan pipelines do (:func:`prompt_clean`: ftfy when
    installed, HTML unescape, whitespace collapse). False: the prompt as given (CogVideoX)."""

    @classmethod
    def wan(cls, path: str, **overrides) -> TextEncoderConfig:
        """UMT5-XXL as the Wan2.1 pipelines use it (module docstring): a Wan diffusers folder ``path``,
        512 tokens, masked, trimmed and zero-padded, prompts cleaned. ``overrides``: other fields (dtype,
        dropout, null, ...)."""
        return cls(**{"path": path, "max_length": 512, "use_mask": True, "clean": True} | overrides)

    def __post_init__(self):
        check_types(self)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"TextEncoderConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.max_length < 1:
            raise ValueError(f"TextEncoderConfig.max_length must be >= 1, got {self.max_length}")
        for name in ("path", "text_encoder", "tokenizer"):
            if getattr(self, name) == "":
                raise ValueError(f"TextEncoderConfig.{name}: empty path (use None)")
        if self.dtype not in DTYPES:
            raise ValueError(f"TextEncoderConfig.dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.null not in NULL_KINDS:
            raise ValueError(f"TextEncoderConfig.null must be one of {NULL_KINDS}, got {self.null!r}")

    @property
    def enabled(self) -> bool:
        """Whether any folder is set."""
        return bool(self.path or self.text_encoder or self.tokenizer)


# ---------------------------------------------------------------------------------------------- folders


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"text encoder: cannot read {path} ({e})") from e


def resolve_folders(cfg: TextEncoderConfig) -> tuple[Path, Path]:
    """``(text_encoder folder, tokenizer folder)`` of ``cfg``; ValueError naming the folder when one is
    missing, has no config.json, or is not a T5 encoder (``model_type`` not in ``ARCHS``)."""
    if not cfg.enabled:
        raise ValueError(
            "text encoder: no folder given (set --text.path, or --text.text-encoder and --text.tokenizer)"
        )
    root = Path(cfg.path) if cfg.path else None
    if root is not None and not root.is_dir():
        raise ValueError(
            f"text encoder: {root}: no such folder (expected a CogVideoX or Wan diffusers folder)"
        )
    if root is None and not (cfg.text_encoder and cfg.tokenizer):
        raise ValueError(
            "text encoder: without --text.path give both --text.text-encoder and --text.tokenizer, got "
            f"text_encoder={cfg.text_encoder!r}, tokenizer={cfg.tokenizer!r}"
        )
    single = root is not None and (root / "config.json").is_file()  # one T5 folder holding everything
    encoder = Path(cfg.text_encoder) if cfg.text_encoder else (root if single else root / "text_encoder")
    tokenizer = Path(cfg.tokenizer) if cfg.tokenizer else (root if single else root / "tokenizer")
    if not encoder.is_dir():
        raise ValueError(
            f"text encoder: {encoder}: no such folder (expected a T5 encoder folder: config.json + weights, "
            f"as <CogVideoX or Wan folder>/text_encoder)"
        )
    if not (encoder / "config.json").is_file():
        raise ValueError(f"text encoder: {encoder}: no config.json in it (expected a Hugging Face T5 folder)")
    model_type = _read_json(encoder / "config.json").get("model_type")
    if model_type not in ARCHS:
        raise ValueError(
            f"text encoder: {encoder} holds model_type {model_type!r}, not a T5 encoder (expected one of "
            f"{sorted(ARCHS)})"
        )
    if not tokenizer.is_dir():
        raise ValueError(
            f"text encoder: tokenizer folder {tokenizer}: no such folder (expected <CogVideoX or Wan "
            f"folder>/tokenizer with spiece.model or tokenizer.json)"
        )
    if not any((tokenizer / name).is_file() for name in ("tokenizer.json", "spiece.model")):
        raise ValueError(
            f"text encoder: tokenizer folder {tokenizer} holds neither tokenizer.json nor spiece.model"
        )
    return encoder, tokenizer


def text_identity(cfg: TextEncoderConfig) -> dict:
    """What made (or would make) cached text tokens, without loading the encoder (module docstring)."""
    encoder, tokenizer = resolve_folders(cfg)
    config = _read_json(encoder / "config.json")
    weights = weight_files(encoder)
    if not weights:
        raise ValueError(f"text encoder: {encoder}: no weight files (*.safetensors / *.bin) in it")
    tok_files = [tokenizer / n for n in TOKENIZER_FILES if (tokenizer / n).is_file()]
    return {
        "class": "T5TextEncoder",
        "model_type": config.get("model_type"),
        "name": Path(cfg.path).name if cfg.path else encoder.name,
        "d_model": config.get("d_model"),
        "config_sha256": config_sha256(config),
        "weights_sha256": weights_sha256(weights),
        "tokenizer_sha256": sha([b for p in tok_files for b in (p.name.encode(), p.read_bytes())]),
        "max_length": cfg.max_length,
        "use_mask": cfg.use_mask,
        "dtype": cfg.dtype,
        # only when set: caches made before the field existed (no key) were not cleaned, and keep matching
        **({"clean": True} if cfg.clean else {}),
    }


# ---------------------------------------------------------------------------------------------- prompts


def prompt_clean(text: str) -> str:
    """A prompt as the Wan pipelines clean it before tokenising (``TextEncoderConfig.clean``;
    ``diffusers/pipelines/wan/pipeline_wan.py`` l.78-93, ``Wan2.1/wan/modules/tokenizers.py`` l.12-21):
    ``ftfy.fix_text`` when ftfy is installed (diffusers' condition: the original always runs it; it only
    changes mojibake), HTML entities unescaped twice, runs of whitespace made one space, ends stripped."""
    if importlib.util.find_spec("ftfy") is not None:
        import ftfy

        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


# ---------------------------------------------------------------------------------------------- encoder


class T5TextEncoder(nn.Module):
    """A frozen T5 encoder + its tokenizer (module docstring). Always in eval mode, no gradients."""

    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.cfg = cfg
        encoder_dir, tokenizer_dir = resolve_folders(cfg)
        self._identity = text_identity(cfg)
        model_type = _read_json(encoder_dir / "config.json")["model_type"]
        cls = _hf(ARCHS[model_type])
        try:
            model, info = cls.from_pretrained(
                encoder_dir, output_loading_info=True, local_files_only=True, dtype=DTYPES[cfg.dtype]
            )
        except (OSError, ValueError) as e:
            raise ValueError(f"text encoder: cannot load {cls.__name__} from {encoder_dir}: {e}") from e
        missing = sorted(str(k) for k in info.get("missing_keys") or ())
        if missing or info.get("mismatched_keys"):
            raise ValueError(
                f"text encoder: {encoder_dir} does not hold the weights of a {cls.__name__}: "
                f"{len(missing)} missing keys {missing[:10]}, mismatched {info.get('mismatched_keys')}"
            )
        unexpected = sorted(str(k) for k in info.get("unexpected_keys") or ())
        if unexpected:  # e.g. the lm_head of a full T5 checkpoint: not used by the encoder
            log.info(
                f"text encoder: {encoder_dir}: {len(unexpected)} unused weights ignored, "
                f"e.g. {unexpected[:3]}"
            )
        try:
            tokenizer = _hf("AutoTokenizer").from_pretrained(
                tokenizer_dir, local_files_only=True, trust_remote_code=False
            )
        except (OSError, ValueError, ImportError, TypeError) as e:
            raise ValueError(
                f"text encoder: cannot load the tokenizer from {tokenizer_dir}: {e} (a folder with only "
                f"spiece.model needs the sentencepiece and protobuf packages)"
            ) from e
        if tokenizer.pad_token_id is None:
            raise ValueError(f"text encoder: the tokenizer in {tokenizer_dir} has no pad token")
        if cfg.use_mask and tokenizer.padding_side != "right":  # pads must follow the text (encode)
            raise ValueError(
                f"text encoder: the tokenizer in {tokenizer_dir} pads on the {tokenizer.padding_side}; "
                f"use_mask (the Wan pipelines' trim-and-zero-pad) needs right padding, as T5 tokenizers do"
            )
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self._null: tuple[Tensor, Tensor | None] | None = None
        self.eval()

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        """Width ``D`` of the tokens (T5-XXL: 4096)."""
        return int(self.model.config.d_model)

    @property
    def max_length(self) -> int:
        return self.cfg.max_length

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def identity(self) -> dict:
        """``text_identity(cfg)`` (module docstring): stamps caches made with this encoder."""
        return dict(self._identity)

    def train(self, mode: bool = True) -> T5TextEncoder:
        return super().train(False)  # frozen: dropout stays off whatever the caller asks

    # ------------------------------------------------------------------ encoding
    def tokenize(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """``input_ids [B, L]`` and ``attention_mask [B, L]`` exactly as the CogVideoX pipelines tokenise."""
        out = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.cfg.max_length,
            truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        )
        return out.input_ids, out.attention_mask

    @torch.no_grad()
    def encode(self, prompts: str | Sequence[str]) -> tuple[Tensor, Tensor | None]:
        """``context [B, L, D]`` in the encoder's dtype on its device, and ``mask [B, L]`` bool (True = real
        token) with ``use_mask``, else None (CogVideoX: every one of the ``L`` tokens is used)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"encode: prompts must be a non-empty list of str, got {prompts!r:.200}")
        if self.cfg.clean:  # the Wan pipelines clean before tokenising (pipeline_wan.py l.170)
            prompts = [prompt_clean(p) for p in prompts]
        ids, attention = self.tokenize(prompts)
        full = self.tokenizer(prompts, add_special_tokens=True).input_ids
        cut = sum(len(x) > self.cfg.max_length for x in full)
        if cut:
            log.warning(
                f"text encoder: {cut} of {len(prompts)} prompts truncated to {self.cfg.max_length} tokens"
            )
        device = self.device
        if not self.cfg.use_mask:
            context = self.model(ids.to(device))[0]  # [B, L, D], no mask (CogVideoX)
            return context, None
        mask = attention.to(device).bool()  # [B, L]
        context = self.model(ids.to(device), attention_mask=mask.long())[0]  # [B, L, D]
        # the Wan pipelines trim each row to mask.sum() and re-pad with zeros (pipeline_wan.py l.188-191):
        # with right padding, exact zeros at the pad rows (masked_fill, not a product: 0 * inf is nan)
        return context.masked_fill(~mask[..., None], 0.0), mask

    def forward(self, prompts: str | Sequence[str]) -> tuple[Tensor, Tensor | None]:
        return self.encode(prompts)

    def _null_pair(self) -> tuple[Tensor, Tensor | None]:
        if self._null is None:
            context, mask = self.encode([""])
            self._null = (context[0].detach().cpu(), None if mask is None else mask[0].cpu())
        context, mask = self._null
        return context.to(self.device), None if mask is None else mask.to(self.device)

    def empty(self) -> Tensor:
        """The empty prompt's tokens ``[L, D]`` (computed once): the null text with ``null="empty"``, and what
        ``tools/cache_text.py`` caches as the null whatever ``null`` says."""
        return self._null_pair()[0]

    def empty_mask(self) -> Tensor | None:
        """The empty prompt's mask ``[L]`` with ``use_mask`` (only ``</s>`` is True), else None."""
        return self._null_pair()[1]

    def null(self) -> dict[str, Tensor | None]:
        """The null text of ``cfg.null`` (:func:`null_context` of the empty prompt) as ``{"context": [L, D],
        "context_mask": [L] | None}``: ``cond.drop(keep, **encoder.null())``."""
        context, mask = null_context(self.cfg.null, *self._null_pair())
        return {"context": context, "context_mask": mask}


def null_context(kind: str, empty: Tensor, empty_mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """The null text ``(context [L, D], mask [L] | None)`` of ``TextEncoderConfig.null`` from the empty
    prompt's tokens (online, or cached by ``tools/cache_text.py``): "empty" returns them, "zeros" zeros of
    their shape and dtype (SAT). The mask is the empty prompt's either way (with ``use_mask`` the model then
    attends to one zero token, ``</s>``'s; CogVideoX has no mask)."""
    if kind not in NULL_KINDS:
        raise ValueError(f"null text must be one of {NULL_KINDS}, got {kind!r}")
    return (torch.zeros_like(empty) if kind == "zeros" else empty), empty_mask


def build_text_encoder(cfg: TextEncoderConfig) -> T5TextEncoder | None:
    """The encoder of ``cfg``, or None when no folder is set."""
    return T5TextEncoder(cfg) if cfg.enabled else None


# ---------------------------------------------------------------------------------------------- tiny model

TINY_WORDS = tuple(
    " ".join(
        [
            "a the of and in on to with over time lapse timelapse flower flowers bloom blooms blooming",
            "plant grows growing seed bread dough rises rising ice melts melting sky clouds city night day",
            "sun sets rise video red blue green yellow white small large slowly fast",
        ]
    ).split()
)


def make_tiny_t5(
    path: str | Path,
    *,
    seed: int = 0,
    d_model: int = 32,
    num_layers: int = 2,
    model_type: Literal["t5", "umt5"] = "t5",
) -> Path:
    """Write a tiny random T5 encoder (``T5Config(d_model=32, d_kv=8, num_heads=4, num_layers=2, d_ff=64,
    gated-gelu)``, as T5 v1.1; ``model_type="umt5"``: the same ``UMT5Config``, a relative-position bias in
    every layer, as Wan's UMT5-XXL) to ``<path>/text_encoder`` and a T5 tokenizer over ``TINY_WORDS``
    (Unigram, ``<pad>``=0, ``</s>``=1, ``<unk>``=2, metaspace pre-tokenizer and ``</s>`` appended, as T5's;
    single letters cover other words) to ``<path>/tokenizer``: the CogVideoX (and Wan) diffusers layout, so
    ``TextEncoderConfig(path=...)`` loads it. No download; the global RNG state is left untouched. For
    tests and smoke runs, which have no real weights. Returns ``path``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,"
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(f"▁{w}", -3.0 - 0.01 * i) for i, w in enumerate(TINY_WORDS)]
    vocab += [(c, -10.0) for c in letters] + [(f"▁{c}", -9.0) for c in letters if c not in TINY_WORDS]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single=["$A", "</s>"], pair=["$A", "</s>", "$B", "</s>"], special_tokens=[("</s>", 1)]
    )
    tokenizer = _hf("T5TokenizerFast")(
        tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", extra_ids=0
    )
    folder = Path(path)
    tokenizer.save_pretrained(folder / "tokenizer")
    if model_type not in ARCHS:
        raise ValueError(f"make_tiny_t5: model_type must be one of {sorted(ARCHS)}, got {model_type!r}")
    config = _hf({"t5": "T5Config", "umt5": "UMT5Config"}[model_type])(
        vocab_size=len(vocab),
        d_model=d_model,
        d_kv=8,
        num_heads=4,
        num_layers=num_layers,
        d_ff=2 * d_model,
        feed_forward_proj="gated-gelu",
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _hf(ARCHS[model_type])(config)
    model.save_pretrained(folder / "text_encoder")
    return folder


__all__ = [
    "T5TextEncoder",
    "TextEncoderConfig",
    "build_text_encoder",
    "make_tiny_t5",
    "null_context",
    "prompt_clean",
    "resolve_folders",
    "text_identity",
]
