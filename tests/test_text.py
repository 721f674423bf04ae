"""Text conditioning: the frozen T5 of CogVideoX (``minivdit/conditioning/text.py``), its cache in shards
(``tools/cache_text.py``, ``minivdit/data/shards.py``), and the captioned-video data path: a ``videoid,name``
CSV as ChronoMagic-ProH ships, non-square ``(H, W)`` frames, 4k+1 frames, through shards into ``Batch.text``.

A tiny random T5 encoder and a word-level T5 tokenizer (``make_tiny_t5``) stand in for CogVideoX's; the
reference is the diffusers pipeline's own ``_get_t5_prompt_embeds`` and its tokenisation re-derived here.

Run: ``OMP_NUM_THREADS=1 pytest -q tests/test_text.py`` (CPU, well under a minute).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest
import torch
import tyro
from oracles import load_file  # noqa: E402  (tests/ is on sys.path)

from minivdit.conditioning.text import (
    T5TextEncoder,
    TextEncoderConfig,
    build_text_encoder,
    make_tiny_t5,
    text_identity,
)
from minivdit.data import DataConfig, build_dataset, build_loader, collate
from minivdit.data import shards as S
from minivdit.data import video as V
from minivdit.models.cond import Cond

pytestmark = [pytest.mark.usefixtures("single_thread")]
TOOLS = Path(__file__).parents[1] / "tools"
PROMPTS = ["a flower blooming over time", "Bread dough rises slowly on a white table", ""]


def load_tool(name: str):
    """``tools/<name>.py`` as a module (registered in sys.modules: dataclasses resolve annotations there)."""
    return load_file(f"tool_{name}", TOOLS / f"{name}.py")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def t5(tmp_path_factory) -> Path:
    """A tiny T5 in the CogVideoX diffusers layout: <folder>/text_encoder, <folder>/tokenizer."""
    return make_tiny_t5(tmp_path_factory.mktemp("models") / "CogVideoX-tiny")


@pytest.fixture(scope="module")
def encoder(t5) -> T5TextEncoder:
    return T5TextEncoder(TextEncoderConfig(path=str(t5), dtype="float32"))


def reference_embeds(folder: Path, prompts: list[str], max_length: int = 226) -> torch.Tensor:
    """The CogVideoX pipelines' tokenisation and call, re-derived with plain transformers."""
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
    model = transformers.T5EncoderModel.from_pretrained(folder / "text_encoder", local_files_only=True)
    ids = tokenizer(
        prompts,
        padding="max_length",
        max_length=max_length,
        truncation=True,
        add_special_tokens=True,
        return_tensors="pt",
    ).input_ids
    with torch.no_grad():
        return model.eval().float()(ids)[0]


# ---------------------------------------------------------------------------------------------- encoder


def test_encode_pads_to_226_without_mask_as_cogvideox(encoder, t5):
    ids, attention = encoder.tokenize(PROMPTS)
    assert ids.shape == (3, 226) and attention.shape == (3, 226)
    assert ids[2, 0] == 1 and (ids[2, 1:] == 0).all()  # "" -> </s> then <pad>s
    n = int(attention[0].sum())
    assert ids[0, n - 1] == 1 and (ids[0, n:] == 0).all() and (ids[0, : n - 1] > 2).all()
    context, mask = encoder.encode(PROMPTS)
    assert mask is None and context.shape == (3, 226, 32) and context.dtype == torch.float32
    assert (context[0, n:].abs().sum(-1) > 0).all()  # pad positions give real outputs, used as they are
    assert torch.equal(context, reference_embeds(t5, PROMPTS))  # the same T5 on the same batch: same kernels
    single, _ = encoder.encode(PROMPTS[0])  # a str is one prompt
    # a batch of 1 vs 3: other GEMM shapes, so other kernels; fp32 through 2 layers (≈ 10 products of
    # k ≤ 226 terms): ≈ √10·√226·u ≈ 3e-6 of max|x| ≈ 2.4, ≈ 7e-6
    assert torch.allclose(single[0], context[0], atol=2e-5)


