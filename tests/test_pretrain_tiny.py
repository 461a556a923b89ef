"""pretrain-tiny: dense patch targets, the tower-only pretraining, and the llava-hf folder it saves."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_overrides, write_dataset

from pancapchain.config import ConfigError, load_recipe
from pancapchain.data.schema import Entity, PanopticSample
from pancapchain.mask.rle import box_to_mask, encode_rle
from pancapchain.model.vision_pretrain import (
    PAD_CLASS,
    DenseHead,
    DenseTargets,
    build_targets,
    dense_loss,
    entity_loss,
    mirror_pixels,
    patch_targets,
    tag_vocabulary,
)


def _scene(width: int, height: int) -> PanopticSample:
    thing_box = (0.0, 0.0, 0.25, 0.25)
    ground = Entity(0, "grass", (0.0, 0.0, 1.0, 1.0), encode_rle(box_to_mask((0, 0, 1, 1), height, width)),
                    is_thing=False)
    shape = Entity(1, "red square", thing_box, encode_rle(box_to_mask(thing_box, height, width)))
    return PanopticSample("scene", "images/x.png", width, height, (ground, shape), "caption")


def test_patch_targets_of_a_square_scene():
    sample = _scene(64, 64)
    vocab = tag_vocabulary([sample])
    assert vocab == {PAD_CLASS: 0, "grass": 1, "red square": 2}
    classes, boxes, weight, thing = patch_targets(sample, 4, vocab)  # 16 px per patch, the thing is one patch
    assert classes.shape == (16, 3) and boxes.shape == (16, 4) and weight.shape == (16,)
    torch.testing.assert_close(classes.sum(-1), torch.ones(16))
    # the stuff mask covers the thing's patch too (masks overlap here): both tags share it
    assert classes[0, 2] == pytest.approx(0.5) and classes[0, 1] == pytest.approx(0.5)
    assert classes[5, 1] == pytest.approx(1.0) and classes[:, 0].abs().max() == 0
    torch.testing.assert_close(boxes[0], torch.tensor([0.0, 0.0, 0.25, 0.25]))  # the thing owns its patch
    torch.testing.assert_close(boxes[5], torch.tensor([0.0, 0.0, 1.0, 1.0]))
    assert weight.min() == 1.0
    assert thing[0] == 1.0 and thing[1:].sum() == 0  # only the shape's patch is a thing's


def test_thing_weight_weighs_the_things_patches_in_both_losses():
    torch.manual_seed(0)
    head = DenseHead(8, 3)
    features = torch.randn(2, 4, 8)
    classes = torch.softmax(torch.randn(2, 4, 3), -1)
    targets = DenseTargets(classes, torch.rand(2, 4, 4), torch.ones(2, 4), torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0]]))
    plain, metrics = dense_loss(head, features, targets)
    weighted, metrics_w = dense_loss(head, features, targets, thing_weight=4.0)
    assert metrics == metrics_w  # the reported figures are unweighted
    logits, boxes = head(features)
    ce = -(classes * logits.log_softmax(-1)).sum(-1)  # (2, 4)
    box = 5.0 * (boxes - targets.boxes).abs().sum(-1)
    w = torch.tensor([[4.0, 1, 1, 1], [1, 1, 1, 1]])
    expected = (ce * w).sum() / w.sum() + (box * w).sum() / w.sum()
    torch.testing.assert_close(weighted, expected)
    torch.testing.assert_close(plain, ce.mean() + box.mean())
    assert metrics["thing_acc"] == float(logits[0, 0].argmax() == classes[0, 0].argmax())


def test_entity_targets_hold_each_shapes_patch_shares_and_tag():
    scene, plain = _scene(64, 64), PanopticSample("plain", "images/y.png", 64, 64, (_scene(64, 64).entities[0],), "c")
    vocab = tag_vocabulary([scene])
    targets = build_targets([scene, plain], 4, vocab)
    assert targets.entity_share.shape == (2, 1, 16) and targets.entity_class.tolist() == [[2], [-1]]
    expected = torch.zeros(16)
    expected[0] = 1.0  # the shape fills the first patch only
    torch.testing.assert_close(targets.entity_share[0, 0], expected)
    assert targets.take(torch.tensor([1])).entity_class.tolist() == [[-1]]


def test_box_pooled_entity_targets_spread_over_the_boxes_patches():
    thing_box = (0.0, 0.0, 0.5, 0.25)  # its mask fills the left half: two patches by box, one by mask
    h = w = 64
    mask = box_to_mask((0.0, 0.0, 0.25, 0.25), h, w)
    ground = Entity(0, "grass", (0.0, 0.0, 1.0, 1.0), encode_rle(box_to_mask((0, 0, 1, 1), h, w)), is_thing=False)
    ring = Entity(1, "red ring", thing_box, encode_rle(mask))
    scene = PanopticSample("s", "images/s.png", w, h, (ground, ring), "c")
    vocab = tag_vocabulary([scene])
    by_mask = build_targets([scene], 4, vocab).entity_share[0, 0]
    by_box = build_targets([scene], 4, vocab, entity_pool="box").entity_share[0, 0]
    assert by_mask[0] == pytest.approx(1.0) and by_mask[1:].sum() == pytest.approx(0.0)
    assert by_box[:2].tolist() == pytest.approx([0.5, 0.5]) and by_box[2:].sum() == pytest.approx(0.0)
    with pytest.raises(ValueError, match="entity_pool"):
        build_targets([scene], 4, vocab, entity_pool="area")


def test_mirrored_targets_match_the_targets_of_the_mirrored_scene():
    scene = _scene(64, 64)  # the shape in the top-left patch; its mirror image has it in the top-right one
    box = scene.entities[1].box
    mirrored_box = (1 - box[2], box[1], 1 - box[0], box[3])
    shape = Entity(1, "red square", mirrored_box, encode_rle(box_to_mask(mirrored_box, 64, 64)))
    mirror_scene = PanopticSample("m", "images/m.png", 64, 64, (scene.entities[0], shape), "caption")
    vocab = tag_vocabulary([scene])
    both = build_targets([scene, scene], 4, vocab).mirrored(torch.tensor([True, False]))
    expected = build_targets([mirror_scene], 4, vocab)
    for name in ("classes", "boxes", "box_weight", "thing", "entity_share", "entity_class"):
        torch.testing.assert_close(getattr(both, name)[0], getattr(expected, name)[0], msg=name)
        torch.testing.assert_close(getattr(both, name)[1], getattr(build_targets([scene], 4, vocab), name)[0])
    pixels = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    flipped = mirror_pixels(pixels, torch.tensor([False, True]))
    torch.testing.assert_close(flipped[0], pixels[0])
    torch.testing.assert_close(flipped[1, :, :, 0], pixels[1, :, :, 3])


def test_entity_loss_names_each_shape_from_its_pooled_features():
    torch.manual_seed(0)
    head = DenseHead(8, 3)
    features = torch.randn(2, 4, 8)
    share = torch.tensor([[[0.5, 0.5, 0, 0], [0, 0, 0, 0]], [[0, 0, 0.25, 0.75], [1.0, 0, 0, 0]]])
    cls = torch.tensor([[2, -1], [1, 2]])
    targets = DenseTargets(torch.softmax(torch.randn(2, 4, 3), -1), torch.rand(2, 4, 4), torch.ones(2, 4),
                           torch.zeros(2, 4), share, cls)
    ce, acc = entity_loss(head, features, targets)
    pooled = torch.stack([features[0, :2].mean(0), 0.25 * features[1, 2] + 0.75 * features[1, 3], features[1, 0]])
    logits = head.entity_classes(pooled)
    torch.testing.assert_close(ce, torch.nn.functional.cross_entropy(logits, torch.tensor([2, 1, 2])))
    assert acc == pytest.approx((logits.argmax(-1) == torch.tensor([2, 1, 2])).float().mean().item())
    without, metrics = dense_loss(head, features, targets)
    with_entities, metrics_e = dense_loss(head, features, targets, entity_weight=2.0)
    torch.testing.assert_close(with_entities, without + 2.0 * ce)
    assert "entity_acc" not in metrics and metrics_e["entity_acc"] == pytest.approx(acc)
    bare = DenseTargets(targets.classes, targets.boxes, targets.box_weight, targets.thing)
    with pytest.raises(ValueError, match="entity shares"):
        dense_loss(head, features, bare, entity_weight=1.0)


def test_patch_targets_on_the_padded_square():
    sample = _scene(64, 32)  # padded to 64x64: 16 px bars of padding above and below
    classes, boxes, weight, _ = patch_targets(sample, 4, tag_vocabulary([sample]))
    rows = classes[:, 0].reshape(4, 4)
    torch.testing.assert_close(rows[0], torch.ones(4))  # the top row is all padding
    torch.testing.assert_close(rows[1], torch.zeros(4))
    assert weight.reshape(4, 4)[0].sum() == 0 and weight.reshape(4, 4)[1].sum() == 4
    # the thing (top-left quarter-width, quarter-height of the image) on the square: y from 0.25 to 0.375
    torch.testing.assert_close(boxes[4], torch.tensor([0.0, 0.25, 0.25, 0.375]))


def test_pretrain_tiny_saves_a_base_that_transformers_and_a_bins_recipe_load(tmp_path, one_thread):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from pancapchain.model.build import load_base
    from pancapchain.model.pretrain_tiny import PRETRAIN_FILE, pretrain_tiny, tokenizer_texts

    train = write_dataset(tmp_path / "data", n=6, width=32, height=32)
    cfg = load_recipe("recipes/tiny_chain.yaml", tiny_overrides(train, tmp_path / "run", **{
        "lora.enabled": "false", "model.tiny.vision_feature_layer": "-1"}))
    out = tmp_path / "base"
    report = pretrain_tiny(cfg, out, seconds=2.0, batch_size=4, entity_weight=1.0)
    assert report["steps"] > 0 and report["images"] == 6 and (out / PRETRAIN_FILE).is_file()
    assert report["thing_weight"] == 4.0 and 0.0 <= report["thing_acc"] <= 1.0  # the default weighs shapes up
    assert report["box_head"] == "l1"  # the default; "bins" is run below
    assert report["entity_weight"] == 1.0 and 0.0 <= report["entity_acc"] <= 1.0  # shapes named whole (option)
    assert (out / "model.safetensors").is_file()

    model = AutoModelForImageTextToText.from_pretrained(out, local_files_only=True, use_safetensors=True)
    processor = AutoProcessor.from_pretrained(out, local_files_only=True)
    assert "<loc_0>" in processor.tokenizer.get_vocab()
    assert model.config.vision_feature_layer == -1

    random_base, _ = load_base(cfg, tokenizer_texts(cfg)[0])  # the same tokenizer and seeded init, untrained
    tower = dict(model.model.vision_tower.named_parameters())
    moved = [n for n, p in random_base.model.vision_tower.named_parameters() if not torch.equal(p, tower[n])]
    assert moved, "pretraining left the vision tower unchanged"
    lm = dict(model.model.language_model.named_parameters())
    assert all(torch.equal(p, lm[n]) for n, p in random_base.model.language_model.named_parameters())
    assert report["lm_pretrain_seconds"] == 0.0 and "lm_steps" not in report  # off by default

    with_lm = pretrain_tiny(cfg, tmp_path / "base_lm", seconds=1.0, batch_size=4, lm_seconds=1.0)
    assert with_lm["lm_steps"] > 0 and with_lm["lm_rows"] == 6 and with_lm["lm_pretrain_seconds"] == 1.0
    lm_trained = AutoModelForImageTextToText.from_pretrained(tmp_path / "base_lm", local_files_only=True)
    moved_lm = dict(lm_trained.model.language_model.named_parameters())
    assert any(not torch.equal(p, moved_lm[n]) for n, p in random_base.model.language_model.named_parameters())

    assert report["entity_pool"] == "mask" and report["mirror"] is False  # the defaults
    binned = pretrain_tiny(cfg, tmp_path / "base_bins", seconds=1.0, batch_size=4, box_head="bins",
                           entity_weight=1.0, entity_pool="box", mirror=True)
    assert binned["box_head"] == "bins" and binned["steps"] > 0 and 0.0 <= binned["box_l1"] <= 4.0
    assert binned["entity_pool"] == "box" and binned["mirror"] is True and 0.0 <= binned["entity_acc"] <= 1.0

    assert load_recipe("recipes/tiny_chain.yaml", [f"model.base={out}", f"data.train={train}"]).model.base == str(out)
    with pytest.raises(ConfigError, match="needs <loc_i> tokens"):
        load_recipe("recipes/tiny_chain.yaml", [f"model.base={tmp_path / 'data'}", f"data.train={train}"])


def test_bins_box_loss_prefers_the_true_bin_and_reports_the_expected_position():
    from pancapchain.model.vision_pretrain import box_loss

    target = torch.tensor([[[0.25, 0.5, 0.75, 1.0]]])  # (B=1, P=1, 4) on the padded square
    k = 33
    bins = (target * (k - 1)).round().long()  # 8, 16, 24, 32
    sharp = torch.full((1, 1, 4, k), -20.0).scatter(-1, bins[..., None], 20.0)
    off_by_one = torch.full((1, 1, 4, k), -20.0).scatter(-1, (bins - 1)[..., None], 20.0)
    far = torch.full((1, 1, 4, k), -20.0).scatter(-1, torch.zeros_like(bins)[..., None], 20.0)
    losses = [box_loss(p, target)[0].item() for p in (sharp, off_by_one, far)]
    assert losses[0] < losses[1] < losses[2]
    assert box_loss(sharp, target)[1].item() == pytest.approx(0.0, abs=1e-6)
    assert box_loss(far, target)[1].item() == pytest.approx(2.5, abs=1e-6)  # expected position 0 everywhere
    regression = box_loss(torch.tensor([[[0.2, 0.5, 0.75, 1.0]]]), target)
    assert regression[1].item() == pytest.approx(0.05) and regression[0].item() == pytest.approx(0.25)


def test_dense_head_shapes_per_box_head():
    from pancapchain.model.vision_pretrain import DenseHead

    features = torch.randn(2, 16, 8)
    logits, boxes = DenseHead(8, 5, box_bins=33)(features)
    assert logits.shape == (2, 16, 5) and boxes.shape == (2, 16, 4, 33)
    _, regressed = DenseHead(8, 5)(features)
    assert regressed.shape == (2, 16, 4) and bool(((regressed > 0) & (regressed < 1)).all())


def test_an_unknown_box_head_is_refused_before_any_work(tmp_path):
    from pancapchain.errors import UserError
    from pancapchain.model.pretrain_tiny import pretrain_tiny

    cfg = load_recipe("recipes/tiny_chain.yaml", [f"data.train={tmp_path / 'missing.jsonl'}"])
    with pytest.raises(UserError, match="box head must be one of"):
        pretrain_tiny(cfg, tmp_path / "base", 1.0, box_head="boxes")
    with pytest.raises(UserError, match="entity pool must be one of"):
        pretrain_tiny(cfg, tmp_path / "base", 1.0, entity_pool="area")
    assert not (tmp_path / "base").exists()
