"""Where a caption's box group stands: after the noun phrase it grounds (the paper's layout, "tag_first") or
in front of it ("box_first", ``data.caption_mentions``).

    tag_first  There is a large dotted yellow hexagon <box>..</box> on the left side.
    box_first  There is a <box>..</box> large dotted yellow hexagon on the left side.

Box first, the caption stage commits to one of its given boxes before it names what is there, so the words it
writes next can read that box (``data.box_features``) and copy its listed tag, as stage 2 does with
``data.label_answer: box_first``. Training targets are written box first; generated captions are moved back
to tag first before anything parses or scores them, so the parser, the scorer and the user see the paper's
layout. The phrase is the one the caption parser reads as the group's tag (adjectives included), so the two
moves undo each other whenever the phrase stands right before its group.
"""

from __future__ import annotations

import re
from functools import lru_cache

from pancapchain.data import caption_tags as ct
from pancapchain.data.boxes import find_box_groups
from pancapchain.data.caption_parser import parse_caption

_SENTENCE_END = re.compile(r"[.!?]\s|[.!?]$|\n")


class LayoutError(ValueError):
    """A caption whose box group does not stand right after the phrase it grounds."""


def _phrase_pattern(tag: str) -> str:
    words = [re.escape(w) for w in tag.split()]
    return r"[\s\-]+".join(words)


# Compiled per tag and kept: the synthetic scenes alone have more distinct tags than re's own cache of 512
# patterns, so re.search recompiled most of them (building 4000 scenes' rows: 5.7 s -> 4.5 s).
@lru_cache(maxsize=8192)
def _phrase_before(tag: str) -> re.Pattern:
    """The phrase ``tag`` at the very end of a text (words split by spaces or hyphens), case-insensitive."""
    return re.compile(rf"(?i)\b({_phrase_pattern(tag)})\s*$")


@lru_cache(maxsize=8192)
def _phrase_after(tag: str) -> re.Pattern:
    """The phrase ``tag`` at the start of a text, after optional spaces, case-insensitive."""
    return re.compile(rf"(?i)\s*({_phrase_pattern(tag)})\b")


def to_box_first(caption: str) -> str:
    """Move every box group of a tag-first caption in front of the phrase it grounds.

    Raises LayoutError naming the group when its tag is not the text right before it (e.g. the second group of
    "two cameras [[a]] and [[b]]"), or when :func:`to_tag_first` would not give the caption back unchanged.
    """
    groups = find_box_groups(caption)
    mentions = parse_caption(caption).mentions
    if len(mentions) != len(groups):
        raise LayoutError(f"{len(groups)} box groups but {len(mentions)} parsed mentions")
    out, cursor = [], 0
    for group, mention in zip(groups, mentions):
        before = caption[cursor : group.start]
        found = _phrase_before(mention.tag).search(before) if mention.tag else None
        if found is None:
            raise LayoutError(f"the phrase before {group.raw!r} is not its tag {mention.tag!r}")
        out += [before[: found.start()], group.raw, " ", found.group(1)]
        cursor = group.end
    out.append(caption[cursor:])
    moved = "".join(out)
    if to_tag_first(moved) != caption:  # e.g. a phrase the chunker reads longer from the front than from the back
        raise LayoutError("moving the boxes back would not give the caption unchanged")
    return moved


def to_tag_first(text: str) -> str:
    """Move every box group of a box-first caption back after the noun phrase that follows it.

    A group with no phrase right after it (e.g. the model wrote punctuation next) stays where it is; the
    caption parser then reads it as it would any caption. Never raises.
    """
    groups = find_box_groups(text)
    out, cursor = [], 0
    for k, group in enumerate(groups):
        limit = groups[k + 1].start if k + 1 < len(groups) else len(text)
        after = text[group.end : limit]
        stop = _SENTENCE_END.search(after)
        clause = after[: stop.start()] if stop else after
        tag = ct.first_noun_phrase(ct.tokens(clause))
        found = _phrase_after(tag).match(clause) if tag else None
        out.append(text[cursor : group.start])
        if found is None:
            out.append(group.raw)
            cursor = group.end
            continue
        gap = " " if out[-1] and not out[-1][-1].isspace() else ""
        out += [gap, found.group(1), " ", group.raw]
        cursor = group.end + found.end()
    out.append(text[cursor:])
    return "".join(out)
