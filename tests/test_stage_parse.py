"""The stage-output parser: tolerance cases, malformed input, dedup, merging, and hypothesis fuzzing."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pancapchain.constants import STAGES
from pancapchain.data.boxes import BoxCodec, find_box_groups
from pancapchain.data.stage_parse import (
    StageItem,
    drop_refinds,
    format_items,
    merge_discovered,
    parse_stage_output,
)

ASMV2, NORMALIZED = BoxCodec("asmv2"), BoxCodec("normalized")
W, H = 1000, 1000  # square: grid value v <-> normalized v / 1000 exactly


def item(tag, *grid):
    return StageItem(tag, (tuple(v / 1000 for v in grid),))


def parse(stage, text, codec=ASMV2):
    return parse_stage_output(stage, text, codec, W, H)


def test_malformed_middle_item_keeps_everything_after_it():
    text = "cat <box>[[1, 2, 3, 4]]</box>, dog <box>[[5, 6, 7]]</box>, sky <box>[[0, 0, 1000, 500]]</box>"
    out = parse("label", text)
    assert out.items == (item("cat", 1, 2, 3, 4), item("sky", 0, 0, 1000, 500))
    assert out.malformed == ("dog <box>[[5, 6, 7]]</box>",)
    assert (out.none, out.duplicates) == (False, 0)


def test_exact_duplicates_are_dropped_and_counted_but_same_box_other_tag_is_kept():
    text = "cat <box>[[1, 2, 3, 4]]</box>, cat <box>[[1, 2, 3, 4]]</box>, dog <box>[[1, 2, 3, 4]]</box>"
    out = parse("label", text)
    assert out.items == (item("cat", 1, 2, 3, 4), item("dog", 1, 2, 3, 4))
    assert out.duplicates == 1
    boxes = parse("localize", "<box>[[1, 2, 3, 4]]</box>, <box>[[1, 2, 3, 4]]</box>")
    assert boxes.items == (item(None, 1, 2, 3, 4),) and boxes.duplicates == 1


@pytest.mark.parametrize("text", ["None", "None.", "  none \n", "None,", "NONE"])
def test_none_is_accepted(text):
    out = parse("discover", text)
    assert (out.items, out.none, out.malformed) == ((), True, ())


def test_none_followed_by_items_keeps_the_items_and_reports_the_none():
    out = parse("discover", "None, cat <box>[[1, 2, 3, 4]]</box>")
    assert out.items == (item("cat", 1, 2, 3, 4),) and out.none is False and out.malformed == ("None",)


def test_whitespace_trailing_comma_and_missing_separators_are_tolerated():
    text = "  red  cat<box> [[ 1 ,2, 3,  4 ]] </box>dog <box>[[5, 6, 7, 8]]</box>\nbig sky <box>[[0, 0, 9, 9]]</box>, "
    out = parse("label", text)
    assert out.items == (item("red cat", 1, 2, 3, 4), item("dog", 5, 6, 7, 8), item("big sky", 0, 0, 9, 9))
    assert out.malformed == ()
    stage1 = parse("localize", "<box>[[1, 2, 3, 4]]</box><box>[[5, 6, 7, 8]]</box>,")
    assert stage1.items == (item(None, 1, 2, 3, 4), item(None, 5, 6, 7, 8)) and stage1.malformed == ()


def test_truncated_final_item_is_reported():
    out = parse("label", "cat <box>[[1, 2, 3, 4]]</box>, dog <box>[[5, 6, 7")
    assert out.items == (item("cat", 1, 2, 3, 4),)
    assert out.malformed == ("dog <box>[[5, 6, 7",)


def test_stage_1_reports_tags_and_stage_2_reports_untagged_boxes():
    one = parse("localize", "cat <box>[[1, 2, 3, 4]]</box>, <box>[[5, 6, 7, 8]]</box>")
    assert one.items == (item(None, 1, 2, 3, 4), item(None, 5, 6, 7, 8)) and one.malformed == ("cat",)
    two = parse("label", "<box>[[1, 2, 3, 4]]</box>, dog <box>[[5, 6, 7, 8]]</box>")
    assert two.items == (item("dog", 5, 6, 7, 8),) and two.malformed == ("<box>[[1, 2, 3, 4]]</box>",)


def test_garbage_between_items_becomes_a_fragment_not_part_of_the_tag():
    out = parse("label", "cat <box>[[1, 2, 3, 4]]</box>, ??? blah, dog <box>[[5, 6, 7, 8]]</box>")
    assert out.items == (item("cat", 1, 2, 3, 4), item("dog", 5, 6, 7, 8))
    assert out.malformed == ("??? blah",)


def test_inverted_box_is_malformed():
    out = parse("label", "cat <box>[[300, 2, 100, 4]]</box>, dog <box>[[5, 6, 7, 8]]</box>")
    assert out.items == (item("dog", 5, 6, 7, 8),) and out.malformed == ("cat <box>[[300, 2, 100, 4]]</box>",)


def test_either_box_format_is_read_with_either_codec():
    text = "cat [[0.1, 0.2, 0.3, 0.4]], dog <box>[[100, 200, 300, 400]]</box>"
    for codec in (ASMV2, NORMALIZED):
        out = parse("label", text, codec)
        assert [it.tag for it in out.items] == ["cat", "dog"]
        assert out.items[0].boxes == out.items[1].boxes == ((0.1, 0.2, 0.3, 0.4),)


def test_non_square_grid_is_mapped_back_to_the_original_image():
    # 640x480: y grid 125..875 covers the image; 500 is the image centre.
    out = parse_stage_output("localize", "<box>[[0, 125, 500, 875]]</box>", ASMV2, 640, 480)
    assert out.items == (StageItem(None, ((0.0, 0.0, 0.5, 1.0),)),)


def test_caption_returns_every_box_group_in_order_and_reports_debris():
    text = "A cat <box>[[1, 2, 3, 4]]</box> and a cat <box>[[1, 2, 3, 4]]</box> near two dogs [[0.1, 0.1, 0.2, 0.2], [0.3, 0.3, 0.4, 0.4]] and a <box>[[9, 9"
    out = parse("caption", text)
    assert out.items == (
        item(None, 1, 2, 3, 4),
        item(None, 1, 2, 3, 4),
        StageItem(None, ((0.1, 0.1, 0.2, 0.2), (0.3, 0.3, 0.4, 0.4))),
    )
    assert out.duplicates == 0 and out.malformed == ("<box>[[9, 9",)


def test_empty_text_and_argument_errors():
    assert parse("label", "") == parse("label", "  ,  ")
    assert parse("label", "").items == () and parse("label", "").none is False
    with pytest.raises(ValueError, match="unknown stage"):
        parse("segment", "x")
    with pytest.raises(ValueError, match="image size"):
        parse_stage_output("label", "x", ASMV2, 0, 10)


def test_long_inputs_parse_in_linear_time():
    # A long tag-less run before a delimiter once cost O(n^2) with a backtracking tail regex.
    started = time.perf_counter()
    out = parse("label", "a" * 200_000 + ", cat <box>[[1, 2, 3, 4]]</box>" + ", dog <box>[[5, 6, 7" * 2000)
    assert time.perf_counter() - started < 2.0
    assert out.items == (item("cat", 1, 2, 3, 4),) and len(out.malformed) == 2


def test_merge_discovered_appends_only_new_items_in_order():
    cat, dog, sky = item("cat", 1, 2, 3, 4), item("dog", 5, 6, 7, 8), item("sky", 0, 0, 9, 9)
    assert merge_discovered([cat, dog], [dog, sky, item("cat", 1, 2, 3, 4), sky]) == [cat, dog, sky]
    assert merge_discovered([], [sky]) == [sky] and merge_discovered([cat], []) == [cat]


# ---------------------------------------------------------------- fuzzing

TOKENS = ["<box>", "</box>", "[[", "]]", "[", "]", ", ", ",", " ", "\n", "None", "cat", "big dog", "-", ".",
          "0", "7", "42", "1000", "99999", "0.5", "1.0", "-3", "1e9", "<", ">", ";", "\x00", "é", "[[1, 2, 3, 4]]"]
token_soup = st.lists(st.sampled_from(TOKENS), max_size=40).map("".join)
any_text = st.one_of(st.text(max_size=200), token_soup)
sizes = st.tuples(st.integers(1, 5000), st.integers(1, 5000))


@settings(max_examples=5000, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(text=any_text, stage=st.sampled_from(STAGES), fmt=st.sampled_from(["asmv2", "normalized"]), size=sizes)
def test_fuzz_arbitrary_text_never_raises_and_yields_valid_items(text, stage, fmt, size):
    out = parse_stage_output(stage, text, BoxCodec(fmt), *size)
    assert not (out.none and out.items)
    for it in out.items:
        assert it.boxes
        assert (it.tag is None) == (stage in ("localize", "caption"))
        if it.tag is not None:
            assert it.tag and it.tag == " ".join(it.tag.split()) and not set(it.tag) & set(",;[]<>")
        for x1, y1, x2, y2 in it.boxes:
            assert 0.0 <= x1 <= x2 <= 1.0 and 0.0 <= y1 <= y2 <= 1.0


# Tags drawn from a fixed varied list (one draw each keeps 5,000 cases fast); tag text itself is
# covered by the round-trip tests in test_stages.py and by the arbitrary-text fuzz above.
TAGS = ["cat", "big dog", "red brick wall", "x-ray machine", "o'clock sign", "3d 4", "None cat", "box",
        "café table", "sky", "a  b", "Ünïcödé", "tag with many words in it", "none of them", "2"]
garbage = st.one_of(st.text(max_size=30), token_soup).filter(
    lambda g: not find_box_groups(g) and g.strip(" \t\r\n,;").lower() != "none"
)
grid_box = st.lists(st.integers(0, 1000), min_size=4, max_size=4).map(
    lambda v: (min(v[0], v[2]) / 1000, min(v[1], v[3]) / 1000, max(v[0], v[2]) / 1000, max(v[1], v[3]) / 1000)
)


@settings(max_examples=5000, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(
    stage=st.sampled_from(["localize", "label", "discover"]),
    fmt=st.sampled_from(["asmv2", "normalized"]),
    raw_items=st.lists(st.tuples(st.sampled_from(TAGS), grid_box), max_size=6),
    junk=st.lists(st.tuples(st.integers(0, 6), garbage), max_size=6),
)
def test_fuzz_every_well_formed_item_survives_interleaved_garbage(stage, fmt, raw_items, junk):
    codec = BoxCodec(fmt)
    items = [StageItem(tag if stage != "localize" else None, (box,)) for tag, box in raw_items]
    pieces = [format_items([it], codec, W, H) for it in items]
    for position, fragment in sorted(junk, key=lambda pf: -pf[0]):  # insert from the back: positions hold
        pieces.insert(min(position, len(pieces)), fragment)
    text = ", ".join(pieces)
    assume(len(find_box_groups(text)) == len(items))  # two garbage pieces may join into a real box group
    # What each item parses to alone (float round trips of the grid are the codec's business).
    expected = [parse_stage_output(stage, format_items([it], codec, W, H), codec, W, H).items[0] for it in items]
    out = parse_stage_output(stage, text, codec, W, H)
    assert list(out.items) == list(dict.fromkeys(expected))
    assert out.duplicates == len(expected) - len(set(expected))
    assert all(fragment.strip(" \t\r\n,;") for fragment in out.malformed)


def test_box_first_items_parse_to_the_same_items_as_tag_first():
    items = [item("red circle", 1, 2, 3, 4), item("sky", 0, 0, 1000, 500)]
    box_first = format_items(items, ASMV2, W, H, box_first=True)
    assert box_first == "<box>[[1, 2, 3, 4]]</box> red circle, <box>[[0, 0, 1000, 500]]</box> sky"
    assert parse("label", box_first).items == parse("label", format_items(items, ASMV2, W, H)).items == tuple(items)
    bins = BoxCodec("bins")
    text = format_items(items, bins, W, H, box_first=True)
    assert text.startswith("<box><loc_0>") and text.endswith("</box> sky")
    assert [it.tag for it in parse_stage_output("label", text, bins, W, H).items] == ["red circle", "sky"]


def test_box_first_reports_a_box_without_tag_and_keeps_the_rest():
    out = parse("label", "<box>[[1, 2, 3, 4]]</box>, <box>[[5, 6, 7, 8]]</box> dog; stray, "
                         "<box>[[5, 6, 7, 8]]</box> dog")
    assert out.items == (item("dog", 5, 6, 7, 8),)
    assert out.malformed == ("<box>[[1, 2, 3, 4]]</box>", "stray")
    assert out.duplicates == 1


def test_drop_refinds_drops_only_items_whose_every_box_is_a_known_box_again():
    known = [item("cat", 0, 0, 500, 500)]
    again = item("kitten", 20, 0, 500, 520)   # IoU 0.92 with the cat: the cat found again
    new = item("dog", 500, 500, 1000, 1000)   # touches nothing known
    shifted = item("cat", 250, 0, 750, 500)   # IoU 1/3 with the cat: kept at 0.5, dropped at 0.3
    both = StageItem("cats", (again.boxes[0], new.boxes[0]))  # one box is new: the item stays
    kept, dropped = drop_refinds([again, new, shifted, both], known, 0.5)
    assert kept == [new, shifted, both] and dropped == 1
    kept, dropped = drop_refinds([again, new, shifted, both], known, 0.3)
    assert kept == [new, both] and dropped == 2
    assert drop_refinds([again, new], known, 0.0) == ([again, new], 0)
    assert drop_refinds([again, new], [], 0.5) == ([again, new], 0)
