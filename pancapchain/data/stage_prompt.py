"""Which earlier items fill which stage-template slot: the one place a chain stage prompt is assembled.

Training (:mod:`pancapchain.data.stages`) passes the ground-truth items each earlier stage is taught to
write; inference (:class:`pancapchain.infer.chain.PancapChain`) passes the parsed outputs of the stages it
already ran (or a user's edits). Both call :func:`stage_prompt`, so the text the model sees for a stage is
the same function of the earlier items in both::

    localize, direct   no slot
    label     {boxes}      the localize items, written without tags
    discover  {entities}   the label items
    caption   {entities}   the label items, then the discover items that repeat none of them

An empty list is written "None" (:func:`pancapchain.data.stage_parse.format_items`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pancapchain.constants import DIRECT, STAGES
from pancapchain.data.boxes import BoxCodec
from pancapchain.data.prompts import PromptSet
from pancapchain.data.stage_parse import StageItem, format_items, merge_discovered

PROMPT_TASKS = (*STAGES, DIRECT)  # the tasks whose prompt is filled from earlier stage items


def box_only(items: Sequence[StageItem]) -> list[StageItem]:
    """The items without their tags (how stage-1 boxes are written into the label prompt)."""
    return [StageItem(None, it.boxes) for it in items]


def stage_prompt(
    prompts: PromptSet,
    stage: str,
    earlier: Mapping[str, Sequence[StageItem]],
    *,
    codec: BoxCodec,
    width: int,
    height: int,
) -> str:
    """The user prompt of ``stage`` (one of PROMPT_TASKS), its slot filled from ``earlier[stage name]``.

    A stage missing from ``earlier`` counts as an empty list. Raises ValueError for another task.
    """
    def text(items: Sequence[StageItem]) -> str:
        return format_items(items, codec, width, height)

    if stage in ("localize", DIRECT):
        return prompts.render(stage)
    if stage == "label":
        return prompts.render(stage, boxes=text(box_only(earlier.get("localize", ()))))
    if stage == "discover":
        return prompts.render(stage, entities=text(earlier.get("label", ())))
    if stage == "caption":
        return prompts.render(stage, entities=text(merge_discovered(earlier.get("label", ()),
                                                                    earlier.get("discover", ()))))
    raise ValueError(f"stage {stage!r} is not filled from earlier items; stages are {PROMPT_TASKS}")
