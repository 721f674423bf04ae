"""The training loop end to end on a tiny CPU model: run directory, exact resume, non-finite steps, atomic
checkpoints, EMA, bad input, the CLI.

Run: ``pytest -q tests/test_train.py`` (CPU, well under a minute).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from pathlib import Path

import pytest
import safetensors.torch
import torch

import minivdit.ckpt as ckpt_mod
import minivdit.train as train_mod
from minivdit import ckpt, dist
from minivdit.config import from_dict, to_dict
from minivdit.data import Batch, DataConfig, build_loader
from minivdit.models.dit import VDiT
from minivdit.objectives.ddpm import DDPMConfig
from minivdit.objectives.flow import FlowConfig
from minivdit.train import (
    OptimConfig,
    TrainConfig,
    build_models,
    build_objective,
    main,
    train,
    train_step,
    update_ema,
)

pytestmark = [
    pytest.mark.usefixtures("single_thread"),
    pytest.mark.filterwarnings("ignore:torch.distributed is disabled"),
]

CPU = torch.device("cpu")
SOLO = dist.DistContext(rank=0, world=1, local_rank=0, device=CPU)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(path))


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Bitwise: an exact resume replays the same kernels on the same shapes in one process."""
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ---------------------------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("objective", ["flow", "ddpm"])
def test_train_end_to_end_writes_run_dir(tiny_cfg, metrics, objective):
    cfg = tiny_cfg(objective, max_steps=4, ckpt={"every": 1, "keep": 2}, sample_every=2, log={"every": 2})
    run_dir = train(cfg)
    assert run_dir == cfg.run_dir

    # config.json: the resolved config, rebuilt into an equal TrainConfig (the objective keeps its class).
    saved = json.loads((run_dir / "config.json").read_text())
    assert from_dict(TrainConfig, saved) == cfg

    # metrics.jsonl: one object per logged step.
    rows = metrics(run_dir)
    assert [r["step"] for r in rows] == [2, 4]
    expected = {"step", "loss", "grad_norm", "it_s", "samples_s", "lr", "nonfinite_skipped"}
    if objective == "ddpm":  # two terms: each logged; flow's single term would only repeat ``loss``
        expected |= {"loss/mse", "loss/vb"}
    for r in rows:
        assert expected <= r.keys(), r.keys()
        assert all(math.isfinite(r[k]) for k in expected), r
        assert r["nonfinite_skipped"] == 0
        assert r["samples_s"] == pytest.approx(r["it_s"] * cfg.data.batch_size)
    if objective == "ddpm":
        assert rows[0]["loss"] == pytest.approx(rows[0]["loss/mse"] + rows[0]["loss/vb"], rel=1e-5)
    else:
        assert not any(k.startswith("loss/") for k in rows[0])
    for r in rows:  # no value logged twice under two names (issue 13)
        losses = [v for k, v in r.items() if k.startswith("loss")]
        assert len(set(losses)) == len(losses), r

    # checkpoints: keep=2 prunes steps 1 and 2.
    root = run_dir / "checkpoints"
    assert [p.name for p in ckpt.list_checkpoints(root)] == ["step_0000003", "step_0000004"]
    assert not list(root.glob(".tmp_*"))
    last = root / "step_0000004"
    for name in ("model.safetensors", "ema.safetensors", "meta.json", "rank0.pt"):
        assert (last / name).is_file(), name
    assert (last / "optim").is_dir() and any((last / "optim").iterdir())
    meta = json.loads((last / "meta.json").read_text())
    assert meta["step"] == 4 and meta["world"] == 1
    assert from_dict(TrainConfig, meta["config"]) == cfg
    model_sd = _weights(last / "model.safetensors")
    assert model_sd.keys() == VDiT(cfg.model).state_dict().keys()
    assert all(torch.isfinite(v).all() for v in model_sd.values())
    rank_state = torch.load(last / "rank0.pt", weights_only=True)
    assert rank_state["data"] == {"epoch": 0, "batch_in_epoch": 4}

    # samples at step 2 (sample_every) and at the end.
    for step in (2, 4):
        out = run_dir / "samples" / f"step_{step:07d}"
        for name in ("grid.mp4", "grid.gif", "contact.png", "0000.mp4", "0001.mp4"):
            assert (out / name).is_file() and (out / name).stat().st_size > 0, out / name


