"""Spatial relations between synthetic entities, decided from their masks and boxes.

At most one predicate holds for an ordered pair, in priority order inside > overlapping > next to >
direction, so stated relations never contradict each other. Every predicate implies a condition that
can be re-checked on the stored sample alone (visible masks and boxes):

* ``left of`` / ``right of`` / ``above`` / ``below``: the box centres differ by more than
  ``DIRECTION_MARGIN`` along that axis, and more along it than along the other axis;
* ``inside``: the subject's box lies within the object's box;
* ``overlapping``: the two shapes intersect and their visible masks touch (4-neighbourhood);
* ``next to``: the shapes do not intersect and the boxes are at most ``NEXT_TO_GAP`` apart.
"""

from __future__ import annotations

import numpy as np

from pancapchain.data.schema import Box
from pancapchain.data.synth_scene import SceneEntity
from pancapchain.data.synth_shapes import grow

PREDICATES = ("left of", "right of", "above", "below", "inside", "overlapping", "next to")
INVERSE = {
    "left of": "right of",
    "right of": "left of",
    "above": "below",
    "below": "above",
    "next to": "next to",
}
DIRECTION_MARGIN = 0.1
NEXT_TO_GAP = 0.04
_INSIDE_SHARE = 0.8  # share of the subject's shape within the object's filled outline
_INSIDE_STUFF_SHARE = 0.95
_MAX_INSIDE_AREA = 0.5  # subject area / object's filled area
_WHOLE_IMAGE = 0.9  # stuff covering more of the image is not a useful "inside" object
_MIN_OVERLAP_PX = 3


def box_center(box: Box) -> tuple[float, float]:
    return (box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0


def box_gap(a: Box, b: Box) -> float:
    """Chebyshev distance between two boxes (0 when they intersect or touch)."""
    gap_x = max(0.0, b[0] - a[2], a[0] - b[2])
    gap_y = max(0.0, b[1] - a[3], a[1] - b[3])
    return max(gap_x, gap_y)


def box_within(inner: Box, outer: Box) -> bool:
    return inner[0] >= outer[0] and inner[1] >= outer[1] and inner[2] <= outer[2] and inner[3] <= outer[3]


def masks_touch(a: np.ndarray, b: np.ndarray) -> bool:
    """True when a pixel of ``a`` is 4-adjacent to (or on) a pixel of ``b``; both ``(height, width)`` bool."""
    return bool((grow(a) & b).any())


def direction(subject: Box, obj: Box) -> str | None:
    """``left of`` / ``right of`` / ``above`` / ``below`` from box centres, or None when not clear-cut."""
    (sx, sy), (ox, oy) = box_center(subject), box_center(obj)
    dx, dy = sx - ox, sy - oy
    if abs(dx) > abs(dy) and abs(dx) > DIRECTION_MARGIN:
        return "left of" if dx < 0 else "right of"
    if abs(dy) > abs(dx) and abs(dy) > DIRECTION_MARGIN:
        return "above" if dy < 0 else "below"
    return None


def _inside_thing(subject: SceneEntity, obj: SceneEntity) -> bool:
    filled_area = int(obj.filled.sum())
    if subject.area > _MAX_INSIDE_AREA * filled_area or not box_within(subject.box, obj.box):
        return False
    return int((subject.full & obj.filled).sum()) >= _INSIDE_SHARE * subject.area


def _inside_stuff(subject: SceneEntity, stuff: SceneEntity) -> bool:
    if stuff.full.mean() > _WHOLE_IMAGE or not box_within(subject.box, stuff.box):
        return False
    return int((subject.full & stuff.full).sum()) >= _INSIDE_STUFF_SHARE * subject.area


def relate(subject: SceneEntity, obj: SceneEntity) -> str | None:
    """The single predicate that holds for thing ``subject`` and entity ``obj``, or None.

    Things relate to stuff only by ``inside`` (the thing sits within that region).
    """
    if not obj.is_thing:
        return "inside" if _inside_stuff(subject, obj) else None
    if _inside_thing(subject, obj):
        return "inside"
    overlap = int((subject.full & obj.full).sum())
    if overlap >= _MIN_OVERLAP_PX and masks_touch(subject.visible, obj.visible):  # type: ignore[arg-type]
        return "overlapping"
    if overlap == 0 and box_gap(subject.box, obj.box) <= NEXT_TO_GAP:
        return "next to"
    if overlap > 0:
        return None  # shapes touch but their visible parts do not: no clean statement
    return direction(subject.box, obj.box)
