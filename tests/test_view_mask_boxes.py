"""Stage-1 views read off their masks before the vote (``GenerationOptions.localize_mask_boxes``)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from pancapchain.cli.infer import check_chain_options
from pancapchain.data.boxes import BoxCodec, find_box_groups
from pancapchain.data.prompts import load_prompts
from pancapchain.errors import PreflightError
from pancapchain.infer.chain import ChainState, PancapChain
from pancapchain.infer.generation import Decoded, GenerationOptions
from pancapchain.infer.masks import GroupMask


def _square_image(box: tuple[int, int, int, int]) -> Image.Image:
    pixels = np.zeros((64, 64, 3), dtype=np.uint8)
    pixels[box[1] : box[3], box[0] : box[2]] = 255
    return Image.fromarray(pixels)


def _white(image: Image.Image) -> np.ndarray:
    return np.asarray(image)[..., 0] > 128


def _scripted_chain(with_masks: bool = True) -> tuple[PancapChain, list]:
    """A chain whose "model" boxes the white square of the view it is shown 8 px too wide (as a language model
    writes a box off by a patch), and whose "mask head" segments the white square of the view row it is asked
    about (its features are the view images themselves)."""
    chain = PancapChain(None, SimpleNamespace(tokenizer=None), load_prompts(), BoxCodec("asmv2"), None)
    chain.generator.model = SimpleNamespace(config=SimpleNamespace(vision_config=SimpleNamespace(patch_size=8,
                                                                                                   image_size=64)))
    chain.encode = lambda states: [s.image for s in states]
    asked = []

    def scripted(prompts, sizes, features, *args, **kwargs):
        out = []
        for image in features:
            ys, xs = np.nonzero(_white(image))
            x1, y1, x2, y2 = (round(v * 1000 / 64) for v in (xs.min(), ys.min(), min(xs.max() + 9, 64), ys.max() + 1))
            out.append(Decoded(f"<box>[[{x1}, {y1}, {x2}, {y2}]]</box>", False))
        return out

    def predict(features, index, prompt, answer, height, width):
        asked.append(index)
        return [GroupMask(group, _white(features[index]), 1.0) for group in find_box_groups(answer)]

    chain.generator.generate = scripted
    chain.masks = SimpleNamespace(predict=predict) if with_masks else None
    return chain, asked


def test_each_view_is_read_off_its_own_mask_before_the_vote():
    """Two images, five shifted views each, three views per generate call: every view's box is replaced by the
    box of the mask of that same row (a row mix-up would move the vote off the squares)."""
    chain, asked = _scripted_chain()
    first, second = ChainState("a", _square_image((20, 10, 36, 30))), ChainState("b", _square_image((36, 30, 52, 46)))
    written = GenerationOptions(localize_views=5, localize_votes=3, localize_view_batch=3)
    chain.run_stage("localize", [first, second], [first.image, second.image], written)
    assert [it.boxes for it in first.outputs["localize"].items] == [((0.312, 0.156, 0.688, 0.469),)]
    assert asked == []
    read_off = GenerationOptions(localize_views=5, localize_votes=3, localize_view_batch=3, localize_mask_boxes=True)
    chain.run_stage("localize", [first, second], [first.image, second.image], read_off)
    assert [it.boxes for it in first.outputs["localize"].items] == [((0.312, 0.156, 0.562, 0.469),)]
    assert [it.boxes for it in second.outputs["localize"].items] == [((0.562, 0.469, 0.812, 0.719),)]
    assert asked == [0, 1, 2, 3, 4, 5, 0, 1, 2, 3]  # rows of the two calls: views 0-2 of both images, then 3-4
    assert first.view_boxes[1] == [pytest.approx((0.3125, 0.15625, 0.5625, 0.46875))]  # the view's box moved back


def test_a_box_whose_mask_is_empty_stays_as_written_and_no_mask_head_is_an_error():
    chain, _ = _scripted_chain()
    chain.masks = SimpleNamespace(predict=lambda features, index, prompt, answer, h, w: [
        GroupMask(group, np.zeros((h, w), dtype=bool), 0.0) for group in find_box_groups(answer)])
    state = ChainState("a", _square_image((20, 10, 36, 30)))
    options = GenerationOptions(localize_views=3, localize_votes=2, localize_mask_boxes=True)
    chain.run_stage("localize", [state], [state.image], options)
    assert [it.boxes for it in state.outputs["localize"].items] == [((0.312, 0.156, 0.688, 0.469),)]
    headless, _ = _scripted_chain(with_masks=False)
    with pytest.raises(ValueError, match="mask head"):
        headless.run_stage("localize", [state], [state.image], options)
    with pytest.raises(PreflightError, match="--localize-mask-boxes reads stage-1 boxes off the mask head"):
        check_chain_options(headless, options)
    check_chain_options(chain, options)  # a chain with a head passes
    with pytest.raises(ValueError, match="it needs views"):
        GenerationOptions(localize_mask_boxes=True)
