"""NaN forensics: what made a training step non-finite (issue 21 §6).

When a step's loss or gradient is not finite, the trainer skips it (``train.optimizer_step``) and calls
``report``, which replays each micro-batch of the step — the same batch, the same seeds, so the same noise and
timesteps (``train`` reseeds every micro-batch from its global position) — with forward hooks on every module
of the model, then backpropagates it, and writes ``<run>/nonfinite/step_<N>.json`` (rank r > 0:
``step_<N>.rank<r>.json``):

- ``lr``, the skip counters, and per micro-batch: its ``seed``, the sample ``ids`` and ``labels``, the
  backbone's time input ``t`` (``t_model``, the model's convention), the ``loss`` and its terms;
- ``first_nonfinite``: the first place a non-finite value appeared in the forward, in execution order:
  ``{"input": "x_t" | "t" | "cond"}`` (the data or the conditioning was already bad), ``{"module": name}``
  (the innermost, earliest module whose output is not finite: hooks fire when a module *finishes*, so a
  child reports before its parent), or ``{"loss": ...}`` when every module was finite but the objective was
  not; ``null`` when the forward is finite (the gradient is the culprit);
- ``first_nonfinite_grad``: when the forward was finite, the last part (below), in the order the parts ran,
  whose parameter gradients are not finite (the gradient flows backward, so the parts before it inherit
  it): where a finite forward blew up in backward; ``null`` otherwise;
- ``activations`` and ``gradients``: the output norm and the parameter-gradient norm of each of the
  backbone's top-level parts — its repeated blocks (``blocks.3``; ``dist.block_list``) and the layers around
  them (``patch_embed``, ``final_layer``…). A block that suddenly grows by orders of magnitude is the
  suspect even when the first non-finite value appears later.

The replay runs eagerly (``torch.compiler.set_stance("force_eager")``: compiled blocks would not fire their
inner hooks) and records the forward only once under activation checkpointing (the recomputation in backward
is ignored). Every rank replays (FSDP needs all of them in each forward and backward); gradients are zeroed
afterwards, so training goes on exactly as without forensics: the step stays skipped.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import fields, is_dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from minivdit import dist, durable

log = logging.getLogger("minivdit")

Replay = Callable[[], tuple[Tensor, dict[str, Tensor]]]
"""Re-runs one micro-batch's ``train_step`` (same batch, same seeds) and returns ``(loss, metrics)``."""


def _tensors(x) -> Iterator[Tensor]:
    """The floating-point tensors inside a module's output (a tensor, a tuple, a dict or a dataclass)."""
    if isinstance(x, Tensor):
        if x.is_floating_point() or x.is_complex():
            yield x
    elif isinstance(x, (tuple, list)):
        for y in x:
            yield from _tensors(y)
    elif isinstance(x, dict):
        for y in x.values():
            yield from _tensors(y)
    elif is_dataclass(x) and not isinstance(x, type):
        for f in fields(x):
            yield from _tensors(getattr(x, f.name))


def _finite(x) -> bool:
    return all(bool(torch.isfinite(dist.local(t)).all()) for t in _tensors(x))


def _number(x: float) -> float | str:
    """A JSON-safe float: non-finite values as the strings "nan", "inf", "-inf"."""
    x = float(x)
    return x if math.isfinite(x) else str(x)


def parts(backbone: nn.Module) -> dict[str, nn.Module]:
    """The backbone's top-level parts, in definition order: each repeated block (``blocks.3``) and each other
    direct child with parameters (``patch_embed``, ``final_layer``, ``time_embed``…)."""
    out: dict[str, nn.Module] = {}
    blocks = dist.block_list(backbone)
    for name, child in backbone.named_children():
        if child is blocks:
            out |= {f"{name}.{i}": b for i, b in enumerate(blocks)}
        elif any(True for _ in child.parameters()):
            out[name] = child
    return out


