"""The text format of PancapChain stage outputs: writing item lists, and parsing them back.

Both directions live here so the training targets (built in :mod:`pancapchain.data.stages`) and the
parser used by chained inference cannot drift apart. Formats (``asmv2`` codec; the ``normalized`` codec
writes ``[[0.100, 0.200, 0.300, 0.400]]`` instead of ``<box>[[100, 200, 300, 400]]</box>``)::

    stage 1 (localize)      <box>[[x1, y1, x2, y2]]</box>, <box>[[...]]</box>
    stages 2/3 (label/...)  tag <box>[[x1, y1, x2, y2]]</box>, tag2 <box>[[...]]</box>
    box first (label only)  <box>[[x1, y1, x2, y2]]</box> tag, <box>[[...]]</box> tag2   (data.label_answer)
    empty list              None          (stage-3 target "nothing is missing", or an empty prompt list)
    stage 4 (caption)       free text with a box group after each grounded mention

Tags are written *cleaned* (:func:`clean_tag`): the characters ``, ; [ ] < >`` become spaces and runs of
whitespace collapse to one space, since those characters delimit items; an item list therefore parses
back to exactly the items written. Unlike the paper's post-processing, the parser keeps every
well-formed item after a malformed one and reports what it could not read.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from pancapchain.constants import DISCOVER_NONE, STAGES
from pancapchain.data.boxes import BoxCodec, BoxGroup, box_iou, find_box_groups
from pancapchain.data.schema import Box

_TAG_DELIMITERS = ",;[]<>"
_TAG_DELIMITERS_RE = re.compile(f"[{re.escape(_TAG_DELIMITERS)}]")
# The tag of an item is the text right before its box group back to the last delimiter or newline.
_TAG_STOPS = _TAG_DELIMITERS + "\r\n"
_SEPARATORS = " \t\r\n,;"
_NONE_RE = re.compile(rf"\s*{DISCOVER_NONE}[\s.,;:!]*", re.IGNORECASE)
# Box debris outside any complete group in a caption (a group cut off by truncation, a stray tag).
_DEBRIS_RE = re.compile(r"(?:<box>\s*)?\[\[[\d\s.,\[\]-]*|<box>(?:<loc_\d+>)*|</box>|<loc_\d+>")


def clean_tag(tag: str) -> str:
    """A tag as it is written in stage texts: item delimiters ``, ; [ ] < >`` -> spaces, whitespace collapsed."""
    return " ".join(_TAG_DELIMITERS_RE.sub(" ", tag).split())


@dataclass(frozen=True)
class StageItem:
    """One entity of a stage output: an optional tag and its normalized xyxy boxes on the original image."""

    tag: str | None  # None for stage-1 (box-only) items
    boxes: tuple[Box, ...]


@dataclass(frozen=True)
class StageParse:
    """What a stage output contained.

    ``items``: the well-formed items in text order, exact (tag, boxes) repeats removed (counted in
    ``duplicates``); ``none``: the text was exactly "None" (nothing listed, nothing missing);
    ``malformed``: text fragments that are not part of a well-formed item (including an item cut off
    by truncation), in text order.
    """

    items: tuple[StageItem, ...]
    none: bool
    malformed: tuple[str, ...]
    duplicates: int


def format_items(
    items: Sequence[StageItem], codec: BoxCodec, width: int, height: int, *, box_first: bool = False
) -> str:
    """Items -> ``tag <box>..</box>, ...`` (``<box>..</box>, ...`` for tag-less items); ``"None"`` if empty.

    ``box_first``: ``<box>..</box> tag, ...`` instead (the parser reads both).
    Raises ValueError for an item without boxes or whose tag is empty after :func:`clean_tag`.
    """
    if not items:
        return DISCOVER_NONE
    return ", ".join(_format_item(item, codec, width, height, box_first) for item in items)


def _format_item(item: StageItem, codec: BoxCodec, width: int, height: int, box_first: bool = False) -> str:
    if not item.boxes:
        raise ValueError(f"stage item {item!r} has no boxes")
    box_text = codec.encode(list(item.boxes), width, height)
    if item.tag is None:
        return box_text
    tag = clean_tag(item.tag)
    if not tag:
        raise ValueError(f"stage item tag {item.tag!r} is empty once item delimiters are removed")
    return f"{box_text} {tag}" if box_first else f"{tag} {box_text}"


def parse_stage_output(stage: str, text: str, codec: BoxCodec, width: int, height: int) -> StageParse:
    """Parse one stage's output text into items; never raises on any text.

    Stage 1 items are box groups (tag None); stages 2 and 3 items are ``tag box-group``; for stage 4
    (free text) the items are the caption's box groups in order, tag None and not deduplicated; the
    mention phrases are :func:`pancapchain.data.caption_parser.parse_caption`'s job, not repeated here.
    Either box format is read whatever the codec.
    Raises ValueError only for an unknown stage or a non-positive image size.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages are {STAGES}")
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    text = "" if text is None else str(text)
    if stage == STAGES[3]:
        return _parse_caption(text, codec, width, height)
    if _NONE_RE.fullmatch(text):
        return StageParse((), True, (), 0)
    return _parse_item_list(text, stage != STAGES[0], codec, width, height)


