"""The reference repositories' own frame pipelines, for numbers comparable with their published tables.

minivdit's pipeline (``Protocol.emulate = "none"``): frames decoded by PyAV, resized in float (bilinear,
antialiased when shrinking; the short side to R, then a centre crop; ``minivdit/data/video.py`` ``to_clip``)
and rounded to uint8; generated clips stay lossless in memory. The references wrote their frames to JPEG files
first, and the generated clips of Latte went through an mp4 before that. ``emulate`` reproduces one of them
on both sides (issue 18 §1.7, §1.8):

``stylegan-v`` (universome/stylegan-v@3fecd69)
    Real: ``src/scripts/convert_videos_to_frames.py:L71-76`` (moviepy decodes): torchvision's
    ``TVF.resize(frame, size=R, interpolation=Image.LANCZOS)`` on the PIL frame (the short side to R, the long
    side ``int(R · long / short)``, truncated; a frame whose short side is R already is left alone), then
    ``TVF.center_crop`` (offset ``int(round((H − R) / 2))``, Python's round-half-even), then
    ``frame.save(path + ".jpg", q=95)``. Pillow reads ``quality``, not ``q`` (``PIL/JpegImagePlugin.py``
    ``_save``: ``info.get("quality", -1)``, -1 being libjpeg's default), so the file is written at quality
    **75** with 4:2:0 chroma (Pillow's documented default). The loader reads the JPEG as it is
    (``src/training/dataset.py:L456-460``, ``np.array(PIL.Image.open(f))``: no resize; the I3D resizes
    inside).
    Generated: ``src/scripts/generate.py`` saves frames through ``src/training/logging.py:L140``,
    ``Image.fromarray(x).save(path, q=95)``: JPEG-75 too, at the generator's size. (StyleGAN-V's in-training
    metrics feed the generator's uint8 frames directly; that is ``none``.)
``latte`` (Vchitect/Latte@b27c24a)
    Real: ``tools/convert_videos_to_frames.py:L71-80``: the centre square of side min(H, W)
    (``TVF.center_crop``, the same rounding), then ``TVF.resize(…, R, LANCZOS)``, then ``save(…, q=95)``:
    JPEG-75.
    Generated: ``sample/sample_ddp.py:L172-176`` rounds ``(x · 0.5 + 0.5) · 255 + 0.5`` (minivdit's
    ``to_uint8`` is the same ``x · 127.5 + 128``, floored) and writes ``imageio.mimwrite(path, fps=8,
    quality=9)``: imageio-ffmpeg's libx264, yuv420p, ``-crf int((1 − 9/10) · 51) = 5``
    (``imageio_ffmpeg/_io.py`` ``write_frames``), x264's default preset (medium); the mp4 is then converted
    like the real videos (decode, square crop, Lanczos, JPEG-75).
``cd-fvd`` (cd-fvd 0.1.1; the published reference statistics, ``--real-stats *.pkl``)
    Real and generated videos go through the same loader, ``cdfvd/utils/data_utils.py:L37-64``
    ``preprocess``: float ``u / 255``, the short side to R with ``F.interpolate(bilinear, align_corners=False,
    antialias=True)`` and the long side rounded **up** (``math.ceil``; minivdit rounds), a centre crop at
    ``(· − R) // 2``; then ``cdfvd/fvd.py:L133,L155``, ``(video · 255).byte()``, **truncates**. On resized
    frames every pixel loses its fractional part: a mean bias of about −0.4 grey levels against rounding
    (−0.35 to −0.44 measured below, pixels whose value was exact lose nothing; an unresized frame comes back
    exactly, ``k / 255 · 255`` round-trips in float32). minivdit's own statistics are therefore not
    comparable with cd-fvd's published pickles unless both sides go through this pipeline.

Mean |Δ| against minivdit's pipeline, in grey levels, on a synthetic 320×240 clip resized to 256² (colour
gradients and a moving sharp-edged disc, without / with a blurred noise texture of σ 12;
``python -m minivdit.eval.emulate``; generated = a 256² clip through the reference's sample path):

    texture σ   real / generated:  stylegan-v     latte          cd-fvd
    0                              1.63 / 1.64    1.83 / 2.25    0.83 / 0.00
    12                             4.37 / 4.39    4.69 / 4.77    2.02 / 0.00

cd-fvd leaves a 256² generated clip exactly as it is; its truncation costs −0.35 / −0.44 levels on
average against rounding the same resize.

Deviations (all from running elsewhere than the references did, none by choice):

- Decoding: PyAV, where moviepy pipes the ffmpeg CLI and cd-fvd uses torchvision's PyAV reader; all convert
  yuv → rgb24 with libswscale, bit-equality unverified.
- The mp4: PyAV's libx264 with ``crf=5, preset=medium``, where imageio pipes rgb24 frames into the ffmpeg CLI;
  the rgb → yuv420p conversion (libswscale flags) and the x264 build may differ by a grey level in chroma.
  Sides must be multiples of 16 (imageio would rescale others to the next multiple, ``macro_block_size``);
  other sizes raise. A generated *file* (``folders --fake`` videos) is taken as that mp4 and not re-encoded.
- JPEG: the installed Pillow's libjpeg(-turbo); the references' versions are unrecorded.
- StyleGAN-V's generated frames are saved at the generator's size and read unresized; minivdit's detectors
  take R×R clips, so generated clips of another size are resized by minivdit's pipeline after the JPEG step.
- The built-in synthetic dataset renders its real clips instead of reading files: ``emulate`` leaves them as
  they are and would change only the generated side, so it is not meant for the synthetic protocol.

Axis legend: B clips, F frames, C = 3 channels, H/W pixels, R the protocol's resolution.
"""

