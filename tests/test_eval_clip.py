"""Frame-wise CLIP similarity (minivdit/eval/clip.py): a tiny random Hugging Face CLIP vision tower against
the OpenAI ``VisionTransformer`` of clip-anytorch 2.6.0's ``clip/model.py`` (loaded by file path,
tests/oracles.py) with the same weights in OpenAI's key layout; VBench's Eq. 18 sums on hand-computed cases;
the torchvision-semantics resize against a NumPy bicubic.

Run: ``pytest tests/test_eval_clip.py`` after ``pip install --no-deps clip-anytorch==2.6.0``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers
from oracles import load_file, package_file

from minivdit.eval import clip

transformers.utils.logging.disable_progress_bar()  # save_pretrained's "Writing model shards"

VISION = dict(
    hidden_size=64,
    intermediate_size=256,  # OpenAI's MLP is 4 × width
    num_hidden_layers=2,
    num_attention_heads=2,
    patch_size=8,
    image_size=32,
    projection_dim=32,
    hidden_act="quick_gelu",  # OpenAI CLIP's activation
)


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Perturb every parameter (LayerNorms included) so that a wrong key mapping shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


def _to_openai(sd: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """Hugging Face CLIP vision keys → OpenAI ``VisionTransformer`` keys (q/k/v fused into ``in_proj``)."""
    v = "vision_model."
    out = {
        "conv1.weight": sd[v + "embeddings.patch_embedding.weight"],
        "class_embedding": sd[v + "embeddings.class_embedding"],
        "positional_embedding": sd[v + "embeddings.position_embedding.weight"],
        "proj": sd["visual_projection.weight"].T,
    }
    for ours, theirs in (("ln_pre", "pre_layrnorm"), ("ln_post", "post_layernorm")):
        out |= {f"{ours}.{p}": sd[f"{v}{theirs}.{p}"] for p in ("weight", "bias")}
    for i in range(layers):
        hf, oa = f"{v}encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for p in ("weight", "bias"):
            out[f"{oa}attn.in_proj_{p}"] = torch.cat([sd[f"{hf}self_attn.{q}_proj.{p}"] for q in "qkv"])
            for ours, theirs in (
                ("attn.out_proj", "self_attn.out_proj"),
                ("ln_1", "layer_norm1"),
                ("ln_2", "layer_norm2"),
                ("mlp.c_fc", "mlp.fc1"),
                ("mlp.c_proj", "mlp.fc2"),
            ):
                out[f"{oa}{ours}.{p}"] = sd[f"{hf}{theirs}.{p}"]
    return out


def _oracle(sd: dict[str, torch.Tensor]) -> torch.nn.Module:
    model_py = load_file("clip_anytorch_model", package_file("clip-anytorch", "clip/model.py"))
    oracle = model_py.VisionTransformer(
        input_resolution=32, patch_size=8, width=64, layers=2, heads=2, output_dim=32
    )
    oracle.load_state_dict(_to_openai(sd, layers=2))  # strict: every OpenAI key is mapped
    return oracle.eval()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A ``CLIPVisionModelWithProjection`` folder with random weights."""
    torch.manual_seed(0)
    model = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**VISION))
    _randomise(model, seed=1)
    path = tmp_path_factory.mktemp("clip") / "clip-vision-tiny"
    model.save_pretrained(path)
    return path