def test_tensorboard_events(tiny_cfg):
    pytest.importorskip("tensorboard")
    run_dir = train(tiny_cfg(max_steps=1, log={"tensorboard": True}))
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))


# ---------------------------------------------------------------------------------------------- exact resume


@pytest.mark.parametrize(("objective", "grad_accum"), [("flow", 1), ("ddpm", 1), ("flow", 2)])
def test_exact_resume(tiny_cfg, metrics, objective, grad_accum):
    n = 3
    full = train(tiny_cfg(objective, run_name="full", max_steps=2 * n, grad_accum=grad_accum))
    # resume="auto": the same run directory, interrupted after n steps.
    half = tiny_cfg(objective, run_name="auto", max_steps=n, grad_accum=grad_accum)
    train(half)
    train(replace(half, max_steps=2 * n, resume="auto"))
    # An explicit checkpoint path, resumed into another run directory.
    explicit = train(
        tiny_cfg(
            objective,
            run_name="explicit",
            max_steps=2 * n,
            grad_accum=grad_accum,
            resume=str(half.run_dir / "checkpoints" / f"step_{n:07d}"),
        )
    )

    ref = {r["step"]: r["loss"] for r in metrics(full)}
    assert sorted(ref) == list(range(1, 2 * n + 1))
    auto = {r["step"]: r["loss"] for r in metrics(half.run_dir)}
    assert auto == ref  # bitwise: every step's noise, t and label drop is reseeded from its global position
    assert {r["step"]: r["loss"] for r in metrics(explicit)} == {s: ref[s] for s in range(n + 1, 2 * n + 1)}
    last = f"checkpoints/step_{2 * n:07d}"
    for other in (half.run_dir, explicit):
        for name in ("model.safetensors", "ema.safetensors"):
            _assert_same_weights(_weights(full / last / name), _weights(other / last / name))


def test_resume_auto_without_checkpoint_starts_fresh(tiny_cfg, metrics):
    run_dir = train(tiny_cfg(max_steps=2, resume="auto"))
    assert [r["step"] for r in metrics(run_dir)] == [1, 2]


# ---------------------------------------------------------------------------------------------- learning