from __future__ import annotations

import io
import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from PIL import Image
from torch import Tensor

Emulation = Literal["none", "stylegan-v", "latte", "cd-fvd"]
EMULATIONS: tuple[str, ...] = ("none", "stylegan-v", "latte", "cd-fvd")

JPEG_QUALITY = 75
"""What ``save(…, q=95)`` writes: Pillow ignores ``q`` and uses libjpeg's default quality, 75."""
LATTE_MP4 = {"fps": 8, "crf": 5}
"""Latte's ``imageio.mimwrite(fps=8, quality=9)``: libx264 yuv420p at crf ``int((1 − 0.9) · 51)`` = 5."""
MACRO_BLOCK = 16  # imageio-ffmpeg's macro_block_size: other sides are rescaled by imageio before encoding


def check_mode(mode: str) -> None:
    """``ValueError`` unless ``mode`` is one of ``EMULATIONS``."""
    if mode not in EMULATIONS:
        raise ValueError(f"emulate: unknown pipeline {mode!r}; choose from {EMULATIONS}")


# ------------------------------------------------------------------------------------------ single frames


def tv_resize_short(img: Image.Image, size: int) -> Image.Image:
    """torchvision ``TVF.resize(img, size, interpolation=Image.LANCZOS)`` on a PIL image: the short side to
    ``size``, the long side ``int(size · long / short)`` (``_compute_resized_output_size`` truncates); a frame
    whose short side is ``size`` already is returned as it is."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    if short == size:
        return img
    new_long = int(size * long / short)
    return img.resize((size, new_long) if w <= h else (new_long, size), Image.LANCZOS)


def tv_center_crop(img: Image.Image, side: int) -> Image.Image:
    """torchvision ``TVF.center_crop(img, (side, side))`` on a PIL image at least ``side`` on each side: the
    offsets are ``int(round((H − side) / 2))`` (Python rounds halves to even)."""
    w, h = img.size
    if min(w, h) < side:
        raise ValueError(f"tv_center_crop: a {w}×{h} frame is smaller than the {side}×{side} crop")
    top, left = int(round((h - side) / 2.0)), int(round((w - side) / 2.0))
    return img.crop((left, top, left + side, top + side))


def jpeg_round_trip(img: Image.Image) -> np.ndarray:
    """The frame written as the references' ``.jpg`` (quality 75, Pillow's other defaults: 4:2:0 chroma, no
    optimisation) and read back with ``PIL.Image.open``: uint8 ``[H, W, 3]``."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    buf.seek(0)
    with Image.open(buf) as decoded:
        return np.asarray(decoded.convert("RGB")).copy()


def convert_frame(frame: np.ndarray, size: int, mode: Emulation) -> np.ndarray:
    """One uint8 ``[H, W, 3]`` frame through the reference's ``convert_videos_to_frames.py`` (``stylegan-v``:
    Lanczos short side then centre crop; ``latte``: centre square then Lanczos), JPEG-75 included →
    ``[size, size, 3]``."""
    img = Image.fromarray(np.ascontiguousarray(frame))
    if mode == "stylegan-v":
        img = tv_center_crop(tv_resize_short(img, size), size)
    elif mode == "latte":
        img = tv_resize_short(tv_center_crop(img, min(img.size)), size)
    else:
        raise ValueError(f"convert_frame: {mode!r} has no frame-conversion script (stylegan-v, latte)")
    return jpeg_round_trip(img)


