"""Procedurally generated, class-conditional videos: the embedded default dataset (no files, no downloads).

Each clip shows one antialiased object (two for class 7) moving over a dark background. The class fixes the
colour, the shape *and* the motion, so that each of the three alone separates the classes: a tiny, blurry
model that only gets the colour right already produces recognisable samples, and a better one gets the shape
and motion right as well. Every clip shows the whole motion, whatever ``num_frames`` is (time is normalised to
``s ∈ [0, 1]`` over the clip). Positions and sizes are fractions of the frame, so any ``image_size`` works.

=  ===========================  ===============  ====================  ===================================
c  name                         colour (RGB)     shape                 motion over the clip
=  ===========================  ===============  ====================  ===================================
0  red disc moving right        (230, 40, 40)    disc                  left → right, half the frame width
1  orange square moving left    (245, 140, 20)   filled square         right → left, half the frame width
2  yellow triangle moving up    (240, 230, 40)   triangle, apex up     bottom → top, half the frame height
3  green ring moving down       (40, 200, 60)    ring (hollow disc)    top → bottom, half the frame height
4  cyan plus moving down-right  (30, 220, 230)   plus sign (+)         top-left → bottom-right diagonal
5  blue bar circling            (50, 90, 255)    horizontal bar        one full clockwise circle
6  purple diamond pulsing       (150, 60, 240)   diamond (45° square)  static; size pulses 1.5 times
7  magenta twin discs orbiting  (240, 50, 200)   two small discs       half a turn about their midpoint
8  white frame spinning         (240, 240, 240)  hollow square         static; rotates a quarter turn
9  pink X moving up-left        (255, 150, 170)  X (diagonal cross)    bottom-right → top-left diagonal
=  ===========================  ===============  ====================  ===================================

Randomness per index (from a generator seeded by ``(seed, index)`` only): start position (or centre of the
orbit / pulse), object size (±15 %), starting angle or phase, and the background: a dark, slightly tinted
base level, a low-contrast linear gradient in a random direction and faint static noise. The label of index
``i`` is ``i % num_classes`` (classes are exactly balanced). ``num_classes`` may be at most 10; the first
``num_classes`` rows of the table are used.

**Held-out combinations** (``split="in_domain"`` / ``"out_of_domain"``, issue 19's FlashI2V ablation). The
appearance (colour + shape) of row ``a`` is drawn with the motion of row ``m`` (``a, m < num_classes``), and
the label is the *motion* ``m`` (what the model is told; the appearance comes from the first frame in an
image-to-video run). The pairs with ``(m − a) mod num_classes`` in ``held_out_offsets(num_classes)`` (every
third offset: 3, 6, 9 for ten classes) never appear in ``"in_domain"``; ``"out_of_domain"`` holds exactly
those. Every appearance and every motion is seen in training (the diagonal ``a = m``, the ``"all"`` classes,
is in domain), each with the same number of partners, so an out-of-domain clip is an unseen pairing of seen
parts. Index ``i`` shows pair ``i mod len(pairs)`` of the split's sorted pairs (balanced), with the same
per-index randomness as ``"all"``.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

# ---------------------------------------------------------------------------------------------- shapes
# Signed distance functions in pixels (negative inside) of a shape centred at the origin with "radius" r.
# Coverage = clip(0.5 - sdf, 0, 1) is a one-pixel-wide antialiased edge (exact for straight edges).


def _box(dx: np.ndarray, dy: np.ndarray, bx: np.ndarray, by: np.ndarray) -> np.ndarray:
    qx, qy = np.abs(dx) - bx, np.abs(dy) - by
    outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
    return outside + np.minimum(np.maximum(qx, qy), 0)


def _rotate(dx: np.ndarray, dy: np.ndarray, angle: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    c, s = np.cos(angle, dtype=np.float32), np.sin(angle, dtype=np.float32)  # float32 even for a Python angle
    return dx * c + dy * s, -dx * s + dy * c


def _disc(dx, dy, r):
    return np.hypot(dx, dy) - r


def _square(dx, dy, r):
    return _box(dx, dy, 0.85 * r, 0.85 * r)


def _triangle(dx, dy, r):
    # Equilateral, apex up (y grows downwards), circumradius 1.2 r (its area is small for its radius): the
    # three edges at distance 0.6 r from the centre.
    c30 = math.cos(math.pi / 6)
    d = np.maximum(dy, np.maximum(-c30 * dx - 0.5 * dy, c30 * dx - 0.5 * dy))
    return d - 0.6 * r


def _ring(dx, dy, r):
    return np.abs(np.hypot(dx, dy) - 0.8 * r) - 0.25 * r


def _plus(dx, dy, r):
    return np.minimum(_box(dx, dy, r, 0.3 * r), _box(dx, dy, 0.3 * r, r))


def _bar(dx, dy, r):
    return _box(dx, dy, 1.4 * r, 0.4 * r)


def _diamond(dx, dy, r):
    return _square(*_rotate(dx, dy, math.pi / 4), r)


def _frame(dx, dy, r):
    return np.abs(_box(dx, dy, 0.9 * r, 0.9 * r)) - 0.22 * r


def _x(dx, dy, r):
    return _plus(*_rotate(dx, dy, math.pi / 4), r)


# ---------------------------------------------------------------------------------------------- motions
# A motion maps the clip time s [F] in [0, 1] to a list of objects, each (u [F], v [F], scale [F], angle [F]):
# centre as a fraction of width/height, size multiplier and rotation in radians.

_Obj = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
_Motion = Callable[[np.ndarray, np.random.Generator], list[_Obj]]


def _linear(du: float, dv: float) -> _Motion:
    """Travel (du, dv) over the clip from a random start that keeps the whole path inside the frame."""

    def motion(s, rng):
        u0 = rng.uniform(0.5 - abs(du) / 2 - 0.1, 0.5 - abs(du) / 2 + 0.1) if du else rng.uniform(0.25, 0.75)
        v0 = rng.uniform(0.5 - abs(dv) / 2 - 0.1, 0.5 - abs(dv) / 2 + 0.1) if dv else rng.uniform(0.25, 0.75)
        u0 = 1 - u0 if du < 0 else u0  # start on the side the object leaves from
        v0 = 1 - v0 if dv < 0 else v0
        one, zero = np.ones_like(s), np.zeros_like(s)
        return [(u0 + du * s, v0 + dv * s, one, zero)]

    return motion


def _circle(s, rng):
    cu, cv, th0 = rng.uniform(0.42, 0.58), rng.uniform(0.42, 0.58), rng.uniform(0, 2 * math.pi)
    th = th0 + 2 * math.pi * s  # y points down, so a growing angle turns clockwise on screen
    return [(cu + 0.2 * np.cos(th), cv + 0.2 * np.sin(th), np.ones_like(s), np.zeros_like(s))]


def _pulse(s, rng):
    cu, cv, ph = rng.uniform(0.35, 0.65), rng.uniform(0.35, 0.65), rng.uniform(0, 2 * math.pi)
    scale = 1.0 + 0.4 * np.sin(ph + 2 * math.pi * 1.5 * s)
    return [(np.full_like(s, cu), np.full_like(s, cv), scale, np.zeros_like(s))]


def _orbit(s, rng):
    cu, cv, th0 = rng.uniform(0.4, 0.6), rng.uniform(0.4, 0.6), rng.uniform(0, 2 * math.pi)
    th = th0 + math.pi * s
    small = np.full_like(s, 0.65)
    return [
        (cu + 0.2 * np.cos(th), cv + 0.2 * np.sin(th), small, np.zeros_like(s)),
        (cu - 0.2 * np.cos(th), cv - 0.2 * np.sin(th), small, np.zeros_like(s)),
    ]


def _spin(s, rng):
    cu, cv, th0 = rng.uniform(0.35, 0.65), rng.uniform(0.35, 0.65), rng.uniform(0, math.pi / 2)
    return [(np.full_like(s, cu), np.full_like(s, cv), np.ones_like(s), th0 + (math.pi / 2) * s)]


# ---------------------------------------------------------------------------------------------- classes


@dataclass(frozen=True)
class _Class:
    name: str
    colour: tuple[int, int, int]
    shape: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
    motion: _Motion


_CLASSES = (
    _Class("red disc moving right", (230, 40, 40), _disc, _linear(0.5, 0.0)),
    _Class("orange square moving left", (245, 140, 20), _square, _linear(-0.5, 0.0)),
    _Class("yellow triangle moving up", (240, 230, 40), _triangle, _linear(0.0, -0.5)),
    _Class("green ring moving down", (40, 200, 60), _ring, _linear(0.0, 0.5)),
    _Class("cyan plus moving down-right", (30, 220, 230), _plus, _linear(0.4, 0.4)),
    _Class("blue bar circling", (50, 90, 255), _bar, _circle),
    _Class("purple diamond pulsing", (150, 60, 240), _diamond, _pulse),
    _Class("magenta twin discs orbiting", (240, 50, 200), _disc, _orbit),
    _Class("white frame spinning", (240, 240, 240), _frame, _spin),
    _Class("pink X moving up-left", (255, 150, 170), _x, _linear(-0.4, -0.4)),
)

CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in _CLASSES)
"""Human-readable name of each class, indexed by label (the table in the module docstring)."""

PALETTE: tuple[tuple[int, int, int], ...] = tuple(c.colour for c in _CLASSES)
"""Object colour of each class as uint8 RGB, indexed by label."""

MOTION_NAMES: tuple[str, ...] = (
    "moving right",
    "moving left",
    "moving up",
    "moving down",
    "moving down-right",
    "circling",
    "pulsing",
    "orbiting in pairs",
    "spinning",
    "moving up-left",
)
"""The motion of each row, the label's meaning in the held-out-combination splits."""

