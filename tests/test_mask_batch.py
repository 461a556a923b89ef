"""Masks of several answers from one teacher-forced forward equal the masks read one answer at a time."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import tiny_overrides
from PIL import Image

from pancapchain.config import load_recipe
from pancapchain.data.synth import write_dataset
from pancapchain.infer.chain import ChainState, PancapChain
from pancapchain.infer.masks import MaskRequest
from pancapchain.train.run import run_training

# a head that reads the pixels too (the tiny recipe's): the pixels of each row's own image reach the head
MASK = {"mask.enabled": "true", "mask.dim": "16", "mask.upsample": "1", "mask.pixel_skip": "4", "train.max_steps": "3"}


@pytest.fixture(scope="module")
def chain_and_images(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    write_dataset(root, 6, 2, seed=3, size=32, progress=False)
    out = tmp_path_factory.mktemp("run")
    run_training(load_recipe(None, tiny_overrides(root / "train.jsonl", out, **MASK)))
    samples = [json.loads(line) for line in (root / "val.jsonl").read_text().splitlines()]
    return PancapChain.from_pretrained(str(out)), [Image.open(root / s["image"]).convert("RGB") for s in samples]


def test_predict_many_equals_one_answer_at_a_time(chain_and_images):
    """Rows of different lengths (right-padded in the batch), one without a box, two rows on the same image."""
    chain, images = chain_and_images
    states = [ChainState(str(i), image) for i, image in enumerate(images)]
    features = chain.encode(states)
    prompt = chain.stage_prompt("localize", states[0])
    answers = ["<box>[[100, 200, 400, 600]]</box>",
               "A red circle <box>[[120, 80, 500, 610]]</box> on a sky <box>[[0, 0, 1000, 400]]</box> "
               "near a blue ring <box>[[600, 500, 900, 950]]</box>.",
               "nothing boxed here",
               "<box>[[50, 50, 300, 300]]</box>"]
    indices = [0, 1, 1, 0]
    requests = [MaskRequest(i, prompt, a, images[i].height, images[i].width) for i, a in zip(indices, answers)]
    batched = chain.masks.predict_many(features, requests)
    alone = [chain.masks.predict(features, *r) for r in requests]
    assert [len(m) for m in batched] == [1, 3, 0, 1]
    assert sum(m.mask.any() for row in batched for m in row) >= 3  # the comparison below is not of empty masks
    for batch_masks, one_masks in zip(batched, alone):
        for b, o in zip(batch_masks, one_masks):
            assert b.group == o.group
            assert b.mask.shape == (images[0].height, images[0].width)
            assert np.mean(b.mask != o.mask) <= 0.002  # float noise of a padded batch may flip a border pixel
            assert b.score == pytest.approx(o.score, abs=1e-4)
    assert chain.masks.predict_many(features, []) == []


def test_a_pixel_reading_head_needs_the_encoded_pixels(chain_and_images):
    chain, images = chain_and_images
    states = [ChainState(str(i), image) for i, image in enumerate(images)]
    features = chain.encode(states)
    assert chain.masks.head.cfg.pixel_skip == 4 and len(features.pixel_values) == len(images)
    request = MaskRequest(0, chain.stage_prompt("localize", states[0]), "<box>[[100, 200, 400, 600]]</box>",
                          images[0].height, images[0].width)
    assert len(chain.masks.predict_many(features, [request])[0]) == 1
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    with pytest.raises(ValueError, match="pixel_skip"):
        chain.masks.predict_many(BaseModelOutputWithPooling(pooler_output=features.pooler_output), [request])
