"""A tiny random Qwen2.5-VL in the real hub folder layout, tokenizer included, for CPU tests (no download).

The tokenizer is a byte-level BPE (the Qwen2 tokenizer's model type) trained on a few sentences, with
Qwen's special tokens; the model is diffusers' own tiny test configuration (anchors-conditioning §3) with the
vocabulary and special ids of that tokenizer. The Qwen2.5-VL chat template is the hub's
``chat_template.json`` one: ``TEMPLATE`` is the oracle ``VLMPrompt`` is compared with.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>",
]  # fmt: skip

# Qwen2-VL / Qwen2.5-VL-Instruct's chat template (hub chat_template.json), the processor's default
TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in "
    "messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful "
    "assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string "
    "%}{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}{% if "
    "content['type'] == 'image' or 'image' in content or 'image_url' in content %}{% set image_count.value = "
    "image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: {% endif "
    "%}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'video' or 'video' in content "
    "%}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value "
    "}}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}{{ "
    "content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt "
    "%}<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
    "You are a helpful assistant.", "system user assistant", "a red disc moving right",
    "a blue square moving left", "a green triangle moving up", "a yellow star moving down",
]  # fmt: skip


def save_tokenizer(folder: Path, corpus: list[str] = CORPUS, vocab_size: int = 400) -> None:
    """A Qwen2 tokenizer (``tokenizer.json`` + ``tokenizer_config.json``) with Qwen's special tokens first."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.trainers import BpeTrainer

    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=alphabet, show_progress=False
    )
    tok.train_from_iterator(corpus, trainer)
    tok.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "Qwen2Tokenizer", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config | {"model_max_length": 32768}))


def save_qwen_vl(folder: Path, *, hidden: int = 16, seed: int = 0) -> Path:
    """Tokenizer + a 2-layer random ``Qwen2_5_VLForConditionalGeneration`` of width ``hidden``."""
    import transformers

    save_tokenizer(folder)
    tok = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIALS}
    heads = 2
    rope = [1, 1, 2] if hidden // heads == 8 else [hidden // heads // 8 * k for k in (1, 1, 2)]
    cfg = transformers.Qwen2_5_VLConfig(
        text_config=dict(
            hidden_size=hidden, intermediate_size=hidden, num_hidden_layers=2, num_attention_heads=heads,
            num_key_value_heads=heads, rope_theta=1e6, vocab_size=len(tok),
            bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
            rope_scaling={"mrope_section": rope, "rope_type": "default", "type": "default"},
        ),
        vision_config=dict(depth=2, hidden_size=16, intermediate_size=16, num_heads=2,
                           out_hidden_size=hidden),
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
    )  # fmt: skip
    torch.manual_seed(seed)
    transformers.Qwen2_5_VLForConditionalGeneration(cfg).save_pretrained(folder)
    return folder


def reference_processor(folder: Path):
    """The real ``Qwen2_5_VLProcessor`` (its ``apply_chat_template`` and ``__call__``) on the folder's
    tokenizer and the PIL image processor; only ``__init__`` is replaced, whose video processor needs
    torchvision (not installable here)."""
    from transformers import AutoTokenizer, Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.processing_utils import ProcessorMixin

    class Processor(Qwen2_5_VLProcessor):
        def __init__(self, image_processor, tokenizer, chat_template):
            self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return Processor(Qwen2VLImageProcessorPil(), tok, TEMPLATE)
