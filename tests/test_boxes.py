"""Box format round trips (normalized <-> ASMv2 grid <-> text), including non-square images."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pancapchain.data.boxes import BoxCodec, find_box_groups, grid_to_norm, norm_to_grid

sizes = st.tuples(st.integers(8, 4000), st.integers(8, 4000))
unit = st.floats(0.0, 1.0, allow_nan=False)


@st.composite
def norm_boxes(draw):
    x1, x2 = sorted((draw(unit), draw(unit)))
    y1, y2 = sorted((draw(unit), draw(unit)))
    return (x1, y1, x2, y2)


@settings(max_examples=500, deadline=None)
@given(box=norm_boxes(), size=sizes)
def test_norm_grid_norm_within_one_grid_step(box, size):
    w, h = size
    back = grid_to_norm(norm_to_grid(box, w, h), w, h)
    side = max(w, h)
    tol = (0.5 / 1000) * side / min(w, h) + 1e-9
    for a, b in zip(box, back):
        assert abs(a - b) <= tol
    assert back[0] <= back[2] and back[1] <= back[3]


@settings(max_examples=500, deadline=None)
@given(size=sizes, data=st.data())
def test_grid_norm_grid_is_exact_inside_the_image(size, data):
    w, h = size
    side = max(w, h)
    lo_x, hi_x = round((side - w) / 2 / side * 1000), round((side + w) / 2 / side * 1000)
    lo_y, hi_y = round((side - h) / 2 / side * 1000), round((side + h) / 2 / side * 1000)
    xs = sorted(data.draw(st.integers(lo_x + 1, max(lo_x + 1, hi_x - 1))) for _ in range(2))
    ys = sorted(data.draw(st.integers(lo_y + 1, max(lo_y + 1, hi_y - 1))) for _ in range(2))
    grid = (xs[0], ys[0], xs[1], ys[1])
    assert norm_to_grid(grid_to_norm(grid, w, h), w, h) == grid


def test_padding_goes_to_the_short_side():
    # 640x480: the square is 640, 80 px of padding above and below -> y in [125, 875].
    assert norm_to_grid((0.0, 0.0, 1.0, 1.0), 640, 480) == (0, 125, 1000, 875)
    assert norm_to_grid((0.0, 0.0, 1.0, 1.0), 480, 640) == (125, 0, 875, 1000)
    assert grid_to_norm((0, 0, 1000, 1000), 640, 480) == (0.0, 0.0, 1.0, 1.0)  # pad area clips


@settings(max_examples=200, deadline=None)
@given(boxes=st.lists(norm_boxes(), min_size=1, max_size=3), size=sizes)
def test_caption_round_trip_through_model_format(boxes, size):
    w, h = size
    norm_codec, grid_codec = BoxCodec("normalized"), BoxCodec("asmv2")
    caption = "A thing " + norm_codec.encode(boxes, w, h) + " stands here."
    model_text = grid_codec.convert_text(caption, w, h)
    assert model_text.startswith("A thing <box>[[") and model_text.endswith("]]</box> stands here.")
    back = norm_codec.convert_text(model_text, w, h)
    [group] = find_box_groups(back)
    assert len(group.values) == len(boxes)
    tol = 0.001 + (0.5 / 1000) * max(w, h) / min(w, h) + 1e-9
    for got, want in zip(group.values, boxes):
        assert all(abs(a - b) <= tol for a, b in zip(got, want))


def test_find_box_groups_reads_both_formats_and_multi_boxes():
    text = "a [[0.1, 0.2, 0.3, 0.4]] b <box>[[1, 2, 3, 4], [5, 6, 7, 8]]</box> c [[0.5,0.5,0.6,0.6]]"
    groups = find_box_groups(text)
    assert [len(g.values) for g in groups] == [1, 2, 1]
    assert [g.is_integer_grid for g in groups] == [False, True, False]
    assert text[groups[1].start : groups[1].end] == "<box>[[1, 2, 3, 4], [5, 6, 7, 8]]</box>"


# ------------------------------------------------------------------------------------------- box rules

RULES_TEXT = (
    "a [[0.1, 0.2, 1.01, 0.5]] b <box>[[100, 200, 300, 400]]</box> c <box>[[1,2,3,4]]</box> "
    "d <box>[[1, 2, 3, 4], [5, 6, 7, 8]]</box> e [[100, 200, 300, 400]] f <box><loc_1><loc_2><loc_3><loc_4></box>"
)


def test_one_rule_per_format_official_and_lenient():
    from pancapchain.data.boxes import group_frame

    groups = find_box_groups(RULES_TEXT)
    official = [group_frame(g, "official") for g in groups]
    lenient = [group_frame(g, "lenient") for g in groups]
    # official step 0: only the single-box, ", "-separated <box> group is the grid
    assert official == ["normalized", "grid", "normalized", "normalized", "normalized", "bins"]
    assert lenient == ["normalized", "grid", "grid", "grid", "grid", "bins"]
    with pytest.raises(ValueError, match="unknown box rules"):
        group_frame(groups[0], "loose")


def test_normalized_value_above_one_is_clipped_not_rescaled():
    codec = BoxCodec("normalized")
    [group] = find_box_groups("a cat [[0.1, 0.2, 1.01, 0.5]]")
    for rules in ("official", "lenient"):
        assert codec.decode_group(group, 640, 480, rules) == [(0.1, 0.2, 1.0, 0.5)]
    [bare] = find_box_groups("a cat [[100, 200, 300, 400]]")
    assert codec.decode_group(bare, 1000, 1000, "official") == [(1.0, 1.0, 1.0, 1.0)]  # read as written
    assert codec.decode_group(bare, 1000, 1000, "lenient") == [(0.1, 0.2, 0.3, 0.4)]


def test_strict_reader_names_the_bad_value():
    from pancapchain.data.boxes import BoxFormatError, read_user_box, strict_convert_text

    norm = BoxCodec("normalized")
    with pytest.raises(BoxFormatError, match=r"value 1.7 is outside \[0, 1\]"):
        strict_convert_text("a cat [[0.1, 0.2, 1.7, 0.5]]", 100, 100, norm)
    with pytest.raises(BoxFormatError, match=r"value 1200 is outside \[0, 1000\]"):
        strict_convert_text("a cat <box>[[100, 200, 1200, 400]]</box>", 100, 100, norm)
    with pytest.raises(BoxFormatError, match=r"value 2.5 is not an integer"):
        strict_convert_text("a cat <box>[[1, 2, 2.5, 4]]</box>", 100, 100, norm)
    with pytest.raises(BoxFormatError, match="x2 < x1"):
        strict_convert_text("a cat [[0.5, 0.2, 0.1, 0.5]]", 100, 100, norm)
    assert strict_convert_text("a cat <box>[[100, 200, 300, 400]]</box>", 100, 100, norm) == \
        "a cat [[0.100, 0.200, 0.300, 0.400]]"
    assert read_user_box("[0.1, 0.2, 0.5, 0.9]") == (0.1, 0.2, 0.5, 0.9)
    with pytest.raises(BoxFormatError, match=r"value -0.1 is outside"):
        read_user_box("-0.1,0.2,0.5,0.9")
    with pytest.raises(ValueError, match="not a number"):
        read_user_box("a,b,c,d")
