"""CogVideoX through ``minivdit.dist``: meta build → (LoRA) → ``parallelize`` → ``materialize(init=False)`` →
``load_pretrained`` from a sharded diffusers folder, over 2 gloo processes (FSDP2 and DDP) against 1 process.
The same for Wan under FlashI2V (issue 19 §6): the backbone loaded shard by shard into the sharded wrapper,
FlashI2V's own layers from full tensors, trained with and without activation checkpointing.

One torchrun launch (``WORKER``) runs every distributed case and rank 0 saves what it gathered; the tests
compare with the same functions run here in a world of one. Each rank trains on its half of the same global
batch (2 clips), so 2 ranks and 1 process see the same mean loss and gradients up to float reduction order.
The tiny config has ``time_embed_dim=17``, so ``time_embedding.linear_1`` is sharded unevenly (9 + 8 rows).
CPU, fp32, offline, ~30 s (diffusers import, 2 process starts)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_cogvideox import TINY_TRANSFORMER  # noqa: E402  (tests/ is on sys.path)
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

from minivdit import dist
from minivdit.dist import ParallelConfig
from minivdit.models.cogvideox import CogVideoXConfig, CogVideoXTransformer, pretrained_folder
from minivdit.models.cond import Cond
from minivdit.models.flashi2v import FlashI2V
from minivdit.models.lora import LoRAConfig, apply_lora, init_lora_weights, lora_modules
from minivdit.models.uniworld import UniWorld
from minivdit.models.wan import WanConfig, WanTransformer

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("single_thread")]

TINY = dict(  # the 5B-I2V layout (RoPE, learned PE buffer, image latents); 17 rows shard unevenly
    TINY_TRANSFORMER,
    in_channels=8,
    time_embed_dim=17,
    use_rotary_positional_embeddings=True,
    use_learned_positional_embeddings=True,
)
NO_ROPE = dict(use_rotary_positional_embeddings=False, use_learned_positional_embeddings=False)
VARIANTS = {"5B-I2V": TINY, "2B": dict(TINY, in_channels=4, **NO_ROPE)}  # 2B: sin-cos PE, non-persistent
LORA = LoRAConfig(rank=4, alpha=2.0)
STEPS, BATCH = 2, 2  # AdamW steps; global batch (1 clip per rank on 2 ranks)
SOLO = dist.DistContext(rank=0, world=1, local_rank=0, device=torch.device("cpu"))


# --------------------------------------------------------------------------- the cases (run by both sides)
def build(folder: Path, ctx: dist.DistContext, strategy: str, *, lora: bool = False, ac: bool = False):
    """The trainer's path: meta build → apply_lora → parallelize → materialize(init=False) → load_pretrained
    → init_lora; then (LoRA) a seeded random B (B = 0 would give A no gradient in the first step), loaded as
    full tensors into the shards (``load_lora_state_dict``)."""
    cfg = CogVideoXConfig.from_json(pretrained_folder(folder) / "config.json")
    with torch.device("meta"):
        model = CogVideoXTransformer(cfg)
    if lora:
        apply_lora(model, LORA)
    pcfg = ParallelConfig(strategy=strategy, activation_checkpointing=ac)
    model = dist.parallelize(model, pcfg, ctx, "fp32")
    dist.materialize(model, ctx.device, init=False)
    assert dist.load_pretrained(model, folder) == pretrained_folder(folder)
    if lora:
        assert dist.init_lora(model, seed=7) == 4 * cfg.num_layers
        g = torch.Generator().manual_seed(8)
        B = {f"{n}.lora_B.weight": m.lora_B.weight.shape for n, m in lora_modules(dist.unwrap(model)).items()}
        B = {k: 0.1 * torch.randn(shape, generator=g) for k, shape in B.items()}
        set_model_state_dict(
            dist.unwrap(model), B, options=StateDictOptions(full_state_dict=True, strict=False)
        )
    if dist.resolve_strategy(pcfg, ctx) == "fsdp":  # really sharded: every parameter is a DTensor
        assert all(dist.is_sharded(p) for p in model.parameters())
    return model


def full_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Full tensors of the state dict (DTensors gathered: a collective)."""
    sd = dist.unwrap(model).state_dict()
    return {k: v.full_tensor() if dist.is_sharded(v) else v.clone() for k, v in sd.items()}