def _parse_item_list(text: str, tagged: bool, codec: BoxCodec, width: int, height: int) -> StageParse:
    """Items in text order. A tagged list that opens with a box group is also read box first (``<box>..</box>
    tag``); the reading that finds more items wins (a tie keeps tag first)."""
    groups = find_box_groups(text)
    tag_first = _parse_tag_first(text, groups, tagged, codec, width, height)
    if tagged and groups and not text[: groups[0].start].strip(_SEPARATORS):
        box_first = _parse_box_first(text, groups, codec, width, height)
        if len(box_first.items) > len(tag_first.items):
            return box_first
    return tag_first


def _parse_tag_first(
    text: str, groups: Sequence[BoxGroup], tagged: bool, codec: BoxCodec, width: int, height: int
) -> StageParse:
    items: list[StageItem] = []
    seen: set[StageItem] = set()
    malformed: list[str] = []
    duplicates, last = 0, 0
    for group in groups:
        tag, fragment = _split_prefix(text[last : group.start], tagged)
        last = group.end
        if fragment:
            malformed.append(fragment)
        boxes = _decode(group, codec, width, height)
        if boxes is None or (tagged and not tag):
            malformed.append(f"{tag or ''} {text[group.start : group.end]}".strip())
            continue
        item = StageItem(tag if tagged else None, boxes)
        if item in seen:
            duplicates += 1
            continue
        seen.add(item)
        items.append(item)
    tail = text[last:].strip(_SEPARATORS)
    if tail:
        malformed.append(tail)
    return StageParse(tuple(items), False, tuple(malformed), duplicates)


def _parse_box_first(text: str, groups: Sequence[BoxGroup], codec: BoxCodec, width: int, height: int) -> StageParse:
    """``<box>..</box> tag, ...``: each item's tag is the text after its group up to the next delimiter."""
    items: list[StageItem] = []
    seen: set[StageItem] = set()
    malformed: list[str] = []
    duplicates = 0
    for i, group in enumerate(groups):
        after = text[group.end : groups[i + 1].start if i + 1 < len(groups) else len(text)]
        stop = min((at for at in (after.find(c) for c in _TAG_STOPS) if at >= 0), default=len(after))
        tag, leftover = clean_tag(after[:stop]), after[stop:].strip(_SEPARATORS)
        if leftover:
            malformed.append(leftover)
        boxes = _decode(group, codec, width, height)
        if boxes is None or not tag:
            malformed.append(f"{text[group.start : group.end]} {tag}".strip())
            continue
        item = StageItem(tag, boxes)
        if item in seen:
            duplicates += 1
            continue
        seen.add(item)
        items.append(item)
    return StageParse(tuple(items), False, tuple(malformed), duplicates)


def _split_prefix(prefix: str, tagged: bool) -> tuple[str, str]:
    """The text between two box groups -> (tag of the next item, malformed leftover before the tag)."""
    if not tagged:
        return "", prefix.strip(_SEPARATORS)
    start = max(prefix.rfind(stop) for stop in _TAG_STOPS) + 1  # linear, unlike a backtracking regex
    return clean_tag(prefix[start:]), prefix[:start].strip(_SEPARATORS)


def _decode(group: BoxGroup, codec: BoxCodec, width: int, height: int) -> tuple[Box, ...] | None:
    """Normalized boxes of a group, or None when a box is non-finite or inverted (x2 < x1 or y2 < y1)."""
    boxes = tuple(tuple(b) for b in codec.decode_group(group, width, height))
    for x1, y1, x2, y2 in boxes:
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)) or x2 < x1 or y2 < y1:
            return None
    return boxes  # type: ignore[return-value]


def _parse_caption(text: str, codec: BoxCodec, width: int, height: int) -> StageParse:
    items: list[StageItem] = []
    malformed: list[str] = []
    last = 0
    for group in find_box_groups(text):
        malformed.extend(_debris(text[last : group.start]))
        last = group.end
        boxes = _decode(group, codec, width, height)
        if boxes is None:
            malformed.append(text[group.start : group.end])
        else:
            items.append(StageItem(None, boxes))
    malformed.extend(_debris(text[last:]))
    return StageParse(tuple(items), False, tuple(malformed), 0)


def _debris(gap: str) -> list[str]:
    return [m.group().strip() for m in _DEBRIS_RE.finditer(gap)]


def drop_refinds(found: Sequence[StageItem], known: Sequence[StageItem], min_iou: float) -> tuple[list[StageItem], int]:
    """Stage-3 items that are not a known entity found again: (kept items in order, number dropped).

    An item is a re-find when every one of its boxes overlaps some known box at IoU >= ``min_iou`` (the evaluation
    matches a prediction to an entity at IoU 0.5, so at that threshold such an item can only add a duplicate).
    ``min_iou`` 0 keeps every item.
    """
    if min_iou <= 0:
        return list(found), 0
    known_boxes = [box for item in known for box in item.boxes]
    kept = [item for item in found
            if not item.boxes or not all(any(box_iou(b, k) >= min_iou for k in known_boxes) for b in item.boxes)]
    return kept, len(found) - len(kept)


def merge_discovered(known: Sequence[StageItem], found: Sequence[StageItem]) -> list[StageItem]:
    """Stage-2 items followed by the stage-3 items that repeat none of them exactly (order kept)."""
    merged = list(known)
    seen = set(merged)
    for item in found:
        if item not in seen:
            seen.add(item)
            merged.append(item)
    return merged