def test_equals_the_diffusers_pipeline_including_truncation(encoder):
    pipeline = pytest.importorskip("diffusers.pipelines.cogvideo.pipeline_cogvideox")
    stub = SimpleNamespace(tokenizer=encoder.tokenizer, text_encoder=encoder.model, _execution_device="cpu")
    long = " ".join(["flower"] * 300)  # 301 tokens: truncated to 225 + </s>
    prompts = [*PROMPTS, long]
    with torch.no_grad():
        want = pipeline.CogVideoXPipeline._get_t5_prompt_embeds(stub, prompt=prompts, device="cpu")
    got, _ = encoder.encode(prompts)
    assert want.shape == (4, 226, 32) and torch.equal(got, want)
    assert encoder.tokenize([long])[0][0, -1] == 1


def test_empty_prompt_is_the_cached_null_context(encoder):
    empty = encoder.empty()
    assert empty.shape == (226, 32) and encoder.empty_mask() is None
    assert torch.equal(empty, encoder.encode([""])[0][0])
    assert encoder.empty() is not None and torch.equal(encoder.empty(), empty)
    context, _ = encoder.encode(PROMPTS[:2])
    dropped = Cond(context=context).drop(torch.tensor([True, False]), **encoder.null())
    assert torch.equal(dropped.context[0], context[0]) and torch.equal(dropped.context[1], empty)


def test_null_text_zeros_or_empty_in_dropout_and_cache(t5, encoder):
    """``TextEncoderConfig.null``: "empty" is T5(""), "zeros" an all-zero context of its shape (SAT's
    ``ucg_rate``); the conditioner's caption dropout and the cached-text path (``null_context``) use it."""
    from minivdit.conditioning import Conditioner
    from minivdit.conditioning.text import null_context

    zeros = T5TextEncoder(TextEncoderConfig(path=str(t5), dtype="float32", null="zeros"))
    assert torch.equal(encoder.null()["context"], encoder.empty())  # the default: "empty"
    assert zeros.null()["context"].shape == (226, 32) and not zeros.null()["context"].any()
    assert torch.equal(zeros.empty(), encoder.empty())  # what tools/cache_text.py caches stays T5("")
    cached = encoder.empty().to(torch.bfloat16)
    z, m = null_context("zeros", cached, None)
    assert z.dtype == torch.bfloat16 and not z.any() and m is None
    assert null_context("empty", cached, None)[0] is cached
    with pytest.raises(ValueError, match="null"):
        TextEncoderConfig(null="none")

    batch = SimpleNamespace(label=torch.zeros(6, dtype=torch.long), text=None, text_mask=None, video=None)
    batch.caption = PROMPTS[:2] * 3
    cond = Conditioner(text_encoder=zeros, text_dropout=0.5)(
        batch, torch.Generator().manual_seed(1), torch.device("cpu")
    )
    keep = torch.rand(6, generator=torch.Generator().manual_seed(1)) >= 0.5  # the conditioner's first draw
    assert 0 < keep.sum() < 6
    encoded = zeros.encode(batch.caption)[0]
    assert not cond.context[~keep].any() and torch.equal(cond.context[keep], encoded[keep])


def test_use_mask_passes_and_returns_the_mask(t5):
    enc = T5TextEncoder(TextEncoderConfig(path=str(t5), dtype="float32", use_mask=True, max_length=16))
    context, mask = enc.encode(PROMPTS)
    ids, attention = enc.tokenize(PROMPTS)
    assert mask.dtype == torch.bool and torch.equal(mask, attention.bool()) and context.shape == (3, 16, 32)
    with torch.no_grad():
        want = enc.model(ids, attention_mask=attention)[0]
    assert torch.allclose(context[mask], want[mask]) and (context[~mask] == 0).all()
    assert torch.equal(enc.empty_mask(), mask[2]) and enc.null()["context_mask"].sum() == 1


