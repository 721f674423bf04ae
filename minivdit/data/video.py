"""Decoding and clip sampling shared by the real datasets (UCF-101, SkyTimelapse, FaceForensics, folders).

A *source* is a video file (any container PyAV opens) or a frame folder (``FrameFolder``: image files sorted
by the last number in their names). ``sample_clip(source, spec, rng)`` picks ``F`` frame indices
(``clip_indices``), reads only those frames and returns ``[F, 3, H, W]`` float32 in ``[-1, 1]``
(``spec.image_size``: a square side or ``(H, W)``). ``spec.sampling`` says how the indices are picked:

- "interval" (Latte): ``F`` frames ``frame_interval`` apart from a start uniform over the video, which must
  hold the span ``(F - 1) · frame_interval + 1`` (shorter sources are skipped);
- "fps" (CogVideoX SAT, ``sat/data_video.py``): the clip resampled to ``spec.fps`` frames per second of the
  video's own rate. As SAT's ``load_video`` (its pretraining loader), the clip spans
  ``m = ⌊F · native_fps / fps⌋`` native frames and frame ``k`` is ``start + ⌊k·m/F⌋`` (exact integer
  arithmetic: SAT's float ``np.arange`` can round an exact integer down by one). The start is
  ``skip_frames`` (SAT's ``SFTDataset``: ``skip_frms_num`` 3) or, with ``random_start``, uniform over the room
  left (``load_video``). A video with fewer frames than the clip spans is padded with its last frame (SAT's
  ``pad_last_frame``). Deviations from SAT's fine-tuning ``SFTDataset``: it steps by the integer
  ``⌊m/F⌋`` frames (10 fps from a 30 fps video, 8.3 from 25), and a video shorter than the clip's span is
  spaced evenly instead of padded. Frame folders have no rate: ``BadVideo``;
- "even" (CogVideo ``finetune/datasets/utils.py``, ``preprocess_video_with_resize``): ``F`` frames spaced
  evenly over the whole video (after ``skip_frames`` at each end), ``⌊N/F⌋`` apart from the first, as there;
  a video of fewer than ``F`` frames gives all of them, padded with the last.

``skip_frames`` frames are left out at both ends in every mode (SAT: "avoiding transitions"); padding repeats
the last frame that is not skipped. Several ``spec.fps`` values list every source once per rate
(``ClipDataset``: index ``i`` is source ``i // K`` at rate ``i % K``): the dREPA blog's subclips "at three
different time intervals as data augmentation" (seeds/000, "Dataset Curation"; the blog does not give the
intervals).

Decoding only what is needed (Latte decodes the whole file for every sample):

- ``probe(path)`` demuxes the file once (packets only, no decoding) and records the presentation timestamp of
  every frame and which frames are keyframes. Frame ``i`` is the ``i``-th smallest pts, so the index ↔ pts
  map does not rely on the container's frame count, frame rate or duration fields (AVI headers, MKV/WebM
  without counts, variable frame rates, B-frame reordering). Reading the packets costs one pass over the file
  (no decoding: ~4 ms for 10 s of 320×240 AVI); the result (8 bytes per frame) is cached in memory per
  ``(path, size, mtime)``. A file whose packets carry no timestamps falls back to counting decoded frames
  once (read sequentially from then on). A damaged packet (short read of a truncated file) or an MP4 with
  fewer packets than its sample table makes the file bad.
- ``read_frames(path, indices)`` seeks to the last keyframe at or before the first wanted frame, decodes
  forward, converts to RGB only the wanted frames, tells the decoder to drop non-reference frames it does not
  need, and stops after the last wanted frame. Every read is verified (each wanted pts must come out of the
  decoder); when a seek lands late or a frame is missing it retries from the stream start, then by counting
  decoded frames, and finally raises ``BadVideo``.

Broken inputs (missing, empty, corrupt, truncated, too short, unreadable frames) raise ``BadVideo`` with the
path. ``ClipDataset.get`` catches it, records the path, and deterministically draws a replacement index from
the sample's ``rng`` (exact resume still holds); the loader logs the skipped paths once per epoch.
``STATS`` counts files opened, seeks and frames decoded / converted (tests and ``tools/bench.py decode``).
"""

from __future__ import annotations

import csv
import logging
import math
import os
import re
from collections import OrderedDict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, fields
from typing import Literal

