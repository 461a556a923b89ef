"""The synthetic panoptic generator: determinism, exact panoptic masks/boxes, captions, relations, CLI."""

from __future__ import annotations

import argparse
import json
import re
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from pancapchain.cli import synth as synth_cli
from pancapchain.data.boxes import find_box_groups, format_normalized
from pancapchain.data.io import load_samples
from pancapchain.data.schema import PanopticSample
from pancapchain.data.synth import generate_scene, write_dataset
from pancapchain.data.synth import vocabulary as synth_vocabulary
from pancapchain.data.synth_relations import (
    DIRECTION_MARGIN,
    NEXT_TO_GAP,
    box_center,
    box_gap,
    box_within,
    masks_touch,
    relate,
)
from pancapchain.data.synth_scene import (
    ASPECTS,
    HIDDEN,
    MAX_THINGS,
    SceneEntity,
    draw_layout,
    mask_box,
    render,
    resolve_visibility,
)
from pancapchain.data.synth_shapes import PATTERNS, THING_KINDS, pattern_cell, pattern_mask, shape_masks
from pancapchain.errors import run_guarded

N_SCENES = 60
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@cache
def scenes(size: int = 64, seed: int = 3, n: int = N_SCENES) -> tuple[PanopticSample, ...]:
    return tuple(generate_scene(i, seed, size)[0] for i in range(n))


def decode(sample: PanopticSample) -> list[np.ndarray]:
    return [mask_utils.decode(e.mask).astype(bool) for e in sample.entities]


# ---- determinism ----------------------------------------------------------------------------------------


def test_same_seed_gives_identical_scenes_and_other_seeds_differ():
    for index in range(5):
        a, img_a = generate_scene(index, 11, 64)
        b, img_b = generate_scene(index, 11, 64)
        c, img_c = generate_scene(index, 12, 64)
        assert a.to_dict() == b.to_dict()
        assert np.array_equal(np.asarray(img_a), np.asarray(img_b))
        assert a.to_dict() != c.to_dict()
    # seed s must not replay seed s+1 shifted by one scene (the pitfall of seed + index)
    assert generate_scene(1, 11, 64)[0].caption != generate_scene(0, 12, 64)[0].caption
    # train and val scenes with the same index are different scenes
    assert generate_scene(0, 11, 64, "val")[0].caption != generate_scene(0, 11, 64, "train")[0].caption


def _file_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "synth_config.json"
    }


def test_write_dataset_is_byte_identical_and_independent_of_counts(tmp_path):
    write_dataset(tmp_path / "a", 4, 2, seed=5, size=64, progress=False)
    write_dataset(tmp_path / "b", 4, 2, seed=5, size=64, progress=False)
    write_dataset(tmp_path / "c", 2, 1, seed=5, size=64, progress=False)
    write_dataset(tmp_path / "d", 4, 2, seed=6, size=64, progress=False)
    files_a, files_b = _file_bytes(tmp_path / "a"), _file_bytes(tmp_path / "b")
    assert files_a == files_b and len(files_a) == 4 + 2 + 2
    files_c = _file_bytes(tmp_path / "c")
    for name in ("images/syn-train-000001.png", "images/syn-val-000000.png"):
        assert files_c[name] == files_a[name]
    assert (tmp_path / "a" / "train.jsonl").read_text().splitlines()[:2] == (
        tmp_path / "c" / "train.jsonl"
    ).read_text().splitlines()
    assert (tmp_path / "d" / "train.jsonl").read_bytes() != files_a["train.jsonl"]


# ---- data contract, masks, boxes -------------------------------------------------------------------------


def test_every_sample_round_trips_through_the_schema():
    for sample in scenes() + scenes(size=96, n=10):
        record = json.loads(json.dumps(sample.to_dict()))
        assert PanopticSample.from_dict(record, sample.id) == sample


def test_masks_partition_the_image():
    for sample in scenes():
        masks = decode(sample)
        stack = np.stack(masks)
        assert stack.shape == (len(sample.entities), sample.height, sample.width)
        assert all(m.any() for m in masks)
        assert np.array_equal(stack.sum(axis=0), np.ones((sample.height, sample.width)))


