"""The references' frame pipelines (``minivdit/eval/emulate.py``, issue 18 §1.7, §1.8): Pillow's JPEG
quality under the references' ``q=95``, torchvision's PIL geometry, cd-fvd's loader against cd-fvd's own
``preprocess`` (the oracle, loaded from the installed package without torchvision), Latte's mp4 settings, and
``--emulate`` through ``python -m minivdit.eval folders``.

Run: ``pytest -q tests/test_eval_emulate.py`` (CPU, a few seconds).
"""

from __future__ import annotations

import ast
import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from oracles import package_file  # tests/ is on sys.path (pytest's rootdir insertion)
from PIL import Image

from minivdit.data.video import ClipSpec, FrameFolder, clip_indices, list_frames
from minivdit.eval import emulate
from minivdit.eval.detector import resize_short_centre_crop

pytestmark = pytest.mark.usefixtures("single_thread")


def _frames(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """uint8 ``[n, h, w, 3]``: a gradient plus noise, so resampling and JPEG both change pixels."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 200 / w, y * 200 / h, (x + y) * 100 / (h + w)], -1)
    return np.clip(base + rng.normal(0, 20, (n, h, w, 3)), 0, 255).astype(np.uint8)


def _reference_jpeg(img: Image.Image) -> np.ndarray:
    """The references' own call: ``frame.save(path, q=95)`` (StyleGAN-V ``convert_videos_to_frames.py:L76``,
    ``src/training/logging.py:L140``; Latte ``tools/convert_videos_to_frames.py:L80``), then
    ``np.array(PIL.Image.open(f))`` (StyleGAN-V ``src/training/dataset.py:L460``)."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", q=95)
    buf.seek(0)
    return np.array(Image.open(buf))


def test_pillow_ignores_q_so_the_references_wrote_quality_75():
    img = Image.fromarray(_frames(1, 32, 48)[0])

    def jpeg(**kw) -> bytes:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", **kw)
        return buf.getvalue()

    # the same encoder run on the same pixels with the same settings: byte-identical files
    assert jpeg(q=95) == jpeg() == jpeg(quality=emulate.JPEG_QUALITY)
    assert jpeg(q=95) != jpeg(quality=95)
    assert np.array_equal(emulate.jpeg_round_trip(img), _reference_jpeg(img))


def test_torchvision_pil_geometry():
    """torchvision ``_compute_resized_output_size`` truncates the long side; ``center_crop`` offsets are
    ``int(round((H − R) / 2))``, Python's round-half-even (torchvision ``transforms/functional.py``)."""
    img = Image.fromarray(_frames(1, 190, 250)[0])
    assert emulate.tv_resize_short(img, 128).size == (168, 128)  # 128 · 250/190 = 168.4 → 168
    assert emulate.tv_resize_short(img, 190) is img  # the short side is R already: untouched
    tall = Image.fromarray(_frames(1, 250, 190)[0])
    assert emulate.tv_resize_short(tall, 128).size == (128, 168)
    wide = Image.fromarray(_frames(1, 20, 37)[0])  # (37 − 20) / 2 = 8.5 → 8 (half to even)
    assert np.array_equal(np.asarray(emulate.tv_center_crop(wide, 20)), np.asarray(wide)[:, 8:28])
    wider = Image.fromarray(_frames(1, 20, 39)[0])  # 9.5 → 10
    assert np.array_equal(np.asarray(emulate.tv_center_crop(wider, 20)), np.asarray(wider)[:, 10:30])
    with pytest.raises(ValueError, match="smaller than the 21×21 crop"):
        emulate.tv_center_crop(wide, 21)


def test_real_frames_as_the_conversion_scripts_write_them():
    frames = _frames(2, 24, 40)  # 40×24 → 16: StyleGAN-V 26×16 then crop at 5; Latte crop 24² at 8 first
    sgv = emulate.real_clip(frames, 16, "stylegan-v")
    latte = emulate.real_clip(frames, 16, "latte")
    assert sgv.shape == latte.shape == (2, 3, 16, 16) and sgv.dtype == torch.uint8
    for f in range(2):
        img = Image.fromarray(frames[f])
        # StyleGAN-V L74-76: resize the short side (16 · 40/24 = 26.7 → 26) with LANCZOS, crop round(5) = 5
        ref = _reference_jpeg(img.resize((26, 16), Image.LANCZOS).crop((5, 0, 21, 16)))
        assert np.array_equal(sgv[f].permute(1, 2, 0).numpy(), ref)
        # Latte L78-80: the centre square (offset round(8) = 8), then LANCZOS to 16²
        ref = _reference_jpeg(img.crop((8, 0, 32, 24)).resize((16, 16), Image.LANCZOS))
        assert np.array_equal(latte[f].permute(1, 2, 0).numpy(), ref)
    with pytest.raises(ValueError, match="minivdit's own pipeline"):
        emulate.real_clip(frames, 16, "none")
    with pytest.raises(ValueError, match="unknown pipeline 'jpeg'"):
        emulate.real_clip(frames, 16, "jpeg")


