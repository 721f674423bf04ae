"""Any folder of videos and/or frame folders, with an optional CSV of labels and captions: the entry for
custom data.

Without a CSV every video file (``.mp4 .avi .mov .mkv .webm …``) and every folder holding images anywhere
under ``<root>`` is one clip, unconditional (label 0, ``num_classes`` 0).

With ``labels_csv`` (a path, absolute or relative to the working directory or to ``<root>``), the CSV *is*
the index: a header with ``path`` and ``label`` and/or ``caption``; ``path`` is relative to ``<root>`` (or
absolute) and names a video file or a frame folder. Integer labels are used as they are (``num_classes`` =
max + 1); any other labels are class names, numbered in sorted order (``classes``). Rows whose path does not
exist are skipped, counted (``dropped["missing"]``) and listed in one warning (``ValueError`` if all are).
Captions ride along in each sample as ``"caption"``.

Clips: short side resized then centre crop, no flip by default (flipping can contradict captions).
"""

from __future__ import annotations

import os

from minivdit.data.video import (
    DATASETS_HELP,
    ClipDataset,
    ClipSpec,
    Source,
    drop_short,
    list_frames,
    read_csv,
    report_missing,
    scan,
)

LAYOUT = (
    "<root>/**/*.{mp4,avi,mov,mkv,webm} and/or <root>/**/<clip>/<frame>.jpg, optional CSV path,label,caption"
)


def _csv_path(labels_csv: str, root: str) -> str:
    for cand in (labels_csv, os.path.join(root, labels_csv)):
        if os.path.isfile(cand):
            return cand
    raise ValueError(f"folder: labels CSV {labels_csv!r} not found (also tried under {root!r})")


def build(root: str | None, labels_csv: str | None = None, spec: ClipSpec | None = None) -> ClipDataset:
    """The clips under ``root`` (or those listed in ``labels_csv``) as a ``ClipDataset``."""
    spec = spec or ClipSpec(resize="short_side_crop", flip=False)
    if not root or not os.path.isdir(root):
        raise ValueError(f"folder: dataset root {root!r} not found; expected {LAYOUT}; {DATASETS_HELP}")
    if labels_csv is None:
        sources = scan(root)
        if not sources:
            raise ValueError(
                f"folder: no videos or frame folders under {root!r}; expected {LAYOUT}; {DATASETS_HELP}"
            )
        keep, short = drop_short(sources, spec, "folder")
        return ClipDataset(
            "folder", [sources[i] for i in keep], [0] * len(keep), spec, dropped={"too_short": short}
        )

    csv_path = _csv_path(labels_csv, root)
    rows = read_csv(csv_path)
    has_label, has_caption = bool(rows) and "label" in rows[0], bool(rows) and "caption" in rows[0]
    sources: list[Source] = []
    kept_rows, missing = [], []
    for n, row in enumerate(rows, 2):
        rel = row.get("path", "")
        if not rel:
            raise ValueError(f"{csv_path}, line {n}: empty path")
        path = os.path.join(root, rel)
        if os.path.isdir(path):
            sources.append(list_frames(path))
        elif os.path.isfile(path):
            sources.append(path)
        else:
            missing.append(rel)
            continue
        kept_rows.append((n, row))
    report_missing(f"folder {csv_path}", len(rows), {"missing": ("rows reference missing files", missing)})

    labels, classes, num_classes = [0] * len(kept_rows), None, 0
    if has_label:
        raw = [row["label"] for _, row in kept_rows]
        for (n, _), value in zip(kept_rows, raw, strict=True):
            if value == "":
                raise ValueError(f"{csv_path}, line {n}: empty label")
        if all(v.lstrip("-").isdigit() for v in raw):
            labels = [int(v) for v in raw]
            bad = [(n, v) for (n, _), v in zip(kept_rows, labels, strict=True) if v < 0]
            if bad:
                raise ValueError(f"{csv_path}, line {bad[0][0]}: negative label {bad[0][1]}")
            num_classes = max(labels) + 1
        else:
            classes = sorted(set(raw))
            index = {c: i for i, c in enumerate(classes)}
            labels, num_classes = [index[v] for v in raw], len(classes)
    captions = [row.get("caption", "") for _, row in kept_rows] if has_caption else None
    keep, short = drop_short(sources, spec, "folder")
    return ClipDataset(
        "folder",
        [sources[i] for i in keep],
        [labels[i] for i in keep],
        spec,
        num_classes=num_classes,
        captions=None if captions is None else [captions[i] for i in keep],
        classes=classes,
        dropped={"missing": missing, "too_short": short},
    )
