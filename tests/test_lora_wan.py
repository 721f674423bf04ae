"""LoRA on Wan 2.1: the Wan targets, our PEFT export read by diffusers' own ``WanPipeline.load_lora_weights``
into a tiny random ``WanTransformer3DModel`` (its output equals ours), and LoRA under the FlashI2V wrapper
(φ and the Fourier embedding stay trainable, ``dist.block_list`` finds the backbone's blocks, the export
uses the backbone's names). CPU, fp32, offline. ``pytest -s`` prints the parity error."""

from __future__ import annotations

import json
import re

import pytest
import torch
from einops import rearrange

from minivdit import dist
from minivdit.models.cond import Cond
from minivdit.models.flashi2v import FlashI2V
from minivdit.models.lora import (
    WAN_TARGETS,
    WAN_TARGETS_FFN,
    LoRAConfig,
    apply_lora,
    load_peft,
    lora_modules,
    save_peft,
    to_peft_state_dict,
)
from minivdit.models.wan import WanConfig, WanTransformer, preset

pytestmark = pytest.mark.usefixtures("single_thread")

# diffusers' tiny Wan test config (as tests/test_wan.py): 2 blocks, D = 24, 2 heads x 12
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
F, H, W, TEXT = 3, 4, 6, 7
LORA = LoRAConfig(rank=4, alpha=2.0, targets=WAN_TARGETS)  # scale 0.5: the header metadata must carry it
ERRORS: dict[str, float] = {}


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Every tensor away from its init (norm gains ~ 1 + N(0, 0.2), biases ~ N(0, 0.1), modulation tables
    ~ N(0, 0.5), weights ~ N(0, 1/fan_in), LoRA A and B included), so no term of the output is trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, v in model.state_dict().items():
            r = torch.randn(v.shape, generator=g)
            if name.endswith("scale_shift_table"):
                v.copy_(0.5 * r)
            elif name.endswith("weight") and v.ndim == 1:
                v.copy_(1 + 0.2 * r)
            elif v.ndim == 1:
                v.copy_(0.1 * r)
            else:
                v.copy_(r / v[0].numel() ** 0.5)


def _inputs(cfg: WanConfig, B: int = 2):
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(B, F, cfg.out_channels, H, W, generator=g)
    return x_t, torch.tensor([999.0, 17.0][:B]), Cond(context=torch.randn(B, TEXT, cfg.text_dim, generator=g))


