"""``data.caption_mentions: box_first``: captions written with each box before its phrase, and moved back."""

from __future__ import annotations

import pytest

from pancapchain.config import ConfigError, load_recipe
from pancapchain.data.boxes import BoxCodec
from pancapchain.data.caption_layout import LayoutError, to_box_first, to_tag_first
from pancapchain.data.caption_parser import parse_caption
from pancapchain.data.prompts import load_prompts
from pancapchain.data.schema import PanopticSample
from pancapchain.data.stages import build_stage_examples
from pancapchain.data.synth import generate_scene
from pancapchain.mask.targets import answer_mask_targets

CAPTION = ("The sky [[0.000, 0.000, 1.000, 0.400]] is gray. There is a large dotted yellow hexagon "
           "[[0.078, 0.365, 0.484, 0.647]] on the left side. The hexagon has a small red ring "
           "[[0.500, 0.500, 0.600, 0.600]] above it.")


def test_a_caption_moves_box_first_and_back_unchanged():
    moved = to_box_first(CAPTION)
    assert moved == ("The [[0.000, 0.000, 1.000, 0.400]] sky is gray. There is a [[0.078, 0.365, 0.484, 0.647]] "
                     "large dotted yellow hexagon on the left side. The hexagon has a [[0.500, 0.500, 0.600, 0.600]] "
                     "small red ring above it.")
    assert to_tag_first(moved) == CAPTION


@pytest.mark.parametrize("seed", [0, 7])
def test_synthetic_captions_round_trip_and_parse_to_the_same_mentions(seed):
    for index in range(40):
        sample, _ = generate_scene(index, seed, 64)
        moved = to_box_first(sample.caption)
        assert to_tag_first(moved) == sample.caption, sample.id
        assert parse_caption(to_tag_first(moved)).mentions == parse_caption(sample.caption).mentions


def test_model_format_captions_move_back_and_a_lonely_box_stays():
    codec = BoxCodec("bins")
    model_text = codec.convert_text(to_box_first(CAPTION), 64, 64)
    assert model_text.count("<box>") == 3 and "<box><loc_" in model_text
    assert to_tag_first(model_text) == codec.convert_text(CAPTION, 64, 64)
    lonely = "A ring is at <box><loc_1><loc_2><loc_3><loc_4></box>. Done."
    assert to_tag_first(lonely) == lonely


def test_a_caption_whose_box_does_not_follow_its_phrase_is_refused():
    with pytest.raises(LayoutError, match="not its tag"):
        to_box_first("Two cameras [[0.1, 0.1, 0.2, 0.2]] and [[0.3, 0.3, 0.4, 0.4]] sit on a desk.")


def test_stage_examples_write_captions_box_first_and_count_what_cannot(tmp_path):
    codec = BoxCodec("bins")
    sample, _ = generate_scene(3, 0, 64)
    caption, direct = build_stage_examples(sample, load_prompts("v1"), codec, ("caption", "direct"),
                                           caption_mentions="box_first")
    assert caption.target == direct.target == codec.convert_text(to_box_first(sample.caption), 64, sample.height)
    assert to_tag_first(caption.target) == codec.convert_text(sample.caption, 64, sample.height)
    odd = PanopticSample.from_dict({**sample.to_dict(), "caption": "Two shapes [[0.1, 0.1, 0.2, 0.2]] and "
                                    "[[0.3, 0.3, 0.4, 0.4]]."})
    skipped: list[tuple[str, str]] = []
    examples = build_stage_examples(odd, load_prompts("v1"), codec, ("localize", "caption"), skipped=skipped,
                                    caption_mentions="box_first")
    assert [ex.stage for ex in examples] == ["localize"]
    assert skipped and skipped[0][0] == "caption" and "box_first" in skipped[0][1]
    with pytest.raises(ValueError, match="caption_mentions must be one of"):
        build_stage_examples(sample, load_prompts("v1"), codec, ("caption",), caption_mentions="sideways")


def test_mask_targets_find_the_tag_after_a_box_first_group():
    codec = BoxCodec("bins")
    for index in range(3):
        sample, _ = generate_scene(index, 0, 64)
        spans = {}
        for layout in ("tag_first", "box_first"):
            [ex] = build_stage_examples(sample, load_prompts("v1"), codec, ("caption",), caption_mentions=layout)
            targets = answer_mask_targets(ex.target, sample, codec)
            assert targets, sample.id
            assert all((t.tag_start > t.end) == (layout == "box_first") for t in targets)
            spans[layout] = [(t.entity_id, ex.target[t.tag_start : t.tag_end].lower()) for t in targets]
        assert spans["tag_first"] == spans["box_first"]
        assert all(sample.entities[i].tag == tag for i, tag in spans["box_first"])


def test_an_unknown_caption_layout_fails_at_start():
    with pytest.raises(ConfigError, match="data.caption_mentions must be one of"):
        load_recipe("recipes/tiny_chain.yaml", ["data.caption_mentions=sideways"])


def test_the_chain_reads_and_reports_a_box_first_caption_in_the_papers_layout(tiny_checkpoint):
    from PIL import Image

    from pancapchain.infer.chain import ChainState, PancapChain

    chain = PancapChain.from_pretrained(str(tiny_checkpoint))
    codec, image = chain.codec, Image.new("RGB", (64, 64))
    tag_first_raw = codec.convert_text(CAPTION, 64, 64)
    reference = chain.set_output(ChainState("a", image), "caption", tag_first_raw)
    chain.caption_mentions = "box_first"
    state = ChainState("b", image)
    box_first_raw = codec.convert_text(to_box_first(CAPTION), 64, 64)
    out = chain.set_output(state, "caption", box_first_raw)
    assert out.raw == box_first_raw  # what the model wrote is kept as written
    assert out.items == reference.items and len(out.items) == 3
    prediction = chain.prediction(state)
    assert prediction.caption_model == tag_first_raw
    assert [e.tag for e in prediction.entities] == ["sky", "large dotted yellow hexagon", "small red ring"]


def test_a_caption_that_would_not_come_back_unchanged_is_refused(monkeypatch):
    import pancapchain.data.caption_layout as layout

    monkeypatch.setattr(layout, "to_tag_first", lambda text: text.replace("gray", "grey"))
    with pytest.raises(LayoutError, match="unchanged"):
        layout.to_box_first(CAPTION)


def test_chat_shows_a_box_first_caption_in_the_papers_layout(tiny_checkpoint):
    import io

    from PIL import Image

    from pancapchain.infer.chain import PancapChain
    from pancapchain.infer.chat import ChatSession

    chain = PancapChain.from_pretrained(str(tiny_checkpoint))
    chain.caption_mentions = "box_first"
    out = io.StringIO()
    chat = ChatSession(chain, out=out)
    chat.load(Image.new("RGB", (64, 64)), "img")
    chat.stage_index = 3  # as if the chain had reached the caption
    chain.set_output(chat.state, "caption", chain.codec.convert_text(to_box_first(CAPTION), 64, 64))  # as generated
    chat.show()
    assert chain.codec.convert_text(CAPTION, 64, 64) in out.getvalue()
