"""Box formats: normalized floats (the data contract) <-> text the model reads and writes.

Three text formats (a recipe option, ``data.box_format``):

* ``asmv2`` (the paper's): ``<box>[[x1, y1, x2, y2]]</box>`` with integers in ``[0, 1000]`` relative to
  the image padded to a centered square (LLaVA "pad" mode), so an ASMv2 base is fine-tuned as in the paper.
* ``normalized``: ``[[x1, y1, x2, y2]]`` with 3 decimals relative to the original image (SA-Pancap style).
* ``bins`` (tiny recipes): ``<box><loc_3><loc_5><loc_20><loc_28></box>``, one token per coordinate, an integer in
  ``[0, LOC_BINS]`` on the same padded square (Pix2Seq / Kosmos-2 style location tokens): a tiny model from
  scratch learns one classification per coordinate far more easily than 3-4 digit tokens and separators.

Several boxes for one mention share one bracket group: ``[[a, b, c, d], [e, f, g, h]]`` (in ``bins``: 8 tokens).

Reading a group (``group_frame``) follows one rule per format, never the size of a value:

* ``official`` (the official PancapScore step 0, the evaluation default): only a single-box group written
  exactly ``<box>[[d, d, d, d]]</box>`` (digits, ", " separators) is the 0-1000 grid; every other group is
  read as written, i.e. as normalized coordinates.
* ``lenient`` (model outputs inside the project; ``eval --box-rules lenient``): also multi-box and
  loosely spaced ``<box>`` groups and bare ``[[..]]`` groups written in integers with a value above 1
  are the grid; a group with a decimal point is normalized.
* ``strict`` (anything a user types: ``strict_decode_group`` / ``read_user_box``): ``<box>[[..]]</box>``
  must hold integers in [0, 1000], ``[[..]]`` values in [0, 1]; anything else raises ``BoxFormatError``.

``bins`` groups are always bins. Normalized values outside [0, 1] are clipped (official/lenient).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from pancapchain.constants import BOX_CLOSE, BOX_FORMATS, BOX_GRID, BOX_OPEN, LOC_BINS
from pancapchain.data.schema import Box

_NUM = r"-?\d+(?:\.\d+)?"
_QUAD = rf"{_NUM}\s*,\s*{_NUM}\s*,\s*{_NUM}\s*,\s*{_NUM}"
_LOC_QUAD = r"(?:<loc_\d+>){4}"
BOX_GROUP_RE = re.compile(
    rf"(?P<open><box>\s*)?\[\[\s*(?P<body>{_QUAD}(?:\s*\]\s*,\s*\[\s*{_QUAD})*)\s*\]\](?P<close>\s*</box>)?"
    rf"|<box>(?P<locs>(?:{_LOC_QUAD})+)</box>"
)
_NUM_RE = re.compile(_NUM)
_LOC_RE = re.compile(r"<loc_(\d+)>")
_OFFICIAL_GRID_RE = re.compile(r"<box>\[\[\d+, \d+, \d+, \d+\]\]</box>")  # the official step-0 pattern
BOX_RULES = ("official", "lenient")


class BoxFormatError(ValueError):
    """A box typed by a user that breaks its format's rule; the message names the value and the group."""


@dataclass(frozen=True)
class BoxGroup:
    """One bracket group found in text: its character span, raw numbers, and whether it was ``<box>``-tagged."""

    start: int
    end: int
    values: tuple[tuple[float, float, float, float], ...]
    tagged: bool
    binned: bool = False  # <loc_i> tokens: values are bin indices in [0, LOC_BINS]
    integers: bool = False  # every number written without a decimal point
    official_grid: bool = False  # exactly the official step-0 form <box>[[d, d, d, d]]</box>
    raw: str = ""

    @property
    def is_integer_grid(self) -> bool:
        """True when the lenient rule reads the numbers as 0-1000 grid integers."""
        return group_frame(self, "lenient") == "grid"


def group_frame(group: BoxGroup, rules: str = "lenient") -> str:
    """How a group's numbers are read under ``rules`` (see the module doc): "bins", "grid" or "normalized"."""
    if rules not in BOX_RULES:
        raise ValueError(f"unknown box rules {rules!r}; choose one of {BOX_RULES}")
    if group.binned:
        return "bins"
    if rules == "official":
        return "grid" if group.official_grid else "normalized"
    above_one = any(v > 1.0 for quad in group.values for v in quad)
    return "grid" if group.integers and (group.tagged or above_one) else "normalized"


