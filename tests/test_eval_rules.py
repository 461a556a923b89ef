"""Evaluation-level rules: prediction keying (id, image_path, id equal to the GT's image path) and box
reading (a normalized value slightly above 1 keeps its location; --box-rules official vs lenient)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pancapchain.eval.embed import HashingEmbedder
from pancapchain.eval.runner import EvalOptions, evaluate

GT = [
    {"image_path": "sam/sa_000045/sa_507752.jpg",
     "gt_response": "A dog [[0.500, 0.500, 1.000, 1.000]] sits next to a tree [[0.000, 0.000, 0.400, 0.900]]."},
    {"image_path": "sam/sa_000046/sa_1.jpg", "gt_response": "A cat [[0.100, 0.100, 0.300, 0.300]] sleeps."},
    {"image_path": "sam/sa_000046/sa_2.jpg", "gt_response": "A car [[0.200, 0.200, 0.600, 0.600]] waits."},
]


def _run(tmp_path: Path, preds: list[dict], **options) -> tuple[dict, dict]:
    gt_path, pred_path = tmp_path / "gt.json", tmp_path / "pred.jsonl"
    gt_path.write_text(json.dumps(GT))
    pred_path.write_text("".join(json.dumps(p) + "\n" for p in preds))
    opts = EvalOptions(caption_metrics=False, **options)
    result = evaluate(pred_path, gt_path, opts, embedder=HashingEmbedder())
    return {r.id: r for r in result.images}, result.metrics


def test_predictions_keyed_by_id_image_path_or_id_equal_to_the_image_path(tmp_path):
    preds = [
        {"id": "sam/sa_000045/sa_507752.jpg", "caption": GT[0]["gt_response"]},  # id = GT image path
        {"image_path": "sam/sa_000046/sa_1.jpg", "model_response": GT[1]["gt_response"]},  # official form
        {"id": "sam_sa_000046_sa_2", "caption": GT[2]["gt_response"]},  # derived id
        {"id": "sam_sa_000046_sa_2", "caption": "dup"},
        {"id": "sam/sa_999/none.jpg", "caption": "unknown"},
    ]
    images, metrics = _run(tmp_path, preds)
    assert metrics["image_status"] == {"ok": 3}
    assert all(r.scores["tag"].f1 == 1.0 and r.scores["loc"].f1 == 1.0 for r in images.values())
    reasons = sorted(s["reason"].split(":")[0] for s in metrics["skipped"]["predictions"]["skipped"])
    assert reasons == ["duplicate", "unknown id"]


@pytest.mark.parametrize("rules", ["official", "lenient"])
def test_normalized_value_slightly_above_one_keeps_the_location(tmp_path, rules):
    caption = "A dog [[0.500, 0.500, 1.01, 1.000]] sits next to a tree [[0.000, 0.000, 0.400, 0.900]]."
    images, metrics = _run(tmp_path, [{"id": "sam_sa_000045_sa_507752", "caption": caption}], box_rules=rules)
    first = images["sam_sa_000045_sa_507752"]
    assert first.scores["loc"].f1 == 1.0  # clipped to 1.0, not divided by 1000
    assert metrics["options"]["box_rules"] == rules


def test_box_rules_decide_multi_box_and_bare_integer_groups(tmp_path):
    caption = "A dog <box>[[500, 500, 1000, 1000], [0, 0, 400, 900]]</box> and a tree [[0, 0, 400, 900]]."
    pred = [{"id": "sam_sa_000045_sa_507752", "caption": caption}]
    official, _ = _run(tmp_path, pred, box_rules="official")  # read as written: clipped to degenerate boxes
    lenient, _ = _run(tmp_path, pred, box_rules="lenient")  # converted from the 0-1000 grid (square assumed)
    assert official["sam_sa_000045_sa_507752"].scores["loc"].f1 == 0.0
    # lenient: two "dog" boxes (the tree's box repeats the second and keeps the tag "dog"): dog matches,
    # tree does not -> location P = R = 1/2
    assert lenient["sam_sa_000045_sa_507752"].scores["loc"].f1 == pytest.approx(0.5)
