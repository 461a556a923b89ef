"""Mask metrics as pure functions over numpy boolean masks (H, W) or COCO RLE dicts.

* ``greedy_miou``: GLaMM GCG mIoU of one image: IoU matrix preds x GTs, repeatedly take the largest
  entry as a one-to-one pair until the largest left is 0; image score = mean IoU of the pairs (0 if no
  pair; unpaired masks are not penalised). ``mean_miou`` averages images.
* ``mask_ap``: class-agnostic COCO mask AP (pycocotools COCOeval, iouType "segm"); every prediction is
  category 1 with score 1 unless scores are given.
* ``png_average_recall``: PNG Average Recall, the area under the recall-vs-IoU-threshold curve with
  thresholds 0, 1e-5, ..., 1 - 1e-5, overall and on the singular / plural / thing / stuff splits.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from pancapchain.data.rle import MaskLike, encode_rle, to_binary_mask


def mask_iou_matrix(preds: Sequence[MaskLike], gts: Sequence[MaskLike]) -> np.ndarray:
    """(len(preds), len(gts)) IoU; masks of different sizes are an error; an empty union gives 0."""
    p = [to_binary_mask(m) for m in preds]
    g = [to_binary_mask(m) for m in gts]
    out = np.zeros((len(p), len(g)), dtype=np.float64)
    if not p or not g:
        return out
    shapes = {m.shape for m in p + g}
    if len(shapes) > 1:
        raise ValueError(f"masks of one image must share a size, got {sorted(shapes)}")
    pf = np.stack([m.reshape(-1) for m in p]).astype(np.float64)
    gf = np.stack([m.reshape(-1) for m in g]).astype(np.float64)
    inter = pf @ gf.T
    union = pf.sum(1)[:, None] + gf.sum(1)[None, :] - inter
    np.divide(inter, union, out=out, where=union > 0)
    return out


def greedy_pairs(iou: np.ndarray) -> list[tuple[int, int, float]]:
    """One-to-one (row, col, iou) pairs by repeatedly taking the largest remaining entry while it is > 0."""
    work = np.array(iou, dtype=np.float64, copy=True)
    pairs = []
    while work.size and work.max() > 0:
        r, c = np.unravel_index(int(np.argmax(work)), work.shape)
        pairs.append((int(r), int(c), float(iou[r, c])))
        work[r, :] = -1.0
        work[:, c] = -1.0
    return pairs


def greedy_miou(preds: Sequence[MaskLike], gts: Sequence[MaskLike]) -> float:
    """GLaMM-style mIoU of one image (mean IoU over greedy one-to-one pairs; 0 without pairs)."""
    pairs = greedy_pairs(mask_iou_matrix(preds, gts))
    return float(np.mean([p[2] for p in pairs])) if pairs else 0.0


def mean_miou(images: Sequence[tuple[Sequence[MaskLike], Sequence[MaskLike]]]) -> float:
    """Mean over images of ``greedy_miou(preds, gts)``; no images -> 0."""
    return float(np.mean([greedy_miou(p, g) for p, g in images])) if images else 0.0


# ------------------------------------------------------------------------------------------------ mask AP


def _as_rle(mask: MaskLike) -> dict:
    if isinstance(mask, dict) and not isinstance(mask.get("counts"), list):
        counts = mask["counts"]
        return {"size": list(mask["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    rle = encode_rle(to_binary_mask(mask))
    return {"size": rle["size"], "counts": rle["counts"].encode("ascii")}


@dataclass(frozen=True)
class MaskImage:
    """One image for mask AP: GT masks, predicted masks, optional prediction scores (default 1.0)."""

    gts: Sequence[MaskLike]
    preds: Sequence[MaskLike]
    scores: Sequence[float] | None = None


def mask_ap(images: Sequence[MaskImage]) -> dict[str, float]:
    """Class-agnostic COCO mask AP: {"AP", "AP50", "AP75"} in [0, 1]; -1 where COCO has nothing to score."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt_json: dict[str, Any] = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "entity"}]}
    dets: list[dict] = []
    for img_id, image in enumerate(images, start=1):
        rles = [_as_rle(m) for m in image.gts] + [_as_rle(m) for m in image.preds]
        if not rles:
            continue
        h, w = rles[0]["size"]
        gt_json["images"].append({"id": img_id, "height": h, "width": w})
        for rle in rles[: len(image.gts)]:
            ann_id = len(gt_json["annotations"]) + 1
            area = float(mask_utils.area(rle))
            box = [float(v) for v in mask_utils.toBbox(rle)]
            gt_json["annotations"].append(
                {"id": ann_id, "image_id": img_id, "category_id": 1, "segmentation": rle, "area": area,
                 "bbox": box, "iscrowd": 0}
            )
        scores = list(image.scores) if image.scores is not None else [1.0] * len(image.preds)
        for rle, score in zip(rles[len(image.gts) :], scores):
            dets.append({"image_id": img_id, "category_id": 1, "segmentation": rle, "score": float(score)})
    if not gt_json["annotations"] or not dets:
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt_json
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(dets)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = evaluator.stats
    return {"AP": float(stats[0]), "AP50": float(stats[1]), "AP75": float(stats[2])}


# --------------------------------------------------------------------------------------- PNG Average Recall

PNG_THRESHOLDS = np.arange(0.0, 1.0, 1e-5)


@dataclass(frozen=True)
class GroundedPhrase:
    """One PNG unit: a noun phrase grounded by >= 1 segment; plural when it has > 1 segment."""

    iou: float
    plural: bool
    is_thing: bool


def soft_iou(pred: np.ndarray, target: np.ndarray) -> float:
    """PNG's IoU, sum(p*t) / sum(p + t - p*t); works for soft (interpolated) masks; empty union -> 0."""
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    union = float(np.sum(p + t - p * t))
    return float(np.sum(p * t)) / union if union > 0 else 0.0


def average_recall(ious: Sequence[float], thresholds: np.ndarray = PNG_THRESHOLDS) -> float:
    """Area under recall(t) = fraction of IoUs >= t, summed as (t[i+1] - t[i]) * recall(t[i])."""
    if len(ious) == 0:
        return 0.0
    values = np.sort(np.asarray(ious, dtype=np.float64))
    # recall(t) for every threshold at once: share of values >= t
    recall = 1.0 - np.searchsorted(values, thresholds, side="left") / len(values)
    return float(np.sum(np.diff(thresholds) * recall[:-1]))


def png_average_recall(phrases: Sequence[GroundedPhrase]) -> dict[str, float]:
    """AR overall and on the singular / plural / thing / stuff splits, plus acc@0.5 (IoU > 0.5)."""
    splits = {
        "overall": list(phrases),
        "singular": [p for p in phrases if not p.plural],
        "plural": [p for p in phrases if p.plural],
        "thing": [p for p in phrases if p.is_thing],
        "stuff": [p for p in phrases if not p.is_thing],
    }
    out = {name: average_recall([p.iou for p in items]) for name, items in splits.items()}
    out["acc@0.5"] = float(np.mean([p.iou > 0.5 for p in phrases])) if phrases else 0.0
    out["n_phrases"] = float(len(phrases))
    return out
