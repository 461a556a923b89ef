"""Offline PancapScore: the five dimensions without an LLM judge (deterministic, CPU, seconds per 500 images).

Entities and boxes come from the caption parser (one entity per distinct box) and are matched exactly as
the official code does (``matching``). Attributes, relations and global state come from sentence-level
extraction of the caption (``items_from_caption``):

* the entities a sentence involves are those it grounds with boxes, else its subject (the latest entity
  whose head noun it names within its first 6 words, or the previous sentence's first entity when it
  starts with a pronoun), plus earlier entities it names by head noun elsewhere;
* a multi-word tag also states an attribute: "small red triangle" gives "entity is small red" (the
  judge turns "a blue motorcycle" into an entity and "entity 1 is blue");
* two or more involved entities give a relation item for each consecutive pair, one gives an attribute
  item of it, none gives a global item.

Entity names in item texts are replaced by "entity" (the protocol's "entity N"). When the GT sample carries
structured attributes / relations / global state (synthetic data), those are the GT items instead.

Scoring mirrors the judge's bookkeeping (``support`` replaces the yes/no answers): recall = mean support
of the GT items by the prediction (items on unmatched entities count 0), precision = mean support of the
predicted items on matched entities (all predicted global items) by the GT; a GT without items of a kind
scores 0 on it (official rule). support(item, candidates) = 1 if a candidate equals or contains it (or
vice versa, on whole words, with at least one content word), else the best embedding cosine, set to 0
below ``support_threshold``. These scores approximate the judge's; they are not the official numbers.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

from pancapchain.data.caption_parser import caption_entities, parse_caption
from pancapchain.data.schema import Box, PanopticSample
from pancapchain.eval.embed import Embedder
from pancapchain.eval.matching import (
    OFFICIAL,
    EntityMatch,
    MatchConfig,
    TaggedEntity,
    entity_layout,
    match_entities,
)
from pancapchain.eval.scores import PRF, ZERO, ImageResult

UNNAMED_TAG = "unnamed entity"
SUBJECT_WINDOW = 6  # a box-free sentence is about an entity when it names it within its first words
PRONOUN_STARTS = frozenset("it its he his she her they their them this these".split())
_WORDS_RE = re.compile(r"[a-z0-9]+")
# Words that alone do not state a fact (a containment match needs at least one other word).
_FILLER = frozenset(
    "entity a an the this that these those its his her their is are was were be been has have had of in on"
    " at to with and or by for from as it they there here very also".split()
)


@dataclass
class OfflineItems:
    """The offline view of one caption / sample: entities plus attribute, relation and global items."""

    entities: list[TaggedEntity]
    attributes: list[tuple[int, str]] = field(default_factory=list)  # (entity index, text)
    relations: list[tuple[int, int, str]] = field(default_factory=list)  # (entity, entity, text)
    globals: list[str] = field(default_factory=list)
    source: str = "caption"
    warnings: list[str] = field(default_factory=list)
    n_malformed_boxes: int = 0


@dataclass(frozen=True)
class OfflineConfig:
    support_threshold: float = 0.5


# ------------------------------------------------------------------------------------------- extraction


def _box_key(box: Box) -> tuple[float, ...]:
    return tuple(round(v, 6) for v in box)


def mask_names(text: str, tags: list[str]) -> str:
    """Replace each entity's name by "entity": the longest suffix of its tag found in the text (whole words,
    any case), so "the red triangle" is masked for the tag "small dotted red triangle".

    The suffixes of all tags are tried longest first (then alphabetically), each tag masking once. So with the
    tags "large dotted yellow hexagon" and "medium solid yellow hexagon", "a medium solid yellow hexagon" is
    masked whole, never as "a medium solid entity" by the other tag's "yellow hexagon"; and the result does not
    depend on set order (it did, with PYTHONHASHSEED, when the tags were tried longest tag first)."""
    named = {t for t in tags if t and t != UNNAMED_TAG}
    suffixes = {(" ".join(t.split()[i:]), t) for t in named for i in range(len(t.split()))}
    masked_tags: set[str] = set()
    for phrase, tag in sorted(suffixes, key=lambda pt: (-len(pt[0].split()), -len(pt[0]), pt)):
        if tag in masked_tags:
            continue
        masked = re.sub(rf"(?<![\w-]){re.escape(phrase)}(?![\w-])", "entity", text, flags=re.IGNORECASE)
        if masked != text:
            text = masked
            masked_tags.add(tag)
    return text


def tag_attribute(tag: str) -> str | None:
    """The attribute a multi-word tag states ("small red triangle" -> "entity is small red"), as the
    judge splits "a blue motorcycle" into an entity and "entity 1 is blue"; None for one-word tags."""
    words = tag.split()
    if len(words) < 2 or tag == UNNAMED_TAG:
        return None
    return "entity is " + " ".join(words[:-1])


def _names(words: set[str], tag: str) -> bool:
    """True when the tag's head noun (singular or plural) is among ``words``."""
    head = tag.split()[-1] if tag else ""
    if not head or head == "entity":
        return False
    return head in words or f"{head}s" in words or (head.endswith("s") and head[:-1] in words)


