"""Captions that would end with given boxes left are decoded again from before their closing paragraph."""

from __future__ import annotations

import torch
from conftest import micro_llava
from PIL import Image

from pancapchain.constants import BOX_CLOSE, BOX_OPEN, LOC_TOKENS
from pancapchain.data.boxes import find_box_groups
from pancapchain.infer.generation import GenerationOptions, Generator
from pancapchain.infer.given_boxes import GivenBoxes
from pancapchain.infer.late_boxes import break_ids, closing_paragraph_start
from pancapchain.model.tiny import build_tokenizer

TOKENIZER = build_tokenizer(["a red square", "tags of all entities", "The end.\n\nA red."], vocab_size=300,
                            loc_tokens=True)
OPEN, CLOSE = TOKENIZER.convert_tokens_to_ids([BOX_OPEN, BOX_CLOSE])
LOC = TOKENIZER.convert_tokens_to_ids(list(LOC_TOKENS))
A, RED, DOT, NL, THE, END = (TOKENIZER(w, add_special_tokens=False)["input_ids"][0]
                             for w in ("A", " red", ".", "\n", "The", " end"))
EOS = TOKENIZER.eos_token_id
B1, B2 = [OPEN, LOC[1], LOC[2], LOC[9], LOC[9], CLOSE], [OPEN, LOC[3], LOC[3], LOC[30], LOC[31], CLOSE]


def test_break_ids_are_the_newline_tokens_plain_newline_first():
    assert break_ids(TOKENIZER)[0] == NL and DOT not in break_ids(TOKENIZER)
    other = build_tokenizer(["no breaks here"], vocab_size=300, loc_tokens=True)  # cached per tokenizer
    assert break_ids(other) == [other("\n", add_special_tokens=False)["input_ids"][0]]


def test_the_rewrite_starts_at_the_break_before_a_box_less_closing_paragraph():
    answer = [A, *B1, RED, DOT, NL, NL, THE, END, DOT, *B2, RED, DOT]
    end = answer.index(OPEN, 1 + len(B1))  # where it wanted to end: after "The end."
    assert closing_paragraph_start(answer, end, {NL}, OPEN) == answer.index(NL)
    boxed = [A, DOT, NL, NL, *B1, RED, DOT, *B2]  # the paragraph it wanted to end has a box: nothing to rewrite
    assert closing_paragraph_start(boxed, len(boxed) - len(B2), {NL}, OPEN) is None
    assert closing_paragraph_start([A, *B1, RED, DOT], 9, {NL}, OPEN) is None  # no paragraph break at all
    assert closing_paragraph_start([NL, THE, END], 3, {NL}, OPEN) is None  # nothing before the break


def test_held_breaks_are_forbidden_until_the_boxes_are_written_and_early_ends_are_recorded():
    prompt = torch.tensor([B1 + B2])
    proc = GivenBoxes.from_prompts(prompt, TOKENIZER, ordered=True, hold_breaks=[NL])

    def scores_after(answer: list[int], prefer: int) -> torch.Tensor:
        scores = torch.zeros(1, len(TOKENIZER))
        scores[0, prefer] = 5.0
        return proc(torch.cat([prompt, torch.tensor([answer], dtype=torch.long).reshape(1, -1)], 1), scores)[0]

    assert scores_after(B1 + [DOT], NL)[NL] == float("-inf")  # a box is left: no paragraph break
    assert scores_after(B1 + [DOT] + B2 + [DOT], NL)[NL] == 5.0  # all written: breaks are free again
    assert proc.early_end == {}
    scores_after(B1 + [DOT], EOS)
    assert proc.early_end == {0: len(B1) + 1}
    # all written but no paragraph since the last box: it writes the break instead of ending; after one it may end
    unclosed = scores_after(B1 + [DOT] + B2 + [DOT], EOS)
    assert torch.nonzero(unclosed > float("-inf")).flatten().tolist() == [NL]
    assert int(scores_after(B1 + [DOT] + B2 + [DOT, NL, NL, THE, DOT], EOS).argmax()) == EOS
    wants_a_box = scores_after(B1 + [DOT] + B2 + [RED], OPEN)  # none is left: it starts the paragraph instead
    assert torch.nonzero(wants_a_box > float("-inf")).flatten().tolist() == [NL]
    assert scores_after(B1 + [DOT] + B2 + [RED], THE)[EOS] == float("-inf")  # and may not end before it


def scripted_decode(generator: Generator, input_ids, attention_mask, features, processors, guard, kwargs, seed):
    """A stand-in for the model: it writes "A <box> red." then wants a closing paragraph "\\n\\nThe end." and
    to stop; it prefers its wish, then EOS, then <box>, and every logits processor of the call applies."""
    ids = input_ids.clone()
    for _ in range(kwargs["max_new_tokens"]):
        answer = ids[0, processors[0].prompt_len if processors else input_ids.shape[1]:].tolist()
        last = answer[-1] if answer else None
        wish = {None: A, A: OPEN, CLOSE: RED, RED: DOT, THE: END, END: DOT}.get(last)
        if last == DOT:
            wish = EOS if END in answer else NL
        if last == NL:
            wish = THE if answer[-2:-1] == [NL] else NL
        scores = torch.full((1, len(TOKENIZER)), -10.0)
        scores[0, OPEN], scores[0, EOS] = 1.0, 2.0
        if wish is not None:
            scores[0, wish] = 5.0
        for proc in processors:
            scores = proc(ids, scores)
        token = int(scores.argmax())
        ids = torch.cat([ids, torch.tensor([[token]])], 1)
        if token == EOS:
            break
    return ids[:, input_ids.shape[1]:]


def test_a_caption_that_closes_with_boxes_left_is_rewritten_with_the_box_before_the_closing_paragraph(
        monkeypatch):
    torch.manual_seed(0)
    model, processor = micro_llava(TOKENIZER)
    generator = Generator(model, processor)
    monkeypatch.setattr(Generator, "_decode", scripted_decode)
    features = generator.encode([Image.new("RGB", (32, 32), (120, 30, 30))])
    prompt = "tags of " + TOKENIZER.decode(B1) + ", " + TOKENIZER.decode(B2)
    kwargs = {"max_new_tokens": 40, "do_sample": False}

    def caption(late_boxes: bool) -> str:
        return generator.generate([prompt], [(32, 32)], features, None, kwargs, given_boxes=True, ordered_boxes=True,
                                  late_boxes=late_boxes)[0].text

    late = caption(False)
    assert late.index("The end.") < late.index(TOKENIZER.decode(B2))  # the box forced in after the closing
    fixed = caption(True)
    assert [g.values for g in find_box_groups(fixed)] == [((1, 2, 9, 9),), ((3, 3, 30, 31),)]
    assert fixed.endswith("The end.") and fixed.count("The end.") == 1 and "\n\n" in fixed
    assert fixed.index(TOKENIZER.decode(B2)) < fixed.index("\n\n")
    assert GenerationOptions().late_boxes
