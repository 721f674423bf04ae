"""Shared fixtures: a tiny ``TrainConfig`` (2 blocks × 32, 2 frames of 8×8 pixels, 4 classes, fp32, CPU) whose
outputs all land under the test's ``tmp_path``."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from minivdit.data import DataConfig
from minivdit.models.dit import DiTConfig
from minivdit.objectives.ddpm import DDPMConfig
from minivdit.objectives.flow import FlowConfig
from minivdit.train import CkptConfig, EMAConfig, LogConfig, OptimConfig, SampleEvalConfig, TrainConfig


def tiny_config(
    out_dir: Path | str, *, objective: str | DDPMConfig | FlowConfig = "flow", **overrides
) -> TrainConfig:
    """A TrainConfig small enough for a CPU step in milliseconds.

    ``objective``: ``"flow"`` (model without learned σ), ``"ddpm"`` (learned σ, MSE + VB), or an objective
    config applied on top of the flow default (the model's ``learn_sigma`` is not adapted). ``overrides`` are
    ``TrainConfig`` fields; a dict value updates the fields of that sub-config (``model={"num_classes": 0}``).
    """
    if not isinstance(objective, str):
        overrides["objective"] = objective
    ddpm = objective == "ddpm"
    cfg = TrainConfig(
        model=DiTConfig(
            depth=2,
            hidden_size=32,
            num_heads=2,
            patch_size=4,
            in_channels=3,
            input_size=(8, 8),
            num_frames=2,
            num_classes=4,
            learn_sigma=ddpm,
        ),
        objective=DDPMConfig(learn_sigma=True) if ddpm else FlowConfig(),
        data=DataConfig(num_frames=2, image_size=8, num_classes=4, batch_size=2, synthetic_size=64),
        optim=OptimConfig(lr=1e-3),
        ema=EMAConfig(decay=0.9),
        log=LogConfig(every=1, tensorboard=False),
        ckpt=CkptConfig(every=0, keep=0),
        sample=SampleEvalConfig(num=2, steps=2),
        out_dir=str(out_dir),
        run_name="run",
        max_steps=4,
        sample_every=-1,
        precision="fp32",
    )
    updates = {}
    for name, value in overrides.items():
        if isinstance(value, dict):
            value = dataclasses.replace(getattr(cfg, name), **value)
        updates[name] = value
    return dataclasses.replace(cfg, **updates)


@pytest.fixture(scope="session")
def make_tiny_cfg() -> Callable[..., TrainConfig]:
    """``tiny_config`` itself, for module-scoped fixtures that pick their own output folder."""
    return tiny_config


@pytest.fixture
def single_thread():
    """One intra-op thread for the test: the tiny tensors gain nothing from more, and on a busy 2-core machine
    OpenMP oversubscription makes them several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_cfg(tmp_path) -> Callable[..., TrainConfig]:
    """Factory ``tiny_cfg(objective="flow", **overrides) -> TrainConfig`` writing under ``tmp_path/runs``."""

    def make(objective="flow", **overrides) -> TrainConfig:
        return tiny_config(tmp_path / "runs", objective=objective, **overrides)

    return make


def read_metrics(run_dir: Path) -> list[dict]:
    """The rows of ``<run_dir>/metrics.jsonl``."""
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


@pytest.fixture
def metrics() -> Callable[[Path], list[dict]]:
    return read_metrics
