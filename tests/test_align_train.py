"""Alignment inside the training loop: ``train_step`` with a teacher and a head, where gradients go, exact
resume of the head and its optimizer, the quickstart_align recipe's tiny teachers, bad configs.

Run: ``pytest -q tests/test_align_train.py`` (CPU, tiny random DINOv2 + SAM2 teachers, well under a minute).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import safetensors.torch
import torch
import tyro

from minivdit import dist
from minivdit.align.heads import AlignConfig
from minivdit.align.teachers import TeacherConfig, make_tiny_teacher
from minivdit.data import build_loader
from minivdit.train import TrainConfig, build_alignment, build_models, build_objective, train, train_step

pytestmark = [
    pytest.mark.usefixtures("single_thread"),
    pytest.mark.filterwarnings("ignore:torch.distributed is disabled"),
]

CPU = torch.device("cpu")
SOLO = dist.DistContext(rank=0, world=1, local_rank=0, device=CPU)


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> TeacherConfig:
    root = tmp_path_factory.mktemp("teachers")
    return TeacherConfig(
        dinov2=str(make_tiny_teacher("dinov2", root / "dinov2")),
        sam2=str(make_tiny_teacher("sam2", root / "sam2", seed=1)),
    )


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def aligned_cfg(tiny_cfg, teachers, **align):
    """Tiny pixel-space DiT (4 blocks, 2×2 token grid, 2 frames) aligned at block 2 to DINOv2 + SAM2."""
    return tiny_cfg(
        model={"depth": 4},
        align=AlignConfig(
            **({"loss": "align4gen", "weight": 0.5, "block_index": 2, "projector_dim": 64} | align)
        ),
        teacher=teachers,
    )


def build(cfg):
    model, ema = build_models(cfg, SOLO)
    teacher, head = build_alignment(cfg, SOLO, vae=None)
    return model, ema, teacher, head


def test_train_step_adds_weighted_alignment_loss(tiny_cfg, teachers):
    cfg = aligned_cfg(tiny_cfg, teachers)
    model, _, teacher, head = build(cfg)
    assert teacher.names == ("dinov2", "sam2") and teacher.grid == cfg.model.grid == (2, 2)
    batch = next(build_loader(cfg.data))
    torch.manual_seed(0)
    loss, m = train_step(
        batch,
        model=model,
        objective=build_objective(cfg.objective),
        num_classes=4,
        precision="fp32",
        device=CPU,
        align=cfg.align,
        teacher=teacher,
        head=head,
    )
    assert set(m) == {"loss", "loss/diff", "loss/align"}  # flow's lone mse term is loss/diff: not repeated
    assert torch.allclose(loss, m["loss/diff"] + 0.5 * m["loss/align"], atol=1e-6)
    assert -1.0 <= m["loss/align"].item() <= 1.0  # a negative cosine


class _NoDiffusion:
    """Wraps an objective so that the diffusion loss is 0·pred: only the alignment loss has gradients."""

    def __init__(self, objective):
        self.objective = objective

    def corrupt(self, x):
        return self.objective.corrupt(x)

    def loss_terms(self, pred, noised):
        return {"mse": pred.flatten(1).sum(1) * 0.0}


def test_gradients_reach_head_and_blocks_up_to_the_tap_only(tiny_cfg, teachers):
    cfg = aligned_cfg(tiny_cfg, teachers, block_index=2)
    model, _, teacher, head = build(cfg)
    batch = next(build_loader(cfg.data))
    loss, m = train_step(
        batch,
        model=model,
        objective=_NoDiffusion(build_objective(cfg.objective)),
        num_classes=4,
        precision="fp32",
        device=CPU,
        align=cfg.align,
        teacher=teacher,
        head=head,
    )
    loss.backward()

    def touched(module):
        return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())

    assert touched(head)
    assert touched(model.x_embedder) and touched(model.blocks[0]) and touched(model.blocks[1])
    assert not touched(model.blocks[2]) and not touched(model.blocks[3]) and not touched(model.final_layer)
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())


def test_alignment_loss_decreases(tiny_cfg, teachers):
    """A few AdamW steps on one repeated batch reduce ``loss/align`` (head and DiT both learn)."""
    cfg = aligned_cfg(tiny_cfg, teachers)
    model, _, teacher, head = build(cfg)
    objective = build_objective(cfg.objective)
    opt = torch.optim.AdamW([*model.parameters(), *head.parameters()], lr=3e-3)
    batch = next(build_loader(cfg.data))
    history = []
    for _ in range(15):
        torch.manual_seed(0)
        loss, m = train_step(
            batch,
            model=model,
            objective=objective,
            num_classes=4,
            precision="fp32",
            device=CPU,
            align=cfg.align,
            teacher=teacher,
            head=head,
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(m["loss/align"].item())
    assert history[-1] < history[0] - 0.2, history


def test_exact_resume_with_head(tiny_cfg, teachers, metrics):
    """Head weights and the head's AdamW state are checkpointed: 2 + 2 resumed steps equal 4 straight."""
    cfg = replace(aligned_cfg(tiny_cfg, teachers), ckpt=replace(tiny_cfg().ckpt, every=2))
    full = train(replace(cfg, run_name="full"))
    half = replace(cfg, run_name="half", max_steps=2)
    train(half)
    train(replace(half, max_steps=4, resume="auto"))
    ref = {r["step"]: (r["loss"], r["loss/align"]) for r in metrics(full)}
    assert {r["step"]: (r["loss"], r["loss/align"]) for r in metrics(half.run_dir)} == ref
    for r in metrics(full):  # λ·L_align / L_diff of the logged means (§2.8): the same float operations
        want = cfg.align.weight * r["loss/align"] / r["loss/diff"]
        assert r["align_ratio"] == pytest.approx(want, rel=1e-12)
    last = Path("checkpoints") / f"step_{4:07d}"
    for name in ("model.safetensors", "ema.safetensors", "extra.safetensors"):
        a = safetensors.torch.load_file(str(full / last / name))
        b = safetensors.torch.load_file(str(half.run_dir / last / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    head_keys = safetensors.torch.load_file(str(full / last / "extra.safetensors")).keys()
    assert all(k.startswith("projectors.") for k in head_keys)  # the head only: no teacher weights
    assert (full / last / "extra_optim.pt").is_file()


def test_config_errors(tiny_cfg, teachers):
    with pytest.raises(ValueError, match="no teacher folder"):
        tiny_cfg(model={"depth": 4}, align=AlignConfig(block_index=2))
    with pytest.raises(ValueError, match="block_index"):
        aligned_cfg(tiny_cfg, teachers, block_index=5)


def test_quickstart_align_builds_tiny_teachers(tmp_path, metrics):
    """The recipe with its teacher folder cleared and ``--teacher.tiny-random`` trains against tiny random
    DINOv2 + SAM2 teachers (and says so). Its default teacher: tests/test_syn_teacher.py."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "recipes" / "quickstart_align.py"
    spec = importlib.util.spec_from_file_location("quickstart_align", path)
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    args = [
        "--out-dir", str(tmp_path), "--max-steps", "2", "--log.every", "1", "--sample-every", "-1",
        "--model.depth", "2", "--model.hidden-size", "32", "--model.num-heads", "2",
        "--data.batch-size", "2", "--align.block-index", "1", "--align.projector-dim", "32",
        "--log.no-tensorboard", "--teacher.videomae", "None", "--teacher.tiny-random",
        "--align.frame-match", "per_frame",
        "--eval.num-gen", "16", "--eval.num-real", "16", "--eval.batch-size", "16", "--eval.steps", "2",
    ]  # fmt: skip
    cfg = tyro.cli(TrainConfig, default=recipe.config(), args=args, config=(tyro.conf.AvoidSubcommands,))
    train(cfg)
    rows = [r for r in metrics(cfg.run_dir) if "loss" in r]  # without the evaluation's row
    assert [r["step"] for r in rows] == [1, 2] and all("loss/align" in r for r in rows)
    assert (cfg.run_dir / "tiny_teachers" / "dinov2" / "config.json").is_file()
    assert (cfg.run_dir / "tiny_teachers" / "sam2" / "config.json").is_file()
