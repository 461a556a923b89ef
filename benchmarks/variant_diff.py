"""Where one variant's tag and location points go against another's, from two `pancapchain eval` outputs.

    .venv/bin/python benchmarks/variant_diff.py runs/chain/eval runs/direct/eval [--names chain,direct]

Both folders must score the same images (``per_image.json``). Three reports:

1. **By scene size.** Images grouped by their number of ground-truth entities; per group the mean per-image tag
   and loc F1 of each variant (the official scores are these means over all images) and A's lead in tag + loc.
2. **Entities B names and A does not** (B matched the ground-truth entity, A did not), by what A has there: no
   box of A's at IoU >= ``NEAR_IOU``; a box whose entity A matched to another ground-truth entity; a box whose
   entity matched nothing.
3. **A with B's extra entities** (an upper bound for "A adds what it missed"): every entity of B's whose box no
   box of A's overlaps at IoU >= ``NEAR_IOU`` is added to A, a hit when B matched it to an entity A missed.
   Counted from the per-image match lists as the scorer counts them (one hit per matched entity; loc over the
   entities that have a box; F1 per image, then the mean); A's own figures are counted the same way and printed
   beside it (on the runs of docs/learning_quality.md they equal the scorer's tag and loc F1 to 0.01).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pancapchain.data.boxes import box_iou  # noqa: E402
from pancapchain.eval.scores import PRF  # noqa: E402

NEAR_IOU = 0.3  # the vote's matching IoU of pancapchain.infer.views: a box this close is "on" the entity
SIZE_GROUPS = ((0, 0), (1, 3), (4, 5), (6, 7), (8, None))  # GT entities per image; None: no upper bound


def load_images(eval_dir: str) -> dict[str, dict]:
    """``per_image.json`` of one eval folder, by image id (images that failed to score are left out)."""
    rows = json.loads((Path(eval_dir) / "per_image.json").read_text())
    return {row["id"]: row for row in rows if row.get("status") == "ok"}


def by_scene_size(a: dict[str, dict], b: dict[str, dict]) -> list[dict]:
    """One row per size group: images, mean tag / loc F1 of A and B, A's lead in tag + loc."""
    groups: dict[tuple[int, int], list[str]] = defaultdict(list)
    for image_id in a:
        n = a[image_id]["counts"]["gt_entities"]
        groups[next(g for g in SIZE_GROUPS if g[0] <= n and (g[1] is None or n <= g[1]))].append(image_id)
    rows = []
    for group in SIZE_GROUPS:
        ids = groups.get(group, [])
        if not ids:
            continue
        low, high = group
        row = {"entities": f">={low}" if high is None else str(low) if low == high else f"{low}-{high}",
               "images": len(ids)}
        for name, side in (("a", a), ("b", b)):
            for dim in ("tag", "loc"):
                row[f"{name}_{dim}"] = sum(side[i]["scores"][dim]["f1"] for i in ids) / len(ids)
        row["lead"] = row["a_tag"] + row["a_loc"] - row["b_tag"] - row["b_loc"]
        rows.append(row)
    return rows


def misses(a: dict[str, dict], b: dict[str, dict]) -> Counter:
    """Ground-truth entities B matched and A did not, by what A has at them (module docstring, report 2)."""
    why: Counter = Counter()
    for image_id, row_a in a.items():
        gt_a, gt_b = row_a["entities"]["gt"], b[image_id]["entities"]["gt"]
        preds_a = row_a["entities"]["pred"]
        for truth_a, truth_b in zip(gt_a, gt_b, strict=True):
            if truth_b.get("match") is None or truth_a.get("match") is not None:
                continue
            nearest = max(preds_a, key=lambda p: _iou(p["box"], truth_a["box"]), default=None)
            if nearest is None or _iou(nearest["box"], truth_a["box"]) < NEAR_IOU:
                why["no box of A's there"] += 1
            elif nearest.get("match") is not None:
                why["A's box there names another entity"] += 1
            else:
                why["A's box there matches nothing"] += 1
    return why


