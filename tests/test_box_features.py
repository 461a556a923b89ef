"""Box features: each </box> the language model reads gets the image's mean feature inside its box."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import micro_llava

from pancapchain.model.box_features import (
    BoxFeatures,
    attach_box_features,
    group_patch_weights,
    patch_weights,
)
from pancapchain.model.tiny import build_tokenizer

# two given boxes: bins 0-16 of 32 (top-left 2 x 2 patches) and x 24-32, y 8-32 (column 3, rows 1-3)
PROMPT = "<image>" * 16 + "tag these <box><loc_0><loc_0><loc_16><loc_16></box>, <box><loc_24><loc_8><loc_32><loc_32></box>"


def tiny():
    tokenizer = build_tokenizer(["a red circle at the left", "tag these"] * 5, 300, loc_tokens=True)
    return micro_llava(tokenizer)


def test_patch_weights_are_the_share_of_each_patch_inside_the_boxes():
    w = patch_weights([(0.0, 0.0, 0.5, 0.375)], 4).view(4, 4)
    assert torch.allclose(w, torch.tensor([[1, 1, 0, 0], [0.5, 0.5, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0.0]]))
    union = patch_weights([(0.0, 0.0, 0.25, 0.25), (0.0, 0.0, 0.5, 0.25)], 4).view(4, 4)
    assert union[0].tolist() == [1, 1, 0, 0] and union[1:].sum() == 0  # overlap counted once
    thin = patch_weights([(0.6, 0.6, 0.6, 0.9)], 4).view(4, 4)
    assert thin.sum() == 1 and thin[3, 2] == 1  # a zero-area box reads the patch under its centre


def test_group_patch_weights_equal_patch_weights_group_by_group():
    torch.manual_seed(0)
    corners = torch.rand(40, 2, 2).sort(dim=1).values  # (x1 <= x2, y1 <= y2)
    boxes = torch.stack([corners[:, 0, 0], corners[:, 0, 1], corners[:, 1, 0], corners[:, 1, 1]], 1)
    boxes[5] = torch.tensor([0.6, 0.6, 0.6, 0.9])  # zero area: the group's first box, its centre patch
    boxes[6] = torch.tensor([0.9, 0.2, 0.1, 0.4])  # inverted: covers nothing
    groups = torch.tensor([0] * 5 + [1, 1] + [2] * 3 + list(range(3, 33)))
    weights = group_patch_weights(boxes, groups, 33, 8)
    for g in range(33):
        expected = patch_weights([tuple(b) for b in boxes[groups == g].tolist()], 8)
        assert torch.allclose(weights[g], expected, atol=1e-6), g
    assert weights[1].sum() == 1 and weights[1].argmax() == 6 * 8 + 4  # row 6 (y 0.75), column 4 (x 0.6)


@pytest.mark.parametrize(("group", "n_boxes"), [
    ("<box><loc_3><loc_4><loc_20><loc_31></box>", 1),
    ("<box><loc_0><loc_1><loc_2><loc_3><loc_30><loc_31><loc_32><loc_32></box>", 2),
    ("<box>[[100, 200, 300, 400]]</box>", 1),  # not location tokens: read from the text
    ("<box><loc_3><loc_4></box>", 0),  # half a box: no group
])
def test_a_group_of_location_tokens_is_read_from_its_bins_as_its_text_reads(group, n_boxes):
    model, processor = tiny()
    hooks = BoxFeatures(model, processor.tokenizer)
    hooks._ids = processor.tokenizer("tag " + group, return_tensors="pt")["input_ids"]
    close = hooks._ids.shape[1] - 1
    open_at = int((hooks._ids[0] == processor.tokenizer.convert_tokens_to_ids("<box>")).nonzero()[-1])
    bins = hooks._location_bins(hooks._ids)
    assert int((bins >= 0).sum()) == group.count("<loc_")  # every location token has its bin
    found = hooks._group_boxes(0, close, open_at, bins)
    expected = hooks._boxes(hooks._ids[0], open_at, close)
    assert len(expected) == n_boxes
    if n_boxes:
        assert torch.allclose(found, torch.tensor(expected))
    else:
        assert found is None


def language_model_inputs(model, input_ids, pixel_values) -> torch.Tensor:
    """The inputs_embeds (1, L, D) the language model receives (this hook runs after any other)."""
    seen = {}
    handle = model.model.language_model.register_forward_pre_hook(
        lambda m, a, k: seen.update(embeds=k["inputs_embeds"].detach().clone()), with_kwargs=True)
    try:
        with torch.no_grad():
            model(input_ids=input_ids, pixel_values=pixel_values)
    finally:
        handle.remove()
    return seen["embeds"]


def test_each_box_close_gets_the_weighted_mean_image_feature_of_its_box():
    torch.manual_seed(0)
    model, processor = tiny()
    ids = processor.tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    pixels = torch.randn(1, 3, 32, 32)
    before = language_model_inputs(model, ids, pixels)[0]
    hooks = attach_box_features(model, processor.tokenizer, enabled=True)
    after = language_model_inputs(model, ids, pixels)[0]
    hooks.remove()
    grid = before[ids[0] == model.config.image_token_id].view(4, 4, -1)  # row-major patch features
    closes = (ids[0] == processor.tokenizer.convert_tokens_to_ids("</box>")).nonzero().flatten()
    assert torch.allclose(after[closes[0]], before[closes[0]] + grid[:2, :2].reshape(4, -1).mean(0), atol=1e-6)
    assert torch.allclose(after[closes[1]], before[closes[1]] + grid[1:, 3].mean(0), atol=1e-6)
    others = torch.ones(len(ids[0]), dtype=torch.bool)
    others[closes] = False
    assert torch.equal(after[others], before[others])  # nothing else moves
    assert attach_box_features(model, processor.tokenizer, enabled=False) is None


@pytest.mark.parametrize("span", [0, 2])
def test_a_box_written_while_generating_gets_the_same_feature_as_in_a_full_forward(span):
    torch.manual_seed(0)
    model, processor = tiny()
    attach_box_features(model, processor.tokenizer, enabled=True, span=span)
    tok = processor.tokenizer
    prompt = tok([PROMPT, PROMPT.replace("<loc_16>", "<loc_8>")], return_tensors="pt")["input_ids"]
    pixels = torch.randn(2, 3, 32, 32)
    # force each row to write a box: only these tokens are allowed, in this order, then free decoding
    forced = tok.convert_tokens_to_ids(["<box>", "<loc_2>", "<loc_4>", "<loc_30>", "<loc_12>", "</box>"])

    def force(batch_id, input_ids):
        step = input_ids.shape[0] - prompt.shape[1]
        return [forced[step]] if step < len(forced) else list(range(len(tok)))

    with torch.no_grad():
        out = model.generate(input_ids=prompt, pixel_values=pixels, max_new_tokens=len(forced) + 3, do_sample=False,
                             min_new_tokens=len(forced) + 3, prefix_allowed_tokens_fn=force, output_logits=True,
                             return_dict_in_generate=True)
        full = model(input_ids=out.sequences[:, :-1], pixel_values=pixels).logits
    assert out.sequences[0, prompt.shape[1] : prompt.shape[1] + len(forced)].tolist() == forced
    for step, logits in enumerate(out.logits):
        assert torch.allclose(logits, full[:, prompt.shape[1] - 1 + step], atol=1e-4), step


def test_a_span_hands_the_words_after_a_box_its_feature_at_their_own_norm():
    torch.manual_seed(0)
    model, processor = tiny()
    text = "<image>" * 16 + "tag these <box><loc_0><loc_0><loc_16><loc_16></box> red circle, " \
        "<box><loc_24><loc_8><loc_32><loc_32></box> at the left"
    ids = processor.tokenizer(text, return_tensors="pt")["input_ids"]
    tokens = processor.tokenizer.convert_ids_to_tokens(ids[0])
    pixels = torch.randn(1, 3, 32, 32)
    before = language_model_inputs(model, ids, pixels)[0]
    hooks = attach_box_features(model, processor.tokenizer, enabled=True, span=2)
    after = language_model_inputs(model, ids, pixels)[0]
    hooks.remove()
    grid = before[ids[0] == model.config.image_token_id].view(4, 4, -1)
    first, second = grid[:2, :2].reshape(4, -1).mean(0), grid[1:, 3].mean(0)
    closes = [i for i, t in enumerate(tokens) if t == "</box>"]
    carried = {closes[0] + 1: first, closes[0] + 2: first, closes[1] + 1: second, closes[1] + 2: second}
    assert [tokens[i].lstrip("\u0120") for i in carried] == ["red", "circle", "at", "the"]
    for i, feature in carried.items():  # the word's own norm, the box's direction
        added = after[i] - before[i]
        assert torch.allclose(added.norm(), before[i].norm(), rtol=1e-4)
        assert torch.allclose(added / added.norm(), feature / feature.norm(), atol=1e-5)
    assert torch.allclose(after[closes[1]], before[closes[1]] + second, atol=1e-6)  # </box> keeps the full mean
    others = torch.ones(len(tokens), dtype=torch.bool)
    others[closes + list(carried)] = False
    assert torch.equal(after[others], before[others])  # the comma, "left" and the prompt do not move


def test_a_span_without_box_features_is_refused():
    from pancapchain.config import ConfigError, load_recipe

    with pytest.raises(ConfigError, match="box_feature_span"):
        load_recipe("recipes/tiny_chain.yaml", ["data.box_features=false", "data.box_feature_span=2"])
    with pytest.raises(ConfigError, match="box_feature_span"):
        load_recipe("recipes/tiny_chain.yaml", ["data.box_feature_span=-1"])


def test_without_a_square_patch_grid_the_hook_says_why():
    model, processor = tiny()
    hooks = BoxFeatures(model, processor.tokenizer)
    hooks._ids = torch.tensor([[model.config.image_token_id] * 3])
    hooks._images = [torch.zeros(3, 32)]
    hooks._ids = torch.cat([hooks._ids, processor.tokenizer("<box><loc_0><loc_0><loc_8><loc_8></box>",
                                                            return_tensors="pt")["input_ids"]], 1)
    close = hooks._ids.shape[1] - 1
    with pytest.raises(ValueError, match="square patch grid"):
        hooks._pool_groups([(0, close)], torch.zeros(1, close + 1, 32))


def test_normalized_boxes_are_refused_with_box_features():
    from pancapchain.config import ConfigError, load_recipe

    with pytest.raises(ConfigError, match="box_features"):
        load_recipe("recipes/tiny_chain.yaml", ["data.box_features=true", "data.box_format=normalized"])


def test_a_recipe_with_box_features_trains_and_its_checkpoint_chains_with_them(tmp_path):
    from conftest import tiny_overrides, write_dataset

    from pancapchain.config import load_recipe
    from pancapchain.infer.chain import ChainState, PancapChain
    from pancapchain.infer.generation import GenerationOptions
    from pancapchain.train.run import run_training

    train = write_dataset(tmp_path / "data", n=4)
    overrides = tiny_overrides(train, tmp_path / "run", **{
        "train.max_steps": "2", "data.box_format": "bins", "data.box_features": "true",
        "data.label_answer": "box_first", "data.box_feature_span": "2", "data.caption_mentions": "box_first"})
    run_training(load_recipe(None, overrides))
    meta = json.loads((tmp_path / "run" / "pancap_meta.json").read_text())
    assert meta["box_features"] is True and meta["label_answer"] == "box_first" and meta["item_order"] == "caption"
    assert meta["box_feature_span"] == 2 and meta["caption_mentions"] == "box_first"
    chain = PancapChain.from_pretrained(str(tmp_path / "run"))
    llava = chain.generator.model.get_base_model().model if hasattr(chain.generator.model, "get_base_model") \
        else chain.generator.model.model
    assert len(llava.language_model._forward_pre_hooks) == 1 and chain.label_answer == "box_first"
    assert chain.caption_mentions == "box_first"
    from pancapchain.infer.references import training_tags

    tags = sorted({e["tag"] for line in train.read_text().splitlines() for e in json.loads(line)["entities"]})
    assert meta["reference_tags"] == training_tags(train) == tags and chain.reference_tags == tuple(tags)
    assert chain.caption_reference_tags("caption", GenerationOptions()) == tuple(tags)
    assert chain.caption_reference_tags("direct", GenerationOptions(reference_tags=("red ring",))) == ("red ring",)
    assert chain.caption_reference_tags("label", GenerationOptions()) == ()
    assert chain.caption_reference_tags("caption", GenerationOptions(named_references=False)) == ()
    assert next(iter(llava.language_model._forward_pre_hooks.values())).__self__.span == 2  # from the meta
    from PIL import Image

    state = ChainState("s0", Image.open(train.parent / "images" / "s0.png"))
    options = GenerationOptions(max_new_tokens={s: 8 for s in ("localize", "label", "discover", "caption")})
    chain.run([state], options)
    assert set(state.outputs) == {"localize", "label", "discover", "caption"}


def test_an_unknown_label_answer_is_refused():
    from pancapchain.config import ConfigError, load_recipe

    with pytest.raises(ConfigError, match="label_answer must be one of"):
        load_recipe("recipes/tiny_chain.yaml", ["data.label_answer=sideways"])


def test_a_span_stops_at_sentencepiece_newlines_and_spaces_too():
    from pancapchain.model.box_features import span_stop_ids

    class SentencePieceLike:  # Llama-2 style pieces: "▁word", newline as the byte token <0x0A>
        vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "\u2581red": 3, "\u2581ring": 4, ",": 5, "<0x0A>": 6, "\u2581": 7,
                 "<box>": 8, "\u2581.": 9}
        unk_token_id, all_special_ids = 0, [0, 1, 2]

        def convert_tokens_to_ids(self, tokens):
            return [self.vocab.get(t, self.unk_token_id) for t in tokens]

    assert span_stop_ids(SentencePieceLike()).tolist() == [0, 1, 2, 5, 6, 7, 8, 9]
