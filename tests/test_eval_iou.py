"""IoU as the official matcher computes it (torchvision box_iou, float32), including boxes whose IoU is
exactly one half, where float32 and float64 land on different sides of the 0.5 threshold."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pancapchain.data.boxes import box_iou, box_iou_matrix_f32
from pancapchain.eval.matching import TaggedEntity, match_entities

# (GT box, predicted box, location ok for the official float32 code); float64 decides the other way
HALF_CASES = [
    ((0.3, 0.4, 0.9, 1.0), (0.3, 0.4, 0.6, 1.0), True),  # f64 0.49999999999999994, f32 0.50000006
    ((0.4, 0.1, 0.8, 1.0), (0.4, 0.1, 0.6, 1.0), True),
    ((0.0, 0.1, 0.6, 1.0), (0.0, 0.1, 0.3, 1.0), False),  # f64 0.5, f32 0.49999994
    ((0.4, 0.2, 0.6, 1.0), (0.4, 0.2, 0.5, 1.0), False),
]


def _torch_box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The torchvision formula on float32 tensors (torchvision itself is not a dependency)."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    wh = (torch.min(a[:, None, 2:], b[:, 2:]) - torch.max(a[:, None, :2], b[:, :2])).clamp(min=0)
    inter = wh[:, :, 0] * wh[:, :, 1]
    return inter / (area_a[:, None] + area_b - inter)


@pytest.mark.parametrize("gt,pred,official", HALF_CASES)
def test_half_overlap_follows_float32(gt, pred, official):
    f32 = box_iou_matrix_f32(np.array([gt]), np.array([pred]))[0, 0]
    assert (f32 >= 0.5) == official
    assert (box_iou(gt, pred) >= 0.5) != official  # float64 would decide the other way
    torch_iou = _torch_box_iou(torch.tensor([gt], dtype=torch.float32), torch.tensor([pred], dtype=torch.float32))
    assert torch_iou.item() == float(f32)
    match = match_entities([TaggedEntity("dog", gt)], [TaggedEntity("dog", pred)], None)
    assert match.pairs == [(0, 0)] and (match.loc.f1 == 1.0) == official


def test_matrix_equals_torch_float32_bit_for_bit():
    rng = np.random.default_rng(0)
    # 3-decimal clipped boxes, as captions write them, many of them sharing edges
    raw = np.round(rng.choice([0.0, 0.1, 0.25, 0.3, 0.5, 0.6, 1.0, 0.333], size=(200, 4)), 3)
    boxes = np.concatenate([np.minimum(raw[:, :2], raw[:, 2:]), np.maximum(raw[:, :2], raw[:, 2:])], axis=1)
    ours = box_iou_matrix_f32(boxes, boxes)
    theirs = _torch_box_iou(torch.tensor(boxes, dtype=torch.float32), torch.tensor(boxes, dtype=torch.float32))
    valid = ~torch.isnan(theirs).numpy()  # empty unions: torch gives nan, we give 0 (never >= 0.5 either way)
    assert np.array_equal(ours[valid], theirs.numpy()[valid]) and (ours[~valid] == 0).all()
    assert ours.dtype == np.float32 and ours.shape == (200, 200)
