"""FaceForensics face crops (Rössler et al. 2019) as preprocessed by StyleGAN-V's ``preprocess_ffs.py``
(the copy Latte trains on, also on HF ``maxin-cn/FaceForensics``). Unconditional.

Layout::

    <root>/train/videos/*.mp4     (Latte's data_path ``preprocess_ffs/train/videos/``)
    <root>/train/*.mp4 or <root>/*.mp4, or frame folders <root>/<clip>/<frame>.{jpg,png} instead of videos

``split="train"`` (default; Latte and Align4Gen train and evaluate on it, the test split is tiny) or
``"test"`` picks ``<root>/<split>/[videos/]``; without such a folder ``<root>`` itself is the train split.
Transform as Latte: short side resized then centre crop, random horizontal flip (unless the config says
otherwise).
"""

from __future__ import annotations

import os

from minivdit.data.video import DATASETS_HELP, ClipDataset, ClipSpec, drop_short, scan

LAYOUT = (
    "<root>/train/videos/*.mp4 (or <root>/train/*.mp4, or <root>/*.mp4 with <root> the train split; frame "
    "folders <clip>/<frame>.jpg instead of videos also work)"
)


def build(root: str | None, split: str = "train", spec: ClipSpec | None = None) -> ClipDataset:
    """The FaceForensics ``split`` (``train`` or ``test``) as a ``ClipDataset``."""
    if split not in ("train", "test"):
        raise ValueError(f"ffs: split must be train|test, got {split!r}")
    spec = spec or ClipSpec(resize="short_side_crop", flip=True)
    if not root or not os.path.isdir(root):
        raise ValueError(f"ffs: dataset root {root!r} not found; expected {LAYOUT}; {DATASETS_HELP}")
    folder = os.path.join(root, split)
    if os.path.isdir(folder):
        if os.path.isdir(os.path.join(folder, "videos")):
            folder = os.path.join(folder, "videos")
    elif split == "train":
        folder = root
    else:
        raise ValueError(f"ffs: no {split!r} folder in {root!r}; expected {LAYOUT}; {DATASETS_HELP}")
    sources = scan(folder)
    if not sources:
        raise ValueError(
            f"ffs: no videos or frame folders under {folder!r}; expected {LAYOUT}; {DATASETS_HELP}"
        )
    keep, short = drop_short(sources, spec, "ffs")
    return ClipDataset(
        f"ffs-{split}", [sources[i] for i in keep], [0] * len(keep), spec, dropped={"too_short": short}
    )