def _grad_norm(module: nn.Module) -> Tensor:
    """The global 2-norm of the module's parameter gradients (sharded ones reduced over ranks)."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
    return norm.full_tensor() if dist.is_sharded(norm) else norm


class _Recorder:
    """Forward hooks on every module of ``model``: output norms of the backbone's parts, the model's inputs,
    and the first module whose output is not finite."""

    def __init__(self, model: nn.Module, backbone: nn.Module):
        self.parts = parts(backbone)
        self.names = {m: n for n, m in model.named_modules()}
        self.part_of = {m: n for n, m in self.parts.items()}
        self.recording = True
        self.inputs: dict[str, bool] = {}
        self.t: Tensor | None = None
        self.first: dict | None = None
        self.activations: dict[str, float | str] = {}
        self.handles = [backbone.register_forward_pre_hook(self._inputs)]
        self.handles += [m.register_forward_hook(self._output) for m in self.names]

    def _inputs(self, module: nn.Module, args: tuple) -> None:
        if not self.recording or self.inputs:
            return  # the outermost call only (a wrapper may call its base again: FlashI2V's sampling)
        x_t, t, cond = (list(args) + [None] * 3)[:3]
        self.t = t.detach().float().cpu() if isinstance(t, Tensor) else None
        self.inputs = {"x_t": _finite(x_t), "t": _finite(t), "cond": _finite(cond)}
        if self.first is None:
            bad = [k for k, ok in self.inputs.items() if not ok]
            if bad:
                self.first = {"input": bad[0]}

    def _output(self, module: nn.Module, args: tuple, output) -> None:
        if not self.recording:
            return  # activation checkpointing recomputes the forward during backward
        if self.first is None and not _finite(output):
            self.first = {"module": self.names[module] or type(module).__name__}
        part = self.part_of.get(module)
        if part is not None:
            ts = list(_tensors(output))
            if ts:
                norms = [dist.local(t).detach().float().norm() for t in ts]
                norm = torch.linalg.vector_norm(torch.stack(norms))
                self.activations[part] = _number(norm)

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def diagnose(model: nn.Module, backbone: nn.Module, replay: Replay) -> dict:
    """Replay one micro-batch with hooks (forward and backward); returns its findings (module docstring).
    Leaves the model's gradients zeroed."""
    recorder = _Recorder(dist.unwrap(model), backbone)
    try:
        with torch.compiler.set_stance("force_eager"):
            loss, metrics = replay()
            recorder.recording = False
            loss.backward()
    finally:
        recorder.close()
    loss_finite = bool(torch.isfinite(loss))
    first = recorder.first
    if first is None and not loss_finite:
        first = {"loss": "every module's output is finite; the objective's loss is not"}
    gradients = {name: _number(_grad_norm(m)) for name, m in recorder.parts.items()}
    ran = list(recorder.activations)  # the parts in the order they ran (hooks fire as each one finishes)
    bad_grads = [name for name in ran if isinstance(gradients[name], str)] if first is None else []
    for p in dist.unwrap(model).parameters():
        p.grad = None
    return {
        "loss": _number(loss.detach()),
        "loss_terms": {k: _number(v) for k, v in metrics.items() if k != "loss"},
        "t": recorder.t.tolist() if recorder.t is not None else None,
        "inputs_finite": recorder.inputs,
        "first_nonfinite": first,
        "first_nonfinite_grad": bad_grads[-1] if bad_grads else None,
        "activations": recorder.activations,
        "gradients": gradients,
    }


def report(
    run_dir: Path,
    step: int,
    *,
    model: nn.Module,
    backbone: nn.Module,
    micro_batches: list[tuple[dict, Replay]],
    lr: float,
    counters: dict[str, int],
    rank: int = 0,
) -> Path:
    """Diagnose each micro-batch of a skipped step and write the report; returns its path. ``micro_batches``:
    ``(about, replay)`` per micro-batch, ``about`` holding what the batch is (``seed``, ``ids``,
    ``labels``)."""
    findings = []
    for micro, (about, replay) in enumerate(micro_batches):
        findings.append({"micro": micro, **about, **diagnose(model, backbone, replay)})
    first = next((f for f in findings if f["first_nonfinite"] or f["first_nonfinite_grad"]), None)
    summary = (
        "no non-finite value on replay (a non-deterministic kernel, or another rank's micro-batch)"
        if first is None
        else f"micro-batch {first['micro']}: "
        + (
            "first non-finite value from {} {}".format(*next(iter(first["first_nonfinite"].items())))
            if first["first_nonfinite"]
            else f"finite forward; non-finite gradients from {first['first_nonfinite_grad']} back"
        )
    )
    out = {"step": step, "rank": rank, "lr": lr, **counters, "summary": summary, "micro_batches": findings}
    stem = f"step_{step}" + (f".rank{rank}" if rank else "")
    folder = Path(run_dir) / "nonfinite"
    folder.mkdir(parents=True, exist_ok=True)
    path, k = folder / f"{stem}.json", 2
    while path.exists():  # the same step skipped again (the next batch was bad too), or an earlier run's
        path, k = folder / f"{stem}.try{k}.json", k + 1
    durable.write_text(path, json.dumps(out, indent=1) + "\n")
    log.warning(f"step {step}: non-finite report {path}: {summary}")
    return path
