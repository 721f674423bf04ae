"""Protocols and the evaluation engine on CPU: subsets, labels, the folder and checkpoint paths with the
synthetic detector, caching, bad input, and 2 gloo ranks giving the numbers of one process."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from minivdit import media
from minivdit.data.synthetic import SyntheticVideos
from minivdit.data.video import list_frames, read_folder_frames
from minivdit.eval import evaluate, protocols, synthetic
from minivdit.eval.__main__ import main as eval_main
from minivdit.eval.evaluate import EvalConfig, evaluate_folders
from minivdit.eval.protocols import Protocol, get_protocol, proportional_counts, select_real


def test_proportional_counts_and_subsets():
    labels = np.repeat(np.arange(5), [10, 20, 30, 25, 15])  # 100 videos
    counts = proportional_counts(labels, 37, 5)
    assert counts.sum() == 37 and np.all(np.abs(counts - np.bincount(labels) * 0.37) < 1)
    p = get_protocol("align4gen-ucf", num_real=37)
    idx, c = select_real(p, labels, 5)
    assert len(idx) == 37 and np.array_equal(np.bincount(labels[idx], minlength=5), c)
    assert np.array_equal(idx, select_real(p, labels, 5)[0])  # seeded
    assert not np.array_equal(
        idx, select_real(get_protocol("align4gen-ucf", num_real=37, seed=1), labels, 5)[0]
    )
    first = select_real(get_protocol("stylegan-v", num_real=8), labels, 5)[0]
    assert np.array_equal(first, np.arange(8))
    rand = select_real(get_protocol("latte", num_real=8), labels, 5)[0]
    assert len(set(rand)) == 8 and not np.array_equal(rand, np.arange(8))
    fake = protocols.fake_labels(get_protocol("align4gen-ucf", num_fake=37), 5, c)
    assert np.array_equal(np.bincount(fake, minlength=5), c)
    assert protocols.fake_labels(get_protocol("align4gen-sky"), 0, None) is None  # unconditional model
    with pytest.raises(ValueError, match="unknown protocol"):
        get_protocol("fvd-by-vibes")
    with pytest.raises(ValueError, match="metrics"):
        EvalConfig(metrics=("psnr",))


def test_label_rules_follow_their_references():
    """Issue 18 §1.2: a class-conditional model under stylegan-v / latte gets labels (it crashed without),
    by each reference's rule, seeded."""
    split = np.array([0] * 90 + [1] * 9 + [2] * 1)  # a skewed split: the rules differ visibly
    n = 4000
    items = protocols.fake_labels(get_protocol("stylegan-v", num_fake=n), 3, None, split)
    assert get_protocol("stylegan-v").label_rule == "real_items"
    # StyleGAN-V: labels of random real items, so the split's shares (0.90 / 0.09 / 0.01), within 5 σ of a
    # binomial over n draws (σ ≤ sqrt(0.25 / n) = 0.008)
    np.testing.assert_allclose(np.bincount(items, minlength=3) / n, [0.90, 0.09, 0.01], atol=0.04)
    uniform = protocols.fake_labels(get_protocol("latte", num_fake=n), 3, None, split)
    assert get_protocol("latte").label_rule == "uniform"
    np.testing.assert_allclose(
        np.bincount(uniform, minlength=3) / n, [1 / 3] * 3, atol=0.04
    )  # Latte: randint
    for name in ("stylegan-v", "latte"):  # seeded: the same labels again, others for another seed
        p = get_protocol(name, num_fake=50)
        again = protocols.fake_labels(p, 3, None, split)
        assert np.array_equal(again, protocols.fake_labels(p, 3, None, split))
        other = protocols.fake_labels(get_protocol(name, num_fake=50, seed=1), 3, None, split)
        assert not np.array_equal(again, other)
    cycle = protocols.fake_labels(get_protocol("synthetic", num_fake=7), 3, None)
    assert cycle.tolist() == [0, 1, 2, 0, 1, 2, 0]
    with pytest.raises(ValueError, match="real_items needs the labels"):
        protocols.fake_labels(get_protocol("stylegan-v"), 3, None, None)
    with pytest.raises(ValueError, match="label_rule"):
        get_protocol("latte", label_rule="by-vibes")


