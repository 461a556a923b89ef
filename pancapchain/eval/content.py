"""The judge protocol's line format ``ID | Type -->> Tuple``: parse (as the official parse_content) and write.

Examples of the five line types::

    1 | entity -->> (whole, motorcycle)
    6 | location -->> (entity 1, [0.50, 0.70, 0.83, 1.00])
    9 | attribute -->> (entity 1, "entity 1 is blue")               # questions: ("..?", "..?"), answers: ("Yes", "No")
    15 | relation -->> (entity 1, entity 4, "entity 1 is next to entity 4")
    21 | global -->> ("the scene feels tranquil")

Parsing follows the official rules (underscores become spaces; the tuple is split on commas; an entity's
tag is its last piece; a location needs exactly 4 numbers after its reference; an attribute / relation
must name known entities and its text must contain its first reference; attribute refs ``global`` /
``image`` go to the global list; a bare number ``N`` means ``entity N``). Differences, all documented in
docs/evaluation.md: spaces around ``|`` and ``-->>`` are optional; every dropped line is *counted*
(``malformed`` = not a protocol line, ``invalid`` = a protocol line breaking a rule); the renumbered
context lines are rebuilt rather than string-replaced (the official replace could hit digits in boxes), keeping entity IDs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

LINE_RE = re.compile(r"^\s*(?P<id>\d+)\s*\|\s*(?P<kind>[A-Za-z]+)\s*-->>\s*(?P<body>.*?)\s*$")
KINDS = ("entity", "location", "attribute", "relation", "global")
MODES = ("content", "questions", "answers")
_BARE_NUMBER = re.compile(r"^\d+$")


@dataclass
class Content:
    """One parsed judge response (content, questions or answers) of one caption."""

    entities: dict[str, str] = field(default_factory=dict)  # "entity N" -> tag
    locations: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)
    attributes: list[tuple[int, str, str]] = field(default_factory=list)  # (line id, "entity N", text)
    relations: list[tuple[int, str, str, str]] = field(default_factory=list)  # (line id, e1, e2, text)
    globals: list[tuple[int, str]] = field(default_factory=list)  # (line id, text)
    entity_bodies: dict[str, str] = field(default_factory=dict)  # "entity N" -> "(whole, dog)" as written
    location_texts: dict[str, str] = field(default_factory=dict)  # "entity N" -> box text as written
    n_lines: int = 0
    n_malformed: int = 0
    n_invalid: int = 0

    @property
    def n_dropped(self) -> int:
        return self.n_malformed + self.n_invalid

    def context_lines(self) -> list[str]:
        """Entity lines with their own IDs (questions refer to them), then location lines numbered after
        the largest entity ID; the next free ID is ``max ID + 1``."""
        lines = [f"{ref.split()[1]} | entity -->> {body}" for ref, body in self.entity_bodies.items()]
        next_id = max((int(ref.split()[1]) for ref in self.entity_bodies), default=0) + 1
        for ref in self.locations:
            lines.append(f"{next_id} | location -->> ({ref}, {self.location_texts[ref]})")
            next_id += 1
        return lines

    def next_line_id(self) -> int:
        return max((int(ref.split()[1]) for ref in self.entity_bodies), default=0) + len(self.locations) + 1


def _strip_quotes(text: str) -> str:
    return text.strip().lstrip('" ').rstrip('"').strip()


def parse_box_text(text: str) -> tuple[float, float, float, float] | None:
    """``[0.1, 0.2, 0.3, 0.4]`` (any number of brackets) -> 4 floats, or None when it is not exactly 4."""
    try:
        values = [float(v) for v in text.replace("[", " ").replace("]", " ").split(",")]
    except ValueError:
        return None
    return tuple(values) if len(values) == 4 else None  # type: ignore[return-value]


def _entity_ref(ref: str, known: dict[str, str], check_known: bool) -> str | None:
    """Normalise ``N`` -> ``entity N``; None when it is not an entity ref (or unknown, when checked)."""
    ref = ref.strip()
    if _BARE_NUMBER.match(ref):
        ref = f"entity {ref}"
    if not ref.startswith("entity"):
        return None
    if check_known and ref not in known:
        return None
    return ref


def parse_content(text: str, mode: str = "content") -> Content:
    """Parse a judge response; ``mode`` is content / questions (entity table checked) or answers (not)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    out = Content()
    for raw in text.splitlines():
        if not raw.strip():
            continue
        out.n_lines += 1
        m = LINE_RE.match(raw.replace("_", " "))
        if m is None or m.group("kind").lower() not in KINDS:
            out.n_malformed += 1
            continue
        ok = _parse_line(int(m.group("id")), m.group("kind").lower(), m.group("body"), mode, out)
        if not ok:
            out.n_invalid += 1
    return out


def _tuple_pieces(body: str) -> list[str]:
    return body.strip().lstrip("(").rstrip(") ").split(",")


def _parse_line(line_id: int, kind: str, body: str, mode: str, out: Content) -> bool:
    pieces = _tuple_pieces(body)
    check = mode != "answers"
    if kind == "entity":
        tag = pieces[-1].strip()
        if not tag:
            return False
        out.entities[f"entity {line_id}"] = tag
        out.entity_bodies[f"entity {line_id}"] = "(" + ", ".join(p.strip() for p in pieces) + ")"
        return True
    if kind == "location":
        return _parse_location(line_id, pieces, out)
    if kind == "attribute":
        ref_text = pieces[0].strip()
        text = _strip_quotes(",".join(pieces[1:]))
        if ref_text in ("global", "image") and check:
            out.globals.append((line_id, text))
            return True
        ref = _entity_ref(ref_text, out.entities, check)
        if ref is None or (check and not _BARE_NUMBER.match(ref_text) and ref not in text):
            return False
        out.attributes.append((line_id, ref, text))
        return True
    if kind == "relation":
        if len(pieces) < 3:
            return False
        e1 = _entity_ref(pieces[0], out.entities, check)
        e2 = _entity_ref(pieces[1], out.entities, check)
        text = _strip_quotes(",".join(pieces[2:]))
        if e1 is None or e2 is None or (check and e1 not in text):
            return False
        out.relations.append((line_id, e1, e2, text))
        return True
    text = _strip_quotes(",".join(pieces))
    if not text:
        return False
    out.globals.append((line_id, text))
    return True


def _parse_location(line_id: int, pieces: list[str], out: Content) -> bool:
    box_text = _strip_quotes(",".join(pieces[1:]))
    box = parse_box_text(box_text)
    ref = _entity_ref(pieces[0], out.entities, check_known=True)
    if box is None or ref is None:
        return False
    out.locations[ref] = box
    out.location_texts[ref] = box_text
    return True


# ------------------------------------------------------------------------------------------------ writing


def rename_refs(text: str, mapping: dict[str, str]) -> str:
    """Rewrite entity refs in one pass (``entity 1`` -> ``entity 3`` and ``entity 3`` -> ``entity 1`` both work)."""
    if not mapping:
        return text
    pattern = re.compile("|".join(rf"{re.escape(k)}(?!\d)" for k in sorted(mapping, key=len, reverse=True)))
    return pattern.sub(lambda m: mapping[m.group(0)], text)


def format_attribute(line_id: int, ref: str, text: str) -> str:
    return f'{line_id} | attribute -->> ({ref}, "{text}")'


def format_relation(line_id: int, e1: str, e2: str, text: str) -> str:
    return f'{line_id} | relation -->> ({e1}, {e2}, "{text}")'


def format_global(line_id: int, text: str) -> str:
    return f'{line_id} | global -->> ("{text}")'
