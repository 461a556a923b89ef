"""Four-stage PancapChain training samples from one :class:`PanopticSample`.

Targets are written with :mod:`pancapchain.data.stage_parse` (the format the chain parses back) and prompts
are filled by :func:`pancapchain.data.stage_prompt.stage_prompt` (the function the chain uses at inference).

One sample yields up to four (prompt, target) pairs; the prompt is the rendered stage template
without the image token and without the chat template. With entities E1..En in entity (= caption)
order, each with its cleaned tag and one box::

    localize  prompt: template                        target: E1 box, ..., En box
    label     prompt: template(boxes=<stage-1 text>)  target: E1 tag box, ..., En tag box
    discover  prompt: template(entities=<known>)      target: <missing>, or "None" if nothing is missing
    caption   prompt: template(entities=<all items>)  target: the caption, its boxes in the codec's format

Stage 3 split: a fraction f ~ U(discover_ratio) of the entities is missing; the count is f*n rounded
stochastically (floor(f*n + u), u ~ U[0, 1)), so with one entity it is sometimes all known (target
"None") and sometimes none known; an empty known list is rendered as "None", the same text the model
writes for an empty stage-3 answer. The split depends only on (seed, sample id) through a SHA-256
hash, never on Python's salted ``hash()``. Known and missing items keep entity order.

Repeats: an item whose text (cleaned tag + box in the codec's format) repeats an earlier one is left
out of the item lists, and a repeated box out of the stage-1 list, exactly as the parser drops exact
repeats, so every target parses back to the items it was built from (the caption is left as written).

Direct captioning (``direct``, the paper's baseline): prompt = the direct template, target = the caption with its
boxes in the codec's format (the stage-4 target without the item list in the prompt).

Box tasks (``BOX_TASKS``: ``segcap``, ``region``) are built by :mod:`pancapchain.data.box_tasks` when
``stages`` asks for them; a sample with nothing to teach for one is left out of that task, and the reason
is appended to ``skipped`` when the caller passes a list (the dataset counts it).

Zero-entity samples: stages 1-3 are skipped (a real image without entities is almost always an
importer miss, and teaching "None" for localization would hurt); stage 4 is kept when the caption is
not empty, with "None" as its item list. An empty caption skips stage 4. The caption target is
stripped of surrounding whitespace.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from pancapchain.constants import ANSWER_LAYOUTS, BOX_TASKS, DIRECT, ORACLE_STAGES, STAGES, TASKS
from pancapchain.data.box_tasks import NoTaskExample, build_box_task
from pancapchain.data.boxes import BoxCodec
from pancapchain.data.caption_layout import LayoutError, to_box_first
from pancapchain.data.prompts import PromptSet
from pancapchain.data.schema import PanopticSample, SampleError
from pancapchain.data.stage_parse import StageItem, clean_tag, format_items
from pancapchain.data.stage_prompt import box_only, stage_prompt


@dataclass(frozen=True)
class StageExample:
    """One supervised (prompt, target) pair; the prompt excludes the image token and the chat template."""

    sample_id: str
    stage: str
    image: str
    width: int
    height: int
    prompt: str
    target: str


def entity_items(sample: PanopticSample) -> list[StageItem]:
    """The sample's entities as tagged stage items (cleaned tag, one box), in entity order.

    Raises SampleError naming the sample when a tag is empty once cleaned.
    """
    items = []
    for ent in sample.entities:
        tag = clean_tag(ent.tag)
        if not tag:
            raise SampleError(sample.id, f"entity {ent.id} has an empty tag {ent.tag!r}; stage items need one")
        items.append(StageItem(tag, (ent.box,)))
    return items


ITEM_ORDERS = ("caption", "raster")
RASTER_ROWS = 8  # row bands of the raster order


def raster_order(items: Sequence[StageItem]) -> list[StageItem]:
    """Items in reading order: by the band of their top edge (RASTER_ROWS bands), then left edge, then top.

    The caption's order depends on how the narrative was written; a model that must list entities before it
    has described them learns a canonical order far more easily (stable sort: ties keep caption order).
    """
    def key(item: StageItem) -> tuple[int, float, float]:
        x1, y1 = item.boxes[0][0], item.boxes[0][1]
        return (min(int(y1 * RASTER_ROWS), RASTER_ROWS - 1), x1, y1)

    return sorted(items, key=key)


def discover_ratio_problem(ratio) -> str | None:
    """The one rule for ``data.discover_ratio`` (used by the recipe check and here): [low, high] in [0, 1]."""
    values = list(ratio) if isinstance(ratio, (list, tuple)) else []
    if len(values) != 2 or not all(isinstance(v, (int, float)) for v in values) or not 0.0 <= values[0] <= values[1] <= 1.0:
        return f"discover_ratio must be [low, high] with 0 <= low <= high <= 1, got {ratio}"
    return None


def discover_split(sample_id: str, n: int, ratio: tuple[float, float], seed: int) -> list[bool]:
    """Per entity, True if it is *missing* in the stage-3 example (deterministic in (seed, sample_id))."""
    digest = hashlib.sha256(f"{seed}\x00{sample_id}".encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "big"))
    fraction = rng.uniform(*ratio)
    n_missing = min(n, math.floor(fraction * n + rng.random()))
    missing = set(rng.sample(range(n), n_missing))
    return [i in missing for i in range(n)]


def build_stage_examples(
    sample: PanopticSample,
    prompts: PromptSet,
    codec: BoxCodec,
    stages: Sequence[str] = STAGES,
    discover_ratio: tuple[float, float] = (0.3, 0.7),
    seed: int = 0,
    skipped: list[tuple[str, str]] | None = None,
    *,
    item_order: str = "caption",
    label_answer: str = "tag_first",
    caption_mentions: str = "tag_first",
) -> list[StageExample]:
    """The sample's examples of the tasks in ``stages`` (any of TASKS), in that order (skips: module docstring).

    ``item_order``: the order of the items in stage 1-3 answers and item-list prompts: "caption" (entity =
    caption order, the default) or "raster" (:func:`raster_order`, a canonical reading order).
    ``label_answer``: stage-2 items written "tag_first" (``tag <box>..</box>``) or "box_first".
    ``caption_mentions``: caption and direct answers with each box after its phrase ("tag_first") or before it
    ("box_first", :mod:`pancapchain.data.caption_layout`); a caption that cannot be laid out box first gives no
    caption/direct example (reported through ``skipped``).

    ``skipped`` (optional) receives (task, reason) for every requested extra task the sample cannot teach.
    Raises ValueError for an unknown task or a bad ratio, SampleError for an entity with an empty tag.
    """
    unknown = [s for s in stages if s not in TASKS]
    if unknown:
        raise ValueError(f"unknown stages {unknown}; tasks are {TASKS}")
    problem = discover_ratio_problem(discover_ratio)
    if problem:
        raise ValueError(problem)
    lo, hi = discover_ratio
    _check_styles(item_order, label_answer, caption_mentions)
    items = _ordered_items(sample, codec, item_order)
    out = []
    for stage in stages:
        try:
            pair: tuple[str, str] | None = (
                build_box_task(stage, sample, prompts, codec, seed) if stage in BOX_TASKS
                else _build_pair(stage, sample, items, prompts, codec, (lo, hi), seed,
                                 (label_answer == "box_first", caption_mentions == "box_first")))
        except NoTaskExample as why:
            if skipped is not None:
                skipped.append((stage, str(why)))
            continue
        if pair is not None:
            out.append(StageExample(sample.id, stage, sample.image, sample.width, sample.height, *pair))
    return out


def _build_pair(
    stage: str,
    sample: PanopticSample,
    items: list[StageItem],
    prompts: PromptSet,
    codec: BoxCodec,
    ratio: tuple[float, float],
    seed: int,
    box_first: tuple[bool, bool] = (False, False),
) -> tuple[str, str] | None:
    """(prompt, target) of one stage, or None when the sample has nothing to teach in that stage.

    ``box_first``: (stage-2 items, caption mentions) written box first. Raises NoTaskExample for a caption
    that cannot be written box first."""
    label_box_first, caption_box_first = box_first
    w, h = sample.width, sample.height

    def prompt(**earlier: Sequence[StageItem]) -> str:
        return stage_prompt(prompts, stage, earlier, codec=codec, width=w, height=h)

    if stage in ("caption", DIRECT):
        caption = sample.caption.strip()
        if caption and caption_box_first:
            try:
                caption = to_box_first(caption)
            except LayoutError as err:
                raise NoTaskExample(f"caption_mentions box_first: {err}") from None
        return (prompt(label=items), codec.convert_text(caption, w, h)) if caption else None
    if not items:
        return None
    if stage == "localize":
        return prompt(), format_items(_unique(box_only(items), codec, w, h), codec, w, h)
    if stage == "label":
        return prompt(localize=_unique(box_only(items), codec, w, h)), format_items(items, codec, w, h,
                                                                                     box_first=label_box_first)
    missing = discover_split(sample.id, len(items), ratio, seed)
    known = [it for it, gone in zip(items, missing) if not gone]
    found = [it for it, gone in zip(items, missing) if gone]
    return prompt(label=known), format_items(found, codec, w, h)


def _check_styles(item_order: str, label_answer: str, caption_mentions: str = "tag_first") -> None:
    if item_order not in ITEM_ORDERS:
        raise ValueError(f"item_order must be one of {ITEM_ORDERS}, not {item_order!r}")
    for key, value in (("label_answer", label_answer), ("caption_mentions", caption_mentions)):
        if value not in ANSWER_LAYOUTS:
            raise ValueError(f"{key} must be one of {ANSWER_LAYOUTS}, not {value!r}")


def _unique(items: Sequence[StageItem], codec: BoxCodec, width: int, height: int) -> list[StageItem]:
    """Items whose written text repeats no earlier item's (first occurrence kept, order kept)."""
    by_text: dict[str, StageItem] = {}
    for item in items:
        by_text.setdefault(format_items([item], codec, width, height), item)
    return list(by_text.values())


