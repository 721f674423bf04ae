"""LoRA (``minivdit/models/lora.py``) on a tiny random CogVideoX: step 0 equals the base exactly, only A/B
train, state-dict round trips, our export loaded by diffusers' own ``CogVideoXPipeline.load_lora_weights``
(and diffusers' ``save_lora_weights`` loaded by us), merging, activation checkpointing, meta init, bf16,
FSDP2 (2-process gloo), bad input. CPU, fp32, offline, ~20 s (the FSDP2 subprocesses ~9 s, the diffusers and
peft imports ~3 s). The diffusers tests need ``peft`` (dev extra). ``pytest -s`` prints the parity errors."""

from __future__ import annotations

import copy
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tiny_cogvideox import TINY_TRANSFORMER  # noqa: E402  (tests/ is on sys.path)

from minivdit.models.cogvideox import PRESETS, CogVideoXConfig, CogVideoXTransformer
from minivdit.models.cond import Cond
from minivdit.models.lora import (
    WEIGHTS_NAME,
    LoRAConfig,
    LoRALinear,
    apply_lora,
    init_lora_weights,
    load_lora_state_dict,
    load_peft,
    lora_modules,
    lora_parameters,
    lora_state_dict,
    merge_lora,
    merged_state_dict,
    read_peft,
    save_peft,
    to_peft_state_dict,
)

pytestmark = pytest.mark.usefixtures("single_thread")

# the 2B layout (sin-cos PE, no RoPE: diffusers needs no pipeline-computed RoPE), 2 blocks of 2 heads x 16
TINY = dict(TINY_TRANSFORMER)
TARGETS = [
    f"transformer_blocks.{i}.attn1.{p}" for i in range(2) for p in ("to_q", "to_k", "to_v", "to_out.0")
]
LORA = LoRAConfig(rank=4, alpha=2.0)  # scale 0.5: a wrong alpha handling shows
ERRORS: dict[str, float] = {}


def _randomise(model: torch.nn.Module) -> None:
    """Every persistent tensor (as tests/test_cogvideox.py): gains ~ 1 + N(0, 0.2), biases ~ N(0, 0.1),
    weights ~ N(0, 1/fan_in)."""
    with torch.no_grad():
        for name, v in model.state_dict().items():
            if name.endswith("weight") and v.ndim == 1:
                v.copy_(1 + 0.2 * torch.randn_like(v))
            elif v.ndim == 1:
                v.copy_(0.1 * torch.randn_like(v))
            else:
                v.copy_(torch.randn_like(v) / v[0].numel() ** 0.5)


def _base(seed: int = 0) -> CogVideoXTransformer:
    torch.manual_seed(seed)
    model = CogVideoXTransformer(CogVideoXConfig(**TINY)).eval()
    _randomise(model)
    return model


def _inputs(B: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x_t = torch.randn(B, 3, 4, 8, 12, generator=g)  # the trained latent size F=3, 8x12
    context = torch.randn(B, 8, 24, generator=g)
    return x_t, torch.tensor([999.0, 17.0][:B]), Cond(context=context)


def _lora_model(seed: int = 0, cfg: LoRAConfig = LORA) -> CogVideoXTransformer:
    """Random base + LoRA with random (nonzero) A and B."""
    model = _base(seed)
    apply_lora(model, cfg)
    torch.manual_seed(seed + 100)
    with torch.no_grad():
        for p in lora_parameters(model):
            p.copy_(torch.randn_like(p) / p.shape[1] ** 0.5)
    return model


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max|Δ| / max|b|. Bounds of 1e-5: fp32 through the 2-block, width-32 model (Σk ≈ 1000 terms per output)
    by another route (diffusers' PEFT layers, merged weights) ≈ √1000·u ≈ 2e-6."""
    return ((a - b).abs().max() / b.abs().max()).item()


@torch.no_grad()
def test_step0_equals_base_exactly_and_only_lora_is_trainable():
    model = _base()
    x_t, t, cond = _inputs()
    expected = model(x_t, t, cond).pred
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected_bf16 = model(x_t, t, cond).pred
    keys_before = set(model.state_dict())
    assert apply_lora(model, LORA) == TARGETS
    assert torch.equal(model(x_t, t, cond).pred, expected)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(model(x_t, t, cond).pred, expected_bf16)
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == sorted(f"{n}.lora_{ab}.weight" for n in TARGETS for ab in "AB")
    assert len(lora_parameters(model)) == 16
    m = lora_modules(model)["transformer_blocks.0.attn1.to_q"]
    assert isinstance(m, LoRALinear) and (m.rank, m.alpha, m.scale) == (4, 2.0, 0.5)
    assert m.lora_A.weight.shape == (4, 32) and m.lora_B.weight.shape == (32, 4)
    assert not m.lora_B.weight.any() and m.lora_A.weight.abs().min() > 0
    assert m.lora_A.weight.abs().max() <= 1 / 32**0.5  # kaiming-uniform a=√5: bound 1/sqrt(fan_in)
    # base keys only moved under ".base" (diffusers' names recoverable); nothing else changed
    renamed = {k.replace(".base.", ".") for k in model.state_dict() if ".lora_" not in k}
    assert renamed == keys_before
    assert not any(
        isinstance(v, torch.Tensor) for m in lora_modules(model).values() for v in vars(m).values()
    )


def test_adamw_step_moves_only_lora():
    model = _base()
    apply_lora(model, LORA)
    model.train()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95), weight_decay=1e-4)  # all params
    model(*_inputs()).pred.square().mean().backward()
    assert all(p.grad is None for n, p in model.named_parameters() if n in frozen)
    opt.step()
    now = dict(model.named_parameters())
    assert all(torch.equal(now[n], v) for n, v in frozen.items())
    moved_B = [n for n in lora if "lora_B" in n and not torch.equal(now[n], lora[n])]
    assert len(moved_B) == 8  # B had a gradient (A's is 0 at step 0: B = 0; only weight decay moves it)