def find_box_groups(text: str) -> list[BoxGroup]:
    """All bracket groups ``[[..]]`` / ``<box>[[..]]</box>`` in ``text``, in order."""
    groups = []
    for m in BOX_GROUP_RE.finditer(text):
        binned = m.group("locs") is not None
        found = _LOC_RE.findall(m.group("locs")) if binned else _NUM_RE.findall(m.group("body"))
        nums = [float(n) for n in found]
        quads = tuple(tuple(nums[i : i + 4]) for i in range(0, len(nums), 4))
        tagged = binned or m.group("open") is not None
        integers = all("." not in n for n in found)
        official = _OFFICIAL_GRID_RE.fullmatch(m.group(0)) is not None
        groups.append(
            BoxGroup(m.start(), m.end(), quads, tagged, binned, integers, official, m.group(0))  # type: ignore[arg-type]
        )
    return groups


def _square_geometry(width: int, height: int) -> tuple[float, float, float]:
    side = float(max(width, height))
    return side, (side - width) / 2.0, (side - height) / 2.0


def mask_box(mask: np.ndarray, decimals: int | None = 3) -> Box:
    """Tight normalized xyxy box of a non-empty ``(height, width)`` mask, rounded to ``decimals`` (the synthetic
    scenes' boxes) or exact (None: stage-1 boxes read off predicted masks, which the vote takes medians of)."""
    height, width = mask.shape
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    box = (cols[0] / width, rows[0] / height, (cols[-1] + 1) / width, (rows[-1] + 1) / height)
    # numpy's round (on the float64s), not Python's: the recorded synthetic datasets were written with it
    return tuple(float(v if decimals is None else round(v, decimals)) for v in box)  # type: ignore[return-value]


def norm_to_grid(box: Box, width: int, height: int, grid: int = BOX_GRID) -> tuple[int, int, int, int]:
    """Normalized xyxy (original image) -> integers in [0, grid] on the centered padded square."""
    side, padx, pady = _square_geometry(width, height)
    x1, y1, x2, y2 = box
    vals = (
        (x1 * width + padx) / side,
        (y1 * height + pady) / side,
        (x2 * width + padx) / side,
        (y2 * height + pady) / side,
    )
    return tuple(min(grid, max(0, round(v * grid))) for v in vals)  # type: ignore[return-value]


def grid_to_norm(values: tuple[float, ...], width: int, height: int, grid: int = BOX_GRID) -> Box:
    """Integers in [0, grid] on the padded square -> normalized xyxy on the original image, clipped to [0, 1]."""
    side, padx, pady = _square_geometry(width, height)
    x1, y1, x2, y2 = (v / grid * side for v in values)

    def clip(v: float) -> float:
        return min(1.0, max(0.0, v))

    return (clip((x1 - padx) / width), clip((y1 - pady) / height), clip((x2 - padx) / width), clip((y2 - pady) / height))


def format_normalized(boxes: list[Box] | tuple[Box, ...]) -> str:
    """``[[0.100, 0.200, 0.400, 0.600]]`` (several boxes: ``[[..], [..]]``)."""
    inner = "], [".join(", ".join(f"{v:.3f}" for v in b) for b in boxes)
    return f"[[{inner}]]"


def format_bins(bins: list[tuple[int, ...]] | tuple[tuple[int, ...], ...]) -> str:
    """``<box><loc_3><loc_5><loc_20><loc_28></box>`` (several boxes: 4 tokens each inside one pair)."""
    return BOX_OPEN + "".join(f"<loc_{int(v)}>" for b in bins for v in b) + BOX_CLOSE


def format_grid(grids: list[tuple[int, ...]] | tuple[tuple[int, ...], ...]) -> str:
    """``<box>[[100, 200, 400, 600]]</box>`` (several boxes: ``<box>[[..], [..]]</box>``)."""
    inner = "], [".join(", ".join(str(int(v)) for v in g) for g in grids)
    return f"{BOX_OPEN}[[{inner}]]{BOX_CLOSE}"


class BoxCodec:
    """Encode/decode boxes in one text format for one image size."""

    def __init__(self, box_format: str):
        if box_format not in BOX_FORMATS:
            raise ValueError(f"unknown box format {box_format!r}; choose one of {BOX_FORMATS}")
        self.box_format = box_format

    def encode(self, boxes: list[Box] | tuple[Box, ...], width: int, height: int) -> str:
        """Normalized boxes (one mention) -> text in this format."""
        if self.box_format == "asmv2":
            return format_grid([norm_to_grid(b, width, height) for b in boxes])
        if self.box_format == "bins":
            return format_bins([norm_to_grid(b, width, height, LOC_BINS) for b in boxes])
        return format_normalized(boxes)

    def decode_group(self, group: BoxGroup, width: int, height: int, rules: str = "lenient") -> list[Box]:
        """A found bracket group -> normalized boxes (the group's own format under ``rules`` decides)."""
        frame = group_frame(group, rules)
        if frame == "bins":
            return [grid_to_norm(q, width, height, LOC_BINS) for q in group.values]
        if frame == "grid":
            return [grid_to_norm(q, width, height) for q in group.values]
        return [tuple(min(1.0, max(0.0, v)) for v in q) for q in group.values]  # type: ignore[misc]

    def convert_text(self, text: str, width: int, height: int) -> str:
        """Rewrite every inline box group of ``text`` (either format) into this codec's format."""
        pieces, last = [], 0
        for group in find_box_groups(text):
            pieces.append(text[last : group.start])
            pieces.append(self.encode(self.decode_group(group, width, height), width, height))
            last = group.end
        pieces.append(text[last:])
        return "".join(pieces)


