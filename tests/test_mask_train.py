"""The mask head inside training and inference: grounding positions, zero-entity batches, checkpoints, chain."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_overrides

from pancapchain.config import load_recipe
from pancapchain.constants import BOX_CLOSE
from pancapchain.data.synth import write_dataset
from pancapchain.infer.chain import ChainState, PancapChain
from pancapchain.infer.generation import GenerationOptions
from pancapchain.mask.attach import mask_head_of
from pancapchain.mask.losses import dice_loss, sigmoid_bce_loss
from pancapchain.mask.targets import loads_targets
from pancapchain.model.outputs import image_features_of
from pancapchain.model.states import final_norm
from pancapchain.train.run import build_run, run_training

MASK = {"mask.enabled": "true", "mask.dim": "16", "mask.upsample": "1"}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    write_dataset(root, 6, 2, seed=3, size=32, progress=False)
    return root


def test_grounding_positions_are_the_closing_box_tokens(synth, tmp_path):
    run = build_run(load_recipe(None, tiny_overrides(synth / "train.jsonl", tmp_path / "out", **MASK)))
    rows = [run.train_ds[i] for i in range(8)]
    batch = run.trainer.data_collator(rows)
    close_id = run.processor.tokenizer.convert_tokens_to_ids(BOX_CLOSE)
    positions = batch["mask_positions"]
    n_targets = sum(len(loads_targets(r["masks"])) for r in rows)
    assert positions.shape == (n_targets, 2) and n_targets > 0
    # the query token of every entity is exactly its </box> token in input_ids (no offsets anywhere)
    assert (batch["input_ids"][positions[:, 0], positions[:, 1]] == close_id).all()
    # and every supervised </box> of the answers is a query
    supervised_close = (batch["labels"] == close_id) & torch.tensor([[bool(r["masks"])] for r in rows])
    assert int(supervised_close.sum()) == n_targets
    side = mask_head_of(run.trainer.model).cfg.mask_side
    assert batch["mask_targets"].shape == (n_targets, side, side)
    assert set(batch["mask_targets"].unique().tolist()) <= {0.0, 1.0}
    # MECL positives point at tag tokens of the answer, before each query
    pairs, words = batch["mask_word_pairs"], batch["word_positions"]
    assert len(pairs) > 0
    tag_pos = words[pairs[:, 1]]
    assert (tag_pos[:, 0] == positions[pairs[:, 0], 0]).all() and (tag_pos[:, 1] < positions[pairs[:, 0], 1]).all()


def test_batch_without_any_mask_still_trains_every_head_parameter(synth, tmp_path):
    run = build_run(load_recipe(None, tiny_overrides(synth / "train.jsonl", tmp_path / "out", **MASK)))
    rows = [dict(run.train_ds[i], masks="") for i in range(4)]  # zero entities with masks
    batch = run.trainer.data_collator(rows)
    assert batch["mask_positions"].shape == (0, 2)
    model = run.trainer.model
    model.train()
    loss = run.trainer.compute_loss(model, dict(batch))
    loss.backward()
    head = mask_head_of(model)
    assert torch.isfinite(loss)
    assert not final_norm(model)._forward_hooks  # the mask loss's hook lived for the forward only
    assert all(p.grad is not None for p in head.parameters())  # the zero-entity anchor keeps them in the graph


@pytest.mark.parametrize("pixel_skip", ["0", "4"])
def test_mask_loss_of_the_rows_with_masks_equals_the_loss_over_every_row(synth, tmp_path, pixel_skip):
    """The head skips rows without masks; BCE, Dice and MECL equal the head run on the whole batch (with
    ``mask.pixel_skip``, each row's own pixels reach the head)."""
    overrides = tiny_overrides(synth / "train.jsonl", tmp_path / "out", **MASK, **{"mask.pixel_skip": pixel_skip})
    run = build_run(load_recipe(None, overrides))
    with_masks = [r for r in (run.train_ds[i] for i in range(len(run.train_ds))) if r["masks"]]
    rows = [dict(with_masks[0], masks=""), with_masks[0], dict(with_masks[1], masks=""), with_masks[1]]
    batch = run.trainer.data_collator(rows)
    assert batch["mask_positions"][:, 0].unique().tolist() == [1, 3]
    model, (aux,) = run.trainer.model, run.trainer.aux_losses
    model.eval()
    with aux.capture():
        outputs = model(**{k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")})
    states = aux.final_states.take()
    aux.final_states.take = lambda: states  # the reference below reads the same states
    parts = aux(outputs, batch)

    head, positions = mask_head_of(model), batch["mask_positions"]
    per_row = [states[b, positions[positions[:, 0] == b, 1]] for b in range(4)]
    boxes = [batch["mask_boxes"][positions[:, 0] == b] for b in range(4)]
    pixels = batch["pixel_values"] if pixel_skip != "0" else None
    feats, logits = head.forward_features(image_features_of(outputs, 4), per_row, boxes, pixels)
    target = batch["mask_targets"]
    assert torch.allclose(parts["mask_bce"], aux.weights["bce"] * sigmoid_bce_loss(torch.cat(logits), target))
    assert torch.allclose(parts["mask_dice"], aux.weights["dice"] * dice_loss(torch.cat(logits), target))
    mecl_all_rows = aux._mecl(states, feats, logits, torch.arange(4), batch)
    assert torch.allclose(parts["mecl"], aux.weights["mecl"] * mecl_all_rows) and float(mecl_all_rows) > 0


def test_mask_training_checkpoint_and_chain_masks(synth, tmp_path):
    out = tmp_path / "run"
    metrics = run_training(load_recipe(None, tiny_overrides(synth / "train.jsonl", out, **MASK,
                                                            **{"train.max_steps": "3"})))
    log = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())["log_history"]
    assert any("mask_bce" in entry and "mask_dice" in entry and "mecl" in entry for entry in log)
    assert metrics["train_stage_rows"] > 0
    for folder in (out, out / "checkpoint-3"):
        assert (folder / "mask_head.safetensors").is_file() and (folder / "mask_head.json").is_file()

    chain = PancapChain.from_pretrained(str(out))
    assert chain.masks is not None and chain.stage1_masks  # the default mask.stages supervises stage-1 answers
    meta = json.loads((out / "pancap_meta.json").read_text())
    (out / "pancap_meta.json").write_text(json.dumps(dict(meta, mask_stages=["caption"])))
    assert not PancapChain.from_pretrained(str(out)).stage1_masks  # --localize-mask-boxes would refuse it
    (out / "pancap_meta.json").write_text(json.dumps(meta))
    from PIL import Image

    sample = json.loads((synth / "val.jsonl").read_text().splitlines()[0])
    image = Image.open(synth / sample["image"]).convert("RGB")
    caption_given = "A red circle <box>[[100, 200, 400, 600]]</box> and a sky <box>[[0, 100, 1000, 400]]</box>."
    options = GenerationOptions(max_new_tokens={"localize": 8, "label": 8, "discover": 8, "caption": 8})
    [result] = chain.run([ChainState("x", image)], options, given=[{"caption": caption_given}])
    assert not final_norm(chain.masks.model)._forward_hooks  # inference hooks the final norm per forward, then removes it
    result = result.to_dict()
    assert len(result["entities"]) == 2 and len(result["masks"]) == 2
    assert [m["box"] for m in result["masks"]] == [e["box"] for e in result["entities"]]
    for entry in result["masks"]:
        assert entry["rle"]["size"] == [image.height, image.width]
        assert 0.0 <= entry["score"] <= 1.0


def test_box_prior_marks_pixel_centres_inside_the_box():
    from pancapchain.mask.head import box_prior
    from pancapchain.mask.targets import box_on_square

    prior = box_prior(torch.tensor([[0.0, 0.5, 0.5, 1.0]]), 4)
    expected = torch.tensor([[-1, -1, -1, -1], [-1, -1, -1, -1], [1, 1, -1, -1], [1, 1, -1, -1]], dtype=torch.float32)
    assert torch.equal(prior[0], expected)
    # a 40x20 image sits in rows 10..29 of its 40x40 square: the full-image box covers y in [0.25, 0.75]
    assert box_on_square((0.0, 0.0, 1.0, 1.0), 40, 20) == (0.0, 0.25, 1.0, 0.75)


def test_collated_boxes_are_the_entities_boxes_on_the_square(synth, tmp_path):
    run = build_run(load_recipe(None, tiny_overrides(synth / "train.jsonl", tmp_path / "out", **MASK)))
    rows = [run.train_ds[i] for i in range(6)]
    batch = run.trainer.data_collator(rows)
    assert batch["mask_boxes"].shape == (batch["mask_positions"].shape[0], 4)
    boxes = batch["mask_boxes"]
    assert ((boxes >= 0) & (boxes <= 1)).all() and (boxes[:, 2] >= boxes[:, 0]).all()
    assert mask_head_of(run.trainer.model).box_gain is not None


def test_full_fine_tune_keeps_the_head_out_of_model_safetensors(synth, tmp_path):
    """Without LoRA the Trainer saves the whole model: the head goes to its own file only, and comes back from it."""
    from safetensors.torch import load_file

    out = tmp_path / "run"
    run_training(load_recipe(None, tiny_overrides(synth / "train.jsonl", out, **MASK, **{
        "train.max_steps": "2", "lora.enabled": "false", "model.train_language_model": "true"})))
    for folder in (out, out / "checkpoint-2"):
        keys = load_file(folder / "model.safetensors").keys()
        assert keys and not [k for k in keys if "mask_head" in k]
        assert (folder / "mask_head.safetensors").is_file()
    saved = load_file(out / "mask_head.safetensors")
    head = PancapChain.from_pretrained(str(out)).masks.head
    assert saved and all(torch.equal(head.state_dict()[k], v) for k, v in saved.items())