@pytest.mark.parametrize("name", ["stylegan-v", "latte"])
def test_class_conditional_model_under_unconditional_protocols(name):
    """The crash of ``latte_ucf``'s in-training evaluation (``VDiT needs Cond.label``): a class-conditional
    model sampled under ``stylegan-v`` / ``latte``, its labels recorded by rule."""
    from minivdit.models.dit import DiTConfig, VDiT
    from minivdit.objectives.flow import Flow, FlowConfig

    torch.manual_seed(0)
    model_cfg = DiTConfig(
        depth=2, hidden_size=32, num_heads=2, patch_size=4, in_channels=3, input_size=(8, 8),
        num_frames=16, num_classes=4, learn_sigma=False,
    )  # fmt: skip
    model = VDiT(model_cfg)
    model.init_weights()
    seen = []
    forward = model.forward

    def spy(x, t, cond, **kw):
        seen.append(cond.label.clone())
        return forward(x, t, cond, **kw)

    model.forward = spy
    data = {"dataset": "synthetic", "num_frames": 16, "image_size": 8, "num_classes": 4, "synthetic_size": 64}
    run_cfg = {"data": data, "model": {"num_classes": 4}, "objective": {"_type": "FlowConfig"}}
    cfg = EvalConfig(protocol=name, metrics=("syn_fvd",), num_gen=6, num_real=6, steps=1, batch_size=6)
    values, record = evaluate.evaluate_model(
        cfg, model=model.eval(), objective=Flow(FlowConfig()), vae=None, run_cfg=run_cfg,
        device=torch.device("cpu"), show=False,
    )  # fmt: skip
    assert np.isfinite(values["syn_fvd"]) and record["label_rule"] == get_protocol(name).label_rule
    p = get_protocol(name, num_fake=6)
    want = protocols.fake_labels(p, 4, None, np.arange(64) % 4)  # the synthetic split: index % classes
    assert torch.equal(seen[0][:6], torch.from_numpy(want))


def test_detectors_run_without_tf32_and_restore_it():
    """Issue 18 §1.6: the trainer turns TF32 on for the process; the detectors see it off, and the setting
    comes back after each chunk (also after an error)."""
    seen = []

    class Spy:
        def features(self, video):
            seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))
            return torch.zeros(video.shape[0], 3, dtype=torch.float64)

    class Broken:
        def features(self, video):
            raise RuntimeError("detector failed")

    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # as train.py
        measure = evaluate.Measure({"i3d": (Spy(), None)}, ("fvd",), generated=False)
        measure.add(torch.zeros(2, 16, 3, 8, 8, dtype=torch.uint8))
        assert seen == [(False, False)]
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, True)
        broken = evaluate.Measure({"i3d": (Broken(), None)}, ("fvd",), generated=False)
        with pytest.raises(RuntimeError, match="detector failed"):
            broken.add(torch.zeros(1, 16, 3, 8, 8, dtype=torch.uint8))
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, True)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def _write_clips(root, clips, as_png: bool):
    root.mkdir(parents=True)
    for i, clip in enumerate(clips):  # clip: uint8 [F, H, W, 3]
        if as_png:
            from PIL import Image

            d = root / f"clip{i:03d}"
            d.mkdir()
            for f, frame in enumerate(clip):
                Image.fromarray(frame).save(d / f"frame_{f}.png")
        else:
            media.write_mp4(root / f"clip{i:03d}.mp4", clip)


def _synthetic_uint8(n, frames=8, size=16, seed=0, classes=8):
    ds = SyntheticVideos(frames, size, classes, n, seed)
    return media.to_uint8(torch.stack([ds.get(i)["video"] for i in range(n)]))  # [N, F, H, W, 3]


