"""Stage-1 views read off their masks before the vote (``GenerationOptions.localize_mask_boxes``)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from pancapchain.cli.infer import check_chain_options
from pancapchain.data.boxes import BoxCodec, find_box_groups
from pancapchain.data.prompts import load_prompts
from pancapchain.data.stage_parse import StageItem, format_items
from pancapchain.errors import PreflightError
from pancapchain.infer.chain import ChainState, PancapChain
from pancapchain.infer.generation import Decoded, GenerationOptions
from pancapchain.infer.masks import GroupMask


def _square_image(box: tuple[int, int, int, int]) -> Image.Image:
    pixels = np.zeros((64, 64, 3), dtype=np.uint8)
    pixels[box[1] : box[3], box[0] : box[2], 0] = 255  # one red square
    return Image.fromarray(pixels)


def _two_squares(red: tuple[int, int, int, int], green: tuple[int, int, int, int]) -> Image.Image:
    """An 80 x 64 image (not square: the padded square and the image frames differ) with a red and a green square."""
    pixels = np.zeros((64, 80, 3), dtype=np.uint8)
    for channel, (x1, y1, x2, y2) in enumerate((red, green)):
        pixels[y1:y2, x1:x2, channel] = 255
    return Image.fromarray(pixels)


def _normalized(box: tuple[int, int, int, int], width: int = 80, height: int = 64) -> tuple[float, ...]:
    return (box[0] / width, box[1] / height, box[2] / width, box[3] / height)


def _scripted_chain(with_masks: bool = True) -> tuple[PancapChain, list]:
    """A chain whose "model" boxes the red, then the green square of the view it is shown,
    each 8 px too wide (as a language model writes a box off by a patch), and whose "mask head" segments the k-th
    square for the k-th box group of the answer, on the view row it is asked about (its features are the view
    images themselves)."""
    chain = PancapChain(None, SimpleNamespace(tokenizer=None), load_prompts(), BoxCodec("asmv2"), None)
    chain.generator.model = SimpleNamespace(config=SimpleNamespace(vision_config=SimpleNamespace(patch_size=8,
                                                                                                   image_size=64)))
    chain.encode = lambda states: [s.image for s in states]
    asked = []

    def channel_masks(image: Image.Image) -> list[np.ndarray]:
        pixels = np.asarray(image)
        return [mask for mask in (pixels[..., 0] > 128, pixels[..., 1] > 128) if mask.any()]

    def scripted(prompts, sizes, features, *args, **kwargs):
        out = []
        for image in features:
            items = []
            for mask in channel_masks(image):
                ys, xs = np.nonzero(mask)
                wide = (xs.min(), ys.min(), min(xs.max() + 9, image.width), ys.max() + 1)
                items.append(StageItem(None, (_normalized(wide, image.width, image.height),)))
            out.append(Decoded(format_items(items, chain.codec, image.width, image.height), False))
        return out

    def predict(features, index, prompt, answer, height, width):
        assert (width, height) == features[index].size
        return [GroupMask(group, mask, 1.0)
                for group, mask in zip(find_box_groups(answer), channel_masks(features[index]))]

    def predict_many(features, requests):
        asked.append([request.index for request in requests])
        return [predict(features, *request) for request in requests]

    chain.generator.generate = scripted
    chain.masks = SimpleNamespace(predict_many=predict_many) if with_masks else None
    chain.stage1_masks = with_masks
    return chain, asked


def _voted(state: ChainState) -> list[tuple[float, ...]]:
    return [it.boxes[0] for it in state.outputs["localize"].items]


@pytest.mark.parametrize("view_batch", [1, 4])
def test_each_view_is_read_off_its_own_masks_before_the_vote(view_batch):
    """Two images of two squares, 3 shifted views and their mirror images: every box of every view is replaced by
    the box of the mask of its own group in its own row (a row or group mix-up moves the vote off the squares)."""
    chain, asked = _scripted_chain()
    red_a, green_a, red_b, green_b = (20, 10, 36, 30), (50, 34, 70, 50), (8, 30, 24, 46), (40, 6, 60, 24)
    first, second = ChainState("a", _two_squares(red_a, green_a)), ChainState("b", _two_squares(red_b, green_b))
    options = GenerationOptions(localize_views=3, localize_mirror=True, localize_votes=4,
                                localize_view_batch=view_batch)
    chain.run_stage("localize", [first, second], [first.image, second.image], options)
    # as written: 8 px too wide, to the right in the plain views and to the left in the mirrored ones
    assert _voted(first)[0] == pytest.approx(_normalized((16, 10, 40, 30)), abs=2e-3)
    assert asked == []
    options = GenerationOptions(localize_views=3, localize_mirror=True, localize_votes=4,
                                localize_view_batch=view_batch, localize_mask_boxes=True)
    chain.run_stage("localize", [first, second], [first.image, second.image], options)
    for state, squares in ((first, (red_a, green_a)), (second, (red_b, green_b))):
        assert len(_voted(state)) == 2
        for voted, square in zip(_voted(state), squares):
            assert voted == pytest.approx(_normalized(square), abs=2e-3)
    calls = [list(range(2 * min(view_batch, 6 - start))) for start in range(0, 6, view_batch)]
    assert asked == calls  # one mask forward per generate call, over its rows: the call's views, both images each
    assert first.view_boxes[1][0] == pytest.approx(_normalized(red_a))  # moved back from view 1


def test_a_box_whose_mask_is_empty_stays_as_written_and_no_mask_head_is_an_error():
    chain, _ = _scripted_chain()
    chain.masks = SimpleNamespace(predict_many=lambda features, requests: [
        [GroupMask(group, np.zeros((r.height, r.width), dtype=bool), 0.0) for group in find_box_groups(r.answer)]
        for r in requests])
    state = ChainState("a", _square_image((20, 10, 36, 30)))
    options = GenerationOptions(localize_views=3, localize_votes=2, localize_mask_boxes=True)
    chain.run_stage("localize", [state], [state.image], options)
    assert [it.boxes for it in state.outputs["localize"].items] == [((0.312, 0.156, 0.688, 0.469),)]
    headless, _ = _scripted_chain(with_masks=False)
    with pytest.raises(ValueError, match="mask head"):
        headless.run_stage("localize", [state], [state.image], options)
    with pytest.raises(PreflightError, match="--localize-mask-boxes reads stage-1 boxes off the mask head"):
        check_chain_options(headless, options)
    check_chain_options(chain, options)  # a chain with a head trained on stage-1 answers passes
    check_chain_options(headless, options, plan="direct")  # direct captioning has no stage 1 to read
    chain.stage1_masks = False  # e.g. a checkpoint whose mask.stages lacks localize
    with pytest.raises(PreflightError, match="not trained on stage-1 answers"):
        check_chain_options(chain, options)
    with pytest.raises(ValueError, match="it needs views"):
        GenerationOptions(localize_mask_boxes=True)
