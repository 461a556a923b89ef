"""The loop guard of generation: repeated items / n-grams stop a row, everything else runs on."""

from __future__ import annotations

import torch

from pancapchain.infer.repeats import RepeatStop

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