def test_folders_syn_fvd_self_is_zero_and_shift_is_not(tmp_path, caplog):
    clips = _synthetic_uint8(24)
    _write_clips(tmp_path / "real", clips, as_png=True)
    _write_clips(tmp_path / "same", clips, as_png=True)
    _write_clips(tmp_path / "other", clips[:, :, :, ::-1], as_png=True)  # mirrored: the motions reverse
    cfg = EvalConfig(protocol="stylegan-v", metrics=("syn_fvd",), num_real=24, num_gen=24, batch_size=8)
    same, rec = evaluate_folders(
        cfg,
        real_dir=str(tmp_path / "real"),
        fake_dir=str(tmp_path / "same"),
        num_frames=8,
        resolution=16,
        device=torch.device("cpu"),
        show=False,
    )
    # Both folders hold the same clips in the same batches: bitwise the same float32 features, so only the
    # float64 Fréchet maths is left. 24 clips in 128-d give covariances of rank ≤ 23; the ~105 round-off
    # eigenvalues (≈ 1e-16·λmax) each contribute √(1e-16·λmax) ≈ 1e-8·√λmax to the trace term. 1e-4
    # bounds that with a wide margin; the mirrored clips below give > 1.
    assert abs(same["syn_fvd"]) < 1e-4
    assert rec["num_real_used"] == 24 and rec["num_fake_used"] == 24 and rec["name"] == "stylegan-v"
    assert len(rec["detectors"]["synthetic"]["sha256"]) == 64
    other, _ = evaluate_folders(
        cfg,
        real_dir=str(tmp_path / "real"),
        fake_dir=str(tmp_path / "other"),
        num_frames=8,
        resolution=16,
        device=torch.device("cpu"),
        show=False,
    )
    assert other["syn_fvd"] > 1.0
    # Fewer clips than asked: a warning with the count used, or an error under --strict.
    many = EvalConfig(protocol="stylegan-v", metrics=("syn_fvd",), num_real=30, num_gen=24)
    with caplog.at_level("WARNING", logger="minivdit"):
        evaluate_folders(
            many,
            real_dir=str(tmp_path / "real"),
            fake_dir=str(tmp_path / "same"),
            num_frames=8,
            resolution=16,
            device=torch.device("cpu"),
            show=False,
        )
    assert "only 24 real clips available, 30 asked" in caplog.text
    with pytest.raises(ValueError, match="--strict"):
        evaluate_folders(
            EvalConfig(protocol="stylegan-v", metrics=("syn_fvd",), num_real=30, strict=True),
            real_dir=str(tmp_path / "real"),
            fake_dir=str(tmp_path / "same"),
            num_frames=8,
            resolution=16,
            device=torch.device("cpu"),
            show=False,
        )


def test_folders_cli_mp4_cache_and_errors(tmp_path, monkeypatch, capsys):
    clips = _synthetic_uint8(16, size=32)
    _write_clips(tmp_path / "real", clips, as_png=False)
    _write_clips(tmp_path / "fake", _synthetic_uint8(16, size=32, seed=5), as_png=False)
    args = [
        "folders",
        "--real",
        str(tmp_path / "real"),
        "--fake",
        str(tmp_path / "fake"),
        "--metrics",
        "syn_fvd",
        "--num-frames",
        "8",
        "--resolution",
        "16",
        "--num-real",
        "16",
        "--num-fake",
        "16",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--out",
        str(tmp_path / "m.json"),
    ]
    first = eval_main(args)
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    written = json.loads((tmp_path / "m.json").read_text())
    assert line["syn_fvd"] == written["syn_fvd"] == first["syn_fvd"] > 0
    assert written["protocol"]["resolution_used"] == 16 and written["protocol"]["real"] == str(
        tmp_path / "real"
    )
    assert len(list((tmp_path / "cache").glob("stylegan-v-synthetic-*.npz"))) == 1

    def no_real(*a, **k):
        raise AssertionError("the real statistics should come from the cache")

    monkeypatch.setattr(evaluate, "measure_real", no_real)
    # the cache holds the very float64 sums, and the generated side is the same clips in the same batches:
    # the same computation, bit-identical by construction (rel 1e-12: float64 printing/reading at most)
    assert eval_main(args)["syn_fvd"] == pytest.approx(first["syn_fvd"], rel=1e-12)
    monkeypatch.undo()
    # cd-fvd's published statistics format (FeatureStats.__dict__ pickled) instead of a real folder.
    import pickle

    cached, _ = evaluate.FeatureStats.load(next((tmp_path / "cache").glob("*.npz")))
    (tmp_path / "ref.pkl").write_bytes(
        pickle.dumps(
            {
                "num_items": cached.count,
                "raw_mean": cached.raw_mean,
                "raw_cov": cached.raw_cov,
                "capture_all": False,
            }
        )
    )
    pub = eval_main(args[:1] + ["--real-stats", str(tmp_path / "ref.pkl")] + args[3:])
    assert pub["syn_fvd"] == pytest.approx(first["syn_fvd"], rel=1e-12)  # the same float64 sums, pickled
    assert pub["protocol"]["real_stats"] == str(tmp_path / "ref.pkl")
    with pytest.raises(ValueError, match="--i3d"):
        eval_main(args[:6] + ["fvd"])
    with pytest.raises(ValueError, match="fewer than --num-frames 9"):
        evaluate.fake_from_folder(str(tmp_path / "fake"), 16, 9, 16)[1](0)


