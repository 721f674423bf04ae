"""Any folder of videos and/or frame folders, with an optional CSV of labels and captions: the entry for
custom data, including the captioned sets video models are fine-tuned on.

Without a CSV every video file (``.mp4 .avi .mov .mkv .webm …``) and every folder holding images anywhere
under ``<root>`` is one clip, unconditional (label 0, ``num_classes`` 0).

With ``labels_csv`` (a path, absolute or relative to the working directory or to ``<root>``), the CSV *is*
the index. Its header names, per row:

- the clip (``path_column``; default: the first of ``path``, ``videoid``, ``video_id``, ``video`` present). A
  value is a path relative to ``<root>`` (or absolute) to a video file or a frame folder, or a bare video id:
  ``<root>/<id>.mp4`` (or any other video extension), else a file named ``<id>.<ext>`` anywhere under
  ``<root>`` (found by one recursive scan, made only when a row is not found directly). This reads the
  ``videoid,name`` CSVs of ChronoMagic / ChronoMagic-ProH (MagicTime) and WebVid as they ship, and
  ``videoid,caption`` ones;
- the caption (``caption_column``; default: ``caption``, else ``name`` (WebVid / ChronoMagic), else none);
- the label (``label``, optional): integers are used as they are (``num_classes`` = max + 1), any other
  labels are class names numbered in sorted order (``classes``).

Rows whose clip does not exist are skipped, counted (``dropped["missing"]``) and listed in one warning
(``ValueError`` if all are). Captions ride along in each sample as ``"caption"`` (and into shards as
``caption.txt``, where ``tools/cache_text.py`` turns them into text-encoder tokens).

Clips: resized to cover ``image_size`` (a side, or ``(H, W)``) then centre-cropped, no flip by default
(flipping can contradict captions).
"""

from __future__ import annotations

import logging
import os

from minivdit.data.video import (
    DATASETS_HELP,
    VIDEO_EXTS,
    ClipDataset,
    ClipSpec,
    Source,
    drop_short,
    list_frames,
    read_csv,
    report_missing,
    scan,
)

logger = logging.getLogger("minivdit")

LAYOUT = (
    "<root>/**/*.{mp4,avi,mov,mkv,webm} and/or <root>/**/<clip>/<frame>.jpg, optional CSV "
    "path|videoid[,label][,caption|name]"
)
PATH_COLUMNS = ("path", "videoid", "video_id", "video")
"""Default clip columns of a CSV, in order of preference."""
CAPTION_COLUMNS = ("caption", "name")
"""Default caption columns of a CSV, in order of preference ("name": WebVid / ChronoMagic CSVs)."""


def _csv_path(labels_csv: str, root: str) -> str:
    for cand in (labels_csv, os.path.join(root, labels_csv)):
        if os.path.isfile(cand):
            return cand
    raise ValueError(f"folder: labels CSV {labels_csv!r} not found (also tried under {root!r})")


def _column(csv_path: str, cols: list[str], given: str | None, defaults: tuple[str, ...], what: str):
    if given is not None:
        if given not in cols:
            raise ValueError(f"{csv_path}: no {what} column {given!r} in the header {cols}")
        return given
    return next((c for c in defaults if c in cols), None)


class _Resolver:
    """A CSV value → the clip under ``root``: the path itself, ``<value>.<ext>``, or a video file named so
    anywhere under ``root`` (one recursive scan, on the first value not found directly)."""

    EXTS = (".mp4", *sorted(VIDEO_EXTS - {".mp4"}))

    def __init__(self, root: str):
        self.root = root
        self._by_name: dict[str, str] | None = None
        self.ambiguous: list[str] = []

    def _index(self) -> dict[str, str]:
        if self._by_name is None:
            self._by_name, seen = {}, set()
            for source in scan(self.root):
                if isinstance(source, str):
                    name = os.path.basename(source)
                    for key in {name, os.path.splitext(name)[0]}:
                        if key in self._by_name and key not in seen:
                            seen.add(key)
                            self.ambiguous.append(key)
                        self._by_name.setdefault(key, source)  # scan is sorted: the first path wins
        return self._by_name

    def __call__(self, value: str) -> Source | None:
        path = os.path.join(self.root, value)
        if os.path.isdir(path):
            return list_frames(path)
        if os.path.isfile(path):
            return path
        if os.path.splitext(value)[1].lower() not in VIDEO_EXTS:
            for ext in self.EXTS:
                if os.path.isfile(path + ext):
                    return path + ext
        if os.sep in value or "/" in value:
            return None
        return self._index().get(value)


def build(
    root: str | None,
    labels_csv: str | None = None,
    spec: ClipSpec | None = None,
    *,
    path_column: str | None = None,
    caption_column: str | None = None,
) -> ClipDataset:
    """The clips under ``root`` (or those listed in ``labels_csv``) as a ``ClipDataset``; the CSV columns
    default as the module docstring says."""
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
    cols, rows = read_csv(csv_path)
    path_col = _column(csv_path, cols, path_column, PATH_COLUMNS, "clip")
    if path_col is None:
        raise ValueError(
            f"{csv_path}: a clips CSV needs a header with a clip column (one of {list(PATH_COLUMNS)}, or "
            f"--data.path-column) and optionally 'label' and a caption column, got {cols}"
        )
    caption_col = _column(csv_path, cols, caption_column, CAPTION_COLUMNS, "caption")
    has_label = "label" in cols
    resolve = _Resolver(root)
    sources: list[Source] = []
    kept_rows, missing = [], []
    for n, row in enumerate(rows, 2):
        rel = row.get(path_col, "")
        if not rel:
            raise ValueError(f"{csv_path}, line {n}: empty {path_col}")
        source = resolve(rel)
        if source is None:
            missing.append(rel)
            continue
        sources.append(source)
        kept_rows.append((n, row))
    if resolve.ambiguous:
        logger.warning(
            "folder %s: %d names match several files under %s (the first path in sorted order is used), "
            "e.g. %s",
            csv_path,
            len(resolve.ambiguous),
            root,
            resolve.ambiguous[:5],
        )
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
    captions = [row.get(caption_col, "") for _, row in kept_rows] if caption_col else None
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