def _count_phrase(text: str, phrase: str) -> int:
    """Occurrences of ``phrase`` (normalized words, plural head allowed) in normalized ``text``."""
    count = text.count(f" {phrase} ")
    return count + (text.count(f" {phrase}s ") if not phrase.endswith("s") else 0)


def _referents(sentence: str, tags: list[str], seen: list[int], involved: list[int]) -> list[int]:
    """Earlier entities a sentence names: the longest suffix of an entity's tag (at least its head noun)
    occurs more often than the involved entities' own names account for ("The orange cross has a large
    black cross [[b]] overlapping it" names the orange cross; "cross" alone would not)."""
    text = f" {normalize_text(sentence)} "
    taken_heads = {tags[e].split()[-1] for e in involved if tags[e]}
    found: list[int] = []
    for ent in reversed(seen):
        words = tags[ent].split()
        if ent in involved or not words or tags[ent] == UNNAMED_TAG:
            continue
        for start in range(len(words)):
            suffix = " ".join(words[start:])
            own = sum(1 for e in involved + found if tags[e].endswith(suffix))
            if _count_phrase(text, suffix) > own and (start < len(words) - 1 or words[-1] not in taken_heads):
                taken_heads.add(words[-1])
                found.append(ent)
                break
    return found


def _subject(sentence: str, tags: list[str], seen: list[int], last_group: list[int]) -> int | None:
    """The entity a box-free sentence is about: named in its first words, or a pronoun's antecedent."""
    words = _WORDS_RE.findall(sentence.lower())
    for ent in reversed(seen):
        if _names(set(words[:SUBJECT_WINDOW]), tags[ent]):
            return ent
    if words and words[0] in PRONOUN_STARTS and last_group:
        return last_group[0]
    return None


def _sentence_items(items: OfflineItems, sentence: str, group: list[int], tags: list[str], seen: list[int],
                    last_group: list[int]) -> None:
    """Add one sentence's items: relations between the entities it involves, else an attribute of its
    single entity, else a global item."""
    involved = list(group)
    if not involved:
        subject = _subject(sentence, tags, seen, last_group)
        involved = [subject] if subject is not None else []
    involved += _referents(sentence, tags, seen, involved)
    if len(involved) >= 2:
        for a, b in zip(involved, involved[1:]):
            items.relations.append((a, b, mask_names(sentence, [tags[a], tags[b]])))
    elif involved:
        items.attributes.append((involved[0], mask_names(sentence, [tags[involved[0]]])))
    elif sentence.strip():
        items.globals.append(sentence)


def items_from_caption(caption: str, width: int = 1000, height: int = 1000, box_rules: str = "official") -> OfflineItems:
    """Entities (one per distinct box) and sentence-level items of a caption; never raises."""
    parsed = parse_caption(caption, width, height, box_rules)
    pairs = caption_entities(parsed)
    tags = [tag.strip() or UNNAMED_TAG for tag, _ in pairs]
    items = OfflineItems([TaggedEntity(t, box) for t, (_, box) in zip(tags, pairs)])
    index = {_box_key(box): i for i, (_, box) in enumerate(pairs)}
    by_sentence: dict[int, list[int]] = {}
    for mention in parsed.mentions:
        group = by_sentence.setdefault(mention.sentence_index, [])
        for box in mention.boxes:
            ent = index[_box_key(box)]
            if ent not in group:
                group.append(ent)
    seen: list[int] = []
    last_group: list[int] = []
    for s_idx, sentence in enumerate(parsed.sentences):
        group = by_sentence.get(s_idx, [])
        for ent in group:
            if ent not in seen and tag_attribute(tags[ent]):
                items.attributes.append((ent, tag_attribute(tags[ent])))
        seen.extend(e for e in group if e not in seen)
        _sentence_items(items, sentence, group, tags, seen, last_group)
        last_group = group or last_group
    items.n_malformed_boxes = len(parsed.unparsed)
    if parsed.unparsed:
        shown = "; ".join(parsed.unparsed[:3])
        items.warnings.append(f"{len(parsed.unparsed)} malformed box text(s) ignored: {shown}")
    n_unnamed = tags.count(UNNAMED_TAG)
    if n_unnamed:
        items.warnings.append(f"{n_unnamed} box(es) with no recognisable name (tag {UNNAMED_TAG!r})")
    return items


