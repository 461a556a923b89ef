"""Where a model's boxes go wrong: class-agnostic box recall per stage, things and stuff apart.

    .venv/bin/python benchmarks/localization_report.py PREDS.jsonl GT.jsonl [--stages localize,caption]

PancapScore's location F1 mixes tag matching with box quality. This report ignores tags: for every ground-truth
entity it takes the best IoU of any box a stage wrote (``stages.<name>.items`` of `pancapchain infer`'s
output) and prints, per stage, boxes per image, recall at IoU 0.3 / 0.5 / 0.7 for all entities, for things and
for stuff, and for things the distance from their box centre to the nearest predicted centre in model pixels
(the padded square resized to ``--model-side``). docs/learning_quality.md uses it to show that the shapes'
boxes, not the backgrounds', hold the tiny recipe back.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pancapchain.data.boxes import box_iou  # noqa: E402
from pancapchain.data.io import load_samples  # noqa: E402


def stage_boxes(record: dict, stage: str) -> list[tuple[float, float, float, float]]:
    """Every box of one stage's parsed items in a prediction record (empty when the stage did not run)."""
    items = record.get("stages", {}).get(stage, {}).get("items", [])
    return [tuple(box) for item in items for box in item.get("boxes", [])]


def stage_report(preds: list[dict], truth: dict, stage: str, model_side: int) -> dict:
    """Recall figures of one stage over the records both files hold (see the module docstring)."""
    best = {"all": [], "thing": [], "stuff": []}
    centre_error, n_boxes, n_images = [], 0, 0
    for record in preds:
        sample = truth.get(record["id"])
        if sample is None:
            continue
        boxes = stage_boxes(record, stage)
        n_boxes += len(boxes)
        n_images += 1
        scale = model_side / max(sample.width, sample.height)
        centres = np.array([[(b[0] + b[2]) / 2 * sample.width, (b[1] + b[3]) / 2 * sample.height] for b in boxes])
        for entity in sample.entities:
            iou = max((box_iou(entity.box, b) for b in boxes), default=0.0)
            best["all"].append(iou)
            best["thing" if entity.is_thing else "stuff"].append(iou)
            if entity.is_thing and len(centres):
                x1, y1, x2, y2 = entity.box
                centre = np.array([(x1 + x2) / 2 * sample.width, (y1 + y2) / 2 * sample.height])
                centre_error.append(float(np.linalg.norm(centres - centre, axis=1).min()) * scale)
    out = {"stage": stage, "images": n_images, "boxes_per_image": round(n_boxes / max(1, n_images), 2)}
    for kind, values in best.items():
        arr = np.array(values) if values else np.zeros(0)
        for threshold in (0.3, 0.5, 0.7):
            out[f"{kind}_recall@{threshold}"] = round(float((arr >= threshold).mean()), 3) if len(arr) else None
    if centre_error:
        out["thing_centre_error_px_p10_p50_p90"] = [round(float(v), 2) for v in np.percentile(centre_error, [10, 50, 90])]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("preds", type=Path, help="pancapchain infer output (JSONL)")
    parser.add_argument("gt", type=Path, help="the panoptic samples it was run on (JSONL)")
    parser.add_argument("--stages", default="localize,label,discover,caption", help="comma-separated stage names")
    parser.add_argument("--model-side", type=int, default=64, help="side of the square the model sees (px)")
    args = parser.parse_args(argv)
    truth = {s.id: s for s in load_samples(args.gt)[0]}
    preds = [json.loads(line) for line in args.preds.read_text().splitlines() if line.strip()]
    for stage in args.stages.split(","):
        print(json.dumps(stage_report(preds, truth, stage.strip(), args.model_side)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
