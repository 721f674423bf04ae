"""The oracle side of the VLM tests: the Qwen2.5-VL chat template (the hub's ``chat_template.json``, the
processor's default; ``VLMPrompt`` writes it out and is compared with it) and the real
``Qwen2_5_VLProcessor`` built around a tiny tokenizer. The tiny model itself is
``minivdit.conditioning.vlm.make_tiny_qwen_vl``.
"""

from __future__ import annotations

from pathlib import Path

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


def save_qwen_vl(folder: Path, *, hidden: int = 16, seed: int = 0) -> Path:
    """``minivdit.conditioning.vlm.make_tiny_qwen_vl``: tokenizer + a 2-layer random Qwen2.5-VL."""
    from minivdit.conditioning.vlm import make_tiny_qwen_vl

    return make_tiny_qwen_vl(folder, hidden=hidden, seed=seed)


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
