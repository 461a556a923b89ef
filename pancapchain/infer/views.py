"""Stage 1 seen from several views: the box list voted over copies of the image moved by half a vision patch.

A location-token model writes a box "about here" at the resolution of the tower's patch grid: most of stage 1's
errors are a box on the wrong grid phase, or a box on nothing. Moving the image by half a patch puts every
entity on another phase of the same grid, and mirroring it swaps every entity's left and right edges on it, so
the views' errors are partly independent. ``fuse_box_lists`` keeps an entity that enough views find and places
it at the coordinate-wise median of their boxes; it can also drop an entity that overlaps one more views found
(the second box the model writes on one entity). Measured in docs/learning_quality.md, "Stage 1
voted over shifted views" and the sections after it.

Only stage 1 is voted: its answer is boxes that can be matched view to view. (Stage 2 voted the same way was
measured and not kept, see pancapchain.infer.view_stages; a direct caption's boxes sit inside text that differs
from view to view, so there is nothing to vote on.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps
from scipy.optimize import linear_sum_assignment

from pancapchain.data.boxes import box_iou, box_iou_matrix_f32
from pancapchain.data.schema import Box

# The shifts of the views in patches, (0, 0) first: the centre view, then the 4 edge neighbours, then the 4
# corners of a 3x3 grid of half-patch moves. ``views=n`` uses the first n.
VIEW_SHIFTS: tuple[tuple[float, float], ...] = (
    (0.0, 0.0), (0.5, 0.0), (0.0, 0.5), (-0.5, 0.0), (0.0, -0.5),
    (0.5, 0.5), (-0.5, 0.5), (0.5, -0.5), (-0.5, -0.5),
)
# A stage-3 find "was seen" by a view that has a box on it at this IoU (the matching IoU of the evaluation).
SEEN_IOU = 0.5
# Two views' boxes are one entity when their IoU is at least this (low: each view's box is off by up to half a
# patch; the Hungarian matching keeps one box per view per entity).
MATCH_IOU = 0.3


def total_views(views: int, mirror: bool) -> int:
    """How many stage-1 views vote: ``views`` shifted copies, twice with their mirror images."""
    return views * (2 if mirror else 1)


def view_pixel_shifts(views: int, width: int, height: int, patch_fraction: float) -> list[tuple[int, int]]:
    """The first ``views`` shifts in pixels of a ``width`` x ``height`` image, for a tower whose patch is
    ``patch_fraction`` of the image side (patch_size / image_size)."""
    if not 1 <= views <= len(VIEW_SHIFTS):
        raise ValueError(f"views={views}: between 1 and {len(VIEW_SHIFTS)}")
    return [(round(fx * patch_fraction * width), round(fy * patch_fraction * height))
            for fx, fy in VIEW_SHIFTS[:views]]


def shift_image(image: Image.Image, dx: int, dy: int) -> Image.Image:
    """``image`` with its content moved by (dx, dy) pixels (right/down positive), same size; the uncovered border
    repeats the edge pixels (a flat band of a new colour could read as an entity)."""
    if dx == 0 and dy == 0:
        return image
    pixels = np.asarray(image.convert("RGB"))
    height, width = pixels.shape[:2]
    padded = np.pad(pixels, ((abs(dy), abs(dy)), (abs(dx), abs(dx)), (0, 0)), mode="edge")
    top, left = abs(dy) - dy, abs(dx) - dx
    return Image.fromarray(padded[top : top + height, left : left + width])


def unshift_box(box: Box, dx: int, dy: int, width: int, height: int) -> Box:
    """A normalized box read on the shifted image, moved back onto the original and clipped to it."""
    ox, oy = dx / width, dy / height
    x1, y1, x2, y2 = (min(max(v, 0.0), 1.0) for v in (box[0] - ox, box[1] - oy, box[2] - ox, box[3] - oy))
    return (x1, y1, x2, y2)


def mirror_image(image: Image.Image) -> Image.Image:
    """``image`` mirrored left to right (a mirrored view: its errors are less tied to the centre view's than a
    shift's, as every entity's left and right edges swap places on the patch grid)."""
    return ImageOps.mirror(image.convert("RGB"))


def unmirror_box(box: Box) -> Box:
    """A normalized box read on the mirrored image, on the original."""
    return (1.0 - box[2], box[1], 1.0 - box[0], box[3])


@dataclass(frozen=True)
class View:
    """One view of an image: mirrored left to right (or not), then moved by (dx, dy) pixels."""

    dx: int
    dy: int
    mirrored: bool = False

    def image(self, image: Image.Image) -> Image.Image:
        return shift_image(mirror_image(image) if self.mirrored else image, self.dx, self.dy)

    def box_on_original(self, box: Box, width: int, height: int) -> Box:
        """A normalized box read on this view, moved back onto the original image (clipped to it)."""
        moved = unshift_box(box, self.dx, self.dy, width, height)
        return unmirror_box(moved) if self.mirrored else moved


def image_views(views: int, mirror: bool, width: int, height: int, patch_fraction: float) -> list[View]:
    """The first ``views`` half-patch shifts of a ``width`` x ``height`` image, then (``mirror``) the same shifts
    of its mirror image; the first view is the image itself."""
    shifts = view_pixel_shifts(views, width, height, patch_fraction)
    return [View(dx, dy) for dx, dy in shifts] + ([View(dx, dy, True) for dx, dy in shifts] if mirror else [])


def fuse_box_lists(lists: Sequence[Sequence[Box]], votes: int, match_iou: float = MATCH_IOU,
                   ordered: Sequence[bool] | None = None, suppress_iou: float = 0.0) -> list[Box]:
    """Vote over the views' box lists (each in its view's answer order) of one image.

    Each view's boxes are matched one to one (Hungarian, IoU >= ``match_iou``) to the entities found so far,
    each entity represented by the median of its boxes; an unmatched box starts a new entity. Entities found by
    at least ``votes`` views are kept, at the coordinate-wise median of their boxes, ordered by their mean
    relative position in the views' answers (so the voted list keeps the order the model was taught).
    ``ordered[v]`` False: view v's answer order is not the image's (a mirrored view); its positions count only
    for an entity no ordered view found. ``suppress_iou`` > 0: a kept entity whose box overlaps, at IoU >= it,
    the box of a kept entity more views found is dropped (most of these are a second box the model writes on
    one entity in every view; entities found by equally many views are all kept).
    """
    entities: list[list[tuple[Box, float, bool]]] = []  # per entity: (box, rank in its view's list, ordered view)
    for view, boxes in enumerate(lists):
        in_order = True if ordered is None else bool(ordered[view])
        ranks = [i / max(len(boxes), 1) for i in range(len(boxes))]
        matched: dict[int, int] = {}
        if entities and boxes:
            centres = [_median(members) for members in entities]
            iou = box_iou_matrix_f32(np.array(centres), np.array(boxes))
            rows, cols = linear_sum_assignment(-iou)
            matched = {int(c): int(r) for r, c in zip(rows, cols) if iou[r, c] >= match_iou}
        for i, box in enumerate(boxes):
            if i in matched:
                entities[matched[i]].append((tuple(box), ranks[i], in_order))
            else:
                entities.append([(tuple(box), ranks[i], in_order)])
    kept = [(_median(members), members) for members in entities if len(members) >= votes]
    if suppress_iou > 0:
        kept = _suppress_overlaps(kept, suppress_iou)
    kept.sort(key=lambda entity: _mean_rank(entity[1]))
    return [box for box, _ in kept]


def _suppress_overlaps(entities: list[tuple[Box, list]], min_iou: float) -> list[tuple[Box, list]]:
    """``entities`` ((median box, members) each) without those overlapping (IoU >= ``min_iou``) one with more
    votes; greedy, most votes first, so a dropped entity suppresses nothing."""
    kept: list[tuple[Box, list]] = []
    for box, members in sorted(entities, key=lambda entity: len(entity[1]), reverse=True):
        if not any(len(members) < len(other) and box_iou(box, other_box) >= min_iou for other_box, other in kept):
            kept.append((box, members))
    return kept


def _mean_rank(members: Sequence[tuple[Box, float, bool]]) -> float:
    ranks = [rank for _, rank, in_order in members if in_order] or [rank for _, rank, _ in members]
    return float(np.mean(ranks))


def _median(members: Sequence[tuple]) -> Box:
    values = np.median(np.array([member[0] for member in members], dtype=np.float64), axis=0)
    return tuple(float(v) for v in values)


def views_seeing(box: Box, view_boxes: Sequence[Sequence[Box]], min_iou: float = SEEN_IOU) -> int:
    """How many views have a box on ``box`` at IoU >= ``min_iou`` (``view_boxes``: per view, its stage-1 boxes
    moved back onto the original image)."""
    return sum(any(box_iou(box, other) >= min_iou for other in boxes) for boxes in view_boxes)


def keep_seen(found: Sequence, view_boxes: Sequence[Sequence[Box]], min_views: int) -> tuple[list, int]:
    """Stage-3 items (``StageItem``) some box of which at least ``min_views`` stage-1 views boxed; the others are
    finds no view saw (mostly boxes on nothing). Returns (kept, number dropped)."""
    kept = [item for item in found if any(views_seeing(box, view_boxes) >= min_views for box in item.boxes)]
    return kept, len(found) - len(kept)
