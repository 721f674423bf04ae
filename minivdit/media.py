"""Writing videos for people to look at: mp4 (PyAV), gif and png contact sheets (PIL), and grids.

Everything here takes ``uint8`` frames ``[F, H, W, 3]`` (or batches ``[B, F, H, W, 3]``); ``to_uint8``
converts the model's ``[B, F, 3, H, W]`` float videos in ``[-1, 1]`` (DESIGN.md §2) at this boundary.
"""

import math
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

_SEPARATOR = 255  # white: the synthetic and most generated videos are dark, so tiles stay apart


def _check_frames(frames: np.ndarray, ndim: int, layout: str) -> None:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8:
        raise ValueError(
            f"expected a uint8 numpy array {layout}, got {type(frames).__name__} "
            f"{getattr(frames, 'dtype', '')}"
        )
    if frames.ndim != ndim or frames.shape[-1] != 3:
        raise ValueError(f"expected {layout}, got shape {tuple(frames.shape)}")


def to_uint8(video: torch.Tensor | np.ndarray) -> np.ndarray:
    """``[B, F, 3, H, W]`` float in ``[-1, 1]`` -> ``uint8 [B, F, H, W, 3]`` numpy (out-of-range clipped)."""
    if isinstance(video, torch.Tensor):
        video = video.detach().to("cpu", torch.float32).numpy()
    if video.ndim != 5 or video.shape[2] != 3:
        raise ValueError(f"to_uint8 expects [B, F, 3, H, W], got shape {tuple(video.shape)}")
    pixels = np.clip((video.astype(np.float32) + 1.0) * 127.5, 0.0, 255.0).round().astype(np.uint8)
    return np.ascontiguousarray(pixels.transpose(0, 1, 3, 4, 2))


def write_mp4(path: str | Path, frames: np.ndarray, fps: int = 8) -> None:
    """Write ``uint8 [F, H, W, 3]`` frames to an H.264 mp4 (yuv420p), or MPEG-4 part 2 without libx264.

    yuv420p (what every browser and player decodes) needs even sides, so odd sizes are padded by repeating the
    last row / column.
    """
    _check_frames(frames, 4, "[F, H, W, 3]")
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    try:
        av.Codec("libx264", "w")
        codec, options = "libx264", {"crf": "17", "preset": "medium"}  # near-lossless: samples are tiny
    except Exception:  # PyAV builds without GPL codecs; the exception type varies across PyAV versions
        codec, options = "mpeg4", {"qscale": "2"}
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())  # flush the encoder


def write_gif(path: str | Path, frames: np.ndarray, fps: int = 8) -> None:
    """Write ``uint8 [F, H, W, 3]`` frames to a gif that loops forever."""
    _check_frames(frames, 4, "[F, H, W, 3]")
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)


def make_grid(videos: np.ndarray, nrow: int, sep: int = 2) -> np.ndarray:
    """Tile ``uint8 [B, F, H, W, 3]`` videos into one ``[F, H', W', 3]`` video, ``nrow`` videos per row.

    Tiles are separated by ``sep`` white pixels (none around the border):
    ``H' = rows·H + (rows − 1)·sep``, ``W' = cols·W + (cols − 1)·sep`` with ``cols = min(nrow, B)``.
    """
    _check_frames(videos, 5, "[B, F, H, W, 3]")
    if nrow < 1:
        raise ValueError(f"make_grid: nrow must be >= 1, got {nrow}")
    B, F, H, W, _ = videos.shape
    cols, rows = min(nrow, B), math.ceil(B / nrow)
    grid = np.full((F, rows * H + (rows - 1) * sep, cols * W + (cols - 1) * sep, 3), _SEPARATOR, np.uint8)
    for i, video in enumerate(videos):
        y, x = (i // cols) * (H + sep), (i % cols) * (W + sep)
        grid[:, y : y + H, x : x + W] = video
    return grid


def contact_sheet(
    path: str | Path,
    videos: np.ndarray,
    num_frames: int = 8,
    labels: list[str] | None = None,
    scale: int | None = None,
) -> np.ndarray:
    """Save a png with one row per video of ``uint8 [B, F, H, W, 3]``, ``num_frames`` evenly spaced frames.

    Frames are upscaled by ``scale`` with nearest neighbour (default: the smallest integer that makes each
    frame at least 96 px on its short side, so 32×32 samples are glanceable) and separated by 2 white pixels.
    When ``labels`` is given, each row starts with its label on a white strip. Returns the sheet as
    ``uint8 [H', W', 3]``.
    """
    _check_frames(videos, 5, "[B, F, H, W, 3]")
    B, F, H, W, _ = videos.shape
    if labels is not None and len(labels) != B:
        raise ValueError(f"contact_sheet: got {len(labels)} labels for {B} videos")
    if num_frames < 1:
        raise ValueError(f"contact_sheet: num_frames must be >= 1, got {num_frames}")
    if scale is None:
        scale = max(1, math.ceil(96 / min(H, W)))
    elif scale < 1:
        raise ValueError(f"contact_sheet: scale must be >= 1, got {scale}")
    frame_ids = np.linspace(0, F - 1, min(num_frames, F)).round().astype(int)
    picked = videos[:, frame_ids].repeat(scale, axis=2).repeat(scale, axis=3)  # [B, n, H·s, W·s, 3]
    # Swapping B and n makes each sample's row one "frame" of a grid of the n picked frames side by side.
    rows = make_grid(picked.transpose(1, 0, 2, 3, 4), nrow=len(frame_ids))  # [B, H·s, W', 3]
    sheet = make_grid(rows[:, None], nrow=1)[0]  # [B·H·s + (B − 1)·2, W', 3]
    image = Image.fromarray(sheet)
    if labels is not None:
        font = _font(size=max(10, min(16, H * scale // 6)))
        draw = ImageDraw.Draw(image)
        strip = math.ceil(max(draw.textlength(t, font=font) for t in labels)) + 12
        labelled = Image.new("RGB", (strip + image.width, image.height), (255, 255, 255))
        labelled.paste(image, (strip, 0))
        draw = ImageDraw.Draw(labelled)
        row_h = H * scale
        for i, text in enumerate(labels):
            top, bottom = draw.textbbox((0, 0), text, font=font)[1::2]
            y = i * (row_h + 2) + (row_h - top - bottom) // 2  # vertically centred in the row
            draw.text((6, y), text, fill=(0, 0, 0), font=font)
        image = labelled
    image.save(path, format="PNG")
    return np.asarray(image)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # scalable font, Pillow >= 10.1 with FreeType
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()
