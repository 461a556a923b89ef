"""Decoding that keeps a stage to the boxes its prompt gives (location-token box format only).

Stage 2 (label) tags the boxes it is given and stage 4 (caption) describes the entities it is given: their
answers should only contain boxes of the prompt. A small model learns to re-predict boxes from the image
long before it learns to copy them from the prompt (measured: 17% of the label stage's boxes and 13% of the
caption's were copies, docs/learning_quality.md), so the chain's stages drift apart. This logits processor
makes every box opened in the answer (``<box>``) continue one of the prompt's boxes, token by token, and close
after its four coordinates. Nothing else is constrained: the model still chooses which boxes to write, in
which order, and all the text around them.

``ordered`` (stages 2 and 4 by default, ``GenerationOptions.ordered_boxes``): the answer writes every box of the
prompt, once each, in the prompt's order. Stage 2's job is to tag the boxes it is given; left free, the tiny model
ended its list early and dropped 13% of them. The caption, left free, wrote 72% of its given boxes and repeated
others in their place (docs/learning_quality.md). So the k-th box opened is forced to the prompt's k-th box, the
answer cannot end (EOS) before all are written, and cannot open another after the last one, nor write a location
token outside a box (a caption held back from a further box wrote runs of them instead); where it would end
(EOS its most likely token) with boxes left, it opens the next box there. The model still writes every word
around them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import LogitsProcessor

from pancapchain.constants import BOX_CLOSE, BOX_OPEN, LOC_TOKENS

BOX_LEN = 4  # <loc> tokens per box


class GivenBoxes(LogitsProcessor):
    """Restricts each row's ``<box> l1 l2 l3 l4 </box>`` groups to the groups found in that row's prompt.

    ``prompt_len``: the (left-padded) prompt length; ``allowed[row]``: the prompt's boxes as 4-tuples of
    token ids, in prompt order, each once. A row whose prompt has no box is left free. ``ordered``: every row
    writes all its boxes in that order (``eos_id`` is then required). Scores are (batch, vocab); forbidden ids
    get -inf.
    """

    def __init__(self, prompt_len: int, allowed: Sequence[Sequence[tuple[int, ...]]], open_id: int, close_id: int,
                 ordered: bool = False, eos_id: int | None = None, loc_ids: Sequence[int] = (),
                 hold_breaks: Sequence[int] = ()):
        if ordered and eos_id is None:
            raise ValueError("ordered given boxes need the EOS id (the answer may not end before its last box)")
        self.prompt_len = prompt_len
        self.allowed = [list(boxes) for boxes in allowed]
        self.open_id, self.close_id = open_id, close_id
        self.ordered, self.eos_id = ordered, eos_id
        self.loc_ids = list(loc_ids)  # ordered mode: forbidden outside a box
        self.hold_breaks = list(hold_breaks)  # ordered mode: forbidden while boxes are left (late_boxes)
        self.early_end: dict[int, int] = {}  # ordered mode: row -> answer length where it first wanted to end

    @classmethod
    def from_prompts(cls, input_ids: torch.Tensor, tokenizer, ordered: bool = False,
                     hold_breaks: Sequence[int] = ()) -> GivenBoxes | None:
        """The processor for a batch of prompts (batch, T), or None when the tokenizer has no location tokens.
        ``hold_breaks`` (ordered): token ids not allowed while given boxes are left (newlines, in a rewrite)."""
        loc_ids = tokenizer.convert_tokens_to_ids(list(LOC_TOKENS))
        if tokenizer.unk_token_id in loc_ids or None in loc_ids:
            return None
        open_id, close_id = tokenizer.convert_tokens_to_ids([BOX_OPEN, BOX_CLOSE])
        allowed = [boxes_in(row.tolist(), open_id, close_id, set(loc_ids)) for row in input_ids]
        return cls(input_ids.shape[1], allowed, open_id, close_id, ordered, tokenizer.eos_token_id, loc_ids,
                   hold_breaks)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for row in range(scores.shape[0]):
            options = self.allowed[row]
            if not options:
                continue
            answer = input_ids[row, self.prompt_len :].tolist()
            if self.ordered:
                self._keep_order(row, answer, options, scores[row])
                continue
            next_ids = self._next_ids(answer, set(options))
            if next_ids is None:
                continue
            keep = scores[row, next_ids].clone()
            scores[row] = float("-inf")
            scores[row, next_ids] = keep
        return scores

    def _keep_order(self, row: int, answer: list[int], boxes: list[tuple[int, ...]], scores: torch.Tensor) -> None:
        """Ordered mode for one row (``scores``: (vocab,), edited in place)."""
        done = answer.count(self.close_id)  # boxes completed so far (each was forced, so each is one of ours)
        written = self._open_box(answer)
        if written is not None:
            _only(scores, self.close_id if len(written) == BOX_LEN else boxes[done][len(written)])
            return
        if done < len(boxes) and int(scores.argmax()) == self.eos_id:
            # it would end with boxes left: it opens the next one now. Denied only EOS, the tiny caption wrote
            # the closing sentences again and again until it chanced on a box (docs/learning_quality.md)
            self.early_end.setdefault(row, len(answer))
            _only(scores, self.open_id)
            return
        if done < len(boxes) and self.hold_breaks:
            scores[self.hold_breaks] = float("-inf")
        elif self.hold_breaks and not self._break_after_last_box(answer):
            # a rewrite dropped the closing paragraph: the answer may not end before it writes one again; where
            # it would end or open a box (none is left), it starts that paragraph
            if int(scores.argmax()) in (self.eos_id, self.open_id):
                _only(scores, self.hold_breaks[0])
                return
            scores[self.eos_id] = float("-inf")
        scores[self.close_id] = float("-inf")  # outside a box: a stray close would miscount the boxes written
        scores[self.loc_ids] = float("-inf")  # and a location token is debris
        scores[self.eos_id if done < len(boxes) else self.open_id] = float("-inf")

    def _break_after_last_box(self, answer: list[int]) -> bool:
        last_close = len(answer) - answer[::-1].index(self.close_id) if self.close_id in answer else 0
        return any(token in self.hold_breaks for token in answer[last_close:])

    def _next_ids(self, answer: list[int], options: set[tuple[int, ...]]) -> list[int] | None:
        """The ids allowed next, or None when the answer is not inside an open box."""
        written = self._open_box(answer)
        if written is None:
            return None
        if len(written) == BOX_LEN:
            return [self.close_id]
        ids = sorted({box[len(written)] for box in options if box[: len(written)] == written})
        return ids or None  # a prefix no given box has (cannot happen from a constrained start): leave it free

    def _open_box(self, answer: list[int]) -> tuple[int, ...] | None:
        """The location tokens written since the answer's last ``<box>``, or None when no box is open."""
        if self.open_id not in answer:
            return None
        written = tuple(answer[len(answer) - answer[::-1].index(self.open_id) :])
        return None if self.close_id in written or len(written) > BOX_LEN else written


def _only(scores: torch.Tensor, token: int) -> None:
    """Leave only ``token`` allowed in ``scores`` (vocab,), keeping its score."""
    keep = scores[token].clone()
    scores.fill_(float("-inf"))
    scores[token] = keep


def boxes_in(ids: Sequence[int], open_id: int, close_id: int, loc_ids: set[int]) -> list[tuple[int, ...]]:
    """Every ``<box> l1 l2 l3 l4 </box>`` group of a token sequence, as the 4-tuple of location-token ids, in
    order of first appearance, each once."""
    found: list[tuple[int, ...]] = []
    for i, token in enumerate(ids):
        group = tuple(ids[i + 1 : i + 1 + BOX_LEN])
        if (token == open_id and len(group) == BOX_LEN and all(t in loc_ids for t in group)
                and i + 1 + BOX_LEN < len(ids) and ids[i + 1 + BOX_LEN] == close_id):
            if group not in found:
                found.append(group)
    return found
