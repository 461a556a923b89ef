"""Given-box decoding: label and caption answers can only write boxes their prompt gives."""

from __future__ import annotations

import torch

from pancapchain.constants import BOX_CLOSE, BOX_OPEN, LOC_TOKENS
from pancapchain.infer.chain import GIVEN_BOX_STAGES
from pancapchain.infer.given_boxes import GivenBoxes, boxes_in
from pancapchain.model.tiny import build_tokenizer

TOKENIZER = build_tokenizer(["a red square", "tags of all entities"], vocab_size=300, loc_tokens=True)
OPEN, CLOSE = TOKENIZER.convert_tokens_to_ids([BOX_OPEN, BOX_CLOSE])
LOC = TOKENIZER.convert_tokens_to_ids(list(LOC_TOKENS))


def box(*bins: int) -> list[int]:
    return [OPEN, *(LOC[b] for b in bins), CLOSE]


def test_boxes_in_reads_complete_groups_only():
    word = TOKENIZER("red", add_special_tokens=False)["input_ids"]
    ids = word + box(1, 2, 3, 4) + word + box(1, 5, 6, 7) + [OPEN, LOC[9], LOC[9], CLOSE]
    assert boxes_in(ids, OPEN, CLOSE, set(LOC)) == {(LOC[1], LOC[2], LOC[3], LOC[4]), (LOC[1], LOC[5], LOC[6], LOC[7])}


def test_an_open_box_can_only_continue_a_given_box_then_close():
    prompt = torch.tensor([box(1, 2, 3, 4) + box(1, 5, 6, 7), [TOKENIZER.pad_token_id] * 12])
    proc = GivenBoxes.from_prompts(prompt, TOKENIZER)
    vocab = len(TOKENIZER)

    def allowed(row: int, answer: list[int]) -> set[int]:
        """The ids left allowed for ``row`` when both rows have written ``answer`` after their prompt."""
        tail = torch.tensor([answer, answer], dtype=torch.long).reshape(2, len(answer))
        scores = proc(torch.cat([prompt, tail], 1), torch.zeros(2, vocab))
        return set(torch.nonzero(scores[row] > float("-inf")).flatten().tolist())

    assert allowed(0, [OPEN]) == {LOC[1]}
    assert allowed(0, [OPEN, LOC[1]]) == {LOC[2], LOC[5]}
    assert allowed(0, [OPEN, LOC[1], LOC[5]]) == {LOC[6]}
    assert allowed(0, [OPEN, LOC[1], LOC[2], LOC[3], LOC[4]]) == {CLOSE}
    everything = set(range(vocab))
    assert allowed(0, []) == everything  # outside a box the answer is free
    assert allowed(0, box(1, 2, 3, 4)) == everything
    assert allowed(1, [OPEN]) == everything  # a prompt without boxes leaves its row free


def test_the_constraint_keeps_the_scores_it_allows():
    prompt = torch.tensor([box(1, 2, 3, 4)])
    proc = GivenBoxes.from_prompts(prompt, TOKENIZER)
    scores = torch.randn(1, len(TOKENIZER))
    out = proc(torch.cat([prompt, torch.tensor([[OPEN, LOC[1]]])], 1), scores.clone())
    assert out[0, LOC[2]] == scores[0, LOC[2]]
    assert torch.isinf(out[0, LOC[3]]) and out.argmax() == LOC[2]


def test_a_tokenizer_without_location_tokens_is_left_alone():
    plain = build_tokenizer(["a red square"], vocab_size=300, loc_tokens=False)
    assert GivenBoxes.from_prompts(torch.tensor([[1, 2, 3]]), plain) is None
    assert set(GIVEN_BOX_STAGES) == {"label", "caption"}  # discover must find boxes the prompt does not give
