"""Box-prompted training examples from one :class:`PanopticSample`: SGDiff SegCaptioning and SCA region captions.

Both tasks prompt with one entity's box (written in the codec's format) and are built from the sample's
caption, parsed by :func:`pancapchain.data.caption_parser.parse_caption`::

    segcap  prompt: template(box=<central entity box>)
            target: the caption sentences that mention the central entity or an entity related to it, in
                    caption order, verbatim (every inline box kept, rewritten in the codec's format)
    region  prompt: template(box=<entity box>)
            target: the entity's mention phrase in the caption (the parser's tag: the noun phrase with its
                    adjectives, e.g. "large striped red circle"); its cleaned entity tag when no mention has one

Matching: a caption mention grounds an entity when one of its boxes has IoU >= ``MENTION_IOU`` with the
entity's box (the best such entity), the same threshold the mask targets use, so every box group of a
segcap target that grounds an entity with a mask is mask-supervised too.

Related entities of the central entity C: its partners in ``sample.relations`` (either direction), and the
entities grounded in a sentence that grounds C (``Mention.sentence_index``). The target keeps every
sentence grounding C or a related entity.

Sentence text: the parser's sentences are clean (boxes removed), so the target is cut from the raw caption.
The raw caption is split where the parser splits (a newline, or ``.!?`` before whitespace; box groups never
split), and a piece that starts with a box group or has no letters outside box groups joins the piece
before it (the parser gives such boxes to the previous sentence too). Sentence k's text is the raw pieces
holding its mentions; line breaks and list markers ("- ", "* ", "1. ") at line starts are dropped and
pieces are joined by a space.

Which entity: one per sample and task, drawn from the candidates (entities some mention grounds; for
``region`` with a non-empty phrase, else every entity) by a generator seeded with SHA-256 of
(seed, task, sample id), so it never depends on Python's salted ``hash()`` or on the other samples.
When nothing can be built, :class:`NoTaskExample` says why (the dataset counts it as a skip).
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass

from pancapchain.constants import BOX_TASKS
from pancapchain.data.boxes import BoxCodec, box_iou, find_box_groups
from pancapchain.data.caption_parser import Mention, parse_caption
from pancapchain.data.prompts import PromptSet
from pancapchain.data.schema import Entity, PanopticSample
from pancapchain.data.stage_parse import clean_tag

MENTION_IOU = 0.9  # equals pancapchain.mask.targets.MATCH_IOU (not imported: that package pulls in torch)
_BOUNDARY_RE = re.compile(r"\n|[.!?](?=\s)")  # pancapchain.data.caption_parser's sentence boundary
_LIST_MARKER_RE = re.compile(r"^(?:[-*\u2022]|\d+\.)\s+")
_LEAD_RE = re.compile(r"[\s*\-\u2022]*")  # what may precede a box group that leads a piece


class NoTaskExample(ValueError):
    """The sample has nothing to teach for this task (the message says why)."""


@dataclass(frozen=True)
class GroundedMention:
    """A caption mention with the ids of the entities its boxes ground."""

    mention: Mention
    entity_ids: frozenset[int]


def task_rng(task: str, sample_id: str, seed: int) -> random.Random:
    """A generator that depends only on (seed, task, sample id)."""
    digest = hashlib.sha256(f"{seed}\x00{task}\x00{sample_id}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def grounded_mentions(sample: PanopticSample) -> list[GroundedMention]:
    """The caption's mentions in caption order, each with the entities it grounds (possibly none)."""
    parsed = parse_caption(sample.caption, sample.width, sample.height)
    out = []
    for mention in parsed.mentions:
        ids = {ent.id for box in mention.boxes if (ent := _best_entity(sample.entities, box)) is not None}
        out.append(GroundedMention(mention, frozenset(ids)))
    return out


def _best_entity(entities: tuple[Entity, ...], box) -> Entity | None:
    if not entities:
        return None
    best = max(entities, key=lambda e: box_iou(e.box, box))
    return best if box_iou(best.box, box) >= MENTION_IOU else None


