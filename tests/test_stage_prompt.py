"""One stage-prompt filler for training and inference, and one tokenization for the dataset and the collator."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from pancapchain.constants import DIRECT, STAGES
from pancapchain.data.boxes import BoxCodec
from pancapchain.data.prompts import load_prompts
from pancapchain.data.stages import build_stage_examples, discover_split, entity_items
from pancapchain.data.synth import generate_scene
from pancapchain.infer.chain import ChainState, PancapChain
from pancapchain.model.tiny import TinyModelConfig, build_processor, build_tokenizer
from pancapchain.train.collator import PancapCollator
from pancapchain.train.dataset import build_stage_dataset, collect_stage_examples

PROMPTS = load_prompts()
SCENES = [generate_scene(i, seed=5, size=96)[0] for i in range(6)]


def _chain(codec: str) -> PancapChain:
    """A chain without a model: only its prompt filling and parsing are used here."""
    return PancapChain(None, SimpleNamespace(tokenizer=None), PROMPTS, BoxCodec(codec), None)


def _state(sample) -> ChainState:
    return ChainState(sample.id, Image.new("RGB", (sample.width, sample.height)))


@pytest.mark.parametrize("codec", ["asmv2", "normalized"])
@pytest.mark.parametrize("order", ["caption", "raster"])
def test_gt_outputs_given_to_the_chain_give_the_training_prompts(codec, order):
    """Every stage's training target fed back as that stage's output yields the next stage's training prompt.

    discover_ratio (0, 0): nothing is hidden, so the stage-3 prompt lists every label item as the chain's does.
    """
    chain = _chain(codec)
    checked = 0
    for sample in SCENES:
        examples = build_stage_examples(sample, PROMPTS, chain.codec, (*STAGES, DIRECT), (0.0, 0.0),
                                        item_order=order)
        by_stage = {ex.stage: ex for ex in examples}
        assert set(by_stage) == {*STAGES, DIRECT}
        state = _state(sample)
        for stage in STAGES:
            assert chain.stage_prompt(stage, state) == by_stage[stage].prompt, (sample.id, stage)
            chain.set_output(state, stage, by_stage[stage].target)
            checked += 1
        assert by_stage["discover"].target == "None"
        assert chain.stage_prompt(DIRECT, _state(sample)) == by_stage[DIRECT].prompt
    assert checked == 4 * len(SCENES)


def test_chain_discover_prompt_from_the_known_items_equals_training():
    """With a real split, label output = the known items gives the training stage-3 prompt."""
    chain = _chain("asmv2")
    for seed, sample in enumerate(SCENES):
        ex = {e.stage: e for e in build_stage_examples(sample, PROMPTS, chain.codec, STAGES, (0.3, 0.7), seed)}
        items = entity_items(sample)
        known = [it for it, gone in zip(items, discover_split(sample.id, len(items), (0.3, 0.7), seed)) if not gone]
        state = _state(sample)
        chain.set_items(state, "label", known)
        assert chain.stage_prompt("discover", state) == ex["discover"].prompt


def test_dataset_length_is_the_collators_input_length(tmp_path: Path):
    """Every row's ``length`` equals its real input_ids length (attention mask sum) in a collated batch."""
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    lines = []
    for i, size in enumerate((96, 64, 80)):
        sample, image = generate_scene(i, seed=2, size=size)
        image.save(root / sample.image)
        lines.append(json.dumps(sample.to_dict()))
    (root / "train.jsonl").write_text("\n".join(lines) + "\n")
    processor = build_processor(build_tokenizer([s.caption for s in SCENES] * 3, vocab_size=400),
                                TinyModelConfig(image_size=32, patch_size=8))
    system = PROMPTS.system
    pairs, report = collect_stage_examples(root / "train.jsonl", None, PROMPTS, BoxCodec("asmv2"),
                                           stages=(*STAGES, DIRECT), discover_ratio=(0.3, 0.7))
    dataset = build_stage_dataset(pairs, processor, system, max_length=100_000, report=report)
    rows = list(dataset)
    assert len(rows) == 3 * 5
    batch = PancapCollator(processor, system)(rows)
    assert batch["attention_mask"].sum(dim=1).tolist() == [row["length"] for row in rows]
    # The same ids as the processor's own text + pixel path (what the collator called before).
    from pancapchain.model.chat import completion_text, render_prompt

    images = [Image.open(row["image"]).convert("RGB") for row in rows]
    ref = processor(text=[render_prompt(processor, row["prompt"], system) for row in rows], images=images)
    answers = processor.tokenizer([completion_text(row["target"]) for row in rows], add_special_tokens=False)
    for k, row in enumerate(rows):
        expected = ref["input_ids"][k] + answers["input_ids"][k] + [processor.tokenizer.eos_token_id]
        assert batch["input_ids"][k, : row["length"]].tolist() == expected
    # Rows carry their ids; without them the collator tokenizes the same text to the same batch.
    bare = [{k: v for k, v in row.items() if k not in ("prompt_ids", "answer_ids")} for row in rows]
    again = PancapCollator(processor, system)(bare)
    for key in ("input_ids", "labels", "attention_mask"):
        assert torch.equal(again[key], batch[key]), key


def test_dataset_with_every_row_dropped_is_empty_and_reported(tmp_path: Path):
    """max_length below every row: an empty dataset with the collator's columns, every row counted as skipped."""
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    sample, image = generate_scene(0, seed=3, size=64)
    image.save(root / sample.image)
    (root / "train.jsonl").write_text(json.dumps(sample.to_dict()) + "\n")
    processor = build_processor(build_tokenizer([s.caption for s in SCENES] * 3, vocab_size=400),
                                TinyModelConfig(image_size=32, patch_size=8))
    pairs, report = collect_stage_examples(root / "train.jsonl", None, PROMPTS, BoxCodec("asmv2"),
                                           stages=STAGES, discover_ratio=(0.3, 0.7))
    dataset = build_stage_dataset(pairs, processor, PROMPTS.system, max_length=10, report=report)
    assert len(dataset) == 0 and len(pairs) == 4
    assert {"prompt_ids", "answer_ids", "length", "masks"} <= set(dataset.column_names)
    assert len(report.skipped) == 4 and all("over-long" in why for _, why in report.skipped)


def test_empty_system_prompt_renders_no_system_text():
    """``system=""`` drops the template's default system text; ``None`` keeps it; recipes choose via data.system_prompt."""
    from pancapchain.data.prompts import recipe_prompts
    from pancapchain.model.chat import render_prompt

    processor = build_processor(build_tokenizer([s.caption for s in SCENES] * 3, vocab_size=400),
                                TinyModelConfig(image_size=32, patch_size=8))
    bare = render_prompt(processor, "Please localize all entities in this image.", "")
    default = render_prompt(processor, "Please localize all entities in this image.", None)
    assert bare == " USER: <image>\nPlease localize all entities in this image. ASSISTANT:"
    assert default.startswith("A chat between") and default.endswith(bare)
    assert recipe_prompts("v1", "").system == ""
    assert recipe_prompts("v1", "default").system == PROMPTS.system
    assert recipe_prompts("v1", "Be brief.").system == "Be brief."