def batch(step: int, cfg: CogVideoXConfig, ctx: dist.DistContext):
    """This rank's share of the global batch of ``step``: clips ``rank::world``."""
    g = torch.Generator().manual_seed(100 + step)
    F, H, W = cfg.trained_size
    x_t = torch.randn(BATCH, F, cfg.out_channels, H, W, generator=g)
    image = torch.randn(BATCH, F, cfg.out_channels, H, W, generator=g)
    context = torch.randn(BATCH, cfg.max_text_seq_length, cfg.text_embed_dim, generator=g)
    target = torch.randn(BATCH, F, cfg.out_channels, H, W, generator=g)
    t = torch.tensor([900.0, 35.0])
    mine = slice(ctx.rank, None, ctx.world)
    return x_t[mine], t[mine], Cond(context=context[mine], image_latents=image[mine]), target[mine]


def loss_of(model, step: int, ctx: dist.DistContext) -> torch.Tensor:
    x_t, t, cond, target = batch(step, dist.unwrap(model).cfg, ctx)
    return (model(x_t, t, cond).pred - target).square().mean()


def train(folder: Path, ctx: dist.DistContext, strategy: str, lora: bool) -> dict:
    """Loaded weights, then ``STEPS`` AdamW steps: per-step mean losses and the final full state dict."""
    model = build(folder, ctx, strategy, lora=lora)
    loaded = full_state(model)
    model.train()
    # eps 1e-4 (gradients here are ~1e-4..1e-3, so Adam still normalises): a gradient that is ~0 by
    # cancellation (a key bias under the softmax; two clips' opposite terms) is rounding noise of ~1e-10 that
    # depends on the reduction order, and eps 1e-8 would turn it into steps of ~lr with a random sign (2.5e-4
    # apart at lr 1e-2); here the 2-rank and 1-process weights stay within 1e-7.
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, eps=1e-4, weight_decay=0.1)
    losses = []
    for step in range(STEPS):
        loss = loss_of(model, step, ctx)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(dist.all_reduce_mean(loss.detach()).item())
    return {"loaded": loaded, "losses": losses, "final": full_state(model)}


def grads(folder: Path, ctx: dist.DistContext, strategy: str, ac: bool) -> dict[str, torch.Tensor]:
    """Full gradients of one backward pass of the LoRA model (only A and B should have one)."""
    model = build(folder, ctx, strategy, lora=True, ac=ac).train()
    assert bool(dist.unwrap(model).grad_checkpointing) is ac
    loss_of(model, 0, ctx).backward()
    out = {}
    for n, p in dist.unwrap(model).named_parameters():
        if p.grad is not None:
            out[n] = p.grad.full_tensor() if dist.is_sharded(p.grad) else p.grad.clone()
    return out


# --------------------------------------------------------------------------- Wan under FlashI2V
WAN = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
           text_dim=16, freq_dim=256, ffn_dim=32, num_layers=2, rope_max_seq_len=32)  # fmt: skip
WAN_SIZE, WAN_TEXT, WAN_VLM = (3, 4, 6), 7, 8  # latent F, H, W; text tokens; VLM width (UniWorld)


def build_wan(
    folder: Path, ctx: dist.DistContext, strategy: str, *, ac: bool = False, uniworld: bool = False
):
    """The trainer's path for ``--pretrained WAN --flashi2v`` (``train.build_models``): meta build of the
    wrapper → parallelize → materialize → load_pretrained (the backbone, shard by shard) → the wrappers'
    layers drawn whole on the CPU (``train.wrapper_init_state``) and loaded as full tensors. Their zero-init
    output layers get seeded random values here, so that every weight has a gradient. ``uniworld``: UniWorld
    (decoupled f_img: hooks on the sharded blocks' cross-attentions) around the frozen FlashI2V Wan, as
    ``--uniworld.train adapter``."""
    from minivdit.models.uniworld import UniWorld, UniWorldConfig
    from minivdit.train import wrapper_init_state

    cfg = WanConfig.from_json(folder / "config.json")
    uw = UniWorldConfig(vlm_dim=WAN_VLM, hidden_dim=12, out_dim=16, latent_channels=4, f_img="decoupled")

    def make():
        m = FlashI2V(WanTransformer(cfg))
        return UniWorld(m.requires_grad_(False), uw) if uniworld else m

    with torch.device("meta"):
        model, reference = make(), make()
    pcfg = ParallelConfig(strategy=strategy, activation_checkpointing=ac)
    model = dist.parallelize(model, pcfg, ctx, "fp32")
    dist.materialize(model, ctx.device, init=False)
    dist.load_pretrained(model, folder)
    state = wrapper_init_state(reference, 5)
    g = torch.Generator().manual_seed(6)
    state = {k: v if v.any() else 0.05 * torch.randn(v.shape, generator=g) for k, v in state.items()}
    set_model_state_dict(
        dist.unwrap(model), state, options=StateDictOptions(full_state_dict=True, strict=False)
    )
    if dist.resolve_strategy(pcfg, ctx) == "fsdp":
        assert all(dist.is_sharded(p) for p in model.parameters())
    return model