def test_run_synthetic_protocol_on_a_checkpoint(tmp_path, tiny_cfg, capsys):
    from minivdit.train import train

    cfg = tiny_cfg(
        max_steps=2,
        data={"num_classes": 4, "num_frames": 4, "image_size": 16},
        model={"num_frames": 4, "input_size": (16, 16)},
    )
    run_dir = train(cfg)
    out = eval_main(
        [
            "run",
            "--ckpt",
            str(run_dir),
            "--protocol",
            "synthetic",
            "--num-gen",
            "12",
            "--num-real",
            "12",
            "--steps",
            "2",
            "--batch-size",
            "5",
            "--keep-frames",
        ]
    )
    written = json.loads((run_dir / "eval" / "step_0000002" / "metrics.json").read_text())
    assert set(written) == {"syn_fvd", "syn_acc", "syn_count", "protocol"}
    assert (
        0.0 <= written["syn_acc"] <= 1.0
        and np.isfinite(written["syn_fvd"])
        and out["syn_fvd"] == written["syn_fvd"]
    )
    p = written["protocol"]
    assert p["num_fake_used"] == 12 and p["num_real_used"] == 12 and p["name"] == "synthetic"
    assert p["num_frames_used"] == 4 and p["resolution_used"] == 16 and p["sampler"]["steps"] == 2
    frames = sorted((run_dir / "eval" / "step_0000002" / "frames").glob("*/*.png"))
    assert len(frames) == 12 * 4
    # syn_count recounted from the kept lossless frames: labels cycle over the 4 classes
    clips = [read_folder_frames(list_frames(f.parent), range(4)) for f in frames[::4]]  # [F, H, W, 3] each
    clips = torch.from_numpy(np.stack(clips))
    labels = torch.arange(12) % 4
    right = synthetic.count_objects(clips.permute(0, 1, 4, 2, 3).contiguous()) == 1
    assert written["syn_count"] == pytest.approx(right.float().mean().item()) and labels.max() < 7
    # a clip's starting noise is its own: another batch size gives the same samples (Euler is deterministic)
    other = eval_main(
        [
            "run",
            "--ckpt",
            str(run_dir),
            "--protocol",
            "synthetic",
            "--num-gen",
            "12",
            "--num-real",
            "12",
            "--steps",
            "2",
            "--batch-size",
            "12",
            "--out",
            str(tmp_path / "b12.json"),
        ]
    )
    # Batches of 5 and 12 run other float32 kernels in the sampler and the detector: the features differ by
    # round-off (bounded at about 3e-5 of the FD in test_two_gloo_ranks_match_one_process), and a sample
    # value lying within that round-off of a uint8 rounding boundary may flip one level. Noise drawn per
    # batch instead of per clip would give other samples, an FD change of O(10%).
    assert other["syn_fvd"] == pytest.approx(out["syn_fvd"], rel=1e-4) and other["syn_acc"] == out["syn_acc"]


WORKER = """
import sys
from minivdit.eval.__main__ import main
main(sys.argv[1:])
"""


