"""The prediction record: one image's chain result, as ``infer`` writes it and ``eval``/``visualize`` read it.

One JSON object per line, keys in this order (``caption*`` absent when the chain stopped before stage 4,
``image`` absent outside ``infer``)::

    id            str
    width/height  int, the image size
    stages        {stage: {prompt, raw, items: [{tag, boxes}], malformed, duplicates, truncated, edited,
                   repeat_stopped, refinds, unseen}}  in the order the stages ran
    caption_model str, the caption as generated (the model's box format)
    caption       str, the caption with normalized boxes ``[[x1, y1, x2, y2]]``
    entities      [{tag, box (normalized xyxy, 4 decimals), box_model}]
    masks         [{box, rle, score}]  one per entity that has a mask, linked by its box
    image         str, the image path as given in the data

:meth:`Prediction.from_dict` also reads other tools' files: only ``id`` (or ``image_path``) and ``caption``
(or ``model_response``) are needed; a mask may name its entity by index (``entity``) instead of ``box``.
Masks stay JSON objects (COCO RLE inside); :mod:`pancapchain.eval.masks` checks each one and warns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pancapchain.data.sapancap import sample_id


class PredictionError(ValueError):
    """A line that is no prediction record at all (not an object, no usable id); the message names it."""

    def __init__(self, record: str, problem: str):
        super().__init__(f"{record}: {problem}")
        self.record = record
        self.problem = problem


@dataclass(frozen=True)
class StageRecord:
    """One stage's output: prompt, raw text, parsed items (tag or None, boxes) and what went wrong."""

    prompt: str
    raw: str
    items: tuple[tuple[str | None, tuple[tuple[float, ...], ...]], ...] = ()
    malformed: tuple[str, ...] = ()
    duplicates: int = 0
    truncated: bool = False
    edited: bool = False
    repeat_stopped: bool = False
    refinds: int = 0  # stage 3: items dropped as a known entity found again
    unseen: int = 0  # stage 3: items dropped as no stage-1 view boxed them (pancapchain.infer.views)

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "raw": self.raw,
            "items": [{"tag": tag, "boxes": [list(b) for b in boxes]} for tag, boxes in self.items],
            "malformed": list(self.malformed),
            "duplicates": self.duplicates,
            "truncated": self.truncated,
            "edited": self.edited,
            "repeat_stopped": self.repeat_stopped,
            "refinds": self.refinds,
            "unseen": self.unseen,
        }

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> StageRecord:
        items = tuple((it.get("tag"), tuple(tuple(b) for b in it.get("boxes", ()))) for it in obj.get("items", ()))
        return cls(str(obj.get("prompt", "")), str(obj.get("raw", "")), items, tuple(obj.get("malformed", ())),
                   int(obj.get("duplicates", 0)), bool(obj.get("truncated", False)), bool(obj.get("edited", False)),
                   bool(obj.get("repeat_stopped", False)), int(obj.get("refinds", 0)), int(obj.get("unseen", 0)))


@dataclass(frozen=True)
class PredictedEntity:
    """One predicted entity: tag, normalized xyxy box, and the box as the model writes it."""

    tag: str
    box: tuple[float, ...]
    box_model: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"tag": self.tag, "box": list(self.box), "box_model": self.box_model}

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> PredictedEntity:
        return cls(str(obj.get("tag") or ""), tuple(float(v) for v in obj["box"]), str(obj.get("box_model", "")))


@dataclass
class Prediction:
    """One image's prediction (module docstring). ``problem`` and ``warnings`` are reading diagnostics, never
    written: ``problem`` marks a record that cannot be scored (its caption is not text), ``warnings`` what
    reading it had to ignore."""

    id: str
    caption: str = ""
    caption_model: str | None = None
    width: int | None = None
    height: int | None = None
    stages: dict[str, StageRecord] = field(default_factory=dict)
    entities: list[PredictedEntity] = field(default_factory=list)
    masks: list[Any] = field(default_factory=list)
    image: str | None = None
    has_caption: bool = True  # False: the chain stopped before stage 4 (no caption keys are written)
    problem: str | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The JSON row (key order as in the module docstring)."""
        out: dict[str, Any] = {"id": self.id, "width": self.width, "height": self.height}
        out["stages"] = {stage: record.to_dict() for stage, record in self.stages.items()}
        if self.has_caption:
            out["caption_model"] = self.caption_model
            out["caption"] = self.caption
        out["entities"] = [entity.to_dict() for entity in self.entities]
        out["masks"] = list(self.masks)
        if self.image is not None:
            out["image"] = self.image
        return out

    @classmethod
    def from_dict(cls, obj: Any, where: str = "prediction") -> Prediction:
        """Read a row; raises PredictionError (naming ``where``) when it has no usable id. A caption that is not
        text sets ``problem``; unreadable masks, stages or entities are dropped with a warning."""
        if not isinstance(obj, dict):
            raise PredictionError(where, f"invalid: a prediction must be a JSON object, got {type(obj).__name__}")
        pred_id = _prediction_id(obj)
        if pred_id is None:
            raise PredictionError(where, "invalid: missing or unusable 'id'")
        caption = obj.get("caption", obj.get("model_response"))
        pred = cls(pred_id, caption if isinstance(caption, str) else "", obj.get("caption_model"),
                   obj.get("width"), obj.get("height"), image=obj.get("image"),
                   has_caption="caption" in obj or "model_response" in obj)
        if not isinstance(caption, str):
            problem = "missing caption" if caption is None else f"caption is {type(caption).__name__}, not a string"
            pred.problem = f"bad prediction: {problem}"
        masks = obj.get("masks") or []
        if isinstance(masks, list):
            pred.masks = masks
        else:
            pred.warnings.append(f"masks ignored: expected a list, got {type(masks).__name__}")
        try:
            pred.stages = {stage: StageRecord.from_dict(s) for stage, s in (obj.get("stages") or {}).items()}
            pred.entities = [PredictedEntity.from_dict(e) for e in obj.get("entities") or []]
        except (AttributeError, KeyError, TypeError, ValueError) as err:
            pred.warnings.append(f"stages/entities ignored: {type(err).__name__}: {err}")
        return pred


def _prediction_id(obj: dict[str, Any]) -> str | None:
    raw = obj.get("id")
    if raw is None and isinstance(obj.get("image_path"), str):
        return sample_id(obj["image_path"])
    if isinstance(raw, bool) or not isinstance(raw, (str, int)) or str(raw).strip() == "":
        return None
    return str(raw)