def wan_loss(model, step: int, ctx: dist.DistContext) -> torch.Tensor:
    """This rank's clips of the global batch of ``step``; FlashI2V's Fourier ratio fixed per clip (in
    training it is drawn per sample from the global RNG, which 2 ranks and 1 process draw differently)."""
    g = torch.Generator().manual_seed(200 + step)
    F, H, W = WAN_SIZE
    x_t, target = (torch.randn(BATCH, F, 4, H, W, generator=g) for _ in range(2))
    z_c = torch.randn(BATCH, 1, 4, H, W, generator=g)
    context = torch.randn(BATCH, WAN_TEXT, 16, generator=g)
    t, ratio = torch.tensor([900.0, 35.0]), torch.tensor([0.2, 0.7])
    mine = slice(ctx.rank, None, ctx.world)
    if isinstance(dist.unwrap(model), UniWorld):  # VLM states instead of T5 tokens
        context = torch.randn(BATCH, WAN_TEXT, WAN_VLM, generator=g)
    cond = Cond(context=context[mine], image_latents=z_c[mine])
    return (model(x_t[mine], t[mine], cond, ratio=ratio[mine]).pred - target[mine]).square().mean()


def train_wan(folder: Path, ctx: dist.DistContext, strategy: str, ac: bool, uniworld: bool = False) -> dict:
    """As ``train``: the loaded weights, ``STEPS`` AdamW steps' losses and the final weights."""
    model = build_wan(folder, ctx, strategy, ac=ac, uniworld=uniworld)
    loaded = full_state(model)
    model.train()
    assert bool(dist.unwrap(model).grad_checkpointing) is ac
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, eps=1e-4, weight_decay=0.1)  # eps: see train()
    losses = []
    for step in range(STEPS):
        loss = wan_loss(model, step, ctx)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(dist.all_reduce_mean(loss.detach()).item())
    return {"loaded": loaded, "losses": losses, "final": full_state(model)}


def run_all(folders: dict[str, Path], ctx: dist.DistContext, strategies: tuple[str, ...]) -> dict:
    res = {}
    wan = folders.pop("wan", None)
    if wan is not None:
        for s in strategies:
            for ac in (False, True) if s != "ddp" else (False,):
                res[f"wan/{s}/ac={ac}"] = train_wan(wan, ctx, s, ac)
            if s != "ddp":  # UniWorld: frozen DiT, hooks on its sharded cross-attentions
                res[f"uniworld/{s}/ac={s == 'fsdp'}"] = train_wan(wan, ctx, s, s == "fsdp", uniworld=True)
    for s in strategies:
        for lora in (False, True):
            res[f"train/{s}/lora={lora}"] = train(folders["5B-I2V"], ctx, s, lora)
        res[f"grads/{s}/ac=False"] = grads(folders["5B-I2V"], ctx, s, ac=False)
        res[f"grads/{s}/ac=True"] = grads(folders["5B-I2V"], ctx, s, ac=True)
    for name, folder in folders.items():  # the weights load_pretrained put into the sharded model
        model = build(folder, ctx, strategies[0])
        res[f"load/{name}"] = full_state(model)
        res[f"pe/{name}"] = dist.unwrap(model).patch_embed.pos_embedding.clone()
    return res


