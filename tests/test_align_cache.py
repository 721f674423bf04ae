"""Teacher features cached on the teacher's own token grid (issue 18 §3.4): ``tools/cache_latents.py`` with
``--teacher.token-grid`` stamps that grid, a run whose teacher asks for it trains on the cache (its head's
learned conv sized from the stamp), and a run whose teacher grid differs, or whose per-encoder layer differs,
is refused naming the flag. A tiny random DINOv2 and two synthetic clips; ~2 s on one core.

Run: ``python -m pytest -q tests/test_align_cache.py``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from oracles import load_file  # tests/ is on sys.path

from minivdit import dist
from minivdit.align.heads import AlignConfig
from minivdit.align.teachers import TeacherConfig, make_tiny_teacher
from minivdit.config import to_dict
from minivdit.data import shards as S
from minivdit.train import build_alignment, check_dataset

pytestmark = [
    pytest.mark.usefixtures("single_thread"),
    pytest.mark.filterwarnings("ignore:torch.distributed is disabled"),
]
ROOT = Path(__file__).resolve().parents[1]
SOLO = dist.DistContext(rank=0, world=1, local_rank=0, device=torch.device("cpu"))


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_feats_cached_on_the_teacher_grid_are_stamped_accepted_and_refused(tmp_path, tiny_cfg):
    dinov2 = str(make_tiny_teacher("dinov2", tmp_path / "dinov2"))
    tool = load_file("tool_cache_latents", ROOT / "tools" / "cache_latents.py")
    args = (
        "--data.num-frames 2 --data.image-size 8 --data.num-classes 4 --data.synthetic-size 2 --vae.kind none"
    )
    args += " --patch-size 4 --device cpu --feats-dtype float32 --teacher.token-grid 1 1"  # DiT grid: 2×2
    out = tool.main([*args.split(), "--teacher.dinov2", dinov2, "--out", str(tmp_path / "cache")])
    meta = S.read_meta(out)
    assert meta["teacher"]["grid"] == [1, 1] and meta["teacher"]["token_grid"] == [1, 1]
    assert meta["fields"]["feats"]["shape"] == [2, 1, 32]  # 2 frames, 1×1 tokens, tiny DINOv2 width
    assert meta["teacher"]["prenorm"] == []

    teacher = TeacherConfig(dinov2=dinov2, token_grid=(1, 1))
    align = AlignConfig(block_index=1, projector_dim=16, grid_match="learned_conv")
    cfg = tiny_cfg(data={"dataset": "shards", "root": str(out)}, align=align, teacher=teacher)
    assert cfg.model.grid == (2, 2)
    dataset = S.ShardDataset(out)
    check_dataset(cfg, dataset)  # the run's teacher grid is the stamped one: accepted
    assert dataset.get(0)["feats"].shape == (2, 1, 32)
    none, head = build_alignment(cfg, SOLO, None, dataset)
    assert none is None and head.teacher_grid == (1, 1)  # sized from the stamp: no teacher in this run
    assert head.downsamplers[0].stride == (2, 2)  # the learned conv maps the 2×2 DiT grid onto it

    dit = dataclasses.replace(cfg, teacher=dataclasses.replace(teacher, token_grid=None))
    expected = (
        r"feats were cached on a \[1, 1\] token grid, the run's teacher grid is \[2, 2\] \(the DiT's, as "
        r"--teacher.token-grid is unset\): set --teacher.token-grid 1 1"
    )
    with pytest.raises(ValueError, match=expected):
        check_dataset(dit, dataset)
    other = dataclasses.replace(cfg, teacher=dataclasses.replace(teacher, token_grid=(2, 1)))
    with pytest.raises(ValueError, match=r"teacher grid is \[2, 1\] \(--teacher.token-grid\)"):
        check_dataset(other, dataset)
    prenorm = dataclasses.replace(cfg, teacher=dataclasses.replace(teacher, prenorm=("dinov2",)))
    with pytest.raises(ValueError, match=r"cached with teacher.prenorm=\[\], the run has \['dinov2'\]"):
        check_dataset(prenorm, dataset)

    # a cache from before token_grid / prenorm were stamped: read as their defaults (DiT grid, no prenorm)
    old = {
        **meta,
        "teacher": {k: v for k, v in meta["teacher"].items() if k not in ("token_grid", "prenorm")},
    }
    old["teacher"]["grid"] = [2, 2]
    assert S.cache_mismatches(old, teacher=to_dict(dit.teacher), grid=(2, 2)) == []
    assert S.cache_mismatches(old, teacher=to_dict(prenorm.teacher), grid=(2, 2)) != []
