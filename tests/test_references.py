"""Named references: a tag written right after "the" in a box-first caption names an entity the caption named."""

from __future__ import annotations

import torch

from pancapchain.constants import BOX_CLOSE, BOX_OPEN, LOC_TOKENS
from pancapchain.infer.references import NamedReferences
from pancapchain.model.tiny import build_tokenizer

TAGS = ["red circle", "red ring", "white ring", "sky"]
TOKENIZER = build_tokenizer(
    ["The sky is above a small striped red circle and a white ring in the top left corner. The red ring. None"] * 4,
    vocab_size=320, loc_tokens=True)
BOX = f"{BOX_OPEN}{LOC_TOKENS[1]}{LOC_TOKENS[2]}{LOC_TOKENS[9]}{LOC_TOKENS[9]}{BOX_CLOSE}"
PROMPT = [TOKENIZER.pad_token_id, 7, 8]


def ids(text: str) -> list[int]:
    return TOKENIZER(text, add_special_tokens=False)["input_ids"]


def word(text: str) -> int:
    (token,) = ids(text)
    return token


def allowed_after(answer: str) -> set[int]:
    """Which of the tag words stay allowed as the next token of ``answer`` (fed token by token, as generate does)."""
    proc = NamedReferences.build(len(PROMPT), TOKENIZER, TAGS)
    tokens = PROMPT + ids(answer)
    for end in range(len(PROMPT), len(tokens) + 1):  # generate calls the processor once per step
        scores = proc(torch.tensor([tokens[:end]]), torch.zeros(1, len(TOKENIZER)))
    candidates = {word(w) for w in (" red", " white", " sky", " circle", " ring", " top")}
    return {t for t in candidates if scores[0, t] > float("-inf")}


def test_a_reference_can_only_name_an_entity_named_in_an_earlier_sentence():
    named = f"A {BOX} small striped red circle is here. A {BOX} large white ring is"
    # " circle" and " ring" start no tag, so only the tags' first words are kept to "red" (named before)
    assert allowed_after(named + " next to the") == {word(" red"), word(" top"), word(" circle"), word(" ring")}
    everything = {word(w) for w in (" red", " white", " sky", " circle", " ring", " top")}
    assert allowed_after(named + " next to the red") == everything - {word(" ring")}  # "red ring" was not named


def test_mentions_of_an_answer_prefix_given_at_the_first_step_are_named_too():
    """A rewrite (pancapchain.infer.late_boxes) starts from a written prefix: its mentions count as named."""
    answer = f"A {BOX} small striped red circle is here. A {BOX} large white ring is next to the"
    proc = NamedReferences.build(len(PROMPT), TOKENIZER, TAGS)
    scores = proc(torch.tensor([PROMPT + ids(answer)]), torch.zeros(1, len(TOKENIZER)))
    assert scores[0, word(" red")] == 0.0 and scores[0, word(" white")] == float("-inf")
    assert allowed_after(answer) == {t for t in map(word, (" red", " white", " sky", " circle", " ring", " top"))
                                     if scores[0, t] > float("-inf")}


def test_nothing_named_yet_forbids_every_tag_but_leaves_other_words():
    assert allowed_after("Next to the") == {word(" top"), word(" circle"), word(" ring")}
    assert allowed_after(f"The {BOX} sky is in the") == {word(" top"), word(" circle"), word(" ring")}


def test_a_tag_named_twice_is_ambiguous_and_its_own_sentence_is_not_earlier():
    twice = f"A {BOX} red circle is here. A {BOX} small red circle is here. A {BOX} white ring is left of the"
    assert word(" red") not in allowed_after(twice) and word(" white") not in allowed_after(twice)
    later = f"A {BOX} red circle is here. A {BOX} small red circle is here. A {BOX} white ring is here. The"
    assert allowed_after(later) >= {word(" white")} and word(" red") not in allowed_after(later)


def test_none_never_follows_a_determiner():
    """Stage 3's "None" answer is no referent: "overlapping the None" was written where nothing was referable."""
    none = word(" None")
    proc = NamedReferences.build(len(PROMPT), TOKENIZER, TAGS)
    for answer, forbidden in ((f"A {BOX} red circle is here. It is next to the", True), ("Next to the", True),
                              (f"A {BOX} red circle is here. It is next to the red", False), ("It is", False)):
        scores = proc(torch.tensor([PROMPT + ids(answer)]), torch.zeros(1, len(TOKENIZER)))
        assert (scores[0, none] == float("-inf")) == forbidden, answer


def test_words_away_from_a_determiner_are_free():
    text = f"A {BOX} small striped red circle is here. A white"
    assert allowed_after(text) == {word(w) for w in (" red", " white", " sky", " circle", " ring", " top")}


def test_the_kept_scores_are_unchanged():
    proc = NamedReferences.build(len(PROMPT), TOKENIZER, TAGS)
    tokens = PROMPT + ids(f"A {BOX} white ring is here. Next to the")
    scores = torch.arange(len(TOKENIZER), dtype=torch.float).unsqueeze(0)
    out = None
    for end in range(len(PROMPT), len(tokens) + 1):
        out = proc(torch.tensor([tokens[:end]]), scores.clone())
    kept = out[0] > float("-inf")
    assert torch.equal(out[0][kept], scores[0][kept]) and not kept[word(" red")] and kept[word(" white")]


def test_no_known_tags_builds_no_processor():
    assert NamedReferences.build(3, TOKENIZER, []) is None and NamedReferences.build(3, TOKENIZER, [" "]) is None