def test_boxes_are_tight_boxes_of_the_visible_masks():
    for sample in scenes():
        for ent, mask in zip(sample.entities, decode(sample)):
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            pixels = (
                ent.box[0] * sample.width,
                ent.box[1] * sample.height,
                ent.box[2] * sample.width,
                ent.box[3] * sample.height,
            )
            expected = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
            assert np.allclose(pixels, expected, atol=1.0), (sample.id, ent.tag)


def test_image_sizes_and_aspects():
    heights = set()
    for i in range(30):
        sample, image = generate_scene(i, 0, 64)
        assert image.size == (sample.width, sample.height) and image.mode == "RGB"
        assert sample.width == 64 and sample.height in {round(64 * a) for a in ASPECTS}
        heights.add(sample.height)
    assert len(heights) == len(ASPECTS)
    big, image = generate_scene(0, 0, 256)
    assert image.size == (256, big.height)
    assert np.array_equal(np.stack(decode(big)).sum(axis=0), np.ones((big.height, 256)))


def test_entity_counts_kinds_and_attributes():
    for sample in scenes():
        things = [e for e in sample.entities if e.is_thing]
        stuff = [e for e in sample.entities if not e.is_thing]
        assert 1 <= len(things) <= MAX_THINGS and 1 <= len(stuff) <= 3
        assert sample.entities[: len(stuff)] == tuple(stuff)  # stuff is mentioned first
        for ent in things:
            size, pattern, color = ent.attributes[:3]
            assert size in ("small", "medium", "large") and pattern in PATTERNS
            assert ent.tag == f"{color} {ent.tag.split()[-1]}" and ent.tag.split()[-1] in THING_KINDS
            assert set(ent.attributes[3:]) <= {HIDDEN}
        assert len(sample.global_state) == 2 and sample.global_state[1].endswith(" palette")


def test_touching_things_have_different_colors():
    pairs = 0
    for sample in scenes() + scenes(seed=4):
        masks = decode(sample)
        things = [i for i, e in enumerate(sample.entities) if e.is_thing]
        for a in things:
            for b in things:
                if a < b and masks_touch(masks[a], masks[b]):
                    pairs += 1
                    assert sample.entities[a].attributes[2] != sample.entities[b].attributes[2], sample.id
    assert pairs > 50


# ---- captions and vocabulary -----------------------------------------------------------------------------


def test_caption_mentions_each_entity_once_with_tag_then_box_in_entity_order():
    for sample in scenes():
        position = -1
        for ent in sample.entities:
            mention = f"{ent.tag} {format_normalized([ent.box])}"
            found = sample.caption.find(mention, position + 1)
            assert found > position, (sample.id, mention, sample.caption)
            position = found
        groups = find_box_groups(sample.caption)
        assert [g.values[0] for g in groups] == [ent.box for ent in sample.entities]


def test_captions_use_only_the_vocabulary():
    vocab = set(synth_vocabulary())
    words = {w for phrase in vocab for w in phrase.split()}
    for sample in scenes():
        text = sample.caption
        for group in reversed(find_box_groups(text)):
            text = text[: group.start] + text[group.end :]
        assert set(re.findall(r"[A-Za-z]+", text)) <= words, sample.id
        for ent in sample.entities:
            assert ent.tag in vocab and set(ent.attributes) <= vocab
        assert {r.predicate for r in sample.relations} <= vocab
        assert set(sample.global_state) <= vocab


def test_captions_vary_but_stay_regular():
    first_sentences = {s.caption.split(". ")[0].split(" ")[0] for s in scenes()}
    assert len(first_sentences) >= 2
    assert all(s.caption.count("\n\n") == 2 for s in scenes())


# ---- relations ---------------------------------------------------------------------------------------------