def _iou(a, b) -> float:
    """IoU of two boxes; 0 when either entity has none (judge-pipeline entities may lack a location)."""
    return 0.0 if a is None or b is None else box_iou(a, b)


def _f1(hits: float, n_pred: int, n_gt: int) -> float:
    """F1 x 100 as the scorer counts an image (pancapchain.eval.matching): no truth is perfect with no
    prediction and 0 with any."""
    if n_gt == 0:
        return 100.0 if n_pred == 0 else 0.0
    return 100 * PRF.from_counts(hits, n_pred, hits, n_gt).f1


def with_extras(a: dict[str, dict], b: dict[str, dict]) -> dict[str, float]:
    """Mean per-image tag / loc F1 of A as counted here, and of A with B's extra entities (report 3)."""
    sums: Counter = Counter({"added": 0, "added_new": 0})
    for image_id, row_a in a.items():
        ents_a, ents_b = row_a["entities"], b[image_id]["entities"]
        n_gt, n_gt_boxes = len(ents_a["gt"]), sum(t["box"] is not None for t in ents_a["gt"])
        tag_hits = sum(p.get("match") is not None for p in ents_a["pred"])
        loc_hits = sum(bool(p.get("loc_ok")) for p in ents_a["pred"])
        n_pred, n_pred_boxes = len(ents_a["pred"]), sum(p["box"] is not None for p in ents_a["pred"])
        sums["tag"] += _f1(tag_hits, n_pred, n_gt)
        sums["loc"] += _f1(loc_hits, n_pred_boxes, n_gt_boxes)
        found_by_a = {i for i, truth in enumerate(ents_a["gt"]) if truth.get("match") is not None}
        for pred in ents_b["pred"]:
            if pred["box"] is None or any(_iou(pred["box"], own["box"]) >= NEAR_IOU for own in ents_a["pred"]):
                continue  # an entity without a box cannot be placed against A's boxes: not added
            n_pred += 1
            n_pred_boxes += 1
            sums["added"] += 1
            if pred.get("match") is not None and pred["match"] not in found_by_a:
                tag_hits += 1
                loc_hits += bool(pred.get("loc_ok"))
                sums["added_new"] += 1
        sums["tag_with"] += _f1(tag_hits, n_pred, n_gt)
        sums["loc_with"] += _f1(loc_hits, n_pred_boxes, n_gt_boxes)
    n = max(len(a), 1)
    return {key: value / n if key.startswith(("tag", "loc")) else value for key, value in sums.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("eval_a", help="eval folder of variant A (per_image.json)")
    parser.add_argument("eval_b", help="eval folder of variant B, same images")
    parser.add_argument("--names", default="A,B", help="two display names, comma-separated")
    args = parser.parse_args(argv)
    name_a, name_b = (args.names.split(",") + ["B"])[:2]
    a, b = load_images(args.eval_a), load_images(args.eval_b)
    if set(a) != set(b):
        print(f"error: the two folders score different images ({len(set(a) ^ set(b))} differ)", file=sys.stderr)
        return 2
    print(f"{len(a)} images; {name_a} = A, {name_b} = B\n")
    print("| GT entities | images | A tag | A loc | B tag | B loc | A - B, tag + loc |\n|---|---:|---:|---:|---:|---:|---:|")
    for row in by_scene_size(a, b):
        print(f"| {row['entities']} | {row['images']} | {row['a_tag']:.2f} | {row['a_loc']:.2f} | {row['b_tag']:.2f} "
              f"| {row['b_loc']:.2f} | {row['lead']:+.2f} |")
    why = misses(a, b)
    print(f"\nentities B names and A does not: {sum(why.values())}")
    for reason, count in why.most_common():
        print(f"  {reason}: {count}")
    extra = with_extras(a, b)
    print(f"\nA with B's {int(extra['added'])} extra entities ({int(extra['added_new'])} of them new matches), "
          f"counted from the match lists: tag {extra['tag']:.2f} -> {extra['tag_with']:.2f}, "
          f"loc {extra['loc']:.2f} -> {extra['loc_with']:.2f}, tag + loc "
          f"{extra['tag_with'] + extra['loc_with'] - extra['tag'] - extra['loc']:+.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