APPEARANCE_NAMES: tuple[str, ...] = (
    "red disc",
    "orange square",
    "yellow triangle",
    "green ring",
    "cyan plus",
    "blue bar",
    "purple diamond",
    "magenta twin discs",
    "white frame",
    "pink X",
)
"""The colour and shape of each row (a class name without its motion)."""


def caption(appearance: int, motion: int) -> str:
    """A clip's caption: "a red disc moving right" (the class's name when ``appearance == motion``; an
    unseen pairing of the held-out splits reads "a red disc circling")."""
    if appearance == motion:
        return f"a {CLASS_NAMES[appearance]}"
    return f"a {APPEARANCE_NAMES[appearance]} {MOTION_NAMES[motion]}"


SPLITS = ("all", "in_domain", "out_of_domain")


def held_out_offsets(num_classes: int) -> tuple[int, ...]:
    """The offsets ``(m − a) mod num_classes`` of the out-of-domain (appearance, motion) pairs: every third
    nonzero offset (none below four classes)."""
    return tuple(k for k in range(1, num_classes) if k % 3 == 0)


def split_pairs(num_classes: int, split: str) -> list[tuple[int, int]]:
    """The (appearance, motion) pairs of ``split`` ("all": the ``num_classes`` classes, ``a = m``), sorted."""
    if split not in SPLITS:
        raise ValueError(f"synthetic split must be one of {SPLITS}, got {split!r}")
    if split == "all":
        return [(c, c) for c in range(num_classes)]
    held = set(held_out_offsets(num_classes))
    if not held:
        raise ValueError(
            f"the synthetic held-out split needs num_classes >= 4 (an out-of-domain pair), got {num_classes}"
        )
    n = num_classes
    pairs = [(a, m) for a in range(n) for m in range(n)]
    return [(a, m) for a, m in pairs if (((m - a) % n) in held) == (split == "out_of_domain")]


