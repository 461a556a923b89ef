"""The direct-captioning baseline (prompt, samples, plan) and the ``bins`` location-token box format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_stages import P1, P4, SAMPLE, TAGS

from pancapchain.ablation import ProtocolError, load_protocol
from pancapchain.constants import LOC_BINS, LOC_TOKENS
from pancapchain.data.boxes import BoxCodec, find_box_groups, norm_to_grid
from pancapchain.data.prompts import load_prompts
from pancapchain.data.stage_parse import parse_stage_output
from pancapchain.data.stages import build_stage_examples
from pancapchain.infer.chain import PLANS, output_slot

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = load_prompts()
BINS = BoxCodec("bins")
# SAMPLE is 640x480: padded square 640 wide, 80 px above and below; 32 bins of 20 px.
B_BOXES = ["<box><loc_8><loc_6><loc_24><loc_26></box>", "<box><loc_3><loc_16><loc_29><loc_28></box>",
           "<box><loc_0><loc_4><loc_32><loc_18></box>"]
DIRECT_PROMPT = ("Please provide a hyper-detailed description for this image, including all entities, their "
                 "locations, attributes, and relationships, as well as the global image status.")


def test_bins_stage_samples_exact_strings():
    ex = {e.stage: e for e in build_stage_examples(SAMPLE, PROMPTS, BINS, stages=("localize", "caption", "direct"))}
    assert (ex["localize"].prompt, ex["localize"].target) == (P1, ", ".join(B_BOXES))
    assert ex["caption"].prompt == P4 + ", ".join(f"{t} {b}" for t, b in zip(TAGS, B_BOXES))
    caption = f"A woman {B_BOXES[0]} sits at a wooden desk {B_BOXES[1]} in front of a glass wall {B_BOXES[2]}."
    assert ex["caption"].target == caption


def test_direct_prompt_builds_the_caption_without_items_and_parses_back():
    [ex] = build_stage_examples(SAMPLE, PROMPTS, BINS, stages=("direct",))
    assert ex.prompt == DIRECT_PROMPT == PROMPTS.render("direct")
    parsed = parse_stage_output(output_slot("direct"), ex.target, BINS, SAMPLE.width, SAMPLE.height)
    assert len(parsed.items) == 3 and parsed.malformed == ()
    for item, ent in zip(parsed.items, SAMPLE.entities):  # within half a bin of the truth on the square
        assert all(abs(a - b) <= 0.5 / LOC_BINS * 640 / side + 1e-9
                   for a, b, side in zip(item.boxes[0], ent.box, (640, 480, 640, 480)))


def test_plans_and_slots():
    assert PLANS["chain"] == ("localize", "label", "discover", "caption")
    assert PLANS["no-discover"] == ("localize", "label", "caption") and PLANS["direct"] == ("direct",)
    assert output_slot("direct") == "caption" and output_slot("label") == "label"


def test_bins_groups_are_found_among_other_formats_and_debris_is_reported():
    text = "a <box><loc_1><loc_2><loc_3><loc_4></box> b [[0.1, 0.2, 0.3, 0.4]] c <box>[[1, 2, 3, 4]]</box>"
    groups = find_box_groups(text)
    assert [(g.binned, g.is_integer_grid) for g in groups] == [(True, False), (False, False), (False, True)]
    assert groups[0].values == ((1.0, 2.0, 3.0, 4.0),)
    cut = parse_stage_output("caption", "a cat <box><loc_1><loc_2>", BINS, 64, 64)  # truncated mid-box
    assert cut.items == () and cut.malformed == ("<box><loc_1><loc_2>",)


@settings(max_examples=200, deadline=None)
@given(st.integers(16, 200), st.integers(16, 200), st.lists(st.floats(0, 1), min_size=4, max_size=4))
def test_bins_round_trip_is_within_half_a_bin(width, height, values):
    x1, x2 = sorted(values[:2])
    y1, y2 = sorted(values[2:])
    text = BINS.encode([(x1, y1, x2, y2)], width, height)
    [group] = find_box_groups(text)
    [back] = BINS.decode_group(group, width, height)
    side = max(width, height)
    for a, b, extent in zip(back, (x1, y1, x2, y2), (width, height, width, height)):
        assert abs(a - b) <= (0.5 / LOC_BINS) * side / extent + 1e-9
    assert BINS.encode([back], width, height) == text  # decoding then encoding is exact
    assert all(0 <= v <= LOC_BINS for v in norm_to_grid((x1, y1, x2, y2), width, height, LOC_BINS))
    assert len(LOC_TOKENS) == LOC_BINS + 1


def test_the_ablation_protocol_validates_every_variant(tmp_path):
    proto = load_protocol(ROOT / "eval" / "synthetic_ablation.yaml", ROOT)
    assert {"chain", "direct", "no_discover"} <= set(proto.variants)
    assert proto.recipe_for(proto.variants["direct"]).data.stages["direct"] == 1.0
    assert proto.recipe_for(proto.variants["no_discover"]).data.stages["discover"] == 0.0
    # the recipe thins stage 3; the variants that drop it unset that rate (a null override)
    assert proto.recipe_for(proto.variants["chain"]).data.stage_rates == {"discover": 0.25}
    assert proto.recipe_for(proto.variants["direct"]).data.stage_rates == {}
    assert proto.recipe_for(proto.variants["no_discover"]).data.stage_rates == {}
    # the shared pretrained base's seconds come out of every variant's training budget
    assert proto.recipe_for(proto.variants["chain"]).train.max_seconds == proto.budget_seconds - proto.pretrain_seconds
    bad = json.loads(json.dumps({"recipe": "recipes/tiny_chain.yaml", "budget_seconds": 10, "loss_rows": 4,
                                 "pretrain_seconds": 10,
                                 "infer_batch_size": 2, "data": {"train": {"n": 4, "seed": 0, "size": 64}},
                                 "variants": {"x": {"plan": "sideways", "overrides": {"data.nope": 1},
                                                    "eval_sets": ["val"]}}}))
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps(bad))
    with pytest.raises(ProtocolError) as err:
        load_protocol(path, ROOT)
    text = str(err.value)
    assert "plan 'sideways'" in text and "eval set 'val'" in text and "data.nope" in text
    assert "pretrain_seconds must be >= 0 and below budget_seconds (10)" in text
    lm = dict(bad, pretrain_seconds=4, lm_pretrain_seconds=6, variants={})
    path.write_text(json.dumps(lm))
    with pytest.raises(ProtocolError, match=r"pretrain_seconds \+ lm_pretrain_seconds \(10\) must stay below"):
        load_protocol(path, ROOT)
    path.write_text(json.dumps(dict(lm, budget_seconds=30)))
    assert load_protocol(path, ROOT).train_seconds == 20  # both pretraining shares come out of the budget
    path.write_text(json.dumps(dict(lm, budget_seconds=30, pretrain_seconds=0)))
    with pytest.raises(ProtocolError, match="only with pretrain_seconds > 0"):
        load_protocol(path, ROOT)
    # decoding flags for every variant: one string, split as a shell would
    assert proto.infer_args == ("--localize-views", "9", "--localize-mirror", "--localize-votes", "7",
                                "--localize-suppress", "0.4", "--discover-seen", "4", "--localize-view-batch", "6")
    assert proto.variant_infer_args(proto.variants["chain"], ("--limit", "3"))[-3:] == (
        "--localize-mask-boxes", "--limit", "3")
    assert proto.variant_infer_args(proto.variants["chain_conversation"]) == proto.infer_args
    path.write_text(json.dumps(dict(lm, budget_seconds=30, infer_args=["--localize-views", "9"])))
    with pytest.raises(ProtocolError, match="infer_args is one string of pancapchain infer flags"):
        load_protocol(path, ROOT)


def test_raster_order_lists_items_top_band_first_then_left_to_right():
    ex = {e.stage: e for e in build_stage_examples(SAMPLE, PROMPTS, BINS, item_order="raster")}
    order = [2, 0, 1]  # wall (top band, x 0), woman (top band, x 0.25), desk (band 4)
    assert ex["localize"].target == ", ".join(B_BOXES[i] for i in order)
    assert ex["label"].target == ", ".join(f"{TAGS[i]} {B_BOXES[i]}" for i in order)
    caption_order = {e.stage: e for e in build_stage_examples(SAMPLE, PROMPTS, BINS)}
    assert caption_order["localize"].target == ", ".join(B_BOXES)
    assert ex["caption"].target == caption_order["caption"].target  # the caption is never reordered
    with pytest.raises(ValueError, match="item_order"):
        build_stage_examples(SAMPLE, PROMPTS, BINS, item_order="random")


def test_sincos_vision_positions_and_loc_tokens_in_the_tiny_base():
    import torch

    from pancapchain.config import TinyModelConfig
    from pancapchain.model.tiny import build_tiny_model, build_tokenizer, sincos_2d

    tok = build_tokenizer(["a cat <box><loc_1><loc_2><loc_3><loc_4></box>"], 300, loc_tokens=True)
    assert all(tok.convert_tokens_to_ids(t) != tok.unk_token_id for t in LOC_TOKENS)
    cfg = TinyModelConfig(hidden_size=32, intermediate_size=64, vision_hidden_size=16, image_size=32, patch_size=8,
                          vision_position_init="sincos")
    model = build_tiny_model(tok, cfg)
    [weight] = [p for n, p in model.named_parameters() if n.endswith("position_embedding.weight")]
    table = sincos_2d(4, 16)
    assert torch.equal(weight.detach(), table) and torch.equal(table[0], torch.zeros(16))
    assert not torch.equal(table[1], table[2]) and not torch.equal(table[1], table[5])  # column and row differ
