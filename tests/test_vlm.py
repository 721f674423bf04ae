"""The frozen Qwen2.5-VL condition encoder (``minivdit/conditioning/vlm.py``) on a tiny random Qwen2.5-VL
saved in the real folder layout (``Qwen2_5_VLForConditionalGeneration.save_pretrained``), with hand-built
token ids as anchors-conditioning §3 describes (no tokenizer download)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from minivdit.conditioning.vlm import VLMConfig, VLMEncoder, qwen_image_inputs, smart_resize

transformers = pytest.importorskip("transformers")
IMAGE_PAD, VISION_START, VISION_END = 151655, 151652, 151653


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A 2-layer, width-16 Qwen2.5-VL (diffusers' own tiny test config, anchors §3)."""
    cfg = transformers.Qwen2_5_VLConfig(
        text_config=dict(
            hidden_size=16, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=2, rope_theta=1e6, vocab_size=152064,
            rope_scaling={"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
        ),
        vision_config=dict(depth=2, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=16),
        vision_start_token_id=VISION_START, vision_end_token_id=VISION_END, image_token_id=IMAGE_PAD,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.Qwen2_5_VLForConditionalGeneration(cfg)
    path = tmp_path_factory.mktemp("qwen") / "Qwen2.5-VL-tiny"
    model.save_pretrained(path)
    return path


def _inputs(seed: int = 0):
    """Prompt ids: system-ish text, <|vision_start|>, 4 image pads (a 4 × 4 patch grid merged 2 × 2),
    <|vision_end|>, caption, 2 pads; random pixels [16, 1176]."""
    ids = torch.tensor(
        [[151644, 8948, 198, VISION_START] + [IMAGE_PAD] * 4 + [VISION_END, 100, 200, 151645, 0, 0]]
    )
    mask = torch.ones_like(ids)
    mask[:, -2:] = 0
    pixels = torch.randn(16, 1176, generator=torch.Generator().manual_seed(seed))
    return ids, mask, pixels, torch.tensor([[1, 4, 4]])


def test_smart_resize_is_qwens():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as reference

    assert smart_resize(240, 416) == (252, 420)  # UniWorld's first frame: 9 × 15 merged tokens
    rng = np.random.default_rng(0)
    for h, w in rng.integers(20, 3000, size=(50, 2)):
        assert smart_resize(int(h), int(w)) == reference(int(h), int(w))


def test_image_inputs_equal_the_pil_processor():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    rng = np.random.default_rng(1)
    images = [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((61, 97), (240, 416))
    ]
    processor = Qwen2VLImageProcessorPil()
    want = processor(images=images, return_tensors="pt")
    pixels, grid = qwen_image_inputs(images)
    assert torch.equal(grid, want["image_grid_thw"])
    assert torch.equal(pixels, want["pixel_values"])  # the same float32 operations in the same order


def test_released_text_model_ignores_the_pixels(folder):
    encoder = VLMEncoder(VLMConfig(path=str(folder), dtype="float32"))
    reference = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(folder).eval()
    ids, mask, pixels, grid = _inputs()
    tokens, kept = encoder.features(ids, mask, pixels, grid)
    with torch.no_grad():
        want = reference.model.language_model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert kept is None and tokens.shape == (1, 14, 16)
    assert torch.equal(tokens, want)  # the same weights and operations
    other, _ = encoder.features(ids, mask, pixels * 3, grid)
    assert torch.equal(tokens, other)  # the image reaches it as placeholder tokens only (anchors §2.1)


def test_vision_changes_the_image_rows_and_layers_and_masks(folder):
    full = VLMEncoder(VLMConfig(path=str(folder), dtype="float32", use_vision=True, keep="valid"))
    reference = transformers.Qwen2_5_VLModel.from_pretrained(folder).eval()
    ids, mask, pixels, grid = _inputs()
    tokens, kept = full.features(ids, mask, pixels, grid)
    with torch.no_grad():
        want = reference(input_ids=ids, attention_mask=mask, pixel_values=pixels, image_grid_thw=grid)
    assert torch.equal(tokens, want.last_hidden_state) and torch.equal(kept, mask.bool())
    other, _ = full.features(ids, mask, pixels * 3, grid)
    changed = (tokens - other).abs().amax(-1)[0]  # [L]
    # causal: the rows before the image see no pixel; the image rows (and what follows) do
    assert not changed[:4].any() and (changed[4:8] > 0).all()
    deeper = VLMEncoder(VLMConfig(path=str(folder), dtype="float32", layer=-2))
    text = transformers.Qwen2_5_VLTextModel.from_pretrained(folder).eval()
    with torch.no_grad():
        hidden = text(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    assert torch.equal(deeper.features(ids, mask)[0], hidden[-2])
    with pytest.raises(ValueError, match="needs pixel_values"):
        full.features(ids, mask)


def test_missing_folder_and_weights_are_named(folder, tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        VLMEncoder(VLMConfig(path=str(tmp_path)))
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((folder / "config.json").read_text())
    weights = {k: v for k, v in load_file(folder / "model.safetensors").items() if "layers.1." not in k}
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="the weights lack"):
        VLMEncoder(VLMConfig(path=str(broken)))
