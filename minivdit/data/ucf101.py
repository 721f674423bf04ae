"""UCF-101 (Soomro et al. 2012): 13,320 AVI clips of 101 actions, with the three official train/test splits.

Layout (the official ``UCF101.rar`` and ``UCF101TrainTestSplits-RecognitionTask.zip``, unpacked)::

    <root>/<ClassName>/v_<ClassName>_g<GG>_c<CC>.avi      (or <root>/UCF-101/<ClassName>/...)
    <root>/ucfTrainTestlist/classInd.txt                   (or ucfTrainTestlist/ next to <root>)
    <root>/ucfTrainTestlist/trainlist0{1,2,3}.txt, testlist0{1,2,3}.txt

``split="train"`` / ``"test"`` reads ``trainlist0<fold>.txt`` / ``testlist0<fold>.txt`` (fold 1: 9,537 /
3,783 clips, Align4Gen's protocol); ``"all"`` is their union, the 13,320 clips Latte trains on. Labels are the
0-based index of the class folder name in ``classInd.txt`` (``1 ApplyEyeMakeup`` → 0); the numbers in the
split files are not used. Split entries naming an unknown class or a missing video are skipped, counted
(``unknown`` / ``missing``) and listed in one warning; a ``ValueError`` when no entry is usable. Names match
exactly, else case-insensitively (some copies differ in case).

Clips: ``F`` frames every ``frame_interval``-th frame from a random window, short side resized then centre
crop, random horizontal flip (Latte's UCF-101 pipeline) unless the config says otherwise.
"""

from __future__ import annotations

import os

from minivdit.data.video import DATASETS_HELP, ClipDataset, ClipSpec, find_dir, report_missing

LAYOUT = (
    "<root>/<ClassName>/v_*.avi (or <root>/UCF-101/<ClassName>/v_*.avi) and "
    "<root>/ucfTrainTestlist/{classInd.txt, trainlist0{1,2,3}.txt, testlist0{1,2,3}.txt} "
    "(ucfTrainTestlist/ may also sit next to <root>)"
)


def _layout_error(root: str | None, what: str) -> ValueError:
    return ValueError(f"ucf101: {what} (root={root!r}); expected {LAYOUT}; {DATASETS_HELP}")


def _read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8-sig") as f:
        return [line.strip() for line in f if line.strip()]


def read_class_index(path: str) -> list[str]:
    """Class names in label order from ``classInd.txt`` (lines ``<1-based index> <ClassName>``)."""
    entries = {}
    for n, line in enumerate(_read_lines(path), 1):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise ValueError(f"{path}, line {n}: expected '<index> <ClassName>', got {line!r}")
        entries[int(parts[0])] = parts[1]
    if sorted(entries) != list(range(1, len(entries) + 1)):
        raise ValueError(f"{path}: class indices must be 1..{len(entries)}, got {sorted(entries)[:10]}...")
    return [entries[i] for i in range(1, len(entries) + 1)]


class _CaseInsensitiveDir:
    """Resolves ``Class/file.avi`` under the video root, exactly or ignoring case; lists each folder once."""

    def __init__(self, root: str):
        self.root = root
        self._classes = {d.casefold(): d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))}
        self._files: dict[str, dict[str, str]] = {}

    def resolve(self, cls: str, name: str) -> str | None:
        folder = cls if cls in self._classes.values() else self._classes.get(cls.casefold())
        if folder is None:
            return None
        if folder not in self._files:
            self._files[folder] = {f.casefold(): f for f in os.listdir(os.path.join(self.root, folder))}
        names = self._files[folder]
        real = name if name in names.values() else names.get(name.casefold())
        return None if real is None else os.path.join(self.root, folder, real)


def build(root: str | None, split: str = "train", fold: int = 1, spec: ClipSpec | None = None) -> ClipDataset:
    """The UCF-101 ``split`` of ``fold`` as a ``ClipDataset`` (``num_classes`` from ``classInd.txt``)."""
    if split not in ("train", "test", "all") or fold not in (1, 2, 3):
        raise ValueError(f"ucf101: split must be train|test|all and fold 1|2|3, got {split!r}, {fold!r}")
    spec = spec or ClipSpec(resize="short_side_crop", flip=True)
    if not root or not os.path.isdir(root):
        raise _layout_error(root, "dataset root not found")
    root = os.path.abspath(root)
    parent = os.path.dirname(root)
    lists = find_dir(
        [os.path.join(root, "ucfTrainTestlist"), os.path.join(parent, "ucfTrainTestlist")]
        + [os.path.join(root, d, "ucfTrainTestlist") for d in ("UCF-101", "UCF101")]
    )
    if lists is None or not os.path.isfile(os.path.join(lists, "classInd.txt")):
        raise _layout_error(root, "ucfTrainTestlist/classInd.txt not found")
    classes = read_class_index(os.path.join(lists, "classInd.txt"))
    label_of = {c: i for i, c in enumerate(classes)}
    label_of_folded = {c.casefold(): i for i, c in enumerate(classes)}
    videos = None
    for cand in (os.path.join(root, "UCF-101"), os.path.join(root, "UCF101"), root):
        if os.path.isdir(cand) and any(os.path.isdir(os.path.join(cand, c)) for c in classes):
            videos = cand
            break
    if videos is None:
        raise _layout_error(root, "no class folder named as in classInd.txt")

    kinds = {"train": ["train"], "test": ["test"], "all": ["train", "test"]}[split]
    entries: list[str] = []
    for kind in kinds:
        path = os.path.join(lists, f"{kind}list0{fold}.txt")
        if not os.path.isfile(path):
            raise _layout_error(root, f"split file {path} not found")
        entries += [line.split()[0].replace("\\", "/") for line in _read_lines(path)]
    entries = list(dict.fromkeys(entries))  # de-duplicated, file order kept

    resolver = _CaseInsensitiveDir(videos)
    sources, labels, unknown, missing, malformed = [], [], [], [], []
    for entry in entries:
        parts = entry.split("/")
        if len(parts) != 2:
            malformed.append(entry)
            continue
        cls, name = parts
        label = label_of.get(cls, label_of_folded.get(cls.casefold()))
        if label is None:
            unknown.append(entry)
            continue
        path = resolver.resolve(cls, name)
        if path is None:
            missing.append(entry)
            continue
        sources.append(path)
        labels.append(label)
    problems = {
        "unknown_class": ("split entries name a class missing from classInd.txt", unknown),
        "missing": ("split entries reference missing videos", missing),
        "malformed": ("split entries are not '<Class>/<file>'", malformed),
    }
    report_missing(f"ucf101 {split} fold {fold}", len(entries), problems)
    return ClipDataset(
        f"ucf101-{split}{fold}",
        sources,
        labels,
        spec,
        num_classes=len(classes),
        classes=classes,
        dropped={k: v for k, (_, v) in problems.items()},
    )
