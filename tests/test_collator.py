"""The collator against tensors built independently from literal strings."""

from __future__ import annotations

import torch
from PIL import Image

from pancapchain.config import TinyModelConfig
from pancapchain.constants import IGNORE_INDEX, STAGES
from pancapchain.model.tiny import build_processor, build_tokenizer
from pancapchain.train.collator import PancapCollator

SYSTEM = "A chat between a curious user and an artificial intelligence assistant."
CFG = TinyModelConfig(image_size=32, patch_size=8)  # (32/8)^2 = 16 image tokens
N_IMAGE_TOKENS = 16


def _processor():
    texts = [SYSTEM, "Please localize all entities in this image.", "red square <box>[[100, 200, 300, 400]]</box>"]
    return build_processor(build_tokenizer(texts * 10, vocab_size=350), CFG)


def _row(tmp_path, name, prompt, target, size=(48, 32)):
    path = tmp_path / f"{name}.png"
    Image.new("RGB", size, (10, 200, 30)).save(path)
    return {"sample_id": name, "stage": "localize", "image": str(path), "width": size[0], "height": size[1],
            "prompt": prompt, "target": target, "length": 0}


def test_prompt_and_image_tokens_masked_answer_supervised(tmp_path):
    proc = _processor()
    tok = proc.tokenizer
    row = _row(tmp_path, "a", "Please localize all entities in this image.", "<box>[[100, 200, 300, 400]]</box>")
    batch = PancapCollator(proc, SYSTEM)([row])

    literal_prompt = (
        SYSTEM + " USER: " + "<image>" * N_IMAGE_TOKENS + "\nPlease localize all entities in this image. ASSISTANT:"
    )
    prompt_ids = tok(literal_prompt)["input_ids"]
    answer_ids = tok(" <box>[[100, 200, 300, 400]]</box>", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    expected_ids = torch.tensor([prompt_ids + answer_ids])
    expected_labels = torch.tensor([[IGNORE_INDEX] * len(prompt_ids) + answer_ids])

    assert prompt_ids[0] == tok.bos_token_id
    assert torch.equal(batch["input_ids"], expected_ids)
    assert torch.equal(batch["labels"], expected_labels)
    assert torch.equal(batch["attention_mask"], torch.ones_like(expected_ids))
    image_id = tok.convert_tokens_to_ids("<image>")
    assert int((batch["input_ids"] == image_id).sum()) == N_IMAGE_TOKENS
    assert batch["pixel_values"].shape == (1, 3, 32, 32)
    supervised = batch["labels"][batch["labels"] != IGNORE_INDEX]
    assert tok.decode(supervised) == " <box>[[100, 200, 300, 400]]</box></s>"
    assert batch["stage_ids"].tolist() == [STAGES.index("localize")]


def test_right_padding_and_per_stage_weights(tmp_path):
    proc = _processor()
    tok = proc.tokenizer
    short = _row(tmp_path, "s", "Please localize all entities in this image.", "None")
    long = _row(tmp_path, "l", "Please localize all entities in this image.",
                "<box>[[100, 200, 300, 400]]</box>, <box>[[1, 2, 3, 4]]</box>", size=(20, 60))
    long["stage"] = "caption"
    batch = PancapCollator(proc, SYSTEM, {"localize": 1.0, "caption": 0.5})([short, long])
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    n_short = int(mask[0].sum())
    assert n_short < ids.shape[1] and int(mask[1].sum()) == ids.shape[1]
    assert (ids[0, n_short:] == tok.pad_token_id).all()
    assert (labels[0, n_short:] == IGNORE_INDEX).all()
    assert ids[0, n_short - 1] == tok.eos_token_id
    image_id = tok.convert_tokens_to_ids("<image>")
    assert ((ids == image_id).sum(dim=1) == N_IMAGE_TOKENS).all()  # non-square images: same token count
    assert batch["loss_weights"].tolist() == [1.0, 0.5]
    assert batch["sample_ids"] == ["s/localize", "l/caption"]


def test_token_stages_tell_earlier_answers_apart_by_their_end_of_turn():
    from pancapchain.constants import IGNORE_INDEX, TASKS
    from pancapchain.train.collator import token_stages

    x, eot = IGNORE_INDEX, 9
    # prompt (10): a localize answer, then a label answer split by an unsupervised token; then the answer (2)
    labels = [x, 1, 2, eot, x, 3, x, 4, eot, x, 5, eot]
    names = [TASKS[i] for i in token_stages(labels, 10, "caption", 13, eot)]
    supervised = [name for name, label in zip(names, labels) if label != x]
    assert supervised == ["localize"] * 3 + ["label"] * 3 + ["caption"] * 2
    assert names[12] == "caption"  # padding keeps the row's stage
    assert token_stages([x, x, 7, eot], 2, "label", 4, eot) == [TASKS.index("label")] * 4  # single turn
