"""Pixel-level drawing primitives of the synthetic generator: thing shapes, fill patterns, stuff textures.

All masks are boolean arrays of shape ``(height, width)``; pixel ``(y, x)`` is sampled at its centre
``(x + 0.5, y + 0.5)``. Shapes are given by a centre ``(cx, cy)`` and an outer radius ``r`` in pixels and
are computed only inside their bounding window, so drawing cost does not grow with the image size.
"""

from __future__ import annotations

import math

import numpy as np

THING_KINDS = ("circle", "square", "triangle", "star", "ring", "cross", "diamond", "hexagon")
PATTERNS = ("solid", "striped", "dotted", "checkered")

_STAR_POINTS = 5
_STAR_INNER = 0.45
_RING_INNER = 0.55
_CROSS_HALF_WIDTH = 0.33
_SQUARE_HALF_SIDE = 0.8


def _kind_inside(kind: str, dx: np.ndarray, dy: np.ndarray, r: float) -> tuple[np.ndarray, np.ndarray]:
    """(shape, filled) membership of offsets ``dx, dy`` from the centre; ``filled`` closes the ring's hole."""
    ax, ay = np.abs(dx), np.abs(dy)
    dist2 = dx * dx + dy * dy
    if kind == "circle":
        inside = dist2 <= r * r
    elif kind == "square":
        inside = (ax <= _SQUARE_HALF_SIDE * r) & (ay <= _SQUARE_HALF_SIDE * r)
    elif kind == "diamond":
        inside = ax + ay <= r
    elif kind == "triangle":  # equilateral, apex up, inscribed in the circle of radius r
        inside = (dy <= 0.5 * r) & (ax <= (dy + r) / math.sqrt(3.0))
    elif kind == "hexagon":  # flat top and bottom
        inside = (ay <= 0.866 * r) & (0.866 * ax + 0.5 * ay <= 0.866 * r)
    elif kind == "cross":
        half = _CROSS_HALF_WIDTH * r
        inside = ((ax <= half) & (ay <= r)) | ((ay <= half) & (ax <= r))
    elif kind == "star":
        # Fold every point into the half-sector between a tip (r, 0) and the next inner vertex, then
        # test which side of that straight edge it lies on.
        half = math.pi / _STAR_POINTS
        theta = np.arctan2(dx, -dy)  # 0 = pointing up
        local = np.abs(np.mod(theta + half, 2.0 * half) - half)
        dist = np.sqrt(dist2)
        u, v = dist * np.cos(local), dist * np.sin(local)
        ex, ey = _STAR_INNER * r * math.cos(half) - r, _STAR_INNER * r * math.sin(half)
        inside = ex * v - ey * (u - r) >= 0.0
    elif kind == "ring":
        filled = dist2 <= r * r
        return filled & (dist2 >= (_RING_INNER * r) ** 2), filled
    else:
        raise ValueError(f"unknown thing kind {kind!r}; known: {THING_KINDS}")
    return inside, inside


def shape_masks(
    kind: str, cx: float, cy: float, r: float, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean ``(height, width)`` masks ``(shape, filled)`` of one thing; ``filled`` differs only for rings."""
    shape = np.zeros((height, width), dtype=bool)
    filled = np.zeros((height, width), dtype=bool)
    y0, y1 = max(0, int(cy - r) - 1), min(height, int(cy + r) + 2)
    x0, x1 = max(0, int(cx - r) - 1), min(width, int(cx + r) + 2)
    if y0 >= y1 or x0 >= x1:
        return shape, filled
    dy = (np.arange(y0, y1, dtype=np.float32) + 0.5 - cy)[:, None]
    dx = (np.arange(x0, x1, dtype=np.float32) + 0.5 - cx)[None, :]
    dx, dy = np.broadcast_arrays(dx, dy)
    inside, closed = _kind_inside(kind, dx, dy, r)
    shape[y0:y1, x0:x1] = inside
    filled[y0:y1, x0:x1] = closed
    return shape, filled


def grow(mask: np.ndarray) -> np.ndarray:
    """``mask`` dilated by one pixel in the 4-neighbourhood (same shape, bool)."""
    grown = mask.copy()
    grown[1:, :] |= mask[:-1, :]
    grown[:-1, :] |= mask[1:, :]
    grown[:, 1:] |= mask[:, :-1]
    grown[:, :-1] |= mask[:, 1:]
    return grown


def _unit_area(kind: str, r: float = 60.0) -> float:
    size = int(2 * r + 4)
    shape, _ = shape_masks(kind, size / 2.0, size / 2.0, r, size, size)
    return float(shape.sum()) / (math.pi * r * r)


AREA_FACTOR = {kind: _unit_area(kind) for kind in THING_KINDS}
"""Area of each kind relative to the circle of the same outer radius (measured once on a large grid)."""


def pattern_cell(r: float) -> int:
    """Pattern period (pixels) for a thing of outer radius ``r``: at least 2 px so it survives 64-px images."""
    return max(2, round(r / 3.0))


def pattern_mask(pattern: str, ys: np.ndarray, xs: np.ndarray, cell: int) -> np.ndarray:
    """Which of the pixels at integer coordinates ``ys, xs`` (1-D, same length) take the secondary colour."""
    if pattern == "solid":
        return np.zeros(ys.shape, dtype=bool)
    if pattern == "striped":  # diagonal stripes
        return ((xs + ys) // cell) % 2 == 1
    if pattern == "checkered":
        return ((xs // cell) + (ys // cell)) % 2 == 1
    if pattern == "dotted":  # small dots on a grid of twice the cell
        step = 2 * cell
        return ((xs % step) < max(1, cell // 2 + 1)) & ((ys % step) < max(1, cell // 2 + 1))
    raise ValueError(f"unknown pattern {pattern!r}; known: {PATTERNS}")


def stuff_shade(
    name: str, ys: np.ndarray, xs: np.ndarray, height: int, scale: float, rng: np.random.Generator
) -> np.ndarray:
    """Multiplicative brightness (about 0.7-1.15) per pixel of a stuff region: its visible texture.

    ``ys, xs`` are the 1-D integer coordinates of the region's pixels; ``scale`` = image size / 64, so
    textures keep their look across resolutions.
    """
    period = max(2, round(4 * scale))
    rows = ys / max(1, height - 1)
    if name == "sky":
        return 0.92 + 0.16 * rows
    if name == "water":
        wave = np.sin(2 * np.pi * (ys / period + 0.25 * np.sin(2 * np.pi * xs / (5 * period))))
        return 1.0 + 0.1 * np.sign(wave)
    if name == "wall":  # bricks: mortar rows plus staggered joints
        row = ys // period
        joint = (xs + (row % 2) * period) % (2 * period) == 0
        return np.where((ys % period == 0) | joint, 0.75, 1.0)
    if name == "floor":  # planks
        return np.where(xs % (3 * period) == 0, 0.78, 1.0) * (0.95 + 0.1 * rows)
    if name == "grass":
        return np.where(rng.random(ys.shape) < 0.3, 0.82, 1.0)
    if name in ("ground", "sand"):
        return 1.0 + rng.normal(0.0, 0.06, ys.shape)
    raise ValueError(f"unknown stuff {name!r}")
