"""SAM tools: box prompts -> masks, automatic candidates, `prepare sam-masks/sam-candidates`, `ground --sam`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_overrides
from PIL import Image
from test_mask_head import TINY_SAM

from pancapchain.cli import main
from pancapchain.data.io import load_samples, save_samples
from pancapchain.data.schema import Entity, PanopticSample
from pancapchain.mask.refine import candidate_masks, load_candidates, smr_refine
from pancapchain.mask.rle import decode_rle, encode_rle, mask_iou
from pancapchain.mask.sam_tools import (
    SamRunner,
    automatic_candidates,
    boxes_to_masks,
    pairwise_iou,
    point_grid,
    select_masks,
)

H, W = 24, 40  # non-square on purpose


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def tiny_sam(tmp_path_factory) -> str:
    """A random tiny SAM saved *without* an image processor (the fallback processor is used)."""
    from transformers import SamConfig, SamModel

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_sam")
    SamModel(SamConfig(**TINY_SAM)).save_pretrained(str(path))
    return str(path)


@pytest.fixture(scope="module")
def runner(tiny_sam) -> SamRunner:
    return SamRunner(tiny_sam)


def noise_image(seed: int = 0, height: int = H, width: int = W) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_boxes_to_masks_gives_one_image_sized_bool_mask_per_box(tiny_sam, runner):
    boxes = [(0.0, 0.0, 1.0, 1.0), (0.1, 0.2, 0.5, 0.9), (0.6, 0.0, 0.9, 0.4)]
    masks = boxes_to_masks(tiny_sam, noise_image(), boxes)  # by path
    assert len(masks) == 3
    assert all(m.shape == (H, W) and m.dtype == bool for m in masks)
    # the runner (model loaded once) gives the same masks; different box prompts give different masks
    again = boxes_to_masks(runner, noise_image(), boxes)
    assert all(np.array_equal(a, b) for a, b in zip(masks, again))
    assert not np.array_equal(masks[1], masks[2])
    assert boxes_to_masks(runner, noise_image(), []) == []


def test_saved_image_processor_is_used(tiny_sam, tmp_path):
    import shutil

    from transformers import SamImageProcessor

    folder = tmp_path / "sam"
    shutil.copytree(tiny_sam, folder)
    SamImageProcessor(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64}).save_pretrained(str(folder))
    saved = SamRunner(folder)
    assert (folder / "preprocessor_config.json").is_file()
    assert saved.processor.size["longest_edge"] == 64
    boxes = [(0.1, 0.2, 0.5, 0.9)]
    assert np.array_equal(boxes_to_masks(saved, noise_image(), boxes)[0],
                          boxes_to_masks(str(tiny_sam), noise_image(), boxes)[0])


def test_point_grid_is_cell_centres_in_pixels():
    grid = point_grid(2, 24, 40)
    assert torch.allclose(grid, torch.tensor([[10.0, 6.0], [30.0, 6.0], [10.0, 18.0], [30.0, 18.0]]))


def test_select_masks_filters_scores_duplicates_empties_and_caps():
    base = torch.zeros(5, 10, 10, dtype=torch.bool)
    base[0, :5] = True  # 50 px, score 0.9
    base[1, :5] = True
    base[1, 5, :4] = True  # 54 px, IoU 50/54 = 0.926 with mask 0 -> duplicate of it
    base[2, 5:] = True  # disjoint from 0, score 0.7
    base[3, :, :3] = True  # score 0.2 < thresh
    scores = torch.tensor([0.9, 0.95, 0.7, 0.2, 0.99])  # mask 4 is empty
    assert select_masks(base, scores, 0.5, max_masks=10) == [1, 2]
    assert select_masks(base, scores, 0.5, max_masks=1) == [1]
    assert select_masks(base, scores, 0.0, max_masks=10) == [1, 2, 3]  # mask 3 overlaps 1 and 2 only partly
    iou = pairwise_iou(base[:2])
    assert iou[0, 1].item() == pytest.approx(50 / 54)


def test_automatic_candidates_are_distinct_image_sized_and_capped(runner):
    masks = automatic_candidates(runner, noise_image(1), points_per_side=4, pred_iou_thresh=-1e9, max_masks=5)
    assert 1 <= len(masks) <= 5
    assert all(m.shape == (H, W) and m.dtype == bool and m.any() for m in masks)
    for i in range(len(masks)):
        for j in range(i + 1, len(masks)):
            assert mask_iou(masks[i], masks[j]) < 0.9
    assert automatic_candidates(runner, noise_image(1), points_per_side=2, pred_iou_thresh=1e9) == []


def write_dataset(root) -> tuple:
    """Three samples: one entity without a mask + one with; all masks present; an unreadable image."""
    (root / "img").mkdir()
    noise_image(2).save(root / "img" / "a.png")
    noise_image(3).save(root / "img" / "b.png")
    (root / "img" / "bad.png").write_bytes(b"not a png")
    existing = np.zeros((H, W), dtype=bool)
    existing[2:9, 3:17] = True
    rle = encode_rle(existing)
    samples = [
        PanopticSample("a", "img/a.png", W, H, (Entity(0, "sky", (0.0, 0.0, 1.0, 0.5)),
                                               Entity(1, "dog", (0.1, 0.1, 0.4, 0.4), mask=rle))),
        PanopticSample("b", "img/b.png", W, H, (Entity(0, "cat", (0.5, 0.5, 1.0, 1.0), mask=rle),)),
        PanopticSample("bad", "img/bad.png", W, H, (Entity(0, "car", (0.2, 0.2, 0.6, 0.8)),)),
    ]
    save_samples(root / "data.jsonl", samples)
    return samples, rle


def test_prepare_sam_masks_fills_missing_keeps_existing_and_reports_bad_image(tiny_sam, tmp_path, capsys):
    samples, rle = write_dataset(tmp_path)
    out = tmp_path / "out" / "masked.jsonl"
    assert main(["prepare", "sam-masks", "--data", str(tmp_path / "data.jsonl"), "--sam", tiny_sam,
                 "--out", str(out)]) == 0
    got, _ = load_samples(out)
    assert [s.id for s in got] == ["a", "b", "bad"]  # nothing lost; the bad one is unchanged
    a, b, bad = got
    expected = boxes_to_masks(tiny_sam, noise_image(2), [(0.0, 0.0, 1.0, 0.5)])[0]
    assert np.array_equal(decode_rle(a.entities[0].mask), expected)
    assert a.entities[1].mask == rle and b.entities[0].mask == rle  # existing masks kept
    assert bad.entities[0].mask is None
    report = json.loads((tmp_path / "out" / "masked.jsonl.report.json").read_text())
    assert (report["masks_filled"], report["masks_kept"], report["samples_changed"]) == (1, 2, 1)
    assert [s["record"] for s in report["skipped"]] == ["bad"]
    assert report["config"]["command"] == "prepare sam-masks"
    printed = capsys.readouterr().out
    assert "skipped 1" in printed and "masks filled 1, existing kept 2" in printed

    over = tmp_path / "over.jsonl"
    assert main(["prepare", "sam-masks", "--data", str(tmp_path / "data.jsonl"), "--sam", tiny_sam,
                 "--out", str(over), "--overwrite"]) == 0
    b_over = load_samples(over)[0][1]
    want = boxes_to_masks(tiny_sam, noise_image(3), [(0.5, 0.5, 1.0, 1.0)])[0]
    assert np.array_equal(decode_rle(b_over.entities[0].mask), want)


def test_prepare_sam_candidates_writes_the_candidate_file(tiny_sam, tmp_path):
    write_dataset(tmp_path)
    out = tmp_path / "cands.json"
    assert main(["prepare", "sam-candidates", "--data", str(tmp_path / "data.jsonl"), "--sam", tiny_sam,
                 "--out", str(out), "--points-per-side", "3", "--pred-iou-thresh=-1e9",
                 "--max-masks", "4"]) == 0
    cands = load_candidates(out)
    assert sorted(cands) == ["a", "b"]
    want = automatic_candidates(tiny_sam, noise_image(2), points_per_side=3, pred_iou_thresh=-1e9, max_masks=4)
    got = candidate_masks(cands["a"], H, W, "a")
    assert len(got) == len(want) and all(np.array_equal(x, y) for x, y in zip(got, want))
    report = json.loads((tmp_path / "cands.json.report.json").read_text())
    assert [s["record"] for s in report["skipped"]] == ["bad"]


def test_ground_sam_refines_masks_with_automatic_candidates(tiny_sam, tmp_path):
    from pancapchain.config import load_recipe
    from pancapchain.data.synth import write_dataset as write_synth
    from pancapchain.train.run import run_training

    synth = tmp_path / "synth"
    write_synth(synth, 4, 1, seed=3, size=32, progress=False)
    model = tmp_path / "run"
    mask = {"mask.enabled": "true", "mask.dim": "16", "mask.upsample": "1", "train.max_steps": "2"}
    run_training(load_recipe(None, tiny_overrides(synth / "train.jsonl", model, **mask)))
    sample = json.loads((synth / "val.jsonl").read_text().splitlines()[0])
    image = synth / sample["image"]
    caption = "A red circle <box>[[100, 200, 400, 600]]</box> and a sky <box>[[0, 100, 1000, 400]]</box>."
    plain, refined = tmp_path / "plain.json", tmp_path / "refined.json"
    base = ["ground", "--model", str(model), "--image", str(image), "--caption", caption]
    assert main([*base, "--out", str(plain)]) == 0
    assert main([*base, "--out", str(refined), "--sam", tiny_sam]) == 0
    with pytest.raises(SystemExit):
        main([*base, "--sam", tiny_sam, "--candidates", str(tmp_path / "c.json")])
    with Image.open(image) as img:
        cands = automatic_candidates(tiny_sam, img)
    assert len(cands) >= 1  # the default settings keep some masks of the tiny SAM, so SMR really runs
    before = [decode_rle(m["rle"]) for m in json.loads(plain.read_text())["masks"]]
    after = [decode_rle(m["rle"]) for m in json.loads(refined.read_text())["masks"]]
    assert len(after) == len(before) == 2
    for p, r in zip(before, after):
        assert np.array_equal(r, smr_refine(p, cands, 0.5))