WORKER = """
import json, sys
from pathlib import Path
import torch
sys.path.insert(0, sys.argv[1])
from test_dist_cogvideox import run_all
from minivdit import dist

torch.set_num_threads(1)
args = json.loads(sys.argv[2])
ctx = dist.init()
assert ctx.world == 2
try:
    res = run_all({k: Path(v) for k, v in args["folders"].items()}, ctx, ("fsdp", "ddp"))
    if ctx.is_main:
        torch.save(res, args["out"])
finally:
    dist.teardown()
"""


# --------------------------------------------------------------------------- fixtures
def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Every persistent tensor random (non-zero adaLN gates and proj_out: every weight gets a gradient)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, v in model.state_dict().items():
            r = torch.randn(v.shape, generator=g, dtype=torch.float64).to(v.dtype)
            if name.endswith("weight") and v.ndim == 1:
                v.copy_(1 + 0.2 * r)
            elif v.ndim == 1 or name.endswith("pos_embedding"):
                v.copy_(0.1 * r)
            else:
                v.copy_(r / v[0].numel() ** 0.5)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """A random diffusers ``CogVideoXTransformer3DModel`` per variant, saved in >= 2 safetensors shards."""
    pytest.importorskip("diffusers")
    from diffusers import CogVideoXTransformer3DModel, WanTransformer3DModel

    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        models = [(name, CogVideoXTransformer3DModel(**kw)) for name, kw in VARIANTS.items()]
        for i, (name, ref) in enumerate(models + [("wan", WanTransformer3DModel(**WAN))]):
            _randomise(ref, i)
            folder = tmp_path_factory.mktemp(name)
            ref.save_pretrained(folder, max_shard_size="20KB")
            assert len(list(folder.glob("diffusion_pytorch_model-*.safetensors"))) >= 2
            out[name] = folder
    return out


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(folders, tmp_path_factory) -> dict:
    """``run_all`` over 2 gloo processes (FSDP2 and DDP), as rank 0 gathered it."""
    tmp = tmp_path_factory.mktemp("torchrun")
    script, out = tmp / "worker.py", tmp / "results.pt"
    script.write_text(textwrap.dedent(WORKER))
    args = json.dumps({"folders": {k: str(v) for k, v in folders.items()}, "out": str(out)})  # wan included
    launcher_vars = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in launcher_vars}
    port = _free_port()
    env.update(OMP_NUM_THREADS="1", MASTER_PORT=str(port), CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1"]
    cmd += [f"--master_port={port}", str(script), str(Path(__file__).parent), args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (
        f"torchrun failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    )
    return torch.load(out, weights_only=True)


@pytest.fixture(scope="module")
def one_process(folders) -> dict:
    return run_all(dict(folders), SOLO, ("none",))


def _same(got: dict, want: dict, atol: float, what: str) -> None:
    assert got.keys() == want.keys(), what
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=atol, msg=lambda m, k=k: f"{what}: {k}: {m}")


# --------------------------------------------------------------------------- tests
@pytest.mark.parametrize("strategy", ["fsdp", "ddp"])
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_two_ranks_train_like_one_process(two_ranks, one_process, strategy, lora):
    """Same losses and the same weights after 2 AdamW steps; LoRA: the base is frozen, only A, B move."""
    got, want = two_ranks[f"train/{strategy}/lora={lora}"], one_process[f"train/none/lora={lora}"]
    _same(got["loaded"], want["loaded"], 0, "loaded")  # the same bytes from the same files
    # A rank runs a batch of 1 clip, the single process one of 2: other GEMM shapes, so other kernels. The
    # loss is a mean over 2·1152 squares, summed in another order (≤ log2(2304)·u ≈ 7e-7 relative, pairwise
    # sums), plus the per-element forward rounding (≈ √(Σk)·u ≈ 2e-6 of |pred|, 2 blocks of width 32), which
    # averages out over the 2304 terms: rel 2e-6.
    assert got["losses"] == pytest.approx(want["losses"], rel=2e-6, abs=1e-7)
    # Gradients differ by ≲ k·u·max|g| (k ≈ 160 token terms, |g| ≲ 5e-3: 5e-8), and an AdamW step by at most
    # lr·δg/eps = 1e-3·5e-8/1e-4 = 5e-7 (eps 1e-4, see train()): ≲ 1e-6 after 2 steps.
    _same(got["final"], want["final"], 1e-6, "after AdamW")
    moved = {k for k in want["final"] if not torch.equal(want["final"][k], want["loaded"][k])}
    if lora:
        assert moved == {k for k in want["final"] if ".lora_" in k} and len(moved) == 16
    else:
        assert moved == set(want["final"]) - {"patch_embed.pos_embedding"}  # the learned PE is a buffer


@pytest.mark.parametrize("case", ["fsdp/ac=False", "fsdp/ac=True", "ddp/ac=False"])
def test_wan_under_flashi2v_trains_on_two_ranks_like_one_process(two_ranks, one_process, folders, case):
    """Wan + FlashI2V, FSDP2 (with and without activation checkpointing) and DDP on 2 ranks: the backbone
    loads exactly ``WanTransformer.from_pretrained``'s weights into the shards, FlashI2V's layers arrive
    whole, and 2 AdamW steps give the losses and weights of one process (the bounds of the CogVideoX test
    above: the same sizes of sums, a batch of 1 clip per rank against 2)."""
    got, want = two_ranks[f"wan/{case}"], one_process["wan/none/ac=False"]
    _same(got["loaded"], want["loaded"], 0, "loaded")
    base = {f"base.{k}": v for k, v in WanTransformer.from_pretrained(folders["wan"]).state_dict().items()}
    _same({k: v for k, v in got["loaded"].items() if k.startswith("base.")}, base, 0, "backbone")
    assert got["losses"] == pytest.approx(want["losses"], rel=2e-6, abs=1e-7)
    _same(got["final"], want["final"], 1e-6, "after AdamW")
    assert all(not torch.equal(want["final"][k], want["loaded"][k]) for k in want["final"])  # all trained


def test_uniworld_around_a_frozen_flashi2v_wan_trains_on_two_ranks_like_one_process(two_ranks, one_process):
    """UniWorld with the decoupled f_img (forward hooks on the FSDP2-sharded blocks' cross-attentions, the
    tokens handed over per forward, recomputed under activation checkpointing) around a frozen FlashI2V Wan:
    2 ranks give one process's losses and weights (the bounds of the Wan test above); only the wrapper's
    layers move."""
    got, want = two_ranks["uniworld/fsdp/ac=True"], one_process["uniworld/none/ac=False"]
    _same(got["loaded"], want["loaded"], 0, "loaded")
    assert got["losses"] == pytest.approx(want["losses"], rel=2e-6, abs=1e-7)
    _same(got["final"], want["final"], 1e-6, "after AdamW")
    moved = {k for k in want["final"] if not torch.equal(want["final"][k], want["loaded"][k])}
    assert moved == {k for k in want["final"] if k.startswith(("adapter.", "image_proj.", "image_attn."))}


@pytest.mark.parametrize("strategy", ["fsdp", "ddp"])
def test_activation_checkpointing_same_grads(two_ranks, one_process, strategy):
    """AC under FSDP2 / DDP: the LoRA gradients equal those without AC and those of one process; frozen
    parameters get none."""
    plain, ckpt = two_ranks[f"grads/{strategy}/ac=False"], two_ranks[f"grads/{strategy}/ac=True"]
    _same(ckpt, plain, 1e-7, "AC vs no AC")  # the recompute replays the same kernels: bit-identical
    # batch of 1 per rank vs 2 in one process (other kernels): ≲ k·u·max|g| ≈ 160·6e-8·5e-3 ≈ 5e-8
    _same(plain, one_process["grads/none/ac=False"], 1e-7, "2 ranks vs 1")
    _same(one_process["grads/none/ac=True"], one_process["grads/none/ac=False"], 1e-7, "1 process, AC")
    assert len(plain) == 16 and all(".lora_" in k for k in plain)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_load_pretrained_sharded_equals_from_pretrained(two_ranks, one_process, folders, variant):
    """load_pretrained into the meta-built FSDP2 model (gathered) and into a plain one (world 1) equals
    ``CogVideoXTransformer.from_pretrained``, bit for bit, the non-persistent sin-cos PE included."""
    ref = CogVideoXTransformer.from_pretrained(folders[variant])
    want = ref.state_dict()
    _same(two_ranks[f"load/{variant}"], want, 0, "FSDP2")
    _same(one_process[f"load/{variant}"], want, 0, "world 1")
    for res in (two_ranks, one_process):
        torch.testing.assert_close(res[f"pe/{variant}"], ref.patch_embed.pos_embedding, rtol=0, atol=0)


def test_load_pretrained_world_one_and_errors(folders, tmp_path):
    """World 1, pipeline layout (``folder/transformer``), LoRA keys mapped; a missing, an unexpected and a
    duplicated key, a wrong shape and an un-materialised model each raise naming the folder."""
    src = folders["5B-I2V"]
    shutil.copytree(src, tmp_path / "pipe" / "transformer")
    model = build(tmp_path / "pipe", SOLO, "none", lora=True)
    want = CogVideoXTransformer.from_pretrained(src).state_dict()
    got = {k.replace(".base.", "."): v for k, v in model.state_dict().items() if ".lora_" not in k}
    _same(got, want, 0, "LoRA model")

    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    index = json.loads((bad / "diffusion_pytorch_model.safetensors.index.json").read_text())
    files = sorted({bad / name for name in index["weight_map"].values()})
    first = max(files, key=lambda f: len(load_file(str(f))))  # a file with >= 2 tensors
    last = next(f for f in files if f != first)
    tensors, other = load_file(str(first)), load_file(str(last))
    dropped, reshaped = sorted(tensors)[:2]
    twice = sorted(other)[0]
    del tensors[dropped]
    tensors[reshaped] = torch.zeros(3, 5)
    tensors["bogus.weight"] = torch.zeros(3)
    tensors[twice] = other[twice]  # also in the other file
    save_file(tensors, str(first))
    cfg = CogVideoXConfig.from_json(src / "config.json")
    with torch.device("meta"):
        fresh = CogVideoXTransformer(cfg)
    dist.materialize(fresh, torch.device("cpu"), init=False)
    with pytest.raises(ValueError) as info:
        dist.load_pretrained(fresh, bad)
    msg = str(info.value)
    assert (
        str(bad) in msg and f"missing keys ['{dropped}']" in msg and "unexpected keys ['bogus.weight']" in msg
    )
    assert f"'{twice}': {sorted([first.name, last.name])}" in msg and f"{reshaped}: (3, 5) in file vs" in msg
    with torch.device("meta"):
        on_meta = CogVideoXTransformer(cfg)
    with pytest.raises(ValueError, match="is on meta"):
        dist.load_pretrained(on_meta, src)
    with pytest.raises(ValueError, match="no config.json"):
        dist.load_pretrained(fresh, tmp_path / "nowhere")


def test_init_lora_equals_seeded_init_lora_weights(folders):
    """``init_lora(model, seed)`` = ``torch.manual_seed(seed); init_lora_weights(model)`` on the CPU (the
    2-rank FSDP2 / DDP equality is in the ``loaded`` weights of the training test), base untouched, global RNG
    state untouched."""
    model = build(folders["2B"], SOLO, "none")
    apply_lora(model, LORA)
    before = {k: v.clone() for k, v in model.state_dict().items() if ".lora_" not in k}
    state = torch.get_rng_state()
    assert dist.init_lora(model, seed=3) == 8
    assert torch.equal(torch.get_rng_state(), state)
    got = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(3)
    init_lora_weights(model)
    _same(got, model.state_dict(), 0, "init_lora")
    _same({k: v for k, v in got.items() if ".lora_" not in k}, before, 0, "base")
    assert all(not v.any() for k, v in got.items() if ".lora_B" in k)


def test_block_list_contract():
    """Both backbones expose their blocks to parallelize; others get a clear error."""
    from minivdit.models.dit import DiTConfig, VDiT

    with torch.device("meta"):
        vdit = VDiT(
            DiTConfig(depth=2, hidden_size=32, num_heads=2, patch_size=4, in_channels=3, input_size=(8, 8))
        )
        cog = CogVideoXTransformer(CogVideoXConfig(**TINY))
    assert dist.block_list(vdit) is vdit.blocks and dist.block_list(cog) is cog.transformer_blocks
    with pytest.raises(ValueError, match=r"Linear has no block list.*transformer_blocks"):
        dist.block_list(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="no grad_checkpointing"):
        dist.parallelize(torch.nn.Linear(2, 2), ParallelConfig(activation_checkpointing=True), SOLO, "fp32")