def _video(shape=(2, 3, 3, 48, 40), seed=0) -> torch.Tensor:
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_embed_matches_openai_clip(folder):
    ours = clip.load(folder)
    assert (ours.name, ours.min_frames, ours.batch_size, ours.dim, ours.image_size) == ("clip", 2, 16, 32, 32)
    assert not ours.training and not any(p.requires_grad for p in ours.parameters())
    oracle = _oracle(ours.model.state_dict())
    video = _video()
    pixels = ours.preprocess(video)  # [6, 3, 32, 32]
    with torch.no_grad():
        expected_raw = oracle(pixels)  # [6, 32], OpenAI encode_image
        got_raw = ours.model(pixel_values=pixels).image_embeds
    rel = ((got_raw - expected_raw).abs().max() / expected_raw.abs().max()).item()
    print(f"CLIP image embeds vs OpenAI clip/model.py: relative max |Δ| = {rel:.3e}")
    # two float32 implementations of one ViT (other kernels: fused attention, other reduction orders):
    # reductions of ≤ 64 terms differ by ≈ √64·u ≈ 5e-7 each, over a dozen matmuls and norms ≈ 2e-6; 1e-5
    # keeps a margin (measured 1.2e-7) and is far below any wiring error (O(1)).
    assert rel <= 1e-5

    emb = ours.embed(video)
    assert emb.shape == (2, 3, 32) and emb.dtype == torch.float32
    expected = F.normalize(expected_raw, dim=-1).reshape(2, 3, 32)  # frames in (b, f) order
    # the raw embeddings may differ by 1e-5 of their largest entry (above); normalising a D = 32 vector moves
    # each unit-vector entry by at most 2·‖δ‖/‖v‖ ≤ 2·√D·1e-5 (a frame mix-up moves them by O(1))
    torch.testing.assert_close(emb, expected, rtol=0, atol=2 * 32**0.5 * 1e-5)
    # the float32 norm of a unit vector: D squares summed and a square root, ≤ D·eps
    eps = torch.finfo(torch.float32).eps
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2, 3), rtol=0, atol=32 * eps)

    # a still video is perfectly consistent
    total, count = clip.frame_similarity(ours.embed(video[:, :1].expand(2, 5, 3, 48, 40)))
    # float32 cosines of a unit vector with itself: a D-term dot product, ≤ D·eps from 1
    torch.testing.assert_close(total / count, torch.ones(2, dtype=torch.float64), rtol=0, atol=32 * eps)

    with pytest.raises(ValueError, match="at least 2 frames"):
        ours.embed(video[:, :1])


def test_published_clip_model_folder(folder, tmp_path):
    """openai/clip-vit-base-patch32 is a full CLIPModel folder: the text tower is ignored, the vision tower
    and projection load exactly."""
    torch.manual_seed(2)
    text = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        vocab_size=64,
        max_position_embeddings=8,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    full = transformers.CLIPModel(
        transformers.CLIPConfig(vision_config=VISION, text_config=text, projection_dim=32)
    )
    _randomise(full, seed=3)
    full.save_pretrained(tmp_path / "clip-full")
    ours = clip.load(tmp_path / "clip-full")
    pixels = ours.preprocess(_video())
    with torch.no_grad():
        expected = _oracle(full.state_dict())(pixels)
        got = ours.model(pixel_values=pixels).image_embeds
    # the same float32 derivation as test_embed_matches_openai_clip: 1e-5 of the largest entry
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5 * expected.abs().max().item())


def test_wrong_folders(folder, tmp_path):
    with pytest.raises(ValueError, match=r"--clip is not set.*huggingface\.co/openai/clip-vit-base-patch32"):
        clip.load(None)
    with pytest.raises(ValueError, match=r"--clip .*absent: no such file.*a local Hugging Face folder"):
        clip.load(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty: no config\.json"):
        clip.load(tmp_path / "empty")

    dino = transformers.Dinov2Model(
        transformers.Dinov2Config(
            hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=28
        )
    )
    dino.save_pretrained(tmp_path / "dino")
    with pytest.raises(ValueError, match=r"model_type 'dinov2' is not CLIP"):
        clip.load(tmp_path / "dino")

    # a CLIPVisionModel folder has no projection: the embedding would be random
    transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**VISION)).save_pretrained(tmp_path / "noproj")
    with pytest.raises(
        ValueError, match=r"noproj: not a CLIP vision tower.*missing keys: \['visual_projection"
    ):
        clip.load(tmp_path / "noproj")


