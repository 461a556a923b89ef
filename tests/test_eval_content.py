"""The judge line format ``ID | Type -->> Tuple``: parsing rules of the official parser, counted drops."""

from __future__ import annotations

import pytest

from pancapchain.eval.content import parse_box_text, parse_content, rename_refs

CONTENT = """Here is the list you asked for:
1 | entity -->> (whole, brown_dog)
2 | entity -->> (part, tail)
3 | location -->> (entity 1, [0.10, 0.20, 0.50, 0.60])
4 | location -->> (2, [[0.3, 0.3, 0.4, 0.4]])
5 | location -->> (entity 9, [0.1, 0.1, 0.2, 0.2])
6 | location -->> (entity 2, [0.1, 0.2, 0.3])
7 | attribute -->> (entity 1, "entity 1 is brown, fluffy")
8 | attribute -->> (entity 2, "the tail wags")
9 | attribute -->> (global, "everything is calm")
10 | relation -->> (entity 2, entity 1, "entity 2 belongs to entity 1")
11 | relation -->> (entity 1, entity 7, "entity 1 sees entity 7")
12 | global -->> ("the scene feels warm, quiet")
13 | colour -->> (entity 1, "red")
"""


def test_parse_content_follows_the_official_rules():
    c = parse_content(CONTENT, "content")
    assert c.entities == {"entity 1": "brown dog", "entity 2": "tail"}  # "_" -> " ", tag = last piece
    assert c.locations == {"entity 1": (0.10, 0.20, 0.50, 0.60), "entity 2": (0.3, 0.3, 0.4, 0.4)}  # bare "2" ok
    assert c.attributes == [(7, "entity 1", "entity 1 is brown, fluffy")]  # commas inside text kept
    assert c.relations == [(10, "entity 2", "entity 1", "entity 2 belongs to entity 1")]
    assert c.globals == [(9, "everything is calm"), (12, "the scene feels warm, quiet")]
    assert c.n_lines == 14
    assert c.n_malformed == 2  # the chatter line and the unknown type "colour"
    # unknown entity 9, 3-number box, text not naming its entity, relation to unknown entity 7
    assert c.n_invalid == 4
    assert c.n_dropped == 6


def test_context_lines_keep_entity_ids_and_renumber_locations():
    c = parse_content(CONTENT, "content")
    assert c.context_lines() == [
        "1 | entity -->> (whole, brown dog)",
        "2 | entity -->> (part, tail)",
        "3 | location -->> (entity 1, [0.10, 0.20, 0.50, 0.60])",  # boxes as the judge wrote them
        "4 | location -->> (entity 2, [[0.3, 0.3, 0.4, 0.4]])",
    ]
    assert c.next_line_id() == 5


def test_answers_mode_does_not_check_the_entity_table():
    answers = '7 | attribute -->> (entity 3, "Yes", "No")\n9 | relation -->> (entity 3, entity 4, "No", "No")\n' \
              '10 | global -->> ("Yes", "Yes")\n11 | attribute -->> (global, "Yes", "No")'
    c = parse_content(answers, "answers")
    assert c.attributes == [(7, "entity 3", 'Yes", "No')]
    assert c.relations == [(9, "entity 3", "entity 4", 'No", "No')]
    assert c.globals == [(10, 'Yes", "Yes')]
    assert c.n_invalid == 1  # an attribute answer must name an entity


def test_parse_never_raises_on_garbage():
    c = parse_content("||| -->> )(\n\x00\n42\n 7 | entity -->> ()\n", "questions")
    assert c.entities == {} and c.n_lines == 4 and c.n_dropped == 4
    with pytest.raises(ValueError, match="mode"):
        parse_content("", "bogus")


def test_box_text_and_ref_renaming():
    assert parse_box_text("[[0.1, 0.2, 0.3, 0.4]]") == (0.1, 0.2, 0.3, 0.4)
    assert parse_box_text("[0.1, 0.2]") is None and parse_box_text("[a, b, c, d]") is None
    text = "Is entity 1 next to entity 2 and entity 12?"
    assert rename_refs(text, {"entity 1": "entity 2", "entity 2": "entity 1"}) == "Is entity 2 next to entity 1 and entity 12?"
