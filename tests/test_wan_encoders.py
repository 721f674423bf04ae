"""Wan2.1 conditioning encoders (issue 19 §3) against the diffusers Wan pipelines as the oracle:

- UMT5 text (``TextEncoderConfig.wan``, ``minivdit/conditioning/text.py``) equals
  ``WanPipeline._get_t5_prompt_embeds`` at 512 tokens, cleaning and truncation included, and its text cache is
  stamped with the encoder's identity;
- CLIP image tokens (``minivdit/conditioning/clip_image.py``) equal ``WanImageToVideoPipeline.encode_image``
  with the PIL-backend ``CLIPImageProcessor`` (transformers 5's default one needs torchvision).

Tiny random models saved to tmp folders, every parameter random (layer norms included). Both oracles run the
same transformers module on the same inputs and batch as minivdit, so the comparisons are exact (see each).

Run: ``OMP_NUM_THREADS=1 pytest -q tests/test_wan_encoders.py`` (CPU, a few seconds).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from test_text import load_tool, write_video  # tests/ is on sys.path (pytest's rootdir insertion)

from minivdit.conditioning.clip_image import (
    CLIPImageEncoder,
    ImageEncoderConfig,
    build_image_encoder,
    image_encoder_identity,
    make_tiny_clip_vision,
)
from minivdit.conditioning.text import (
    T5TextEncoder,
    TextEncoderConfig,
    make_tiny_t5,
    prompt_clean,
    text_identity,
)
from minivdit.data import DataConfig
from minivdit.data import shards as S
from minivdit.media import to_uint8

pytestmark = [pytest.mark.usefixtures("single_thread")]
MESSY = "  Bread dough &amp;amp; ice\tmelts\n slowly  "  # double-escaped entity, tab, newline, ends
LONG = " ".join(["flower"] * 600)  # 601 tokens: truncated to 511 + </s>
PROMPTS = ["a flower blooming over time", MESSY, "", LONG]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Every parameter random: norm weights ~ 1 + N(0, 0.2²) (a zero-mean norm weight would hide a missing
    norm), the rest N(0, 0.2²)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            base = 1.0 if "norm" in name and name.endswith("weight") else 0.0
            p.copy_(base + 0.2 * torch.randn(p.shape, generator=gen))


@pytest.fixture(scope="module")
def umt5(tmp_path_factory) -> Path:
    """A tiny UMT5 in the Wan diffusers layout (<folder>/text_encoder, <folder>/tokenizer), all random."""
    import transformers

    folder = make_tiny_t5(tmp_path_factory.mktemp("models") / "Wan-tiny", model_type="umt5")
    model = transformers.UMT5EncoderModel.from_pretrained(folder / "text_encoder", local_files_only=True)
    randomise(model, seed=1)
    model.save_pretrained(folder / "text_encoder")
    return folder


@pytest.fixture(scope="module")
def text_encoder(umt5) -> T5TextEncoder:
    return T5TextEncoder(TextEncoderConfig.wan(str(umt5), dtype="float32"))


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_tiny_clip_vision(tmp_path_factory.mktemp("models") / "Wan-I2V-tiny")


@pytest.fixture(scope="module")
def image_encoder(clip) -> CLIPImageEncoder:
    return CLIPImageEncoder(ImageEncoderConfig(path=str(clip)))


# ---------------------------------------------------------------------------------------------- UMT5 text


def test_umt5_equals_wan_pipeline_including_cleaning_and_truncation(text_encoder):
    wan = pytest.importorskip("diffusers.pipelines.wan.pipeline_wan")
    for text in PROMPTS:  # the cleaning is diffusers' (ftfy is used by both or by neither)
        assert prompt_clean(text) == wan.prompt_clean(text)
    assert prompt_clean(MESSY) == "Bread dough & ice melts slowly"
    stub = SimpleNamespace(
        tokenizer=text_encoder.tokenizer, text_encoder=text_encoder.model, _execution_device="cpu"
    )
    with torch.no_grad():
        want = wan.WanPipeline._get_t5_prompt_embeds(
            stub, prompt=PROMPTS, max_sequence_length=512, device="cpu"
        )
    got, mask = text_encoder.encode(PROMPTS)
    # bit-identical by construction: the same ids and mask go through the same UMT5 module on the same batch
    # (same kernels), and the pipeline's trimmed-and-zero-padded rows are zeros exactly where mask is False
    assert want.shape == got.shape == (4, 512, 32) and got.dtype == torch.float32
    assert torch.equal(got, want)
    lengths = mask.sum(1).tolist()
    assert lengths[2] == 1 and lengths[3] == 512  # "" is </s> alone; the long prompt fills all 512
    ids, _ = text_encoder.tokenize([LONG])
    assert ids[0, -1] == 1  # truncated to 511 tokens + </s>, as the pipeline's tokenizer call
    assert (got[0, lengths[0] :] == 0).all() and (got[0, : lengths[0]].abs().sum(-1) > 0).all()
    # without the cleaning the messy prompt would give other ids (the entity, the spacing)
    raw, cleaned = (text_encoder.tokenize([p])[0] for p in (MESSY, prompt_clean(MESSY)))
    assert not torch.equal(raw, cleaned)


def test_umt5_null_identity_and_text_cache(umt5, text_encoder, tmp_path):
    """The empty prompt's 512 tokens are the null; ``tools/cache_text.py`` caches Wan text with the masks and
    stamps the identity (``clean`` included), and a cache made without cleaning is refused."""
    assert text_encoder.empty().shape == (512, 32) and text_encoder.empty_mask().sum() == 1
    assert not text_encoder.empty()[1:].any()
    ident = text_identity(text_encoder.cfg)
    assert ident["model_type"] == "umt5" and ident["max_length"] == 512 and ident["use_mask"] is True
    assert ident["clean"] is True and "clean" not in text_identity(TextEncoderConfig(path=str(umt5)))

    root = tmp_path / "videos"
    for k, vid in enumerate(["v1", "v2"]):
        write_video(root / f"{vid}.mp4", 4, w=16, h=8, seed=k)
    (root / "captions.csv").write_text('videoid,name\nv1,"Bread  dough &amp; rises "\nv2,a flower blooming\n')
    data = DataConfig(
        dataset="folder",
        root=str(root),
        labels_csv="captions.csv",
        num_frames=2,
        frame_interval=1,
        image_size=8,
        batch_size=2,
    )
    out = S.write_clip_shards(data, tmp_path / "shards", samples_per_shard=2)
    cache_text = load_tool("cache_text")
    flags = ["--root", str(out), "--text.path", str(umt5), "--text.max-length", "512", "--text.use-mask"]
    cache_text.main(
        [*flags, "--text.clean", "--text.dtype", "float32", "--dtype", "float32", "--batch-size", "1"]
    )
    meta = S.read_meta(out)
    assert (
        meta["text_encoder"]["clean"] is True and S.text_cache_mismatch(meta, text_encoder.identity()) is None
    )
    ds = S.ShardDataset(out)
    for i in range(2):
        sample = ds.get(i)
        context, mask = text_encoder.encode([sample["caption"]])
        # one caption per encoder call (--batch-size 1) as here, stored in the encoder's float32: exact
        assert torch.equal(sample["text"], context[0]) and torch.equal(sample["text_mask"], mask[0])
    null, null_mask = ds.text_null()
    assert torch.equal(null, text_encoder.empty()) and torch.equal(null_mask, text_encoder.empty_mask())
    unclean = text_identity(dataclasses.replace(text_encoder.cfg, clean=False))
    assert "differing: clean" in S.text_cache_mismatch(meta, unclean)
    with pytest.raises(ValueError, match="cached by another text encoder"):
        cache_text.main([*flags, "--text.dtype", "float32", "--dtype", "float32"])


# ---------------------------------------------------------------------------------------------- CLIP image


def pipeline_tokens(clip: Path, images: list[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
    """``WanImageToVideoPipeline.encode_image`` on ``images`` with the folder's processor config in the PIL
    backend and an independently loaded ``CLIPVisionModel``: ``(pixel_values, tokens)``."""
    i2v = pytest.importorskip("diffusers.pipelines.wan.pipeline_wan_i2v")
    import transformers
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    processor = CLIPImageProcessorPil.from_pretrained(clip / "image_processor", local_files_only=True)
    model = transformers.CLIPVisionModel.from_pretrained(clip / "image_encoder", local_files_only=True).eval()
    stub = SimpleNamespace(image_processor=processor, image_encoder=model, _execution_device="cpu")
    with torch.no_grad():
        tokens = i2v.WanImageToVideoPipeline.encode_image(stub, images, device="cpu")
    return processor(images=images, return_tensors="pt").pixel_values, tokens


def test_clip_tokens_equal_wan_i2v_pipeline_encode_image(clip, image_encoder):
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (50, 29, 4), dtype=np.uint8)  # portrait, partly transparent
    images = [
        Image.fromarray(rng.integers(0, 256, (37, 61, 3), dtype=np.uint8)),  # landscape, odd sizes
        Image.fromarray(rgba),
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)),  # grayscale at the crop size
    ]
    want_pixels, want = pipeline_tokens(clip, images)
    # bit-identical by construction: the same PIL resize, crop indices and IEEE float64 rescale / float32
    # normalise as the PIL backend, then the same CLIPVisionModel module on the same batch
    assert torch.equal(image_encoder.preprocess(images), want_pixels)
    got = image_encoder.encode(images)
    assert got.shape == want.shape == (3, image_encoder.num_tokens, image_encoder.dim) == (3, 5, 32)
    assert torch.equal(got, want)
    with torch.no_grad():  # the penultimate block, not the last one
        last = image_encoder.model(pixel_values=want_pixels).last_hidden_state
    assert not torch.allclose(got, last)


def test_clip_video_frames_are_encoded_as_saved_images(clip, image_encoder):
    """A ``[B, 3, H, W]`` frame in [-1, 1] gives the pipeline's tokens of that frame written as uint8."""
    frames = torch.rand(2, 3, 20, 36, generator=torch.Generator().manual_seed(0)) * 2.2 - 1.1  # some clip
    pictures = [Image.fromarray(f) for f in to_uint8(frames[:, None])[:, 0]]
    _, want = pipeline_tokens(clip, pictures)
    assert torch.equal(image_encoder.encode(frames), want)  # same uint8 pixels, then as above
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        image_encoder.encode(frames[:, :2])


