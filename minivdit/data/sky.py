"""SkyTimelapse (Xiong et al. 2018): time-lapse sky clips stored as JPEG frame folders. Unconditional.

Layout (the public copy, nested one level as in Latte issue #117; any depth works, every folder that holds
images is one clip)::

    <root>/sky_train/<video>/<clip>/<frame>.jpg      (or <root>/sky_test/..., or <root> = sky_train itself)

Frames are ordered by the last number in their names (``..._frames_00000123.jpg`` → 123); a frame name
without digits is a ``ValueError`` naming the folder and the file. Clips with fewer than
``(F - 1) · frame_interval + 1`` frames are dropped, counted (``dropped["too_short"]``) and listed in one
warning. Transform as Latte: square centre crop on the short side, bilinear resize, **no flip** (unless the
config asks for one). Align4Gen trains and evaluates on the train split.
"""

from __future__ import annotations

import os

from minivdit.data.video import DATASETS_HELP, ClipDataset, ClipSpec, FrameFolder, drop_short, scan

LAYOUT = (
    "<root>/sky_train/<video>/<clip>/<frame>.jpg (frames numbered in their names; sky_test/ for split "
    "'test'), or <root> = the split folder itself"
)


def build(root: str | None, split: str = "train", spec: ClipSpec | None = None) -> ClipDataset:
    """The SkyTimelapse clips of ``split`` (``train``, ``test`` or ``all``) as a ``ClipDataset``."""
    if split not in ("train", "test", "all"):
        raise ValueError(f"sky: split must be train|test|all, got {split!r}")
    spec = spec or ClipSpec(resize="crop_resize", flip=False)
    if not root or not os.path.isdir(root):
        raise ValueError(f"sky: dataset root {root!r} not found; expected {LAYOUT}; {DATASETS_HELP}")
    names = ["sky_train", "sky_test"] if split == "all" else [f"sky_{split}"]
    dirs = [os.path.join(root, n) for n in names if os.path.isdir(os.path.join(root, n))] or [root]
    clips = [s for d in dirs for s in scan(d) if isinstance(s, FrameFolder)]
    if not clips:
        raise ValueError(f"sky: no frame folders under {dirs}; expected {LAYOUT}; {DATASETS_HELP}")
    keep, short = drop_short(clips, spec, "sky")
    return ClipDataset(
        f"sky-{split}", [clips[i] for i in keep], [0] * len(keep), spec, dropped={"too_short": short}
    )
