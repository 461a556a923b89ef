"""benchmarks/variant_diff.py: where one variant's tag and loc points go against another's."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKY, RING, STAR, CROSS = (0.0, 0.0, 1.0, 0.5), (0.1, 0.6, 0.3, 0.8), (0.2, 0.6, 0.4, 0.8), (0.7, 0.7, 0.9, 0.9)


def _module():
    spec = importlib.util.spec_from_file_location("variant_diff", ROOT / "benchmarks" / "variant_diff.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _image(image_id, gt, pred, scores):
    """A per_image.json row: ``gt`` / ``pred`` as (tag, box, match index or None, loc_ok)."""
    rows = {side: [{"tag": t, "box": list(b), "match": m, "loc_ok": ok} for t, b, m, ok in items]
            for side, items in (("gt", gt), ("pred", pred))}
    return {"id": image_id, "status": "ok", "counts": {"gt_entities": len(gt)}, "entities": rows,
            "scores": {dim: {"f1": f1} for dim, f1 in zip(("tag", "loc"), scores, strict=True)}}


def _write(folder: Path, rows: list[dict]) -> str:
    folder.mkdir()
    (folder / "per_image.json").write_text(json.dumps(rows))
    return str(folder)


@pytest.fixture
def two_variants(tmp_path):
    gt = [("sky", SKY), ("white star", STAR), ("red ring", RING), ("blue cross", CROSS)]
    # A: one box on the star and the ring, named the ring; the sky; nothing at the cross
    a = _image("i1", [(*g, m, m is not None) for g, m in zip(gt, (0, None, 1, None), strict=True)],
               [("sky", SKY, 0, True), ("red ring", RING, 2, True)], (80.0, 60.0))
    # B: the sky, the star, the cross (wrong place), and a box on nothing
    b = _image("i1", [(*g, m, m is not None) for g, m in zip(gt, (0, 1, None, 2), strict=True)],
               [("sky", SKY, 0, True), ("white star", STAR, 1, True), ("blue cross", (0.0, 0.9, 0.1, 1.0), 3, False),
                ("green ring", (0.5, 0.0, 0.6, 0.1), None, False)], (70.0, 50.0))
    small_a = _image("i2", [("sky", SKY, 0, True)], [("sky", SKY, 0, True)], (100.0, 100.0))
    small_b = _image("i2", [("sky", SKY, 0, True)], [("sky", SKY, 0, True)], (100.0, 90.0))
    return _write(tmp_path / "a", [a, small_a]), _write(tmp_path / "b", [b, small_b])


def test_scene_sizes_average_the_per_image_scores(two_variants):
    diff = _module()
    a, b = (diff.load_images(path) for path in two_variants)
    rows = {row["entities"]: row for row in diff.by_scene_size(a, b)}
    assert set(rows) == {"1-3", "4-5"}
    assert rows["4-5"]["images"] == 1 and rows["4-5"]["lead"] == pytest.approx(80 + 60 - 70 - 50)
    assert rows["1-3"]["lead"] == pytest.approx(10.0)


def test_misses_say_what_a_has_where_b_named_an_entity(two_variants):
    diff = _module()
    a, b = (diff.load_images(path) for path in two_variants)
    # the star: A's ring box overlaps it (IoU 1/3) and names the ring; the cross: A has no box there
    assert diff.misses(a, b) == {"A's box there names another entity": 1, "no box of A's there": 1}


def test_extras_add_bs_entities_no_box_of_a_overlaps(two_variants):
    diff = _module()
    a, b = (diff.load_images(path) for path in two_variants)
    extra = diff.with_extras(a, b)
    # i1: A has 2 tag hits of 2 written, 4 truths -> F1 2/3; B adds the cross (a new tag hit, loc wrong) and the
    # box on nothing (its star box overlaps A's ring box): 3 hits of 4 written -> 0.75; loc stays 2 of 4
    assert extra["added"] == 2 and extra["added_new"] == 1
    assert extra["tag"] == pytest.approx((100 * 2 / 3 + 100) / 2)
    assert extra["tag_with"] == pytest.approx((75 + 100) / 2)
    assert extra["loc_with"] == pytest.approx((50 + 100) / 2)


def test_main_refuses_folders_of_other_images(tmp_path, two_variants, capsys):
    other = _write(tmp_path / "c", [_image("i9", [("sky", SKY, 0, True)], [("sky", SKY, 0, True)], (1.0, 1.0))])
    assert _module().main([two_variants[0], other]) == 2
    assert "different images" in capsys.readouterr().err
    assert _module().main(list(two_variants)) == 0
    assert "+20.00" in capsys.readouterr().out


def test_empty_scenes_and_entities_without_a_box_count_as_the_scorer_counts_them(tmp_path):
    """An image without truth is perfect with no prediction (the scorer's rule); an entity without a box (the
    judge pipeline writes such) neither crashes the reports nor counts in the location F1."""
    diff = _module()
    empty_a = _image("e", [], [], (100.0, 100.0))
    empty_b = _image("e", [], [("sky", SKY, None, False)], (0.0, 0.0))
    boxless_a = _image("n", [("sky", SKY, 0, True), ("red ring", RING, None, False)],
                       [("sky", SKY, 0, True), ("red ring", RING, None, False)], (80.0, 66.67))
    boxless_a["entities"]["pred"][1]["box"] = None
    boxless_b = _image("n", [("sky", SKY, 0, True), ("red ring", RING, 1, True)],
                       [("sky", SKY, 0, True), ("red ring", RING, 1, False)], (100.0, 66.67))
    boxless_b["entities"]["pred"][1]["box"] = None
    a = diff.load_images(_write(tmp_path / "a", [empty_a, boxless_a]))
    b = diff.load_images(_write(tmp_path / "b", [empty_b, boxless_b]))
    assert [row["entities"] for row in diff.by_scene_size(a, b)] == ["0", "1-3"]
    assert diff.misses(a, b) == {"no box of A's there": 1}
    extra = diff.with_extras(a, b)
    # "e": perfect (no truth, no prediction); "n": tag 1 hit of 2 written, 2 truths -> 50; loc 1 of 1 box, 2 boxes
    assert extra["tag"] == pytest.approx((100 + 50) / 2) and extra["loc"] == pytest.approx((100 + 100 * 2 / 3) / 2)
    assert extra["added"] == 1 and extra["added_new"] == 0  # B's sky in "e"; its box-less ring is not placed
