"""Pictures: a prediction's mask and box are drawn; a bad row is reported, not fatal."""

import json

import numpy as np
from PIL import Image

from pancapchain.infer.visualize import PALETTE, visualize
from pancapchain.mask.rle import encode_rle


def test_masks_boxes_caption_and_index(tmp_path):
    Image.new("RGB", (40, 20), (0, 0, 0)).save(tmp_path / "a.png")
    mask = np.zeros((20, 40), dtype=bool)
    mask[:, :20] = True  # left half
    pred = {"id": "a", "image": "a.png", "caption": "a thing [[0.000, 0.000, 0.500, 1.000]]",
            "entities": [{"tag": "thing", "box": [0.0, 0.0, 0.5, 1.0]}],
            "masks": [{"box": [0.0, 0.0, 0.5, 1.0], "rle": encode_rle(mask)}]}
    preds = tmp_path / "preds.jsonl"
    preds.write_text(json.dumps(pred) + "\n" + json.dumps({"id": "b", "image": "missing.png"}) + "\n")
    report = visualize(preds, tmp_path, tmp_path / "out")
    assert report.kept == 1 and [r for r, _ in report.skipped] == ["b"]
    picture = np.asarray(Image.open(tmp_path / "out" / "a.png"))
    h = 384 // 2 * 2  # upscaled so the short side is >= 384 (20 px -> 384 px rows)
    left, right = picture[h // 2, 100], picture[h // 2, 700]
    assert tuple(right) == (0, 0, 0)  # outside the mask: the black image
    assert np.allclose(left, 0.45 * np.array(PALETTE[0]), atol=2)  # inside: tinted with entity 0's colour
    assert picture.shape[0] > 384  # the caption sits below the image
    assert "a.png" in (tmp_path / "out" / "index.html").read_text()