def _diffusers_pred(ref, x_t: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
    with torch.no_grad():
        out = ref(
            hidden_states=rearrange(x_t, "b f c h w -> b c f h w"),
            timestep=t,
            encoder_hidden_states=cond.context,
            return_dict=False,
        )[0]
    return rearrange(out, "b c f h w -> b f c h w")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def test_wan_targets_on_released_presets():
    """WAN_TARGETS = q/k/v/o of both attentions (8 per block); WAN_TARGETS_FFN adds the 2 FFN Linears and,
    on I2V, add_k_proj / add_v_proj. Counted on the real configs, built on meta."""
    with torch.device("meta"):
        t2v, i2v = WanTransformer(preset("Wan2.1-T2V-1.3B")), WanTransformer(preset("Wan2.1-I2V-14B-480P"))
    names = apply_lora(t2v, LoRAConfig(rank=64, alpha=64.0, targets=WAN_TARGETS))
    assert len(names) == 30 * 8 and all(re.fullmatch(r"blocks\.\d+\.attn[12]\.\S+", n) for n in names)
    lora = sum(p.numel() for m in lora_modules(t2v).values() for p in (m.lora_A.weight, m.lora_B.weight))
    assert lora == 30 * 8 * 64 * (1536 + 1536)  # module docstring: 47.2 M at r=64
    names = apply_lora(i2v, LoRAConfig(rank=8, alpha=8.0, targets=WAN_TARGETS_FFN))
    assert len(names) == 40 * (8 + 2 + 2)
    assert {n.split(".", 2)[2] for n in names} >= {"attn2.add_k_proj", "ffn.net.0.proj", "ffn.net.2"}


def test_wan_pipeline_loads_our_export(tmp_path, monkeypatch):
    """Ours (diffusers weights loaded strictly) + LoRA → save_peft → ``WanPipeline.load_lora_weights`` on the
    diffusers twin → the same prediction."""
    pytest.importorskip("peft")  # diffusers' LoRA loading needs the PEFT backend (test oracle only)
    diffusers = pytest.importorskip("diffusers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    ref = diffusers.WanTransformer3DModel(**TINY).eval()
    _randomise(ref, 1)
    ref.save_pretrained(tmp_path / "base")
    ours = WanTransformer.from_pretrained(tmp_path / "base").eval()
    names = apply_lora(ours, LORA)
    assert len(names) == 2 * 8
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # B = 0 at init: give A and B values so the update is O(1) of the output
        for m in lora_modules(ours).values():
            for lin in (m.lora_A, m.lora_B):
                lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) / lin.in_features**0.5)
    x_t, t, cond = _inputs(ours.cfg)
    with torch.no_grad():
        want = ours(x_t, t, cond).pred
    assert _rel(_diffusers_pred(ref, x_t, t, cond), want) > 1e-2  # the LoRA matters

    path = save_peft(ours, tmp_path / "lora", LORA)
    meta = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert (meta["r"], meta["lora_alpha"], len(meta["target_modules"])) == (4, 2.0, 16)
    pipe = diffusers.WanPipeline(
        tokenizer=None,
        text_encoder=None,
        vae=None,
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(),
        transformer=ref,
    )
    pipe.load_lora_weights(str(path.parent))  # the user's call on the folder
    assert list(ref.blocks[1].attn2.to_out[0].scaling.values()) == [0.5]  # alpha / r from the header
    got = _diffusers_pred(ref, x_t, t, cond)
    # Both sides compute W x + b + 0.5 · B (A x) in fp32 with the same base weights (base parity is exact,
    # tests/test_wan.py); only summation order inside matmuls / SDPA may differ: per op ≤ √K·u relative
    # (K ≤ 256, u = 6e-8: 1e-6), over the ≈ 10 chained ops of 2 blocks ≲ 1e-5, the bound.
    ERRORS["diffusers(load_lora_weights) vs ours"] = err = _rel(got, want)
    print("\nWan LoRA parity, max|Δ| / max|ref|:", json.dumps(ERRORS))
    assert err <= 1e-5, f"relative max |Δ| {err:.2e}"

    # and back: a fresh model of ours reads the same file and predicts the same (bit-identical: same
    # tensors, same ops)
    again = WanTransformer.from_pretrained(tmp_path / "base").eval()
    assert load_peft(again, path) == names
    with torch.no_grad():
        assert torch.equal(again(x_t, t, cond).pred, want)


def test_flashi2v_under_lora_keeps_phi_trainable_and_exports_backbone_names():
    torch.manual_seed(0)
    base = WanTransformer(WanConfig(**TINY))
    model = FlashI2V(base)
    names = apply_lora(model, LORA)
    assert len(names) == 16 and all(n.startswith("base.blocks.") for n in names)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    own = {n for n, _ in model.named_parameters() if not n.startswith("base.")}
    assert own and {n.split(".")[0] for n in own} == {"learnable_proj", "fourier_embedding"}
    lora = {f"{m}.lora_{ab}.weight" for m in names for ab in "AB"}
    assert trainable == own | lora  # φ + Fourier embedding + LoRA; every pretrained weight frozen
    assert dist.block_list(model) is base.blocks  # through the wrapper: FSDP2 / AC units are Wan's blocks
    keys = to_peft_state_dict(model)
    assert len(keys) == 32 and all(k.startswith("transformer.blocks.") for k in keys)  # diffusers names
    # a full fine-tune (no LoRA) leaves everything trainable
    assert all(p.requires_grad for p in FlashI2V(WanTransformer(WanConfig(**TINY))).parameters())