def test_lora_state_dict_round_trip_and_errors(tmp_path):
    model = _lora_model()
    sd = lora_state_dict(model)
    assert sorted(sd) == sorted(f"{n}.lora_{ab}.weight" for n in TARGETS for ab in "AB")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "lora.safetensors"))
    other = _base()  # same base, fresh LoRA (B = 0)
    apply_lora(other, LORA)
    load_lora_state_dict(other, load_file(str(tmp_path / "lora.safetensors")))
    x_t, t, cond = _inputs()
    with torch.no_grad():
        assert torch.equal(other(x_t, t, cond).pred, model(x_t, t, cond).pred)
    bad = dict(sd)
    bad.pop(f"{TARGETS[0]}.lora_A.weight")
    bad["transformer_blocks.0.attn1.to_q.lora_C.weight"] = torch.zeros(1)
    with pytest.raises(
        ValueError, match=r"missing keys \['transformer_blocks\.0\.attn1\.to_q\.lora_A.*lora_C"
    ):
        load_lora_state_dict(other, bad)
    load_lora_state_dict(other, {k: v for k, v in sd.items() if "lora_A" in k}, strict=False)  # subset: fine
    with pytest.raises(ValueError, match="shape mismatch.*lora_B"):
        load_lora_state_dict(other, sd | {f"{TARGETS[1]}.lora_B.weight": torch.zeros(32, 8)})


@pytest.fixture(scope="module")
def diffusers_api():
    pytest.importorskip("peft")  # diffusers' LoRA loading needs the PEFT backend (test oracle only)
    diffusers = pytest.importorskip("diffusers")
    from diffusers import CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel

    return diffusers, CogVideoXPipeline, CogVideoXTransformer3DModel, CogVideoXDDIMScheduler


def _diffusers_twin(api, ours: CogVideoXTransformer):
    """diffusers' transformer with our base weights (our names are diffusers' once ``.base`` is dropped)."""
    _, _, Transformer, _ = api
    ref = Transformer(**TINY).eval()
    base = {k.replace(".base.", "."): v for k, v in ours.state_dict().items() if ".lora_" not in k}
    ref.load_state_dict(base, strict=True)
    return ref


def _diffusers_pred(ref, x_t, t, cond):
    with torch.no_grad():
        return ref(hidden_states=x_t, encoder_hidden_states=cond.context, timestep=t, return_dict=False)[0]


