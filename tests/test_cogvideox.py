"""CogVideoX transformer: parity with ``diffusers.CogVideoXTransformer3DModel`` (0.42.1) on a tiny random
model of each released variant (2B, 5B, 5B-I2V, 1.5-5B, 1.5-5B-I2V) fed the RoPE the diffusers pipelines
compute, ``tap``, strict (sharded) loading, bad inputs, meta init and activation checkpointing. CPU, fp32,
offline, ~15 s (mostly the diffusers import). ``pytest -s`` prints the parity errors."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from einops import rearrange
from safetensors.torch import save_file

from minivdit.models.checkpointing import Checkpointing
from minivdit.models.cogvideox import (
    PRESETS,
    CogVideoXConfig,
    CogVideoXTransformer,
    flops_per_sample,
    rope_cos_sin,
)
from minivdit.models.cond import Cond

diffusers = pytest.importorskip("diffusers")
from diffusers import CogVideoXTransformer3DModel  # noqa: E402
from diffusers.pipelines.cogvideo.pipeline_cogvideox import CogVideoXPipeline  # noqa: E402
from diffusers.pipelines.cogvideo.pipeline_cogvideox_image2video import (  # noqa: E402
    CogVideoXImageToVideoPipeline,
)
from tiny_cogvideox import TINY_TRANSFORMER  # noqa: E402  (tests/ is on sys.path)

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = dict(TINY_TRANSFORMER)  # 2 heads x 16, D = 32, latents 3 x 8 x 12
ROPE = dict(use_rotary_positional_embeddings=True)
V15 = dict(ROPE, patch_size_t=2, patch_bias=False, sample_height=16, sample_width=16)
VARIANTS = {
    "2B": {},
    "5B": ROPE,
    "5B-I2V": dict(ROPE, in_channels=8, use_learned_positional_embeddings=True),
    "1.5-5B": V15,
    "1.5-5B-I2V": dict(V15, in_channels=8, ofs_embed_dim=16),
}
# (variant, F, H, W): trained size, another size (2B: sin-cos rebuilt; 5B: a real RoPE crop region)
CASES = [
    ("2B", 3, 8, 12),
    ("2B", 2, 8, 8),
    ("5B", 3, 8, 12),
    ("5B", 2, 8, 8),
    ("5B", 2, 12, 8),
    ("5B-I2V", 3, 8, 12),
    ("1.5-5B", 4, 8, 12),
    ("1.5-5B-I2V", 2, 8, 12),
]
SHARDED = "5B-I2V"  # saved with max_shard_size, loaded through the index
ERRORS: dict[str, float] = {}


def _randomise(model: torch.nn.Module) -> None:
    """Every persistent tensor: LayerNorm gains ~ 1 + N(0, 0.2), biases and the learned PE ~ N(0, 0.1),
    weights ~ N(0, 1/fan_in) (activations stay O(1) through the blocks)."""
    with torch.no_grad():
        for name, v in model.state_dict().items():
            if name.endswith("weight") and v.ndim == 1:
                v.copy_(1 + 0.2 * torch.randn_like(v))
            elif v.ndim == 1 or name.endswith("pos_embedding"):
                v.copy_(0.1 * torch.randn_like(v))
            else:
                v.copy_(torch.randn_like(v) / v[0].numel() ** 0.5)


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """variant -> (diffusers model with random weights, its save_pretrained folder)."""
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        for i, (name, extra) in enumerate(VARIANTS.items()):
            torch.manual_seed(i)
            ref = CogVideoXTransformer3DModel(**(TINY | extra)).eval()
            _randomise(ref)
            folder = tmp_path_factory.mktemp(name)
            ref.save_pretrained(folder, max_shard_size="20KB" if name == SHARDED else "10GB")
            out[name] = ref, folder
    yield out
    print("\nparity, max|Δ| / max|ref| per case:", json.dumps(ERRORS))


def _pipeline_rope(ref, F: int, H: int, W: int):
    """(cos, sin) as diffusers' own pipeline code computes them for latents [B, F, C, H, W] (8H x 8W px)."""
    if not ref.config.use_rotary_positional_embeddings:
        return None
    i2v = ref.config.in_channels == 2 * ref.config.out_channels
    pipe = CogVideoXImageToVideoPipeline if i2v else CogVideoXPipeline
    fake = SimpleNamespace(vae_scale_factor_spatial=8, transformer=ref)
    return pipe._prepare_rotary_positional_embeddings(fake, 8 * H, 8 * W, F, torch.device("cpu"))


