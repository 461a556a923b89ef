"""Mask evaluation of one image: link predicted masks to caption entities, then mIoU / AP / PNG units.

Predicted masks come as ``[{"entity": k, "rle": RLE}, ...]`` (k = index of the entity in the predicted
caption, one entity per distinct box in caption order) or ``{"box": [x1, y1, x2, y2], "rle": RLE}`` (the
entity whose box has the highest IoU >= 0.5 with it). GT masks are the entities' RLEs of a JSONL sample.

* mIoU / AP use every decodable predicted mask against every GT mask of the image (no linking needed).
* PNG Average Recall units are the GT caption's grounded mentions (one box: singular, several: plural;
  thing/stuff from the last entity's ``is_thing``); each mention box is tied to the GT entity with the
  highest box IoU (>= 0.5) that has a mask. The unit's GT mask is the union of its entities' masks; its
  predicted mask is the union of the masks linked to the predicted entities those GT entities were
  matched to (official matcher). Without a GT caption every GT entity is a singular unit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pancapchain.data.boxes import box_iou
from pancapchain.data.caption_parser import parse_caption
from pancapchain.data.rle import to_binary_mask
from pancapchain.data.schema import PanopticSample
from pancapchain.eval.embed import Embedder
from pancapchain.eval.masks import GroundedPhrase, MaskImage, greedy_miou, soft_iou
from pancapchain.eval.matching import OFFICIAL, MatchConfig, TaggedEntity, match_entities

LINK_IOU = 0.5


@dataclass
class MaskResult:
    """Mask outcome of one image; ``miou`` is None when the GT has no mask."""

    miou: float | None
    ap_image: MaskImage | None
    phrases: list[GroundedPhrase] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _best_box(box, candidates: list, threshold: float = LINK_IOU) -> int | None:
    scored = [(box_iou(box, c), i) for i, c in enumerate(candidates) if c is not None]
    best = max(scored, default=(0.0, None))
    return best[1] if best[0] >= threshold else None


def mask_entry_problem(entry: Any, n_entities: int) -> str | None:
    """Why a predicted mask record cannot be used (None when it can): not an object, no or a malformed
    ``rle``, a ``box`` that is not 4 finite numbers in [0, 1], an ``entity`` that is not an entity index."""
    if not isinstance(entry, dict):
        return f"expected an object {{\"rle\", \"box\" or \"entity\"}}, got {type(entry).__name__}"
    rle = entry.get("rle")
    if rle is None:
        return "no 'rle' field"
    if not (isinstance(rle, dict) and "size" in rle and "counts" in rle):
        return "'rle' must be a COCO RLE object with 'size' and 'counts'"
    box = entry.get("box")
    if box is not None:
        values = box if isinstance(box, (list, tuple)) else [box]
        if len(values) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            return f"box {box!r} must be 4 numbers [x1, y1, x2, y2]"
        bad = next((v for v in values if not (math.isfinite(v) and 0.0 <= v <= 1.0)), None)
        if bad is not None:
            return f"box {box!r}: value {bad} is not a number in [0, 1] (normalized coordinates)"
    entity = entry.get("entity")
    if entity is not None and (isinstance(entity, bool) or not isinstance(entity, int)
                               or not 0 <= entity < n_entities):
        return f"entity {entity!r} is not the index of one of the {n_entities} entities of the predicted caption"
    return None


def decode_pred_masks(
    raw: list[Any], pred_entities: list[TaggedEntity], shape: tuple[int, int]
) -> tuple[list[np.ndarray], dict[int, list[np.ndarray]], list[str]]:
    """(all masks, masks by predicted entity index, warnings); bad entries are skipped with a warning."""
    masks: list[np.ndarray] = []
    linked: dict[int, list[np.ndarray]] = {}
    warnings: list[str] = []
    boxes = [e.box for e in pred_entities]
    for k, entry in enumerate(raw):
        problem = mask_entry_problem(entry, len(pred_entities))
        if problem:
            warnings.append(f"mask {k} skipped: {problem}")
            continue
        try:
            mask = to_binary_mask(entry["rle"])
        except Exception as err:  # malformed RLE of any kind: report and go on
            warnings.append(f"mask {k} skipped: cannot decode its rle ({type(err).__name__}: {err})")
            continue
        if mask.shape != shape:
            warnings.append(f"mask {k} skipped: size {list(mask.shape)} differs from the GT size {list(shape)}")
            continue
        masks.append(mask)
        target = entry.get("entity")
        if target is None and entry.get("box") is not None:
            target = _best_box(tuple(float(v) for v in entry["box"]), boxes)
        if target is not None:
            linked.setdefault(target, []).append(mask)
    return masks, linked, warnings


def _gt_masks(sample: PanopticSample) -> tuple[dict[int, np.ndarray], list[str]]:
    """Decoded GT masks by entity index (all of the first decodable mask's size), and warnings."""
    masks: dict[int, np.ndarray] = {}
    warnings: list[str] = []
    for i, ent in enumerate(sample.entities):
        if ent.mask is None:
            continue
        try:
            mask = to_binary_mask(ent.mask)
        except Exception as err:  # a damaged GT RLE: skip that entity's mask, keep the rest
            warnings.append(f"gt entity {ent.id} mask skipped: cannot decode ({type(err).__name__})")
            continue
        if masks and mask.shape != next(iter(masks.values())).shape:
            warnings.append(f"gt entity {ent.id} mask skipped: size {list(mask.shape)} differs from the others")
            continue
        masks[i] = mask
    return masks, warnings


def _units(sample: PanopticSample, with_mask: list[int]) -> list[tuple[list[int], bool]]:
    """PNG units as (GT entity indices, plural) from the caption's mentions, or one unit per entity."""
    if not sample.caption.strip():
        return [([i], False) for i in with_mask]
    boxes = [sample.entities[i].box if i in with_mask else None for i in range(len(sample.entities))]
    units = []
    for mention in parse_caption(sample.caption, sample.width, sample.height).mentions:
        ents = []
        for box in mention.boxes:
            idx = _best_box(box, boxes)
            if idx is not None and idx not in ents:
                ents.append(idx)
        if ents:
            units.append((ents, len(mention.boxes) > 1))
    return units


def _union(masks: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    out = np.zeros(shape, dtype=bool)
    for m in masks:
        out |= m
    return out


def evaluate_masks(
    sample: PanopticSample,
    pred_entities: list[TaggedEntity],
    raw_masks: list[Any],
    embedder: Embedder | None,
    match_config: MatchConfig = OFFICIAL,
) -> MaskResult:
    """mIoU, the AP input and the PNG units of one image (GT = a JSONL sample with entity masks)."""
    gt_masks, gt_warnings = _gt_masks(sample)
    if not gt_masks:
        return MaskResult(None, None, warnings=gt_warnings)
    with_mask = list(gt_masks)
    shape = next(iter(gt_masks.values())).shape
    preds, linked, warnings = decode_pred_masks(raw_masks, pred_entities, shape)
    result = MaskResult(greedy_miou(preds, list(gt_masks.values())), MaskImage(list(gt_masks.values()), preds),
                        warnings=gt_warnings + warnings)
    gt_tagged = [TaggedEntity(e.tag.lower(), e.box) for e in sample.entities]
    g2p = match_entities(gt_tagged, pred_entities, embedder, match_config).mapping
    for ents, plural in _units(sample, with_mask):
        target = _union([gt_masks[i] for i in ents], shape)
        predicted = _union([m for i in ents if i in g2p for m in linked.get(g2p[i], [])], shape)
        result.phrases.append(GroundedPhrase(soft_iou(predicted, target), plural, sample.entities[ents[-1]].is_thing))
    return result