def test_clip_frozen_dtype_identity_and_folder_errors(clip, image_encoder, tmp_path):
    assert not image_encoder.training and not any(p.requires_grad for p in image_encoder.parameters())
    image_encoder.train()
    assert not image_encoder.model.training
    assert build_image_encoder(ImageEncoderConfig()) is None
    half = build_image_encoder(ImageEncoderConfig(path=str(clip), dtype="bfloat16"))
    tokens = half.encode(Image.new("RGB", (40, 30), (200, 30, 90)))
    assert tokens.dtype == torch.bfloat16 and tokens.shape == (1, 5, 32) and not tokens.requires_grad
    ident = image_encoder_identity(ImageEncoderConfig(path=str(clip)))
    assert ident == image_encoder.identity() and ident["hidden_layer"] == -2
    other = make_tiny_clip_vision(tmp_path / "other", seed=1)
    assert (
        image_encoder_identity(ImageEncoderConfig(path=str(other)))["weights_sha256"]
        != ident["weights_sha256"]
    )
    split = ImageEncoderConfig(
        image_encoder=str(clip / "image_encoder"), image_processor=str(clip / "image_processor")
    )
    assert image_encoder_identity(split)["weights_sha256"] == ident["weights_sha256"]

    def fails(match: str, **kw):
        with pytest.raises(ValueError, match=match):
            CLIPImageEncoder(ImageEncoderConfig(**kw))

    fails(f"{tmp_path / 'nope'}: no such folder", path=str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    fails(f"{tmp_path / 'empty' / 'image_encoder'}: no such folder", path=str(tmp_path / "empty"))
    fails("without path give both", image_encoder=str(clip / "image_encoder"))
    (tmp_path / "noproc" / "image_encoder").mkdir(parents=True)
    (tmp_path / "noproc" / "image_encoder" / "config.json").write_text('{"model_type": "clip_vision_model"}')
    fails(
        f"{tmp_path / 'noproc' / 'image_processor'}: no preprocessor_config.json",
        path=str(tmp_path / "noproc"),
    )
    (tmp_path / "t5" / "image_encoder").mkdir(parents=True)
    (tmp_path / "t5" / "image_encoder" / "config.json").write_text('{"model_type": "t5"}')
    fails("holds model_type 't5', not a CLIP vision model", path=str(tmp_path / "t5"))
