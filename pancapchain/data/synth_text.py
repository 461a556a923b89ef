"""Panoptic captions for synthetic scenes (SA-Pancap style) and the generator's closed vocabulary.

A caption has three paragraphs: an overview sentence plus one sentence per stuff region (top to
bottom); one or two sentences per thing (left to right), each naming the thing once as
``a <size> <pattern> <color> <kind> [[x1, y1, x2, y2]]`` and sometimes relating it to an entity
mentioned earlier; then the lighting and palette. The tag (``<color> <kind>``, or the stuff name)
always stands right before its box, and entities are listed in the order of their first mention.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

from pancapchain.data.boxes import format_normalized
from pancapchain.data.synth_relations import INVERSE, PREDICATES, box_center, relate
from pancapchain.data.synth_scene import (
    HIDDEN,
    LIGHTINGS,
    PALETTES,
    SIZE_WORDS,
    STUFF_COLORS,
    THING_COLORS,
    SceneEntity,
    SceneLayout,
)
from pancapchain.data.synth_shapes import PATTERNS, THING_KINDS

COUNT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
REL_PHRASE = {
    "left of": "to the left of",
    "right of": "to the right of",
    "above": "above",
    "below": "below",
    "inside": "inside",
    "overlapping": "overlapping",
    "next to": "next to",
}
WHERE = {
    ("top", "left"): "in the top left corner",
    ("top", "center"): "at the top",
    ("top", "right"): "in the top right corner",
    ("middle", "left"): "on the left side",
    ("middle", "center"): "in the center",
    ("middle", "right"): "on the right side",
    ("bottom", "left"): "in the bottom left corner",
    ("bottom", "center"): "at the bottom",
    ("bottom", "right"): "in the bottom right corner",
}
STUFF_REGION = {
    "whole": "the whole image",
    "top": "the top part of the image",
    "middle": "the middle part of the image",
    "bottom": "the bottom part of the image",
}
OVERVIEW = (
    "The image shows {n} {shapes} in front of a background with {k} {parts}.",
    "This picture contains {n} {shapes} over {k} background {regions}.",
    "The scene has {n} simple {shapes} on a plain background.",
)
STUFF_SENTENCES = (
    "The {color} {tag} {box} covers {region}.",
    "{region} shows the {color} {tag} {box}.",
    "The {tag} {box} in {region} is {color}.",
)
THING_PLAIN = (
    "{a_np} {box} is {where}.",
    "{where} there is {a_np} {box}.",
    "There is {a_np} {box} {where}.",
)
THING_RELATED = (  # states (thing, predicate, obj)
    "{a_np} {box} is {rel} {obj}.",
    "{rel} {obj} is {a_np} {box}.",
    "{obj} has {a_np} {box} {rel} it.",
)
THING_INVERSE = ("{obj} is {inv} {a_np} {box}.",)  # states (obj, inverse predicate, thing)
HIDDEN_SENTENCES = ("It is partially hidden.", "Part of it is hidden behind other shapes.")
LIGHT_SENTENCES = (
    "The scene is shown in {lighting}.",
    "Everything is lit by {lighting}.",
    "The image is taken in {lighting}.",
)
PALETTE_SENTENCES = (
    "The overall palette is {palette}.",
    "The colors look {palette}.",
    "The image has a {palette} color palette.",
)

STATE_RELATION = 0.8  # chance that a thing with a usable relation gets a relation sentence
_TIER = {"inside": 0, "overlapping": 0, "next to": 1}

Triple = tuple[int, str, int]


def _choose(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _sentence(template: str, **slots: str) -> str:
    text = template.format(**slots)
    return text[0].upper() + text[1:]


def mention_order(layout: SceneLayout) -> list[SceneEntity]:
    """Stuff top to bottom, then things left to right (ties: top to bottom, then drawing order)."""
    things = sorted(layout.things, key=lambda t: (*box_center(t.box), t.draw_order))
    return list(layout.stuff) + things


def where_phrase(box: tuple[float, float, float, float]) -> str:
    """Coarse position of a box centre on a 3x3 grid, e.g. ``in the top left corner``."""
    cx, cy = box_center(box)
    col = "left" if cx < 1 / 3 else ("right" if cx > 2 / 3 else "center")
    row = "top" if cy < 1 / 3 else ("bottom" if cy > 2 / 3 else "middle")
    return WHERE[(row, col)]


def _overview(layout: SceneLayout, rng: np.random.Generator) -> str:
    n, k = len(layout.things), len(layout.stuff)
    return _sentence(
        _choose(rng, OVERVIEW),
        n=COUNT_WORDS[n],
        shapes="shape" if n == 1 else "shapes",
        k=COUNT_WORDS[k],
        parts="part" if k == 1 else "parts",
        regions="region" if k == 1 else "regions",
    )


def _stuff_sentence(ent: SceneEntity, rng: np.random.Generator) -> str:
    return _sentence(
        _choose(rng, STUFF_SENTENCES),
        color=ent.color,
        tag=ent.tag,
        box=format_normalized([ent.box]),
        region=STUFF_REGION[ent.place],
    )


def _best_relation(
    thing: SceneEntity, earlier: list[SceneEntity], tag_counts: Counter
) -> tuple[int, str] | None:
    """(index into ``earlier``, predicate) of the most salient true relation to a uniquely named entity."""
    best: tuple[tuple[int, float], int, str] | None = None
    tx, ty = box_center(thing.box)
    for index, other in enumerate(earlier):
        if tag_counts[other.tag] != 1:
            continue  # "the red circle" would be ambiguous
        predicate = relate(thing, other)
        if predicate is None:
            continue
        tier = _TIER.get(predicate, 2) if other.is_thing else 3
        ox, oy = box_center(other.box)
        key = (tier, (tx - ox) ** 2 + (ty - oy) ** 2)
        if best is None or key < best[0]:
            best = (key, index, predicate)
    return None if best is None else (best[1], best[2])


def _thing_sentence(
    thing: SceneEntity,
    index: int,
    earlier: list[SceneEntity],
    tag_counts: Counter,
    repeated: bool,
    rng: np.random.Generator,
) -> tuple[str, Triple | None]:
    """The mention sentence of the thing at mention ``index`` and the relation it states (if any)."""
    size, pattern, color = thing.attributes[:3]
    a_np = f"{'another' if repeated else 'a'} {size} {pattern} {color} {thing.kind}"
    box = format_normalized([thing.box])
    found = _best_relation(thing, earlier, tag_counts)
    if found is None or rng.random() >= STATE_RELATION:
        return _sentence(_choose(rng, THING_PLAIN), a_np=a_np, box=box, where=where_phrase(thing.box)), None
    other_index, predicate = found
    obj = f"the {earlier[other_index].tag}"
    templates = THING_RELATED + (
        THING_INVERSE if predicate in INVERSE and earlier[other_index].is_thing else ()
    )
    template = _choose(rng, templates)
    if template in THING_INVERSE:
        inverse = INVERSE[predicate]
        text = _sentence(template, obj=obj, inv=REL_PHRASE[inverse], a_np=a_np, box=box)
        return text, (other_index, inverse, index)
    text = _sentence(template, obj=obj, rel=REL_PHRASE[predicate], a_np=a_np, box=box)
    return text, (index, predicate, other_index)


def compose_caption(
    layout: SceneLayout, rng: np.random.Generator
) -> tuple[list[SceneEntity], str, list[Triple]]:
    """Entities in mention order, the caption, and the stated relations as (subject, predicate, object)
    indices into that entity list."""
    entities = mention_order(layout)
    tag_counts = Counter(e.tag for e in entities)
    head = [_overview(layout, rng)] + [_stuff_sentence(e, rng) for e in layout.stuff]
    body: list[str] = []
    relations: list[Triple] = []
    named: set[str] = set()
    for index, ent in enumerate(entities):
        if not ent.is_thing:
            continue
        text, triple = _thing_sentence(ent, index, entities[:index], tag_counts, ent.tag in named, rng)
        named.add(ent.tag)
        body.append(text)
        if triple is not None:
            relations.append(triple)
        if HIDDEN in ent.attributes:
            body.append(_choose(rng, HIDDEN_SENTENCES))
    tail = [
        _sentence(_choose(rng, LIGHT_SENTENCES), lighting=layout.lighting),
        _sentence(_choose(rng, PALETTE_SENTENCES), palette=layout.palette),
    ]
    return entities, "\n\n".join(" ".join(part) for part in (head, body, tail)), relations


def global_state(layout: SceneLayout) -> tuple[str, str]:
    return layout.lighting, f"{layout.palette} palette"


# ---- vocabulary ---------------------------------------------------------------------------------------

_SLOT_RE = re.compile(r"\{(\w+)\}")
_WORD_RE = re.compile(r"[A-Za-z]+")


def _slot_values() -> dict[str, list[str]]:
    """Every phrase each template slot can take (``a_np`` by its parts; its first word is a/another)."""
    stuff_colors = sorted({c for colors in STUFF_COLORS.values() for c in colors})
    tags = [f"{c} {k}" for c in THING_COLORS for k in THING_KINDS] + list(STUFF_COLORS)
    return {
        "n": list(COUNT_WORDS),
        "k": list(COUNT_WORDS),
        "shapes": ["shape", "shapes"],
        "parts": ["part", "parts"],
        "regions": ["region", "regions"],
        "color": stuff_colors,
        "tag": list(STUFF_COLORS),
        "region": list(STUFF_REGION.values()),
        "a_np": ["a", "another", *SIZE_WORDS, *PATTERNS, *THING_COLORS, *THING_KINDS],
        "where": list(WHERE.values()),
        "rel": list(REL_PHRASE.values()),
        "inv": list(REL_PHRASE.values()),
        "obj": [f"the {t}" for t in tags],
        "lighting": list(LIGHTINGS),
        "palette": list(PALETTES),
        "box": [],
    }


def _all_templates() -> tuple[str, ...]:
    return (
        OVERVIEW
        + STUFF_SENTENCES
        + THING_PLAIN
        + THING_RELATED
        + THING_INVERSE
        + HIDDEN_SENTENCES
        + LIGHT_SENTENCES
        + PALETTE_SENTENCES
    )


def _sentence_initial_words(template: str, slots: dict[str, list[str]]) -> set[str]:
    first = _SLOT_RE.match(template)
    if first is None:
        return {_WORD_RE.findall(template)[0].capitalize()}
    options = ["a", "another"] if first.group(1) == "a_np" else slots[first.group(1)]
    return {_WORD_RE.findall(value)[0].capitalize() for value in options}


def vocabulary() -> list[str]:
    """Every word and phrase the generator can emit in captions, tags, attributes, relations and global
    states (sorted, unique). Box texts (digits, brackets, commas) and punctuation are not listed."""
    slots = _slot_values()
    phrases: set[str] = set()
    for values in slots.values():
        phrases.update(values)
    phrases.update(f"{c} {k}" for c in THING_COLORS for k in THING_KINDS)
    phrases.update(PREDICATES)
    phrases.add(HIDDEN)
    phrases.update(f"{p} palette" for p in PALETTES)
    words: set[str] = set()
    for phrase in phrases:
        words.update(_WORD_RE.findall(phrase))
    for template in _all_templates():
        words.update(_WORD_RE.findall(_SLOT_RE.sub(" ", template)))
        words.update(_sentence_initial_words(template, slots))
    return sorted(phrases | words)