def has_structure(sample: PanopticSample) -> bool:
    """True when the sample carries structured attributes, relations or global state (synthetic data)."""
    return bool(sample.relations or sample.global_state or any(e.attributes for e in sample.entities))


def items_from_sample(sample: PanopticSample, box_rules: str = "official") -> OfflineItems:
    """GT items from the structured fields when present, otherwise from the sample's caption."""
    if not has_structure(sample) and sample.caption.strip():
        return items_from_caption(sample.caption, sample.width, sample.height, box_rules)
    position = {e.id: i for i, e in enumerate(sample.entities)}
    items = OfflineItems(
        [TaggedEntity(e.tag.lower().strip() or UNNAMED_TAG, e.box) for e in sample.entities],
        source="structured",
    )
    for e in sample.entities:
        items.attributes.extend((position[e.id], a) for a in e.attributes)
    items.relations = [(position[r.subject], position[r.object], r.predicate) for r in sample.relations]
    items.globals = list(sample.global_state)
    return items


# ---------------------------------------------------------------------------------------------- support


@functools.lru_cache(maxsize=1 << 16)
def normalize_text(text: str) -> str:
    return " ".join(_WORDS_RE.findall(text.lower()))


def covers(a: str, b: str) -> bool:
    """Equal after normalisation, or one contains the other on whole words and has a content word."""
    na, nb = normalize_text(a), normalize_text(b)
    if not na or not nb:
        return False
    if na == nb:
        return True
    short, long = (na, nb) if len(na) <= len(nb) else (nb, na)
    if not any(w not in _FILLER for w in short.split()):
        return False
    return f" {short} " in f" {long} "


class SupportScorer:
    """support(text, candidates) for many queries at once; one embedding call per batch of queries."""

    def __init__(self, embedder: Embedder | None, threshold: float):
        self.embedder = embedder
        self.threshold = threshold

    @staticmethod
    def open_texts(queries: list[tuple[str, list[str]]]) -> set[str]:
        """The texts ``score_many`` will embed (queries no containment settles, and their candidates)."""
        out: set[str] = set()
        for text, candidates in queries:
            if candidates and not any(covers(text, c) for c in candidates):
                out.add(text)
                out.update(candidates)
        return out

    def score_many(self, queries: list[tuple[str, list[str]]]) -> list[float]:
        scores: list[float | None] = []
        open_texts: set[str] = set()
        for text, candidates in queries:
            if not candidates:
                scores.append(0.0)
            elif any(covers(text, c) for c in candidates):
                scores.append(1.0)
            else:
                scores.append(None)
                open_texts.add(text)
                open_texts.update(candidates)
        if open_texts and self.embedder is not None:
            ordered = sorted(open_texts)
            vectors = dict(zip(ordered, self.embedder.encode(ordered)))
            for k, (text, candidates) in enumerate(queries):
                if scores[k] is None:
                    best = max(float(vectors[text] @ vectors[c]) for c in candidates)
                    scores[k] = min(1.0, best) if best >= self.threshold else 0.0
        return [s if s is not None else 0.0 for s in scores]


# ---------------------------------------------------------------------------------------------- scoring


def _entity_context(items: OfflineItems, ent: int) -> list[str]:
    """Texts that describe one entity: its attribute items, relation items that involve it, its tag."""
    texts = [t for e, t in items.attributes if e == ent]
    texts += [t for a, b, t in items.relations if ent in (a, b)]
    return texts + [items.entities[ent].tag]


def _pair_texts(items: OfflineItems, a: int, b: int) -> list[str]:
    return [t for x, y, t in items.relations if {x, y} == {a, b}]


def _dimension_queries(gt: OfflineItems, pred: OfflineItems, g2p: dict[int, int], p2g: dict[int, int]):
    """Per dimension: (recall queries, precision queries); unmatched GT items get no candidates (-> 0)."""
    attr_r = [(t, _entity_context(pred, g2p[g]) if g in g2p else []) for g, t in gt.attributes]
    attr_p = [(t, _entity_context(gt, p2g[p])) for p, t in pred.attributes if p in p2g]
    rel_r = [
        (t, _pair_texts(pred, g2p[a], g2p[b]) if a in g2p and b in g2p else []) for a, b, t in gt.relations
    ]
    rel_p = [(t, _pair_texts(gt, p2g[a], p2g[b])) for a, b, t in pred.relations if a in p2g and b in p2g]
    glob_r = [(t, list(pred.globals)) for t in gt.globals]
    glob_p = [(t, list(gt.globals)) for t in pred.globals]
    return {"attr": (attr_r, attr_p), "rel": (rel_r, rel_p), "global": (glob_r, glob_p)}