def test_frozen_bf16_by_default_and_built_from_config(t5):
    enc = build_text_encoder(TextEncoderConfig(path=str(t5)))
    assert build_text_encoder(TextEncoderConfig()) is None
    assert enc.dtype == torch.bfloat16 and not enc.training
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.model.training
    context, _ = enc.encode(["a flower"])
    assert context.dtype == torch.bfloat16 and not context.requires_grad
    separate = TextEncoderConfig(text_encoder=str(t5 / "text_encoder"), tokenizer=str(t5 / "tokenizer"))
    assert text_identity(separate)["weights_sha256"] == enc.identity()["weights_sha256"]


def test_identity_tells_encoders_apart(t5, tmp_path, encoder):
    base = TextEncoderConfig(path=str(t5), dtype="float32")
    ident = encoder.identity()
    assert ident == text_identity(base) and ident["class"] == "T5TextEncoder" and ident["max_length"] == 226
    other = make_tiny_t5(tmp_path / "other", seed=1)  # same architecture, other weights
    assert text_identity(TextEncoderConfig(path=str(other)))["weights_sha256"] != ident["weights_sha256"]
    assert text_identity(TextEncoderConfig(path=str(other)))["tokenizer_sha256"] == ident["tokenizer_sha256"]
    assert text_identity(TextEncoderConfig(path=str(t5), max_length=77))["max_length"] == 77