import av
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from minivdit.data import frame_size
from minivdit.data.buckets import BucketedIndex

logger = logging.getLogger("minivdit")

VIDEO_EXTS = frozenset({".avi", ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".mpg", ".mpeg", ".flv", ".wmv"})
IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
DATASETS_HELP = "see README, section Datasets"

Resize = Literal["short_side_crop", "crop_resize"]
Sampling = Literal["interval", "fps", "even"]
SAMPLINGS = ("interval", "fps", "even")


class BadVideo(ValueError):
    """A video or frame folder that cannot give a clip: ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"{os.fspath(path)}: {reason}")
        self.path, self.reason = os.fspath(path), reason

    def __reduce__(self):  # picklable across DataLoader workers
        return BadVideo, (self.path, self.reason)


@dataclass
class DecodeStats:
    """Process-wide counters (``STATS``): what the readers actually did. ``reset()`` zeroes them."""

    files_opened: int = 0
    probes: int = 0
    seeks: int = 0
    frames_decoded: int = 0
    """Frames that came out of a decoder (video files) or were read from disk (frame folders)."""
    frames_converted: int = 0
    """Frames converted to RGB arrays (only the wanted ones)."""
    fallbacks: int = 0
    """Reads that had to retry from the stream start or by counting frames."""

    def reset(self) -> None:
        for f in fields(self):
            setattr(self, f.name, 0)


STATS = DecodeStats()

# ---------------------------------------------------------------------------------------------- probing


@dataclass(frozen=True)
class VideoInfo:
    """What ``probe`` learned about a video file (cached per file)."""

    num_frames: int
    fps: float | None
    width: int
    height: int
    pts: np.ndarray | None
    """Sorted presentation timestamps, one per frame, in the stream's time base; None when the packets carry
    none (frames are then counted in decode order)."""
    keyframes: np.ndarray | None
    """Sorted frame indices of the keyframes (seek points, always including 0); None when ``pts`` is."""


_PROBE_CACHE: OrderedDict[tuple, VideoInfo | BadVideo] = OrderedDict()
_PROBE_CACHE_SIZE = 200_000


def _open(path: str):
    STATS.files_opened += 1
    container = av.open(path)
    if not container.streams.video:
        container.close()
        raise BadVideo(path, "no video stream")
    return container, container.streams.video[0]


def probe(path: str | os.PathLike) -> VideoInfo:
    """Frame count, rate, size and the frame ↔ pts map of a video file; ``BadVideo`` if it has no frames.

    Cached (failures too) per ``(path, size, mtime)``, so a file changed on disk is probed again.
    """
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except OSError as e:
        raise BadVideo(path, f"cannot stat ({e.strerror})") from None
    key = (path, st.st_size, st.st_mtime_ns)
    hit = _PROBE_CACHE.get(key)
    if hit is None:
        try:
            hit = _probe(path, st.st_size)
        except BadVideo as e:
            hit = e
        _PROBE_CACHE[key] = hit
        if len(_PROBE_CACHE) > _PROBE_CACHE_SIZE:
            _PROBE_CACHE.popitem(last=False)
    if isinstance(hit, BadVideo):
        raise BadVideo(hit.path, hit.reason)
    return hit


def _probe(path: str, size: int) -> VideoInfo:
    STATS.probes += 1
    if size == 0:
        raise BadVideo(path, "empty file (0 bytes)")
    try:
        container, stream = _open(path)
        with container:
            rate = stream.average_rate or stream.guessed_rate
            fps = float(rate) if rate else None
            width, height = stream.codec_context.width, stream.codec_context.height
            stamps, keys, untimed = [], [], False
            for packet in container.demux(stream):
                if packet.size == 0 or packet.is_discard:  # end-of-stream flush; edit-list pre-roll
                    continue
                if packet.is_corrupt:  # a short read (truncated file) or a damaged packet
                    raise BadVideo(path, f"truncated or corrupt: packet {len(stamps)} is damaged")
                t = packet.pts if packet.pts is not None else packet.dts
                untimed |= t is None
                stamps.append(-1 if t is None else t)
                keys.append(packet.is_keyframe)
            if not stamps:
                raise BadVideo(path, "no video frames")
            declared = stream.frames  # exact in MP4/MOV sample tables; AVI headers are less trustworthy
            if "mp4" in container.format.name and 0 < len(stamps) < declared:
                raise BadVideo(path, f"truncated: {len(stamps)} of the {declared} frames in its index")
            pts = np.asarray(stamps, np.int64)
            order = np.argsort(pts, kind="stable")
            pts = pts[order]
            if untimed or (np.diff(pts) <= 0).any():
                # Timestamps missing or repeated: count the frames the decoder really gives, once.
                n = sum(1 for _ in _decode_all(path))
                if n == 0:
                    raise BadVideo(path, "no decodable frames")
                return VideoInfo(n, fps, width, height, None, None)
            keyframes = np.flatnonzero(np.asarray(keys)[order])
            if keyframes.size == 0 or keyframes[0] != 0:
                keyframes = np.concatenate([[0], keyframes])
            return VideoInfo(len(pts), fps, width, height, pts, keyframes.astype(np.int32))
    except BadVideo:
        raise
    except (av.FFmpegError, EOFError, OSError, ValueError, IndexError) as e:
        raise BadVideo(path, f"cannot read ({_why(e)})") from None


def _why(e: Exception) -> str:
    """The error without the file name (``BadVideo`` names the file)."""
    return f"{type(e).__name__}: {getattr(e, 'strerror', None) or e}"


def _decode_all(path: str):
    """Every decoded frame of the first video stream, in order (used to count frames)."""
    container, stream = _open(path)
    with container:
        for frame in container.decode(stream):
            STATS.frames_decoded += 1
            yield frame


# ---------------------------------------------------------------------------------------------- reading


def read_frames(path: str | os.PathLike, indices: Sequence[int]) -> np.ndarray:
    """Frames ``indices`` (strictly increasing, 0-based) of a video file as uint8 ``[n, H, W, 3]`` RGB.

    Decodes from the last keyframe at or before ``indices[0]`` to ``indices[-1]`` and no further.
    """
    path = os.fspath(path)
    idx = np.asarray(indices, np.int64)
    if idx.ndim != 1 or idx.size == 0 or (np.diff(idx) <= 0).any():
        raise ValueError(f"read_frames: indices must be a non-empty increasing list, got {list(idx)}")
    info = probe(path)
    if idx[0] < 0 or idx[-1] >= info.num_frames:
        raise BadVideo(path, f"frames {idx[0]}..{idx[-1]} requested, the video has {info.num_frames}")
    try:
        if info.pts is not None:
            got = _read_by_pts(path, info, idx, from_start=False)
            if got is None:  # a seek landed late or a frame did not come out: read from the start
                STATS.fallbacks += 1
                got = _read_by_pts(path, info, idx, from_start=True)
            if got is not None:
                return got
            STATS.fallbacks += 1
        got = _read_by_count(path, idx)
    except BadVideo:
        raise
    except (av.FFmpegError, EOFError, OSError, ValueError) as e:
        raise BadVideo(path, f"decoding failed ({_why(e)})") from None
    if got is None:
        raise BadVideo(path, f"truncated or corrupt: frame {idx[-1]} of {info.num_frames} does not decode")
    return got


def _read_by_pts(path: str, info: VideoInfo, idx: np.ndarray, from_start: bool) -> np.ndarray | None:
    wanted_pts = info.pts[idx]
    slot = {int(p): i for i, p in enumerate(wanted_pts)}
    first, last = int(wanted_pts[0]), int(wanted_pts[-1])
    out: list[np.ndarray | None] = [None] * len(idx)
    remaining = len(idx)
    container, stream = _open(path)
    with container:
        cc = stream.codec_context
        k = int(info.keyframes[np.searchsorted(info.keyframes, idx[0], side="right") - 1])
        if not from_start and k > 0:
            STATS.seeks += 1
            container.seek(int(info.pts[k]), stream=stream, backward=True)
        skipping = None
        for packet in container.demux(stream):
            # A non-reference frame that is not wanted can be dropped: nothing decodes from it.
            skip = packet.pts is not None and packet.pts not in slot
            if skip is not skipping:
                cc.skip_frame = "NONREF" if skip else "DEFAULT"
                skipping = skip
            for frame in packet.decode():
                STATS.frames_decoded += 1
                if frame.pts is None:
                    return None
                if frame.pts < first:
                    continue
                i = slot.get(frame.pts)
                if i is not None and out[i] is None:
                    out[i] = frame.to_ndarray(format="rgb24")
                    STATS.frames_converted += 1
                    remaining -= 1
                    if remaining == 0:
                        return np.stack(out)
                if frame.pts >= last:
                    return None
    return None


def _read_by_count(path: str, idx: np.ndarray) -> np.ndarray | None:
    """Frame ``i`` is the ``i``-th frame the decoder gives, reading from the start."""
    want = {int(i): j for j, i in enumerate(idx)}
    out: list[np.ndarray | None] = [None] * len(idx)
    for n, frame in enumerate(_decode_all(path)):
        j = want.get(n)
        if j is not None:
            out[j] = frame.to_ndarray(format="rgb24")
            STATS.frames_converted += 1
        if n >= idx[-1]:
            return np.stack(out)
    return None


def read_all_frames(path: str | os.PathLike) -> np.ndarray:
    """Every frame as uint8 ``[T, H, W, 3]``: Latte's ``read_video`` way (the benchmark's reference)."""
    frames = []
    for frame in _decode_all(os.fspath(path)):
        frames.append(frame.to_ndarray(format="rgb24"))
        STATS.frames_converted += 1
    return np.stack(frames)


# ---------------------------------------------------------------------------------------------- frame folders


@dataclass(frozen=True, eq=False)
class FrameFolder:
    """A clip stored as one image per frame in the folder ``path``.

    ``names`` holds the file names in frame order as one bytes array (not a tuple of ``str``): a dataset of a
    million frames then costs a few bytes per frame and one object per clip in every loader worker.
    """

    path: str
    names: np.ndarray

    def __len__(self) -> int:
        return len(self.names)

    def file(self, i: int) -> str:
        """Full path of frame ``i``."""
        return os.path.join(self.path, os.fsdecode(self.names[i]))


_DIGITS = re.compile(r"\d+")


def list_frames(folder: str | os.PathLike) -> FrameFolder:
    """The images of ``folder`` sorted by the last number in their names (``img_10.jpg`` after
    ``img_9.jpg``, as Latte's ``int(name.split('_')[-1])``). A name without digits or two frames with the
    same number raise ``ValueError`` naming the folder and the files."""
    folder = os.fspath(folder)
    numbered = []
    for name in os.listdir(folder):
        stem, ext = os.path.splitext(name)
        if ext.lower() not in IMAGE_EXTS or name.startswith("."):
            continue
        digits = _DIGITS.findall(stem)
        if not digits:
            raise ValueError(
                f"frame folder {folder}: frame {name!r} has no number in its name; frames are ordered by the "
                f"last number in their names ({DATASETS_HELP})"
            )
        numbered.append((int(digits[-1]), name))
    numbered.sort()
    for (a, name_a), (b, name_b) in zip(numbered, numbered[1:], strict=False):
        if a == b:
            raise ValueError(
                f"frame folder {folder}: frames {name_a!r} and {name_b!r} have the same number {a}"
            )
    return FrameFolder(folder, np.array([os.fsencode(name) for _, name in numbered], dtype=np.bytes_))


def read_folder_frames(clip: FrameFolder, indices: Sequence[int]) -> np.ndarray:
    """Frames ``indices`` of a frame folder as uint8 ``[n, H, W, 3]`` RGB; only those files are read."""
    frames = []
    for i in indices:
        if not 0 <= i < len(clip):
            raise BadVideo(clip.path, f"frame {i} requested, the folder has {len(clip)}")
        try:
            with Image.open(clip.file(i)) as im:
                frames.append(np.asarray(im.convert("RGB")))
        except (OSError, ValueError, SyntaxError) as e:
            raise BadVideo(clip.path, f"cannot read frame {clip.file(i)} ({type(e).__name__}: {e})") from None
        STATS.frames_decoded += 1
        STATS.frames_converted += 1
    if len({f.shape for f in frames}) > 1:
        raise BadVideo(clip.path, f"frame sizes differ: {sorted({f.shape for f in frames})}")
    return np.stack(frames)


# ---------------------------------------------------------------------------------------------- clips

Source = str | FrameFolder


def source_path(source: Source) -> str:
    return source.path if isinstance(source, FrameFolder) else source


def num_frames(source: Source) -> int:
    """Frames in a video file (probed, cached) or a frame folder."""
    return len(source) if isinstance(source, FrameFolder) else probe(source).num_frames


@dataclass(frozen=True)
class ClipSpec:
    """How clips are cut from a source (the module docstring: the sampling modes)."""

    num_frames: int = 16
    frame_interval: int = 3
    """"interval" sampling: the stride between frames."""
    image_size: int | tuple[int, int] = 256
    """Side of square frames, or ``(H, W)``."""
    resize: Resize = "short_side_crop"
    flip: bool = True
    sampling: Sampling = "interval"
    """"interval", "fps" or "even" (module docstring)."""
    fps: tuple[float, ...] = (8.0,)
    """"fps" sampling: the frame rate(s) clips are resampled to; several list every source once per rate."""
    skip_frames: int = 0
    """Frames left out at each end of a source (SAT: 3)."""
    random_start: bool = True
    """"interval" and "fps": a start uniform over the room left; False: start at ``skip_frames`` (SAT's
    ``SFTDataset``). "interval" always draws it (Latte)."""
    crop: Literal["center", "random"] = "center"
    """Where the resized frame is cropped: the centre, or a position drawn from the sample's rng (buckets:
    ``BucketConfig.crop``)."""

    def __post_init__(self):
        for name in ("num_frames", "frame_interval"):
            if getattr(self, name) < 1:
                raise ValueError(f"ClipSpec.{name} must be >= 1, got {getattr(self, name)}")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"ClipSpec.sampling must be one of {SAMPLINGS}, got {self.sampling!r}")
        if not self.fps or not all(math.isfinite(r) and r > 0 for r in self.fps):
            raise ValueError(f"ClipSpec.fps must be one or more positive rates, got {self.fps!r}")
        if self.skip_frames < 0:
            raise ValueError(f"ClipSpec.skip_frames must be >= 0, got {self.skip_frames}")
        frame_size(self.image_size)
        if self.resize not in ("short_side_crop", "crop_resize"):
            raise ValueError(
                f"ClipSpec.resize must be 'short_side_crop' or 'crop_resize', got {self.resize!r}"
            )
        if self.crop not in ("center", "random"):
            raise ValueError(f"ClipSpec.crop must be 'center' or 'random', got {self.crop!r}")

    @property
    def span(self) -> int:
        """Frames a clip covers: ``(F - 1) · frame_interval + 1``; shorter sources are skipped.

        Latte's UCF/FFS loaders take an ``F · interval`` window and ``linspace`` F frames in it (strides of
        3 or 4 for 16 × 3); its Sky loader and this one use the exact stride."""
        return (self.num_frames - 1) * self.frame_interval + 1

    @property
    def variants(self) -> int:
        """Clips listed per source: one per rate of ``fps`` ("fps" sampling), else 1."""
        return len(self.fps) if self.sampling == "fps" else 1

    @property
    def min_frames(self) -> int:
        """Frames a source needs: the span and both skips ("interval"), else one frame after the skips (the
        rest is padded)."""
        return 2 * self.skip_frames + (self.span if self.sampling == "interval" else 1)

    def needs(self) -> str:
        """What ``min_frames`` is made of, in words."""
        what = f"{self.num_frames} frames at interval {self.frame_interval}"
        what = what if self.sampling == "interval" else "one frame"
        return what + (f" after skipping {self.skip_frames} at each end" if self.skip_frames else "")

    def why_short(self, total: int) -> str:
        """Why a source of ``total`` frames (< ``min_frames``) gives no clip."""
        return f"too short: {total} frames < {self.min_frames} needed for {self.needs()}"


def clip_indices(
    total: int,
    spec: ClipSpec,
    rng: np.random.Generator,
    *,
    native_fps: float | None = None,
    fps: float | None = None,
) -> np.ndarray:
    """``F`` frame indices (non-decreasing; padding repeats the last) of a source of ``total`` frames under
    ``spec.sampling`` (module docstring). "fps" needs the source's ``native_fps`` and the target ``fps``
    (default ``spec.fps[0]``). The start is drawn from ``rng`` when the mode draws one."""
    F, skip = spec.num_frames, spec.skip_frames
    if total < spec.min_frames:
        raise ValueError(f"clip_indices: {spec.why_short(total)}")
    end = total - skip  # one past the last usable frame
    if spec.sampling == "interval":
        start = int(rng.integers(skip, end - spec.span + 1))
        return start + spec.frame_interval * np.arange(F)
    if spec.sampling == "even":  # CogVideo finetune/: range(0, N, N // F)[:F], padded with the last frame
        n = end - skip
        return skip + (np.arange(F) * (n // F) if n >= F else np.minimum(np.arange(F), n - 1))
    if native_fps is None or not native_fps > 0:
        raise ValueError(f"clip_indices: 'fps' sampling needs the source's frame rate, got {native_fps}")
    rate = spec.fps[0] if fps is None else fps
    m = math.floor(F * native_fps / rate)  # native frames the clip spans (SAT: end - start)
    room = max(0, end - skip - m)
    start = skip + (int(rng.integers(0, room + 1)) if spec.random_start else 0)
    idx = start + (np.arange(F) * m) // F  # SAT: np.arange(start, end, (end - start) / F).astype(int)
    return np.minimum(idx, end - 1)  # past the end: the last frame again (SAT's pad_last_frame)


def sample_clip(source: Source, spec: ClipSpec, rng: np.random.Generator, *, variant: int = 0) -> Tensor:
    """A clip of ``source`` as float32 ``[F, 3, H, W]`` in ``[-1, 1]`` (indices, then flip, from ``rng``);
    ``variant`` picks the rate of ``spec.fps`` ("fps" sampling). ``BadVideo`` if the source is unreadable,
    shorter than ``spec.min_frames``, or has no frame rate for "fps" sampling."""
    path = source_path(source)
    total = num_frames(source)
    if total < spec.min_frames:
        raise BadVideo(path, spec.why_short(total))
    native = None
    if spec.sampling == "fps":
        native = None if isinstance(source, FrameFolder) else probe(source).fps
        if not native:
            raise BadVideo(path, "no frame rate (a frame folder, or none in its container): 'fps' sampling")
    idx = clip_indices(total, spec, rng, native_fps=native, fps=spec.fps[variant])
    read, expand = np.unique(idx, return_inverse=True)  # the readers take each frame once, increasing
    reader = read_folder_frames if isinstance(source, FrameFolder) else read_frames
    frames = reader(source, read)[expand]  # [F, H, W, 3], repeated frames copied
    flip = bool(spec.flip and rng.random() < 0.5)
    anchor = (float(rng.random()), float(rng.random())) if spec.crop == "random" else None
    return to_clip(frames, spec.image_size, spec.resize, flip, anchor=anchor)


def to_clip(
    frames: np.ndarray,
    size: int | Sequence[int],
    resize: Resize = "short_side_crop",
    flip: bool = False,
    *,
    anchor: tuple[float, float] | None = None,
) -> Tensor:
    """uint8 ``[F, H, W, 3]`` → float32 ``[F, 3, h, w]`` in ``[-1, 1]``, ``(h, w) = frame_size(size)`` (an int
    is a square).

    ``short_side_crop`` (UCF-101/FFS in Latte): a bilinear resize by the smallest factor that makes the frame
    cover ``h × w`` (for a square: the short side to ``size``), then a centre crop. ``crop_resize``
    (SkyTimelapse): the largest centre crop of the target's aspect ratio (for a square: the short side's
    square), then a bilinear resize. Antialiased when shrinking. ``anchor`` ``(y, x)`` in ``[0, 1]`` places
    the crop (0: top / left edge, 1: bottom / right edge); None: centred.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"to_clip: frames must be [F, H, W, 3], got {frames.shape}")
    th, tw = frame_size(size)
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()  # [F, 3, H, W]
    H, W = x.shape[-2:]
    if resize == "crop_resize":
        if W * th > H * tw:  # wider than the target: keep the height
            ch, cw = H, max(1, min(W, round(H * tw / th)))
        else:
            ch, cw = max(1, min(H, round(W * th / tw))), W
        top, left = _crop_origin(H - ch, W - cw, anchor)
        x = x[:, :, top : top + ch, left : left + cw]  # [F, 3, ch, cw]
        if (ch, cw) != (th, tw):
            x = F.interpolate(x, size=(th, tw), mode="bilinear", align_corners=False, antialias=True)
    elif resize == "short_side_crop":
        scale = max(th / H, tw / W)
        h, w = max(th, round(H * scale)), max(tw, round(W * scale))
        if (h, w) != (H, W):
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=scale < 1)
        top, left = _crop_origin(h - th, w - tw, anchor)
        x = x[:, :, top : top + th, left : left + tw]
    else:
        raise ValueError(f"to_clip: unknown resize {resize!r}")
    if flip:
        x = x.flip(-1)
    return x.div(127.5).sub_(1.0).clamp_(-1.0, 1.0).contiguous()  # [F, 3, h, w]