def test_frame_similarity_hand_computed():
    """Eq. 18 with VBench's max(0, ·): frames a, b, a, b, a with cos(a, b) = 0.6 (b scaled: cosines only).
    t = 2: (0.6 + 0.6)/2; t = 3: (0.6 + 1)/2; t = 4: 0.6; t = 5: 0.8 → 2.8 over 4 pairs = 0.7."""
    a, b = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.6, 0.8, 0.0]) * 3
    total, count = clip.frame_similarity(torch.stack([a, b, a, b, a])[None])
    assert total.dtype == torch.float64 and count.tolist() == [4]
    # four float32 cosines of 3-d vectors, each ≤ 4 roundings of half an ulp(1): ≤ 16·u ≈ 9.5e-7 in all
    torch.testing.assert_close(total, torch.tensor([2.8], dtype=torch.float64), rtol=0, atol=1e-6)

    # negative cosines clamp to 0: cos(a, b') = -0.6 → t = 2: 0; t = 3: (0 + 1)/2; t = 4: 0; t = 5: 0.5
    b_neg = torch.tensor([-0.6, 0.8, 0.0])
    constant = torch.stack([a] * 5)
    total, count = clip.frame_similarity(torch.stack([torch.stack([a, b_neg, a, b_neg, a]), constant]))
    torch.testing.assert_close(total, torch.tensor([1.0, 4.0], dtype=torch.float64), rtol=0, atol=1e-6)
    assert count.tolist() == [4, 4]
    assert (total.sum() / count.sum()).item() == pytest.approx(5 / 8)  # the dataset score: Σ sum / Σ count

    with pytest.raises(ValueError, match="F >= 2"):
        clip.frame_similarity(torch.ones(1, 1, 3))


def _bicubic_np(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """PyTorch's bicubic (A = −0.75, half-pixel centres, border taps clamped, no antialias) in float64."""
    A = -0.75

    def weights(t):
        near = lambda d: ((A + 2) * d - (A + 3)) * d * d + 1  # |d| <= 1
        far = lambda d: ((A * d - 5 * A) * d + 8 * A) * d - 4 * A  # 1 < |d| < 2
        return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], -1)  # taps -1, 0, 1, 2

    def taps(n_in, n_out):
        src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        i0 = np.floor(src).astype(int)
        return np.clip(i0[:, None] + np.arange(-1, 3), 0, n_in - 1), weights(src - i0)

    (iy, wy), (ix, wx) = taps(x.shape[-2], h), taps(x.shape[-1], w)
    rows = (x[..., iy, :] * wy[..., None]).sum(-2)  # [N, C, h, W]
    return (rows[..., ix] * wx).sum(-1)  # [N, C, h, w]


@pytest.mark.parametrize(
    "hw, size, resized",
    [((48, 40), 32, (38, 32)), ((100, 157), 224, (224, 351)), ((300, 224), 224, (300, 224))],
)
def test_resize_matches_numpy_bicubic(hw, size, resized):
    """Short side to ``size``, long side ``int(size · long / short)`` (38.4 → 38, 351.68 → 351)."""
    frames = _video((4, 3, 3, *hw), seed=7).flatten(0, 1)  # [12, 3, H, W]
    got = clip.resize_short_side(frames, size)
    assert tuple(got.shape[-2:]) == resized and got.dtype == torch.uint8
    if hw == resized:
        assert got is frames  # torchvision returns a frame already at the size untouched
        return
    exact = np.clip(_bicubic_np(frames.double().numpy(), *resized), 0, 255)
    diff = np.abs(got.numpy().astype(np.float64) - np.round(exact))
    print(f"bicubic {hw} -> {resized}: max |Δ| = {diff.max()}, differing fraction = {(diff > 0).mean():.2e}")
    # PyTorch's float32 weights are up to ~4e-3 off on 0..255 values: only roundings next to .5 may flip
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    assert np.all(np.abs(exact[diff > 0] % 1 - 0.5) < 5e-3)


def test_center_crop_rounds_half_to_even():
    x = torch.arange(351)[None, None, None].expand(1, 1, 225, 351)  # value = column index
    crop = clip.center_crop(x, 224)
    assert crop.shape[-2:] == (224, 224)
    assert crop[0, 0, 0, 0].item() == 64  # round((351 - 224) / 2) = round(63.5) = 64 (floor would give 63)
    y = torch.arange(225)[None, None, :, None].expand(1, 1, 225, 351)
    assert clip.center_crop(y, 224)[0, 0, 0, 0].item() == 0  # round(0.5) = 0