def _thing(
    mask: np.ndarray, order: int, filled: np.ndarray | None = None, tag: str = "red square"
) -> SceneEntity:
    ent = SceneEntity(
        tag, True, "red", (200, 0, 0), mask, mask if filled is None else filled, draw_order=order
    )
    ent.visible = mask.copy()
    ent.box = mask_box(mask)
    return ent


def _rect(y0: int, y1: int, x0: int, x1: int, shape: tuple[int, int] = (64, 64)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_relate_directions_on_hand_made_masks():
    left, right = _thing(_rect(20, 30, 2, 12), 0), _thing(_rect(22, 32, 40, 50), 1)
    top, bottom = _thing(_rect(2, 10, 20, 30), 0), _thing(_rect(45, 55, 22, 32), 1)
    assert relate(left, right) == "left of" and relate(right, left) == "right of"
    assert relate(top, bottom) == "above" and relate(bottom, top) == "below"
    diagonal_a, diagonal_b = _thing(_rect(0, 10, 0, 10), 0), _thing(_rect(30, 40, 30, 40), 1)
    assert relate(diagonal_a, diagonal_b) is None  # equal offsets on both axes: no clear direction


def test_relate_inside_overlapping_next_to():
    big, small = _thing(_rect(10, 50, 10, 50), 0), _thing(_rect(20, 30, 20, 30), 1)
    big.visible = big.full & ~small.full
    assert relate(small, big) == "inside"
    a, b = _thing(_rect(10, 30, 10, 30), 0), _thing(_rect(20, 40, 25, 45), 1)
    a.visible = a.full & ~b.full
    a.box = mask_box(a.visible)
    assert relate(b, a) == "overlapping"
    c, d = _thing(_rect(10, 30, 10, 30), 0), _thing(_rect(12, 28, 31, 45), 1)
    assert relate(d, c) == "next to"
    ring, ring_filled = _rect(10, 50, 10, 50), _rect(10, 50, 10, 50)
    ring[20:40, 20:40] = False
    dot = _thing(_rect(25, 35, 25, 35), 1)
    assert relate(dot, _thing(ring, 0, filled=ring_filled)) == "inside"  # in the ring's hole


def test_relate_inside_stuff_only_for_partial_regions():
    sky = SceneEntity("sky", False, "blue", (0, 0, 255), _rect(0, 30, 0, 64), _rect(0, 30, 0, 64))
    sky.visible, sky.box = sky.full, mask_box(sky.full)
    wall = SceneEntity("wall", False, "white", (9, 9, 9), _rect(0, 64, 0, 64), _rect(0, 64, 0, 64))
    wall.visible, wall.box = wall.full, mask_box(wall.full)
    assert relate(_thing(_rect(5, 15, 5, 15), 0), sky) == "inside"
    assert relate(_thing(_rect(25, 40, 5, 15), 0), sky) is None  # straddles the horizon
    assert relate(_thing(_rect(5, 15, 5, 15), 0), wall) is None  # the whole image is no information


def test_generated_relations_hold_on_the_stored_masks():
    seen = set()
    for sample in scenes() + scenes(seed=4):
        masks = decode(sample)
        for rel in sample.relations:
            s, o = sample.entity(rel.subject), sample.entity(rel.object)
            assert s.is_thing and rel.subject != rel.object
            (sx, sy), (ox, oy) = box_center(s.box), box_center(o.box)
            pred = rel.predicate
            seen.add(pred)
            if pred in ("left of", "right of"):
                assert abs(sx - ox) > max(abs(sy - oy), DIRECTION_MARGIN) and (sx < ox) == (pred == "left of")
            elif pred in ("above", "below"):
                assert abs(sy - oy) > max(abs(sx - ox), DIRECTION_MARGIN) and (sy < oy) == (pred == "above")
            elif pred == "inside":
                assert box_within(s.box, o.box)
            elif pred == "overlapping":
                assert masks_touch(masks[rel.subject], masks[rel.object])
            else:
                assert pred == "next to" and box_gap(s.box, o.box) <= NEXT_TO_GAP + 1e-9
    assert {"inside", "overlapping", "next to"} <= seen and seen & {"left of", "right of", "above", "below"}


def test_fully_occluded_thing_is_dropped_and_pixels_go_back_to_the_background():
    layer = np.zeros((32, 32), dtype=np.int16)
    ground = SceneEntity("ground", False, "brown", (1, 2, 3), layer == 0, layer == 0, place="whole")
    hidden = _thing(_rect(10, 14, 10, 14, (32, 32)), 0, tag="blue circle")
    cover = _thing(_rect(8, 20, 8, 20, (32, 32)), 1)
    for ent in (hidden, cover):
        ent.size_word = "small"
    stuff = [ground]
    kept = resolve_visibility(stuff, [hidden, cover], layer)
    assert kept == [cover]
    assert np.array_equal(ground.visible, ~cover.full) and ground.box == (0.0, 0.0, 1.0, 1.0)


# ---- pixels -------------------------------------------------------------------------------------------------


def test_patterns_are_visible_on_the_smallest_things():
    radius = 4.0
    for kind in THING_KINDS:
        shape, _ = shape_masks(kind, 10.0, 10.0, radius, 20, 20)
        ys, xs = np.nonzero(shape)
        for pattern in PATTERNS[1:]:
            second = pattern_mask(pattern, ys - 6, xs - 6, pattern_cell(radius))
            assert second.any() and not second.all(), (kind, pattern)


def test_lighting_and_palette_change_the_pixels():
    layout = draw_layout(np.random.default_rng(1), 64)
    means = {}
    for lighting, palette in (
        ("bright daylight", "warm"),
        ("dim light", "warm"),
        ("bright daylight", "cool"),
    ):
        layout.lighting, layout.palette = lighting, palette
        means[lighting, palette] = render(layout, np.random.default_rng(0)).reshape(-1, 3).mean(axis=0)
    assert means["dim light", "warm"].sum() < 0.6 * means["bright daylight", "warm"].sum()
    warm, cool = means["bright daylight", "warm"], means["bright daylight", "cool"]
    assert warm[0] / warm[2] > 1.2 * cool[0] / cool[2]


# ---- CLI -------------------------------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    """``pancapchain synth ...`` through the subcommand's own parser (independent of other subcommands)."""
    parser = argparse.ArgumentParser(prog="pancapchain")
    synth_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return run_guarded(lambda: args.func(args), "pancapchain synth")


def test_cli_writes_the_expected_files(tmp_path, capsys):
    out = tmp_path / "synth"
    code = main(
        ["synth", "--out", str(out), "--n-train", "3", "--n-val", "2", "--seed", "9", "--no-progress"]
    )
    assert code == 0
    train, report = load_samples(out / "train.jsonl", strict=True)
    val, _ = load_samples(out / "val.jsonl", strict=True)
    assert [s.id for s in train] == ["syn-train-000000", "syn-train-000001", "syn-train-000002"]
    assert [s.id for s in val] == ["syn-val-000000", "syn-val-000001"]
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(f"{s.id}.png" for s in train + val)
    assert train[1] == generate_scene(1, 9, 64)[0]
    config = json.loads((out / "synth_config.json").read_text())
    assert config["args"] == {"out": str(out), "n_train": 3, "n_val": 2, "seed": 9, "size": 64}
    assert config["stats"]["train"]["scenes"] == 3
    assert "wrote 3 train + 2 val scenes" in capsys.readouterr().out


@pytest.mark.parametrize("bad", [["--size", "16"], ["--n-train", "-1"], ["--seed", "-3"]])
def test_cli_rejects_bad_arguments(tmp_path, capsys, bad):
    assert main(["synth", "--out", str(tmp_path / "x"), "--no-progress", *bad]) == 2
    assert "error" in capsys.readouterr().err


def test_atomic_writes_get_the_users_usual_file_mode(tmp_path):
    import os
    import stat

    from pancapchain.data.io import atomic_write_json

    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "metrics.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "metrics.json").stat().st_mode) == 0o644  # mkstemp alone gives 0600
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left behind
