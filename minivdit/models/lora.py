"""LoRA for fine-tuning pretrained backbones (CogVideoX), saved in the PEFT / diffusers key layout.

LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", arXiv:2106.09685) freezes a
pretrained Linear ``W`` [out, in] and learns a rank-r update: ``y = W x + b + (alpha / r) · B A x`` with
``A`` [r, in], ``B`` [out, r]. As PEFT 0.21 (``peft/tuners/lora/layer.py``: ``reset_lora_parameters``,
``Linear.forward``, ``get_delta_weight``): A is kaiming-uniform a=√5 (``nn.Linear``'s default), **B = 0**, so
step 0 equals the base model exactly; dropout acts on the input of A; the merge delta is computed in fp32.

What the CogVideoX trainers adapt (``anchors-conditioning.md`` §5, ``anchors-cogvideox.md`` §5.1-5.2): the
four attention projections ``to_q``, ``to_k``, ``to_v``, ``to_out.0`` of ``attn1`` in every block (diffusers
``examples/cogvideo/train_cogvideox_lora.py`` l.1116-1122; CogVideo ``finetune/schemas/args.py`` l.77): our
default ``targets``. Rank / alpha: CogVideo ``finetune`` 128 / 64 (l.75-76: our alpha default, with
``rank=128``), diffusers 128 / 128, finetrainers 64 / 64. The scale is alpha / r; alpha = 1 (the original
CogVideo README) makes it tiny, the READMEs now advise r or r/2. On the 5B: 42 · 4 · r · (3072 + 3072)
parameters, 132.1 M at r=128.

Wan 2.1 (``minivdit.models.wan``, diffusers ``WanTransformer3DModel`` names). ``WAN_TARGETS``, what the
Wan LoRA trainers adapt by default: q/k/v/o of self- *and* cross-attention in every block
(``blocks.N.attn1|attn2.to_q|to_k|to_v|to_out.0``; finetrainers' ``--target_modules`` default
``to_q to_k to_v to_out.0``, which PEFT suffix-matches in both attentions, as diffusers' own Wan LoRA tests
do). ``WAN_TARGETS_FFN`` adds the FFN (``ffn.net.0.proj``, ``ffn.net.2``) and the I2V image projections
(``attn2.add_k_proj``, ``add_v_proj``): musubi-tuner's Wan LoRA wraps every Linear of a block. On the
1.3B (30 blocks, D 1536, FFN 8960) ``WAN_TARGETS`` is 30 · 8 · r · 2·1536 = 737 K · r parameters (47.2 M at
r=64); on the 14B (40 blocks, D 5120) 40 · 8 · r · 2·5120 = 3.28 M · r. The regexes also match under a
wrapper (``FlashI2V``: ``base.blocks.…``). Under ``FlashI2V`` the wrapper's own layers (φ's
``learnable_proj``, ``fourier_embedding``: new, not pretrained) stay trainable (``apply_lora``), and the
PEFT export / import names are the backbone's (``transformer.blocks.…``, ``peft_root``): those extra layers
are no part of a diffusers LoRA file (a diffusers pipeline has no FlashI2V); save them with the trainer's
checkpoint (``ckpt`` keeps every ``requires_grad`` parameter).

Key layout. In the model a wrapped Linear ``X`` becomes ``X.base`` (the frozen ``nn.Linear``:
``X.base.weight``, ``X.base.bias``), ``X.lora_A.weight`` [r, in] and ``X.lora_B.weight`` [out, r];
``lora_state_dict`` holds only the LoRA keys (what the trainer checkpoints). The diffusers export
(``to_peft_state_dict``, ``save_peft``) is what ``CogVideoXPipeline.save_lora_weights`` writes and
``load_lora_weights`` reads (diffusers 0.42.1 ``loaders/lora_pipeline.py`` ``CogVideoXLoraLoaderMixin``,
``loaders/peft.py`` ``load_lora_adapter``): ``transformer.<X>.lora_A.weight`` / ``.lora_B.weight``, ``<X>``
our module name = diffusers' (``transformer.transformer_blocks.0.attn1.to_q.lora_A.weight``), in
``pytorch_lora_weights.safetensors`` (``LORA_WEIGHT_NAME_SAFE``). ``merged_state_dict`` gives the fused
weights under diffusers' plain names (``transformer_blocks.0.attn1.to_q.weight``).

Alpha. diffusers LoRA files carry no alpha tensors. Without metadata diffusers builds
``LoraConfig(r=rank, lora_alpha=rank)``: scale 1 (``utils/peft_utils.py`` ``get_peft_kwargs``). 0.42.1 also
reads the safetensors header entry ``lora_adapter_metadata``: JSON of ``LoraConfig`` kwargs under the
component prefix (``{"transformer.r": 128, "transformer.lora_alpha": 64.0, ...}``, ``lora_base.py``
``write_lora_layers`` / ``_pack_dict_with_prefix``), passed as is to ``LoraConfig``. ``save_peft`` writes
it, so diffusers loads scale alpha / r. ``bake_scale=True`` instead multiplies B by alpha / r and writes
lora_alpha = r: scale 1 for every loader, also those that ignore the header. ``save_peft`` also writes an
``adapter_config.json`` with PEFT's ``LoraConfig`` fields, for people and tools.

Lifecycle. Load the base (``from_pretrained``) → ``apply_lora`` → train (the optimizer may get every
parameter: frozen ones get no gradient) → ``save_peft`` and/or ``merge_lora``. On ``meta``: build →
``apply_lora`` → activation checkpointing / FSDP2 ``fully_shard`` per block (the LoRA parameters live inside
the block; frozen and trainable parameters share the block's FSDP2 group) → ``to_empty`` → base weights
(loaded, or ``init_weights()``, which re-initialises every ``nn.Linear``, LoRA ones included) →
``init_lora_weights``. Exports gather DTensors (a collective: call on every rank).

Deviations from PEFT: one adapter (no adapter names, ``set_adapters``, ``disable_adapters``, unmerge), no
LoRA bias, DoRA, rsLoRA, or layers other than ``nn.Linear``; the base is ``X.base`` (PEFT: ``X.base_layer``);
the input is cast to the LoRA dtype only outside autocast (PEFT always casts; inside autocast it would be
cast back anyway); ``targets`` is always a regex (PEFT also takes a list of name suffixes).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from minivdit import durable
from minivdit.config import check_types

WEIGHTS_NAME = "pytorch_lora_weights.safetensors"  # diffusers LORA_WEIGHT_NAME_SAFE (loaders/lora_base.py)
METADATA_KEY = "lora_adapter_metadata"  # diffusers LORA_ADAPTER_METADATA_KEY (loaders/lora_base.py)
CONFIG_NAME = "adapter_config.json"  # PEFT CONFIG_NAME
# diffusers train_cogvideox_lora.py / CogVideo finetune: target_modules ["to_q", "to_k", "to_v", "to_out.0"]
DEFAULT_TARGETS = r".*attn1\.(to_q|to_k|to_v|to_out\.0)"
# Wan (module docstring): q/k/v/o of self- and cross-attention (finetrainers' default target_modules); with
# the FFN and the I2V image k/v projections (musubi-tuner: every Linear of a Wan block)
WAN_TARGETS = r"(.*\.)?blocks\.\d+\.attn[12]\.(to_q|to_k|to_v|to_out\.0)"
WAN_TARGETS_FFN = (
    r"(.*\.)?blocks\.\d+\.(attn[12]\.(to_q|to_k|to_v|to_out\.0)|attn2\.add_[kv]_proj|ffn\.net\.(0\.proj|2))"
)


@dataclass(frozen=True, kw_only=True)
class LoRAConfig:
    """Which Linear layers get a LoRA update, and its size. ``rank=0``: no LoRA (a full fine-tune)."""

    rank: int = 0
    """r; 0 = off (full fine-tune). CogVideo's and diffusers' CogVideoX trainers use 128."""
    alpha: float = 64.0
    """Scale numerator: the update is (alpha / rank) · B A. CogVideo finetune: 64 with rank 128."""
    targets: str = DEFAULT_TARGETS
    """Regex ``re.fullmatch``-ed against qualified module names (as PEFT does with a string
    ``target_modules``); only ``nn.Linear`` modules are wrapped. Default: ``attn1.to_{q,k,v,out.0}``."""
    dropout: float = 0.0
    """Dropout on the input of A (PEFT ``lora_dropout``; 0 in the CogVideoX trainers)."""

    def __post_init__(self) -> None:
        check_types(self)
        if not isinstance(self.rank, int) or self.rank < 0:
            raise ValueError(f"LoRAConfig.rank must be an int >= 0 (0 = off), got {self.rank!r}")
        if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"LoRAConfig.alpha must be a finite number > 0, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRAConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if not self.targets:
            raise ValueError("LoRAConfig.targets must be a non-empty regex")
        try:
            re.compile(self.targets)
        except re.error as e:
            raise ValueError(f"LoRAConfig.targets {self.targets!r} is not a valid regex: {e}") from None

    @property
    def enabled(self) -> bool:
        return self.rank > 0

    @property
    def scale(self) -> float:
        """alpha / rank (0 when off)."""
        return self.alpha / self.rank if self.rank else 0.0


class LoRALinear(nn.Module):
    """``base(x) + (alpha / r) · lora_B(lora_A(dropout(x)))`` around a frozen ``nn.Linear`` kept as ``.base``.

    The LoRA weights take the base weight's device (``meta`` included: then ``init_weights()`` runs later)
    and ``dtype`` (default: the base's, as PEFT). Only Python numbers are stored besides the submodules, so
    ``to_empty``, FSDP2 and checkpointing see nothing unusual."""

    def __init__(
        self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0, dtype: torch.dtype | None = None
    ):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise ValueError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        if rank < 1:
            raise ValueError(f"LoRALinear rank must be >= 1, got {rank}")
        kw = dict(device=base.weight.device, dtype=dtype or base.weight.dtype)
        self.base = base.requires_grad_(False)
        self.rank, self.alpha, self.scale = rank, float(alpha), alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.Linear(base.in_features, rank, bias=False, **kw)  # [r, in]
        self.lora_B = nn.Linear(rank, base.out_features, bias=False, **kw)  # [out, r]
        if not self.lora_A.weight.is_meta:
            self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """PEFT's default (``init_lora_weights=True``): A kaiming-uniform a=√5, B = 0. Base untouched."""
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: Tensor) -> Tensor:
        out = self.base(x)  # [..., out]
        dtype = self.lora_A.weight.dtype
        if x.dtype != dtype and not torch.is_autocast_enabled(x.device.type):
            x = x.to(dtype)  # e.g. fp32 LoRA on a bf16 base (PEFT ``_cast_input_dtype``)
        delta = self.lora_B(self.lora_A(self.dropout(x)))  # [..., r] -> [..., out]
        return out + (delta * self.scale).to(out.dtype)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha:g}, scale={self.scale:g}"