def test_missing_or_wrong_folders_are_named(tmp_path, t5):
    def fails(match: str, **kw):
        with pytest.raises(ValueError, match=match):
            T5TextEncoder(TextEncoderConfig(**kw))

    fails(f"{tmp_path / 'nope'}: no such folder", path=str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    fails(f"{tmp_path / 'empty' / 'text_encoder'}: no such folder", path=str(tmp_path / "empty"))
    bert = tmp_path / "bert" / "text_encoder"
    bert.mkdir(parents=True)
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    fails(f"{bert} holds model_type 'bert', not a T5 encoder", path=str(bert.parent))
    fails(
        f"tokenizer folder {tmp_path / 'tok'}: no such folder",
        text_encoder=str(t5 / "text_encoder"),
        tokenizer=str(tmp_path / "tok"),
    )
    fails("give both", text_encoder=str(t5 / "text_encoder"))
    with pytest.raises(ValueError, match="max_length"):
        TextEncoderConfig(path=str(t5), max_length=0)


# ---------------------------------------------------------------------------------------------- data


def write_video(path: Path, n: int, w: int = 48, h: int = 32, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for i in range(n):
            a = np.full((h, w, 3), (8 * i) % 256, np.uint8)
            a[..., 2] = rng.integers(0, 255)
            for p in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


@pytest.fixture(scope="module")
def timelapse(tmp_path_factory) -> Path:
    """A ChronoMagic-ProH-like folder: ``<videoid>.mp4`` (one in a subfolder), a ``videoid,name`` CSV with one
    row whose video is missing."""
    root = tmp_path_factory.mktemp("chronomagic")
    for k, vid in enumerate(["a1B2c3", "d4E5f6", "g7H8i9"]):
        write_video(root / ("part2" if k == 2 else "") / f"{vid}.mp4", 52, seed=k)
    rows = [
        "videoid,name",
        'a1B2c3,"time lapse of a flower blooming, red"',
        "zzzMISSING,a video that was never downloaded",
        "d4E5f6,bread dough rises",
        "g7H8i9,ice melts",
    ]
    (root / "ChronoMagic-ProH.csv").write_text("\n".join(rows) + "\n")
    return root


def timelapse_cfg(root: Path, **kw) -> DataConfig:
    base = dict(
        dataset="folder",
        root=str(root),
        labels_csv="ChronoMagic-ProH.csv",
        num_frames=49,
        frame_interval=1,
        image_size=(16, 24),
        batch_size=2,
    )
    return DataConfig(**(base | kw))


def test_videoid_csv_resolves_counts_missing_and_reads_captions(timelapse, caplog):
    ds = build_dataset(timelapse_cfg(timelapse))
    assert len(ds) == 3 and ds.num_classes == 0 and ds.dropped["missing"] == ["zzzMISSING"]
    assert "1 rows reference missing files" in caplog.text and "zzzMISSING" in caplog.text
    assert [Path(ds.path(i)).name for i in range(3)] == ["a1B2c3.mp4", "d4E5f6.mp4", "g7H8i9.mp4"]
    assert ds.captions == ["time lapse of a flower blooming, red", "bread dough rises", "ice melts"]
    sample = ds.get(0, np.random.default_rng(0))
    assert sample["video"].shape == (49, 3, 16, 24) and sample["caption"] == ds.captions[0]
    (timelapse / "ids.csv").write_text("clip,text\na1B2c3,first\nd4E5f6,second\n")
    named = build_dataset(
        timelapse_cfg(timelapse, labels_csv="ids.csv", path_column="clip", caption_column="text")
    )
    assert named.captions == ["first", "second"]
    with pytest.raises(ValueError, match="no caption column 'nope'"):
        build_dataset(timelapse_cfg(timelapse, caption_column="nope"))
    with pytest.raises(ValueError, match="needs a header with a clip column"):
        build_dataset(timelapse_cfg(timelapse, labels_csv="ids.csv"))


def test_non_square_image_size(timelapse):
    parsed = tyro.cli(DataConfig, args=["--dataset", "folder", "--image-size", "16", "24"])
    assert parsed.image_size == (16, 24) and parsed.frame_size == (16, 24)
    assert tyro.cli(DataConfig, args=["--image-size", "16"]).frame_size == (16, 16)
    assert DataConfig(image_size=[16, 16]).image_size == 16  # a square pair is the int (config.json: a list)
    with pytest.raises(ValueError, match="image_size"):
        DataConfig(dataset="folder", image_size=(16, 0))
    with pytest.raises(ValueError, match="synthetic"):
        DataConfig(image_size=(16, 24))
    # covering resize then centre crop: 32x48 -> x0.5 -> 16x24 exactly; 32x32 -> x0.75 -> 24x24 -> crop rows
    frames = np.zeros((2, 32, 32, 3), np.uint8)
    frames[:, :3] = 255  # a white band on top: cropped away (rows 0..2 -> 0..2 of 24, the crop starts at 4)
    assert (V.to_clip(frames, (16, 24)) == -1).all()
    wide = np.zeros((1, 20, 60, 3), np.uint8)
    wide[..., :15, :] = 255  # left quarter: outside the centred 20x30 crop of crop_resize
    out = V.to_clip(wide, (10, 15), "crop_resize")
    assert out.shape == (1, 3, 10, 15) and (out == -1).all()
    assert V.to_clip(frames, 8).shape == (2, 3, 8, 8)  # ints unchanged


def test_49_frame_captioned_clips_through_shards_and_text_cache_to_batch_text(
    timelapse, t5, encoder, tmp_path
):
    data = timelapse_cfg(timelapse)
    loader = build_loader(data)
    batch = next(loader)
    assert batch.video.shape == (2, 49, 3, 16, 24) and batch.text is None and len(batch.caption) == 2

    out = S.write_clip_shards(data, tmp_path / "shards", samples_per_shard=2)
    cache_text = load_tool("cache_text")
    cache_text.main(
        ["--root", str(out), "--text.path", str(t5), "--text.dtype", "float32", "--batch-size", "2"]
    )
    meta = json.loads((out / "meta.json").read_text())
    assert meta["complete"] and meta["fields"]["text"] == {
        "member": "text.npy",
        "dtype": "bfloat16",
        "shape": [226, 32],
    }
    assert "text_mask" not in meta["fields"]
    ident = encoder.identity()
    assert {k: meta["text_encoder"][k] for k in ident} == ident

    ds = S.ShardDataset(out)
    for i in range(3):
        sample = ds.get(i)
        assert sample["video"].shape == (49, 3, 16, 24) and "text_mask" not in sample
        want = encoder.encode([sample["caption"]])[0][0].to(torch.bfloat16)
        assert sample["text"].dtype == torch.bfloat16 and torch.equal(sample["text"], want)
    null, null_mask = ds.text_null()
    assert null_mask is None and torch.equal(null, encoder.empty().to(torch.bfloat16))

    shard_cfg = DataConfig(dataset="shards", root=str(out), num_frames=49, image_size=(16, 24), batch_size=2)
    batch = next(build_loader(shard_cfg))
    assert batch.text.shape == (2, 226, 32) and batch.text.dtype == torch.bfloat16 and batch.text_mask is None
    assert batch.video.shape == (2, 49, 3, 16, 24)
    only = build_dataset(dataclasses.replace(shard_cfg, shard_fields=("text",)))
    assert set(only.get(0)) == {"key", "label", "text"}
    with pytest.raises(
        ValueError, match=r"at 16x24px, but .* --data.image-size 16: set them to 49 and 16 24"
    ):
        build_dataset(DataConfig(dataset="shards", root=str(out), num_frames=49, image_size=16))

    # a rerun with the same encoder resumes (nothing left to do): the shards are not rewritten
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.tar")}
    cache_text.main(["--root", str(out), "--text.path", str(t5), "--text.dtype", "float32"])
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.tar")} == mtimes


def test_text_cache_of_another_encoder_is_refused(timelapse, t5, tmp_path):
    data = timelapse_cfg(timelapse, num_frames=9, frame_interval=5, image_size=8)
    out = S.write_clip_shards(data, tmp_path / "shards", samples_per_shard=2)
    cache_text = load_tool("cache_text")
    with pytest.raises(ValueError, match="no caption"):
        cache_text.cache_text(
            cache_text.CacheTextConfig(
                root=str(
                    S.write_clip_shards(
                        DataConfig(num_frames=2, image_size=8, synthetic_size=2), tmp_path / "syn"
                    )
                ),
                text=TextEncoderConfig(path=str(t5)),
            )
        )
    cache_text.main(["--root", str(out), "--text.path", str(t5), "--text.max-length", "16"])
    meta = S.read_meta(out)
    mine = text_identity(TextEncoderConfig(path=str(t5), max_length=16))
    assert S.text_cache_mismatch(meta, mine) is None and S.cache_mismatches(meta, text=mine) == []
    assert S.text_cache_mismatch(meta, None) is None  # a run without a text encoder: nothing to compare

    other = text_identity(
        TextEncoderConfig(path=str(make_tiny_t5(tmp_path / "T5-other", seed=3)), max_length=16)
    )
    problem = S.text_cache_mismatch(meta, other)
    assert "weights_sha256" in problem and "CogVideoX-tiny" in problem and "T5-other" in problem
    assert mine["weights_sha256"][:12] in problem and other["weights_sha256"][:12] in problem
    assert S.cache_mismatches(meta, text=other) == [problem]
    with pytest.raises(ValueError, match="cached by another text encoder .* use --overwrite"):
        cache_text.main(
            ["--root", str(out), "--text.path", str(tmp_path / "T5-other"), "--text.max-length", "16"]
        )
    assert S.text_cache_mismatch(S.read_meta(out), mine) is None  # refused before touching anything

    # --overwrite with a masked encoder: text_mask appears; back without a mask: it is dropped again
    cache_text.main(
        [
            "--root",
            str(out),
            "--text.path",
            str(t5),
            "--text.max-length",
            "16",
            "--text.use-mask",
            "--overwrite",
        ]
    )
    ds = S.ShardDataset(out)
    assert ds.meta["fields"]["text_mask"] == {"member": "text_mask.npy", "dtype": "bool", "shape": [16]}
    batch = collate([ds.get(i) for i in range(2)])
    assert batch.text.shape == (2, 16, 32) and batch.text_mask.dtype == torch.bool
    assert (batch.text_mask.sum(1) > 1).all() and (batch.text[~batch.text_mask] == 0).all()
    assert ds.text_null()[1].sum() == 1
    cache_text.main(["--root", str(out), "--text.path", str(t5), "--text.max-length", "16", "--overwrite"])
    ds = S.ShardDataset(out)
    assert "text_mask" not in ds.meta["fields"] and "text_mask" not in ds.get(0)
    assert ds.get(0)["text"].shape == (16, 32)
