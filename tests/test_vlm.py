"""The frozen Qwen2.5-VL condition encoder (``minivdit/conditioning/vlm.py``) on a tiny random Qwen2.5-VL
saved in the real folder layout (``Qwen2_5_VLForConditionalGeneration.save_pretrained``), with hand-built
token ids as anchors-conditioning §3 describes (no tokenizer download)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from minivdit.conditioning.vlm import VLMConfig, VLMEncoder, VLMPrompt, qwen_image_inputs, smart_resize

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


# ---------------------------------------------------------------------------------------------- prompts


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    """A tiny random Qwen2.5-VL with a real (tiny) Qwen2 tokenizer in the folder (``tests/tiny_qwen.py``)."""
    from tiny_qwen import save_qwen_vl

    return save_qwen_vl(tmp_path_factory.mktemp("qwen") / "Qwen2.5-VL-tok")


def _released_inputs(processor, caption: str, frame, caption_tokens: int, max_length: int):
    """``flashi2v_dataset.py`` l.111-177 with the real processor: the caption tokenised with padding to
    ``caption_tokens``, truncated and decoded; the first frame resized to 240 × 416 on 0-255 floats
    (torchvision's tensor ``resize(BICUBIC)`` is ``interpolate(bicubic, antialias=True)``), rounded to uint8;
    the chat template with the generation prompt; ``processor(padding="max_length")``."""
    tok = processor.tokenizer
    ids = tok(caption, padding="max_length", max_length=caption_tokens, truncation=True, return_tensors="pt")
    text = tok.decode(ids["input_ids"].squeeze()[:caption_tokens], skip_special_tokens=True)
    content = [{"type": "text", "text": text}]
    images = None
    if frame is not None:
        x = torch.nn.functional.interpolate((frame[None] + 1) * 127.5, size=(240, 416), mode="bicubic",
                                            antialias=True)  # fmt: skip
        x = x.clamp(0, 255).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()
        images, content = [Image.fromarray(x)], [{"type": "image", "image": "1f.jpg"}] + content
    chat = processor.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
    )
    kw = dict(padding="max_length", max_length=max_length, return_tensors="pt")
    return processor(text=[chat], images=images, **kw)


def test_prompt_is_the_released_datasets(qwen):
    from tiny_qwen import reference_processor

    processor = reference_processor(qwen)
    prompt = VLMPrompt(VLMConfig(path=str(qwen), caption_tokens=6, max_length=200))
    frames = torch.rand(2, 3, 30, 52, generator=torch.Generator().manual_seed(0)) * 2 - 1
    captions = ["a red disc moving right, then a blue square moving left", ""]  # truncated; dropped
    got = prompt(captions, frames)
    rows = 0
    for i, caption in enumerate(captions):
        want = _released_inputs(processor, caption, frames[i], caption_tokens=6, max_length=200)
        assert torch.equal(got["input_ids"][i], want["input_ids"][0])
        assert torch.equal(got["attention_mask"][i], want["attention_mask"][0])
        assert torch.equal(got["image_grid_thw"][i], want["image_grid_thw"][0])
        n = len(want["pixel_values"])
        assert torch.equal(got["pixel_values"][rows : rows + n], want["pixel_values"])
        rows += n
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert (got["input_ids"] == image_pad).sum(1).tolist() == [135, 135]  # 240 × 416 → 252 × 420 → 9 × 15
    assert got["attention_mask"][0].sum() > got["attention_mask"][1].sum()  # the caption's tokens
    text_only = prompt(captions[:1])  # no frame: the template without the image
    want = _released_inputs(processor, captions[0], None, caption_tokens=6, max_length=200)
    assert set(text_only) == {"input_ids", "attention_mask"}
    assert torch.equal(text_only["input_ids"], want["input_ids"])
    with pytest.raises(ValueError, match="over VLMConfig.max_length=100"):
        VLMPrompt(VLMConfig(path=str(qwen), max_length=100))(captions, frames)


def test_encode_is_the_released_text_models_state(qwen):
    from tiny_qwen import reference_processor

    cfg = VLMConfig(path=str(qwen), dtype="float32", max_length=200)
    encoder = VLMEncoder(cfg)
    frames = torch.rand(1, 3, 24, 40, generator=torch.Generator().manual_seed(1)) * 2 - 1
    tokens, mask = encoder.encode(["a green triangle moving up"], frames)
    inputs = _released_inputs(reference_processor(qwen), "a green triangle moving up", frames[0], 512, 200)
    text_model = transformers.Qwen2_5_VLTextModel.from_pretrained(qwen).eval()
    with torch.no_grad():  # train l.500: vlm_encoder(**vlm_inputs, return_dict=False, use_cache=False)[0]
        want = text_model(**inputs, return_dict=False, use_cache=False)[0]
    assert mask is None and tokens.shape == (1, 200, 16)
    assert torch.equal(tokens, want)  # the same ids and operations
    seen = VLMEncoder(VLMConfig(path=str(qwen), dtype="float32", max_length=200, use_vision=True))
    a, _ = seen.encode(["a green triangle moving up"], frames)
    b, _ = seen.encode(["a green triangle moving up"], -frames)
    changed = (a - b).abs().amax(-1)[0] > 0  # [L]: the rows from the first image token on see the pixels
    pad = transformers.AutoTokenizer.from_pretrained(qwen).convert_tokens_to_ids("<|image_pad|>")
    first = int((inputs["input_ids"][0] == pad).nonzero()[0])
    assert not changed[:first].any() and changed[first : first + 135].all()
    assert torch.equal(encoder.encode(["a green triangle moving up"], -frames)[0], tokens)  # released: blind


def test_tiny_qwen_reads_each_caption_word_as_one_token(tmp_path):
    """``make_tiny_qwen_vl``: its tokenizer knows the synthetic captions' words (one token each, so a
    caption's features differ word by word), loads as a ``VLMEncoder``, and the global RNG is untouched."""
    from minivdit.conditioning.vlm import make_tiny_qwen_vl
    from minivdit.data.synthetic import caption

    state = torch.random.get_rng_state()
    folder = make_tiny_qwen_vl(tmp_path / "qwen", hidden=32, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    for text in (caption(0, 0), caption(3, 5), caption(7, 7)):
        assert len(tok(text)["input_ids"]) == len(text.split()), text
    encoder = VLMEncoder(VLMConfig(path=str(folder), dtype="float32", max_length=180))
    tokens, _ = encoder.encode([caption(0, 0), caption(1, 1)], torch.zeros(2, 3, 16, 16))
    assert encoder.dim == 32 and tokens.shape == (2, 180, 32) and not torch.equal(tokens[0], tokens[1])
