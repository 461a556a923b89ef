"""Batched generation with pre-computed image features (transformers' ``mm_encoder_outputs``).

``Generator.encode`` runs the vision tower + projector once; ``Generator.generate`` feeds those features to
``model.generate`` for any number of stage prompts, left-padded, so nothing is re-encoded.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from PIL import Image
from transformers import LogitsProcessorList
from transformers.modeling_outputs import BaseModelOutputWithPooling

from pancapchain.constants import BOX_CLOSE, BOX_OPEN, DIRECT, GIVEN_BOX_STAGES, LOC_TOKENS, STAGES
from pancapchain.infer.given_boxes import GivenBoxes
from pancapchain.infer.late_boxes import break_ids, closing_paragraph_start
from pancapchain.infer.references import NamedReferences
from pancapchain.infer.repeats import NoRepeatText, RepeatStop
from pancapchain.infer.views import VIEW_SHIFTS, total_views
from pancapchain.model.chat import expand_image_tokens, render_prompt
from pancapchain.model.outputs import per_image_features


@dataclass
class ImageFeatures(BaseModelOutputWithPooling):
    """The projected image features of encoded images (``pooler_output``: per image (N_tokens, D)), with the
    pixel values the tower read (``pixel_values``: per image (3, H, W)), for a mask head that reads pixels."""

    pixel_values: list | None = None

# Per-stage generation budgets: boxes-only and tagged lists are short; captions are long.
DEFAULT_MAX_NEW_TOKENS = {"localize": 512, "label": 768, "discover": 512, "caption": 1024, DIRECT: 1024}


@dataclass
class GenerationOptions:
    """Decoding settings of the chain. Greedy by default (the paper's ``temperature 0``)."""

    max_new_tokens: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_MAX_NEW_TOKENS))
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    stop_after: str | None = None  # a stage name: stop the chain after it
    stop_on_repeat: bool = True  # end an answer that starts to loop (pancapchain.infer.repeats)
    # label and caption answers may only write boxes their prompt gives (pancapchain.infer.given_boxes;
    # location-token format only)
    given_boxes: bool = True
    # of those, the stages whose answer writes every given box once, in the prompt's order (GivenBoxes ordered)
    ordered_boxes: tuple[str, ...] = ("label", "caption")
    # captions: a token that would repeat a run of this many tokens of the same answer is forbidden, so a
    # looping caption goes on with new text instead of being ended by the repeat guard (0: off;
    # pancapchain.infer.repeats.NoRepeatText; measured in docs/learning_quality.md)
    no_repeat_ngram: int = 8
    # captions: a tag written right after "the" must be the tag of an entity the caption already named
    # (pancapchain.infer.references; box-first captions of a checkpoint that stores its training tags)
    named_references: bool = True
    # the known tags for that rule; empty: the ones the checkpoint stores
    reference_tags: tuple[str, ...] = ()
    # stage 3: a generated item whose boxes all overlap a stage-2 box at IoU >= this is the known entity found
    # again and is dropped (counted as ``refinds``); 0 keeps every item (docs/learning_quality.md)
    refind_iou: float = 0.5
    # ordered captions that wanted to end with boxes left after a box-less closing paragraph are decoded again
    # from before it, paragraph breaks held until the boxes are written (pancapchain.infer.late_boxes)
    late_boxes: bool = True
    # stage 1 is decoded on this many copies of the image moved by half a vision patch (1: the image only), and
    # an entity is kept when at least ``localize_votes`` of them find it (pancapchain.infer.views)
    localize_views: int = 1
    localize_votes: int = 1
    # each view is also decoded mirrored left to right: 2 x localize_views views vote
    localize_mirror: bool = False
    # with views: a voted entity overlapping (IoU >= this) one that more views found is dropped (0: off)
    localize_suppress: float = 0.0
    # with views: a stage-3 find is kept only when at least this many views boxed it (0: every find is kept)
    discover_seen: int = 0
    # with views: this many views of every image go through one generate call (rows per call: images x this).
    # Greedy answers do not depend on it; a CPU decodes more rows per call faster, a GPU needs the memory.
    localize_view_batch: int = 1
    # with views and a mask head: each view's stage-1 boxes become the bounding boxes of the masks the head
    # predicts from that view's answer, before the vote (pancapchain.infer.view_stages.mask_boxes)
    localize_mask_boxes: bool = False

    def __post_init__(self) -> None:
        if self.stop_after is not None and self.stop_after not in STAGES:
            raise ValueError(f"stop_after={self.stop_after!r}: choose one of {STAGES}")
        if self.no_repeat_ngram < 0 or self.no_repeat_ngram == 1:
            raise ValueError(f"no_repeat_ngram={self.no_repeat_ngram}: 0 (off) or a run length >= 2")
        if self.ordered_boxes and not self.given_boxes:
            raise ValueError(f"ordered_boxes={self.ordered_boxes!r} orders given boxes: needs given_boxes=True")
        if set(self.ordered_boxes) - set(GIVEN_BOX_STAGES):
            raise ValueError(f"ordered_boxes={self.ordered_boxes!r}: only {GIVEN_BOX_STAGES} are given boxes")
        if not 0.0 <= self.refind_iou <= 1.0:
            raise ValueError(f"refind_iou={self.refind_iou}: an IoU in [0, 1] (0 keeps every stage-3 item)")
        if not 1 <= self.localize_views <= len(VIEW_SHIFTS):
            raise ValueError(f"localize_views={self.localize_views}: between 1 and {len(VIEW_SHIFTS)}")
        if not 1 <= self.localize_votes <= self.total_views:
            raise ValueError(f"localize_votes={self.localize_votes}: between 1 and the {self.total_views} views")
        if not 0.0 <= self.localize_suppress <= 1.0 or (self.localize_suppress and self.total_views == 1):
            raise ValueError(f"localize_suppress={self.localize_suppress}: an IoU in [0, 1] (0: off), with more "
                             "than one view")
        if not 0 <= self.discover_seen <= self.total_views or (self.discover_seen and self.total_views == 1):
            raise ValueError(f"discover_seen={self.discover_seen}: 0 (off) or 1..{self.total_views} (the views), "
                             "with more than one view")
        if self.localize_mask_boxes and self.total_views == 1:
            raise ValueError("localize_mask_boxes moves each stage-1 view's boxes before the vote: it needs views")
        if self.localize_view_batch < 1:
            raise ValueError(f"localize_view_batch={self.localize_view_batch}: at least 1 view per generate call")
        unknown = set(self.max_new_tokens) - set(STAGES) - {DIRECT}
        if unknown:
            raise ValueError(f"max_new_tokens has unknown stages {sorted(unknown)}")

    @property
    def total_views(self) -> int:
        """The stage-1 views that vote: the shifted copies, twice with their mirror images."""
        return total_views(self.localize_views, self.localize_mirror)

    def for_stage(self, stage: str) -> dict:
        kwargs: dict = {"max_new_tokens": self.max_new_tokens.get(stage, DEFAULT_MAX_NEW_TOKENS[stage])}
        if self.do_sample:
            kwargs.update(do_sample=True, temperature=self.temperature, top_p=self.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs


class Decoded(NamedTuple):
    """One generated answer: ``truncated`` = hit max_new_tokens; ``repeat_stopped`` = ended on a loop."""

    text: str
    truncated: bool
    repeat_stopped: bool = False


class Generator:
    """Wraps a llava-hf model (or its peft wrapper) and processor for feature reuse and batched decoding."""

    def __init__(self, model, processor):
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode(self, images: Sequence[Image.Image]) -> ImageFeatures:
        """Image features for ``images``: ``pooler_output`` is a list of (N_image_tokens, D) tensors,
        ``pixel_values`` the (3, H, W) inputs the tower saw (a mask head with ``pixel_skip`` reads them)."""
        pixels = self.processor.image_processor([img.convert("RGB") for img in images], return_tensors="pt")
        pixel_values = pixels["pixel_values"].to(self.device, dtype=self.model.dtype)
        out = self.model.get_image_features(pixel_values=pixel_values, return_dict=True)
        return ImageFeatures(pooler_output=per_image_features(out.pooler_output, len(images)),
                             pixel_values=list(pixel_values.unbind(0)))

    @staticmethod
    def select(features: ImageFeatures, indices: Sequence[int]) -> ImageFeatures:
        """The features of a subset of the encoded images, in ``indices`` order."""
        pixels = getattr(features, "pixel_values", None)
        return ImageFeatures(pooler_output=[features.pooler_output[i] for i in indices],
                             pixel_values=[pixels[i] for i in indices] if pixels is not None else None)

    def tokenize(self, prompts: Sequence[str], sizes: Sequence[tuple[int, int]], system: str | None):
        """Left-padded ``input_ids``/``attention_mask`` of chat-rendered prompts with expanded image tokens."""
        texts = [
            expand_image_tokens(self.processor, render_prompt(self.processor, p, system), h, w)
            for p, (h, w) in zip(prompts, sizes)
        ]
        # generation appends on the right, so pads must sit on the left (per call: the tokenizer is shared)
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, padding_side="left")
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        sizes: Sequence[tuple[int, int]],
        features: BaseModelOutputWithPooling,
        system: str | None,
        generate_kwargs: dict,
        repeat_guard: str | None = None,
        given_boxes: bool = False,
        no_repeat_ngram: int = 0,
        ordered_boxes: bool = False,
        reference_tags: Sequence[str] = (),
        late_boxes: bool = False,
        *,
        seed: int = 0,
    ) -> list[Decoded]:
        """Decode one answer per prompt. ``repeat_guard``: "items" (item lists) or "text" (captions) stops a
        row that starts to loop (see pancapchain.infer.repeats); None decodes to EOS or max_new_tokens.
        ``given_boxes``: every box of an answer is one of its prompt's boxes (pancapchain.infer.given_boxes);
        with ``ordered_boxes`` every one of them, once each, in the prompt's order.
        ``no_repeat_ngram`` > 0: no answer repeats a text run of that many tokens (repeats.NoRepeatText).
        ``reference_tags``: the known tags; a tag written right after "the" must be one the answer has already
        named with a box (references.NamedReferences). Empty: off.
        ``late_boxes`` (with ``ordered_boxes``): an answer that wanted to end with given boxes left, after a
        box-less paragraph, is decoded again from before that paragraph (pancapchain.infer.late_boxes).

        Sampling (``do_sample``) draws from torch's RNG seeded with ``seed`` for this call only: the caller's
        RNG state is restored afterwards, so one call's seed never leaks into another's."""
        input_ids, attention_mask = self.tokenize(prompts, sizes, system)
        build = dict(repeat_guard=repeat_guard, given_boxes=given_boxes, no_repeat_ngram=no_repeat_ngram,
                     ordered_boxes=ordered_boxes, reference_tags=reference_tags)
        processors, given, guard = self._processors(input_ids, **build)
        new_tokens = self._decode(input_ids, attention_mask, features, processors, guard, generate_kwargs, seed)
        results = self._results(new_tokens, guard, generate_kwargs["max_new_tokens"])
        if late_boxes and given is not None and given.ordered:
            for row, end in sorted(given.early_end.items()):
                prompt_ids = input_ids[row : row + 1, attention_mask[row].bool()]
                results[row] = self._rewrite_late_boxes(prompt_ids, new_tokens[row].tolist(), end, self.select(
                    features, [row]), build, generate_kwargs, seed) or results[row]
        return results

    def _processors(self, input_ids: torch.Tensor, *, repeat_guard, given_boxes, no_repeat_ngram, ordered_boxes,
                    reference_tags, hold_breaks: Sequence[int] = ()):
        """(logits processors, the GivenBoxes among them or None, the repeat guard or None) for prompts (B, T)."""
        processors = LogitsProcessorList()
        if no_repeat_ngram:
            box_ids = set(self.tokenizer.convert_tokens_to_ids([BOX_OPEN, BOX_CLOSE, *LOC_TOKENS]))
            processors.append(NoRepeatText(input_ids.shape[1], no_repeat_ngram, box_ids))
        given = (GivenBoxes.from_prompts(input_ids, self.tokenizer, ordered_boxes, hold_breaks)
                 if given_boxes else None)
        if given is not None:
            processors.append(given)
        references = NamedReferences.build(input_ids.shape[1], self.tokenizer, reference_tags) if reference_tags else None
        if references is not None:
            processors.append(references)
        return processors, given, self._repeat_stop(input_ids.shape[1], repeat_guard)

    def _decode(self, input_ids, attention_mask, features, processors, guard, generate_kwargs, seed) -> torch.Tensor:
        """The new tokens (B, N) ``model.generate`` writes after ``input_ids`` (B, T)."""
        with self._seeded(seed if generate_kwargs.get("do_sample") else None):
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                mm_encoder_outputs={"image": features},
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
                stopping_criteria=[guard] if guard else None,
                logits_processor=processors or None,
                **generate_kwargs,
            )
        return out[:, input_ids.shape[1] :]

    def _results(self, new_tokens: torch.Tensor, guard: RepeatStop | None, budget: int) -> list[Decoded]:
        looped = guard.stopped.tolist() if guard is not None and guard.stopped is not None else [False] * len(new_tokens)
        results = []
        for row, stopped in zip(new_tokens, looped):
            ended = bool((row == self.tokenizer.eos_token_id).any())
            text = self.tokenizer.decode(row, skip_special_tokens=True).strip()
            cut = not ended and not stopped and len(row) >= budget
            results.append(Decoded(text, cut, bool(stopped and not ended)))
        return results

    def _rewrite_late_boxes(self, prompt_ids: torch.Tensor, answer: list[int], end: int, features, build: dict,
                            generate_kwargs: dict, seed: int) -> Decoded | None:
        """One answer decoded again from before its box-less closing paragraph, with paragraph breaks held
        until its given boxes are written (pancapchain.infer.late_boxes); None when there is nothing to
        rewrite. ``prompt_ids``: (1, T) without padding; ``answer``: the first decode's new tokens."""
        breaks = break_ids(self.tokenizer)
        open_id = self.tokenizer.convert_tokens_to_ids(BOX_OPEN)
        start = closing_paragraph_start(answer, end, set(breaks), open_id)
        budget = generate_kwargs["max_new_tokens"] - (start or 0)
        if start is None or budget <= 0:
            return None
        processors, _given, guard = self._processors(prompt_ids, **build, hold_breaks=breaks)
        prefix = torch.tensor([answer[:start]], dtype=prompt_ids.dtype, device=prompt_ids.device)
        ids = torch.cat([prompt_ids, prefix], dim=1)
        more = self._decode(ids, torch.ones_like(ids), features, processors, guard,
                            {**generate_kwargs, "max_new_tokens": budget}, seed)
        full = torch.cat([prefix, more], dim=1)
        return self._results(full, guard, generate_kwargs["max_new_tokens"])[0]

    @contextmanager
    def _seeded(self, seed: int | None) -> Iterator[None]:
        """torch's RNG (CPU and this model's GPU) seeded with ``seed`` inside, restored on exit; None: untouched."""
        if seed is None:
            yield
            return
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield

    def _repeat_stop(self, prompt_len: int, kind: str | None) -> RepeatStop | None:
        if kind is None:
            return None
        if kind not in ("items", "text"):
            raise ValueError(f"repeat_guard must be 'items', 'text' or None, not {kind!r}")
        close_id = self.tokenizer.convert_tokens_to_ids(BOX_CLOSE)
        separators = tuple(self.tokenizer(", ", add_special_tokens=False)["input_ids"])
        return RepeatStop(prompt_len, close_id, kind == "items", ignore_ids=separators)

    @torch.no_grad()
    def generate_reencoding(
        self, prompt: str, image: Image.Image, system: str | None, generate_kwargs: dict
    ) -> tuple[str, bool]:
        """The paper's way (reference for tests/benchmarks): one image, pixels passed and encoded at this call."""
        text = render_prompt(self.processor, prompt, system)
        enc = self.processor(text=[text], images=[image.convert("RGB")], return_tensors="pt").to(self.device)
        out = self.model.generate(
            **enc, pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id,
            **generate_kwargs,
        )
        row = out[0, enc["input_ids"].shape[1] :]
        ended = bool((row == self.tokenizer.eos_token_id).any())
        return self.tokenizer.decode(row, skip_special_tokens=True).strip(), (
            not ended and len(row) >= generate_kwargs["max_new_tokens"]
        )