# ------------------------------------------------------------------------------------------------- clips


def cdfvd_resize(video: Tensor, size: int, *, truncate: bool = True) -> Tensor:
    """cd-fvd's loader: uint8 ``[F, 3, H, W]`` → uint8 ``[F, 3, size, size]`` (``preprocess``: bilinear with
    antialias on ``u / 255``, the long side rounded up, crop at ``// 2``; then ``(· 255).byte()``).
    ``truncate=False`` rounds instead (not cd-fvd: to measure what the truncation costs)."""
    x = video.float() / 255.0  # cd-fvd: ``video.permute(0, 3, 1, 2).float() / 255.``
    H, W = x.shape[-2:]
    scale = size / min(H, W)
    target = (size, math.ceil(W * scale)) if H < W else (math.ceil(H * scale), size)
    x = F.interpolate(x, size=target, mode="bilinear", align_corners=False, antialias=True)
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    x = x[..., top : top + size, left : left + size]
    x = x * 255
    return (x if truncate else x.round()).to(torch.uint8)  # ``.byte()``: truncation toward zero, x >= 0


def latte_mp4_round_trip(video: Tensor) -> Tensor:
    """uint8 ``[F, 3, H, W]`` written as Latte's sampler writes its mp4 (libx264, yuv420p, crf 5, 8 fps) and
    decoded again."""
    import av

    from minivdit.data.shards import decode_mp4, encode_mp4

    H, W = video.shape[-2:]
    if H % MACRO_BLOCK or W % MACRO_BLOCK:
        raise ValueError(
            f"emulate latte: {H}×{W} clips; imageio rescales sides that are not multiples of {MACRO_BLOCK} "
            f"before encoding, which is not emulated (Latte's sizes are 256 and 512)"
        )
    try:
        av.Codec("libx264", "w")
    except Exception as e:  # PyAV builds without GPL codecs; the exception type varies across versions
        raise ValueError(f"emulate latte: this PyAV has no libx264 encoder, Latte's mp4 codec ({e})") from e
    frames = video.numpy()
    data = encode_mp4(frames, crf=LATTE_MP4["crf"], fps=LATTE_MP4["fps"])
    return torch.from_numpy(decode_mp4(data, frames.shape, where="emulate latte"))


def real_clip(frames: np.ndarray, size: int, mode: Emulation) -> Tensor:
    """Decoded real frames, uint8 ``[F, H, W, 3]``, through the reference's preparation → uint8
    ``[F, 3, size, size]``, the detectors' input."""
    check_mode(mode)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"real_clip: frames must be uint8 [F, H, W, 3], got {frames.dtype} {frames.shape}")
    if mode == "cd-fvd":
        video = rearrange(torch.from_numpy(np.ascontiguousarray(frames)), "f h w c -> f c h w")
        return cdfvd_resize(video, size)
    if mode == "none":
        raise ValueError("real_clip: 'none' is minivdit's own pipeline (minivdit.data.video.sample_clip)")
    out = np.stack([convert_frame(f, size, mode) for f in frames])  # [F, size, size, 3]
    return rearrange(torch.from_numpy(out), "f h w c -> f c h w").contiguous()


def generated_clips(video: Tensor, size: int, mode: Emulation, *, encoded: bool = False) -> Tensor:
    """Generated uint8 clips ``[B, F, 3, H, W]`` → ``[B, F, 3, size, size]`` as the reference prepared its
    samples (``none``: minivdit's resize only). ``encoded``: the clips were read from video files, which
    stand for Latte's mp4 (not encoded again)."""
    from minivdit.eval.detector import resize_short_centre_crop

    check_mode(mode)
    if video.dtype != torch.uint8 or video.ndim != 5 or video.shape[2] != 3:
        raise ValueError(f"generated_clips: expected uint8 [B, F, 3, H, W], got {video.dtype} {video.shape}")
    if mode == "none":
        return resize_short_centre_crop(video, size)
    if mode == "cd-fvd":
        return torch.stack([cdfvd_resize(clip, size) for clip in video])
    out = []
    for clip in video.cpu():  # [F, 3, H, W]
        if mode == "latte" and not encoded:
            clip = latte_mp4_round_trip(clip)
        frames = rearrange(clip, "f c h w -> f h w c").numpy()
        if mode == "latte":
            out.append(real_clip(frames, size, "latte"))
        else:  # StyleGAN-V's generate.py: JPEG at the generator's size, read back unresized
            jpeg = np.stack([jpeg_round_trip(Image.fromarray(np.ascontiguousarray(f))) for f in frames])
            out.append(rearrange(torch.from_numpy(jpeg), "f h w c -> f c h w"))
    return resize_short_centre_crop(torch.stack(out), size)


