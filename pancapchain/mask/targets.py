"""Which tokens of a stage answer ground which entity mask.

The grounding position of an entity is the **last token of its box group** in the answer (the ``</box>`` token
in the asmv2 format, ``]]`` in the normalized one): the hidden state *at* that token has read the whole box
and is the mask head's query. Positions are found from the tokenizer's character offsets, so they line up
with ``input_ids`` exactly (HF LLaVA expands ``<image>`` inside ``input_ids``; no LISA/GLaMM offsets).

Dataset side: ``answer_mask_targets`` matches every box group of a target text to the sample entity it
boxes and records the group's end, the entity tag's character span, and the entity's RLE mask.
Collator side: ``token_positions`` turns those character positions into token indices.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from pancapchain.data.boxes import BoxCodec, BoxGroup, box_iou, find_box_groups
from pancapchain.data.schema import PanopticSample

MATCH_IOU = 0.9  # a box group grounds an entity when its (first) box overlaps the entity's box this much


@dataclass(frozen=True)
class MaskTarget:
    """One supervised entity in an answer text (character positions in the answer)."""

    end: int  # index just past the entity's box group
    tag_start: int  # character span of the entity tag next to the group (empty span when not found)
    tag_end: int
    entity_id: int
    rle: dict
    box: tuple[float, float, float, float] | None = None  # the entity's normalized box on the original image


def _tag_span(text: str, group: BoxGroup, tag: str) -> tuple[int, int]:
    """The occurrence of ``tag`` nearest to the box group within 200 characters, before it (the paper's
    layout) or after it (``data.caption_mentions: box_first``), case-insensitive; else an empty span."""
    if not tag:
        return group.start, group.start
    lowered, tag = text.lower(), tag.lower()
    before = lowered.rfind(tag, max(0, group.start - 200), group.start)
    after = lowered.find(tag, group.end, group.end + 200 + len(tag))
    gaps = []
    if before >= 0:
        gaps.append((group.start - (before + len(tag)), before))
    if after >= 0:
        gaps.append((after - group.end, after))
    if not gaps:
        return group.start, group.start
    found = min(gaps)[1]
    return found, found + len(tag)


def answer_mask_targets(target: str, sample: PanopticSample, codec: BoxCodec) -> list[MaskTarget]:
    """Mask targets of one answer: box groups matched to entities that carry a mask."""
    with_mask = [e for e in sample.entities if e.mask is not None]
    if not with_mask:
        return []
    out = []
    for group in find_box_groups(target):
        boxes = codec.decode_group(group, sample.width, sample.height)
        if not boxes:
            continue
        best = max(with_mask, key=lambda e: box_iou(e.box, boxes[0]))
        if box_iou(best.box, boxes[0]) < MATCH_IOU:
            continue
        start, end = _tag_span(target, group, best.tag)
        out.append(MaskTarget(group.end, start, end, best.id, best.mask, tuple(best.box)))
    return out


def box_on_square(box, width: int, height: int) -> tuple[float, float, float, float]:
    """A normalized box of a ``width x height`` image -> normalized on its centred padded square (as masks_to_square)."""
    side = max(width, height)
    left, top = (side - width) // 2, (side - height) // 2
    x1, y1, x2, y2 = box
    return ((x1 * width + left) / side, (y1 * height + top) / side, (x2 * width + left) / side, (y2 * height + top) / side)


def dumps_targets(targets: Sequence[MaskTarget]) -> str:
    """Compact JSON for a dataset column (Arrow stores it as a string)."""
    return json.dumps([asdict(t) for t in targets], separators=(",", ":"))


def loads_targets(text: str) -> list[MaskTarget]:
    return [MaskTarget(**t) for t in json.loads(text)] if text else []


def token_positions(
    offsets: Sequence[tuple[int, int]], targets: Sequence[MaskTarget], shift: int = 0
) -> list[tuple[int, list[int]] | None]:
    """Per target (aligned with ``targets``): (index of the token containing the group's last character,
    indices of its tag tokens), or None when no token covers that character.

    ``offsets`` are (start, end) character offsets of the answer tokens; ``shift`` is how many characters were
    prepended to the target to form the tokenized answer (the leading space of the completion).
    """
    out = []
    for t in targets:
        last_char = t.end - 1 + shift
        end_token = next((i for i, (s, e) in enumerate(offsets) if s <= last_char < e), None)
        if end_token is None:
            out.append(None)
            continue
        tag = [i for i, (s, e) in enumerate(offsets) if e > t.tag_start + shift and s < t.tag_end + shift]
        out.append((end_token, tag))
    return out
