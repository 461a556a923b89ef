"""Parse a panoptic caption with inline boxes into grounded mentions, clean sentences and entities.

One parser for the dataset importers and for evaluation. A caption grounds noun phrases with inline box
groups (``[[x1, y1, x2, y2]]``, normalized, or ``<box>[[ints]]</box>`` on the model's padded-square grid;
see :mod:`pancapchain.data.boxes`). Each group becomes a :class:`Mention` whose ``tag`` is the noun phrase
it grounds, found by light rule-based chunking of the text *before* the group (and, when that holds only
location words, the text after it). Handled forms include ``The sky [[b]] is``, ``two cameras [[a]] and
[[b]]`` (groups after one mention share its tag), ``(bounding box: [[b]])``, ``the ring's bounding box
is [[b]]``, ``X is located at [[b]]``, ``X, located at [[b]]``, ``occupying [[b]]``, ``**Boy 1** [[b]]``
and ``at [[a]], and top left corner [[b]], are two design elements``.

Tags are lower-cased noun phrases without determiners, numbers, ordinals, possessors or markdown
("The player's right shoe" -> "right shoe"; adjectives stay: "red brick wall"). Parsing never raises.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass

from pancapchain.data import caption_tags as ct
from pancapchain.data.boxes import BoxCodec, BoxGroup, find_box_groups
from pancapchain.data.schema import Box

_MARKDOWN_RE = re.compile(r"[*_#`]+")
_BOUNDARY_RE = re.compile(r"\n|[.!?](?=\s)")
_CODEC = BoxCodec("normalized")
_WINDOW = 400  # characters of context read around a box group (keeps parsing linear in caption length)


@dataclass(frozen=True)
class Mention:
    """One box group: the noun phrase it grounds, its normalized xyxy boxes, span and sentence."""

    tag: str
    boxes: tuple[Box, ...]
    start: int
    end: int
    sentence_index: int


@dataclass(frozen=True)
class ParsedCaption:
    """Mentions in caption order, clean sentences, counts, and box-like fragments that did not parse."""

    mentions: tuple[Mention, ...]
    sentences: tuple[str, ...]
    n_box_groups: int
    n_boxes: int
    unparsed: tuple[str, ...]


class _Context:
    """Caption text with box groups blanked out (same offsets) and its sentence boundaries."""

    def __init__(self, caption: str, groups: list[BoxGroup]):
        chars = list(caption)
        for g in groups:
            chars[g.start : g.end] = " " * (g.end - g.start)
        self.text = "".join(chars)
        self.starts = [0] + [m.end() for m in _BOUNDARY_RE.finditer(self.text)]

    def sentence_bounds(self, pos: int) -> tuple[int, int]:
        k = bisect_right(self.starts, pos) - 1
        end = self.starts[k + 1] if k + 1 < len(self.starts) else len(self.text)
        return self.starts[k], end

    def subject(self, pos: int) -> str:
        """First noun phrase of the sentence at ``pos`` (or of an earlier one when that is a pronoun)."""
        start, _ = self.sentence_bounds(pos)
        for _ in range(4):
            tag = ct.first_noun_phrase(
                ct.tokens(self.text[start : min(self.sentence_bounds(start)[1], start + _WINDOW)])
            )
            if tag or start == 0:
                return tag
            start = self.sentence_bounds(start - 1)[0]
        return ""

    def previous_sentence(self, start: int, floor: int) -> str:
        """Text of the sentence before the one starting at ``start``, cut at ``floor`` (a group's end)."""
        return (
            self.text[max(floor, self.sentence_bounds(start - 1)[0], start - _WINDOW) : start]
            if start > 0
            else ""
        )


def _tag_for(
    ctx: _Context, groups: list[BoxGroup], index: int, previous_tag: str | None, last_tag: str
) -> str:
    """The tag of group ``index``.

    ``previous_tag`` is the tag of the previous group when it is in the same sentence (else None);
    ``last_tag`` is the last non-empty tag anywhere before (for "Another one is located at [[b]]").
    """
    group = groups[index]
    floor = groups[index - 1].end if index else 0
    s_start = ctx.sentence_bounds(group.start)[0]
    toks = ct.tokens(ctx.text[max(s_start, floor, group.start - _WINDOW) : group.start])
    ahead = ct.tokens(ctx.text[group.end : group.end + _WINDOW])
    if ct.is_trivial(toks):
        if previous_tag is not None:
            return previous_tag  # "two cameras [[a]] and [[b]]"
        if ahead[:1] == [":"] and ct.forward_tag(ahead):
            return ct.forward_tag(ahead)  # "- [[b]]: A light-brown leaf is ..."
        toks = ct.tokens(ctx.previous_sentence(s_start, floor))  # "... jagged edges. [[b]]"
    anaphoric = any(t in ct.NUMBERS or t == "another" for t in toks)  # "The first is at [[b]]"
    tag, pronoun = ct.backward_tag(toks)
    if pronoun:
        tag = ctx.subject(group.start)
    if not tag and previous_tag:
        return previous_tag
    heading = ctx.previous_sentence(s_start, floor).rstrip()
    if not tag and heading.endswith(":"):  # "Reflection:\n- Bounding box: [[b]]"
        tag = ct.backward_tag(ct.tokens(heading))[0]
    if not tag or ct.is_pure_place(tag):
        tag = ct.forward_tag(ahead) or tag
    if not tag and anaphoric:
        tag = (last_tag or ctx.subject(s_start - 1)) if s_start else last_tag
    return tag


def _valid_boxes(group: BoxGroup, width: int, height: int, unparsed: list[str], rules: str) -> tuple[Box, ...]:
    boxes = []
    for box in _CODEC.decode_group(group, width, height, rules):
        if box[2] < box[0] or box[3] < box[1]:
            unparsed.append(f"[[{', '.join(f'{v:g}' for v in box)}]] (x2 < x1 or y2 < y1)")
        else:
            boxes.append(box)
    return tuple(boxes)


def _unparsed_fragments(caption: str, groups: list[BoxGroup]) -> list[str]:
    """Every '[[' not inside a parsed group, with its text up to the closing ']]' (or 40 characters)."""
    spans = [(g.start, g.end) for g in groups]
    out, k = [], 0
    for m in re.finditer(r"\[\[", caption):
        while k < len(spans) and spans[k][1] <= m.start():
            k += 1
        if k < len(spans) and spans[k][0] <= m.start() + 1:
            continue
        close = caption.find("]]", m.start(), m.start() + 80)
        out.append(caption[m.start() : close + 2] if close >= 0 else caption[m.start() : m.start() + 40])
    return out


# Box wrappers removed with the group in clean text: "(bounding box: [[b]])", "with coordinates [[b]]",
# ", and the ring's bounding box is [[b]]", and a preposition left dangling ("located at [[b]].").
_PAREN_BEFORE = re.compile(r"\s*\(\s*(?:(?:bounding\s+)?box(?:es)?|coordinates|bbox)?\s*:?\s*$", re.I)
_WRAP_BEFORE = re.compile(
    r"(?:,?\s*(?:and\s+)?(?:the\s+)?(?:[\w-]+\s+){0,3}[\w-]+['\u2019]s"
    r"\s+bounding\s+box(?:es)?\s+(?:is|are)(?:\s+at)?"
    r"|,?\s*(?:with\s+)?(?:(?:a|the|its|his|her|their)\s+)?bounding\s+box(?:es)?(?:\s+coordinates)?"
    r"(?:\s+(?:is|are|of|at))?|,?\s*with\s+(?:the\s+)?coordinates)\s*:?\s*$",
    re.I,
)
_DANGLING = re.compile(r"\s+(?:at|from|between|within|of|in|by|around)\s*$", re.I)
_NUMERIC_BRACKETS = re.compile(r"\[\[[\d\s.,\[\]-]*\]\]")  # unparsed point lists: "[[0.43, 0.17]]"


def _removal_span(caption: str, group: BoxGroup, floor: int) -> tuple[int, int]:
    """Span removed from clean text: the group, its wrapper, and a sentence that only stated the box."""
    window_start = max(floor, group.start - 120)
    before = caption[window_start : group.start]
    after = caption[group.end : group.end + 4]
    closing = re.match(r"\s*\)", after)
    paren = _PAREN_BEFORE.search(before) if closing and "(" in before else None
    if paren and closing:
        return window_start + paren.start(), group.end + closing.end()
    lowered = before.lower()
    wrap = _WRAP_BEFORE.search(before) if "bounding" in lowered or "coordinates" in lowered else None
    start = window_start + wrap.start() if wrap else group.start
    dangling = _DANGLING.search(caption[window_start:start])
    if dangling and re.match(r"\s*(?:[.,;:!?)]|$)", after):
        start = window_start + dangling.start()
    full_stop = re.match(r"\s*[.!?]", after)
    prefix = caption[max(0, start - 200) : start]
    if full_stop and (re.search(r"[.!?:\n]\s*$", prefix) or (start <= 200 and not prefix.strip())):
        return start, group.end + full_stop.end()  # "The mouth's bounding box is at [[b]]." goes whole
    return start, group.end


_SENTINEL = "\x00"


_TIDY_RULES = [
    (re.compile(r"[ \t]+"), " "),
    (re.compile(r" +([.,;:!?)])"), r"\1"),  # no space before punctuation
    (re.compile(r" ?\(\s*[,;]*\s*\)"), ""),  # parentheses emptied by box removal
    (re.compile(r",(?:\s*,)+"), ","),
    (re.compile(r",([.;:!?])"), r"\1"),
    (re.compile(r" *\n *"), "\n"),
]
_SENTENCE_SPLIT = re.compile(r"\n|(?<=[.!?])[ \t]+")
_LIST_MARKER = re.compile(r"^\s*(?:[-*\u2022]|\d+\.)\s+")


def _tidy(text: str) -> str:
    text = text.replace(_SENTINEL, "")
    for pattern, replacement in _TIDY_RULES:
        text = pattern.sub(replacement, text)
    return text.strip()


def _remove_groups(caption: str, groups: list[BoxGroup]) -> str:
    """The caption with each box group (and its wrapper) replaced by one sentinel character."""
    pieces, last = [], 0
    for group in groups:
        start, end = _removal_span(caption, group, last)
        pieces += [_plain(caption[last : max(start, last)]), _SENTINEL]
        last = end
    pieces.append(_plain(caption[last:]))
    return "".join(pieces)


def _plain(text: str) -> str:
    return _NUMERIC_BRACKETS.sub("", text.replace(_SENTINEL, ""))


def strip_boxes(text: str) -> str:
    """Caption text without box groups and their wrappers ("(bounding box: ...)"), whitespace tidied."""
    return _tidy(_remove_groups(text, find_box_groups(text)))


def _sentences(marked: str) -> tuple[list[str], list[int]]:
    """Clean sentences, and for each sentinel (box group) in ``marked`` the index of its sentence."""
    sentences: list[str] = []
    owners: list[int] = []
    pending = 0  # sentinels seen before any sentence with words
    for piece in _SENTENCE_SPLIT.split(marked):
        text = _tidy(_MARKDOWN_RE.sub("", _LIST_MARKER.sub("", piece)))
        n_marks = piece.count(_SENTINEL)
        if any(c.isalpha() for c in text):
            lead = piece.lstrip(" \t*-").startswith(_SENTINEL)
            owner = len(sentences) - 1 if lead and sentences else len(sentences)
            owners += [len(sentences)] * pending + [owner] * n_marks
            pending = 0
            sentences.append(text)
        elif sentences:
            owners += [len(sentences) - 1] * n_marks
        else:
            pending += n_marks
    if pending:
        owners += [max(0, len(sentences) - 1)] * pending
    return sentences, owners


def parse_caption(caption: str, width: int = 1000, height: int = 1000, box_rules: str = "lenient") -> ParsedCaption:
    """Parse ``caption``; ``width``/``height`` only matter for model-grid ``<box>`` groups, ``box_rules``
    (official / lenient, see :mod:`pancapchain.data.boxes`) decides which groups are grid groups."""
    caption = caption if isinstance(caption, str) else str(caption)
    width, height = max(1, int(width)), max(1, int(height))
    groups = find_box_groups(caption)
    unparsed = _unparsed_fragments(caption, groups)
    sentences, owners = _sentences(_remove_groups(caption, groups))
    if groups and not sentences:
        sentences = [""]
    ctx = _Context(caption, groups)
    mentions: list[Mention] = []
    last_sentence, previous_tag, last_tag = -1, None, ""
    for i, group in enumerate(groups):
        sentence_start = ctx.sentence_bounds(group.start)[0]
        tag = _tag_for(ctx, groups, i, previous_tag if sentence_start == last_sentence else None, last_tag)
        last_sentence, previous_tag, last_tag = sentence_start, tag, tag or last_tag
        boxes = _valid_boxes(group, width, height, unparsed, box_rules)
        if boxes:
            mentions.append(Mention(tag, boxes, group.start, group.end, owners[i]))
    n_boxes = sum(len(g.values) for g in groups)
    return ParsedCaption(tuple(mentions), tuple(sentences), len(groups), n_boxes, tuple(unparsed))


def caption_entities(parsed: ParsedCaption) -> list[tuple[str, Box]]:
    """One ``(tag, box)`` per distinct box, in caption order; a repeated box keeps its first non-empty tag.

    Boxes are compared (and returned) rounded to 6 decimals, so "[[0.5, ...]]" and "[[0.500, ...]]" are one.
    """
    order: list[Box] = []
    tags: dict[Box, str] = {}
    for mention in parsed.mentions:
        for box in mention.boxes:
            key = tuple(round(v, 6) for v in box)
            if key not in tags:
                order.append(key)  # type: ignore[arg-type]
                tags[key] = mention.tag  # type: ignore[index]
            elif not tags[key]:  # type: ignore[index]
                tags[key] = mention.tag  # type: ignore[index]
    return [(tags[box], box) for box in order]
