"""Masks at inference: one teacher-forced forward over (stage prompt + answer) gives every box group's query.

The query of an entity is the last hidden state (final norm output) at the last token of its box group, exactly
as in training (``pancapchain.mask.targets``); the pixel branch reads the projected image features that the
chain already computed once per image. Logits on the padded square are cropped and resized to the image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor
from transformers.modeling_outputs import BaseModelOutputWithPooling

from pancapchain.data.boxes import BoxCodec, BoxGroup, find_box_groups
from pancapchain.mask.head import MaskHead
from pancapchain.mask.refine import smr_refine
from pancapchain.mask.rle import encode_rle, logits_to_image
from pancapchain.mask.targets import MaskTarget, box_on_square, token_positions
from pancapchain.model.chat import completion_text, expand_image_tokens, render_prompt
from pancapchain.model.states import FinalStates


@dataclass
class GroupMask:
    """The predicted mask of one box group of an answer text."""

    group: BoxGroup
    mask: np.ndarray  # (H, W) bool on the original image
    score: float  # mean sigmoid probability inside the predicted mask (0 when empty)

    def rle(self) -> dict:
        return encode_rle(self.mask)


class MaskRequest(NamedTuple):
    """One answer to read masks from: image ``index`` of the features, its prompt, answer and original size."""

    index: int
    prompt: str
    answer: str
    height: int
    width: int


@dataclass
class _Prepared:
    """A request tokenized: prompt + answer ids and, per located box group, its last token's position."""

    request: MaskRequest
    groups: list[BoxGroup]
    input_ids: list[int]
    positions: list[int]


