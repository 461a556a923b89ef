"""Stage 1 voted over shifted views: shifting, moving boxes back, voting, and the chain's localize stage."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from pancapchain.data.boxes import BoxCodec, box_iou
from pancapchain.data.prompts import load_prompts
from pancapchain.infer.chain import ChainState, PancapChain
from pancapchain.infer.generation import Decoded, GenerationOptions
from pancapchain.infer.views import (
    fuse_box_lists,
    mirror_image,
    shift_image,
    unmirror_box,
    unshift_box,
    view_pixel_shifts,
)


def _square_image(width: int = 64, height: int = 64, box=(20, 10, 36, 30)) -> Image.Image:
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[box[1] : box[3], box[0] : box[2]] = 255
    return Image.fromarray(pixels)


def _white_box(image: Image.Image) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(np.asarray(image)[..., 0] > 128)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def test_shift_image_moves_the_content_and_repeats_the_edges():
    image = _square_image()
    assert _white_box(shift_image(image, 4, -3)) == (24, 7, 40, 27)
    assert _white_box(shift_image(image, -5, 2)) == (15, 12, 31, 32)
    assert shift_image(image, 0, 0) is image and shift_image(image, 4, 4).size == image.size
    edge = _square_image(box=(0, 0, 8, 64))  # a white band on the left edge grows when moved right
    assert _white_box(shift_image(edge, 4, 0)) == (0, 0, 12, 64)


def test_view_shifts_are_half_a_patch_centre_first_and_boxes_move_back_clipped():
    shifts = view_pixel_shifts(9, 64, 96, patch_fraction=8 / 64)
    assert shifts[0] == (0, 0) and len(set(shifts)) == 9
    assert {abs(dx) for dx, _ in shifts} == {0, 4} and {abs(dy) for _, dy in shifts} == {0, 6}
    assert view_pixel_shifts(3, 64, 64, 8 / 64) == [(0, 0), (4, 0), (0, 4)]
    with pytest.raises(ValueError, match="views=10"):
        view_pixel_shifts(10, 64, 64, 8 / 64)
    assert unshift_box((0.25, 0.5, 1.0, 1.0), 16, -32, 64, 64) == pytest.approx((0.0, 1.0, 0.75, 1.0))


def test_votes_keep_entities_most_views_find_at_the_median_box_in_answer_order():
    left, right, ghost = (0.1, 0.1, 0.3, 0.4), (0.6, 0.5, 0.9, 0.9), (0.4, 0.0, 0.5, 0.1)
    views = [
        [left, ghost, right],
        [(0.12, 0.1, 0.3, 0.42), (0.62, 0.5, 0.9, 0.88)],
        [(0.6, 0.52, 0.92, 0.9), (0.08, 0.12, 0.3, 0.4)],  # listed the other way round
    ]
    assert fuse_box_lists(views, votes=2) == [pytest.approx((0.1, 0.1, 0.3, 0.4)),
                                              pytest.approx((0.6, 0.5, 0.9, 0.9))]
    assert len(fuse_box_lists(views, votes=1)) == 3 and fuse_box_lists(views, votes=1)[1] == ghost
    assert fuse_box_lists(views, votes=3)[0] == pytest.approx(left)
    assert fuse_box_lists([[], []], votes=1) == []
    # one view cannot vote twice for one entity: two boxes of one view on it are two entities
    assert len(fuse_box_lists([[left, left], [left]], votes=2)) == 1


def test_suppression_drops_an_overlapping_entity_fewer_views_found():
    shape, second, neighbour = (0.1, 0.1, 0.4, 0.4), (0.12, 0.14, 0.44, 0.42), (0.6, 0.6, 0.9, 0.9)
    close = (0.62, 0.58, 0.92, 0.9)  # overlaps the neighbour as much, found by as many views: kept
    views = [[shape, second, neighbour, close], [shape, neighbour, close], [shape, second, neighbour, close]]
    assert box_iou(shape, second) >= 0.5 and box_iou(neighbour, close) >= 0.5
    assert len(fuse_box_lists(views, votes=2)) == 4
    assert fuse_box_lists(views, votes=2, suppress_iou=0.5) == [
        pytest.approx(shape), pytest.approx(neighbour), pytest.approx(close)]
    assert len(fuse_box_lists(views, votes=2, suppress_iou=0.95)) == 4  # not overlapping that much
    with pytest.raises(ValueError, match="localize_suppress"):
        GenerationOptions(localize_views=3, localize_votes=2, localize_suppress=1.5)
    with pytest.raises(ValueError, match="localize_view_batch=0"):
        GenerationOptions(localize_views=3, localize_view_batch=0)


def test_generation_options_check_views_and_votes():
    assert GenerationOptions(localize_views=9, localize_votes=5).localize_votes == 5
    for views, votes, wrong in ((0, 1, "views"), (3, 4, "votes"), (10, 1, "views"), (3, 0, "votes")):
        with pytest.raises(ValueError, match=f"localize_{wrong}"):
            GenerationOptions(localize_views=views, localize_votes=votes)
    mirrored = GenerationOptions(localize_views=3, localize_votes=6, localize_mirror=True, discover_seen=6)
    assert mirrored.total_views == 6  # the mirror images vote too
    with pytest.raises(ValueError, match="localize_votes=7"):
        GenerationOptions(localize_views=3, localize_votes=7, localize_mirror=True)
    assert GenerationOptions(localize_mirror=True, discover_seen=2).total_views == 2


def test_mirrored_views_move_boxes_back_and_do_not_order_the_list():
    image = _square_image(box=(4, 10, 20, 30))
    assert _white_box(mirror_image(image)) == (44, 10, 60, 30)
    assert unmirror_box((0.6875, 0.1, 0.9375, 0.5)) == pytest.approx((0.0625, 0.1, 0.3125, 0.5))
    first, second = (0.1, 0.1, 0.3, 0.3), (0.6, 0.6, 0.9, 0.9)
    # the mirrored views list the entities the other way round; only the ordered view's order counts
    views = [[first, second], [second, first], [second, first]]
    assert fuse_box_lists(views, votes=2, ordered=[True, False, False]) == [first, second]
    assert fuse_box_lists(views, votes=2) == [second, first]


def test_the_chain_votes_stage1_over_shifted_views_and_stage2_reads_the_voted_list():
    """A scripted model boxes the white square of whatever image it is shown, and a spurious box in the unshifted
    view only: the voted list has the square where it is on the original image, and not the spurious box."""
    chain = PancapChain(None, SimpleNamespace(tokenizer=None), load_prompts(), BoxCodec("asmv2"), None)
    vision = SimpleNamespace(patch_size=8, image_size=64)
    chain.generator.model = SimpleNamespace(config=SimpleNamespace(vision_config=vision))
    chain.encode = lambda states: [s.image for s in states]  # the "features" are the shifted images themselves
    seen = []

    def scripted(prompts, sizes, features, *args, **kwargs):
        out = []
        for image in features:
            x1, y1, x2, y2 = (round(v * 1000 / 64) for v in _white_box(image))
            spurious = ", <box>[[900, 900, 950, 950]]</box>" if not seen else ""
            out.append(Decoded(f"<box>[[{x1}, {y1}, {x2}, {y2}]]</box>{spurious}", False))
            seen.append(_white_box(image))
        return out

    chain.generator.generate = scripted
    state = ChainState("img", _square_image())
    chain.run_stage("localize", [state], [state.image], GenerationOptions(localize_views=5, localize_votes=3))
    assert seen == [(20, 10, 36, 30), (24, 10, 40, 30), (20, 14, 36, 34), (16, 10, 32, 30), (20, 6, 36, 26)]
    out = state.outputs["localize"]
    assert [it.boxes for it in out.items] == [((0.312, 0.156, 0.562, 0.469),)]
    assert out.raw == "<box>[[312, 156, 562, 469]]</box>" and not out.truncated
    assert chain.stage_prompt("label", state).endswith(out.raw)
    seen.clear()  # two images, their five views in two generate calls: each image votes its own views
    other = ChainState("other", _square_image(box=(36, 30, 52, 46)))
    chain.run_stage("localize", [state, other], [state.image, other.image],
                    GenerationOptions(localize_views=5, localize_votes=3, localize_view_batch=3))
    assert len(seen) == 10 and state.outputs["localize"].raw == out.raw
    assert [it.boxes for it in other.outputs["localize"].items] == [((0.562, 0.469, 0.812, 0.719),)]
    assert [len(boxes) for boxes in state.view_boxes] == [2, 1, 1, 1, 1]  # the spurious box: first row only
    seen.clear()
    chain.run_stage("localize", [state], [state.image], GenerationOptions(localize_mirror=True, localize_votes=2))
    assert seen == [(20, 10, 36, 30), (28, 10, 44, 30)]  # the image, then its mirror image
    assert [it.boxes for it in state.outputs["localize"].items] == [((0.312, 0.156, 0.562, 0.469),)]
    seen.clear()
    chain.run_stage("localize", [state], [state.image], GenerationOptions())  # one view: the answer as written
    assert len(seen) == 1 and len(state.outputs["localize"].items) == 2


def test_stage3_finds_no_view_boxed_are_dropped_and_counted():
    chain = PancapChain(None, SimpleNamespace(tokenizer=None), load_prompts(), BoxCodec("asmv2"), None)
    state = ChainState("img", Image.new("RGB", (100, 100)))
    chain.set_output(state, "label", "cat <box>[[0, 0, 500, 500]]</box>")
    seen_twice, seen_once = (0.6, 0.6, 0.9, 0.9), (0.0, 0.6, 0.3, 0.9)
    state.view_boxes = [[(0.0, 0.0, 0.5, 0.5), seen_twice], [(0.62, 0.6, 0.9, 0.92), seen_once], [seen_twice]]
    found = "dog <box>[[600, 600, 900, 900]]</box>, bird <box>[[0, 600, 300, 900]]</box>, ghost <box>[[0, 0, 100, 50]]</box>"
    chain.generator.generate = lambda prompts, *args, **kwargs: [Decoded(found, False)]
    options = GenerationOptions(localize_views=3, localize_votes=2, discover_seen=2)
    chain.run_stage("discover", [state], None, options)
    out = state.outputs["discover"]
    assert [it.tag for it in out.items] == ["dog"] and out.unseen == 2 and out.record().to_dict()["unseen"] == 2
    chain.run_stage("discover", [state], None, GenerationOptions(localize_views=3, localize_votes=2, discover_seen=1))
    assert [it.tag for it in state.outputs["discover"].items] == ["dog", "bird"]
    chain.set_output(state, "localize", "<box>[[0, 0, 500, 500]]</box>", edited=True)  # a user's stage 1
    assert state.view_boxes == []  # nothing to count: every find is kept
    chain.run_stage("discover", [state], None, options)
    assert len(state.outputs["discover"].items) == 3 and state.outputs["discover"].unseen == 0
    with pytest.raises(ValueError, match="discover_seen"):
        GenerationOptions(discover_seen=1)