_RADIUS = 0.13  # object "radius" as a fraction of the frame side, before the ±15 % jitter


class SyntheticVideos:
    """Class-conditional procedural videos; see the module docstring for what each class looks like.

    ``get(index, rng)`` ignores ``rng``: a clip depends only on ``(seed, index)``, so the dataset is its own
    fixed "file set" and the sampler's per-sample seed (meant for augmentation) does not change it.
    """

    def __init__(
        self,
        num_frames: int,
        image_size: int,
        num_classes: int,
        size: int,
        seed: int = 0,
        split: str = "all",
        captions: bool = False,
    ):
        for name, value in (("num_frames", num_frames), ("image_size", image_size), ("size", size)):
            if value < 1:
                raise ValueError(f"SyntheticVideos: {name} must be >= 1, got {value}")
        if not 1 <= num_classes <= len(_CLASSES):
            raise ValueError(
                f"SyntheticVideos: num_classes must be in [1, {len(_CLASSES)}], got {num_classes}"
            )
        if seed < 0:
            raise ValueError(f"SyntheticVideos: seed must be >= 0, got {seed}")
        self.num_frames, self.image_size, self.num_classes = num_frames, image_size, num_classes
        self.size, self.seed, self.split, self.captions = size, seed, split, captions
        self.pairs = split_pairs(num_classes, split)  # [(appearance, motion)]
        self.classes = CLASS_NAMES[:num_classes] if split == "all" else MOTION_NAMES[:num_classes]
        # Pixel-centre coordinates, shared by every clip.
        grid = np.arange(image_size, dtype=np.float32) + 0.5
        self._x, self._y = grid[None, None, :], grid[None, :, None]  # [1, 1, W], [1, H, 1]

    def __len__(self) -> int:
        return self.size

    def get(self, index: int, rng: np.random.Generator | None = None) -> dict:
        """The clip at ``index``: ``{"video": float32 [F, 3, H, W] in [-1, 1], "label": int}`` (the class;
        the motion in a held-out-combination split, whose ``"appearance"`` is added), and with ``captions``
        its ``"caption"`` (``caption(appearance, motion)``: text-conditioned runs)."""
        if not 0 <= index < self.size:
            raise IndexError(f"SyntheticVideos: index {index} out of range [0, {self.size})")
        appearance, label = self.pairs[index % len(self.pairs)]
        look, spec = _CLASSES[appearance], _CLASSES[label]
        gen = np.random.default_rng([self.seed, index])
        F, S = self.num_frames, self.image_size
        s = np.linspace(0.0, 1.0, F, dtype=np.float32) if F > 1 else np.zeros(1, np.float32)

        radius = _RADIUS * S * gen.uniform(0.85, 1.15)
        coverage = np.zeros((F, S, S), np.float32)
        for u, v, scale, angle in spec.motion(s, gen):
            dx, dy = self._x - (u * S)[:, None, None], self._y - (v * S)[:, None, None]  # [F, H, W]
            if np.any(angle):
                dx, dy = _rotate(dx, dy, angle[:, None, None])
            sdf = look.shape(dx, dy, (radius * scale)[:, None, None])
            coverage = np.maximum(coverage, np.clip(0.5 - sdf, 0.0, 1.0))
        background = self._background(gen)  # [3, H, W] in [0, 1]
        colour = np.asarray(look.colour, np.float32)[:, None, None] / 255.0  # [3, 1, 1]
        video = background + coverage[:, None] * (colour - background)  # [F, 3, H, W], alpha compositing
        video = video * 2.0 - 1.0
        out = {"video": torch.from_numpy(video), "label": label, "key": f"synthetic/{self.seed}/{index}"}
        if self.split != "all":
            out["appearance"] = appearance
        if self.captions:
            out["caption"] = caption(appearance, label)
        return out

    def _background(self, gen: np.random.Generator) -> np.ndarray:
        """Dark, low-contrast [3, H, W] background in [0, 1]: tinted base + linear gradient + static noise.

        Its brightest pixel stays below ~0.35, well under every object colour's brightest channel (≥ 0.9),
        so objects stand out even when a model blurs everything.
        """
        S = self.image_size
        base = gen.uniform(0.04, 0.14) + gen.uniform(-0.03, 0.03, size=3)
        phi, amp = gen.uniform(0, 2 * math.pi), gen.uniform(0.03, 0.1)
        ramp = (
            math.cos(phi) * (self._x[0] - S / 2) + math.sin(phi) * (self._y[0] - S / 2)
        ) / S  # [H, W], ±0.71
        noise = gen.normal(0.0, 0.015, size=(3, S, S))
        return np.clip(base[:, None, None] + amp * ramp + noise, 0.0, 1.0).astype(np.float32)