def _cdfvd_preprocess():
    """cd-fvd 0.1.1's ``preprocess`` (``cdfvd/utils/data_utils.py:L37-64``), executed from the installed
    file: its module imports torchvision (``VideoClips``), so only this function's source is compiled, in a
    namespace with what it uses (math, torch's ``F``)."""
    path = package_file("cd-fvd", "cdfvd/utils/data_utils.py")
    tree = ast.parse(Path(path).read_text())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "preprocess")
    namespace = {"math": math, "F": F, "torch": torch}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), str(path), "exec"), namespace)
    return namespace["preprocess"]


@pytest.mark.parametrize("hw", [(30, 40), (40, 30), (16, 16)])
def test_cdfvd_loader_matches_cdfvd(hw):
    preprocess = _cdfvd_preprocess()
    frames = _frames(3, *hw, seed=hw[0])  # THWC uint8, as torchvision's VideoClips returns
    video = preprocess(torch.from_numpy(frames), 16)["video"]  # CTHW float in [0, 1]
    # cdfvd/fvd.py:L133: rearrange(batch['video'] * 255, 'b c t h w -> b t h w c').byte()
    expected = (video[None] * 255).permute(0, 2, 3, 4, 1).byte()[0]  # [T, H, W, C]
    ours = emulate.real_clip(frames, 16, "cd-fvd")  # [T, C, H, W]
    # the same float32 operations in the same order (one F.interpolate call, one multiply, one cast)
    assert torch.equal(ours.permute(0, 2, 3, 1), expected)
    generated = emulate.generated_clips(torch.from_numpy(frames).permute(0, 3, 1, 2)[None], 16, "cd-fvd")
    assert torch.equal(generated[0], ours)  # cd-fvd loads generated videos with the same loader
    if hw == (16, 16):  # unresized: k / 255 · 255 round-trips in float32, so truncation is exact
        assert torch.equal(ours, torch.from_numpy(frames).permute(0, 3, 1, 2))
    else:  # truncation: never above the rounded resize, about half a grey level below it on average
        rounded = (video * 255).round().permute(1, 0, 2, 3)
        assert (ours.float() <= rounded).all()


def test_latte_mp4_is_libx264_yuv420p_crf5_8fps():
    import av

    clip = torch.from_numpy(_frames(4, 32, 48)).permute(0, 3, 1, 2)  # [F, 3, H, W]
    from minivdit.data.shards import encode_mp4

    data = encode_mp4(clip.numpy(), crf=emulate.LATTE_MP4["crf"], fps=emulate.LATTE_MP4["fps"])
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.codec_context.pix_fmt) == ("h264", "yuv420p")
        assert stream.average_rate == 8
    # x264 writes its settings into the stream (an SEI message): imageio's quality=9 is crf int(0.1 · 51) = 5
    assert b"x264" in data and b" crf=5.0 " in data and b" rc=crf " in data
    out = emulate.latte_mp4_round_trip(clip)
    assert out.shape == clip.shape and out.dtype == torch.uint8
    with pytest.raises(ValueError, match="multiples of 16"):
        emulate.latte_mp4_round_trip(clip[..., :40])


def test_generated_clips():
    video = torch.from_numpy(_frames(2, 32, 32)).permute(0, 3, 1, 2)[None]  # [1, F, 3, 32, 32]
    assert torch.equal(emulate.generated_clips(video, 16, "none"), resize_short_centre_crop(video, 16))
    # StyleGAN-V's generate.py: every frame saved with q=95 at the generator's size, read back as it is
    sgv = emulate.generated_clips(video, 32, "stylegan-v")
    ref = np.stack([_reference_jpeg(Image.fromarray(f.permute(1, 2, 0).numpy())) for f in video[0]])
    assert np.array_equal(sgv[0].permute(0, 2, 3, 1).numpy(), ref)
    # Latte: a clip read from a video file is the mp4 already; the conversion script follows
    encoded = emulate.generated_clips(video, 16, "latte", encoded=True)
    assert torch.equal(encoded[0], emulate.real_clip(video[0].permute(0, 2, 3, 1).numpy(), 16, "latte"))
    lossless = emulate.generated_clips(video, 16, "latte")  # frames in memory: through the mp4 first
    mp4 = emulate.latte_mp4_round_trip(video[0])
    assert torch.equal(lossless[0], emulate.real_clip(mp4.permute(0, 2, 3, 1).numpy(), 16, "latte"))