class MaskPredictor:
    def __init__(self, model, processor, head: MaskHead, system: str | None):
        self.model, self.processor, self.head, self.system = model, processor, head, system
        self.tokenizer = processor.tokenizer
        self.final_states = FinalStates(model)  # hooked only around the teacher-forced forward below

    def predict(
        self, features: BaseModelOutputWithPooling, index: int, prompt: str, answer: str, height: int, width: int
    ) -> list[GroupMask]:
        """Masks for every box group of ``answer`` (image ``index`` of ``features``), teacher-forced after ``prompt``."""
        return self.predict_many(features, [MaskRequest(index, prompt, answer, height, width)])[0]

    @torch.no_grad()
    def predict_many(self, features: BaseModelOutputWithPooling, requests: Sequence[MaskRequest]) -> list[list[GroupMask]]:
        """:meth:`predict` for several answers in one teacher-forced forward (rows right-padded: a causal model's
        states before a row's pads do not depend on them). One list of masks per request, in order.

        A row's logits then differ from its own forward's by float rounding (the batch's shapes differ), which can
        flip a pixel whose logit is near 0: stage-1 views use it (their masks only give boxes, which land on the
        location grid), the masks the chain writes out are read one answer at a time so that they do not depend
        on which images share a batch or a process (``pancapchain infer`` on several processes writes the same
        file as one)."""
        prompt_ids: dict[tuple[str, int, int], list[int]] = {}  # stage-1 views share one prompt per image size
        prepared = [self._prepare(r, prompt_ids) for r in requests]
        with_groups = [i for i, p in enumerate(prepared) if p.groups]
        out: list[list[GroupMask]] = [[] for _ in prepared]
        if with_groups:
            rows = [prepared[i] for i in with_groups]
            for i, masks in zip(with_groups, self._masks(features, rows, self._final_states(features, rows))):
                out[i] = masks
        return out

    def _prepare(self, request: MaskRequest, prompt_cache: dict) -> _Prepared:
        """Token ids of the rendered prompt + answer and the positions of the answer's box groups' last tokens
        (``prompt_cache``: the prompts' ids by (prompt, height, width), filled here)."""
        groups = find_box_groups(request.answer)
        if not groups:
            return _Prepared(request, [], [], [])
        key = (request.prompt, request.height, request.width)
        if key not in prompt_cache:
            text = expand_image_tokens(self.processor, render_prompt(self.processor, request.prompt, self.system),
                                       request.height, request.width)
            prompt_cache[key] = self.tokenizer(text)["input_ids"]
        prompt_ids = prompt_cache[key]
        completion = completion_text(request.answer)
        enc = self.tokenizer(completion, add_special_tokens=False, return_offsets_mapping=True)
        targets = [MaskTarget(g.end, g.end, g.end, i, {}) for i, g in enumerate(groups)]
        located = token_positions(enc["offset_mapping"], targets, len(completion) - len(request.answer))
        kept = [(g, len(prompt_ids) + loc[0]) for g, loc in zip(groups, located) if loc is not None]
        return _Prepared(request, [g for g, _ in kept], prompt_ids + enc["input_ids"], [pos for _, pos in kept])

    def _final_states(self, features: BaseModelOutputWithPooling, rows: Sequence[_Prepared]) -> list[Tensor]:
        """Per row, the final-norm states ``(G_row, H)`` at its box groups' positions."""
        device = next(self.model.parameters()).device
        enc = self.tokenizer.pad({"input_ids": [p.input_ids for p in rows]}, padding_side="right", return_tensors="pt")
        input_ids, attention_mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        if bool(attention_mask.all()):  # no pads: the plain causal forward (one row: exactly the per-answer result)
            attention_mask = None
        image = BaseModelOutputWithPooling(pooler_output=[features.pooler_output[p.request.index] for p in rows])
        with self.final_states.capture():
            # only the final norm's states are read: logits of one position, not (B, L, vocab) of every row
            self.model(input_ids=input_ids, attention_mask=attention_mask, mm_encoder_outputs={"image": image},
                       logits_to_keep=1)
        hidden = self.final_states.take()  # (B, L, H)
        return [hidden[b, torch.tensor(p.positions, device=device)] for b, p in enumerate(rows)]

    def _masks(self, features: BaseModelOutputWithPooling, rows: Sequence[_Prepared],
               states: Sequence[Tensor]) -> list[list[GroupMask]]:
        """The head's masks of every row's groups, on each row's original image (one head call per feature shape:
        every row of the tiny recipe's tower)."""
        device = states[0].device
        codec = BoxCodec("normalized")  # decode_group reads each group's own format
        boxes = [torch.tensor([box_on_square(codec.decode_group(g, p.request.width, p.request.height)[0],
                                             p.request.width, p.request.height) for g in p.groups], device=device)
                 for p in rows]
        patches = [features.pooler_output[p.request.index] for p in rows]
        pixels = self._pixels(features, rows)
        logits: list[Tensor | None] = [None] * len(rows)
        for shape in {tuple(patch.shape) for patch in patches}:
            same = [b for b, patch in enumerate(patches) if tuple(patch.shape) == shape]
            same_pixels = torch.stack([pixels[b] for b in same]) if pixels is not None else None
            for b, row_logits in zip(same, self.head(torch.stack([patches[b] for b in same]),
                                                     [states[b] for b in same], [boxes[b] for b in same],
                                                     same_pixels)):
                logits[b] = row_logits
        return [self._group_masks(p, row_logits) for p, row_logits in zip(rows, logits)]

    def _pixels(self, features, rows: Sequence[_Prepared]) -> list[Tensor] | None:
        """Per row, the (3, H, W) pixels its image's features came from, when the head reads pixels."""
        if not self.head.cfg.pixel_skip:
            return None
        pixels = getattr(features, "pixel_values", None)
        if pixels is None:
            raise ValueError("this mask head reads the image pixels (pixel_skip): encode the images with "
                             "Generator.encode, whose features carry them")
        return [pixels[p.request.index] for p in rows]

    @staticmethod
    def _group_masks(row: _Prepared, logits: Tensor) -> list[GroupMask]:
        """``logits`` (G, S, S) on the padded square -> the row's masks on its original image."""
        logits = logits_to_image(logits.float(), row.request.height, row.request.width)
        probs = torch.sigmoid(logits)
        masks = []
        for k, group in enumerate(row.groups):
            inside = logits[k] > 0
            score = float(probs[k][inside].mean()) if inside.any() else 0.0
            masks.append(GroupMask(group, inside.cpu().numpy(), score))
        return masks


def refine_with_candidates(masks: list[GroupMask], candidates: list[np.ndarray], tau: float = 0.5) -> None:
    """DiffPNG SMR in place: each predicted mask becomes the union of the candidates it agrees with."""
    for gm in masks:
        gm.mask = smr_refine(gm.mask, candidates, tau)
