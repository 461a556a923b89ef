"""Stage 1 decoded on several views of each image and voted box by box (the views: pancapchain.infer.views).

With a mask head trained on stage-1 answers, each view's boxes can first be moved onto the bounding boxes of
their predicted masks (``GenerationOptions.localize_mask_boxes``).

(Stage 2 decoded on the same views, each box keeping its most written tag, was measured and not kept: the
caption stage writes its own tags, and the final tags did not change; docs/learning_quality.md.)
Kept apart from chain.py, which calls it, to keep that module short.
"""

from __future__ import annotations

from collections.abc import Sequence

from pancapchain.data.boxes import mask_box
from pancapchain.data.stage_parse import StageItem, format_items, parse_stage_output
from pancapchain.infer.generation import GenerationOptions
from pancapchain.infer.masks import MaskRequest
from pancapchain.infer.views import View, fuse_box_lists, image_views


def state_views(chain, states: Sequence, options: GenerationOptions) -> list[list[View]]:
    """Per state, its views (the first is the image itself)."""
    return [image_views(options.localize_views, options.localize_mirror, s.width, s.height, chain.patch_fraction)
            for s in states]


def view_states(states: Sequence, views: list[list[View]], index: int) -> list:
    """The states' images seen through their ``index``-th view, as new states."""
    from pancapchain.infer.chain import ChainState

    return [ChainState(state.id, v[index].image(state.image)) for state, v in zip(states, views)]


def run_localize_views(chain, states: Sequence, features, options: GenerationOptions) -> None:
    """Stage 1 decoded on every view of each image and voted into one box list; the stored raw text is the voted
    list, cut if any view was cut. Each state keeps its views' boxes (on the original) for ``discover_seen``.
    ``options.localize_view_batch`` views of every state share one generate call. ``options.localize_mask_boxes``:
    each view's boxes are first read off their masks (:func:`mask_boxes`)."""
    if options.localize_mask_boxes and chain.masks is None:
        raise ValueError("localize_mask_boxes reads the mask head, and this chain has none")
    prompts = [chain.stage_prompt("localize", s) for s in states]
    views = state_views(chain, states, options)
    boxes: list[list[list]] = [[] for _ in states]  # per state, per view: boxes on the original image
    cut = [False] * len(states)
    step = options.localize_view_batch
    for first in range(0, options.total_views, step):
        indices = range(first, min(first + step, options.total_views))
        moved = [seen for index in indices for seen in view_states(states, views, index)]
        view_features = features if list(indices) == [0] else chain.encode(moved)
        row_prompts, row_states = prompts * len(indices), list(states) * len(indices)  # rows: view-major
        decoded = chain.decode_stage("localize", moved, row_prompts, view_features, options)
        written = [[box for item in parse_stage_output("localize", answer.text, chain.codec, s.width, s.height).items
                    for box in item.boxes] for answer, s in zip(decoded, row_states)]
        if options.localize_mask_boxes:
            written = mask_boxes(chain, view_features, row_prompts, [answer.text for answer in decoded], written,
                                 row_states)
        for row, answer in enumerate(decoded):
            i, view = row % len(states), views[row % len(states)][indices[row // len(states)]]
            boxes[i].append([view.box_on_original(box, states[i].width, states[i].height) for box in written[row]])
            cut[i] = cut[i] or answer.truncated
    in_order = [not view.mirrored for view in views[0]] if views else []
    for i, state in enumerate(states):
        state.view_boxes = boxes[i]
        voted = fuse_box_lists(boxes[i], options.localize_votes, ordered=in_order,
                               suppress_iou=options.localize_suppress)
        raw = format_items([StageItem(None, (box,)) for box in voted], chain.codec, state.width, state.height)
        chain.set_output(state, "localize", raw if voted else "", prompts[i], cut[i])


def mask_boxes(chain, features, prompts: Sequence[str], answers: Sequence[str], written: Sequence[list],
               states: Sequence) -> list[list]:
    """Per row (``features`` row r: a view's image features; ``prompts[r]``, ``answers[r]``, ``states[r]`` its
    image's state), ``written[r]`` (that view's stage-1 boxes, normalized on it) with each box that has a non-empty
    mask replaced by its mask's bounding box; a box without one stays as written. A box group's mask is its first
    box's (as in training); stage-1 groups hold one box.

    The masks come from the mask head over each view's answer: one teacher-forced forward for all rows
    (``MaskPredictor.predict_many``). Why: the language model writes a box at the patch grid's resolution, while
    the head's pixel branch is finer (4x at the tiny recipe's ``mask.upsample: 2``), so a head trained on stage-1
    answers (``mask.stages`` with localize) places the boxed shape better than the box it was given
    (docs/learning_quality.md, "Stage-1 boxes read off their masks"; the mean of both boxes measured lower)."""
    requests = [MaskRequest(r, p, a, s.height, s.width) for r, (p, a, s) in enumerate(zip(prompts, answers, states))]
    out = []
    for boxes, masks, s in zip(written, chain.masks.predict_many(features, requests), states):
        # keyed by the group's box as the parser decoded it (the same decode_group call, so the same floats)
        by_box = {tuple(chain.codec.decode_group(gm.group, s.width, s.height)[0]): mask_box(gm.mask, decimals=None)
                  for gm in masks if gm.mask.any()}
        out.append([by_box.get(tuple(box), box) for box in boxes])
    return out
