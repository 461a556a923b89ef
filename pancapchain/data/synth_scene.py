"""Procedural panoptic scenes: stuff layers, occluding things, exact visible masks, and the rendered image.

A scene is drawn back to front: 1-3 horizontal stuff layers (a horizon, or a band between two
boundaries, each slightly tilted and wavy), then 1-6 things painted in order, so later things occlude
earlier ones. The panoptic label map (``(height, width)`` int array, one entity index per pixel) is the
single source of truth: visible masks, tight boxes and the image are all derived from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from pancapchain.data.boxes import mask_box
from pancapchain.data.schema import Box
from pancapchain.data.synth_shapes import (
    AREA_FACTOR,
    PATTERNS,
    THING_KINDS,
    grow,
    pattern_cell,
    pattern_mask,
    shape_masks,
    stuff_shade,
)

ASPECTS = (1.0, 0.75, 1.33)
MIN_SIZE = 32
THING_COLORS = {
    "red": (205, 40, 40),
    "orange": (240, 135, 25),
    "yellow": (240, 215, 40),
    "green": (40, 165, 60),
    "blue": (35, 75, 210),
    "purple": (135, 55, 175),
    "white": (240, 240, 240),
    "black": (25, 25, 25),
}
STUFF_COLORS = {
    "sky": {"blue": (120, 170, 230), "gray": (165, 170, 180)},
    "water": {"blue": (40, 95, 170), "green": (40, 130, 115)},
    "wall": {"white": (220, 215, 205), "brown": (150, 100, 70)},
    "floor": {"brown": (125, 85, 55), "gray": (120, 120, 115)},
    "grass": {"green": (75, 150, 55), "yellow": (185, 180, 70)},
    "ground": {"brown": (125, 90, 55), "gray": (115, 112, 105)},
    "sand": {"yellow": (220, 200, 140), "white": (235, 228, 205)},
}
STUFF_LAYOUTS = {  # top to bottom
    1: (("wall",), ("grass",), ("water",), ("sand",), ("ground",)),
    2: (("sky", "grass"), ("sky", "ground"), ("sky", "water"), ("sky", "sand"), ("wall", "floor")),
    3: (
        ("sky", "water", "sand"),
        ("sky", "grass", "ground"),
        ("sky", "sand", "water"),
        ("sky", "ground", "grass"),
    ),
}
STUFF_PLACES = {1: ("whole",), 2: ("top", "bottom"), 3: ("top", "middle", "bottom")}
SIZE_WORDS = ("small", "medium", "large")
SIZE_THRESHOLDS = (0.0635, 0.1008)  # shape area / image area; thirds of the log-uniform target range
LIGHTINGS = ("bright daylight", "dim light", "soft light")
PALETTES = ("warm", "cool", "muted", "vivid")
HIDDEN = "partially hidden"
MAX_THINGS = 6  # 3.3 things per scene on average (4.3 with up to 8 of the smaller ones)

# Target shape area / image area, drawn log-uniformly. Sized for the tiny tower's 8 x 8 patch grid: a thing
# spans 1.6-3.2 patches a side, where LLaVA-1.5's 24 x 24 grid sees SA-Pancap's median entity 4.9 patches a
# side. The earlier (0.012, 0.1) gave 0.9-2.5 patches, too few to tell a shape's kind or edges
# (docs/learning_quality.md, "Things the patch grid can see").
_AREA_RANGE = (0.04, 0.16)
_THING_BUDGET = 0.5  # total shape area of all things / image area
_MIN_STUFF_VISIBLE = 0.4  # a thing may not hide more than 60% of any stuff region
_DROP_VISIBLE = 0.2  # a thing keeping less than this share of its shape visible is dropped
_HIDDEN_VISIBLE = 0.8  # below this visible share the thing is "partially hidden"
_MIN_COLOR_DISTANCE = 110.0  # a thing's colour must stand out from the stuff under its centre
_MIN_RADIUS = 5.0


@dataclass
class SceneEntity:
    """One stuff region or thing. ``full`` is its region before occlusion, ``visible`` what remains."""

    tag: str
    is_thing: bool
    color: str
    rgb: tuple[int, int, int]
    full: np.ndarray
    filled: np.ndarray
    place: str = ""  # stuff: whole/top/middle/bottom
    kind: str = ""
    pattern: str = "solid"
    origin: tuple[int, int] = (0, 0)  # pattern origin (x, y)
    cell: int = 2
    size_word: str = ""
    draw_order: int = 0
    visible: np.ndarray | None = None
    box: Box = (0.0, 0.0, 0.0, 0.0)
    attributes: tuple[str, ...] = field(default=())

    @property
    def area(self) -> int:
        return int(self.full.sum())


@dataclass
class SceneLayout:
    width: int
    height: int
    stuff: list[SceneEntity]
    things: list[SceneEntity]
    lighting: str
    palette: str


def image_shape(size: int, rng: np.random.Generator) -> tuple[int, int]:
    """``(width, height)``: width ``size``, height ``round(size * aspect)`` for a drawn aspect."""
    aspect = ASPECTS[int(rng.integers(len(ASPECTS)))]
    return size, max(MIN_SIZE // 2, round(size * aspect))


def size_word(area_fraction: float) -> str:
    for word, limit in zip(SIZE_WORDS, SIZE_THRESHOLDS):
        if area_fraction < limit:
            return word
    return SIZE_WORDS[-1]


def _boundary_rows(rng: np.random.Generator, level: float, width: int, height: int) -> np.ndarray:
    """Row (float) of a tilted, gently wavy boundary at every column; ``level`` is its mean height share."""
    xs = np.arange(width, dtype=np.float32) + 0.5
    tilt = rng.uniform(-0.1, 0.1) * height / width
    amp = rng.uniform(0.0, 0.03) * height
    freq, phase = int(rng.integers(1, 3)), rng.uniform(0, 2 * math.pi)
    return level * height + tilt * (xs - width / 2) + amp * np.sin(2 * math.pi * freq * xs / width + phase)


def _draw_stuff(rng: np.random.Generator, width: int, height: int) -> tuple[list[SceneEntity], np.ndarray]:
    """Stuff layers top to bottom, and the ``(height, width)`` int16 layer map (stuff index per pixel)."""
    n_layers = int(rng.integers(1, 4))
    names = STUFF_LAYOUTS[n_layers][int(rng.integers(len(STUFF_LAYOUTS[n_layers])))]
    if n_layers == 1:
        levels: list[float] = []
    elif n_layers == 2:
        levels = [rng.uniform(0.3, 0.7)]
    else:
        first = rng.uniform(0.25, 0.45)
        levels = [first, rng.uniform(first + 0.25, 0.8)]
    rows = (np.arange(height, dtype=np.float32) + 0.5)[:, None]
    layer = np.zeros((height, width), dtype=np.int16)
    for level in levels:
        layer += rows >= _boundary_rows(rng, level, width, height)[None, :]
    stuff = []
    for index, (name, place) in enumerate(zip(names, STUFF_PLACES[n_layers])):
        color = list(STUFF_COLORS[name])[int(rng.integers(len(STUFF_COLORS[name])))]
        region = layer == index
        stuff.append(SceneEntity(name, False, color, STUFF_COLORS[name][color], region, region, place=place))
    return stuff, layer


def _pick_color(
    rng: np.random.Generator, background: tuple[int, int, int], neighbours: set[str]
) -> str | None:
    """A colour far from the stuff under the thing and unlike the things it touches (so it stays
    separable); None when no colour qualifies."""
    far = [
        name
        for name, rgb in THING_COLORS.items()
        if math.dist(rgb, background) >= _MIN_COLOR_DISTANCE and name not in neighbours
    ]
    return far[int(rng.integers(len(far)))] if far else None


def _try_thing(
    rng: np.random.Generator,
    stuff: list[SceneEntity],
    things: list[SceneEntity],
    layer: np.ndarray,
    label: np.ndarray,
    used_area: int,
    shrink: bool,
) -> SceneEntity | None:
    """One placement attempt; None when it breaks the area budget or hides too much of a stuff region."""
    height, width = label.shape
    kind = THING_KINDS[int(rng.integers(len(THING_KINDS)))]
    target = math.exp(rng.uniform(math.log(_AREA_RANGE[0]), math.log(_AREA_RANGE[1])))
    target *= 0.4 if shrink else 1.0
    radius = math.sqrt(target * width * height / (math.pi * AREA_FACTOR[kind]))
    radius = min(max(radius, _MIN_RADIUS), 0.3 * min(width, height))
    cx, cy = rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)
    shape, filled = shape_masks(kind, cx, cy, radius, height, width)
    area = int(shape.sum())
    if area == 0 or used_area + area > _THING_BUDGET * width * height:
        return None
    n_labels = int(label.max()) + 1
    now = np.bincount(label.ravel(), minlength=n_labels)
    covered = np.bincount(label[shape], minlength=n_labels)
    for index, region in enumerate(stuff):
        if now[index] - covered[index] < _MIN_STUFF_VISIBLE * region.area:
            return None
    under = stuff[int(layer[min(int(cy), height - 1), min(int(cx), width - 1)])]
    # whole shapes, not today's visible pixels: a thing dropped later as hidden uncovers the ones beneath it,
    # and they must not meet a neighbour of their own colour then
    around = grow(shape)
    neighbours = {t.color for t in things if (t.full & around).any()}
    color = _pick_color(rng, under.rgb, neighbours)
    if color is None:
        return None
    pattern = PATTERNS[int(rng.integers(len(PATTERNS)))]
    return SceneEntity(
        f"{color} {kind}",
        True,
        color,
        THING_COLORS[color],
        shape,
        filled,
        kind=kind,
        pattern=pattern,
        origin=(int(cx - radius), int(cy - radius)),
        cell=pattern_cell(radius),
        size_word=size_word(area / (width * height)),
    )


def _draw_things(
    rng: np.random.Generator, stuff: list[SceneEntity], layer: np.ndarray, attempts: int = 12
) -> list[SceneEntity]:
    """Place 1-6 things in drawing order (later ones in front); a thing whose attempts all fail is skipped."""
    label = layer.copy()
    things: list[SceneEntity] = []
    used = 0
    for _ in range(int(rng.integers(1, MAX_THINGS + 1))):
        for attempt in range(attempts):
            thing = _try_thing(rng, stuff, things, layer, label, used, shrink=attempt >= attempts // 2)
            if thing is not None:
                thing.draw_order = len(things)
                label[thing.full] = len(stuff) + len(things)
                things.append(thing)
                used += thing.area
                break
    return things


def paint_labels(layer: np.ndarray, n_stuff: int, things: list[SceneEntity]) -> np.ndarray:
    """Panoptic label map ``(height, width)``: stuff index, overwritten by things in drawing order."""
    label = layer.astype(np.int16, copy=True)
    for offset, thing in enumerate(things):
        label[thing.full] = n_stuff + offset
    return label


def resolve_visibility(
    stuff: list[SceneEntity], things: list[SceneEntity], layer: np.ndarray
) -> list[SceneEntity]:
    """Drop (nearly) fully occluded things, then set every kept entity's visible mask, box and attributes.

    Dropping a thing only uncovers pixels, so one repaint suffices. Returns the kept things; stuff whose
    every pixel is hidden is removed from ``stuff`` in place (its placement rules make that rare).
    """
    label = paint_labels(layer, len(stuff), things)
    counts = np.bincount(label.ravel(), minlength=len(stuff) + len(things))
    kept = [t for i, t in enumerate(things) if counts[len(stuff) + i] >= max(4, _DROP_VISIBLE * t.area)]
    label = paint_labels(layer, len(stuff), kept)
    for index, ent in enumerate(stuff + kept):
        ent.visible = label == index
    stuff[:] = [s for s in stuff if s.visible.any()]  # type: ignore[union-attr]
    for ent in stuff + kept:
        ent.box = mask_box(ent.visible)  # type: ignore[arg-type]
        if ent.is_thing:
            hidden = ent.visible.sum() < _HIDDEN_VISIBLE * ent.area  # type: ignore[union-attr]
            ent.attributes = (ent.size_word, ent.pattern, ent.color) + ((HIDDEN,) if hidden else ())
        else:
            ent.attributes = (ent.color,)
    return kept


def draw_layout(rng: np.random.Generator, size: int) -> SceneLayout:
    """A full scene layout (no pixels yet) for an image of width ``size``."""
    if size < MIN_SIZE:
        raise ValueError(f"image size {size} is too small; the generator needs at least {MIN_SIZE} px")
    width, height = image_shape(size, rng)
    stuff, layer = _draw_stuff(rng, width, height)
    things = _draw_things(rng, stuff, layer)
    things = resolve_visibility(stuff, things, layer)
    lighting = LIGHTINGS[int(rng.integers(len(LIGHTINGS)))]
    palette = PALETTES[int(rng.integers(len(PALETTES)))]
    return SceneLayout(width, height, stuff, things, lighting, palette)


def _secondary(rgb: tuple[int, int, int]) -> np.ndarray:
    """The pattern colour: a darker shade for light colours, a lighter tint otherwise."""
    base = np.asarray(rgb, dtype=np.float32)
    if base.mean() > 170:
        return base * 0.45
    return base + (255.0 - base) * 0.6


def _apply_global(img: np.ndarray, lighting: str, palette: str) -> np.ndarray:
    gray = img.mean(axis=2, keepdims=True)
    if palette == "warm":
        img = img * np.array([1.1, 1.0, 0.82], dtype=np.float32)
    elif palette == "cool":
        img = img * np.array([0.82, 0.97, 1.12], dtype=np.float32)
    elif palette == "muted":
        img = gray + (img - gray) * 0.45
    else:  # vivid
        img = gray + (img - gray) * 1.35
    if lighting == "bright daylight":
        return img * 1.08 + 12.0
    if lighting == "dim light":
        return img * 0.5
    return img * 0.7 + 45.0  # soft light: low contrast


def render(layout: SceneLayout, rng: np.random.Generator) -> np.ndarray:
    """The RGB image, ``(height, width, 3)`` uint8, painted from the visible masks."""
    img = np.zeros((layout.height, layout.width, 3), dtype=np.float32)
    scale = layout.width / 64.0
    for ent in layout.stuff:
        ys, xs = np.nonzero(ent.visible)
        shade = stuff_shade(ent.tag, ys, xs, layout.height, scale, rng)
        img[ys, xs] = np.asarray(ent.rgb, dtype=np.float32)[None, :] * shade[:, None]
    for ent in layout.things:
        ys, xs = np.nonzero(ent.visible)
        second = pattern_mask(ent.pattern, ys - ent.origin[1], xs - ent.origin[0], ent.cell)
        img[ys, xs] = np.where(second[:, None], _secondary(ent.rgb)[None, :], np.asarray(ent.rgb)[None, :])
    img = _apply_global(img, layout.lighting, layout.palette)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)
