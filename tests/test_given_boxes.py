"""Given-box decoding: label and caption answers can only write boxes their prompt gives."""

from __future__ import annotations

import pytest
import torch
from conftest import micro_llava
from PIL import Image

from pancapchain.constants import BOX_CLOSE, BOX_OPEN, LOC_TOKENS
from pancapchain.data.boxes import find_box_groups
from pancapchain.infer.chain import GIVEN_BOX_STAGES
from pancapchain.infer.generation import GenerationOptions, Generator
from pancapchain.infer.given_boxes import GivenBoxes, boxes_in
from pancapchain.model.tiny import build_tokenizer

TOKENIZER = build_tokenizer(["a red square", "tags of all entities"], vocab_size=300, loc_tokens=True)
OPEN, CLOSE = TOKENIZER.convert_tokens_to_ids([BOX_OPEN, BOX_CLOSE])
LOC = TOKENIZER.convert_tokens_to_ids(list(LOC_TOKENS))


def tiny_llava():
    torch.manual_seed(0)
    return micro_llava(TOKENIZER)


def box(*bins: int) -> list[int]:
    return [OPEN, *(LOC[b] for b in bins), CLOSE]


def test_boxes_in_reads_complete_groups_only():
    word = TOKENIZER("red", add_special_tokens=False)["input_ids"]
    ids = word + box(1, 2, 3, 4) + word + box(1, 5, 6, 7) + [OPEN, LOC[9], LOC[9], CLOSE]
    ids += box(1, 2, 3, 4)  # a repeat is listed once, where it first appears
    assert boxes_in(ids, OPEN, CLOSE, set(LOC)) == [(LOC[1], LOC[2], LOC[3], LOC[4]), (LOC[1], LOC[5], LOC[6], LOC[7])]


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


def test_ordered_boxes_write_every_given_box_once_in_prompt_order():
    prompt = torch.tensor([box(1, 2, 3, 4) + box(1, 5, 6, 7)])
    proc = GivenBoxes.from_prompts(prompt, TOKENIZER, ordered=True)
    vocab = len(TOKENIZER)
    word = TOKENIZER("red", add_special_tokens=False)["input_ids"]

    def allowed(answer: list[int]) -> set[int]:
        scores = proc(torch.cat([prompt, torch.tensor([answer], dtype=torch.long).reshape(1, -1)], 1),
                      torch.zeros(1, vocab))
        return set(torch.nonzero(scores[0] > float("-inf")).flatten().tolist())

    everything = set(range(vocab))
    eos = TOKENIZER.eos_token_id
    outside = everything - set(LOC)  # outside a box no location token: it would be debris
    assert allowed([]) == outside - {eos, CLOSE}  # the answer cannot end before its boxes
    assert allowed([OPEN]) == {LOC[1]}
    assert allowed([OPEN, LOC[1]]) == {LOC[2]}  # the first box, not the second that shares its prefix
    assert allowed(box(1, 2, 3, 4)[:-1]) == {CLOSE}
    assert allowed(box(1, 2, 3, 4) + word + [OPEN, LOC[1]]) == {LOC[5]}  # then the second
    assert allowed(box(1, 2, 3, 4) + word) == outside - {eos, CLOSE}
    done = box(1, 2, 3, 4) + word + box(1, 5, 6, 7) + word
    assert allowed(done) == outside - {OPEN, CLOSE}  # all written: it may end, and open no more


def test_an_answer_that_would_end_with_boxes_left_opens_the_next_box():
    """EOS most likely with a box left: only <box> (with its own score); once all are written, EOS is free."""
    prompt = torch.tensor([box(1, 2, 3, 4) + box(1, 5, 6, 7)])
    proc = GivenBoxes.from_prompts(prompt, TOKENIZER, ordered=True)
    eos, word = TOKENIZER.eos_token_id, TOKENIZER("red", add_special_tokens=False)["input_ids"]

    def scores_after(answer: list[int]) -> torch.Tensor:
        scores = torch.zeros(1, len(TOKENIZER))
        scores[0, eos], scores[0, OPEN] = 5.0, -2.0
        return proc(torch.cat([prompt, torch.tensor([answer], dtype=torch.long).reshape(1, -1)], 1), scores)[0]

    left = scores_after(box(1, 2, 3, 4) + word)
    assert torch.nonzero(left > float("-inf")).flatten().tolist() == [OPEN] and left[OPEN] == -2.0
    done = scores_after(box(1, 2, 3, 4) + word + box(1, 5, 6, 7) + word)
    assert int(done.argmax()) == eos and done[OPEN] == float("-inf")


def test_the_generator_writes_every_given_box_in_order_then_ends():
    """An untrained tiny LLaVA whose head prefers <box>, then EOS: ordered decoding gives both boxes, in order."""
    model, processor = tiny_llava()
    tok = processor.tokenizer
    head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=True)
    head.weight.data.copy_(model.lm_head.weight.data)
    head.bias.data.zero_()
    head.bias.data[OPEN], head.bias.data[tok.eos_token_id] = 100.0, 50.0
    model.lm_head = head
    first, second = "<box><loc_3><loc_3><loc_30><loc_31></box>", "<box><loc_1><loc_2><loc_9><loc_9></box>"
    prompt = f"tag these {first}, {second}"
    generator = Generator(model, processor)
    features = generator.encode([Image.new("RGB", (32, 32), (120, 30, 30))])
    greedy = {"max_new_tokens": 20, "do_sample": False}
    out = generator.generate([prompt], [(32, 32)], features, None, greedy, given_boxes=True, ordered_boxes=True)[0]
    assert [g.values for g in find_box_groups(out.text)] == [((3, 3, 30, 31),), ((1, 2, 9, 9),)]
    assert not out.truncated
    free = generator.generate([prompt], [(32, 32)], features, None, greedy, given_boxes=True)[0]
    assert len(find_box_groups(free.text)) > 2  # unordered, the same head keeps opening boxes


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


def test_ordered_boxes_are_only_for_given_box_stages():
    assert GenerationOptions().ordered_boxes == ("label", "caption")
    with pytest.raises(ValueError, match="ordered_boxes"):
        GenerationOptions(ordered_boxes=("localize",))


def test_free_boxes_turn_ordering_off_and_refuse_an_explicit_order():
    """--free-boxes alone orders nothing (it used to keep the label default and ignore it); GenerationOptions
    refuses an order without given boxes."""
    from argparse import Namespace

    from pancapchain.cli.infer import generation_options

    base = dict(max_new_tokens=0, sample=False, temperature=1.0, top_p=1.0, seed=0, stop_after=None)
    assert generation_options(Namespace(**base, free_boxes=True, ordered_boxes=None)).ordered_boxes == ()
    assert generation_options(Namespace(**base, free_boxes=False, ordered_boxes=None)).ordered_boxes == ("label", "caption")
    assert generation_options(Namespace(**base, free_boxes=False, ordered_boxes="none")).ordered_boxes == ()
    with pytest.raises(ValueError, match="needs given_boxes"):
        GenerationOptions(given_boxes=False, ordered_boxes=("label",))