def test_real_window_is_minivdits(tmp_path):
    """``emulate`` changes the pixels, not the frames: the window comes from the same ``rng`` draws."""
    from minivdit.data.video import BadVideo

    root = tmp_path / "clip"
    root.mkdir()
    for t in range(12):  # frame t is the constant grey level 10 t
        Image.fromarray(np.full((16, 16, 3), 10 * t, np.uint8)).save(root / f"f_{t}.png")
    source = list_frames(root)
    assert isinstance(source, FrameFolder)
    spec = ClipSpec(num_frames=4, frame_interval=2, image_size=16, flip=False)
    clip = emulate.sample_real_clip(source, spec, np.random.default_rng(5), "cd-fvd")  # 16² in: exact
    idx = clip_indices(12, spec, np.random.default_rng(5))
    assert torch.equal(clip[:, 0, 0, 0], torch.from_numpy(10 * idx).to(torch.uint8))
    with pytest.raises(BadVideo, match="too short"):
        emulate.sample_real_clip(source, ClipSpec(num_frames=7, frame_interval=2), None, "latte")


def test_emulate_flag_of_folders(tmp_path):
    """``python -m minivdit.eval folders --emulate latte``: both sides are prepared as Latte did (its JPEG
    frames; the generated frame folders through its mp4 first), and the record says so."""
    from minivdit.eval.__main__ import main as eval_main

    for side, n in (("real", 6), ("fake", 3)):
        for i in range(n):
            clip = tmp_path / side / f"clip{i:03d}"
            clip.mkdir(parents=True)
            for f, frame in enumerate(_frames(4, 16, 16, seed=10 * n + i)):
                Image.fromarray(frame).save(clip / f"frame_{f}.png")
    args = ["folders", "--real", str(tmp_path / "real"), "--fake", str(tmp_path / "fake"),
            "--metrics", "syn_fvd", "--num-frames", "4", "--resolution", "16", "--num-real", "6",
            "--num-fake", "3"]  # fmt: skip
    plain = eval_main(args + ["--out", str(tmp_path / "plain.json")])
    latte = eval_main(args + ["--emulate", "latte", "--out", str(tmp_path / "latte.json")])
    assert plain["protocol"]["emulate"] == "none" and latte["protocol"]["emulate"] == "latte"
    assert latte["protocol"]["num_fake_used"] == 3 and math.isfinite(latte["syn_fvd"])
    assert latte["syn_fvd"] != plain["syn_fvd"]  # JPEG and mp4 changed the pixels the detector saw
    with pytest.raises(SystemExit):  # tyro refuses a pipeline it does not know
        eval_main(args + ["--emulate", "jpeg"])


def test_cdfvd_pickle_asks_for_its_pipeline(tmp_path, caplog):
    """``--real-stats`` with cd-fvd's pickle: a warning names ``--emulate cd-fvd`` unless it is given; with
    it, the generated clips go through cd-fvd's loader and the record says so."""
    import pickle

    from minivdit.eval.__main__ import main as eval_main

    for i in range(2):
        clip = tmp_path / "fake" / f"clip{i}"
        clip.mkdir(parents=True)
        for f, frame in enumerate(_frames(4, 16, 20, seed=i)):  # 20×16: cd-fvd resizes (ceil) and truncates
            Image.fromarray(frame).save(clip / f"frame_{f}.png")
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(40, 128))  # statistics of 128-d features, the synthetic detector's width
    stats = {"num_items": 40, "raw_mean": feats.sum(0), "raw_cov": feats.T @ feats, "capture_all": False}
    (tmp_path / "ref.pkl").write_bytes(pickle.dumps(stats))
    args = ["folders", "--fake", str(tmp_path / "fake"), "--real-stats", str(tmp_path / "ref.pkl"),
            "--metrics", "syn_fvd", "--num-frames", "4", "--resolution", "16", "--num-fake", "2"]  # fmt: skip
    eval_main(args + ["--out", str(tmp_path / "a.json")])
    assert "--emulate cd-fvd prepares the generated clips" in caplog.text
    caplog.clear()
    out = eval_main(args + ["--emulate", "cd-fvd", "--out", str(tmp_path / "b.json")])
    assert "--emulate cd-fvd prepares" not in caplog.text and out["protocol"]["emulate"] == "cd-fvd"