def sample_real_clip(source, spec, rng: np.random.Generator, mode: Emulation) -> Tensor:
    """``minivdit.data.video.sample_clip`` with the reference's preparation instead of minivdit's: the same
    window from ``rng`` (so ``emulate`` changes the pixels, not the frames), read at the source's size, →
    uint8 ``[F, 3, R, R]``. ``BadVideo`` as ``sample_clip``."""
    from minivdit.data import frame_size
    from minivdit.data.video import (
        BadVideo,
        FrameFolder,
        clip_indices,
        num_frames,
        read_folder_frames,
        read_frames,
        source_path,
    )

    total = num_frames(source)
    if total < spec.span:
        raise BadVideo(
            source_path(source),
            f"too short: {total} frames < {spec.span} needed for {spec.num_frames} frames at interval "
            f"{spec.frame_interval}",
        )
    idx = clip_indices(total, spec, rng)
    frames = read_folder_frames(source, idx) if isinstance(source, FrameFolder) else read_frames(source, idx)
    h, w = frame_size(spec.image_size)
    if h != w:
        raise ValueError(f"emulate {mode}: the references make square frames, not {spec.image_size}")
    return real_clip(frames, h, mode)


# ------------------------------------------------------------------------------------------- measurement


def synthetic_frames(texture: float, num_frames: int = 16, seed: int = 0) -> np.ndarray:
    """A 320×240 test clip, uint8 ``[F, H, W, 3]``: smooth colour gradients, a moving disc with sharp edges
    and, with ``texture`` > 0, a blurred noise texture of that standard deviation in grey levels (the three
    things resampling and JPEG treat differently)."""
    from PIL import ImageFilter

    rng = np.random.default_rng(seed)
    height, width = 240, 320
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width, y / height, 0.5 + 0.5 * np.sin(x / 17 + y / 23)], -1) * 200 + 20
    noise = np.clip(rng.normal(128, 32, (height, width, 3)), 0, 255).astype(np.uint8)
    noise = np.asarray(Image.fromarray(noise).filter(ImageFilter.GaussianBlur(1.5)), np.float32)
    base = base + (noise - noise.mean()) / noise.std() * texture
    frames = []
    for t in range(num_frames):
        cx, cy = width * (0.3 + 0.02 * t), height * (0.5 + 0.01 * t)
        disc = ((x - cx) ** 2 + (y - cy) ** 2 < (height / 5) ** 2)[..., None]
        frames.append(np.where(disc, np.array([230.0, 40.0, 60.0]), base))
    return np.clip(np.stack(frames), 0, 255).round().astype(np.uint8)


def pipeline_difference(frames: np.ndarray, size: int) -> dict[str, float]:
    """Mean |Δ| in grey levels between minivdit's pipeline and each emulation, for the real frames
    ``frames`` (uint8 ``[F, H, W, 3]``) and for a generated clip (minivdit's real clip standing in for a
    sample at ``size``); and cd-fvd's mean signed truncation bias (truncated − rounded, same resize)."""
    from minivdit.data.video import to_clip

    ours = (to_clip(frames, size) * 127.5 + 128).clamp(0, 255).to(torch.uint8)  # evaluate.to_uint8
    out = {}
    for mode in ("stylegan-v", "latte", "cd-fvd"):
        out[f"real {mode}"] = (real_clip(frames, size, mode).float() - ours.float()).abs().mean().item()
        gen = generated_clips(ours[None], size, mode)[0]
        out[f"generated {mode}"] = (gen.float() - ours.float()).abs().mean().item()
    video = rearrange(torch.from_numpy(frames), "f h w c -> f c h w")
    bias = cdfvd_resize(video, size).float() - cdfvd_resize(video, size, truncate=False).float()
    out["cd-fvd truncation bias"] = bias.mean().item()
    return out


def main() -> None:
    """``python -m minivdit.eval.emulate``: the figures of the module docstring (a synthetic 320×240 clip
    to 256², without and with texture)."""
    for texture in (0.0, 12.0):
        print(f"texture {texture:g} grey levels:")
        for k, v in pipeline_difference(synthetic_frames(texture), 256).items():
            print(f"  {k:24s} {v:+.2f}")


if __name__ == "__main__":
    main()
