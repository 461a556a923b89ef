"""``PancapChain``: the four-stage chain, batched across images, with vision features computed once per image.

The paper's script runs one image at a time and re-encodes the image at each of the four stages. Here the
vision tower + projector run once per batch of images (``encode``), and every stage's ``generate`` reuses the
features through transformers' ``mm_encoder_outputs`` (the same tensors the model would compute itself, so
outputs are unchanged). Stages are batched across images with left padding.

Stage k's prompt is built from the earlier stages' *parsed* items by the function that builds the training
prompts (``pancapchain.data.stage_prompt``), so a user edit of any stage (see ``pancapchain.infer.chat``)
reaches every later stage.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image

from pancapchain.constants import DIRECT, GIVEN_BOX_STAGES, STAGES
from pancapchain.data.boxes import BoxCodec, box_iou
from pancapchain.data.caption_layout import to_tag_first
from pancapchain.data.caption_parser import caption_entities, parse_caption
from pancapchain.data.prediction import PredictedEntity, Prediction, StageRecord
from pancapchain.data.prompts import PromptSet, load_prompts
from pancapchain.data.stage_parse import (
    StageItem,
    drop_refinds,
    format_items,
    merge_discovered,
    parse_stage_output,
)
from pancapchain.data.stage_prompt import conversation_prompt, stage_prompt
from pancapchain.infer.generation import GenerationOptions, Generator
from pancapchain.infer.masks import MaskPredictor
from pancapchain.infer.references import REFERENCE_TAGS_KEY
from pancapchain.infer.view_stages import run_localize_views
from pancapchain.infer.views import keep_seen
from pancapchain.mask.head import load_mask_head

# What ``run`` generates, in order. "direct" is the paper's baseline (one prompt, image -> caption); its answer
# is stored in the caption slot, so results, masks and evaluation read it like a chain's caption.
PLANS: dict[str, tuple[str, ...]] = {
    "chain": STAGES,
    "no-discover": ("localize", "label", "caption"),
    "direct": (DIRECT,),
}


def output_slot(task: str) -> str:
    """The ChainState.outputs key a task's answer is stored under."""
    return "caption" if task == DIRECT else task


@dataclass
class StageOutput:
    """One stage's result for one image: raw text, parsed items, and what went wrong."""

    stage: str
    prompt: str
    raw: str
    items: tuple[StageItem, ...]
    malformed: tuple[str, ...] = ()
    duplicates: int = 0
    truncated: bool = False
    edited: bool = False
    repeat_stopped: bool = False  # generation ended on a loop (pancapchain.infer.repeats), not at max tokens
    refinds: int = 0  # stage 3: generated items dropped as a known entity found again (GenerationOptions.refind_iou)
    unseen: int = 0  # stage 3: generated items dropped as no stage-1 view boxed them (GenerationOptions.discover_seen)

    def record(self) -> StageRecord:
        """This output as it is written in a prediction row."""
        items = tuple((it.tag, it.boxes) for it in self.items)
        return StageRecord(self.prompt, self.raw, items, self.malformed, self.duplicates, self.truncated,
                           self.edited, self.repeat_stopped, self.refinds, self.unseen)


@dataclass
class ChainState:
    """Everything known about one image while the chain runs (the chat REPL edits it between stages)."""

    id: str
    image: Image.Image
    outputs: dict[str, StageOutput] = field(default_factory=dict)
    masks: list = field(default_factory=list)  # GroupMask per box group of the caption (with a mask head)
    view_boxes: list = field(default_factory=list)  # per stage-1 view: its boxes on the original image (views only)

    @property
    def width(self) -> int:
        return self.image.width

    @property
    def height(self) -> int:
        return self.image.height

    def items(self, stage: str) -> list[StageItem]:
        out = self.outputs.get(stage)
        return list(out.items) if out else []

    def entities(self) -> list[StageItem]:
        """Labelled entities known before captioning: stage-2 items + stage-3 discoveries."""
        return merge_discovered(self.items("label"), self.items("discover"))


