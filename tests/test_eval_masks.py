"""Mask metrics on toy masks with hand-computed values: greedy mIoU, COCO mask AP, PNG Average Recall."""

from __future__ import annotations

import numpy as np
import pytest

from pancapchain.data.schema import Entity, PanopticSample
from pancapchain.eval.grounding import evaluate_masks
from pancapchain.eval.masks import (
    GroundedPhrase,
    MaskImage,
    average_recall,
    encode_rle,
    greedy_miou,
    mask_ap,
    mask_iou_matrix,
    mean_miou,
    png_average_recall,
    soft_iou,
    to_binary_mask,
)
from pancapchain.eval.matching import TaggedEntity


def grid(*cells: tuple[int, int], shape=(4, 4)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    for r, c in cells:
        mask[r, c] = True
    return mask


G0 = grid((0, 0), (0, 1), (1, 0), (1, 1))  # top-left 2x2
G1 = grid((3, 0), (3, 1), (3, 2), (3, 3))  # bottom row
P0 = grid((0, 0), (0, 1), (1, 0), (1, 1), (0, 2))  # G0 + 1 pixel: IoU 4/5
P1 = grid((3, 0), (3, 1))  # half of G1: IoU 2/4
P2 = grid((3, 3))  # inside G1: IoU 1/4, but G1 is taken by P1 first


def test_iou_matrix_hand_values():
    iou = mask_iou_matrix([P0, P1, P2], [G0, G1])
    np.testing.assert_allclose(iou, [[0.8, 0.0], [0.0, 0.5], [0.0, 0.25]])


def test_greedy_miou_hand_value():
    assert greedy_miou([P0, P1, P2], [G0, G1]) == pytest.approx((0.8 + 0.5) / 2)  # P2 stays unpaired
    assert greedy_miou([], [G0]) == 0.0
    assert mean_miou([([P0, P1, P2], [G0, G1]), ([], [G0])]) == pytest.approx(0.325)


def test_greedy_pairs_are_one_to_one():
    # one prediction covering both GTs pairs with one of them only
    both = G0 | G1
    assert greedy_miou([both], [G0, G1]) == pytest.approx(4 / 8)


def test_rle_round_trip_and_formats():
    rle = encode_rle(P0)
    assert isinstance(rle["counts"], str) and rle["size"] == [4, 4]
    np.testing.assert_array_equal(to_binary_mask(rle), P0)
    uncompressed = {"size": [4, 4], "counts": [2, 2, 12]}  # column-major runs: 2 off, 2 on, 12 off
    np.testing.assert_array_equal(to_binary_mask(uncompressed), grid((2, 0), (3, 0)))
    with pytest.raises(ValueError, match="2-D"):
        to_binary_mask(np.zeros((2, 2, 2)))


def test_mask_ap_hand_values():
    perfect = mask_ap([MaskImage([G0, G1], [G0, G1])])
    assert perfect["AP"] == pytest.approx(1.0)
    # one of two GTs found exactly: precision 1 up to recall 0.5 -> 51 of COCO's 101 recall points
    half = mask_ap([MaskImage([G0, G1], [G0])])
    assert half["AP"] == pytest.approx(51 / 101)
    assert half["AP50"] == pytest.approx(51 / 101)
    assert mask_ap([MaskImage([G0], [])])["AP"] == 0.0


def test_soft_iou_and_average_recall_hand_values():
    assert soft_iou(np.array([0.5, 1.0]), np.array([1.0, 0.0])) == pytest.approx(0.5 / 2.0)
    assert soft_iou(np.zeros(3), np.zeros(3)) == 0.0
    # recall(t) = 1 at t=0, 2/3 up to 0.5, 1/3 up to 1 -> area 2/3*0.5 + 1/3*0.5 = 0.5
    assert average_recall([1.0, 0.5, 0.0]) == pytest.approx(0.5, abs=1e-4)
    assert average_recall([0.3]) == pytest.approx(0.3, abs=1e-4)
    assert average_recall([]) == 0.0


def test_png_average_recall_splits():
    phrases = [
        GroundedPhrase(1.0, plural=False, is_thing=True),
        GroundedPhrase(0.5, plural=True, is_thing=True),
        GroundedPhrase(0.0, plural=False, is_thing=False),
    ]
    ar = png_average_recall(phrases)
    assert ar["overall"] == pytest.approx(0.5, abs=1e-4)
    assert ar["singular"] == pytest.approx(0.5, abs=1e-4)
    assert ar["plural"] == pytest.approx(0.5, abs=1e-4)
    assert ar["thing"] == pytest.approx(0.75, abs=1e-4)
    assert ar["stuff"] == pytest.approx(0.0, abs=1e-4)
    assert ar["acc@0.5"] == pytest.approx(1 / 3)  # IoU > 0.5 strictly
    assert png_average_recall([])["overall"] == 0.0


def _square(r0: int, c0: int, size: int = 4, shape=(8, 8)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[r0 : r0 + size, c0 : c0 + size] = True
    return mask


def test_evaluate_masks_links_by_entity_and_by_box():
    red, blue = _square(0, 0), _square(4, 4)
    sample = PanopticSample(
        "m1", "m1.png", 8, 8,
        (Entity(0, "red square", (0.0, 0.0, 0.5, 0.5), encode_rle(red)),
         Entity(1, "blue square", (0.5, 0.5, 1.0, 1.0), encode_rle(blue), is_thing=False)),
        caption="A red square [[0.000, 0.000, 0.500, 0.500]] and a blue square [[0.500, 0.500, 1.000, 1.000]].",
    )
    pred_entities = [TaggedEntity("red square", (0.0, 0.0, 0.5, 0.5)), TaggedEntity("blue square", (0.5, 0.5, 1.0, 1.0))]
    half_blue = blue.copy()
    half_blue[6:, :] = False  # 8 of 16 pixels
    raw = [{"entity": 0, "rle": encode_rle(red)}, {"box": [0.5, 0.5, 1.0, 1.0], "rle": encode_rle(half_blue)},
           {"entity": 0, "rle": {"size": [8, 8], "counts": "garbage!"}}, {"entity": 1, "rle": encode_rle(np.ones((4, 4)))}]
    res = evaluate_masks(sample, pred_entities, raw, embedder=None)
    assert res.miou == pytest.approx((1.0 + 0.5) / 2)
    assert [p.iou for p in res.phrases] == pytest.approx([1.0, 0.5])
    assert [p.is_thing for p in res.phrases] == [True, False]
    assert len(res.warnings) == 2  # undecodable RLE, wrong size
    ar = png_average_recall(res.phrases)
    assert ar["overall"] == pytest.approx(0.75, abs=1e-4) and ar["stuff"] == pytest.approx(0.5, abs=1e-4)


def test_runner_reports_mask_metrics(tmp_path):
    import json

    from pancapchain.eval.runner import EvalOptions, evaluate

    red, blue = _square(0, 0), _square(4, 4)
    caption = "A red square [[0.000, 0.000, 0.500, 0.500]] and a blue square [[0.500, 0.500, 1.000, 1.000]]."
    gt = {"id": "m1", "image": "m1.png", "width": 8, "height": 8, "caption": caption,
          "entities": [{"id": 0, "tag": "red square", "box": [0, 0, 0.5, 0.5], "mask": encode_rle(red)},
                       {"id": 1, "tag": "blue square", "box": [0.5, 0.5, 1, 1], "mask": encode_rle(blue)}]}
    pred = {"id": "m1", "caption": caption, "masks": [{"entity": 0, "rle": encode_rle(red)},
                                                      {"entity": 1, "rle": encode_rle(red)}]}  # 2nd is wrong
    (tmp_path / "gt.jsonl").write_text(json.dumps(gt) + "\n")
    (tmp_path / "pred.jsonl").write_text(json.dumps(pred) + "\n")
    masks = evaluate(tmp_path / "pred.jsonl", tmp_path / "gt.jsonl",
                     EvalOptions(embed_model="hashing", caption_metrics=False)).metrics["mask_metrics"]
    assert masks["images"] == 1
    assert masks["mIoU"] == pytest.approx(1.0)  # greedy pairs: red-red; the duplicate red has no GT left
    assert masks["PNG_AR"]["overall"] == pytest.approx(0.5, abs=1e-4)  # red unit IoU 1, blue unit IoU 0
    assert masks["mask_AP"]["AP"] == pytest.approx(51 / 101, abs=0.02)  # one of two GT found


def test_bad_mask_records_are_skipped_with_a_warning_naming_the_problem():
    red = _square(0, 0)
    sample = PanopticSample("m1", "m1.png", 8, 8, (Entity(0, "red square", (0.0, 0.0, 0.5, 0.5), encode_rle(red)),),
                            caption="A red square [[0.000, 0.000, 0.500, 0.500]].")
    pred_entities = [TaggedEntity("red square", (0.0, 0.0, 0.5, 0.5))]
    good = encode_rle(red)
    raw = [{"box": [float("nan"), 0, 0.5, 0.5], "rle": good}, {"box": ["abc", 0, 0.5, 0.5], "rle": good},
           {"box": [0.0, 0.0, 1.7, 0.5], "rle": good}, {"box": [0.0, 0.0, 0.5, 0.5]}, "not a record",
           {"entity": 3, "rle": good}, {"entity": 0, "rle": [1, 2]}, {"box": [0.0, 0.0, 0.5, 0.5], "rle": good}]
    res = evaluate_masks(sample, pred_entities, raw, embedder=None)
    assert res.warnings == [
        "mask 0 skipped: box [nan, 0, 0.5, 0.5]: value nan is not a number in [0, 1] (normalized coordinates)",
        "mask 1 skipped: box ['abc', 0, 0.5, 0.5] must be 4 numbers [x1, y1, x2, y2]",
        "mask 2 skipped: box [0.0, 0.0, 1.7, 0.5]: value 1.7 is not a number in [0, 1] (normalized coordinates)",
        "mask 3 skipped: no 'rle' field",
        'mask 4 skipped: expected an object {"rle", "box" or "entity"}, got str',
        "mask 5 skipped: entity 3 is not the index of one of the 1 entities of the predicted caption",
        "mask 6 skipped: 'rle' must be a COCO RLE object with 'size' and 'counts'",
    ]
    assert res.miou == pytest.approx(1.0)  # the one good record is scored and linked by its box
    assert [p.iou for p in res.phrases] == pytest.approx([1.0])
