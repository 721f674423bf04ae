"""Wan2.1 transformer: parity with ``diffusers.WanTransformer3DModel`` (0.42.1) on tiny random T2V and I2V
models (every parameter randomised, norms and modulation tables included; non-square latents 3 x 4 x 6),
``tap``, strict (sharded) loading, bf16 loading as diffusers loads it, bad inputs, presets, meta build and
init, activation checkpointing. CPU, fp32, offline. ``pytest -s`` prints the parity errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from einops import rearrange
from safetensors.torch import save_file

from minivdit import dist
from minivdit.models.checkpointing import Checkpointing
from minivdit.models.cond import Cond
from minivdit.models.wan import PRESETS, WanConfig, WanTransformer, load_dtype, rope_cos_sin

diffusers = pytest.importorskip("diffusers")
from diffusers import WanTransformer3DModel  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

# diffusers' own tiny test config (tests/models/transformers/test_models_transformer_wan.py, anchors §1.9):
# 2 heads x 12 (RoPE t:h:w = 4:4:4), D = 24, 2 blocks; I2V adds 4 "mask" + 4 latent channels (Wan: 4 + 16)
# and 8-wide image tokens (Wan: CLIP 1280) through add_k_proj / add_v_proj.
TINY = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=12,
    in_channels=4,
    out_channels=4,
    text_dim=16,
    freq_dim=256,
    ffn_dim=32,
    num_layers=2,
    rope_max_seq_len=32,
)
VARIANTS = {"t2v": {}, "i2v": dict(in_channels=12, image_dim=8, added_kv_proj_dim=24)}
F, H, W = 3, 4, 6  # non-square latents: token grid 3 x 2 x 3
# diffusers splits [image; text] at L - 512 (module docstring): its I2V oracle needs 512 text tokens; T2V
# takes any length.
TEXT_LEN = {"t2v": 7, "i2v": 512}
IMAGE_TOKENS = 5
ERRORS: dict[str, dict[str, float]] = {}


def _randomise(model: torch.nn.Module) -> None:
    """Every parameter: norm gains ~ 1 + N(0, 0.2), biases ~ N(0, 0.1), modulation tables ~ N(0, 0.5)
    (shift, scale and gate all far from their init), weights ~ N(0, 1/fan_in) (activations stay O(1))."""
    with torch.no_grad():
        for name, v in model.state_dict().items():
            if name.endswith("scale_shift_table"):
                v.copy_(0.5 * torch.randn_like(v))
            elif name.endswith("weight") and v.ndim == 1:
                v.copy_(1 + 0.2 * torch.randn_like(v))
            elif v.ndim == 1:
                v.copy_(0.1 * torch.randn_like(v))
            else:
                v.copy_(torch.randn_like(v) / v[0].numel() ** 0.5)


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """variant -> (diffusers model with random weights, its save_pretrained folder; I2V in shards)."""
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        for i, (name, extra) in enumerate(VARIANTS.items()):
            torch.manual_seed(i)
            ref = WanTransformer3DModel(**(TINY | extra)).eval()
            _randomise(ref)
            folder = tmp_path_factory.mktemp(name)
            ref.save_pretrained(folder, max_shard_size="40KB" if name == "i2v" else "10GB")
            out[name] = ref, folder
    yield out
    print("\nparity, max|Δ| / max|ref|:", json.dumps(ERRORS))


def _inputs(cfg: WanConfig, variant: str, B: int = 2, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=g).to(dtype)
    x_t = rand(B, F, cfg.out_channels, H, W)
    cond = Cond(
        context=rand(B, TEXT_LEN[variant], cfg.text_dim),
        image_latents=rand(B, F, cfg.concat_channels, H, W) if cfg.concat_channels else None,
        image_context=rand(B, IMAGE_TOKENS, cfg.image_dim) if cfg.image_dim else None,
    )
    return x_t, torch.tensor([999.0, 17.0][:B]), cond


def _reference(ref, x_t: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
    """diffusers' forward on our inputs: channel concat and [B, C, F, H, W] done here, as the pipelines do."""
    x = x_t if cond.image_latents is None else torch.cat([x_t, cond.image_latents], dim=2)
    out = ref(
        hidden_states=rearrange(x, "b f c h w -> b c f h w"),
        timestep=t,
        encoder_hidden_states=cond.context,
        encoder_hidden_states_image=cond.image_context,
        return_dict=False,
    )[0]
    return rearrange(out, "b c f h w -> b f c h w")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