def test_loss_decreases_on_a_repeated_batch(tiny_cfg):
    """Fixed batch, fixed noise and times: a deterministic regression the model must fit."""
    cfg = tiny_cfg(model={"class_dropout_prob": 0.0})
    model, _ = build_models(cfg, SOLO)
    objective = build_objective(cfg.objective)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = next(build_loader(replace(cfg.data, batch_size=4)))
    losses = []
    for _ in range(30):
        torch.manual_seed(0)
        loss, _ = train_step(
            batch, model=model, objective=objective, num_classes=4, precision="fp32", device=CPU
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_loss_decreases_over_training(tiny_cfg, metrics):
    run_dir = train(tiny_cfg(max_steps=30, data={"batch_size": 4}, optim={"lr": 3e-3}))
    losses = [r["loss"] for r in metrics(run_dir)]
    assert len(losses) == 30
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.9 * first, losses


# ---------------------------------------------------------------------------------------------- non-finite


def _nan_on(monkeypatch, bad_calls: set[int] | None) -> list[int]:
    """Make ``train_step`` return a NaN loss on the given micro-batches, counted in the order the loader gave
    them (all if None). Returns the index of each call's micro-batch: the non-finite report replays a
    skipped step's batch, so its calls repeat an index."""
    real, batches, calls = train_mod.train_step, [], []

    def fake(batch, **kwargs):
        loss, metrics = real(batch, **kwargs)
        if not any(b is batch for b in batches):
            batches.append(batch)
        i = next(k for k, b in enumerate(batches) if b is batch)
        calls.append(i)
        if bad_calls is None or i in bad_calls:
            loss = loss * float("nan")
            metrics = {k: v * float("nan") for k, v in metrics.items()}
        return loss, metrics

    monkeypatch.setattr(train_mod, "train_step", fake)
    return calls


def test_nonfinite_steps_are_skipped_and_counted(tiny_cfg, metrics, monkeypatch):
    calls = _nan_on(monkeypatch, {1, 2})
    run_dir = train(tiny_cfg(max_steps=4))
    assert calls == [0, 1, 1, 2, 2, 3, 4, 5]  # 4 optimizer steps + 2 skipped attempts, each replayed once
    rows = metrics(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [r["nonfinite_skipped"] for r in rows] == [0, 2, 2, 2]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in rows)
    for name in ("model.safetensors", "ema.safetensors"):
        weights = _weights(run_dir / "checkpoints" / "step_0000004" / name)
        assert all(torch.isfinite(v).all() for v in weights.values())
    # step 1 was skipped twice: two reports, the second beside the first
    reports = sorted(p.name for p in (run_dir / "nonfinite").iterdir())
    assert reports == ["step_1.json", "step_1.try2.json"]
    report = json.loads((run_dir / "nonfinite" / "step_1.json").read_text())
    assert report["in_a_row"] == 1 and report["micro_batches"][0]["first_nonfinite"] == {
        "loss": "every module's output is finite; the objective's loss is not"
    }


def test_ten_nonfinite_in_a_row_raise(tiny_cfg, monkeypatch):
    calls = _nan_on(monkeypatch, None)
    with pytest.raises(RuntimeError, match=r"10 non-finite losses in a row"):
        train(tiny_cfg(max_steps=20))
    assert sorted(set(calls)) == list(range(10))


def _inf_from(monkeypatch, where: str, calls: set[int], *, backward: bool = False) -> None:
    """Make the submodule ``where`` of the trained backbone emit inf in the forwards numbered ``calls`` (with
    ``backward``: a finite forward whose gradient there is inf)."""
    real = train_mod.build_models
    count = [-1]

    def poison(module, args, output):
        count[0] += 1
        if count[0] not in calls:
            return None
        if backward:
            return _InfGrad.apply(output)
        return output * float("inf")

    def build(cfg, ctx, model_cls):
        model, ema = real(cfg, ctx, model_cls)
        dist.unwrap(model).get_submodule(where).register_forward_hook(poison)
        return model, ema

    monkeypatch.setattr(train_mod, "build_models", build)


class _InfGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("inf")


def test_nonfinite_report_names_the_block_that_emitted_inf(tiny_cfg, metrics, monkeypatch):
    _inf_from(monkeypatch, "blocks.1.mlp", calls={0, 2})  # micro-batch 0 (of 2) and its replay
    cfg = tiny_cfg(max_steps=2, data={"batch_size": 2}, grad_accum=2)
    run_dir = train(cfg)
    assert [r["nonfinite_skipped"] for r in metrics(run_dir)] == [1, 1]
    report = json.loads((run_dir / "nonfinite" / "step_0.json").read_text())
    assert report["step"] == 0 and report["in_a_row"] == 1 and isinstance(report["lr"], float)
    first, second = report["micro_batches"]  # the hook fired in the first micro-batch and its replay only
    assert first["first_nonfinite"] == {"module": "blocks.1.mlp"}
    assert report["summary"] == "micro-batch 0: first non-finite value from module blocks.1.mlp"
    assert first["first_nonfinite_grad"] is None  # the forward already was: every gradient inherits it
    assert first["loss"] == "nan" and first["inputs_finite"] == {"x_t": True, "t": True, "cond": True}
    assert first["activations"]["blocks.0"] > 0 and first["activations"]["blocks.1"] in ("inf", "nan")
    assert len(first["t"]) == 2 and len(first["ids"]) == 2 and len(first["labels"]) == 2
    assert all(i.startswith("synthetic/") for i in first["ids"])
    assert set(first["gradients"]) >= {"blocks.0", "blocks.1", "final_layer"}
    # the second micro-batch was finite: nothing to name, every norm a number
    assert second["first_nonfinite"] is None and second["first_nonfinite_grad"] is None
    assert all(isinstance(v, float) for v in second["gradients"].values())
    assert first["seed"] != second["seed"]


def test_nonfinite_report_names_where_a_finite_forward_blew_up_in_backward(tiny_cfg, monkeypatch):
    _inf_from(monkeypatch, "blocks.1", calls={0, 1}, backward=True)  # the step and its replay
    run_dir = train(tiny_cfg(max_steps=1))
    report = json.loads((run_dir / "nonfinite" / "step_0.json").read_text())
    (micro,) = report["micro_batches"]
    assert micro["first_nonfinite"] is None and isinstance(micro["loss"], float)
    # blocks.1's output gradient is inf: its own parameters and every block before it get non-finite grads
    assert micro["first_nonfinite_grad"] == "blocks.1"
    assert micro["gradients"]["blocks.0"] in ("inf", "nan")
    assert isinstance(micro["gradients"]["final_layer"], float)  # after the block: its gradient is finite
    assert "finite forward; non-finite gradients from blocks.1 back" in report["summary"]


# ---------------------------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("writer", ["safetensors", "dcp"])
def test_crash_mid_checkpoint_keeps_previous(tiny_cfg, metrics, monkeypatch, writer):
    cfg = tiny_cfg(max_steps=4, ckpt={"every": 2, "keep": 0})
    root = cfg.run_dir / "checkpoints"
    name, real = ("save_file", ckpt_mod.save_file) if writer == "safetensors" else ("save", ckpt_mod.dcp.save)

    def crashing(*args, **kwargs):
        target = str(kwargs.get("checkpoint_id", args[1] if len(args) > 1 else ""))
        if "step_0000004" in target:
            raise OSError("disk full (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(ckpt_mod if writer == "safetensors" else ckpt_mod.dcp, name, crashing)
    with pytest.raises(ckpt.CheckpointWriteError, match=r"checkpoint step_0000004 .*simulated.*GiB free"):
        train(cfg)
    monkeypatch.undo()

    # The half-written checkpoint was removed; the previous one is complete and is the latest.
    assert not (root / ".tmp_step_0000004").exists()
    assert not (root / "step_0000004").exists()
    prev = root / "step_0000002"
    assert ckpt.latest(root) == prev
    assert json.loads((prev / "meta.json").read_text())["step"] == 2
    assert _weights(prev / "model.safetensors").keys() == VDiT(cfg.model).state_dict().keys()
    # A stale folder that even carries meta.json, and a step folder without one, are ignored too.
    (root / ".tmp_step_0000009").mkdir()
    (root / ".tmp_step_0000009" / "meta.json").write_text("{}")
    (root / "step_0000008").mkdir()
    assert ckpt.latest(root) == prev

    # Resuming continues from step 2 and cleans the stale folders up on the next save.
    train(replace(cfg, resume="auto"))
    assert [r["step"] for r in metrics(cfg.run_dir)] == [1, 2, 3, 4, 3, 4]
    assert ckpt.latest(root) == root / "step_0000004"
    assert not list(root.glob(".tmp_*"))


def test_load_rejects_non_checkpoint(tmp_path, tiny_cfg):
    cfg = tiny_cfg()
    model, ema = build_models(cfg, SOLO)
    opt = torch.optim.AdamW(model.parameters())
    with pytest.raises(ValueError, match="no meta.json"):
        ckpt.load(tmp_path, model=model, ema=ema, optimizer=opt, ctx=SOLO)


# ---------------------------------------------------------------------------------------------- EMA


def test_update_ema_formula():
    torch.manual_seed(0)
    ema, model = torch.nn.Linear(3, 4), torch.nn.Linear(3, 4)
    old = [p.detach().clone() for p in ema.parameters()]
    update_ema(ema, model, 0.75)
    for e, o, m in zip(ema.parameters(), old, model.parameters(), strict=True):
        torch.testing.assert_close(e, 0.75 * o + 0.25 * m.detach(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(("start_step", "expected_decay"), [(0, 0.75), (5, 0.0)])
def test_ema_after_one_training_step(tiny_cfg, start_step, expected_decay):
    cfg = tiny_cfg(max_steps=1, ema={"decay": 0.75, "start_step": start_step})
    init, _ = build_models(cfg, SOLO)  # the seeded init the run starts from (EMA starts equal to it)
    old = {k: v.detach().clone() for k, v in init.state_dict().items()}
    run_dir = train(cfg)
    new = _weights(run_dir / "checkpoints" / "step_0000001" / "model.safetensors")
    ema = _weights(run_dir / "checkpoints" / "step_0000001" / "ema.safetensors")
    moved = [k for k in new if not torch.equal(new[k], old[k])]
    assert moved  # the step changed the weights
    d = expected_decay
    for k in new:
        torch.testing.assert_close(ema[k], d * old[k] + (1 - d) * new[k], rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------------- bad input


def test_train_step_rejects_out_of_range_labels(tiny_cfg):
    cfg = tiny_cfg()
    model, _ = build_models(cfg, SOLO)
    video = torch.zeros(2, 2, 3, 8, 8)
    for bad in ([0, 4], [-1, 0]):
        with pytest.raises(ValueError, match=r"labels must be in \[0, 4\).*got " + re.escape(str(bad))):
            train_step(
                Batch(video=video, label=torch.tensor(bad)),
                model=model,
                objective=build_objective(cfg.objective),
                num_classes=4,
                precision="fp32",
                device=CPU,
            )


def test_missing_resume_path(tiny_cfg, tmp_path):
    missing = tmp_path / "nope" / "step_0000001"
    with pytest.raises(ValueError, match=r"resume=.*nope"):
        train(tiny_cfg(resume=str(missing)))


def test_config_validation(tiny_cfg):
    with pytest.raises(ValueError, match=r"model.num_frames=2 must equal data.num_frames=3"):
        tiny_cfg(data={"num_frames": 3})
    with pytest.raises(ValueError, match=r"6 output channels but model.learn_sigma=False"):
        tiny_cfg(objective=DDPMConfig(learn_sigma=True))
    with pytest.raises(ValueError, match=r"3 output channels but model.learn_sigma=True"):
        tiny_cfg(model={"learn_sigma": True})
    with pytest.raises(ValueError, match=r"in_channels=3, got 4"):
        tiny_cfg(model={"in_channels": 4})
    with pytest.raises(ValueError, match=r"input_size \(16, 16\)"):
        tiny_cfg(model={"input_size": (16, 16)})
    with pytest.raises(ValueError, match=r"num_classes=3 must be 0 .* data.num_classes=4"):
        tiny_cfg(model={"num_classes": 3})
    with pytest.raises(ValueError, match="max_steps"):
        tiny_cfg(max_steps=0)
    with pytest.raises(ValueError, match=r"invalid OptimConfig"):
        OptimConfig(lr=-1.0)


def test_data_config_rejects_unknown_values():
    with pytest.raises(ValueError, match=r"DataConfig.dataset='ucf': expected one of .*'ucf101'"):
        DataConfig(dataset="ucf")
    with pytest.raises(ValueError, match=r"batch_size must be >= 1, got 0"):
        DataConfig(batch_size=0)
    with pytest.raises(ValueError, match=r"num_classes must be <= 10 .* got 11"):
        DataConfig(num_classes=11)
    with pytest.raises(ValueError, match=r"unknown DataConfig fields in config: \['frames'\]"):
        from_dict(DataConfig, {"frames": 8})


def test_config_json_roundtrip_keeps_objective_class(tiny_cfg):
    for cfg in (tiny_cfg(), tiny_cfg("ddpm")):
        d = json.loads(json.dumps(to_dict(cfg)))
        assert from_dict(TrainConfig, d) == cfg
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        from_dict(TrainConfig, {**to_dict(tiny_cfg()), "lr": 1.0})


# ---------------------------------------------------------------------------------------------- CLI


def _parse(monkeypatch, default: TrainConfig, args: list[str]) -> TrainConfig:
    got = []
    monkeypatch.setattr(train_mod, "train", lambda cfg, **kw: got.append(cfg))
    main(default, args=args)
    assert len(got) == 1
    return got[0]


def test_main_parses_cli_overrides(tiny_cfg, monkeypatch):
    default = tiny_cfg()
    cfg = _parse(
        monkeypatch,
        default,
        [
            "--objective.shift",
            "3",
            "--optim.lr",
            "2e-4",
            "--max-steps",
            "7",
            "--model.depth",
            "4",
            "--log.every",
            "5",
        ],
    )
    assert isinstance(cfg.objective, FlowConfig) and cfg.objective.shift == 3.0
    assert cfg.optim.lr == 2e-4 and cfg.max_steps == 7 and cfg.model.depth == 4 and cfg.log.every == 5
    assert cfg.model.hidden_size == default.model.hidden_size and cfg.data == default.data  # the rest kept
    assert _parse(monkeypatch, default, []) == default

    ddpm = _parse(monkeypatch, tiny_cfg("ddpm"), ["--objective.num-timesteps", "500", "--resume", "auto"])
    assert isinstance(ddpm.objective, DDPMConfig) and ddpm.objective.num_timesteps == 500
    assert ddpm.resume == "auto"


def test_main_rejects_bad_cli(tiny_cfg, monkeypatch, capsys):
    with pytest.raises(SystemExit):
        _parse(monkeypatch, tiny_cfg(), ["--optim.lr", "fast"])
    assert "fast" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # tyro reports the config's validation (__post_init__) as a usage error
        _parse(monkeypatch, tiny_cfg(), ["--data.num-frames", "3"])
    assert "must equal data.num_frames=3" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a DDPM field on a flow recipe
        _parse(monkeypatch, tiny_cfg(), ["--objective.num-timesteps", "10"])


def test_lr_schedule_warmup_constant_decay():
    from minivdit.train import OptimConfig, lr_at

    cfg = OptimConfig(lr=1.0, warmup_steps=4, decay_steps=10)
    lrs = [lr_at(s, cfg, 20) for s in range(20)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0] and lrs[4:10] == [1.0] * 6
    assert lrs[10:] == pytest.approx([1.0 - k / 10 for k in range(10)])  # reaches 0.1 at the last step
    assert lr_at(15, OptimConfig(lr=1.0), 20) == 1.0  # no decay_steps: constant
    with pytest.raises(ValueError, match="decay_steps"):
        OptimConfig(decay_steps=-1)


def oracle_sat_annealing_lr(start_lr: float, warmup_iter: float, end_iter: int, n: int) -> float:
    """ORACLE: SwissArmyTransformer ``sat/training/learning_rates.py: AnnealingLR.get_lr`` (commit 63dc23a,
    l.46-58) with ``decay_style="linear"`` and no auto warm-up (``--mode pretrain`` from iteration 0), at its
    iteration counter ``n`` (1 for the first update: ``__init__`` calls ``step(last_iter + 1)``)."""
    if warmup_iter > 0 and n <= warmup_iter:
        return float(start_lr) * n / warmup_iter
    return start_lr * ((end_iter - (n - warmup_iter)) / end_iter)


def test_lr_schedule_is_sats_warmup_and_linear_decay():
    """``warmup_fraction`` 0.01 + ``schedule="linear"``: SAT's curve at every step (the same float operations
    in the same order: equal), from lr·1/W up to lr at W, then down to lr·W/max_steps at the last step."""
    from minivdit.train import OptimConfig, lr_at

    for max_steps, lr in ((1000, 1e-5), (10_000, 2e-4), (150, 1.0)):
        cfg = OptimConfig(lr=lr, warmup_fraction=0.01, schedule="linear")
        W = 0.01 * max_steps  # SAT: args.warmup * num_iters, a float (1.5 for 150 steps)
        got = [lr_at(s, cfg, max_steps) for s in range(max_steps)]
        assert got == [oracle_sat_annealing_lr(lr, W, max_steps, s + 1) for s in range(max_steps)]
        assert got[-1] == pytest.approx(lr * W / max_steps)  # 0.01·lr at the last step
        assert max(got) == pytest.approx(lr, rel=1 / W)  # lr at n = W, or within one step of it
    # CogVideo finetune/ and VideoREPA: 100 warm-up steps, then constant
    cfg = OptimConfig(lr=1.0, warmup_steps=100)
    assert [lr_at(s, cfg, 1000) for s in (0, 49, 99, 100, 999)] == [0.01, 0.5, 1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="not both"):
        OptimConfig(warmup_steps=100, warmup_fraction=0.01)
    with pytest.raises(ValueError, match="schedule"):
        OptimConfig(schedule="cosine")
    with pytest.raises(ValueError, match="need max_steps"):
        lr_at(0, OptimConfig(schedule="linear"))


def test_exact_resume_with_lr_schedule(tiny_cfg, metrics):
    """The lr is a function of the checkpointed step: resumed from its step-2 checkpoint, a 4-step run logs
    the straight run's lr and loss and ends on the same weights, bitwise (the same kernels on the same shapes
    in one process)."""
    optim = OptimConfig(lr=1e-3, warmup_fraction=0.5, schedule="linear")
    full = train(tiny_cfg(run_name="full", max_steps=4, optim=optim, ckpt={"every": 2, "keep": 0}))
    resumed = train(
        tiny_cfg(
            run_name="resumed", max_steps=4, optim=optim, resume=str(full / "checkpoints" / "step_0000002")
        )
    )
    ref = [(r["step"], r["lr"], r["loss"]) for r in metrics(full)]
    # W = 2: warm-up 1/2, 2/2, then SAT's decay (4 − (n − 2))/4 for n = 3, 4
    assert [r[1] for r in ref] == pytest.approx([5e-4, 1e-3, 7.5e-4, 5e-4], rel=1e-12)
    assert [(r["step"], r["lr"], r["loss"]) for r in metrics(resumed)] == ref[2:]
    last = "checkpoints/step_0000004/model.safetensors"
    _assert_same_weights(_weights(full / last), _weights(resumed / last))


def test_global_batch_sets_grad_accum(tiny_cfg):
    from minivdit.train import with_global_batch

    cfg = tiny_cfg(global_batch=16, data={"batch_size": 2})
    assert with_global_batch(cfg, 8).grad_accum == 1 and with_global_batch(cfg, 2).grad_accum == 4
    assert with_global_batch(tiny_cfg(grad_accum=3), 4).grad_accum == 3  # no global_batch: as given
    with pytest.raises(ValueError, match="not a multiple of data.batch_size 2 × 3 ranks"):
        with_global_batch(cfg, 3)
    with pytest.raises(ValueError, match="global_batch=5"):
        tiny_cfg(global_batch=5, data={"batch_size": 2})


def test_grad_accum_2_of_batch_2_is_batch_4(tiny_cfg):
    """Two accumulated micro-batches of 2 give the gradient of one batch of 4 (the loop's
    ``(loss / grad_accum).backward()``; the loader hands the same 4 clips either way). The objective's noise
    and t are made functions of each sample, so both runs see the same per-sample terms; what remains is the
    float32 summation order of the per-sample terms (batch means taken as one sum of 4 or two sums of 2): a
    few ulp (1.2e-7) of the summed magnitudes, so rtol 1e-5 with atol 1e-6·max|g| (~8 ulp of the largest
    entry) for entries that cancel."""
    cfg = tiny_cfg(model={"class_dropout_prob": 0.0})
    objective = build_objective(cfg.objective)
    real_corrupt = objective.corrupt

    def per_sample_corrupt(x, generator=None, t=None):  # noise and t from each sample alone
        noised = real_corrupt(x, t=torch.sigmoid(x.flatten(1).mean(1) * 7.0))
        noise = torch.sin(13.0 * x + 1.0)
        return replace(noised, noise=noise, x_t=objective.path(x, noise, noised.t), target=noise - x)

    objective.corrupt = per_sample_corrupt
    grads = []
    for batch_size, accum in ((4, 1), (2, 2)):
        model, _ = build_models(cfg, SOLO)
        with torch.no_grad():  # off the zero init (adaLN, final layer), so every weight gets a gradient
            torch.manual_seed(1)
            for param in model.parameters():
                param.add_(0.05 * torch.randn_like(param))
        loader = build_loader(replace(cfg.data, batch_size=batch_size))
        for _ in range(accum):
            loss, _ = train_step(
                next(loader), model=model, objective=objective, num_classes=4, precision="fp32", device=CPU
            )
            (loss / accum).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    big, accumulated = grads
    assert all(g.abs().max() > 0 for g in big.values())
    for n, g in big.items():
        torch.testing.assert_close(accumulated[n], g, rtol=1e-5, atol=1e-6 * g.abs().max().item(), msg=n)


def test_parallel_compile_is_announced_before_the_silent_first_step(tiny_cfg, monkeypatch, caplog):
    """``--parallel.compile``: one log line before the first step, which compiles every block in silence
    (~30 s on a CPU). ``nn.Module.compile`` is stubbed: the line is what is tested, not the compile."""
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **kw: compiled.append(self))
    cfg = tiny_cfg(parallel=dist.ParallelConfig(compile=True))
    with caplog.at_level("INFO", logger="minivdit"):
        model, ema = build_models(cfg, SOLO)
    assert compiled == list(model.blocks)  # the trained model's blocks, not the EMA copy's
    (line,) = [r.getMessage() for r in caplog.records if "torch.compile" in r.getMessage()]
    assert f"{cfg.model.depth} blocks" in line and "first step takes ~30 s longer" in line