def _inputs(cfg: CogVideoXConfig, F: int, H: int, W: int, B: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x_t = torch.randn(B, F, cfg.out_channels, H, W, generator=g)
    context = torch.randn(B, cfg.max_text_seq_length, cfg.text_embed_dim, generator=g)
    image = torch.randn(B, F, cfg.out_channels, H, W, generator=g) if cfg.is_i2v else None
    return x_t, torch.tensor([999.0, 17.0][:B]), Cond(context=context, image_latents=image)


@pytest.mark.parametrize("variant,F,H,W", CASES)
@torch.no_grad()
def test_parity_with_diffusers(references, variant, F, H, W):
    ref, folder = references[variant]
    ours = CogVideoXTransformer.from_pretrained(folder)
    cfg = ours.cfg
    public = lambda d: {k: v for k, v in d.items() if k[0] != "_"}
    assert public(cfg.to_dict()) == public(ref.config)  # config.json read back field by field
    x_t, t, cond = _inputs(cfg, F, H, W)
    blocks = {}
    hooks = [
        blk.register_forward_hook(lambda m, a, out, i=i: blocks.__setitem__(i + 1, out[0]))
        for i, blk in enumerate(ref.transformer_blocks)
    ]
    expected = ref(
        hidden_states=torch.cat([x_t, cond.image_latents], dim=2) if cfg.is_i2v else x_t,
        encoder_hidden_states=cond.context,
        timestep=t,
        ofs=torch.full((2,), 2.0) if cfg.ofs_embed_dim else None,
        image_rotary_emb=_pipeline_rope(ref, F, H, W),
        return_dict=False,
    )[0]
    for h in hooks:
        h.remove()
    tap_errs = []
    for tap in (1, cfg.num_layers):
        out = ours(x_t, t, cond, tap=tap)
        assert out.pred.shape == expected.shape == x_t.shape
        err = ((out.pred - expected).abs().max() / expected.abs().max()).item()
        # fp32 by another route if the kernels differ: 2 blocks of width 32 (Σk ≈ 1000) ≈ √1000·u ≈ 2e-6
        assert err <= 1e-5, f"pred relative max |Δ| {err:.2e}"
        Fp, N = F // (cfg.patch_size_t or 1), (H // 2) * (W // 2)
        assert out.hidden.shape == (2, Fp, N, cfg.inner_dim)
        want = rearrange(blocks[tap], "b (f n) d -> b f n d", f=Fp)
        tap_err = ((out.hidden - want).abs().max() / want.abs().max()).item()
        assert tap_err <= 1e-5, f"tap={tap} relative max |Δ| {tap_err:.2e}"
        tap_errs.append(tap_err)
    ERRORS[f"{variant} F,H,W={F},{H},{W}"] = {"pred": err, "tap": max(tap_errs)}
    assert ours(x_t, t, cond).hidden is None


def test_sharded_folder_and_pipeline_layout(references, tmp_path):
    ref, folder = references[SHARDED]
    assert (folder / "diffusion_pytorch_model.safetensors.index.json").is_file()
    assert len(list(folder.glob("diffusion_pytorch_model-*.safetensors"))) >= 2
    shutil.copytree(folder, tmp_path / "transformer")  # a pipeline folder holding transformer/
    ours = CogVideoXTransformer.from_pretrained(tmp_path)
    expected = ref.state_dict()
    got = ours.state_dict()
    assert got.keys() == expected.keys()
    # diffusers builds the learned PE in fp64 (and saves it so); we load everything as float32
    assert all(torch.equal(got[k], expected[k].float()) for k in got)
    assert not ours.training


def test_presets_match_diffusers_keys():
    """Every released config builds (on meta) with diffusers' exact keys and shapes."""
    for name, cfg in PRESETS.items():
        with torch.device("meta"):
            ref = CogVideoXTransformer3DModel(**{k: v for k, v in cfg.to_dict().items() if k[0] != "_"})
            ours = CogVideoXTransformer(cfg)
        want = {k: v.shape for k, v in ref.state_dict().items()}
        assert {k: v.shape for k, v in ours.state_dict().items()} == want, name
    assert len(want) == 1028  # 1.5-5B-I2V (anchors-cogvideox §1.4)
    # anchors-cogvideox §8: 3.32e14 forward FLOPs for 5B at 13x60x90 latents (17 776 tokens)
    assert flops_per_sample(PRESETS["CogVideoX-5B"], 13, 60, 90) == pytest.approx(3.32e14, rel=5e-3)


def test_strict_loading_errors(references, tmp_path):
    ref, folder = references["5B"]
    state = dict(ref.state_dict())
    state.pop("proj_out.bias")
    state["bogus.weight"] = torch.zeros(2)
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(folder / "config.json", bad / "config.json")
    save_file({k: v.contiguous() for k, v in state.items()}, str(bad / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(ValueError, match=r"(?s)bad.*proj_out\.bias.*bogus\.weight"):
        CogVideoXTransformer.from_pretrained(bad)

    other = tmp_path / "unet"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    with pytest.raises(ValueError, match=r"unet.*UNet2DConditionModel"):
        CogVideoXTransformer.from_pretrained(other)

    config = json.loads((folder / "config.json").read_text())
    (other / "config.json").write_text(json.dumps(config | {"qk_norm_type": "rms"}))
    with pytest.raises(ValueError, match=r"unet.*qk_norm_type"):
        CogVideoXTransformer.from_pretrained(other)
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"unet.*no weights"):
        CogVideoXTransformer.from_pretrained(other)
    with pytest.raises(ValueError, match=r"empty.*config\.json"):
        CogVideoXTransformer.from_pretrained(tmp_path / "empty")


def test_bf16_load(references):
    ref, folder = references["1.5-5B-I2V"]
    ours = CogVideoXTransformer.from_pretrained(folder, dtype=torch.bfloat16, attn_backend="sdpa")
    assert all(p.dtype == torch.bfloat16 for p in ours.parameters())
    fp32 = CogVideoXTransformer.from_pretrained(folder)
    x_t, t, cond = _inputs(fp32.cfg, 2, 8, 12)
    with torch.no_grad():
        want = fp32(x_t, t, cond).pred
        half = Cond(context=cond.context.bfloat16(), image_latents=cond.image_latents.bfloat16())
        got = ours(x_t.bfloat16(), t, half).pred
    assert got.dtype == torch.bfloat16
    assert ((got.float() - want).abs().max() / want.abs().max()).item() < 0.05


def _tiny(**extra) -> CogVideoXTransformer:
    torch.manual_seed(0)
    return CogVideoXTransformer(CogVideoXConfig(**(TINY | extra)))


def test_bad_inputs():
    t2v, i2v, v15 = _tiny(**VARIANTS["5B"]), _tiny(**VARIANTS["5B-I2V"]), _tiny(**VARIANTS["1.5-5B"])
    x_t, t, cond = _inputs(t2v.cfg, 3, 8, 12)
    with pytest.raises(ValueError, match=r"Cond\.label"):
        t2v(x_t, t, Cond(context=cond.context, label=torch.zeros(2, dtype=torch.long)))
    with pytest.raises(ValueError, match=r"needs Cond\.context"):
        t2v(x_t, t, Cond())
    with pytest.raises(ValueError, match=r"context_mask"):
        t2v(x_t, t, Cond(context=cond.context, context_mask=torch.ones(2, 8, dtype=torch.bool)))
    with pytest.raises(ValueError, match=r"Cond\.image_latents"):
        t2v(x_t, t, Cond(context=cond.context, image_latents=x_t))
    with pytest.raises(ValueError, match=r"needs Cond\.image_latents"):
        i2v(x_t, t, cond)
    with pytest.raises(ValueError, match=r"5 channels \(shape \(2, 3, 5, 8, 12\)\)"):
        t2v(torch.randn(2, 3, 5, 8, 12), t, cond)
    with pytest.raises(ValueError, match=r"patch_size 2, got x_t \(2, 3, 4, 7, 12\)"):
        t2v(torch.randn(2, 3, 4, 7, 12), t, cond)
    with pytest.raises(ValueError, match=r"t_model must be \[B\]"):
        t2v(x_t, torch.tensor(5.0), cond)
    with pytest.raises(ValueError, match=r"Cond\.context must be"):
        t2v(x_t, t, Cond(context=torch.randn(2, 8, 7)))
    with pytest.raises(ValueError, match=r"tap=3"):
        t2v(x_t, t, cond, tap=3)
    x_i, _, cond_i = _inputs(i2v.cfg, 3, 8, 12)
    with pytest.raises(ValueError, match=r"PE covers \(F, H, W\)=\(3, 8, 12\) only, got x_t \(2, 2, "):
        i2v(x_i[:, :2], t, Cond(context=cond_i.context, image_latents=cond_i.image_latents[:, :2]))
    with pytest.raises(ValueError, match=r"learned PE covers"):
        i2v(x_i[..., :8], t, Cond(context=cond_i.context, image_latents=cond_i.image_latents[..., :8]))
    with pytest.raises(ValueError, match=r"Cond\.image_latents must be"):
        i2v(x_i, t, Cond(context=cond_i.context, image_latents=cond_i.image_latents[:, :, :2]))
    with pytest.raises(ValueError, match=r"8 text tokens"):
        _tiny()(x_t, t, Cond(context=cond.context[:, :5]))
    t2v(x_t, t, Cond(context=cond.context[:, :5]))  # RoPE-only models take any text length
    with pytest.raises(ValueError, match=r"3 latent frames not divisible by patch_size_t 2"):
        v15(x_t, t, cond)
    with pytest.raises(ValueError, match=r"slice RoPE"):
        v15(torch.randn(2, 2, 4, 8, 36), t, cond)


def test_config_validation():
    with pytest.raises(ValueError, match=r"attention_head_dim % 16"):
        CogVideoXConfig(**(TINY | dict(attention_head_dim=8)), **ROPE)
    with pytest.raises(ValueError, match=r"in_channels"):
        CogVideoXConfig(**(TINY | dict(in_channels=6)))
    with pytest.raises(ValueError, match=r"ofs_embed_dim"):
        CogVideoXConfig(**TINY, **ROPE, ofs_embed_dim=8)
    with pytest.raises(ValueError, match=r"patch_size_t"):
        CogVideoXConfig(**TINY, patch_size_t=2)
    assert PRESETS["CogVideoX-5B"].rope_grid_type == "linspace"
    # at the trained size the 1.0 linspace grid is the integer grid (anchors-cogvideox §1.3)
    lin = CogVideoXConfig(**TINY, **ROPE)
    for a, b in zip(rope_cos_sin(lin, 3, 8, 12), rope_cos_sin(replace(lin, rope_grid="slice"), 3, 8, 12)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert PRESETS["CogVideoX1.5-5B-I2V"].rope_grid_type == "slice" and PRESETS["CogVideoX1.5-5B-I2V"].is_i2v


@pytest.mark.parametrize("variant", ["2B", "5B-I2V", "1.5-5B-I2V"])
def test_meta_build_init_weights(variant):
    cfg = CogVideoXConfig(**(TINY | VARIANTS[variant]))
    with torch.device("meta"):
        model = CogVideoXTransformer(cfg)
    model.to_empty(device="cpu")
    model.init_weights()
    assert not any(v.is_meta for v in list(model.parameters()) + list(model.buffers()))
    if cfg.has_abs_pos:  # the PE equals the one built at construction on a real device (as diffusers)
        cpu_built = CogVideoXTransformer(cfg)
        assert torch.equal(model.patch_embed.pos_embedding, cpu_built.patch_embed.pos_embedding)
    x_t, t, cond = _inputs(cfg, 2 if cfg.patch_size_t else 3, 8, 12)
    with torch.no_grad():
        out = model(x_t, t, cond, tap=1)
    assert torch.isfinite(out.hidden).all()
    assert torch.count_nonzero(out.pred) == 0  # adaLN and proj_out start at zero


@pytest.mark.parametrize("ac", [True, Checkpointing(every=2), Checkpointing(ops=True)], ids=str)
def test_grad_checkpointing_same_grads(ac):
    model = _tiny(**VARIANTS["1.5-5B-I2V"]).train()
    x_t, t, cond = _inputs(model.cfg, 2, 8, 12)
    grads = []
    for ckpt in (False, ac):
        model.grad_checkpointing = ckpt
        model.zero_grad()
        out = model(x_t, t, cond, tap=1)
        (out.pred.square().mean() + out.hidden.mean()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=0, atol=1e-6, msg=n)