def _strict_error(group: BoxGroup, value: float, rule: str) -> BoxFormatError:
    return BoxFormatError(f"box {group.raw}: value {value:g} {rule}")


def strict_decode_group(group: BoxGroup, width: int, height: int) -> list[Box]:
    """A box group typed by a user -> normalized boxes, or ``BoxFormatError`` naming the offending value.

    ``<box><loc_i>..</box>``: bins in [0, LOC_BINS]; ``<box>[[..]]</box>``: integers in [0, 1000] on the
    padded square; ``[[..]]``: normalized values in [0, 1]. No value is ever clipped or rescaled.
    """
    if group.binned:
        frame, top = "bins", LOC_BINS
    elif group.tagged:
        frame, top = "grid", BOX_GRID
    else:
        frame, top = "normalized", 1
    for quad in group.values:
        for v in quad:
            if frame != "normalized" and v != int(v):
                raise _strict_error(group, v, f"is not an integer (<box> groups hold 0-{BOX_GRID} grid integers)")
            if not 0 <= v <= top:
                hint = " (write model-grid boxes as <box>[[x1, y1, x2, y2]]</box>)" if frame == "normalized" else ""
                raise _strict_error(group, v, f"is outside [0, {top}] ({frame} coordinates){hint}")
        if quad[2] < quad[0] or quad[3] < quad[1]:
            raise BoxFormatError(f"box {group.raw}: x2 < x1 or y2 < y1 (expected x1, y1, x2, y2)")
    if frame == "bins":
        return [grid_to_norm(q, width, height, LOC_BINS) for q in group.values]
    if frame == "grid":
        return [grid_to_norm(q, width, height) for q in group.values]
    return [tuple(q) for q in group.values]  # type: ignore[misc]


def strict_convert_text(text: str, width: int, height: int, codec: BoxCodec) -> str:
    """Rewrite every box group of user text into ``codec``'s format, checking each with the strict rule."""
    pieces, last = [], 0
    for group in find_box_groups(text):
        boxes = strict_decode_group(group, width, height)
        pieces += [text[last : group.start], codec.encode(boxes, width, height)]
        last = group.end
    return "".join(pieces) + text[last:]


def read_user_box(text: str, what: str = "--box") -> Box:
    """``"x1,y1,x2,y2"`` (or ``[x1, y1, x2, y2]``), normalized on the original image -> a checked box."""
    parts = [p for p in re.split(r"[,\s]+", text.strip().strip("[]")) if p]
    if len(parts) != 4:
        raise BoxFormatError(f"{what} {text!r}: expected 4 numbers x1,y1,x2,y2, got {len(parts)}")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise BoxFormatError(f"{what} {text!r}: not a number in {parts}") from None
    group = BoxGroup(0, len(text), (tuple(values),), tagged=False, raw=f"{what} {text!r}")  # type: ignore[arg-type]
    if not all(np.isfinite(values)):
        raise BoxFormatError(f"{what} {text!r}: a value is not finite")
    return strict_decode_group(group, 1, 1)[0]


def box_iou(a: Box, b: Box) -> float:
    """IoU of two xyxy boxes (any common frame); 0 when the union is empty."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def box_iou_matrix_f32(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every pair of xyxy boxes in float32, step by step as torchvision's ``box_iou`` (the official
    matcher's arithmetic): ``a`` (N, 4), ``b`` (M, 4) -> (N, M) float32; 0 where the union is empty.

    float32 matters: clipped boxes often overlap by exactly half, and float32 and float64 round such IoUs
    to different sides of 0.5 (e.g. (0, .1, .6, 1) vs (0, .1, .3, 1): 0.5 in float64, 0.49999994 in float32).
    """
    a = np.asarray(a, dtype=np.float32).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float32).reshape(-1, 4)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.maximum(rb - lt, np.float32(0))
    inter = wh[:, :, 0] * wh[:, :, 1]
    union = area_a[:, None] + area_b[None, :] - inter
    out = np.zeros(union.shape, dtype=np.float32)
    np.divide(inter, union, out=out, where=union > 0)
    return out
