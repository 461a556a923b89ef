"""SMR refinement on toy masks, candidate files, and the RLE / box / square-frame helpers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pancapchain.data.io import SkipReport
from pancapchain.data.schema import SampleError
from pancapchain.mask import (
    binarize,
    box_to_mask,
    decode_rle,
    decode_rles,
    encode_rle,
    encode_rles,
    load_candidates,
    logits_to_image,
    mask_iou,
    masks_to_square,
    save_candidates,
    smr_refine,
)
from pancapchain.mask.refine import CandidateFileError, candidate_masks


def rect(rows: slice, cols: slice, shape=(6, 6)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[rows, cols] = True
    return mask


# P = rows 1-3 x cols 1-3 (9 px)
PRED = rect(slice(1, 4), slice(1, 4))
COVER = rect(
    slice(0, 4), slice(0, 4)
)  # 16 px, |C&P| = 9: 9/16 = 0.5625 (candidate side), 9/9 = 1 (prediction side)
EDGE = rect(slice(2, 3), slice(2, 6))  # 4 px, |C&P| = 2: 2/4 = 0.5 (not > 0.5), 2/9 = 0.22
FAR = rect(slice(5, 6), slice(0, 6))  # no overlap


def test_smr_keeps_matching_candidates_with_strict_thresholds():
    out = smr_refine(PRED, [COVER, EDGE, FAR], tau=0.5)
    assert np.array_equal(out, COVER)
    # tau = 0.6: COVER still kept through |C&P|/|P| = 1 > 0.6
    assert np.array_equal(smr_refine(PRED, [COVER, EDGE, FAR], tau=0.6), COVER)
    # tau = 0.49: EDGE's 0.5 now passes, the result is the union
    assert np.array_equal(smr_refine(PRED, [COVER, EDGE, FAR], tau=0.49), COVER | EDGE)


def test_smr_fixes_under_and_over_segmentation():
    inside = rect(slice(2, 4), slice(2, 4))  # 4 px inside a 36 px over-segmented prediction: 4/4 > tau
    assert np.array_equal(smr_refine(np.ones((6, 6), dtype=bool), [inside]), inside)
    tiny_pred = rect(slice(1, 2), slice(1, 2))  # 1 px prediction inside COVER: 1/1 > tau
    assert np.array_equal(smr_refine(tiny_pred, [COVER]), COVER)


def test_smr_falls_back_to_the_prediction():
    out = smr_refine(PRED, [EDGE, FAR, np.zeros((6, 6), dtype=bool)])
    assert np.array_equal(out, PRED) and out is not PRED
    assert np.array_equal(smr_refine(PRED, []), PRED)
    empty = np.zeros((6, 6), dtype=bool)
    assert not smr_refine(empty, [COVER]).any()  # an empty prediction matches nothing


def test_smr_rejects_bad_inputs_and_binarize_thresholds():
    with pytest.raises(ValueError, match="candidate 1 has shape"):
        smr_refine(PRED, [COVER, np.ones((5, 6), dtype=bool)])
    with pytest.raises(ValueError, match="binarize"):
        smr_refine(PRED * 0.7, [COVER])
    soft = np.array([[0.2, 0.31], [0.9, 0.3]])
    assert binarize(soft).tolist() == [[False, True], [True, False]]
    assert np.array_equal(smr_refine(PRED.astype(np.uint8), [COVER]), COVER)
    assert np.array_equal(smr_refine(torch.from_numpy(PRED), [torch.from_numpy(COVER)]), COVER)


def test_candidate_file_round_trip(tmp_path):
    path = tmp_path / "cands.json"
    n = save_candidates(path, {"img-1": [COVER, encode_rle(EDGE)], "img-2": []}, source="toy")
    assert n == 2
    loaded = load_candidates(path)
    assert sorted(loaded) == ["img-1", "img-2"] and loaded["img-2"] == []
    masks = candidate_masks(loaded["img-1"], 6, 6, "img-1")
    assert np.array_equal(masks[0], COVER) and np.array_equal(masks[1], EDGE)
    assert np.array_equal(smr_refine(PRED, masks), COVER)
    with pytest.raises(CandidateFileError, match="img-1"):
        candidate_masks(loaded["img-1"], 6, 7, "img-1")


def test_candidate_file_bad_entries(tmp_path):
    path = tmp_path / "cands.json"
    good = encode_rle(COVER)
    images = {
        "ok": [good],
        "not-a-list": good,
        "bad-rle": [{"size": [6, 6]}],
        "mixed": [good, encode_rle(np.ones((3, 3)))],
    }
    path.write_text(json.dumps({"format": "pancapchain-sam-candidates/1", "images": images}))
    report = SkipReport("candidate images")
    loaded = load_candidates(path, report)
    assert list(loaded) == ["ok"] and report.kept == 1
    assert sorted(r for r, _ in report.skipped) == ["bad-rle", "mixed", "not-a-list"]
    with pytest.raises(CandidateFileError, match="image not-a-list"):
        load_candidates(path)
    path.write_text(json.dumps({"img": [good]}))
    with pytest.raises(CandidateFileError, match="expected"):
        load_candidates(path)
    path.write_text("{broken")
    with pytest.raises(CandidateFileError, match="not readable JSON"):
        load_candidates(path)


# ------------------------------------------------------------------------------------------------ RLE / boxes


def test_rle_round_trips_numpy_and_torch():
    mask = rect(slice(1, 5), slice(2, 4), shape=(5, 7))
    rle = encode_rle(mask)
    assert rle["size"] == [5, 7] and isinstance(rle["counts"], str)
    assert encode_rle(torch.from_numpy(mask)) == rle
    assert np.array_equal(decode_rle(rle), mask)
    stack = decode_rles(encode_rles(np.stack([mask, ~mask])))
    assert stack.shape == (2, 5, 7) and np.array_equal(stack[1], ~mask)
    assert decode_rles([], 5, 7).shape == (0, 5, 7)
    with pytest.raises(SampleError, match="ent-3"):
        decode_rle({"size": [5, 7]}, "ent-3")
    with pytest.raises(SampleError, match="sum to 3"):
        decode_rle({"size": [5, 7], "counts": [1, 2]})
    assert np.array_equal(decode_rle({"size": [2, 2], "counts": [1, 2, 1]}), [[False, True], [True, False]])
    with pytest.raises(SampleError, match="differs"):
        decode_rles([rle], 5, 8)


def test_box_to_mask_uses_pixel_centres():
    assert box_to_mask((0.0, 0.0, 0.5, 0.5), 4, 4).astype(int).tolist() == [
        [1, 1, 0, 0],
        [1, 1, 0, 0],
        [0, 0, 0, 0],
        [0, 0, 0, 0],
    ]
    # x in [0.25, 1] on width 4 -> centres 1.5/4.. -> cols 1-3; y in [0.5, 1] on height 2 -> row 1
    assert box_to_mask((0.25, 0.5, 1.0, 1.0), 2, 4).astype(int).tolist() == [[0, 0, 0, 0], [0, 1, 1, 1]]
    thin = box_to_mask((0.30, 0.30, 0.32, 0.32), 4, 4)  # covers no centre -> the pixel holding its centre
    assert thin.sum() == 1 and thin[1, 1]
    with pytest.raises(SampleError, match="x2 < x1"):
        box_to_mask((0.6, 0.0, 0.5, 1.0), 4, 4)


def test_square_frame_center_and_top_left():
    mask = np.zeros((2, 4), dtype=bool)
    mask[:, :2] = True  # left half of a 2x4 image
    center = masks_to_square(mask[None], 4, pad="center")  # padded to 4x4 with one row above and below
    assert center[0].int().tolist() == [[0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]]
    top_left = masks_to_square(mask[None], 2, pad="top_left")  # 4x4 frame averaged to 2x2: [[1, 0], [0, 0]]
    assert top_left[0].int().tolist() == [[1, 0], [0, 0]]
    soft = masks_to_square(mask[None], 2, pad="center", binary=False)
    assert soft[0].tolist() == [[0.5, 0.0], [0.5, 0.0]]
    logits = torch.where(center.bool(), 5.0, -5.0)
    back = logits_to_image(logits, 2, 4, pad="center")
    assert back.shape == (1, 2, 4) and torch.equal(back[0] > 0, torch.from_numpy(mask))
    assert masks_to_square(np.zeros((0, 3, 5)), 8).shape == (0, 8, 8)
    with pytest.raises(ValueError, match="pad"):
        masks_to_square(mask[None], 4, pad="bottom")


def test_mask_iou():
    assert mask_iou(COVER, PRED) == pytest.approx(9 / 16)
    assert mask_iou(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0