# --------------------------------------------------------------------------- apply, init, state dicts
def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    """Qualified name -> LoRALinear, in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable LoRA parameters (A and B of every wrapped layer), for the optimizer."""
    return [p for m in lora_modules(model).values() for p in (m.lora_A.weight, m.lora_B.weight)]


def apply_lora(model: nn.Module, cfg: LoRAConfig, *, dtype: torch.dtype | None = None) -> list[str]:
    """Wrap every ``nn.Linear`` whose qualified name ``re.fullmatch``-es ``cfg.targets`` in a LoRALinear,
    freeze every other parameter except a wrapper's own new layers (``FlashI2V``'s φ and Fourier embedding,
    if trainable), and return the wrapped names. ``rank=0``: nothing happens, ``[]``.
    ``dtype``: the LoRA parameters' dtype (default: each base weight's; fp32 on a bf16 base keeps AdamW
    updates precise). Call on an unsharded model (before ``fully_shard``), on any device including ``meta``.
    ``ValueError`` if nothing matches (naming the regex), or if the model already has LoRA layers."""
    if not cfg.enabled:
        return []
    if existing := list(lora_modules(model)):
        raise ValueError(
            f"apply_lora: the model already has {len(existing)} LoRA layers (e.g. {existing[0]!r}); "
            "apply it once (merge_lora first to stack a second adapter)"
        )
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    names = [n for n in linears if n and re.fullmatch(cfg.targets, n)]
    if not names:
        raise ValueError(
            f"apply_lora: LoRAConfig.targets {cfg.targets!r} fullmatches no nn.Linear of "
            f"{type(model).__name__} ({len(linears)} Linears, e.g. {list(linears)[:4]})"
        )
    if sharded := [n for n in names if hasattr(linears[n].weight, "full_tensor")]:
        raise ValueError(f"apply_lora: {sharded[0]!r} is already sharded (DTensor); apply before fully_shard")
    new = [p for p in _wrapper_parameters(model) if p.requires_grad]  # e.g. FlashI2V's φ: not pretrained
    model.requires_grad_(False)
    for name in names:
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, child, LoRALinear(linears[name], cfg.rank, cfg.alpha, cfg.dropout, dtype))
    for p in [*lora_parameters(model), *new]:
        p.requires_grad_(True)
    return names