@pytest.mark.parametrize("variant", list(VARIANTS))
@torch.no_grad()
def test_parity_with_diffusers(references, variant):
    ref, folder = references[variant]
    ours = WanTransformer.from_pretrained(folder)
    tup = lambda d: {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k[0] != "_"}
    assert tup(ours.cfg.to_dict()) == tup(ref.config)  # config.json read back field by field
    x_t, t, cond = _inputs(ours.cfg, variant)
    blocks = {}
    hooks = [
        blk.register_forward_hook(lambda m, a, out, i=i: blocks.__setitem__(i + 1, out))
        for i, blk in enumerate(ref.blocks)
    ]
    expected = _reference(ref, x_t, t, cond)
    for h in hooks:
        h.remove()
    errs = {}
    for tap in (1, ours.cfg.num_layers):
        out = ours(x_t, t, cond, tap=tap)
        assert out.pred.shape == expected.shape == x_t.shape
        # fp32 by another route where kernels differ: dot products of length k <= 512 (the I2V text) round
        # to ~ sqrt(k)·u = 23·6e-8 ≈ 1.4e-6 relative each, a handful in series over 2 blocks: under 1e-5.
        errs["pred"] = _rel(out.pred, expected)
        assert errs["pred"] <= 1e-5, f"pred relative max |Δ| {errs['pred']:.2e}"
        assert out.hidden.shape == (2, F, (H // 2) * (W // 2), ours.cfg.inner_dim)
        want = rearrange(blocks[tap], "b (f n) d -> b f n d", f=F)
        errs[f"tap{tap}"] = _rel(out.hidden, want)
        assert errs[f"tap{tap}"] <= 1e-5, f"tap={tap} relative max |Δ| {errs[f'tap{tap}']:.2e}"
    ERRORS[f"{variant} F,H,W={F},{H},{W}"] = errs
    assert ours(x_t, t, cond).hidden is None


@torch.no_grad()
def test_i2v_image_span_from_shapes(references):
    """Text of any length next to the image tokens (diffusers would need exactly 512): the image tokens
    steer the output, and a batch is the same as its samples run one by one."""
    ours = WanTransformer.from_pretrained(references["i2v"][1])
    x_t, t, cond = _inputs(ours.cfg, "i2v")
    short = Cond(
        context=cond.context[:, :7], image_latents=cond.image_latents, image_context=cond.image_context
    )
    pred = ours(x_t, t, short).pred
    other = Cond(context=short.context, image_latents=short.image_latents, image_context=-short.image_context)
    assert _rel(ours(x_t, t, other).pred, pred) > 1e-3
    one = Cond(
        context=short.context[1:],
        image_latents=short.image_latents[1:],
        image_context=short.image_context[1:],
    )
    # per sample the same fp32 ops; batched kernels may only block the sums differently (~ sqrt(k)·u each)
    torch.testing.assert_close(ours(x_t[1:], t[1:], one).pred[0], pred[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("head_dim", [12, 20, 128])
def test_rope_matches_diffusers(head_dim):
    """The (t, h, w) split of the head width (128: 44, 42, 42; 20: 8, 6, 6) and the angles, on a 5 x 3 x 4
    token grid, against ``WanRotaryPosEmbed`` (which repeats each pair's cos/sin twice): equal, as both
    compute fp64 angles and round them to fp32 once."""
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    cfg = WanConfig(**(TINY | dict(attention_head_dim=head_dim)))
    cos, sin = rope_cos_sin(cfg, 5, 3, 4)
    ref_cos, ref_sin = WanRotaryPosEmbed(head_dim, (1, 2, 2), 32)(torch.zeros(1, 4, 5, 6, 8))
    for ours, ref in ((cos, ref_cos), (sin, ref_sin)):
        assert ours.shape == (5 * 3 * 4, head_dim // 2)
        assert torch.equal(ours, ref[0, :, 0, 0::2]) and torch.equal(ours, ref[0, :, 0, 1::2])


def test_sharded_folder_and_pipeline_layout(references, tmp_path):
    ref, folder = references["i2v"]
    assert (folder / "diffusion_pytorch_model.safetensors.index.json").is_file()
    assert len(list(folder.glob("diffusion_pytorch_model-*.safetensors"))) >= 2
    shutil.copytree(folder, tmp_path / "transformer")  # a pipeline folder holding transformer/
    ours = WanTransformer.from_pretrained(tmp_path)
    expected, got = ref.state_dict(), ours.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in got)  # a copy of the same fp32 bits
    assert not ours.training
    assert dist.block_list(ours) is ours.blocks  # FSDP / checkpointing units, as for the other backbones


def test_presets_match_diffusers_keys():
    """Every released config builds (on meta) with diffusers' exact keys and shapes; parameter counts as
    anchors §1.1 (derived there from the shapes, 4 significant digits)."""
    billions = {"Wan2.1-T2V-1.3B": 1.419, "Wan2.1-T2V-14B": 14.288, "Wan2.1-I2V-14B-480P": 16.395}
    for (
        name,
        count,
    ) in billions.items():  # the 720P preset has the 480P's architecture (test_config_validation)
        cfg = PRESETS[name]
        with torch.device("meta"):
            ref = WanTransformer3DModel(**{k: v for k, v in cfg.to_dict().items() if k[0] != "_"})
            ours = WanTransformer(cfg)
        want = {k: v.shape for k, v in ref.state_dict().items()}
        assert {k: v.shape for k, v in ours.state_dict().items()} == want, name
        n = sum(p.numel() for p in ours.parameters())
        assert n == pytest.approx(count * 1e9, rel=5e-4), name
    assert PRESETS["Wan2.1-T2V-14B"].rope_split == (44, 42, 42)  # anchors §1.4


def test_strict_loading_errors(references, tmp_path):
    ref, folder = references["t2v"]
    state = dict(ref.state_dict())
    state.pop("proj_out.bias")
    state["bogus.weight"] = torch.zeros(2)
    state["blocks.0.attn2.norm_added_q.weight"] = torch.ones(24)  # ignored, as diffusers does
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(folder / "config.json", bad / "config.json")
    save_file({k: v.contiguous() for k, v in state.items()}, str(bad / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(
        ValueError, match=r"(?s)bad.*missing keys \['proj_out\.bias'\].*unexpected keys \['bogus"
    ):
        WanTransformer.from_pretrained(bad)
    state.pop("bogus.weight")
    state["proj_out.bias"] = torch.zeros(3)
    save_file({k: v.contiguous() for k, v in state.items()}, str(bad / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(ValueError, match=r"proj_out\.bias: \(3,\) in file vs \(16,\)"):
        WanTransformer.from_pretrained(bad)
    state["proj_out.bias"] = ref.proj_out.bias.detach()
    save_file({k: v.contiguous() for k, v in state.items()}, str(bad / "diffusion_pytorch_model.safetensors"))
    WanTransformer.from_pretrained(bad)  # only the ignored key left over

    other = tmp_path / "unet"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    with pytest.raises(ValueError, match=r"unet.*UNet2DConditionModel"):
        WanTransformer.from_pretrained(other)
    config = json.loads((folder / "config.json").read_text())
    (other / "config.json").write_text(json.dumps(config | {"window_size": [-1, -1]}))
    with pytest.raises(ValueError, match=r"unet.*window_size"):
        WanTransformer.from_pretrained(other)
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"unet.*no weights"):
        WanTransformer.from_pretrained(other)
    with pytest.raises(ValueError, match=r"empty.*config\.json"):
        WanTransformer.from_pretrained(tmp_path / "empty")


@torch.no_grad()
def test_bf16_load_as_diffusers(references):
    ref, folder = references["i2v"]
    ours = WanTransformer.from_pretrained(folder, dtype=torch.bfloat16)
    theirs = WanTransformer3DModel.from_pretrained(folder, torch_dtype=torch.bfloat16).eval()
    want = {k: v.dtype for k, v in theirs.state_dict().items()}
    assert {k: v.dtype for k, v in ours.state_dict().items()} == want  # keep-in-fp32 modules as diffusers
    assert {k for k, d in want.items() if d == torch.float32} == {
        k for k in want if load_dtype(k, torch.bfloat16) != torch.bfloat16
    }
    assert (
        want["blocks.0.scale_shift_table"] == torch.float32
        and want["blocks.0.attn1.to_q.weight"] == torch.bfloat16
    )
    x_t, t, cond = _inputs(ours.cfg, "i2v", dtype=torch.bfloat16)
    got = ours(x_t, t, cond).pred
    assert got.dtype == torch.bfloat16
    # the same ops, dtypes and casts as diffusers; only the cross-attention inputs differ in layout: diffusers
    # slices [image; text] out of one tensor, and a CPU bf16 GEMM on that strided view rounds differently from
    # one on a contiguous tensor (up to ~2 ulps, 2^-8 relative each); carried through 2 blocks: < 4·2^-8.
    assert _rel(got, _reference(theirs, x_t, t, cond)) < 1.6e-2
    x32, _, cond32 = _inputs(ours.cfg, "i2v")
    assert _rel(got, _reference(ref, x32, t, cond32)) < 5e-2  # bf16 weights and inputs: O(10) ulps


def _tiny(variant: str = "t2v", **extra) -> WanTransformer:
    torch.manual_seed(0)
    return WanTransformer(WanConfig(**(TINY | VARIANTS[variant] | extra)))


def test_context_mask_ignores_padded_tokens():
    """With ``Cond.context_mask`` the text cross-attention attends the valid tokens only: padding the context
    with garbage tokens under a False mask gives the output of the unpadded context without a mask (issue 20:
    a VLM's valid tokens). The same model, the same valid keys, scores of the padding at -inf: the two paths
    differ by the rounding of two SDPA calls over different key counts (fp32: ~1e-6 relative, as
    tests/test_models.py's bound; 1e-5 leaves a margin). Without a mask the padding is attended, as Wan's
    released models attend their zero padding (the parity tests above)."""
    model = _tiny().eval()
    x_t, t, cond = _inputs(model.cfg, "t2v")
    B, L, Dt = cond.context.shape
    garbage = 5 * torch.randn(B, 4, Dt, generator=torch.Generator().manual_seed(1))
    padded = torch.cat([cond.context, garbage], dim=1)  # [B, L + 4, Dt]
    mask = torch.arange(L + 4)[None].expand(B, -1) < L  # [B, L + 4]
    with torch.no_grad():
        short = model(x_t, t, Cond(context=cond.context)).pred
        masked = model(x_t, t, Cond(context=padded, context_mask=mask)).pred
        unmasked = model(x_t, t, Cond(context=padded)).pred
    assert _rel(masked, short) < 1e-5
    assert _rel(unmasked, short) > 1e-3  # attended garbage changes the output


def test_bad_inputs():
    t2v, i2v = _tiny(), _tiny("i2v")
    x_t, t, cond = _inputs(t2v.cfg, "t2v")
    xi, _, ci = _inputs(i2v.cfg, "i2v")
    with pytest.raises(ValueError, match=r"cannot use Cond\.label"):
        t2v(x_t, t, Cond(context=cond.context, label=torch.zeros(2, dtype=torch.long)))
    with pytest.raises(ValueError, match=r"needs Cond\.context"):
        t2v(x_t, t, Cond())
    wrong = torch.ones(2, cond.context.shape[1] + 1, dtype=torch.bool)  # a mask must match the context
    with pytest.raises(ValueError, match=r"Cond\.context_mask must be \[B, L\]"):
        t2v(x_t, t, Cond(context=cond.context, context_mask=wrong))
    with pytest.raises(ValueError, match=r"cannot use Cond\.image_context"):
        t2v(x_t, t, Cond(context=cond.context, image_context=ci.image_context))
    with pytest.raises(ValueError, match=r"needs Cond\.image_context"):
        i2v(xi, t, Cond(context=ci.context, image_latents=ci.image_latents))
    with pytest.raises(ValueError, match=r"needs Cond\.image_latents"):
        i2v(xi, t, Cond(context=ci.context, image_context=ci.image_context))
    with pytest.raises(ValueError, match=r"image_latents must be \[2, 3, 8, 4, 6\]"):
        i2v(
            xi,
            t,
            Cond(
                context=ci.context, image_latents=ci.image_latents[:, :, :4], image_context=ci.image_context
            ),
        )
    with pytest.raises(ValueError, match=r"image_context must be \[B=2, Li, 8\]"):
        i2v(
            xi,
            t,
            Cond(context=ci.context, image_latents=ci.image_latents, image_context=ci.image_context[..., :3]),
        )
    with pytest.raises(ValueError, match=r"5 channels \(shape \(2, 3, 5, 4, 6\)\)"):
        t2v(torch.randn(2, 3, 5, 4, 6), t, cond)
    with pytest.raises(ValueError, match=r"divisible by patch_size \(1, 2, 2\), got x_t \(2, 3, 4, 4, 5\)"):
        t2v(torch.randn(2, 3, 4, 4, 5), t, cond)
    with pytest.raises(ValueError, match=r"t_model must be \[B\]"):
        t2v(x_t, torch.tensor(5.0), cond)
    with pytest.raises(ValueError, match=r"Cond\.context must be \[B=2, L, 16\]"):
        t2v(x_t, t, Cond(context=torch.randn(2, 7, 5)))
    with pytest.raises(ValueError, match=r"tap=3"):
        t2v(x_t, t, cond, tap=3)
    with pytest.raises(ValueError, match=r"rope_max_seq_len=32 on an axis \(40\)"):
        t2v(torch.randn(2, 40, 4, 4, 6), t, cond)


def test_config_validation():
    with pytest.raises(ValueError, match=r"image_dim and added_kv_proj_dim"):
        WanConfig(**TINY, image_dim=8)
    with pytest.raises(ValueError, match=r"added_kv_proj_dim must equal inner_dim"):
        WanConfig(**TINY, image_dim=8, added_kv_proj_dim=16)
    with pytest.raises(ValueError, match=r"pos_embed_seq_len"):
        WanConfig(**TINY, pos_embed_seq_len=514)
    with pytest.raises(ValueError, match=r"qk_norm"):
        WanConfig(**(TINY | dict(qk_norm="rms_norm")))
    with pytest.raises(ValueError, match=r"in_channels must be >= out_channels"):
        WanConfig(**(TINY | dict(in_channels=2)))
    cfg = PRESETS["Wan2.1-I2V-14B-720P"]
    assert cfg.concat_channels == 20 and cfg.is_i2v and cfg.grid == (45, 80)
    assert cfg.to_dict() == PRESETS["Wan2.1-I2V-14B-480P"].to_dict()  # one architecture, two sizes


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_meta_build_equals_eager_build_and_init(variant):
    """``init_weights`` sets every tensor: a meta-built model materialised with garbage and an eager one end
    bit-identical from the same seed. Wan's init (anchors §1.6): only ``proj_out`` is zero, so a fresh model
    predicts exactly 0 while its blocks already mix."""
    cfg = WanConfig(**(TINY | VARIANTS[variant]))
    eager = WanTransformer(cfg)
    with torch.device("meta"):
        meta = WanTransformer(cfg)
    meta.to_empty(device="cpu")
    for model in (eager, meta):
        torch.manual_seed(3)
        model.init_weights()
    a, b = eager.state_dict(), meta.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(a[k].abs().max() == 0 for k in a if k.endswith(".bias") and k != "patch_embedding.bias")
    assert a["proj_out.weight"].abs().max() == 0 and a["blocks.0.norm2.weight"].eq(1).all()
    assert a["blocks.0.scale_shift_table"].std().item() == pytest.approx(cfg.inner_dim**-0.5, rel=0.3)
    assert a["condition_embedder.text_embedder.linear_1.weight"].std().item() == pytest.approx(0.02, rel=0.2)
    x_t, t, cond = _inputs(cfg, variant)
    with torch.no_grad():
        out = meta(x_t, t, cond, tap=1)
    assert torch.count_nonzero(out.pred) == 0  # proj_out = 0 and its bias = 0: exactly zero by construction
    assert torch.isfinite(out.hidden).all() and out.hidden.std() > 0.1


@pytest.mark.parametrize("ac", [True, Checkpointing(every=2), Checkpointing(ops=True)], ids=str)
def test_grad_checkpointing_same_grads(ac):
    model = _tiny("i2v").train()
    x_t, t, cond = _inputs(model.cfg, "i2v")
    cond = Cond(
        context=cond.context[:, :7], image_latents=cond.image_latents, image_context=cond.image_context
    )
    grads = []
    for ckpt in (False, ac):
        model.grad_checkpointing = ckpt
        model.zero_grad()
        out = model(x_t, t, cond, tap=1)
        (out.pred.square().mean() + out.hidden.mean()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        # recomputation replays the same fp32 ops on the same inputs (bit-identical activations); only the
        # order in which autograd sums the contributions of tensors shared by both blocks may change: 1 ulp
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=2.4e-7, atol=1e-9, msg=n)
