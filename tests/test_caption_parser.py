"""The shared caption parser: tags for every SA-Pancap phrasing, clean text, robustness, real captions."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pancapchain.data.boxes import format_normalized, grid_to_norm
from pancapchain.data.caption_parser import caption_entities, parse_caption, strip_boxes
from pancapchain.data.sapancap import caption_statistics

REAL_CAPTIONS = Path("/work/shared/data/sapancap/val_gtcaption.json")
A, B, C, D = (0.1, 0.2, 0.3, 0.4), (0.5, 0.5, 0.9, 0.8), (0.0, 0.0, 1.0, 1.0), (0.25, 0.3, 0.35, 0.6)


def box(b: tuple[float, ...]) -> str:
    return format_normalized([b])


def tags(caption: str) -> list[tuple[str, tuple[float, ...]]]:
    return caption_entities(parse_caption(caption))


VARIANTS = [
    (f"The image shows a sky. The sky {box(A)} is light blue.", [("sky", A)]),
    (
        f"It consists of a light {box(A)}, two cameras {box(B)} and {box(C)}, a sign {box(D)}, and a pole.",
        [("light", A), ("cameras", B), ("cameras", C), ("sign", D)],
    ),
    (f"A single brick (bounding box: {box(A)}) is partially visible.", [("single brick", A)]),
    (f"The flowers stand before a red brick wall, and the wall's bounding box is {box(C)}.", [("wall", C)]),
    (f"There is a ring of orange, and the ring's bounding box is {box(A)}.", [("ring", A)]),
    (
        f"The necklace is located at {box(A)}. The bracelet is located at {box(B)}.",
        [("necklace", A), ("bracelet", B)],
    ),
    (f"The fourth button, located at {box(A)}, is round.", [("button", A)]),
    (f"The second pitcher is smaller with an ornate handle and positioned at {box(A)}.", [("pitcher", A)]),
    (
        f"A green, textured area, which may be a wall, is behind the woman and pitchers, occupying {box(C)}.",
        [("textured area", C)],
    ),
    (
        f"In the top right corner, at {box(A)}, and top left corner {box(B)}, are two design elements.",
        [("design elements", A), ("design elements", B)],
    ),
    (
        f"-   **Boy 1** ({box(A)}): A boy is sitting.\n-   **Boy 2** ({box(B)}): Another boy.",
        [("boy", A), ("boy", B)],
    ),
    (f"*   **Car:** {box(A)} The car is white.", [("car", A)]),
    (
        "Here's a detailed description of the image:\n"
        f"The image depicts a traffic system against a blue sky. The sky {box(C)} is a light blue.",
        [("sky", C)],
    ),
    (f"The player's right shoe is at {box(A)}.", [("right shoe", A)]),
    (f"The main flower is positioned at the left side of the image {box(A)}.", [("main flower", A)]),
    (f"The dog is standing next to the man on the right side {box(B)}.", [("dog", B)]),
    (f"There is a tree located to the right of the tractor {box(A)}.", [("tree", A)]),
    (f"The necklace is thin and silver {box(A)}.", [("necklace", A)]),
    (f"Her hair, styled in a wavy pattern, is located at {box(A)}.", [("hair", A)]),
    (f"The **girl** is next to the boy, her bounding box is {box(A)}.", [("girl", A)]),
    (f"The car is the main focus, taking up most of the frame {box(C)}.", [("car", C)]),
    (f"A man is walking {box(A)} on the road.", [("man", A)]),
    (f"She is wearing a white shirt, black pants, and gray shoes {box(A)}.", [("gray shoes", A)]),
    (f"A piece of meat {box(A)} and the face of the woman {box(B)}.", [("meat", A), ("face", B)]),
    (f"The woman {box(A)} is standing. She is located at {box(B)}.", [("woman", A), ("woman", B)]),
    (
        f"The bus has two windshields, the left one at {box(A)} and the right one at {box(B)}.",
        [("windshields", A), ("windshields", B)],
    ),
    (f"There are bees {box(A)}, {box(B)} flying around.", [("bees", A), ("bees", B)]),
    (f"- A pink flower at {box(A)}\n- A red flower at {box(B)}", [("pink flower", A), ("red flower", B)]),
    (f"Green stems and leaves {box(D)} emerge from the flowers.", [("green stems and leaves", D)]),
    (f"The trunk of a big red brick wall {box(C)}.", [("trunk", C)]),
    (f"A particularly prominent red brick wall {box(C)} stands.", [("prominent red brick wall", C)]),
    (
        f"Two windows (bounding box: {box(A)} and bounding box: {box(B)}) are open.",
        [("windows", A), ("windows", B)],
    ),
]


@pytest.mark.parametrize(("caption", "expected"), VARIANTS, ids=[str(i) for i in range(len(VARIANTS))])
def test_tags_of_every_variant(caption: str, expected: list) -> None:
    assert tags(caption) == expected


def test_repeated_box_is_one_entity_and_first_nonempty_tag_wins() -> None:
    caption = (
        f"{box(A)} is bright. Two cameras {box(B)} and {box(C)} are visible. One camera {box(C)} is dark."
    )
    parsed = parse_caption(caption)
    assert [m.tag for m in parsed.mentions] == ["", "cameras", "cameras", "camera"]
    assert caption_entities(parsed) == [("", A), ("cameras", B), ("cameras", C)]
    assert parsed.n_box_groups == 4 and parsed.n_boxes == 4
    later = parse_caption(f"{box(A)}. The light {box(A)} is on.")
    assert caption_entities(later) == [("light", A)]


def test_multi_box_group_and_model_grid_boxes() -> None:
    parsed = parse_caption("Two shoes [[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.9, 0.8]] are black.")
    assert len(parsed.mentions) == 1 and parsed.mentions[0].boxes == (A, B)
    assert parsed.n_box_groups == 1 and parsed.n_boxes == 2
    assert caption_entities(parsed) == [("shoes", A), ("shoes", B)]
    grid = parse_caption("A cat <box>[[100, 200, 400, 600]]</box> sleeps.", width=2000, height=1000)
    expected = grid_to_norm((100, 200, 400, 600), 2000, 1000)
    assert grid.mentions[0].boxes == (expected,)
    assert expected == pytest.approx((0.1, 0.0, 0.4, 0.7))
    assert grid.mentions[0].tag == "cat" and grid.sentences == ("A cat sleeps.",)


def test_spans_sentences_and_clean_text() -> None:
    brick = f"A single brick (bounding box: {box(A)}) is visible."
    caption = f"The image shows two things.\n\n{brick} The sky {box(C)} is blue."
    parsed = parse_caption(caption)
    assert parsed.sentences == (
        "The image shows two things.",
        "A single brick is visible.",
        "The sky is blue.",
    )
    assert [m.sentence_index for m in parsed.mentions] == [1, 2]
    for mention in parsed.mentions:
        assert caption[mention.start : mention.end].startswith("[[")
        assert caption[mention.start : mention.end].endswith("]]")
    assert (
        strip_boxes(caption) == "The image shows two things.\n\nA single brick is visible. The sky is blue."
    )
    ring = f"There is a ring of orange, and the ring's bounding box is {box(A)}. It shines."
    assert strip_boxes(ring) == "There is a ring of orange. It shines."
    assert strip_boxes(f"The boy, with bounding box coordinates {box(A)}, runs.") == "The boy, runs."
    assert strip_boxes(f"**Cup** {box(A)}\n*   A white cup.") == "**Cup**\n* A white cup."
    mouth = f"The mouth's bounding box is at {box(A)}. The teeth are white."
    assert strip_boxes(mouth) == "The teeth are white."
    assert parse_caption(mouth).sentences == ("The teeth are white.",)
    assert (
        strip_boxes(f"The bud is located at {box(A)}, near the stem.") == "The bud is located, near the stem."
    )
    assert strip_boxes("A point [[0.1, 0.2]] and [[0.3, 0.4], [0.5, 0.6]] here.") == "A point and here."
    md = parse_caption(f"1. **Cup** {box(A)}\n    *   A white ceramic cup.")
    assert md.sentences == ("Cup", "A white ceramic cup.") and md.mentions[0].sentence_index == 0


def test_box_after_full_stop_belongs_to_that_sentence() -> None:
    parsed = parse_caption(f"The stamp has jagged edges. {box(A)}\nWithin the border is a flower.")
    assert parsed.mentions[0].sentence_index == 0 and parsed.mentions[0].tag == "jagged edges"


def test_unparsed_fragments_and_invalid_boxes() -> None:
    parsed = parse_caption("A point [[0.1, 0.2]] and a pair [[0.43, 0.17], [0.84, 0.53]] and [[broken")
    assert parsed.mentions == () and parsed.n_boxes == 0 and parsed.n_box_groups == 0
    assert parsed.unparsed == ("[[0.1, 0.2]]", "[[0.43, 0.17], [0.84, 0.53]]", "[[broken")
    reversed_box = parse_caption("A box [[0.5, 0.5, 0.2, 0.2]] here.")
    assert reversed_box.n_boxes == 1 and reversed_box.mentions == ()
    assert reversed_box.unparsed == ("[[0.5, 0.5, 0.2, 0.2]] (x2 < x1 or y2 < y1)",)


def test_empty_and_boxless_captions() -> None:
    assert parse_caption("") == parse_caption("   ")
    assert parse_caption("").mentions == () and parse_caption("").sentences == ()
    plain = parse_caption("A quiet street. Nobody is there!")
    assert plain.sentences == ("A quiet street.", "Nobody is there!") and caption_entities(plain) == []
    only_box = parse_caption(box(A))
    assert only_box.sentences == ("",) and only_box.mentions[0].sentence_index == 0


_PIECES = [
    "[[0.1, 0.2, 0.3, 0.4]]", "<box>[[1, 2, 300, 400]]</box>", "[[", "]]", "[", "]", "<box>", "</box>", "0.5",
    ", ", ". ", "\n", ":", "(", ")", "**", "'s ", '"', " the ", " and ", " one ", " it ", " is located at ",
    " of the image ", " bounding box ", " cat ", " two ", "\x00", "-", "\u2019",
]  # fmt: skip
_CAPTION_LIKE = st.lists(st.one_of(st.sampled_from(_PIECES), st.text(max_size=5)), max_size=60).map("".join)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=400), _CAPTION_LIKE), st.integers(1, 5000), st.integers(1, 5000))
def test_arbitrary_text_never_raises(text: str, width: int, height: int) -> None:
    parsed = parse_caption(text, width, height)
    strip_boxes(text)
    for tag, b in caption_entities(parsed):
        assert isinstance(tag, str) and 0.0 <= b[0] <= b[2] <= 1.0 and 0.0 <= b[1] <= b[3] <= 1.0
    for mention in parsed.mentions:
        assert 0 <= mention.sentence_index < len(parsed.sentences)


_COORD = st.integers(0, 1000).map(lambda v: v / 1000)
_BOX = st.tuples(_COORD, _COORD, _COORD, _COORD).map(
    lambda q: (min(q[0], q[2]), min(q[1], q[3]), max(q[0], q[2]), max(q[1], q[3]))
)
_PLAIN = st.text(
    alphabet=st.characters(blacklist_characters="[]<>", blacklist_categories=("Cs",)), max_size=60
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_PLAIN, st.lists(_BOX, min_size=1, max_size=3)), max_size=8), _PLAIN)
def test_every_well_formed_group_is_reported(pieces: list, tail: str) -> None:
    caption = "".join(text + " " + format_normalized(boxes) for text, boxes in pieces) + " " + tail
    parsed = parse_caption(caption)
    assert parsed.n_box_groups == len(pieces) and parsed.n_boxes == sum(len(b) for _, b in pieces)
    assert [m.boxes for m in parsed.mentions] == [tuple(boxes) for _, boxes in pieces]
    assert parsed.unparsed == ()
    assert {b for _, b in caption_entities(parsed)} == {b for _, boxes in pieces for b in boxes}


@pytest.mark.skipif(not REAL_CAPTIONS.exists(), reason="real SA-Pancap captions not available")
def test_real_sapancap_captions_recover_boxes_and_tags() -> None:
    start = time.perf_counter()
    report = caption_statistics(REAL_CAPTIONS)
    seconds = time.perf_counter() - start
    print(
        f"\n500 real captions: boxes recovered {report.boxes_recovered}/{report.boxes}"
        f" = {report.recovered_pct:.2f}%,"
        f" entities with a tag {report.tagged_entities}/{report.entities} = {report.tagged_pct:.2f}%,"
        f" {len(report.unparsed)} unparsed fragments, {seconds:.2f} s"
    )
    assert report.captions == 500 and report.boxes == 3444
    assert report.recovered_pct >= 99.0
    assert report.tagged_pct >= 95.0
    assert seconds < 10.0
    captions = [r["gt_response"] for r in json.loads(REAL_CAPTIONS.read_text())]
    assert all(m.sentence_index < len(p.sentences) for p in map(parse_caption, captions) for m in p.mentions)