@pytest.mark.slow
@pytest.mark.usefixtures("single_thread")  # the ranks run with OMP_NUM_THREADS=1: the same kernels (below)
def test_two_gloo_ranks_match_one_process(tmp_path, tiny_cfg):
    from minivdit.train import train

    cfg = tiny_cfg(
        max_steps=2,
        data={"num_classes": 4, "num_frames": 4, "image_size": 16},
        model={"num_frames": 4, "input_size": (16, 16)},
    )
    run_dir = train(cfg)
    args = [
        "run",
        "--ckpt",
        str(run_dir),
        "--protocol",
        "synthetic",
        "--num-gen",
        "11",
        "--num-real",
        "13",
        "--steps",
        "2",
        "--batch-size",
        "3",
    ]
    solo = eval_main(args + ["--out", str(tmp_path / "solo.json")])
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_addr=127.0.0.1",
            f"--master_port={port}",
            str(script),
            *args,
            "--out",
            str(tmp_path / "dist.json"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    duo = json.loads((tmp_path / "dist.json").read_text())
    assert duo["protocol"]["world_size"] == 2 and duo["protocol"]["num_fake_used"] == 11
    # Every chunk is the same batch in both runs (same clips, noise and shapes; evaluate.py's docstring), but
    # not bitwise the same numbers: a CPU library picks its float32 kernels (blocking, vector width, how a
    # reduction is split) by shape *and* thread count, which differ by machine (a 2-core AMD EPYC gave
    # 45.06596070764208 vs 45.065960754963, 1e-9 apart). The solo run is single-threaded like the ranks, so
    # the sampler's float32 output, which the uint8 rounding turns into whole-level pixel changes when it
    # moves, is the same; what remains is round-off in the detector's float32 features, then a float64
    # Fréchet distance. Its size: u = 2^-24 ≈ 6e-8; two summation orders of a reduction of K terms differ
    # by about √K·u relative, K ≤ 3³·64 = 1728 in the detector (its last Conv3d), ≈ 2.5e-6 per layer,
    # ≈ 5e-6 over its four convolutions (ε). The FD is quadratic in the features and its terms cancel:
    # here FD ≈ 45 from ‖Δμ‖² ≈ 26, tr Σa ≈ 23, tr Σb ≈ 3, 2 tr √(Σa Σb) ≈ 6, with ‖μa‖², ‖μb‖² ≈ 10, 17,
    # so a relative feature change ε moves it by at most about 2ε·(‖Δμ‖(‖μa‖+‖μb‖) + tr Σa + tr Σb +
    # 2‖μa‖² + 2‖μb‖² + 2 tr √(Σa Σb)) / FD ≈ 6ε ≈ 3e-5, and by far less in practice (the errors are
    # independent over 11-13 clips × 128 features and average out: 1e-9 measured). rel = 1e-4 is above
    # that bound and far below what a sharding bug does: one clip measured twice or lost moves the FD by
    # ~1/N ≈ 8%.
    assert duo["syn_fvd"] == pytest.approx(solo["syn_fvd"], rel=1e-4)
    # An argmax count: a clip changes class only if its two top probabilities tie to within the features'
    # round-off (≈ 1e-5 relative), which none of these 11 does.
    assert duo["syn_acc"] == solo["syn_acc"]


def test_training_evaluates_every_n_steps_and_skips_missing_weights(tiny_cfg, metrics):
    from minivdit.train import train

    ev = EvalConfig(
        protocol="synthetic",
        metrics=("syn_fvd", "syn_acc", "fvd"),
        every=1,
        num_gen=6,
        num_real=6,
        steps=2,
        batch_size=4,
    )
    run_dir = train(tiny_cfg(max_steps=2, eval=ev))
    log_txt = (run_dir / "log.txt").read_text()
    assert log_txt.count("skipping fvd: no weights given (--eval.i3d") == 1
    assert "eval (synthetic, 6 generated vs 6 real clips" in log_txt
    rows = [r for r in metrics(run_dir) if "eval/syn_fvd" in r]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(np.isfinite(r["eval/syn_fvd"]) and 0 <= r["eval/syn_acc"] <= 1 for r in rows)
    written = json.loads((run_dir / "eval" / "step_0000002" / "metrics.json").read_text())
    assert written["syn_fvd"] == rows[-1]["eval/syn_fvd"] and written["protocol"]["step"] == 2
    assert "fvd" not in written and written["protocol"]["metrics"] == ["syn_fvd", "syn_acc"]


# ------------------------------------------------------------------------- issue 18 §1: protocol plumbing


def test_real_subset_spares_continue_each_rule():
    """§1.4: the videos that replace a bad one continue the subset's own order (sorted for ``first``, a
    seeded random order for ``random``, the same class for ``class_proportional``); the subset itself is
    the one drawn before spares existed."""
    labels = np.repeat(np.arange(3), [5, 7, 8])  # 20 videos
    first = protocols.real_subset(get_protocol("stylegan-v", num_real=6), labels, 3)
    assert first.chosen.tolist() == list(range(6)) and first.spares[0].tolist() == list(range(6, 20))
    rand = protocols.real_subset(get_protocol("latte", num_real=6), labels, 3)
    before = np.sort(np.random.default_rng([0, 1]).choice(20, 6, replace=False))  # the pre-spares rule
    assert np.array_equal(rand.chosen, before)
    assert sorted(rand.chosen.tolist() + rand.spares[0].tolist()) == list(range(20))
    assert rand.spares[0].tolist() != sorted(rand.spares[0].tolist())  # 14! orders: sorted by chance ~1e-11
    prop = protocols.real_subset(get_protocol("align4gen-ucf", num_real=10), labels, 3)
    assert np.array_equal(prop.group, labels[prop.chosen]) and prop.counts.sum() == 10
    for c in range(3):
        members = np.flatnonzero(labels == c).tolist()
        assert sorted(prop.spares[c].tolist() + prop.chosen[prop.group == c].tolist()) == members


def _bad_real_folder(root):
    """Eight 12-frame mp4s, ``clip001`` only 7 (4 frames at stride 2 fit in 7, but StyleGAN-V's threshold
    is 4 × 2 = 8) and ``clip002`` cut in half (truncated: it cannot be read)."""
    clips = _synthetic_uint8(8, frames=12, size=16)  # [N, F, H, W, 3]
    root.mkdir(parents=True)
    for i, clip in enumerate(clips):
        media.write_mp4(root / f"clip{i:03d}.mp4", clip[:7] if i == 1 else clip)
    bad = root / "clip002.mp4"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    return root


def test_bad_real_videos_short_left_out_corrupt_replaced(tmp_path):
    """§1.4: a video shorter than frames × stride leaves the split before the subset is drawn (StyleGAN-V
    ``discard_short_videos``); a truncated one is replaced by the next video of the subset's order, so
    the count holds; ``strict`` makes it an error; without spares left the count drops."""
    from minivdit.data.video import ClipSpec, sample_clip

    root = _bad_real_folder(tmp_path / "real")
    protocol = get_protocol("stylegan-v", num_real=4, real_stride=2)
    real = evaluate.real_from_folder(str(root), protocol, 4, 16)
    assert real.short == [str(root / "clip001.mp4")] and real.count == 4
    seen = []

    class Spy:
        def features(self, video):
            seen.extend(video)
            return torch.zeros(video.shape[0], 2, dtype=torch.float64)

    measure = evaluate.Measure({"i3d": (Spy(), None)}, ("fvd",), generated=False)
    evaluate.measure_real(real, measure, batch_size=3, show=False)
    assert measure.clips == 4 and [p for p, _ in real.corrupt] == [str(root / "clip002.mp4")]
    # The first 4 videos long enough are 0, 2, 3, 4 (clip002's length cannot be read: kept, then replaced by
    # the next in sorted order, clip005). Each window is seeded by its video's index alone, so the oracle is
    # the same reader on the same generator: bit-identical by construction.
    spec = ClipSpec(num_frames=4, frame_interval=2, image_size=16, flip=False)
    want = [
        evaluate.to_uint8(
            sample_clip(str(root / f"clip{i:03d}.mp4"), spec, np.random.default_rng([0, 2, i]))[None]
        )[0]
        for i in (0, 3, 4, 5)
    ]
    assert len(seen) == 4 and all(torch.equal(a, b) for a, b in zip(seen, want, strict=True))
    strict = evaluate.real_from_folder(str(root), protocol, 4, 16)
    with pytest.raises(ValueError, match="clip002.mp4.*--strict"):
        evaluate.measure_real(strict, evaluate.Measure({"i3d": (Spy(), None)}, ("fvd",), generated=False),
                              3, False, strict=True)  # fmt: skip
    with pytest.raises(ValueError, match="shorter than frames × stride.*--strict"):
        evaluate.check_short(strict, True)
    every = evaluate.real_from_folder(str(root), get_protocol("stylegan-v", num_real=7, real_stride=2), 4, 16)
    spent = evaluate.Measure({"i3d": (Spy(), None)}, ("fvd",), generated=False)
    evaluate.measure_real(every, spent, batch_size=8, show=False)
    assert spent.clips == every.count == 6  # all 7 long-enough videos chosen: no spare for clip002


def test_bad_real_video_replacement_is_the_same_on_two_ranks(tmp_path, monkeypatch):
    """§1.4 under torchrun: each rank reads its own chunks, the failures are gathered, every rank puts the
    same spare in the same slot, and the two ranks together read the clips one process reads. Two threads
    stand in for the ranks: ``_rank_world`` and ``_gather_all`` are the only rank-aware calls."""
    import threading

    from minivdit.data.video import ClipSpec, sample_clip

    root = _bad_real_folder(tmp_path / "real")
    protocol = get_protocol("stylegan-v", num_real=4, real_stride=2)
    local, barrier, posted = threading.local(), threading.Barrier(2, timeout=60), [None, None]

    def gather(items):  # all_gather_object between the two threads
        posted[local.rank] = list(items)
        barrier.wait()
        out = sorted(posted[0] + posted[1])
        barrier.wait()
        return out

    monkeypatch.setattr(evaluate, "_rank_world", lambda: (local.rank, 2))
    monkeypatch.setattr(evaluate, "_gather_all", gather)
    seen, reals, errors = {0: [], 1: []}, {}, []

    def rank(r):
        local.rank = r
        try:
            reals[r] = evaluate.real_from_folder(str(root), protocol, 4, 16)

            class Spy:
                def features(self, video):
                    seen[r].extend(video)
                    return torch.zeros(video.shape[0], 2, dtype=torch.float64)

            measure = evaluate.Measure({"i3d": (Spy(), None)}, ("fvd",), generated=False)
            evaluate.measure_real(reals[r], measure, batch_size=1, show=False)
        except Exception as e:  # noqa: BLE001 - reported below, a thread's exception is otherwise lost
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    # slots index the 7 long-enough videos (clip001 is short): clip002 (1) is replaced by clip005 (4)
    assert reals[0].slots.tolist() == reals[1].slots.tolist() == [0, 4, 2, 3]
    assert reals[0].corrupt == reals[1].corrupt and len(reals[0].corrupt) == 1
    spec = ClipSpec(num_frames=4, frame_interval=2, image_size=16, flip=False)
    want = [
        evaluate.to_uint8(
            sample_clip(str(root / f"clip{i:03d}.mp4"), spec, np.random.default_rng([0, 2, i]))[None]
        )[0]
        for i in (0, 3, 4, 5)
    ]
    got = seen[0] + seen[1]  # bit-identical by construction (the same reader and generators as above)
    assert len(got) == 4 and all(sum(torch.equal(g, w) for g in got) == 1 for w in want)


def test_real_stats_cache_holds_the_clip_count_and_keys_resize_and_version(tmp_path, monkeypatch):
    """§1.5: ``num_real_used`` is the clip count stored with the cached statistics, not a detector's item
    count (a detector over frames counts frames); minivdit's version and the resize mode key the cache."""
    _write_clips(tmp_path / "real", _synthetic_uint8(6, frames=4, size=16), as_png=True)

    class PerClip:
        def features(self, video):  # [B, F, 3, H, W] -> [B, F]
            return video.double().mean((2, 3, 4))

    class PerFrame:
        def features(self, video):  # -> [B·F, 3], as Inception over every frame
            return video.double().mean((3, 4)).flatten(0, 1)

    detectors = {"i3d": (PerClip(), "a"), "inception": (PerFrame(), "b")}
    cfg = EvalConfig(protocol="stylegan-v", cache_dir=str(tmp_path / "cache"), batch_size=4)
    protocol = get_protocol("stylegan-v", num_real=6)

    def stats():
        real = evaluate.real_from_folder(str(tmp_path / "real"), protocol, 4, 16)
        return real, evaluate.real_stats_cached(real, detectors, ("fid", "fvd"), cfg, False, 4, 16)

    _, measured = stats()
    assert measured.clips == 6 and measured.stats["inception"].count == 24

    def no_real(*a, **k):
        raise AssertionError("the real statistics should come from the cache")

    monkeypatch.setattr(evaluate, "measure_real", no_real)
    _, cached = stats()
    assert cached.clips == 6 and len(list((tmp_path / "cache").glob("*.npz"))) == 2
    monkeypatch.undo()
    real = evaluate.real_from_folder(str(tmp_path / "real"), protocol, 4, 16)
    real.resize = "crop_resize"
    evaluate.real_stats_cached(real, detectors, ("fid", "fvd"), cfg, False, 4, 16)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 4  # another resize mode: other files
    monkeypatch.setattr(protocols, "minivdit_version", lambda: "0.0.0+other")
    stats()
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 6  # another version: other files


def _frame_folder_clips(root, n, frames, h, w, seed=0):
    """``n`` PNG frame folders ``root/clipNNN/frame_k.png``; frame k of clip i is random noise (seeded by
    ``(seed, i, k)``) plus the flat level ``10·k`` in the green channel, so a clip's frame numbers can be read
    back from the untouched pixels (PNG is lossless)."""
    from PIL import Image

    for i in range(n):
        (root / f"clip{i:03d}").mkdir(parents=True)
        for k in range(frames):
            a = np.random.default_rng([seed, i, k]).integers(0, 256, (h, w, 3), dtype=np.uint8)
            a[..., 1] = 10 * k
            Image.fromarray(a).save(root / f"clip{i:03d}" / f"frame_{k}.png")
    return root


def test_real_windows_take_the_runs_stride_split_and_resize(tmp_path):
    """§1.1: align4gen-* take the run's ``frame_interval`` as the real stride (and an override wins);
    §1.3: latte (and stylegan-v) take the run's split; §1.9: Sky real frames are cropped then resized, as Sky
    trains, not centre-cropped after a resize."""
    from test_data_real import write_video  # tests/ is on sys.path

    from minivdit.data.video import ClipSpec, list_frames, sample_clip

    folder = _frame_folder_clips(tmp_path / "folder", 2, 12, 8, 8)
    data = {"dataset": "folder", "root": str(folder), "frame_interval": 3, "num_frames": 4, "image_size": 8}
    real = evaluate.real_from_dataset(data, get_protocol("align4gen-ffs", num_real=2), 4, 8, None)
    assert real.protocol.real_stride == 3 and real.protocol.real_split == "train"
    assert np.diff(real.clip(0)[:, 1, 0, 0].numpy().astype(int)).tolist() == [30, 30, 30]  # frames k, k+3, …
    one = evaluate.real_from_dataset(
        data, get_protocol("align4gen-ffs", num_real=2, real_stride=1), 4, 8, None
    )
    assert one.protocol.real_stride == 1
    assert np.diff(one.clip(0)[:, 1, 0, 0].numpy().astype(int)).tolist() == [10, 10, 10]

    ucf = tmp_path / "ucf"
    (ucf / "ucfTrainTestlist").mkdir(parents=True)
    (ucf / "ucfTrainTestlist" / "classInd.txt").write_text("1 Aa\n2 Bb\n")
    for kind, g in (("train", 1), ("test", 2)):
        names = [f"{c}/v_{c}_g{g:02d}_c01.avi" for c in ("Aa", "Bb")]
        for n in names:
            write_video(ucf / "UCF-101" / n, 6, "mpeg4", w=16, h=16)
        (ucf / "ucfTrainTestlist" / f"{kind}list01.txt").write_text("".join(f"{n} 1\n" for n in names))
    ucf_data = {"dataset": "ucf101", "root": str(ucf), "num_frames": 2, "image_size": 8, "split": "all"}
    for name, split, videos in (("latte", "all", 4), ("stylegan-v", "all", 4), ("align4gen-ucf", "test", 2)):
        r = evaluate.real_from_dataset(ucf_data, get_protocol(name), 2, 8, None)
        assert r.protocol.real_split == split and len(r.identity["files"]) == videos, name
    latte_train = evaluate.real_from_dataset(ucf_data | {"split": "train"}, get_protocol("latte"), 2, 8, None)
    assert latte_train.protocol.real_split == "train" and len(latte_train.identity["files"]) == 2

    sky = _frame_folder_clips(tmp_path / "sky" / "sky_train" / "video0", 2, 6, 16, 24)
    sky_data = {"dataset": "sky", "root": str(tmp_path / "sky"), "frame_interval": 1, "image_size": 8}
    r = evaluate.real_from_dataset(sky_data, get_protocol("align4gen-sky", num_real=2), 3, 8, None)
    assert r.resize == "crop_resize"
    src = list_frames(sky / "clip000")
    rng = np.random.default_rng([0, 2, 0])  # the window of video 0
    crop = ClipSpec(num_frames=3, frame_interval=1, image_size=8, resize="crop_resize", flip=False)
    want = evaluate.to_uint8(sample_clip(src, crop, rng)[None])[0]
    assert torch.equal(r.clip(0), want)  # the same reader, generator and spec: bit-identical
    short_side = dataclasses.replace(crop, resize="short_side_crop")
    other = evaluate.to_uint8(sample_clip(src, short_side, np.random.default_rng([0, 2, 0]))[None])[0]
    assert not torch.equal(r.clip(0), other)  # the two framings differ on these 16×24 frames


def test_every_protocol_field_is_an_override():
    """§1.13 and §1.10: every protocol field but its name and metrics is an ``EvalConfig`` field (so a flag
    of ``run``, ``folders`` and training), applied by one function; align4gen-ucf's class-proportional label
    rule can be swapped for StyleGAN-V's or Latte's."""
    names = {f.name for f in dataclasses.fields(Protocol)} - {"name", "metrics"}
    assert set(evaluate.protocol_overrides(EvalConfig())) == names
    assert all(v is None for v in evaluate.protocol_overrides(EvalConfig()).values())  # the protocol's own
    assert get_protocol("align4gen-ucf").label_rule == "class_proportional"
    cfg = EvalConfig(protocol="align4gen-ucf", num_frames=8, real_stride=2, label_rule="uniform", num_gen=5)
    p = cfg.resolved_protocol()
    assert (p.num_frames, p.real_stride, p.label_rule, p.num_fake) == (8, 2, "uniform", 5)
    assert EvalConfig(protocol="align4gen-ucf", label_rule="real_items").resolved_protocol().needs_real_labels
    with pytest.raises(ValueError, match="real_stride"):
        EvalConfig(real_stride=0)
