"""The data contract: one panoptic sample type that every importer writes and every consumer reads.

A sample is stored as one JSON object per line (JSONL)::

    {"id": "syn-000001", "image": "images/syn-000001.png", "width": 96, "height": 64,
     "entities": [{"id": 0, "tag": "red circle", "box": [0.1, 0.2, 0.4, 0.6],
                   "mask": {"size": [64, 96], "counts": "..."}, "attributes": ["red"], "is_thing": true}],
     "relations": [{"subject": 0, "predicate": "left of", "object": 1}],
     "global": ["bright daylight"],
     "caption": "A red circle [[0.100, 0.200, 0.400, 0.600]] ..."}

Boxes are normalized ``[x1, y1, x2, y2]`` in ``[0, 1]`` relative to the original image width/height.
Masks are COCO RLE dicts (``counts`` as a str, ``size`` = [height, width]). The caption carries inline
normalized boxes ``[[x1, y1, x2, y2]]`` after the mentions they ground (SA-Pancap style).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Box = tuple[float, float, float, float]


class SampleError(ValueError):
    """A record that violates the data contract; the message names the record and the problem."""

    def __init__(self, record: str, problem: str):
        self.record = record
        self.problem = problem
        super().__init__(f"record {record}: {problem}")


@dataclass(frozen=True)
class Entity:
    """One panoptic entity: a thing (countable object) or a stuff region (sky, ground...)."""

    id: int
    tag: str
    box: Box
    mask: dict | None = None
    attributes: tuple[str, ...] = ()
    is_thing: bool = True

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "tag": self.tag, "box": [round(v, 6) for v in self.box]}
        if self.mask is not None:
            out["mask"] = self.mask
        if self.attributes:
            out["attributes"] = list(self.attributes)
        out["is_thing"] = self.is_thing
        return out


@dataclass(frozen=True)
class Relation:
    """A directed relation between two entities of the same sample, e.g. (0, "left of", 2)."""

    subject: int
    predicate: str
    object: int

    def to_dict(self) -> dict[str, Any]:
        return {"subject": self.subject, "predicate": self.predicate, "object": self.object}


@dataclass(frozen=True)
class PanopticSample:
    """An image with all its entities, optional structure, and the panoptic caption."""

    id: str
    image: str
    width: int
    height: int
    entities: tuple[Entity, ...]
    caption: str = ""
    relations: tuple[Relation, ...] = ()
    global_state: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "image": self.image,
            "width": self.width,
            "height": self.height,
            "entities": [e.to_dict() for e in self.entities],
        }
        if self.relations:
            out["relations"] = [r.to_dict() for r in self.relations]
        if self.global_state:
            out["global"] = list(self.global_state)
        out["caption"] = self.caption
        return out

    def entity(self, entity_id: int) -> Entity:
        for ent in self.entities:
            if ent.id == entity_id:
                return ent
        raise KeyError(f"sample {self.id} has no entity {entity_id}")

    @staticmethod
    def from_dict(record: Any, where: str = "?") -> PanopticSample:
        """Validate a decoded JSON record; raise SampleError naming ``where`` (file:line or id) on problems."""
        return _parse_sample(record, where)


def validate_box(box: Any, record: str, what: str = "box") -> Box:
    """Check a normalized xyxy box: 4 finite numbers in [0, 1] with x1 <= x2 and y1 <= y2."""
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        raise SampleError(record, f"{what} must be a list of 4 numbers, got {box!r}")
    try:
        vals = tuple(float(v) for v in box)
    except (TypeError, ValueError):
        raise SampleError(record, f"{what} has a non-numeric value: {box!r}") from None
    if not all(math.isfinite(v) for v in vals):
        raise SampleError(record, f"{what} has a non-finite value: {box!r}")
    if any(v < 0.0 or v > 1.0 for v in vals):
        raise SampleError(record, f"{what} {list(vals)} is outside [0, 1] (boxes are normalized xyxy)")
    x1, y1, x2, y2 = vals
    if x2 < x1 or y2 < y1:
        raise SampleError(record, f"{what} {list(vals)} has x2 < x1 or y2 < y1 (expected [x1, y1, x2, y2])")
    return vals  # type: ignore[return-value]


def resolve_image(image_root: str | Path, relative: str, record: str) -> Path:
    """Resolve an image path inside ``image_root``; refuse absolute paths and paths escaping the root."""
    root = Path(image_root).resolve()
    rel = Path(relative)
    if rel.is_absolute():
        raise SampleError(record, f"image path {relative!r} is absolute; paths are relative to the image root")
    path = (root / rel).resolve()
    if not path.is_relative_to(root):
        raise SampleError(record, f"image path {relative!r} escapes the image root {root}")
    return path


def _require(record: dict, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in record:
        raise SampleError(where, f"missing field {key!r}")
    value = record[key]
    if isinstance(value, bool) and kind in (int, (int,)):
        raise SampleError(where, f"field {key!r} must be {kind}, got a bool")
    if not isinstance(value, kind):
        raise SampleError(where, f"field {key!r} must be {kind}, got {type(value).__name__}")
    return value


def _parse_entity(raw: Any, where: str) -> Entity:
    if not isinstance(raw, dict):
        raise SampleError(where, f"an entity must be an object, got {type(raw).__name__}")
    ent_id = _require(raw, "id", int, where)
    tag = _require(raw, "tag", str, where)
    box = validate_box(raw.get("box"), where, f"entity {ent_id} box")
    mask = raw.get("mask")
    if mask is not None:
        if not (isinstance(mask, dict) and "counts" in mask and "size" in mask):
            raise SampleError(where, f"entity {ent_id} mask must be a COCO RLE dict with 'size' and 'counts'")
    attrs = raw.get("attributes") or []
    if not isinstance(attrs, list) or not all(isinstance(a, str) for a in attrs):
        raise SampleError(where, f"entity {ent_id} attributes must be a list of strings")
    return Entity(ent_id, tag.strip(), box, mask, tuple(attrs), bool(raw.get("is_thing", True)))


def _parse_relations(raw: Any, ids: set[int], where: str) -> tuple[Relation, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise SampleError(where, "relations must be a list")
    out = []
    for rel in raw:
        if not isinstance(rel, dict):
            raise SampleError(where, "a relation must be an object with subject/predicate/object")
        subj, obj = rel.get("subject"), rel.get("object")
        if subj not in ids or obj not in ids:
            raise SampleError(where, f"relation {rel!r} refers to an unknown entity id")
        out.append(Relation(int(subj), str(rel.get("predicate", "")), int(obj)))
    return tuple(out)


def _parse_sample(record: Any, where: str) -> PanopticSample:
    if not isinstance(record, dict):
        raise SampleError(where, f"a sample must be a JSON object, got {type(record).__name__}")
    sample_id = str(_require(record, "id", (str, int), where))
    where = f"{where} (id {sample_id})" if sample_id not in where else where
    image = _require(record, "image", str, where)
    width = _require(record, "width", int, where)
    height = _require(record, "height", int, where)
    if width <= 0 or height <= 0:
        raise SampleError(where, f"width/height must be positive, got {width}x{height}")
    raw_entities = _require(record, "entities", list, where)
    entities = tuple(_parse_entity(e, where) for e in raw_entities)
    ids = [e.id for e in entities]
    if len(set(ids)) != len(ids):
        raise SampleError(where, f"duplicate entity ids {sorted(ids)}")
    caption = record.get("caption", "")
    if not isinstance(caption, str):
        raise SampleError(where, "caption must be a string")
    global_state = record.get("global") or []
    if not isinstance(global_state, list) or not all(isinstance(g, str) for g in global_state):
        raise SampleError(where, "global must be a list of strings")
    relations = _parse_relations(record.get("relations"), set(ids), where)
    return PanopticSample(sample_id, image, width, height, entities, caption, relations, tuple(global_state))