def test_diffusers_pipeline_loads_our_export(diffusers_api, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _, Pipeline, _, Scheduler = diffusers_api
    ours = _lora_model()
    x_t, t, cond = _inputs()
    with torch.no_grad():
        want = ours(x_t, t, cond).pred
    ref = _diffusers_twin(diffusers_api, ours)
    base_pred = _diffusers_pred(ref, x_t, t, cond)
    assert _rel(base_pred, want) > 1e-2  # the LoRA matters

    path = save_peft(ours, tmp_path / "lora", LORA)
    assert path.name == WEIGHTS_NAME == "pytorch_lora_weights.safetensors"
    with safe_open(str(path), framework="pt") as f:
        keys, header = sorted(f.keys()), f.metadata()  # noqa: SIM118
    assert keys == sorted(f"transformer.{n}.lora_{ab}.weight" for n in TARGETS for ab in "AB")
    meta = json.loads(header["lora_adapter_metadata"])
    assert (meta["transformer.r"], meta["transformer.lora_alpha"]) == (4, 2.0)
    adapter = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert (adapter["peft_type"], adapter["r"], adapter["lora_alpha"]) == ("LORA", 4, 2.0)

    pipe = Pipeline(tokenizer=None, text_encoder=None, vae=None, transformer=ref, scheduler=Scheduler())
    pipe.load_lora_weights(
        str(tmp_path / "lora")
    )  # the user's call: folder -> pytorch_lora_weights.safetensors
    q = ref.transformer_blocks[0].attn1.to_q
    assert list(q.scaling.values()) == [0.5]  # alpha / r from the header metadata
    got = _diffusers_pred(ref, x_t, t, cond)
    ERRORS["diffusers(our export) vs ours"] = err = _rel(got, want)
    assert err <= 1e-5, f"relative max |Δ| {err:.2e}"

    # bake_scale: B · alpha/r, lora_alpha = r. A loader that ignores the metadata (scale 1) agrees too.
    baked = to_peft_state_dict(ours, bake_scale=True)
    save_file(baked, str(tmp_path / "bare.safetensors"))  # no header metadata at all
    ref2 = _diffusers_twin(diffusers_api, ours)
    bare = Pipeline.lora_state_dict(str(tmp_path / "bare.safetensors"), return_lora_metadata=True)
    assert bare[1] is None
    Pipeline.load_lora_into_transformer(bare[0], transformer=ref2)  # what load_lora_weights does
    assert list(ref2.transformer_blocks[0].attn1.to_q.scaling.values()) == [1.0]
    ERRORS["diffusers(baked, no metadata) vs ours"] = err = _rel(_diffusers_pred(ref2, x_t, t, cond), want)
    assert err <= 1e-5

    # fused weights in diffusers' plain names load strictly into diffusers and give the LoRA output
    ref3 = _diffusers_twin(diffusers_api, ours)
    ref3.load_state_dict(merged_state_dict(ours), strict=True)
    ERRORS["diffusers(merged_state_dict) vs ours"] = err = _rel(_diffusers_pred(ref3, x_t, t, cond), want)
    assert err <= 1e-5


def test_we_load_diffusers_save_lora_weights(diffusers_api, tmp_path):
    """The other way: what diffusers' CogVideoX trainer writes (``save_lora_weights`` of the PEFT state dict
    and ``peft_config.to_dict()``, train_cogvideox_lora.py) loads into a plain model via ``load_peft``."""
    _, Pipeline, _, _ = diffusers_api
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    ours = _base()
    ref = _diffusers_twin(diffusers_api, ours)
    targets = ["to_k", "to_q", "to_v", "to_out.0"]
    ref.add_adapter(LoraConfig(r=4, lora_alpha=8, init_lora_weights=True, target_modules=targets))
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in ref.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn_like(p) / p.shape[1] ** 0.5)
    Pipeline.save_lora_weights(
        tmp_path,
        transformer_lora_layers=get_peft_model_state_dict(ref),
        transformer_lora_adapter_metadata=ref.peft_config["default"].to_dict(),
    )
    x_t, t, cond = _inputs()
    want = _diffusers_pred(ref, x_t, t, cond)
    assert load_peft(ours, tmp_path) == TARGETS
    assert lora_modules(ours)[TARGETS[0]].scale == 2.0
    with torch.no_grad():
        ERRORS["ours(diffusers save_lora_weights) vs diffusers"] = err = _rel(ours(x_t, t, cond).pred, want)
    assert err <= 1e-5
    sd, meta = read_peft(tmp_path)
    assert meta["r"] == 4 and all(k.startswith("transformer.") for k in sd)