def raw_sentence_pieces(caption: str) -> list[tuple[int, int]]:
    """(start, end) character spans of the raw caption's sentences, box groups intact (module docstring)."""
    groups = find_box_groups(caption)
    chars = list(caption)
    for g in groups:
        chars[g.start : g.end] = " " * (g.end - g.start)
    blanked = "".join(chars)
    cuts = [0] + [m.end() for m in _BOUNDARY_RE.finditer(blanked)] + [len(caption)]
    starts = {g.start for g in groups}
    pieces: list[tuple[int, int]] = []
    for start, end in zip(cuts, cuts[1:]):
        if start == end:
            continue
        lead = _LEAD_RE.match(caption, start, end).end()  # type: ignore[union-attr]
        joins = lead in starts or not any(c.isalpha() for c in blanked[start:end])
        if joins and pieces:
            pieces[-1] = (pieces[-1][0], end)
        else:
            pieces.append((start, end))
    return pieces


def _piece_text(caption: str, span: tuple[int, int]) -> str:
    """The piece on one line: each line stripped of its list marker, lines joined by a space."""
    lines = (_LIST_MARKER_RE.sub("", line.strip()) for line in caption[span[0] : span[1]].splitlines())
    return " ".join(line for line in lines if line)


def segcap_target(sample: PanopticSample, central: int, mentions: list[GroundedMention]) -> str:
    """The raw caption sentences (normalized boxes as written) about entity ``central`` and its related entities."""
    own = {g.mention.sentence_index for g in mentions if central in g.entity_ids}
    related = {r.object if r.subject == central else r.subject
               for r in sample.relations if central in (r.subject, r.object)}
    related |= {i for g in mentions if g.mention.sentence_index in own for i in g.entity_ids}
    wanted = {central} | related
    sentences = {g.mention.sentence_index for g in mentions if g.entity_ids & wanted}
    pieces = raw_sentence_pieces(sample.caption)
    chosen: list[tuple[int, int]] = []
    for g in mentions:
        if g.mention.sentence_index not in sentences:
            continue
        piece = next(p for p in pieces if p[0] <= g.mention.start < p[1])
        if piece not in chosen:
            chosen.append(piece)
    return " ".join(_piece_text(sample.caption, p) for p in sorted(chosen))


def build_segcap(sample: PanopticSample, prompts: PromptSet, codec: BoxCodec, seed: int = 0) -> tuple[str, str]:
    """(prompt, target) of the segcap task; raises NoTaskExample when no caption mention grounds an entity."""
    if not sample.caption.strip():
        raise NoTaskExample("empty caption")
    mentions = grounded_mentions(sample)
    candidates = sorted({i for g in mentions for i in g.entity_ids})
    if not candidates:
        raise NoTaskExample(f"no caption box matches an entity box (IoU >= {MENTION_IOU})")
    central = task_rng("segcap", sample.id, seed).choice(candidates)
    entity = next(e for e in sample.entities if e.id == central)
    w, h = sample.width, sample.height
    target = codec.convert_text(segcap_target(sample, central, mentions), w, h)
    return prompts.render("segcap", box=codec.encode([entity.box], w, h)), target


def region_phrases(sample: PanopticSample) -> dict[int, str]:
    """Entity id -> its first non-empty mention phrase in the caption (entities without one are absent)."""
    phrases: dict[int, str] = {}
    for g in grounded_mentions(sample):
        phrase = clean_tag(g.mention.tag)
        for entity_id in sorted(g.entity_ids):
            if phrase and entity_id not in phrases:
                phrases[entity_id] = phrase
    return phrases


def build_region(sample: PanopticSample, prompts: PromptSet, codec: BoxCodec, seed: int = 0) -> tuple[str, str]:
    """(prompt, target) of the region task; raises NoTaskExample for a sample without entities."""
    phrases = region_phrases(sample) if sample.caption.strip() else {}
    if not phrases:  # weak supervision with the entity tags (SCA pre-trains on category names)
        phrases = {e.id: clean_tag(e.tag) for e in sample.entities if clean_tag(e.tag)}
    if not phrases:
        raise NoTaskExample("no entities")
    chosen = task_rng("region", sample.id, seed).choice(sorted(phrases))
    entity = next(e for e in sample.entities if e.id == chosen)
    box = codec.encode([entity.box], sample.width, sample.height)
    return prompts.render("region", box=box), phrases[chosen]


BUILDERS = {"segcap": build_segcap, "region": build_region}  # keys: BOX_TASKS


def build_box_task(
    task: str, sample: PanopticSample, prompts: PromptSet, codec: BoxCodec, seed: int = 0
) -> tuple[str, str]:
    """(prompt, target) of one extra task (``BOX_TASKS``); NoTaskExample when the sample has none."""
    if task not in BUILDERS:
        raise ValueError(f"unknown box task {task!r}; box tasks are {BOX_TASKS}")
    return BUILDERS[task](sample, prompts, codec, seed)