def _crop_origin(room_h: int, room_w: int, anchor: tuple[float, float] | None) -> tuple[int, int]:
    """Top-left corner of a crop leaving ``room_h × room_w`` pixels: centred (``//2``), or at ``anchor``."""
    if anchor is None:
        return room_h // 2, room_w // 2
    return min(room_h, int(anchor[0] * (room_h + 1))), min(room_w, int(anchor[1] * (room_w + 1)))


# ---------------------------------------------------------------------------------------------- datasets


def is_video(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in VIDEO_EXTS and not os.path.basename(name).startswith(".")


def scan(root: str, skip: Collection[str] = ()) -> list[Source]:
    """Video files and frame folders (folders holding images) anywhere under ``root``, sorted by path; files
    named in ``skip`` are not clips (``minivdit.sample.OVERVIEW_FILES``) and are ignored."""
    found: list[Source] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        filenames = [n for n in filenames if n not in skip]
        if dirpath != root and any(os.path.splitext(n)[1].lower() in IMAGE_EXTS for n in filenames):
            found.append(list_frames(dirpath))
        found += [os.path.join(dirpath, n) for n in filenames if is_video(n)]
    return sorted(found, key=source_path)


def drop_short(sources: Sequence[Source], spec: ClipSpec, name: str) -> tuple[list[int], list[str]]:
    """Indices of the sources to keep, and the paths of the frame folders shorter than ``spec.min_frames``
    (dropped, counted, warned). Videos are only probed when loaded; a short one is skipped there."""
    need = spec.min_frames
    keep = [i for i, s in enumerate(sources) if not (isinstance(s, FrameFolder) and len(s) < need)]
    short = [s.path for s in sources if isinstance(s, FrameFolder) and len(s) < need]
    if short:
        msg = (
            f"{name}: {len(short)} of {len(sources)} frame folders have fewer than {need} frames "
            f"({spec.needs()}) and are skipped"
        )
        if not keep:
            raise ValueError(f"{msg}: no clip left, e.g. {short[:3]} ({DATASETS_HELP})")
        logger.warning("%s, e.g. %s", msg, short[:5])
    return keep, short


def report_missing(name: str, total: int, problems: dict[str, tuple[str, list[str]]]) -> None:
    """Warn about index entries that cannot be used, ``{key: (what, entries)}``, listing the first few of
    each; ``ValueError`` when none of the ``total`` entries can be used."""
    bad = sum(len(v) for _, v in problems.values())
    if not bad:
        return
    parts = "; ".join(f"{len(v)} {what} (e.g. {v[:5]})" for what, v in problems.values() if v)
    if bad >= total:
        raise ValueError(f"{name}: none of the {total} entries is usable: {parts} ({DATASETS_HELP})")
    logger.warning("%s: %d of %d entries skipped: %s", name, bad, total, parts)


@dataclass
class ClipDataset:
    """Sources with labels (and optional captions) → clips, with bad-input skipping.

    ``get(index, rng)`` returns ``{"video", "label", "skipped", ("caption")}``. With several ``spec.fps``
    rates ("fps" sampling) every source is listed once per rate: index ``i`` is source ``i // K`` at rate
    ``i % K`` (``K = spec.variants``). A source that raises
    ``BadVideo`` is recorded in ``bad_paths`` (path → reason; counted in ``bad_counts``) and replaced by an
    index drawn from a generator derived from ``rng`` alone, so the same ``(index, rng seed)`` always gives
    the same clip however often the bad file was seen before; ``"skipped"`` lists ``(path, reason)`` of the
    sources skipped for this sample, which the loader logs once per epoch. With ``bucketing`` the items are
    the clips that fit a bucket, each cut at its bucket's size (``"bucket"`` in the sample), and a bad source
    is replaced by a clip of the same bucket.
    """

    name: str
    sources: list[Source]
    labels: list[int]
    spec: ClipSpec
    num_classes: int = 0
    """Number of classes (labels are in ``[0, num_classes)``); 0: unconditional, every label is 0."""
    captions: list[str] | None = None
    classes: list[str] | None = None
    dropped: dict[str, list[str]] = field(default_factory=dict)
    """Entries left out while indexing, by reason: ``"unknown_class"``, ``"missing"``, ``"too_short"``…"""
    max_retries: int = 20
    """Replacement draws per sample before giving up (``RuntimeError``)."""
    bad_paths: dict[str, str] = field(default_factory=dict)
    """Sources that raised ``BadVideo`` in this process: path → reason."""
    bad_counts: dict[str, int] = field(default_factory=dict)
    """How many times each bad source was drawn (and skipped) in this process."""
    bucketing: BucketedIndex | None = None
    """Buckets (``minivdit/data/buckets.py``, set by ``build_dataset``): the items are then the clips that fit
    a bucket, ``get`` cuts each at its bucket's size and replaces a bad source by a clip of the same bucket.
    None: every clip at ``spec``'s size."""

    def __post_init__(self):
        if not self.sources:
            raise ValueError(f"{self.name}: no videos found ({DATASETS_HELP})")
        if len(self.labels) != len(self.sources):
            raise ValueError(f"{self.name}: {len(self.labels)} labels for {len(self.sources)} sources")

    def __len__(self) -> int:
        if self.bucketing is not None:
            return len(self.bucketing.index)
        return len(self.sources) * self.spec.variants

    @property
    def buckets(self) -> tuple | None:
        """The buckets (``Bucket`` tuples), or None without buckets."""
        return None if self.bucketing is None else self.bucketing.buckets

    @property
    def bucket_of(self) -> np.ndarray | None:
        """[len] bucket id of each item (what the loader batches by), or None without buckets."""
        return None if self.bucketing is None else self.bucketing.bucket_of

    def _unbucketed(self, index: int) -> int:
        return index if self.bucketing is None else int(self.bucketing.index[index])

    def path(self, index: int) -> str:
        return source_path(self.sources[self._unbucketed(index) // self.spec.variants])

    def get(self, index: int, rng: np.random.Generator) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"{self.name}: index {index} out of range [0, {len(self)})")
        key = int(rng.integers(2**63))
        skipped: list[tuple[str, str]] = []
        bucket, spec = None, self.spec
        if self.bucketing is not None:
            bucket = int(self.bucketing.bucket_of[index])
            spec = self.bucketing.spec(self.spec, bucket)
        for attempt in range(self.max_retries + 1):
            sub = np.random.default_rng([key, attempt])
            if attempt:  # a replacement of the same size: a batch never mixes buckets
                pool = None if bucket is None else self.bucketing.members[bucket]
                index = int(sub.integers(len(self))) if pool is None else int(pool[sub.integers(len(pool))])
            source, variant = divmod(self._unbucketed(index), self.spec.variants)
            try:
                video = sample_clip(self.sources[source], spec, sub, variant=variant)
            except BadVideo as e:
                if e.path not in self.bad_paths:
                    logger.debug("%s: skipping %s", self.name, e)
                self.bad_paths[e.path] = e.reason
                self.bad_counts[e.path] = self.bad_counts.get(e.path, 0) + 1
                skipped.append((e.path, e.reason))
                continue
            key = source_path(self.sources[source]) + (f"#{variant}" if self.spec.variants > 1 else "")
            out = {"video": video, "label": self.labels[source], "skipped": skipped, "key": key}
            if bucket is not None:
                out["bucket"] = bucket
            if self.captions is not None:
                out["caption"] = self.captions[source]
            return out
        raise RuntimeError(
            f"{self.name}: {len(skipped)} bad videos in a row; is the dataset mostly broken? "
            f"last: {skipped[-1][0]}: {skipped[-1][1]}"
        )


def read_csv(path: str) -> tuple[list[str], list[dict[str, str]]]:
    """The header (column names, stripped) and the rows (``{column: stripped value}``) of a CSV file. A
    UTF-8 byte-order mark is dropped."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    return cols, rows


def find_dir(candidates: Sequence[str]) -> str | None:
    """The first existing directory of ``candidates``."""
    return next((c for c in candidates if c and os.path.isdir(c)), None)
