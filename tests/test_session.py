"""ChainSession (shared by chat and serve) and the web demo's plain-data views, in process with the tiny model."""

from __future__ import annotations

import pytest
from conftest import make_sample
from PIL import Image

from pancapchain.data.stage_parse import StageItem
from pancapchain.infer.chain import PancapChain
from pancapchain.infer.generation import GenerationOptions
from pancapchain.infer.session import ChainSession, SessionError
from pancapchain.web import view

OPTS = GenerationOptions(max_new_tokens={"localize": 12, "label": 12, "discover": 12, "caption": 16})
LABEL = "lynx <box>[[100, 200, 500, 500]]</box>, walrus <box>[[550, 300, 900, 800]]</box>"


@pytest.fixture(scope="module")
def chain(tiny_checkpoint) -> PancapChain:
    return PancapChain.from_pretrained(str(tiny_checkpoint))


@pytest.fixture
def session(chain, one_thread) -> ChainSession:
    s = ChainSession(chain, OPTS)
    s.load(make_sample(0, width=40, height=40)[1], "square")
    return s


def test_editing_an_earlier_stage_drops_later_ones_and_rerun_regenerates_them(session):
    session.rerun_to(3)
    assert session.done and set(session.state.outputs) == {"localize", "label", "discover", "caption"}
    session.set_text(LABEL, "label")
    assert session.stage == "label" and set(session.state.outputs) == {"localize", "label"}
    session.replace_items([StageItem("zebra", ((0.1, 0.2, 0.5, 0.5),))] + session.items("label")[1:], "label")
    session.rerun_to(3)
    result = session.result()
    assert "zebra <box>[[100, 200, 500, 500]]</box>" in result["stages"]["caption"]["prompt"]
    assert result["edited_stages"] == ["label"] and "lynx" not in result["stages"]["discover"]["prompt"]


def test_sampling_with_a_seed_is_reproducible_and_greedy_is_the_default(session):
    session.next_stage()
    greedy = session.output().raw
    assert session.regenerate(options=session.sampling_options(3)).raw == \
        session.regenerate(options=session.sampling_options(3)).raw
    assert session.regenerate().raw == greedy


def test_actions_out_of_order_raise_session_errors(chain):
    fresh = ChainSession(chain, OPTS)
    with pytest.raises(SessionError, match="no image loaded: load an image first"):
        fresh.next_stage()
    fresh.load(Image.new("RGB", (20, 20)), "blank")
    with pytest.raises(SessionError, match="no stage has run yet"):
        fresh.items()
    fresh.next_stage()
    with pytest.raises(SessionError, match="stage caption has not run yet"):
        fresh.set_text("x", "caption")
    with pytest.raises(SessionError, match="unknown stage 'labels'"):
        fresh.items("labels")


@pytest.mark.parametrize("text, problem", [
    ("0.1, 0.2, 1.2, 0.5", "outside [0, 1]"),
    ("0.5, 0.2, 0.1, 0.6", "x2 < x1"),
    ("0.1, 0.2, 0.1, 0.6", "needs x1 < x2 and y1 < y2"),
    ("0.1, 0.2, 0.5", "must be a list of 4 numbers"),
    ("a, b, c, d", "could not convert"),
])
def test_parse_box_names_the_problem(text, problem):
    with pytest.raises(SessionError, match="bad box") as err:
        ChainSession.parse_box(text)
    assert problem in str(err.value)


def test_table_rows_round_trip_and_name_the_bad_row():
    items = [StageItem("red square", ((0.1, 0.2, 0.5, 0.5),)), StageItem("two", ((0, 0, 0.5, 0.5), (0.5, 0.5, 1, 1)))]
    rows = view.items_to_rows(items)
    assert rows[1] == ["two", "0.000, 0.000, 0.500, 0.500; 0.500, 0.500, 1.000, 1.000"]
    assert view.rows_to_items(rows + [["", ""]], "label") == items  # a blank row is ignored
    assert view.rows_to_items([["ignored", "0.1, 0.1, 0.2, 0.2"]], "localize") == [
        StageItem(None, ((0.1, 0.1, 0.2, 0.2),))]
    with pytest.raises(SessionError, match="row 2: stage label items need a tag"):
        view.rows_to_items([rows[0], ["", "0.1, 0.1, 0.2, 0.2"]], "label")
    with pytest.raises(SessionError, match="row 1: no box"):
        view.rows_to_items([["cat", ""]], "label")


def test_highlighted_caption_colours_each_phrase_like_its_box():
    result = {"width": 100, "height": 100, "caption": "A red square [[0.1, 0.2, 0.5, 0.5]] left of a blue disc "
              "[[0.6, 0.2, 0.9, 0.5]]. The red square [[0.1, 0.2, 0.5, 0.5]] is big.",
              "entities": [{"tag": "red square", "box": [0.1, 0.2, 0.5, 0.5]},
                           {"tag": "blue disc", "box": [0.6, 0.2, 0.9, 0.5]}]}
    segments, colors = view.highlighted_caption(result)
    assert [s for s in segments if s[1]] == [("red square", "0: red square"), ("blue disc", "1: blue disc"),
                                             ("red square", "0: red square")]
    assert "".join(text for text, _ in segments) == "A red square left of a blue disc. The red square is big."
    assert colors == {"0: red square": view.color_hex(0), "1: blue disc": view.color_hex(1)}
    assert view.color_hex(1) == "#3cb44b"


def test_open_upload_refuses_non_images_and_huge_images(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("hello")
    with pytest.raises(SessionError, match="notes.png is not a readable image"):
        view.open_upload(text)
    big = tmp_path / "big.png"
    Image.new("RGB", (30, 20)).save(big)
    with pytest.raises(SessionError, match="big.png is 30x20 = 600 pixels; the limit is 599"):
        view.open_upload(big, max_pixels=599)
    assert view.open_upload(big, max_pixels=600).size == (30, 20)
    image, image_id = view.example_image(view.EXAMPLES[2])
    assert image_id == "syn-val-000002" and image.width == view.EXAMPLE_SIZE