def test_merge_equals_lora_and_restores_base_keys():
    model = _lora_model()
    base_keys = list(_base().state_dict())
    x_t, t, cond = _inputs()
    with torch.no_grad():
        want = model(x_t, t, cond).pred
    fused = merged_state_dict(model)
    assert list(fused) == base_keys  # exactly the plain (diffusers) keys, in order
    assert lora_modules(model)  # merged_state_dict leaves the model alone
    merge_lora(model)
    assert not lora_modules(model) and list(model.state_dict()) == base_keys
    assert all(torch.equal(v, fused[k]) for k, v in model.state_dict().items())
    assert isinstance(model.transformer_blocks[0].attn1.to_out[0], torch.nn.Linear)
    with torch.no_grad():
        ERRORS["merged vs LoRA"] = err = _rel(model(x_t, t, cond).pred, want)
    assert err <= 1e-5


def test_activation_checkpointing_same_grads_with_dropout():
    """Same grads with and without per-block checkpointing, LoRA dropout on (its mask is replayed)."""
    grads = []
    for ckpt in (False, True):
        model = _lora_model(cfg=LoRAConfig(rank=4, alpha=2.0, dropout=0.3)).train()
        model.grad_checkpointing = ckpt
        torch.manual_seed(7)
        model(*_inputs()).pred.square().mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == 16
    assert all(torch.equal(grads[1][n], g) for n, g in grads[0].items())  # bitwise, on CPU
    assert any(g.abs().max() > 0 for n, g in grads[0].items() if "lora_A" in n)


def test_meta_build_then_init():
    with torch.device("meta"):
        model = CogVideoXTransformer(CogVideoXConfig(**TINY))
    assert apply_lora(model, LORA) == TARGETS
    model.to_empty(device="cpu")
    model.init_weights()  # the base init touches every nn.Linear, LoRA ones included ...
    assert init_lora_weights(model) == 8  # ... so LoRA is initialised after it
    for m in lora_modules(model).values():
        assert not m.lora_B.weight.any() and torch.isfinite(m.lora_A.weight).all() and m.lora_A.weight.any()
        assert m.lora_A.weight.requires_grad and not m.base.weight.requires_grad


def test_default_targets_on_5b_preset():
    """On the real 5B layout (meta): 42 blocks x 4 projections, 132.1 M LoRA params at r=128
    (anchors-conditioning §5: 42·4·r·(3072+3072))."""
    with torch.device("meta"):
        model = CogVideoXTransformer(PRESETS["CogVideoX-5B"])
    names = apply_lora(model, LoRAConfig(rank=128))
    assert len(names) == 168 and all(
        re.fullmatch(r"transformer_blocks\.\d+\.attn1\.to_(q|k|v|out\.0)", n) for n in names
    )
    assert sum(p.numel() for p in lora_parameters(model)) == 42 * 4 * 128 * (3072 + 3072) == 132_120_576
    assert lora_modules(model)[names[0]].scale == 0.5  # alpha 64 / r 128, CogVideo finetune's


def test_bf16_base_with_fp32_lora():
    model = _base().to(torch.bfloat16)
    x_t, t, cond = _inputs()
    x_t, cond = x_t.bfloat16(), Cond(context=cond.context.bfloat16())
    with torch.no_grad():
        want = model(x_t, t, cond).pred
    apply_lora(model, LORA, dtype=torch.float32)
    assert {p.dtype for p in lora_parameters(model)} == {torch.float32}
    with torch.no_grad():
        got = model(x_t, t, cond).pred
    assert got.dtype == torch.bfloat16 and torch.equal(got, want)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(x_t, t, cond).pred.float().square().mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in lora_parameters(model))


def test_bad_input():
    with pytest.raises(ValueError, match=r"rank must be an int >= 0.*-1"):
        LoRAConfig(rank=-1)
    with pytest.raises(ValueError, match="alpha"):
        LoRAConfig(rank=4, alpha=0.0)
    with pytest.raises(ValueError, match="dropout"):
        LoRAConfig(rank=4, dropout=1.0)
    with pytest.raises(ValueError, match=r"'to_\(q' is not a valid regex"):
        LoRAConfig(rank=4, targets="to_(q")
    model = _base()
    nowhere = r".*attn9\.to_q"
    with pytest.raises(ValueError, match=re.escape(f"{nowhere!r} fullmatches no nn.Linear")):
        apply_lora(model, LoRAConfig(rank=4, targets=nowhere))
    with pytest.raises(ValueError, match="fullmatches no"):  # fullmatch, not search: "to_q" alone is no name
        apply_lora(model, LoRAConfig(rank=4, targets="to_q"))
    assert all(p.requires_grad for p in model.parameters())  # a failed apply changes nothing
    assert apply_lora(model, LoRAConfig(rank=0)) == [] and all(p.requires_grad for p in model.parameters())
    apply_lora(model, LORA)
    with pytest.raises(ValueError, match="already has 8 LoRA layers"):
        apply_lora(model, LORA)
    with pytest.raises(ValueError, match="disagrees"):
        save_peft(model, "/nonexistent/never-written", LoRAConfig(rank=8, alpha=2.0))