def _item_prf(n_gt: int, n_pred_total: int, recall_scores: list[float], precision_scores: list[float]) -> PRF:
    if n_gt == 0:
        return ZERO  # official: a GT without items of this kind scores 0 on it
    recall = sum(recall_scores) / n_gt
    precision = sum(precision_scores) / len(precision_scores) if precision_scores and n_pred_total else 0.0
    return PRF.from_pr(precision, recall)


@dataclass
class PreparedImage:
    """One image after matching: the support queries of every dimension, not yet scored."""

    image_id: str
    gt: OfflineItems
    pred: OfflineItems
    match: EntityMatch
    queries: dict[str, tuple[list, list]]

    @property
    def flat(self) -> list[tuple[str, list[str]]]:
        return [q for dim in ("attr", "rel", "global") for side in self.queries[dim] for q in side]


def prepare_offline(image_id: str, gt: OfflineItems, pred: OfflineItems, embedder: Embedder | None,
                    match_config: MatchConfig = OFFICIAL) -> PreparedImage:
    """Match the entities of one image and build its support queries (so many images can be embedded at once)."""
    match = match_entities(gt.entities, pred.entities, embedder, match_config)
    g2p = match.mapping
    p2g = {p: g for g, p in g2p.items()}
    return PreparedImage(image_id, gt, pred, match, _dimension_queries(gt, pred, g2p, p2g))


def finish_offline(prep: PreparedImage, embedder: Embedder | None, config: OfflineConfig = OfflineConfig()) -> ImageResult:
    """Score the support queries of a prepared image and assemble its result."""
    gt, pred, match = prep.gt, prep.pred, prep.match
    support = iter(SupportScorer(embedder, config.support_threshold).score_many(prep.flat))
    sizes = {"attr": (len(gt.attributes), len(pred.attributes)), "rel": (len(gt.relations), len(pred.relations)),
             "global": (len(gt.globals), len(pred.globals))}
    scores = {"tag": match.tag, "loc": match.loc}
    for dim in ("attr", "rel", "global"):
        rec_q, prec_q = prep.queries[dim]
        rec = [next(support) for _ in rec_q]
        prec = [next(support) for _ in prec_q]
        scores[dim] = _item_prf(sizes[dim][0], sizes[dim][1], rec, prec)
    result = ImageResult(prep.image_id, scores, counts=_counts(match, gt, pred), matches=_match_rows(match, gt, pred),
                         entities=entity_layout(match, gt.entities, pred.entities))
    result.warnings = [f"prediction: {w}" for w in pred.warnings] + [f"gt: {w}" for w in gt.warnings]
    if not gt.entities:
        result.warnings.append("gt has no entities (tag/loc = 1 only if the prediction has none)")
    return result


def score_offline(
    image_id: str,
    gt: OfflineItems,
    pred: OfflineItems,
    embedder: Embedder | None,
    match_config: MatchConfig = OFFICIAL,
    config: OfflineConfig = OfflineConfig(),
) -> ImageResult:
    """All five dimensions of one image in offline mode."""
    return finish_offline(prepare_offline(image_id, gt, pred, embedder, match_config), embedder, config)


def _counts(match: EntityMatch, gt: OfflineItems, pred: OfflineItems) -> dict[str, int]:
    return {
        "gt_entities": match.n_gt, "pred_entities": match.n_pred, "matched": len(match.pairs),
        "gt_boxes": match.n_gt_boxes, "pred_boxes": match.n_pred_boxes, "loc_matched": len(match.loc_ok),
        "gt_attributes": len(gt.attributes), "pred_attributes": len(pred.attributes),
        "gt_relations": len(gt.relations), "pred_relations": len(pred.relations),
        "gt_globals": len(gt.globals), "pred_globals": len(pred.globals),
        "pred_malformed_boxes": pred.n_malformed_boxes,
    }


def _match_rows(match: EntityMatch, gt: OfflineItems, pred: OfflineItems) -> list[dict]:
    return [
        {"gt": gt.entities[g].tag, "pred": pred.entities[p].tag, "loc_ok": (g, p) in match.loc_ok}
        for g, p in match.pairs
    ]
