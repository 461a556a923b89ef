"""Masks at inference: one teacher-forced forward over (stage prompt + answer) gives every box group's query.

The query of an entity is the last hidden state (final norm output) at the last token of its box group, exactly
as in training (``pancapchain.mask.targets``); the pixel branch reads the projected image features that the
chain already computed once per image. Logits on the padded square are cropped and resized to the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
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


class MaskPredictor:
    def __init__(self, model, processor, head: MaskHead, system: str | None):
        self.model, self.processor, self.head, self.system = model, processor, head, system
        self.tokenizer = processor.tokenizer
        self.final_states = FinalStates(model)  # hooked only around the teacher-forced forward below

    @torch.no_grad()
    def predict(
        self, features: BaseModelOutputWithPooling, index: int, prompt: str, answer: str, height: int, width: int
    ) -> list[GroupMask]:
        """Masks for every box group of ``answer`` (image ``index`` of ``features``), teacher-forced after ``prompt``."""
        groups = find_box_groups(answer)
        if not groups:
            return []
        text = expand_image_tokens(self.processor, render_prompt(self.processor, prompt, self.system), height, width)
        prompt_ids = self.tokenizer(text)["input_ids"]
        completion = completion_text(answer)
        enc = self.tokenizer(completion, add_special_tokens=False, return_offsets_mapping=True)
        targets = [MaskTarget(g.end, g.end, g.end, i, {}) for i, g in enumerate(groups)]
        located = token_positions(enc["offset_mapping"], targets, len(completion) - len(answer))
        groups = [g for g, loc in zip(groups, located) if loc is not None]
        located = [loc for loc in located if loc is not None]
        if not groups:
            return []
        device = next(self.model.parameters()).device
        input_ids = torch.tensor([prompt_ids + enc["input_ids"]], device=device)
        image = BaseModelOutputWithPooling(pooler_output=[features.pooler_output[index]])
        with self.final_states.capture():
            self.model(input_ids=input_ids, mm_encoder_outputs={"image": image})
        positions = torch.tensor([len(prompt_ids) + end for end, _ in located], device=device)
        states = self.final_states.take()[0, positions]
        patch = features.pooler_output[index][None]
        codec = BoxCodec("normalized")  # decode_group reads each group's own format
        boxes = torch.tensor([box_on_square(codec.decode_group(g, width, height)[0], width, height) for g in groups],
                             device=device)
        [logits] = self.head(patch, [states], [boxes])
        logits = logits_to_image(logits.float(), height, width)
        probs = torch.sigmoid(logits)
        out = []
        for k, (group, prob) in enumerate(zip(groups, probs)):
            mask = (logits[k] > 0).cpu().numpy()
            score = float(prob[logits[k] > 0].mean()) if mask.any() else 0.0
            out.append(GroupMask(group, mask, score))
        return out


def refine_with_candidates(masks: list[GroupMask], candidates: list[np.ndarray], tau: float = 0.5) -> None:
    """DiffPNG SMR in place: each predicted mask becomes the union of the candidates it agrees with."""
    for gm in masks:
        gm.mask = smr_refine(gm.mask, candidates, tau)