FSDP_WORKER = """
import copy, sys
import torch, torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from torch.distributed.fsdp import fully_shard
sys.path.insert(0, sys.argv[1])
from test_lora import TINY, _inputs, _lora_model
from minivdit.models.cogvideox import CogVideoXConfig, CogVideoXTransformer
from minivdit.models.lora import *

dist.init_process_group("gloo")
torch.set_num_threads(1)
ref = _lora_model()  # same seed on both ranks
model = copy.deepcopy(ref)
for block in model.transformer_blocks:
    fully_shard(block)
fully_shard(model)
model.grad_checkpointing = True
losses = []
for m in (ref, model):
    m.train()
    loss = m(*_inputs()).pred.square().mean()  # the same batch on both ranks: FSDP's mean grad = ref's
    loss.backward()
    losses.append(loss.item())
assert abs(losses[0] - losses[1]) <= 1e-6 * abs(losses[0]), losses
got = dict(model.named_parameters())
for n, p in ref.named_parameters():
    if p.requires_grad:
        assert hasattr(got[n], "full_tensor"), n
        torch.testing.assert_close(got[n].grad.full_tensor(), p.grad, rtol=1e-5, atol=1e-7, msg=n)
    else:
        assert got[n].grad is None, n
peft, want = to_peft_state_dict(model), to_peft_state_dict(ref)
assert peft.keys() == want.keys() and all(torch.equal(peft[k], want[k]) for k in want)
fused, want = merged_state_dict(model), merged_state_dict(ref)
assert fused.keys() == want.keys() and all(torch.equal(fused[k], want[k]) for k in want)
init_lora_weights(model)
assert not any(lora_state_dict(model)[k].full_tensor().any() for k in lora_state_dict(model) if "lora_B" in k)
full = StateDictOptions(full_state_dict=True, strict=False)
set_model_state_dict(model, lora_state_dict(ref), options=full)  # full tensors into DTensors
back = to_peft_state_dict(model, prefix="")
assert all(torch.equal(back[k], v) for k, v in lora_state_dict(ref).items())

with torch.device("meta"):  # the meta path: build, LoRA, shard, materialise, base init, LoRA init
    meta = CogVideoXTransformer(CogVideoXConfig(**TINY))
apply_lora(meta, LoRAConfig(rank=4, alpha=2.0))
for block in meta.transformer_blocks:
    fully_shard(block)
fully_shard(meta)
meta.to_empty(device="cpu")
meta.init_weights()
assert init_lora_weights(meta) == 8
sd = to_peft_state_dict(meta)
assert all(not v.any() if "lora_B" in k else v.abs().min() > 0 for k, v in sd.items())
meta.train()
meta(*_inputs()).pred.square().mean().backward()
dist.barrier()
dist.destroy_process_group()
print("FSDP2 OK")
"""


@pytest.mark.slow
def test_fsdp2_two_ranks(tmp_path):
    """``fully_shard`` per block + root over a LoRA model (2 ranks, gloo, CPU): loss and LoRA grads equal the
    unsharded model's, frozen params get none, exports gather, full tensors load into shards, meta init."""
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(FSDP_WORKER))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launcher_vars = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in launcher_vars}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    run = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1"]
    run += [f"--master_port={port}", str(script), str(Path(__file__).parent)]
    proc = subprocess.run(run, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    assert proc.stdout.count("FSDP2 OK") == 2


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    if ERRORS:
        print("\nLoRA parity, max|Δ| / max|ref|:", json.dumps(ERRORS))


def test_copy_of_lora_model_is_independent():
    """deepcopy (EMA copies) keeps LoRA layers and shares no storage."""
    model = _lora_model()
    twin = copy.deepcopy(model)
    assert list(lora_modules(twin)) == TARGETS
    a, b = lora_parameters(model)[0], lora_parameters(twin)[0]
    assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()