class PancapChain:
    """Run the chain on images. ``model`` is a llava-hf model (or a peft wrapper of one) in eval mode."""

    def __init__(self, model, processor, prompts: PromptSet, codec: BoxCodec, system: str | None, mask_head=None,
                 item_order: str = "caption", label_answer: str = "tag_first", caption_mentions: str = "tag_first",
                 reference_tags: Sequence[str] = (), chain_rows: str = "stages"):
        self.generator = Generator(model, processor)
        # how the model was taught to write stage answers (the parser reads either layout; oracles write these)
        self.item_order, self.label_answer = item_order, label_answer
        self.caption_mentions = caption_mentions
        self.reference_tags = tuple(reference_tags)  # the training data's tags (checkpoint meta), for NamedReferences
        self.chain_rows = chain_rows  # "conversation": label and caption are asked as later turns (data.task_rows)
        self.prompts = prompts
        self.codec = codec
        self.system = system
        self.masks = MaskPredictor(model, processor, mask_head.eval(), system) if mask_head is not None else None
        # whether the head was trained on stage-1 answers (GenerationOptions.localize_mask_boxes reads them);
        # from_pretrained sets it from the checkpoint's metadata, a caller building a chain vouches for its head
        self.stage1_masks = mask_head is not None

    @classmethod
    def from_pretrained(cls, path: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> PancapChain:
        """Load a training checkpoint or an export; prompt version, box format and system text come from its metadata."""
        from pancapchain.model.checkpoint import MASK_STAGES_KEY, load_checkpoint

        loaded = load_checkpoint(path, dtype=dtype, device=device)
        meta = loaded.meta
        head = load_mask_head(path)
        chain = cls(
            loaded.model,
            loaded.processor,
            load_prompts(meta.get("prompt_version", "v1")),
            BoxCodec(meta.get("box_format", "asmv2")),
            meta.get("system_prompt"),
            head.to(device) if head is not None else None,
            meta.get("item_order", "caption"),
            meta.get("label_answer", "tag_first"),
            meta.get("caption_mentions", "tag_first"),
            meta.get(REFERENCE_TAGS_KEY, ()),
            meta.get("chain_rows", "stages"),
        )
        # a conversation row's localize turn gets no mask targets (the row is a caption row to the mask targets)
        chain.stage1_masks = head is not None and "localize" in meta.get(MASK_STAGES_KEY, ()) and \
            chain.chain_rows == "stages"
        return chain

    # ------------------------------------------------------------------------------------ prompts
    def stage_prompt(self, stage: str, state: ChainState) -> str:
        """The stage's user prompt, filled from the earlier stages' parsed items (the training prompts' filler)."""
        earlier = {slot: out.items for slot, out in state.outputs.items()}
        return self.prompt_from_items(stage, earlier, state.width, state.height)

    def prompt_from_items(self, stage: str, earlier: Mapping[str, Sequence[StageItem]], width: int, height: int) -> str:
        """The stage's user prompt from the items of earlier stages (by output slot), as the checkpoint was trained:
        a follow-up turn for label and caption when it trained ``chain_rows: conversation``."""
        if self.chain_rows == "conversation" and stage in ("label", "caption"):
            return conversation_prompt(self.prompts, stage, earlier, codec=self.codec, width=width, height=height,
                                       label_box_first=self.label_answer == "box_first")
        return stage_prompt(self.prompts, stage, earlier, codec=self.codec, width=width, height=height)

    def set_output(self, state: ChainState, stage: str, raw: str, prompt: str = "", truncated: bool = False,
                   edited: bool = False) -> StageOutput:
        """Parse ``raw`` as the output of ``stage`` and store it (generated text or user-given text)."""
        slot = output_slot(stage)
        if slot == "localize" and edited:
            state.view_boxes = []  # a given or edited stage 1 has no views for --discover-seen to count
        parsed = parse_stage_output(slot, self.tag_first(slot, raw), self.codec, state.width, state.height)
        out = StageOutput(slot, prompt, raw, parsed.items, parsed.malformed, parsed.duplicates, truncated, edited)
        state.outputs[slot] = out
        return out

    def tag_first(self, slot: str, raw: str) -> str:
        """A stage answer in the layout the parser and the scorer read (captions trained box first are moved back)."""
        return to_tag_first(raw) if slot == "caption" and self.caption_mentions == "box_first" else raw

    def set_items(self, state: ChainState, stage: str, items: Sequence[StageItem]) -> StageOutput:
        """Replace a stage's items (a user edit); the raw text is rewritten from them."""
        prompt = state.outputs[stage].prompt if stage in state.outputs else ""
        box_first = stage == "label" and self.label_answer == "box_first"
        raw = format_items(items, self.codec, state.width, state.height, box_first=box_first)
        return self.set_output(state, stage, raw, prompt, edited=True)

    # --------------------------------------------------------------------------------------- run
    def run_stage(self, stage: str, states: Sequence[ChainState], features, options: GenerationOptions) -> None:
        """Generate ``stage`` for every state in one batch (``features`` from ``encode`` for these states)."""
        if stage == "localize" and options.total_views > 1:
            run_localize_views(self, states, features, options)
            return
        prompts = [self.stage_prompt(stage, s) for s in states]
        for state, prompt, decoded in zip(states, prompts, self.decode_stage(stage, states, prompts, features, options)):
            out = self.set_output(state, stage, decoded.text, prompt, decoded.truncated)
            out.repeat_stopped = decoded.repeat_stopped
            if stage == "discover":  # generated finds only: a user's edit of stage 3 is kept as given
                kept, out.refinds = drop_refinds(out.items, state.items("label"), options.refind_iou)
                if options.discover_seen and state.view_boxes:
                    kept, out.unseen = keep_seen(kept, state.view_boxes, options.discover_seen)
                out.items = tuple(kept)
        if output_slot(stage) == "caption":
            self.predict_masks(states, features)

    def decode_stage(self, stage: str, states: Sequence[ChainState], prompts: Sequence[str], features,
                     options: GenerationOptions) -> list:
        """The generated answers (``Decoded``) of ``stage`` to ``prompts``, one per state, in one batch."""
        guard = None if not options.stop_on_repeat else ("text" if output_slot(stage) == "caption" else "items")
        given = options.given_boxes and stage in GIVEN_BOX_STAGES
        return self.generator.generate(
            prompts, [(s.height, s.width) for s in states], features, self.system, options.for_stage(stage), guard,
            given_boxes=given,
            ordered_boxes=given and stage in options.ordered_boxes,
            no_repeat_ngram=options.no_repeat_ngram if output_slot(stage) == "caption" else 0,
            reference_tags=self.caption_reference_tags(stage, options),
            late_boxes=options.late_boxes and output_slot(stage) == "caption",
            seed=options.seed,
        )

    @property
    def patch_fraction(self) -> float:
        """The vision tower's patch as a fraction of its input side (the step of the shifted views)."""
        vision = self.generator.model.config.vision_config
        return vision.patch_size / vision.image_size

    def caption_reference_tags(self, stage: str, options: GenerationOptions) -> tuple[str, ...]:
        """The known tags for NamedReferences in this stage's answers: box-first captions only (a tag-first caption
        names an entity with "the" before its box, which the rule would forbid); empty = off."""
        if output_slot(stage) != "caption" or self.caption_mentions != "box_first" or not options.named_references:
            return ()
        return options.reference_tags or self.reference_tags

    def predict_masks(self, states: Sequence[ChainState], features) -> None:
        """With a mask head: a mask for every box group of each state's caption (teacher-forced forward)."""
        if self.masks is None:
            return
        for i, state in enumerate(states):  # one answer per forward: the masks written out do not depend on the batch
            out = state.outputs["caption"]
            state.masks = self.masks.predict(features, i, out.prompt, out.raw, state.height, state.width)

    def encode(self, states: Sequence[ChainState]):
        """Vision tower + projector once for these images."""
        return self.generator.encode([s.image for s in states])

    def run(
        self,
        states: Sequence[ChainState],
        options: GenerationOptions | None = None,
        given: Sequence[Mapping[str, str]] | None = None,
        timings: dict[str, float] | None = None,
        plan: str = "chain",
    ) -> list[Prediction]:
        """Run every stage of ``PLANS[plan]`` (up to ``options.stop_after``) for ``states`` as one batch.

        ``given[i][stage]`` is a user-supplied output for image i (e.g. known boxes): that stage is not generated
        for that image. ``timings`` accumulates seconds per stage (plus "encode"). Returns one Prediction per state.
        """
        if plan not in PLANS:
            raise ValueError(f"unknown plan {plan!r}; choose one of {sorted(PLANS)}")
        options = options or GenerationOptions()
        timings = timings if timings is not None else {}
        started = time.perf_counter()
        features = self.encode(states)
        timings["encode"] = timings.get("encode", 0.0) + time.perf_counter() - started
        for stage in PLANS[plan]:
            started = time.perf_counter()
            todo = [i for i, s in enumerate(states) if not (given and stage in given[i])]
            done = sorted(set(range(len(states))) - set(todo))
            for i in done:
                self.set_output(states[i], stage, given[i][stage], self.stage_prompt(stage, states[i]), edited=True)
            if stage == "caption" and done:
                self.predict_masks([states[i] for i in done], self.generator.select(features, done))
            if todo:
                self.run_stage(stage, [states[i] for i in todo], self.generator.select(features, todo), options)
            timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - started
            if stage == options.stop_after:
                break
        return [self.prediction(s) for s in states]

    def result(self, state: ChainState) -> dict:
        """:meth:`prediction` as a JSON-ready dict."""
        return self.prediction(state).to_dict()

    def prediction(self, state: ChainState) -> Prediction:
        """Stage outputs, entities (both box formats) and the caption (normalized boxes) of one image."""
        w, h = state.width, state.height
        pred = Prediction(state.id, width=w, height=h, has_caption="caption" in state.outputs,
                          stages={stage: o.record() for stage, o in state.outputs.items()})
        if pred.has_caption:
            pred.caption_model = self.tag_first("caption", state.outputs["caption"].raw)
            pred.caption = BoxCodec("normalized").convert_text(pred.caption_model, w, h)
            mentions = caption_entities(parse_caption(pred.caption, w, h))
        else:  # stopped early: report the entities known so far
            mentions = [(it.tag or "", box) for it in self.entities_so_far(state) for box in it.boxes]
        pred.entities = [PredictedEntity(tag, tuple(round(v, 4) for v in box), self.codec.encode([box], w, h))
                         for tag, box in mentions]
        # Masks in the evaluation's format: one per entity, linked by its box (see pancapchain.eval.inputs).
        masks = zip(pred.entities, self._entity_masks(state, [box for _, box in mentions]))
        pred.masks = [{"box": list(e.box), "rle": gm.rle(), "score": round(gm.score, 4)} for e, gm in masks if gm]
        return pred

    def _entity_masks(self, state: ChainState, boxes: list) -> list:
        """The caption group mask whose box equals each entity box (None when there is no mask head)."""
        if not state.masks:
            return [None] * len(boxes)
        decoded = [(self.codec.decode_group(gm.group, state.width, state.height), gm) for gm in state.masks]
        out = []
        for box in boxes:
            hits = [gm for group_boxes, gm in decoded if any(box_iou(box, b) > 0.99 for b in group_boxes)]
            out.append(hits[0] if hits else None)
        return out

    @staticmethod
    def entities_so_far(state: ChainState) -> list[StageItem]:
        for stage in ("discover", "label", "localize"):
            if stage in state.outputs:
                return state.entities() if stage != "localize" else state.items("localize")
        return []