def _ordered_items(sample: PanopticSample, codec: BoxCodec, item_order: str) -> list[StageItem]:
    """The sample's items as the stage targets list them: repeats dropped, in ``item_order``."""
    items = _unique(entity_items(sample), codec, sample.width, sample.height)
    return raster_order(items) if item_order == "raster" else items


def ground_truth_answers(
    sample: PanopticSample, codec: BoxCodec, through: str, *, item_order: str = "caption",
    label_answer: str = "tag_first",
) -> dict[str, str]:
    """The answers a perfect chain would give for the stages up to and including ``through``.

    Written exactly as the training targets are (same items, order and repeat rule): localize = every box,
    label = every tag + box, discover = "None" (with stage 2 given from the ground truth nothing is missing).
    The chain runs with these in place of generated answers to measure what the later stages do with perfect
    input (``pancapchain infer --oracle-through``). A sample with no entity answers "None" in every stage.
    """
    if through not in ORACLE_STAGES:
        raise ValueError(f"oracle stages end at one of {ORACLE_STAGES}, not {through!r}")
    _check_styles(item_order, label_answer)
    w, h = sample.width, sample.height
    items = _ordered_items(sample, codec, item_order)
    answers = {
        "localize": format_items(_unique(box_only(items), codec, w, h), codec, w, h),
        "label": format_items(items, codec, w, h, box_first=label_answer == "box_first"),
        "discover": format_items([], codec, w, h),
    }
    return {stage: answers[stage] for stage in ORACLE_STAGES[: ORACLE_STAGES.index(through) + 1]}