def _wrapper_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters a wrapper adds around a pretrained backbone (``FlashI2V``: every parameter outside its
    ``.base``): new layers, trained in full also under LoRA."""
    from minivdit.models.flashi2v import FlashI2V  # lazy: flashi2v does not import lora, but keep it light

    out = {}
    for m in model.modules():
        if isinstance(m, FlashI2V):
            inner = {id(p) for p in m.base.parameters()}
            out |= {id(p): p for p in m.parameters() if id(p) not in inner}
    return list(out.values())


def peft_root(model: nn.Module) -> nn.Module:
    """The module whose names a diffusers LoRA file uses: the backbone under wrappers (``FlashI2V``,
    ``UniWorld``: ``base.blocks.0…`` → ``blocks.0…``, diffusers' ``transformer`` names), else the model."""
    from minivdit.models.flashi2v import BackboneWrapper

    while isinstance(model, BackboneWrapper):
        model = model.base
    return model


@torch.no_grad()
def init_lora_weights(model: nn.Module) -> int:
    """Re-initialise every LoRA layer (A kaiming, B = 0) and nothing else, e.g. after ``to_empty()`` and the
    base weights; returns the number of layers. Works on FSDP2-sharded (DTensor) parameters."""
    layers = lora_modules(model)
    for m in layers.values():
        m.init_weights()
    return len(layers)


def _full(t: Tensor) -> Tensor:
    """The whole tensor of a DTensor (a collective: every rank must call), or the tensor itself."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _lora_params(model: nn.Module) -> dict[str, nn.Parameter]:
    layers = lora_modules(model).items()
    return {f"{n}.lora_{ab}.weight": getattr(m, f"lora_{ab}").weight for n, m in layers for ab in "AB"}


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Only the LoRA tensors (``X.lora_A.weight``, ``X.lora_B.weight``), from ``model.state_dict()``: base
    weights are never copied. Under FSDP2 the values are DTensors (as ``state_dict()``'s)."""
    keys, state = _lora_params(model), model.state_dict()
    return {k: state[k] for k in keys}


@torch.no_grad()
def load_lora_state_dict(model: nn.Module, sd: dict[str, Tensor], strict: bool = True) -> None:
    """Copy ``sd`` (``lora_state_dict`` keys; full tensors or DTensors) into the LoRA parameters.
    ``strict``: ``ValueError`` listing missing and unexpected keys; shape mismatches always raise."""
    params = _lora_params(model)
    missing, unexpected = sorted(params.keys() - sd.keys()), sorted(sd.keys() - params.keys())
    if strict and (missing or unexpected):
        raise ValueError(f"load_lora_state_dict: missing keys {missing}; unexpected keys {unexpected}")
    params = {k: p for k, p in params.items() if k in sd}
    if bad := [
        f"{k}: {tuple(sd[k].shape)} vs {tuple(p.shape)}" for k, p in params.items() if sd[k].shape != p.shape
    ]:
        raise ValueError(f"load_lora_state_dict: shape mismatch (given vs model): {bad}")
    if any(hasattr(p, "device_mesh") for p in params.values()):  # DTensors: sharding is dist.py's job
        raise ValueError(
            "load_lora_state_dict: the model is FSDP-sharded; load full tensors with torch's "
            "set_model_state_dict(model, sd, options=StateDictOptions(full_state_dict=True, strict=False)) "
            "(what minivdit.ckpt.load_weights does)"
        )
    for k, p in params.items():
        p.copy_(sd[k])


# --------------------------------------------------------------------------- PEFT / diffusers export
def _uniform(layers: dict[str, LoRALinear]) -> tuple[int, float, float]:
    """(rank, alpha, dropout) shared by all layers (apply_lora uses one config)."""
    if not layers:
        raise ValueError("the model has no LoRA layers (apply_lora first)")
    seen = {(m.rank, m.alpha, getattr(m.dropout, "p", 0.0)) for m in layers.values()}
    if len(seen) > 1:
        raise ValueError(f"LoRA layers disagree on (rank, alpha, dropout): {sorted(seen)}")
    return seen.pop()


def to_peft_state_dict(model: nn.Module, prefix: str = "transformer", *, bake_scale: bool = False) -> dict:
    """``{prefix}.{X}.lora_A.weight`` / ``.lora_B.weight``: the layout of diffusers' pipeline LoRA files
    (``CogVideoXLoraLoaderMixin``); ``prefix=""`` gives the bare PEFT names (``get_peft_model_state_dict``).
    Full, contiguous copies (DTensors gathered: a collective). ``bake_scale``: B multiplied by alpha / r.
    Names are ``peft_root``'s (the backbone's under FlashI2V)."""
    layers, out = lora_modules(peft_root(model)), {}
    pre = f"{prefix}." if prefix else ""
    for name, m in layers.items():
        B = _full(m.lora_B.weight.detach())
        if bake_scale and m.scale != 1.0:
            B = (B.float() * m.scale).to(B.dtype)
        out[f"{pre}{name}.lora_A.weight"] = _full(m.lora_A.weight.detach()).contiguous().clone()
        out[f"{pre}{name}.lora_B.weight"] = B.contiguous().clone()
    return out


def peft_metadata(model: nn.Module, *, bake_scale: bool = False) -> dict:
    """The ``LoraConfig`` kwargs diffusers stores per component (``r``, ``lora_alpha``, ``target_modules`` as
    the exact wrapped names, ``lora_dropout``, ``bias``, ``init_lora_weights``), without the prefix."""
    layers = lora_modules(peft_root(model))
    rank, alpha, dropout = _uniform(layers)
    return {
        "r": rank,
        "lora_alpha": float(rank) if bake_scale else alpha,
        "target_modules": sorted(layers),
        "lora_dropout": dropout,
        "bias": "none",
        "init_lora_weights": True,
    }


def save_peft(
    model: nn.Module,
    folder: str | Path,
    cfg: LoRAConfig | None = None,
    *,
    prefix: str = "transformer",
    bake_scale: bool = False,
) -> Path:
    """Write ``folder/pytorch_lora_weights.safetensors`` (diffusers' pipeline layout and header metadata,
    ``pipe.load_lora_weights(folder)`` reads it with scale alpha / r) and ``folder/adapter_config.json``
    (PEFT's ``LoraConfig`` fields). ``cfg``, if given, must agree with the model's layers. Returns the
    weights path. Under FSDP2 every rank must call (the tensors are gathered); only rank 0 should write."""
    meta = peft_metadata(model, bake_scale=bake_scale)
    if cfg is not None and (cfg.rank, float(cfg.alpha), cfg.dropout) != _uniform(lora_modules(model)):
        raise ValueError(f"save_peft: cfg {cfg} disagrees with the model's LoRA layers {meta}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.cpu() for k, v in to_peft_state_dict(model, prefix, bake_scale=bake_scale).items()}
    pre = f"{prefix}." if prefix else ""
    packed = json.dumps({pre + k: v for k, v in meta.items()}, indent=2, sort_keys=True)  # write_lora_layers
    header = {"format": "pt", METADATA_KEY: packed}
    with durable.atomic_path(folder / WEIGHTS_NAME) as tmp:
        save_file(tensors, str(tmp), metadata=header)
    adapter = {"peft_type": "LORA", "task_type": None, "base_model_name_or_path": None, "use_rslora": False}
    durable.write_text(folder / CONFIG_NAME, json.dumps(adapter | meta, indent=2, sort_keys=True) + "\n")
    return folder / WEIGHTS_NAME


@torch.no_grad()
def from_peft_state_dict(
    model: nn.Module, sd: dict[str, Tensor], *, prefix: str = "transformer", metadata: dict | None = None
) -> None:
    """Load a diffusers / PEFT LoRA state dict into the model's LoRA layers (strict: ``ValueError`` listing
    missing / unexpected keys). Keys under ``prefix.`` are used, others ignored (another component's).
    ``metadata``: the file's ``LoraConfig`` kwargs (unprefixed); its ``lora_alpha / r`` is the file's scale,
    and without it the scale is 1 (diffusers' convention). B is rescaled when that differs from the layers'
    alpha / r, so the output is the one diffusers computes. Names are ``peft_root``'s."""
    model = peft_root(model)
    pre = f"{prefix}." if prefix else ""
    sd = {k.removeprefix(pre): v for k, v in sd.items() if k.startswith(pre)}
    layers = lora_modules(model)
    rank, alpha, _ = _uniform(layers)
    file_scale = 1.0
    if metadata:
        file_rank = metadata.get("r", rank)
        if file_rank != rank or metadata.get("rank_pattern") or metadata.get("alpha_pattern"):
            raise ValueError(f"from_peft_state_dict: file LoraConfig {metadata} does not match rank {rank}")
        if unsupported := [k for k in ("use_rslora", "use_dora", "lora_bias") if metadata.get(k)]:
            raise ValueError(
                f"from_peft_state_dict: {unsupported} set in the file's LoraConfig: not supported"
            )
        file_scale = float(metadata.get("lora_alpha", file_rank)) / file_rank
    if file_scale != alpha / rank:
        ratio = file_scale / (alpha / rank)
        sd = {k: (v.float() * ratio).to(v.dtype) if ".lora_B." in k else v for k, v in sd.items()}
    load_lora_state_dict(model, sd, strict=True)


def read_peft(path: str | Path, prefix: str = "transformer") -> tuple[dict[str, Tensor], dict | None]:
    """(state dict, unprefixed metadata or None) of a diffusers LoRA file or the folder holding
    ``pytorch_lora_weights.safetensors``."""
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_NAME
    if not path.is_file():
        raise ValueError(f"read_peft: no LoRA weights at {path}")
    with safe_open(str(path), framework="pt", device="cpu") as f:
        sd = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        raw = (f.metadata() or {}).get(METADATA_KEY)
    pre = f"{prefix}." if prefix else ""
    meta = {k.removeprefix(pre): v for k, v in json.loads(raw).items() if k.startswith(pre)} if raw else None
    return sd, meta or None


def load_peft(model: nn.Module, path: str | Path, *, prefix: str = "transformer") -> list[str]:
    """Load a diffusers LoRA file (ours or diffusers' ``save_lora_weights``) into ``model``. Without LoRA
    layers yet, ``apply_lora`` them first: rank from the tensors, alpha from the metadata (else alpha = rank:
    diffusers' scale 1), targets = exactly the file's modules (of ``peft_root``: the backbone under
    FlashI2V). Returns the LoRA layer names."""
    model = peft_root(model)
    sd, meta = read_peft(path, prefix)
    pre = f"{prefix}." if prefix else ""
    names = sorted({k.removeprefix(pre).rsplit(".lora_", 1)[0] for k in sd if k.startswith(pre)})
    if not names:
        raise ValueError(f"load_peft: {path} holds no LoRA keys under the prefix {prefix!r}")
    if not lora_modules(model):
        rank = sd[f"{pre}{names[0]}.lora_A.weight"].shape[0]
        alpha = float((meta or {}).get("lora_alpha", rank))
        dropout = float((meta or {}).get("lora_dropout", 0.0))
        targets = "|".join(re.escape(n) for n in names)
        apply_lora(model, LoRAConfig(rank=rank, alpha=alpha, targets=targets, dropout=dropout))
    from_peft_state_dict(model, sd, prefix=prefix, metadata=meta)
    return list(lora_modules(model))


# --------------------------------------------------------------------------- merge
def _delta(A: Tensor, B: Tensor, scale: float, dtype: torch.dtype) -> Tensor:
    """(alpha / r) · B A [out, in] in fp32 (PEFT ``get_delta_weight``), cast to the base weight's dtype."""
    return ((B.float() @ A.float()) * scale).to(dtype)


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold W ← W + (alpha / r) · B A into each base Linear (in place) and put that Linear back where the
    LoRALinear was: the model has its original module tree and key names again. Freezing is left as is
    (every parameter frozen). Call on an unsharded model."""
    for name, m in lora_modules(model).items():
        m.base.weight.add_(_delta(m.lora_A.weight, m.lora_B.weight, m.scale, m.base.weight.dtype))
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, m.base)
    return model


@torch.no_grad()
def merged_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The state dict ``merge_lora`` would give, without changing the model: base key names (``X.weight``,
    ``X.bias``: diffusers' for CogVideoX), merged weights, no LoRA keys, key order kept. Full tensors
    (DTensors gathered: every rank must call)."""
    layers, state, out = lora_modules(model), model.state_dict(), {}
    for key, value in state.items():
        owner, _, leaf = key.rpartition(".")
        name, _, part = owner.rpartition(".")
        if name not in layers or part not in ("base", "lora_A", "lora_B"):
            out[key] = _full(value)
        elif part == "base" and leaf == "weight":
            A, B = (_full(state[f"{name}.lora_{ab}.weight"]) for ab in "AB")
            W = _full(value)
            out[f"{name}.weight"] = W + _delta(A, B, layers[name].scale, W.dtype)
        elif part == "base":
            out[f"{name}.{leaf}"] = _full(value)
    return out


__all__ = ["LoRAConfig", "LoRALinear", "WAN_TARGETS", "WAN_TARGETS_FFN", "peft_root"]
__all__ += ["apply_lora", "init_lora_weights", "lora_modules", "lora_parameters"]
__all__ += ["lora_state_dict", "load_lora_state_dict", "to_peft_state_dict", "peft_metadata", "save_peft"]
__all__ += ["from_peft_state_dict", "read_peft", "load_peft", "merge_lora", "merged_state_dict"]
