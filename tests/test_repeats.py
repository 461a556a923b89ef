"""The loop guards of generation: repeated items / n-grams stop a row (RepeatStop) or are steered away from
(NoRepeatText); everything else runs on."""

from __future__ import annotations

import torch

from pancapchain.infer.repeats import NoRepeatText, RepeatStop

CLOSE, SEP = 9, 7  # "</box>" and ", " token ids of this fake vocabulary


def feed(guard: RepeatStop, rows: list[list[int]]) -> list[list[bool]]:
    """Call the guard once per generated position (as generate does); returns per step the per-row flags."""
    prompt = [[1, 2, 3]] * len(rows)
    flags = []
    for t in range(1, len(rows[0]) + 1):
        ids = torch.tensor([p + r[:t] for p, r in zip(prompt, rows)])
        flags.append(guard(ids, None).tolist())
    return flags


def test_a_repeated_item_stops_only_its_row_at_its_closing_token():
    item_a, item_b = [4, 5, 6, CLOSE], [4, 5, 8, CLOSE]
    looping = item_a + [SEP] + item_b + [SEP] + item_a
    fine = item_a + [SEP] + item_b + [SEP] + [4, 8, 8, CLOSE]
    guard = RepeatStop(3, CLOSE, item_list=True, ignore_ids=(SEP,))
    flags = feed(guard, [looping, fine])
    assert [f[0] for f in flags] == [False] * (len(looping) - 1) + [True]
    assert not any(f[1] for f in flags)
    assert guard.stopped.tolist() == [True, False]


def test_caption_stops_on_a_repeated_ngram_not_on_a_repeated_word():
    sentence = list(range(20, 30))
    looping = sentence + sentence
    varied = sentence + [20, 21, 99, 23, 24, 25, 26, 27, 28, 29]
    guard = RepeatStop(3, CLOSE, item_list=False, ngram=10)
    flags = feed(guard, [looping, varied])
    assert [f[0] for f in flags].index(True) == len(looping) - 1  # the first position where 10 tokens repeat
    assert not any(f[1] for f in flags)


BOX = {50, 51, 52}  # box-open, box-close and one location token of this fake vocabulary


def banned(answer: list[int], prompt: list[int] | None = None, ngram: int = 3) -> set[int]:
    """The ids NoRepeatText forbids next after ``prompt`` + ``answer`` (one row, vocabulary of 60)."""
    prompt = prompt or [1, 2]
    proc = NoRepeatText(len(prompt), ngram, BOX)
    scores = proc(torch.tensor([prompt + answer]), torch.zeros(1, 60))
    return set(torch.nonzero(torch.isinf(scores[0])).flatten().tolist())


def test_the_token_that_would_repeat_a_run_of_the_answer_is_forbidden():
    assert banned([20, 21, 22, 30, 20, 21]) == {22}  # "20 21 22" again
    assert banned([20, 21, 22, 20, 21, 23, 20, 21]) == {22, 23}  # every earlier continuation of "20 21"
    assert banned([20, 21, 22, 30, 31]) == set()  # nothing repeats yet
    assert banned([20, 21, 22, 30, 20, 21], ngram=4) == set()  # "30 20 21" never occurred before


def test_the_prompt_and_box_tokens_are_not_counted():
    assert banned([20, 21], prompt=[20, 21, 22]) == set()  # copying the prompt stays possible
    assert banned([50, 52, 22, 50, 52]) == set()  # a run inside box tokens: the box constraint's business
    assert banned([20, 21, 52, 30, 20, 21]) == set()  # the run's continuation is a box token


def test_a_run_length_of_one_is_refused():
    import pytest

    from pancapchain.infer.generation import GenerationOptions

    assert GenerationOptions().no_repeat_ngram == 8
    with pytest.raises(ValueError, match="no_repeat_ngram=1"):
        GenerationOptions(no_repeat_ngram=1)
