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

A chain trained with ``data.chain_rows: conversation`` asks label and caption as later turns of one conversation
instead (:func:`conversation_prompt`, the rows of :mod:`pancapchain.data.task_rows`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pancapchain.constants import DIRECT, STAGES
from pancapchain.data.boxes import BoxCodec
from pancapchain.data.prompts import PromptSet
from pancapchain.data.stage_parse import StageItem, format_items, merge_discovered
from pancapchain.model.chat import FollowUp

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


def conversation_prompt(
    prompts: PromptSet,
    stage: str,
    earlier: Mapping[str, Sequence[StageItem]],
    *,
    codec: BoxCodec,
    width: int,
    height: int,
    label_box_first: bool = False,
) -> FollowUp:
    """``stage``'s turn (label or caption) for a chain trained with ``data.chain_rows: conversation``.

    The earlier answers are written from the items known so far, as the training rows write their targets: the
    label turn follows stage 1's boxes; the caption turn follows the entities (stage 2's items, then the stage-3
    finds that repeat none of them) as both the stage-1 answer (boxes only) and the stage-2 answer.
    ``label_box_first``: stage-2 answers written box first (``data.label_answer``). Raises ValueError otherwise.
    """
    def text(items: Sequence[StageItem], box_first: bool = False) -> str:
        return format_items(items, codec, width, height, box_first=box_first)

    localize = prompts.render("localize")
    if stage == "label":
        return FollowUp(prompts.followup("label"), [(localize, text(box_only(earlier.get("localize", ()))))])
    if stage == "caption":
        entities = merge_discovered(earlier.get("label", ()), earlier.get("discover", ()))
        history = [(localize, text(box_only(entities))), (prompts.followup("label"), text(entities, label_box_first))]
        return FollowUp(prompts.followup("caption"), history)
    raise ValueError(f"stage {stage!r} is not a later turn of the conversation; those are label and caption")
